"""IdSet: the store's 16-bytes-an-id set, checked against Python sets on arbitrary ids."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from cattune.pipeline.id_set import IdSet

ids = st.lists(st.text(max_size=40), max_size=60)  # any unicode: emoji, CJK, "", NUL
chunked = st.lists(ids, max_size=4)


@given(chunked, ids)
def test_idset_is_a_set(chunks: list[list[str]], probe: list[str]) -> None:
    every = [value for chunk in chunks for value in chunk]
    known = IdSet(pa.array(chunk, pa.string()) for chunk in chunks)
    assert len(known) == len(set(every))
    assert known.repeats == len(every) - len(set(every))
    asked = probe + every
    assert known.isin(pa.array(asked, pa.string())).tolist() == [v in set(every) for v in asked]


def test_ids_differing_in_one_character_or_a_trailing_nul_stay_apart() -> None:
    known = IdSet([pa.array(["a", "a\0", "文字", "文字\0", "🙂", ""])])
    assert (len(known), known.repeats) == (6, 0)
    assert known.isin(pa.array(["b", "\0", "字", "🙂"])).tolist() == [False, False, False, True]
