"""CLEX tables at any t in [1, M], from the baked grid of a GGUF (tables.ClexTables)."""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .methods import clex_log_ntk, clex_ntk_bend


def hermite(u: float, dt: float, y0, y1, m0, m1):
    """The cubic Hermite interpolant at u in [0, 1] of a step of length dt with values y0, y1 and
    slopes m0, m1 at its ends (float64)."""
    h00, h10 = (1 + 2 * u) * (1 - u) ** 2, u * (1 - u) ** 2
    h01, h11 = u * u * (3 - 2 * u), u * u * (u - 1)
    return h00 * y0 + h10 * dt * m0 + h01 * y1 + h11 * dt * m1


class ClexSpline:
    """Tables at any t in [1, M] from a GGUF's baked CLEX tables (tables.ClexTables).

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
        self._h = h = self.inv_freq.size
        g = self.grid.astype(np.float64)
        y = self.log_inv_freq.astype(np.float64)
        self._resid = y - clex_ntk_bend(g, h)
        if tables.ode_up is not None:
            self._slope = tables.ode().net(y + clex_log_ntk(g, h))
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
        r = hermite((t - t0) / dt, dt, self._resid[k0], self._resid[k0 + 1], self._slope[k0],
                    self._slope[k0 + 1])
        return r + clex_ntk_bend(t, self._h)[0]

    def table(self, t: float) -> np.ndarray:
        """Inverse frequencies at factor t, float32 [h]. t = 1 is the stored inv_freq (as the
        official code uses it); integer t is exp of the baked row (the official inference)."""
        if float(t) == 1.0:
            return self.inv_freq.copy()
        return np.exp(self.log_table(t)).astype(np.float32)
