"""Scheduled deployments of the cattune flows, described in a YAML file (flows/deployments.yaml).

Two ways to run them: ``serve_deployments`` (``cattune serve``) keeps one process that polls the
Prefect server and runs each scheduled flow run in a subprocess; ``deploy_to_pool``
(``cattune deploy``) registers the deployments with a work pool of type ``process``, whose runs a
separately started ``prefect worker start --pool NAME`` picks up. Either way the schedules fire
only when a Prefect server runs its scheduler (``prefect server start``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from prefect import Flow
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron, Interval
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cattune.schemas import ConfigError

FlowName = Literal["annotate", "release", "handoff"]
EXAMPLE_CONFIG = Path(__file__).resolve().parent / "deployments.yaml"


class DeploymentSpec(BaseModel):
    """One scheduled deployment: which flow, when, with which parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    flow: FlowName
    cron: str | None = None
    interval: float | None = Field(default=None, gt=0, description="seconds between runs")
    timezone: str | None = None
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)


class DeploymentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployments: list[DeploymentSpec] = Field(min_length=1)


def flow_by_name(name: str) -> Flow:
    if name == "annotate":
        from cattune.flows.annotate import annotate_flow

        return annotate_flow
    if name == "release":
        from cattune.flows.release import release_flow

        return release_flow
    from cattune.flows.handoff import handoff_flow

    return handoff_flow


def load_config(path: str | Path) -> DeploymentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no deployment file at {path}; see {EXAMPLE_CONFIG} for an example")
    try:
        data = yaml.safe_load(path.read_text())
        return DeploymentConfig.model_validate(data)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    except ValidationError as error:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise ConfigError(f"{path}: {details}") from None


def build_deployments(
    config: DeploymentConfig, *, work_pool: str | None = None, working_dir: Path | None = None
) -> list[Any]:
    """Prefect RunnerDeployments (``flow.to_deployment``), parameters checked against each flow.

    With ``work_pool`` the deployments are for a worker: the flow is referenced by its module path
    (``cattune.flows.annotate.annotate_flow``, importable wherever cattune is installed) and
    ``working_dir`` (where relative paths in the parameters resolve) becomes a job variable.
    """
    names = [spec.name for spec in config.deployments]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"deployment names must be unique; repeated: {', '.join(duplicated)}")
    built = []
    for spec in config.deployments:
        flow = flow_by_name(spec.flow)
        if spec.cron and spec.interval:
            raise ConfigError(f"deployment {spec.name!r}: give cron or interval, not both")
        try:
            flow.validate_parameters(spec.parameters)
        except Exception as error:  # prefect raises several types for bad parameters
            raise ConfigError(f"deployment {spec.name!r}: bad parameters: {error}") from None
        if spec.flow == "annotate":
            _check_annotator_options(spec)
        schedules = []
        if spec.cron:
            _check_cron(spec.name, spec.cron)
            schedules.append(Cron(spec.cron, timezone=spec.timezone))
        elif spec.interval:
            schedules.append(Interval(spec.interval, timezone=spec.timezone))
        pool_options: dict[str, Any] = {}
        if work_pool is not None:
            pool_options = {
                "work_pool_name": work_pool,
                "entrypoint_type": EntrypointType.MODULE_PATH,
                "job_variables": {"working_dir": str(working_dir)} if working_dir else None,
            }
        try:
            deployment = flow.to_deployment(
                name=spec.name,
                parameters=spec.parameters,
                description=spec.description,
                tags=["cattune", *spec.tags],
                schedules=schedules or None,
                **pool_options,
            )
        except ValueError as error:
            raise ConfigError(f"deployment {spec.name!r}: {error}") from None
        built.append(deployment)
    return built


def _check_annotator_options(spec: DeploymentSpec) -> None:
    """The annotate flow's ``options`` against its annotator's spec, before anything is served."""
    from cattune.annotators.options import options_for

    kind = spec.parameters.get("annotator", "prior")
    try:
        options_for(kind, spec.parameters.get("options"))
    except ConfigError as error:
        raise ConfigError(f"deployment {spec.name!r}: {error}") from None


def _check_cron(name: str, cron: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except (ValueError, ValidationError) as error:
        raise ConfigError(f"deployment {name!r}: invalid cron {cron!r}: {error}") from None


def serve_deployments(deployments: list[Any], *, limit: int | None = None) -> None:
    """Serve the deployments until interrupted (blocks; each run starts in a subprocess)."""
    from prefect import serve

    serve(*deployments, limit=limit)


def deploy_to_pool(deployments: list[Any], work_pool: str) -> list[str]:
    """Create or update the deployments on the Prefect server, for ``work_pool``; their ids.

    Needs ``PREFECT_API_URL`` (deployments made on a temporary server would vanish with it) and a
    work pool that exists (``prefect work-pool create NAME --type process``).
    """
    from prefect import deploy
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise ConfigError(
            "PREFECT_API_URL is not set: start a server (`prefect server start`) and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api before deploying to a work pool"
        )
    try:
        ids = deploy(
            *deployments,
            work_pool_name=work_pool,
            build=False,
            push=False,
            print_next_steps_message=False,
            ignore_warnings=True,
        )
    except ValueError as error:
        if "Could not find work pool" not in str(error):
            raise
        raise ConfigError(
            f"no work pool {work_pool!r} on {api_url}: create it with "
            f"`prefect work-pool create {work_pool} --type process`"
        ) from None
    except httpx.TransportError as error:
        raise ConfigError(
            f"cannot reach the Prefect server at {api_url} ({error}): is `prefect server start` "
            "running, and is PREFECT_API_URL right?"
        ) from None
    return [str(i) for i in ids]
