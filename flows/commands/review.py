"""`cattune review`: rows to Label Studio and back as a new version; annotators combined."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cattune.flows.commands.datasets import add_store_option

if TYPE_CHECKING:
    from cattune.pipeline.store import DatasetStore

DEFAULT_THRESHOLD = 0.5


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "review",
        help="export rows to Label Studio, import reviewed labels, aggregate annotators",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    export = actions.add_parser(
        "export", help="Label Studio import tasks (relations as predictions) and the config XML"
    )
    export.add_argument("ref", metavar="NAME[@VERSION]")
    export.add_argument("--out", metavar="TASKS.json", required=True, type=Path)
    export.add_argument("--sample", type=int, metavar="N", help="a seeded sample of N rows")
    export.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    export.add_argument(
        "--quarantine", action="store_true", help="export the quarantined rows instead"
    )
    export.add_argument(
        "--disagreement",
        action="store_true",
        help="only rows whose annotators agree less than --threshold (from `review aggregate`)",
    )
    export.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD, help="agreement threshold (0.5)"
    )

    imported = actions.add_parser(
        "import", help="commit Label Studio's JSON export as a new version of the dataset"
    )
    imported.add_argument("name", metavar="NAME")
    imported.add_argument("export", metavar="EXPORT.json", type=Path)

    combine = actions.add_parser(
        "aggregate", help="vote on (effect, cause) pairs of several dataset versions"
    )
    combine.add_argument("out", metavar="OUT", help="dataset the aggregate is written to")
    combine.add_argument("refs", metavar="NAME[@VERSION]", nargs="+", help="two or more sources")
    combine.add_argument(
        "--weigh-by",
        metavar="NAME[@VERSION]",
        help="weigh each source by its precision on this dataset's human-reviewed rows",
    )
    combine.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD, help="agreement threshold (0.5)"
    )
    for sub in (export, imported, combine):
        add_store_option(sub)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cattune.pipeline.store import DatasetStore

    store = DatasetStore(args.store)
    return {"export": _export, "import": _import, "aggregate": _aggregate}[args.action](store, args)


def _export(store: DatasetStore, args: argparse.Namespace) -> int:
    from cattune.pipeline.names import parse_ref
    from cattune.pipeline.review import export_review
    from cattune.schemas import ConfigError

    if args.sample is not None and args.sample < 1:
        raise ConfigError(f"--sample must be a positive number of rows, got {args.sample}")
    name, version = parse_ref(args.ref)
    result = export_review(
        store,
        name,
        version,
        args.out,
        quarantine=args.quarantine,
        below=args.threshold if args.disagreement else None,
        sample=args.sample,
        seed=args.seed,
    )
    print(
        f"exported {result.rows} rows of {name}@{result.version} to {result.tasks}; "
        f"labelling config: {result.config}"
    )
    return 0


def _import(store: DatasetStore, args: argparse.Namespace) -> int:
    from cattune.pipeline.review import import_review

    result = import_review(store, args.name, args.export)
    print(
        f"{result.dataset}@{result.version}: {result.reviewed} reviewed rows "
        f"({result.changed} changed), {result.quarantined} quarantined, "
        f"{result.unreviewed_tasks} tasks not reviewed"
    )
    for reason in result.rejected:
        print(f"rejected {reason}")
    return 1 if result.rejected else 0


def _aggregate(store: DatasetStore, args: argparse.Namespace) -> int:
    from cattune.pipeline.aggregate import Source, aggregate, precision_weights
    from cattune.pipeline.names import parse_ref
    from cattune.pipeline.review import AGREEMENT_KEY, HUMAN
    from cattune.pipeline.store import Lineage

    sources = [Source(name=ref, rows=store.read(*parse_ref(ref))) for ref in args.refs]
    weights = None
    if args.weigh_by:
        reviewed = [
            row
            for row in store.read(*parse_ref(args.weigh_by))
            if row.annotation.annotator == HUMAN
        ]
        weights = precision_weights(sources, reviewed)
        print("weights: " + ", ".join(f"{k}={v:.3f}" for k, v in weights.items()))
    rows = aggregate(sources, weights)
    lineage = Lineage(annotator="vote", source=" ".join(args.refs))
    result = store.write(args.out, rows, (), lineage)
    below = sum(float(row.meta.extra[AGREEMENT_KEY]) < args.threshold for row in rows)
    print(
        f"{args.out}@{result.version}: {len(rows)} rows, {below} with agreement under "
        f"{args.threshold}; review them with `cattune review export {args.out} --disagreement "
        f"--threshold {args.threshold} --out tasks.json`"
    )
    return 0
