"""The annotate flow: source file -> annotated rows -> one new version of a dataset.

Steps (each a Prefect task; the body only orchestrates): hash the source, read the ids already
annotated under the annotator's ``config_hash`` (incremental runs), read the source once into
shard input files (malformed rows are staged as quarantine with their reason), annotate the
shards (``.map``, retried on errors that are not the user's; each shard stages its annotated and
quarantined rows to Parquet and returns only their paths and counts), then commit every staged
file in one store write (one Delta commit) and publish a Markdown artifact. Memory holds a few
shards and 16 bytes an id (``IdSet``), never the source's rows.

Staging lives under the store (``DatasetStore.staging_dir``), keyed by the source hash, the
annotator configuration, the reading options and the dataset version it was planned against. A
run killed before its commit leaves whole staged shards that the re-run reuses; a run killed
after its commit leaves staging whose version is now stale: the re-run removes it, so nothing is
committed twice. Nothing is written to the dataset until every shard is done.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from cattune.annotators.base import Annotator, stable_hash
from cattune.annotators.options import AnnotatorOptions, options_for
from cattune.annotators.registry import build_annotator
from cattune.pipeline.annotate_run import (
    RunCounts,
    SourcePlan,
    StagedPair,
    annotate_examples,
    plan_shards,
    read_examples,
    remove_staging,
)
from cattune.pipeline.id_set import IdSet
from cattune.pipeline.names import validate_name
from cattune.pipeline.sources import read_source
from cattune.pipeline.store import DatasetStore, Lineage
from cattune.pipeline.store_view import markdown
from cattune.schemas import AnnotatedExample, CattuneError, ConfigError, file_sha256

LLM_TAG = "cattune-llm"
HIGHLIGHTS = 3


class AnnotateSummary(RunCounts):
    """What an annotate run did (its counts and where they went); also its Markdown artifact."""

    dataset: str
    version: int | None
    committed: bool
    source: str
    source_sha256: str
    annotator: str
    config_hash: str
    flow_run_id: str | None = None
    shards: int = 0
    shards_reused: int = Field(0, description="shards staged by a killed run and reused")


def source_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (relative paths and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0")
        digest.update(file_sha256(item).encode())
    return digest.hexdigest()


_local = threading.local()


def annotator_for(
    kind: str, pack: str | None, options: AnnotatorOptions | dict[str, Any] | None
) -> Annotator:
    """One annotator per thread and configuration (workers build their own, nothing is pickled).

    ``options`` is the kind's spec or its dict, validated here (:func:`options_for`).
    ``api_key_secret`` names a Prefect Secret block holding the API key; it is read here,
    inside the run, so the key never becomes a flow parameter, a log line or lineage.
    """
    if isinstance(options, dict) and "api_key" in options:
        raise ConfigError(
            "do not pass api_key as a flow option (flow parameters are stored by Prefect): "
            "use api_key_env (an environment variable) or api_key_secret (a Secret block name)"
        )
    spec = options_for(kind, options)
    cache = getattr(_local, "annotators", None)
    if cache is None:
        cache = _local.annotators = {}
    key = stable_hash([kind, pack, spec.model_dump(mode="json")])
    if key not in cache:
        api_key = None
        secret = getattr(spec, "api_key_secret", None)
        if secret is not None:
            from prefect.blocks.system import Secret

            try:
                api_key = Secret.load(secret).get()
            except ValueError as error:
                raise ConfigError(f"cannot load the Secret block {secret!r}: {error}") from None
        cache[key] = build_annotator(kind, spec, pack=pack, api_key=api_key)
    return cache[key]


class ShardResult(BaseModel):
    """What a shard task returns: its staged files, counts, and a few rows for the artifact."""

    staged: StagedPair
    reused: bool = False
    highlights: list[AnnotatedExample] = []


@task(name="load-source", cache_policy=NO_CACHE)
def load_source(
    source: str,
    format: str,
    prompt_field: str | None,
    completion_field: str | None,
    staging: str,
    done: IdSet,
    shard_size: int,
    annotator: tuple[str, str | None, dict],
) -> SourcePlan:
    """Read the source once into shard input files under ``staging`` (reused if already there)."""
    rows = read_source(
        source, format=format, prompt_field=prompt_field, completion_field=completion_field
    )
    return plan_shards(
        rows,
        annotator_for(*annotator),
        source=Path(source).name,
        done=done,
        shard_size=shard_size,
        staging=Path(staging),
    )


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    error = state.result(raise_on_failure=False)
    return not isinstance(error, CattuneError)


@task(
    name="annotate-shard",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def annotate_shard(
    shard: str, index: int, count: int, kind: str, pack: str | None, options: dict
) -> ShardResult:
    """Annotate one shard input file and stage its output; a shard staged before is reused."""
    logger = get_run_logger()
    staged = StagedPair.for_input(shard)
    if staged.exists():
        staged.counts = staged.read_counts()
        logger.info("shard %d/%d staged by an earlier run: reused", index + 1, count)
        return ShardResult(staged=staged, reused=True)
    labeller = annotator_for(kind, pack, options)
    batch = annotate_examples(read_examples(shard), labeller)
    counts = staged.stage([batch], labeller, RunCounts())
    logger.info(
        "shard %d/%d done: %d rows annotated, %d quarantined",
        index + 1,
        count,
        counts.rows_annotated,
        counts.rows_quarantined,
    )
    # Only the first shards carry rows for the artifact: results stay small whatever the run size.
    highlights = (
        [r for r in batch.annotated if r.relations][:HIGHLIGHTS] if index < HIGHLIGHTS else []
    )
    return ShardResult(staged=staged, highlights=highlights)


@task(name="skip-done", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def skip_done(store: DatasetStore, dataset: str, config_hash: str) -> tuple[IdSet, int]:
    """Ids already annotated under ``config_hash`` (incremental runs) and the version read
    (-1 for a dataset that does not exist yet)."""
    version = store.version(dataset) if store.exists(dataset) else -1
    return store.annotated_ids(dataset, config_hash, include_final_quarantine=True), version


@task(name="hash-source", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def hash_source(source: str) -> str:
    return source_sha256(source)


@task(name="lineage", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def run_lineage(
    source: str, digest: str, kind: str, pack: str | None, options: dict, rows_skipped: int
) -> Lineage:
    """What this run's commit records: annotator identity, source and its hash, the run id."""
    labeller = annotator_for(kind, pack, options)
    return Lineage(
        flow_run_id=_flow_run_id(),
        annotator=labeller.name,
        annotator_version=labeller.version,
        model=getattr(labeller, "model", None),
        pack=_pack_name(labeller, pack),
        pack_hash=_pack_hash(labeller),
        config_hash=labeller.config_hash(),
        source=str(Path(source).resolve()),
        source_sha256=digest,
        rows_skipped=rows_skipped,
    )


