"""``--mode auto``: the full-mode estimate plans FullTrainer's own steps, and the choice follows the budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kern_finetune.cli import main
from kern_finetune.config import RunConfig
from kern_finetune.errors import ConfigError
from kern_finetune.training.estimate import choose_mode


@pytest.fixture(scope="module")
def small_records(subset_records) -> list[dict]:
    """120 records of the seeded subset: a small project (about 65 with a training label, 2 full-mode steps).

    Every stage of a full-mode run (the estimate's timed steps, training, re-encoding, the model door's pulls)
    costs in proportion to the records, and what is checked here (the plan, the choice, the run it leads to)
    does not need more."""
    return subset_records[:120]


@pytest.fixture(scope="module")
def small(small_records, shared_cache):
    from kern_finetune.vectors.encode import Encoder
    from kern_finetune.refinery.export import resolve_task
    from kern_finetune.labels.select import select_labels

    sel = select_labels(small_records, resolve_task(small_records, "Topic"), text_attributes=["Title", "Description"],
                        gold_attribute="Class Index")
    encoder = Encoder(cache_dir=shared_cache)
    return encoder, sel, encoder.encode(sel.texts, progress=False)


def test_default_is_auto_and_budget_is_validated() -> None:
    assert RunConfig().mode == "auto" and RunConfig().time_budget == 300.0
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="time_budget"):
            RunConfig(time_budget=bad).validate()
    RunConfig(mode="auto", engine="quaterion").validate()  # auto resolves to head for Quaterion


def test_cli_rejects_a_bad_budget_in_one_line(tmp_path: Path, capsys) -> None:
    export = tmp_path / "x.json"
    export.write_text("[]")
    code = main(["run", "--export", str(export), "--time-budget", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "time_budget" in err[0]


def test_explicit_modes_and_quaterion_need_no_estimate(small) -> None:
    encoder, sel, base = small
    for mode in ("head", "full"):
        choice = choose_mode(encoder, sel, base, RunConfig(mode=mode))
        assert choice.mode == mode and choice.estimate is None
    choice = choose_mode(encoder, sel, base, RunConfig(mode="auto", engine="quaterion"))
    assert choice.mode == "head" and choice.estimate is None and "quaterion" in choice.reason


def test_a_tiny_budget_picks_head_with_the_estimate_recorded(small_records, shared_cache, tmp_path: Path) -> None:
    from kern_finetune.pipeline import run_pipeline

    said: list[str] = []
    config = RunConfig(task="Topic", gold_attribute="Class Index", mode="auto", time_budget=0.01, epochs=2,
                       cache_dir=shared_cache)
    result = run_pipeline(small_records, config, out_dir=tmp_path, progress=said.append)
    choice = result.metrics["mode_choice"]
    assert choice["requested"] == "auto" and choice["mode"] == "head" and "exceeds the time budget of 0 s" in choice["reason"]
    assert result.metrics["config"]["mode"] == "head" and result.metrics["training"].get("mode") != "full"
    assert "pseudo_labels" not in result.metrics  # head mode's own defaults follow the resolved mode
    assert any(line.strip().startswith("--mode auto chose head mode: full mode") for line in said)
    assert not result.metrics["mode_choice"]["estimate"]["complete"]  # far over budget: one timed step is enough
    assert json.loads((tmp_path / "metrics.json").read_text())["mode_choice"]["estimate"]["seconds"] > 0
    assert "Mode choice: head mode" in (tmp_path / "report.html").read_text()


def test_a_small_project_within_budget_runs_full_and_records_estimate_vs_measured(
    small_records, shared_cache, tmp_path: Path
) -> None:
    from kern_finetune.pipeline import run_pipeline

    config = RunConfig(task="Topic", gold_attribute="Class Index", mode="auto", time_budget=3600, cache_dir=shared_cache)
    result = run_pipeline(small_records, config, out_dir=tmp_path, progress=None)
    choice = result.metrics["mode_choice"]
    assert choice["mode"] == "full" and "fits the time budget of 3600 s" in choice["reason"]
    assert result.metrics["config"]["mode"] == "full" and result.metrics["training"]["mode"] == "full"
    assert result.metrics["pseudo_labels"]["n_added"] == choice["estimate"]["n_pseudo"]
    # the plan is full mode's own: its parts add up, and the run trained the steps and batch it planned (this
    # project's two steps validate at step 0 and the last step only, so early stopping cannot shorten them)
    est, trained = choice["estimate"], result.metrics["training"]
    assert est["complete"] and est["device"] == "cpu" and len(est["step_fit"]["timed_steps"]) == 3
    parts = est["overhead_seconds"] + est["train_steps_seconds"] + est["validation_seconds"] + est["reencode_seconds"]
    assert est["seconds"] == pytest.approx(parts, abs=1e-4) and est["seconds"] > 0 and est["forward_tokens_per_s"] > 0
    assert est["steps"] == math.ceil(est["n_train_rows"] / est["batch_size"]) * est["epochs"]
    assert trained["steps"] == est["steps"] and trained["batch_size"] == est["batch_size"]
    assert choice["measured_train_seconds"] > 0
