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
from pyarrow import fs as pafs
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

    A local release is assembled in a temporary sibling directory and renamed into place, so an
    interrupted run leaves no partial release behind; its files are made read-only. ``out_dir``
    may be a URL (``s3://bucket/prefix``): the release is assembled locally, then its data files
    are uploaded and ``manifest.json`` last, so a prefix without a manifest is never a release.
    """
    if shard_rows < 1:
        raise StoreError(f"shard_rows must be at least 1, got {shard_rows}")
    if is_url(out_dir):
        return _release_to_url(store, name, version, str(out_dir), shard_rows)
    out = Path(out_dir).expanduser().resolve()
    if out.exists():
        raise StoreError(
            f"release directory {out} already exists; releases are immutable, pick a new --out"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = _assemble(store, name, version, staging, shard_rows)
        for path in staging.rglob("*"):
            if path.is_file():
                path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        staging.chmod(0o755)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "released %s version %d to %s (%s)", name, manifest.version, out, manifest.rows_per_split
    )
    return manifest


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def _assemble(
    store: DatasetStore, name: str, version: Version, root: Path, shard_rows: int
) -> ReleaseManifest:
    """Write the data files and manifest of one release into the empty directory ``root``."""
    number = store.resolve_version(name, version)
    table = store.read_table(name, number)
    if table.num_rows == 0:
        raise StoreError(f"dataset {name!r} version {number} has no rows to release")
    splits = pc.fill_null(pc.struct_field(table.column("meta"), "split"), DEFAULT_SPLIT)
    files = _write_splits(table, splits, root, shard_rows)
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
    (root / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def _release_to_url(
    store: DatasetStore, name: str, version: Version, url: str, shard_rows: int
) -> ReleaseManifest:
    filesystem, base = _filesystem(url)
    base = base.rstrip("/")
    found = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    if found:
        partial = all(info.base_name != MANIFEST for info in found)
        raise StoreError(
            f"release location {url} already holds "
            + ("a partial upload (no manifest.json): delete it or " if partial else "a release; ")
            + "releases are immutable, pick a new --out"
        )
    with tempfile.TemporaryDirectory(prefix="cattune-release-") as staging:
        root = Path(staging)
        manifest = _assemble(store, name, version, root, shard_rows)
        local = pafs.LocalFileSystem()
        for item in [*(f.path for f in manifest.files), MANIFEST]:  # the manifest goes last
            pafs.copy_files(
                str(root / item),
                f"{base}/{item}",
                source_filesystem=local,
                destination_filesystem=filesystem,
            )
    log.info(
        "released %s version %d to %s (%s)", name, manifest.version, url, manifest.rows_per_split
    )
    return manifest


def _filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(url)
    except (OSError, pa.ArrowException) as error:
        raise StoreError(f"cannot open {url}: {error}") from None


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
    A release at a URL is downloaded to a temporary directory first (every byte is hashed anyway).
    """
    if is_url(release_dir):
        filesystem, base = _filesystem(str(release_dir))
        with tempfile.TemporaryDirectory(prefix="cattune-verify-") as staging:
            if filesystem.get_file_info(base).type == pafs.FileType.Directory:
                pafs.copy_files(
                    base,
                    staging,
                    source_filesystem=filesystem,
                    destination_filesystem=pafs.LocalFileSystem(),
                )
            return _verify_local(Path(staging), str(release_dir))
    return _verify_local(Path(release_dir), str(release_dir))


def _verify_local(root: Path, name: str) -> ReleaseManifest:
    if not (root / MANIFEST).is_file():
        raise StoreError(f"{name} is not a release: {MANIFEST} is missing")
    manifest = load_manifest(root)
    problems = manifest.problems(root)
    if not problems:
        problems = _row_counts(manifest, root)
    if problems:
        raise StoreError(f"release {name} does not match its manifest: " + "; ".join(problems))
    return manifest
