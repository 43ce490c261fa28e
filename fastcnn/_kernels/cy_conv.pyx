"""Compiled conv2d packing loops: im2col, col2im and the layout changes around BLAS.

What this is: typed loops over memoryviews, fused float32/float64, run with
the GIL released, single-threaded: the shared driver runs chunks of the
batch concurrently on fastcnn's pool (``backends/_concurrent``), and no
OpenMP team is ever started (none survives a fork).

What this is not: no validation, no allocation and no arithmetic beyond
copies and sums -- the multiply-adds are numpy's BLAS, called by the shared
driver ``fastcnn.backends._gemm_conv`` between these loops. Same-named
kernels in ``numba_conv.py`` take the same arguments in the same order, up
to the tail: there the padded layout. Direct
convolution loops were tried and dropped: even for a 1->32 channel 3x3
first layer they were 3x slower than im2col + per-image BLAS.

Shapes: x (N, C, H, W), w (F, C/G, KH, KW) for G groups, y/dy
(N, F, OH, OW), stride (SH, SW), dilation (DH, DW), top/left padding PT, PL
(bottom/right padding only shows up in OH, OW). The input is never
padded as a whole: the generic loops clip each range of output columns to
the ones whose input column lies inside the image; the column-stride-2
loops pad one plane's two column phases at a time, in a small scratch.
Column matrix: cols[g, k, n, p] with k = (c', kh, kw) within group g,
Kg = C/G*KH*KW and p = (oh, ow), P = OH*OW, so the product of group g's
rows of w with cols[g] is group g's output channels.
"""
from cython cimport floating
from libc.stdlib cimport calloc, free, malloc

from fastcnn._kernels._rows cimport _axpy, _hi, _lo, _zero


# ---------------------------------------------------------------- helpers --

