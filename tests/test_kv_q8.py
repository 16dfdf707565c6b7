"""The Q8_0 KV cache (kv_type="q8_0"): each cached row of head_dim keys or values stored as Q8_0
blocks, scores taken against the query head quantized to Q8_0.

Against independent references: the stored bytes are gguf-py's Q8_0 quantization of the rows
the f32 cache holds; the logits are the numpy float64 forward (tests/tinymodel.py) with keys,
values and queries rounded through gguf-py's Q8_0; re-rotation and the context shift are
gguf-py's dequantize, the rotation in numpy (float32, the core's angles), gguf-py's quantize.
Also: the memory (34 bytes per 32 values), saved state, batched decoding, the chunked decode,
the head_dim rule and the option surfaces (Llama's type_k / type_v, --kv-type)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

import tinymodel as tm
from clexrt import Model, ModelError
from clexrt.engine import native as _lib
from clexrt.engine.batch import SlotPool, get_state, set_state
from clexrt.engine.native import ffi, lib
from clexrt.engine.session import Session
from clexrt.errors import ClexError

# |logits| ~ 3. Exact: the one-layer model against numpy on its cached rows (measured ~1e-6).
# Statistical, for several layers: a later layer's keys, values and queries are float32 results
# ~1e-7 from the float64 reference's, and now and then one lands on the other side of a Q8_0
# rounding step (1/127 of its block's largest value), moving logits by up to a few 1e-2 from
# the Q8_0 reference (measured up to 4.5e-2 over a dozen seeds; a third of the runs have one).
# So: the median within MEDIAN_OWN of the reference's own distance from the f32 reference (the
# whole Q8_0 rounding; measured <= 0.04 of it), every logit within NEAR_F32 of both references
# (measured <= 0.065 from the f32 one).
TOL = 1e-4
MEDIAN_OWN = 0.2
NEAR_F32 = 0.15

# head_dim 32 (GQA 4:2) and 64 (2:1, SmolLM2's head size): one and two blocks per row
SHAPES = {"d32": dict(n_embd=128, n_ff=256), "d64": dict(n_embd=128, n_head=2, n_head_kv=1, n_ff=256)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("kvq8")
    out = {}
    for shape, kw in SHAPES.items():
        for wt in ("f32", "q4_1"):
            p = d / f"{shape}-{wt}.gguf"
            out[shape, wt] = (str(p), tm.write_tiny(p, wt, tm.tiny_hparams(**kw), seed=0))
    for name, kw in (("d64-1layer", dict(SHAPES["d64"], n_layer=1)), ("d32-ctx32", dict(SHAPES["d32"], n_ctx_train=32)),
                     ("d16", {})):    # d16: head_dim 16, not whole blocks
        p = d / f"{name}.gguf"
        out[name] = (str(p), tm.write_tiny(p, "f32", tm.tiny_hparams(**kw), seed=0))
    return out


@pytest.fixture(autouse=True)
def restore_isa():
    before = _lib.isa()
    yield
    _lib.set_isa(before)


def kv_state(m: Model) -> tuple[np.ndarray, np.ndarray]:
    """the cache's rows of the m.n_past tokens as stored: keys, values [n_layer, n_head_kv, n, row bytes]"""
    n, hp = m.n_past, m.hparams
    nbytes = int(lib.clex_ctx_kv_state_bytes(m._ctx, n))
    buf = np.zeros(nbytes, np.uint8)
    _lib.check(lib.clex_ctx_kv_read(m._ctx, n, ffi.cast("void *", buf.ctypes.data), nbytes))
    k, v = buf.reshape(2, hp.n_layer, hp.n_head_kv, n, -1)
    return k, v


def f32_rows(m: Model) -> tuple[np.ndarray, np.ndarray]:
    k, v = kv_state(m)
    return k.view(np.float32), v.view(np.float32)


def q8(rows: np.ndarray) -> np.ndarray:
    """float32 rows [..., head_dim] -> gguf-py's Q8_0 bytes [..., head_dim / 32 * 34]"""
    shape = rows.shape
    b = quants.quantize(np.ascontiguousarray(rows, np.float32).reshape(-1, shape[-1]), QT.Q8_0)
    return b.reshape(*shape[:-1], -1)


