"""Numba kernels for Winograd F(4x4, 3x3): 3x3 stride-1 convolution from
6x6 input tiles, 36 element-wise products per 4x4 output tile, 4x fewer
multiplications than im2col in the products (Lavin & Gray, "Fast Algorithms
for Convolutional Neural Networks", 2015).

    y_tile (4x4) = A^T [ (G g G^T) (.) (B^T d B) ] A      d: 6x6 input tile

Interpolation points 0, 1, -1, 1/2, -2 and infinity (Barabasz et al., "Error
analysis and improving the accuracy of Winograd convolution", 2020): in a
float32 model of the forward against a float64 direct convolution their error
was about a third of the classic 0, +-1, +-2, inf set's and of
0, +-1, +-1/2, inf, for a few more adds in B^T; tests/test_winograd.py bounds
this module's error. With those points:

    B^T = [[1, -3/2,   -2,  3/2,   1, 0],     G = [[    1,     0,    0],
           [0,   -1,  1/2,  5/2,   1, 0],          [  1/3,   1/3,  1/3],
           [0,    1, -5/2,  1/2,   1, 0],          [ -1/3,   1/3, -1/3],
           [0,   -2,   -1,    2,   1, 0],          [-16/15, -8/15, -4/15],
           [0,  1/2,   -1, -1/2,   1, 0],          [ 1/15, -2/15,  4/15],
           [0,    1, -3/2,   -2, 3/2, 1]]          [    0,     0,    1]]
    A^T = [[1, 1,  1,   1,  1, 0],
           [0, 1, -1, 1/2, -2, 0],
           [0, 1,  1, 1/4,  4, 0],
           [0, 1, -1, 1/8, -8, 1]]

B^T and A^T hold only powers of two and halves: the data transforms round
no more than their adds; the thirds and fifteenths are in G, applied once per
weight in float64 (weight_transform, weight_grad_transform).

The sum over input channels of the 36 element-wise products is 36 matmuls
M[k] = U[k] @ V[k] per group (``products``: ``np.matmul`` on stacks, also
the backward's dV = U^T dM); the backward's dU = dM V^T is
``weight_products``, compiled sums along the lanes into a float64 dU; the
other kernels are the tile transforms around them. The backward pass is
the exact adjoint of the forward:
dM = A dY A^T, dU = dM V^T, dV = U^T dM, dd = B dV B^T (scatter-added:
tiles overlap by 2), dg = G^T dU G.

Layout: the batch is the innermost axis of every tile array (tile p =
th*TW + tw, then sample n), so each transform is a handful of adds over
rows of N contiguous lanes, which LLVM vectorises. Two things it needs:
  * one store per innermost loop: with many loads and stores in one body
    the runtime alias checks exceed LLVM's budget and the loop stays scalar
    - so each transform is two separable passes (rows, then columns)
    through a small scratch;
  * the innermost index is the bare loop variable: ``a[i, j, n]``, never
    ``a[o + n]`` (Numba's negative-index wraparound on a computed index
    blocks vectorisation).
Constants are typed as the array's float (a float64 literal would widen a
float32 loop). The transforms read and write NCHW arrays themselves, a
tile row's plane rows at a time through a scratch with the batch innermost
(_pack_rows, _crop_rows), so no whole padded planes exist; only the pooling
over planes keeps output planes. The transforms work
on bands of whole tile rows (th0.. as many rows as the band array holds), so
the driver can keep a band's products in cache between matmul and transform.

Shapes (the contract shared with the cython kernels, cy_winograd.pyx): x (N, C, H, W), y/dy (N, F, OH, OW);
TH = ceil(OH/4), TW = ceil(OW/4) tiles per plane; the input's padded
planes (HT, WT) = (4*TH+2, 4*TW+2) (zero outside x), a tile row's 6 rows
at a time; output planes ys/dys (F, 4*TH, 4*TW, N); band arrays V/dV (36, C, rows*TW, N),
M/dM (36, F, rows*TW, N) (the forward's M may hold more filter rows than F:
the driver pads it by one); U/dU (36, F, Cg); element (i, j) of a 6x6 tile
at k = 6*i + j. Padding top PT, left PL (any).

A fused ReLU + 2x2 max pooling after the convolution runs either over a
chunk's output planes (pool_relu_2x2, unpool_relu) or inside the output
transform and its adjoint, one filter's tile row at a time through a
scratch of 4 plane rows (output_pool_relu_2x2, grad_output_unpool_2x2), so
no output planes are written: the same inlined row functions, the driver
choosing.

grad_input_transform writes dx a tile row at a time, carrying each
channel's last two plane rows to the next band in ``carry``: the driver runs
the bands of a chunk in order from th0 = 0.
weight_products(dM, V, dU) adds a band's dM V^T per group into dU
(36, F, Cg), float64 whatever the arrays' float: the driver sums it over
bands, chunks and dilation phases.

Non-finite inputs: the transforms subtract inputs, so an inf can give NaN
where the direct sum is +-inf; a NaN spreads to the whole 4x4 tile (6x6
for dx). relu in output_transform keeps NaN (np.maximum(NaN, 0) is NaN).

Threads: every kernel is single-threaded; the driver runs chunks of the
batch concurrently. This module deliberately chooses nothing: the driver
decides when Winograd applies, how wide a band is and how groups and
dilation map onto these kernels.
"""
import numpy as np
from numba import njit, types

from fastcnn._kernels.numba_common import FLOATS, JIT_OPTIONS, i32, i64, kernel, ro, rw, void


