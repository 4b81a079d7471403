"""``cattune annotate SOURCE --out OUT.parquet``: label every row of a source file (file mode).

Every source row ends in exactly one of two Parquet files: OUT (AnnotatedExample rows) or
``<stem>.quarantine.parquet`` next to it (QuarantinedExample rows: annotator failures with their
reason, and malformed source rows with the source's error and the raw row as prompt). Rows are
streamed in batches through the same pipeline as dataset mode (``cattune.pipeline.annotate_run``);
both files are staged under hidden names and moved into place only when the whole source is done,
so a failed run leaves no half-written output (LLM replies it got are kept in the reply cache and
not paid for again).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cattune.annotators.options import KINDS
from cattune.schemas import ConfigError

if TYPE_CHECKING:
    from cattune.annotators.options import AnnotatorOptions
    from cattune.pipeline.annotate_run import RunCounts


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


def run(args: argparse.Namespace) -> int:
    from cattune.annotators.registry import build_annotator
    from cattune.pipeline.annotate_run import RunCounts, StagedPair, annotate_rows
    from cattune.pipeline.sources import read_source

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
    staged = StagedPair.at(out.with_name(f".{out.stem}.staged"))
    batches = annotate_rows(rows, annotator, source=source.name, batch_size=args.batch_size)
    try:
        counts = staged.stage(batches, annotator, RunCounts())
        counts.rows_read = counts.rows_annotated + counts.rows_quarantined
        staged.move_to(out, quarantine)
    finally:
        Path(staged.annotated).unlink(missing_ok=True)
        Path(staged.quarantined).unlink(missing_ok=True)
    report(counts, args.annotator, annotated_to=str(out), quarantined_to=str(quarantine))
    return exit_status(
        args.annotator, counts.rows_annotated, counts.rows_quarantined, counts.rows_retryable
    )


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


def report(
    counts: RunCounts,
    kind: str,
    *,
    annotated_to: str,
    quarantined_to: str,
    skipped: bool = False,
) -> None:
    """The run's summary, the same lines in file mode and dataset mode."""
    print(
        f"rows read   {counts.rows_read} ({counts.rows_malformed} malformed, "
        f"{counts.rows_duplicate} repeating an earlier row)"
    )
    if skipped:
        print(f"skipped     {counts.rows_skipped} (already annotated with this configuration)")
    print(f"annotated   {counts.rows_annotated} -> {annotated_to}")
    print(
        f"quarantined {counts.rows_quarantined} -> {quarantined_to} "
        f"({counts.rows_malformed} malformed source rows, {counts.rows_retryable} retryable)"
    )
    if kind == "llm":
        print(f"requests    {counts.requests} ({counts.cached} rows from cache)")
    for reason, n in counts.top_reasons(3):
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
    print(f"dataset     {summary.dataset}: {state} ({summary.shards} shards)")
    target = f"{summary.dataset}@{summary.version}"
    report(summary, args.annotator, annotated_to=target, quarantined_to=target, skipped=True)
    return exit_status(
        args.annotator, summary.rows_annotated, summary.rows_quarantined, summary.rows_retryable
    )
