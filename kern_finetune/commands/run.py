"""``kern-finetune run``: fine-tune on an export file and write model, vectors, metrics and report."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import DEVICES, ENGINES, LOSSES, MODES, RunConfig
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..refinery.columns import Record
    from ..pipeline import RunResult

__all__ = ["register", "add_run_options", "config_from_args"]

_DEFAULTS = RunConfig()

EPILOG = """\
examples:
  kern-finetune run --export samples/ag_news/export.json.gz --task Topic --gold-attribute "Class Index"
  kern-finetune run --export project_snapshot.zip --task topic --loss triplet --out runs/triplet
  kern-finetune run --export project_snapshot.zip --task topic --write-snapshot with_embedding.zip

What is trained on: every manual label, plus every weak-supervision label whose confidence is above
--threshold (a manual label wins). Records without such a label are the test records: with
--gold-attribute, their true class is used to measure how many nearest neighbours share it (top_k)."""


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The pipeline options shared by ``run``, ``sync`` and ``demo``."""
    g = parser.add_argument_group("what to learn from")
    g.add_argument("--task", help="labeling task name, e.g. Topic (default: the only task in the export)")
    g.add_argument("--text-attributes", metavar="A,B",
                   help='attributes joined with ". " into the text to embed (default: every text attribute)')
    g.add_argument("--id-attribute", default=_DEFAULTS.id_attribute, help="attribute that identifies a record (default: %(default)s)")
    g.add_argument("--gold-attribute", metavar="NAME",
                   help="attribute with the true class; used ONLY to evaluate on the records not trained on")
    g.add_argument("--threshold", type=float, default=_DEFAULTS.threshold,
                   help="weak labels count when their confidence is above this (default: %(default)s)")
    g = parser.add_argument_group("how to train")
    g.add_argument("--engine", choices=ENGINES, default=_DEFAULTS.engine, help="native PyTorch or Quaterion (default: %(default)s)")
    g.add_argument("--mode", choices=MODES, default=_DEFAULTS.mode,
                   help="head: frozen encoder + trained head (fast, CPU); full: fine-tune the encoder too; auto: full "
                        "when its time, estimated on this machine at run time, fits --time-budget (default: %(default)s)")
    g.add_argument("--time-budget", type=float, default=_DEFAULTS.time_budget, metavar="SECONDS",
                   help="--mode auto: the longest full-mode training (with re-encoding) to accept (default: %(default)s)")
    g.add_argument("--loss", choices=LOSSES, default=_DEFAULTS.loss, help="similarity loss (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=_DEFAULTS.temperature,
                   help="supcon softmax temperature (default: %(default)s)")
    g.add_argument("--raw-weight", default=_DEFAULTS.raw_weight, metavar="auto|W",
                   help="head mode: share of the base vector in the pushed one; auto = chosen on validation records "
                        "and refinery's threshold search; 0 = the head alone, as before (default: %(default)s)")
    g.add_argument("--distill", type=float, default=_DEFAULTS.distill, metavar="WEIGHT",
                   help="head mode: weight of the term that keeps the base model's neighbourhoods of every record; "
                        "0 = off (default: %(default)s)")
    g.add_argument("--uniformity", type=float, default=_DEFAULTS.uniformity, metavar="WEIGHT",
                   help="head mode: weight of the uniformity term over every record; 0 = off (default: %(default)s)")
    g.add_argument("--search-floor", type=float, default=_DEFAULTS.search_floor, metavar="WEIGHT",
                   help="head mode: weight of the term that keeps refinery's threshold search from returning short "
                        "result lists (unlabeled records); 0 = off, as before (default: %(default)s)")
    g.add_argument("--margin", type=float, default=_DEFAULTS.margin, help="triplet margin, cosine distance (default: %(default)s)")
    g.add_argument("--head-layers", type=int, default=_DEFAULTS.head_layers, help="stacked skip-connection layers (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=_DEFAULTS.epochs, help="maximum epochs; early stopping ends sooner (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="rows per class-aware batch (default: %(default)s)")
    g.add_argument("--patience", type=int, default=_DEFAULTS.patience,
                   help="stop after this many epochs without a lower validation loss (default: %(default)s)")
    g.add_argument("--lr", type=float, default=_DEFAULTS.lr, help="Adam learning rate of the head (default: %(default)s)")
    g.add_argument("--encoder-lr", type=float, default=_DEFAULTS.encoder_lr,
                   help="--mode full: learning rate of the encoder's own weights (default: %(default)s)")
    g.add_argument("--encoder-memory", type=int, default=_DEFAULTS.encoder_memory, metavar="ROWS",
                   help="--mode full, supcon: rows of earlier batches each batch is also contrasted with "
                        "(cross-batch memory); 0 = off (default: %(default)s)")
    g.add_argument("--wise-alpha", type=float, default=_DEFAULTS.wise_alpha, metavar="A",
                   help="--mode full: keep (1-A) of the base weights and A of the fine-tuned ones (WiSE-FT); "
                        "1 = fine-tuned weights as they are (default: %(default)s)")
    g.add_argument("--noise-filter", choices=("off", "drop", "weight"), default=_DEFAULTS.noise_filter,
                   help="find weak labels that contradict out-of-fold predictions and drop or down-weight them (default: %(default)s)")
    g.add_argument("--pseudo-labels", default=_DEFAULTS.pseudo_labels, metavar="auto|off|P",
                   help="self-training: unlabeled records predicted with probability above P train with that "
                        "label; auto = 0.9 in --mode full, off in --mode head (default: %(default)s)")
    g.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="seed for the split, training and evaluation (default: %(default)s)")
    g = parser.add_argument_group("where things go")
    g.add_argument("--base-model", metavar="DIR", help="local sentence-transformers model (default: bundled all-MiniLM-L6-v2)")
    g.add_argument("--cache-dir", type=Path, default=None, help="vector cache (default: $KERN_FINETUNE_CACHE or ~/.cache/kern-finetune)")
    g.add_argument("--device", choices=DEVICES, default=_DEFAULTS.device,
                   help="where to encode and (--mode full) train; auto = CUDA when present; "
                        "CUDA encodes in fp16 (default: %(default)s)")
    g.add_argument("--ray-address", metavar="ADDRESS|local", default=None,
                   help="encode the texts missing from the vector cache on Ray (the ray extra): a cluster "
                        "address, or local for a local Ray runtime (default: $RAY_ADDRESS, else in this process)")
    g.add_argument("--embedding-name", help="name of the pushed embedding (default: <attribute>-classification-kern-finetune-<model>)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """A validated :class:`RunConfig` from parsed ``add_run_options`` arguments."""
    config = RunConfig(
        task=args.task,
        text_attributes=[a.strip() for a in args.text_attributes.split(",") if a.strip()] if args.text_attributes else None,
        id_attribute=args.id_attribute,
        gold_attribute=args.gold_attribute,
        threshold=args.threshold,
        engine=args.engine,
        mode=args.mode,
        time_budget=args.time_budget,
        loss=args.loss,
        temperature=args.temperature,
        margin=args.margin,
        raw_weight=args.raw_weight,
        distill=args.distill,
        uniformity=args.uniformity,
        search_floor=args.search_floor,
        patience=args.patience,
        head_layers=args.head_layers,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        encoder_lr=args.encoder_lr,
        encoder_memory=args.encoder_memory,
        wise_alpha=args.wise_alpha,
        noise_filter=args.noise_filter,
        pseudo_labels=args.pseudo_labels,
        seed=args.seed,
        base_model=args.base_model,
        embedding_name=args.embedding_name,
        device=args.device,
        ray_address=args.ray_address or os.environ.get("RAY_ADDRESS") or None,
    )
    if args.cache_dir is not None:
        config.cache_dir = args.cache_dir
    return config.validate()


def _run(args: argparse.Namespace) -> int:
    from ..refinery.export import load_export
    from ..pipeline import run_pipeline  # heavy imports (torch, sklearn) only when running

    config = config_from_args(args)
    if args.write_snapshot is not None and args.export.suffix != ".zip":
        raise ConfigError(f"--write-snapshot needs --export to be a refinery project snapshot (.zip), got {args.export}")
    records = load_export(args.export)
    result = run_pipeline(records, config, out_dir=args.out, progress=print)
    if args.write_snapshot is not None:
        _write_snapshot(args, config, records, result)
    if args.json:
        print(json.dumps({k: result.metrics[k] for k in ("n_train", "n_val", "n_test", "chance", "top_k", "top_1k_250", "seconds")}))
    return 0


def _write_snapshot(args: argparse.Namespace, config: RunConfig, records: list[Record], result: RunResult) -> None:
    """The snapshot door: the source snapshot plus the fine-tuned embedding, and how to import it."""
    from ..refinery.columns import embedding_name
    from ..refinery.export import resolve_task
    from ..refinery.snapshot import import_steps, write_snapshot

    task = resolve_task(records, config.task)
    attribute = task.attribute or result.metrics["text_attributes"][0]
    model = result.extra["base_model_name"]
    name = config.embedding_name or embedding_name(attribute, model=model)
    snap = write_snapshot(
        args.export, args.write_snapshot, ids=result.ids, vectors=result.vectors,
        attribute=attribute, model=model, id_attribute=config.id_attribute, name=name,
    )
    info = snap.embeddings[name]
    print(f"wrote snapshot {args.write_snapshot}: embedding {name!r} on attribute {attribute!r} "
          f"({info['count']} vectors of {info['dimension']} dimensions)")
    for note in snap.notices:
        print(f"  note: {note}")
    print("to import it into refinery:")
    for i, step in enumerate(import_steps(args.write_snapshot, name), 1):
        print(f"  {i}. {step}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="fine-tune on an export file (no host needed)", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--export", required=True, type=Path, help="record export (.json, .json.gz) or refinery snapshot (.zip)")
    p.add_argument("--out", type=Path, default=Path("runs/latest"),
                   help="output folder: new, empty or an earlier run's, which a successful run replaces as a whole "
                        "(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the headline metrics")
    p.add_argument("--write-snapshot", type=Path, metavar="OUT.zip",
                   help="--export is a refinery snapshot: write a copy with the fine-tuned embedding added, "
                        "to import into refinery as a new project (docs/snapshot.md)")
    add_run_options(p)
    p.set_defaults(func=_run)
