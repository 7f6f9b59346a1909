"""How faithful a layout is, and how much class structure it shows (numpy and scipy only).

Faithfulness compares the neurons' output-vector distances (high-d) with their 3D distances (low-d).
Up to `sample` neurons every pair is used; above that, `sample` query neurons drawn with a fixed seed
are compared with every neuron (an unbiased estimate of the same figures). The query rows are taken in
batches of about BATCH_VALUES distances, so memory stays O(N) however many neurons there are
(2,000 queries of 1,000,000 neurons at once would be 16 GB a matrix); Spearman's correlation ranks at
most SPEARMAN_PAIRS of the pairs (all of them up to 2,000 neurons).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

K = 10
BATCH_VALUES = 2**22  # distances per batch of query rows (32 MB a float64 matrix)
SPEARMAN_PAIRS = 4_000_000


def distances(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """[m, n] Euclidean distances from points[queries] to every point (float64)."""
    return cdist(points[queries].astype(np.float64), points.astype(np.float64))


def off_diagonal(queries: np.ndarray, n: int) -> np.ndarray:
    """[m, n] mask, False where the column is the query itself."""
    return np.arange(n)[None, :] != queries[:, None]


def normalized_stress(high: np.ndarray, low: np.ndarray) -> float:
    """Scale-free stress: sqrt(sum (s d - r)^2 / sum r^2) at the best scale s; 0 for a perfect layout."""
    r, d = high.ravel(), low.ravel()
    return stress_from_sums(float(d @ r), float(d @ d), float(r @ r))


def stress_from_sums(cross: float, dd: float, rr: float) -> float:
    """normalized_stress from the sums over the pairs of d r, d^2 and r^2."""
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


def neighbours(dist: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """[m, k] indices of each query's k nearest others, nearest first."""
    d = np.where(mask, dist, np.inf)
    part = np.argpartition(d, k, axis=1)[:, :k]
    order = np.take_along_axis(d, part, 1).argsort(1, kind="stable")
    return np.take_along_axis(part, order, 1)


