"""Direct 3x3 stride-1 convolution loops, register-blocked: the forward, and
with it dx (the same loops over dy), and dw.

For channel groups too small for a matrix product to run at speed (grouped
convolutions of 16 channels a group, dilated 32-channel layers, the MNIST
layers) and too large for the depthwise loops. Per image and group:

    y[f, oh, ow] = b[f] + sum_{c, kh, kw} xp[c, oh + kh*DH, ow + kw*DW] * w[f, c, kh, kw]

with xp the zero-padded planes (x at row PT, column PL of a (HP, WP)
plane). The inner step loads RB = 2 rows of L outputs' inputs (one vector
each) for one (c, kh, kw) and adds them, times FS broadcast weights, into
RB*FS vector accumulators that stay in registers over all Cg*9 steps:
RB + FS loads for RB*FS multiply-adds, where a column-matrix product reads
its columns from memory for every 16 or 32 rows of weights. The weights
come packed ``wp`` (G, ceil(Fg/FB), Cg, 9, FB): block fb of group g holds
filters g*Fg + fb*FB + j, zero past Fg (``pack`` in the driver); the loops
take FS of a block's FB filters at a time.

``forward_pool22`` (inference): the conv's ReLU and 2x2 stride-2 max
pooling where the two rows of a block are in registers - the larger of the
rows, then of each pair of lanes, a NaN over a number - so the conv output
never reaches memory (at batch 1000 the MNIST conv1's would be 100 MB,
written and read again by the pooling). No argmax: a backward would need
one, and the driver takes this only under fastcnn.no_grad().

dx is this forward on dy: dx = conv(dy zero-padded by (2DH - PT, 2DW - PL),
w flipped and with F and C/G swapped), so the same loops and the same
padded-plane layout serve it. dw[f, c, kh, kw] += the dot product of dy's
plane f with xp's plane c shifted by (kh*DH, kw*DW): per (c, kh), FBW
filters' three kw sums in 3*FBW vector accumulators over the rows of a
block of images (whole images while a lane sums at most 64 vectors, else
rows of one image), dy read from its padded planes (the ones dx was
computed from), the lanes past OW masked to zero in x (0 * inf would be
NaN). Every (filters, c, kh) runs over one block before the next block,
so the block's planes are read from cache, not memory (over the whole
call per (filters, c, kh), the planes of a chunk of the batch were read
from memory FBW*Cg*3 times over); each block's float sums are widened to
double and summed in a tree of vector halves into dw.

Layouts: ``forward`` writes each image's padded planes into ``xp`` (n, C,
HP, WP) before it reads them, and the driver keeps xp for the backward
(its copy of x: the caller may change x after the forward). Every read of
the loops stays inside the planes that ``padded_shape`` sizes: rows up to
OH + RB - 2 + 2*DH (a last row block reads past OH), columns up to a whole
number of L-lane vectors past OW plus 2*DW, and dy's planes wide enough
for whole vectors at its padding offset.

C loops with GCC's vector extensions, compiled for AVX-512 (L = 16 floats,
FS = 8), AVX2 + FMA (L = 8, FS = 4) and the SSE2 baseline (L = 4, FS = 4),
picked at the first call from what the CPU has (``simd()`` says which, and
a test runs each the CPU has); ``padded_shape`` sizes the planes for the
widest. Multiply-adds may fuse (FMA): results differ from the reference by
rounding only.

What this is: loops over memoryviews, fused float32/float64, GIL released,
single-threaded over the images it is given (the driver,
``fastcnn.backends._direct``, runs chunks of the batch concurrently).
What this is not: no validation (``fastcnn.ops``), no strides, no other
filter sizes, no choice of path (``backends._gemm_conv``).

Shapes: x (n, C, H, W), y (n, F, OH, OW), G groups, Cg = C/G, Fg = F/G.
"""
from cython cimport floating


