"""In-memory vectors of served embeddings, searched as refinery's data browser searches them.

The threshold, the 100-result limit and the distance are :mod:`kern_finetune.refinery.search`'s (one replay of
refinery-gateway's ``get_records_by_similarity_search`` and refinery-neural-search's ``most_similar_by_embedding``
/ ``calculate_threshold``); its threshold sample is seeded here by the embedding version id, so a threshold is
reproducible. A served embedding's vectors are loaded from SQLite once and kept in a small LRU cache keyed by
the embedding *version* id; a swap (finalize) serves a new id and the store drops the replaced id, so a search
never sees a mix of versions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from ..refinery import search

__all__ = ["VectorCache", "VectorIndex", "similarity_threshold"]


def similarity_threshold(matrix: np.ndarray, *, seed: str) -> float | None:
    """Refinery's threshold for ``matrix`` (:func:`kern_finetune.refinery.search.similarity_threshold`); None
    when there are fewer than 2 rows (no pair to measure; the search then applies no threshold)."""
    return None if len(matrix) < 2 else search.similarity_threshold(matrix, seed=seed)


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

    def search(self, position: int, *, threshold: float | None, limit: int = search.SEARCH_LIMIT) -> tuple[list[int], list[float]]:
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
