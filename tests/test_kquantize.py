"""native/src/kquantize.c: the Q5_0, Q5_1, IQ4_NL, Q2_K..Q6_K and IQ4_XS reference quantizers.

The independent reference is llama.cpp itself: its libggml-base.so's ggml_quantize_chunk (what
llama-quantize calls for every tensor) on the same seeded rows must give the same bytes, without
and with an importance matrix. Where llama.cpp is absent (CI), the recorded golden file
tests/data/kquant_golden.npz (tools/kquantize_check.py --write-golden: inputs, importances and
llama.cpp's bytes) carries the same check. Round-trip quality is measured with gguf-py's
dequantizers, an implementation of the formats independent of both.

kquantize.c is compiled on its own into a small shared library for these tests (the system C
compiler, -O2); once the traits table holds these quantizers, clex_quantize_row is held to it too.
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import kquantize_check as kc  # noqa: E402

TYPES = list(kc.TYPES)
WIDTH = 512
X86 = platform.machine().lower() in ("x86_64", "amd64")

# gguf-py's dequantizers read the blocks back; bounds on the relative RMSE (rms error / rms x)
# of 8 rows of 4096, about 10% above what these quantizers reach (and llama.cpp with them).
RMSE_GAUSSIAN = {"q5_0": 0.047, "q5_1": 0.042, "iq4_nl": 0.084, "q2_K": 0.33, "q3_K": 0.167,
                 "q4_K": 0.079, "q5_K": 0.040, "q6_K": 0.0196, "iq4_xs": 0.085}
RMSE_LAPLACE = {"q5_0": 0.059, "q5_1": 0.049, "iq4_nl": 0.097, "q2_K": 0.38, "q3_K": 0.195,
                "q4_K": 0.093, "q5_K": 0.047, "q6_K": 0.024, "iq4_xs": 0.098}


@pytest.fixture(scope="module")
def kq(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to build native/src/kquantize.c for the test")
    try:
        return kc.build_kquantize(tmp_path_factory.mktemp("kquantize"), cc)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"kquantize.c does not compile:\n{e.stderr}")


@pytest.fixture(scope="module")
def llama():
    path = kc.find_llama_lib()
    if path is None:
        pytest.skip("llama.cpp's libggml-base.so not found ($CLEXRT_LLAMA_LIB, /work/llama/build/bin): "
                    "the live byte-identity check needs a llama.cpp build, which CI does not have; "
                    "test_golden_bytes checks the same on rows recorded from llama.cpp")
    return kc.load_llama(path)


@pytest.fixture(scope="module")
def golden():
    z = np.load(ROOT / "tests" / "data" / "kquant_golden.npz")
    return {k: z[k] for k in z.files}


def rows(dist: str, seed: int, count: int = 2, width: int = WIDTH) -> np.ndarray:
    return np.stack([kc.make_row(dist, seed * 100 + r, width) for r in range(count)])


def differing_rows(a: np.ndarray, b: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero((a != b).any(axis=1))]


# ---------------------------------------------------------------- byte identity with llama.cpp

@pytest.mark.parametrize("name", TYPES)
def test_identical_to_llamacpp(kq, llama, name):
    """Every distribution (gaussian, heavy-tailed, positive / negative only, all-equal rows and
    blocks, zeros, tiny, subnormal and huge magnitudes, one outlier, per-block magnitudes, sparse,
    values on a grid), 2 seeds x 2 rows of 512, plain and with an importance matrix."""
    bad = []
    for seed in range(2):
        imp = kc.make_imatrix(seed, WIDTH)
        for dist in kc.DISTS:
            if not X86 and dist == "subnormal" and name in ("q5_0", "q5_1"):
                continue   # ggml's float -> int cast of an overflowed inverse scale is x86's here
            x = rows(dist, seed)
            for w in (None, imp):
                d = differing_rows(kc.quantize_clex(kq, name, x, w), kc.quantize_llama(llama, name, x, w))
                if d:
                    bad.append((dist, seed, "imatrix" if w is not None else "plain", d))
    assert not bad, f"{name}: rows differing from llama.cpp: {bad}"


def test_identical_to_llamacpp_wide_rows(kq, llama):
    """Rows of 4096 with a realistic spread (per-block magnitudes, heavy tails), many rows in one call."""
    x = np.concatenate([rows("blocky", 7, 6, 4096), rows("heavy_t2", 7, 6, 4096)])
    imp = kc.make_imatrix(7, 4096)
    for name in TYPES:
        for w in (None, imp):
            assert not differing_rows(kc.quantize_clex(kq, name, x, w), kc.quantize_llama(llama, name, x, w)), name


@pytest.mark.skipif(not X86, reason="NaN and Inf codes follow x86-64's float -> int conversion, as llama.cpp's do there")
def test_identical_to_llamacpp_nonfinite(kq, llama):
    """Rows no model should hold (Inf, NaN, values near FLT_MAX) still give llama.cpp's bytes."""
    i = np.arange(WIDTH)
    x = np.stack([np.full(WIDTH, 3e38), np.where(i % 7 == 0, np.inf, 1.0), np.where(i % 5 == 0, np.nan, -2.0),
                  np.where(i == 3, -np.inf, 0.0), rows("gaussian", 9, 1)[0] * 1e37]).astype(np.float32)
    imp = kc.make_imatrix(9, WIDTH)
    for name in TYPES:
        for w in (None, imp):
            assert not differing_rows(kc.quantize_clex(kq, name, x, w), kc.quantize_llama(llama, name, x, w)), name


