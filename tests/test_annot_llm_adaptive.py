"""Adaptive concurrency, the circuit breaker and the timeout rule against real servers on
127.0.0.1 (ScriptedChatServer): a 1-slot server, a server restarted on the same port, a burst of
5xx, a request that always runs past the timeout."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from pydantic import SecretStr

from cattune.annotators.llm import LLMAnnotator
from cattune.annotators.llm_breaker import BURST
from cattune.annotators.pack import load_pack
from cattune.annotators.scripted_server import Reply, ScriptedChatServer
from cattune.schemas import AnnotatedExample, Example, QuarantinedExample

# Texts with emoji, CJK and a combining mark: offsets are in code points all the way.
EXTRAS = ("", " Note: café ☕.", " 東京 visit.", " Cafe\u0301 🇯🇵 done.")
REPLY = json.dumps({"relations": [{"effect": "High Risk", "causes": ["Smoking: 8", "Weight: 4"]}]})


def rows(n: int, tag: str) -> list[Example]:
    return [
        Example.create(
            f"{tag} {i}. Smoking: 8, Room size: 3, Weight: 4.{EXTRAS[i % 4]} Answer: ", "High Risk"
        )
        for i in range(n)
    ]


def annotator(base_url: str, **options: Any) -> LLMAnnotator:
    settings: dict[str, Any] = {
        "model": "scripted",
        "base_url": base_url,
        "api_key": SecretStr("sk-test"),
        "cache": False,
        "progress": False,
    }
    settings.update(options)
    return LLMAnnotator(load_pack("key-value-records"), **settings)


def assert_all_annotated(results: list, inputs: list[Example]) -> None:
    assert [r.id for r in results] == [e.id for e in inputs]
    failed = [r.error for r in results if isinstance(r, QuarantinedExample)]
    assert not failed, failed[:3]
    for row in results:
        assert isinstance(row, AnnotatedExample)
        [relation] = row.relations
        assert [row.text[c.start : c.end] for c in relation.causes] == ["Smoking: 8", "Weight: 4"]


def test_one_slot_server_gets_no_more_than_it_answers_within_the_timeout() -> None:
    """Default concurrency (16) against a server answering one request at a time in 0.2 s:
    with a 2 s timeout, a request behind 9 others would time out."""
    delay, timeout = 0.2, 2.0
    inputs = rows(30, "Slot")
    with ScriptedChatServer(
        lambda request, attempt: Reply.completion(REPLY, delay=delay), slots=1
    ) as server:
        llm = annotator(server.base_url, timeout=timeout)
        results = llm.annotate(inputs)
        queued, sent = server.max_queued, server.request_count
    assert_all_annotated(results, inputs)
    assert sent == len(inputs)  # nothing timed out, nothing was sent twice
    assert queued <= int(timeout / delay) - 2  # the last in line still answered in time
    assert llm.last_run.outages == 0


def test_server_stopped_and_restarted_on_the_same_port_loses_no_row(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cattune.annotators.llm_progress as llm_progress

    monkeypatch.setattr(llm_progress, "PROGRESS_EVERY", 0.2)
    inputs = rows(40, "Restart")
    script = lambda request, attempt: Reply.completion(REPLY, delay=0.05)  # noqa: E731
    first = ScriptedChatServer(script)
    first.start()
    port = first.port
    restarted: list[ScriptedChatServer] = []

    def outage() -> None:
        while first.request_count < 10:
            time.sleep(0.01)
        first.stop()
        time.sleep(1.5)
        second = ScriptedChatServer(script, port=port)
        second.start()
        restarted.append(second)

    thread = threading.Thread(target=outage)
    thread.start()
    try:
        llm = annotator(first.base_url, timeout=5.0, concurrency=4, progress=None)  # lines
        results = llm.annotate(inputs)
    finally:
        thread.join()
        first.stop()
        for server in restarted:
            server.stop()
    assert_all_annotated(results, inputs)
    assert llm.last_run.outages == 1
    assert restarted[0].request_count > 0
    paused = [line for line in capsys.readouterr().err.splitlines() if "paused" in line]
    assert paused and "endpoint failing for " in paused[0]
    assert "(ConnectError: " in paused[0] and "), all requests paused, " in paused[0]


def test_an_outage_longer_than_the_bound_leaves_rows_retryable_with_the_last_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cattune.annotators.llm_breaker as llm_breaker

    monkeypatch.setattr(llm_breaker, "GIVE_UP_AFTER", 1.0)
    inputs = rows(12, "Gone")
    server = ScriptedChatServer(lambda request, attempt: Reply.completion(REPLY, delay=0.05))
    server.start()

    def stop_after_four() -> None:
        while server.request_count < 4:
            time.sleep(0.01)
        server.stop()

    thread = threading.Thread(target=stop_after_four)
    thread.start()
    try:
        llm = annotator(server.base_url, timeout=5.0, concurrency=2)
        results = llm.annotate(inputs)
    finally:
        thread.join()
        server.stop()
    lost = [r for r in results if isinstance(r, QuarantinedExample)]
    assert len(lost) >= len(inputs) - 4 and all(r.retryable for r in lost)
    assert all(r.error.startswith("the endpoint failed for ") for r in lost)
    assert all(
        "longer than the 1 s a run waits (last error: ConnectError: " in r.error for r in lost
    )
    assert llm.last_run.outages == 1


def test_burst_of_server_errors_opens_the_circuit_once_instead_of_spending_every_retry() -> None:
    inputs = rows(40, "Burst")
    state = {"answered": 0, "failing_until": 0.0, "errors": 0}
    lock = threading.Lock()

    def script(request: dict[str, Any], attempt: int) -> Reply:
        with lock:
            state["answered"] += 1
            if state["answered"] == 12:  # a 2 s outage starts with the 12th request
                state["failing_until"] = time.monotonic() + 2.0
            if time.monotonic() < state["failing_until"]:
                state["errors"] += 1
                return Reply.error(503, message="model is reloading", delay=0.02)
        return Reply.completion(REPLY, delay=0.02)

    with ScriptedChatServer(script) as server:
        llm = annotator(server.base_url, timeout=5.0, concurrency=8, max_retries=4)
        results = llm.annotate(inputs)
    assert_all_annotated(results, inputs)
    assert llm.last_run.outages == 1
    # In flight when it started (8), the places freed by the errors before the circuit opened
    # (BURST), probes at 0.5, 1.5 and 3.5 s: far from the 29 rows x 5 attempts of per-row retries.
    assert state["errors"] <= 8 + BURST + 3


def test_a_row_that_times_out_is_sent_twice_then_left_for_a_later_run() -> None:
    inputs = rows(4, "Slow")
    slow = "Slow 2."

    def script(request: dict[str, Any], attempt: int) -> Reply:
        if slow in request["messages"][-1]["content"]:
            return Reply.hang(1.5)
        return Reply.completion(REPLY)

    with ScriptedChatServer(script) as server:
        llm = annotator(server.base_url, timeout=0.3, max_retries=4)
        results = llm.annotate(inputs)
        asked = [r for r in server.requests if slow in r.body["messages"][-1]["content"]]
    assert len(asked) == 2  # not max_retries + 1 = 5 identical requests
    row = results[2]
    assert isinstance(row, QuarantinedExample) and row.retryable
    assert row.error.startswith("no reply within the 0.3 s timeout (twice;")
    assert "raise --timeout or lower --max-tokens" in row.error
    assert all(isinstance(r, AnnotatedExample) for i, r in enumerate(results) if i != 2)
