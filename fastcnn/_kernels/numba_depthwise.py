"""Numba kernels for the direct depthwise convolution, forward (with its
optional ReLU epilogue) and backward: the same kernels, arguments and
phase layout as ``cy_depthwise.pyx`` (whose header states the formula,
the layout and why), driven by ``fastcnn.backends._depthwise``; loops
written for LLVM's vectoriser (which targets the CPU it runs on) where
cy_depthwise has C vector loops. Every kernel is single-threaded and works
on a block of images [n0, n1) and channels [c0, c1).

Planes are handled as flat rows, and every inner loop indexes a view by
its loop counter alone: a computed index keeps Numba's negative-index
test, which stops LLVM vectorising the loop. Copies are loops too, not
slice assignments (which Numba runs far slower than the loop), and the
row copies of strides 1 and 2 have helpers with no branch on the stride.

forward_small/backward_small: the small-map kernels, the images innermost
(cy_depthwise's layout and arguments); here the packing is plain loops and
the forward goes through its scratch tile.

Shapes: x/dx (N, C, H, W), w (F, KH, KW), b (F,), y/dy (N, F, OH, OW),
xp (N, C, SH*SW*(HQ+1), WQ); stride (SH, SW), dilation (DH, DW), top/left
padding PT, PL.
"""
import numpy as np
from numba import njit, types

from fastcnn._kernels.numba_common import JIT_OPTIONS, i64, kernel, ro, rw, void

f64 = types.float64
u8 = types.uint8
# planes narrower than this are computed as one flat run at the row pitch
# and copied out (see cy_depthwise.FLAT_BELOW); 3x3 filters below
# FLAT_BELOW_9: LLVM's vectorised loops take four vectors of the widest
# kind per iteration (64 floats with AVX-512) and leave shorter rows scalar
FLAT_BELOW = 17
FLAT_BELOW_9 = 65


@njit(inline="always", **JIT_OPTIONS)
def _flat(width, T):
    """Whether planes of rows of ``width`` are computed as flat runs."""
    return width < (FLAT_BELOW_9 if T == 9 else FLAT_BELOW)


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
def _fill(dst):
    """dst[:] = 0, as a loop."""
    for q in range(dst.shape[0]):
        dst[q] = 0


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


@njit(**JIT_OPTIONS)
def _forward_plane(xq, wf, bias, yf, yq, offs, WQ, relu):
    """One output plane yf (OH, OW) of the flat phase-layout plane xq,
    filter wf (KH*KW,): narrow planes (see _flat) as one flat run yq
    (OH*WQ,) at row pitch WQ, then copied out; wider ones row by row.
    relu: through ReLU as np.maximum (NaN stays NaN, +0 for the rest <= 0),
    a pass over the plane while it is in cache."""
    OH, OW = yf.shape
    T = wf.shape[0]
    flat = _flat(OW, T)
    rows, n = (1, OH * WQ) if flat else (OH, OW)
    for i in range(rows):
        yr = yq if flat else yf[i]
        r = i * WQ
        if T == 9:
            # all nine taps in one pass: one store per output
            w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wf[0], wf[1], wf[2], wf[3], wf[4],
                                                  wf[5], wf[6], wf[7], wf[8])
            a0, a1, a2 = xq[r + offs[0]:], xq[r + offs[1]:], xq[r + offs[2]:]
            a3, a4, a5 = xq[r + offs[3]:], xq[r + offs[4]:], xq[r + offs[5]:]
            a6, a7, a8 = xq[r + offs[6]:], xq[r + offs[7]:], xq[r + offs[8]:]
            for j in range(n):
                yr[j] = ((bias + (w0 * a0[j] + w1 * a1[j] + w2 * a2[j]))
                         + (w3 * a3[j] + w4 * a4[j] + w5 * a5[j])
                         + (w6 * a6[j] + w7 * a7[j] + w8 * a8[j]))
            continue
        for j in range(n):
            yr[j] = bias
        for t in range(T):
            xr = xq[r + offs[t]:]
            wv = wf[t]
            for j in range(n):
                yr[j] += wv * xr[j]
    if flat:
        for i in range(OH):
            _copy(yq[i * WQ:i * WQ + OW], yf[i])
    if relu:
        for i in range(OH):
            _relu(yf[i])


@njit(inline="always", **JIT_OPTIONS)
def _positive(y, mk):
    """mk[j] = y[j] > 0: the ReLU's mask of a plane still in cache."""
    for j in range(y.shape[0]):
        mk[j] = y[j] > 0


