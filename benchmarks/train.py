"""Training speed: JAX (this project) against PyTorch eager on the CPU, same network and batches.

    python benchmarks/train.py [--json] [--epochs N] [--repeats N]

On Fashion-MNIST's 60k training images (apt-get install dataset-fashion-mnist), 784-100-10 sigmoid,
batch 128, Adam 1e-3. Both frameworks start from the same initial weights and see the same batches in
the same order; each epoch ends with an evaluation on the 10k test images. Reports:

  jax_epoch_s, torch_epoch_s   median steady-state epoch (the first epoch is left out)
  epoch_ratio                  jax_epoch_s / torch_epoch_s (target <= 0.6)
  jax_first_epoch_cold_s       process start to the end of the first epoch, in a fresh process with an
                               empty cache (no compiled programs, no decoded data) (target <= 3 s)
  jax_first_epoch_warm_s       the same with the caches the cold run left (target <= 1.5 s)
  matmul_peak_gflops           a 2048^3 float32 jnp.dot, the machine's practical peak
  jax_epoch_gflops, torch_epoch_gflops   the epoch's arithmetic divided by its time

and the CNN case (configs/cnn.yaml's LeNet-5-like network, benchmarks/cnn.py): cnn_jax_epoch_s,
cnn_torch_epoch_s, cnn_epoch_ratio (target <= 0.8), featvis_s (target <= 5 s) and
cnn_first_epoch_cold_s, its first epoch from process start with empty caches (target <= 8 s).

Needs torch (pip install torch==2.13.0, the CPU wheel on this machine); it is not a project dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cnn import cnn_case  # noqa: E402
from benchmarks.cnn import mark as cnn_mark  # noqa: E402

HIDDEN, BATCH, LR = 100, 128, 1e-3
TARGETS = {"epoch_ratio": 0.6, "jax_first_epoch_cold_s": 3.0, "jax_first_epoch_warm_s": 1.5}
MODELS = ("mlp", "cnn")


class FirstEpochDone(Exception):
    pass


def first_epoch_child(model: str) -> None:
    """Run by a fresh interpreter: import, load data, train the MLP or configs/cnn.yaml's CNN; print the
    wall clock at the end of epoch 1."""
    from layout.core.config import DataConfig, ModelConfig, TrainConfig
    from layout.core.config_file import load_config
    from layout.core.files import cache_dir
    from models.data.datasets import load_dataset
    from models.network.train import enable_compilation_cache, train

    enable_compilation_cache(cache_dir() / "jax")
    dataset = load_dataset(DataConfig(dataset="fashion-mnist"))

    def stop(stats):
        print(json.dumps({"end": time.time(), "test_accuracy": stats.test_accuracy}), flush=True)
        raise FirstEpochDone

    try:
        network = ModelConfig(hidden=(HIDDEN,)) if model == "mlp" else load_config(REPO / "configs" / "cnn.yaml").model
        train(network, TrainConfig(batch_size=BATCH, learning_rate=LR, epochs=2), dataset, on_epoch=stop)
    except FirstEpochDone:
        pass


def time_first_epoch(cache: str, model: str = "mlp") -> float:
    """Seconds from spawning a fresh Python process to the end of its first training epoch."""
    env = dict(os.environ, NEURON_LAYOUT_CACHE=cache)
    start = time.time()
    out = subprocess.run([sys.executable, __file__, "--first-epoch-child", model], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["end"] - start


def first_epoch_times(repeats: int) -> tuple[list[float], list[float]]:
    cold, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(time_first_epoch(cache))
            warm.append(time_first_epoch(cache))
    return cold, warm


def jax_epochs(dataset, n_epochs: int):
    """Train with the project's own loop; per-epoch wall times from the epoch callback."""
    from layout.core.config import ModelConfig, TrainConfig
    from models.network.train import train

    stamps = [time.perf_counter()]
    network = train(ModelConfig(hidden=(HIDDEN,)), TrainConfig(batch_size=BATCH, learning_rate=LR, epochs=n_epochs),
                    dataset, on_epoch=lambda stats: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps[:-1], stamps[1:])], network


def batch_orders(n_train: int, n_epochs: int):
    """The exact batch order the JAX loop used in each epoch, as numpy index arrays [n_batches, BATCH]."""
    import jax
    import numpy as np

    from layout.core.config import ModelConfig, TrainConfig
    from models.network.train import initial_state, make_optimizer, model_functions

    init, _ = model_functions(ModelConfig(hidden=(HIDDEN,), activation="sigmoid"), 10)
    _, _, order_key = initial_state(make_optimizer(TrainConfig()), init, 0)
    n_batches = n_train // BATCH
    return [np.array(jax.random.permutation(jax.random.fold_in(order_key, e), n_train))[: n_batches * BATCH]
            .reshape(n_batches, BATCH) for e in range(n_epochs)]