@njit(inline="always", **JIT_OPTIONS)
def _pack_rows(x, c, ih0, PL, d, tmp):
    """d (rows, WT, N) = rows ih0.. of the zero-padded plane of channel c of
    x (N, C, H, W), the batch innermost, x at column PL: zero outside x.
    Row by row through an (N, W) tile tmp in L1: x's rows are read whole,
    d's rows written contiguously; reading x one element per image instead
    strides by C*H*W, which at power-of-two plane sizes lands every image's
    line in one cache set."""
    N, _, H, W = x.shape
    for i in range(d.shape[0]):
        row = d[i]
        row[:] = 0
        ih = ih0 + i
        if ih < 0 or ih >= H:
            continue
        for n in range(N):
            src = x[n, c, ih]
            t = tmp[n]
            for iw in range(W):
                t[iw] = src[iw]
        for iw in range(W):
            dst = row[iw + PL]
            for n in range(N):
                dst[n] = tmp[n, iw]


@njit(inline="always", **JIT_OPTIONS)
def _crop_rows(src, PL, y, f, oh0, rows, tmp):
    """y[n, f, oh0+i, :] = src[i, PL:PL+OW, n] for i < rows: plane rows with
    the batch innermost back to NCHW, through an (N, OW) tile tmp in L1."""
    N, OW = y.shape[0], y.shape[3]
    for i in range(rows):
        row = src[i]
        for ow in range(OW):
            s = row[ow + PL]
            for n in range(N):
                tmp[n, ow] = s[n]
        for n in range(N):
            dst = y[n, f, oh0 + i]
            t = tmp[n]
            for ow in range(OW):
                dst[ow] = t[ow]


