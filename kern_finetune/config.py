"""Run settings: :class:`RunConfig` is the one definition of every run option.

Each field carries an :class:`Option` (made with :func:`option`) from which come the command-line options, the
checks of :meth:`RunConfig.validate`, the webhook trigger's check (:meth:`RunConfig.from_options`) and
``manifest.json``'s inputs (:func:`manifest_variables`); ``docs/architecture.md``, "Adding a run option".

Like SetFit's ``TrainingArguments``, :class:`RunConfig` parses its "auto|number" options in ``__post_init__``
(again whenever one of them or ``mode`` changes); :meth:`RunConfig.validate` checks a set of values once, so
a config validated at a boundary (the CLI, a trigger, a job's start) is not checked again unless it changed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "RunConfig", "Option", "option", "run_options", "flag_of", "manifest_variables", "is_embedding_name",
    "DEVICES", "LOSSES", "ENGINES", "MODES", "NOISE_FILTERS", "PSEUDO_LABELS_AUTO", "default_cache_dir",
    "SYNC_TIME_BUDGET", "BASIC_OPTIONS",
]

DEVICES = ("auto", "cpu", "cuda")
LOSSES = ("supcon", "triplet")
ENGINES = ("native", "quaterion")
MODES = ("auto", "head", "full")
NOISE_FILTERS = ("off", "drop")
PSEUDO_LABELS_AUTO: dict[str, float | None] = {"full": 0.9, "head": None}
"""Threshold that ``pseudo_labels="auto"`` means in each mode (None: off); why in :mod:`kern_finetune.labels.pseudo`."""

SYNC_TIME_BUDGET = 3600.0
"""``--time-budget`` of ``sync`` and of the webhook's jobs when the caller names none: they run unattended."""

BASIC_OPTIONS = frozenset({"task", "text_attributes", "gold_attribute", "threshold", "mode", "device"})
"""The run options a user sets, which ``--help`` shows; ``--help-all`` lists every option."""

LEARN = "what to learn from"
TRAIN = "how to train"
PLACES = "where things go"


def default_cache_dir() -> Path:
    """Where base vectors are cached: ``$KERN_FINETUNE_CACHE`` or ``~/.cache/kern-finetune``."""
    env = os.environ.get("KERN_FINETUNE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kern-finetune"


@dataclass(frozen=True)
class Option:
    """What the CLI, the trigger check and the manifest need to know about one :class:`RunConfig` field."""

    help: str
    """One user-facing sentence, lower case, without the default (``--help`` appends it). It may name another
    option by its flag (``--time-budget``); the manifest names it by its variable (``TIME_BUDGET``)."""
    group: str
    """The ``--help`` section: ``what to learn from``, ``how to train`` or ``where things go``."""
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    """True: ``min`` itself is not allowed (``(0, 1)`` rather than ``[0, 1)``)."""
    max_open: bool = False
    unit: str | None = None
    """What a number counts (``seconds``), said in the range error."""
    default_text: str | None = None
    """What the default means when it is None or computed (``every text attribute``)."""
    manifest_kind: str | None = None
    """The manifest's ``addInfo`` when refinery offers a choice of project things: ``attribute`` or
    ``labeling_task``; None = a generic value of the field's type."""
    env: str | None = None
    """Command line only: the environment variable read when the flag is not given."""
    trigger: bool = True
    """False: the service sets it, a webhook trigger may not (and it is no manifest input)."""


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **metadata: Any) -> Any:
    """A :class:`RunConfig` field with its :class:`Option` (keyword arguments as in :class:`Option`)."""
    return field(default=default, default_factory=default_factory, metadata={"option": Option(**metadata)})


