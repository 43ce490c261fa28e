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

Flat runs: the forward computes a plane narrower than FLAT_BELOW as one
run of OH*WQ outputs (garbage columns and all) into scratch and copies the
OW valid columns of each row out: one long loop per tap in place of OH
rows of 7 or 14 that leave the vector lanes idle. Wider planes go row by
row, where the copy would cost more than the short rows lose.

Backward: dw and db per tap as one dot product over the run of OH*WQ, dy
copied into dyw at pitch WQ with zero garbage columns (eight float partial
sums, added in double at most every 256 elements; a NaN from a garbage
column times an inf of x sends that plane back to sums over the valid
columns). dx for stride 1 is a gather, the correlation of zero-padded dy
with the flipped filters: one store per dx element, flat runs for narrow
planes as in the forward. For larger strides it is a scatter in the phase
layout, each tap one run over the whole plane of dyw, then cropped back
to dx. The scratch planes of dy are zeroed once per call: each plane
writes only where dy goes.

What this is: typed loops over memoryviews, fused float32/float64, run
with the GIL released, single-threaded, over a block of images [n0, n1)
and channels [c0, c1): the driver (``fastcnn.backends._depthwise``) runs
blocks concurrently on fastcnn's pool. ``numba_depthwise.py`` has the
same kernels with the same arguments. What this is not: no validation, no
allocation beyond a table of tap offsets (and of dw sums), no threads.

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


cdef enum:
    # planes narrower than this are computed as one flat run at the row
    # pitch (garbage columns and all) and copied out: their rows are too
    # short for the vector lanes. Wider rows vectorise well as they are,
    # and there the copy out would cost more than the short rows lose.
    FLAT_BELOW = 17


cdef void _forward_plane(const floating* xp, const floating* w, const floating* b,
                         floating* y, floating* yq, const Py_ssize_t* offs,
                         Geo g) noexcept nogil:
    """The M output planes y (M, OH, OW) of one phase-layout plane xp,
    filters w (M, KH, KW), bias b (M,). Narrow planes (OW < FLAT_BELOW)
    are computed over the flat run yq (OH*WQ,) at row pitch WQ - one long
    unit-stride loop instead of OH short rows - and their OW valid columns
    per row copied out; wider ones row by row straight into y."""
    cdef Py_ssize_t OH = g.OH, OW = g.OW, WQ = g.WQ, T = g.T
    cdef Py_ssize_t m, i, j, t, rows, n, pitch
    cdef bint flat = OW < FLAT_BELOW
    cdef floating bias, wv, w0, w1, w2, w3, w4, w5, w6, w7, w8
    cdef floating* yr
    cdef floating* out
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
    # rows of n outputs at output pitch `pitch`, input pitch WQ
    rows, n, pitch = OH, OW, OW
    if flat:
        rows, n, pitch = 1, OH * WQ, 0
    for m in range(g.M):
        bias = b[m]
        out = yq if flat else y + m * OH * OW
        if T == 9:
            w0, w1, w2 = w[m * 9 + 0], w[m * 9 + 1], w[m * 9 + 2]
            w3, w4, w5 = w[m * 9 + 3], w[m * 9 + 4], w[m * 9 + 5]
            w6, w7, w8 = w[m * 9 + 6], w[m * 9 + 7], w[m * 9 + 8]
        for i in range(rows):
            yr = out + i * pitch
            if T == 9:
                # all nine taps in one pass: one store per output
                xr = xp + i * WQ
                x0, x1, x2 = xr + offs[0], xr + offs[1], xr + offs[2]
                x3, x4, x5 = xr + offs[3], xr + offs[4], xr + offs[5]
                x6, x7, x8 = xr + offs[6], xr + offs[7], xr + offs[8]
                for j in range(n):
                    yr[j] = ((bias + (w0 * x0[j] + w1 * x1[j] + w2 * x2[j]))
                             + (w3 * x3[j] + w4 * x4[j] + w5 * x5[j])
                             + (w6 * x6[j] + w7 * x7[j] + w8 * x8[j]))
                continue
            for j in range(n):
                yr[j] = bias
            for t in range(T):
                xr = xp + i * WQ + offs[t]
                wv = w[m * T + t]
                for j in range(n):
                    yr[j] += wv * xr[j]
        if flat:
            for i in range(OH):
                yr = y + (m * OH + i) * OW
                xr = yq + i * WQ
                for j in range(OW):
                    yr[j] = xr[j]


