"""Phrase -> span alignment: every span spells its phrase, and none splits a word or a number."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cattune.schemas import (
    PhraseRelation,
    Span,
    align,
    find_occurrences,
    is_boundary,
    parse_phrase_relations,
    salvage_phrase_relations,
)


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
    assert find_occurrences("aaaa", "aa", boundary="none") == [0, 1, 2]
    assert find_occurrences("a-a-a", "a-a") == [0, 2]


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
    if find_occurrences(text, effect):
        missing = {p.cause for p in result.problems if p.kind == "cause_not_found"}
        assert missing == {c for c in causes if c not in text}


@given(
    prefix=st.text(max_size=10),
    cause=st.text(min_size=1, max_size=5),
    middle=st.text(max_size=10),
    effect=st.text(min_size=1, max_size=5),
    boundary=st.sampled_from(["word", "none"]),
)
def test_a_cause_placed_before_an_effect_is_always_linked(
    prefix: str, cause: str, middle: str, effect: str, boundary: str
) -> None:
    text = prefix + cause + middle + effect
    if boundary == "word":  # placed as whole words: every cut between the parts is a boundary
        cuts = (len(prefix), len(prefix + cause), len(prefix + cause + middle))
        assume(all(is_boundary(text, cut) for cut in cuts))
    result = align(text, [PhraseRelation(effect=effect, causes=[cause])], boundary=boundary)  # type: ignore[arg-type]
    last_effect = text.rfind(effect)
    linked = {
        (c.start, c.end)
        for r in result.relations
        if r.effect.start == last_effect
        for c in r.causes
    }
    assert (len(prefix), len(prefix) + len(cause)) in linked


# --- word boundaries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "phrase", "starts"),
    [
        ("the he", "he", [4]),  # not inside "the"
        ("15 and 5", "5", [7]),  # not inside "15"
        ("59.6, 9.6", "9.6", [6]),  # a value inside a longer number (STG_H)
        ("9.6", "9", []),  # a decimal point between digits belongs to the number
        ("1,900 or 9", "9", [9]),  # so does a thousands separator
        ("1,900", "900", []),
        ("it is 9.6.", "9.6", [6]),  # a full stop after a number is not a decimal point
        ("5, 6", "5", [0]),  # nor is a comma followed by a space
        ("F12 F1", "F1", [4]),  # letters and digits form one word
        ("snake_case case", "case", [11]),
        ("e\u0301 e", "e", [3]),  # a combining mark belongs to the letter before it
        ("e\u0301 e", "e\u0301", [0]),
        ("👍🏽 👍", "👍", [3]),  # an emoji modifier belongs to its emoji
        ("🧪🧪", "🧪", [0, 1]),  # emoji are not words
        ("漢字の結果は5", "結果", [3]),  # no spaces in Japanese: anywhere
        ("ราคาสูง", "สูง", [4]),  # nor in Thai
        ("값은 15", "5", []),  # Hangul is written with spaces: numbers stay whole
        ("Answer: 32", "Answer: 32", [0]),
        (" -5 ", "5", [2]),  # a sign is not part of the word
    ],
)
def test_word_boundary_examples(text: str, phrase: str, starts: list[int]) -> None:
    assert find_occurrences(text, phrase) == starts
    assert set(starts) <= set(find_occurrences(text, phrase, boundary="none"))


def test_boundary_none_keeps_the_reference_behaviour() -> None:
    text = "the cat ate 15 fish"
    relation = PhraseRelation(effect="fish", causes=["he", "5"])
    old = align(text, [relation], boundary="none")
    assert not old.problems
    assert _texts(text, old.relations[0].causes) == ["he", "5"]
    new = align(text, [relation])
    assert new.relations == []
    assert [(p.kind, p.cause, p.inside) for p in new.problems] == [
        ("cause_inside_word", "he", "the"),
        ("cause_inside_word", "5", "15"),
    ]
    assert "occurs only inside longer words or numbers (e.g. 'the')" in new.problems[0].message


def test_an_effect_only_inside_words_is_reported_as_such() -> None:
    result = align("Value: 59.6 -> 5", [PhraseRelation(effect="9.6", causes=["Value"])])
    (problem,) = result.problems
    assert (problem.kind, problem.inside) == ("effect_inside_word", "59.6")


def test_unknown_boundary_is_rejected() -> None:
    with pytest.raises(ValueError, match="boundary"):
        find_occurrences("text", "t", boundary="token")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="boundary"):
        align("text", [], boundary="token")  # type: ignore[arg-type]


# Texts built from tokens whose cut points are known by construction: a phrase may start or end at
# a token edge, inside a run of a script without spaces, or between emoji, and nowhere else.
_LETTERS = "abeéxyzABÉ"
_CJK = "漢字の結果タイ"
_THAI_BASES = "สวดกร"
_THAI_MARKS = "\u0e31\u0e35"
_EMOJI = ["🧪", "👍", "🐈"]
_SEPARATORS = [" ", "  ", ", ", ". ", "; ", "-", "\n", "(", ")"]


@st.composite
def _word(draw: st.DrawFn) -> tuple[str, list[int]]:
    """Latin letters, some with a combining mark: no cut inside."""
    letters = draw(st.lists(st.sampled_from(_LETTERS), min_size=1, max_size=5))
    marked = "".join(c + draw(st.sampled_from(["", "", "\u0301", "\u0308"])) for c in letters)
    return marked, []


@st.composite
def _number(draw: st.DrawFn) -> tuple[str, list[int]]:
    """Digits with decimal points and thousands separators between them: no cut inside."""
    groups = draw(st.lists(st.text("0123456789", min_size=1, max_size=3), min_size=1, max_size=3))
    seps = draw(st.lists(st.sampled_from(".,"), min_size=len(groups) - 1, max_size=len(groups)))
    text = groups[0] + "".join(s + g for s, g in zip(seps, groups[1:], strict=False))
    unit = draw(st.sampled_from(["", "th", "kg", "%"]))  # "38th" is one word, "41.9%" is not
    return text + unit, [len(text)] if unit == "%" else []


@st.composite
def _cjk(draw: st.DrawFn) -> tuple[str, list[int]]:
    """Han and kana: a cut anywhere."""
    text = draw(st.text(_CJK, min_size=1, max_size=5))
    return text, list(range(1, len(text)))


@st.composite
def _thai(draw: st.DrawFn) -> tuple[str, list[int]]:
    """Thai: a cut anywhere except before a vowel mark."""
    text, cuts = "", []
    for _ in range(draw(st.integers(1, 4))):
        if text:
            cuts.append(len(text))
        text += draw(st.sampled_from(_THAI_BASES)) + draw(st.sampled_from(["", *_THAI_MARKS]))
    return text, cuts


@st.composite
def _emoji(draw: st.DrawFn) -> tuple[str, list[int]]:
    """Emoji, some with a skin-tone modifier or joined by ZWJ: cuts between them, not inside."""
    text, cuts = "", []
    for _ in range(draw(st.integers(1, 3))):
        if text:
            cuts.append(len(text))
        text += draw(st.sampled_from(_EMOJI))
        text += draw(st.sampled_from(["", "\U0001f3fd", "\u200d⬛", "\ufe0f"]))
    return text, cuts


_SPACED = ("word", "number")


@st.composite
def _tokens(draw: st.DrawFn) -> tuple[str, set[int]]:
    """A text and the set of offsets where a phrase may start or end."""
    kinds = {
        "word": _word(),
        "number": _number(),
        "cjk": _cjk(),
        "thai": _thai(),
        "emoji": _emoji(),
    }
    text, cuts, last = "", {0}, None
    for kind in draw(st.lists(st.sampled_from(sorted(kinds)), min_size=1, max_size=8)):
        # two words or numbers side by side would be one word: separate them
        if (last in _SPACED and kind in _SPACED) or draw(st.booleans()):
            if last is not None:
                text += draw(st.sampled_from(_SEPARATORS))
                cuts.update(range(len(text) - 1, len(text) + 1))
        token, inner = draw(kinds[kind])
        cuts.update(len(text) + i for i in inner)
        cuts.add(len(text))
        text += token
        cuts.add(len(text))
        last = kind
    return text, cuts


@given(data=st.data(), built=_tokens())
def test_phrases_match_exactly_at_the_known_cut_points(
    data: st.DataObject, built: tuple[str, set[int]]
) -> None:
    text, cuts = built
    start = data.draw(st.integers(0, len(text) - 1))
    end = data.draw(st.integers(start + 1, len(text)))
    phrase = text[start:end]
    anywhere = find_occurrences(text, phrase, boundary="none")
    expected = [s for s in anywhere if s in cuts and s + len(phrase) in cuts]
    assert find_occurrences(text, phrase) == expected
    assert all(is_boundary(text, i) == (i in cuts) for i in range(len(text) + 1))


@given(
    whole=st.from_regex(r"[1-9][0-9]{0,2}(,[0-9]{3})*(\.[0-9]{1,2})?", fullmatch=True),
    cut=st.data(),
)
def test_no_part_of_a_number_is_found(whole: str, cut: st.DataObject) -> None:
    """ "9" is not in "9.6" or "1,900", "9.6" not in "59.6": only the whole number is found."""
    text = f"Value: {whole}, next"
    start = cut.draw(st.integers(0, len(whole) - 1))
    end = cut.draw(st.integers(start + 1, len(whole)))
    part = whole[start:end]
    inside = [s - 7 for s in find_occurrences(text, part) if 7 <= s < 7 + len(whole)]
    assert inside == ([0] if part == whole else [])


def test_salvage_keeps_the_well_formed_relations() -> None:
    nested = {"Question text": {"Blue fish": ["One third"]}}  # a nested object as the causes
    relations, problems = salvage_phrase_relations(
        [nested, {"y": ["x", 3, "z"]}, "stray", {"effect": 4, "causes": ["x"]}, {"w": "v"}]
    )
    assert relations == [
        PhraseRelation(effect="y", causes=["x", "z"]),
        PhraseRelation(effect="w", causes=["v"]),
    ]
    assert len(problems) == 4
    assert "causes of effect 'Question text' must be a list of strings" in problems[0]
    assert "dropped 1 other value(s), e.g. 3" in problems[1]
    assert "each relation must be an object" in problems[2]
    assert "an effect must be a phrase" in problems[3]
    assert salvage_phrase_relations(7) == (
        [],
        ["expected an object or a list of relations, got int"],
    )
