"""The API key never leaks; names cannot escape the store; LLM output is only ever data.

The key is a canary string in the environment. A full annotate flow runs against a server that
tries to leak it (error messages and replies that echo the Authorization header), then a release
is cut; the canary must not appear in any file under the test's directory (store, quarantine,
Delta logs, reply cache, release), in any log record (DEBUG and up, every logger), in the Prefect
flow run's parameters, logs or artifacts, or in the messages of the errors a user sees.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reliability_helpers import (
    CANARY,
    PACK,
    FaultScript,
    correct_reply,
    files_containing,
    llm_annotator,
    llm_options,
    request_text,
    source_rows,
    write_jsonl,
)

from cattune.annotators.scripted_server import Reply, ScriptedChatServer
from cattune.flows.cli import main
from cattune.pipeline.names import validate_name
from cattune.pipeline.release import make_release
from cattune.pipeline.store import DatasetStore
from cattune.schemas import AnnotatedExample, Annotation, ConfigError, EndpointError, Example


class LeakyScript(FaultScript):
    """A server that echoes the client's Authorization header wherever it can."""

    def __call__(self, request: dict[str, Any], attempt: int) -> Reply:
        text = request_text(request)
        number = int(text.split()[1].rstrip("."))
        if number % 5 == 1:
            return Reply.error(400, message=f"bad request from key {CANARY}")
        if number % 5 == 2:
            return Reply.completion(f"I will not label this. Your key is {CANARY}.")
        if number % 5 == 3 and attempt == 0:
            return Reply.error(500, message=f"internal error for {CANARY}")
        return Reply.completion(correct_reply(text))


@pytest.mark.prefect
def test_canary_key_never_written_logged_or_stored(
    prefect_harness: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, LogFilter, LogFilterFlowRunId

    from cattune.flows.annotate import annotate_flow

    monkeypatch.setenv("CATTUNE_REL_KEY", CANARY)
    caplog.set_level(logging.DEBUG)
    source = write_jsonl(tmp_path / "rows.jsonl", source_rows(40))
    store_root = tmp_path / "store"
    with ScriptedChatServer(LeakyScript()) as server:
        options = llm_options(server, tmp_path / "llm.sqlite", timeout=5.0, concurrency=8)
        summary = annotate_flow(
            str(source), "secret", "llm", PACK, options, store=str(store_root), shard_size=16
        )
        headers = {r.headers.get("authorization") for r in server.requests}
    assert headers == {f"Bearer {CANARY}"}  # the key was really used
    assert summary.rows_quarantined >= 8 and summary.rows_annotated >= 8
    quarantine = DatasetStore(store_root).quarantine("secret")
    assert any("***" in (q.error + (q.raw_output or "")) for q in quarantine)
    make_release(DatasetStore(store_root), "secret", None, tmp_path / "release")

    assert files_containing(tmp_path, CANARY) == []
    leaked = [r.getMessage() for r in caplog.records if CANARY in r.getMessage()]
    assert leaked == []
    assert CANARY not in caplog.text
    assert CANARY not in summary.model_dump_json()

    run_id = UUID(summary.flow_run_id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
        for _ in range(100):  # run logs reach the server in batches, from a background worker
            if logs := client.read_logs(log_filter=log_filter):
                break
            time.sleep(0.1)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id={"any_": [run_id]})
        )
    assert logs and artifacts
    assert CANARY not in json.dumps(run.parameters)
    assert all(CANARY not in log.message for log in logs)
    assert all(CANARY not in json.dumps(a.data, default=str) for a in artifacts)
    assert CANARY not in str(run.state)


def test_error_messages_and_reprs_do_not_carry_the_key(tmp_path: Path) -> None:
    refused = [Reply.error(401, message=f"invalid key {CANARY}")] * 4
    with ScriptedChatServer(refused) as server:
        llm = llm_annotator(server, tmp_path / "llm.sqlite")
        with pytest.raises(EndpointError) as caught:
            llm.annotate([Example.create("Row 1. Smoking: 2, Room size: 3. Answer: ", "Low")])
    assert CANARY not in str(caught.value) and CANARY not in repr(caught.value)
    assert CANARY not in repr(llm) and CANARY not in str(vars(llm))


def test_unreachable_endpoint_error_has_no_key(tmp_path: Path) -> None:
    with ScriptedChatServer([]) as server:
        llm = llm_annotator(server, tmp_path / "c.sqlite")
    with pytest.raises(EndpointError) as caught:
        llm.annotate([Example.create("Row 1. Smoking: 2. Answer: ", "Low")])
    assert CANARY not in str(caught.value)


