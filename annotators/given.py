"""Annotators for labels a source already carries.

Sources put the phrase relations they come with (the CAT authors' ``important`` field, the STG
generator's true causes) into ``meta.extra[GIVEN_RELATIONS_KEY]`` as wire-format JSON. These
annotators only align them to spans:

- :class:`GivenAnnotator` (``given``) keeps what aligns and records the rest in
  ``AnnotatedExample.problems``; a row where nothing aligns, or without labels, is quarantined.
- :class:`GoldAnnotator` (``gold``) is for generated benchmarks whose labels must be exact: any
  alignment problem quarantines the row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cattune.annotators.base import (
    GIVEN_RELATIONS_KEY,
    AnnotationResult,
    given_problems,
    stable_hash,
)
from cattune.schemas import (
    BOUNDARIES,
    AnnotatedExample,
    Annotation,
    Boundary,
    ConfigError,
    Example,
    PhraseRelation,
    QuarantinedExample,
    align,
    salvage_phrase_relations,
)
from cattune.schemas.phrases import Strategy


def _fields(example: Example) -> dict[str, Any]:
    return {name: getattr(example, name) for name in Example.model_fields}


def given_relations(example: Example) -> tuple[list[PhraseRelation] | None, list[str]]:
    """The phrase relations a row carries (None when it carries none) and their problems.

    The problems are the malformed parts the source left out (:data:`GIVEN_PROBLEMS_KEY`) and
    whatever of the stored relation JSON cannot be read; the well-formed relations are kept.
    """
    problems = given_problems(example)
    raw = example.meta.extra.get(GIVEN_RELATIONS_KEY)
    if raw is None:
        return None, problems
    try:
        wire = json.loads(raw)
    except json.JSONDecodeError as error:
        return [], [*problems, f"the row's given relations are not JSON: {error.msg}"]
    relations, malformed = salvage_phrase_relations(wire)
    return relations, problems + malformed


class GivenAnnotator:
    """Aligns the relations a source row carries; partial problems are kept as ``problems``."""

    name = "given"
    version = "1.0"
    strict = False

    def __init__(self, *, strategy: Strategy = "all", boundary: Boundary = "word") -> None:
        if strategy not in ("all", "nearest"):
            raise ConfigError(f"unknown alignment strategy {strategy!r}; use 'all' or 'nearest'")
        if boundary not in BOUNDARIES:
            raise ConfigError(f"unknown boundary {boundary!r}; use 'word' or 'none'")
        self.strategy: Strategy = strategy
        self.boundary: Boundary = boundary

    def config_hash(self) -> str:
        return stable_hash(
            {
                "annotator": self.name,
                "version": self.version,
                "strategy": self.strategy,
                "boundary": self.boundary,
            }
        )

    def _annotation(self) -> Annotation:
        return Annotation(
            annotator=self.name, annotator_version=self.version, config_hash=self.config_hash()
        )

    def annotate(self, examples: Sequence[Example]) -> list[AnnotationResult]:
        return [self._annotate_one(example) for example in examples]

    def _quarantine(self, example: Example, error: str, raw: str | None) -> QuarantinedExample:
        return QuarantinedExample(
            **_fields(example), annotation=self._annotation(), error=error, raw_output=raw
        )

    def _annotate_one(self, example: Example) -> AnnotationResult:
        raw = example.meta.extra.get(GIVEN_RELATIONS_KEY)
        phrases, malformed = given_relations(example)
        if phrases is None:
            return self._quarantine(
                example,
                f"the row carries no relations (meta.extra[{GIVEN_RELATIONS_KEY!r}]); "
                "annotate it with the prior or an LLM annotator instead",
                None,
            )
        if not phrases and malformed:
            return self._quarantine(
                example,
                f"the row's given relations are not valid relation JSON: {'; '.join(malformed)}",
                raw,
            )
        if not phrases:
            return self._quarantine(
                example,
                "the row's given relations are empty; annotate it with the prior or an LLM "
                "annotator, or drop it",
                raw,
            )
        alignment = align(example.text, phrases, strategy=self.strategy, boundary=self.boundary)
        problems = malformed + [p.message for p in alignment.problems]
        if not alignment.relations or (self.strict and problems):
            what = "; ".join(problems) or "no relation aligned"
            return self._quarantine(
                example,
                f"given relations do not align with the text ({what}); fix the labels so that "
                "every phrase is copied verbatim and each cause occurs before its effect",
                raw,
            )
        return AnnotatedExample(
            **_fields(example),
            relations=alignment.relations,
            annotation=self._annotation(),
            problems=problems,
        )


class GoldAnnotator(GivenAnnotator):
    """Exact labels for generated benchmarks (STG): any alignment problem quarantines the row."""

    name = "gold"
    strict = True
