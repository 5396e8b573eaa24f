"""Research variant, not in the product: full mode trained by several processes at once (torch DDP).

It was ``kern_finetune/train_ddp.py`` and ``--full-workers`` until the prune of issue 31: its speed-up was
never measured (no multi-GPU machine was lent, and on 2 CPU cores two processes only compete), so it left
the package and lives here, importing the product's full-mode trainer. Use it from Python::

    from full_mode_ddp import DataParallelFullTrainer   # run from benchmarks/
    trainer = DataParallelFullTrainer.from_config(config, model_path=..., device="cuda", workers=2)
    trainer.fit(train_texts, train_y, val_texts, val_y)

:class:`DataParallelFullTrainer` starts ``workers`` processes (``torch.multiprocessing.spawn``), one per GPU
on a CUDA machine (backend ``nccl``) or one per group of CPU cores (``gloo``). Every process holds a replica
of the model wrapped in :class:`torch.nn.parallel.DistributedDataParallel`; each step draws one global
class-aware batch of ``batch_size x workers`` training texts (the same seeded draw in every process,
regrouped by length), and process ``r`` embeds rows ``r, r + workers, ...`` of it. DDP averages the
gradients, so the replicas stay identical. The loss contrasts each process's rows among themselves, so
``batch_size`` is per process. Shared with :class:`kern_finetune.training.train_full.FullTrainer`: the loss, AdamW at
the encoder's rate (decay on weight matrices only), linear warmup then decay, gradient clipping at 1, the
token limit, validation with early stopping (process 0 validates and tells the others whether to stop), the
WiSE-FT blend, re-encoding every record in the calling process. Its test, 2 gloo processes on a tiny
subset, was ``tests/test_train_ddp.py`` at commit 3cc078b.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from kern_finetune.vectors.encode import load_sentence_transformer, resolve_device
from kern_finetune.training.losses import make_loss
from kern_finetune.training.samplers import class_aware_batches, length_grouped
from kern_finetune.training.train_full import MAX_SEQ_LENGTH, MAX_VAL_ROWS, WARMUP_FRACTION, FullTrainer, _param_groups
from kern_finetune.training.trainer import TrainResult

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from kern_finetune.config import RunConfig

__all__ = ["DataParallelFullTrainer"]

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
MIN_DELTA = 1e-5


class DataParallelFullTrainer(FullTrainer):
    """Full mode in ``workers`` processes (the interface of :mod:`kern_finetune.training.trainer`; ``x`` are texts).

    A :class:`~kern_finetune.training.train_full.FullTrainer` (its settings, ``from_config`` and ``transform``) whose
    ``fit`` trains in ``workers`` processes (at least 2; on CUDA at most the visible GPUs, one each), with
    ``backend`` (default ``nccl`` on CUDA, else ``gloo``) and ``threads_per_worker`` (torch threads of a CPU
    process; None: this process's threads divided over the workers). ``batch_size`` is per process. Not
    used here: ``max_val_rows``, ``max_seq_length`` and ``group_by_length`` (the module's constants, always
    grouped).

    :meth:`fit` sets ``model_`` (the blended best state, eval mode, on ``device_``), ``result_`` (``details``:
    ``workers``, ``backend``, ``global_batch_size``, ``steps``, ``best_step``, ``replicas_identical``: whether
    every process ended with the same weights, i.e. DDP kept them in step).
    """

    def __init__(self, *, workers: int, backend: str | None = None, threads_per_worker: int | None = None,
                 **settings: Any) -> None:
        super().__init__(**settings)
        self.workers = workers
        self.backend = backend
        self.threads_per_worker = threads_per_worker

    @classmethod
    def from_config(cls, config: RunConfig, *, model_path: Path | str, device: str | None = None,
                    progress: bool = True, **settings: Any) -> DataParallelFullTrainer:
        """:meth:`FullTrainer.from_config`; ``settings`` must name ``workers``."""
        trainer = super().from_config(config, model_path=model_path, device=device, progress=progress, **settings)
        assert isinstance(trainer, DataParallelFullTrainer)
        return trainer

    def _check_workers(self, device: str) -> None:
        if self.workers < 2:
            raise ValueError(f"workers must be at least 2 for data-parallel training, got {self.workers}")
        if device.startswith("cuda") and self.workers > torch.cuda.device_count():
            raise ValueError(f"{self.workers} workers but {torch.cuda.device_count()} CUDA devices")

    def fit(self, x_train: list[str], y_train: np.ndarray, x_val: list[str], y_val: np.ndarray) -> DataParallelFullTrainer:
        """Fine-tune on the training texts in ``workers`` processes; validate (process 0) on at most
        :data:`~kern_finetune.training.train_full.MAX_VAL_ROWS` validation texts. Returns ``self``."""
        start = time.perf_counter()
        self.device_ = device = resolve_device(self.device)
        self._check_workers(device)
        self._check()
        backend = self.backend or ("nccl" if device.startswith("cuda") else "gloo")
        n_train, n_val = len(x_train), len(x_val)
        y = np.concatenate([np.asarray(y_train), np.asarray(y_val)]).astype(np.int64)
        threads = self.threads_per_worker or max(1, torch.get_num_threads() // self.workers)
        job = {
            "path": str(self.model_path), "texts": list(x_train) + list(x_val), "y": y,
            "train_idx": np.arange(n_train), "val_idx": np.arange(n_train, n_train + n_val),
            "loss": self.loss, "seed": self.seed, "encoder_lr": self.encoder_lr, "patience": self.patience, "wise_alpha": self.wise_alpha,
            "epochs": self.epochs, "batch_size": self.batch_size, "max_steps": self.max_steps,
            "eval_every": self.eval_every, "device": device, "backend": backend, "threads": threads,
        }
        log.info("full mode on %d %s processes (%s), %d training texts", self.workers, device, backend, n_train)
        with tempfile.TemporaryDirectory(prefix="kern-ddp-") as tmp:
            torch.multiprocessing.spawn(_worker, args=(self.workers, job, tmp), nprocs=self.workers, join=True)
            state = torch.load(Path(tmp) / "state.pt", map_location="cpu")
            info = torch.load(Path(tmp) / "info.pt")
            sums = [torch.load(Path(tmp) / f"checksum-{r}.pt") for r in range(self.workers)]
        self.model_ = model = load_sentence_transformer(self.model_path, device=device)
        model.load_state_dict(state)
        model.eval()
        history = info.pop("history")
        steps_per_epoch = max(1, math.ceil(n_train / info["global_batch_size"]))
        self.result_ = TrainResult(
            engine="native", mode="full", history=history, epochs_run=info.pop("epochs_run"),
            best_epoch=math.ceil(info["best_step"] / steps_per_epoch), best_val_loss=info.pop("best_val_loss"),
            stopped_early=info.pop("stopped_early"), seconds=round(time.perf_counter() - start, 2),
            details={**info, "encoder_lr": self.encoder_lr, "threads_per_worker": threads,
                     "replicas_identical": all(torch.equal(sums[0], s) for s in sums)},
        )
        return self


# ---------------------------------------------------------------- one process


def _embed(module: nn.Module, st: SentenceTransformer, texts: list[str], device: str) -> torch.Tensor:
    """Embeddings through ``module`` (the DDP wrapper while training, the bare model when validating)."""
    from sentence_transformers.util import batch_to_device

    features = batch_to_device(st.preprocess(texts, max_length=MAX_SEQ_LENGTH), torch.device(device))
    return module(features)["sentence_embedding"]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, job: dict[str, Any], tmp: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(job["threads"])
    dist.init_process_group(job["backend"], init_method=f"file://{os.path.join(tmp, 'rendezvous')}", rank=rank,
                            world_size=world)
    try:
        device = f"cuda:{rank}" if job["device"].startswith("cuda") else "cpu"
        if device.startswith("cuda"):
            torch.cuda.set_device(rank)
        torch.manual_seed(job["seed"])
        rng = np.random.default_rng(job["seed"])  # the same draw in every process: the global batches agree
        st = load_sentence_transformer(job["path"], device=device)
        base_state = _snapshot(st)
        for name, p in st.named_parameters():  # BERT's pooler is loaded but the sentence embedding never uses it:
            if ".pooler." in name:  # DDP must not wait for its gradients (it gets none in fit_full either)
                p.requires_grad_(False)
        ddp = DistributedDataParallel(st, device_ids=[rank] if device.startswith("cuda") else None)
        texts, y_all = job["texts"], job["y"]
        train_idx, val_idx = job["train_idx"], job["val_idx"]
        if len(val_idx) > MAX_VAL_ROWS:
            val_idx = np.sort(np.random.default_rng(job["seed"] + 2).choice(val_idx, MAX_VAL_ROWS, replace=False))
        texts_t = [texts[i] for i in train_idx]
        y_t_np = y_all[train_idx].astype(np.int64)
        y_t = torch.from_numpy(y_t_np).to(device)
        lengths = np.array([len(ids) for ids in st.tokenizer(texts_t, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"]])
        texts_v = [texts[i] for i in val_idx]
        y_v_np = y_all[val_idx].astype(np.int64)
        y_v = torch.from_numpy(y_v_np).to(device)
        val_batches = class_aware_batches(y_v_np, job["batch_size"], np.random.default_rng(job["seed"] + 1)) if len(val_idx) else []
        loss_fn = make_loss(job["loss"]).to(device)
        global_batch = job["batch_size"] * world
        steps_per_epoch = max(1, math.ceil(len(train_idx) / global_batch))
        total = job["epochs"] * steps_per_epoch
        if job["max_steps"] is not None:
            total = min(total, max(1, job["max_steps"]))
        eval_every = job["eval_every"] or max(10, total // 10)
        warmup = max(1, math.ceil(WARMUP_FRACTION * total))
        opt = torch.optim.AdamW(_param_groups(st, job["encoder_lr"]))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))

        @torch.no_grad()
        def validate() -> float:
            if not val_batches:
                return float("nan")
            st.eval()
            z = torch.cat([_embed(st, st, texts_v[s : s + 64], device) for s in range(0, len(texts_v), 64)])
            st.train()
            return float(np.mean([float(loss_fn(z[torch.from_numpy(b).to(device)], y_v[torch.from_numpy(b).to(device)]))
                                  for b in val_batches]))

        best_val = validate() if rank == 0 else float("nan")
        best_step, best_state = 0, base_state
        history = [{"step": 0, "val_loss": best_val}]
        bad, step, epochs_run, stop = 0, 0, 0, False
        st.train()
        while step < total and not stop:
            epochs_run += 1
            batches = length_grouped(class_aware_batches(y_t_np, global_batch, rng), lengths, rng)
            for idx in batches:
                if len(idx) < 2 * world:  # a last, short global batch: every process skips it alike
                    continue
                mine = idx[rank::world]
                b = torch.from_numpy(mine).to(device)
                z = _embed(ddp, st, [texts_t[i] for i in mine], device)
                loss = loss_fn(z, y_t[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()  # DDP averages the gradients over the processes here
                torch.nn.utils.clip_grad_norm_(st.parameters(), MAX_GRAD_NORM)
                opt.step()
                sched.step()
                step += 1
                if step % eval_every == 0 or step == total:
                    flag = torch.zeros(1)
                    if rank == 0:
                        val = validate()
                        history.append({"step": step, "val_loss": val})
                        if not math.isfinite(best_val) or val < best_val - MIN_DELTA:
                            best_val, best_step, best_state, bad = val, step, _snapshot(st), 0
                        else:
                            bad += 1
                            flag[0] = float(bad >= job["patience"])
                    dist.broadcast(flag, src=0)
                    stop = bool(flag[0])
                if step >= total or stop:
                    break
        torch.save(torch.cat([p.detach().cpu().flatten() for p in st.parameters()]).sum(dtype=torch.float64).reshape(1),
                   os.path.join(tmp, f"checksum-{rank}.pt"))
        if rank == 0:
            if not val_batches:
                best_step, best_state = step, _snapshot(st)
            alpha = job["wise_alpha"]
            if alpha < 1.0 and best_step > 0:
                best_state = {k: torch.lerp(base_state[k], v, alpha) if v.is_floating_point() else v for k, v in best_state.items()}
            torch.save(best_state, os.path.join(tmp, "state.pt"))
            torch.save({"engine": "native", "mode": "full", "workers": world, "backend": job["backend"],
                        "batch_size": job["batch_size"], "global_batch_size": global_batch, "epochs_run": epochs_run,
                        "steps": step, "best_step": best_step, "best_val_loss": best_val, "stopped_early": stop,
                        "device": job["device"], "wise_alpha": alpha, "warmup_steps": warmup, "eval_every": eval_every,
                        "n_val_rows": int(len(val_idx)), "history": history}, os.path.join(tmp, "info.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
