"""Sets of row ids in 16 bytes an id, for checks over a whole dataset or write.

A write of a million rows used to hold its ids as Arrow strings and build Arrow hash tables over
them (about 130 MB at its peak, kept afterwards by Arrow's allocator). An ``IdSet`` keeps a
sorted array of 128-bit keys instead: two independent 64-bit SipHashes of each id (pandas'
``hash_array``). Ids are themselves 128-bit content hashes, so two ids sharing a key is no more
likely than two texts sharing an id.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

_HASH_KEYS = ("cattune-id-key-1", "cattune-id-key-2")  # 16 bytes each, as hash_array requires
_KEY = np.dtype("S16")  # a (hi, lo) pair of uint64 viewed as 16 bytes: sorts and compares whole


def id_keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The 128-bit key of each id, in order (``S16``)."""
    values = ids.to_numpy(zero_copy_only=False)
    halves = [pd.util.hash_array(values, hash_key=key, categorize=False) for key in _HASH_KEYS]
    return np.column_stack(halves).view(_KEY).ravel()


class IdSet:
    """An immutable set of ids, built from a stream of id arrays."""

    def __init__(self, chunks: Iterable[pa.Array | pa.ChunkedArray] = ()) -> None:
        keys = [id_keys(chunk) for chunk in chunks]
        ordered = np.concatenate(keys) if keys else np.empty(0, _KEY)
        del keys
        ordered.sort()
        first = np.ones(len(ordered), bool)
        first[1:] = ordered[1:] != ordered[:-1]
        self._keys = ordered[first]
        self.repeats = len(ordered) - len(self._keys)
        """How many of the ids read repeated an earlier one."""

    def __len__(self) -> int:
        return len(self._keys)

    def isin(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """A boolean mask: which of ``ids`` are in the set."""
        keys = id_keys(ids)
        if not len(self._keys):
            return np.zeros(len(keys), bool)
        at = np.searchsorted(self._keys, keys).clip(max=len(self._keys) - 1)
        return self._keys[at] == keys
