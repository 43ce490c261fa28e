"""The cupy backend on the host: its kernels (``_cupy_kernels``) over a NumPy
engine whose gathers do what ``_cupy_cuda``'s ElementwiseKernels do.

This is how the cupy backend's arithmetic is tested without a GPU: the
tests register this module under a temporary name and run it through
``fastcnn.ops`` against ``loops`` and PyTorch, so the tables, the GEMM
layout, groups, dilation and the divisors are all checked on CPU; the CUDA
loop bodies are checked on CPU separately (compiled with the host C
compiler). What only a GPU can check is the CuPy launch itself and cuBLAS.

It is not a registered backend (it is slow and adds nothing over im2col
for users), and it deliberately holds no logic of its own beyond the three
gathers: everything else is ``_cupy_kernels``, shared with the GPU.
"""
import numpy as np

from fastcnn.backends import _cupy_kernels


class NumpyEngine:
    """``_cupy_kernels``' engine on the host: NumPy arrays, tables as built."""

    xp = np

    @staticmethod
    def table(builder, args, dtype=None):
        t = builder(*args)
        return t if dtype is None else t.astype(dtype)

    @staticmethod
    def _taps(src, table):
        """(B, R, T) values of src at the table's taps (0 where -1) and the real mask."""
        real = table >= 0
        return np.where(real, src[:, np.where(real, table, 0)], 0), real

    def gather_sum(self, src, table):
        # out[b, r] = sum of src[b, table[r, t]] over real t
        return self._taps(src, table)[0].sum(axis=-1)

    @staticmethod
    def window_max(src, table):
        # val, arg[b, r] = max of src[b, table[r, :]] over real taps and its offset;
        # np.argmax: the first maximum, the first NaN if any. Padding taps take
        # the window's first real offset: a repeat of an element already in the
        # window moves neither its maximum nor the offset of its first maximum.
        real = table >= 0
        first = table[np.arange(table.shape[0]), real.argmax(axis=1)]
        taps = np.where(real, table, first[:, None])                 # (R, T)
        k = np.argmax(src[:, taps], axis=-1)                          # (B, R)
        arg = taps[np.arange(table.shape[0])[None, :], k]             # (B, R)
        return np.take_along_axis(src, arg, axis=1), arg

    @staticmethod
    def route_sum(dy, arg, inverse):
        # dx[b, s] = sum of dy[b, o] over o = inverse[s, t] with arg[b, o] == s
        real = inverse >= 0
        o = np.where(real, inverse, 0)                                # (S, T)
        hit = real & (arg[:, o] == np.arange(inverse.shape[0])[:, None])
        return np.where(hit, dy[:, o], 0).sum(axis=-1)

    # relu: out= keeps a 0-d array 0-d (a ufunc returns a NumPy scalar otherwise)

    @staticmethod
    def relu_forward(x):
        y = np.empty_like(x)
        np.copyto(y, np.where((x > 0) | (x != x), x, x.dtype.type(0)))
        return y, np.greater(y, 0, out=np.empty(x.shape, dtype=bool))

    @staticmethod
    def relu_backward(dy, mask):
        with np.errstate(invalid="ignore"):           # inf * 0 is the documented NaN
            return np.multiply(dy, mask, dtype=dy.dtype, out=np.empty_like(dy))


_cupy_kernels.bind(NumpyEngine(), globals())
