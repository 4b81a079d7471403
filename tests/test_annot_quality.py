"""Quality: pair-level P/R/F1 (exact and word-overlap), coverage, and `cattune annotators eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cattune.annotators.prior import PriorAnnotator
from cattune.annotators.quality import evaluate, pairs
from cattune.flows.cli import main
from cattune.schemas import (
    ANNOTATED_SCHEMA,
    AnnotatedExample,
    Annotation,
    Example,
    Relation,
    Span,
    to_table,
)

TEXT_PROMPT = "Tom has 3 red apples and 4 green pears. How many fruits? Answer: "
ANNOTATION = Annotation(annotator="test", annotator_version="0")


def _labelled(relations: list[tuple[tuple[int, int], list[tuple[int, int]]]]) -> AnnotatedExample:
    example = Example.create(TEXT_PROMPT, "7")
    return AnnotatedExample(
        **example.model_dump(),
        relations=[
            Relation(effect=Span(start=e[0], end=e[1]), causes=[Span(start=s, end=t) for s, t in c])
            for e, c in relations
        ],
        annotation=ANNOTATION,
    )


def _at(phrase: str) -> tuple[int, int]:
    start = (TEXT_PROMPT + "7").index(phrase)
    return (start, start + len(phrase))


ANSWER = (len(TEXT_PROMPT), len(TEXT_PROMPT) + 1)


def test_exact_and_overlap_levels() -> None:
    gold = _labelled([(ANSWER, [_at("3 red apples"), _at("4 green pears")])])
    # "3 red" overlaps "3 red apples" by two words; "Tom" overlaps nothing in gold.
    pred = _labelled([(ANSWER, [_at("3 red"), _at("4 green pears"), _at("Tom")])])
    report = evaluate([pred], [gold])
    assert (report.pred_pairs, report.gold_pairs) == (3, 2)
    assert report.exact.precision == pytest.approx(1 / 3)
    assert report.exact.recall == pytest.approx(1 / 2)
    assert report.exact.f1 == pytest.approx(0.4)
    assert report.overlap.precision == pytest.approx(2 / 3)
    assert report.overlap.recall == 1.0
    assert report.coverage == 1.0


def test_overlap_needs_a_shared_word_not_just_adjacency() -> None:
    gold = _labelled([(ANSWER, [_at("red")])])
    pred = _labelled([(ANSWER, [_at("3 ")])])  # touches "red"'s neighbour only
    assert evaluate([pred], [gold]).overlap.matched_pred == 0


def test_missing_and_extra_rows() -> None:
    gold = _labelled([(ANSWER, [_at("Tom")])])
    other = AnnotatedExample(
        **Example.create("x", "y").model_dump(), relations=[], annotation=ANNOTATION
    )
    report = evaluate([other], [gold])
    assert report.missing_pred == 1 and report.unmatched_pred == 1
    assert report.coverage == 0.0 and report.exact.recall == 0.0 and report.exact.f1 == 0.0


spans = st.tuples(st.integers(0, 40), st.integers(1, 10)).map(lambda t: (t[0], t[0] + t[1]))
relation_sets = st.lists(
    st.tuples(st.just(ANSWER), st.lists(spans, min_size=1, max_size=4)), max_size=3
)


@given(relation_sets, relation_sets)
def test_scores_are_bounded_and_overlap_dominates_exact(pred_r: list, gold_r: list) -> None:
    pred, gold = _labelled(pred_r), _labelled(gold_r)
    report = evaluate([pred], [gold])
    for score in (report.exact, report.overlap):
        assert 0.0 <= score.precision <= 1.0 and 0.0 <= score.recall <= 1.0
    assert report.overlap.matched_gold >= report.exact.matched_gold
    assert report.exact.matched_pred == len(pairs(pred.relations) & pairs(gold.relations))
    if gold.relations:
        assert evaluate([gold], [gold]).exact.f1 == 1.0


def _cat_file(path: Path, rows: list[tuple[str, str, list]]) -> Path:
    with path.open("w") as out:
        for prompt, target, important in rows:
            out.write(json.dumps({"input": prompt, "target": target, "important": important}))
            out.write("\n")
    return path


STG = "Smoking: 8, Weight: 4, Exercise: 2, Yellow fingers: 12 Answer: "


def test_cli_scores_parquet_predictions_against_cat_gold(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    gold = _cat_file(
        tmp_path / "gold.jsonl",
        [
            (STG, "High Risk", [{"High Risk": ["Smoking: 8", "Weight: 4", "Exercise: 2"]}]),
            ("Smoking: 1, Weight: 2, Exercise: 9 Answer: ", "Low Risk", [{"Low Risk": ["x"]}]),
        ],
    )
    examples = [Example.create(STG, "High Risk")]
    rows = PriorAnnotator("key-value-records").annotate(examples)
    pred = tmp_path / "pred.parquet"
    pq.write_table(to_table(rows, AnnotatedExample).cast(ANNOTATED_SCHEMA), pred)
    assert main(["annotators", "eval", "--pred", str(pred), "--gold", str(gold), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 2 and report["missing_pred"] == 1
    assert report["exact"]["precision"] == 1.0 and report["coverage"] == 0.5

    assert main(["annotators", "eval", "--annotator", "prior", "--gold", str(gold)]) == 0
    table = capsys.readouterr().out
    assert "exact" in table and "overlap" in table and "coverage 1.000" in table


def test_cli_reads_contract_jsonl_and_reports_user_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = PriorAnnotator().annotate([Example.create(STG, "High Risk")])
    contract = tmp_path / "rows.jsonl"
    contract.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    args = ["annotators", "eval", "--pred", str(contract), "--gold", str(contract), "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["exact"]["f1"] == 1.0

    assert main(["annotators", "eval", "--annotator", "prior", "--gold", "/no/such.jsonl"]) == 2
    assert "does not exist" in capsys.readouterr().err
    args = ["annotators", "eval", "--annotator", "gold", "--pack", "x", "--gold", str(contract)]
    assert main(args) == 2
    assert "--pack only applies" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    assert main(["annotators", "eval", "--annotator", "prior", "--gold", str(broken)]) == 2
    assert "broken.jsonl:1" in capsys.readouterr().err