def torch_epochs(dataset, network, n_epochs: int):
    """The same network, initial weights, batches and test evaluation in PyTorch eager mode."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, HIDDEN), torch.nn.Sigmoid(), torch.nn.Linear(HIDDEN, 10))
    with torch.no_grad():
        for layer, w, b in zip((model[0], model[2]), network.snapshots.weights, network.snapshots.biases):
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w[0].T)))
            layer.bias.copy_(torch.from_numpy(b[0]))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    x = torch.from_numpy(dataset.train.images.reshape(-1, 784).copy())
    y = torch.from_numpy(dataset.train.labels.astype(np.int64))
    x_test = torch.from_numpy(dataset.test.images.reshape(-1, 784).copy())
    y_test = torch.from_numpy(dataset.test.labels.astype(np.int64))
    times, accuracy = [], 0.0
    for order in batch_orders(len(y), n_epochs):
        start = time.perf_counter()
        for idx in torch.from_numpy(order):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx].float() / 255.0), y[idx])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = (model(x_test.float() / 255.0).argmax(-1) == y_test).float().mean().item()
        times.append(time.perf_counter() - start)
    return times, accuracy


def matmul_peak_gflops(n: int = 2048, repeats: int = 7) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def epoch_flops(n_train: int, n_test: int) -> float:
    """Multiply-adds x 2 of one epoch: forward and backward of both layers (no gradient for the
    input), plus the forward pass over the test set."""
    n_batches = n_train // BATCH
    layer1, layer2 = 784 * HIDDEN, HIDDEN * 10
    train_step = 2 * BATCH * (2 * layer1 + 3 * layer2)
    return n_batches * train_step + 2 * n_test * (layer1 + layer2)


def measure(n_epochs: int, repeats: int) -> dict:
    from layout.core.config import DataConfig
    from layout.core.errors import UserError
    from models.data.datasets import load_dataset

    try:
        dataset = load_dataset(DataConfig(dataset="fashion-mnist"))
    except UserError as e:
        raise SystemExit(f"error: {e} (apt-get install dataset-fashion-mnist puts it in /usr/share/datasets)")
    cold, warm = first_epoch_times(repeats)
    cnn_cold = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            cnn_cold.append(time_first_epoch(cache, "cnn"))
    jax_times, network = jax_epochs(dataset, n_epochs)
    torch_times, torch_accuracy = torch_epochs(dataset, network, n_epochs)
    jax_epoch, torch_epoch = statistics.median(jax_times[1:]), statistics.median(torch_times[1:])
    flops = epoch_flops(len(dataset.train.labels), len(dataset.test.labels))
    import jax
    import torch

    return {
        "dataset": f"fashion-mnist {len(dataset.train.labels)} train / {len(dataset.test.labels)} test",
        "network": f"784-{HIDDEN}-10 sigmoid, batch {BATCH}, adam {LR}",
        "epochs": n_epochs,
        "jax_epoch_s": jax_epoch,
        "torch_epoch_s": torch_epoch,
        "epoch_ratio": jax_epoch / torch_epoch,
        "jax_epoch_times_s": jax_times,
        "torch_epoch_times_s": torch_times,
        "jax_first_epoch_s": {"cold": statistics.median(cold), "warm": statistics.median(warm)},
        "jax_first_epoch_cold_s": statistics.median(cold),
        "jax_first_epoch_warm_s": statistics.median(warm),
        "jax_first_epoch_cold_runs_s": cold,
        "jax_first_epoch_warm_runs_s": warm,
        "matmul_peak_gflops": matmul_peak_gflops(),
        "epoch_gflop": flops / 1e9,
        "jax_epoch_gflops": flops / jax_epoch / 1e9,
        "torch_epoch_gflops": flops / torch_epoch / 1e9,
        "jax_test_accuracy": network.history.test_accuracy[-1].item(),
        "torch_test_accuracy": torch_accuracy,
        "jax_version": jax.__version__,
        "torch_version": torch.__version__,
        "cpus": os.cpu_count(),
        **cnn_case(dataset, n_epochs),
        "cnn_first_epoch_cold_s": statistics.median(cnn_cold),
        "cnn_first_epoch_cold_runs_s": cnn_cold,
    }


def report(r: dict) -> str:
    def mark(name):
        return f"  (target <= {TARGETS[name]:g}: {'met' if r[name] <= TARGETS[name] else 'MISSED'})"

    return "\n".join([
        f"{r['dataset']}; {r['network']}; {r['epochs']} epochs; {r['cpus']} CPUs",
        f"{'':28s}{'JAX':>10s}{'PyTorch':>10s}",
        f"{'steady epoch (median) s':28s}{r['jax_epoch_s']:10.3f}{r['torch_epoch_s']:10.3f}",
        f"{'epoch GFLOP/s':28s}{r['jax_epoch_gflops']:10.1f}{r['torch_epoch_gflops']:10.1f}",
        f"{'test accuracy after run':28s}{r['jax_test_accuracy']:10.4f}{r['torch_test_accuracy']:10.4f}",
        f"epoch_ratio {r['epoch_ratio']:.3f}" + mark("epoch_ratio"),
        f"first epoch from process start: cold {r['jax_first_epoch_cold_s']:.2f} s" + mark("jax_first_epoch_cold_s"),
        f"first epoch from process start: warm {r['jax_first_epoch_warm_s']:.2f} s" + mark("jax_first_epoch_warm_s"),
        f"matmul peak {r['matmul_peak_gflops']:.1f} GFLOP/s; the JAX epoch reaches "
        f"{r['jax_epoch_gflops'] / r['matmul_peak_gflops']:.0%} of it",
        f"CNN (configs/cnn.yaml): steady epoch JAX {r['cnn_jax_epoch_s']:.2f} s, PyTorch {r['cnn_torch_epoch_s']:.2f} s",
        *(cnn_mark(r, name) for name in ("cnn_epoch_ratio", "cnn_first_epoch_cold_s", "featvis_s")),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per framework (the first is left out)")
    parser.add_argument("--repeats", type=int, default=3, help="cold/warm first-epoch runs")
    parser.add_argument("--first-epoch-child", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_epoch_child:
        return first_epoch_child(args.first_epoch_child)
    result = measure(max(args.epochs, 2), args.repeats)
    print(json.dumps(result) if args.json else report(result))


if __name__ == "__main__":
    main()
