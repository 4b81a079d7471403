"""`cattune train` / `cattune eval` end to end on a tiny release, job files, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from release_helpers import write_release
from transformers import AutoModelForCausalLM, AutoTokenizer

from cattune.flows.cli import main
from cattune.schemas import (
    AnnotatedExample,
    Example,
    TrainingJob,
    file_sha256,
    to_table,
)
from cattune.training.tiny import build_tiny_model, toy_rows

SPLITS = {
    "train": toy_rows(48, seed=21),
    "test": toy_rows(12, seed=22, split="test"),
    "ood": toy_rows(12, seed=23, split="ood", ood=True),
}
FAST = ["--epochs", "2", "--batch-size", "16", "--logging-steps", "1", "--quiet"]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_release(tmp_path_factory.mktemp("release") / "toy-v3", SPLITS, version=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [r.prompt + r.completion for r in SPLITS["train"]]
    return build_tiny_model(texts, tmp_path_factory.mktemp("tiny"))


def test_train_tiny_on_a_release_then_eval(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        main(["train", "--release", str(release), "--model", "tiny", "--out", str(out), *FAST]) == 0
    )
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert AutoTokenizer.from_pretrained(out / "model").is_fast
    assert model.config.num_hidden_layers == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "cat" and metrics["train"]["rows"] == 48
    assert metrics["train"]["last_lm_loss"] < metrics["train"]["first_lm_loss"]
    assert set(metrics["eval"]["splits"]) == {"test", "ood"}  # the release's other splits
    assert metrics["eval"]["ood"]["n"] == 12 and metrics["eval"]["iid"]["n"] == 12
    assert metrics["eval"]["splits"]["test"]["causal_ratio"] > 0
    for name in ("loss.png", "attention.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "log_history.json").read_text())
    assert any("causal_ratio" in h for h in history)
    predictions = (out / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 24

    eval_out = tmp_path / "eval"
    code = main(
        ["eval", "--model", str(out / "model"), "--data", str(release), "--split", "ood",
         "--out", str(eval_out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    evaluated = json.loads((eval_out / "metrics.json").read_text())
    assert set(evaluated["splits"]) == {"ood"}
    assert evaluated["splits"]["ood"] == metrics["eval"]["splits"]["ood"]


def test_job_file_config_and_cli_overrides(release: Path, model_dir: Path, tmp_path) -> None:
    job = TrainingJob(
        release_dir=str(release),
        manifest_sha256=file_sha256(release / "manifest.json"),
        config={"mode": "baseline", "model": str(model_dir), "max_steps": 2, "loss_type": "nll"},
    )
    path = tmp_path / "job.json"
    path.write_text(job.model_dump_json())
    out = tmp_path / "job-run"
    assert main(["train", "--job", str(path), "--out", str(out), "--quiet"]) == 0
    options = json.loads((out / "options.json").read_text())
    assert options["config"]["mode"] == "baseline" and options["config"]["loss_type"] == "nll"
    assert options["script"]["release"] == str(release)
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 2
    out2 = tmp_path / "job-run-2"
    assert main(["train", "--job", str(path), "--mode", "cat", "--out", str(out2), "--quiet"]) == 0
    assert json.loads((out2 / "options.json").read_text())["config"]["mode"] == "cat"


def test_train_on_parquet_with_layers_and_lora(release: Path, model_dir: Path, tmp_path) -> None:
    out = tmp_path / "lora"
    args = ["train", "--data", str(release / "data" / "train.parquet"), "--model", str(model_dir)]
    args += ["--lora-r", "4", "--layers", "1", "--max-steps", "2", "--out", str(out), "--quiet"]
    args += ["--activation_checkpointing", "--logging_steps", "1"]
    assert main(args) == 0
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    layer = 1  # adapters trained through checkpointed blocks were merged
    before = base.model.layers[layer].self_attn.q_proj.weight
    assert not torch.equal(before, merged.model.layers[layer].self_attn.q_proj.weight)
    assert "eval" not in json.loads((out / "metrics.json").read_text())


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("cattune: error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    return errors[0]


def test_cat_mode_without_relations_is_a_clear_error(model_dir, tmp_path, capsys) -> None:
    plain = tmp_path / "plain.parquet"
    rows = [Example.create(r.prompt, r.completion, r.meta) for r in SPLITS["train"][:4]]
    pq.write_table(to_table(rows, Example), plain)
    base = ["train", "--data", str(plain), "--model", str(model_dir), "--out", str(tmp_path / "o")]
    assert "--mode baseline" in error_of(base + ["--quiet"], capsys)
    assert main(base + ["--mode", "baseline", "--max-steps", "1", "--quiet"]) == 0


def test_user_errors(release: Path, model_dir: Path, tmp_path: Path, capsys) -> None:
    out = ["--out", str(tmp_path / "o"), "--quiet"]
    rel = ["train", "--release", str(release)]
    assert "does not exist" in error_of(rel + ["--model", str(tmp_path / "nope"), *out], capsys)
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    (no_tok / "config.json").write_text((model_dir / "config.json").read_text())
    assert "cannot load a tokenizer" in error_of(rel + ["--model", str(no_tok), *out], capsys)
    bad = error_of(rel + ["--model", str(model_dir), "--layers", "7", *out], capsys)
    assert "layers" in bad
    assert "no split" in error_of(rel + ["--split", "dev", *out], capsys)
    assert "batch-size" in error_of(rel + ["--batch-size", "0", *out], capsys)
    job = TrainingJob(release_dir=str(release), manifest_sha256="0" * 64, config={})
    (tmp_path / "stale.json").write_text(job.model_dump_json())
    assert "changed since" in error_of(["train", "--job", str(tmp_path / "stale.json")], capsys)
    job = job.model_copy(
        update={"manifest_sha256": file_sha256(release / "manifest.json"), "config": {"epochz": 1}}
    )
    (tmp_path / "typo.json").write_text(job.model_dump_json())
    assert "epochz" in error_of(["train", "--job", str(tmp_path / "typo.json")], capsys)
    job = job.model_copy(update={"config": {"learning_ratee": 1e-3}})
    (tmp_path / "lr.json").write_text(job.model_dump_json())
    missing = ["eval", "--model", str(tmp_path / "nope"), "--data", str(release)]
    assert "does not exist" in error_of(missing, capsys)
    both = ["train", "--release", str(release), "--data", "x.parquet"]
    assert "exactly one" in error_of(both, capsys)
    typo = ["train", "--job", str(tmp_path / "lr.json")]
    assert "did you mean learning_rate" in error_of(typo, capsys)


def test_eval_groups_rows_without_split_by_file(model_dir: Path, tmp_path: Path) -> None:
    files = ["--data"]
    for name, rows in (("iid", SPLITS["test"][:3]), ("shifted", SPLITS["ood"][:2])):
        plain = [
            r.model_copy(update={"meta": r.meta.model_copy(update={"split": None})}) for r in rows
        ]
        pq.write_table(to_table(plain, AnnotatedExample), tmp_path / f"{name}.parquet")
        files.append(str(tmp_path / f"{name}.parquet"))
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(model_dir), *files, "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {k: v["n"] for k, v in metrics["splits"].items()} == {"iid": 3, "shifted": 2}
    assert metrics["ood"]["n"] == 2