@dataclass
class RunConfig:
    """Everything one fine-tuning run needs to know besides the records themselves."""

    task: str | None = option(
        None, group=LEARN, manifest_kind="labeling_task", default_text="the only task in the export",
        help="classification labeling task whose labels drive the fine-tuning, e.g. Topic or attribute.Topic")
    text_attributes: list[str] | None = option(
        None, group=LEARN, metavar="A,B", manifest_kind="attribute", default_text="every text attribute",
        help='attributes joined with ". " into the text to embed')
    id_attribute: str = option(
        "running_id", group=LEARN, manifest_kind="attribute",
        help="attribute that identifies a record; the written vectors are keyed by it")
    gold_attribute: str | None = option(
        None, group=LEARN, metavar="NAME", manifest_kind="attribute", default_text="no evaluation",
        help="attribute with the true class; used ONLY to evaluate on the records not trained on")
    threshold: float = option(
        0.7, group=LEARN, min=0.0, max=1.0, max_open=True,
        help="weak-supervision labels count when their confidence is strictly above this (manual labels always do)")
    weak_labels: bool = option(
        True, group=LEARN,
        help="train on the weak-supervision labels above --threshold too, not on manual labels only")
    engine: str = option("native", group=TRAIN, choices=ENGINES, help="native PyTorch or Quaterion")
    mode: str = option(
        "auto", group=TRAIN, choices=MODES,
        help="head: frozen encoder + trained head (fast, CPU); full: fine-tune the encoder too; auto: full "
             "when its time, estimated on this machine at run time, fits --time-budget, else head")
    """``auto``: :mod:`kern_finetune.training.estimate`, so the choice depends on the machine and its load; name
    ``head`` or ``full`` for a run that must repeat exactly (``docs/decisions.md``, "mode and time budget")."""
    time_budget: float = option(
        300.0, group=TRAIN, metavar="SECONDS", min=0.0, min_open=True, unit="seconds",
        help="auto mode only: the longest full-mode training (fine-tuning + re-encoding every record) to accept; "
             "sync and webhook jobs, which run unattended, default to 3600")
    """For ``run`` and ``demo``, which a labeler waits for; ``sync`` and the webhook's jobs default to
    :data:`SYNC_TIME_BUDGET` (``docs/decisions.md``, "mode and time budget")."""
    loss: str = option("supcon", group=TRAIN, choices=LOSSES, help="similarity loss")
    epochs: int = option(30, group=TRAIN, min=1, help="maximum epochs; early stopping ends sooner")
    wise_alpha: float = option(
        0.7, group=TRAIN, metavar="A", min=0.0, max=1.0, min_open=True,
        help="full mode only: the kept encoder is (1-A) * base + A * fine-tuned, weight by weight (WiSE-FT); "
             "1 = the fine-tuned weights as they are")
    smooth: str = option(
        "auto", group=TRAIN, metavar="auto|W",
        help="average each record's fine-tuned vector with its 20 nearest records' (nearest by the base model): "
             "(1-W) * v + W * their mean; auto = chosen on validation records among 0, 0.5 and 0.8; 0 = off")
    """:mod:`kern_finetune.vectors.smooth`; a sync through the model door runs with 0 (the model folder cannot carry it;
    it carries the base share of :mod:`kern_finetune.vectors.base_share` instead)."""
    spread: str = option(
        "auto", group=TRAIN, metavar="auto|S",
        help="rescale distances so refinery's search threshold leaves every record a full result list: sparse "
             "regions shrink, dense ones grow, by strength S in [0, 2] (1 = even); auto = the smallest S whose "
             "short result lists stay near the raw vectors' (no labels read); 0 = off")
    """:mod:`kern_finetune.vectors.spread`; adds one dimension when on; a sync through the model door runs with 0."""
    noise_filter: str = option(
        "drop", group=TRAIN, choices=NOISE_FILTERS,
        help="weak labels that out-of-fold predictions contradict: keep (off) or drop")
    pseudo_labels: str = option(
        "auto", group=TRAIN, metavar="auto|off|P",
        help="self-training: unlabeled records predicted with probability above P train with that label; "
             "auto = 0.9 in full mode, off in head mode")
    """:mod:`kern_finetune.labels.pseudo`"""
    seed: int = option(42, group=TRAIN, min=0, max=2**32 - 1,
                       help="seed of the split, the training and the evaluation")
    base_model: str | None = option(
        None, group=PLACES, metavar="DIR", default_text="the bundled all-MiniLM-L6-v2",
        help="local sentence-transformers model folder")
    cache_dir: Path = option(
        default_factory=default_cache_dir, group=PLACES, metavar="DIR", trigger=False,
        default_text="$KERN_FINETUNE_CACHE or ~/.cache/kern-finetune", help="the vector cache")
    embedding_name: str | None = option(
        None, group=PLACES, default_text="<attribute>-classification-kern-finetune-<model>",
        help="name of the embedding in a written snapshot")
    encode_batch_size: int = option(64, group=PLACES, metavar="N", min=1, help="texts per encoder batch")
    device: str = option(
        "auto", group=PLACES, choices=DEVICES,
        help="where to encode and (full mode) train; auto = CUDA when present; CUDA encodes in fp16, cached "
             "apart from fp32 vectors")
    """docs/scale.md"""

    def validate(self) -> RunConfig:
        """Check every option (raises :class:`ConfigError` naming what to fix) and return ``self``; once per set
        of values."""
        values = self._values()
        if self.__dict__.get("_valid_values") == values:
            return self
        for f, opt in _fields():
            problem = _check(f.name, getattr(self, f.name), opt)
            if problem:
                raise ConfigError(problem)
        if self.engine == "quaterion" and self.mode == "full":
            raise ConfigError("--engine quaterion trains heads only; use --mode head, or --engine native for --mode full")
        if self.device == "cuda":
            self.resolved_device()  # raises when CUDA is asked for and absent: at the boundary, not after the work
        if self.embedding_name is not None and not is_embedding_name(self.embedding_name):
            raise ConfigError(f"embedding_name {self.embedding_name!r} is not a name refinery can show: use 1-200 "
                              "characters without control characters, '/' or '\\', nor spaces at either end")
        if self.text_attributes is not None and not self.text_attributes:
            raise ConfigError("text_attributes is empty: name at least one attribute")
        self.__dict__["_valid_values"] = values
        return self

    def _values(self) -> tuple[Any, ...]:
        values = (getattr(self, f.name) for f in dataclasses.fields(self))
        return tuple(tuple(v) if isinstance(v, list) else v for v in values)  # a list may change in place

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

    def __post_init__(self) -> None:
        self._parse()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _PARSED_FROM and "_parsed" in self.__dict__:  # a change after construction parses again
            self._parse()

    def _parse(self) -> None:
        """The "auto|number" options into typed values, once (ConfigError on a value that does not parse)."""
        self.__dict__["_parsed"] = {
            "smooth": _auto_or_share("smooth", self.smooth),
            "spread": _auto_or_share("spread", self.spread, upper=2.0),
            "pseudo_labels": _pseudo_threshold(self.pseudo_labels, self.mode),
        }

    @property
    def smooth_weight(self) -> float | None:
        """The fixed smoothing weight ``smooth`` means, or None for ``auto`` (chosen on validation records)."""
        return self.__dict__["_parsed"]["smooth"]

    @property
    def spread_strength(self) -> float | None:
        """The fixed spread strength ``spread`` means, or None for ``auto`` (chosen on the searches, no labels)."""
        return self.__dict__["_parsed"]["spread"]

    @property
    def pseudo_threshold(self) -> float | None:
        """The probability threshold ``pseudo_labels`` means in this ``mode``, or None when it is off."""
        return self.__dict__["_parsed"]["pseudo_labels"]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cache_dir"] = str(self.cache_dir)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from a JSON-like mapping (job options, metrics' ``config``), not validated; unknown keys are an
        error. Numbers for ``pseudo_labels`` / ``smooth`` / ``spread`` and ``"a,b"`` for ``text_attributes`` are taken."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        data = dict(data)
        if "cache_dir" in data and data["cache_dir"] is not None:
            data["cache_dir"] = Path(data["cache_dir"])
        for key in ("pseudo_labels", "smooth", "spread"):
            if isinstance(data.get(key), (int, float)) and not isinstance(data[key], bool):
                data[key] = str(data[key])
        if isinstance(data.get("text_attributes"), str):
            data["text_attributes"] = [a.strip() for a in data["text_attributes"].split(",") if a.strip()]
        return cls(**data)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, trigger: bool = False) -> RunConfig:
        """A validated config from JSON options: a webhook trigger's, a stored job's, the manifest's inputs.

        Unknown names, values of the wrong JSON type (a bool is no number, ``"30"`` no integer) and values
        that :meth:`validate` refuses raise :class:`ConfigError`. ``trigger=True`` also refuses the options
        the service sets itself (``Option.trigger`` False: ``cache_dir``).
        """
        if not isinstance(options, Mapping):
            raise ConfigError("options must be a JSON object of RunConfig fields")
        if trigger:
            owned = sorted(f.name for f, opt in _fields() if not opt.trigger and f.name in options)
            if owned:
                raise ConfigError(f"option(s) {', '.join(owned)} are set by the service, not by a trigger")
        hints = _hints()
        for f in dataclasses.fields(cls):
            if f.name in options and not _json_type_ok(options[f.name], hints[f.name]):
                raise ConfigError(f"option {f.name} has the wrong type: expected {f.type}, got {options[f.name]!r}")
        try:
            return cls.from_dict(options).validate()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid options: {exc}") from None