@kernel(lambda t: void(ro(t, 4), rw(t, 4), i64, i64, i64, i64))
def input_transform(x, V, th0, PT, PL, TW):
    """V[:, c, p, n] = B^T d B for the band of tile rows th0.. that V
    (36, C, rows*TW, N) holds; d is the 6x6 tile of sample n, channel c at
    rows 4th.., cols 4tw.. of x's plane padded by PT on top and PL on the
    left (TW tiles per row): each channel's 6 plane rows of a tile row are
    packed into a scratch in cache first, so no padded planes exist."""
    N, C = x.shape[0], x.shape[1]
    WT = 4 * TW + 2
    k = np.empty(3, dtype=V.dtype)
    k[0], k[1], k[2] = 0.5, 1.5, 2.5
    h5, h15, h25 = k[0], k[1], k[2]
    D = np.empty((6, WT, N), dtype=V.dtype)         # the 6 plane rows
    tmp = np.empty((N, x.shape[3]), dtype=V.dtype)
    R = np.empty((6, WT, N), dtype=V.dtype)         # B^T d for one tile row
    for c in range(C):
        for r in range(V.shape[2] // TW):
            _pack_rows(x, c, 4 * (th0 + r) - PT, PL, D, tmp)
            d0, d1, d2, d3, d4, d5 = D[0], D[1], D[2], D[3], D[4], D[5]
            for w in range(WT):
                for n in range(N):
                    R[0, w, n] = d0[w, n] - h15 * d1[w, n] - (d2[w, n] + d2[w, n]) \
                        + h15 * d3[w, n] + d4[w, n]
                for n in range(N):
                    R[1, w, n] = h5 * d2[w, n] - d1[w, n] + h25 * d3[w, n] + d4[w, n]
                for n in range(N):
                    R[2, w, n] = d1[w, n] - h25 * d2[w, n] + h5 * d3[w, n] + d4[w, n]
                for n in range(N):
                    R[3, w, n] = (d3[w, n] - d1[w, n]) + (d3[w, n] - d1[w, n]) \
                        - d2[w, n] + d4[w, n]
                for n in range(N):
                    R[4, w, n] = h5 * (d1[w, n] - d3[w, n]) - d2[w, n] + d4[w, n]
                for n in range(N):
                    R[5, w, n] = d1[w, n] - h15 * d2[w, n] - (d3[w, n] + d3[w, n]) \
                        + h15 * d4[w, n] + d5[w, n]
            for i in range(6):
                Ri = R[i]
                for tw in range(TW):
                    p = r * TW + tw
                    w = 4 * tw
                    e0, e1, e2 = Ri[w], Ri[w + 1], Ri[w + 2]
                    e3, e4, e5 = Ri[w + 3], Ri[w + 4], Ri[w + 5]
                    for n in range(N):
                        V[6 * i, c, p, n] = e0[n] - h15 * e1[n] - (e2[n] + e2[n]) \
                            + h15 * e3[n] + e4[n]
                    for n in range(N):
                        V[6 * i + 1, c, p, n] = h5 * e2[n] - e1[n] + h25 * e3[n] + e4[n]
                    for n in range(N):
                        V[6 * i + 2, c, p, n] = e1[n] - h25 * e2[n] + h5 * e3[n] + e4[n]
                    for n in range(N):
                        V[6 * i + 3, c, p, n] = (e3[n] - e1[n]) + (e3[n] - e1[n]) - e2[n] + e4[n]
                    for n in range(N):
                        V[6 * i + 4, c, p, n] = h5 * (e1[n] - e3[n]) - e2[n] + e4[n]
                    for n in range(N):
                        V[6 * i + 5, c, p, n] = e1[n] - h15 * e2[n] - (e3[n] + e3[n]) \
                            + h15 * e4[n] + e5[n]


@njit(inline="always", **JIT_OPTIONS)
def _transform_consts(dtype):
    """0.5, 0.25, 0.125, 4, 8 and 0 in the arrays' float (a float64 literal
    would widen a float32 loop)."""
    k = np.empty(6, dtype=dtype)
    k[0], k[1], k[2], k[3], k[4], k[5] = 0.5, 0.25, 0.125, 4.0, 8.0, 0.0
    return k


@njit(inline="always", **JIT_OPTIONS)
def _out_tile_row(M, f, r, TW, bf, relu, S, k, out):
    """The 4 output rows out (4, 4*TW, N) of filter f's tile row r of the
    band M: A^T m A + bf, then max(v, 0) if relu (NaN kept). S: scratch
    (4, 6, TW, N) for A^T m (row a, column j, tile)."""
    N = out.shape[2]
    h5, q25, e125, four, eight, zero = k[0], k[1], k[2], k[3], k[4], k[5]
    for j in range(6):
        for tw in range(TW):
            p = r * TW + tw
            m0, m1, m2 = M[j, f, p], M[6 + j, f, p], M[12 + j, f, p]
            m3, m4, m5 = M[18 + j, f, p], M[24 + j, f, p], M[30 + j, f, p]
            for n in range(N):
                S[0, j, tw, n] = m0[n] + (m1[n] + m2[n]) + (m3[n] + m4[n])
            for n in range(N):
                S[1, j, tw, n] = (m1[n] - m2[n]) + h5 * m3[n] - (m4[n] + m4[n])
            for n in range(N):
                S[2, j, tw, n] = (m1[n] + m2[n]) + q25 * m3[n] + four * m4[n]
            for n in range(N):
                S[3, j, tw, n] = (m1[n] - m2[n]) + e125 * m3[n] - eight * m4[n] + m5[n]
    for a in range(4):
        o = out[a]
        for tw in range(TW):
            s0, s1, s2 = S[a, 0, tw], S[a, 1, tw], S[a, 2, tw]
            s3, s4, s5 = S[a, 3, tw], S[a, 4, tw], S[a, 5, tw]
            w = 4 * tw
            o0, o1, o2, o3 = o[w], o[w + 1], o[w + 2], o[w + 3]
            for n in range(N):
                o0[n] = s0[n] + (s1[n] + s2[n]) + (s3[n] + s4[n]) + bf
            for n in range(N):
                o1[n] = (s1[n] - s2[n]) + h5 * s3[n] - (s4[n] + s4[n]) + bf
            for n in range(N):
                o2[n] = (s1[n] + s2[n]) + q25 * s3[n] + four * s4[n] + bf
            for n in range(N):
                o3[n] = (s1[n] - s2[n]) + e125 * s3[n] - eight * s4[n] + s5[n] + bf
            if relu:
                for n in range(N):      # NaN <= 0 is False: NaN stays
                    v = o0[n]
                    o0[n] = zero if v <= zero else v
                for n in range(N):
                    v = o1[n]
                    o1[n] = zero if v <= zero else v
                for n in range(N):
                    v = o2[n]
                    o2[n] = zero if v <= zero else v
                for n in range(N):
                    v = o3[n]
                    o3[n] = zero if v <= zero else v


@kernel(lambda t: void(ro(t, 4), ro(t, 1), rw(t, 4), i64, i64))
def output_transform(M, b, ys, th0, relu):
    """ys[f, 4th+a, 4tw+c, n] = (A^T m A)[a, c] + b[f] for the band of tile
    rows th0.. that M (36, F', rows*TW, N) holds (F' >= F, the first F
    rows read), then max(v, 0) if relu
    (NaN kept); ys (F, 4*TH, 4*TW, N) keeps the whole last tile
    (pool_relu_2x2 reads only what lies inside)."""
    F, _, OW4, N = ys.shape
    TW = OW4 // 4
    k = _transform_consts(ys.dtype)
    S = np.empty((4, 6, TW, N), dtype=ys.dtype)
    for f in range(F):
        for r in range(M.shape[2] // TW):
            oh = 4 * (th0 + r)
            _out_tile_row(M, f, r, TW, b[f], relu, S, k, ys[f, oh:oh + 4])


@kernel(lambda t: void(ro(t, 4), ro(t, 1), rw(t, 4), i64, i64))
def output_transform_nchw(M, b, y, th0, relu):
    """output_transform straight into NCHW y (N, F, OH, OW): each filter's
    tile row through a scratch of 4 plane rows, whose rows and columns
    inside y are then transposed out, so no output planes exist. Same
    values as output_transform then cropping the planes."""
    N, F, OH, OW = y.shape
    TW = (OW + 3) // 4
    k = _transform_consts(y.dtype)
    S = np.empty((4, 6, TW, N), dtype=y.dtype)
    out = np.empty((4, 4 * TW, N), dtype=y.dtype)
    tmp = np.empty((N, OW), dtype=y.dtype)
    for f in range(F):
        for r in range(M.shape[2] // TW):
            oh0 = 4 * (th0 + r)
            _out_tile_row(M, f, r, TW, b[f], relu, S, k, out)
            _crop_rows(out, 0, y, f, oh0, min(4, OH - oh0), tmp)


@njit(inline="always", **JIT_OPTIONS)
def _gout_tile_row(dY, dM, f, r, TW, K, k, acc):
    """dM[:, f] of tile row r of the band: A dY A^T per tile from the 4 rows
    dY (4, 4*TW, N); acc[n] += their sum per image (float64). K: scratch
    (6, 4*TW, N) for A dY."""
    N = dY.shape[2]
    h5, q25, e125, four, eight = k[0], k[1], k[2], k[3], k[4]
    d0, d1, d2, d3 = dY[0], dY[1], dY[2], dY[3]
    for w in range(4 * TW):
        for n in range(N):
            acc[n] += (d0[w, n] + d1[w, n]) + (d2[w, n] + d3[w, n])
        for n in range(N):
            K[0, w, n] = d0[w, n]
        for n in range(N):
            K[1, w, n] = (d0[w, n] + d1[w, n]) + (d2[w, n] + d3[w, n])
        for n in range(N):
            K[2, w, n] = (d0[w, n] - d1[w, n]) + (d2[w, n] - d3[w, n])
        for n in range(N):
            K[3, w, n] = d0[w, n] + h5 * d1[w, n] + q25 * d2[w, n] + e125 * d3[w, n]
        for n in range(N):
            K[4, w, n] = d0[w, n] - (d1[w, n] + d1[w, n]) + four * d2[w, n] \
                - eight * d3[w, n]
        for n in range(N):
            K[5, w, n] = d3[w, n]
    for i in range(6):
        Ki = K[i]
        for tw in range(TW):
            p = r * TW + tw
            w = 4 * tw
            c0, c1, c2, c3 = Ki[w], Ki[w + 1], Ki[w + 2], Ki[w + 3]
            for n in range(N):
                dM[6 * i, f, p, n] = c0[n]
            for n in range(N):
                dM[6 * i + 1, f, p, n] = (c0[n] + c1[n]) + (c2[n] + c3[n])
            for n in range(N):
                dM[6 * i + 2, f, p, n] = (c0[n] - c1[n]) + (c2[n] - c3[n])
            for n in range(N):
                dM[6 * i + 3, f, p, n] = c0[n] + h5 * c1[n] + q25 * c2[n] + e125 * c3[n]
            for n in range(N):
                dM[6 * i + 4, f, p, n] = c0[n] - (c1[n] + c1[n]) + four * c2[n] \
                    - eight * c3[n]
            for n in range(N):
                dM[6 * i + 5, f, p, n] = c3[n]


@kernel(lambda t: void(ro(t, 4), rw(t, 4), rw(types.float64, 1), i64))
def grad_output_transform(dys, dM, db, th0):
    """dM[:, f, p, n] = A dY A^T for the band of tile rows th0.. that dM
    (36, F', rows*TW, N) holds (F' >= F: the driver pads it by a row), dY
    the 4x4 tile of the packed gradient dys (F, 4*TH, 4*TW, N) (zero past
    the edge), and db[f] += the band's sum of dy[:, f] (float64)."""
    F, _, OW4, N = dys.shape
    TW = OW4 // 4
    k = _transform_consts(dM.dtype)
    K = np.empty((6, OW4, N), dtype=dM.dtype)   # A dY for one tile row
    # db in float64 lanes: a scalar accumulator is one serial chain of adds
    acc = np.zeros(N, dtype=np.float64)
    for f in range(F):
        acc[:] = 0
        for r in range(dM.shape[2] // TW):
            oh = 4 * (th0 + r)
            _gout_tile_row(dys[f, oh:oh + 4], dM, f, r, TW, K, k, acc)
        db[f] += acc.sum()


@kernel(lambda t: void(ro(t, 4), rw(t, 4), rw(types.float64, 1), i64))
def grad_output_transform_nchw(dy, dM, db, th0):
    """grad_output_transform straight from NCHW dy (N, F, OH, OW): each
    filter's 4 rows of a tile row packed into a scratch first (zero past the
    edge), so no output-gradient planes exist. Same values as packing the
    planes, then grad_output_transform."""
    N, F, OH, OW = dy.shape
    TW = (OW + 3) // 4
    k = _transform_consts(dM.dtype)
    K = np.empty((6, 4 * TW, N), dtype=dM.dtype)
    dY = np.empty((4, 4 * TW, N), dtype=dM.dtype)
    tmp = np.empty((N, OW), dtype=dM.dtype)
    acc = np.zeros(N, dtype=np.float64)
    for f in range(F):
        acc[:] = 0
        for r in range(dM.shape[2] // TW):
            _pack_rows(dy, f, 4 * (th0 + r), 0, dY, tmp)
            _gout_tile_row(dY, dM, f, r, TW, K, k, acc)
        db[f] += acc.sum()


@kernel(lambda t: void(ro(t, 4), rw(t, 4), rw(t, 4), i64, i64, i64, i64))
def grad_input_transform(dV, dx, carry, th0, PT, PL, TH):
    """dd = B dV B^T per tile for the band of tile rows th0.. that dV
    (36, C, rows*TW, N) holds, scatter-added into x's padded planes (PT on
    top, PL on the left, TH tile rows; tiles overlap by two rows and
    columns), straight into NCHW dx (N, C, H, W): each channel's tile row
    is added into a scratch of its 6 plane rows, whose first two hold what
    the tile row above added to them (carry (C, 2, WT, N), kept by the
    caller between bands, read from th0 > 0 on); the rows no later tile row
    reaches (4, or all 6 for the last) are then final and transposed out,
    so no padded planes exist."""
    N, C, H, W = dx.shape
    WT = carry.shape[2]
    TW = (WT - 2) // 4
    k = np.empty(3, dtype=dx.dtype)
    k[0], k[1], k[2] = 0.5, 1.5, 2.5
    h5, h15, h25 = k[0], k[1], k[2]
    E = np.empty((6, WT, N), dtype=dx.dtype)     # dV B for one tile row
    D = np.empty((6, WT, N), dtype=dx.dtype)     # its 6 plane rows
    tmp = np.empty((N, W), dtype=dx.dtype)
    for c in range(C):
        for r in range(dV.shape[2] // TW):
            th = th0 + r
            if th == 0:
                D[:2] = 0
            else:
                D[:2] = carry[c]
            D[2:] = 0
            E[:] = 0
            for i in range(6):
                Ei = E[i]
                for tw in range(TW):
                    p = r * TW + tw
                    w = 4 * tw
                    v0, v1, v2 = dV[6 * i, c, p], dV[6 * i + 1, c, p], dV[6 * i + 2, c, p]
                    v3, v4, v5 = dV[6 * i + 3, c, p], dV[6 * i + 4, c, p], dV[6 * i + 5, c, p]
                    g0, g1, g2 = Ei[w], Ei[w + 1], Ei[w + 2]
                    g3, g4, g5 = Ei[w + 3], Ei[w + 4], Ei[w + 5]
                    for n in range(N):
                        g0[n] += v0[n]
                    for n in range(N):
                        g1[n] += (v2[n] - v1[n]) - h15 * v0[n] - (v3[n] + v3[n]) \
                            + h5 * v4[n] + v5[n]
                    for n in range(N):
                        g2[n] += h5 * v1[n] - (v0[n] + v0[n]) - h25 * v2[n] - v3[n] - v4[n] \
                            - h15 * v5[n]
                    for n in range(N):
                        g3[n] += h15 * v0[n] + h25 * v1[n] + h5 * v2[n] + (v3[n] + v3[n]) \
                            - h5 * v4[n] - (v5[n] + v5[n])
                    for n in range(N):
                        g4[n] += (v0[n] + v1[n]) + (v2[n] + v3[n]) + v4[n] + h15 * v5[n]
                    for n in range(N):
                        g5[n] += v5[n]
            e0, e1, e2, e3, e4, e5 = E[0], E[1], E[2], E[3], E[4], E[5]
            p0, p1, p2, p3, p4, p5 = D[0], D[1], D[2], D[3], D[4], D[5]
            for w in range(WT):
                for n in range(N):
                    p0[w, n] += e0[w, n]
                for n in range(N):
                    p1[w, n] += (e2[w, n] - e1[w, n]) - h15 * e0[w, n] - (e3[w, n] + e3[w, n]) \
                        + h5 * e4[w, n] + e5[w, n]
                for n in range(N):
                    p2[w, n] += h5 * e1[w, n] - (e0[w, n] + e0[w, n]) - h25 * e2[w, n] \
                        - e3[w, n] - e4[w, n] - h15 * e5[w, n]
                for n in range(N):
                    p3[w, n] += h15 * e0[w, n] + h25 * e1[w, n] + h5 * e2[w, n] \
                        + (e3[w, n] + e3[w, n]) - h5 * e4[w, n] - (e5[w, n] + e5[w, n])
                for n in range(N):
                    p4[w, n] += (e0[w, n] + e1[w, n]) + (e2[w, n] + e3[w, n]) + e4[w, n] \
                        + h15 * e5[w, n]
                for n in range(N):
                    p5[w, n] += e5[w, n]
            done = 6 if th == TH - 1 else 4
            if done == 4:
                carry[c] = D[4:]
            # plane rows 4th + i, i < done, are x's rows 4th + i - PT
            i0 = max(0, PT - 4 * th)
            i1 = min(done, H + PT - 4 * th)
            if i1 > i0:
                _crop_rows(D[i0:i1], PL, dx, c, 4 * th + i0 - PT, i1 - i0, tmp)


@kernel(lambda t: void(ro(t, 4), rw(t, 3)))
def weight_transform(w, U):
    """U[6i+j, f, c] = (G g G^T)[i, j] for g = w[f, c] (3x3; w (F, Cg, 3, 3)),
    in float64 and rounded once. One filter at a time through a (36, Cg)
    scratch, so U is written in rows: storing the 36 elements of one (f, c)
    strides by F*Cg, which at power-of-two sizes keeps hitting one cache set."""
    F, Cg = w.shape[0], w.shape[1]
    third, fifteenth = 1.0 / 3.0, 1.0 / 15.0
    T = np.empty((6, 3), dtype=np.float64)          # G g
    Uf = np.empty((36, Cg), dtype=np.float64)
    for f in range(F):
        for c in range(Cg):
            for b in range(3):
                g0, g1, g2 = np.float64(w[f, c, 0, b]), np.float64(w[f, c, 1, b]), \
                    np.float64(w[f, c, 2, b])
                T[0, b] = g0
                T[1, b] = (g0 + g1 + g2) * third
                T[2, b] = (g1 - g0 - g2) * third
                T[3, b] = -(16.0 * g0 + 8.0 * g1 + 4.0 * g2) * fifteenth
                T[4, b] = (g0 - 2.0 * g1 + 4.0 * g2) * fifteenth
                T[5, b] = g2
            for i in range(6):
                g0, g1, g2 = T[i, 0], T[i, 1], T[i, 2]
                Uf[6 * i, c] = g0
                Uf[6 * i + 1, c] = (g0 + g1 + g2) * third
                Uf[6 * i + 2, c] = (g1 - g0 - g2) * third
                Uf[6 * i + 3, c] = -(16.0 * g0 + 8.0 * g1 + 4.0 * g2) * fifteenth
                Uf[6 * i + 4, c] = (g0 - 2.0 * g1 + 4.0 * g2) * fifteenth
                Uf[6 * i + 5, c] = g2
        for k in range(36):
            for c in range(Cg):
                U[k, f, c] = Uf[k, c]


@kernel(lambda t: void(ro(t, 3), rw(t, 4)))
def weight_grad_transform(dU, dw):
    """dw[f, c] = G^T dU[:, f, c] G, dU[6i+j] the (i, j) element: the
    adjoint of weight_transform, in float64 and rounded once; dU read in
    rows of one filter, as there."""
    F, Cg = dw.shape[0], dw.shape[1]
    third, fifteenth = 1.0 / 3.0, 1.0 / 15.0
    T = np.empty((3, 6), dtype=np.float64)         # G^T dU
    dUf = np.empty((36, Cg), dtype=np.float64)
    for f in range(F):
        for k in range(36):
            for c in range(Cg):
                dUf[k, c] = dU[k, f, c]
        for c in range(Cg):
            for j in range(6):
                d0, d1, d2 = dUf[j, c], dUf[6 + j, c], dUf[12 + j, c]
                d3, d4, d5 = dUf[18 + j, c], dUf[24 + j, c], dUf[30 + j, c]
                T[0, j] = d0 + (d1 - d2) * third + (d4 - 16.0 * d3) * fifteenth
                T[1, j] = (d1 + d2) * third - (8.0 * d3 + 2.0 * d4) * fifteenth
                T[2, j] = (d1 - d2) * third + (4.0 * d4 - 4.0 * d3) * fifteenth + d5
            for a in range(3):
                d0, d1, d2, d3, d4, d5 = T[a, 0], T[a, 1], T[a, 2], T[a, 3], T[a, 4], T[a, 5]
                dw[f, c, a, 0] = d0 + (d1 - d2) * third + (d4 - 16.0 * d3) * fifteenth
                dw[f, c, a, 1] = (d1 + d2) * third - (8.0 * d3 + 2.0 * d4) * fifteenth
                dw[f, c, a, 2] = (d1 - d2) * third + (4.0 * d4 - 4.0 * d3) * fifteenth + d5



def products(U, V, M):
    """M[k, g*Fg + f] = sum over c of U[k, g*Fg + f, c] V[k, g*Cg + c] for a
    band: U (36, F, Cg), V (36, C, rows*TW, N), M (36, F', rows*TW, N) with
    F' >= F (rows past F untouched), G = C / Cg groups; one 4-D np.matmul
    over (36, G, Fg, Cg) @ (36, G, Cg, L).
    Not compiled: a loop nest here would not hold its sums in registers
    the way cy_winograd's register tiles do, and BLAS beats it."""
    F, Cg = U.shape[1], U.shape[2]
    C, L = V.shape[1], V.shape[2] * V.shape[3]
    G = C // Cg
    out = M[:, :F].reshape(36, G, F // G, L)     # a view: M[k] is contiguous
    if not np.may_share_memory(out, M):
        raise ValueError("products: M must be C-contiguous (36, F', rows*TW, N)")
    np.matmul(U.reshape(36, G, F // G, Cg), V.reshape(36, G, Cg, L), out=out)


# reassociation and contraction (FMA) for weight_products' sums only: they
# let LLVM keep vector partial sums along the lanes (a few terms each),
# added in a tree at the end
_SUMS = dict(JIT_OPTIONS, fastmath={"reassoc", "contract"})


@njit([void(ro(t, 4), ro(t, 4), rw(types.float64, 3)) for t in FLOATS], **_SUMS)
def weight_products(dM, V, dU):
    """dU[k, g*Fg + f, c] += sum over l of dM[k, g*Fg + f, l] V[k, g*Cg + c, l]
    for a band (the backward's dU = dM V^T): dM (36, F', rows*TW, N),
    F' >= F (rows past F unread), V (36, C, rows*TW, N), dU (36, F, Cg) in
    float64, accumulated into
    across bands and chunks; G = C / Cg groups. Blocks of 4 filters by 4
    channels, the 16 sums along the contiguous lanes in the arrays' float
    (vector partial sums, reassociated) over segments of at most 128 lanes,
    each segment's sums added in float64: one float32 sum over all the
    lanes (BLAS's) is what kept the Winograd dw furthest from the direct
    convolution's, and vector lanes summing a whole band (22 terms each
    over 176 lanes) still left the dw of one random batch of 130 at 1.23e-4
    of loops'. Filters past whole blocks: one at a time."""
    F, Cg = dU.shape[1], dU.shape[2]
    C, L = V.shape[1], V.shape[2] * V.shape[3]
    G = C // Cg
    Fg = F // G
    m = dM.reshape((36, dM.shape[1], L))
    v = V.reshape((36, C, L))
    zero = dM.dtype.type(0)
    # lanes in balanced segments of at most 128, each segment's sums added to
    # dU on its own: a vector lane then sums at most 16 terms (see the
    # docstring)
    parts = max(1, (L + 127) // 128)
    seg = max(8, ((L + parts - 1) // parts + 7) // 8 * 8)
    for k in range(36):
        for g in range(G):
            f, fe, c0 = g * Fg, (g + 1) * Fg, g * Cg
            while f + 4 <= fe:
                a0, a1, a2, a3 = m[k, f], m[k, f + 1], m[k, f + 2], m[k, f + 3]
                du0, du1, du2, du3 = dU[k, f], dU[k, f + 1], dU[k, f + 2], dU[k, f + 3]
                c = 0
                while c + 4 <= Cg:
                    b0, b1 = v[k, c0 + c], v[k, c0 + c + 1]
                    b2, b3 = v[k, c0 + c + 2], v[k, c0 + c + 3]
                    for l0 in range(0, L, seg):
                        s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
                        s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
                        for l in range(l0, min(L, l0 + seg)):
                            x0, x1, x2, x3 = a0[l], a1[l], a2[l], a3[l]
                            y0, y1, y2, y3 = b0[l], b1[l], b2[l], b3[l]
                            s00 += x0 * y0
                            s01 += x0 * y1
                            s02 += x0 * y2
                            s03 += x0 * y3
                            s10 += x1 * y0
                            s11 += x1 * y1
                            s12 += x1 * y2
                            s13 += x1 * y3
                            s20 += x2 * y0
                            s21 += x2 * y1
                            s22 += x2 * y2
                            s23 += x2 * y3
                            s30 += x3 * y0
                            s31 += x3 * y1
                            s32 += x3 * y2
                            s33 += x3 * y3
                        du0[c] += s00
                        du0[c + 1] += s01
                        du0[c + 2] += s02
                        du0[c + 3] += s03
                        du1[c] += s10
                        du1[c + 1] += s11
                        du1[c + 2] += s12
                        du1[c + 3] += s13
                        du2[c] += s20
                        du2[c + 1] += s21
                        du2[c + 2] += s22
                        du2[c + 3] += s23
                        du3[c] += s30
                        du3[c + 1] += s31
                        du3[c + 2] += s32
                        du3[c + 3] += s33
                    c += 4
                for c in range(c, Cg):          # channels past whole blocks
                    b0 = v[k, c0 + c]
                    for l0 in range(0, L, seg):
                        s00 = s10 = s20 = s30 = zero
                        for l in range(l0, min(L, l0 + seg)):
                            y0 = b0[l]
                            s00 += a0[l] * y0
                            s10 += a1[l] * y0
                            s20 += a2[l] * y0
                            s30 += a3[l] * y0
                        du0[c] += s00
                        du1[c] += s10
                        du2[c] += s20
                        du3[c] += s30
                f += 4
            for f in range(f, fe):
                a0, du0 = m[k, f], dU[k, f]
                for c in range(Cg):
                    b0 = v[k, c0 + c]
                    for l0 in range(0, L, seg):
                        s00 = zero
                        for l in range(l0, min(L, l0 + seg)):
                            s00 += a0[l] * b0[l]
                        du0[c] += s00

@njit(inline="always", **JIT_OPTIONS)
def _pool_rows(src, y, argmax, f, ph0, nph, OW, tv, ta):
    """Pooled rows ph0 .. ph0+nph-1 of filter f into y, argmax (N, F, PH,
    PW) from src, the plane's rows from 2*ph0 on ((rows, WS, N)); tv, ta:
    (PW, N) scratch."""
    N, PW = y.shape[0], y.shape[3]
    zero = src.dtype.type(0)
    for ph in range(ph0, ph0 + nph):
        for pw in range(PW):
            r00 = src[2 * (ph - ph0), 2 * pw]
            r01 = src[2 * (ph - ph0), 2 * pw + 1]
            r10 = src[2 * (ph - ph0) + 1, 2 * pw]
            r11 = src[2 * (ph - ph0) + 1, 2 * pw + 1]
            bv = tv[pw]
            ba = ta[pw]
            j = 2 * ph * OW + 2 * pw
            jw = j + OW
            for n in range(N):
                b = r00[n]
                a = j
                v = r01[n]
                t = (v > b) | ((v != v) & (b == b))
                b = v if t else b
                a = j + 1 if t else a
                v = r10[n]
                t = (v > b) | ((v != v) & (b == b))
                b = v if t else b
                a = jw if t else a
                v = r11[n]
                t = (v > b) | ((v != v) & (b == b))
                b = v if t else b
                a = jw + 1 if t else a
                stop = not b > zero
                num = b == b
                a = (-j - 1 if num else -a - 1) if stop else a
                bv[n] = zero if stop and num else b
                ba[n] = a
        for n in range(N):
            yr = y[n, f, ph]
            ar = argmax[n, f, ph]
            for pw in range(PW):
                yr[pw] = tv[pw, n]
                ar[pw] = ta[pw, n]


@kernel(lambda t: void(ro(t, 4), rw(t, 4), rw(i32, 4), i64))
def pool_relu_2x2(ys, y, argmax, OW):
    """The fused conv+ReLU+max-pool's 2x2 stride-2 pooling straight from the
    output planes ys (F, 4*TH, 4*TW, N): y[n, f, ph, pw] = relu(max of
    ys[f, 2ph:2ph+2, 2pw:2pw+2, n]) with the argmax and ReLU marks of
    numba_pool's fused pooling (row-major taps, strict >, the first NaN
    wins; flat index ih*OW + iw; a stopped window -j - 1 with j its first
    element and the value +0, or -a - 1 for a NaN, kept). Each output row
    over the lanes into an (PW, N) scratch, then transposed into y's rows."""
    N, F, PH, PW = y.shape
    tv = np.empty((PW, N), dtype=ys.dtype)
    ta = np.empty((PW, N), dtype=np.int32)
    for f in range(F):
        _pool_rows(ys[f], y, argmax, f, 0, PH, OW, tv, ta)


@kernel(lambda t: void(ro(t, 4), ro(t, 1), rw(t, 4), rw(i32, 4), i64, i64))
def output_pool_relu_2x2(M, b, y, argmax, th0, OW):
    """output_transform (no relu) then pool_relu_2x2, fused: the pooled rows
    2*th, 2*th+1 of y and argmax (N, F, PH, PW) for each tile row th of the
    band th0.. that M (36, F', rows*TW, N) holds, one filter's tile row at
    a time through a scratch of 4 plane rows that stays in cache - the conv
    output never reaches memory. Same values, argmax and marks as the two
    kernels in turn."""
    N, F, PH, PW = y.shape
    TW = (OW + 3) // 4
    k = _transform_consts(y.dtype)
    S = np.empty((4, 6, TW, N), dtype=y.dtype)
    out = np.empty((4, 4 * TW, N), dtype=y.dtype)
    tv = np.empty((PW, N), dtype=y.dtype)
    ta = np.empty((PW, N), dtype=np.int32)
    for f in range(F):
        for r in range(M.shape[2] // TW):
            ph0 = 2 * (th0 + r)
            nph = min(2, PH - ph0)
            if nph > 0:
                _out_tile_row(M, f, r, TW, b[f], False, S, k, out)
                _pool_rows(out, y, argmax, f, ph0, nph, OW, tv, ta)


@njit(inline="always", **JIT_OPTIONS)
def _unpool_rows(dy, argmax, f, ph0, nph, OW, dst, tg, ta):
    """The gradient planes' rows 2*ph0 .. 2*(ph0+nph)-1 of filter f into
    dst, the plane's rows from 2*ph0 on ((rows, WS, N)), from pooled rows
    ph0.. of dy and argmax (N, F, PH, PW): every tap of every 2x2 window
    (its value or 0) and zeros past the windows' columns; tg, ta: (PW, N)
    scratch."""
    N, PW = dy.shape[0], dy.shape[3]
    zero = dst.dtype.type(0)
    for ph in range(ph0, ph0 + nph):
        for n in range(N):
            gr = dy[n, f, ph]
            ar = argmax[n, f, ph]
            for pw in range(PW):
                tg[pw, n] = gr[pw]
                ta[pw, n] = ar[pw]
        for pw in range(PW):
            g = tg[pw]
            at = ta[pw]
            j = 2 * ph * OW + 2 * pw
            for di in range(2):
                for dj in range(2):
                    d = dst[2 * (ph - ph0) + di, 2 * pw + dj]
                    tap = j + di * OW + dj
                    for n in range(N):
                        a = at[n]
                        killed = a < 0
                        p = -a - 1 if killed else a
                        # max_relu_pool2d_backward's += on a zeroed plane
                        v = zero + (g[n] * zero if killed else g[n])
                        d[n] = v if p == tap else zero
        for r in range(2 * (ph - ph0), 2 * (ph - ph0) + 2):
            dst[r, 2 * PW:] = 0


@kernel(lambda t: void(ro(t, 4), ro(i32, 4), rw(t, 4), i64, i64))
def unpool_relu(dy, argmax, dys, OW, two_by_two):
    """The backward of a fused max pooling after the ReLU into the
    output-gradient planes dys (F, 4*TH, 4*TW, N), with no NCHW gradient
    between: per pooled output dys[f, ih, iw, n] += dy[n, f, ph, pw] at its
    argmax a = ih*OW + iw, or dy * 0 at -a - 1 for a window the ReLU
    stopped, on zeroed planes - numba_pool's fused backward, its sums in
    its order. two_by_two: 2x2 stride-2 windows (none overlap), every tap
    written once (its value or 0) from a row of dy and argmax gathered
    into scratch."""
    N, F, PH, PW = dy.shape
    zero = dys.dtype.type(0)
    if not two_by_two:
        dys[:] = 0
        for f in range(F):
            for ph in range(PH):
                for pw in range(PW):
                    for n in range(N):
                        a = argmax[n, f, ph, pw]
                        g = dy[n, f, ph, pw]
                        if a < 0:
                            a = -a - 1
                            g = g * zero
                        dys[f, a // OW, a % OW, n] += g
        return
    tg = np.empty((PW, N), dtype=dys.dtype)
    ta = np.empty((PW, N), dtype=np.int32)
    for f in range(F):
        _unpool_rows(dy, argmax, f, 0, PH, OW, dys[f], tg, ta)
        dys[f, 2 * PH:] = 0


@kernel(lambda t: void(ro(t, 4), ro(i32, 4), rw(t, 4), rw(types.float64, 1), i64, i64))
def grad_output_unpool_2x2(dy, argmax, dM, db, th0, OW):
    """unpool_relu (2x2 stride-2 windows) then grad_output_transform,
    fused: dM for the band of tile rows th0.. that dM (36, F', rows*TW, N)
    holds and db[f] += the band's sum of the conv's dy, straight from the
    pooled gradient dy and argmax (N, F, PH, PW), one filter's tile row at a
    time through a scratch of 4 plane rows - no output-gradient planes.
    Same values as the two kernels in turn."""
    N, F, PH, PW = dy.shape
    TW = (OW + 3) // 4
    k = _transform_consts(dM.dtype)
    K = np.empty((6, 4 * TW, N), dtype=dM.dtype)
    dY = np.empty((4, 4 * TW, N), dtype=dM.dtype)
    tg = np.empty((PW, N), dtype=dM.dtype)
    ta = np.empty((PW, N), dtype=np.int32)
    acc = np.zeros(N, dtype=np.float64)
    for f in range(F):
        acc[:] = 0
        for r in range(dM.shape[2] // TW):
            ph0 = 2 * (th0 + r)
            nph = max(0, min(2, PH - ph0))
            _unpool_rows(dy, argmax, f, ph0, nph, OW, dY, tg, ta)
            dY[2 * nph:] = 0
            _gout_tile_row(dY, dM, f, r, TW, K, k, acc)
        db[f] += acc.sum()
