"""Full mode: fine-tune the whole encoder (all-MiniLM-L6-v2) with a similarity loss, plain PyTorch.

The loop mirrors the head trainer (:mod:`kern_finetune.train`) but backpropagates through the
transformer: class-aware batches of training texts, the configured loss (per-row sample weights
supported), AdamW with linear warmup then linear decay, gradient clipping, validation loss every
``eval_every`` steps with early stopping and the best state restored, fixed seed.

Settings that differ from head mode, and why (``RunConfig``'s ``epochs``, ``batch_size`` and ``lr`` are
the head's; ``encoder_lr`` is this mode's own):

- **learning rate** ``config.encoder_lr`` (3e-5 by default) for the transformer's weights:
  ``config.lr`` (1e-3 by default) is tuned for a freshly initialised head and would wreck pre-trained
  weights. Parameters of the loss itself (CosFace's proxies) are new, so they get ``config.lr``. On the
  sample (seed 42, ``benchmarks/results/full_mode.md``), without the blend below, test top_1k was
  73.59 / 74.32 / 73.78 / 71.77 at 7.5e-6 / 1.5e-5 / 3e-5 / 1e-4, although 1e-4 reached the lowest
  validation loss. (Those runs had no pseudo-labels; the pipeline adds them to ``sel`` before calling
  :func:`fit_full`, see :mod:`kern_finetune.pseudo`.) With the blend, a larger step blended back
  further does better: 3e-5 blended at 0.6 / 0.7 gave 76.26 / 76.12 vs 76.09 for 1.5e-5 at 0.7 (seed 42,
  with pseudo-labels, through the pipeline, ``full_mode.md``).
- **epochs** ``min(config.epochs, 1)`` on CPU (an epoch over a few thousand texts already takes
  minutes there), ``min(config.epochs, 3)`` on a GPU: the encoder moves far faster than a head and
  over-fits the (partly weak) labels within a few epochs; early stopping guards the rest. On the
  sample two CPU epochs gave 73.45 vs 74.37 for one (seed 42, ``full_mode_variants.md``).
- **batch size** ``min(config.batch_size, 32)`` on CPU, ``min(config.batch_size, 128)`` on a GPU:
  each row now costs a transformer forward and backward pass.
- **batches grouped by length**: each epoch's class-aware batches are pooled 16 at a time, sorted by
  token count and cut again (:func:`length_grouped`), so a step pads to its own longest text. On the
  sample (seed 42) a step took ~1.1 s instead of ~2.7 s on 2 cores, and test top_1k was 74.37 vs 74.32.
- **WiSE-FT blend** ``config.wise_alpha`` (0.7): the returned weights are ``0.3 * base + 0.7 * best``,
  weight by weight (Wortsman et al. 2022, https://arxiv.org/abs/2109.01903). The blend keeps what the
  base model knows about texts unlike the training ones. On the sample (seed 42, ``wise_sweep.md``)
  test top_1k went 75.42 -> 76.13 for a model fine-tuned at 1.5e-5 (alpha 0.7), and 74.95 -> 76.12 for
  one at 3e-5 (alpha 0.7; 0.5 / 0.6 / 0.8 gave 75.73 / 76.26 / 75.74). Blending further back buys
  neighbourhoods with linear-probe accuracy: through the pipeline, 3 seeds at 3e-5, alpha 0.6 gave top_1k
  76.22 +- 0.13 and a probe +2.81 points over raw, alpha 0.7 (the default) 76.15 +- 0.10 and +3.12
  (``full_mode.md``); the default is the alpha that clears both of the project's targets (top_1k >= 76,
  probe >= +3). The validation records cannot pick alpha: their top_250 on their own (confident) labels
  rises all the way to alpha 1 (92.14 / 92.80 / 93.18 / 93.42 / 93.56 at 0.5 / 0.6 / 0.7 / 0.8 / 1, seed 42,
  ``wise_sweep.py --val``), while the test records, those without a confident label, peak at 0.6-0.7.
  ``info`` keeps the blended model's validation loss (``val_loss_interpolated``).
- **cross-batch memory** ``config.encoder_memory`` (512 rows, supcon only): each batch is also
  contrasted with the detached embeddings of the previous 16 batches, so an anchor meets ~130
  positives instead of ~7. Neutral on the sample (seed 42, lr 1.5e-5: 75.43 vs 75.42 unblended,
  ``full_mode_variants.md``; 76.09 with the memory through the pipeline, ``full_mode.md``, vs 76.13 without,
  ``wise_sweep.md``, blended at 0.7) at no measurable cost; kept because the 3-seed benchmark ran with it.
- **max sequence length** 128 tokens while training (``MAX_SEQ_LENGTH``), as a per-call tokenizer
  override: the returned model keeps the base model's own limit (256), so it encodes exactly as a
  model loaded from its saved folder does.
- **validation** on at most ``MAX_VAL_ROWS`` (512) validation texts (a fixed, seeded subset), in eval
  mode (no dropout), with fixed class-aware batches, unweighted, like the head trainer. Step 0 (the
  base model) is evaluated too: if training never beats it, the base weights come back
  (``best_step == 0``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .encode import Encoder, load_sentence_transformer
from .heads import SkipConnectionHead
from .losses import make_loss
from .select import Selection
from .train import class_aware_batches

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from .config import RunConfig

__all__ = ["fit_full", "length_grouped", "MAX_SEQ_LENGTH", "MAX_VAL_ROWS", "WARMUP_FRACTION"]

log = logging.getLogger(__name__)

MAX_SEQ_LENGTH = 128
"""Tokens per text while training (AG-News titles + descriptions rarely exceed it)."""
MAX_VAL_ROWS = 512
"""Validation texts encoded at each evaluation, at most (a fixed seeded subset beyond that)."""
WARMUP_FRACTION = 0.1
"""Share of the steps over which the learning rate rises linearly from 0; it then decays linearly to 0."""
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
LENGTH_WINDOW = 16
"""Batches pooled when regrouping them by text length (:func:`length_grouped`)."""
MIN_DELTA = 1e-5
"""A validation loss counts as better only when it is lower by more than this."""


def length_grouped(batches: list[np.ndarray], lengths: np.ndarray, rng: np.random.Generator, *,
                   window: int = LENGTH_WINDOW) -> list[np.ndarray]:
    """Regroup ``batches`` so each holds texts of similar length, in a shuffled order.

    Every ``window`` consecutive batches are pooled, sorted by ``lengths`` (tokens per row) and cut
    back into batches of the same sizes; the resulting batches are then shuffled. Each pool is still
    class-balanced as a whole, but one batch's classes are only as mixed as the pool's lengths allow.
    Padding shrinks to the batch's own longest text: about 2.5x fewer transformer FLOPs per step on
    AG News (median 51 tokens, batches of random texts pad to ~100).
    """
    out: list[np.ndarray] = []
    for s in range(0, len(batches), window):
        group = batches[s : s + window]
        pool = np.concatenate(group)
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        cuts = np.cumsum([len(b) for b in group])[:-1]
        out.extend(np.split(pool, cuts))
    return [out[i] for i in rng.permutation(len(out))]


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _features(model: SentenceTransformer, texts: list[str], device: str, max_length: int) -> dict[str, Any]:
    """Tokenize ``texts`` (truncated to ``max_length`` tokens) and move the tensors to ``device``."""
    from sentence_transformers.util import batch_to_device

    return batch_to_device(model.preprocess(texts, max_length=max_length), torch.device(device))


def _embed(model: SentenceTransformer, texts: list[str], device: str, max_length: int) -> torch.Tensor:
    """Sentence embeddings of ``texts`` through the model as a module (grad tracked if enabled)."""
    return model(_features(model, texts, device, max_length))["sentence_embedding"]


@torch.no_grad()
def _val_loss(
    model: SentenceTransformer,
    loss_fn: nn.Module,
    texts: list[str],
    y: torch.Tensor,
    batches: list[np.ndarray],
    *,
    device: str,
    max_length: int,
    batch_size: int,
) -> float:
    """Mean loss over fixed class-aware batches of the validation texts, eval mode, unweighted."""
    was_training = model.training
    model.eval()
    try:
        parts = [_embed(model, texts[s : s + batch_size], device, max_length) for s in range(0, len(texts), batch_size)]
        z = torch.cat(parts)
        losses = []
        for b in batches:
            rows = torch.from_numpy(b).to(z.device)
            losses.append(float(loss_fn(z[rows], y[rows])))
    finally:
        model.train(was_training)
    return float(np.mean(losses))


def _param_groups(model: nn.Module, loss_fn: nn.Module, encoder_lr: float, loss_lr: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices, none on biases/LayerNorm; the loss's own params at ``loss_lr``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
    groups: list[dict[str, Any]] = [
        {"params": decay, "lr": encoder_lr, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "lr": encoder_lr, "weight_decay": 0.0},
    ]
    extra = [p for p in loss_fn.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "lr": loss_lr, "weight_decay": 0.0})
    return groups


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state (the best state so far)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _interpolate(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * tuned`` for every floating-point tensor; others from ``tuned``."""
    return {k: torch.lerp(base[k], v, alpha) if v.is_floating_point() else v for k, v in tuned.items()}


