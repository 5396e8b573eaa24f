"""The report's first block: the verdict in one sentence and a small table of what a labeler sees, new vs raw vs
current, with the differences coloured (``metrics.json``'s ``verdict``, :mod:`kern_finetune.evaluation.verdict`)."""

from __future__ import annotations

import html
import math
from typing import Any

__all__ = ["verdict_html", "esc"]

_ROWS = (("same_class", "same class over a session", "%", 1), ("first_screen_same", "first screen: same class of 9", "", 1),
         ("lt_10", "searches with fewer than 10 results", "%", 1))
_STYLE = ("<style>.verdict{border:2px solid #888;padding:.4em 1em;margin:.5em 0 1em;max-width:60em}"
          ".verdict.better{border-color:#2a7d2a}.verdict.worse{border-color:#c0392b}"
          ".verdict td.good{color:#2a7d2a;font-weight:bold}.verdict td.bad{color:#c0392b;font-weight:bold}</style>")


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, unit: str, digits: int) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "?"
    return f"{value:.{digits}f}{unit}"


def _delta_cell(name: str, new: float, ref: float, unit: str) -> str:
    if any(not isinstance(v, (int, float)) or math.isnan(v) for v in (new, ref)):
        return "<td>?</td>"
    d = new - ref
    good = d < 0 if name == "lt_10" else d > 0
    cls = "" if abs(d) < 1e-9 else (" class=\"good\"" if good else " class=\"bad\"")
    return f"<td{cls}>{d:+.1f}{' points' if unit == '%' else ''}</td>"


def verdict_html(metrics: dict[str, Any]) -> str:
    """The block, or one line saying why there is no verdict."""
    v = metrics.get("verdict")
    if not isinstance(v, dict):
        return ""
    outcome = str(v.get("verdict", "too few to tell"))
    css = outcome if outcome in ("better", "worse") else "unsure"
    if "new" not in v:
        return f'{_STYLE}<div class="verdict {css}"><p><b>Verdict: {esc(v.get("conclusion", outcome))}</b></p></div>'
    names = [n for n in ("new", "current", "raw") if n in v]
    ref = str(v.get("reference", "raw"))
    head = "".join(f"<th>{esc(n)}</th>" for n in names) + f"<th>new &minus; {esc(ref)}</th>"
    rows = []
    for key, label, unit, digits in _ROWS:
        cells = "".join(f"<td>{_fmt(v[n].get(key), unit, digits)}</td>" for n in names)
        rows.append(f"<tr><td>{esc(label)}</td>{cells}{_delta_cell(key, v['new'].get(key), v[ref].get(key), unit)}</tr>")
    lo, hi = (v.get("interval") or {}).get("same_class", [float("nan")] * 2)
    by = v.get("by_judge") or {}
    judges = "; ".join(f"{esc(src)} labels: {esc(p.get('n_queries'))} searches, {_fmt(p.get('judged_per_query'), '', 1)} "
                       f"judged records each" for src, p in by.items())
    gold = v.get("gold")
    gold_html = ""
    if isinstance(gold, dict):
        agrees = {True: "agrees with the verdict", False: "disagrees with the verdict", None: ""}[gold.get("agrees")]
        gold_html = (f"<p>Gold (test records, the benchmark's judge, apart): same class {_fmt(gold['new']['same_class'], '%', 1)} "
                     f"vs raw {_fmt(gold['raw']['same_class'], '%', 1)}: {esc(gold.get('direction'))}"
                     + (f", {agrees}" if agrees else "") + ".</p>")
    if css == "unsure":
        sentence = f"too few to tell whether the new embedding is better or worse than the {esc(ref)} embedding"
    else:
        sentence = f"the new embedding is {esc(outcome)} than the {esc(ref)} embedding"
    d_same = (v.get("delta") or {}).get("same_class", float("nan"))
    return f"""{_STYLE}<div class="verdict {css}">
<p><b>Verdict: {sentence}</b> where a labeler looks in refinery's search: same class over a session
{_fmt(d_same, '', 1) if math.isnan(d_same) else f'{d_same:+.1f}'} points, 95% interval [{_fmt(lo, '', 1)}, {_fmt(hi, '', 1)}].</p>
<table><tr><th>what a labeler sees</th>{head}</tr>{''.join(rows)}</table>
<p>Judged without gold: {esc(v.get('n_heldout'))} labels held out of a second fit ({esc(v.get('procedure'))}) and
{esc(v.get('n_unseen_weak'))} weak labels no fit sees, {esc(v.get('n_queries'))} searches in all ({judges}).
Door: {esc(v.get('door'))}.</p>{gold_html}
<p style="font-size:.85em">{esc(v.get('conclusion'))}</p></div>"""
