"""Is the structure real? Class-structure statistics tested against null models (JAX).

For each hidden layer, in the output-vector space and in the 3D layout:
  silhouette, neighbourhood hit (k nearest) and the within/between distance ratio of the neurons
  grouped by their dominant class (argmax of the output vector), and by their activation-dominant
  class (the class whose images excite them most).

Grouping vectors by their own argmax is "clustered" even for random vectors, so the dominant-class
statistics are never tested by shuffling labels. Their nulls replace the vectors and recompute the labels:
  shuffled_columns  each output column permuted across the layer's neurons (keeps every column's
                    weight distribution, breaks which neuron has which weights)
  untrained         the same architecture at its random initialisation (downstream weight products)
  shuffled_labels   networks trained on shuffled labels (optional: a training run per sample)
and in 3D the null networks are laid out again by the same forces and simulation (`relayout_*`).
Labels from another source (activation dominance) are tested against a label permutation, which is
valid there. Mantel tests relate the output-vector distances to receptive-field and
activation-correlation distances. Every null sample is seeded and vectorised with jax.vmap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from models.network.mlp import init_limit

STATISTICS = ("silhouette", "neighbourhood_hit", "distance_ratio")
HIGHER_IS_STRUCTURE = {"silhouette": True, "neighbourhood_hit": True, "distance_ratio": False,
                       "agreement": True, "mantel_receptive_field": True, "mantel_coactivation": True,
                       "selectivity": True, "effective_classes": False}
BATCH_FLOATS = 2**20  # null samples are evaluated together, at most this many N x N entries at a time


def samples(fn: Callable, xs, n: int) -> jax.Array:
    """fn(x) for every x along xs' first axis (null samples): vmapped in batches that keep the N x N
    intermediates within BATCH_FLOATS."""
    return jax.lax.map(fn, xs, batch_size=max(1, min(len(jax.tree.leaves(xs)[0]), BATCH_FLOATS // (n * n))))


def permutations(rng: np.random.Generator, count: int, n: int, columns: int | None = None) -> np.ndarray:
    """[count, n] (or [count, columns, n]) independent random permutations of 0..n-1, drawn with
    numpy's Fisher-Yates shuffle (a sort per permutation in XLA costs several times more)."""
    shape = (count, n) if columns is None else (count, columns, n)
    return rng.permuted(np.broadcast_to(np.arange(n, dtype=np.int32), shape), axis=-1)


@dataclass(frozen=True)
class NullTest:
    """One statistic against one null. p: one-sided permutation p-value, (1 + #null samples at least
    as structured) / (1 + n); z: (observed - null mean) / null sd, signed so that positive means more
    structure than the null."""

    statistic: str
    space: str  # "output" (output-vector space) or "layout" (3D)
    labels: str  # "dominant", "activation_dominant", or "" (Mantel, agreement)
    null: str
    observed: float
    null_values: np.ndarray  # finite null samples

    @property
    def n(self) -> int:
        return len(self.null_values)

    @property
    def null_mean(self) -> float:
        return float(np.mean(self.null_values)) if self.n else float("nan")

    @property
    def null_sd(self) -> float:
        return float(np.std(self.null_values, ddof=1)) if self.n > 1 else float("nan")

    @property
    def z(self) -> float:
        sign = 1 if HIGHER_IS_STRUCTURE[self.statistic] else -1
        sd = self.null_sd
        return float(sign * (self.observed - self.null_mean) / sd) if sd > 0 else float("nan")

    @property
    def p(self) -> float:
        if not np.isfinite(self.observed) or self.n == 0:
            return float("nan")
        v = self.null_values
        hits = (v >= self.observed) if HIGHER_IS_STRUCTURE[self.statistic] else (v <= self.observed)
        return float((1 + hits.sum()) / (1 + self.n))

    def summary(self) -> dict:
        return {"statistic": self.statistic, "space": self.space, "labels": self.labels, "null": self.null,
                "observed": clean(self.observed), "null_mean": clean(self.null_mean), "null_sd": clean(self.null_sd),
                "z": clean(self.z), "p": clean(self.p), "n_null": self.n}


def clean(x: float) -> float | None:
    """JSON has no NaN: undefined figures are null."""
    return float(x) if np.isfinite(x) else None


# ---------------------------------------------------------------------------------------------
# Statistics (jax, one sample; vmapped over null samples)


