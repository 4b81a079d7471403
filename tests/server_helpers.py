"""Servers the tests start as subprocesses: free ports, setup scripts, start-and-wait, stop.

A server runs in its own session with its output in a log file, is ready when a URL answers 200,
and is stopped with its whole process group (SIGTERM, then SIGKILL after 20 s).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_setup_script(name: str, timeout: float) -> Path:
    """Run an idempotent ``scripts/NAME`` (it waits for a run in progress); returns the path on
    its last output line, relative to the repository root."""
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / name)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/{name} failed: {done.stderr[-2000:]}")
    return REPO_ROOT / done.stdout.strip().splitlines()[-1]


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL what is left after 20 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


@contextmanager
def serving(
    name: str,
    command: list[str],
    *,
    log: Path,
    ready_url: str,
    startup_seconds: float,
    poll_seconds: float,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command``, wait until ``ready_url`` answers 200, stop its process group after."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + startup_seconds
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(ready_url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start in {startup_seconds} s")
            time.sleep(poll_seconds)
        yield process
    finally:
        stop_process_group(process)
