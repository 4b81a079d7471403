"""The versioned dataset store: real Delta tables in a temporary directory."""

from __future__ import annotations

import multiprocessing
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from deltalake import write_deltalake
from hypothesis import given, settings
from hypothesis import strategies as st

from cattune.pipeline import store as store_module
from cattune.pipeline.names import parse_ref, validate_name
from cattune.pipeline.store import DatasetStore, Lineage, store_rows
from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    ConfigError,
    Example,
    Meta,
    QuarantinedExample,
    Relation,
    Span,
    StoreError,
    to_table,
)


def row(i: int, *, config: str = "c1", labelled: bool = True, split: str = "train"):
    example = Example.create(f"Smoking: {i}. Answer: ", "High Risk", Meta(split=split))
    relations = []
    if labelled:
        effect = Span(start=len(example.prompt), end=len(example.text))
        relations = [Relation(effect=effect, causes=[Span(start=0, end=7)])]
    annotation = Annotation(annotator="test", annotator_version="1", config_hash=config)
    return AnnotatedExample(**example.model_dump(), relations=relations, annotation=annotation)


def failed(i: int, *, retryable: bool = False, config: str = "c1") -> QuarantinedExample:
    example = Example.create(f"Smoking: {i}. Answer: ", "High Risk")
    annotation = Annotation(annotator="test", annotator_version="1", config_hash=config)
    return QuarantinedExample(
        **example.model_dump(), annotation=annotation, error="no cause found", retryable=retryable
    )


@pytest.fixture()
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(tmp_path / "store")


def test_write_read_versions_and_lineage(store: DatasetStore) -> None:
    lineage = Lineage(annotator="test", source="in.jsonl", source_sha256="ab" * 32, rows_skipped=3)
    first = store.write("stg", [row(i) for i in range(5)], [failed(99)], lineage)
    assert (first.version, first.inserted, first.quarantined) == (0, 5, 1)
    second = store.write("stg", [row(i) for i in range(5, 8)])
    assert (second.version, second.inserted) == (1, 3)

    assert [r.id for r in store.read("stg", 0)] == sorted(row(i).id for i in range(5))
    assert len(store.read("stg")) == 8

    history = store.history("stg")
    assert [c.version for c in history] == [0, 1]
    assert history[0].lineage is not None
    assert history[0].lineage.source_sha256 == "ab" * 32
    assert (history[0].lineage.rows_annotated, history[0].lineage.rows_quarantined) == (5, 1)
    assert history[0].lineage.rows_skipped == 3
    assert history[1].inserted == 3


def test_rows_round_trip_exactly(store: DatasetStore) -> None:
    rows = [row(i, split="test" if i % 2 else "train") for i in range(4)]
    store.write("rt", rows)
    assert store.read("rt") == sorted(rows, key=lambda r: r.id)


def test_time_travel_by_timestamp(store: DatasetStore) -> None:
    store.write("tt", [row(0)])
    between = datetime.now(UTC)
    time.sleep(0.05)
    store.write("tt", [row(1)])
    assert len(store.read("tt", between)) == 1
    assert len(store.read("tt", datetime.now(UTC))) == 2
    with pytest.raises(StoreError, match="did not exist yet"):
        store.read("tt", between - timedelta(days=1))
    with pytest.raises(StoreError, match="no version 7"):
        store.read("tt", 7)


def test_reannotation_upserts_by_id(store: DatasetStore) -> None:
    store.write("up", [row(i) for i in range(4)])
    result = store.write("up", [row(i, config="c2", labelled=False) for i in range(2, 6)])
    assert (result.inserted, result.updated) == (2, 2)
    rows = store.read("up")
    assert len(rows) == len({r.id for r in rows}) == 6
    by_id = {r.id: r for r in rows}
    assert by_id[row(2).id].annotation.config_hash == "c2"
    assert by_id[row(0).id].annotation.config_hash == "c1"


def test_duplicate_ids_in_one_write_keep_the_last(store: DatasetStore) -> None:
    store.write("dup", [row(1), row(1, config="c2")])
    (only,) = store.read("dup")
    assert only.annotation.config_hash == "c2"


