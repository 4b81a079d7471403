"""`cattune release`: cut an immutable Parquet release from a dataset version, or verify one."""

from __future__ import annotations

import argparse

from cattune.flows.commands.datasets import add_store_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "release",
        help="snapshot a dataset version into Parquet + manifest.json, or verify a release",
        description=(
            "cattune release NAME[@VERSION] --out DIR   writes a release; "
            "cattune release verify DIR   checks every file against the manifest"
        ),
    )
    parser.add_argument(
        "target", metavar="NAME[@VERSION] | verify", help="dataset reference, or 'verify'"
    )
    parser.add_argument("release_dir", metavar="DIR", nargs="?", help="release to verify")
    parser.add_argument("--out", metavar="DIR", help="new release directory (must not exist)")
    parser.add_argument(
        "--shard-rows", type=int, default=100_000, help="rows per Parquet file (default 100000)"
    )
    add_store_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cattune.schemas import ConfigError

    if args.target == "verify":
        if not args.release_dir:
            raise ConfigError("give the release to check: cattune release verify DIR")
        return _verify(args.release_dir)
    if args.release_dir:
        raise ConfigError(f"unexpected argument {args.release_dir!r}; write the release with --out")
    if not args.out:
        raise ConfigError("give a new directory for the release: --out DIR")
    return _release(args)


def _release(args: argparse.Namespace) -> int:
    from cattune.pipeline.names import parse_ref
    from cattune.pipeline.release import make_release
    from cattune.pipeline.store import DatasetStore

    name, version = parse_ref(args.target)
    manifest = make_release(
        DatasetStore(args.store), name, version, args.out, shard_rows=args.shard_rows
    )
    splits = ", ".join(
        f"{split}: {rows}" for split, rows in sorted(manifest.rows_per_split.items())
    )
    print(
        f"released {name}@{manifest.version} to {args.out} ({len(manifest.files)} files; {splits})"
    )
    return 0


def _verify(release_dir: str) -> int:
    from cattune.pipeline.release import verify_release

    manifest = verify_release(release_dir)
    print(
        f"release {release_dir} is intact: {manifest.dataset}@{manifest.version}, "
        f"{len(manifest.files)} files, {sum(manifest.rows_per_split.values())} rows"
    )
    return 0
