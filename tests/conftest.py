import os
import sys

import pytest

import fastcnn

sys.path.insert(0, os.path.dirname(__file__))
from cases import BACKENDS, FAST_BACKENDS  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _neutral_cwd(tmp_path_factory):
    """Run every test, and so every subprocess a test starts, from an empty
    folder: ``python -c`` / ``python -m`` put the current folder first on
    sys.path, and from the repository root they would import the source tree
    (without its compiled kernels after a plain ``pip install .``) instead of
    the installed package that ``pytest`` itself tests."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(old)


def pytest_report_header(config):
    missing = fastcnn.unavailable_backends()
    extra = f"; unavailable: {missing}" if missing else ""
    return f"fastcnn backends under test: {', '.join(BACKENDS)}{extra}"


@pytest.fixture(params=FAST_BACKENDS)
def backend(request):
    return request.param