def test_quarantine_holds_failures_until_resolved(store: DatasetStore) -> None:
    store.write("q", [row(0)], [failed(1), failed(2, retryable=True)])
    assert sorted(q.id for q in store.quarantine("q")) == sorted([failed(1).id, failed(2).id])
    store.write("q", [row(2)])
    assert [q.id for q in store.quarantine("q")] == [failed(1).id]
    assert store.quarantine("q", 0)[0].error == "no cause found"


def test_annotated_ids_for_incremental_runs(store: DatasetStore) -> None:
    assert len(store.annotated_ids("none", "c1")) == 0
    store.write("inc", [row(0), row(1, config="c2")], [failed(5), failed(6, retryable=True)])
    ids = [row(i).id for i in range(7)]
    done = store.annotated_ids("inc", "c1")
    assert [i for i in ids if i in done] == [row(0).id] and len(done) == 1
    final = store.annotated_ids("inc", "c1", include_final_quarantine=True)
    assert [i for i in ids if i in final] == [row(0).id, row(5).id] and len(final) == 2
    assert len(store.annotated_ids("inc", "c1' OR 'x' = 'x")) == 0  # a hash is a value, not SQL


def test_diff_reports_added_removed_relabelled(store: DatasetStore) -> None:
    store.write("df", [row(i) for i in range(3)])
    store.write("df", [row(1, labelled=False), row(3)])
    diff = store.diff("df", 0, 1)
    assert diff.added == [row(3).id]
    assert diff.removed == []
    assert diff.relabelled == [row(1).id]
    assert diff.unchanged == 2
    assert store.diff("df", 1, 0).removed == [row(3).id]


def test_list_and_missing_dataset(store: DatasetStore) -> None:
    assert store.list() == []
    store.write("b-set", [row(0)], [failed(1)])
    store.write("a.set", [row(0), row(1)])
    listed = store.list()
    assert [(d.name, d.version, d.rows, d.quarantined) for d in listed] == [
        ("a.set", 0, 2, 0),
        ("b-set", 0, 1, 1),
    ]
    with pytest.raises(StoreError, match="no dataset 'nope'"):
        store.read("nope")


def test_empty_write_makes_no_commit(store: DatasetStore) -> None:
    store.write("e", [row(0)])
    result = store.write("e", [])
    assert (result.version, result.committed) == (0, False)


def test_url_roots_pass_through(tmp_path: Path) -> None:
    store = DatasetStore(f"file://{tmp_path}/urlstore")
    store.write("u", [row(0)])
    assert [d.name for d in store.list()] == ["u"]
    assert len(store.read("u")) == 1


@pytest.mark.parametrize(
    "bad", ["", "../etc", "a/b", "a\\b", ".hidden", "-x", "a..b", "x" * 129, "sp ace", "é"]
)
def test_invalid_names_are_config_errors(store: DatasetStore, bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid dataset name"):
        store.write(bad, [row(0)])


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True))
def test_valid_names_stay_one_segment(name: str) -> None:
    if ".." in name:
        with pytest.raises(ConfigError):
            validate_name(name)
        return
    assert validate_name(name) == name
    assert "/" not in name and name not in (".", "..")


@settings(max_examples=30)
@given(st.text(min_size=1, max_size=30))
def test_arbitrary_names_never_escape_the_root(name: str) -> None:
    try:
        validate_name(name)
    except ConfigError:
        return
    root = Path("/store")
    assert (root / name).resolve().parent == root


def test_parse_ref() -> None:
    assert parse_ref("stg") == ("stg", None)
    assert parse_ref("stg@3") == ("stg", 3)
    assert parse_ref("stg@2026-11-22T10:00:00Z")[1] == datetime(2026, 11, 22, 10, tzinfo=UTC)
    with pytest.raises(ConfigError, match="invalid dataset version"):
        parse_ref("stg@yesterday")


