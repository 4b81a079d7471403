"""cattune.training: read releases, fine-tune with CAT (LM loss + Re-Attention loss), evaluate.

Public names are imported lazily so that ``import cattune.training`` stays cheap (torch and
transformers load on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CATConfig": "config",
    "CATTrainer": "trainer",
    "CATCollator": "data",
    "EncodedRows": "data",
    "char_span_to_tokens": "data",
    "encode_example": "data",
    "encode_rows": "data",
    "prompt_ids": "data",
    "CausalMask": "mask",
    "Rect": "mask",
    "pack_masks": "mask",
    "relation_rectangles": "mask",
    "dense_mask": "mask",
    "ReAttentionOutput": "loss",
    "reattention_loss": "loss",
    "attention_weight": "loss",
    "causal_mass": "attention",
    "answers_match": "evaluate",
    "normalise_answer": "evaluate",
    "evaluate_rows": "evaluate",
    "generate": "evaluate",
    "plot_training": "plots",
    "plot_comparison": "plots",
    "read_release": "release_io",
    "read_parquet": "release_io",
    "read_job": "release_io",
    "build_tiny_model": "tiny",
    "load_model": "models",
    "load_tokenizer": "models",
    "toy_rows": "tiny",
    "ScriptArguments": "config",
    "ModelArguments": "config",
    "EvalArguments": "config",
    "resolve_model": "models",
    "train": "run",
    "evaluate_model": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cattune.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cattune.training.{_EXPORTS[name]}"), name)
