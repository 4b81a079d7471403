"""PriorAnnotator: rules -> anchored spans, quarantine when nothing is found, agreement with STG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cattune.annotators.base import GIVEN_RELATIONS_KEY, Annotator
from cattune.annotators.given import GoldAnnotator
from cattune.annotators.pack import load_pack
from cattune.annotators.prior import PriorAnnotator
from cattune.annotators.quality import evaluate
from cattune.annotators.registry import KINDS, get_annotator
from cattune.pipeline.stg import generate_stg
from cattune.schemas import (
    AnnotatedExample,
    ConfigError,
    Example,
    Meta,
    QuarantinedExample,
    parse_phrase_relations,
)

PRIOR = PriorAnnotator()


def _phrases(row: AnnotatedExample) -> list[tuple[str, list[str]]]:
    text = row.text
    return [(r.effect.text(text), [c.text(text) for c in r.causes]) for r in row.relations]


def test_is_an_annotator_with_provenance() -> None:
    assert isinstance(PRIOR, Annotator)
    example = Example.create("Tom has 3 apples and buys 4 more. How many apples now?", " 7")
    (row,) = PRIOR.annotate([example])
    assert isinstance(row, AnnotatedExample)
    pack = load_pack("math-word-problems")
    assert row.annotation.annotator == "prior"
    assert row.annotation.annotator_version == PRIOR.version
    assert (row.annotation.pack, row.annotation.pack_hash) == (pack.name, pack.content_hash)
    assert row.annotation.config_hash == PRIOR.config_hash()
    assert PriorAnnotator("math-word-problems").config_hash() != PRIOR.config_hash()


def test_mawps_answer_is_caused_by_quantities_and_question() -> None:
    example = Example.create(
        "Ruth starts with 89 apples. She shares 5 with Peter. How many apples does Ruth end with?",
        "Answer: 84.0",
    )
    (row,) = PriorAnnotator("math-word-problems").annotate([example])
    relations = dict(_phrases(row))
    assert set(relations["84.0"]) >= {"89 apples", "5", "How many apples", "Answer"}
    assert relations["89 apples"] == ["Ruth starts with"]
    assert relations["Answer"] == ["How many apples", "Ruth end with"]


def test_gsm8k_final_answer_after_hashes_is_the_effect() -> None:
    pack = load_pack("math-word-problems")
    demo = pack.demonstrations[1]
    example = Example.create(demo.prompt, demo.completion)
    (row,) = PriorAnnotator(pack).annotate([example])
    final = [r for r in row.relations if r.effect.start >= len(example.prompt)]
    (relation,) = final
    assert relation.effect.text(row.text) == "72"
    assert row.text[relation.effect.start - 5 : relation.effect.start] == "#### "
    causes = [c.text(row.text) for c in relation.causes]
    assert "24 muffins" in causes and "How many muffins" in causes
    assert all(c.end <= len(example.prompt) for c in relation.causes)


def test_multiple_choice_links_question_and_chosen_option_only() -> None:
    example = Example.create(
        "Which gas do plants absorb?\n(A) oxygen\n(B) carbon dioxide\n(C) nitrogen\nAnswer:", " B"
    )
    (row,) = PRIOR.annotate([example])
    assert row.annotation.pack == "multiple-choice"
    assert _phrases(row) == [("B", ["Which gas do plants absorb", "carbon dioxide"])]


def test_causes_are_the_causal_items_only() -> None:
    # 3.4 occurs in a causal and a spurious item; only the causal item is linked.
    prompt = (
        "Industrial Emissions: 3.4; Vehicle Emissions: 2; Coal Dependency: 1%; Agricultural "
        "Burning: 5; Urban Green Coverage: 6%; Meteorological Dispersion: 7. Allergy Complaints "
        "Level: 3.4. What is the AQI? Answer: "
    )
    example = Example.create(prompt, "40")
    (row,) = PRIOR.annotate([example])
    (relation,) = row.relations
    assert relation.effect.text(row.text) == "Answer: 40"
    causes = [cause.text(row.text) for cause in relation.causes]
    assert causes[0] == "Industrial Emissions: 3.4"
    assert len(causes) == 6
    assert not any("Allergy" in cause for cause in causes)


def test_nothing_found_is_quarantined_with_reasons() -> None:
    rows = PRIOR.annotate([Example.create("Say hello.", "Hello!")])
    (row,) = rows
    assert isinstance(row, QuarantinedExample)
    assert not row.relations
    for name in ("key-value-records", "multiple-choice", "math-word-problems"):
        assert f"pack {name!r}" in row.error
    assert "--pack" in row.error


texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80)


@given(st.lists(st.tuples(texts, texts), min_size=1, max_size=5))
def test_any_text_gives_one_valid_result_per_row(pairs: list[tuple[str, str]]) -> None:
    examples = [Example.create(p, c) for p, c in pairs]
    rows = PRIOR.annotate(examples)
    assert [r.id for r in rows] == [e.id for e in examples]
    for row in rows:
        assert isinstance(row, QuarantinedExample) or row.relations
        if isinstance(row, QuarantinedExample):
            assert row.error


CAUSES = ["Smoking", "Weight", "Exercise"]
OTHERS = ["Yellow fingers", "Clothing size", "Hormones", "Certain gene", "Room size"]


@given(
    st.permutations(CAUSES + OTHERS),
    st.lists(st.integers(0, 15), min_size=8, max_size=8),
    st.sampled_from(["High Risk", "Low Risk"]),
)
def test_stg_records_link_exactly_the_causal_items(
    order: list[str], values: list[int], label: str
) -> None:
    items = ", ".join(f"{k}: {v}" for k, v in zip(order, values, strict=True))
    prompt = f"Here is the statistical data for a person. {items} Answer: "
    (row,) = PRIOR.annotate([Example.create(prompt, label)])
    (relation,) = row.relations
    assert relation.effect.text(row.text) == label
    expected = sorted(
        (prompt.index(f"{k}: {v}"), f"{k}: {v}")
        for k, v in zip(order, values, strict=True)
        if k in CAUSES
    )
    assert [(c.start, c.text(row.text)) for c in relation.causes] == expected


def _gold(path: Path) -> list[AnnotatedExample]:
    examples = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        wire = [r.model_dump() for r in parse_phrase_relations(record["important"])]
        meta = Meta(extra={GIVEN_RELATIONS_KEY: json.dumps({"relations": wire})})
        examples.append(Example.create(record["input"], str(record["target"]), meta))
    rows = GoldAnnotator().annotate(examples)
    return [r for r in rows if isinstance(r, AnnotatedExample)]


def test_agrees_with_the_authors_stg_labels(reference_data: Path) -> None:
    gold = _gold(reference_data / "STG/spurious_token_game_train3.jsonl")
    assert len(gold) > 1000
    report = evaluate(PRIOR.annotate(gold), gold)
    assert report.coverage == 1.0
    assert report.exact.f1 >= 0.95
    assert report.exact.precision == 1.0


def test_agrees_with_the_authors_stg_h_value_labels_at_token_level(reference_data: Path) -> None:
    # The authors label bare values ("47.9"); the pack labels whole items, as the generator's gold.
    gold = _gold(reference_data / "STG_H/STG_H_train.jsonl")
    report = evaluate(PRIOR.annotate(gold), gold)
    assert report.coverage == 1.0
    assert report.overlap.f1 >= 0.95


@pytest.mark.parametrize("variant", ["stg", "stg_h"])
def test_matches_the_generators_gold_exactly(variant: str) -> None:
    gold = generate_stg(variant, seed=3, n_train=300, n_test=1)["train"]
    report = evaluate(PRIOR.annotate(gold), gold)
    assert report.exact.f1 >= 0.95


def test_registry_builds_each_kind_and_rejects_unknown_ones() -> None:
    assert "vllm" in KINDS
    assert isinstance(get_annotator("prior", pack="multiple-choice"), PriorAnnotator)
    assert get_annotator("gold").name == "gold"
    assert (
        get_annotator("given", strategy="nearest").config_hash()
        != get_annotator("given").config_hash()
    )
    with pytest.raises(ConfigError, match="prior, given, gold, llm, vllm"):
        get_annotator("oracle")
    with pytest.raises(ConfigError, match="takes no prior pack"):
        get_annotator("gold", pack="math-word-problems")
    with pytest.raises(ConfigError, match=r"temperature do\(es\) not apply to --annotator prior"):
        get_annotator("prior", temperature=0.1)


@pytest.mark.parametrize("variant", ["stg", "stg_h"])
def test_agrees_with_the_stg_generator_gold_in_and_out_of_distribution(variant: str) -> None:
    from cattune.pipeline.stg import generate_stg

    for split, gold in generate_stg(variant, seed=7, n_train=200, n_test=200).items():
        report = evaluate(PRIOR.annotate(gold), gold)
        assert report.coverage == 1.0, split
        # The generator labels STG_H causes as whole items, the pack (like the authors) as values.
        level = report.exact if variant == "stg" else report.overlap
        assert level.f1 == 1.0, split
