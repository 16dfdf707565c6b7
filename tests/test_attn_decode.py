"""Decoding's attention kernels: the GQA-group forms of the scores and weighted sums (one pass over
a run of keys for all the query heads of a KV head) and the softmax step, on every instruction set
this CPU runs.

References: float64 numpy on the rows as stored (gguf-py dequantizes Q8_0 blocks and the Q8_0
query), and, bit for bit, the per-head kernel of the same instruction set (clex_attn_scores /
clex_attn_wsum) for each head of the group, which is what decoding took before and what the
group kernels claim to reproduce. Shapes: head dims 64 and 128 (the hot ones), 80 and 96 (a last
vector half full; Q8_0: an odd block count at 96), 40 for f32/f16 (odd multiple of 8) and 12 (not a
multiple of 8: the reference); groups of 1 to 8 heads (the kernels take four at a time, six as two
threes); key counts on both sides of the kernels' groups of 8 and of the softmax's 16 and 32."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

from clexrt.engine import native as _lib
from clexrt.engine.native import ffi, lib

ISAS = list(_lib.supported_isas())
TYPES = {"f32": 0, "f16": 1, "q8_0": 8}
DIMS = {"f32": (12, 40, 64, 80, 128), "f16": (12, 40, 64, 96, 128), "q8_0": (32, 64, 96, 128)}
GROUPS = (1, 3, 4, 6, 8)
KEYS = (1, 7, 8, 13, 33, 70)
EPS32 = 2.0 ** -24


@pytest.fixture(autouse=True)
def restore_isa():
    before = _lib.isa()
    yield
    _lib.set_isa(before)


def ptr(a, t="void *"):
    return ffi.cast(t, a.ctypes.data)


def rows(kv_type, rng, n, D):
    """n rows of D as the cache stores them, and in float64 (Q8_0: random codes and scales)"""
    if kv_type == "q8_0":
        b = rng.integers(0, 256, (n * D // 32, 34), dtype=np.uint8)
        d = (rng.standard_normal(len(b)) * 10.0 ** rng.integers(-3, 1, len(b))).astype(np.float16)
        b[:, :2] = d.view(np.uint8).reshape(-1, 2)
        return b, quants.dequantize(b, QT.Q8_0).astype(np.float64).reshape(n, D)
    x = rng.standard_normal((n, D)).astype(np.float32 if kv_type == "f32" else np.float16)
    return x, x.astype(np.float64)


def queries(kv_type, rng, g, D):
    """g query heads in the scores' query form (contiguous), and in float64 [g, D]"""
    q = rng.standard_normal((g, D)).astype(np.float32)
    if kv_type != "q8_0":
        return q, q.astype(np.float64)
    qb = quants.quantize(q, QT.Q8_0)
    return np.ascontiguousarray(qb), quants.dequantize(qb, QT.Q8_0).astype(np.float64).reshape(g, D)


def per_head_scores(t, n, D, q, K, scale, g):
    row = q.reshape(g, -1)
    out = np.empty((g, n), np.float32)
    for j in range(g):
        qj = np.ascontiguousarray(row[j])
        _lib.check(lib.clex_attn_scores(t, n, D, ptr(qj), ptr(K), scale, ptr(out[j], "float *")))
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_type", list(TYPES))
def test_group_scores(isa, kv_type):
    rng = np.random.default_rng(3)
    t = TYPES[kv_type]
    _lib.set_isa(isa)
    for D in DIMS[kv_type]:
        blocks = D // 32 if kv_type == "q8_0" else D
        for g in GROUPS:
            for n in KEYS:
                K, Kd = rows(kv_type, rng, n, D)
                q, qd = queries(kv_type, rng, g, D)
                scale = 0.125
                s = np.full((g, n), np.nan, np.float32)
                _lib.check(lib.clex_attn_group_scores(t, g, n, D, ptr(q), ptr(K), scale, ptr(s, "float *")))
                want = scale * (qd @ Kd.T)
                bound = (blocks + 4) * EPS32 * scale * (np.abs(qd) @ np.abs(Kd).T) + 1e-30
                assert (np.abs(s - want) <= bound).all(), (isa, kv_type, D, g, n, np.abs(s - want).max())
                one = per_head_scores(t, n, D, q, K, scale, g)
                assert np.array_equal(s.view(np.uint32), one.view(np.uint32)), (isa, kv_type, D, g, n)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_type", list(TYPES))
