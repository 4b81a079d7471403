"""Contract rows -> token ids, labels and causal rectangles; the batch collator.

``prompt + completion`` is tokenized once, as one string with the tokenizer's special tokens (as
the CAT authors do), and EOS is appended. The completion's tokens are those whose character range
reaches past the end of the prompt: a token that straddles the boundary (" High" where the space
ends the prompt) belongs to the completion, and its label is learned. Labels cover exactly the
completion tokens and EOS. The ids before the first completion token are what generation starts
from at evaluation time (:func:`prompt_ids`); they may lack the prompt's trailing space, which the
model then generates. Character spans become token spans through the offset mapping only: a token
belongs to a span if its character range overlaps the span (zero-width special tokens never do).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cattune.schemas import AnnotatedExample, ConfigError, InputError
from cattune.training.mask import CausalMask, Rect, pack_masks, relation_rectangles

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
GROUP_COLS = "cat_group_cols"
ROW_GROUP = "cat_row_group"


def char_span_to_tokens(
    offsets: np.ndarray | Sequence[tuple[int, int]], start: int, end: int
) -> tuple[int, int] | None:
    """The half-open token range whose character ranges overlap ``[start, end)``, or None."""
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    token_start, token_end = spans[:, 0], spans[:, 1]
    hit = np.flatnonzero((token_start < end) & (token_end > start) & (token_end > token_start))
    if hit.size == 0:
        return None
    return int(hit[0]), int(hit[-1]) + 1


@dataclass
class Encoded:
    """One tokenized training row."""

    input_ids: list[int]
    labels: list[int]
    rects: list[Rect]
    prompt_tokens: int
    dropped_spans: int = 0


def require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; cattune maps character "
            "spans to tokens with offset mappings, which only fast (Rust) tokenizers provide. "
            "Save the model with a tokenizer.json (PreTrainedTokenizerFast)"
        )


@dataclass(frozen=True)
class Joined:
    """``prompt + completion`` tokenized as one string (with the tokenizer's special tokens)."""

    ids: list[int]
    offsets: np.ndarray
    """[n, 2] character ranges into ``prompt + completion``."""
    prompt_tokens: int
    """How many tokens come before the first one that reaches past the prompt."""


def tokenize_joined(tokenizer: Any, prompt: str, completion: str) -> Joined:
    """Tokenize ``prompt + completion`` once and find where the completion's tokens begin."""
    enc = tokenizer(prompt + completion, add_special_tokens=True, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    reaching = np.flatnonzero(offsets[:, 1] > len(prompt))
    ids = list(enc["input_ids"])
    return Joined(ids, offsets, int(reaching[0]) if reaching.size else len(ids))


def prompt_ids(tokenizer: Any, prompt: str, completion: str = "") -> list[int]:
    """The ids of the training row ``prompt + completion`` before its first completion token.

    Generation starts from these, so it starts from what training saw. Without a completion this
    is the whole prompt; with one, a trailing space of the prompt may go to the completion.
    """
    joined = tokenize_joined(tokenizer, prompt, completion)
    return joined.ids[: joined.prompt_tokens]


def encode_example(tokenizer, row: AnnotatedExample, max_length: int | None = None) -> Encoded:
    """Tokenize one row; rectangles follow DESIGN.md (rows shifted up by one)."""
    require_fast(tokenizer)
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token; set tokenizer.eos_token")
    joined = tokenize_joined(tokenizer, row.prompt, row.completion)
    end = len(row.prompt) + len(row.completion)
    offsets = np.concatenate([joined.offsets, np.array([[end, end]])])
    ids = joined.ids + [tokenizer.eos_token_id]
    n_prompt = joined.prompt_tokens
    labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    rects: list[Rect] = []
    dropped = 0
    for relation in row.relations:
        effect = char_span_to_tokens(offsets, relation.effect.start, relation.effect.end)
        causes = [char_span_to_tokens(offsets, c.start, c.end) for c in relation.causes]
        dropped += (effect is None) + sum(c is None for c in causes)
        if effect is None:
            continue
        rects.extend(relation_rectangles(effect, [c for c in causes if c is not None]))
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    length = len(ids)
    clipped = [(r0, min(r1, length), c0, min(c1, length)) for r0, r1, c0, c1 in rects]
    rects = [r for r in clipped if r[0] < r[1] and r[2] < r[3]]
    return Encoded(ids, labels, rects, min(n_prompt, length), dropped)


@dataclass
class EncodedRows(Dataset):
    """A map-style dataset of encoded rows (kept as Python lists so rectangles survive)."""

    items: list[Encoded]
    truncated_away: int = 0
    dropped_spans: int = 0
    rows_with_relations: int = field(default=0)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        return {"input_ids": item.input_ids, "labels": item.labels, "rects": item.rects}


def encode_rows(
    tokenizer, rows: Sequence[AnnotatedExample], max_length: int | None = None
) -> EncodedRows:
    """Encode rows; rows whose completion is cut away entirely by ``max_length`` are skipped."""
    if not rows:
        raise InputError("the training data has no rows")
    items: list[Encoded] = []
    lost = dropped = with_relations = 0
    for row in rows:
        item = encode_example(tokenizer, row, max_length)
        dropped += item.dropped_spans
        if all(label == IGNORE_INDEX for label in item.labels):
            lost += 1
            continue
        with_relations += bool(item.rects)
        items.append(item)
    if lost:
        log.warning("%d rows lost their whole completion to max_length=%s", lost, max_length)
    if dropped:
        log.warning("%d spans cover no token (e.g. only whitespace) and were dropped", dropped)
    if not items:
        raise ConfigError(
            f"every row's completion lies beyond max_length={max_length}; raise --max-length"
        )
    return EncodedRows(items, lost, dropped, with_relations)


@dataclass
class CATCollator:
    """Right-pads a batch and adds the packed causal mask as two tensors.

    The mask travels as plain tensors (``cat_group_cols``, ``cat_row_group``) so that Trainer and
    accelerate move it to the device like any other input.
    """

    pad_token_id: int

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        batch = len(features)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        for i, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[i, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(feature["labels"], dtype=torch.long)
            attention[i, :n] = 1
        mask = pack_masks([f["rects"] for f in features], length)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            GROUP_COLS: mask.group_cols,
            ROW_GROUP: mask.row_group,
        }


def split_mask(inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], CausalMask]:
    """Separate the model inputs from the causal mask tensors added by :class:`CATCollator`."""
    rest = dict(inputs)
    mask = CausalMask(group_cols=rest.pop(GROUP_COLS), row_group=rest.pop(ROW_GROUP))
    return rest, mask
