"""What the model door's folder computes: the head beside a share of the base vector, chosen by replaying refinery.

Through the model door refinery's embedder computes the embedding itself from our model folder, reduces it
to 64 dimensions by PCA fitted on the project's first 640 records, and searches it under the similarity
threshold (:mod:`kern_finetune.refinery.embedder`, :func:`kern_finetune.refinery.search.threshold_search`). The
neighbour smoothing and the search spread that keep the written vectors' result lists full depend on the
project's other records, so a model cannot carry them; the head alone packs the labeled records into tight
cores, the threshold follows the cores, and many searches come back nearly empty.

The folder therefore computes ``normalize([head(v) / s, b * v])`` from the base model's normalised vector
``v``: the head's output (scaled by ``s``, the median norm of the head's outputs over the project, so ``b``
means the same on every project) beside ``b`` times the base vector. It is one affine map followed by a
normalisation, a plain ``Dense`` + ``Normalize`` in sentence-transformers terms. The base share keeps the
base model's even spread, which the threshold needs; the head part keeps the classes apart.

``b`` is chosen in two steps, never on test gold. First the searches, without labels: a share *fits* when
its searches, computed as refinery's embedder computes the folder, come back with fewer than 10 results (a
first screen that is not full) no more often than on refinery's stock embedding of the base model plus
:data:`kern_finetune.vectors.spread.MARGIN_10` points, on a seeded sample of all records as queries (:func:`fits`).
Then the held-out labels (:func:`held_out`): the validation records, which the head never trained on, are
searched the same way through each fitting share and through the stock embedding, and each search's first
screen is judged by the validation labels alone (as the verdict judges by held-out labels only: a training
label sits where the head put it, so it would vouch for the head). The candidates are every fitting share
and the stock embedding itself (the head dropped: the folder gives the base vector, as refinery's own
embedding does; it always fits). :func:`choose` then takes:

- the stock embedding unless some share's held-out first screen beats the stock's by more than :data:`MIN_Z`
  standard errors of the paired difference (per query, on the queries both count). The fine-tuned map has to
  show that it helps the first screen; where it does not, the labeler keeps what refinery already gives;
- else the share that beats it by the most, the smallest of equal ones. A smaller share keeps more of the
  head's class separation over the whole result list, but the first screen is what a labeler sees first, so
  the smaller share wins ties only, never at the first screen's cost.

Lists shorter than 100 are reported beside it but do not decide (the first screen is what a labeler sees
first). Without validation labels the smallest fitting share is used, or the stock embedding when none
fits. Figures and why: ``docs/decisions.md``.

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
from typing import TYPE_CHECKING, Any

import numpy as np

from ..refinery.search import sample_queries, threshold_search
from ..refinery.embedder import reduce_like_embedder, running_order
from .spread import MARGIN_10, MAX_QUERIES

if TYPE_CHECKING:
    from ..labels.select import Selection

__all__ = ["BaseShare", "EncoderPull", "SHARES", "PULLS", "MAX_REPLAY_RECORDS", "MIN_Z", "MAX_HELD_OUT", "fits",
           "held_out", "paired", "choose", "head_door", "encoder_door", "door_vectors"]

SHARES = tuple(round(0.25 * i, 2) for i in range(13))
"""Base shares the model door chooses among, smallest first: 0 (the head alone) to 3 in steps of 0.25."""
MIN_Z = 1.0
"""Standard errors of the paired per-query difference by which one candidate's held-out first screen must exceed
another's for :func:`choose` to count it as better."""
MAX_HELD_OUT = 4000
"""Validation records (a seeded sample above it) searched as queries per candidate."""


PULLS = (1.0, 0.75, 0.5, 0.25, 0.0)
"""Full mode: shares of the training's weight change the model door keeps, largest first (1 = as trained); each
costs one encoding of the replay's sample, so the grid is coarse."""
MAX_REPLAY_RECORDS = 2000
"""Full mode: records (a seeded sample) encoded per candidate pull to judge it."""