def test_group_wsum(isa, kv_type):
    rng = np.random.default_rng(4)
    t = TYPES[kv_type]
    _lib.set_isa(isa)
    for D in DIMS[kv_type]:
        for g in GROUPS:
            for n in KEYS:
                V, Vd = rows(kv_type, rng, n, D)
                w = rng.random((g, n)).astype(np.float32)
                w[rng.random((g, n)) < 0.2] = 0
                stride = D + 2   # decoding's partial results: (max, sum, D values) per chunk
                out0 = rng.standard_normal((g, stride)).astype(np.float32)
                out = out0.copy()
                _lib.check(lib.clex_attn_group_wsum(t, g, n, D, ptr(w, "float *"), ptr(V), ptr(out, "float *"),
                                                    stride))
                want = out0[:, :D] + w.astype(np.float64) @ Vd
                bound = (n + 3) * EPS32 * (np.abs(out0[:, :D]) + w @ np.abs(Vd)) + 1e-30
                assert (np.abs(out[:, :D] - want) <= bound).all(), (isa, kv_type, D, g, n)
                assert np.array_equal(out[:, D:], out0[:, D:]), "wrote past a head's D values"
                for j in range(g):
                    one = out0[j, :D].copy()
                    wj = np.ascontiguousarray(w[j])
                    _lib.check(lib.clex_attn_wsum(t, n, D, ptr(wj, "float *"), ptr(V), ptr(one, "float *")))
                    assert np.array_equal(out[j, :D].view(np.uint32), one.view(np.uint32)), (isa, kv_type, D, g, n, j)


# e^x in float32 (expf, or the SIMD kernels' own polynomial) of s - max rounded to float32: within
# 4 ulp of float64 exp of that difference; the sum, of the float32 values accumulated in double,
# within 1e-12 relative of their float64 sum; normalised weights within 6 ulp; values below
# 1e-37 (subnormal, or flushed to 0 below e^-87) count as 0.
@pytest.mark.parametrize("isa", ISAS)
def test_softmax(isa):
    rng = np.random.default_rng(5)
    _lib.set_isa(isa)
    for n in (1, 5, 15, 16, 17, 31, 32, 33, 100, 4099):
        for spread in (0.1, 5.0, 60.0):
            s0 = (rng.standard_normal(n) * spread).astype(np.float32)
            for normalize in (0, 1):
                s = s0.copy()
                mx, sm = ffi.new("float *"), ffi.new("double *")
                _lib.check(lib.clex_attn_softmax(n, ptr(s, "float *"), normalize, mx, sm))
                assert mx[0] == s0.max()
                e = np.exp((s0 - s0.max()).astype(np.float64))   # the difference rounds in float32 there too
                if normalize:
                    e_got = s.astype(np.float64) * sm[0]
                    want = e / e.sum()
                    assert np.all(np.abs(s - want) <= 6 * EPS32 * want + 1e-37), (isa, n, spread)
                else:
                    e_got = s.astype(np.float64)
                    assert abs(sm[0] - e_got.sum()) <= 1e-12 * e_got.sum(), (isa, n, spread)
                assert np.all(np.abs(e_got - e) <= 4 * EPS32 * e + 1e-37), (isa, n, spread, np.abs(e_got - e).max())


def test_softmax_keeps_nan():
    for isa in ISAS:
        _lib.set_isa(isa)
        s = np.arange(40, dtype=np.float32)
        s[21] = np.nan
        mx, sm = ffi.new("float *"), ffi.new("double *")
        _lib.check(lib.clex_attn_softmax(40, ptr(s, "float *"), 1, mx, sm))
        assert np.isnan(sm[0]) and np.isnan(s[21]), isa


def test_group_kernels_reject_bad_arguments():
    f = np.zeros(256, np.float32)
    assert lib.clex_attn_group_scores(0, 0, 4, 8, ptr(f), ptr(f), 1.0, ptr(f, "float *")) == lib.CLEX_E_INVALID
    assert lib.clex_attn_group_wsum(0, 2, 4, 8, ptr(f, "float *"), ptr(f), ptr(f, "float *"), 7) == lib.CLEX_E_INVALID
    assert lib.clex_attn_group_scores(8, 2, 1, 48, ptr(f), ptr(f), 1.0, ptr(f, "float *")) == lib.CLEX_E_INVALID
    assert lib.clex_attn_softmax(0, ptr(f, "float *"), 0, ffi.new("float *"), ffi.new("double *")) == lib.CLEX_E_INVALID


@pytest.mark.parametrize("kv_type", ["f32", "q8_0"])
def test_decode_is_the_same_bits_whatever_the_threads(tmp_path, kv_type):
    """Decoding shares the KV heads out among the threads in ways that depend on their number
    (3 KV heads among 1 to 4 threads): each thread count gives every logit bit for bit while a
    head's keys are not split. From 128 keys on they are split into chunks whose partial sums are
    combined (a different order of summation), and then the logits agree to float rounding."""
    import tinymodel as tm
    from clexrt.engine.model import Model

    path = tmp_path / "gqa3.gguf"
    tm.write_tiny(path, "f32", cfg=tm.tiny_hparams(n_embd=192, n_head=6, n_head_kv=3, n_ff=256))
    ids = [5, 17, 3, 88, 41, 2, 60, 9, 33, 71] * 16
    runs = {}
    for threads in (1, 2, 3, 4):
        with Model(str(path), n_threads=threads, kv_type=kv_type) as m:
            runs[threads] = [m.eval([t]).copy() for t in ids]
    for threads in (2, 3, 4):
        for pos, (a, b) in enumerate(zip(runs[1], runs[threads])):
            if pos < 127:
                np.testing.assert_array_equal(a, b, err_msg=f"{threads} threads, position {pos}")
            else:
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=f"{threads} threads, position {pos}")
