"""Compiled max/avg pooling loops, forward and backward.

What this is: typed loops over memoryviews, fused float32/float64, GIL
released, single-threaded over the N*C image planes (the adapter runs
ranges of planes concurrently; a plane is never split, so the backward
scatter needs no atomics).

What this is not: no validation and no allocation -- the adapter
``fastcnn.backends.cython`` allocates; ``fastcnn.ops`` validates.

Shapes: x/dx (N, C, H, W), y/dy (N, C, OH, OW), kernel (KH, KW), stride
(SH, SW), symmetric padding (PH, PW) with PH <= KH // 2, PW <= KW // 2, so
every window holds at least one real input element. Padding is never
materialised: taps that fall outside the image are skipped, which is the
same as padding with -inf (max) or with 0 and dividing by KH*KW anyway (avg).
argmax (N, C, OH, OW) holds, per output, the flat index ih*W + iw of the
chosen input element within its (n, c) plane (C int, so H*W < 2**31).

All loops are tap-major: for each window tap (kh, kw), in row-major order,
one pass along a whole output row. The inner loops are then long, branch-free
and vectorisable, unlike a loop over each 2x2 window.
"""
from cython cimport floating
from libc.stdlib cimport free

from fastcnn._kernels._rows cimport _axpy, _tap_ranges, _zero


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


def max_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                int[:, :, :, ::1] argmax,
                Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                Py_ssize_t PH, Py_ssize_t PW):
    """y[n, c, oh, ow] = max over the window; argmax records where it was.

    The row of y itself holds the running maxima. It starts at -inf with
    argmax at the window's first real element, which is right even when
    every element is -inf."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t item, n, c, oh, ow, kh, kw, ih, h0, w0, lo
    cdef floating neg_inf = -float("inf")
    cdef Py_ssize_t* r = _tap_ranges(KW, SW, PW, W, OW)
    try:
        with nogil:
            for item in range(N * C):
                n = item // C
                c = item % C
                for oh in range(OH):
                    h0 = oh * SH - PH
                    for ow in range(OW):
                        w0 = ow * SW - PW
                        y[n, c, oh, ow] = neg_inf
                        argmax[n, c, oh, ow] = <int>((h0 if h0 > 0 else 0) * W
                                                     + (w0 if w0 > 0 else 0))
                    for kh in range(KH):
                        ih = h0 + kh
                        if ih < 0 or ih >= H:
                            continue
                        for kw in range(KW):
                            lo = r[kw]
                            if lo < r[KW + kw]:
                                _max_tap(&y[n, c, oh, lo], &argmax[n, c, oh, lo],
                                         &x[n, c, ih, lo * SW - PW + kw], SW,
                                         r[KW + kw] - lo,
                                         <int>(ih * W + lo * SW - PW + kw), <int>SW)
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


def avg_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                Py_ssize_t PH, Py_ssize_t PW):
    """y[n, c, oh, ow] = (sum of the window's real elements) / (KH*KW)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t item, n, c, oh, ow, kh, kw, ih, lo
    cdef floating inv = 1.0 / (KH * KW)
    cdef Py_ssize_t* r = _tap_ranges(KW, SW, PW, W, OW)
    try:
        with nogil:
            for item in range(N * C):
                n = item // C
                c = item % C
                for oh in range(OH):
                    _zero(&y[n, c, oh, 0], OW)
                    for kh in range(KH):
                        ih = oh * SH - PH + kh
                        if ih < 0 or ih >= H:
                            continue
                        for kw in range(KW):
                            lo = r[kw]
                            if lo < r[KW + kw]:
                                _axpy(&y[n, c, oh, lo], 1, &x[n, c, ih, lo * SW - PW + kw],
                                      SW, 1, r[KW + kw] - lo)
                    for ow in range(OW):
                        y[n, c, oh, ow] = y[n, c, oh, ow] * inv
    finally:
        free(r)


def avg_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                 Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                 Py_ssize_t PH, Py_ssize_t PW):
    """dx[n, c, window] += dy[n, c, oh, ow] / (KH*KW) over every window."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t item, n, c, oh, kh, kw, ih, lo
    cdef floating inv = 1.0 / (KH * KW)
    cdef Py_ssize_t* r = _tap_ranges(KW, SW, PW, W, OW)
    try:
        with nogil:
            for item in range(N * C):
                n = item // C
                c = item % C
                _zero(&dx[n, c, 0, 0], H * W)
                for oh in range(OH):
                    for kh in range(KH):
                        ih = oh * SH - PH + kh
                        if ih < 0 or ih >= H:
                            continue
                        for kw in range(KW):
                            lo = r[kw]
                            if lo < r[KW + kw]:
                                _axpy(&dx[n, c, ih, lo * SW - PW + kw], SW,
                                      &dy[n, c, oh, lo], 1, inv, r[KW + kw] - lo)
    finally:
        free(r)


# ---------------------------------------------------------------- adaptive pooling
# Output row oh pools input rows [oh*H // OH, ceil((oh+1)*H / OH)), columns
# likewise (PyTorch's bounds); windows overlap when the sizes do not divide.
# Sums accumulate in double, as the NumPy reference's pairwise sums are
# about that accurate. The global_* loops are the output 1x1 case: one
# contiguous pass over each plane.

cdef inline Py_ssize_t _start(Py_ssize_t o, Py_ssize_t I, Py_ssize_t O) noexcept nogil:
    return (o * I) // O


cdef inline Py_ssize_t _end(Py_ssize_t o, Py_ssize_t I, Py_ssize_t O) noexcept nogil:
    return ((o + 1) * I + O - 1) // O


def adaptive_avg_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y):
    """y[n, c, oh, ow] = mean of x over window (oh, ow)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t item, n, c, oh, ow, ih, iw, h0, h1, w0, w1
    cdef double s
    with nogil:
        for item in range(N * C):
            n = item // C
            c = item % C
            for oh in range(OH):
                h0, h1 = _start(oh, H, OH), _end(oh, H, OH)
                for ow in range(OW):
                    w0, w1 = _start(ow, W, OW), _end(ow, W, OW)
                    s = 0
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            s = s + x[n, c, ih, iw]
                    y[n, c, oh, ow] = <floating>(s / ((h1 - h0) * (w1 - w0)))