@task(name="commit-version", cache_policy=NO_CACHE)
def commit_version(
    store: DatasetStore,
    dataset: str,
    plan: SourcePlan,
    shards: list[ShardResult],
    lineage: Lineage,
) -> tuple[int | None, bool]:
    """One store write from the staged files (one Delta commit), then the staging is removed."""
    staged = [plan.malformed, *(shard.staged for shard in shards)]
    version: int | None = None
    committed = False
    if any(pair.counts.rows_annotated or pair.counts.rows_quarantined for pair in staged):
        result = store.write_parts(
            dataset,
            [pair.annotated for pair in staged],
            [pair.quarantined for pair in staged],
            lineage,
        )
        version, committed = result.version, result.committed
    elif store.exists(dataset):
        version = store.version(dataset)
    remove_staging(plan.staging)
    return version, committed


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


@flow(name="cattune-annotate", task_runner=ThreadPoolTaskRunner(max_workers=4))
def annotate_flow(
    source: str,
    dataset: str,
    annotator: str = "prior",
    pack: str | None = None,
    options: AnnotatorOptions | dict[str, Any] | None = None,
    format: str = "auto",
    prompt_field: str | None = None,
    completion_field: str | None = None,
    store: str | None = None,
    shard_size: int = 256,
) -> AnnotateSummary:
    """Annotate ``source`` with ``annotator`` and commit the result as a new version of ``dataset``.

    ``options`` is the annotator's spec (``cattune.annotators.options``, e.g. ``LLMOptions``) or
    its dict (e.g. ``{"model": ..., "base_url": ...}`` for ``llm``); a bad option fails the run
    before anything is read, with the same one-line ``ConfigError`` as the CLI. LLM shards carry
    the ``cattune-llm`` tag: a Prefect tag concurrency limit (``prefect concurrency-limit create
    cattune-llm 2``) caps them across all running flows.
    """
    logger = get_run_logger()
    validate_name(dataset)
    if shard_size < 1:
        raise ConfigError(f"shard_size must be at least 1, got {shard_size}")
    options = dict(options or {})
    labeller = annotator_for(annotator, pack, options)
    config_hash = labeller.config_hash()
    datasets = DatasetStore(store)
    digest = hash_source.submit(source)
    done, base_version = skip_done(datasets, dataset, config_hash)
    run_key = stable_hash([digest.result(), config_hash, format, prompt_field, completion_field])
    plan = load_source(
        source,
        format,
        prompt_field,
        completion_field,
        str(datasets.staging_dir(dataset, run_key, base_version)),
        done,
        shard_size,
        (annotator, pack, options),
    )
    del done
    read = plan.counts
    logger.info(
        "%s: %d rows read, %d malformed, %d already annotated with config %s, %d to annotate",
        source,
        read.rows_read,
        read.rows_malformed,
        read.rows_skipped,
        config_hash,
        read.rows_read - read.rows_malformed - read.rows_duplicate - read.rows_skipped,
    )
    shards = plan.shards
    shard_task = annotate_shard.with_options(tags=[LLM_TAG] if annotator in ("llm", "vllm") else [])
    futures = shard_task.map(
        shards,
        list(range(len(shards))),
        unmapped(len(shards)),
        unmapped(annotator),
        unmapped(pack),
        unmapped(options),
    )
    lineage = run_lineage(source, digest.result(), annotator, pack, options, read.rows_skipped)
    results = futures.result()
    version, committed = commit_version(datasets, dataset, plan, results, lineage)
    counts = read.model_copy(deep=True)
    for result in results:
        counts.add(result.staged.counts)
    summary = AnnotateSummary(
        dataset=dataset,
        version=version,
        committed=committed,
        source=lineage.source or source,
        source_sha256=lineage.source_sha256 or "",
        annotator=labeller.name,
        config_hash=config_hash,
        flow_run_id=lineage.flow_run_id,
        shards=len(shards),
        shards_reused=sum(result.reused for result in results),
        **counts.model_dump(),
    )
    highlights = [row for result in results for row in result.highlights][:HIGHLIGHTS]
    create_markdown_artifact(
        markdown=summary_markdown(summary, highlights),
        key=_artifact_key(dataset),
        description=f"annotate {dataset}: version {version}",
    )
    logger.info(
        "dataset %s version %s: %d annotated, %d quarantined, %d skipped",
        dataset,
        version,
        summary.rows_annotated,
        summary.rows_quarantined,
        summary.rows_skipped,
    )
    return summary


