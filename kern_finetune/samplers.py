"""Named batch samplers: which rows train together in one step (as sentence-transformers names its samplers).

- :func:`class_aware_batches`: every batch holds every class with several rows, so in-batch losses
  (SupCon, triplet) always find positives and negatives. Both engines and the validation losses use it.
- :func:`length_grouped`: regroups class-aware batches of texts by token count, so a transformer step
  (full mode) pads to its own longest text.
"""

from __future__ import annotations

import numpy as np

__all__ = ["class_aware_batches", "length_grouped", "LENGTH_WINDOW"]

LENGTH_WINDOW = 16
"""Batches pooled when regrouping them by text length (:func:`length_grouped`)."""


def class_aware_batches(y: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches, each holding (about) ``batch_size / n_classes`` rows of every class.

    Small classes are cycled (re-shuffled when used up); the epoch has ``ceil(len(y) / batch_size)``
    batches, so every row is seen about once per epoch.
    """
    classes = np.unique(y)
    per_class = max(2, batch_size // len(classes))
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


def length_grouped(batches: list[np.ndarray], lengths: np.ndarray, rng: np.random.Generator, *,
                   window: int = LENGTH_WINDOW) -> list[np.ndarray]:
    """Regroup ``batches`` so each holds texts of similar length, in a shuffled order.

    Every ``window`` consecutive batches are pooled, sorted by ``lengths`` (tokens per row) and cut
    back into batches of the same sizes; the resulting batches are then shuffled. Each pool is still
    class-balanced as a whole, but one batch's classes are only as mixed as the pool's lengths allow.
    Padding shrinks to the batch's own longest text: about 2.5x fewer transformer FLOPs per step on
    AG News (median 51 tokens, batches of random texts pad to ~100).
    """
    out: list[np.ndarray] = []
    for s in range(0, len(batches), window):
        group = batches[s : s + window]
        pool = np.concatenate(group)
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        cuts = np.cumsum([len(b) for b in group])[:-1]
        out.extend(np.split(pool, cuts))
    return [out[i] for i in rng.permutation(len(out))]
