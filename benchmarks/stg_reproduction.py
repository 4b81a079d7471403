"""The CAT paper's STG experiment on CPU: baseline vs CAT, IID vs OOD, tiny or pretrained model.

For each variant (stg, stg_h) x data source (the authors' files, or cattune's generator) x seed,
a model is fine-tuned twice on the same rows with the same seed and the same number of steps,
once with the LM loss only (baseline) and once with LM + Re-Attention loss (CAT), using the gold
relations (the authors' ``important`` field; the generator's gold). Every run goes through
``cattune.training.run.train`` (the code behind ``cattune train``) and is evaluated on the IID and
the OOD test split. Prints a Markdown table (mean +- std over seeds) and writes results.json.

    python benchmarks/stg_reproduction.py [--variants stg,stg_h] [--sources authors,generated]
        [--seeds 0,1,2] [--model tiny|smollm2-135m|DIR] [--out DIR] [--jobs 1]
        [-- cattune train flags, e.g. --lora_r 16 --lr 5e-4 --max_steps 125]

Flags after ``--`` are ``cattune train`` flags (the training dataclasses); defaults for the tiny
model: ``--epochs 2 --batch-size 64 --lr 3e-3``. ``--model tiny`` builds a small Llama of the
shape given by ``--layers --hidden --heads --vocab``. Every run is one process with ``--threads``
torch threads; ``--jobs`` runs that many in parallel.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REFERENCE = Path(os.environ.get("CATTUNE_REFERENCE", "/work/shared/data/cat-reference"))
AUTHOR_FILES = {
    "stg": (
        "STG/spurious_token_game_train3.jsonl",
        "STG/spurious_token_game_test3.jsonl",
        "STG/spurious_token_game_ood3_2.jsonl",
    ),
    "stg_h": (
        "STG_H/STG_H_train.jsonl",
        "STG_H/STG_H_iid_test.jsonl",
        "STG_H/STG_H_ood_test.jsonl",
    ),
}
SPLITS = ("train", "iid_test", "ood_test")
MODES = ("baseline", "cat")
VARIANTS = (*AUTHOR_FILES, "stg_shortcut")
"""``stg_shortcut`` is cattune's own variant (pipeline/stg.py): generated data only."""
SOURCES = ("authors", "generated")


TINY_TRAIN_ARGS = ("--epochs", "2", "--batch-size", "64", "--lr", "3e-3")


@dataclass(frozen=True)
class Settings:
    """Everything that decides a run besides variant, source, seed and mode."""

    model: str = "tiny"
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    vocab: int = 512
    n_train: int = 32000
    n_test: int = 400
    threads: int = 1
    train_args: tuple[str, ...] = ()
    """``cattune train`` flags (after the tiny model's defaults, so they override them)."""


@dataclass(frozen=True)
class Run:
    variant: str
    source: str
    seed: int
    mode: str
    settings: Settings


def load_splits(variant: str, source: str, seed: int, settings: Settings) -> dict[str, list]:
    """train / iid_test / ood_test rows with gold relations (the authors' or the generator's)."""
    if source == "generated":
        from cattune.pipeline.stg import generate_stg

        return generate_stg(variant, seed, settings.n_train, settings.n_test)  # type: ignore[arg-type]
    from cattune.pipeline.convert import convert_source

    splits: dict[str, list] = {}
    for split, name in zip(SPLITS, AUTHOR_FILES[variant], strict=True):
        rows = convert_source(REFERENCE / name, format="cat").records
        meta = {"split": split, "ood": split == "ood_test"}
        rows = [r.model_copy(update={"meta": r.meta.model_copy(update=meta)}) for r in rows]
        if split == "train":
            # The file is repeated up to n_train rows so that an "epoch" (and with it the CAT
            # weight's exp(-decay * epoch) schedule) spans as many steps as on generated data.
            splits[split] = [rows[i % len(rows)] for i in range(settings.n_train)]
        else:
            splits[split] = rows[: settings.n_test]
    return splits


def majority_share(rows: list) -> float:
    """Accuracy of always answering the most common completion (the floor to beat)."""
    counts = Counter(r.completion for r in rows)
    return max(counts.values()) / len(rows)


