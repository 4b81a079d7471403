"""``cattune annotate SOURCE --out OUT.parquet``: label every row of a source file (file mode).

Every source row ends in exactly one of two Parquet files: OUT (AnnotatedExample rows) or
``<stem>.quarantine.parquet`` next to it (QuarantinedExample rows: annotator failures with their
reason, and malformed source rows with the source's error and the raw row as prompt). Rows are
streamed in batches; both files are written to temporary names and moved into place only when
the whole source is done, so a failed run leaves no half-written output (LLM replies it got are
kept in the reply cache and not paid for again).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cattune.annotators.base import reason_kind
from cattune.annotators.options import KINDS
from cattune.schemas import ConfigError

if TYPE_CHECKING:
    from cattune.annotators.base import Annotator
    from cattune.annotators.options import AnnotatorOptions
    from cattune.pipeline.sources import SourceRow
    from cattune.schemas import AnnotatedExample, QuarantinedExample


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "annotate",
        help="label a source file's rows with causal relations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="JSONL / CSV / Parquet / HF dataset dir / CAT JSONL")
    parser.add_argument(
        "--annotator", choices=KINDS, default="prior", help="who labels the rows (default: prior)"
    )
    parser.add_argument("--pack", help="prior pack name or file (prior, llm, vllm)")
    # File mode writes --out; the dataset mode (`--dataset NAME`, a Prefect flow into the
    # versioned store) is the other choice of one required group (see add_dataset_mode below).
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="file mode: annotated rows (.parquet)")
    parser.add_argument("--format", default="auto", help="source format (default: auto)")
    parser.add_argument("--prompt-field", help="source column holding the prompt")
    parser.add_argument("--completion-field", help="source column holding the completion")
    parser.add_argument(
        "--batch-size", type=int, default=256, help="rows per annotation batch (default: 256)"
    )
    add_spec_flags(parser)
    add_dataset_mode(parser, target)
    parser.set_defaults(handler=run)


def quarantine_path(out: Path) -> Path:
    """``data.parquet`` -> ``data.quarantine.parquet`` in the same folder."""
    return out.with_name(f"{out.stem}.quarantine{out.suffix or '.parquet'}")


def add_spec_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per CLI field of the annotator specs (``annotators/options.py``), and --no-cache."""
    from cattune.annotators.options import cli_fields, kinds_with_flag

    group = parser.add_argument_group(
        "annotator options (each applies to the annotators named in its help)"
    )
    for name, spec_field in cli_fields().items():
        default = spec_field.get_default()
        shown = ""
        if spec_field.is_required():
            shown = " (required)"
        elif default is not None and not isinstance(default, bool):
            shown = f" (default: {default})"
        kinds = ", ".join(kinds_with_flag(name))
        group.add_argument(
            "--" + name.replace("_", "-"),
            help=f"{kinds}: {spec_field.description}{shown}",
            **_argparse_type(spec_field.annotation),
        )
    group.add_argument(
        "--no-cache", action="store_true", help="llm: do not read or write the cache"
    )


