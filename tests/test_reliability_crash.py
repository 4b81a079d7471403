"""SIGKILL at random points: the store stays readable, whole, and a re-run completes.

Two layers, chosen for cost (a subprocess Prefect flow pays ~5-10 s of imports and start-up):

* 20 kills of a writer process that commits through ``DatasetStore.write`` (the call the annotate
  flow's commit task makes) in a loop; the writer is forked from a ``forkserver`` that has the
  store already imported, so a kill-and-check round costs well under a second. Kills land during
  Delta merges and log writes, since the writer does nothing else.
* 12 kills of one write (rows, a resolved failure, new failures) at evenly spaced moments from
  its start to just after its commit: the dataset is then exactly as before or exactly as after
  (rows and quarantine change in one Delta commit, so finding REL-7 has no window left).
* 4 kills of the real annotate flow in a subprocess (against the session's Prefect test server,
  LLM annotator on a scripted server): during the LLM calls, at a random moment, right after the
  first shard finished and right after the last (in the commit task). Every version then holds each
  source row exactly once, annotated or quarantined; a re-run of the flow completes (reusing the
  shards the killed run staged) and leaves no staging behind.
* 2 kills of the flow at exact points, from inside its process: every shard staged but the commit
  not written, and the commit written but the staging not yet removed. The re-run commits the
  staged shards without annotating them again, or finds the commit and drops the staging: never a
  second commit of the same staged files.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

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
from cattune.schemas import AnnotatedExample

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
            check_rows_and_failures_together(root, name, since=checked)
            assert all(count == SIZE for count in latest.values())
            checked = DatasetStore(root).version(name)
    assert progressed >= KILLS // 2

    # A re-run after the last kill completes and adds its rows; the whole history reads.
    store = DatasetStore(root)
    before = store.version(name)
    result = store.write(name, batch_rows("rerun", 0, SIZE), lineage=Lineage(write_id="rerun-0"))
    assert result.committed and result.version > before
    assert check_store(root, name)["rerun-0"] == SIZE


def check_rows_and_failures_together(root: str, name: str, since: int) -> None:
    """Each write holds rows and one failure of its batch: a version has both or neither."""
    store = DatasetStore(root)
    for version in range(since, store.version(name) + 1):
        row_batches = {r.meta.extra["batch"] for r in store.read(name, version)}
        failed = {q.text for q in store.quarantine(name, version)}
        failure_batches = {
            "-".join(m.groups()) for m in map(FAILED_ROW.match, failed) if m is not None
        }
        assert len(failure_batches) == len(failed)
        # A write of batch b re-writes the rows of b - 1 too, so rows name the same batches.
        assert row_batches == failure_batches, f"version {version}: rows and quarantine differ"


FAILED_ROW = re.compile(r"Writer (\S+) batch (\d+) failed row")

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
    roots = [str(tmp_path / f"store-{attempt}") for attempt in range(4)]
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
            started, first_done, shards_done = (
                threading.Event(),
                threading.Event(),
                threading.Event(),
            )

            def read(
                out=process.stdout, lines=lines, started=started, first=first_done, end=shards_done
            ) -> None:
                for line in out:  # type: ignore[union-attr]
                    lines.append(line)
                    if "to annotate" in line:
                        started.set()
                    finished = sum("done:" in seen and "shard" in seen for seen in lines)
                    if finished >= 1:
                        first.set()
                    if finished == SHARDS:
                        end.set()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            try:
                assert started.wait(120), "".join(lines[-20:])
                if attempt == 0:  # during the LLM calls
                    time.sleep(0.5)
                elif attempt == 1:  # anywhere
                    time.sleep(rng.uniform(0.2, 3.0))
                elif attempt == 2:  # right after the first shard
                    assert first_done.wait(120), "".join(lines[-20:])
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
                committed_before = DatasetStore(root).exists("crashflow")
                summary = annotate_flow(
                    str(source), "crashflow", "llm", PACK, options, store=root, shard_size=40
                )
                if root == roots[3] and not committed_before:  # killed after the last shard
                    assert summary.shards_reused == SHARDS
                assert staged(root) == []
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


def staged(root: str) -> list[Path]:
    return sorted((Path(root) / "crashflow" / "_staging").glob("*"))


POINT_FLOW = """
import os, signal, sys
from cattune.flows import annotate
from cattune.pipeline.store import DatasetStore

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[3] == "before-commit":
    DatasetStore.write_parts = die
else:
    annotate.remove_staging = die