cdef extern from *:
    """
    /* fastcnn direct 3x3 convolution (see the module docstring). */
    #include <string.h>
    #define FASTCNN_DC_FB 8     /* filters per weight block (the packing) */
    #define FASTCNN_DC_LMAX 16  /* the widest vector, in elements, for the plane sizes */
    #define FASTCNN_DC_RBMAX 2  /* the most rows a forward block reads at once */
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #  define FASTCNN_DC_X86 1
    #endif
    #if defined(__GNUC__)
    #  define FASTCNN_DC_LD(V, p) ({ V v_; memcpy(&v_, (p), sizeof v_); v_; })
    #  define FASTCNN_DC_ST(p, v) do { __typeof__(v) s_ = (v); memcpy((p), &s_, sizeof s_); } while (0)
    #  define FASTCNN_DC_SPLAT(V, s) ((V){0} + (s))
    /* np.maximum(s, 0): NaN stays, the rest of <= 0 -> +0 */
    #  define FASTCNN_DC_RELU(V, VI, s) ((V)((VI)(s) & ~(VI)((s) <= FASTCNN_DC_SPLAT(V, 0))))
    #  define FASTCNN_DC_KEEP(V, VI, s, m) ((V)((VI)(s) & (m)))
    #  define FASTCNN_DC_MASK(m, L, k) do { Py_ssize_t i_; for (i_ = 0; i_ < (L); i_++) (m)[i_] = i_ < (k) ? -1 : 0; } while (0)
    /* each pair of lanes swapped (the pooled forward's horizontal step) */
    #  if defined(__clang__) || __GNUC__ >= 12
    #    define FASTCNN_DC_SHUF(v, VI, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
    #  else
    #    define FASTCNN_DC_SHUF(v, VI, ...) __builtin_shuffle(v, (VI){__VA_ARGS__})
    #  endif
    #  define FASTCNN_DC_SWAP16(v) FASTCNN_DC_SHUF(v, fastcnn_dc_i16, 1, 0, 3, 2, 5, 4, 7, 6, \\
                                                 9, 8, 11, 10, 13, 12, 15, 14)
    #  define FASTCNN_DC_SWAP8F(v) FASTCNN_DC_SHUF(v, fastcnn_dc_i8, 1, 0, 3, 2, 5, 4, 7, 6)
    #  define FASTCNN_DC_SWAP8D(v) FASTCNN_DC_SHUF(v, fastcnn_dc_l8, 1, 0, 3, 2, 5, 4, 7, 6)
    #  define FASTCNN_DC_SWAP4F(v) FASTCNN_DC_SHUF(v, fastcnn_dc_i4, 1, 0, 3, 2)
    #  define FASTCNN_DC_SWAP4D(v) FASTCNN_DC_SHUF(v, fastcnn_dc_l4, 1, 0, 3, 2)
    #  define FASTCNN_DC_SWAP2D(v) FASTCNN_DC_SHUF(v, fastcnn_dc_l2, 1, 0)
    #  if defined(__clang__) || __GNUC__ >= 12
    #    define FASTCNN_DC_EVENS(VH, o, v, ...) do {                                      \\
            VH h_ = __builtin_shufflevector(v, v, __VA_ARGS__); memcpy(o, &h_, sizeof h_);  \\
        } while (0)
    #  else
    #    define FASTCNN_DC_EVENS(VH, o, v, ...) do { Py_ssize_t k_;                       \\
            for (k_ = 0; k_ < (Py_ssize_t)(sizeof(v) / sizeof(v[0]) / 2); k_++) (o)[k_] = (v)[2 * k_]; \\
        } while (0)
    #  endif
    #  define FASTCNN_DC_EVENS16(o, v) FASTCNN_DC_EVENS(fastcnn_dc_f8, o, v, 0, 2, 4, 6, 8, 10, 12, 14)
    #  define FASTCNN_DC_EVENS8F(o, v) FASTCNN_DC_EVENS(fastcnn_dc_f4, o, v, 0, 2, 4, 6)
    #  define FASTCNN_DC_EVENS8D(o, v) FASTCNN_DC_EVENS(fastcnn_dc_d4, o, v, 0, 2, 4, 6)
    #  define FASTCNN_DC_EVENS4F(o, v) FASTCNN_DC_EVENS(fastcnn_dc_f2, o, v, 0, 2)
    #  define FASTCNN_DC_EVENS4D(o, v) FASTCNN_DC_EVENS(fastcnn_dc_d2, o, v, 0, 2)
    #  define FASTCNN_DC_EVENS2D(o, v) ((o)[0] = (v)[0])
    #  define FASTCNN_DC_POOLS 1
    #else
    #  define FASTCNN_DC_LD(V, p) (*(p))
    #  define FASTCNN_DC_ST(p, v) (*(p) = (v))
    #  define FASTCNN_DC_SPLAT(V, s) ((V)(s))
    #  define FASTCNN_DC_RELU(V, VI, s) (!((s) <= 0) ? (s) : (V)0)
    #  define FASTCNN_DC_KEEP(V, VI, s, m) ((m) ? (s) : (V)0)
    #  define FASTCNN_DC_MASK(m, L, k) ((m) = (k) > 0)
    /* one lane a vector: no pairs to pool in registers (``pools()`` says so) */
    #  define FASTCNN_DC_SWAP1(v) (v)
    #  define FASTCNN_DC_EVENS1(o, v) ((void)0)
    #  define FASTCNN_DC_POOLS 0
    #endif

    /* planes (C, HP, WP) <- x (C, H, W) at (PT, PL), zeros elsewhere */
    #define FASTCNN_DC_PAD(T, S)                                                        \\
    static void fastcnn_dc_pad_##S(const T* x, T* xp, Py_ssize_t C, Py_ssize_t H,       \\
            Py_ssize_t W, Py_ssize_t HP, Py_ssize_t WP, Py_ssize_t PT, Py_ssize_t PL) { \\
        Py_ssize_t c, ih;                                                               \\
        for (c = 0; c < C; c++) {                                                       \\
            T* p = xp + c * HP * WP;                                                    \\
            const T* s = x + c * H * W;                                                 \\
            memset(p, 0, PT * WP * sizeof(T));                                          \\
            for (ih = 0; ih < H; ih++) {                                                \\
                T* row = p + (PT + ih) * WP;                                            \\
                memset(row, 0, PL * sizeof(T));                                         \\
                memcpy(row + PL, s + ih * W, W * sizeof(T));                            \\
                memset(row + PL + W, 0, (WP - PL - W) * sizeof(T));                     \\
            }                                                                           \\
            memset(p + (PT + H) * WP, 0, (HP - PT - H) * WP * sizeof(T));               \\
        }                                                                               \\
    }
    FASTCNN_DC_PAD(float, f32)
    FASTCNN_DC_PAD(double, f64)

    #define FASTCNN_DC_KERNELS(T, S, V, VI, L, RB, FS, FBW, ATTR, HSUM, SWAP, EVENS)     \\
    /* y (Fg, OH, OW) = bias + conv(xp (Cg, HP, WP), wp (ceil(Fg/FB), Cg, 9, FB)),      \\
       FS filters of a packed block at a time. pool (RB = 2; SWAP(v): v with each pair  \\
       of lanes swapped, EVENS(o, v): o[0:L/2] = v's even lanes): y (Fg, OH/2, OW/2)   \\
       is the 2x2 stride-2 max pooling                                                 \\
       of relu(conv) instead, each block's two rows pooled in registers (the conv       \\
       output never reaches memory): no argmax, for inference. */                      \\
    static ATTR void fastcnn_dc_fwd_##S(const T* xp, Py_ssize_t HP, Py_ssize_t WP,      \\
            const T* wp, const T* bias, T* y, Py_ssize_t Fg, Py_ssize_t Cg,             \\
            Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t DH, Py_ssize_t DW, int relu,       \\
            int pool) {                                                                 \\
        enum { FB = FASTCNN_DC_FB };                                                    \\
        const Py_ssize_t RS = DH * WP, PH = OH / 2, PW = OW / 2, OHC = pool ? 2 * PH : OH; \\
        Py_ssize_t fb, s, f0, oh, ow0, c, kh, kw, r, f, nf, nr, nl;                     \\
        for (fb = 0; fb * FB < Fg; fb++)                                                \\
        for (s = 0; s < FB && fb * FB + s < Fg; s += FS) {                              \\
            const T* wb = wp + fb * Cg * 9 * FB + s;                                    \\
            f0 = fb * FB + s;                                                           \\
            nf = Fg - f0 < FS ? Fg - f0 : FS;                                           \\
            for (oh = 0; oh < OHC; oh += RB) {                                          \\
                nr = OHC - oh < RB ? OHC - oh : RB;                                     \\
                for (ow0 = 0; ow0 < OW; ow0 += L) {                                     \\
                    V acc[RB][FS];                                                      \\
                    for (f = 0; f < FS; f++) {                                          \\
                        const V bv = FASTCNN_DC_SPLAT(V, f < nf ? bias[f0 + f] : 0);    \\
                        for (r = 0; r < RB; r++) acc[r][f] = bv;                        \\
                    }                                                                   \\
                    for (c = 0; c < Cg; c++) {                                          \\
                        const T* xc = xp + (c * HP + oh) * WP + ow0;                    \\
                        const T* wc = wb + c * 9 * FB;                                  \\
                        /* kh, kw as two loops of 3, unrolled (the accumulators         \\
                           stay in registers only with every index a constant) */       \\
                        _Pragma("GCC unroll 3")                                         \\
                        for (kh = 0; kh < 3; kh++)                                      \\
                        _Pragma("GCC unroll 3")                                         \\
                        for (kw = 0; kw < 3; kw++) {                                    \\
                            const T* xt = xc + kh * RS + kw * DW;                       \\
                            const T* wt = wc + (kh * 3 + kw) * FB;                      \\
                            V xv[RB];                                                   \\
                            for (r = 0; r < RB; r++)                                    \\
                                xv[r] = FASTCNN_DC_LD(V, xt + r * WP);                  \\
                            for (f = 0; f < FS; f++) {                                  \\
                                /* scalar * vector: a broadcast; a splat as             \\
                                   0 + w costs an add (-0 + 0 is +0) */                 \\
                                const T wv = wt[f];                                     \\
                                for (r = 0; r < RB; r++) acc[r][f] += wv * xv[r];       \\
                            }                                                           \\
                        }                                                               \\
                    }                                                                   \\
                    if (pool) {                                                         \\
                        /* the window's maximum as max_relu_forward's value: the       \\
                           larger, a NaN over a number; then the ReLU (a NaN stays) */ \\
                        nl = PW - ow0 / 2 < L / 2 ? PW - ow0 / 2 : L / 2;              \\
                        for (f = 0; f < nf; f++) {                                      \\
                            V m = acc[0][f], v = acc[1][f];                             \\
                            T lanes[L];                                                 \\
                            VI t = (v > m) | ((v != v) & (m == m));                     \\
                            m = (V)(((VI)v & t) | ((VI)m & ~t));                        \\
                            v = SWAP(m);                                                \\
                            t = (v > m) | ((v != v) & (m == m));                        \\
                            m = (V)(((VI)v & t) | ((VI)m & ~t));                        \\
                            m = FASTCNN_DC_RELU(V, VI, m);                              \\
                            T* o = y + ((f0 + f) * PH + oh / 2) * PW + ow0 / 2;         \\
                            if (nl == L / 2) {                                          \\
                                EVENS(o, m);                                            \\
                            } else {                                                    \\
                                memcpy(lanes, &m, sizeof m);                            \\
                                for (r = 0; r < nl; r++) o[r] = lanes[2 * r];           \\
                            }                                                           \\
                        }                                                               \\
                        continue;                                                       \\
                    }                                                                   \\
                    nl = OW - ow0 < L ? OW - ow0 : L;                                   \\
                    for (r = 0; r < nr; r++)                                            \\
                        for (f = 0; f < nf; f++) {                                      \\
                            V v = acc[r][f];                                            \\
                            T* o = y + ((f0 + f) * OH + oh + r) * OW + ow0;             \\
                            if (relu) v = FASTCNN_DC_RELU(V, VI, v);                    \\
                            if (nl == L) FASTCNN_DC_ST(o, v);                           \\
                            else memcpy(o, &v, nl * sizeof(T));                         \\
                        }                                                               \\
                }                                                                       \\
            }                                                                           \\
        }                                                                               \\
    }                                                                                   \\
    /* dw (Fg, Cg, 9) += sum_{i<n, oh<OH, ow<OW} dq[i, f, QT+oh, QL+ow]          \\
       * xp[i, c, oh+kh*DH, ow+kw*DW], images XS and QS elements apart. The    \\
       images go in blocks (whole images while a lane sums at most 64 vectors    \\
       in float, else blocks of rows of one image), each block's planes read   \\
       by every (filters, c, kh) while they are in cache; a block's float sums \\
       are widened and summed in double into dw. */                             \\
    static ATTR void fastcnn_dc_dw_##S(const T* xp, Py_ssize_t XS, Py_ssize_t HP,       \\
            Py_ssize_t WP, const T* dq, Py_ssize_t QS, Py_ssize_t HQ, Py_ssize_t WQ,    \\
            Py_ssize_t QT, Py_ssize_t QL, double* dw, Py_ssize_t n, Py_ssize_t Fg,      \\
            Py_ssize_t Cg, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t DH, Py_ssize_t DW) {\\
        Py_ssize_t i0, ie, oh0, oe, f0, c, kh, kw, i, oh, ow0, f, nf;                   \\
        const Py_ssize_t VR = (OW + L - 1) / L;             /* vectors a row */       \\
        const Py_ssize_t IB = OH * VR <= 64 ? 64 / (OH * VR) : 1;  /* images a block */ \\
        const Py_ssize_t RBK = IB > 1 ? OH : 64 / VR > 1 ? 64 / VR : 1;  /* rows */   \\
        Py_ssize_t plane[FBW];                                                          \\
        VI mask;                                                                        \\
        FASTCNN_DC_MASK(mask, L, OW % L);                                               \\
        for (i0 = 0; i0 < n; i0 += IB)                                                  \\
        for (oh0 = 0; oh0 < OH; oh0 += RBK) {                                           \\
            ie = i0 + IB < n ? i0 + IB : n;                                             \\
            oe = oh0 + RBK < OH ? oh0 + RBK : OH;                                       \\
            for (f0 = 0; f0 < Fg; f0 += FBW) {                                          \\
                nf = Fg - f0 < FBW ? Fg - f0 : FBW;                                     \\
                /* filters past Fg read the last one's plane, and are not stored */     \\
                for (f = 0; f < FBW; f++)                                               \\
                    plane[f] = (f0 + (f < nf ? f : nf - 1)) * HQ * WQ + (QT + oh0) * WQ + QL; \\
                for (c = 0; c < Cg; c++)                                                \\
                for (kh = 0; kh < 3; kh++) {                                            \\
                    V acc[FBW][3];                                                      \\
                    for (f = 0; f < FBW; f++)                                           \\
                        for (kw = 0; kw < 3; kw++) acc[f][kw] = FASTCNN_DC_SPLAT(V, 0); \\
                    for (i = i0; i < ie; i++) {                                         \\
                        /* pointers stepped row by row */                               \\
                        const T* xr = xp + i * XS + (c * HP + oh0 + kh * DH) * WP;      \\
                        const T* dp[FBW];                                               \\
                        for (f = 0; f < FBW; f++) dp[f] = dq + i * QS + plane[f];       \\
                        for (oh = oh0; oh < oe; oh++) {                                 \\
                            for (ow0 = 0; ow0 < OW; ow0 += L) {                         \\
                                V d[FBW], x0, x1, x2;                                   \\
                                for (f = 0; f < FBW; f++)                               \\
                                    d[f] = FASTCNN_DC_LD(V, dp[f] + ow0);               \\
                                x0 = FASTCNN_DC_LD(V, xr + ow0);                        \\
                                x1 = FASTCNN_DC_LD(V, xr + ow0 + DW);                   \\
                                x2 = FASTCNN_DC_LD(V, xr + ow0 + 2 * DW);               \\
                                if (ow0 + L > OW) {                                     \\
                                    x0 = FASTCNN_DC_KEEP(V, VI, x0, mask);              \\
                                    x1 = FASTCNN_DC_KEEP(V, VI, x1, mask);              \\
                                    x2 = FASTCNN_DC_KEEP(V, VI, x2, mask);              \\
                                }                                                       \\
                                for (f = 0; f < FBW; f++) {                             \\
                                    acc[f][0] += d[f] * x0;                             \\
                                    acc[f][1] += d[f] * x1;                             \\
                                    acc[f][2] += d[f] * x2;                             \\
                                }                                                       \\
                            }                                                           \\
                            xr += WP;                                                   \\
                            for (f = 0; f < FBW; f++) dp[f] += WQ;                      \\
                        }                                                               \\
                    }                                                                   \\
                    for (f = 0; f < nf; f++) {                                          \\
                        double* o = dw + ((f0 + f) * Cg + c) * 9 + kh * 3;              \\
                        for (kw = 0; kw < 3; kw++) {                                    \\
                            const V a = acc[f][kw];                                     \\
                            o[kw] += HSUM(a);                                           \\
                        }                                                               \\
                    }                                                                   \\
                }                                                                       \\
            }                                                                           \\
        }                                                                               \\
    }

    /* a vector's lanes summed in double: the float halves widened and added,
       then halves added down to one lane (statement expressions on the
       vector types; the halves by memcpy, which GCC turns into extracts) */
    #define FASTCNN_DC_HALVES(H, v, lo, hi) H lo, hi; memcpy(&lo, &(v), sizeof lo);    \\
        memcpy(&hi, (const char*)&(v) + sizeof lo, sizeof hi)
    #define FASTCNN_DC_HSUM_D2(v) ((v)[0] + (v)[1])
    #define FASTCNN_DC_HSUM_F4(v) ({ FASTCNN_DC_HALVES(fastcnn_dc_f2, v, a4_, b4_);   \\
        fastcnn_dc_d2 s4_ = __builtin_convertvector(a4_, fastcnn_dc_d2)                \\
                          + __builtin_convertvector(b4_, fastcnn_dc_d2);               \\
        FASTCNN_DC_HSUM_D2(s4_); })
    #if defined(FASTCNN_DC_X86)
    typedef float fastcnn_dc_f16 __attribute__((vector_size(64)));
    typedef int fastcnn_dc_i16 __attribute__((vector_size(64)));
    typedef double fastcnn_dc_d8 __attribute__((vector_size(64)));
    typedef long long fastcnn_dc_l8 __attribute__((vector_size(64)));
    typedef float fastcnn_dc_f8 __attribute__((vector_size(32)));
    typedef int fastcnn_dc_i8 __attribute__((vector_size(32)));
    typedef double fastcnn_dc_d4 __attribute__((vector_size(32)));
    typedef long long fastcnn_dc_l4 __attribute__((vector_size(32)));
    typedef float fastcnn_dc_f4 __attribute__((vector_size(16)));
    typedef int fastcnn_dc_i4 __attribute__((vector_size(16)));
    typedef double fastcnn_dc_d2 __attribute__((vector_size(16)));
    typedef long long fastcnn_dc_l2 __attribute__((vector_size(16)));
    typedef float fastcnn_dc_f2 __attribute__((vector_size(8)));
    #define FASTCNN_DC_HSUM_D4(v) ({ FASTCNN_DC_HALVES(fastcnn_dc_d2, v, a5_, b5_);   \\
        fastcnn_dc_d2 s5_ = a5_ + b5_; FASTCNN_DC_HSUM_D2(s5_); })
    #define FASTCNN_DC_HSUM_D8(v) ({ FASTCNN_DC_HALVES(fastcnn_dc_d4, v, a6_, b6_);   \\
        fastcnn_dc_d4 s6_ = a6_ + b6_; FASTCNN_DC_HSUM_D4(s6_); })
    #define FASTCNN_DC_HSUM_F8(v) ({ FASTCNN_DC_HALVES(fastcnn_dc_f4, v, a7_, b7_);   \\
        fastcnn_dc_d4 s7_ = __builtin_convertvector(a7_, fastcnn_dc_d4)                \\
                          + __builtin_convertvector(b7_, fastcnn_dc_d4);               \\
        FASTCNN_DC_HSUM_D4(s7_); })
    #define FASTCNN_DC_HSUM_F16(v) ({ FASTCNN_DC_HALVES(fastcnn_dc_f8, v, a8_, b8_);  \\
        fastcnn_dc_d8 s8_ = __builtin_convertvector(a8_, fastcnn_dc_d8)                \\
                          + __builtin_convertvector(b8_, fastcnn_dc_d8);               \\
        FASTCNN_DC_HSUM_D8(s8_); })
    #  define FASTCNN_DC_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))
    #  define FASTCNN_DC_AVX2 __attribute__((target("avx2,fma")))
    FASTCNN_DC_KERNELS(float, f32_avx512, fastcnn_dc_f16, fastcnn_dc_i16, 16, 2, 8, 6, FASTCNN_DC_AVX512, FASTCNN_DC_HSUM_F16, FASTCNN_DC_SWAP16, FASTCNN_DC_EVENS16)
    FASTCNN_DC_KERNELS(double, f64_avx512, fastcnn_dc_d8, fastcnn_dc_l8, 8, 2, 8, 4, FASTCNN_DC_AVX512, FASTCNN_DC_HSUM_D8, FASTCNN_DC_SWAP8D, FASTCNN_DC_EVENS8D)
    FASTCNN_DC_KERNELS(float, f32_avx2, fastcnn_dc_f8, fastcnn_dc_i8, 8, 2, 4, 3, FASTCNN_DC_AVX2, FASTCNN_DC_HSUM_F8, FASTCNN_DC_SWAP8F, FASTCNN_DC_EVENS8F)
    FASTCNN_DC_KERNELS(double, f64_avx2, fastcnn_dc_d4, fastcnn_dc_l4, 4, 2, 4, 3, FASTCNN_DC_AVX2, FASTCNN_DC_HSUM_D4, FASTCNN_DC_SWAP4D, FASTCNN_DC_EVENS4D)
    FASTCNN_DC_KERNELS(float, f32_base, fastcnn_dc_f4, fastcnn_dc_i4, 4, 2, 4, 2, , FASTCNN_DC_HSUM_F4, FASTCNN_DC_SWAP4F, FASTCNN_DC_EVENS4F)
    FASTCNN_DC_KERNELS(double, f64_base, fastcnn_dc_d2, fastcnn_dc_l2, 2, 2, 4, 2, , FASTCNN_DC_HSUM_D2, FASTCNN_DC_SWAP2D, FASTCNN_DC_EVENS2D)
    static int fastcnn_dc_level = -1;
    /* the CPU's best: 2 AVX-512, 1 AVX2 + FMA, 0 the baseline */
    static int fastcnn_dc_best(void) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
                && __builtin_cpu_supports("avx512dq"))
            return 2;
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    /* want < 0: the level in use; else use min(want, the CPU's best) from now on */
    static int fastcnn_dc_simd(int want) {
        int best;
        if (fastcnn_dc_level < 0 || want >= 0) {
            best = fastcnn_dc_best();
            fastcnn_dc_level = want < 0 || want > best ? best : want;
        }
        return fastcnn_dc_level;
    }
    #  define FASTCNN_DC_PICK(NAME, S, ARGS) do {                                   \\
        int lv_ = fastcnn_dc_level < 0 ? fastcnn_dc_simd(-1) : fastcnn_dc_level;    \\
        if (lv_ == 2) NAME##_##S##_avx512 ARGS;                                       \\
        else if (lv_ == 1) NAME##_##S##_avx2 ARGS;                                    \\
        else NAME##_##S##_base ARGS;                                                  \\
    } while (0)
    #else
    #  if defined(__GNUC__)
    typedef float fastcnn_dc_f4 __attribute__((vector_size(16)));
    typedef int fastcnn_dc_i4 __attribute__((vector_size(16)));
    typedef double fastcnn_dc_d2 __attribute__((vector_size(16)));
    typedef long long fastcnn_dc_l2 __attribute__((vector_size(16)));
    typedef float fastcnn_dc_f2 __attribute__((vector_size(8)));
    FASTCNN_DC_KERNELS(float, f32_base, fastcnn_dc_f4, fastcnn_dc_i4, 4, 2, 4, 2, , FASTCNN_DC_HSUM_F4, FASTCNN_DC_SWAP4F, FASTCNN_DC_EVENS4F)
    FASTCNN_DC_KERNELS(double, f64_base, fastcnn_dc_d2, fastcnn_dc_l2, 2, 2, 4, 2, , FASTCNN_DC_HSUM_D2, FASTCNN_DC_SWAP2D, FASTCNN_DC_EVENS2D)
    #  else
    #  define FASTCNN_DC_HSUM_S(v) ((double)(v))
    FASTCNN_DC_KERNELS(float, f32_base, float, int, 1, 2, 4, 2, , FASTCNN_DC_HSUM_S, FASTCNN_DC_SWAP1, FASTCNN_DC_EVENS1)
    FASTCNN_DC_KERNELS(double, f64_base, double, int, 1, 2, 4, 2, , FASTCNN_DC_HSUM_S, FASTCNN_DC_SWAP1, FASTCNN_DC_EVENS1)
    #  endif
    static int fastcnn_dc_simd(int want) { (void)want; return 0; }
    #  define FASTCNN_DC_PICK(NAME, S, ARGS) NAME##_##S##_base ARGS
    #endif

    static void fastcnn_dc_fwd_f32(const float* xp, Py_ssize_t HP, Py_ssize_t WP,
            const float* wp, const float* bias, float* y, Py_ssize_t Fg, Py_ssize_t Cg,
            Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t DH, Py_ssize_t DW, int relu, int pool) {
        FASTCNN_DC_PICK(fastcnn_dc_fwd, f32, (xp, HP, WP, wp, bias, y, Fg, Cg, OH, OW, DH, DW, relu,
                                              pool));
    }
    static void fastcnn_dc_fwd_f64(const double* xp, Py_ssize_t HP, Py_ssize_t WP,
            const double* wp, const double* bias, double* y, Py_ssize_t Fg, Py_ssize_t Cg,
            Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t DH, Py_ssize_t DW, int relu, int pool) {
        FASTCNN_DC_PICK(fastcnn_dc_fwd, f64, (xp, HP, WP, wp, bias, y, Fg, Cg, OH, OW, DH, DW, relu,
                                              pool));
    }
    #define FASTCNN_DC_DW_ARGS(T) (const T* xp, Py_ssize_t XS, Py_ssize_t HP,        \\
            Py_ssize_t WP, const T* dq, Py_ssize_t QS, Py_ssize_t HQ, Py_ssize_t WQ,    \\
            Py_ssize_t QT, Py_ssize_t QL, double* dw, Py_ssize_t n, Py_ssize_t Fg,      \\
            Py_ssize_t Cg, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t DH, Py_ssize_t DW)
    #define FASTCNN_DC_DW_CALL (xp, XS, HP, WP, dq, QS, HQ, WQ, QT, QL, dw, n, Fg, Cg, OH, OW, DH, DW)
    static void fastcnn_dc_dw_f32 FASTCNN_DC_DW_ARGS(float) {
        FASTCNN_DC_PICK(fastcnn_dc_dw, f32, FASTCNN_DC_DW_CALL);
    }
    static void fastcnn_dc_dw_f64 FASTCNN_DC_DW_ARGS(double) {
        FASTCNN_DC_PICK(fastcnn_dc_dw, f64, FASTCNN_DC_DW_CALL);
    }
    """
    enum: FASTCNN_DC_FB
    enum: FASTCNN_DC_LMAX
    enum: FASTCNN_DC_RBMAX
    enum: FASTCNN_DC_POOLS
    int fastcnn_dc_simd(int want) nogil
    void fastcnn_dc_pad_f32(const float* x, float* xp, Py_ssize_t C, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t HP, Py_ssize_t WP, Py_ssize_t PT,
                            Py_ssize_t PL) nogil
    void fastcnn_dc_pad_f64(const double* x, double* xp, Py_ssize_t C, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t HP, Py_ssize_t WP, Py_ssize_t PT,
                            Py_ssize_t PL) nogil
    void fastcnn_dc_fwd_f32(const float* xp, Py_ssize_t HP, Py_ssize_t WP, const float* wp,
                            const float* bias, float* y, Py_ssize_t Fg, Py_ssize_t Cg,
                            Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t DH, Py_ssize_t DW,
                            int relu, int pool) nogil
    void fastcnn_dc_fwd_f64(const double* xp, Py_ssize_t HP, Py_ssize_t WP, const double* wp,
                            const double* bias, double* y, Py_ssize_t Fg, Py_ssize_t Cg,
                            Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t DH, Py_ssize_t DW,
                            int relu, int pool) nogil
    void fastcnn_dc_dw_f32(const float* xp, Py_ssize_t XS, Py_ssize_t HP, Py_ssize_t WP,
                           const float* dq, Py_ssize_t QS, Py_ssize_t HQ, Py_ssize_t WQ,
                           Py_ssize_t QT, Py_ssize_t QL, double* dw, Py_ssize_t n,
                           Py_ssize_t Fg, Py_ssize_t Cg, Py_ssize_t OH, Py_ssize_t OW,
                           Py_ssize_t DH, Py_ssize_t DW) nogil
    void fastcnn_dc_dw_f64(const double* xp, Py_ssize_t XS, Py_ssize_t HP, Py_ssize_t WP,
                           const double* dq, Py_ssize_t QS, Py_ssize_t HQ, Py_ssize_t WQ,
                           Py_ssize_t QT, Py_ssize_t QL, double* dw, Py_ssize_t n,
                           Py_ssize_t Fg, Py_ssize_t Cg, Py_ssize_t OH, Py_ssize_t OW,
                           Py_ssize_t DH, Py_ssize_t DW) nogil


