"""Release and hand-off flows, STG end to end, and the scheduled deployments file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cattune.flows.annotate import annotate_flow
from cattune.flows.cli import main
from cattune.flows.handoff import handoff_flow
from cattune.flows.release import release_flow
from cattune.flows.serve import EXAMPLE_CONFIG, build_deployments, load_config
from cattune.pipeline.release import verify_release
from cattune.pipeline.store import DatasetStore
from cattune.schemas import ConfigError, TrainingJob, file_sha256


@pytest.fixture()
def stg_source(tmp_path: Path) -> Path:
    from cattune.pipeline.stg import generate_stg, write_stg

    splits = generate_stg("stg", seed=7, n_train=60, n_test=20)
    return Path(write_stg(splits, tmp_path / "stg")["train"]).parent


@pytest.mark.prefect
def test_stg_gold_annotate_release_handoff_train(
    prefect_harness: None, stg_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATTUNE_HOME", str(tmp_path / "home"))
    store = str(tmp_path / "store")
    first = annotate_flow(str(stg_source / "train.parquet"), "stg", annotator="gold", store=store)
    assert (first.version, first.rows_annotated, first.rows_quarantined) == (0, 60, 0)
    second = annotate_flow(str(stg_source), "stg", annotator="gold", store=store)
    assert (second.version, second.rows_annotated, second.rows_skipped) == (1, 40, 60)
    datasets = DatasetStore(store)
    assert len(datasets.read("stg", 0)) == 60 and len(datasets.read("stg")) == 100
    assert datasets.history("stg")[1].lineage.annotator == "gold"

    release = Path(release_flow("stg", 0, store=store))
    assert release == tmp_path / "home" / "releases" / "stg-v0"
    assert verify_release(release).rows_per_split == {"train": 60}
    assert release_flow("stg", "0", store=store) == str(release)  # intact release is reused

    import datasets as hf

    loaded = hf.load_dataset("parquet", data_dir=str(release / "data"))
    assert len(loaded["train"]) == 60

    config = {"model": "tiny", "num_train_epochs": 1, "max_steps": 2, "mode": "cat"}
    handoff = handoff_flow(
        "stg", None, config, store=store, run=True, train_out=str(tmp_path / "run")
    )
    job = TrainingJob.model_validate_json(Path(handoff.job_path).read_text())
    assert job.config == config
    assert Path(job.release_dir) == tmp_path / "home" / "releases" / "stg-v1"
    assert job.manifest_sha256 == file_sha256(Path(job.release_dir) / "manifest.json")
    assert handoff.train_returncode == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics


@pytest.mark.prefect
def test_failed_training_fails_the_handoff(
    prefect_harness: None, stg_source: Path, tmp_path: Path
) -> None:
    store = str(tmp_path / "store")
    annotate_flow(str(stg_source / "train.parquet"), "stg", annotator="gold", store=store)
    with pytest.raises(RuntimeError, match="training job .* failed"):
        handoff_flow(
            "stg",
            0,
            {"mode": "no-such-mode"},
            release_dir=str(tmp_path / "rel"),
            job_path=str(tmp_path / "job.json"),
            store=store,
            run=True,
            train_out=str(tmp_path / "run"),
        )
    assert TrainingJob.model_validate_json((tmp_path / "job.json").read_text()).config == {
        "mode": "no-such-mode"
    }


def test_example_deployments_build() -> None:
    deployments = build_deployments(load_config(EXAMPLE_CONFIG))
    by_name = {d.name: d for d in deployments}
    assert set(by_name) == {
        "nightly-annotate-stg",
        "nightly-annotate-mawps-llm",
        "weekly-release-stg",
        "weekly-handoff-stg",
    }
    nightly = by_name["nightly-annotate-stg"]
    assert nightly.flow_name == "cattune-annotate"
    assert nightly.schedules[0].schedule.cron == "0 2 * * *"
    assert nightly.schedules[0].schedule.timezone == "UTC"
    assert nightly.parameters["annotator"] == "gold"
    assert by_name["weekly-handoff-stg"].parameters["training_config"]["mode"] == "cat"


def test_every_minute_example_builds() -> None:
    [deployment] = build_deployments(load_config(EXAMPLE_CONFIG.parent / "every-minute.yaml"))
    assert deployment.name == "stg-every-minute"
    assert deployment.schedules[0].schedule.cron == "* * * * *"
    assert deployment.parameters["source"] == "data/stg/train.parquet"


def _spec(flow: str, cron: str | None = None, **parameters: str) -> dict:
    spec = {"name": "a", "flow": flow, "parameters": parameters}
    return spec | ({"cron": cron} if cron else {})


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([_spec("nope", "* * * * *")], "flow"),
        ([_spec("release", "every day", dataset="x")], "invalid cron"),
        ([_spec("annotate", "0 1 * * *", dataset="x")], "bad parameters"),
        ([_spec("release", dataset="x"), _spec("release", dataset="y")], "unique"),
    ],
)
def test_bad_deployment_files(tmp_path: Path, specs: list[dict], message: str) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump({"deployments": specs}))
    with pytest.raises(ConfigError, match=message):
        build_deployments(load_config(path))
    path.write_text("deployments: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_serve_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", str(EXAMPLE_CONFIG), "--check"]) == 0
    assert "4 deployments are valid" in capsys.readouterr().out
    assert main(["serve", "--config", str(tmp_path / "missing.yaml"), "--check"]) == 2
    assert "no deployment file" in capsys.readouterr().err