def fit_full(
    encoder: Encoder,
    sel: Selection,
    config: RunConfig,
    *,
    weights: np.ndarray | None = None,
    progress: bool = True,
    device: str | None = None,
    encoder_lr: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    max_steps: int | None = None,
    eval_every: int | None = None,
    max_seq_length: int = MAX_SEQ_LENGTH,
    max_val_rows: int = MAX_VAL_ROWS,
    group_by_length: bool = True,
    memory_size: int | None = None,
    wise_alpha: float | None = None,
) -> tuple[SentenceTransformer, SkipConnectionHead | None, dict[str, Any]]:
    """Fine-tune a fresh copy of ``encoder``'s model on ``sel``'s training labels.

    Args:
        encoder: gives the base model's folder (``encoder.path``); its own loaded model is not touched.
        sel: texts, labels and the train/validation split.
        config: loss, temperature, margin, patience, seed; ``epochs``/``batch_size``/``lr`` are read as
            upper bounds / the loss-parameter lr (module docstring).
        weights: optional per-record sample weights (indexed like ``sel.ids``), given to the loss for
            the training rows.
        progress: show a tqdm bar over the steps.
        device: ``"cuda"`` when available, else ``"cpu"``, unless given.
        encoder_lr: AdamW learning rate of the transformer's weights; default ``config.encoder_lr``.
        epochs: passes over the training texts; default ``min(config.epochs, 1)`` on CPU,
            ``min(config.epochs, 3)`` on a GPU.
        batch_size: default ``min(config.batch_size, 32)`` on CPU, ``min(config.batch_size, 128)`` on a GPU.
        max_steps: stop after this many optimizer steps (the schedule is planned for them).
        eval_every: steps between validation evaluations; default ``max(10, total_steps // 10)``.
            The last step is always evaluated, and so is step 0.
        max_seq_length: tokens per text while training and validating.
        max_val_rows: validation texts used per evaluation, at most.
        group_by_length: regroup each epoch's class-aware batches by text length
            (:func:`length_grouped`) so steps pad less.
        memory_size: rows of earlier batches (embeddings detached, with labels) each batch is also
            contrasted with (cross-batch memory; supcon only; 0 = off); default ``config.encoder_memory``
            with supcon, else 0.
        wise_alpha: the returned weights are ``(1 - wise_alpha) * base + wise_alpha * best``; default
            ``config.wise_alpha``.

    Returns:
        ``(model, None, info)``: the fine-tuned SentenceTransformer (best validation state, blended with the
        base weights per ``wise_alpha``, eval mode,
        on ``device``) whose output is the embedding itself, so no head; ``info`` has ``engine``,
        ``mode``, ``epochs_run``, ``steps``, ``best_step``, ``best_val_loss``, ``seconds``, ``device``,
        and the settings used plus the validation ``history``.
    """
    start = time.perf_counter()
    device = device or _default_device()
    encoder_lr = config.encoder_lr if encoder_lr is None else encoder_lr
    on_gpu = device.startswith("cuda")
    if epochs is None:
        epochs = min(config.epochs, 3 if on_gpu else 1)
    if batch_size is None:
        batch_size = min(config.batch_size, 128 if on_gpu else 32)
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    if memory_size is None:
        memory_size = config.encoder_memory if config.loss == "supcon" else 0
    if memory_size and config.loss != "supcon":
        raise ValueError(f"memory_size needs loss 'supcon', got {config.loss!r}")
    wise_alpha = config.wise_alpha if wise_alpha is None else wise_alpha
    if not 0.0 < wise_alpha <= 1.0:
        raise ValueError(f"wise_alpha must be in (0, 1], got {wise_alpha}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    model = load_sentence_transformer(encoder.path, device=device)
    train_idx, val_idx = np.asarray(sel.train_idx), np.asarray(sel.val_idx)
    if len(val_idx) > max_val_rows:
        val_idx = np.sort(np.random.default_rng(config.seed + 2).choice(val_idx, max_val_rows, replace=False))
    texts_t = [sel.texts[i] for i in train_idx]
    lengths_t = None
    if group_by_length:  # tokens per training text, for length_grouped
        tokens = model.tokenizer(texts_t, truncation=True, max_length=max_seq_length)["input_ids"]
        lengths_t = np.array([len(ids) for ids in tokens])
    y_t_np = sel.y[train_idx].astype(np.int64)
    y_t = torch.from_numpy(y_t_np).to(device)
    w_t = None if weights is None else torch.from_numpy(np.asarray(weights)[train_idx].astype(np.float32)).to(device)
    texts_v = [sel.texts[i] for i in val_idx]
    y_v_np = sel.y[val_idx].astype(np.int64)
    y_v = torch.from_numpy(y_v_np).to(device)
    val_rng = np.random.default_rng(config.seed + 1)
    val_batches = class_aware_batches(y_v_np, batch_size, val_rng) if len(val_idx) else []

    n_classes = len(sel.classes)
    dim = int(model.get_embedding_dimension() or 384)
    loss_fn = make_loss(config.loss, n_classes=n_classes, dim=dim, temperature=config.temperature, margin=config.margin)
    loss_fn.to(device)

    steps_per_epoch = max(1, math.ceil(len(train_idx) / batch_size))
    total_steps = epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max(1, max_steps))
    if eval_every is None:
        eval_every = max(10, total_steps // 10)
    warmup = max(1, math.ceil(WARMUP_FRACTION * total_steps))

    opt = torch.optim.AdamW(_param_groups(model, loss_fn, encoder_lr, config.lr))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    def validate() -> float:
        if not val_batches:
            return float("nan")
        return _val_loss(model, loss_fn, texts_v, y_v, val_batches, device=device, max_length=max_seq_length,
                         batch_size=max(batch_size, 64))

    best_val = validate()
    best_step, best_state = 0, _snapshot(model)
    base_state = best_state
    history: list[dict[str, float]] = [{"step": 0, "train_loss": float("nan"), "val_loss": best_val}]
    bad_evals, step, epochs_run, stopped_early = 0, 0, 0, False
    running: list[float] = []
    memory: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = deque()  # oldest batch first
    memory_rows = 0

    model.train()
    bar = tqdm(total=total_steps, desc=f"fine-tune encoder ({config.loss})", unit="step", disable=not progress)
    try:
        while step < total_steps and not stopped_early:
            epochs_run += 1
            batches = class_aware_batches(y_t_np, batch_size, rng)
            if lengths_t is not None:
                batches = length_grouped(batches, lengths_t, rng)
            for idx in batches:
                b = torch.from_numpy(idx).to(device)
                z = _embed(model, [texts_t[i] for i in idx], device, max_seq_length)
                w_b = None if w_t is None else w_t[b]
                if memory_size:
                    mem = None
                    if memory:
                        mem = (torch.cat([m[0] for m in memory]), torch.cat([m[1] for m in memory]),
                               None if w_b is None else torch.cat([m[2] for m in memory]))  # type: ignore[misc]
                    loss = loss_fn(z, y_t[b], w_b, memory=mem)
                    memory.append((z.detach(), y_t[b], w_b))
                    memory_rows += len(idx)
                    while memory_rows > memory_size:
                        memory_rows -= memory.popleft()[0].shape[0]
                else:
                    loss = loss_fn(z, y_t[b], w_b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                opt.step()
                sched.step()
                step += 1
                running.append(float(loss.detach()))
                bar.update(1)
                if step % eval_every == 0 or step == total_steps:
                    val = validate()
                    train_loss = float(np.mean(running))
                    running = []
                    history.append({"step": step, "train_loss": train_loss, "val_loss": val})
                    bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val:.4f}")
                    if not math.isfinite(best_val) or val < best_val - MIN_DELTA:
                        best_val, best_step, best_state, bad_evals = val, step, _snapshot(model), 0
                    else:
                        bad_evals += 1
                        if bad_evals >= config.patience:
                            log.info("early stop at step %d (best step %d)", step, best_step)
                            stopped_early = True
                if step >= total_steps or stopped_early:
                    break
    finally:
        bar.close()
    if not val_batches:  # nothing to select on: keep the last state
        best_step, best_state = step, _snapshot(model)
    val_loss_interpolated = None
    if wise_alpha < 1.0 and best_step > 0:
        best_state = _interpolate(base_state, best_state, wise_alpha)
        model.load_state_dict(best_state)
        val_loss_interpolated = validate()
    else:
        model.load_state_dict(best_state)
    model.eval()
    info: dict[str, Any] = {
        "engine": "native",
        "mode": "full",
        "epochs_run": epochs_run,
        "steps": step,
        "best_step": best_step,
        "best_val_loss": best_val,
        "seconds": round(time.perf_counter() - start, 2),
        "device": device,
        "stopped_early": stopped_early,
        "encoder_lr": encoder_lr,
        "batch_size": batch_size,
        "max_seq_length": max_seq_length,
        "group_by_length": group_by_length,
        "memory_size": memory_size,
        "wise_alpha": wise_alpha,
        "val_loss_interpolated": val_loss_interpolated,
        "warmup_steps": warmup,
        "eval_every": eval_every,
        "n_val_rows": int(len(val_idx)),
        "history": history,
    }
    return model, None, info
