"""Shared parts of the reliability suite: a seeded faulty chat server script, source rows, checks.

The fault script answers like a correct model except on a seeded ~``rate`` share of requests,
where it plays one fault class. The choice depends only on (seed, text, attempt index, repair or
not), never on arrival order, so a run is reproducible at any concurrency. "Poison" rows are
answered with phrases that are not in the text every time (they end quarantined, not retryable).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from cattune.annotators.llm import LLMAnnotator
from cattune.annotators.llm_prompt import text_of_data_message
from cattune.annotators.scripted_server import Reply, ScriptedChatServer
from cattune.schemas import AnnotatedExample, Example, QuarantinedExample

CANARY = "sk-canary-REL-5e1f0c9a7d3b2468"
PACK = "key-value-records"
ROW = re.compile(r"Row (\d+)\. Smoking: (\d+)")

TRANSIENT_FAULTS = ("429", "500", "reset", "hang", "invalid_json")
CONTENT_FAULTS = ("not_in_text", "not_json")
FAULTS = TRANSIENT_FAULTS + CONTENT_FAULTS


def row_text(i: int) -> tuple[str, str]:
    """(prompt, completion) of source row ``i``; row ``i`` is poison when ``i % 37 == 5``."""
    return f"Row {i}. Smoking: {i % 9 + 1}, Room size: 3. Answer: ", (
        "High Risk" if i % 2 else "Low Risk"
    )


def is_poison(i: int) -> bool:
    return i % 37 == 5


def source_rows(n: int, start: int = 0) -> list[dict[str, str]]:
    return [dict(zip(("prompt", "completion"), row_text(i), strict=True)) for i in range(start, n)]


def examples(n: int, start: int = 0) -> list[Example]:
    return [Example.create(*row_text(i)) for i in range(start, n)]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def request_text(request: dict[str, Any]) -> str:
    """The text labelled by a chat request (repair requests included)."""
    for message in reversed(request["messages"]):
        if message["role"] == "user" and (text := text_of_data_message(message["content"])):
            return text
    raise AssertionError("no DATA block in the request")


def is_repair(request: dict[str, Any]) -> bool:
    return request["messages"][-1]["content"].startswith("Your reply cannot be used")


def row_of(text: str) -> int:
    return int(ROW.findall(text)[-1][0])


def correct_reply(text: str) -> str:
    _, smoking = ROW.findall(text)[-1]
    effect = "High Risk" if text.endswith("High Risk") else "Low Risk"
    return json.dumps({"relations": [{"effect": effect, "causes": [f"Smoking: {smoking}"]}]})


def _unit(*parts: object) -> float:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FaultScript:
    """A ScriptedChatServer responder: a correct model with seeded faults; see the module doc."""

    def __init__(
        self, *, seed: int = 0, rate: float = 0.3, hang: float = 2.0, retry_after: float = 0.02
    ) -> None:
        self.seed = seed
        self.rate = rate
        self.hang = hang
        self.retry_after = retry_after
        self.played: Counter[str] = Counter()  # replies sent, by fault class ("ok", "poison")
        self._lock = threading.Lock()

    def _play(self, kind: str) -> None:
        with self._lock:
            self.played[kind] += 1

    def fault(self, text: str, attempt: int, repair: bool) -> str | None:
        if _unit(self.seed, "rate", text, attempt, repair) >= self.rate:
            return None
        return FAULTS[int(_unit(self.seed, "kind", text, attempt, repair) * len(FAULTS))]

    def __call__(self, request: dict[str, Any], attempt: int) -> Reply:
        text = request_text(request)
        repair = is_repair(request)
        if is_poison(row_of(text)):
            self._play("poison")
            return Reply.completion('{"relations": [{"effect": "Low Risk", "causes": ["Pizza"]}]}')
        kind = self.fault(text, attempt, repair)
        self._play(kind or "ok")
        if kind == "429":
            return Reply.error(429, retry_after=self.retry_after)
        if kind == "500":
            return Reply.error(500)
        if kind == "reset":
            return Reply.reset()
        if kind == "hang":
            return Reply.hang(self.hang)
        if kind == "invalid_json":
            return Reply.invalid_json()
        if kind == "not_in_text":
            return Reply.completion(
                '{"relations": [{"effect": "High Risk", "causes": ["Smoking: 99"]}]}'
            )
        if kind == "not_json":
            return Reply.completion("I think smoking causes it.")
        return Reply.completion(correct_reply(text))


class HasBaseUrl(Protocol):
    @property
    def base_url(self) -> str: ...


def llm_options(server: HasBaseUrl, cache: Path | None, **extra: Any) -> dict[str, Any]:
    """Fast-failing LLM annotator options for fault runs (the key comes from the environment)."""
    options: dict[str, Any] = {
        "model": "scripted",
        "base_url": server.base_url,
        "api_key_env": "CATTUNE_REL_KEY",
        "cache": str(cache) if cache is not None else False,
        "timeout": 0.25,
        "max_retries": 1,
        "concurrency": 64,
        "progress": False,
    }
    options.update(extra)
    return options


def llm_annotator(server: ScriptedChatServer, cache: Path | None, **extra: Any) -> LLMAnnotator:
    options = llm_options(server, cache, **extra)
    options.pop("api_key_env")
    return LLMAnnotator(PACK, api_key=SecretStr(CANARY), **options)


def assert_accounted(
    inputs: Sequence[Example], results: Sequence[AnnotatedExample | QuarantinedExample]
) -> None:
    """Every input row ends annotated or quarantined with a reason, once, in order."""
    assert [r.id for r in results] == [e.id for e in inputs]
    for result in results:
        assert isinstance(result, AnnotatedExample | QuarantinedExample)
        if isinstance(result, QuarantinedExample):
            assert result.error.strip()


def assert_valid_relations(row: AnnotatedExample) -> None:
    """Spans lie inside the text and every cause ends before its effect starts."""
    size = len(row.text)
    for relation in row.relations:
        assert 0 <= relation.effect.start < relation.effect.end <= size
        for cause in relation.causes:
            assert 0 <= cause.start < cause.end <= relation.effect.start


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    data = needle.encode()
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if data in path.read_bytes():
                found.append(path)
    return found


def batch_rows(tag: str, batch: int, size: int) -> list[AnnotatedExample]:
    """Rows of one write: ``size`` new rows tagged ``tag-batch``, each with one relation."""
    from cattune.schemas import Annotation, Meta, Relation, Span

    rows = []
    for i in range(size):
        prompt = f"Writer {tag} batch {batch} row {i}. Smoking: {i % 9 + 1}. Answer: "
        example = Example.create(
            prompt,
            "Low Risk",
            Meta(source="rel", extra={"batch": f"{tag}-{batch}", "size": str(size)}),
        )
        cause = prompt.index("Smoking")
        rows.append(
            AnnotatedExample(
                **example.model_dump(),
                relations=[
                    Relation(
                        effect=Span(start=len(prompt), end=len(prompt) + 8),
                        causes=[Span(start=cause, end=cause + 10)],
                    )
                ],
                annotation=Annotation(annotator="rel", annotator_version="1", config_hash=tag),
            )
        )
    return rows


def batch_failures(tag: str, batch: int) -> list[QuarantinedExample]:
    from cattune.schemas import Annotation

    example = Example.create(f"Writer {tag} batch {batch} failed row.", "?")
    return [
        QuarantinedExample(
            **example.model_dump(),
            annotation=Annotation(annotator="rel", annotator_version="1", config_hash=tag),
            error="scripted failure",
            retryable=True,
        )
    ]


def store_writer(root: str, name: str, tag: str, batches: int, size: int, done: Any) -> None:
    """A child process: ``batches`` writes through the store API the flow uses.

    Each write holds a new batch plus the previous batch again (an upsert of unchanged ids) and
    one quarantined row; ``done`` (a shared counter) counts finished writes.
    """
    from cattune.pipeline.store import DatasetStore, Lineage

    store = DatasetStore(root, max_retries=30)
    for batch in range(batches):
        rows = batch_rows(tag, batch, size)
        if batch:
            rows += batch_rows(tag, batch - 1, size)
        store.write(name, rows, batch_failures(tag, batch), Lineage(write_id=f"{tag}-{batch}"))
        with done.get_lock():
            done.value += 1


def check_store(root: str, name: str, since: int = 0) -> dict[str, int]:
    """Every version (from ``since``) opens and reads; none holds duplicate ids or partial batches.

    Returns {batch tag: rows} of the latest version.
    """
    from cattune.pipeline.store import DatasetStore

    store = DatasetStore(root)
    history = store.history(name)
    assert [c.version for c in history] == list(range(len(history))), "non-linear history"
    latest: dict[str, int] = {}
    for commit in history[since:]:
        rows = store.read(name, commit.version)
        ids = [r.id for r in rows]
        assert len(ids) == len(set(ids)), f"duplicate ids in version {commit.version}"
        batches: dict[str, int] = {}
        for row in rows:
            assert_valid_relations(row)
            batches[row.meta.extra["batch"]] = batches.get(row.meta.extra["batch"], 0) + 1
        sizes = {row.meta.extra["batch"]: int(row.meta.extra["size"]) for row in rows}
        assert batches == sizes, f"partial batch in version {commit.version}"
        latest = batches
    store.quarantine(name)
    return latest
