"""CATTrainer: the Hugging Face Trainer with the Re-Attention loss added to the LM loss.

In ``cat`` mode every step computes the causal mass of each row alongside the forward pass and
adds ``attn_weight * exp(-decay * epoch) * L_attn``. In ``baseline`` mode the attention term is
off; the causal ratio is still measured on logging steps (from the same forward pass, so it costs
little) so that runs can be compared. Logged means per logging interval, over all processes:
``lm_loss``, ``attn_loss``, ``attn_weight``, ``causal_ratio`` (a1/a0), ``a1``, ``a0``.

In training, the LM head runs only on the positions from the batch's first label on (through the
model's ``logits_to_keep``): the loss is the same, and on a 49k vocabulary with short answers
that saves most of the head's work.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from cattune.training.attention import causal_mass
from cattune.training.config import CATConfig
from cattune.training.data import IGNORE_INDEX, split_mask
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


LOGGED = ("lm_loss", "attn_loss", "attn_weight", "causal_ratio", "a1", "a0")


def keep_label_logits(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``inputs`` with ``logits_to_keep`` set to cover every label, and labels cut to match.

    The model's loss shifts labels by one, so the kept window starts one position before the
    batch's first label; the loss is the same as over all positions.
    """
    labels = inputs["labels"]
    labelled = (labels != IGNORE_INDEX).any(0).nonzero()
    if labelled.numel() == 0:
        return inputs
    keep = min(labels.shape[1] - int(labelled[0]) + 1, labels.shape[1])
    return {**inputs, "labels": labels[:, -keep:], "logits_to_keep": keep}


class CATTrainer(Trainer):
    """Trainer whose ``args`` is a :class:`CATConfig` and whose batches come from CATCollator."""

    args: CATConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, CATConfig):
            raise TypeError("CATTrainer needs a CATConfig as args")
        # The LM loss is the model's per-batch mean; the Trainer divides it for accumulation.
        self.model_accepts_loss_kwargs = False
        self._sums = torch.zeros(len(LOGGED), dtype=torch.float64)
        self._counts = torch.zeros(len(LOGGED), dtype=torch.float64)
        inner = self.accelerator.unwrap_model(self.model)
        base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
        self._trim_logits = "logits_to_keep" in inspect.signature(base.forward).parameters

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
        if model.training and self._trim_logits and "labels" in model_inputs:
            model_inputs = keep_label_logits(model_inputs)
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
        index = LOGGED.index(key)
        self._sums[index] += value
        self._counts[index] += count

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            # Every process logs at the same step: sums and counts are gathered across ranks.
            local = torch.stack([self._sums, self._counts]).to(self.args.device)
            gathered = self.accelerator.gather(local[None]).reshape(-1, 2, len(LOGGED)).sum(0)
            sums, counts = gathered.cpu().tolist()
            for key, total, count in zip(LOGGED, sums, counts, strict=True):
                if count:
                    logs[key] = total / count
            self._sums.zero_()
            self._counts.zero_()
        super().log(logs, start_time)
