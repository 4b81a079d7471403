"""Sets of row ids in 16 bytes an id, for checks over a whole source, write or dataset.

A run over a million rows used to hold its ids as Python strings (the repeats seen while reading
the source, the ids already annotated) and Arrow hash tables (the checks of a write): about
130 MB each, and more kept afterwards by the allocators. An ``IdSet`` keeps 128-bit keys in
sorted NumPy arrays instead: two independent 64-bit SipHashes of each id (pandas'
``hash_array``). Ids are themselves 128-bit content hashes, so two ids sharing a key is no more
likely than two texts sharing an id.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

_HASH_KEYS = ("cattune-id-key-1", "cattune-id-key-2")  # 16 bytes each, as hash_array requires
_KEY = np.dtype("S16")  # a pair of uint64 viewed as 16 bytes: sorts and compares as one value

Ids = pa.Array | pa.ChunkedArray


def id_keys(ids: Ids) -> np.ndarray:
    """The 128-bit key of each id, in order."""
    values = ids.to_numpy(zero_copy_only=False)
    halves = [pd.util.hash_array(values, hash_key=key, categorize=False) for key in _HASH_KEYS]
    return np.column_stack(halves).view(_KEY).ravel()


class IdSet:
    """A set of ids that grows batch by batch.

    Keys live in sorted, disjoint levels whose sizes at least double downwards (a level is
    merged into the one below while that one is not twice its size): a lookup searches a few
    levels, and each key is re-sorted a logarithmic number of times.
    """

    def __init__(self, chunks: Iterable[Ids] = ()) -> None:
        self._levels: list[np.ndarray] = []
        self.repeats = 0
        """How many of the ids added repeated one added before."""
        for chunk in chunks:
            self.add(chunk)

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    def __contains__(self, value: str) -> bool:
        return bool(self.isin(pa.array([value], pa.string()))[0])

    def isin(self, ids: Ids) -> np.ndarray:
        """A boolean mask: which of ``ids`` are in the set."""
        return self._holds(id_keys(ids))

    def add(self, ids: Ids) -> np.ndarray:
        """Add ``ids``; returns a mask of those that were new (only the first of a repeat)."""
        keys = id_keys(ids)
        unique, first = np.unique(keys, return_index=True)
        fresh = ~self._holds(unique)
        new = np.zeros(len(keys), bool)
        new[first[fresh]] = True
        self.repeats += len(keys) - len(first[fresh])
        if fresh.any():
            self._levels.append(unique[fresh])
            while len(self._levels) > 1 and len(self._levels[-2]) < 2 * len(self._levels[-1]):
                top = self._levels.pop()
                merged = np.concatenate([self._levels[-1], top])
                merged.sort(kind="stable")  # two sorted runs: a merge, not a full sort
                self._levels[-1] = merged
        return new

    def _holds(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), bool)
        for level in self._levels:
            at = np.searchsorted(level, keys).clip(max=len(level) - 1)
            found |= level[at] == keys
        return found
