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

    def batch(self, which, toks, exact=0):
        cs = ffi.new("clex_ctx *[]", [self.ctxs[i] for i in which])
        t = np.ascontiguousarray(toks, np.int32)
        pos = np.array([self.n_past[i] for i in which], np.int32)
        out = np.empty((len(which), self.hp.n_vocab), np.float32)
        check(lib.clex_eval_batch(cs, ffi.cast("int32_t *", t.ctypes.data), ffi.cast("int32_t *", pos.ctypes.data),
                                  len(which), ffi.cast("float *", out.ctypes.data), exact))
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
    again, twice = Shared(path), Shared(path)      # exact: bit for bit
    for s in (again, twice):
        for i in range(3):
            s.set_rope(i, tables[i], scales[i])
            s.eval(i, seqs[i])
    assert np.array_equal(twice.batch([0, 1, 2], nxt, exact=1), alone)
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
                                   len(ctxs), ffi.NULL, 0)

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


# ---------------------------------------------------------------------------- SlotPool

from pathlib import Path  # noqa: E402

from clexrt import Model  # noqa: E402
from clexrt.engine.batch import SlotPool  # noqa: E402
from clexrt.engine.session import Session  # noqa: E402
from clexrt.errors import ContextFullError, ModelError  # noqa: E402

TINY_CLEX = Path(__file__).resolve().parents[1] / "models" / "tiny-clex.gguf"


def _pool_vs_solo(path, prompts, n_steps, n_ctx=64, seed=0, exact=True, **kw):
    """Decode greedy-free random tokens: each prompt in a slot (Session.prefill), then n_steps
    batched steps over every slot; the same per sequence on a Model of its own. Returns the
    largest |batched - solo| relative to the largest logit, and the pool's slots' histories."""
    rng = np.random.default_rng(seed)
    with SlotPool(path, len(prompts), n_ctx, n_threads=2, **kw) as pool:
        pool.exact = exact
        V = pool.n_vocab
        steps = [[int(x) for x in rng.integers(0, V, len(prompts))] for _ in range(n_steps)]
        for s, p in zip(pool.slots, prompts):
            Session(s).prefill(p)
        got = [pool.step(list(zip(pool.slots, toks))) for toks in steps]
        hist = [s.tokens.tolist() for s in pool.slots]
        changes = [s.table_changes for s in pool.slots]
    worst = 0.0
    for i, p in enumerate(prompts):
        with Model(path, n_ctx=n_ctx, n_threads=2, **kw) as m:
            Session(m).prefill(p)
            for k, toks in enumerate(steps):
                want = m.eval([toks[i]])
                worst = max(worst, float(np.abs(got[k][i] - want).max() / np.abs(want).max()))
            assert m.tokens.tolist() == hist[i] and m.table_changes == changes[i]
    return worst, hist, changes


def test_pool_slots_at_different_lengths_equal_solo_models(tiny):
    path, cfg = tiny["q4_1"]
    rng = np.random.default_rng(4)
    prompts = _seqs(rng, cfg.n_vocab, (3, 17, 9, 1))
    assert _pool_vs_solo(path, prompts, 5, exact=False)[0] <= SOLO
    worst, hist, _ = _pool_vs_solo(path, prompts, 5)
    assert worst == 0.0           # exact: bit for bit each slot's own decode
    w = tm.read_weights(path)     # and the last step of one slot against numpy
    assert len(hist[1]) == 22
    with SlotPool(path, 2, 64, n_threads=2) as pool:
        Session(pool.slots[1]).prefill(hist[1][:-1])
        Session(pool.slots[0]).prefill(hist[0][:-1])
        rows = pool.step([(pool.slots[1], hist[1][-1]), (pool.slots[0], hist[0][-1])])
    for row, h in zip(rows, (hist[1], hist[0])):
        ref = tm.reference_forward(w, cfg, h, act=tm.ACT_OF["q4_1"])[-1]
        assert np.abs(row - ref).max() < TOL


def test_pool_prompt_cache_reuse_and_errors(tiny):
    path, cfg = tiny["f32"]
    with SlotPool(path, 2, 16, n_threads=1) as pool:
        a, b = pool.slots
        s = Session(a, chunk=1)               # the cache re-used token by token
        s.prefill([1, 2, 3, 4, 5])
        s.prefill([1, 2, 3, 9])            # the longest common prefix is kept
        assert s.n_prefill_eval == 1 and a.tokens.tolist() == [1, 2, 3, 9]
        with pytest.raises(ModelError, match="twice"):
            pool.step([(a, 1), (a, 2)])
        with pytest.raises(ModelError, match="outside the vocabulary"):
            pool.step([(a, 1), (b, cfg.n_vocab)])
        Session(b).prefill(list(range(1, 16)))
        with pytest.raises(ContextFullError, match="slot 1"):
            for _ in range(3):
                pool.step([(a, 1), (b, 2)])
        assert b.n_past == 16 and pool.step([]) == []
        with SlotPool(path, 1, 16) as other:
            with pytest.raises(ModelError, match="not one of this pool"):
                pool.step([(other.slots[0], 1)])