def test_conflicting_writer_is_retried_or_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer commits between our read and our commit: retried, or a clear error."""
    raced: list[bool] = []
    real_table = store_module.DeltaTable

    class RacingTable(real_table):  # type: ignore[misc, valid-type]
        def merge(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            merger = super().merge(*args, **kwargs)
            if not raced:
                raced.append(True)
                DatasetStore(tmp_path / "s").write("race", [row(100 + len(raced))])
            return merger

    monkeypatch.setattr(store_module, "DeltaTable", RacingTable)
    DatasetStore(tmp_path / "s").write("race", [row(0)])
    retried = DatasetStore(tmp_path / "s").write("race", [row(1)])
    assert raced and retried.version == 2
    assert len(DatasetStore(tmp_path / "s").read("race")) == 3

    raced.clear()
    with pytest.raises(StoreError, match="kept changing under this write"):
        DatasetStore(tmp_path / "s", max_retries=0).write("race", [row(2)])
    rows = DatasetStore(tmp_path / "s").read("race")
    assert len(rows) == len({r.id for r in rows}) == 3


def _write_many(root: str, start: int, barrier) -> int:  # noqa: ANN001
    barrier.wait()
    store = DatasetStore(root, retry_delay=0.01, max_retries=20)
    for chunk in range(3):
        store.write("shared", [row(i) for i in range(start + chunk * 5, start + chunk * 5 + 10)])
    return 0


def test_concurrent_processes_never_corrupt(tmp_path: Path) -> None:
    root = str(tmp_path / "s")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_write_many, args=(root, s, barrier)) for s in (0, 7)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    store = DatasetStore(root)
    rows = store.read("shared")
    assert sorted(r.id for r in rows) == sorted({row(i).id for i in range(0, 27)})
    for version in range(store.version("shared") + 1):
        ids = [r.id for r in store.read("shared", version)]
        assert len(ids) == len(set(ids))


def _create_racing(root: str, names: list[str], barrier, offset: int) -> None:  # noqa: ANN001
    store = DatasetStore(root, retry_delay=0.01, max_retries=20)
    for name in names:
        barrier.wait()
        store.write(name, [row(i) for i in range(offset, offset + 10)])


def test_racing_creators_never_duplicate_ids(tmp_path: Path) -> None:
    """Two writers creating one dataset at the same moment: the loser merges, no blind append."""
    root = str(tmp_path / "s")
    names = [f"race{k}" for k in range(15)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=_create_racing, args=(root, names, barrier, offset))
        for offset in (0, 5)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    store = DatasetStore(root)
    for name in names:
        for version in range(store.version(name) + 1):
            ids = [r.id for r in store.read(name, version)]
            assert len(ids) == len(set(ids)), (name, version)
        assert len(store.read(name)) == 15


def test_all_rows_quarantined_still_makes_a_version(store: DatasetStore) -> None:
    result = store.write("allbad", [], [failed(1)], Lineage(annotator="test", rows_skipped=2))
    assert (result.version, result.committed, result.quarantined) == (0, True, 1)
    assert store.read("allbad") == []
    assert store.history("allbad")[0].lineage.rows_quarantined == 1


def test_default_root_is_under_cattune_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATTUNE_HOME", str(tmp_path / "home"))
    store = DatasetStore()
    assert store.root == str(tmp_path / "home" / "store")
    store.write("d", [row(0)])
    assert (tmp_path / "home" / "store" / "d" / "table" / "_delta_log").is_dir()


def test_rows_failures_and_resolutions_land_in_one_commit(store: DatasetStore) -> None:
    store.write("one", [row(0)], [failed(1), failed(2, retryable=True)])
    log_dir = Path(store.uri("one")) / "_delta_log"
    before = sorted(p.name for p in log_dir.glob("*.json"))
    result = store.write("one", [row(1), row(3)], [failed(4)])  # row 1 resolves its failure
    after = sorted(p.name for p in log_dir.glob("*.json"))
    assert after == [*before, "00000000000000000001.json"]
    assert (result.version, result.inserted, result.quarantine_version) == (1, 2, 1)
    assert {q.id for q in store.quarantine("one")} == {failed(2).id, failed(4).id}
    assert {q.id for q in store.quarantine("one", 0)} == {failed(1).id, failed(2).id}
    assert {r.id for r in store.read("one")} == {row(0).id, row(1).id, row(3).id}


def test_a_failure_of_an_annotated_id_keeps_both(store: DatasetStore) -> None:
    """Re-annotating under a new config fails: the old labels stay, the failure is recorded."""
    store.write("both", [row(0)])
    store.write("both", [], [failed(0, config="c2")])
    assert [r.annotation.config_hash for r in store.read("both")] == ["c1"]
    assert [q.annotation.config_hash for q in store.quarantine("both")] == ["c2"]
    assert store.list()[0].rows == store.list()[0].quarantined == 1


writes = st.lists(
    st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=6), min_size=1, max_size=4
)


@settings(max_examples=12, deadline=None)
@given(writes)
def test_every_version_matches_a_model_of_the_upsert(batches: list) -> None:
    """Versions hold what a dict model of (annotated, quarantined) by id says, after each write."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = DatasetStore(tmp)
        annotated: dict[str, str] = {}
        quarantined: dict[str, str] = {}
        snapshots = []
        for number, batch in enumerate(batches):
            config = f"w{number}"
            oks = [row(i, config=config) for i, ok in batch if ok]
            fails = [failed(i, config=config) for i, ok in batch if not ok]
            result = store.write("m", oks, fails)
            ok_ids = {r.id for r in oks}
            for r in oks:
                annotated[r.id] = config
                quarantined.pop(r.id, None)
            for q in fails:
                if q.id not in ok_ids:
                    quarantined[q.id] = config
            snapshots.append((result.version, dict(annotated), dict(quarantined)))
        for version, want_rows, want_failed in snapshots:
            got = {r.id: r.annotation.config_hash for r in store.read("m", version)}
            bad = {q.id: q.annotation.config_hash for q in store.quarantine("m", version)}
            assert (got, bad) == (want_rows, want_failed)


