"""``cattune demo``: the whole pipeline on the embedded defaults (see cattune.flows.demo)."""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run everything on generated STG data: annotate, version, release, train, compare",
        description=(
            "Generate the STG benchmark, annotate it with the PriorAnnotator through the Prefect "
            "annotate flow, version and release it, fine-tune the embedded pretrained SmolLM2 "
            "(LoRA) with and without CAT, and compare IID / OOD accuracy (~9 min on 2 CPU "
            "cores). No API key, GPU or model hub needed."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny Llama trained from scratch instead (~2 min)"
    )
    parser.add_argument(
        "--out", help="run directory (default: $CATTUNE_HOME/runs/demo-<timestamp>)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from rich.console import Console

    from cattune.flows.demo import FULL, QUICK, results_table, run_demo
    from cattune.schemas import cattune_home

    console = Console()
    settings = (QUICK if args.quick else FULL).model_copy(update={"seed": args.seed})
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    run_dir = Path(args.out) if args.out else cattune_home() / "runs" / f"demo-{stamp}"
    started = time.monotonic()
    result = run_demo(settings, run_dir.resolve(), console)
    console.print(results_table(result))
    console.print("plots:")
    for plot in result.plots:
        console.print(f"  {plot}")
    console.print(
        f"finished in {time.monotonic() - started:.0f} s; everything is in {result.run_dir}"
    )
    return 0
