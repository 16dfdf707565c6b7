"""A GGUF string array kept as its file bytes, decoded one element at a time.

A vocabulary and its merges are ~100,000 short strings; as Python str objects in lists they cost
~8 MiB (plus the allocator's slack, ~11 MiB of resident memory for SmolLM2), which a run that never
tokenizes text (a benchmark over token ids, a server that is handed ids, `clexrt info`) pays for
nothing. A :class:`StringArray` holds the array's bytes as one ``bytes`` object and the start and
end of each element; an element is decoded (UTF-8, undecodable bytes kept as surrogate escapes,
as the reader decodes every other string) when it is read. It is an immutable sequence: indexing,
slicing (a list), iteration, ``len``, ``in``, equality with any sequence of the same strings, and
``tolist()``.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

__all__ = ["StringArray"]


class StringArray(Sequence):
    __slots__ = ("_data", "_start", "_gap")

    def __init__(self, data: bytes, start: np.ndarray, gap: int = 0):
        """`data` holds every element's bytes, `gap` bytes between consecutive elements (a GGUF
        array's 8-byte lengths); element i is data[start[i]:start[i + 1] - gap], and start has
        one entry more than there are elements (len(data) + gap)."""
        self._data = data
        self._start = start
        self._gap = gap

    @classmethod
    def of(cls, strings) -> "StringArray":
        """From Python strings (tests, writers)."""
        raw = [s.encode("utf-8", "surrogateescape") for s in strings]
        start = np.zeros(len(raw) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in raw], out=start[1:])
        return cls(b"".join(raw), start)

    def __len__(self) -> int:
        return len(self._start) - 1

    def _at(self, i: int) -> str:
        return self._data[int(self._start[i]):int(self._start[i + 1]) - self._gap].decode("utf-8", "surrogateescape")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._at(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        j = operator.index(i)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError("StringArray index out of range")
        return self._at(j)

    def __iter__(self):
        data, dec, gap, start = self._data, bytes.decode, self._gap, self._start.tolist()
        for s, e in zip(start, start[1:]):
            yield dec(data[s:e - gap], "utf-8", "surrogateescape")

    def tolist(self) -> list[str]:
        return list(self)

    def __eq__(self, other):
        if isinstance(other, StringArray):
            return (len(self) == len(other) and self.tolist() == other.tolist())
        if isinstance(other, (list, tuple)):
            return self.tolist() == list(other)
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        n = len(self)
        head = ", ".join(repr(s) for s in self[:4])
        return f"StringArray([{head}{', ...' if n > 4 else ''}], {n} strings)"
