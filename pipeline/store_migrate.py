"""Moving a dataset from the two-table layout (``rows/`` + ``quarantine/``) to one table.

Stores written before the one-commit layout kept annotated rows and quarantined rows in two Delta
tables, written by two commits. ``migrate`` copies every version ``v`` of the old ``rows`` table
into version ``v`` of the new table, together with the quarantine as it stood when ``rows@v`` was
committed, so every version number, its lineage and its commit time stay valid (releases and
``NAME@3`` references keep pointing at the same rows). The old tables are left untouched.
A killed migration resumes where it stopped: each copied version is one commit.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from deltalake import CommitProperties, DeltaTable, write_deltalake

from cattune.pipeline.store import (
    COMMITTED_AT,
    LEGACY_QUARANTINE,
    LEGACY_ROWS,
    LINEAGE_PREFIX,
    Commit,
    DatasetStore,
    store_rows,
)
from cattune.schemas import AnnotatedExample, QuarantinedExample, StoreError, conform, to_table

log = logging.getLogger(__name__)

MIGRATED_FROM = f"{LINEAGE_PREFIX}migrated_from"


def migrate(store: DatasetStore, name: str) -> int:
    """Copy the versions of a two-table dataset not yet copied; returns how many were copied."""
    rows_uri = store.uri(name, LEGACY_ROWS)
    if not DeltaTable.is_deltatable(rows_uri):
        raise StoreError(f"dataset {name!r} in {store.root} has no two-table layout to migrate")
    target = store.uri(name)
    old = DeltaTable(rows_uri)
    start = DeltaTable(target).version() + 1 if DeltaTable.is_deltatable(target) else 0
    quarantine_uri = store.uri(name, LEGACY_QUARANTINE)
    quarantine_commits = (
        DatasetStore._commits(DeltaTable(quarantine_uri))
        if DeltaTable.is_deltatable(quarantine_uri)
        else []
    )
    entries = {entry["version"]: entry for entry in old.history()}
    for version in range(start, old.version() + 1):
        entry = entries[version]
        rows = conform(DatasetStore._scan(DeltaTable(rows_uri, version=version)), AnnotatedExample)
        failures = to_table([], QuarantinedExample)
        quarantine_version = _quarantine_version(entry, quarantine_commits)
        if quarantine_version is not None:
            quarantine = DeltaTable(quarantine_uri, version=quarantine_version)
            failures = conform(DatasetStore._scan(quarantine), QuarantinedExample)
        # A failure of an id that is annotated too stays: both tables held it at this version.
        table = store_rows(rows, failures)
        properties = CommitProperties(
            custom_metadata=_metadata(entry, version), max_commit_retries=0
        )
        write_deltalake(
            target, table, mode="overwrite" if version else "error", commit_properties=properties
        )
        log.info("dataset %s: version %d migrated", name, version)
    return max(old.version() + 1 - start, 0)


def _quarantine_version(entry: dict[str, Any], quarantine: list[Commit]) -> int | None:
    """The quarantine table version that belonged to a rows commit."""
    recorded = entry.get(f"{LINEAGE_PREFIX}quarantine_version")
    if recorded not in (None, "None"):
        return int(recorded)
    moment = _moment(entry)
    earlier = [c.version for c in quarantine if c.timestamp <= moment]
    return max(earlier) if earlier else None


def _moment(entry: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(entry["timestamp"] / 1000, tz=UTC)


def _metadata(entry: dict[str, Any], version: int) -> dict[str, str]:
    """The old commit's lineage, its time, where it came from, and its row counts."""
    metadata = {k: str(v) for k, v in entry.items() if k.startswith(LINEAGE_PREFIX)}
    metrics = entry.get("operationMetrics") or {}
    inserted = metrics.get("num_target_rows_inserted", metrics.get("num_added_rows", 0))
    metadata.setdefault(f"{LINEAGE_PREFIX}rows_inserted", str(inserted))
    metadata.setdefault(
        f"{LINEAGE_PREFIX}rows_updated", str(metrics.get("num_target_rows_updated", 0))
    )
    metadata[COMMITTED_AT] = _moment(entry).isoformat()
    metadata[MIGRATED_FROM] = f"{LEGACY_ROWS}@{version}"
    return metadata
