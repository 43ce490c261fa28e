"""The twelve kernels of the cupy backend, written once over an array engine.

An engine supplies the array module and the three gathers of ``_cupy_cuda``:

    engine.xp                                   cupy (or numpy, on the host)
    engine.table(builder, args, dtype=None)     builder(*args) from _cupy_tables, on the
                                                engine's device, cached
    engine.gather_sum(src (B, S), table (R, T))           -> (B, R)
    engine.window_max(src (B, S), table (R, T))           -> val (B, R), arg (B, R)
    engine.route_sum(dy (B, R), arg (B, R), inverse (S, T)) -> (B, S)
    engine.relu_forward(x) -> (y, mask); engine.relu_backward(dy, mask) -> dx

``backends/cupy.py`` runs these kernels with CuPy's engine (the ElementwiseKernels,
cuBLAS through ``cupy.matmul``); ``_cupy_mirror`` runs the very same code with a
NumPy engine, which is how the CPU tests check everything here without a GPU.

conv2d is im2col + one batched GEMM: cols (N, C*KH*KW, OH*OW) gathered per
channel plane (rows ordered (c, kh, kw), so w.reshape(F, -1) needs no copy
and a group's rows are contiguous), y (N, G, F/G, P) = w (G, F/G, C/G*KH*KW)
@ cols (N, G, C/G*KH*KW, P). Backward: dw by one batched GEMM over the batch,
dcols = w.T @ dy, and col2im gathered per input element. Pooling reads
``_cupy_tables``' window tables; average divides by PyTorch's divisor per
window (ceil_mode and count_include_pad live in those divisors).

Deliberately not here: argument checks (``fastcnn.ops``), device code
(``_cupy_cuda``), index arithmetic (``_cupy_tables``), CuPy itself.
"""
from fastcnn.backend import KERNELS
from fastcnn.backends import _cupy_tables as tables


