"""Per-epoch time of the head's training with many classes against few, at the same number of records (issue 30, item 5).

    python benchmarks/many_classes.py                       # 4,000 records: 4 vs 2,000 classes
    python benchmarks/many_classes.py --classes 4 200 2000 --epochs 5 --repeats 3 --no-before

Each project has ``--records`` labeled records whose base vectors are random unit vectors (``--dim``, the
base model's 384), the classes of equal size (2,000 classes = 2 labels each), split into training and
validation as the pipeline splits them (:func:`kern_finetune.labels.select.split_train_val`, a quarter for
validation). The head trains with the run's defaults (:func:`kern_finetune.training.train.head_trainer` of a default
:class:`~kern_finetune.config.RunConfig`: supcon, batches of 256) for ``--epochs`` epochs with early stopping
off (patience = epochs), in this one process, one torch thread, the class counts taking turns within each
repeat; the figure is the median over repeats of the fit's wall time divided by its epochs (sampling,
training steps and the validation loss; the head's set-up is included and small).

``before`` rows (unless ``--no-before``) train with the sampler as it was before this benchmark's fix: every
class in every batch, so a batch of 2,000 classes held two rows of each, as many rows as the training set.
The ratio asked for (issue 30): per-epoch time at 2,000 classes within 5x of 4 classes.

Writes ``benchmarks/results/many_classes.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._common import machine, write_results  # noqa: E402
from kern_finetune.training import train  # noqa: E402
from kern_finetune.config import RunConfig  # noqa: E402
from kern_finetune.labels.select import split_train_val  # noqa: E402


def every_class_in_every_batch(y: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The sampler before the fix, verbatim: every class in every batch (``before`` rows)."""
    classes = np.unique(y)
    per_class = max(2, batch_size // len(classes))
    pools = {c: rng.permutation(np.flatnonzero(y == c)) for c in classes}
    cursor = {c: 0 for c in classes}
    n_batches = max(1, int(np.ceil(len(y) / batch_size)))
    batches = []
    for _ in range(n_batches):
        parts = []
        for c in classes:
            pool = pools[c]
            take = min(per_class, len(pool))
            if cursor[c] + take > len(pool):
                pools[c] = pool = rng.permutation(pool)
                cursor[c] = 0
            parts.append(pool[cursor[c] : cursor[c] + take])
            cursor[c] += take
        batches.append(rng.permutation(np.concatenate(parts)))
    return batches


def project(n_records: int, n_classes: int, dim: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_records, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.permutation(np.arange(n_records) % n_classes)
    tr, va = split_train_val(np.arange(n_records), 0.25, 42)
    return x[tr], y[tr], x[va], y[va]


def epoch_seconds(data: tuple[np.ndarray, ...], epochs: int, *, before: bool) -> tuple[float, float]:
    """Seconds per epoch of one fit, and its last validation loss."""
    config = RunConfig(epochs=epochs, patience=epochs)
    trainer = train.head_trainer(config, progress=False)
    sampler = train.class_aware_batches
    if before:
        train.class_aware_batches = every_class_in_every_batch  # type: ignore[assignment]
    try:
        t = time.perf_counter()
        trainer.fit(*data)
        seconds = time.perf_counter() - t
    finally:
        train.class_aware_batches = sampler  # type: ignore[assignment]
    return seconds / trainer.result_.epochs_run, trainer.result_.history[-1]["val_loss"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=4000)
    ap.add_argument("--classes", type=int, nargs="+", default=[4, 2000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--before-epochs", type=int, default=1, help="epochs of the (slow) before rows")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-before", action="store_true", help="skip the rows with the sampler before the fix")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = {k: project(args.records, k, args.dim) for k in args.classes}
    epoch_seconds(data[args.classes[0]], 1, before=False)  # warm-up: torch's first calls
    variants = [("after", False)] + ([] if args.no_before else [("before", True)])
    times: dict[tuple[str, int], list[float]] = {}
    losses: dict[tuple[str, int], float] = {}
    for _ in range(args.repeats):
        for name, before in variants:
            for k in args.classes:
                per_epoch, val = epoch_seconds(data[k], args.before_epochs if before else args.epochs, before=before)
                times.setdefault((name, k), []).append(per_epoch)
                losses[(name, k)] = val
                print(f"{name:6s} {k:5d} classes: {per_epoch:.3f} s/epoch", flush=True)
    rows = []
    for name, _ in variants:
        base = statistics.median(times[(name, args.classes[0])])
        for k in args.classes:
            med = statistics.median(times[(name, k)])
            rows.append({"sampler": name, "classes": k, "records": args.records, "s_per_epoch": round(med, 4),
                         "runs": [round(t, 4) for t in times[(name, k)]], "ratio": round(med / base, 2),
                         "last_val_loss": round(losses[(name, k)], 4)})
    command = "python benchmarks/many_classes.py " + " ".join(sys.argv[1:])
    lines = [
        "# Head training time with many classes (issue 30, item 5)", "",
        f"Command: `{command.strip()}`", "",
        f"{args.records} labeled records, random unit vectors of {args.dim} dimensions, equal classes, the "
        "pipeline's train/validation split; the run's default head settings (supcon, batches of 256); one torch "
        f"thread; median of {args.repeats} repeats, class counts taking turns. `after`: "
        f"{args.epochs} epochs per fit; `before` (the sampler before the fix, every class in every batch): "
        f"{args.before_epochs}. Ratio: against the first class count of the same sampler.", "",
        "| sampler | classes | s per epoch | ratio | runs |", "|---|---:|---:|---:|---|",
    ]
    lines += [f"| {r['sampler']} | {r['classes']} | {r['s_per_epoch']:.3f} | {r['ratio']:.1f}x | "
              f"{', '.join(f'{t:.3f}' for t in r['runs'])} |" for r in rows]
    info = machine()
    lines += ["", f"Machine: {info['cpus']} CPUs, load {info['load_1min_at_start']} at the start, "
              f"Python {info['python']}, commit {info['commit']}, {info['date']}.", ""]
    markdown = "\n".join(lines)
    print(markdown)
    write_results("many_classes", {"command": command.strip(), "machine": info, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
