"""Compiled max/avg pooling loops, forward and backward, windowed,
adaptive and global.

What this is: typed loops over memoryviews, fused float32/float64, GIL
released, single-threaded over the N*C image planes (the adapter runs
ranges of planes concurrently; a plane is never split, so the backward
scatter needs no atomics).

What this is not: no validation and no allocation of arrays -- the adapter
``fastcnn.backends.cython`` allocates; ``fastcnn.ops`` validates.

Shapes: x/dx (N, C, H, W), y/dy (N, C, OH, OW), kernel (KH, KW), stride
(SH, SW), symmetric padding (PH, PW) with PH <= KH // 2, PW <= KW // 2,
max's dilation (DH, DW). (OH, OW) is y's shape, as ``fastcnn.ops`` computed
it: in ceil_mode the last windows run past the padded input, and every tap
outside the input is skipped, so nothing is padded or extended. That is
the same as padding with -inf (max) or with 0 (avg, which divides by
PyTorch's divisor for the window's place: ``_divisors``). argmax (N, C,
OH, OW) holds, per output, the flat index ih*W + iw of the chosen input
element within its (n, c) plane (C int, so H*W < 2**31).

Windowed loops are tap-major: for each window tap (kh, kw), in row-major
order, one pass along a whole output row. The inner loops are then long,
branch-free and vectorisable, unlike a loop over each 3x3 window.
"""
from cython cimport floating
from libc.math cimport INFINITY
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from fastcnn._kernels._rows cimport _axpy, _hi, _lo, _zero


