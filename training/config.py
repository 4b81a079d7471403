"""Training arguments for CAT: Hugging Face TrainingArguments plus the Re-Attention options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

from transformers import TrainingArguments

from cattune.schemas import ConfigError
from cattune.training.loss import LossType

MODES = ("cat", "baseline")
IMPLEMENTATIONS = ("efficient", "eager")


@dataclass
class CATConfig(TrainingArguments):
    """``TrainingArguments`` + CAT options (DESIGN.md, "Token mask and the Re-Attention loss").

    The attention term's weight at (fractional) epoch e is ``attn_weight * exp(-decay * e)``.
    """

    mode: str = field(default="cat", metadata={"help": "cat | baseline (attention term off)"})
    alpha: float = field(default=2.0, metadata={"help": "target ratio a1/a0 of a row"})
    loss_type: str = field(default="div", metadata={"help": "div | div2 | nll | hinge"})
    attn_weight: float = field(default=1.0, metadata={"help": "base weight of L_attn"})
    decay: float = field(default=1.0, metadata={"help": "weight = attn_weight*exp(-decay*epoch)"})
    cat_layers: list[int] | None = field(
        default=None, metadata={"help": "layers averaged into the attention (None = all)"}
    )
    attn_implementation: str = field(
        default="efficient", metadata={"help": "efficient (SDPA + indicator columns) | eager"}
    )
    max_length: int | None = field(default=None, metadata={"help": "truncate rows to this"})
    ratio_every: int = field(
        default=0,
        metadata={"help": "baseline: measure the causal ratio every N steps (0 = logging_steps)"},
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.loss_type not in get_args(LossType):
            raise ConfigError(
                f"loss_type must be one of {get_args(LossType)}, got {self.loss_type!r}"
            )
        if self.attn_implementation not in IMPLEMENTATIONS:
            raise ConfigError(
                f"attn_implementation must be one of {IMPLEMENTATIONS}, "
                f"got {self.attn_implementation!r}"
            )
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be positive, got {self.alpha}")
        if self.attn_weight < 0 or self.decay < 0:
            raise ConfigError("attn_weight and decay must not be negative")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {self.max_length}")
        # Rectangles and masks are extra columns the model's forward does not accept.
        self.remove_unused_columns = False
        super().__post_init__()
