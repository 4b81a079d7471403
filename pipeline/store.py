"""The versioned dataset store: one Delta table per dataset, every run one commit.

Layout under the store root (a local directory, or any URL deltalake supports)::

    <root>/<name>/table/   Delta table of every row, ``status`` = "annotated" or "quarantined"

Annotated rows carry the contract's ``AnnotatedExample`` fields; quarantined rows the
``QuarantinedExample`` fields (``error``, ``raw_output``, ``retryable``). An id has at most one
row of each status. A write is one Delta ``merge`` keyed on (id, status): new rows are inserted,
rows with a known (id, status) are replaced, and the quarantined row of an id that now annotates
is deleted, all in **one commit**, so a write is never half-visible. The commit's custom metadata
carries the lineage (``cattune.*`` keys). A merge fails when another writer committed new data
meanwhile; the store re-runs it (it is an idempotent upsert) a bounded number of times, so a
version never holds two rows with one id and status.

Stores written before this layout (``<name>/rows`` + ``<name>/quarantine``, two commits a write)
are refused with a message naming ``cattune datasets migrate``; see ``store_migrate``.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import (
    CommitProperties,
    DeltaTable,
    QueryBuilder,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError
from pyarrow import fs as pafs
from pydantic import BaseModel, Field

from cattune.pipeline.id_set import IdSet
from cattune.pipeline.names import Version, validate_name
from cattune.schemas import (
    ANNOTATED_SCHEMA,
    QUARANTINE_SCHEMA,
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
TABLE = "table"
STAGING = "_staging"
LEGACY_ROWS, LEGACY_QUARANTINE = "rows", "quarantine"
ANNOTATED, QUARANTINED = "annotated", "quarantined"
STATUS = "status"
COMMITTED_AT = f"{LINEAGE_PREFIX}committed_at"
IS_ANNOTATED, IS_QUARANTINED = f"{STATUS} = '{ANNOTATED}'", f"{STATUS} = '{QUARANTINED}'"
_RESOLVED = "_cattune_resolved"
READ_BATCH = 4096
WRITER_PROPERTIES = WriterProperties(max_row_group_size=16_384, compression="SNAPPY")
"""delta-rs buffers a whole row group before writing it, 1M rows by default: bounded row groups
keep a commit's memory flat in its size (measured: +301 MB writing 1M rows with the default, +134
MB with 16,384-row groups, +132 MB for 200k rows). Snappy is delta-rs's own default."""

Part = pa.Table | str
"""Rows to write: an Arrow table, or the path of a (local) Parquet file with a contract schema."""

STORE_SCHEMA = pa.schema(
    [
        pa.field(STATUS, pa.string(), nullable=False),
        *ANNOTATED_SCHEMA,
        *(f.with_nullable(True) for f in QUARANTINE_SCHEMA if f.name not in ANNOTATED_SCHEMA.names),
    ],
    metadata=ANNOTATED_SCHEMA.metadata,
)
"""Both contract schemas in one table: the annotated fields, then the quarantine-only ones."""


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
    rows_inserted: int | None = Field(None, description="annotated ids new to the dataset")
    rows_updated: int | None = Field(None, description="annotated ids that replaced a row")
    quarantine_version: int | None = Field(
        None, description="only in commits of the two-table layout: the quarantine table version"
    )
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
    version: int = Field(description="the version this write produced (or found)")
    quarantine_version: int | None = Field(
        None, description="the version holding this write's quarantined rows (= version)"
    )
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


