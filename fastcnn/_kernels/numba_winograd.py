"""Numba kernels for Winograd F(2x2, 3x3): 3x3 stride-1 convolution with
2.25x fewer multiplications than im2col (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2015).

    y_tile (2x2) = A^T [ (G g G^T) (.) (B^T d B) ] A      d: 4x4 input tile

The sum over input channels of the 16 element-wise products is 16 matmuls
M[k] = U[k] @ V[k] (``np.matmul`` on stacks, called by the driver
``fastcnn.backends._winograd``); these
kernels do the tile transforms around them. The backward pass is the exact
adjoint of the forward: dM = A dY A^T, dU = dM V^T, dV = U^T dM,
dd = B dV B^T (scatter-added: tiles overlap by 2), dg = G^T dU G. dx is thus
the same 'full' correlation with the rotated weights that a second forward
Winograd would compute, at the same cost, and dw comes out of dM for one
more matmul (205 MFLOP on the MNIST conv2 instead of im2col's 462). The
weight transforms (G g G^T, G^T dU G) are small kernels at the end
of this module.

Layout: the batch is the innermost axis of every tile array (tile index
t = p*N + n, p = th*TW + tw), so each transform is a handful of adds over
rows of N contiguous lanes, which LLVM vectorises. Two things it needs, both
measured on the MNIST conv2 (input transform, one thread: 0.28 ms here,
4.7 ms with the whole 4x4 tile in one loop body):
  * one store per innermost loop (or a few from one source): with 16 loads
    and 16 stores in one body the runtime alias checks exceed LLVM's budget
    and the loop stays scalar - so each transform is two separable passes
    (rows, then columns) through a small scratch;
  * the innermost index is the bare loop variable: ``a[i, j, n]``, never
    ``a[o + n]`` (Numba's negative-index wraparound on a computed index
    blocks vectorisation).
NCHW arrays are transposed to and from planes with the batch innermost
(pack_planes, crop_planes) in one pass each. The transforms work on bands
of whole tile rows (th0.. as many rows as the band array holds), so the
driver can keep a band's products in cache between matmul and transform.

Non-finite inputs: the transforms subtract inputs, so an inf can give NaN
where the direct sum is +-inf.

Threads: every kernel is single-threaded; the driver runs chunks of the
batch concurrently (``fastcnn.backends._winograd``).

Shapes: x (N, C, H, W), y/dy (N, F, OH, OW); TH = ceil(OH/2), TW = ceil(OW/2)
tiles per plane, P = TH*TW; padded input planes xs (C, HT, WT, N) with
HT = 2*TH+2 >= H+PT+PB, WT = 2*TW+2; output planes ys/dys (F, 2*TH, 2*TW, N);
band arrays V/dV (16, C, rows*TW, N), M/dM (16, F, rows*TW, N); element
(i, j) of a 4x4 tile at k = 4*i + j. Padding top PT, left PL (any: the
planes hold every padded row and column). This module deliberately chooses
nothing: the driver decides when Winograd applies and how wide a band is.
"""
import numpy as np
from numba import types

from fastcnn._kernels.numba_common import i64, kernel, ro, rw, void


@kernel(lambda t: void(ro(t, 4), rw(t, 4), i64, i64))
def pack_planes(x, xs, PT, PL):
    """xs[c, ih+PT, iw+PL, n] = x[n, c, ih, iw], zero elsewhere: NCHW to
    zero-padded planes with the batch innermost. One pass over whole planes:
    transposing band by band inside the transforms touched every plane's
    cache lines once per band (MNIST conv2, one thread: 2.7 ms for dy's side
    of the backward that way, 0.7 + 0.85 ms as pack + transform)."""
    N, C, H, W = x.shape
    for c in range(C):
        plane = xs[c]
        plane[:] = 0
        for ih in range(H):         # writes contiguous; the strided reads stay in L2
            for iw in range(W):
                for n in range(N):
                    plane[ih + PT, iw + PL, n] = x[n, c, ih, iw]


