"""The one orchestration: select labels -> encode (cached) -> train -> evaluate -> write outputs.

Outputs in ``out_dir``: ``metrics.json``, ``report.html``, ``model/`` (sentence-transformers format,
head folded in), ``vectors.npz`` (the L2-normalised fine-tuned vector of every record, keyed by id).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import RunConfig
from .encode import Encoder
from .evaluate import (
    chance_level,
    linear_probe,
    projection_2d,
    purity_summary,
    sample_queries,
    separation_2d,
    threshold_search,
)
from .refinery.columns import Record, embedding_name
from .refinery.export import resolve_task
from .heads import SkipConnectionHead
from .noise import write_label_issues
from .report import ReportData, write_report
from .save import check_out_dir, save_model, save_vectors, staged_output, write_json
from .subsample import MAX_FIT_RECORDS
from .select import Selection, default_text_attributes, gold_to_class, label_fingerprint, select_labels

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
    label_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _audit_label_check(sel: Selection, noise: dict[str, Any]) -> dict[str, Any]:
    """Where gold exists on weak-labeled training records, how right was the label check? (evaluation only)"""
    mapping = gold_to_class(sel)
    if mapping is None:
        return {}
    flagged = set(noise["indices"].tolist())
    rows = [i for i in sel.labeled_idx.tolist() if sel.source[i] == "weak" and sel.gold[i] in mapping]
    if not rows:
        return {}
    wrong = {i for i in rows if mapping[sel.gold[i]] != sel.y[i]}  # type: ignore[index]
    hit = [i for i in rows if i in flagged]
    return {
        "audit_weak_with_gold": len(rows),
        "audit_weak_wrong": len(wrong),
        "audit_flagged": len(hit),
        "audit_flagged_wrong": sum(1 for i in hit if i in wrong),
    }


@torch.no_grad()
def _apply(head: SkipConnectionHead, x: np.ndarray) -> np.ndarray:
    head.eval()
    out = torch.nn.functional.normalize(head(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))), dim=1)
    return out.numpy().astype(np.float32)


def run_pipeline(
    records: list[Record], config: RunConfig, *, out_dir: Path, progress: ProgressFn | None = None
) -> RunResult:
    """Fine-tune on ``records`` (a decoded refinery export) and write the outputs into ``out_dir``.

    The outputs are written into a temporary folder beside ``out_dir`` that replaces it as a whole once
    everything is written; a run that fails leaves ``out_dir`` (an earlier run's output) as it was.
    """
    out_dir = check_out_dir(Path(out_dir))  # a file or a foreign folder fails now, not after training
    with staged_output(out_dir) as stage:
        return _run_pipeline(records, config, out_dir=out_dir, stage=stage, progress=progress)


def _run_pipeline(
    records: list[Record], config: RunConfig, *, out_dir: Path, stage: Path, progress: ProgressFn | None
) -> RunResult:
    say = progress or (lambda _msg: None)
    config.validate()
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)

    task = resolve_task(records, config.task)
    text_attrs = config.text_attributes or default_text_attributes(
        records, id_attribute=config.id_attribute, gold_attribute=config.gold_attribute
    )
    say(f"[1/5] select labels: task {task.label}, text = {' + '.join(text_attrs)}, threshold {config.threshold}")
    sel = select_labels(
        records, task, text_attributes=text_attrs, id_attribute=config.id_attribute,
        gold_attribute=config.gold_attribute, threshold=config.threshold, weak_labels=config.weak_labels,
        val_fraction=config.val_fraction, seed=config.seed,
    )
    n_manual = sum(1 for i in sel.labeled_idx if sel.source[i] == "manual")
    say(f"      {len(sel.train_idx)} train / {len(sel.val_idx)} validation ({n_manual} manual), "
        f"{len(sel.test_idx)} test; skipped: {sel.skipped or 'none'}")

    say(f"[2/5] encode {len(sel.texts)} records")
    t = time.perf_counter()
    if config.ray_address:
        from .encode_ray import RayEncoder

        encoder: Encoder = RayEncoder(config.base_model, cache_dir=config.cache_dir, batch_size=config.encode_batch_size,
                                      device=config.device, address=config.ray_address)
    else:
        encoder = Encoder(config.base_model, cache_dir=config.cache_dir, batch_size=config.encode_batch_size,
                          device=config.resolved_device())
    base = encoder.encode(sel.texts)
    t_encode = time.perf_counter() - t
    say(f"      {encoder.n_encoded_} encoded, {encoder.n_cached_} from cache ({t_encode:.1f} s)")

    weights = None
    noise: dict[str, Any] = {}
    noise_audit: dict[str, Any] = {}
    if config.noise_filter != "off":
        from .noise import find_label_issues, without_label_issues

        noise = find_label_issues(base, sel, seed=config.seed)
        noise_audit = _audit_label_check(sel, noise)  # before dropping: the audit looks at every checked label
        if config.noise_filter == "drop":
            sel = without_label_issues(sel, noise)
        else:
            weights = noise["weights"]
        say(f"      label check: {len(noise['indices'])} likely wrong weak labels ({config.noise_filter})"
            + (f"; not run: {noise['note']}" if noise["note"] else f", {noise['n_folds']} folds")
            + (f"; classes with too few labels to check: {', '.join(noise['unchecked_classes'])}"
               if noise["unchecked_classes"] and not noise["note"] else ""))

    choice = None
    if config.mode == "auto":  # needs the labels and texts, so it is decided here rather than before selecting
        from .estimate import choose_mode

        say(f"      --mode auto: estimating full mode on this machine (budget {config.time_budget:.0f} s)")
        choice = choose_mode(encoder, sel, base, config)
        config = dataclasses.replace(config, mode=choice.mode)
        say(f"      --mode auto chose {choice.message}")

    train_sel, pseudo = sel, None
    threshold = config.pseudo_label_threshold()
    if threshold is not None:
        from .pseudo import find_pseudo_labels, with_pseudo_labels

        pseudo = find_pseudo_labels(base, sel, threshold=threshold, seed=config.seed)
        train_sel = with_pseudo_labels(sel, pseudo)  # training only: evaluation keeps reading `sel`
        say(f"      pseudo-labels: {len(pseudo['indices'])} of {pseudo['n_candidates']} unlabeled records "
            f"predicted with p > {threshold} join training")

    say(f"[3/5] train ({config.engine} engine, {config.mode} mode, loss {config.loss})")
    t = time.perf_counter()
    if config.mode == "full":
        from .train_full import fit_full

        model, head, train_info = fit_full(encoder, train_sel, config, weights=weights, device=config.resolved_device())
        tuned = model.encode(sel.texts, batch_size=config.encode_batch_size, convert_to_numpy=True,
                             normalize_embeddings=True, show_progress_bar=True).astype(np.float32)
    else:
        from .train import fit_head

        head, train_info = fit_head(base, train_sel, config, weights=weights)
        model = None
        tuned = _apply(head, base)
    t_train = time.perf_counter() - t
    say(f"      {train_info.get('epochs_run', '?')} epochs in {t_train:.1f} s")

    say(f"[4/5] evaluate on {len(sel.test_idx)} test records")
    t = time.perf_counter()
    metrics = _evaluate(base, tuned, sel, config)
    t_eval = time.perf_counter() - t
    for name, ts in metrics.get("threshold_search", {}).items():
        say(f"      refinery search, {name}: {ts['lt_10']:.0f}% of queries < 10 results, {ts['lt_100']:.0f}% < 100, "
            f"{ts['same_class']:.1f}% same class")

    say("[5/5] write model, vectors, metrics, report")
    model_dir = out_dir / "model"
    save_model(model if model is not None else encoder.model(), head, stage / "model")
    save_vectors(stage / "vectors.npz", sel.ids, tuned)
    attr = text_attrs[0] if task.attribute is None else task.attribute
    name = config.embedding_name or embedding_name(attr, model=encoder.model_name)
    fingerprint = label_fingerprint(sel, task.label, config.threshold)
    metrics.update(
        task=task.label,
        text_attributes=text_attrs,
        embedding_name=name,
        label_fingerprint=fingerprint,
        n_records=len(sel.ids),
        n_manual=n_manual,
        train_class_counts=sel.class_counts(sel.train_idx),
        val_class_counts=sel.class_counts(sel.val_idx),
        skipped=sel.skipped,
        training=train_info,
        config=config.to_dict(),
        encoded=encoder.n_encoded_,
        from_cache=encoder.n_cached_,
    )
    if pseudo is not None:
        metrics["pseudo_labels"] = {"threshold": pseudo["threshold"], "n_added": int(len(pseudo["indices"])),
                                    "n_candidates": pseudo["n_candidates"], "n_fit": pseudo["n_fit"]}
    if noise:
        write_label_issues(stage / "label_issues.csv", noise)
        metrics["label_check"] = {
            "action": config.noise_filter, "file": "label_issues.csv",
            **{k: noise[k] for k in ("n_checked", "n_flagged", "oof_accuracy", "n_folds", "unchecked_classes", "note", "n_fit")},
            **noise_audit,
        }
    metrics["seconds"] = {
        "encode": round(t_encode, 2), "train": round(t_train, 2), "evaluate": round(t_eval, 2),
        "total": round(time.perf_counter() - t0, 2),
    }
    if choice is not None:  # estimate vs what the training stage took
        metrics["mode_choice"] = {**choice.to_dict(), "measured_train_seconds": round(t_train, 2)}
    plots = metrics.pop("_plots", None)
    write_report(stage / "report.html", metrics, plots=plots,
                 data=ReportData.from_selection(sel, base, tuned, seed=config.seed))
    write_json(stage / "metrics.json", metrics)
    if "1000" in metrics["top_k"]["raw"]:
        say(f"      top_1k raw {metrics['top_k']['raw']['1000']:.2f}% -> fine-tuned "
            f"{metrics['top_k']['finetuned']['1000']:.2f}% (chance {metrics['chance']:.2f}%); outputs in {out_dir}")
    else:
        say(f"      no evaluation: {metrics.get('evaluation_note', 'no test records')}; outputs in {out_dir}")
    return RunResult(
        ids=sel.ids, vectors=tuned, metrics=metrics, out_dir=out_dir, model_dir=model_dir,
        embedding_name=name, label_fingerprint=fingerprint,
        extra={"raw_vectors": base, "selection": sel, "head": head, "base_model_name": encoder.model_name},
    )


def _evaluate(base: np.ndarray, tuned: np.ndarray, sel: Selection, config: RunConfig) -> dict[str, Any]:
    test = sel.test_idx
    if len(test) < 2:
        why = "no --gold-attribute given" if not config.gold_attribute else "fewer than 2 test records with a gold value"
        return {
            "n_train": int(len(sel.train_idx)), "n_val": int(len(sel.val_idx)), "n_test": int(len(test)),
            "chance": None, "eval_queries": config.eval_queries, "top_k": {"raw": {}, "finetuned": {}},
            "top_1k_250": {}, "classification": {}, "evaluation_note": why,
        }
    gold_values = sorted({sel.gold[i] for i in test})  # type: ignore[type-var]
    gold_code = {g: k for k, g in enumerate(gold_values)}
    classes = np.array([gold_code[sel.gold[i]] for i in test])
    metrics: dict[str, Any] = {
        "n_train": int(len(sel.train_idx)), "n_val": int(len(sel.val_idx)), "n_test": int(len(test)),
        "chance": chance_level(classes), "eval_queries": config.eval_queries,
    }
    queries = sample_queries(len(test), config.eval_queries, config.seed)
    embeddings = {"raw": base[test], "finetuned": tuned[test]}
    top_k, top_250, per_query, per_query_k = {}, {}, {}, {}
    for name, x in embeddings.items():
        summary = purity_summary(x, classes, queries, seed=config.seed)  # capped queries, blocks: linear in n_test
        top_k[name], top_250[name], per_query[name] = summary["top_k"], summary["top_1k_250"], summary["per_query"]
        per_query_k[name] = summary["per_query_k"]  # the report's per-class table reuses it
    metrics.update(top_k=top_k, top_1k_250=top_250, top_k_queries=summary["n_queries"])
    # Search as refinery runs it: the seeded test queries against ALL records, 100 nearest within the
    # embedding's similarity threshold, judged on every returned record whose gold is known.
    all_gold = sorted({g for g in sel.gold if g is not None})  # type: ignore[type-var]
    all_code = {g: k for k, g in enumerate(all_gold)}
    record_classes = np.array([all_code[g] if g is not None else -1 for g in sel.gold])
    metrics["threshold_search"] = {
        name: threshold_search(full, test[queries], record_classes, seed=config.seed)
        for name, full in (("raw", base), ("finetuned", tuned))
    }

    mapping = gold_to_class(sel)
    labeled = sel.labeled_idx
    if mapping is not None:
        y_test = np.array([mapping[sel.gold[i]] for i in test])  # type: ignore[index]
        metrics["classification"] = {
            name: linear_probe(full[labeled], sel.y[labeled], full[test], y_test, labels=sel.classes, seed=config.seed)
            for name, full in (("raw", base), ("finetuned", tuned))
        }
    else:
        metrics["classification"] = {}
        metrics["classification_note"] = "gold values could not be matched to the task's labels"

    # 2D views: projections fitted on the training records, applied to the test records. The raw
    # embedding's PCA is the baseline. "simplex" places each record at the probability-weighted mean
    # of the class corners of a linear classifier fitted on the training labels (never the gold).
    fit_idx = sel.train_idx
    views = {}
    for name, x in (("raw", base), ("finetuned", tuned)):
        for method in ("pca", "simplex"):
            views[f"{name}_{method}"] = projection_2d(
                x[fit_idx], sel.y[fit_idx], x[test], method=method, seed=config.seed
            )
    metrics["separation_2d"] = {name: separation_2d(p, classes, seed=config.seed) for name, p in views.items()}
    metrics["projection_fit"] = {"n_train": int(len(fit_idx)), "max_fit": MAX_FIT_RECORDS, "sampled": len(fit_idx) > MAX_FIT_RECORDS}
    points = {name: views[name] for name in ("raw_pca", "finetuned_simplex")}
    names = [f"{g} ({sel.classes[mapping[g]]})" if mapping else g for g in gold_values]
    metrics["_plots"] = {"per_query": per_query, "per_query_k": per_query_k, "points_2d": points, "point_classes": classes,
                         "class_names": names}
    return metrics
