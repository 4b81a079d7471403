"""Prior packs: versioned, human-written knowledge for one annotation domain.

A pack is a YAML (or JSON) file with instructions for an LLM, two or more worked demonstrations,
and rules for the PriorAnnotator. Packs shipped with cattune live in ``annotators/packs/``; users
can point at their own file. The pack's content hash goes into every annotation it produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cattune.annotators.base import stable_hash
from cattune.schemas import PhraseRelation


class Demonstration(BaseModel):
    """A worked example: the text and the relations a careful human would label."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    completion: str
    relations: list[PhraseRelation] = Field(min_length=1)


class PriorPack(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: str
    description: str
    instructions: str = Field(min_length=1, description="task instructions for an LLM annotator")
    demonstrations: list[Demonstration] = Field(min_length=2)
    rules: dict[str, Any] = Field(description="PriorAnnotator rules; their shape depends on kind")

    @property
    def content_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))


PACKS_DIR = Path(__file__).resolve().parent / "packs"
