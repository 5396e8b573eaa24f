"""refinery-embedder's stored vectors for a model folder, replayed (the model door's embedding).

Replays refinery-embedder (``util/embedders.py`` ``get_embedder``, ``controller.py`` ``generate_batches``)
with embedders 0.1.8 (``PCAReducer``, ``classification/reduce.py`` ``PCASentenceReducer._reduce``) for a
``huggingface`` attribute embedding: ``SentenceTransformer(model).encode`` (no ``normalize_embeddings``) in
batches of 128 in record order, then, for 64 records or more, ``PCA(n_components=64)`` fitted on the first 5
batches (640 records) and applied to every record. The embedder's PCA is unseeded; here it is seeded, so the
replay is reproducible.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BATCH_SIZE", "FIT_BATCHES", "N_COMPONENTS", "reduce_like_embedder", "running_order"]

BATCH_SIZE = 128
"""``get_embedder``: ``batch_size = 128`` for attribute embeddings."""
N_COMPONENTS = 64
"""``get_embedder``: ``n_components = 64``; projects with fewer records keep the model's vectors."""
FIT_BATCHES = 5
"""``PCAReducer.fit_transform(fit_after_n_batches=5)``: the PCA is fitted on the first 5 batches."""


def running_order(ids: list[str]) -> np.ndarray:
    """Row order of ``ids`` as refinery reads the records (``ORDER BY running_id``) where the ids are running
    ids (integers, as in the bundled samples); other ids keep their given order."""
    try:
        keys = np.array([int(i) for i in ids], dtype=np.int64)
    except ValueError:
        return np.arange(len(ids))
    return np.argsort(keys, kind="stable")


def reduce_like_embedder(vectors: np.ndarray, order: np.ndarray | None = None, *, seed: int = 0) -> np.ndarray:
    """The embedder's stored vectors (float64, in the input's row order) for a model's output ``vectors``:
    PCA-64 fitted on the first 640 rows in ``order`` (refinery's record order, :func:`running_order`; default:
    as given), or ``vectors`` unchanged when there are fewer than 64 records."""
    from sklearn.decomposition import PCA

    x = np.asarray(vectors, dtype=np.float64)
    if len(x) < N_COMPONENTS:
        return x
    order = np.arange(len(x)) if order is None else np.asarray(order)
    fit = x[order[: FIT_BATCHES * BATCH_SIZE]]
    n_components = min(N_COMPONENTS, fit.shape[1])  # PCAReducer(autocorrect_n_components=True)
    pca = PCA(n_components=n_components, random_state=seed).fit(fit)
    return pca.transform(x)
