"""Writing small release directories by hand, for tests of code that reads releases."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from cattune.schemas import (
    AnnotatedExample,
    ReleaseFile,
    ReleaseManifest,
    file_sha256,
    to_table,
)


def write_release(root: Path, splits: dict[str, list[AnnotatedExample]], version: int = 0) -> Path:
    """A release dir (one Parquet file a split + manifest.json) as `cattune release` lays it out."""
    (root / "data").mkdir(parents=True)
    files = []
    for split, rows in splits.items():
        path = root / "data" / f"{split}.parquet"
        pq.write_table(to_table(rows, AnnotatedExample), path)
        files.append(
            ReleaseFile(
                path=f"data/{split}.parquet",
                split=split,
                rows=len(rows),
                sha256=file_sha256(path),
                bytes=path.stat().st_size,
            )
        )
    manifest = ReleaseManifest(
        dataset="toy",
        version=version,
        rows_per_split={k: len(v) for k, v in splits.items()},
        files=files,
    )
    (root / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return root
