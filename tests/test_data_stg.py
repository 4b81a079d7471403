"""The STG generator against the CAT authors' files: formats, rules, distributions, gold."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from functools import cache
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cattune.annotators.base import GIVEN_RELATIONS_KEY
from cattune.flows.cli import main
from cattune.pipeline.stg import (
    STG_CAUSES,
    STG_H_CAUSES,
    STG_H_SPURIOUS,
    generate_stg,
    stg_h_aqi,
    stg_label,
)
from cattune.schemas import AnnotatedExample, from_table

ITEM = re.compile(r"([A-Z][A-Za-z ()]+?): (-?\d+(?:\.\d+)?)(%|th|Mbps)?(?=[,;.]? )")
NUMBER = re.compile(r"-?\d+(\.\d+)?")
STG_FILES = {
    "train": "STG/spurious_token_game_train3.jsonl",
    "iid_test": "STG/spurious_token_game_test3.jsonl",
    "ood_test": "STG/spurious_token_game_ood3_2.jsonl",
}
STG_H_FILES = {
    "train": "STG_H/STG_H_train.jsonl",
    "iid_test": "STG_H/STG_H_iid_test.jsonl",
    "ood_test": "STG_H/STG_H_ood_test.jsonl",
}


def _items(prompt: str) -> dict[str, float]:
    return {name: float(value) for name, value, _ in ITEM.findall(prompt)}


def _reference(reference_data: Path, files: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    return {
        split: [
            (row["input"], str(row["target"]))
            for row in map(json.loads, (reference_data / name).read_text().splitlines())
        ]
        for split, name in files.items()
    }


@cache
def _generated(variant: str) -> dict[str, list[tuple[str, str]]]:
    return {
        split: [(r.prompt, r.completion) for r in rows]
        for split, rows in generate_stg(variant, seed=7, n_train=1600, n_test=400).items()  # type: ignore[arg-type]
    }


def _column(rows: list[tuple[str, str]], name: str) -> list[float]:
    return [_items(prompt)[name] for prompt, _ in rows]


def _close_means(ours: list[float], theirs: list[float]) -> bool:
    """Means agree within 4 standard errors of their difference."""
    se = math.sqrt(
        statistics.variance(ours) / len(ours) + statistics.variance(theirs) / len(theirs)
    )
    return abs(statistics.fmean(ours) - statistics.fmean(theirs)) <= 4 * se + 1e-9


def _close_shares(ours: list[str], theirs: list[str], value: str) -> bool:
    p1, p2 = ours.count(value) / len(ours), theirs.count(value) / len(theirs)
    p = (ours.count(value) + theirs.count(value)) / (len(ours) + len(theirs))
    se = math.sqrt(p * (1 - p) * (1 / len(ours) + 1 / len(theirs)))
    return abs(p1 - p2) <= 4 * se + 1e-9


def test_stg_label_rule_reproduces_every_reference_label(reference_data: Path) -> None:
    for rows in _reference(reference_data, STG_FILES).values():
        for prompt, target in rows:
            items = _items(prompt)
            assert stg_label(*(int(items[c]) for c in STG_CAUSES)) == target
    assert stg_label(1, 5, 2) == "Middle Risk"  # the authors' float quirk at v == 2.7
    assert stg_label(3, 3, 3) == "Low Risk"  # 2.6999999999999993


def test_stg_matches_reference_distributions(reference_data: Path) -> None:
    reference, ours = _reference(reference_data, STG_FILES), _generated("stg")
    names = set(_items(reference["train"][0][0]))
    for split in ("train", "iid_test", "ood_test"):
        theirs, mine = reference[split], ours[split]
        assert {p.split(". ")[0] for p, _ in mine} == {p.split(". ")[0] for p, _ in theirs}
        assert all(p.endswith(" Answer: ") for p, _ in mine)
        assert all(set(_items(p)) == names for p, _ in mine)
        for label in ("High Risk", "Low Risk"):
            assert _close_shares([a for _, a in mine], [a for _, a in theirs], label), (
                split,
                label,
            )
        for name in names:
            a, b = _column(mine, name), _column(theirs, name)
            assert set(a) <= set(b) | {0.0}, (split, name)
            assert _close_means(a, b), (split, name)
        for cause, spurious in (("Smoking", "Yellow fingers"), ("Exercise", "Hormones")):
            r_mine = statistics.correlation(_column(mine, cause), _column(mine, spurious))
            r_theirs = statistics.correlation(_column(theirs, cause), _column(theirs, spurious))
            if split == "ood_test":
                assert abs(r_mine) < 0.2 and abs(r_theirs) < 0.2
            else:
                assert r_mine > 0.95 and r_theirs > 0.95
    orders = Counter(tuple(_items(p)) for p, _ in ours["train"])
    assert len(orders) > 1000  # items are shuffled


def test_stg_h_formats_and_answer_rule(reference_data: Path) -> None:
    reference, ours = _reference(reference_data, STG_H_FILES), _generated("stg_h")
    for split in ("train", "iid_test", "ood_test"):
        templates = {NUMBER.sub("N", p) for p, _ in reference[split]}
        assert {NUMBER.sub("N", p) for p, _ in ours[split]} == templates
        items = [ITEM.findall(p) for p, _ in ours[split]]
        suffixes = {(n, s) for row in items for n, _, s in row}
        assert suffixes == {(n, s) for p, _ in reference[split] for n, _, s in ITEM.findall(p)}
    exact = [
        stg_h_aqi([_items(p)[c.name] for c in STG_H_CAUSES]) == int(a)
        for p, a in reference["train"]
    ]
    assert sum(exact) / len(exact) > 0.95  # the rest are off by one: printed values are rounded


def test_stg_h_matches_reference_distributions(reference_data: Path) -> None:
    reference, ours = _reference(reference_data, STG_H_FILES), _generated("stg_h")
    for split in ("train", "iid_test", "ood_test"):
        theirs, mine = reference[split], ours[split]
        for name in _items(theirs[0][0]):
            a, b = _column(mine, name), _column(theirs, name)
            assert _close_means(a, b), (split, name)
            assert 0.85 < statistics.stdev(a) / statistics.stdev(b) < 1.15, (split, name)
        answers = ([float(a) for _, a in mine], [float(a) for _, a in theirs])
        assert _close_means(*answers), split
        for spurious in STG_H_SPURIOUS:
            cause = STG_H_CAUSES[spurious.cause].name
            r_mine = statistics.correlation(_column(mine, cause), _column(mine, spurious.name))
            r_theirs = statistics.correlation(
                _column(theirs, cause), _column(theirs, spurious.name)
            )
            if split == "ood_test":
                assert abs(r_mine) < 0.2 and abs(r_theirs) < 0.2, spurious.name
            else:
                assert abs(r_mine - r_theirs) < 0.1, (split, spurious.name, r_mine, r_theirs)
                assert abs(r_mine) > 0.3


def test_gold_relations_and_meta() -> None:
    splits = generate_stg("stg_h", seed=1, n_train=20, n_test=10)
    stg = generate_stg("stg", seed=1, n_train=20, n_test=10)
    for variant, data in (("stg_h", splits), ("stg", stg)):
        assert [len(data[s]) for s in ("train", "iid_test", "ood_test")] == [20, 10, 10]
        for split, rows in data.items():
            for row in rows:
                assert row.annotation.annotator == "gold" and row.problems == []
                assert row.meta.source == f"stg:{variant}:seed=1"
                assert row.meta.split == split and row.meta.ood == (split == "ood_test")
                assert row.meta.label == row.completion
                (relation,) = row.relations
                effect = relation.effect.text(row.text)
                causes = [c.text(row.text) for c in relation.causes]
                items = _items(row.prompt)
                if variant == "stg":
                    assert effect == row.completion
                    wanted = {f"{c}: {int(items[c])}" for c in STG_CAUSES}
                    assert set(causes) == wanted
                else:
                    assert effect == f"Answer: {row.completion}"
                    assert [c.split(": ")[0] for c in causes] == [c.name for c in STG_H_CAUSES]
                wire = json.loads(row.meta.extra[GIVEN_RELATIONS_KEY])
                assert wire == {"relations": [{"effect": effect, "causes": causes}]}


def test_gold_form_matches_authors_important(reference_data: Path) -> None:
    for row in map(json.loads, (reference_data / STG_FILES["train"]).read_text().splitlines()):
        ((effect, causes),) = row["important"][0].items()
        items = [f"{n}: {v}" for n, v, _ in ITEM.findall(row["input"]) if n in STG_CAUSES]
        assert (effect, causes) == (row["target"], items)  # ours is exactly the authors' form
    for row in map(json.loads, (reference_data / STG_H_FILES["train"]).read_text().splitlines()):
        ((effect, causes),) = row["important"][0].items()
        full = [f"{n}: {v}{s}" for n, v, s in ITEM.findall(row["input"])][:6]
        assert effect == f"Answer: {row['target']}"
        assert all(f.endswith(": " + c) for f, c in zip(full, causes, strict=True))


def test_deterministic_per_seed_and_split(tmp_path: Path) -> None:
    outs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for out, seed in zip(outs, (5, 5, 6), strict=True):
        argv = ["stg", "generate", "--variant", "stg_h", "--seed", str(seed), "--out", str(out)]
        assert main([*argv, "--n-train", "30", "--n-test", "12"]) == 0
    for split in ("train", "iid_test", "ood_test"):
        a, b, c = (pq.read_table(out / f"{split}.parquet") for out in outs)
        assert a.num_rows == (30 if split == "train" else 12)
        assert a.drop_columns(["annotation"]).equals(b.drop_columns(["annotation"]))
        assert a.column("id") != c.column("id")
        rows = from_table(a, AnnotatedExample)
        assert all(r.meta.split == split for r in rows)
    longer = generate_stg("stg_h", seed=5, n_train=30, n_test=50)
    train = from_table(pq.read_table(outs[0] / "train.parquet"), AnnotatedExample)
    assert [r.id for r in longer["train"]] == [r.id for r in train]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--seed", "1", "--n-train", "-1"], "zero or more"),
        (["--seed", "1", "--variant", "stg_x"], None),
    ],
)
def test_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str | None
) -> None:
    code_or_exit: int
    try:
        code_or_exit = main(["stg", "generate", "--out", str(tmp_path / "o"), *argv])
    except SystemExit as exit_:  # argparse rejects an unknown choice itself
        code_or_exit = int(exit_.code or 0)
    assert code_or_exit == 2
    if needle:
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_shortcut_variant_copies_the_label_in_iid_rows_only() -> None:
    data = generate_stg("stg_shortcut", seed=4, n_train=2000, n_test=2000)
    agreement = {}
    for split, rows in data.items():
        items = [_items(r.prompt) for r in rows]
        high = [int(r.completion == "High Risk") for r in rows]
        agreement[split] = sum(int(i["Code"]) == h for i, h in zip(items, high, strict=True)) / len(
            rows
        )
        for row, item in zip(rows, items, strict=True):
            assert len(item) == 9  # STG's eight items and the code
            rule = stg_label(*(int(item[c]) for c in STG_CAUSES))
            assert row.completion == rule, "the code never decides the label"
            (relation,) = row.relations
            assert all("Code" not in c.text(row.text) for c in relation.causes)
    assert 0.93 < agreement["train"] < 0.97 and 0.93 < agreement["iid_test"] < 0.97
    assert 0.46 < agreement["ood_test"] < 0.54


def test_cli_offers_every_variant() -> None:
    from cattune.flows.commands.stg import VARIANT_CHOICES
    from cattune.pipeline.stg import VARIANTS

    assert VARIANT_CHOICES == VARIANTS