# ---------------------------------------------------------------- the golden file (no llama.cpp needed)

def test_golden_file_describes_itself(golden):
    meta = json.loads(str(golden["meta"]))
    assert meta["types"] == TYPES and meta["dists"] == list(kc.DISTS)
    assert golden["x"].shape == (len(kc.DISTS), meta["n_per_row"])
    assert meta["ggml_version"] and meta["library_sha256"] and "ggml_quantize_chunk" in meta["function"]
    for name in TYPES:
        assert golden[name].shape == (len(kc.DISTS), kc.row_bytes(name, meta["n_per_row"]))


@pytest.mark.parametrize("name", TYPES)
def test_golden_bytes(kq, golden, name):
    x, imp = golden["x"], golden["imatrix"]
    dists = json.loads(str(golden["meta"]))["dists"]
    plain = differing_rows(kc.quantize_clex(kq, name, x), golden[name])
    weighted = differing_rows(kc.quantize_clex(kq, name, x, imp), golden[name + "_imat"])
    assert not plain and not weighted, (name, [dists[i] for i in plain], [dists[i] for i in weighted])


def test_golden_inputs_are_the_generators(golden):
    """The recorded inputs are what tools/kquantize_check.py generates (so it can re-record them).
    numpy keeps its generators' streams only within a version, so this holds under the recorder's."""
    recorded = json.loads(str(golden["meta"]))["numpy"]
    if recorded.split(".")[:2] != np.__version__.split(".")[:2]:
        pytest.skip(f"golden inputs drawn with numpy {recorded}, this is {np.__version__}")
    x, imp = kc.golden_inputs()
    assert np.array_equal(x, golden["x"]) and np.array_equal(imp, golden["imatrix"])


# ---------------------------------------------------------------- entry points

@pytest.mark.parametrize("name", TYPES)
def test_imat_entry_without_importances_is_the_reference(kq, name):
    x = np.concatenate([rows("gaussian", 3), rows("outlier", 3), rows("zeros", 3)])
    assert np.array_equal(kc.quantize_clex(kq, name, x), kc.quantize_clex(kq, name, x, None, use_imat_entry=True))


@pytest.mark.parametrize("name", TYPES)
def test_rows_are_independent(kq, name):
    """Many rows in one call give each row's own bytes (so rows may be split across threads)."""
    x = np.concatenate([rows("blocky", 4, 3), rows("laplace", 4, 3)])
    imp = kc.make_imatrix(4, WIDTH)
    for w in (None, imp):
        whole = kc.quantize_clex(kq, name, x, w)
        for r in range(x.shape[0]):
            assert np.array_equal(whole[r], kc.quantize_clex(kq, name, x[r:r + 1], w)[0]), (name, r)


