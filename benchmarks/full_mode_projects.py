"""Full mode (``--mode full``) on the multi-project benchmark's projects, scored as ``multi_project.py`` scores
the head (issue 15: "CLINC150 intents and domains ... in both modes"; refinery's threshold search in full mode).

Per project and seed, one full-mode training through the pipeline's own fit stage
(:func:`kern_finetune.fit.fit`: label check, pseudo-labels, :class:`kern_finetune.train_full.FullTrainer`,
re-encoding every record, neighbour smoothing ``auto``), then the search spread as the pipeline applies it
(:func:`kern_finetune.spread.spread_vectors`, ``auto``). Two rows come from that one training: with the spread
(what ``--mode full`` pushes) and without it (``--spread 0``); the raw row is the base vectors. Scored by
``benchmarks/_common.score_row``: top_k among the test records and refinery's threshold search.

    python benchmarks/full_mode_projects.py --projects clinc150_intents,clinc150_domains --seeds 42

Writes ``benchmarks/results/full_mode_projects.{json,md}`` (runs merged by project and seed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

from _common import PROJECTS, RESULTS, load_project, machine, score_row, write_results

from kern_finetune.config import RunConfig, default_cache_dir
from kern_finetune.encode import Encoder
from kern_finetune.fit import fit
from kern_finetune.spread import spread_vectors

KEYS = ("top_5", "top_10", "top_25", "top_100", "top_1000", "lt_10", "lt_100", "same_class", "first_screen_same")


def one(project: str, seed: int) -> list[dict[str, Any]]:
    _, task, attrs, gold_attribute = PROJECTS[project]
    sel, base, classes = load_project(project, seed)
    config = RunConfig(mode="full", task=task, text_attributes=attrs, gold_attribute=gold_attribute, seed=seed,
                       spread="0", cache_dir=default_cache_dir())
    encoder = Encoder(cache_dir=config.cache_dir)
    t = time.perf_counter()
    fitted = fit(encoder, sel, base, config, progress=print)
    seconds = time.perf_counter() - t
    spread, info = spread_vectors(fitted.vectors, base, strength=None, seed=seed)
    common = {"project": project, "seed": seed, "train_seconds": round(fitted.seconds, 1),
              "fit_seconds": round(seconds, 1), "steps": fitted.training.details.get("steps"),
              "smooth_weight": fitted.smoothing.weight if fitted.smoothing else 0.0}
    rows = [{**common, "row": "raw all-MiniLM-L6-v2", **score_row(base, sel, classes, seed)},
            {**common, "row": "full mode (--mode full: smoothing auto + spread auto)", "spread_strength": info.strength,
             "spread_seconds": info.seconds, **score_row(spread, sel, classes, seed)},
            {**common, "row": "full mode without the spread (--spread 0)", **score_row(fitted.vectors, sel, classes, seed)}]
    for r in rows:
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
    return rows


def markdown(runs: list[dict[str, Any]], commands: list[str], info: dict[str, Any]) -> str:
    lines = [f"Command: `{'`; `'.join(commands)}`", "", f"Machine: {info}", "",
             "| project | seed | row | top_5 | top_10 | top_25 | top_100 | top_1k | search: < 10 results | < 100 results "
             "| same class | first screen: same class of 9 | smoothing weight | spread strength | full-mode train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        raw = r["row"].startswith("raw")
        lines.append(
            f"| {r['project']} | {r['seed']} | {r['row']} | " + " | ".join(f"{r[k]:.2f}" for k in KEYS[:5])
            + f" | {r['lt_10']:.1f} % | {r['lt_100']:.1f} % | {r['same_class']:.1f} % | {r['first_screen_same']:.2f} | "
            + ("-" if raw else f"{r['smooth_weight']:.2f}") + " | "
            + (f"{r['spread_strength']:.2f}" if "spread_strength" in r else "-") + " | "
            + ("-" if raw else f"{r['train_seconds']:.0f}") + " |")
    lines += ["", "top_k and search as in `multi_project.md` (same selection, same 300 seeded test queries). "
              "Full-mode train s: the fit stage's training and re-encoding of every record (label check, smoothing "
              "and spread excluded), torch threads as BENCH_THREADS says; the machine line gives the load at the start."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--projects", default="clinc150_intents,clinc150_domains")
    ap.add_argument("--seeds", default="42")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    path = RESULTS / "full_mode_projects.json"
    old = json.loads(path.read_text()) if path.exists() else {"runs": [], "commands": []}
    command = ("python benchmarks/full_mode_projects.py " + " ".join(sys.argv[1:])).strip()
    commands = [c for c in dict.fromkeys([*old["commands"], command]) if c]
    runs = old["runs"]
    for project in args.projects.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            new = one(project, seed)
            runs = [r for r in runs if (r["project"], r["seed"]) != (project, seed)] + new
            info = machine()
            write_results("full_mode_projects", {"commands": commands, "machine": info, "runs": runs},
                          markdown(runs, commands, info))


if __name__ == "__main__":
    main()
