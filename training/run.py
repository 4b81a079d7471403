"""The train / eval entry points behind ``cattune train`` / ``cattune eval`` and job files.

Options have the CLI names with underscores; a :class:`cattune.schemas.TrainingJob`'s ``config``
uses the same names. ``train`` writes to ``out``: ``model/`` (an ordinary Hugging Face model dir;
LoRA adapters are merged), ``metrics.json``, ``log_history.json``, ``options.json``, ``plots/``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cattune.schemas import AnnotatedExample, ConfigError, InputError
from cattune.training.release_io import (
    MANIFEST,
    read_job,
    read_parquet,
    read_release,
    release_splits,
)

log = logging.getLogger(__name__)

TINY = "tiny"
TRAIN_SPLIT = "train"
TINY_LR = 3e-3
MODEL_LR = 2e-5


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(8, ge=1)
    max_length: int | None = Field(None, ge=2)
    attn_implementation: Literal["efficient", "eager"] = "efficient"
    progress: bool = True


class TrainOptions(_Options):
    """Everything ``cattune train`` accepts (and a job file's ``config``)."""

    release: str | None = None
    data: str | None = None
    split: str | None = Field(None, description="default: 'train' of a release, all of --data")
    model: str = TINY
    mode: Literal["cat", "baseline"] = "cat"
    alpha: float = Field(2.0, gt=0)
    loss_type: Literal["div", "div2", "nll", "hinge"] = "div"
    attn_weight: float = Field(1.0, ge=0)
    decay: float = Field(1.0, ge=0)
    epochs: float = Field(3.0, gt=0)
    max_steps: int = -1
    lr: float | None = Field(None, gt=0, description=f"default {TINY_LR} for tiny, else {MODEL_LR}")
    grad_accum: int = Field(1, ge=1)
    layers: list[int] | None = None
    lora_r: int | None = Field(None, ge=1)
    seed: int = 0
    logging_steps: int = Field(10, ge=1)
    eval_data: list[str] = Field(default_factory=list)
    eval_split: list[str] | None = None
    out: str = "cattune-run"


class EvalOptions(_Options):
    """Everything ``cattune eval`` accepts."""

    model: str
    data: list[str]
    split: list[str] | None = None
    max_new_tokens: int | None = Field(None, ge=1)
    out: str | None = None


def parse_options(model: type[BaseModel], values: dict[str, Any]) -> Any:
    """Validate options; mistakes become a ConfigError naming the option."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
            for e in error.errors()
        )
        raise ConfigError(f"invalid options: {problems}") from error


def options_from_job(job_path: str, overrides: dict[str, Any]) -> TrainOptions:
    """A job file's release and config, with options given explicitly on the CLI on top."""
    job = read_job(job_path)
    values = {**job.config, "release": job.release_dir}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return parse_options(TrainOptions, values)


def load_rows(path: str, splits: list[str] | None = None) -> list[AnnotatedExample]:
    """Rows of a release directory (some splits) or a Parquet file (filtered by meta.split)."""
    source = Path(path)
    if source.is_dir() and (source / MANIFEST).is_file():
        return read_release(source, splits)
    rows = [_with_split(row, source.stem) for row in read_parquet(source)]
    if splits is not None:
        rows = [r for r in rows if r.meta.split in splits]
        if not rows:
            raise InputError(f"no rows with meta.split in {splits}", path=path)
    return rows


def _with_split(row: AnnotatedExample, name: str) -> AnnotatedExample:
    """Rows without meta.split are reported under the name of the file they came from."""
    if row.meta.split is not None:
        return row
    return row.model_copy(update={"meta": row.meta.model_copy(update={"split": name})})


def _training_rows(options: TrainOptions) -> list[AnnotatedExample]:
    if (options.release is None) == (options.data is None):
        raise ConfigError("give exactly one of --release DIR, --data FILE.parquet or --job FILE")
    if options.release is not None:
        return read_release(options.release, [options.split or TRAIN_SPLIT])
    assert options.data is not None
    return load_rows(options.data, None if options.split is None else [options.split])


def _eval_rows(options: TrainOptions) -> list[AnnotatedExample]:
    if options.eval_data:
        rows: list[AnnotatedExample] = []
        for path in options.eval_data:
            rows.extend(load_rows(path, options.eval_split))
        return rows
    if options.release is not None:
        trained_on = options.split or TRAIN_SPLIT
        others = [s for s in release_splits(options.release) if s != trained_on]
        return read_release(options.release, others) if others else []
    return []


def train(options: TrainOptions) -> dict[str, Any]:
    """Fine-tune (CAT or baseline), save the model, evaluate, and write metrics and plots."""
    import torch
    from transformers import PrinterCallback, set_seed

    from cattune.training.config import CATConfig
    from cattune.training.data import CATCollator, encode_rows
    from cattune.training.plots import plot_training
    from cattune.training.tiny import build_tiny_model, load_model, load_tokenizer
    from cattune.training.trainer import CATTrainer

    _quiet_transformers(options.progress)
    rows = _training_rows(options)
    eval_rows = _eval_rows(options)
    out = Path(options.out)
    cpu_ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    args = CATConfig(
        output_dir=str(out / "checkpoints"),
        mode=options.mode,
        alpha=options.alpha,
        loss_type=options.loss_type,
        attn_weight=options.attn_weight,
        decay=options.decay,
        cat_layers=options.layers,
        attn_implementation=options.attn_implementation,
        max_length=options.max_length,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        learning_rate=options.lr or (TINY_LR if options.model == TINY else MODEL_LR),
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        logging_steps=options.logging_steps,
        seed=options.seed,
        data_seed=options.seed,
        save_strategy="no",
        report_to="none",
        disable_tqdm=not options.progress,
        # accelerate runs multi-process CPU training (gloo) only when told to use the CPU
        use_cpu=cpu_ddp,
        ddp_backend="gloo" if cpu_ddp else None,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    set_seed(options.seed)
    model_dir = Path(options.model)
    if options.model == TINY:
        model_dir = out / "base-model"
        with args.main_process_first(local=True, desc="build the tiny model"):
            if not (model_dir / "config.json").is_file():
                build_tiny_model(
                    [r.prompt + r.completion for r in rows], model_dir, seed=options.seed
                )
    tokenizer = load_tokenizer(model_dir)
    dataset = encode_rows(tokenizer, rows, options.max_length)
    if options.mode == "cat" and dataset.rows_with_relations == 0:
        raise ConfigError(
            "no training row has a causal relation that maps to tokens, so CAT has nothing to "
            "learn from; annotate the data (cattune annotate) or use --mode baseline"
        )
    model = load_model(model_dir)
    n_layers = model.config.num_hidden_layers
    if options.layers is not None and not all(0 <= i < n_layers for i in options.layers):
        raise ConfigError(f"--layers {options.layers}: the model has layers 0..{n_layers - 1}")
    if options.lora_r:
        model = _with_lora(model, options.lora_r)
    trainer = CATTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=CATCollator(tokenizer.pad_token_id),
    )
    if not options.progress:
        trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    if not trainer.is_world_process_zero():
        return {}
    final = trainer.model
    if options.lora_r:
        final = final.merge_and_unload()
    final.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    history = trainer.state.log_history
    metrics: dict[str, Any] = {
        "train": {
            **result.metrics,
            "rows": len(dataset),
            "rows_with_relations": dataset.rows_with_relations,
            "rows_truncated_away": dataset.truncated_away,
            "steps": trainer.state.global_step,
            **_first_last(history, ("lm_loss", "attn_loss", "causal_ratio")),
        },
        "mode": options.mode,
    }
    if eval_rows:
        from cattune.training.evaluate import evaluate_rows, write_results

        evaluated, predictions = evaluate_rows(
            final, tokenizer, eval_rows, batch_size=options.batch_size,
            max_length=options.max_length, implementation=options.attn_implementation,
            progress=options.progress,
        )  # fmt: skip
        metrics["eval"] = evaluated
        write_results(out / "eval", evaluated, predictions)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (out / "log_history.json").write_text(json.dumps(history, indent=2))
    (out / "options.json").write_text(options.model_dump_json(indent=2))
    plot_training(history, out / "plots", title=options.mode)
    return metrics


def _quiet_transformers(progress: bool) -> None:
    """Without progress bars, transformers' own (loading/saving weights) go too."""
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()


def _first_last(history: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    found: dict[str, float] = {}
    for key in keys:
        values = [h[key] for h in history if key in h]
        if values:
            found[f"first_{key}"], found[f"last_{key}"] = values[0], values[-1]
    return found


def _with_lora(model: Any, rank: int) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def evaluate_model(options: EvalOptions) -> dict[str, Any]:
    """Evaluate a saved model on one or more data sources; writes metrics.json + predictions."""
    from cattune.training.evaluate import evaluate_rows, write_results
    from cattune.training.tiny import load_model, load_tokenizer

    _quiet_transformers(options.progress)
    tokenizer = load_tokenizer(options.model)
    model = load_model(options.model)
    rows: list[AnnotatedExample] = []
    for path in options.data:
        rows.extend(load_rows(path, options.split))
    if not rows:
        raise InputError("no evaluation rows")
    metrics, predictions = evaluate_rows(
        model, tokenizer, rows, batch_size=options.batch_size,
        max_new_tokens=options.max_new_tokens, max_length=options.max_length,
        implementation=options.attn_implementation, progress=options.progress,
    )  # fmt: skip
    write_results(options.out or Path(options.model) / "eval", metrics, predictions)
    return metrics
