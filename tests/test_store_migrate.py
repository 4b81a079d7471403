"""Two-table stores (before one commit per write): refused with how to migrate, then migrated.

``tests/data/store-two-tables`` was written by the two-table ``DatasetStore`` of commit 93b7619
(``rows/`` + ``quarantine/``, two commits a write), one second between writes:

* ``mixed`` v0: rows 0, 1 annotated; 2 and 3 (retryable) quarantined.
  v1: 2 and 4 annotated (2 leaves the quarantine), 3 quarantined again (not retryable);
  ``rows_skipped=2``. v2: row 0 re-annotated under config ``c2``.
* ``clean`` v0: rows 0-4, no quarantine table.

Texts hold CJK, an emoji with a variation selector and a combining accent.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from deltalake import DeltaTable

from cattune.flows.cli import main
from cattune.pipeline import store_migrate
from cattune.pipeline.release import make_release
from cattune.pipeline.store import DatasetStore
from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    Example,
    Meta,
    QuarantinedExample,
    StoreError,
)

LEGACY = Path(__file__).parent / "data" / "store-two-tables"
TEXTS = [
    ("Smoking: 1. Answer: ", "High Risk"),
    ("吸烟：是。风险：", "高"),
    ("Rain 🌧️ fell, so the road got wet. Why? ", "Rain"),
    ("Cafe\u0301 closed because the owner left. ", "closed"),
    ("Joan has 5 apples and buys 3. How many? ", "8"),
]


def text_id(i: int) -> str:
    return Example.create(*TEXTS[i]).id


@pytest.fixture()
def legacy(tmp_path: Path) -> DatasetStore:
    shutil.copytree(LEGACY, tmp_path / "store")
    return DatasetStore(tmp_path / "store")


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_two_table_dataset_is_refused_with_the_migrate_command(legacy: DatasetStore) -> None:
    hint = rf"cattune datasets migrate mixed --store {legacy.root}"
    calls = [
        lambda: legacy.read("mixed"),
        lambda: legacy.exists("mixed"),
        lambda: legacy.history("mixed"),
        lambda: legacy.quarantine("mixed"),
        lambda: legacy.annotated_ids("mixed", "c1"),
        lambda: legacy.write("mixed", []),
    ]
    for call in calls:
        with pytest.raises(StoreError, match=hint):
            call()
    assert legacy.names(legacy=True) == ["clean", "mixed"]


def test_cli_refusal_is_one_line(legacy: DatasetStore, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["datasets", "show", "mixed", "--store", legacy.root])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "cattune datasets migrate mixed" in err, err


def test_migration_keeps_every_version_its_lineage_and_time(legacy: DatasetStore) -> None:
    root = Path(legacy.root)
    old_files = files_of(root)
    old_history = DeltaTable(str(root / "mixed" / "rows")).history()
    old_times = sorted(entry["timestamp"] for entry in old_history)

    assert main(["datasets", "migrate", "--store", legacy.root]) == 0
    assert legacy.names(legacy=True) == []
    # The old tables are untouched: every file there before is there, byte for byte.
    new_files = files_of(root)
    assert {k: new_files[k] for k in old_files} == old_files

    history = legacy.history("mixed")
    assert [c.version for c in history] == [0, 1, 2]
    assert [int(c.timestamp.timestamp() * 1000) for c in history] == old_times
    assert [c.lineage.rows_skipped for c in history] == [0, 2, 0]
    assert history[2].lineage.config_hash == "c2"
    assert [(c.inserted, c.updated) for c in history] == [(2, 0), (2, 0), (0, 1)]

    annotated = {v: {r.id for r in legacy.read("mixed", v)} for v in range(3)}
    assert annotated[0] == {text_id(0), text_id(1)}
    assert annotated[1] == annotated[2] == {text_id(i) for i in (0, 1, 2, 4)}
    quarantined = {v: {q.id: q.retryable for q in legacy.quarantine("mixed", v)} for v in range(3)}
    assert quarantined[0] == {text_id(2): False, text_id(3): True}
    assert quarantined[1] == quarantined[2] == {text_id(3): False}
    by_id = {r.id: r for r in legacy.read("mixed")}
    assert by_id[text_id(0)].annotation.config_hash == "c2"
    assert by_id[text_id(1)].text == "吸烟：是。风险：高"
    (failure,) = legacy.quarantine("mixed")
    assert failure.text.startswith("Cafe\u0301") and failure.raw_output == '{"relations": []}'

    # Time travel by the original commit times.
    assert legacy.resolve_version("mixed", history[1].timestamp - timedelta(milliseconds=1)) == 0
    assert legacy.resolve_version("mixed", history[1].timestamp) == 1
    assert legacy.diff("mixed", 1, 2).relabelled == []  # same relations, new config
    assert len(legacy.read("clean")) == 5 and legacy.quarantine("clean") == []


def test_migrated_dataset_takes_new_runs_and_releases(legacy: DatasetStore, tmp_path: Path) -> None:
    store_migrate.migrate(legacy, "mixed")
    prompt, completion = TEXTS[3]
    example = Example.create(prompt, completion, Meta(source="v2"))
    resolved = AnnotatedExample(
        **example.model_dump(),
        relations=[],
        annotation=Annotation(annotator="test", annotator_version="2", config_hash="c1"),
    )
    result = legacy.write("mixed", [resolved])
    assert (result.version, result.inserted) == (3, 1)
    assert legacy.quarantine("mixed") == []
    assert legacy.quarantine("mixed", 2)[0].id == text_id(3)
    manifest = make_release(legacy, "mixed", 1, tmp_path / "rel")
    assert sum(manifest.rows_per_split.values()) == 4  # the quarantined row stays out


def test_killed_migration_is_refused_then_resumes(
    legacy: DatasetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store_migrate.write_deltalake
    calls: list[int] = []

    def die_after_one(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        if calls:
            raise KeyboardInterrupt("killed during the migration")
        calls.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(store_migrate, "write_deltalake", die_after_one)
    with pytest.raises(KeyboardInterrupt):
        store_migrate.migrate(legacy, "mixed")
    monkeypatch.undo()
    with pytest.raises(StoreError, match="cattune datasets migrate mixed"):
        legacy.read("mixed")
    assert store_migrate.migrate(legacy, "mixed") == 2
    assert store_migrate.migrate(legacy, "mixed") == 0
    assert [c.version for c in legacy.history("mixed")] == [0, 1, 2]
    assert len(legacy.read("mixed", 2)) == 4


def test_migrate_without_a_two_table_dataset(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "s")
    example = Example.create("x", "y")
    failure = QuarantinedExample(
        **example.model_dump(),
        annotation=Annotation(annotator="t", annotator_version="1"),
        error="bad",
    )
    store.write("new", [], [failure])
    with pytest.raises(StoreError, match="no two-table layout to migrate"):
        store_migrate.migrate(store, "new")
