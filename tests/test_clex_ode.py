"""The CLEX ODE in numpy against PyTorch + torchdiffeq running the official math (CLEX.md):
the baked tables must agree to 1e-6 relative in inverse frequency (1e-6 absolute in log)."""
import math

import numpy as np
import pytest

from clexrt.rope.ode import ClexODE, default_grid

F32 = np.float32


def make_ode(d=32, p=2, act="tanh", seed=0, scale=1.0, bf16_start=True):
    """A CLEX ODE with a random network whose learned residual moves log-frequencies by ~0.1-1
    over 1..16 (a network 25x stronger shifts them by e^20: nothing a trained model does)."""
    rng = np.random.default_rng(seed)
    inv = 1.0 / (10000 ** (np.arange(0, d, 2, dtype=np.float32) / d))
    if bf16_start:   # a bf16 checkpoint stores rounded values: the start must be the stored ones
        inv = (inv.astype(F32).view(np.uint32) & 0xFFFF0000).view(F32)
    h = d // 2
    bound = 1 / math.sqrt(h)
    up = rng.uniform(-bound, bound, (h, p * d)).astype(F32)
    down = (rng.standard_normal((p * d, h)) * 0.002 * scale).astype(F32)
    return ClexODE(inv.astype(F32), act=act, time_dt=0.01, up=up, down=down)


# ---------------------------------------------------------------------------------------------
# The oracle: the official ODELinear's math written with torch, integrated by torchdiffeq.
def torch_official_solve(ode: ClexODE, times):
    torch = pytest.importorskip("torch")
    torchdiffeq = pytest.importorskip("torchdiffeq")
    torch.set_num_threads(1)      # tiny matmuls: threads only fight over the 2 shared cores
    d = ode.dim
    up = torch.from_numpy(ode.up) if ode.up is not None else None
    down = torch.from_numpy(ode.down) if ode.down is not None else None
    act = torch.tanh if ode.act == "tanh" else torch.nn.functional.silu

    class Func(torch.nn.Module):
        def forward(self, t, x):
            alpha = 1 if t < 1 else 2 * t - 1
            ntk_base = 10000 * alpha ** (d / (d - 2))
            index = torch.arange(0, d, 2, dtype=torch.float32)
            n = 1.0 / (ntk_base ** (index / d))
            dn = -2 * index / (d - 2) * 1 / (10000 ** (index / d) * (alpha ** (index / (d - 2) + 1)))
            x = x + torch.log(n)
            out = dn / n
            if up is not None:
                out = act(x @ up) @ down + out
            return out

    with torch.no_grad():
        y0 = torch.log(torch.from_numpy(ode.inv_freq))
        grid = torch.tensor(np.asarray(times, F32))
        sol = torchdiffeq.odeint(Func(), y0, grid, method="rk4", options={"step_size": ode.time_dt})
    return sol.numpy()


def close(ours, ref, rel=1e-6):
    """1e-6 relative in log inverse frequency, |y| floored at 1 (the first frequency's log is ~0).
    What limits the agreement is the order of summation in the two small matmuls (MKL's here, cuBLAS's
    in the official runs); the time embedding and the integrator are bit-identical to torch's
    (test_zero_network_...)."""
    err = np.abs(ours.astype(np.float64) - ref) / np.maximum(np.abs(ref), 1.0)
    return err.max() < rel


@pytest.mark.torch
@pytest.mark.parametrize("d,p,act,m", [(32, 2, "tanh", 8), (128, 1, "silu", 4), (64, 1, "tanh", 16)])
def test_integer_tables_match_torchdiffeq(d, p, act, m):
    ode = make_ode(d, p, act, seed=d + m)
    times = np.arange(1, m + 1, dtype=F32)          # what the official inference asks for
    ref = torch_official_solve(ode, times)
    ours = ode.solve(times)
    assert close(ours, ref)
    # the network matters: these are not the NTK tables
    assert np.abs(ref - ClexODE(ode.inv_freq).tables(times)).max() > 0.05
    # and the baked fine grid holds exactly those values at the integers
    grid = default_grid(m)
    baked = ode.tables(grid)
    idx = [int(np.flatnonzero(grid == k)[0]) for k in range(1, m + 1)]
    assert close(baked[idx], ref)
    assert np.array_equal(baked[idx], ours)


