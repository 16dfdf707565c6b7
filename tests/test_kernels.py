"""Every kernel against its scalar reference, for every type and every instruction set this CPU
runs, and the reference quantizers against gguf-py's independent implementation of the formats.

Tolerances: quantizers and fp16/bf16 conversions are bit-exact; dot products of the same inputs
may differ only by float summation order: |simd - scalar| <= 1e-5 * sum|w_i * x_i| + 1e-6."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

from clexrt.engine import native as _lib
from clexrt.engine.native import ffi, lib

TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3}
# the types whose weights these tests make as random blocks (any codes, not only those a quantizer
# writes); tests/test_kquants.py holds them to gguf-py, tests/test_kquantize.py their writers
RUN_ONLY = {"q5_0": 6, "q5_1": 7, "q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13, "q6_k": 14, "iq4_nl": 20,
            "iq4_xs": 23}
ISAS = [i for i in _lib.supported_isas()]


@pytest.fixture(autouse=True)
def restore_isa():
    before = _lib.isa()
    yield
    _lib.set_isa(before)


def ptr(a, t="void *"):
    return ffi.cast(t, a.ctypes.data)


def quantize(x: np.ndarray, type_id: int) -> np.ndarray:
    n = x.size
    nbytes = n // lib.clex_type_block_size(type_id) * lib.clex_type_block_bytes(type_id)
    out = np.zeros(nbytes, np.uint8)
    _lib.check(lib.clex_quantize_row(type_id, ptr(np.ascontiguousarray(x, np.float32), "float *"), ptr(out), n))
    return out


def dequantize(q: np.ndarray, type_id: int, n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    _lib.check(lib.clex_dequantize_row(type_id, ptr(q), ptr(out, "float *"), n))
    return out


def test_block_sizes_match_gguf():
    from gguf.constants import GGML_QUANT_SIZES
    for name, t in {**TYPES, **RUN_ONLY}.items():
        assert (lib.clex_type_block_size(t), lib.clex_type_block_bytes(t)) == GGML_QUANT_SIZES[QT(t)], name
        assert lib.clex_type_supported(t)
    assert not lib.clex_type_supported(16)       # IQ2_XXS: known to GGUF, not run here
    assert not lib.clex_type_supported(9)        # Q8_1: activations only
    assert not lib.clex_type_supported(15)       # Q8_K: activations only


def test_type_table_is_ggmls():
    """The core knows every ggml type id by name and size (one table for C and Python): the ids,
    names and sizes gguf-py has, and nothing for the ids ggml retired or never used."""
    from gguf.constants import GGML_QUANT_SIZES
    for q in QT:
        assert getattr(lib, f"CLEX_TYPE_{q.name}") == q.value, q.name
        assert ffi.string(lib.clex_type_name(q.value)).decode() == q.name
        assert (lib.clex_type_block_size(q.value), lib.clex_type_block_bytes(q.value)) == GGML_QUANT_SIZES[q], q.name
    known = {q.value for q in QT}
    for t in [-1, lib.CLEX_TYPE_COUNT, 99] + [t for t in range(lib.CLEX_TYPE_COUNT) if t not in known]:
        assert lib.clex_type_name(t) == ffi.NULL, t
        assert lib.clex_type_block_size(t) == lib.clex_type_block_bytes(t) == 0, t
    run = [t for t in range(lib.CLEX_TYPE_COUNT) if lib.clex_type_supported(t)]
    assert sorted(run) == sorted([*TYPES.values(), *RUN_ONLY.values()])
    listed = ffi.string(lib.clex_supported_weight_types()).decode()
    assert listed == ", ".join(ffi.string(lib.clex_type_name(t)).decode() for t in run)
    assert [lib.clex_kv_type_supported(t) for t in (0, 1, 2, 8, 30, -1)] == [1, 1, 0, 1, 0, 0]


def test_size_only_types_have_no_conversions():
    """IQ2_XXS is named and sized, but has no conversion here: refused, and the message says so."""
    t = lib.CLEX_TYPE_IQ2_XXS
    x = np.zeros(256, np.float32)
    buf = np.zeros(lib.clex_type_block_bytes(t), np.uint8)
    for rc in (lib.clex_quantize_row(t, ptr(x, "float *"), ptr(buf), 256),
               lib.clex_quantize_act(t, ptr(x, "float *"), ptr(buf), 256),
               lib.clex_dequantize_row(t, ptr(buf), ptr(x, "float *"), 256),
               lib.clex_vec_dot(t, 256, ptr(buf), ptr(buf), ffi.new("float *"))):
        assert rc == lib.CLEX_E_UNSUPPORTED and "IQ2_XXS has no" in _lib.last_error()
    # an activation type has a quantizer but no dot product (Q8_K as Q8_1)
    q8k = np.zeros(292, np.uint8)
    assert lib.clex_vec_dot(15, 256, ptr(q8k), ptr(q8k), ffi.new("float *")) == lib.CLEX_E_UNSUPPORTED
    assert "Q8_K has no dot product" in _lib.last_error()


def test_fp16_conversion_exhaustive():
    halves = np.arange(65536, dtype=np.uint16)
    want = halves.view(np.float16).astype(np.float32)
    got = dequantize(halves.view(np.uint8), TYPES["f16"], 65536)
    ok = np.isnan(want) | (got.view(np.uint32) == want.view(np.uint32))
    assert ok.all() and np.isnan(got[np.isnan(want)]).all()
    # float -> half: random floats across the whole range, subnormals, ties and overflow
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * np.float32(10.0) ** rng.integers(-9, 6, 20000),
        (halves.view(np.float16).astype(np.float32)[:31744] * np.float32(1.0 + 2 ** -11)),  # exact ties
        np.array([65504, 65519.99, 65520, 1e9, -1e9, 2 ** -25, 2 ** -24, 3e-8, 0.0, -0.0], np.float32),
    ]).astype(np.float32)
    got = quantize(x, TYPES["f16"]).view(np.uint16)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    assert (got == want).all()


def test_bf16_conversion():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(10000) * 1e3).astype(np.float32)
    got = quantize(x, TYPES["bf16"])
    want = quants.quantize(x, QT.BF16).reshape(-1)
    assert (got == want).all()


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q4_1"])
def test_reference_quantizers_match_gguf_py(name):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(32 * 512) * 3, np.zeros(64), np.full(32, 7.0),
                        rng.uniform(-1, 1, 32 * 64) * 1e-3]).astype(np.float32)
    got = quantize(x, TYPES[name])
    want = quants.quantize(x.reshape(-1, 32), QT[name.upper()]).reshape(-1)
    assert (got == want).all(), f"{(got != want).sum()} bytes differ"
    # and the dequantizer against gguf-py's
    assert np.array_equal(dequantize(got, TYPES[name], x.size),
                          quants.dequantize(want.reshape(-1, got.size // (x.size // 32)), QT[name.upper()]).reshape(-1))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act", [8, 9, 15])   # Q8_0, Q8_1, Q8_K activations
def test_activation_quantizers_bit_exact(isa, act):
    """The forward pass quantizes activations with the ISA's from_float; it must give the same
    bytes as the reference, including exact .5 ties (roundf rounds half away from zero for
    Q8_0/Q8_1; Q8_K rounds half to even, as ggml's)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(256 * 38).astype(np.float32)
    x[:32] = np.arange(-16, 16) * 0.5      # ties after scaling
    x[32:64] = 0.0
    a = quantize(x, act)                     # the reference quantizer
    _lib.set_isa(isa)
    b = np.zeros_like(a)
    _lib.check(lib.clex_quantize_act(act, ptr(x, "float *"), ptr(b), x.size))
    assert (a == b).all()


def weight_rows(name, rng, rows, n):
    """[rows, n] weights of type `name` as blocks: quantized Gaussians, or (RUN_ONLY types)
    random blocks of the same scale"""
    if name in RUN_ONLY:
        import tinymodel as tm
        return tm.scaled_blocks(QT(RUN_ONLY[name]), rows, n, rng, 1.0).reshape(-1)
    return quantize(rng.standard_normal((rows, n)).astype(np.float32), TYPES[name])


def _dot_case(name, rng, n):
    t = {**TYPES, **RUN_ONLY}[name]
    x = rng.standard_normal(n).astype(np.float32)
    wq = weight_rows(name, rng, 1, n)
    at = lib.clex_type_vec_dot_type(t)
    xq = quantize(x, at) if at != 0 else x
    return t, wq, xq


def _lengths(name):
    """row lengths: odd block counts and a long row, in the type's blocks (32 or 256)"""
    blck = lib.clex_type_block_size({**TYPES, **RUN_ONLY}[name])
    return (32, 64, 96, 576, 4096 + 32 * 3) if blck <= 32 else (256, 768, 4096 + 256 * 3)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(TYPES) + list(RUN_ONLY))
