"""The install under test has the backends it is meant to have.

CI sets FASTCNN_REQUIRE_BACKENDS so that a compiled extension that failed to
build makes the run fail instead of quietly shrinking the test matrix.
"""
import os

import pytest

import fastcnn


def test_required_backends_are_available():
    required = [b for b in os.environ.get("FASTCNN_REQUIRE_BACKENDS", "").split(",") if b]
    if not required:
        pytest.skip("FASTCNN_REQUIRE_BACKENDS not set")
    missing = {b: fastcnn.unavailable_backends().get(b, "not registered")
               for b in required if b not in fastcnn.available_backends()}
    assert not missing, f"backends missing from this install: {missing}"