cdef Py_ssize_t* _ranges(Py_ssize_t K, Py_ssize_t S, Py_ssize_t P, Py_ssize_t D,
                         Py_ssize_t I, Py_ssize_t O) except NULL:
    """For each tap k, the outputs [lo, hi) whose input o*S - P + k*D lies
    inside [0, I), as lo[0:K] ++ hi[0:K] (hi == lo when empty); then, at
    [2K, 2K + O), each window's first real input (the first tap inside,
    where argmax starts). The caller frees it."""
    cdef Py_ssize_t* r = <Py_ssize_t*>malloc((2 * K + O) * sizeof(Py_ssize_t))
    cdef Py_ssize_t k, o, start
    if r == NULL:
        raise MemoryError()
    for k in range(K):
        r[k] = _lo(k * D - P, S)
        r[K + k] = max(r[k], _hi(k * D - P, S, I, O))
    for o in range(O):
        start = o * S - P
        r[2 * K + o] = start if start >= 0 else start + D * ((D - 1 - start) // D)
    return r


cdef extern from *:
    """
    /* fastcnn: the plain 2x2 stride-2 max pooling (no padding, dilation or
       ceil_mode overrun) of whole planes, each window read straight from
       its two input rows: the four taps in row-major order with _max_tap's
       rule (strict >, the first NaN wins), argmax the flat input index;
       relu: _max_planes' ReLU marks. Float rows go L outputs at a time
       (the even and odd columns of two loads shuffled apart), a row's last
       vector overlapping the one before (the same values again); AVX-512
       (16, 8 or 4 floats; 8, 4 or 2 doubles), AVX2 and SSE2 (as many lanes
       as their registers hold), picked at the first call from what the CPU
       has; rows too short for a vector and non-x86 CPUs run the scalar
       loop. */
    #define FASTCNN_P22_TAP(v, b, a, off) do {                                          \\
        take = (v > b) | ((v != v) & (b == b));                                         \\
        b = take ? v : b;                                                               \\
        a = take ? off : a;                                                             \\
    } while (0)
    #define FASTCNN_P22_SCALAR(T, S, ATTR)                                              \\
    static ATTR void fastcnn_p22row_##S(const T* r0, const T* r1, T* y, int* arg,       \\
            Py_ssize_t n, int base, int W, int relu) {                                  \\
        Py_ssize_t i;                                                                   \\
        int take;                                                                       \\
        for (i = 0; i < n; i++) {                                                       \\
            const int j = base + 2 * (int)i;                                            \\
            T b = r0[2 * i], v;                                                         \\
            int a = j;                                                                  \\
            v = r0[2 * i + 1]; FASTCNN_P22_TAP(v, b, a, j + 1);                         \\
            v = r1[2 * i]; FASTCNN_P22_TAP(v, b, a, j + W);                             \\
            v = r1[2 * i + 1]; FASTCNN_P22_TAP(v, b, a, j + W + 1);                     \\
            if (relu && !(b > 0)) {                                                     \\
                if (b == b) { b = 0; a = -j - 1; } else a = -a - 1;                     \\
            }                                                                           \\
            y[i] = b;                                                                   \\
            arg[i] = a;                                                                 \\
        }                                                                               \\
    }
    #define FASTCNN_P22_PLANES(T, S, ATTR, ROWS)                                        \\
    static ATTR void fastcnn_p22planes_##S(const T* x, T* y, int* arg, Py_ssize_t P,    \\
            Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, int relu) {       \\
        Py_ssize_t p, oh;                                                               \\
        for (p = 0; p < P; p++)                                                         \\
            for (oh = 0; oh < OH; oh++) {                                               \\
                const T* r0 = x + (p * H + 2 * oh) * W;                                 \\
                const T* r1 = r0 + W;                                                   \\
                T* yr = y + (p * OH + oh) * OW;                                         \\
                int* ar = arg + (p * OH + oh) * OW;                                     \\
                const int base = (int)(2 * oh * W);                                     \\
                ROWS                                                                    \\
            }                                                                           \\
    }
    FASTCNN_P22_SCALAR(float, f32_base, )
    FASTCNN_P22_SCALAR(double, f64_base, )
    #if defined(__GNUC__) && defined(__x86_64__) && __GNUC__ >= 12
    /* L outputs from column pair i of rows r0, r1: V the L-lane vector of T,
       VM its compare masks, VI L int lanes (argmax) */
    #define FASTCNN_P22_BODY(T, V, VM, VI, EVEN, ODD, LANES2) {                         \\
        const VI j = LANES2 + (base + 2 * (int)i), zero = (VI){0};                      \\
        const Py_ssize_t L = sizeof(V) / sizeof(T);                                     \\
        V p0, p1, q0, q1, b, v;                                                         \\
        VM t;                                                                           \\
        VI a, ti;                                                                       \\
        memcpy(&p0, r0 + 2 * i, sizeof p0); memcpy(&p1, r0 + 2 * i + L, sizeof p1);   \\
        memcpy(&q0, r1 + 2 * i, sizeof q0); memcpy(&q1, r1 + 2 * i + L, sizeof q1);   \\
        b = EVEN(p0, p1);                                                               \\
        a = j;                                                                          \\
        v = ODD(p0, p1);                                                                \\
        t = (v > b) | ((v != v) & (b == b)); ti = __builtin_convertvector(t, VI);       \\
        b = (V)(((VM)v & t) | ((VM)b & ~t)); a = (ti & (j + 1)) | (~ti & a);            \\
        v = EVEN(q0, q1);                                                               \\
        t = (v > b) | ((v != v) & (b == b)); ti = __builtin_convertvector(t, VI);       \\
        b = (V)(((VM)v & t) | ((VM)b & ~t)); a = (ti & (j + W)) | (~ti & a);            \\
        v = ODD(q0, q1);                                                                \\
        t = (v > b) | ((v != v) & (b == b)); ti = __builtin_convertvector(t, VI);       \\
        b = (V)(((VM)v & t) | ((VM)b & ~t)); a = (ti & (j + W + 1)) | (~ti & a);        \\
        if (relu) {                                                                     \\
            const VM stop = ~(b > (V){0}), num = b == b;                                \\
            const VI si = __builtin_convertvector(stop, VI);                            \\
            const VI ni = __builtin_convertvector(num, VI);                             \\
            a = (si & ni & (zero - j - 1)) | (si & ~ni & (zero - a - 1)) | (~si & a);   \\
            b = (V)((VM)b & ~(stop & num));                                             \\
        }                                                                               \\
        memcpy(yr + i, &b, sizeof b);                                                   \\
        memcpy(ar + i, &a, sizeof a);                                                   \\
    }
    #define FASTCNN_P22_VEC(N, T, L) typedef T N __attribute__((vector_size(L * sizeof(T))));
    FASTCNN_P22_VEC(fastcnn_p22_f16, float, 16)
    FASTCNN_P22_VEC(fastcnn_p22_f8, float, 8)
    FASTCNN_P22_VEC(fastcnn_p22_f4, float, 4)
    FASTCNN_P22_VEC(fastcnn_p22_d8, double, 8)
    FASTCNN_P22_VEC(fastcnn_p22_d4, double, 4)
    FASTCNN_P22_VEC(fastcnn_p22_d2, double, 2)
    FASTCNN_P22_VEC(fastcnn_p22_l8, long long, 8)
    FASTCNN_P22_VEC(fastcnn_p22_l4, long long, 4)
    FASTCNN_P22_VEC(fastcnn_p22_l2, long long, 2)
    FASTCNN_P22_VEC(fastcnn_p22_i16, int, 16)
    FASTCNN_P22_VEC(fastcnn_p22_i8, int, 8)
    FASTCNN_P22_VEC(fastcnn_p22_i4, int, 4)
    FASTCNN_P22_VEC(fastcnn_p22_i2, int, 2)
    #define FASTCNN_P22_E16(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14,  \\
                                                       16, 18, 20, 22, 24, 26, 28, 30)
    #define FASTCNN_P22_O16(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15,  \\
                                                       17, 19, 21, 23, 25, 27, 29, 31)
    #define FASTCNN_P22_E8(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14)
    #define FASTCNN_P22_O8(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15)
    #define FASTCNN_P22_E4(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6)
    #define FASTCNN_P22_O4(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7)
    #define FASTCNN_P22_E2(a, b) __builtin_shufflevector(a, b, 0, 2)
    #define FASTCNN_P22_O2(a, b) __builtin_shufflevector(a, b, 1, 3)
    #define FASTCNN_P22_J16 ((fastcnn_p22_i16){0, 2, 4, 6, 8, 10, 12, 14,                    \\
                                               16, 18, 20, 22, 24, 26, 28, 30})
    #define FASTCNN_P22_J8 ((fastcnn_p22_i8){0, 2, 4, 6, 8, 10, 12, 14})
    #define FASTCNN_P22_J4 ((fastcnn_p22_i4){0, 2, 4, 6})
    #define FASTCNN_P22_J2 ((fastcnn_p22_i2){0, 2})
    /* a row in vectors of L, the last one ending at OW (over lanes written
       already); OW >= L */
    #define FASTCNN_P22_ROWFN(NAME, T, V, VM, VI, E, O, J, ATTR)                        \\
    static inline ATTR void NAME(const T* r0, const T* r1, T* yr, int* ar,              \\
            Py_ssize_t OW, int base, int W, int relu) {                                 \\
        const Py_ssize_t L = sizeof(V) / sizeof(T);                                     \\
        Py_ssize_t i;                                                                   \\
        for (i = 0; i < OW; i = i + L < OW && i + 2 * L > OW ? OW - L : i + L)          \\
            FASTCNN_P22_BODY(T, V, VM, VI, E, O, J)                                     \\
    }
    #define FASTCNN_P22_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
    #define FASTCNN_P22_AVX2 __attribute__((target("avx2,fma")))
    #define FASTCNN_P22_ROWS(ISA, ATTR)                                                 \\
    FASTCNN_P22_ROWFN(fastcnn_p22row16_##ISA, float, fastcnn_p22_f16, fastcnn_p22_i16,  \\
                      fastcnn_p22_i16, FASTCNN_P22_E16, FASTCNN_P22_O16, FASTCNN_P22_J16, ATTR) \\
    FASTCNN_P22_ROWFN(fastcnn_p22row8_##ISA, float, fastcnn_p22_f8, fastcnn_p22_i8,     \\
                      fastcnn_p22_i8, FASTCNN_P22_E8, FASTCNN_P22_O8, FASTCNN_P22_J8, ATTR) \\
    FASTCNN_P22_ROWFN(fastcnn_p22row4_##ISA, float, fastcnn_p22_f4, fastcnn_p22_i4,     \\
                      fastcnn_p22_i4, FASTCNN_P22_E4, FASTCNN_P22_O4, FASTCNN_P22_J4, ATTR) \\
    FASTCNN_P22_ROWFN(fastcnn_p22rowd8_##ISA, double, fastcnn_p22_d8, fastcnn_p22_l8,   \\
                      fastcnn_p22_i8, FASTCNN_P22_E8, FASTCNN_P22_O8, FASTCNN_P22_J8, ATTR) \\
    FASTCNN_P22_ROWFN(fastcnn_p22rowd4_##ISA, double, fastcnn_p22_d4, fastcnn_p22_l4,   \\
                      fastcnn_p22_i4, FASTCNN_P22_E4, FASTCNN_P22_O4, FASTCNN_P22_J4, ATTR) \\
    FASTCNN_P22_ROWFN(fastcnn_p22rowd2_##ISA, double, fastcnn_p22_d2, fastcnn_p22_l2,   \\
                      fastcnn_p22_i2, FASTCNN_P22_E2, FASTCNN_P22_O2, FASTCNN_P22_J2, ATTR)
    FASTCNN_P22_ROWS(avx512, FASTCNN_P22_AVX512)
    FASTCNN_P22_ROWS(avx2, FASTCNN_P22_AVX2)
    FASTCNN_P22_ROWS(sse, )
    #define FASTCNN_P22_ARGS (r0, r1, yr, ar, OW, base, (int)W, relu)
    FASTCNN_P22_PLANES(float, f32_avx512, FASTCNN_P22_AVX512,
        if (OW >= 16) fastcnn_p22row16_avx512 FASTCNN_P22_ARGS;
        else if (OW >= 8) fastcnn_p22row8_avx512 FASTCNN_P22_ARGS;
        else if (OW >= 4) fastcnn_p22row4_avx512 FASTCNN_P22_ARGS;
        else fastcnn_p22row_f32_base FASTCNN_P22_ARGS;)
    FASTCNN_P22_PLANES(float, f32_avx2, FASTCNN_P22_AVX2,
        if (OW >= 8) fastcnn_p22row8_avx2 FASTCNN_P22_ARGS;
        else if (OW >= 4) fastcnn_p22row4_avx2 FASTCNN_P22_ARGS;
        else fastcnn_p22row_f32_base FASTCNN_P22_ARGS;)
    FASTCNN_P22_PLANES(float, f32_sse, ,
        if (OW >= 4) fastcnn_p22row4_sse FASTCNN_P22_ARGS;
        else fastcnn_p22row_f32_base FASTCNN_P22_ARGS;)
    FASTCNN_P22_PLANES(double, f64_avx512, FASTCNN_P22_AVX512,
        if (OW >= 8) fastcnn_p22rowd8_avx512 FASTCNN_P22_ARGS;
        else if (OW >= 4) fastcnn_p22rowd4_avx512 FASTCNN_P22_ARGS;
        else if (OW >= 2) fastcnn_p22rowd2_avx512 FASTCNN_P22_ARGS;
        else fastcnn_p22row_f64_base FASTCNN_P22_ARGS;)
    FASTCNN_P22_PLANES(double, f64_avx2, FASTCNN_P22_AVX2,
        if (OW >= 4) fastcnn_p22rowd4_avx2 FASTCNN_P22_ARGS;
        else if (OW >= 2) fastcnn_p22rowd2_avx2 FASTCNN_P22_ARGS;
        else fastcnn_p22row_f64_base FASTCNN_P22_ARGS;)
    FASTCNN_P22_PLANES(double, f64_sse, ,
        if (OW >= 2) fastcnn_p22rowd2_sse FASTCNN_P22_ARGS;
        else fastcnn_p22row_f64_base FASTCNN_P22_ARGS;)
    static int fastcnn_p22_level = -1;
    /* want < 0: the level in use (2 AVX-512, 1 AVX2, 0 SSE2); else use
       min(want, the CPU's best) from now on */
    static int fastcnn_p22_simd(int want) {
        if (fastcnn_p22_level < 0 || want >= 0) {
            int best;
            __builtin_cpu_init();
            best = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
                && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") ? 2
                : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
            fastcnn_p22_level = want < 0 || want > best ? best : want;
        }
        return fastcnn_p22_level;
    }
    static void fastcnn_pool22_f32(const float* x, float* y, int* arg, Py_ssize_t P,
            Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, int relu) {
        int l = fastcnn_p22_level < 0 ? fastcnn_p22_simd(-1) : fastcnn_p22_level;
        if (l == 2) fastcnn_p22planes_f32_avx512(x, y, arg, P, H, W, OH, OW, relu);
        else if (l == 1) fastcnn_p22planes_f32_avx2(x, y, arg, P, H, W, OH, OW, relu);
        else fastcnn_p22planes_f32_sse(x, y, arg, P, H, W, OH, OW, relu);
    }
    static void fastcnn_pool22_f64(const double* x, double* y, int* arg, Py_ssize_t P,
            Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, int relu) {
        int l = fastcnn_p22_level < 0 ? fastcnn_p22_simd(-1) : fastcnn_p22_level;
        if (l == 2) fastcnn_p22planes_f64_avx512(x, y, arg, P, H, W, OH, OW, relu);
        else if (l == 1) fastcnn_p22planes_f64_avx2(x, y, arg, P, H, W, OH, OW, relu);
        else fastcnn_p22planes_f64_sse(x, y, arg, P, H, W, OH, OW, relu);
    }
    /* fastcnn: global average pooling's plane sums, B planes at a time in
       B-lane vectors: each plane's whole vectors summed lane-wise into one
       accumulator (its last L % B elements apart, in order), then the B
       accumulators folded into one vector of B plane sums by halving
       shuffles (lane j: plane j), instead of B horizontal sums. */
    #define FASTCNN_GA_FN(NAME, T, V, B, ATTR, FOLD)                                    \\
    static ATTR void NAME(const T* x, T* y, Py_ssize_t P, Py_ssize_t L) {               \\
        Py_ssize_t p, r, i;                                                             \\
        for (p = 0; p + B <= P; p += B) {                                               \\
            V acc[B], s, t;                                                             \\
            T tail[B];                                                                  \\
            for (r = 0; r < B; r++) {                                                   \\
                const T* row = x + (p + r) * L;                                         \\
                V a = (V){0}, v;                                                        \\
                T u = 0;                                                                \\
                for (i = 0; i + B <= L; i += B) { memcpy(&v, row + i, sizeof v); a += v; } \\
                for (; i < L; i++) u += row[i];                                         \\
                acc[r] = a;                                                             \\
                tail[r] = u;                                                            \\
            }                                                                           \\
            FOLD                                                                        \\
            memcpy(&t, tail, sizeof t);                                                 \\
            s = (s + t) / (T)L;                                                         \\
            memcpy(y + p, &s, sizeof s);                                                \\
        }                                                                               \\
        for (; p < P; p++) {                                                            \\
            T u = 0;                                                                    \\
            for (i = 0; i < L; i++) u += x[p * L + i];                                  \\
            y[p] = u / (T)L;                                                            \\
        }                                                                               \\
    }
    #define FASTCNN_GA_SH(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
    #define FASTCNN_GA_FOLD2                                                            \\
        s = FASTCNN_GA_SH(acc[0], acc[1], 0, 2) + FASTCNN_GA_SH(acc[0], acc[1], 1, 3);
    #define FASTCNN_GA_FOLD4 {                                                          \\
        __typeof__(acc[0]) h[2];                                                        \\
        for (r = 0; r < 2; r++)                                                         \\
            h[r] = FASTCNN_GA_SH(acc[2*r], acc[2*r+1], 0, 1, 4, 5)                      \\
                 + FASTCNN_GA_SH(acc[2*r], acc[2*r+1], 2, 3, 6, 7);                     \\
        s = FASTCNN_GA_SH(h[0], h[1], 0, 2, 4, 6) + FASTCNN_GA_SH(h[0], h[1], 1, 3, 5, 7); }
    #define FASTCNN_GA_FOLD8 {                                                          \\
        __typeof__(acc[0]) h[4], q[2];                                                  \\
        for (r = 0; r < 4; r++)                                                         \\
            h[r] = FASTCNN_GA_SH(acc[2*r], acc[2*r+1], 0, 1, 2, 3, 8, 9, 10, 11)        \\
                 + FASTCNN_GA_SH(acc[2*r], acc[2*r+1], 4, 5, 6, 7, 12, 13, 14, 15);     \\
        for (r = 0; r < 2; r++)                                                         \\
            q[r] = FASTCNN_GA_SH(h[2*r], h[2*r+1], 0, 1, 4, 5, 8, 9, 12, 13)            \\
                 + FASTCNN_GA_SH(h[2*r], h[2*r+1], 2, 3, 6, 7, 10, 11, 14, 15);         \\
        s = FASTCNN_GA_SH(q[0], q[1], 0, 2, 4, 6, 8, 10, 12, 14)                        \\
          + FASTCNN_GA_SH(q[0], q[1], 1, 3, 5, 7, 9, 11, 13, 15); }
    #define FASTCNN_GA_FOLD16 {                                                         \\
        __typeof__(acc[0]) h[8], q[4], o[2];                                            \\
        for (r = 0; r < 8; r++)                                                         \\
            h[r] = FASTCNN_GA_SH(acc[2*r], acc[2*r+1], 0, 1, 2, 3, 4, 5, 6, 7,          \\
                                 16, 17, 18, 19, 20, 21, 22, 23)                        \\
                 + FASTCNN_GA_SH(acc[2*r], acc[2*r+1], 8, 9, 10, 11, 12, 13, 14, 15,    \\
                                 24, 25, 26, 27, 28, 29, 30, 31);                       \\
        for (r = 0; r < 4; r++)                                                         \\
            q[r] = FASTCNN_GA_SH(h[2*r], h[2*r+1], 0, 1, 2, 3, 8, 9, 10, 11,            \\
                                 16, 17, 18, 19, 24, 25, 26, 27)                        \\
                 + FASTCNN_GA_SH(h[2*r], h[2*r+1], 4, 5, 6, 7, 12, 13, 14, 15,          \\
                                 20, 21, 22, 23, 28, 29, 30, 31);                       \\
        for (r = 0; r < 2; r++)                                                         \\
            o[r] = FASTCNN_GA_SH(q[2*r], q[2*r+1], 0, 1, 4, 5, 8, 9, 12, 13,            \\
                                 16, 17, 20, 21, 24, 25, 28, 29)                        \\
                 + FASTCNN_GA_SH(q[2*r], q[2*r+1], 2, 3, 6, 7, 10, 11, 14, 15,          \\
                                 18, 19, 22, 23, 26, 27, 30, 31);                       \\
        s = FASTCNN_GA_SH(o[0], o[1], 0, 2, 4, 6, 8, 10, 12, 14,                        \\
                          16, 18, 20, 22, 24, 26, 28, 30)                               \\
          + FASTCNN_GA_SH(o[0], o[1], 1, 3, 5, 7, 9, 11, 13, 15,                        \\
                          17, 19, 21, 23, 25, 27, 29, 31); }
    FASTCNN_GA_FN(fastcnn_ga_f32_avx512, float, fastcnn_p22_f16, 16, FASTCNN_P22_AVX512,
                  FASTCNN_GA_FOLD16)
    FASTCNN_GA_FN(fastcnn_ga_f32_avx2, float, fastcnn_p22_f8, 8, FASTCNN_P22_AVX2, FASTCNN_GA_FOLD8)
    FASTCNN_GA_FN(fastcnn_ga_f32_sse, float, fastcnn_p22_f4, 4, , FASTCNN_GA_FOLD4)
    FASTCNN_GA_FN(fastcnn_ga_f64_avx512, double, fastcnn_p22_d8, 8, FASTCNN_P22_AVX512,
                  FASTCNN_GA_FOLD8)
    FASTCNN_GA_FN(fastcnn_ga_f64_avx2, double, fastcnn_p22_d4, 4, FASTCNN_P22_AVX2,
                  FASTCNN_GA_FOLD4)
    FASTCNN_GA_FN(fastcnn_ga_f64_sse, double, fastcnn_p22_d2, 2, , FASTCNN_GA_FOLD2)
    static void fastcnn_global_avg_f32(const float* x, float* y, Py_ssize_t P, Py_ssize_t L) {
        int l = fastcnn_p22_level < 0 ? fastcnn_p22_simd(-1) : fastcnn_p22_level;
        if (l == 2) fastcnn_ga_f32_avx512(x, y, P, L);
        else if (l == 1) fastcnn_ga_f32_avx2(x, y, P, L);
        else fastcnn_ga_f32_sse(x, y, P, L);
    }
    static void fastcnn_global_avg_f64(const double* x, double* y, Py_ssize_t P, Py_ssize_t L) {
        int l = fastcnn_p22_level < 0 ? fastcnn_p22_simd(-1) : fastcnn_p22_level;
        if (l == 2) fastcnn_ga_f64_avx512(x, y, P, L);
        else if (l == 1) fastcnn_ga_f64_avx2(x, y, P, L);
        else fastcnn_ga_f64_sse(x, y, P, L);
    }
    #else
    /* elsewhere: the scalar loop over whole planes */
    FASTCNN_P22_PLANES(float, f32_base, , fastcnn_p22row_f32_base(r0, r1, yr, ar, OW, base, (int)W, relu);)
    FASTCNN_P22_PLANES(double, f64_base, , fastcnn_p22row_f64_base(r0, r1, yr, ar, OW, base, (int)W, relu);)
    static int fastcnn_p22_simd(int want) { (void)want; return 0; }
    static void fastcnn_pool22_f32(const float* x, float* y, int* arg, Py_ssize_t P,
            Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, int relu) {
        fastcnn_p22planes_f32_base(x, y, arg, P, H, W, OH, OW, relu);
    }
    static void fastcnn_pool22_f64(const double* x, double* y, int* arg, Py_ssize_t P,
            Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, int relu) {
        fastcnn_p22planes_f64_base(x, y, arg, P, H, W, OH, OW, relu);
    }
    /* elsewhere: one plane at a time */
    #define FASTCNN_GA_SCALAR(T, S)                                                     \\
    static void fastcnn_global_avg_##S(const T* x, T* y, Py_ssize_t P, Py_ssize_t L) {  \\
        Py_ssize_t p, i;                                                                \\
        for (p = 0; p < P; p++) {                                                       \\
            T u = 0;                                                                    \\
            for (i = 0; i < L; i++) u += x[p * L + i];                                  \\
            y[p] = u / (T)L;                                                            \\
        }                                                                               \\
    }
    FASTCNN_GA_SCALAR(float, f32)
    FASTCNN_GA_SCALAR(double, f64)
    #endif
    """
    int fastcnn_p22_simd(int want) nogil
    void fastcnn_pool22_f32(const float* x, float* y, int* arg, Py_ssize_t P, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, int relu) nogil
    void fastcnn_pool22_f64(const double* x, double* y, int* arg, Py_ssize_t P, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, int relu) nogil
    void fastcnn_global_avg_f32(const float* x, float* y, Py_ssize_t P, Py_ssize_t L) nogil
    void fastcnn_global_avg_f64(const double* x, double* y, Py_ssize_t P, Py_ssize_t L) nogil


cdef inline void _max_tap(floating* best, int* arg, const floating* src,
                          Py_ssize_t SW, Py_ssize_t n, int idx0,
                          int didx) noexcept nogil:
    """One tap of every window in an output row: best[i] vs src[i*SW], at
    flat input index idx0 + i*didx. Strict > keeps the first maximum; a NaN
    replaces a number but not an earlier NaN, so the first NaN wins. No
    branches: on random data `v > best` is a coin flip, and a mispredicted
    branch per element made this loop 4x slower than it is with selects."""
    cdef Py_ssize_t i
    cdef floating v, b
    cdef bint take
    for i in range(n):
        v = src[i * SW]
        b = best[i]
        take = (v > b) | ((v != v) & (b == b))
        best[i] = v if take else b
        arg[i] = <int>(idx0 + i * didx) if take else arg[i]


cdef void _max_planes(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                      int[:, :, :, ::1] argmax,
                      Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                      Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW,
                      const Py_ssize_t* r, bint relu) noexcept nogil:
    """max_forward's loop (r: _ranges for the columns); with relu, each
    output row is then ReLU'd where it is in cache (max_relu_forward)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t item, n, c, oh, ow, kh, kw, ih, h0, first_h, lo, iw
    cdef floating neg_inf = -INFINITY
    cdef const Py_ssize_t* first_w = r + 2 * KW
    cdef floating* yrow
    cdef int* arow
    if (KH == 2 and KW == 2 and SH == 2 and SW == 2 and PH == 0 and PW == 0 and DH == 1
            and DW == 1 and 2 * OH <= H and 2 * OW <= W and N * C > 0):
        if floating is float:
            fastcnn_pool22_f32(&x[0, 0, 0, 0], &y[0, 0, 0, 0], &argmax[0, 0, 0, 0],
                               N * C, H, W, OH, OW, relu)
        else:
            fastcnn_pool22_f64(&x[0, 0, 0, 0], &y[0, 0, 0, 0], &argmax[0, 0, 0, 0],
                               N * C, H, W, OH, OW, relu)
        return
    for item in range(N * C):
        n = item // C
        c = item % C
        for oh in range(OH):
            h0 = oh * SH - PH
            first_h = h0 if h0 >= 0 else h0 + DH * ((DH - 1 - h0) // DH)
            yrow = &y[n, c, oh, 0]
            arow = &argmax[n, c, oh, 0]
            for ow in range(OW):
                yrow[ow] = neg_inf
                arow[ow] = <int>(first_h * W + first_w[ow])
            for kh in range(KH):
                ih = h0 + kh * DH
                if ih < 0 or ih >= H:
                    continue
                for kw in range(KW):
                    lo = r[kw]
                    if lo < r[KW + kw]:
                        iw = lo * SW - PW + kw * DW
                        _max_tap(yrow + lo, arow + lo, &x[n, c, ih, iw], SW,
                                 r[KW + kw] - lo, <int>(ih * W + iw), <int>SW)
            if relu:
                # the unfused ReLU's mask is 0 at a NaN too: a NaN stays
                # (with its argmax, marked); any other maximum <= 0 becomes
                # +0, marked at the window's first real element
                for ow in range(OW):
                    if not (yrow[ow] > 0):
                        if yrow[ow] == yrow[ow]:
                            yrow[ow] = 0
                            arow[ow] = <int>(-(first_h * W + first_w[ow]) - 1)
                        else:
                            arow[ow] = -arow[ow] - 1


def max_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                int[:, :, :, ::1] argmax,
                Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW):
    """y[n, c, oh, ow] = max over the window's taps (DH, DW apart); argmax
    records where it was.

    The row of y itself holds the running maxima. It starts at -inf with
    argmax at the window's first real element, which is right even when
    every element is -inf."""
    cdef Py_ssize_t* r = _ranges(KW, SW, PW, DW, x.shape[3], y.shape[3])
    try:
        with nogil:
            _max_planes(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW, r, 0)
    finally:
        free(r)


def max_relu_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                     int[:, :, :, ::1] argmax,
                     Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                     Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW):
    """y = relu(max_forward(x)), which is max_forward(relu(x)) (relu is
    monotone, and keeps a NaN), argmax as max_forward's, except that a
    window the ReLU's mask stops is marked a -> -a - 1: one whose maximum is
    <= 0 gives +0 with a the window's first real element (what the unfused
    max pooling of the ReLU'd zeros picks), one with a NaN keeps the NaN
    and its place (max_relu_backward)."""
    cdef Py_ssize_t* r = _ranges(KW, SW, PW, DW, x.shape[3], y.shape[3])
    try:
        with nogil:
            _max_planes(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW, r, 1)
    finally:
        free(r)


def max_backward(const floating[:, :, :, ::1] dy, const int[:, :, :, ::1] argmax,
                 floating[:, :, :, ::1] dx):
    """dx[n, c].flat[argmax[n, c, oh, ow]] += dy[n, c, oh, ow] (+= because
    overlapping windows can pick the same element)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t item, n, c, i
    cdef floating* plane
    cdef const floating* g
    cdef const int* arg
    with nogil:
        for item in range(N * C):
            n = item // C
            c = item % C
            plane = &dx[n, c, 0, 0]
            g = &dy[n, c, 0, 0]
            arg = &argmax[n, c, 0, 0]
            _zero(plane, H * W)
            for i in range(OH * OW):
                plane[arg[i]] += g[i]


def max_relu_backward(const floating[:, :, :, ::1] dy, const int[:, :, :, ::1] argmax,
                      floating[:, :, :, ::1] dx):
    """The backward of max_relu_forward into dx, the input's gradient: as
    max_backward where argmax >= 0; a killed window (argmax a < 0) adds
    dy * 0 at -a - 1, which is what the unfused ReLU's mask makes of it
    (0, or NaN for an inf or NaN in dy)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t item, n, c, i
    cdef int a
    cdef floating v
    cdef floating* plane
    cdef const floating* g
    cdef const int* arg
    with nogil:
        for item in range(N * C):
            n = item // C
            c = item % C
            plane = &dx[n, c, 0, 0]
            g = &dy[n, c, 0, 0]
            arg = &argmax[n, c, 0, 0]
            _zero(plane, H * W)
            for i in range(OH * OW):
                a = arg[i]
                v = g[i]
                if a >= 0:
                    plane[a] += v
                else:
                    plane[-a - 1] += v * 0


cdef inline Py_ssize_t _divisor(Py_ssize_t o, Py_ssize_t S, Py_ssize_t P, Py_ssize_t K,
                                Py_ssize_t I, bint count_include_pad) noexcept nogil:
    """PyTorch's share of window o in the divisor along one dimension: the
    window clipped to the padded input [-P, I + P) (count_include_pad), or
    to the input [0, I)."""
    cdef Py_ssize_t start = o * S - P
    cdef Py_ssize_t end = min(start + K, I + P)
    if not count_include_pad:
        start, end = max(start, 0), min(end, I)
    return end - start


cdef floating* _inverse_divisors(floating kind, Py_ssize_t OH, Py_ssize_t OW,
                                 Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                                 Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t H, Py_ssize_t W,
                                 bint count_include_pad, Py_ssize_t divisor_override) except NULL:
    """(OH, OW) table of 1 / divisor at each output: divisor_override (0:
    none) or PyTorch's window size (``_divisor``); then, after it, room for
    one row of OW. One table per call: the divisor depends only on the
    window's place. The caller frees it."""
    cdef floating* inv = <floating*>malloc((OH + 1) * OW * sizeof(floating))
    cdef Py_ssize_t oh, ow, dh
    if inv == NULL:
        raise MemoryError()
    for oh in range(OH):
        dh = _divisor(oh, SH, PH, KH, H, count_include_pad)
        for ow in range(OW):
            inv[oh * OW + ow] = 1.0 / <double>(
                divisor_override if divisor_override != 0
                else dh * _divisor(ow, SW, PW, KW, W, count_include_pad))
    return inv


def avg_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                Py_ssize_t PH, Py_ssize_t PW, bint count_include_pad,
                Py_ssize_t divisor_override):
    """y[n, c, oh, ow] = (sum of the window's real elements) / divisor."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t item, n, c, oh, ow, kh, kw, ih, lo
    cdef floating* yrow
    cdef const floating* inv
    cdef Py_ssize_t* r = _ranges(KW, SW, PW, 1, W, OW)
    cdef floating* table = NULL
    try:
        table = _inverse_divisors(<floating>0, OH, OW, KH, KW, SH, SW, PH, PW, H, W,
                                  count_include_pad, divisor_override)
        with nogil:
            for item in range(N * C):
                n = item // C
                c = item % C
                for oh in range(OH):
                    yrow = &y[n, c, oh, 0]
                    _zero(yrow, OW)
                    for kh in range(KH):
                        ih = oh * SH - PH + kh
                        if ih < 0 or ih >= H:
                            continue
                        for kw in range(KW):
                            lo = r[kw]
                            if lo < r[KW + kw]:
                                _axpy(yrow + lo, 1, &x[n, c, ih, lo * SW - PW + kw],
                                      SW, 1, r[KW + kw] - lo)
                    inv = table + oh * OW
                    for ow in range(OW):
                        yrow[ow] = yrow[ow] * inv[ow]
    finally:
        free(r)
        free(table)


def avg_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                 Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                 Py_ssize_t PH, Py_ssize_t PW, bint count_include_pad,
                 Py_ssize_t divisor_override):
    """dx[n, c, window] += dy[n, c, oh, ow] / divisor over every window."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t item, n, c, oh, ow, kh, kw, ih, lo
    cdef const floating* inv
    cdef const floating* grow
    cdef floating* g
    cdef Py_ssize_t* r = _ranges(KW, SW, PW, 1, W, OW)
    cdef floating* table = NULL
    try:
        table = _inverse_divisors(<floating>0, OH, OW, KH, KW, SH, SW, PH, PW, H, W,
                                  count_include_pad, divisor_override)
        g = table + OH * OW                 # one row of dy / divisor
        with nogil:
            for item in range(N * C):
                n = item // C
                c = item % C
                _zero(&dx[n, c, 0, 0], H * W)
                for oh in range(OH):
                    inv = table + oh * OW
                    grow = &dy[n, c, oh, 0]
                    for ow in range(OW):
                        g[ow] = grow[ow] * inv[ow]
                    for kh in range(KH):
                        ih = oh * SH - PH + kh
                        if ih < 0 or ih >= H:
                            continue
                        for kw in range(KW):
                            lo = r[kw]
                            if lo < r[KW + kw]:
                                _axpy(&dx[n, c, ih, lo * SW - PW + kw], SW,
                                      g + lo, 1, 1, r[KW + kw] - lo)
    finally:
        free(r)
        free(table)


