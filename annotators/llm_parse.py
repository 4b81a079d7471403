"""Lenient reading of LLM replies and strict checking of what they say against the text.

Servers that ignore ``response_format`` wrap the JSON in prose or ``` fences, or answer in the CAT
authors' ``{effect: [causes]}`` form; all of that is read. What is read must then hold against the
text: phrases occur verbatim and causes end before their effects (``cattune.schemas.align``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cattune.schemas import (
    Alignment,
    AnnotatedExample,
    Annotation,
    Example,
    PhraseRelation,
    QuarantinedExample,
    align,
    parse_phrase_relations,
)
from cattune.schemas.phrases import Boundary, Strategy

_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class CheckedReply:
    """A reply read and aligned: ``problems`` is empty when it can be used as it is."""

    relations: list[PhraseRelation]
    alignment: Alignment | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _json_candidates(reply: str) -> Iterator[Any]:
    """JSON values found in a reply: the whole reply, fenced blocks, then embedded objects."""
    stripped = reply.strip()
    try:
        yield json.loads(stripped)
    except ValueError:
        pass
    for block in _FENCE.findall(reply):
        try:
            yield json.loads(block.strip())
        except ValueError:
            pass
    for match in re.finditer(r"[\[{]", reply):
        try:
            value, _ = _DECODER.raw_decode(reply, match.start())
        except ValueError:
            continue
        yield value


def _forms(value: Any) -> list[Any]:
    """Ways to read one JSON value: the wire object (extra keys ignored), then as it is.

    A CAT dict is also tried as a list of one-key objects, so that an effect phrase that happens
    to be "relations" is not taken for the wire format's key.
    """
    if isinstance(value, dict) and isinstance(value.get("relations"), list):
        return [value["relations"], value, [{k: v} for k, v in value.items()]]
    return [value]


def read_relations(reply: str) -> list[PhraseRelation]:
    """Phrase relations from a reply in any accepted form.

    Raises ``ValueError`` saying what is wrong when no JSON value in the reply holds relations.
    """
    first_error: str | None = None
    saw_json = False
    empty: list[PhraseRelation] | None = None
    for candidate in _json_candidates(reply):
        saw_json = True
        for form in _forms(candidate):
            try:
                relations = parse_phrase_relations(form)
            except (ValueError, TypeError) as error:
                first_error = first_error or str(error).splitlines()[0]
                continue
            if relations:
                return relations
            empty = relations
            break  # a reading that parses settles this value, even when it is empty
    if empty is not None:
        return empty
    if not saw_json:
        raise ValueError("the reply contains no JSON object")
    raise ValueError(f"the JSON in the reply is not a list of relations: {first_error}")


def check_reply(
    reply: str, text: str, strategy: Strategy = "all", boundary: Boundary = "word"
) -> CheckedReply:
    """Read a reply and align it to ``text``; every reason it cannot be used goes in problems."""
    try:
        relations = read_relations(reply)
    except ValueError as error:
        return CheckedReply(relations=[], alignment=None, problems=[str(error)])
    if not relations:
        return CheckedReply(relations=[], alignment=None, problems=["the reply lists no relations"])
    alignment = align(text, relations, strategy=strategy, boundary=boundary)
    problems = list(dict.fromkeys(problem.message for problem in alignment.problems))
    if not alignment.relations and not problems:
        problems.append("no relation could be placed in the text")
    return CheckedReply(relations=relations, alignment=alignment, problems=problems)


def annotated(example: Example, checked: CheckedReply, annotation: Annotation) -> AnnotatedExample:
    """The contract row for a reply that passed :func:`check_reply`."""
    if not checked.ok or checked.alignment is None:
        raise ValueError("only a reply without problems becomes an annotated row")
    return AnnotatedExample(
        **example.model_dump(),
        relations=checked.alignment.relations,
        annotation=annotation,
    )


def quarantined(
    example: Example,
    annotation: Annotation,
    error: str,
    *,
    raw_output: str | None,
    retryable: bool,
) -> QuarantinedExample:
    return QuarantinedExample(
        **example.model_dump(),
        annotation=annotation,
        error=error,
        raw_output=raw_output,
        retryable=retryable,
    )
