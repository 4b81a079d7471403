"""``cattune demo``: the whole product on embedded defaults, offline, on a CPU.

Generate the STG benchmark, annotate it with the PriorAnnotator through the Prefect annotate flow
into a versioned store, score the annotation against the generator's gold, release and hand off to
training, fine-tune a model in ``baseline`` and in ``cat`` mode (the embedded pretrained SmolLM2
with LoRA; ``--quick``: a tiny Llama trained from scratch), and compare IID / OOD accuracy and the
causal-attention ratio. Everything goes under one run directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cattune.annotators.quality import evaluate
from cattune.pipeline.stg import generate_stg
from cattune.pipeline.store import DatasetStore
from cattune.schemas import AnnotatedExample, CattuneError, to_table

DATASET = "stg-demo"
MODES: tuple[Literal["baseline", "cat"], ...] = ("baseline", "cat")
TEST_SPLITS = ["iid_test", "ood_test"]


class DemoSettings(BaseModel):
    """Data sizes and the training options both modes share (``cattune train`` option names)."""

    seed: int = 0
    n_train: int
    n_test: int
    training: dict[str, Any] = Field(default_factory=lambda: {"model": "tiny"})

    @property
    def model(self) -> str:
        return str(self.training.get("model", "tiny"))


# Chosen in benchmarks/stg_reproduction.py's search (docs/reproduction.md): batch 64 for ~1,000
# steps is where a tiny model starts to learn STG; the quick run only shows the attention shift.
TINY_TRAINING = {"model": "tiny", "num_train_epochs": 2, "per_device_train_batch_size": 64}
QUICK = DemoSettings(n_train=8_000, n_test=200, training=TINY_TRAINING)
# The pretrained run is sized to fit 10 minutes on the 2-core CPU machine: a LoRA step of SmolLM2
# at batch 16 takes ~8 s in fp32 there with two threads, ~13 s with the two modes side by side;
# lr 1e-3 is the CAT authors' default. 40 steps and 200 test rows took 15 minutes and learned no
# more than the majority answer either (docs/reproduction.md).
PRETRAINED_STEPS = 24
PRETRAINED_BATCH = 16
FULL = DemoSettings(
    n_train=PRETRAINED_STEPS * PRETRAINED_BATCH,
    n_test=100,
    training={
        "model": "smollm2-135m",
        "lora_r": 16,
        "learning_rate": 1e-3,
        "max_steps": PRETRAINED_STEPS,
        "per_device_train_batch_size": PRETRAINED_BATCH,
        "logging_steps": 5,
    },
)


class ModeResult(BaseModel):
    mode: str
    iid_accuracy: float
    ood_accuracy: float
    iid_choice_accuracy: float | None
    ood_choice_accuracy: float | None
    causal_ratio: float | None
    out_dir: str


class DemoResult(BaseModel):
    model: str
    run_dir: str
    dataset_version: int
    rows_annotated: int
    rows_quarantined: int
    annotation_f1: float
    release_dir: str
    job_path: str
    modes: list[ModeResult]
    plots: list[str]


def _step(console: Console, number: int, text: str) -> None:
    console.rule(f"[bold]{number}/6[/bold] {text}", align="left")


def run_demo(settings: DemoSettings, run_dir: Path, console: Console) -> DemoResult:
    from cattune.flows.annotate import annotate_flow
    from cattune.flows.handoff import handoff_flow
    from cattune.training.plots import plot_comparison

    run_dir.mkdir(parents=True, exist_ok=True)
    store = str(run_dir / "store")

    _step(console, 1, f"generate STG (seed {settings.seed})")
    splits = generate_stg("stg", settings.seed, n_train=settings.n_train, n_test=settings.n_test)
    gold = [row for rows in splits.values() for row in rows]
    source = run_dir / "source" / "stg.parquet"
    source.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(to_table(gold, AnnotatedExample), source)
    console.print(", ".join(f"{name}: {len(rows)} rows" for name, rows in splits.items()))

    _step(console, 2, "annotate with the PriorAnnotator through the Prefect flow")
    console.print("[dim]the first Prefect start of a machine takes ~30 s[/dim]")
    summary = annotate_flow(
        source=str(source),
        dataset=DATASET,
        annotator="prior",
        pack="key-value-records",
        store=store,
    )
    if summary.version is None:
        raise RuntimeError("the annotate flow committed no version")
    console.print(
        f"dataset {DATASET}@{summary.version}: {summary.rows_annotated} annotated, "
        f"{summary.rows_quarantined} quarantined"
    )

    _step(console, 3, "score the annotation against the generator's gold")
    annotated = DatasetStore(store).read(DATASET, summary.version)
    quality = evaluate(annotated, gold)
    console.print(
        f"pair-level exact P/R/F1 {quality.exact.precision:.3f} / {quality.exact.recall:.3f} / "
        f"{quality.exact.f1:.3f}, coverage {quality.coverage:.3f}"
    )

    _step(console, 4, "release and hand off to training")
    handoff = handoff_flow(
        dataset=DATASET,
        version=summary.version,
        training_config={"seed": settings.seed, **settings.training},
        release_dir=str(run_dir / "release"),
        job_path=str(run_dir / "job.json"),
        store=store,
    )
    console.print(f"release {handoff.release_dir}\njob {handoff.job_path}")

    _step(console, 5, f"fine-tune {settings.model} from the job, baseline and CAT side by side")
    if settings.model != "tiny":
        from cattune.training.models import resolve_model

        console.print("[dim]a GGUF model is converted once, then reused[/dim]")
        resolve_model(settings.model)
    metrics = train_from_job(Path(handoff.job_path), run_dir, console)
    results = [_mode_result(mode, metrics[mode], run_dir / f"train-{mode}") for mode in MODES]
    histories = {
        mode: json.loads((run_dir / f"train-{mode}" / "log_history.json").read_text())
        for mode in MODES
    }

    _step(console, 6, "compare")
    plots_dir = run_dir / "plots"
    plots = [
        plot_accuracy(results, plots_dir / "accuracy.png"),
        plot_comparison(histories, plots_dir / "attention.png"),
    ]
    result = DemoResult(
        model=settings.model,
        run_dir=str(run_dir),
        dataset_version=summary.version,
        rows_annotated=summary.rows_annotated,
        rows_quarantined=summary.rows_quarantined,
        annotation_f1=quality.exact.f1,
        release_dir=handoff.release_dir,
        job_path=handoff.job_path,
        modes=results,
        plots=[str(p) for p in plots],
    )
    (run_dir / "demo.json").write_text(result.model_dump_json(indent=2) + "\n")
    return result


_TQDM = re.compile(r"(generate: )?\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def train_from_job(job_path: Path, run_dir: Path, console: Console) -> dict[str, dict[str, Any]]:
    """Run ``cattune train --job`` once per mode, in parallel processes, as a training box would.

    Each process gets half the cores; progress is read from the processes' logs.
    """
    from cattune.flows.handoff import train_command

    threads = str(max(1, (os.cpu_count() or 2) // len(MODES)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for mode in MODES:
        out = run_dir / f"train-{mode}"
        out.mkdir(parents=True, exist_ok=True)
        log = out / "train.log"
        command = [*train_command(job_path, out), "--mode", mode, "--split", "train"]
        command += ["--eval_split", *TEST_SPLITS]
        with open(log, "wb") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        running[mode] = (process, log)
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        tasks = {mode: progress.add_task(f"{mode}: starting", total=None) for mode in MODES}
        while any(process.poll() is None for process, _ in running.values()):
            for mode, (_, log) in running.items():
                matches = _TQDM.findall(log.read_bytes()[-4000:].decode(errors="replace"))
                if matches:
                    phase, done, total = matches[-1]
                    progress.update(
                        tasks[mode],
                        description=f"{mode}: {'evaluating' if phase else 'training'}",
                        completed=int(done),
                        total=int(total),
                    )
            time.sleep(0.5)
    metrics = {}
    for mode, (process, log) in running.items():
        if process.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise CattuneError(
                f"{mode} training failed (exit {process.returncode}), see {log}:\n{tail}"
            )
        metrics[mode] = json.loads((log.parent / "metrics.json").read_text())
        console.print(f"{mode}: finished, {log.parent}")
    return metrics


def _mode_result(mode: str, metrics: dict[str, Any], out: Path) -> ModeResult:
    evaluated = metrics["eval"]
    return ModeResult(
        mode=mode,
        iid_accuracy=evaluated["iid"]["accuracy"],
        ood_accuracy=evaluated["ood"]["accuracy"],
        iid_choice_accuracy=evaluated["iid"]["choice_accuracy"],
        ood_choice_accuracy=evaluated["ood"]["choice_accuracy"],
        causal_ratio=evaluated["overall"]["causal_ratio"],
        out_dir=str(out),
    )


def plot_accuracy(results: list[ModeResult], path: Path) -> Path:
    """Grouped bars: IID and OOD accuracy of each mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    width = 0.8 / len(results)
    for index, result in enumerate(results):
        values = [result.iid_accuracy * 100, result.ood_accuracy * 100]
        bars = ax.bar([x + index * width for x in (0, 1)], values, width, label=result.mode)
        ax.bar_label(bars, fmt="%.1f")
    ax.set_xticks([x + width * (len(results) - 1) / 2 for x in (0, 1)], ["IID", "OOD"])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("STG: baseline vs CAT")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def results_table(result: DemoResult) -> Table:
    table = Table(
        title=f"cattune demo: STG, {result.model}, dataset version {result.dataset_version}"
    )
    table.add_column("mode")
    for column in ("IID greedy", "OOD greedy", "IID choice", "OOD choice", "causal ratio a1/a0"):
        table.add_column(column, justify="right")
    for mode in result.modes:
        ratio = "n/a" if mode.causal_ratio is None else f"{mode.causal_ratio:.2f}"
        cells = (
            mode.iid_accuracy,
            mode.ood_accuracy,
            mode.iid_choice_accuracy,
            mode.ood_choice_accuracy,
        )
        table.add_row(mode.mode, *("n/a" if c is None else f"{c:.1%}" for c in cells), ratio)
    return table
