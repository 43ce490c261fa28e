"""The convolution driver both compiled backends (cython, numba) run: im2col
into a column matrix, BLAS products, col2im. The layout choice, the bias
row, the batch split and the dw/db reduction are here once; a backend only
passes its kernel table.

Paths (``choose_path``; ``forced_path`` overrides it, for tests):
  * "depthwise", groups = C > 1, for a table whose ``depthwise`` gives a
    kernel module: the direct depthwise driver (``backends/_depthwise``);
    GEMM is the wrong tool for one-channel groups.
  * "pointwise", 1x1 and no padding: x is its own column matrix,
    y[i] = w @ x[i].reshape(C, H*W) per group (a strided one subsamples x
    first), no im2col and no layout kernels.
  * "per_image", Kg = C/G*KH*KW up to the table's per_image_max_taps,
    or any Kg with a column stride of 2 (no column dilation) and a batch
    that gives every thread images:
    columns (b, G, Kg+1, P) for a block of b images at a time, small
    enough to stay in cache, and a batch of products y[i] = [w | b] @ cols[i]
    per group that come out NCHW; the bias rides on each group's row of
    ones, so db falls out of the dw product as its column Kg. The chunk
    saves its input and the backward makes the columns again. Direct fused
    loops were measured and lost even on the 1->32 channel first MNIST
    layer, so there are none.
  * "direct", for a backend whose table has it: register-blocked loops
    for 3x3 stride 1 (``backends/_direct``), asked first for dilated convs
    with more than PER_IMAGE_MAX_TAPS taps per group (Winograd would copy
    the phase sub-grids) and for grouped ones with up to DIRECT_MAX_TAPS
    (Winograd's per-group products are small); forced for any 3x3
    stride-1 conv with padding up to the filter's reach.
  * "winograd", for a backend whose table has it: 3x3 stride 1 (any
    padding, dilation and groups), with more than PER_IMAGE_MAX_TAPS taps
    per group and a batch of at least its MIN_BATCH (``backends/_winograd``);
    asked before the per-image path, whatever the table's own limit.
  * "batch" otherwise: columns (K, n*L) and one large product per group
    and pass, y and dy transposed by layout kernels that fuse in the bias
    add and db. A backend that reads a padded input runs stride-1 columns
    over the padded width (row pitch RP = WP, with WP-OW "garbage columns"
    per row, see numba_conv); else RP = OW.
Groups: the column rows are ordered (c, kh, kw), so group g's rows are one
contiguous block of Kg rows and each product is a stack of G matrices.
The im2col and pointwise paths split the batch into chunks of n images, one per thread,
that run concurrently on fastcnn's pool (``backends/_concurrent``), each
with single-threaded BLAS and kernels. A batch too small to share is one
chunk on the calling thread, still with BLAS at one thread; its large
products (the whole-batch path's) split over row or column blocks instead
(``_concurrent.matmul``), so no op leaves OpenBLAS's own pool spinning.

Fused ReLU (``relu=True``, the fused conv2d_relu op): each path applies
bias and ReLU while its output is in cache - the batch path's
unpack_output_relu, the per-image and pointwise paths' relu loop on each
block right after its product, the Winograd output transform and the
depthwise kernels themselves - and ctx keeps the ReLU's mask [y > 0] (the
caller may change y), which the backward applies to dy (block by block on
the per-image path, chunk by chunk on the pointwise one, in the depthwise
kernels' copy of each dy plane); the depthwise kernels make the mask too.
``consume`` hands the per-image path's output to a
fused max-pool block by block instead (see ``forward``).

y, dx and dw come from the output pool (``_workspace.outputs``). ctx keeps
each chunk's column matrix (whole-batch path) or its copy of the input
(per-image and pointwise paths) - workspace arrays, handed out again once
ctx dies - and its own copy of w (``wb``: w with the bias column, made
anyway): the backward computes with the x and w the forward saw even if
the caller changed them in place since.

The kernel table ``k`` (one object per backend):
    padded_input       True: the kernels read x zero-padded with one extra
                       zero row, planes flattened (N, C, (HP+1)*WP); False:
                       they read x itself and clip at its borders
    winograd           the Winograd driver module, or None
    winograd_kernels() (with winograd) its tile-transform kernel module
    direct             (optional) the direct-loops driver module, or None
    direct_kernels()   (with direct) its kernel module
    per_image_max_taps (optional) Kg up to which the per-image path is
                       chosen; PER_IMAGE_MAX_TAPS if absent
    grouped_direct_max_taps (optional) Kg up to which a grouped conv takes
                       the direct loops when a backward may follow;
                       DIRECT_MAX_TAPS if absent
    winograd_no_grad_chunk (optional) images per Winograd chunk at most
                       under fastcnn.no_grad(); ``_winograd.CHUNK`` if absent
                       or None
    depthwise()        the direct depthwise kernel module, or None (the
                       attribute itself None: no such kernels)
    im2col(src, cols, g, RP)            cols (G, Kg, n, OH*RP), last axis contiguous
    col2im(dcols, dx, g, RP)            the adjoint, into dx (n, C, H, W)
    unpack_output(yF, b, y, RP)         yF (F, n*OH*RP) -> y (n, F, OH, OW) + b
    pack_grad_output(dy, dyF, db, RP)   the reverse, zero garbage columns, db
Every kernel runs single-threaded, on the thread that calls it.

Deliberately not here: argument checks and output sizes (``fastcnn.ops``
computes y_shape), loops over elements (``fastcnn/_kernels``), Winograd
and the direct depthwise convolution.
"""
import contextlib
import contextvars
from typing import NamedTuple