cdef inline double _sum(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum in double with four independent chains (latency, not accuracy, is
    why there are four)."""
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        s0 += x[i]
        s1 += x[i + 1]
        s2 += x[i + 2]
        s3 += x[i + 3]
        i += 4
    while i < n:
        s0 += x[i]
        i += 1
    return (s0 + s1) + (s2 + s3)


# ---------------------------------------------------------------- packing --

cdef Py_ssize_t* _dilated_tap_ranges(Py_ssize_t KW, Py_ssize_t SW, Py_ssize_t DW,
                                     Py_ssize_t PL, Py_ssize_t W,
                                     Py_ssize_t OW) except NULL:
    """_tap_ranges for taps DW apart: for each tap kw, the output columns
    [lo, hi) whose input column ow*SW + kw*DW - PL lies inside the image, as
    lo[0:KW] ++ hi[0:KW]. The caller frees the result."""
    cdef Py_ssize_t* r = <Py_ssize_t*>malloc(2 * KW * sizeof(Py_ssize_t))
    cdef Py_ssize_t kw
    if r == NULL:
        raise MemoryError()
    for kw in range(KW):
        r[kw] = _lo(kw * DW - PL, SW)
        r[KW + kw] = max(r[kw], _hi(kw * DW - PL, SW, W, OW))
    return r


# ------------------------------------------------- stride-2 column phases --
# A stride-2 tap reads every other input column: ow*2 + off, off = kw - PL.
# Split into its even and odd columns, a plane makes every tap's run a
# contiguous one (phase off & 1, shifted by floor(off / 2)); with the two
# phase planes zero-padded (rows PT above, columns PLh = ceil(PL/2) to the
# left, and as many as the last window reaches below and to the right) no
# tap needs clipping either: im2col copies whole rows of OW and col2im adds
# them, in fixed-size pieces, where the generic loops gather and scatter
# element by element between clipped bounds.

cdef struct _Phases:
    Py_ssize_t HPd, WPd, PLh     # padded phase plane rows, pitch, left pad


cdef inline _Phases _phases(Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                            Py_ssize_t SH, Py_ssize_t DH, Py_ssize_t PT, Py_ssize_t PL,
                            Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """The padded phase planes' sizes: every row oh*SH + kh*DH (padded) and
    every column ow + floor((kw - PL) / 2) + PLh of a tap is inside."""
    cdef _Phases p
    cdef Py_ssize_t last = KW - 1 - PL
    p.PLh = (PL + 1) // 2
    # last - (last & 1) is even: exact division under C's and Python's rules
    p.WPd = p.PLh + max((W + 1) // 2, OW + (last - (last & 1)) // 2)
    p.HPd = PT + max(H, (OH - 1) * SH + (KH - 1) * DH - PT + 1)
    return p


cdef inline void _copy_row(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    """dst[0:n] = src[0:n] in pieces of constant size: a loop of unknown
    count would be compiled into a call of memcpy, which costs more than
    these short rows."""
    cdef Py_ssize_t i = 0, j
    while i + 8 <= n:
        for j in range(8):
            dst[i + j] = src[i + j]
        i += 8
    if i + 4 <= n:
        for j in range(4):
            dst[i + j] = src[i + j]
        i += 4
    while i < n:
        dst[i] = src[i]
        i += 1


cdef inline void _split_cols(const floating* src, floating* ev, floating* od,
                             Py_ssize_t H, Py_ssize_t W, Py_ssize_t pitch) noexcept nogil:
    """ev[ih, j] = src[ih, 2j], od[ih, j] = src[ih, 2j+1] (rows pitch apart)."""
    cdef Py_ssize_t ih, j, W2 = W // 2
    cdef const floating* s
    cdef floating* e
    cdef floating* o
    for ih in range(H):
        s = src + ih * W
        e = ev + ih * pitch
        o = od + ih * pitch
        for j in range(W2):
            e[j] = s[2 * j]
            o[j] = s[2 * j + 1]
        if W & 1:
            e[W2] = s[W - 1]


cdef inline void _merge_cols(const floating* ev, const floating* od, floating* dst,
                             Py_ssize_t H, Py_ssize_t W, Py_ssize_t pitch) noexcept nogil:
    """The inverse of _split_cols: dst[ih, 2j] = ev[ih, j], dst[ih, 2j+1] = od[ih, j]."""
    cdef Py_ssize_t ih, j, W2 = W // 2
    cdef floating* d
    cdef const floating* e
    cdef const floating* o
    for ih in range(H):
        d = dst + ih * W
        e = ev + ih * pitch
        o = od + ih * pitch
        for j in range(W2):
            d[2 * j] = e[j]
            d[2 * j + 1] = o[j]
        if W & 1:
            d[W - 1] = e[W2]


cdef inline const floating* _tap(const floating* ev, _Phases p, Py_ssize_t kh,
                                 Py_ssize_t kw, Py_ssize_t DH, Py_ssize_t PL) noexcept nogil:
    """Where tap (kh, kw)'s output row 0 starts in the padded phase planes
    (ev, then the odd plane HPd*WPd further)."""
    cdef Py_ssize_t off = kw - PL
    return (ev + (off & 1) * p.HPd * p.WPd + kh * DH * p.WPd + p.PLh
            + (off - (off & 1)) // 2)


cdef void _im2col_s2(const floating[:, :, :, ::1] x, floating[:, :, :, :] cols,
                     Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t DH,
                     Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t OH, Py_ssize_t OW,
                     floating* ev, _Phases p) noexcept nogil:
    """im2col for column stride 2 without column dilation, plane by plane
    through its padded column phases (ev: zeroed scratch of 2*HPd*WPd)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t T = KH * KW, Kg = cols.shape[1]
    cdef Py_ssize_t n, c, k, gk, kh, kw, oh
    cdef floating* inner = ev + PT * p.WPd + p.PLh
    cdef const floating* src
    for n in range(N):
        for c in range(C):
            _split_cols(&x[n, c, 0, 0], inner, inner + p.HPd * p.WPd, H, W, p.WPd)
            for kh in range(KH):
                for kw in range(KW):
                    k = c * T + kh * KW + kw
                    gk = k // Kg
                    src = _tap(ev, p, kh, kw, DH, PL)
                    for oh in range(OH):
                        _copy_row(&cols[gk, k - gk * Kg, n, oh * OW],
                                  src + oh * SH * p.WPd, OW)


cdef void _col2im_s2(const floating[:, :, :, :] dcols, floating[:, :, :, ::1] dx,
                     Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t DH,
                     Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t OH, Py_ssize_t OW,
                     floating* ev, _Phases p) noexcept nogil:
    """col2im for column stride 2 without column dilation: each plane summed
    into its padded column phases (ev: scratch of 2*HPd*WPd), whose inside
    is then interleaved into dx."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t T = KH * KW, Cg = C // dcols.shape[0]
    cdef Py_ssize_t item, n, c, gc, k0, kh, kw, oh, ow
    cdef floating* inner = ev + PT * p.WPd + p.PLh
    cdef floating* dst
    cdef const floating* src
    for item in range(N * C):
        n = item // C
        c = item % C
        gc = c // Cg
        k0 = (c - gc * Cg) * T
        _zero(ev, 2 * p.HPd * p.WPd)
        for kh in range(KH):
            for kw in range(KW):
                dst = <floating*>_tap(ev, p, kh, kw, DH, PL)
                src = &dcols[gc, k0 + kh * KW + kw, n, 0]
                for oh in range(OH):
                    for ow in range(OW):
                        dst[ow] += src[ow]
                    dst += SH * p.WPd
                    src += OW
        _merge_cols(inner, inner + p.HPd * p.WPd, &dx[n, c, 0, 0], H, W, p.WPd)


def im2col(const floating[:, :, :, ::1] x, floating[:, :, :, :] cols,
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
           Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t PT, Py_ssize_t PL,
           Py_ssize_t OH, Py_ssize_t OW):
    """cols[g, (c', kh, kw), n, (oh, ow)] = x[n, c, oh*SH + kh*DH - PT,
    ow*SW + kw*DW - PL] with c = g*Cg + c' (0 outside the image). cols is
    (G, Kg, N, P), Kg = Cg*KH*KW, with only P contiguous, so one loop fills
    both layouts the driver uses, with or without a bias row per group."""
    if cols.shape[3] > 1 and cols.strides[3] != sizeof(floating):
        raise ValueError("im2col: cols must be contiguous along its last axis")
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = C * KH * KW, T = KH * KW, Kg = cols.shape[1]
    cdef Py_ssize_t k, gk, rk, n, c, kh, kw, oh, ow, ih, lo, hi, off
    cdef floating* dst
    cdef const floating* src
    cdef Py_ssize_t* r = _dilated_tap_ranges(KW, SW, DW, PL, W, OW)
    cdef floating* ev = NULL
    cdef _Phases p
    try:
        if SW == 2 and DW == 1:
            p = _phases(H, W, KH, KW, SH, DH, PT, PL, OH, OW)
            ev = <floating*>calloc(2 * p.HPd * p.WPd, sizeof(floating))
            if ev == NULL:
                raise MemoryError()
            with nogil:
                _im2col_s2(x, cols, KH, KW, SH, DH, PT, PL, OH, OW, ev, p)
            return
        with nogil:
            for k in range(K):
                c = k // T
                kh = (k // KW) % KH
                kw = k % KW
                lo = r[kw]
                hi = r[KW + kw]
                off = kw * DW - PL
                gk = k // Kg
                rk = k - gk * Kg
                for n in range(N):
                    for oh in range(OH):
                        dst = &cols[gk, rk, n, oh * OW]
                        ih = oh * SH + kh * DH - PT
                        if ih < 0 or ih >= H:
                            _zero(dst, OW)
                            continue
                        src = &x[n, c, ih, 0]
                        _zero(dst, lo)
                        if SW == 1:
                            for ow in range(lo, hi):
                                dst[ow] = src[ow + off]
                        else:
                            for ow in range(lo, hi):
                                dst[ow] = src[ow * SW + off]
                        _zero(dst + hi, OW - hi)
    finally:
        free(ev)
        free(r)


def col2im(const floating[:, :, :, :] dcols, floating[:, :, :, ::1] dx,
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
           Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t PT, Py_ssize_t PL,
           Py_ssize_t OH, Py_ssize_t OW):
    """The adjoint of im2col (dcols (G, Kg, N, P)): dx[n, c, ih, iw] = sum
    of the dcols entries that im2col copied from there, plane by (n, c)
    plane of dx."""
    if dcols.shape[3] > 1 and dcols.strides[3] != sizeof(floating):
        raise ValueError("col2im: dcols must be contiguous along its last axis")
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t T = KH * KW, Cg = C // dcols.shape[0]
    cdef Py_ssize_t item, n, c, gc, k0, kh, kw, oh, ih, lo
    cdef Py_ssize_t* r = _dilated_tap_ranges(KW, SW, DW, PL, W, OW)
    cdef floating* ev = NULL
    cdef _Phases p
    try:
        if SW == 2 and DW == 1:
            p = _phases(H, W, KH, KW, SH, DH, PT, PL, OH, OW)
            ev = <floating*>malloc(2 * p.HPd * p.WPd * sizeof(floating))
            if ev == NULL:
                raise MemoryError()
            with nogil:
                _col2im_s2(dcols, dx, KH, KW, SH, DH, PT, PL, OH, OW, ev, p)
            return
        with nogil:
            for item in range(N * C):
                n = item // C
                c = item % C
                gc = c // Cg
                k0 = (c - gc * Cg) * T
                _zero(&dx[n, c, 0, 0], H * W)
                for kh in range(KH):
                    for oh in range(OH):
                        ih = oh * SH + kh * DH - PT
                        if ih < 0 or ih >= H:
                            continue
                        for kw in range(KW):
                            lo = r[kw]
                            if lo < r[KW + kw]:
                                _axpy(&dx[n, c, ih, lo * SW + kw * DW - PL], SW,
                                      &dcols[gc, k0 + kh * KW + kw, n, oh * OW + lo], 1,
                                      1, r[KW + kw] - lo)
    finally:
        free(ev)
        free(r)


def unpack_output(const floating[:, ::1] yF, const floating[::1] b,
                  floating[:, :, :, ::1] y):
    """y[n, f, oh, ow] = yF[f, n*P + oh*OW + ow] + b[f]: the matrix
    product's (F, N*P) layout back to NCHW, with the bias added on the way
    instead of in a second pass."""
    cdef Py_ssize_t N = y.shape[0], F = y.shape[1], P = y.shape[2] * y.shape[3]
    cdef Py_ssize_t item, n, f, p
    cdef floating bias
    cdef floating* dst
    cdef const floating* src
    with nogil:
        for item in range(N * F):
            n = item // F
            f = item % F
            bias = b[f]
            dst = &y[n, f, 0, 0]
            src = &yF[f, n * P]
            for p in range(P):
                dst[p] = src[p] + bias


def unpack_output_relu(const floating[:, ::1] yF, const floating[::1] b,
                       floating[:, :, :, ::1] y, unsigned char[:, :, :, ::1] mask):
    """unpack_output with the ReLU applied on the way (relu's contract:
    max(v, 0), a NaN stays, -0.0 becomes +0) and its mask [v > 0] written,
    which the backward applies to dy."""
    cdef Py_ssize_t N = y.shape[0], F = y.shape[1], P = y.shape[2] * y.shape[3]
    cdef Py_ssize_t item, n, f, p
    cdef floating bias, v, zero = 0
    cdef floating* dst
    cdef unsigned char* m
    cdef const floating* src
    with nogil:
        for item in range(N * F):
            n = item // F
            f = item % F
            bias = b[f]
            dst = &y[n, f, 0, 0]
            m = &mask[n, f, 0, 0]
            src = &yF[f, n * P]
            for p in range(P):
                v = src[p] + bias
                dst[p] = v if not (v <= zero) else zero
                m[p] = v > zero


def pack_grad_output(const floating[:, :, :, ::1] dy, floating[:, ::1] dyF,
                     floating[::1] db):
    """dyF[f, n*P + oh*OW + ow] = dy[n, f, oh, ow] (NCHW to the column
    layout) and db[f] = sum of dy[:, f] in the same pass."""
    cdef Py_ssize_t N = dy.shape[0], F = dy.shape[1], P = dy.shape[2] * dy.shape[3]
    cdef Py_ssize_t n, f, p
    cdef double s
    cdef floating* dst
    cdef const floating* src
    with nogil:
        for f in range(F):
            s = 0
            for n in range(N):
                dst = &dyF[f, n * P]
                src = &dy[n, f, 0, 0]
                for p in range(P):
                    dst[p] = src[p]
                s = s + _sum(src, P)
            db[f] = <floating>s
