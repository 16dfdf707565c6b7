"""The four-weight-row kernels of decoding (internal.h vec_dot4w: four consecutive weight rows
against one activation row) against the same instruction set's one-row kernel, bit for bit per
row, and against the scalar reference within test_kernels.py's summation-order tolerance; and
clex_matmul with one token (the decoding path: rows in fours, the rest one by one) against the
one-row kernel, bit for bit."""
import os
import platform

import numpy as np
import pytest

from clexrt.engine import native as _lib
from clexrt.engine.native import ffi, lib

from test_kernels import RUN_ONLY, TYPES, dequantize, ptr, quantize, weight_rows

ALL = {**TYPES, **RUN_ONLY}
# where each instruction set has four-weight-row kernels (a missing one is a failure: the set
# lost its kernel); AVX-512's only on a CPU with VNNI (without it its one-row kernels differ)
HAVE = {
    "avx512": {"q4_0", "q4_k", "q6_k", "q5_0", "q5_k", "q8_0", "q4_1"},
    "avx2": {"q4_0", "q4_k", "q6_k", "q5_k"},
}
ISAS = [i for i in _lib.supported_isas() if i in HAVE]


def _vnni():
    try:
        return "avx512_vnni" in open("/proc/cpuinfo").read()
    except OSError:
        return False


def expected(isa):
    if isa == "avx512" and not _vnni():
        return set()
    return HAVE[isa]


def _blocks(name):
    """row lengths in values: odd block counts and every remainder path of the kernels' groups
    (blocks of 32: groups of 16, then 8, 4, 2, 1), and a row as long as SmolLM2's FFN"""
    blck = lib.clex_type_block_size(ALL[name])
    if blck <= 32:
        return [32 * nb for nb in (1, 2, 3, 5, 7, 18, 31, 33, 48)]
    return [256 * nb for nb in (1, 2, 3, 6)]


def _case(name, rng, n):
    t = ALL[name]
    at = lib.clex_type_vec_dot_type(t)
    wq = weight_rows(name, rng, 4, n).reshape(4, -1)
    x = rng.standard_normal(n).astype(np.float32)
    xq = quantize(x, at) if at else x
    return t, at, wq, xq


def _dot4w(t, n, wq, xq):
    out = np.full(4, np.nan, np.float32)
    rc = lib.clex_vec_dot4w(t, n, ptr(wq), wq.strides[0], ptr(xq), ptr(out, "float *"))
    return rc, out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(ALL))
def test_dot4w_equals_one_row_kernel(isa, name):
    rng = np.random.default_rng(40)
    _lib.set_isa(isa)
    for n in _blocks(name):
        t, at, wq, xq = _case(name, rng, n)
        rc, got = _dot4w(t, n, wq, xq)
        if name not in expected(isa):
            assert rc == lib.CLEX_E_UNSUPPORTED, (isa, name)
            return
        _lib.check(rc)
        one = np.zeros(4, np.float32)
        out = ffi.new("float *")
        for r in range(4):
            _lib.check(lib.clex_vec_dot(t, n, ptr(wq[r]), ptr(xq), out))
            one[r] = out[0]
        assert np.array_equal(got.view(np.uint32), one.view(np.uint32)), (isa, name, n, got, one)
        # and the scalar reference, within the summation-order tolerance
        _lib.set_isa("scalar")
        x = (dequantize(xq, at, n) if at else xq).astype(np.float64)
        for r in range(4):
            _lib.check(lib.clex_vec_dot(t, n, ptr(wq[r]), ptr(xq), out))
            w = dequantize(wq[r], t, n).astype(np.float64)
            assert abs(got[r] - out[0]) <= 1e-5 * np.abs(w * x).sum() + 1e-6, (isa, name, n, r)
        _lib.set_isa(isa)


