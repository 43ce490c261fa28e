"""Direct depthwise convolution loops, forward and backward.

Depthwise: groups == C, w (F, 1, KH, KW) with F = M*C (channel multiplier
M), filter f = c*M + m reads input channel c only:
    y[n, f, i, j] = b[f] + sum_{kh,kw} xpad[n, c, i*SH + kh*DH, j*SW + kw*DW] * w[f, kh, kw]
with xpad the zero-padded input (HP = H+PT+PB rows, WP = W+PL+PR columns).
K = KH*KW taps per output is far too few for a matrix product to pay for
its column matrix, so these are direct loops.

The phase layout ``xp`` (N, C, SH*SW*(HQ+1), WQ), HQ = ceil(HP/SH),
WQ = ceil(WP/SW): each padded plane split by stride phase into SH*SW blocks
of (HQ+1) rows of WQ, block (pr, pc) holding xpad[a*SH + pr, b*SW + pc] at
row a, column b (zeros past the padded plane, and one zero row more).
Padded position (i*SH + kh*DH, j*SW + kw*DW) is then row i + (kh*DH)//SH,
column j + (kw*DW)//SW of block ((kh*DH) % SH, (kw*DW) % SW): for every
stride, a tap's inputs for a row of outputs are one contiguous run, and
for a whole plane of outputs one run of OH*WQ with row pitch WQ ("garbage"
columns OW..WQ-1 between rows) - so every inner loop is unit-stride, has
no bounds test and vectorises. Stride 1 is plain padding plus a zero row.
The forward writes xp; the backward reads it: it is the driver's saved
copy of x.

Backward: dw and db per tap as rows of partial sums down the output rows
(a sum over j would not vectorise without reassociation), summed once per
plane. dx for stride 1 is a gather, the correlation of zero-padded dy with
the flipped filters: one store per dx element. For larger strides it is a
scatter in the phase layout, each tap one run over the whole plane (dy
copied with pitch WQ and zero garbage columns, so they add nothing), then
cropped back to dx.

What this is: typed loops over memoryviews, fused float32/float64, run
with the GIL released, single-threaded, over a block of images [n0, n1)
and channels [c0, c1): the driver (``fastcnn.backends._depthwise``) runs
blocks concurrently on fastcnn's pool. ``numba_depthwise.py`` has the
same kernels with the same arguments. What this is not: no validation, no
allocation beyond a table of tap offsets, no threads.

Shapes: x/dx (N, C, H, W), w (F, KH, KW), b (F,), y/dy (N, F, OH, OW);
stride (SH, SW), dilation (DH, DW), top/left padding PT, PL (bottom/right
padding only shows in the sizes of xp, y and dy).
"""
from cython cimport floating
from libc.stdlib cimport free, malloc

from fastcnn._kernels._rows cimport _hi, _lo, _zero


cdef struct Geo:
    Py_ssize_t M, KH, KW, T, H, W, OH, OW, SH, SW, DH, DW, PT, PL, WQ, BS, PS


