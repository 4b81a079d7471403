"""The vectorised Re-Attention loss against a per-row oracle written from DESIGN.md."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cattune.schemas import ConfigError
from cattune.training.loss import attention_weight, reattention_loss
from cattune.training.mask import CausalMask, dense_mask, pack_masks

LOSS_TYPES = ["div", "div2", "nll", "hinge"]


def oracle_loss(attn: torch.Tensor, m: torch.Tensor, am: torch.Tensor, alpha: float, kind: str):
    """Python loops over rows and columns of explicit mean-attention maps attn [B, T, T]."""
    total = (attn * 0).sum()
    n_valid = 0
    for b in range(attn.shape[0]):
        for i in range(attn.shape[1]):
            if am[b, i] == 0:
                continue
            causal, other = [], []
            for j in range(i + 1):
                if am[b, j] == 0:
                    continue
                (causal if m[b, i, j] else other).append(attn[b, i, j])
            if not causal or not other:
                continue
            n_valid += 1
            a1 = sum(causal) / len(causal)
            a0 = sum(other) / len(other)
            r = a1 / a0
            if r >= alpha:
                continue
            if kind == "hinge":
                total = total + torch.clamp(alpha - r, min=0)
            elif kind == "div":
                total = total - torch.log(1 + a1) / torch.log(1 + a0)
            elif kind == "div2":
                total = total - torch.log(1 + a1 / (1 + a0))
            else:
                total = total - a1 / (a1 + a0)
    return total / max(n_valid, 1), n_valid


def attention_maps(logits: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
    """Row-softmax over visible columns (j <= i and not padding)."""
    seq_len = logits.shape[-1]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    visible = causal & (am[:, None, :] > 0)
    return torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)


rect = st.tuples(st.integers(0, 13), st.integers(1, 6), st.integers(0, 13), st.integers(1, 4)).map(
    lambda r: (r[0] + r[2] + r[3] - 1, r[0] + r[2] + r[3] - 1 + r[1], r[2], r[2] + r[3])
)


@given(
    rects=st.lists(st.lists(rect, max_size=4), min_size=1, max_size=3),
    seq_len=st.integers(2, 14),
    lengths=st.lists(st.integers(1, 14), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
    alpha=st.sampled_from([0.5, 2.0, 8.0]),
    scale=st.sampled_from([0.5, 3.0]),
)
def test_matches_row_oracle_values_and_gradients(rects, seq_len, lengths, seed, alpha, scale):
    gen = torch.Generator().manual_seed(seed)
    batch = len(rects)
    mask = pack_masks(rects, seq_len)
    am = torch.zeros(batch, seq_len, dtype=torch.long)
    for b in range(batch):
        am[b, : min(lengths[b], seq_len)] = 1
    m = dense_mask(mask)
    base = torch.randn(batch, seq_len, seq_len, generator=gen, dtype=torch.float64) * scale
    for kind in LOSS_TYPES:
        logits = base.clone().requires_grad_(True)
        attn = attention_maps(logits, am)
        mass = (attn * m).sum(-1)
        out = reattention_loss(mass, mask, am, alpha=alpha, loss_type=kind)
        (grad,) = torch.autograd.grad(out.loss, logits, allow_unused=True)
        grad = torch.zeros_like(logits) if grad is None else grad

        ref_logits = base.clone().requires_grad_(True)
        expected, n_valid = oracle_loss(attention_maps(ref_logits, am), m, am, alpha, kind)
        (ref_grad,) = torch.autograd.grad(expected, ref_logits, allow_unused=True)
        ref_grad = torch.zeros_like(logits) if ref_grad is None else ref_grad

        assert out.valid_rows == n_valid
        assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5, rel=1e-5)
        assert torch.allclose(grad, ref_grad, atol=1e-5, rtol=1e-5)


def test_diagnostics_and_active_rows() -> None:
    # one example, 4 tokens; row 3 has causal column 1 and non-causal columns 0, 2, 3
    mask = pack_masks([[(3, 4, 1, 2)]], 4)
    am = torch.ones(1, 4, dtype=torch.long)
    mass = torch.tensor([[0.0, 0.0, 0.0, 0.1]], dtype=torch.float64, requires_grad=True)
    out = reattention_loss(mass, mask, am, alpha=2.0, loss_type="hinge")
    a1, a0 = 0.1, 0.9 / 3
    assert out.valid_rows == 1 and out.active_rows == 1
    assert out.a1.item() == pytest.approx(a1)
    assert out.a0.item() == pytest.approx(a0)
    assert out.ratio.item() == pytest.approx(a1 / a0)
    assert out.loss.item() == pytest.approx(2.0 - a1 / a0)
    assert not out.ratio.requires_grad

    strong = torch.tensor([[0.0, 0.0, 0.0, 0.7]], dtype=torch.float64, requires_grad=True)
    out = reattention_loss(strong, mask, am, alpha=2.0, loss_type="hinge")
    assert out.valid_rows == 1 and out.active_rows == 0 and out.loss.item() == 0.0


def test_padding_rows_and_columns_are_never_counted() -> None:
    mask = pack_masks([[(3, 4, 1, 2)]], 4)
    am = torch.tensor([[1, 1, 1, 0]])
    out = reattention_loss(torch.full((1, 4), 0.2), mask, am)
    assert out.valid_rows == 0


def test_no_valid_rows_gives_zero_loss_still_in_graph() -> None:
    mask = CausalMask(torch.zeros(2, 0, 5), torch.full((2, 5), -1))
    mass = torch.rand(2, 5, requires_grad=True)
    out = reattention_loss(mass, mask, torch.ones(2, 5))
    assert out.loss.item() == 0.0 and out.valid_rows == 0
    out.loss.backward()
    assert mass.grad is not None and not mass.grad.any()


def test_row_with_only_causal_columns_is_not_valid() -> None:
    mask = pack_masks([[(1, 2, 0, 2)]], 3)  # row 1 sees columns 0, 1, both causal
    out = reattention_loss(torch.ones(1, 3), mask, torch.ones(1, 3))
    assert out.valid_rows == 0


def test_unknown_loss_type_is_a_config_error() -> None:
    mask = pack_masks([[]], 3)
    with pytest.raises(ConfigError, match="loss type"):
        reattention_loss(torch.zeros(1, 3), mask, torch.ones(1, 3), loss_type="mse")  # type: ignore[arg-type]


def test_attention_weight_schedule() -> None:
    assert attention_weight(0.0) == 1.0
    assert attention_weight(1.0) == pytest.approx(math.exp(-1))
    assert attention_weight(2.5, decay=0.5) == pytest.approx(math.exp(-1.25))
