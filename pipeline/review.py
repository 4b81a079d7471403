"""Human review through Label Studio: export rows as tasks, import the reviewed relations back.

Import commits a new version of the dataset in which only the reviewed rows change: each carries
annotator ``human`` and, under ``meta.extra``, who reviewed it and the Label Studio ids
(:data:`REVIEW_KEYS`). A reviewed row keeps its ``config_hash``, so an incremental annotation run
under the same configuration skips it instead of overwriting the person's work. A review that
confirms the relations keeps them exactly as they were; a review that cannot be placed on the text
(offsets that do not match, a task whose text is not the row's) sends the row to the quarantine
with the reason, and the row itself stays unchanged.
"""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cattune.pipeline.labelstudio import (
    ExportedTask,
    ReviewError,
    group_pairs,
    labeling_config,
    relations_from_result,
    task_for,
)
from cattune.pipeline.names import Version
from cattune.pipeline.store import DatasetStore, Lineage
from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    ConfigError,
    Example,
    InputError,
    Meta,
    QuarantinedExample,
)

HUMAN = "human"
REVIEW_VERSION = "1.0"
AGREEMENT_KEY = "agreement"  # written by aggregation (cattune.pipeline.aggregate)
REVIEW_KEYS = (
    "review_reviewer",
    "review_ls_project",
    "review_ls_task",
    "review_ls_annotation",
    "review_of_version",
)


class ExportResult(BaseModel):
    tasks: Path
    config: Path
    version: int
    rows: int


class ImportResult(BaseModel):
    dataset: str
    version: int
    reviewed: int
    changed: int
    quarantined: int
    unreviewed_tasks: int
    rejected: list[str]


def config_path(tasks: Path) -> Path:
    """Where the labelling config is written: beside the tasks file."""
    return tasks.with_name(f"{tasks.stem}.config.xml")


def _agreement(row: AnnotatedExample | QuarantinedExample) -> float | None:
    value = row.meta.extra.get(AGREEMENT_KEY)
    return float(value) if value is not None else None


def select_rows(
    store: DatasetStore,
    name: str,
    version: Version = None,
    *,
    quarantine: bool = False,
    below: float | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> list[AnnotatedExample] | list[QuarantinedExample]:
    """The rows to review: a version's rows (or its quarantine), optionally only those whose
    agreement is under ``below``, optionally a seeded sample of ``sample`` of them."""
    rows: list[Any] = store.quarantine(name, version) if quarantine else store.read(name, version)
    if below is not None:
        scored = [(row, _agreement(row)) for row in rows]
        if rows and all(score is None for _, score in scored):
            raise ConfigError(
                f"dataset {name!r} has no per-row agreement; write it with "
                "`cattune review aggregate` before exporting with --disagreement"
            )
        rows = [row for row, score in scored if score is not None and score < below]
    if sample is not None and sample < len(rows):
        rows = sorted(random.Random(seed).sample(rows, sample), key=lambda r: r.id)
    return rows


def export_review(
    store: DatasetStore,
    name: str,
    version: Version,
    out: Path,
    **selection: Any,
) -> ExportResult:
    """Write Label Studio import tasks for the selected rows to ``out``, the config beside it."""
    number = store.resolve_version(name, version)
    rows = select_rows(store, name, number, **selection)
    tasks = [
        task_for(row, dataset=name, version=number, model_version=_model_version(row))
        for row in rows
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks, ensure_ascii=False, indent=1), encoding="utf-8")
    config = config_path(out)
    config.write_text(labeling_config(), encoding="utf-8")
    return ExportResult(tasks=out, config=config, version=number, rows=len(rows))


def _model_version(row: AnnotatedExample | QuarantinedExample) -> str:
    annotation = row.annotation
    return " ".join(p for p in (annotation.annotator, annotation.model or "") if p)


