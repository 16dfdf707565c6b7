"""Batched decoding (clex_eval_batch, clexrt.engine.batch.SlotPool): several contexts of one model
decode one token each in one pass. Each row must be what that context gives decoding alone, and
what the independent numpy forward (tests/tinymodel.py: gguf-py reads the file, float64 math)
gives for that sequence with that context's own rope table and attention scale; the contexts sit
at different lengths, with different tables, through the architectures the forward pass runs."""
from __future__ import annotations

import numpy as np
import pytest

import tinymodel as tm
from clexrt.engine.native import check, ffi, lib
from clexrt.engine.weights import NativeWeights
from clexrt.errors import ClexError
from clexrt.gguf import GGUFFile, validate_model

TOL = 1e-3        # against numpy, |logits| ~ 3 (tests/test_forward.py)
SOLO = 1e-5       # against the same context decoding alone, relative to the largest logit


class Shared:
    """One clex_model and several clex_ctx over it, driven through the C API directly."""

    def __init__(self, path, n_ctx=64, n_ctxs=3, n_threads=2, kv_type=lib.CLEX_TYPE_F32):
        self.g = GGUFFile(str(path))
        self.hp = validate_model(self.g)
        self.w = NativeWeights(self.g)
        self.m = self.w.create_model(self.hp, where=str(path))
        self.ctxs = []
        for _ in range(n_ctxs):
            pc = ffi.new("clex_ctx **")
            check(lib.clex_ctx_create(self.m, n_ctx, 16, n_threads, kv_type, pc))
            self.ctxs.append(ffi.gc(pc[0], lib.clex_ctx_free))
        self.n_past = [0] * n_ctxs

    def set_rope(self, i, inv, kq_scale=1.0, local=None):
        inv = np.ascontiguousarray(inv, np.float32)
        check(lib.clex_ctx_set_rope(self.ctxs[i], ffi.cast("float *", inv.ctypes.data), inv.size))
        check(lib.clex_ctx_set_attn_scale(self.ctxs[i], kq_scale))
        if local is not None:
            loc = np.ascontiguousarray(local, np.float32)
            check(lib.clex_ctx_set_rope_set(self.ctxs[i], 1, ffi.cast("float *", loc.ctypes.data), loc.size))
        self._keep = (inv, local)

    def eval(self, i, ids):
        ids = np.ascontiguousarray(ids, np.int32)
        out = np.empty(self.hp.n_vocab, np.float32)
        check(lib.clex_eval(self.ctxs[i], ffi.cast("int32_t *", ids.ctypes.data), ids.size, self.n_past[i],
                            ffi.cast("float *", out.ctypes.data), 0))
        self.n_past[i] += ids.size
        return out

    def batch(self, which, toks):
        cs = ffi.new("clex_ctx *[]", [self.ctxs[i] for i in which])
        t = np.ascontiguousarray(toks, np.int32)
        pos = np.array([self.n_past[i] for i in which], np.int32)
        out = np.empty((len(which), self.hp.n_vocab), np.float32)
        check(lib.clex_eval_batch(cs, ffi.cast("int32_t *", t.ctypes.data), ffi.cast("int32_t *", pos.ctypes.data),
                                  len(which), ffi.cast("float *", out.ctypes.data)))
        for i in which:
            self.n_past[i] += 1
        return out

    def kv(self, i):
        n = lib.clex_ctx_kv_state_bytes(self.ctxs[i], self.n_past[i])
        buf = ffi.new("char[]", n)
        check(lib.clex_ctx_kv_read(self.ctxs[i], self.n_past[i], buf, n))
        return bytes(ffi.buffer(buf, n))


def _seqs(rng, n_vocab, lengths):
    return [list(rng.integers(0, n_vocab, n)) for n in lengths]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    out = {}
    for wt in ("f32", "q8_0", "q4_1"):
        p = d / f"tiny-{wt}.gguf"
        out[wt] = (str(p), tm.write_tiny(p, wt, seed=3))
    return out


@pytest.mark.parametrize("wtype", ["f32", "q8_0", "q4_1"])
def test_batched_step_equals_numpy_and_solo_decoding(tiny, wtype):
    """Three contexts at lengths 5, 11 and 1, each with its own rope table (base 10000, linear
    x2, NTK-like base 40000) and attention scale: a batched step's rows equal numpy's last row of
    each sequence and each context decoding the same token alone."""
    path, cfg = tiny[wtype]
    rng = np.random.default_rng(7)
    seqs = _seqs(rng, cfg.n_vocab, (5, 11, 1))
    nxt = [int(x) for x in rng.integers(0, cfg.n_vocab, 3)]
    base = tm.rope_table(cfg.freq_base, cfg.n_rot)
    tables = [base, base / 2, tm.rope_table(40000.0, cfg.n_rot)]
    scales = [1.0, 1.3, 0.8]
    w = tm.read_weights(path)
    solo, both = Shared(path), Shared(path)
    for s in (solo, both):
        for i in range(3):
            s.set_rope(i, tables[i], scales[i])
            s.eval(i, seqs[i])
    alone = np.stack([solo.eval(i, [nxt[i]]) for i in range(3)])
    got = both.batch([0, 1, 2], nxt)
    assert np.abs(got - alone).max() <= SOLO * np.abs(alone).max()
    for i in range(3):
        ref = tm.reference_forward(w, cfg, seqs[i] + [nxt[i]], inv_freq=tables[i], kq_scale=scales[i],
                                   act=tm.ACT_OF[wtype])[-1]
        assert np.abs(got[i] - ref).max() < TOL
        assert solo.kv(i) == both.kv(i)        # the same rows appended to each cache


