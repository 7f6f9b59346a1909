"""Shared fixtures: an isolated cache, the real MNIST files, tiny IDX datasets made on the spot."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from models.data.datasets import SAMPLE_FOLDER, SPLIT_FILES
from models.data.idx import write_idx

REPO = Path(__file__).resolve().parents[1]
PROGRESS_LINE = re.compile(r"[a-z][a-z ]*: (done, )?\d+/\d+ [a-z]+, \d+\.\d s")


WHOLE_TOOL_QUICKLY = ("layout.sim.steps=80", "structure.permutations=19", "structure.layout_nulls=2",
                      "structure.stability_seeds=2", "structure.ablation_groups=3", "structure.selectivity_nulls=3")
MAX_WORKERS = 4  # each worker runs JAX and the tool's commands: about 2 GB each at most


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per CPU, at least two (most tests wait on a command's start-up or compiler,
    so two share even one or two CPUs well), at most MAX_WORKERS."""
    return min(max(os.cpu_count() or 1, 2), MAX_WORKERS)


INKS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]], np.float64)
INK_NAMES = ("red", "green", "blue", "yellow", "cyan", "magenta")


def coloured(images: np.ndarray, inks: np.ndarray) -> np.ndarray:
    """Greyscale digits [n, H, W] uint8 drawn in colour: each image's ink (its pixels' brightness) times
    its own colour from `inks` [n, 3] (0..1 per channel), on black: [n, H, W, 3] uint8."""
    return np.round(images[..., None] * inks[:, None, None, :]).astype(np.uint8)


def colour_digits(split, seed: int, by_ink: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A split of real MNIST digits, each in one of six inks drawn by `seed`: (images [n, H, W, 3], labels):
    the digits' own labels, or with `by_ink` the ink (red, green or blue only) as the label, whatever the digit."""
    rng = np.random.default_rng(seed)
    ink = rng.integers(0, 3 if by_ink else len(INKS), len(split.labels))
    return coloured(split.images, INKS[ink]), (ink if by_ink else split.labels)


def messages(stderr: str) -> list[str]:
    """stderr's lines but the progress lines that layout/core/progress.py writes when stderr is not a
    terminal: the notes and errors a user reads."""
    return [line for line in stderr.strip().splitlines() if line.strip() and not PROGRESS_LINE.match(line)]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets a cache of its own, so nothing reads or fills the user's cache."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("NEURON_LAYOUT_CACHE", str(folder))
    return folder


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory) -> Path:
    """A folder holding mnist/ with real MNIST: $NEURON_LAYOUT_DATA, ../shared/data, or else the sample
    bundled with the package (the same files: the official test set and 5,000 training images)."""
    for candidate in (os.environ.get("NEURON_LAYOUT_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    folder = tmp_path_factory.mktemp("data")
    (folder / "mnist").symlink_to(SAMPLE_FOLDER, target_is_directory=True)
    return folder


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
