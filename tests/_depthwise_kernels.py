"""Test helper: the depthwise kernel modules (cython, numba) as the ``kern``
fixture, each skipped where it cannot be imported, and the output size of
one axis. Shared by test_depthwise.py and test_depthwise_small.py."""
import pytest


def _kernel_modules():
    mods = []
    try:
        from fastcnn._kernels import cy_depthwise
        mods.append(pytest.param(cy_depthwise, id="cython"))
    except ImportError as e:
        mods.append(pytest.param(None, id="cython", marks=pytest.mark.skip(str(e))))
    try:
        import numba  # noqa: F401
        mods.append(pytest.param("numba", id="numba"))
    except ImportError as e:
        mods.append(pytest.param(None, id="numba", marks=pytest.mark.skip(str(e))))
    return mods


@pytest.fixture(params=_kernel_modules())
def kern(request):
    if request.param == "numba":            # compiled only when a test needs it
        from fastcnn._kernels import numba_depthwise
        return numba_depthwise
    return request.param


def out_size(size, k, s, p0, p1, d):
    """Outputs along one axis: size, kernel k, stride s, paddings p0/p1, dilation d."""
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1
