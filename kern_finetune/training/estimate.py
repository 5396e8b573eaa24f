"""``--mode auto``: full mode when its estimated time on *this* machine fits ``--time-budget``, else head mode.

The estimate is calibrated at run time on the project's own texts, under the machine's present load (a
figure measured elsewhere or earlier would not be honest on a shared machine): the steps are planned as
:class:`~kern_finetune.training.train_full.FullTrainer` takes them, each costing a constant plus a share per
padded token fitted on a few real, timed training steps; a timed forward pass and a timed validation pass
price the validations, re-encoding every record and the model door's replay; loading the model and
tokenizing, measured on the way, are added. Calibration stops after the first step when full mode is
clearly past twice the budget. Figures: ``docs/decisions.md``, "mode and time budget".
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..vectors.encode import Encoder
    from ..labels.select import Selection

__all__ = ["FullModeEstimate", "ModeChoice", "choose_mode", "estimate_full_mode"]

FORWARD_SAMPLE = 256
"""Texts encoded to measure the forward rate, after a warm-up of 64 (``docs/decisions.md``, "mode and time budget")."""
VALIDATION_SAMPLE = 128
"""Validation texts embedded to time the validation passes."""
STEP_QUANTILES = (0.2, 0.5, 0.9)
"""Planned batches timed, by their padded tokens."""


@dataclass(frozen=True)
class FullModeEstimate:
    """Estimated seconds of full mode's training stage on this machine, and how they were found."""

    seconds: float
    """Total: ``overhead + steps + validation + reencode``."""
    steps: int
    epochs: int
    batch_size: int
    n_train_rows: int
    """Training rows, pseudo-labels included."""
    n_pseudo: int
    step_seconds: float
    """Mean estimated seconds per planned step."""
    step_fit: dict[str, Any]
    """``intercept`` (s) and ``per_token`` (s per padded token) of the step cost line, and the timed steps."""
    forward_tokens_per_s: float
    train_steps_seconds: float
    validation_seconds: float
    reencode_seconds: float
    overhead_seconds: float
    calibration_seconds: float
    """Time spent measuring (not part of ``seconds``)."""
    device: str
    complete: bool = True
    """False when calibration stopped after one step because full mode was far over budget."""

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class ModeChoice:
    """What ``--mode auto`` chose and why. ``mode`` is ``head`` or ``full``."""

    requested: str
    mode: str
    reason: str
    budget_seconds: float | None = None
    estimate: FullModeEstimate | None = None

    @property
    def message(self) -> str:
        return f"{self.mode} mode: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "mode": self.mode, "reason": self.reason, "message": self.message,
                "budget_seconds": self.budget_seconds,
                "estimate": None if self.estimate is None else self.estimate.to_dict()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def choose_mode(encoder: Encoder, sel: Selection, base: np.ndarray, config: RunConfig, *,
                device: str | None = None) -> ModeChoice:
    """Resolve ``config.mode``: ``head``/``full`` stay as they are; ``auto`` estimates full mode and decides."""
    if config.mode != "auto":
        return ModeChoice(requested=config.mode, mode=config.mode, reason="chosen with --mode")
    if config.engine != "native":
        return ModeChoice(requested="auto", mode="head", reason=f"--engine {config.engine} trains heads only")
    import torch

    budget = float(config.time_budget)
    with torch.random.fork_rng(devices=[]):  # calibration's dropout must not shift the run's random stream
        est = estimate_full_mode(encoder, sel, base, config, device=device, give_up_above=2 * budget)
    verb = "fits" if est.seconds <= budget else "exceeds"
    if est.complete:
        reason = (f"full mode estimated at {est.seconds:.0f} s ({est.steps} steps x {est.step_seconds:.2f} s, "
                  f"validation {est.validation_seconds:.0f} s, re-encoding {est.reencode_seconds:.0f} s; calibrated on "
                  f"this machine now), which {verb} the time budget of {budget:.0f} s")
    else:
        reason = (f"full mode's {est.steps} training steps alone are estimated at {est.seconds:.0f} s (one step timed "
                  f"on this machine now at {est.step_fit['timed_steps'][0]:.2f} s; calibration stopped there), which "
                  f"exceeds the time budget of {budget:.0f} s")
    return ModeChoice(requested="auto", mode="full" if est.seconds <= budget else "head", reason=reason,
                      budget_seconds=budget, estimate=est)


