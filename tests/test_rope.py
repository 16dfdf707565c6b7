"""Rope tables and the schedule: the classic methods' formulas, t(N) and where it changes, and the
CLEX tables between baked grid points against a direct solve of the ODE (phase error at t*L)."""
import math

import numpy as np
import pytest

from clexrt import rope
from clexrt.rope.tables import read_clex
from clexrt.rope.ode import F32, ClexODE, _f32
from clexrt.rope.tables import bake_clex
from clexrt.errors import ModelError
from test_clex_ode import make_ode

L, M = 4096, 16


# ---------------------------------------------------------------------------------------------
# classic methods
def test_ntk_is_a_larger_base():
    d, s = 64, 3.0
    base = rope.base_inv_freq(10000.0, d)
    want = rope.base_inv_freq(10000.0 * s ** (d / (d - 2)), d)
    np.testing.assert_allclose(rope.ntk_inv_freq(base, s), want, rtol=2e-6)
    out = rope.ntk_inv_freq(base, s)
    assert out[0] == base[0] and math.isclose(out[-1], base[-1] / s, rel_tol=1e-6)


def test_linear_and_yarn():
    d, s, n = 64, 4.0, 2048
    base = rope.base_inv_freq(10000.0, d)
    np.testing.assert_allclose(rope.linear_inv_freq(base, s), base / s, rtol=1e-7)
    y = rope.yarn_inv_freq(base, s, n)
    turns = n * base / (2 * np.pi)
    fast, slow = turns > 32, turns < 1
    assert fast.any() and slow.any() and (~fast & ~slow).any()
    np.testing.assert_array_equal(y[fast], base[fast])                  # high frequencies kept
    np.testing.assert_allclose(y[slow], base[slow] / s, rtol=1e-6)      # low ones interpolated
    mid = ~fast & ~slow
    assert np.all((y[mid] < base[mid]) & (y[mid] > base[mid] / s))
    assert rope.yarn_attn_factor(1.0) == 1.0
    assert math.isclose(rope.yarn_attn_factor(s), 0.1 * math.log(s) + 1)


def test_zero_network_clex_is_ntk_with_2t_minus_1():
    d = 64
    inv = rope.base_inv_freq(10000.0, d)
    tabs = read_clex(bake_clex(ClexODE(inv), 512, 8, "ntk"))
    sched = rope.RopeSchedule("clex", inv, 512, mode="continuous", steps=0, clex=tabs)
    for t in (1.0, 1.3, 2.0, 3.7, 8.0):
        np.testing.assert_allclose(sched.table_for(t).table, rope.ntk_inv_freq(inv, 2 * t - 1), rtol=3e-6)


# ---------------------------------------------------------------------------------------------
# the schedule
@pytest.mark.parametrize("mode,steps", [("ceil", 16), ("continuous", 16), ("continuous", 4), ("continuous", 0)])
def test_factor_and_next_change(mode, steps):
    Lt, Mt = 64, 5
    inv = rope.base_inv_freq(10000.0, 16)
    s = rope.RopeSchedule("ntk", inv, Lt, mode=mode, steps=steps, max_factor=Mt)
    ts = [s.factor(n) for n in range(0, Lt * Mt + 40)]
    for n, t in enumerate(ts):
        if mode == "ceil" or steps == 0:
            want = min(max(math.ceil(n / Lt) if mode == "ceil" else n / Lt, 1), Mt)
        else:
            want = min(max(math.ceil(n * steps / Lt) / steps, 1), Mt)
        assert t == want, (n, t, want)
        nxt = s.next_change(n)
        later = [m for m in range(n + 1, len(ts)) if ts[m] != t]
        assert nxt == (later[0] if later else None), (n, nxt)
    assert s.factor(Lt) == 1 and s.factor(Lt + 1) > 1
    assert rope.RopeSchedule("none", inv, Lt).next_change(10 ** 6) is None


def test_schedule_caches_choices_and_rejects_bad_input():
    inv = rope.base_inv_freq(10000.0, 16)
    s = rope.RopeSchedule("yarn", inv, 64)
    a, b = s(100), s(101)
    assert a is b and a.method == "yarn" and a.t == 2.0 and a.attn_factor > 1
    assert s(10).attn_factor == 1.0 and s(10).t == 1.0
    with pytest.raises(ModelError, match="clexify"):
        rope.RopeSchedule("clex", inv, 64)
    with pytest.raises(ModelError, match="rope method"):
        rope.RopeSchedule("pi", inv, 64)
    with pytest.raises(ModelError, match="mode"):
        rope.RopeSchedule("ntk", inv, 64, mode="floor")


