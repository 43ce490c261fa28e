"""Compiled tile transforms for Winograd F(4x4, 3x3), the cython backend's
twin of ``numba_winograd.py``: same functions, same arguments, same shapes.

    y_tile (4x4) = A^T [ (G g G^T) (.) (B^T d B) ] A      d: 6x6 input tile

with numba_winograd's interpolation points (0, 1, -1, 1/2, -2 and
infinity) and so its B^T, G and A^T, stated there (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2015, for the method).

The sum over input channels of the 36 element-wise products is 36 matmuls
M[k] = U[k] @ V[k] per band: the forward's and the backward's dV = U^T dM
are ``products`` here (AVX-512 or AVX2 + FMA register tiles where the CPU
has them, numpy's matmul elsewhere), the backward's dU = dM V^T is
``weight_products`` (AVX-512 or AVX2 register blocks summing along the
lanes into a double dU; numpy's matmul elsewhere and in float64); the other
loops are
the transforms around them and their adjoints (dM = A dY A^T,
dd = B dV B^T, dg = G^T dU G). Element (i, j) of a 6x6 tile is k = 6*i + j.
A fused ReLU + 2x2 max pooling runs either over a chunk's output planes
(pool_relu_2x2, unpool_relu) or inside the output transform and its
adjoint, one filter's tile row at a time (output_pool_relu_2x2,
grad_output_unpool_2x2): the same C row functions, the driver choosing.

What this is: loops over typed memoryviews, fused float32/float64, GIL
released, single-threaded (the driver runs batch chunks concurrently). The
batch is the innermost, contiguous axis of every tile array, so a tile
transform is short multiply-adds over rows of lanes: the input transform
in two separable passes (rows, then columns: whole plane rows of WT*N
lanes, then one tile's N lanes), the other three in one pass per lane (a
tile's elements in, its transform out, both passes' roundings kept; their
36 rows KS apart must not be 4 KB multiples apart, so the driver pads M,
dM and dV by a row). Those lane loops, one tile row per call, are C
below, compiled twice where GCC or Clang can (x86-64 ELF:
``target_clones``, as in cy_act): for AVX2 and for the portable baseline,
the loader picking one for the CPU. With the wheel's SSE2 alone the input
transform took about 2.8x as long, and the transforms together more than
the products between them. The clones compute the same roundings (no FMA
in either). Pointer arguments are ``restrict``: GCC then vectorises each
loop without runtime overlap checks. The weight transforms compute in
double (1/3 and 1/15 are not floats) and write U row by row: 36 stores
8 KB apart per weight all fell into one L1 set.

What this is not: no validation, no allocation visible to the caller and no
choice of path or band width -- the driver decides; ``fastcnn.ops``
validates. Non-finite inputs: the transforms subtract inputs, so an inf can
give NaN where the direct sum is +-inf.

Shapes: x (N, C, H, W), y/dy (N, F, OH, OW); TH = ceil(OH/4), TW = ceil(OW/4);
the input's zero-padded planes (4*TH+2, 4*TW+2) exist only a tile row at
a time, in scratch; output planes ys/dys (F, 4*TH, 4*TW, N), for the
pooling over planes; band arrays V/dV (36, C, rows*TW, N), M/dM
(36, F, rows*TW, N) for the tile rows th0 .. th0+rows-1; U/dU (36, F, Cg),
w/dw (F, Cg, 3, 3). weight_products(dM, V, dU) adds a band's dM V^T per
group into dU, float64 whatever the arrays' float (the driver sums it over
bands, chunks and dilation phases).
"""
from cython cimport floating
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import numpy as np


