"""Numba kernels for max and average pooling, forward and backward,
windowed, adaptive and global.

Direct fused loops (no window extraction, no padding copy): pooling moves
memory and does almost no arithmetic, so one pass over the input is the
whole cost. Every kernel loops over image planes (n, c) on one thread; the
adapter runs ranges of planes concurrently (a plane is never split, so the
backward scatter-adds cannot race even when windows overlap). This module
deliberately chooses nothing (threads, dtype): that is the adapter's job
(``fastcnn.backends.numba``).

Shapes: the adapter views x as planes (NC, H, W) = (N*C, H, W), y/dy as
(NC, OH, OW), dx as (NC, H*W) for max pooling (argmax offsets index it)
and (NC, H, W) for average pooling; window (KH, KW), stride (SH, SW),
symmetric padding (PH, PW) with PH <= KH // 2, max's dilation (DH, DW).
(OH, OW) is y's shape, as ``fastcnn.ops`` computed it: in ceil_mode the
last windows run past the padded input, and every tap outside the input is
skipped, so nothing is padded or extended. Average pooling divides by
PyTorch's divisor for the window's place (``_divisor``), or by
divisor_override when it is not 0.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from fastcnn._kernels.numba_common import JIT_OPTIONS, kernel, ro, rw, i32, i64, void


@njit(inline="always", **JIT_OPTIONS)
def _tap_range(off, S, I, O):
    """The outputs [lo, hi) whose input o*S + off lies inside [0, I)
    (hi == lo when none)."""
    lo = 0 if off >= 0 else (S - 1 - off) // S
    hi = 0 if I - 1 - off < 0 else min((I - 1 - off) // S + 1, O)
    return lo, max(lo, hi)


@njit(inline="always", **JIT_OPTIONS)
def _first_real(o, S, P, D):
    """The first tap of window o (taps D apart from o*S - P) inside the input."""
    start = o * S - P
    return start if start >= 0 else start + D * ((D - 1 - start) // D)


# ------------------------------------------ 2x2 stride-2 max pooling ---
# The plain 2x2 stride-2 max pooling (no padding, dilation or ceil_mode
# overrun), cy_pool's fast path: the four taps of each window read straight
# from its two input rows, in row-major order with max_pool2d_forward's
# rule (strict >, the first NaN wins), argmax the flat index in the plane;
# with relu, _relu_marks' ReLU and marks (the window's first real element is
# its top left). A row goes L outputs at a time: two loads of L elements
# from each input row, their even and odd columns shuffled apart, then three
# compare-and-selects. LLVM's loop vectoriser does not turn the plain loop
# (stride-2 loads, two selects a tap) into that, so the vectors are LLVM
# vector values, built by one intrinsic per block of L outputs. The widest
# vector that fits the row is used (64, 32 or 16 bytes: 16, 8 or 4 floats,
# 8, 4 or 2 doubles; LLVM splits a vector wider than the CPU's registers),
# the row's last one ending at OW, over outputs done already (the same
# values again); rows narrower than 16 bytes of outputs run the scalar loop.

def _even_odd(L, first):
    """The shuffle mask of lanes first, first + 2, ... of two L-lane vectors."""
    return ir.Constant(ir.VectorType(ir.IntType(32), L), list(range(first, 2 * L, 2)))


def _vector_at(context, builder, aty, arr, off, vty):
    """Pointer to element ``off`` of C-contiguous ``arr``, as a vector pointer."""
    data = context.make_array(aty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [off]), vty.as_pointer())


@intrinsic
def _p22_lanes(typingctx, x, width):
    """The lanes of a ``width``-byte vector of x's elements (a constant)."""
    if not isinstance(width, types.IntegerLiteral):
        return None
    L = width.literal_value * 8 // x.dtype.bitwidth
    return types.intp(x, width), lambda context, builder, sig, args: \
        context.get_constant(types.intp, L)


