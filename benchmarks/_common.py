"""Helpers shared by the benchmark scripts: realistic random CAT masks, timing, tables."""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from cattune.training.mask import Rect, relation_rectangles


def random_rects(batch: int, seq_len: int, relations: int = 6, seed: int = 0) -> list[list[Rect]]:
    """Rectangles of `relations` random relations per example, shaped like annotated prompts.

    Effects of 1-8 tokens in the last three quarters, each with 1-3 earlier causes of 1-6 tokens.
    """
    rng = random.Random(seed)
    out: list[list[Rect]] = []
    for _ in range(batch):
        rects: list[Rect] = []
        for _ in range(relations):
            p = rng.randrange(seq_len // 4, seq_len - 1)
            effect = (p, min(p + rng.randint(1, 8), seq_len))
            causes = []
            for _ in range(rng.randint(1, 3)):
                q = rng.randrange(0, p)
                causes.append((q, min(q + rng.randint(1, 6), p)))
            rects.extend(relation_rectangles(effect, causes))
        out.append(rects)
    return out


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    if torch.cuda.is_available():
        cpu = f"{torch.cuda.get_device_name()} (host: {cpu})"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