def deq(b: np.ndarray) -> np.ndarray:
    """Q8_0 bytes [..., row bytes] -> float32 rows, gguf-py's dequantizer (d * q in float32)"""
    shape = b.shape
    return quants.dequantize(np.ascontiguousarray(b).reshape(-1, shape[-1]), QT.Q8_0).reshape(*shape[:-1], -1)


def turn(k: np.ndarray, old: np.ndarray, new: np.ndarray, src, dst) -> np.ndarray:
    """keys [..., n, head_dim] (float32, adjacent pairs) rotated at positions src with table old
    to positions dst with table new, as kv.c forms it: the change of angle in float64 from the two
    float32 products, its cos and sin in float32, the rotation in float32"""
    src, dst = np.asarray(src, np.float32)[:, None], np.asarray(dst, np.float32)[:, None]
    delta = (dst * new[None, :]).astype(np.float64) - (src * old[None, :]).astype(np.float64)
    c, s = np.cos(delta).astype(np.float32), np.sin(delta).astype(np.float32)
    out = k.copy()
    n2 = 2 * old.size
    a, b = k[..., 0:n2:2], k[..., 1:n2:2]
    out[..., 0:n2:2] = a * c - b * s
    out[..., 1:n2:2] = a * s + b * c
    return out


# ---------------------------------------------------------------------------------------------- logits


def q8_0_choices(x: np.ndarray, margin: float = 1e-3) -> list[np.ndarray]:
    """The Q8_0 roundings (dequantized, float64) the core's quantizer may make of a row it holds
    in float32 within ~1e-6 of x (float64): one, unless a code is within `margin` of a rounding
    tie or a block's fp16 scale within 1e-2 of an ulp of one; then every resolution of those."""
    blocks = []
    for b in x.reshape(-1, 32):
        d = np.abs(b).max() / 127
        if d == 0:
            blocks.append([np.zeros(32)])
            continue
        scales = sorted({float(np.float16(d * (1 - 1e-5))), float(np.float16(d * (1 + 1e-5)))})
        c = b / d
        lo = np.floor(c)
        tie = np.abs(c - lo - 0.5) < margin
        nearest = np.where(c - lo > 0.5, lo + 1, lo)
        codes = []
        for bits in itertools.product((0, 1), repeat=int(tie.sum())):
            cc = nearest.copy()
            cc[tie] = lo[tie] + np.array(bits)
            codes.append(cc)
        blocks.append([sc * cc for sc in scales for cc in codes])
    return [np.concatenate(row) for row in itertools.product(*blocks)]


def test_one_layer_equals_numpy_on_the_cached_rows(tiny):
    """One layer: the cached keys and values are gguf-py's Q8_0 of the f32 cache's rows (every
    row), and the logits equal the float64 forward whose attention reads those rows dequantized
    by gguf-py and the query heads rounded to Q8_0 (each token as one of q8_0_choices' roundings
    of its query: almost always the one; the core's float32 query decides ties)."""
    path, cfg = tiny["d64-1layer"]
    ids = list(np.random.default_rng(10).integers(0, cfg.n_vocab, 40))
    with Model(path, n_threads=2, kv_type="q8_0", n_batch=16) as m, Model(path, n_threads=2) as m32:
        got = m.logits(ids)
        m32.logits(ids)
        k8, v8 = kv_state(m)
        k32, v32 = f32_rows(m32)
    assert np.array_equal(k8, q8(k32)) and np.array_equal(v8, q8(v32))
    rows = [tuple(deq(a)[0].transpose(1, 0, 2) for a in (k8, v8))]    # [T, n_head_kv, head_dim]
    choices = {}

    def round_q(layer, q):   # q [T, n_head, D]: token t's choice j (its last if it has fewer)
        if not choices:
            for t in range(q.shape[0]):
                heads = [q8_0_choices(q[t, h]) for h in range(q.shape[1])]
                choices[t] = [np.stack(c) for c in itertools.product(*heads)]
        return np.stack([choices[t][min(j, len(choices[t]) - 1)] for t in range(q.shape[0])])

    j, refs = 0, []
    while not choices or j < max(len(c) for c in choices.values()):
        refs.append(tm.reference_forward(tm.read_weights(path), cfg, ids, kv_rows=rows, q_round=round_q))
        j += 1
    assert len(refs) <= 8, "more near-ties than a float32 query makes"
    err = [min(np.abs(got[t] - r[t]).max() for r in refs[:len(choices[t])]) for t in range(len(ids))]
    assert max(err) < TOL, max(err)


