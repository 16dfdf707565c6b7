"""The schedule: for a sequence of N tokens, the scaling factor t (from N alone) and the table
for it (methods.py, or spline.py for CLEX).

    ceil        t = min(ceil(N / L), M)            exactly the official CLEX inference
    continuous  t = clamp(ceil(N * S / L) / S, 1, M)   N/L rounded up to a step of 1/S; S = 0
                follows N/L exactly

S = None (the default) is default_steps(L) = clamp(L // 256, 1, 16): the table changes every L/16
tokens, but not more often than every 256 tokens, so that re-rotating the cache stays a small part
of decoding for models with a short L (docs/clex.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelError
from .methods import linear_inv_freq, ntk_inv_freq, yarn_attn_factor, yarn_inv_freq
from .spline import ClexSpline

METHODS = ("none", "linear", "ntk", "yarn", "clex")
MODES = ("ceil", "continuous")
DEFAULT_STEPS = 16
MIN_STEP_TOKENS = 256


def default_steps(train_length: int) -> int:
    """Steps per unit of t for the continuous mode: 16, fewer where L/16 < 256 tokens."""
    return max(1, min(DEFAULT_STEPS, int(train_length) // MIN_STEP_TOKENS))


@dataclass(frozen=True, eq=False)
class RopeChoice:
    """What a sequence of N tokens is rotated with."""

    method: str
    t: float
    table: np.ndarray                   # float32 [n_rot/2]
    attn_factor: float = 1.0            # YaRN: q and k each scaled by this (q.k by its square)


class RopeSchedule:
    """For a sequence of N tokens: the factor t (depending on N alone), and the table for it.

        sched = RopeSchedule("clex", base, 4096, mode="ceil", clex=read_clex(metadata))
        sched(5000)              -> RopeChoice(method="clex", t=2.0, table=...)
        sched.next_change(5000)  -> 8193 (the first length with another table)

    clex: a tables.ClexTables (or a ClexSpline over one). max_factor caps t (CLEX: the
    GGUF's M; the others: None, no cap). attn_factor: the base table's own (the scaling a GGUF
    declares, methods.declared_rope); every choice carries it, times the method's. Tables are
    cached by t."""

    def __init__(self, method: str, base: np.ndarray, train_length: int, *, mode: str = "ceil",
                 steps: int | None = None, max_factor: float | None = None,
                 clex=None, yarn_beta: tuple[float, float] = (32.0, 1.0), attn_factor: float = 1.0):
        if method not in METHODS:
            raise ModelError(f"unknown rope method {method!r} (choose from {', '.join(METHODS)})")
        if mode not in MODES:
            raise ModelError(f"unknown schedule mode {mode!r} (choose from {', '.join(MODES)})")
        if clex is not None and not isinstance(clex, ClexSpline):
            clex = ClexSpline(clex)
        if method == "clex":
            if clex is None:
                raise ModelError("rope method 'clex' needs a GGUF with clex.* tables "
                                 "(`clexrt clexify IN.gguf -o OUT.gguf --max-factor M` adds them)")
            max_factor = clex.max_factor if max_factor is None else min(max_factor, clex.max_factor)
        if int(train_length) < 1:
            raise ModelError(f"training length must be positive, got {train_length}")
        if steps is None:
            steps = default_steps(train_length)
        if int(steps) < 0:
            raise ModelError(f"steps per training length must be >= 0, got {steps}")
        self.method = method
        self.base = np.ascontiguousarray(base, np.float32)
        self.train_length = int(train_length)
        self.mode = mode
        self.steps = int(steps)
        self.max_factor = None if max_factor is None else float(max_factor)
        self.clex = clex
        self.yarn_beta = yarn_beta
        self.attn_factor = float(attn_factor)
        self._cache: dict[float, RopeChoice] = {}

    @property
    def max_length(self) -> int | None:
        """The longest sequence the method covers (CLEX: L * M), or None."""
        if self.method == "clex":
            return int(self.train_length * self.max_factor)
        return None

    def _units(self) -> int:
        """t moves in steps of 1/units: 1 (ceil), S (continuous), 0 (exact N/L)."""
        return 1 if self.mode == "ceil" else self.steps

    def factor(self, n: int) -> float:
        """t for a sequence of n tokens."""
        if self.method == "none":
            return 1.0
        L, u = self.train_length, self._units()
        t = (-(-int(n) * u // L)) / u if u else int(n) / L
        t = max(t, 1.0)
        if self.max_factor is not None:
            t = min(t, self.max_factor)
        return float(t)

    def next_change(self, n: int) -> int | None:
        """The smallest length above n whose factor differs from n's (None: it never changes)."""
        t = self.factor(n)
        if self.method == "none" or (self.max_factor is not None and t >= self.max_factor):
            return None
        u = self.steps if self.mode == "continuous" else 1
        if u == 0:
            return max(int(n), self.train_length) + 1
        # factor(m) = ceil(m*u/L)/u stays t while m*u <= t*u*L
        return max(int(n), (round(t * u) * self.train_length) // u) + 1

    def table_for(self, t: float) -> RopeChoice:
        t = float(t)
        c = self._cache.get(t)
        if c is None:
            c = self._cache[t] = self._make(t)
        return c

    def __call__(self, n: int) -> RopeChoice:
        return self.table_for(self.factor(n))

    def _make(self, t: float) -> RopeChoice:
        m, base, a = self.method, self.base, self.attn_factor
        if m == "none" or (t == 1.0 and m != "clex"):
            return RopeChoice(m, t, base.copy(), attn_factor=a)
        if m == "linear":
            return RopeChoice(m, t, linear_inv_freq(base, t), attn_factor=a)
        if m == "ntk":
            return RopeChoice(m, t, ntk_inv_freq(base, t), attn_factor=a)
        if m == "yarn":
            fast, slow = self.yarn_beta
            return RopeChoice(m, t, yarn_inv_freq(base, t, self.train_length, fast, slow),
                              attn_factor=a * yarn_attn_factor(t))
        return RopeChoice(m, t, self.clex.table(t), attn_factor=a)


def describe_state(st: dict | None) -> str:
    """One line for a Model.rope_state: "clex (ceil) t=2, 1 table change (rerotate), next at 8193"."""
    if not st:
        return "none t=1"
    m = st.get("method", "none")
    if m == "none":
        return "none t=1"
    n = st.get("table_changes", 0)
    parts = [f"{m} ({st.get('mode')}) t={float(st.get('t', 1)):g}",
             f"{n} table change{'' if n == 1 else 's'} ({st.get('kv_policy')})"]
    if st.get("next_change") is not None:
        parts.append(f"next at {st['next_change']} tokens")
    return ", ".join(parts)
