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
    salvage_phrase_relations,
)
from cattune.schemas.phrases import Boundary, Strategy

_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class CheckedReply:
    """A reply read and aligned to its text.

    ``alignment`` holds the relations that could be placed (the valid part of the reply);
    ``problems`` says what was left out and why. ``links`` counts what the reply asked for (one per
    effect-cause pair, one per effect without causes, one per malformed item) and ``dropped`` how
    many of those produced no span.
    """

    relations: list[PhraseRelation]
    alignment: Alignment | None
    problems: list[str]
    links: int = 0
    dropped: int = 0

    @property
    def ok(self) -> bool:
        """Nothing was left out."""
        return not self.problems

    @property
    def usable(self) -> bool:
        """At least one relation could be placed in the text."""
        return self.alignment is not None and bool(self.alignment.relations)

    @property
    def dropped_share(self) -> float:
        return self.dropped / self.links if self.links else 1.0

    def needs_repair(self, max_dropped_share: float) -> bool:
        """Whether to ask again: nothing usable, or more than the allowed share left out."""
        return not self.usable or self.dropped_share > max_dropped_share

    def better_than(self, other: CheckedReply) -> bool:
        """More placed links, then fewer left out (a repair reply is kept only if it helps)."""
        return (self.links - self.dropped, -self.dropped) > (
            other.links - other.dropped,
            -other.dropped,
        )


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

    A CAT dict is read as a list of one-key objects, so that an effect phrase that happens to be
    "relations" is not taken for the wire format's key.
    """
    if isinstance(value, dict) and isinstance(value.get("relations"), list):
        return [value["relations"], [{k: v} for k, v in value.items()]]
    return [value]


def _wire_items(form: Any) -> tuple[Any, list[str]]:
    """Wire-format items reduced to ``effect`` and ``causes``; items lacking either are reported.

    Without this, ``{"effect": "X"}`` would be read as the authors' dict form (effect "effect").
    """
    if isinstance(form, dict) and isinstance(form.get("effect"), str):
        form = [form]  # one wire item on its own
    if not isinstance(form, list):
        return form, []
    items: list[Any] = []
    problems: list[str] = []
    for item in form:
        if isinstance(item, dict) and isinstance(item.get("effect"), str):
            if "causes" not in item:
                problems.append(f"relation of effect {item['effect']!r} has no 'causes' list")
                continue
            item = {"effect": item["effect"], "causes": item["causes"]}
        elif isinstance(item, dict) and "causes" in item and "effect" not in item:
            problems.append(f"relation with causes {item['causes']!r:.80} has no 'effect'")
            continue
        items.append(item)
    return items, problems


def read_relations_salvaged(reply: str) -> tuple[list[PhraseRelation], list[str]]:
    """Phrase relations from a reply in any accepted form, and what could not be read.

    Malformed items (a relation without ``causes``, causes that are not strings) are left out
    and reported; the well-formed rest is kept. Raises ``ValueError`` saying what is wrong when
    no JSON value in the reply holds relations.
    """
    first_error: str | None = None
    saw_json = False
    empty = False
    incomplete: list[str] = []  # wire items lacking causes or effect, when nothing else reads
    for candidate in _json_candidates(reply):
        saw_json = True
        for form in _forms(candidate):
            items, problems = _wire_items(form)
            incomplete = incomplete or problems
            relations, more = salvage_phrase_relations(items)
            problems = [*problems, *more]
            if relations:
                return relations, problems
            if problems:
                first_error = first_error or problems[0]
                continue
            empty = True
            break  # a reading that parses settles this value, even when it is empty
    if incomplete:
        return [], incomplete
    if empty:
        return [], []
    if not saw_json:
        raise ValueError("the reply contains no JSON object")
    raise ValueError(f"the JSON in the reply is not a list of relations: {first_error}")


def read_relations(reply: str) -> list[PhraseRelation]:
    """The relations of :func:`read_relations_salvaged`, without its problems."""
    return read_relations_salvaged(reply)[0]


def _placed(text: str, relation: PhraseRelation, cause: str, boundary: Boundary) -> bool:
    alignment = align(
        text, [PhraseRelation(effect=relation.effect, causes=[cause])], "all", boundary
    )
    return bool(alignment.relations)


def check_reply(
    reply: str, text: str, strategy: Strategy = "all", boundary: Boundary = "word"
) -> CheckedReply:
    """Read a reply and align it to ``text``, keeping what can be placed and listing the rest."""
    try:
        relations, unread = read_relations_salvaged(reply)
    except ValueError as error:
        return CheckedReply(relations=[], alignment=None, problems=[str(error)])
    if not relations:
        problems = unread or ["the reply lists no relations"]
        return CheckedReply(relations=[], alignment=None, problems=problems)
    alignment = align(text, relations, strategy=strategy, boundary=boundary)
    problems = list(dict.fromkeys([*unread, *(p.message for p in alignment.problems)]))
    links = len(unread)
    dropped = len(unread)
    for relation in relations:
        causes = list(dict.fromkeys(relation.causes))
        if not causes:
            problems.append(f"effect {relation.effect!r} has no causes")
        links += max(len(causes), 1)
        dropped += sum(not _placed(text, relation, c, boundary) for c in causes) if causes else 1
    if not alignment.relations and not problems:
        problems.append("no relation could be placed in the text")
    problems = list(dict.fromkeys(problems))
    return CheckedReply(relations, alignment, problems, links=links, dropped=dropped)


def annotated(example: Example, checked: CheckedReply, annotation: Annotation) -> AnnotatedExample:
    """The contract row for a usable reply; what was left out goes to the row's ``problems``."""
    if not checked.usable or checked.alignment is None:
        raise ValueError("only a reply with at least one placed relation becomes an annotated row")
    return AnnotatedExample(
        **example.model_dump(),
        relations=checked.alignment.relations,
        annotation=annotation,
        problems=[f"left out of the reply: {problem}" for problem in checked.problems],
    )


def final_result(
    example: Example, checked: CheckedReply, reply: str, annotation: Annotation
) -> AnnotatedExample | QuarantinedExample:
    """The row for a final reply: annotated with its valid part, or quarantined when it has none."""
    if checked.usable:
        return annotated(example, checked, annotation)
    return quarantined(
        example,
        annotation,
        "reply unusable after one repair request: " + "; ".join(checked.problems),
        raw_output=reply,
        retryable=False,
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