@pytest.mark.parametrize("isa", _lib.supported_isas())
@pytest.mark.parametrize("shape,wtype", [("d32", "f32"), ("d64", "f32"), ("d32", "q4_1")])
def test_logits_follow_the_q8_reference(tiny, isa, shape, wtype):
    """Against the numpy forward that rounds keys, values and queries through Q8_0 (MEDIAN_OWN,
    NEAR_F32 above): far closer to it than to the f32 reference, near both; 34/128 of f32's
    memory; prefill agrees with token-by-token decoding (exactly so in the one-layer tests)."""
    path, cfg = tiny[shape, wtype]
    ids = list(np.random.default_rng(3).integers(0, cfg.n_vocab, 40))
    w = tm.read_weights(path)
    ref8 = tm.reference_forward(w, cfg, ids, act=tm.ACT_OF[wtype], kv_q8=True)
    ref32 = tm.reference_forward(w, cfg, ids, act=tm.ACT_OF[wtype])
    _lib.set_isa(isa)
    with Model(path, n_threads=2, kv_type="q8_0", n_batch=8) as m, Model(path, n_threads=2) as m32:
        got = m.logits(ids)
        m.reset()
        steps = np.stack([m.eval([t]) for t in ids])
        assert m.kv_type == "q8_0" and m.kv_bytes * 128 == m32.kv_bytes * 34
        hp = m.hparams
        assert m.kv_bytes == 2 * hp.n_layer * hp.n_head_kv * m.n_ctx * hp.head_dim // 32 * 34
    own = np.median(np.abs(ref32 - ref8))
    assert own > 1e-3                                                  # the rounding is real
    assert np.median(np.abs(got - ref8)) < MEDIAN_OWN * own
    assert np.abs(got - ref8).max() < NEAR_F32 and np.abs(got - ref32).max() < NEAR_F32
    # prefill against decoding: the same float rounding story (quantized weights' prefill tiles
    # round in another order than decoding's row kernels), so the bulk equal, every logit near
    assert np.median(np.abs(got - steps)) < 1e-5 and np.abs(got - steps).max() < NEAR_F32


@pytest.mark.parametrize("threads", [2, 3])
def test_decoding_with_split_keys_equals_the_full_forward(tiny, threads):
    """Decoding splits each KV head's keys into chunks from 128 keys on (attn.c), the chunks'
    partial softmaxes combined; the same tokens in one forward take one run each. One layer: its
    keys and values do not depend on attention, so the two paths cache the same bytes and differ
    only in float rounding (with more layers that rounding can move a later key across a Q8_0
    step: see the statistical bounds above)."""
    path, cfg = tiny["d64-1layer"]
    ids = list(np.random.default_rng(6).integers(0, cfg.n_vocab, 250))
    with Model(path, n_threads=threads, kv_type="q8_0") as m:
        full = m.logits(ids)
        k_full, v_full = kv_state(m)
        m.reset()
        m.eval(ids[:100])
        steps = np.stack([m.eval([t]) for t in ids[100:]])
        k_steps, v_steps = kv_state(m)
    assert np.array_equal(k_full, k_steps) and np.array_equal(v_full, v_steps)
    assert np.abs(full[100:] - steps).max() < 1e-4


