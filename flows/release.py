"""The release flow: pin one dataset version as an immutable Parquet release."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from cattune.pipeline.names import parse_version, validate_name
from cattune.pipeline.release import make_release, verify_release
from cattune.pipeline.store import DatasetStore
from cattune.schemas import StoreError, cattune_home


def default_release_dir(dataset: str, version: int) -> Path:
    return cattune_home() / "releases" / f"{dataset}-v{version}"


@flow(name="cattune-release")
def release_flow(
    dataset: str,
    version: int | str | None = None,
    out_dir: str | None = None,
    store: str | None = None,
    shard_rows: int = 100_000,
) -> str:
    """Release ``dataset`` at ``version`` (None = latest; a number or an ISO timestamp).

    Without ``out_dir`` the release goes to ``$CATTUNE_HOME/releases/<dataset>-v<version>``; if an
    intact release of that version is already there it is reused (re-running is idempotent).
    Returns the release directory.
    """
    logger = get_run_logger()
    validate_name(dataset)
    datasets = DatasetStore(store)
    ref = parse_version(version) if isinstance(version, str) else version
    number = datasets.resolve_version(dataset, ref)
    out = out_dir or str(default_release_dir(dataset, number))
    if out_dir is None and (Path(out) / "manifest.json").is_file():
        manifest = verify_release(out)
        if manifest.dataset != dataset or manifest.version != number:
            raise StoreError(
                f"{out} holds {manifest.dataset}@{manifest.version}, not {dataset}@{number}"
            )
        logger.info("reusing the intact release %s", out)
        return out
    manifest = make_release(datasets, dataset, number, out, shard_rows=shard_rows)
    rows = ", ".join(
        f"{split}: {count}" for split, count in sorted(manifest.rows_per_split.items())
    )
    create_markdown_artifact(
        markdown=(
            f"# Release `{dataset}@{number}`\n\n`{out}`: {len(manifest.files)} Parquet files "
            f"({rows}), schema {manifest.schema_version}.\n"
        ),
        key=f"release-{''.join(c if c.isalnum() else '-' for c in dataset.lower())}",
        description=f"release {dataset}@{number}",
    )
    logger.info("released %s@%d to %s (%s)", dataset, number, out, rows)
    return out
