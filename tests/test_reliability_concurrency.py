"""Four processes append to one dataset at once, through the store API the annotate flow uses.

The first round starts on an empty store, so the four writers also race to create the tables.
Afterwards: every writer's rows are present (no lost commit), every version reads without
duplicate ids or partial batches, the history is linear and each write committed exactly once.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

from reliability_helpers import check_store, store_writer

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