def test_dot4w_rows_are_independent():
    """each sum reads its own row only: a row of zeros among random ones gives 0 there and the
    others unchanged (a kernel that mixed rows or strides would fail)"""
    rng = np.random.default_rng(41)
    for isa in ISAS:
        _lib.set_isa(isa)
        for name in sorted(expected(isa)):
            n = _blocks(name)[2]
            t, at, wq, xq = _case(name, rng, n)
            _lib.check(_dot4w(t, n, wq, xq)[0])
            before = _dot4w(t, n, wq, xq)[1]
            z = wq.copy()
            z[2] = weight_rows(name, np.random.default_rng(0), 1, n) * 0   # all-zero blocks: d = 0
            after = _dot4w(t, n, z, xq)[1]
            assert after[2] == 0.0 and np.array_equal(after[[0, 1, 3]], before[[0, 1, 3]]), (isa, name)


def test_dot4w_rejects_bad_arguments():
    buf = np.zeros(64, np.uint8)
    out = np.zeros(4, np.float32)
    assert lib.clex_vec_dot4w(12345, 32, ptr(buf), 18, ptr(buf), ptr(out, "float *")) == lib.CLEX_E_UNSUPPORTED
    _lib.set_isa("scalar")   # the scalar set has none: decoding takes one row at a time
    assert lib.clex_vec_dot4w(2, 32, ptr(buf), 18, ptr(buf), ptr(out, "float *")) == lib.CLEX_E_UNSUPPORTED
    assert "four-weight-row" in _lib.last_error()
    for isa in ISAS:
        _lib.set_isa(isa)
        if "q4_0" in expected(isa):
            assert lib.clex_vec_dot4w(2, 33, ptr(buf), 18, ptr(buf), ptr(out, "float *")) == lib.CLEX_E_INVALID


@pytest.fixture
def restore_rows():
    before = (_lib.decode_rows4_bytes(), _lib.decode_prefetch_bytes(), _lib.decode_prefetch_long_bytes(),
              _lib.decode_quarters(), _lib.decode_prefetch_page_bytes())
    yield
    _lib.set_decode_rows4_bytes(before[0])
    _lib.set_decode_prefetch_bytes(before[1])
    _lib.set_decode_prefetch_long_bytes(before[2])
    _lib.set_decode_quarters(before[3])
    _lib.set_decode_prefetch_page_bytes(before[4])


# prefetch: (short rows' distance, long rows' distance, bytes of each page the long rows ask for)
@pytest.mark.parametrize("rows4_bytes,prefetch,quarters", [(-1, (4096, 4096, 0), 0), (0, (0, 0, 512), 0),
                                                           (512, (4096, 1024, 512), 0), (-1, (0, 64, 64), 0),
                                                           (-1, (4096, 1024, 512), 1), (-1, (0, 0, 0), 1),
                                                           (512, (64, 4096, 4096), 1), (-1, (64, 8192, 100), 1)])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", ["q4_0", "q8_0", "q4_k", "q6_k", "q5_0", "q5_k", "q4_1"])
