"""What each neuron looks at, in files: the test images that activate it most and least (checked
against an independent numpy forward pass), and the atlas sheets (checked pixel by pixel)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from layout.core.config import DataConfig
from layout.engine.features import top_examples
from models.data.datasets import load_dataset
from models.network.store import load_network
from render import style
from render.atlas import ZOOM, class_atlas, examples_atlas, zoomed
from render.glyphs import field_images
from tests.data.make_reference import NETWORK

REPO = Path(__file__).resolve().parents[1]


def numpy_hidden(network, images: np.ndarray) -> np.ndarray:
    """The first hidden layer's activations [n_images, n], in plain numpy (float64)."""
    x = images.reshape(len(images), -1) / 255.0
    return 1 / (1 + np.exp(-(x @ network.weights[0].astype(np.float64) + network.biases[0])))


def test_top_and_bottom_images_are_those_a_numpy_forward_pass_ranks_first_and_last(shared_data):
    network = load_network(NETWORK)  # 784-30-10 sigmoid
    test = load_dataset(DataConfig(dir=str(shared_data))).test
    top, bottom = top_examples(network, test.images, 9)
    assert top.shape == bottom.shape == (30, 9) and top.dtype == np.int32
    acts = numpy_hidden(network, test.images)
    for j in range(30):
        ranked = np.sort(acts[:, j])
        np.testing.assert_allclose(acts[top[j], j], ranked[::-1][:9], atol=1e-5)  # the 9 largest, largest first
        np.testing.assert_allclose(acts[bottom[j], j], ranked[:9], atol=1e-5)  # the 9 smallest, smallest first
        assert len(set(top[j])) == len(set(bottom[j])) == 9


def test_the_class_atlas_puts_every_neuron_in_its_class_block_at_exact_pixels():
    rng = np.random.default_rng(0)
    n, classes = 23, ("zero", "one", "two")
    fields = rng.normal(size=(n, 28, 28)).astype(np.float32)
    dominant = rng.integers(0, 3, n)
    norms = rng.random(n)
    tiles = field_images(fields, dominant, np.zeros(n, int), norms, "neuron", n).tiles
    ids = np.arange(100, 100 + n)
    sheet = class_atlas(tiles, dominant, norms, np.eye(3)[dominant], ids, classes, "test")
    assert sorted(sheet.placed) == ids.tolist()
    size = tiles.shape[1] * ZOOM
    for i, neuron in enumerate(ids):
        x, y = sheet.placed[int(neuron)]
        np.testing.assert_array_equal(sheet.image[y:y + size, x:x + size], zoomed(tiles[i]))  # its own field
        top, bottom = sheet.blocks[int(dominant[i])]
        assert top <= y and y + size <= bottom  # inside its class's block
    for c in range(3):  # within a block, the largest output-vector norm comes first (reading order)
        members = np.flatnonzero(dominant == c)
        order = sorted(members, key=lambda i: (sheet.placed[int(ids[i])][1], sheet.placed[int(ids[i])][0]))
        assert list(norms[order]) == sorted(norms[members], reverse=True)
    border = style.class_rgb(np.array([1]))[0]
    x, y = sheet.placed[int(ids[np.flatnonzero(dominant == 1)[0]])]
    np.testing.assert_array_equal(sheet.image[y, x], border)  # framed in its class's colour


def test_the_examples_atlas_shows_each_neurons_top_and_bottom_images():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 28, 28)).astype(np.uint8)
    tiles = field_images(rng.normal(size=(3, 28, 28)), np.zeros(3, int), np.zeros(3, int), np.ones(3), "neuron",
                         3).tiles
    top, bottom = np.array([[1, 2], [3, 4], [5, 6]]), np.array([[7, 8], [9, 10], [11, 12]])
    sheet = examples_atlas(tiles, images, top, bottom, np.array([3.0, 2.0, 1.0]), np.arange(3), "t")
    image = sheet.image
    for neuron in range(3):
        x, y = sheet.placed[neuron]
        np.testing.assert_array_equal(image[y:y + 60, x:x + 60], zoomed(tiles[neuron]))  # (30 x 30 tiles, 2x)
        inked = [255 - images[k] for k in (*top[neuron], *bottom[neuron])]
        row = image[y:y + 28, 60:, 0]
        found = [any(np.array_equal(row[:, c:c + 28], digit) for c in range(row.shape[1] - 27)) for digit in inked]
        assert all(found), neuron


