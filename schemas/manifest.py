"""The release manifest: what a training job pins."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cattune.schemas.records import SCHEMA_VERSION


class ReleaseFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="path relative to the release directory, POSIX separators")
    split: str
    rows: int
    sha256: str
    bytes: int


class ReleaseManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    version: int = Field(description="Delta table version the release was cut from")
    schema_version: str = SCHEMA_VERSION
    rows_per_split: dict[str, int]
    files: list[ReleaseFile]
    lineage: list[dict[str, str]] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def problems(self, release_dir: str | Path) -> list[str]:
        """What differs between the files on disk and this manifest (empty when intact).

        Lives with the contract so that training jobs can check a release without the pipeline.
        """
        root = Path(release_dir)
        found: list[str] = []
        for item in self.files:
            parts = PurePosixPath(item.path).parts
            if "\\" in item.path or len(parts) < 2 or parts[0] != "data" or ".." in parts:
                found.append(f"manifest path {item.path!r} points outside the release's data/")
                continue
            path = root / item.path
            if not path.is_file():
                found.append(f"missing file {item.path}")
            elif file_sha256(path) != item.sha256:
                found.append(f"changed file {item.path} (sha256 differs from the manifest)")
        listed = {item.path for item in self.files}
        data_dir = root / "data"
        if data_dir.is_dir():
            for path in sorted(data_dir.rglob("*")):
                relative = path.relative_to(root).as_posix()
                if path.is_file() and relative not in listed:
                    found.append(f"extra file {relative} (not in the manifest)")
        return found


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TrainingJob(BaseModel):
    """What a hand-off flow writes (`job.json`) and `cattune train --job` runs.

    ``config`` holds training options by their CLI names without dashes (e.g. ``mode``, ``model``,
    ``epochs``, ``alpha``, ``loss_type``); the training package validates them.
    """

    model_config = ConfigDict(extra="forbid")

    release_dir: str
    manifest_sha256: str
    config: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
