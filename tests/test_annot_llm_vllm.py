"""VLLMAnnotator: our code around vLLM's offline engine (vllm itself cannot be installed here).

A stand-in module with the same surface (``LLM``, ``SamplingParams``,
``sampling_params.StructuredOutputsParams`` or the pre-0.12 ``GuidedDecodingParams``) is injected,
so prompts, sampling parameters, batching, repair and result building are what is tested.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from test_annot_llm import GOOD, PACK, example

from cattune.annotators.base import Annotator
from cattune.annotators.llm_base import Decoding
from cattune.annotators.llm_prompt import WIRE_SCHEMA, build_messages, text_of_data_message
from cattune.annotators.vllm_engine import VLLMAnnotator, reply_texts, sampling_params
from cattune.schemas import AnnotatedExample, ConfigError, QuarantinedExample


@dataclass
class Params:
    kwargs: dict[str, Any]


@dataclass
class Constraint:
    json: dict[str, Any]
    kind: str


def fake_vllm(reply: Any, *, legacy: bool = False, log: list[Any] | None = None) -> Any:
    """A module-like object shaped like vllm; ``reply(chat) -> str`` plays the model."""
    calls = log if log is not None else []

    @dataclass
    class LLM:
        model: str
        options: dict[str, Any] = field(default_factory=dict)

        def __init__(self, model: str, **options: Any) -> None:
            self.model, self.options = model, options
            calls.append(("init", model, options))

        def chat(self, conversations: Any, sampling_params: Any, use_tqdm: bool) -> list[Any]:
            calls.append(("chat", conversations, sampling_params))
            return [
                SimpleNamespace(outputs=[SimpleNamespace(text=reply(chat))])
                for chat in conversations
            ]

    kind = "GuidedDecodingParams" if legacy else "StructuredOutputsParams"
    return SimpleNamespace(
        LLM=LLM,
        SamplingParams=lambda **kwargs: Params(kwargs),
        sampling_params=SimpleNamespace(**{kind: lambda json: Constraint(json, kind)}),
    )


def text_of(chat: list[dict[str, str]]) -> str:
    for message in reversed(chat):
        if message["role"] == "user" and (text := text_of_data_message(message["content"])):
            return text
    raise AssertionError("no DATA block")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_without_vllm_the_error_says_what_to_do_instead() -> None:
    with pytest.raises(ConfigError, match=r"vllm serve MODEL.*--annotator llm --base-url"):
        VLLMAnnotator(PACK, model="some/model")


@pytest.mark.parametrize("legacy", [False, True], ids=["structured_outputs", "guided_decoding"])
def test_sampling_params_for_current_and_legacy_vllm(legacy: bool) -> None:
    vllm = fake_vllm(lambda chat: GOOD, legacy=legacy)
    params = sampling_params(vllm, Decoding(seed=3), structured=True)
    key = "guided_decoding" if legacy else "structured_outputs"
    assert params.kwargs["temperature"] == 0.0 and params.kwargs["seed"] == 3
    assert params.kwargs[key].json == WIRE_SCHEMA
    plain = sampling_params(vllm, Decoding(), structured=False)
    assert set(plain.kwargs) == {"temperature", "max_tokens"}


def test_vllm_without_any_structured_output_api_is_a_config_error() -> None:
    vllm = SimpleNamespace(SamplingParams=lambda **kw: Params(kw), sampling_params=None)
    with pytest.raises(ConfigError, match="structured_output=False"):
        sampling_params(vllm, Decoding(), structured=True)


def test_reply_texts_tolerates_empty_outputs() -> None:
    outputs = [SimpleNamespace(outputs=[SimpleNamespace(text="a")]), SimpleNamespace(outputs=[])]
    assert reply_texts(outputs) == ["a", ""]


def test_batch_with_repair_and_quarantine() -> None:
    def reply(chat: list[dict[str, str]]) -> str:
        repairing = chat[-1]["content"].startswith("Your reply cannot be used")
        text = text_of(chat)
        if "Row 0." in text or "Row 3." in text:
            return GOOD
        if "Row 1." in text:
            return GOOD if repairing else "no JSON here"
        return json.dumps({"High Risk": ["Gene: 1"]})

    log: list[Any] = []
    vllm = fake_vllm(reply, log=log)
    annotator = VLLMAnnotator(
        PACK, model="tiny/model", engine_options={"tensor_parallel_size": 2}, vllm_module=vllm
    )
    assert isinstance(annotator, Annotator)
    assert log == []  # the engine loads on first use, not at construction
    rows = [example(0), example(1), example(2), example(0)]
    results = annotator.annotate(rows)
    assert [r.id for r in results] == [r.id for r in rows]
    assert [type(r) for r in results] == [
        AnnotatedExample,
        AnnotatedExample,
        QuarantinedExample,
        AnnotatedExample,
    ]
    assert [r.annotation.attempts for r in results] == [1, 2, 2, 1]
    quarantined = results[2]
    assert isinstance(quarantined, QuarantinedExample)
    assert "does not occur" in quarantined.error and quarantined.retryable is False
    assert results[0].annotation.annotator == "vllm"
    assert results[0].annotation.config_hash == annotator.config_hash()
    init, first, repair = log
    assert init == ("init", "tiny/model", {"tensor_parallel_size": 2})
    assert first[1] == [build_messages(PACK, r.text) for r in rows[:3]]  # one chat per text
    assert len(repair[1]) == 2  # rows 1 and 2 get one repair round, together
    assert first[2].kwargs["structured_outputs"].json == WIRE_SCHEMA
    annotator.annotate([example(3)])
    assert sum(entry[0] == "init" for entry in log) == 1  # the engine is reused


def test_engine_failure_quarantines_every_row_as_retryable() -> None:
    def reply(chat: list[dict[str, str]]) -> str:
        raise RuntimeError("CUDA out of memory")

    annotator = VLLMAnnotator(PACK, model="m", vllm_module=fake_vllm(reply))
    results = annotator.annotate([example(0), example(1)])
    assert all(isinstance(r, QuarantinedExample) and r.retryable for r in results)
    assert "CUDA out of memory" in results[0].error
