"""Messages that must not mislead: a large network file is named with its size and its cause, and the
README's figure for configs/l1.yaml is what training it gives."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from layout.core.config_file import load_config
from layout.insight.sweep_figures import weight_sparsity
from layout.pipeline.train_stage import LARGE, size_note
from models.data.datasets import load_dataset
from models.network.store import load_network
from models.network.train import train
from tests.data.make_reference import NETWORK

REPO = Path(__file__).resolve().parents[1]


def test_a_large_network_file_is_named_with_its_size_its_snapshots_and_the_fix(tmp_path):
    network = load_network(NETWORK)
    big = tmp_path / "network.npz"
    with open(big, "wb") as f:  # a sparse file: its size without writing 1.6 GB
        f.truncate(1_600_000_000)
    assert size_note(big, network, cached=True) == (
        "network.npz is 1.6 GB, most of it its 1 weight snapshots; it is written to the output folder and once more "
        "in the cache: raise train.snapshot_every to keep fewer",)
    assert size_note(big, network, cached=False)[0].endswith("written to the output folder: raise "
                                                             "train.snapshot_every to keep fewer")
    small = tmp_path / "small.npz"
    small.write_bytes(b"x" * 1000)
    assert size_note(small, network, cached=True) == () and LARGE > 1000
    read = dataclasses.replace(network, snapshots=dataclasses.replace(
        network.snapshots, step=network.snapshots.step[:0]))  # a network read from a file: no snapshots to thin out
    assert size_note(big, read, cached=False) == ()


def test_the_readmes_l1_figures_are_what_training_l1_yaml_gives(shared_data):
    """README: 'configs/l1.yaml ... 94% of the input weights end below 1% of the largest ... test accuracy
    0.906', measured on the 5,000-image training sample the tests use."""
    cfg = load_config(REPO / "configs" / "l1.yaml")
    data = load_dataset(dataclasses.replace(cfg.data, dir=str(shared_data)))
    assert len(data.train.labels) == 5000  # the sample the figures were measured on
    network = train(cfg.model, cfg.train, data)
    assert 0.92 <= weight_sparsity(network.weights[0]) <= 0.96
    assert 0.89 <= network.test_accuracy <= 0.92
    readme = (REPO / "README.md").read_text()
    assert "94% of the input weights end below 1% of the largest" in readme and "test accuracy 0.906" in readme