# ---------------------------------------------------------------------------------------------
# CLEX between baked tables: phase error at t*L against a direct solve
def direct_solves(ode: ClexODE, ts):
    """y(t) as `odeint` on [1, t] gives it (the official training-time call), for many t at
    once: a solve to t steps along the same float32 grid as one to max(ts) and then takes one
    shorter last step, so the steps are shared and only the last one is taken per t."""
    G = ode.step_grid(1.0, max(ts))
    ys = [_f32(np.log, ode.inv_freq)]
    for a, b in zip(G[:-2], G[1:-1]):
        ys.append(ode._step(a, b, ys[-1], ode.rhs(a, ys[-1])))
    out = {}
    for t in ts:
        g = ode.step_grid(1.0, t)
        k = g.size - 2
        assert np.array_equal(g[:-1], G[:k + 1])
        out[t] = ys[k] if g[-1] == g[k] else ode._step(g[k], g[-1], ys[k], ode.rhs(g[k], ys[k]))
    return out


# Trained-like networks: the frequencies stay below ~1.3 rad/token at every t. (A random network
# that pushes a frequency to 20 cannot be held to 0.01 rad by any float32 table: at 65,536 positions
# one ulp of such a frequency is 0.08 rad, and one ulp of the angle itself 0.008.)
NETWORKS = [(128, "tanh", 5), (64, "tanh", 3)]


@pytest.fixture(scope="module", params=NETWORKS, ids=[f"d{d}-{a}" for d, a, _ in NETWORKS])
def clex_case(request):
    d, act, seed = request.param
    ode = make_ode(d, 1, act, seed=seed)
    tables = read_clex(bake_clex(ode, L, M, "ode", param_factor=1))
    rng = np.random.default_rng(seed)
    steps = [1 + k / 16 for k in range(1, 16 * (M - 1) + 1)]
    anyt = sorted(float(x) for x in np.round(rng.uniform(1, M, 60), 6))
    ref = direct_solves(ode, sorted(set(steps + anyt)))
    assert max(np.exp(y.astype(np.float64)).max() for y in ref.values()) < 1.5
    return ode, tables, steps, anyt, ref


def _phase(table, y_ref, t):
    return rope.phase_error(table, np.exp(np.asarray(y_ref, np.float64)), t * L)


def test_continuous_tables_phase_error_below_001_rad(clex_case):
    ode, tables, steps, anyt, ref = clex_case
    stepped = rope.RopeSchedule("clex", tables.inv_freq, L, mode="continuous", clex=tables)
    exact = rope.RopeSchedule("clex", tables.inv_freq, L, mode="continuous", steps=0, clex=tables)
    worst_steps = max(_phase(stepped.table_for(t).table, ref[t], t) for t in steps)
    worst_any = max(_phase(exact.table_for(t).table, ref[t], t) for t in anyt)
    assert worst_steps < 0.01 and worst_any < 0.01, (worst_steps, worst_any)
    # what the schedule hands out for lengths N is one of those tables
    for n in (L + 1, 3 * L + 17, 15 * L + 5, 16 * L):
        c = stepped(n)
        assert c.t == min(math.ceil(n * 16 / L) / 16, M)
        assert _phase(c.table, ref[c.t], c.t) < 0.01


def test_residual_spline_beats_linear_interpolation(clex_case):
    """On integer grid points only, the residual's Hermite spline (slopes from the network) stays
    within a few hundredths of a radian where linear interpolation of log-frequencies is far off
    (CLEX.md)."""
    ode, _, _, anyt, ref = clex_case
    coarse = read_clex(bake_clex(ode, L, M, "ode", param_factor=1, grid=np.arange(1, M + 1, dtype=F32)))
    spline = rope.ClexSpline(coarse)
    ts = [t for t in anyt if t < 6]
    worst_spline = max(_phase(spline.table(t), ref[t], t) for t in ts)
    g = coarse.grid.astype(np.float64)

    def linear_log(t):
        k = int(np.searchsorted(g, t)) - 1
        w = (t - g[k]) / (g[k + 1] - g[k])
        return (1 - w) * coarse.tables[k].astype(np.float64) + w * coarse.tables[k + 1]

    worst_linear = max(_phase(np.exp(linear_log(t)), ref[t], t) for t in ts)
    assert worst_spline < 0.05 and worst_linear > 1.0, (worst_spline, worst_linear)


def test_integer_factors_are_the_baked_tables(clex_case):
    _, tables, _, _, _ = clex_case
    s = rope.RopeSchedule("clex", tables.inv_freq, L, mode="ceil", clex=tables)
    np.testing.assert_array_equal(s(L).table, tables.inv_freq)
    for t in range(2, M + 1):
        assert s((t - 1) * L + 1).t == t
        np.testing.assert_array_equal(s(t * L).table, tables.table_at(t))
    assert s(100 * L).t == M and s.max_length == L * M


# ---------------------------------------------------------------------------------------------
# the schedule inside Model, on a plain (non-CLEX) tiny GGUF
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tinymodel import tiny_hparams, write_tiny
    path = tmp_path_factory.mktemp("rope") / "tiny.gguf"
    write_tiny(path, "f32", tiny_hparams(n_ctx_train=32))
    return str(path)


