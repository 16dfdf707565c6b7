"""The CLEX tables of a GGUF (`clex.*` keys, schema in docs/convert.md): baked by the converter
(bake_clex) and read back, checked, by the runtime (read_clex).

    md = bake_clex(ode, train_length=4096, max_factor=8, init="ode")   # the clex.* keys
    c = read_clex(metadata)          # None when the file has no clex.* keys
    c.table_at(3)                    # inverse frequencies baked for t = 3 (what the official
                                     #   inference uses for L*2 < N <= L*3)

Tables are log inverse frequencies y(t) on `grid` (every integer 1..max_factor and finer steps);
spline.ClexSpline gives the tables between grid points. Tables hold the full inverse
frequencies (rope_freqs factors included): a runtime uses them instead of freq_base, never on
top of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConvertError, GGUFError
from .ode import ACTIVATIONS, ClexODE, default_grid

PREFIX = "clex."
ACTS = ACTIVATIONS
INITS = ("ode", "ntk")


def _err(msg: str) -> GGUFError:
    return GGUFError(f"clex metadata: {msg}")


def _int(md, key, lo=1, hi=1 << 31):
    v = md.get(PREFIX + key)
    if v is None:
        raise _err(f"missing {PREFIX}{key}")
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise _err(f"{PREFIX}{key} must be an integer in {lo}..{hi}, got {v!r}")
    return int(v)


def _float_array(md, key, size=None, required=True):
    v = md.get(PREFIX + key)
    if v is None:
        if required:
            raise _err(f"missing {PREFIX}{key}")
        return None
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise _err(f"{PREFIX}{key} is not a numeric array") from None
    if a.ndim != 1 or a.size == 0:
        raise _err(f"{PREFIX}{key} must be a non-empty flat array")
    if size is not None and a.size != size:
        raise _err(f"{PREFIX}{key} has {a.size} values, expected {size}")
    if not np.isfinite(a).all():
        raise _err(f"{PREFIX}{key} has NaN/Inf values")
    return a.astype(np.float32)


def _shape(md, key):
    v = md.get(PREFIX + key)
    if v is None:
        raise _err(f"missing {PREFIX}{key}")
    a = np.asarray(v)
    if a.shape != (2,) or not np.issubdtype(a.dtype, np.integer) or np.any(a <= 0):
        raise _err(f"{PREFIX}{key} must be two positive integers, got {v!r}")
    return int(a[0]), int(a[1])


@dataclass(frozen=True, eq=False)
class ClexTables:
    train_length: int           # L: t = 1 stands for contexts up to L
    max_factor: int             # M: tables exist for t in [1, M]
    param_factor: int           # P: the ODE network's width is P*d (0 for init "ntk")
    act: str                    # tanh | silu
    time_dt: float              # the official solver's step
    log_scale: bool             # the official flash-attention path's q *= log(n)/log(L) (stored only)
    init: str                   # "ode": solved from the checkpoint's network; "ntk": zero network
    inv_freq: np.ndarray        # [d/2] f32, the stored start (t = 1)
    grid: np.ndarray            # [n_grid] f32, increasing, 1 .. M, every integer included
    tables: np.ndarray          # [n_grid, d/2] f32 log inverse frequencies
    ode_up: np.ndarray | None   # [d/2, P*d] f32 (None for "ntk")
    ode_down: np.ndarray | None  # [P*d, d/2] f32

    @property
    def dim(self) -> int:
        """d, the rotary dimension."""
        return 2 * self.inv_freq.size

    @property
    def max_context(self) -> int:
        return self.train_length * self.max_factor

    def _check_t(self, t) -> float:
        t = float(t)
        if not (1.0 <= t <= self.max_factor):
            raise ValueError(f"CLEX scaling factor t = {t:g} is outside 1..{self.max_factor}")
        return t

    def _index(self, t: float) -> int | None:
        hit = np.flatnonzero(self.grid == np.float32(t))
        return int(hit[0]) if hit.size else None

    # -- tables --------------------------------------------------------------------------------
    def table_at(self, t: int) -> np.ndarray:
        """The baked inverse frequencies for integer t (the official inference's table); t = 1
        is the stored inv_freq itself, as the official code uses it."""
        if int(t) != t:
            raise ValueError(f"table_at takes an integer t, got {t}; ClexSpline gives the others")
        t = int(self._check_t(t))
        if t == 1:
            return self.inv_freq.copy()
        return np.exp(self.tables[self._index(t)].astype(np.float64)).astype(np.float32)

    def ode(self) -> ClexODE:
        """The ODE these tables were solved from (its network weights, or the zero network)."""
        return ClexODE(self.inv_freq, act=self.act, time_dt=self.time_dt, up=self.ode_up, down=self.ode_down)

    def to_json(self) -> dict:
        """A JSON-ready summary (what `clexrt info --json` shows)."""
        return {"train_length": self.train_length, "max_factor": self.max_factor,
                "max_context": self.max_context, "param_factor": self.param_factor, "act": self.act,
                "time_dt": self.time_dt, "log_scale": self.log_scale, "init": self.init, "dim": self.dim,
                "grid": [float(x) for x in self.grid], "n_grid": int(self.grid.size)}


def read_clex(md, n_rot: int | None = None) -> ClexTables | None:
    """The CLEX tables of a metadata dict (GGUF key -> value), or None when there are no clex.*
    keys. Any inconsistency is a GGUFError. n_rot, when given, must equal the tables' d."""
    if not any(isinstance(k, str) and k.startswith(PREFIX) for k in md):
        return None
    init = md.get(PREFIX + "init")
    if init not in INITS:
        raise _err(f"{PREFIX}init must be one of {', '.join(INITS)}, got {init!r}")
    act = md.get(PREFIX + "act")
    if act not in ACTS:
        raise _err(f"{PREFIX}act must be one of {', '.join(ACTS)}, got {act!r}")
    L = _int(md, "train_length")
    M = _int(md, "max_factor", 1, 1024)
    P = _int(md, "param_factor", 0, 1 << 16)
    dt = md.get(PREFIX + "time_dt")
    if isinstance(dt, bool) or not isinstance(dt, (int, float, np.floating)) or not (math.isfinite(dt) and dt > 0):
        raise _err(f"{PREFIX}time_dt must be a positive number, got {dt!r}")
    log_scale = md.get(PREFIX + "log_scale", True)
    if not isinstance(log_scale, (bool, np.bool_)):
        raise _err(f"{PREFIX}log_scale must be a bool, got {log_scale!r}")
    inv = _float_array(md, "inv_freq")
    h = inv.size
    if h < 2 or np.any(inv <= 0):
        raise _err(f"{PREFIX}inv_freq must hold at least 2 positive values")
    if n_rot is not None and 2 * h != n_rot:
        raise _err(f"{PREFIX}inv_freq has {h} values; the rope dimension {n_rot} needs {n_rot // 2}")
    grid = _float_array(md, "grid")
    if grid[0] != 1 or grid[-1] != M or np.any(np.diff(grid) <= 0):
        raise _err(f"{PREFIX}grid must increase from 1 to max_factor {M}")
    missing = [k for k in range(1, M + 1) if not np.any(grid == k)]
    if missing:
        raise _err(f"{PREFIX}grid lacks the integer scaling factor {missing[0]}")
    tables = _float_array(md, "log_inv_freq", grid.size * h).reshape(grid.size, h)
    up = down = None
    if init == "ode":
        us, ds = _shape(md, "ode_up_shape"), _shape(md, "ode_down_shape")
        if us[0] != h or ds != (us[1], h) or (P and us[1] != P * 2 * h):
            raise _err(f"ODE weight shapes {list(us)} and {list(ds)} do not fit d = {2 * h}, P = {P}")
        up = _float_array(md, "ode_up", us[0] * us[1]).reshape(us)
        down = _float_array(md, "ode_down", ds[0] * ds[1]).reshape(ds)
    for a in (inv, grid, tables) + ((up, down) if up is not None else ()):
        a.setflags(write=False)
    # stored as float32: 0.01 comes back as 0.009999999776; keep the decimal the writer meant
    dt = float(str(np.float32(dt)))
    return ClexTables(train_length=L, max_factor=M, param_factor=P, act=act, time_dt=dt,
                      log_scale=bool(log_scale), init=init, inv_freq=inv, grid=grid, tables=tables,
                      ode_up=up, ode_down=down)


def bake_clex(ode: ClexODE, train_length: int, max_factor: int, init: str,
              param_factor: int = 0, log_scale: bool = True, grid: np.ndarray | None = None) -> dict:
    """The clex.* keys that read_clex reads back. The tables are log inverse frequencies at
    every grid point; with init == "ntk" there are no network weights (the zero network)."""
    grid = default_grid(max_factor) if grid is None else np.asarray(grid, np.float32)
    tables = ode.tables(grid)
    if not np.isfinite(tables).all():
        raise ConvertError("the CLEX ODE solution is not finite (the ODE network diverges)")
    md = {
        PREFIX + "init": init,
        PREFIX + "train_length": int(train_length),
        PREFIX + "max_factor": int(max_factor),
        PREFIX + "param_factor": int(param_factor),
        PREFIX + "act": ode.act,
        PREFIX + "time_dt": float(ode.time_dt),
        PREFIX + "log_scale": bool(log_scale),
        PREFIX + "inv_freq": ode.inv_freq.astype(np.float32),
    }
    if init == "ode":
        md[PREFIX + "ode_up"] = ode.up.reshape(-1)
        md[PREFIX + "ode_up_shape"] = np.asarray(ode.up.shape, np.uint32)
        md[PREFIX + "ode_down"] = ode.down.reshape(-1)
        md[PREFIX + "ode_down_shape"] = np.asarray(ode.down.shape, np.uint32)
    md[PREFIX + "grid"] = grid
    md[PREFIX + "log_inv_freq"] = tables.reshape(-1).astype(np.float32)
    return md
