"""Head mode on several project shapes: raw vs the default head and its parts (issue 15).

``multi_project_ag_seeds_43_44.md`` was made while the search-floor head (``--search-floor 5 --raw-weight
auto``) was the default: its "default head" row is that head, its "old head" row today's default.
``multi_project.md`` (every project, seeds 42-44) names the rows as they were then. The search-floor head
left the package in the prune of issue 31 (it lost to the default, ``docs/decisions.md``); its rows in those
files ran at commit 3cc078b or earlier and are kept as a record.

Projects (refinery exports in ``samples/``; how their labels were made: ``scripts/build_projects.py``):

- ``ag_news``: the bundled sample (4 topics, news titles + descriptions, 10,854 training labels);
- ``clinc150_intents``: CLINC150 utterances, task ``Intent`` (150 classes, 3 manual labels per intent);
- ``clinc150_domains``: the same texts, task ``Domain`` (10 classes);
- ``rotten_tomatoes``: movie review snippets and plot summaries, task ``Sentiment`` (fresh / rotten / plot;
  classes by opinion, not topic; noisier weak labels, about 78% right above the threshold).

Full mode is not in this benchmark: on these 2 shared cores it is not cheap on any of these projects
(``mode_auto.md``: 582 s for a 1,500-record CLINC150 slice; these have 5,000-14,500 labels).
top_1k: every project has more than 1,000 test records, but on ``clinc150_intents`` a class has about 90 of
them, so top_1k is bounded near 9% there and says nothing; read top_10 / top_100.

Every row goes through the pipeline's own steps: selection at threshold 0.7, cached base vectors, the
label check (drop), :func:`kern_finetune.training.train.fit_head`. Reported per row: top_5/10/25/100/1000 over all
test records (neighbours among the test records, as the 2022 experiment) and refinery's threshold search
(:func:`kern_finetune.refinery.search.threshold_search`: 300 seeded test queries searched among **all** records
of the project, 100 nearest within the embedding's similarity threshold; shares of queries with fewer than
10 / 100 results, same-class share of what is returned, judged where gold is known).

    python benchmarks/multi_project.py                        # every project, seeds 42,43,44
    python benchmarks/multi_project.py --projects clinc150_domains --seeds 42

Writes ``benchmarks/results/multi_project.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from _common import PROJECTS, RESULTS, fit_row, label_checked, load_project, machine, score_row, write_results

from kern_finetune.config import RunConfig

ROWS: dict[str, tuple[str, RunConfig | None]] = {
    "raw": ("raw all-MiniLM-L6-v2", None),
    "default": ("default head: supcon t=0.5 + label check + smoothing (auto) + spread (auto)", RunConfig()),
    "unspread": ("head with smoothing, without the spread (--spread 0)", RunConfig(spread="0")),
    "unsmoothed": ("head without smoothing or spread (--smooth 0 --spread 0)", RunConfig(smooth="0", spread="0")),
}
KEYS = ("top_5", "top_10", "top_25", "top_100", "top_1000", "lt_10", "lt_100", "same_class", "first_screen_same",
        "train_seconds")


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for project in dict.fromkeys(r["project"] for r in results):
        for name in dict.fromkeys(r["row"] for r in results if r["project"] == project):
            rs = [r for r in results if r["project"] == project and r["row"] == name]
            s: dict[str, Any] = {"project": project, "row": name, "seeds": len(rs)}
            for key in (*KEYS, "smooth_weight", "spread_strength"):
                vals = [r[key] for r in rs if r.get(key) is not None]
                if vals:
                    s[key], s[key + "_std"] = float(np.mean(vals)), float(np.std(vals))
            out.append(s)
    return out


def markdown(summary: list[dict[str, Any]], command: str, info: dict[str, Any], sizes: dict[str, str]) -> str:
    lines = [f"Command: `{command}`", "", f"Machine: {info}", ""]
    for project in dict.fromkeys(s["project"] for s in summary):
        lines += [f"### {project}", "", sizes.get(project, ""), "",
                  "| row | seeds | top_5 | top_10 | top_25 | top_100 | top_1k | search: < 10 results | < 100 results "
                  "| same class | first screen: same class of 9 | smoothing weight | spread strength | train s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in (s for s in summary if s["project"] == project):
            def f(key: str, d: int = 2) -> str:
                return f"{s[key]:.{d}f} ± {s[key + '_std']:.{d}f}" if key in s else "-"
            lines.append(f"| {s['row']} | {s['seeds']} | {f('top_5')} | {f('top_10')} | {f('top_25')} | {f('top_100')} | "
                         f"{f('top_1000')} | {f('lt_10', 1)} % | {f('lt_100', 1)} % | {f('same_class', 1)} % | {f('first_screen_same')} | "
                         f"{f('smooth_weight')} | {f('spread_strength')} | {f('train_seconds', 1)} |")
        lines.append("")
    lines += ["top_k: mean share (percent) of a test record's k nearest test records (cosine) with its gold class. "
              "search: refinery's threshold search, 300 seeded test queries among all records "
              "(kern_finetune.refinery.search.threshold_search); same class judged on returned records with gold, query excluded. "
              "first screen: of the 9 records shown after the query on refinery's first screen (fewer when the "
              "threshold returns fewer), how many are of the query's class (a count out of 9; judged among those "
              "with gold and scaled to the number shown). "
              "smoothing weight: kern_finetune.vectors.smooth (chosen on the least confident validation records; train s "
              "excludes it). spread strength: kern_finetune.vectors.spread (chosen on 1,000 seeded searches among all records, "
              "no labels; train s excludes it). "
              "top_1k: clinc150_intents has about 90 test records per intent, so its top_1k is bounded near 9% and "
              "says nothing. Full mode is not in these tables: not cheap on 2 shared cores for any of these projects "
              "(module docstring). Training seconds: torch threads as the command's BENCH_THREADS / OMP_NUM_THREADS say; "
              "the machine line gives the load at the start (other jobs on the 2 cores slow them)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", default=",".join(PROJECTS))
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    ap.add_argument("--name", default="multi_project", help="results file name in benchmarks/results/")
    ap.add_argument("--merge", action="store_true",
                    help="keep the runs already in the results file (other projects or seeds) and add these")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    seeds = [int(s) for s in args.seeds.split(",")]
    results: list[dict[str, Any]] = []
    sizes: dict[str, str] = {}
    commands: list[str] = []
    path = RESULTS / f"{args.name}.json"
    if args.merge and path.exists():
        old = json.loads(path.read_text())
        wanted = {(p, s) for p in args.projects.split(",") for s in seeds}
        results = [r for r in old["runs"] if (r["project"], r["seed"]) not in wanted]
        sizes, commands = old.get("sizes", {}), old.get("commands", [old.get("command", "")])
    for project in args.projects.split(","):
        for seed in seeds:
            sel, base, classes = load_project(project, seed)
            sizes[project] = (f"{len(sel.ids)} records, {len(sel.classes)} classes, {len(sel.train_idx) + len(sel.val_idx)} "
                              f"labels selected ({sum(1 for i in sel.labeled_idx if sel.source[i] == 'manual')} manual), "
                              f"{len(sel.test_idx)} test records")
            checked = label_checked(sel, base, seed)  # once per project and seed: every head row drops the same labels
            stages: dict[str, np.ndarray] = {}
            made: dict[str, Any] = {}
            for name, config in (ROWS[key] for key in args.rows.split(",")):
                if config is None:
                    vec, info = base, {"seconds": 0.0}
                elif made and config == replace(RunConfig(), spread="0"):
                    # the default row's own head and smoothing, before its spread: no second training
                    vec, info = stages["smoothed"], {k: v for k, v in made.items() if not k.startswith("spread")}
                else:
                    vec, info = fit_row(replace(config, seed=seed), sel, base, checked=checked, stages=stages)
                    made = info if config == RunConfig() else made
                row = {"project": project, "row": name, "seed": seed, "train_seconds": round(info["seconds"], 2),
                       "smooth_weight": info.get("smooth_weight"),
                       "spread_strength": info.get("spread_strength"),
                       **score_row(vec, sel, classes, seed)}
                results.append(row)
                print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        write(args.name, results, sizes, commands)  # after every project: a long run keeps what it measured
    print(write(args.name, results, sizes, commands))


def write(name: str, results: list[dict[str, Any]], sizes: dict[str, str], earlier: list[str]) -> str:
    summary = summarise(results)
    commands = [c for c in dict.fromkeys([*earlier, ("python benchmarks/multi_project.py " + " ".join(sys.argv[1:])).strip()]) if c]
    info = machine()
    md = markdown(summary, "`; `".join(commands), info, sizes)
    write_results(name, {"commands": commands, "machine": info, "sizes": sizes, "summary": summary, "runs": results}, md)
    return md


if __name__ == "__main__":
    main()
