"""The verdict without gold (kern_finetune.evaluation.verdict): the hold-out, the decision, a run on a snapshot without
gold, and a sync that keeps the embedding in use when a deliberately bad fit (shuffled labels) is worse."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kern_finetune.cli import main
from kern_finetune.evaluation.verdict import (
    MIN_JUDGED, MIN_QUERIES, current_embedding, decide, hold_out, unseen_weak_labels,
)

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "data" / "ag_news_snapshot_small.zip"


def test_hold_out_is_stratified_seeded_and_leaves_every_class_two_labels(subset_sel):
    rest, held = hold_out(subset_sel, 0.2, seed=3)
    again, held2 = hold_out(subset_sel, 0.2, seed=3)
    assert np.array_equal(held, held2) and np.array_equal(rest.train_idx, again.train_idx)
    labeled = subset_sel.labeled_idx
    for src in ("manual", "weak"):
        for c in range(len(subset_sel.classes)):
            group = [i for i in labeled if subset_sel.source[i] == src and subset_sel.y[i] == c]
            out = [i for i in held if subset_sel.source[i] == src and subset_sel.y[i] == c]
            assert len(out) == int(0.2 * len(group))
    assert (rest.y[held] == -1).all() and all(rest.source[i] == "" for i in held)
    assert set(rest.labeled_idx.tolist()) == set(labeled.tolist()) - set(held.tolist())
    # a class with few labels keeps 2 to train on
    y = subset_sel.y.copy()
    few = np.flatnonzero(y == 0)[3:]
    y[few] = -1
    import dataclasses

    tiny = dataclasses.replace(subset_sel, y=y, train_idx=np.setdiff1d(subset_sel.train_idx, few),
                               val_idx=np.setdiff1d(subset_sel.val_idx, few))
    rest, held = hold_out(tiny, 0.5, seed=3)
    assert Counter(rest.y[rest.labeled_idx].tolist())[0] >= 2


def test_unseen_weak_labels_are_only_labels_no_fit_sees(subset_records, subset_sel):
    from kern_finetune.refinery.export import resolve_task

    task = resolve_task(subset_records, "Topic")
    unseen = unseen_weak_labels(subset_records, task, subset_sel)
    assert (subset_sel.y[unseen >= 0] == -1).all()  # never a selected (trained-on) label
    for i in np.flatnonzero(unseen >= 0)[:50]:
        assert subset_records[i][task.weak] == subset_sel.classes[unseen[i]]
        assert float(subset_records[i][task.confidence]) <= 0.7


def test_decide_says_too_few_worse_better_or_no_difference():
    d = {"same_class": -10.0, "first_screen_same": -1.0, "lt_10": 0.0}
    worse = {"same_class": [-15.0, -5.0], "first_screen_same": [-2.0, 0.5], "lt_10": [-1.0, 1.0]}
    assert decide(d, worse, MIN_QUERIES, MIN_JUDGED)[0] == "worse"
    assert decide(d, worse, MIN_QUERIES - 1, 10_000)[0] == "too few to tell"
    assert decide(d, worse, 10_000, MIN_JUDGED - 1)[0] == "too few to tell"
    better = {"same_class": [2.0, 9.0], "first_screen_same": [-0.5, 0.5], "lt_10": [-1.0, 1.0]}
    assert decide(d, better, 100, 1000)[0] == "better"
    unsure = {"same_class": [-2.0, 3.0], "first_screen_same": [-0.5, 0.5], "lt_10": [-1.0, 1.0]}
    assert decide(d, unsure, 100, 1000) == ("too few to tell", "the 95% intervals include no difference")
    shorter = {"same_class": [2.0, 9.0], "first_screen_same": [-0.5, 0.5], "lt_10": [3.0, 12.0]}
    assert decide({**d, "lt_10": 7.0}, shorter, 100, 1000)[0] == "worse"  # lists starve: worse where a labeler looks


def test_threshold_search_per_query_adds_up_to_its_figures():
    from kern_finetune.refinery.search import threshold_search

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    classes = np.where(rng.random(300) < 0.3, rng.integers(0, 3, 300), -1)
    queries = np.flatnonzero(classes >= 0)[:40]
    found = threshold_search(x, queries, classes, per_query=True)
    pq = found["per_query"]
    assert found["same_class"] == pytest.approx(100 * pq["same"].sum() / pq["judged"].sum())
    assert found["first_screen_same"] == pytest.approx(np.nanmean(pq["screen"]))
    assert found["lt_10"] == pytest.approx(100 * (pq["results"] < 10).mean())
    plain = threshold_search(x, queries, classes)
    assert {k: v for k, v in found.items() if k != "per_query"} == plain


def test_current_embedding_is_the_snapshots_own_aligned_to_the_records():
    from kern_finetune.refinery.snapshot import read_snapshot

    snap = read_snapshot(SNAPSHOT)
    ids = [str(r["running_id"]) for r in snap.records][::-1]
    found, why = current_embedding(snap, ids)
    assert why == "" and found is not None and found.name == "headline-classification-distilbert-base-uncased"
    got_ids, vectors = snap.embedding_vectors(found.name)
    assert np.allclose(found.vectors[0], vectors[got_ids.index(ids[0])]) and found.vectors.shape == (200, 64)
    none, why = current_embedding(snap, ids + ["no-such-record"])
    assert none is None and why


def test_run_on_a_snapshot_without_gold_states_the_verdict_first(shared_cache, tmp_path, capsys):
    """`run` on the small snapshot (no gold): metrics.json's verdict judges new, raw and the snapshot's current
    embedding; the report opens with it; the console headlines it and ends with the report and the next step."""
    out = tmp_path / "out"
    code = main(["run", "--export", str(SNAPSHOT), "--task", "topic", "--mode", "head", "--epochs", "5",
                 "--out", str(out), "--cache-dir", str(shared_cache)])
    assert code == 0
    verdict = json.loads((out / "metrics.json").read_text())["verdict"]
    assert verdict["n_heldout"] > 0 and verdict["reference"] == "current"
    for name in ("new", "raw", "current"):
        assert set(verdict[name]) == {"first_screen_same", "same_class", "lt_10"}
    assert verdict["verdict"] in ("better", "worse", "too few to tell") and verdict["conclusion"]
    assert verdict["by_judge"]["manual"]["n_queries"] == verdict["n_heldout_manual"] > 0
    lo, hi = verdict["interval"]["same_class"]
    assert lo <= verdict["delta"]["same_class"] <= hi
    html = (out / "report.html").read_text()
    assert html.index("Verdict:") < html.index("<h2>") and "new &minus; current" in html
    printed = capsys.readouterr().out.strip().splitlines()
    assert any(line.strip().startswith("verdict: ") and "same class over a session" in line for line in printed)
    assert printed[-2] == f"report: {out / 'report.html'}" and printed[-1].startswith("next: ")
    assert "top_1k" not in "\n".join(printed)
    card = (out / "model" / "README.md").read_text()
    assert "task: topic" in card and "model door" in card and "current" in card
    assert "base model: `all-MiniLM-L6-v2`" in card


def _shuffled_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fit (the written one and the verdict's) trains on labels shuffled among the labeled records; the
    verdict's judges keep the true labels: a deliberately bad embedding."""
    import dataclasses

    from kern_finetune.training import fit as fit_mod
    from kern_finetune import pipeline
    from kern_finetune.evaluation import verdict

    real = fit_mod.fit

    def shuffled(encoder: Any, sel: Any, base: Any, config: Any, **kw: Any) -> Any:
        y = sel.y.copy()
        rows = sel.labeled_idx
        y[rows] = np.random.default_rng(0).permutation(y[rows])
        return real(encoder, dataclasses.replace(sel, y=y), base, config, **kw)

    monkeypatch.setattr(pipeline, "fit", shuffled)
    monkeypatch.setattr(fit_mod, "fit", shuffled)  # verdict.judge imports it at call time
    assert verdict.judge  # the module the patch reaches