cdef extern from *:
    """
    /* fastcnn: the Winograd F(4x4, 3x3) lane loops (see the module docstring).
       Each primitive maps 6 (or 4) rows of len lanes, as apart, to 6 (or 4)
       rows o, os apart; a tile-row function makes both passes of one tile row. */
    #if defined(__x86_64__) && defined(__ELF__) && defined(__has_attribute)
    #  if __has_attribute(target_clones)
    #    define FASTCNN_CLONES __attribute__((target_clones("avx2", "default")))
    #  endif
    #endif
    #ifndef FASTCNN_CLONES
    #  define FASTCNN_CLONES
    #endif
    #define FASTCNN_WINO(T, S)                                                          \
    /* o = B^T a */                                                                     \
    static inline void fastcnn_bt6_##S(const T* __restrict a, Py_ssize_t as,            \
            T* __restrict o, Py_ssize_t os, Py_ssize_t len) {                           \
        const T *a0 = a, *a1 = a + as, *a2 = a + 2 * as, *a3 = a + 3 * as,              \
                *a4 = a + 4 * as, *a5 = a + 5 * as;                                     \
        T *o0 = o, *o1 = o + os, *o2 = o + 2 * os, *o3 = o + 3 * os,                    \
          *o4 = o + 4 * os, *o5 = o + 5 * os;                                           \
        Py_ssize_t n;                                                                   \
        const T h5 = 0.5, h15 = 1.5, h25 = 2.5;                                         \
        for (n = 0; n < len; n++)                                                       \
            o0[n] = ((a0[n] + a4[n]) + h15 * (a3[n] - a1[n])) - (a2[n] + a2[n]);        \
        for (n = 0; n < len; n++) o1[n] = ((a4[n] - a1[n]) + h5 * a2[n]) + h25 * a3[n]; \
        for (n = 0; n < len; n++) o2[n] = ((a4[n] + a1[n]) - h25 * a2[n]) + h5 * a3[n]; \
        for (n = 0; n < len; n++)                                                       \
            o3[n] = ((a4[n] - a2[n]) + (a3[n] - a1[n])) + (a3[n] - a1[n]);              \
        for (n = 0; n < len; n++) o4[n] = (a4[n] - a2[n]) + h5 * (a1[n] - a3[n]);       \
        for (n = 0; n < len; n++)                                                       \
            o5[n] = ((a1[n] + a5[n]) + h15 * (a4[n] - a2[n])) - (a3[n] + a3[n]);        \
    }                                                                                   \
    /* o = A^T a + bias */                                                              \
    static inline void fastcnn_at4_##S(const T* __restrict a, Py_ssize_t as,            \
            T* __restrict o, Py_ssize_t os, Py_ssize_t len, T bias) {                   \
        const T *a0 = a, *a1 = a + as, *a2 = a + 2 * as, *a3 = a + 3 * as,              \
                *a4 = a + 4 * as, *a5 = a + 5 * as;                                     \
        T *o0 = o, *o1 = o + os, *o2 = o + 2 * os, *o3 = o + 3 * os;                    \
        Py_ssize_t n;                                                                   \
        for (n = 0; n < len; n++)                                                       \
            o0[n] = (((a0[n] + a1[n]) + (a2[n] + a3[n])) + a4[n]) + bias;               \
        const T h5 = 0.5, q25 = 0.25, e125 = 0.125;                                     \
        for (n = 0; n < len; n++)                                                       \
            o1[n] = ((a1[n] - a2[n]) + (h5 * a3[n] - (a4[n] + a4[n]))) + bias;          \
        for (n = 0; n < len; n++)                                                       \
            o2[n] = ((a1[n] + a2[n]) + (q25 * a3[n] + 4 * a4[n])) + bias;               \
        for (n = 0; n < len; n++)                                                       \
            o3[n] = (((a1[n] - a2[n]) + (e125 * a3[n] - 8 * a4[n])) + a5[n]) + bias;    \
    }                                                                                   \
    /* V[:, p0 + tw] of one tile row: d its 6 plane rows (L = WT*N lanes each),         \
       R scratch (6, L), V at tile p0 of element 0, KS apart per element */             \
    static FASTCNN_CLONES void fastcnn_wino_in_row_##S(const T* d, Py_ssize_t L,        \
            T* R, T* V, Py_ssize_t KS, Py_ssize_t TW, Py_ssize_t N) {                   \
        Py_ssize_t i, tw;                                                               \
        fastcnn_bt6_##S(d, L, R, L, L);                                                 \
        for (i = 0; i < 6; i++)                                                         \
            for (tw = 0; tw < TW; tw++)                                                 \
                fastcnn_bt6_##S(R + i * L + 4 * tw * N, N, V + 6 * i * KS + tw * N, KS, N); \
    }                                                                                   \
    /* ys rows of one tile row from M at tile p0 of element 0 (KS apart per             \
       element); y its first row, YL = 4*TW*N lanes. One pass per lane: its 36          \
       elements in, 16 outputs out (A^T m, then (A^T m) A, as at4 twice, so the         \
       same roundings as two passes of at4 through a scratch). The 36 rows lie KS       \
       apart: a multiple of 4 KB puts them all in one cache set, so the driver          \
       pads M by a filter row. */                                                       \
    static FASTCNN_CLONES void fastcnn_wino_out_row_##S(const T* __restrict M,          \
            Py_ssize_t KS, T* __restrict y, Py_ssize_t YL, Py_ssize_t TW, Py_ssize_t N, \
            T bias, int relu) {                                                         \
        Py_ssize_t tw, n;                                                               \
        const T zero = 0, h5 = 0.5, q25 = 0.25, e125 = 0.125;                           \
        for (tw = 0; tw < TW; tw++) {                                                   \
            const T* __restrict m = M + tw * N;                                         \
            T* __restrict o = y + 4 * tw * N;                                           \
            _Pragma("GCC ivdep") for (n = 0; n < N; n++) {                              \
                T s[4][6];                                                              \
                int j, a;                                                               \
                _Pragma("GCC unroll 6") for (j = 0; j < 6; j++) {                       \
                    const T a0 = m[j * KS + n], a1 = m[(6 + j) * KS + n],               \
                            a2 = m[(12 + j) * KS + n], a3 = m[(18 + j) * KS + n],       \
                            a4 = m[(24 + j) * KS + n], a5 = m[(30 + j) * KS + n];       \
                    s[0][j] = (((a0 + a1) + (a2 + a3)) + a4) + zero;                    \
                    s[1][j] = ((a1 - a2) + (h5 * a3 - (a4 + a4))) + zero;               \
                    s[2][j] = ((a1 + a2) + (q25 * a3 + 4 * a4)) + zero;                 \
                    s[3][j] = (((a1 - a2) + (e125 * a3 - 8 * a4)) + a5) + zero;         \
                }                                                                       \
                _Pragma("GCC unroll 4") for (a = 0; a < 4; a++) {                       \
                    const T a0 = s[a][0], a1 = s[a][1], a2 = s[a][2], a3 = s[a][3],     \
                            a4 = s[a][4], a5 = s[a][5];                                 \
                    T v0 = (((a0 + a1) + (a2 + a3)) + a4) + bias;                       \
                    T v1 = ((a1 - a2) + (h5 * a3 - (a4 + a4))) + bias;                  \
                    T v2 = ((a1 + a2) + (q25 * a3 + 4 * a4)) + bias;                    \
                    T v3 = (((a1 - a2) + (e125 * a3 - 8 * a4)) + a5) + bias;            \
                    if (relu) {                     /* NaN <= 0 is false: NaN stays */  \
                        v0 = !(v0 <= zero) ? v0 : zero; v1 = !(v1 <= zero) ? v1 : zero; \
                        v2 = !(v2 <= zero) ? v2 : zero; v3 = !(v3 <= zero) ? v3 : zero; \
                    }                                                                   \
                    o[a * YL + n] = v0; o[a * YL + N + n] = v1;                         \
                    o[a * YL + 2 * N + n] = v2; o[a * YL + 3 * N + n] = v3;             \
                }                                                                       \
            }                                                                           \
        }                                                                               \
    }                                                                                   \
    /* dM of one tile row from its 4 rows dy of YL = 4*TW*N lanes, dM at tile           \
       p0 of element 0, KS apart per element (the driver pads dM by a filter            \
       row, as the forward's M); acc[0:N] += the sums of dy per image, in double.       \
       One pass per lane: a tile's 16 dY in, its 36 elements out (A across the          \
       rows, then across the columns, as a6 twice: the roundings of two passes          \
       through a scratch). */                                                           \
    static FASTCNN_CLONES void fastcnn_wino_gout_row_##S(const T* __restrict dy,        \
            Py_ssize_t YL, T* __restrict dM, Py_ssize_t KS, Py_ssize_t TW, Py_ssize_t N,\
            double* __restrict acc) {                                                   \
        Py_ssize_t tw, n, w;                                                            \
        const T *y0 = dy, *y1 = dy + YL, *y2 = dy + 2 * YL, *y3 = dy + 3 * YL;          \
        const T h5 = 0.5, q25 = 0.25, e125 = 0.125;                                     \
        for (w = 0; w < YL; w += N)                                                     \
            for (n = 0; n < N; n++)                                                     \
                acc[n] += ((double)y0[w + n] + (double)y1[w + n])                       \
                          + ((double)y2[w + n] + (double)y3[w + n]);                    \
        for (tw = 0; tw < TW; tw++) {                                                   \
            const T* __restrict y = dy + 4 * tw * N;                                    \
            T* __restrict m = dM + tw * N;                                              \
            _Pragma("GCC ivdep") for (n = 0; n < N; n++) {                              \
                T s[6][4];                                                              \
                int j, k;                                                               \
                _Pragma("GCC unroll 4") for (j = 0; j < 4; j++) {                       \
                    const T a0 = y[j * N + n], a1 = y[YL + j * N + n],                  \
                            a2 = y[2 * YL + j * N + n], a3 = y[3 * YL + j * N + n];     \
                    s[0][j] = a0;                                                       \
                    s[1][j] = (a0 + a1) + (a2 + a3);                                    \
                    s[2][j] = (a0 - a1) + (a2 - a3);                                    \
                    s[3][j] = (a0 + h5 * a1) + (q25 * a2 + e125 * a3);                  \
                    s[4][j] = (a0 - (a1 + a1)) + (4 * a2 - 8 * a3);                     \
                    s[5][j] = a3;                                                       \
                }                                                                       \
                _Pragma("GCC unroll 6") for (k = 0; k < 6; k++) {                       \
                    const T a0 = s[k][0], a1 = s[k][1], a2 = s[k][2], a3 = s[k][3];     \
                    m[6 * k * KS + n] = a0;                                             \
                    m[(6 * k + 1) * KS + n] = (a0 + a1) + (a2 + a3);                    \
                    m[(6 * k + 2) * KS + n] = (a0 - a1) + (a2 - a3);                    \
                    m[(6 * k + 3) * KS + n] = (a0 + h5 * a1) + (q25 * a2 + e125 * a3);  \
                    m[(6 * k + 4) * KS + n] = (a0 - (a1 + a1)) + (4 * a2 - 8 * a3);     \
                    m[(6 * k + 5) * KS + n] = a3;                                       \
                }                                                                       \
            }                                                                           \
        }                                                                               \
    }
    FASTCNN_WINO(float, f32)
    FASTCNN_WINO(double, f64)
    /* The layout changes: d[k*ds + r] = s[r*ss + k] for r < R, k < K, in 4x4
       blocks transposed in SSE registers, so both sides move runs of 4
       elements, not one element per row; the last block of each
       side overlaps the one before it (it rewrites the same values). */
    #if defined(__SSE2__)
    #  include <emmintrin.h>
    #  define FASTCNN_WINO_T4(sp, ss, dp, ds) do {                                      \
        __m128 t0 = _mm_loadu_ps(sp), t1 = _mm_loadu_ps((sp) + (ss)),                   \
               t2 = _mm_loadu_ps((sp) + 2 * (ss)), t3 = _mm_loadu_ps((sp) + 3 * (ss));   \
        _MM_TRANSPOSE4_PS(t0, t1, t2, t3);                                              \
        _mm_storeu_ps(dp, t0);                                                          \
        _mm_storeu_ps((dp) + (ds), t1);                                                 \
        _mm_storeu_ps((dp) + 2 * (ds), t2);                                             \
        _mm_storeu_ps((dp) + 3 * (ds), t3);                                             \
    } while (0)
    #  define FASTCNN_WINO_T2(sp, ss, dp, ds) do {                                      \
        __m128d t0 = _mm_loadu_pd(sp), t1 = _mm_loadu_pd((sp) + (ss));                  \
        _mm_storeu_pd(dp, _mm_unpacklo_pd(t0, t1));                                     \
        _mm_storeu_pd((dp) + (ds), _mm_unpackhi_pd(t0, t1));                            \
    } while (0)
    #  define FASTCNN_WINO_T4D(sp, ss, dp, ds) do {                                     \
        FASTCNN_WINO_T2(sp, ss, dp, ds);                                                \
        FASTCNN_WINO_T2((sp) + 2, ss, (dp) + 2 * (ds), ds);                             \
        FASTCNN_WINO_T2((sp) + 2 * (ss), ss, (dp) + 2, ds);                             \
        FASTCNN_WINO_T2((sp) + 2 * (ss) + 2, ss, (dp) + 2 * (ds) + 2, ds);              \
    } while (0)
    /* fastcnn_wino_transpose_f32/_f64: d[k*ds + r] = s[r*ss + k] for an R x K
       block, in 4x4 register blocks (BLOCK). The side whose rows lie far
       apart (NCHW: one row per image) is the outer loop: its 4 rows are used
       up before the next 4, which at power-of-two image strides all share a
       few cache sets. */
    #  define FASTCNN_WINO_TRANSPOSE(T, S, BLOCK)                          \
    static void fastcnn_wino_transpose_##S(const T* __restrict s,          \
            Py_ssize_t ss,                                                 \
            T* __restrict d, Py_ssize_t ds, Py_ssize_t R, Py_ssize_t K) {  \
        Py_ssize_t r0, k0, r, k;                                           \
        if (R < 4 || K < 4) {                                              \
            for (r = 0; r < R; r++)                                        \
                for (k = 0; k < K; k++) d[k * ds + r] = s[r * ss + k];     \
            return;                                                        \
        }                                                                  \
        if (ss >= ds) {                                                    \
            for (r0 = 0; r0 < R; r0 += 4) {                                \
                if (r0 + 4 > R) r0 = R - 4;                                \
                for (k0 = 0; k0 < K; k0 += 4) {                            \
                    if (k0 + 4 > K) k0 = K - 4;                            \
                    BLOCK(s + r0 * ss + k0, ss, d + k0 * ds + r0, ds);     \
                }                                                          \
            }                                                              \
        } else {                                                           \
            for (k0 = 0; k0 < K; k0 += 4) {                                \
                if (k0 + 4 > K) k0 = K - 4;                                \
                for (r0 = 0; r0 < R; r0 += 4) {                            \
                    if (r0 + 4 > R) r0 = R - 4;                            \
                    BLOCK(s + r0 * ss + k0, ss, d + k0 * ds + r0, ds);     \
                }                                                          \
            }                                                              \
        }                                                                  \
    }
    FASTCNN_WINO_TRANSPOSE(float, f32, FASTCNN_WINO_T4)
    FASTCNN_WINO_TRANSPOSE(double, f64, FASTCNN_WINO_T4D)
    #else
    #  define FASTCNN_WINO_TRANSPOSE(T, S)                                              \
    static void fastcnn_wino_transpose_##S(const T* __restrict s, Py_ssize_t ss,        \
            T* __restrict d, Py_ssize_t ds, Py_ssize_t R, Py_ssize_t K) {               \
        Py_ssize_t r, k;                                                                \
        for (r = 0; r < R; r++)                                                         \
            for (k = 0; k < K; k++) d[k * ds + r] = s[r * ss + k];                      \
    }
    FASTCNN_WINO_TRANSPOSE(float, f32)
    FASTCNN_WINO_TRANSPOSE(double, f64)
    #endif
    """
    void fastcnn_wino_in_row_f32(const float* d, Py_ssize_t L, float* R, float* V,
                                 Py_ssize_t KS, Py_ssize_t TW, Py_ssize_t N) noexcept nogil
    void fastcnn_wino_in_row_f64(const double* d, Py_ssize_t L, double* R, double* V,
                                 Py_ssize_t KS, Py_ssize_t TW, Py_ssize_t N) noexcept nogil
    void fastcnn_wino_out_row_f32(const float* M, Py_ssize_t KS, float* y,
                                  Py_ssize_t YL, Py_ssize_t TW, Py_ssize_t N, float bias,
                                  int relu) noexcept nogil
    void fastcnn_wino_out_row_f64(const double* M, Py_ssize_t KS, double* y,
                                  Py_ssize_t YL, Py_ssize_t TW, Py_ssize_t N, double bias,
                                  int relu) noexcept nogil
    void fastcnn_wino_gout_row_f32(const float* dy, Py_ssize_t YL, float* dM, Py_ssize_t KS,
                                   Py_ssize_t TW, Py_ssize_t N, double* acc) noexcept nogil
    void fastcnn_wino_gout_row_f64(const double* dy, Py_ssize_t YL, double* dM, Py_ssize_t KS,
                                   Py_ssize_t TW, Py_ssize_t N, double* acc) noexcept nogil
    void fastcnn_wino_transpose_f32(const float* s, Py_ssize_t ss, float* d, Py_ssize_t ds,
                                    Py_ssize_t R, Py_ssize_t K) noexcept nogil
    void fastcnn_wino_transpose_f64(const double* s, Py_ssize_t ss, double* d, Py_ssize_t ds,
                                    Py_ssize_t R, Py_ssize_t K) noexcept nogil


cdef inline void _transpose(const floating* s, Py_ssize_t ss, floating* d, Py_ssize_t ds,
                            Py_ssize_t R, Py_ssize_t K) noexcept nogil:
    if floating is float:
        fastcnn_wino_transpose_f32(s, ss, d, ds, R, K)
    else:
        fastcnn_wino_transpose_f64(s, ss, d, ds, R, K)


# Images per block of the layout changes: a block's rows of x (or y) are
# reused from one plane row to the next, and at power-of-two image strides
# all the images' rows share a few cache sets, which hold BLOCK of them.
DEF BLOCK = 16


cdef inline Py_ssize_t _block_end(Py_ssize_t n0, Py_ssize_t N) noexcept nogil:
    # a last block of under 4 images joins the one before (4x4 transposes)
    return N if N - n0 < BLOCK + 4 else n0 + BLOCK


cdef void _pack_rows(const floating* x0, Py_ssize_t sN, Py_ssize_t N, Py_ssize_t H,
                     Py_ssize_t W, Py_ssize_t ih0, Py_ssize_t rows, floating* d,
                     Py_ssize_t RL, Py_ssize_t PL) noexcept nogil:
    """Rows ih0 .. ih0+rows-1 of a zero-padded plane with the batch
    innermost into d (rows RL = WT*N lanes apart), from the NCHW plane whose
    first image's row 0 is x0 (images sN apart): a row outside 0..H-1 and
    the padding columns zero, the images' rows an (N, W) to (W, N)
    transpose at column PL, BLOCK images at a time."""
    cdef Py_ssize_t i, ih, n0, n1
    cdef Py_ssize_t right = RL - (PL + W) * N
    for i in range(rows):
        ih = ih0 + i
        if ih < 0 or ih >= H:
            memset(d + i * RL, 0, RL * sizeof(floating))
        else:
            memset(d + i * RL, 0, PL * N * sizeof(floating))
            memset(d + i * RL + (PL + W) * N, 0, right * sizeof(floating))
    n0 = 0
    while n0 < N:
        n1 = _block_end(n0, N)
        for i in range(rows):
            ih = ih0 + i
            if 0 <= ih < H:
                _transpose(x0 + n0 * sN + ih * W, sN, d + i * RL + PL * N + n0, N, n1 - n0, W)
        n0 = n1


