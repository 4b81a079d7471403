"""PNG plots of a training run's log history (and of several runs side by side)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

History = Sequence[Mapping[str, Any]]


def series(history: History, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged quantity."""
    points = [(int(h["step"]), float(h[key])) for h in history if key in h and "step" in h]
    return [s for s, _ in points], [v for _, v in points]


def plot_training(history: History, out_dir: str | Path, title: str = "") -> list[Path]:
    """loss.png (LM and attention loss) and attention.png (a1, a0 and a1/a0) over steps."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "lm_loss", "LM loss"), (axes[1], "attn_loss", "L_attn")):
        ax.plot(*series(history, key), marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} losses".strip())
    fig.tight_layout()
    written.append(_save(fig, root / "loss.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot(*series(history, "a1"), marker=".", label="a1 (causal)")
    axes[0].plot(*series(history, "a0"), marker=".", label="a0 (non-causal)")
    axes[0].set_ylabel("mean attention per column")
    axes[0].legend()
    axes[1].plot(*series(history, "causal_ratio"), marker=".", color="C2")
    axes[1].set_ylabel("a1 / a0")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} causal vs non-causal attention".strip())
    fig.tight_layout()
    written.append(_save(fig, root / "attention.png"))
    return written


def plot_comparison(histories: Mapping[str, History], out_path: str | Path) -> Path:
    """LM loss and a1/a0 of several runs (e.g. cat vs baseline) on shared axes."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, history in histories.items():
        axes[0].plot(*series(history, "lm_loss"), marker=".", label=name)
        axes[1].plot(*series(history, "causal_ratio"), marker=".", label=name)
    axes[0].set_ylabel("LM loss")
    axes[1].set_ylabel("a1 / a0")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, Path(out_path))


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
