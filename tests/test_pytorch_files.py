"""Networks made by PyTorch itself (issue 19): a 784-100-10 sigmoid MLP and a LeNet-5-like CNN, trained
briefly on the 5,000 training images, exported to ONNX by both of PyTorch's exporters and to
safetensors, are read here with PyTorch's own test accuracy (to 0.001) and run through the whole tool;
ONNX files this tool cannot run faithfully are refused in one line with nothing written.

PyTorch is not a dependency of the tool: these tests need `pip install torch==2.13.0 onnxscript`,
which .ci/run installs; elsewhere they are skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx.external_data_helper import set_external_data

from layout.core.config import DataConfig, ModelConfig
from layout.core.errors import UserError
from layout.core.layers import parse_layers
from models.data.datasets import SPLIT_FILES, load_dataset
from models.data.idx import write_idx
from models.formats.imported import read_network_file
from models.network.network import inputs_of
from tests.conftest import WHOLE_TOOL_QUICKLY, colour_digits
from tests.data.make_reference import settings

if os.environ.get("CI"):  # in CI PyTorch is installed (.ci/run): a missing one fails, never skips
    import torch
else:
    torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLOUR_MEAN, COLOUR_STD = (0.1, 0.12, 0.08), (0.25, 0.3, 0.2)
LENET = ("[{conv: {channels: 6, kernel: 5, padding: 2}}, {pool: {kind: max, size: 2}}, {conv: {channels: 16, "
         "kernel: 5}}, {pool: {kind: max, size: 2}}, flatten, {dense: {units: 120}}, {dense: {units: 84}}]")


class LeNet(nn.Module):
    """LeNet-5 as PyTorch tutorials write it: the flatten as x.view(x.size(0), -1), which the TorchScript
    exporter turns into a Shape / Gather / Unsqueeze / Concat chain when the batch is dynamic."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.Sigmoid(), nn.Linear(100, 10))


