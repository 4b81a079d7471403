"""Evaluation: greedy exact match and label-choice accuracy per split (IID / OOD), causal ratio.

Greedy generation (the paper's metric) starts from the ids a training row has before its first
completion token. Answers are compared after normalisation: surrounding whitespace and a leading
``Answer:`` are removed, numbers compare numerically (``"84"`` == ``"84.0"``), everything else
compares case-insensitively with runs of whitespace collapsed. Only the first line of a generation
counts.

Label choice (as lm-evaluation-harness scores multiple choice): each row's candidates are the
distinct reference completions of its split; each is tokenized joined with the prompt exactly like
a training row, and the model's summed log-likelihood of its tokens (EOS included, as trained) is
computed; the prediction is the argmax. The prompt runs once per row and its key/value cache
serves all candidates.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cattune.schemas import AnnotatedExample, InputError
from cattune.training.attention import causal_mass
from cattune.training.data import (
    CATCollator,
    encode_rows,
    prompt_ids,
    split_mask,
    tokenize_joined,
)
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


@dataclass
class ChoiceRow:
    """One prompt with its candidate completions, tokenized as training rows."""

    prefix: list[int]
    """The ids all candidates' training rows share before their first completion token."""
    continuations: list[list[int]]
    """Per candidate: the rest of its training row, EOS included (the scored tokens)."""


def choice_row(tokenizer: Any, prompt: str, candidates: Sequence[str]) -> ChoiceRow:
    """Tokenize ``prompt + candidate`` for every candidate and split them at a shared prefix.

    With one candidate (the reference) the prefix is exactly the training row's prompt ids. With
    several it is the longest prefix common to all of them before any completion token, so that
    it does not depend on which candidate is right (it is the same prefix whenever the tokenizer
    splits the prompt the same way for every candidate, as for SmolLM2 on STG).
    """
    joined = [tokenize_joined(tokenizer, prompt, c) for c in candidates]
    cut = min(j.prompt_tokens for j in joined)
    first = joined[0].ids
    for other in joined[1:]:
        pairs = zip(first[:cut], other.ids[:cut], strict=True)  # cut <= either length
        differ = (i for i, (a, b) in enumerate(pairs) if a != b)
        cut = next(differ, cut)
    if cut == 0:
        raise InputError(
            f"the prompt {prompt[:40]!r} gives no token before its completion (an empty prompt "
            "and no BOS token?); evaluation needs at least one prompt token to start from"
        )
    eos = [tokenizer.eos_token_id]
    return ChoiceRow(first[:cut], [j.ids[cut:] + eos for j in joined])


