"""The CAT authors' GPT-4o labels for MAWPS replayed through the LLM annotator over real HTTP.

The scripted server answers each request with the authors' own reply for the text it is asked
about (repair requests too: a model that repeats itself). Those replies are imperfect the way real
ones are: every row has relations whose phrases are in the text, and some rows also name phrases
that are not. The annotator keeps the valid part, records what it left out, and caches every final
outcome so a re-run pays for nothing.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from test_annot_llm import data_text, is_repair

from cattune.annotators.llm import LLMAnnotator
from cattune.annotators.pack import load_pack
from cattune.annotators.scripted_server import Reply, ScriptedChatServer
from cattune.pipeline.sources import read_source
from cattune.schemas import AnnotatedExample, Example, QuarantinedExample

ROWS = 100


@pytest.fixture(scope="module")
def mawps(reference_data: Path) -> list[tuple[Example, Any]]:
    """The first rows of the authors' GPT-4o file with the labels GPT-4o gave each."""
    path = reference_data / "MAWPS" / "mawps_train_gpt4o.jsonl"
    raw = [json.loads(line) for line in islice(path.open(encoding="utf-8"), ROWS)]
    examples = [row.example for row in islice(read_source(path), ROWS)]
    assert all(example is not None for example in examples)
    return [(e, r["important"]) for e, r in zip(examples, raw, strict=True) if e is not None]


def replay(rows: list[tuple[Example, Any]]) -> ScriptedChatServer:
    replies = {example.text: json.dumps(labels) for example, labels in rows}
    return ScriptedChatServer(
        lambda request, attempt: Reply.completion(replies[data_text(request)])
    )


def annotator(server: ScriptedChatServer, cache: Path, **options: Any) -> LLMAnnotator:
    return LLMAnnotator(
        load_pack("math-word-problems"),
        model="gpt-4o",
        base_url=server.base_url,
        api_key="local",
        cache=cache,
        **options,
    )


def pairs(labels: Any) -> set[tuple[str, str]]:
    """(effect, cause) phrase pairs of a reply in the authors' list-of-dicts form."""
    return {
        (effect, cause)
        for item in labels
        for effect, causes in item.items()
        for cause in (causes if isinstance(causes, list) else [causes])
        if isinstance(cause, str)
    }


def test_replayed_gpt4o_labels_keep_the_valid_part(
    mawps: list[tuple[Example, Any]], tmp_path: Path
) -> None:
    with replay(mawps) as server:
        llm = annotator(server, tmp_path / "llm.sqlite")
        results = llm.annotate([example for example, _ in mawps])
        bodies = [r.body or {} for r in server.requests]
    quarantined = [r for r in results if isinstance(r, QuarantinedExample)]
    assert quarantined == [], [q.error for q in quarantined]  # the goal: at most 5
    partly = 0
    for (example, labels), result in zip(mawps, results, strict=True):
        assert result.id == example.id
        if not isinstance(result, AnnotatedExample):
            continue
        text = example.text
        asked = pairs(labels)
        kept = {(r.effect.text(text), c.text(text)) for r in result.relations for c in r.causes}
        assert kept and kept <= asked  # every kept span is exactly a phrase of the reply
        partly += bool(result.problems)
        for problem in result.problems:
            assert problem.startswith("left out of the reply: ")
        assert all(c.end <= r.effect.start for r in result.relations for c in r.causes)
    assert partly == 43  # the rows that were all quarantined before: their valid part is kept
    assert not any(is_repair(body) for body in bodies)  # none left out more than half
    assert len(bodies) == llm.last_run.requests == ROWS


def test_a_stricter_share_asks_for_repairs_and_keeps_the_better_reply(
    mawps: list[tuple[Example, Any]], tmp_path: Path
) -> None:
    with replay(mawps) as server:
        llm = annotator(server, tmp_path / "llm.sqlite", max_dropped_share=0.0)
        results = llm.annotate([example for example, _ in mawps])
        repairs = [r.body for r in server.requests if is_repair(r.body or {})]
    assert len(repairs) == 43  # every row that left something out was asked once more
    assert all(isinstance(r, AnnotatedExample) for r in results)
    assert sum(r.annotation.attempts == 2 for r in results) == 43


def test_rerun_makes_no_request_whatever_the_rows_ended_as(
    mawps: list[tuple[Example, Any]], tmp_path: Path
) -> None:
    rows = [example for example, _ in mawps]
    cache = tmp_path / "llm.sqlite"
    with replay(mawps) as server:
        first = annotator(server, cache).annotate(rows)
        sent = server.request_count
        again = annotator(server, cache).annotate(rows)
        assert server.request_count == sent
        refreshed = annotator(server, cache, refresh=True)
        refreshed.annotate(rows[:10])
        assert server.request_count > sent and refreshed.last_run.cached == 0
    assert [type(r) for r in first] == [type(r) for r in again]
    assert [r.model_dump(exclude={"annotation"}) for r in first] == [
        r.model_dump(exclude={"annotation"}) for r in again
    ]
