"""Annotation quality: predicted relations scored against gold relations, row by row.

A relation set is read as (effect span, cause span) **pairs**: a relation with effect E and causes
C1..Cn contributes the n pairs (E, Ci). Rows are matched by ``id``.

- **exact**: a predicted pair matches a gold pair of the same row when both spans are identical.
- **overlap**: the text is split into word tokens (maximal runs of ``\\w`` characters); a span
  *covers* a word token when they share at least one character. A predicted pair (E, C) matches a
  gold pair (E', C') of the same row when E and E' cover at least one common word token, and so do
  C and C'. A span that covers no word token (only spaces or punctuation) matches a span it shares
  at least one character with, so an exact match is always an overlap match. Precision counts
  predicted pairs that match some gold pair, recall counts gold pairs matched by some predicted
  pair (the same pair may match several).

Precision = matched predicted pairs / predicted pairs, recall = matched gold pairs / gold pairs,
F1 their harmonic mean (0 when both are 0). Gold rows without a prediction count as predicting
nothing; predicted rows without gold are reported (``unmatched_pred``) but not scored. Coverage is
the share of gold rows whose prediction has at least one relation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

from pydantic import BaseModel

from cattune.schemas import Relation

_WORD = re.compile(r"\w+")

Pair = tuple[tuple[int, int], tuple[int, int]]


class Labelled(Protocol):
    """Anything with an id, a text and relations (AnnotatedExample, QuarantinedExample)."""

    id: str
    relations: list[Relation]

    @property
    def text(self) -> str: ...


class Score(BaseModel):
    precision: float
    recall: float
    f1: float
    matched_pred: int
    matched_gold: int


class QualityReport(BaseModel):
    rows: int
    pred_pairs: int
    gold_pairs: int
    exact: Score
    overlap: Score
    coverage: float
    missing_pred: int
    unmatched_pred: int


def pairs(relations: Iterable[Relation]) -> set[Pair]:
    """The (effect, cause) span pairs of a row's relations."""
    return {((r.effect.start, r.effect.end), (c.start, c.end)) for r in relations for c in r.causes}


def _word_ids(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _WORD.finditer(text)]


def _score(matched_pred: int, pred: int, matched_gold: int, gold: int) -> Score:
    precision = matched_pred / pred if pred else 0.0
    recall = matched_gold / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Score(
        precision=precision,
        recall=recall,
        f1=f1,
        matched_pred=matched_pred,
        matched_gold=matched_gold,
    )


def _covered(words: list[tuple[int, int]], span: tuple[int, int]) -> frozenset[int]:
    return frozenset(i for i, (s, e) in enumerate(words) if s < span[1] and span[0] < e)


def _overlap_matches(text: str, pred: set[Pair], gold: set[Pair]) -> tuple[int, int]:
    words = _word_ids(text)
    cover = {span: _covered(words, span) for pair in pred | gold for span in pair}

    def meets(a: tuple[int, int], b: tuple[int, int]) -> bool:
        if cover[a] and cover[b]:
            return bool(cover[a] & cover[b])
        return a[0] < b[1] and b[0] < a[1]

    def hit(p: Pair, g: Pair) -> bool:
        return meets(p[0], g[0]) and meets(p[1], g[1])

    matched_pred = sum(any(hit(p, g) for g in gold) for p in pred)
    matched_gold = sum(any(hit(p, g) for p in pred) for g in gold)
    return matched_pred, matched_gold


def evaluate(pred: Iterable[Labelled], gold: Iterable[Labelled]) -> QualityReport:
    """Score predicted rows against gold rows (matched by id); see the module docstring."""
    pred_by_id = {row.id: row for row in pred}
    gold_rows = list({row.id: row for row in gold}.values())
    n_pred = n_gold = exact_hits = ov_pred = ov_gold = covered = missing = 0
    for row in gold_rows:
        gold_pairs = pairs(row.relations)
        predicted = pred_by_id.get(row.id)
        pred_pairs = pairs(predicted.relations) if predicted is not None else set()
        missing += predicted is None
        covered += bool(pred_pairs)
        n_pred += len(pred_pairs)
        n_gold += len(gold_pairs)
        exact_hits += len(pred_pairs & gold_pairs)
        matched_pred, matched_gold = _overlap_matches(row.text, pred_pairs, gold_pairs)
        ov_pred += matched_pred
        ov_gold += matched_gold
    gold_ids = {row.id for row in gold_rows}
    return QualityReport(
        rows=len(gold_rows),
        pred_pairs=n_pred,
        gold_pairs=n_gold,
        exact=_score(exact_hits, n_pred, exact_hits, n_gold),
        overlap=_score(ov_pred, n_pred, ov_gold, n_gold),
        coverage=covered / len(gold_rows) if gold_rows else 0.0,
        missing_pred=missing,
        unmatched_pred=sum(i not in gold_ids for i in pred_by_id),
    )
