"""Full mode (``--mode full``) on the multi-project benchmark's projects, scored as ``multi_project.py`` scores
the head (issue 15: "CLINC150 intents and domains ... in both modes"; refinery's threshold search in full mode).

Per project and seed, one full-mode training through the pipeline's own fit stage
(:func:`kern_finetune.training.fit.fit`: label check, pseudo-labels, :class:`kern_finetune.training.train_full.FullTrainer`,
re-encoding every record), then neighbour smoothing (:func:`kern_finetune.vectors.smooth.smooth_vectors`, ``auto``)
and the search spread (:func:`kern_finetune.vectors.spread.spread_vectors`, ``auto``) as the fit stage applies them.
Two rows come from that one training: with the spread (what ``--mode full`` pushes) and without it
(``--spread 0``); the raw row is the base vectors. ``--smooth-weights`` adds exploration rows with the
smoothing weight fixed (judged by test gold, so they choose nothing); ``--save-vectors DIR`` keeps full
mode's vectors before smoothing for later study, and ``--load-vectors DIR`` reuses them instead of training
again (the training does not depend on smoothing or spread; the row keeps the training's seconds and steps
from the run that saved them, and says ``vectors: saved``). Scored by ``benchmarks/_common.score_row``: top_k among the
test records and refinery's threshold search.

    python benchmarks/full_mode_projects.py --projects clinc150_intents,clinc150_domains --seeds 42

Writes ``benchmarks/results/full_mode_projects.{json,md}`` (runs merged by project and seed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import PROJECTS, RESULTS, load_project, machine, score_row, write_results

from kern_finetune.config import RunConfig, default_cache_dir
from kern_finetune.vectors.encode import Encoder
from kern_finetune.training.fit import fit
from kern_finetune.vectors.smooth import base_neighbours, smooth, smooth_vectors
from kern_finetune.vectors.spread import spread_vectors

KEYS = ("top_5", "top_10", "top_25", "top_100", "top_1000", "lt_10", "lt_100", "same_class", "first_screen_same")


def one(project: str, seed: int, *, weights: tuple[float, ...] = (), save: Path | None = None,
        load: Path | None = None, previous: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    _, task, attrs, gold_attribute = PROJECTS[project]
    sel, base, classes = load_project(project, seed)
    saved = load / f"{project}_{seed}.npz" if load is not None else None
    if saved is not None and saved.exists():
        with np.load(saved) as z:
            vectors, saved_base = z["full"], z["base"]
        if saved_base.shape != base.shape or float(np.abs(saved_base - base).max()) > 1e-5:
            raise SystemExit(f"{saved}: its base vectors differ from this selection's; train again")
        before = next((r for r in previous if (r["project"], r["seed"]) == (project, seed) and "train_seconds" in r), {})
        timing = {"train_seconds": before.get("train_seconds"), "fit_seconds": before.get("fit_seconds"),
                  "steps": before.get("steps"), "vectors": "saved"}
    else:
        config = RunConfig(mode="full", task=task, text_attributes=attrs, gold_attribute=gold_attribute, seed=seed,
                           smooth="0", spread="0", cache_dir=default_cache_dir())
        encoder = Encoder(cache_dir=config.cache_dir)
        t = time.perf_counter()
        fitted = fit(encoder, sel, base, config, progress=print)
        vectors = fitted.vectors
        timing = {"train_seconds": round(fitted.seconds, 1), "fit_seconds": round(time.perf_counter() - t, 1),
                  "steps": fitted.training.details.get("steps"), "vectors": "trained"}
    # smoothing (auto) and the spread (auto) as the pipeline's fit stage applies them after training; the
    # smoothing's held-out queries come from the selection as made (before the label check), as there
    smoothed, smoothing = smooth_vectors(vectors, base, sel, weight=None, seed=seed)
    spread, info = spread_vectors(smoothed, base, strength=None, seed=seed)
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        np.savez(save / f"{project}_{seed}.npz", full=vectors, base=base)
    common = {"project": project, "seed": seed, **timing, "smooth_neighbours": smoothing.neighbours,
              "smooth_weight": smoothing.weight, "smooth_table": smoothing.table}
    rows = [{**common, "row": "raw all-MiniLM-L6-v2", **score_row(base, sel, classes, seed)},
            {**common, "row": "full mode (--mode full: smoothing auto + spread auto)", "spread_strength": info.strength,
             "spread_seconds": info.seconds, **score_row(spread, sel, classes, seed)},
            {**common, "row": "full mode without the spread (--spread 0)", **score_row(smoothed, sel, classes, seed)}]
    neighbours = base_neighbours(base, seed=seed)[0] if weights else None  # what smooth_vectors searched, once
    for w in weights:  # exploration: the test gold judges these; no default is chosen by them
        fixed = smooth(vectors, neighbours, w)
        rows.append({**common, "smooth_weight": w, "row": f"exploration: smoothing fixed at {w:g}, no spread",
                     **score_row(fixed, sel, classes, seed)})
    for r in rows:
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
    return rows


def markdown(runs: list[dict[str, Any]], commands: list[str], info: dict[str, Any]) -> str:
    lines = [f"Command: `{'`; `'.join(commands)}`", "", f"Machine: {info}", "",
             "| project | seed | row | top_5 | top_10 | top_25 | top_100 | top_1k | search: < 10 results | < 100 results "
             "| same class | first screen: same class of 9 | smoothing K | smoothing weight | spread strength | full-mode train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        raw = r["row"].startswith("raw")
        lines.append(
            f"| {r['project']} | {r['seed']} | {r['row']} | " + " | ".join(f"{r[k]:.2f}" for k in KEYS[:5])
            + f" | {r['lt_10']:.1f} % | {r['lt_100']:.1f} % | {r['same_class']:.1f} % | {r['first_screen_same']:.2f} | "
            + ("-" if raw else str(r.get("smooth_neighbours", 10))) + " | "
            + ("-" if raw else f"{r['smooth_weight']:.2f}") + " | "
            + (f"{r['spread_strength']:.2f}" if "spread_strength" in r else "-") + " | "
            + ("-" if raw or r.get("train_seconds") is None else f"{r['train_seconds']:.0f}"
               + (" (saved vectors)" if r.get("vectors") == "saved" else "")) + " |")
    lines += ["", "top_k and search as in `multi_project.md` (same selection, same 300 seeded test queries). "
              "Full-mode train s: the fit stage's training and re-encoding of every record (label check, smoothing "
              "and spread excluded), torch threads as BENCH_THREADS says; the machine line gives the load at the start; "
              "\"saved vectors\": this row reused the vectors an earlier run of that seed saved (`--load-vectors`), "
              "and its seconds are that run's. smoothing K: base-space neighbours the smoothing averaged "
              "(`kern_finetune.vectors.smooth.NEIGHBOURS`: 10 before 2026-11-30, rows without the field ran with 10)."]
    lines += ["", "## Mean over the seeds", "",
              "| project | row | seeds | top_10 | top_100 | top_1k | search: < 10 results | < 100 results | same class "
              "| first screen: same class of 9 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for project, row in dict.fromkeys((r["project"], r["row"]) for r in runs):
        rs = [r for r in runs if (r["project"], r["row"]) == (project, row)]
        m = {k: sum(r[k] for r in rs) / len(rs) for k in KEYS}
        lines.append(f"| {project} | {row} | {len(rs)} | {m['top_10']:.2f} | {m['top_100']:.2f} | {m['top_1000']:.2f} | "
                     f"{m['lt_10']:.2f} % | {m['lt_100']:.2f} % | {m['same_class']:.1f} % | {m['first_screen_same']:.2f} |")
    return "\n".join(lines) + "\n"  # write_results appends full_mode_projects.notes.md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--projects", default="clinc150_intents,clinc150_domains")
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--smooth-weights", default="",
                    help="comma-separated: extra rows with the smoothing weight fixed (exploration, judged by test gold)")
    ap.add_argument("--load-vectors", type=Path, default=None,
                    help="folder of --save-vectors files: reuse a project's and seed's full-mode vectors, no training")
    ap.add_argument("--save-vectors", type=Path, default=None,
                    help="folder for <project>_<seed>.npz: full mode's vectors before smoothing and the base vectors")
    args = ap.parse_args()
    weights = tuple(float(w) for w in args.smooth_weights.split(",") if w)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    path = RESULTS / "full_mode_projects.json"
    old = json.loads(path.read_text()) if path.exists() else {"runs": [], "commands": []}
    command = ("python benchmarks/full_mode_projects.py " + " ".join(sys.argv[1:])).strip()
    commands = [c for c in dict.fromkeys([*old["commands"], command]) if c]
    runs = old["runs"]
    for project in args.projects.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            new = one(project, seed, weights=weights, save=args.save_vectors, load=args.load_vectors, previous=runs)
            runs = [r for r in runs if (r["project"], r["seed"]) != (project, seed)] + new
            info = machine()
            write_results("full_mode_projects", {"commands": commands, "machine": info, "runs": runs},
                          markdown(runs, commands, info))


if __name__ == "__main__":
    main()
