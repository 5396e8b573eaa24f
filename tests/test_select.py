from __future__ import annotations

import numpy as np
import pytest

from kern_finetune.errors import ExportError, SelectionError, TaskNotFoundError
from kern_finetune.refinery.export import discover_tasks, parse_export_payload, resolve_task
from kern_finetune.labels.select import default_text_attributes, gold_to_class, select_labels

M, W, C = "__Topic__MANUAL", "__Topic__WEAK_SUPERVISION", "__Topic__WEAK_SUPERVISION__confidence"


def rec(i: int, manual=None, weak=None, conf=None, text="some text", gold=None) -> dict:
    return {"running_id": str(i), "Title": text, "Gold": gold, M: manual, W: weak, C: conf}


def base_records() -> list[dict]:
    out = []
    for i in range(20):
        out.append(rec(i, weak="A" if i % 2 else "B", conf="0.9"))
    return out


def select(records, **kw):
    task = resolve_task(records, "Topic")
    kw.setdefault("text_attributes", ["Title"])
    return select_labels(records, task, **kw)


def test_manual_wins_over_weak_and_threshold_is_strict():
    records = [rec(i, weak="A" if i % 2 else "B", conf="0.9", gold="AB"[i % 2]) for i in range(20)] + [
        rec(100, manual="B", weak="A", conf="0.99", gold="B"),
        rec(101, weak="A", conf="0.7000", gold="A"),  # not above 0.7
        rec(102, weak="A", conf="0.7001", gold="A"),
    ]
    sel = select(records, gold_attribute="Gold")
    by_id = dict(zip(sel.ids, range(len(sel.ids))))
    assert sel.classes[sel.y[by_id["100"]]] == "B" and sel.source[by_id["100"]] == "manual"
    assert sel.y[by_id["101"]] == -1 and sel.source[by_id["101"]] == ""
    assert sel.classes[sel.y[by_id["102"]]] == "A" and sel.source[by_id["102"]] == "weak"
    # the record below the threshold is a test record; the labeled ones are not
    assert sel.test_idx.tolist() == [by_id["101"]]
    assert {by_id["100"], by_id["102"]} <= set(sel.labeled_idx.tolist())


def test_several_manual_labels():
    records = base_records() + [rec(200, manual="A, A", weak="B", conf="0.95"), rec(201, manual="A, B", weak="B", conf="0.95")]
    sel = select(records)
    by_id = dict(zip(sel.ids, range(len(sel.ids))))
    assert sel.classes[sel.y[by_id["200"]]] == "A"
    # disagreeing labelers: the record is not trained on, and the weak label does not decide
    assert sel.y[by_id["201"]] == -1
    assert sel.skipped["manual_conflict"] == 1


def test_bad_confidences_and_outside_labels_are_counted():
    records = base_records() + [
        rec(300, weak="A", conf=None),
        rec(301, weak="A", conf="high"),
        rec(302, weak="Z", conf="0.99"),
        rec(303, manual="Q"),
        rec(304, weak="A", conf="1.5"),  # outside [0, 1]: invalid, never trained on
        rec(305, weak="B", conf="-1"),
        rec(306, weak="A", conf="nan"),
    ]
    sel = select(records, known_labels=["A", "B"])
    assert sel.skipped["weak_confidence_missing"] == 1
    assert sel.skipped["weak_confidence_invalid"] == 4
    assert sel.skipped["label_outside_task"] == 2
    assert sel.classes == ["A", "B"]
    by_id = dict(zip(sel.ids, range(len(sel.ids))))
    assert all(sel.y[by_id[i]] == -1 for i in ("304", "305", "306"))
    assert np.isnan(sel.confidence[by_id["304"]]) and sel.confidence[by_id["0"]] == 0.9


def test_label_cells_that_are_not_text_are_counted():
    records = base_records() + [rec(500, manual=["A"]), rec(501, weak={"x": 1}, conf="0.9"), rec(502, weak=7, conf="0.9"),
                                rec(503, weak=7, conf="0.9")]
    sel = select(records)
    assert sel.skipped["label_invalid"] == 2
    by_id = dict(zip(sel.ids, range(len(sel.ids))))
    assert sel.classes == ["7", "A", "B"] and sel.classes[sel.y[by_id["502"]]] == "7"


def test_empty_text_is_skipped_but_kept_for_vectors():
    records = base_records() + [rec(400, manual="A", text="  "), rec(401, text="", gold="A")]
    sel = select(records, gold_attribute="Gold")
    assert len(sel.ids) == len(records)  # every record still gets a vector
    assert sel.skipped["empty_text"] == 2
    by_id = dict(zip(sel.ids, range(len(sel.ids))))
    assert sel.y[by_id["400"]] == -1 and by_id["401"] not in sel.test_idx


def test_duplicate_and_missing_ids_are_errors():
    records = base_records() + [rec(3, weak="A", conf="0.9")]
    with pytest.raises(ExportError, match="duplicate"):
        select(records)
    records = base_records()
    records[0]["running_id"] = None
    with pytest.raises(ExportError, match="running_id"):
        select(records)


def test_too_few_labels():
    records = [rec(i, weak="A", conf="0.9") for i in range(10)]
    with pytest.raises(SelectionError, match="at least 2 classes"):
        select(records)


