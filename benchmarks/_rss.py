"""Resident memory of this process (Linux /proc), read now or sampled in a background thread.

Kept apart from _common.py so that memory benchmarks do not import torch just to read RSS.
"""

from __future__ import annotations

import threading
import time


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler(threading.Thread):
    """Samples (seconds since start, RSS MB) every ``every`` seconds until ``stop`` is set."""

    def __init__(self, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - start, rss_mb()))
            self.stop.wait(self.every)
