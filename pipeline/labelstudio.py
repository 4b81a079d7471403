"""Label Studio's formats: the labelling config, import tasks, and reading its JSON export back.

A row becomes one task whose ``data.text`` is ``prompt + completion``. Each distinct span of the
row's relations becomes one ``labels`` region labelled ``Cause`` and/or ``Effect`` (a span can be
both in a chain), and each (effect, cause) pair one ``relation`` result from the cause's region to
the effect's region (``direction: right``). The relations go in as a prediction, so a reviewer
starts from them.

Offsets: Label Studio's ``Text`` tag stores region offsets in :data:`OFFSET_UNIT` (measured against
the pinned server and its frontend, see docs/review.md); cattune's contract uses code points, and
:func:`to_ls_offset` / :func:`from_ls_offset` convert exactly either way.
"""

from __future__ import annotations

import bisect
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cattune.schemas import AnnotatedExample, QuarantinedExample, Relation, Span

OffsetUnit = Literal["code_point", "utf16"]
OFFSET_UNIT: OffsetUnit = "code_point"

CAUSE = "Cause"
EFFECT = "Effect"
FROM_NAME = "label"
TO_NAME = "text"
ROLE_COLOURS = {CAUSE: "#1f77b4", EFFECT: "#d62728"}

Row = AnnotatedExample | QuarantinedExample


def labeling_config() -> str:
    """The Label Studio labelling config (XML) that :func:`task_for` tasks are made for."""
    labels = "\n".join(
        f'    <Label value="{role}" background="{colour}"/>'
        for role, colour in ROLE_COLOURS.items()
    )
    return (
        "<View>\n"
        '  <Header value="Draw a relation from each cause to the effect it explains"/>\n'
        f'  <Labels name="{FROM_NAME}" toName="{TO_NAME}" choice="multiple">\n'
        f"{labels}\n"
        "  </Labels>\n"
        f'  <Text name="{TO_NAME}" value="$text"/>\n'
        "</View>\n"
    )


# --- offsets ----------------------------------------------------------------------------------


def _astral_indices(text: str) -> list[int]:
    """Code point indices of the characters outside the BMP (two UTF-16 units each)."""
    return [i for i, char in enumerate(text) if ord(char) > 0xFFFF]


def to_ls_offset(text: str, index: int, unit: OffsetUnit = OFFSET_UNIT) -> int:
    """A code point index into ``text`` as a Label Studio offset in ``unit``."""
    if not 0 <= index <= len(text):
        raise ValueError(f"offset {index} lies outside the text ({len(text)} code points)")
    if unit == "code_point":
        return index
    return index + bisect.bisect_left(_astral_indices(text), index)


def from_ls_offset(text: str, offset: int, unit: OffsetUnit = OFFSET_UNIT) -> int:
    """A Label Studio offset in ``unit`` as a code point index; ``ValueError`` if it lies outside
    the text or splits a character into UTF-16 halves."""
    if unit == "code_point":
        if not 0 <= offset <= len(text):
            raise ValueError(f"offset {offset} lies outside the text ({len(text)} code points)")
        return offset
    index = units = 0
    while units < offset and index < len(text):
        units += 2 if ord(text[index]) > 0xFFFF else 1
        index += 1
    if offset < 0 or units != offset:
        raise ValueError(f"UTF-16 offset {offset} lies outside the text or inside a character")
    return index


# --- export -----------------------------------------------------------------------------------


def _region_id(span: Span) -> str:
    return f"s{span.start}_{span.end}"


def prediction_result(row: Row) -> list[dict[str, Any]]:
    """The row's relations as Label Studio results: one region per span, one relation per pair."""
    text = row.text
    roles: dict[Span, set[str]] = {}
    for relation in row.relations:
        roles.setdefault(relation.effect, set()).add(EFFECT)
        for cause in relation.causes:
            roles.setdefault(cause, set()).add(CAUSE)
    result: list[dict[str, Any]] = []
    for span in sorted(roles, key=lambda s: (s.start, s.end)):
        result.append(
            {
                "id": _region_id(span),
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "labels",
                "value": {
                    "start": to_ls_offset(text, span.start),
                    "end": to_ls_offset(text, span.end),
                    "text": span.text(text),
                    "labels": sorted(roles[span]),
                },
            }
        )
    seen: set[tuple[Span, Span]] = set()
    for relation in row.relations:
        for cause in relation.causes:
            if (cause, relation.effect) in seen:
                continue
            seen.add((cause, relation.effect))
            result.append(
                {
                    "type": "relation",
                    "from_id": _region_id(cause),
                    "to_id": _region_id(relation.effect),
                    "direction": "right",
                    "labels": [],
                }
            )
    return result


