"""``cattune train``: fine-tune a causal LM with CAT (or the plain baseline) on a release."""

from __future__ import annotations

import argparse

# CLI dest -> TrainOptions name; every option defaults to None so a job file's config can fill it.
_OPTIONS = (
    "release", "data", "split", "model", "mode", "alpha", "loss_type", "attn_weight", "decay",
    "epochs", "max_steps", "lr", "batch_size", "grad_accum", "max_length", "layers",
    "attn_implementation", "lora_r", "seed", "logging_steps", "eval_data", "eval_split", "out",
)  # fmt: skip


def layer_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer indices, got {text!r}"
        ) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a causal LM with Causal Attention Tuning (or the baseline)",
        description=(
            "Train on a release (--release DIR), a Parquet file of contract rows (--data) or a "
            "job file written by the hand-off flow (--job; options given here override its "
            "config). --model is a local Hugging Face model directory, or 'tiny' for a small "
            "Llama built on the spot. Writes OUT/model, OUT/metrics.json, OUT/plots/*.png."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--release", help="release directory (manifest.json + data/)")
    source.add_argument("--data", help="Parquet file of contract rows")
    source.add_argument("--job", help="training job JSON (cattune.schemas.TrainingJob)")
    parser.add_argument(
        "--split", help="split to train on (default: train of a release, every row of --data)"
    )
    parser.add_argument("--model", help="local model directory, or 'tiny' (default)")
    parser.add_argument("--mode", choices=("cat", "baseline"), help="default: cat")
    parser.add_argument("--alpha", type=float, help="target a1/a0 ratio (default 2.0)")
    parser.add_argument("--loss-type", choices=("div", "div2", "nll", "hinge"), help="default: div")
    parser.add_argument("--attn-weight", type=float, help="base weight of L_attn (default 1.0)")
    parser.add_argument("--decay", type=float, help="weight = w*exp(-decay*epoch) (default 1.0)")
    parser.add_argument("--epochs", type=float, help="default 3")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps")
    parser.add_argument("--lr", type=float, help="learning rate (default 3e-3 tiny, 2e-5 else)")
    parser.add_argument("--batch-size", type=int, help="per device (default 8)")
    parser.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    parser.add_argument("--max-length", type=int, help="truncate rows to this many tokens")
    parser.add_argument("--layers", type=layer_list, help="e.g. 0,1 (default: all layers)")
    parser.add_argument(
        "--attn-implementation", choices=("efficient", "eager"), help="default: efficient"
    )
    parser.add_argument("--lora-r", type=int, help="train LoRA adapters of this rank")
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--logging-steps", type=int, help="default 10")
    parser.add_argument(
        "--eval-data",
        action="append",
        help="release dir or Parquet to evaluate on (repeatable; default: the release's "
        "other splits)",
    )
    parser.add_argument("--eval-split", action="append", help="only these splits of --eval-data")
    parser.add_argument("--out", help="output directory (default ./cattune-run)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cattune.training.run import TrainOptions, options_from_job, parse_options, train

    values = {name: getattr(args, name) for name in _OPTIONS}
    values["progress"] = not args.quiet
    if args.job:
        options = options_from_job(args.job, values)
    else:
        options = parse_options(TrainOptions, {k: v for k, v in values.items() if v is not None})
    metrics = train(options)
    if metrics:
        _print_summary(Console(), options.out, metrics)
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
