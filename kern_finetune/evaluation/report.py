"""A self-contained ``report.html``: one file, no network, no external scripts or styles.

Answer first, examples after: the verdict (:mod:`kern_finetune.evaluation.report_verdict`), search as refinery
runs it (:data:`SEARCH_NAMES`), top_k (per class, violin, curve), 2D views with the same projection for raw and
fine-tuned side by side (inline SVG; hovering a point highlights the same record in the other panel), examples
(:func:`first_screen`), the label issues, the linear probe, then folded details.

Every user string is HTML-escaped, and matplotlib never parses mathtext (``text.parse_math`` off), so a label
such as ``$\\notacmd$`` renders as typed. The 2D views draw at most :data:`MAX_POINTS` seeded test records.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from ..refinery.search import SEARCH_LIMIT, similarity_threshold  # noqa: E402
from .evaluate import gold_codes, neighbour_purity, projection_2d, purity_queries  # noqa: E402
from .report_verdict import esc, verdict_html  # noqa: E402

if TYPE_CHECKING:
    from ..labels.select import Selection

__all__ = ["ReportData", "write_report", "first_screen", "per_class_top_k", "N_QUERIES", "N_NEIGHBOURS", "MAX_POINTS",
           "SEARCH_NAMES", "MAX_LABEL_ISSUES"]

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
N_QUERIES = 5
"""Seeded test queries shown on the first screen."""
N_NEIGHBOURS = 10
"""Neighbours per query: refinery's first screen."""
MAX_POINTS = 1000
"""Test records drawn per 2D panel at most (a seeded subset; the same records in every panel)."""
PER_CLASS_KS = (10, 100)
_TEXT_CHARS = 300
_SVG_SIZE = 420


@dataclass(frozen=True)
class ReportData:
    """What the report needs besides the metrics; rows are records, aligned with ``ids``.

    ``labels``: the selected training label's class or None (pseudo-labels are no labels); ``gold_class``: the
    gold mapped to a task class where known (:func:`kern_finetune.labels.select.gold_to_class`).
    """

    ids: list[str]
    texts: list[str]
    labels: list[str | None]
    gold: list[str | None]
    gold_class: list[str | None]
    train_idx: np.ndarray
    test_idx: np.ndarray
    raw: np.ndarray
    tuned: np.ndarray
    seed: int = 42

    @classmethod
    def from_selection(cls, sel: Selection, raw: np.ndarray, tuned: np.ndarray, *, seed: int = 42) -> ReportData:
        from ..labels.select import gold_to_class

        mapping = gold_to_class(sel)
        return cls(
            ids=list(sel.ids),
            texts=list(sel.texts),
            labels=[sel.classes[int(c)] if c >= 0 else None for c in sel.y],
            gold=list(sel.gold),
            gold_class=[sel.classes[mapping[g]] if mapping and g is not None and g in mapping else None for g in sel.gold],
            train_idx=np.asarray(sel.train_idx),
            test_idx=np.asarray(sel.test_idx),
            raw=raw,
            tuned=tuned,
            seed=seed,
        )

    def class_of(self, i: int) -> str | None:
        """The class a record counts as: its training label, else its gold's class, else None."""
        return self.labels[i] if self.labels[i] is not None else self.gold_class[i]


