"""`cattune deploy`: register the scheduled deployments with a Prefect work pool (for a worker)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="deploy the cattune flows to a Prefect work pool (run by `prefect worker start`)",
        description=(
            "Create or update every deployment in a YAML file (the format of `cattune serve`) on "
            "the Prefect server at PREFECT_API_URL, for a work pool of type process "
            "(`prefect work-pool create NAME --type process`). A worker (`prefect worker start "
            "--pool NAME`, in an environment where cattune is installed) runs the scheduled "
            "flow runs; relative paths in the parameters resolve against --working-dir."
        ),
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="deployments YAML file")
    parser.add_argument("--pool", required=True, metavar="NAME", help="Prefect work pool name")
    parser.add_argument(
        "--working-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory the flow runs start in (default: the current directory)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cattune.flows.serve import build_deployments, deploy_to_pool, load_config
    from cattune.schemas import ConfigError

    working_dir = (args.working_dir or Path.cwd()).resolve()
    if not working_dir.is_dir():
        raise ConfigError(f"--working-dir {working_dir} is not a directory")
    config = load_config(args.config)
    deployments = build_deployments(config, work_pool=args.pool, working_dir=working_dir)
    ids = deploy_to_pool(deployments, args.pool)
    count = f"{len(ids)} deployment{'' if len(ids) == 1 else 's'}"
    print(
        f"{count} on work pool {args.pool!r} (flow runs start in {working_dir}); "
        f"start a worker: prefect worker start --pool {args.pool}"
    )
    return 0
