"""CAT-format import: `cattune convert` keeps every row, aligns what it can, fails on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cattune.flows.cli import main
from cattune.pipeline.convert import NO_RELATIONS, convert_source
from cattune.schemas import AnnotatedExample, from_table

DATA = Path(__file__).parent / "data"


def _read(path: Path) -> list[AnnotatedExample]:
    return from_table(pq.read_table(path), AnnotatedExample)


def _linkable(text: str, effect: str, cause: str) -> bool:
    """Independent of align(): some occurrence of cause ends before some occurrence of effect."""
    effects = [i for i in range(len(text)) if text.startswith(effect, i)]
    causes = [i for i in range(len(text)) if text.startswith(cause, i)]
    return bool(effects and causes) and min(causes) + len(cause) <= max(effects)


def test_small_file_keeps_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "small.parquet"
    assert main(["convert", str(DATA / "cat_small.jsonl"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rows" in printed and "phrases not found" in printed and "wrote 4 rows" in printed
    rows = _read(out)
    assert len(rows) == 4
    assert all(r.annotation.annotator == "given" for r in rows)
    high, low, fruit, unlabelled = rows
    (relation,) = high.relations
    assert relation.effect.text(high.text) == "High Risk"
    assert [c.text(high.text) for c in relation.causes] == [
        "Smoking: 8",
        "Weight: 4",
        "Exercise: 2",
    ]
    assert high.problems == []
    assert low.relations == [] and low.problems == [NO_RELATIONS]
    assert unlabelled.completion == "7" and unlabelled.problems == [NO_RELATIONS]
    assert any("'bananas'" in p and "does not occur" in p for p in fruit.problems)
    assert any("'Zebra'" in p for p in fruit.problems)
    assert any("never ends before" in p for p in fruit.problems)  # Tom <- fruits
    six = [r for r in fruit.relations if r.effect.text(fruit.text) == "6"]
    assert [c.text(fruit.text) for c in six[0].causes] == ["3", "3", "fruits"]  # every "3"


def test_nearest_strategy_links_one_occurrence(tmp_path: Path) -> None:
    records, _ = convert_source(DATA / "cat_small.jsonl", strategy="nearest")
    fruit = records[2]
    six = [r for r in fruit.relations if r.effect.text(fruit.text) == "6"][0]
    assert [c.text(fruit.text) for c in six.causes] == ["3", "fruits"]
    assert six.causes[0].start == fruit.text.rindex("3 pears")


def test_mawps_gpt4o_finds_every_verbatim_phrase(reference_data: Path, tmp_path: Path) -> None:
    path = reference_data / "MAWPS" / "mawps_train_gpt4o.jsonl"
    out = tmp_path / "mawps.parquet"
    assert main(["convert", str(path), "--out", str(out)]) == 0
    rows = _read(out)
    assert len(rows) == 1239
    source = [json.loads(line) for line in path.read_text().splitlines()]
    found = missing = 0
    for raw, row in zip(source, rows, strict=True):
        text = raw["input"] + str(raw["target"])
        assert row.text == text
        linked = {
            (rel.effect.text(text), cause.text(text))
            for rel in row.relations
            for cause in rel.causes
        }
        for item in raw["important"]:
            for effect, causes in item.items():
                for phrase in (effect, *causes):
                    found += bool(phrase) and phrase in text
                    missing += not (phrase and phrase in text)
                for cause in causes:
                    if effect and cause and _linkable(text, effect, cause):
                        assert (effect, cause) in linked, (raw["idx"], effect, cause)
        for rel in row.relations:  # and nothing was invented
            assert all(c.end <= rel.effect.start for c in rel.causes)
    _, summary = convert_source(path)
    assert (summary.phrases_found, summary.phrases_missing) == (found, missing)
    assert summary.rows == 1239 and missing > 0


def test_every_reference_file_converts(reference_data: Path) -> None:
    for path in sorted(reference_data.glob("*/*.jsonl")):
        records, summary = convert_source(path)
        has_labels = '"important"' in path.read_text()
        assert summary.rows == len(records) > 0
        if not has_labels:  # test files: no relations and no other problem
            assert all(r.relations == [] and r.problems == [NO_RELATIONS] for r in records)
        if "spurious_token_game_train" in path.name:
            assert summary.phrases_missing == 0 and summary.rows_with_problems == 0


@pytest.mark.parametrize(
    ("lines", "line", "needle"),
    [
        (['{"input": "a", "target": "b"}', "not json"], 2, "invalid JSON"),
        (['{"target": "b"}'], 1, "missing field 'input'"),
        (['{"input": ["a"], "target": "b"}'], 1, "field 'input' must be text"),
        (['{"input": "a", "target": {"x": 1}}'], 1, "field 'target' must be text"),
        (['{"input": "a", "target": "b", "important": 5}'], 1, "field 'important'"),
        (['{"input": "a", "target": "b", "important": [{"e": [1]}]}'], 1, "field 'important'"),
        (["[1]"], 1, "expected a JSON object"),
    ],
)
def test_malformed_input_fails_with_file_and_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    lines: list[str],
    line: int,
    needle: str,
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.parquet"
    assert main(["convert", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cattune: error: {path}:{line}: ")
    assert needle in err and "\n" not in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind either


def test_fixture_bad_json_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.parquet"
    assert main(["convert", str(DATA / "cat_bad_json.jsonl"), "--out", str(out)]) == 2
    assert "cat_bad_json.jsonl:2: invalid JSON" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nope.jsonl"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not out.exists()
