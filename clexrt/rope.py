"""Rotary frequency tables. Every scaling method is a pure function that returns the table of
n_rot/2 inverse frequencies the C kernel rotates with: pair i of a head at position p turns by
p * inv_freq[i]. The schedule (RopeSchedule) says which table a sequence of N tokens uses.

Methods, for a context of N tokens and a scaling factor s = t (the schedule below):

    none     the base table (the GGUF's, or a CLEX model's stored inv_freq), whatever N is
    linear   position interpolation: inv / s
    ntk      NTK-aware: base' = base * s^(d/(d-2)), i.e. inv_j * s^(-2j/(d-2))
    yarn     YaRN: per-pair ramp between interpolated (inv/s) and original frequencies by how many
             turns the pair makes in L, plus an attention temperature (RopeChoice.attn_factor)
    clex     the CLEX ODE's solution y(t) (log inverse frequencies) from the GGUF's clex.* tables

The factor t depends on N alone (L = training length, M = max factor):

    ceil        t = min(ceil(N / L), M)            exactly the official CLEX inference
    continuous  t = clamp(ceil(N * S / L) / S, 1, M)   N/L rounded up to a step of 1/S; S = 0
                follows N/L exactly

S = None (the default) is default_steps(L) = clamp(L // 256, 1, 16): the table changes every L/16
tokens, but not more often than every 256 tokens, so that re-rotating the cache stays a small part
of decoding for models with a short L (docs/clex.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ModelError

METHODS = ("none", "linear", "ntk", "yarn", "clex")
MODES = ("ceil", "continuous")
DEFAULT_STEPS = 16
MIN_STEP_TOKENS = 256
# The official CLEX time embedding hard-codes this base, whatever rope_theta is.
CLEX_NTK_BASE = 10000.0


def base_inv_freq(freq_base: float, n_rot: int) -> np.ndarray:
    """theta_i = base^(-2i/n_rot), i < n_rot/2, computed in float64 and rounded once to float32."""
    i = np.arange(n_rot // 2, dtype=np.float64)
    return (float(freq_base) ** (-2.0 * i / n_rot)).astype(np.float32)


def gguf_inv_freq(freq_base: float, n_rot: int, *, freq_factors=None, scaling_type=None,
                  scaling_factor=None) -> np.ndarray:
    """The table a GGUF asks for, as llama.cpp reads it: `rope_freqs.weight` divides each
    frequency, and `rope.scaling.type = linear` divides all of them by the factor (position
    interpolation)."""
    inv = base_inv_freq(freq_base, n_rot).astype(np.float64)
    if freq_factors is not None:
        inv = inv / np.asarray(freq_factors, dtype=np.float64)
    if scaling_type == "linear" and scaling_factor and scaling_factor > 0:
        inv = inv / float(scaling_factor)
    return inv.astype(np.float32)


# ------------------------------------------------------------------------------------------
# The classic methods: pure functions of the base table and the factor s
# ------------------------------------------------------------------------------------------
def linear_inv_freq(base: np.ndarray, s: float) -> np.ndarray:
    """Position interpolation (Chen et al. 2023): every frequency divided by s."""
    return (np.asarray(base, np.float64) / max(float(s), 1.0)).astype(np.float32)


def ntk_inv_freq(base: np.ndarray, s: float) -> np.ndarray:
    """NTK-aware scaling: the rope base multiplied by s^(d/(d-2)), so the first pair keeps its
    frequency and the last one is interpolated by exactly s. Written as a factor on each entry of
    the base table, so freq factors and stored (rounded) tables carry over."""
    base = np.asarray(base, np.float64)
    h = base.size
    if h < 2:
        return base.astype(np.float32)
    j = np.arange(h, dtype=np.float64)
    return (base * max(float(s), 1.0) ** (-j / (h - 1))).astype(np.float32)   # 2j/(d-2) = j/(h-1)


def yarn_inv_freq(base: np.ndarray, s: float, train_length: int, beta_fast: float = 32.0,
                  beta_slow: float = 1.0) -> np.ndarray:
    """YaRN (Peng et al. 2023, "NTK-by-parts"): a pair that turns r = L * inv / (2 pi) times
    within the training length L keeps its frequency when r > beta_fast, is interpolated (inv/s)
    when r < beta_slow, and is blended linearly in r in between."""
    base = np.asarray(base, np.float64)
    s = max(float(s), 1.0)
    r = float(train_length) * base / (2 * math.pi)
    gamma = np.clip((r - beta_slow) / (beta_fast - beta_slow), 0.0, 1.0)
    return ((1.0 - gamma) * base / s + gamma * base).astype(np.float32)


def yarn_attn_factor(s: float) -> float:
    """YaRN's sqrt(1/temperature): q and k are both scaled by it, so q.k by its square."""
    return 1.0 if s <= 1 else 0.1 * math.log(s) + 1.0


