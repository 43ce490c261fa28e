"""Backend modules: one module per backend, the same twelve kernels in each,
and any of the fused ops.

This package deliberately holds no dispatch logic (that is ``fastcnn.backend``)
and no validation (that is ``fastcnn.ops``). It documents the contract every
backend module fulfils.

The kernel contract
-------------------
``fastcnn.ops`` has already validated every argument, so kernels trust their
input and never re-check it:

* ``x``, ``w``, ``b``, ``dy`` are C-contiguous NumPy arrays of one dtype,
  float32 or float64. ``b`` is ``None`` or has shape ``(F,)``.
* Shapes: x ``(N, C, H, W)``, w ``(F, C // groups, KH, KW)``, y/dy
  ``(N, F, OH, OW)``.
* ``stride`` is ``(SH, SW)``, positive ints.
* conv ``padding`` is ``(PT, PB, PL, PR)`` (top, bottom, left, right),
  non-negative ints; it is asymmetric only for ``padding='same'`` with an even
  kernel span (the extra row/column goes bottom/right, as in PyTorch).
  conv ``dilation`` is ``(DH, DW)``, positive ints: tap ``(kh, kw)`` of
  output pixel ``(i, j)`` reads padded row ``i*SH + kh*DH``, column
  ``j*SW + kw*DW``; the kernel spans ``DH*(KH-1)+1`` rows. conv ``groups``
  is a positive int dividing C and F: output channel ``g*(F//groups) + f``
  sees only input channels ``g*(C//groups) .. (g+1)*(C//groups) - 1``
  (``groups = C`` is depthwise, any channel multiplier ``F // C``).
  ``OH = (H + PT + PB - DH*(KH-1) - 1) // SH + 1``, OW likewise, both >= 1;
  ``fastcnn.ops`` computes them once and passes conv2d_forward
  ``y_shape = (N, F, OH, OW)``, so no conv kernel recomputes them.
  ``backends/loops.py`` states the formula.
* pool ``kernel`` is ``(KH, KW)``, ``stride`` ``(SH, SW)``, ``padding``
  ``(PH, PW)`` symmetric with ``PH <= KH // 2`` and ``PW <= KW // 2``;
  max's ``dilation`` ``(DH, DW)``, positive. ``out_hw`` ``(OH, OW)``, >= 1,
  comes from ``fastcnn.ops``: ``(H + 2 PH - DH (KH - 1) - 1) / SH + 1``,
  floored, or in ceil_mode ceiled less a last window that would start in
  the right padding (PyTorch's rule). Max pooling pads with -inf; the first maximum in row-major window order
  wins a tie; padding is never chosen (an all -inf window sends its gradient
  to its first real element, as PyTorch does); a NaN in a window makes the
  output NaN and the gradient goes to the first NaN (PyTorch: the last).
  Average pooling divides by ``divisor_override`` if given, else by the
  window clipped to the padded input (``count_include_pad``; ``KH * KW``
  unless a ceil_mode window runs past it) or to the input (not).
* adaptive pooling gets ``output_size`` ``(OH, OW)``, positive ints (any
  size, larger than the input included); output row ``i`` pools input rows
  ``floor(i*H/OH) .. ceil((i+1)*H/OH) - 1``, columns likewise (PyTorch's
  bounds: windows of unequal size, overlapping when the sizes do not
  divide). Average divides by its own window's size; max follows max
  pooling's rules for ties and NaN. ``(1, 1)`` is global pooling.
* relu takes ``x`` of any shape, 0-d included (y and dx have x's shape):
  ``y = x`` where ``x > 0`` or ``x`` is NaN, else +0 (``np.maximum(x, 0)``,
  which turns -0.0 into 0.0); ``dx = dy * [y > 0]`` with ``[y > 0]`` as the
  forward computed it (an inf or NaN in ``dy`` where ``y <= 0`` gives NaN;
  PyTorch's select gives 0 there).

The twelve functions (same names, same signatures in every backend)::

    conv2d_forward(x, w, b, stride, padding, dilation, groups, y_shape) -> (y, saved)
    conv2d_backward(dy, saved, input_grad=True) -> (dx, dw, db)  # db (F,) always
    max_pool2d_forward(x, kernel, stride, padding, dilation, out_hw) -> (y, saved)
    max_pool2d_backward(dy, saved)             -> dx
    avg_pool2d_forward(x, kernel, stride, padding, out_hw, count_include_pad,
                       divisor_override) -> (y, saved)
    avg_pool2d_backward(dy, saved)             -> dx
    adaptive_avg_pool2d_forward(x, output_size) -> (y, saved)
    adaptive_avg_pool2d_backward(dy, saved)    -> dx
    adaptive_max_pool2d_forward(x, output_size) -> (y, saved)
    adaptive_max_pool2d_backward(dy, saved)    -> dx
    relu_forward(x)                            -> (y, saved)
    relu_backward(dy, saved)                   -> dx

Fused ops (optional; ``fastcnn.backend.fused_ops(name)`` lists the ones a
backend has, as forward/backward pairs, and ``fastcnn.ops`` composes the
others from the twelve kernels above on the same backend)::

    conv2d_relu_forward(x, w, b, stride, padding, dilation, groups, y_shape)
                                               -> (y, saved)
    conv2d_relu_backward(dy, saved, input_grad=True) -> (dx, dw, db)
    conv2d_relu_max_pool2d_forward(x, w, b, stride, padding, dilation, groups,
                                   conv_shape, kernel, pool_stride, pool_padding,
                                   pool_dilation, out_hw) -> (y, saved)
    conv2d_relu_max_pool2d_backward(dy, saved, input_grad=True) -> (dx, dw, db)

``input_grad`` (a bool) False: dx is None and its work is skipped (the
gradient of a network's input, which no one uses); dw and db are those
input_grad=True gives.

Their results are those of the composition conv2d -> relu (-> max_pool2d)
with the arguments above (conv_shape is the conv's y_shape, the pool's
arguments as max_pool2d_forward's), exactly as the rules above make them:
relu's +0 and NaN, max pooling's first-maximum ties, first NaN and padding,
and in the backward relu's ``dy * [y > 0]`` (NaN for an inf or NaN dy where
the ReLU stopped it). Since relu is monotone and keeps a NaN, relu(max(window))
is max(relu(window)): the compiled backends pool the conv's output and ReLU
only the pooled values (see ``cy_pool.max_relu_forward``).

The compiled backends' pooling kernels take out_hw, the divisor rule and
max's dilation themselves; ``backends/_pool_modes`` adapts im2col's
floor-mode, KH*KW-divisor NumPy kernels to them.

``saved`` is private to the backend (column matrix, argmax, copies, ...);
``fastcnn.ops`` wraps it in a context that remembers the backend.

Backward uses what forward saw: ``saved`` holds the backend's own copies of,
or arrays derived from, whatever backward needs - never a reference to an
array the caller holds (x, w, relu's y) - so a caller who changes x, w or
y in place between the forward and the backward still gets the gradients
of the forward that ran, on every backend alike.

Kernels never write into their inputs, and return fresh arrays of the
input dtype: arrays no one else holds. The compiled backends serve them
from a bounded pool (``_workspace.outputs``) that hands an array out again
only once nothing - no caller, no view, no ctx - refers to it any more, so
"fresh" still means that no two live results share memory.

Threads: the kernels of the compiled backends are single-threaded; pieces
of an op run concurrently only on fastcnn's own pool (``_concurrent``),
with BLAS at one thread meanwhile.
"""
