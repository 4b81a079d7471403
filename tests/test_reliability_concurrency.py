"""Four processes append to one dataset at once: through the store API, and as four real flows.

The first round starts on an empty store, so the four writers also race to create the tables.
Afterwards: every writer's rows are present (no lost commit), every version reads without
duplicate ids or partial batches, the history is linear and each write committed exactly once.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from reliability_helpers import check_store, examples, source_rows, store_writer, write_jsonl

from cattune.pipeline.store import DatasetStore

WRITERS = 4
ROUNDS = 2
BATCHES = 4
SIZE = 10


def test_four_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["cattune.pipeline.store", "reliability_helpers"])
    root, name = str(tmp_path / "store"), "shared"
    tags = []
    for round_ in range(ROUNDS):
        counters = [context.Value("i", 0) for _ in range(WRITERS)]
        writers = []
        for w in range(WRITERS):
            tag = f"r{round_}w{w}"
            tags.append(tag)
            writers.append(
                context.Process(
                    target=store_writer, args=(root, name, tag, BATCHES, SIZE, counters[w])
                )
            )
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(300)
        assert [w.exitcode for w in writers] == [0] * WRITERS
        assert [c.value for c in counters] == [BATCHES] * WRITERS

    latest = check_store(root, name)
    assert latest == {f"{tag}-{b}": SIZE for tag in tags for b in range(BATCHES)}
    store = DatasetStore(root)
    rows_history = store.history(name)
    write_ids = Counter(c.lineage.write_id for c in rows_history if c.lineage)
    assert write_ids == Counter(f"{tag}-{b}" for tag in tags for b in range(BATCHES))
    quarantine = store.quarantine(name)
    assert len(quarantine) == len({q.id for q in quarantine}) == len(tags) * BATCHES
    # The writers really overlapped: their commits interleave in the history.
    order = [c.lineage.write_id.split("-")[0] for c in rows_history if c.lineage]
    switches = sum(a != b for a, b in zip(order, order[1:], strict=False))
    assert switches > len(tags) - 1


FLOW = """
import sys
from cattune.flows.annotate import annotate_flow
summary = annotate_flow(sys.argv[1], "together", "given", store=sys.argv[2])
print("SUMMARY", summary.model_dump_json(), flush=True)
"""


@pytest.mark.prefect
def test_four_annotate_flows_at_once_on_one_dataset(prefect_harness: None, tmp_path: Path) -> None:
    """Four real flow runs (subprocesses, one Prefect server), overlapping sources, one dataset."""
    from prefect.settings import PREFECT_API_URL

    env = os.environ | {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    store_root = str(tmp_path / "store")
    sources = []
    for w in range(WRITERS):  # rows w*50 .. w*50+99: each source overlaps the next by 50 rows
        path = tmp_path / f"rows{w}.jsonl"
        rows = source_rows(w * 50 + 100, start=w * 50)
        for row in rows:  # relations given in the source: the "given" annotator places them
            cause = row["prompt"].split(", ")[0].split(". ")[1]
            row["relations"] = {"relations": [{"effect": row["completion"], "causes": [cause]}]}
        sources.append(write_jsonl(path, rows))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", FLOW, str(source), store_root],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for source in sources
    ]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * WRITERS, outputs
    summaries = [
        json.loads(line.split(" ", 1)[1])
        for out in outputs
        for line in out.splitlines()
        if line.startswith("SUMMARY ")
    ]
    assert len(summaries) == WRITERS
    # A flow that starts after its neighbours committed finds its rows done and skips them.
    for summary in summaries:
        assert summary["rows_skipped"] + summary["rows_annotated"] == 100
        assert summary["committed"] == (summary["rows_annotated"] > 0)
    store = DatasetStore(store_root)
    rows = store.read("together")
    assert len(rows) == len({r.id for r in rows})
    assert {r.id for r in rows} == {e.id for e in examples((WRITERS - 1) * 50 + 100)}
    history = store.history("together")
    assert [c.version for c in history] == list(range(len(history)))
    runs = Counter(c.lineage.flow_run_id for c in history if c.lineage)
    assert runs == Counter(s["flow_run_id"] for s in summaries if s["committed"])