# ---------------------------------------------------------------- computations


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def first_screen(data: ReportData, *, n_queries: int = N_QUERIES, k: int = N_NEIGHBOURS) -> list[dict[str, Any]]:
    """Seeded queries and their ``k`` nearest records in each embedding (all records, the query excluded).

    Queries are test records; without any, unlabeled records with text. Each neighbour carries ``index``,
    ``similarity``, ``rank_other`` (its rank for this query in the other embedding, 1 = nearest), ``match``
    (None where a class is unknown) and ``returned`` (whether refinery's search, cut at the embedding's
    :func:`~kern_finetune.refinery.search.similarity_threshold`, would return it). Each query carries
    ``results`` (records that search returns, the query included) and ``threshold`` per embedding.
    """
    pool = [int(i) for i in data.test_idx if data.texts[i]]
    if not pool:
        pool = [i for i, t in enumerate(data.texts) if t and data.labels[i] is None]
    if not pool:
        return []
    rng = np.random.default_rng(data.seed)
    queries = sorted(rng.choice(pool, size=min(n_queries, len(pool)), replace=False).tolist())
    out = []
    spaces = {"raw": _normalise(data.raw), "finetuned": _normalise(data.tuned)}
    thresholds = {name: similarity_threshold(x, seed=data.seed) for name, x in spaces.items()}
    other = {"raw": "finetuned", "finetuned": "raw"}
    for q in queries:
        q_class = data.gold_class[q]
        row: dict[str, Any] = {"index": q, "class": q_class, "neighbours": {}, "results": {}, "threshold": thresholds}
        all_sims = {name: x @ x[q] for name, x in spaces.items()}
        for sims in all_sims.values():
            sims[q] = -np.inf
        for name, x in spaces.items():
            sims = all_sims[name]
            there = all_sims[other[name]]
            dist = np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, None))  # Euclidean, as refinery's search measures
            returned = min(SEARCH_LIMIT, 1 + int((dist <= thresholds[name]).sum()))  # the query is its own first result
            row["results"][name] = returned
            kk = min(k, len(sims) - 1)
            top = np.argpartition(-sims, kk - 1)[:kk] if kk > 0 else np.zeros(0, dtype=int)
            top = top[np.argsort(-sims[top], kind="stable")]
            row["neighbours"][name] = [
                {
                    "index": int(j),
                    "similarity": float(sims[j]),
                    "rank_other": 1 + int((there > there[j]).sum()),
                    "match": None if q_class is None or data.class_of(int(j)) is None else data.class_of(int(j)) == q_class,
                    "returned": rank < returned - 1,
                }
                for rank, j in enumerate(top)
            ]
        out.append(row)
    return out


def per_class_top_k(
    data: ReportData, ks: tuple[int, ...] = PER_CLASS_KS, *, given: dict[str, dict[int, np.ndarray]] | None = None
) -> list[dict[str, Any]]:
    """top_k per gold class, in percent, raw and fine-tuned: test records among test records.

    The queries are the evaluation's (:func:`kern_finetune.evaluation.evaluate.purity_queries`); ``n`` counts a
    class's test records, ``n_queries`` its queries; a class without a sampled query gets None. ``given``
    (the evaluation's ``per_query_k``: ``{"raw"|"finetuned": {k: purity per query}}``) is reused when it fits.
    """
    if len(data.test_idx) < 2:
        return []
    values, classes = gold_codes(data.gold, data.test_idx)
    queries = purity_queries(len(classes), data.seed)
    q_classes = classes if queries is None else classes[queries]
    n_q = len(classes) if queries is None else len(queries)
    per = {
        name: given[name]
        if given and name in given and all(k in given[name] and len(given[name][k]) == n_q for k in ks)
        else neighbour_purity(x[data.test_idx], classes, ks, queries=queries)
        for name, x in (("raw", data.raw), ("finetuned", data.tuned))
    }
    rows = []
    for c, g in enumerate(values):
        m = q_classes == c
        first = int(data.test_idx[np.flatnonzero(classes == c)[0]])
        row: dict[str, Any] = {"gold": g, "class": data.gold_class[first], "n": int((classes == c).sum()),
                               "n_queries": int(m.sum())}
        for name in per:
            for k in ks:
                row[f"{name}_{k}"] = float(100 * per[name][k][m].mean()) if m.any() else None
        rows.append(row)
    return rows


