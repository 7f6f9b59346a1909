"""Networks trained elsewhere (issue 19, first part): an MLP's weights as safetensors (PyTorch's [out, in]
order) or npz (Keras' [in, out] order) are read as data, run here with the same accuracy, and laid out;
pickles (a PyTorch .pt) are refused unread; arrays that do not form the MLP are refused in one line."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from layout.core.config import DataConfig
from models.data.datasets import load_dataset
from models.network.store import load_network
from tests.data.make_reference import NETWORK

REPO = Path(__file__).resolve().parents[1]


def run(shared_data: Path, out: Path, network: Path | None, *args: str) -> subprocess.CompletedProcess:
    given = ("--network", str(network)) if network else ()
    return subprocess.run([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", "--export",
                           "none", "--data-dir", str(shared_data), "--out", str(out), *given,
                           "--set", "layout.sim.steps=60", "--set", "structure.enabled=false", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def numpy_accuracy(weights, biases, test) -> float:
    """784-30-10 sigmoid, computed here in float64 from the arrays alone."""
    h = test.images.reshape(len(test.images), -1) / 255.0
    h = 1 / (1 + np.exp(-(h @ weights[0] + biases[0])))
    return float(((h @ weights[1] + biases[1]).argmax(1) == test.labels).mean())


@pytest.mark.parametrize("kind", ["safetensors", "npz"])
def test_an_mlp_saved_by_another_framework_is_read_run_and_laid_out(tmp_path, shared_data, kind):
    reference = load_network(NETWORK)
    w, b = [x.astype(np.float64) for x in reference.weights], [x.astype(np.float64) for x in reference.biases]
    if kind == "safetensors":  # as PyTorch's state_dict: [out, in], the names a Sequential gives
        path = tmp_path / "model.safetensors"
        save_file({"0.weight": np.ascontiguousarray(reference.weights[0].T), "0.bias": reference.biases[0],
                   "2.weight": np.ascontiguousarray(reference.weights[1].T), "2.bias": reference.biases[1]}, str(path))
    else:  # as Keras' get_weights(): [in, out]
        path = tmp_path / "weights.npz"
        np.savez(path, *(x for pair in zip(reference.weights, reference.biases) for x in pair))
    test = load_dataset(DataConfig(dir=str(shared_data))).test
    expected = ("--expect-accuracy", f"{numpy_accuracy(w, b, test):.4f}")
    # given on the command line, or as the config's model.file
    result = (run(shared_data, tmp_path / "out", path, *expected) if kind == "safetensors" else
              run(shared_data, tmp_path / "out", None, "--set", f"model.file={path}", *expected))
    assert result.returncode == 0, result.stderr
    order = "PyTorch's [out, in]" if kind == "safetensors" else "Keras' [in, out]"
    assert f"{path}: an MLP, 784-30-10, stored in {order} order, activation sigmoid" in result.stderr + result.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert abs(metrics["test_accuracy"] - numpy_accuracy(w, b, test)) < 1e-3 and metrics["network_file"] == str(path)
    written = load_network(tmp_path / "out" / "network.npz")  # the run's network is the file's
    for ours, theirs in zip(written.weights, reference.weights):
        np.testing.assert_array_equal(ours, theirs)
    rows = (tmp_path / "out" / "neurons.csv").read_text().splitlines()
    assert len(rows) == 31  # a header and the 30 hidden neurons, laid out


class Marker:
    """Unpickling this would create the file `path`: proof that a pickle ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("form", ["torch zip", "plain pickle"])
def test_a_pytorch_checkpoint_is_refused_and_never_unpickled(tmp_path, shared_data, form):
    marker, path = tmp_path / "it-ran", tmp_path / "model.pt"
    payload = pickle.dumps(Marker(marker))
    if form == "torch zip":  # torch.save's layout: archive/data.pkl and friends
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", payload)
            z.writestr("archive/version", "3\n")
    else:
        path.write_bytes(payload)
    result = run(shared_data, tmp_path / "out", path)
    assert result.returncode == 2 and result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert "never loaded (they can run code): export the model instead, with safetensors.torch.save_file(" in (
        result.stderr)
    assert 'torch.onnx.export(model, torch.zeros(1, 1, 28, 28), "model.onnx", dynamo=False)' in result.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
    pickle.loads(payload)  # the marker does work: unpickling it creates the file
    assert marker.exists()


def lying_header(path: Path) -> Path:
    save_file({"w": np.zeros((784, 10), np.float32)}, str(path))
    data = bytearray(path.read_bytes())
    data[:8] = (10**9).to_bytes(8, "little")  # a header a gigabyte long, in a file of 31 kB
    path.write_bytes(bytes(data))
    return path


def arrays(**shapes: tuple[int, ...]):
    """A maker of an npz of zero arrays of these shapes, in this order."""
    def make(folder: Path) -> Path:
        np.savez(folder / "w.npz", **{name: np.zeros(shape, np.float32) for name, shape in shapes.items()})
        return folder / "w.npz"
    return make


@pytest.mark.parametrize("make, message", [
    (arrays(a=(784, 50), b=(40, 10)),
     "(a [784, 50], b [40, 10]): no order of them chains from the data's 784 inputs to its 10 classes"),
    (arrays(a=(784, 10), b=(7,)), "its 1-D arrays do not match the layers' outputs as biases ([10])"),
    (arrays(k=(6, 1, 5, 5)), "for a CNN, list its layers in the config's model.layers"),
    (lambda folder: lying_header(folder / "m.safetensors"),
     "is not an intact safetensors file: its header claims 1,000,000,000 bytes"),
])
def test_weight_arrays_that_are_not_the_mlp_are_refused_in_one_line(tmp_path, shared_data, make, message):
    path = make(tmp_path)
    result = run(shared_data, tmp_path / "out", path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {path} ") and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_expect_accuracy_stops_a_network_that_computes_otherwise_here(tmp_path, shared_data):
    """--expect-accuracy: the figure of the user's framework. Met (to 0.001): the run goes on; missed
    (here: the file's sigmoid network read as tanh, as a wrong model.activation would): one line and
    nothing written."""
    reference = load_network(NETWORK)
    path = tmp_path / "weights.npz"
    np.savez(path, *(x for pair in zip(reference.weights, reference.biases) for x in pair))
    test = load_dataset(DataConfig(dir=str(shared_data))).test
    theirs = numpy_accuracy([w.astype(np.float64) for w in reference.weights],
                            [b.astype(np.float64) for b in reference.biases], test)
    met = run(shared_data, tmp_path / "met", path, "--expect-accuracy", f"{theirs + 0.0004:.4f}")
    assert met.returncode == 0, met.stderr
    missed = run(shared_data, tmp_path / "missed", path, "--expect-accuracy", f"{theirs:.4f}",
                 "--set", "model.activation=tanh")
    assert missed.returncode == 2 and len(missed.stderr.strip().splitlines()) == 1, missed.stderr
    assert f"not the {theirs:.4f} of --expect-accuracy (more than 0.001 apart)" in missed.stderr
    assert "model.activation = tanh" in missed.stderr and not (tmp_path / "missed").exists()
    alone = subprocess.run([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window",
                            "--expect-accuracy", "0.9"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert alone.returncode == 2 and "give --network FILE too" in alone.stderr
