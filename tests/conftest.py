"""Shared test fixtures. Tests stay tiny: one torch thread, small images, no weights."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def txv_data_dir() -> Path:
    """Folder of the real dataset metadata files shipped in the torchxrayvision wheel."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("torchxrayvision (test extra) is not installed; `pip install -e '.[test]'`")
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    assert d.is_dir(), d
    return d