def migrate_hint(name: str, root: str) -> str:
    return (
        f"dataset {name!r} in {root} uses the two-table layout of earlier cattune versions "
        f"(rows/ + quarantine/); run `cattune datasets migrate {name} --store {root}` once "
        "(it keeps every version number and leaves the old tables in place)"
    )


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

    def uri(self, name: str, table: str = TABLE) -> str:
        validate_name(name)
        return f"{self.root}/{name}/{table}"

    def staging_dir(self, name: str, key: str, version: int) -> Path:
        """Where an annotate run stages its shard files before committing them.

        ``<root>/<name>/_staging/<key>-v<version>`` for a local store; for an object store the
        staging stays on local disk, ``$CATTUNE_HOME/staging/<hash of root>/<name>/...`` (the
        flow's tasks must then share that disk: threads, or Dask workers on the same machine).
        Folders of the same ``key`` staged against another version are stale (the dataset moved
        on, e.g. that run committed and was killed before removing them) and are removed here.
        """
        validate_name(name)
        if self.is_url:
            digest = hashlib.sha256(self.root.encode()).hexdigest()[:16]
            base = cattune_home() / "staging" / digest / name
        else:
            base = Path(self.root) / name / STAGING
        current = base / f"{key}-v{version}"
        for stale in base.glob(f"{key}-v*"):
            if stale != current:
                shutil.rmtree(stale, ignore_errors=True)
        return current

    def exists(self, name: str) -> bool:
        self._refuse_legacy(name)
        return DeltaTable.is_deltatable(self.uri(name))

    def is_legacy(self, name: str) -> bool:
        """True if ``name`` is still (or only partly migrated from) the two-table layout."""
        legacy = self.uri(name, LEGACY_ROWS)
        if not DeltaTable.is_deltatable(legacy):
            return False
        current = self.uri(name)
        if not DeltaTable.is_deltatable(current):
            return True
        return DeltaTable(current).version() < DeltaTable(legacy).version()

    def _refuse_legacy(self, name: str) -> None:
        if self.is_legacy(name):
            raise StoreError(migrate_hint(name, self.root))

    def _table(self, name: str) -> DeltaTable:
        uri = self.uri(name)
        if not DeltaTable.is_deltatable(uri):
            self._refuse_legacy(name)
            raise StoreError(
                f"no dataset {name!r} in the store at {self.root} "
                "(`cattune datasets list --store ROOT` shows what exists)"
            )
        self._refuse_legacy(name)
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
        """Upsert rows and failures by id in one commit; annotated ids leave the quarantine.

        With nothing to write to an existing dataset, no commit is made and the current version
        is returned with ``committed=False``.
        """
        rows = _dedupe(rows)
        quarantined = _dedupe(quarantined)
        return self.write_parts(
            name,
            [to_table(rows, AnnotatedExample)],
            [to_table(quarantined, QuarantinedExample)],
            lineage,
        )

    def write_parts(
        self,
        name: str,
        annotated: Sequence[Part],
        quarantined: Sequence[Part] = (),
        lineage: Lineage | None = None,
    ) -> WriteResult:
        """``write`` from Arrow tables or Parquet files (paths), streamed into one merge commit.

        The annotate flow commits its staged shard files this way: rows are read batch by batch
        while Delta merges them, never all at once. Annotated ids must be unique across the parts
        (a ``StoreError`` otherwise); a quarantined id that also annotates, or repeats, is dropped.
        """
        validate_name(name)
        self._refuse_legacy(name)
        rows = IdSet(_id_chunks(annotated))
        if rows.repeats:
            raise StoreError(f"the rows to write to {name!r} repeat an id; deduplicate them first")
        lineage = (lineage or Lineage()).model_copy()
        lineage.rows_annotated = len(rows)
        failures = IdSet(ids.filter(pa.array(~rows.isin(ids))) for ids in _id_chunks(quarantined))
        lineage.rows_quarantined = len(failures)

        def source(resolved: bool) -> pa.RecordBatchReader:
            return _merge_reader(annotated, quarantined, rows, resolved=resolved)

        version, inserted, updated = self._upsert(name, source, rows, lineage)
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
            len(failures),
        )
        return WriteResult(
            dataset=name,
            version=version,
            quarantine_version=version if len(failures) and committed else None,
            inserted=inserted,
            updated=updated,
            quarantined=len(failures),
            committed=committed,
        )

    def _upsert(
        self,
        name: str,
        source: Callable[[bool], pa.RecordBatchReader],
        rows: IdSet,
        lineage: Lineage,
    ) -> tuple[int | None, int, int]:
        """Create the table or merge into it; returns (new version or None, inserted, updated).

        ``source(resolved)`` gives a fresh reader of the rows for each attempt; with ``resolved``
        it adds the flagged deletions of resolved failures (the merge), without it not (creation).
        """
        uri = self.uri(name)
        empty = not rows and lineage.rows_quarantined == 0
        for attempt in range(self.max_retries + 1):
            if not DeltaTable.is_deltatable(uri):
                lineage.rows_inserted, lineage.rows_updated = len(rows), 0
                # No commit retries: if another writer created version 0 meanwhile, delta-rs
                # would otherwise land this as a blind append (duplicate ids); merge instead.
                creating = CommitProperties(
                    custom_metadata=lineage.to_metadata(), max_commit_retries=0
                )
                try:
                    write_deltalake(
                        uri,
                        source(False),
                        mode="error",
                        writer_properties=WRITER_PROPERTIES,
                        commit_properties=creating,
                    )
                    return 0, len(rows), 0
                except (CommitFailedError, DeltaError) as error:
                    if not DeltaTable.is_deltatable(uri):
                        raise StoreError(f"cannot create dataset table at {uri}: {error}") from None
                    log.info("table %s was created concurrently; merging instead", uri)
                    continue
            if empty:
                return None, 0, 0
            table = DeltaTable(uri)
            updated = self._count_annotated(table, rows)
            lineage.rows_inserted, lineage.rows_updated = len(rows) - updated, updated
            columns = {col: f"s.{col}" for col in STORE_SCHEMA.names}
            merger = (
                table.merge(
                    source(True),
                    f"t.id = s.id AND t.{STATUS} = s.{STATUS}",
                    source_alias="s",
                    target_alias="t",
                    writer_properties=WRITER_PROPERTIES,
                    commit_properties=CommitProperties(custom_metadata=lineage.to_metadata()),
                )
                .when_matched_delete(predicate=f"s.{_RESOLVED}")
                .when_matched_update(updates=columns, predicate=f"NOT s.{_RESOLVED}")
                .when_not_matched_insert(updates=columns, predicate=f"NOT s.{_RESOLVED}")
            )
            before = table.version()
            try:
                merger.execute()
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
            return (after if after != before else None), len(rows) - updated, updated
        raise AssertionError("unreachable")

    def _count_annotated(self, table: DeltaTable, rows: IdSet) -> int:
        """How many of ``rows`` the table holds as annotated rows (streamed, not loaded whole)."""
        if not rows:
            return 0
        try:
            return sum(int(rows.isin(ids).sum()) for ids in _query_ids(table, IS_ANNOTATED))
        except Exception as error:  # deltalake / DataFusion raise several unrelated types here
            raise _damaged(table.table_uri, error) from None

    def _check_unique(self, name: str, version: int) -> None:
        """A version must never hold two rows with one id and status (checked in 16 bytes a
        row; the duplicates are named by a query only when there are some)."""
        table = DeltaTable(self.uri(name), version=version)
        statuses = (IS_ANNOTATED, IS_QUARANTINED)
        if not any(IdSet(_query_ids(table, where)).repeats for where in statuses):
            return
        query = f"SELECT id FROM t GROUP BY id, {STATUS} HAVING count(*) > 1 LIMIT 5"
        result = QueryBuilder().register("t", table).execute(query).read_all()
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

    def _resolve(self, name: str, version: Version) -> DeltaTable:
        table = self._table(name)
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
    def _scan(table: DeltaTable, columns: str = "*", where: str | None = None) -> pa.Table:
        # QueryBuilder, not to_pyarrow_table(): the latter can abort the interpreter at exit.
        # Filters go into the SQL: after a merge, strings come back as string_view, which
        # pyarrow's filter kernels reject.
        condition = f" WHERE {where}" if where else ""
        try:
            query = QueryBuilder().register("t", table)
            result = query.execute(f"SELECT {columns} FROM t{condition}").read_all()
        except Exception as error:  # deltalake / DataFusion raise several unrelated types here
            raise _damaged(table.table_uri, error) from None
        return pa.table(result)

    def read_table(self, name: str, version: Version = None) -> pa.Table:
        """The annotated rows of one version as an Arrow table with the contract schema, by id."""
        table = self._scan(self._resolve(name, version), where=IS_ANNOTATED)
        return conform(table, AnnotatedExample).sort_by("id")

    def read(self, name: str, version: Version = None) -> list[AnnotatedExample]:
        return from_table(self.read_table(name, version), AnnotatedExample)

    def quarantine_table(self, name: str, version: Version = None) -> pa.Table:
        """The quarantined rows of one version (the same version numbers as ``read``)."""
        table = self._scan(self._resolve(name, version), where=IS_QUARANTINED)
        return conform(table, QuarantinedExample).sort_by("id")

    def quarantine(self, name: str, version: Version = None) -> list[QuarantinedExample]:
        """Rows that failed and were not annotated since, as of ``version``."""
        return from_table(self.quarantine_table(name, version), QuarantinedExample)

    @staticmethod
    def _commits(table: DeltaTable) -> list[Commit]:
        commits = []
        for entry in table.history():
            metrics = entry.get("operationMetrics") or {}
            lineage = Lineage.from_metadata(entry)
            inserted = metrics.get("num_target_rows_inserted", metrics.get("num_added_rows", 0))
            updated = metrics.get("num_target_rows_updated", 0)
            if lineage is not None and lineage.rows_inserted is not None:
                inserted, updated = lineage.rows_inserted, lineage.rows_updated or 0
            moment = datetime.fromtimestamp(entry["timestamp"] / 1000, tz=UTC)
            if COMMITTED_AT in entry:  # a migrated commit keeps its original time
                moment = datetime.fromisoformat(entry[COMMITTED_AT])
            commits.append(
                Commit(
                    version=entry["version"],
                    timestamp=moment,
                    operation=entry.get("operation", ""),
                    inserted=int(inserted),
                    updated=int(updated),
                    lineage=lineage,
                )
            )
        return sorted(commits, key=lambda c: c.version)

    def history(self, name: str) -> list[Commit]:
        """Every version of the dataset, oldest first, with its lineage."""
        return self._commits(self._table(name))

    def names(self, *, legacy: bool = False) -> builtins.list[str]:
        """Dataset names in the store (with ``legacy``, those still in the two-table layout)."""
        filesystem, base = pafs.FileSystem.from_uri(self.root)
        try:
            entries = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except OSError as error:
            raise StoreError(f"cannot list the store at {self.root}: {error}") from None
        found = []
        for entry in entries:
            if entry.type != pafs.FileType.Directory:
                continue
            for table in (TABLE, LEGACY_ROWS):
                log_dir = filesystem.get_file_info(f"{entry.path}/{table}/_delta_log")
                if log_dir.type == pafs.FileType.Directory:
                    found.append(entry.base_name)
                    break
        if legacy:
            return sorted(name for name in found if self.is_legacy(name))
        return sorted(found)

    def list(self) -> builtins.list[DatasetInfo]:
        """Every dataset in the store with its latest version, row counts and last commit time."""
        infos = []
        for name in self.names():
            table = self._table(name)
            last = self._commits(table)[-1]
            by_status = self._counts(table)
            infos.append(
                DatasetInfo(
                    name=name,
                    version=table.version(),
                    rows=by_status.get(ANNOTATED, 0),
                    quarantined=by_status.get(QUARANTINED, 0),
                    updated_at=last.timestamp,
                )
            )
        return infos

    @staticmethod
    def _counts(table: DeltaTable) -> dict[str, int]:
        """Rows per status."""
        query = f"SELECT {STATUS}, count(*) AS n FROM t GROUP BY {STATUS}"
        try:
            result = pa.table(QueryBuilder().register("t", table).execute(query).read_all())
        except Exception as error:  # deltalake / DataFusion raise several unrelated types here
            raise _damaged(table.table_uri, error) from None
        return {str(item[STATUS]): int(item["n"]) for item in result.to_pylist()}

    def diff(self, name: str, a: Version, b: Version) -> DatasetDiff:
        """Which ids version ``b`` added, removed, or relabelled relative to version ``a``."""
        old_table, new_table = self._resolve(name, a), self._resolve(name, b)
        old = _relations_by_id(self._scan(old_table, "id, relations", IS_ANNOTATED))
        new = _relations_by_id(self._scan(new_table, "id, relations", IS_ANNOTATED))
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
    ) -> IdSet:
        """Ids already annotated under ``config_hash`` (empty if the dataset does not exist).

        With ``include_final_quarantine``, ids quarantined under the same hash for a reason that
        will not change on a retry count as done too (an incremental run skips them). The ids
        are streamed into an ``IdSet`` (16 bytes an id), not loaded as a table.
        """
        if not self.exists(name):
            return IdSet()
        done = f"({IS_ANNOTATED} OR ({IS_QUARANTINED} AND NOT retryable))"
        config = "'" + config_hash.replace("'", "''") + "'"
        where = f"{done if include_final_quarantine else IS_ANNOTATED} AND "
        where += f"annotation['config_hash'] = {config}"
        table = self._table(name)
        try:
            return IdSet(_query_ids(table, where))
        except Exception as error:  # deltalake / DataFusion raise several unrelated types here
            raise _damaged(table.table_uri, error) from None


