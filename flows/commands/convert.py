"""``cattune convert``: rows carrying their own relations (CAT JSONL) -> contract Parquet."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("cat", "jsonl", "csv", "parquet", "hf", "contract", "auto")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert CAT-format JSONL (input/target/important) into contract Parquet",
        description=(
            "Read a source whose rows carry phrase relations (the CAT authors' `important` "
            "field, or contract rows), align the phrases to character spans and write "
            "AnnotatedExample rows (annotator 'given'). Every row is kept: what did not align, "
            "and any malformed part of its relations, is listed in the row's `problems`; a row "
            "that cannot be read goes to OUT's .quarantine.parquet with its raw text and the "
            "reason. Only a file that cannot be read as a whole stops the run."
        ),
    )
    parser.add_argument("file", help="source file or directory")
    parser.add_argument(
        "--from", dest="source_format", choices=FORMATS, default="cat", help="input format"
    )
    parser.add_argument("--out", required=True, help="output Parquet file")
    parser.add_argument(
        "--strategy",
        choices=("all", "nearest"),
        default="all",
        help="link every earlier occurrence of a cause (all, the reference) or the nearest one",
    )
    parser.add_argument(
        "--boundary",
        choices=("word", "none"),
        default="word",
        help="word: a phrase must not split a word or a number (default); "
        "none: match phrases anywhere, as the reference code does",
    )
    parser.add_argument("--source-name", help="meta.source of the rows (default: file name)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cattune.flows.commands.annotate import quarantine_path
    from cattune.pipeline.convert import convert_source, write_parquet
    from cattune.schemas import QuarantinedExample

    result = convert_source(
        args.file,
        format=args.source_format,
        strategy=args.strategy,
        boundary=args.boundary,
        source_name=args.source_name,
    )
    out = write_parquet(result.records, args.out)
    quarantine = write_parquet(result.quarantined, quarantine_path(out), QuarantinedExample)
    table = Table(title=f"convert {Path(args.file).name}", title_justify="left")
    table.add_column("")
    table.add_column("count", justify="right")
    for name, value in result.summary.as_rows():
        table.add_row(name, value)
    console = Console()
    console.print(table)
    console.print(f"wrote {len(result.records)} rows to {out}")
    console.print(f"quarantined {len(result.quarantined)} malformed rows -> {quarantine}")
    return 0
