"""What the model door's folder computes: the head beside a share of the base vector, chosen by replaying refinery.

Through the model door refinery's embedder computes the embedding itself from our model folder, reduces it
to 64 dimensions by PCA fitted on the project's first 640 records, and searches it under the similarity
threshold (:mod:`kern_finetune.refinery.embedder`, :func:`kern_finetune.refinery.search.threshold_search`). The
neighbour smoothing and the search spread that keep the pushed vectors' result lists full depend on the
project's other records, so a model cannot carry them; the head alone packs the labeled records into tight
cores, the threshold follows the cores, and many searches come back nearly empty.

The folder therefore computes ``normalize([head(v) / s, b * v])`` from the base model's normalised vector
``v``: the head's output (scaled by ``s``, the median norm of the head's outputs over the project, so ``b``
means the same on every project) beside ``b`` times the base vector. It is one affine map followed by a
normalisation, a plain ``Dense`` + ``Normalize`` in sentence-transformers terms. The base share keeps the
base model's even spread, which the threshold needs; the head part keeps the classes apart.

``b`` is chosen without labels: the smallest share in :data:`SHARES` whose searches, computed as
refinery's embedder computes the folder, come back with fewer than 10 results (a first screen that is not
full) no more often than on refinery's stock embedding of the base model plus
:data:`kern_finetune.vectors.spread.MARGIN_10` points, on a seeded sample of all records as queries
(:func:`fits`). A smaller share keeps more of the head's class separation; lists shorter than 100 are
reported beside it but do not decide (the first screen is what a labeler sees first; why:
``docs/decisions.md``).

Full mode trains the encoder itself, so there is no base vector to put beside its output inside one
sentence-transformers model. Its folder is pulled back towards the base model instead: the weights
``base + t * (trained - base)`` (the WiSE-FT interpolation, :func:`encoder_door`) with the largest ``t`` in
:data:`PULLS` that fits the same rule, judged on a seeded sample of at most :data:`MAX_REPLAY_RECORDS`
records, each candidate encoded by the pulled model (``t`` = 0 is the base model itself, refinery's stock
embedding, which always fits).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..refinery.search import sample_queries, threshold_search
from ..refinery.embedder import reduce_like_embedder, running_order
from .spread import MARGIN_10, MAX_QUERIES

__all__ = ["BaseShare", "EncoderPull", "SHARES", "PULLS", "MAX_REPLAY_RECORDS", "fits", "head_door", "encoder_door",
           "door_vectors"]

SHARES = tuple(round(0.25 * i, 2) for i in range(13))
"""Base shares the model door chooses among, smallest first: 0 (the head alone) to 3 in steps of 0.25."""


PULLS = (1.0, 0.75, 0.5, 0.25, 0.0)
"""Full mode: shares of the training's weight change the model door keeps, largest first (1 = as trained); each
costs one encoding of the replay's sample, so the grid is coarse."""
MAX_REPLAY_RECORDS = 2000
"""Full mode: records (a seeded sample) encoded per candidate pull to judge it."""


@dataclass
class BaseShare:
    """The affine map the model folder applies to the base model's normalised vector (then normalises)."""

    weight: np.ndarray
    """``(out, in)``: ``[head weight / scale; share * identity]`` (the identity rows only with a share above 0)."""
    bias: np.ndarray
    share: float
    scale: float
    chosen: bool
    """True: ``share`` was chosen by the replay; False: fixed by the caller."""
    table: list[dict[str, float]] = field(default_factory=list)
    """Each share searched, smallest first, up to the one chosen: its short lists through the embedder's PCA."""
    stock: dict[str, float] = field(default_factory=dict)
    """The same searches on refinery's stock embedding of the base model (the reference)."""
    n_queries: int = 0
    seconds: float = 0.0

    def transform(self, base: np.ndarray) -> np.ndarray:
        """What the model folder gives for records whose base vectors are ``base`` (float32, L2-normalised)."""
        return _normalise(np.asarray(base, dtype=np.float64) @ self.weight.T + self.bias)

    def to_dict(self) -> dict[str, Any]:
        return {"share": self.share, "scale": self.scale, "chosen": self.chosen, "dims": int(self.weight.shape[0]),
                "table": self.table, "stock": self.stock, "n_queries": self.n_queries, "seconds": self.seconds}


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _affine(head_weight: np.ndarray, head_bias: np.ndarray, scale: float, share: float) -> tuple[np.ndarray, np.ndarray]:
    weight, bias = head_weight / scale, head_bias / scale
    if share == 0.0:
        return weight, bias
    dim = head_weight.shape[1]
    return np.vstack([weight, share * np.eye(dim)]), np.concatenate([bias, np.zeros(dim)])


def fits(short: dict[str, float], stock: dict[str, float]) -> bool:
    """True when searches' share with fewer than 10 results (``lt_10``) is within :data:`MARGIN_10` points
    of refinery's stock embedding's on the same searches: the rule that chooses the base share."""
    return short["lt_10"] <= stock["lt_10"] + MARGIN_10


