"""Both doors as refinery runs them: what a labeler's similarity search returns, per door, per project.

For each project and seed, the default head-mode run (label check, head, neighbour smoothing, search spread)
and four embeddings of every record, each searched as refinery searches it (300 seeded test queries among
**all** records, 100 nearest within the 5th-percentile threshold, :func:`kern_finetune.refinery.search.threshold_search`):

- **stock**: refinery's own embedding of the base model, computed by its embedder (PCA-64 fitted on the first
  640 records, :mod:`kern_finetune.refinery.embedder`): what the user has without kern-finetune;
- **raw 384-d**: the base model's vectors as they are;
- **snapshot door**: the pushed vectors (smoothed and spread), which refinery's import stores as they are;
- **model door**: what the written model folder computes (head beside the base share the replay chose,
  :mod:`kern_finetune.vectors.base_share`), through the embedder's PCA-64.

Gold judges: ``< 10`` / ``< 100`` (share of searches with fewer results), ``same class`` (over each list),
``first screen`` (same-class records among the 9 shown after the query).

    cd benchmarks && ../.venv/bin/python doors.py [--projects ag_news,...] [--seeds 42,43,44]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

import numpy as np

from _common import PROJECTS, SEARCH_QUERIES, label_checked, load_project, machine, write_results

from kern_finetune.config import RunConfig
from kern_finetune.refinery.search import sample_queries, threshold_search
from kern_finetune.vectors.base_share import door_vectors, head_door
from kern_finetune.vectors.smooth import smooth_vectors
from kern_finetune.vectors.spread import spread_vectors
from kern_finetune.training.train import fit_head

EMBEDDINGS = ("stock", "raw_384", "snapshot_door", "model_door")
KEYS = ("lt_10", "lt_100", "same_class", "first_screen_same")


def one(project: str, seed: int) -> dict[str, Any]:
    sel, base, classes = load_project(project, seed=seed)
    config = RunConfig(mode="head", seed=seed)
    checked = label_checked(sel, base, seed)
    t = time.perf_counter()
    trainer = fit_head(base, checked, config, progress=False)
    head = trainer.transform(base)
    weight, bias = (a.double().numpy() for a in trainer.head_.as_affine())
    door = head_door(weight, bias, base, sel.ids, seed=seed)
    smoothed, smoothing = smooth_vectors(head, base, sel, weight=config.smooth_weight, seed=seed)
    pushed, spread = spread_vectors(smoothed, base, strength=config.spread_strength, seed=seed)
    seconds = time.perf_counter() - t
    test = sel.test_idx
    queries = test[sample_queries(len(test), SEARCH_QUERIES, seed)]
    vectors = {"stock": door_vectors(base, sel.ids, seed=seed), "raw_384": base, "snapshot_door": pushed,
               "model_door": door_vectors(door.transform(base), sel.ids, seed=seed)}
    row: dict[str, Any] = {"project": project, "seed": seed, "share": door.share, "door_table": door.table,
                           "smooth_weight": smoothing.weight, "spread_strength": spread.strength,
                           "seconds": round(seconds, 1), "n_records": len(sel.ids)}
    for name, x in vectors.items():
        found = threshold_search(x, queries, classes, seed=seed)
        row[name] = {k: found[k] for k in KEYS}
    # exploration, judged by test gold (never used to choose): the model door at every share the replay searched
    row["frontier"] = []
    for share in [r["share"] for r in door.table]:
        fixed = head_door(weight, bias, base, sel.ids, share=share, seed=seed)
        found = threshold_search(door_vectors(fixed.transform(base), sel.ids, seed=seed), queries, classes, seed=seed)
        row["frontier"].append({"share": share, **{k: found[k] for k in KEYS}})
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for project in dict.fromkeys(r["project"] for r in rows):
        mine = [r for r in rows if r["project"] == project]
        mean = {name: {k: float(np.mean([r[name][k] for r in mine])) for k in KEYS} for name in EMBEDDINGS}
        out.append({"project": project, "seeds": [r["seed"] for r in mine],
                    "shares": [r["share"] for r in mine], **mean})
    return out


def markdown(summary: list[dict[str, Any]], rows: list[dict[str, Any]], command: str, info: dict[str, Any]) -> str:
    lines = ["# Both doors as refinery runs them", "", f"`{command}`", "",
             f"Machine: {info}. Mean over the seeds; {SEARCH_QUERIES} seeded test queries per seed, searched among all "
             "records as refinery's data browser does (100 within the 5th-percentile threshold). stock = refinery's own "
             "embedding of the base model through its embedder (PCA-64 on the first 640 records); model door = the "
             "written model folder through the same embedder; snapshot door = the pushed vectors as stored.", ""]
    lines += ["| project | embedding | < 10 results | < 100 results | same class | first screen (of 9) |",
              "|---|---|---|---|---|---|"]
    for s in summary:
        for name in EMBEDDINGS:
            m = s[name]
            label = name + (f" (share {', '.join(f'{x:g}' for x in s['shares'])})" if name == "model_door" else "")
            lines.append(f"| {s['project']} | {label} | {m['lt_10']:.1f}% | {m['lt_100']:.1f}% | {m['same_class']:.1f}% | "
                         f"{m['first_screen_same']:.2f} |")
    lines += ["", "Exploration (test gold, never used to choose): the model door at each share the replay searched, "
              "per seed; the chosen share is marked *.", "", "| project | seed | share | < 10 | < 100 | same class | first screen |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        for f in r["frontier"]:
            mark = "*" if f["share"] == r["share"] else ""
            lines.append(f"| {r['project']} | {r['seed']} | {f['share']:g}{mark} | {f['lt_10']:.1f}% | {f['lt_100']:.1f}% | "
                         f"{f['same_class']:.1f}% | {f['first_screen_same']:.2f} |")
    lines += ["", "Per seed:", "", "| project | seed | embedding | < 10 | < 100 | same class | first screen |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        for name in EMBEDDINGS:
            m = r[name]
            lines.append(f"| {r['project']} | {r['seed']} | {name} | {m['lt_10']:.1f}% | {m['lt_100']:.1f}% | "
                         f"{m['same_class']:.1f}% | {m['first_screen_same']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", default=",".join(PROJECTS))
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--name", default="doors")
    args = ap.parse_args()
    info = machine()
    rows = []
    for project in args.projects.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = one(project, seed)
            rows.append(row)
            print(project, seed, f"share {row['share']}", {n: {k: round(row[n][k], 2) for k in KEYS} for n in EMBEDDINGS},
                  flush=True)
    summary = summarise(rows)
    command = "cd benchmarks && ../.venv/bin/python doors.py " + " ".join(sys.argv[1:])
    write_results(args.name, {"command": command, "machine": info, "summary": summary, "rows": rows},
                  markdown(summary, rows, command, info))


if __name__ == "__main__":
    main()