@jax.jit
def pairwise_distances(points: jax.Array) -> jax.Array:
    """[n, n] Euclidean distances, zero diagonal."""
    sq = (points * points).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * points @ points.T
    return jnp.sqrt(jnp.maximum(d2, 0.0)) * (1 - jnp.eye(len(points), dtype=points.dtype))


def nearest(d: jax.Array, k: int) -> jax.Array:
    """[n, k] indices of each point's k nearest others."""
    return jax.lax.top_k(-(d + jnp.diag(jnp.full(len(d), jnp.inf, d.dtype))), k)[1]


def class_statistics(d: jax.Array, neighbours: jax.Array, labels: jax.Array, n_classes: int) -> jax.Array:
    """[silhouette, neighbourhood hit, within/between distance ratio] of points with distances d [n, n]
    grouped by labels [n]. Silhouette as scikit-learn (0 for a point alone in its class; NaN with fewer
    than two classes present)."""
    n = len(labels)
    onehot = jax.nn.one_hot(labels, n_classes, dtype=d.dtype)
    counts = onehot.sum(0)
    sums = d @ onehot  # [n, C]: summed distance from each point to each class
    own = counts[labels]
    a = jnp.take_along_axis(sums, labels[:, None], 1)[:, 0] / jnp.maximum(own - 1, 1)
    other = jnp.where((counts[None, :] > 0) & (onehot == 0), sums / jnp.maximum(counts, 1)[None, :], jnp.inf)
    b = other.min(1)
    s = jnp.where(own > 1, (b - a) / jnp.maximum(jnp.maximum(a, b), 1e-30), 0.0)
    silhouette = jnp.where((counts > 0).sum() >= 2, s.mean(), jnp.nan)
    hit = (labels[neighbours] == labels[:, None]).mean()
    within_sum = jnp.take_along_axis(sums, labels[:, None], 1).sum()
    within_pairs = (counts * (counts - 1)).sum()
    between_pairs = n * (n - 1) - within_pairs
    ratio = (within_sum / jnp.maximum(within_pairs, 1)) / ((d.sum() - within_sum) / jnp.maximum(between_pairs, 1))
    ratio = jnp.where((within_pairs > 0) & (between_pairs > 0), ratio, jnp.nan)
    return jnp.stack([silhouette, hit, ratio])


def vector_statistics(vectors: jax.Array, k: int) -> jax.Array:
    """class_statistics of vectors [n, C] grouped by their own argmax."""
    d = pairwise_distances(vectors)
    return class_statistics(d, nearest(d, k), vectors.argmax(1), vectors.shape[1])


