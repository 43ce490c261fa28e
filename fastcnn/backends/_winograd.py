"""The Winograd F(4x4, 3x3) conv2d path both compiled backends share: 36
batched matmuls over transformed 6x6 tiles for the forward, dx and dw alike
(Lavin & Gray 2015), around a backend's tile-transform kernels
(``k.winograd_kernels()``: ``fastcnn/_kernels/numba_winograd.py`` or the
cython module to the same contract; the transforms, their adjoints and the
interpolation points are documented there).

``_gemm_conv`` takes this path, for a kernel table whose ``winograd`` is
this module, on 3x3 stride-1 convolutions with enough taps and images
(``choose_path``). Groups: U is (36, F, C/G); a band's forward products M = U V
and the backward's dV = U^T dM are the kernels' ``products`` (all groups in
one call, U^T made contiguous per group once per backward), its dU = dM V^T
the kernels' ``weight_products`` (all groups, summed into a float64 dU);
dM and dV are padded by a row, as the forward's M. Dilation (stride 1): a
dilated 3x3 convolution is DH*DW undilated ones on the phase sub-grids:
output phase (r, s) = y[:, :, r::DH, s::DW] reads only input phase (a, b) =
((r - PT) mod DH, (s - PL) mod DW) = x[:, :, a::DH, b::DW], with its own
padding; the phases run one after another, each copied to and from
contiguous arrays.

Chunks of the batch run concurrently on fastcnn's pool, one per core,
each with single-threaded BLAS and kernels (``backends/_concurrent``). The
batch is the innermost axis of the tile arrays, so a chunk needs enough
images to fill the vector lanes (MIN_BATCH). U and V, saved for the
backward, are derived from w and x: a caller changing them in place after
the forward changes nothing. Under ``fastcnn.no_grad()`` nothing is saved:
V is made band by band in one buffer per chunk, which stays in cache
between the input transform and the products (at batch 1000 the saved V
of the MNIST conv2 was 75 MB, written once and never read). relu: the
forward's output transform applies max(v, 0) after the bias (the fused
conv+ReLU); the backward is the convolution's alone (the caller masks dy).

Deliberately not here: the im2col paths and the choice between paths
(``_gemm_conv``), argument checks (``fastcnn.ops``), loops over elements
(the kernel modules).
"""
import numpy as np

from fastcnn._grad import grad_enabled
from fastcnn.backends import _concurrent
from fastcnn.backends._gemm_conv import Geometry
from fastcnn.backends._workspace import outputs, workspace

# Images a chunk needs: the batch is the vector lane of every transform,
# and below this the im2col paths won (MNIST conv2 shape, 4 vs 8 images).
MIN_BATCH = 8
# Images per chunk at most: a chunk's planes, tiles and saved V grow with
# it. Under fastcnn.no_grad() a kernel table may set its own
# (``winograd_no_grad_chunk``): with a backward to follow, every chunk adds
# a float64 dU of its own to zero and sum, and chunks of 16 made cython's
# MNIST training step at batch 256 14% slower. (Smaller chunks once put
# numba's float32 dw over the 1e-4 contract on a batch of 130; since dU is
# summed in float64 along the lanes, 16 passes.)
CHUNK = 64
# Chunk sizes are multiples of this (all but the last): the transforms'
# vectors run along the images, and a chunk of 62 or 63 images (balanced
# slices of a batch of 1000) ran the MNIST conv2 forward about twice as
# slow per image as one of 56 or 64.
ALIGN = 4
# Tile lanes (tiles x images) per band: transforms and matmuls run band by
# band over whole tile rows (at least one), so a band's (36, F, lanes)
# products stay in cache between the kernel or matmul that writes them and
# the one that reads them.
BAND_TILES = 256


def applies(g):
    """Whether geometry g is a convolution this path computes: 3x3, stride
    1, any dilation, padding and groups."""
    return g.KH == g.KW == 3 and g.SH == g.SW == 1


