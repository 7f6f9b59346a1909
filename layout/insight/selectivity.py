"""How selective each neuron is for one class, and whether training made the layer more selective than
chance.

- The class-selectivity index (Morcos et al. 2018, "On the importance of single directions for
  generalization"): (mu_max - mu_rest) / (mu_max + mu_rest), mu_max the neuron's largest class-mean
  activation and mu_rest the mean of its other class means. 0: every class alike; 1: it fires for one
  class only (for activations >= 0, as sigmoid and relu give).
- The effective number of classes: exp of the entropy of the class means normalised to sum 1; 1 for a
  neuron that fires for one class, C for one that fires for all alike.

Activations are taken as the network computes them. tanh's can be negative: a class mean below 0 lets
the index exceed 1, it is undefined (NaN) where mu_max + mu_rest <= 0, and the effective number of
classes is undefined (NaN) for a neuron with any negative class mean.

The null: the same architecture at its random initialisation (Glorot or He uniform, as training starts),
its class means measured on the same test images; each null network gives one layer mean.
"""

from __future__ import annotations

import jax
import numpy as np

from layout.engine.features import EVAL_BATCH, class_means
from layout.insight.structure import NullTest
from models.data.datasets import flat_pixels
from models.network.mlp import ACTIVATIONS, init_limit
from models.network.network import Inputs

TINY = 1e-12
INDICES = ("selectivity", "effective_classes")


def selectivity_index(means: np.ndarray) -> np.ndarray:
    """[N] from class means [N, C]; NaN where mu_max + mu_rest <= 0."""
    means = np.asarray(means, np.float64)
    top = means.max(1)
    rest = (means.sum(1) - top) / max(means.shape[1] - 1, 1)
    total = top + rest
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > TINY, (top - rest) / total, np.nan)


def effective_classes(means: np.ndarray) -> np.ndarray:
    """[N] from class means [N, C]: exp(entropy of means / sum); NaN where a mean is negative or all are 0."""
    means = np.asarray(means, np.float64)
    total = means.sum(1, keepdims=True)
    valid = (means >= 0).all(1) & (total[:, 0] > TINY)
    p = np.where(valid[:, None], means / np.where(total > TINY, total, 1.0), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return np.where(valid, np.exp(entropy), np.nan)


def indices(means: np.ndarray) -> dict[str, np.ndarray]:
    return {"selectivity": selectivity_index(means), "effective_classes": effective_classes(means)}


def untrained_class_means(sizes: tuple[int, ...], activation: str, images: np.ndarray, labels: np.ndarray,
                          count: int, rng: np.random.Generator, inputs: Inputs = Inputs(),
                          last_width: int | None = None) -> list[np.ndarray]:
    """For each hidden layer, [count, n_l, C]: the class means of `count` randomly initialised networks
    shown the images scaled as `inputs` says (the trained network's scaling); of the last hidden layer,
    only `last_width` neurons' when given (a wide layer's tests run on a sample of its neurons)."""
    widths = [*sizes[1:-2], last_width or sizes[-2]]
    act = ACTIVATIONS[activation]
    forward = jax.jit(lambda ws, x: hidden_of(ws, inputs.of_pixels(x), act))
    n_classes = sizes[-1]
    out: list[list[np.ndarray]] = [[] for _ in sizes[1:-1]]
    for _ in range(count):
        weights = [rng.uniform(-init_limit(a, b, activation), init_limit(a, b, activation), (a, w)).astype(np.float32)
                   for a, b, w in zip(sizes[:-2], sizes[1:-1], widths)]
        batches = [forward(weights, flat_pixels(images[i:i + EVAL_BATCH])) for i in
                   range(0, len(images), EVAL_BATCH)]
        for l in range(len(weights)):
            out[l].append(class_means(np.concatenate([np.asarray(b[l]) for b in batches]), labels, n_classes))
    return [np.stack(layer) for layer in out]


def hidden_of(weights, h, act):
    """Hidden activations of a network at initialisation (zero biases) for its inputs h."""
    out = []
    for w in weights:
        h = act(h @ w)
        out.append(h)
    return out


def layer_tests(means: np.ndarray, null_means: np.ndarray) -> list[NullTest]:
    """The layer's mean selectivity index and effective number of classes against the null networks'
    (one mean each, NaN neurons left out)."""
    observed = indices(means)
    nulls = [indices(m) for m in null_means]
    return [NullTest(name, "activations", "", "untrained", float(np.nanmean(observed[name])),
                     np.array([np.nanmean(n[name]) for n in nulls if np.isfinite(n[name]).any()]))
            for name in INDICES]


def distribution(means: np.ndarray, null_means: np.ndarray) -> dict:
    """Quartiles of each index over the layer's neurons and over the null networks' neurons pooled."""
    def quartiles(values: np.ndarray) -> list[float] | None:
        values = values[np.isfinite(values)]
        return [float(q) for q in np.percentile(values, [25, 50, 75])] if len(values) else None

    observed = indices(means)
    pooled = indices(np.concatenate(list(null_means))) if len(null_means) else {k: np.zeros(0) for k in INDICES}
    return {name: {"observed": quartiles(observed[name]), "untrained": quartiles(pooled[name])} for name in INDICES}