@kernel(lambda t: void(ro(t, 4), rw(t, 4), i64))
def input_transform(xs, V, th0):
    """V[:, c, p, n] = B^T d B for the band of tile rows th0.. that V
    (16, C, rows*TW, N) holds; d is the 4x4 tile of sample n, channel c at
    rows 2th.., cols 2tw.. of the padded plane xs[c]."""
    C, HT, WT, N = xs.shape
    TW = (WT - 2) // 2
    for c in range(C):
        plane = xs[c]
        R = np.empty((4, WT, N), dtype=V.dtype)     # B^T d for one tile row
        for r in range(V.shape[2] // TW):
            h = 2 * (th0 + r)
            for w in range(WT):
                for n in range(N):
                    R[0, w, n] = plane[h, w, n] - plane[h + 2, w, n]
                for n in range(N):
                    R[1, w, n] = plane[h + 1, w, n] + plane[h + 2, w, n]
                for n in range(N):
                    R[2, w, n] = plane[h + 2, w, n] - plane[h + 1, w, n]
                for n in range(N):
                    R[3, w, n] = plane[h + 1, w, n] - plane[h + 3, w, n]
            for i in range(4):
                for tw in range(TW):
                    p = r * TW + tw
                    w = 2 * tw
                    for n in range(N):
                        V[4 * i, c, p, n] = R[i, w, n] - R[i, w + 2, n]
                    for n in range(N):
                        V[4 * i + 1, c, p, n] = R[i, w + 1, n] + R[i, w + 2, n]
                    for n in range(N):
                        V[4 * i + 2, c, p, n] = R[i, w + 2, n] - R[i, w + 1, n]
                    for n in range(N):
                        V[4 * i + 3, c, p, n] = R[i, w + 1, n] - R[i, w + 3, n]


@kernel(lambda t: void(ro(t, 4), ro(t, 1), rw(t, 4), i64))
def output_transform(M, b, ys, th0):
    """ys[f, 2th+a, 2tw+b, n] = (A^T m A)[a, b] + bias[f] for the band of
    tile rows th0.. that M (16, F, rows*TW, N) holds; ys (F, 2*TH, 2*TW, N)
    keeps the whole last tile (crop_planes drops what lies past the edge)."""
    F, _, OW2, N = ys.shape
    TW = OW2 // 2
    for f in range(F):
        bf = b[f]
        S = np.empty((2, 4, TW, N), dtype=ys.dtype)   # A^T m: (row a, col j, tile)
        for r in range(M.shape[2] // TW):
            for j in range(4):
                for tw in range(TW):
                    p = r * TW + tw
                    for n in range(N):
                        S[0, j, tw, n] = M[j, f, p, n] + M[4 + j, f, p, n] + M[8 + j, f, p, n]
                    for n in range(N):
                        S[1, j, tw, n] = M[4 + j, f, p, n] - M[8 + j, f, p, n] - M[12 + j, f, p, n]
            oh = 2 * (th0 + r)
            for a in range(2):
                for tw in range(TW):
                    for n in range(N):
                        ys[f, oh + a, 2 * tw, n] = S[a, 0, tw, n] + S[a, 1, tw, n] + S[a, 2, tw, n] + bf
                    for n in range(N):
                        ys[f, oh + a, 2 * tw + 1, n] = S[a, 1, tw, n] - S[a, 2, tw, n] - S[a, 3, tw, n] + bf


@kernel(lambda t: void(ro(t, 4), rw(t, 4), rw(types.float64, 1), i64))
def grad_output_transform(dys, dM, db, th0):
    """dM[:, f, p, n] = A dY A^T for the band of tile rows th0.. that dM
    (16, F, rows*TW, N) holds, dY the 2x2 tile of the packed gradient dys
    (F, 2*TH, 2*TW, N) (zero past the edge), and db[f] += the band's sum of
    dy[:, f] (float64)."""
    F, _, OW2, N = dys.shape
    TW = OW2 // 2
    for f in range(F):
        # db in float64 lanes: a scalar accumulator is one serial chain of adds
        acc = np.zeros(N, dtype=np.float64)
        K = np.empty((4, OW2, N), dtype=dM.dtype)   # A dY for one tile row
        for r in range(dM.shape[2] // TW):
            oh = 2 * (th0 + r)
            for w in range(OW2):
                for n in range(N):
                    acc[n] += dys[f, oh, w, n]
                    acc[n] += dys[f, oh + 1, w, n]
                for n in range(N):
                    K[0, w, n] = dys[f, oh, w, n]
                for n in range(N):
                    K[1, w, n] = dys[f, oh, w, n] + dys[f, oh + 1, w, n]
                for n in range(N):
                    K[2, w, n] = dys[f, oh, w, n] - dys[f, oh + 1, w, n]
                for n in range(N):
                    K[3, w, n] = -dys[f, oh + 1, w, n]
            for i in range(4):
                for tw in range(TW):
                    p = r * TW + tw
                    w = 2 * tw
                    for n in range(N):
                        dM[4 * i, f, p, n] = K[i, w, n]
                    for n in range(N):
                        dM[4 * i + 1, f, p, n] = K[i, w, n] + K[i, w + 1, n]
                    for n in range(N):
                        dM[4 * i + 2, f, p, n] = K[i, w, n] - K[i, w + 1, n]
                    for n in range(N):
                        dM[4 * i + 3, f, p, n] = -K[i, w + 1, n]
        db[f] += acc.sum()


@kernel(lambda t: void(ro(t, 4), rw(t, 4), i64))
def grad_input_transform(dV, xs, th0):
    """dd = B dV B^T per tile for the band of tile rows th0.. that dV
    (16, C, rows*TW, N) holds, scatter-added into the padded planes xs[c]
    (tiles overlap by two rows and columns; the planes are zeroed when th0
    is 0)."""
    C, HT, WT, N = xs.shape
    TW = (WT - 2) // 2
    for c in range(C):
        plane = xs[c]
        if th0 == 0:
            plane[:] = 0
        E = np.empty((4, WT, N), dtype=xs.dtype)     # dV B^T for one tile row
        for r in range(dV.shape[2] // TW):
            E[:] = 0
            for i in range(4):
                for tw in range(TW):
                    p = r * TW + tw
                    w = 2 * tw
                    for n in range(N):
                        E[i, w, n] += dV[4 * i, c, p, n]
                    for n in range(N):
                        E[i, w + 1, n] += dV[4 * i + 1, c, p, n] - dV[4 * i + 2, c, p, n] + dV[4 * i + 3, c, p, n]
                    for n in range(N):
                        E[i, w + 2, n] += dV[4 * i + 1, c, p, n] + dV[4 * i + 2, c, p, n] - dV[4 * i, c, p, n]
                    for n in range(N):
                        E[i, w + 3, n] -= dV[4 * i + 3, c, p, n]
            h = 2 * (th0 + r)
            for w in range(WT):
                for n in range(N):
                    plane[h, w, n] += E[0, w, n]
                for n in range(N):
                    plane[h + 1, w, n] += E[1, w, n] - E[2, w, n] + E[3, w, n]
                for n in range(N):
                    plane[h + 2, w, n] += E[1, w, n] + E[2, w, n] - E[0, w, n]
                for n in range(N):
                    plane[h + 3, w, n] -= E[3, w, n]


@kernel(lambda t: void(ro(t, 4), rw(t, 4), i64, i64))
def crop_planes(xs, dx, PT, PL):
    """dx[n, c, ih, iw] = xs[c, ih+PT, iw+PL, n]: planes with the batch
    innermost back to NCHW (the inverse of pack_planes)."""
    N, C, H, W = dx.shape
    for c in range(C):
        for ih in range(H):         # reads contiguous (one plane at a time)
            for iw in range(W):
                for n in range(N):
                    dx[n, c, ih, iw] = xs[c, ih + PT, iw + PL, n]


@kernel(lambda t: void(ro(t, 4), rw(t, 3)))
def weight_transform(w, U):
    """U[4i+j, f, c] = (G g G^T)[i, j] for g = w[f, c] (3x3), with
    G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    (2048 tiny products on the MNIST conv2: 350 us as an einsum, a few here)."""
    F, C = w.shape[0], w.shape[1]
    T = np.empty((4, 3), dtype=U.dtype)          # G g: rows of the product
    for f in range(F):
        for c in range(C):
            g = w[f, c]
            for b in range(3):
                T[0, b] = g[0, b]
                T[1, b] = 0.5 * (g[0, b] + g[1, b] + g[2, b])
                T[2, b] = 0.5 * (g[0, b] - g[1, b] + g[2, b])
                T[3, b] = g[2, b]
            for i in range(4):
                U[4 * i, f, c] = T[i, 0]
                U[4 * i + 1, f, c] = 0.5 * (T[i, 0] + T[i, 1] + T[i, 2])
                U[4 * i + 2, f, c] = 0.5 * (T[i, 0] - T[i, 1] + T[i, 2])
                U[4 * i + 3, f, c] = T[i, 2]


@kernel(lambda t: void(ro(t, 3), rw(t, 4)))
def weight_grad_transform(dU, dw):
    """dw[f, c] = G^T dU[:, f, c] G, dU[4i+j] the (i, j) element: the
    adjoint of weight_transform."""
    F, C = dw.shape[0], dw.shape[1]
    T = np.empty((3, 4), dtype=dw.dtype)         # G^T dU
    for f in range(F):
        for c in range(C):
            for j in range(4):
                d0 = dU[j, f, c]
                d1 = dU[4 + j, f, c]
                d2 = dU[8 + j, f, c]
                d3 = dU[12 + j, f, c]
                T[0, j] = d0 + 0.5 * (d1 + d2)
                T[1, j] = 0.5 * (d1 - d2)
                T[2, j] = 0.5 * (d1 + d2) + d3
            for a in range(3):
                dw[f, c, a, 0] = T[a, 0] + 0.5 * (T[a, 1] + T[a, 2])
                dw[f, c, a, 1] = 0.5 * (T[a, 1] - T[a, 2])
                dw[f, c, a, 2] = 0.5 * (T[a, 1] + T[a, 2]) + T[a, 3]
