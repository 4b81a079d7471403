"""Given and Gold annotators: align the relations a source row carries."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cattune.annotators.base import GIVEN_PROBLEMS_KEY, GIVEN_RELATIONS_KEY
from cattune.annotators.given import GivenAnnotator, GoldAnnotator
from cattune.schemas import AnnotatedExample, ConfigError, Example, Meta, QuarantinedExample

PROMPT = "Smoking: 8, Weight: 4, Yellow fingers: 12 Answer: "


def _row(relations: object | None, prompt: str = PROMPT, completion: str = "High Risk") -> Example:
    extra = {} if relations is None else {GIVEN_RELATIONS_KEY: json.dumps(relations)}
    return Example.create(prompt, completion, Meta(source="t", extra=extra))


def test_wire_and_cat_forms_align_to_spans() -> None:
    wire = {"relations": [{"effect": "High Risk", "causes": ["Smoking: 8", "Weight: 4"]}]}
    cat = [{"High Risk": ["Smoking: 8", "Weight: 4"]}]
    for annotator in (GivenAnnotator(), GoldAnnotator()):
        first, second = annotator.annotate([_row(wire), _row(cat)])
        assert isinstance(first, AnnotatedExample) and not first.problems
        assert first.relations == second.relations
        (relation,) = first.relations
        assert [c.text(first.text) for c in relation.causes] == ["Smoking: 8", "Weight: 4"]
        assert first.annotation.annotator == annotator.name
        assert first.annotation.config_hash == annotator.config_hash()


def test_partial_problems_are_kept_by_given_and_quarantined_by_gold() -> None:
    row = _row([{"High Risk": ["Smoking: 8", "Sleep: 3"]}])
    (kept,) = GivenAnnotator().annotate([row])
    assert isinstance(kept, AnnotatedExample)
    assert kept.problems == ["cause 'Sleep: 3' of effect 'High Risk' does not occur in the text"]
    (strict,) = GoldAnnotator().annotate([row])
    assert isinstance(strict, QuarantinedExample)
    assert "Sleep: 3" in strict.error and strict.raw_output is not None


def test_rows_without_usable_labels_are_quarantined_with_the_reason() -> None:
    rows = [
        _row(None),
        _row([]),
        _row({"relations": "nope"}),
        _row([{"Low Risk": ["Smoking: 8"]}]),
        _row([{"Smoking: 8": ["High Risk"]}]),
    ]
    rows.append(Example.create("p", "c", Meta(extra={GIVEN_RELATIONS_KEY: "{not json"})))
    results = GivenAnnotator().annotate(rows)
    assert all(isinstance(r, QuarantinedExample) for r in results)
    reasons = [r.error for r in results]
    assert "carries no relations" in reasons[0]
    assert "empty" in reasons[1]
    assert "not valid relation JSON" in reasons[2] and "not valid relation JSON" in reasons[5]
    assert "does not occur" in reasons[3]
    assert "never ends before" in reasons[4]


words = st.text(alphabet="abcdefgh ", min_size=1, max_size=12).filter(str.strip)


@given(st.lists(words, min_size=2, max_size=6, unique=True))
def test_phrases_in_order_always_align_exactly(phrases: list[str]) -> None:
    prompt = " | ".join(phrases[:-1]) + " | "
    relations = [{phrases[-1]: phrases[:-1]}]
    (gold,) = GoldAnnotator().annotate([_row(relations, prompt, phrases[-1])])
    assert isinstance(gold, AnnotatedExample)
    text = gold.text
    found = {c.text(text) for r in gold.relations for c in r.causes}
    assert found == set(phrases[:-1])
    assert all(c.end <= r.effect.start for r in gold.relations for c in r.causes)


def test_boundary_is_configurable_and_part_of_the_config_hash() -> None:
    row = _row([{"High Risk": ["Smoking: 8", "2"]}])  # "2" occurs only inside "12"
    (word,) = GivenAnnotator().annotate([row])
    assert isinstance(word, AnnotatedExample)
    assert word.problems == [
        "cause '2' of effect 'High Risk' occurs only inside longer words or numbers (e.g. '12'); "
        "copy whole words, or align with boundary 'none'"
    ]
    (none,) = GivenAnnotator(boundary="none").annotate([row])
    assert isinstance(none, AnnotatedExample) and not none.problems
    assert [c.text(none.text) for c in none.relations[0].causes] == ["Smoking: 8", "2"]
    assert GivenAnnotator().config_hash() != GivenAnnotator(boundary="none").config_hash()
    with pytest.raises(ConfigError, match="boundary"):
        GivenAnnotator(boundary="token")  # type: ignore[arg-type]


def test_parts_a_source_left_out_are_problems_for_given_and_quarantine_for_gold() -> None:
    left_out = ["field 'important': causes of effect 'x' must be a list of strings, got int 3"]
    row = Example.create(
        PROMPT,
        "High Risk",
        Meta(
            extra={
                GIVEN_RELATIONS_KEY: json.dumps([{"High Risk": ["Smoking: 8"]}]),
                GIVEN_PROBLEMS_KEY: json.dumps(left_out),
            }
        ),
    )
    (kept,) = GivenAnnotator().annotate([row])
    assert isinstance(kept, AnnotatedExample) and kept.problems == left_out
    assert len(kept.relations) == 1
    (strict,) = GoldAnnotator().annotate([row])
    assert isinstance(strict, QuarantinedExample) and "must be a list of strings" in strict.error