def forward(const floating[:, :, :, ::1] x, const floating[:, :, ::1] w,
            const floating[::1] b, floating[:, :, :, ::1] xp, floating[:, :, :, ::1] y,
            floating[::1] yq, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t c0, Py_ssize_t c1,
            Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH, Py_ssize_t DW,
            Py_ssize_t PT, Py_ssize_t PL):
    """For images [n0, n1) and channels [c0, c1): xp[n, c] = x[n, c] in the
    phase layout and y[n, c*M:(c+1)*M] = its depthwise convolution.
    Scratch: yq (OH*WQ,)."""
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
                                   &y[n, c * g.M, 0, 0], &yq[0], offs, g)
    finally:
        free(offs)


cdef void _grad_weights_rows(const floating* dy, const floating* xp, floating* acc,
                             double* dw, double* db, const Py_ssize_t* offs,
                             Geo g) noexcept nogil:
    """One output plane's share of dw (KH*KW,) and db (1,), added: per tap
    the dot product of dy (OH, OW) with the inputs it met in xp, over the
    valid columns only. acc (KH*KW + 1, OW) is scratch: per tap a row of
    partial sums (a sum over j would not vectorise without reassociation)."""
    cdef Py_ssize_t OH = g.OH, OW = g.OW, T = g.T
    cdef Py_ssize_t i, j, t
    cdef const floating* dyr
    cdef const floating* xr
    cdef floating* a
    cdef double s
    _zero(acc, (T + 1) * OW)
    for i in range(OH):
        dyr = dy + i * OW
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
            dw[t] += s
        else:
            db[0] += s


cdef inline double _dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    """sum(a[:n] * b[:n]) (b NULL: sum(a[:n])): eight float partial sums,
    which the compiler keeps in vector registers (it would not reassociate
    one sum), each over at most 32 terms before it is added in double -
    no longer chains in float than dw's row sums had."""
    cdef double total = 0
    cdef floating s0, s1, s2, s3, s4, s5, s6, s7
    cdef Py_ssize_t r, p, e, n8
    for r in range(0, n, 256):
        e = min(n - r, <Py_ssize_t>256)
        n8 = e - e % 8
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0
        if b == NULL:
            for p in range(r, r + n8, 8):
                s0 += a[p]
                s1 += a[p + 1]
                s2 += a[p + 2]
                s3 += a[p + 3]
                s4 += a[p + 4]
                s5 += a[p + 5]
                s6 += a[p + 6]
                s7 += a[p + 7]
            for p in range(r + n8, r + e):
                s0 += a[p]
        else:
            for p in range(r, r + n8, 8):
                s0 += a[p] * b[p]
                s1 += a[p + 1] * b[p + 1]
                s2 += a[p + 2] * b[p + 2]
                s3 += a[p + 3] * b[p + 3]
                s4 += a[p + 4] * b[p + 4]
                s5 += a[p + 5] * b[p + 5]
                s6 += a[p + 6] * b[p + 6]
                s7 += a[p + 7] * b[p + 7]
            for p in range(r + n8, r + e):
                s0 += a[p] * b[p]
        total += ((<double>s0 + s1) + (<double>s2 + s3)) + ((<double>s4 + s5) + (<double>s6 + s7))
    return total


cdef bint _grad_weights(const floating* dyw, const floating* xp, double* dw, double* db,
                        double* sums, const Py_ssize_t* offs, Geo g) noexcept nogil:
    """One output plane's share of dw (KH*KW,) and db (1,), added: per tap
    the dot product of dyw (OH*WQ,: dy at the row pitch WQ of xp, zero
    garbage columns) with the run of OH*WQ inputs it met in xp - one long
    loop per tap, into sums (KH*KW,) first. False, with nothing added, if a
    sum is NaN: a zero garbage column times an inf or NaN of x that the tap
    never meets would make one, so the caller redoes that plane over the
    valid columns."""
    cdef Py_ssize_t T = g.T, L = g.OH * g.WQ
    cdef Py_ssize_t t
    for t in range(T):
        sums[t] = _dot(dyw, xp + offs[t], L)
        if sums[t] != sums[t]:
            return False
    for t in range(T):
        dw[t] += sums[t]
    db[0] += _dot(dyw, <const floating*>NULL, L)
    return True


