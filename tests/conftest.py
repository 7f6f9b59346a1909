"""Shared fixtures: an isolated cache, the real MNIST files, tiny IDX datasets made on the spot."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from models.data import SPLIT_FILES, write_idx

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets a cache of its own, so nothing reads or fills the user's cache."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("NEURON_LAYOUT_CACHE", str(folder))
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder holding mnist/ with the real IDX files ($NEURON_LAYOUT_DATA or ../shared/data)."""
    for candidate in (os.environ.get("NEURON_LAYOUT_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    pytest.skip("real MNIST not found: set NEURON_LAYOUT_DATA to the folder holding mnist/")


def make_idx_dataset(folder: Path, n: int = 16, marker: int = 0, gz: bool = True) -> Path:
    """Write a tiny MNIST-format dataset: n images per split, labels 0..9 cycling, pixel [0,0] = marker."""
    rng = np.random.default_rng(marker)
    for split, (img_stem, lab_stem) in SPLIT_FILES.items():
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = marker
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{img_stem}{suffix}", images)
        write_idx(folder / f"{lab_stem}{suffix}", labels)
    return folder