def read_export(path: Path) -> list[ExportedTask]:
    """Label Studio's JSON export (a list of tasks); one-line errors for a wrong file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such file; give Label Studio's JSON export", path=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(
            f"not JSON ({error}); export the project as JSON", path=str(path)
        ) from None
    if not isinstance(raw, list):
        raise InputError("expected a list of tasks (Label Studio's JSON export)", path=str(path))
    tasks = []
    for number, item in enumerate(raw, 1):
        try:
            tasks.append(ExportedTask.model_validate(item))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InputError(
                f"task {number} is not a cattune review task ({where}: {first['msg']}); export "
                "tasks made by `cattune review export`",
                path=str(path),
            ) from None
    return tasks


def _created_at(stamp: str | None) -> datetime:
    if not stamp:
        return datetime.now(UTC)
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _reviewed_row(
    task: ExportedTask, current: AnnotatedExample | QuarantinedExample | None
) -> AnnotatedExample | QuarantinedExample:
    """The row as the task's final annotation has it, or a quarantined row saying why not.

    ``current`` is the row as the store holds it now (None when it is in neither table; the
    task's own copy of the text is used then). Raises ``ValidationError`` when the task's id is
    not the content hash of its text.
    """
    annotation = task.final_annotation()
    assert annotation is not None
    data = task.data
    meta = current.meta if current is not None else Meta()
    values = (
        annotation.reviewer,
        str(task.project or ""),
        str(task.id),
        str(annotation.id),
        str(data.cattune_version),
    )
    extra = {**meta.extra, **dict(zip(REVIEW_KEYS, values, strict=True))}
    provenance = Annotation(
        annotator=HUMAN,
        annotator_version=REVIEW_VERSION,
        config_hash=current.annotation.config_hash if current is not None else None,
        created_at=_created_at(annotation.updated_at or annotation.created_at),
    )
    example = Example(
        id=data.cattune_id,
        prompt=data.prompt,
        completion=data.completion,
        meta=meta.model_copy(update={"extra": extra}),
    )
    fields = example.model_dump() | {"meta": example.meta}
    if data.text != example.text:
        reason = "the task's text is not prompt + completion; re-export the row and review it again"
        return QuarantinedExample(**fields, annotation=provenance, error=reason)
    try:
        pairs, problems = relations_from_result(data.text, annotation.result)
    except ReviewError as error:
        raw = json.dumps(annotation.result, ensure_ascii=False)
        return QuarantinedExample(
            **fields, annotation=provenance, error=f"review unreadable: {error}", raw_output=raw
        )
    relations = group_pairs(pairs)
    if current is not None and _pair_set(current.relations) == set(pairs):
        relations = current.relations  # confirmed as it was: keep the original grouping
    return AnnotatedExample(**fields, relations=relations, annotation=provenance, problems=problems)


def _pair_set(relations: list[Any]) -> set[tuple[Any, Any]]:
    return {(r.effect, c) for r in relations for c in r.causes}


def import_review(store: DatasetStore, name: str, export: Path) -> ImportResult:
    """Commit the reviewed rows of a Label Studio export as a new version of ``name``."""
    tasks = read_export(export)
    foreign = sorted({t.data.cattune_dataset for t in tasks} - {name})
    if foreign:
        raise ConfigError(
            f"{export} holds tasks of dataset {foreign[0]!r}, not {name!r}; import it under that "
            "name"
        )
    reviewed = [t for t in tasks if t.final_annotation() is not None]
    current: dict[str, AnnotatedExample | QuarantinedExample] = {
        row.id: row for row in store.quarantine(name)
    }
    current.update((row.id, row) for row in store.read(name))
    rows: list[AnnotatedExample] = []
    failed: list[QuarantinedExample] = []
    rejected: list[str] = []
    for task in reviewed:
        try:
            row = _reviewed_row(task, current.get(task.data.cattune_id))
        except ValidationError as error:
            rejected.append(f"task {task.id}: {error.errors()[0]['msg']}")
            continue
        (rows if isinstance(row, AnnotatedExample) else failed).append(row)
    changed = sum(
        1 for row in rows if row.id not in current or row.relations != current[row.id].relations
    )
    digest = hashlib.sha256(export.read_bytes()).hexdigest()
    lineage = Lineage(
        annotator=HUMAN,
        annotator_version=REVIEW_VERSION,
        model="label-studio",
        source=export.name,
        source_sha256=digest,
    )
    result = store.write(name, rows, failed, lineage)
    return ImportResult(
        dataset=name,
        version=result.version,
        reviewed=len(rows),
        changed=changed,
        quarantined=len(failed),
        unreviewed_tasks=len(tasks) - len(reviewed),
        rejected=rejected,
    )