cdef void _grad_input_s1(const floating* w, const floating* dyp, floating* dq,
                         floating* dx, Py_ssize_t RC, bint first, Geo g) noexcept nogil:
    """One output plane's share of dx (H, W), stride 1, as a gather: the
    correlation of dy, zero-padded into dyp (RH, RC) with A = (KH-1)*DH rows
    above and B = (KW-1)*DW columns left, with the flipped filter w (KH, KW):
    dx[ih, iw] = sum_{kh,kw} w[kh, kw] * dyp[ih+PT+A - kh*DH, iw+PL+B - kw*DW],
    written if first, else added. Narrow planes (W < FLAT_BELOW) go to the
    flat run dq (H*RC,) at row pitch RC (see _forward_plane), which the
    caller copies out; wider ones row by row into dx."""
    cdef Py_ssize_t KH = g.KH, KW = g.KW, DW = g.DW
    cdef Py_ssize_t A = (g.KH - 1) * g.DH, B = (g.KW - 1) * g.DW
    cdef Py_ssize_t i, j, kh, kw, rows, n, pitch
    cdef bint flat = g.W < FLAT_BELOW
    cdef floating wv, w0, w1, w2, w3, w4, w5, w6, w7, w8
    cdef const floating* c
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    cdef floating* out = dq if flat else dx
    cdef floating* d
    rows, n, pitch = g.H, g.W, g.W
    if flat:
        rows, n, pitch = 1, g.H * RC, 0
    if KH == 3 and KW == 3:
        w0, w1, w2 = w[0], w[1], w[2]
        w3, w4, w5 = w[3], w[4], w[5]
        w6, w7, w8 = w[6], w[7], w[8]
    for i in range(rows):
        d = out + i * pitch
        c = dyp + (i + g.PT + A) * RC + g.PL + B     # tap (0, 0)
        if KH == 3 and KW == 3:
            r0 = c
            r1 = c - g.DH * RC
            r2 = r1 - g.DH * RC
            if first:
                for j in range(n):
                    d[j] = ((w0 * r0[j] + w1 * r0[j - DW] + w2 * r0[j - 2 * DW])
                            + (w3 * r1[j] + w4 * r1[j - DW] + w5 * r1[j - 2 * DW])
                            + (w6 * r2[j] + w7 * r2[j - DW] + w8 * r2[j - 2 * DW]))
            else:
                for j in range(n):
                    d[j] += ((w0 * r0[j] + w1 * r0[j - DW] + w2 * r0[j - 2 * DW])
                             + (w3 * r1[j] + w4 * r1[j - DW] + w5 * r1[j - 2 * DW])
                             + (w6 * r2[j] + w7 * r2[j - DW] + w8 * r2[j - 2 * DW]))
            continue
        if first:
            _zero(d, n)
        for kh in range(KH):
            for kw in range(KW):
                r0 = c - kh * g.DH * RC - kw * DW
                wv = w[kh * KW + kw]
                for j in range(n):
                    d[j] += wv * r0[j]


cdef void _grad_input_strided(const floating* dyw, const floating* w, floating* dxp,
                              const Py_ssize_t* offs, Geo g) noexcept nogil:
    """One output plane's share of dx, any stride: the transposed
    convolution of dyw (OH*WQ,: dy at pitch WQ, zero garbage columns, so
    they add nothing) with the filter w (KH*KW,) scattered into the
    phase-layout plane dxp (PS,), each tap one run of OH*WQ. The caller
    crops dxp to dx."""
    cdef Py_ssize_t L = g.OH * g.WQ
    cdef Py_ssize_t j, t
    cdef floating wv
    cdef floating* d
    for t in range(g.T):
        d = dxp + offs[t]
        wv = w[t]
        for j in range(L):
            d[j] += wv * dyw[j]


