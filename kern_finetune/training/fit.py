"""Stage 3 of the pipeline: from the selected labels and the base vectors to a fitted model and its vectors.

:func:`fit` runs, in order: the label check (:mod:`kern_finetune.labels.label_check`: drop likely wrong weak labels),
``--mode auto``'s choice (:mod:`kern_finetune.training.estimate`), pseudo-labels (:mod:`kern_finetune.labels.pseudo`,
training only), the engine (:mod:`kern_finetune.training.trainer`: the head engines of
:func:`kern_finetune.training.train.fit_head` or :class:`kern_finetune.training.train_full.FullTrainer`), the fitted engine's
``transform`` over every record, the neighbour smoothing of those vectors (:mod:`kern_finetune.vectors.smooth`) and
the search spread that keeps refinery's threshold search from starving (:mod:`kern_finetune.vectors.spread`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..config import RunConfig
from ..vectors.encode import Encoder
from ..labels.select import Selection, gold_to_class
from .trainer import Trainer, TrainResult

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from .estimate import ModeChoice
    from .heads import SkipConnectionHead
    from ..vectors.base_share import BaseShare, EncoderPull
    from ..vectors.smooth import Smoothing
    from ..vectors.spread import Spread

__all__ = ["Fitted", "fit", "audit_label_check"]

ProgressFn = Callable[[str], None]


@dataclass
class Fitted:
    """The fitted engine and what it gives. ``vectors[i]`` (L2-normalised float32) is record ``i``'s."""

    trainer: Trainer
    """The fitted engine (:mod:`kern_finetune.training.trainer`); ``transform`` maps base vectors (head mode) or
    texts (full mode) to the fine-tuned vectors."""
    vectors: np.ndarray
    selection: Selection
    """The selection after the label check: what evaluation reads (pseudo-labels never leave training)."""
    config: RunConfig
    """The run's settings with ``mode`` resolved (``auto`` -> ``head`` or ``full``)."""
    training: TrainResult
    seconds: float
    """Training plus the transform of every record."""
    label_check: dict[str, Any] | None = None
    """:func:`kern_finetune.labels.label_check.find_label_issues`'s result (None: ``noise_filter="off"``)."""
    label_audit: dict[str, Any] = dataclasses.field(default_factory=dict)
    pseudo: dict[str, Any] | None = None
    mode_choice: ModeChoice | None = None
    smoothing: Smoothing | None = None
    """What :mod:`kern_finetune.vectors.smooth` did to ``vectors`` (None: ``--smooth 0``)."""
    spread: Spread | None = None
    """What :mod:`kern_finetune.vectors.spread` did to ``vectors`` (None: ``--spread 0``); with a strength above 0 the
    vectors have one dimension more than the model's."""
    model_vectors: np.ndarray | None = None
    """What the written model folder gives for every record (the model door's embedding before refinery's
    PCA): the head beside the base share, or the base vector itself where the held-out labels chose refinery's
    stock embedding (head mode, :mod:`kern_finetune.vectors.base_share`), or the fine-tuned encoder's output (full
    mode). Neither smoothed nor spread: a model cannot carry those."""
    door: BaseShare | None = None
    """Head mode: the affine map the model folder applies after the base model (:mod:`kern_finetune.vectors.base_share`)."""
    pull: EncoderPull | None = None
    """Full mode: how far the model folder's encoder was pulled back towards the base model."""

    @property
    def head(self) -> SkipConnectionHead | None:
        """The trained head (head mode), else None."""
        return getattr(self.trainer, "head_", None)

    @property
    def model(self) -> SentenceTransformer | None:
        """The fine-tuned encoder (full mode), else None."""
        return getattr(self.trainer, "model_", None)

    def transform(self, x: Any) -> np.ndarray:
        """The engine's output for ``x`` (base vectors or texts), without the neighbour smoothing, which
        needs the project's other records."""
        return self.trainer.transform(x)


def audit_label_check(sel: Selection, noise: dict[str, Any]) -> dict[str, Any]:
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


def _check_labels(sel: Selection, base: np.ndarray, config: RunConfig, say: ProgressFn) -> dict[str, Any]:
    """The label check; ``selection`` without the flagged weak labels when ``noise_filter`` is ``drop``."""
    from ..labels.label_check import find_label_issues, without_label_issues

    noise = find_label_issues(base, sel, seed=config.seed)
    audit = audit_label_check(sel, noise)  # before dropping: the audit looks at every checked label
    out = {"label_check": noise, "label_audit": audit, "selection": sel}
    if config.noise_filter == "drop":
        out["selection"] = without_label_issues(sel, noise)
    say(f"      label check: {len(noise['indices'])} likely wrong weak labels ({config.noise_filter})"
        + (f"; not run: {noise['note']}" if noise["note"] else f", {noise['n_folds']} folds")
        + (f"; classes with too few labels to check: {', '.join(noise['unchecked_classes'])}"
           if noise["unchecked_classes"] and not noise["note"] else ""))
    return out


def _with_pseudo_labels(sel: Selection, base: np.ndarray, config: RunConfig, say: ProgressFn) -> tuple[Selection, dict[str, Any] | None]:
    threshold = config.pseudo_threshold
    if threshold is None:
        return sel, None
    from ..labels.pseudo import find_pseudo_labels, with_pseudo_labels

    pseudo = find_pseudo_labels(base, sel, threshold=threshold, seed=config.seed)
    train_sel = with_pseudo_labels(sel, pseudo)  # training only: evaluation keeps reading `sel`
    say(f"      pseudo-labels: {len(pseudo['indices'])} of {pseudo['n_candidates']} unlabeled records "
        f"predicted with p > {threshold} join training")
    return train_sel, pseudo


