"""Convolutional networks (model.layers): the layer list checked before any training, the forward pass
against an independent numpy/scipy one built from network.npz alone, parameter counts by formula, and
training that lowers the loss."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.signal import correlate

from layout.core.config import DataConfig, ModelConfig, TrainConfig
from layout.core.config_file import load_config
from layout.core.errors import ConfigError
from layout.core.layers import Conv, Dense, Flatten, Pool
from models.data.datasets import Split, load_dataset
from models.network.cnn import apply_layers, count_params, init_layers
from models.network.store import load_network
from models.network.train import train

REPO = Path(__file__).resolve().parents[1]
SMALL = (Conv(4, 5, padding=2), Pool("max", 2), Conv(6, 3, stride=2), Pool("avg", 2), Flatten(), Dense(12))


def numpy_logits(path: Path, images: np.ndarray, shift: tuple[int, np.ndarray] | None = None) -> np.ndarray:
    """The logits of network.npz for uint8 images [n, 28, 28], from the file alone: its meta's layers
    and activation, and its w0, b0, w1, ... (conv weights [out, in, kh, kw], flatten in C, H, W order).
    shift (hidden layer l, values [n_l]): added to that layer's activations, a conv channel's spread
    evenly over its positions (so that its spatial sum grows by the value)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k].astype(np.float64) for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    act = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[
        meta["activation"]]
    h = images.astype(np.float64)[:, None] / 255.0  # [n, 1, 28, 28]
    l = 0
    for layer in meta["layers"]:
        kind, settings = (layer, {}) if isinstance(layer, str) else next(iter(layer.items()))
        if kind == "conv":
            w, b, s, p = arrays[f"w{l}"], arrays[f"b{l}"], settings["stride"], settings["padding"]
            padded = np.pad(h, ((0, 0), (0, 0), (p, p), (p, p)))
            out = np.stack([sum(correlate(padded[:, c], w[o, c][None], mode="valid") for c in range(w.shape[1]))
                            for o in range(w.shape[0])], axis=1)[:, :, ::s, ::s] + b[None, :, None, None]
            h, l = act(out), l + 1
            if shift is not None and shift[0] == l - 1:
                h = h + shift[1][None, :, None, None] / (h.shape[2] * h.shape[3])
        elif kind == "pool":
            k = settings["size"]
            n, c, hh, ww = h.shape
            blocks = h[:, :, :hh // k * k, :ww // k * k].reshape(n, c, hh // k, k, ww // k, k)
            h = blocks.max((3, 5)) if settings["kind"] == "max" else blocks.mean((3, 5))
        elif kind == "flatten":
            h = h.reshape(len(h), -1)
        else:
            h = act(h.reshape(len(h), -1) @ arrays[f"w{l}"] + arrays[f"b{l}"])
            l += 1
            if shift is not None and shift[0] == l - 1:
                h = h + shift[1][None, :]
    return h @ arrays[f"w{l}"] + arrays[f"b{l}"]


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory, shared_data):
    """A small CNN trained by the command for two epochs on 1,000 images: its network.npz."""
    folder = tmp_path_factory.mktemp("cnn")
    config = folder / "small_cnn.yaml"
    config.write_text("data: {limit: 1000}\nmodel:\n  activation: relu\n  layers:\n"
                      "    - conv: {channels: 4, kernel: 5, padding: 2}\n    - pool: {kind: max, size: 2}\n"
                      "    - conv: {channels: 6, kernel: 3, stride: 2}\n    - pool: {kind: avg, size: 2}\n"
                      "    - flatten\n    - dense: {units: 12}\ntrain: {epochs: 2}\n")
    out = folder / "out"
    result = subprocess.run([sys.executable, "-m", "layout.train", str(config), "--out", str(out), "--data-dir",
                             str(shared_data)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


def test_the_forward_pass_equals_a_numpy_one_built_from_the_file_alone(trained_cnn, shared_data):
    network = load_network(trained_cnn / "network.npz")
    assert network.layers == SMALL and network.sizes == (784, 4, 6, 12, 10)
    images = load_dataset(DataConfig(dir=str(shared_data))).test.images[:64]
    ours, _ = apply_layers(network.params(), images.reshape(64, -1) / 255.0, network.layers, network.activation)
    np.testing.assert_allclose(np.asarray(ours), numpy_logits(trained_cnn / "network.npz", images), atol=1e-4)
    saved = load_config(trained_cnn / "config.yaml")  # config.yaml repeats the run
    assert saved.model.layers == SMALL and saved.model.activation == "relu"


def reference_logits(params: list[dict], x: jnp.ndarray, layers: tuple, activation: str) -> jnp.ndarray:
    """The same network by lax.conv_general_dilated and lax.reduce_window, batch first: differentiated
    by JAX's own rules, it checks the patch-matrix convolution's custom gradient."""
    act = {"relu": jax.nn.relu, "tanh": jnp.tanh}[activation]
    h, weights = x.reshape(len(x), 1, 28, 28), iter(params)
    for layer in layers:
        if isinstance(layer, Conv):
            p = next(weights)
            h = jax.lax.conv_general_dilated(h, p["w"], (layer.stride,) * 2, [(layer.padding,) * 2] * 2,
                                             dimension_numbers=("NCHW", "OIHW", "NCHW"))
            h = act(h + p["b"][None, :, None, None])
        elif isinstance(layer, Pool):
            window = (1, 1, layer.size, layer.size)
            h = (jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, window, window, "VALID") if layer.kind == "max" else
                 jax.lax.reduce_window(h, 0.0, jax.lax.add, window, window, "VALID") / layer.size ** 2)
        elif isinstance(layer, Flatten):
            h = h.reshape(len(h), -1)
        else:
            p = next(weights)
            h = act(h @ p["w"] + p["b"])
    out = next(weights)
    return h @ out["w"] + out["b"]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gradients_equal_those_of_lax_convolutions(shared_data, activation):
    """Training's and the feature visualisation's gradients (with respect to every weight and to the
    image) through stride, padding and both poolings, on real images, against JAX's own
    differentiation of lax.conv_general_dilated and lax.reduce_window, batch first. A little noise on
    the images and random biases leave no ties inside a max-pool window (where the formulations split
    the gradient differently)."""
    test = load_dataset(DataConfig(dir=str(shared_data))).test
    rng = np.random.default_rng(0)
    x = jnp.asarray(test.images[:40].reshape(40, -1) / 255.0 + rng.uniform(0, 0.01, (40, 784)), jnp.float32)
    y = jnp.asarray(test.labels[:40])
    params = [{"w": p["w"], "b": jnp.asarray(rng.normal(0, 0.1, p["b"].shape), jnp.float32)}
              for p in init_layers(jax.random.key(3), SMALL, activation, 10)]

    def loss(forward):
        return lambda p, x: optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean()

    theirs = jax.grad(loss(lambda p, x: reference_logits(p, x, SMALL, activation)), (0, 1))(params, x)
    for fast in (True, False):  # training's formulation, and the one of the features
        ours = jax.grad(loss(lambda p, x: apply_layers(p, x, SMALL, activation, fast)[0]), (0, 1))(params, x)
        np.testing.assert_allclose(apply_layers(params, x, SMALL, activation, fast)[0],
                                   reference_logits(params, x, SMALL, activation), rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(jnp.abs(b).max()))


def test_parameter_counts_follow_the_formula():
    lenet = (Conv(6, 5, padding=2), Pool("max", 2), Conv(16, 5), Pool("max", 2), Flatten(), Dense(120), Dense(84))
    by_formula = (6 * 1 * 25 + 6) + (16 * 6 * 25 + 16) + (16 * 5 * 5 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    params = init_layers(jax.random.key(0), lenet, "relu", 10)
    assert count_params(lenet, 10) == by_formula == 61706 == sum(p.size for p in jax.tree.leaves(params))
    assert [p["w"].shape for p in params] == [(6, 1, 5, 5), (16, 6, 5, 5), (400, 120), (120, 84), (84, 10)]


def test_training_lowers_the_loss_on_real_images(shared_data):
    data = load_dataset(DataConfig(dir=str(shared_data), limit=512))
    network = train(ModelConfig(layers=SMALL, activation="relu"),
                    TrainConfig(epochs=4, batch_size=32, learning_rate=0.005), data)
    losses = network.history.train_loss
    assert losses[-1] < losses[0] * 0.7 and network.test_accuracy > 0.5
    assert [w.shape for w in network.weights] == [(4, 1, 5, 5), (6, 4, 3, 3), (6 * 3 * 3, 12), (12, 10)]


@pytest.mark.parametrize("layers, message", [
    ("[{conv: {channels: 6, kernel: 5}}, {pool: {kind: max, size: 2}}, {conv: {channels: 8, kernel: 13}}, flatten]",
     "model.layers, layer 3 (conv 8@13x13) shrinks the 12x12 images to 0x0"),
    ("[{pool: {kind: max, size: 8}}, {pool: {kind: max, size: 8}}, flatten]",
     "model.layers, layer 2 (max pool 8) shrinks the 3x3 images to 0x0"),
    ("[{lstm: {units: 3}}]", "model.layers, layer 1 is a 'lstm' layer, which is not a kind this tool builds"),
    ("[flatten, {conv: {channels: 2, kernel: 3}}]",
     "model.layers, layer 2 (conv 2@3x3) comes after flatten, where there are no images left to convolve"),
    ("[{conv: {channels: 2, kernel: 3}}, {dense: {units: 3}}]",
     "model.layers, layer 2 (dense 3) follows image layers that were never flattened: put flatten before it"),
    ("[{conv: {channels: 2, kernel: 3}}]", "model.layers ends with images: end it with flatten"),
])
def test_a_layer_list_that_cannot_work_is_refused_naming_the_layer(tmp_path, layers, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  layers: {layers}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value) and message in str(info.value), str(info.value)


def run_layout(tmp_path, config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layout.run", str(config), "--no-window", "--out",
                           str(tmp_path / "out"), *args], cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("config, setting, message", [
    ("euclid.yaml", "layout.layers=conv", "error: layout.layers = conv lays out a CNN's conv channels, but the MLP "
                                          "of model.hidden has no conv layer: use layout.layers: dense"),
    ("cnn.yaml", "model.layers=[{conv: {channels: 2, kernel: 3}}, flatten]",
     "error: layout.layers = dense, but model.layers has no dense hidden layer: use layout.layers: conv (its "
     "channels) or all"),
])
def test_layers_the_network_lacks_are_refused_in_one_line_before_training(tmp_path, shared_data, config, setting,
                                                                          message):
    result = run_layout(tmp_path, REPO / "configs" / config, "--set", setting, "--data-dir", str(shared_data))
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == message
    assert not (tmp_path / "out").exists()


def test_conv_layers_of_a_network_file_without_them_are_refused(tmp_path, shared_data):
    """The same check for a --network file: an MLP's network.npz with layout.layers: conv."""
    first = run_layout(tmp_path, REPO / "configs" / "euclid.yaml", "--set", "data.limit=300", "--set",
                       "train.epochs=1", "--set", "model.hidden=[6]", "--set", "structure.enabled=false",
                       "--data-dir", str(shared_data))
    assert first.returncode == 0, first.stderr
    result = subprocess.run([sys.executable, "-m", "layout.run", str(REPO / "configs" / "euclid.yaml"), "--no-window",
                             "--network", str(tmp_path / "out" / "network.npz"), "--set", "layout.layers=conv",
                             "--out", str(tmp_path / "again"), "--data-dir", str(shared_data)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: layout.layers = conv lays out a CNN's conv channels, but the network in {tmp_path / 'out'}")


def test_jacobian_influence_equals_finite_differences_on_a_small_cnn(trained_cnn, shared_data):
    """A conv channel's influence (d logits / d its spatially summed activation, spread evenly) and a dense
    neuron's (d logits / d its activation), averaged over the images, against central differences of the
    independent numpy forward pass."""
    from layout.engine.features import mean_jacobian

    network = load_network(trained_cnn / "network.npz")
    images = load_dataset(DataConfig(dir=str(shared_data))).test.images[:40]
    eps = 1e-3
    for hidden, n in ((0, 4), (1, 6), (2, 12)):
        ours = mean_jacobian(network.params(), network, images, hidden)  # [n, C]
        assert ours.shape == (n, 10)
        for unit in range(n):
            step = np.zeros(n)
            step[unit] = eps
            plus = numpy_logits(trained_cnn / "network.npz", images, (hidden, step))
            minus = numpy_logits(trained_cnn / "network.npz", images, (hidden, -step))
            differences = ((plus - minus) / (2 * eps)).mean(0)
            np.testing.assert_allclose(ours[unit], differences, rtol=2e-3, atol=2e-4)
        assert np.abs(ours).max() > 1e-3  # the network is trained: its units move the logits


def test_feature_visualisation_excites_each_channel_far_beyond_the_test_images(shared_data):
    """cnn.yaml's network after three epochs: every channel's image excites it beyond all but 1% of the
    test images (and twice its mean), and nine in ten dense neurons' images do."""
    from layout.engine.features import hidden_activations
    from layout.engine.featvis import feature_images, mean_activation

    cfg = load_config(REPO / "configs" / "cnn.yaml", ("train.epochs=3",))
    data = load_dataset(DataConfig(dir=str(shared_data)))
    network, test = train(cfg.model, cfg.train, data), data.test
    layers = (0, 1, 2, 3)
    activations = hidden_activations(network, test.images, layers)
    images = feature_images(network, layers, [a.std(0) for a in activations])
    for h, (found, seen) in enumerate(zip(images, activations)):
        assert found.shape == (network.sizes[h + 1], 28, 28) and 0 <= found.min() and found.max() <= 1
        own = np.diag(np.asarray(mean_activation(network.params(), found.reshape(len(found), -1), network, h)))
        alive = seen.std(0) > 1e-3  # a neuron constant over the test images has nothing to find
        assert alive.sum() >= 2
        above = own[alive] > np.maximum(2 * seen.mean(0)[alive], np.percentile(seen, 99, axis=0)[alive])
        if network.hidden_kinds[h] == "conv":  # every channel: beyond all but 1% of the test images
            assert above.all(), (h, own, seen.mean(0))
        else:
            assert above.mean() >= 0.9, (h, own, seen.mean(0))


def planted_cnn(rng: np.random.Generator):
    """A CNN (conv 20@5x5, avg pool 4, flatten, output) whose channel c feeds only class c % 10."""
    from models.network.network import History, Network, Snapshots

    layers = (Conv(20, 5), Pool("avg", 4), Flatten())
    w0 = rng.normal(0, 0.3, (20, 1, 5, 5)).astype(np.float32)
    w1 = np.zeros((20, 6, 6, 10), np.float32)
    for c in range(20):
        w1[c, :, :, c % 10] = rng.uniform(0.5, 1.5)
    w1 = (w1 + rng.normal(0, 0.02, w1.shape)).reshape(720, 10).astype(np.float32)
    empty = np.zeros(0)
    return Network(sizes=(784, 20, 10), activation="relu", weights=(w0, w1),
                   biases=(np.full(20, 0.05, np.float32), np.zeros(10, np.float32)), dataset="planted",
                   classes=tuple(range(10)), class_names=tuple(map(str, range(10))),
                   history=History(empty, empty, empty, empty), snapshots=Snapshots(empty, empty, empty, (), ()),
                   test_accuracy=0.0, train_accuracy=0.0, train_seconds=0.0, epochs=0, layers=layers)


def few_test_images(shared_data) -> Split:
    test = load_dataset(DataConfig(dir=str(shared_data))).test
    return Split(test.images[:300], test.labels[:300])


def conv_structure(network, test):
    """Layer 1's (the conv layer's) features and its structure tests against 99 shuffled-column and 99
    untrained nulls, by output vectors (its channels' Jacobian influence)."""
    from layout.engine.features import neuron_features
    from layout.insight.structure import LayerInputs, layer_structure
    from layout.insight.untrained import conv_influence_nulls

    f = neuron_features(network, test, "weights", "conv")
    nulls = conv_influence_nulls(network, 0, test.images, 99, seed=0)
    assert nulls.shape == (99, f.n_neurons, 10)
    return f, layer_structure(LayerInputs(
        layer=0, sizes=network.sizes, activation="relu", vectors=f.output_vectors, dominant=f.dominant,
        activation_dominant=f.activation_dominant, positions=f.output_vectors[:, :3],
        receptive_fields=f.receptive_fields.reshape(f.n_neurons, -1), activations=np.zeros((len(test.labels), 20)),
        relayouts={}, shuffled_label_vectors=None, untrained_vectors=lambda rng, count: nulls[:count]),
        permutations_count=99, k=1, seed=0)


def test_channels_planted_to_drive_one_class_each_are_real_structure(shared_data):
    from layout.insight.verdicts import verdict

    test = few_test_images(shared_data)
    f, structure = conv_structure(planted_cnn(np.random.default_rng(3)), test)
    assert f.n_neurons == 20 and f.influence == "jacobian" and f.layer_name(0) == "layer 1 (conv)"
    assert (f.dominant == np.arange(20) % 10).all()  # the influence finds what was planted
    tests = structure.find("silhouette", "output")
    assert {t.null for t in tests} == {"shuffled_columns", "untrained"}
    assert all(t.p <= 0.01 for t in tests), [(t.null, t.p) for t in tests]
    assert verdict(tests) == "real structure"


def test_untrained_channels_are_not_called_structure(shared_data):
    """The same tests on a CNN at its initialisation: no verdict of real structure."""
    from layout.insight.untrained import null_params
    from layout.insight.verdicts import verdict

    planted = planted_cnn(np.random.default_rng(3))
    params = null_params(planted, 1234, 0)
    network = dataclasses.replace(planted, weights=tuple(p["w"] for p in params), biases=tuple(p["b"] for p in params))
    _, structure = conv_structure(network, few_test_images(shared_data))
    assert verdict(structure.find("silhouette", "output")) != "real structure"


@pytest.mark.parametrize("which", ["dense", "all"])
def test_the_cnn_config_writes_every_output_for_its_channels_and_dense_neurons(tmp_path, shared_data, which):
    """python -m layout.run configs/cnn.yaml --no-window --export mp4 png, with its dense layers (the
    default) or every layer laid out (short training and small nulls to keep it quick): every file, and
    contents that agree with each other, the layers numbered among the network's hidden layers."""
    import csv

    import imageio.v2 as imageio

    from tests.test_render import decode_mp4

    settings = ("train.epochs=2", f"layout.layers={which}", "structure.permutations=19", "structure.layout_nulls=4",
                "structure.selectivity_nulls=4", "structure.ablation_groups=4", "structure.stability_seeds=2",
                "render.settle_seconds=0.5", "render.orbit_seconds=0.5", "render.width=320", "render.height=240")
    result = run_layout(tmp_path, REPO / "configs" / "cnn.yaml", "--export", "mp4", "png", "--data-dir",
                        str(shared_data), *(a for s in settings for a in ("--set", s)))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    widths = {1: 6, 2: 16, 3: 120, 4: 84} if which == "all" else {3: 120, 4: 84}  # conv 6, conv 16, dense 120, 84
    n = sum(widths.values())
    expected = {"config.yaml", "network.npz", "trajectory.npz", "neurons.csv", "top_images.npz", "structure.json",
                "report.md", "metrics.json", "layout.mp4", "snapshot.png", "manifest.json",
                *(f"{kind}_layer{n}.png" for n in widths for kind in ("structure", "atlas", "atlas_top"))}
    assert {p.name for p in out.iterdir()} == expected
    with open(out / "neurons.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    assert {n: sum(int(r["layer"]) == n for r in rows) for n in widths} == widths
    with np.load(out / "top_images.npz") as z:
        assert z["top"].shape == (n, 9) and z["top"].max() < 10_000
    with np.load(out / "trajectory.npz") as z:
        meta = json.loads(str(z["meta"]))
        assert meta["n_neurons"] == n and meta["made_by"]["layout"]["layers"] == which
    structure = json.loads((out / "structure.json").read_text())
    assert [layer["name"] for layer in structure["layers"]] == [
        f"layer {k} ({'conv' if k < 3 else 'dense'})" for k in widths]
    assert [layer["n_neurons"] for layer in structure["layers"]] == list(widths.values())
    assert any(v.startswith("layer 4 (dense), dominance clustering") for v in structure["verdicts"])
    report = (out / "report.md").read_text()
    assert "## Layer 4 (dense) (84 neurons)" in report
    assert ("## Layer 1 (conv) (6 neurons)" in report) == (which == "all")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["layout"]["n_neurons"] == n
    frames = decode_mp4(out / "layout.mp4")
    assert len(frames) >= 20 and frames[0].shape == (240, 320, 3) and frames[-1].std() > 5
    assert imageio.imread(out / "snapshot.png").shape[:2] == (240, 320)
    for n in widths:  # a tile per neuron: bigger sheets for bigger layers
        assert imageio.imread(out / f"atlas_layer{n}.png").std() > 5
    assert "Traceback" not in result.stderr
    assert ("output vectors: jacobian (conv), weights (dense)" in result.stdout) == (which == "all")


def test_the_details_panel_shows_a_first_layer_channels_filter(trained_cnn, shared_data):
    """Clicking a channel of the first conv layer shows its 5x5 kernel at exact pixels beside its feature
    visualisation; a neuron of another layer has no filter (blank)."""
    import pyvista as pv

    from layout.engine.features import neuron_features
    from layout.pipeline.layout_stage import LayoutResult
    from layout.pipeline.render_stage import details_for
    from render.panel import add_panel, field_rgb, show_neuron

    network = load_network(trained_cnn / "network.npz")
    f = neuron_features(network, few_test_images(shared_data), "weights", "all")
    laid = LayoutResult(f, particles=None, trajectory=None, figures={}, written=(), distortion=np.zeros(f.n_neurons))
    details = details_for(laid, None, network)
    assert details.filters.shape == (f.n_neurons, 5, 5) and f.layer_numbers[:4].tolist() == [1] * 4
    np.testing.assert_array_equal(details.filters[:4], network.weights[0][:, 0])
    assert np.isnan(details.filters[4:]).all()
    plotter = pv.Plotter(off_screen=True, window_size=(420, 720))
    panel = add_panel(plotter, details, f.class_names, 420, 720)
    for i, kernel in ((2, network.weights[0][2, 0]), (10, np.zeros((5, 5)))):
        show_neuron(panel, i)
        size = 5 * panel.filter_zoom
        shown = np.flipud(np.asarray(panel.filter.point_data["rgb"]).reshape(size, size, 3))
        np.testing.assert_array_equal(shown, field_rgb(kernel, panel.filter_zoom))
    plotter.close()
