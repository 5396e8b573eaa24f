"""A verdict without gold: does the new embedding show a labeler more of a record's class in refinery's search?

Judged as cross-validation judges a procedure, on labels the model did not see:

1. **Hold out** a seeded share of the selected labels per source and class (:func:`hold_out`).
2. **Fit the same procedure on the rest** (:func:`kern_finetune.training.fit.fit`); full mode is judged with a
   head fit (``procedure`` says so). The written model still trains on all labels.
3. **Search as refinery does** (:func:`kern_finetune.refinery.search.threshold_search`) with the judges as
   queries: the held-out labels plus the weak labels no fit ever sees, reported apart and decided pooled.
4. **Three embeddings**, each as refinery would search it: ``new`` (through the door used; the model door's
   through refinery's embedder), ``raw`` (refinery's stock embedding of the base model) and ``current`` (the
   project's own embedding when a snapshot carries its tensors).
5. **How sure**: a paired bootstrap over the queries of new minus the reference (``current``, else ``raw``);
   ``worse``, ``better`` or ``too few to tell`` by :func:`decide`.

Why each rule and value: ``docs/decisions.md``. Gold, when given, stays the benchmark's judge:
:func:`with_gold` adds its direction beside the verdict, apart.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..refinery.search import sample_queries, threshold_search
from ..labels.select import VAL_FRACTION, Selection, split_train_val

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..vectors.encode import Encoder
    from ..refinery.columns import Record, TaskColumns
    from ..refinery.snapshot import Snapshot

__all__ = [
    "HOLDOUT_SHARE", "MAX_QUERIES", "MIN_QUERIES", "MIN_JUDGED", "N_BOOTSTRAP", "FIGURES",
    "CurrentEmbedding", "Verdict", "current_embedding", "current_from_export", "hold_out", "unseen_weak_labels", "judge", "with_gold",
    "decide",
]

HOLDOUT_SHARE = 0.2
"""Share of the selected labels held out of the verdict's fit, per source and class."""
MAX_QUERIES = 1000
"""Searches per embedding at most: every manual judge, then a seeded sample of the weak ones."""
MIN_QUERIES = 20
"""Fewer searches that return a judged record than this: too few to tell."""
MIN_JUDGED = 50
"""Fewer judged records over all searches than this: too few to tell."""
N_BOOTSTRAP = 1000
"""Resamples of the queries for the intervals."""
FIGURES = ("first_screen_same", "same_class", "lt_10")
"""What the verdict reports per embedding: the first screen (records of the query's class among the 9 shown
after it), same class over the list (%), searches with fewer than 10 results (%)."""

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class CurrentEmbedding:
    """The project's embedding in use, as refinery stores it; ``vectors`` rows are the run's records in order."""

    name: str
    vectors: np.ndarray


def current_embedding(snap: Snapshot, ids: list[str], *, id_attribute: str = "running_id",
                      prefer: str | None = None) -> tuple[CurrentEmbedding | None, str]:
    """The snapshot's embedding a labeler searches today, aligned to ``ids``, and a note (empty when found).

    ``prefer`` (the name our embedding gets) wins when present, else an earlier kern-finetune embedding: a
    re-sync replaces it. Else the first embedding with tensors for every record. None (with why) when the
    snapshot carries no such embedding.
    """
    full = [name for name, info in snap.embeddings.items() if info["count"] >= len(ids) and info["dimension"] > 0]
    if not full:
        return None, "the export carries no embedding with tensors for every record"
    ours = [name for name in full if "-kern-finetune-" in name]
    name = prefer if prefer in full else (ours or full)[0]
    got_ids, vectors = snap.embedding_vectors(name, id_attribute=id_attribute)
    row = {i: k for k, i in enumerate(got_ids)}
    if any(i not in row for i in ids):
        return None, f"embedding {name!r} lacks tensors for some records"
    return CurrentEmbedding(name=name, vectors=vectors[[row[i] for i in ids]]), ""


def current_from_export(path: Any, records: list[Record], id_attribute: str = "running_id") -> CurrentEmbedding | None:
    """:func:`current_embedding` of an export file when it is a snapshot zip, else None."""
    from ..refinery.reader import is_zip
    from ..refinery.snapshot import read_snapshot

    if not is_zip(path):
        return None
    found, _why = current_embedding(read_snapshot(path), [str(r.get(id_attribute)) for r in records],
                                    id_attribute=id_attribute)
    return found


