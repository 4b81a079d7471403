"""The CAT token mask, stored as rectangles and packed into row groups.

For an effect covering tokens [p, p+e) and a cause covering tokens [q, q+c) that ends before the
effect starts, the mask is M[p-1 : p+e-1, q : q+c] = 1 (rows shifted up by one: the token at p is
predicted from position p-1). As in the CAT authors' dataloader, at least one token must separate
cause and effect (q + c < p): a cause ending at p-1 would ask row p-1 to attend to its own token,
so such a pair gives no rectangle. A row may be covered by several rectangles; its causal set is the
union of their columns. Rows with identical causal sets share one *group*, so a batch needs only
K column sets ([B, K, T]) and one group index per row ([B, T]) instead of a T x T array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Rect = tuple[int, int, int, int]
"""(row_start, row_end, col_start, col_end): half-open token indices, rows already shifted."""


def relation_rectangles(effect: tuple[int, int], causes: Sequence[tuple[int, int]]) -> list[Rect]:
    """Rectangles of one relation given token spans (start, end) of its effect and causes.

    Causes are kept only when at least one token lies between them and the effect (q + c < p,
    the authors' rule); causes touching, overlapping or following the effect are dropped, as are
    empty spans. An effect at token 0 has no preceding tokens, so it gives no rectangles.
    """
    p, p_end = effect
    if p_end <= p or p <= 0:
        return []
    rects: list[Rect] = []
    for q, q_end in causes:
        if q_end <= q or q < 0 or q_end >= p:
            continue
        rects.append((p - 1, p_end - 1, q, q_end))
    return rects


@dataclass
class CausalMask:
    """A batch of CAT masks: the causal column set of every row, grouped."""

    group_cols: Tensor
    """[B, K, T] float 0/1: the column sets ("groups") of each example."""
    row_group: Tensor
    """[B, T] long: the group of each row; -1 = the row has no causal columns."""

    @property
    def seq_len(self) -> int:
        return int(self.row_group.shape[1])

    def to(self, device: torch.device | str) -> CausalMask:
        return CausalMask(self.group_cols.to(device), self.row_group.to(device))


def _merge(intervals: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Union of half-open intervals as a canonical sorted tuple of disjoint intervals."""
    merged: list[list[int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((s, e) for s, e in merged)


def _example_groups(
    rects: Sequence[Rect], seq_len: int
) -> tuple[list[tuple[tuple[int, int], ...]], list[tuple[int, int, int]]]:
    """Distinct column sets of one example and the (row_start, row_end, group) segments."""
    clipped = []
    for r0, r1, c0, c1 in rects:
        r0, r1 = max(r0, 0), min(r1, seq_len)
        c0, c1 = max(c0, 0), min(c1, seq_len)
        if r0 < r1 and c0 < c1:
            clipped.append((r0, r1, c0, c1))
    bounds = sorted({b for r in clipped for b in (r[0], r[1])})
    groups: dict[tuple[tuple[int, int], ...], int] = {}
    segments: list[tuple[int, int, int]] = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        cols = [(c0, c1) for r0, r1, c0, c1 in clipped if r0 <= start and end <= r1]
        if not cols:
            continue
        key = _merge(cols)
        group = groups.setdefault(key, len(groups))
        segments.append((start, end, group))
    return list(groups), segments


def pack_masks(rects: Sequence[Sequence[Rect]], seq_len: int) -> CausalMask:
    """Pack per-example rectangles into a CausalMask of length seq_len (everything is clipped)."""
    per_example = [_example_groups(example, seq_len) for example in rects]
    n_groups = max((len(groups) for groups, _ in per_example), default=0)
    group_cols = torch.zeros(len(rects), n_groups, seq_len)
    row_group = torch.full((len(rects), seq_len), -1, dtype=torch.long)
    for b, (groups, segments) in enumerate(per_example):
        for k, intervals in enumerate(groups):
            for c0, c1 in intervals:
                group_cols[b, k, c0:c1] = 1.0
        for start, end, k in segments:
            row_group[b, start:end] = k
    return CausalMask(group_cols=group_cols, row_group=row_group)


def dense_mask(mask: CausalMask) -> Tensor:
    """The [B, T, T] boolean mask M (row i, column j), for tests and the eager path."""
    batch, n_groups, seq_len = mask.group_cols.shape
    if n_groups == 0:
        return torch.zeros(batch, seq_len, seq_len, dtype=torch.bool, device=mask.row_group.device)
    index = mask.row_group.clamp_min(0).unsqueeze(-1).expand(batch, seq_len, seq_len)
    rows = torch.gather(mask.group_cols, 1, index) > 0
    return rows & (mask.row_group >= 0).unsqueeze(-1)
