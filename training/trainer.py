"""CATTrainer: the Hugging Face Trainer with the Re-Attention loss added to the LM loss.

In ``cat`` mode every step computes the causal mass of each row alongside the forward pass and
adds ``attn_weight * exp(-decay * epoch) * L_attn``. In ``baseline`` mode the attention term is
off; the causal ratio is still measured on logging steps (from the same forward pass, so it costs
little) so that runs can be compared. Logged means per logging interval: ``lm_loss``,
``attn_loss``, ``attn_weight``, ``causal_ratio`` (a1/a0), ``a1``, ``a0``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from cattune.training.attention import causal_mass
from cattune.training.config import CATConfig
from cattune.training.data import split_mask
from cattune.training.loss import attention_weight, reattention_loss


class _Wrapped:
    """Calls a wrapped model (DDP) but exposes the inner model's config, as causal_mass needs."""

    def __init__(self, wrapper: nn.Module, inner: Any) -> None:
        self.wrapper, self.inner = wrapper, inner

    @property
    def config(self) -> Any:
        return self.inner.config

    def set_attn_implementation(self, name: str) -> None:
        self.inner.set_attn_implementation(name)

    def parameters(self) -> Any:
        return self.inner.parameters()

    def __call__(self, **kwargs: Any) -> Any:
        return self.wrapper(**kwargs)


class CATTrainer(Trainer):
    """Trainer whose ``args`` is a :class:`CATConfig` and whose batches come from CATCollator."""

    args: CATConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, CATConfig):
            raise TypeError("CATTrainer needs a CATConfig as args")
        # The LM loss is the model's per-batch mean; the Trainer divides it for accumulation.
        self.model_accepts_loss_kwargs = False
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, float] = defaultdict(float)

    def attention_weight_now(self) -> float:
        epoch = float(self.state.epoch or 0.0)
        return self.args.attn_weight * attention_weight(epoch, self.args.decay)

    def _ratio_due(self) -> bool:
        every = self.args.ratio_every or int(self.args.logging_steps) or 1
        return (self.state.global_step + 1) % every == 0 or self.state.global_step == 0

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        args = self.args
        model_inputs, mask = split_mask(inputs)
        cat = args.mode == "cat"
        attn = None
        # A batch without any causal column (no relations survived tokenization) has no
        # attention term; the plain forward pass is enough.
        has_groups = mask.group_cols.shape[1] > 0
        if has_groups and (cat or (model.training and self._ratio_due())):
            input_ids = model_inputs.pop("input_ids")
            attention_mask = model_inputs.pop("attention_mask")
            inner = self.accelerator.unwrap_model(model)
            outputs, mass = causal_mass(
                model if inner is model else _Wrapped(model, inner),
                input_ids,
                attention_mask,
                mask,
                layers=args.cat_layers,
                implementation=args.attn_implementation,
                **model_inputs,
            )
            attn = reattention_loss(mass, mask, attention_mask, args.alpha, args.loss_type)
        else:
            outputs = model(**model_inputs)
        lm_loss = outputs.loss
        loss = lm_loss
        if cat and attn is not None:
            weight = self.attention_weight_now()
            loss = lm_loss + weight * attn.loss
            if model.training:
                self._add("attn_weight", weight, 1)
        if model.training:
            self._add("lm_loss", float(lm_loss.detach()), 1)
            if attn is not None and attn.valid_rows:
                rows = attn.valid_rows
                self._add("attn_loss", float(attn.loss.detach()), 1)
                self._add("causal_ratio", float(attn.ratio) * rows, rows)
                self._add("a1", float(attn.a1) * rows, rows)
                self._add("a0", float(attn.a0) * rows, rows)
        return (loss, outputs) if return_outputs else loss

    def _add(self, key: str, value: float, count: float) -> None:
        self._sums[key] += value
        self._counts[key] += count

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._counts:
            for key, count in self._counts.items():
                if count:
                    logs[key] = self._sums[key] / count
            self._sums.clear()
            self._counts.clear()
        super().log(logs, start_time)
