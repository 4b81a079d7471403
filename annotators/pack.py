"""Prior packs: versioned, human-written knowledge for one annotation domain.

A pack is a YAML (or JSON) file with instructions for an LLM, two or more worked demonstrations,
and rules for the PriorAnnotator. Packs shipped with cattune live in ``annotators/packs/``; users
can point at their own file. The pack's content hash goes into every annotation it produced.

``rules.kind`` selects the rule family (and so the shape of ``rules``):

- ``math-word-problems``: the final answer is caused by the quantities, named entities and the
  question phrase of the problem (:class:`MathRules`).
- ``key-value-records``: "Name: value" items; a profile names which keys are causal
  (:class:`KeyValueRules`).
- ``multiple-choice``: the answer letter is caused by the question and the chosen option
  (:class:`MultipleChoiceRules`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cattune.annotators.base import stable_hash
from cattune.schemas import ConfigError, PhraseRelation, align


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as error:
        raise ValueError(f"not a valid regular expression: {error}") from error
    return value


class MathRules(_Strict):
    """Rules for math word problems (MAWPS, GSM8K, SVAMP...)."""

    kind: Literal["math-word-problems"]
    answer_patterns: list[str] = Field(
        min_length=1,
        description="regexes searched in the completion, in order; group 1 is the final answer",
    )
    question_words: list[str] = Field(
        min_length=1, description="words that open the question sentence (case-insensitive)"
    )
    question_length: int = Field(
        default=4,
        ge=1,
        description="most tokens in the question phrase; it ends after its first content word",
    )
    unit_words: int = Field(
        default=1, ge=0, description="content words after a number that belong to its quantity"
    )
    context_words: int = Field(
        default=3,
        ge=0,
        description="clause-opening tokens linked to each quantity (its agent and verb), and "
        "question-tail tokens linked to the answer; 0 turns both off",
    )
    include_entities: bool = Field(
        default=False, description="also link capitalised names (non-stop words) to the answer"
    )
    answer_marker: str | None = Field(
        default="Answer",
        description="a marker word before the answer; if present it is linked to the question",
    )

    @field_validator("answer_patterns")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        return [_check_regex(pattern) for pattern in value]


class KeyValueProfile(_Strict):
    """One record layout: which "Name: value" keys cause the answer."""

    name: str
    causal_keys: list[str] = Field(min_length=1)
    min_keys: int | None = Field(
        default=None,
        ge=1,
        description="causal keys that must be present for the profile to apply (default: all)",
    )
    cause: Literal["item", "value"] = Field(
        default="item", description='cause phrase: the whole "Name: value" item or only the value'
    )
    effect: Literal["completion", "marker+completion"] = Field(
        default="completion",
        description="effect phrase: the stripped completion, or the answer marker through it",
    )


class KeyValueRules(_Strict):
    """Rules for tabular records written as "Name: value" items (STG, STG_H, user tables)."""

    kind: Literal["key-value-records"]
    separator: str = Field(default=":", min_length=1)
    value_pattern: str = Field(
        default=r"-?\d+(?:\.\d+)?%?", description="regex of a value (after the separator)"
    )
    answer_marker: str = "Answer:"
    profiles: list[KeyValueProfile] = Field(min_length=1)

    @field_validator("value_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        return _check_regex(value)


class MultipleChoiceRules(_Strict):
    """Rules for multiple-choice questions (ARC, OpenBookQA...): options -> answer letter."""

    kind: Literal["multiple-choice"]
    letters: str = Field(default="ABCDE", min_length=2)
    option_pattern: str = Field(
        default=r"\(?(?P<letter>[{letters}])[).:]\s*(?P<text>[^\n(]*?)(?=\s*\(?[{letters}][).:]|\n|$)",
        description="regex of one option; {letters} is replaced by the letters",
    )
    answer_pattern: str = Field(
        default=r"\b(?P<letter>[{letters}])\b",
        description="regex finding the answer letter in the completion",
    )

    @field_validator("option_pattern", "answer_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        return _check_regex(value.replace("{letters}", "A"))

    def compiled(self, pattern: str) -> re.Pattern[str]:
        """``option_pattern`` or ``answer_pattern`` with ``{letters}`` filled in."""
        return re.compile(pattern.replace("{letters}", re.escape(self.letters)))


Rules = Annotated[MathRules | KeyValueRules | MultipleChoiceRules, Field(discriminator="kind")]
RULE_KINDS = tuple(
    get_args(model.model_fields["kind"].annotation)[0]
    for model in (MathRules, KeyValueRules, MultipleChoiceRules)
)


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
    rules: Rules = Field(description="PriorAnnotator rules; their shape depends on rules.kind")

    @property
    def content_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))


PACKS_DIR = Path(__file__).resolve().parent / "packs"
"""Prior packs shipped with cattune (YAML)."""


def shipped_packs() -> list[str]:
    """Names of the packs shipped with cattune."""
    return sorted(p.stem for p in PACKS_DIR.glob("*.yaml"))


def _resolve(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml", ".json") or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"prior pack file {candidate} does not exist")
        return candidate
    shipped = PACKS_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"unknown prior pack {str(name_or_path)!r}; use one of {', '.join(shipped_packs())} "
        "or the path of a pack file (.yaml)"
    )


def _field(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a field path (the rules' kind tag left out)."""
    parts = [p for k, p in enumerate(loc) if not (k == 1 and loc[0] == "rules" and p in RULE_KINDS)]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_pack(name_or_path: str | Path) -> PriorPack:
    """Load and validate a shipped pack by name, or a pack file by path.

    Every problem raises :class:`ConfigError` naming the file and the field at fault, including
    demonstrations whose phrases do not occur in (or do not align with) their own text.
    """
    path = _resolve(name_or_path)
    try:
        raw_text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read prior pack: {error}") from error
    try:
        data = json.loads(raw_text) if path.suffix == ".json" else yaml.safe_load(raw_text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        detail = str(error).replace("\n", " ")
        raise ConfigError(f"{path}: not valid YAML/JSON: {detail}") from error
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a prior pack must be a mapping of fields, got {type(data).__name__}"
        )
    try:
        pack = PriorPack.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
        raise ConfigError(f"{path}: field {_field(first['loc'])}: {first['msg']}{more}") from error
    for i, demo in enumerate(pack.demonstrations):
        alignment = align(demo.prompt + demo.completion, demo.relations)
        if alignment.problems:
            problem = alignment.problems[0]
            raise ConfigError(
                f"{path}: field demonstrations[{i}].relations: {problem.message} "
                "(demonstration phrases must be copied verbatim from prompt + completion)"
            )
    return pack
