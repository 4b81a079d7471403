"""Real Prefect processes for the scheduling tests.

A ``prefect server start`` on 127.0.0.1 (free port, its own ``PREFECT_HOME`` and database), the
processes that run its deployments (``cattune serve``, ``prefect worker start``), and polling of
the server's REST API. Each process starts in a new session; ``Process.stop`` ends it and every
descendant (flow-run subprocesses start their own process groups, so a group kill is not enough),
and fixtures call it in ``finally`` so nothing outlives a test, a failing one included.

These processes never see the session-wide ``prefect_test_harness``: their environment is built
here from scratch for the Prefect keys.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
from server_helpers import free_port

BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT = 240.0  # cold start ~26-33 s on an idle 2-core machine; far more under load
STOP_GRACE = 20.0
MARKER = "CATTUNE_TEST_PROCESS"  # in the environment of every process a test starts

T = TypeVar("T")


def prefect_env(home: Path, api_url: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without its ``PREFECT_*`` keys, plus the given Prefect home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env | extra


class Process:
    """A command in its own session with its output in a log file."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], log: Path, cwd: Path | None = None
    ) -> None:
        self.argv = list(argv)
        self.log = log
        self.marker = uuid.uuid4().hex
        self.graceful: bool | None = None
        self.started = time.monotonic()
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                self.argv,
                env=env | {MARKER: self.marker},
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self, tail: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-tail:]

    def check_running(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise AssertionError(
                f"{' '.join(self.argv)} exited with status {code}; its output:\n{self.output()}"
            )

    def stop(self, grace: float = STOP_GRACE) -> list[int]:
        """Ctrl-C to the process, then SIGTERM and SIGKILL to whatever it started that is left.

        Descendants are found by a marker in their environment, so a flow-run subprocess in its
        own session, or one re-parented after its parent died, is found too. Returns the pids
        still alive at the end (an empty list when everything is gone).
        """
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.graceful = self.popen.poll() is not None
        for send in (psutil.Process.terminate, psutil.Process.kill):
            left = self.descendants()
            if not left:
                break
            self.graceful = False
            for process in left:
                try:
                    send(process)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(left, timeout=grace)
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        return [p.pid for p in self.descendants()]

    def descendants(self) -> list[psutil.Process]:
        """Live processes (this one included) whose environment carries this process's marker."""
        found = []
        for process in psutil.process_iter():
            try:
                if (
                    process.environ().get(MARKER) == self.marker
                    and process.status() != psutil.STATUS_ZOMBIE
                ):
                    found.append(process)
            except psutil.Error:
                continue
        return found


class PrefectServer:
    """``prefect server start`` on a free port of 127.0.0.1 with ``home`` as its PREFECT_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.ui_url = f"http://127.0.0.1:{self.port}"
        argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
        # The UI's pages call the API at PREFECT_UI_API_URL, which does not follow --port.
        env = prefect_env(home, PREFECT_UI_API_URL=self.api_url)
        self.process = Process([*argv, "--port", str(self.port)], env, home / "server.log", home)
        self.client = httpx.Client(base_url=self.api_url, timeout=30)

    def wait_healthy(self, timeout: float = SERVER_START_TIMEOUT) -> float:
        """Seconds from start until ``/api/health`` answered."""

        def healthy() -> bool:
            try:
                return self.client.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout, "the Prefect server to answer /api/health", [self.process])
        return time.monotonic() - self.process.started

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """The environment of a client process of this server (its own PREFECT_HOME)."""
        return prefect_env(home, self.api_url, **extra)

    def flow_runs(self, deployment: str) -> list[dict[str, Any]]:
        """Flow runs of the deployment named ``deployment`` (any flow), oldest first."""
        body = {
            "deployments": {"name": {"any_": [deployment]}},
            "sort": "EXPECTED_START_TIME_ASC",
        }
        response = self.client.post("/flow_runs/filter", json=body)
        response.raise_for_status()
        return list(response.json())

    def run_in_state(
        self, deployment: str, state_type: str, processes: Sequence[Process], timeout: float
    ) -> dict[str, Any]:
        """The first flow run of ``deployment`` that reaches ``state_type`` (e.g. COMPLETED)."""

        def found() -> dict[str, Any] | None:
            runs = [r for r in self.flow_runs(deployment) if r["state_type"] == state_type]
            return runs[0] if runs else None

        watched = [*processes, self.process]
        return wait_for(found, timeout, f"a {state_type} run of {deployment}", watched)

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        response = self.client.get(f"/flow_runs/{flow_run_id}")
        response.raise_for_status()
        return dict(response.json())

    def artifacts(self, flow_run_id: str) -> list[dict[str, Any]]:
        body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        response = self.client.post("/artifacts/filter", json=body)
        response.raise_for_status()
        return list(response.json())

    def stop(self) -> list[int]:
        self.client.close()
        return self.process.stop()


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    processes: Sequence[Process] = (),
    every: float = 1.0,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail early if a process died."""
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            process.check_running()
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.log.name}:\n{p.output()}" for p in processes)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(every)
