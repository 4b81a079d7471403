"""Training configuration, TRL-style: ``CATConfig`` extends ``TrainingArguments``.

Three dataclasses describe a run, and ``cattune train``'s flags, a job file's ``config`` and
:func:`cattune.training.run.train` all come from them through ``HfArgumentParser`` (like TRL's
``SFTConfig`` + ``ScriptArguments`` + ``ModelConfig``):

- :class:`ScriptArguments`: what to train on and evaluate on;
- :class:`ModelArguments`: which model, how it is loaded, LoRA;
- :class:`CATConfig`: every ``TrainingArguments`` field plus the Re-Attention options, with
  defaults for cattune (logging every 10 steps, no checkpoints, no reporting) and short aliases
  for the common flags (``--lr``, ``--epochs``, ``--batch-size``, ``--out``).

Names are the fields' names (``learning_rate``, ``num_train_epochs``, ...); on the command line
both ``--learning_rate`` and ``--learning-rate`` work.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_type_hints

import torch
from transformers import HfArgumentParser, TrainingArguments

from cattune.schemas import ConfigError
from cattune.training.loss import LossType

TINY_LR = 3e-3
LORA_LR = 5e-4
FULL_LR = 2e-5
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _help(text: str, *aliases: str) -> dict[str, Any]:
    return {"help": text, "aliases": list(aliases)} if aliases else {"help": text}


def _switch(text: str, *aliases: str) -> dict[str, Any]:
    """A bool flag that is true when given alone (``--bf16``), or set (``--bf16 false``)."""
    return {**_help(text, *aliases), "nargs": "?", "const": True}


@dataclass
class ScriptArguments:
    """The data a run trains on and is evaluated on."""

    release: str | None = field(default=None, metadata=_help("release directory"))
    data: str | None = field(default=None, metadata=_help("Parquet file of contract rows"))
    split: str | None = field(
        default=None,
        metadata=_help("split to train on (default: train of a release, all of --data)"),
    )
    eval_data: list[str] = field(
        default_factory=list,
        metadata=_help(
            "release dirs or Parquet files to evaluate on (default: the release's other splits)"
        ),
    )
    eval_split: list[str] | None = field(
        default=None, metadata=_help("only these splits of the evaluation data")
    )
    max_choices: int = field(
        default=16,
        metadata=_help(
            "score by label choice where a split has at most this many answers (0: off)"
        ),
    )


@dataclass
class ModelArguments:
    """The model to fine-tune, how it is loaded, and LoRA."""

    model: str = field(
        default="tiny",
        metadata=_help(
            "'tiny' (a small Llama built from the data), 'smollm2-135m' (the embedded pretrained "
            "model), a .gguf file, a local Hugging Face model directory, or a hub id"
        ),
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(
        default="float32",
        metadata=_help("dtype of the loaded weights (mixed precision is --bf16)"),
    )
    lora_r: int | None = field(
        default=None, metadata=_help("train LoRA adapters of this rank (default: full fine-tuning)")
    )
    lora_alpha: float | None = field(default=None, metadata=_help("LoRA alpha (default 2 x rank)"))
    lora_dropout: float = field(default=0.0, metadata=_help("LoRA dropout"))
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS),
        metadata=_help(
            "modules that get LoRA adapters (default: every attention and MLP projection)"
        ),
    )

    def __post_init__(self) -> None:
        if self.lora_r is not None and self.lora_r < 1:
            raise ConfigError(f"lora_r must be at least 1, got {self.lora_r}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


def native_bf16() -> bool:
    """Whether bf16 runs natively: a CUDA GPU with bf16, or a CPU with AMX / AVX512-BF16.

    Elsewhere bf16 is emulated: on a 2-core AVX-512 CPU without either, a LoRA step of SmolLM2
    took ~10x longer under bf16 autocast than in fp32.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(
        getattr(cpu, name, lambda: False)()
        for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    )