def trained(model: nn.Module, dataset, epochs: int, mean: float | tuple = 0.0, std: float | tuple = 1.0
            ) -> tuple[nn.Module, float]:
    """The model after a few epochs of Adam on the training images ([n, C, H, W], scaled to 0..1, then as
    transforms.Normalize(mean, std) does: one figure, or one per channel), and its test accuracy as PyTorch
    computes it."""
    torch.manual_seed(0)
    per_channel = [torch.tensor(np.reshape(v, (-1, 1, 1)), dtype=torch.float32) for v in (mean, std)]

    def tensor(images):
        chw = images.transpose(0, 3, 1, 2) if images.ndim == 4 else images[:, None]
        return (torch.tensor(chw / 255.0, dtype=torch.float32) - per_channel[0]) / per_channel[1]

    x = tensor(dataset.train.images)
    y = torch.tensor(dataset.train.labels, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(tensor(dataset.test.images)).argmax(1).numpy()
    return model, float((predicted == dataset.test.labels).mean())


def export(model: nn.Module, folder: Path, form: str, shape: tuple[int, ...] = (1, 1, 28, 28)) -> Path:
    example = torch.zeros(*shape)
    if form == "onnx-torchscript":
        path = folder / "model.onnx"
        torch.onnx.export(model, example, path, dynamo=False, input_names=["images"],
                          dynamic_axes={"images": {0: "batch"}})
    elif form == "onnx-dynamo":
        path = folder / "model.onnx"
        torch.onnx.export(model, (example,), path, dynamo=True, external_data=False)
    else:
        path = folder / "model.safetensors"
        save_file(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def dataset(shared_data):
    return load_dataset(DataConfig(dir=str(shared_data)))


@pytest.fixture(scope="module")
def networks(dataset):
    """{"mlp" | "cnn": (the trained PyTorch model, PyTorch's test accuracy)}."""
    torch.set_num_threads(os.cpu_count() or 1)
    return {"mlp": trained(mlp(), dataset, 3), "cnn": trained(LeNet(), dataset, 2)}


def model_config(kind: str) -> ModelConfig:
    cnn = ModelConfig(activation="relu", layers=parse_layers(yaml.safe_load(LENET)))
    return ModelConfig() if kind == "mlp" else cnn


@pytest.mark.parametrize("form", ["onnx-torchscript", "onnx-dynamo", "safetensors"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_pytorch_network_is_read_with_pytorchs_own_test_accuracy(tmp_path, dataset, networks, kind, form):
    model, theirs = networks[kind]
    assert theirs > (0.85 if kind == "mlp" else 0.9)  # trained: a wrong import would show
    network, notes = read_network_file(export(model, tmp_path, form), model_config(kind), dataset)
    assert abs(network.test_accuracy - theirs) <= 0.001, (network.test_accuracy, theirs)
    expected = (784, 100, 10) if kind == "mlp" else (784, 6, 16, 120, 84, 10)
    assert network.sizes == expected and network.activation == ("sigmoid" if kind == "mlp" else "relu")
    assert (network.layers is None) == (kind == "mlp")
    if kind == "cnn":
        assert network.layers == model_config("cnn").layers
    assert notes and ("ONNX" in notes[0]) == form.startswith("onnx")


QUICK = settings(*WHOLE_TOOL_QUICKLY)  # every stage of the tool, with small nulls


def run(shared_data: Path, out: Path, network: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window",
                           "--data-dir", str(shared_data), "--out", str(out), "--network", str(network), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("kind, form", [("mlp", "onnx-dynamo"), ("cnn", "onnx-torchscript")])
def test_a_pytorch_network_runs_through_layout_structure_tests_and_snapshot(tmp_path, shared_data, networks,
                                                                              kind, form):
    model, theirs = networks[kind]
    path = export(model, tmp_path, form)
    out = tmp_path / "out"
    result = run(shared_data, out, path, "--expect-accuracy", f"{theirs:.4f}", "--export", "png", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["test_accuracy"] - theirs) <= 0.001 and metrics["network_file"] == str(path)
    n_hidden = 100 if kind == "mlp" else 120 + 84
    assert len((out / "neurons.csv").read_text().splitlines()) == 1 + n_hidden
    assert any("dominance clustering" in v for v in metrics["structure"]["verdicts"])  # the structure tests ran
    assert (out / "report.md").read_text().startswith("# Structure report")
    snapshot = next(out.glob("*.png"))
    assert snapshot.stat().st_size > 10_000
    assert "replaces the config's model" in result.stderr or kind == "mlp"


def one_node_changed(path: Path, op: str, new_op: str) -> Path:
    model = onnx.load(path)
    node = next(n for n in model.graph.node if n.op_type == op)
    node.op_type = new_op
    onnx.save(model, path)
    return path


@pytest.fixture
def mlp_onnx(tmp_path, networks) -> Path:
    return export(networks["mlp"][0], tmp_path, "onnx-torchscript")


def refused(shared_data: Path, out: Path, path: Path) -> str:
    result = run(shared_data, out, path, "--export", "none")
    assert result.returncode == 2 and result.stdout == "", result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()
    return result.stderr


def test_an_op_outside_the_allowlist_is_refused_naming_it(tmp_path, shared_data, networks):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.LeakyReLU(), nn.Linear(100, 10))
    path = export(model.eval(), tmp_path, "onnx-torchscript")
    error = refused(shared_data, tmp_path / "out", path)
    assert "(LeakyRelu) is not supported here: the ops read are Conv, MaxPool" in error


@pytest.mark.parametrize("layer, op", [(nn.ELU(), "Elu"), (nn.Softplus(), "Softplus"),
                                       (nn.BatchNorm1d(100), "BatchNormalization"),
                                       (nn.LayerNorm(100), "LayerNormalization")])
def test_other_ops_outside_the_allowlist_are_refused_naming_them(tmp_path, dataset, layer, op):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), layer, nn.Sigmoid(), nn.Linear(100, 10))
    path = export(model.eval(), tmp_path, "onnx-torchscript")
    with pytest.raises(UserError, match=rf"\({op}\) is not supported here: the ops read are Conv, MaxPool"):
        read_network_file(path, ModelConfig(), dataset)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:len(b) // 2], "is not an intact ONNX file"),
    (lambda b: b[:40] + bytes(200) + b[240:], "is not an intact ONNX file"),
])
def test_a_truncated_or_corrupt_onnx_file_is_refused(tmp_path, shared_data, mlp_onnx, damage, message):
    mlp_onnx.write_bytes(damage(mlp_onnx.read_bytes()))
    assert message in refused(shared_data, tmp_path / "out", mlp_onnx)