def _short_lists(vectors: np.ndarray, order: np.ndarray, queries: np.ndarray, seed: int) -> dict[str, float]:
    reduced = reduce_like_embedder(vectors, order, seed=seed)
    found = threshold_search(reduced, queries, np.full(len(vectors), -1, dtype=np.int64), seed=seed)
    return {"lt_10": found["lt_10"], "lt_100": found["lt_100"], "median_results": found["median_results"]}


def door_vectors(vectors: np.ndarray, ids: list[str], *, seed: int = 42) -> np.ndarray:
    """``vectors`` (what a model folder gives for every record) as refinery's embedder stores them."""
    return reduce_like_embedder(vectors, running_order(ids), seed=seed)


def head_door(head_weight: np.ndarray, head_bias: np.ndarray, base: np.ndarray, ids: list[str], *,
              share: float | None = None, seed: int = 42) -> BaseShare:
    """The model door's map for a head ``x -> x @ head_weight.T + head_bias`` over the base vectors ``base``
    (rows = records ``ids``, L2-normalised); ``share`` None chooses it by the replay (module docstring)."""
    t = time.perf_counter()
    w = np.asarray(head_weight, dtype=np.float64)
    b = np.asarray(head_bias, dtype=np.float64)
    x = np.asarray(base, dtype=np.float64)
    norms = np.linalg.norm(x @ w.T + b, axis=1)
    scale = float(np.median(norms)) if len(norms) else 1.0
    scale = scale if scale > 0 else 1.0
    table: list[dict[str, float]] = []
    stock: dict[str, float] = {}
    n_queries = 0
    chosen = share is None
    if share is None:
        order = running_order(ids)
        queries = sample_queries(len(x), MAX_QUERIES, seed)
        n_queries = len(queries)
        stock = _short_lists(x, order, queries, seed)
        share = SHARES[-1]
        for candidate in SHARES:
            weight, bias = _affine(w, b, scale, candidate)
            row = {"share": candidate, **_short_lists(_normalise(x @ weight.T + bias), order, queries, seed)}
            table.append(row)
            if fits(row, stock):
                share = candidate
                break
        else:
            share = min(table, key=lambda r: (r["lt_10"], r["lt_100"], r["share"]))["share"]
    weight, bias = _affine(w, b, scale, float(share))
    return BaseShare(weight=weight, bias=bias, share=float(share), scale=scale, chosen=chosen, table=table,
                     stock=stock, n_queries=n_queries, seconds=round(time.perf_counter() - t, 2))


@dataclass
class EncoderPull:
    """Full mode: how far the model door's encoder was pulled back towards the base model."""

    pull: float
    """``t`` in ``base + t * (trained - base)``: 1 keeps the trained weights."""
    table: list[dict[str, float]] = field(default_factory=list)
    stock: dict[str, float] = field(default_factory=dict)
    n_records: int = 0
    n_queries: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"pull": self.pull, "table": self.table, "stock": self.stock, "n_records": self.n_records,
                "n_queries": self.n_queries, "seconds": self.seconds}


def encoder_door(model: Any, base_model: Any, texts: list[str], ids: list[str], *, batch_size: int = 64,
                 seed: int = 42) -> EncoderPull:
    """Pull the fine-tuned ``model`` (a SentenceTransformer, changed in place) back towards ``base_model``
    (the same architecture, untrained) by the largest share of its weight change in :data:`PULLS` whose
    searches, computed as refinery's embedder computes the folder, fit :func:`fits`; see the module docstring."""
    import torch

    from ..subsample import fit_sample

    t0 = time.perf_counter()
    rows = np.sort(fit_sample(len(texts), cap=MAX_REPLAY_RECORDS, seed=seed))
    sub_texts, sub_ids = [texts[i] for i in rows], [ids[i] for i in rows]
    order = running_order(sub_ids)
    queries = sample_queries(len(rows), MAX_QUERIES, seed)

    def encode(m: Any) -> np.ndarray:
        return m.encode(sub_texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                        show_progress_bar=False).astype(np.float32)

    stock = _short_lists(encode(base_model), order, queries, seed)
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = base_model.state_dict()
    table: list[dict[str, float]] = []
    for candidate in PULLS:  # 0 is the base model itself, which always fits: the loop ends on a fit
        state = {k: torch.lerp(start[k].to(device=v.device, dtype=v.dtype), v, candidate) if v.is_floating_point() else v
                 for k, v in trained.items()}
        with torch.no_grad():
            model.load_state_dict(state)
        row = {"pull": candidate, **_short_lists(encode(model), order, queries, seed)}
        table.append(row)
        if fits(row, stock):
            break
    model.eval()
    return EncoderPull(pull=table[-1]["pull"], table=table, stock=stock, n_records=len(rows), n_queries=len(queries),
                       seconds=round(time.perf_counter() - t0, 2))
