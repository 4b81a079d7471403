"""The one annotate pipeline of file mode and the annotate flow: rows -> batches -> staged Parquet.

Source rows are read lazily and annotated in bounded batches; each batch's annotated rows and
quarantined rows (annotator failures and malformed source rows, one reason format) are appended
to a pair of staged Parquet files as soon as the batch is done, so a run holds one batch in
memory whatever the source size. A staged pair is written under temporary names and renamed into
place when complete: a pair that exists is whole, which is what lets a re-run reuse it.

File mode stages one pair and moves it to OUT; the flow stages one pair per shard under the
store (see ``DatasetStore.staging_dir``) and commits them in one Delta commit.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from cattune.annotators.base import Annotator, reason_kind
from cattune.pipeline.id_set import IdSet
from cattune.pipeline.sources import SourceRow, malformed_row
from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    Example,
    QuarantinedExample,
    arrow_schema,
    from_table,
    to_table,
)

INPUT_SUFFIX = ".input.parquet"
PLAN_FILE = "plan.json"
ANNOTATED_SUFFIX = ".annotated.parquet"
QUARANTINED_SUFFIX = ".quarantined.parquet"
REASONS_KEPT = 10
READ_CHUNK = 4096
COUNTS_KEY = b"cattune.counts"


class RunCounts(BaseModel):
    """Running counts of an annotate run; file mode prints them, the flow returns them."""

    rows_read: int = 0
    rows_malformed: int = 0
    rows_duplicate: int = Field(0, description="rows repeating an earlier row's id (same text)")
    rows_skipped: int = 0
    rows_annotated: int = 0
    rows_quarantined: int = 0
    rows_retryable: int = Field(0, description="quarantined for reasons that may pass on a re-run")
    requests: int = Field(0, description="LLM requests made (the llm annotator)")
    cached: int = Field(0, description="rows answered from the LLM reply cache")
    quarantine_reasons: dict[str, int] = Field(
        {}, description="quarantined rows per reason kind (the reason before its details)"
    )

    def add(self, other: RunCounts) -> None:
        """Add another run part's counts to these."""
        for name in type(self).model_fields:
            if name != "quarantine_reasons":
                setattr(self, name, getattr(self, name) + getattr(other, name))
        reasons = Counter(self.quarantine_reasons) + Counter(other.quarantine_reasons)
        self.quarantine_reasons = dict(reasons.most_common())

    def top_reasons(self, n: int = REASONS_KEPT) -> list[tuple[str, int]]:
        return Counter(self.quarantine_reasons).most_common(n)


@dataclass
class Batch:
    """One batch's output; ``malformed`` of the quarantined rows are malformed source rows."""

    annotated: list[AnnotatedExample]
    quarantined: list[QuarantinedExample]
    malformed: int = 0


def source_error_row(row: SourceRow, annotator: Annotator, source: str) -> QuarantinedExample:
    """A malformed source row, kept with the source's error and its raw text as prompt."""
    annotation = Annotation(
        annotator=annotator.name,
        annotator_version=annotator.version,
        config_hash=annotator.config_hash(),
        attempts=0,
    )
    return malformed_row(row, annotation, source)


def annotate_examples(examples: list[Example], annotator: Annotator) -> Batch:
    """Annotate one batch; every example lands in exactly one of the two lists, in order."""
    results = annotator.annotate(examples) if examples else []
    if len(results) != len(examples):
        raise RuntimeError(
            f"annotator {annotator.name!r} returned {len(results)} results for {len(examples)} rows"
        )
    done = Batch([], [])
    for example, result in zip(examples, results, strict=True):
        if result.id != example.id:
            raise RuntimeError(f"annotator {annotator.name!r} broke one-result-per-row")
        if isinstance(result, AnnotatedExample):
            done.annotated.append(result)
        elif isinstance(result, QuarantinedExample):
            done.quarantined.append(result)
        else:
            raise RuntimeError(f"annotator {annotator.name!r} returned {type(result).__name__}")
    return done


def annotate_rows(
    rows: Iterable[SourceRow], annotator: Annotator, *, source: str, batch_size: int
) -> Iterator[Batch]:
    """Annotate source rows batch by batch; malformed rows go to the batch's quarantine."""
    batch: list[SourceRow] = []

    def flush() -> Batch:
        done = annotate_examples([r.example for r in batch if r.example is not None], annotator)
        bad = [source_error_row(r, annotator, source) for r in batch if r.example is None]
        done.quarantined[:0] = bad
        done.malformed = len(bad)
        batch.clear()
        return done

    for row in rows:
        batch.append(row)
        if len(batch) >= batch_size:
            yield flush()
    if batch:
        yield flush()


def count_batch(counts: RunCounts, batch: Batch, annotator: Any) -> None:
    """Add one batch to the running counts (and the LLM annotator's request statistics)."""
    counts.rows_annotated += len(batch.annotated)
    counts.rows_quarantined += len(batch.quarantined)
    counts.rows_malformed += batch.malformed
    counts.rows_retryable += sum(row.retryable for row in batch.quarantined)
    reasons = Counter(counts.quarantine_reasons)
    reasons.update(reason_kind(row.error) for row in batch.quarantined)
    counts.quarantine_reasons = dict(reasons.most_common())
    stats = getattr(annotator, "last_run", None)
    if stats is not None:
        counts.requests += stats.requests
        counts.cached += stats.cached


