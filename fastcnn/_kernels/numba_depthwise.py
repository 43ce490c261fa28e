"""Numba kernels for the direct depthwise convolution, forward and backward:
the same kernels, arguments, phase layout and loop structure as
``cy_depthwise.pyx`` (whose header states the formula, the layout and why),
driven by ``fastcnn.backends._depthwise``. Every kernel is single-threaded
and works on a block of images [n0, n1) and channels [c0, c1).

Planes are handled as flat rows, and every inner loop indexes a view by
its loop counter alone: a computed index keeps Numba's negative-index
test, which stops LLVM vectorising the loop. Copies are loops too, not
slice assignments (which Numba runs far slower than the loop), and the
row copies of strides 1 and 2 have helpers with no branch on the stride.

Shapes: x/dx (N, C, H, W), w (F, KH, KW), b (F,), y/dy (N, F, OH, OW),
xp (N, C, SH*SW*(HQ+1), WQ); stride (SH, SW), dilation (DH, DW), top/left
padding PT, PL.
"""
import numpy as np
from numba import njit, types

from fastcnn._kernels.numba_common import JIT_OPTIONS, i64, kernel, ro, rw, void

f64 = types.float64


@njit(**JIT_OPTIONS)
def _tap_offsets(KH, KW, SH, SW, DH, DW, BS, WQ):
    """offs[kh*KW + kw]: where tap (kh, kw)'s input for output (0, 0) sits
    in a flat plane of xp; output (i, j) adds i*WQ + j."""
    offs = np.empty(KH * KW, dtype=np.int64)
    for kh in range(KH):
        for kw in range(KW):
            offs[kh * KW + kw] = ((((kh * DH) % SH) * SW + (kw * DW) % SW) * BS
                                  + ((kh * DH) // SH) * WQ + (kw * DW) // SW)
    return offs


@njit(inline="always", **JIT_OPTIONS)
def _row(r, SH, SW, BS, WQ):
    """Where padded row r, column phase 0, starts in a flat plane of xp."""
    return (r % SH) * SW * BS + (r // SH) * WQ


@njit(inline="always", **JIT_OPTIONS)
def _phase_range(p, SW, PL, W, WQ):
    """Phase-p columns k in [lo, hi) hold image column p + SW*k - PL."""
    off = p - PL
    lo = 0 if off >= 0 else (SW - 1 - off) // SW
    hi = 0 if W - 1 - off < 0 else min(WQ, (W - 1 - off) // SW + 1)
    return lo, max(lo, hi)


@njit(inline="always", **JIT_OPTIONS)
def _split2(img, a, b):
    """Stride 2: image row img into its two column phases a, b (views that
    start at image columns 0 and 1). Both columns of a pair in one loop."""
    W = img.shape[0]
    half = W // 2
    for q in range(half):
        a[q] = img[2 * q]
        b[q] = img[2 * q + 1]
    if W % 2:
        a[half] = img[W - 1]


@njit(inline="always", **JIT_OPTIONS)
def _merge2(a, b, img):
    """The reverse of _split2."""
    W = img.shape[0]
    half = W // 2
    for q in range(half):
        img[2 * q] = a[q]
        img[2 * q + 1] = b[q]
    if W % 2:
        img[W - 1] = a[half]


@njit(inline="always", **JIT_OPTIONS)
def _copy(src, dst):
    """dst[:n] = src, n = len(src)."""
    for q in range(src.shape[0]):
        dst[q] = src[q]


@njit(inline="always", **JIT_OPTIONS)
def _phases2(plane, start, PL, BS):
    """Stride 2: views of a padded row's two column phases from image
    columns 0 and 1 on (image column 2q + e is padded column 2q + e + PL:
    phase (e + PL) % 2, element q + (e + PL) // 2)."""
    return (plane[start + (PL % 2) * BS + PL // 2:],
            plane[start + ((PL + 1) % 2) * BS + (PL + 1) // 2:])


@njit(**JIT_OPTIONS)
def _to_plane(img, plane, start, SW, PL, BS, WQ):
    """Any stride: an image row img (W,) into its padded row in the flat
    phase-layout plane (the row starts at ``start`` in column phase 0;
    phase p is p*BS further). Image column iw is padded column iw + PL."""
    W = img.shape[0]
    for p in range(SW):
        lo, hi = _phase_range(p, SW, PL, W, WQ)
        a = plane[start + p * BS:]
        for k in range(lo, hi):
            a[k] = img[p - PL + SW * k]


@njit(**JIT_OPTIONS)
def _to_image(plane, start, img, SW, PL, BS, WQ):
    """The reverse of _to_plane: a padded row back to the image row img."""
    W = img.shape[0]
    for p in range(SW):
        lo, hi = _phase_range(p, SW, PL, W, WQ)
        a = plane[start + p * BS:]
        for k in range(lo, hi):
            img[p - PL + SW * k] = a[k]


@kernel(lambda t: void(ro(t, 4), ro(t, 3), ro(t, 1), rw(t, 4), rw(t, 4),
                       i64, i64, i64, i64, i64, i64, i64, i64, i64, i64))
def forward(x, w, b, xp, y, n0, n1, c0, c1, SH, SW, DH, DW, PT, PL):
    """For images [n0, n1) and channels [c0, c1): xp[n, c] = x[n, c] in the
    phase layout and y[n, c*M:(c+1)*M] = its depthwise convolution."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    F, KH, KW = w.shape
    rows, WQ = xp.shape[2], xp.shape[3]
    OH, OW = y.shape[2], y.shape[3]
    M, T = F // C, KH * KW
    BS = (rows // (SH * SW)) * WQ
    offs = _tap_offsets(KH, KW, SH, SW, DH, DW, BS, WQ)
    for n in range(n0, n1):
        for c in range(c0, c1):
            xq = xp[n, c].reshape(-1)
            xq[:] = 0
            for ih in range(H):
                # strides 1 and 2 in loops of their own: the copy loops in
                # a helper that branches on a stride vectorise worse
                start = _row(ih + PT, SH, SW, BS, WQ)
                if SW == 1:
                    _copy(x[n, c, ih], xq[start + PL:])
                elif SW == 2:
                    a, bb = _phases2(xq, start, PL, BS)
                    _split2(x[n, c, ih], a, bb)
                else:
                    _to_plane(x[n, c, ih], xq, start, SW, PL, BS, WQ)
            for m in range(M):
                f = c * M + m
                bias = b[f]
                wf = w[f].reshape(-1)
                yf = y[n, f]
                if T == 9 and KH == 3:
                    # all nine taps in one pass: one store per output
                    w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wf[0], wf[1], wf[2], wf[3], wf[4],
                                                          wf[5], wf[6], wf[7], wf[8])
                    for i in range(OH):
                        r = i * WQ
                        a0, a1, a2 = xq[r + offs[0]:], xq[r + offs[1]:], xq[r + offs[2]:]
                        a3, a4, a5 = xq[r + offs[3]:], xq[r + offs[4]:], xq[r + offs[5]:]
                        a6, a7, a8 = xq[r + offs[6]:], xq[r + offs[7]:], xq[r + offs[8]:]
                        yr = yf[i]
                        for j in range(OW):
                            yr[j] = ((bias + (w0 * a0[j] + w1 * a1[j] + w2 * a2[j]))
                                     + (w3 * a3[j] + w4 * a4[j] + w5 * a5[j])
                                     + (w6 * a6[j] + w7 * a7[j] + w8 * a8[j]))
                    continue
                for i in range(OH):
                    yr = yf[i]
                    yr[:] = bias
                    for t in range(T):
                        xr = xq[i * WQ + offs[t]:]
                        wv = wf[t]
                        for j in range(OW):
                            yr[j] += wv * xr[j]


@njit(**JIT_OPTIONS)
def _grad_weights(dy, xq, acc, dw, db, offs, WQ):
    """One plane's share of dw (M, KH*KW) and db (M,), added: per tap the
    dot product of dy (M, OH, OW) with the inputs it met in the flat plane
    xq. acc (KH*KW + 1, OW) is scratch: per tap a row of partial sums."""
    M, OH, OW = dy.shape
    T = offs.shape[0]
    for m in range(M):
        acc[:] = 0
        # two output rows per pass: half the passes over the rows of acc
        for i in range(0, OH - 1, 2):
            dyr, dyr1 = dy[m, i], dy[m, i + 1]
            a = acc[T]
            for j in range(OW):
                a[j] += dyr[j] + dyr1[j]
            for t in range(T):
                xr, xr1 = xq[i * WQ + offs[t]:], xq[(i + 1) * WQ + offs[t]:]
                a = acc[t]
                for j in range(OW):
                    a[j] += dyr[j] * xr[j] + dyr1[j] * xr1[j]
        if OH % 2:
            dyr = dy[m, OH - 1]
            a = acc[T]
            for j in range(OW):
                a[j] += dyr[j]
            for t in range(T):
                xr = xq[(OH - 1) * WQ + offs[t]:]
                a = acc[t]
                for j in range(OW):
                    a[j] += dyr[j] * xr[j]
        for t in range(T):
            s = 0.0
            for j in range(OW):
                s += acc[t, j]
            dw[m, t] += s
        s = 0.0
        for j in range(OW):
            s += acc[T, j]
        db[m] += s


@njit(**JIT_OPTIONS)
def _grad_input_s1(dy, w, dyp, dx, DH, DW, PT, PL):
    """dx (H, W) of one plane, stride 1, as a gather: the correlation of dy
    (M, OH, OW), zero-padded into dyp (M, RH, RC) with A = (KH-1)*DH rows
    above and B = (KW-1)*DW columns left, with the flipped filters:
    dx[ih, iw] = sum_{m,kh,kw} w[m, kh, kw] * dyp[m, ih+PT+A - kh*DH, iw+PL+B - kw*DW]."""
    M, KH, KW = w.shape
    OH, OW = dy.shape[1], dy.shape[2]
    H, W = dx.shape
    A, B = (KH - 1) * DH, (KW - 1) * DW
    dyp[:] = 0
    for m in range(M):
        for i in range(OH):
            d, s = dyp[m, A + i, B:], dy[m, i]
            for j in range(OW):
                d[j] = s[j]
    for m in range(M):
        wm = w[m]
        for i in range(H):
            dxr = dx[i]
            rows = dyp[m, i + PT:]          # row kh*DH up from tap (0, 0)'s row A
            if KH == 3 and KW == 3:
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


@njit(**JIT_OPTIONS)
def _grad_input_strided(dy, w, dyw, dq, dx, offs, SH, SW, PT, PL, BS, WQ):
    """dx (H, W) of one plane, any stride: the transposed convolution of dy
    (M, OH, OW) scattered into the flat phase-layout plane dq, each tap one
    run of OH*WQ over dy copied into dyw (OH, WQ) with zero garbage
    columns, then cropped to dx."""
    M, OH, OW = dy.shape
    T = offs.shape[0]
    L = OH * WQ
    dwf = dyw.reshape(-1)
    dq[:] = 0
    dwf[:] = 0
    for m in range(M):
        for i in range(OH):
            d, s = dyw[i], dy[m, i]
            for j in range(OW):
                d[j] = s[j]
        wm = w[m].reshape(-1)
        for t in range(T):
            d = dq[offs[t]:]
            wv = wm[t]
            for j in range(L):
                d[j] += wv * dwf[j]
    for ih in range(dx.shape[0]):
        start = _row(ih + PT, SH, SW, BS, WQ)    # strides 1 and 2 apart: see forward
        if SW == 1:
            _copy(dq[start + PL:start + PL + dx.shape[1]], dx[ih])
        elif SW == 2:
            a, b = _phases2(dq, start, PL, BS)
            _merge2(a, b, dx[ih])
        else:
            _to_image(dq, start, dx[ih], SW, PL, BS, WQ)


@kernel(lambda t: void(ro(t, 4), ro(t, 3), ro(t, 4), rw(t, 4), rw(f64, 2), rw(f64, 1),
                       rw(t, 2), rw(t, 2), rw(t, 2), rw(t, 3), i64, i64, i64, i64, i64, i64,
                       i64, i64, i64, i64))
def backward(dy, w, xp, dx, dw, db, acc, dxp, dyw, dyp, n0, n1, c0, c1, SH, SW, DH, DW,
             PT, PL):
    """For images [n0, n1) and channels [c0, c1): dx[n, c] (written), and
    dw[f] (F, KH*KW), db[f] = their sums over images n0..n1-1 (written) for
    the filters f of those channels. xp is the forward's phase layout.
    Scratch: acc (KH*KW + 1, OW); for strides > 1 dxp (one plane of xp)
    and dyw (OH, WQ); for stride 1 dyp (M, RH, RC) with
    RH >= (KH-1)*DH + max(OH, H+PT), RC >= (KW-1)*DW + max(OW, W+PL)."""
    C = dx.shape[1]
    F, KH, KW = w.shape
    rows, WQ = xp.shape[2], xp.shape[3]
    M = F // C
    BS = (rows // (SH * SW)) * WQ
    offs = _tap_offsets(KH, KW, SH, SW, DH, DW, BS, WQ)
    dq = dxp.reshape(-1)
    for f in range(c0 * M, c1 * M):
        db[f] = 0
        for t in range(KH * KW):
            dw[f, t] = 0
    # images outer: the planes of a block are read in memory order
    for n in range(n0, n1):
        for c in range(c0, c1):
            f0 = c * M
            wc = w[f0:f0 + M]
            dyc = dy[n, f0:f0 + M]
            _grad_weights(dyc, xp[n, c].reshape(-1), acc, dw[f0:f0 + M], db[f0:f0 + M],
                          offs, WQ)
            if SH == 1 and SW == 1:
                _grad_input_s1(dyc, wc, dyp, dx[n, c], DH, DW, PT, PL)
            else:
                _grad_input_strided(dyc, wc, dyw, dq, dx[n, c], offs, SH, SW, PT, PL, BS, WQ)
