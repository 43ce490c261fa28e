"""Test helpers users can reuse: a finite-difference gradient checker and an
agreement check between arrays.

``numerical_gradient`` differentiates ``sum(f(x) * dout)`` with centred
differences (CS231n's ``eval_numerical_gradient_array``), so it checks a
backward pass for any upstream gradient, not just for a sum. It is
deliberately slow and float64-only: it is an oracle, not a kernel.
"""
import numpy as np


def numerical_gradient(f, x, dout, h=1e-6):
    """d/dx of sum(f(x) * dout) by centred differences; x is not modified."""
    x = np.array(x, dtype=np.float64, copy=True)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + h
        plus = np.sum(f(x) * dout)
        flat[k] = old - h
        minus = np.sum(f(x) * dout)
        flat[k] = old
        gflat[k] = (plus - minus) / (2 * h)
    return grad


def max_relative_error(a, b, floor=1.0):
    """max |a - b| / max(|b|, floor): relative for large values, absolute near 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), floor)))


def assert_close(actual, expected, rtol, name="array"):
    """Assert agreement to rtol relative to each value (absolute below 1), NaNs where NaNs."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), f"{name}: NaNs in different places"
    err = max_relative_error(np.where(nan_a, 0, actual), np.where(nan_e, 0, expected))
    assert err <= rtol, f"{name}: max relative error {err:.3g} > {rtol:g}"