@intrinsic
def _p22_block(typingctx, x, y, argmax, xo, yo, j, W, width, relu):
    """y.flat[yo:yo + L] and argmax.flat[yo:yo + L] (L: the lanes of a
    ``width``-byte vector) of the windows whose top left elements are
    x.flat[xo + 2k], at flat index j + 2k in the plane (k < L), their
    bottom rows W further on; relu: ReLU'd and marked as _relu_marks does."""
    if not isinstance(width, types.IntegerLiteral):
        return None
    L = width.literal_value * 8 // x.dtype.bitwidth

    def codegen(context, builder, sig, args):
        x_, y_, a_, xo_, yo_, j_, W_, _, relu_ = args
        int32 = ir.IntType(32)
        V = ir.VectorType(context.get_value_type(sig.args[0].dtype), L)
        VI = ir.VectorType(int32, L)
        size = sig.args[0].dtype.bitwidth // 8

        def load(off):
            return builder.load(_vector_at(context, builder, sig.args[0], x_, off, V),
                                align=size)

        def splat(s):
            v = builder.insert_element(ir.Constant(VI, ir.Undefined), s, ir.Constant(int32, 0))
            return builder.shuffle_vector(v, ir.Constant(VI, ir.Undefined),
                                          ir.Constant(VI, None))

        evens, odds = _even_odd(L, 0), _even_odd(L, 1)
        Lc = ir.Constant(xo_.type, L)
        p0, p1 = load(xo_), load(builder.add(xo_, Lc))
        below = builder.add(xo_, W_)
        q0, q1 = load(below), load(builder.add(below, Lc))
        jv = builder.add(splat(builder.trunc(j_, int32)),
                         ir.Constant(VI, list(range(0, 2 * L, 2))))
        Wv = splat(builder.trunc(W_, int32))
        one = ir.Constant(VI, [1] * L)
        b = builder.shuffle_vector(p0, p1, evens)
        a = jv
        for src, at in ((builder.shuffle_vector(p0, p1, odds), builder.add(jv, one)),
                        (builder.shuffle_vector(q0, q1, evens), builder.add(jv, Wv)),
                        (builder.shuffle_vector(q0, q1, odds),
                         builder.add(builder.add(jv, Wv), one))):
            # take = (v > b) | (isnan(v) & !isnan(b))
            b_num = builder.fcmp_ordered("ord", b, b)
            take = builder.or_(builder.fcmp_ordered(">", src, b),
                               builder.and_(builder.fcmp_unordered("uno", src, src), b_num))
            b = builder.select(take, src, b)
            a = builder.select(take, at, a)
        relu_on = builder.icmp_signed("!=", relu_, ir.Constant(relu_.type, 0))
        num = builder.fcmp_ordered("ord", b, b)
        stop = builder.fcmp_unordered("ule", b, ir.Constant(V, None))   # not (b > 0)
        zeroed = builder.and_(stop, num)
        # a number <= 0 becomes +0, marked -(top left) - 1; a NaN stays, marked -a - 1
        a_relu = builder.select(zeroed, builder.not_(jv), builder.select(stop, builder.not_(a), a))
        b_relu = builder.select(zeroed, ir.Constant(V, None), b)
        a = builder.select(relu_on, a_relu, a)
        b = builder.select(relu_on, b_relu, b)
        builder.store(b, _vector_at(context, builder, sig.args[1], y_, yo_, V), align=size)
        builder.store(a, _vector_at(context, builder, sig.args[2], a_, yo_, VI), align=4)
        return context.get_dummy_value()
    return types.void(x, y, argmax, xo, yo, j, W, width, relu), codegen


@njit(inline="always", **JIT_OPTIONS)
def _is_2x2(KH, KW, SH, SW, PH, PW, DH, DW, H, W, OH, OW):
    """Whether the window is _pool22's: 2x2, stride 2, no padding or
    dilation, no window past the input."""
    return (KH == 2 and KW == 2 and SH == 2 and SW == 2 and PH == 0 and PW == 0
            and DH == 1 and DW == 1 and 2 * OH <= H and 2 * OW <= W)


@njit(inline="always", **JIT_OPTIONS)
def _p22_row(x, y, argmax, xo, yo, j, W, OW, width, relu):
    """One output row (OW >= L) in blocks of L outputs, the last one ending
    at OW."""
    L = _p22_lanes(x, width)
    i = 0
    while i < OW:
        _p22_block(x, y, argmax, xo + 2 * i, yo + i, j + 2 * i, W, width, relu)
        i = OW - L if i + L < OW and i + 2 * L > OW else i + L


