"""The MLP and its training on real MNIST: shapes, determinism, penalties, snapshots, saving, reuse."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from layout.core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from layout.core.config_file import load_config
from layout.core.errors import UserError
from layout.engine.features import hidden_activations
from layout.run import main as run_main
from layout.run import train_main
from models.data.datasets import load_dataset
from models.network.mlp import apply, init_params, layer_sizes
from models.network.network import Inputs, inputs_of
from models.network.store import (
    check_fits,
    load_network,
    network_key,
    obtain_network,
    save_network,
)
from models.network.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(shared_data):
    """512 real training images and 1,000 real test images."""
    cfg = DataConfig(limit=512)
    full = load_dataset(cfg, environ={"NEURON_LAYOUT_DATA": str(shared_data)}, system_root=Path("/nonexistent"))
    return dataclasses.replace(full, test=dataclasses.replace(
        full.test, images=full.test.images[:1000], labels=full.test.labels[:1000]))


SMALL_MODEL = ModelConfig(hidden=(16,))
SMALL_TRAIN = TrainConfig(epochs=3, batch_size=32, learning_rate=1e-2)


def numpy_forward(network, images, mean: float = 0.0, std: float = 1.0):
    """An independent numpy forward pass: the saved weights alone must reproduce the accuracy."""
    act = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0)}
    h = (images.reshape(len(images), -1).astype(np.float32) / 255 - mean) / std
    for w, b in zip(network.weights[:-1], network.biases[:-1]):
        h = act[network.activation](h @ w + b)
    return h @ network.weights[-1] + network.biases[-1]


@pytest.mark.parametrize("hidden", [(100,), (10,), (64, 32), (1,)])
def test_parameter_count_matches_the_formula(hidden):
    sizes = layer_sizes(784, hidden, 10)
    params = init_params(jax.random.key(0, impl="rbg"), sizes, "sigmoid")
    by_formula = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    assert by_formula == sum(p.size for p in jax.tree.leaves(params))
    assert [layer["w"].shape for layer in params] == list(zip(sizes[:-1], sizes[1:]))
    assert hidden != (100,) or by_formula == 79510


@pytest.mark.parametrize("activation, low, high", [("sigmoid", 0, 1), ("tanh", -1, 1), ("relu", 0, np.inf)])
def test_forward_returns_logits_and_every_hidden_layer(activation, low, high):
    params = init_params(jax.random.key(1, impl="rbg"), (784, 64, 32, 10), activation)
    x = jax.random.uniform(jax.random.key(2), (5, 784))
    logits, hidden = apply(params, x, activation)
    assert logits.shape == (5, 10)
    assert [h.shape for h in hidden] == [(5, 64), (5, 32)]
    for h in hidden:
        assert float(h.min()) >= low and float(h.max()) <= high


def test_loss_falls_on_real_batches(small):
    net = train(SMALL_MODEL, SMALL_TRAIN, small)
    initial = net.snapshots
    assert net.history.train_loss[-1] < net.history.train_loss[0]
    assert net.history.test_loss[-1] < 0.8 * net.history.test_loss[0]
    assert net.test_accuracy > initial.test_accuracy[0] + 0.3
    # the stored accuracy is what the stored weights give, computed independently in numpy
    predicted = numpy_forward(net, small.test.images).argmax(-1)
    assert abs((predicted == small.test.labels).mean() - net.test_accuracy) < 1e-6


def test_same_seed_same_weights_other_seed_other_weights(small):
    a = train(SMALL_MODEL, SMALL_TRAIN, small)
    b = train(SMALL_MODEL, SMALL_TRAIN, small)
    c = train(SMALL_MODEL, dataclasses.replace(SMALL_TRAIN, seed=1), small)
    for wa, wb, wc in zip(a.weights, b.weights, c.weights):
        np.testing.assert_array_equal(wa, wb)
        assert not np.allclose(wa, wc)


def test_stronger_l1_gives_smaller_l1_norm(small):
    norms = []
    for l1 in (0.0, 1e-4, 1e-3):
        net = train(SMALL_MODEL, dataclasses.replace(SMALL_TRAIN, l1=l1), small)
        norms.append(sum(np.abs(w).sum() for w in net.weights))
    assert norms[0] > norms[1] > norms[2]


def test_sgd_with_momentum_and_relu_learn(small):
    cfg = dataclasses.replace(SMALL_TRAIN, optimizer="sgd", learning_rate=0.1, momentum=0.9)
    net = train(ModelConfig(hidden=(16,), activation="relu"), cfg, small)
    assert net.test_accuracy > 0.7


def test_epoch_snapshots_start_at_initialisation_and_end_at_the_final_weights(small):
    net = train(SMALL_MODEL, dataclasses.replace(SMALL_TRAIN, snapshot_every=1), small)
    assert net.snapshots.step.tolist() == [0, 16, 32, 48]  # 512 images / batch 32 = 16 steps per epoch
    assert net.snapshots.epoch.tolist() == [0, 1, 2, 3]
    assert net.snapshots.weights[0].shape == (4, 784, 16)
    for w_final, w_snaps in zip(net.weights, net.snapshots.weights):
        np.testing.assert_array_equal(w_snaps[-1], w_final)
    np.testing.assert_allclose(net.snapshots.test_accuracy[1:], net.history.test_accuracy, atol=1e-6)


def test_step_snapshots_every_k_steps(small):
    net = train(SMALL_MODEL, dataclasses.replace(SMALL_TRAIN, snapshot_every=10, snapshot_unit="step"), small)
    assert net.snapshots.step.tolist() == [0, 10, 20, 30, 40]  # 48 steps in all, crossing epoch ends
    assert len(net.snapshots.weights[1]) == 5
    np.testing.assert_allclose(net.snapshots.epoch, [0, 10 / 16, 20 / 16, 30 / 16, 40 / 16])
    # snapshots differ from one another: training moved between them
    diffs = [np.abs(a - b).max() for a, b in zip(net.snapshots.weights[0][1:], net.snapshots.weights[0][:-1])]
    assert min(diffs) > 0


def test_zero_epochs_keeps_the_initialisation(small):
    net = train(SMALL_MODEL, dataclasses.replace(SMALL_TRAIN, epochs=0), small)
    assert net.snapshots.step.tolist() == [0] and len(net.history.epoch) == 0
    assert net.test_accuracy < 0.4


def test_network_file_round_trip_without_pickle(small, tmp_path):
    net = train(SMALL_MODEL, SMALL_TRAIN, small)
    path = save_network(tmp_path / "network.npz", net, key="abc")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        assert z["w1"].shape == (16, 10)
    assert meta["sizes"] == [784, 16, 10] and meta["activation"] == "sigmoid" and meta["key"] == "abc"
    assert meta["dataset"] == "mnist" and meta["classes"] == list(range(10))
    back = load_network(path)
    assert back.sizes == net.sizes and back.test_accuracy == net.test_accuracy
    for a, b in zip(back.weights + back.snapshots.weights, net.weights + net.snapshots.weights):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.history.test_loss, net.history.test_loss)
    assert [p.name for p in tmp_path.iterdir()] == ["network.npz"]  # no temporary left behind


def test_trained_network_is_reused_only_when_data_model_and_train_are_unchanged(small, shared_data):
    cfg = RunConfig(name="a", model=SMALL_MODEL, train=dataclasses.replace(SMALL_TRAIN, epochs=1))
    first = obtain_network(cfg, small)
    again = obtain_network(dataclasses.replace(cfg, name="b"), small)
    assert not first.reused and again.reused and first.key == again.key and again.notes == ()
    np.testing.assert_array_equal(first.network.weights[0], again.network.weights[0])
    key = first.key
    moved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir="/elsewhere"))
    assert network_key(moved, small) == key  # where the files live does not matter
    for changed in (dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, l1=1e-4)),
                    dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=1)),
                    dataclasses.replace(cfg, model=ModelConfig(hidden=(8,))),
                    dataclasses.replace(cfg, model=ModelConfig(hidden=(16,), activation="relu")),
                    dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mean=(0.1307,), std=(0.3081,))),
                    dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, scale="none"))):
        assert network_key(changed, small) != key
    fewer = load_dataset(DataConfig(limit=256), environ={"NEURON_LAYOUT_DATA": str(shared_data)},
                         system_root=Path("/nonexistent"))
    assert fewer.key != small.key and network_key(cfg, fewer) != key  # the data actually used


def test_a_network_trains_on_the_pixels_as_data_scale_mean_and_std_give_them(small, tmp_path):
    """(pixels / 255 - 0.1307) / 0.3081 here: the file keeps the scaling, an independent numpy forward pass
    with it reproduces the accuracy, and the file is refused for a config that scales the pixels otherwise."""
    data = DataConfig(mean=(0.1307,), std=(0.3081,))
    net = train(SMALL_MODEL, SMALL_TRAIN, small, inputs=inputs_of(data))
    back = load_network(save_network(tmp_path / "network.npz", net))
    assert back.inputs == net.inputs == Inputs(gain=(1 / 0.3081,), offset=(-0.1307 / 0.3081,))
    accuracy = (numpy_forward(back, small.test.images, 0.1307, 0.3081).argmax(-1) == small.test.labels).mean()
    assert accuracy == pytest.approx(net.test_accuracy, abs=1e-3) and accuracy > 0.7
    assert (numpy_forward(back, small.test.images).argmax(-1) == small.test.labels).mean() < accuracy - 0.05
    images = small.test.images[:50]  # the later stages see the same inputs: the neurons' activations
    pixels = (images.reshape(50, -1) / 255 - 0.1307) / 0.3081
    expected = 1 / (1 + np.exp(-(pixels @ back.weights[0] + back.biases[0])))
    np.testing.assert_allclose(hidden_activations(back, images)[0], expected, rtol=1e-4, atol=1e-5)
    check_fits(back, small, "network.npz", inputs_of(data))
    with pytest.raises(UserError, match="set data.scale, data.mean and data.std as in the config.yaml"):
        check_fits(back, small, "network.npz", inputs_of(DataConfig()))
    raw = inputs_of(DataConfig(scale="none"))
    assert np.asarray(raw.of_pixels(np.array([0, 51, 255], np.uint8))).tolist() == [0.0, 51.0, 255.0]


def test_a_cached_network_copied_over_another_key_is_trained_again(small, isolated_cache):
    cfg = RunConfig(model=SMALL_MODEL, train=dataclasses.replace(SMALL_TRAIN, epochs=1))
    wider = dataclasses.replace(cfg, model=ModelConfig(hidden=(24,)))
    narrow, wide = obtain_network(cfg, small), obtain_network(wider, small)
    folder = isolated_cache / "networks"
    shutil.copy(folder / f"{narrow.key}.npz", folder / f"{wide.key}.npz")  # the 16-neuron network under the 24's key
    again = obtain_network(wider, small)
    assert not again.reused and again.network.sizes == (784, 24, 10)
    assert again.notes == (f"the cached network {folder / f'{wide.key}.npz'} was stored for other settings or data: "
                           "trained it again",)
    assert obtain_network(wider, small).reused  # the entry was replaced


def test_binary01_one_hidden_neuron_separates_zeros_and_ones(shared_data, tmp_path):
    out = tmp_path / "binary01"
    argv = [str(REPO / "configs" / "binary01.yaml"), "--out", str(out), "--data-dir", str(shared_data)]
    assert train_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sizes"] == [784, 1, 2] and metrics["classes"] == [0, 1]
    assert metrics["n_test"] == 2115  # the zeros and ones of the official test set
    assert metrics["test_accuracy"] >= 0.99


def test_euclid_config_end_to_end(shared_data, tmp_path, capsys):
    """The shipped config on the 5k training subset reaches >= 0.92 on the official 10k test set."""
    out = tmp_path / "euclid"
    argv = [str(REPO / "configs" / "euclid.yaml"), "--out", str(out), "--data-dir", str(shared_data),
            "--no-window", "--export", "png"]
    assert run_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["atlas_layer1.png", "atlas_top_layer1.png", "config.yaml",
                                                     "manifest.json", "metrics.json", "network.npz", "neurons.csv",
                                                     "report.md", "snapshot.png", "structure.json",
                                                     "structure_layer1.png", "top_images.npz", "trajectory.npz"]
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("test_accuracy", "train_accuracy", "train_seconds", "epochs", "n_params"):
        assert name in metrics
    assert metrics["test_accuracy"] >= 0.92 and metrics["n_test"] == 10000 and metrics["n_train"] == 5000
    assert metrics["n_params"] == 79510 and metrics["reused"] is False
    cfg = load_config(out / "config.yaml")
    assert cfg.model.hidden == (100,) and cfg.data.dir == str(shared_data)
    net = load_network(out / "network.npz")
    test = load_dataset(cfg.data).test
    accuracy = (numpy_forward(net, test.images).argmax(-1) == test.labels).mean()
    assert abs(accuracy - metrics["test_accuracy"]) < 1e-6
    summary = capsys.readouterr().out
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in summary
    check_layout_outputs(out, net, metrics["layout"])
    assert f"stress {metrics['layout']['normalized_stress']:.3f}" in summary

    assert metrics["layout"]["reused"] is False

    # a second run with only a new output folder and new render settings reuses the network and the layout
    again = tmp_path / "again"
    assert run_main(argv[:2] + [str(again)] + argv[3:] + ["--set", "render.width=320", "--set", "render.edges=2"]) == 0
    second = json.loads((again / "metrics.json").read_text())
    assert second["reused"] is True and second["layout"]["reused"] is True
    assert (again / "neurons.csv").read_text() == (out / "neurons.csv").read_text()
    assert "reused from cache" in capsys.readouterr().out
    # a changed layout setting lays out again
    third = tmp_path / "third"
    assert run_main(argv[:2] + [str(third)] + argv[3:] + ["--set", "layout.sim.seed=1"]) == 0
    assert json.loads((third / "metrics.json").read_text())["layout"]["reused"] is False


def check_layout_outputs(out: Path, net, figures: dict) -> None:
    """trajectory.npz, neurons.csv and metrics.json's layout section agree with each other and the network."""
    import csv

    with np.load(out / "trajectory.npz", allow_pickle=False) as z:
        positions, step, is_anchor = z["positions"], z["step"], z["is_anchor"]
        meta = json.loads(str(z["meta"]))
        assert z["energy"].shape == (len(step), len(meta["terms"]))
    assert meta["terms"] == figures["terms"] == ["euclid", "repulsion", "centering"]
    assert positions.shape == (len(step), 110, 3) and is_anchor.sum() == 10  # 100 neurons + 10 free anchors
    assert np.isfinite(positions).all() and step[0] == 0 and step[-1] == figures["steps"]
    rows = list(csv.DictReader((out / "neurons.csv").open()))
    assert len(rows) == 100 and list(rows[0]) == ["id", "layer", "index", "dominant", "activation_dominant",
                                                  "x", "y", "z", "distortion", "selectivity", "effective_classes",
                                                  "ablation_drop", "ablation_own_class_drop", "spread"]
    dominant = net.weights[-1].argmax(1)
    for i, row in enumerate(rows):
        assert int(row["id"]) == i and int(row["index"]) == i and int(row["layer"]) == 1
        assert int(row["dominant"]) == dominant[i]
        np.testing.assert_allclose([float(row[c]) for c in "xyz"], positions[-1, i], rtol=1e-5, atol=1e-6)
        assert float(row["distortion"]) >= 0
    # the layout is far better than chance: neighbours in weight space are neighbours in 3D
    assert figures["exact"] and figures["n_neurons"] == 100
    assert figures["normalized_stress"] < 0.3 and figures["trustworthiness"] > 0.8 and figures["spearman"] > 0.6
