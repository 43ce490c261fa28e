"""Numba kernels for the direct depthwise convolution, forward and backward:
the same kernels, arguments and padded phase layout as ``cy_depthwise.pyx``
(whose header states the formula and the layout), driven by
``fastcnn.backends._depthwise``. Every kernel is single-threaded and works
on a block of images [n0, n1) and channels [c0, c1).

Shapes: x/dx (N, C, H, W), w (F, KH, KW), b (F,), y/dy (N, F, OH, OW),
xp (N, C, HP, RW); stride (SH, SW), dilation (DH, DW), top/left padding
PT, PL. Planes are handled as flat rows so the inner loops index one
contiguous run with no bounds test.
"""
from numba import njit, types

from fastcnn._kernels.numba_common import JIT_OPTIONS, i64, kernel, ro, rw, void

f64 = types.float64


@njit(inline="always", **JIT_OPTIONS)
def _tap(kw, SW, DW, WQ):
    """Offset in a padded row of column 0's input for tap kw."""
    return ((kw * DW) % SW) * WQ + (kw * DW) // SW


@njit(inline="always", **JIT_OPTIONS)
def _phase_range(p, SW, PL, W, WQ):
    """Phase-p columns k in [lo, hi) hold image column p + SW*k - PL."""
    off = p - PL
    lo = 0 if off >= 0 else (SW - 1 - off) // SW
    hi = 0 if W - 1 - off < 0 else min(WQ, (W - 1 - off) // SW + 1)
    return lo, max(lo, hi)


@njit(**JIT_OPTIONS)
def _pad(x, xp, SW, PT, PL):
    """x (H, W) into the phase layout xp (HP, RW), zeros around."""
    H, W = x.shape
    HP, RW = xp.shape
    WQ = RW // SW
    for r in range(HP):
        ih = r - PT
        row = xp[r]
        if ih < 0 or ih >= H:
            row[:] = 0
            continue
        s = x[ih]
        for p in range(SW):
            lo, hi = _phase_range(p, SW, PL, W, WQ)
            d = row[p * WQ:(p + 1) * WQ]
            d[:lo] = 0
            for k in range(lo, hi):
                d[k] = s[p - PL + SW * k]
            d[hi:] = 0


@njit(**JIT_OPTIONS)
def _crop(dxp, dx, SW, PT, PL):
    """The image part of a phase-layout plane dxp (HP, RW) into dx (H, W)."""
    H, W = dx.shape
    WQ = dxp.shape[1] // SW
    for ih in range(H):
        d = dx[ih]
        for p in range(SW):
            lo, hi = _phase_range(p, SW, PL, W, WQ)
            s = dxp[ih + PT, p * WQ:(p + 1) * WQ]
            for k in range(lo, hi):
                d[p - PL + SW * k] = s[k]


@kernel(lambda t: void(ro(t, 4), ro(t, 3), ro(t, 1), rw(t, 4), rw(t, 4),
                       i64, i64, i64, i64, i64, i64, i64, i64, i64, i64))
def forward(x, w, b, xp, y, n0, n1, c0, c1, SH, SW, DH, DW, PT, PL):
    """For images [n0, n1) and channels [c0, c1): xp[n, c] = x[n, c] padded
    (phase layout) and y[n, c*M:(c+1)*M] = its depthwise convolution."""
    C = x.shape[1]
    F, KH, KW = w.shape
    RW = xp.shape[3]
    OH, OW = y.shape[2], y.shape[3]
    M = F // C
    WQ = RW // SW
    o0, o1, o2 = _tap(0, SW, DW, WQ), _tap(1, SW, DW, WQ), _tap(2, SW, DW, WQ)
    for n in range(n0, n1):
        for c in range(c0, c1):
            _pad(x[n, c], xp[n, c], SW, PT, PL)
            xq = xp[n, c].reshape(-1)
            for m in range(M):
                f = c * M + m
                bias = b[f]
                yf = y[n, f].reshape(-1)
                if KH == 3 and KW == 3:
                    # all nine taps in one pass: one store per output
                    w0, w1, w2 = w[f, 0, 0], w[f, 0, 1], w[f, 0, 2]
                    w3, w4, w5 = w[f, 1, 0], w[f, 1, 1], w[f, 1, 2]
                    w6, w7, w8 = w[f, 2, 0], w[f, 2, 1], w[f, 2, 2]
                    for i in range(OH):
                        r0 = i * SH * RW
                        r1 = r0 + DH * RW
                        r2 = r1 + DH * RW
                        # views indexed by the loop counter alone: a computed
                        # index would keep its negative-index test, which
                        # stops LLVM vectorising the loop
                        a0, a1, a2 = xq[r0 + o0:], xq[r0 + o1:], xq[r0 + o2:]
                        b0, b1, b2 = xq[r1 + o0:], xq[r1 + o1:], xq[r1 + o2:]
                        d0, d1, d2 = xq[r2 + o0:], xq[r2 + o1:], xq[r2 + o2:]
                        yr = yf[i * OW:(i + 1) * OW]
                        for j in range(OW):
                            yr[j] = ((bias + (w0 * a0[j] + w1 * a1[j] + w2 * a2[j]))
                                     + (w3 * b0[j] + w4 * b1[j] + w5 * b2[j])
                                     + (w6 * d0[j] + w7 * d1[j] + w8 * d2[j]))
                    continue
                for i in range(OH):
                    yr = yf[i * OW:(i + 1) * OW]
                    yr[:] = bias
                    for kh in range(KH):
                        for kw in range(KW):
                            xr = xq[(i * SH + kh * DH) * RW + _tap(kw, SW, DW, WQ):]
                            wv = w[f, kh, kw]
                            for j in range(OW):
                                yr[j] += wv * xr[j]


@njit(**JIT_OPTIONS)
def _grad_weights(dy, xq, w, acc, dw, db, SH, SW, DH, DW, RW):
    """One plane's share of dw (M, KH*KW) and db (M,), added: per tap the
    dot product of dy (M, OH*OW) with the padded input xq (HP*RW,) it met.
    acc (KH*KW + 1, OW) is scratch: per tap a row of partial sums down the
    rows (a sum over j would not vectorise without fastmath), summed into
    dw once per plane."""
    M, KH, KW = w.shape
    OW = acc.shape[1]
    OH = dy.shape[1] // OW
    T = KH * KW
    WQ = RW // SW
    for m in range(M):
        acc[:] = 0
        for i in range(OH):
            dyr = dy[m, i * OW:(i + 1) * OW]
            a = acc[T]
            for j in range(OW):
                a[j] += dyr[j]
            for kh in range(KH):
                for kw in range(KW):
                    xr = xq[(i * SH + kh * DH) * RW + _tap(kw, SW, DW, WQ):]
                    a = acc[kh * KW + kw]
                    for j in range(OW):
                        a[j] += dyr[j] * xr[j]
        for t in range(T):
            dw[m, t] += acc[t].sum()
        db[m] += acc[T].sum()


@njit(**JIT_OPTIONS)
def _grad_input_s1(dy, w, dyp, dx, DH, DW, PT, PL):
    """dx (H, W) of one plane, stride 1, as a gather: the correlation of dy
    (M, OH, OW), zero-padded into dyp (M, RH, RC) with A = (KH-1)*DH rows
    above and B = (KW-1)*DW columns left, with the flipped filters:
    dx[ih, iw] = sum_{m,kh,kw} w[m, kh, kw] * dyp[m, ih+PT+A - kh*DH, iw+PL+B - kw*DW].
    One store per dx element, no bounds tests."""
    M, KH, KW = w.shape
    OH, OW = dy.shape[1], dy.shape[2]
    H, W = dx.shape
    A, B = (KH - 1) * DH, (KW - 1) * DW
    dyp[:] = 0
    for m in range(M):
        dyp[m, A:A + OH, B:B + OW] = dy[m]
    for m in range(M):
        wm = w[m]
        for i in range(H):
            dxr = dx[i]
            rows = dyp[m, i + PT + A - (KH - 1) * DH:]
            if KH == 3 and KW == 3:
                # views indexed by the loop counter alone (see forward)
                c0 = PL + B
                c1 = c0 - DW
                c2 = c1 - DW
                p0, p1, p2 = rows[2 * DH, c0:], rows[2 * DH, c1:], rows[2 * DH, c2:]
                q0, q1, q2 = rows[DH, c0:], rows[DH, c1:], rows[DH, c2:]
                s0, s1, s2 = rows[0, c0:], rows[0, c1:], rows[0, c2:]
                w0, w1, w2 = wm[0, 0], wm[0, 1], wm[0, 2]
                w3, w4, w5 = wm[1, 0], wm[1, 1], wm[1, 2]
                w6, w7, w8 = wm[2, 0], wm[2, 1], wm[2, 2]
                for j in range(W):
                    v = ((w0 * p0[j] + w1 * p1[j] + w2 * p2[j])
                         + (w3 * q0[j] + w4 * q1[j] + w5 * q2[j])
                         + (w6 * s0[j] + w7 * s1[j] + w8 * s2[j]))
                    dxr[j] = v if m == 0 else dxr[j] + v
                continue
            if m == 0:
                dxr[:] = 0
            for kh in range(KH):
                for kw in range(KW):
                    r = rows[(KH - 1 - kh) * DH, PL + B - kw * DW:]
                    wv = wm[kh, kw]
                    for j in range(W):
                        dxr[j] += wv * r[j]


@kernel(lambda t: void(ro(t, 4), ro(t, 3), ro(t, 4), rw(t, 4), rw(f64, 2), rw(f64, 1),
                       rw(t, 2), rw(t, 2), rw(t, 3), i64, i64, i64, i64, i64, i64, i64, i64,
                       i64, i64))
def backward(dy, w, xp, dx, dw, db, acc, dxp, dyp, n0, n1, c0, c1, SH, SW, DH, DW, PT, PL):
    """For images [n0, n1) and channels [c0, c1): dx[n, c] (written), and
    dw[f] (F, KH*KW), db[f] = their sums over images n0..n1-1 (written) for
    the filters f of those channels. xp is the forward's padded input.
    Scratch: acc (KH*KW + 1, OW), dxp (HP, RW) for strides > 1, dyp
    (M, RH, RC) for stride 1 with RH >= (KH-1)*DH + max(OH, H+PT),
    RC >= (KW-1)*DW + max(OW, W+PL)."""
    C = dx.shape[1]
    F, KH, KW = w.shape
    HP, RW = xp.shape[2], xp.shape[3]
    OH, OW = dy.shape[2], dy.shape[3]
    M = F // C
    T = KH * KW
    WQ = RW // SW
    stride1 = SH == 1 and SW == 1
    dq = dxp.reshape(-1)
    for c in range(c0, c1):
        f0 = c * M
        db[f0:f0 + M] = 0
        dw[f0:f0 + M, :] = 0
        wc = w[f0:f0 + M]
        for n in range(n0, n1):
            dyc = dy[n, f0:f0 + M]
            _grad_weights(dyc.reshape(M, OH * OW), xp[n, c].reshape(-1), wc, acc,
                          dw[f0:f0 + M], db[f0:f0 + M], SH, SW, DH, DW, RW)
            if stride1:
                _grad_input_s1(dyc, wc, dyp, dx[n, c], DH, DW, PT, PL)
                continue
            dq[:] = 0
            for m in range(M):
                for i in range(OH):
                    dyr = dyc[m, i]
                    for kh in range(KH):
                        for kw in range(KW):
                            dr = dq[(i * SH + kh * DH) * RW + _tap(kw, SW, DW, WQ):]
                            wv = wc[m, kh, kw]
                            for j in range(OW):
                                dr[j] += wv * dyr[j]
            _crop(dxp, dx[n, c], SW, PT, PL)