def test_batched_decode_equals_each_alone(tiny):
    """SlotPool's exact batched step over Q8_0 caches: each slot's logits and cache bytes are what
    that sequence gives decoding alone."""
    path, cfg = tiny["d32", "q4_1"]
    rng = np.random.default_rng(5)
    seqs = [list(rng.integers(0, cfg.n_vocab, n)) for n in (5, 11)]
    with SlotPool(path, 2, 32, n_threads=2, kv_type="q8_0") as pool:
        for s, seq in zip(pool.slots, seqs):
            Session(s).prefill(seq)
        rows = pool.step([(pool.slots[0], 7), (pool.slots[1], 9)])
        states = [kv_state(s) for s in pool.slots]
    for seq, t, row, (k, v) in zip(seqs, (7, 9), rows, states):
        with Model(path, n_ctx=32, n_threads=2, kv_type="q8_0") as m:
            Session(m).prefill(seq)
            alone = m.eval([t])
            ka, va = kv_state(m)
        assert np.array_equal(row, alone)
        assert np.array_equal(k, ka) and np.array_equal(v, va)


@pytest.mark.parametrize("first", ["f32", "q8_0"])
def test_batch_of_mixed_cache_types(tiny, first):
    """clex_eval_batch over contexts of one model with an f32 and a Q8_0 cache, either first (the
    first lends its scratch, the Q8_0 query's included): each row bit for bit its lone decode."""
    from test_batch_decode import Shared
    path, cfg = tiny["d64", "f32"]
    types = {"f32": lib.CLEX_TYPE_F32, "q8_0": lib.CLEX_TYPE_Q8_0}
    order = [first, "q8_0" if first == "f32" else "f32"]
    seqs = [list(np.random.default_rng(11).integers(0, cfg.n_vocab, n)) for n in (6, 13)]
    runs = []
    for _ in range(2):
        s = Shared(path, n_ctxs=0)
        for kv in order:
            pc = ffi.new("clex_ctx **")
            _lib.check(lib.clex_ctx_create(s.m, 64, 16, 2, types[kv], pc))
            s.ctxs.append(ffi.gc(pc[0], lib.clex_ctx_free))
            s.n_past.append(0)
        for i, seq in enumerate(seqs):
            s.set_rope(i, tm.rope_table(cfg.freq_base, cfg.n_rot))
            s.eval(i, seq)
        runs.append(s)
    alone = np.stack([runs[0].eval(i, [7]) for i in range(2)])
    got = runs[1].batch([0, 1], [7, 7], exact=1)
    assert np.array_equal(got, alone)
    assert runs[0].kv(1) == runs[1].kv(1)


# ---------------------------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("isa", _lib.supported_isas())
def test_stored_rows_are_gguf_py_q8_0_of_the_f32_rows(tiny, isa):
    """Layer 0's keys and values (the same float32 rows in both caches: nothing before them reads
    the cache) stored as gguf-py quantizes the f32 cache's rows, whichever quantizer the ISA runs,
    by prefill and by decoding alike; the later layers within one Q8_0 step of the f32 rows."""
    path, cfg = tiny["d64", "f32"]
    ids = list(np.random.default_rng(7).integers(0, cfg.n_vocab, 37))
    _lib.set_isa(isa)
    with Model(path, kv_type="q8_0", n_batch=8) as m, Model(path) as m32:
        m.logits(ids)
        m32.logits(ids)
        k8, v8 = kv_state(m)
        k32, v32 = f32_rows(m32)
        m.reset()
        for t in ids:
            m.eval([t])
        kd, vd = kv_state(m)
    assert k8.shape[-1] == cfg.head_dim // 32 * 34
    assert np.array_equal(k8[0], q8(k32[0])) and np.array_equal(v8[0], q8(v32[0]))
    assert np.array_equal(kd[0], k8[0]) and np.array_equal(vd[0], v8[0])
    for a8, a32 in ((k8, k32), (v8, v32)):
        step = np.abs(a32).reshape(*a32.shape[:-1], -1, 32).max(-1, keepdims=True) / 127
        err = np.abs(deq(a8) - a32).reshape(step.shape[:-1] + (32,))
        assert (err <= 0.5 * step + 0.02 * np.abs(a32).max()).all()