def _projections(
    data: ReportData, method: str, given: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """The same projection, fitted on the training records, for raw and fine-tuned; a seeded subset of test rows.

    ``given``: the evaluation's projections of all test records (``raw_pca``, ``finetuned_simplex``), reused.
    """
    test = np.asarray(data.test_idx)
    fit = np.asarray(data.train_idx)
    if len(test) < 2 or len(fit) < 3:
        return None
    rng = np.random.default_rng(data.seed)
    shown = np.sort(rng.choice(len(test), size=min(MAX_POINTS, len(test)), replace=False))
    given = given or {}
    out: dict[str, np.ndarray] = {}
    for name in ("raw", "finetuned"):
        pts = given.get(f"{name}_{method}")
        if pts is not None and len(pts) == len(test):
            out[name] = np.asarray(pts)[shown]
    if len(out) == 2:
        return shown, out
    y_fit = None
    if method != "pca":
        names = sorted({data.labels[i] for i in fit if data.labels[i] is not None})
        if len(names) < 2:
            return None
        code = {n: c for c, n in enumerate(names)}
        y_fit = np.array([code[data.labels[i]] for i in fit])  # type: ignore[index]
    rows = test[shown]
    for name, x in (("raw", data.raw), ("finetuned", data.tuned)):
        if name not in out:
            out[name] = projection_2d(x[fit], y_fit, x[rows], method=method, seed=data.seed)
    return shown, {name: out[name] for name in ("raw", "finetuned")}


# ---------------------------------------------------------------- rendering


def _clip(text: str, n: int = _TEXT_CHARS) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


_NAMES = {"raw": "raw", "finetuned": "fine-tuned"}
SEARCH_NAMES = {
    "stock": "refinery's stock embedding",
    "raw": "raw base model",
    "model_door": "model door",
    "finetuned": "snapshot door (as written)",
}
"""The embeddings of ``metrics["threshold_search"]`` as a labeler knows them, in the table's order."""
_SEARCH_NOTES = {
    "stock": "refinery's own embedding of the same base model (its embedder, PCA to 64 dimensions): what a project "
             "has without kern-finetune",
    "raw": "the base model's vectors as they are",
    "model_door": "refinery's embedder computing our model folder (sync --door model), PCA included",
    "finetuned": "the vectors a snapshot (run --write-snapshot) carries",
}


def _name(key: object) -> str:
    return _NAMES.get(str(key), str(key))


def _violin(per_query: dict[str, np.ndarray], k: int, chance: float) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(per_query)
    ax.violinplot([100 * np.asarray(per_query[n]) for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), [_name(n) for n in names])
    ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance {chance:.1f}%")
    ax.set_ylabel(f"same-class share of the {k} nearest neighbours (%)")
    ax.set_title(f"top_{k} per test query")
    ax.legend(loc="lower right")
    return _png(fig)


def _curve_figure(top_k: dict[str, dict[str, float]], chance: float) -> plt.Figure:
    """The top_k curve, with plain tick labels on the log axis: matplotlib's own are mathtext."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, vals) in enumerate(top_k.items()):
        ks = [int(k) for k in vals]
        ax.plot(ks, list(vals.values()), marker="o", label=_name(name), color=_COLORS[i % len(_COLORS)])
    ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xscale("log")
    ticks = sorted({int(k) for vals in top_k.values() for k in vals})
    shown: list[int] = []  # a label where it has room on the log axis (75 beside 100 would overprint), powers of 10 first
    for k in sorted(ticks, key=lambda k: (not float(np.log10(k)).is_integer(), k)):
        if all(abs(np.log10(k) - np.log10(j)) >= 0.2 for j in shown):
            shown.append(k)
    ax.set_xticks(ticks, [f"{k:,}" if k in shown else "" for k in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("k (nearest neighbours)")
    ax.set_ylabel("same-class share (%)")
    ax.set_title("top_k, mean over all test queries")
    ax.legend()
    return fig


def _class_name(data: ReportData, i: int) -> str:
    """A gold value as a labeler knows it: the task class it maps to (``World``), else the value itself."""
    cls, gold = data.gold_class[i], data.gold[i]
    return str(cls) if cls is not None else f"gold {gold}"


def _label_cell(data: ReportData, i: int) -> str:
    if data.labels[i] is not None:
        return f"label <b>{esc(data.labels[i])}</b>"
    if data.gold[i] is not None:
        if data.gold_class[i] is not None and data.gold_class[i] != data.gold[i]:
            return f"<b>{esc(data.gold_class[i])}</b> (gold {esc(data.gold[i])})"
        return f"gold <b>{esc(data.gold[i])}</b>"
    return "<i>no label</i>"


def _mark(match: bool | None) -> str:
    return {True: '<td class="ok">\u2713</td>', False: '<td class="no">\u2717</td>'}.get(match, "<td>?</td>")  # type: ignore[arg-type]


def _first_screen_html(data: ReportData, screen: list[dict[str, Any]]) -> str:
    if not screen:
        return "<p>No test or unlabeled records to query.</p>"
    parts = []
    for n, q in enumerate(screen, 1):
        i = q["index"]
        counts = {name: sum(1 for nb in nbs if nb["match"]) for name, nbs in q["neighbours"].items()}
        known = all(nb["match"] is not None for nbs in q["neighbours"].values() for nb in nbs)
        score = (f" Same class: raw <b>{counts['raw']}</b> / {len(q['neighbours']['raw'])}, fine-tuned "
                 f"<b>{counts['finetuned']}</b> / {len(q['neighbours']['finetuned'])}." if known else "")
        results = q["results"]
        score += (f" Refinery's search returns <b>{results['raw']}</b> records for it in raw, "
                  f"<b>{results['finetuned']}</b> in fine-tuned (the query included; at most {SEARCH_LIMIT})"
                  + ("; greyed rows lie beyond that embedding's threshold, refinery would not show them." if
                     any(not nb["returned"] for nbs in q["neighbours"].values() for nb in nbs) else "."))
        rows = []
        raw, tuned = q["neighbours"]["raw"], q["neighbours"]["finetuned"]
        in_raw = {nb["index"] for nb in raw}
        for r in range(len(raw)):  # both lists hold the same number of neighbours
            cells = ""
            for nb, there in ((raw[r], "fine-tuned"), (tuned[r], "raw")):
                j, cut = nb["index"], "" if nb["returned"] else " cut"
                new = ' <span class="new">new</span>' if there == "raw" and j not in in_raw else ""
                cells += (f'<td class="txt{cut}">{esc(_clip(data.texts[j]))}</td><td class="lab{cut}">'
                          f'{_label_cell(data, j)}<br><span class="sim">#{nb["rank_other"]:,} in {there}</span>{new}'
                          f'</td>{_mark(nb["match"])}')
            rows.append(f"<tr><td>{r + 1}</td>{cells}</tr>")
        parts.append(
            f'<div class="query"><h3>Example {n}: record {esc(data.ids[i])}</h3>'
            f'<p class="qtext">{esc(_clip(data.texts[i], 600))}</p><p>{_label_cell(data, i)}.{score}</p>'
            '<table class="nn"><tr><th>#</th><th colspan="3">raw</th><th colspan="3">fine-tuned</th></tr>'
            '<tr><th></th><th>text</th><th>label / gold</th><th>same class</th><th>text</th><th>label / gold</th>'
            f'<th>same class</th></tr>{"".join(rows)}</table></div>'
        )
    return "".join(parts)


_SEARCH_ROWS = (
    ("lt_10", "searches with fewer than 10 results", "{:.1f}%"),
    ("lt_100", "searches with fewer than 100 results", "{:.1f}%"),
    ("median_results", "median results per search (at most 100)", "{:.0f}"),
    ("same_class", "same class among the returned records", "{:.1f}%"),
    ("first_screen_same", "same class among the 9 records shown after the query", "{:.2f}"),
    ("threshold", "the embedding's threshold (Euclidean distance)", "{:.3f}"),
)


def _search_html(metrics: dict[str, Any]) -> str:
    """The evaluation's ``threshold_search`` figures as a table, one column per embedding searched (refinery's
    stock embedding, raw, the model door, the written vectors: :data:`SEARCH_NAMES`), with the spread's strength
    and the model door's base share (or that it gives the stock embedding)."""
    search = metrics.get("threshold_search") or {}
    if not search:
        return ""
    names = [nm for nm in SEARCH_NAMES if nm in search] + [nm for nm in search if nm not in SEARCH_NAMES]
    n = search[names[0]].get("n_queries")

    def cell(value: Any, fmt: str) -> str:
        return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else fmt.format(value)

    body = "".join(f"<tr><td>{esc(label)}</td>" + "".join(f"<td>{cell(search[nm].get(key), fmt)}</td>" for nm in names)
                   + "</tr>" for key, label, fmt in _SEARCH_ROWS)
    spread = metrics.get("spread")
    note = ""
    if isinstance(spread, dict) and spread.get("strength"):
        how = "chosen without labels" if spread.get("chosen") else "as set by --spread"
        note = (f"<p>Search spread: strength {spread['strength']:g} ({how}); the fine-tuned vectors were lifted "
                "so that sparse regions get full result lists (kern_finetune/vectors/spread.py).</p>")
    door = metrics.get("model_door")
    if isinstance(door, dict) and "share" in door:
        labels = bool(door.get("n_held_out"))  # without validation labels the searches alone chose
        how = (f"chosen on the searches{' and the held-out labels' if labels else ''}" if door.get("chosen")
               else "as set")
        note += ("<p>Model door: the folder gives refinery's stock embedding: no base share that keeps the lists "
                 + ("full beat its first screen on the held-out labels" if labels else "full was found")
                 + ", so the head was dropped (kern_finetune/vectors/base_share.py).</p>" if door["share"] is None else
                 f"<p>Model door: the head beside a base share of {door['share']:g} "
                 f"({how}; kern_finetune/vectors/base_share.py).</p>")
    legend = "".join(f"<li><b>{esc(SEARCH_NAMES[nm])}</b>: {esc(_SEARCH_NOTES[nm])}</li>"
                     for nm in names if nm in _SEARCH_NOTES)
    return (f"<h2>Search as refinery runs it ({esc(n)} seeded test queries among all records)</h2>"
            "<p>Refinery returns at most 100 records within one distance per embedding, the 5th percentile of "
            "pairwise distances among a sample of its records; a labeling session built from a search has as many "
            "records as it returns.</p>"
            f"<table><tr><th></th>{''.join(f'<th>{esc(SEARCH_NAMES.get(nm, nm))}</th>' for nm in names)}</tr>"
            f"{body}</table>" + (f'<ul class="legend">{legend}</ul>' if legend else "") + note)


