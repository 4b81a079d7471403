"""What the LLM annotators share: settings, provenance, and the ask -> check -> repair ->
quarantine loop for one row.

:class:`PromptedAnnotator` holds the pack, model, decoding and alignment settings and labels one
row through :meth:`PromptedAnnotator._label`, given an ``ask(messages)`` coroutine: the HTTP
annotator (:mod:`cattune.annotators.llm`) asks an endpoint, the vLLM annotator
(:mod:`cattune.annotators.vllm_engine`) gathers the asks of all rows into engine batches. Only how
a chat is answered differs between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from cattune.annotators.base import AnnotationResult
from cattune.annotators.llm_parse import (
    CheckedReply,
    annotated,
    check_reply,
    final_result,
    quarantined,
)
from cattune.annotators.llm_prompt import (
    Message,
    build_messages,
    build_repair_messages,
    prompt_hash,
    prompted_config_hash,
)
from cattune.annotators.pack import PriorPack
from cattune.schemas import Annotation, ConfigError, Example
from cattune.schemas.phrases import Boundary, Strategy

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from plain code, a thread, or code already inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def resolve_pack(pack: PriorPack | str | Path | None) -> PriorPack:
    """A pack object, a shipped pack name or a pack file path."""
    if pack is None:
        raise ConfigError("the LLM annotators need a prior pack for their prompt: pass --pack")
    if isinstance(pack, PriorPack):
        return pack
    from cattune.annotators.pack import load_pack

    return load_pack(pack)


@dataclass(frozen=True)
class Decoding:
    """Sampling settings; part of every cache key and of the config hash."""

    temperature: float = 0.0
    max_tokens: int | None = 2048
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be 0 or more, got {self.temperature}")

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class RowFailed(Exception):
    """A row's request failed after its retries; ``retryable`` says whether a later run may pass."""

    def __init__(self, reason: str, attempts: int, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts
        self.retryable = retryable


Ask = Callable[[list[Message]], Awaitable[tuple[str, int]]]
"""Answers one chat: (reply text, requests sent), or raises :class:`RowFailed`."""


class PromptedAnnotator:
    """Base of the annotators that prompt a model with a pack's demonstrations."""

    name = "prompted"
    version = "1.0.0"

    def __init__(
        self,
        pack: PriorPack | str | Path | None,
        *,
        model: str,
        decoding: Decoding,
        strategy: Strategy = "all",
        boundary: Boundary = "word",
        max_dropped_share: float = 0.5,
    ) -> None:
        if not 0 <= max_dropped_share <= 1:
            raise ConfigError(f"max_dropped_share must be between 0 and 1, got {max_dropped_share}")
        self.pack = resolve_pack(pack)
        self.model = model
        self.decoding = decoding
        self.strategy = strategy
        self.boundary = boundary
        self.max_dropped_share = max_dropped_share
        self._pack_hash = self.pack.content_hash
        self._prompt_hash = prompt_hash(self.pack)

    def config_hash(self) -> str:
        return prompted_config_hash(self)

    def _check(self, reply: str, text: str) -> CheckedReply:
        return check_reply(reply, text, self.strategy, self.boundary)

    def _scrub(self, text: str) -> str:
        """Hook: remove secrets from text that goes into results (the HTTP annotator's key)."""
        return text

    async def _label(self, example: Example, ask: Ask) -> tuple[AnnotationResult, str | None]:
        """Ask, check, repair if needed, and decide; returns the row and its final reply.

        The final reply is ``None`` when the outcome is not final (a retryable failure, or a
        usable first reply whose repair request failed): such outcomes must not be cached.
        """
        text = example.text
        messages = build_messages(self.pack, text)
        attempts = 0
        try:
            reply, used = await ask(messages)
            attempts += used
            checked = self._check(reply, text)
            if checked.needs_repair(self.max_dropped_share):
                repair = build_repair_messages(messages, reply, checked.problems)
                try:
                    second, used = await ask(repair)
                except RowFailed as failure:
                    if not checked.usable:
                        raise
                    # The valid part of the first reply stands; a later run may ask again.
                    attempts += failure.attempts
                    return annotated(example, checked, self._annotation(attempts)), None
                attempts += used
                repaired = self._check(second, text)
                if repaired.better_than(checked) or not checked.usable:
                    reply, checked = second, repaired
        except RowFailed as failure:
            row = quarantined(
                example,
                self._annotation(attempts + failure.attempts),
                self._scrub(failure.reason),
                raw_output=None,
                retryable=failure.retryable,
            )
            return row, None
        reply = self._scrub(reply)
        return final_result(example, checked, reply, self._annotation(attempts)), reply

    def _annotation(self, attempts: int, created_at: datetime | None = None) -> Annotation:
        extra = {} if created_at is None else {"created_at": created_at}
        return Annotation(
            annotator=self.name,
            annotator_version=self.version,
            model=self.model,
            pack=self.pack.name,
            pack_hash=self._pack_hash,
            prompt_hash=self._prompt_hash,
            config_hash=self.config_hash(),
            attempts=attempts,
            **extra,
        )
