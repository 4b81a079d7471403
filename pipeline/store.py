"""The versioned dataset store: one Delta table of contract rows per dataset.

Layout under the store root (a local directory, or any URL deltalake supports)::

    <root>/<name>/rows/         Delta table of AnnotatedExample rows (the dataset's versions)
    <root>/<name>/quarantine/   Delta table of QuarantinedExample rows (unresolved failures)

Every write is one commit per table, upserted by id through a Delta ``merge``; the commit's custom
metadata carries the lineage (``cattune.*`` keys). A merge fails when another writer committed new
data meanwhile; the store re-runs it (it is an idempotent upsert) a bounded number of times, so a
version never holds two rows with one id and the table is never left half-written.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, QueryBuilder, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError
from pyarrow import fs as pafs
from pydantic import BaseModel, Field

from cattune.pipeline.names import Version, validate_name
from cattune.schemas import (
    AnnotatedExample,
    QuarantinedExample,
    StoreError,
    cattune_home,
    conform,
    from_table,
    to_table,
)

log = logging.getLogger(__name__)

LINEAGE_PREFIX = "cattune."
_RESOLVED = "_cattune_resolved"


def _damaged(uri: str, error: BaseException) -> StoreError:
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return StoreError(
        f"the table at {uri} cannot be read ({first_line}); the store is damaged: restore it "
        "from a backup or re-create the dataset"
    )


class Lineage(BaseModel):
    """What produced a commit; stored as ``cattune.<field>`` keys of the Delta commit metadata."""

    flow_run_id: str | None = None
    annotator: str | None = None
    annotator_version: str | None = None
    model: str | None = None
    pack: str | None = None
    pack_hash: str | None = None
    config_hash: str | None = None
    source: str | None = None
    source_sha256: str | None = None
    rows_annotated: int = 0
    rows_quarantined: int = 0
    rows_skipped: int = 0
    quarantine_version: int | None = None
    write_id: str | None = None

    def to_metadata(self) -> dict[str, str]:
        values = self.model_dump(exclude_none=True)
        return {f"{LINEAGE_PREFIX}{key}": str(value) for key, value in values.items()}

    @classmethod
    def from_metadata(cls, entry: dict[str, Any]) -> Lineage | None:
        found = {
            key[len(LINEAGE_PREFIX) :]: value
            for key, value in entry.items()
            if key.startswith(LINEAGE_PREFIX) and key[len(LINEAGE_PREFIX) :] in cls.model_fields
        }
        return cls.model_validate(found) if found else None


class Commit(BaseModel):
    """One version of a dataset, as ``history`` reports it."""

    version: int
    timestamp: datetime
    operation: str
    inserted: int = 0
    updated: int = 0
    lineage: Lineage | None = None


class WriteResult(BaseModel):
    dataset: str
    version: int = Field(description="the rows table version this write produced (or found)")
    quarantine_version: int | None = None
    inserted: int = 0
    updated: int = 0
    quarantined: int = 0
    committed: bool = True


class DatasetInfo(BaseModel):
    name: str
    version: int
    rows: int
    quarantined: int
    updated_at: datetime


class DatasetDiff(BaseModel):
    """Row ids added, removed, and relabelled (same id, different relations) from a to b."""

    dataset: str
    a: int
    b: int
    added: list[str]
    removed: list[str]
    relabelled: list[str]
    unchanged: int


def _dedupe(records: Iterable[Any]) -> list[Any]:
    """Keep the last record per id, in first-seen order."""
    by_id: dict[str, Any] = {}
    for record in records:
        by_id.pop(record.id, None)
        by_id[record.id] = record
    return list(by_id.values())


class DatasetStore:
    """Versioned datasets under one root; see the module docstring for the layout."""

    def __init__(
        self, root: str | Path | None = None, *, max_retries: int = 8, retry_delay: float = 0.05
    ) -> None:
        if root is None:
            root = cattune_home() / "store"
        text = str(root)
        self.is_url = "://" in text
        self.root = text.rstrip("/") if self.is_url else str(Path(text).expanduser().resolve())
        self.max_retries = max_retries
        self.retry_delay = retry_delay

    def __repr__(self) -> str:
        return f"DatasetStore({self.root!r})"

    # -- locations ---------------------------------------------------------------------------

    def uri(self, name: str, table: str = "rows") -> str:
        validate_name(name)
        return f"{self.root}/{name}/{table}"

    def exists(self, name: str) -> bool:
        return DeltaTable.is_deltatable(self.uri(name))

    def _table(self, name: str, table: str = "rows") -> DeltaTable:
        uri = self.uri(name, table)
        if not DeltaTable.is_deltatable(uri):
            if table == "rows":
                raise StoreError(
                    f"no dataset {name!r} in the store at {self.root} "
                    "(`cattune datasets list --store ROOT` shows what exists)"
                )
            raise StoreError(f"dataset {name!r} has no quarantine table")
        try:
            return DeltaTable(uri)
        except (DeltaError, OSError) as error:
            raise _damaged(uri, error) from None

    # -- writing -----------------------------------------------------------------------------

    def write(
        self,
        name: str,
        rows: Sequence[AnnotatedExample],
        quarantined: Sequence[QuarantinedExample] = (),
        lineage: Lineage | None = None,
    ) -> WriteResult:
        """Upsert rows by id (one commit), and their failures into the quarantine table.

        Rows that annotate successfully leave the quarantine. With nothing to change, no commit is
        made and the current version is returned with ``committed=False``.
        """
        validate_name(name)
        rows = _dedupe(rows)
        row_ids = {row.id for row in rows}
        quarantined = [q for q in _dedupe(quarantined) if q.id not in row_ids]
        lineage = (lineage or Lineage()).model_copy()
        lineage.rows_annotated = len(rows)
        lineage.rows_quarantined = len(quarantined)

        quarantine_version = None
        if quarantined or (rows and DeltaTable.is_deltatable(self.uri(name, "quarantine"))):
            quarantine_table = _quarantine_source(rows, quarantined)
            quarantine_version, _, _ = self._upsert(
                name, "quarantine", quarantine_table, lineage.to_metadata(), quarantine=True
            )
        lineage.quarantine_version = quarantine_version

        table = to_table(rows, AnnotatedExample)
        version, inserted, updated = self._upsert(name, "rows", table, lineage.to_metadata())
        committed = version is not None
        if version is None:
            version = self._table(name).version()
        else:
            self._check_unique(name, version)
        log.info(
            "dataset %s: version %d (%d inserted, %d updated, %d quarantined)",
            name,
            version,
            inserted,
            updated,
            len(quarantined),
        )
        return WriteResult(
            dataset=name,
            version=version,
            quarantine_version=quarantine_version,
            inserted=inserted,
            updated=updated,
            quarantined=len(quarantined),
            committed=committed,
        )

    def _upsert(
        self,
        name: str,
        kind: str,
        source: pa.Table,
        metadata: dict[str, str],
        *,
        quarantine: bool = False,
    ) -> tuple[int | None, int, int]:
        """Create the table or merge into it; returns (new version or None, inserted, updated)."""
        uri = self.uri(name, kind)
        properties = CommitProperties(custom_metadata=metadata)
        for attempt in range(self.max_retries + 1):
            if not DeltaTable.is_deltatable(uri):
                initial = source.filter(pc.invert(source[_RESOLVED])) if quarantine else source
                if quarantine:
                    initial = initial.drop_columns([_RESOLVED])
                # No commit retries: if another writer created version 0 meanwhile, delta-rs
                # would otherwise land this as a blind append (duplicate ids); merge instead.
                creating = CommitProperties(custom_metadata=metadata, max_commit_retries=0)
                try:
                    write_deltalake(uri, initial, mode="error", commit_properties=creating)
                    return 0, initial.num_rows, 0
                except (CommitFailedError, DeltaError) as error:
                    if not DeltaTable.is_deltatable(uri):
                        raise StoreError(f"cannot create dataset table at {uri}: {error}") from None
                    log.info("table %s was created concurrently; merging instead", uri)
                    continue
            table = DeltaTable(uri)
            before = table.version()
            merger = table.merge(
                source,
                "t.id = s.id",
                source_alias="s",
                target_alias="t",
                commit_properties=properties,
            )
            if quarantine:
                columns = {col: f"s.{col}" for col in source.column_names if col != _RESOLVED}
                merger = (
                    merger.when_matched_delete(predicate=f"s.{_RESOLVED}")
                    .when_matched_update(updates=columns, predicate=f"NOT s.{_RESOLVED}")
                    .when_not_matched_insert(updates=columns, predicate=f"NOT s.{_RESOLVED}")
                )
            else:
                merger = merger.when_matched_update_all().when_not_matched_insert_all()
            try:
                metrics = merger.execute()
            except CommitFailedError as error:
                if attempt == self.max_retries:
                    raise StoreError(
                        f"dataset {name!r} kept changing under this write ({attempt + 1} "
                        f"attempts): {str(error).splitlines()[0]}; re-run the command"
                    ) from None
                log.info("concurrent commit on %s; retrying (%d)", uri, attempt + 1)
                time.sleep(self.retry_delay * (2**attempt))
                continue
            after = table.version()
            return (
                after if after != before else None,
                int(metrics.get("num_target_rows_inserted", 0)),
                int(metrics.get("num_target_rows_updated", 0)),
            )
        raise AssertionError("unreachable")

    def _check_unique(self, name: str, version: int) -> None:
        """A version must never hold two rows with one id."""
        table = DeltaTable(self.uri(name), version=version)
        result = (
            QueryBuilder()
            .register("t", table)
            .execute("SELECT id FROM t GROUP BY id HAVING count(*) > 1 LIMIT 5")
            .read_all()
        )
        duplicates = pa.table(result).column("id").to_pylist()
        if duplicates:
            raise StoreError(
                f"dataset {name!r} version {version} holds duplicate ids {duplicates}; "
                "restore an earlier version with `cattune datasets history` and re-run"
            )

    # -- reading -----------------------------------------------------------------------------

    def version(self, name: str) -> int:
        return self._table(name).version()

    def resolve_version(self, name: str, version: Version = None) -> int:
        """The version number a reference (None = latest, a number, or a timestamp) points at."""
        return self._resolve(name, version).version()

    def _resolve(self, name: str, version: Version, kind: str = "rows") -> DeltaTable:
        table = self._table(name, kind)
        if version is None:
            return table
        if isinstance(version, datetime):
            moment = version if version.tzinfo else version.replace(tzinfo=UTC)
            earlier = [c for c in self._commits(table) if c.timestamp <= moment]
            if not earlier:
                raise StoreError(
                    f"dataset {name!r} did not exist yet at {moment.isoformat()}; "
                    "`cattune datasets history` lists its versions"
                )
            version = max(c.version for c in earlier)
        latest = table.version()
        if not 0 <= version <= latest:
            raise StoreError(
                f"dataset {name!r} has no version {version} (versions 0..{latest} exist)"
            )
        try:
            table.load_as_version(version)
        except DeltaError as error:
            raise StoreError(f"cannot load {name!r} version {version}: {error}") from None
        return table

    @staticmethod
    def _scan(table: DeltaTable, columns: str = "*") -> pa.Table:
        # QueryBuilder, not to_pyarrow_table(): the latter can abort the interpreter at exit.
        try:
            query = QueryBuilder().register("t", table)
            result = query.execute(f"SELECT {columns} FROM t").read_all()
        except Exception as error:  # deltalake / DataFusion raise several unrelated types here
            raise _damaged(table.table_uri, error) from None
        return pa.table(result)

    def read_table(self, name: str, version: Version = None) -> pa.Table:
        """The rows of one version as an Arrow table with the contract schema, sorted by id."""
        table = conform(self._scan(self._resolve(name, version)), AnnotatedExample)
        return table.sort_by("id")

    def read(self, name: str, version: Version = None) -> list[AnnotatedExample]:
        return from_table(self.read_table(name, version), AnnotatedExample)

    def quarantine_table(self, name: str, version: Version = None) -> pa.Table:
        self._table(name)
        if not DeltaTable.is_deltatable(self.uri(name, "quarantine")):
            return to_table([], QuarantinedExample)
        table = self._resolve(name, version, "quarantine")
        return conform(self._scan(table), QuarantinedExample).sort_by("id")

    def quarantine(self, name: str, version: Version = None) -> list[QuarantinedExample]:
        """Rows that failed and were not annotated since (``version`` of the quarantine table)."""
        return from_table(self.quarantine_table(name, version), QuarantinedExample)

    @staticmethod
    def _commits(table: DeltaTable) -> list[Commit]:
        commits = []
        for entry in table.history():
            metrics = entry.get("operationMetrics") or {}
            commits.append(
                Commit(
                    version=entry["version"],
                    timestamp=datetime.fromtimestamp(entry["timestamp"] / 1000, tz=UTC),
                    operation=entry.get("operation", ""),
                    inserted=int(
                        metrics.get("num_target_rows_inserted", metrics.get("num_added_rows", 0))
                    ),
                    updated=int(metrics.get("num_target_rows_updated", 0)),
                    lineage=Lineage.from_metadata(entry),
                )
            )
        return sorted(commits, key=lambda c: c.version)

    def history(self, name: str) -> list[Commit]:
        """Every version of the dataset, oldest first, with its lineage."""
        return self._commits(self._table(name))

    def names(self) -> builtins.list[str]:
        filesystem, base = pafs.FileSystem.from_uri(self.root)
        try:
            entries = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except OSError as error:
            raise StoreError(f"cannot list the store at {self.root}: {error}") from None
        found = []
        for entry in entries:
            if entry.type != pafs.FileType.Directory:
                continue
            log_dir = filesystem.get_file_info(f"{entry.path}/rows/_delta_log")
            if log_dir.type == pafs.FileType.Directory:
                found.append(entry.base_name)
        return sorted(found)

    def list(self) -> builtins.list[DatasetInfo]:
        """Every dataset in the store with its latest version, row counts and last commit time."""
        infos = []
        for name in self.names():
            table = self._table(name)
            last = self._commits(table)[-1]
            infos.append(
                DatasetInfo(
                    name=name,
                    version=table.version(),
                    rows=self._count(table),
                    quarantined=self.quarantine_table(name).num_rows,
                    updated_at=last.timestamp,
                )
            )
        return infos

    def _count(self, table: DeltaTable) -> int:
        return int(self._scan(table, "count(*) AS n").column("n")[0].as_py())

    def diff(self, name: str, a: Version, b: Version) -> DatasetDiff:
        """Which ids version ``b`` added, removed, or relabelled relative to version ``a``."""
        old_table, new_table = self._resolve(name, a), self._resolve(name, b)
        old = _relations_by_id(self._scan(old_table, "id, relations"))
        new = _relations_by_id(self._scan(new_table, "id, relations"))
        common = old.keys() & new.keys()
        relabelled = sorted(i for i in common if old[i] != new[i])
        return DatasetDiff(
            dataset=name,
            a=old_table.version(),
            b=new_table.version(),
            added=sorted(new.keys() - old.keys()),
            removed=sorted(old.keys() - new.keys()),
            relabelled=relabelled,
            unchanged=len(common) - len(relabelled),
        )

    def annotated_ids(
        self, name: str, config_hash: str, *, include_final_quarantine: bool = False
    ) -> set[str]:
        """Ids already annotated under ``config_hash`` (empty if the dataset does not exist).

        With ``include_final_quarantine``, ids quarantined under the same hash for a reason that
        will not change on a retry count as done too (an incremental run skips them).
        """
        if not self.exists(name):
            return set()
        done = _ids_with_hash(self._scan(self._table(name), "id, annotation"), config_hash)
        if include_final_quarantine:
            quarantine = self.quarantine_table(name)
            final = quarantine.filter(pc.invert(quarantine["retryable"]))
            done |= _ids_with_hash(final.select(["id", "annotation"]), config_hash)
        return done


def _quarantine_source(
    resolved: Sequence[AnnotatedExample], quarantined: Sequence[QuarantinedExample]
) -> pa.Table:
    """Quarantine merge source: new failures, plus resolved ids flagged for deletion."""
    placeholders = [
        QuarantinedExample(
            id=row.id,
            prompt=row.prompt,
            completion=row.completion,
            meta=row.meta,
            annotation=row.annotation,
            error="resolved",
        )
        for row in resolved
    ]
    table = to_table([*quarantined, *placeholders], QuarantinedExample)
    flags = [False] * len(quarantined) + [True] * len(placeholders)
    return table.append_column(_RESOLVED, pa.array(flags, pa.bool_()))


def _relations_by_id(table: pa.Table) -> dict[str, Any]:
    return dict(
        zip(table.column("id").to_pylist(), table.column("relations").to_pylist(), strict=True)
    )


def _ids_with_hash(table: pa.Table, config_hash: str) -> set[str]:
    hashes = pc.struct_field(table.column("annotation"), "config_hash").to_pylist()
    return {
        i for i, h in zip(table.column("id").to_pylist(), hashes, strict=True) if h == config_hash
    }
