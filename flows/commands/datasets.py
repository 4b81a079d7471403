"""`cattune datasets`: list, inspect, compare and audit versioned datasets."""

from __future__ import annotations

import argparse
from typing import Any

STORE_HELP = "store root (default: $CATTUNE_HOME/store); a directory or a URL deltalake supports"


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="ROOT", default=None, help=STORE_HELP)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "datasets", help="list, show, diff and audit versioned datasets in the store"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="every dataset with its latest version and rows")
    history = actions.add_parser("history", help="every version of a dataset with its lineage")
    history.add_argument("name", metavar="NAME")
    show = actions.add_parser("show", help="rows of one version, causes and effects marked")
    show.add_argument("ref", metavar="NAME[@VERSION]", help="version number or ISO timestamp")
    show.add_argument("--limit", type=int, default=10, help="rows to show (default 10)")
    diff = actions.add_parser("diff", help="rows added, removed and relabelled between versions")
    diff.add_argument("a", metavar="NAME@A")
    diff.add_argument("b", metavar="NAME@B")
    diff.add_argument("--limit", type=int, default=20, help="ids to list per kind (default 20)")
    quarantine = actions.add_parser("quarantine", help="rows that failed, with their reasons")
    quarantine.add_argument("name", metavar="NAME")
    quarantine.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    migrate = actions.add_parser(
        "migrate", help="move datasets of the two-table layout to one table (keeps versions)"
    )
    migrate.add_argument(
        "names", metavar="NAME", nargs="*", help="datasets to migrate (default: every one)"
    )
    for sub in (listing, history, show, diff, quarantine, migrate):
        add_store_option(sub)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cattune.pipeline.store import DatasetStore

    store = DatasetStore(args.store)
    console = Console()
    handlers = {
        "list": _list,
        "history": _history,
        "show": _show,
        "diff": _diff,
        "quarantine": _quarantine,
        "migrate": _migrate,
    }
    return handlers[args.action](store, args, console)


def _list(store: Any, args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table

    datasets = store.list()
    if not datasets:
        console.print(f"no datasets in {store.root}")
        return 0
    table = Table(title=f"datasets in {store.root}")
    for column in ("name", "version", "rows", "quarantined", "updated (UTC)"):
        table.add_column(column, justify="right" if column in ("version", "rows") else "left")
    for info in datasets:
        table.add_row(
            info.name,
            str(info.version),
            str(info.rows),
            str(info.quarantined),
            info.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
    return 0


def _history(store: Any, args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table

    from cattune.pipeline.names import validate_name

    table = Table(title=f"history of {validate_name(args.name)}")
    columns = ("version", "time (UTC)", "op", "+rows", "~rows", "annotated", "quarantined")
    for column in (*columns, "skipped", "annotator", "config", "source", "flow run"):
        table.add_column(column)
    for commit in reversed(store.history(args.name)):
        lineage = commit.lineage
        table.add_row(
            str(commit.version),
            commit.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
            commit.operation,
            str(commit.inserted),
            str(commit.updated),
            str(lineage.rows_annotated) if lineage else "",
            str(lineage.rows_quarantined) if lineage else "",
            str(lineage.rows_skipped) if lineage else "",
            _annotator(lineage),
            (lineage.config_hash or "") if lineage else "",
            (lineage.source or "") if lineage else "",
            (lineage.flow_run_id or "") if lineage else "",
        )
    console.print(table)
    return 0


def _annotator(lineage: Any) -> str:
    if lineage is None or lineage.annotator is None:
        return ""
    text = lineage.annotator
    if lineage.annotator_version:
        text += f" {lineage.annotator_version}"
    if lineage.model:
        text += f" ({lineage.model})"
    if lineage.pack:
        text += f" pack={lineage.pack}"
    return text


def _show(store: Any, args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table
    from rich.text import Text

    from cattune.pipeline.names import parse_ref
    from cattune.pipeline.store_view import segments

    name, version = parse_ref(args.ref)
    number = store.resolve_version(name, version)
    rows = store.read(name, number)
    table = Table(
        title=f"{name}@{number}: {len(rows)} rows (causes bold green, effects bold magenta)",
        show_lines=True,
    )
    for column in ("id", "split", "label", "text", "relations"):
        table.add_column(column, overflow="fold")
    styles = {"cause": "bold green", "effect": "bold magenta", None: ""}
    for example in rows[: max(args.limit, 0)]:
        text = Text()
        for piece, role in segments(example):
            text.append(piece, style=styles[role])
        table.add_row(
            example.id[:12],
            example.meta.split or "",
            example.meta.label or "",
            text,
            str(len(example.relations)),
        )
    console.print(table)
    return 0


def _diff(store: Any, args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table

    from cattune.pipeline.names import parse_ref
    from cattune.schemas import ConfigError

    (name_a, a), (name_b, b) = parse_ref(args.a), parse_ref(args.b)
    if name_a != name_b:
        raise ConfigError(f"diff compares two versions of one dataset, got {name_a!r}, {name_b!r}")
    diff = store.diff(name_a, a, b)
    console.print(
        f"{name_a}@{diff.a} -> {name_a}@{diff.b}: {len(diff.added)} rows added, "
        f"{len(diff.removed)} removed, {len(diff.relabelled)} relabelled, "
        f"{diff.unchanged} unchanged"
    )
    table = Table()
    table.add_column("change")
    table.add_column("id")
    for kind, ids in (
        ("added", diff.added),
        ("removed", diff.removed),
        ("relabelled", diff.relabelled),
    ):
        for row_id in ids[: args.limit]:
            table.add_row(kind, row_id)
        if len(ids) > args.limit:
            table.add_row(kind, f"... {len(ids) - args.limit} more")
    if table.row_count:
        console.print(table)
    return 0


def _quarantine(store: Any, args: argparse.Namespace, console: Any) -> int:
    from collections import Counter

    from rich.table import Table

    rows = store.quarantine(args.name)
    reasons = Counter(row.error for row in rows)
    console.print(f"{args.name}: {len(rows)} quarantined rows, {len(reasons)} distinct reasons")
    table = Table(show_lines=True)
    for column in ("id", "annotator", "retryable", "error", "text"):
        table.add_column(column, overflow="fold")
    for row in rows[: max(args.limit, 0)]:
        table.add_row(
            row.id[:12],
            row.annotation.annotator,
            "yes" if row.retryable else "no",
            row.error,
            row.text[:200],
        )
    if rows:
        console.print(table)
    return 0


def _migrate(store: Any, args: argparse.Namespace, console: Any) -> int:
    from cattune.pipeline.store_migrate import migrate

    names = args.names or store.names(legacy=True)
    if not names:
        console.print(f"nothing to migrate in {store.root}")
    for name in names:
        copied = migrate(store, name)
        console.print(
            f"{name}: {copied} versions copied to {store.uri(name)}, now at version "
            f"{store.version(name)}; the old rows/ and quarantine/ tables are left in place"
        )
    return 0