# ---------------------------------------------------------------- adaptive pooling
# Output row oh pools input rows [oh*H // OH, ceil((oh+1)*H / OH)), columns
# likewise (PyTorch's bounds); windows overlap when the sizes do not divide.
# The windowed loops are separable: for each output row, one vectorisable
# pass down its input rows reduces them to one row (sums, or per column the
# maximum and its row), then each window reduces its stretch of that row.
# Sums accumulate in double, as the NumPy reference's pairwise sums are
# about that accurate. The global_* loops are the output 1x1 case: one
# contiguous pass over each plane (global average pooling's forward is not
# here: backends/_pooling runs it as one gemv for every backend).

cdef inline Py_ssize_t _start(Py_ssize_t o, Py_ssize_t I, Py_ssize_t O) noexcept nogil:
    return (o * I) // O


cdef inline Py_ssize_t _end(Py_ssize_t o, Py_ssize_t I, Py_ssize_t O) noexcept nogil:
    return ((o + 1) * I + O - 1) // O


def adaptive_avg_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y):
    """y[n, c, oh, ow] = mean of x over window (oh, ow)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t item, n, c, oh, ow, ih, iw, h0, h1, w0, w1
    cdef const floating* xrow
    cdef double s
    cdef double* acc = <double*>malloc(W * sizeof(double))     # column sums
    if acc == NULL:
        raise MemoryError()
    try:
        with nogil:
            for item in range(N * C):
                n = item // C
                c = item % C
                for oh in range(OH):
                    h0, h1 = _start(oh, H, OH), _end(oh, H, OH)
                    xrow = &x[n, c, h0, 0]
                    for iw in range(W):
                        acc[iw] = xrow[iw]
                    for ih in range(h0 + 1, h1):
                        xrow = &x[n, c, ih, 0]
                        for iw in range(W):
                            acc[iw] = acc[iw] + xrow[iw]
                    for ow in range(OW):
                        w0, w1 = _start(ow, W, OW), _end(ow, W, OW)
                        s = 0
                        for iw in range(w0, w1):
                            s = s + acc[iw]
                        y[n, c, oh, ow] = <floating>(s / ((h1 - h0) * (w1 - w0)))
    finally:
        free(acc)


def adaptive_avg_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx):
    """dx[n, c, window (oh, ow)] += dy[n, c, oh, ow] / (window size): per
    output row, the row of what its windows add to each column, added to
    each of its input rows."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t item, n, c, oh, ow, ih, iw, h0, h1, w0, w1
    cdef floating g
    cdef floating* dxrow
    cdef floating* add = <floating*>malloc(W * sizeof(floating))
    if add == NULL:
        raise MemoryError()
    try:
        with nogil:
            for item in range(N * C):
                n = item // C
                c = item % C
                _zero(&dx[n, c, 0, 0], H * W)
                for oh in range(OH):
                    h0, h1 = _start(oh, H, OH), _end(oh, H, OH)
                    _zero(add, W)
                    for ow in range(OW):
                        w0, w1 = _start(ow, W, OW), _end(ow, W, OW)
                        g = dy[n, c, oh, ow] / ((h1 - h0) * (w1 - w0))
                        for iw in range(w0, w1):
                            add[iw] += g
                    for ih in range(h0, h1):
                        dxrow = &dx[n, c, ih, 0]
                        for iw in range(W):
                            dxrow[iw] += add[iw]
    finally:
        free(add)


