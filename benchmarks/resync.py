"""Re-sync cost on the local host: first sync, an unchanged re-sync, and a re-sync after new labels.

Runs against a real local host (``kern_finetune.host.serve_in_thread``) holding the bundled AG News
sample (20,000 records; ``--limit N`` takes a seeded subset for a quick check), with a models volume for
its embedder (``models_volumes=[(models_dir, "/models")]``). Every sync goes through the model door with a
:class:`~kern_finetune.refinery.model_door.ModelDoorTarget`: it writes the fine-tuned model folder into the
volume, creates the embedding through the gateway, waits until the host's embedder has computed it
(``FINISHED``) and deletes the previous one. The model door trains on the embedding's one attribute
(``Title``) with neighbour smoothing and search spread off (``kern_finetune.sync``).

1. first sync (fresh vector cache: every record is encoded) -> trains, the embedder computes the
   embedding: "created";
2. second sync, no label changed -> "up-to-date", nothing trained or created (target: < 10 s);
3. ``--labels`` (200) new manual labels written into the host's store (refinery has no API route for
   manual labels; ``kern-finetune demo`` adds its labels the same way), on records that had no label the
   pipeline selects, labelled with their true class -> sync again -> retrains, the embedder computes the
   new embedding: "created" (target: at most a quarter of the first sync, because unchanged records are
   not re-encoded by the pipeline; the host's embedder computes every record again for each new
   embedding, as refinery's does, so that part costs each "created" sync the same).

By default every sync is triggered through the signed webhook service (``--via webhook``: the timing is
trigger -> job finished, as a labeling tool would see it; the service's runner gets the same target);
``--via direct`` calls ``sync_project``.
Results go to ``benchmarks/results/resync.json`` and ``.md`` (with ``--limit``:
``resync-limit<N>.*``), including the command that made them.

    .venv/bin/python benchmarks/resync.py --limit 500      # quick check, about a minute of CPU
    .venv/bin/python benchmarks/resync.py                  # the full sample (minutes: encodes 20k texts)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SAMPLE = ROOT / "samples" / "ag_news" / "export.json.gz"
RESULTS = ROOT / "benchmarks" / "results"
TASK = "Topic"
GOLD = "Class Index"
MANUAL = f"__{TASK}__MANUAL"
WEAK = f"__{TASK}__WEAK_SUPERVISION"
WEAK_CONF = f"__{TASK}__WEAK_SUPERVISION__confidence"
UP_TO_DATE_TARGET_S = 10.0
MODELS_MOUNT = "/models"
"""Where the host's embedder sees the models volume."""
MODEL_WAIT_S = 3600.0
"""Longest wait for the host's embedder to finish an embedding (ModelDoorTarget.wait_s)."""
MODEL_POLL_S = 0.5
"""Seconds between two reads of the project's embeddings while waiting (ModelDoorTarget.poll_s)."""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=None, help="use a seeded subset of N records (default: all)")
    p.add_argument("--labels", type=int, default=200, help="manual labels added before the third sync (default: 200)")
    p.add_argument("--via", choices=("webhook", "direct"), default="webhook",
                   help="trigger syncs through the signed webhook service or call sync_project (default: webhook)")
    p.add_argument("--epochs", type=int, default=None, help="override RunConfig.epochs")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work-dir", type=Path, default=None,
                   help="host, cache and runs go here (default: a fresh temporary folder; its vector cache "
                        "starts empty so the first sync really encodes)")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder for resync.json/.md (default: %(default)s)")
    return p.parse_args(argv)