def test_onnx_with_external_data_is_refused_and_the_data_never_read(tmp_path, shared_data, networks):
    path = tmp_path / "model.onnx"
    torch.onnx.export(networks["mlp"][0], (torch.zeros(1, 1, 28, 28),), path, dynamo=True, external_data=True)
    assert (tmp_path / "model.onnx.data").exists()
    assert "keeps its data in a separate file, which is never read" in refused(shared_data, tmp_path / "out", path)
    # one initializer marked external, pointing at a file that is not there: refused as external, unread
    model = onnx.load(path)
    weight = next(t for t in model.graph.initializer if list(t.dims) == [100, 784])
    set_external_data(weight, location="/nonexistent/weights.bin")
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    only = tmp_path / "one.onnx"
    only.write_bytes(model.SerializeToString())
    error = refused(shared_data, tmp_path / "out2", only)
    assert f"tensor {weight.name} keeps its data in a separate file, which is never read" in error


def test_weights_that_do_not_chain_from_the_data_are_refused(tmp_path, shared_data):
    model = nn.Sequential(nn.Flatten(), nn.Linear(1024, 10), nn.Sigmoid(), nn.Linear(10, 10))
    path = export(model, tmp_path, "safetensors")
    assert "no order of them chains from the data's 784 inputs" in refused(shared_data, tmp_path / "out", path)


def test_a_network_trained_on_normalised_images_is_read_with_the_same_normalisation(tmp_path, dataset, shared_data):
    """PyTorch's usual MNIST normalisation, (x / 255 - 0.1307) / 0.3081: given as data.mean and data.std,
    the tool computes PyTorch's accuracy; without them, --expect-accuracy catches the difference."""
    model, theirs = trained(mlp(), dataset, 2, mean=0.1307, std=0.3081)
    path = export(model, tmp_path, "onnx-dynamo")
    normalised = inputs_of(DataConfig(mean=(0.1307,), std=(0.3081,)))
    network, _ = read_network_file(path, ModelConfig(), dataset, normalised)
    assert abs(network.test_accuracy - theirs) <= 0.001 and network.inputs == normalised
    raw, _ = read_network_file(path, ModelConfig(), dataset)
    assert abs(raw.test_accuracy - theirs) > 0.01  # the scaling matters: it is not ignored
    result = run(shared_data, tmp_path / "out", path, "--expect-accuracy", f"{theirs:.4f}", "--export", "none")
    assert result.returncode == 2 and "check that data.scale, data.mean and data.std scale the images" in result.stderr
    out = tmp_path / "scaled"
    result = run(shared_data, out, path, "--expect-accuracy", f"{theirs:.4f}", "--export", "none", *QUICK,
                 "--set", "data.mean=0.1307", "--set", "data.std=0.3081")
    assert result.returncode == 0, result.stderr[-3000:]
    assert abs(json.loads((out / "metrics.json").read_text())["test_accuracy"] - theirs) <= 0.001
    assert "data:\n" in (out / "config.yaml").read_text() and "std:\n  - 0.3081" in (out / "config.yaml").read_text()


