import os
import sys

import pytest

import fastcnn

sys.path.insert(0, os.path.dirname(__file__))
from cases import BACKENDS, FAST_BACKENDS  # noqa: E402


def pytest_report_header(config):
    missing = fastcnn.unavailable_backends()
    extra = f"; unavailable: {missing}" if missing else ""
    return f"fastcnn backends under test: {', '.join(BACKENDS)}{extra}"


@pytest.fixture(params=FAST_BACKENDS)
def backend(request):
    return request.param