def _subset(records: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    if limit is None or limit >= len(records):
        return records
    picked = list(records)
    random.Random(seed).shuffle(picked)
    return picked[:limit]


def _gold_to_label(records: list[dict[str, Any]]) -> dict[str, str]:
    """Class Index value -> task label, learned from the records that carry both (majority vote)."""
    votes: dict[str, Counter] = {}
    for r in records:
        label = r.get(MANUAL) or r.get(WEAK)
        if label and r.get(GOLD) is not None:
            votes.setdefault(str(r[GOLD]), Counter())[label] += 1
    return {gold: c.most_common(1)[0][0] for gold, c in votes.items()}


def _unselected(records: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """Records the pipeline does not train on: no manual label and no weak label above the threshold."""
    out = []
    for r in records:
        if r.get(MANUAL):
            continue
        conf = r.get(WEAK_CONF)
        if r.get(WEAK) and conf is not None and float(conf) > threshold:
            continue
        out.append(r)
    return out


def _add_manual_labels(host: Any, items: list[tuple[str, str]]) -> dict[str, Any]:
    """Manual labels as labelers set them in refinery's UI, which has no API route for them: written into the
    host's store (as ``kern-finetune demo`` does); the next export carries them."""
    return host.store.labels.set_labels(TASK, [(rid, label, None) for rid, label in items], source="MANUAL",
                                        user_name=host.user_name)


class _WebhookSyncer:
    """Triggers syncs through a signed ``POST /v1/jobs`` and waits for the job to end."""

    def __init__(self, data_dir: Path, secrets_path: Path, project_id: str, options: dict[str, Any],
                 target: Any) -> None:
        from kern_finetune.service import default_runner, serve_in_thread

        self.secret = secrets.token_hex(32)
        self.service = serve_in_thread(data_dir, self.secret, default_runner(secrets_path, model_target=target))
        self.project_id = project_id
        self.options = options

    def __call__(self, label: str) -> dict[str, Any]:
        from kern_finetune.service import SIGNATURE_HEADER, sign

        body = json.dumps({"project_id": self.project_id, "options": self.options}).encode()
        t0 = time.perf_counter()
        r = requests.post(f"{self.service.url}/v1/jobs", data=body, timeout=30,
                          headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body)})
        r.raise_for_status()
        job_id = r.json()["job"]["id"]
        while True:
            r = requests.get(f"{self.service.url}/v1/jobs/{job_id}", timeout=30,
                             headers={SIGNATURE_HEADER: sign(self.secret, b"")})
            r.raise_for_status()
            job = r.json()["job"]
            if job["state"] in ("succeeded", "up_to_date", "failed"):
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
        if job["state"] == "failed":
            raise RuntimeError(f"{label}: job failed: {job['error']}")
        result = job.get("result") or {}
        metrics = job.get("metrics") or {}
        return {
            "seconds": round(seconds, 2), "status": result.get("status"), "job_id": job_id,
            "changed_labels": result.get("changed_labels"), "n_labels": result.get("n_labels"),
            "embedding": result.get("embedding"), "pipeline_seconds": metrics.get("seconds"),
            "encoded": metrics.get("encoded"), "from_cache": metrics.get("from_cache"), "top_k": metrics.get("top_k"),
            "stages": [p["message"] for p in job.get("progress", [])],
        }

    def close(self) -> None:
        self.service.stop()


class _DirectSyncer:
    """Calls :func:`kern_finetune.sync.sync_project` in this process."""

    def __init__(self, secrets_path: Path, project_id: str, options: dict[str, Any], out_dir: Path,
                 target: Any) -> None:
        from kern_finetune.refinery.api import RefineryClient
        from kern_finetune.config import RunConfig

        self.client = RefineryClient.from_secrets(secrets_path)
        self.config = RunConfig.from_dict({"mode": "head", **options}).validate()  # named: auto depends on load
        self.project_id = project_id
        self.out_dir = out_dir
        self.target = target

    def __call__(self, label: str) -> dict[str, Any]:
        from kern_finetune.sync import sync_project

        stages: list[str] = []
        t0 = time.perf_counter()
        res = sync_project(self.client, self.project_id, self.config, out_dir=self.out_dir,
                           door="model", model_target=self.target,
                           progress=lambda m: (stages.append(m), print(f"  [{label}] {m}", flush=True)))
        seconds = time.perf_counter() - t0
        metrics = res.run.metrics if res.run is not None else {}
        return {
            "seconds": round(seconds, 2), "status": res.status, "changed_labels": res.changed_labels,
            "n_labels": res.n_labels, "embedding": res.embedding, "pipeline_seconds": metrics.get("seconds"),
            "encoded": metrics.get("encoded"), "from_cache": metrics.get("from_cache"),
            "top_k": metrics.get("top_k"), "stages": stages,
        }

    def close(self) -> None:
        pass


