"""Causal mass of the mean attention: Σ_{j causal for row i} Ā[i, j], with Ā averaged over layers
and heads.

Two implementations give the same numbers and gradients:

- ``eager``: the reference approach. The model runs in eager attention with
  ``output_attentions=True`` and the T x T maps are reduced explicitly (the oracle).
- ``efficient``: never builds T x T maps. A custom attention function (registered with
  transformers' AttentionInterface as ``cattune_cat``) runs the normal SDPA call, then the mass of
  the rows that have a causal set, in one of two ways:
  * few such rows (<= ROWS_PER_HEAD_DIM x head size, the usual case): their scores alone,
    [B, H, rows, T], softmax, sum over the row's causal columns;
  * many: a second SDPA call whose values are the indicator columns of the mask's groups
    (zero-padded to the head size so the fused kernel is kept); its output at row i, column k is
    the mass of row i on group k, and each row keeps its own group's column.
  Per-layer results go to a collector passed through the model's keyword arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from cattune.schemas import ConfigError
from cattune.training.mask import CausalMask, dense_mask

CAT_ATTENTION = "cattune_cat"
Implementation = Literal["eager", "efficient"]


class MassCollector:
    """Accumulates the per-row causal mass of the selected layers during one forward pass."""

    def __init__(self, mask: CausalMask, layers: Sequence[int] | None) -> None:
        self.mask = mask
        self.n_rows = int((mask.row_group >= 0).sum(1).max()) if mask.row_group.numel() else 0
        """The most rows with a causal set in one example (computed once, not per layer)."""
        self.layers = None if layers is None else set(layers)
        self.total: Tensor | None = None
        self.count = 0

    def wants(self, layer_idx: int) -> bool:
        return self.layers is None or layer_idx in self.layers

    def add(self, mass: Tensor) -> None:
        self.total = mass if self.total is None else self.total + mass
        self.count += 1

    def result(self) -> Tensor:
        if self.total is None:
            raise ConfigError(
                f"no attention layer matched layers={sorted(self.layers or [])}; "
                "give layer indices that exist in the model (0-based)"
            )
        return self.total / self.count


ROWS_PER_HEAD_DIM = 4
"""Rows with a causal set are scored explicitly when there are at most this many per head
dimension (the [B, H, rows, T] scores then take at most 4x the memory of one hidden-state
tensor); beyond that the indicator columns go through SDPA over all rows."""


def _indicator_mass(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None,
    is_causal: bool | None,
    mask: CausalMask,
) -> Tensor:
    """[B, T] mass through SDPA whose values are the groups' indicator columns (all rows)."""
    batch, _, seq_len, head_dim = query.shape
    kv_heads = key.shape[1]
    cols = mask.group_cols.to(device=query.device, dtype=query.dtype)
    n_groups = cols.shape[1]
    per_group = []
    for start in range(0, n_groups, head_dim):
        chunk = cols[:, start : start + head_dim].transpose(1, 2)  # [B, T, <=D]
        chunk = torch.nn.functional.pad(chunk, (0, head_dim - chunk.shape[-1]))
        values = chunk.unsqueeze(1).expand(batch, kv_heads, seq_len, head_dim).contiguous()
        out, _ = sdpa_attention_forward(
            module, query, key, values, attention_mask, dropout=0.0, scaling=scaling,
            is_causal=is_causal,
        )  # fmt: skip
        per_group.append(out.mean(dim=2)[..., : min(head_dim, n_groups - start)])  # [B, T, k]
    mass = torch.cat(per_group, dim=-1)  # [B, T, K]
    row_group = mask.row_group.to(query.device)
    picked = torch.gather(mass, 2, row_group.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * (row_group >= 0)


def _selected_rows_mass(
    query: Tensor,
    key: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None,
    mask: CausalMask,
    n_rows: int,
) -> Tensor:
    """[B, T] mass from explicit scores of only the rows that have a causal set ([B, H, R, T])."""
    batch, heads, seq_len, head_dim = query.shape
    row_group = mask.row_group.to(query.device)
    has_set = row_group >= 0
    order = torch.argsort((~has_set).to(torch.int8), dim=1, stable=True)[:, :n_rows]  # [B, R]
    keep = has_set.gather(1, order)
    q = query.gather(2, order[:, None, :, None].expand(batch, heads, n_rows, head_dim))
    k = repeat_kv(key, heads // key.shape[1])
    scale = scaling if scaling is not None else head_dim**-0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, R, T]
    if attention_mask is None:
        visible = torch.arange(seq_len, device=query.device) <= order.unsqueeze(-1)
        scores = scores.masked_fill(~visible.unsqueeze(1), float("-inf"))
    else:
        rows = attention_mask.expand(batch, -1, -1, -1).gather(
            2, order[:, None, :, None].expand(batch, attention_mask.shape[1], n_rows, seq_len)
        )
        scores = (
            scores.masked_fill(~rows, float("-inf")) if rows.dtype == torch.bool else scores + rows
        )
    scores = torch.where(keep[:, None, :, None], scores, 0.0)  # padded slots: never all -inf
    probs = scores.softmax(-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    groups = row_group.gather(1, order).clamp_min(0)
    cols = mask.group_cols.to(device=query.device, dtype=probs.dtype)
    row_cols = cols.gather(1, groups.unsqueeze(-1).expand(batch, n_rows, seq_len))  # [B, R, T]
    picked = (probs * row_cols.unsqueeze(1)).sum(-1).mean(1)  # [B, R]
    picked = torch.where(keep, picked, 0.0).to(query.dtype)
    return query.new_zeros(batch, seq_len).scatter(1, order, picked)


def _group_mass(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None,
    is_causal: bool | None,
    mask: CausalMask,
    n_rows: int,
) -> Tensor:
    """[B, T] head-mean attention mass of each row on its own group's columns."""
    batch, _, seq_len, head_dim = query.shape
    if n_rows == 0:
        return query.new_zeros(batch, seq_len)
    if n_rows <= ROWS_PER_HEAD_DIM * head_dim:
        return _selected_rows_mass(query, key, attention_mask, scaling, mask, n_rows)
    return _indicator_mass(module, query, key, attention_mask, scaling, is_causal, mask)


def cat_attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    cat_collector: MassCollector | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """SDPA attention that also reports the causal mass to ``cat_collector`` when one is given."""
    output, weights = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
        is_causal=is_causal, **kwargs,
    )  # fmt: skip
    if cat_collector is not None and cat_collector.wants(module.layer_idx):
        mass = _group_mass(
            module, query, key, attention_mask, scaling, is_causal, cat_collector.mask,
            cat_collector.n_rows,
        )  # fmt: skip
        cat_collector.add(mass)
    return output, weights


AttentionInterface.register(CAT_ATTENTION, cat_attention_forward)
AttentionMaskInterface.register(CAT_ATTENTION, sdpa_mask)


def use_implementation(model: Any, name: str) -> None:
    """Switch the model's attention implementation (no-op when it is already set).

    The switch is not undone afterwards: gradient checkpointing re-runs the layers during
    backward, and they must run the same attention then. ``cattune_cat`` without a collector is
    plain SDPA, so a model left in it behaves (and generates) as with ``sdpa``.
    """
    if model.config._attn_implementation != name:
        model.set_attn_implementation(name)


def _check_graph(model: Any, mass: Tensor) -> None:
    if (
        torch.is_grad_enabled()
        and not mass.requires_grad
        and any(p.requires_grad for p in model.parameters())
    ):
        raise ConfigError(
            "the causal mass is not part of the autograd graph, so the Re-Attention loss would "
            "train nothing; with gradient checkpointing use "
            "gradient_checkpointing_kwargs={'use_reentrant': False}"
        )


def mass_from_attentions(
    attentions: Sequence[Tensor | None] | None, mask: CausalMask, layers: Sequence[int] | None
) -> Tensor:
    """Causal mass from explicit attention maps ([B, H, T, T] per layer), the reference way."""
    if not attentions or any(a is None for a in attentions):
        raise ConfigError(
            "the model returned no attention maps; the eager path needs "
            "attn_implementation='eager' (sdpa with output_attentions=True returns none)"
        )
    chosen = range(len(attentions)) if layers is None else list(layers)
    if not chosen or any(i < 0 or i >= len(attentions) for i in chosen):
        raise ConfigError(
            f"layers={list(chosen)} do not exist; the model has {len(attentions)} attention layers"
        )
    dense = dense_mask(mask.to(attentions[0].device)).to(attentions[0].dtype)
    total = sum((attentions[i].mean(dim=1) * dense).sum(dim=-1) for i in chosen)
    return total / len(chosen)


def causal_mass(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    mask: CausalMask,
    *,
    layers: Sequence[int] | None = None,
    implementation: Implementation = "efficient",
    **model_kwargs: Any,
) -> tuple[Any, Tensor]:
    """Run the model; return its outputs and the [B, T] causal mass of the mean attention.

    The model is switched to the attention the implementation needs and left there (see
    use_implementation). Non-reentrant gradient checkpointing works; reentrant checkpointing
    drops the mass from the graph and raises a ConfigError.

    ``layers`` selects 0-based decoder layers (default: all); model_kwargs go to the model (e.g.
    ``labels`` for the LM loss).
    """
    n_layers = getattr(model.config, "num_hidden_layers", None)
    if layers is not None and (
        not layers or (n_layers is not None and any(i < 0 or i >= n_layers for i in layers))
    ):
        raise ConfigError(
            f"layers={list(layers)} do not exist; the model has {n_layers} layers (0-based)"
        )
    if implementation == "eager":
        use_implementation(model, "eager")
        outputs = model(
            input_ids=input_ids, attention_mask=attention_mask, output_attentions=True,
            **model_kwargs,
        )  # fmt: skip
        mass = mass_from_attentions(outputs.attentions, mask, layers)
    elif implementation == "efficient":
        collector = MassCollector(mask.to(input_ids.device), layers)
        use_implementation(model, CAT_ATTENTION)
        outputs = model(
            input_ids=input_ids, attention_mask=attention_mask, cat_collector=collector,
            **model_kwargs,
        )  # fmt: skip
        mass = collector.result()
    else:
        raise ConfigError(
            f"unknown attention implementation {implementation!r}; use 'efficient' or 'eager'"
        )
    _check_graph(model, mass)
    return outputs, mass