def adaptive_avg_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx):
    """dx[n, c, window (oh, ow)] += dy[n, c, oh, ow] / (window size)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t item, n, c, oh, ow, ih, iw, h0, h1, w0, w1
    cdef floating g
    with nogil:
        for item in range(N * C):
            n = item // C
            c = item % C
            _zero(&dx[n, c, 0, 0], H * W)
            for oh in range(OH):
                h0, h1 = _start(oh, H, OH), _end(oh, H, OH)
                for ow in range(OW):
                    w0, w1 = _start(ow, W, OW), _end(ow, W, OW)
                    g = dy[n, c, oh, ow] / ((h1 - h0) * (w1 - w0))
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            dx[n, c, ih, iw] += g


def adaptive_max_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                         int[:, :, :, ::1] argmax):
    """y = max over window (oh, ow), argmax its flat offset ih*W + iw in the
    plane; ties and NaN as max_forward (first maximum, first NaN)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t item, n, c, oh, ow, ih, iw, h0, h1, w0, w1, where
    cdef floating v, best
    cdef bint take
    with nogil:
        for item in range(N * C):
            n = item // C
            c = item % C
            for oh in range(OH):
                h0, h1 = _start(oh, H, OH), _end(oh, H, OH)
                for ow in range(OW):
                    w0, w1 = _start(ow, W, OW), _end(ow, W, OW)
                    best = x[n, c, h0, w0]
                    where = h0 * W + w0
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            v = x[n, c, ih, iw]
                            take = (v > best) | ((v != v) & (best == best))
                            best = v if take else best
                            where = ih * W + iw if take else where
                    y[n, c, oh, ow] = best
                    argmax[n, c, oh, ow] = <int>where


def global_avg_forward(const floating[:, ::1] x, floating[::1] y):
    """y[p] = mean of plane x[p] (x viewed as (N*C, H*W))."""
    cdef Py_ssize_t P = x.shape[0], L = x.shape[1], p, i
    cdef double s
    with nogil:
        for p in range(P):
            s = 0
            for i in range(L):
                s = s + x[p, i]
            y[p] = <floating>(s / L)


def global_avg_backward(const floating[::1] dy, floating[:, ::1] dx):
    """dx[p, :] = dy[p] / (H*W)."""
    cdef Py_ssize_t P = dx.shape[0], L = dx.shape[1], p, i
    cdef floating g
    with nogil:
        for p in range(P):
            g = dy[p] / L
            for i in range(L):
                dx[p, i] = g


def global_max_forward(const floating[:, ::1] x, floating[::1] y, int[::1] argmax):
    """y[p] = max of plane x[p], argmax its offset; ties and NaN as max_forward.
    A branch here, unlike _max_tap's selects: over a whole plane a new maximum
    is rare (about ln(H*W) times), so the branch is well predicted."""
    cdef Py_ssize_t P = x.shape[0], L = x.shape[1], p, i, where
    cdef floating v, best
    with nogil:
        for p in range(P):
            best = x[p, 0]
            where = 0
            for i in range(1, L):
                v = x[p, i]
                if v > best or (v != v and best == best):
                    best = v
                    where = i
            y[p] = best
            argmax[p] = <int>where
