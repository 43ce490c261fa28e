"""Numba kernels for max and average pooling, forward and backward.

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
symmetric padding (PH, PW) with PH <= KH // 2, so every window holds at least
one real element.
"""

from numba import njit

from fastcnn._kernels.numba_common import JIT_OPTIONS, kernel, ro, rw, i32, i64, void


@njit(inline="always", **JIT_OPTIONS)
def _window(o, S, P, K, I):
    """Input rows (or columns) [lo, hi) of window o that lie inside the image:
    the padding is skipped, never read."""
    start = o * S - P
    return max(start, 0), min(start + K, I)


@njit(inline="always", **JIT_OPTIONS)
def _window_max(xi, ih0, ih1, iw0, iw1):
    """(maximum, its offset ih*W + iw) of plane xi over rows [ih0, ih1) and
    columns [iw0, iw1): the first maximum in row-major order, or the first NaN."""
    W = xi.shape[1]
    best = xi[ih0, iw0]
    where = ih0 * W + iw0
    for ih in range(ih0, ih1):
        for iw in range(iw0, iw1):
            v = xi[ih, iw]
            # bitwise, not `or`: a select instead of a branch
            take = (v > best) | ((v != v) & (best == best))
            best = v if take else best
            where = ih * W + iw if take else where
    return best, where


@kernel(lambda t: void(ro(t, 3), rw(t, 3), rw(i32, 3),
                       i64, i64, i64, i64, i64, i64))
def max_pool2d_forward(x, y, argmax, KH, KW, SH, SW, PH, PW):
    """y = window maximum; argmax = its offset ih*W + iw in the plane.

    Padding acts as -inf, i.e. is skipped. Ties keep the first maximum in
    row-major window order (strict >). A NaN wins over any number and the
    first NaN stays (NaN > v and v > NaN are both false), so the output is
    NaN and the gradient goes to that first NaN.
    """
    NC, H, W = x.shape
    _, OH, OW = y.shape
    for i in range(NC):
        xi = x[i]
        for oh in range(OH):
            ih0, ih1 = _window(oh, SH, PH, KH, H)
            for ow in range(OW):
                iw0, iw1 = _window(ow, SW, PW, KW, W)
                y[i, oh, ow], argmax[i, oh, ow] = _window_max(xi, ih0, ih1, iw0, iw1)


@kernel(lambda t: void(ro(t, 3), rw(t, 3), rw(i32, 3)))
def max_pool2d_forward_2x2(x, y, argmax):
    """max_pool2d_forward for kernel 2, stride 2, no padding (the common
    case), same semantics. With the window unrolled the loop over ow has a
    fixed body that LLVM vectorises; the generic loop has data-dependent trip
    counts and runs scalar, about 5x slower."""
    NC, H, W = x.shape
    _, OH, OW = y.shape
    for i in range(NC):
        xi = x[i]
        for oh in range(OH):
            top = xi[2 * oh]
            bot = xi[2 * oh + 1]
            for ow in range(OW):
                best = top[2 * ow]
                where = 2 * oh * W + 2 * ow
                v = top[2 * ow + 1]
                take = (v > best) | ((v != v) & (best == best))
                best = v if take else best
                where = where + 1 if take else where
                v = bot[2 * ow]
                take = (v > best) | ((v != v) & (best == best))
                best = v if take else best
                where = (2 * oh + 1) * W + 2 * ow if take else where
                v = bot[2 * ow + 1]
                take = (v > best) | ((v != v) & (best == best))
                best = v if take else best
                where = (2 * oh + 1) * W + 2 * ow + 1 if take else where
                y[i, oh, ow] = best
                argmax[i, oh, ow] = where


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


@kernel(lambda t: void(ro(t, 3), rw(t, 3), i64, i64, i64, i64, i64, i64))
def avg_pool2d_forward(x, y, KH, KW, SH, SW, PH, PW):
    """y = (sum of the window's real elements) / (KH*KW): padding counts as
    zeros (count_include_pad)."""
    NC, H, W = x.shape
    _, OH, OW = y.shape
    area = KH * KW
    for i in range(NC):
        xi = x[i]
        for oh in range(OH):
            ih0, ih1 = _window(oh, SH, PH, KH, H)
            for ow in range(OW):
                iw0, iw1 = _window(ow, SW, PW, KW, W)
                s = 0.0
                for ih in range(ih0, ih1):
                    for iw in range(iw0, iw1):
                        s += xi[ih, iw]
                y[i, oh, ow] = s / area


