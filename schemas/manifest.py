"""The release manifest: what a training job pins."""

from __future__ import annotations

from datetime import UTC, datetime
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
