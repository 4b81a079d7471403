"""The memory-efficient causal mass against the eager reference on tiny real models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from cattune.schemas import ConfigError
from cattune.training import attention
from cattune.training.attention import CAT_ATTENTION, causal_mass, mass_from_attentions
from cattune.training.loss import reattention_loss
from cattune.training.mask import CausalMask, pack_masks

VOCAB = 40
SEQ = 20


def tiny_config(kind: str = "llama"):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaConfig(**common) if kind == "llama" else Qwen2Config(**common)


@pytest.fixture(autouse=True, params=["selected-rows", "indicator-sdpa"])
def strategy(request, monkeypatch) -> str:
    """Run every test with both ways of computing the efficient mass."""
    limit = 10**6 if request.param == "selected-rows" else 0
    monkeypatch.setattr(attention, "ROWS_PER_HEAD_DIM", limit)
    return request.param


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(
        tiny_config(), attn_implementation="sdpa", dtype=torch.float64
    )


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, CausalMask]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, SEQ), generator=gen)
    am = torch.ones(3, SEQ, dtype=torch.long)
    am[1, 14:] = 0
    am[2, 7:] = 0
    mask = pack_masks(
        [[(5, 9, 1, 3), (7, 12, 0, 2), (15, 19, 10, 14)], [(9, 16, 2, 5)], [(4, 10, 0, 3)]], SEQ
    )
    return ids, am, mask


def run(model, ids, am, mask, implementation: str, layers=None, loss_type: str = "div"):
    model.zero_grad()
    outputs, mass = causal_mass(
        model, ids, am, mask, layers=layers, implementation=implementation, labels=ids
    )
    attn = reattention_loss(mass, mask, am, loss_type=loss_type)
    (outputs.loss + attn.loss).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return mass.detach(), attn, outputs.logits.detach(), grads


def assert_same(model, ids, am, mask, layers=None, loss_type: str = "div") -> None:
    e_mass, e_attn, e_logits, e_grads = run(model, ids, am, mask, "eager", layers, loss_type)
    f_mass, f_attn, f_logits, f_grads = run(model, ids, am, mask, "efficient", layers, loss_type)
    assert e_attn.valid_rows > 0
    assert torch.allclose(e_mass, f_mass, atol=1e-5)
    assert torch.allclose(e_logits, f_logits, atol=1e-5)
    assert f_attn.loss.item() == pytest.approx(e_attn.loss.item(), abs=1e-5)
    assert (f_attn.valid_rows, f_attn.active_rows) == (e_attn.valid_rows, e_attn.active_rows)
    assert e_grads.keys() == f_grads.keys()
    for name, grad in e_grads.items():
        assert torch.allclose(grad, f_grads[name], atol=1e-5), name


@pytest.mark.parametrize("layers", [None, [1], [0, 1]])
def test_efficient_matches_eager_with_padding(llama, layers) -> None:
    assert_same(llama, *batch(), layers=layers)


def test_attention_term_changes_the_gradients(llama) -> None:
    """Guards the comparison above: the Re-Attention term really reaches the parameters."""
    ids, am, mask = batch()
    _, _, _, with_attn = run(llama, ids, am, mask, "efficient", loss_type="hinge")
    llama.zero_grad()
    llama(input_ids=ids, attention_mask=am, labels=ids).loss.backward()
    plain = llama.model.layers[0].self_attn.q_proj.weight.grad
    assert not torch.allclose(with_attn["model.layers.0.self_attn.q_proj.weight"], plain)


def test_more_groups_than_head_size(llama) -> None:
    """24 distinct row sets with a head size of 16: the indicator columns take two SDPA calls."""
    rects = [[(i, i + 1, 0, i) for i in range(1, 25)]]
    mask = pack_masks(rects, 26)
    assert mask.group_cols.shape[1] == 24
    ids = torch.randint(0, VOCAB, (1, 26), generator=torch.Generator().manual_seed(3))
    assert_same(llama, ids, torch.ones(1, 26, dtype=torch.long), mask, loss_type="nll")


@settings(max_examples=8)
@given(
    rects=st.lists(
        st.tuples(st.integers(0, 8), st.integers(1, 5), st.integers(0, 8), st.integers(1, 3)).map(
            lambda r: (r[0] + r[2] + r[3] - 1, r[0] + r[2] + r[3] + r[1] - 1, r[2], r[2] + r[3])
        ),
        min_size=1,
        max_size=5,
    ),
    length=st.integers(4, SEQ),
)
def test_efficient_matches_eager_on_random_masks(llama, rects, length) -> None:
    mask = pack_masks([rects, rects[::-1]], SEQ)
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(length))
    am = torch.ones(2, SEQ, dtype=torch.long)
    am[1, length:] = 0
    _, eager = causal_mass(llama, ids, am, mask, implementation="eager")
    _, efficient = causal_mass(llama, ids, am, mask, implementation="efficient")
    assert torch.allclose(eager, efficient, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_model_loaded_from_local_dir(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config(kind)).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="sdpa", dtype=torch.float64
    )
    ids, am, mask = batch(2)
    plain = model(input_ids=ids, attention_mask=am).logits
    assert_same(model, ids, am, mask)
    causal_mass(model, ids, am, mask)
    assert model.config._attn_implementation == CAT_ATTENTION
    assert torch.allclose(model(input_ids=ids, attention_mask=am).logits, plain, atol=1e-10)


def test_non_reentrant_gradient_checkpointing_matches(llama) -> None:
    ids, am, mask = batch()
    llama.train()
    _, _, _, expected = run(llama, ids, am, mask, "eager", loss_type="hinge")
    llama.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        for implementation in ("efficient", "eager"):
            _, _, _, grads = run(llama, ids, am, mask, implementation, loss_type="hinge")
            for name, grad in expected.items():
                assert torch.allclose(grad, grads[name], atol=1e-5), (implementation, name)
    finally:
        llama.gradient_checkpointing_disable()
        llama.eval()


def test_reentrant_gradient_checkpointing_is_refused(llama) -> None:
    ids, am, mask = batch()
    llama.train()
    llama.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    try:
        with pytest.raises(ConfigError, match="use_reentrant"):
            causal_mass(llama, ids, am, mask)
    finally:
        llama.gradient_checkpointing_disable()
        llama.eval()


def test_sdpa_attentions_are_refused_not_read_as_zero(llama) -> None:
    ids, am, mask = batch()
    outputs = llama(input_ids=ids, attention_mask=am, output_attentions=True)
    with pytest.raises(ConfigError, match="eager"):
        mass_from_attentions(outputs.attentions, mask, None)


@pytest.mark.parametrize("layers", [[2], [], [-1]])
def test_unknown_layers_are_a_config_error(llama, layers) -> None:
    ids, am, mask = batch()
    for implementation in ("eager", "efficient"):
        with pytest.raises(ConfigError, match="layers"):
            causal_mass(llama, ids, am, mask, layers=layers, implementation=implementation)


def test_unknown_implementation_is_a_config_error(llama) -> None:
    ids, am, mask = batch()
    with pytest.raises(ConfigError, match="implementation"):
        causal_mass(llama, ids, am, mask, implementation="flash")  # type: ignore[arg-type]