def test_a_run_writes_top_images_and_the_atlases_and_links_them(tmp_path, shared_data):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "layout.run", "configs/binary01.yaml", "--no-window", "--export",
                             "none", "--out", str(out), "--data-dir", str(shared_data), "--set", "model.hidden=[6]",
                             "--set", "train.epochs=1", "--set", "layout.sim.steps=30", "--set",
                             "structure.permutations=19", "--set", "structure.layout_nulls=0", "--set",
                             "structure.stability_seeds=0", "--set", "structure.selectivity_nulls=19"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with np.load(out / "top_images.npz", allow_pickle=False) as z:
        top, bottom = z["top"], z["bottom"]
    assert top.shape == bottom.shape == (6, 9)
    network = load_network(out / "network.npz")
    test = load_dataset(DataConfig(dir=str(shared_data), classes=(0, 1))).test
    acts = numpy_hidden(network, test.images)
    assert (acts[top[:, 0], np.arange(6)] >= acts.max(0) - 1e-5).all()  # rows in neurons.csv's order
    for name in ("atlas_layer1.png", "atlas_top_layer1.png"):
        assert (out / name).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "[atlas_layer1.png](atlas_layer1.png)" in report and "[atlas_top_layer1.png](atlas_top_layer1.png)" in report


def test_the_thumbnail_strip_shows_the_neurons_that_drive_each_class_hardest():
    from render.atlas import thumbnail_strip

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(12, 3))
    tiles = field_images(rng.normal(size=(12, 28, 28)), vectors.argmax(1), np.zeros(12, int), np.ones(12),
                         "neuron", 12).tiles
    sheet = thumbnail_strip(tiles, vectors, ("a", "b", "c"), 2)
    for c in range(3):
        for j, i in enumerate(np.argsort(-vectors[:, c])[:2]):
            x, y = 28 + j * 32, 4 + c * 34
            np.testing.assert_array_equal(sheet.image[y:y + 30, x:x + 30], tiles[i])


def test_a_probe_beyond_the_test_set_or_a_negative_field_top_is_one_line_before_training(tmp_path, shared_data):
    for setting, expected in (("render.probe=10000", "error: render.probe = 10000 is out of range: the test set has "
                                                     "10000 images (0-9999)"),
                              ("render.field_top=-1", "error: render.field_top = -1 is out of range: must be >= 0"),
                              ("render.probe=every", "error: render.probe = 'every' is not valid: choose one of "
                                                     "per_class")):
        out = tmp_path / "out"
        result = subprocess.run([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", "--out",
                                 str(out), "--data-dir", str(shared_data), "--set", setting], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stdout == "", setting
        assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr
        assert not out.exists()


def test_a_layer_wider_than_the_atlas_cap_shows_its_largest_output_vectors(tmp_path, shared_data, monkeypatch):
    """Above ATLAS_MAX neurons (made 7 here) a layer's atlas sheets show the ATLAS_MAX with the largest
    output-vector norms, each at its own id."""
    from PIL import Image

    from layout.core.config import RunConfig
    from layout.engine.features import neuron_features
    from layout.pipeline import render_stage
    from layout.pipeline.layout_stage import LayoutResult
    from layout.pipeline.train_stage import TrainResult

    network = load_network(NETWORK)
    dataset = load_dataset(DataConfig(dir=str(shared_data)))
    features = neuron_features(network, dataset.test)
    top, bottom = top_examples(network, dataset.test.images, 3)
    laid = LayoutResult(features, None, None, {}, (), np.zeros(features.n_neurons), top=top, bottom=bottom)
    sheets = {}

    def keep(path, sheet):
        sheets[path.name] = sheet
        return write_sheet(path, sheet)

    from render.atlas import write_sheet
    monkeypatch.setattr(render_stage, "ATLAS_MAX", 7)
    monkeypatch.setattr(render_stage, "write_sheet", keep)
    written = render_stage.atlas_stage(RunConfig(), TrainResult(RunConfig(), dataset, network, {}, ()), laid, tmp_path)
    strongest = np.argsort(-np.linalg.norm(features.output_vectors, axis=1))[:7]
    assert sorted(sheets["atlas_layer1.png"].placed) == sorted(strongest.tolist())
    assert sorted(sheets["atlas_top_layer1.png"].placed) == sorted(strongest.tolist())
    assert all(Image.open(p).size[0] > 100 for p in written)
    tiles, _ = render_stage.every_tile(RunConfig(), features)
    x, y = sheets["atlas_layer1.png"].placed[int(strongest[0])]
    np.testing.assert_array_equal(sheets["atlas_layer1.png"].image[y:y + tiles.shape[1] * ZOOM,
                                                                   x:x + tiles.shape[2] * ZOOM],
                                  zoomed(tiles[strongest[0]]))
