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
            "AnnotatedExample rows (annotator 'given'). Every row is kept; what did not align "
            "is listed in the row's `problems`. Malformed input stops with FILE:LINE."
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
    parser.add_argument("--source-name", help="meta.source of the rows (default: file name)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cattune.pipeline.convert import convert_source, write_parquet

    records, summary = convert_source(
        args.file,
        format=args.source_format,
        strategy=args.strategy,
        source_name=args.source_name,
    )
    out = write_parquet(records, args.out)
    table = Table(title=f"convert {Path(args.file).name}", title_justify="left")
    table.add_column("")
    table.add_column("count", justify="right")
    for name, value in summary.as_rows():
        table.add_row(name, value)
    console = Console()
    console.print(table)
    console.print(f"wrote {len(records)} rows to {out}")
    return 0
