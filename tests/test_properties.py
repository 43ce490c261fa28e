"""Property-based: on random valid shapes, every backend agrees with `loops`."""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from fastcnn import ops  # noqa: E402
from fastcnn.testing import assert_close  # noqa: E402

from cases import FAST_BACKENDS, TOL  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


@st.composite
def conv_problem(draw):
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    same = draw(st.booleans()) and draw(st.booleans())          # 'same' a quarter of the time
    SH, SW = (1, 1) if same else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    PH, PW = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, KH - 2 * PH), 9))
    W = draw(st.integers(max(1, KW - 2 * PW), 9))
    return dict(N=draw(st.integers(1, 3)), C=draw(st.integers(1, 4)), F=draw(st.integers(1, 4)),
                H=H, W=W, KH=KH, KW=KW, stride=(SH, SW),
                padding="same" if same else (PH, PW), bias=draw(st.booleans()),
                dtype=draw(st.sampled_from([np.float32, np.float64])), seed=draw(st.integers(0, 99)))


@st.composite
def pool_problem(draw):
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    PH, PW = draw(st.integers(0, KH // 2)), draw(st.integers(0, KW // 2))
    return dict(N=draw(st.integers(1, 3)), C=draw(st.integers(1, 4)),
                H=draw(st.integers(max(1, KH - 2 * PH), 10)),
                W=draw(st.integers(max(1, KW - 2 * PW), 10)), kernel=(KH, KW),
                stride=draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3)))),
                padding=(PH, PW), dtype=draw(st.sampled_from([np.float32, np.float64])),
                seed=draw(st.integers(0, 99)))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@SETTINGS
@given(p=conv_problem())
def test_conv_random_shapes(backend, p):
    rng = np.random.default_rng(p["seed"])
    dt = p["dtype"]
    x = rng.standard_normal((p["N"], p["C"], p["H"], p["W"])).astype(dt)
    w = rng.standard_normal((p["F"], p["C"], p["KH"], p["KW"])).astype(dt)
    b = rng.standard_normal(p["F"]).astype(dt) if p["bias"] else None
    y, ctx = ops.conv2d_forward(x, w, b, p["stride"], p["padding"], backend=backend)
    dy = rng.standard_normal(y.shape).astype(dt)
    got = (y, *ops.conv2d_backward(dy, ctx))
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    y_r, ctx_r = ops.conv2d_forward(f64(x), f64(w), f64(b), p["stride"], p["padding"],
                                    backend="loops")
    want = (y_r, *ops.conv2d_backward(f64(dy), ctx_r))
    for name, g, r in zip(("y", "dx", "dw", "db"), got, want):
        assert g.dtype == dt
        assert_close(g, r, TOL[dt], name)


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@SETTINGS
@given(p=pool_problem())
def test_pool_random_shapes(backend, op, p):
    rng = np.random.default_rng(p["seed"])
    dt = p["dtype"]
    # few distinct values: ties are common, so first-max-wins is exercised too
    x = rng.integers(-3, 4, (p["N"], p["C"], p["H"], p["W"])).astype(dt)
    fwd, bwd = getattr(ops, f"{op}_pool2d_forward"), getattr(ops, f"{op}_pool2d_backward")
    y, ctx = fwd(x, p["kernel"], p["stride"], p["padding"], backend=backend)
    dy = rng.standard_normal(y.shape).astype(dt)
    y_r, ctx_r = fwd(x.astype(np.float64), p["kernel"], p["stride"], p["padding"], backend="loops")
    assert_close(y, y_r, TOL[dt], "y")
    assert_close(bwd(dy, ctx), bwd(dy.astype(np.float64), ctx_r), TOL[dt], "dx")
