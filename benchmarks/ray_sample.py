"""``kern-finetune run --ray-address local`` against the plain run on the whole bundled sample (issue 19).

Two runs of the CLI, defaults, ``--device cpu``: the plain one on a vector cache that already holds the
sample's base vectors (``--cache-dir``, default ``$KERN_FINETUNE_CACHE``), the Ray one on an empty cache, so
that every one of the 20,000 texts goes through Ray Data (a local Ray runtime on this machine's CPUs). Then:
the base vectors of both caches, record by record (cosine); the pushed vectors (``vectors.npz``); and
``metrics.json``'s figures (top_k, classification, the split; ``top_1k_250`` too until the prune of issue 31
removed it from the metrics, commit 3cc078b and earlier). A third, plain run on the Ray
run's cache must encode nothing.

    python benchmarks/ray_sample.py [--cache-dir DIR] [--work DIR]

Writes ``benchmarks/results/ray_sample.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, SAMPLE, machine, write_results

from kern_finetune.config import default_cache_dir
from kern_finetune.vectors.encode import Encoder
from kern_finetune.refinery.export import load_export, resolve_task
from kern_finetune.labels.select import select_labels
from kern_finetune.output.save import load_vectors

COMMAND = "python benchmarks/ray_sample.py"
FIGURES = ("top_k", "classification", "n_train", "n_val", "n_test")


def run(out: Path, cache: Path, *extra: str) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "kern_finetune", "run", "--export", str(SAMPLE), "--task", "Topic",
           "--gold-attribute", "Class Index", "--text-attributes", "Title,Description", "--device", "cpu", "--mode", "head", "--cache-dir", str(cache), "--out", str(out), *extra]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - t


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    ap.add_argument("--work", type=Path, default=Path("/tmp/ray_sample"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    raycache = args.work / "raycache"
    plain_m, plain_s = run(args.work / "plain", args.cache_dir)
    ray_m, ray_s = run(args.work / "ray", raycache, "--ray-address", "local")
    again_m, again_s = run(args.work / "again", raycache)

    records = load_export(SAMPLE)
    texts = select_labels(records, resolve_task(records, "Topic"), text_attributes=["Title", "Description"]).texts
    base_plain = Encoder(cache_dir=args.cache_dir).encode(texts, progress=False)
    base_ray = Encoder(cache_dir=raycache).encode(texts, progress=False)
    cos_base = cosines(base_plain, base_ray)
    ids_p, vec_p = load_vectors(args.work / "plain" / "vectors.npz")
    ids_r, vec_r = load_vectors(args.work / "ray" / "vectors.npz")
    cos_out = cosines(vec_p, vec_r)
    same = {k: plain_m.get(k) == ray_m.get(k) for k in FIGURES}
    result = {
        "command": COMMAND, "machine": machine(),
        "plain": {"encoded": plain_m["encoded"], "from_cache": plain_m["from_cache"], "seconds": round(plain_s, 1),
                  "encode_seconds": plain_m["seconds"]["encode"]},
        "ray": {"encoded": ray_m["encoded"], "from_cache": ray_m["from_cache"], "seconds": round(ray_s, 1),
                "encode_seconds": ray_m["seconds"]["encode"]},
        "again": {"encoded": again_m["encoded"], "from_cache": again_m["from_cache"], "seconds": round(again_s, 1)},
        "base_cosine_min": float(cos_base.min()), "base_cosine_mean": float(cos_base.mean()),
        "vectors_same_ids": ids_p == ids_r, "vectors_cosine_min": float(cos_out.min()),
        "vectors_max_abs_diff": float(np.abs(vec_p - vec_r).max()), "figures_equal": same,
        "top_k_plain": plain_m["top_k"]["finetuned"], "top_k_ray": ray_m["top_k"]["finetuned"],
        "smoothing": {"plain": plain_m.get("smoothing", {}).get("weight"), "ray": ray_m.get("smoothing", {}).get("weight")},
    }
    md = [f"Command: `{COMMAND}`", "", f"Machine: {result['machine']}", "",
          "| | plain | `--ray-address local` | plain again, on the Ray run's cache |", "|---|---|---|---|",
          f"| encoded / from cache | {plain_m['encoded']} / {plain_m['from_cache']} | {ray_m['encoded']} / {ray_m['from_cache']} "
          f"| {again_m['encoded']} / {again_m['from_cache']} |",
          f"| encode stage s | {plain_m['seconds']['encode']} | {ray_m['seconds']['encode']} | {again_m['seconds']['encode']} |",
          f"| whole run s (CLI, incl. start-up) | {plain_s:.1f} | {ray_s:.1f} | {again_s:.1f} |",
          f"| base vectors vs plain, cosine min / mean over {len(texts):,} | | {cos_base.min():.7f} / {cos_base.mean():.7f} | |",
          f"| pushed vectors vs plain: cosine min, max abs difference | | {cos_out.min():.7f}, {np.abs(vec_p - vec_r).max():.1e} | |",
          f"| smoothing weight chosen | {result['smoothing']['plain']} | {result['smoothing']['ray']} | |",
          f"| {', '.join(FIGURES)} equal to plain | | {', '.join(k for k, v in same.items() if v) or 'none'}"
          f"{'' if all(same.values()) else ' (differ: ' + ', '.join(k for k, v in same.items() if not v) + ')'} | |",
          "", f"top_k plain: {plain_m['top_k']['finetuned']}; Ray: {ray_m['top_k']['finetuned']}.",
          "Seconds: whatever else ran on the 2 cores at the time (the machine line gives the load at the start)."]
    write_results("ray_sample", result, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
