"""The figures a sweep compares for each point and hidden layer: dead neurons, weight sparsity,
dedication to one class, and each structure test's observed value with its weakest null's p."""

from __future__ import annotations

import numpy as np

from layout.insight.verdicts import decisive, verdict

DEAD_SD = 1e-3  # a hidden neuron is dead when its activation varies less than this over the test set
SPARSE_FRACTION = 0.01  # a weight counts as zero when |w| < this x the largest |w| of its matrix


def dead_fraction(activations: np.ndarray) -> float:
    """Fraction of neurons whose activation [n_images, n] is (nearly) constant over the images: they
    carry nothing (a relu that never fires, a sigmoid stuck at 0 or 1)."""
    return float((activations.std(0) < DEAD_SD).mean())


def weight_sparsity(weights: np.ndarray) -> float:
    """Fraction of a weight matrix's entries below SPARSE_FRACTION of its largest magnitude."""
    magnitude = np.abs(weights)
    return float((magnitude < SPARSE_FRACTION * magnitude.max()).mean()) if magnitude.size else float("nan")


def network_sparsity(weights) -> float:
    """weight_sparsity over all of a network's weight matrices (each against its own largest weight)."""
    return float(sum(weight_sparsity(w) * w.size for w in weights) / sum(w.size for w in weights))


def dedication(vectors: np.ndarray) -> float:
    """Mean share of each neuron's largest output weight in the sum of its output weights' magnitudes:
    1 when every neuron drives one class only, 1 / C when it drives all classes alike."""
    magnitude = np.abs(vectors)
    total = magnitude.sum(1)
    keep = total > 0
    return float((magnitude.max(1)[keep] / total[keep]).mean()) if keep.any() else float("nan")


TESTS = {  # column -> (statistic, space, labels) of the test; the p is the weakest null's
    "silhouette_output": ("silhouette", "output", "dominant"),
    "hit_output": ("neighbourhood_hit", "output", "dominant"),
    "ratio_output": ("distance_ratio", "output", "dominant"),
    "silhouette_3d": ("silhouette", "layout", "dominant"),
    "hit_3d": ("neighbourhood_hit", "layout", "dominant"),
    "activation_hit_output": ("neighbourhood_hit", "output", "activation_dominant"),
    "agreement": ("agreement", "output", ""),
    "mantel_receptive_field": ("mantel_receptive_field", "output", ""),
    "mantel_coactivation": ("mantel_coactivation", "output", ""),
    "selectivity": ("selectivity", "activations", ""),
}


def layer_rows(layer_structures, activations: list[np.ndarray], network, vectors: list[np.ndarray],
               hidden: tuple[int, ...], names: tuple[str, ...]) -> list[dict]:
    """A row per laid-out layer (`hidden`: their places among the network's hidden layers, `names`: how
    the tables call them): its size, dead fraction, sparsity of the weights into it, dedication, and
    each test's observed value with the weakest null's p-value."""
    rows = []
    for s in layer_structures:
        l = s.layer
        row = {"layer": names[l], "neurons": s.n_neurons, "dead_fraction": dead_fraction(activations[l]),
               "weight_sparsity_in": weight_sparsity(network.weights[hidden[l]]), "dedication": dedication(vectors[l])}
        for column, (statistic, space, labels) in TESTS.items():
            tests = [t for t in s.tests if (t.statistic, t.space, t.labels) == (statistic, space, labels)]
            weakest = max(decisive(tests) or tests, key=lambda t: t.p if np.isfinite(t.p) else 2, default=None)
            row[column] = weakest.observed if weakest else float("nan")
            row[f"{column}_p"] = weakest.p if weakest else float("nan")
        row["verdict_output"] = verdict(s.find("silhouette", "output"))
        row["verdict_3d"] = verdict(s.find("silhouette", "layout"))
        rows.append(row)
    return rows
