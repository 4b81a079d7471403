"""1,000 rows against a chat server that fails 30% of requests (seeded): nothing is lost.

Fault classes: 429 with Retry-After, 500, connection reset, a hang past the timeout, a 200 whose
body is not JSON, a reply naming phrases that are not in the text, a reply that is not JSON, plus
"poison" rows that never get a usable reply. Every row must end annotated or quarantined with a
reason, and a re-run (the flow's incremental rule, through the real store) must send requests for
exactly the rows quarantined as retryable.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from reliability_helpers import (
    CANARY,
    PACK,
    FaultScript,
    assert_accounted,
    assert_valid_relations,
    examples,
    is_poison,
    llm_annotator,
    llm_options,
    request_text,
    row_of,
    source_rows,
    write_jsonl,
)

from cattune.annotators.scripted_server import ScriptedChatServer
from cattune.pipeline.store import DatasetStore
from cattune.schemas import AnnotatedExample, QuarantinedExample

ROWS = 1000


def _split(results: list) -> tuple[list[AnnotatedExample], list[QuarantinedExample]]:
    good = [r for r in results if isinstance(r, AnnotatedExample)]
    bad = [r for r in results if isinstance(r, QuarantinedExample)]
    return good, bad


def test_thousand_rows_under_faults_all_accounted_and_rerun_retries_only_transient(
    tmp_path: Path,
) -> None:
    inputs = examples(ROWS)
    store = DatasetStore(tmp_path / "store")
    script = FaultScript(seed=7, rate=0.3, hang=2.0)
    with ScriptedChatServer(script) as server:
        llm = llm_annotator(server, tmp_path / "llm.sqlite", timeout=1.0)
        results = llm.annotate(inputs)
        first_requests = server.request_count
    assert_accounted(inputs, results)
    good, bad = _split(results)
    assert len(good) + len(bad) == ROWS
    for row in good:
        assert_valid_relations(row)
    retryable = [q for q in bad if q.retryable]
    final = [q for q in bad if not q.retryable]
    poison = {e.id for i, e in enumerate(inputs) if is_poison(i)}
    assert poison <= {q.id for q in final}, "poison rows must end quarantined, not retryable"
    assert retryable, "with 30% faults and one retry some rows must run out of retries"
    assert all("gave up after" in q.error or "rate limited" in q.error for q in retryable)
    assert all("repair" in q.error for q in final)
    # A request the client gave up on before the server read it is counted by the client only.
    assert llm.last_run.requests >= first_requests > ROWS

    # The flow's incremental rule: commit, then annotate only what the store does not hold.
    store.write("faults", good, bad)
    done = store.annotated_ids("faults", llm.config_hash(), include_final_quarantine=True)
    assert {e.id for e in inputs if e.id in done} == {r.id for r in good} | {q.id for q in final}
    assert len(done) == len(good) + len(final)
    pending = [e for e in inputs if e.id not in done]
    assert {e.id for e in pending} == {q.id for q in retryable}

    with ScriptedChatServer(FaultScript(seed=8, rate=0.0)) as server:
        rerun = llm_annotator(server, tmp_path / "llm.sqlite", timeout=10.0).annotate(pending)
        asked = {row_of(request_text(r.body)) for r in server.requests}
    assert asked == {row_of(e.text) for e in pending}
    assert all(isinstance(r, AnnotatedExample) for r in rerun)
    store.write("faults", [r for r in rerun if isinstance(r, AnnotatedExample)])
    rows = store.read("faults")
    assert len(rows) == len({r.id for r in rows}) == ROWS - len(final)
    assert {q.id for q in store.quarantine("faults")} == {q.id for q in final}


def test_unchanged_rerun_sends_no_request(tmp_path: Path) -> None:
    """Every final outcome comes from the reply cache, poison rows' quarantine included."""
    inputs = examples(120)
    with ScriptedChatServer(FaultScript(seed=3, rate=0.0)) as server:
        first = llm_annotator(server, tmp_path / "llm.sqlite").annotate(inputs)
        before = server.request_count
        again = llm_annotator(server, tmp_path / "llm.sqlite").annotate(inputs)
        asked = [row_of(request_text(r.body)) for r in server.requests[before:]]
    # Only a row that timed out on a loaded machine (retryable, not cached) may be asked again.
    retry = [i for i, r in enumerate(first) if isinstance(r, QuarantinedExample) and r.retryable]
    assert sorted(set(asked)) == retry
    final = [i for i in range(120) if i not in retry]
    assert [type(first[i]) for i in final] == [type(again[i]) for i in final]
    assert any(is_poison(i) and isinstance(first[i], QuarantinedExample) for i in final)


@pytest.mark.prefect
def test_faults_through_the_flow_rerun_retries_only_transient(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same guarantees through the Prefect annotate flow (smaller: the flow costs ~1 s)."""
    from cattune.flows.annotate import annotate_flow

    monkeypatch.setenv("CATTUNE_REL_KEY", CANARY)
    rows = 300
    source = write_jsonl(tmp_path / "rows.jsonl", [*source_rows(rows), *source_rows(10)])
    store_root = str(tmp_path / "store")
    # Four shard threads share the process with the server: slower requests, longer timeout.
    with ScriptedChatServer(FaultScript(seed=11, rate=0.3, hang=4.0)) as server:
        options = llm_options(server, tmp_path / "llm.sqlite", timeout=2.0, concurrency=16)
        summary = annotate_flow(
            str(source), "flowfaults", "llm", PACK, options, store=store_root, shard_size=64
        )
    assert summary.rows_read == rows + 10
    assert summary.rows_annotated + summary.rows_quarantined == rows
    store = DatasetStore(store_root)
    quarantine = store.quarantine("flowfaults")
    retryable = {q.id for q in quarantine if q.retryable}
    assert retryable and len(store.read("flowfaults")) == summary.rows_annotated
    reasons = Counter(q.error.split(";")[0] for q in quarantine)
    assert sum(reasons.values()) == summary.rows_quarantined

    with ScriptedChatServer(FaultScript(seed=12, rate=0.0)) as server:
        options = llm_options(server, tmp_path / "llm.sqlite", timeout=2.0, concurrency=16)
        again = annotate_flow(
            str(source), "flowfaults", "llm", PACK, options, store=store_root, shard_size=64
        )
        asked = {request_text(r.body) for r in server.requests}
    texts = {q.text for q in quarantine if q.retryable}
    assert asked == texts
    assert again.rows_annotated == len(retryable)
    assert again.rows_skipped == rows - len(retryable)
    final = store.read("flowfaults")
    assert len(final) == len({r.id for r in final})
    assert {q.id for q in store.quarantine("flowfaults")} == {
        q.id for q in quarantine if not q.retryable
    }
    assert json.dumps(summary.model_dump()).find(CANARY) == -1
