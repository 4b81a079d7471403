"""Smoke tests of benchmarks/stg_reproduction.py: its core runs end to end on tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stg_reproduction.py"


@pytest.fixture(scope="module")
def repro():
    spec = importlib.util.spec_from_file_location("stg_reproduction", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


TINY = dict(layers=1, hidden=32, heads=2, vocab=300)


def test_generated_pair_runs_and_cat_raises_the_ratio(repro, tmp_path: Path) -> None:
    train_args = ("--epochs", "1", "--batch-size", "8", "--attn_weight", "5", "--decay", "0")
    train_args += ("--logging_steps", "2")
    settings = repro.Settings(**TINY, n_train=48, n_test=8, train_args=train_args)
    results = [
        repro.run_one(repro.Run("stg", "generated", 0, mode, settings), tmp_path)
        for mode in repro.MODES
    ]
    for r in results:
        assert 0.0 <= r["iid"] <= 1.0 and 0.0 <= r["ood"] <= 1.0
        assert r["steps"] == 6
        assert r["train_ratio"] is not None and r["ood_ratio"] is not None
        assert 0.5 <= r["ood_majority"] <= 1.0
    baseline, cat = results
    assert cat["train_ratio"] > baseline["train_ratio"]
    summary = repro.summarise(results)
    assert len(summary) == 1 and summary[0]["seeds"] == [0]
    assert summary[0]["ood_diff"] == pytest.approx(cat["ood"] - baseline["ood"])
    table = repro.markdown(summary)
    assert table.count("\n") == 2 and "| stg | generated | 1 |" in table
    assert table.rstrip(" |").endswith(f"{100 * baseline['ood_majority']:.1f}")


def test_authors_files_load_with_gold_relations(repro, reference_data: Path) -> None:
    settings = repro.Settings(n_train=20, n_test=10)
    for variant in repro.AUTHOR_FILES:
        splits = repro.load_splits(variant, "authors", 0, settings)
        assert [len(splits[s]) for s in repro.SPLITS] == [20, 10, 10]
        assert all(r.relations for r in splits["train"])
        assert [r.meta.ood for r in splits["ood_test"]] == [True] * 10
        assert {r.meta.split for r in splits["iid_test"]} == {"iid_test"}
    repeated = repro.load_splits("stg", "authors", 0, repro.Settings(n_train=1605, n_test=1))
    train = repeated["train"]
    assert len(train) == 1605 and train[1600].id == train[0].id != train[1].id


def test_main_writes_results_and_table(repro, tmp_path: Path, capsys) -> None:
    flags = ["--layers", "1", "--hidden", "32", "--heads", "2", "--vocab", "300"]
    flags += ["--n-train", "16", "--n-test", "4"]
    out = tmp_path / "out"
    argv = ["--variants", "stg", "--sources", "generated", "--seeds", "0,1", "--jobs", "1"]
    train_args = ["--", "--epochs", "1", "--batch-size", "16"]
    assert repro.main([*argv, *flags, "--out", str(out), *train_args]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert len(payload["runs"]) == 4 and payload["settings"]["hidden"] == 32
    assert payload["settings"]["train_args"] == ["--epochs", "1", "--batch-size", "16"]
    assert all(r["steps"] == 1 for r in payload["runs"])
    assert payload["summary"][0]["seeds"] == [0, 1]
    assert "OOD diff" in (out / "table.md").read_text()
    assert "4 runs in" in capsys.readouterr().out


def test_unknown_variant_is_refused(repro) -> None:
    with pytest.raises(SystemExit):
        repro.parse_args(["--variants", "mawps"])
    with pytest.raises(SystemExit):
        repro.parse_args(["--variants", "stg_shortcut", "--sources", "authors"])
    assert repro.parse_args(["--variants", "stg_shortcut", "--sources", "generated"]).variants
