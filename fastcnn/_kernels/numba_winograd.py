"""Numba kernels for Winograd F(2x2, 3x3): 3x3 stride-1 convolution with
2.25x fewer multiplications than im2col (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2015).

    y_tile (2x2) = A^T [ (G g G^T) (.) (B^T d B) ] A      d: 4x4 input tile

The sum over input channels of the 16 element-wise products is 16 matmuls
(``np.matmul`` on stacks, called by the adapter); these kernels do the tile
transforms around them. The backward pass is the exact adjoint of the
forward: dM = A dY A^T, dV = U^T dM, dd = B dV B^T (scatter-added, tiles
overlap by 2), dU = dM V^T, dg = G^T dU G. The weight transforms (G g G^T,
G^T dU G) are tiny and done in NumPy by the adapter.

Shapes: xp (N, C, HT, WT) zero-padded input, HT >= 2*TH+2, WT >= 2*TW+2;
TH = ceil(OH/2), TW = ceil(OW/2) tiles per plane; T = N*TH*TW tiles,
t = (n*TH + th)*TW + tw; V (16, C, T), M/dM (16, F, T), element
(xi, nu) of a 4x4 tile at index 4*xi + nu. This module deliberately chooses
nothing: the adapter decides when Winograd applies.
"""
import numpy as np
from numba import njit, prange

from fastcnn._kernels.numba_common import JIT_OPTIONS, i64, kernel, ro, rw, void


