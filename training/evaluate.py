"""Evaluation: greedy generation, exact-match accuracy per split (IID / OOD), causal ratio.

Answers are compared after normalisation: surrounding whitespace and a leading ``Answer:`` are
removed, numbers compare numerically (``"84"`` == ``"84.0"``), everything else compares
case-insensitively with runs of whitespace collapsed. Only the first line of a generation counts.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cattune.schemas import AnnotatedExample
from cattune.training.attention import causal_mass
from cattune.training.data import CATCollator, encode_rows, prompt_ids, split_mask
from cattune.training.loss import reattention_loss

_ANSWER_PREFIX = re.compile(r"^\s*answer\s*[:：]\s*", re.IGNORECASE)
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def normalise_answer(text: str) -> str | float:
    """The comparable form of an answer: a float for numbers, else casefolded text."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    value = _ANSWER_PREFIX.sub("", first).strip().rstrip(".").strip()
    compact = value.replace(",", "")
    if _NUMBER.match(compact):
        return float(compact)
    return " ".join(value.split()).casefold()


def answers_match(prediction: str, reference: str) -> bool:
    pred, ref = normalise_answer(prediction), normalise_answer(reference)
    if isinstance(pred, float) and isinstance(ref, float):
        return math.isclose(pred, ref, rel_tol=1e-9, abs_tol=1e-9)
    return pred == ref


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy completions of ``prompts`` (left-padded batches), decoded without special tokens.

    A prompt is a text (tokenized whole, with special tokens) or the ids to start from, such as
    :func:`~cattune.training.data.prompt_ids` of a training row.
    """
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    outputs: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
        encoded = [
            prompt_ids(tokenizer, p) if isinstance(p, str) else list(p)
            for p in prompts[start : start + batch_size]
        ]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, ids in enumerate(encoded):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention[i, width - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = generated[:, width:]
        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs


@torch.no_grad()
def causal_ratio(
    model: Any,
    tokenizer: Any,
    rows: Sequence[AnnotatedExample],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    implementation: str = "efficient",
) -> tuple[float | None, int]:
    """Mean a1/a0 over the valid rows of teacher-forced ``rows`` and the number of such rows."""
    annotated = [r for r in rows if r.relations]
    if not annotated:
        return None, 0
    model.eval()
    device = next(model.parameters()).device
    data = encode_rows(tokenizer, annotated, max_length)
    collate = CATCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
        inputs, mask = split_mask({k: v.to(device) for k, v in batch.items()})
        _, mass = causal_mass(
            model, inputs["input_ids"], inputs["attention_mask"], mask,
            implementation=implementation,
        )  # fmt: skip
        out = reattention_loss(mass, mask, inputs["attention_mask"])
        total += float(out.ratio) * out.valid_rows
        count += out.valid_rows
    return (total / count if count else None), count


@dataclass
class Prediction:
    id: str
    split: str
    ood: bool
    reference: str
    prediction: str
    correct: bool


def _summary(items: Sequence[Prediction]) -> dict[str, float | int]:
    return {"n": len(items), "accuracy": sum(p.correct for p in items) / max(len(items), 1)}


def evaluate_rows(
    model: Any,
    tokenizer: Any,
    rows: Sequence[AnnotatedExample],
    *,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    implementation: str = "efficient",
    progress: bool = True,
) -> tuple[dict[str, Any], list[Prediction]]:
    """Accuracy per split, IID vs OOD and overall, plus the causal ratio where rows have relations.

    ``max_new_tokens`` defaults to the longest reference completion (in tokens) plus 4.
    """
    if max_new_tokens is None:
        longest = max(
            len(tokenizer(r.completion, add_special_tokens=False)["input_ids"]) for r in rows
        )
        max_new_tokens = longest + 4
    texts = generate(
        model, tokenizer, [prompt_ids(tokenizer, r.prompt, r.completion) for r in rows],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens, progress=progress,
    )  # fmt: skip
    predictions = [
        Prediction(
            id=row.id,
            split=row.meta.split or "all",
            ood=row.meta.ood,
            reference=row.completion,
            prediction=text,
            correct=answers_match(text, row.completion),
        )
        for row, text in zip(rows, texts, strict=True)
    ]
    by_split: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        by_split[p.split].append(p)
    metrics: dict[str, Any] = {"overall": _summary(predictions), "splits": {}}
    for name, items in sorted(by_split.items()):
        split_rows = [r for r in rows if (r.meta.split or "all") == name]
        ratio, n_rows = causal_ratio(
            model, tokenizer, split_rows, batch_size=batch_size, max_length=max_length,
            implementation=implementation,
        )  # fmt: skip
        metrics["splits"][name] = {**_summary(items), "causal_ratio": ratio, "ratio_rows": n_rows}
    for flag, name in ((False, "iid"), (True, "ood")):
        chosen = [p for p in predictions if p.ood == flag]
        if chosen:
            metrics[name] = _summary(chosen)
    splits = metrics["splits"].values()
    n_rows = sum(m["ratio_rows"] for m in splits)
    weighted = sum(m["causal_ratio"] * m["ratio_rows"] for m in splits if m["ratio_rows"])
    metrics["overall"].update(causal_ratio=weighted / n_rows if n_rows else None, ratio_rows=n_rows)
    return metrics, predictions


def write_results(
    out_dir: str | Path, metrics: dict[str, Any], predictions: Sequence[Prediction]
) -> Path:
    """metrics.json and predictions.jsonl in ``out_dir``; returns the metrics path."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True), encoding="utf-8")
    with open(root / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for p in predictions:
            handle.write(json.dumps(p.__dict__, ensure_ascii=False) + "\n")
    return path
