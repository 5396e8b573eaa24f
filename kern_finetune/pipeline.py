"""The one orchestration: prepare -> encode (cached) -> fit -> evaluate -> write, each a typed stage
(``docs/architecture.md``), plus the verdict without gold (:func:`kern_finetune.evaluation.verdict.judge`)
that ``metrics.json``'s ``verdict`` and the console's headline hold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .config import RunConfig
from .errors import KernFinetuneError
from .vectors.encode import Encoder
from .evaluation.evaluate import Evaluation, Plots, evaluate
from .training.fit import Fitted, fit
from .labels.prepare import Prepared, prepare
from .refinery.columns import Record, embedding_name
from .evaluation.report import ReportData
from .output.save import check_out_dir, staged_output
from .labels.select import Selection, label_fingerprint
from .training.trainer import TrainResult
from .evaluation.verdict import CurrentEmbedding, judge, with_gold
from .output.write import write

__all__ = ["RunResult", "run_pipeline", "label_fingerprint"]

ProgressFn = Callable[[str], None]


@dataclass
class RunResult:
    """What one run produced. ``vectors[i]`` (L2-normalised, float32) belongs to record ``ids[i]``."""

    ids: list[str]
    vectors: np.ndarray
    metrics: dict[str, Any]
    out_dir: Path
    model_dir: Path
    embedding_name: str
    label_fingerprint: str
    base_model: str
    """The base model's short name (``all-MiniLM-L6-v2``): what refinery's embedding names carry."""
    raw_vectors: np.ndarray | None = None
    """The base model's vectors, rows as ``ids`` (None only from a stand-in pipeline)."""
    selection: Selection | None = None
    """The selection evaluation read (after the label check)."""
    training: TrainResult | None = None
    plots: Plots | None = None
    model_vectors: np.ndarray | None = None
    """What ``model/`` gives for every record, rows as ``ids`` (the model door's embedding before refinery's PCA)."""


def run_pipeline(
    records: list[Record], config: RunConfig, *, out_dir: Path, progress: ProgressFn | None = None,
    prepared: Prepared | None = None, door: str = "vectors", current: CurrentEmbedding | None = None,
) -> RunResult:
    """Fine-tune on ``records`` (a decoded refinery export) and write the outputs into ``out_dir``.

    ``prepared``: :func:`kern_finetune.labels.prepare.prepare`'s result when the caller has it (``sync``).
    ``door`` (``vectors``: written into a snapshot; ``model``: refinery's embedder computes the model
    folder) and ``current`` (the project's embedding in use, from a snapshot) are what the verdict judges. The
    outputs replace ``out_dir`` as a whole once everything is written; a failed run leaves it as it was.

    NumPy's BLAS runs on one thread for the run: its linear algebra is many small products and
    decompositions (the replays of refinery's PCA and search), which a BLAS thread pool slows down, the more
    so when other jobs or torch's own threads share the cores (``docs/decisions.md``). Torch keeps its threads.
    """
    out_dir = check_out_dir(Path(out_dir))  # a file or a foreign folder fails now, not after training
    with staged_output(out_dir) as stage, threadpool_limits(limits=1, user_api="blas"):
        return _run(records, config, out_dir=out_dir, stage=stage, progress=progress, prepared=prepared,
                    door=door, current=current)