def hold_out(sel: Selection, share: float = HOLDOUT_SHARE, seed: int = 42, *,
             val_fraction: float = VAL_FRACTION) -> tuple[Selection, np.ndarray]:
    """``(the selection without the held-out labels, the held-out rows)``.

    Per (source, class) group of the selected labels, ``floor(share * n)`` seeded rows are held out, as long as
    the class keeps 2 labels to train on. The rest is split into train/validation with ``val_fraction`` as the
    selection was (:func:`kern_finetune.labels.select.split_train_val`); held-out rows lose their label (``y = -1``).
    """
    rng = np.random.default_rng(seed)
    labeled = np.sort(sel.labeled_idx)
    source = np.asarray(sel.source, dtype=object)
    keep_per_class = {int(c): int((sel.y[labeled] == c).sum()) for c in np.unique(sel.y[labeled])}
    out: list[np.ndarray] = []
    for src in ("manual", "weak"):
        rows = labeled[source[labeled] == src]
        for c in sorted(keep_per_class):
            group = rows[sel.y[rows] == c]
            n = min(int(share * len(group)), max(0, keep_per_class[c] - 2))
            if n > 0:
                out.append(rng.choice(group, size=n, replace=False))
                keep_per_class[c] -= n
    held = np.sort(np.concatenate(out)).astype(np.int64) if out else np.zeros(0, dtype=np.int64)
    y = sel.y.copy()
    y[held] = -1
    held_rows = set(held.tolist())
    kept_source = ["" if i in held_rows else s for i, s in enumerate(sel.source)]
    train, val = split_train_val(np.flatnonzero(y >= 0), val_fraction, seed)
    return dataclasses.replace(sel, y=y, source=kept_source, train_idx=np.sort(train), val_idx=np.sort(val)), held


def unseen_weak_labels(records: list[Record], task: TaskColumns, sel: Selection) -> np.ndarray:
    """Class index per record of a weak label no fit sees (not selected: confidence at or below the threshold,
    or weak labels off), -1 elsewhere (a selected label, an unknown class, empty text)."""
    index = {c: k for k, c in enumerate(sel.classes)}
    out = np.full(len(records), -1, dtype=np.int64)
    if not task.weak:
        return out
    for i, rec in enumerate(records):
        value = rec.get(task.weak)
        if sel.y[i] < 0 and isinstance(value, str) and value in index and sel.texts[i]:
            out[i] = index[value]
    return out


@dataclass
class Verdict:
    """The verdict of one run (``metrics.json``'s ``verdict``: :meth:`to_dict`)."""

    verdict: str
    """``better``, ``worse`` or ``too few to tell`` (against :attr:`reference`)."""
    conclusion: str
    """One line: the verdict with its figures and how sure it is."""
    reference: str
    """``current`` when the export carries the project's embedding, else ``raw``."""
    door: str
    n_heldout: int
    n_heldout_manual: int
    n_heldout_weak: int
    n_unseen_weak: int
    n_queries: int
    figures: dict[str, dict[str, float]]
    """Per embedding (``new``, ``raw``, ``current``): :data:`FIGURES`, judged by every judge."""
    by_judge: dict[str, dict[str, Any]]
    """``manual`` / ``weak``: the same figures with only that source's records as queries and judges."""
    interval: dict[str, list[float]]
    """95% bootstrap interval of new minus the reference, per figure."""
    delta: dict[str, float]
    judged_per_query: float
    informative_queries: int
    n_judged: int
    procedure: str
    seconds: float
    current_name: str | None = None
    notes: list[str] = field(default_factory=list)
    gold: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        out.update(self.figures)  # new, raw, current at the top level
        return out


