"""CNN training speed: JAX (this project) against PyTorch eager on the CPU, same network, same initial
weights, batch size and optimizer.

    python benchmarks/cnn.py [--json] [--epochs N]

configs/cnn.yaml's LeNet-5-like network (conv 6@5x5 pad 2, max pool 2, conv 16@5x5, max pool 2, flatten,
dense 120, dense 84, 10; relu) on Fashion-MNIST's 60k training images (apt-get install
dataset-fashion-mnist), batch 128, Adam 1e-3; each epoch ends with the 10k test images. Reports:

  cnn_jax_epoch_s, cnn_torch_epoch_s   median steady epoch (the first is left out)
  cnn_epoch_ratio                      their ratio (target <= 0.8)
  featvis_s                            feature visualisation of every neuron of the trained network (all
                                       four hidden layers, 226 images) after compilation, median of 3
                                       (target <= 5 s)

benchmarks/train.py --json includes these, and the CNN's first epoch from process start
(cnn_first_epoch_cold_s).

The batch order differs between the two (each framework shuffles its own way); the work per epoch is
the same. Needs torch (pip install torch==2.13.0, the CPU wheel); it is not a project dependency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from layout.core.config import DataConfig, TrainConfig  # noqa: E402
from layout.core.config_file import load_config  # noqa: E402
from models.data.datasets import load_dataset  # noqa: E402
from models.network.train import train  # noqa: E402

TARGETS = {"cnn_epoch_ratio": 0.8, "featvis_s": 5.0, "cnn_first_epoch_cold_s": 8.0}


def jax_epochs(dataset, n_epochs: int):
    cfg = load_config(REPO / "configs" / "cnn.yaml")
    times, last = [], [time.perf_counter()]

    def tick(_stats) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    network = train(cfg.model, TrainConfig(epochs=n_epochs, batch_size=128, learning_rate=1e-3), dataset,
                    on_epoch=tick)
    return times, network


def torch_epochs(dataset, network, n_epochs: int) -> list[float]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10))
    weighted = [model[i] for i in (0, 3, 7, 9, 11)]
    with torch.no_grad():  # the same initial weights: conv [out, in, kh, kw] as is, dense [in, out] transposed
        for layer, w, b in zip(weighted, network.snapshots.weights, network.snapshots.biases):
            first = w[0] if w[0].ndim == 4 else w[0].T
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(first)))
            layer.bias.copy_(torch.from_numpy(b[0]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(dataset.train.images.copy()).float().div(255).unsqueeze(1)
    y = torch.from_numpy(dataset.train.labels.astype(np.int64))
    x_test = torch.from_numpy(dataset.test.images.copy()).float().div(255).unsqueeze(1)
    times = []
    for _ in range(n_epochs):
        start = time.perf_counter()
        order = torch.randperm(len(y))
        for i in range(0, len(y) // 128 * 128, 128):
            idx = order[i:i + 128]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
        with torch.no_grad():
            model(x_test).argmax(-1)
        times.append(time.perf_counter() - start)
    return times


def featvis_seconds(network, dataset, repeats: int = 3) -> float:
    """Median seconds of feature_images for every hidden neuron, after one compiling call."""
    from layout.engine.features import hidden_activations
    from layout.engine.featvis import feature_images

    layers = tuple(range(len(network.sizes) - 2))
    scales = [a.std(0) for a in hidden_activations(network, dataset.test.images, layers)]
    feature_images(network, layers, scales)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        feature_images(network, layers, scales)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cnn_case(dataset, n_epochs: int) -> dict:
    """The CNN's figures: steady epochs of both frameworks, their ratio, and the feature visualisation."""
    jax_times, network = jax_epochs(dataset, n_epochs)
    torch_times = torch_epochs(dataset, network, n_epochs)
    jax_epoch, torch_epoch = statistics.median(jax_times[1:]), statistics.median(torch_times[1:])
    return {"cnn_jax_epoch_s": jax_epoch, "cnn_torch_epoch_s": torch_epoch, "cnn_epoch_ratio": jax_epoch / torch_epoch,
            "cnn_jax_epoch_times_s": jax_times, "cnn_torch_epoch_times_s": torch_times,
            "cnn_jax_test_accuracy": network.test_accuracy, "featvis_s": featvis_seconds(network, dataset)}


def mark(result: dict, name: str) -> str:
    met = result[name] <= TARGETS[name]
    return f"{name:24s}{result[name]:8.2f}   target <= {TARGETS[name]:g}: {'met' if met else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    result = cnn_case(load_dataset(DataConfig(dataset="fashion-mnist")), args.epochs)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"cnn_jax_epoch_s   {result['cnn_jax_epoch_s']:8.2f}\ncnn_torch_epoch_s {result['cnn_torch_epoch_s']:8.2f}")
        print(mark(result, "cnn_epoch_ratio") + "\n" + mark(result, "featvis_s"))


if __name__ == "__main__":
    main()