def test_uniform_importances_change_only_the_search(kq):
    """A constant importance vector is a valid imatrix: the blocks differ from the plain search
    (ggml's weighted search is another algorithm) but stay as accurate."""
    x = rows("gaussian", 5, 4, 4096)
    one = np.ones(4096, np.float32)
    for name in TYPES:
        a = _rel_rmse(kq, name, x, None)
        b = _rel_rmse(kq, name, x, one)
        assert b < a * 1.15, (name, a, b)


# ---------------------------------------------------------------- round trip (gguf-py's dequantizers)

def _dequantize(name: str, q: np.ndarray, shape) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    return dequantize(q, GGMLQuantizationType(kc.TYPES[name][0])).reshape(shape).astype(np.float64)


def _rel_rmse(kq, name, x, imp, weights=None):
    y = _dequantize(name, kc.quantize_clex(kq, name, x, imp), x.shape)
    w = np.ones(x.shape[1]) if weights is None else weights
    return float(np.sqrt(np.sum(w * (y - x) ** 2) / np.sum(w * x.astype(np.float64) ** 2)))


@pytest.mark.parametrize("name", TYPES)
def test_round_trip_rmse(kq, name):
    for dist, bounds in (("gaussian", RMSE_GAUSSIAN), ("laplace", RMSE_LAPLACE)):
        err = _rel_rmse(kq, name, rows(dist, 11, 8, 4096), None)
        assert err < bounds[name], (name, dist, err)


def test_more_bits_less_error(kq):
    x = rows("gaussian", 12, 4, 4096)
    errs = [_rel_rmse(kq, t, x, None) for t in ("q2_K", "q3_K", "q4_K", "q5_K", "q6_K")]
    assert errs == sorted(errs, reverse=True), errs
    assert _rel_rmse(kq, "q5_1", x, None) < _rel_rmse(kq, "iq4_nl", x, None)


@pytest.mark.parametrize("name", TYPES)
def test_importances_lower_the_weighted_error(kq, name):
    """With an importance matrix, the importance-weighted error is lower than without one."""
    x = rows("gaussian", 13, 8, 4096)
    imp = kc.make_imatrix(13, 4096)
    plain = _rel_rmse(kq, name, x, None, imp)
    weighted = _rel_rmse(kq, name, x, imp, imp)
    assert weighted < plain * 0.97, (name, plain, weighted)


@pytest.mark.parametrize("name", TYPES)
def test_exact_cases(kq, name):
    """Zeros come back as zeros; an all-equal row (and all-equal blocks) come back within the
    fp16 rounding of its scales; tiny magnitudes (below fp16's range) come back as zeros."""
    for dist, tol in (("zeros", 0.0), ("equal", 2e-3), ("tiny", 0.0)):
        x = rows(dist, 14, 2, 1024)
        y = _dequantize(name, kc.quantize_clex(kq, name, x), x.shape)
        scale = np.abs(x).max() if dist != "tiny" else 1.0
        assert np.abs(y - (0 if dist == "tiny" else x)).max() <= tol * scale, (name, dist)


# ---------------------------------------------------------------- the traits table, once wired

@pytest.mark.parametrize("name", TYPES)
def test_clex_quantize_row_is_kquantize(kq, name):
    try:
        from clexrt._native import ffi, lib
    except ImportError:
        pytest.skip("clexrt._native is not built (make install)")
    tid = kc.TYPES[name][0]
    x = np.concatenate([rows("blocky", 15), rows("outlier", 15), rows("zeros", 15)])
    dst = np.zeros(kc.row_bytes(name, x.size) + 64, np.uint8)
    rc = lib.clex_quantize_row(tid, ffi.cast("const float *", x.ctypes.data), ffi.cast("void *", dst.ctypes.data),
                               x.size)
    if rc != 0:
        pytest.skip(f"{name} has no quantizer in this build's traits table yet")
    ours = kc.quantize_clex(kq, name, x).reshape(-1)
    assert np.array_equal(dst[: ours.size], ours) and not dst[ours.size:].any()
