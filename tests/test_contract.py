"""The data contract: models, Arrow schemas, Parquet round trips, stable ids."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cattune.schemas import (
    ANNOTATED_SCHEMA,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    AnnotatedExample,
    Annotation,
    Example,
    Meta,
    QuarantinedExample,
    Relation,
    ReleaseFile,
    ReleaseManifest,
    Span,
    example_id,
    from_table,
    schema_version_of,
    to_table,
)

ANNOTATION = Annotation(
    annotator="gold",
    annotator_version="1",
    pack="key-value-records",
    pack_hash="abc",
    created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
)


def _annotated(prompt: str, completion: str) -> AnnotatedExample:
    text = prompt + completion
    relations = []
    if len(text) >= 2:
        relations = [
            Relation(effect=Span(start=len(text) - 1, end=len(text)), causes=[Span(start=0, end=1)])
        ]
    return AnnotatedExample(
        id=example_id(prompt, completion),
        prompt=prompt,
        completion=completion,
        meta=Meta(source="unit", split="train", label="x", ood=True, extra={"k": "v", "ü": "🧪"}),
        relations=relations,
        annotation=ANNOTATION,
        problems=["cause 'y' of effect 'z' does not occur in the text"],
    )


@given(st.text(), st.text())
def test_id_is_a_stable_function_of_the_text(prompt: str, completion: str) -> None:
    assert example_id(prompt, completion) == example_id(prompt, completion)
    assert Example.create(prompt, completion).id == example_id(prompt, completion)


def test_id_separates_prompt_from_completion() -> None:
    assert example_id("ab", "c") != example_id("a", "bc")


def test_example_rejects_an_id_that_is_not_the_content_hash() -> None:
    with pytest.raises(ValidationError, match="content hash"):
        Example(id="made-up", prompt="a", completion="b")


@given(st.text(min_size=0, max_size=40), st.text(min_size=0, max_size=40))
def test_parquet_round_trip_is_lossless(
    tmp_path_factory: pytest.TempPathFactory, prompt: str, completion: str
) -> None:
    record = _annotated(prompt, completion)
    path = tmp_path_factory.mktemp("rt") / "rows.parquet"
    pq.write_table(to_table([record], AnnotatedExample), path)
    table = pq.read_table(path)
    assert schema_version_of(table.schema) == SCHEMA_VERSION
    assert from_table(table, AnnotatedExample) == [record]


def test_quarantine_round_trip(tmp_path: Path) -> None:
    row = QuarantinedExample(
        id=example_id("p", "c"),
        prompt="p",
        completion="c",
        annotation=ANNOTATION,
        error="effect 'q' does not occur in the text",
        raw_output='{"relations": [}',
        retryable=False,
    )
    path = tmp_path / "q.parquet"
    pq.write_table(to_table([row], QuarantinedExample), path)
    assert from_table(pq.read_table(path), QuarantinedExample) == [row]


def test_arrow_schemas_follow_the_models() -> None:
    assert ANNOTATED_SCHEMA.names == list(AnnotatedExample.model_fields)
    assert QUARANTINE_SCHEMA.names == list(QuarantinedExample.model_fields)
    span = ANNOTATED_SCHEMA.field("relations").type.value_type.field("effect").type
    assert str(span.field("start").type) == "int32"


def test_spans_must_be_non_empty_and_causes_must_precede_effects() -> None:
    with pytest.raises(ValidationError, match="greater than start"):
        Span(start=3, end=3)
    with pytest.raises(ValidationError, match="does not end before"):
        Relation(effect=Span(start=2, end=4), causes=[Span(start=1, end=3)])
    with pytest.raises(ValidationError, match="at least one cause"):
        Relation(effect=Span(start=2, end=4), causes=[])


def test_spans_must_lie_inside_the_text() -> None:
    with pytest.raises(ValidationError, match="outside the text"):
        AnnotatedExample(
            id=example_id("ab", ""),
            prompt="ab",
            completion="",
            relations=[Relation(effect=Span(start=1, end=9), causes=[Span(start=0, end=1)])],
            annotation=ANNOTATION,
        )


@pytest.mark.parametrize(
    "bad", ["../outside.parquet", "data/../../x.parquet", "x.parquet", "data\\x"]
)
def test_manifest_paths_must_stay_inside_the_release_data_folder(tmp_path: Path, bad: str) -> None:
    manifest = ReleaseManifest(
        dataset="d",
        version=0,
        rows_per_split={"train": 1},
        files=[ReleaseFile(path=bad, split="train", rows=1, sha256="0" * 64, bytes=1)],
    )
    assert manifest.problems(tmp_path) == [
        f"manifest path {bad!r} points outside the release's data/"
    ]
