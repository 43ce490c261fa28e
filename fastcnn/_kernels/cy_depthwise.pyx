"""Direct depthwise convolution loops, forward and backward.

Depthwise: groups == C, w (F, 1, KH, KW) with F = M*C (channel multiplier
M), filter f = c*M + m reads input channel c only:
    y[n, f, i, j] = b[f] + sum_{kh,kw} xp[n, c, i*SH + kh*DH, j*SW + kw*DW] * w[f, kh, kw]
with xp the zero-padded input. K = KH*KW taps per output is far too few
for a matrix product to pay for its column matrix, so these are direct
loops.

The padded layout ``xp`` (N, C, HP, RW): every plane padded once, its
columns split into SW phases (phase p holds padded columns p, p+SW,
p+2*SW, ..., WQ = ceil(WP/SW) of them, at p*WQ in the row; RW = SW*WQ).
Padded column j*SW + o is then element j + o//SW of phase o % SW, so for
every stride the inner loop over output columns j reads (forward, dw) or
writes (dx) one contiguous run with no bounds test, and the compiler
vectorises it. Stride 1 has one phase: plain padding. The forward writes
xp and the backward reads it: it is the driver's saved copy of x.

What this is: typed loops over memoryviews, fused float32/float64, run
with the GIL released, single-threaded, over a block of images [n0, n1)
and channels [c0, c1): the driver (``fastcnn.backends._depthwise``) runs
blocks concurrently on fastcnn's pool. ``numba_depthwise.py`` has the
same kernels with the same arguments. What this is not: no validation, no
allocation, no threads.

Shapes: x/dx (N, C, H, W), w (F, KH, KW), b (F,), y/dy (N, F, OH, OW),
xp (N, C, HP, RW) with HP = H+PT+PB; stride (SH, SW), dilation (DH, DW),
top/left padding PT, PL (bottom/right padding only shows in HP, RW, OH, OW).
"""
from cython cimport floating

from fastcnn._kernels._rows cimport _hi, _lo, _zero


cdef inline Py_ssize_t _tap(Py_ssize_t kw, Py_ssize_t SW, Py_ssize_t DW,
                            Py_ssize_t WQ) noexcept nogil:
    """Offset in a padded row of column 0's input for tap kw (see header)."""
    return ((kw * DW) % SW) * WQ + (kw * DW) // SW


cdef void _pad_plane(const floating* x, floating* xp, Py_ssize_t H, Py_ssize_t W,
                     Py_ssize_t HP, Py_ssize_t RW, Py_ssize_t SW, Py_ssize_t PT,
                     Py_ssize_t PL) noexcept nogil:
    """One plane x (H, W) into the phase layout xp (HP, RW), zeros around."""
    cdef Py_ssize_t WQ = RW // SW
    cdef Py_ssize_t r, p, k, lo, hi, ih
    cdef floating* d
    cdef const floating* s
    for r in range(HP):
        ih = r - PT
        if ih < 0 or ih >= H:
            _zero(xp + r * RW, RW)
            continue
        s = x + ih * W
        for p in range(SW):
            d = xp + r * RW + p * WQ
            # phase column k holds padded column p + SW*k, image column p + SW*k - PL
            lo = _lo(p - PL, SW)
            hi = max(lo, _hi(p - PL, SW, W, WQ))
            _zero(d, lo)
            if SW == 1:
                for k in range(lo, hi):
                    d[k] = s[k - PL]
            else:
                for k in range(lo, hi):
                    d[k] = s[p - PL + SW * k]
            _zero(d + hi, WQ - hi)