def _per_class_html(rows: list[dict[str, Any]]) -> str:
    ks = PER_CLASS_KS
    head = "".join(f"<th>top_{k} raw</th><th>top_{k} fine-tuned</th>" for k in ks)
    body = []
    for r in rows:
        name = (f"{esc(r['class'])} (gold {esc(r['gold'])})" if r["class"] is not None and r["class"] != r["gold"]
                else esc(r["gold"]))
        if r[f"raw_{ks[0]}"] is None:  # no query of this class in a capped sample
            cells = "<td>-</td>" * (2 * len(ks))
        else:
            cells = "".join(
                f"<td>{r[f'raw_{k}']:.2f}</td><td class=\"{'up' if r[f'finetuned_{k}'] >= r[f'raw_{k}'] else 'down'}\">"
                f"{r[f'finetuned_{k}']:.2f}</td>" for k in ks
            )
        body.append(f"<tr><td>{name}</td><td>{r['n']:,}</td>{cells}</tr>")
    return f"<table><tr><th>class</th><th>test records</th>{head}</tr>{''.join(body)}</table>"


def _svg_panel(points: np.ndarray, classes: np.ndarray, shown: np.ndarray, title: str, view: str) -> str:
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    pad = 8
    xy = pad + (points - lo) / span * (_SVG_SIZE - 2 * pad)
    circles = "".join(
        f'<circle cx="{x:.1f}" cy="{_SVG_SIZE - y:.1f}" r="2.6" fill="{_COLORS[int(c) % len(_COLORS)]}" data-i="{int(s)}"/>'
        for (x, y), c, s in zip(xy, classes, shown)
    )
    return (f'<figure class="panel"><figcaption>{esc(title)}</figcaption>'
            f'<svg class="view" data-view="{esc(view)}" width="{_SVG_SIZE}" height="{_SVG_SIZE}" '
            f'viewBox="0 0 {_SVG_SIZE} {_SVG_SIZE}">'
            f'<rect width="100%" height="100%" fill="#fff" stroke="#ccc"/>{circles}</svg></figure>')