def test_rerotation_is_dequantize_rotate_requantize(tiny):
    """clex_ctx_rerotate on a Q8_0 cache: every key row gguf-py's Q8_0 of the dequantized row
    turned from the old table to the new one; the values' bytes unchanged."""
    path, cfg = tiny["d32", "f32"]
    ids = list(np.random.default_rng(8).integers(0, cfg.n_vocab, 30))
    with Model(path, kv_type="q8_0") as m:
        m.logits(ids)
        old = m.rope_table
        new = (old * np.float32(0.37)).astype(np.float32)
        k0, v0 = kv_state(m)
        _lib.check(lib.clex_ctx_set_rope(m._ctx, ffi.cast("float *", new.ctypes.data), new.size))
        _lib.check(lib.clex_ctx_rerotate(m._ctx, ffi.cast("float *", old.ctypes.data), m.n_past))
        k1, v1 = kv_state(m)
    pos = np.arange(len(ids))
    want = q8(turn(deq(k0), old, new, pos, pos))
    assert np.array_equal(k1, want) and np.array_equal(v1, v0)
    assert not np.array_equal(k1, k0)


def test_context_shift_requantizes_keys_and_moves_values(tiny):
    """clex_ctx_shift on a Q8_0 cache: the kept rows untouched, each later key row at its new
    position gguf-py's Q8_0 of its dequantized row turned there, each value row moved as stored."""
    path, cfg = tiny["d64", "f32"]
    ids = list(np.random.default_rng(9).integers(0, cfg.n_vocab, 40))
    keep, drop = 3, 12
    with Model(path, kv_type="q8_0") as m:
        m.logits(ids)
        inv = m.rope_table
        k0, v0 = kv_state(m)
        _lib.check(lib.clex_ctx_shift(m._ctx, m.n_past, keep, drop))
        k1, v1 = kv_state(m)
    n = len(ids) - drop
    src, dst = np.arange(keep + drop, len(ids)), np.arange(keep, n)
    assert np.array_equal(k1[:, :, :keep], k0[:, :, :keep]) and np.array_equal(v1[:, :, :keep], v0[:, :, :keep])
    assert np.array_equal(k1[:, :, keep:n], q8(turn(deq(k0[:, :, keep + drop:]), inv, inv, src, dst)))
    assert np.array_equal(v1[:, :, keep:n], v0[:, :, keep + drop:])


def test_table_changes_and_context_shifts_decode_like_f32(tiny):
    """A Q8_0 cache re-rotated at every table change and moved by context shifts decodes like the
    f32 cache, within the Q8_0 rounding of keys, values and queries (the f32-cache bound above)."""
    path, cfg = tiny["d32-ctx32"]
    ids = np.random.default_rng(4).integers(0, cfg.n_vocab, 100)
    kw = dict(n_ctx=64, rope="ntk", rope_steps=8, context_shift=True, kv_policy="rerotate")
    with Model(path, kv_type="q8_0", **kw) as a, Model(path, **kw) as b:
        worst = max(float(np.abs(a.eval([t]) - b.eval([t])).max()) for t in ids)
        assert a.rope_state["table_changes"] == b.rope_state["table_changes"] > 2
        assert list(a.tokens) == list(b.tokens) and a.n_past < len(ids)     # shifted alike
    assert worst < NEAR_F32, worst


# ---------------------------------------------------------------------------------------------- state


def test_saved_state_round_trip(tiny):
    """get_state / set_state of a Q8_0 cache: the rows as stored (34 bytes per 32 values), and a
    restored model continues exactly as the one that saved; a model with another cache type
    refuses the state."""
    path, cfg = tiny["d32", "q4_1"]
    rng = np.random.default_rng(0)
    prompt, more = [list(rng.integers(0, cfg.n_vocab, n)) for n in (19, 6)]
    with Model(path, n_ctx=64, kv_type="q8_0") as a:
        Session(a).prefill(prompt)
        data = get_state(a)
        assert int(lib.clex_ctx_kv_state_bytes(a._ctx, len(prompt))) == \
            2 * cfg.n_layer * cfg.n_head_kv * len(prompt) * cfg.head_dim // 32 * 34
        want = np.stack([a.eval([t]) for t in more])
        with Model(path, n_ctx=64, kv_type="q8_0") as b:
            Session(b).prefill([3, 1, 4])
            set_state(b, data)
            assert b.tokens.tolist() == prompt
            got = np.stack([b.eval([t]) for t in more])
    assert np.array_equal(got, want)
    with Model(path, n_ctx=64, kv_type="f16") as c:
        with pytest.raises(ClexError, match="q8_0 KV cache"):
            set_state(c, data)


