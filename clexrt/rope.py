"""Rotary frequency tables. Every scaling method is a pure function that returns the table of
n_rot/2 inverse frequencies the C kernel rotates with: pair i of a head at position p turns by
p * inv_freq[i]."""
from __future__ import annotations

import numpy as np


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
