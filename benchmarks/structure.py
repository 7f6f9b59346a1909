"""Speed of the structure tests: 1,000 null samples of every permutation statistic of one layer.

    python benchmarks/structure.py [--json] [--repeats 3]

  perm_s_100     N = 100 neurons, C = 10: the column-shuffle and untrained nulls (silhouette,
                 neighbourhood hit, distance ratio), the label permutations in output space and in 3D,
                 the agreement test and both Mantel tests, 1,000 samples each, jitted and vmapped
                 (compiled programs warm; target <= 2 s)
  perm_s_1000    the same for N = 1,000 (target <= 20 s)
  numpy_s_*      baseline: the same statistics per sample in a plain numpy/scipy loop (cdist,
                 argpartition), timed over 50 samples and scaled to 1,000
  ratio_*        numpy_s / perm_s
  first_call_s_* the first run in this process, compilation included

Medians over --repeats runs.
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

from layout.insight.structure import LayerInputs, layer_structure  # noqa: E402

TARGETS = {"perm_s_100": 2.0, "perm_s_1000": 20.0}
C = 10


def layer(n: int) -> LayerInputs:
    rng = np.random.default_rng(n)
    vectors = rng.normal(size=(n, C)).astype(np.float32)
    return LayerInputs(layer=0, sizes=(784, n, C), activation="sigmoid", vectors=vectors, dominant=vectors.argmax(1),
                       activation_dominant=rng.integers(0, C, n), positions=rng.normal(size=(n, 3)).astype(np.float32),
                       receptive_fields=rng.normal(size=(n, 784)).astype(np.float32),
                       activations=rng.random((2000, n)).astype(np.float32), relayouts={}, shuffled_label_vectors=None)


def numpy_statistics(points: np.ndarray, labels: np.ndarray, k: int = 10) -> tuple[float, float, float]:
    from scipy.spatial.distance import cdist

    d = cdist(points, points)
    n = len(points)
    onehot = np.eye(C)[labels]
    counts = onehot.sum(0)
    sums = d @ onehot
    own = counts[labels]
    a = sums[np.arange(n), labels] / np.maximum(own - 1, 1)
    other = np.where((counts > 0) & (onehot == 0), sums / np.maximum(counts, 1), np.inf)
    b = other.min(1)
    s = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-30), 0)
    np.fill_diagonal(d, np.inf)
    near = np.argpartition(d, k, 1)[:, :k]
    np.fill_diagonal(d, 0)
    hit = (labels[near] == labels[:, None]).mean()
    within = sums[np.arange(n), labels].sum()
    pairs = (counts * (counts - 1)).sum()
    return s.mean(), hit, (within / pairs) / ((d.sum() - within) / (n * (n - 1) - pairs))


def numpy_baseline(x: LayerInputs, samples: int = 50) -> float:
    """Seconds for 1,000 samples of every statistic, one sample at a time in numpy."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    n = len(x.vectors)
    output_d = cdist(x.vectors, x.vectors).ravel()
    others = [cdist(m, m) for m in (x.receptive_fields, x.activations.T)]  # made once, like ours
    start = time.perf_counter()
    for _ in range(samples):
        shuffled = np.stack([rng.permutation(col) for col in x.vectors.T], 1)
        numpy_statistics(shuffled, shuffled.argmax(1))  # shuffled columns
        fresh = rng.uniform(-0.3, 0.3, x.vectors.shape)
        numpy_statistics(fresh, fresh.argmax(1))  # untrained
        p = rng.permutation(n)
        numpy_statistics(x.vectors, x.activation_dominant[p])
        numpy_statistics(x.positions, x.activation_dominant[p])
        (x.activation_dominant[p] == x.dominant).mean()
        for other in others:  # Mantel: fixed matrices, one permuted
            np.corrcoef(output_d, other[p][:, p].ravel())
    return (time.perf_counter() - start) * 1000 / samples


def timed(x: LayerInputs) -> float:
    start = time.perf_counter()
    layer_structure(x, 1000, 10, seed=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures = {}
    for n in (100, 1000):
        x = layer(n)
        figures[f"first_call_s_{n}"] = timed(x)
        figures[f"perm_s_{n}"] = statistics.median(timed(x) for _ in range(args.repeats))
        figures[f"numpy_s_{n}"] = numpy_baseline(x, 50 if n == 100 else 10)
        figures[f"ratio_{n}"] = figures[f"numpy_s_{n}"] / figures[f"perm_s_{n}"]
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for name, value in figures.items():
        target = f"  (target <= {TARGETS[name]})" if name in TARGETS else ""
        print(f"{name:18s} {value:10.3f}{target}")


if __name__ == "__main__":
    main()
