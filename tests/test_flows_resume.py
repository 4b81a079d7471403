"""A flow killed with SIGKILL half-way: the store stays at its last commit; a re-run resumes.

The LLM annotator talks to a real scripted HTTP server on 127.0.0.1. Rows of the first shard are
answered at once, the others only after a long delay, so the subprocess is reliably in the
middle of the run when the test sees "shard 1/3 done" in its log and kills it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cattune.annotators.scripted_server import Reply, ScriptedChatServer
from cattune.flows.annotate import annotate_flow
from cattune.pipeline.store import DatasetStore
from cattune.schemas import AnnotatedExample, Annotation, Example

pytestmark = pytest.mark.prefect

ROWS = 12
SHARD = 4
PERSON = re.compile(r"Person (\d+)\. Smoking: (\d+)")


def source_rows() -> list[dict]:
    return [
        {
            "prompt": f"Person {i}. Smoking: {i % 9 + 1}, Room size: 3. Answer: ",
            "completion": "High Risk" if i % 2 else "Low Risk",
        }
        for i in range(ROWS)
    ]


def person_of(request: dict) -> int:
    text = request["messages"][-1]["content"]
    return int(PERSON.findall(text)[-1][0])


class Script:
    """Answers every row correctly; rows after the first shard wait while ``slow`` is set."""

    def __init__(self) -> None:
        self.slow = threading.Event()
        self.slow.set()

    def __call__(self, request: dict, attempt: int) -> Reply:
        text = request["messages"][-1]["content"]
        person, smoking = PERSON.findall(text)[-1]
        answer = "High Risk" if int(person) % 2 else "Low Risk"
        content = json.dumps({"relations": [{"effect": answer, "causes": [f"Smoking: {smoking}"]}]})
        delay = 60.0 if self.slow.is_set() and int(person) >= SHARD else 0.0
        return Reply.completion(content, delay=delay)


FLOW_SCRIPT = """
import json, sys
from cattune.flows.annotate import configured_flow
source, store, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
configured_flow(concurrency=1)(
    source, "resume", annotator="llm", pack="key-value-records", options=options,
    store=store, shard_size=4,
)
"""


def test_killed_run_leaves_last_commit_and_rerun_resumes(
    prefect_harness: None, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in source_rows()) + "\n")
    store_root = str(tmp_path / "store")
    store = DatasetStore(store_root)
    earlier = Example.create("Earlier row. Smoking: 2. Answer: ", "Low Risk")
    store.write(
        "resume",
        [
            AnnotatedExample(
                **earlier.model_dump(),
                relations=[],
                annotation=Annotation(annotator="test", annotator_version="1"),
            )
        ],
    )
    script = Script()
    with ScriptedChatServer(script) as server:
        options = {
            "model": "scripted",
            "base_url": server.base_url,
            "cache": str(tmp_path / "llm.sqlite"),
            "timeout": 120.0,
        }
        env = os.environ | {
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PYTHONUNBUFFERED": "1",
        }
        process = subprocess.Popen(
            [sys.executable, "-c", FLOW_SCRIPT, str(source), store_root, json.dumps(options)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seen: list[str] = []
        try:
            deadline = time.monotonic() + 180
            for line in process.stdout:  # type: ignore[union-attr]
                seen.append(line)
                if "shard 1/3 done" in line or time.monotonic() > deadline:
                    break
            assert any("shard 1/3 done" in line for line in seen), "".join(seen[-30:])
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(30)
        assert process.returncode == -signal.SIGKILL

        assert store.version("resume") == 0
        assert len(store.read("resume")) == 1
        answered_before = {person_of(r.body) for r in server.requests if person_of(r.body) < SHARD}
        assert answered_before == set(range(SHARD))
        before = server.request_count

        script.slow.clear()
        summary = annotate_flow(
            str(source),
            "resume",
            annotator="llm",
            pack="key-value-records",
            options=options,
            store=store_root,
            shard_size=SHARD,
        )
        rerun_people = [person_of(r.body) for r in server.requests[before:]]

    assert (summary.version, summary.committed, summary.rows_annotated) == (1, True, ROWS)
    assert sorted(rerun_people) == list(range(SHARD, ROWS))  # shard 1 came from the cache
    rows = store.read("resume")
    assert len(rows) == len({r.id for r in rows}) == ROWS + 1
    assert [c.version for c in store.history("resume")] == [0, 1]


def test_api_key_from_a_secret_block_never_reaches_parameters(
    prefect_harness: None, tmp_path: Path
) -> None:
    from uuid import UUID

    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    from cattune.schemas import ConfigError

    key = "sk-test-not-a-real-key-42"
    Secret(value=key).save("cattune-test-llm-key", overwrite=True)
    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in source_rows()[:3]) + "\n")
    script = Script()
    script.slow.clear()
    store_root = str(tmp_path / "store")
    with ScriptedChatServer(script) as server:
        options = {
            "model": "scripted",
            "base_url": server.base_url,
            "cache": False,
            "api_key_secret": "cattune-test-llm-key",
        }
        summary = annotate_flow(
            str(source),
            "secret",
            annotator="llm",
            pack="key-value-records",
            options=options,
            store=store_root,
        )
        headers = [r.headers.get("authorization") for r in server.requests]
    assert summary.rows_annotated == 3
    assert headers == [f"Bearer {key}"] * 3
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(summary.flow_run_id))
    assert key not in json.dumps(run.parameters)
    history = DatasetStore(store_root).history("secret")
    assert key not in history[0].model_dump_json()
    with pytest.raises(ConfigError, match="do not pass api_key"):
        annotate_flow(
            str(source),
            "secret",
            annotator="llm",
            options={"model": "m", "api_key": key},
            store=store_root,
        )


def test_llm_shards_obey_the_tag_concurrency_limit(prefect_harness: None, tmp_path: Path) -> None:
    """`prefect concurrency-limit create cattune-llm 1` serialises LLM shards across threads."""
    from prefect.client.orchestration import get_client

    from cattune.flows.annotate import LLM_TAG, configured_flow

    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in source_rows()[:6]) + "\n")
    script = Script()
    script.slow.clear()
    slow = lambda request, attempt: Reply(  # noqa: E731
        content=script(request, attempt).content, delay=1.5
    )
    from prefect.concurrency import services

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=LLM_TAG, concurrency_limit=1)
    # Prefect remembers "this tag has no limit" for 5 s per process; earlier LLM flows in this
    # session would otherwise run this one unlimited.
    services._no_limits_cache.clear()
    try:
        with ScriptedChatServer(slow) as server:
            options = {
                "model": "scripted",
                "base_url": server.base_url,
                "cache": False,
                "concurrency": 1,
            }
            summary = configured_flow(concurrency=3)(
                str(source),
                "limited",
                annotator="llm",
                pack="key-value-records",
                options=options,
                store=str(tmp_path / "store"),
                shard_size=2,
            )
            in_flight = server.max_in_flight
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag(LLM_TAG)
    assert (summary.shards, summary.rows_annotated) == (3, 6)
    assert in_flight == 1
