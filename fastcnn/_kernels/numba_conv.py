"""Numba kernels for conv2d, forward and backward: im2col / col2im packing
and the layout kernels around the BLAS matmuls, which the shared driver
``fastcnn.backends._gemm_conv`` calls (``np.matmul``; Numba's own ``np.dot``
would need SciPy). Same-named kernels in ``cy_conv.pyx`` take the same
arguments in the same order, up to the tail: here the padded layout (HPX,
WP, RP). Every kernel is single-threaded.

im2col reads a zero-padded input ``xp`` (N, C, (HP+1)*WP) and col2im sums
through a padded per-sample scratch plane, so no loop tests bounds.
HP = H+PT+PB and WP = W+PL+PR; the extra zero row keeps the stride-1 trick
in bounds.

The stride-1 trick (as in "flattened" convolution): with row pitch WP, the
input of output (oh, ow) for tap (kh, kw) sits at flat offset
(oh*WP + ow) + (kh*DH*WP + kw*DW) (DH, DW: the dilation), so a whole plane of one tap is ONE contiguous
run of L = OH*WP elements: long copies that vectorise, instead of OH short
rows (14 or 28 elements, too short for AVX-512 loops). The price: WP-OW
garbage columns per output row, which the matmul computes and the layout
kernels drop (dy is zero there, so they add nothing to dw or dx - except
that 0*inf is NaN, so with non-finite inputs dw/dx can read NaN where the
exact result is +-inf). Strided convolutions and the per-image layout use
per-element loops with pitch OW; a column stride of 2 (without column
dilation) goes through each plane's even and odd columns instead, so its
rows are contiguous runs too (see the stride-2 section).

Column matrix ``cols`` is seen as (G, Kg, N, L): group g, row (c', kh, kw)
of the group's channels c = g*Cg + c', sample n, position oh*RP + ow with
row pitch RP (WP for the stride-1 trick, else OW). It is either the
whole-batch layout (K, N*L), where y^T = w2d @ cols is one large matmul
per group, or a strided view of the per-image layout (N, G, Kg+1, P). This
module deliberately chooses nothing (layout, threads, dtype): that is the
driver's job (``fastcnn.backends._gemm_conv``).

Shapes: xp (N, C, (HP+1)*WP), w (F, C/G, KH, KW), y/dy (N, F, OH, OW),
dx (N, C, H, W); stride (SH, SW); dilation (DH, DW); padding top PT and
left PL.
"""
import numpy as np
from numba import njit

from numba import types

from fastcnn._kernels.numba_common import JIT_OPTIONS, i64, kernel, ro, rw, void

u8 = types.uint8


@njit(inline="always", **JIT_OPTIONS)
def _crop(scratch, dxn, WP, PT, PL):
    """dxn[c, ih, iw] = scratch[c, (ih+PT)*WP + iw+PL]: a padded plane back
    to the image."""
    C, H, W = dxn.shape
    for c in range(C):
        for ih in range(H):
            base = (ih + PT) * WP + PL
            for iw in range(W):
                dxn[c, ih, iw] = scratch[c, base + iw]


# ------------------------------------------------ stride-2 column phases ---
# A stride-2 tap without column dilation reads every other column of the
# padded plane, 2*ow + kw: split into its even and odd columns (phase kw & 1,
# shifted by kw // 2), each tap's output row is one contiguous run, so the
# strided gather of im2col and the strided scatter-add of col2im become
# row copies and row adds that vectorise.

