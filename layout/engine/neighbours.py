"""The k nearest neighbours of every particle's output vector, without an N x N matrix, by faiss
(Meta's similarity search library, on every core).

Up to EXACT_MAX particles the search is exhaustive (faiss.IndexFlatL2: distances in tiles, a heap per
row); above, an inverted file (faiss.IndexIVFFlat): the vectors are clustered by k-means into about
4 sqrt(P) lists and each row searches the PROBES lists nearest to it, exact distances within them.
Measured on this CPU (2 cores) on 10-d Gaussian vectors, the hardest case (benchmarks/scale.py):
100,000 particles in 2.2 s with 0.95 of the true 16 neighbours found (exhaustive: 17.8 s; scipy's
k-d tree 46 s, 5.8 s at 0.87 with eps = 1), 1,000,000 in 51 s at 0.95. Both are deterministic: the
k-means sample and its seed are fixed, so the same vectors give the same neighbours."""

from __future__ import annotations

import faiss
import numpy as np

EXACT_MAX = 20_000  # exhaustive search up to this many particles (20,000: 0.7 s here)
PROBES = 24  # lists searched per row by the inverted file (8: 0.75 of the neighbours, half the time)
TRAIN_PER_LIST = 64  # k-means is trained on this many vectors per list, a seeded sample
KMEANS_PER_LIST = 40  # at least this many vectors per list (faiss warns below 39, on stderr)


def nearest_neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    """[P, k] int32: each row's k nearest other rows of vectors [P, C] by Euclidean distance, nearest
    first (k is capped at P - 1): exact up to EXACT_MAX rows, approximate above (see the module). A
    row's own index is never among them, also where other rows are identical to it (dead neurons share
    the zero vector)."""
    v = np.ascontiguousarray(vectors, np.float32)
    n, c = v.shape
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.int32)
    index = faiss.IndexFlatL2(c) if n <= EXACT_MAX else inverted_file(v)
    index.add(v)
    _, found = index.search(v, k + 1)
    return drop_self(found, k)


def inverted_file(v: np.ndarray) -> faiss.Index:
    """An empty inverted-file index for vectors like v, its k-means trained on a seeded sample of them."""
    n, c = v.shape
    lists = min(int(4 * np.sqrt(n)), n // KMEANS_PER_LIST)
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(c), c, lists)
    index.cp.seed = 0
    sample = np.random.default_rng(0).choice(n, min(n, TRAIN_PER_LIST * lists), replace=False)
    index.train(v[np.sort(sample)])
    index.nprobe = PROBES
    return index


def drop_self(found: np.ndarray, k: int) -> np.ndarray:
    """found [P, k + 1] -> [P, k]: each row without its own index (or, where ties kept it out, without
    its farthest); -1 (too few found by the inverted file) becomes the row's nearest found."""
    n = len(found)
    own = found == np.arange(n)[:, None]
    own[~own.any(1), -1] = True
    kept = found[~own].reshape(n, k)
    missing = kept < 0
    if missing.any():
        kept = np.where(missing, kept[:, :1], kept)
    return kept.astype(np.int32)