@njit(inline="always", **JIT_OPTIONS)
def _pool22(x, y, argmax, relu):
    """The plain 2x2 stride-2 max pooling of planes x into y, argmax (with
    relu: ReLU'd and marked). A row of fewer outputs than a 16-byte vector
    holds (3 floats at most) goes window by window."""
    NC, H, W = x.shape
    _, OH, OW = y.shape
    zero = np.zeros(1, y.dtype)[0]
    xf = x.reshape(NC * H * W)
    yf = y.reshape(NC * OH * OW)
    af = argmax.reshape(NC * OH * OW)
    for p in range(NC):
        for oh in range(OH):
            xo = (p * H + 2 * oh) * W
            yo = (p * OH + oh) * OW
            j = 2 * oh * W
            if OW >= _p22_lanes(x, 64):
                _p22_row(x, y, argmax, xo, yo, j, W, OW, 64, relu)
            elif OW >= _p22_lanes(x, 32):
                _p22_row(x, y, argmax, xo, yo, j, W, OW, 32, relu)
            elif OW >= _p22_lanes(x, 16):
                _p22_row(x, y, argmax, xo, yo, j, W, OW, 16, relu)
            else:
                for ow in range(OW):
                    k = xo + 2 * ow
                    first = j + 2 * ow
                    best = xf[k]
                    where = first
                    v = xf[k + 1]
                    if (v > best) | ((v != v) & (best == best)):
                        best, where = v, first + 1
                    v = xf[k + W]
                    if (v > best) | ((v != v) & (best == best)):
                        best, where = v, first + W
                    v = xf[k + W + 1]
                    if (v > best) | ((v != v) & (best == best)):
                        best, where = v, first + W + 1
                    if relu and not (best > zero):
                        if best == best:
                            best, where = zero, -first - 1
                        else:
                            where = -where - 1
                    yf[yo + ow] = best
                    af[yo + ow] = where


@kernel(lambda t: void(ro(t, 3), rw(t, 3), rw(i32, 3),
                       i64, i64, i64, i64, i64, i64, i64, i64))
def max_pool2d_forward(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW):
    """y = window maximum over taps (DH, DW) apart; argmax = its offset
    ih*W + iw in the plane.

    Tap-major: for each window tap (kh, kw), in row-major order, one pass
    along the output row, whose own y row holds the running maxima (from
    -inf, argmax at the window's first real element). The inner loop then
    has a long fixed-stride body instead of a 3x3 window's short,
    data-dependent one. Padding acts as -inf, i.e. is skipped. Ties keep the
    first maximum in row-major window order (strict >). A NaN wins over any
    number and the first NaN stays (NaN > v and v > NaN are both false), so
    the output is NaN and the gradient goes to that first NaN. The plain
    2x2 stride-2 window is ``_pool22``'s, in vectors.

    No branch on `take`: LLVM turns a select shared by y and argmax into a
    branch, mispredicted on random data (about 3x slower), so argmax is
    updated through a mask and the running maximum with max(), which
    compiles to a select but may keep the other of two equal zeros; y is
    read back at argmax at the end of the row, so it is the chosen element
    itself.
    """
    NC, H, W = x.shape
    _, OH, OW = y.shape
    if _is_2x2(KH, KW, SH, SW, PH, PW, DH, DW, H, W, OH, OW):
        _pool22(x, y, argmax, False)
        return
    lo = np.empty(KW, np.int64)
    hi = np.empty(KW, np.int64)
    for kw in range(KW):
        lo[kw], hi[kw] = _tap_range(kw * DW - PW, SW, W, OW)
    first_w = np.empty(OW, np.int64)
    for ow in range(OW):
        first_w[ow] = _first_real(ow, SW, PW, DW)
    for i in range(NC):
        plane = x[i].reshape(H * W)
        for oh in range(OH):
            yrow = y[i, oh]
            arow = argmax[i, oh]
            first = _first_real(oh, SH, PH, DH) * W
            for ow in range(OW):
                yrow[ow] = -np.inf
                arow[ow] = first + first_w[ow]
            for kh in range(KH):
                ih = oh * SH - PH + kh * DH
                if ih < 0 or ih >= H:
                    continue
                xrow = x[i, ih]
                for kw in range(KW):
                    off = kw * DW - PW
                    base = ih * W + off
                    for ow in range(lo[kw], hi[kw]):
                        v = xrow[ow * SW + off]
                        b = yrow[ow]
                        take = (v > b) | ((v != v) & (b == b))
                        m = np.int32(-np.int32(take))
                        yrow[ow] = max(v, b) if b == b else b
                        a = arow[ow]
                        arow[ow] = (a & ~m) | (np.int32(base + ow * SW) & m)
            for ow in range(OW):
                yrow[ow] = plane[arow[ow]]


