"""Every RoPE scaling method as a pure function that returns a table of inverse frequencies.

A table has n_rot/2 entries: pair i of a head at position p turns by p * inv_freq[i]. The C core
rotates with whatever table it is given and knows nothing of the methods below.

    none     the base table (the GGUF's, or a CLEX model's stored inv_freq), whatever N is
    linear   position interpolation: inv / s
    ntk      NTK-aware: base' = base * s^(d/(d-2)), i.e. inv_j * s^(-2j/(d-2))
    yarn     YaRN: per-pair ramp between interpolated (inv/s) and original frequencies by how many
             turns the pair makes in L, plus an attention temperature (yarn_attn_factor)
    clex     the CLEX ODE's solution y(t) (ode.py, baked into tables.py, between grid points
             spline.py)

The NTK factor s^(-2j/(d-2)) appears in three of them (ntk; CLEX's time embedding, where
s = 2t-1; the zero-network CLEX solution): ntk_log_factor is its one implementation.
"""
from __future__ import annotations

import math

import numpy as np

# The official CLEX time embedding hard-codes this base, whatever rope_theta is.
CLEX_NTK_BASE = 10000.0


def base_inv_freq(freq_base: float, n_rot: int, convention: str = "gguf") -> np.ndarray:
    """The unscaled table, float32 [n_rot/2].

    gguf: base^(-2i/n_rot) in float64, rounded once to float32 (the table a GGUF's freq_base
          gives the runtime);
    hf:   1 / base ** (arange(0, d, 2, float32) / d) as transformers computes it in float32 (the
          stored inv_freq of a checkpoint, which a converted CLEX ODE starts from)."""
    if convention == "gguf":
        i = np.arange(n_rot // 2, dtype=np.float64)
        return (float(freq_base) ** (-2.0 * i / n_rot)).astype(np.float32)
    if convention == "hf":
        e = np.arange(0, n_rot, 2, dtype=np.float32) / np.float32(n_rot)
        return (np.float32(1) / (np.float64(freq_base) ** e.astype(np.float64)).astype(np.float32))
    raise ValueError(f"unknown convention {convention!r} (gguf or hf)")


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


def ntk_log_factor(s, h: int) -> np.ndarray:
    """log of NTK-aware scaling's factor on each of h frequencies: -(2j/(d-2)) log s with d = 2h,
    for every s (s < 1 counts as 1), float64 [len(s), h]. The first pair keeps its frequency
    and the last is divided by exactly s."""
    s = np.atleast_1d(np.asarray(s, np.float64))
    expo = np.arange(h, dtype=np.float64) / max(h - 1, 1)            # 2j/(d-2) = j/(h-1)
    return -np.log(np.maximum(s, 1.0))[:, None] * expo[None, :]


def clex_ntk_bend(t, h: int) -> np.ndarray:
    """The part of CLEX's log n(t) that depends on t: NTK scaling by 2t-1, float64 [len(t), h]."""
    return ntk_log_factor(2 * np.asarray(t, np.float64) - 1, h)


def clex_log_ntk(t, h: int) -> np.ndarray:
    """log n(t), the official time embedding's NTK inverse frequencies (base 10000 hard-coded),
    float64 [len(t), h]."""
    j2d = np.arange(h, dtype=np.float64) / h                           # 2j/d
    return -j2d[None, :] * math.log(CLEX_NTK_BASE) + clex_ntk_bend(t, h)


def linear_inv_freq(base: np.ndarray, s: float) -> np.ndarray:
    """Position interpolation (Chen et al. 2023): every frequency divided by s."""
    return (np.asarray(base, np.float64) / max(float(s), 1.0)).astype(np.float32)


def ntk_inv_freq(base: np.ndarray, s: float) -> np.ndarray:
    """NTK-aware scaling: the rope base multiplied by s^(d/(d-2)). Written as a factor on each
    entry of the base table, so freq factors and stored (rounded) tables carry over."""
    base = np.asarray(base, np.float64)
    if base.size < 2:
        return base.astype(np.float32)
    return (base * np.exp(ntk_log_factor(s, base.size)[0])).astype(np.float32)


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


def phase_error(table: np.ndarray, reference: np.ndarray, position: float) -> float:
    """max over pairs of |position * (table - reference)|: radians of rotation a table is off by
    at that position."""
    return float(np.max(np.abs(float(position) * (np.asarray(table, np.float64)
                                                 - np.asarray(reference, np.float64)))))
