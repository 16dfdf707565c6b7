"""The merge loop both vocabulary kinds share: adjacent symbols joined best pair first."""
from __future__ import annotations

import heapq


def merge(symbols: list[str], priority) -> list[str]:
    """Merge adjacent symbols best pair first, until no pair has a priority.

    `priority(left, right)` returns a sort key (smaller merges first) or None. Ties go to the
    leftmost pair. Symbols live in a linked list; the heap keeps candidate pairs, and a popped
    pair is used only if both symbols are still what they were when it was pushed.
    """
    n = len(symbols)
    if n < 2:
        return symbols
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))

    def candidate(left: int, right: int):
        a, b = symbols[left], symbols[right]
        key = priority(a, b)
        return None if key is None else (key, left, right, a, b)

    heap = [c for c in map(candidate, range(n - 1), range(1, n)) if c is not None]
    heapq.heapify(heap)

    def push(left: int, right: int) -> None:
        c = candidate(left, right)
        if c is not None:
            heapq.heappush(heap, c)

    while heap:
        _, left, right, a, b = heapq.heappop(heap)
        if symbols[left] != a or symbols[right] != b:
            continue  # stale: one side has merged since
        symbols[left] = a + b
        symbols[right] = ""
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prv[after] = left
            push(left, after)
        before = prv[left]
        if before >= 0:
            push(before, left)
    out, i = [], 0
    while i >= 0:
        out.append(symbols[i])
        i = nxt[i]
    return out
