"""Typed options of each annotator kind: one pydantic spec per kind.

The specs are the single source of truth for which options a kind takes, their defaults, their
bounds and the messages a bad value gets. The registry builds annotators from them, the CLI
derives its annotator flags from them (fields marked ``cli``), the annotate flow validates its
``options`` parameter with them, and docs/annotators.md carries their tables
(:func:`markdown_table`, checked by a test).

API keys are never an option: a spec is stored by Prefect as a flow parameter. The LLM spec
takes ``api_key_env`` (an environment variable) or ``api_key_secret`` (a Prefect Secret block,
read by the annotate flow inside the run).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from cattune.schemas import ConfigError
from cattune.schemas.phrases import Boundary, Strategy

CLI = {"cli": True}
"""``json_schema_extra`` of the fields that are ``cattune annotate`` flags (``--field-name``)."""

StructuredOutput = Literal["auto", "json_schema", "json_object", "off"]


def _cache_value(value: Any) -> Any:
    if value is None or value is False or isinstance(value, str | Path):
        return value
    raise ValueError("should be a file path, or false for no cache")


class AnnotatorOptions(BaseModel):
    """Base of the per-kind specs: unknown options are refused, specs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[str] = ""


class PriorOptions(AnnotatorOptions):
    """Options of ``prior``: rules and human-written priors, offline."""

    kind: ClassVar[str] = "prior"

    batch_size: int = Field(256, ge=1, description="prompts tokenised per spaCy batch")


class GivenOptions(AnnotatorOptions):
    """Options of ``given``: aligns the relations a source row carries."""

    kind: ClassVar[str] = "given"

    strategy: Strategy = Field(
        "all",
        description="which occurrences of a phrase to link: every one (all, the reference) or "
        "the nearest cause before each effect (nearest)",
    )
    boundary: Boundary = Field(
        "word",
        description="phrase alignment: a phrase must not split a word or a number (word), or "
        "may match anywhere (none, as the reference code)",
        json_schema_extra=CLI,
    )


class GoldOptions(GivenOptions):
    """Options of ``gold``: like ``given``, but any alignment problem quarantines the row."""

    kind: ClassVar[str] = "gold"


class PromptedOptions(GivenOptions):
    """Options shared by the annotators that prompt a model (``llm``, ``vllm``)."""

    model: str = Field(
        min_length=1,
        description="model name (llm: as the server knows it; vllm: HF id or path)",
        json_schema_extra=CLI,
    )
    temperature: float = Field(0.0, ge=0, description="sampling temperature", json_schema_extra=CLI)
    max_tokens: int | None = Field(
        2048, ge=1, description="reply length limit in tokens", json_schema_extra=CLI
    )
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling mass")
    seed: int | None = Field(None, description="sampling seed, where the server honours one")
    max_dropped_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="ask for a repair when more than this share of a reply's effect-cause pairs "
        "cannot be placed in the text (the valid part is kept either way)",
        json_schema_extra=CLI,
    )


class LLMOptions(PromptedOptions):
    """Options of ``llm``: any OpenAI-compatible endpoint."""

    kind: ClassVar[str] = "llm"

    base_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint, e.g. http://host:8000/v1 (none: api.openai.com)",
        json_schema_extra=CLI,
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        min_length=1,
        description="environment variable holding the API key",
        json_schema_extra=CLI,
    )
    api_key_secret: str | None = Field(
        None,
        min_length=1,
        description="Prefect Secret block holding the API key (annotate flow only)",
    )
    concurrency: int = Field(
        16, ge=1, description="requests in flight (the ceiling)", json_schema_extra=CLI
    )
    timeout: float = Field(60.0, gt=0, description="seconds per request", json_schema_extra=CLI)
    max_retries: int = Field(
        4, ge=0, description="retries of a failed request", json_schema_extra=CLI
    )
    structured_output: StructuredOutput = Field(
        "auto",
        description="how to ask for the JSON reply: response_format json_schema, the server's "
        "JSON mode with the schema (llama.cpp), or the prompt only; auto tries them in that "
        "order, stepping down when the server rejects response_format",
        json_schema_extra=CLI,
    )
    cache: Annotated[Path | Literal[False] | None, BeforeValidator(_cache_value)] = Field(
        None,
        description="reply cache file (none: $CATTUNE_HOME/cache/llm.sqlite; false: no cache)",
        json_schema_extra=CLI,
    )
    refresh: bool = Field(
        False,
        description="ask the endpoint again for every row, replacing cached replies",
        json_schema_extra=CLI,
    )
    progress: bool | None = Field(
        None, description="progress display (none: a bar on a terminal, else a line every 5 s)"
    )


class VLLMOptions(PromptedOptions):
    """Options of ``vllm``: the vLLM offline engine, for GPU batch runs."""

    kind: ClassVar[str] = "vllm"

    structured_output: bool = Field(
        True, description="constrain decoding to the reply's JSON schema"
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of vllm.LLM (e.g. tensor_parallel_size)",
    )
    progress: bool = Field(True, description="vLLM's progress bar")


