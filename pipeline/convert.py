"""Import rows that carry their own phrase relations (the CAT authors' JSONL) as contract rows.

Every input row is kept: relations are whatever aligned, and ``problems`` lists what did not (the
:class:`~cattune.schemas.AlignmentProblem` messages, or ``"no relations given"`` when the row has
no or an empty ``important`` list). Malformed input is not skipped: the first bad row raises
:class:`InputError` with its file and line, and nothing is written.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from cattune.annotators.base import GIVEN_RELATIONS_KEY, stable_hash
from cattune.annotators.given import GivenAnnotator
from cattune.pipeline.sources import SourceFormat, read_source
from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    Example,
    InputError,
    PhraseRelation,
    align,
    parse_phrase_relations,
    to_table,
)
from cattune.schemas.phrases import Strategy

NO_RELATIONS = "no relations given"


@dataclass
class ConvertSummary:
    """What a conversion found; phrase counts are per mention (an effect and each of its causes)."""

    rows: int = 0
    relations: int = 0  # span relations (one per aligned effect occurrence)
    phrases_found: int = 0
    phrases_missing: int = 0
    rows_with_problems: int = 0
    rows_without_relations: int = 0  # rows with no or an empty relation list
    problem_kinds: dict[str, int] = field(default_factory=dict)

    def as_rows(self) -> list[tuple[str, str]]:
        rows = [
            ("rows", self.rows),
            ("relations (aligned effect spans)", self.relations),
            ("phrases found", self.phrases_found),
            ("phrases not found", self.phrases_missing),
            ("rows with problems", self.rows_with_problems),
            ("rows with no relations given", self.rows_without_relations),
        ]
        rows += [(f"  problem: {k}", v) for k, v in sorted(self.problem_kinds.items())]
        return [(name, str(value)) for name, value in rows]


def given_relations(example: Example) -> list[PhraseRelation] | None:
    """The phrase relations a source row carried, or None when it carried none."""
    wire = example.meta.extra.get(GIVEN_RELATIONS_KEY)
    if wire is None:
        return None
    return parse_phrase_relations(json.loads(wire))


def annotate_given(
    example: Example, annotation: Annotation, strategy: Strategy, summary: ConvertSummary
) -> AnnotatedExample:
    """Align the row's own relations to spans and record what did not align."""
    phrases = given_relations(example) or []
    text = example.text
    alignment = align(text, phrases, strategy)
    problems = [p.message for p in alignment.problems]
    for problem in alignment.problems:
        summary.problem_kinds[problem.kind] = summary.problem_kinds.get(problem.kind, 0) + 1
    if not phrases:
        problems.append(NO_RELATIONS)
        summary.rows_without_relations += 1
    for relation in phrases:
        for phrase in (relation.effect, *relation.causes):
            if phrase and phrase in text:
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


def convert_annotation(strategy: Strategy) -> Annotation:
    """Provenance of converted rows: the ``given`` annotator, with a config hash of its own
    because, unlike :class:`GivenAnnotator`, conversion keeps rows that carry no relations."""
    config = {"annotator": GivenAnnotator.name, "version": GivenAnnotator.version}
    return Annotation(
        annotator=GivenAnnotator.name,
        annotator_version=GivenAnnotator.version,
        config_hash=stable_hash({**config, "strategy": strategy, "keeps_every_row": True}),
    )


def convert_source(
    path: str | Path,
    *,
    format: SourceFormat = "cat",
    strategy: Strategy = "all",
    source_name: str | None = None,
) -> tuple[list[AnnotatedExample], ConvertSummary]:
    """Read a source strictly and turn its given relations into contract rows."""
    annotation = convert_annotation(strategy)
    summary = ConvertSummary()
    records: list[AnnotatedExample] = []
    for row in read_source(path, format=format, source_name=source_name):
        if row.example is None:
            raise InputError(row.error or "malformed row", path=str(path), line=row.line)
        records.append(annotate_given(row.example, annotation, strategy, summary))
    return records, summary


def write_parquet(records: Iterable[AnnotatedExample], out: str | Path) -> Path:
    """Write contract rows to one Parquet file atomically (a temp file renamed into place)."""
    out = Path(out)
    if out.is_dir():
        raise InputError(
            "output is a directory; give a file name such as out.parquet", path=str(out)
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    table = to_table(records, AnnotatedExample)
    handle, temp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(handle)
    try:
        pq.write_table(table, temp)
        os.replace(temp, out)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return out
