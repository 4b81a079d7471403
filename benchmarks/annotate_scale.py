"""Rows/s and peak RSS of the annotate flow as the source grows (issue 13, finding REL-6).

Each size runs in three processes: one generates the STG source (seeded; not measured, so the
generator's memory does not count); the next warms up the Prefect ephemeral server, then runs the
real annotate flow with the prior annotator (``key-value-records`` pack) into a fresh store,
sampling the process's RSS every 0.5 s; the last runs the flow again on the same source and store
(an incremental run: every row is already annotated and skipped, nothing is committed). The table
gives rows/s, RSS before the flow, peak RSS, the peak relative to the smallest size's peak (the
issue's goal for a streaming flow: 200k <= 1.25x the 20k peak, 1M <= 1 GB), and the re-run's
seconds and peak RSS.

    OMP_NUM_THREADS=1 python benchmarks/annotate_scale.py --rows 20000,200000 [--shard-size 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _rss import RssSampler, rss_mb

PACK = "key-value-records"


def generate(rows: int, source: Path) -> None:
    """Write ``rows`` generated STG rows (id, prompt, completion) to ``source`` (Parquet)."""
    import pyarrow.parquet as pq

    from cattune.pipeline.stg import generate_stg
    from cattune.schemas import AnnotatedExample, to_table

    train = generate_stg("stg", seed=0, n_train=rows, n_test=1)["train"]
    pq.write_table(to_table(train, AnnotatedExample).select(["id", "prompt", "completion"]), source)


def measure(rows: int, shard_size: int, work: Path, again: bool) -> dict[str, float]:
    """One flow run over ``rows`` rows in this process: seconds, RSS before and peak (MB).

    The first run generates the source and annotates it into a fresh store; ``again`` re-runs
    it over the same store, where every row is skipped.
    """
    for key, value in {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }.items():
        os.environ.setdefault(key, value)
    from prefect import flow

    from cattune.flows.annotate import annotate_flow

    source = work / f"stg-{rows}.parquet"
    if not again:
        subprocess.run(
            [sys.executable, __file__, "--generate", str(rows), "--out", str(source)], check=True
        )
    flow(lambda: None, name="warm-up")()

    before = rss_mb()
    sampler = RssSampler(every=0.5)
    sampler.start()
    started = time.perf_counter()
    summary = annotate_flow(
        str(source), "scale", "prior", PACK, store=str(work / "store"), shard_size=shard_size
    )
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    peak = max([before, rss_mb(), *(mb for _, mb in sampler.samples)])
    # Generated STG rows can repeat a text (same id): the flow folds those into one row.
    done = summary.rows_annotated + summary.rows_quarantined + summary.rows_duplicate
    if again:
        done, expect = summary.rows_skipped + summary.rows_duplicate, (rows, rows, False)
        if (summary.rows_read, done, summary.committed) != expect:
            raise SystemExit(f"re-run of {rows} rows: {summary.model_dump_json()}")
    elif (summary.rows_read, done) != (rows, rows):
        raise SystemExit(f"{rows} rows written, {summary.rows_read} read, {done} accounted for")
    return {"seconds": seconds, "rss_before": before, "rss_peak": peak}


def child(rows: int, shard_size: int, work: Path, again: bool) -> dict[str, float]:
    """``measure`` in a fresh process (so that one run's memory does not count in the next)."""
    flags = ["--again"] if again else []
    finished = subprocess.run(
        [sys.executable, __file__, "--one", str(rows), "--shard-size", str(shard_size)]
        + ["--work", str(work), *flags],
        capture_output=True,
        text=True,
    )
    lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
    if finished.returncode != 0 or not lines:
        sys.exit(finished.stdout[-2000:] + finished.stderr[-4000:])
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="20000,200000,1000000", help="comma-separated sizes")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: measure one run
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--again", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)  # child: write a source
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.generate:
        generate(args.generate, Path(args.out))
        return 0

    if args.one:
        result = measure(args.one, args.shard_size, Path(args.work), args.again)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        with tempfile.TemporaryDirectory(prefix="cattune-scale-") as work:
            first = child(rows, args.shard_size, Path(work), again=False)
            again = child(rows, args.shard_size, Path(work), again=True)
        results.append(
            {
                "rows": rows,
                **first,
                "again_seconds": again["seconds"],
                "again_peak": again["rss_peak"],
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)

    base = results[0]["rss_peak"]
    print(f"annotate flow, prior annotator ({PACK}), shards of {args.shard_size}")
    print(
        "| rows | seconds | rows/s | RSS before (MB) | peak RSS (MB) | peak / first peak "
        "| re-run: seconds | re-run: peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:.0f} "
            f"| {r['rss_before']:.0f} | {r['rss_peak']:.0f} | {r['rss_peak'] / base:.2f}x "
            f"| {r['again_seconds']:.1f} | {r['again_peak']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
