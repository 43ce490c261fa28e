"""Direct depthwise convolution loops, forward and backward.

Depthwise: groups == C, w (F, 1, KH, KW) with F = M*C (channel multiplier
M), filter f = c*M + m reads input channel c only:
    y[n, f, i, j] = b[f] + sum_{kh,kw} xpad[n, c, i*SH + kh*DH, j*SW + kw*DW] * w[f, kh, kw]
with xpad the zero-padded input (HP = H+PT+PB rows, WP = W+PL+PR columns).
K = KH*KW taps per output is far too few for a matrix product to pay for
its column matrix, so these are direct loops.

The phase layout ``xp`` (N, C, SH*SW*(HQ+1), WQ), HQ = ceil(HP/SH),
WQ = ceil(WP/SW): each padded plane split by stride phase into SH*SW blocks
of (HQ+1) rows of WQ, block (pr, pc) holding xpad[a*SH + pr, b*SW + pc] at
row a, column b (zeros past the padded plane, and one zero row more).
Padded position (i*SH + kh*DH, j*SW + kw*DW) is then row i + (kh*DH)//SH,
column j + (kw*DW)//SW of block ((kh*DH) % SH, (kw*DW) % SW): for every
stride, a tap's inputs for a row of outputs are one contiguous run, and
for a whole plane of outputs one run of OH*WQ with row pitch WQ ("garbage"
columns OW..WQ-1 between rows) - so every inner loop is unit-stride, has
no bounds test and vectorises. Stride 1 is plain padding plus a zero row.
The forward writes xp; the backward reads it: it is the driver's saved
copy of x.

Flat runs: the forward computes a plane narrower than FLAT_BELOW as one
run of OH*WQ outputs (garbage columns and all) into scratch and copies the
OW valid columns of each row out: one long loop per tap in place of OH
rows of 7 or 14 that leave the vector lanes idle. Wider planes go row by
row, where the copy would cost more than the short rows lose.

Backward: dw and db per tap as one dot product over the run of OH*WQ, dy
copied once per plane to pitch WQ with zero garbage columns (float
partial sums, added in double at most every 64 terms a lane; a NaN from a
garbage column times an inf of x sends that plane back to sums over the
valid columns). dx for stride 1 is a gather, the correlation of
zero-padded dy with the flipped filters: one store per dx element, flat
runs for narrow planes as in the forward; the same copy of dy serves it
(see backward). For larger strides it is a scatter in the phase layout,
each tap one run over the whole plane of dy, then cropped back to dx. The
scratch planes of dy are zeroed once per call: each plane writes only
where dy goes. The forward's ``relu`` puts each output plane through
ReLU (np.maximum(y, 0): NaN stays, +0 for the rest <= 0) while it is in
cache, for the fused conv+ReLU, and writes the ReLU's mask [y > 0] there
too when given an array for it; the backward, given that mask, multiplies
dy by it as it copies each plane to pitch WQ: no pass over y for the mask,
none over dy to mask it.

3x3 filters (all of MobileNet's depthwise convs) run C loops (the extern
block below): the forward's nine taps in one pass, dw's nine dot products
and db in one pass over dy (ten vector sums), the stride-1 gather and the
strided scatter, and the copies into and out of the padded planes
(stride 1 and 2: whole planes per call, the zeros between rows as short
runs, not memset calls). They are written with GCC's
vector extensions and compiled twice on x86-64: for AVX2 + FMA and for the
portable SSE2 baseline, chosen at the first call from what the CPU has
(``simd()`` says which; a test runs both). The portable wheel flags alone
gave SSE2 without FMA, at about half the speed. Rows end with one vector
that overlaps the one before (rewriting the same values), so only rows
narrower than a vector go flat. Other filter sizes keep the typed loops.

Small maps (``forward_small``/``backward_small``; the driver sends 3x3
filters with few output pixels here): per plane, the pad copy, the flat
run's garbage columns, the crop and rows of 7 that leave vector lanes idle
cost far more than the 9 multiply-adds per output. So these pack each
channel's planes of all N images into xp (C, HP, WP, NP) with the images
innermost (zero padding once, NP = N rounded up to 8 with zero lanes):
every output pixel of all images is NP/L whole vectors, nine FMAs with a
broadcast weight, any stride and dilation by plain indexing, no edge
cases. The way in and out is a transpose of L pixels by L images in
registers (GCC vector shuffles); the forward computes L pixels' vectors
and transposes them straight into y with the ReLU and its mask. The
backward packs dy (times the mask) the same way: dw and db are long
vector dot products over it; dx for stride 1 and M == 1 is a gather (dy
packed zero-padded, the forward's loop with the flipped filter), else a
scatter into a packed plane that is copied out.

What this is: typed loops over memoryviews and the C loops above, fused
float32/float64, run with the GIL released, single-threaded, over a block of images [n0, n1)
and channels [c0, c1): the driver (``fastcnn.backends._depthwise``) runs
blocks concurrently on fastcnn's pool. ``numba_depthwise.py`` has the
same kernels with the same arguments. What this is not: no validation, no
allocation beyond a table of tap offsets (and of dw sums), no threads, no
AVX-512 (not assumed of users' CPUs).

Shapes: x/dx (N, C, H, W), w (F, KH, KW), b (F,), y/dy (N, F, OH, OW);
stride (SH, SW), dilation (DH, DW), top/left padding PT, PL (bottom/right
padding only shows in the sizes of xp, y and dy).
"""
from cython cimport floating
from libc.stdlib cimport free, malloc

from fastcnn._kernels._rows cimport _hi, _lo, _zero


