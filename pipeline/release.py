"""Releases: immutable Parquet snapshots of one dataset version, the hand-off to training.

Layout (the Hugging Face Parquet convention, so ``datasets.load_dataset("parquet",
data_dir=DIR / "data")`` finds the splits)::

    DIR/manifest.json                          ReleaseManifest: files, sha256, rows, lineage
    DIR/data/<split>-00000-of-0000N.parquet    contract rows, split from meta.split ("train")
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError

from cattune.pipeline.names import Version
from cattune.pipeline.store import DatasetStore
from cattune.schemas import ReleaseFile, ReleaseManifest, StoreError, file_sha256

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DEFAULT_SPLIT = "train"
DEFAULT_SHARD_ROWS = 100_000
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")


def make_release(
    store: DatasetStore,
    name: str,
    version: Version,
    out_dir: str | Path,
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
) -> ReleaseManifest:
    """Snapshot ``name`` at ``version`` (None = latest) into ``out_dir``, which must not exist.

    The release is assembled in a temporary sibling directory and renamed into place, so an
    interrupted run leaves no partial release behind. Files are made read-only.
    """
    if shard_rows < 1:
        raise StoreError(f"shard_rows must be at least 1, got {shard_rows}")
    out = Path(out_dir).expanduser().resolve()
    if out.exists():
        raise StoreError(
            f"release directory {out} already exists; releases are immutable, pick a new --out"
        )
    number = store.resolve_version(name, version)
    table = store.read_table(name, number)
    if table.num_rows == 0:
        raise StoreError(f"dataset {name!r} version {number} has no rows to release")
    splits = pc.fill_null(pc.struct_field(table.column("meta"), "split"), DEFAULT_SPLIT)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files = _write_splits(table, splits, staging, shard_rows)
        lineage = [
            {k: str(v) for k, v in commit.lineage.model_dump(exclude_none=True).items()}
            | {"version": str(commit.version), "timestamp": commit.timestamp.isoformat()}
            for commit in store.history(name)
            if commit.version <= number and commit.lineage is not None
        ]
        manifest = ReleaseManifest(
            dataset=name,
            version=number,
            rows_per_split={f.split: 0 for f in files},
            files=files,
            lineage=lineage,
        )
        for item in files:
            manifest.rows_per_split[item.split] += item.rows
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        for path in staging.rglob("*"):
            if path.is_file():
                path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        staging.chmod(0o755)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("released %s version %d to %s (%s)", name, number, out, manifest.rows_per_split)
    return manifest


def _write_splits(
    table: pa.Table, splits: pa.ChunkedArray, root: Path, shard_rows: int
) -> list[ReleaseFile]:
    data = root / "data"
    data.mkdir()
    files = []
    for split in sorted(set(splits.to_pylist())):
        if not _SPLIT_NAME.fullmatch(split):
            raise StoreError(
                f"split name {split!r} cannot name a release file; use letters, digits and '_'"
            )
        part = table.filter(pc.equal(splits, split))
        count = math.ceil(part.num_rows / shard_rows)
        for index in range(count):
            shard = part.slice(index * shard_rows, shard_rows)
            relative = f"data/{split}-{index:05d}-of-{count:05d}.parquet"
            pq.write_table(shard, root / relative)
            files.append(
                ReleaseFile(
                    path=relative,
                    split=split,
                    rows=shard.num_rows,
                    sha256=file_sha256(root / relative),
                    bytes=(root / relative).stat().st_size,
                )
            )
    return files


def load_manifest(release_dir: str | Path) -> ReleaseManifest:
    path = Path(release_dir) / MANIFEST
    if not path.is_file():
        raise StoreError(f"{release_dir} is not a release: {MANIFEST} is missing")
    try:
        return ReleaseManifest.model_validate(json.loads(path.read_text()))
    except ValidationError as error:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()[:5]
        )
        raise StoreError(f"{path} is not a valid release manifest: {details}") from None
    except ValueError as error:
        raise StoreError(f"{path} is not a valid release manifest: {error}") from None


def _row_counts(manifest: ReleaseManifest, root: Path) -> list[str]:
    """Rows per file (from the Parquet footers) and per split against the manifest."""
    found = []
    per_split: dict[str, int] = {}
    for item in manifest.files:
        per_split[item.split] = per_split.get(item.split, 0) + item.rows
        try:
            rows = pq.ParquetFile(root / item.path).metadata.num_rows
        except (OSError, pa.ArrowException) as error:
            found.append(f"unreadable file {item.path} ({error})")
            continue
        if rows != item.rows:
            found.append(f"file {item.path} has {rows} rows, the manifest says {item.rows}")
    if per_split != manifest.rows_per_split:
        found.append(
            f"rows_per_split {manifest.rows_per_split} does not match the files ({per_split})"
        )
    return found


def verify_release(release_dir: str | Path) -> ReleaseManifest:
    """The release's manifest if every file matches it; else a StoreError listing the problems.

    Checks that every listed path stays inside ``data/``, every file exists with its sha256, no
    file is unlisted, and the row counts (per file and per split) agree with the Parquet files.
    """
    manifest = load_manifest(release_dir)
    problems = manifest.problems(release_dir)
    if not problems:
        problems = _row_counts(manifest, Path(release_dir))
    if problems:
        raise StoreError(
            f"release {release_dir} does not match its manifest: " + "; ".join(problems)
        )
    return manifest
