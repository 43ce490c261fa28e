"""The cupy backend's device code: five ``cupy.ElementwiseKernel`` specs, as
plain strings.

Every windowed op of the backend is one of three gathers over an index table
of ``_cupy_tables`` (-1 marks a tap that reads nothing):

* GATHER_SUM:  out[b, r] = sum_t src[b, table[r, t]]: im2col (T = 1), col2im,
  average pooling forward and backward.
* WINDOW_MAX:  val[b, r], arg[b, r] = the maximum of src[b, table[r, :]] and
  its offset: max pooling's rules - the first maximum in tap order wins a
  tie, the first NaN wins over any number, -1 taps (padding) are never read,
  so an all -inf window picks its first real element.
* ROUTE_SUM:   dx[b, s] = sum_t dy[b, o] over the windows o = inverse[s, t]
  whose maximum was s: the max-pool backward, gathered per input element
  instead of scattered per output, so no two threads write one element.

RELU_FORWARD and RELU_BACKWARD are the contract's relu (``loops``' formulas).

Each thread writes one output element and reads the tables, so no atomics
and a fixed summation order: results do not vary from run to run. The
bodies keep to the subset of C that CUDA and a host C compiler share (no
intrinsics, NaN tested as v != v), so the CPU tests compile these very
strings with the system C compiler and run them against ``loops``; only the
CuPy launch itself is GPU-only. Deliberately not here: CuPy (no import),
launch code (``backends/cupy.py``), index arithmetic (``_cupy_tables``).
"""
from typing import NamedTuple


class Spec(NamedTuple):
    """cupy.ElementwiseKernel(in_params, out_params, operation, name)."""
    in_params: str
    out_params: str
    operation: str
    name: str


GATHER_SUM = Spec(
    "raw T src, raw I table, int64 S, int64 R, int64 TW", "T out",
    """
    const ptrdiff_t b = i / R, r = i - b * R;
    T acc = 0;
    for (ptrdiff_t t = 0; t < TW; ++t) {
        const ptrdiff_t k = table[r * TW + t];
        if (k >= 0) acc += src[b * S + k];
    }
    out = acc;
    """, "fastcnn_gather_sum")

WINDOW_MAX = Spec(
    "raw T src, raw I table, int64 S, int64 R, int64 TW", "T val, I arg",
    """
    const ptrdiff_t b = i / R, r = i - b * R;
    T best = 0;
    ptrdiff_t at = -1;
    for (ptrdiff_t t = 0; t < TW; ++t) {
        const ptrdiff_t k = table[r * TW + t];
        if (k < 0) continue;
        const T v = src[b * S + k];
        /* a larger value, or the first NaN (v != v) while best is a number */
        if (at < 0 || v > best || (v != v && best == best)) {
            best = v;
            at = k;
        }
    }
    val = best;
    arg = at;
    """, "fastcnn_window_max")

ROUTE_SUM = Spec(
    "raw T dy, raw A arg, raw I inverse, int64 S, int64 R, int64 TW", "T dx",
    """
    const ptrdiff_t b = i / S, s = i - b * S;
    T acc = 0;
    for (ptrdiff_t t = 0; t < TW; ++t) {
        const ptrdiff_t o = inverse[s * TW + t];
        if (o >= 0 && arg[b * R + o] == s) acc += dy[b * R + o];
    }
    dx = acc;
    """, "fastcnn_route_sum")

# y = x where x > 0 or x is NaN, else +0 (so -0.0 -> 0.0, as np.maximum(x, 0))
RELU_FORWARD = Spec(
    "T x", "T y, bool m",
    """
    y = (x > (T)0 || x != x) ? x : (T)0;
    m = y > (T)0;
    """, "fastcnn_relu_forward")

# dx = dy * [y > 0]: an inf or NaN in dy where y <= 0 gives NaN (the contract)
RELU_BACKWARD = Spec(
    "T dy, bool m", "T dx",
    """
    dx = dy * (T)m;
    """, "fastcnn_relu_backward")

SPECS = (GATHER_SUM, WINDOW_MAX, ROUTE_SUM, RELU_FORWARD, RELU_BACKWARD)