import numpy as np

from fastcnn._grad import grad_enabled
from fastcnn.backends import _concurrent, _relu
from fastcnn.backends._workspace import outputs, workspace

# Taps up to which the per-image column layout beats the whole-batch one,
# unless the table says otherwise (``per_image_max_taps``); measured at
# batch 64 on one thread, fwd+bwd, before the per-image path went block by
# block: 2.3x faster at K=9, 1.4x at K=36, noisy at K=72, equal at K=288.
PER_IMAGE_MAX_TAPS = 32
# Bytes of columns per block of images in the per-image path: about what
# stays in a core's L2 between the im2col and the product.
PER_IMAGE_BLOCK_BYTES = 1 << 20

# Taps per group up to which a grouped conv takes the direct loops (32
# channels a group of 3x3): Winograd won on dense 32- and 128-channel layers.
# A table may set a lower limit for convolutions a backward may follow
# (``grouped_direct_max_taps``: Winograd's backward can win the pair where
# its forward loses); under fastcnn.no_grad() only the forward counts and
# this limit holds.
DIRECT_MAX_TAPS = 288

PATHS = ("per_image", "batch", "winograd", "pointwise", "depthwise", "direct")
_forced = contextvars.ContextVar("fastcnn_forced_conv_path", default=None)


class Geometry(NamedTuple):
    """Every size of one convolution, named as in the kernel contract;
    DH, DW the dilation, G the groups."""
    N: int
    C: int
    H: int
    W: int
    F: int
    KH: int
    KW: int
    SH: int
    SW: int
    PT: int
    PB: int
    PL: int
    PR: int
    OH: int
    OW: int
    DH: int = 1
    DW: int = 1
    G: int = 1

    @property
    def K(self):
        return self.C * self.KH * self.KW

    @property
    def Kg(self):
        """Column rows per group: (C/G)*KH*KW."""
        return self.C // self.G * self.KH * self.KW

    @property
    def Fg(self):
        return self.F // self.G

    @property
    def P(self):
        return self.OH * self.OW

    @property
    def HP(self):
        return self.H + self.PT + self.PB

    @property
    def WP(self):
        return self.W + self.PL + self.PR