def _run(records: list[Record], config: RunConfig, *, out_dir: Path, stage: Path, progress: ProgressFn | None,
         prepared: Prepared | None, door: str, current: CurrentEmbedding | None) -> RunResult:
    say = progress or (lambda _msg: None)
    config.validate()
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)

    if prepared is None:
        prepared = prepare(records, config)
    sel = prepared.selection
    say(f"[1/5] select labels: task {prepared.task.label}, text = {' + '.join(prepared.text_attributes)}, "
        f"threshold {config.threshold}")
    say(f"      {len(sel.train_idx)} train / {len(sel.val_idx)} validation ({prepared.n_manual} manual), "
        f"{len(sel.test_idx)} test; skipped: {sel.skipped or 'none'}")
    for note in sel.notes:
        say(f"      warning: {note}")
    if len(prepared.text_attributes) > 1:
        say(f"      note: {one_attribute_note(prepared)}")

    say(f"[2/5] encode {len(sel.texts)} records")
    t = time.perf_counter()
    encoder = Encoder(config.base_model, cache_dir=config.cache_dir, batch_size=config.encode_batch_size,
                      device=config.resolved_device())
    base = encoder.encode(sel.texts)
    t_encode = time.perf_counter() - t
    say(f"      {encoder.n_encoded_} encoded, {encoder.n_cached_} from cache ({t_encode:.1f} s)")

    fitted = fit(encoder, sel, base, config, progress=say)

    say(f"[4/5] evaluate on {len(fitted.selection.test_idx)} test records")
    evaluation = evaluate(base, fitted.vectors, fitted.selection, fitted.config, doors=_doors(base, fitted))
    for name, ts in evaluation.metrics.get("threshold_search", {}).items():
        say(f"      refinery search, {name}: {ts['lt_10']:.0f}% of queries < 10 results, {ts['lt_100']:.0f}% < 100, "
            f"{ts['same_class']:.1f}% same class")

    verdict = _verdict(encoder, records, prepared, base, fitted, door=door, current=current, say=say)

    say("[5/5] write model, vectors, metrics, report")
    name = config.embedding_name or embedding_name(prepared.attribute, model=encoder.model_name)
    metrics = _metrics(prepared, encoder, fitted, evaluation, name,
                       {"encode": round(t_encode, 2), "train": round(fitted.seconds, 2),
                        "evaluate": round(evaluation.seconds, 2)})
    metrics["base_model"] = encoder.model_name
    metrics["verdict"] = with_gold(verdict, metrics) if "figures" in verdict else verdict
    if "seconds" in verdict:
        metrics["seconds"]["verdict"] = verdict["seconds"]
    final = fitted.selection
    write(stage, ids=final.ids, vectors=fitted.vectors, model=fitted.model or encoder.model(), source=encoder.path,
          fine_tuned=fitted.model is not None, door=fitted.door,
          metrics=metrics, plots=evaluation.plots, label_check=fitted.label_check, started=t0,
          report_data=ReportData.from_selection(final, base, fitted.vectors, seed=config.seed))
    _say_headline(say, metrics)
    return RunResult(
        ids=final.ids, vectors=fitted.vectors, metrics=metrics, out_dir=out_dir, model_dir=out_dir / "model",
        embedding_name=name, label_fingerprint=prepared.fingerprint, base_model=encoder.model_name,
        raw_vectors=base, selection=final, training=fitted.training, plots=evaluation.plots,
        model_vectors=fitted.model_vectors,
    )


def _verdict(encoder: Encoder, records: list[Record], prepared: Prepared, base: np.ndarray, fitted: Fitted, *,
             door: str, current: CurrentEmbedding | None, say: ProgressFn) -> dict[str, Any]:
    """The verdict as ``metrics.json`` holds it; one that cannot be made says why instead of failing the run."""
    say("      verdict: fit again with a share of the labels held out, search as refinery does")
    try:
        verdict = judge(encoder, records, prepared.task, prepared.selection, base, fitted.config, door=door,
                        current=current, full_train_seconds=fitted.seconds, progress=say)
    except KernFinetuneError as exc:
        verdict, why = None, f"the held-out fit failed: {exc}"
    else:
        why = "no label could be held out (every class needs 2 labels to train on)"
    if verdict is None:
        say(f"      verdict: too few to tell ({why})")
        return {"verdict": "too few to tell", "conclusion": f"too few to tell: {why}", "n_heldout": 0, "door": door}
    return verdict.to_dict()


def _doors(base: np.ndarray, fitted: Fitted) -> dict[str, np.ndarray]:
    """Embeddings searched beside raw and the written vectors, as refinery's embedder stores them: its stock
    embedding of the base model, and the model door's."""
    from .vectors.base_share import door_vectors

    ids, seed = fitted.selection.ids, fitted.config.seed
    doors = {"stock": door_vectors(base, ids, seed=seed)}
    if fitted.model_vectors is not None:
        doors["model_door"] = door_vectors(fitted.model_vectors, ids, seed=seed)
    return doors