def _pack_name(labeller: Annotator, pack: str | None) -> str | None:
    packs = getattr(labeller, "packs", None)
    if packs:
        return ",".join(p.name for p in packs)
    single = getattr(labeller, "pack", None)
    return getattr(single, "name", None) or pack


def _pack_hash(labeller: Annotator) -> str | None:
    packs = getattr(labeller, "packs", None) or [getattr(labeller, "pack", None)]
    hashes = [p.content_hash for p in packs if p is not None and hasattr(p, "content_hash")]
    return ",".join(hashes) or None


def _artifact_key(dataset: str) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in dataset.lower()).strip("-")
    return f"annotate-{cleaned or 'dataset'}"


def summary_markdown(summary: AnnotateSummary, rows: Sequence[AnnotatedExample]) -> str:
    """The run's artifact: counts, top quarantine reasons, a few rows with causes marked."""
    lines = [
        f"# Annotation of `{summary.dataset}`: version {summary.version}",
        "",
        f"Source `{summary.source}` (sha256 `{summary.source_sha256[:16]}`), annotator "
        f"`{summary.annotator}` (config `{summary.config_hash}`).",
        "",
        "| rows read | malformed | duplicates | skipped (already annotated) | annotated "
        "| quarantined |",
        "|---|---|---|---|---|---|",
        f"| {summary.rows_read} | {summary.rows_malformed} | {summary.rows_duplicate} "
        f"| {summary.rows_skipped} | {summary.rows_annotated} | {summary.rows_quarantined} |",
        "",
    ]
    if summary.quarantine_reasons:
        # A list, not a table: the Prefect UI does not wrap table cells, and reasons are long.
        lines += ["## Quarantine reasons", ""]
        for reason, count in summary.quarantine_reasons.items():
            clean = reason[:300].replace("\n", " ").replace("*", "\\*").replace("_", "\\_")
            lines.append(f"- **{count} {'row' if count == 1 else 'rows'}**: {clean}")
        lines.append("")
    labelled = [r for r in rows if r.relations][:HIGHLIGHTS]
    if labelled:
        lines += ["## Examples (causes **bold**, effects _italic_)", ""]
        lines += [f"- {markdown(row)}" for row in labelled]
    return "\n".join(lines) + "\n"


def configured_flow(*, dask_address: str | None = None, concurrency: int = 4) -> Any:
    """``annotate_flow`` on a Dask cluster (``tcp://host:8786``) or on ``concurrency`` threads."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return annotate_flow.with_options(task_runner=DaskTaskRunner(address=dask_address))
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
    return annotate_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=concurrency))
