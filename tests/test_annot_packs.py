"""Prior packs: the shipped ones load, broken ones fail with the file and the field at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cattune.annotators.pack import (
    RULE_KINDS,
    KeyValueRules,
    MathRules,
    MultipleChoiceRules,
    load_pack,
    shipped_packs,
)
from cattune.annotators.prior import PriorAnnotator
from cattune.flows.cli import main
from cattune.schemas import AnnotatedExample, ConfigError, Example, align

RULE_TYPES: dict[str, type] = {
    "math-word-problems": MathRules,
    "key-value-records": KeyValueRules,
    "multiple-choice": MultipleChoiceRules,
}


def test_shipped_packs_load_with_typed_rules_and_aligning_demos() -> None:
    assert set(shipped_packs()) == set(RULE_TYPES) == set(RULE_KINDS)
    hashes = set()
    for name in shipped_packs():
        pack = load_pack(name)
        assert isinstance(pack.rules, RULE_TYPES[name])
        assert pack.instructions.strip() and len(pack.demonstrations) >= 2
        for demo in pack.demonstrations:
            alignment = align(demo.prompt + demo.completion, demo.relations)
            assert alignment.relations and not alignment.problems
        hashes.add(pack.content_hash)
    assert len(hashes) == 3


def _write(tmp_path: Path, data: object, name: str = "pack.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def _pack_data(name: str = "math-word-problems") -> dict:
    return load_pack(name).model_dump(mode="json")


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ninstructions: [unclosed\n")
    with pytest.raises(ConfigError, match=r"pack\.yaml: not valid YAML"):
        load_pack(path)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("instructions"), "field instructions"),
        (lambda d: d.update(demonstrations=d["demonstrations"][:1]), "field demonstrations"),
        (lambda d: d["rules"].update(kind="tables"), "field rules"),
        (lambda d: d["rules"].update(answer_patterns=["(unclosed"]), "field rules.answer_patterns"),
        (lambda d: d.update(name="Bad Name"), "field name"),
    ],
)
def test_missing_or_bad_field_is_named(tmp_path: Path, mutate, field: str) -> None:
    data = _pack_data()
    mutate(data)
    with pytest.raises(ConfigError) as error:
        load_pack(_write(tmp_path, data))
    assert str(tmp_path / "pack.yaml") in str(error.value)
    assert field in str(error.value)


def test_demo_phrase_absent_from_its_text_is_rejected(tmp_path: Path) -> None:
    data = _pack_data()
    data["demonstrations"][1]["relations"][0]["causes"].append("seventeen bananas")
    with pytest.raises(ConfigError, match=r"demonstrations\[1\]\.relations: .*seventeen bananas"):
        load_pack(_write(tmp_path, data))


def test_unknown_pack_name_lists_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key-value-records, math-word-problems, multiple-choice"):
        load_pack("recipes")
    with pytest.raises(ConfigError, match="does not exist"):
        load_pack(tmp_path / "missing.yaml")


def test_content_hash_follows_content(tmp_path: Path) -> None:
    data = _pack_data()
    same = load_pack(_write(tmp_path, data, "a.yaml"))
    assert same.content_hash == load_pack("math-word-problems").content_hash
    data["rules"]["unit_words"] = 2
    assert load_pack(_write(tmp_path, data, "b.yaml")).content_hash != same.content_hash


def test_user_pack_with_own_causal_keys(tmp_path: Path) -> None:
    data = _pack_data("key-value-records")
    data["name"] = "house-prices"
    data["rules"]["profiles"] = [
        {"name": "houses", "causal_keys": ["Area", "Rooms"], "cause": "item"}
    ]
    pack = load_pack(_write(tmp_path, data))
    example = Example.create("Area: 120, Colour: 3, Rooms: 4. Price? Answer: ", "high")
    (row,) = PriorAnnotator(tmp_path / "pack.yaml").annotate([example])
    assert isinstance(row, AnnotatedExample)
    assert row.annotation.pack == "house-prices"
    assert row.annotation.pack_hash == pack.content_hash
    (relation,) = row.relations
    assert relation.effect.text(row.text) == "high"
    assert [c.text(row.text) for c in relation.causes] == ["Area: 120", "Rooms: 4"]


def test_cli_lists_packs_and_checks_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["annotators", "packs", "--json"]) == 0
    assert "key-value-records" in capsys.readouterr().out
    broken = _write(tmp_path, {"name": "x"})
    assert main(["annotators", "packs", str(broken)]) == 2
    assert "field version" in capsys.readouterr().err


def _reference_texts(reference_data: Path) -> list[str]:
    texts = []
    for path in sorted(reference_data.rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts.append(" ".join(f"{row.get('input', '')}{row.get('target', '')}".split()))
    return texts


def test_demonstrations_are_not_rows_of_the_authors_files(reference_data: Path) -> None:
    """Shipped demonstrations are cattune's own texts: no authors' row (and its gold labels)
    sits in every prompt. Compared with whitespace collapsed, in both directions."""
    texts = _reference_texts(reference_data)
    assert len(texts) > 10_000
    for name in shipped_packs():
        for demo in load_pack(name).demonstrations:
            prompt = " ".join(demo.prompt.split())
            whole = " ".join((demo.prompt + demo.completion).split())
            for text in texts:
                assert prompt not in text and text not in whole, (name, demo.prompt)


def test_demonstrations_show_the_answer_format_of_the_packs_rules() -> None:
    """A demonstration labels the answer as the pack's own rules find it, and all of a pack's
    demonstrations label it the same way (a small model copies the demonstrated effect into every
    reply: an "Answer: 32" demonstration made SmolLM2 label "Answer: N" on STG rows, which end in
    "High Risk"). The PriorAnnotator, run on a demonstration, puts its final-answer effect where
    the demonstration puts one of its effects, inside the completion or starting in the prompt
    (a marker) alike for the whole pack; for key-value records it finds the same causes too."""
    for name in shipped_packs():
        pack = load_pack(name)
        starts_in_prompt = set()
        for demo in pack.demonstrations:
            example = Example.create(demo.prompt, demo.completion)
            (row,) = PriorAnnotator(pack).annotate([example])
            assert isinstance(row, AnnotatedExample), (name, demo.prompt)
            labelled = align(example.text, demo.relations).relations
            demo_effects = {(r.effect.start, r.effect.end) for r in labelled}
            answer = max(row.relations, key=lambda r: r.effect.start).effect
            assert (answer.start, answer.end) in demo_effects, (name, answer.text(row.text))
            starts_in_prompt.add(answer.start < len(demo.prompt))
            if name == "key-value-records":
                assert row.relations == labelled
        assert len(starts_in_prompt) == 1, name
