"""The hand-off flow: release a dataset version and write the training job that pins it.

``job.json`` is a :class:`cattune.schemas.TrainingJob` (release directory, sha256 of its
``manifest.json``, training options by CLI name); ``cattune train --job job.json --out DIR`` runs
it, here as a subprocess when ``run=True``, or later on a GPU machine.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel

from cattune.flows.release import release_flow
from cattune.pipeline.release import MANIFEST
from cattune.schemas import TrainingJob, cattune_home, file_sha256

TAIL_LINES = 20


class Handoff(BaseModel):
    job_path: str
    release_dir: str
    manifest_sha256: str
    train_out: str | None = None
    train_returncode: int | None = None


def train_command(job_path: str | Path, out: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cattune.flows.cli",
        "train",
        "--job",
        str(job_path),
        "--out",
        str(out),
    ]


@flow(name="cattune-handoff")
def handoff_flow(
    dataset: str,
    version: int | str | None = None,
    training_config: dict[str, Any] | None = None,
    release_dir: str | None = None,
    job_path: str | None = None,
    store: str | None = None,
    run: bool = False,
    train_out: str | None = None,
) -> Handoff:
    """Release ``dataset@version``, write ``job.json``, and optionally run the training job.

    ``training_config`` holds ``cattune train`` options by field name (``cattune train --help``),
    e.g. ``{"mode": "cat", "model": "tiny", "num_train_epochs": 3}``. A failed training run fails
    the flow with the end of its output.
    """
    logger = get_run_logger()
    release = Path(release_flow(dataset, version, out_dir=release_dir, store=store))
    job = TrainingJob(
        release_dir=str(release.resolve()),
        manifest_sha256=file_sha256(release / MANIFEST),
        config=dict(training_config or {}),
    )
    path = Path(job_path) if job_path else cattune_home() / "jobs" / f"{release.name}.job.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(job.model_dump_json(indent=2) + "\n")
    logger.info("wrote training job %s for release %s", path, release)
    result = Handoff(
        job_path=str(path), release_dir=job.release_dir, manifest_sha256=job.manifest_sha256
    )
    if not run:
        return result
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    out = Path(train_out) if train_out else cattune_home() / "runs" / f"{release.name}-{stamp}"
    command = train_command(path, out)
    logger.info("running %s", " ".join(command))
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    result.train_out, result.train_returncode = str(out), finished.returncode
    if finished.returncode != 0:
        tail = "\n".join((finished.stderr or finished.stdout).splitlines()[-TAIL_LINES:])
        raise RuntimeError(f"training job {path} failed (exit {finished.returncode}):\n{tail}")
    logger.info("training finished: %s", out)
    return result