def run_one(run: Run, workdir: str | Path) -> dict[str, Any]:
    """Fine-tune one model (baseline or CAT) through ``train()`` and return its figures."""
    import pyarrow.parquet as pq
    import torch
    from transformers.utils import logging as hf_logging

    from cattune.schemas import AnnotatedExample, to_table
    from cattune.training.config import parse_train_args
    from cattune.training.run import train
    from cattune.training.tiny import build_tiny_model

    s = run.settings
    torch.set_num_threads(s.threads)
    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    splits = load_splits(run.variant, run.source, run.seed, s)
    root = Path(workdir) / f"{run.variant}-{run.source}-{run.seed}-{run.mode}"
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        pq.write_table(to_table(rows, AnnotatedExample), root / f"{split}.parquet")
    model = s.model
    if model == "tiny":
        model = str(root / "base-model")
        build_tiny_model(
            [r.prompt + r.completion for r in splits["train"]], model, layers=s.layers,
            hidden=s.hidden, heads=s.heads, vocab_size=s.vocab, seed=run.seed,
        )  # fmt: skip
    defaults = TINY_TRAIN_ARGS if s.model == "tiny" else ()
    script, model_args, config = parse_train_args(
        [*defaults, *s.train_args, "--model", model, "--mode", run.mode, "--seed", str(run.seed),
         "--data", str(root / "train.parquet"), "--out", str(root / "run"), "--quiet",
         "--eval_data", str(root / "iid_test.parquet"), str(root / "ood_test.parquet")]
    )  # fmt: skip
    metrics = train(script, model_args, config)
    evaluated = metrics["eval"]["splits"]
    return {
        **{k: v for k, v in asdict(run).items() if k != "settings"},
        "iid": evaluated["iid_test"]["accuracy"],
        "ood": evaluated["ood_test"]["accuracy"],
        "iid_majority": majority_share(splits["iid_test"]),
        "ood_majority": majority_share(splits["ood_test"]),
        "train_ratio": metrics["train"].get("last_causal_ratio"),
        "iid_ratio": evaluated["iid_test"]["causal_ratio"],
        "ood_ratio": evaluated["ood_test"]["causal_ratio"],
        "last_lm_loss": metrics["train"].get("last_lm_loss"),
        "steps": metrics["train"]["steps"],
        "train_seconds": round(metrics["train"]["train_runtime"], 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _run_in_worker(run: Run, workdir: str) -> dict[str, Any]:
    return run_one(run, workdir)


def run_all(runs: list[Run], jobs: int, workdir: str | Path, log=print) -> list[dict[str, Any]]:
    """Run every run, ``jobs`` processes at a time; logs one line per finished run."""
    results: list[dict[str, Any]] = []
    if jobs <= 1:
        for run in runs:
            results.append(run_one(run, workdir))
            log(_line(results[-1]))
        return results
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_run_in_worker, run, str(workdir)) for run in runs]
        for future in futures:
            results.append(future.result())
            log(_line(results[-1]))
    return results


def _line(r: dict[str, Any]) -> str:
    ratio = "-" if r["train_ratio"] is None else f"{r['train_ratio']:.2f}"
    return (
        f"{r['variant']}/{r['source']}/seed {r['seed']}/{r['mode']}: IID {r['iid']:.3f} "
        f"OOD {r['ood']:.3f} ratio {ratio} ({r['steps']} steps, {r['seconds']} s)"
    )