@njit(inline="always", **JIT_OPTIONS)
def _bt(d0, d1, d2, d3):
    """B^T times a 4-vector."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(inline="always", **JIT_OPTIONS)
def _b(v0, v1, v2, v3):
    """B times a 4-vector (the adjoint of _bt)."""
    return v0, v1 - v2 + v3, v2 + v1 - v0, -v3


@njit(inline="always", **JIT_OPTIONS)
def _at(m0, m1, m2, m3):
    """A^T times a 4-vector: two outputs."""
    return m0 + m1 + m2, m1 - m2 - m3


@njit(inline="always", **JIT_OPTIONS)
def _a(g0, g1):
    """A times a 2-vector (the adjoint of _at)."""
    return g0, g0 + g1, g0 - g1, -g1


@njit(inline="always", **JIT_OPTIONS)
def _add4(row, w, v):
    """row[w:w+4] += v (a 4-tuple)."""
    row[w] += v[0]
    row[w + 1] += v[1]
    row[w + 2] += v[2]
    row[w + 3] += v[3]


@kernel(lambda t: void(ro(t, 4), rw(t, 3), i64, i64))
def input_transform(xp, V, TH, TW):
    """V[:, c, t] = B^T d B for the 4x4 tile d at rows 2th.., cols 2tw..."""
    N, C, _, _ = xp.shape
    for i in prange(N * C):
        n = i // C
        c = i - n * C
        xc = xp[n, c]
        for th in range(TH):
            for tw in range(TW):
                t = (n * TH + th) * TW + tw
                h, w = 2 * th, 2 * tw
                # columns of B^T d (one per input column), then B^T along rows
                c0 = _bt(xc[h, w], xc[h + 1, w], xc[h + 2, w], xc[h + 3, w])
                c1 = _bt(xc[h, w + 1], xc[h + 1, w + 1], xc[h + 2, w + 1], xc[h + 3, w + 1])
                c2 = _bt(xc[h, w + 2], xc[h + 1, w + 2], xc[h + 2, w + 2], xc[h + 3, w + 2])
                c3 = _bt(xc[h, w + 3], xc[h + 1, w + 3], xc[h + 2, w + 3], xc[h + 3, w + 3])
                # unrolled: indexing a tuple with a loop variable spills it to memory
                V[0, c, t], V[1, c, t], V[2, c, t], V[3, c, t] = _bt(c0[0], c1[0], c2[0], c3[0])
                V[4, c, t], V[5, c, t], V[6, c, t], V[7, c, t] = _bt(c0[1], c1[1], c2[1], c3[1])
                V[8, c, t], V[9, c, t], V[10, c, t], V[11, c, t] = _bt(c0[2], c1[2], c2[2], c3[2])
                V[12, c, t], V[13, c, t], V[14, c, t], V[15, c, t] = _bt(c0[3], c1[3], c2[3], c3[3])


@kernel(lambda t: void(ro(t, 3), ro(t, 1), rw(t, 4), i64, i64))
def output_transform(M, b, y, TH, TW):
    """y 2x2 tile = A^T m A + b, cropped at the bottom/right edge."""
    N, F, OH, OW = y.shape
    for i in prange(N * F):
        n = i // F
        f = i - n * F
        bf = b[f]
        for th in range(TH):
            for tw in range(TW):
                t = (n * TH + th) * TW + tw
                # A^T down each column nu, then A^T along the two rows
                k0 = _at(M[0, f, t], M[4, f, t], M[8, f, t], M[12, f, t])
                k1 = _at(M[1, f, t], M[5, f, t], M[9, f, t], M[13, f, t])
                k2 = _at(M[2, f, t], M[6, f, t], M[10, f, t], M[14, f, t])
                k3 = _at(M[3, f, t], M[7, f, t], M[11, f, t], M[15, f, t])
                top = _at(k0[0], k1[0], k2[0], k3[0])
                bot = _at(k0[1], k1[1], k2[1], k3[1])
                oh, ow = 2 * th, 2 * tw
                y[n, f, oh, ow] = top[0] + bf
                if ow + 1 < OW:
                    y[n, f, oh, ow + 1] = top[1] + bf
                if oh + 1 < OH:
                    y[n, f, oh + 1, ow] = bot[0] + bf
                    if ow + 1 < OW:
                        y[n, f, oh + 1, ow + 1] = bot[1] + bf


@kernel(lambda t: void(ro(t, 4), rw(t, 3), rw(t, 1), i64, i64))
def grad_output_transform(dy, dM, db, TH, TW):
    """dM[:, f, t] = A dY A^T (dY: the 2x2 tile of dy, zero past the edge)
    and db[f] = sum of dy[:, f]. Parallel over f: each f owns its rows."""
    N, F, OH, OW = dy.shape
    zero = np.zeros(1, dtype=db.dtype)[0]   # dy's zero (0.0 would be float64)
    for f in prange(F):
        acc = np.zeros(OW, dtype=db.dtype)   # partial sums, one per column
        for n in range(N):
            for oh in range(OH):
                for ow in range(OW):
                    acc[ow] += dy[n, f, oh, ow]
            for th in range(TH):
                for tw in range(TW):
                    t = (n * TH + th) * TW + tw
                    oh, ow = 2 * th, 2 * tw
                    right, down = ow + 1 < OW, oh + 1 < OH
                    g00 = dy[n, f, oh, ow]
                    g01 = dy[n, f, oh, ow + 1] if right else zero
                    g10 = dy[n, f, oh + 1, ow] if down else zero
                    g11 = dy[n, f, oh + 1, ow + 1] if right and down else zero
                    k0 = _a(g00, g10)      # A down column 0 and column 1
                    k1 = _a(g01, g11)
                    dM[0, f, t], dM[1, f, t], dM[2, f, t], dM[3, f, t] = _a(k0[0], k1[0])
                    dM[4, f, t], dM[5, f, t], dM[6, f, t], dM[7, f, t] = _a(k0[1], k1[1])
                    dM[8, f, t], dM[9, f, t], dM[10, f, t], dM[11, f, t] = _a(k0[2], k1[2])
                    dM[12, f, t], dM[13, f, t], dM[14, f, t], dM[15, f, t] = _a(k0[3], k1[3])
        db[f] = acc.sum()


@kernel(lambda t: void(ro(t, 3), rw(t, 4), i64, i64, i64, i64, i64, i64))
def grad_input_transform(dV, dx, TH, TW, PT, PL, HT, WT):
    """dd = B dV B^T per tile, scatter-added into a private padded plane per
    (n, c) (tiles overlap by two rows and columns), then cropped into dx."""
    N, C, H, W = dx.shape
    for i in prange(N * C):
        n = i // C
        c = i - n * C
        plane = np.zeros((HT, WT), dtype=dx.dtype)
        for th in range(TH):
            for tw in range(TW):
                t = (n * TH + th) * TW + tw
                # B down each column nu of dV, then B along each row
                k0 = _b(dV[0, c, t], dV[4, c, t], dV[8, c, t], dV[12, c, t])
                k1 = _b(dV[1, c, t], dV[5, c, t], dV[9, c, t], dV[13, c, t])
                k2 = _b(dV[2, c, t], dV[6, c, t], dV[10, c, t], dV[14, c, t])
                k3 = _b(dV[3, c, t], dV[7, c, t], dV[11, c, t], dV[15, c, t])
                h, w = 2 * th, 2 * tw
                _add4(plane[h], w, _b(k0[0], k1[0], k2[0], k3[0]))
                _add4(plane[h + 1], w, _b(k0[1], k1[1], k2[1], k3[1]))
                _add4(plane[h + 2], w, _b(k0[2], k1[2], k2[2], k3[2]))
                _add4(plane[h + 3], w, _b(k0[3], k1[3], k2[3], k3[3]))
        for ih in range(H):
            for iw in range(W):
                dx[n, c, ih, iw] = plane[ih + PT, iw + PL]