_METHOD_TEXT = {
    "pca": "PCA (first two principal components, fitted on the training records of each embedding; labels unused)",
    "simplex": "simplex (a logistic regression fitted on the training labels of each embedding; each record sits at "
               "the probability-weighted mean of the class corners)",
}


def _views_html(
    data: ReportData, metrics: dict[str, Any], given: dict[str, np.ndarray] | None = None
) -> tuple[str, dict[str, Any]]:
    """Side-by-side SVG panels per projection method, and the hover data (texts of the shown records)."""
    values, codes = gold_codes(data.gold, data.test_idx)
    sep = metrics.get("separation_2d", {})
    blocks, shown_rows = [], None
    for method in ("pca", "simplex"):
        proj = _projections(data, method, given)
        if proj is None:
            continue
        shown, pts = proj
        shown_rows = data.test_idx[shown]
        panels = []
        for name, p in pts.items():
            s = sep.get(f"{name}_{method}", {})
            extra = (f": 15-NN accuracy {s['knn_accuracy']:.1f}%, silhouette {s['silhouette']:.2f} (all test records)"
                     if "knn_accuracy" in s and "silhouette" in s else "")
            panels.append(_svg_panel(p, codes[shown], shown, f"{_name(name)}, {method}{extra}",
                                     f"{name}_{method}"))
        blocks.append(f"<h3>{esc(_METHOD_TEXT[method])}</h3><div class=\"pair\">{''.join(panels)}</div>")
    if shown_rows is None:
        return "<p>No 2D views: too few training records to fit a projection.</p>", {}
    legend = "".join(
        f'<span class="key"><span class="dot" style="background:{_COLORS[c % len(_COLORS)]}"></span>'
        f'{esc(_class_name(data, int(data.test_idx[np.flatnonzero(codes == c)[0]])))}</span>'
        for c, _g in enumerate(values)
    )
    hover = {  # keyed by the position in test_idx that each circle's data-i holds; c: the class as a labeler names it
        str(int(s)): {"t": _clip(data.texts[int(r)], 240), "c": _class_name(data, int(r)), "id": str(data.ids[int(r)])}
        for s, r in zip(shown, shown_rows)
    }
    note = (f"<p>{len(shown_rows)} of {len(data.test_idx)} test records (seeded), coloured by gold class. "
            f"Hover a point to read its text; the same record lights up in every panel.</p>")
    return f"{note}<p>{legend}</p>{''.join(blocks)}", hover


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no ``<`` survives (so no ``</script>`` or ``<!--``)."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