def test_one_token_matmul_equals_one_row_kernel(isa, name, rows4_bytes, prefetch, quarters, restore_rows):
    """clex_matmul with one token, as decoding runs it (rows in blocks of 16, four at a time where
    decoding takes four, side by side or a quarter of a thread's rows apart, the rest one by one;
    3 threads split the rows unevenly, 39 and 77 rows leave 0-3 over): every output bit for bit the
    one-row kernel's, whether every row, none or the short ones go in fours, with the weights
    prefetched or not, every line or a page's first bytes"""
    _lib.set_decode_rows4_bytes(rows4_bytes)
    _lib.set_decode_prefetch_bytes(prefetch[0])
    _lib.set_decode_prefetch_long_bytes(prefetch[1])
    _lib.set_decode_prefetch_page_bytes(prefetch[2])
    _lib.set_decode_quarters(quarters)
    rng = np.random.default_rng(42)
    t = ALL[name]
    at = lib.clex_type_vec_dot_type(t)
    for N, K in ((39, _blocks(name)[3]), (39, _blocks(name)[-1]), (77, _blocks(name)[1])):
        Wq = weight_rows(name, rng, N, K).reshape(N, -1)
        X = rng.standard_normal((1, K)).astype(np.float32)
        ct = ffi.new("clex_tensor *", dict(type=t, n_dims=2, data=ptr(Wq), nbytes=Wq.nbytes))
        ct.ne[0], ct.ne[1] = K, N
        _lib.set_isa(isa)
        Y = np.zeros((1, N), np.float32)
        _lib.check(lib.clex_matmul(ct, ptr(X, "float *"), 1, ptr(Y, "float *"), 3))
        xq = quantize(X[0], at) if at else X[0]
        out = ffi.new("float *")
        one = np.zeros(N, np.float32)
        for r in range(N):
            _lib.check(lib.clex_vec_dot(t, K, ptr(Wq[r]), ptr(xq), out))
            one[r] = out[0]
        assert np.array_equal(Y[0].view(np.uint32), one.view(np.uint32)), (isa, name, K)


def _at_startup(expr, prefix, cases):
    """{key: the integers a fresh interpreter prints for native.<expr>} with each case's environment
    variables set and every other CLEXRT_DECODE_<prefix>* variable unset"""
    import subprocess
    import sys
    code = f"from clexrt.engine import native; print({expr})"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEXRT_DECODE_" + prefix)}
    return {key: tuple(int(v) for v in subprocess.run([sys.executable, "-c", code], env=dict(env, **extra),
                                                     capture_output=True, text=True, check=True).stdout.split())
            for key, extra in cases.items()}


def _amd():
    """an AMD x86 CPU, where core.c's decode policies differ"""
    x86 = platform.machine() in ("x86_64", "AMD64", "i686")
    return x86 and os.path.exists("/proc/cpuinfo") and "AuthenticAMD" in open("/proc/cpuinfo").read()


def test_decode_rows4_bytes_from_the_environment():
    """CLEXRT_DECODE_ROWS4_MAX=<bytes> decides at start-up which rows decoding takes four at a time;
    without it (or with a value that is not an integer >= -1), every row except on AMD's CPUs,
    where rows up to 512 bytes (core.c's measurements); the setter refuses below -1"""
    got = _at_startup("native.decode_rows4_bytes()", "ROWS4",
                      {v: ({"CLEXRT_DECODE_ROWS4_MAX": v} if v else {}) for v in ("0", "-1", "700", "x", "-2", None)})
    default = (512,) if _amd() else (-1,)
    assert (got["0"], got["-1"], got["700"]) == ((0,), (-1,), (700,))
    assert got[None] == got["x"] == got["-2"] == default
    assert lib.clex_set_decode_rows4_bytes(-2) == lib.CLEX_E_INVALID


