"""The column contract: task columns, value strings as refinery's export writes them, embedding names."""

from __future__ import annotations

import pytest

from kern_finetune.errors import ExportError
from kern_finetune.refinery.columns import (
    CLASSIFICATION,
    EXTRACTION,
    EmbeddingName,
    TaskColumns,
    as_string,
    confidence_string,
    embedding_name,
    import_attribute,
    import_rename,
    parse_embedding_name,
    split_task_column,
    task_base,
)

def test_task_columns_are_named_as_the_export_names_them() -> None:
    whole = TaskColumns.named("Topic", None)
    assert (whole.manual, whole.weak, whole.confidence) == (
        "__Topic__MANUAL", "__Topic__WEAK_SUPERVISION", "__Topic__WEAK_SUPERVISION__confidence")
    assert whole.label == "Topic" and whole.kind == CLASSIFICATION
    spans = TaskColumns.named("Spans", "headline", kind=EXTRACTION)
    assert spans.manual == "headline__Spans__MANUAL" and spans.label == "headline.Spans" and spans.kind == EXTRACTION
    assert task_base("", "Topic") == task_base(None, "Topic") == "__Topic"


@pytest.mark.parametrize("column, expected", [
    ("__Topic__MANUAL", (None, "Topic", "manual")),
    ("head__line__Topic__WEAK_SUPERVISION", ("head__line", "Topic", "weak")),
    ("__Topic__WEAK_SUPERVISION__confidence", (None, "Topic", "confidence")),
    ("x__MANUAL", None),  # no task part
    ("x____MANUAL", None),  # empty task name
    ("headline", None),
])
def test_split_task_column(column: str, expected: tuple[str | None, str, str] | None) -> None:
    assert split_task_column(column) == expected


@pytest.mark.parametrize("value, text", [
    (None, None),
    ("Wall St.", "Wall St."),
    (True, "true"),  # Postgres ->> of a JSONB boolean
    (False, "false"),
    (2, "2"),
    (1.5, "1.5"),
    (1.0, "1.0"),
    (1e20, "100000000000000000000"),  # numeric never prints an exponent
    (1e-7, "0.0000001"),
    (-0.0, "0.0"),
    (float("nan"), None),  # JSONB cannot hold NaN: no export holds one
    (float("inf"), None),
    ([1, "a", None, True, float("nan")], '[1, "a", null, true, null]'),
    ({"bb": 1, "a": {"ä": "x", "c": [1.5]}}, '{"a": {"c": [1.5], "ä": "x"}, "bb": 1}'),  # keys by length, then bytes
])
def test_as_string_writes_what_the_export_writes(value: object, text: str | None) -> None:
    assert as_string(value) == text


def test_as_string_refuses_absurd_nesting_with_our_error() -> None:
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ExportError, match="nests too deeply"):
        as_string(deep)


@pytest.mark.parametrize("value, text", [
    (0.93124, "0.9312"), (0.5, "0.5000"), (1, "1.0000"), (0.11115, "0.1112"),  # halves away from zero
    (-0.00001, "0.0000"), (float("nan"), None), (None, None), (True, None), ("x", None),
])
def test_confidence_string_is_round_4_as_text(value: object, text: str | None) -> None:
    assert confidence_string(value) == text


def test_embedding_names_round_trip() -> None:
    name = embedding_name("head-line", model="/models/all-MiniLM-L6-v2/")
    assert name == "head-line-classification-kern-finetune-all-MiniLM-L6-v2"
    got = parse_embedding_name(name, ["head", "head-line", "body"])
    assert got == EmbeddingName(attribute="head-line", kind="classification", rest="kern-finetune-all-MiniLM-L6-v2")
    assert parse_embedding_name("body-extraction-bag-of-words", ["body"]) == EmbeddingName("body", "extraction", "bag-of-words")
    assert parse_embedding_name("body-other-x", ["body"]) is None
    assert parse_embedding_name("body-classification-", ["body"]) is None
    assert parse_embedding_name("title-classification-x", ["body"]) is None
    with pytest.raises(ExportError):
        embedding_name("", model="m")


def test_names_as_refinerys_import_reads_them() -> None:
    assert import_rename("headline-classification-distilbert-base-uncased") == (
        "huggingface", "distilbert-base-uncased", "headline-classification-huggingface-distilbert-base-uncased")
    assert import_rename("body-classification-tf-idf") == ("python", "tf-idf", "body-classification-python-tf-idf")
    assert import_rename("head-line-classification-m")[2] == "head-line-huggingface-classification-m"  # its naive split
    assert import_rename("nodash") is None
    assert import_attribute("head-line-classification-x-classification-y") == "head-line-classification-x"  # greedy
    assert import_attribute("headline-other") is None