def _batches(part: Part, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    if isinstance(part, pa.Table):
        yield from part.select(columns or part.column_names).to_batches()
    else:
        yield from pq.ParquetFile(part).iter_batches(batch_size=READ_BATCH, columns=columns)


def _id_chunks(parts: Sequence[Part]) -> Iterator[pa.Array]:
    """The id column of every part, batch by batch."""
    for part in parts:
        for batch in _batches(part, ["id"]):
            yield batch.column(0).cast(pa.string())


def _query_ids(table: DeltaTable, where: str) -> Iterator[pa.Array]:
    """The ids of a table's rows matching ``where``, streamed batch by batch."""
    reader = QueryBuilder().register("t", table).execute(f"SELECT id FROM t WHERE {where}")
    for batch in reader:
        yield pa.record_batch(batch).column(0).cast(pa.string())


def _merge_reader(
    annotated: Sequence[Part],
    quarantined: Sequence[Part],
    rows: IdSet,
    *,
    resolved: bool,
) -> pa.RecordBatchReader:
    """The merge source in ``STORE_SCHEMA``, streamed from the parts: rows, failures, and (with
    ``resolved``) resolved-failure deletions.

    Every annotated id also gets a quarantined row flagged ``_cattune_resolved``, which deletes
    that id's earlier failure (if any) in the same commit. Failures whose id is in ``rows``
    (annotates), or that repeat an earlier failure's id, are left out.
    """
    schema = STORE_SCHEMA.append(pa.field(_RESOLVED, pa.bool_())) if resolved else STORE_SCHEMA

    def flagged(batch: pa.RecordBatch, status: str, flag: bool) -> pa.RecordBatch | None:
        table = _with_status(pa.Table.from_batches([batch]), status)
        if resolved:
            table = table.append_column(_RESOLVED, pa.array([flag] * table.num_rows, pa.bool_()))
        return table.combine_chunks().to_batches()[0] if table.num_rows else None

    def batches() -> Iterator[pa.RecordBatch]:
        for part in annotated:
            for batch in _batches(part):
                if (out := flagged(batch, ANNOTATED, False)) is not None:
                    yield out
        seen = IdSet()
        for part in quarantined:
            for batch in _batches(part):
                ids = batch.column(batch.schema.get_field_index("id")).cast(pa.string())
                keep = ~rows.isin(ids)
                keep[keep] = seen.add(ids.filter(pa.array(keep)))  # first failure of an id
                if (out := flagged(batch.filter(pa.array(keep)), QUARANTINED, False)) is not None:
                    yield out
        if resolved:
            for part in annotated:
                for batch in _batches(part):
                    if (out := flagged(batch, QUARANTINED, True)) is not None:
                        yield out

    return pa.RecordBatchReader.from_batches(schema, batches())


def store_rows(annotated: pa.Table, quarantined: pa.Table) -> pa.Table:
    """Annotated and quarantined contract tables as one table in ``STORE_SCHEMA``."""
    return pa.concat_tables(
        [_with_status(annotated, ANNOTATED), _with_status(quarantined, QUARANTINED)]
    )


def _with_status(table: pa.Table, status: str) -> pa.Table:
    """A contract table (annotated or quarantined) widened to ``STORE_SCHEMA`` with a status."""
    columns = []
    for field in STORE_SCHEMA:
        if field.name == STATUS:
            columns.append(pa.array([status] * table.num_rows, pa.string()))
        elif field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        elif field.name == "problems":
            columns.append(pa.array([[]] * table.num_rows, field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=STORE_SCHEMA)


def _relations_by_id(table: pa.Table) -> dict[str, Any]:
    return dict(
        zip(table.column("id").to_pylist(), table.column("relations").to_pylist(), strict=True)
    )