@njit(inline="always", **JIT_OPTIONS)
def _relu(r):
    """r = np.maximum(r, 0) in place: NaN <= 0 is false, so NaN stays."""
    for j in range(r.shape[0]):
        v = r[j]
        r[j] = v if not (v <= 0) else 0.0


@kernel(lambda t: void(ro(t, 4), ro(t, 3), ro(t, 1), rw(t, 4), rw(t, 4), rw(t, 1),
                       i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, types.boolean,
                       rw(u8, 4), types.boolean))
def forward(x, w, b, xp, y, yq, n0, n1, c0, c1, SH, SW, DH, DW, PT, PL, relu, mask, masked):
    """For images [n0, n1) and channels [c0, c1): xp[n, c] = x[n, c] in the
    phase layout and y[n, c*M:(c+1)*M] = its depthwise convolution (relu:
    through ReLU); if masked, mask (y's shape) = the ReLU's mask [y > 0] of
    those planes (else mask is not read). Scratch: yq (OH*WQ,)."""
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
            if SH == 1 and SW == 1:
                # each element written once: the padding around the rows, the rows
                _fill(xq[:PT * WQ])
                for ih in range(H):
                    r = xq[(ih + PT) * WQ:(ih + PT + 1) * WQ]
                    _fill(r[:PL])
                    _copy(x[n, c, ih], r[PL:])
                    _fill(r[PL + W:])
                _fill(xq[(PT + H) * WQ:])
            else:
                _fill(xq)
            for ih in range(H if SH != 1 or SW != 1 else 0):
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
                _forward_plane(xq, w[f].reshape(-1), b[f], y[n, f], yq, offs, WQ, relu)
                if masked:
                    _positive(y[n, f].reshape(-1), mask[n, f].reshape(-1))


@njit(**JIT_OPTIONS)
def _grad_weights_rows(dyw, OH, OW, xq, acc, dwf, db, f, offs, WQ):
    """One output plane's share of dwf (KH*KW,) and db[f], added: per tap
    the dot product of dyw (OH rows of OW at row pitch WQ) with the inputs
    it met in the flat plane xq, over the valid columns only. acc
    ((KH*KW + 1) * OW,) is scratch: per tap a row of partial sums."""
    T = offs.shape[0]
    a2 = acc[:(T + 1) * OW].reshape(T + 1, OW)
    a2[:] = 0
    for i in range(OH):
        dyr = dyw[i * WQ:]
        a = a2[T]
        for j in range(OW):
            a[j] += dyr[j]
        for t in range(T):
            xr = xq[i * WQ + offs[t]:]
            a = a2[t]
            for j in range(OW):
                a[j] += dyr[j] * xr[j]
    for t in range(T):
        s = 0.0
        for j in range(OW):
            s += a2[t, j]
        dwf[t] += s
    s = 0.0
    for j in range(OW):
        s += a2[T, j]
    db[f] += s