def test_write_parts_from_parquet_files_is_one_commit_like_write(
    store: DatasetStore, tmp_path: Path
) -> None:
    """Staged files stream into one merge; a failure of an annotated id or a repeat is left out."""
    import pyarrow.parquet as pq

    store.write("files", [row(0)], [failed(1), failed(2)])
    parts = tmp_path / "parts"
    parts.mkdir()
    for name, records, model in [
        ("a0", [row(1), row(3)], AnnotatedExample),
        ("a1", [row(4)], AnnotatedExample),
        ("q0", [failed(3), failed(5)], QuarantinedExample),  # row 3 annotates: dropped
        ("q1", [failed(5), failed(6)], QuarantinedExample),  # failure 5 repeats: once
    ]:
        pq.write_table(to_table(records, model), parts / f"{name}.parquet")
    result = store.write_parts(
        "files",
        [str(parts / "a0.parquet"), str(parts / "a1.parquet")],
        [str(parts / "q0.parquet"), str(parts / "q1.parquet")],
        Lineage(write_id="files-1"),
    )
    assert (result.version, result.inserted, result.updated, result.quarantined) == (1, 3, 0, 2)
    assert {r.id for r in store.read("files")} == {row(i).id for i in (0, 1, 3, 4)}
    assert {q.id for q in store.quarantine("files")} == {failed(i).id for i in (2, 5, 6)}
    lineage = store.history("files")[-1].lineage
    assert lineage is not None and (lineage.rows_annotated, lineage.rows_quarantined) == (3, 2)

    with pytest.raises(StoreError, match="repeat an id"):
        store.write_parts("files", [str(parts / "a0.parquet"), str(parts / "a0.parquet")])
    assert store.version("files") == 1


def test_a_version_holding_a_duplicate_id_is_reported(tmp_path: Path) -> None:
    """What a blind append by a racing writer would leave; the check names the id."""
    store = DatasetStore(tmp_path)
    store.write("dup", [row(0), row(1)])
    empty = to_table([], QuarantinedExample)
    write_deltalake(
        store.uri("dup"), store_rows(to_table([row(1)], AnnotatedExample), empty), mode="append"
    )
    store._check_unique("dup", 0)
    with pytest.raises(StoreError, match=f"duplicate ids \\['{row(1).id}'\\]"):
        store._check_unique("dup", 1)
