"""``cattune train``: fine-tune a causal LM with CAT (or the plain baseline) on a release.

The flags are generated from the training dataclasses (``ScriptArguments``, ``ModelArguments``,
``CATConfig``) by ``HfArgumentParser``, so every ``TrainingArguments`` field is a flag too.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        add_help=False,  # `cattune train --help` is the generated parser's help
        help="fine-tune a causal LM with Causal Attention Tuning (or the baseline)",
    )
    parser.set_defaults(handler=run, passes_flags_on=True)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cattune.training.config import parse_train_args
    from cattune.training.run import train, train_args_from_job

    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--job")
    found, rest = job.parse_known_args(args.extra)
    if found.job:
        script, model, config = train_args_from_job(found.job, rest)
    else:
        script, model, config = parse_train_args(rest)
    metrics = train(script, model, config)
    if metrics:
        _print_summary(Console(), config.output_dir, metrics)
    return 0


def _print_summary(console, out: str, metrics: dict) -> None:
    from rich.table import Table

    table = Table(title=f"cattune train ({metrics['mode']})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    keys = ("rows", "steps", "train_loss", "first_lm_loss", "last_lm_loss",
            "first_causal_ratio", "last_causal_ratio")  # fmt: skip
    for key in keys:
        if key in metrics["train"]:
            table.add_row(key, f"{metrics['train'][key]:.4g}")
    for name, split in metrics.get("eval", {}).get("splits", {}).items():
        table.add_row(f"eval {name} accuracy", f"{split['accuracy']:.3f} (n={split['n']})")
    console.print(table)
    console.print(f"model, metrics and plots in {out}")