@kernel(lambda t: void(ro(t, 3), rw(t, 3), rw(i32, 3)))
def max_pool2d_forward_2x2(x, y, argmax):
    """max_pool2d_forward for kernel 2, stride 2, no padding, with
    2*OH <= H and 2*OW <= W (the common case), same results: ``_pool22``."""
    _pool22(x, y, argmax, False)


@kernel(lambda t: void(ro(t, 3), ro(i32, 3), rw(t, 2)))
def max_pool2d_backward(dy, argmax, dx):
    """dx[plane, argmax] += dy: each output's gradient goes to its argmax."""
    NC, OH, OW = dy.shape
    for i in range(NC):
        dxi = dx[i]
        dxi[:] = 0
        for oh in range(OH):
            for ow in range(OW):
                dxi[argmax[i, oh, ow]] += dy[i, oh, ow]


@njit(inline="always", **JIT_OPTIONS)
def _relu_marks(y, argmax, W, SH, SW, PH, PW, DH, DW):
    """ReLU one plane's pooled maxima (y, argmax (OH, OW)) and mark each
    output the unfused ReLU's mask stops, argmax a -> -a - 1: a maximum
    <= 0 becomes +0, marked at the window's first real element (what the
    unfused max pooling of the ReLU'd zeros picks); a NaN stays, marked at
    its own place."""
    OH, OW = y.shape
    for oh in range(OH):
        first = _first_real(oh, SH, PH, DH) * W
        for ow in range(OW):
            v = y[oh, ow]
            if not (v > 0):
                if v == v:
                    y[oh, ow] = 0
                    argmax[oh, ow] = np.int32(-(first + _first_real(ow, SW, PW, DW)) - 1)
                else:
                    argmax[oh, ow] = -argmax[oh, ow] - 1


@kernel(lambda t: void(ro(t, 3), rw(t, 3), rw(i32, 3),
                       i64, i64, i64, i64, i64, i64, i64, i64))
def max_relu_pool2d_forward(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW):
    """y = relu(max pooling of x), which is the max pooling of relu(x)
    (relu is monotone and keeps a NaN); argmax as max_pool2d_forward's but
    marked where the ReLU's mask stops the gradient (``_relu_marks``, read
    by max_relu_pool2d_backward). Plane by plane: the pooling kernel, then
    the marks while the plane is in cache; the plain 2x2 stride-2 pooling
    is ``_pool22``, the marks in its loop."""
    NC, H, W = x.shape
    _, OH, OW = y.shape
    if _is_2x2(KH, KW, SH, SW, PH, PW, DH, DW, H, W, OH, OW):
        _pool22(x, y, argmax, True)
        return
    for i in range(NC):
        max_pool2d_forward(x[i:i + 1], y[i:i + 1], argmax[i:i + 1],
                           KH, KW, SH, SW, PH, PW, DH, DW)
        _relu_marks(y[i], argmax[i], W, SH, SW, PH, PW, DH, DW)


@kernel(lambda t: void(ro(t, 3), rw(t, 3), rw(i32, 3)))
def max_relu_pool2d_forward_2x2(x, y, argmax):
    """max_relu_pool2d_forward for kernel 2, stride 2, no padding, with
    2*OH <= H and 2*OW <= W, same results: ``_pool22`` with its ReLU."""
    _pool22(x, y, argmax, True)


