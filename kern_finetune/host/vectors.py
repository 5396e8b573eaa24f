"""In-memory vectors of served embeddings, for Euclidean similarity search (numpy, no external index).

A served embedding's vectors are loaded from SQLite once and kept in a small LRU cache keyed by the
embedding *version* id; a swap (finalize) serves a new id, and the store drops the replaced id, so a
search never sees a mix of versions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

__all__ = ["VectorIndex", "VectorCache"]


class VectorIndex:
    """The vectors of one embedding version: ``matrix[i]`` belongs to record position ``positions[i]``."""

    def __init__(self, positions: np.ndarray, matrix: np.ndarray) -> None:
        self.positions = positions
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.sq_norms = np.einsum("ij,ij->i", self.matrix, self.matrix)
        self._row_of = {int(p): i for i, p in enumerate(positions)}

    def __len__(self) -> int:
        return len(self.positions)

    def nearest(self, position: int, limit: int) -> tuple[list[int], list[float]]:
        """Record positions nearest to ``position`` (itself excluded), nearest first, and their distances.

        Ties are broken by record position, so answers are deterministic.
        """
        row = self._row_of.get(position)
        if row is None:
            return [], []
        query = self.matrix[row]
        d2 = self.sq_norms - 2.0 * (self.matrix @ query) + self.sq_norms[row]
        np.maximum(d2, 0.0, out=d2)
        d2[row] = np.inf
        k = min(limit, len(d2) - 1)
        if k <= 0:
            return [], []
        cand = np.argpartition(d2, k - 1)[:k] if k < len(d2) else np.arange(len(d2))
        # include every row tied with the k-th distance, then order by (distance, position)
        kth = d2[cand].max()
        cand = np.flatnonzero(d2 <= kth)
        order = cand[np.lexsort((self.positions[cand], d2[cand]))][:k]
        return [int(p) for p in self.positions[order]], [float(x) for x in np.sqrt(d2[order])]


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
