"""``cattune eval``: exact-match accuracy (per split, IID vs OOD) and causal ratio of a model."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a fine-tuned model: accuracy per split and causal-attention ratio",
        description=(
            "Greedy generation on the prompts of a release or Parquet file, exact-match accuracy "
            "after normalisation (numbers compare numerically, a leading 'Answer:' is ignored, "
            "case-insensitive), per split and IID vs OOD, and the causal-attention ratio a1/a0 "
            "on rows with relations. Writes metrics.json and predictions.jsonl."
        ),
    )
    parser.add_argument("--model", required=True, help="local model directory")
    parser.add_argument(
        "--data", required=True, action="append", help="release dir or Parquet (repeatable)"
    )
    parser.add_argument("--split", action="append", help="only these splits (repeatable)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, help="default: longest answer + 4")
    parser.add_argument("--max-length", type=int, help="truncate rows for the causal ratio")
    parser.add_argument("--attn-implementation", choices=("efficient", "eager"))
    parser.add_argument("--out", help="output directory (default MODEL/eval)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cattune.training.run import EvalOptions, evaluate_model, parse_options

    values = {
        "model": args.model,
        "data": args.data,
        "split": args.split,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "max_length": args.max_length,
        "attn_implementation": args.attn_implementation,
        "out": args.out,
        "progress": not args.quiet,
    }
    options = parse_options(EvalOptions, {k: v for k, v in values.items() if v is not None})
    metrics = evaluate_model(options)
    table = Table(title=f"cattune eval {args.model}", title_justify="left")
    for column in ("split", "n", "accuracy", "choice accuracy", "causal ratio"):
        table.add_column(column, justify="left" if column == "split" else "right")
    groups = {**metrics["splits"], **{k: metrics[k] for k in ("iid", "ood") if k in metrics}}
    groups["overall"] = metrics["overall"]
    for name, item in groups.items():
        ratio, choice = item.get("causal_ratio"), item["choice_accuracy"]
        table.add_row(
            name,
            str(item["n"]),
            f"{item['accuracy']:.3f}",
            "-" if choice is None else f"{choice:.3f}",
            "-" if ratio is None else f"{ratio:.3f}",
        )
    Console().print(table)
    return 0