_SCRIPT = """
(function(){var d=JSON.parse(document.getElementById('hover-data').textContent);
var tip=document.getElementById('tip');
function hl(i,on){document.querySelectorAll('circle[data-i="'+i+'"]').forEach(function(c){
c.classList.toggle('hl',on);if(on){c.parentNode.appendChild(c);}});}
document.querySelectorAll('svg.view').forEach(function(svg){
svg.addEventListener('mouseover',function(e){var i=e.target.getAttribute&&e.target.getAttribute('data-i');
if(i===null||!d[i])return;hl(i,true);tip.textContent='';var b=document.createElement('b');
b.textContent=d[i].c+' \\u00b7 record '+d[i].id;tip.appendChild(b);
tip.appendChild(document.createElement('br'));tip.appendChild(document.createTextNode(d[i].t));
tip.style.display='block';tip.style.left=(e.pageX+12)+'px';tip.style.top=(e.pageY+12)+'px';});
svg.addEventListener('mouseout',function(e){var i=e.target.getAttribute&&e.target.getAttribute('data-i');
if(i!==null){hl(i,false);}tip.style.display='none';});});})();
"""

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}
td:first-child{text-align:left}img{max-width:100%}pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}
table.nn td.txt{text-align:left;font-size:.85em;max-width:330px}table.nn td.lab{text-align:left;font-size:.85em}
.sim{color:#888;font-size:.8em}td.ok{color:#2a7d2a;font-weight:bold;text-align:center}td.no{color:#c0392b;text-align:center}
.qtext{background:#f6f6f6;padding:.6em}td.cut{color:#aaa;background:#f4f4f4}.new{background:#e8f0fe;color:#1a56c4;font-size:.75em;padding:0 3px}.up{color:#2a7d2a}.down{color:#c0392b}
.pair{display:flex;gap:1em;flex-wrap:wrap}.panel{margin:0}figcaption{font-size:.9em;max-width:420px}
circle{opacity:.65}circle.hl{opacity:1;stroke:#000;stroke-width:2;r:6}
.key{margin-right:1.2em;white-space:nowrap}.dot{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px}
#tip{position:absolute;display:none;max-width:360px;background:#fffbe6;border:1px solid #aaa;padding:6px;font-size:.85em;
pointer-events:none;box-shadow:2px 2px 6px rgba(0,0,0,.2)}
.lead{font-size:1.05em}ul.legend{font-size:.9em;color:#444}details{margin:1.5em 0}summary{cursor:pointer;font-weight:bold}
table.issues td{text-align:left;font-size:.85em}table.issues td.txt{max-width:520px}"""


MAX_LABEL_ISSUES = 50
"""Flagged labels listed in the report at most (the least likely first); ``label_issues.csv`` has them all."""


def write_report(
    path: Path,
    metrics: dict[str, Any],
    *,
    plots: dict[str, Any] | None = None,
    data: ReportData | None = None,
    label_issues: dict[str, Any] | None = None,
    k_violin: int = 1000,
) -> None:
    """Write the report to ``path`` atomically, for the run's ``metrics``.

    ``plots``: :meth:`kern_finetune.evaluation.evaluate.Plots.to_dict` (``per_query`` at ``k_violin`` for the violin
    plot; ``per_query_k`` and ``points_2d``, reused instead of computed again). ``data`` gives the examples, the
    per-class table and the 2D views; without it (or without gold) the report has the numbers only.
    ``label_issues``: :func:`kern_finetune.labels.label_check.find_label_issues`'s result.
    """
    with plt.rc_context({"text.parse_math": False}):  # a label like "$\\notacmd$" is text, never mathtext
        body = _render(metrics, plots or {}, data, label_issues, k_violin)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(path)


def _queries_text(metrics: dict[str, Any]) -> str:
    n_test, used = metrics.get("n_test"), metrics.get("top_k_queries")
    if used is None or used == n_test:
        return f"all {esc(n_test)} test queries"
    return f"a seeded sample of {esc(used)} of the {esc(n_test)} test records as queries, neighbours among all of them"


_STAGES = {
    "encode": "encode the texts with the base model (cached on disk)",
    "train": "train",
    "smooth": "neighbour smoothing",
    "spread": "search spread",
    "model_door": "model folder (its base share)",
    "evaluate": "evaluate",
    "total": "the whole run",
}


def _timings_html(seconds: Any) -> str:
    """``metrics["seconds"]`` as a table: one row per stage, the whole run last."""
    if not isinstance(seconds, dict) or not seconds:
        return ""
    order = [k for k in seconds if k != "total"] + (["total"] if "total" in seconds else [])
    cells = {k: f"{v:,.1f}" if isinstance(v, (int, float)) else esc(v) for k, v in seconds.items()}
    rows = "".join(f"<tr><td>{esc(_STAGES.get(k, k))}</td><td>{cells[k]}</td></tr>" for k in order)
    return f"<h3>Timings</h3><table><tr><th>stage</th><th>seconds</th></tr>{rows}</table>"


def _source_text(source: Any, confidence: Any) -> str:
    if source == "weak":
        return "weak supervision" + (f", confidence {confidence:.2f}" if isinstance(confidence, (int, float)) else "")
    return str(source or "-")


def _label_issues_html(metrics: dict[str, Any], issues: dict[str, Any] | None) -> str:
    """The weak labels the label check flagged, the least likely first, with text, source and suggestion."""
    check = metrics.get("label_check")
    if not isinstance(check, dict) and not issues:
        return ""
    n = len(issues["ids"]) if issues else int((check or {}).get("n_flagged") or 0)
    action = (check or {}).get("action")
    what = {"drop": "left them out of training", "weight": "down-weighted them in training",
            "off": "trained on them as they are"}
    head = (f"<h2>Label issues: {n:,} weak label{'s' if n != 1 else ''} the label check thinks wrong</h2>"
            f"<p>A classifier fitted on the other labels (out of fold, base-model vectors) finds the given label less "
            f"likely than its class's labels usually are and prefers another; manual labels are never flagged. "
            + (f"This run {what[action]}. " if action in what else "")
            + "Review them in refinery: the full list is <code>label_issues.csv</code>.</p>")
    if not issues or not n:
        note = (check or {}).get("note")
        return head + (f"<p>{esc(note)}</p>" if note else "")
    texts, sources, confidence = issues["texts"], issues["sources"], issues["confidence"]
    order = sorted(range(n), key=lambda r: issues["probability_given"][r])[:MAX_LABEL_ISSUES]
    rows = "".join(
        f"<tr><td>{esc(issues['ids'][r])}</td><td class=\"txt\">{esc(_clip(texts[r]))}</td>"
        f"<td><b>{esc(issues['given'][r])}</b></td><td>{esc(_source_text(sources[r], confidence[r]))}</td>"
        f"<td>{esc(issues['suggested'][r])}</td><td>{issues['probability_given'][r]:.2f}</td></tr>"
        for r in order
    )
    shown = f"<p>The {len(order)} least likely of {n:,}.</p>" if len(order) < n else ""
    return (head + shown + '<table class="issues"><tr><th>record</th><th>text</th><th>label</th><th>source</th>'
            f"<th>suggested</th><th>probability of the label</th></tr>{rows}</table>")


def _details_html(metrics: dict[str, Any]) -> str:
    """What the run did and how long it took, folded: the mode choice, labels, timings."""
    config = metrics.get("config", {})
    choice = metrics.get("mode_choice")
    choice_html = f"<p>Mode choice: {esc(choice.get('message', ''))}</p>" if isinstance(choice, dict) else ""
    skipped = "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in metrics.get("skipped", {}).items()) or "<li>none</li>"
    counts = esc(", ".join(f"{k}: {v}" for k, v in metrics.get("train_class_counts", {}).items()))
    return (f"<details><summary>Details: how this run chose its mode, what it trained on, how long it took</summary>"
            f"<p>Loss <b>{esc(config.get('loss'))}</b>, engine <b>{esc(config.get('engine'))}</b>, mode "
            f"<b>{esc(config.get('mode'))}</b>.</p>{choice_html}"
            f"<p>Training labels per class: {counts}</p><p>Skipped:</p><ul>{skipped}</ul>"
            f"{_timings_html(metrics.get('seconds'))}</details>")


def _render(metrics: dict[str, Any], plots: dict[str, Any], data: ReportData | None,
            label_issues: dict[str, Any] | None, k_violin: int) -> str:
    chance = metrics.get("chance")
    top_k = metrics.get("top_k", {})
    sections: list[str] = [_search_html(metrics)]
    hover: dict[str, Any] = {}

    rows = []
    names = list(top_k)
    for k in top_k.get("raw", {}):
        cells = "".join(f"<td>{top_k[n][k]:.2f}</td>" for n in names)
        rows.append(f"<tr><td>top_{esc(k)}</td>{cells}</tr>")
    if rows:
        head = "".join(f"<th>{esc(_name(n))}</th>" for n in names)
        sections.append(f"<h2>top_k: same class among the k nearest test records (mean over {_queries_text(metrics)}, %)</h2>"
                        f"<table><tr><th>k</th>{head}</tr>{''.join(rows)}</table>")
    judged = data is not None and len(data.test_idx) >= 2  # test records with gold: per-class figures, 2D views
    if judged:
        sections.append("<h2>top_k per class (%, test records among test records)</h2>"
                        + _per_class_html(per_class_top_k(data, given=plots.get("per_query_k"))))
    if chance is not None and rows:
        if plots.get("per_query"):
            sections.append(f'<h2>Neighbour purity per query</h2><img alt="Neighbour purity per query" '
                            f'src="data:image/png;base64,{_violin(plots["per_query"], k_violin, chance)}">')
        sections.append(f'<h2>Neighbour purity by k</h2><img alt="Neighbour purity by k" '
                        f'src="data:image/png;base64,{_png(_curve_figure(top_k, chance))}">')
    if judged:
        views, hover = _views_html(data, metrics, plots.get("points_2d"))
        sections.append("<h2>2D views: the same projection for raw and fine-tuned</h2>" + views)
    if data is not None:
        screen = first_screen(data)
        sections.append(
            f"<h2>Examples: the first screen of {len(screen)} seeded {'test ' if len(data.test_idx) else ''}queries</h2>"
            "<p>A few records to read, not a measurement. For each, its "
            f"{N_NEIGHBOURS} nearest records among all records (as refinery's similarity search looks), raw beside "
            "fine-tuned. A neighbour's class is its training label, else its gold; &#10003; = same class as the "
            "query's; <span class=\"new\">new</span> = not among the raw embedding's first screen; "
            "<span class=\"sim\">#12 in raw</span> = the same record is the query's 12th nearest in the other "
            "embedding.</p>" + _first_screen_html(data, screen)
        )
    sections.append(_label_issues_html(metrics, label_issues))
    cls = metrics.get("classification", {})
    if cls:
        cls_rows = "".join(
            f"<tr><td>{esc(_name(n))}</td><td>{v['accuracy']:.2f}</td><td>{v['macro_f1']:.2f}</td></tr>"
            for n, v in cls.items()
        )
        sections.append("<h2>Linear probe (LogisticRegression, test records)</h2>"
                        f"<table><tr><th>embedding</th><th>accuracy %</th><th>macro F1 %</th></tr>{cls_rows}</table>")
    sections.append(_details_html(metrics))

    config = metrics.get("config", {})
    chance_html = (f"Chance level {chance:.2f}%." if chance is not None
                   else esc("No evaluation against gold: " + str(metrics.get("evaluation_note"))) + ".")
    def count(key: str) -> str:
        value = metrics.get(key)
        return f"{value:,}" if isinstance(value, int) else esc(value)

    lead = (f'<p class="lead">Task <b>{esc(metrics.get("task"))}</b>: trained on {count("n_train")} '
            f"labels, {count('n_val')} held out for validation; {count('n_test')} test "
            f"records judged by gold. Mode <b>{esc(config.get('mode'))}</b> (why: details at the end). "
            f"{chance_html}" + ("" if data is None or judged else " Per-class figures and 2D views need test records "
                                "with gold (--gold-attribute).") + "</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>kern-finetune report</title>
<style>{_STYLE}</style></head><body>
<h1>kern-finetune report</h1>
{verdict_html(metrics)}
{lead}
{''.join(sections)}
<div id="tip"></div>
<script type="application/json" id="hover-data">{_script_json(hover)}</script>
<script>{_SCRIPT}</script>
</body></html>"""
