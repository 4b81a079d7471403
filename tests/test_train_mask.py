"""The CAT mask: rectangles, grouping and the dense form against DESIGN.md's formula."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from cattune.training.mask import dense_mask, pack_masks, relation_rectangles

FULL_LEN = 24


def formula_mask(relations: list[tuple[tuple[int, int], list[tuple[int, int]]]]) -> torch.Tensor:
    """M[p-1 : p+e-1, q : q+c] = 1 for every cause with q + c < p (DESIGN.md, the authors' rule)."""
    m = torch.zeros(FULL_LEN, FULL_LEN, dtype=torch.bool)
    for (p, p_end), causes in relations:
        for q, q_end in causes:
            if p >= 1 and q_end < p:
                m[p - 1 : p_end - 1, q:q_end] = True
    return m


span = st.tuples(st.integers(0, FULL_LEN - 1), st.integers(1, 6)).map(
    lambda s: (s[0], min(s[0] + s[1], FULL_LEN))
)
relation = st.tuples(span, st.lists(span, max_size=3))
example = st.lists(relation, max_size=4)


@given(batch=st.lists(example, min_size=1, max_size=3), seq_len=st.integers(1, FULL_LEN))
def test_dense_mask_matches_formula_with_truncation(batch, seq_len) -> None:
    rects = [
        [r for effect, causes in relations for r in relation_rectangles(effect, causes)]
        for relations in batch
    ]
    mask = pack_masks(rects, seq_len)
    assert mask.group_cols.shape[::2] == (len(batch), seq_len)
    dense = dense_mask(mask)
    for b, relations in enumerate(batch):
        assert torch.equal(dense[b], formula_mask(relations)[:seq_len, :seq_len])


@given(batch=st.lists(example, min_size=1, max_size=3))
def test_identical_row_sets_share_one_group(batch) -> None:
    rects = [[r for e, c in rels for r in relation_rectangles(e, c)] for rels in batch]
    mask = pack_masks(rects, FULL_LEN)
    dense = dense_mask(mask)
    for b in range(len(batch)):
        rows = {tuple(dense[b, i].tolist()) for i in range(FULL_LEN) if dense[b, i].any()}
        used = set(mask.row_group[b][mask.row_group[b] >= 0].tolist())
        assert len(used) == len(rows)
        assert all(bool(dense[b, i].any()) == (mask.row_group[b, i] >= 0) for i in range(FULL_LEN))


def test_rows_are_shifted_up_by_one() -> None:
    assert relation_rectangles((5, 8), [(1, 3)]) == [(4, 7, 1, 3)]


def test_effect_at_token_zero_gives_no_rows() -> None:
    assert relation_rectangles((0, 3), [(0, 1)]) == []
    assert relation_rectangles((0, 3), []) == []


def test_cause_overlapping_or_after_effect_is_dropped() -> None:
    assert relation_rectangles((5, 8), [(4, 6), (6, 7), (9, 10), (1, 4)]) == [(4, 7, 1, 4)]


def test_authors_gap_rule_cause_ending_at_effect_start_is_dropped() -> None:
    """The authors' dataloader links a cause [q, q+c) to an effect at p only if q + c < p.

    A cause ending right where its effect starts (q + c == p) would put its last token q+c-1 =
    p-1 in the mask row p-1, asking that row to attend to its own token; such a pair is dropped.
    """
    assert relation_rectangles((5, 8), [(2, 5)]) == []  # adjacent: q + c == p
    assert relation_rectangles((5, 8), [(2, 4)]) == [(4, 7, 2, 4)]  # one token between
    assert relation_rectangles((1, 3), [(0, 1)]) == []  # adjacent at the very start
    dense = dense_mask(pack_masks([relation_rectangles((5, 8), [(0, 5), (1, 3)])], 10))[0]
    assert not dense.diagonal().any()  # no row is asked to attend to its own token
    assert dense[4].nonzero().flatten().tolist() == [1, 2]


def test_empty_spans_are_dropped() -> None:
    assert relation_rectangles((5, 5), [(1, 2)]) == []
    assert relation_rectangles((5, 7), [(2, 2)]) == []


def test_overlapping_rectangles_union_their_columns() -> None:
    mask = pack_masks([[(2, 6, 0, 2), (4, 8, 1, 3)]], 10)
    dense = dense_mask(mask)
    assert dense[0, 3].nonzero().flatten().tolist() == [0, 1]
    assert dense[0, 5].nonzero().flatten().tolist() == [0, 1, 2]
    assert dense[0, 7].nonzero().flatten().tolist() == [1, 2]
    assert mask.group_cols.shape[1] == 3


def test_truncation_clips_rows_and_drops_cut_causes() -> None:
    mask = pack_masks([[(6, 9, 0, 2), (2, 4, 5, 7)]], 6)
    dense = dense_mask(mask)
    assert dense.shape == (1, 6, 6)
    assert not dense[0, :2].any() and not dense[0, 4:].any()
    assert dense[0, 2].nonzero().flatten().tolist() == [5]


def test_empty_batch_has_no_groups() -> None:
    mask = pack_masks([[], []], 5)
    assert mask.group_cols.shape == (2, 0, 5)
    assert (mask.row_group == -1).all()
    assert not dense_mask(mask).any()
