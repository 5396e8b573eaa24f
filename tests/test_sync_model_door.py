"""``sync --door model --models-dir`` against the product's own host over real HTTP on 127.0.0.1.

The host replays refinery's side (tests/host/test_model_door_host.py checks that against refinery's sources):
browser login, the gateway's embedding routes, the embedder computing the folder from the mounted volume. Label
changes and refusals are injected on the client's side (tests/faults.py), as in tests/test_sync.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from faults import FaultAdapter
from kern_finetune import cli
from kern_finetune.config import RunConfig
from kern_finetune.vectors.encode import default_model_path
from kern_finetune.errors import AuthError, ConfigError, DoorError
from kern_finetune.host import RunningHost, serve_in_thread
from kern_finetune.refinery.model_door import ModelDoorTarget, reserve_folder
from kern_finetune.pipeline import RunResult
from kern_finetune.refinery.api import RefineryClient
from kern_finetune.refinery.gateway import Gateway
from kern_finetune.sync import STATE_FILE, sync_project

USER, PASSWORD = "cron@example.org", "cron-pw-7d2a"
N_RECORDS = 120


@pytest.fixture(scope="module")
def records(subset_records: list[dict]) -> list[dict]:
    """~120 records of the sample: few enough for a quick run, >= 64 so the embedder's PCA-64 applies."""
    return [dict(r) for r in subset_records[:N_RECORDS]]


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    path = tmp_path / "refinery-models"
    path.mkdir()
    return path


@pytest.fixture()
def host(tmp_path: Path, records: list[dict], models: Path) -> Iterator[RunningHost]:
    export = tmp_path / "export.json"
    export.write_text(json.dumps(records))
    with serve_in_thread(export, data_dir=tmp_path / "host", user_name=USER, password=PASSWORD,
                         models_volumes=[(models, "/models")]) as running:
        yield running


def _client(host: RunningHost, faults: FaultAdapter | None = None, password: str = PASSWORD) -> RefineryClient:
    session = requests.Session()
    if faults is not None:
        session.mount("http://", faults)
    return RefineryClient(host.url, USER, password, timeout=30, retries=1, backoff=0, session=session,
                          project_id=host.project_id)


def _target(models: Path, **kw: Any) -> ModelDoorTarget:
    return ModelDoorTarget(models, "/models", wait_s=kw.pop("wait_s", 300), poll_s=0.2, **kw)


def _relabel(records: list[dict], n: int) -> list[dict]:
    """``records`` with ``n`` more manual labels on records that had no selected label, as labelers add them."""
    names = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}
    out, added = [], 0
    for r in records:
        r = dict(r)
        weak = float(r.get("__Topic__WEAK_SUPERVISION__confidence") or 0) > 0.7 and r.get("__Topic__WEAK_SUPERVISION")
        if added < n and not r.get("__Topic__MANUAL") and not weak:
            r["__Topic__MANUAL"] = names.get(str(r.get("Class Index")), "World")
            added += 1
        out.append(r)
    return out


def _serve_export(faults: FaultAdapter, records: list[dict]) -> None:
    faults.respond("GET", "/export$", 200, json.dumps(json.dumps(records)), times=1)


