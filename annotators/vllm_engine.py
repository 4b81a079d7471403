"""VLLMAnnotator: the LLM annotator's prompts run through vLLM's offline engine on a GPU box.

Same few-shot chats and the same ask -> check -> repair -> quarantine loop as
:class:`LLMAnnotator` (:class:`~cattune.annotators.llm_base.PromptedAnnotator`), but the chats of
all rows go through ``vllm.LLM.chat`` in batches (first round, then repairs), with structured
output constrained to the wire-format JSON schema. vLLM renamed its structured-output API in 0.12
(``GuidedDecodingParams`` / ``guided_decoding`` became ``StructuredOutputsParams`` /
``structured_outputs``); both are supported, the current one first.

vllm is imported lazily and cannot share an environment with cattune's CPU stack (STACK.md): where
it is missing, constructing this annotator raises :class:`ConfigError` pointing to ``vllm serve``
plus ``--annotator llm``. Tests inject a stand-in module through ``vllm_module`` to exercise the
code around the engine.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cattune.annotators.base import AnnotationResult
from cattune.annotators.llm_base import Decoding, PromptedAnnotator, RowFailed, run_sync
from cattune.annotators.llm_prompt import WIRE_SCHEMA, Message
from cattune.annotators.pack import PriorPack
from cattune.schemas import ConfigError, Example
from cattune.schemas.phrases import Boundary, Strategy

logger = logging.getLogger(__name__)

NO_VLLM = (
    "vLLM is not installed in this environment (it needs its own GPU environment, see "
    "STACK.md): run `vllm serve MODEL` there and use `--annotator llm --base-url "
    "http://HOST:8000/v1 --model MODEL`, or install vllm in a GPU environment (pip install vllm)"
)


def import_vllm() -> Any:
    """The vllm module, or ConfigError saying what to do instead."""
    try:
        return importlib.import_module("vllm")
    except ImportError as error:
        raise ConfigError(NO_VLLM) from error


def sampling_params(vllm: Any, decoding: Decoding, *, structured: bool) -> Any:
    """``vllm.SamplingParams`` for the decoding settings, constrained to the wire format.

    Uses ``StructuredOutputsParams`` (vLLM >= 0.12) or else ``GuidedDecodingParams`` (older).
    """
    options = decoding.as_dict()
    if not structured:
        return vllm.SamplingParams(**options)
    module = getattr(vllm, "sampling_params", None)
    current = getattr(module, "StructuredOutputsParams", None)
    if current is not None:
        return vllm.SamplingParams(**options, structured_outputs=current(json=WIRE_SCHEMA))
    legacy = getattr(module, "GuidedDecodingParams", None)
    if legacy is not None:
        return vllm.SamplingParams(**options, guided_decoding=legacy(json=WIRE_SCHEMA))
    raise ConfigError(
        "this vLLM has neither StructuredOutputsParams nor GuidedDecodingParams; upgrade vllm "
        "or pass structured_output=False"
    )


def reply_texts(outputs: Sequence[Any]) -> list[str]:
    """The first completion's text of each ``RequestOutput`` (empty when there is none)."""
    texts = []
    for output in outputs:
        completions = getattr(output, "outputs", None) or []
        texts.append(str(getattr(completions[0], "text", "")) if completions else "")
    return texts


class _EngineBatches:
    """Gathers the chats of rows being labelled at once into one engine call.

    Each row's :meth:`ask` waits until every row still running has asked too (or finished), then
    all waiting chats go to the engine together: the first round is one batch, the repair round
    another. Engine errors fail the waiting rows as retryable; configuration errors stop the run.
    """

    def __init__(self, chat: Callable[[list[list[Message]]], list[str]], rows: int) -> None:
        self._chat = chat
        self._live = rows
        self._waiting: list[tuple[list[Message], asyncio.Future[str]]] = []

    async def ask(self, messages: list[Message]) -> tuple[str, int]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append((messages, future))
        self._flush_when_all_wait()
        return await future, 1

    def finished(self) -> None:
        self._live -= 1
        self._flush_when_all_wait()

    def _flush_when_all_wait(self) -> None:
        if not self._waiting or len(self._waiting) < self._live:
            return
        batch, self._waiting = self._waiting, []
        try:
            replies = self._chat([messages for messages, _ in batch])
        except ConfigError as error:
            for _, future in batch:
                future.set_exception(error)
        except Exception as error:  # engine failures are about the run, not the rows
            logger.error("vLLM engine failed: %s", error)
            reason = f"vLLM engine error: {type(error).__name__}: {error}"
            for _, future in batch:
                future.set_exception(RowFailed(reason, 1, retryable=True))
        else:
            for (_, future), reply in zip(batch, replies, strict=True):
                future.set_result(reply)


class VLLMAnnotator(PromptedAnnotator):
    """Annotates batches with a local vLLM engine; see the module doc."""

    name = "vllm"
    version = "1.0.0"

    def __init__(
        self,
        pack: PriorPack | str | Path | None,
        *,
        model: str,
        temperature: float = 0.0,
        max_tokens: int | None = 2048,
        top_p: float | None = None,
        seed: int | None = None,
        structured_output: bool = True,
        max_dropped_share: float = 0.5,
        strategy: Strategy = "all",
        boundary: Boundary = "word",
        engine_options: dict[str, Any] | None = None,
        progress: bool = True,
        vllm_module: Any | None = None,
    ) -> None:
        if not model:
            raise ConfigError("the vLLM annotator needs a model name or path: pass --model")
        self._vllm = vllm_module if vllm_module is not None else import_vllm()
        super().__init__(
            pack,
            model=model,
            decoding=Decoding(temperature, max_tokens, top_p, seed),
            strategy=strategy,
            boundary=boundary,
            max_dropped_share=max_dropped_share,
        )
        self.structured_output = structured_output
        self.engine_options = dict(engine_options or {})
        self.progress = progress
        self._engine: Any | None = None

    def __repr__(self) -> str:
        return f"VLLMAnnotator(model={self.model!r}, pack={self.pack.name!r})"

    @property
    def engine(self) -> Any:
        """The ``vllm.LLM``, created on first use (it loads the model onto the GPU)."""
        if self._engine is None:
            self._engine = self._vllm.LLM(model=self.model, **self.engine_options)
        return self._engine

    def _chat(self, conversations: list[list[Message]]) -> list[str]:
        params = sampling_params(self._vllm, self.decoding, structured=self.structured_output)
        outputs = self.engine.chat(conversations, sampling_params=params, use_tqdm=self.progress)
        texts = reply_texts(outputs)
        if len(texts) != len(conversations):
            raise RuntimeError(f"vLLM returned {len(texts)} outputs for {len(conversations)} chats")
        return texts

    def annotate(self, examples: Sequence[Example]) -> list[AnnotationResult]:
        """One chat per distinct text; rows repeating a text share its result (with their meta)."""
        rows = list(examples)
        firsts: dict[str, Example] = {}
        for row in rows:
            firsts.setdefault(row.text, row)
        labelled = run_sync(self._label_all(list(firsts.values())))
        by_text = dict(zip(firsts, labelled, strict=True))
        return [
            by_text[row.text]
            if by_text[row.text].meta == row.meta
            else by_text[row.text].model_copy(update={"meta": row.meta})
            for row in rows
        ]

    async def _label_all(self, examples: list[Example]) -> list[AnnotationResult]:
        batches = _EngineBatches(self._chat, len(examples))

        async def one(example: Example) -> AnnotationResult:
            try:
                result, _ = await self._label(example, batches.ask)
                return result
            finally:
                batches.finished()

        return list(await asyncio.gather(*(one(example) for example in examples)))
