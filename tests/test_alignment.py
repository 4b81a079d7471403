"""Phrase -> span alignment, including the property that every span spells its phrase."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cattune.schemas import PhraseRelation, Span, align, find_occurrences, parse_phrase_relations


def _texts(text: str, result_spans: list[Span]) -> list[str]:
    return [text[s.start : s.end] for s in result_spans]


def test_all_strategy_links_every_preceding_cause_occurrence() -> None:
    text = "x=1. x=1 again. so y"
    result = align(text, [PhraseRelation(effect="y", causes=["x=1"])])
    assert not result.problems
    (relation,) = result.relations
    assert relation.effect == Span(start=19, end=20)
    assert relation.causes == [Span(start=0, end=3), Span(start=5, end=8)]


def test_nearest_strategy_links_only_the_closest_preceding_occurrence() -> None:
    text = "x=1. x=1 again. so y"
    result = align(text, [PhraseRelation(effect="y", causes=["x=1"])], strategy="nearest")
    assert result.relations[0].causes == [Span(start=5, end=8)]


def test_each_effect_occurrence_gets_only_causes_before_it() -> None:
    text = "E a E b E"
    result = align(text, [PhraseRelation(effect="E", causes=["a", "b"])])
    by_effect = {r.effect.start: _texts(text, r.causes) for r in result.relations}
    assert by_effect == {4: ["a"], 8: ["a", "b"]}
    assert not result.problems  # the first E has no cause before it; later ones do


def test_problems_name_what_did_not_align() -> None:
    text = "effect first, cause later"
    result = align(
        text,
        [
            PhraseRelation(effect="effect", causes=["cause", "missing"]),
            PhraseRelation(effect="absent", causes=["cause"]),
            PhraseRelation(effect="later", causes=[""]),
        ],
    )
    kinds = sorted(p.kind for p in result.problems)
    assert kinds == [
        "cause_not_before_effect",
        "cause_not_found",
        "effect_not_found",
        "empty_phrase",
    ]
    assert result.relations == []
    assert any("'missing'" in p.message for p in result.problems)


def test_phrases_at_the_very_start_and_end() -> None:
    text = "start middle end"
    result = align(text, parse_phrase_relations({"end": ["start"]}))
    assert _texts(text, result.relations[0].causes) == ["start"]
    assert result.relations[0].effect == Span(start=13, end=16)


def test_offsets_are_code_points_for_emoji_cjk_and_combining_marks() -> None:
    text = "🧪 e\u0301 漢字 -> 結果"
    result = align(text, [PhraseRelation(effect="結果", causes=["e\u0301", "漢字", "🧪"])])
    relation = result.relations[0]
    assert _texts(text, [relation.effect]) == ["結果"]
    assert _texts(text, relation.causes) == ["🧪", "e\u0301", "漢字"]
    assert relation.causes[1] == Span(start=2, end=4)


def test_overlapping_occurrences_are_found() -> None:
    assert find_occurrences("aaaa", "aa") == [0, 1, 2]


@pytest.mark.parametrize(
    "wire",
    [
        {"relations": [{"effect": "y", "causes": ["x"]}]},
        {"y": ["x"]},
        [{"y": ["x"]}],
        [{"effect": "y", "causes": ["x"]}],
        {"y": "x"},
    ],
)
def test_every_accepted_wire_form_parses_to_the_same_relations(wire: object) -> None:
    assert parse_phrase_relations(wire) == [PhraseRelation(effect="y", causes=["x"])]


@pytest.mark.parametrize("wire", ["text", 3, [1], {"y": [1]}, {"y": None}])
def test_malformed_wire_forms_are_rejected(wire: object) -> None:
    with pytest.raises(ValueError):
        parse_phrase_relations(wire)


_alphabet = st.sampled_from(list("ab 🧪漢é\u0301,"))


@given(
    text=st.text(alphabet=_alphabet, max_size=30),
    effect=st.text(alphabet=_alphabet, min_size=1, max_size=3),
    causes=st.lists(st.text(alphabet=_alphabet, min_size=1, max_size=3), max_size=3),
    strategy=st.sampled_from(["all", "nearest"]),
)
def test_every_span_spells_its_phrase_and_causes_precede_effects(
    text: str, effect: str, causes: list[str], strategy: str
) -> None:
    assume(causes)
    result = align(text, [PhraseRelation(effect=effect, causes=causes)], strategy=strategy)  # type: ignore[arg-type]
    for relation in result.relations:
        assert text[relation.effect.start : relation.effect.end] == effect
        for cause in relation.causes:
            assert text[cause.start : cause.end] in causes
            assert cause.end <= relation.effect.start
    if effect in text:
        missing = {p.cause for p in result.problems if p.kind == "cause_not_found"}
        assert missing == {c for c in causes if c not in text}


@given(
    prefix=st.text(max_size=10),
    cause=st.text(min_size=1, max_size=5),
    middle=st.text(max_size=10),
    effect=st.text(min_size=1, max_size=5),
)
def test_a_cause_placed_before_an_effect_is_always_linked(
    prefix: str, cause: str, middle: str, effect: str
) -> None:
    text = prefix + cause + middle + effect
    result = align(text, [PhraseRelation(effect=effect, causes=[cause])])
    last_effect = text.rfind(effect)
    linked = {
        (c.start, c.end)
        for r in result.relations
        if r.effect.start == last_effect
        for c in r.causes
    }
    assert (len(prefix), len(prefix) + len(cause)) in linked
