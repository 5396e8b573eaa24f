"""Wall-clock of the user-facing commands on the full bundled sample, cold cache then warm cache.

    python benchmarks/e2e.py [--commands run demo]

Runs, each in a fresh process with a fresh vector cache for the cold runs:
  1. ``kern-finetune run`` (cold: encodes all 20,000 records), 2. the same again (warm: cache),
  3. ``kern-finetune demo --json`` (cold), 4. the same again (warm).
Writes ``benchmarks/results/e2e.{json,md}`` (``e2e_demo`` when only the demo runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine, write_results

CLI = [str(ROOT / ".venv" / "bin" / "kern-finetune")]
RUN = ["run", "--export", "samples/ag_news/export.json.gz", "--task", "Topic", "--gold-attribute", "Class Index", "--json"]


def timed(args: list[str], cache: Path, out: Path) -> tuple[float, dict]:
    env = {**os.environ, "KERN_FINETUNE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    proc = subprocess.run(CLI + args + ["--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return seconds, json.loads(last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", nargs="+", choices=("run", "demo"), default=["run", "demo"])
    commands = ap.parse_args().commands
    name_of_results = "e2e" if commands == ["run", "demo"] else "e2e_" + "_".join(commands)
    command_line = "python benchmarks/e2e.py" + ("" if name_of_results == "e2e" else " --commands " + " ".join(commands))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for name, args in [c for c in (("run", RUN), ("demo", ["demo", "--json"])) if c[0] in commands]:
            cache = tmp_path / f"cache-{name}"
            for phase in ("cold", "warm"):
                seconds, result = timed(args, cache, tmp_path / f"out-{name}-{phase}")
                row = {"command": "kern-finetune " + " ".join(args), "cache": phase, "seconds": round(seconds, 1), "result": result}
                rows.append(row)
                print(json.dumps(row), flush=True)
    write(rows, command_line, name_of_results)


def write(rows: list[dict], command_line: str, name_of_results: str) -> None:
    """The results files of ``rows`` (as ``main`` prints them, one JSON line each)."""
    info = machine()
    lines = [f"Command: `{command_line}`", "", f"Machine: {info}", "", "| command | cache | wall s | headline |", "|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        if "seconds" in res:  # a run's metrics line; the demo's line has its own keys
            head = f"top_1k {res['top_k']['raw']['1000']:.2f} -> {res['top_k']['finetuned']['1000']:.2f}; seconds {res['seconds']}"
        else:
            head = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()
                             if k in ("top_1k_raw", "top_1k_finetuned", "search_same_class_raw", "search_same_class_finetuned",
                                      "search_precision_raw", "search_precision_finetuned", "embedding"))
        lines.append(f"| `{r['command']}` | {r['cache']} | {r['seconds']} | {head} |")
    md = "\n".join(lines) + "\n"
    print(md)
    write_results(name_of_results, {"command": command_line, "machine": info, "runs": rows}, md)


if __name__ == "__main__":
    main()
