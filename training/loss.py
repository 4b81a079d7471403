"""The Re-Attention loss of CAT, vectorised over rows.

Input is the causal mass of every row: the sum over its causal columns j of the mean attention
Ā[i, j]. Because each row of Ā sums to 1 over its visible columns, the non-causal mean follows:
a1 = mass / n_causal and a0 = (1 - mass) / (n_visible - n_causal). Column counts come from
cumulative sums over the groups of the CausalMask, so nothing T x T is ever built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from cattune.schemas import ConfigError
from cattune.training.mask import CausalMask

LossType = Literal["div", "div2", "nll", "hinge"]

_TINY = 1e-12


@dataclass
class ReAttentionOutput:
    """The loss and the diagnostics of one batch (diagnostics are detached)."""

    loss: Tensor
    ratio: Tensor
    a1: Tensor
    a0: Tensor
    valid_rows: int
    active_rows: int


def causal_counts(mask: CausalMask, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: the number of visible causal columns and the number of visible columns."""
    visible = attention_mask.to(mask.group_cols.dtype)
    n_visible = visible.cumsum(-1)
    batch, n_groups, seq_len = mask.group_cols.shape
    if n_groups == 0:
        return torch.zeros_like(n_visible), n_visible
    upto = (mask.group_cols * visible.unsqueeze(1)).cumsum(-1)  # [B, K, T]: causal cols j <= i
    index = mask.row_group.clamp_min(0).unsqueeze(1)  # [B, 1, T]
    n_causal = torch.gather(upto, 1, index).squeeze(1)
    return n_causal * (mask.row_group >= 0), n_visible


def _row_loss(a1: Tensor, a0: Tensor, ratio: Tensor, alpha: float, loss_type: str) -> Tensor:
    if loss_type == "hinge":
        return alpha - ratio
    if loss_type == "div":
        return -torch.log1p(a1) / torch.log1p(a0)
    if loss_type == "div2":
        return -torch.log1p(a1 / (1 + a0))
    return -a1 / (a1 + a0)


def reattention_loss(
    causal_mass: Tensor,
    mask: CausalMask,
    attention_mask: Tensor,
    alpha: float = 2.0,
    loss_type: LossType = "div",
) -> ReAttentionOutput:
    """L_attn of DESIGN.md: mean row loss over valid rows; rows with r >= alpha contribute 0.

    causal_mass: [B, T] per-row sum of mean attention over causal columns. attention_mask: [B, T],
    1 for real tokens. Returns a zero loss that is still attached to the graph when no row is valid.
    """
    if loss_type not in get_args(LossType):
        raise ConfigError(
            f"unknown Re-Attention loss type {loss_type!r}; "
            f"use one of {', '.join(get_args(LossType))}"
        )
    mask = mask.to(causal_mass.device)
    cols = mask.group_cols.to(causal_mass.dtype)
    n_causal, n_visible = causal_counts(CausalMask(cols, mask.row_group), attention_mask)
    n_other = n_visible - n_causal
    valid = (attention_mask > 0) & (mask.row_group >= 0) & (n_causal >= 1) & (n_other >= 1)

    a1 = causal_mass / n_causal.clamp_min(1)
    a0 = ((1 - causal_mass) / n_other.clamp_min(1)).clamp_min(_TINY)
    ratio = a1 / a0
    active = valid & (ratio < alpha)
    row_loss = torch.where(active, _row_loss(a1, a0, ratio, alpha, loss_type), 0.0)

    n_valid = int(valid.sum())
    loss = row_loss.sum() / max(n_valid, 1)
    denom = max(n_valid, 1)
    with torch.no_grad():
        mean_ratio = torch.where(valid, ratio, 0.0).sum() / denom
        mean_a1 = torch.where(valid, a1, 0.0).sum() / denom
        mean_a0 = torch.where(valid, a0, 0.0).sum() / denom
    return ReAttentionOutput(
        loss=loss,
        ratio=mean_ratio,
        a1=mean_a1,
        a0=mean_a0,
        valid_rows=n_valid,
        active_rows=int(active.sum()),
    )


def attention_weight(epoch: float, decay: float = 1.0) -> float:
    """Weight of L_attn at a (fractional) epoch: the reference schedule exp(-decay * epoch)."""
    return math.exp(-decay * epoch)