def shuffled_columns(vectors: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """[count, n, C]: vectors [n, C] with each column permuted independently across the neurons."""
    orders = permutations(rng, count, *vectors.shape)  # [count, C, n]
    return vectors[orders.transpose(0, 2, 1), np.arange(vectors.shape[1])]


def untrained(sizes: tuple[int, ...], layer: int, activation: str, rng: np.random.Generator,
              count: int, rows: int | None = None) -> np.ndarray:
    """[count, n_layer, C]: output vectors of hidden layer `layer` of randomly initialised networks,
    the product of their downstream initial weights (Glorot or He uniform, as models.network.mlp); only
    the first `rows` neurons' (as likely as any `rows` of them) when given."""
    def weights(n_in: int, n_out: int, m: int, drawn: int | None = None) -> np.ndarray:
        limit = init_limit(n_in, n_out, activation)
        return rng.uniform(-limit, limit, (m, drawn or n_in, n_out)).astype(np.float32)

    chunk = max(1, BATCH_FLOATS // max(a * b for a, b in zip(sizes[layer + 1:-1], sizes[layer + 2:])))
    out = []
    for start in range(0, count, chunk):
        m = min(chunk, count - start)
        v = weights(sizes[layer + 1], sizes[layer + 2], m, rows)
        for l in range(layer + 2, len(sizes) - 1):
            v = v @ weights(sizes[l], sizes[l + 1], m)
        out.append(v)
    return np.concatenate(out)


def vector_nulls(vectors: np.ndarray, k: int) -> np.ndarray:
    """[S, 3] statistics of null output vectors [S, n, C], each grouped by its own argmax."""
    return np.asarray(_vector_nulls(jnp.asarray(vectors, jnp.float32), k))


@partial(jax.jit, static_argnames="k")
def _vector_nulls(vectors, k):
    return samples(lambda v: vector_statistics(v, k), vectors, vectors.shape[1])


def label_nulls(points: np.ndarray, labels: np.ndarray, n_classes: int, orders: np.ndarray, k: int) -> np.ndarray:
    """[S, 3] statistics of fixed points with their labels permuted by orders [S, n] (valid only for
    labels that do not come from the points themselves)."""
    d = pairwise_distances(jnp.asarray(points, jnp.float32))
    near = nearest(d, k)
    return np.asarray(_label_nulls(d, near, jnp.asarray(labels), jnp.asarray(orders), n_classes))


@partial(jax.jit, static_argnames="n_classes")
def _label_nulls(d, near, labels, orders, n_classes):
    return samples(lambda o: class_statistics(d, near, labels[o], n_classes), orders, len(labels))


def observed_statistics(points: np.ndarray, labels: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    return np.asarray(_observed_statistics(jnp.asarray(points, jnp.float32), jnp.asarray(labels), n_classes, k))


@partial(jax.jit, static_argnames=("n_classes", "k"))
def _observed_statistics(points, labels, n_classes, k):  # compiled once per shape: called once per relayout
    d = pairwise_distances(points)
    return class_statistics(d, nearest(d, k), labels, n_classes)


# ---------------------------------------------------------------------------------------------
# Agreement and Mantel tests


def agreement(dominant: np.ndarray, activation_dominant: np.ndarray, n_classes: int,
              orders: np.ndarray) -> tuple[np.ndarray, NullTest]:
    """(confusion matrix [C, C]: rows dominant class, columns activation-dominant class; the test of
    the fraction agreeing against the activation labels permuted)."""
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (dominant, activation_dominant), 1)
    null = (activation_dominant[orders] == dominant[None, :]).mean(1)
    return confusion, NullTest("agreement", "output", "", "label_permutation", float((dominant == activation_dominant).mean()),
                           np.asarray(null, np.float64))


def standardized_off_diagonal(m: jax.Array) -> jax.Array:
    """m with its off-diagonal entries standardised (mean 0, sd 1) and a zero diagonal."""
    n = len(m)
    off = 1 - jnp.eye(n, dtype=m.dtype)
    mean = (m * off).sum() / (n * (n - 1))
    sd = jnp.sqrt((((m - mean) * off) ** 2).sum() / (n * (n - 1)))
    return (m - mean) / jnp.maximum(sd, 1e-30) * off


def mantel(a: np.ndarray, b: np.ndarray, orders: np.ndarray) -> tuple[float, np.ndarray]:
    """(Pearson correlation of the off-diagonal entries of distance matrices a and b, the same with
    b's rows and columns permuted together by each of orders [S, n])."""
    n = len(a)
    az, bz = standardized_off_diagonal(jnp.asarray(a, jnp.float32)), standardized_off_diagonal(jnp.asarray(b, jnp.float32))
    scale = 1.0 / (n * (n - 1))

    null = _mantel_nulls(az, bz, jnp.asarray(orders)) * scale
    return float((az * bz).sum() * scale), np.asarray(null, np.float64)


@jax.jit
def _mantel_nulls(az, bz, orders):
    return samples(lambda p: (az * bz[p][:, p]).sum(), orders, len(az))


def correlation_distance(activations: np.ndarray) -> np.ndarray:
    """1 - Pearson correlation of the neurons' activations over the test images [n_images, n]; a neuron
    that never varies is uncorrelated with everyone (distance 1)."""
    x = activations - activations.mean(0)
    norm = np.sqrt((x**2).sum(0))
    x = x / np.where(norm > 0, norm, np.inf)
    return (1 - x.T @ x).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# One layer, every test


@dataclass(frozen=True)
class LayerInputs:
    """What the tests of one hidden layer need (n neurons, C classes)."""

    layer: int
    sizes: tuple[int, ...]  # the network's layer widths
    activation: str
    vectors: np.ndarray  # [n, C] output vectors
    dominant: np.ndarray  # [n]
    activation_dominant: np.ndarray  # [n]
    positions: np.ndarray  # [n, 3] final layout
    receptive_fields: np.ndarray  # [n, H * W]
    activations: np.ndarray  # [n_test, n] activations over the test images
    relayouts: dict  # null name -> (positions [L, n, 3], dominant labels [L, n]) of laid-out null networks
    shuffled_label_vectors: np.ndarray | None  # [R, n, C] from networks trained on shuffled labels
    untrained_vectors: Callable[[np.random.Generator, int], np.ndarray] | None = None  # (rng, count) -> [count, n, C]:
    # the untrained null's vectors when not the MLP's weight products (untrained), e.g. a CNN's


@dataclass(frozen=True)
class LayerStructure:
    layer: int
    n_neurons: int
    tests: tuple[NullTest, ...]
    confusion: np.ndarray | None  # [C, C] dominant (rows) x activation-dominant (columns)
    name: str = ""  # how the outputs call the layer, e.g. "layer 3 (dense)"; "": "layer <layer + 1>"
    number: int = 0  # its number in file names: its place among the hidden layers, from 1; 0: layer + 1
    tested: int = 0  # how many of its neurons the tests ran on, drawn at random (a wide layer); 0: all
    untested_3d: str = ""  # why no 3D null layouts were made, when not for the usual reasons

    @property
    def sampled(self) -> str:
        """' (tests on 4000 of its 100000 neurons, drawn at random)', or '' when all were tested."""
        return f" (tests on {self.tested} of its {self.n_neurons} neurons, drawn at random)" if self.tested else ""

    @property
    def file_number(self) -> int:
        return self.number or self.layer + 1

    @property
    def title(self) -> str:
        return self.name or f"layer {self.layer + 1}"

    def find(self, statistic: str, space: str, labels: str = "dominant") -> list[NullTest]:
        return [t for t in self.tests if (t.statistic, t.space, t.labels) == (statistic, space, labels)]


MIN_NEURONS = 4


def layer_structure(x: LayerInputs, permutations_count: int, k: int, seed: int) -> LayerStructure:
    """Every statistic of one layer against its nulls (no tests below MIN_NEURONS neurons)."""
    n, c = x.vectors.shape
    if n < MIN_NEURONS:
        return LayerStructure(x.layer, n, (), None)
    k = min(k, n - 1)
    rng = np.random.default_rng([seed, x.layer])
    count = permutations_count
    tests: list[NullTest] = []

    def add(space: str, labels: str, null: str, observed: np.ndarray, nulls: np.ndarray) -> None:
        for i, name in enumerate(STATISTICS):
            values = np.asarray(nulls, np.float64)[:, i] if len(nulls) else np.zeros(0)
            tests.append(NullTest(name, space, labels, null, float(observed[i]), values[np.isfinite(values)]))

    # dominant classes: nulls that replace the vectors and recompute the labels
    observed = observed_statistics(x.vectors, x.dominant, c, k)
    add("output", "dominant", "shuffled_columns", observed, vector_nulls(shuffled_columns(x.vectors, rng, count), k))
    add("output", "dominant", "untrained",
        observed, vector_nulls(x.untrained_vectors(rng, count) if x.untrained_vectors else
                               untrained(x.sizes, x.layer, x.activation, rng, count), k))
    if x.shuffled_label_vectors is not None and len(x.shuffled_label_vectors):
        add("output", "dominant", "shuffled_labels", observed, vector_nulls(x.shuffled_label_vectors, k))
    observed = observed_statistics(x.positions, x.dominant, c, k)
    for null, (positions, labels) in x.relayouts.items():
        nulls = [observed_statistics(p, l, c, k) for p, l in zip(positions, labels) if np.isfinite(p).all()]
        add("layout", "dominant", f"relayout_{null}", observed, np.array(nulls).reshape(-1, len(STATISTICS)))
    # activation-dominant classes come from the activations, not the vectors: a label permutation is valid
    orders = permutations(rng, count, n)
    for space, points in (("output", x.vectors), ("layout", x.positions)):
        add(space, "activation_dominant", "label_permutation",
            observed_statistics(points, x.activation_dominant, c, k),
            label_nulls(points, x.activation_dominant, c, orders, k))
    confusion, agreeing = agreement(x.dominant, x.activation_dominant, c, orders)
    tests.append(agreeing)
    # Mantel: do neurons that vote alike also look at similar pixels, and fire together?
    output_d = np.asarray(pairwise_distances(jnp.asarray(x.vectors)))
    for name, other in (("mantel_receptive_field", np.asarray(pairwise_distances(jnp.asarray(x.receptive_fields)))),
                        ("mantel_coactivation", correlation_distance(x.activations))):
        r, null = mantel(output_d, other, orders)
        tests.append(NullTest(name, "output", "", "neuron_permutation", r, null[np.isfinite(null)]))
    return LayerStructure(x.layer, n, tuple(tests), confusion)