class BaseModelPipeline:
    """Same signature as run_pipeline; its "fine-tuned" model is the base model (loads in the embedder, no
    training: these tests are about the door, the real pipeline runs in the first test)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, records: list[dict[str, Any]], config: RunConfig, *, out_dir: Path, progress: Any = None,
                 prepared: Any = None, door: str = "vectors", current: Any = None) -> RunResult:
        self.door, self.current = door, current
        self.calls += 1
        model = out_dir / "model"
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(default_model_path(), model)
        ids = [r[config.id_attribute] for r in records]
        return RunResult(ids=ids, vectors=np.zeros((len(ids), 2), np.float32), metrics={}, out_dir=out_dir,
                         model_dir=model, embedding_name="Title-classification-kern-finetune-all-MiniLM-L6-v2",
                         label_fingerprint=prepared.fingerprint, base_model="all-MiniLM-L6-v2")


def _names(host: RunningHost) -> list[str]:
    return [n["name"] for n in Gateway(_client(host)).embeddings(host.project_id)]


def test_cron_resync_swaps_versions_only_after_the_new_one_is_finished(host: RunningHost, records: list[dict],
                                                                       models: Path, tmp_path: Path,
                                                                       shared_cache: Path, capsys: Any) -> None:
    """The real pipeline, twice, with new labels in between (the second through the CLI, as cron runs it): two
    versioned folders; refinery's embedder finishes the second embedding before the first is deleted. The
    project has two text attributes; the model door trains on the embedding's one."""
    config = RunConfig(mode="head", epochs=3, task="Topic", cache_dir=shared_cache)
    state = tmp_path / "state"
    first = sync_project(_client(host), None, config, out_dir=tmp_path / "out", state_dir=state, progress=None,
                         door="model", model_target=_target(models))
    v1 = "Title-classification-huggingface-/models/kern-finetune-Title-v1"
    assert first.status == "created" and first.embedding == v1 and first.written == models / "kern-finetune-Title-v1"
    # refinery's embedder embeds Title alone: the model trained on Title alone, not on Title + Description
    assert first.run.metrics["text_attributes"] == ["Title"] and "note" not in first.run.metrics["model_door"]
    assert _names(host) == [v1]
    assert json.loads((state / STATE_FILE).read_text())["model_door"]["embedding_id"] == first.embedding_id

    # the same labels: nothing is trained, nothing changes in refinery
    again = sync_project(_client(host), None, config, out_dir=tmp_path / "out", state_dir=state, progress=None,
                         door="model", model_target=_target(models))
    assert again.status == "up-to-date" and _names(host) == [v1]

    faults = FaultAdapter()
    _serve_export(faults, _relabel(records, 15))
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"user_name": USER, "password": PASSWORD, "project_id": host.project_id,
                                   "uri": host.url}))
    import kern_finetune.commands.sync as sync_cmd

    real = sync_cmd.client_from_args
    sync_cmd.client_from_args = lambda args: _client(host, faults)  # the changed export, served to this client
    try:
        rc = cli.main(["sync", "--secrets", str(secrets), "--task", "Topic", "--mode", "head", "--epochs", "3",
                       "--cache-dir", str(shared_cache), "--out", str(tmp_path / "out"), "--state-dir", str(state),
                       "--door", "model", "--models-dir", str(models), "--model-wait", "300", "--json"])
    finally:
        sync_cmd.client_from_args = real
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    v2 = "Title-classification-huggingface-/models/kern-finetune-Title-v2"
    assert rc == 0 and line["status"] == "created" and line["embedding"] == v2 and line["changed_labels"] == 15
    assert sorted(p.name for p in models.iterdir()) == ["kern-finetune-Title-v1", "kern-finetune-Title-v2"]
    assert _names(host) == [v2]
    events = host.store.models.events
    assert events.index(("FINISHED", v2)) < events.index(("deleted", v1))
    assert [e for e, n in events if n == v1][-1] == "deleted"


def _first_sync(host: RunningHost, models: Path, tmp_path: Path, config: RunConfig) -> Any:
    return sync_project(_client(host), None, config, out_dir=tmp_path / "out", state_dir=tmp_path / "state",
                        progress=None, pipeline=BaseModelPipeline(), door="model", model_target=_target(models))


@pytest.fixture()
def config(tmp_path: Path) -> RunConfig:
    return RunConfig(mode="head", task="Topic", text_attributes=["Title"], cache_dir=tmp_path / "cache")


def test_refused_login_leaves_the_old_embedding_and_names_the_step(host: RunningHost, models: Path, tmp_path: Path,
                                                                   config: RunConfig) -> None:
    first = _first_sync(host, models, tmp_path, config)
    faults = FaultAdapter()
    with pytest.raises(AuthError) as info:
        sync_project(_client(host, faults, password="not-the-password"), None, config, out_dir=tmp_path / "out",
                     state_dir=tmp_path / "state", progress=None, pipeline=BaseModelPipeline(), door="model",
                     model_target=_target(models), force=True)
    message = str(info.value)
    assert "\n" not in message and "step login" in message and first.embedding in message
    assert "not-the-password" not in message
    assert not faults.sent_to("GET", "/export$")  # checked before anything was pulled
    assert _names(host) == [first.embedding]