_PARSED_FROM = frozenset({"smooth", "spread", "pseudo_labels", "mode"})
"""Fields whose change makes :class:`RunConfig` parse its "auto|number" options again."""


def _pseudo_threshold(value: str, mode: str) -> float | None:
    """The probability threshold ``pseudo_labels`` means in ``mode``, or None when it is off."""
    text = str(value).strip().lower()
    if text == "auto":
        return PSEUDO_LABELS_AUTO.get(mode)
    if text == "off":
        return None
    try:
        threshold = float(text)
    except ValueError:
        threshold = float("nan")
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"pseudo_labels must be auto, off or a probability in (0, 1), got {value!r}")
    return threshold


def _auto_or_share(name: str, value: str, *, upper: float = 1.0) -> float | None:
    """None for ``"auto"``, else the number in [0, ``upper``] the option's string holds (ConfigError otherwise)."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    try:
        share = float(text)
    except ValueError:
        share = float("nan")
    if not 0.0 <= share <= upper:
        raise ConfigError(f"{name} must be auto or a number in [0, {upper:g}], got {value!r}")
    return share


# -- the metadata's readers ------------------------------------------------------------------------------


def _fields() -> Iterator[tuple[dataclasses.Field[Any], Option]]:
    for f in dataclasses.fields(RunConfig):
        yield f, f.metadata["option"]


def run_options() -> list[tuple[str, Option, Any, Any]]:
    """``(field name, Option, type, default)`` of every run option in field order; ``type`` is the field's type
    without ``None`` (``int``, ``float``, ``str``, ``bool``, ``list``, ``Path``); ``default`` is None for a
    computed default (``Option.default_text`` says what it is)."""
    hints = _hints()
    out = []
    for f, opt in _fields():
        default = None if f.default is MISSING else f.default
        out.append((f.name, opt, _base_type(hints[f.name]), default))
    return out


def flag_of(name: str, opt: Option) -> str:
    """The command-line flag of a field: ``--`` + the name with dashes."""
    return "--" + name.replace("_", "-")


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def _base_type(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0])
    if typing.get_origin(hint) is list:
        return list
    return hint


def _json_type_ok(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field type (a bool is no number; a path is a string; a list of strings may
    also come as ``"a,b"``)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_json_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if isinstance(hint, type) and issubclass(hint, os.PathLike):
        return isinstance(value, str)
    return True


_EMBEDDING_NAME = re.compile(r"(?=[^\s])[^\x00-\x1f\x7f/\\]{1,200}(?<=[^\s])")


def is_embedding_name(name: object) -> bool:
    """An embedding name refinery can show and a host can store: 1-200 characters without control characters,
    ``/`` or ``\\``, nor spaces at either end (``fullmatch``: ``$`` would let a trailing newline through)."""
    return isinstance(name, str) and _EMBEDDING_NAME.fullmatch(name) is not None


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _check(name: str, value: Any, opt: Option) -> str | None:
    """The one-line error for a value outside the option's choices or range, or None when it is inside."""
    if opt.choices is not None and value not in opt.choices:
        return f"unknown {name} {value!r}; choose one of: {', '.join(opt.choices)}"
    lo, hi = opt.min, opt.max
    if lo is None and hi is None:
        return None
    ok = True  # written so that NaN fails every bound
    if lo is not None:
        ok = value > lo if opt.min_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if opt.max_open else value <= hi
    if ok:
        return None
    if lo is not None and hi is not None:
        want = f"in {'(' if opt.min_open else '['}{_num(lo)}, {_num(hi)}{')' if opt.max_open else ']'}"
    elif lo is None:
        want = f"below {_num(hi)}" if opt.max_open else f"at most {_num(hi)}"  # type: ignore[arg-type]
    elif opt.min_open:
        want = (f"a positive number of {opt.unit}" if opt.unit else "positive") if lo == 0 else f"above {_num(lo)}"
    else:
        want = f"at least {_num(lo)}"
    return f"{name} must be {want}, got {value}"