cdef extern from *:
    """
    /* fastcnn depthwise: the 3x3 loops (see the module docstring). */
    #include <string.h>
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #  define FASTCNN_DW_X86 1
    #endif
    #if defined(__GNUC__)
    #  define FASTCNN_DW_LD(V, p) ({ V v_; memcpy(&v_, (p), sizeof v_); v_; })
    #  define FASTCNN_DW_ST(p, v) do { __typeof__(v) s_ = (v); memcpy((p), &s_, sizeof s_); } while (0)
    #  define FASTCNN_DW_SPLAT(V, s) ((V){0} + (s))
    /* np.maximum(s, 0): NaN <= 0 is false, so NaN stays; the rest of <= 0 -> +0 */
    #  define FASTCNN_DW_RELU(V, VI, s) ((V)((VI)(s) & ~(VI)((s) <= FASTCNN_DW_SPLAT(V, 0))))
    #else
    #  define FASTCNN_DW_LD(V, p) (*(p))
    #  define FASTCNN_DW_ST(p, v) (*(p) = (v))
    #  define FASTCNN_DW_SPLAT(V, s) ((V)(s))
    #  define FASTCNN_DW_RELU(V, VI, s) (!((s) <= 0) ? (s) : (V)0)
    #endif

    /* a 3x3 kernel's nine weights as vectors w0..w8 and its tap offsets o0..o8 */
    #define FASTCNN_DW_TAPS9(V, w, offs)                                                  \\
        const V w0 = FASTCNN_DW_SPLAT(V, w[0]), w1 = FASTCNN_DW_SPLAT(V, w[1]);       \\
        const V w2 = FASTCNN_DW_SPLAT(V, w[2]), w3 = FASTCNN_DW_SPLAT(V, w[3]);       \\
        const V w4 = FASTCNN_DW_SPLAT(V, w[4]), w5 = FASTCNN_DW_SPLAT(V, w[5]);       \\
        const V w6 = FASTCNN_DW_SPLAT(V, w[6]), w7 = FASTCNN_DW_SPLAT(V, w[7]);       \\
        const V w8 = FASTCNN_DW_SPLAT(V, w[8]);                                       \\
        const Py_ssize_t o0 = offs[0], o1 = offs[1], o2 = offs[2], o3 = offs[3];      \\
        const Py_ssize_t o4 = offs[4], o5 = offs[5], o6 = offs[6], o7 = offs[7];      \\
        const Py_ssize_t o8 = offs[8];

    #define FASTCNN_DW_KERNELS(T, S, V, VI, L, ATTR)                                      \\
    /* out[i*op + j] (mode 0) = bias + sum_t w[t] * x[i*ip + offs[t] + j], (mode 1)   \\
       the same through ReLU, (mode 2) += the sum; i < rows, j < n */                 \\
    static ATTR void fastcnn_dw_taps9_##S(const T* x, const Py_ssize_t* offs,        \\
            const T* w, T bias, T* out, Py_ssize_t rows, Py_ssize_t n,                \\
            Py_ssize_t ip, Py_ssize_t op, int mode) {                                 \\
        FASTCNN_DW_TAPS9(V, w, offs)                                                  \\
        const V vb = FASTCNN_DW_SPLAT(V, bias);                                       \\
        Py_ssize_t i, j;                                                              \\
        for (i = 0; i < rows; i++) {                                                  \\
            const T* r = x + i * ip;                                                  \\
            T* o = out + i * op;                                                      \\
            /* one pointer per tap: no offsets reloaded in the loop */                \\
            const T *p0 = r + o0, *p1 = r + o1, *p2 = r + o2, *p3 = r + o3;           \\
            const T *p4 = r + o4, *p5 = r + o5, *p6 = r + o6, *p7 = r + o7;           \\
            const T *p8 = r + o8;                                                     \\
            j = 0;                                                                    \\
            for (;;) {                                                                \\
                if (j + L > n) {                                                      \\
                    /* the tail: one more vector ending at n, over lanes already  */  \\
                    /* written (the same values again), unless they add up        */  \\
                    if (mode == 2 || n < L || j >= n)                                 \\
                        break;                                                        \\
                    j = n - L;                                                        \\
                }                                                                     \\
                V s = ((vb + (w0 * FASTCNN_DW_LD(V, p0 + j)                            \\
                              + w1 * FASTCNN_DW_LD(V, p1 + j)                          \\
                              + w2 * FASTCNN_DW_LD(V, p2 + j)))                        \\
                       + (w3 * FASTCNN_DW_LD(V, p3 + j)                                \\
                          + w4 * FASTCNN_DW_LD(V, p4 + j)                              \\
                          + w5 * FASTCNN_DW_LD(V, p5 + j)))                            \\
                      + (w6 * FASTCNN_DW_LD(V, p6 + j)                                 \\
                         + w7 * FASTCNN_DW_LD(V, p7 + j)                               \\
                         + w8 * FASTCNN_DW_LD(V, p8 + j));                             \\
                if (mode == 1)                                                        \\
                    s = FASTCNN_DW_RELU(V, VI, s);                                    \\
                else if (mode == 2)                                                   \\
                    s += FASTCNN_DW_LD(V, o + j);                                     \\
                FASTCNN_DW_ST(o + j, s);                                              \\
                j += L;                                                               \\
            }                                                                         \\
            for (; j < n; j++) {                                                      \\
                T s = ((bias + (w[0] * p0[j] + w[1] * p1[j] + w[2] * p2[j]))          \\
                       + (w[3] * p3[j] + w[4] * p4[j] + w[5] * p5[j]))                \\
                      + (w[6] * p6[j] + w[7] * p7[j] + w[8] * p8[j]);                 \\
                if (mode == 1)                                                        \\
                    s = !(s <= 0) ? s : (T)0;                                         \\
                else if (mode == 2)                                                   \\
                    s += o[j];                                                        \\
                o[j] = s;                                                             \\
            }                                                                         \\
        }                                                                             \\
    }                                                                                 \\
    /* sums[t] += sum_j dy[j] * x[offs[t] + j] (t < 9), sums[9] += sum_j dy[j], */   \\
    /* j < n: one pass, ten vector sums, each over at most 64 terms a lane     */    \\
    /* before it is added in double */                                               \\
    static ATTR void fastcnn_dw_dots9_##S(const T* dy, const T* x,                    \\
            const Py_ssize_t* offs, Py_ssize_t n, double* sums) {                     \\
        const Py_ssize_t o0 = offs[0], o1 = offs[1], o2 = offs[2], o3 = offs[3];      \\
        const Py_ssize_t o4 = offs[4], o5 = offs[5], o6 = offs[6], o7 = offs[7];      \\
        const Py_ssize_t o8 = offs[8];                                                \\
        const T *p0 = x + o0, *p1 = x + o1, *p2 = x + o2, *p3 = x + o3;               \\
        const T *p4 = x + o4, *p5 = x + o5, *p6 = x + o6, *p7 = x + o7;               \\
        const T *p8 = x + o8;                                                         \\
        Py_ssize_t j = 0, e, l;                                                       \\
        while (j + L <= n) {                                                          \\
            V a[10];                                                                  \\
            for (l = 0; l < 10; l++)                                                  \\
                a[l] = FASTCNN_DW_SPLAT(V, 0);                                        \\
            e = j + 64 * L < n ? j + 64 * L : n;                                      \\
            for (; j + L <= e; j += L) {                                              \\
                const V d = FASTCNN_DW_LD(V, dy + j);                                 \\
                a[0] += d * FASTCNN_DW_LD(V, p0 + j);                                 \\
                a[1] += d * FASTCNN_DW_LD(V, p1 + j);                                 \\
                a[2] += d * FASTCNN_DW_LD(V, p2 + j);                                 \\
                a[3] += d * FASTCNN_DW_LD(V, p3 + j);                                 \\
                a[4] += d * FASTCNN_DW_LD(V, p4 + j);                                 \\
                a[5] += d * FASTCNN_DW_LD(V, p5 + j);                                 \\
                a[6] += d * FASTCNN_DW_LD(V, p6 + j);                                 \\
                a[7] += d * FASTCNN_DW_LD(V, p7 + j);                                 \\
                a[8] += d * FASTCNN_DW_LD(V, p8 + j);                                 \\
                a[9] += d;                                                            \\
            }                                                                         \\
            for (l = 0; l < 10; l++)                                                  \\
                sums[l] += fastcnn_dw_hsum_##S(a[l]);                                 \\
        }                                                                             \\
        for (; j < n; j++) {                                                          \\
            const T d = dy[j];                                                        \\
            sums[0] += d * x[o0 + j]; sums[1] += d * x[o1 + j];                       \\
            sums[2] += d * x[o2 + j]; sums[3] += d * x[o3 + j];                       \\
            sums[4] += d * x[o4 + j]; sums[5] += d * x[o5 + j];                       \\
            sums[6] += d * x[o6 + j]; sums[7] += d * x[o7 + j];                       \\
            sums[8] += d * x[o8 + j]; sums[9] += d;                                   \\
        }                                                                             \\
    }                                                                                 \\
    /* dx[offs[t] + j] += w[t] * dy[j], t < taps, j < n: the strided scatter */       \\
    static ATTR void fastcnn_dw_scatter_##S(const T* dy, const T* w, T* dx,           \\
            const Py_ssize_t* offs, Py_ssize_t taps, Py_ssize_t n) {                  \\
        Py_ssize_t t, j;                                                              \\
        for (t = 0; t < taps; t++) {                                                  \\
            T* d = dx + offs[t];                                                      \\
            const V wv = FASTCNN_DW_SPLAT(V, w[t]);                                   \\
            for (j = 0; j + L <= n; j += L)                                           \\
                FASTCNN_DW_ST(d + j, FASTCNN_DW_LD(V, d + j)                          \\
                                     + wv * FASTCNN_DW_LD(V, dy + j));                \\
            for (; j < n; j++)                                                        \\
                d[j] += w[t] * dy[j];                                                 \\
        }                                                                             \\
    }                                                                                 \\
    /* stride 1: the plane x (H, W) into xp (PS,) at pitch WQ, top/left padding  */  \\
    /* PT/PL: each element written once (the zeros between rows are one run)    */  \\
    static ATTR FASTCNN_DW_SHORT_ROWS void fastcnn_dw_pad1_##S(const T* x, T* xp,      \\
            Py_ssize_t H, Py_ssize_t W, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WQ,  \\
            Py_ssize_t PS) {                                                          \\
        Py_ssize_t ih, k, p = PT * WQ + PL;                                           \\
        for (k = 0; k < p; k++)                                                       \\
            xp[k] = 0;                                                                \\
        for (ih = 0; ih < H; ih++) {                                                  \\
            const T* src = x + ih * W;                                                \\
            T* dst = xp + p;                                                          \\
            k = 0;                                                                    \\
            for (; k + L <= W; k += L)                                                \\
                FASTCNN_DW_ST(dst + k, FASTCNN_DW_LD(V, src + k));                    \\
            for (; k < W; k++)                                                        \\
                dst[k] = src[k];                                                      \\
            for (k = W; k < WQ; k++)                                                  \\
                dst[k] = 0;                                                           \\
            p += WQ;                                                                  \\
        }                                                                             \\
        for (k = p - PL; k < PS; k++)                                                 \\
            xp[k] = 0;                                                                \\
    }                                                                                 \\
    /* dst[i*cols + j] = src[i*pitch + j]: a flat run's valid columns out */         \\
    static ATTR FASTCNN_DW_SHORT_ROWS void fastcnn_dw_crop_##S(const T* src, T* dst, Py_ssize_t rows,       \\
            Py_ssize_t cols, Py_ssize_t pitch) {                                      \\
        Py_ssize_t i, k;                                                              \\
        for (i = 0; i < rows; i++) {                                                  \\
            const T* s = src + i * pitch;                                             \\
            T* d = dst + i * cols;                                                    \\
            k = 0;                                                                    \\
            for (; k + L <= cols; k += L)                                             \\
                FASTCNN_DW_ST(d + k, FASTCNN_DW_LD(V, s + k));                        \\
            for (; k < cols; k++)                                                     \\
                d[k] = s[k];                                                          \\
        }                                                                             \\
    }                                                                                 \\
    /* stride 2: a[q] = img[2q], b[q] = img[2q+1] (to_img 0), or back (1) */         \\
    static ATTR void fastcnn_dw_split2_##S(T* img, T* a, T* b, Py_ssize_t W,          \\
                                           int to_img) {                              \\
        Py_ssize_t q, half = W / 2;                                                   \\
        if (to_img) {                                                                 \\
            for (q = 0; q < half; q++) {                                              \\
                img[2 * q] = a[q];                                                    \\
                img[2 * q + 1] = b[q];                                                \\
            }                                                                         \\
            if (W % 2)                                                                \\
                img[W - 1] = a[half];                                                 \\
        } else {                                                                      \\
            for (q = 0; q < half; q++) {                                              \\
                a[q] = img[2 * q];                                                    \\
                b[q] = img[2 * q + 1];                                                \\
            }                                                                         \\
            if (W % 2)                                                                \\
                a[half] = img[W - 1];                                                 \\
        }                                                                             \\
    }                                                                                 \\
    /* stride 2 both ways: the plane x (H, W) into the phase layout xp (PS,),     */  \\
    /* blocks of BS, pitch WQ, top/left padding PT/PL (see _pad_plane), zeros    */  \\
    /* around it; to_img: the other way, xp's image part back into x            */  \\
    static ATTR FASTCNN_DW_NO_MEMSET void fastcnn_dw_pad2_##S(T* x, T* xp,            \\
            Py_ssize_t H, Py_ssize_t W, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WQ,  \\
            Py_ssize_t BS, Py_ssize_t PS, int to_img) {                               \\
        Py_ssize_t ih, k, r;                                                          \\
        const V z = FASTCNN_DW_SPLAT(V, 0);                                           \\
        if (!to_img) {                                                                \\
            for (k = 0; k + L <= PS; k += L)                                          \\
                FASTCNN_DW_ST(xp + k, z);                                             \\
            for (; k < PS; k++)                                                       \\
                xp[k] = 0;                                                            \\
        }                                                                             \\
        for (ih = 0; ih < H; ih++) {                                                  \\
            T* img = x + ih * W;                                                      \\
            r = ih + PT;                                                              \\
            T* row = xp + (r % 2) * 2 * BS + (r / 2) * WQ;                            \\
            T* a = row + (PL % 2) * BS + PL / 2;                                      \\
            T* b = row + ((PL + 1) % 2) * BS + (PL + 1) / 2;                          \\
            fastcnn_dw_split2_##S(img, a, b, W, to_img);                              \\
        }                                                                             \\
    }

    /* the lanes of v added in double */
    #define FASTCNN_DW_HSUM_DEF(S, V, L, ATTR)                                            \\
    static inline ATTR double fastcnn_dw_hsum_##S(V v) {                               \\
        double s = 0;                                                                 \\
        int l;                                                                        \\
        for (l = 0; l < L; l++)                                                       \\
            s += FASTCNN_DW_LANE(v, l);                                               \\
        return s;                                                                     \\
    }

    /* short runs of zeros: GCC would call memset for each */
    #if defined(__GNUC__) && !defined(__clang__)
    #  define FASTCNN_DW_NO_MEMSET __attribute__((optimize("no-tree-loop-distribute-patterns")))
    /* the copies of short rows: explicit vectors, then scalar tails that GCC
       would vectorise again, with more branches than elements */
    #  define FASTCNN_DW_SHORT_ROWS \
        __attribute__((optimize("no-tree-loop-distribute-patterns,no-tree-vectorize")))
    #else
    #  define FASTCNN_DW_NO_MEMSET
    #  define FASTCNN_DW_SHORT_ROWS
    #endif
    #if defined(__GNUC__)
    #  define FASTCNN_DW_LANE(v, l) ((v)[l])
    #else
    #  define FASTCNN_DW_LANE(v, l) (v)
    #endif

    #if defined(FASTCNN_DW_X86)
    /* AVX2 + FMA (256-bit vectors) and the SSE2 baseline (128-bit), the
       first used where the CPU has both (checked once, at the first call) */
    typedef float fastcnn_f8 __attribute__((vector_size(32)));
    typedef int fastcnn_i8 __attribute__((vector_size(32)));
    typedef double fastcnn_d4 __attribute__((vector_size(32)));
    typedef long long fastcnn_l4 __attribute__((vector_size(32)));
    typedef float fastcnn_f4 __attribute__((vector_size(16)));
    typedef int fastcnn_i4 __attribute__((vector_size(16)));
    typedef double fastcnn_d2 __attribute__((vector_size(16)));
    typedef long long fastcnn_l2 __attribute__((vector_size(16)));
    #  define FASTCNN_DW_AVX __attribute__((target("avx2,fma")))
    FASTCNN_DW_HSUM_DEF(f32_avx, fastcnn_f8, 8, FASTCNN_DW_AVX)
    FASTCNN_DW_HSUM_DEF(f64_avx, fastcnn_d4, 4, FASTCNN_DW_AVX)
    FASTCNN_DW_HSUM_DEF(f32_base, fastcnn_f4, 4, )
    FASTCNN_DW_HSUM_DEF(f64_base, fastcnn_d2, 2, )
    FASTCNN_DW_KERNELS(float, f32_avx, fastcnn_f8, fastcnn_i8, 8, FASTCNN_DW_AVX)
    FASTCNN_DW_KERNELS(double, f64_avx, fastcnn_d4, fastcnn_l4, 4, FASTCNN_DW_AVX)
    FASTCNN_DW_KERNELS(float, f32_base, fastcnn_f4, fastcnn_i4, 4, )
    FASTCNN_DW_KERNELS(double, f64_base, fastcnn_d2, fastcnn_l2, 2, )
    static int fastcnn_dw_avx = -1;
    /* want < 0: the level in use (1: AVX2 + FMA); 0: use the baseline from
       now on; 1: AVX2 + FMA again where the CPU has them */
    static int fastcnn_dw_simd(int want) {
        if (fastcnn_dw_avx < 0 || want > 0) {
            __builtin_cpu_init();
            fastcnn_dw_avx = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        }
        if (want == 0)
            fastcnn_dw_avx = 0;
        return fastcnn_dw_avx;
    }
    #  define FASTCNN_DW_PICK(NAME, S, ARGS) \\
        (fastcnn_dw_avx > 0 || (fastcnn_dw_avx < 0 && fastcnn_dw_simd(-1)) \\
         ? NAME##_##S##_avx ARGS : NAME##_##S##_base ARGS)
    #else
    /* elsewhere: one build, 128-bit vectors where the compiler has them */
    #  if defined(__GNUC__)
    typedef float fastcnn_f4 __attribute__((vector_size(16)));
    typedef int fastcnn_i4 __attribute__((vector_size(16)));
    typedef double fastcnn_d2 __attribute__((vector_size(16)));
    typedef long long fastcnn_l2 __attribute__((vector_size(16)));
    FASTCNN_DW_HSUM_DEF(f32_base, fastcnn_f4, 4, )
    FASTCNN_DW_HSUM_DEF(f64_base, fastcnn_d2, 2, )
    FASTCNN_DW_KERNELS(float, f32_base, fastcnn_f4, fastcnn_i4, 4, )
    FASTCNN_DW_KERNELS(double, f64_base, fastcnn_d2, fastcnn_l2, 2, )
    #  else
    FASTCNN_DW_HSUM_DEF(f32_base, float, 1, )
    FASTCNN_DW_HSUM_DEF(f64_base, double, 1, )
    FASTCNN_DW_KERNELS(float, f32_base, float, float, 1, )
    FASTCNN_DW_KERNELS(double, f64_base, double, double, 1, )
    #  endif
    static int fastcnn_dw_simd(int want) { (void)want; return 0; }
    #  define FASTCNN_DW_PICK(NAME, S, ARGS) NAME##_##S##_base ARGS
    #endif

    static void fastcnn_dw_taps9_f32(const float* x, const Py_ssize_t* offs, const float* w,
            float bias, float* out, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t ip,
            Py_ssize_t op, int mode) {
        FASTCNN_DW_PICK(fastcnn_dw_taps9, f32, (x, offs, w, bias, out, rows, n, ip, op, mode));
    }
    static void fastcnn_dw_taps9_f64(const double* x, const Py_ssize_t* offs, const double* w,
            double bias, double* out, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t ip,
            Py_ssize_t op, int mode) {
        FASTCNN_DW_PICK(fastcnn_dw_taps9, f64, (x, offs, w, bias, out, rows, n, ip, op, mode));
    }
    static void fastcnn_dw_dots9_f32(const float* dy, const float* x, const Py_ssize_t* offs,
            Py_ssize_t n, double* sums) {
        FASTCNN_DW_PICK(fastcnn_dw_dots9, f32, (dy, x, offs, n, sums));
    }
    static void fastcnn_dw_dots9_f64(const double* dy, const double* x, const Py_ssize_t* offs,
            Py_ssize_t n, double* sums) {
        FASTCNN_DW_PICK(fastcnn_dw_dots9, f64, (dy, x, offs, n, sums));
    }
    static void fastcnn_dw_scatter_f32(const float* dy, const float* w, float* dx,
            const Py_ssize_t* offs, Py_ssize_t taps, Py_ssize_t n) {
        FASTCNN_DW_PICK(fastcnn_dw_scatter, f32, (dy, w, dx, offs, taps, n));
    }
    static void fastcnn_dw_scatter_f64(const double* dy, const double* w, double* dx,
            const Py_ssize_t* offs, Py_ssize_t taps, Py_ssize_t n) {
        FASTCNN_DW_PICK(fastcnn_dw_scatter, f64, (dy, w, dx, offs, taps, n));
    }
    static void fastcnn_dw_split2_f32(float* img, float* a, float* b, Py_ssize_t W,
            int to_img) {
        FASTCNN_DW_PICK(fastcnn_dw_split2, f32, (img, a, b, W, to_img));
    }
    static void fastcnn_dw_split2_f64(double* img, double* a, double* b, Py_ssize_t W,
            int to_img) {
        FASTCNN_DW_PICK(fastcnn_dw_split2, f64, (img, a, b, W, to_img));
    }
    static void fastcnn_dw_pad1_f32(const float* x, float* xp, Py_ssize_t H, Py_ssize_t W,
            Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WQ, Py_ssize_t PS) {
        FASTCNN_DW_PICK(fastcnn_dw_pad1, f32, (x, xp, H, W, PT, PL, WQ, PS));
    }
    static void fastcnn_dw_pad1_f64(const double* x, double* xp, Py_ssize_t H, Py_ssize_t W,
            Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WQ, Py_ssize_t PS) {
        FASTCNN_DW_PICK(fastcnn_dw_pad1, f64, (x, xp, H, W, PT, PL, WQ, PS));
    }
    static void fastcnn_dw_pad2_f32(float* x, float* xp, Py_ssize_t H, Py_ssize_t W,
            Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WQ, Py_ssize_t BS, Py_ssize_t PS,
            int to_img) {
        FASTCNN_DW_PICK(fastcnn_dw_pad2, f32, (x, xp, H, W, PT, PL, WQ, BS, PS, to_img));
    }
    static void fastcnn_dw_pad2_f64(double* x, double* xp, Py_ssize_t H, Py_ssize_t W,
            Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WQ, Py_ssize_t BS, Py_ssize_t PS,
            int to_img) {
        FASTCNN_DW_PICK(fastcnn_dw_pad2, f64, (x, xp, H, W, PT, PL, WQ, BS, PS, to_img));
    }
    static void fastcnn_dw_crop_f32(const float* src, float* dst, Py_ssize_t rows,
            Py_ssize_t cols, Py_ssize_t pitch) {
        FASTCNN_DW_PICK(fastcnn_dw_crop, f32, (src, dst, rows, cols, pitch));
    }
    static void fastcnn_dw_crop_f64(const double* src, double* dst, Py_ssize_t rows,
            Py_ssize_t cols, Py_ssize_t pitch) {
        FASTCNN_DW_PICK(fastcnn_dw_crop, f64, (src, dst, rows, cols, pitch));
    }
    """
    void fastcnn_dw_pad1_f32(const float* x, float* xp, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WQ, Py_ssize_t PS) nogil
    void fastcnn_dw_pad1_f64(const double* x, double* xp, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WQ, Py_ssize_t PS) nogil
    void fastcnn_dw_pad2_f32(float* x, float* xp, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WQ, Py_ssize_t BS,
                             Py_ssize_t PS, int to_img) nogil
    void fastcnn_dw_pad2_f64(double* x, double* xp, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WQ, Py_ssize_t BS,
                             Py_ssize_t PS, int to_img) nogil
    void fastcnn_dw_crop_f32(const float* src, float* dst, Py_ssize_t rows, Py_ssize_t cols,
                             Py_ssize_t pitch) nogil
    void fastcnn_dw_crop_f64(const double* src, double* dst, Py_ssize_t rows, Py_ssize_t cols,
                             Py_ssize_t pitch) nogil
    void fastcnn_dw_split2_f32(float* img, float* a, float* b, Py_ssize_t W, int to_img) nogil
    void fastcnn_dw_split2_f64(double* img, double* a, double* b, Py_ssize_t W,
                               int to_img) nogil
    int fastcnn_dw_simd(int want) nogil
    void fastcnn_dw_taps9_f32(const float* x, const Py_ssize_t* offs, const float* w,
                              float bias, float* out, Py_ssize_t rows, Py_ssize_t n,
                              Py_ssize_t ip, Py_ssize_t op, int mode) nogil
    void fastcnn_dw_taps9_f64(const double* x, const Py_ssize_t* offs, const double* w,
                              double bias, double* out, Py_ssize_t rows, Py_ssize_t n,
                              Py_ssize_t ip, Py_ssize_t op, int mode) nogil
    void fastcnn_dw_dots9_f32(const float* dy, const float* x, const Py_ssize_t* offs,
                              Py_ssize_t n, double* sums) nogil
    void fastcnn_dw_dots9_f64(const double* dy, const double* x, const Py_ssize_t* offs,
                              Py_ssize_t n, double* sums) nogil
    void fastcnn_dw_scatter_f32(const float* dy, const float* w, float* dx,
                                const Py_ssize_t* offs, Py_ssize_t taps, Py_ssize_t n) nogil
    void fastcnn_dw_scatter_f64(const double* dy, const double* w, double* dx,
                                const Py_ssize_t* offs, Py_ssize_t taps, Py_ssize_t n) nogil