def adaptive_max_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                         int[:, :, :, ::1] argmax):
    """y = max over window (oh, ow), argmax its flat offset ih*W + iw in the
    plane; ties and NaN as max_forward (first maximum, first NaN, in
    row-major order). Per output row, each column's winner over the window's
    rows (its maximum, or first NaN, and the first row holding it); then
    each window takes the winner of its columns, a tie going to the smaller
    row, then the smaller column."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t item, n, c, oh, ow, ih, iw, h0, h1, w0, w1, brow, bcol
    cdef const floating* xrow
    cdef floating v, best
    cdef int r
    cdef bint take, same
    cdef floating* colmax = <floating*>malloc(W * sizeof(floating))
    cdef int* colrow = <int*>malloc(W * sizeof(int))
    try:
        if colmax == NULL or colrow == NULL:
            raise MemoryError()
        with nogil:
            for item in range(N * C):
                n = item // C
                c = item % C
                for oh in range(OH):
                    h0, h1 = _start(oh, H, OH), _end(oh, H, OH)
                    xrow = &x[n, c, h0, 0]
                    for iw in range(W):
                        colmax[iw] = xrow[iw]
                        colrow[iw] = <int>h0
                    for ih in range(h0 + 1, h1):
                        xrow = &x[n, c, ih, 0]
                        for iw in range(W):
                            v = xrow[iw]
                            best = colmax[iw]
                            take = (v > best) | ((v != v) & (best == best))
                            colmax[iw] = v if take else best
                            colrow[iw] = <int>ih if take else colrow[iw]
                    for ow in range(OW):
                        w0, w1 = _start(ow, W, OW), _end(ow, W, OW)
                        best, brow, bcol = colmax[w0], colrow[w0], w0
                        for iw in range(w0 + 1, w1):
                            v, r = colmax[iw], colrow[iw]
                            same = (v == best) | ((v != v) & (best != best))
                            if (v > best) or (v != v and best == best) or (same and r < brow):
                                best, brow, bcol = v, r, iw
                        y[n, c, oh, ow] = best
                        argmax[n, c, oh, ow] = <int>(brow * W + bcol)
    finally:
        free(colmax)
        free(colrow)


cdef extern from *:
    """
    #include <string.h>
    /* vector extensions: plain C on every GCC or Clang target, no intrinsics */
    #if defined(__GNUC__)
    typedef float fastcnn_v4sf __attribute__((vector_size(16)));
    #endif
    /* fastcnn: the offset of a float plane's first maximum, in one pass of
       eight running maxima, each with the offset where it first appeared
       (selects, strict >), then the smallest offset among the lanes holding
       the overall maximum; -1 where a NaN is there (the caller looks element
       by element) or without vector extensions. Selects throughout, no
       branch on the data: which lane holds the maximum is random, and a
       mispredicted branch per lane cost more than the pass over a short
       plane. */
    static inline Py_ssize_t fastcnn_argmax_f32(const float* a, Py_ssize_t L) {
    #if defined(__GNUC__)
        typedef int fastcnn_v4si __attribute__((vector_size(16)));
        fastcnn_v4sf m0, m1, t0, t1, bv;
        fastcnn_v4si k0, k1, i0 = {0, 1, 2, 3}, i1 = {4, 5, 6, 7}, c0, c1, nan;
        const fastcnn_v4si eight = {8, 8, 8, 8};
        const fastcnn_v4si none = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
        Py_ssize_t i, where;
        float best, v;
        int gt;
        if (L < 8 || L > 0x7fffffff) return -1;
        memcpy(&m0, a, 16); memcpy(&m1, a + 4, 16);
        nan = (m0 != m0) | (m1 != m1);
        c0 = i0; c1 = i1;
        for (i = 8; i + 8 <= L; i += 8) {
            memcpy(&t0, a + i, 16); memcpy(&t1, a + i + 4, 16);
            c0 += eight; c1 += eight;
            k0 = t0 > m0; k1 = t1 > m1;
            m0 = (fastcnn_v4sf)(((fastcnn_v4si)t0 & k0) | ((fastcnn_v4si)m0 & ~k0));
            m1 = (fastcnn_v4sf)(((fastcnn_v4si)t1 & k1) | ((fastcnn_v4si)m1 & ~k1));
            i0 = (c0 & k0) | (i0 & ~k0);
            i1 = (c1 & k1) | (i1 & ~k1);
            nan |= (t0 != t0) | (t1 != t1);
        }
        if (nan[0] | nan[1] | nan[2] | nan[3]) return -1;
        /* the lanes' maximum, then the smallest offset holding it */
        k0 = m1 > m0;
        t0 = (fastcnn_v4sf)(((fastcnn_v4si)m1 & k0) | ((fastcnn_v4si)m0 & ~k0));
        best = t0[0];
        best = t0[1] > best ? t0[1] : best;
        best = t0[2] > best ? t0[2] : best;
        best = t0[3] > best ? t0[3] : best;
        bv = (fastcnn_v4sf){best, best, best, best};
        k0 = m0 == bv; k1 = m1 == bv;
        c0 = (i0 & k0) | (none & ~k0);
        c1 = (i1 & k1) | (none & ~k1);
        k0 = c1 < c0;
        c0 = (c1 & k0) | (c0 & ~k0);
        where = c0[0];
        where = c0[1] < where ? c0[1] : where;
        where = c0[2] < where ? c0[2] : where;
        where = c0[3] < where ? c0[3] : where;
        for (; i < L; i++) {
            v = a[i];
            if (v != v) return -1;
            gt = v > best;
            where = gt ? i : where;
            best = gt ? v : best;
        }
        return where;
    #else
        return -1;
    #endif
    }
    """
    Py_ssize_t fastcnn_argmax_f32(const float* a, Py_ssize_t L) nogil


def global_avg_forward(const floating[:, ::1] x, floating[::1] y):
    """y[p] = mean of plane x[p] (x (N*C, H*W)): the sum in the input's
    precision, several planes at a time in vectors (the C above), then
    divided by H*W, so a plane of equal values whose sum is exact has
    exactly that mean."""
    cdef Py_ssize_t P = x.shape[0], L = x.shape[1]
    if P == 0:
        return
    with nogil:
        if floating is float:
            fastcnn_global_avg_f32(&x[0, 0], &y[0], P, L)
        else:
            fastcnn_global_avg_f64(&x[0, 0], &y[0], P, L)


def global_avg_backward(const floating[::1] dy, floating[:, ::1] dx):
    """dx[p, :] = dy[p] / (H*W)."""
    cdef Py_ssize_t P = dx.shape[0], L = dx.shape[1], p, i
    cdef floating g
    cdef floating* row
    with nogil:
        for p in range(P):
            g = dy[p] / L
            row = &dx[p, 0]
            for i in range(L):
                row[i] = g


cdef inline Py_ssize_t _first_max(const floating* a, Py_ssize_t L) noexcept nogil:
    """The offset of the first maximum of a[0:L], or of its first NaN. A
    branch per element, unlike _max_tap's selects: over a whole plane a new
    maximum is rare (about ln(L) times), so the branch is well predicted."""
    cdef Py_ssize_t i, where = 0
    cdef floating v, best = a[0]
    for i in range(1, L):
        v = a[i]
        if v > best or (v != v and best == best):
            best = v
            where = i
    return where


cdef inline Py_ssize_t _first_equal(const floating* a, Py_ssize_t L,
                                    floating best) noexcept nogil:
    """The offset of the first element equal to best (one is), eight at a
    time."""
    cdef Py_ssize_t i = 0
    while i + 8 <= L:
        if ((a[i] == best) | (a[i + 1] == best) | (a[i + 2] == best) | (a[i + 3] == best)
                | (a[i + 4] == best) | (a[i + 5] == best) | (a[i + 6] == best)
                | (a[i + 7] == best)):
            break
        i += 8
    while a[i] != best:
        i += 1
    return i


cdef inline Py_ssize_t _plane_argmax(const floating* a, Py_ssize_t L) noexcept nogil:
    """_first_max in two passes without a branch per element: eight
    independent running maxima (NaN-blind selects) and sums, then the first
    element equal to the maximum. A NaN anywhere makes the sum NaN (so do
    +inf and -inf together): then _first_max decides."""
    cdef floating m0, m1, m2, m3, m4, m5, m6, m7, s0, s1, s2, s3, s4, s5, s6, s7
    cdef floating v, best, total
    cdef Py_ssize_t i, blocks = L // 8
    if floating is float:
        i = fastcnn_argmax_f32(a, L)
        return i if i >= 0 else _first_max(a, L)
    if blocks < 2:
        return _first_max(a, L)
    m0 = s0 = a[0]; m1 = s1 = a[1]; m2 = s2 = a[2]; m3 = s3 = a[3]
    m4 = s4 = a[4]; m5 = s5 = a[5]; m6 = s6 = a[6]; m7 = s7 = a[7]
    for i in range(8, blocks * 8, 8):
        v = a[i]; m0 = v if v > m0 else m0; s0 = s0 + v
        v = a[i + 1]; m1 = v if v > m1 else m1; s1 = s1 + v
        v = a[i + 2]; m2 = v if v > m2 else m2; s2 = s2 + v
        v = a[i + 3]; m3 = v if v > m3 else m3; s3 = s3 + v
        v = a[i + 4]; m4 = v if v > m4 else m4; s4 = s4 + v
        v = a[i + 5]; m5 = v if v > m5 else m5; s5 = s5 + v
        v = a[i + 6]; m6 = v if v > m6 else m6; s6 = s6 + v
        v = a[i + 7]; m7 = v if v > m7 else m7; s7 = s7 + v
    m0 = m4 if m4 > m0 else m0
    m1 = m5 if m5 > m1 else m1
    m2 = m6 if m6 > m2 else m2
    m3 = m7 if m7 > m3 else m3
    m0 = m2 if m2 > m0 else m0
    m1 = m3 if m3 > m1 else m1
    best = m1 if m1 > m0 else m0
    total = ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7))
    for i in range(blocks * 8, L):
        v = a[i]
        best = v if v > best else best
        total = total + v
    if total != total:
        return _first_max(a, L)
    return _first_equal(a, L, best)


def global_max_forward(const floating[:, ::1] x, floating[::1] y, int[::1] argmax):
    """y[p] = max of plane x[p], argmax its offset; ties and NaN as max_forward."""
    cdef Py_ssize_t P = x.shape[0], L = x.shape[1], p, where
    with nogil:
        for p in range(P):
            where = _plane_argmax(&x[p, 0], L)
            y[p] = x[p, where]
            argmax[p] = <int>where


def simd(level=None):
    """The vector code of the plain 2x2 max pooling: 2 AVX-512, 1 AVX2, 0
    SSE2 (x86-64; elsewhere always 0, the scalar loop). ``simd(k)`` makes
    it use level k (at most what the CPU has) from now on; for tests that
    cover each."""
    return fastcnn_p22_simd(-1 if level is None else int(level))