@njit(inline="always", **JIT_OPTIONS)
def _split_cols(plane, ph, HPX, WP):
    """ph[0, r, j] = plane[r*WP + 2j], ph[1, r, j] = plane[r*WP + 2j + 1]."""
    for r in range(HPX):
        base = r * WP
        for j in range(WP // 2):
            ph[0, r, j] = plane[base + 2 * j]
            ph[1, r, j] = plane[base + 2 * j + 1]
        if WP & 1:
            ph[0, r, WP // 2] = plane[base + WP - 1]


@njit(**JIT_OPTIONS)
def _im2col_s2(xp, cols, KH, KW, SH, DH, OH, OW, WP, RP):
    """im2col for SW == 2, DW == 1 through each plane's column phases."""
    N, C, _ = xp.shape
    Cg = C // cols.shape[0]
    HPX = xp.shape[2] // WP
    ph = np.empty((2, HPX, (WP + 1) // 2), dtype=xp.dtype)
    for n in range(N):
        for c in range(C):
            _split_cols(xp[n, c], ph, HPX, WP)
            gi = c // Cg
            k0 = (c - gi * Cg) * KH * KW
            for kh in range(KH):
                for kw in range(KW):
                    dst = cols[gi, k0 + kh * KW + kw, n]
                    src = ph[kw & 1]
                    for oh in range(OH):
                        # sliced so every index is the loop's own, never
                        # negative: no wraparound test per element
                        drow = dst[oh * RP:oh * RP + OW]
                        srow = src[oh * SH + kh * DH, kw >> 1:]
                        for ow in range(OW):
                            drow[ow] = srow[ow]


@njit(**JIT_OPTIONS)
def _col2im_s2(dcols, dx, KH, KW, SH, DH, PT, PL, OH, OW, HPX, WP, RP):
    """col2im for SW == 2, DW == 1: each plane summed into its padded
    column phases, then interleaved into dx without the padding."""
    N, C, H, W = dx.shape
    Cg = C // dcols.shape[0]
    ph = np.empty((2, HPX, (WP + 1) // 2), dtype=dx.dtype)
    for n in range(N):
        for c in range(C):
            ph[:] = 0
            gi = c // Cg
            k0 = (c - gi * Cg) * KH * KW
            for kh in range(KH):
                for kw in range(KW):
                    src = dcols[gi, k0 + kh * KW + kw, n]
                    dst = ph[kw & 1]
                    for oh in range(OH):
                        drow = dst[oh * SH + kh * DH, kw >> 1:]
                        srow = src[oh * RP:oh * RP + OW]
                        for ow in range(OW):
                            drow[ow] += srow[ow]
            # even padded columns q = iw + PL are phase 0's column q // 2
            e0, o0 = PL & 1, 1 - (PL & 1)          # first iw in phase 0, in phase 1
            for ih in range(H):
                out = dx[n, c, ih]
                ev = ph[0, ih + PT, (PL + e0) >> 1:]
                od = ph[1, ih + PT, (PL + o0) >> 1:]
                oute = out[e0::2]
                outo = out[o0::2]
                for j in range(oute.shape[0]):
                    oute[j] = ev[j]
                for j in range(outo.shape[0]):
                    outo[j] = od[j]


# ---------------------------------------------------------------- im2col ---

@kernel(lambda t: void(ro(t, 3), rw(t, 4, "A"), i64, i64, i64, i64, i64, i64, i64, i64,
                       i64, i64))
def im2col(xp, cols, KH, KW, SH, SW, DH, DW, OH, OW, WP, RP):
    """cols[g, (c', kh, kw), n, oh*RP + ow] = xp[n, c, (oh*SH+kh*DH)*WP +
    ow*SW+kw*DW] with c = g*Cg + c'.

    ``cols`` is (G, Kg, N, L) with any strides: the whole-batch layout
    (K, N*L) or a view of the per-image layout (N, G, Kg+1, P)."""
    if SW == 2 and DW == 1:
        _im2col_s2(xp, cols, KH, KW, SH, DH, OH, OW, WP, RP)
        return
    N, C, _ = xp.shape
    Cg = C // cols.shape[0]
    L = OH * RP
    flat = SH == 1 and SW == 1 and RP == WP
    for n in range(N):
        for c in range(C):
            gi = c // Cg
            k0 = (c - gi * Cg) * KH * KW
            for kh in range(KH):
                for kw in range(KW):
                    dst = cols[gi, k0 + kh * KW + kw, n]
                    if flat:
                        off = kh * DH * WP + kw * DW
                        dst[:] = xp[n, c, off:off + L]
                    else:
                        for oh in range(OH):
                            base = (oh * SH + kh * DH) * WP + kw * DW
                            for ow in range(OW):
                                dst[oh * RP + ow] = xp[n, c, base + ow * SW]


@kernel(lambda t: void(ro(t, 4, "A"), rw(t, 4), i64, i64, i64, i64, i64, i64, i64, i64,
                       i64, i64, i64, i64, i64))
def col2im(dcols, dx, KH, KW, SH, SW, DH, DW, PT, PL, OH, OW, HPX, WP, RP):
    """The adjoint of im2col: dx[n, c, ih, iw] = sum of the dcols entries
    im2col copied from it (dcols (G, Kg, N, L), any strides), each sample
    summed into a padded scratch plane."""
    if SW == 2 and DW == 1:
        _col2im_s2(dcols, dx, KH, KW, SH, DH, PT, PL, OH, OW, HPX, WP, RP)
        return
    N, C, H, W = dx.shape
    Cg = C // dcols.shape[0]
    flat = SH == 1 and SW == 1 and RP == WP
    scratch = np.empty((C, HPX * WP), dtype=dx.dtype)      # one per call, reused
    for n in range(N):
        scratch[:] = 0
        for c in range(C):
            gi = c // Cg
            k0 = (c - gi * Cg) * KH * KW
            for kh in range(KH):
                for kw in range(KW):
                    src = dcols[gi, k0 + kh * KW + kw, n]
                    if flat:
                        off = kh * DH * WP + kw * DW
                        dst = scratch[c, off:off + src.shape[0]]
                        for j in range(src.shape[0]):
                            dst[j] += src[j]
                    elif SW == 1:
                        for oh in range(OH):
                            row = scratch[c, (oh * SH + kh * DH) * WP + kw * DW:]
                            for ow in range(OW):
                                row[ow] += src[oh * RP + ow]
                    else:
                        for oh in range(OH):
                            base = (oh * SH + kh * DH) * WP + kw * DW
                            for ow in range(OW):
                                scratch[c, base + ow * SW] += src[oh * RP + ow]
        _crop(scratch, dx[n], WP, PT, PL)


# ------------------------------------------- layout around the matmul ---

@kernel(lambda t: void(ro(t, 2), ro(t, 1), rw(t, 4), i64))
def unpack_output(yF, b, y, RP):
    """y[n, f, oh, ow] = yF[f, n*L + oh*RP + ow] + b[f]: the matmul's
    (F, N*L) result back to NCHW, garbage columns dropped, bias added."""
    N, F, OH, OW = y.shape
    L = OH * RP
    for i in range(N * F):
        n = i // F
        f = i - n * F
        bf = b[f]
        for oh in range(OH):
            base = n * L + oh * RP
            for ow in range(OW):
                y[n, f, oh, ow] = yF[f, base + ow] + bf


@kernel(lambda t: void(ro(t, 2), ro(t, 1), rw(t, 4), rw(u8, 4), i64))
def unpack_output_relu(yF, b, y, mask, RP):
    """unpack_output with the ReLU applied on the way (relu's contract:
    max(v, 0), a NaN stays, -0.0 becomes +0) and its mask [v > 0] written,
    which the backward applies to dy."""
    N, F, OH, OW = y.shape
    L = OH * RP
    zero = np.zeros(1, y.dtype)[0]          # typed: an int 0 would widen the select
    for i in range(N * F):
        n = i // F
        f = i - n * F
        bf = b[f]
        for oh in range(OH):
            base = n * L + oh * RP
            yrow = y[n, f, oh]
            mrow = mask[n, f, oh]
            for ow in range(OW):
                v = yF[f, base + ow] + bf
                yrow[ow] = zero if v <= zero else v
                mrow[ow] = v > zero


@kernel(lambda t: void(ro(t, 4), rw(t, 2), rw(t, 1), i64))
def pack_grad_output(dy, dyF, db, RP):
    """dyF[f, n*L + oh*RP + ow] = dy[n, f, oh, ow], zero in the garbage
    columns (so they add nothing to dw or dx), and db[f] = sum of dy[:, f].

    The sum runs in a row of partial sums (vectorises without fastmath)."""
    N, F, OH, OW = dy.shape
    L = OH * RP
    for f in range(F):
        acc = np.zeros(OW, dtype=db.dtype)
        for n in range(N):
            dst = dyF[f, n * L:(n + 1) * L]
            for oh in range(OH):
                for ow in range(OW):
                    v = dy[n, f, oh, ow]
                    dst[oh * RP + ow] = v
                    acc[ow] += v
                for ow in range(OW, RP):
                    dst[oh * RP + ow] = 0
        db[f] = acc.sum()
