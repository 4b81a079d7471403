"""The train / eval entry points behind ``cattune train`` / ``cattune eval`` and job files.

``train`` takes the three dataclasses of :mod:`cattune.training.config` and writes to
``output_dir``: ``model/`` (an ordinary Hugging Face model dir; LoRA adapters are merged),
``metrics.json``, ``log_history.json``, ``options.json``, ``plots/``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cattune.schemas import AnnotatedExample, ConfigError, InputError
from cattune.training.config import (
    FULL_LR,
    LORA_LR,
    TINY_LR,
    CATConfig,
    EvalArguments,
    ModelArguments,
    ScriptArguments,
    parse_train_args,
)
from cattune.training.models import TINY
from cattune.training.release_io import (
    MANIFEST,
    read_job,
    read_parquet,
    read_release,
    release_splits,
)

log = logging.getLogger(__name__)

TRAIN_SPLIT = "train"


def train_args_from_job(
    job_path: str, argv: list[str]
) -> tuple[ScriptArguments, ModelArguments, CATConfig]:
    """A job file's release and config, with flags given explicitly on the command line on top."""
    job = read_job(job_path)
    return parse_train_args(argv, {**job.config, "release": job.release_dir})


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


def _training_rows(script: ScriptArguments) -> list[AnnotatedExample]:
    if (script.release is None) == (script.data is None):
        raise ConfigError("give exactly one of --release DIR, --data FILE.parquet or --job FILE")
    if script.release is not None:
        return read_release(script.release, [script.split or TRAIN_SPLIT])
    assert script.data is not None
    return load_rows(script.data, None if script.split is None else [script.split])


def _eval_rows(script: ScriptArguments) -> list[AnnotatedExample]:
    if script.eval_data:
        rows: list[AnnotatedExample] = []
        for path in script.eval_data:
            rows.extend(load_rows(path, script.eval_split))
        return rows
    if script.release is not None:
        trained_on = script.split or TRAIN_SPLIT
        others = [s for s in release_splits(script.release) if s != trained_on]
        if script.eval_split is not None:
            others = [s for s in others if s in script.eval_split]
        return read_release(script.release, others) if others else []
    return []


def default_learning_rate(model_args: ModelArguments) -> float:
    """What suits each kind of model when ``learning_rate`` is not given."""
    if model_args.model == TINY:
        return TINY_LR
    return LORA_LR if model_args.lora_r else FULL_LR


def train(script: ScriptArguments, model_args: ModelArguments, config: CATConfig) -> dict[str, Any]:
    """Fine-tune (CAT or baseline), save the model, evaluate, and write metrics and plots."""
    from transformers import set_seed

    from cattune.training.data import CATCollator, encode_rows
    from cattune.training.models import load_model, load_tokenizer, resolve_model
    from cattune.training.plots import plot_training
    from cattune.training.tiny import build_tiny_model
    from cattune.training.trainer import CATTrainer

    _quiet_transformers(not config.disable_tqdm)
    rows = _training_rows(script)
    eval_rows = _eval_rows(script)
    out = Path(config.output_dir)
    if config.learning_rate is None:
        config.learning_rate = default_learning_rate(model_args)
        log.info("learning rate %g (the default for this model)", config.learning_rate)
    set_seed(config.seed)
    if model_args.model == TINY:
        model_dir = str(out / "base-model")
        with config.main_process_first(local=True, desc="build the tiny model"):
            if not (out / "base-model" / "config.json").is_file():
                texts = [r.prompt + r.completion for r in rows]
                build_tiny_model(texts, model_dir, seed=config.seed)
    else:
        with config.main_process_first(local=True, desc="resolve the model"):
            model_dir = resolve_model(model_args.model)
    tokenizer = load_tokenizer(model_dir)
    dataset = encode_rows(tokenizer, rows, config.max_length)
    if config.mode == "cat" and dataset.rows_with_relations == 0:
        raise ConfigError(
            "no training row has a causal relation that maps to tokens, so CAT has nothing to "
            "learn from; annotate the data (cattune annotate) or use --mode baseline"
        )
    model = load_model(model_dir, dtype=model_args.dtype)
    n_layers = model.config.num_hidden_layers
    if config.cat_layers is not None and not all(0 <= i < n_layers for i in config.cat_layers):
        raise ConfigError(f"--layers {config.cat_layers}: the model has layers 0..{n_layers - 1}")
    if model_args.lora_r:
        model = _with_lora(model, model_args, bool(config.activation_checkpointing))
    trainer = CATTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        data_collator=CATCollator(tokenizer.pad_token_id),
    )
    result = trainer.train()
    if not trainer.is_world_process_zero():
        return {}
    final = trainer.model
    if model_args.lora_r:
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
            "learning_rate": config.learning_rate,
            "bf16": config.bf16,
            **_first_last(history, ("lm_loss", "attn_loss", "causal_ratio")),
        },
        "mode": config.mode,
    }
    if eval_rows:
        from cattune.training.evaluate import evaluate_rows, write_results

        evaluated, predictions = evaluate_rows(
            final, tokenizer, eval_rows, batch_size=config.per_device_train_batch_size,
            max_length=config.max_length, implementation=config.attn_implementation,
            progress=not config.disable_tqdm, max_choices=script.max_choices,
            bf16=bool(config.bf16),
        )  # fmt: skip
        metrics["eval"] = evaluated
        write_results(out / "eval", evaluated, predictions)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (out / "log_history.json").write_text(json.dumps(history, indent=2))
    options = {
        "script": asdict(script),
        "model": asdict(model_args),
        "config": json.loads(config.to_json_string()),
    }
    (out / "options.json").write_text(json.dumps(options, indent=2, sort_keys=True))
    plot_training(history, out / "plots", title=config.mode)
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


def _with_lora(model: Any, model_args: ModelArguments, checkpointing: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    if checkpointing:
        # Checkpointed blocks need an input that requires grad when the base weights are frozen.
        model.enable_input_require_grads()
    rank = model_args.lora_r
    assert rank is not None
    config = LoraConfig(
        r=rank,
        lora_alpha=model_args.lora_alpha or 2 * rank,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ConfigError(f"LoRA: {error} (see --lora_target_modules)") from error


def evaluate_model(options: EvalArguments) -> dict[str, Any]:
    """Evaluate a saved model on one or more data sources; writes metrics.json + predictions."""
    from cattune.training.evaluate import evaluate_rows, write_results
    from cattune.training.models import load_model, load_tokenizer, resolve_model

    _quiet_transformers(not options.quiet)
    model_dir = resolve_model(options.model)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    rows: list[AnnotatedExample] = []
    for path in options.data:
        rows.extend(load_rows(path, options.split))
    if not rows:
        raise InputError("no evaluation rows")
    metrics, predictions = evaluate_rows(
        model, tokenizer, rows, batch_size=options.batch_size,
        max_new_tokens=options.max_new_tokens, max_length=options.max_length,
        implementation=options.attn_implementation, progress=not options.quiet,
        max_choices=options.max_choices, bf16=bool(options.bf16),
    )  # fmt: skip
    write_results(options.out or Path(model_dir) / "eval", metrics, predictions)
    return metrics
