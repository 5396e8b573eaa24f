"""Build ``tests/data/ag_news_snapshot_small.zip`` from the real refinery snapshot in shared/.

Run from the repository root::

    python scripts/make_snapshot_fixture.py --src ../shared/data/refinery_snapshots/ag_news.zip

Keeps 200 of the 3,000 records (every 2nd record with a manual ``topic`` label up to 60, the rest
drawn with a fixed seed) and every table row that refers to them; the stock embedding's tensors are
rounded to 4 places to keep the file small. The tests read only the result, never shared/.
"""

from __future__ import annotations

import argparse
import json
import random
import zipfile
from pathlib import Path

N_RECORDS = 200
N_MANUAL = 60
SEED = 7


def build(src: Path) -> tuple[str, dict]:
    with zipfile.ZipFile(src) as zf:
        member = zf.namelist()[0]
        data = json.loads(zf.read(member))
    topic = next(t["id"] for t in data["labeling_tasks_data"] if t["name"] == "topic")
    topic_labels = {lab["id"] for lab in data["labeling_task_labels_data"] if lab["labeling_task_id"] == topic}
    manual = sorted({r["record_id"] for r in data["record_label_associations_data"]
                     if r["source_type"] == "MANUAL" and r["labeling_task_label_id"] in topic_labels})
    keep = set(manual[::2][:N_MANUAL])
    rest = sorted(r["id"] for r in data["records_data"] if r["id"] not in keep)
    keep |= set(random.Random(SEED).sample(rest, N_RECORDS - len(keep)))

    out = dict(data)
    out["records_data"] = [r for r in data["records_data"] if r["id"] in keep]
    out["record_label_associations_data"] = [r for r in data["record_label_associations_data"] if r["record_id"] in keep]
    rla_ids = {r["id"] for r in out["record_label_associations_data"]}
    out["record_label_association_tokens_data"] = [
        t for t in data["record_label_association_tokens_data"] if t["record_label_association_id"] in rla_ids
    ]
    out["embedding_tensors_data"] = [
        {**t, "data": [round(x, 4) for x in t["data"]]} for t in data["embedding_tensors_data"] if t["record_id"] in keep
    ]
    out["data_slice_record_association_data"] = [
        d for d in data["data_slice_record_association_data"] if d["record_id"] in keep
    ]
    out["information_source_payloads_data"] = [{**p, "logs": []} for p in data["information_source_payloads_data"]]
    return member, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path("../shared/data/refinery_snapshots/ag_news.zip"))
    ap.add_argument("--out", type=Path, default=Path("tests/data/ag_news_snapshot_small.zip"))
    args = ap.parse_args()
    member, data = build(args.src)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(args.out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(member, date_time=(2022, 7, 13, 20, 52, 59))  # fixed: byte-identical rebuilds
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, json.dumps(data))
    print(f"wrote {len(data['records_data'])} records to {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