FB = FASTCNN_DC_FB


def padded_shape(Py_ssize_t H, Py_ssize_t W, Py_ssize_t PT, Py_ssize_t PL,
                 Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t DH, Py_ssize_t DW):
    """(HP, WP): the padded planes ``forward`` fills for an input (H, W) at
    (PT, PL) >= 0 and an output (OH, OW), large enough for every read of
    the forward, of dw on them (as x or as dy) and of every vector width."""
    cdef Py_ssize_t L = FASTCNN_DC_LMAX
    cdef Py_ssize_t OWL = (OW + L - 1) // L * L, WL = (W + L - 1) // L * L
    return (max(H + PT, OH + FASTCNN_DC_RBMAX - 1 + 2 * DH),
            max(W + PL, OWL + 2 * DW, PL + WL))


cdef void _forward(const floating[:, :, :, ::1] x, const floating[::1] wp,
                   const floating[::1] b, floating[:, :, :, ::1] y, floating[:, :, :, ::1] xp,
                   Py_ssize_t G, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH, Py_ssize_t DW,
                   int relu, Py_ssize_t OH, Py_ssize_t OW, int pool) noexcept nogil:
    """Both forwards: y's planes are the conv's (OH, OW), or with pool its
    pooled (OH/2, OW/2)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1], HP = xp.shape[2], WP = xp.shape[3]
    cdef Py_ssize_t Cg = C // G, Fg = F // G
    cdef Py_ssize_t block = Cg * 9 * FASTCNN_DC_FB * ((Fg + FASTCNN_DC_FB - 1) // FASTCNN_DC_FB)
    cdef Py_ssize_t n, g
    for n in range(N):
        for g in range(G):
            if floating is float:
                fastcnn_dc_pad_f32(&x[n, g * Cg, 0, 0], &xp[n, g * Cg, 0, 0],
                                   Cg, H, W, HP, WP, PT, PL)
                fastcnn_dc_fwd_f32(&xp[n, g * Cg, 0, 0], HP, WP, &wp[g * block], &b[g * Fg],
                                   &y[n, g * Fg, 0, 0], Fg, Cg, OH, OW, DH, DW, relu, pool)
            else:
                fastcnn_dc_pad_f64(&x[n, g * Cg, 0, 0], &xp[n, g * Cg, 0, 0],
                                   Cg, H, W, HP, WP, PT, PL)
                fastcnn_dc_fwd_f64(&xp[n, g * Cg, 0, 0], HP, WP, &wp[g * block], &b[g * Fg],
                                   &y[n, g * Fg, 0, 0], Fg, Cg, OH, OW, DH, DW, relu, pool)


def forward(const floating[:, :, :, ::1] x, const floating[::1] wp, const floating[::1] b,
            floating[:, :, :, ::1] y, floating[:, :, :, ::1] xp, Py_ssize_t G,
            Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH, Py_ssize_t DW, int relu):
    """y = conv(x, w) + b (max(., 0) if relu) for 3x3 filters packed in wp,
    stride 1, dilation (DH, DW), G groups; xp (n, C, HP, WP) from
    ``padded_shape`` receives x's zero-padded planes."""
    with nogil:
        _forward(x, wp, b, y, xp, G, PT, PL, DH, DW, relu, y.shape[2], y.shape[3], 0)