def _train(encoder: Encoder, sel: Selection, base: np.ndarray, config: RunConfig) -> tuple[Trainer, np.ndarray]:
    """The engine ``config`` names, fitted on ``sel``'s training rows, and its output for every record."""
    if config.mode == "full":
        from .train_full import FullTrainer

        trainer = FullTrainer.from_config(config, model_path=encoder.path, device=config.resolved_device())
        tr, va = sel.train_idx, sel.val_idx
        trainer.fit([sel.texts[i] for i in tr], sel.y[tr], [sel.texts[i] for i in va], sel.y[va])
        return trainer, trainer.transform(sel.texts)
    from .train import fit_head

    head_trainer = fit_head(base, sel, config)
    return head_trainer, head_trainer.transform(base)


def fit(encoder: Encoder, sel: Selection, base: np.ndarray, config: RunConfig, *,
        progress: ProgressFn | None = None) -> Fitted:
    """Check the labels, resolve ``--mode auto``, add pseudo-labels, train and transform every record.

    ``encoder`` gave ``base`` (rows = ``sel.ids``) and names the base model full mode fine-tunes.
    """
    say = progress or (lambda _msg: None)
    selected = sel  # as selected, before the label check: the smoothing's held-out queries come from it
    checked: dict[str, Any] = {"label_check": None, "label_audit": {}, "selection": sel}
    if config.noise_filter != "off":
        checked = _check_labels(sel, base, config, say)
    sel = checked["selection"]
    choice = None
    if config.mode == "auto":  # needs the labels and texts, so it is decided here rather than before selecting
        from .estimate import choose_mode

        say(f"      --mode auto: estimating full mode on this machine (budget {config.time_budget:.0f} s)")
        choice = choose_mode(encoder, sel, base, config, device=config.resolved_device())  # where full mode would train
        config = dataclasses.replace(config, mode=choice.mode)
        say(f"      --mode auto chose {choice.message}")
    train_sel, pseudo = _with_pseudo_labels(sel, base, config, say)

    say(f"[3/5] train ({config.engine} engine, {config.mode} mode, loss {config.loss})")
    t = time.perf_counter()
    trainer, vectors = _train(encoder, train_sel, base, config)
    seconds = time.perf_counter() - t
    say(f"      {trainer.result_.epochs_run} epochs in {seconds:.1f} s")
    door, pull, model_vectors = _model_door(encoder, trainer, vectors, base, sel, selected, config)
    if door is not None:
        labels = door.n_held_out > 0  # without validation labels the searches alone chose
        what = (f"head beside a base share of {door.share:g}" if not door.gives_stock else
                "refinery's stock embedding (the head dropped: no base share that keeps the lists full "
                + ("beat its first screen on the validation labels)" if labels else "was found)"))
        how = (f" (chosen on {door.n_queries} searches as refinery's embedder computes it"
               + (f" and the first screens of {door.n_held_out} validation records)" if labels else ", no labels)")
               if door.chosen else "")
        say(f"      model folder: {what}{how}, {door.seconds:.1f} s")
    if pull is not None:
        say(f"      model folder: the encoder keeps {pull.pull:g} of its training's weight change (chosen on "
            f"{pull.n_records} records as refinery's embedder computes it, no labels), {pull.seconds:.1f} s")
    smoothing = None
    if config.smooth_weight != 0.0:
        from ..vectors.smooth import smooth_vectors

        vectors, smoothing = smooth_vectors(vectors, base, selected, weight=config.smooth_weight, seed=config.seed)
        say(f"      neighbour smoothing: weight {smoothing.weight:g} over {smoothing.neighbours} base-model neighbours"
            + (f" (chosen on {smoothing.n_queries} validation records)" if smoothing.chosen else "")
            + f", {smoothing.seconds:.1f} s")
    spread = None
    if config.spread_strength != 0.0:
        from ..vectors.spread import spread_vectors

        vectors, spread = spread_vectors(vectors, base, strength=config.spread_strength, seed=config.seed)
        say(f"      search spread: strength {spread.strength:g}"
            + (f" (chosen on {spread.n_queries} searches, no labels)" if spread.chosen else "")
            + f", {spread.seconds:.1f} s")
    return Fitted(trainer=trainer, vectors=vectors, selection=sel, config=config, training=trainer.result_,
                  seconds=seconds, label_check=checked["label_check"], label_audit=checked["label_audit"],
                  pseudo=pseudo, mode_choice=choice, smoothing=smoothing, spread=spread,
                  model_vectors=model_vectors, door=door, pull=pull)


def _model_door(encoder: Encoder, trainer: Trainer, vectors: np.ndarray, base: np.ndarray, sel: Selection,
                selected: Selection, config: RunConfig) -> tuple[BaseShare | None, EncoderPull | None, np.ndarray]:
    """What the model folder computes, chosen by replaying refinery's embedder (:mod:`kern_finetune.vectors.base_share`),
    and what it gives for every record. Head mode: the head beside the base share, or refinery's stock
    embedding, judged on ``selected``'s validation labels (the selection before the label check, as the
    smoothing reads them). Full mode: the trained encoder pulled back towards the base model as far as the
    replay asks (the model is changed in place)."""
    from ..vectors.base_share import encoder_door, head_door

    head = getattr(trainer, "head_", None)
    if head is not None:
        weight, bias = head.as_affine()
        door = head_door(weight.double().numpy(), bias.double().numpy(), base, sel.ids, sel=selected, seed=config.seed)
        return door, None, door.transform(base)
    model = getattr(trainer, "model_", None)
    if model is None:
        return None, None, vectors
    pull = encoder_door(model, encoder.model(), sel.texts, sel.ids, batch_size=config.encode_batch_size, seed=config.seed)
    return None, pull, vectors if pull.pull == 1.0 else trainer.transform(sel.texts)