class Kernels:
    """The contract's twelve kernels over ``engine`` (bound methods)."""

    def __init__(self, engine):
        self.engine = engine

    # ------------------------------------------------------------ conv2d

    def conv2d_forward(self, x, w, b, stride, padding, dilation, groups, y_shape):
        # x (N, C, H, W), w (F, C/G, KH, KW), y (N, F, OH, OW)
        # cols[n, (c, i, j), p] = x[n, c, oh*SH - PT + i*DH, ow*SW - PL + j*DW] (0 outside)
        e = self.engine
        N, C, H, W = x.shape
        F, CG, KH, KW = w.shape
        _, _, OH, OW = y_shape
        geometry = (H, W, (KH, KW), stride, padding, dilation, (OH, OW))
        cols = e.gather_sum(x.reshape(N * C, H * W), e.table(tables.im2col, geometry))
        cols = cols.reshape(N, groups, CG * KH * KW, OH * OW)
        w3 = w.reshape(groups, F // groups, CG * KH * KW)
        y = e.xp.matmul(w3, cols).reshape(y_shape)          # a fresh C-contiguous product
        if b is not None:
            y += b[:, None, None]
        return y, (cols, w.copy(), geometry)                 # w: backward's own copy

    def conv2d_backward(self, dy, saved, input_grad=True):
        # dw[g] = sum_n dy[n, g] @ cols[n, g].T; dcols[n, g] = w[g].T @ dy[n, g];
        # dx[n, c, h, w] = sum of dcols[n, (c, i, j), p] over the taps (i, j, p) that read it
        e, xp = self.engine, self.engine.xp
        cols, w, geometry = saved
        N, G, K, P = cols.shape
        F, CG, KH, KW = w.shape
        H, W = geometry[:2]
        dy4 = dy.reshape(N, G, F // G, P)
        db = dy.sum(axis=(0, 2, 3))
        dw = xp.matmul(dy4.transpose(1, 2, 0, 3).reshape(G, F // G, N * P),
                       cols.transpose(1, 0, 3, 2).reshape(G, N * P, K)).reshape(w.shape)
        if not input_grad:                                  # no dcols, no col2im
            return None, dw, db
        w3 = w.reshape(G, F // G, K)
        dcols = xp.matmul(w3.transpose(0, 2, 1), dy4)      # (N, G, K, P)
        C = G * CG
        dx = e.gather_sum(dcols.reshape(N * C, KH * KW * P), e.table(tables.col2im, geometry))
        return dx.reshape(N, C, H, W), dw, db

    # ------------------------------------------------------------ pooling

    def _max(self, x, windows, inverse, geometry):
        N, C, H, W = x.shape
        val, arg = self.engine.window_max(x.reshape(N * C, H * W),
                                          self.engine.table(windows, geometry))
        return val, (x.shape, arg, inverse, geometry)

    def _max_backward(self, dy, saved):
        x_shape, arg, inverse, geometry = saved
        N, C, OH, OW = dy.shape
        dx = self.engine.route_sum(dy.reshape(N * C, OH * OW), arg,
                                   self.engine.table(inverse, geometry))
        return dx.reshape(x_shape)

    def _avg(self, x, windows, inverse, divisors, geometry, divisor_args):
        e = self.engine
        N, C, H, W = x.shape
        sums = e.gather_sum(x.reshape(N * C, H * W), e.table(windows, geometry))
        div = e.table(divisors, divisor_args, dtype=x.dtype)        # (OH*OW,)
        return sums / div, (x.shape, inverse, geometry, div)

    def _avg_backward(self, dy, saved):
        # every element of window o receives dy[o] / divisor[o]
        e = self.engine
        x_shape, inverse, geometry, div = saved
        N, C, OH, OW = dy.shape
        g = dy.reshape(N * C, OH * OW) / div
        return e.gather_sum(g, e.table(inverse, geometry)).reshape(x_shape)

    def max_pool2d_forward(self, x, kernel, stride, padding, dilation, out_hw):
        _, _, H, W = x.shape
        geometry = (H, W, kernel, stride, padding, dilation, out_hw)
        val, saved = self._max(x, tables.pool_windows, tables.pool_inverse, geometry)
        return val.reshape(*x.shape[:2], *out_hw), saved

    def max_pool2d_backward(self, dy, saved):
        return self._max_backward(dy, saved)

    def avg_pool2d_forward(self, x, kernel, stride, padding, out_hw, count_include_pad,
                           divisor_override):
        _, _, H, W = x.shape
        geometry = (H, W, kernel, stride, padding, (1, 1), out_hw)
        y, saved = self._avg(x, tables.pool_windows, tables.pool_inverse, tables.pool_divisors,
                             geometry, (H, W, kernel, stride, padding, out_hw,
                                        count_include_pad, divisor_override))
        return y.reshape(*x.shape[:2], *out_hw), saved

    def avg_pool2d_backward(self, dy, saved):
        return self._avg_backward(dy, saved)

    def adaptive_avg_pool2d_forward(self, x, output_size):
        _, _, H, W = x.shape
        geometry = (H, W, tuple(output_size))
        y, saved = self._avg(x, tables.adaptive_windows, tables.adaptive_inverse,
                             tables.adaptive_divisors, geometry, geometry)
        return y.reshape(*x.shape[:2], *output_size), saved

    def adaptive_avg_pool2d_backward(self, dy, saved):
        return self._avg_backward(dy, saved)

    def adaptive_max_pool2d_forward(self, x, output_size):
        _, _, H, W = x.shape
        geometry = (H, W, tuple(output_size))
        val, saved = self._max(x, tables.adaptive_windows, tables.adaptive_inverse, geometry)
        return val.reshape(*x.shape[:2], *output_size), saved

    def adaptive_max_pool2d_backward(self, dy, saved):
        return self._max_backward(dy, saved)

    # ------------------------------------------------------------ relu

    def relu_forward(self, x):
        # mask [y > 0] of its own: the caller holds y and may change it
        return self.engine.relu_forward(x)

    def relu_backward(self, dy, mask):
        return self.engine.relu_backward(dy, mask)


def bind(engine, namespace):
    """Put the twelve kernels over ``engine`` into a backend module's namespace."""
    kernels = Kernels(engine)
    namespace.update({name: getattr(kernels, name) for name in KERNELS})
    return kernels
