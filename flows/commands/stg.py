"""``cattune stg generate``: write the Spurious Token Game benchmark with gold relations."""

from __future__ import annotations

import argparse
from collections import Counter

# cattune.pipeline.stg.VARIANTS, written out so that the CLI starts without importing it
VARIANT_CHOICES = ("stg", "stg_h", "stg_shortcut")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stg", help="Spurious Token Game benchmark (generated, with gold causal relations)"
    )
    actions = parser.add_subparsers(dest="stg_command", metavar="ACTION", required=True)
    generate = actions.add_parser(
        "generate",
        help="write train / iid_test / ood_test Parquet files",
        description=(
            "Generate the CAT paper's STG (cancer risk) or STG_H (air quality) benchmark: "
            "DIR/train.parquet, DIR/iid_test.parquet, DIR/ood_test.parquet, contract rows "
            "annotated by 'gold'. The same seed gives the same rows."
        ),
    )
    generate.add_argument("--variant", choices=VARIANT_CHOICES, default="stg")
    generate.add_argument("--seed", type=int, required=True)
    generate.add_argument("--out", required=True, help="output directory")
    generate.add_argument("--n-train", type=int, default=1600, help="training rows (1600)")
    generate.add_argument("--n-test", type=int, default=400, help="rows in each test split (400)")
    generate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cattune.pipeline.stg import generate_stg, write_stg

    splits = generate_stg(args.variant, args.seed, n_train=args.n_train, n_test=args.n_test)
    paths = write_stg(splits, args.out)
    table = Table(title=f"stg generate --variant {args.variant} --seed {args.seed}")
    table.add_column("split")
    table.add_column("rows", justify="right")
    table.add_column("answers (most common)")
    table.add_column("file")
    for split, rows in splits.items():
        common = Counter(row.completion for row in rows).most_common(3)
        answers = ", ".join(f"{answer}: {count}" for answer, count in common)
        table.add_row(split, str(len(rows)), answers, str(paths[split]))
    Console().print(table)
    return 0