@kernel(lambda t: void(ro(t, 3), ro(i32, 3), rw(t, 2)))
def max_relu_pool2d_backward(dy, argmax, dx):
    """The backward of max_relu_pool2d_forward into the gradient of its
    input: max_pool2d_backward's scatter where argmax >= 0; a marked
    output (a < 0) adds dy * 0 at -a - 1, what the unfused ReLU's mask makes
    of it (0, or NaN for an inf or NaN in dy)."""
    NC, OH, OW = dy.shape
    zero = np.zeros(1, dx.dtype)[0]
    for i in range(NC):
        dxi = dx[i]
        dxi[:] = 0
        for oh in range(OH):
            for ow in range(OW):
                a = argmax[i, oh, ow]
                g = dy[i, oh, ow]
                if a >= 0:
                    dxi[a] += g
                else:
                    dxi[-a - 1] += g * zero


@njit(inline="always", **JIT_OPTIONS)
def _divisor(o, S, P, K, I, count_include_pad):
    """PyTorch's share of window o in the divisor along one dimension: the
    window clipped to the padded input [-P, I + P) (count_include_pad), or
    to the input [0, I)."""
    start = o * S - P
    end = min(start + K, I + P)
    if not count_include_pad:
        start, end = max(start, 0), min(end, I)
    return end - start


@njit(inline="always", **JIT_OPTIONS)
def _inverse_divisors(OH, OW, KH, KW, SH, SW, PH, PW, H, W, count_include_pad,
                      divisor_override):
    """(OH, OW) table of 1 / divisor at each output: the divisor depends
    only on the window's place."""
    inv = np.empty((OH, OW))
    for oh in range(OH):
        dh = _divisor(oh, SH, PH, KH, H, count_include_pad)
        for ow in range(OW):
            d = divisor_override if divisor_override != 0 else \
                dh * _divisor(ow, SW, PW, KW, W, count_include_pad)
            inv[oh, ow] = 1.0 / d
    return inv


@kernel(lambda t: void(ro(t, 3), rw(t, 3), i64, i64, i64, i64, i64, i64, i64, i64))
def avg_pool2d_forward(x, y, KH, KW, SH, SW, PH, PW, count_include_pad, divisor_override):
    """y = (sum of the window's real elements) / divisor. Tap-major, as
    max_pool2d_forward: each tap adds one input row into the output row."""
    NC, H, W = x.shape
    _, OH, OW = y.shape
    inv = _inverse_divisors(OH, OW, KH, KW, SH, SW, PH, PW, H, W, count_include_pad,
                            divisor_override).astype(y.dtype)
    lo = np.empty(KW, np.int64)
    hi = np.empty(KW, np.int64)
    for kw in range(KW):
        lo[kw], hi[kw] = _tap_range(kw - PW, SW, W, OW)
    for i in range(NC):
        for oh in range(OH):
            yrow = y[i, oh]
            yrow[:] = 0
            for kh in range(KH):
                ih = oh * SH - PH + kh
                if ih < 0 or ih >= H:
                    continue
                xrow = x[i, ih]
                for kw in range(KW):
                    off = kw - PW
                    for ow in range(lo[kw], hi[kw]):
                        yrow[ow] += xrow[ow * SW + off]
            for ow in range(OW):
                yrow[ow] *= inv[oh, ow]


@kernel(lambda t: void(ro(t, 3), rw(t, 3), i64, i64, i64, i64, i64, i64, i64, i64))
def avg_pool2d_backward(dy, dx, KH, KW, SH, SW, PH, PW, count_include_pad, divisor_override):
    """dx[window] += dy / divisor for every window. Tap-major: each tap adds
    the output row's dy / divisor into one input row (within a tap no two
    outputs share an input element)."""
    NC, H, W = dx.shape
    _, OH, OW = dy.shape
    inv = _inverse_divisors(OH, OW, KH, KW, SH, SW, PH, PW, H, W, count_include_pad,
                            divisor_override).astype(dy.dtype)
    lo = np.empty(KW, np.int64)
    hi = np.empty(KW, np.int64)
    for kw in range(KW):
        lo[kw], hi[kw] = _tap_range(kw - PW, SW, W, OW)
    g = np.empty(OW, dy.dtype)
    for i in range(NC):
        dx[i] = 0
        for oh in range(OH):
            for ow in range(OW):
                g[ow] = dy[i, oh, ow] * inv[oh, ow]
            for kh in range(KH):
                ih = oh * SH - PH + kh
                if ih < 0 or ih >= H:
                    continue
                dxrow = dx[i, ih]
                for kw in range(KW):
                    off = kw - PW
                    for ow in range(lo[kw], hi[kw]):
                        dxrow[ow * SW + off] += g[ow]