cdef Geo _geo(Py_ssize_t C, Py_ssize_t F, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t H,
              Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t SH, Py_ssize_t SW,
              Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t PT, Py_ssize_t PL,
              Py_ssize_t rows, Py_ssize_t WQ) noexcept nogil:
    """Every size; BS: one phase block ((HQ+1)*WQ), PS: one plane of xp."""
    cdef Geo g
    g.M, g.KH, g.KW, g.T = F // C, KH, KW, KH * KW
    g.H, g.W, g.OH, g.OW = H, W, OH, OW
    g.SH, g.SW, g.DH, g.DW, g.PT, g.PL = SH, SW, DH, DW, PT, PL
    g.WQ, g.BS, g.PS = WQ, (rows // (SH * SW)) * WQ, rows * WQ
    return g


cdef Py_ssize_t* _tap_offsets(Geo g) except NULL:
    """offs[kh*KW + kw]: where tap (kh, kw)'s input for output (0, 0) sits
    in a plane of xp; output (i, j) adds i*WQ + j. The caller frees it."""
    cdef Py_ssize_t* offs = <Py_ssize_t*>malloc(g.T * sizeof(Py_ssize_t))
    cdef Py_ssize_t kh, kw
    if offs == NULL:
        raise MemoryError()
    for kh in range(g.KH):
        for kw in range(g.KW):
            offs[kh * g.KW + kw] = ((((kh * g.DH) % g.SH) * g.SW + (kw * g.DW) % g.SW) * g.BS
                                    + ((kh * g.DH) // g.SH) * g.WQ + (kw * g.DW) // g.SW)
    return offs


cdef inline Py_ssize_t _row(Py_ssize_t r, Geo g) noexcept nogil:
    """Where padded row r, column phase 0, starts in a plane of xp."""
    return (r % g.SH) * g.SW * g.BS + (r // g.SH) * g.WQ


cdef void _image_row(floating* prow, floating* img, Geo g, bint to_img) noexcept nogil:
    """Copy between an image row img (W,) and its padded row in the phase
    layout (prow: the row's start in column phase 0; phase p is p*BS
    further). Image column iw is padded column iw + PL. to_img: prow -> img."""
    cdef Py_ssize_t W = g.W, PL = g.PL, SW = g.SW
    cdef Py_ssize_t q, p, k, lo, hi, half = W // 2
    cdef floating* a
    cdef floating* b
    if SW == 1:
        a = prow + PL
        if to_img:
            for q in range(W):
                img[q] = a[q]
        else:
            for q in range(W):
                a[q] = img[q]
    elif SW == 2:
        # both image columns of a pair in one loop: the compiler vectorises
        # it with shuffles. Column 2q + e sits in phase (e + PL) % 2 at
        # q + (e + PL) // 2.
        a = prow + (PL % 2) * g.BS + PL // 2
        b = prow + ((PL + 1) % 2) * g.BS + (PL + 1) // 2
        if to_img:
            for q in range(half):
                img[2 * q] = a[q]
                img[2 * q + 1] = b[q]
            if W % 2:
                img[W - 1] = a[half]
        else:
            for q in range(half):
                a[q] = img[2 * q]
                b[q] = img[2 * q + 1]
            if W % 2:
                a[half] = img[W - 1]
    else:
        for p in range(SW):
            # phase column k is padded column p + SW*k, image column p + SW*k - PL
            a = prow + p * g.BS
            lo = _lo(p - PL, SW)
            hi = _hi(p - PL, SW, W, g.WQ)
            for k in range(lo, hi):
                if to_img:
                    img[p - PL + SW * k] = a[k]
                else:
                    a[k] = img[p - PL + SW * k]


cdef void _pad_plane(const floating* x, floating* xp, Geo g) noexcept nogil:
    """One plane x (H, W) into its phase-layout plane xp (PS,)."""
    cdef Py_ssize_t ih
    _zero(xp, g.PS)
    for ih in range(g.H):
        _image_row(xp + _row(ih + g.PT, g), <floating*>x + ih * g.W, g, 0)


cdef void _forward_plane(const floating* xp, const floating* w, const floating* b,
                         floating* y, const Py_ssize_t* offs, Geo g) noexcept nogil:
    """The M output planes y (M, OH, OW) of one phase-layout plane xp,
    filters w (M, KH, KW), bias b (M,)."""
    cdef Py_ssize_t OH = g.OH, OW = g.OW, WQ = g.WQ, T = g.T
    cdef Py_ssize_t m, i, j, t
    cdef floating bias, wv, w0, w1, w2, w3, w4, w5, w6, w7, w8
    cdef floating* yr
    cdef const floating* xr
    cdef const floating* x0
    cdef const floating* x1
    cdef const floating* x2
    cdef const floating* x3
    cdef const floating* x4
    cdef const floating* x5
    cdef const floating* x6
    cdef const floating* x7
    cdef const floating* x8
    for m in range(g.M):
        bias = b[m]
        if T == 9 and g.KH == 3:
            # all nine taps in one pass: one store per output
            w0, w1, w2 = w[m * 9 + 0], w[m * 9 + 1], w[m * 9 + 2]
            w3, w4, w5 = w[m * 9 + 3], w[m * 9 + 4], w[m * 9 + 5]
            w6, w7, w8 = w[m * 9 + 6], w[m * 9 + 7], w[m * 9 + 8]
            for i in range(OH):
                yr = y + (m * OH + i) * OW
                xr = xp + i * WQ
                x0, x1, x2 = xr + offs[0], xr + offs[1], xr + offs[2]
                x3, x4, x5 = xr + offs[3], xr + offs[4], xr + offs[5]
                x6, x7, x8 = xr + offs[6], xr + offs[7], xr + offs[8]
                for j in range(OW):
                    yr[j] = ((bias + (w0 * x0[j] + w1 * x1[j] + w2 * x2[j]))
                             + (w3 * x3[j] + w4 * x4[j] + w5 * x5[j])
                             + (w6 * x6[j] + w7 * x7[j] + w8 * x8[j]))
            continue
        for i in range(OH):
            yr = y + (m * OH + i) * OW
            for j in range(OW):
                yr[j] = bias
            for t in range(T):
                xr = xp + i * WQ + offs[t]
                wv = w[m * T + t]
                for j in range(OW):
                    yr[j] += wv * xr[j]


def forward(const floating[:, :, :, ::1] x, const floating[:, :, ::1] w,
            const floating[::1] b, floating[:, :, :, ::1] xp, floating[:, :, :, ::1] y,
            Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t c0, Py_ssize_t c1,
            Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH, Py_ssize_t DW,
            Py_ssize_t PT, Py_ssize_t PL):
    """For images [n0, n1) and channels [c0, c1): xp[n, c] = x[n, c] in the
    phase layout and y[n, c*M:(c+1)*M] = its depthwise convolution."""
    cdef Geo g = _geo(x.shape[1], w.shape[0], w.shape[1], w.shape[2], x.shape[2],
                      x.shape[3], y.shape[2], y.shape[3], SH, SW, DH, DW, PT, PL,
                      xp.shape[2], xp.shape[3])
    cdef Py_ssize_t* offs = _tap_offsets(g)
    cdef Py_ssize_t n, c
    try:
        with nogil:
            for n in range(n0, n1):
                for c in range(c0, c1):
                    _pad_plane(&x[n, c, 0, 0], &xp[n, c, 0, 0], g)
                    _forward_plane(&xp[n, c, 0, 0], &w[c * g.M, 0, 0], &b[c * g.M],
                                   &y[n, c * g.M, 0, 0], offs, g)
    finally:
        free(offs)


cdef void _grad_weights(const floating* dy, const floating* xp, floating* acc, double* dw,
                        double* db, const Py_ssize_t* offs, Geo g) noexcept nogil:
    """One plane's share of dw (M, KH*KW) and db (M,), added: per tap the
    dot product of dy (M, OH, OW) with the inputs it met in xp. acc
    (KH*KW + 1, OW) is scratch: per tap a row of partial sums."""
    cdef Py_ssize_t OH = g.OH, OW = g.OW, T = g.T
    cdef Py_ssize_t m, i, j, t
    cdef const floating* dyr
    cdef const floating* dyr1
    cdef const floating* xr
    cdef const floating* xr1
    cdef floating* a
    cdef double s
    for m in range(g.M):
        _zero(acc, (T + 1) * OW)
        # two output rows per pass: half the passes over the rows of acc
        for i in range(0, OH - 1, 2):
            dyr = dy + (m * OH + i) * OW
            dyr1 = dyr + OW
            a = acc + T * OW
            for j in range(OW):
                a[j] += dyr[j] + dyr1[j]
            for t in range(T):
                xr = xp + i * g.WQ + offs[t]
                xr1 = xr + g.WQ
                a = acc + t * OW
                for j in range(OW):
                    a[j] += dyr[j] * xr[j] + dyr1[j] * xr1[j]
        if OH % 2:
            i = OH - 1
            dyr = dy + (m * OH + i) * OW
            a = acc + T * OW
            for j in range(OW):
                a[j] += dyr[j]
            for t in range(T):
                xr = xp + i * g.WQ + offs[t]
                a = acc + t * OW
                for j in range(OW):
                    a[j] += dyr[j] * xr[j]
        for t in range(T + 1):
            s = 0
            for j in range(OW):
                s += acc[t * OW + j]
            if t < T:
                dw[m * T + t] += s
            else:
                db[m] += s


cdef void _grad_input_s1(const floating* dy, const floating* w, floating* dyp, floating* dx,
                         Py_ssize_t RH, Py_ssize_t RC, Geo g) noexcept nogil:
    """dx (H, W) of one plane, stride 1, as a gather: the correlation of dy
    (M, OH, OW), zero-padded into dyp (M, RH, RC) with A = (KH-1)*DH rows
    above and B = (KW-1)*DW columns left, with the flipped filters:
    dx[ih, iw] = sum_{m,kh,kw} w[m, kh, kw] * dyp[m, ih+PT+A - kh*DH, iw+PL+B - kw*DW]."""
    cdef Py_ssize_t KH = g.KH, KW = g.KW, DH = g.DH, DW = g.DW, OH = g.OH, OW = g.OW
    cdef Py_ssize_t H = g.H, W = g.W, A = (g.KH - 1) * g.DH, B = (g.KW - 1) * g.DW
    cdef Py_ssize_t m, i, j, kh, kw
    cdef floating v, wv, w0, w1, w2, w3, w4, w5, w6, w7, w8
    cdef floating* d
    cdef floating* dxr
    cdef const floating* c
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    _zero(dyp, g.M * RH * RC)
    for m in range(g.M):
        for i in range(OH):
            d = dyp + (m * RH + A + i) * RC + B
            for j in range(OW):
                d[j] = dy[(m * OH + i) * OW + j]
    for m in range(g.M):
        if KH == 3 and KW == 3:
            w0, w1, w2 = w[m * 9 + 0], w[m * 9 + 1], w[m * 9 + 2]
            w3, w4, w5 = w[m * 9 + 3], w[m * 9 + 4], w[m * 9 + 5]
            w6, w7, w8 = w[m * 9 + 6], w[m * 9 + 7], w[m * 9 + 8]
        for i in range(H):
            dxr = dx + i * W
            c = dyp + (m * RH + i + g.PT + A) * RC + g.PL + B     # tap (0, 0)
            if KH == 3 and KW == 3:
                r0 = c
                r1 = c - DH * RC
                r2 = r1 - DH * RC
                for j in range(W):
                    v = ((w0 * r0[j] + w1 * r0[j - DW] + w2 * r0[j - 2 * DW])
                         + (w3 * r1[j] + w4 * r1[j - DW] + w5 * r1[j - 2 * DW])
                         + (w6 * r2[j] + w7 * r2[j - DW] + w8 * r2[j - 2 * DW]))
                    dxr[j] = v if m == 0 else dxr[j] + v
                continue
            if m == 0:
                _zero(dxr, W)
            for kh in range(KH):
                for kw in range(KW):
                    r0 = c - kh * DH * RC - kw * DW
                    wv = w[(m * KH + kh) * KW + kw]
                    for j in range(W):
                        dxr[j] += wv * r0[j]


cdef void _grad_input_strided(const floating* dy, const floating* w, floating* dyw,
                              floating* dxp, floating* dx, const Py_ssize_t* offs,
                              Geo g) noexcept nogil:
    """dx (H, W) of one plane, any stride: the transposed convolution of dy
    (M, OH, OW) scattered into the phase-layout plane dxp (PS,), each tap
    one run of OH*WQ over dy copied into dyw (OH, WQ) with zero garbage
    columns, then cropped to dx."""
    cdef Py_ssize_t OH = g.OH, OW = g.OW, WQ = g.WQ, L = g.OH * g.WQ, T = g.T
    cdef Py_ssize_t m, i, j, t, ih
    cdef floating wv
    cdef floating* d
    _zero(dxp, g.PS)
    for m in range(g.M):
        for i in range(OH):
            for j in range(OW):
                dyw[i * WQ + j] = dy[(m * OH + i) * OW + j]
            for j in range(OW, WQ):
                dyw[i * WQ + j] = 0
        for t in range(T):
            d = dxp + offs[t]
            wv = w[m * T + t]
            for j in range(L):
                d[j] += wv * dyw[j]
    for ih in range(g.H):
        _image_row(dxp + _row(ih + g.PT, g), dx + ih * g.W, g, 1)


def backward(const floating[:, :, :, ::1] dy, const floating[:, :, ::1] w,
             const floating[:, :, :, ::1] xp, floating[:, :, :, ::1] dx,
             double[:, ::1] dw, double[::1] db, floating[:, ::1] acc, floating[:, ::1] dxp,
             floating[:, ::1] dyw, floating[:, :, ::1] dyp,
             Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t c0, Py_ssize_t c1,
             Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH, Py_ssize_t DW,
             Py_ssize_t PT, Py_ssize_t PL):
    """For images [n0, n1) and channels [c0, c1): dx[n, c] (written), and
    dw[f] (F, KH*KW), db[f] = their sums over images n0..n1-1 (written) for
    the filters f of those channels. xp is the forward's phase layout.
    Scratch: acc (KH*KW + 1, OW); for strides > 1 dxp (one plane of xp)
    and dyw (OH, WQ); for stride 1 dyp (M, RH, RC) with
    RH >= (KH-1)*DH + max(OH, H+PT), RC >= (KW-1)*DW + max(OW, W+PL)."""
    cdef Geo g = _geo(dx.shape[1], w.shape[0], w.shape[1], w.shape[2], dx.shape[2],
                      dx.shape[3], dy.shape[2], dy.shape[3], SH, SW, DH, DW, PT, PL,
                      xp.shape[2], xp.shape[3])
    cdef Py_ssize_t RH = dyp.shape[1], RC = dyp.shape[2], M = g.M
    cdef Py_ssize_t* offs = _tap_offsets(g)
    cdef Py_ssize_t n, c, f, t
    try:
        with nogil:
            for f in range(c0 * M, c1 * M):
                db[f] = 0
                for t in range(g.T):
                    dw[f, t] = 0
            # images outer: the planes of a block are read in memory order
            for n in range(n0, n1):
                for c in range(c0, c1):
                    _grad_weights(&dy[n, c * M, 0, 0], &xp[n, c, 0, 0], &acc[0, 0],
                                  &dw[c * M, 0], &db[c * M], offs, g)
                    if SH == 1 and SW == 1:
                        _grad_input_s1(&dy[n, c * M, 0, 0], &w[c * M, 0, 0], &dyp[0, 0, 0],
                                       &dx[n, c, 0, 0], RH, RC, g)
                    else:
                        _grad_input_strided(&dy[n, c * M, 0, 0], &w[c * M, 0, 0],
                                            &dyw[0, 0], &dxp[0, 0], &dx[n, c, 0, 0], offs, g)
    finally:
        free(offs)