cdef void _crop_plane(const floating* dxp, floating* dx, Py_ssize_t H, Py_ssize_t W,
                      Py_ssize_t RW, Py_ssize_t SW, Py_ssize_t PT,
                      Py_ssize_t PL) noexcept nogil:
    """The adjoint's last step: the image part of a phase-layout plane
    dxp (HP, RW) back to dx (H, W)."""
    cdef Py_ssize_t WQ = RW // SW
    cdef Py_ssize_t ih, p, k, lo, hi
    cdef const floating* s
    cdef floating* d
    for ih in range(H):
        d = dx + ih * W
        for p in range(SW):
            s = dxp + (ih + PT) * RW + p * WQ
            lo = _lo(p - PL, SW)
            hi = max(lo, _hi(p - PL, SW, W, WQ))
            if SW == 1:
                for k in range(lo, hi):
                    d[k - PL] = s[k]
            else:
                for k in range(lo, hi):
                    d[p - PL + SW * k] = s[k]


cdef void _forward_plane(const floating* xp, const floating* w, const floating* b,
                         floating* y, Py_ssize_t M, Py_ssize_t KH, Py_ssize_t KW,
                         Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t SH, Py_ssize_t SW,
                         Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t RW) noexcept nogil:
    """The M output planes y (M, OH, OW) of one padded input plane xp
    (HP, RW), filters w (M, KH, KW), bias b (M,)."""
    cdef Py_ssize_t WQ = RW // SW, T = KH * KW
    cdef Py_ssize_t m, i, j, kh, kw, o0, o1, o2
    cdef floating bias, wv, w0, w1, w2, w3, w4, w5, w6, w7, w8
    cdef floating* yr
    cdef const floating* xr
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    o0, o1, o2 = _tap(0, SW, DW, WQ), _tap(1, SW, DW, WQ), _tap(2, SW, DW, WQ)
    for m in range(M):
        bias = b[m]
        if KH == 3 and KW == 3:
            # all nine taps in one pass: one store per output
            w0, w1, w2 = w[m * 9 + 0], w[m * 9 + 1], w[m * 9 + 2]
            w3, w4, w5 = w[m * 9 + 3], w[m * 9 + 4], w[m * 9 + 5]
            w6, w7, w8 = w[m * 9 + 6], w[m * 9 + 7], w[m * 9 + 8]
            for i in range(OH):
                yr = y + (m * OH + i) * OW
                r0 = xp + (i * SH) * RW
                r1 = r0 + DH * RW
                r2 = r1 + DH * RW
                for j in range(OW):
                    yr[j] = (bias + (w0 * r0[j + o0] + w1 * r0[j + o1] + w2 * r0[j + o2])
                             + (w3 * r1[j + o0] + w4 * r1[j + o1] + w5 * r1[j + o2])
                             + (w6 * r2[j + o0] + w7 * r2[j + o1] + w8 * r2[j + o2]))
            continue
        for i in range(OH):
            yr = y + (m * OH + i) * OW
            for j in range(OW):
                yr[j] = bias
            for kh in range(KH):
                for kw in range(KW):
                    xr = xp + (i * SH + kh * DH) * RW + _tap(kw, SW, DW, WQ)
                    wv = w[(m * KH + kh) * KW + kw]
                    for j in range(OW):
                        yr[j] += wv * xr[j]


