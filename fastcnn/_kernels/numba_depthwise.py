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
                        yo = i * OW
                        for j in range(OW):
                            yf[yo + j] = (
                                (bias + (w0 * xq[r0 + o0 + j] + w1 * xq[r0 + o1 + j]
                                         + w2 * xq[r0 + o2 + j]))
                                + (w3 * xq[r1 + o0 + j] + w4 * xq[r1 + o1 + j]
                                   + w5 * xq[r1 + o2 + j])
                                + (w6 * xq[r2 + o0 + j] + w7 * xq[r2 + o1 + j]
                                   + w8 * xq[r2 + o2 + j]))
                    continue
                for i in range(OH):
                    yo = i * OW
                    for j in range(OW):
                        yf[yo + j] = bias
                    for kh in range(KH):
                        for kw in range(KW):
                            xo = (i * SH + kh * DH) * RW + _tap(kw, SW, DW, WQ)
                            wv = w[f, kh, kw]
                            for j in range(OW):
                                yf[yo + j] += wv * xq[xo + j]


@kernel(lambda t: void(ro(t, 4), ro(t, 3), ro(t, 4), rw(t, 4), rw(f64, 2), rw(f64, 1),
                       rw(t, 2), rw(t, 2), i64, i64, i64, i64, i64, i64, i64, i64, i64, i64))
def backward(dy, w, xp, dx, dw, db, dxp, acc, n0, n1, c0, c1, SH, SW, DH, DW, PT, PL):
    """For images [n0, n1) and channels [c0, c1): dx[n, c] (written), and
    dw[f] (F, KH*KW), db[f] = their sums over images n0..n1-1 (written) for
    the filters f of those channels. xp is the forward's padded input;
    dxp (HP, RW) and acc (KH*KW + 1, OW) are scratch: acc holds per tap a
    row of partial sums (a reduction over j would not vectorise), summed
    into dw once per plane."""
    C = dx.shape[1]
    F, KH, KW = w.shape
    RW = xp.shape[3]
    OH, OW = dy.shape[2], dy.shape[3]
    M = F // C
    T = KH * KW
    WQ = RW // SW
    dq = dxp.reshape(-1)
    for c in range(c0, c1):
        for f in range(c * M, (c + 1) * M):
            db[f] = 0
            dw[f, :] = 0
        for n in range(n0, n1):
            dq[:] = 0
            xq = xp[n, c].reshape(-1)
            for m in range(M):
                f = c * M + m
                dyf = dy[n, f].reshape(-1)
                acc[:] = 0
                for i in range(OH):
                    yo = i * OW
                    a = acc[T]
                    for j in range(OW):
                        a[j] += dyf[yo + j]
                    for kh in range(KH):
                        for kw in range(KW):
                            t = kh * KW + kw
                            off = (i * SH + kh * DH) * RW + _tap(kw, SW, DW, WQ)
                            a = acc[t]
                            wv = w[f, kh, kw]
                            for j in range(OW):
                                g = dyf[yo + j]
                                a[j] += g * xq[off + j]
                                dq[off + j] += wv * g
                for t in range(T):
                    s = 0.0
                    for j in range(OW):
                        s += acc[t, j]
                    dw[f, t] += s
                s = 0.0
                for j in range(OW):
                    s += acc[T, j]
                db[f] += s
            _crop(dxp, dx[n, c], SW, PT, PL)
