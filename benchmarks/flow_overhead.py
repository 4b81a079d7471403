"""Prefect flow overhead per 1,000 rows: the annotate flow vs the same work without Prefect.

Both sides read the same STG source, annotate it with the gold annotator and commit one version
to a fresh store; the baseline calls the pieces directly (read_source -> GoldAnnotator ->
DatasetStore.write), the flow adds tasks, sharding, lineage and an artifact. Prefect's one-off
server start is excluded by a warm-up run.

    python benchmarks/flow_overhead.py [--rows 1000,5000] [--repeats 3]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import argparse  # noqa: E402
import itertools  # noqa: E402
from collections.abc import Callable  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402
from _common import machine, markdown_table, median_time  # noqa: E402

from cattune.annotators.given import GoldAnnotator  # noqa: E402
from cattune.pipeline.sources import read_source  # noqa: E402
from cattune.pipeline.stg import generate_stg  # noqa: E402
from cattune.pipeline.store import DatasetStore, Lineage  # noqa: E402
from cattune.schemas import AnnotatedExample, QuarantinedExample, to_table  # noqa: E402


def write_source(rows: int, root: Path) -> Path:
    path = root / f"stg-{rows}.parquet"
    train = generate_stg("stg", seed=0, n_train=rows, n_test=1)["train"]
    pq.write_table(to_table(train, AnnotatedExample), path)
    return path


def direct(source: Path, store_root: Path) -> None:
    examples = [row.example for row in read_source(source) if row.example is not None]
    results = GoldAnnotator().annotate(examples)
    rows = [r for r in results if isinstance(r, AnnotatedExample)]
    quarantined = [r for r in results if isinstance(r, QuarantinedExample)]
    DatasetStore(store_root).write("bench", rows, quarantined, Lineage(annotator="gold"))


def through_flow(source: Path, store_root: Path) -> None:
    from cattune.flows.annotate import annotate_flow

    annotate_flow(source=str(source), dataset="bench", annotator="gold", store=str(store_root))


def _median_on_fresh_stores(
    fn: Callable[[Path, Path], None], source: Path, prefix: Path, repeats: int
) -> float:
    stores = (prefix / str(n) for n in itertools.count())
    return median_time(lambda: fn(source, next(stores)), repeats, warmup=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000,5000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        through_flow(write_source(10, root), root / "warm-up")
        table = []
        for rows in (int(n) for n in args.rows.split(",")):
            source = write_source(rows, root)
            timings = {
                name: _median_on_fresh_stores(fn, source, root / f"{name}-{rows}", args.repeats)
                for name, fn in (("direct", direct), ("flow", through_flow))
            }
            overhead = (timings["flow"] - timings["direct"]) / rows * 1000
            table.append([
                rows,
                f"{timings['direct']:.2f}",
                f"{timings['flow']:.2f}",
                f"{timings['flow'] / timings['direct']:.2f}x",
                f"{overhead:.2f}",
            ])  # fmt: skip
    print(f"Annotate flow overhead (gold annotator, fresh store each run), {machine()}\n")
    print(
        markdown_table(
            [
                "rows",
                "direct (s)",
                "Prefect flow (s)",
                "flow / direct",
                "overhead s per 1,000 rows",
            ],
            table,
        )
    )


if __name__ == "__main__":
    main()