# -- manifest.json ---------------------------------------------------------------------------------------

_MANIFEST_TYPES = {int: "integer", float: "float", str: "string", bool: "boolean", list: "list[string]"}
_GENERIC = {int: "generic_int", float: "generic_float", str: "generic_string", bool: "generic_boolean",
            list: "generic_string"}


def manifest_variables() -> dict[str, dict[str, Any]]:
    """``manifest.json``'s ``integratorInputs.variables``: one per run option a trigger may set, keyed by the
    field name in capitals (a trigger's ``options`` use the field name itself, ``configField``)."""
    flags = {flag_of(name, opt): name.upper() for name, opt, _t, _d in run_options()}
    out: dict[str, dict[str, Any]] = {}
    for name, opt, typ, default in run_options():
        if not opt.trigger:
            continue
        if opt.choices is not None or opt.manifest_kind is not None or typ is bool:
            selection = "choice"
        elif opt.min is not None and opt.max is not None:
            selection = "range"
        else:
            selection = _MANIFEST_TYPES[typ]
        text = re.sub(r"--[a-z][a-z-]*", lambda m: flags.get(m.group(0), m.group(0)), opt.help)
        if default is None and opt.default_text:
            text += f"; null = {opt.default_text}"
        var: dict[str, Any] = {
            "selectionType": selection,
            "addInfo": [opt.manifest_kind or _GENERIC[typ]],
            "type": _MANIFEST_TYPES[typ],
            "defaultValue": default,
            "description": text[0].upper() + text[1:] + ".",
            "configField": name,
            "cliOption": flag_of(name, opt),
        }
        if default is None:
            var["optional"] = True
        if opt.choices is not None:
            var["allowedValues"] = list(opt.choices)
        elif typ is bool:
            var["allowedValues"] = [True, False]
        if selection == "range":
            var["allowedValueRange"] = [opt.min, opt.max]
        out[name.upper()] = var
    return out