@contextlib.contextmanager
def forced_path(path):
    """Inside the block every conv2d forward of the compiled backends takes
    ``path`` (one of PATHS), whatever the shapes would choose: for tests.
    A call that cannot take it raises ValueError instead of choosing another."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    token = _forced.set(path)
    try:
        yield
    finally:
        _forced.reset(token)


def path_applies(k, path, g):
    """Whether ``path`` can compute geometry g on kernel table k. The two
    im2col paths compute every convolution, a depthwise one too."""
    if path == "winograd":
        return k.winograd is not None and k.winograd.applies(g)
    if path == "direct":
        return getattr(k, "direct", None) is not None and k.direct.applies(g)
    if path == "pointwise":
        return g.KH == g.KW == 1 and g.PT == g.PB == g.PL == g.PR == 0
    if path == "depthwise":
        return getattr(k, "depthwise", None) is not None and g.G == g.C > 1
    return path in PATHS


def choose_path(k, g, pooled=False):
    """The path for geometry g on the backend with kernel table k; pooled:
    a fused ReLU + 2x2 stride-2 max pooling takes the output."""
    forced = _forced.get()
    if forced is not None:
        if not path_applies(k, forced, g):
            raise ValueError(f"forced path {forced!r} does not apply: {g}")
        return forced
    for path in ("depthwise", "pointwise"):
        if path_applies(k, path, g):
            return path
    # a table's own limit holds where the batch gives every thread images:
    # a smaller batch is one chunk, and only the whole-batch path's
    # products then split across the threads
    Kg = g.Kg
    # dilated: the direct loops read the dilated taps where they lie, where
    # Winograd copies each phase sub-grid out and back; grouped with few
    # channels a group: Winograd's per-group products are too small to run
    # at speed (both measured at batch 64, fwd+bwd); a batch too small for
    # Winograd's vector lanes: the direct loops beat the im2col products
    # there (measured at batch 1 and 4, the MNIST conv2)
    few_images = g.N < getattr(k.winograd, "MIN_BATCH", 0)
    grouped_limit = getattr(k, "grouped_direct_max_taps", DIRECT_MAX_TAPS) \
        if grad_enabled() else DIRECT_MAX_TAPS
    if Kg > PER_IMAGE_MAX_TAPS and (g.DH > 1 or g.DW > 1 or few_images
                                    or 1 < g.G and Kg <= grouped_limit) \
            and path_applies(k, "direct", g):
        return "direct"
    # inference with a 2x2 max pooling to follow, few taps (the MNIST conv1):
    # the direct loops pool as they go, where the per-image path writes
    # each block's conv output and pools it in a second pass (measured at
    # batch 1000 on cython; a backward would need the argmax, which these
    # loops do not make)
    if pooled and Kg <= PER_IMAGE_MAX_TAPS and path_applies(k, "direct", g) \
            and _direct_pools(k):
        return "direct"
    # inference on one image, few taps too (the MNIST conv1): the per-image
    # path's column copy, product and output block cost more in calls than
    # the work, where the direct loops are one call (the batch-1 step of the
    # MNIST CNN measured 5-7% faster on cython and numba; at batch 4 the
    # per-image path was faster). With a backward to follow, the direct dw
    # loops lose to the per-image product at few taps.
    if g.N == 1 and not grad_enabled() and path_applies(k, "direct", g):
        return "direct"
    if Kg > PER_IMAGE_MAX_TAPS and not few_images and path_applies(k, "winograd", g):
        return "winograd"
    table_limit = getattr(k, "per_image_max_taps", PER_IMAGE_MAX_TAPS)
    if Kg <= min(table_limit, PER_IMAGE_MAX_TAPS):   # either limit: no thread count asked
        return "per_image"
    if g.N < _concurrent.num_threads():
        return "per_image" if Kg <= PER_IMAGE_MAX_TAPS else "batch"
    # column stride 2: the whole-batch path's stride-1 columns do not
    # apply, and the im2col kernels copy whole rows through the column
    # phases, so the per-image products win at any Kg (measured on numba,
    # batch 64, fwd+bwd: 3x3 32->64 and 64->128, 5x5 8->16)
    if g.SW == 2 and g.DW == 1:
        return "per_image"
    return "per_image" if Kg <= table_limit else "batch"


def forward(k, x, w, b, stride, padding, dilation, groups, y_shape, relu=False, consume=None,
            pool22=None):
    """conv2d_forward of the kernel contract on kernel table k; with relu,
    conv2d_relu_forward's: y = relu(conv), the ReLU applied where each path
    has its output in cache, and saved holds the ReLU's mask [y > 0] too.

    consume(n0, z), if given, takes the output block by block on the
    per-image path, chunk by chunk on the undilated Winograd one: z (n, F,
    OH, OW), C-contiguous, is images n0 .. n0+n-1 of the output, in a
    workspace array that is overwritten after the call returns (the fused
    conv+ReLU+max-pool pools it there, with no full-size output and no
    second pass over the pool's threads); the call runs on the thread of
    its chunk of the batch, concurrently with the others, and forward
    returns (None, saved). On the other paths consume is not called and y
    is returned as usual. Not with relu.

    pool22 = (p, argmax), if given, is the fused ReLU + 2x2 stride-2 max
    pooling's output: the undilated Winograd path pools each chunk from its
    output planes into them (``_winograd.forward``), and under
    fastcnn.no_grad() the direct loops pool as they go into p, leaving
    argmax alone (``_direct.forward``); both return (None, saved). The other
    paths ignore it (consume or y as above)."""
    (N, C, H, W), (F, _, KH, KW), (_, _, OH, OW) = x.shape, w.shape, y_shape
    g = Geometry(N, C, H, W, F, KH, KW, *stride, *padding, OH, OW, *dilation, groups)
    path = choose_path(k, g, pooled=pool22 is not None and not relu)
    mask = outputs.take(y_shape, np.uint8) if relu else None
    if path == "depthwise":
        # imported here: the direct depthwise driver is optional for a table
        from fastcnn.backends import _depthwise
        y, saved = _depthwise.forward(k.depthwise(), x, w, b, stride, padding, dilation,
                                      y_shape, relu=relu, mask=mask)   # its kernels fill mask
        return y, _with_mask((path, g, saved), mask)
    bias = b if b is not None else np.zeros(F, dtype=x.dtype)
    tiles = path == "winograd" and g.DH == g.DW == 1 and not relu
    direct_pools = path == "direct" and not relu and _direct_pools(k)
    if not (path == "per_image" or tiles) or relu:
        consume = None
    if not (tiles or direct_pools):
        pool22 = None
    y = outputs.take(y_shape, x.dtype) if consume is None and pool22 is None else None
    if path == "winograd":
        saved = (path, g, k.winograd.forward(k, x, w, bias, y, g, relu,
                                             None if pool22 is not None else consume, pool22))
        return y, _mask_after(y, saved, mask)
    if path == "direct":
        saved = (path, g, k.direct.forward(k, x, w, bias, y, g, relu,
                                           None if pool22 is None else pool22[0]))
        return y, _mask_after(y, saved, mask)
    if path == "pointwise":
        return y, _with_mask((path, g, _pointwise_forward(k, g, x, w, b, y, mask)), mask)
    src = _padded(x, g) if k.padded_input else x
    if path == "per_image":
        RP, fn = OW, _per_image_forward
    else:
        RP, fn = (g.WP if k.padded_input and stride == (1, 1) else OW), _batch_forward
    # [w | b] per group (G, F/G, Kg+1): the per-image products' matrices,
    # and backward's copy of w
    Kg = g.Kg
    wb = np.empty((F, Kg + 1), dtype=x.dtype)
    wb[:, :Kg] = w.reshape(F, Kg)
    wb[:, Kg] = bias
    wb = wb.reshape(groups, F // groups, Kg + 1)
    slices = _concurrent.slices(N, N * groups * Kg * OH * RP)
    if consume is not None:
        cols = _map(lambda sl: _per_image_forward(
            k, g, src[sl], wb, bias, None, RP, None,
            lambda n0, z, _start=sl.start: consume(_start + n0, z)), slices)
    else:
        cols = _map(lambda sl: fn(k, g, src[sl], wb, bias, y[sl], RP,
                                  None if mask is None else mask[sl]), slices)
    return y, _with_mask((path, g, (wb, list(zip(slices, cols)), RP)), mask)


def _direct_pools(k):
    """Whether the direct loops of table k take a fused 2x2 max pooling
    here: they make no argmax, so only where no backward can follow."""
    return not grad_enabled() and k.direct.pools(k)


def _with_mask(saved, mask):
    """saved as the plain conv's, plus the ReLU's mask when there is one."""
    return saved if mask is None else saved + (mask,)


def _positive(y, mask):
    """mask = [y > 0], for a y the ReLU was applied to already."""
    np.greater(y, 0, out=mask.view(np.bool_))


def _mask_after(y, saved, mask):
    """saved with the ReLU's mask [y > 0] (unless mask is None), made as a
    pass over y, for the drivers that apply the ReLU themselves but keep no
    mask (Winograd's output transform, the direct loops)."""
    if mask is None:
        return saved
    _relu._run(_positive, [y, mask])
    return saved + (mask,)


def takes_blocks(saved):
    """Whether backward can take dy block by block from ``produce`` for the
    forward that saved ``saved`` (the per-image path and the undilated
    Winograd one, without a ReLU)."""
    path, g = saved[:2]
    return len(saved) == 3 and (path == "per_image" or path == "winograd" and g.DH == g.DW == 1)


def takes_tiles(saved):
    """Whether backward can take a fused max pooling's gradient and argmax
    (``unpool``) straight into its output-gradient planes for the forward
    that saved ``saved`` (the undilated Winograd path, without a ReLU)."""
    path, g = saved[:2]
    return len(saved) == 3 and path == "winograd" and g.DH == g.DW == 1


def backward(k, dy, saved, produce=None, input_grad=True, unpool=None):
    """conv2d_backward of the kernel contract: (dx, dw, db); for a forward
    with relu, the ReLU's mask is applied to dy first. input_grad=False:
    dx is None, its products and col2im skipped on every path. With
    ``produce`` (only where ``takes_blocks(saved)``; dy is then None),
    produce(n0, d) writes images n0 .. n0+n-1 of dy into d (n, F, OH, OW),
    a workspace block used and overwritten right after: the fused
    conv+ReLU+max-pool scatters its gradient there, in cache, on the
    thread of the block's chunk. With ``unpool`` = (dp, argmax, two_by_two) (only where
    ``takes_tiles(saved)``; dy is then None), dy is that of a fused ReLU +
    max pooling, scattered by the Winograd kernels into their planes."""
    path, g, data = saved[:3]
    mask = saved[3] if len(saved) > 3 else None
    if mask is not None and path not in ("per_image", "pointwise", "depthwise"):
        # (those three apply it themselves: in blocks, in chunks, in the kernels)
        dy, mask = _relu.backward(k.relu_backward, dy, mask), None
    if path == "depthwise":
        from fastcnn.backends import _depthwise
        return _depthwise.backward(k.depthwise(), dy, data, input_grad, mask)
    if path == "winograd":
        return k.winograd.backward(k, dy, g, data, input_grad, produce, unpool)
    if path == "direct":
        return k.direct.backward(k, dy, g, data, input_grad)
    wb, chunks, RP = data
    # the chunk backwards skip dx's product and col2im where their dx is None
    dx = outputs.take((g.N, g.C, g.H, g.W), wb.dtype) if input_grad else None

    def dx_of(sl):
        return None if dx is None else dx[sl]

    fn = {"per_image": _per_image_backward, "batch": _batch_backward,
          "pointwise": _pointwise_backward}[path]
    if produce is not None:
        parts = _map(lambda item: _per_image_backward(
            k, g, None, wb, item[1], RP, dx_of(item[0]), None,
            lambda n0, d, _start=item[0].start: produce(_start + n0, d)), chunks)
    elif mask is not None:
        parts = _map(lambda item: fn(k, g, dy[item[0]], wb, item[1], RP, dx_of(item[0]),
                                     mask[item[0]]), chunks)
    else:
        parts = _map(lambda item: fn(k, g, dy[item[0]], wb, item[1], RP, dx_of(item[0])),
                     chunks)
    # summed over the chunks: dw and db (only they) depend on the thread
    # count, in their last bits (another rounding order)
    dw = outputs.take((g.F, g.C // g.G, g.KH, g.KW), wb.dtype)
    dw2, db = dw.reshape(g.F, g.Kg), parts[0][1]
    np.copyto(dw2, parts[0][0])
    for dw_c, db_c in parts[1:]:
        dw2 += dw_c
        db = db + db_c
    return dx, dw, np.ascontiguousarray(db)


def _padded(x, g):
    """x zero-padded, plus one zero row (the stride-1 trick reads up to KW-1
    elements past the last padded row), planes flattened: (N, C, (HP+1)*WP),
    in the workspace."""
    flat = workspace.take((g.N, g.C, (g.HP + 1) * g.WP), x.dtype)
    xp = flat.reshape(g.N, g.C, g.HP + 1, g.WP)
    xp.fill(0)
    xp[:, :, g.PT:g.PT + g.H, g.PL:g.PL + g.W] = x
    return flat


def _map(fn, items):
    """[fn(item)]: one item per thread, concurrently (see _concurrent) when
    there are several; else on this thread, BLAS at one thread, where its
    products (``_concurrent.matmul``) may still split across the pool."""
    if len(items) == 1:
        with _concurrent.single_threaded_blas():
            return [fn(items[0])]
    return _concurrent.run(fn, items)


# One chunk of the batch each: src, y, dy, dx are C-contiguous slices of
# n images, wb is [w | b] per group (G, F/G, Kg+1); a forward returns what
# its backward needs (the whole-batch path its column matrix, the
# per-image path its input, the pointwise path its x), a backward its
# (dw (F, Kg), db).
# Groups: the column rows are ordered (c, kh, kw), so group g's rows are
# one contiguous block of Kg rows, and every product runs per group as a
# stack of G matrices (or a batch of (n, G) ones).

def _gmatmul(a, b, out):
    """_concurrent.matmul over a stack of G products; one product (G = 1)
    stays a plain 2-D one, which _concurrent.matmul can split into blocks."""
    if out.shape[0] == 1:
        _concurrent.matmul(a[0], b[0], out=out[0])
        return out
    return _concurrent.matmul(a, b, out=out)


def _image_block(g, itemsize):
    """Images per block of the per-image path: as many as keep one block's
    columns within PER_IMAGE_BLOCK_BYTES (at least one)."""
    return max(1, PER_IMAGE_BLOCK_BYTES // (g.G * (g.Kg + 1) * g.P * itemsize))


def _image_cols(g, b, dtype):
    """Columns for b images, (b, G, Kg+1, P), with a row of ones under each
    group's block: the bias rides on it, and db falls out of dw's product."""
    Kg = g.Kg
    cols = workspace.take((b, g.G, Kg + 1, g.P), dtype)
    cols[:, :, Kg, :] = 1
    return cols


def _per_image_forward(k, g, src, wb, bias, y, RP, mask, consume=None):
    # Block by block of images, so the columns stay in cache between the
    # im2col that writes them and the product that reads them; the chunk
    # keeps its input, not its columns, and the backward makes them again:
    # cheaper than a round trip of Kg/C times the input through memory.
    n, G, Kg = src.shape[0], g.G, g.Kg
    if k.padded_input:
        saved = src                          # fastcnn's own padded copy already
    else:
        # the caller may change x later: copied block by block below, so
        # the im2col reads each block from cache
        saved = workspace.take(src.shape, src.dtype)
    b = _image_block(g, wb.itemsize)
    cols = _image_cols(g, b, wb.dtype)
    if consume is not None:                  # each block's output stays in cache
        zb = workspace.take((b, g.F, g.OH, g.OW), wb.dtype)
    else:
        y4 = y.reshape(n, G, g.Fg, g.P)
    for i0 in range(0, n, b):
        m = min(n, i0 + b) - i0
        c = cols[:m]
        if saved is not src:
            np.copyto(saved[i0:i0 + m], src[i0:i0 + m])
        k.im2col(saved[i0:i0 + m], c[:, :, :Kg].transpose(1, 2, 0, 3), g, RP)
        if consume is not None:
            np.matmul(wb, c, out=zb[:m].reshape(m, G, g.Fg, g.P))
            consume(i0, zb[:m])
            continue
        np.matmul(wb, c, out=y4[i0:i0 + m])
        if mask is not None:
            _relu_block(k, y[i0:i0 + m], mask[i0:i0 + m])
    return saved


def _per_image_backward(k, g, dy, wb, saved, RP, dx, mask=None, produce=None):
    n, G, Kg, P, dtype = saved.shape[0], g.G, g.Kg, g.P, wb.dtype
    b = _image_block(g, dtype.itemsize)
    if produce is not None:                  # dy block by block, in cache
        dyb = workspace.take((b, g.F, g.OH, g.OW), dtype)
    else:
        dy4 = dy.reshape(n, G, g.Fg, P)
    if mask is not None:
        # dy * [y > 0] block by block, in cache, instead of a pass over all
        # of dy first (the product is relu_backward's: NaN for an inf or
        # NaN dy where the mask is 0)
        mask4 = mask.reshape(n, G, g.Fg, P)
        dym = workspace.take((b, G, g.Fg, P), dtype)
    cols = _image_cols(g, b, dtype)
    dcols = workspace.take((b, G, Kg, P), dtype) if dx is not None else None
    # dw's product in the operand order BLAS runs faster: with more column
    # rows than filters, dw^T = cols @ dy^T (3x3 stride 2, 32 -> 64)
    tr = Kg + 1 > g.Fg
    dwb = np.zeros((G, Kg + 1, g.Fg) if tr else (G, g.Fg, Kg + 1), dtype=dtype)
    part = np.empty((b,) + dwb.shape, dtype=dtype)
    wT = wb[:, :, :Kg].transpose(0, 2, 1)
    for i0 in range(0, n, b):
        m = min(n, i0 + b) - i0
        c = cols[:m]
        k.im2col(saved[i0:i0 + m], c[:, :, :Kg].transpose(1, 2, 0, 3), g, RP)
        if produce is not None:
            produce(i0, dyb[:m])
            dy_blk = dyb[:m].reshape(m, G, g.Fg, P)
        else:
            dy_blk = dy4[i0:i0 + m]
        if mask is not None:
            dy_blk = np.multiply(dy_blk, mask4[i0:i0 + m], out=dym[:m])
        if tr:
            dwb += np.matmul(c, dy_blk.transpose(0, 1, 3, 2), out=part[:m]).sum(axis=0)
        else:
            dwb += np.matmul(dy_blk, c.transpose(0, 1, 3, 2), out=part[:m]).sum(axis=0)
        if dx is not None:                   # None: input_grad=False
            d = np.matmul(wT, dy_blk, out=dcols[:m])
            k.col2im(d.transpose(1, 2, 0, 3), dx[i0:i0 + m], g, RP)
    if tr:
        dwb = dwb.transpose(0, 2, 1)
    return dwb[:, :, :Kg].reshape(g.F, Kg), dwb[:, :, Kg].reshape(g.F)


def _relu_block(k, y, mask):
    """y = relu(y) in place and mask = [y > 0] (relu's loop, one pass), for
    a C-contiguous block of y still in cache."""
    k.relu_forward(y.reshape(-1), y.reshape(-1), mask.reshape(-1))


def _batch_forward(k, g, src, wb, bias, y, RP, mask):
    n, G, Kg, L = y.shape[0], g.G, g.Kg, g.OH * RP
    cols = workspace.take((G, Kg, n * L), y.dtype)
    k.im2col(src, cols.reshape(G, Kg, n, L), g, RP)
    yF = _gmatmul(wb[:, :, :Kg], cols, workspace.take((G, g.Fg, n * L), y.dtype))
    if mask is None:
        k.unpack_output(yF.reshape(g.F, n * L), bias, y, RP)
    else:
        k.unpack_output_relu(yF.reshape(g.F, n * L), bias, y, mask, RP)
    return cols


def _batch_backward(k, g, dy, wb, cols, RP, dx):
    n, G, Kg, F, L = dy.shape[0], g.G, g.Kg, g.F, g.OH * RP
    db = np.empty(F, dtype=dy.dtype)
    dyF = workspace.take((F, n * L), dy.dtype)
    k.pack_grad_output(dy, dyF, db, RP)
    dyF = dyF.reshape(G, g.Fg, n * L)
    # dw^T = cols @ dyF^T rather than dw = dyF @ cols^T: the same product,
    # but its long inner dimension N*L stays whole in every block when it
    # splits over the rows of cols (dw's columns).
    dwT = _gmatmul(cols, dyF.transpose(0, 2, 1), np.empty((G, Kg, g.Fg), dtype=dy.dtype))
    if dx is not None:                       # None: input_grad=False
        dcols = _gmatmul(wb[:, :, :Kg].transpose(0, 2, 1), dyF,
                         workspace.take((G, Kg, n * L), dy.dtype))
        k.col2im(dcols.reshape(G, Kg, n, L), dx, g, RP)
    return dwT.transpose(0, 2, 1).reshape(F, Kg), db


# The pointwise (1x1, unpadded) path: no column matrix, x itself is one:
# y[i] = w @ x[i].reshape(C, H*W) per group, a strided one subsampling x
# first. The chunks save their (subsampled) copy of x, made in the same
# pass that feeds the product, with a row of ones under each group's
# channels: the bias rides on it as in the per-image path (no pass over y
# to add it, none over dy to sum db).
# Small maps (P under POINTWISE_CHANNEL_MAJOR_BELOW) keep that copy channel
# by channel, (G, C/G+1, n, P), not image by image: then the backward's
# products are one each over the whole chunk, dw's with its inner
# dimension n*P in place of P (per-image products over 49 columns run
# well below BLAS's speed), at the price of transposing copies of dy and
# dx; 14x14 maps and larger lost with it (1x1 convs at batch 64, one
# thread).
POINTWISE_CHANNEL_MAJOR_BELOW = 64


def _pointwise_forward(k, g, x, w, b, y, mask):
    G, Fg, Cg, P = g.G, g.Fg, g.C // g.G, g.P
    wb = np.empty((G, Fg, Cg + 1), dtype=x.dtype)
    wb[:, :, :Cg] = w.reshape(G, Fg, Cg)
    wb[:, :, Cg] = 0 if b is None else b.reshape(G, Fg)
    channel_major = P < POINTWISE_CHANNEL_MAJOR_BELOW

    def chunk(sl):
        n = y[sl].shape[0]
        if channel_major:
            xs = workspace.take((G, Cg + 1, n, P), x.dtype)
            xs[:, Cg] = 1
            dst = xs[:, :Cg].reshape(G, Cg, n, g.OH, g.OW).transpose(2, 0, 1, 3, 4)
        else:
            xs = workspace.take((n, G, Cg + 1, P), x.dtype)
            xs[:, :, Cg] = 1
            dst = xs[:, :, :Cg].reshape(n, G, Cg, g.OH, g.OW)
        if (g.SH, g.SW) != (1, 1):
            dst[...] = x[sl, :, ::g.SH, ::g.SW].reshape(n, G, Cg, g.OH, g.OW)
        else:
            np.copyto(dst, x[sl].reshape(n, G, Cg, g.OH, g.OW))
        # channel-major: the per-image products read xs at row pitch n*P,
        # as BLAS allows (one whole-chunk product and a transposing copy
        # of y was no faster)
        np.matmul(wb, xs.transpose(2, 0, 1, 3) if channel_major else xs,
                  out=y[sl].reshape(n, G, Fg, P))
        if mask is not None:
            _relu_block(k, y[sl], mask[sl])
        return xs

    slices = _concurrent.slices(g.N, g.N * (g.C + g.F) * P)
    return wb, list(zip(slices, _map(chunk, slices))), None


def _pointwise_backward(k, g, dy, wb, xs, RP, dx, mask=None):
    n, G, Fg, Cg, P = dy.shape[0], g.G, g.Fg, g.C // g.G, g.P
    dy4 = dy.reshape(n, G, Fg, P)
    channel_major = P < POINTWISE_CHANNEL_MAJOR_BELOW
    if channel_major:
        # dy channel by channel (masked in the same copy), as xs is
        dyF = workspace.take((G, Fg, n, P), dy.dtype)
        dst = dyF.transpose(2, 0, 1, 3)
        if mask is not None:
            np.multiply(dy4, mask.reshape(n, G, Fg, P), out=dst)
        else:
            np.copyto(dst, dy4)
        dyF = dyF.reshape(G, Fg, n * P)
        dwb = np.matmul(dyF, xs.reshape(G, Cg + 1, n * P).transpose(0, 2, 1))
    else:
        if mask is not None:
            # the fused ReLU's mask, applied here on the chunk's own thread
            # (the product is relu_backward's, as on the per-image path): no
            # full-size masked dy first, and no serial pass over it
            dy4 = np.multiply(dy4, mask.reshape(n, G, Fg, P),
                              out=workspace.take((n, G, Fg, P), dy.dtype))
        dwb = np.matmul(dy4, xs.transpose(0, 1, 3, 2)).sum(axis=0)   # (G, Fg, Cg+1)
    dw, db = dwb[:, :, :Cg].reshape(g.F, Cg), dwb[:, :, Cg].reshape(g.F)
    if dx is None:                           # input_grad=False
        return dw, db
    wT = wb[:, :, :Cg].transpose(0, 2, 1)
    stride1 = (g.SH, g.SW) == (1, 1)
    if channel_major:
        dxF = np.matmul(wT, dyF, out=workspace.take((G, Cg, n * P), dy.dtype))
        dxs = dxF.reshape(G, Cg, n, g.OH, g.OW).transpose(2, 0, 1, 3, 4)
    elif stride1:                            # straight into dx
        np.matmul(wT, dy4, out=dx.reshape(n, G, Cg, P))
        return dw, db
    else:
        dxs = np.matmul(wT, dy4, out=workspace.take((n, G, Cg, P), dy.dtype))
        dxs = dxs.reshape(n, G, Cg, g.OH, g.OW)
    if stride1:
        np.copyto(dx.reshape(n, G, Cg, g.OH, g.OW), dxs)
    else:
        dx.fill(0)
        dx.reshape(n, G, Cg, g.H, g.W)[:, :, :, ::g.SH, ::g.SW] = dxs
    return dw, db