@pytest.mark.torch
def test_fractional_direct_solve_matches_torchdiffeq():
    ode = make_ode(64, 2, "tanh", seed=3)
    for t in (1.0625, 1.5, 2.37, 5.999):
        ref = torch_official_solve(ode, [1.0, t])[1]
        assert close(ode.solve_at(t), ref), t
        # the baked grid (one long solve, Hermite inside a step) equals the direct solve too
        assert close(ode.tables([1.0, t, 6.0])[1], ref), t


@pytest.mark.torch
def test_zero_network_is_ntk_and_matches_torchdiffeq():
    d = 64
    inv = (1.0 / (10000 ** (np.arange(0, d, 2) / d))).astype(F32)
    h = d // 2
    ode_zero = ClexODE(inv, up=np.ones((h, d), F32), down=np.zeros((d, h), F32))
    times = np.arange(1, 9, dtype=F32)
    ref = torch_official_solve(ode_zero, times)
    # no matmul noise left: the float32 time embedding and 3/8-rule steps agree to an ulp
    # (bit-identical at d = 128; torch's powf rounds a handful of values the other way at d = 64)
    assert np.abs(ode_zero.solve(times) - ref).max() <= 1.2e-7
    # the closed form is the exact solution; the official float32 solve drifts from it by
    # rounding (~1e-5 after 700 steps at d = 64), which is why CLEX models are solved, not closed
    closed = ClexODE(inv).tables(times)
    assert np.abs(closed - ref).max() < 3e-5
    # NTK-aware scaling with base 10000 * (2t-1)^(d/(d-2))
    for t in (2.0, 5.0):
        base = 10000 * (2 * t - 1) ** (d / (d - 2))
        ntk = np.log(1.0 / base ** (np.arange(0, d, 2) / d))
        assert np.abs(ClexODE(inv).ntk_closed_form([t])[0] - ntk).max() < 1e-5


def test_grid_contains_integers_and_is_fine_near_one():
    g = default_grid(8)
    assert g.dtype == np.float32 and g[0] == 1 and g[-1] == 8
    assert all(k in g for k in range(1, 9))
    assert np.all(np.diff(g) > 0)
    assert np.diff(g[g <= 2]).max() == pytest.approx(1 / 64)
    assert np.diff(g[g >= 2]).max() == pytest.approx(1 / 32)
    assert list(default_grid(1)) == [1.0]


def test_solve_starts_at_stored_inv_freq():
    ode = make_ode(32, 1, "silu", seed=5)
    out = ode.solve([1.0, 2.0])
    assert np.array_equal(out[0], np.log(ode.inv_freq.astype(np.float64)).astype(F32))
    with pytest.raises(ValueError):
        ode.solve([2.0, 3.0])


def test_bad_ode_parameters():
    inv = np.ones(4, F32)
    with pytest.raises(ValueError, match="activation"):
        ClexODE(inv, act="relu")
    with pytest.raises(ValueError, match="shapes"):
        ClexODE(inv, up=np.zeros((4, 8), F32), down=np.zeros((8, 3), F32))
    with pytest.raises(ValueError, match="both"):
        ClexODE(inv, up=np.zeros((4, 8), F32))


# ---------------------------------------------------------------------------------------------
# clexrt.clex_tables: reading the clex.* keys back
from clexrt.rope.spline import ClexSpline  # noqa: E402
from clexrt.rope.tables import read_clex  # noqa: E402
from clexrt.rope.tables import bake_clex  # noqa: E402
from clexrt.errors import GGUFError, ModelError  # noqa: E402


def phase_error(c, ode, L, fractions=(0.25, 0.5, 0.75)):
    """max over j and over points between grid nodes of |interp - solve| * inv_freq * t * L (rad).
    The reference is the official solver run once through all the points (Hermite inside a step:
    what a direct solve to each point gives, test_fractional_direct_solve_...)."""
    g = c.grid.astype(np.float64)
    ts = np.unique(np.concatenate([g[:-1] + (g[1:] - g[:-1]) * f for f in fractions]).astype(F32))
    ts = ts[~np.isin(ts, c.grid)]
    ref = ode.solve(np.concatenate([[F32(1)], ts]), hermite=True)[1:].astype(np.float64)
    spline = ClexSpline(c)
    worst = 0.0
    for t, r in zip(ts, ref):
        err = np.abs(spline.log_table(float(t)) - r) * np.exp(r) * float(t) * L
        worst = max(worst, float(err.max()))
    return worst


