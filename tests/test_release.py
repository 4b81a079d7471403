"""Releases: Parquet snapshots with a manifest, loadable by datasets / pyarrow / pandas."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cattune.pipeline.release import make_release, verify_release
from cattune.pipeline.store import DatasetStore, Lineage
from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    Example,
    Meta,
    Relation,
    Span,
    StoreError,
    file_sha256,
    from_table,
    schema_version_of,
)


def row(i: int, split: str | None) -> AnnotatedExample:
    example = Example.create(f"Weight: {i}. Answer: ", "Low Risk", Meta(split=split, label="low"))
    effect = Span(start=len(example.prompt), end=len(example.text))
    return AnnotatedExample(
        **example.model_dump(),
        relations=[Relation(effect=effect, causes=[Span(start=0, end=6)])],
        annotation=Annotation(annotator="test", annotator_version="1", config_hash="c"),
    )


@pytest.fixture()
def store(tmp_path: Path) -> DatasetStore:
    store = DatasetStore(tmp_path / "store")
    rows = [row(i, None) for i in range(7)] + [row(i, "test") for i in range(100, 103)]
    store.write("ds", rows, lineage=Lineage(annotator="test", source="a.jsonl"))
    store.write("ds", [row(i, "test") for i in range(200, 202)])
    return store


def test_release_layout_manifest_and_loaders(store: DatasetStore, tmp_path: Path) -> None:
    out = tmp_path / "rel"
    manifest = make_release(store, "ds", None, out, shard_rows=3)
    assert manifest.version == 1
    assert manifest.rows_per_split == {"train": 7, "test": 5}
    paths = sorted(f.path for f in manifest.files)
    assert paths == [
        "data/test-00000-of-00002.parquet",
        "data/test-00001-of-00002.parquet",
        "data/train-00000-of-00003.parquet",
        "data/train-00001-of-00003.parquet",
        "data/train-00002-of-00003.parquet",
    ]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["dataset"] == "ds" and on_disk["version"] == 1
    for item in manifest.files:
        assert item.sha256 == file_sha256(out / item.path)
        assert item.bytes == (out / item.path).stat().st_size
        assert not (out / item.path).stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert [entry["source"] for entry in manifest.lineage if "source" in entry] == ["a.jsonl"]
    assert verify_release(out) == manifest

    import datasets

    loaded = datasets.load_dataset("parquet", data_dir=str(out / "data"))
    assert {name: len(split) for name, split in loaded.items()} == {"train": 7, "test": 5}
    first = loaded["train"][0]
    assert first["relations"][0]["causes"][0] == {"start": 0, "end": 6}

    table = pq.read_table(out / "data" / "train-00000-of-00003.parquet")
    assert schema_version_of(table.schema) == manifest.schema_version
    released = {r.id: r for r in from_table(pq.read_table(out / "data"), AnnotatedExample)}
    assert released == {r.id: r for r in store.read("ds", 1)}
    frame = pd.read_parquet(out / "data")
    assert len(frame) == 12


def test_release_of_an_old_version(store: DatasetStore, tmp_path: Path) -> None:
    manifest = make_release(store, "ds", 0, tmp_path / "v0")
    assert manifest.version == 0
    assert manifest.rows_per_split == {"train": 7, "test": 3}
    assert [f.path for f in manifest.files][0] == "data/test-00000-of-00001.parquet"


def test_release_refuses_to_overwrite(store: DatasetStore, tmp_path: Path) -> None:
    out = tmp_path / "rel"
    make_release(store, "ds", None, out)
    before = {p: file_sha256(p) for p in out.rglob("*") if p.is_file()}
    with pytest.raises(StoreError, match="already exists"):
        make_release(store, "ds", 0, out)
    assert {p: file_sha256(p) for p in out.rglob("*") if p.is_file()} == before


def test_failed_release_leaves_nothing(store: DatasetStore, tmp_path: Path) -> None:
    store.write("bad", [row(1, "has space")])
    with pytest.raises(StoreError, match="split name"):
        make_release(store, "bad", None, tmp_path / "r")
    assert list(tmp_path.iterdir()) == [tmp_path / "store"]


def _writable(path: Path) -> Path:
    path.chmod(0o644)
    return path


def test_verify_reports_changed_missing_and_extra(store: DatasetStore, tmp_path: Path) -> None:
    out = tmp_path / "rel"
    manifest = make_release(store, "ds", None, out, shard_rows=4)
    changed, missing = (out / f.path for f in manifest.files[:2])
    with _writable(changed).open("ab") as handle:
        handle.write(b"x")
    _writable(missing).unlink()
    (out / "data" / "train-00009-of-00009.parquet").write_bytes(b"")
    with pytest.raises(StoreError) as caught:
        verify_release(out)
    message = str(caught.value)
    assert f"changed file {manifest.files[0].path}" in message
    assert f"missing file {manifest.files[1].path}" in message
    assert "extra file data/train-00009-of-00009.parquet" in message


def test_verify_needs_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="manifest.json is missing"):
        verify_release(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not a valid release manifest"):
        verify_release(tmp_path)


def _edit_manifest(release: Path, **changes: object) -> None:
    path = _writable(release / "manifest.json")
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if key in manifest:
            manifest[key] = value
        else:
            manifest["files"][0][key] = value
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("path", ["/etc/passwd", "data/../../outside.parquet", "other/x.parquet"])
def test_verify_refuses_paths_outside_the_release(
    store: DatasetStore, tmp_path: Path, path: str
) -> None:
    out = tmp_path / "rel"
    make_release(store, "ds", None, out)
    _edit_manifest(out, path=path)
    with pytest.raises(StoreError, match="points outside the release's data/"):
        verify_release(out)


def test_verify_checks_row_counts(store: DatasetStore, tmp_path: Path) -> None:
    out = tmp_path / "rel"
    manifest = make_release(store, "ds", None, out)
    _edit_manifest(out, rows=manifest.files[0].rows + 1)
    with pytest.raises(StoreError, match=r"has \d+ rows, the manifest says"):
        verify_release(out)
    _edit_manifest(out, rows=manifest.files[0].rows, rows_per_split={"train": 1})
    with pytest.raises(StoreError, match="rows_per_split"):
        verify_release(out)


def test_invalid_manifest_is_one_line(store: DatasetStore, tmp_path: Path) -> None:
    out = tmp_path / "rel"
    make_release(store, "ds", None, out)
    _edit_manifest(out, version="latest")
    with pytest.raises(StoreError, match="version") as caught:
        verify_release(out)
    assert "\n" not in str(caught.value)


def test_quarantined_rows_never_enter_a_release(store: DatasetStore, tmp_path: Path) -> None:
    from cattune.schemas import QuarantinedExample

    text = "漢字 and 👩‍👩‍👧. "  # ZWJ family emoji
    failure = QuarantinedExample(
        **Example.create(text, "?", Meta(split="train")).model_dump(),
        annotation=Annotation(annotator="test", annotator_version="1"),
        error="no rule matched the text",
    )
    version = store.write("ds", [], [failure]).version
    manifest = make_release(store, "ds", version, tmp_path / "rel")
    assert manifest.rows_per_split == {"train": 7, "test": 5}
    released = pq.read_table(tmp_path / "rel" / "data")
    assert failure.id not in released.column("id").to_pylist()
    assert "status" not in released.column_names and "error" not in released.column_names