@dataclass
class BaseShare:
    """The affine map the model folder applies to the base model's normalised vector (then normalises)."""

    weight: np.ndarray
    """``(out, in)``: ``[head weight / scale; share * identity]`` (the identity rows only with a share above 0);
    the identity alone when the folder gives the stock embedding (``share`` None)."""
    bias: np.ndarray
    share: float | None
    """The base share; None: the head is dropped and the folder gives refinery's stock embedding of the base
    model (the held-out labels did not show the head helping, :func:`choose`)."""
    scale: float
    chosen: bool
    """True: ``share`` was chosen by the replay; False: fixed by the caller."""
    table: list[dict[str, float]] = field(default_factory=list)
    """Every share searched, smallest first: its short lists through the embedder's PCA, whether it ``fits``,
    and (fitting shares, with validation labels) its held-out first screen and its paired difference to the
    stock's (``vs_stock``, ``vs_stock_se``: mean and standard error, :func:`paired`)."""
    stock: dict[str, float] = field(default_factory=dict)
    """The same searches on refinery's stock embedding of the base model (the reference)."""
    n_queries: int = 0
    n_held_out: int = 0
    """Validation records searched as queries (0: the choice read the short lists only)."""
    seconds: float = 0.0

    @property
    def gives_stock(self) -> bool:
        """True when the folder gives refinery's stock embedding (the head dropped)."""
        return self.share is None

    def transform(self, base: np.ndarray) -> np.ndarray:
        """What the model folder gives for records whose base vectors are ``base`` (float32, L2-normalised)."""
        return _normalise(np.asarray(base, dtype=np.float64) @ self.weight.T + self.bias)

    def to_dict(self) -> dict[str, Any]:
        return {"share": self.share, "gives_stock": self.gives_stock, "scale": self.scale, "chosen": self.chosen,
                "dims": int(self.weight.shape[0]), "table": self.table, "stock": self.stock,
                "n_queries": self.n_queries, "n_held_out": self.n_held_out, "seconds": self.seconds}


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _affine(head_weight: np.ndarray, head_bias: np.ndarray, scale: float,
            share: float | None) -> tuple[np.ndarray, np.ndarray]:
    dim = head_weight.shape[1]
    if share is None:  # the stock embedding: the base vector as it is (Normalize after Normalize changes nothing)
        return np.eye(dim), np.zeros(dim)
    weight, bias = head_weight / scale, head_bias / scale
    if share == 0.0:
        return weight, bias
    return np.vstack([weight, share * np.eye(dim)]), np.concatenate([bias, np.zeros(dim)])


def fits(short: dict[str, float], stock: dict[str, float]) -> bool:
    """True when searches' share with fewer than 10 results (``lt_10``) is within :data:`MARGIN_10` points
    of refinery's stock embedding's on the same searches: the first step of the base share's choice."""
    return short["lt_10"] <= stock["lt_10"] + MARGIN_10


