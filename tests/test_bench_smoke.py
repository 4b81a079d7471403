"""Smoke tests of the annotate-at-scale benchmarks: each runs end to end on tiny sizes.

The real runs take half an hour; these only show that the scripts still run against the current
flow and print their tables (the Dask benchmark once broke silently when a helper it imports
changed what it yields).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, *arguments: str) -> list[str]:
    """The benchmark's table rows (lines starting with ``| ``), with the harness's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    env = os.environ | {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    finished = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *arguments],
        cwd=BENCHMARKS,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return [line for line in finished.stdout.splitlines() if line.startswith("| ")]


@pytest.mark.prefect
@pytest.mark.slow
def test_annotate_scale_runs_and_re_runs_each_size(prefect_harness: None) -> None:
    rows = run_benchmark("annotate_scale.py", "--rows", "300", "--shard-size", "100")
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| 300"]
    assert all(len(row.split(" | ")) == 8 for row in rows)


@pytest.mark.prefect
@pytest.mark.slow
def test_annotate_dask_runs_both_workloads_on_both_runners(prefect_harness: None) -> None:
    rows = run_benchmark(
        "annotate_dask.py",
        *("--workers", "1", "--prior-rows", "40", "--prior-shard", "20"),
        *("--llm-rows", "20", "--llm-shard", "10", "--latency", "0.01"),
    )
    runners = [row.split(" | ")[0] for row in rows if row.split(" | ")[1:2] == ["1"]]
    assert runners == ["| thread runner", "| Dask LocalCluster"] * 2
