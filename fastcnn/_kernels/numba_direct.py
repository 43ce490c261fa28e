"""Numba kernels for the direct 3x3 stride-1 convolution: the forward, and
with it dx (the same loops over dy), and dw. The same contract, packing and
plane layout as ``cy_direct.pyx``, whose header states the formula, the
layout and why; driven by ``fastcnn.backends._direct``.

The forward's inner step is cy_direct's: RB rows of L outputs' inputs
(one vector each) for one (c, kh, kw), times FB broadcast weights, added
into RB*FB vector accumulators that stay in registers over all Cg*9 steps.
LLVM's loop vectoriser cannot express that (it vectorises innermost loops
only, and accumulators indexed by a loop live in memory), so the vectors
are LLVM vector values here: a small Numba type ``_Vec`` whose data model
is ``<L x T>``, and a few intrinsics on it and on tuples of it (load,
broadcast, multiply-add, store, ...). A tuple of FB vectors is an
aggregate that LLVM splits into FB registers, so ``acc = _fma(acc, w, x)``
over FB filters is FB multiply-adds on registers, as the C loops'
``acc[r][f] += wv * xv[r]``.
A block of at most FEW filters (the dx of a 1-channel input: one filter)
runs one filter over KR rows instead, so that no accumulator is spent on
an absent filter.

``forward_pool22`` (inference) is cy_direct's in effect, not in form: one
image's conv output at a time goes through a scratch that stays in cache
(cy_direct pools in registers), then its ReLU and 2x2 max pooling by
numba_pool's rows.

dw is cy_direct's too (FBW filters' three kw sums in 3*FBW vector
accumulators over the rows of a block of images, whole images while a
lane sums at most 64 vectors, else rows of one image; every (filters, c,
kh) over one block before the next, so the block's planes come from
cache; the lanes past OW masked to zero in x): each block's float sums
widened into double vectors, not added lane by lane into double scalars
(that serial chain of adds cost more than the products on narrow
planes), and summed in one tree per (filters, c, kh, block).

The vector width follows the CPU Numba compiles for (``NUMBA_CPU_NAME`` /
``NUMBA_CPU_FEATURES`` if set, else the host): 64 bytes and two rows a
block with AVX-512, 32 bytes with AVX2, 16 bytes else; ``padded_shape``
sizes the planes for the widest (16 lanes, 2 rows), as cy_direct's does.
The multiply-adds are ``llvm.fmuladd``: fused where the CPU has FMA, so
results differ from the reference by rounding only.

Every kernel is single-threaded over the images it is given; the driver
runs chunks of the batch concurrently. Deliberately not here: validation
(``fastcnn.ops``), strides, other filter sizes, the choice of path
(``backends._gemm_conv``).

Shapes: x (n, C, H, W), y (n, F, OH, OW), G groups, Cg = C/G, Fg = F/G;
padded planes xp (n, C, HP, WP), dy's dq (n, F, HQ, WQ); packed weights
wp flat (G, ceil(Fg/FB), Cg, 9, FB).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic, models, register_model

from fastcnn._kernels.numba_common import JIT_OPTIONS, i64, kernel, ro, rw, void
from fastcnn._kernels.numba_pool import _pool22

FB = 8          # filters per packed weight block (the packing)
LMAX = 16       # the widest vector, in elements, for the plane sizes
RBMAX = 2       # the most rows a forward block reads at once


def _cpu_has(feature):
    """Whether the CPU Numba compiles for has ``feature`` (e.g. 'avx512f'):
    Numba's own choice ($NUMBA_CPU_FEATURES, else the host's less what
    $NUMBA_ENABLE_AVX turns off)."""
    features = config.CPU_FEATURES
    if features is None:
        features = get_host_cpu_features()
    return f"+{feature}" in features.split(",")


_AVX512 = _cpu_has("avx512f")
VBYTES = 64 if _AVX512 else 32 if _cpu_has("avx2") else 16   # bytes a vector
RB = 2 if _AVX512 else 1   # rows a forward block: RB*FB accumulators, 16 need 32 registers
FEW = 2                    # blocks of at most FEW filters go one filter at a time,
KR = 8                     # KR rows of it a block
FBW = 6 if _AVX512 else 3  # filters a dw block: 3*FBW accumulators


# ---------------------------------------------------------------- vectors ---

class _Vec(types.Type):
    """An LLVM vector of ``count`` elements of ``dtype``."""

    def __init__(self, dtype, count):
        self.dtype, self.count = dtype, count
        super().__init__(name=f"Vec({dtype} x {count})")


@register_model(_Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elem = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elem, fe_type.count))


def _vec_of(arr):
    """The vector type of arr's elements."""
    return _Vec(arr.dtype, VBYTES * 8 // arr.dtype.bitwidth)


def _pointer(context, builder, aty, arr, off, vty):
    """Pointer to element ``off`` of C-contiguous ``arr``, as a vector pointer."""
    data = context.make_array(aty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [off]), context.get_value_type(vty).as_pointer())