def test_vec_dot_matches_scalar(isa, name):
    rng = np.random.default_rng(4)
    for n in _lengths(name):
        t, wq, xq = _dot_case(name, rng, n)
        out = ffi.new("float *")
        _lib.set_isa("scalar")
        _lib.check(lib.clex_vec_dot(t, n, ptr(wq), ptr(xq), out))
        ref = out[0]
        _lib.set_isa(isa)
        _lib.check(lib.clex_vec_dot(t, n, ptr(wq), ptr(xq), out))
        w = dequantize(wq, t, n).astype(np.float64)
        at = lib.clex_type_vec_dot_type(t)
        x = (dequantize(xq, at, n) if at != 0 else xq).astype(np.float64)
        scale = np.abs(w * x).sum()
        assert abs(out[0] - ref) <= 1e-5 * scale + 1e-6, (isa, name, n, out[0], ref)
        # and the scalar reference is the textbook sum of the dequantized values
        assert abs(ref - (w * x).sum()) <= 1e-5 * scale + 1e-6


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(TYPES) + list(RUN_ONLY))
@pytest.mark.parametrize("nb", [4, 5])
def test_matmul_threads_and_isa(isa, name, nb):
    """The row-blocked multi-threaded product equals the textbook product of the dequantized
    values: 9 tokens take the four-row kernels twice and the one-row kernel once; nb = 5 blocks
    per row is an odd number of blocks (the kernels' tails); K = nb blocks of 32 (128, 160) or
    of 256 (the K-quants' super-blocks)."""
    rng = np.random.default_rng(5)
    N, T = 37, 9
    t = {**TYPES, **RUN_ONLY}[name]
    K = nb * max(32, lib.clex_type_block_size(t))
    Wq = weight_rows(name, rng, N, K)
    X = rng.standard_normal((T, K)).astype(np.float32)
    ct = ffi.new("clex_tensor *", dict(type=t, n_dims=2, data=ptr(Wq), nbytes=Wq.nbytes))
    ct.ne[0], ct.ne[1] = K, N
    _lib.set_isa(isa)
    Y = np.zeros((T, N), np.float32)
    _lib.check(lib.clex_matmul(ct, ptr(X, "float *"), T, ptr(Y, "float *"), 3))
    Wd = dequantize(Wq, t, N * K).reshape(N, K).astype(np.float64)
    at = lib.clex_type_vec_dot_type(t)
    Xd = np.stack([dequantize(quantize(X[i], at), at, K) if at else X[i] for i in range(T)]).astype(np.float64)
    ref = Xd @ Wd.T
    assert np.abs(Y - ref).max() <= 1e-4 * np.abs(ref).max()


