"""Read contract rows for training: a release directory, a Parquet file, or a training job.

Only :mod:`cattune.schemas` and pyarrow are used, so that a GPU box with ``cattune[train]`` can
read what the pipeline released without installing the pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    Example,
    InputError,
    ReleaseManifest,
    StoreError,
    TrainingJob,
    file_sha256,
    from_table,
)

MANIFEST = "manifest.json"
_ROWS_ANNOTATION = Annotation(annotator="none", annotator_version="0")


def read_manifest(release_dir: str | Path) -> ReleaseManifest:
    """The manifest of a release directory, checked against the files on disk."""
    root = Path(release_dir)
    path = root / MANIFEST
    if not root.is_dir():
        raise StoreError(f"release directory {root} does not exist")
    if not path.is_file():
        raise StoreError(f"{root} is not a release: it has no {MANIFEST}")
    try:
        manifest = ReleaseManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as error:
        raise StoreError(f"{path} is not a valid release manifest: {error}") from error
    problems = manifest.problems(root)
    if problems:
        raise StoreError(
            f"release {root} does not match its manifest ({'; '.join(problems)}); "
            "cut a fresh release instead of editing one"
        )
    return manifest


def _table_rows(table: pa.Table, where: str) -> list[AnnotatedExample]:
    """Contract rows of a table; rows without relations (plain examples) get an empty list."""
    try:
        if "relations" in table.column_names and "annotation" in table.column_names:
            return from_table(table, AnnotatedExample)
        return [
            AnnotatedExample(**ex.model_dump(), relations=[], annotation=_ROWS_ANNOTATION)
            for ex in from_table(table, Example)
        ]
    except (ValueError, ValidationError) as error:
        raise InputError(f"not contract rows: {error}", path=where) from error


def read_parquet(path: str | Path) -> list[AnnotatedExample]:
    """Contract rows from one Parquet file (or a directory of Parquet files)."""
    source = Path(path)
    if not source.exists():
        raise InputError("file not found", path=str(source))
    try:
        table = pq.read_table(source)
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(f"cannot read Parquet: {error}", path=str(source)) from error
    return _table_rows(table, str(source))


def read_release(
    release_dir: str | Path, splits: Sequence[str] | None = None
) -> list[AnnotatedExample]:
    """Rows of a release (checked against its manifest), optionally only some splits."""
    root = Path(release_dir)
    manifest = read_manifest(root)
    available = sorted({f.split for f in manifest.files})
    if splits is not None:
        unknown = [s for s in splits if s not in available]
        if unknown:
            raise StoreError(f"release {root} has no split(s) {unknown}; it has {available}")
    rows: list[AnnotatedExample] = []
    for item in manifest.files:
        if splits is None or item.split in splits:
            rows.extend(read_parquet(root / item.path))
    return rows


def release_splits(release_dir: str | Path) -> list[str]:
    return sorted({f.split for f in read_manifest(release_dir).files})


def read_job(path: str | Path) -> TrainingJob:
    """A training job file, with its release checked against the pinned manifest hash."""
    source = Path(path)
    if not source.is_file():
        raise InputError("job file not found", path=str(source))
    try:
        job = TrainingJob.model_validate(json.loads(source.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as error:
        raise InputError(f"not a training job: {error}", path=str(source)) from error
    manifest = Path(job.release_dir) / MANIFEST
    if not manifest.is_file():
        raise StoreError(f"job {source} points at {job.release_dir}, which has no {MANIFEST}")
    if file_sha256(manifest) != job.manifest_sha256:
        raise StoreError(
            f"the release manifest {manifest} changed since job {source} was written "
            "(sha256 differs); write a new job for the current release"
        )
    return job
