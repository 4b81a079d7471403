"""Import rows that carry their own phrase relations (the CAT authors' JSONL) as contract rows.

Every input row comes out. A row that can be read is converted: relations are whatever aligned,
and ``problems`` lists what did not (the :class:`~cattune.schemas.AlignmentProblem` messages, the
parts of a malformed ``important`` that were left out, or ``"no relations given"`` when the row has
no or an empty ``important`` list). A row that cannot be read (invalid JSON, no text in ``input``)
is quarantined with its raw text and the reason. Only whole-file problems raise
:class:`InputError`, and then nothing is written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import BaseModel

from cattune.annotators.base import stable_hash
from cattune.annotators.given import GivenAnnotator, given_relations
from cattune.pipeline.sources import SourceFormat, malformed_row, read_source
from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    Boundary,
    Example,
    InputError,
    QuarantinedExample,
    align,
    find_occurrences,
    to_table,
)
from cattune.schemas.phrases import Strategy

NO_RELATIONS = "no relations given"
MALFORMED_RELATIONS = "malformed_relations"  # the problem kind of a left-out part of `important`


@dataclass
class ConvertSummary:
    """What a conversion found; phrase counts are per mention (an effect and each of its causes)."""

    rows: int = 0  # rows converted
    rows_quarantined: int = 0  # malformed source rows, written to the quarantine file
    relations: int = 0  # span relations (one per aligned effect occurrence)
    phrases_found: int = 0
    phrases_missing: int = 0
    rows_with_problems: int = 0
    rows_without_relations: int = 0  # rows with no or an empty relation list
    problem_kinds: dict[str, int] = field(default_factory=dict)

    def as_rows(self) -> list[tuple[str, str]]:
        rows = [
            ("rows converted", self.rows),
            ("rows quarantined (malformed)", self.rows_quarantined),
            ("relations (aligned effect spans)", self.relations),
            ("phrases found", self.phrases_found),
            ("phrases not found", self.phrases_missing),
            ("rows with problems", self.rows_with_problems),
            ("rows with no relations given", self.rows_without_relations),
        ]
        rows += [(f"  problem: {k}", v) for k, v in sorted(self.problem_kinds.items())]
        return [(name, str(value)) for name, value in rows]

    def count(self, kind: str) -> None:
        self.problem_kinds[kind] = self.problem_kinds.get(kind, 0) + 1


@dataclass
class Conversion:
    """The converted rows, the quarantined (malformed) source rows, and the summary."""

    records: list[AnnotatedExample]
    quarantined: list[QuarantinedExample]
    summary: ConvertSummary


def annotate_given(
    example: Example,
    annotation: Annotation,
    summary: ConvertSummary,
    *,
    strategy: Strategy = "all",
    boundary: Boundary = "word",
) -> AnnotatedExample:
    """Align the row's own relations to spans and record what did not align."""
    given, left_out = given_relations(example)
    phrases = given or []
    text = example.text
    alignment = align(text, phrases, strategy, boundary)
    problems = left_out + [p.message for p in alignment.problems]
    for _ in left_out:
        summary.count(MALFORMED_RELATIONS)
    for problem in alignment.problems:
        summary.count(problem.kind)
    if not phrases:
        problems.append(NO_RELATIONS)
        summary.rows_without_relations += 1
    for relation in phrases:
        for phrase in (relation.effect, *relation.causes):
            if phrase and find_occurrences(text, phrase, boundary):
                summary.phrases_found += 1
            else:
                summary.phrases_missing += 1
    summary.rows += 1
    summary.relations += len(alignment.relations)
    summary.rows_with_problems += bool(problems)
    return AnnotatedExample(
        **example.model_dump(),
        relations=alignment.relations,
        annotation=annotation,
        problems=problems,
    )


def convert_annotation(strategy: Strategy, boundary: Boundary = "word") -> Annotation:
    """Provenance of converted rows: the ``given`` annotator, with a config hash of its own
    because, unlike :class:`GivenAnnotator`, conversion keeps rows that carry no relations."""
    config = {"annotator": GivenAnnotator.name, "version": GivenAnnotator.version}
    settings = {"strategy": strategy, "boundary": boundary, "keeps_every_row": True}
    return Annotation(
        annotator=GivenAnnotator.name,
        annotator_version=GivenAnnotator.version,
        config_hash=stable_hash({**config, **settings}),
    )


def convert_source(
    path: str | Path,
    *,
    format: SourceFormat = "cat",
    strategy: Strategy = "all",
    boundary: Boundary = "word",
    source_name: str | None = None,
) -> Conversion:
    """Read a source and turn its given relations into contract rows; malformed rows are
    quarantined, and only whole-file problems raise :class:`InputError`."""
    annotation = convert_annotation(strategy, boundary)
    unread = annotation.model_copy(update={"attempts": 0})
    source = source_name or Path(path).name
    summary = ConvertSummary()
    records: list[AnnotatedExample] = []
    quarantined: list[QuarantinedExample] = []
    for row in read_source(path, format=format, source_name=source_name):
        if row.example is None:
            quarantined.append(malformed_row(row, unread, source))
            summary.rows_quarantined += 1
            continue
        records.append(
            annotate_given(row.example, annotation, summary, strategy=strategy, boundary=boundary)
        )
    return Conversion(records, quarantined, summary)


def write_parquet(
    records: Iterable[BaseModel], out: str | Path, model: type[BaseModel] = AnnotatedExample
) -> Path:
    """Write contract rows (of ``model``) to one Parquet file atomically (a temp file renamed
    into place)."""
    out = Path(out)
    if out.is_dir():
        raise InputError(
            "output is a directory; give a file name such as out.parquet", path=str(out)
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    table = to_table(records, model)
    handle, temp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(handle)
    try:
        pq.write_table(table, temp)
        os.replace(temp, out)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return out