def forward(const floating[:, :, :, ::1] x, const floating[:, :, ::1] w,
            const floating[::1] b, floating[:, :, :, ::1] xp, floating[:, :, :, ::1] y,
            Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t c0, Py_ssize_t c1,
            Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH, Py_ssize_t DW,
            Py_ssize_t PT, Py_ssize_t PL):
    """For images [n0, n1) and channels [c0, c1): xp[n, c] = x[n, c] padded
    (phase layout) and y[n, c*M:(c+1)*M] = its depthwise convolution."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[1], KW = w.shape[2]
    cdef Py_ssize_t HP = xp.shape[2], RW = xp.shape[3], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t M = F // C
    cdef Py_ssize_t n, c
    cdef floating* xpc
    with nogil:
        for n in range(n0, n1):
            for c in range(c0, c1):
                xpc = &xp[n, c, 0, 0]
                _pad_plane(&x[n, c, 0, 0], xpc, H, W, HP, RW, SW, PT, PL)
                _forward_plane(xpc, &w[c * M, 0, 0], &b[c * M], &y[n, c * M, 0, 0],
                               M, KH, KW, OH, OW, SH, SW, DH, DW, RW)


cdef void _grad_weights(const floating* dy, const floating* xp, floating* acc, double* dw,
                        double* db, Py_ssize_t M, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH,
                        Py_ssize_t OW, Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH,
                        Py_ssize_t DW, Py_ssize_t RW) noexcept nogil:
    """One plane's share of dw (M, KH*KW) and db (M,), added: per tap the
    dot product of dy (M, OH, OW) with the padded input xp (HP, RW) it met.
    acc (KH*KW + 1, OW) is scratch: per tap a row of partial sums down the
    rows (a sum over j would not vectorise without reassociation), summed
    into dw once per plane."""
    cdef Py_ssize_t WQ = RW // SW, T = KH * KW
    cdef Py_ssize_t m, i, j, kh, kw, t
    cdef const floating* dyr
    cdef const floating* xr
    cdef floating* a
    cdef double s
    for m in range(M):
        _zero(acc, (T + 1) * OW)
        for i in range(OH):
            dyr = dy + (m * OH + i) * OW
            a = acc + T * OW
            for j in range(OW):
                a[j] += dyr[j]
            for kh in range(KH):
                for kw in range(KW):
                    xr = xp + (i * SH + kh * DH) * RW + _tap(kw, SW, DW, WQ)
                    a = acc + (kh * KW + kw) * OW
                    for j in range(OW):
                        a[j] += dyr[j] * xr[j]
        for t in range(T + 1):
            s = 0
            for j in range(OW):
                s += acc[t * OW + j]
            if t < T:
                dw[m * T + t] += s
            else:
                db[m] += s


cdef void _grad_input_s1(const floating* dy, const floating* w, floating* dyp, floating* dx,
                         Py_ssize_t M, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH,
                         Py_ssize_t OW, Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t RH,
                         Py_ssize_t RC) noexcept nogil:
    """dx (H, W) of one plane, stride 1, as a gather: the correlation of dy
    (M, OH, OW), zero-padded into dyp (M, RH, RC) with A = (KH-1)*DH rows
    above and B = (KW-1)*DW columns left, with the flipped filters:
    dx[ih, iw] = sum_{m,kh,kw} w[m, kh, kw] * dyp[m, ih+PT+A - kh*DH, iw+PL+B - kw*DW].
    One store per dx element, no bounds tests."""
    cdef Py_ssize_t A = (KH - 1) * DH, B = (KW - 1) * DW, T = KH * KW
    cdef Py_ssize_t m, i, j, kh, kw
    cdef floating v, wv, w0, w1, w2, w3, w4, w5, w6, w7, w8
    cdef floating* d
    cdef floating* dxr
    cdef const floating* c
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    _zero(dyp, M * RH * RC)
    for m in range(M):
        for i in range(OH):
            d = dyp + (m * RH + A + i) * RC + B
            for j in range(OW):
                d[j] = dy[(m * OH + i) * OW + j]
    for m in range(M):
        if KH == 3 and KW == 3:
            w0, w1, w2 = w[m * 9 + 0], w[m * 9 + 1], w[m * 9 + 2]
            w3, w4, w5 = w[m * 9 + 3], w[m * 9 + 4], w[m * 9 + 5]
            w6, w7, w8 = w[m * 9 + 6], w[m * 9 + 7], w[m * 9 + 8]
        for i in range(H):
            dxr = dx + i * W
            c = dyp + (m * RH + i + PT + A) * RC + PL + B     # tap (0, 0)
            if KH == 3 and KW == 3:
                r0 = c
                r1 = c - DH * RC
                r2 = r1 - DH * RC
                for j in range(W):
                    v = ((w0 * r0[j] + w1 * r0[j - DW] + w2 * r0[j - 2 * DW])
                         + (w3 * r1[j] + w4 * r1[j - DW] + w5 * r1[j - 2 * DW])
                         + (w6 * r2[j] + w7 * r2[j - DW] + w8 * r2[j - 2 * DW]))
                    dxr[j] = v if m == 0 else dxr[j] + v
                continue
            if m == 0:
                _zero(dxr, W)
            for kh in range(KH):
                for kw in range(KW):
                    r0 = c - kh * DH * RC - kw * DW
                    wv = w[m * T + kh * KW + kw]
                    for j in range(W):
                        dxr[j] += wv * r0[j]


cdef void _grad_input_scatter(const floating* dy, const floating* w, floating* dxp,
                              Py_ssize_t M, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH,
                              Py_ssize_t OW, Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH,
                              Py_ssize_t DW, Py_ssize_t HP, Py_ssize_t RW) noexcept nogil:
    """dxp (HP, RW, phase layout) = the transposed convolution of dy
    (M, OH, OW) with w (M, KH, KW): each dy row added into the KH*KW padded
    rows it came from (strided case: a gather would need a branch per tap)."""
    cdef Py_ssize_t WQ = RW // SW, T = KH * KW
    cdef Py_ssize_t m, i, j, kh, kw
    cdef floating wv
    cdef const floating* dyr
    cdef floating* dr
    _zero(dxp, HP * RW)
    for m in range(M):
        for i in range(OH):
            dyr = dy + (m * OH + i) * OW
            for kh in range(KH):
                for kw in range(KW):
                    dr = dxp + (i * SH + kh * DH) * RW + _tap(kw, SW, DW, WQ)
                    wv = w[m * T + kh * KW + kw]
                    for j in range(OW):
                        dr[j] += wv * dyr[j]


def backward(const floating[:, :, :, ::1] dy, const floating[:, :, ::1] w,
             const floating[:, :, :, ::1] xp, floating[:, :, :, ::1] dx,
             double[:, ::1] dw, double[::1] db, floating[:, ::1] acc, floating[:, ::1] dxp,
             floating[:, :, ::1] dyp,
             Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t c0, Py_ssize_t c1,
             Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH, Py_ssize_t DW,
             Py_ssize_t PT, Py_ssize_t PL):
    """For images [n0, n1) and channels [c0, c1): dx[n, c] (written), and
    dw[f] (F, KH*KW), db[f] = their sums over images n0..n1-1 (written) for
    the filters f of those channels. xp is the forward's padded input.
    Scratch: acc (KH*KW + 1, OW), dxp (HP, RW) for strides > 1, dyp (M, RH, RC) for stride 1
    with RH >= (KH-1)*DH + max(OH, H+PT), RC >= (KW-1)*DW + max(OW, W+PL)."""
    cdef Py_ssize_t C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[1], KW = w.shape[2]
    cdef Py_ssize_t HP = xp.shape[2], RW = xp.shape[3], OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t RH = dyp.shape[1], RC = dyp.shape[2]
    cdef Py_ssize_t M = F // C, T = KH * KW
    cdef Py_ssize_t n, c, f, t
    cdef bint stride1 = SH == 1 and SW == 1
    with nogil:
        for c in range(c0, c1):
            for f in range(c * M, (c + 1) * M):
                db[f] = 0
                for t in range(T):
                    dw[f, t] = 0
            for n in range(n0, n1):
                _grad_weights(&dy[n, c * M, 0, 0], &xp[n, c, 0, 0], &acc[0, 0], &dw[c * M, 0],
                              &db[c * M], M, KH, KW, OH, OW, SH, SW, DH, DW, RW)
                if stride1:
                    _grad_input_s1(&dy[n, c * M, 0, 0], &w[c * M, 0, 0], &dyp[0, 0, 0],
                                   &dx[n, c, 0, 0], M, KH, KW, OH, OW, DH, DW, H, W, PT, PL,
                                   RH, RC)
                else:
                    _grad_input_scatter(&dy[n, c * M, 0, 0], &w[c * M, 0, 0], &dxp[0, 0],
                                        M, KH, KW, OH, OW, SH, SW, DH, DW, HP, RW)
                    _crop_plane(&dxp[0, 0], &dx[n, c, 0, 0], H, W, RW, SW, PT, PL)