def _mean_std(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant x source: mean/std of IID, OOD, ratio per mode and the paired OOD difference."""
    groups: dict[tuple[str, str], dict[str, dict[int, dict[str, Any]]]] = {}
    for r in results:
        groups.setdefault((r["variant"], r["source"]), {}).setdefault(r["mode"], {})[r["seed"]] = r
    summary = []
    for (variant, source), by_mode in groups.items():
        seeds = sorted(set(by_mode.get("baseline", {})) & set(by_mode.get("cat", {})))
        if not seeds:
            continue
        row: dict[str, Any] = {"variant": variant, "source": source, "seeds": seeds}
        for key in ("iid", "ood"):
            shares = [by_mode["baseline"][s].get(f"{key}_majority") for s in seeds]
            row[f"majority_{key}"] = None if None in shares else statistics.fmean(shares)
        for mode in MODES:
            runs = [by_mode[mode][s] for s in seeds]
            for key in ("iid", "ood"):
                values = [r[key] for r in runs]
                row[f"{mode}_{key}"] = statistics.fmean(values)
                row[f"{mode}_{key}_text"] = _mean_std(values)
            ratios = [r["train_ratio"] for r in runs if r["train_ratio"] is not None]
            row[f"{mode}_ratio"] = statistics.fmean(ratios) if ratios else None
        diffs = [by_mode["cat"][s]["ood"] - by_mode["baseline"][s]["ood"] for s in seeds]
        row["ood_diff"] = statistics.fmean(diffs)
        row["ood_diff_text"] = _mean_std(diffs)
        row["cat_wins"] = sum(d > 0 for d in diffs)
        summary.append(row)
    return summary


def markdown(summary: list[dict[str, Any]]) -> str:
    header = [
        "variant", "data", "seeds", "baseline IID", "CAT IID", "baseline OOD", "CAT OOD",
        "OOD diff (CAT − base)", "CAT better", "ratio a1/a0 base → CAT", "majority IID / OOD",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in summary:
        ratio = "-"
        if r["baseline_ratio"] is not None and r["cat_ratio"] is not None:
            ratio = f"{r['baseline_ratio']:.2f} → {r['cat_ratio']:.2f}"
        cells = [
            r["variant"], r["source"], str(len(r["seeds"])),
            r["baseline_iid_text"], r["cat_iid_text"], r["baseline_ood_text"], r["cat_ood_text"],
            r["ood_diff_text"], f"{r['cat_wins']}/{len(r['seeds'])}", ratio, _majority_text(r),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _majority_text(r: dict[str, Any]) -> str:
    if r["majority_iid"] is None or r["majority_ood"] is None:
        return "-"
    return f"{100 * r['majority_iid']:.1f} / {100 * r['majority_ood']:.1f}"


def _csv(kind: type, text: str) -> list:
    return [kind(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's own flags; everything after ``--`` is kept as ``cattune train`` flags."""
    argv = sys.argv[1:] if argv is None else list(argv)
    train_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, train_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=lambda t: _csv(str, t), default=["stg"])
    parser.add_argument("--sources", type=lambda t: _csv(str, t), default=list(SOURCES))
    parser.add_argument("--seeds", type=lambda t: _csv(int, t), default=[0, 1, 2])
    parser.add_argument("--modes", type=lambda t: _csv(str, t), default=list(MODES))
    parser.add_argument("--out", default="stg-reproduction")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    defaults = Settings()
    for f in fields(Settings):
        if f.name != "train_args":
            flag = "--" + f.name.replace("_", "-")
            parser.add_argument(flag, type=type(getattr(defaults, f.name)), default=None)
    args = parser.parse_args(argv)
    args.train_args = tuple(train_args)
    for name in args.variants:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; use {','.join(VARIANTS)}")
    for name in args.sources:
        if name not in SOURCES:
            parser.error(f"unknown source {name!r}; use {','.join(SOURCES)}")
    if "authors" in args.sources and set(args.variants) - set(AUTHOR_FILES):
        parser.error("the authors published stg and stg_h only; use --sources generated")
    return args


def settings_from(args: argparse.Namespace, base: Settings | None = None) -> Settings:
    given = {
        f.name: getattr(args, f.name)
        for f in fields(Settings)
        if getattr(args, f.name, None) is not None
    }
    return replace(base or Settings(), **given)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [
        Run(variant, source, seed, mode, settings)
        for variant in args.variants
        for source in args.sources
        for seed in args.seeds
        for mode in args.modes
    ]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stg-repro-") as workdir:
        results = run_all(runs, args.jobs, workdir, log=lambda t: print(t, flush=True))
    elapsed = time.perf_counter() - started
    summary = summarise(results)
    table = markdown(summary)
    print()
    print(table)
    print(f"\n{len(runs)} runs in {elapsed / 60:.1f} min with --jobs {args.jobs}")
    payload = {
        "settings": asdict(settings),
        "argv": sys.argv[1:] if argv is None else argv,
        "seconds": round(elapsed, 1),
        "jobs": args.jobs,
        "summary": summary,
        "runs": results,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    (out / "table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