def test_refused_create_leaves_the_old_embedding_and_names_the_step(host: RunningHost, models: Path, tmp_path: Path,
                                                                    config: RunConfig) -> None:
    first = _first_sync(host, models, tmp_path, config)
    before = (tmp_path / "state" / STATE_FILE).read_text()
    faults = FaultAdapter()
    faults.respond("POST", "/create-embedding$", 500, "An error occurred")
    with pytest.raises(DoorError) as info:
        sync_project(_client(host, faults), None, config, out_dir=tmp_path / "out", state_dir=tmp_path / "state",
                     progress=None, pipeline=BaseModelPipeline(), door="model", model_target=_target(models),
                     force=True)
    message = str(info.value)
    assert "\n" not in message and "step create" in message and first.embedding in message
    assert _names(host) == [first.embedding]
    assert (tmp_path / "state" / STATE_FILE).read_text() == before  # the state still names the old one
    assert (models / "kern-finetune-Title-v1").is_dir()


def test_failed_embedding_is_one_line_and_deletes_nothing(host: RunningHost, models: Path, tmp_path: Path,
                                                          config: RunConfig) -> None:
    first = _first_sync(host, models, tmp_path, config)

    class Broken(BaseModelPipeline):
        def __call__(self, *a: Any, **kw: Any) -> RunResult:
            result = super().__call__(*a, **kw)
            (result.model_dir / "config.json").write_text("{ not json")  # does not load in the embedder
            return result

    with pytest.raises(DoorError) as info:
        sync_project(_client(host), None, config, out_dir=tmp_path / "out", state_dir=tmp_path / "state",
                     progress=None, pipeline=Broken(), door="model", model_target=_target(models), force=True)
    assert "step wait" in str(info.value) and "FAILED" in str(info.value) and "\n" not in str(info.value)
    states = {n["name"]: n["state"] for n in Gateway(_client(host)).embeddings(host.project_id)}
    assert states[first.embedding] == "FINISHED" and "FAILED" in states.values()


def test_door_is_checked_before_anything_is_pulled(host: RunningHost, tmp_path: Path, config: RunConfig) -> None:
    faults = FaultAdapter()
    with pytest.raises(ConfigError) as info:
        sync_project(_client(host, faults), None, config, out_dir=tmp_path / "out", progress=None,
                     pipeline=BaseModelPipeline(), door="model", model_target=_target(tmp_path / "missing"))
    assert "step models dir" in str(info.value)
    assert not faults.sent_to("GET", "/export$")
    with pytest.raises(ConfigError):
        sync_project(_client(host), None, config, out_dir=tmp_path / "out", progress=None,
                     pipeline=BaseModelPipeline(), door="snapshot", model_target=_target(tmp_path))


def test_versioned_folders_never_reuse_a_name(tmp_path: Path) -> None:
    (tmp_path / "kern-finetune-Title-v3").mkdir()
    (tmp_path / "kern-finetune-Title-v3" / "keep").write_text("x")
    assert reserve_folder(tmp_path, "kern-finetune-Title").name == "kern-finetune-Title-v4"
    assert reserve_folder(tmp_path, "kern-finetune-Title", {"kern-finetune-Title-v5"}).name == "kern-finetune-Title-v6"
    assert (tmp_path / "kern-finetune-Title-v3" / "keep").read_text() == "x"


def test_unattended_syncs_get_the_nights_time_budget(tmp_path: Path) -> None:
    """``sync`` and the webhook's jobs default --time-budget to SYNC_TIME_BUDGET; ``run`` keeps 300 s; a budget
    that is named wins."""
    from kern_finetune.cli import build_parser
    from kern_finetune.config import SYNC_TIME_BUDGET
    from kern_finetune.service.jobs import JobStore
    from kern_finetune.service.worker import JobWorker

    parser = build_parser()
    assert parser.parse_args(["sync"]).time_budget == SYNC_TIME_BUDGET == 3600.0
    assert parser.parse_args(["sync", "--time-budget", "120"]).time_budget == 120.0
    assert parser.parse_args(["run", "--export", "x.json"]).time_budget == RunConfig().time_budget == 300.0
    seen: list[float] = []
    store = JobStore(tmp_path / "jobs.sqlite3")
    worker = JobWorker(store, lambda ctx: seen.append(ctx.config.time_budget) or {}, tmp_path)
    for options in ({"task": "Topic"}, {"task": "Topic", "time_budget": 90.0}):
        store.submit("p1", options)
        worker._run(store.claim_next())
    assert seen == [SYNC_TIME_BUDGET, 90.0]