# ------------------------------------------------------------- adaptive ---
# Output row oh pools input rows [oh*I // O, ceil((oh+1)*I / O)), columns
# likewise (PyTorch's bounds); windows overlap when the sizes do not divide.
# The windowed kernels are separable: for each output row, one vectorisable
# pass down its input rows reduces them to one row (sums, or per column the
# maximum and its row), then each window reduces its stretch of that row.
# Windowed sums accumulate in float64, about as accurate as NumPy's pairwise
# sums. The global_* kernels are the output 1x1 case: one contiguous pass
# over each plane, viewed flat as (NC, H*W) (global average pooling's
# forward is not here: backends/_pooling runs it as one gemv for every
# backend).

@njit(inline="always", **JIT_OPTIONS)
def _adaptive(o, I, O):
    """Input rows (or columns) [lo, hi) of adaptive window o."""
    return (o * I) // O, ((o + 1) * I + O - 1) // O


@kernel(lambda t: void(ro(t, 3), rw(t, 3)))
def adaptive_avg_pool2d_forward(x, y):
    """y = mean over each adaptive window."""
    NC, H, W = x.shape
    _, OH, OW = y.shape
    acc = np.empty(W)                   # column sums over the window's rows
    for i in range(NC):
        for oh in range(OH):
            ih0, ih1 = _adaptive(oh, H, OH)
            xrow = x[i, ih0]
            for iw in range(W):
                acc[iw] = xrow[iw]
            for ih in range(ih0 + 1, ih1):
                xrow = x[i, ih]
                for iw in range(W):
                    acc[iw] += xrow[iw]
            for ow in range(OW):
                iw0, iw1 = _adaptive(ow, W, OW)
                s = 0.0
                for iw in range(iw0, iw1):
                    s += acc[iw]
                y[i, oh, ow] = s / ((ih1 - ih0) * (iw1 - iw0))


@kernel(lambda t: void(ro(t, 3), rw(t, 3)))
def adaptive_avg_pool2d_backward(dy, dx):
    """dx[window] += dy / (window size) for every adaptive window: per output
    row, the row of what its windows add to each column, added to each of
    its input rows."""
    NC, H, W = dx.shape
    _, OH, OW = dy.shape
    add = np.empty(W, dx.dtype)
    for i in range(NC):
        dxi = dx[i]
        dxi[:, :] = 0
        for oh in range(OH):
            ih0, ih1 = _adaptive(oh, H, OH)
            add[:] = 0
            for ow in range(OW):
                iw0, iw1 = _adaptive(ow, W, OW)
                g = dy[i, oh, ow] / ((ih1 - ih0) * (iw1 - iw0))
                for iw in range(iw0, iw1):
                    add[iw] += g
            for ih in range(ih0, ih1):
                dxrow = dxi[ih]
                for iw in range(W):
                    dxrow[iw] += add[iw]


@kernel(lambda t: void(ro(t, 3), rw(t, 3), rw(i32, 3)))
def adaptive_max_pool2d_forward(x, y, argmax):
    """y = maximum of each adaptive window, argmax its offset ih*W + iw in
    the plane; ties and NaN as max_pool2d_forward (first maximum, first NaN,
    in row-major order). Per output row, each column's winner over the
    window's rows (its maximum, or first NaN, and the first row holding it);
    then each window takes the winner of its columns, a tie going to the
    smaller row, then the smaller column."""
    NC, H, W = x.shape
    _, OH, OW = y.shape
    colmax = np.empty(W, x.dtype)
    colrow = np.empty(W, np.int64)
    for i in range(NC):
        for oh in range(OH):
            ih0, ih1 = _adaptive(oh, H, OH)
            xrow = x[i, ih0]
            for iw in range(W):
                colmax[iw] = xrow[iw]
                colrow[iw] = ih0
            for ih in range(ih0 + 1, ih1):
                xrow = x[i, ih]
                for iw in range(W):
                    # no branch on take (see max_pool2d_forward): the row
                    # through a mask, the maximum through max()
                    v = xrow[iw]
                    b = colmax[iw]
                    take = (v > b) | ((v != v) & (b == b))
                    m = -np.int64(take)
                    colmax[iw] = max(v, b) if b == b else b
                    colrow[iw] = (colrow[iw] & ~m) | (ih & m)
            for ow in range(OW):
                iw0, iw1 = _adaptive(ow, W, OW)
                best, brow, bcol = colmax[iw0], colrow[iw0], iw0
                for iw in range(iw0 + 1, iw1):
                    v, r = colmax[iw], colrow[iw]
                    same = (v == best) or (v != v and best != best)
                    if v > best or (v != v and best == best) or (same and r < brow):
                        best, brow, bcol = v, r, iw
                y[i, oh, ow] = x[i, brow, bcol]      # the element itself (max() may
                argmax[i, oh, ow] = brow * W + bcol  # have kept the other zero)