def test_decode_prefetch_from_the_environment():
    """CLEXRT_DECODE_PREFETCH=<bytes> sets decoding's weight prefetch distances (short rows', long
    rows') at start-up, CLEXRT_DECODE_PREFETCH_LONG=<bytes> then the long rows' alone; without them
    (or with a value that is not an integer >= 0), 4096 and 1024 bytes, except 0 and 0 on AMD's
    CPUs; the setters refuse below 0, and the short one sets both"""
    cases = {"0": {"CLEXRT_DECODE_PREFETCH": "0"}, "8192": {"CLEXRT_DECODE_PREFETCH": "8192"},
             "-1": {"CLEXRT_DECODE_PREFETCH": "-1"}, "4k": {"CLEXRT_DECODE_PREFETCH": "4k"}, None: {},
             "both": {"CLEXRT_DECODE_PREFETCH": "2048", "CLEXRT_DECODE_PREFETCH_LONG": "512"},
             "long": {"CLEXRT_DECODE_PREFETCH_LONG": "256"}, "badlong": {"CLEXRT_DECODE_PREFETCH_LONG": "x"}}
    got = _at_startup("native.decode_prefetch_bytes(), native.decode_prefetch_long_bytes()", "PREFETCH", cases)
    default = (0, 0) if _amd() else (4096, 1024)
    assert (got["0"], got["8192"], got["both"]) == ((0, 0), (8192, 8192), (2048, 512))
    assert got[None] == got["-1"] == got["4k"] == got["badlong"] == default
    assert got["long"] == (default[0], 256)
    assert lib.clex_set_decode_prefetch_bytes(-1) == lib.CLEX_E_INVALID
    assert lib.clex_set_decode_prefetch_long_bytes(-1) == lib.CLEX_E_INVALID
    before = _lib.decode_prefetch_bytes(), _lib.decode_prefetch_long_bytes()
    try:
        _lib.set_decode_prefetch_bytes(300)
        assert (_lib.decode_prefetch_bytes(), _lib.decode_prefetch_long_bytes()) == (300, 300)
        _lib.set_decode_prefetch_long_bytes(100)
        assert (_lib.decode_prefetch_bytes(), _lib.decode_prefetch_long_bytes()) == (300, 100)
    finally:
        _lib.set_decode_prefetch_bytes(before[0])
        _lib.set_decode_prefetch_long_bytes(before[1])


def test_decode_prefetch_page_from_the_environment():
    """CLEXRT_DECODE_PREFETCH_PAGE=<bytes> sets at start-up how much of each 4 KiB page a long row's
    prefetch asks for (0: every line); without it (or with a value that is not an integer >= 0),
    the first 512 bytes; the setter refuses below 0 and leaves the distances alone"""
    cases = {v: ({"CLEXRT_DECODE_PREFETCH_PAGE": v} if v else {}) for v in ("0", "1024", "-5", "1k", None)}
    got = _at_startup("native.decode_prefetch_page_bytes()", "PREFETCH", cases)
    assert (got["0"], got["1024"]) == ((0,), (1024,))
    assert got[None] == got["-5"] == got["1k"] == (512,)
    assert lib.clex_set_decode_prefetch_page_bytes(-1) == lib.CLEX_E_INVALID
    assert "page" in _lib.last_error()
    before = _lib.decode_prefetch_page_bytes(), _lib.decode_prefetch_bytes(), _lib.decode_prefetch_long_bytes()
    try:
        _lib.set_decode_prefetch_page_bytes(256)
        assert (_lib.decode_prefetch_page_bytes(), _lib.decode_prefetch_bytes(),
                _lib.decode_prefetch_long_bytes()) == (256,) + before[1:]
    finally:
        _lib.set_decode_prefetch_page_bytes(before[0])


def test_decode_quarters_from_the_environment():
    """CLEXRT_DECODE_QUARTERS=0|1 decides at start-up whether decoding's four rows per call lie a
    quarter of a thread's rows apart; without it (or with another value), yes except on AMD's CPUs
    (core.c's measurements); the setter takes 0 and 1 only"""
    got = _at_startup("int(native.decode_quarters())", "QUARTERS",
                      {v: ({"CLEXRT_DECODE_QUARTERS": v} if v else {}) for v in ("0", "1", "2", "-1", "yes", None)})
    default = (0,) if _amd() else (1,)
    assert (got["0"], got["1"]) == ((0,), (1,))
    assert got[None] == got["2"] == got["-1"] == got["yes"] == default
    for bad in (-1, 2):
        assert lib.clex_set_decode_quarters(bad) == lib.CLEX_E_INVALID
        assert "decode quarters must be 0 or 1" in _lib.last_error()
    before = _lib.decode_quarters()
    try:
        _lib.set_decode_quarters(not before)
        assert _lib.decode_quarters() == (not before)
    finally:
        _lib.set_decode_quarters(before)