def _judges(sel: Selection, held: np.ndarray, unseen: np.ndarray, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{pool: (classes per record, query rows)}`` for ``all``, ``manual`` and ``weak``."""
    classes = {"manual": np.full(len(sel.ids), -1, dtype=np.int64), "weak": unseen.copy()}
    for i in held:
        classes["manual" if sel.source[i] == "manual" else "weak"][i] = sel.y[i]
    rows = {name: np.flatnonzero(c >= 0) for name, c in classes.items()}
    room = max(0, MAX_QUERIES - len(rows["manual"]))
    if len(rows["weak"]) > room:
        rows["weak"] = rows["weak"][sample_queries(len(rows["weak"]), room, seed)]
    every = np.maximum(classes["manual"], classes["weak"])
    out = {name: (classes[name], rows[name]) for name in ("manual", "weak")}
    out["all"] = (every, np.sort(np.concatenate([rows["manual"], rows["weak"]])))
    return out


def _figures(found: dict[str, Any]) -> dict[str, float]:
    return {name: round(float(found[name]), 3) for name in FIGURES}


def _bootstrap(new: dict[str, np.ndarray], ref: dict[str, np.ndarray], seed: int) -> dict[str, list[float]]:
    """Paired bootstrap over queries of new minus reference, per figure: the 2.5th and 97.5th percentiles."""
    n = len(new["same"])
    if n == 0:
        return {name: [float("nan"), float("nan")] for name in FIGURES}
    w = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=N_BOOTSTRAP).astype(np.float64)

    def same(pq: dict[str, np.ndarray]) -> np.ndarray:
        return 100.0 * (w @ pq["same"]) / np.maximum(w @ pq["judged"], 1.0)

    def screen(pq: dict[str, np.ndarray]) -> np.ndarray:
        seen = ~np.isnan(pq["screen"])
        return (w[:, seen] @ pq["screen"][seen]) / np.maximum(w[:, seen].sum(1), 1.0)

    def short(pq: dict[str, np.ndarray]) -> np.ndarray:
        return 100.0 * (w @ (pq["results"] < 10)) / n

    out = {}
    for name, stat in (("same_class", same), ("first_screen_same", screen), ("lt_10", short)):
        d = stat(new) - stat(ref)
        out[name] = [round(float(np.percentile(d, 2.5)), 3), round(float(np.percentile(d, 97.5)), 3)]
    return out


def decide(delta: dict[str, float], interval: dict[str, list[float]], informative: int, judged: int) -> tuple[str, str]:
    """``(verdict, why)`` from the differences new minus reference and their intervals: ``worse`` when the
    interval of same class or first screen lies below 0 (or short lists grow past
    :data:`kern_finetune.vectors.spread.ALLOWED_10` points with an interval above 0), ``better`` when one lies
    above 0 and none is worse, else ``too few to tell``; ``too few to tell`` as well below :data:`MIN_QUERIES`
    informative searches or :data:`MIN_JUDGED` judged records."""
    from ..vectors.spread import ALLOWED_10

    if informative < MIN_QUERIES or judged < MIN_JUDGED:
        return "too few to tell", (f"only {judged} judged records over {informative} searches that return one "
                                   f"(at least {MIN_JUDGED} over {MIN_QUERIES} needed)")
    worse = [n for n in ("same_class", "first_screen_same") if interval[n][1] < 0]
    if interval["lt_10"][0] > 0 and delta["lt_10"] > ALLOWED_10:
        worse.append("lt_10")
    better = [n for n in ("same_class", "first_screen_same") if interval[n][0] > 0]
    if worse:
        return "worse", "worse on " + ", ".join(_LABELS[n] for n in worse)
    if better:
        return "better", "better on " + ", ".join(_LABELS[n] for n in better)
    return "too few to tell", "the 95% intervals include no difference"


_LABELS = {"same_class": "same class over the list", "first_screen_same": "the first screen",
           "lt_10": "searches with < 10 results"}


def judge(encoder: Encoder, records: list[Record], task: TaskColumns, sel: Selection, base: np.ndarray,
          config: RunConfig, *, door: str = "vectors", current: CurrentEmbedding | None = None,
          full_train_seconds: float | None = None, progress: ProgressFn | None = None) -> Verdict | None:
    """The verdict of the procedure on ``sel`` (the selection as prepared: before the label check); ``config``
    with its mode resolved. ``door``: ``vectors`` (written into a snapshot) or ``model`` (the model folder). None when
    no label can be held out (a class would keep fewer than 2)."""
    import torch

    from ..training.fit import fit
    from ..vectors.base_share import door_vectors

    say = progress or (lambda _m: None)
    t = time.perf_counter()
    rest, held = hold_out(sel, HOLDOUT_SHARE, config.seed)
    unseen = unseen_weak_labels(records, task, sel)
    if len(held) == 0 and not (unseen >= 0).any():
        return None
    procedure = f"{config.mode} fit on the labels not held out"
    if config.mode == "full":
        config = dataclasses.replace(config, mode="head")
        cost = f"; a second full fit would cost about {full_train_seconds:.0f} s" if full_train_seconds else ""
        procedure = f"head fit on the labels not held out (full mode judged with a head fit{cost})"
    torch.manual_seed(config.seed)
    fitted = fit(encoder, rest, base, config, progress=None)
    new = fitted.vectors if door != "model" else door_vectors(fitted.model_vectors, fitted.selection.ids,
                                                               seed=config.seed)
    spaces = {"new": new, "raw": door_vectors(base, sel.ids, seed=config.seed)}
    if current is not None:
        spaces["current"] = current.vectors
    verdict = _score(spaces, sel, held, unseen, config.seed)
    verdict.update(door=door, procedure=procedure, current_name=current.name if current else None,
                   seconds=round(time.perf_counter() - t, 2))
    result = Verdict(**verdict)
    say(f"      verdict: {result.conclusion}")
    return result


def _score(spaces: dict[str, np.ndarray], sel: Selection, held: np.ndarray, unseen: np.ndarray,
           seed: int) -> dict[str, Any]:
    """Search every embedding with every pool of judges; the figures, intervals and the decision."""
    pools = _judges(sel, held, unseen, seed)
    found = {(pool, name): threshold_search(x, rows, classes, seed=seed, per_query=True)
             for pool, (classes, rows) in pools.items() if len(rows) for name, x in spaces.items()}
    reference = "current" if "current" in spaces else "raw"
    new, ref = found[("all", "new")]["per_query"], found[("all", reference)]["per_query"]
    figures = {name: _figures(found[("all", name)]) for name in spaces}
    delta = {n: round(figures["new"][n] - figures[reference][n], 3) for n in FIGURES}
    interval = _bootstrap(new, ref, seed)
    informative = int(min(((new["judged"] > 0).sum()), (ref["judged"] > 0).sum()))
    judged = int(min(new["judged"].sum(), ref["judged"].sum()))
    outcome, why = decide(delta, interval, informative, judged)
    n_queries = len(pools["all"][1])
    by_judge = {pool: {"n_queries": int(len(pools[pool][1])),
                       "judged_per_query": _per_query(found[(pool, "new")]["per_query"]["judged"]),
                       **{name: _figures(found[(pool, name)]) for name in spaces}} if len(pools[pool][1])
                else {"n_queries": 0, "judged_per_query": 0.0} for pool in ("manual", "weak")}
    n_manual = int(sum(1 for i in held if sel.source[i] == "manual"))
    scored = dict(
        verdict=outcome, reference=reference, n_heldout=int(len(held)), n_heldout_manual=n_manual,
        n_heldout_weak=int(len(held)) - n_manual, n_unseen_weak=int((unseen >= 0).sum()), n_queries=n_queries,
        figures=figures, by_judge=by_judge, interval=interval, delta=delta,
        judged_per_query=_per_query(new["judged"]), informative_queries=informative, n_judged=judged,
    )
    scored["conclusion"] = conclusion(scored, why)
    return scored


def _per_query(judged: np.ndarray) -> float:
    return round(float(judged.mean()), 2) if len(judged) else 0.0


def conclusion(v: dict[str, Any], why: str) -> str:
    """One line: the verdict, the figures a labeler sees, the reference's, and how sure."""
    figs, ref = v["figures"], v["reference"]
    others = ", ".join(f"{name} {figs[name]['same_class']:.0f}%" for name in ("current", "raw") if name in figs)
    screens = ", ".join(f"{name} {figs[name]['first_screen_same']:.1f}" for name in ("current", "raw") if name in figs)
    lo, hi = v["interval"]["same_class"]
    against = "than" if v["verdict"] in ("better", "worse") else "against"
    return (f"{v['verdict']} {against} the {ref} embedding ({why}): same class over a session {figs['new']['same_class']:.0f}% "
            f"({others}), first screen {figs['new']['first_screen_same']:.1f} of 9 ({screens}); "
            f"same class {v['delta']['same_class']:+.1f} points [95% {lo:+.1f}, {hi:+.1f}] over {v['n_queries']} "
            f"searches by held-out and unseen labels, {v['judged_per_query']:.1f} judged records per search")


def with_gold(verdict: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """``verdict`` with ``gold``: what gold says of the same comparison on the test records (the evaluation's
    threshold search: the written vectors or the model door's, against refinery's stock embedding), apart."""
    search = metrics.get("threshold_search") or {}
    key = "model_door" if verdict.get("door") == "model" else "finetuned"
    if key not in search or "stock" not in search:
        return verdict
    new, raw = search[key], search["stock"]
    direction = "better" if new["same_class"] > raw["same_class"] else "worse"
    agrees = None if verdict["verdict"] not in ("better", "worse") else verdict["verdict"] == direction
    gold = {"judge": "gold (test records)", "direction": direction, "agrees": agrees,
            "new": {n: round(float(new[n]), 3) for n in FIGURES}, "raw": {n: round(float(raw[n]), 3) for n in FIGURES}}
    return {**verdict, "gold": gold}
