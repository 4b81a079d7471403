"""Pair voting over several annotators, its per-row agreement, the CLI, and MAWPS as it ships."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cattune.annotators.quality import evaluate, pairs
from cattune.flows.cli import main
from cattune.pipeline.aggregate import Source, aggregate, pair_f1, precision_weights
from cattune.pipeline.convert import convert_source
from cattune.pipeline.review import AGREEMENT_KEY
from cattune.pipeline.store import DatasetStore
from cattune.schemas import AnnotatedExample, ConfigError, Relation, Span
from tests.review_helpers import rows


def relabel(row: AnnotatedExample, *pairs_: tuple[str, str]) -> AnnotatedExample:
    """The row with exactly the given (effect phrase, cause phrase) pairs (first occurrences)."""
    text = row.text

    def span(phrase: str) -> Span:
        start = text.index(phrase)
        return Span(start=start, end=start + len(phrase))

    relations = [Relation(effect=span(e), causes=[span(c)]) for e, c in pairs_]
    return row.model_copy(update={"relations": relations})


EMOJI = rows()[0]
A = ("7", "bakes 12 cakes")
B = ("7", "sells 5")
C = ("sells 5", "bakes 12 cakes")


def test_majority_keeps_pairs_most_annotators_chose() -> None:
    voted = aggregate(
        [
            Source(name="x", rows=[relabel(EMOJI, A, B)]),
            Source(name="y", rows=[relabel(EMOJI, A, C)]),
            Source(name="z", rows=[relabel(EMOJI, A)]),
        ]
    )
    assert len(voted) == 1
    assert pairs(voted[0].relations) == pairs(relabel(EMOJI, A).relations)
    # pairwise exact F1: x-y 2*1/4, x-z 2*1/3, y-z 2*1/3
    expected = (0.5 + 2 / 3 + 2 / 3) / 3
    assert voted[0].meta.extra[AGREEMENT_KEY] == f"{expected:.4f}"
    assert voted[0].meta.extra["agreement_voters"] == "x,y,z"
    assert voted[0].annotation.annotator == "vote"
    assert (voted[0].id, voted[0].text) == (EMOJI.id, EMOJI.text)


def test_weights_decide_between_two_annotators() -> None:
    sources = [
        Source(name="careful", rows=[relabel(EMOJI, A, B)]),
        Source(name="sloppy", rows=[relabel(EMOJI, C)]),
    ]
    assert aggregate(sources)[0].relations == []  # one of two is no majority
    heavy = aggregate(sources, {"careful": 0.9, "sloppy": 0.2})
    assert pairs(heavy[0].relations) == pairs(relabel(EMOJI, A, B).relations)
    assert heavy[0].meta.extra[AGREEMENT_KEY] == "0.0000"


def test_precision_on_reviewed_rows_becomes_the_weight() -> None:
    reviewed = [relabel(EMOJI, A, B)]
    sources = [
        Source(name="half", rows=[relabel(EMOJI, A, C)]),
        Source(name="right", rows=[relabel(EMOJI, A, B)]),
    ]
    assert precision_weights(sources, reviewed) == {"half": 0.5, "right": 1.0}


def test_rows_missing_from_a_source_are_voted_by_the_others() -> None:
    other = rows()[1]
    voted = aggregate(
        [
            Source(name="x", rows=[relabel(EMOJI, A), other]),
            Source(name="y", rows=[relabel(EMOJI, A)]),
        ]
    )
    by_id = {row.id: row for row in voted}
    assert by_id[other.id].relations == other.relations
    assert by_id[other.id].meta.extra["agreement_voters"] == "x"
    assert by_id[other.id].meta.extra[AGREEMENT_KEY] == "1.0000"


@pytest.mark.parametrize(
    ("names", "weights", "message"),
    [
        (["x"], None, "at least two sources"),
        (["x", "x"], None, "distinct names"),
        (["x", "y"], {"x": -1.0}, "weights must be >= 0"),
        (["x", "y"], {"x": 0.0, "y": 0.0}, "not all 0"),
    ],
)
def test_bad_aggregations_are_config_errors(
    names: list[str], weights: dict[str, float] | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        aggregate([Source(name=n, rows=[EMOJI]) for n in names], weights)


def test_pair_f1_of_two_empty_sets_is_full_agreement() -> None:
    assert pair_f1(set(), set()) == 1.0
    assert pair_f1(set(), pairs(EMOJI.relations)) == 0.0


def test_cli_aggregates_then_exports_the_disagreements(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store")
    base = rows()
    store.write("one", base)
    store.write("two", [base[0], *(relabel(r) for r in base[1:])])  # only row 0 keeps labels
    root = str(store.root)
    assert main(["review", "aggregate", "voted", "one@0", "two", "--store", root]) == 0
    voted = {row.id: row for row in store.read("voted")}
    assert voted[base[0].id].meta.extra[AGREEMENT_KEY] == "1.0000"
    assert {voted[r.id].meta.extra[AGREEMENT_KEY] for r in base[1:]} == {"0.0000"}
    assert [c.lineage.source for c in store.history("voted")] == ["one@0 two"]
    out = tmp_path / "tasks.json"
    command = ["review", "export", "voted", "--disagreement", "--threshold", "0.5", "--out"]
    assert main([*command, str(out), "--store", root]) == 0
    exported = {task["data"]["cattune_id"] for task in json.loads(out.read_text("utf-8"))}
    assert exported == {r.id for r in base[1:]}


def test_glm4_and_gpt4o_labels_agree_as_the_issue_says(reference_data: Path) -> None:
    mawps = reference_data / "MAWPS"
    glm = convert_source(mawps / "mawps_train.jsonl").records
    gpt4o = convert_source(mawps / "mawps_train_gpt4o.jsonl").records
    score = evaluate(gpt4o, glm)
    assert score.rows == 1208
    assert round(score.exact.f1, 3) == 0.274
    voted = aggregate([Source(name="glm", rows=glm), Source(name="gpt4o", rows=gpt4o)])
    # two voters: a pair survives only when both chose it, so the vote is the intersection
    assert sum(len(pairs(r.relations)) for r in voted) == score.exact.matched_pred


def test_cli_weighs_sources_by_their_precision_on_reviewed_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = DatasetStore(tmp_path / "store")
    other = rows()[1]
    store.write("careful", [relabel(EMOJI, A, B), other])
    store.write("sloppy", [relabel(EMOJI, C), other])
    human = relabel(EMOJI, A, B).model_copy(
        update={"annotation": EMOJI.annotation.model_copy(update={"annotator": "human"})}
    )
    store.write("reviewed", [human, other])  # `other` is not human-reviewed: not counted
    root = str(store.root)
    command = ["review", "aggregate", "voted", "careful", "sloppy", "--weigh-by", "reviewed"]
    assert main([*command, "--store", root]) == 0
    assert "weights: careful=1.000, sloppy=0.000" in capsys.readouterr().out
    voted = {row.id: row for row in store.read("voted")}
    assert pairs(voted[EMOJI.id].relations) == pairs(human.relations)