def forward(k, x, w, b, y, g, relu=False, consume=None, pool22=None):
    """y = conv(x, w) + b (then max(., 0) if relu), chunks of the batch
    concurrently, phase by phase if dilated; returns what backward needs:
    U and, per phase, its geometry and its chunks' transformed inputs.

    consume(n0, z) (undilated only; y is then None): each chunk's output
    z (n, F, OH, OW), images n0 .. n0+n-1, handed over in a workspace
    array on the chunk's thread instead of written into y, as the
    per-image path of ``_gemm_conv.forward`` does with its blocks.
    pool22 = (p, argmax) (undilated only; y is then None): the fused
    ReLU + 2x2 stride-2 max pooling of the whole output into p and argmax
    (N, F, OH // 2, OW // 2), each band's output transform pooling
    straight into them (the kernels' output_pool_relu_2x2), with no output
    planes and no NCHW output at all."""
    wino = k.winograd_kernels()
    U = np.empty((36, g.F, g.C // g.G), dtype=x.dtype)
    wino.weight_transform(w, U)
    keep = grad_enabled()       # read here: the chunks run on the pool's threads
    most = chunk_limit(k, keep)
    if g.DH == g.DW == 1:
        return U, [(None, g, _forward_chunks(wino, x, U, b, y, g, relu, keep, most, consume,
                                             pool22))]
    assert consume is None and pool22 is None, "consume, pool22: undilated convolutions only"
    phases = []
    for ph in _phases(g):
        gp, rows, cols = ph
        xp = _copy(x[:, :, rows[0]::g.DH, cols[0]::g.DW])
        yp = workspace.take((g.N, g.F, gp.OH, gp.OW), x.dtype)
        phases.append((ph, gp, _forward_chunks(wino, xp, U, b, yp, gp, relu, keep, most)))
        y[:, :, rows[1]::g.DH, cols[1]::g.DW] = yp
    return U, phases


def backward(k, dy, g, saved, input_grad=True, produce=None, unpool=None):
    """The exact adjoint of forward (without relu), chunk by chunk
    (concurrently) and phase by phase: dx per chunk, dU and db summed over
    chunks and phases, then dw = G^T dU G. input_grad=False: dx is None,
    and no dV product, input-gradient transform or crop runs. produce(n0,
    d) (undilated only; dy is then None) writes each chunk's dy, images
    n0 .. n0+n-1, into the workspace array d on the chunk's thread.
    unpool = (dp, argmax, two_by_two) (undilated only; dy is then None):
    dy is the backward of a fused ReLU + max pooling (any window; 2x2
    stride 2 if two_by_two) whose gradient is dp and whose argmax (with the
    ReLU's marks) is argmax: for 2x2 windows each band's dM comes straight
    from dp and argmax (the kernels' grad_output_unpool_2x2), with no
    output-gradient planes; other windows are scattered by the kernels'
    unpool_relu into each chunk's planes."""
    wino = k.winograd_kernels()
    U, phases = saved
    dx = outputs.take((g.N, g.C, g.H, g.W), U.dtype) if input_grad else None
    if input_grad and len(phases) < g.DH * g.DW:
        dx.fill(0)          # input phases that reach no output
    # dU summed in float64 over bands, chunks and phases: its float32 sums
    # differed from loops' dw by up to 1.6e-4 with chunks of 48 images
    dU = np.zeros(U.shape, dtype=np.float64)
    db = np.zeros(g.F, dtype=np.float64)
    for ph, gp, chunks in phases:
        if ph is None:
            _backward_chunks(wino, dy, U, chunks, gp, dx, dU, db, produce, unpool)
            continue
        _, rows, cols = ph
        dyp = _copy(dy[:, :, rows[1]::g.DH, cols[1]::g.DW])
        dxp = workspace.take((g.N, g.C, gp.H, gp.W), U.dtype) if input_grad else None
        _backward_chunks(wino, dyp, U, chunks, gp, dxp, dU, db)
        if input_grad:
            dx[:, :, rows[0]::g.DH, cols[0]::g.DW] = dxp
    # G^T dU G in float64 too: its sums cancel, and its float32 rounding of dU
    # is what took dw furthest from loops'
    dw64 = np.empty((g.F, g.C // g.G, 3, 3))
    wino.weight_grad_transform(dU, dw64)
    dw = outputs.take(dw64.shape, U.dtype)
    np.copyto(dw, dw64)
    return dx, dw, db.astype(U.dtype)


def _phases(g):
    """(geometry, (a, r), (b, s)) per output phase (r, s) that has outputs:
    the undilated convolution of input phase (a, b) = x[:, :, a::DH, b::DW]
    that gives y[:, :, r::DH, s::DW]."""
    def axis(size, pad, out, d):
        for r in range(min(d, out)):
            a = (r - pad) % d
            n_in = len(range(a, size, d))
            n_out = len(range(r, out, d))
            lead = (a + pad - r) // d          # zero rows before the phase's first
            yield (a, r), n_in, lead, n_out + 2 - n_in - lead, n_out

    for rows, H, PT, PB, OH in axis(g.H, g.PT, g.OH, g.DH):
        for cols, W, PL, PR, OW in axis(g.W, g.PL, g.OW, g.DW):
            yield (Geometry(g.N, g.C, H, W, g.F, 3, 3, 1, 1, PT, PB, PL, PR, OH, OW,
                            1, 1, g.G), rows, cols)


def _copy(a):
    """A C-contiguous copy of the view a, in the workspace."""
    out = workspace.take(a.shape, a.dtype)
    np.copyto(out, a)
    return out


def _forward_chunks(wino, x, U, b, y, g, relu, keep, most, consume=None, pool22=None):
    def chunk(sl):
        if pool22 is not None:
            p, argmax = pool22
            return _forward_chunk(wino, x[sl], U, b, None, g, relu, keep,
                                  pool=(p[sl], argmax[sl]))
        if consume is None:
            return _forward_chunk(wino, x[sl], U, b, y[sl], g, relu, keep)
        return _forward_chunk(wino, x[sl], U, b, None, g, relu, keep,
                              lambda z: consume(sl.start, z))

    slices = _chunks(g.N, _concurrent.num_threads(), most)
    return list(zip(slices, _concurrent.run(chunk, slices)))


def _backward_chunks(wino, dy, U, chunks, g, dx, dU, db, produce=None, unpool=None):
    # U^T per group, contiguous (36, C, F/G): the dV products' left operand
    Cg, Fg = g.C // g.G, g.F // g.G
    TH, TW = _tiles(g)
    UT = np.ascontiguousarray(U.reshape(36, g.G, Fg, Cg).transpose(0, 1, 3, 2)).reshape(
        36, g.C, Fg) if dx is not None else None

    def chunk(item):
        sl, (V, bands) = item
        dU_c = np.zeros_like(dU)
        db_c = np.zeros(g.F, dtype=np.float64)
        n = sl.stop - sl.start
        if unpool is not None and unpool[2] and _pools_by_band(bands, TH):
            # 2x2 windows: each band's dM straight from dp
            dp_c, argmax_c = unpool[0][sl], unpool[1][sl]
            grad_output = lambda dM, th0: wino.grad_output_unpool_2x2(  # noqa: E731
                dp_c, argmax_c, dM, db_c, th0, g.OW)
        elif unpool is not None:    # the planes straight from the pooled gradient
            dys = workspace.take((g.F, 4 * TH, 4 * TW, n), U.dtype)
            wino.unpool_relu(unpool[0][sl], unpool[1][sl], dys, g.OW, unpool[2])
            grad_output = lambda dM, th0: wino.grad_output_transform(  # noqa: E731
                dys, dM, db_c, th0)
        else:
            if produce is None:
                dy_c = dy[sl]
            else:                   # this chunk's dy, made on its thread
                dy_c = workspace.take((n, g.F, g.OH, g.OW), U.dtype)
                produce(sl.start, dy_c)
            grad_output = lambda dM, th0: wino.grad_output_transform_nchw(  # noqa: E731
                dy_c, dM, db_c, th0)
        _backward_chunk(wino, n, grad_output, UT, V, bands, g,
                        None if dx is None else dx[sl], dU_c)
        return dU_c, db_c

    for dU_c, db_c in _concurrent.run(chunk, chunks):
        dU += dU_c
        db += db_c


def chunk_limit(k, keep):
    """Images per chunk at most on kernel table k: CHUNK, or under no_grad
    (keep False) the table's ``winograd_no_grad_chunk`` where it sets one."""
    return CHUNK if keep else getattr(k, "winograd_no_grad_chunk", None) or CHUNK


def _chunks(N, threads, most=CHUNK):
    """Batch slices: at most ``most`` images each, at least one per thread
    while each keeps MIN_BATCH images, balanced."""
    return _concurrent.batch_slices(N, max(-(-N // most), min(threads, N // MIN_BATCH)), ALIGN)


def _tiles(g):
    """(TH, TW): 4x4 output tiles per column and per row."""
    return (g.OH + 3) // 4, (g.OW + 3) // 4


def _bands(TH, TW, N):
    """(th0, th1) tile-row bands of about BAND_TILES tiles."""
    rows = max(1, BAND_TILES // (TW * N))
    return [(th0, min(TH, th0 + rows)) for th0 in range(0, TH, rows)]


def _pools_by_band(bands, TH):
    """Whether a fused 2x2 pooling runs band by band, inside the output
    transform and its adjoint (the kernels' output_pool_relu_2x2 and
    grad_output_unpool_2x2), rather than over the chunk's output planes
    after them (pool_relu_2x2, unpool_relu): when a band holds two tile
    rows or more, or all of them. Why not always: a band of one tile row
    writes (or reads) two pooled rows per filter and image, part of each
    NCHW cache line of y, argmax (or dy), which the next band completes
    only after all its filters have been through the cache; measured on
    the MNIST conv2 (conv+ReLU+pool), that route was no faster than the
    planes in chunks of 64 images (training at batch 128, inference at
    1000), where with bands of two rows (training at batch 64, chunks of
    32) it was clearly faster in both passes."""
    return bands[0][1] - bands[0][0] >= min(2, TH)


def _band_buffer(rows, K, TW, N, dtype):
    """A contiguous (36, K, rows*TW, N) scratch array for one band: views of
    one flat workspace array, so the last, shorter band is contiguous too."""
    flat = workspace.take((36 * K * rows * TW * N,), dtype)
    return lambda r: flat[:36 * K * r * TW * N].reshape(36, K, r * TW, N)


def _band(V, th0, th1, C, TW, N):
    """Band (th0, th1) of the saved V: (36, C, (th1-th0)*TW, N), contiguous."""
    return V[36 * C * th0 * TW * N:36 * C * th1 * TW * N].reshape(36, C, (th1 - th0) * TW, N)


def _forward_chunk(wino, x, U, b, y, g, relu, keep, consume=None, pool=None):
    """One chunk of the batch (x and y C-contiguous slices; with consume,
    y is None and consume(z) takes the chunk's output; with pool = (p,
    argmax), the chunk's slices of the fused ReLU + 2x2 stride-2 max
    pooling's outputs, y is None and each band's output transform pools
    straight into them, with no output planes): returns what its backward
    needs (the transformed input V and the bands), or (None, bands) unless
    keep."""
    N, C, F = x.shape[0], g.C, g.F
    TH, TW = _tiles(g)
    # V band by band, each band contiguous (36, C, rows*TW, N): saved for dw,
    # or one band's buffer reused
    bands = _bands(TH, TW, N)
    if keep:
        V = workspace.take((36 * C * TH * TW * N,), x.dtype)
        band_V = lambda th0, th1: _band(V, th0, th1, C, TW, N)  # noqa: E731
    else:
        V, buffer = None, _band_buffer(bands[0][1], C, TW, N, x.dtype)
        band_V = lambda th0, th1: buffer(th1 - th0)  # noqa: E731
    # M with one filter row more than F: its 36 elements' rows then do not lie
    # a multiple of 4 KB apart (one cache set), which the output transform
    # reads together
    band_M = _band_buffer(bands[0][1], F + 1, TW, N, x.dtype)
    by_band = pool is not None and _pools_by_band(bands, TH)
    if pool is not None and not by_band:        # pooled over the chunk's planes
        out = workspace.take((F, 4 * TH, 4 * TW, N), x.dtype)
        transform = lambda M, th0: wino.output_transform(M, b, out, th0, int(relu))  # noqa
    elif pool is None:                          # straight into NCHW
        out = y if consume is None else workspace.take((N, F, g.OH, g.OW), x.dtype)
        transform = lambda M, th0: wino.output_transform_nchw(M, b, out, th0, int(relu))  # noqa
    else:
        transform = lambda M, th0: wino.output_pool_relu_2x2(M, b, *pool, th0, g.OW)  # noqa
    for th0, th1 in bands:
        Vb = band_V(th0, th1)
        wino.input_transform(x, Vb, th0, g.PT, g.PL, TW)
        M = band_M(th1 - th0)
        wino.products(U, Vb, M)
        transform(M, th0)
    if consume is not None:
        consume(out)
    elif pool is not None and not by_band:
        wino.pool_relu_2x2(out, *pool, g.OW)
    return V, bands


def _backward_chunk(wino, N, grad_output, UT, V, bands, g, dx, dU):
    """One chunk of N images, band by band: dM (grad_output(dM, th0)
    writes the band's and adds its sum of dy to the chunk's db), then dU +=
    dM V^T (the kernels' weight_products, into the float64 dU) and dV =
    U^T dM (UT: U^T per group, (36, C, F/G)), scatter-added into the
    chunk's dx (no dV where dx is None)."""
    C, F = g.C, g.F
    TH, TW = _tiles(g)
    dtype = V.dtype
    # dM and dV with one filter or channel row more than F or C, as the
    # forward's M: their 36 element rows are then not 4 KB multiples apart
    # (one cache set), which the transforms write or read together
    band_dM = _band_buffer(bands[0][1], F + 1, TW, N, dtype)
    if dx is not None:
        band_dV = _band_buffer(bands[0][1], C + 1, TW, N, dtype)
        # each channel's last two plane rows of a band, which the next band's
        # tiles add to
        carry = workspace.take((C, 2, 4 * TW + 2, N), dtype)
    for th0, th1 in bands:
        r = th1 - th0
        dM = band_dM(r)
        grad_output(dM, th0)
        wino.weight_products(dM, _band(V, th0, th1, C, TW, N), dU)
        if dx is None:
            continue
        dV = band_dV(r)
        wino.products(UT, dM[:, :F], dV)
        wino.grad_input_transform(dV, dx, carry, th0, g.PT, g.PL, TH)
