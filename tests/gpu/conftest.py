"""GPU checks: every test here is marked ``gpu`` and skipped where CUDA is not available.

Run on a GPU node (a few minutes in all): ``pytest -m gpu tests/gpu -s``; with
``ACTIONPARTY_GPU_REPORT=path.json`` the measured figures (peak memory, step time, backend
differences) are also written there.
"""

from __future__ import annotations

import json
import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu_report():
    """A dict the tests fill with what they measured; written to $ACTIONPARTY_GPU_REPORT at the end."""
    report: dict = {}
    yield report
    path = os.environ.get("ACTIONPARTY_GPU_REPORT")
    if path and report:
        from actionparty.atomic import write_text

        report["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        report["torch"] = torch.__version__
        write_text(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