class StagedPair(BaseModel):
    """Where one staged pair of files lies (or will lie) and what it holds once written."""

    annotated: str
    quarantined: str
    counts: RunCounts = RunCounts()

    @classmethod
    def at(cls, stem: Path) -> StagedPair:
        return cls(
            annotated=str(stem.with_name(stem.name + ANNOTATED_SUFFIX)),
            quarantined=str(stem.with_name(stem.name + QUARANTINED_SUFFIX)),
        )

    @classmethod
    def for_input(cls, shard: str | Path) -> StagedPair:
        """The output pair of a shard input file (``shard-00003.input.parquet``)."""
        path = Path(shard)
        return cls.at(path.with_name(path.name.removesuffix(INPUT_SUFFIX)))

    def exists(self) -> bool:
        return Path(self.annotated).is_file() and Path(self.quarantined).is_file()

    def read_counts(self) -> RunCounts:
        """The counts stored in the files' metadata when they were written."""
        metadata = pq.read_metadata(self.annotated).metadata or {}
        return RunCounts.model_validate_json(metadata[COUNTS_KEY])

    def stage(self, batches: Iterable[Batch], annotator: Any, counts: RunCounts) -> RunCounts:
        """Write every batch as it comes, then move both files into place (whole or not at all).

        ``counts`` may already hold the run's source counts (rows read, duplicates); the batches'
        counts are added and the total is kept in the annotated file's schema metadata.
        """
        final = [Path(self.annotated), Path(self.quarantined)]
        partial = [path.with_name(f".{path.name}.partial") for path in final]
        final[0].parent.mkdir(parents=True, exist_ok=True)
        try:
            with (
                pq.ParquetWriter(partial[0], arrow_schema(AnnotatedExample)) as good,
                pq.ParquetWriter(partial[1], arrow_schema(QuarantinedExample)) as bad,
            ):
                for batch in batches:
                    good.write_table(to_table(batch.annotated, AnnotatedExample))
                    bad.write_table(to_table(batch.quarantined, QuarantinedExample))
                    count_batch(counts, batch, annotator)
                good.add_key_value_metadata({COUNTS_KEY: counts.model_dump_json().encode()})
            partial[1].replace(final[1])
            partial[0].replace(final[0])  # last: its presence marks the pair complete
        finally:
            for path in partial:
                path.unlink(missing_ok=True)
        self.counts = counts
        return counts

    def move_to(self, annotated: Path, quarantined: Path) -> None:
        shutil.move(self.quarantined, quarantined)
        shutil.move(self.annotated, annotated)


def write_examples(examples: list[Example], path: Path) -> None:
    """One shard's input rows, written atomically."""
    partial = path.with_name(f".{path.name}.partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(to_table(examples, Example), partial)
    partial.replace(path)


def read_examples(path: str | Path) -> list[Example]:
    return from_table(pq.read_table(path), Example)


class SourcePlan(BaseModel):
    """A source read into shard input files; ``malformed`` holds its malformed rows (staged as
    quarantine) and, in its counts, what reading found (rows read, duplicates, skipped)."""

    staging: str
    shards: list[str]
    malformed: StagedPair

    @property
    def counts(self) -> RunCounts:
        return self.malformed.counts


def plan_shards(
    rows: Iterable[SourceRow],
    annotator: Annotator,
    *,
    source: str,
    done: IdSet,
    shard_size: int,
    staging: Path,
) -> SourcePlan:
    """Write the rows still to annotate as shard input files of ``shard_size`` rows.

    Ids in ``done`` are skipped and a repeated id is read once (its first row); the ids seen are
    kept in an ``IdSet`` (16 bytes an id). A plan already written under ``staging`` (a killed
    run's) is returned as it is: the staging key pins the source, the configuration and the
    dataset version, so it holds the same shards.
    """
    plan_file = staging / PLAN_FILE
    if plan_file.is_file():
        return SourcePlan.model_validate_json(plan_file.read_text())
    counts = RunCounts()
    shards: list[str] = []

    def malformed() -> Iterator[Batch]:
        seen = IdSet()
        pending: list[Example] = []
        bad: list[QuarantinedExample] = []

        def flush() -> None:
            path = staging / f"shard-{len(shards):05d}{INPUT_SUFFIX}"
            write_examples(pending, path)
            shards.append(str(path))
            pending.clear()

        source_rows = iter(rows)
        while chunk := list(islice(source_rows, READ_CHUNK)):
            counts.rows_read += len(chunk)
            good = [row.example for row in chunk if row.example is not None]
            ids = pa.array([example.id for example in good], pa.string())
            first, skip = seen.add(ids), done.isin(ids)
            counts.rows_duplicate += int((~first).sum())
            counts.rows_skipped += int((first & skip).sum())
            for example, keep in zip(good, first & ~skip, strict=True):
                if keep:
                    pending.append(example)
                    if len(pending) >= shard_size:
                        flush()
            failed = [row for row in chunk if row.example is None]
            bad += [source_error_row(row, annotator, source) for row in failed]
            if len(bad) >= shard_size:
                yield Batch([], bad[:], len(bad))
                bad.clear()
        if pending:
            flush()
        yield Batch([], bad, len(bad))

    pair = StagedPair.at(staging / "source")
    pair.stage(malformed(), None, counts)
    plan = SourcePlan(staging=str(staging), shards=shards, malformed=pair)
    partial = plan_file.with_name(f".{PLAN_FILE}.partial")
    partial.write_text(plan.model_dump_json())
    partial.replace(plan_file)
    return plan


def remove_staging(staging: str | Path) -> None:
    """Remove a run's staging folder (after its commit, or when it has gone stale)."""
    shutil.rmtree(staging, ignore_errors=True)