cdef inline void _taps9(const floating* x, const Py_ssize_t* offs, const floating* w,
                        floating bias, floating* out, Py_ssize_t rows, Py_ssize_t n,
                        Py_ssize_t ip, Py_ssize_t op, int mode) noexcept nogil:
    if floating is float:
        fastcnn_dw_taps9_f32(x, offs, w, bias, out, rows, n, ip, op, mode)
    else:
        fastcnn_dw_taps9_f64(x, offs, w, bias, out, rows, n, ip, op, mode)


cdef inline void _dots9(const floating* dy, const floating* x, const Py_ssize_t* offs,
                        Py_ssize_t n, double* sums) noexcept nogil:
    if floating is float:
        fastcnn_dw_dots9_f32(dy, x, offs, n, sums)
    else:
        fastcnn_dw_dots9_f64(dy, x, offs, n, sums)


cdef inline void _scatter(const floating* dy, const floating* w, floating* dx,
                          const Py_ssize_t* offs, Py_ssize_t taps, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastcnn_dw_scatter_f32(dy, w, dx, offs, taps, n)
    else:
        fastcnn_dw_scatter_f64(dy, w, dx, offs, taps, n)


def simd(level=None):
    """The vector code the 3x3 loops run: 1 for AVX2 + FMA, 0 for the
    portable baseline. ``simd(0)`` makes them use the baseline from now on
    and ``simd(1)`` AVX2 + FMA again where the CPU has them (for tests
    that cover both)."""
    return fastcnn_dw_simd(-1 if level is None else (1 if level else 0))


cdef struct Geo:
    Py_ssize_t M, KH, KW, T, H, W, OH, OW, SH, SW, DH, DW, PT, PL, WQ, BS, PS


cdef Geo _geo(Py_ssize_t C, Py_ssize_t F, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t H,
              Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t SH, Py_ssize_t SW,
              Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t PT, Py_ssize_t PL,
              Py_ssize_t rows, Py_ssize_t WQ) noexcept nogil:
    """Every size; BS: one phase block ((HQ+1)*WQ), PS: one plane of xp."""
    cdef Geo g
    g.M, g.KH, g.KW, g.T = F // C, KH, KW, KH * KW
    g.H, g.W, g.OH, g.OW = H, W, OH, OW
    g.SH, g.SW, g.DH, g.DW, g.PT, g.PL = SH, SW, DH, DW, PT, PL
    g.WQ, g.BS, g.PS = WQ, (rows // (SH * SW)) * WQ, rows * WQ
    return g


cdef Py_ssize_t* _tap_offsets(Geo g) except NULL:
    """offs[kh*KW + kw]: where tap (kh, kw)'s input for output (0, 0) sits
    in a plane of xp; output (i, j) adds i*WQ + j. The caller frees it."""
    cdef Py_ssize_t* offs = <Py_ssize_t*>malloc(g.T * sizeof(Py_ssize_t))
    cdef Py_ssize_t kh, kw
    if offs == NULL:
        raise MemoryError()
    for kh in range(g.KH):
        for kw in range(g.KW):
            offs[kh * g.KW + kw] = ((((kh * g.DH) % g.SH) * g.SW + (kw * g.DW) % g.SW) * g.BS
                                    + ((kh * g.DH) // g.SH) * g.WQ + (kw * g.DW) // g.SW)
    return offs


cdef inline Py_ssize_t _row(Py_ssize_t r, Geo g) noexcept nogil:
    """Where padded row r, column phase 0, starts in a plane of xp."""
    return (r % g.SH) * g.SW * g.BS + (r // g.SH) * g.WQ


cdef void _image_row(floating* prow, floating* img, Geo g, bint to_img) noexcept nogil:
    """Copy between an image row img (W,) and its padded row in the phase
    layout (prow: the row's start in column phase 0; phase p is p*BS
    further). Image column iw is padded column iw + PL. to_img: prow -> img."""
    cdef Py_ssize_t W = g.W, PL = g.PL, SW = g.SW
    cdef Py_ssize_t q, p, k, lo, hi, half = W // 2
    cdef floating* a
    cdef floating* b
    if SW == 1:
        a = prow + PL
        if to_img:
            for q in range(W):
                img[q] = a[q]
        else:
            for q in range(W):
                a[q] = img[q]
    elif SW == 2:
        # both image columns of a pair in one loop, which the compiler
        # vectorises with shuffles (in C above, for AVX2). Column 2q + e
        # sits in phase (e + PL) % 2 at q + (e + PL) // 2.
        a = prow + (PL % 2) * g.BS + PL // 2
        b = prow + ((PL + 1) % 2) * g.BS + (PL + 1) // 2
        if floating is float:
            fastcnn_dw_split2_f32(img, a, b, W, to_img)
        else:
            fastcnn_dw_split2_f64(img, a, b, W, to_img)
    else:
        for p in range(SW):
            # phase column k is padded column p + SW*k, image column p + SW*k - PL
            a = prow + p * g.BS
            lo = _lo(p - PL, SW)
            hi = _hi(p - PL, SW, W, g.WQ)
            for k in range(lo, hi):
                if to_img:
                    img[p - PL + SW * k] = a[k]
                else:
                    a[k] = img[p - PL + SW * k]


cdef void _pad_plane(const floating* x, floating* xp, Geo g) noexcept nogil:
    """One plane x (H, W) into its phase-layout plane xp (PS,)."""
    cdef Py_ssize_t ih, iw, WQ = g.WQ, W = g.W, PL = g.PL
    cdef floating* r
    if g.SH == 1 and g.SW == 1:
        if floating is float:
            fastcnn_dw_pad1_f32(x, xp, g.H, W, g.PT, PL, WQ, g.PS)
        else:
            fastcnn_dw_pad1_f64(x, xp, g.H, W, g.PT, PL, WQ, g.PS)
        return
    if g.SH == 2 and g.SW == 2:
        if floating is float:
            fastcnn_dw_pad2_f32(<float*>x, xp, g.H, W, g.PT, PL, WQ, g.BS, g.PS, 0)
        else:
            fastcnn_dw_pad2_f64(<double*>x, xp, g.H, W, g.PT, PL, WQ, g.BS, g.PS, 0)
        return
    _zero(xp, g.PS)
    for ih in range(g.H):
        _image_row(xp + _row(ih + g.PT, g), <floating*>x + ih * g.W, g, 0)


cdef enum:
    # planes narrower than this are computed as one flat run at the row
    # pitch (garbage columns and all) and copied out: their rows are too
    # short for the vector lanes. Wider rows vectorise well as they are,
    # and there the copy out would cost more than the short rows lose.
    FLAT_BELOW = 17
    # the 3x3 loops end a row with one vector over lanes already written,
    # so only rows narrower than a vector of floats go flat
    FLAT_BELOW_9 = 8


cdef inline bint _flat(Geo g, Py_ssize_t width) noexcept nogil:
    """Whether planes of rows of ``width`` are computed as flat runs."""
    return width < (FLAT_BELOW_9 if g.T == 9 else FLAT_BELOW)


cdef inline void _put_rows_pitch(const floating* src, floating* dst, Py_ssize_t rows,
                                 Py_ssize_t cols, Py_ssize_t pitch) noexcept nogil:
    """dst[i*cols + j] = src[i*pitch + j]: a flat run's valid columns out."""
    if floating is float:
        fastcnn_dw_crop_f32(src, dst, rows, cols, pitch)
    else:
        fastcnn_dw_crop_f64(src, dst, rows, cols, pitch)


cdef inline void _positive(const floating* y, unsigned char* mk, Py_ssize_t n) noexcept nogil:
    """mk[j] = y[j] > 0: the ReLU's mask of a plane still in cache."""
    cdef Py_ssize_t j
    for j in range(n):
        mk[j] = y[j] > 0


cdef void _forward_plane(const floating* xp, const floating* w, const floating* b,
                         floating* y, floating* yq, unsigned char* mk,
                         const Py_ssize_t* offs, Geo g, bint relu) noexcept nogil:
    """The M output planes y (M, OH, OW) of one phase-layout plane xp,
    filters w (M, KH, KW), bias b (M,), relu: through ReLU as np.maximum
    (NaN stays NaN, +0 for the rest <= 0), and mk (M, OH, OW), unless NULL,
    the ReLU's mask [y > 0] of them. Narrow planes (see _flat) are
    computed over the flat run yq (OH*WQ,) at row pitch WQ - one long
    unit-stride loop instead of OH short rows - and their OW valid columns
    per row copied out; wider ones row by row straight into y. 3x3 filters
    run the C loops above."""
    cdef Py_ssize_t OH = g.OH, OW = g.OW, WQ = g.WQ, T = g.T
    cdef Py_ssize_t m, i, j, t, rows, n, pitch
    cdef bint flat = _flat(g, OW)
    cdef floating v
    cdef floating bias, wv
    cdef floating* yr
    cdef floating* out
    cdef const floating* xr
    # rows of n outputs at output pitch `pitch`, input pitch WQ
    rows, n, pitch = OH, OW, OW
    if flat:
        rows, n, pitch = 1, OH * WQ, 0
    for m in range(g.M):
        bias = b[m]
        if T == 9:
            if flat:
                _taps9(xp, offs, w + m * 9, bias, yq, 1, OH * WQ, 0, 0, relu)
                _put_rows_pitch(yq, y + m * OH * OW, OH, OW, WQ)
            else:
                _taps9(xp, offs, w + m * 9, bias, y + m * OH * OW, OH, OW, WQ, OW, relu)
            if mk != NULL:
                _positive(y + m * OH * OW, mk + m * OH * OW, OH * OW)
            continue
        out = yq if flat else y + m * OH * OW
        for i in range(rows):
            yr = out + i * pitch
            for j in range(n):
                yr[j] = bias
            for t in range(T):
                xr = xp + i * WQ + offs[t]
                wv = w[m * T + t]
                for j in range(n):
                    yr[j] += wv * xr[j]
        if flat:
            _put_rows_pitch(yq, y + m * OH * OW, OH, OW, WQ)
        if relu:
            yr = y + m * OH * OW
            for j in range(OH * OW):
                v = yr[j]
                yr[j] = v if not (v <= 0) else 0
        if mk != NULL:
            _positive(y + m * OH * OW, mk + m * OH * OW, OH * OW)


def forward(const floating[:, :, :, ::1] x, const floating[:, :, ::1] w,
            const floating[::1] b, floating[:, :, :, ::1] xp, floating[:, :, :, ::1] y,
            floating[::1] yq, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t c0, Py_ssize_t c1,
            Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH, Py_ssize_t DW,
            Py_ssize_t PT, Py_ssize_t PL, bint relu, unsigned char[:, :, :, ::1] mask,
            bint masked):
    """For images [n0, n1) and channels [c0, c1): xp[n, c] = x[n, c] in the
    phase layout and y[n, c*M:(c+1)*M] = its depthwise convolution (relu:
    through ReLU, np.maximum(y, 0)); if masked, mask (y's shape) = the
    ReLU's mask [y > 0] of those planes (else mask is not read). Scratch:
    yq (OH*WQ,)."""
    cdef Geo g = _geo(x.shape[1], w.shape[0], w.shape[1], w.shape[2], x.shape[2],
                      x.shape[3], y.shape[2], y.shape[3], SH, SW, DH, DW, PT, PL,
                      xp.shape[2], xp.shape[3])
    cdef Py_ssize_t* offs = _tap_offsets(g)
    cdef Py_ssize_t n, c
    cdef unsigned char* mk = NULL
    try:
        with nogil:
            for n in range(n0, n1):
                for c in range(c0, c1):
                    if masked:
                        mk = &mask[n, c * g.M, 0, 0]
                    _pad_plane(&x[n, c, 0, 0], &xp[n, c, 0, 0], g)
                    _forward_plane(&xp[n, c, 0, 0], &w[c * g.M, 0, 0], &b[c * g.M],
                                   &y[n, c * g.M, 0, 0], &yq[0], mk, offs, g, relu)
    finally:
        free(offs)


cdef void _grad_weights_rows(const floating* dy, const floating* xp, floating* acc,
                             double* dw, double* db, const Py_ssize_t* offs,
                             Geo g) noexcept nogil:
    """One output plane's share of dw (KH*KW,) and db (1,), added: per tap
    the dot product of dy (OH rows of OW at row pitch WQ) with the inputs
    it met in xp, over the valid columns only. acc (KH*KW + 1, OW) is scratch: per tap a row of
    partial sums (a sum over j would not vectorise without reassociation)."""
    cdef Py_ssize_t OH = g.OH, OW = g.OW, T = g.T
    cdef Py_ssize_t i, j, t
    cdef const floating* dyr
    cdef const floating* xr
    cdef floating* a
    cdef double s
    _zero(acc, (T + 1) * OW)
    for i in range(OH):
        dyr = dy + i * g.WQ
        a = acc + T * OW
        for j in range(OW):
            a[j] += dyr[j]
        for t in range(T):
            xr = xp + i * g.WQ + offs[t]
            a = acc + t * OW
            for j in range(OW):
                a[j] += dyr[j] * xr[j]
    for t in range(T + 1):
        s = 0
        for j in range(OW):
            s += acc[t * OW + j]
        if t < T:
            dw[t] += s
        else:
            db[0] += s


cdef inline double _dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    """sum(a[:n] * b[:n]) (b NULL: sum(a[:n])): eight float partial sums,
    which the compiler keeps in vector registers (it would not reassociate
    one sum), each over at most 32 terms before it is added in double -
    no longer chains in float than dw's row sums had."""
    cdef double total = 0
    cdef floating s0, s1, s2, s3, s4, s5, s6, s7
    cdef Py_ssize_t r, p, e, n8
    for r in range(0, n, 256):
        e = min(n - r, <Py_ssize_t>256)
        n8 = e - e % 8
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0
        if b == NULL:
            for p in range(r, r + n8, 8):
                s0 += a[p]
                s1 += a[p + 1]
                s2 += a[p + 2]
                s3 += a[p + 3]
                s4 += a[p + 4]
                s5 += a[p + 5]
                s6 += a[p + 6]
                s7 += a[p + 7]
            for p in range(r + n8, r + e):
                s0 += a[p]
        else:
            for p in range(r, r + n8, 8):
                s0 += a[p] * b[p]
                s1 += a[p + 1] * b[p + 1]
                s2 += a[p + 2] * b[p + 2]
                s3 += a[p + 3] * b[p + 3]
                s4 += a[p + 4] * b[p + 4]
                s5 += a[p + 5] * b[p + 5]
                s6 += a[p + 6] * b[p + 6]
                s7 += a[p + 7] * b[p + 7]
            for p in range(r + n8, r + e):
                s0 += a[p] * b[p]
        total += ((<double>s0 + s1) + (<double>s2 + s3)) + ((<double>s4 + s5) + (<double>s6 + s7))
    return total


cdef bint _grad_weights(const floating* dyw, const floating* xp, double* dw, double* db,
                        double* sums, const Py_ssize_t* offs, Geo g) noexcept nogil:
    """One output plane's share of dw (KH*KW,) and db (1,), added: per tap
    the dot product of dyw (OH*WQ,: dy at the row pitch WQ of xp, zero
    garbage columns) with the run of OH*WQ inputs it met in xp - one long
    loop per tap, into sums (KH*KW,) first. False, with nothing added, if a
    sum is NaN: a zero garbage column times an inf or NaN of x that the tap
    never meets would make one, so the caller redoes that plane over the
    valid columns."""
    cdef Py_ssize_t T = g.T, L = g.OH * g.WQ
    cdef Py_ssize_t t
    if T == 9:
        # the nine taps and db in one pass (sums has room for ten)
        for t in range(10):
            sums[t] = 0
        _dots9(dyw, xp, offs, L, sums)
    else:
        for t in range(T):
            sums[t] = _dot(dyw, xp + offs[t], L)
    for t in range(T):
        if sums[t] != sums[t]:
            return False
    for t in range(T):
        dw[t] += sums[t]
    db[0] += sums[9] if T == 9 else _dot(dyw, <const floating*>NULL, L)
    return True


cdef void _grad_input_s1(const floating* w, const floating* dyp, floating* dq,
                         floating* dx, Py_ssize_t RC, bint first, Geo g) noexcept nogil:
    """One output plane's share of dx (H, W), stride 1, as a gather: the
    correlation of dy, zero-padded into dyp (RH, RC) with A = (KH-1)*DH rows
    above and B = (KW-1)*DW columns left, with the flipped filter w (KH, KW):
    dx[ih, iw] = sum_{kh,kw} w[kh, kw] * dyp[ih+PT+A - kh*DH, iw+PL+B - kw*DW],
    written if first, else added. Narrow planes (see _flat) go to the
    flat run dq (H*RC,) at row pitch RC (see _forward_plane), which the
    caller copies out; wider ones row by row into dx."""
    cdef Py_ssize_t KH = g.KH, KW = g.KW, DW = g.DW
    cdef Py_ssize_t A = (g.KH - 1) * g.DH, B = (g.KW - 1) * g.DW
    cdef Py_ssize_t i, j, kh, kw, rows, n, pitch
    cdef bint flat = _flat(g, g.W)
    cdef Py_ssize_t offs[9]
    cdef floating wv
    cdef const floating* c
    cdef const floating* r0
    cdef floating* out = dq if flat else dx
    cdef floating* d
    rows, n, pitch = g.H, g.W, g.W
    if flat:
        rows, n, pitch = 1, g.H * RC, 0
    if KH == 3 and KW == 3:
        # tap (kh, kw) of dx[0, 0] sits at offs[kh*3 + kw] in dyp
        for kh in range(3):
            for kw in range(3):
                offs[kh * 3 + kw] = (g.PT + A - kh * g.DH) * RC + g.PL + B - kw * DW
        _taps9(dyp, offs, w, 0, out, rows, n, RC, pitch, 0 if first else 2)
        return
    for i in range(rows):
        d = out + i * pitch
        c = dyp + (i + g.PT + A) * RC + g.PL + B     # tap (0, 0)
        if first:
            _zero(d, n)
        for kh in range(KH):
            for kw in range(KW):
                r0 = c - kh * g.DH * RC - kw * DW
                wv = w[kh * KW + kw]
                for j in range(n):
                    d[j] += wv * r0[j]


cdef void _grad_input_strided(const floating* dyw, const floating* w, floating* dxp,
                              const Py_ssize_t* offs, Geo g) noexcept nogil:
    """One output plane's share of dx, any stride: the transposed
    convolution of dyw (OH*WQ,: dy at pitch WQ, zero garbage columns, so
    they add nothing) with the filter w (KH*KW,) scattered into the
    phase-layout plane dxp (PS,), each tap one run of OH*WQ. The caller
    crops dxp to dx."""
    _scatter(dyw, w, dxp, offs, g.T, g.OH * g.WQ)


cdef inline void _put_rows(const floating* src, floating* dst, Py_ssize_t rows,
                           Py_ssize_t cols, Py_ssize_t pitch) noexcept nogil:
    """dst[i*pitch + j] = src[i*cols + j] for a (rows, cols) plane src."""
    cdef Py_ssize_t i, j
    for i in range(rows):
        for j in range(cols):
            dst[i * pitch + j] = src[i * cols + j]


cdef inline void _put_rows_masked(const floating* src, const unsigned char* mk, floating* dst,
                                  Py_ssize_t rows, Py_ssize_t cols,
                                  Py_ssize_t pitch) noexcept nogil:
    """dst[i*pitch + j] = src[i*cols + j] * mk[i*cols + j]: relu_backward's
    product (NaN for an inf or NaN dy where the mask is 0), in the copy."""
    cdef Py_ssize_t i, j
    for i in range(rows):
        for j in range(cols):
            dst[i * pitch + j] = src[i * cols + j] * <floating>mk[i * cols + j]


def backward(const floating[:, :, :, ::1] dy, const floating[:, :, ::1] w,
             const floating[:, :, :, ::1] xp, floating[:, :, :, ::1] dx,
             double[:, ::1] dw, double[::1] db, floating[::1] acc, floating[::1] dxp,
             floating[::1] dyw, floating[:, ::1] dyp, floating[::1] dq,
             Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t c0, Py_ssize_t c1,
             Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH, Py_ssize_t DW,
             Py_ssize_t PT, Py_ssize_t PL, const unsigned char[:, :, :, ::1] mask,
             bint masked):
    """For images [n0, n1) and channels [c0, c1): dx[n, c] (written), and
    dw[f] (F, KH*KW), db[f] = their sums over images n0..n1-1 (written) for
    the filters f of those channels. xp is the forward's phase layout.
    If masked, mask (dy's shape) is a fused ReLU's: dy * mask is the
    gradient used, masked as dy is copied to the scratch planes below
    (else mask is not read).
    Scratch: acc ((KH*KW + 1) * OW,); for strides > 1 dyw (OH*WQ,) and
    dxp (one plane of xp); for stride 1 dyp (RH, WQ) and dq (H*WQ,) with
    RH >= (KH-1)*DH + max(OH + 1, H+PT+1). Stride 1 needs one copy of dy:
    at the pitch WQ of xp, dy's rows in dyp start at column B = (KW-1)*DW
    and end at the row's end (OW = WQ - B), so the B zero columns that pad
    the next row on the left are also the zero garbage columns of dy at
    pitch WQ (&dyp[A, B] is dyw), and the gather's reads past a row's end
    land in them too."""
    cdef Geo g = _geo(dx.shape[1], w.shape[0], w.shape[1], w.shape[2], dx.shape[2],
                      dx.shape[3], dy.shape[2], dy.shape[3], SH, SW, DH, DW, PT, PL,
                      xp.shape[2], xp.shape[3])
    cdef Py_ssize_t RH = dyp.shape[0], RC = dyp.shape[1], M = g.M
    cdef Py_ssize_t A = (g.KH - 1) * g.DH, B = (g.KW - 1) * g.DW
    cdef Py_ssize_t* offs = _tap_offsets(g)
    cdef double* sums = <double*>malloc(max(g.T, 10) * sizeof(double))
    cdef Py_ssize_t n, c, f, t, m, ih, iw
    cdef bint s1 = SH == 1 and SW == 1
    cdef const floating* dym
    cdef const floating* xpl
    cdef floating* dxr
    cdef floating* dyrun = &dyp[A, B] if s1 else &dyw[0]
    try:
        if sums == NULL:
            raise MemoryError()
        with nogil:
            for f in range(c0 * M, c1 * M):
                db[f] = 0
                for t in range(g.T):
                    dw[f, t] = 0
            # zero once: the planes below overwrite only where dy goes, so
            # the garbage columns and the padding stay zero
            if s1:
                _zero(&dyp[0, 0], RH * RC)
            else:
                _zero(&dyw[0], g.OH * g.WQ)
            # images outer: the planes of a block are read in memory order
            for n in range(n0, n1):
                for c in range(c0, c1):
                    xpl = &xp[n, c, 0, 0]
                    for m in range(M):
                        f = c * M + m
                        dym = &dy[n, f, 0, 0]
                        if masked:
                            _put_rows_masked(dym, &mask[n, f, 0, 0], dyrun, g.OH, g.OW, g.WQ)
                        else:
                            _put_rows(dym, dyrun, g.OH, g.OW, g.WQ)
                        if not _grad_weights(dyrun, xpl, &dw[f, 0], &db[f], sums, offs, g):
                            _grad_weights_rows(dyrun, xpl, &acc[0], &dw[f, 0], &db[f], offs, g)
                        if s1:
                            _grad_input_s1(&w[f, 0, 0], &dyp[0, 0], &dq[0], &dx[n, c, 0, 0],
                                           RC, m == 0, g)
                        else:
                            if m == 0:
                                _zero(&dxp[0], g.PS)
                            _grad_input_strided(&dyw[0], &w[f, 0, 0], &dxp[0], offs, g)
                    if SH == 2 and SW == 2:
                        if floating is float:
                            fastcnn_dw_pad2_f32(&dx[n, c, 0, 0], &dxp[0], g.H, g.W, g.PT, g.PL,
                                                g.WQ, g.BS, g.PS, 1)
                        else:
                            fastcnn_dw_pad2_f64(&dx[n, c, 0, 0], &dxp[0], g.H, g.W, g.PT, g.PL,
                                                g.WQ, g.BS, g.PS, 1)
                        continue
                    for ih in range(g.H):
                        dxr = &dx[n, c, ih, 0]
                        if not s1:
                            _image_row(&dxp[0] + _row(ih + g.PT, g), dxr, g, 1)
                        elif _flat(g, g.W):
                            for iw in range(g.W):
                                dxr[iw] = dq[ih * RC + iw]
    finally:
        free(offs)
        free(sums)


# ---------------------------------------------------------------------------
# The small-map path: images innermost (see the module docstring)
# ---------------------------------------------------------------------------

cdef extern from *:
    """
    /* fastcnn depthwise, small maps: a channel's planes of all N images
       packed as (pixels, NP) with the images innermost (NP = N rounded up
       to 8, the extra lanes zero), every loop over whole vectors of images */

    /* r[i][k] -> r[k][i] for an L x L block in L vectors: log2(L) rounds that
       swap the off-diagonal half-blocks (two shuffles per pair of rows) */
    #define FASTCNN_DWS_PAIR(r, i, h, MA, MB) {                                          \\
        const __typeof__(r[0]) a_ = r[i], b_ = r[(i) + (h)];                          \\
        r[i] = __builtin_shuffle(a_, b_, MA);                                          \\
        r[(i) + (h)] = __builtin_shuffle(a_, b_, MB);                                  \\
    }
    #if defined(FASTCNN_DW_X86)
    static inline FASTCNN_DW_AVX void fastcnn_dws_tr_f32_avx(fastcnn_f8* r) {
        const fastcnn_i8 a4 = {0, 1, 2, 3, 8, 9, 10, 11}, b4 = {4, 5, 6, 7, 12, 13, 14, 15};
        const fastcnn_i8 a2 = {0, 1, 8, 9, 4, 5, 12, 13}, b2 = {2, 3, 10, 11, 6, 7, 14, 15};
        const fastcnn_i8 a1 = {0, 8, 2, 10, 4, 12, 6, 14}, b1 = {1, 9, 3, 11, 5, 13, 7, 15};
        FASTCNN_DWS_PAIR(r, 0, 4, a4, b4) FASTCNN_DWS_PAIR(r, 1, 4, a4, b4)
        FASTCNN_DWS_PAIR(r, 2, 4, a4, b4) FASTCNN_DWS_PAIR(r, 3, 4, a4, b4)
        FASTCNN_DWS_PAIR(r, 0, 2, a2, b2) FASTCNN_DWS_PAIR(r, 1, 2, a2, b2)
        FASTCNN_DWS_PAIR(r, 4, 2, a2, b2) FASTCNN_DWS_PAIR(r, 5, 2, a2, b2)
        FASTCNN_DWS_PAIR(r, 0, 1, a1, b1) FASTCNN_DWS_PAIR(r, 2, 1, a1, b1)
        FASTCNN_DWS_PAIR(r, 4, 1, a1, b1) FASTCNN_DWS_PAIR(r, 6, 1, a1, b1)
    }
    static inline FASTCNN_DW_AVX void fastcnn_dws_tr_f64_avx(fastcnn_d4* r) {
        const fastcnn_l4 a2 = {0, 1, 4, 5}, b2 = {2, 3, 6, 7};
        const fastcnn_l4 a1 = {0, 4, 2, 6}, b1 = {1, 5, 3, 7};
        FASTCNN_DWS_PAIR(r, 0, 2, a2, b2) FASTCNN_DWS_PAIR(r, 1, 2, a2, b2)
        FASTCNN_DWS_PAIR(r, 0, 1, a1, b1) FASTCNN_DWS_PAIR(r, 2, 1, a1, b1)
    }
    #endif
    #if defined(__GNUC__)
    static inline void fastcnn_dws_tr_f32_base(fastcnn_f4* r) {
        const fastcnn_i4 a2 = {0, 1, 4, 5}, b2 = {2, 3, 6, 7};
        const fastcnn_i4 a1 = {0, 4, 2, 6}, b1 = {1, 5, 3, 7};
        FASTCNN_DWS_PAIR(r, 0, 2, a2, b2) FASTCNN_DWS_PAIR(r, 1, 2, a2, b2)
        FASTCNN_DWS_PAIR(r, 0, 1, a1, b1) FASTCNN_DWS_PAIR(r, 2, 1, a1, b1)
    }
    static inline void fastcnn_dws_tr_f64_base(fastcnn_d2* r) {
        const fastcnn_l2 a1 = {0, 2}, b1 = {1, 3};
        FASTCNN_DWS_PAIR(r, 0, 1, a1, b1)
    }
    #else
    static inline void fastcnn_dws_tr_f32_base(float* r) { (void)r; }
    static inline void fastcnn_dws_tr_f64_base(double* r) { (void)r; }
    #endif
    #define FASTCNN_DWS_KERNELS(T, S, V, VI, L, ATTR)                                        \\
    /* m[j] = [y[j] > 0], j < n */                                                \\
    static inline ATTR void fastcnn_dws_positive_##S(const T* y, unsigned char* m,      \\
                                                   Py_ssize_t n) {                    \\
        Py_ssize_t j;                                                                 \\
        for (j = 0; j < n; j++)                                                       \\
            m[j] = y[j] > 0;                                                          \\
    }                                                                                 \\
    /* P[((h+PT)*WP + w+PL)*NP + n] = x[n*xs + h*W + w] (* mk[n*ms + h*W + w]),      \\
       n < N; zero: the rest of P (PS*NP) zeroed first, else only lanes N..NP */     \\
    static ATTR FASTCNN_DW_NO_MEMSET void fastcnn_dws_pack_##S(const T* x,            \\
            Py_ssize_t xs, const unsigned char* mk, Py_ssize_t ms, Py_ssize_t N,      \\
            Py_ssize_t H, Py_ssize_t W, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WP,  \\
            Py_ssize_t PS, Py_ssize_t NP, T* P, int zero) {                           \\
        Py_ssize_t n, i, k, p, hh, ww, HW = H * W;                                    \\
        Py_ssize_t d[L];                                                              \\
        const V z = FASTCNN_DW_SPLAT(V, 0);                                           \\
        /* the zeros: the padding (if zero) and the lanes past N */                   \\
        for (hh = 0; hh < PS / WP; hh++) {                                            \\
            T* row = P + hh * WP * NP;                                                \\
            const int inside = hh >= PT && hh < PT + H;                               \\
            for (ww = 0; ww < WP; ww++) {                                             \\
                if (inside && ww >= PL && ww < PL + W) {                              \\
                    for (n = N; n < NP; n++)                                          \\
                        row[ww * NP + n] = 0;                                         \\
                } else if (zero) {                                                    \\
                    for (k = 0; k < NP; k += L)                                       \\
                        FASTCNN_DW_ST(row + ww * NP + k, z);                          \\
                }                                                                     \\
            }                                                                         \\
        }                                                                             \\
        /* L pixels (of the flat plane) by L images at a time: L reads, a             \\
           transpose in registers, L stores (one per pixel); the images               \\
           inner, so that a block of pixels is written whole */                       \\
        hh = ww = 0;                                                                  \\
        for (p = 0; p + L <= HW; p += L) {                                            \\
            for (k = 0; k < L; k++) {                                                 \\
                d[k] = ((hh + PT) * WP + ww + PL) * NP;                               \\
                if (++ww == W) { ww = 0; hh++; }                                      \\
            }                                                                         \\
            for (n = 0; n + L <= N; n += L) {                                         \\
                V r[L];                                                               \\
                for (i = 0; i < L; i++) {                                             \\
                    r[i] = FASTCNN_DW_LD(V, x + (n + i) * xs + p);                    \\
                    if (mk != NULL) {                                                 \\
                        r[i] *= FASTCNN_DWS_MASK_IN(V, L, mk + (n + i) * ms + p);     \\
                    }                                                                 \\
                }                                                                     \\
                fastcnn_dws_tr_##S(r);                                                \\
                for (k = 0; k < L; k++)                                               \\
                    FASTCNN_DW_ST(P + d[k] + n, r[k]);                                \\
            }                                                                         \\
            for (; n < N; n++)                                                        \\
                for (k = 0; k < L; k++)                                               \\
                    P[d[k] + n] = mk == NULL ? x[n * xs + p + k]                      \\
                        : x[n * xs + p + k] * (T)mk[n * ms + p + k];                  \\
        }                                                                             \\
        for (; p < HW; p++) {                                                         \\
            T* dd = P + ((hh + PT) * WP + ww + PL) * NP;                              \\
            for (n = 0; n < N; n++)                                                   \\
                dd[n] = mk == NULL ? x[n * xs + p] : x[n * xs + p] * (T)mk[n * ms + p]; \\
            if (++ww == W) { ww = 0; hh++; }                                          \\
        }                                                                             \\
    }                                                                                 \\
    /* y[n*ys + h*W + w] = P[((h+PT)*WP + w+PL)*NP + n], n < N: the strided           \\
       backward's dx out of its packed planes (no ReLU: PUT's relu is 0) */           \\
    static ATTR void fastcnn_dws_unpack_##S(const T* P, Py_ssize_t NP, Py_ssize_t N,  \\
            Py_ssize_t H, Py_ssize_t W, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WP,  \\
            T* y, Py_ssize_t ys) {                                                    \\
        const int relu = 0;                                                           \\
        Py_ssize_t n, i, k, p, hh = 0, ww = 0, HW = H * W;                            \\
        Py_ssize_t s[L];                                                              \\
        for (p = 0; p + L <= HW; p += L) {                                            \\
            for (k = 0; k < L; k++) {                                                 \\
                s[k] = ((hh + PT) * WP + ww + PL) * NP;                               \\
                if (++ww == W) { ww = 0; hh++; }                                      \\
            }                                                                         \\
            for (n = 0; n + L <= N; n += L) {                                         \\
                V r[L];                                                               \\
                for (k = 0; k < L; k++)                                               \\
                    r[k] = FASTCNN_DW_LD(V, P + s[k] + n);                            \\
                fastcnn_dws_tr_##S(r);                                                \\
                FASTCNN_DWS_PUT(V, VI, L, r, y + n * ys + p, ys) \\
            }                                                                         \\
            for (; n < N; n++)                                                        \\
                for (k = 0; k < L; k++)                                               \\
                    FASTCNN_DWS_PUT1(T, P[s[k] + n], y[n * ys + p + k]) \\
        }                                                                             \\
        for (; p < HW; p++) {                                                         \\
            const T* src = P + ((hh + PT) * WP + ww + PL) * NP;                       \\
            for (n = 0; n < N; n++)                                                   \\
                FASTCNN_DWS_PUT1(T, src[n], y[n * ys + p])               \\
            if (++ww == W) { ww = 0; hh++; }                                          \\
        }                                                                             \\
    }                                                                                 \\
    /* the forward and its copy out in one: y[n*ys + oh*OW + ow] =                    \\
       bias + sum_t w[t] * P[oh*rs + ow*cs + offs[t] + n] (relu, mk as in             \\
       unpack), L pixels by L images at a time through a transpose */                 \\
    static ATTR void fastcnn_dws_fwdout_##S(const T* P, const Py_ssize_t* offs,       \\
            const T* w, T bias, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t rs,          \\
            Py_ssize_t cs, Py_ssize_t NP, Py_ssize_t N, T* y, Py_ssize_t ys,          \\
            unsigned char* mk, Py_ssize_t ms, int relu) {                             \\
        FASTCNN_DW_TAPS9(V, w, offs)                                                  \\
        const V vb = FASTCNN_DW_SPLAT(V, bias);                                       \\
        Py_ssize_t n, i, k, p, oh = 0, ow = 0, HW = OH * OW;                          \\
        const T* src[L];                                                              \\
        for (p = 0; p + L <= HW; p += L) {                                            \\
            for (k = 0; k < L; k++) {                                                 \\
                src[k] = P + oh * rs + ow * cs;                                       \\
                if (++ow == OW) { ow = 0; oh++; }                                     \\
            }                                                                         \\
            for (n = 0; n < NP; n += L) {                                             \\
                V r[L];                                                               \\
                for (k = 0; k < L; k++) {                                             \\
                    const T* q = src[k] + n;                                          \\
                    r[k] = FASTCNN_DWS_CONV9(V, q);                                   \\
                }                                                                     \\
                fastcnn_dws_tr_##S(r);                                                \\
                if (n + L <= N) {                                                     \\
                    FASTCNN_DWS_PUT(V, VI, L, r, y + n * ys + p, ys) \\
                } else {                                                              \\
                    for (i = 0; n + i < N; i++)                                       \\
                        for (k = 0; k < L; k++)                                       \\
                            FASTCNN_DWS_PUT1(T, FASTCNN_DW_LANE(r[i], k),             \\
                                             y[(n + i) * ys + p + k])                 \\
                }                                                                     \\
            }                                                                         \\
        }                                                                             \\
        for (; p < HW; p++) {                                                         \\
            const T* base = P + oh * rs + ow * cs;                                    \\
            for (n = 0; n < NP; n += L) {                                             \\
                const T* q = base + n;                                                \\
                const V v = FASTCNN_DWS_CONV9(V, q);                                  \\
                for (i = 0; i < L && n + i < N; i++)                                  \\
                    FASTCNN_DWS_PUT1(T, FASTCNN_DW_LANE(v, i), y[(n + i) * ys + p])  \\
            }                                                                         \\
            if (++ow == OW) { ow = 0; oh++; }                                         \\
        }                                                                             \\
        /* the mask in a pass of its own over y (in cache), a loop the    \\
           compiler vectorises (per lane it would be a byte store each) */ \\
        if (mk != NULL)                                                               \\
            for (n = 0; n < N; n++)                                                   \\
                fastcnn_dws_positive_##S(y + n * ys, mk + n * ms, HW);                \\
    }                                                                                 \\
    /* with D the packed dy (output (oh, ow) at oh*drs + ow*NP): sums[t] +=      \\
       sum D * P at tap t, sums[9] += sum D (float vector sums added in double   \\
       after each row of outputs), and unless DX is NULL                         \\
       DX[oh*rs + ow*cs + offs[t] + j] += w[t] * D[oh*drs + ow*NP + j] */          \\
    static ATTR void fastcnn_dws_bwd_##S(const T* P, const T* D, T* DX,               \\
            const Py_ssize_t* offs, const T* w, Py_ssize_t OH, Py_ssize_t OW,         \\
            Py_ssize_t rs, Py_ssize_t cs, Py_ssize_t NP, Py_ssize_t drs,              \\
            double* sums) {                                                           \\
        FASTCNN_DW_TAPS9(V, w, offs)                                                  \\
        Py_ssize_t oh, ow, j, l;                                                      \\
        for (oh = 0; oh < OH; oh++) {                                                 \\
            V a0 = FASTCNN_DW_SPLAT(V, 0), a1 = a0, a2 = a0, a3 = a0, a4 = a0;        \\
            V a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;                            \\
            for (ow = 0; ow < OW; ow++) {                                             \\
                const T* x = P + oh * rs + ow * cs;                                   \\
                const T* d = D + oh * drs + ow * NP;                                  \\
                if (DX == NULL) {                                                     \\
                    for (j = 0; j < NP; j += L) {                                     \\
                        const V v = FASTCNN_DW_LD(V, d + j);                          \\
                        a9 += v;                                                      \\
                        FASTCNN_DWS_DOT(V, a0, o0) FASTCNN_DWS_DOT(V, a1, o1)         \\
                        FASTCNN_DWS_DOT(V, a2, o2) FASTCNN_DWS_DOT(V, a3, o3)         \\
                        FASTCNN_DWS_DOT(V, a4, o4) FASTCNN_DWS_DOT(V, a5, o5)         \\
                        FASTCNN_DWS_DOT(V, a6, o6) FASTCNN_DWS_DOT(V, a7, o7)         \\
                        FASTCNN_DWS_DOT(V, a8, o8)                                    \\
                    }                                                                 \\
                    continue;                                                         \\
                }                                                                     \\
                T* dx = DX + oh * rs + ow * cs;                                       \\
                for (j = 0; j < NP; j += L) {                                         \\
                    const V v = FASTCNN_DW_LD(V, d + j);                              \\
                    a9 += v;                                                          \\
                    FASTCNN_DWS_TAP(V, a0, w0, o0) FASTCNN_DWS_TAP(V, a1, w1, o1)     \\
                    FASTCNN_DWS_TAP(V, a2, w2, o2) FASTCNN_DWS_TAP(V, a3, w3, o3)     \\
                    FASTCNN_DWS_TAP(V, a4, w4, o4) FASTCNN_DWS_TAP(V, a5, w5, o5)     \\
                    FASTCNN_DWS_TAP(V, a6, w6, o6) FASTCNN_DWS_TAP(V, a7, w7, o7)     \\
                    FASTCNN_DWS_TAP(V, a8, w8, o8)                                    \\
                }                                                                     \\
            }                                                                         \\
            {                                                                         \\
                V a[10] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9};                   \\
                for (l = 0; l < 10; l++)                                              \\
                    sums[l] += fastcnn_dw_hsum_##S(a[l]);                             \\
            }                                                                         \\
        }                                                                             \\
    }
    /* the nine taps at q (the forward's weights and offsets in scope) */
    #define FASTCNN_DWS_CONV9(V, q)                                                      \\
        (((vb + (w0 * FASTCNN_DW_LD(V, q + o0) + w1 * FASTCNN_DW_LD(V, q + o1)         \\
                 + w2 * FASTCNN_DW_LD(V, q + o2)))                                     \\
          + (w3 * FASTCNN_DW_LD(V, q + o3) + w4 * FASTCNN_DW_LD(V, q + o4)             \\
             + w5 * FASTCNN_DW_LD(V, q + o5)))                                         \\
         + (w6 * FASTCNN_DW_LD(V, q + o6) + w7 * FASTCNN_DW_LD(V, q + o7)              \\
            + w8 * FASTCNN_DW_LD(V, q + o8)))
    /* rows r[i] (i < L) to dst + i*ys, through ReLU if relu (in scope) */
    #define FASTCNN_DWS_PUT(V, VI, L, r, dst, ys) {                                  \\
        Py_ssize_t i_;                                                                \\
        for (i_ = 0; i_ < L; i_++) {                                                  \\
            V v_ = r[i_];                                                             \\
            if (relu)                                                                 \\
                v_ = FASTCNN_DW_RELU(V, VI, v_);                                      \\
            FASTCNN_DW_ST((dst) + i_ * (ys), v_);                                     \\
        }                                                                             \\
    }
    /* one element: out = src through ReLU if relu (in scope) */
    #define FASTCNN_DWS_PUT1(T, src, out) {                                              \\
        T v1_ = (src);                                                                \\
        if (relu)                                                                     \\
            v1_ = !(v1_ <= 0) ? v1_ : (T)0;                                           \\
        out = v1_;                                                                    \\
    }
    /* L mask bytes at m as a vector of 0/1: whole vectors, not a lane at a time */
    #if defined(__GNUC__)
    #  define FASTCNN_DWS_MASK_IN(V, L, m) ({                                          \\
        typedef unsigned char cv_ __attribute__((vector_size(L)));                    \\
        cv_ b_;                                                                       \\
        memcpy(&b_, (m), L);                                                          \\
        __builtin_convertvector(b_, V);                                               \\
    })
    #else
    #  define FASTCNN_DWS_MASK_IN(V, L, m) ((V)(m)[0])
    #endif
    /* one tap of dw alone */
    #define FASTCNN_DWS_DOT(V, A, O)                                                     \\
        A += v * FASTCNN_DW_LD(V, x + j + O);
    /* one tap of the backward: its dw sum and its share of dx */
    #define FASTCNN_DWS_TAP(V, A, WV, O)                                                    \\
        A += v * FASTCNN_DW_LD(V, x + j + O);                                         \\
        FASTCNN_DW_ST(dx + j + O, FASTCNN_DW_LD(V, dx + j + O) + WV * v);

    #if defined(FASTCNN_DW_X86)
    FASTCNN_DWS_KERNELS(float, f32_avx, fastcnn_f8, fastcnn_i8, 8, FASTCNN_DW_AVX)
    FASTCNN_DWS_KERNELS(double, f64_avx, fastcnn_d4, fastcnn_l4, 4, FASTCNN_DW_AVX)
    FASTCNN_DWS_KERNELS(float, f32_base, fastcnn_f4, fastcnn_i4, 4, )
    FASTCNN_DWS_KERNELS(double, f64_base, fastcnn_d2, fastcnn_l2, 2, )
    #elif defined(__GNUC__)
    FASTCNN_DWS_KERNELS(float, f32_base, fastcnn_f4, fastcnn_i4, 4, )
    FASTCNN_DWS_KERNELS(double, f64_base, fastcnn_d2, fastcnn_l2, 2, )
    #else
    FASTCNN_DWS_KERNELS(float, f32_base, float, float, 1, )
    FASTCNN_DWS_KERNELS(double, f64_base, double, double, 1, )
    #endif

    #define FASTCNN_DWS_WRAP(T, S)                                                       \\
    static void fastcnn_dws_pack_##S(const T* x, Py_ssize_t xs, const unsigned char* mk,\\
            Py_ssize_t ms, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t PT,   \\
            Py_ssize_t PL, Py_ssize_t WP, Py_ssize_t PS, Py_ssize_t NP, T* P,         \\
            int zero) {                                                               \\
        FASTCNN_DW_PICK(fastcnn_dws_pack, S,                                          \\
                        (x, xs, mk, ms, N, H, W, PT, PL, WP, PS, NP, P, zero));       \\
    }                                                                                 \\
    static void fastcnn_dws_unpack_##S(const T* P, Py_ssize_t NP, Py_ssize_t N,       \\
            Py_ssize_t H, Py_ssize_t W, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WP,  \\
            T* y, Py_ssize_t ys) {                                                    \\
        FASTCNN_DW_PICK(fastcnn_dws_unpack, S, (P, NP, N, H, W, PT, PL, WP, y, ys));  \\
    }                                                                                 \\
    static void fastcnn_dws_fwdout_##S(const T* P, const Py_ssize_t* offs, const T* w, \\
            T bias, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t rs, Py_ssize_t cs,       \\
            Py_ssize_t NP, Py_ssize_t N, T* y, Py_ssize_t ys, unsigned char* mk,      \\
            Py_ssize_t ms, int relu) {                                                \\
        FASTCNN_DW_PICK(fastcnn_dws_fwdout, S,                                        \\
                        (P, offs, w, bias, OH, OW, rs, cs, NP, N, y, ys, mk, ms, relu)); \\
    }                                                                                 \\
    static void fastcnn_dws_bwd_##S(const T* P, const T* D, T* DX,                    \\
            const Py_ssize_t* offs, const T* w, Py_ssize_t OH, Py_ssize_t OW,         \\
            Py_ssize_t rs, Py_ssize_t cs, Py_ssize_t NP, Py_ssize_t drs,              \\
            double* sums) {                                                           \\
        FASTCNN_DW_PICK(fastcnn_dws_bwd, S,                                           \\
                        (P, D, DX, offs, w, OH, OW, rs, cs, NP, drs, sums));          \\
    }
    FASTCNN_DWS_WRAP(float, f32)
    FASTCNN_DWS_WRAP(double, f64)

    """
    void fastcnn_dws_pack_f32(const float* x, Py_ssize_t xs, const unsigned char* mk,
                              Py_ssize_t ms, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W,
                              Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WP, Py_ssize_t PS,
                              Py_ssize_t NP, float* P, int zero) nogil
    void fastcnn_dws_pack_f64(const double* x, Py_ssize_t xs, const unsigned char* mk,
                              Py_ssize_t ms, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W,
                              Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WP, Py_ssize_t PS,
                              Py_ssize_t NP, double* P, int zero) nogil
    void fastcnn_dws_unpack_f32(const float* P, Py_ssize_t NP, Py_ssize_t N, Py_ssize_t H,
                                Py_ssize_t W, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WP,
                                float* y, Py_ssize_t ys) nogil
    void fastcnn_dws_unpack_f64(const double* P, Py_ssize_t NP, Py_ssize_t N, Py_ssize_t H,
                                Py_ssize_t W, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WP,
                                double* y, Py_ssize_t ys) nogil
    void fastcnn_dws_fwdout_f32(const float* P, const Py_ssize_t* offs, const float* w,
                                float bias, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t rs,
                                Py_ssize_t cs, Py_ssize_t NP, Py_ssize_t N, float* y,
                                Py_ssize_t ys, unsigned char* mk, Py_ssize_t ms,
                                int relu) nogil
    void fastcnn_dws_fwdout_f64(const double* P, const Py_ssize_t* offs, const double* w,
                                double bias, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t rs,
                                Py_ssize_t cs, Py_ssize_t NP, Py_ssize_t N, double* y,
                                Py_ssize_t ys, unsigned char* mk, Py_ssize_t ms,
                                int relu) nogil
    void fastcnn_dws_bwd_f32(const float* P, const float* D, float* DX,
                             const Py_ssize_t* offs, const float* w, Py_ssize_t OH,
                             Py_ssize_t OW, Py_ssize_t rs, Py_ssize_t cs, Py_ssize_t NP,
                             Py_ssize_t drs, double* sums) nogil
    void fastcnn_dws_bwd_f64(const double* P, const double* D, double* DX,
                             const Py_ssize_t* offs, const double* w, Py_ssize_t OH,
                             Py_ssize_t OW, Py_ssize_t rs, Py_ssize_t cs, Py_ssize_t NP,
                             Py_ssize_t drs, double* sums) nogil


cdef inline void _pack(const floating* x, Py_ssize_t xs, const unsigned char* mk,
                       Py_ssize_t ms, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WP, Py_ssize_t PS,
                       Py_ssize_t NP, floating* P, int zero) noexcept nogil:
    if floating is float:
        fastcnn_dws_pack_f32(x, xs, mk, ms, N, H, W, PT, PL, WP, PS, NP, P, zero)
    else:
        fastcnn_dws_pack_f64(x, xs, mk, ms, N, H, W, PT, PL, WP, PS, NP, P, zero)


cdef inline void _unpack(const floating* P, Py_ssize_t NP, Py_ssize_t N, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t WP,
                         floating* y, Py_ssize_t ys) noexcept nogil:
    if floating is float:
        fastcnn_dws_unpack_f32(P, NP, N, H, W, PT, PL, WP, y, ys)
    else:
        fastcnn_dws_unpack_f64(P, NP, N, H, W, PT, PL, WP, y, ys)


cdef void _small_offsets(Py_ssize_t* offs, Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t WP,
                         Py_ssize_t NP) noexcept nogil:
    """offs[kh*3 + kw]: where tap (kh, kw) of output (0, 0) sits in a packed
    plane (images innermost)."""
    cdef Py_ssize_t kh, kw
    for kh in range(3):
        for kw in range(3):
            offs[kh * 3 + kw] = (kh * DH * WP + kw * DW) * NP


def forward_small(const floating[:, :, :, ::1] x, const floating[:, :, ::1] w,
                  const floating[::1] b, floating[:, :, :, ::1] xp,
                  floating[:, :, :, ::1] y, floating[::1] tile, Py_ssize_t c0,
                  Py_ssize_t c1, Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH,
                  Py_ssize_t DW, Py_ssize_t PT, Py_ssize_t PL, bint relu,
                  unsigned char[:, :, :, ::1] mask, bint masked):
    """The small-map forward of 3x3 filters, for channels [c0, c1) and all
    images: xp[c] (C, HP, WP, NP) = the zero-padded planes x[:, c] with the
    images innermost (NP >= N, a multiple of 8; the lanes past N zero), and
    y[:, c*M:(c+1)*M] = their depthwise convolution (relu: through ReLU,
    np.maximum(y, 0); masked: mask = [y > 0] too, else mask is not read).
    tile (OH*OW*NP,) is numba_depthwise's scratch (these loops write y
    directly)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], M = F // C, OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t HP = xp.shape[1], WP = xp.shape[2], NP = xp.shape[3]
    cdef Py_ssize_t offs[9]
    cdef Py_ssize_t c, m, f
    cdef unsigned char* mk = NULL
    _small_offsets(offs, DH, DW, WP, NP)
    with nogil:
        for c in range(c0, c1):
            _pack(&x[0, c, 0, 0], C * H * W, NULL, 0, N, H, W, PT, PL, WP, HP * WP, NP,
                  &xp[c, 0, 0, 0], 1)
            for m in range(M):
                f = c * M + m
                if masked:
                    mk = &mask[0, f, 0, 0]
                if floating is float:
                    fastcnn_dws_fwdout_f32(&xp[c, 0, 0, 0], offs, &w[f, 0, 0], b[f], OH, OW,
                                           SH * WP * NP, SW * NP, NP, N, &y[0, f, 0, 0],
                                           F * OH * OW, mk, F * OH * OW, relu)
                else:
                    fastcnn_dws_fwdout_f64(&xp[c, 0, 0, 0], offs, &w[f, 0, 0], b[f], OH, OW,
                                           SH * WP * NP, SW * NP, NP, N, &y[0, f, 0, 0],
                                           F * OH * OW, mk, F * OH * OW, relu)


def backward_small(const floating[:, :, :, ::1] dy, const floating[:, :, ::1] w,
                   const floating[:, :, :, ::1] xp, floating[:, :, :, ::1] dx,
                   double[:, ::1] dw, double[::1] db, floating[::1] dyt, floating[::1] dxt,
                   Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t SH, Py_ssize_t SW,
                   Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t PT, Py_ssize_t PL,
                   const unsigned char[:, :, :, ::1] mask, bint masked):
    """The small-map backward for channels [c0, c1), all images, over
    forward_small's xp: dx[:, c] (written), dw[f] (F, 9) and db[f] (written)
    for the filters f of those channels. masked: dy * mask is the gradient
    used, applied as dy is packed (else mask is not read). Scratch: dyt
    (max(OH*OW, HD*WD) * NP,) with HD, WD below, dxt (HP*WP*NP,).

    Stride 1 with M == 1: dy packed zero-padded into (HD, WD, NP) (2*DH
    rows above, 2*DW columns left, max(0, 2*DH - PB) rows below and
    max(0, 2*DW - PR) columns right) and dx a gather from it, the
    forward's loop with the flipped filter, transposed straight into dx:
    one store per element of dx. Otherwise dx is scattered into the packed
    plane dxt, each output adding its nine taps, and copied out."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t F = w.shape[0], M = F // C, OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t HP = xp.shape[1], WP = xp.shape[2], NP = xp.shape[3]
    cdef Py_ssize_t A = 2 * DH, B = 2 * DW
    cdef Py_ssize_t HD = A + OH + max(0, 2 * DH - (HP - H - PT))
    cdef Py_ssize_t WD = B + OW + max(0, 2 * DW - (WP - W - PL))
    cdef bint gather = SH == 1 and SW == 1 and M == 1
    cdef Py_ssize_t offs[9]
    cdef Py_ssize_t goffs[9]
    cdef floating wf[9]
    cdef double sums[10]
    cdef Py_ssize_t c, m, f, t
    cdef const unsigned char* mk = NULL
    cdef const floating* D
    _small_offsets(offs, DH, DW, WP, NP)
    _small_offsets(goffs, DH, DW, WD, NP)
    with nogil:
        for c in range(c0, c1):
            if not gather:
                _zero(&dxt[0], HP * WP * NP)
            for m in range(M):
                f = c * M + m
                if masked:
                    mk = &mask[0, f, 0, 0]
                if gather:
                    _pack(&dy[0, f, 0, 0], F * OH * OW, mk, F * OH * OW, N, OH, OW, A, B, WD,
                          HD * WD, NP, &dyt[0], 1)
                    D = &dyt[0] + (A * WD + B) * NP
                else:
                    _pack(&dy[0, f, 0, 0], F * OH * OW, mk, F * OH * OW, N, OH, OW, 0, 0, OW,
                          OH * OW, NP, &dyt[0], 0)
                    D = &dyt[0]
                for t in range(10):
                    sums[t] = 0
                if floating is float:
                    fastcnn_dws_bwd_f32(&xp[c, 0, 0, 0], D, NULL if gather else &dxt[0], offs,
                                        &w[f, 0, 0], OH, OW, SH * WP * NP, SW * NP, NP,
                                        (WD if gather else OW) * NP, sums)
                else:
                    fastcnn_dws_bwd_f64(&xp[c, 0, 0, 0], D, NULL if gather else &dxt[0], offs,
                                        &w[f, 0, 0], OH, OW, SH * WP * NP, SW * NP, NP,
                                        (WD if gather else OW) * NP, sums)
                for t in range(9):
                    dw[f, t] = sums[t]
                db[f] = sums[9]
            if gather:
                for t in range(9):
                    wf[t] = w[c, (8 - t) // 3, (8 - t) % 3]
                if floating is float:
                    fastcnn_dws_fwdout_f32(&dyt[0] + (PT * WD + PL) * NP, goffs, wf, 0, H, W,
                                           WD * NP, NP, NP, N, &dx[0, c, 0, 0], C * H * W,
                                           NULL, 0, 0)
                else:
                    fastcnn_dws_fwdout_f64(&dyt[0] + (PT * WD + PL) * NP, goffs, wf, 0, H, W,
                                           WD * NP, NP, NP, N, &dx[0, c, 0, 0], C * H * W,
                                           NULL, 0, 0)
            else:
                _unpack(&dxt[0], NP, N, H, W, PT, PL, WP, &dx[0, c, 0, 0], C * H * W)

