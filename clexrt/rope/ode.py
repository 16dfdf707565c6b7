"""The CLEX ODE, solved the way the official PyTorch code solves it, in numpy.

State y(t) = log inverse frequencies (a vector of d/2), y(1) = log(stored inv_freq):

    n(t)  = 1 / (B' ** (2j/d)),  B' = 10000 * a ** (d/(d-2)),  a = 2t-1   (a = 1 for t < 1)
    dy/dt = act((y + log n(t)) @ up) @ down + n'(t) / n(t)

The official code integrates this with torchdiffeq's fixed-grid "rk4" (the 3/8 rule) in float32,
on the grid `arange(ceil((t_end - t0)/dt + 1)) * dt + t0` with the last point forced to t_end, and
reads the solution at the requested times by linear interpolation inside a step (exact on a hit).
Every step below is written in float32 in the same order, so the result agrees with torch to a few
float32 ulps: a float64 solve would be "more accurate" and differ from every CLEX checkpoint's own
inference by ~1 rad of phase at 64k positions (docs/convert.md, "Agreement with the official solver").

With a zero network the ODE is solved in closed form: y(t) = y(1) - 2j/(d-2) * log(2t-1), i.e.
NTK-aware scaling with base rope_base * (2t-1) ** (d/(d-2)), whatever the rope base is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .methods import CLEX_NTK_BASE, clex_ntk_bend
from .spline import hermite as hermite_step

F32 = np.float32
# The official time embedding hard-codes this base (even for rope_theta != 10000); only the
# network's input depends on it, the NTK part of dy/dt does not.
NTK_BASE = int(CLEX_NTK_BASE)
ACTIVATIONS = ("tanh", "silu")
# torchdiffeq's rk4 constants, as Python doubles; torch rounds them to float32 when it multiplies.
_ONE_THIRD = F32(1 / 3)
_TWO_THIRDS = F32(2 / 3)
_EIGHTH = F32(0.125)


def _f32(fn, x):
    """A transcendental function rounded to float32 from float64: torch's CPU kernels are within
    an ulp of correctly rounded, numpy's float32 loops are not (they differ from torch 20-40% of
    the time, this way <1%)."""
    return fn(np.asarray(x, np.float64)).astype(F32)


def _pow(base, exponent):
    return (np.float64(base) ** np.asarray(exponent, np.float64)).astype(F32)


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """The ODE network's activation. float32 input is computed as torch computes it (the
    official solve); float64 input stays float64 (the runtime's spline slopes)."""
    x = np.asarray(x)
    f32 = x.dtype == F32
    if name == "tanh":
        return _f32(np.tanh, x) if f32 else np.tanh(x)
    if name == "silu":
        # torch's silu: x / (1 + exp(-x)) in float32
        return x / (F32(1) + _f32(np.exp, -x)) if f32 else x / (1.0 + np.exp(-x))
    raise ValueError(f"unknown CLEX activation {name!r} (supported: {', '.join(ACTIVATIONS)})")


@dataclass(frozen=True)
class ClexODE:
    """The ODE of one CLEX model. inv_freq is the checkpoint's stored start ([d/2]); up [d/2, P*d]
    and down [P*d, d/2] are the network's weights (None = the zero network, NTK scaling)."""

    inv_freq: np.ndarray
    act: str = "tanh"
    time_dt: float = 0.01
    up: np.ndarray | None = None
    down: np.ndarray | None = None

    def __post_init__(self):
        inv = np.ascontiguousarray(self.inv_freq, dtype=F32)
        if inv.ndim != 1 or inv.size < 1:
            raise ValueError(f"inv_freq must be a non-empty vector, got shape {inv.shape}")
        object.__setattr__(self, "inv_freq", inv)
        if self.act not in ACTIVATIONS:
            raise ValueError(f"unknown CLEX activation {self.act!r} (supported: {', '.join(ACTIVATIONS)})")
        if not (self.time_dt > 0 and math.isfinite(self.time_dt)):
            raise ValueError(f"time_dt must be a positive number, got {self.time_dt}")
        if (self.up is None) != (self.down is None):
            raise ValueError("the ODE network needs both ode_up_proj and ode_down_proj")
        if self.up is not None:
            h = inv.size
            up = np.ascontiguousarray(self.up, dtype=F32)
            down = np.ascontiguousarray(self.down, dtype=F32)
            if up.ndim != 2 or down.ndim != 2 or up.shape[0] != h or down.shape != (up.shape[1], h):
                raise ValueError(f"ODE weights have shapes {up.shape} and {down.shape}; "
                                 f"expected [{h}, P*{2 * h}] and [P*{2 * h}, {h}]")
            object.__setattr__(self, "up", up)
            object.__setattr__(self, "down", down)

    @property
    def dim(self) -> int:
        """d, the rotary dimension (twice the number of frequencies)."""
        return 2 * self.inv_freq.size

    @property
    def zero_network(self) -> bool:
        return self.up is None or not np.any(self.down)

    # -- the right-hand side, float32 step by step as the official ODELinear.forward -----------
    def time_embedding(self, t: np.float32) -> tuple[np.ndarray, np.ndarray]:
        """(n'(t), n(t)) in float32, the official get_time_embedding."""
        d = self.dim
        index = np.arange(0, d, 2, dtype=F32)
        t = F32(t)
        alpha = F32(1) if t < 1 else F32(F32(2) * t - F32(1))
        # torch raises a float32 tensor to a Python float exponent in double precision
        ntk_base = F32(NTK_BASE) * F32(np.float64(alpha) ** (d / (d - 2)))
        ntk_inv_freq = F32(1) / _pow(ntk_base, index / F32(d))
        delta = (F32(-2) * index) / F32(d - 2)
        denom = _pow(F32(NTK_BASE), index / F32(d)) * _pow(alpha, index / F32(d - 2) + F32(1))
        delta = delta / denom
        return delta.astype(F32), ntk_inv_freq.astype(F32)

    def net(self, x: np.ndarray) -> np.ndarray:
        """The learned part of dy/dt, act(x @ up) @ down at x = y + log n(t); float32 as the
        official code, or float64 for float64 input. Zero for the zero network."""
        if self.up is None:
            return np.zeros_like(x)
        up, down = (self.up, self.down) if x.dtype == F32 else (self.up.astype(x.dtype), self.down.astype(x.dtype))
        return activation(self.act, x @ up) @ down

    def rhs(self, t: np.float32, y: np.ndarray) -> np.ndarray:
        delta, n = self.time_embedding(t)
        x = y + _f32(np.log, n)
        out = delta / n
        if self.up is not None:
            out = self.net(x) + out
        return out

    # -- torchdiffeq's fixed grid and 3/8-rule step -------------------------------------------------
    def step_grid(self, t_start: float, t_end: float) -> np.ndarray:
        t0, t1 = F32(t_start), F32(t_end)
        dt = F32(self.time_dt)
        n = int(np.ceil((t1 - t0) / dt + F32(1)))
        grid = np.arange(n, dtype=F32) * dt + t0
        grid[-1] = t1
        return grid

    def _step(self, t0, t1, y0, k1):
        dt = F32(t1 - t0)
        k2 = self.rhs(t0 + dt * _ONE_THIRD, y0 + dt * k1 * _ONE_THIRD)
        k3 = self.rhs(t0 + dt * _TWO_THIRDS, y0 + dt * (k2 - k1 * _ONE_THIRD))
        k4 = self.rhs(t1, y0 + dt * (k1 - k2 + k3))
        return y0 + (k1 + F32(3) * (k2 + k3) + k4) * dt * _EIGHTH

    def solve(self, times, hermite: bool = False) -> np.ndarray:
        """log inverse frequencies [len(times), d/2] at `times` (increasing, times[0] = 1 where
        y = log(inv_freq)), as `odeint(method="rk4", step_size=time_dt)` returns them.

        Between steps the official solver interpolates linearly; with hermite=True a requested time
        that is not a grid hit uses the cubic Hermite interpolant of the step instead (O(dt^4)
        rather than O(dt^2): what a direct solve to that time would give). Grid hits, and so the
        integer times the official inference uses, are the same either way."""
        times = np.asarray(times, dtype=F32)
        if times.ndim != 1 or times.size < 1 or times[0] != 1 or np.any(np.diff(times) <= 0):
            raise ValueError("times must be increasing and start at 1")
        y = _f32(np.log, self.inv_freq)
        out = np.empty((times.size, y.size), dtype=F32)
        out[0] = y
        if times.size == 1:
            return out
        grid = self.step_grid(times[0], times[-1])
        j = 1
        k1 = self.rhs(grid[0], y)
        for t0, t1 in zip(grid[:-1], grid[1:]):
            y1 = self._step(t0, t1, y, k1)
            k1_next = self.rhs(t1, y1) if (hermite or t1 != grid[-1]) else None
            while j < times.size and t1 >= times[j]:
                out[j] = self._interp(t0, t1, y, y1, k1, k1_next, times[j], hermite)
                j += 1
            y, k1 = y1, k1_next
        return out

    @staticmethod
    def _interp(t0, t1, y0, y1, f0, f1, t, hermite):
        if t == t0:
            return y0
        if t == t1:
            return y1
        if not hermite:
            return y0 + (t - t0) / (t1 - t0) * (y1 - y0)
        dt = float(t1 - t0)
        y0d, y1d, f0d, f1d = (np.asarray(v, np.float64) for v in (y0, y1, f0, f1))
        return hermite_step(float(t - t0) / dt, dt, y0d, y1d, f0d, f1d).astype(F32)

    def solve_at(self, t: float) -> np.ndarray:
        """A direct solve from 1 to t (the official training-time call, odeint on [1, t])."""
        if t == 1:
            return _f32(np.log, self.inv_freq)
        return self.solve([1.0, t])[1]

    # -- zero network ----------------------------------------------------------------------------
    def ntk_closed_form(self, times) -> np.ndarray:
        """The exact solution with a zero network, computed in float64 and rounded to float32."""
        times = np.asarray(times, dtype=np.float64)
        if np.any(times < 1):
            raise ValueError("CLEX scaling factors start at 1")
        y1 = np.log(self.inv_freq.astype(np.float64))
        return (y1[None, :] + clex_ntk_bend(times, y1.size)).astype(F32)

    def tables(self, times) -> np.ndarray:
        """Tables to bake: the official solve (Hermite between grid hits) or, for a zero
        network, the closed form."""
        if self.up is None:
            return self.ntk_closed_form(times)
        return self.solve(times, hermite=True)


def default_grid(max_factor: int) -> np.ndarray:
    """The scaling factors tables are baked at: every integer 1..M, step 1/64 on [1, 2] (where
    log n(t) and the learned residual bend most) and 1/32 beyond (the phase error of interpolating
    grows with the position t*L). All are exact in float32, so a runtime finds integer t by
    equality. docs/convert.md has the measured interpolation error."""
    m = int(max_factor)
    if m < 1:
        raise ValueError(f"max_factor must be >= 1, got {max_factor}")
    fine = np.arange(64, 64 * min(m, 2)) / 64
    coarse = np.arange(32 * 2, 32 * m) / 32 if m > 2 else np.zeros(0)
    grid = np.unique(np.concatenate([fine, coarse, [float(m)]]))
    return grid[grid >= 1].astype(F32)
