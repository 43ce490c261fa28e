"""The install under test has the backends it is meant to have, and the MNIST
sample that lets ``fastcnn train`` run with no data and no network.

CI sets FASTCNN_REQUIRE_BACKENDS so that a compiled extension that failed to
build makes the run fail instead of quietly shrinking the test matrix.
"""
import os
import subprocess
import sys

import pytest

import fastcnn
from fastcnn.datasets import SAMPLE_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_FILES = ["README.md", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_required_backends_are_available():
    required = [b for b in os.environ.get("FASTCNN_REQUIRE_BACKENDS", "").split(",") if b]
    if not required:
        pytest.skip("FASTCNN_REQUIRE_BACKENDS not set")
    missing = {b: fastcnn.unavailable_backends().get(b, "not registered")
               for b in required if b not in fastcnn.available_backends()}
    assert not missing, f"backends missing from this install: {missing}"


def test_the_installed_package_holds_the_mnist_sample():
    assert sorted(os.listdir(SAMPLE_DIR)) == SAMPLE_FILES


@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "setup.py")),
                    reason="needs the source tree")
def test_a_wheel_would_ship_the_mnist_sample(tmp_path):
    # build_py lays out exactly the pure-Python part of a wheel (package data
    # included) without compiling anything; --egg-base keeps the tree clean
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
                    "build_py", "--build-lib", str(tmp_path / "lib")],
                   cwd=ROOT, check=True, capture_output=True)
    built = tmp_path / "lib" / "fastcnn" / "datasets" / "data"
    assert sorted(os.listdir(built)) == SAMPLE_FILES
