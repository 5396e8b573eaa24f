"""RunConfig is the one definition of every run option: its field metadata makes the CLI options, the
trigger check and the manifest inputs (tests/test_manifest.py checks the committed manifest), and
validate() checks a set of values once."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import pytest

from kern_finetune.commands.run import add_run_options, config_from_args
from kern_finetune.config import Option, RunConfig, flag_of, run_options
from kern_finetune.errors import ConfigError


def _parse(*argv: str) -> RunConfig:
    parser = argparse.ArgumentParser()
    add_run_options(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_every_field_has_its_option() -> None:
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        opt = f.metadata.get("option")
        assert isinstance(opt, Option), f"{f.name} has no Option metadata (use config.option(...))"
        assert opt.help and not opt.help.endswith("."), f.name  # --help appends the default
        assert "(default" not in opt.help, f.name
        assert opt.group in ("what to learn from", "how to train", "where things go"), f.name
        if f.default is None or f.default is dataclasses.MISSING:
            assert opt.default_text, f"{f.name}: say what its default means (default_text)"
        if opt.choices is not None:
            assert f.default in opt.choices, f.name
        assert f.name in hints


def test_cli_defaults_are_runconfig_defaults() -> None:
    """No flag given: the same config as RunConfig() (the cache dir is computed the same way)."""
    assert _parse() == RunConfig()


def test_every_option_round_trips_through_the_cli(tmp_path: Path) -> None:
    """Each flag writes its field: a non-default value of every option survives parse -> RunConfig."""
    values = {
        "task": "Topic", "text_attributes": ["Title", "Description"], "id_attribute": "rid", "gold_attribute": "Gold",
        "threshold": 0.5, "weak_labels": False, "engine": "quaterion", "mode": "head",
        "time_budget": 60.0, "loss": "triplet", "epochs": 3, "wise_alpha": 1.0, "smooth": "0.5", "spread": "1.5",
        "noise_filter": "off", "pseudo_labels": "0.8", "seed": 7, "base_model": str(tmp_path / "model"), "cache_dir": tmp_path / "cache",
        "embedding_name": "my-embedding", "encode_batch_size": 32, "device": "cpu",
    }
    assert set(values) == {f.name for f in dataclasses.fields(RunConfig)}, "add the new option here"
    argv: list[str] = []
    for name, opt, typ, _default in run_options():
        value = values[name]
        if value is None:
            continue
        if typ is bool:
            argv.append(flag_of(name, opt) if value else "--no-" + flag_of(name, opt)[2:])
        else:
            argv += [flag_of(name, opt), ",".join(value) if isinstance(value, list) else str(value)]
    assert _parse(*argv) == RunConfig(**values)


def test_no_weak_labels_reaches_the_config_from_cli_and_trigger() -> None:
    assert RunConfig().weak_labels is True
    assert _parse("--no-weak-labels").weak_labels is False
    assert _parse("--weak-labels").weak_labels is True
    assert RunConfig.from_options({"weak_labels": False}, trigger=True).weak_labels is False
    with pytest.raises(ConfigError, match="weak_labels has the wrong type"):
        RunConfig.from_options({"weak_labels": "no"}, trigger=True)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"threshold": 1.0}, "threshold must be in [0, 1), got 1.0"),
        ({"wise_alpha": 0.0}, "wise_alpha must be in (0, 1], got 0.0"),
        ({"epochs": 0}, "epochs must be at least 1, got 0"),
        ({"time_budget": 0}, "time_budget must be a positive number of seconds, got 0"),
        ({"encode_batch_size": 0}, "encode_batch_size must be at least 1, got 0"),
        ({"loss": "cosface"}, "unknown loss 'cosface'; choose one of: supcon, triplet"),
        ({"noise_filter": "weight"}, "unknown noise_filter 'weight'; choose one of: off, drop"),
        ({"epochs": "30"}, "option epochs has the wrong type"),
        ({"threshold": True}, "option threshold has the wrong type"),
        ({"no_such_option": 1}, "unknown option(s): no_such_option"),
        ({"cache_dir": "/tmp/x"}, "option(s) cache_dir are set by the service, not by a trigger"),
        ({"engine": "quaterion", "mode": "full"}, "--engine quaterion trains heads only"),
    ],
)
def test_trigger_options_are_checked_with_one_line_messages(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_options(options, trigger=True)
    assert message in str(err.value)


def test_from_options_takes_what_from_dict_takes() -> None:
    config = RunConfig.from_options({"text_attributes": "Title, Description", "pseudo_labels": "off"})
    assert config.text_attributes == ["Title", "Description"] and config.pseudo_threshold is None
    assert RunConfig.from_options({"cache_dir": "/tmp/x"}).cache_dir == Path("/tmp/x")  # a job, not a trigger
    with pytest.raises(ConfigError, match="options must be a JSON object"):
        RunConfig.from_options(["epochs"])  # type: ignore[arg-type]


def test_validate_checks_a_set_of_values_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI / trigger / job boundary validates; sync_project and run_pipeline call validate() again, which
    returns at once for the same values and checks again after a change."""
    import kern_finetune.config as config_mod

    calls: list[str] = []
    real = config_mod._check  # noqa: SLF001 - counting the per-field checks

    def counting(name, value, opt):  # type: ignore[no-untyped-def]
        calls.append(name)
        return real(name, value, opt)

    monkeypatch.setattr(config_mod, "_check", counting)
    config = RunConfig(device="cpu")
    assert config.validate() is config
    n = len(calls)
    assert n == len(dataclasses.fields(RunConfig))
    config.validate()
    config.validate()
    assert len(calls) == n
    config.epochs = 0  # a change is checked again
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        config.validate()
    config.epochs = 5
    config.text_attributes = ["Title"]
    config.validate()
    config.text_attributes.append("Description")  # in place, too
    before = len(calls)
    config.validate()
    assert len(calls) > before
    # the mark is no field: equality, repr and to_dict do not see it
    assert config == dataclasses.replace(config) and "_valid" not in repr(config)
    assert "_valid_values" not in config.to_dict()


def test_auto_or_number_options_are_parsed_once_into_typed_values() -> None:
    """smooth / spread / pseudo_labels are parsed at construction, and again when they or mode change
    (dataclasses.replace, or an assignment): callers read typed values, not strings."""
    config = RunConfig(smooth="0.5", spread="auto", pseudo_labels="auto", mode="full")
    assert (config.smooth_weight, config.spread_strength, config.pseudo_threshold) == (0.5, None, 0.9)
    head = dataclasses.replace(config, mode="head", smooth="0")
    assert (head.smooth_weight, head.pseudo_threshold) == (0.0, None)
    config.spread = "1.25"
    assert config.spread_strength == 1.25
    with pytest.raises(ConfigError, match="smooth must be auto or a number"):
        dataclasses.replace(config, smooth="lots")
    with pytest.raises(ConfigError, match="pseudo_labels must be auto, off or a probability"):
        RunConfig.from_options({"pseudo_labels": "often"}, trigger=True)
    assert "_parsed" not in RunConfig().to_dict()  # not a field: no manifest input, no flag, no metrics key
