"""Quaterion engine vs native engine on the experiment's AG News splits (frozen MiniLM + head).

Loads ``train_weak.csv`` / ``val_weak.csv`` (training labels) and ``rest_gold.csv`` (gold test labels)
from the shared data, encodes ``Title + ". " + Description`` through :class:`kern_finetune.encode.Encoder`
(disk-cached), trains the same head with the same settings on both engines and reports neighbour purity
(top_k, all test queries) for the raw vectors and both heads, plus epochs and seconds.

By default it uses a random subset (``--train/--val/--test`` rows, seed 42) so it stays cheap on a shared
CPU; ``--full`` uses every row (encodes ~20k texts once, then trains in minutes).

    python benchmarks/quaterion_parity.py --train 1000 --val 300 --test 1500 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kern_finetune.config import default_cache_dir
from kern_finetune.encode import Encoder
from kern_finetune.evaluate import top_k_purity

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ag_news" / "kern_refinery"
KS = (5, 10, 25, 50, 100, 250, 1000)


def load_split(path: Path, limit: int | None, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts and label names of one split, optionally a seeded random subset of ``limit`` rows."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if limit is not None and limit < len(rows):
        idx = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
        rows = [rows[i] for i in idx]
    texts = [f"{r['title']}. {r['description']}" for r in rows]
    return texts, np.array([r["label_name"] for r in rows])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--val", type=int, default=300)
    ap.add_argument("--test", type=int, default=1500)
    ap.add_argument("--full", action="store_true", help="use every row of every split")
    ap.add_argument("--loss", default="triplet", help="a loss both engines know (triplet, triplet-semihard, supcon, cosface)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    lim = (lambda n: None) if args.full else (lambda n: n)
    splits = {
        "train": load_split(args.data / "train_weak.csv", lim(args.train), args.seed),
        "val": load_split(args.data / "val_weak.csv", lim(args.val), args.seed),
        "test": load_split(args.data / "rest_gold.csv", lim(args.test), args.seed),
    }
    classes = sorted(set().union(*(set(y) for _, y in splits.values())))
    encoder = Encoder(cache_dir=default_cache_dir())
    t0 = time.perf_counter()
    vec = {name: encoder.encode(texts, progress=False) for name, (texts, _) in splits.items()}
    lab = {name: np.searchsorted(classes, y) for name, (_, y) in splits.items()}
    encode_s = time.perf_counter() - t0

    def score(x: np.ndarray) -> dict[str, float]:
        return {k: round(v, 2) for k, v in top_k_purity(x, lab["test"], KS).items()}

    def apply(head: torch.nn.Module, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.nn.functional.normalize(head(torch.from_numpy(x)), dim=1).numpy()

    result: dict[str, Any] = {
        "sizes": {k: len(v) for k, v in vec.items()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("data", "out")},
        "encode_seconds": round(encode_s, 1),
        "raw": {"top_k": score(vec["test"])},
    }

    from kern_finetune.train import HeadTrainer

    native = HeadTrainer(
        loss=args.loss, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
        seed=args.seed, progress=False,
    ).fit(vec["train"], lab["train"], vec["val"], lab["val"])
    result["native"] = {"top_k": score(apply(native.head_, vec["test"])), **native.info()}

    t0 = time.perf_counter()
    from kern_finetune.train_quaterion import fit_quaterion

    import_s = time.perf_counter() - t0
    head, info = fit_quaterion(
        vec["train"], lab["train"], vec["val"], lab["val"], loss=args.loss, lr=args.lr, batch_size=args.batch_size,
        max_epochs=args.epochs, patience=args.patience, seed=args.seed, progress=False,
    )
    info.pop("history")
    result["quaterion"] = {"top_k": score(apply(head, vec["test"])), "import_seconds": round(import_s, 1), **info}

    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
