"""Several annotators' relations for the same rows, combined by voting on (effect, cause) pairs.

Rows are matched by id. Every source that has a row votes on it: a pair is kept when the weight of
the sources that have it is more than half the weight of the sources that voted on the row
(majority; with ``weights``, e.g. each annotator's precision on a reviewed subset from
:func:`precision_weights`, a weighted majority). Spans must match exactly to count as one pair.

Each output row records under ``meta.extra``: ``agreement``, the mean exact-pair F1 over every
two voters (1.0 when both found nothing), and ``agreement_voters``. Rows under a threshold are the
ones to send to people: ``cattune review export --disagreement``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

from pydantic import BaseModel

from cattune.annotators.base import stable_hash
from cattune.annotators.quality import Pair, evaluate, pairs
from cattune.pipeline.labelstudio import group_pairs
from cattune.pipeline.review import AGREEMENT_KEY
from cattune.schemas import AnnotatedExample, Annotation, ConfigError, Span

VOTERS_KEY = "agreement_voters"
AGGREGATOR = "vote"
AGGREGATOR_VERSION = "1.0"


class Source(BaseModel):
    """One annotator's rows, under the name its votes are weighed by."""

    name: str
    rows: list[AnnotatedExample]


def pair_f1(a: set[Pair], b: set[Pair]) -> float:
    """Exact F1 between two pair sets; 1.0 when both are empty."""
    if not a and not b:
        return 1.0
    return 2 * len(a & b) / (len(a) + len(b))


def precision_weights(
    sources: Sequence[Source], reviewed: Sequence[AnnotatedExample]
) -> dict[str, float]:
    """Each source's exact-pair precision on the reviewed rows (the weight of its votes)."""
    ids = {row.id for row in reviewed}
    return {
        source.name: evaluate([r for r in source.rows if r.id in ids], reviewed).exact.precision
        for source in sources
    }


def aggregate(
    sources: Sequence[Source], weights: Mapping[str, float] | None = None
) -> list[AnnotatedExample]:
    """One row per id found in any source, its relations the pairs a (weighted) majority chose."""
    names = [s.name for s in sources]
    if len(set(names)) != len(names) or len(sources) < 2:
        raise ConfigError(f"aggregate at least two sources with distinct names, got {names}")
    weight = {name: 1.0 for name in names} | dict(weights or {})
    if any(weight[name] < 0 for name in names) or not any(weight[n] > 0 for n in names):
        raise ConfigError(f"weights must be >= 0 and not all 0, got {weight}")
    by_id: dict[str, dict[str, AnnotatedExample]] = {}
    for source in sources:
        for row in source.rows:
            by_id.setdefault(row.id, {})[source.name] = row
    annotation = Annotation(
        annotator=AGGREGATOR,
        annotator_version=AGGREGATOR_VERSION,
        config_hash=stable_hash({"vote": AGGREGATOR_VERSION, "weights": weight}),
    )
    out = []
    for row_id in sorted(by_id):
        votes = by_id[row_id]
        voted = {name: pairs(row.relations) for name, row in votes.items()}
        total = sum(weight[name] for name in voted)
        tally: dict[Pair, float] = {}
        for name, found in voted.items():
            for pair in found:
                tally[pair] = tally.get(pair, 0.0) + weight[name]
        chosen = [pair for pair, w in tally.items() if w > total / 2]
        sets = list(voted.values())
        mutual = [pair_f1(a, b) for a, b in combinations(sets, 2)]
        agreement = sum(mutual) / len(mutual) if mutual else 1.0
        first = next(iter(votes.values()))
        extra = {
            **first.meta.extra,
            AGREEMENT_KEY: f"{agreement:.4f}",
            VOTERS_KEY: ",".join(sorted(voted)),
        }
        out.append(
            AnnotatedExample(
                id=first.id,
                prompt=first.prompt,
                completion=first.completion,
                meta=first.meta.model_copy(update={"extra": extra}),
                relations=group_pairs([_spans(pair) for pair in chosen]),
                annotation=annotation,
            )
        )
    return out


def _spans(pair: Pair) -> tuple[Span, Span]:
    (effect_start, effect_end), (cause_start, cause_end) = pair
    return Span(start=effect_start, end=effect_end), Span(start=cause_start, end=cause_end)