def held_out(sel: Selection, *, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """``(queries, judges)`` for the held-out first screen: the validation records of ``sel`` (at most
    :data:`MAX_HELD_OUT`, seeded), and the class of every validation record (-1 for every other record).
    ``sel`` is the selection as made, before the label check, as the smoothing's choice reads it."""
    val = np.sort(np.asarray(sel.val_idx, dtype=np.int64))
    judges = np.full(len(sel.ids), -1, dtype=np.int64)
    judges[val] = sel.y[val]
    queries = val if len(val) <= MAX_HELD_OUT else val[sample_queries(len(val), MAX_HELD_OUT, seed)]
    return queries, judges


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(mean, standard error)`` of ``a - b`` over the queries both count: per-query first screens of two
    candidates on the same queries (nan: a query that candidate does not count). ``(nan, nan)`` without
    a query both count; the error is 0 with a single one."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = (a - b)[~np.isnan(a) & ~np.isnan(b)]
    if not len(d):
        return float("nan"), float("nan")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def choose(stock: np.ndarray, shares: list[tuple[float, np.ndarray]]) -> float | None:
    """The base share by the held-out labels (module docstring): ``stock`` and each of ``shares`` (the fitting
    shares, ``(share, per-query first screen)``, the same held-out queries in the same order) give each
    query's same-class count on the first screen (nan: not counted). Returns, among the shares whose paired
    difference to the stock (:func:`paired`) is above :data:`MIN_Z` standard errors, the one with the largest
    difference (the smallest of equal ones); None (the stock embedding) when no share beats it."""
    best: tuple[float, float] | None = None  # (difference, share)
    for share, screen in sorted(shares, key=lambda s: s[0]):
        mean, se = paired(screen, stock)
        if np.isfinite(mean) and mean > MIN_Z * se and (best is None or mean > best[0]):
            best = (mean, share)
    return None if best is None else best[1]


def _short_lists(vectors: np.ndarray, order: np.ndarray, queries: np.ndarray, seed: int) -> dict[str, float]:
    return _replay(vectors, order, queries, seed)[0]


def _replay(vectors: np.ndarray, order: np.ndarray, queries: np.ndarray,
            seed: int) -> tuple[dict[str, float], np.ndarray]:
    """One candidate through refinery's embedder: its short lists on ``queries`` (no labels), and its vectors
    as the embedder stores them."""
    reduced = reduce_like_embedder(vectors, order, seed=seed)
    found = threshold_search(reduced, queries, np.full(len(vectors), -1, dtype=np.int64), seed=seed)
    return {"lt_10": found["lt_10"], "lt_100": found["lt_100"], "median_results": found["median_results"]}, reduced


def _held_out_screen(reduced: np.ndarray, held: np.ndarray, judge: np.ndarray, seed: int) -> np.ndarray:
    """Each held-out query's same-class count on the first screen of ``reduced`` (nan: not counted)."""
    return threshold_search(reduced, held, judge, seed=seed, per_query=True)["per_query"]["screen"]


def _mean(screen: np.ndarray) -> float:
    return float(np.nanmean(screen)) if (~np.isnan(screen)).any() else float("nan")


def door_vectors(vectors: np.ndarray, ids: list[str], *, seed: int = 42) -> np.ndarray:
    """``vectors`` (what a model folder gives for every record) as refinery's embedder stores them."""
    return reduce_like_embedder(vectors, running_order(ids), seed=seed)


def head_door(head_weight: np.ndarray, head_bias: np.ndarray, base: np.ndarray, ids: list[str], *,
              sel: Selection | None = None, share: float | None = None, seed: int = 42) -> BaseShare:
    """The model door's map for a head ``x -> x @ head_weight.T + head_bias`` over the base vectors ``base``
    (rows = records ``ids``, L2-normalised); ``share`` None chooses it by the replay (module docstring), on
    ``sel``'s validation labels when given (the selection as made, before the label check, rows = ``ids``)."""
    t = time.perf_counter()
    w = np.asarray(head_weight, dtype=np.float64)
    b = np.asarray(head_bias, dtype=np.float64)
    x = np.asarray(base, dtype=np.float64)
    norms = np.linalg.norm(x @ w.T + b, axis=1)
    scale = float(np.median(norms)) if len(norms) else 1.0
    scale = scale if scale > 0 else 1.0
    table: list[dict[str, float]] = []
    stock: dict[str, float] = {}
    n_queries = n_held = 0
    chosen = share is None
    choice: float | None = share
    if share is None:
        order = running_order(ids)
        queries = sample_queries(len(x), MAX_QUERIES, seed)
        n_queries = len(queries)
        held, judge = (np.zeros(0, dtype=np.int64), np.full(len(x), -1)) if sel is None else held_out(sel, seed=seed)
        n_held = len(held)
        stock, reduced = _replay(x, order, queries, seed)
        stock_screen = _held_out_screen(reduced, held, judge, seed) if n_held else None
        if stock_screen is not None:
            stock["held_out_first_screen"] = _mean(stock_screen)
        fitting: list[tuple[float, np.ndarray]] = []
        for candidate in SHARES:
            weight, bias = _affine(w, b, scale, candidate)
            short, reduced = _replay(_normalise(x @ weight.T + bias), order, queries, seed)
            row: dict[str, Any] = {"share": candidate, **short, "fits": fits(short, stock)}
            table.append(row)
            if not row["fits"]:
                continue
            if stock_screen is None:  # no held-out labels: the smallest fitting share
                fitting.append((candidate, np.zeros(0)))
                break
            screen = _held_out_screen(reduced, held, judge, seed)
            row["held_out_first_screen"] = _mean(screen)
            row["vs_stock"], row["vs_stock_se"] = paired(screen, stock_screen)
            fitting.append((candidate, screen))
        if stock_screen is None:
            choice = fitting[0][0] if fitting else None
        else:
            choice = choose(stock_screen, fitting)
    weight, bias = _affine(w, b, scale, choice)
    return BaseShare(weight=weight, bias=bias, share=None if choice is None else float(choice), scale=scale,
                     chosen=chosen, table=table, stock=stock, n_queries=n_queries, n_held_out=n_held,
                     seconds=round(time.perf_counter() - t, 2))


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