def recall_rows(high: np.ndarray, low: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Per query: the fraction of its k nearest in output-vector space among its k nearest in 3D."""
    a, b = neighbours(high, mask, k), neighbours(low, mask, k)
    return np.array([len(np.intersect1d(x, y)) / k for x, y in zip(a, b)])


def knn_recall(high: np.ndarray, low: np.ndarray, mask: np.ndarray, k: int) -> float:
    """Mean fraction of each neuron's k nearest in output-vector space that are among its k nearest in 3D."""
    return float(recall_rows(high, low, mask, k).mean())


def trust_rows(high: np.ndarray, low: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Per query: 1 minus the rank penalty of its k 3D neighbours (see trustworthiness). A neighbour's
    rank is its place in the query's row sorted by output-vector distance (self first, ties in column
    order), counted without sorting the row: O(k n) per row instead of O(n log n)."""
    m, n = high.shape
    h = np.where(mask, high, -np.inf)
    low_nn = neighbours(low, mask, k)
    values = np.take_along_axis(h, low_nn, 1)  # [m, k]
    ranks = np.empty((m, k), np.int64)
    columns = np.arange(n)
    for q in range(k):
        v = values[:, q:q + 1]
        ranks[:, q] = (h < v).sum(1) + ((h == v) & (columns[None, :] < low_nn[:, q:q + 1])).sum(1)
    penalty = np.maximum(ranks - k, 0).sum(1)
    return 1 - 2.0 * penalty / (k * (2 * n - 3 * k - 1))


def trustworthiness(high: np.ndarray, low: np.ndarray, mask: np.ndarray, k: int) -> float:
    """Venna and Kaski's trustworthiness: 1 minus the rank penalty of 3D neighbours that are not
    high-d neighbours; 1 when every 3D neighbourhood is a true one. Averaged over the query rows."""
    return float(trust_rows(high, low, mask, k).mean())


def hit_rows(low: np.ndarray, mask: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Per query: the fraction of its k nearest 3D neighbours that share its label."""
    return (labels[neighbours(low, mask, k)] == labels[queries][:, None]).mean(1)


def silhouette(low: np.ndarray, mask: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> float:
    """Mean silhouette (b - a) / max(a, b) by label in 3D; 0 for a neuron alone in its class, and
    nan when there is only one class."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(silhouette_rows(low, mask, labels, queries).mean())


def silhouette_rows(low: np.ndarray, mask: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Per query: its silhouette (see silhouette); needs two classes at least."""
    classes = np.unique(labels)
    member = labels[None, :] == classes[:, None]  # [C, n]
    sums = np.where(mask, low, 0) @ member.T.astype(np.float64)  # [m, C]
    counts = member.sum(1)[None, :] - (labels[queries][:, None] == classes[None, :])  # [m, C] others per class
    own = np.searchsorted(classes, labels[queries])
    rows = np.arange(len(queries))
    a = sums[rows, own] / np.maximum(counts[rows, own], 1)
    mean_other = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    mean_other[rows, own] = np.inf
    b = mean_other.min(1)
    return np.where(counts[rows, own] > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)


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
    rows = query_figures(vectors, positions, labels, queries, k)
    s = rows["dr"].sum() / max(rows["dd"].sum(), 1e-300)  # the layout's best global scale
    per_neuron = np.full(n, np.nan)
    per_neuron[queries] = np.sqrt((s * s * rows["dd"] - 2 * s * rows["dr"] + rows["rr"]).clip(0)
                                  / np.maximum(rows["rr"], 1e-300))
    cross, dd, rr = rows["dr"].sum(), rows["dd"].sum(), rows["rr"].sum()
    figures = {
        "n_neurons": n,
        "exact": bool(len(queries) == n),
        "n_queries": len(queries),
        "k": k,
        "normalized_stress": stress_from_sums(cross, dd, rr),
        "spearman": spearman(rows["r"], rows["d"]),
        "knn_recall": float(rows["recall"].mean()),
        "trustworthiness": float(rows["trust"].mean()),
        "neighbourhood_hit": float(rows["hit"].mean()),
        "silhouette": float(rows["silhouette"].mean()) if len(np.unique(labels)) > 1 else float("nan"),
    }
    # JSON has no NaN: a figure that is undefined here (e.g. silhouette with one class) is None
    return {key: (None if isinstance(v, float) and not np.isfinite(v) else v) for key, v in figures.items()}, per_neuron


def query_figures(vectors: np.ndarray, positions: np.ndarray, labels: np.ndarray, queries: np.ndarray,
                  k: int) -> dict[str, np.ndarray]:
    """Per query row, in batches of about BATCH_VALUES distances: the sums over its pairs of d r, d^2
    and r^2 (d the 3D distance, r the output-vector one), its knn recall, trustworthiness, neighbourhood
    hit and silhouette; and "r", "d": the distances of at most SPEARMAN_PAIRS of the pairs (each
    batch's rows against a seeded sample of the columns), for Spearman's correlation."""
    n = len(vectors)
    batch = max(1, BATCH_VALUES // n)
    columns = n if len(queries) * n <= SPEARMAN_PAIRS else max(2, SPEARMAN_PAIRS // len(queries))
    rng = np.random.default_rng(0)
    two_classes = len(np.unique(labels)) > 1
    parts = []
    for start in range(0, len(queries), batch):
        q = queries[start:start + batch]
        high, low = distances(vectors, q), distances(positions, q)
        mask = off_diagonal(q, n)
        r, d = np.where(mask, high, 0.0), np.where(mask, low, 0.0)
        kept = slice(None) if columns == n else np.sort(rng.choice(n, columns, replace=False))
        parts.append({
            "dr": (d * r).sum(1), "dd": (d * d).sum(1), "rr": (r * r).sum(1),
            "r": high[:, kept][mask[:, kept]], "d": low[:, kept][mask[:, kept]],
            "recall": recall_rows(high, low, mask, k), "trust": trust_rows(high, low, mask, k),
            "hit": hit_rows(low, mask, labels, q, k),
            "silhouette": silhouette_rows(low, mask, labels, q) if two_classes else np.zeros(len(q)),
        })
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