@kernel(lambda t: void(ro(t, 3), rw(t, 3), i64, i64, i64, i64, i64, i64))
def avg_pool2d_backward(dy, dx, KH, KW, SH, SW, PH, PW):
    """dx[window] += dy / (KH*KW) for every window (padding drops its share)."""
    NC, H, W = dx.shape
    _, OH, OW = dy.shape
    area = KH * KW
    for i in range(NC):
        dxi = dx[i]
        dxi[:, :] = 0
        for oh in range(OH):
            ih0, ih1 = _window(oh, SH, PH, KH, H)
            for ow in range(OW):
                iw0, iw1 = _window(ow, SW, PW, KW, W)
                g = dy[i, oh, ow] / area
                for ih in range(ih0, ih1):
                    for iw in range(iw0, iw1):
                        dxi[ih, iw] += g


# ------------------------------------------------------------- adaptive ---
# Output row oh pools input rows [oh*I // O, ceil((oh+1)*I / O)), columns
# likewise (PyTorch's bounds); windows overlap when the sizes do not divide.
# Sums accumulate in float64, about as accurate as NumPy's pairwise sums.
# The global_* kernels are the output 1x1 case: one contiguous pass over
# each plane, viewed flat as (NC, H*W).

@njit(inline="always", **JIT_OPTIONS)
def _adaptive(o, I, O):
    """Input rows (or columns) [lo, hi) of adaptive window o."""
    return (o * I) // O, ((o + 1) * I + O - 1) // O


@kernel(lambda t: void(ro(t, 3), rw(t, 3)))
def adaptive_avg_pool2d_forward(x, y):
    """y = mean over each adaptive window."""
    NC, H, W = x.shape
    _, OH, OW = y.shape
    for i in range(NC):
        xi = x[i]
        for oh in range(OH):
            ih0, ih1 = _adaptive(oh, H, OH)
            for ow in range(OW):
                iw0, iw1 = _adaptive(ow, W, OW)
                s = 0.0
                for ih in range(ih0, ih1):
                    for iw in range(iw0, iw1):
                        s += xi[ih, iw]
                y[i, oh, ow] = s / ((ih1 - ih0) * (iw1 - iw0))


@kernel(lambda t: void(ro(t, 3), rw(t, 3)))
def adaptive_avg_pool2d_backward(dy, dx):
    """dx[window] += dy / (window size) for every adaptive window."""
    NC, H, W = dx.shape
    _, OH, OW = dy.shape
    for i in range(NC):
        dxi = dx[i]
        dxi[:, :] = 0
        for oh in range(OH):
            ih0, ih1 = _adaptive(oh, H, OH)
            for ow in range(OW):
                iw0, iw1 = _adaptive(ow, W, OW)
                g = dy[i, oh, ow] / ((ih1 - ih0) * (iw1 - iw0))
                for ih in range(ih0, ih1):
                    for iw in range(iw0, iw1):
                        dxi[ih, iw] += g


@kernel(lambda t: void(ro(t, 3), rw(t, 3), rw(i32, 3)))
def adaptive_max_pool2d_forward(x, y, argmax):
    """y = maximum of each adaptive window, argmax its offset ih*W + iw in
    the plane; ties and NaN as max_pool2d_forward."""
    NC, H, W = x.shape
    _, OH, OW = y.shape
    for i in range(NC):
        xi = x[i]
        for oh in range(OH):
            ih0, ih1 = _adaptive(oh, H, OH)
            for ow in range(OW):
                iw0, iw1 = _adaptive(ow, W, OW)
                y[i, oh, ow], argmax[i, oh, ow] = _window_max(xi, ih0, ih1, iw0, iw1)


@kernel(lambda t: void(ro(t, 2), rw(t, 1)))
def global_avg_pool2d_forward(x, y):
    """y[p] = mean of plane x[p]."""
    NC, L = x.shape
    for p in range(NC):
        s = 0.0
        for k in range(L):
            s += x[p, k]
        y[p] = s / L


@kernel(lambda t: void(ro(t, 1), rw(t, 2)))
def global_avg_pool2d_backward(dy, dx):
    """dx[p, :] = dy[p] / (H*W)."""
    NC, L = dx.shape
    for p in range(NC):
        g = dy[p] / L
        for k in range(L):
            dx[p, k] = g


@kernel(lambda t: void(ro(t, 2), rw(t, 1), rw(i32, 1)))
def global_max_pool2d_forward(x, y, argmax):
    """y[p] = maximum of plane x[p], argmax its offset; ties and NaN as
    max_pool2d_forward. A branch here, unlike the windowed kernels' selects:
    over a whole plane a new maximum is rare (about ln(H*W) times), so the
    branch is well predicted and the loop no longer carries the selects'
    dependency on every element."""
    NC, L = x.shape
    for p in range(NC):
        xp = x[p]
        best = xp[0]
        where = 0
        for k in range(1, L):
            v = xp[k]
            if v > best or (v != v and best == best):
                best = v
                where = k
        y[p] = best
        argmax[p] = where
