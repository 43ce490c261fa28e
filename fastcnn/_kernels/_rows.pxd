"""Row-level helpers shared by the compiled kernels (cimported, inlined).

What this is: the few loops every kernel repeats -- which output columns
of a window tap fall inside the image, and unit-stride-aware row updates.
What this is not: no kernels, nothing Python-visible.
"""
from cython cimport floating
from libc.stdlib cimport malloc


cdef inline Py_ssize_t _lo(Py_ssize_t off, Py_ssize_t S) noexcept nogil:
    """Smallest o >= 0 with o*S + off >= 0."""
    if off >= 0:
        return 0
    return (S - 1 - off) // S


cdef inline Py_ssize_t _hi(Py_ssize_t off, Py_ssize_t S, Py_ssize_t L,
                           Py_ssize_t O) noexcept nogil:
    """One past the largest o < O with o*S + off <= L - 1 (may be <= _lo)."""
    cdef Py_ssize_t e
    if L - 1 - off < 0:
        return 0
    e = (L - 1 - off) // S + 1
    return e if e < O else O


cdef inline Py_ssize_t* _tap_ranges(Py_ssize_t KW, Py_ssize_t SW, Py_ssize_t PL,
                                    Py_ssize_t W, Py_ssize_t OW) except NULL:
    """For each tap kw, the output columns [lo, hi) whose input column
    ow*SW + kw - PL (PL: left padding) lies inside the image, returned as
    lo[0:KW] ++ hi[0:KW]; an empty range has hi == lo. Computed once per
    call because the divisions cost more than a short row of multiply-adds.
    The caller frees the result."""
    cdef Py_ssize_t* r = <Py_ssize_t*>malloc(2 * KW * sizeof(Py_ssize_t))
    cdef Py_ssize_t kw
    if r == NULL:
        raise MemoryError()
    for kw in range(KW):
        r[kw] = _lo(kw - PL, SW)
        r[KW + kw] = max(r[kw], _hi(kw - PL, SW, W, OW))
    return r


cdef inline void _axpy(floating* y, Py_ssize_t sy, const floating* x,
                       Py_ssize_t sx, floating a, Py_ssize_t n) noexcept nogil:
    """y[i*sy] += a * x[i*sx]; the unit-stride case is split out so the
    compiler vectorises it."""
    cdef Py_ssize_t i
    if sy == 1 and sx == 1:
        for i in range(n):
            y[i] += a * x[i]
    else:
        for i in range(n):
            y[i * sy] += a * x[i * sx]


cdef inline void _zero(floating* x, Py_ssize_t n) noexcept nogil:
    """x[0:n] = 0."""
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = 0