def task_for(row: Row, *, dataset: str, version: int, model_version: str) -> dict[str, Any]:
    """One Label Studio import task for a row, its relations as a prediction."""
    return {
        "data": {
            "text": row.text,
            "prompt": row.prompt,
            "completion": row.completion,
            "cattune_id": row.id,
            "cattune_dataset": dataset,
            "cattune_version": version,
        },
        "predictions": [{"model_version": model_version, "result": prediction_result(row)}],
    }


# --- import -----------------------------------------------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TaskData(_Loose):
    text: str
    prompt: str
    completion: str
    cattune_id: str
    cattune_dataset: str
    cattune_version: int


class ExportedAnnotation(_Loose):
    id: int
    completed_by: int | dict[str, Any] | None = None
    result: list[dict[str, Any]] = Field(default_factory=list)
    was_cancelled: bool = False
    created_at: str | None = None
    updated_at: str | None = None

    @property
    def reviewer(self) -> str:
        """Who submitted it: the e-mail when the export carries it, else the user id."""
        who = self.completed_by
        if isinstance(who, dict):
            return str(who.get("email") or who.get("id") or "unknown")
        return f"user {who}" if who is not None else "unknown"


class ExportedTask(_Loose):
    id: int
    project: int | None = None
    data: TaskData
    annotations: list[ExportedAnnotation] = Field(default_factory=list)

    def final_annotation(self) -> ExportedAnnotation | None:
        """The most recently updated annotation that was submitted, not skipped."""
        done = [a for a in self.annotations if not a.was_cancelled]
        if not done:
            return None
        return max(done, key=lambda a: (a.updated_at or a.created_at or "", a.id))


class ReviewError(ValueError):
    """A reviewed annotation that cannot be read as relations (the reason says why)."""


def _regions(text: str, result: list[dict[str, Any]]) -> dict[str, Span]:
    regions: dict[str, Span] = {}
    for item in result:
        if item.get("type") != "labels":
            continue
        value = item.get("value") or {}
        region = item.get("id")
        start, end = value.get("start"), value.get("end")
        if not isinstance(region, str) or not isinstance(start, int) or not isinstance(end, int):
            raise ReviewError(f"a labels region lacks an id or integer start/end: {item!r:.120}")
        try:
            span = Span(start=from_ls_offset(text, start), end=from_ls_offset(text, end))
        except ValueError as error:
            first = str(error).splitlines()[0]
            raise ReviewError(f"region {region!r} [{start}, {end}): {first}") from None
        recorded = value.get("text")
        if recorded is not None and recorded != span.text(text):
            raise ReviewError(
                f"region {region!r} [{start}, {end}) covers {span.text(text)!r} but Label Studio "
                f"recorded {recorded!r}; the task text or the offset unit changed"
            )
        regions[region] = span
    return regions


def _ordered(a: Span, b: Span, direction: str) -> tuple[Span, Span]:
    """(cause, effect) of a relation drawn from ``a`` to ``b``."""
    if direction == "left":
        return b, a
    if direction == "bi":
        return (a, b) if a.end <= b.end else (b, a)
    return a, b


def relations_from_result(
    text: str, result: list[dict[str, Any]]
) -> tuple[list[tuple[Span, Span]], list[str]]:
    """The (effect, cause) pairs of a reviewed result, and the relations that had to be left out.

    Raises :class:`ReviewError` when a region cannot be placed on the text at all.
    """
    regions = _regions(text, result)
    pairs: list[tuple[Span, Span]] = []
    problems: list[str] = []
    for item in result:
        if item.get("type") != "relation":
            continue
        source, target = item.get("from_id"), item.get("to_id")
        if source not in regions or target not in regions:
            problems.append(f"relation {source!r} -> {target!r} names a region that is not there")
            continue
        cause, effect = _ordered(regions[source], regions[target], item.get("direction", "right"))
        if cause.end > effect.start:
            problems.append(
                f"cause {cause.text(text)!r} [{cause.start}, {cause.end}) does not end before "
                f"effect {effect.text(text)!r} [{effect.start}, {effect.end}) starts; relation "
                "left out"
            )
            continue
        if (effect, cause) not in pairs:
            pairs.append((effect, cause))
    return pairs, problems


def group_pairs(pairs: list[tuple[Span, Span]]) -> list[Relation]:
    """(effect, cause) pairs as relations, one per effect span, in text order."""
    causes: dict[Span, set[Span]] = {}
    for effect, cause in pairs:
        causes.setdefault(effect, set()).add(cause)
    return [
        Relation(effect=effect, causes=sorted(causes[effect], key=lambda s: (s.start, s.end)))
        for effect in sorted(causes, key=lambda s: (s.start, s.end))
    ]
