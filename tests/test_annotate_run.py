"""The one annotate pipeline (file mode and flow): batches, staged Parquet pairs, shard plans."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cattune.annotators.registry import get_annotator
from cattune.pipeline.annotate_run import (
    RunCounts,
    StagedPair,
    annotate_rows,
    plan_shards,
    read_examples,
)
from cattune.pipeline.id_set import IdSet
from cattune.pipeline.sources import SourceRow, read_source
from cattune.pipeline.store import DatasetStore
from cattune.schemas import AnnotatedExample, Example, QuarantinedExample, from_table

UNICODE_ROWS = [  # CAT form, as the authors' file: emoji, a combining mark, CJK, a ZWJ sequence
    {
        "input": "🧪 Smoking: 7, e\u0301tage: 2 Answer: ",
        "target": "High Risk",
        "important": [{"High Risk": ["Smoking: 7", "e\u0301tage: 2"]}],
    },
    {
        "input": "漢字 Smoking: 1, 👩\u200d🔬 Weight: 3 Answer: ",
        "target": "Low Risk",
        "important": [{"Low Risk": ["漢字", "👩\u200d🔬"]}],
    },
]


def stg_source(reference_data: Path, tmp_path: Path, rows: int, extra: list[str]) -> Path:
    lines = (reference_data / "STG" / "spurious_token_game_train3_S.jsonl").read_text()
    path = tmp_path / "stg.jsonl"
    body = lines.splitlines()[:rows] + [json.dumps(r, ensure_ascii=False) for r in UNICODE_ROWS]
    path.write_text("\n".join(body + extra) + "\n", encoding="utf-8")
    return path


def read_pair(pair: StagedPair) -> tuple[list[AnnotatedExample], list[QuarantinedExample]]:
    return (
        from_table(pq.read_table(pair.annotated), AnnotatedExample),
        from_table(pq.read_table(pair.quarantined), QuarantinedExample),
    )


def test_staged_pair_holds_every_row_once_with_counts(reference_data: Path, tmp_path: Path) -> None:
    source = stg_source(reference_data, tmp_path, 70, ["{broken", "[1, 2]"])
    annotator = get_annotator("given")
    rows = list(read_source(source, format="cat"))
    pair = StagedPair.at(tmp_path / "out" / "run")
    batches = annotate_rows(rows, annotator, source=source.name, batch_size=16)
    counts = pair.stage(batches, annotator, RunCounts())

    good, bad = read_pair(pair)
    assert len(good) + len(bad) == len(rows) == 74
    assert Counter(r.prompt for r in good) + Counter(r.prompt for r in bad if r.completion) == (
        Counter(r.example.prompt for r in rows if r.example is not None)
    )
    assert [q.prompt for q in bad if "malformed" in q.error] == ["{broken", "[1, 2]"]
    assert (counts.rows_annotated, counts.rows_quarantined) == (len(good), len(bad))
    assert counts.rows_malformed == 2
    assert counts.quarantine_reasons["malformed source row"] == 2
    assert sum(counts.quarantine_reasons.values()) == len(bad)
    assert pair.read_counts() == counts
    assert sorted(p.name for p in pair_dir(pair).iterdir()) == [
        "run.annotated.parquet",
        "run.quarantined.parquet",
    ]


def pair_dir(pair: StagedPair) -> Path:
    return Path(pair.annotated).parent


def test_a_failed_stage_leaves_no_file(tmp_path: Path) -> None:
    annotator = get_annotator("given")

    def rows() -> Iterator[SourceRow]:
        yield SourceRow(1, Example.create("🧪 Smoking: 7 Answer: ", "High Risk"), None, "")
        raise OSError("disk went away")

    pair = StagedPair.at(tmp_path / "run")
    with pytest.raises(OSError, match="disk went away"):
        pair.stage(
            annotate_rows(rows(), annotator, source="s", batch_size=1), annotator, RunCounts()
        )
    assert list(tmp_path.iterdir()) == []
    assert not pair.exists()


def test_plan_skips_done_ids_reads_repeats_once_and_is_reused(
    reference_data: Path, tmp_path: Path
) -> None:
    source = stg_source(reference_data, tmp_path, 50, ["{broken"])
    annotator = get_annotator("given")
    rows = list(read_source(source, format="cat"))
    examples = [r.example for r in rows if r.example is not None]
    done = IdSet([pa.array([e.id for e in examples[:10]])])
    repeated = [*rows, rows[20], rows[-1]]  # one repeated example, one repeated malformed row
    staging = tmp_path / "staging"
    plan = plan_shards(
        repeated, annotator, source="stg.jsonl", done=done, shard_size=8, staging=staging
    )

    planned = [e for shard in plan.shards for e in read_examples(shard)]
    distinct = list(dict.fromkeys(e.id for e in examples))
    assert [e.id for e in planned] == [i for i in distinct if i not in done]
    assert len(planned) == len(distinct) - len(done)
    assert [len(read_examples(s)) for s in plan.shards[:-1]] == [8] * (len(plan.shards) - 1)
    counts = plan.counts
    assert counts.rows_read == len(repeated)
    assert counts.rows_skipped == len(done)
    assert counts.rows_duplicate == len(examples) - len(distinct) + 1
    assert counts.rows_malformed == counts.rows_quarantined == 2
    _, bad = read_pair(plan.malformed)
    assert [q.prompt for q in bad] == ["{broken", "{broken"]

    def unread() -> Iterator[SourceRow]:
        raise AssertionError("a staged plan must not read the source again")
        yield

    again = plan_shards(
        unread(), annotator, source="x", done=IdSet(), shard_size=3, staging=staging
    )
    assert again == plan


@settings(max_examples=25, deadline=None)
@given(
    texts=st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=30),
    shard_size=st.integers(1, 7),
)
def test_plan_partitions_any_rows(texts: list[str], shard_size: int) -> None:
    """Every distinct example lands in exactly one shard, in first-seen order."""
    import tempfile

    annotator = get_annotator("given")
    rows = [SourceRow(i + 1, Example.create(t, "x"), None, t) for i, t in enumerate(texts)]
    with tempfile.TemporaryDirectory() as tmp:
        plan = plan_shards(
            rows, annotator, source="s", done=IdSet(), shard_size=shard_size, staging=Path(tmp)
        )
        planned = [e for shard in plan.shards for e in read_examples(shard)]
    assert [e.prompt for e in planned] == list(dict.fromkeys(texts))
    assert plan.counts.rows_duplicate == len(texts) - len(set(texts))
    assert len(plan.shards) == -(-len(set(texts)) // shard_size)


def test_staging_dir_removes_folders_staged_against_another_version(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store")
    old = store.staging_dir("d", "abc", -1)
    other = store.staging_dir("d", "xyz", -1)
    for folder in (old, other):
        folder.mkdir(parents=True)
    current = store.staging_dir("d", "abc", 0)
    assert current == tmp_path / "store" / "d" / "_staging" / "abc-v0"
    assert not old.exists() and other.exists()
    assert store.names() == []


def test_object_store_staging_stays_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATTUNE_HOME", str(tmp_path / "home"))
    staging = DatasetStore("s3://bucket/prefix").staging_dir("d", "abc", 3)
    assert staging.is_relative_to(tmp_path / "home" / "staging")
    assert staging.parts[-2:] == ("d", "abc-v3")