def test_batched_steps_in_any_order_and_subsets(tiny):
    """Steps over changing subsets of the contexts, in changing order, keep every context's
    sequence exactly as decoding it alone (numpy's logits for each whole sequence)."""
    path, cfg = tiny["f32"]
    rng = np.random.default_rng(11)
    w = tm.read_weights(path)
    seqs = _seqs(rng, cfg.n_vocab, (3, 8, 2, 6))
    s = Shared(path, n_ctxs=4)
    base = tm.rope_table(cfg.freq_base, cfg.n_rot)
    for i in range(4):
        s.set_rope(i, base)
        s.eval(i, seqs[i])
    for which in ([3, 1], [0, 1, 2, 3], [2], [1, 3, 0]):
        toks = [int(x) for x in rng.integers(0, cfg.n_vocab, len(which))]
        got = s.batch(which, toks)
        for row, i, t in zip(got, which, toks):
            seqs[i].append(t)
            ref = tm.reference_forward(w, cfg, seqs[i])[-1]
            assert np.abs(row - ref).max() < TOL
    assert s.n_past == [len(q) for q in seqs]


def test_f16_cache_batched_equals_solo(tiny):
    path, cfg = tiny["q8_0"]
    rng = np.random.default_rng(5)
    seqs = _seqs(rng, cfg.n_vocab, (4, 9))
    a, b = (Shared(path, n_ctxs=2, kv_type=lib.CLEX_TYPE_F16) for _ in range(2))
    base = tm.rope_table(cfg.freq_base, cfg.n_rot)
    for s in (a, b):
        for i in range(2):
            s.set_rope(i, base)
            s.eval(i, seqs[i])
    alone = np.stack([a.eval(i, [7]) for i in range(2)])
    got = b.batch([0, 1], [7, 7])
    assert np.abs(got - alone).max() <= SOLO * np.abs(alone).max()
    assert a.kv(1) == b.kv(1)


def test_batch_rejects_bad_input(tiny, tmp_path):
    path, cfg = tiny["f32"]
    s = Shared(path, n_ctx=8, n_ctxs=2)
    other = Shared(tiny["q8_0"][0], n_ctxs=1)

    def call(ctxs, toks, pos):
        cs = ffi.new("clex_ctx *[]", ctxs)
        t = np.ascontiguousarray(toks, np.int32)
        p = np.ascontiguousarray(pos, np.int32)
        return lib.clex_eval_batch(cs, ffi.cast("int32_t *", t.ctypes.data), ffi.cast("int32_t *", p.ctypes.data),
                                   len(ctxs), ffi.NULL)

    def err(rc):
        with pytest.raises(ClexError) as e:
            check(rc)
        return str(e.value)

    c0, c1 = s.ctxs
    assert "also context 0" in err(call([c0, c0], [1, 2], [0, 0]))
    assert "another model" in err(call([c0, other.ctxs[0]], [1, 2], [0, 0]))
    assert "outside the vocabulary" in err(call([c0, c1], [1, cfg.n_vocab], [0, 0]))
    assert "full" in err(call([c0, c1], [1, 2], [0, 8]))
    assert "negative" in err(call([c0, c1], [1, 2], [-1, 0]))
    assert call([c0, c1], [1, 2], [0, 0]) == lib.CLEX_OK


# ---------------------------------------------------------------------------- hidden states


def test_hidden_rows_equal_numpy(tiny):
    """clex_eval_hidden: each token's final hidden state after the output norm, as numpy's forward
    with the LM head replaced by the identity gives it."""
    path, cfg = tiny["f32"]
    w = tm.read_weights(path)
    ids = list(np.random.default_rng(2).integers(0, cfg.n_vocab, 21))
    ident = dict(w, **{"output.weight": np.eye(cfg.n_embd)})
    ref = tm.reference_forward(ident, cfg, ids)
    s = Shared(path)
    s.set_rope(0, tm.rope_table(cfg.freq_base, cfg.n_rot))
    t = np.ascontiguousarray(ids, np.int32)
    out = np.empty((len(ids), cfg.n_embd), np.float32)
    check(lib.clex_eval_hidden(s.ctxs[0], ffi.cast("int32_t *", t.ctypes.data), t.size, 0,
                               ffi.cast("float *", out.ctypes.data)))
    assert np.abs(out - ref).max() < TOL