SPECS: dict[str, type[AnnotatorOptions]] = {
    spec.kind: spec for spec in (PriorOptions, GivenOptions, GoldOptions, LLMOptions, VLLMOptions)
}
KINDS = tuple(SPECS)


def spec_class(kind: str) -> type[AnnotatorOptions]:
    """The spec of ``kind``; an unknown kind is a :class:`ConfigError` listing the kinds."""
    try:
        return SPECS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown annotator kind {kind!r}; use one of {', '.join(KINDS)}"
        ) from None


def is_cli(field: FieldInfo) -> bool:
    """Whether a spec field is a ``cattune annotate`` flag."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("cli"))


def label(kind: str, name: str) -> str:
    """How messages name an option: its flag where it is one for ``kind``, else its name."""
    field = spec_class(kind).model_fields.get(name)
    return "--" + name.replace("_", "-") if field is not None and is_cli(field) else name


def _other_label(name: str) -> str:
    """A stray option's name: its flag where any kind has that flag."""
    for spec in SPECS.values():
        field = spec.model_fields.get(name)
        if field is not None and is_cli(field):
            return "--" + name.replace("_", "-")
    return name


def options_for(
    kind: str, options: AnnotatorOptions | Mapping[str, Any] | None = None
) -> AnnotatorOptions:
    """Validate ``options`` for ``kind``: the kind's spec, or one-line :class:`ConfigError`.

    Accepts the spec itself or a mapping (as stored in a flow's parameters); the messages are the
    same whether the options came from CLI flags, a flow parameter or Python.
    """
    spec = spec_class(kind)
    if isinstance(options, spec):
        return options
    if isinstance(options, AnnotatorOptions):
        options = options.model_dump(exclude_unset=True)
    data = dict(options or {})
    stray = [name for name in data if name not in spec.model_fields]
    if stray:
        takes = ", ".join(label(kind, name) for name in spec.model_fields) or "no options"
        raise ConfigError(
            f"{', '.join(_other_label(name) for name in stray)} do(es) not apply to "
            f"--annotator {kind} (it takes: {takes})"
        )
    try:
        return spec.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_message(kind, error)) from None


def _message(kind: str, error: ValidationError) -> str:
    errors = error.errors(include_url=False)
    first = errors[0]
    name = str(first["loc"][0]) if first["loc"] else "options"
    if first["type"] == "missing":
        return f"--annotator {kind} needs {label(kind, name)}"
    fields = {str(e["loc"][0]) for e in errors if e["loc"]}
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    return (
        f"{label(kind, name)} of --annotator {kind}: {first['msg']}, got {first['input']!r}{more}"
    )


def constructor_kwargs(
    spec: AnnotatorOptions, *, exclude: set[str] | None = None
) -> dict[str, Any]:
    """Every field of the spec (defaults included) as the annotator's keyword arguments."""
    return {name: getattr(spec, name) for name in spec.model_fields if name not in (exclude or ())}


def cli_fields() -> dict[str, FieldInfo]:
    """The spec fields that are ``cattune annotate`` flags, in the specs' order, each once.

    A field that several kinds share (``model``, ``boundary``) is described by the first spec
    that has it as a flag.
    """
    fields: dict[str, FieldInfo] = {}
    for spec in SPECS.values():
        for name, field in spec.model_fields.items():
            if is_cli(field) and name not in fields:
                fields[name] = field
    return fields


def kinds_with_flag(name: str) -> list[str]:
    """The kinds for which ``--name`` is a flag."""
    return [
        kind
        for kind, spec in SPECS.items()
        if name in spec.model_fields and is_cli(spec.model_fields[name])
    ]


def type_name(annotation: Any) -> str:
    """A short readable name of a field's type, for the docs tables."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(
            str(a).lower() if isinstance(a, bool) else a for a in typing.get_args(annotation)
        )
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is dict:
        return "dict"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    marks = []
    for item in field.metadata:
        for attr, sign in (
            ("ge", ">="),
            ("gt", ">"),
            ("le", "<="),
            ("lt", "<"),
            ("min_length", "length >="),
        ):
            value = getattr(item, attr, None)
            if value is not None:
                marks.append(f"{sign} {value}")
    return ", ".join(marks)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`" if not isinstance(value, dict) else "`{}`"


def markdown_table(kind: str) -> str:
    """The option table of ``kind`` as docs/annotators.md shows it."""
    lines = ["| option | flag | type | default | bounds | meaning |", "|---|---|---|---|---|---|"]
    for name, field in spec_class(kind).model_fields.items():
        flag = f"`{label(kind, name)}`" if is_cli(field) else ""
        lines.append(
            f"| `{name}` | {flag} | {type_name(field.annotation)} | {_default(field)} "
            f"| {_bounds(field)} | {field.description or ''} |"
        )
    return "\n".join(lines) + "\n"