@dataclass
class CATConfig(TrainingArguments):
    """``TrainingArguments`` + CAT options (DESIGN.md, "Token mask and the Re-Attention loss").

    The attention term's weight at (fractional) epoch e is ``attn_weight * exp(-decay * e)``.
    ``learning_rate`` left unset is chosen by the trainer from the model (tiny, LoRA, full).
    """

    mode: Literal["cat", "baseline"] = field(
        default="cat", metadata=_help("cat | baseline (attention term off)")
    )
    alpha: float = field(default=2.0, metadata=_help("target ratio a1/a0 of a row"))
    loss_type: LossType = field(default="div", metadata=_help("div | div2 | nll | hinge"))
    attn_weight: float = field(default=1.0, metadata=_help("base weight of L_attn"))
    decay: float = field(default=1.0, metadata=_help("weight = attn_weight * exp(-decay * epoch)"))
    cat_layers: list[int] | None = field(
        default=None,
        metadata=_help("layers averaged into the attention (default: all)", "--layers"),
    )
    attn_implementation: Literal["efficient", "eager"] = field(
        default="efficient", metadata=_help("efficient (SDPA + indicator columns) | eager (oracle)")
    )
    max_length: int | None = field(
        default=None, metadata=_help("truncate rows to this many tokens")
    )
    ratio_every: int = field(
        default=0,
        metadata=_help("baseline: measure the causal ratio every N steps (0 = logging_steps)"),
    )
    # TrainingArguments fields with cattune's defaults and short aliases.
    output_dir: str = field(default="cattune-run", metadata=_help("run directory", "--out"))
    learning_rate: float | None = field(
        default=None,
        metadata=_help(
            f"default {TINY_LR} for tiny, {LORA_LR} with LoRA, {FULL_LR} for full fine-tuning",
            "--lr",
        ),
    )
    num_train_epochs: float = field(default=3.0, metadata=_help("epochs", "--epochs"))
    per_device_train_batch_size: int = field(
        default=8, metadata=_help("rows per step and device", "--batch-size")
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata=_help("gradient accumulation steps", "--grad-accum")
    )
    bf16: bool | None = field(
        default=None,
        metadata=_switch(
            "bf16 mixed precision (default: where it is native: CUDA, or a CPU with AMX)"
        ),
    )
    disable_tqdm: bool | None = field(
        default=None,
        metadata=_switch("no progress bars (losses are still logged)", "--quiet"),
    )
    logging_steps: float = field(default=10, metadata=_help("log every N steps"))
    seed: int = field(default=0, metadata=_help("seeds model building, data order and training"))
    save_strategy: str = field(default="no", metadata=_help("checkpoints: no | steps | epoch"))

    def __post_init__(self) -> None:
        hints = get_type_hints(CATConfig)
        for name in ("mode", "loss_type", "attn_implementation"):
            allowed = get_args(hints[name])
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be positive, got {self.alpha}")
        if self.attn_weight < 0 or self.decay < 0:
            raise ConfigError("attn_weight and decay must not be negative")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {self.max_length}")
        if self.per_device_train_batch_size < 1:
            raise ConfigError(
                f"--batch-size must be at least 1, got {self.per_device_train_batch_size}"
            )
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        # Rectangles and masks are extra columns the model's forward does not accept.
        self.remove_unused_columns = False
        if self.bf16 is None:
            self.bf16 = native_bf16()
        if not torch.cuda.is_available():
            # accelerate uses bf16 on a CPU, and runs multi-process CPU training (gloo), only
            # when told to use the CPU.
            self.use_cpu = True
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                self.ddp_backend = self.ddp_backend or "gloo"
        self.dataloader_pin_memory = torch.cuda.is_available()
        learning_rate = self.learning_rate
        self.learning_rate = learning_rate or FULL_LR  # TrainingArguments needs a number
        super().__post_init__()
        self.learning_rate = learning_rate  # type: ignore[assignment]


@dataclass
class EvalArguments:
    """Everything ``cattune eval`` accepts."""

    model: str = field(metadata=_help("a trained model directory, or any --model of cattune train"))
    data: list[str] = field(metadata=_help("release dirs or Parquet files"))
    split: list[str] | None = field(default=None, metadata=_help("only these splits"))
    batch_size: int = field(default=16, metadata=_help("rows per batch"))
    max_new_tokens: int | None = field(
        default=None, metadata=_help("default: the longest answer + 4 tokens")
    )
    max_length: int | None = field(
        default=None, metadata=_help("truncate rows for the causal ratio")
    )
    attn_implementation: Literal["efficient", "eager"] = field(
        default="efficient", metadata=_help("how the causal ratio is measured")
    )
    max_choices: int = field(
        default=16,
        metadata=_help(
            "score by label choice where a split has at most this many answers (0: off)"
        ),
    )
    bf16: bool | None = field(
        default=None,
        metadata=_switch("bf16 autocast (default: where it is native, as in cattune train)"),
    )
    out: str | None = field(default=None, metadata=_help("output directory (default MODEL/eval)"))
    quiet: bool = field(default=False, metadata=_help("no progress bars"))

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.bf16 is None:
            self.bf16 = native_bf16()


TRAIN_ARGUMENTS = (ScriptArguments, ModelArguments, CATConfig)


def train_parser(prog: str = "cattune train") -> HfArgumentParser:
    """The parser of ``cattune train``: every field of the three dataclasses is a flag."""
    parser = HfArgumentParser(
        TRAIN_ARGUMENTS,  # type: ignore[arg-type]
        prog=prog,
        description=(
            "Train on a release (--release DIR), a Parquet file of contract rows (--data) or a "
            "job file written by the hand-off flow (--job; flags given here override its "
            "config). Writes OUT/model, OUT/metrics.json, OUT/plots/*.png."
        ),
    )
    parser.add_argument(
        "--job", help="training job JSON (cattune.schemas.TrainingJob); flags given override it"
    )
    return parser


def parse_train_args(
    argv: list[str], job_config: dict[str, Any] | None = None
) -> tuple[ScriptArguments, ModelArguments, CATConfig]:
    """Dataclasses from command-line flags, with a job file's config as the defaults."""
    parser = train_parser()
    if job_config:
        check_names(job_config)
        parser.set_defaults(**job_config)
    try:
        script, model, config, _ = parser.parse_args_into_dataclasses(
            argv, look_for_args_file=False
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(f"invalid training options: {error}") from error
    return script, model, config


def check_names(values: dict[str, Any]) -> None:
    """Unknown option names are a ConfigError that suggests the field meant."""
    known = {f.name for kind in TRAIN_ARGUMENTS for f in fields(kind) if f.init}
    aliases = {
        alias.lstrip("-").replace("-", "_"): f.name
        for kind in TRAIN_ARGUMENTS
        for f in fields(kind)
        for alias in f.metadata.get("aliases", [])
    }
    unknown = sorted(set(values) - known)
    if unknown:
        hints = []
        for name in unknown:
            close = aliases.get(name) or next(iter(difflib.get_close_matches(name, known, 1)), None)
            hints.append(f"{name} (did you mean {close}?)" if close else name)
        raise ConfigError(
            f"unknown training option(s): {', '.join(hints)}; option names are the fields of "
            "ScriptArguments, ModelArguments and CATConfig (see cattune train --help)"
        )
