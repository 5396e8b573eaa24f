"""In-memory vectors of served embeddings, searched as refinery's data browser searches them
(:mod:`kern_finetune.refinery.search`: threshold, 100-result limit, Euclidean distance).

A version's vectors load once into a small LRU keyed by the embedding *version* id; a swap serves a new id and
the store drops the replaced one, so a search never sees a mix of versions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from ..refinery import search

__all__ = ["VectorCache", "VectorIndex"]


class VectorIndex:
    """The vectors of one embedding version: ``matrix[i]`` belongs to record position ``positions[i]``."""

    def __init__(self, positions: np.ndarray, matrix: np.ndarray) -> None:
        self.positions = positions
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.sq_norms = np.einsum("ij,ij->i", self.matrix, self.matrix)
        self._row_of = {int(p): i for i, p in enumerate(positions)}

    def search(self, position: int, *, threshold: float | None, limit: int = search.SEARCH_LIMIT) -> tuple[list[int], list[float]]:
        """Record positions within ``threshold`` of ``position`` by Euclidean distance, nearest first, at most
        ``limit``: the query first (distance 0), other ties by record position; none for a record without a vector."""
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

    def __init__(self, capacity: int) -> None:
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