@pytest.mark.parametrize("method", ["linear", "ntk", "yarn"])
def test_recompute_decoding_equals_the_full_forward(tiny, method):
    from clexrt import Model
    ids = np.random.default_rng(1).integers(0, 96, 75)
    with Model(tiny, n_ctx=96, rope=method, kv_policy="recompute", rope_steps=8) as m, \
            Model(tiny, n_ctx=96, rope=method, rope_steps=8) as full:
        assert m.rope_state["mode"] == "continuous"
        m.eval(ids[:20])
        for n in range(21, len(ids) + 1):
            last = m.eval(ids[n - 1:n])
            if n % 7 == 0 or n == len(ids):
                want = full.logits(ids[:n])[-1]
                assert full.rope_state["t"] == m.rope_state["t"] == max(math.ceil(n * 8 / 32) / 8, 1)
                np.testing.assert_allclose(last, want, atol=2e-4)
        st = m.rope_state
        assert st["method"] == method and st["table_changes"] == 11     # at n = 33, 37, ..., 73
        assert st["kv_policy"] == "recompute" and st["next_change"] == 77
        if method == "yarn":
            assert st["attn_factor"] > 1


def test_yarn_temperature_scales_attention_logits(tiny):
    """YaRN at N = 3L: the YaRN table and q.k scaled by attn_factor^2, against the numpy reference."""
    from clexrt import Model
    from tinymodel import read_weights, reference_forward, tiny_hparams
    ids = np.random.default_rng(2).integers(0, 96, 96)
    with Model(tiny, n_ctx=96, rope="yarn") as m:
        got = m.logits(ids)
        st, table = m.rope_state, m.rope_table
    assert st["t"] == 3.0 and st["attn_factor"] == pytest.approx(rope.yarn_attn_factor(3.0))
    assert st["attn_factor"] > 1.1
    w = read_weights(tiny)
    want = reference_forward(w, tiny_hparams(n_ctx_train=32), ids, inv_freq=table, kq_scale=st["attn_factor"] ** 2)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    # without the temperature the logits are measurably different: the scale is really applied
    plain = reference_forward(w, tiny_hparams(n_ctx_train=32), ids, inv_freq=table)
    assert np.abs(got - plain).max() > 1e-2


def test_attention_scale_is_checked(tiny):
    from clexrt import Model
    from clexrt.engine.native import lib
    with Model(tiny) as m:
        for bad in (0.0, -1.0, float("nan"), float("inf")):
            assert lib.clex_ctx_set_attn_scale(m._ctx, bad) != 0
        assert lib.clex_ctx_set_attn_scale(m._ctx, 1.0) == 0


def test_model_rope_choices(tiny):
    from clexrt import Model
    with Model(tiny) as m:
        st = m.rope_state
        assert st["method"] == "none" and st["t"] == 1.0 and m.n_ctx == 32
        assert st["next_change"] is None and st["kv_policy"] == "rerotate"
    with pytest.raises(ModelError, match="clex"):
        Model(tiny, rope="clex")
    with pytest.raises(ModelError, match="rope method"):
        Model(tiny, rope="dynamic")
    with pytest.raises(ModelError, match="mode"):
        Model(tiny, rope="ntk", clex_mode="floor")


def test_default_steps_keep_table_changes_at_least_256_tokens_apart():
    assert [rope.default_steps(L) for L in (32, 512, 1024, 2048, 4096, 8192, 32768)] == [1, 2, 4, 8, 16, 16, 16]
    inv = rope.base_inv_freq(10000.0, 16)
    for L_ in (512, 2048, 4096, 8192):
        s = rope.RopeSchedule("ntk", inv, L_, mode="continuous")
        n, gaps = L_, []
        while (nxt := s.next_change(n)) is not None and nxt < 6 * L_:
            gaps.append(nxt - n)
            n = nxt
        assert min(gaps[1:]) == max(256, L_ // 16)


def test_f16_cache_through_table_changes_and_context_shift(tiny):
    """An f16 KV cache re-rotated at every table change and moved by context shifts decodes like
    the f32 cache, within the half-precision rounding of the stored keys and values."""
    from clexrt import Model
    ids = np.random.default_rng(4).integers(0, 96, 100)
    kw = dict(n_ctx=64, rope="ntk", rope_steps=8, context_shift=True, kv_policy="rerotate")
    with Model(tiny, kv_type="f16", **kw) as a, Model(tiny, **kw) as b:
        worst = 0.0
        for t in ids:
            worst = max(worst, float(np.abs(a.eval([t]) - b.eval([t])).max()))
        assert a.rope_state["table_changes"] == b.rope_state["table_changes"] > 2
        assert list(a.tokens) == list(b.tokens) and a.n_past < len(ids)     # shifted alike
    assert worst < 5e-3, worst
