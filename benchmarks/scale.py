"""How every stage grows with the project: synthetic projects of 20k to 200k records (issue 19).

    python benchmarks/scale.py                                 # 20k, 50k, 100k, 200k records
    python benchmarks/scale.py --sizes 20000 50000 --no-host   # smaller, reading the export from a file

The projects are built from the bundled sample (samples/ag_news, 20,000 records): copy ``c`` of a sample
record gets ``running_id`` ``c * 20000 + its id`` and **the original's labels unchanged** (manual label,
weak label and confidence, gold ``Class Index``), copies in the sample's order until the size is reached
(50,000 = two whole copies and the first 10,000 records of a third). So the share of labeled, manual and
test records is the sample's, and every text is one of the sample's 20,000: the vector cache holds them,
and every stage except encoding is measured (encoding is a cache lookup here). Each text appears
size/20,000 times, so a record's nearest neighbours include its copies (the purity figures are not
comparable to the sample's; only the costs are the point).

Each size runs in its own process, one thread (``OMP_NUM_THREADS=1``, torch 1 thread), one after the
other. Per stage: wall time and peak resident memory (Linux ``VmHWM``, reset at the start of each stage by
writing 5 to ``/proc/self/clear_refs``; it includes what earlier stages still hold). Stages:

- ``read``: the export file decoded (``kern_finetune.refinery.export.load_export``, what ``run --export`` does);
- ``pull``: the same project fetched over HTTP from the product's local host (``kern_finetune.host``, in
  its own process) with ``RefineryClient.get_export``; the pipeline runs on the pulled records;
- ``select``: :func:`kern_finetune.labels.prepare.prepare` (as ``sync`` calls it); ``encode`` .. ``write``:
  :func:`kern_finetune.pipeline.run_pipeline` itself, given that preparation, head mode (defaults, but
  3 epochs (:data:`EPOCHS`) and pseudo-labels on at 0.9 so that the stage is measured), its stages split at
  its progress messages (``write`` includes the report).

Nothing goes back to the host: the vectors stay in the run's output (refinery's embedder computes its own
from a model folder through the model door; ``benchmarks/resync.py`` times that loop on the sample), so no
stage follows ``write``. The committed ``benchmarks/results/scale*.{json,md}`` come from an earlier version
of this benchmark and list one more stage after ``write``, which a run today does not have.

Writes ``benchmarks/results/scale.{json,md}``, with a projection to 1M and 10M records.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "ag_news" / "export.json.gz"
RESULTS = ROOT / "benchmarks" / "results"
SIZES = (20_000, 50_000, 100_000, 200_000)
PSEUDO = "0.9"
EPOCHS = 3
"""Head training epochs, fixed (early stopping could end sooner; here it did not): an epoch's cost is what grows
with the project, and the default 30 would make the 200k run take hours on 2 loaded cores."""
PASSWORD = "scale-benchmark-password"  # the throwaway local host's login; nothing else uses it
USER = "scale@example.org"
ASSUMED_GPU_TEXTS_PER_S = 5_000
"""Encoding throughput per GPU that the projection assumes: issue 19's target, NOT a measurement (no GPU was
lent to the session that wrote this)."""
CPU_TEXTS_PER_S = 130
"""Encoding throughput on this machine's 2 CPU cores, measured in issue 19 (131 texts/s, kern-finetune's Encoder)."""

# The pipeline's progress messages that open a stage (kern_finetune/pipeline.py); ``select`` is timed around
# kern_finetune.labels.prepare.prepare, called here as sync calls it and handed to the pipeline.
_MARKS = (
    (lambda m: m.startswith("[2/5]"), "encode"),
    (lambda m: "encoded," in m and "from cache" in m, "label_check"),
    (lambda m: "label check:" in m, "pseudo_labels"),
    (lambda m: m.startswith("[3/5]"), "train"),
    (lambda m: m.startswith("[4/5]"), "evaluate"),
    (lambda m: m.startswith("[5/5]"), "write"),
)


# ---------------------------------------------------------------- memory and stage timing (child process)


def _hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class Stages:
    """Wall time and peak RSS per stage: ``start(name)`` closes the open stage and opens the next."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}
        self._open: tuple[str, float, int] | None = None

    def start(self, name: str | None) -> None:
        now = time.perf_counter()
        if self._open is not None:
            prev, t0, rss0 = self._open
            self.rows[prev] = {"seconds": round(now - t0, 3), "peak_rss_mb": round(_hwm_kb() / 1024, 1),
                               "rss_at_start_mb": round(rss0 / 1024, 1)}
        self._open = None
        if name is not None:
            _reset_hwm()
            self._open = (name, time.perf_counter(), _rss_kb())

    def progress(self, message: str) -> None:
        text = message.strip()
        for test, name in _MARKS:
            if test(text):
                self.start(name)
                break