# ---------------------------------------------------------------------------------------------- surfaces


def test_head_dim_must_be_whole_blocks(tiny):
    path, cfg = tiny["d16"]
    assert cfg.head_dim == 16
    with pytest.raises(ModelError, match="head dimension 16 is not a multiple of 32") as e:
        Model(path, kv_type="q8_0")
    assert "\n" not in str(e.value)
    from clexrt.api import Llama
    with pytest.raises(ModelError, match="not a multiple of 32"):
        Llama(path, type_k=8, type_v=8)
    with Model(path, kv_type="f16") as m:      # the same model with another cache type runs
        m.eval([1, 2])
        pc = ffi.new("clex_ctx **")
        assert lib.clex_ctx_create(m._model, 8, 1, 1, lib.CLEX_TYPE_Q8_0, pc) == lib.CLEX_E_INVALID
        assert pc[0] == ffi.NULL


def test_llama_type_k_and_type_v():
    """llama-cpp-python's type_k / type_v (ggml id 8 or "q8_0") name the Q8_0 cache; keys and
    values of different types are an error, since the cache has one type."""
    from clexrt.api.options import kv_type_of
    assert kv_type_of(8, "q8_0", "f32") == kv_type_of("Q8_0", None, "f32") == kv_type_of(None, None, "q8_0") == "q8_0"
    with pytest.raises(ValueError, match="one element type for keys and values"):
        kv_type_of("q8_0", 1, "f32")
    with pytest.raises(ValueError, match="disagree"):
        kv_type_of(8, 8, "f16")


def test_llama_runs_a_q8_0_cache_on_smollm2(smollm2):
    """Llama(type_k=8, type_v=8) on the real model (head_dim 64): a Q8_0 cache, 34/128 of f32's."""
    from clexrt.api import Llama
    llm = Llama(smollm2, n_ctx=64, type_k=8, type_v=8)
    ref = Llama(smollm2, n_ctx=64)
    assert llm._model.kv_type == "q8_0" and llm._model.kv_bytes * 128 == ref._model.kv_bytes * 34
    out = llm("The capital of France is", max_tokens=2, temperature=0)["choices"][0]["text"]
    assert out == ref("The capital of France is", max_tokens=2, temperature=0)["choices"][0]["text"]


def test_generate_on_smollm2_with_a_q8_0_cache(smollm2):
    """--kv-type q8_0 on the real model (head_dim 64): the same clear greedy start as f32."""
    from click.testing import CliRunner
    from clexrt.cli import cli
    base = ["generate", "-m", "smollm2", "-p", "The capital of France is", "--temp", "0", "-n", "2", "-c", "64"]
    a, b = (CliRunner().invoke(cli, base + extra) for extra in ([], ["--kv-type", "q8_0"]))
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    assert a.stdout == b.stdout and a.stdout.strip().startswith("Paris")


def test_info_shows_each_cache_types_bytes_per_token(tiny):
    """`clexrt info`: keys and values of every layer and KV head per token, per --kv-type; q8_0
    n/a where head_dim is not whole blocks of 32."""
    from click.testing import CliRunner
    from clexrt.cli import cli
    from clexrt.cli.info import describe
    for name, q8_ok in (("d32-ctx32", True), ("d16", False)):
        path, cfg = tiny[name]
        rows = 2 * cfg.n_layer * cfg.n_head_kv
        want = {"f32": rows * cfg.head_dim * 4, "f16": rows * cfg.head_dim * 2,
                "q8_0": rows * cfg.head_dim // 32 * 34 if q8_ok else None}
        assert describe(path)["kv_cache"] == want
        r = CliRunner().invoke(cli, ["info", path])
        assert r.exit_code == 0 and "kv cache:" in r.output
        assert ("q8_0 n/a (head dim)" in r.output) != q8_ok