def _argparse_type(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a spec field's type: a switch, a choice, a number or a string."""
    import types
    import typing

    if annotation is bool:
        return {"action": "store_true"}
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": typing.get_args(annotation)}
    if annotation in (int, float):
        return {"type": annotation}
    return {"type": str}


def annotator_options(args: argparse.Namespace) -> AnnotatorOptions:
    """The chosen annotator's spec from the flags given; a flag it does not take is an error.

    The check and its messages are the spec's (:func:`options_for`), so the CLI, the annotate flow
    and Python refuse the same options with the same line.
    """
    from cattune.annotators.options import cli_fields, options_for, spec_class

    given = {
        name: getattr(args, name)
        for name in cli_fields()
        if getattr(args, name) is not None and getattr(args, name) is not False
    }
    if args.no_cache:
        if "cache" not in spec_class(args.annotator).model_fields:
            raise ConfigError(f"--no-cache does not apply to --annotator {args.annotator}")
        if args.cache:
            raise ConfigError("use either --cache PATH or --no-cache, not both")
        given["cache"] = False
    return options_for(args.annotator, given)


@dataclass
class Counts:
    annotated: int = 0
    quarantined: int = 0
    malformed: int = 0
    retryable: int = 0
    requests: int = 0
    cached: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


def source_error_row(row: SourceRow, annotator: Annotator, source: str) -> QuarantinedExample:
    """A malformed source row, kept with the source's error and its raw text as prompt."""
    from cattune.pipeline.sources import malformed_row
    from cattune.schemas import Annotation

    annotation = Annotation(
        annotator=annotator.name,
        annotator_version=annotator.version,
        config_hash=annotator.config_hash(),
        attempts=0,
    )
    return malformed_row(row, annotation, source)


@dataclass
class Batch:
    """One batch's output; ``malformed`` of the quarantined rows are malformed source rows."""

    annotated: list[AnnotatedExample]
    quarantined: list[QuarantinedExample]
    malformed: int


def annotate_rows(
    rows: Iterable[SourceRow], annotator: Annotator, *, source: str, batch_size: int
) -> Iterator[Batch]:
    """Annotate source rows batch by batch; each input row lands in exactly one output list."""
    from cattune.schemas import AnnotatedExample, QuarantinedExample

    batch: list[SourceRow] = []

    def flush() -> Batch:
        done = Batch([], [], 0)
        examples = [row.example for row in batch if row.example is not None]
        results = iter(annotator.annotate(examples) if examples else [])
        for row in batch:
            if row.example is None:
                done.quarantined.append(source_error_row(row, annotator, source))
                done.malformed += 1
                continue
            result = next(results, None)
            if result is None or result.id != row.example.id:
                raise RuntimeError(f"annotator {annotator.name!r} broke one-result-per-row")
            if isinstance(result, AnnotatedExample):
                done.annotated.append(result)
            elif isinstance(result, QuarantinedExample):
                done.quarantined.append(result)
            else:
                raise RuntimeError(f"annotator {annotator.name!r} returned {type(result).__name__}")
        if next(results, None) is not None:
            raise RuntimeError(f"annotator {annotator.name!r} returned more results than rows")
        batch.clear()
        return done

    for row in rows:
        batch.append(row)
        if len(batch) >= batch_size:
            yield flush()
    if batch:
        yield flush()


def run(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from cattune.annotators.registry import build_annotator
    from cattune.pipeline.sources import read_source
    from cattune.schemas import AnnotatedExample, QuarantinedExample, arrow_schema, to_table

    if args.dataset:
        return run_dataset_mode(args)
    _refuse_dataset_flags(args)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.out)
    if out.suffix != ".parquet":
        raise ConfigError(f"--out must name a .parquet file, got {out}")
    quarantine = quarantine_path(out)
    annotator = build_annotator(args.annotator, annotator_options(args), pack=args.pack)
    check_endpoint(annotator)
    source = Path(args.source)
    rows = read_source(
        source,
        format=args.format,
        prompt_field=args.prompt_field,
        completion_field=args.completion_field,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = [
        out.with_name(f".{out.name}.partial"),
        quarantine.with_name(f".{quarantine.name}.partial"),
    ]
    counts = Counts()
    try:
        with (
            pq.ParquetWriter(partial[0], arrow_schema(AnnotatedExample)) as good_writer,
            pq.ParquetWriter(partial[1], arrow_schema(QuarantinedExample)) as bad_writer,
        ):
            for batch in annotate_rows(
                rows, annotator, source=source.name, batch_size=args.batch_size
            ):
                good_writer.write_table(to_table(batch.annotated, AnnotatedExample))
                bad_writer.write_table(to_table(batch.quarantined, QuarantinedExample))
                _count(counts, batch, annotator)
        partial[0].replace(out)
        partial[1].replace(quarantine)
    finally:
        for path in partial:
            path.unlink(missing_ok=True)
    _report(counts, out, quarantine, args.annotator)
    return exit_status(args.annotator, counts.annotated, counts.quarantined, counts.retryable)


def check_endpoint(annotator: Any) -> None:
    """An endpoint that cannot be used fails here, in one line, before any row is read."""
    check = getattr(annotator, "check_endpoint", None)
    if check is not None:
        check()


def exit_status(kind: str, annotated: int, quarantined: int, retryable: int) -> int:
    """1 (with the reason on stderr) when an LLM run annotated nothing or left rows to retry.

    Deterministic annotators (prior, given, gold) exit 0 whatever the data gave: their
    quarantine is final and running again would not change it.
    """
    if kind not in ("llm", "vllm"):
        return 0
    if quarantined and not annotated:
        reason = f"nothing was annotated: all {quarantined} rows ended in quarantine"
    elif retryable:
        reason = (
            f"{retryable} rows failed for reasons that may pass (timeouts, server errors); "
            "run the same command again to retry only those"
        )
    else:
        return 0
    print(f"cattune: error: {reason}", file=sys.stderr)
    return 1


def _count(counts: Counts, batch: Batch, annotator: Any) -> None:
    counts.annotated += len(batch.annotated)
    counts.quarantined += len(batch.quarantined)
    counts.malformed += batch.malformed
    counts.retryable += sum(row.retryable for row in batch.quarantined)
    counts.reasons.update(reason_kind(row.error) for row in batch.quarantined)
    stats = getattr(annotator, "last_run", None)  # the LLM annotator's request statistics
    if stats is not None:
        counts.requests += stats.requests
        counts.cached += stats.cached


def _report(counts: Counts, out: Path, quarantine: Path, kind: str) -> None:
    total = counts.annotated + counts.quarantined
    print(f"rows        {total}")
    print(f"annotated   {counts.annotated} -> {out}")
    print(
        f"quarantined {counts.quarantined} -> {quarantine} "
        f"({counts.malformed} malformed source rows, {counts.retryable} retryable)"
    )
    if kind == "llm":
        print(f"requests    {counts.requests} ({counts.cached} rows from cache)")
    for reason, n in counts.reasons.most_common(3):
        print(f"  {n} x {reason}")


# --- dataset mode (`--dataset NAME`): the annotate Prefect flow into the versioned store --------

DATASET_FLAGS = ("store", "dask_address", "workers")


def add_dataset_mode(parser: argparse.ArgumentParser, target: Any) -> None:
    target.add_argument(
        "--dataset",
        metavar="NAME",
        help="dataset mode: commit the rows as a new version of this dataset (Prefect flow)",
    )
    flow = parser.add_argument_group("dataset mode (--dataset NAME)")
    flow.add_argument("--store", metavar="ROOT", help="store root (default: $CATTUNE_HOME/store)")
    flow.add_argument(
        "--dask-address", metavar="ADDR", help="run shards on a Dask cluster (tcp://host:8786)"
    )
    flow.add_argument(
        "--workers", type=int, help="shards annotated at once on local threads (default: 4)"
    )


def _refuse_dataset_flags(args: argparse.Namespace) -> None:
    stray = [flag for flag in DATASET_FLAGS if getattr(args, flag) is not None]
    if stray:
        flags = ", ".join("--" + flag.replace("_", "-") for flag in stray)
        raise ConfigError(f"{flags} only apply with --dataset NAME (not with --out)")


def run_dataset_mode(args: argparse.Namespace) -> int:
    """Run the annotate flow: incremental, sharded (--batch-size rows a shard), one commit."""
    from cattune.annotators.registry import build_annotator
    from cattune.pipeline.names import validate_name
    from cattune.pipeline.sources import read_source
    from cattune.schemas import InputError

    validate_name(args.dataset)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not Path(args.source).exists():
        raise InputError("no such file or directory; check the path", path=args.source)
    options = annotator_options(args)
    # Configuration and endpoint errors before Prefect, in the same one line as file mode.
    check_endpoint(build_annotator(args.annotator, options, pack=args.pack))
    # Whole-file problems (empty, binary, no usable columns) surface at the first row: report
    # them here in one line, not from inside the flow, where Prefect logs them with tracebacks.
    rows = read_source(
        args.source,
        format=args.format,
        prompt_field=args.prompt_field,
        completion_field=args.completion_field,
    )
    next(rows, None)
    del rows  # closes the file

    from cattune.flows.annotate import configured_flow

    flow = configured_flow(
        dask_address=args.dask_address,
        concurrency=args.workers if args.workers is not None else 4,
    )
    summary = flow(
        source=args.source,
        dataset=args.dataset,
        annotator=args.annotator,
        pack=args.pack,
        options=options,
        format=args.format,
        prompt_field=args.prompt_field,
        completion_field=args.completion_field,
        store=args.store,
        shard_size=args.batch_size,
    )
    state = f"version {summary.version}" if summary.committed else "no new version"
    print(f"dataset     {summary.dataset}: {state}")
    print(
        f"rows read   {summary.rows_read} ({summary.rows_malformed} malformed, "
        f"{summary.rows_duplicate} repeating an earlier row)"
    )
    print(f"skipped     {summary.rows_skipped} (already annotated with this configuration)")
    print(f"annotated   {summary.rows_annotated} in {summary.shards} shards")
    print(f"quarantined {summary.rows_quarantined}")
    kinds: Counter[str] = Counter()
    for reason, n in summary.quarantine_reasons.items():
        kinds[reason_kind(reason)] += n
    for reason, n in kinds.most_common(3):
        print(f"  {n} x {reason}")
    retryable = 0
    if summary.rows_quarantined and args.annotator in ("llm", "vllm"):
        from cattune.pipeline.store import DatasetStore

        retryable = sum(
            q.retryable and q.annotation.config_hash == summary.config_hash
            for q in DatasetStore(args.store).quarantine(summary.dataset)
        )
    return exit_status(args.annotator, summary.rows_annotated, summary.rows_quarantined, retryable)
