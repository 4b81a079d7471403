"""Rows/s and peak RSS of the annotate flow as the source grows (issue 13, finding REL-6).

Each size runs in two processes: one generates the STG source (seeded; not measured, so the
generator's memory does not count), the other warms up the Prefect ephemeral server, then runs the
real annotate flow with the prior annotator (``key-value-records`` pack) into a fresh store,
sampling the process's RSS every 0.5 s. The table gives rows/s, RSS before the flow, peak RSS, and
the peak relative to the smallest size's
peak (the issue's goal for a streaming flow: 200k <= 1.25x the 20k peak, 1M <= 1 GB).

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


def measure(rows: int, shard_size: int, work: Path) -> dict[str, float]:
    """One size, in this process: returns rows, seconds, RSS before and peak (MB)."""
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
    if (summary.rows_read, done) != (rows, rows):
        raise SystemExit(f"{rows} rows written, {summary.rows_read} read, {done} accounted for")
    return {"rows": rows, "seconds": seconds, "rss_before": before, "rss_peak": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="20000,200000,1000000", help="comma-separated sizes")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: measure one size
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)  # child: write a source
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.generate:
        generate(args.generate, Path(args.out))
        return 0

    if args.one:
        with tempfile.TemporaryDirectory(prefix="cattune-scale-") as work:
            result = measure(args.one, args.shard_size, Path(work))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        child = subprocess.run(
            [sys.executable, __file__, "--one", str(rows), "--shard-size", str(args.shard_size)],
            capture_output=True,
            text=True,
        )
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode != 0 or not lines:
            print(child.stdout[-2000:] + child.stderr[-4000:], file=sys.stderr)
            return 1
        results.append(json.loads(lines[-1][len("RESULT ") :]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)

    base = results[0]["rss_peak"]
    print(f"annotate flow, prior annotator ({PACK}), shards of {args.shard_size}")
    print("| rows | seconds | rows/s | RSS before (MB) | peak RSS (MB) | peak / first peak |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:.0f} "
            f"| {r['rss_before']:.0f} | {r['rss_peak']:.0f} | {r['rss_peak'] / base:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
