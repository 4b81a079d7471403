"""`cattune demo` end to end on very small settings: every stage runs for real and composes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from cattune.flows.demo import DemoSettings, run_demo
from cattune.schemas import ReleaseManifest, TrainingJob
from cattune.training.release_io import read_release


@pytest.mark.prefect
def test_demo_runs_every_stage_into_one_run_directory(
    prefect_harness: None, tmp_path: Path
) -> None:
    training = {"num_train_epochs": 1, "per_device_train_batch_size": 16}
    settings = DemoSettings(n_train=48, n_test=12, training=training)
    console = Console(record=True, width=120)
    result = run_demo(settings, tmp_path / "run", console)

    assert result.rows_annotated == 48 + 2 * 12
    assert result.rows_quarantined == 0
    assert result.annotation_f1 == 1.0  # the prior pack knows STG's causal variables

    release = Path(result.release_dir)
    manifest = ReleaseManifest.model_validate_json((release / "manifest.json").read_text())
    assert manifest.rows_per_split == {"train": 48, "iid_test": 12, "ood_test": 12}
    assert manifest.problems(release) == []
    assert len(read_release(release, ["train"])) == 48
    job = TrainingJob.model_validate_json(Path(result.job_path).read_text())
    assert Path(job.release_dir) == release.resolve()

    assert [m.mode for m in result.modes] == ["baseline", "cat"]
    for mode in result.modes:
        assert 0.0 <= mode.iid_accuracy <= 1.0 and 0.0 <= mode.ood_accuracy <= 1.0
        assert mode.iid_choice_accuracy is not None  # STG has a closed label set
        metrics = json.loads((Path(mode.out_dir) / "metrics.json").read_text())
        assert metrics["mode"] == mode.mode
        assert metrics["eval"]["splits"].keys() == {"iid_test", "ood_test"}
    for plot in result.plots:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "run" / "demo.json").read_text())["run_dir"] == result.run_dir
    assert "6/6" in console.export_text()
