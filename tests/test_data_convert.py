"""CAT-format import: `cattune convert` keeps every row, aligns what it can, quarantines rows it
cannot read, and stops only for a file it cannot read as a whole."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cattune.flows.cli import main
from cattune.pipeline.convert import NO_RELATIONS, convert_source
from cattune.schemas import AnnotatedExample, QuarantinedExample, from_table

DATA = Path(__file__).parent / "data"


def _read(path: Path) -> list[AnnotatedExample]:
    return from_table(pq.read_table(path), AnnotatedExample)


def _splits(text: str, i: int) -> bool:
    """Independent of align(), for the (ASCII) reference files: a cut at i splits a word or a
    number when it falls between two word characters or next to a decimal point or thousands
    separator that stands between digits."""
    return bool(
        re.fullmatch(r"\w\w", text[max(i - 1, 0) : i + 1])
        or re.fullmatch(r"\d[.,]\d", text[max(i - 1, 0) : i + 2])
        or re.fullmatch(r"\d[.,]\d", text[max(i - 2, 0) : i + 1])
    )


def _whole(text: str, phrase: str) -> list[int]:
    """Starts of the occurrences of phrase that split no word or number."""
    return [
        i
        for i in range(len(text))
        if text.startswith(phrase, i)
        and not _splits(text, i)
        and not _splits(text, i + len(phrase))
    ]


def _linkable(text: str, effect: str, cause: str) -> bool:
    """Independent of align(): some whole occurrence of cause ends before one of effect."""
    effects, causes = _whole(text, effect), _whole(text, cause)
    return bool(effects and causes) and min(causes) + len(cause) <= max(effects)


def test_small_file_keeps_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "small.parquet"
    assert main(["convert", str(DATA / "cat_small.jsonl"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rows" in printed and "phrases not found" in printed and "wrote 4 rows" in printed
    assert "quarantined 0 malformed rows" in printed
    rows = _read(out)
    assert len(rows) == 4
    assert (
        from_table(pq.read_table(tmp_path / "out" / "small.quarantine.parquet"), QuarantinedExample)
        == []
    )
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
    records = convert_source(DATA / "cat_small.jsonl", strategy="nearest").records
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
                    found += bool(phrase) and bool(_whole(text, phrase))
                    missing += not (phrase and _whole(text, phrase))
                for cause in causes:
                    if effect and cause and _linkable(text, effect, cause):
                        assert (effect, cause) in linked, (raw["idx"], effect, cause)
        for rel in row.relations:  # and nothing was invented
            assert all(c.end <= rel.effect.start for c in rel.causes)
    summary = convert_source(path).summary
    assert (summary.phrases_found, summary.phrases_missing) == (found, missing)
    assert summary.rows == 1239 and missing > 0


def test_every_reference_file_converts(reference_data: Path) -> None:
    for path in sorted(reference_data.glob("*/*.jsonl")):
        result = convert_source(path)
        records, summary = result.records, result.summary
        has_labels = '"important"' in path.read_text()
        assert summary.rows == len(records) > 0
        if not has_labels:  # test files: no relations and no other problem
            assert all(r.relations == [] and r.problems == [NO_RELATIONS] for r in records)
        if "spurious_token_game_train" in path.name:
            assert summary.phrases_missing == 0 and summary.rows_with_problems == 0


def test_reference_rows_all_come_out_and_no_span_splits_a_word(reference_data: Path) -> None:
    """Every input row is converted or quarantined; no stored span starts or ends inside a word
    or a number. The reference behaviour (boundary 'none') does split words in these files."""
    split_before = 0
    for path in sorted(reference_data.glob("*/*.jsonl")):
        lines = sum(1 for line in path.read_text().splitlines() if line.strip())
        result = convert_source(path)
        assert len(result.records) + len(result.quarantined) == lines, path
        for row in result.records:
            for relation in row.relations:
                for span in (relation.effect, *relation.causes):
                    assert not _splits(row.text, span.start), (path.name, row.id, span)
                    assert not _splits(row.text, span.end), (path.name, row.id, span)
        for row in convert_source(path, boundary="none").records:
            spans = {(s.start, s.end) for r in row.relations for s in (r.effect, *r.causes)}
            split_before += sum(_splits(row.text, s) or _splits(row.text, e) for s, e in spans)
    assert split_before > 0


def _convert(tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str]) -> tuple:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.parquet"
    code = main(["convert", str(path), "--out", str(out)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured, path, out


GOOD = '{"input": "Smoking: 8 Answer: ", "target": "High", "important": [{"High": ["Smoking: 8"]}]}'


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("not json", "invalid JSON"),
        ('{"target": "b"}', "missing field 'input'"),
        ('{"input": ["a"], "target": "b"}', "field 'input' must be text"),
        ('{"input": "a", "target": {"x": 1}}', "field 'target' must be text"),
        ('{"input": "", "target": "b"}', "field 'input' is empty"),
        ("[1]", "expected a JSON object"),
        ('{"input": "\\ud800", "target": "b"}', "surrogate"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"input": "a", "target": ' + "9" * 5000 + "}", "invalid JSON"),
    ],
)
def test_a_malformed_row_is_quarantined_and_the_rest_converted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str, needle: str
) -> None:
    code, captured, _, out = _convert(tmp_path, capsys, [GOOD, bad, GOOD])
    assert code == 0, captured.err
    assert "wrote 2 rows" in captured.out and "quarantined 1 malformed rows" in captured.out
    assert len(_read(out)) == 2
    (row,) = from_table(pq.read_table(tmp_path / "out.quarantine.parquet"), QuarantinedExample)
    assert row.error.startswith("malformed source row: ") and needle in row.error
    assert row.error.endswith("(row 2)") and row.prompt == bad and row.meta.extra["line"] == "2"


@pytest.mark.parametrize(
    ("important", "needle"),
    [
        ("5", "expected an object or a list of relations, got int"),
        ('"nonsense"', "expected an object or a list of relations, got str"),
        ('[{"High": [1]}]', "must be strings"),
        ('[{"High": ["Smoking: 8"]}, 3]', "each relation must be an object"),
        # the shape of a published row: a nested object where the causes belong
        (
            '[{"Smoking: 8 Answer: ": {"High": ["Smoking: 8"]}}, {"High": ["Smoking: 8"]}]',
            "got a nested object",
        ),
    ],
)
def test_a_malformed_relation_keeps_its_row_with_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], important: str, needle: str
) -> None:
    bad = '{"input": "Smoking: 8 Answer: ", "target": "High", "important": ' + important + "}"
    code, captured, _, out = _convert(tmp_path, capsys, [GOOD, bad])
    assert code == 0, captured.err
    assert "problem: malformed_relations" in captured.out
    good, kept = _read(out)
    assert kept.problems[0].startswith("field 'important': ") and needle in kept.problems[0]
    # what was well formed still aligns
    assert kept.relations == (good.relations if 'Smoking: 8"]}' in important else [])


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (["[1]", "[2]"], "not JSON Lines"),
        (json.dumps([json.loads(GOOD)] * 2, indent=2).splitlines(), "not JSON Lines"),
        (["hello", "world"], "not JSON Lines"),
        (['{"target": "b"}', '{"question": "a"}'], "no usable columns"),
    ],
)
def test_whole_file_faults_stop_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], needle: str
) -> None:
    code, captured, path, out = _convert(tmp_path, capsys, lines)
    assert code == 2
    err = captured.err.strip()
    assert err.startswith(f"cattune: error: {path}: ") and needle in err and "\n" not in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind either


def test_fixture_bad_json_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.parquet"
    assert main(["convert", str(DATA / "cat_bad_json.jsonl"), "--out", str(out)]) == 0
    assert "wrote 1 rows" in capsys.readouterr().out
    (bad,) = from_table(pq.read_table(tmp_path / "o.quarantine.parquet"), QuarantinedExample)
    assert "invalid JSON" in bad.error and "(row 2)" in bad.error
    missing = tmp_path / "nope.jsonl"
    assert main(["convert", str(missing), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_boundary_option_restores_substring_matching(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = (
        '{"input": "The cat has 15 apples. Answer: ", "target": "5", "important": [{"5": ["he"]}]}'
    )
    path = tmp_path / "b.jsonl"
    path.write_text(line + "\n")
    for boundary, links in (("word", set()), ("none", {("5", "he")})):
        out = tmp_path / f"{boundary}.parquet"
        assert main(["convert", str(path), "--out", str(out), "--boundary", boundary]) == 0
        (row,) = _read(out)
        linked = {
            (r.effect.text(row.text), c.text(row.text)) for r in row.relations for c in r.causes
        }
        assert linked == links
    word = _read(tmp_path / "word.parquet")[0]
    assert any("occurs only inside longer words" in p for p in word.problems)
    assert word.annotation.config_hash != _read(tmp_path / "none.parquet")[0].annotation.config_hash
    capsys.readouterr()