@kernel(lambda t: void(ro(t, 1), rw(t, 2)))
def global_avg_pool2d_backward(dy, dx):
    """dx[p, :] = dy[p] / (H*W)."""
    NC, L = dx.shape
    for p in range(NC):
        g = dy[p] / L
        for k in range(L):
            dx[p, k] = g


@njit(inline="always", **JIT_OPTIONS)
def _first_max(a):
    """The offset of the first maximum of a, or of its first NaN. A branch
    per element: over a whole plane a new maximum is rare (about ln(L)
    times), so the branch is well predicted."""
    best = a[0]
    where = 0
    for k in range(1, a.shape[0]):
        v = a[k]
        if v > best or (v != v and best == best):
            best = v
            where = k
    return where


@njit(inline="always", **JIT_OPTIONS)
def _plane_argmax(a):
    """_first_max in two passes without a branch per element: eight
    independent running maxima (NaN-blind selects) and sums, then the first
    element equal to the maximum. A NaN anywhere makes the sum NaN (so do
    +inf and -inf together): then _first_max decides."""
    L = a.shape[0]
    blocks = L // 8
    if blocks < 2:
        return _first_max(a)
    m0 = s0 = a[0]
    m1 = s1 = a[1]
    m2 = s2 = a[2]
    m3 = s3 = a[3]
    m4 = s4 = a[4]
    m5 = s5 = a[5]
    m6 = s6 = a[6]
    m7 = s7 = a[7]
    for i in range(8, blocks * 8, 8):
        v = a[i]
        m0 = v if v > m0 else m0
        s0 += v
        v = a[i + 1]
        m1 = v if v > m1 else m1
        s1 += v
        v = a[i + 2]
        m2 = v if v > m2 else m2
        s2 += v
        v = a[i + 3]
        m3 = v if v > m3 else m3
        s3 += v
        v = a[i + 4]
        m4 = v if v > m4 else m4
        s4 += v
        v = a[i + 5]
        m5 = v if v > m5 else m5
        s5 += v
        v = a[i + 6]
        m6 = v if v > m6 else m6
        s6 += v
        v = a[i + 7]
        m7 = v if v > m7 else m7
        s7 += v
    m0 = max(m0, m4)
    m1 = max(m1, m5)
    m2 = max(m2, m6)
    m3 = max(m3, m7)
    best = max(max(m0, m2), max(m1, m3))
    total = ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7))
    for i in range(blocks * 8, L):
        v = a[i]
        best = v if v > best else best
        total += v
    if total != total:
        return _first_max(a)
    i = 0
    while i + 8 <= L:
        if ((a[i] == best) | (a[i + 1] == best) | (a[i + 2] == best) | (a[i + 3] == best)
                | (a[i + 4] == best) | (a[i + 5] == best) | (a[i + 6] == best)
                | (a[i + 7] == best)):
            break
        i += 8
    while a[i] != best:
        i += 1
    return i


@kernel(lambda t: void(ro(t, 2), rw(t, 1), rw(i32, 1)))
def global_max_pool2d_forward(x, y, argmax):
    """y[p] = maximum of plane x[p], argmax its offset; ties and NaN as
    max_pool2d_forward."""
    NC, L = x.shape
    for p in range(NC):
        where = _plane_argmax(x[p])
        y[p] = x[p, where]
        argmax[p] = where
