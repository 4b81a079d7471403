"""Rows with unicode texts and a simulated reviewer, shared by the review tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    Example,
    Meta,
    PhraseRelation,
    align,
)

# (prompt, completion, {effect: [causes]}): emoji (astral, ZWJ sequences, modifiers), CJK,
# combining marks, and an ASCII math word problem.
TEXTS: list[tuple[str, str, dict[str, list[str]]]] = [
    (
        "Ana 👩‍👩‍👧 bakes 12 cakes 🎂 and sells 5. How many cakes are left? Answer: ",
        "7",
        {"sells 5": ["bakes 12 cakes"], "7": ["bakes 12 cakes", "sells 5"]},
    ),
    (
        "小明有 3 个苹果 🍎，又买了 4 个。他一共有几个？答案：",
        "7",
        {"7": ["3 个苹果", "又买了 4 个"]},
    ),
    (
        "Zoë’s café (cafe\u0301) served 20 crêpes 👍🏽 and 8 were eaten. Answer: ",
        "12",
        {"12": ["served 20 crêpes", "8 were eaten"], "8 were eaten": ["cafe\u0301"]},
    ),
    (
        "Ruth starts with 89 apples. She shares 5 with Peter. How many apples does Ruth end with?",
        "Answer: 84.0",
        {"84.0": ["89 apples", "shares 5"]},
    ),
]


def make_row(prompt: str, completion: str, phrases: dict[str, list[str]]) -> AnnotatedExample:
    example = Example.create(prompt, completion, Meta(source="review-test", split="train"))
    wire = [PhraseRelation(effect=e, causes=c) for e, c in phrases.items()]
    alignment = align(example.text, wire)
    assert not alignment.problems, alignment.problems
    annotation = Annotation(annotator="prior", annotator_version="1", config_hash="cfg1")
    return AnnotatedExample(
        **example.model_dump(), relations=alignment.relations, annotation=annotation
    )


def rows() -> list[AnnotatedExample]:
    return [make_row(*text) for text in TEXTS]


def simulated_export(tasks: list[dict[str, Any]], results: dict[int, list[dict[str, Any]]]) -> list:
    """Label Studio's JSON export shape for ``tasks``; ``results[i]`` is the submitted result of
    task i (tasks not in ``results`` stay unannotated)."""
    exported = []
    for index, task in enumerate(tasks):
        annotations = []
        if index in results:
            annotations.append(
                {
                    "id": 100 + index,
                    "completed_by": {"id": 1, "email": "reviewer@example.com"},
                    "result": results[index],
                    "was_cancelled": False,
                    "created_at": "2026-11-30T12:00:00.000000Z",
                    "updated_at": "2026-11-30T12:00:00.000000Z",
                }
            )
        exported.append(
            {"id": 10 + index, "project": 3, "data": task["data"], "annotations": annotations}
        )
    return exported


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def edited(
    result: list[dict[str, Any]],
    text: str,
    *,
    drop_relation: int | None = None,
    move: tuple[str, str] | None = None,
    offset: Any = None,
) -> list[dict[str, Any]]:
    """A reviewer's edit of a prediction: drop the n-th relation; move the region whose text is
    ``move[0]`` onto the first occurrence of ``move[1]`` (offsets via ``offset(text, index)``)."""
    result = copy.deepcopy(result)
    if drop_relation is not None:
        relations = [i for i, r in enumerate(result) if r["type"] == "relation"]
        del result[relations[drop_relation]]
    if move is not None:
        old, new = move
        region = next(r for r in result if r["type"] == "labels" and r["value"]["text"] == old)
        start = text.index(new)
        region["value"].update(
            start=offset(text, start), end=offset(text, start + len(new)), text=new
        )
    return result
