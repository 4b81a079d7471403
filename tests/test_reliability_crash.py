"""SIGKILL at random points: the store stays readable, whole, and a re-run completes.

Two layers, chosen for cost (a subprocess Prefect flow pays ~5-10 s of imports and start-up):

* 20 kills of a writer process that commits through ``DatasetStore.write`` (the call the annotate
  flow's commit task makes) in a loop; the writer is forked from a ``forkserver`` that has the
  store already imported, so a kill-and-check round costs well under a second. Kills land during
  Delta merges and log writes, since the writer does nothing else.
* 3 kills of the real annotate flow in a subprocess (against the session's Prefect test server,
  LLM annotator on a scripted server), at random moments during the LLM calls and the commit; then
  a re-run of the flow completes and the dataset holds every row once.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from reliability_helpers import (
    CANARY,
    PACK,
    FaultScript,
    batch_failures,
    batch_rows,
    check_store,
    llm_options,
    source_rows,
    store_writer,
    write_jsonl,
)

from cattune.annotators.scripted_server import Reply, ScriptedChatServer
from cattune.pipeline.store import DatasetStore, Lineage

KILLS = 20
SIZE = 20
SHARDS = 4


def forkserver() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["cattune.pipeline.store", "reliability_helpers"])
    return context


def test_sigkill_during_store_writes_leaves_every_version_whole(tmp_path: Path) -> None:
    rng = random.Random(2026)
    context = forkserver()
    root, name = str(tmp_path / "store"), "crash"
    checked = 0
    progressed = 0
    for round_ in range(KILLS):
        done = context.Value("i", 0)
        writer = context.Process(
            target=store_writer, args=(root, name, f"k{round_}", 50, SIZE, done), daemon=True
        )
        writer.start()
        if round_ % 2:  # mid-loop: after a first commit, at a random point of a later write
            deadline = time.monotonic() + 60
            while done.value < 1 and writer.is_alive() and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # early: anywhere in the first write (table creation or first merge)
            time.sleep(rng.uniform(0.05, 0.6))
        writer.kill()
        writer.join(10)
        assert writer.exitcode == -signal.SIGKILL
        progressed += done.value > 0
        if DatasetStore(root).exists(name):
            latest = check_store(root, name, since=checked)
            assert all(count == SIZE for count in latest.values())
            checked = DatasetStore(root).version(name)
    assert progressed >= KILLS // 2

    # A re-run after the last kill completes and adds its rows; the whole history reads.
    store = DatasetStore(root)
    before = store.version(name)
    result = store.write(name, batch_rows("rerun", 0, SIZE), lineage=Lineage(write_id="rerun-0"))
    assert result.committed and result.version > before
    assert check_store(root, name)["rerun-0"] == SIZE


FLOW = """
import json, sys
from cattune.flows.annotate import configured_flow
source, store, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
print("flow starting", flush=True)
configured_flow(concurrency=2)(
    source, "crashflow", annotator="llm", pack=sys.argv[4], options=options, store=store,
    shard_size=40,
)
print("flow finished", flush=True)
"""


class SlowScript(FaultScript):
    """Correct answers (10% faults) after a short delay, so the flow spends seconds on LLM calls."""

    def __call__(self, request: dict, attempt: int) -> Reply:
        reply = super().__call__(request, attempt)
        if reply.action == "reply" and reply.delay == 0:
            return Reply(
                content=reply.content,
                status=reply.status,
                headers=reply.headers,
                body=reply.body,
                delay=0.05,
            )
        return reply


@pytest.mark.prefect
def test_sigkill_of_the_annotate_flow_then_rerun_completes(
    prefect_harness: None, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    from cattune.flows.annotate import annotate_flow

    rows = 40 * SHARDS
    source = write_jsonl(tmp_path / "rows.jsonl", source_rows(rows))
    # One store per kill, so that a run finishing before its kill on a fast machine cannot leave
    # the next scenario with nothing to do; the reply cache is shared, as between real re-runs.
    roots = [str(tmp_path / f"store-{attempt}") for attempt in range(3)]
    rng = random.Random(5)
    env = os.environ | {
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PYTHONUNBUFFERED": "1",
        "CATTUNE_REL_KEY": CANARY,
    }
    with ScriptedChatServer(SlowScript(seed=1, rate=0.1)) as server:
        options = llm_options(server, tmp_path / "llm.sqlite", timeout=2.0, concurrency=8)
        for attempt, root in enumerate(roots):
            process = subprocess.Popen(
                [sys.executable, "-c", FLOW, str(source), root, json.dumps(options), PACK],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            lines: list[str] = []
            started, shards_done = threading.Event(), threading.Event()

            def read(out=process.stdout, lines=lines, started=started, end=shards_done) -> None:
                for line in out:  # type: ignore[union-attr]
                    lines.append(line)
                    if "to annotate" in line:
                        started.set()
                    if sum("done:" in seen and "shard" in seen for seen in lines) == SHARDS:
                        end.set()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            try:
                assert started.wait(120), "".join(lines[-20:])
                if attempt == 0:  # during the LLM calls
                    time.sleep(0.5)
                elif attempt == 1:  # anywhere
                    time.sleep(rng.uniform(0.2, 3.0))
                else:  # right after the last shard: during the commit task
                    assert shards_done.wait(120), "".join(lines[-20:])
                    time.sleep(rng.uniform(0.0, 0.3))
                process.send_signal(signal.SIGKILL)
            finally:
                process.kill()
                process.wait(30)
                reader.join(10)
            if DatasetStore(root).exists("crashflow"):
                check_flow_store(root, rows)
        os.environ["CATTUNE_REL_KEY"] = CANARY
        try:
            for root in roots:
                summary = annotate_flow(
                    str(source), "crashflow", "llm", PACK, options, store=root, shard_size=40
                )
                store = DatasetStore(root)
                done = store.read("crashflow")
                quarantined = store.quarantine("crashflow")
                assert len(done) == len({r.id for r in done})
                assert len(done) + len(quarantined) == rows
                skipped_or_done = summary.rows_skipped + summary.rows_annotated
                assert skipped_or_done + summary.rows_quarantined == rows
                check_flow_store(root, rows)
        finally:
            del os.environ["CATTUNE_REL_KEY"]


def check_flow_store(root: str, rows: int) -> None:
    store = DatasetStore(root)
    for commit in store.history("crashflow"):
        version = store.read("crashflow", commit.version)
        assert len(version) == len({r.id for r in version}) <= rows
    assert len(store.quarantine("crashflow")) <= rows


def test_death_between_the_quarantine_and_the_rows_commit_is_recovered_by_a_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write is two commits (quarantine, then rows); dying between them loses nothing for good.

    The resolved row may then be in neither table (finding REL-7), but it is not counted as done,
    so the next run annotates it again.
    """
    from cattune.schemas import AnnotatedExample

    store = DatasetStore(tmp_path / "store")
    [failure] = batch_failures("t", 0)
    store.write("d", batch_rows("t", 0, 3), [failure])
    fields = failure.model_dump(exclude={"error", "raw_output", "retryable"})
    resolved = AnnotatedExample(**fields)

    real = DatasetStore._upsert

    def die_before_rows(self: DatasetStore, name: str, kind: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kind == "rows":
            raise KeyboardInterrupt("killed between the two commits")
        return real(self, name, kind, *args, **kwargs)

    monkeypatch.setattr(DatasetStore, "_upsert", die_before_rows)
    with pytest.raises(KeyboardInterrupt):
        store.write("d", [resolved])
    monkeypatch.undo()
    check_store(str(tmp_path / "store"), "d")
    config_hash = resolved.annotation.config_hash
    assert resolved.id not in store.annotated_ids("d", config_hash, include_final_quarantine=True)
    store.write("d", [resolved])
    assert resolved.id in {r.id for r in store.read("d")}
    assert resolved.id not in {q.id for q in store.quarantine("d")}