# ---------------------------------------------------------------- the synthetic project


def build_export(n: int, path: Path) -> dict[str, int]:
    """Write an export of ``n`` records made of copies of the sample's (labels copied, ids renumbered)."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        sample = json.load(fh)
    base = len(sample)
    out = []
    for i in range(n):
        copy, rec = divmod(i, base)
        row = dict(sample[rec])
        row["running_id"] = str(copy * base + int(row["running_id"]))
        out.append(row)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as fh:
        json.dump(out, fh)
    return {"records": n, "copies": math.ceil(n / base), "distinct_texts": min(n, base)}


def _serve(export: str, data_dir: str) -> None:
    """``--serve``: run the local host for ``export`` until stdin closes; print its URL and project id."""
    from kern_finetune.host import serve_in_thread

    with serve_in_thread(export, data_dir=data_dir, user_name=USER, password=PASSWORD) as host:
        print(json.dumps({"url": host.url, "project_id": host.project_id}), flush=True)
        sys.stdin.read()


def run_one(n: int, work: Path, *, use_host: bool) -> dict[str, Any]:
    """One synthetic project, every stage timed (this process: one size)."""
    import torch

    from kern_finetune.config import RunConfig
    from kern_finetune.refinery.export import load_export
    from kern_finetune.pipeline import run_pipeline
    from kern_finetune.labels.prepare import prepare

    torch.set_num_threads(1)
    export = work / f"export-{n}.json.gz"
    t = time.perf_counter()
    info = build_export(n, export)
    info["build_seconds"] = round(time.perf_counter() - t, 1)
    stages = Stages()

    stages.start("read")
    records = load_export(export)
    stages.start(None)
    n_read = len(records)

    if use_host:
        del records
        host = subprocess.Popen([sys.executable, __file__, "--serve", str(export), str(work / f"host-{n}")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(host.stdout.readline())  # waits while the host imports the export (not measured)
        from kern_finetune.refinery.api import RefineryClient

        client = RefineryClient(ready["url"], USER, PASSWORD, timeout=600, retries=1, project_id=ready["project_id"])
        client.login()
        stages.start("pull")
        records = client.get_export()
        stages.start(None)
        assert len(records) == n_read == n, (len(records), n_read, n)
        host.stdin.close()  # the pull was the host's only job
        host.wait(timeout=120)

    config = RunConfig(task="Topic", text_attributes=["Title", "Description"], gold_attribute="Class Index",
                       mode="head", pseudo_labels=PSEUDO, epochs=EPOCHS, device="cpu", cache_dir=Path(os.environ["KERN_FINETUNE_CACHE"]))
    stages.start("select")
    prepared = prepare(records, config)
    stages.start(None)
    result = run_pipeline(records, config, out_dir=work / f"out-{n}", progress=stages.progress, prepared=prepared)
    stages.start(None)
    m = result.metrics

    return {
        "n_records": n, "project": info, "stages": stages.rows,
        "counts": {"n_train": m["n_train"], "n_val": m["n_val"], "n_test": m["n_test"],
                   "encoded": m["encoded"], "from_cache": m["from_cache"],
                   "top_k_queries": m.get("top_k_queries"), "epochs_run": m["training"].get("epochs_run"),
                   "label_check_n_fit": m.get("label_check", {}).get("n_fit"),
                   "label_check_n_checked": m.get("label_check", {}).get("n_checked"),
                   "pseudo_n_fit": m.get("pseudo_labels", {}).get("n_fit"),
                   "pseudo_added": m.get("pseudo_labels", {}).get("n_added"),
                   "projection_fit": m.get("projection_fit")},
        "top_k_1000_finetuned": m["top_k"]["finetuned"].get("1000"),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in stages.rows.values()), 1),
    }


# ---------------------------------------------------------------- driver


def _child(n: int, work: Path, use_host: bool) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--one", str(n), "--work", str(work)] + ([] if use_host else ["--no-host"])
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"size {n} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["process_seconds"] = round(time.perf_counter() - t, 1)
    return row


def per_record_us(row: dict[str, Any]) -> dict[str, float]:
    return {name: round(1e6 * s["seconds"] / row["n_records"], 1) for name, s in row["stages"].items()}


def projection(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds per stage at 1M and 10M records from the largest measured size's per-record costs."""
    big = max(rows, key=lambda r: r["n_records"])
    per = {name: s["seconds"] / big["n_records"] for name, s in big["stages"].items() if name != "encode"}
    small = min(rows, key=lambda r: r["n_records"])
    kb_per_record = 1024 * (big["peak_rss_mb"] - small["peak_rss_mb"]) / max(1, big["n_records"] - small["n_records"])
    out: dict[str, Any] = {"from_size": big["n_records"], "assumed_gpu_texts_per_s": ASSUMED_GPU_TEXTS_PER_S,
                           "cpu_texts_per_s": CPU_TEXTS_PER_S, "peak_rss_kb_per_record": round(kb_per_record, 2), "rows": []}
    for n in (1_000_000, 10_000_000):
        other = sum(per.values()) * n
        peak_gb = (big["peak_rss_mb"] + kb_per_record * (n - big["n_records"]) / 1024) / 1024
        for gpus in (0, 1, 4, 8):
            encode = n / (CPU_TEXTS_PER_S if gpus == 0 else ASSUMED_GPU_TEXTS_PER_S * gpus)
            out["rows"].append({"records": n, "gpus": gpus, "encode_s": round(encode), "other_stages_s": round(other),
                                "total_h": round((encode + other) / 3600, 2), "peak_rss_gb": round(peak_gb, 1)})
    return out


