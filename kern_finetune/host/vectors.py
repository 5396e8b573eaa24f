"""In-memory vectors of served embeddings and refinery's similarity search on them (numpy, no external index).

The search replays refinery's data browser (read from the public sources, refinery-gateway v1.17.0 and
refinery-neural-search):

- ``controller/record/manager.py`` ``get_records_by_similarity_search`` asks the neural search for the
  **100** records most similar to the query record; when none come back, the query record alone is the result.
- refinery-neural-search ``neural_search/util.py`` ``most_similar_by_embedding`` searches the embedding's
  Qdrant collection by **Euclidean** distance (``get_distance_key``; cosine only for tf-idf) with
  ``score_threshold`` = the embedding's similarity threshold, so only records within that distance come
  back; the query record itself is among them (distance 0).
- ``neural_search/similarity_threshold.py`` ``calculate_threshold``: the **5th percentile** of the pairwise
  Euclidean distances (``cdist`` upper triangle) among a random sample of up to **500** of the embedding's
  records, computed once and stored with the embedding.

Our sample is drawn with a generator seeded by the embedding version id, so a threshold is reproducible.
A served embedding's vectors are loaded from SQLite once and kept in a small LRU cache keyed by the
embedding *version* id; a swap (finalize) serves a new id and the store drops the replaced id, so a search
never sees a mix of versions.
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

__all__ = [
    "SEARCH_LIMIT",
    "THRESHOLD_PERCENTILE",
    "THRESHOLD_SAMPLE",
    "VectorCache",
    "VectorIndex",
    "similarity_threshold",
]

SEARCH_LIMIT = 100
"""How many records the data browser's similarity search asks for (``get_records_by_similarity_search``)."""
THRESHOLD_PERCENTILE = 5
"""``calculate_threshold(percentile=5)``."""
THRESHOLD_SAMPLE = 500
"""``calculate_threshold(limit=500)``: at most this many records are sampled for the pairwise distances."""


def similarity_threshold(matrix: np.ndarray, *, seed: str) -> float | None:
    """The 5th percentile of pairwise Euclidean distances among up to 500 sampled rows of ``matrix``.

    None when there are fewer than 2 rows (no pair to measure; the search then applies no threshold).
    """
    n = len(matrix)
    if n < 2:
        return None
    rows = sorted(random.Random(seed).sample(range(n), THRESHOLD_SAMPLE)) if n > THRESHOLD_SAMPLE else list(range(n))
    sample = np.asarray(matrix[rows], dtype=np.float64)
    sq = np.einsum("ij,ij->i", sample, sample)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (sample @ sample.T)
    upper = np.triu_indices(len(sample), 1)
    distances = np.sqrt(np.maximum(d2[upper], 0.0))
    return float(np.percentile(distances, THRESHOLD_PERCENTILE))


class VectorIndex:
    """The vectors of one embedding version: ``matrix[i]`` belongs to record position ``positions[i]``."""

    def __init__(self, positions: np.ndarray, matrix: np.ndarray) -> None:
        self.positions = positions
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.sq_norms = np.einsum("ij,ij->i", self.matrix, self.matrix)
        self._row_of = {int(p): i for i, p in enumerate(positions)}

    def __len__(self) -> int:
        return len(self.positions)

    def __contains__(self, position: int) -> bool:
        return position in self._row_of

    def search(self, position: int, *, threshold: float | None, limit: int = SEARCH_LIMIT) -> tuple[list[int], list[float]]:
        """Record positions within ``threshold`` of ``position`` by Euclidean distance, nearest first, at most ``limit``.

        The query record is included (distance 0, first among ties); other ties are broken by record
        position, so answers are deterministic. A record without a vector gives no result.
        """
        row = self._row_of.get(position)
        if row is None:
            return [], []
        query = self.matrix[row]
        d2 = self.sq_norms - 2.0 * (self.matrix @ query) + self.sq_norms[row]
        np.maximum(d2, 0.0, out=d2)
        d2[row] = 0.0
        distances = np.sqrt(d2)
        cand = np.flatnonzero(distances <= threshold) if threshold is not None else np.arange(len(distances))
        if len(cand) > 4 * limit:  # keep only the nearest few before the exact ordering
            kth = np.partition(distances[cand], limit - 1)[limit - 1]
            cand = cand[distances[cand] <= kth]
        order = cand[np.lexsort((self.positions[cand], cand != row, distances[cand]))][:limit]
        return [int(p) for p in self.positions[order]], [float(x) for x in distances[order]]


class VectorCache:
    """A thread-safe LRU of :class:`VectorIndex` by embedding version id."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, VectorIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[str], VectorIndex]) -> VectorIndex:
        """The cached index of ``key``, loading it with ``load(key)`` on a miss."""
        with self._lock:
            index = self._items.get(key)
            if index is not None:
                self._items.move_to_end(key)
                return index
        index = load(key)
        with self._lock:
            self._items[key] = index
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return index

    def drop(self, key: str) -> None:
        """Forget ``key`` (its version was replaced or deleted)."""
        with self._lock:
            self._items.pop(key, None)
