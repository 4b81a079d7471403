"""`cattune serve`: run the annotate / release / hand-off flows as scheduled Prefect deployments."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the cattune flows as scheduled deployments (see flows/deployments.yaml)",
        description=(
            "Serve every deployment in a YAML file with its cron/interval schedule until "
            "interrupted. Schedules fire when PREFECT_API_URL points at a Prefect server "
            "(`prefect server start`). --check only builds and lists the deployments."
        ),
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="deployments YAML file")
    parser.add_argument("--check", action="store_true", help="validate and list, do not serve")
    parser.add_argument("--limit", type=int, default=None, help="max concurrent flow runs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cattune.flows.serve import build_deployments, load_config, serve_deployments

    config = load_config(args.config)
    deployments = build_deployments(config)
    table = Table(title=f"deployments in {args.config}")
    for column in ("name", "flow", "schedule", "parameters"):
        table.add_column(column, overflow="fold")
    for spec in config.deployments:
        when = "-"
        if spec.cron or spec.interval:
            when = f"cron {spec.cron}" if spec.cron else f"every {spec.interval:g} s"
            when += f" ({spec.timezone})" if spec.timezone else ""
        parameters = ", ".join(f"{k}={v}" for k, v in spec.parameters.items())
        table.add_row(spec.name, spec.flow, when, parameters)
    Console().print(table)
    if args.check:
        print(f"{len(deployments)} deployments are valid")
        return 0
    serve_deployments(deployments, limit=args.limit)
    return 0