cdef inline void _put_rows(const floating* src, floating* dst, Py_ssize_t rows,
                           Py_ssize_t cols, Py_ssize_t pitch) noexcept nogil:
    """dst[i*pitch + j] = src[i*cols + j] for a (rows, cols) plane src."""
    cdef Py_ssize_t i, j
    for i in range(rows):
        for j in range(cols):
            dst[i * pitch + j] = src[i * cols + j]


def backward(const floating[:, :, :, ::1] dy, const floating[:, :, ::1] w,
             const floating[:, :, :, ::1] xp, floating[:, :, :, ::1] dx,
             double[:, ::1] dw, double[::1] db, floating[::1] acc, floating[::1] dxp,
             floating[::1] dyw, floating[:, ::1] dyp, floating[::1] dq,
             Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t c0, Py_ssize_t c1,
             Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH, Py_ssize_t DW,
             Py_ssize_t PT, Py_ssize_t PL):
    """For images [n0, n1) and channels [c0, c1): dx[n, c] (written), and
    dw[f] (F, KH*KW), db[f] = their sums over images n0..n1-1 (written) for
    the filters f of those channels. xp is the forward's phase layout.
    Scratch: acc ((KH*KW + 1) * OW,), dyw (OH*WQ,); for strides > 1
    dxp (one plane of xp); for stride 1 dyp (RH, RC) and dq (H*RC,) with
    RH >= (KH-1)*DH + max(OH, H+PT+1), RC >= (KW-1)*DW + max(OW, W+PL)."""
    cdef Geo g = _geo(dx.shape[1], w.shape[0], w.shape[1], w.shape[2], dx.shape[2],
                      dx.shape[3], dy.shape[2], dy.shape[3], SH, SW, DH, DW, PT, PL,
                      xp.shape[2], xp.shape[3])
    cdef Py_ssize_t RH = dyp.shape[0], RC = dyp.shape[1], M = g.M
    cdef Py_ssize_t A = (g.KH - 1) * g.DH, B = (g.KW - 1) * g.DW
    cdef Py_ssize_t* offs = _tap_offsets(g)
    cdef double* sums = <double*>malloc(g.T * sizeof(double))
    cdef Py_ssize_t n, c, f, t, m, ih, iw
    cdef bint s1 = SH == 1 and SW == 1
    cdef const floating* dym
    cdef const floating* xpl
    cdef floating* dxr
    try:
        if sums == NULL:
            raise MemoryError()
        with nogil:
            for f in range(c0 * M, c1 * M):
                db[f] = 0
                for t in range(g.T):
                    dw[f, t] = 0
            # zero once: the planes below overwrite only where dy goes, so
            # the garbage columns and the padding stay zero
            _zero(&dyw[0], g.OH * g.WQ)
            if s1:
                _zero(&dyp[0, 0], RH * RC)
            # images outer: the planes of a block are read in memory order
            for n in range(n0, n1):
                for c in range(c0, c1):
                    xpl = &xp[n, c, 0, 0]
                    for m in range(M):
                        f = c * M + m
                        dym = &dy[n, f, 0, 0]
                        _put_rows(dym, &dyw[0], g.OH, g.OW, g.WQ)
                        if not _grad_weights(&dyw[0], xpl, &dw[f, 0], &db[f], sums, offs, g):
                            _grad_weights_rows(dym, xpl, &acc[0], &dw[f, 0], &db[f], offs, g)
                        if s1:
                            _put_rows(dym, &dyp[A, B], g.OH, g.OW, RC)
                            _grad_input_s1(&w[f, 0, 0], &dyp[0, 0], &dq[0], &dx[n, c, 0, 0],
                                           RC, m == 0, g)
                        else:
                            if m == 0:
                                _zero(&dxp[0], g.PS)
                            _grad_input_strided(&dyw[0], &w[f, 0, 0], &dxp[0], offs, g)
                    for ih in range(g.H):
                        dxr = &dx[n, c, ih, 0]
                        if not s1:
                            _image_row(&dxp[0] + _row(ih + g.PT, g), dxr, g, 1)
                        elif g.W < FLAT_BELOW:
                            for iw in range(g.W):
                                dxr[iw] = dq[ih * RC + iw]
    finally:
        free(offs)
        free(sums)