@torch.no_grad()
def choice_loglikelihoods(
    model: Any,
    rows: Sequence[ChoiceRow],
    *,
    pad_token_id: int,
    batch_size: int = 16,
    progress: bool = True,
) -> list[list[float]]:
    """Summed log-likelihood of each row's continuations given its prefix.

    Prefixes run once per batch of ``batch_size`` rows (left-padded, positions counted from the
    first real token); their key/value cache is copied to every continuation of the row, and the
    continuations (right-padded) run on top of it. Only the logits of scored tokens are computed.
    """
    model.eval()
    device = next(model.parameters()).device
    scores: list[list[float]] = []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="choices", disable=not progress, leave=False):
        chunk = rows[start : start + batch_size]
        width = max(len(r.prefix) for r in chunk)
        input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, row in enumerate(chunk):
            input_ids[i, width - len(row.prefix) :] = torch.tensor(row.prefix)
            attention[i, width - len(row.prefix) :] = 1
        attention = attention.to(device)
        out = model(
            input_ids=input_ids.to(device), attention_mask=attention,
            position_ids=(attention.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        owner = [i for i, row in enumerate(chunk) for _ in row.continuations]
        conts = [c for row in chunk for c in row.continuations]
        first = out.logits[:, -1].float().log_softmax(-1)[owner, [c[0] for c in conts]]
        cache = out.past_key_values
        flat = first + _rest_loglikelihood(model, cache, attention, owner, conts, pad_token_id)
        flat = flat.tolist()
        for row in chunk:
            scores.append(flat[: len(row.continuations)])
            flat = flat[len(row.continuations) :]
    return scores


def _rest_loglikelihood(
    model: Any,
    cache: Any,
    prefix_mask: torch.Tensor,
    owner: list[int],
    conts: list[list[int]],
    pad_token_id: int,
) -> torch.Tensor:
    """log p(cont[1:] | prefix, cont[:1]) summed per continuation, from the prefixes' cache.

    ``owner[k]`` is the prefix (row of ``prefix_mask`` and of the cache) of continuation k.
    """
    device = prefix_mask.device
    longest = max(len(c) for c in conts) - 1
    if longest == 0:
        return torch.zeros(len(conts), device=device)
    inputs = torch.full((len(conts), longest), pad_token_id, dtype=torch.long)
    targets = torch.zeros((len(conts), longest), dtype=torch.long)
    scored = torch.zeros((len(conts), longest), dtype=torch.long)
    for k, cont in enumerate(conts):
        inputs[k, : len(cont) - 1] = torch.tensor(cont[:-1])
        targets[k, : len(cont) - 1] = torch.tensor(cont[1:])
        scored[k, : len(cont) - 1] = 1
    index = torch.tensor(owner, device=device)
    cache.batch_select_indices(index)
    mask = torch.cat([prefix_mask[index], scored.to(device)], dim=1)
    logits = model(
        input_ids=inputs.to(device), attention_mask=mask, past_key_values=cache, use_cache=True,
        position_ids=(mask.cumsum(-1) - 1)[:, prefix_mask.shape[1] :].clamp(min=0),
    ).logits.float()  # fmt: skip
    targets = targets.to(device)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (picked * scored.to(device)).sum(-1)


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
    prompt: str
    reference: str
    prediction: str
    correct: bool
    choice: str | None = None
    """The most likely candidate of the split's label set (None where choice is skipped)."""
    choice_correct: bool | None = None
    choice_logprobs: dict[str, float] | None = None
    """Summed log-likelihood of each candidate (its tokens and EOS)."""


def _summary(items: Sequence[Prediction]) -> dict[str, Any]:
    chosen = [p.choice_correct for p in items if p.choice_correct is not None]
    return {
        "n": len(items),
        "accuracy": sum(p.correct for p in items) / max(len(items), 1),
        "choice_accuracy": sum(chosen) / len(chosen) if chosen else None,
        "choice_n": len(chosen),
    }


def _why_no_choice(n_labels: int, max_choices: int) -> str | None:
    if n_labels > max_choices:
        return f"{n_labels} distinct answers > max_choices {max_choices}"
    if n_labels < 2:
        return "one distinct answer: nothing to choose from"
    return None


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
    max_choices: int = 16,
    bf16: bool = False,
) -> tuple[dict[str, Any], list[Prediction]]:
    """Accuracy per split, IID vs OOD and overall, plus the causal ratio where rows have relations.

    Every summary has ``accuracy`` (greedy exact match) and ``choice_accuracy`` (label choice over
    the split's distinct reference completions, ``choice_n`` rows); a split with more than
    ``max_choices`` distinct answers (or only one) is not choice-scored, its ``choice_accuracy``
    is None and ``choice_skipped`` says why (``max_choices=0`` turns choice scoring off).
    ``max_new_tokens`` defaults to the longest reference completion (in tokens, EOS included) plus
    3. With ``bf16`` generation, choice scoring and the causal ratio run under bfloat16 autocast.
    """
    if not rows:
        raise InputError("no evaluation rows")
    splits = [r.meta.split or "all" for r in rows]
    labels = {
        name: sorted({r.completion for r, s in zip(rows, splits, strict=True) if s == name})
        for name in set(splits)
    }
    skipped = {name: _why_no_choice(len(found), max_choices) for name, found in labels.items()}
    plans = [
        choice_row(tokenizer, r.prompt, [r.completion] if skipped[s] else labels[s])
        for r, s in zip(rows, splits, strict=True)
    ]
    if max_new_tokens is None:
        max_new_tokens = max(len(c) for plan in plans for c in plan.continuations) + 3
    scored = [i for i, s in enumerate(splits) if not skipped[s]]
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        texts = generate(
            model, tokenizer, [plan.prefix for plan in plans], batch_size=batch_size,
            max_new_tokens=max_new_tokens, progress=progress,
        )  # fmt: skip
        logprobs = choice_loglikelihoods(
            model, [plans[i] for i in scored], pad_token_id=tokenizer.pad_token_id,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip
        ratios = {
            name: causal_ratio(
                model,
                tokenizer,
                [r for r, s in zip(rows, splits, strict=True) if s == name],
                batch_size=batch_size,
                max_length=max_length,
                implementation=implementation,
            )  # fmt: skip
            for name in sorted(labels)
        }
    predictions = [
        Prediction(
            id=row.id,
            split=split,
            ood=row.meta.ood,
            prompt=row.prompt,
            reference=row.completion,
            prediction=text,
            correct=answers_match(text, row.completion),
        )
        for row, split, text in zip(rows, splits, texts, strict=True)
    ]
    for i, scores in zip(scored, logprobs, strict=True):
        candidates = labels[splits[i]]
        best = candidates[scores.index(max(scores))]
        predictions[i].choice = best
        predictions[i].choice_correct = answers_match(best, rows[i].completion)
        predictions[i].choice_logprobs = dict(zip(candidates, scores, strict=True))
    metrics: dict[str, Any] = {"overall": _summary(predictions), "splits": {}}
    for name, (ratio, n_rows) in ratios.items():
        items = [p for p in predictions if p.split == name]
        split_metrics = {**_summary(items), "causal_ratio": ratio, "ratio_rows": n_rows}
        if skipped[name]:
            split_metrics["choice_skipped"] = skipped[name]
        metrics["splits"][name] = split_metrics
    for flag, name in ((False, "iid"), (True, "ood")):
        chosen = [p for p in predictions if p.ood == flag]
        if chosen:
            metrics[name] = _summary(chosen)
    split_values = metrics["splits"].values()
    n_rows = sum(m["ratio_rows"] for m in split_values)
    weighted = sum(m["causal_ratio"] * m["ratio_rows"] for m in split_values if m["ratio_rows"])
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
