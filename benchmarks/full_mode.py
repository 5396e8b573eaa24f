"""Full-encoder fine-tuning (``--mode full``) on the full bundled sample, through the real pipeline.

    python benchmarks/full_mode.py [--seeds 42]     -> benchmarks/results/full_mode.{json,md}

One epoch over the training texts on CPU (batch 32, encoder lr 3e-5, supcon t=0.5, label check),
then every record is re-encoded by the fine-tuned model and evaluated like any run. Slow on 2 cores
(minutes per seed); a GPU is used when present.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import os
import time
from pathlib import Path

import numpy as np
import torch

from _common import SAMPLE, machine, write_results

from kern_finetune.config import RunConfig
from kern_finetune.export import load_export
from kern_finetune.pipeline import run_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="42")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))  # 1 when two benchmarks share the 2 cores
    records = load_export(SAMPLE)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        config = RunConfig(task="Topic", gold_attribute="Class Index", text_attributes=["Title", "Description"],
                           mode="full", seed=seed)
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            m = run_pipeline(records, config, out_dir=Path(out), progress=print).metrics
            row = {"seed": seed, "top_1k_raw": m["top_k"]["raw"]["1000"], "top_1k": m["top_k"]["finetuned"]["1000"],
                   "top_1k_250": m["top_1k_250"]["finetuned"],
                   "probe_accuracy_raw": m["classification"]["raw"]["accuracy"],
                   "probe_accuracy": m["classification"]["finetuned"]["accuracy"],
                   "separation_2d": m["separation_2d"], "seconds": m["seconds"], "training": {
                       k: v for k, v in m["training"].items() if k != "history"},
                   "wall_seconds": time.perf_counter() - t}
        rows.append(row)
        print(json.dumps(row), flush=True)
    info = machine()
    lines = [f"Command: `python benchmarks/full_mode.py --seeds {args.seeds}`", "", f"Machine: {info}", "",
             "| seed | top_1k raw | top_1k full-encoder | probe acc raw | probe acc full | train s | total s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['top_1k_raw']:.2f} | {r['top_1k']:.2f} | {r['probe_accuracy_raw']:.2f} | "
                     f"{r['probe_accuracy']:.2f} | {r['seconds']['train']:.0f} | {r['seconds']['total']:.0f} |")
    if len(rows) > 1:
        lines.append(f"| mean | | {np.mean([r['top_1k'] for r in rows]):.2f} | | "
                     f"{np.mean([r['probe_accuracy'] for r in rows]):.2f} | | |")
    md = "\n".join(lines) + "\n"
    print(md)
    write_results("full_mode", {"command": f"python benchmarks/full_mode.py --seeds {args.seeds}", "machine": info,
                                "runs": rows}, md)


if __name__ == "__main__":
    main()