def test_weak_labels_off_trains_on_manual_labels_only():
    """--no-weak-labels: every weak label is ignored, however confident; its record becomes a test record."""
    records = [rec(i, manual="AB"[i % 2], gold="AB"[i % 2]) for i in range(10)] + [
        rec(100 + i, weak="AB"[i % 2], conf="0.99", gold="AB"[i % 2]) for i in range(6)
    ] + [rec(200, manual="A", weak="B", conf="0.99", gold="A")]
    both = select(records, gold_attribute="Gold")
    manual = select(records, gold_attribute="Gold", weak_labels=False)
    assert sorted(set(both.source) - {""}) == ["manual", "weak"] and len(both.labeled_idx) == 17
    assert set(manual.source) == {"manual", ""} and len(manual.labeled_idx) == 11
    by_id = dict(zip(manual.ids, range(len(manual.ids))))
    assert manual.test_idx.tolist() == [by_id[str(100 + i)] for i in range(6)]
    assert manual.classes[manual.y[by_id["200"]]] == "A"  # the manual label still wins
    assert manual.label_state() != both.label_state()  # so a sync sees a new state
    with pytest.raises(SelectionError, match="manual labels only"):
        select([rec(i, weak="AB"[i % 2], conf="0.99") for i in range(20)], weak_labels=False)


def test_split_is_seeded_and_75_25():
    records = [rec(i, weak="AB"[i % 2], conf="0.9") for i in range(100)]
    a, b, c = select(records, seed=1), select(records, seed=1), select(records, seed=2)
    assert len(a.train_idx) == 75 and len(a.val_idx) == 25
    assert np.array_equal(a.val_idx, b.val_idx) and not np.array_equal(a.val_idx, c.val_idx)


def test_task_discovery_whole_record_and_attribute_level():
    records = [{"running_id": "0", "t": "x", "__Topic__MANUAL": None, "t__Sent__WEAK_SUPERVISION": "pos",
                "t__Sent__WEAK_SUPERVISION__confidence": "0.9"}]
    tasks = {t.label: t for t in discover_tasks(records)}
    assert set(tasks) == {"Topic", "t.Sent"}
    assert tasks["t.Sent"].attribute == "t" and tasks["Topic"].attribute is None
    with pytest.raises(TaskNotFoundError, match="Topic, t.Sent"):
        resolve_task(records, None)
    with pytest.raises(TaskNotFoundError, match="tasks found"):
        resolve_task(records, "Nope")
    assert resolve_task(records, "Sent").weak == "t__Sent__WEAK_SUPERVISION"


def test_export_payload_double_encoded_and_malformed():
    import json

    records = [{"running_id": "0"}]
    assert parse_export_payload(json.dumps(json.dumps(records))) == records
    with pytest.raises(ExportError):
        parse_export_payload('{"not": "a list"}')
    with pytest.raises(ExportError):
        parse_export_payload("[1, 2]")
    with pytest.raises(ExportError):
        parse_export_payload("{broken")


def test_default_text_attributes_skip_id_gold_numbers_and_labels():
    records = [{"running_id": "0", "Title": "a", "Description": "b", "Class Index": "3", "Year": "2004", M: None}]
    assert default_text_attributes(records, id_attribute="running_id", gold_attribute="Class Index") == ["Title", "Description"]


def test_gold_to_class_by_name_by_vote_or_none():
    by_name = select([rec(i, weak="AB"[i % 2], conf="0.9", gold="AB"[i % 2]) for i in range(20)], gold_attribute="Gold")
    assert gold_to_class(by_name) == {"A": 0, "B": 1}
    # codes, not names: each code maps to the class most of its labeled records carry (one weak label wrong)
    coded = [rec(i, weak="AB"[i % 2], conf="0.9", gold="21"[i % 2]) for i in range(20)]
    coded[0][W] = "B"
    assert gold_to_class(select(coded, gold_attribute="Gold")) == {"2": 0, "1": 1}
    # two codes voting for the same class: no honest mapping
    clash = [rec(i, weak="A", conf="0.9", gold="12"[i % 2]) for i in range(20)] + [rec(98 + j, weak="B", conf="0.9") for j in range(2)]
    assert gold_to_class(select(clash, gold_attribute="Gold")) is None
    # a gold value no labeled record carries: no mapping either
    unseen = [rec(i, weak="AB"[i % 2], conf="0.9", gold="21"[i % 2]) for i in range(20)] + [rec(50, gold="3")]
    assert gold_to_class(select(unseen, gold_attribute="Gold")) is None


def test_sample_selection_matches_the_experiment(sample_records):
    sel = select_labels(
        sample_records, resolve_task(sample_records, "Topic"), text_attributes=["Title", "Description"],
        gold_attribute="Class Index",
    )
    assert len(sel.train_idx) + len(sel.val_idx) == 10_854
    assert (len(sel.train_idx), len(sel.val_idx)) == (8_140, 2_714)
    assert len(sel.test_idx) == 9_146
    assert sum(1 for s in sel.source if s == "manual") == 261
    assert sel.class_counts(sel.test_idx) == {"Business": 0, "Sci/Tech": 0, "Sports": 0, "World": 0}
    golds = [sel.gold[i] for i in sel.test_idx]
    assert {g: golds.count(g) for g in "1234"} == {"1": 2190, "2": 1057, "3": 2803, "4": 3096}
    assert gold_to_class(sel) == {"1": sel.classes.index("World"), "2": sel.classes.index("Sports"),
                                  "3": sel.classes.index("Business"), "4": sel.classes.index("Sci/Tech")}


def test_split_is_sklearns_train_test_split_row_for_row():
    """select_labels splits without importing sklearn; the split is the one train_test_split gave."""
    from sklearn.model_selection import train_test_split

    from kern_finetune.labels.select import split_train_val

    for n in (8, 9, 13, 100, 1001):
        labeled = np.sort(np.random.default_rng(n).choice(5 * n, n, replace=False))
        for seed in (0, 42):
            for fraction in (0.1, 0.25, 0.5):
                want = train_test_split(labeled, test_size=fraction, random_state=seed)
                got = split_train_val(labeled, fraction, seed)
                assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True)), (n, seed, fraction)
