"""Phrase-level relations and their alignment to character spans.

This is part of the contract (DESIGN.md): annotators speak in phrases copied verbatim from the text,
``{"relations": [{"effect": "<phrase>", "causes": ["<phrase>", ...]}]}``; the CAT authors' forms
``{"<effect>": ["<cause>", ...]}`` and ``[{"<effect>": [...]}, ...]`` are accepted too.

Alignment turns phrases into spans by finding them in ``text = prompt + completion``. The default
strategy, ``"all"``, is the reference behaviour: every occurrence of a cause that ends before an
occurrence of the effect is linked to that occurrence. ``"nearest"`` links only the closest
preceding occurrence of each cause.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from cattune.schemas.records import Relation, Span

Strategy = Literal["all", "nearest"]
ProblemKind = Literal[
    "empty_phrase", "effect_not_found", "cause_not_found", "cause_not_before_effect"
]


class PhraseRelation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    effect: str
    causes: list[str]


class AlignmentProblem(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ProblemKind
    effect: str
    cause: str | None = None

    @property
    def message(self) -> str:
        if self.kind == "empty_phrase":
            return f"empty phrase in relation of effect {self.effect!r}"
        if self.kind == "effect_not_found":
            return f"effect {self.effect!r} does not occur in the text"
        if self.kind == "cause_not_found":
            return f"cause {self.cause!r} of effect {self.effect!r} does not occur in the text"
        return f"cause {self.cause!r} never ends before effect {self.effect!r} starts"


class Alignment(BaseModel):
    relations: list[Relation]
    problems: list[AlignmentProblem]


def _as_causes(value: Any, effect: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return list(value)
    raise ValueError(f"causes of effect {effect!r} must be a list of strings, got {value!r}")


def parse_phrase_relations(obj: Any) -> list[PhraseRelation]:
    """Read phrase relations in the wire format or either of the CAT authors' forms.

    Raises ``ValueError`` with a description of what is wrong for anything else.
    """
    if isinstance(obj, dict) and set(obj) == {"relations"}:
        obj = obj["relations"]
    if isinstance(obj, dict):
        return [PhraseRelation(effect=k, causes=_as_causes(v, k)) for k, v in obj.items()]
    if not isinstance(obj, list):
        raise ValueError(f"expected an object or a list of relations, got {type(obj).__name__}")
    relations: list[PhraseRelation] = []
    for item in obj:
        if not isinstance(item, dict):
            raise ValueError(f"each relation must be an object, got {item!r}")
        if set(item) == {"effect", "causes"} and isinstance(item["effect"], str):
            relations.append(
                PhraseRelation(
                    effect=item["effect"], causes=_as_causes(item["causes"], item["effect"])
                )
            )
        else:
            relations.extend(
                PhraseRelation(effect=k, causes=_as_causes(v, k)) for k, v in item.items()
            )
    return relations


def find_occurrences(text: str, phrase: str) -> list[int]:
    """Start offsets (code points) of every occurrence of ``phrase``, overlapping ones included."""
    starts: list[int] = []
    start = text.find(phrase)
    while start != -1:
        starts.append(start)
        start = text.find(phrase, start + 1)
    return starts


def align(text: str, relations: Iterable[PhraseRelation], strategy: Strategy = "all") -> Alignment:
    """Turn phrase relations into span relations over ``text`` and list what did not align.

    Each occurrence of an effect becomes one :class:`Relation` whose causes are the cause
    occurrences that end before it starts (all of them, or the nearest one per cause phrase).
    Relations sharing an effect span are merged; cause spans are de-duplicated and sorted.
    """
    if strategy not in ("all", "nearest"):
        raise ValueError(f"unknown alignment strategy {strategy!r}; use 'all' or 'nearest'")
    causes_by_effect: dict[tuple[int, int], set[tuple[int, int]]] = {}
    problems: list[AlignmentProblem] = []
    for relation in relations:
        if not relation.effect or any(not c for c in relation.causes):
            problems.append(AlignmentProblem(kind="empty_phrase", effect=relation.effect))
        if not relation.effect:
            continue
        effect_starts = find_occurrences(text, relation.effect)
        if not effect_starts:
            problems.append(AlignmentProblem(kind="effect_not_found", effect=relation.effect))
            continue
        for cause in dict.fromkeys(c for c in relation.causes if c):
            cause_starts = find_occurrences(text, cause)
            if not cause_starts:
                problems.append(
                    AlignmentProblem(kind="cause_not_found", effect=relation.effect, cause=cause)
                )
                continue
            linked = False
            for effect_start in effect_starts:
                before = [s for s in cause_starts if s + len(cause) <= effect_start]
                if strategy == "nearest":
                    before = before[-1:]
                if before:
                    linked = True
                    effect_key = (effect_start, effect_start + len(relation.effect))
                    causes_by_effect.setdefault(effect_key, set()).update(
                        (s, s + len(cause)) for s in before
                    )
            if not linked:
                problems.append(
                    AlignmentProblem(
                        kind="cause_not_before_effect", effect=relation.effect, cause=cause
                    )
                )
    span_relations = [
        Relation(
            effect=Span(start=effect[0], end=effect[1]),
            causes=[Span(start=s, end=e) for s, e in sorted(causes)],
        )
        for effect, causes in sorted(causes_by_effect.items())
    ]
    return Alignment(relations=span_relations, problems=problems)
