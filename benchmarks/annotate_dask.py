"""Scale-out of the annotate flow: Dask LocalCluster with 1, 2, 4 workers vs the thread runner.

Two workloads through the flow's public entry point (``configured_flow(...)(...)``), each run on a
fresh store, timed from the flow call to its return (reading, sharding, annotation, commit):

- prior: the PriorAnnotator over a generated STG source (CPU-bound);
- llm: the LLMAnnotator against the scripted server of annotation_throughput.py, every request
  answered after 200 ms (I/O-bound; reply cache off, ``concurrency`` requests in flight a shard).

Each worker count runs on a Dask ``LocalCluster`` (processes, 1 thread each, started and warmed
up with a small flow before the timed run) and, as the baseline in the same run, on the flow's
thread task runner with as many threads. "flow process CPU s" is the CPU time of the process that
calls the flow: with the thread runner it includes the annotation; with Dask it is the flow's own
work (reading, collecting shard results, the commit, the Prefect client, the Dask scheduler).
A Prefect test server (``prefect_test_harness``) serves the flow and the Dask workers.

    python benchmarks/annotate_dask.py [--workers 1 2 4] [--prior-rows 20000] [--llm-rows 3200]
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager, nullcontext  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402
from _common import machine, markdown_table  # noqa: E402
from annotation_throughput import endpoint  # noqa: E402

from cattune.pipeline.stg import generate_stg  # noqa: E402
from cattune.schemas import AnnotatedExample, Example, to_table  # noqa: E402


@dataclass
class Run:
    workload: str
    runner: str
    workers: int
    rows: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def stg_source(rows: int, path: Path) -> Path:
    train = generate_stg("stg", seed=0, n_train=rows, n_test=1)["train"]
    pq.write_table(to_table(train, AnnotatedExample), path)
    return path


def llm_source(rows: int, path: Path) -> Path:
    examples = [
        Example.create(
            f"Row {i}. Smoking: 8, Room size: 3, Weight: 4, Gene: 2. Answer: ", "High Risk"
        )
        for i in range(rows)
    ]
    pq.write_table(to_table(examples, Example), path)
    return path


@contextmanager
def cluster(workers: int) -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.WARNING,
    ) as local:
        yield local.scheduler_address


def run_flow(
    address: str | None,
    workers: int,
    source: Path,
    store: Path,
    kind: str,
    options: dict[str, Any],
    shard_size: int,
) -> tuple[int, float, float]:
    """(rows annotated, seconds, CPU seconds of this process) of one flow run on a fresh store."""
    from cattune.flows.annotate import configured_flow

    flow = configured_flow(dask_address=address, concurrency=workers)
    start, cpu = time.perf_counter(), time.process_time()
    summary = flow(
        source=str(source),
        dataset="bench",
        annotator=kind,
        pack="key-value-records",
        options=options,
        store=str(store),
        shard_size=shard_size,
    )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if summary.rows_quarantined:
        raise SystemExit(f"{kind}: {summary.rows_quarantined} rows quarantined: setup is broken")
    return summary.rows_annotated, seconds, cpu


def measure(
    workload: str,
    source: Path,
    warm: Path,
    options: dict[str, Any],
    shard_size: int,
    counts: list[int],
    root: Path,
) -> list[Run]:
    runs = []
    for runner in ("threads", "dask"):
        for workers in counts:
            context = cluster(workers) if runner == "dask" else nullcontext(None)
            with context as address:
                tag = f"{workload}-{runner}-{workers}"
                # Warm-up: workers import cattune and build their annotator once.
                run_flow(address, workers, warm, root / f"{tag}-warm", workload, options, 50)
                rows, seconds, cpu = run_flow(
                    address, workers, source, root / tag, workload, options, shard_size
                )
            runs.append(Run(workload, runner, workers, rows, seconds, cpu))
            print(f"{tag}: {rows} rows in {seconds:.1f} s", file=sys.stderr, flush=True)
    return runs


def table(runs: list[Run], ideal_per_worker: float | None) -> str:
    first = {(r.runner): r.rate for r in runs if r.workers == min(x.workers for x in runs)}
    threads = {r.workers: r.rate for r in runs if r.runner == "threads"}
    header = [
        "runner",
        "workers",
        "rows",
        "seconds",
        "flow process CPU s",
        "rows/s",
        "vs 1 worker",
        "vs threads",
    ]
    if ideal_per_worker is not None:
        header.append("ideal rows/s")
    body = []
    for r in runs:
        line: list[object] = [
            "Dask LocalCluster" if r.runner == "dask" else "thread runner",
            r.workers,
            r.rows,
            f"{r.seconds:.1f}",
            f"{r.cpu:.1f}",
            f"{r.rate:.0f}",
            f"{r.rate / first[r.runner]:.2f}x",
            f"{r.rate / threads[r.workers]:.2f}x",
        ]
        if ideal_per_worker is not None:
            line.append(f"{ideal_per_worker * r.workers:.0f}")
        body.append(line)
    return markdown_table(header, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--prior-rows", type=int, default=20_000)
    parser.add_argument("--prior-shard", type=int, default=1_000)
    parser.add_argument("--llm-rows", type=int, default=3_200)
    parser.add_argument("--llm-shard", type=int, default=200)
    parser.add_argument("--llm-concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    logging.getLogger("distributed").setLevel(logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        root = Path(tmp)
        prior = measure(
            "prior",
            stg_source(args.prior_rows, root / "stg.parquet"),
            stg_source(200, root / "stg-warm.parquet"),
            {},
            args.prior_shard,
            args.workers,
            root,
        )
        with endpoint(args.latency) as (base_url, _):
            options = {
                "model": "scripted",
                "base_url": base_url,
                "concurrency": args.llm_concurrency,
                "timeout": 30,
                "cache": False,
                "progress": False,
            }
            llm = measure(
                "llm",
                llm_source(args.llm_rows, root / "llm.parquet"),
                llm_source(100, root / "llm-warm.parquet"),
                options,
                args.llm_shard,
                args.workers,
                root,
            )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{machine()}; load average {load}; {time.perf_counter() - started:.0f} s in all\n")
    print(
        f"Prior annotator, {args.prior_rows} STG rows, shards of {args.prior_shard} "
        "(CPU-bound: at most as many busy workers as cores)\n"
    )
    print(table(prior, None))
    print(
        f"\nLLM annotator, {args.llm_rows} rows against a {args.latency * 1000:.0f} ms server, "
        f"shards of {args.llm_shard}, {args.llm_concurrency} requests in flight a shard "
        f"(ideal: workers x {args.llm_concurrency} / {args.latency} s)\n"
    )
    print(table(llm, args.llm_concurrency / args.latency))


if __name__ == "__main__":
    main()
