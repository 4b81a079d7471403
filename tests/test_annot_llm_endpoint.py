"""What the LLM annotator does with what real servers say: structured output negotiation
(llama.cpp's HTTP 500 for json_schema), the server's own error text, the model list, decoding
options, and reply items that lack a part."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from test_annot_llm import GOOD, annotator, example, is_repair

from cattune.annotators.llm import LLMAnnotator
from cattune.annotators.llm_prompt import WIRE_SCHEMA
from cattune.annotators.scripted_server import LLAMA_CPP_FORMATS, Reply, ScriptedChatServer
from cattune.schemas import AnnotatedExample, ConfigError, EndpointError, QuarantinedExample


def good(request: dict[str, Any], attempt: int) -> Reply:
    return Reply.completion(GOOD)


def asked_formats(server: ScriptedChatServer) -> list[str | None]:
    return [(r.body or {}).get("response_format", {}).get("type") for r in server.requests]


def test_llama_cpp_500_for_json_schema_steps_down_to_its_json_mode_once(tmp_path: Path) -> None:
    with ScriptedChatServer(good, response_formats=LLAMA_CPP_FORMATS) as server:
        results = annotator(server, tmp_path, concurrency=1).annotate(
            [example(i) for i in range(3)]
        )
        bodies = [r.body or {} for r in server.requests]
    assert all(isinstance(r, AnnotatedExample) for r in results)
    assert asked_formats(server) == ["json_schema", "json_object", "json_object", "json_object"]
    assert bodies[1]["response_format"] == {"type": "json_object", "schema": WIRE_SCHEMA}


def test_concurrent_refusals_step_down_once_for_the_whole_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cattune.annotators.llm")
    rows = [example(i) for i in range(24)]
    with ScriptedChatServer(good, response_formats=LLAMA_CPP_FORMATS) as server:
        results = annotator(server, tmp_path, concurrency=8).annotate(rows)
    formats = asked_formats(server)
    assert all(isinstance(r, AnnotatedExample) for r in results)
    assert formats.count("json_object") == 24 and 1 <= formats.count("json_schema") <= 8
    assert [m for m in caplog.messages if "rejects response_format" in m] == [
        "the endpoint rejects response_format 'json_schema' (1 validation error for "
        "CreateChatCompletionRequest response_format.type Input should be 'text' or "
        "'json_object' [type=literal_error, input_value='json_schema', input_type=str]); asking "
        "with response_format 'json_object' from now on"
    ]


def test_a_server_without_any_response_format_gets_the_prompt_only(tmp_path: Path) -> None:
    with ScriptedChatServer(good, response_formats=("text",)) as server:
        results = annotator(server, tmp_path, concurrency=1).annotate([example(0), example(1)])
    assert all(isinstance(r, AnnotatedExample) for r in results)
    assert asked_formats(server) == ["json_schema", "json_object", None, None]


def test_an_explicit_mode_the_server_refuses_stops_the_run_with_its_reason(
    tmp_path: Path,
) -> None:
    with ScriptedChatServer(good, response_formats=LLAMA_CPP_FORMATS) as server:
        llm = annotator(server, tmp_path, structured_output="json_schema")
        with pytest.raises(EndpointError) as refused:
            llm.annotate([example(i) for i in range(3)])
    message = str(refused.value)
    assert "Input should be 'text' or 'json_object'" in message
    assert "--structured-output auto, json_object or off" in message


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("json_schema", "json_schema"),
        ("json_object", "json_object"),
        ("off", None),
    ],
)
def test_each_mode_sends_what_it_says(tmp_path: Path, mode: str, expected: str | None) -> None:
    with ScriptedChatServer(good) as server:
        annotator(server, tmp_path, structured_output=mode).annotate([example()])
    assert asked_formats(server) == [expected]


def test_retryable_failures_keep_the_servers_explanation(tmp_path: Path) -> None:
    reply = Reply.error(503, message="Loading model, please wait")
    with ScriptedChatServer(lambda request, attempt: reply) as server:
        [result] = annotator(server, tmp_path).annotate([example()])
    assert isinstance(result, QuarantinedExample) and result.retryable
    assert result.error == (
        "HTTP 503 from the endpoint: Loading model, please wait; gave up after 3 attempts"
    )


def test_a_model_the_server_does_not_list_fails_before_any_request(tmp_path: Path) -> None:
    with ScriptedChatServer(good, models=["smollm2", "qwen"]) as server:
        with pytest.raises(EndpointError) as unknown:
            annotator(server, tmp_path, model="gpt-4o").annotate([example()])
        assert server.request_count == 0
        [result] = annotator(server, tmp_path, model="qwen").annotate([example()])
    assert str(unknown.value) == (
        f"the endpoint {server.base_url} does not serve model 'gpt-4o'; it lists 'smollm2', "
        "'qwen': fix --model"
    )
    assert isinstance(result, AnnotatedExample) and result.annotation.model == "qwen"


def test_a_server_that_wants_a_key_refuses_before_any_chat_request(tmp_path: Path) -> None:
    with ScriptedChatServer(good, api_key="right-key") as server:
        with pytest.raises(EndpointError, match="refused the API key.*HTTP 401"):
            annotator(server, tmp_path, api_key="wrong-key").annotate([example()])
        assert server.request_count == 0
        [result] = annotator(server, tmp_path, api_key="right-key").annotate([example()])
    assert isinstance(result, AnnotatedExample)


def test_decoding_options_reach_the_request_and_are_checked(tmp_path: Path) -> None:
    with ScriptedChatServer(good) as server:
        annotator(server, tmp_path, max_tokens=64, temperature=0.3).annotate([example()])
        body = server.requests[0].body or {}
    assert (body["max_tokens"], body["temperature"]) == (64, 0.3)
    base = {"model": "m", "base_url": "http://127.0.0.1:9/v1", "cache": False}
    for bad, match in [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"structured_output": "xml"}, "structured output 'xml'"),
        ({"max_dropped_share": 1.5}, "max_dropped_share"),
    ]:
        with pytest.raises(ConfigError, match=match):
            LLMAnnotator(annotator.__globals__["PACK"], **base, **bad)


def test_a_reply_item_without_causes_is_reported_as_such(tmp_path: Path) -> None:
    partly = {
        "relations": [
            {"effect": "High Risk"},
            {"effect": "High Risk", "causes": ["Smoking: 8"], "confidence": 0.9},
        ]
    }
    only = {"relations": [{"effect": "High Risk"}]}

    def respond(request: dict[str, Any], attempt: int) -> Reply:
        return Reply.completion(json.dumps(only if "Row 1." in str(request) else partly))

    with ScriptedChatServer(respond) as server:
        kept, lost = annotator(server, tmp_path, concurrency=1).annotate([example(0), example(1)])
        repairs = [r.body for r in server.requests if is_repair(r.body or {})]
    assert isinstance(kept, AnnotatedExample)
    assert [c.text(kept.text) for r in kept.relations for c in r.causes] == ["Smoking: 8"]
    assert kept.problems == [
        "left out of the reply: relation of effect 'High Risk' has no 'causes' list"
    ]
    assert isinstance(lost, QuarantinedExample)
    assert lost.error == (
        "reply unusable after one repair request: relation of effect 'High Risk' has no "
        "'causes' list"
    )
    assert len(repairs) == 1 and "has no 'causes' list" in repairs[0]["messages"][-1]["content"]


def test_progress_lines_without_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cattune.annotators.llm_progress as llm_progress

    monkeypatch.setattr(llm_progress, "PROGRESS_EVERY", 0.2)
    slow = Reply.completion(GOOD, delay=0.3)
    with ScriptedChatServer(lambda request, attempt: slow) as server:
        results = annotator(server, tmp_path, concurrency=1).annotate(
            [example(i) for i in range(4)]
        )
    assert all(isinstance(r, AnnotatedExample) for r in results)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 3 and all(line.startswith("LLM annotation: ") for line in lines)
    assert lines[-1].startswith("LLM annotation: 4/4 rows (100%), 4 requests, 0 in flight ")
    assert all("in flight (limit 1 of 1), " in line for line in lines)
    done = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert done == sorted(done) and done[0] < 4


def test_a_short_run_prints_no_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ScriptedChatServer(good) as server:
        annotator(server, tmp_path).annotate([example(i) for i in range(3)])
    assert capsys.readouterr().err == ""


def test_a_429_holds_every_request_of_the_run_until_its_retry_after(tmp_path: Path) -> None:
    """The SDK delays only the retry of the request that got the 429; the run holds them all."""

    def respond(request: dict[str, Any], attempt: int) -> Reply:
        if "Row 0." in str(request):
            return Reply.error(429, retry_after=1.5) if attempt == 0 else Reply.completion(GOOD)
        if attempt == 0:
            return Reply.error(500, delay=0.2)  # retried by the SDK ~0.5 s later: inside the pause
        return Reply.completion(GOOD)

    with ScriptedChatServer(respond) as server:
        llm = annotator(server, tmp_path, concurrency=4)
        results = llm.annotate([example(i) for i in range(4)])
        requests = server.requests
    assert all(isinstance(r, AnnotatedExample) for r in results)
    assert [r.annotation.attempts for r in results] == [2, 2, 2, 2]
    assert llm.last_run.requests == len(requests) == 8
    limited = next(
        r.received_at for r in requests if r.attempt_index == 0 and "Row 0." in str(r.body)
    )
    retries = [r.received_at for r in requests if r.attempt_index == 1]
    assert len(retries) == 4 and min(retries) >= limited + 1.5