def test_bad_arguments_are_errors():
    x = np.zeros(33, np.float32)
    out = np.zeros(64, np.uint8)
    assert lib.clex_quantize_row(8, ptr(x, "float *"), ptr(out), 33) == lib.CLEX_E_INVALID
    assert "block" in _lib.last_error()
    assert lib.clex_quantize_row(12345, ptr(x, "float *"), ptr(out), 32) == lib.CLEX_E_UNSUPPORTED
    assert lib.clex_set_isa(99) == lib.CLEX_E_UNSUPPORTED


def test_isa_selection_env(tmp_path):
    import subprocess
    import sys
    code = "from clexrt.engine import native; print(native.isa())"
    for env, want in (({"CLEXRT_FORCE_SCALAR": "1"}, "scalar"), ({"CLEXRT_ISA": "scalar"}, "scalar")):
        import os
        e = dict(os.environ, **env)
        out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want


# the x86 four-row kernels that run each row through the one-row kernel's operations
# (native/src/arch/x86/x86_k.h): their products are bit for bit the one-row kernel's
X86_SAME_BITS = {"avx2": set(RUN_ONLY) | {"q8_0", "q4_0"}, "avx512": set(RUN_ONLY) | {"q8_0", "q4_0"}}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(TYPES) + list(RUN_ONLY))
def test_four_row_kernel_matches_one_row_kernel(isa, name):
    """Prefill (clex_matmul with 4 tokens: one weight row against four activation rows per pass)
    against the one-row kernel per token (clex_vec_dot), on rows whose block counts take every
    path of the kernels: 31 = 16 + 8 + 4 + 2 + 1 blocks of 32, 18 = 16 + 2 (SmolLM2's 576), or
    3 super-blocks. Within the summation-order tolerance; bit for bit where the kernel says so."""
    rng = np.random.default_rng(6)
    t = {**TYPES, **RUN_ONLY}[name]
    at = lib.clex_type_vec_dot_type(t)
    blck = lib.clex_type_block_size(t)
    N, T = 5, 4
    for nb in ((31, 18) if blck <= 32 else (3,)):
        K = nb * max(32, blck)
        Wq = weight_rows(name, rng, N, K).reshape(N, -1)
        X = rng.standard_normal((T, K)).astype(np.float32)
        ct = ffi.new("clex_tensor *", dict(type=t, n_dims=2, data=ptr(Wq), nbytes=Wq.nbytes))
        ct.ne[0], ct.ne[1] = K, N
        _lib.set_isa(isa)
        Y = np.zeros((T, N), np.float32)
        _lib.check(lib.clex_matmul(ct, ptr(X, "float *"), T, ptr(Y, "float *"), 1))
        one = np.zeros((T, N), np.float32)
        out = ffi.new("float *")
        for i in range(T):
            xq = quantize(X[i], at) if at else X[i]
            for r in range(N):
                _lib.check(lib.clex_vec_dot(t, K, ptr(Wq[r]), ptr(xq), out))
                one[i, r] = out[0]
        scale = np.abs(Y).max() + 1e-30
        assert np.abs(Y - one).max() <= 1e-5 * scale * np.sqrt(K / 32), (isa, name, nb)
        if name in X86_SAME_BITS.get(isa, ()):
            assert np.array_equal(Y.view(np.uint32), one.view(np.uint32)), (isa, name, nb)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_attention_kernels_at_odd_head_dims(tmp_path, isa, kv_type):
    """The attention kernels (scores over a run of keys, weighted sums of values) through the
    forward pass at head dimensions the tiny models do not have: 24 and 40 (odd multiples of 8: a
    vector ends half full), 128 (the widest run kept in registers) and 12 (not a multiple of 8:
    the reference), against the float64 reference with the same KV rounding."""
    import tinymodel as tm
    from clexrt import Model
    for n_embd, n_head in ((96, 4), (80, 2), (256, 2), (48, 4)):
        cfg = tm.tiny_hparams(n_embd=n_embd, n_head=n_head, n_head_kv=n_head // 2 or 1, n_ff=2 * n_embd)
        path = tmp_path / f"d{n_embd // n_head}.gguf"
        tm.write_tiny(path, "f32", cfg)
        ids = np.random.default_rng(8).integers(0, cfg.n_vocab, 37)
        ref = tm.reference_forward(tm.read_weights(str(path)), cfg, ids, kv_f16=kv_type == "f16")
        _lib.set_isa(isa)
        with Model(str(path), n_threads=2, kv_type=kv_type, n_batch=16) as m:
            got = m.logits(ids)
        assert np.abs(got - ref).max() < 1e-3, (isa, kv_type, cfg.head_dim)


# The attention kernels through clex_attn_scores / clex_attn_wsum, per KV cache type, against
# float64 numpy on the rows as stored (gguf-py dequantizes the Q8_0 blocks and the Q8_0 query):
# scores s[p] = scale * q . K[p], sums out + sum_p w[p] V[p]. Head dims: Q8_0's hot 64 and 128,
# odd block counts (96, 160), one block (32) and past the kernels' prepared query (544: the
# reference); f32 and f16 also at an odd multiple of 8 (40). Key counts on both sides of the
# kernels' groups of 4 and 8. Float32 sums of m terms differ from the exact value by at most
# about m * 2^-24 * sum |term|: the bounds below allow (blocks + 4) * 2^-24 for a score (a Q8_0
# integer block sum is exact) and (keys + 3) * 2^-24 for a weighted sum, of the sum of |terms|.
ATTN_DIMS = {"f32": (8, 40, 64, 128), "f16": (8, 40, 64, 128), "q8_0": (32, 64, 96, 128, 160, 544)}
ATTN_KEYS = (1, 3, 4, 7, 8, 9, 17, 70)
EPS32 = 2.0 ** -24


def kv_rows(kv_type, rng, n, D):
    """n cached rows of D values as the cache stores them, and those rows in float64. Q8_0:
    random codes (every byte, -128 included) and scales of varied size and sign, some zero."""
    if kv_type == "q8_0":
        b = rng.integers(0, 256, (n * D // 32, 34), dtype=np.uint8)
        d = (rng.standard_normal(len(b)) * 10.0 ** rng.integers(-4, 1, len(b))).astype(np.float16)
        d[rng.random(len(b)) < 0.05] = 0
        b[:, :2] = d.view(np.uint8).reshape(-1, 2)
        return b, quants.dequantize(b, QT.Q8_0).astype(np.float64).reshape(n, D)
    x = rng.standard_normal((n, D)).astype(np.float32 if kv_type == "f32" else np.float16)
    return x, x.astype(np.float64)


def kv_query(kv_type, rng, D):
    """a query head in the form the cache type's scores take, and in float64"""
    q = rng.standard_normal(D).astype(np.float32)
    if kv_type != "q8_0":
        return q, q.astype(np.float64)
    qb = quants.quantize(q[None, :], QT.Q8_0)
    return qb, quants.dequantize(qb, QT.Q8_0).astype(np.float64).ravel()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_type", list(ATTN_DIMS))
def test_attention_kernels_match_float64(isa, kv_type):
    rng = np.random.default_rng(12)
    t = {"f32": 0, "f16": 1, "q8_0": 8}[kv_type]
    _lib.set_isa(isa)
    for D in ATTN_DIMS[kv_type]:
        blocks = D // 32 if kv_type == "q8_0" else D
        for n in ATTN_KEYS:
            K, Kd = kv_rows(kv_type, rng, n, D)
            q, qd = kv_query(kv_type, rng, D)
            scale = 0.125
            s = np.full(n, np.nan, np.float32)
            _lib.check(lib.clex_attn_scores(t, n, D, ptr(q), ptr(K), scale, ptr(s, "float *")))
            want = scale * (Kd @ qd)
            bound = (blocks + 4) * EPS32 * scale * (np.abs(Kd) @ np.abs(qd)) + 1e-30
            assert (np.abs(s - want) <= bound).all(), (isa, kv_type, D, n, np.abs(s - want).max())
            V, Vd = kv_rows(kv_type, rng, n, D)
            w = rng.random(n).astype(np.float32)
            w[rng.random(n) < 0.2] = 0
            out0 = rng.standard_normal(D).astype(np.float32)
            out = out0.copy()
            _lib.check(lib.clex_attn_wsum(t, n, D, ptr(w, "float *"), ptr(V), ptr(out, "float *")))
            want = out0 + w.astype(np.float64) @ Vd
            bound = (n + 3) * EPS32 * (np.abs(out0) + w @ np.abs(Vd)) + 1e-30
            assert (np.abs(out - want) <= bound).all(), (isa, kv_type, D, n, np.abs(out - want).max())


def test_attention_kernels_reject_bad_arguments():
    f = np.zeros(64, np.float32)
    b = np.zeros(68, np.uint8)
    assert lib.clex_attn_scores(8, 1, 48, ptr(b), ptr(b), 1.0, ptr(f, "float *")) == lib.CLEX_E_INVALID
    assert "whole blocks of 32" in _lib.last_error()
    assert lib.clex_attn_wsum(2, 1, 64, ptr(f, "float *"), ptr(b), ptr(f, "float *")) == lib.CLEX_E_INVALID
    assert lib.clex_attn_scores(0, -1, 8, ptr(f), ptr(f), 1.0, ptr(f, "float *")) == lib.CLEX_E_INVALID
    assert lib.clex_attn_wsum(1, 2, 8, ffi.NULL, ptr(f), ptr(f, "float *")) == lib.CLEX_E_INVALID
    assert lib.clex_attn_scores(8, 0, 64, ffi.NULL, ffi.NULL, 1.0, ffi.NULL) == lib.CLEX_OK   # nothing to do


FFN_KINDS = {"swiglu": 0, "geglu": 1, "gelu": 2}


def _act_reference(kind, g, u):
    """float64: SiLU(g) * u, or GELU's tanh form (gelu_new / gelu_pytorch_tanh) of g, times u if gated"""
    g = g.astype(np.float64)
    if kind == "swiglu":
        y = g / (1.0 + np.exp(-g))
    else:
        y = 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3)))
    return y * u.astype(np.float64) if u is not None else y


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", list(FFN_KINDS))
def test_ffn_activation_matches_float64(isa, kind):
    """Each instruction set's activation (SIMD sets evaluate g * sigmoid(a) with their own exp)
    against numpy's float64 formula, over odd lengths (masked tails), large magnitudes and zeros:
    within a few float32 ulp of the value, plus the float32 tanh form's own cancellation for very
    negative inputs (0.5 g (1 + tanh) loses ~|g| * 2^-24 there)."""
    rng = np.random.default_rng(11)
    _lib.set_isa(isa)
    for n in (1, 7, 8, 15, 16, 17, 100, 1027):
        g = (rng.standard_normal(n) * 4).astype(np.float32)
        g[: min(n, 6)] = np.array([0.0, -0.0, 30.0, -30.0, 100.0, -100.0], np.float32)[: min(n, 6)]
        u = rng.standard_normal(n).astype(np.float32) if kind != "gelu" else None
        want = _act_reference(kind, g, u)
        out = g.copy()
        _lib.check(lib.clex_ffn_act(FFN_KINDS[kind], n, ptr(out, "float *"),
                                    ptr(u, "float *") if u is not None else ffi.NULL))
        scale = np.abs(g.astype(np.float64)) * (np.abs(u) if u is not None else 1.0)
        assert np.all(np.abs(out - want) <= 4e-7 * np.abs(want) + 2e-7 * scale + 1e-30), (n, isa)


def test_ffn_activation_keeps_nan_and_rejects_bad_arguments():
    g = np.array([np.nan, 1.0, np.inf, -np.inf], np.float32)
    u = np.ones(4, np.float32)
    for isa in ISAS:
        _lib.set_isa(isa)
        out = g.copy()
        _lib.check(lib.clex_ffn_act(0, 4, ptr(out, "float *"), ptr(u, "float *")))
        assert np.isnan(out[0]) and out[1] == pytest.approx(1 / (1 + np.exp(-1.0)), rel=1e-6), isa
    assert lib.clex_ffn_act(7, 4, ptr(out, "float *"), ptr(u, "float *")) != 0
    assert lib.clex_ffn_act(0, 4, ptr(out, "float *"), ffi.NULL) != 0    # SwiGLU needs its up row