def pools():
    """Whether this build has ``forward_pool22`` (vectors of two lanes or
    more to pool in)."""
    return bool(FASTCNN_DC_POOLS)


def forward_pool22(const floating[:, :, :, ::1] x, const floating[::1] wp,
                   const floating[::1] b, floating[:, :, :, ::1] y, floating[:, :, :, ::1] xp,
                   Py_ssize_t G, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t DH, Py_ssize_t DW,
                   Py_ssize_t OH, Py_ssize_t OW):
    """``forward``'s convolution (output OH x OW) with the ReLU and a 2x2
    stride-2 max pooling fused in: y (n, F, OH // 2, OW // 2) holds the
    values cy_pool.max_relu_forward gives on the conv's output (a NaN in a
    window gives a NaN), which is only ever in registers. No argmax: for
    inference."""
    if not FASTCNN_DC_POOLS:
        raise NotImplementedError("this build of cy_direct cannot pool in registers")
    with nogil:
        _forward(x, wp, b, y, xp, G, PT, PL, DH, DW, 1, OH, OW, 1)


def weight_grad(const floating[:, :, :, ::1] xp, const floating[:, :, :, ::1] dq,
                double[:, :, ::1] dw, Py_ssize_t G, Py_ssize_t QT, Py_ssize_t QL,
                Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t DH, Py_ssize_t DW):
    """dw (F, C/G, 9) += the 3x3 filters' gradient over the images of xp (n,
    C, HP, WP: the forward's padded planes) and dq (n, F, HQ, WQ: dy at
    (QT, QL) of zero-padded planes, OH x OW of it; the planes the dx
    forward filled)."""
    cdef Py_ssize_t N = xp.shape[0], C = xp.shape[1], HP = xp.shape[2], WP = xp.shape[3]
    cdef Py_ssize_t F = dq.shape[1], HQ = dq.shape[2], WQ = dq.shape[3]
    cdef Py_ssize_t Cg = C // G, Fg = F // G
    cdef Py_ssize_t g
    if N == 0:
        return
    with nogil:
        for g in range(G):
            if floating is float:
                fastcnn_dc_dw_f32(&xp[0, g * Cg, 0, 0], C * HP * WP, HP, WP,
                                  &dq[0, g * Fg, 0, 0], F * HQ * WQ, HQ, WQ, QT, QL,
                                  &dw[g * Fg, 0, 0], N, Fg, Cg, OH, OW, DH, DW)
            else:
                fastcnn_dc_dw_f64(&xp[0, g * Cg, 0, 0], C * HP * WP, HP, WP,
                                  &dq[0, g * Fg, 0, 0], F * HQ * WQ, HQ, WQ, QT, QL,
                                  &dw[g * Fg, 0, 0], N, Fg, Cg, OH, OW, DH, DW)


def simd(level=None):
    """The vector code the loops run: 2 AVX-512, 1 AVX2 + FMA, 0 the
    portable baseline. ``simd(k)`` makes them use level k (at most what the
    CPU has) from now on; for tests that cover each."""
    return fastcnn_dc_simd(-1 if level is None else int(level))