def _markdown(result: dict[str, Any]) -> str:
    rows = []
    for key, title in (("first", "1. first sync"), ("unchanged", "2. re-sync, no label changed"),
                       ("after_labels", f"3. re-sync after {result['labels_added']} new manual labels")):
        s = result["syncs"][key]
        pipe = s.get("pipeline_seconds") or {}

        def _cell(value: Any) -> str:
            return "-" if value is None else str(value)

        rows.append(f"| {title} | {s['status']} | {s['seconds']:.1f} | {_cell(s.get('changed_labels'))} | "
                    f"{_cell(s.get('encoded'))} / {_cell(s.get('from_cache'))} | {_cell(pipe.get('encode'))} | "
                    f"{_cell(pipe.get('train'))} |")
    t = result["targets"]
    return "\n".join([
        "# Re-sync benchmark",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Records: {result['records']} ({result['source']}); syncs triggered via **{result['via']}**, through the "
        f"model door into a host with a models volume ({result['door']['models_mount']}); "
        f"machine: {result['machine']['cpus']} CPUs ({result['machine']['platform']}), load before start "
        f"{result['machine']['load_before']}; {result['finished_at']}.",
        "",
        "| sync | status | seconds | changed labels | encoded / from cache | encode s | train s |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"- unchanged re-sync < {UP_TO_DATE_TARGET_S:.0f} s: **{'met' if t['up_to_date_under_10s'] else 'NOT met'}** "
        f"({result['syncs']['unchanged']['seconds']:.1f} s)",
        f"- re-sync after new labels <= 1/4 of the first sync: **{'met' if t['relabel_le_quarter'] else 'NOT met'}** "
        f"({result['ratio_after_labels_to_first']:.2f} of the first sync)",
        "",
        "Seconds are wall time from trigger to finished job (webhook) or of the sync_project call (direct); "
        "they include pulling the export, training, evaluation and the model door's delivery (the model folder "
        "written into the volume, the embedding created through the gateway, the host's embedder computing "
        "every record with the new model, the previous embedding deleted). Encoded / from cache and encode s "
        "are the pipeline's; the embedder's encoding is not in them.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    from kern_finetune.config import RunConfig
    from kern_finetune.refinery.export import load_export
    from kern_finetune.host import serve_in_thread as host_in_thread
    from kern_finetune.refinery.model_door import ModelDoorTarget

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    records = _subset(load_export(SAMPLE), args.limit, args.seed)
    tmp = tempfile.TemporaryDirectory(prefix="kern-resync-") if args.work_dir is None else None
    work = Path(tmp.name) if tmp else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    os.environ["KERN_FINETUNE_CACHE"] = str(work / "cache")  # fresh cache: the first sync encodes everything
    export = work / "export.json"
    export.write_text(json.dumps(records), encoding="utf-8")

    options: dict[str, Any] = {"task": TASK, "gold_attribute": GOLD, "seed": args.seed}
    if args.epochs is not None:
        options["epochs"] = args.epochs
    threshold = RunConfig.from_dict(options).threshold
    user, password = "benchmark@example.com", secrets.token_urlsafe(16)
    models = work / "models"
    models.mkdir(exist_ok=True)
    target = ModelDoorTarget(models, MODELS_MOUNT, wait_s=MODEL_WAIT_S, poll_s=MODEL_POLL_S)
    print(f"resync: {len(records)} records, work dir {work}, via {args.via}, model door into {models} "
          f"(the host's embedder sees {MODELS_MOUNT})", flush=True)
    syncs: dict[str, Any] = {}
    with host_in_thread(export, data_dir=work / "host", user_name=user, password=password,
                        models_volumes=[(models, MODELS_MOUNT)]) as host:
        secrets_path = work / "secrets.json"
        secrets_path.write_text(json.dumps(host.secrets(password)))
        secrets_path.chmod(0o600)
        syncer: Any = (_WebhookSyncer(work / "service", secrets_path, host.project_id, options, target)
                       if args.via == "webhook" else
                       _DirectSyncer(secrets_path, host.project_id, options, work / "runs", target))
        try:
            for key, expected in (("first", "created"), ("unchanged", "up-to-date")):
                print(f"resync: {key} sync ...", flush=True)
                syncs[key] = syncer(key)
                print(f"resync: {key} sync: {syncs[key]['status']} {syncs[key]['embedding']!r} in "
                      f"{syncs[key]['seconds']:.1f} s", flush=True)
                if syncs[key]["status"] != expected:
                    raise RuntimeError(f"{key} sync ended {syncs[key]['status']!r}, expected {expected!r}")

            gold_map = _gold_to_label(records)
            candidates = [r for r in _unselected(records, threshold) if str(r.get(GOLD)) in gold_map]
            random.Random(args.seed + 1).shuffle(candidates)
            items = [(str(r["running_id"]), gold_map[str(r[GOLD])]) for r in candidates[: args.labels]]
            t0 = time.perf_counter()
            _add_manual_labels(host, items)
            print(f"resync: added {len(items)} manual labels to the host's store in {time.perf_counter() - t0:.2f} s",
                  flush=True)

            print("resync: sync after new labels ...", flush=True)
            syncs["after_labels"] = syncer("after_labels")
            print(f"resync: sync after new labels: {syncs['after_labels']['status']} "
                  f"{syncs['after_labels']['embedding']!r} in {syncs['after_labels']['seconds']:.1f} s", flush=True)
            if syncs["after_labels"]["status"] != "created":
                raise RuntimeError(f"the sync after new labels ended {syncs['after_labels']['status']!r}")
        finally:
            syncer.close()

    first, unchanged, after = (syncs[k]["seconds"] for k in ("first", "unchanged", "after_labels"))
    ratio = after / first if first else float("nan")
    result = {
        "command": " ".join(shlex.quote(a) for a in
                            [".venv/bin/python", "benchmarks/resync.py", *(sys.argv[1:] if argv is None else argv)]),
        "records": len(records),
        "source": str(SAMPLE.relative_to(ROOT)) + (f" (seeded subset, seed {args.seed})" if args.limit else ""),
        "via": args.via,
        "door": {"door": "model", "models_mount": MODELS_MOUNT, "wait_s": MODEL_WAIT_S, "poll_s": MODEL_POLL_S},
        "options": options,
        "labels_added": len(items),
        "syncs": syncs,
        "ratio_after_labels_to_first": round(ratio, 3),
        "targets": {"up_to_date_under_10s": unchanged < UP_TO_DATE_TARGET_S, "relabel_le_quarter": ratio <= 0.25},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_before": None if load_before is None else round(load_before, 2)},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    stem = "resync" if args.limit is None else f"resync-limit{args.limit}"
    (args.results / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / f"{stem}.md").write_text(_markdown(result))
    print(f"resync: first {first:.1f} s | unchanged {unchanged:.1f} s | after {len(items)} labels {after:.1f} s "
          f"({ratio:.2f} of first)")
    print(f"resync: targets: up to date < {UP_TO_DATE_TARGET_S:.0f} s: {result['targets']['up_to_date_under_10s']}; "
          f"re-sync <= 1/4 of first: {result['targets']['relabel_le_quarter']}")
    print(f"resync: wrote {args.results / (stem + '.json')} and .md")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
