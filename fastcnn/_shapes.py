"""Argument checks and output-size arithmetic shared by the public ops.

Everything here raises ``TypeError`` / ``ValueError`` with a message that
names the argument and says what was expected. It deliberately knows nothing
about backends or kernels: ``fastcnn.ops`` calls it once, at the door.
"""
import numbers
import sys

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Largest stride / padding / kernel size accepted: the kernels compute
# offsets like stride * itemsize * W in 64-bit integers, and nothing useful
# is larger than any array that fits in memory.
MAX_PARAM = 2**31 - 1


def _is_int(v):
    # a plain int first: the ABC check below costs more than the rest of a small op's checks
    return type(v) is int or (isinstance(v, numbers.Integral)
                              and not isinstance(v, (bool, np.bool_)))


def pair(value, name, *, minimum):
    """An int or an (h, w) pair of ints, each >= minimum -> (h, w)."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int \
            and type(value[1]) is int:
        hw = value      # what the layers pass on every call: already an (h, w) of ints
    elif _is_int(value):
        hw = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        hw = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    if min(hw) < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if max(hw) > MAX_PARAM:
        raise ValueError(f"{name} must be at most {MAX_PARAM}, got {value!r}")
    return hw


def array_module(a):
    """'cupy' for a cupy.ndarray, 'numpy' for a numpy.ndarray, else None.
    Never imports CuPy: a CuPy array exists only once something imported it."""
    if type(a) is np.ndarray:
        return "numpy"
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(a, cupy.ndarray):
        return "cupy"
    return "numpy" if isinstance(a, np.ndarray) else None


def same_place(a, name, x):
    """``a`` lives where ``x`` does: the same array module and, on a GPU, device."""
    if type(a) is np.ndarray and type(x) is np.ndarray:
        return          # host memory both: nothing more to compare
    here, there = array_module(x), array_module(a)
    if here != there:
        move = "cupy.asarray" if here == "cupy" else "cupy.asnumpy"
        raise TypeError(f"{name} is a {there}.ndarray but x is a {here}.ndarray; arrays of "
                        f"one call live in one place: move it with {move}({name})")
    if here == "cupy" and a.device != x.device:
        raise ValueError(f"{name} is on {a.device} but x is on {x.device}; move it with "
                         f"cupy.asarray({name}) inside 'with {x.device}:'")


def array(a, name, ndim, dtype=None):
    """Check a float32/float64 ndarray (NumPy's, or CuPy's) of ndim dimensions
    (any, if None; and dtype, if given)."""
    if type(a) is not np.ndarray and array_module(a) is None:
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__} "
                        f"(a cupy.ndarray for backend 'cupy')")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but the input x is {dtype}; "
                        f"mixed dtypes are not allowed (cast with .astype({dtype.name!r}))")
    if ndim is not None and a.ndim != ndim:
        layout = {4: " (N, C, H, W)", 1: " (C_out,)"}.get(ndim, "")
        raise ValueError(f"{name} must have {ndim} dimensions{layout}, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    return a


def out_size(size, pad_total, k, s):
    return (size + pad_total - k) // s + 1


def pool_out_size(size, pad, k, s, ceil_mode, d=1):
    """A pooling's output size along one dimension, PyTorch's rule: floor or
    ceil of (size + 2*pad - d*(k-1) - 1) / s, plus one; in ceil mode the last
    window must start inside the input or the left padding, else it is dropped."""
    span = size + 2 * pad - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    # PyTorch also refuses outputs of size < 1; the caller does
    if ceil_mode and (out - 1) * s >= size + pad:
        out -= 1
    return out


def flag(value, name):
    """A bool (Python's or NumPy's) -> bool; anything else is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def divisor(value):
    """avg pooling's divisor_override: None or a non-zero int (PyTorch's rule)."""
    if value is None:
        return None
    if not _is_int(value):
        raise TypeError(f"divisor_override must be None or an int, got {value!r}")
    if value == 0:
        raise ValueError("divisor_override must not be zero")
    if abs(value) > MAX_PARAM:
        raise ValueError(f"divisor_override must be at most {MAX_PARAM} in size, got {value!r}")
    return int(value)


def groups(value, C, F):
    """conv's groups: a positive int dividing both C (x's channels) and F
    (w's output channels)."""
    if not _is_int(value):
        raise TypeError(f"groups must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"groups must be positive, got {value!r}")
    if C % value or F % value:
        raise ValueError(f"groups must divide both the input channels ({C}, x.shape[1]) and "
                         f"the output channels ({F}, w.shape[0]), got groups={value}")
    return int(value)


def conv_padding(padding, KH, KW, stride):
    """Normalise conv padding to (PT, PB, PL, PR). KH, KW: the kernel's span
    (dilated: D*(K-1)+1).

    'same' (stride 1 only) pads KH-1 rows in total; an odd remainder goes to
    the bottom/right, as PyTorch does.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' requires stride 1, got stride={stride}")
            th, tw = KH - 1, KW - 1
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        raise ValueError(f"padding must be an int, an (h, w) pair, 'same' or 'valid', got {padding!r}")
    ph, pw = pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


def check_window_fits(H, W, pads, KH, KW, what):
    """The kernel must fit inside the padded input (at least one output pixel)."""
    PT, PB, PL, PR = pads
    if KH > H + PT + PB or KW > W + PL + PR:
        raise ValueError(
            f"{what} ({KH}x{KW}) is larger than the padded input "
            f"({H + PT + PB}x{W + PL + PR}: input {H}x{W}, padding {pads})")


def adaptive_size(output_size, H, W):
    """Adaptive pooling's output_size -> (OH, OW): an int, or an (h, w) pair
    whose entries are ints or None (None keeps that input size). Each must be
    positive; unlike PyTorch, 0 (an empty output) is refused. Larger than the
    input is fine: the windows then overlap."""
    def one(v, keep):
        return keep if v is None else (int(v) if _is_int(v) else None)
    if _is_int(output_size):
        hw = (int(output_size), int(output_size))
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        hw = (one(output_size[0], H), one(output_size[1], W))
    else:
        hw = (None,)
    if None in hw:
        raise TypeError(f"output_size must be an int or a pair (h, w) of ints or None, "
                        f"got {output_size!r}")
    if min(hw) < 1:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    if max(hw) > MAX_PARAM:
        raise ValueError(f"output_size must be at most {MAX_PARAM}, got {output_size!r}")
    return hw
