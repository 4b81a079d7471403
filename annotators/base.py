"""What every annotator is: a batch function from examples to annotated or quarantined rows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from cattune.schemas import AnnotatedExample, Example, QuarantinedExample

AnnotationResult = AnnotatedExample | QuarantinedExample

# Source rows may carry phrase relations of their own (the CAT authors' `important` field, the
# STG generator's gold relations) as wire-format JSON under this meta.extra key.
GIVEN_RELATIONS_KEY = "relations"
# What of those given relations was malformed and left out (a JSON list of messages); the row is
# kept with the rest, and the messages become problems of the annotated row.
GIVEN_PROBLEMS_KEY = "relations_problems"


def given_problems(example: Example) -> list[str]:
    """The messages a source left under :data:`GIVEN_PROBLEMS_KEY` (none when absent)."""
    raw = example.meta.extra.get(GIVEN_PROBLEMS_KEY)
    if raw is None:
        return []
    try:
        problems = json.loads(raw)
    except json.JSONDecodeError:
        return [raw]
    if isinstance(problems, list):
        return [str(p) for p in problems]
    return [str(problems)]


@runtime_checkable
class Annotator(Protocol):
    """Labels examples with causal relations.

    ``annotate`` returns exactly one result per input example, in the same order, each either an
    :class:`AnnotatedExample` or a :class:`QuarantinedExample` carrying a reason; it never drops a
    row. ``config_hash`` identifies everything that changes the output (annotator, version, model,
    pack hash, decoding parameters): rows annotated under the same hash are not annotated again.
    """

    name: str
    version: str

    def config_hash(self) -> str: ...

    def annotate(self, examples: Sequence[Example]) -> list[AnnotationResult]: ...


def reason_kind(error: str) -> str:
    """What a quarantine reason says before its details, for counting reasons in summaries.

    ``"HTTP 503 from the endpoint: Loading model; gave up after 3 attempts"`` and ``"no reply
    within the 60 s timeout; gave up after 5 attempts"`` count as ``"HTTP 503 from the
    endpoint"`` and ``"no reply within the 60 s timeout"``.
    """
    cut = min((i for i in (error.find(": "), error.find("; ")) if i >= 0), default=len(error))
    return error[:cut].strip()[:100]


def stable_hash(payload: Any) -> str:
    """A short sha256 of a JSON-serialisable payload (keys sorted)."""
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]
