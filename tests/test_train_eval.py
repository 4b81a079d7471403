"""Evaluation: answer normalisation, batched greedy generation, per-split metrics, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cattune.schemas import AnnotatedExample, Example
from cattune.training.data import prompt_ids, tokenize_joined
from cattune.training.evaluate import (
    ChoiceRow,
    answers_match,
    causal_ratio,
    choice_loglikelihoods,
    choice_row,
    evaluate_rows,
    generate,
    normalise_answer,
    write_results,
)
from cattune.training.models import load_model, load_tokenizer
from cattune.training.plots import plot_comparison, plot_training, series
from cattune.training.release_io import read_parquet
from cattune.training.tiny import build_tiny_model, toy_rows

ROWS = toy_rows(6, seed=31) + toy_rows(4, seed=33, split="ood", ood=True)  # both labels in each
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    path = build_tiny_model(
        [r.prompt + r.completion for r in ROWS], tmp_path_factory.mktemp("tiny"), seed=3
    )
    return load_model(path), load_tokenizer(path)


@pytest.mark.parametrize(
    ("prediction", "reference", "same"),
    [
        ("84", "84.0", True),
        ("Answer: 84.0", "84", True),
        ("answer:84", "84", True),
        (" 84.000\nmore text", "84", True),
        ("1,200", "1200", True),
        ("84.5", "84", False),
        ("high risk", "High Risk", True),
        ("  High   Risk.", "High Risk", True),
        ("Low Risk", "High Risk", False),
        ("", "High Risk", False),
        ("84 apples", "84", False),
    ],
)
def test_answers_match(prediction: str, reference: str, same: bool) -> None:
    assert answers_match(prediction, reference) is same


@given(st.integers(-(10**6), 10**6), st.integers(0, 4), st.booleans())
def test_numbers_compare_numerically(value: int, decimals: int, prefix: bool) -> None:
    formatted = f"{value:.{decimals}f}"
    assert answers_match(("Answer: " if prefix else "") + formatted, str(value))
    assert not answers_match(formatted, str(value + 1))


@given(st.text(alphabet=st.characters(categories=["L", "Zs"]), min_size=1, max_size=20))
def test_text_answers_ignore_case_and_spacing(text: str) -> None:
    assert answers_match(f"  {text.upper()}  ", text) == (
        normalise_answer(text.upper()) == normalise_answer(text)
    )
    assert answers_match(text, text)


def test_batched_generation_equals_one_by_one(tiny) -> None:
    model, tokenizer = tiny
    prompts = [ROWS[0].prompt, "Predict", ROWS[5].prompt[:40], ROWS[7].prompt]
    batched = generate(model, tokenizer, prompts, batch_size=4, max_new_tokens=5, progress=False)
    single = [
        generate(model, tokenizer, [p], batch_size=1, max_new_tokens=5, progress=False)[0]
        for p in prompts
    ]
    assert batched == single
    assert all(isinstance(text, str) for text in batched)


def test_evaluate_rows_reports_splits_iid_ood_and_ratio(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    plain = Example.create("Predict the risk. Smoking: 1 Answer: ", "Low Risk")  # no split
    no_relations = AnnotatedExample(
        **plain.model_dump(), relations=[], annotation=ROWS[0].annotation
    )
    rows = [*ROWS, no_relations]
    metrics, predictions = evaluate_rows(model, tokenizer, rows, batch_size=4, progress=False)
    assert len(predictions) == 11
    assert set(metrics["splits"]) == {"train", "ood", "all"}
    assert metrics["ood"]["n"] == 4 and metrics["iid"]["n"] == 7
    for name, items in (("train", predictions[:6]), ("ood", predictions[6:10])):
        expected = sum(answers_match(p.prediction, p.reference) for p in items) / len(items)
        assert metrics["splits"][name]["accuracy"] == expected
        assert metrics["splits"][name]["causal_ratio"] > 0
        chosen = [p.choice == p.reference for p in items]
        assert metrics["splits"][name]["choice_accuracy"] == sum(chosen) / len(items)
        for p in items:
            assert list(p.choice_logprobs) == ["High Risk", "Low Risk"]
            assert p.choice == max(p.choice_logprobs, key=p.choice_logprobs.__getitem__)
            assert all(value < 0 for value in p.choice_logprobs.values())
    assert metrics["splits"]["all"]["causal_ratio"] is None
    assert metrics["splits"]["all"]["choice_accuracy"] is None
    assert (
        metrics["splits"]["all"]["choice_skipped"] == "one distinct answer: nothing to choose from"
    )
    assert predictions[-1].choice is None and predictions[-1].choice_logprobs is None
    assert metrics["overall"]["choice_n"] == metrics["iid"]["choice_n"] + 4 == 10
    assert (
        metrics["overall"]["choice_accuracy"]
        == sum(p.choice_correct for p in predictions[:10]) / 10
    )
    ratio, n_rows = causal_ratio(model, tokenizer, ROWS[:6], batch_size=2)
    assert ratio == pytest.approx(metrics["splits"]["train"]["causal_ratio"], rel=1e-5)
    assert n_rows == metrics["splits"]["train"]["ratio_rows"] > 0
    path = write_results(tmp_path, metrics, predictions)
    assert json.loads(path.read_text())["overall"]["n"] == 11
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert lines[-1]["split"] == "all" and lines[-1]["prompt"] == plain.prompt
    assert lines[0]["prompt"] == ROWS[0].prompt
    assert lines[0]["choice_logprobs"] == predictions[0].choice_logprobs


def test_choice_is_skipped_for_large_label_sets(tiny) -> None:
    model, tokenizer = tiny
    metrics, predictions = evaluate_rows(
        model, tokenizer, ROWS, batch_size=4, progress=False, max_choices=1
    )
    for name in ("train", "ood"):
        assert metrics["splits"][name]["choice_accuracy"] is None
        assert metrics["splits"][name]["choice_skipped"] == "2 distinct answers > max_choices 1"
    assert metrics["overall"]["choice_accuracy"] is None and metrics["overall"]["choice_n"] == 0
    assert all(p.choice is None for p in predictions)


def test_choice_loglikelihoods_equal_a_plain_forward(tiny) -> None:
    """Prefix cache shared by the candidates, left padding, batching: same as one full pass."""
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    rows = [
        ChoiceRow([5, 9, 14, 20, 7], [[30, 31, eos], [40, eos], [eos]]),
        ChoiceRow([11, 12], [[50, 51, 52, 53, eos], [60, eos]]),
        ChoiceRow([1, 2, 3, 4, 5, 6, 7, 8], [[70, eos]]),
        ChoiceRow([8], [[eos], [9]]),  # every continuation one token long: no second pass
    ]
    expected = []
    for row in rows:
        scores = []
        for cont in row.continuations:
            ids = torch.tensor([row.prefix + cont])
            with torch.no_grad():
                logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
            n = len(row.prefix)
            scores.append(sum(float(logp[n - 1 + k, t]) for k, t in enumerate(cont)))
        expected.append(scores)
    pad = tokenizer.pad_token_id
    for batch_size in (1, 3, 4):
        got = choice_loglikelihoods(
            model, rows, pad_token_id=pad, batch_size=batch_size, progress=False
        )
        assert [len(g) for g in got] == [len(e) for e in expected]
        for g, e in zip(got, expected, strict=True):
            assert g == pytest.approx(e, abs=1e-4)


def test_choice_row_prefix_does_not_depend_on_the_right_answer(tiny) -> None:
    _, tokenizer = tiny
    prompt = ROWS[0].prompt
    assert prompt.endswith("Answer: ")
    for candidates in (["High Risk", "Low Risk"], ["High Risk", "\n"], ["Low Risk"]):
        row = choice_row(tokenizer, prompt, candidates)
        joined = [tokenize_joined(tokenizer, prompt, c) for c in candidates]
        for j, cont in zip(joined, row.continuations, strict=True):
            assert row.prefix + cont == j.ids + [tokenizer.eos_token_id]  # as trained
            assert len(row.prefix) <= j.prompt_tokens
        if len(candidates) == 1:  # the reference alone: exactly the training row's prompt ids
            assert row.prefix == prompt_ids(tokenizer, prompt, candidates[0])
        if "\n" in candidates:  # " High" takes the prompt's space, "\n" leaves it a prompt token
            assert joined[0].prompt_tokens == len(row.prefix) < joined[1].prompt_tokens
        assert row.prefix == choice_row(tokenizer, prompt, candidates[::-1]).prefix


def test_bf16_runs_every_part_under_autocast(tiny) -> None:
    model, tokenizer = tiny
    seen: list[torch.dtype] = []
    hook = model.lm_head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        fp32, _ = evaluate_rows(model, tokenizer, ROWS, batch_size=4, progress=False)
        assert set(seen) == {torch.float32}
        seen.clear()
        bf16, predictions = evaluate_rows(
            model, tokenizer, ROWS, batch_size=4, progress=False, bf16=True
        )
    finally:
        hook.remove()
    assert set(seen) == {torch.bfloat16}
    assert len(seen) >= 3  # generation, choice scoring (and the causal ratio's passes)
    assert all(p.choice_logprobs is not None for p in predictions)
    for name in ("train", "ood"):
        ratio_fp32, ratio_bf16 = (m["splits"][name]["causal_ratio"] for m in (fp32, bf16))
        assert ratio_bf16 == pytest.approx(ratio_fp32, rel=0.05)


def test_causal_ratio_is_none_without_relations(tiny) -> None:
    model, tokenizer = tiny
    rows = [r.model_copy(update={"relations": []}) for r in ROWS[:2]]
    assert causal_ratio(model, tokenizer, rows) == (None, 0)


def test_plots_are_written(tmp_path: Path) -> None:
    history = [
        {"step": s, "lm_loss": 3.0 - s / 10, "attn_loss": -1.0, "a1": 0.03 + s / 1000,
         "a0": 0.03, "causal_ratio": 1.0 + s / 30, "loss": 1.0}
        for s in range(1, 11)
    ] + [{"step": 10, "train_runtime": 1.0}]  # fmt: skip
    assert series(history, "causal_ratio")[0] == list(range(1, 11))
    written = plot_training(history, tmp_path / "plots", title="cat")
    assert [p.name for p in written] == ["loss.png", "attention.png"]
    assert all(p.read_bytes()[:8] == PNG for p in written)
    compare = plot_comparison({"cat": history, "baseline": history[:5]}, tmp_path / "c.png")
    assert compare.read_bytes()[:8] == PNG


def test_read_parquet_roundtrip_for_eval_rows(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from cattune.schemas import to_table

    pq.write_table(to_table(ROWS, AnnotatedExample), tmp_path / "rows.parquet")
    assert [r.meta.ood for r in read_parquet(tmp_path / "rows.parquet")] == [
        r.meta.ood for r in ROWS
    ]