def _arch_files(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    import hfgen
    from clexrt.convert import convert_hf
    root = tmp_path_factory.mktemp("archs")
    specs = {"gemma3": hfgen.TFSpec("gemma3", n_layer=6, window=8), "phi2": hfgen.TFSpec("phi2"),
             "mixtral": hfgen.TFSpec("mixtral"), "qwen2": hfgen.TFSpec("qwen2"),
             "mistral": hfgen.TFSpec("mistral", window=8), "gptneox": hfgen.TFSpec("gptneox"),
             "llama3": hfgen.TFSpec("llama3")}
    out = {}
    for name, spec in specs.items():
        hfgen.make_tf_checkpoint(root / name, spec)
        out[name] = root / f"{name}.gguf"
        convert_hf(root / name, out[name], outtype="f32", progress=False)
    return out


@pytest.fixture(scope="module")
def arch_files(tmp_path_factory):
    return _arch_files(tmp_path_factory)


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("arch", ["gemma3", "phi2", "mixtral", "qwen2", "mistral", "gptneox", "llama3"])
def test_pool_every_architecture(arch_files, arch, exact):
    """Gemma 3 (local layers with their own rope table, sliding window 8, q/k norms, post-norms,
    GeGLU), Phi-2 (NeoX rope on part of each head, parallel residual, layer norm, GELU, biases),
    Mixtral (experts), Qwen2 (q/k/v biases), Mistral (window), GPT-NeoX, Llama 3 (its declared
    rope scaling): slots past the window, at different lengths, equal their own solo models."""
    rng = np.random.default_rng(9)
    path = str(arch_files[arch])
    with Model(path, n_ctx=8, n_threads=1) as m:
        V = m.n_vocab
    prompts = _seqs(rng, V, (2, 13, 6))
    worst, _, _ = _pool_vs_solo(path, prompts, 4, seed=1, exact=exact)
    assert worst == 0.0 if exact else worst <= SOLO


def test_pool_smollm2(smollm2):
    """The real model: four slots, one past 128 keys (attention split into chunks as a lone decode
    splits it), bit for bit their solo decodes. (Not exact=False: SmolLM2's four-row SIMD kernels
    round otherwise than its one-row ones, by up to 3% of the largest logit, as its prefill
    differs from its decoding.)"""
    prompts = [[1, 504, 3458, 282], list(range(100, 231)), [2, 9], list(range(7, 47))]
    worst, _, _ = _pool_vs_solo(smollm2, prompts, 3, n_ctx=256)
    assert worst == 0.0


def test_pool_gemma3_real():
    """Gemma 3 270M Q4_K_M (Q4_K, Q6_K, Q8_0 products in groups of four, local layers, window
    512): five slots, one past its window, bit for bit their solo decodes."""
    from clexrt.cli.registry import gemma3_path
    path = gemma3_path()
    if path is None:
        pytest.skip("the Gemma 3 270M package is not installed (make install adds it)")
    prompts = [[2, 818, 5279], list(range(1000, 1530)), [2, 9], list(range(300, 340)), [2]]
    assert _pool_vs_solo(path, prompts, 2, n_ctx=600)[0] == 0.0


@pytest.mark.skipif(not TINY_CLEX.exists(), reason="models/tiny-clex.gguf is not present")
@pytest.mark.parametrize("kv_policy,log_scale", [("rerotate", False), ("recompute", False), ("rerotate", True)])
def test_pool_clex_slots_at_different_t_through_a_table_change(kv_policy, log_scale):
    """tiny-clex (L = 128): one slot crosses 128 -> 129 tokens (t 1 -> 2: its cached keys are
    brought to the new table) while the others decode at t = 1 and t = 3, each equal to its own
    solo model (which changes table at the same step); with log_scale every slot's attention
    scale is its own length's, step by step."""
    rng = np.random.default_rng(2)
    prompts = _seqs(rng, 4096, (126, 40, 300))
    worst, hist, changes = _pool_vs_solo(str(TINY_CLEX), prompts, 4, n_ctx=512, kv_policy=kv_policy,
                                         log_scale=log_scale)
    assert worst == 0.0
    assert changes == [1, 0, 0] and [len(h) for h in hist] == [130, 44, 304]


def test_pool_context_shift_in_one_slot(tiny):
    """A slot with context_shift past its n_ctx shifts its own cache inside step (Model._prepare)
    while the other keeps decoding: both equal their solo models."""
    path, cfg = tiny["f32"]
    rng = np.random.default_rng(8)
    prompts = _seqs(rng, cfg.n_vocab, (14, 3))
    worst, hist, _ = _pool_vs_solo(path, prompts, 6, n_ctx=16, context_shift=True, n_keep=2)
    assert worst == 0.0
    assert len(hist[0]) < 20 and hist[0][:2] == prompts[0][:2] and len(hist[1]) == 9


@pytest.mark.parametrize("wtype", ["q4_0", "q4_1", "q5_1", "q8_0", "q2_k", "q4_k", "q6_k", "iq4_xs", "bf16"])
def test_exact_batches_of_every_weight_type(tmp_path, wtype):
    """Seven slots (groups of four and a rest; the tile kernels' threshold passed in fast mode):
    exact steps equal each slot's own decode bit for bit on every instruction set, whichever
    kernels the type's products take in groups."""
    from clexrt.engine import native
    p = tmp_path / f"k-{wtype}.gguf"
    cfg = tm.write_tiny(p, wtype, tm.tiny_hparams(**tm.TINY_K), seed=5)
    prompts = _seqs(np.random.default_rng(6), cfg.n_vocab, (1, 2, 3, 5, 8, 13, 21))
    before = native.isa()
    try:
        for isa in native.supported_isas():
            native.set_isa(isa)
            assert _pool_vs_solo(str(p), prompts, 2)[0] == 0.0, isa
    finally:
        native.set_isa(before)
