"""Schedules firing on a real Prefect server: `cattune serve`, and a process work pool + worker.

One `prefect server start` (own PREFECT_HOME, free port on 127.0.0.1) serves the whole module.
Each test writes a deployments file with a short interval schedule, starts the process that runs
it, waits for a flow run to complete on the server, and checks the dataset version that run
committed. Every process is stopped, with its descendants, in a `finally`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from schedule_helpers import BIN, PrefectServer, Process, free_port, wait_for

from cattune.flows.cli import main
from cattune.flows.serve import EXAMPLE_CONFIG, build_deployments, load_config
from cattune.pipeline.store import DatasetStore

log = logging.getLogger(__name__)

INTERVAL = 10  # seconds between scheduled runs
RUN_TIMEOUT = 240.0  # first run of a fresh deployment: ~20-60 s here, more on a loaded machine
CLI_TIMEOUT = 180


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server"))
    try:
        log.info("prefect server healthy after %.1f s", server.wait_healthy())
        yield server
    finally:
        left = server.stop()
        how = "on Ctrl-C" if server.process.graceful else "by force"
        log.info("prefect server stopped %s", how)
        assert not left, f"prefect server left processes behind: {left}"


@pytest.fixture()
def start(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start a process in its own session; every one is stopped (with descendants) at the end."""
    started: list[Process] = []

    def _start(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Process:
        process = Process(argv, env, tmp_path / f"{Path(argv[0]).name}-{len(started)}.log", cwd)
        started.append(process)
        return process

    yield _start
    left = {" ".join(p.argv): p.stop() for p in started}
    for process in started:
        how = "on Ctrl-C" if process.graceful else "by force"
        log.info("%s stopped %s", " ".join(process.argv[1:3]), how)
    assert not any(left.values()), f"processes left behind: {left}"


def cases_file(path: Path) -> Path:
    """CAT-format rows with their relations (``given`` annotator), plus one malformed line."""
    lines = []
    for i in range(12):
        target = "High Risk" if i % 3 else "Low Risk"
        prompt = f"Case {i}. Smoking: {i % 10}, Weight: {i % 4}. Answer: "
        important = [{target: [f"Smoking: {i % 10}"]}]
        lines.append(json.dumps({"input": prompt, "target": target, "important": important}))
    lines.append('{"input": "a row cut short')
    path.write_text("\n".join(lines) + "\n")
    return path


def write_deployments(path: Path, *specs: dict) -> Path:
    path.write_text(yaml.safe_dump({"deployments": list(specs)}, sort_keys=False))
    return path


def annotate_spec(name: str, source: str, store: Path, dataset: str) -> dict:
    return {
        "name": name,
        "flow": "annotate",
        "interval": INTERVAL,
        "parameters": {
            "source": source,
            "dataset": dataset,
            "annotator": "given",
            "format": "cat",
            "store": str(store),
        },
    }


def first_version_run(
    server: PrefectServer, store: Path, dataset: str, deployment: str, processes: list[Process]
) -> dict:
    """The scheduled run that committed version 0 of ``dataset``, once it has completed.

    Runs fire every few seconds and may overlap, so the first run to complete need not be the
    one that committed: follow the flow-run id in version 0's Delta commit metadata instead.
    """
    server.run_in_state(deployment, "COMPLETED", processes, RUN_TIMEOUT)
    first = DatasetStore(store).history(dataset)[0]
    assert first.version == 0 and first.lineage is not None
    run_id = first.lineage.flow_run_id
    runs = {r["id"]: r for r in server.flow_runs(deployment)}
    assert run_id in runs, f"version 0 names {run_id}, not a run of {deployment}"

    def completed() -> dict | None:
        run = server.flow_run(run_id)
        return run if run["state_type"] == "COMPLETED" else None

    return wait_for(completed, RUN_TIMEOUT, f"flow run {run_id} to complete", processes)


@pytest.mark.slow
def test_serve_fires_schedules_and_reports_failures(
    prefect_server: PrefectServer, start: Callable[..., Process], tmp_path: Path
) -> None:
    cases_file(tmp_path / "cases.jsonl")
    store = tmp_path / "store"
    config = write_deployments(
        tmp_path / "deployments.yaml",
        annotate_spec("serve-annotate", "cases.jsonl", store, "scheduled"),
        annotate_spec("serve-missing", "missing.jsonl", store, "never"),
    )
    env = prefect_server.env(tmp_path / "home")
    serve_argv = [str(BIN / "cattune"), "serve", "--config", str(config), "--limit", "2"]
    serve = start(serve_argv, env, cwd=tmp_path)

    run = first_version_run(prefect_server, store, "scheduled", "serve-annotate", [serve])
    log.info("serve: version 0 committed by a run completed %.1f s after start", _elapsed(serve))
    assert len(DatasetStore(store).read("scheduled")) == 12
    [artifact] = prefect_server.artifacts(run["id"])
    assert artifact["key"] == "annotate-scheduled" and artifact["type"] == "markdown"
    assert "| 13 | 1 | 0 | 0 | 12 | 1 |" in artifact["data"]  # read, malformed, ..., quarantined
    assert "## Quarantine reasons" in artifact["data"]
    assert "- **1 row**: malformed source row\n" in artifact["data"]  # reasons by kind

    failed = prefect_server.run_in_state("serve-missing", "FAILED", [serve], RUN_TIMEOUT)
    message = failed["state"]["message"]
    log.info("failed run's state message: %s", message)
    assert "InputError: missing.jsonl: no such file or directory" in message, message
    assert "\n" not in message, message
    assert not DatasetStore(store).exists("never")


@pytest.mark.slow
def test_work_pool_worker_runs_scheduled_deployment(
    prefect_server: PrefectServer, start: Callable[..., Process], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    cases_file(project / "cases.jsonl")
    store = tmp_path / "store"
    config = write_deployments(
        project / "deployments.yaml", annotate_spec("pool-annotate", "cases.jsonl", store, "pooled")
    )
    env = prefect_server.env(tmp_path / "home")

    def cli(*argv: str, cwd: Path = project) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT
        )

    cattune = str(BIN / "cattune")
    missing = cli(cattune, "deploy", "--config", str(config), "--pool", "no-such-pool")
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "prefect work-pool create no-such-pool --type process" in missing.stderr

    created = cli(str(BIN / "prefect"), "work-pool", "create", "cattune-test", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = cli(cattune, "deploy", "--config", "deployments.yaml", "--pool", "cattune-test")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "1 deployment on work pool 'cattune-test'" in deployed.stdout

    # The worker starts elsewhere: the relative source path resolves in the deployment's
    # working directory (where `cattune deploy` ran), not in the worker's.
    worker_argv = [str(BIN / "prefect"), "worker", "start", "--pool", "cattune-test"]
    worker = start([*worker_argv, "--limit", "1"], env, cwd=tmp_path)
    run = first_version_run(prefect_server, store, "pooled", "pool-annotate", [worker])
    log.info("worker: version 0 committed by a run completed %.1f s after start", _elapsed(worker))
    assert len(DatasetStore(store).read("pooled")) == 12
    assert "| 13 | 1 | 0 | 0 | 12 | 1 |" in prefect_server.artifacts(run["id"])[0]["data"]


def test_pool_deployments_reference_the_installed_module(tmp_path: Path) -> None:
    config = load_config(EXAMPLE_CONFIG)
    served = {d.name: d for d in build_deployments(config)}
    pooled = {d.name: d for d in build_deployments(config, work_pool="p", working_dir=tmp_path)}
    assert served["weekly-release-stg"].entrypoint.endswith("release.py:release_flow")
    assert served["weekly-release-stg"].work_pool_name is None
    annotate = pooled["nightly-annotate-stg"]
    assert annotate.entrypoint == "cattune.flows.annotate.annotate_flow"
    assert pooled["weekly-handoff-stg"].entrypoint == "cattune.flows.handoff.handoff_flow"
    assert annotate.work_pool_name == "p"
    assert annotate.job_variables == {"working_dir": str(tmp_path)}
    assert annotate.schedules[0].schedule.cron == "0 2 * * *"


def test_deploy_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    argv = ["deploy", "--config", str(EXAMPLE_CONFIG), "--pool", "p"]
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(argv) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err
    nobody = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings(updates={PREFECT_API_URL: nobody}):
        assert main(argv) == 2
    assert f"cannot reach the Prefect server at {nobody}" in capsys.readouterr().err
    assert main([*argv, "--working-dir", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--virtual-time-budget=15000",
]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_artifact_renders_in_the_prefect_ui(prefect_server: PrefectServer, tmp_path: Path) -> None:
    """The annotate flow's Markdown artifact, as the server's UI renders it in a real browser."""
    from cattune.flows.annotate import AnnotateSummary, summary_markdown
    from cattune.schemas import AnnotatedExample, Annotation, Example, Relation, Span

    prompt = "Tom has 5 apples and buys 3 more. How many now? "
    example = Example.create(prompt, "8")
    cause = Span(start=prompt.index("5 apples"), end=prompt.index("5 apples") + 8)
    row = AnnotatedExample(
        **example.model_dump(),
        relations=[Relation(effect=Span(start=len(prompt), end=len(prompt) + 1), causes=[cause])],
        annotation=Annotation(annotator="given", annotator_version="1"),
    )
    reason = "given relations do not align with the text (cause '7 pears' does not occur) " * 3
    summary = AnnotateSummary(
        dataset="word-problems",
        version=4,
        committed=True,
        source="/data/word-problems.jsonl",
        source_sha256="0" * 64,
        annotator="given",
        config_hash="abc",
        rows_read=3,
        rows_malformed=1,
        rows_annotated=1,
        rows_quarantined=2,
        quarantine_reasons={"word-problems.jsonl:2: invalid JSON": 1, reason: 1},
    )
    body = {"key": "annotate-word-problems", "type": "markdown"}
    body["data"] = summary_markdown(summary, [row])
    created = prefect_server.client.post("/artifacts/", json=body)
    created.raise_for_status()
    url = f"{prefect_server.ui_url}/artifacts/artifact/{created.json()['id']}"

    def rendered() -> str | None:
        profile = tmp_path / f"chromium-{time.monotonic_ns()}"
        argv = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url]
        dom = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT).stdout
        return dom if "Annotation of" in dom else None  # the page may need another load

    dom = wait_for(rendered, 120, f"the UI to render {url}", every=0)
    strong = 'markdown-renderer__text--strong">'
    assert "Annotation of" in dom and ">word-problems</" in dom
    assert "markdown-renderer__table" in dom and ">rows read<" in dom
    assert ">Quarantine reasons</h2>" in dom
    assert f"{strong}1 row</div>: word-problems.jsonl:2: invalid JSON" in dom
    assert "(cause '7 pears' does not occur)" in dom
    assert f"{strong}5 apples</div>" in dom  # the cause in bold, as written in the Markdown


def test_stop_ends_descendants_in_other_sessions(tmp_path: Path) -> None:
    """What the fixtures rely on: a flow-run subprocess in its own session does not survive."""
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],"
        " start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    process = Process([sys.executable, "-c", script], dict(os.environ), tmp_path / "p.log")
    child = wait_for(lambda: process.output().strip(), 30, "the child's pid", [process])
    assert psutil.Process(int(child)).ppid() == process.popen.pid
    assert len(process.descendants()) == 2
    assert process.stop(grace=2) == []
    assert process.graceful is False  # it ignored Ctrl-C
    assert not process.descendants()


def _elapsed(process: Process) -> float:
    return time.monotonic() - process.started