# ------------------------------------------------------------------------------------------
# CLEX: the baked tables of a GGUF and the tables between them
# ------------------------------------------------------------------------------------------
def _act(name: str, x: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return np.tanh(x)
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    raise ModelError(f"unknown CLEX activation {name!r} (supported: tanh, silu)")


class ClexSpline:
    """Tables at any t in [1, M] from a GGUF's baked CLEX tables (clexrt.clex_tables.ClexTables).

    On a grid point: the baked row (every integer t is one: the official inference's tables).
    Between grid points: the *residual* r(t) = y(t) - log n(t), with log n(t) = -(2j/(d-2))
    log(2t-1) + const the NTK part of the ODE's solution, by a cubic Hermite spline whose slopes
    are the network's exact output r'(t) = net(y + log n(t)) (dy/dt minus n'/n), plus log n(t)
    exact. log n(t) bends sharply near t = 1; the residual is smooth, so the spline's error is
    O(h^4) in the grid step h, far below 0.01 rad of phase at position t*L (tests/test_rope.py
    measures it against a direct ODE solve, on the baked grid and on an integers-only one).
    Without network weights (init "ntk") the slopes are finite differences of the grid values."""

    def __init__(self, tables):
        self.tables = tables
        self.inv_freq = np.asarray(tables.inv_freq, np.float32)
        self.grid = np.asarray(tables.grid, np.float32)
        self.log_inv_freq = np.asarray(tables.tables, np.float32)
        h = self.inv_freq.size
        self._expo = np.arange(h, dtype=np.float64) / (h - 1)          # 2j/(d-2), d = 2h
        g = self.grid.astype(np.float64)
        y = self.log_inv_freq.astype(np.float64)
        self._resid = y - self._bend(g)
        if tables.ode_up is not None:
            j2d = np.arange(h, dtype=np.float64) / h                     # 2j/d
            x = y - j2d[None, :] * math.log(CLEX_NTK_BASE) + self._bend(g)   # y + log n(t)
            up, down = (np.asarray(a, np.float64) for a in (tables.ode_up, tables.ode_down))
            self._slope = _act(tables.act, x @ up) @ down
        elif g.size > 2:
            self._slope = np.gradient(self._resid, g, axis=0, edge_order=2)
        else:
            self._slope = np.zeros_like(self._resid)

    @property
    def train_length(self) -> int:
        return int(self.tables.train_length)

    @property
    def max_factor(self) -> int:
        return int(self.tables.max_factor)

    def _bend(self, t):
        """-(2j/(d-2)) log(2t-1): the part of log n(t) that depends on t, [len(t), h]."""
        t = np.atleast_1d(np.asarray(t, np.float64))
        return -np.log(np.maximum(2 * t - 1, 1.0))[:, None] * self._expo[None, :]

    def log_table(self, t: float) -> np.ndarray:
        """y(t), float64 [h]."""
        t = float(t)
        g = self.grid
        if not (1.0 <= t <= float(g[-1])):
            raise ModelError(f"CLEX factor {t:g} is outside the baked range 1..{float(g[-1]):g}")
        k = int(np.searchsorted(g, np.float32(t)))
        if k < g.size and float(g[k]) == t:
            return self.log_inv_freq[k].astype(np.float64)
        k0 = k - 1
        t0, t1 = float(g[k0]), float(g[k0 + 1])
        dt = t1 - t0
        u = (t - t0) / dt
        h00, h10 = (1 + 2 * u) * (1 - u) ** 2, u * (1 - u) ** 2
        h01, h11 = u * u * (3 - 2 * u), u * u * (u - 1)
        r = (h00 * self._resid[k0] + h10 * dt * self._slope[k0]
             + h01 * self._resid[k0 + 1] + h11 * dt * self._slope[k0 + 1])
        return r + self._bend(t)[0]

    def table(self, t: float) -> np.ndarray:
        """Inverse frequencies at factor t, float32 [h]. t = 1 is the stored inv_freq (as the
        official code uses it); integer t is exp of the baked row (the official inference)."""
        if float(t) == 1.0:
            return self.inv_freq.copy()
        return np.exp(self.log_table(t)).astype(np.float32)


def phase_error(table: np.ndarray, reference: np.ndarray, position: float) -> float:
    """max over pairs of |position * (table - reference)|: radians of rotation a table is off by
    at that position."""
    return float(np.max(np.abs(float(position) * (np.asarray(table, np.float64)
                                                 - np.asarray(reference, np.float64)))))


def default_steps(train_length: int) -> int:
    """Steps per unit of t for the continuous mode: 16, fewer where L/16 < 256 tokens."""
    return max(1, min(DEFAULT_STEPS, int(train_length) // MIN_STEP_TOKENS))


# ------------------------------------------------------------------------------------------
# The schedule: length N -> (method, t, table)
# ------------------------------------------------------------------------------------------
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

    clex: a clexrt.clex_tables.ClexTables (or a ClexSpline over one). max_factor caps t (CLEX: the
    GGUF's M; the others: None, no cap). Tables are cached by t."""

    def __init__(self, method: str, base: np.ndarray, train_length: int, *, mode: str = "ceil",
                 steps: int | None = None, max_factor: float | None = None,
                 clex=None, yarn_beta: tuple[float, float] = (32.0, 1.0)):
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
        m, base = self.method, self.base
        if m == "none" or (t == 1.0 and m != "clex"):
            return RopeChoice(m, t, base.copy())
        if m == "linear":
            return RopeChoice(m, t, linear_inv_freq(base, t))
        if m == "ntk":
            return RopeChoice(m, t, ntk_inv_freq(base, t))
        if m == "yarn":
            fast, slow = self.yarn_beta
            return RopeChoice(m, t, yarn_inv_freq(base, t, self.train_length, fast, slow),
                              attn_factor=yarn_attn_factor(t))
        return RopeChoice(m, t, self.clex.table(t))


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
