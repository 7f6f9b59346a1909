"""How faithful a layout is, and how much class structure it shows (numpy and scipy only).

Faithfulness compares the neurons' output-vector distances (high-d) with their 3D distances (low-d).
Up to `sample` neurons every pair is used; above that, `sample` query neurons drawn with a fixed seed
are compared with every neuron (an unbiased estimate of the same figures).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

K = 10


def distances(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """[m, n] Euclidean distances from points[queries] to every point (float64)."""
    return cdist(points[queries].astype(np.float64), points.astype(np.float64))


def off_diagonal(queries: np.ndarray, n: int) -> np.ndarray:
    """[m, n] mask, False where the column is the query itself."""
    return np.arange(n)[None, :] != queries[:, None]


def normalized_stress(high: np.ndarray, low: np.ndarray) -> float:
    """Scale-free stress: sqrt(sum (s d - r)^2 / sum r^2) at the best scale s; 0 for a perfect layout."""
    r, d = high.ravel(), low.ravel()
    cross, dd, rr = float(d @ r), float(d @ d), float(r @ r)
    if dd == 0 or rr == 0:
        return 1.0
    return float(np.sqrt(max(0.0, 1 - cross**2 / (dd * rr))))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank (as scipy.stats.rankdata; importing
    scipy.stats costs about a second, a tenth of a whole warm run)."""
    order = np.argsort(x, kind="stable")
    values = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(values)) + 1]
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks."""
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def best_scale(high: np.ndarray, low: np.ndarray) -> float:
    d = low.ravel()
    return float(d @ high.ravel()) / max(float(d @ d), 1e-300)


def distortion(high: np.ndarray, low: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per query neuron: sqrt(sum_j (s d_ij - r_ij)^2 / sum_j r_ij^2), s the layout's best global scale."""
    s = best_scale(high[mask], low[mask])
    err = np.where(mask, (s * low - high) ** 2, 0).sum(1)
    return np.sqrt(err / np.maximum(np.where(mask, high**2, 0).sum(1), 1e-300))


def neighbours(dist: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """[m, k] indices of each query's k nearest others, nearest first."""
    d = np.where(mask, dist, np.inf)
    part = np.argpartition(d, k, axis=1)[:, :k]
    order = np.take_along_axis(d, part, 1).argsort(1, kind="stable")
    return np.take_along_axis(part, order, 1)


def knn_recall(high: np.ndarray, low: np.ndarray, mask: np.ndarray, k: int) -> float:
    """Mean fraction of each neuron's k nearest in output-vector space that are among its k nearest in 3D."""
    a, b = neighbours(high, mask, k), neighbours(low, mask, k)
    return float(np.mean([len(np.intersect1d(x, y)) / k for x, y in zip(a, b)]))


def trustworthiness(high: np.ndarray, low: np.ndarray, mask: np.ndarray, k: int) -> float:
    """Venna and Kaski's trustworthiness: 1 minus the rank penalty of 3D neighbours that are not
    high-d neighbours; 1 when every 3D neighbourhood is a true one. Averaged over the query rows."""
    m, n = high.shape
    ranks = np.empty_like(high, dtype=np.int64)
    order = np.argsort(np.where(mask, high, -np.inf), axis=1, kind="stable")  # self first
    np.put_along_axis(ranks, order, np.arange(n)[None, :].repeat(m, 0), 1)  # self rank 0, nearest 1
    low_nn = neighbours(low, mask, k)
    penalty = np.maximum(np.take_along_axis(ranks, low_nn, 1) - k, 0).sum()
    return float(1 - 2.0 * penalty / (m * k * (2 * n - 3 * k - 1)))


def neighbourhood_hit(low: np.ndarray, mask: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean fraction of each neuron's k nearest 3D neighbours that share its label."""
    return float((labels[neighbours(low, mask, k)] == labels[queries][:, None]).mean())


def silhouette(low: np.ndarray, mask: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> float:
    """Mean silhouette (b - a) / max(a, b) by label in 3D; 0 for a neuron alone in its class, and
    nan when there is only one class."""
    classes = np.unique(labels)
    if len(classes) < 2:
        return float("nan")
    member = labels[None, :] == classes[:, None]  # [C, n]
    sums = np.where(mask, low, 0) @ member.T.astype(np.float64)  # [m, C]
    counts = member.sum(1)[None, :] - (labels[queries][:, None] == classes[None, :])  # [m, C] others per class
    own = np.searchsorted(classes, labels[queries])
    rows = np.arange(len(queries))
    a = sums[rows, own] / np.maximum(counts[rows, own], 1)
    mean_other = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    mean_other[rows, own] = np.inf
    b = mean_other.min(1)
    s = np.where(counts[rows, own] > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
    return float(s.mean())


def query_rows(n: int, sample: int, seed: int = 0) -> np.ndarray:
    """All rows up to `sample`, else a seeded sample of that many."""
    if n <= sample:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))


def layout_metrics(vectors: np.ndarray, positions: np.ndarray, labels: np.ndarray, sample: int = 2000,
                   k: int = K) -> tuple[dict, np.ndarray]:
    """(figures, per-neuron distortion [n], nan for neurons not sampled) for neurons' output vectors
    [n, C], their 3D positions [n, 3] and their dominant classes [n]."""
    n = len(vectors)
    if n < 4:  # too few neurons for distances to mean anything (e.g. the 784-1-2 network)
        names = ("normalized_stress", "spearman", "knn_recall", "trustworthiness", "neighbourhood_hit", "silhouette")
        return {"n_neurons": n, "exact": True, "n_queries": n, "k": 0, **dict.fromkeys(names)}, np.full(n, np.nan)
    k = min(k, n - 2)
    queries = query_rows(n, sample)
    high, low = distances(vectors, queries), distances(positions, queries)
    mask = off_diagonal(queries, n)
    r, d = high[mask], low[mask]
    per_neuron = np.full(n, np.nan)
    per_neuron[queries] = distortion(high, low, mask)
    figures = {
        "n_neurons": n,
        "exact": bool(len(queries) == n),
        "n_queries": len(queries),
        "k": k,
        "normalized_stress": normalized_stress(r, d),
        "spearman": spearman(r, d),
        "knn_recall": knn_recall(high, low, mask, k),
        "trustworthiness": trustworthiness(high, low, mask, k),
        "neighbourhood_hit": neighbourhood_hit(low, mask, labels, queries, k),
        "silhouette": silhouette(low, mask, labels, queries),
    }
    # JSON has no NaN: a figure that is undefined here (e.g. silhouette with one class) is None
    return {key: (None if isinstance(v, float) and not np.isfinite(v) else v) for key, v in figures.items()}, per_neuron