def test_interpolated_tables_phase_error_below_0_01_rad():
    # d = 128 and L = 4096 as in CLEX-LLaMA-2; a network moving log-frequencies by ~0.8
    ode = make_ode(128, 1, "tanh", seed=0)
    c = read_clex(bake_clex(ode, 4096, 8, "ode", param_factor=1))
    assert np.abs(c.tables - ClexODE(ode.inv_freq).tables(c.grid)).max() > 0.3
    assert phase_error(c, ode, 4096) < 0.01
    # plain linear interpolation of the log-frequency on integer tables: far off (CLEX.md)
    ints = np.arange(1, 9, dtype=F32)
    c_int = read_clex(bake_clex(ode, 4096, 8, "ode", param_factor=1, grid=ints))
    t = 1.5
    naive = 0.5 * (c_int.tables[0] + c_int.tables[1])
    assert (np.abs(naive - ode.solve_at(t)) * ode.inv_freq * t * 4096).max() > 10


def test_read_clex_round_trip_and_solve():
    ode = make_ode(32, 2, "silu", seed=4)
    md = bake_clex(ode, 128, 4, "ode", param_factor=2, log_scale=False)
    c = read_clex(md, n_rot=32)
    assert (c.train_length, c.max_factor, c.param_factor, c.act, c.init, c.log_scale) == (128, 4, 2, "silu", "ode", False)
    assert c.time_dt == 0.01 and c.dim == 32 and c.max_context == 512
    assert np.array_equal(c.table_at(1), ode.inv_freq)
    off = ode.solve(np.arange(1, 5, dtype=F32))
    for t in (2, 3, 4):
        assert np.abs(np.log(c.table_at(t).astype(np.float64)) - off[t - 1]).max() < 2e-7
        assert np.allclose(np.exp(c.ode().solve_at(t)), c.table_at(t), rtol=1e-6)
    spline = ClexSpline(c)
    assert np.allclose(np.exp(c.ode().solve_at(2.3)), spline.table(2.3), rtol=1e-5)
    with pytest.raises(ValueError):
        c.table_at(2.5)
    with pytest.raises(ModelError):
        spline.table(4.5)
    assert read_clex({"llama.context_length": 4}) is None


def _bad(md, **change):
    md = dict(md)
    for k, v in change.items():
        key = "clex." + k
        if v is None:
            md.pop(key)
        else:
            md[key] = v
    return md


@pytest.mark.parametrize("change,words", [
    ({"init": "magic"}, "init"),
    ({"act": "relu"}, "act"),
    ({"train_length": None}, "train_length"),
    ({"max_factor": 0}, "max_factor"),
    ({"time_dt": -1.0}, "time_dt"),
    ({"inv_freq": np.array([1.0], F32)}, "inv_freq"),
    ({"grid": np.array([1, 1.5, 2, 4], F32)}, "integer scaling factor 3"),
    ({"grid": np.array([1, 3, 2, 4], F32)}, "increase"),
    ({"log_inv_freq": np.zeros(5, F32)}, "log_inv_freq"),
    ({"ode_up_shape": np.array([8, 3], np.uint32)}, "shapes"),
    ({"ode_down": None}, "ode_down"),
    ({"log_scale": 3}, "log_scale"),
])
def test_read_clex_rejects_inconsistent_metadata(change, words):
    md = bake_clex(make_ode(16, 1, "tanh"), 64, 4, "ode", param_factor=1)
    with pytest.raises(GGUFError, match=words):
        read_clex(_bad(md, **change))


def test_read_clex_rejects_nan_and_wrong_rope_dim():
    md = bake_clex(make_ode(16, 1, "tanh"), 64, 4, "ode", param_factor=1)
    t = md["clex.log_inv_freq"].copy()
    t[7] = np.nan
    with pytest.raises(GGUFError, match="NaN"):
        read_clex(_bad(md, log_inv_freq=t))
    with pytest.raises(GGUFError, match="rope dimension"):
        read_clex(md, n_rot=32)
