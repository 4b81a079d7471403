"""Reading source files: formats, per-row errors, whole-file errors, given relations."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import example as hypothesis_example
from hypothesis import strategies as st

from cattune.annotators.base import GIVEN_PROBLEMS_KEY, GIVEN_RELATIONS_KEY
from cattune.pipeline.sources import load_examples, read_source
from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    Example,
    InputError,
    Meta,
    Relation,
    Span,
    to_table,
)


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_pairs_meta_and_extra(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "a", "completion": "b", "split": "train", "label": 3, "ood": True},
            {"input": "x ", "target": 32, "type": "singleop", "idx": 7},
            {"question": "q?", "answer": "yes"},
        ],
    )
    rows = list(read_source(path, source_name="mine"))
    assert [r.line for r in rows] == [1, 2, 3]
    first, second, third = (r.example for r in rows)
    assert (first.prompt, first.completion) == ("a", "b")
    assert first.meta == Meta(source="mine", split="train", label="3", ood=True)
    assert second.completion == "32"  # STG_H integer targets compare as text
    assert second.meta.extra == {"type": "singleop", "idx": "7"}
    assert second.meta.source == "mine"
    assert (third.prompt, third.completion) == ("q?", "yes")
    assert first.id == Example.create("a", "b").id


def test_cat_important_becomes_wire_relations(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "cat.jsonl",
        [
            {"input": "S: 8 Answer: ", "target": "High", "important": [{"High": ["S: 8"]}]},
            {"input": "S: 1 Answer: ", "target": "Low", "important": []},
            {"input": "S: 2 Answer: ", "target": "Low"},
        ],
    )
    examples = load_examples(path, format="cat")
    wire = [e.meta.extra.get(GIVEN_RELATIONS_KEY) for e in examples]
    assert json.loads(wire[0]) == {"relations": [{"effect": "High", "causes": ["S: 8"]}]}
    assert json.loads(wire[1]) == {"relations": []}  # an empty label is kept, not dropped
    assert wire[2] is None
    assert load_examples(path) == examples  # auto detects the same


def test_reads_every_reference_file(reference_data: Path) -> None:
    for path in sorted(reference_data.glob("*/*.jsonl")):
        rows = list(read_source(path))
        expected = sum(1 for line in path.read_text().splitlines() if line.strip())
        assert len(rows) == expected, path
        assert all(r.example is not None for r in rows), path


def test_bad_rows_are_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [
        b'{"prompt": "ok", "completion": "fine"}',
        b'{"prompt": "broken"',
        b"[1, 2]",
        b'{"completion": "no prompt"}',
        b'{"prompt": "", "completion": "x"}',
        b'{"prompt": ["a"], "completion": "x"}',
        b'{"prompt": "caf\xe9", "completion": "x"}',
        b"",
        b'{"input": "p", "target": "t", "important": "nonsense"}',  # kept, with the problem
        b'{"prompt": "p", "completion": null}',
        b'{"prompt": "last", "completion": "good"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows = list(read_source(path))
    by_line = {r.line: r for r in rows}
    assert 8 not in by_line  # blank lines are skipped
    assert by_line[1].example is not None and by_line[11].example is not None
    expected = {
        2: "invalid JSON",
        3: "expected a JSON object, got list",
        4: "missing field 'prompt'",
        5: "field 'prompt' is empty",
        6: "field 'prompt' must be text",
        7: "not valid UTF-8",
        10: "missing field 'completion'",
    }
    for line, needle in expected.items():
        assert by_line[line].example is None
        assert needle in by_line[line].error, (line, by_line[line].error)
    assert by_line[2].raw == '{"prompt": "broken"'
    kept = by_line[9].example
    assert kept is not None and json.loads(kept.meta.extra[GIVEN_RELATIONS_KEY]) == {
        "relations": []
    }
    assert json.loads(kept.meta.extra[GIVEN_PROBLEMS_KEY]) == [
        "field 'important': expected an object or a list of relations, got str"
    ]
    with pytest.raises(InputError, match=r"bad\.jsonl:2: invalid JSON"):
        load_examples(path)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"\n  \n", "empty"),
        (b"\x00\x01\x02binary", "binary"),
    ],
)
def test_whole_file_problems_raise(tmp_path: Path, content: bytes | None, needle: str) -> None:
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=needle) as info:
        list(read_source(path))
    assert str(path) in str(info.value)


def test_empty_directory_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no \\*.parquet"):
        list(read_source(tmp_path))
    odd = tmp_path / "data.bin"
    odd.write_text("hello")
    with pytest.raises(InputError, match="pass the format"):
        list(read_source(odd))
    with pytest.raises(InputError, match="unknown format"):
        list(read_source(odd, format="xml"))  # type: ignore[arg-type]


def test_csv_multiline_big_field_and_errors(tmp_path: Path) -> None:
    big = "word " * 1_000_000  # a 5 MB prompt is a valid row
    path = tmp_path / "d.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "completion", "split"])
        writer.writerow(["two\nlines", "ok", "train"])
        writer.writerow([big, "done", ""])
        writer.writerow(["short row"])
    with path.open("ab") as handle:
        handle.write(b"bad \xff,x,train\n")
    rows = list(read_source(path))
    assert [r.line for r in rows] == [2, 4, 5, 6]
    assert rows[0].example.prompt == "two\nlines" and rows[0].example.meta.split == "train"
    assert rows[1].example.prompt == big and rows[1].example.meta.split is None
    assert "expected 3 columns" in rows[2].error
    assert "UTF-8" in rows[3].error


def test_csv_header_without_known_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,output\nhello,world\n")
    with pytest.raises(InputError, match="--prompt-field"):
        list(read_source(path))
    rows = list(read_source(path, prompt_field="text", completion_field="output"))
    assert (rows[0].example.prompt, rows[0].example.completion) == ("hello", "world")


def test_large_jsonl_streams(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    row = json.dumps({"prompt": "p" * 100, "completion": "c"}) + "\n"
    path.write_text(row * 100_000)  # ~12 MB
    tracemalloc.start()
    try:
        rows = read_source(path)
        first = [next(rows) for _ in range(10)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.line for r in first] == list(range(1, 11))
    assert peak < 1_000_000  # the file is not read into memory at once


def _annotated(prompt: str, completion: str) -> AnnotatedExample:
    text = prompt + completion
    effect = text.index("High")
    cause = text.index("S: 8")
    return AnnotatedExample(
        id=Example.create(prompt, completion).id,
        prompt=prompt,
        completion=completion,
        meta=Meta(source="gen", split="train", label="High"),
        relations=[
            Relation(
                effect=Span(start=effect, end=effect + 4),
                causes=[Span(start=cause, end=cause + 4)],
            )
        ],
        annotation=Annotation(annotator="gold", annotator_version="1"),
    )


def test_contract_parquet_file_and_directory(tmp_path: Path) -> None:
    records = [_annotated("S: 8 W: 1 Answer: ", "High"), _annotated("x S: 8 Answer: ", "High")]
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(to_table(records[:1], AnnotatedExample), data / "part-0.parquet")
    pq.write_table(to_table(records[1:], AnnotatedExample), data / "part-1.parquet")
    rows = list(read_source(data))
    assert [r.line for r in rows] == [1, 2]
    for row, record in zip(rows, records, strict=True):
        assert row.example.id == record.id
        assert row.example.meta.split == "train" and row.example.meta.source == "gen"
        wire = json.loads(row.example.meta.extra[GIVEN_RELATIONS_KEY])
        assert wire == {"relations": [{"effect": "High", "causes": ["S: 8"]}]}
    single = list(read_source(data / "part-1.parquet", format="contract"))
    assert single[0].example == rows[1].example


def test_contract_jsonl_with_span_or_phrase_relations(tmp_path: Path) -> None:
    record = _annotated("S: 8 Answer: ", "High")
    spans = json.loads(record.model_dump_json())
    phrases = {
        "prompt": "S: 8 Answer: ",
        "completion": "High",
        "relations": [{"effect": "High", "causes": ["S: 8"]}],
    }
    cat_form = {**phrases, "relations": [{"High": ["S: 8"]}]}
    bad = {**spans, "relations": [{"effect": {"start": 0, "end": 99}, "causes": []}]}
    path = _write_jsonl(tmp_path / "c.jsonl", [spans, phrases, cat_form, bad])
    rows = list(read_source(path))
    wanted = {"relations": [{"effect": "High", "causes": ["S: 8"]}]}
    for row in rows[:3]:
        assert row.example.id == record.id
        assert json.loads(row.example.meta.extra[GIVEN_RELATIONS_KEY]) == wanted
    assert rows[0].example.meta == record.meta.model_copy(
        update={"extra": {GIVEN_RELATIONS_KEY: json.dumps(wanted)}}
    )
    assert rows[3].example is None and "field 'relations'" in rows[3].error


def test_parquet_plain_columns_and_bad_rows(tmp_path: Path) -> None:
    table = pa.table({"input": ["a", None, "c"], "target": [1, 2, 3], "idx": [1, 2, 3]})
    path = tmp_path / "plain.parquet"
    pq.write_table(table, path)
    rows = list(read_source(path))
    assert rows[0].example.completion == "1" and rows[0].example.meta.extra == {"idx": "1"}
    assert rows[1].example is None and "missing field 'input'" in rows[1].error
    assert json.loads(rows[1].raw) == {"input": None, "target": 2, "idx": 2}
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable Parquet"):
        list(read_source(garbage))


def test_hugging_face_save_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = {"question": ["1+1?", "2+2?"], "answer": ["2", "4"], "split": ["train", "train"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "single"))
    examples = load_examples(tmp_path / "single")
    assert [(e.prompt, e.completion, e.meta.split) for e in examples] == [
        ("1+1?", "2", "train"),
        ("2+2?", "4", "train"),
    ]
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"prompt": ["a", "b"], "completion": ["1", "2"]}),
            "test": datasets.Dataset.from_dict({"prompt": ["c"], "completion": ["3"]}),
        }
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    read = list(read_source(tmp_path / "dict"))
    assert sorted((r.example.prompt, r.example.meta.split) for r in read) == [
        ("a", "train"),
        ("b", "train"),
        ("c", "test"),
    ]
    assert sorted(r.line for r in read) == [1, 2, 3]


# NUL bytes mark a file as binary, so generated text leaves them out.
texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=texts.filter(lambda t: t != ""), completion=texts)
def test_text_round_trips_through_jsonl_and_csv(
    tmp_path: Path, prompt: str, completion: str
) -> None:
    jsonl = _write_jsonl(tmp_path / "h.jsonl", [{"prompt": prompt, "completion": completion}])
    (row,) = read_source(jsonl)
    assert (row.example.prompt, row.example.completion) == (prompt, completion)
    path = tmp_path / "h.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["prompt", "completion"], [prompt, completion]])
    rows = list(read_source(path))
    if not prompt.strip() and not completion.strip():
        assert rows == []  # a blank CSV record is skipped like a blank line
    else:
        assert (rows[0].example.prompt, rows[0].example.completion) == (prompt, completion)


def test_malformed_relations_keep_the_row_and_the_well_formed_part(tmp_path: Path) -> None:
    nested = {"S: 8 Answer: ": {"High": ["S: 8"]}}  # a nested object where causes belong
    path = _write_jsonl(
        tmp_path / "cat.jsonl",
        [
            {"input": "S: 8 Answer: ", "target": "High", "important": [nested, {"High": ["S: 8"]}]},
            {"prompt": "S: 8 ", "completion": "High", "relations": [{"High": ["S: 8", 7]}]},
        ],
    )
    first, second = (row.example for row in read_source(path))
    wanted = {"relations": [{"effect": "High", "causes": ["S: 8"]}]}
    for example, field in ((first, "important"), (second, "relations")):
        assert example is not None
        assert json.loads(example.meta.extra[GIVEN_RELATIONS_KEY]) == wanted
        (problem,) = json.loads(example.meta.extra[GIVEN_PROBLEMS_KEY])
        assert problem.startswith(f"field {field!r}: ")
    assert "got a nested object" in json.loads(first.meta.extra[GIVEN_PROBLEMS_KEY])[0]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ('{"prompt": "a", "completion": ' + "1" * 5000 + "}", "invalid JSON"),
        ('{"prompt": "\\udc00 lone", "completion": "b"}', "surrogate"),
        ('{"prompt": "a", "completion": "b", "split": "\\ud83d"}', "surrogate"),
    ],
)
def test_exotic_rows_are_reported_not_raised(tmp_path: Path, line: str, needle: str) -> None:
    good = '{"prompt": "a \\ud83d\\ude00", "completion": "b"}'  # a surrogate pair is fine
    path = tmp_path / "d.jsonl"
    path.write_text(f"{good}\n{line}\n{good}\n")
    rows = list(read_source(path))
    assert [r.example is not None for r in rows] == [True, False, True]
    assert rows[0].example.prompt == "a 😀"
    assert needle in rows[1].error


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[1, 2]\n[3]\n", "not JSON Lines"),
        ('{\n  "prompt": "a",\n  "completion": "b"\n}\n', "not JSON Lines"),
        ("prompt,completion\na,b\n", "not JSON Lines"),
        ('{"text": "a", "output": "b"}\n{"text": "c"}\n', "no usable columns"),
    ],
)
def test_whole_file_faults_raise_one_error(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=needle) as info:
        next(read_source(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_whole_file_checks_look_at_the_first_lines_only_for_objects(tmp_path: Path) -> None:
    """One bad first line, or first rows missing a column, do not condemn the file."""
    path = tmp_path / "d.jsonl"
    path.write_text('not json\n{"completion": "x"}\n{"prompt": "a", "completion": "b"}\n')
    assert [r.example is not None for r in read_source(path)] == [False, False, True]
    cat = tmp_path / "c.jsonl"
    cat.write_text('{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(InputError, match="input/target"):
        list(read_source(cat, format="cat"))
    rows = list(read_source(cat, prompt_field="prompt", completion_field="completion"))
    assert rows[0].example is not None


def test_parquet_without_usable_columns_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["a"], "output": ["b"]}), path)
    with pytest.raises(InputError, match="no usable columns"):
        list(read_source(path))
    assert list(read_source(path, prompt_field="text", completion_field="output"))[0].example


_FIELD_NAMES = ["input", "target", "important", "prompt", "completion", "relations", "meta", "id"]
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(st.characters(blacklist_characters="\x00"), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(_FIELD_NAMES) | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.dictionaries(st.sampled_from(_FIELD_NAMES), _json, max_size=5) | _json, max_size=6
    ),
    format=st.sampled_from(["auto", "cat", "contract"]),
)
@hypothesis_example(rows=[{"relations": "", "input": "0", "target": 0}], format="auto")  # CI
def test_no_row_content_aborts_a_file(tmp_path: Path, rows: list[object], format: str) -> None:
    """Whatever the rows hold, reading never raises after the whole-file checks, and every
    non-blank line gives exactly one SourceRow (an example, or an error and the raw line)."""
    first = {"input": "a", "target": "b", "prompt": "a", "completion": "b", "important": []}
    path = _write_jsonl(tmp_path / "fuzz.jsonl", [first, *rows])
    out = list(read_source(path, format=format))  # type: ignore[arg-type]
    assert len(out) == 1 + len(rows)
    for row in out:
        assert (row.example is None) == (row.error is not None)
        if row.example is not None:
            json.loads(row.example.meta.extra.get(GIVEN_RELATIONS_KEY, "{}"))
            to_table([row.example], Example)  # storable: Parquet rejects what JSON allowed


def test_a_relations_field_of_a_plain_row_is_read_as_given_relations(tmp_path: Path) -> None:
    """Kept under the same key as the CAT field's relations, so it must become wire JSON."""
    wire = {"relations": [{"effect": "b", "causes": ["a"]}]}
    rows = [
        {"input": "a", "target": "b", "relations": wire},
        {"input": "a", "target": "c", "relations": ""},
        {"input": "a", "target": "d", "relations": wire, "important": {"d": ["a"]}},
    ]
    good, bad_value, both = read_source(_write_jsonl(tmp_path / "r.jsonl", rows), format="auto")
    assert json.loads(good.example.meta.extra[GIVEN_RELATIONS_KEY]) == wire
    assert json.loads(bad_value.example.meta.extra[GIVEN_RELATIONS_KEY]) == {"relations": []}
    assert json.loads(bad_value.example.meta.extra[GIVEN_PROBLEMS_KEY]) == [
        "field 'relations': expected an object or a list of relations, got str"
    ]
    assert both.example is None
    assert "fields 'important' and 'relations' both give relations" in both.error
