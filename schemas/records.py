"""The data contract: one annotated example is one row (see DESIGN.md, "The contract").

Offsets are Python string indices (code points) into ``text = prompt + completion``; ``end`` is
exclusive. These pydantic models are the single source of truth; the Arrow schemas in
:mod:`cattune.schemas.arrow` are derived from them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = "1.0"

Int32 = Annotated[int, Field(ge=0, le=2**31 - 1, json_schema_extra={"arrow": "int32"})]


def example_id(prompt: str, completion: str) -> str:
    """Stable content id: identical (prompt, completion) always gives the identical id."""
    payload = json.dumps([prompt, completion], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:32]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Span(_Record):
    """A half-open range ``[start, end)`` of code points in ``prompt + completion``."""

    start: Int32
    end: Int32

    @model_validator(mode="after")
    def _ordered(self) -> Span:
        if self.end <= self.start:
            raise ValueError(f"span end ({self.end}) must be greater than start ({self.start})")
        return self

    def text(self, text: str) -> str:
        return text[self.start : self.end]


class Relation(_Record):
    """An effect span and the spans it causally depends on; every cause ends before the effect."""

    effect: Span
    causes: list[Span]

    @model_validator(mode="after")
    def _causes_precede_effect(self) -> Relation:
        if not self.causes:
            raise ValueError("a relation needs at least one cause")
        for cause in self.causes:
            if cause.end > self.effect.start:
                raise ValueError(
                    f"cause [{cause.start}, {cause.end}) does not end before "
                    f"effect [{self.effect.start}, {self.effect.end}) starts"
                )
        return self


class Meta(_Record):
    """Where a row came from and what it is labelled with."""

    source: str = ""
    split: str | None = None
    label: str | None = None
    ood: bool = False
    extra: dict[str, str] = Field(
        default_factory=dict, json_schema_extra={"arrow": "key_value_list"}
    )

    # Stored as a list of {key, value} items rather than an Arrow map: Hugging Face `datasets`
    # cannot read map columns, and releases must load there.
    @field_serializer("extra")
    def _extra_as_items(self, extra: dict[str, str]) -> list[dict[str, str]]:
        return [{"key": k, "value": v} for k, v in sorted(extra.items())]

    @field_validator("extra", mode="before")
    @classmethod
    def _items_to_dict(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {item["key"]: item["value"] for item in value}
        return value


class Example(_Record):
    """A normalised source row: what the model conditions on and what it learns to produce."""

    id: str
    prompt: str
    completion: str
    meta: Meta = Field(default_factory=Meta)

    @property
    def text(self) -> str:
        return self.prompt + self.completion

    @classmethod
    def create(cls, prompt: str, completion: str, meta: Meta | None = None) -> Example:
        return cls(
            id=example_id(prompt, completion),
            prompt=prompt,
            completion=completion,
            meta=meta or Meta(),
        )

    @model_validator(mode="after")
    def _id_matches_text(self) -> Example:
        expected = example_id(self.prompt, self.completion)
        if self.id != expected:
            raise ValueError(f"id {self.id!r} is not the content hash of the text ({expected!r})")
        return self


class Annotation(_Record):
    """Provenance: who produced a row's relations, with what, and when."""

    annotator: str
    annotator_version: str
    model: str | None = None
    pack: str | None = None
    pack_hash: str | None = None
    prompt_hash: str | None = None
    config_hash: str | None = None
    attempts: Int32 = 1
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class AnnotatedExample(Example):
    """An example with span-level causal relations.

    ``problems`` lists what could not be aligned (e.g. a phrase absent from the text) for sources
    whose labels are kept as given; annotators that can retry quarantine such rows instead.
    """

    relations: list[Relation]
    annotation: Annotation
    problems: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _spans_inside_text(self) -> AnnotatedExample:
        length = len(self.prompt) + len(self.completion)
        for relation in self.relations:
            for span in (relation.effect, *relation.causes):
                if span.end > length:
                    raise ValueError(
                        f"span [{span.start}, {span.end}) lies outside the text "
                        f"({length} code points)"
                    )
        return self


class QuarantinedExample(Example):
    """A row that could not be annotated, kept with a reason a person can act on."""

    relations: list[Relation] = Field(default_factory=list)
    annotation: Annotation
    error: str
    raw_output: str | None = None
    retryable: bool = False
