"""`cattune annotate SOURCE --dataset NAME` (the flow mode) and the Dask task runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cattune.flows.annotate import configured_flow
from cattune.flows.cli import main
from cattune.pipeline.store import DatasetStore


def cat_file(path: Path, start: int, stop: int) -> Path:
    lines = []
    for i in range(start, stop):
        target = "High Risk" if i % 3 else "Low Risk"
        prompt = f"Case {i}. Smoking: {i % 10}, Weight: {i % 4}. Answer: "
        lines.append(
            json.dumps(
                {"input": prompt, "target": target, "important": [{target: [f"Smoking: {i % 10}"]}]}
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def summary_lines(printed: str) -> list[str]:
    """The counts a run prints, without where the rows went and the dataset-only lines."""
    lines = [line.split(" -> ")[0] for line in printed.splitlines()]
    return [line for line in lines if not line.startswith(("dataset ", "skipped "))]


@pytest.mark.prefect
def test_annotate_dataset_mode_then_inspect(
    prefect_harness: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = cat_file(tmp_path / "cases.jsonl", 0, 30)
    store = str(tmp_path / "store")
    argv = ["annotate", str(source), "--annotator", "given", "--format", "cat"]
    assert main([*argv, "--dataset", "cases", "--store", store, "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "cases: version 0 (4 shards)" in out and "annotated   30 -> cases@0" in out
    assert main([*argv, "--out", str(tmp_path / "file.parquet")]) == 0
    assert summary_lines(capsys.readouterr().out) == summary_lines(out)  # one summary format
    cat_file(source, 0, 33)
    assert main([*argv, "--dataset", "cases", "--store", store, "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "cases: version 1 (1 shards)" in out and "skipped     30" in out
    assert "annotated   3 -> cases@1" in out
    assert main(["datasets", "diff", "cases@0", "cases@1", "--store", store]) == 0
    assert "3 rows added, 0 removed, 0 relabelled" in capsys.readouterr().out


def test_dataset_mode_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = cat_file(tmp_path / "cases.jsonl", 0, 3)
    base = ["annotate", str(source), "--annotator", "given"]
    assert main([*base, "--dataset", "../up", "--store", str(tmp_path)]) == 2
    assert "invalid dataset name" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "o.parquet"), "--store", str(tmp_path)]) == 2
    assert "--store only apply with --dataset" in capsys.readouterr().err
    assert main(["annotate", str(tmp_path / "none.jsonl"), "--dataset", "x"]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--out", str(tmp_path / "o.parquet"), "--dataset", "x"])


@pytest.mark.prefect
def test_dask_task_runner_on_a_local_cluster(prefect_harness: None, tmp_path: Path) -> None:
    from distributed import LocalCluster

    source = cat_file(tmp_path / "cases.jsonl", 0, 40)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        flow = configured_flow(dask_address=cluster.scheduler_address)
        summary = flow(
            str(source),
            "dask",
            annotator="given",
            format="cat",
            store=str(tmp_path / "s"),
            shard_size=10,
        )
    assert (summary.version, summary.rows_annotated, summary.shards) == (0, 40, 4)
    assert len(DatasetStore(tmp_path / "s").read("dask")) == 40