def test_shuffled_labels_get_worse_and_sync_keeps_the_embedding_in_use(subset_records, shared_cache, tmp_path,
                                                                       monkeypatch):
    """The real pipeline's verdict on shuffled labels is ``worse``; a sync that gets that run writes nothing
    (status ``kept``), records the verdict, and does not train on the same labels again."""
    from kern_finetune.config import RunConfig
    from kern_finetune.host import serve_in_thread
    from kern_finetune.pipeline import run_pipeline
    from kern_finetune.refinery.api import RefineryClient
    from kern_finetune.sync import STATE_FILE, sync_project

    _shuffled_fit(monkeypatch)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(subset_records[:600]))
    config = RunConfig(mode="head", task="Topic", text_attributes=["Title", "Description"], epochs=10,
                       cache_dir=shared_cache)
    run = run_pipeline(subset_records[:600], config, out_dir=tmp_path / "run", progress=None)
    assert run.metrics["verdict"]["verdict"] == "worse", run.metrics["verdict"]["conclusion"]

    def the_same_run(*_a: Any, **_kw: Any) -> Any:
        return run

    with serve_in_thread(export, data_dir=tmp_path / "host", user_name="u@example.com", password="pw-1") as host:
        client = RefineryClient(host.url, "u@example.com", "pw-1", project_id=host.project_id, timeout=60)
        msgs: list[str] = []
        res = sync_project(client, None, config, out_dir=tmp_path / "out", state_dir=tmp_path / "state",
                           progress=msgs.append, pipeline=the_same_run)
        assert res.status == "kept" and res.written is None and res.embedding_id is None
        assert msgs[-1].startswith("sync: kept") and "--force" in msgs[-1]
        state = json.loads((tmp_path / "state" / STATE_FILE).read_text())
        assert [v["outcome"] for v in state["verdicts"]] == ["kept"] and state["verdicts"][0]["verdict"] == "worse"
        again = sync_project(client, None, config, out_dir=tmp_path / "out", state_dir=tmp_path / "state",
                             progress=None, pipeline=_must_not_train)
        assert again.status == "up-to-date" and "kept" in again.message


def _must_not_train(*_a: Any, **_kw: Any) -> Any:
    raise AssertionError("the same labels were trained on again after the verdict kept the embedding")
