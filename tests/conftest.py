"""Shared pytest fixtures.

``real_data`` gives the shared real-data folder (``KMSCALE_DATA`` or ../shared/data)
and skips the test when it is absent (a user's machine); CI fails before the tests
run if it is absent, so these tests never skip there.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

# Two cores: keep torch from oversubscribing when pytest-xdist runs workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def real_data():
    from kmscale_testdata import data_dir

    path = data_dir(required=False)
    if path is None:
        pytest.skip("real-data folder absent (set KMSCALE_DATA or provide ../shared/data)")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