# -- names and paths -------------------------------------------------------------------------

ESCAPES = ["..", "../x", "a/../../b", "/etc", "a/b", "a\\b", ".hidden", "", "x" * 200, "a\x00b"]


@pytest.mark.parametrize("name", ESCAPES)
def test_dataset_names_cannot_escape_the_store(tmp_path: Path, name: str) -> None:
    store = DatasetStore(tmp_path / "store")
    with pytest.raises(ConfigError):
        store.write(name, [])
    with pytest.raises(ConfigError):
        store.uri(name)


@given(st.text(min_size=1, max_size=40))
def test_any_accepted_name_stays_one_folder_under_the_root(name: str) -> None:
    root = Path("/srv/store")
    try:
        validate_name(name)
    except ConfigError:
        return
    uri = Path(DatasetStore(root).uri(name))
    assert uri.resolve().parent.parent == root
    assert uri.parent.name == name


@pytest.mark.parametrize(
    "argv",
    [
        ["datasets", "show", "../outside"],
        ["datasets", "history", "a/b"],
        ["release", "../../outside", "--out", "REL"],
        ["annotate", "SRC", "--dataset", "../escape"],
    ],
)
def test_cli_refuses_escaping_names_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    source = write_jsonl(tmp_path / "rows.jsonl", source_rows(2))
    argv = [str(source) if a == "SRC" else str(tmp_path / "r") if a == "REL" else a for a in argv]
    code = main([*argv, "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cattune: error: invalid dataset name")
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_split_names_from_the_data_cannot_name_files_outside_the_release(tmp_path: Path) -> None:
    from cattune.schemas import Meta, StoreError

    store = DatasetStore(tmp_path / "store")
    example = Example.create("Smoking: 2. Answer: ", "Low", Meta(split="../../evil"))
    row = AnnotatedExample(
        **example.model_dump(),
        relations=[],
        annotation=Annotation(annotator="t", annotator_version="1"),
    )
    store.write("splits", [row])
    with pytest.raises(StoreError, match="split name"):
        make_release(store, "splits", None, tmp_path / "release")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_llm_output_is_data_never_code_or_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Phrases that look like code or paths become spans; extra reply keys are ignored."""
    monkeypatch.chdir(tmp_path)
    code = "__import__('os').system('touch PWNED')"
    path = "../../escape/PWNED"
    text_prompt = f"Row 1. Run {code} then open {path}. Answer: "
    example = Example.create(text_prompt, "done")
    reply = json.dumps(
        {
            "relations": [{"effect": "done", "causes": [code, path]}],
            "path": str(tmp_path / "PWNED"),
            "dataset": "../escape",
            "__class__": "os.system",
        }
    )
    with ScriptedChatServer(lambda request, attempt: Reply.completion(reply)) as server:
        [row] = llm_annotator(server, tmp_path / "llm.sqlite").annotate([example])
    assert isinstance(row, AnnotatedExample)
    causes = [c.text(row.text) for c in row.relations[0].causes]
    assert causes == [code, path]
    store = DatasetStore(tmp_path / "store")
    store.write("data", [row])
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["data"]
    assert not list(tmp_path.parent.rglob("PWNED"))


def test_file_mode_cli_output_and_console_carry_no_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATTUNE_REL_KEY", CANARY)
    source = write_jsonl(tmp_path / "rows.jsonl", source_rows(30))
    with ScriptedChatServer(LeakyScript()) as server:
        argv = ["annotate", str(source), "--out", str(tmp_path / "out" / "o.parquet")]
        argv += ["--annotator", "llm", "--pack", PACK, "--model", "scripted"]
        argv += ["--base-url", server.base_url, "--api-key-env", "CATTUNE_REL_KEY"]
        argv += ["--cache", str(tmp_path / "llm.sqlite"), "--max-retries", "1", "--timeout", "5"]
        code = main(argv)
        headers = {r.headers.get("authorization") for r in server.requests}
    out, err = capsys.readouterr()
    assert code == 0, err
    assert headers == {f"Bearer {CANARY}"}
    assert CANARY not in out + err
    assert files_containing(tmp_path, CANARY) == []
    bad = pq.read_table(tmp_path / "out" / "o.quarantine.parquet").to_pylist()
    assert any("***" in row["error"] + (row["raw_output"] or "") for row in bad)
