"""Saved state (clexrt.engine.batch.get_state / set_state) and the final hidden states
(hidden_states). A restored model continues exactly as one that never saved, and as the numpy
forward of the whole sequence (tests/tinymodel.py); a state of another model, KV type or rope
schedule, or a damaged one, is a one-line ClexError that leaves the model as it was. The hidden
states equal numpy's rows after the output norm (the LM head replaced by the identity)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tinymodel as tm
from clexrt import Model
from clexrt.engine.batch import SlotPool, get_state, hidden_states, set_state
from clexrt.engine.session import Session
from clexrt.errors import ClexError

TOL = 1e-3
TINY_CLEX = Path(__file__).resolve().parents[1] / "models" / "tiny-clex.gguf"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("state")
    out = {}
    for name, wt, seed in (("f32", "f32", 0), ("q8_0", "q8_0", 0), ("other", "f32", 1)):
        p = d / f"tiny-{name}.gguf"
        out[name] = (str(p), tm.write_tiny(p, wt, seed=seed))
    return out


def _continue(m, toks):
    return np.stack([m.eval([t]) for t in toks])


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_round_trip_continues_as_if_never_saved(tiny, kv_type):
    path, cfg = tiny["q8_0"]
    rng = np.random.default_rng(0)
    prompt, more = [list(rng.integers(0, cfg.n_vocab, n)) for n in (19, 6)]
    with Model(path, n_ctx=64, kv_type=kv_type) as a:
        Session(a).prefill(prompt)
        data = get_state(a)
        want = _continue(a, more)
        with Model(path, n_ctx=64, kv_type=kv_type) as b:
            Session(b).prefill([3, 1, 4])       # whatever it held before
            set_state(b, data)
            assert b.tokens.tolist() == prompt and b.n_past == len(prompt)
            got = _continue(b, more)
        set_state(a, data)                       # back in time on the model that saved
        again = _continue(a, more)
    assert np.array_equal(got, want) and np.array_equal(again, want)
    if kv_type == "f32":
        ref = tm.reference_forward(tm.read_weights(path), cfg, prompt + more, act=tm.ACT_OF["q8_0"])
        assert np.abs(got - ref[len(prompt):]).max() < TOL


def test_empty_state_and_between_slots(tiny):
    path, cfg = tiny["f32"]
    with SlotPool(path, 2, 32, n_threads=1) as pool:
        a, b = pool.slots
        empty = get_state(a)
        Session(a).prefill([5, 6, 7, 8])
        data = get_state(a)
        set_state(b, data)                       # the same model: any slot takes it
        for t in (9, 2, 3):                      # the two slots now decode alike
            la, lb = pool.step([(a, t), (b, t)])
            assert np.abs(la - lb).max() <= 1e-5 * np.abs(la).max()
        assert a.tokens.tolist() == b.tokens.tolist() == [5, 6, 7, 8, 9, 2, 3]
        ref = tm.reference_forward(tm.read_weights(path), cfg, a.tokens)[-1]
        assert np.abs(lb - ref).max() < TOL
        set_state(b, empty)
        assert b.n_past == 0


@pytest.mark.skipif(not TINY_CLEX.exists(), reason="models/tiny-clex.gguf is not present")
@pytest.mark.parametrize("kv_policy", ["rerotate", "recompute"])
def test_clex_state_keeps_t_and_the_next_table_change(kv_policy):
    """Saved at 150 tokens (t = 2 after one table change), restored into a fresh model, then on
    past 256 (the change to t = 3): the same logits and the same rope state as never saving."""
    rng = np.random.default_rng(1)
    prompt, more = list(rng.integers(0, 4096, 100)), list(rng.integers(0, 4096, 170))
    kw = dict(n_ctx=512, n_threads=2, kv_policy=kv_policy)
    with Model(str(TINY_CLEX), **kw) as a, Model(str(TINY_CLEX), **kw) as b:
        Session(a).prefill(prompt)
        _continue(a, more[:50])
        saved = a.rope_state
        assert saved["t"] == 2.0 and a.table_changes == 1 and saved["n_past"] == 150
        data = get_state(a)
        want = _continue(a, more[50:])
        Session(b).prefill(prompt[:20])
        set_state(b, data)
        assert b.rope_state == saved
        got = _continue(b, more[50:])
        assert np.array_equal(got, want)
        assert b.rope_state == a.rope_state and a.rope_state["t"] == 3.0 and a.table_changes == 2


def test_mismatches_are_one_line_errors_and_leave_the_model(tiny):
    path, cfg = tiny["f32"]
    with Model(path, n_ctx=32) as a:
        Session(a).prefill([1, 2, 3])
        data = get_state(a)
    cases = [(tiny["other"][0], {}, "another model"), (tiny["q8_0"][0], {}, "another model"),
             (path, {"kv_type": "f16"}, "KV cache"), (path, {"rope": "linear"}, "rope"),
             (path, {"n_ctx": 2}, "more than the context")]
    for p, kw, msg in cases:
        with Model(p, **{"n_ctx": 32, **kw}) as m:
            Session(m).prefill([7])
            before = m.eval([9])
            with pytest.raises(ClexError, match=msg) as e:
                set_state(m, data)
            assert "\n" not in str(e.value)
            assert m.tokens.tolist() == [7, 9]
            m.truncate(1)
            assert np.array_equal(m.eval([9]), before)
    with Model(path, n_ctx=32) as m:
        Session(m).prefill([7, 8])
        before = m.eval([9])
        for bad, msg in ((b"junk", "bad magic"), (data[:-3], "bytes"), (data[:20] + b"\xff" + data[21:], "damaged")):
            with pytest.raises(ClexError, match=msg):
                set_state(m, bad)
        assert m.tokens.tolist() == [7, 8, 9]
        m.truncate(2)
        assert np.array_equal(m.eval([9]), before)


# ---------------------------------------------------------------------------- hidden states


def test_hidden_states_equal_numpy_output_norm(tiny):
    path, cfg = tiny["f32"]
    w = tm.read_weights(path)
    ids = list(np.random.default_rng(3).integers(0, cfg.n_vocab, 37))
    ref = tm.reference_forward(dict(w, **{"output.weight": np.eye(cfg.n_embd)}), cfg, ids)
    with Model(path, n_ctx=64, n_batch=8) as m:     # several internal batches
        Session(m).prefill([4, 4, 4])
        got = hidden_states(m, ids)
        assert got.shape == (len(ids), cfg.n_embd) and got.dtype == np.float32
        assert m.tokens.tolist() == ids            # the cache then holds ids, as after logits(ids)
        logits = m.logits(ids)
    assert np.abs(got - ref).max() < TOL
    out = w["output.weight"].T                     # and the LM head of those rows is the logits
    assert np.abs(got.astype(np.float64) @ out - logits).max() < TOL
    with Model(path, n_ctx=8) as m:
        assert hidden_states(m, []).shape == (0, cfg.n_embd)
        with pytest.raises(ClexError, match="exceed the context"):
            hidden_states(m, ids)


def test_hidden_states_against_transformers(tmp_path):
    """A converted Gemma 3 (its output norm's +1 offset, embedding scale, local layers): the
    last of transformers' hidden_states (after the final norm) for the same ids."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import hfgen
    from clexrt.convert import convert_hf
    model = hfgen.make_tf_checkpoint(tmp_path / "hf", hfgen.TFSpec("gemma3", n_layer=6, window=8))
    convert_hf(tmp_path / "hf", tmp_path / "g.gguf", outtype="f32", progress=False)
    ids = [2, 17, 40, 5, 99, 23, 61, 8, 12, 30, 77, 41]
    with torch.no_grad():
        ref = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].numpy()
    with Model(tmp_path / "g.gguf", n_ctx=32) as m:
        got = hidden_states(m, ids)
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()
