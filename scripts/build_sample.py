"""Build ``samples/ag_news/export.json.gz`` from the experiment's published AG News splits.

Run from the repository root (``make sample``)::

    python scripts/build_sample.py --shared ../shared

The output is a refinery record export (``GET /api/project/{id}/export``, decoded once): a JSON list
with one object per record, every attribute value a string. What is real and what is synthesized is
written down in ``samples/README.md``; this script is the only place that decides it.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
from pathlib import Path

LABELS = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}
N_MANUAL = 261
SEED = 2022
TASK = "Topic"


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def build(shared: Path) -> list[dict[str, str | None]]:
    base = shared / "data" / "ag_news" / "kern_refinery"
    train = _read(base / "train_weak.csv") + _read(base / "val_weak.csv")
    rest = _read(base / "rest_gold.csv")
    audit = {(r["title"], r["description"]): r["gold_label"] for r in _read(base / "weak_label_audit.csv")}
    rng = random.Random(SEED)

    manual_idx = set(rng.sample(range(len(train)), N_MANUAL))
    rows: list[dict[str, str | None]] = []
    for i, r in enumerate(train):
        label = LABELS[r["label"]]
        row: dict[str, str | None] = {
            "Title": r["title"],
            "Description": r["description"],
            # Gold is known only for the 927 training records that also appear in NoisyAG-News.
            "Class Index": audit.get((r["title"], r["description"])),
            f"__{TASK}__MANUAL": label if i in manual_idx else None,
            f"__{TASK}__WEAK_SUPERVISION": label,
            # Synthetic: the published data has no confidences; > 0.7 is what put it in training.
            f"__{TASK}__WEAK_SUPERVISION__confidence": f"{rng.uniform(0.7001, 1.0):.4f}",
        }
        if i in manual_idx:
            # Weak supervision also scored the hand-labelled records; any confidence is possible there.
            row[f"__{TASK}__WEAK_SUPERVISION__confidence"] = f"{rng.uniform(0.3, 1.0):.4f}"
        rows.append(row)
    for r in rest:
        gold = r["label"]
        # Synthetic, calibrated weak label: right with probability equal to its confidence.
        conf = round(rng.uniform(0.25, 0.7), 4)
        if rng.random() < conf:
            weak = gold
        else:
            weak = rng.choice([k for k in LABELS if k != gold])
        rows.append(
            {
                "Title": r["title"],
                "Description": r["description"],
                "Class Index": gold,
                f"__{TASK}__MANUAL": None,
                f"__{TASK}__WEAK_SUPERVISION": LABELS[weak],
                f"__{TASK}__WEAK_SUPERVISION__confidence": f"{conf:.4f}",
            }
        )
    rng.shuffle(rows)  # a real project interleaves easy and hard records
    out = []
    for i, row in enumerate(rows):
        out.append({"running_id": str(i), **row})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path("../shared"), help="path to the shared/ folder")
    ap.add_argument("--out", type=Path, default=Path("samples/ag_news/export.json.gz"))
    args = ap.parse_args()
    records = build(args.shared)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(records, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    # mtime=0 keeps the file byte-identical across rebuilds.
    with args.out.open("wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
        gz.write(data)
    n_manual = sum(1 for r in records if r[f"__{TASK}__MANUAL"])
    print(f"wrote {len(records)} records ({n_manual} manual) to {args.out}")


if __name__ == "__main__":
    main()
