"""Batch samplers: which rows train together in one step (named as sentence-transformers names its samplers)."""

from __future__ import annotations

import numpy as np

__all__ = ["class_aware_batches", "length_grouped", "LENGTH_WINDOW"]

LENGTH_WINDOW = 16
"""Batches pooled when regrouping them by text length (:func:`length_grouped`)."""


def class_aware_batches(y: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches of (about) ``batch_size`` rows with several rows of each of their classes, so
    in-batch losses (SupCon, triplet) always find positives and negatives.

    When every class fits in one batch with at least two rows, each batch holds (about) ``batch_size /
    n_classes`` rows of every class; small classes are cycled (re-shuffled when used up) and the epoch has
    ``ceil(len(y) / batch_size)`` batches. With more classes (:func:`_rotating_class_batches`), each batch holds
    two rows of each of ``batch_size // 2`` classes taken in turn, so batches stay near ``batch_size`` rows
    however many classes there are.
    """
    classes = np.unique(y)
    per_class = max(2, batch_size // len(classes))
    if len(classes) * per_class > batch_size:
        return _rotating_class_batches(y, batch_size, rng)
    pools = {c: rng.permutation(np.flatnonzero(y == c)) for c in classes}
    cursor = {c: 0 for c in classes}
    n_batches = max(1, int(np.ceil(len(y) / batch_size)))
    batches = []
    for _ in range(n_batches):
        parts = []
        for c in classes:
            pool = pools[c]
            take = min(per_class, len(pool))
            if cursor[c] + take > len(pool):
                pools[c] = pool = rng.permutation(pool)
                cursor[c] = 0
            parts.append(pool[cursor[c] : cursor[c] + take])
            cursor[c] += take
        batches.append(rng.permutation(np.concatenate(parts)))
    return batches


def _rotating_class_batches(y: np.ndarray, batch_size: int, rng: np.random.Generator, *,
                            per_class: int = 2) -> list[np.ndarray]:
    """Class-aware batches when the classes do not fit in one batch.

    Each batch holds ``per_class`` rows (fewer for a smaller class) of at most ``batch_size // per_class``
    classes, from shuffled orders of all classes, each order cut into the fewest batches of near-equal class
    counts (no batch straddles two orders, so no class appears twice in it). The epoch has
    ``max(ceil(len(y) / batch_size), batches per order)`` batches: every class is seen at least once. A
    class's rows are shuffled once per epoch and taken in turn, cyclically, with array operations.
    """
    _, cls_of_row = np.unique(y, return_inverse=True)
    sizes = np.bincount(cls_of_row)
    n_classes = len(sizes)
    k = max(1, batch_size // per_class)
    per_order = int(np.ceil(n_classes / k))
    n_batches = max(int(np.ceil(len(y) / batch_size)), per_order)
    # every class's rows together, in a shuffled order within the class
    rows_by_class = np.lexsort((rng.random(len(y)), cls_of_row))
    starts = np.cumsum(sizes) - sizes
    chosen: list[np.ndarray] = []
    while len(chosen) < n_batches:
        order = rng.permutation(n_classes)
        chosen.extend(np.array_split(order, per_order))
    chosen = chosen[:n_batches]
    slot_class = np.concatenate(chosen)
    # the how-many-th visit of its class each slot is (0, 1, ...), in batch order
    by_class = np.argsort(slot_class, kind="stable")
    visits = np.bincount(slot_class, minlength=n_classes)
    visit = np.empty(len(slot_class), dtype=np.int64)
    visit[by_class] = np.arange(len(slot_class)) - np.repeat(np.cumsum(visits) - visits, visits)
    take = np.minimum(per_class, sizes[slot_class])
    slot = np.repeat(np.arange(len(slot_class)), take)
    within = np.arange(len(slot)) - np.repeat(np.cumsum(take) - take, take)
    c = slot_class[slot]
    rows = rows_by_class[starts[c] + (visit[slot] * take[slot] + within) % sizes[c]]
    per_batch = np.add.reduceat(take, np.cumsum([0] + [len(b) for b in chosen[:-1]]))
    return [rng.permutation(b) for b in np.split(rows, np.cumsum(per_batch)[:-1])]


def length_grouped(batches: list[np.ndarray], lengths: np.ndarray, rng: np.random.Generator, *,
                   window: int = LENGTH_WINDOW) -> list[np.ndarray]:
    """Regroup ``batches`` so each holds texts of similar length and pads to its own longest text (full mode).

    Every ``window`` consecutive batches are pooled, sorted by ``lengths`` (tokens per row) and cut back into
    batches of the same sizes, which are then shuffled. Each pool stays class-balanced as a whole, but one
    batch's classes are only as mixed as the pool's lengths allow.
    """
    out: list[np.ndarray] = []
    for s in range(0, len(batches), window):
        group = batches[s : s + window]
        pool = np.concatenate(group)
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        cuts = np.cumsum([len(b) for b in group])[:-1]
        out.extend(np.split(pool, cuts))
    return [out[i] for i in rng.permutation(len(out))]