def one_attribute_note(prepared: Prepared) -> str:
    """Why a model folder trained on several joined attributes is not what refinery's embedder will feed it."""
    return (f"refinery's embedder embeds one attribute ({prepared.attribute!r}), this run joined "
            f"{' + '.join(prepared.text_attributes)}: the model door's figures assume texts refinery will not give "
            f"it; for the model door train on one attribute (--text-attributes {prepared.attribute}; sync --door "
            "model does)")


def _metrics(prepared: Prepared, encoder: Encoder, fitted: Fitted, evaluation: Evaluation, name: str,
             seconds: dict[str, float]) -> dict[str, Any]:
    """``metrics.json``: the evaluation's figures, then what was trained on, how, and how long it took."""
    sel, config = fitted.selection, fitted.config
    metrics = dict(evaluation.metrics)
    metrics.update(
        task=prepared.task.label, text_attributes=prepared.text_attributes, embedding_name=name,
        label_fingerprint=prepared.fingerprint, n_records=len(sel.ids), n_manual=prepared.n_manual,
        train_class_counts=sel.class_counts(sel.train_idx), val_class_counts=sel.class_counts(sel.val_idx),
        skipped=sel.skipped, training=fitted.training.to_dict(), config=config.to_dict(),
        encoded=encoder.n_encoded_, from_cache=encoder.n_cached_,
    )
    if fitted.pseudo is not None:
        pseudo = fitted.pseudo
        metrics["pseudo_labels"] = {"threshold": pseudo["threshold"], "n_added": int(len(pseudo["indices"])),
                                    "n_candidates": pseudo["n_candidates"], "n_fit": pseudo["n_fit"]}
    if fitted.label_check is not None:
        noise = fitted.label_check
        metrics["label_check"] = {
            "action": config.noise_filter, "file": "label_issues.csv",
            **{k: noise[k] for k in ("n_checked", "n_flagged", "oof_accuracy", "n_folds", "unchecked_classes", "note", "n_fit")},
            **fitted.label_audit,
        }
    metrics["seconds"] = dict(seconds)  # "total" is added once the model and vectors are written
    if fitted.smoothing is not None:
        metrics["smoothing"] = fitted.smoothing.to_dict()
        metrics["seconds"]["smooth"] = fitted.smoothing.seconds
    if fitted.spread is not None:
        metrics["spread"] = fitted.spread.to_dict()
        metrics["seconds"]["spread"] = fitted.spread.seconds
    door = fitted.door or fitted.pull  # what the model folder computes: head mode's base share, full mode's pull
    if door is not None:
        metrics["model_door"] = door.to_dict()
        if len(prepared.text_attributes) > 1:
            metrics["model_door"]["note"] = one_attribute_note(prepared)
        metrics["seconds"]["model_door"] = door.seconds
    if fitted.mode_choice is not None:  # estimate vs what the training stage took
        metrics["mode_choice"] = {**fitted.mode_choice.to_dict(), "measured_train_seconds": seconds["train"]}
    return metrics


def _say_headline(say: ProgressFn, metrics: dict[str, Any]) -> None:
    """The run's summary: the verdict's figures (what a labeler sees in refinery's search), then gold's apart."""
    verdict = metrics.get("verdict") or {}
    figures = verdict.get("figures")
    if figures:
        new = figures["new"]
        others = "".join(f", {name} {figures[name]['same_class']:.0f}%" for name in ("current", "raw") if name in figures)
        say(f"      verdict: {verdict['verdict'].upper()}; same class over a session {new['same_class']:.0f}% "
            f"(new{others}); first screen {new['first_screen_same']:.1f} of 9; "
            f"{verdict['n_queries']} searches, {verdict['judged_per_query']:.1f} judged records each")
    else:
        say(f"      verdict: {verdict.get('conclusion', 'none')}")
    gold = verdict.get("gold")
    if gold:
        say(f"      gold (test records, reported apart): same class {gold['new']['same_class']:.0f}% "
            f"(raw {gold['raw']['same_class']:.0f}%), {gold['direction']}"
            + ("" if gold["agrees"] is None else f", {'agrees' if gold['agrees'] else 'disagrees'} with the verdict"))
    elif "evaluation_note" in metrics:
        say(f"      no gold evaluation: {metrics['evaluation_note']}")
    for note in metrics.get("evaluation_notes", []):
        say(f"      note: {note}")
