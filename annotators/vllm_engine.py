"""VLLMAnnotator: the LLM annotator's prompts run through vLLM's offline engine on a GPU box.

Same few-shot chats, reply checking and single repair round as :class:`LLMAnnotator`, but batched
through ``vllm.LLM.chat`` with structured output constrained to the wire-format JSON schema. vLLM
renamed its structured-output API in 0.12 (``GuidedDecodingParams`` / ``guided_decoding`` became
``StructuredOutputsParams`` / ``structured_outputs``); both are supported, the current one first.

vllm is imported lazily and cannot share an environment with cattune's CPU stack (STACK.md): where
it is missing, constructing this annotator raises :class:`ConfigError` pointing to ``vllm serve``
plus ``--annotator llm``. Tests inject a stand-in module through ``vllm_module`` to exercise the
code around the engine.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cattune.annotators.base import AnnotationResult
from cattune.annotators.llm import Decoding, resolve_pack
from cattune.annotators.llm_parse import CheckedReply, check_reply, final_result, quarantined
from cattune.annotators.llm_prompt import (
    WIRE_SCHEMA,
    Message,
    build_messages,
    build_repair_messages,
    prompt_hash,
    prompted_config_hash,
)
from cattune.annotators.pack import PriorPack
from cattune.schemas import Annotation, ConfigError, Example
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


class VLLMAnnotator:
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
        self.pack = resolve_pack(pack)
        self.model = model
        self.decoding = Decoding(temperature, max_tokens, top_p, seed)
        self.structured_output = structured_output
        self.max_dropped_share = max_dropped_share
        self.strategy = strategy
        self.boundary = boundary
        self.engine_options = dict(engine_options or {})
        self.progress = progress
        self._engine: Any | None = None
        self._pack_hash = self.pack.content_hash
        self._prompt_hash = prompt_hash(self.pack)

    def __repr__(self) -> str:
        return f"VLLMAnnotator(model={self.model!r}, pack={self.pack.name!r})"

    def config_hash(self) -> str:
        return prompted_config_hash(self)

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
        rows = list(examples)
        texts = list(dict.fromkeys(example.text for example in rows))
        chats = [build_messages(self.pack, text) for text in texts]
        try:
            replies = self._chat(chats)
            checked = [
                check_reply(r, t, self.strategy, self.boundary)
                for r, t in zip(replies, texts, strict=True)
            ]
            attempts = [1] * len(texts)
            redo = [i for i, c in enumerate(checked) if c.needs_repair(self.max_dropped_share)]
            if redo:
                repairs = [
                    build_repair_messages(chats[i], replies[i], checked[i].problems) for i in redo
                ]
                for i, reply in zip(redo, self._chat(repairs), strict=True):
                    attempts[i] = 2
                    repaired = check_reply(reply, texts[i], self.strategy, self.boundary)
                    if repaired.better_than(checked[i]) or not checked[i].usable:
                        replies[i], checked[i] = reply, repaired
        except ConfigError:
            raise
        except Exception as error:  # engine failures are about the run, not the rows
            logger.error("vLLM engine failed: %s", error)
            reason = f"vLLM engine error: {type(error).__name__}: {error}"
            return [
                quarantined(row, self._annotation(1), reason, raw_output=None, retryable=True)
                for row in rows
            ]
        by_text = {
            text: (check, reply, tries)
            for text, check, reply, tries in zip(texts, checked, replies, attempts, strict=True)
        }
        return [self._result(row, *by_text[row.text]) for row in rows]

    def _result(
        self, row: Example, checked: CheckedReply, reply: str, attempts: int
    ) -> AnnotationResult:
        return final_result(row, checked, reply, self._annotation(attempts))

    def _annotation(self, attempts: int) -> Annotation:
        return Annotation(
            annotator=self.name,
            annotator_version=self.version,
            model=self.model,
            pack=self.pack.name,
            pack_hash=self._pack_hash,
            prompt_hash=self._prompt_hash,
            config_hash=self.config_hash(),
            attempts=attempts,
        )