def test_a_pytorch_cnn_for_20x20_images_is_read_for_them(tmp_path, dataset):
    """Data of the user's own size: MNIST's central 20 x 20 pixels as an IDX folder, a small CNN trained on
    them by PyTorch and exported to ONNX, read with PyTorch's accuracy."""
    folder = tmp_path / "mnist-20x20"
    folder.mkdir()
    for split, (images, labels) in SPLIT_FILES.items():
        part = getattr(dataset, split)
        write_idx(folder / images, np.ascontiguousarray(part.images[:, 4:24, 4:24]))
        write_idx(folder / labels, part.labels.astype(np.uint8))
    small = load_dataset(DataConfig(dataset="idx", dir=str(folder)))
    cnn = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 8 * 8, 32),
                        nn.ReLU(), nn.Linear(32, 10))
    model, theirs = trained(cnn, small, 1)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 20, 20), path, dynamo=False)
    network, notes = read_network_file(path, ModelConfig(), small)
    assert theirs > 0.8 and abs(network.test_accuracy - theirs) <= 0.001, (network.test_accuracy, theirs)
    assert network.sizes == (400, 4, 32, 10) and network.inputs.shape == (1, 20, 20)
    with pytest.raises(UserError, match=r"takes inputs of shape \[1, 1, 20, 20\]"):
        read_network_file(path, ModelConfig(), dataset)  # MNIST's 28 x 28 images


@pytest.mark.parametrize("form", ["onnx-torchscript", "safetensors"])
def test_a_pytorch_network_for_colour_images_is_read_with_pytorchs_accuracy(tmp_path, dataset, form):
    """Real MNIST digits in six colour inks ([n, 28, 28, 3] in an .npz), normalised per channel as
    transforms.Normalize does: a CNN (ONNX) and an MLP (safetensors) made by PyTorch are read with PyTorch's
    accuracy, so the channels and pixels reach every weight in PyTorch's (C, H, W) order."""
    (x_train, y_train), (x_test, y_test) = colour_digits(dataset.train, 0), colour_digits(dataset.test, 1)
    np.savez(tmp_path / "colour.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    data = DataConfig(dataset="npz", file=str(tmp_path / "colour.npz"), mean=COLOUR_MEAN, std=COLOUR_STD)
    colour = load_dataset(data)
    if form == "safetensors":
        model, config = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 64), nn.Sigmoid(), nn.Linear(64, 10)), \
            ModelConfig()
    else:
        model, config = nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                      nn.Linear(6 * 12 * 12, 10)), ModelConfig()
    model, theirs = trained(model, colour, 2, COLOUR_MEAN, COLOUR_STD)
    path = export(model, tmp_path, form, (1, 3, 28, 28))
    network, _ = read_network_file(path, config, colour, inputs_of(data, colour.input_shape))
    assert theirs > 0.8 and abs(network.test_accuracy - theirs) <= 0.001, (network.test_accuracy, theirs)
    assert network.inputs.shape == (3, 28, 28) and network.sizes[0] == 2352
    raw, _ = read_network_file(path, config, colour)  # without the per-channel scaling, PyTorch's figure is missed
    assert abs(raw.test_accuracy - theirs) > 0.01


def test_an_onnx_networks_activation_is_the_graphs_not_the_configs(tmp_path, dataset):
    path = one_node_changed(export(mlp().eval(), tmp_path, "onnx-torchscript"), "Sigmoid", "Tanh")
    network, _ = read_network_file(path, ModelConfig(activation="sigmoid"), dataset)
    assert network.activation == "tanh"


def test_an_onnx_network_for_other_images_is_refused(tmp_path, shared_data):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 32, 32), path, dynamo=False)
    error = refused(shared_data, tmp_path / "out", path)
    assert "takes inputs of shape [1, 1, 32, 32]" in error and "the data's images are 1 x 28 x 28" in error


def test_mixed_activations_and_a_missing_one_are_refused(tmp_path, dataset):
    mixed = nn.Sequential(nn.Flatten(), nn.Linear(784, 30), nn.ReLU(), nn.Linear(30, 20), nn.Tanh(),
                          nn.Linear(20, 10)).eval()
    linear = nn.Sequential(nn.Flatten(), nn.Linear(784, 30), nn.Linear(30, 10)).eval()
    for model, message in ((mixed, "uses the activations relu, tanh"), (linear, "has no activation")):
        path = export(model, tmp_path, "onnx-dynamo")
        with pytest.raises(UserError, match=message):
            read_network_file(path, ModelConfig(), dataset)