UNDER_LOAD = "**Measured under load**: 2 CPU cores shared with six other engineers' work."


def markdown(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    names = list(rows[0]["stages"])
    lines = ["# Scale: every stage from 20k to 200k records", "",
             f"Command: `{payload['command']}` ({payload['date']}, {payload['machine']}). "
             + payload.get("conditions", UNDER_LOAD) + " Each size ran in its own process on one thread. "
             "How the projects are built and what each stage covers: the docstring of `benchmarks/scale.py`.", "",
             "## Wall time per stage (s) and per record (µs)", "",
             "| stage | " + " | ".join(f"{r['n_records']:,} s | µs/rec" for r in rows) + " | µs/rec, largest / smallest |",
             "|---|" + "---|---|" * len(rows) + "---|"]
    for name in names:
        cells = []
        for r in rows:
            s = r["stages"].get(name, {}).get("seconds")
            cells.append("-" if s is None else f"{s:.1f}")
            cells.append("-" if s is None else f"{1e6 * s / r['n_records']:.0f}")
        a, b = (rows[0]["stages"].get(name, {}).get("seconds"), rows[-1]["stages"].get(name, {}).get("seconds"))
        ratio = "-" if not a or b is None else f"{(b / rows[-1]['n_records']) / (a / rows[0]['n_records']):.2f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    train_rows = []
    for r in rows:
        c = r["counts"]
        rows_trained = (c["n_train"] + (c.get("pseudo_added") or 0)) * (c.get("epochs_run") or 1)
        train_rows.append(1e6 * r["stages"]["train"]["seconds"] / rows_trained if rows_trained else float("nan"))
    lines.append("| train, per epoch x training row (incl. pseudo-labels) | " + " | ".join(
        f"| {v:.0f}" for v in train_rows) + f" | {train_rows[-1] / train_rows[0]:.2f} |")
    lines += ["", "Stages whose fit is capped (`label_check`, `pseudo_labels`; the 2D views inside `evaluate`) cost "
              "the same fit at every size above the cap plus a linear prediction, so their per-record time falls; "
              "`evaluate` is linear above 10,000 test records (capped queries, every test record searched).", ""]
    lines += ["", "## Peak resident memory per stage (MB; includes what earlier stages still hold)", "",
              "| stage | " + " | ".join(f"{r['n_records']:,}" for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{r['stages'].get(name, {}).get('peak_rss_mb', '-')}" for r in rows) + " |")
    lines.append("| **whole run** | " + " | ".join(f"**{r['peak_rss_mb']}**" for r in rows) + " |")
    lines += ["", "## Counts", "", "| | " + " | ".join(f"{r['n_records']:,}" for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for key in rows[0]["counts"]:
        lines.append(f"| {key} | " + " | ".join(f"{r['counts'].get(key)}" for r in rows) + " |")
    p = payload["projection"]
    lines += ["", "## Projection to 1M and 10M records", "",
              f"Per-record cost of every stage but encoding from the {p['from_size']:,}-record run, times the size "
              f"(one process, one CPU thread, under load). Encoding: {p['cpu_texts_per_s']} texts/s on this machine's 2 CPU "
              f"cores (measured, issue 19), or **an assumed {p['assumed_gpu_texts_per_s']:,} texts/s per GPU** (issue 19's "
              "target; not measured: no GPU was lent), N GPUs in parallel with Ray (`--ray-address`). Stages other than "
              "encoding are taken as they run today, on one machine.", "",
              f"Peak memory: the measured growth from the smallest to the largest run, {p['peak_rss_kb_per_record']} KB "
              "per record (records, base and fine-tuned vectors), extrapolated: above about "
              "500,000 records a run needs more than 8 GB; at 10M the vectors alone (2 x 10M x 384 float32) are 31 GB.", "",
              "| records | GPUs | encode (s) | other stages (s) | total (h) | peak RSS (GB, extrapolated) |",
              "|---|---|---|---|---|---|"]
    for r in p["rows"]:
        lines.append(f"| {r['records']:,} | {r['gpus'] or 'none (2 CPU cores)'} | {r['encode_s']:,} | {r['other_stages_s']:,} "
                     f"| {r['total_h']} | {r.get('peak_rss_gb', '-')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--no-host", action="store_true", help="skip the pull (no local host)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the existing .json")
    ap.add_argument("--out", default="scale", help="results name under benchmarks/results (default scale)")
    ap.add_argument("--conditions", help="how the machine was while it ran (default: the first run's words, under load)")
    a = ap.parse_args()
    if a.markdown_only:  # rewrite the .md from the committed .json
        payload = json.loads((RESULTS / f"{a.out}.json").read_text())
        if a.conditions:
            payload["conditions"] = a.conditions
        payload["projection"] = projection(payload["rows"])
        (RESULTS / f"{a.out}.json").write_text(json.dumps(payload, indent=2))
        (RESULTS / f"{a.out}.md").write_text(markdown(payload))
        return
    if a.serve:
        _serve(*a.serve)
        return
    if a.one:
        print(json.dumps(run_one(a.one, a.work, use_host=not a.no_host)))
        return
    os.environ.setdefault("KERN_FINETUNE_CACHE", str(Path.home() / ".cache" / "kern-finetune"))
    rows: list[dict[str, Any]] = []
    for n in a.sizes:  # results are rewritten after every size, so a long run leaves what it measured
        with tempfile.TemporaryDirectory(prefix=f"scale-{n}-") as tmp:
            row = _child(n, Path(tmp), not a.no_host)
        rows = sorted(rows + [row], key=lambda r: r["n_records"])
        print(json.dumps({"n": n, "peak_rss_mb": row["peak_rss_mb"], "per_record_us": per_record_us(row)}), flush=True)
        write(rows, a.out)


def write(rows: list[dict[str, Any]], name: str) -> None:
    import platform

    payload = {
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
        "rows": rows, "per_record_us": {r["n_records"]: per_record_us(r) for r in rows},
        "projection": projection(rows),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown(payload))


if __name__ == "__main__":
    main()
