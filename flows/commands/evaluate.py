"""``cattune eval``: exact-match accuracy (per split, IID vs OOD) and causal ratio of a model."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        add_help=False,  # `cattune eval --help` is the generated parser's help
        help="evaluate a fine-tuned model: accuracy per split and causal-attention ratio",
    )
    parser.set_defaults(handler=run, passes_flags_on=True)


DESCRIPTION = (
    "Greedy generation on the prompts of a release or Parquet file, exact-match accuracy after "
    "normalisation (numbers compare numerically, a leading 'Answer:' is ignored, "
    "case-insensitive), label-choice accuracy (the most likely of a split's distinct answers), "
    "per split and IID vs OOD, and the causal-attention ratio a1/a0 on rows with relations. "
    "Writes metrics.json and predictions.jsonl."
)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from transformers import HfArgumentParser

    from cattune.training.config import EvalArguments
    from cattune.training.run import evaluate_model

    parser = HfArgumentParser(EvalArguments, prog="cattune eval", description=DESCRIPTION)
    (options,) = parser.parse_args_into_dataclasses(args.extra, look_for_args_file=False)
    metrics = evaluate_model(options)
    table = Table(title=f"cattune eval {options.model}", title_justify="left")
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
