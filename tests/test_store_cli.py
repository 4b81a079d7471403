"""`cattune datasets ...` and `cattune release ...` through the real CLI entry point."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cattune.flows.cli import main
from cattune.pipeline.store import DatasetStore, Lineage
from cattune.pipeline.store_view import markdown, segments
from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    Example,
    Meta,
    QuarantinedExample,
    Relation,
    Span,
)


def row(i: int, *, labelled: bool = True) -> AnnotatedExample:
    example = Example.create(f"Smoking: {i}, Weight: 2. Answer: ", "High Risk", Meta(label="high"))
    relations = []
    if labelled:
        effect = Span(start=len(example.prompt), end=len(example.text))
        relations = [Relation(effect=effect, causes=[Span(start=0, end=7), Span(start=12, end=18)])]
    return AnnotatedExample(
        **example.model_dump(),
        relations=relations,
        annotation=Annotation(annotator="prior", annotator_version="1", config_hash="c"),
    )


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COLUMNS", "250")
    root = tmp_path / "store"
    store = DatasetStore(root)
    quarantined = QuarantinedExample(
        **Example.create("No causes here. ", "x").model_dump(),
        annotation=Annotation(annotator="prior", annotator_version="1"),
        error="no rule matched the text",
    )
    store.write(
        "stg",
        [row(i) for i in range(3)],
        [quarantined],
        Lineage(annotator="prior", annotator_version="1", source="stg.jsonl", flow_run_id="run-1"),
    )
    store.write("stg", [row(1, labelled=False), row(5)])
    return root


def test_list_history_show(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "list", "--store", str(root)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"stg\s*│\s*1\s*│\s*4\s*│\s*1\s*│", out), out
    assert main(["datasets", "history", "stg", "--store", str(root)]) == 0
    out = capsys.readouterr().out
    assert "stg.jsonl" in out and "run-1" in out and "MERGE" in out
    assert main(["datasets", "show", "stg@0", "--limit", "2", "--store", str(root)]) == 0
    out = capsys.readouterr().out
    assert "stg@0: 3 rows" in out and "Smoking" in out


def test_diff_and_quarantine(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "diff", "stg@0", "stg@1", "--store", str(root)]) == 0
    out = capsys.readouterr().out
    assert "1 rows added, 0 removed, 1 relabelled, 2 unchanged" in out
    assert row(5).id in out and row(1).id in out
    assert main(["datasets", "quarantine", "stg", "--store", str(root)]) == 0
    out = capsys.readouterr().out
    assert "1 quarantined rows" in out and "no rule matched the text" in out


def test_user_mistakes_exit_2(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "show", "nope", "--store", str(root)]) == 2
    assert "no dataset 'nope'" in capsys.readouterr().err
    assert main(["datasets", "show", "../x", "--store", str(root)]) == 2
    assert "invalid dataset name" in capsys.readouterr().err
    assert main(["datasets", "diff", "stg@0", "other@1", "--store", str(root)]) == 2
    assert main(["datasets", "show", "stg@9", "--store", str(root)]) == 2
    assert "no version 9" in capsys.readouterr().err
    assert main(["release", "stg", "--store", str(root)]) == 2
    assert "--out DIR" in capsys.readouterr().err


def test_release_and_verify(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rel"
    assert main(["release", "stg@0", "--out", str(out), "--store", str(root)]) == 0
    assert "released stg@0" in capsys.readouterr().out
    assert main(["release", "verify", str(out)]) == 0
    assert "is intact" in capsys.readouterr().out
    assert main(["release", "stg", "--out", str(out), "--store", str(root)]) == 2
    assert "already exists" in capsys.readouterr().err
    target = next((out / "data").iterdir())
    target.chmod(0o644)
    target.write_bytes(b"tampered")
    assert main(["release", "verify", str(out)]) == 2
    assert "changed file data/" in capsys.readouterr().err


def test_segments_and_markdown_mark_causes_and_effects() -> None:
    example = row(3)
    pieces = segments(example)
    assert "".join(piece for piece, _ in pieces) == example.text
    assert ("Smoking", "cause") in pieces and ("Weight", "cause") in pieces
    assert ("High Risk", "effect") in pieces
    assert markdown(example) == "**Smoking**: 3, **Weight**: 2. Answer: _High Risk_"
    assert markdown(example, limit=5).endswith("…")