def input_transform(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] V,
                    Py_ssize_t th0, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t TW):
    """V[:, c, (th-th0)*TW + tw, n] = B^T d B for the band of tile rows th0..
    that V (36, C, rows*TW, N) holds; d is the 6x6 tile at rows 4th.., cols
    4tw.. of channel c's plane of x (N, C, H, W) zero-padded by PT on top
    and PL on the left (TW tiles per row). Each channel's 6 plane rows of a
    tile row are packed into a scratch (in cache, batch innermost) and
    transformed from there: no padded planes are written or read."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t P = V.shape[2], WT = 4 * TW + 2
    cdef Py_ssize_t rows = P // TW, L = WT * N, KS = V.shape[1] * P * N, sN = C * H * W
    cdef Py_ssize_t c, r
    cdef floating* D = <floating*>_alloc(6 * L * sizeof(floating))    # the 6 plane rows
    cdef floating* R = <floating*>_alloc(6 * L * sizeof(floating))    # B^T d: (i, w, n)
    try:
        with nogil:
            for c in range(C):
                for r in range(rows):
                    _pack_rows(&x[0, c, 0, 0], sN, N, H, W, 4 * (th0 + r) - PT, 6, D, L, PL)
                    if floating is float:
                        fastcnn_wino_in_row_f32(D, L, R, &V[0, c, r * TW, 0], KS, TW, N)
                    else:
                        fastcnn_wino_in_row_f64(D, L, R, &V[0, c, r * TW, 0], KS, TW, N)
    finally:
        free(D)
        free(R)


cdef void _crop_rows(const floating* s, Py_ssize_t RL, Py_ssize_t N, floating* y0,
                     Py_ssize_t sN, Py_ssize_t OW, Py_ssize_t rows) noexcept nogil:
    """rows plane rows (RL lanes apart) with the batch innermost, s at the
    first one's first kept column, back to NCHW rows: y0 (image 0's first
    row, images sN apart) gets OW columns of each, an (OW, N) to (N, OW)
    transpose per row, BLOCK images at a time."""
    cdef Py_ssize_t i, n0 = 0, n1
    while n0 < N:
        n1 = _block_end(n0, N)
        for i in range(rows):
            _transpose(s + i * RL + n0, N, y0 + n0 * sN + i * OW, sN, OW, n1 - n0)
        n0 = n1


cdef void* _alloc(Py_ssize_t nbytes) except NULL:
    cdef void* p = malloc(nbytes if nbytes > 0 else 1)
    if p == NULL:
        raise MemoryError()
    return p


def output_transform(const floating[:, :, :, ::1] M, const floating[::1] b,
                     floating[:, :, :, ::1] ys, Py_ssize_t th0, int relu):
    """ys[f, 4th+a, 4tw+c, n] = (A^T m A)[a, c] + b[f] for the band of tile
    rows th0.. that M (36, F', rows*TW, N) holds, F' >= F (the driver pads M
    by a filter row: see fastcnn_wino_out_row); b None: no bias; relu != 0:
    then max(v, 0), NaN kept (np.maximum). ys (F, 4*TH, 4*TW, N) keeps the
    whole last tile (pool_relu_2x2 reads only what lies inside)."""
    cdef Py_ssize_t F = ys.shape[0], W4 = ys.shape[2], N = ys.shape[3]
    cdef Py_ssize_t TW = W4 // 4, P = M.shape[2]
    cdef Py_ssize_t rows = P // TW, KS = M.shape[1] * P * N
    cdef Py_ssize_t f, r
    cdef bint has_bias = b is not None
    cdef floating bf
    with nogil:
        for f in range(F):
            bf = b[f] if has_bias else 0
            for r in range(rows):
                if floating is float:
                    fastcnn_wino_out_row_f32(&M[0, f, r * TW, 0], KS,
                                             &ys[f, 4 * (th0 + r), 0, 0], W4 * N, TW, N, bf, relu)
                else:
                    fastcnn_wino_out_row_f64(&M[0, f, r * TW, 0], KS,
                                             &ys[f, 4 * (th0 + r), 0, 0], W4 * N, TW, N, bf, relu)


cdef inline double _lane_sum(const double* acc, Py_ssize_t N) noexcept nogil:
    """acc[0] + ... + acc[N-1] in two chains (the db of a filter from its lanes)."""
    cdef double s0 = 0, s1 = 0
    cdef Py_ssize_t n = 0
    while n + 2 <= N:
        s0 += acc[n]
        s1 += acc[n + 1]
        n += 2
    if n < N:
        s0 += acc[n]
    return s0 + s1


def grad_output_transform(const floating[:, :, :, ::1] dys, floating[:, :, :, ::1] dM,
                          double[::1] db, Py_ssize_t th0):
    """dM[:, f, (th-th0)*TW + tw, n] = A dY A^T for the band of tile rows
    th0.. that dM (36, F', rows*TW, N) holds, F' >= F (the driver pads dM by
    a filter row: see fastcnn_wino_gout_row), dY the 4x4 tile of the packed
    gradient dys (F, 4*TH, 4*TW, N) (zero past the edge); db[f] += the
    band's sum of those dY, in double: one lane per image, summed per
    channel at the end (one scalar accumulator would be one serial chain of
    adds)."""
    cdef Py_ssize_t F = dys.shape[0], W4 = dys.shape[2], N = dys.shape[3]
    cdef Py_ssize_t TW = W4 // 4, P = dM.shape[2]
    cdef Py_ssize_t rows = P // TW, L = W4 * N, KS = dM.shape[1] * P * N
    cdef Py_ssize_t f, r
    cdef double* acc = <double*>_alloc(N * sizeof(double))          # per image
    try:
        with nogil:
            for f in range(F):
                memset(acc, 0, N * sizeof(double))
                for r in range(rows):
                    if floating is float:
                        fastcnn_wino_gout_row_f32(&dys[f, 4 * (th0 + r), 0, 0], L,
                                                  &dM[0, f, r * TW, 0], KS, TW, N, acc)
                    else:
                        fastcnn_wino_gout_row_f64(&dys[f, 4 * (th0 + r), 0, 0], L,
                                                  &dM[0, f, r * TW, 0], KS, TW, N, acc)
                db[f] += _lane_sum(acc, N)
    finally:
        free(acc)


def output_transform_nchw(const floating[:, :, :, ::1] M, const floating[::1] b,
                          floating[:, :, :, ::1] y, Py_ssize_t th0, int relu):
    """output_transform straight into NCHW y (N, F, OH, OW): each filter's
    tile row goes through a scratch of 4 plane rows (in cache) and its rows
    and columns inside y are transposed out (_crop_rows), so no output
    planes are written or read. Same values as output_transform, cropped."""
    cdef Py_ssize_t N = y.shape[0], F = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t TW = (OW + 3) // 4, P = M.shape[2]
    cdef Py_ssize_t rows = P // TW, KS = M.shape[1] * P * N, YL = 4 * TW * N
    cdef Py_ssize_t f, r, oh0
    cdef bint has_bias = b is not None
    cdef floating bf
    if N * F * OH * OW == 0:
        return
    cdef floating* S = <floating*>_alloc(4 * YL * sizeof(floating))
    try:
        with nogil:
            for f in range(F):
                bf = b[f] if has_bias else 0
                for r in range(rows):
                    oh0 = 4 * (th0 + r)
                    if floating is float:
                        fastcnn_wino_out_row_f32(&M[0, f, r * TW, 0], KS, S, YL, TW, N, bf, relu)
                    else:
                        fastcnn_wino_out_row_f64(&M[0, f, r * TW, 0], KS, S, YL, TW, N, bf, relu)
                    _crop_rows(S, YL, N, &y[0, f, oh0, 0], F * OH * OW, OW,
                               4 if OH - oh0 > 4 else OH - oh0)
    finally:
        free(S)


def grad_output_transform_nchw(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dM,
                               double[::1] db, Py_ssize_t th0):
    """grad_output_transform straight from NCHW dy (N, F, OH, OW): each
    filter's 4 rows of a tile row are packed into a scratch (_pack_rows,
    zero past the edge) and transformed from there, so no output-gradient
    planes are written or read. Same values as grad_output_transform on
    dy's planes."""
    cdef Py_ssize_t N = dy.shape[0], F = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t TW = (OW + 3) // 4, P = dM.shape[2]
    cdef Py_ssize_t rows = P // TW, KS = dM.shape[1] * P * N, YL = 4 * TW * N
    cdef Py_ssize_t f, r
    cdef floating* S = <floating*>_alloc(4 * YL * sizeof(floating))
    cdef double* acc = <double*>_alloc(N * sizeof(double))          # per image
    try:
        with nogil:
            for f in range(F):
                memset(acc, 0, N * sizeof(double))
                for r in range(rows):
                    _pack_rows(&dy[0, f, 0, 0], F * OH * OW, N, OH, OW, 4 * (th0 + r), 4, S, YL,
                               0)
                    if floating is float:
                        fastcnn_wino_gout_row_f32(S, YL, &dM[0, f, r * TW, 0], KS, TW, N, acc)
                    else:
                        fastcnn_wino_gout_row_f64(S, YL, &dM[0, f, r * TW, 0], KS, TW, N, acc)
                db[f] += _lane_sum(acc, N)
    finally:
        free(S)
        free(acc)


cdef extern from *:
    """
    /* fastcnn: the input-gradient transform in one pass per lane, as the
       output transform: a tile's 36 elements of dV in, B dV B^T (b6add's
       formulas, rows then columns) added into the 36 plane elements it
       covers, tile after tile along the row (tiles overlap by two columns
       and, between tile rows, two rows). The old two passes through a
       scratch row summed the overlapping columns before the column pass;
       here they are added after it: the same sums up to rounding. */
    #define FASTCNN_WB6(a0, a1, a2, a3, a4, a5, o0, o1, o2, o3, o4, o5) do {              \
        o0 = a0;                                                                        \
        o1 = ((a2 - a1) + (a5 - (a3 + a3))) + (h5 * a4 - h15 * a0);                     \
        o2 = ((h5 * a1 - h25 * a2) - ((a0 + a0) + (a3 + a4))) - h15 * a5;               \
        o3 = ((h15 * a0 + h25 * a1) + h5 * (a2 - a4)) + ((a3 - a5) + (a3 - a5));        \
        o4 = ((a0 + a1) + (a2 + a3)) + (a4 + h15 * a5);                                 \
        o5 = a5;                                                                        \
    } while (0)
    #define FASTCNN_WINO_GIN(T, S)                                                      \
    /* x's 6 plane rows (L lanes apart) += B dV B^T of one tile row, dV at tile         \
       p0 of element 0, KS apart per element */                                         \
    static FASTCNN_CLONES void fastcnn_wino_gin_tiles_##S(const T* __restrict dV,       \
            Py_ssize_t KS, T* __restrict x, Py_ssize_t L, Py_ssize_t TW, Py_ssize_t N) { \
        Py_ssize_t tw, n;                                                               \
        const T h5 = 0.5, h15 = 1.5, h25 = 2.5;                                         \
        for (tw = 0; tw < TW; tw++) {                                                   \
            const T* __restrict m = dV + tw * N;                                        \
            T* __restrict o = x + 4 * tw * N;                                           \
            _Pragma("GCC ivdep") for (n = 0; n < N; n++) {                              \
                T s[6][6];                                                              \
                int i, j;                                                               \
                _Pragma("GCC unroll 6") for (i = 0; i < 6; i++) {                       \
                    const T a0 = m[6 * i * KS + n], a1 = m[(6 * i + 1) * KS + n],       \
                            a2 = m[(6 * i + 2) * KS + n], a3 = m[(6 * i + 3) * KS + n], \
                            a4 = m[(6 * i + 4) * KS + n], a5 = m[(6 * i + 5) * KS + n]; \
                    FASTCNN_WB6(a0, a1, a2, a3, a4, a5, s[i][0], s[i][1], s[i][2],      \
                                s[i][3], s[i][4], s[i][5]);                             \
                }                                                                       \
                _Pragma("GCC unroll 6") for (j = 0; j < 6; j++) {                       \
                    T r0, r1, r2, r3, r4, r5;                                           \
                    FASTCNN_WB6(s[0][j], s[1][j], s[2][j], s[3][j], s[4][j], s[5][j],   \
                                r0, r1, r2, r3, r4, r5);                                \
                    o[j * N + n] += r0; o[L + j * N + n] += r1;                         \
                    o[2 * L + j * N + n] += r2; o[3 * L + j * N + n] += r3;             \
                    o[4 * L + j * N + n] += r4; o[5 * L + j * N + n] += r5;             \
                }                                                                       \
            }                                                                           \
        }                                                                               \
    }
    FASTCNN_WINO_GIN(float, f32)
    FASTCNN_WINO_GIN(double, f64)
    """
    void fastcnn_wino_gin_tiles_f32(const float* dV, Py_ssize_t KS, float* x, Py_ssize_t L,
                                    Py_ssize_t TW, Py_ssize_t N) noexcept nogil
    void fastcnn_wino_gin_tiles_f64(const double* dV, Py_ssize_t KS, double* x, Py_ssize_t L,
                                    Py_ssize_t TW, Py_ssize_t N) noexcept nogil


def grad_input_transform(const floating[:, :, :, ::1] dV, floating[:, :, :, ::1] dx,
                         floating[:, :, :, ::1] carry, Py_ssize_t th0, Py_ssize_t PT,
                         Py_ssize_t PL, Py_ssize_t TH):
    """dd = B dV B^T per tile for the band of tile rows th0.. that dV
    (36, C', rows*TW, N) holds, C' >= C (the driver pads dV by a channel
    row, as the forward's M: see fastcnn_wino_gin_tiles), scatter-added
    into x's zero-padded planes (PT on top, PL on the left, TH tile rows;
    tiles overlap by two rows and columns) straight into NCHW dx
    (N, C, H, W): each channel's tile row is scatter-added into a scratch
    of its 6 plane rows, whose first two hold what the tile row above added
    to them (carry (C, 2, WT, N), kept by the caller between bands, read
    from th0 > 0 on); the 4 rows no later tile row reaches (all 6 for the
    last) are then final, and their rows and columns inside x are
    transposed out (_crop_rows), so no padded planes are written or read:
    the bands in order 0, 1, ... fill dx."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t L = carry.shape[2] * N, TW = (carry.shape[2] - 2) // 4, P = dV.shape[2]
    cdef Py_ssize_t rows = P // TW, KS = dV.shape[1] * P * N, sN = C * H * W
    cdef Py_ssize_t c, r, th, done, i0, i1
    cdef floating* D = <floating*>_alloc(6 * L * sizeof(floating))    # the 6 plane rows
    try:
        with nogil:
            for c in range(C):
                for r in range(rows):
                    th = th0 + r
                    if th == 0:
                        memset(D, 0, 2 * L * sizeof(floating))
                    else:
                        memcpy(D, &carry[c, 0, 0, 0], 2 * L * sizeof(floating))
                    memset(D + 2 * L, 0, 4 * L * sizeof(floating))
                    if floating is float:
                        fastcnn_wino_gin_tiles_f32(&dV[0, c, r * TW, 0], KS, D, L, TW, N)
                    else:
                        fastcnn_wino_gin_tiles_f64(&dV[0, c, r * TW, 0], KS, D, L, TW, N)
                    done = 6 if th == TH - 1 else 4
                    if done == 4:
                        memcpy(&carry[c, 0, 0, 0], D + 4 * L, 2 * L * sizeof(floating))
                    # plane rows 4th + i, i < done, are x's rows 4th + i - PT
                    i0 = PT - 4 * th if PT - 4 * th > 0 else 0
                    i1 = H + PT - 4 * th if H + PT - 4 * th < done else done
                    if i1 > i0:
                        _crop_rows(D + i0 * L + PL * N, L, N, &dx[0, c, 4 * th + i0 - PT, 0],
                                   sN, W, i1 - i0)
    finally:
        free(D)

cdef extern from *:
    """
    /* fastcnn: the weight transforms in one pass per lane (lanes over the
       input channels c): U = G g G^T, 9 inputs in, 36 out, and its adjoint
       dw = G^T dU G, 36 in, 9 out, in double, with numba_winograd's products
       by 1/3 and 1/15 (divisions, as here before, took most of the time;
       the two differ by at most an ulp of double, far below float32's
       rounding of U). Row k of the inputs and outputs lies k*s elements on.
       One loop over the lanes, every intermediate in registers. */
    /* O[0], O[s], .. O[5s] = G (a0, a1, a2); O[0], O[s], O[2s] = G^T (a0 .. a5) */
    #define FASTCNN_WT_G(a0, a1, a2, O, s) do {                                         \
        (O)[0] = (a0);                                                                  \
        (O)[(s)] = ((a0) + (a1) + (a2)) * t3;                                           \
        (O)[2 * (s)] = ((a1) - (a0) - (a2)) * t3;                                       \
        (O)[3 * (s)] = -(16.0 * (a0) + 8.0 * (a1) + 4.0 * (a2)) * t15;                  \
        (O)[4 * (s)] = ((a0) - 2.0 * (a1) + 4.0 * (a2)) * t15;                          \
        (O)[5 * (s)] = (a2);                                                            \
    } while (0)
    #define FASTCNN_WT_GT(a0, a1, a2, a3, a4, a5, O, s) do {                            \
        (O)[0] = (a0) + ((a1) - (a2)) * t3 + ((a4) - 16.0 * (a3)) * t15;                \
        (O)[(s)] = ((a1) + (a2)) * t3 - (8.0 * (a3) + 2.0 * (a4)) * t15;                \
        (O)[2 * (s)] = ((a1) - (a2)) * t3 + (4.0 * (a4) - 4.0 * (a3)) * t15 + (a5);     \
    } while (0)
    static void fastcnn_wt_lanes(const double* __restrict g, Py_ssize_t gs,
            double* __restrict u, Py_ssize_t us, Py_ssize_t n) {
        const double t3 = 1.0 / 3.0, t15 = 1.0 / 15.0;
        Py_ssize_t c;
        int a, i;
        for (c = 0; c < n; c++) {
            double T[6][3];
            for (a = 0; a < 3; a++)             /* G g, column a */
                FASTCNN_WT_G(g[a * gs + c], g[(3 + a) * gs + c], g[(6 + a) * gs + c],
                             &T[0][a], 3);
            for (i = 0; i < 6; i++)             /* (G g) G^T, row i */
                FASTCNN_WT_G(T[i][0], T[i][1], T[i][2], u + 6 * i * us + c, us);
        }
    }
    static void fastcnn_wgt_lanes(const double* __restrict d, Py_ssize_t ds,
            double* __restrict o, Py_ssize_t os, Py_ssize_t n) {
        const double t3 = 1.0 / 3.0, t15 = 1.0 / 15.0;
        Py_ssize_t c;
        int a, j;
        for (c = 0; c < n; c++) {
            double T[3][6];
            for (j = 0; j < 6; j++)             /* G^T dU, column j */
                FASTCNN_WT_GT(d[j * ds + c], d[(6 + j) * ds + c], d[(12 + j) * ds + c],
                              d[(18 + j) * ds + c], d[(24 + j) * ds + c], d[(30 + j) * ds + c],
                              &T[0][j], 6);
            for (a = 0; a < 3; a++)             /* (G^T dU) G, row a */
                FASTCNN_WT_GT(T[a][0], T[a][1], T[a][2], T[a][3], T[a][4], T[a][5],
                              o + 3 * a * os + c, os);
        }
    }
    """
    void fastcnn_wt_lanes(const double* g, Py_ssize_t gs, double* u, Py_ssize_t us,
                          Py_ssize_t n) noexcept nogil
    void fastcnn_wgt_lanes(const double* d, Py_ssize_t ds, double* o, Py_ssize_t os,
                           Py_ssize_t n) noexcept nogil


def weight_transform(const floating[:, :, :, :] w, floating[:, :, ::1] U):
    """U[6i+j, f, c] = (G g G^T)[i, j] for g = w[f, c] (3x3; w (F, Cg, 3, 3)),
    in double and rounded once. One output channel at a time, lanes over c:
    U's 36 rows per weight are 8 KB apart on the MNIST conv2, and written
    weight by weight they all fell into one L1 set."""
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1]
    cdef Py_ssize_t f, c, kh, kw, i
    cdef Py_ssize_t sc = w.strides[1] // sizeof(floating), sh = w.strides[2] // sizeof(floating)
    cdef Py_ssize_t sw = w.strides[3] // sizeof(floating)
    cdef const floating* wf
    cdef floating* Ui
    if F == 0 or Cg == 0:
        return
    cdef double* g = <double*>_alloc(9 * Cg * sizeof(double))      # g[3kh+kw, c]
    cdef double* u = <double*>_alloc(36 * Cg * sizeof(double))     # U[6i+j] for this f
    try:
        with nogil:
            for f in range(F):
                wf = &w[f, 0, 0, 0]
                for kh in range(3):
                    for kw in range(3):
                        for c in range(Cg):
                            g[(3 * kh + kw) * Cg + c] = wf[c * sc + kh * sh + kw * sw]
                fastcnn_wt_lanes(g, Cg, u, Cg, Cg)
                for i in range(36):
                    Ui = &U[i, f, 0]
                    for c in range(Cg):
                        Ui[c] = <floating>u[i * Cg + c]
    finally:
        free(g)
        free(u)


def weight_grad_transform(const floating[:, :, ::1] dU, floating[:, :, :, :] dw):
    """dw[f, c] = G^T dU[:, f, c] G, dU[6i+j] the (i, j) element: the
    adjoint of weight_transform, in double and rounded once, one output
    channel at a time with lanes over c."""
    cdef Py_ssize_t F = dw.shape[0], Cg = dw.shape[1]
    cdef Py_ssize_t f, c, kh, kw, i
    cdef Py_ssize_t sc = dw.strides[1] // sizeof(floating), sh = dw.strides[2] // sizeof(floating)
    cdef Py_ssize_t sw = dw.strides[3] // sizeof(floating)
    cdef const floating* dUi
    cdef floating* dwf
    if F == 0 or Cg == 0:
        return
    cdef double* d = <double*>_alloc(36 * Cg * sizeof(double))     # dU[6i+j] for this f
    cdef double* o = <double*>_alloc(9 * Cg * sizeof(double))      # dw[f, c, a, b] at 3a+b
    try:
        with nogil:
            for f in range(F):
                for i in range(36):
                    dUi = &dU[i, f, 0]
                    for c in range(Cg):
                        d[i * Cg + c] = dUi[c]
                fastcnn_wgt_lanes(d, Cg, o, Cg, Cg)
                dwf = &dw[f, 0, 0, 0]
                for kh in range(3):
                    for kw in range(3):
                        for c in range(Cg):
                            dwf[c * sc + kh * sh + kw * sw] = <floating>o[(3 * kh + kw) * Cg + c]
    finally:
        free(d)
        free(o)



cdef extern from *:
    """
    /* fastcnn: the fused ReLU + max pooling on Winograd's output planes
       (F, HS, WS, N), batch innermost. Each window tap is a run of N
       contiguous lanes, so the 2x2 loops run over the lanes (GCC vectorises
       them: selects, no branches), one output row (PW windows) into an
       (PW, N) scratch, then transposed to the NCHW rows of y, argmax; the
       backward gathers a row of dy and argmax into scratch the same way and
       writes every tap of every window (its value or 0), so the planes need
       no zeroing pass but past the pooled rows and columns. */
    #define FASTCNN_WP_TAKE(v, b) ((v > b) | ((v != v) & (b == b)))
    /* 8 windows at a time in GCC vectors (with __builtin_convertvector:
       GCC 9, clang); elsewhere the scalar loop does every lane */
    #if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9)
    typedef float fastcnn_wp_f8 __attribute__((vector_size(32)));
    typedef double fastcnn_wp_d8 __attribute__((vector_size(64)));
    typedef int fastcnn_wp_i8 __attribute__((vector_size(32)));
    typedef long long fastcnn_wp_l8 __attribute__((vector_size(64)));
    /* one tap of 8 windows: b, a take v, at index c, where the rule says */
    #define FASTCNN_WP_VTAP(V, VM, src, c) do {                                         \
        memcpy(&v, src + n, sizeof v);                                                  \
        t = (v > b) | ((v != v) & (b == b));                                            \
        ti = __builtin_convertvector(t, fastcnn_wp_i8);                                 \
        b = (V)(((VM)v & t) | ((VM)b & ~t));                                            \
        a = (ti & (c)) | (~ti & a);                                                     \
    } while (0)
    #define FASTCNN_WP_VLOOP(V, VM)                                                     \
        const fastcnn_wp_i8 jv = (fastcnn_wp_i8){0} + j;                                \
        for (n = 0; n + 8 <= N; n += 8) {                                               \
            V b, v;                                                                     \
            VM t, stop, num;                                                            \
            fastcnn_wp_i8 a = jv, ti, si, ni;                                           \
            memcpy(&b, p00 + n, sizeof b);                                              \
            FASTCNN_WP_VTAP(V, VM, p01, jv + 1);                                        \
            FASTCNN_WP_VTAP(V, VM, p10, jv + (int)OW);                                  \
            FASTCNN_WP_VTAP(V, VM, p11, jv + (int)OW + 1);                              \
            stop = ~(b > (V){0});                                                       \
            num = b == b;                                                               \
            si = __builtin_convertvector(stop, fastcnn_wp_i8);                          \
            ni = __builtin_convertvector(num, fastcnn_wp_i8);                           \
            a = (si & ni & (-jv - 1)) | (si & ~ni & (-a - 1)) | (~si & a);              \
            b = (V)((VM)b & ~(stop & num));                                             \
            memcpy(bv + n, &b, sizeof b);                                               \
            memcpy(ba + n, &a, sizeof a);                                               \
        }
    #  define FASTCNN_WPOOL_F32 FASTCNN_WPOOL(float, f32, fastcnn_wp_f8, fastcnn_wp_i8)
    #  define FASTCNN_WPOOL_F64 FASTCNN_WPOOL(double, f64, fastcnn_wp_d8, fastcnn_wp_l8)
    #else
    #  define FASTCNN_WP_VLOOP(V, VM) n = 0;
    #  define FASTCNN_WPOOL_F32 FASTCNN_WPOOL(float, f32, float, int)
    #  define FASTCNN_WPOOL_F64 FASTCNN_WPOOL(double, f64, double, int)
    #endif
    #define FASTCNN_WPOOL(T, S, V, VM)                                                  \
    /* pooled rows ph0 .. ph0+nph-1 of one plane: ys at the plane's row 2*ph0          \
       (rows WS*N lanes apart), y and arg at [0, f, ph0, 0] (images sN apart) */      \
    static FASTCNN_CLONES void fastcnn_wpool22_rows_##S(const T* ys, Py_ssize_t WS,    \
            T* y, int* arg, Py_ssize_t N, Py_ssize_t sN, Py_ssize_t PW, Py_ssize_t ph0, \
            Py_ssize_t nph, Py_ssize_t OW, T* tv, int* ta) {                            \
        Py_ssize_t ph, pw, n;                                                           \
        for (ph = ph0; ph < ph0 + nph; ph++) {                                          \
            for (pw = 0; pw < PW; pw++) {                                               \
                const T* p00 = ys + (2 * (ph - ph0) * WS + 2 * pw) * N;                 \
                const T* p01 = p00 + N;                                                 \
                const T* p10 = p00 + WS * N;                                            \
                const T* p11 = p10 + N;                                                 \
                T* bv = tv + pw * N;                                                    \
                int* ba = ta + pw * N;                                                  \
                const int j = (int)(2 * ph * OW + 2 * pw), jw = (int)(j + OW);          \
                FASTCNN_WP_VLOOP(V, VM)                                                 \
                for (; n < N; n++) {                                                    \
                    T b = p00[n], v;                                                    \
                    int a = j, t;                                                       \
                    v = p01[n]; t = FASTCNN_WP_TAKE(v, b); if (t) { b = v; a = j + 1; } \
                    v = p10[n]; t = FASTCNN_WP_TAKE(v, b); if (t) { b = v; a = jw; }    \
                    v = p11[n]; t = FASTCNN_WP_TAKE(v, b); if (t) { b = v; a = jw + 1; } \
                    if (!(b > 0)) {                                                     \
                        if (b == b) { b = 0; a = -j - 1; } else a = -a - 1;             \
                    }                                                                   \
                    bv[n] = b;                                                          \
                    ba[n] = a;                                                          \
                }                                                                       \
            }                                                                           \
            for (n = 0; n < N; n++) {                                                   \
                T* __restrict yr = y + n * sN + (ph - ph0) * PW;                        \
                int* __restrict ar = arg + n * sN + (ph - ph0) * PW;                    \
                for (pw = 0; pw < PW; pw++) {                                           \
                    yr[pw] = tv[pw * N + n];                                            \
                    ar[pw] = ta[pw * N + n];                                            \
                }                                                                       \
            }                                                                           \
        }                                                                               \
    }                                                                                   \
    static void fastcnn_wpool22_##S(const T* ys, T* y, int* arg, Py_ssize_t N,          \
            Py_ssize_t F, Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t HS, Py_ssize_t WS,    \
            Py_ssize_t OW, T* tv, int* ta) {                                            \
        Py_ssize_t f;                                                                   \
        for (f = 0; f < F; f++)                                                         \
            fastcnn_wpool22_rows_##S(ys + f * HS * WS * N, WS, y + f * PH * PW,         \
                                     arg + f * PH * PW, N, F * PH * PW, PW, 0, PH, OW, tv, ta); \
    }                                                                                   \
    /* the gradient planes' rows 2*ph0 .. 2*(ph0+nph)-1 of one plane (plane at         \
       row 2*ph0) from pooled rows ph0.. of dy and arg at [0, f, ph0, 0] (images       \
       sN apart): every tap of every window, and zeros past the windows' columns */   \
    static void fastcnn_wunpool22_rows_##S(const T* dy, const int* arg, T* plane,       \
            Py_ssize_t N, Py_ssize_t sN, Py_ssize_t PW, Py_ssize_t ph0, Py_ssize_t nph, \
            Py_ssize_t WS, Py_ssize_t OW, T* tg, int* ta) {                             \
        Py_ssize_t ph, pw, n, r;                                                        \
        for (ph = ph0; ph < ph0 + nph; ph++) {                                          \
            for (n = 0; n < N; n++) {                                                   \
                const T* gr = dy + n * sN + (ph - ph0) * PW;                            \
                const int* ar = arg + n * sN + (ph - ph0) * PW;                         \
                for (pw = 0; pw < PW; pw++) {                                           \
                    tg[pw * N + n] = gr[pw];                                            \
                    ta[pw * N + n] = ar[pw];                                            \
                }                                                                       \
            }                                                                           \
            for (pw = 0; pw < PW; pw++) {                                               \
                T* __restrict d00 = plane + (2 * (ph - ph0) * WS + 2 * pw) * N;         \
                T* __restrict d01 = d00 + N;                                            \
                T* __restrict d10 = d00 + WS * N;                                       \
                T* __restrict d11 = d10 + N;                                            \
                const T* __restrict g = tg + pw * N;                                    \
                const int* __restrict as = ta + pw * N;                                 \
                const int j = (int)(2 * ph * OW + 2 * pw), jw = (int)(j + OW);          \
                for (n = 0; n < N; n++) {                                               \
                    const int a = as[n], killed = a < 0, p = killed ? -a - 1 : a;       \
                    /* max_relu_backward's plane[p] += v on a zeroed plane */           \
                    const T v = (T)0 + (killed ? g[n] * (T)0 : g[n]);                   \
                    d00[n] = p == j ? v : (T)0;                                         \
                    d01[n] = p == j + 1 ? v : (T)0;                                     \
                    d10[n] = p == jw ? v : (T)0;                                        \
                    d11[n] = p == jw + 1 ? v : (T)0;                                    \
                }                                                                       \
            }                                                                           \
            for (r = 2 * (ph - ph0); r < 2 * (ph - ph0) + 2; r++)   /* past the windows */ \
                memset(plane + (r * WS + 2 * PW) * N, 0, (WS - 2 * PW) * N * sizeof(T)); \
        }                                                                               \
    }                                                                                   \
    static void fastcnn_wunpool22_##S(const T* dy, const int* arg, T* dys, Py_ssize_t N,  \
            Py_ssize_t F, Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t HS, Py_ssize_t WS,   \
            Py_ssize_t OW, T* tg, int* ta) {                                            \
        Py_ssize_t f;                                                                   \
        for (f = 0; f < F; f++) {                                                       \
            T* plane = dys + f * HS * WS * N;                                           \
            fastcnn_wunpool22_rows_##S(dy + f * PH * PW, arg + f * PH * PW, plane, N,   \
                                       F * PH * PW, PW, 0, PH, WS, OW, tg, ta);         \
            memset(plane + 2 * PH * WS * N, 0, (HS - 2 * PH) * WS * N * sizeof(T));     \
        }                                                                               \
    }                                                                                   \
    /* The output transform and the pooling fused, one filter's tile row at a          \
       time through a 4-row scratch s (4 * WS * N lanes, in L1): no output planes.     \
       M at filter f's tile p0 = r*TW of the band (KS apart per element), y and        \
       arg at [0, f, 0, 0] (images sN apart), tile row th of the plane. */            \
    static void fastcnn_wout_pool22_row_##S(const T* M, Py_ssize_t KS, T* y, int* arg,  \
            Py_ssize_t N, Py_ssize_t sN, Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t WS,   \
            Py_ssize_t OW, Py_ssize_t th, T bias, T* s, T* tv, int* ta) {               \
        const Py_ssize_t ph0 = 2 * th, nph = PH - ph0 < 2 ? PH - ph0 : 2;               \
        if (nph <= 0) return;                                                           \
        fastcnn_wino_out_row_##S(M, KS, s, WS * N, WS / 4, N, bias, 0);                 \
        fastcnn_wpool22_rows_##S(s, WS, y + ph0 * PW, arg + ph0 * PW, N, sN, PW, ph0, nph, \
                                 OW, tv, ta);                                           \
    }                                                                                   \
    /* The unpooling and the output-gradient transform fused, likewise: dy and         \
       arg at [0, f, 0, 0]; the scratch's rows past the pooled ones zeroed. */        \
    static void fastcnn_wgout_unpool22_row_##S(const T* dy, const int* arg, T* dM,      \
            Py_ssize_t KS, Py_ssize_t N, Py_ssize_t sN, Py_ssize_t PH, Py_ssize_t PW,   \
            Py_ssize_t WS, Py_ssize_t OW, Py_ssize_t th, T* s, T* tg, int* ta,          \
            double* acc) {                                                              \
        const Py_ssize_t ph0 = 2 * th;                                                  \
        const Py_ssize_t nph = PH - ph0 < 0 ? 0 : (PH - ph0 < 2 ? PH - ph0 : 2);        \
        fastcnn_wunpool22_rows_##S(dy + ph0 * PW, arg + ph0 * PW, s, N, sN, PW, ph0, nph, \
                                   WS, OW, tg, ta);                                     \
        memset(s + 2 * nph * WS * N, 0, (4 - 2 * nph) * WS * N * sizeof(T));            \
        fastcnn_wino_gout_row_##S(s, WS * N, dM, KS, WS / 4, N, acc);                   \
    }
    FASTCNN_WPOOL_F32
    FASTCNN_WPOOL_F64
    """
    void fastcnn_wpool22_f32(const float* ys, float* y, int* arg, Py_ssize_t N, Py_ssize_t F,
                             Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t HS, Py_ssize_t WS,
                             Py_ssize_t OW, float* tv, int* ta) noexcept nogil
    void fastcnn_wpool22_f64(const double* ys, double* y, int* arg, Py_ssize_t N, Py_ssize_t F,
                             Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t HS, Py_ssize_t WS,
                             Py_ssize_t OW, double* tv, int* ta) noexcept nogil
    void fastcnn_wunpool22_f32(const float* dy, const int* arg, float* dys, Py_ssize_t N,
                               Py_ssize_t F, Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t HS,
                               Py_ssize_t WS, Py_ssize_t OW, float* tg, int* ta) noexcept nogil
    void fastcnn_wunpool22_f64(const double* dy, const int* arg, double* dys, Py_ssize_t N,
                               Py_ssize_t F, Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t HS,
                               Py_ssize_t WS, Py_ssize_t OW, double* tg, int* ta) noexcept nogil
    void fastcnn_wout_pool22_row_f32(const float* M, Py_ssize_t KS, float* y, int* arg,
                                     Py_ssize_t N, Py_ssize_t sN, Py_ssize_t PH, Py_ssize_t PW,
                                     Py_ssize_t WS, Py_ssize_t OW, Py_ssize_t th, float bias,
                                     float* s, float* tv, int* ta) noexcept nogil
    void fastcnn_wout_pool22_row_f64(const double* M, Py_ssize_t KS, double* y, int* arg,
                                     Py_ssize_t N, Py_ssize_t sN, Py_ssize_t PH, Py_ssize_t PW,
                                     Py_ssize_t WS, Py_ssize_t OW, Py_ssize_t th, double bias,
                                     double* s, double* tv, int* ta) noexcept nogil
    void fastcnn_wgout_unpool22_row_f32(const float* dy, const int* arg, float* dM,
                                        Py_ssize_t KS, Py_ssize_t N, Py_ssize_t sN,
                                        Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t WS,
                                        Py_ssize_t OW, Py_ssize_t th, float* s, float* tg,
                                        int* ta, double* acc) noexcept nogil
    void fastcnn_wgout_unpool22_row_f64(const double* dy, const int* arg, double* dM,
                                        Py_ssize_t KS, Py_ssize_t N, Py_ssize_t sN,
                                        Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t WS,
                                        Py_ssize_t OW, Py_ssize_t th, double* s, double* tg,
                                        int* ta, double* acc) noexcept nogil


def pool_relu_2x2(const floating[:, :, :, ::1] ys, floating[:, :, :, ::1] y,
                  int[:, :, :, ::1] argmax, Py_ssize_t OW):
    """The fused conv+ReLU+max-pool's 2x2 stride-2 pooling straight from
    the output planes ys (F, 4*TH, 4*TW, N), so the conv output is never
    written in NCHW: y[n, f, ph, pw] = relu(max of ys[f, 2ph:2ph+2,
    2pw:2pw+2, n]), argmax as cy_pool.max_relu_forward's - the window's
    taps in row-major order, strict > (the first maximum wins), a NaN
    replacing a number but not an earlier NaN; flat index ih*OW + iw in the
    (OH, OW) conv plane; a window the ReLU stops marked -j - 1 with j its
    first element (maximum <= 0, the value +0) or -a - 1 (a NaN, kept)."""
    cdef Py_ssize_t N = y.shape[0], F = y.shape[1], PH = y.shape[2], PW = y.shape[3]
    cdef floating* tv = <floating*>_alloc(PW * N * sizeof(floating))
    cdef int* ta = <int*>_alloc(PW * N * sizeof(int))
    try:
        if N * F * PH * PW == 0:
            return
        with nogil:
            if floating is float:
                fastcnn_wpool22_f32(&ys[0, 0, 0, 0], &y[0, 0, 0, 0], &argmax[0, 0, 0, 0], N, F,
                                    PH, PW, ys.shape[1], ys.shape[2], OW, tv, ta)
            else:
                fastcnn_wpool22_f64(&ys[0, 0, 0, 0], &y[0, 0, 0, 0], &argmax[0, 0, 0, 0], N, F,
                                    PH, PW, ys.shape[1], ys.shape[2], OW, tv, ta)
    finally:
        free(tv)
        free(ta)


def unpool_relu(const floating[:, :, :, ::1] dy, const int[:, :, :, ::1] argmax,
                floating[:, :, :, ::1] dys, Py_ssize_t OW, bint two_by_two):
    """The backward of a fused max pooling after the ReLU into the
    output-gradient planes dys (F, 4*TH, 4*TW, N), with no NCHW gradient
    between: per pooled output dys[f, ih, iw, n] += dy[n, f, ph, pw] at its
    argmax a = ih*OW + iw, or dy * 0 at -a - 1 for a window the ReLU stopped
    (0, or NaN for an inf or NaN dy), on zeroed planes: cy_pool's
    max_relu_backward, its sums in its order. two_by_two: the windows are
    2x2 stride 2 (none overlap), each tap written once, in vectors."""
    cdef Py_ssize_t N = dy.shape[0], F = dy.shape[1], PH = dy.shape[2], PW = dy.shape[3]
    cdef Py_ssize_t f, ph, pw, n
    cdef int a
    cdef floating g
    cdef floating* tg
    cdef int* ta
    if two_by_two and N * F * PH * PW > 0:
        tg = <floating*>_alloc(PW * N * sizeof(floating))
        ta = <int*>_alloc(PW * N * sizeof(int))
        try:
            with nogil:
                if floating is float:
                    fastcnn_wunpool22_f32(&dy[0, 0, 0, 0], &argmax[0, 0, 0, 0], &dys[0, 0, 0, 0],
                                          N, F, PH, PW, dys.shape[1], dys.shape[2], OW, tg, ta)
                else:
                    fastcnn_wunpool22_f64(&dy[0, 0, 0, 0], &argmax[0, 0, 0, 0], &dys[0, 0, 0, 0],
                                          N, F, PH, PW, dys.shape[1], dys.shape[2], OW, tg, ta)
        finally:
            free(tg)
            free(ta)
        return
    with nogil:
        memset(&dys[0, 0, 0, 0], 0,
               dys.shape[0] * dys.shape[1] * dys.shape[2] * dys.shape[3] * sizeof(floating))
        for f in range(F):
            for ph in range(PH):
                for pw in range(PW):
                    for n in range(N):
                        a = argmax[n, f, ph, pw]
                        g = dy[n, f, ph, pw]
                        if a < 0:
                            a = -a - 1
                            g = g * 0
                        dys[f, a // OW, a % OW, n] += g


def output_pool_relu_2x2(const floating[:, :, :, ::1] M, const floating[::1] b,
                         floating[:, :, :, ::1] y, int[:, :, :, ::1] argmax,
                         Py_ssize_t th0, Py_ssize_t OW):
    """output_transform (no relu) then pool_relu_2x2, fused: the pooled rows
    2*th .. 2*th+1 of y and argmax (N, F, PH, PW) for each tile row th of
    the band th0.. that M (36, F', rows*TW, N) holds, one filter's tile row
    at a time through a scratch of 4 plane rows that stays in L1 - the
    conv output never reaches memory, as planes or as NCHW. Same values,
    argmax and marks as the two kernels in turn."""
    cdef Py_ssize_t N = y.shape[0], F = y.shape[1], PH = y.shape[2], PW = y.shape[3]
    cdef Py_ssize_t TW = (OW + 3) // 4, P = M.shape[2]
    cdef Py_ssize_t rows = P // TW, KS = M.shape[1] * P * N, sN = F * PH * PW
    cdef Py_ssize_t f, r
    cdef bint has_bias = b is not None
    cdef floating bf
    if N * F * PH * PW == 0:
        return
    cdef floating* s = <floating*>_alloc(16 * TW * N * sizeof(floating))
    cdef floating* tv = <floating*>_alloc(PW * N * sizeof(floating))
    cdef int* ta = <int*>_alloc(PW * N * sizeof(int))
    try:
        with nogil:
            for f in range(F):
                bf = b[f] if has_bias else 0
                for r in range(rows):
                    if floating is float:
                        fastcnn_wout_pool22_row_f32(&M[0, f, r * TW, 0], KS, &y[0, f, 0, 0],
                                                    &argmax[0, f, 0, 0], N, sN, PH, PW, 4 * TW,
                                                    OW, th0 + r, bf, s, tv, ta)
                    else:
                        fastcnn_wout_pool22_row_f64(&M[0, f, r * TW, 0], KS, &y[0, f, 0, 0],
                                                    &argmax[0, f, 0, 0], N, sN, PH, PW, 4 * TW,
                                                    OW, th0 + r, bf, s, tv, ta)
    finally:
        free(s)
        free(tv)
        free(ta)


def grad_output_unpool_2x2(const floating[:, :, :, ::1] dy, const int[:, :, :, ::1] argmax,
                           floating[:, :, :, ::1] dM, double[::1] db, Py_ssize_t th0,
                           Py_ssize_t OW):
    """unpool_relu (2x2 stride-2 windows) then grad_output_transform, fused:
    dM for the band of tile rows th0.. that dM (36, F', rows*TW, N) holds
    and db[f] += the band's sum of the conv's dy, straight from the pooled
    gradient dy and argmax (N, F, PH, PW), one filter's tile row at a time
    through a scratch of 4 plane rows - no output-gradient planes. Same
    values as the two kernels in turn."""
    cdef Py_ssize_t N = dy.shape[0], F = dy.shape[1], PH = dy.shape[2], PW = dy.shape[3]
    cdef Py_ssize_t TW = (OW + 3) // 4, P = dM.shape[2]
    cdef Py_ssize_t rows = P // TW, KS = dM.shape[1] * P * N, sN = F * PH * PW
    cdef Py_ssize_t f, r
    if N * F * PH * PW == 0:        # no pooled output: the conv's dy is all zero
        np.asarray(dM)[:, :F] = 0
        return
    cdef floating* s = <floating*>_alloc(16 * TW * N * sizeof(floating))
    cdef floating* tg = <floating*>_alloc(PW * N * sizeof(floating))
    cdef int* ta = <int*>_alloc(PW * N * sizeof(int))
    cdef double* acc = <double*>_alloc(N * sizeof(double))          # per image
    try:
        with nogil:
            for f in range(F):
                memset(acc, 0, N * sizeof(double))
                for r in range(rows):
                    if floating is float:
                        fastcnn_wgout_unpool22_row_f32(&dy[0, f, 0, 0], &argmax[0, f, 0, 0],
                                                       &dM[0, f, r * TW, 0], KS, N, sN, PH, PW,
                                                       4 * TW, OW, th0 + r, s, tg, ta, acc)
                    else:
                        fastcnn_wgout_unpool22_row_f64(&dy[0, f, 0, 0], &argmax[0, f, 0, 0],
                                                       &dM[0, f, r * TW, 0], KS, N, sN, PH, PW,
                                                       4 * TW, OW, th0 + r, s, tg, ta, acc)
                db[f] += _lane_sum(acc, N)
    finally:
        free(s)
        free(tg)
        free(ta)
        free(acc)


cdef extern from *:
    """
    /* fastcnn: the 36 products M[k] = U[k] @ V[k] of a band, in AVX-512
       registers where the CPU has it. The inner dimension is C/G (32 on
       the MNIST conv2): too short for BLAS, which packs both operands for
       every one of the 36 small products and ran at under half the core's
       peak there. Here a register tile of R rows of U (filters) by two
       vectors of lanes sums over the whole inner dimension: each step is two
       loads of V, R broadcasts of U and 2R multiply-adds, V's (Cg, 2 vectors)
       block staying in L1 across all F rows. Lanes past the last full pair
       of vectors take one vector, then one masked vector: every lane sums
       the same fused multiply-adds in the same order, so an image's result
       does not depend on where its lanes fall (its chunk, its band). */
    #include <string.h>
    #define FASTCNN_WMM(T, VT, VL, R, NAME, MLOAD, MSTORE, MASK)                         \
    static void NAME(const T* __restrict U, const T* __restrict V, T* __restrict M,     \
            Py_ssize_t F, Py_ssize_t C, Py_ssize_t L) {                                 \
        Py_ssize_t f0, c, l0, r, L2 = L - L % (2 * VL), L1 = L - L % VL;                \
        for (l0 = 0; l0 < L2; l0 += 2 * VL) {                                           \
            for (f0 = 0; f0 + R <= F; f0 += R) {                                        \
                VT a0[R], a1[R];                                                        \
                const T* u = U + f0 * C;                                                \
                _Pragma("GCC unroll 16") for (r = 0; r < R; r++) {                      \
                    a0[r] = (VT){0}; a1[r] = (VT){0}; }                                 \
                for (c = 0; c < C; c++) {                                               \
                    VT v0, v1;                                                          \
                    memcpy(&v0, V + c * L + l0, sizeof v0);                             \
                    memcpy(&v1, V + c * L + l0 + VL, sizeof v1);                        \
                    _Pragma("GCC unroll 16") for (r = 0; r < R; r++) {                  \
                        const T w = u[r * C + c];                                       \
                        a0[r] += w * v0; a1[r] += w * v1; }                             \
                }                                                                       \
                _Pragma("GCC unroll 16") for (r = 0; r < R; r++) {                      \
                    memcpy(M + (f0 + r) * L + l0, &a0[r], sizeof a0[r]);                \
                    memcpy(M + (f0 + r) * L + l0 + VL, &a1[r], sizeof a1[r]); }         \
            }                                                                           \
            for (; f0 < F; f0++) {                                                      \
                VT a0 = (VT){0}, a1 = (VT){0};                                          \
                for (c = 0; c < C; c++) {                                               \
                    VT v0, v1;                                                          \
                    const T w = U[f0 * C + c];                                          \
                    memcpy(&v0, V + c * L + l0, sizeof v0);                             \
                    memcpy(&v1, V + c * L + l0 + VL, sizeof v1);                        \
                    a0 += w * v0; a1 += w * v1;                                         \
                }                                                                       \
                memcpy(M + f0 * L + l0, &a0, sizeof a0);                                \
                memcpy(M + f0 * L + l0 + VL, &a1, sizeof a1);                           \
            }                                                                           \
        }                                                                               \
        for (l0 = L2; l0 < L1; l0 += VL)                                                \
            for (f0 = 0; f0 < F; f0++) {                                                \
                VT a0 = (VT){0};                                                        \
                for (c = 0; c < C; c++) {                                               \
                    VT v0;                                                              \
                    memcpy(&v0, V + c * L + l0, sizeof v0);                             \
                    a0 += U[f0 * C + c] * v0;                                           \
                }                                                                       \
                memcpy(M + f0 * L + l0, &a0, sizeof a0);                                \
            }                                                                           \
        for (f0 = 0; f0 < F && L1 < L; f0++) {                                          \
            VT a0 = (VT){0};                                                            \
            for (c = 0; c < C; c++)                                                     \
                a0 += U[f0 * C + c] * (VT)MLOAD(MASK(L - L1), V + c * L + L1);          \
            MSTORE(M + f0 * L + L1, MASK(L - L1), a0);                                  \
        }                                                                               \
    }
    #if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 6))
    #  define FASTCNN_WMM_AVX512 1
    #  include <immintrin.h>
    typedef float fastcnn_wmm_f16 __attribute__((vector_size(64)));
    typedef double fastcnn_wmm_d8 __attribute__((vector_size(64)));
    #  define FASTCNN_WMM_MASK16(n) ((__mmask16)((1u << (n)) - 1u))
    #  define FASTCNN_WMM_MASK8(n) ((__mmask8)((1u << (n)) - 1u))
    #  pragma GCC push_options
    #  pragma GCC target("avx512f,fma")
    #  ifdef __clang__
    #    pragma clang attribute push (__attribute__((target("avx512f,fma"))), apply_to=function)
    #  endif
    FASTCNN_WMM(float, fastcnn_wmm_f16, 16, 8, fastcnn_wmm_f32, _mm512_maskz_loadu_ps,
                _mm512_mask_storeu_ps, FASTCNN_WMM_MASK16)
    FASTCNN_WMM(double, fastcnn_wmm_d8, 8, 8, fastcnn_wmm_f64, _mm512_maskz_loadu_pd,
                _mm512_mask_storeu_pd, FASTCNN_WMM_MASK8)
    #  ifdef __clang__
    #    pragma clang attribute pop
    #  endif
    #  pragma GCC pop_options
    /* AVX2 + FMA (16 vector registers, not 32): 4 rows of U by two vectors
       of 8 floats (4 doubles), 8 sums, as many as two multiply-add units
       of 4 cycles' latency keep busy (6 rows, 12 sums, measured the same
       and leave 4 of the 64 filters of the MNIST conv2 to the row loop);
       masks are vectors of lanes here, not mask registers */
    typedef float fastcnn_wmm_f8 __attribute__((vector_size(32)));
    typedef double fastcnn_wmm_d4 __attribute__((vector_size(32)));
    #  pragma GCC push_options
    #  pragma GCC target("avx2,fma")
    #  ifdef __clang__
    #    pragma clang attribute push (__attribute__((target("avx2,fma"))), apply_to=function)
    #  endif
    static inline __m256i fastcnn_wmm_lanes8(Py_ssize_t n) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static inline __m256i fastcnn_wmm_lanes4(Py_ssize_t n) {
        return _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)n),
                                  _mm256_setr_epi64x(0, 1, 2, 3));
    }
    #  define FASTCNN_WMM_LD8(m, p) _mm256_maskload_ps((p), (m))
    #  define FASTCNN_WMM_ST8(p, m, a) _mm256_maskstore_ps((p), (m), (__m256)(a))
    #  define FASTCNN_WMM_LD4(m, p) _mm256_maskload_pd((p), (m))
    #  define FASTCNN_WMM_ST4(p, m, a) _mm256_maskstore_pd((p), (m), (__m256d)(a))
    FASTCNN_WMM(float, fastcnn_wmm_f8, 8, 4, fastcnn_wmm2_f32, FASTCNN_WMM_LD8,
                FASTCNN_WMM_ST8, fastcnn_wmm_lanes8)
    FASTCNN_WMM(double, fastcnn_wmm_d4, 4, 4, fastcnn_wmm2_f64, FASTCNN_WMM_LD4,
                FASTCNN_WMM_ST4, fastcnn_wmm_lanes4)
    #  ifdef __clang__
    #    pragma clang attribute pop
    #  endif
    #  pragma GCC pop_options
    /* 2 AVX-512, 1 AVX2 + FMA, 0 neither (numpy's matmul) */
    static int fastcnn_wmm_have(void) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) return 2;
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    #else
    #  define FASTCNN_WMM_AVX512 0
    static void fastcnn_wmm_f32(const float* U, const float* V, float* M,
                                Py_ssize_t F, Py_ssize_t C, Py_ssize_t L) {}
    static void fastcnn_wmm_f64(const double* U, const double* V, double* M,
                                Py_ssize_t F, Py_ssize_t C, Py_ssize_t L) {}
    static void fastcnn_wmm2_f32(const float* U, const float* V, float* M,
                                 Py_ssize_t F, Py_ssize_t C, Py_ssize_t L) {}
    static void fastcnn_wmm2_f64(const double* U, const double* V, double* M,
                                 Py_ssize_t F, Py_ssize_t C, Py_ssize_t L) {}
    static int fastcnn_wmm_have(void) { return 0; }
    #endif
    """
    void fastcnn_wmm_f32(const float* U, const float* V, float* M, Py_ssize_t F,
                         Py_ssize_t C, Py_ssize_t L) noexcept nogil
    void fastcnn_wmm_f64(const double* U, const double* V, double* M, Py_ssize_t F,
                         Py_ssize_t C, Py_ssize_t L) noexcept nogil
    void fastcnn_wmm2_f32(const float* U, const float* V, float* M, Py_ssize_t F,
                          Py_ssize_t C, Py_ssize_t L) noexcept nogil
    void fastcnn_wmm2_f64(const double* U, const double* V, double* M, Py_ssize_t F,
                          Py_ssize_t C, Py_ssize_t L) noexcept nogil
    int fastcnn_wmm_have() noexcept nogil


# Which loops products and weight_products run: 2 this module's AVX-512
# ones, 1 its AVX2 + FMA ones, 0 numpy's matmul; a Python global, so a test
# can take the lower levels on any CPU.
_simd = fastcnn_wmm_have()


def products(const floating[:, :, ::1] U, const floating[:, :, :, :] V,
             floating[:, :, :, ::1] M):
    """M[k, g*Fg + f] = sum over c of U[k, g*Fg + f, c] V[k, g*Cg + c] for a
    band: U (36, F, Cg), V (36, C, rows*TW, N), M (36, F', rows*TW, N) with
    F' >= F (rows past F untouched), G = C / Cg groups. V may be the first C
    rows of a padded array (the backward's dM[:, :F]): each V[k] must be
    contiguous, not V. On a CPU with AVX-512, or AVX2 and FMA, these are
    this module's register tiles (see above; ``_simd``); elsewhere numpy's
    matmul, whose BLAS has the kernels for that CPU."""
    cdef Py_ssize_t F = U.shape[1], Cg = U.shape[2], C = V.shape[1]
    cdef Py_ssize_t L = V.shape[2] * V.shape[3], G = C // Cg, Fg = F // G
    cdef Py_ssize_t k, g
    if (V.strides[3] != sizeof(floating) or V.strides[2] != V.shape[3] * sizeof(floating)
            or V.strides[1] != L * sizeof(floating)):
        raise ValueError("products: each V[k] must be C-contiguous (C, rows*TW, N)")
    if _simd == 0:
        out = np.asarray(M)[:, :F].reshape(36, G, Fg, L)    # a view: M[k] is contiguous
        np.matmul(np.asarray(U).reshape(36, G, Fg, Cg), np.asarray(V).reshape(36, G, Cg, L),
                  out=out)
        return
    if L == 0 or Fg == 0:
        return
    if Cg == 0:
        np.asarray(M).fill(0)
        return
    cdef bint wide = _simd == 2
    with nogil:
        for k in range(36):
            for g in range(G):
                if floating is float:
                    if wide:
                        fastcnn_wmm_f32(&U[k, g * Fg, 0], &V[k, g * Cg, 0, 0],
                                        &M[k, g * Fg, 0, 0], Fg, Cg, L)
                    else:
                        fastcnn_wmm2_f32(&U[k, g * Fg, 0], &V[k, g * Cg, 0, 0],
                                         &M[k, g * Fg, 0, 0], Fg, Cg, L)
                else:
                    if wide:
                        fastcnn_wmm_f64(&U[k, g * Fg, 0], &V[k, g * Cg, 0, 0],
                                        &M[k, g * Fg, 0, 0], Fg, Cg, L)
                    else:
                        fastcnn_wmm2_f64(&U[k, g * Fg, 0], &V[k, g * Cg, 0, 0],
                                         &M[k, g * Fg, 0, 0], Fg, Cg, L)


cdef extern from *:
    """
    /* fastcnn: the backward's dU[k, f, c] += sum over l of dM[k, f, l] V[k, c, l]
       for a band, in AVX-512 registers where the CPU has it. The sums run
       along the contiguous lane axis l (tiles x images): a register block
       of 3 filters by 8 channels holds 24 vectors of 16 lane sums (each step:
       11 loads for 24 multiply-adds, against 10 for 16 with 2), each lane
       summing only L/16 terms (16 for a band of the MNIST conv2), and the
       block's 16 lanes are added in double, into dU (double): a float32 sum
       of all L terms (BLAS's) is what kept the Winograd dw furthest from
       the direct convolution's. The 8 sums of a filter's 8 channels come out
       as one vector of doubles (a transposing reduction tree), so one load,
       add and store of dU per block row. Past whole blocks: 2 filters, then
       1; one channel at a time; past whole vectors of lanes: masked loads
       (zeros). */
    #if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 6))
    #  include <immintrin.h>
    #  pragma GCC push_options
    #  pragma GCC target("avx512f,fma")
    #  ifdef __clang__
    #    pragma clang attribute push (__attribute__((target("avx512f,fma"))), apply_to=function)
    #  endif
    /* the 16 float lanes of a in double, folded to 8 */
    static inline __m512d fastcnn_wup_d8(__m512 a) {
        return _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(a)),
                             _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
                                 _mm512_castps_pd(a), 1))));
    }
    /* lanes (a0 + a1, b0 + b1, a2 + a3, b2 + b3, ...) of a and b */
    static inline __m512d fastcnn_wup_adj(__m512d a, __m512d b) {
        return _mm512_add_pd(_mm512_unpacklo_pd(a, b), _mm512_unpackhi_pd(a, b));
    }
    /* the even 128-bit blocks of a, b plus their odd ones */
    static inline __m512d fastcnn_wup_blocks(__m512d a, __m512d b) {
        return _mm512_add_pd(_mm512_shuffle_f64x2(a, b, 0x88), _mm512_shuffle_f64x2(a, b, 0xdd));
    }
    /* (sum of a[0], ..., sum of a[7]) of 8 vectors of 8 doubles */
    static inline __m512d fastcnn_wup_hsum8(const __m512d* a) {
        const __m512d t0 = fastcnn_wup_adj(a[0], a[1]), t1 = fastcnn_wup_adj(a[2], a[3]),
                      t2 = fastcnn_wup_adj(a[4], a[5]), t3 = fastcnn_wup_adj(a[6], a[7]);
        return fastcnn_wup_blocks(fastcnn_wup_blocks(t0, t1), fastcnn_wup_blocks(t2, t3));
    }
    /* R <= 3 filters (rows of dM L apart) by 8 channels (rows of V L apart) into
       dU (rows DS apart) */
    static inline __attribute__((always_inline)) void fastcnn_wup_block(
            const float* __restrict dM, const float* __restrict V, double* __restrict dU,
            Py_ssize_t DS, Py_ssize_t L, const int R) {
        __m512 acc[3][8];
        Py_ssize_t l, L1 = L - L % 16;
        int r, c;
        for (r = 0; r < R; r++)
            for (c = 0; c < 8; c++) acc[r][c] = _mm512_setzero_ps();
        for (l = 0; l <= L; l += 16) {
            __m512 m[3];
            if (l == L) break;
            if (l < L1) {
                for (r = 0; r < R; r++) m[r] = _mm512_loadu_ps(dM + r * L + l);
                for (c = 0; c < 8; c++) {
                    __m512 v = _mm512_loadu_ps(V + c * L + l);
                    /* one load per vector: GCC would fold it into each FMA */
                    __asm__("" : "+v"(v));
                    for (r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(m[r], v, acc[r][c]);
                }
            } else {
                const __mmask16 k = (__mmask16)((1u << (L - l)) - 1);
                for (r = 0; r < R; r++) m[r] = _mm512_maskz_loadu_ps(k, dM + r * L + l);
                for (c = 0; c < 8; c++) {
                    const __m512 v = _mm512_maskz_loadu_ps(k, V + c * L + l);
                    for (r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(m[r], v, acc[r][c]);
                }
            }
        }
        for (r = 0; r < R; r++) {
            __m512d d[8];
            for (c = 0; c < 8; c++) d[c] = fastcnn_wup_d8(acc[r][c]);
            _mm512_storeu_pd(dU + r * DS, _mm512_add_pd(_mm512_loadu_pd(dU + r * DS),
                                                        fastcnn_wup_hsum8(d)));
        }
    }
    /* one filter by one channel */
    static inline void fastcnn_wup_one(const float* __restrict m, const float* __restrict v,
                                       double* __restrict dU, Py_ssize_t L) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        Py_ssize_t l = 0;
        for (; l + 32 <= L; l += 32) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(m + l), _mm512_loadu_ps(v + l), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(m + l + 16), _mm512_loadu_ps(v + l + 16), a1);
        }
        for (; l < L; l += 16) {
            const __mmask16 k = L - l >= 16 ? (__mmask16)0xffff
                                            : (__mmask16)((1u << (L - l)) - 1);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, m + l),
                                 _mm512_maskz_loadu_ps(k, v + l), a0);
        }
        *dU += _mm512_reduce_add_pd(_mm512_add_pd(fastcnn_wup_d8(a0), fastcnn_wup_d8(a1)));
    }
    /* one group of one element: dM (F, L), V (C, L), dU (F, C) */
    static void fastcnn_wup_f32(const float* dM, const float* V, double* dU,
                                Py_ssize_t F, Py_ssize_t C, Py_ssize_t L) {
        Py_ssize_t f, c, C8 = C - C % 8;
        for (f = 0; f + 3 <= F; f += 3)
            for (c = 0; c < C8; c += 8)
                fastcnn_wup_block(dM + f * L, V + c * L, dU + f * C + c, C, L, 3);
        for (; f + 2 <= F; f += 2)
            for (c = 0; c < C8; c += 8)
                fastcnn_wup_block(dM + f * L, V + c * L, dU + f * C + c, C, L, 2);
        for (; f < F; f++)
            for (c = 0; c < C8; c += 8)
                fastcnn_wup_block(dM + f * L, V + c * L, dU + f * C + c, C, L, 1);
        for (f = 0; f < F; f++)
            for (c = C8; c < C; c++)
                fastcnn_wup_one(dM + f * L, V + c * L, dU + f * C + c, L);
    }
    #  ifdef __clang__
    #    pragma clang attribute pop
    #  endif
    #  pragma GCC pop_options
    /* The same with AVX2 + FMA. Its 16 registers hold a block of 3 filters by
       4 channels (12 vectors of 8 lane sums; each step 7 loads for 12
       multiply-adds), a filter's 4 channel sums leaving as one vector of 4
       doubles. A lane sums at most 16 terms: bands over 128 lanes run in
       balanced segments, each block's segment added to dU on its own. One
       sum per lane over a band of 176 lanes (22 terms) took the dw of a batch
       of 130 (tests/cases.py) to 1.03e-4 of loops', over the contract; in
       segments of 88, 4.5e-5 (numpy's matmul, one float32 sum of all L
       terms per element: 7.5e-5 there, but over 1e-4 on 9 of 20 random
       draws of that shape, and 2.6x further from loops' than lanes of L/8
       terms on the MNIST conv2). */
    #  pragma GCC push_options
    #  pragma GCC target("avx2,fma")
    #  ifdef __clang__
    #    pragma clang attribute push (__attribute__((target("avx2,fma"))), apply_to=function)
    #  endif
    /* the 8 float lanes of a in double, folded to 4 */
    static inline __m256d fastcnn_wup2_d4(__m256 a) {
        return _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)),
                             _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
    }
    /* (sum of a[0], ..., sum of a[3]) of 4 vectors of 4 doubles */
    static inline __m256d fastcnn_wup2_hsum4(const __m256d* a) {
        const __m256d t0 = _mm256_hadd_pd(a[0], a[1]), t1 = _mm256_hadd_pd(a[2], a[3]);
        return _mm256_add_pd(_mm256_permute2f128_pd(t0, t1, 0x20),
                             _mm256_permute2f128_pd(t0, t1, 0x31));
    }
    static inline __m256i fastcnn_wup2_lanes(Py_ssize_t n) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    /* R <= 3 filters (rows of dM LS apart) by 4 channels (rows of V LS apart),
       lanes 0 .. L-1 of each row, into dU (rows DS apart) */
    static inline __attribute__((always_inline)) void fastcnn_wup2_block(
            const float* __restrict dM, const float* __restrict V, double* __restrict dU,
            Py_ssize_t DS, Py_ssize_t LS, Py_ssize_t L, const int R) {
        __m256 acc[3][4];
        Py_ssize_t l, L1 = L - L % 8;
        int r, c;
        for (r = 0; r < R; r++)
            for (c = 0; c < 4; c++) acc[r][c] = _mm256_setzero_ps();
        for (l = 0; l < L1; l += 8) {
            __m256 m[3];
            for (r = 0; r < R; r++) m[r] = _mm256_loadu_ps(dM + r * LS + l);
            for (c = 0; c < 4; c++) {
                __m256 v = _mm256_loadu_ps(V + c * LS + l);
                __asm__("" : "+x"(v));      /* one load per vector, as above */
                for (r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(m[r], v, acc[r][c]);
            }
        }
        if (L1 < L) {       /* masked loads: zeros past L */
            const __m256i k = fastcnn_wup2_lanes(L - L1);
            __m256 m[3];
            for (r = 0; r < R; r++) m[r] = _mm256_maskload_ps(dM + r * LS + L1, k);
            for (c = 0; c < 4; c++) {
                const __m256 v = _mm256_maskload_ps(V + c * LS + L1, k);
                for (r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(m[r], v, acc[r][c]);
            }
        }
        for (r = 0; r < R; r++) {
            __m256d d[4];
            for (c = 0; c < 4; c++) d[c] = fastcnn_wup2_d4(acc[r][c]);
            _mm256_storeu_pd(dU + r * DS, _mm256_add_pd(_mm256_loadu_pd(dU + r * DS),
                                                        fastcnn_wup2_hsum4(d)));
        }
    }
    /* one filter by one channel, lanes 0 .. L-1 summed in two vectors */
    static inline void fastcnn_wup2_one(const float* __restrict m, const float* __restrict v,
                                        double* __restrict dU, Py_ssize_t L) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        Py_ssize_t l = 0;
        __m256d s;
        __m128d h;
        for (; l + 16 <= L; l += 16) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(m + l), _mm256_loadu_ps(v + l), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(m + l + 8), _mm256_loadu_ps(v + l + 8), a1);
        }
        for (; l < L; l += 8) {
            const __m256i k = fastcnn_wup2_lanes(L - l);
            a0 = _mm256_fmadd_ps(_mm256_maskload_ps(m + l, k), _mm256_maskload_ps(v + l, k), a0);
        }
        s = _mm256_add_pd(fastcnn_wup2_d4(a0), fastcnn_wup2_d4(a1));
        h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
        *dU += _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    }
    /* one group of one element: dM (F, L), V (C, L), dU (F, C) */
    static void fastcnn_wup2_f32(const float* dM, const float* V, double* dU,
                                 Py_ssize_t F, Py_ssize_t C, Py_ssize_t L) {
        const Py_ssize_t parts = (L + 127) / 128, seg = ((L + parts - 1) / parts + 7) / 8 * 8;
        Py_ssize_t f, c, l, C4 = C - C % 4;
        for (l = 0; l < L; l += seg) {
            const Py_ssize_t n = L - l < seg ? L - l : seg;
            for (f = 0; f + 3 <= F; f += 3)
                for (c = 0; c < C4; c += 4)
                    fastcnn_wup2_block(dM + f * L + l, V + c * L + l, dU + f * C + c, C, L, n, 3);
            for (; f + 2 <= F; f += 2)
                for (c = 0; c < C4; c += 4)
                    fastcnn_wup2_block(dM + f * L + l, V + c * L + l, dU + f * C + c, C, L, n, 2);
            for (; f < F; f++)
                for (c = 0; c < C4; c += 4)
                    fastcnn_wup2_block(dM + f * L + l, V + c * L + l, dU + f * C + c, C, L, n, 1);
            for (f = 0; f < F; f++)
                for (c = C4; c < C; c++)
                    fastcnn_wup2_one(dM + f * L + l, V + c * L + l, dU + f * C + c, n);
        }
    }
    #  ifdef __clang__
    #    pragma clang attribute pop
    #  endif
    #  pragma GCC pop_options
    #else
    static void fastcnn_wup_f32(const float* dM, const float* V, double* dU,
                                Py_ssize_t F, Py_ssize_t C, Py_ssize_t L) {}
    static void fastcnn_wup2_f32(const float* dM, const float* V, double* dU,
                                 Py_ssize_t F, Py_ssize_t C, Py_ssize_t L) {}
    #endif
    """
    void fastcnn_wup_f32(const float* dM, const float* V, double* dU, Py_ssize_t F,
                         Py_ssize_t C, Py_ssize_t L) noexcept nogil
    void fastcnn_wup2_f32(const float* dM, const float* V, double* dU, Py_ssize_t F,
                          Py_ssize_t C, Py_ssize_t L) noexcept nogil


def weight_products(const floating[:, :, :, ::1] dM, const floating[:, :, :, ::1] V,
                    double[:, :, ::1] dU):
    """dU[k, g*Fg + f, c] += sum over l of dM[k, g*Fg + f, l] V[k, g*Cg + c, l]
    for a band (the backward's dU = dM V^T): dM (36, F', rows*TW, N) with
    F' >= F (rows past F unread), V (36, C, rows*TW, N), dU (36, F, Cg) in
    double, accumulated into across
    bands and chunks; G = C / Cg groups. float32 on a CPU with AVX-512, or
    AVX2 and FMA: this module's register blocks (see above), each lane
    summing L/16 terms (AVX2: at most 16) and the lanes added in double;
    elsewhere, and for float64, numpy's matmul of the band, then added."""
    cdef Py_ssize_t F = dU.shape[1], Cg = dU.shape[2], C = V.shape[1]
    cdef Py_ssize_t L = V.shape[2] * V.shape[3], G = C // Cg, Fg = F // G
    cdef Py_ssize_t k, g
    cdef bint wide = _simd == 2
    if floating is float:
        if _simd:
            if L == 0 or Fg == 0 or Cg == 0:
                return
            with nogil:
                for k in range(36):
                    for g in range(G):
                        if wide:
                            fastcnn_wup_f32(&dM[k, g * Fg, 0, 0], &V[k, g * Cg, 0, 0],
                                            &dU[k, g * Fg, 0], Fg, Cg, L)
                        else:
                            fastcnn_wup2_f32(&dM[k, g * Fg, 0, 0], &V[k, g * Cg, 0, 0],
                                             &dU[k, g * Fg, 0], Fg, Cg, L)
            return
    d = np.asarray(dU).reshape(36, G, Fg, Cg)
    d += np.matmul(np.asarray(dM)[:, :F].reshape(36, G, Fg, L),
                   np.asarray(V).reshape(36, G, Cg, L).transpose(0, 1, 3, 2))