annotate.annotate_flow(
    sys.argv[1], "crashflow", annotator="given", format="cat", store=sys.argv[2], shard_size=25
)
"""


@pytest.mark.prefect
@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
def test_sigkill_between_staging_and_commit_then_rerun(
    prefect_harness: None, reference_data: Path, tmp_path: Path, point: str
) -> None:
    from prefect.settings import PREFECT_API_URL

    from cattune.flows.annotate import annotate_flow

    lines = (reference_data / "STG" / "spurious_token_game_train3_S.jsonl").read_text()
    source = tmp_path / "stg.jsonl"
    source.write_text("\n".join(lines.splitlines()[:100]) + "\n")
    root = str(tmp_path / "store")
    env = os.environ | {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    killed = subprocess.run(
        [sys.executable, "-c", POINT_FLOW, str(source), root, point],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    (folder,) = staged(root)
    shards = sorted(folder.glob("shard-*.annotated.parquet"))
    assert len(shards) == 4
    store = DatasetStore(root)
    assert store.exists("crashflow") == (point == "after-commit")

    summary = annotate_flow(
        str(source), "crashflow", annotator="given", format="cat", store=root, shard_size=25
    )
    assert summary.version == 0
    assert [c.version for c in store.history("crashflow")] == [0]
    if point == "before-commit":
        assert (summary.committed, summary.shards_reused, summary.rows_annotated) == (True, 4, 100)
    else:
        assert (summary.committed, summary.rows_skipped, summary.rows_annotated) == (False, 100, 0)
    assert len(store.read("crashflow")) + len(store.quarantine("crashflow")) == 100
    assert staged(root) == []


def check_flow_store(root: str, rows: int) -> None:
    """Every version holds each source row once: annotated or quarantined, never neither."""
    store = DatasetStore(root)
    for commit in store.history("crashflow"):
        version = store.read("crashflow", commit.version)
        failed = store.quarantine("crashflow", commit.version)
        ids = [r.id for r in version] + [q.id for q in failed]
        assert len(ids) == len(set(ids)) == rows, f"version {commit.version} is partial"


def one_write(root: str, done: Any) -> None:
    """A child process: one write that annotates, resolves a failure and quarantines new rows."""
    rows = batch_rows("t", 1, SIZE) + resolved_rows()
    DatasetStore(root).write("d", rows, batch_failures("t", 1), Lineage(write_id="t-1"))
    with done.get_lock():
        done.value += 1


def resolved_rows() -> list[AnnotatedExample]:
    (failure,) = batch_failures("t", 0)
    fields = failure.model_dump(exclude={"error", "raw_output", "retryable"})
    return [AnnotatedExample(**fields)]


def test_a_write_killed_at_any_moment_is_all_or_nothing(tmp_path: Path) -> None:
    """SIGKILL at 11 evenly spaced moments of one write (rows, a resolution, new failures), and
    right after its commit.

    The dataset is then exactly as before (version 0) or exactly as after (version 1): rows and
    quarantine change in one commit, so no row can be in neither (formerly finding REL-7).
    """
    from cattune.schemas import QuarantinedExample

    base = tmp_path / "base"
    store = DatasetStore(base)
    store.write("d", batch_rows("t", 0, SIZE), batch_failures("t", 0))
    before_rows = {r.id for r in store.read("d")}
    (old_failure,) = batch_failures("t", 0)
    (new_failure,) = batch_failures("t", 1)
    after_rows = before_rows | {r.id for r in batch_rows("t", 1, SIZE) + resolved_rows()}
    states = {
        0: (before_rows, {old_failure.id}),
        1: (after_rows, {new_failure.id}),
    }

    context = forkserver()

    def run(root: Path, kill_after: float | None) -> int:
        shutil.copytree(base, root)
        done = context.Value("i", 0)
        writer = context.Process(target=one_write, args=(str(root), done), daemon=True)
        began = time.monotonic()
        writer.start()
        if kill_after is None:
            writer.join(60)
            assert writer.exitcode == 0
            return int((time.monotonic() - began) * 1000)
        time.sleep(max(kill_after, 0.0))
        while kill_after < 0 and not done.value and writer.is_alive():
            time.sleep(0.001)  # the last round kills right after the commit
        writer.kill()
        writer.join(10)
        return done.value

    run(tmp_path / "warm", None)  # starts the forkserver
    duration = run(tmp_path / "timed", None) / 1000
    outcomes = set()
    for step in range(12):
        root = tmp_path / f"kill-{step}"
        finished = run(root, duration * step / 10 if step < 11 else -1.0)
        after = DatasetStore(root)
        version = after.version("d")
        failures: list[QuarantinedExample] = after.quarantine("d")
        got = ({r.id for r in after.read("d")}, {q.id for q in failures})
        assert got == states[version], f"kill {step}: version {version} is partial"
        assert version == 1 or not finished
        assert [c.version for c in after.history("d")] == list(range(version + 1))
        outcomes.add(version)
    assert outcomes == {0, 1}
