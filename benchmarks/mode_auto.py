"""``--mode auto``: does it pick full mode on small projects, and is its estimate of full mode's time honest?

    python benchmarks/mode_auto.py [--projects ag3000,clinc4500] [--budget 300] [--seed 42]
        -> benchmarks/results/mode_auto.{json,md}

Each project runs through the real pipeline with ``mode="auto"`` and the given budget (the default one
unless told). When auto picks full mode, the run's ``metrics.json`` holds the estimate made before
training and the measured training stage (``FullTrainer`` + re-encoding every record), which is what the
estimate predicts. When auto picks head mode, the project is run again with an unlimited budget so
that full mode's estimate can still be checked against its measured time (the row says so).

Projects:

- ``sample``: the bundled AG News sample itself (20,000 records, 10,854 selected labels);
- ``ag3000``: a seeded slice (``random.Random(seed).sample``) of 3,000 records of the bundled AG News
  sample, with its own manual and weak labels (~1,600 selected at the default threshold).
- ``clinc4500``: CLINC150's ``test`` split (4,500 utterances, 30 per intent, 150 intents; read from
  ``../shared/data/clinc150``, benchmark only); ``clinc1500``: 10 utterances per intent of it (seeded). Labels synthesized, seeded: 3 manual labels per intent;
  60% of the other utterances get a weak label, right with probability 0.8 (else another intent of the
  same domain, the realistic confusion), confidence ~ U(0.6, 1.0) when right and U(0.4, 0.9) when wrong;
  the gold intent is the evaluation attribute.

The machine is shared (2 cores, other engineers' jobs running): every timing here is measured under
that load, and the estimate is calibrated under the same load at run time, which is what makes it
comparable. The load average at the start and the end of each run is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, SAMPLE, machine, write_results

from kern_finetune.config import RunConfig
from kern_finetune.refinery.export import load_export
from kern_finetune.pipeline import run_pipeline

CLINC = next((p / "shared" / "data" / "clinc150" for p in (ROOT.parent, ROOT.parent.parent)
              if (p / "shared" / "data" / "clinc150").exists()), ROOT.parent / "shared" / "data" / "clinc150")
"""Beside the repo (a git worktree sits one level deeper)."""
COMMAND = "python benchmarks/mode_auto.py --projects PROJECT"


def ag3000(seed: int) -> tuple[list[dict], dict]:
    records = load_export(SAMPLE)
    return random.Random(seed).sample(records, 3000), {"task": "Topic", "gold_attribute": "Class Index",
                                                      "text_attributes": ["Title", "Description"]}


def clinc(seed: int, per_intent: int = 30) -> tuple[list[dict], dict]:
    data = json.loads((CLINC / "data_full.json").read_text())
    domains = json.loads((CLINC / "domains.json").read_text())
    domain_of = {intent: d for d, intents in domains.items() for intent in intents}
    rng = random.Random(seed)
    rows = list(data["test"])
    rng.shuffle(rows)
    kept: dict[str, int] = {}
    rows = [r for r in rows if kept.setdefault(r[1], 0) < per_intent and not kept.__setitem__(r[1], kept[r[1]] + 1)]
    manual_left = {intent: 3 for intent in domain_of}
    records = []
    for i, (text, intent) in enumerate(rows):
        rec = {"running_id": str(i), "text": text, "gold_intent": intent, "__intent__MANUAL": None,
               "__intent__WEAK_SUPERVISION": None, "__intent__WEAK_SUPERVISION__confidence": None}
        if manual_left.get(intent, 0) > 0:
            manual_left[intent] -= 1
            rec["__intent__MANUAL"] = intent
        elif rng.random() < 0.6:
            if rng.random() < 0.8:
                rec["__intent__WEAK_SUPERVISION"] = intent
                rec["__intent__WEAK_SUPERVISION__confidence"] = f"{rng.uniform(0.6, 1.0):.4f}"
            else:
                others = [x for x in domains[domain_of[intent]] if x != intent]
                rec["__intent__WEAK_SUPERVISION"] = rng.choice(others)
                rec["__intent__WEAK_SUPERVISION__confidence"] = f"{rng.uniform(0.4, 0.9):.4f}"
        records.append(rec)
    return records, {"task": "intent", "gold_attribute": "gold_intent", "text_attributes": ["text"]}


def sample(seed: int) -> tuple[list[dict], dict]:
    return load_export(SAMPLE), {"task": "Topic", "gold_attribute": "Class Index", "text_attributes": ["Title", "Description"]}


PROJECTS = {"ag3000": ag3000, "clinc4500": clinc, "clinc1500": lambda seed: clinc(seed, per_intent=10), "sample": sample}


def _one(records: list[dict], opts: dict, budget: float, seed: int) -> dict:
    config = RunConfig(**opts, mode="auto", time_budget=budget, seed=seed)
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        m = run_pipeline(records, config, out_dir=Path(out), progress=print).metrics
    wall = time.perf_counter() - t
    choice = m["mode_choice"]
    est = choice["estimate"]
    row = {
        "budget": budget, "mode": choice["mode"], "reason": choice["reason"], "estimate": est,
        "estimated_s": est["seconds"], "calibration_s": est["calibration_seconds"],
        "n_records": m["n_records"], "n_train": m["n_train"], "wall_s": round(wall, 1),
        "load_start": round(load0, 2), "load_end": round(os.getloadavg()[0], 2),
        "top_k": {n: {k: m["top_k"][n][k] for k in ("10", "100", "1000") if k in m["top_k"][n]} for n in m["top_k"]},
    }
    if choice["mode"] == "full":
        row.update(measured_s=choice["measured_train_seconds"], steps=m["training"]["steps"],
                   planned_steps=est["steps"], stopped_early=m["training"]["stopped_early"],
                   ratio=choice["measured_train_seconds"] / est["seconds"])
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--projects", default="ag3000,clinc4500")
    ap.add_argument("--budget", type=float, default=RunConfig().time_budget)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    rows = []
    for name in args.projects.split(","):
        records, opts = PROJECTS[name](args.seed)
        print(f"=== {name}: {len(records)} records, budget {args.budget:.0f} s", flush=True)
        row = {"project": name, "machine": machine(), **_one(records, opts, args.budget, args.seed)}
        if row["mode"] != "full":  # check the estimate anyway: full mode with no budget
            print(f"=== {name}: auto chose head; running full mode (unlimited budget) to measure it", flush=True)
            row["forced_full"] = _one(records, opts, 1e9, args.seed)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "estimate"}, indent=1), flush=True)

    previous = RESULTS / "mode_auto.json"  # rows of other projects, measured by earlier invocations, are kept
    if previous.exists():
        done = {r["project"] for r in rows}
        rows = [r for r in json.loads(previous.read_text())["rows"] if r["project"] not in done] + rows
    lines = [
        f"Command: `{COMMAND}` (one invocation per project; seed {args.seed}, budget {args.budget:.0f} s). "
        f"Machine at the last run: {machine()}.",
        "",
        "Load average at the start and end of each row in its last column (2 cores; anything above ~2 means other "
        "jobs shared them). The estimate is calibrated at run time under the same load, before training.",
        "",
        "| project | records | auto chose | estimated full s | measured full s | measured / estimated | within ±30% "
        "| steps (planned) | calibration s | top_10 raw → tuned | top_100 raw → tuned | top_1k raw → tuned | load start/end |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = r if r["mode"] == "full" else r["forced_full"]
        tk = f["top_k"]

        def pair(k: str) -> str:
            return f"{tk['raw'][k]:.2f} → {tk['finetuned'][k]:.2f}" if k in tk["raw"] else "-"

        chose = r["mode"] + ("" if r["mode"] == "full" else f" (est. {r['estimated_s']:.0f} s; full measured with no budget)")
        lines.append(
            f"| {r['project']} | {r['n_records']} | {chose} | {f['estimated_s']:.0f} | {f['measured_s']:.0f} | "
            f"{f['ratio']:.2f} | {'yes' if abs(f['ratio'] - 1) <= 0.3 else 'no'} | {f['steps']} ({f['planned_steps']}) | "
            f"{f['calibration_s']:.0f} | {pair('10')} | {pair('100')} | {pair('1000')} | {f['load_start']} / {f['load_end']} |"
        )
    lines += ["", "Estimated = overhead + planned steps x calibrated step cost + validation passes + re-encoding every record "
              "(`kern_finetune/training/estimate.py`); measured = the pipeline's `train` stage in full mode (the same parts). "
              "top_k: test records among test records, as in `metrics.json`.", ""]
    write_results("mode_auto", {"command": COMMAND, "seed": args.seed, "budget": args.budget, "machine": machine(),
                                "rows": rows}, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
