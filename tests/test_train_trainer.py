"""CATTrainer on a tiny Llama: CAT vs baseline causal ratio, LoRA, the schedule, config checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cattune.schemas import ConfigError
from cattune.training.config import CATConfig
from cattune.training.data import CATCollator, encode_rows
from cattune.training.models import load_model, load_tokenizer
from cattune.training.tiny import build_tiny_model, toy_rows
from cattune.training.trainer import CATTrainer, keep_label_logits

ROWS = toy_rows(64, seed=11)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        [r.prompt + r.completion for r in ROWS], tmp_path_factory.mktemp("tiny"), seed=0
    )


def run(tiny_dir: Path, out: Path, *, lora: bool = False, **overrides) -> CATTrainer:
    tokenizer = load_tokenizer(tiny_dir)
    model = load_model(tiny_dir)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
    settings = dict(
        output_dir=str(out),
        per_device_train_batch_size=16,
        num_train_epochs=4,
        learning_rate=3e-3,
        logging_steps=2,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    trainer = CATTrainer(
        model=model,
        args=CATConfig(**settings),
        train_dataset=encode_rows(tokenizer, ROWS),
        data_collator=CATCollator(tokenizer.pad_token_id),
    )
    trainer.train()
    return trainer


def logged(trainer: CATTrainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h]


def test_cat_raises_the_causal_ratio_over_baseline_and_both_learn(tiny_dir, tmp_path) -> None:
    cat = run(tiny_dir, tmp_path / "cat", mode="cat")
    base = run(tiny_dir, tmp_path / "base", mode="baseline")
    for trainer in (cat, base):
        lm = logged(trainer, "lm_loss")
        assert len(lm) == 8 and lm[-1] < lm[0] - 1.0
    cat_ratio, base_ratio = logged(cat, "causal_ratio"), logged(base, "causal_ratio")
    assert len(base_ratio) == 8, "the baseline still measures the ratio on logging steps"
    # same seed, same data: the first interval starts from identical weights
    assert cat_ratio[0] == pytest.approx(base_ratio[0], rel=0.2)
    assert cat_ratio[-1] > 1.5 * base_ratio[-1]
    assert cat_ratio[-1] > cat_ratio[0]
    assert "attn_weight" not in base.state.log_history[0]


def test_attention_weight_follows_the_decay_schedule(tiny_dir, tmp_path) -> None:
    trainer = run(tiny_dir, tmp_path / "w", attn_weight=0.5, decay=2.0, num_train_epochs=2)
    weights = logged(trainer, "attn_weight")
    assert weights == sorted(weights, reverse=True) and len(weights) == 4
    assert weights[0] <= 0.5 and weights[-1] >= 0.5 * math.exp(-2.0 * 2)
    # the loss logged is the LM loss plus the weighted attention loss
    for entry in trainer.state.log_history:
        if "attn_weight" in entry:
            combined = entry["lm_loss"] + entry["attn_weight"] * entry["attn_loss"]
            assert entry["loss"] == pytest.approx(combined, abs=0.15)


def test_lora_trains_adapters_only_and_raises_the_ratio(tiny_dir, tmp_path) -> None:
    trainer = run(tiny_dir, tmp_path / "lora", lora=True, learning_rate=1e-2)
    assert trainer._trim_logits, "the peft wrapper's base model takes logits_to_keep"
    model = trainer.model
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    base = load_model(tiny_dir)
    merged = model.merge_and_unload()
    q_before = base.model.layers[0].self_attn.q_proj.weight
    q_after = merged.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q_before, q_after)
    assert torch.equal(base.model.embed_tokens.weight, merged.model.embed_tokens.weight)
    ratio = logged(trainer, "causal_ratio")
    assert ratio[-1] > ratio[0]


def test_eager_attention_gives_the_same_first_step(tiny_dir, tmp_path) -> None:
    eager = run(tiny_dir, tmp_path / "e", attn_implementation="eager", max_steps=2)
    fast = run(tiny_dir, tmp_path / "f", attn_implementation="efficient", max_steps=2)
    for key in ("lm_loss", "attn_loss", "causal_ratio"):
        assert logged(eager, key)[0] == pytest.approx(logged(fast, key)[0], rel=1e-4)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("mode", "both", "mode must be"),
        ("loss_type", "l2", "loss_type must be"),
        ("attn_implementation", "flash", "attn_implementation must be"),
        ("alpha", 0.0, "alpha must be positive"),
        ("decay", -1.0, "must not be negative"),
        ("max_length", 1, "max_length"),
    ],
)
def test_config_rejects_bad_values(option, value, message, tmp_path) -> None:
    with pytest.raises(ConfigError, match=message):
        CATConfig(output_dir=str(tmp_path), report_to="none", **{option: value})


def test_config_keeps_extra_columns(tmp_path) -> None:
    config = CATConfig(output_dir=str(tmp_path), report_to="none", remove_unused_columns=True)
    assert config.remove_unused_columns is False


def test_label_logits_only_give_the_same_loss_and_gradients(tiny_dir) -> None:
    tokenizer = load_tokenizer(tiny_dir)
    model = load_model(tiny_dir)
    data = encode_rows(tokenizer, toy_rows(6, seed=5) + toy_rows(2, seed=6, ood=True))
    batch = CATCollator(tokenizer.pad_token_id)([data[i] for i in range(len(data))])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    trimmed = keep_label_logits(inputs)
    assert 1 < trimmed["logits_to_keep"] < inputs["input_ids"].shape[1]
    losses, grads = [], []
    for kwargs in (inputs, trimmed):
        model.zero_grad()
        out = model(**kwargs)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert out.logits.shape[1] == trimmed["logits_to_keep"]
    assert torch.allclose(losses[0], losses[1], rtol=1e-6, atol=0)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_activation_checkpointing_trains_cat_identically(tiny_dir, tmp_path) -> None:
    plain = run(tiny_dir, tmp_path / "p", max_steps=3, logging_steps=1)
    checkpointed = run(
        tiny_dir, tmp_path / "c", max_steps=3, logging_steps=1, activation_checkpointing=True
    )
    for key in ("lm_loss", "attn_loss", "causal_ratio"):
        # step 2 and 3 start from weights that step 1's (checkpointed) gradients made
        assert logged(checkpointed, key) == pytest.approx(logged(plain, key), rel=1e-5)


def test_bf16_causal_mass_is_close_to_the_fp32_oracle_and_a_wrong_mask_is_not(tiny_dir) -> None:
    from cattune.training.attention import causal_mass
    from cattune.training.data import split_mask

    tokenizer = load_tokenizer(tiny_dir)
    model = load_model(tiny_dir).eval()
    data = encode_rows(tokenizer, ROWS[:8])
    batch = CATCollator(tokenizer.pad_token_id)([data[i] for i in range(8)])
    inputs, mask = split_mask(batch)
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        _, oracle = causal_mass(model, ids, attention, mask, implementation="eager")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, fast = causal_mass(model, ids, attention, mask, implementation="efficient")
        shifted = type(mask)(mask.group_cols.roll(1, dims=-1), mask.row_group)
        _, wrong = causal_mass(model, ids, attention, shifted, implementation="eager")
    rows = mask.row_group >= 0
    error = (fast.float() - oracle)[rows].abs().max()
    assert error < 2e-2, "bf16 rounding stays within ~1e-2 of the fp32 mass"
    assert (wrong - oracle)[rows].abs().max() > 5 * error, "a mask one column off is caught"
