"""The C core's step counters (clex_ctx_profile, `clexrt bench --profile`): they count what the
forward pass does (its barriers, per step, per thread), their times add up to the passes' wall
time, and turning them on changes no result."""
from __future__ import annotations

import time

import numpy as np
import pytest

import tinymodel as tm
from clexrt.engine.model import Model
from clexrt.engine.native import ffi, lib
from clexrt.errors import ClexError

# the steps of a dense sequential layer: each ends at one barrier a layer when decoding
LAYER_STEPS = ("qkv", "rope", "attention", "attn_out", "gate_up", "ffn_down")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "tiny-q8.gguf"
    tm.write_tiny(path, "q8_0")
    return str(path)


def counters(m):
    passes, names, c = m.profile_read()
    return passes, {n: c[:, i, :] for i, n in enumerate(names)}


def test_step_names_cover_the_enum_and_nothing_else():
    n = int(lib.CLEX_PROF_STEPS)
    names = [ffi.string(lib.clex_profile_step_name(i)).decode() for i in range(n)]
    assert names[0] == "start" and names[-1] == "end" and len(set(names)) == n
    assert set(LAYER_STEPS) <= set(names)
    assert lib.clex_profile_step_name(-1) == ffi.NULL and lib.clex_profile_step_name(n) == ffi.NULL


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_counts_one_barrier_per_layer_step(tiny, threads):
    with Model(tiny, n_threads=threads) as m:
        m.eval([1, 2, 3])
        m.profile(True)
        for tok in (4, 5, 6, 7):
            m.eval([tok])
        m.profile(False)
        passes, st = counters(m)
        layers = m.hparams.n_layer
    assert passes == 4
    for name in LAYER_STEPS:
        # every thread crosses every barrier (a lone thread's return at once, counted alike)
        assert (st[name][:, 2] == 4 * layers).all(), name
    assert (st["embed"][:, 2] == 4).all()
    # a lone token's norms go without a barrier (each thread normalises its own copy)
    for name in ("attn_norm", "ffn_norm", "output_norm", "output"):
        assert (st[name][:, 2] == 0).all(), name
    # every thread did work in the products
    for name in ("qkv", "gate_up", "ffn_down", "output"):
        assert (st[name][:, 0] > 0).all(), name


def test_times_add_up_to_the_wall_time(tiny):
    with Model(tiny, n_threads=2) as m:
        m.profile(True)
        t = time.perf_counter_ns()
        for tok in range(1, 21):
            m.eval([tok])
        wall = time.perf_counter_ns() - t
        passes, _, c = m.profile_read()
    assert passes == 20
    caller = int(c[0, :, :2].sum())   # thread 0's work and waits: the passes, start to end
    assert 0 < caller <= wall
    worker = int(c[1, :, :2].sum())   # a worker's, from the caller's start to its own end
    assert 0 < worker <= caller


def test_profiling_changes_no_logit_and_stops_and_restarts(tiny):
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    with Model(tiny, n_threads=2) as m:
        plain = [m.eval([t]).copy() for t in ids]
        m.reset()
        m.profile(True)
        seen = [m.eval([t]).copy() for t in ids]
        m.profile(False)
        passes, _, frozen = m.profile_read()
        m.eval([7])                      # not counted once stopped
        again, _, after = m.profile_read()
        m.profile(True)                  # a restart zeroes the counters
        zero, _, cleared = m.profile_read()
    for a, b in zip(plain, seen):
        np.testing.assert_array_equal(a, b)
    assert passes == again == len(ids) and (frozen == after).all()
    assert zero == 0 and not cleared.any()


def test_prompt_counts_its_batches(tiny):
    with Model(tiny, n_threads=2, n_batch=8) as m:
        m.profile(True)
        m.eval(list(range(1, 21)))       # 20 tokens in batches of 8: three passes
        passes, st = counters(m)
    assert passes == 3
    assert (st["qkv"][:, 2] == 3 * 2).all()
    # a batch shares the norm's rows out: a barrier after each
    assert (st["attn_norm"][:, 2] == 3 * 2).all()


def test_read_rejects_a_short_buffer(tiny):
    with Model(tiny, n_threads=2) as m:
        buf = ffi.new("uint64_t[]", 4)
        assert lib.clex_ctx_profile_read(m._ctx, buf, 4) == lib.CLEX_E_INVALID
        assert "needs 96 counters" in ffi.string(lib.clex_last_error()).decode()
        assert lib.clex_ctx_profile(ffi.NULL, 1) == lib.CLEX_E_INVALID
        m.close()
        with pytest.raises(ClexError, match="closed"):
            m.profile(True)