def _splat(builder, vty_ll, s):
    """The LLVM vector of type vty_ll with every lane s."""
    v = builder.insert_element(ir.Constant(vty_ll, ir.Undefined), s, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, ir.Constant(vty_ll, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vty_ll.count), None))


def _fmuladd(builder, a, b, c):
    """a*b + c, fused where the CPU has FMA (llvm.fmuladd)."""
    vt = a.type
    elem = "f32" if isinstance(vt.element, ir.FloatType) else "f64"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3),
                                        f"llvm.fmuladd.v{vt.count}{elem}")
    return builder.call(fn, [a, b, c])


def _lane_below(builder, vty_ll, n):
    """The mask of lanes i < n (n an int64)."""
    idx = ir.Constant(ir.VectorType(ir.IntType(64), vty_ll.count), list(range(vty_ll.count)))
    return builder.icmp_signed("<", idx, _splat(builder, idx.type, n))


@intrinsic
def _lanes(typingctx, arr):
    """L: the lanes of a vector of arr's elements (a constant)."""
    L = _vec_of(arr).count
    return types.intp(arr), lambda context, builder, sig, args: context.get_constant(types.intp, L)


@intrinsic
def _load(typingctx, arr, off):
    """The vector arr.flat[off:off + L] (no alignment asked)."""
    vty = _vec_of(arr)

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], vty)
        return builder.load(ptr, align=arr.dtype.bitwidth // 8)
    return vty(arr, off), codegen


def _store_ir(context, builder, aty, arr, off, vec, n):
    """arr.flat[off:off + n] = the first n (<= L) lanes of vec."""
    count = vec.type.count
    data = context.make_array(aty)(context, builder, arr).data
    with builder.if_else(builder.icmp_signed("==", n, ir.Constant(n.type, count))) \
            as (whole, part):
        with whole:
            ptr = builder.bitcast(builder.gep(data, [off]), vec.type.as_pointer())
            builder.store(vec, ptr, align=aty.dtype.bitwidth // 8)
        with part:
            for i in range(count):
                k = ir.Constant(n.type, i)
                with builder.if_then(builder.icmp_signed("<", k, n)):
                    e = builder.extract_element(vec, ir.Constant(ir.IntType(32), i))
                    builder.store(e, builder.gep(data, [builder.add(off, k)]))


@intrinsic
def _put(typingctx, arr, off, step, acc, nv, n, relu):
    """arr.flat[off + j*step:][:n] = the first n lanes of acc[j] (of
    np.maximum(acc[j], 0) if relu: NaN stays, the rest of <= 0 becomes
    +0), for j < nv."""
    def codegen(context, builder, sig, args):
        arr_, off_, step_, acc_, nv_, n_, relu_ = args
        relu_on = builder.icmp_signed("!=", relu_, ir.Constant(relu_.type, 0))
        for j, v in enumerate(_parts(builder, sig.args[3], acc_)):
            k = ir.Constant(nv_.type, j)
            with builder.if_then(builder.icmp_signed("<", k, nv_)):
                zero = ir.Constant(v.type, None)
                cut = builder.and_(builder.fcmp_ordered("<=", v, zero),
                                   _splat(builder, ir.VectorType(ir.IntType(1), v.type.count),
                                          relu_on))
                v = builder.select(cut, zero, v)
                at = builder.add(off_, builder.mul(k, step_))
                _store_ir(context, builder, sig.args[0], arr_, at, v, n_)
        return context.get_dummy_value()
    return types.void(arr, off, step, acc, nv, n, relu), codegen


@intrinsic
def _splats(typingctx, arr, off, count, n):
    """count vectors, vector j all arr.flat[off + j] for j < n, else 0."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    vty = _vec_of(arr)
    tty = types.UniTuple(vty, count.literal_value)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        vll = context.get_value_type(vty)
        out = context.get_value_type(tty)(ir.Undefined)
        for j in range(count.literal_value):
            k = ir.Constant(ir.IntType(64), j)
            s = builder.load(builder.gep(data, [builder.add(args[1], k)]))
            s = builder.select(builder.icmp_signed("<", k, args[3]), s, ir.Constant(s.type, 0))
            out = builder.insert_value(out, _splat(builder, vll, s), j)
        return out
    return tty(arr, off, count, n), codegen


@intrinsic
def _fill(typingctx, arr, off, count):
    """count vectors, every lane arr.flat[off]."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    vty = _vec_of(arr)
    tty = types.UniTuple(vty, count.literal_value)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        v = _splat(builder, context.get_value_type(vty), builder.load(builder.gep(data, [args[1]])))
        out = context.get_value_type(tty)(ir.Undefined)
        for j in range(count.literal_value):
            out = builder.insert_value(out, v, j)
        return out
    return tty(arr, off, count), codegen


@intrinsic
def _loads(typingctx, arr, off, step, count, n):
    """count vectors, vector j arr.flat[off + min(j, n - 1)*step:][:L] (n >= 1):
    the rows past n repeat row n - 1, for loops that ignore them, without a
    branch."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    vty = _vec_of(arr)
    tty = types.UniTuple(vty, count.literal_value)

    def codegen(context, builder, sig, args):
        out = context.get_value_type(tty)(ir.Undefined)
        last = builder.sub(args[4], ir.Constant(args[4].type, 1))
        for j in range(count.literal_value):
            k = ir.Constant(ir.IntType(64), j)
            k = builder.select(builder.icmp_signed("<", k, last), k, last)
            p = _pointer(context, builder, sig.args[0], args[0],
                         builder.add(args[1], builder.mul(k, args[2])), vty)
            out = builder.insert_value(out, builder.load(p, align=arr.dtype.bitwidth // 8), j)
        return out
    return tty(arr, off, step, count, n), codegen


def _parts(builder, ty, value):
    """A tuple's elements, or None for a single vector."""
    if isinstance(ty, types.UniTuple):
        return [builder.extract_value(value, j) for j in range(ty.count)]
    return None


@intrinsic
def _fma(typingctx, acc, a, b):
    """acc + a*b lane by lane: acc a vector or a tuple of them, a and b the
    same or single vectors (then used for every element of acc)."""
    def codegen(context, builder, sig, args):
        if not isinstance(sig.args[0], types.UniTuple):
            return _fmuladd(builder, args[1], args[2], args[0])
        accs = _parts(builder, sig.args[0], args[0])
        n = len(accs)
        aa = _parts(builder, sig.args[1], args[1]) or [args[1]] * n
        bs = _parts(builder, sig.args[2], args[2]) or [args[2]] * n
        out = context.get_value_type(sig.return_type)(ir.Undefined)
        for j in range(n):
            out = builder.insert_value(out, _fmuladd(builder, aa[j], bs[j], accs[j]), j)
        return out
    return acc(acc, a, b), codegen


@intrinsic
def _zero(typingctx, arr, count):
    """count zero vectors of arr's elements."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    tty = types.UniTuple(_vec_of(arr), count.literal_value)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(tty), None)
    return tty(arr, count), codegen


@intrinsic
def _keep(typingctx, v, n):
    """v with the lanes from n on zeroed."""
    def codegen(context, builder, sig, args):
        mask = _lane_below(builder, args[0].type, args[1])
        return builder.select(mask, args[0], ir.Constant(args[0].type, None))
    return v(v, n), codegen


@intrinsic
def _widen_add(typingctx, acc, v):
    """acc + v lane by lane, acc double vectors and v a tuple of the same
    count of vectors of L floats or doubles: v's lanes in chunks of acc's
    width, each widened to double and added."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        accs = _parts(builder, sig.args[0], args[0])
        vs = _parts(builder, sig.args[1], args[1])
        D = accs[0].type.count
        out = context.get_value_type(sig.return_type)(ir.Undefined)
        for j, (a, u) in enumerate(zip(accs, vs)):
            for k in range(0, u.type.count, D):
                part = builder.shuffle_vector(u, ir.Constant(u.type, ir.Undefined),
                                              ir.Constant(ir.VectorType(i32, D),
                                                          list(range(k, k + D))))
                if part.type != a.type:
                    part = builder.fpext(part, a.type)
                a = builder.fadd(a, part)
            out = builder.insert_value(out, a, j)
        return out
    return acc(acc, v), codegen


@intrinsic
def _hsum(typingctx, v):
    """The sum of v's lanes (a pairwise tree)."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        u = args[0]
        while u.type.count > 1:
            h = u.type.count // 2
            lo, hi = (builder.shuffle_vector(u, ir.Constant(u.type, ir.Undefined),
                                             ir.Constant(ir.VectorType(i32, h),
                                                         list(range(k, k + h))))
                      for k in (0, h))
            u = builder.fadd(lo, hi)
        return builder.extract_element(u, ir.Constant(i32, 0))
    return v.dtype(v), codegen


# ------------------------------------------------------------------ kernels ---

def padded_shape(H, W, PT, PL, OH, OW, DH, DW):
    """(HP, WP): the padded planes ``forward`` fills for an input (H, W) at
    (PT, PL) >= 0 and an output (OH, OW), large enough for every read of
    the forward, of dw on them (as x or as dy) and of every vector width
    (cy_direct's sizes)."""
    OWL, WL = -(-OW // LMAX) * LMAX, -(-W // LMAX) * LMAX
    return max(H + PT, OH + RBMAX - 1 + 2 * DH), max(W + PL, OWL + 2 * DW, PL + WL)


@njit(inline="always", **JIT_OPTIONS)
def _pad(x, xp, n, c, PT, PL):
    """xp[n, c] = x[n, c] at (PT, PL), zeros elsewhere."""
    H, W = x.shape[2], x.shape[3]
    HP, WP = xp.shape[2], xp.shape[3]
    for r in range(HP):
        row = xp[n, c, r]
        if PT <= r < PT + H:
            src = x[n, c, r - PT]
            for j in range(PL):
                row[j] = 0
            dst = row[PL:PL + W]
            for j in range(W):
                dst[j] = src[j]
            tail = row[PL + W:]
            for j in range(WP - PL - W):
                tail[j] = 0
        else:
            for j in range(WP):
                row[j] = 0


@njit(inline="always", **JIT_OPTIONS)
def _filters_block(xp, x0, WP, HP, wp, w0, b, f0, nf, y, y0, OH, OW, Cg, DH, DW, relu):
    """Filters f0 .. f0+nf-1 (nf <= FB, block w0 of wp) of one image and
    group, RB rows of L outputs of FB filters at a time."""
    L = _lanes(xp)
    bias = _splats(b, f0, FB, nf)
    for oh in range(0, OH, RB):
        for ow0 in range(0, OW, L):
            a0 = a1 = bias
            for c in range(Cg):
                xc = x0 + (c * HP + oh) * WP + ow0
                wc = w0 + c * 9 * FB
                for kh in range(3):
                    for kw in range(3):
                        xt = xc + kh * DH * WP + kw * DW
                        wv = _splats(wp, wc + (kh * 3 + kw) * FB, FB, FB)
                        a0 = _fma(a0, wv, _load(xp, xt))
                        if RB == 2:
                            a1 = _fma(a1, wv, _load(xp, xt + WP))
            nl = min(L, OW - ow0)
            o = y0 + oh * OW + ow0
            _put(y, o, OW * OH, a0, nf, nl, relu)
            if RB == 2 and oh + 1 < OH:
                _put(y, o + OW, OW * OH, a1, nf, nl, relu)


@njit(inline="always", **JIT_OPTIONS)
def _rows_block(xp, x0, WP, HP, wp, w0, b, f0, nf, y, y0, OH, OW, Cg, DH, DW, relu):
    """The same for few filters (nf <= FEW): one filter at a time, KR rows
    of L outputs, so no accumulator is spent on a filter past nf."""
    L = _lanes(xp)
    for f in range(nf):
        for oh in range(0, OH, KR):
            nr = min(KR, OH - oh)
            for ow0 in range(0, OW, L):
                acc = _fill(b, f0 + f, KR)
                for c in range(Cg):
                    xc = x0 + (c * HP + oh) * WP + ow0
                    wc = w0 + c * 9 * FB + f
                    for kh in range(3):
                        for kw in range(3):
                            rows = _loads(xp, xc + kh * DH * WP + kw * DW, WP, KR, nr)
                            acc = _fma(acc, _fill(wp, wc + (kh * 3 + kw) * FB, 1)[0], rows)
                _put(y, y0 + (f * OH + oh) * OW + ow0, OW, acc, nr, min(L, OW - ow0), relu)


@njit(inline="always", **JIT_OPTIONS)
def _image(x, wp, b, y, xp, n, m, G, PT, PL, DH, DW, relu):
    """Image n of x (padded into xp[n]) convolved into image m of y."""
    C, F, OH, OW = x.shape[1], y.shape[1], y.shape[2], y.shape[3]
    HP, WP = xp.shape[2], xp.shape[3]
    Cg, Fg = C // G, F // G
    blocks = (Fg + FB - 1) // FB
    for c in range(C):
        _pad(x, xp, n, c, PT, PL)
    for g in range(G):
        x0 = (n * C + g * Cg) * HP * WP
        for fb in range(blocks):
            w0 = (g * blocks + fb) * Cg * 9 * FB
            f0 = g * Fg + fb * FB
            nf = min(FB, Fg - fb * FB)
            y0 = (m * F + f0) * OH * OW
            if nf <= FEW:
                _rows_block(xp, x0, WP, HP, wp, w0, b, f0, nf, y, y0, OH, OW, Cg, DH,
                            DW, relu)
            else:
                _filters_block(xp, x0, WP, HP, wp, w0, b, f0, nf, y, y0, OH, OW, Cg,
                               DH, DW, relu)


@kernel(lambda t: void(ro(t, 4), ro(t, 1), ro(t, 1), rw(t, 4), rw(t, 4),
                       i64, i64, i64, i64, i64, i64))
def forward(x, wp, b, y, xp, G, PT, PL, DH, DW, relu):
    """y = conv(x, w) + b (max(., 0) if relu) for 3x3 filters packed in wp,
    stride 1, dilation (DH, DW), G groups; xp (n, C, HP, WP) from
    ``padded_shape`` receives x's zero-padded planes."""
    for n in range(x.shape[0]):
        _image(x, wp, b, y, xp, n, n, G, PT, PL, DH, DW, relu)


def pools():
    """Whether ``forward_pool22`` is there (always, here)."""
    return True


@kernel(lambda t: void(ro(t, 4), ro(t, 1), ro(t, 1), rw(t, 4), rw(t, 4),
                       i64, i64, i64, i64, i64, i64, i64))
def forward_pool22(x, wp, b, y, xp, G, PT, PL, DH, DW, OH, OW):
    """``forward``'s convolution (output OH x OW) with the ReLU and a 2x2
    stride-2 max pooling fused in: y (n, F, OH // 2, OW // 2) holds the
    values cy_pool.max_relu_forward gives on the conv's output, which goes
    one image at a time through a scratch that stays in cache, pooled by
    numba_pool's 2x2 rows (their argmax goes to a scratch too: for
    inference)."""
    N, F = x.shape[0], y.shape[1]
    z = np.empty((1, F, OH, OW), dtype=y.dtype)
    argmax = np.empty((F, y.shape[2], y.shape[3]), dtype=np.int32)
    for n in range(N):
        _image(x, wp, b, z, xp, n, 0, G, PT, PL, DH, DW, 0)
        _pool22(z[0], y[n], argmax, True)


@kernel(lambda t: void(ro(t, 4), ro(t, 4), rw(types.float64, 3),
                       i64, i64, i64, i64, i64, i64, i64))
def weight_grad(xp, dq, dw, G, QT, QL, OH, OW, DH, DW):
    """dw (F, C/G, 9) += the 3x3 filters' gradient over the images of xp (n,
    C, HP, WP: the forward's padded planes) and dq (n, F, HQ, WQ: dy at
    (QT, QL) of zero-padded planes, OH x OW of it)."""
    N, C, HP, WP = xp.shape[0], xp.shape[1], xp.shape[2], xp.shape[3]
    F, HQ, WQ = dq.shape[1], dq.shape[2], dq.shape[3]
    Cg, Fg = C // G, F // G
    L = _lanes(xp)
    tail = OW % L
    VR = (OW + L - 1) // L                          # vectors a row
    IB = 64 // (OH * VR) if OH * VR <= 64 else 1    # images a block
    RBK = OH if IB > 1 else max(64 // VR, 1)        # rows a block
    for i0 in range(0, N, IB):
        ie = min(i0 + IB, N)
        for oh0 in range(0, OH, RBK):
            oe = min(oh0 + RBK, OH)
            for g in range(G):
                for fs in range(0, Fg, FBW):
                    nf = min(FBW, Fg - fs)
                    for c in range(Cg):
                        for kh in range(3):
                            s0 = _zero(xp, FBW)
                            s1 = s0
                            s2 = s0
                            for i in range(i0, ie):
                                q0 = (i * F + g * Fg + fs) * HQ * WQ + QT * WQ + QL
                                x0 = ((i * C + g * Cg + c) * HP + kh * DH) * WP
                                for r in range(oh0, oe):
                                    xr = x0 + r * WP
                                    dr = q0 + r * WQ
                                    for ow0 in range(0, OW, L):
                                        d = _loads(dq, dr + ow0, HQ * WQ, FBW, nf)
                                        v0 = _load(xp, xr + ow0)
                                        v1 = _load(xp, xr + ow0 + DW)
                                        v2 = _load(xp, xr + ow0 + 2 * DW)
                                        if ow0 + L > OW:
                                            v0 = _keep(v0, tail)
                                            v1 = _keep(v1, tail)
                                            v2 = _keep(v2, tail)
                                        s0 = _fma(s0, d, v0)
                                        s1 = _fma(s1, d, v1)
                                        s2 = _fma(s2, d, v2)
                            z = _zero(dw, FBW)
                            t0 = _widen_add(z, s0)
                            t1 = _widen_add(z, s1)
                            t2 = _widen_add(z, s2)
                            for f in range(nf):
                                dwf = dw[g * Fg + fs + f, c]
                                dwf[kh * 3] += _hsum(t0[f])
                                dwf[kh * 3 + 1] += _hsum(t1[f])
                                dwf[kh * 3 + 2] += _hsum(t2[f])