@njit(inline="always", **JIT_OPTIONS)
def _dot(a, b, n):
    """sum(a[:n] * b[:n]): eight float partial sums, which LLVM keeps in
    vector registers (it would not reassociate one sum), each over at most
    32 terms before it is added in double. Views at 8*q and constant
    indices: no negative-index test in the loop."""
    total = 0.0
    r = 0
    while r < n:
        e = min(n - r, 256)
        n8 = e - e % 8
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = a[0] * 0
        ar, br = a[r:], b[r:]
        for q in range(n8 // 8):
            u, v = ar[8 * q:], br[8 * q:]
            s0 += u[0] * v[0]
            s1 += u[1] * v[1]
            s2 += u[2] * v[2]
            s3 += u[3] * v[3]
            s4 += u[4] * v[4]
            s5 += u[5] * v[5]
            s6 += u[6] * v[6]
            s7 += u[7] * v[7]
        for p in range(n8, e):
            s0 += ar[p] * br[p]
        total += ((f64(s0) + f64(s1)) + (f64(s2) + f64(s3))) + ((f64(s4) + f64(s5))
                                                              + (f64(s6) + f64(s7)))
        r += 256
    return total


@njit(inline="always", **JIT_OPTIONS)
def _sum(a, n):
    """sum(a[:n]), as _dot."""
    total = 0.0
    r = 0
    while r < n:
        e = min(n - r, 256)
        n8 = e - e % 8
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = a[0] * 0
        ar = a[r:]
        for q in range(n8 // 8):
            u = ar[8 * q:]
            s0 += u[0]
            s1 += u[1]
            s2 += u[2]
            s3 += u[3]
            s4 += u[4]
            s5 += u[5]
            s6 += u[6]
            s7 += u[7]
        for p in range(n8, e):
            s0 += ar[p]
        total += ((f64(s0) + f64(s1)) + (f64(s2) + f64(s3))) + ((f64(s4) + f64(s5))
                                                              + (f64(s6) + f64(s7)))
        r += 256
    return total


# reassociation for these sums only: it lets LLVM keep vector partial
# sums, as the explicit partial sums of _dot do; nothing else in the loop
# may change
_SUMS = dict(JIT_OPTIONS, fastmath={"reassoc"})


@njit(**_SUMS)
def _dots9(dyw, xq, offs, n, sums):
    """3x3: sums[t] = sum_j dyw[j] * xq[offs[t] + j] for the nine taps t,
    sums[9] = sum_j dyw[j], j < n: one pass over dyw for all ten, in float
    sums over runs of at most 4096 (a few dozen terms a vector lane) added
    in float64."""
    for t in range(10):
        sums[t] = 0.0
    zero = dyw.dtype.type(0)
    for r in range(0, n, 4096):
        e = min(n - r, 4096)
        d0 = dyw[r:]
        a0, a1, a2 = xq[offs[0] + r:], xq[offs[1] + r:], xq[offs[2] + r:]
        a3, a4, a5 = xq[offs[3] + r:], xq[offs[4] + r:], xq[offs[5] + r:]
        a6, a7, a8 = xq[offs[6] + r:], xq[offs[7] + r:], xq[offs[8] + r:]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = zero
        for j in range(e):
            d = d0[j]
            s0 += d * a0[j]
            s1 += d * a1[j]
            s2 += d * a2[j]
            s3 += d * a3[j]
            s4 += d * a4[j]
            s5 += d * a5[j]
            s6 += d * a6[j]
            s7 += d * a7[j]
            s8 += d * a8[j]
            s9 += d
        sums[0] += s0
        sums[1] += s1
        sums[2] += s2
        sums[3] += s3
        sums[4] += s4
        sums[5] += s5
        sums[6] += s6
        sums[7] += s7
        sums[8] += s8
        sums[9] += s9


@njit(**JIT_OPTIONS)
def _grad_weights(dyw, xq, dwf, db, f, sums, offs, L):
    """One output plane's share of dwf (KH*KW,) and db[f], added: per tap
    the dot product of dyw (dy at the row pitch WQ of xq, zero garbage
    columns) with the run of L = OH*WQ inputs it met in xq, into sums
    (KH*KW,) first. False, with nothing added, if a sum is NaN (see
    cy_depthwise._grad_weights)."""
    T = offs.shape[0]
    if T == 9:
        _dots9(dyw, xq, offs, L, sums)
    else:
        for t in range(T):
            sums[t] = _dot(dyw, xq[offs[t]:], L)
    for t in range(T):
        if sums[t] != sums[t]:
            return False
    for t in range(T):
        dwf[t] += sums[t]
    db[f] += sums[9] if T == 9 else _sum(dyw, L)
    return True


@njit(inline="always", **JIT_OPTIONS)
def _gather(d, dpf, c, RC, DH, DW, wm, first):
    """d[j] (= or +=) sum_{kh,kw} wm[kh, kw] * dpf[c + j - kh*DH*RC - kw*DW]
    for j < len(d): the run of _grad_input_s1 whose tap (0, 0) is at c."""
    KH, KW = wm.shape
    n = d.shape[0]
    if KH == 3 and KW == 3:
        p0, p1, p2 = dpf[c:], dpf[c - DW:], dpf[c - 2 * DW:]
        c -= DH * RC
        q0, q1, q2 = dpf[c:], dpf[c - DW:], dpf[c - 2 * DW:]
        c -= DH * RC
        s0, s1, s2 = dpf[c:], dpf[c - DW:], dpf[c - 2 * DW:]
        w0, w1, w2 = wm[0, 0], wm[0, 1], wm[0, 2]
        w3, w4, w5 = wm[1, 0], wm[1, 1], wm[1, 2]
        w6, w7, w8 = wm[2, 0], wm[2, 1], wm[2, 2]
        if first:
            for j in range(n):
                d[j] = ((w0 * p0[j] + w1 * p1[j] + w2 * p2[j])
                        + (w3 * q0[j] + w4 * q1[j] + w5 * q2[j])
                        + (w6 * s0[j] + w7 * s1[j] + w8 * s2[j]))
        else:
            for j in range(n):
                d[j] += ((w0 * p0[j] + w1 * p1[j] + w2 * p2[j])
                         + (w3 * q0[j] + w4 * q1[j] + w5 * q2[j])
                         + (w6 * s0[j] + w7 * s1[j] + w8 * s2[j]))
        return
    if first:
        for j in range(n):
            d[j] = 0
    for kh in range(KH):
        for kw in range(KW):
            r = dpf[c - kh * DH * RC - kw * DW:]
            wv = wm[kh, kw]
            for j in range(n):
                d[j] += wv * r[j]


@njit(**JIT_OPTIONS)
def _grad_input_s1(wm, dyp, dq, dxc, DH, DW, PT, PL, first):
    """One output plane's share of dx (H, W), stride 1, as a gather: the
    correlation of dy, zero-padded into dyp (RH, RC) with A = (KH-1)*DH rows
    above and B = (KW-1)*DW columns left, with the flipped filter wm (KH, KW):
    dx[ih, iw] = sum_{kh,kw} w[kh, kw] * dyp[ih+PT+A - kh*DH, iw+PL+B - kw*DW],
    written if first, else added. Narrow planes (see _flat) go to the
    flat run dq (H*RC,) at row pitch RC, which the caller copies out; wider
    ones row by row into dxc (two loops: one with a choice of array between
    them does not vectorise)."""
    KH, KW = wm.shape
    H, W = dxc.shape
    RC = dyp.shape[1]
    c = (PT + (KH - 1) * DH) * RC + PL + (KW - 1) * DW      # tap (0, 0) of dx[0, 0]
    dpf = dyp.reshape(-1)
    if _flat(W, KH * KW):
        _gather(dq[:H * RC], dpf, c, RC, DH, DW, wm, first)
    else:
        for i in range(H):
            _gather(dxc[i], dpf, c + i * RC, RC, DH, DW, wm, first)


@njit(**JIT_OPTIONS)
def _grad_input_strided(dyw, wf, dq, offs, L):
    """One output plane's share of dx, any stride: the transposed
    convolution of dyw (dy at pitch WQ, zero garbage columns, so they add
    nothing) with the filter wf (KH*KW,) scattered into the flat
    phase-layout plane dq, each tap one run of L = OH*WQ. The caller crops
    dq to dx."""
    for t in range(offs.shape[0]):
        d = dq[offs[t]:]
        wv = wf[t]
        for j in range(L):
            d[j] += wv * dyw[j]


@njit(inline="always", **JIT_OPTIONS)
def _put_rows(src, dst, pitch):
    """dst[i*pitch + j] = src[i, j] for a plane src (rows, cols)."""
    for i in range(src.shape[0]):
        _copy(src[i], dst[i * pitch:])


@njit(inline="always", **JIT_OPTIONS)
def _put_rows_masked(src, mk, dst, pitch):
    """dst[i*pitch + j] = src[i, j] * mk[i, j]: relu_backward's product (NaN
    for an inf or NaN dy where the mask is 0), in the copy."""
    zero, one = src.dtype.type(0), src.dtype.type(1)
    for i in range(src.shape[0]):
        s, m, d = src[i], mk[i], dst[i * pitch:]
        for j in range(s.shape[0]):
            d[j] = s[j] * (one if m[j] else zero)


@kernel(lambda t: void(ro(t, 4), ro(t, 3), ro(t, 4), rw(t, 4), rw(f64, 2), rw(f64, 1),
                       rw(t, 1), rw(t, 1), rw(t, 1), rw(t, 2), rw(t, 1), i64, i64, i64, i64,
                       i64, i64, i64, i64, i64, i64, ro(u8, 4), types.boolean))
def backward(dy, w, xp, dx, dw, db, acc, dxp, dyw, dyp, dq, n0, n1, c0, c1, SH, SW, DH, DW,
             PT, PL, mask, masked):
    """For images [n0, n1) and channels [c0, c1): dx[n, c] (written), and
    dw[f] (F, KH*KW), db[f] = their sums over images n0..n1-1 (written) for
    the filters f of those channels. xp is the forward's phase layout.
    Scratch: acc ((KH*KW + 1) * OW,); for strides > 1 dyw (OH*WQ,) and
    dxp (one plane of xp); for stride 1 dyp (RH, WQ) and dq (H*WQ,) with
    RH >= (KH-1)*DH + max(OH + 1, H+PT+1): one copy of dy, at pitch WQ,
    serves the dw runs and the dx gather (see cy_depthwise.backward). If
    masked, mask (dy's shape) is a fused ReLU's: the gradient used is
    dy * mask, masked in that copy (else mask is not read)."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    F, KH, KW = w.shape
    rows, WQ = xp.shape[2], xp.shape[3]
    OH, OW = dy.shape[2], dy.shape[3]
    M = F // C
    BS = (rows // (SH * SW)) * WQ
    L = OH * WQ
    A, B = (KH - 1) * DH, (KW - 1) * DW
    RC = dyp.shape[1]
    s1 = SH == 1 and SW == 1
    offs = _tap_offsets(KH, KW, SH, SW, DH, DW, BS, WQ)
    dpf = dyp.reshape(-1)
    sums = np.empty(max(KH * KW, 10))
    for f in range(c0 * M, c1 * M):
        db[f] = 0
        for t in range(KH * KW):
            dw[f, t] = 0
    # zero once: the planes below overwrite only where dy goes, so the
    # garbage columns and the padding stay zero
    if s1:
        _fill(dpf)
        dyrun = dpf[A * RC + B:]
    else:
        _fill(dyw)
        dyrun = dyw[0:]
    # images outer: the planes of a block are read in memory order
    for n in range(n0, n1):
        for c in range(c0, c1):
            xq = xp[n, c].reshape(-1)
            for m in range(M):
                f = c * M + m
                dyf = dy[n, f]
                wf = w[f].reshape(-1)
                if masked:
                    _put_rows_masked(dyf, mask[n, f], dyrun, WQ)
                else:
                    _put_rows(dyf, dyrun, WQ)
                # wide planes: rows of partial sums, which LLVM vectorises
                # better than the eight sums of _dot (3x3: one flat pass, see
                # _dots9)
                if ((OW >= FLAT_BELOW and KH * KW != 9)
                        or not _grad_weights(dyrun, xq, dw[f], db, f, sums, offs, L)):
                    _grad_weights_rows(dyrun, OH, OW, xq, acc, dw[f], db, f, offs, WQ)
                if s1:
                    # `first` as a constant: a run-time flag keeps LLVM from
                    # vectorising the gather
                    if m == 0:
                        _grad_input_s1(w[f], dyp, dq, dx[n, c], DH, DW, PT, PL, True)
                    else:
                        _grad_input_s1(w[f], dyp, dq, dx[n, c], DH, DW, PT, PL, False)
                else:
                    if m == 0:
                        _fill(dxp)
                    _grad_input_strided(dyrun, wf, dxp, offs, L)
            for ih in range(H):
                if s1:
                    if _flat(W, KH * KW):
                        _copy(dq[ih * RC:ih * RC + W], dx[n, c, ih])
                    continue
                start = _row(ih + PT, SH, SW, BS, WQ)    # strides 1 and 2 apart: see forward
                if SW == 1:
                    _copy(dxp[start + PL:start + PL + W], dx[n, c, ih])
                elif SW == 2:
                    a, bb = _phases2(dxp, start, PL, BS)
                    _merge2(a, bb, dx[n, c, ih])
                else:
                    _to_image(dxp, start, dx[n, c, ih], SW, PL, BS, WQ)


# --- the small-map kernels: images innermost (see cy_depthwise) ---

@kernel(lambda t: void(ro(t, 4), ro(t, 3), ro(t, 1), rw(t, 4), rw(t, 4), rw(t, 1), i64, i64,
                       i64, i64, i64, i64, i64, i64, types.boolean, rw(u8, 4), types.boolean))
def forward_small(x, w, b, xp, y, tile, c0, c1, SH, SW, DH, DW, PT, PL, relu, mask, masked):
    """The small-map forward of 3x3 filters, for channels [c0, c1) and all
    images: xp[c] (C, HP, WP, NP) = the zero-padded planes x[:, c] with the
    images innermost (NP >= N, a multiple of 8; the lanes past N zero), and
    y[:, c*M:(c+1)*M] = their depthwise convolution (relu: through ReLU,
    np.maximum(y, 0); masked: mask = [y > 0] too, else mask is not read).
    Scratch: tile (OH*OW*NP,)."""
    N, C, H, W = x.shape
    F = w.shape[0]
    M = F // C
    OH, OW = y.shape[2], y.shape[3]
    NP = xp.shape[3]
    zero = tile.dtype.type(0)
    for c in range(c0, c1):
        P = xp[c]
        for ih in range(P.shape[0]):
            for iw in range(P.shape[1]):
                _fill(P[ih, iw])
        for n in range(N):
            for ih in range(H):
                for iw in range(W):
                    P[ih + PT, iw + PL, n] = x[n, c, ih, iw]
        for m in range(M):
            f = c * M + m
            for oh in range(OH):
                for ow in range(OW):
                    o = tile[(oh * OW + ow) * NP:]
                    for j in range(NP):
                        o[j] = b[f]
                    for kh in range(3):
                        for kw in range(3):
                            r = P[oh * SH + kh * DH, ow * SW + kw * DW]
                            wv = w[f, kh, kw]
                            for j in range(NP):
                                o[j] += wv * r[j]
            for n in range(N):
                yp = y[n, f]
                for oh in range(OH):
                    for ow in range(OW):
                        v = tile[(oh * OW + ow) * NP + n]
                        if relu and v <= 0:
                            v = zero
                        yp[oh, ow] = v
                        if masked:
                            mask[n, f, oh, ow] = 1 if v > 0 else 0


@kernel(lambda t: void(ro(t, 4), ro(t, 3), ro(t, 4), rw(t, 4), rw(f64, 2), rw(f64, 1),
                       rw(t, 1), rw(t, 1), i64, i64, i64, i64, i64, i64, i64, i64,
                       ro(u8, 4), types.boolean))
def backward_small(dy, w, xp, dx, dw, db, dyt, dxt, c0, c1, SH, SW, DH, DW, PT, PL, mask,
                   masked):
    """The small-map backward for channels [c0, c1), all images, over
    forward_small's xp: dx[:, c] (written), dw[f] (F, 9) and db[f] (written)
    for the filters f of those channels (the padding's zeros count, as in
    loops: times an inf of dy they make a NaN). masked: dy * mask is the gradient used, applied as dy is
    packed (else mask is not read). Scratch: dyt (OH*OW*NP,), dxt
    (HP*WP*NP,)."""
    N, C, H, W = dx.shape
    F = w.shape[0]
    M = F // C
    OH, OW = dy.shape[2], dy.shape[3]
    WP, NP = xp.shape[2], xp.shape[3]
    zero, one = dyt.dtype.type(0), dyt.dtype.type(1)
    acc = np.empty((10, NP), dtype=dyt.dtype)
    sums = np.zeros(10)
    for c in range(c0, c1):
        P = xp[c]
        _fill(dxt)
        for m in range(M):
            f = c * M + m
            _fill(dyt[:OH * OW * NP])
            for n in range(N):
                for oh in range(OH):
                    for ow in range(OW):
                        g = dy[n, f, oh, ow]
                        if masked:
                            g = g * (one if mask[n, f, oh, ow] else zero)
                        dyt[(oh * OW + ow) * NP + n] = g
            # per-lane float sums over a row of outputs (loops LLVM
            # vectorises), added in float64 after each row
            for t in range(10):
                sums[t] = 0.0
            for oh in range(OH):
                for t in range(10):
                    _fill(acc[t])
                for ow in range(OW):
                    d = dyt[(oh * OW + ow) * NP:]
                    a9 = acc[9]
                    for j in range(NP):
                        a9[j] += d[j]
                    for kh in range(3):
                        ih = oh * SH + kh * DH
                        for kw in range(3):
                            iw = ow * SW + kw * DW
                            a = acc[kh * 3 + kw]
                            xr = P[ih, iw]
                            q = dxt[(ih * WP + iw) * NP:]
                            wv = w[f, kh, kw]
                            for j in range(NP):
                                a[j] += d[j] * xr[j]
                                q[j] += wv * d[j]
                for t in range(10):
                    a = acc[t]
                    for j in range(NP):
                        sums[t] += a[j]
            for t in range(9):
                dw[f, t] = sums[t]
            db[f] = sums[9]
        for n in range(N):
            for ih in range(H):
                for iw in range(W):
                    dx[n, c, ih, iw] = dxt[((ih + PT) * WP + iw + PL) * NP + n]
