"""A self-contained ``report.html``: numbers plus plots (embedded PNGs, no external files)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["write_report"]

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _violin(per_query: dict[str, np.ndarray], k: int, chance: float) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(per_query)
    ax.violinplot([100 * per_query[n] for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance {chance:.1f}%")
    ax.set_ylabel(f"same-class share of the {k} nearest neighbours (%)")
    ax.set_title(f"top_{k} per test query")
    ax.legend(loc="lower right")
    return _png(fig)


def _curve(top_k: dict[str, dict[str, float]], chance: float) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, vals) in enumerate(top_k.items()):
        ks = [int(k) for k in vals]
        ax.plot(ks, list(vals.values()), marker="o", label=name, color=_COLORS[i % len(_COLORS)])
    ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("k (nearest neighbours)")
    ax.set_ylabel("same-class share (%)")
    ax.set_title("top_k, mean over all test queries")
    ax.legend()
    return _png(fig)


def _scatter(points: dict[str, np.ndarray], classes: np.ndarray, labels: list[str], titles: dict[str, str]) -> str:
    fig, axes = plt.subplots(1, len(points), figsize=(5.5 * len(points), 5))
    axes = np.atleast_1d(axes)
    for ax, (name, pts) in zip(axes, points.items()):
        for c, label in enumerate(labels):
            m = classes == c
            ax.scatter(pts[m, 0], pts[m, 1], s=3, alpha=0.5, color=_COLORS[c % len(_COLORS)], label=label)
        ax.set_title(titles.get(name, name))
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(markerscale=4, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def write_report(
    path: Path,
    metrics: dict[str, Any],
    *,
    plots: dict[str, Any] | None,
    k_violin: int = 1000,
) -> None:
    """Write the report. ``plots`` holds ``per_query`` (embedding name -> per-query purity at
    ``k_violin``), ``points_2d`` (name -> 2D points), ``point_classes`` and ``class_names``; without
    it (no gold attribute) the report has numbers only."""
    chance = metrics["chance"]
    imgs: list[tuple[str, str]] = []
    if plots:
        sep = metrics.get("separation_2d", {})
        titles = {
            name: f"{name}: 15-NN accuracy {sep.get(name, {}).get('knn_accuracy', float('nan')):.1f}%, "
            f"silhouette {sep.get(name, {}).get('silhouette', float('nan')):.2f}"
            for name in plots["points_2d"]
        }
        imgs = [
            ("Neighbour purity per query", _violin(plots["per_query"], k_violin, chance)),
            ("Neighbour purity by k", _curve(metrics["top_k"], chance)),
            (
                "2D projection of the test records (colour = gold class)",
                _scatter(plots["points_2d"], plots["point_classes"], plots["class_names"], titles),
            ),
        ]
    rows = []
    for k in metrics["top_k"]["raw"]:
        cells = "".join(f"<td>{metrics['top_k'][n][k]:.2f}</td>" for n in metrics["top_k"])
        rows.append(f"<tr><td>top_{k}</td>{cells}</tr>")
    head = "".join(f"<th>{html.escape(n)}</th>" for n in metrics["top_k"])
    cls = metrics.get("classification", {})
    cls_rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{v['accuracy']:.2f}</td><td>{v['macro_f1']:.2f}</td></tr>" for n, v in cls.items()
    )
    skipped = "".join(f"<li>{html.escape(k)}: {v}</li>" for k, v in metrics.get("skipped", {}).items()) or "<li>none</li>"
    counts = html.escape(", ".join(f"{k}: {v}" for k, v in metrics.get("train_class_counts", {}).items()))
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>kern-finetune report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%}}pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>kern-finetune report</h1>
<p>Task <b>{html.escape(str(metrics.get('task')))}</b>, loss <b>{html.escape(str(metrics.get('config', {}).get('loss')))}</b>,
engine <b>{html.escape(str(metrics.get('config', {}).get('engine')))}</b>, mode <b>{html.escape(str(metrics.get('config', {}).get('mode')))}</b>.
Train {metrics['n_train']} / validation {metrics['n_val']} / test {metrics['n_test']} records.
{f"Chance level {chance:.2f}%." if chance is not None else html.escape("No evaluation: " + str(metrics.get("evaluation_note")))}</p>
<h2>top_k (mean over all {metrics['n_test']} test queries, %)</h2>
<table><tr><th>k</th>{head}</tr>{''.join(rows)}</table>
<p>top_1k over {metrics.get('eval_queries', 250)} seeded queries (the 2022 protocol):
{', '.join(f'{html.escape(n)} {v:.2f}%' for n, v in metrics.get('top_1k_250', {}).items())}</p>
<h2>Linear probe (LogisticRegression, test records)</h2>
<table><tr><th>embedding</th><th>accuracy %</th><th>macro F1 %</th></tr>{cls_rows}</table>
<h2>Labels</h2><p>Training labels per class: {counts}</p><p>Skipped:</p><ul>{skipped}</ul>
{''.join(f'<h2>{html.escape(t)}</h2><img src="data:image/png;base64,{b}">' for t, b in imgs)}
<h2>Timings (s)</h2><pre>{html.escape(str(metrics.get('seconds')))}</pre>
</body></html>"""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(path)