def estimate_full_mode(encoder: Encoder, sel: Selection, base: np.ndarray, config: RunConfig, *,
                       device: str | None = None, give_up_above: float = math.inf) -> FullModeEstimate:
    """Estimate full mode's training stage (full-mode training + re-encoding every record) on this machine, now."""
    from ..vectors.encode import load_sentence_transformer, resolve_device
    from ..labels.pseudo import find_pseudo_labels, with_pseudo_labels
    from .samplers import class_aware_batches, length_grouped
    from .train_full import MAX_SEQ_LENGTH, full_mode_schedule

    t_start = time.perf_counter()
    device = resolve_device(device)
    threshold = dataclasses.replace(config, mode="full").pseudo_threshold
    n_pseudo = 0
    train_sel = sel
    if threshold is not None:
        found = find_pseudo_labels(base, sel, threshold=threshold, seed=config.seed)
        n_pseudo = int(len(found["indices"]))
        train_sel = with_pseudo_labels(sel, found)
    epochs, batch_size = full_mode_schedule(config, device)

    # --- what FullTrainer.fit does before its first step: load, tokenize (measured as overhead)
    t = time.perf_counter()
    model = load_sentence_transformer(encoder.path, device=device)
    train_idx = np.asarray(train_sel.train_idx)
    texts_t = [train_sel.texts[i] for i in train_idx]
    lengths = np.array([len(ids) for ids in model.tokenizer(texts_t, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"]])
    overhead = time.perf_counter() - t

    # --- the plan: FullTrainer's own batches for the first epoch (same rng, same calls)
    y_t = train_sel.y[train_idx].astype(np.int64)
    rng = np.random.default_rng(config.seed)
    batches = length_grouped(class_aware_batches(y_t, batch_size, rng), lengths, rng)
    padded = np.array([len(b) * int(lengths[b].max()) for b in batches], dtype=np.float64)
    steps = epochs * len(batches)

    # --- time real steps on planned batches
    intercept, per_token, xs, ts, complete = _time_steps(model, config, texts=texts_t, y=y_t, batches=batches,
                                                         padded=padded, steps=steps, device=device,
                                                         give_up_above=give_up_above)
    train_steps_s = epochs * float(np.sum(intercept + per_token * padded))

    fwd_rate = float("nan")
    val_s = reencode_s = 0.0
    if complete:
        fwd_rate, val_s, reencode_s = _forward_costs(model, sel, config, device=device, batch_size=batch_size, steps=steps)
    total = overhead + train_steps_s + val_s + reencode_s
    return FullModeEstimate(
        seconds=float(total), steps=int(steps), epochs=int(epochs), batch_size=int(batch_size),
        n_train_rows=int(len(train_idx)), n_pseudo=n_pseudo, step_seconds=float(train_steps_s / max(steps, 1)),
        step_fit={"intercept": float(intercept), "per_token": float(per_token),
                  "timed_steps": [round(float(x), 4) for x in ts], "timed_padded_tokens": [int(x) for x in xs]},
        forward_tokens_per_s=fwd_rate, train_steps_seconds=float(train_steps_s), validation_seconds=float(val_s),
        reencode_seconds=float(reencode_s), overhead_seconds=float(overhead),
        calibration_seconds=float(time.perf_counter() - t_start), device=device, complete=complete,
    )


def _time_steps(model: Any, config: RunConfig, *, texts: list[str], y: np.ndarray, batches: list[np.ndarray],
                padded: np.ndarray, steps: int, device: str,
                give_up_above: float) -> tuple[float, float, list[float], list[float], bool]:
    """``(intercept, per_token, padded sizes timed, seconds, complete)`` of real training steps on the planned
    batches at :data:`STEP_QUANTILES`; gives up after the first when the run would clearly exceed ``give_up_above``."""
    import torch

    from .losses import make_loss
    from .train_full import ENCODER_LR, MAX_SEQ_LENGTH

    loss_fn = make_loss(config.loss).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ENCODER_LR)
    model.train()

    def step(idx: np.ndarray) -> float:
        _sync(device)
        t0 = time.perf_counter()
        feats = model.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_SEQ_LENGTH,
                                return_tensors="pt")
        feats = {k: v.to(device) for k, v in feats.items()}
        z = model(feats)["sentence_embedding"]
        loss = loss_fn(z, torch.from_numpy(y[idx]).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        _sync(device)
        return time.perf_counter() - t0

    order = np.argsort(padded, kind="stable")
    picks = [int(order[min(len(order) - 1, int(q * len(order)))]) for q in STEP_QUANTILES]
    small = batches[int(order[0])]
    step(small[: max(4, min(len(small), 8))])  # warm-up: first-call allocations are not a step's cost
    xs, ts = [], []
    complete = True
    for i, p in enumerate(picks):
        ts.append(step(batches[p]))
        xs.append(padded[p])
        if i == 0 and steps * ts[0] * (padded.mean() / padded[p]) > give_up_above:
            complete = False
            break
    intercept, per_token = _fit_line(np.array(xs), np.array(ts))
    return intercept, per_token, xs, ts, complete


def _forward_costs(model: Any, sel: Selection, config: RunConfig, *, device: str, batch_size: int,
                   steps: int) -> tuple[float, float, float]:
    """(forward tokens/s, validation seconds, re-encoding seconds) of full mode, from one timed forward pass."""
    from .train_full import MAX_SEQ_LENGTH, MAX_VAL_ROWS

    val_s = 0.0
    model.eval()
    rng_f = np.random.default_rng(config.seed + 3)
    candidates = [i for i, s in enumerate(sel.texts) if s]
    sample = [sel.texts[i] for i in rng_f.choice(candidates, size=min(FORWARD_SAMPLE, len(candidates)), replace=False)]
    tok_sample = sum(len(x) for x in model.tokenizer(sample, truncation=True, max_length=model.max_seq_length)["input_ids"])
    model.encode(sample[:64], batch_size=config.encode_batch_size, show_progress_bar=False)  # warm-up
    _sync(device)
    t = time.perf_counter()
    model.encode(sample, batch_size=config.encode_batch_size, show_progress_bar=False)
    _sync(device)
    fwd_rate = tok_sample / max(time.perf_counter() - t, 1e-6)

    # validation: FullTrainer's evaluations at step 0, every eval_every steps, the last step, after the blend
    val_idx = np.asarray(sel.val_idx)
    if len(val_idx) > MAX_VAL_ROWS:
        val_idx = np.sort(np.random.default_rng(config.seed + 2).choice(val_idx, MAX_VAL_ROWS, replace=False))
    if len(val_idx):
        val_texts = [sel.texts[i] for i in val_idx]
        v_len = np.array([len(x) for x in model.tokenizer(val_texts, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"]])
        chunk = max(batch_size, 64)
        v_padded = sum(len(v_len[s : s + chunk]) * int(v_len[s : s + chunk].max()) for s in range(0, len(v_len), chunk))
        eval_every = max(10, steps // 10)
        n_evals = 1 + steps // eval_every + (1 if steps % eval_every else 0) + (1 if config.wise_alpha < 1 else 0)
        val_s = n_evals * v_padded / _validation_rate(model, val_texts, chunk, device=device)
    # re-encoding every record with the fine-tuned model (its own max length, batches sorted by length), and the
    # model door's replay at its worst: the base model and every candidate pull encode a sample of the records,
    # and a pulled model encodes every record once more (kern_finetune.vectors.base_share.encoder_door)
    from ..vectors.base_share import MAX_REPLAY_RECORDS, PULLS

    all_tokens = sum(len(x) for x in model.tokenizer(list(sel.texts), truncation=True,
                                                      max_length=model.max_seq_length)["input_ids"])
    share = min(1.0, MAX_REPLAY_RECORDS / max(len(sel.texts), 1))
    reencode_s = all_tokens / fwd_rate * (2.0 + (len(PULLS) + 1) * share)
    return fwd_rate, val_s, reencode_s


def _validation_rate(model: Any, texts: list[str], chunk: int, *, device: str) -> float:
    """Padded tokens per second of ``FullTrainer``'s validation embedding (``chunk`` texts at a time, each chunk
    padded to its longest), timed on at most :data:`VALIDATION_SAMPLE` texts. Timed, not derived from the encode
    rate: padding costs less per token than real tokens (``docs/decisions.md``, "mode and time budget")."""
    import torch
    from sentence_transformers.util import batch_to_device

    from .train_full import MAX_SEQ_LENGTH

    def embed(part: list[str]) -> None:  # as train_full embeds: preprocess at the training length, forward
        model(batch_to_device(model.preprocess(part, max_length=MAX_SEQ_LENGTH), torch.device(device)))

    texts = texts[: max(chunk, VALIDATION_SAMPLE)]
    with torch.no_grad():
        embed(texts[: min(8, len(texts))])  # warm-up
        _sync(device)
        t = time.perf_counter()
        padded = 0
        for s in range(0, len(texts), chunk):
            part = texts[s : s + chunk]
            padded += len(part) * max(len(x) for x in model.tokenizer(part, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"])
            embed(part)
        _sync(device)
    return padded / max(time.perf_counter() - t, 1e-6)


def _fit_line(x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Least squares ``t = a + b x`` with ``a >= 0`` and ``b >= 0``; through the origin when the points disagree."""
    if len(x) >= 2 and np.ptp(x) > 0.1 * x.mean():
        b, a = np.polyfit(x, t, 1)
        if a >= 0 and b >= 0:
            return float(a), float(b)
    return 0.0, float(t.sum() / max(x.sum(), 1e-9))
