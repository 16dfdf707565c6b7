"""Hold native/src/kquantize.c to llama.cpp's own quantizers, byte for byte, and record the golden
file that lets tests/test_kquantize.py check the same on a machine without llama.cpp.

    python tools/kquantize_check.py [--lib PATH/libggml-base.so] [--seeds N] [--rows R] [--width W]
    python tools/kquantize_check.py --write-golden [-o tests/data/kquant_golden.npz]

The first form quantizes seeded rows of every distribution in DISTS with every type in TYPES,
without and with an importance matrix, through both kquantize.c (compiled here into a small
shared library with the system C compiler) and llama.cpp's ggml_quantize_chunk (the function
llama-quantize calls for each tensor), and reports any row whose bytes differ. The second form
writes the inputs (one row per distribution), the importance vector and llama.cpp's bytes for
each type, with how they were made (library path and sha256, ggml version and commit) as JSON
in the npz's "meta" entry.

llama.cpp's libggml-base.so: --lib, else $CLEXRT_LLAMA_LIB, else /work/llama/build/bin.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KQ_SOURCE = ROOT / "native" / "src" / "kquantize.c"
GOLDEN = ROOT / "tests" / "data" / "kquant_golden.npz"
DEFAULT_LIBS = [Path("/work/llama/build/bin/libggml-base.so")]

# name: (ggml type id, values per block, bytes per block); the C entry points are
# clex_quantize_<name>_ref and clex_quantize_<name>_imat.
TYPES = {
    "q5_0": (6, 32, 22),
    "q5_1": (7, 32, 24),
    "iq4_nl": (20, 32, 18),
    "q2_K": (10, 256, 84),
    "q3_K": (11, 256, 110),
    "q4_K": (12, 256, 144),
    "q5_K": (13, 256, 176),
    "q6_K": (14, 256, 210),
    "iq4_xs": (23, 256, 136),
}


def row_bytes(name: str, n: int) -> int:
    _, blck, nbytes = TYPES[name]
    return n // blck * nbytes


# ---------------------------------------------------------------- inputs

def _grid(rng, n):
    """Values on a coarse grid: ties in every rounding step."""
    return (rng.integers(-16, 17, n) * 0.125).astype(np.float32)


def _blocky(rng, n):
    """Gaussian with a different magnitude every 32 values (weights look like this)."""
    return rng.standard_normal(n) * np.repeat(np.exp(rng.normal(0.0, 2.0, n // 32)), 32)


def _outlier(rng, n):
    x = rng.standard_normal(n)
    x[rng.integers(n)] *= 1000.0
    return x


def _sparse(rng, n):
    return rng.standard_normal(n) * (rng.random(n) < 0.1)


def _equal(rng, n):
    return np.full(n, rng.choice([0.37, -2.5, 1e-3]))


def _equal_blocks(rng, n):
    """A constant per 32 values, positive and negative."""
    return np.repeat(rng.standard_normal(n // 32), 32)


DISTS = {
    "gaussian": lambda rng, n: rng.standard_normal(n),
    "heavy_t2": lambda rng, n: rng.standard_t(2.0, n),
    "laplace": lambda rng, n: rng.laplace(0.0, 1.0, n),
    "positive": lambda rng, n: rng.random(n) + 0.05,
    "negative": lambda rng, n: -rng.random(n) * 3.0,
    "equal": _equal,
    "equal_blocks": _equal_blocks,
    "zeros": lambda rng, n: np.zeros(n),
    "tiny": lambda rng, n: rng.standard_normal(n) * 1e-20,
    "subnormal": lambda rng, n: rng.standard_normal(n) * 1e-39,
    "huge": lambda rng, n: rng.standard_normal(n) * 1e6,
    "outlier": _outlier,
    "blocky": _blocky,
    "sparse": _sparse,
    "grid": _grid,
}


def make_row(dist: str, seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng([seed, list(DISTS).index(dist)])
    return np.ascontiguousarray(DISTS[dist](rng, n), dtype=np.float32)


def make_imatrix(seed: int, n: int) -> np.ndarray:
    """Positive importances over a wide range, a few exactly zero (as a real imatrix has)."""
    rng = np.random.default_rng([seed, 99])
    imp = np.exp(rng.normal(0.0, 1.5, n))
    imp[rng.random(n) < 0.05] = 0.0
    return imp.astype(np.float32)


# ---------------------------------------------------------------- the two quantizers

def build_kquantize(outdir: Path, cc: str | None = None) -> ctypes.CDLL:
    """kquantize.c alone as a shared library (-O2, C11: no contraction into FMAs)."""
    so = Path(outdir) / "libkquantize_check.so"
    cmd = [cc or os.environ.get("CC", "cc"), "-std=c11", "-O2", "-shared", "-fPIC", "-o", str(so),
           str(KQ_SOURCE), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(so))
    fp = ctypes.POINTER(ctypes.c_float)
    for name in TYPES:
        ref = getattr(lib, f"clex_quantize_{name}_ref")
        ref.argtypes, ref.restype = [fp, ctypes.c_void_p, ctypes.c_int64], None
        imat = getattr(lib, f"clex_quantize_{name}_imat")
        imat.argtypes = [fp, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, fp]
        imat.restype = None
    return lib


def find_llama_lib(explicit: str | None = None) -> Path | None:
    cands = [Path(explicit)] if explicit else []
    if os.environ.get("CLEXRT_LLAMA_LIB"):
        cands.append(Path(os.environ["CLEXRT_LLAMA_LIB"]))
    cands += DEFAULT_LIBS
    return next((p for p in cands if p.is_file()), None)


def load_llama(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    for fn in ("ggml_version", "ggml_commit"):
        getattr(lib, fn).restype = ctypes.c_char_p
    return lib


def _fptr(a: np.ndarray | None):
    return None if a is None else a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def quantize_clex(lib: ctypes.CDLL, name: str, x: np.ndarray, imatrix: np.ndarray | None = None,
                  use_imat_entry: bool = False) -> np.ndarray:
    """x: [rows, n] float32 -> [rows, row bytes] uint8 through kquantize.c."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    out = np.zeros((rows, row_bytes(name, n)), np.uint8)
    if imatrix is None and not use_imat_entry:
        getattr(lib, f"clex_quantize_{name}_ref")(_fptr(x), out.ctypes.data, rows * n)
    else:
        imp = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
        getattr(lib, f"clex_quantize_{name}_imat")(_fptr(x), out.ctypes.data, n, rows, _fptr(imp))
    return out


def quantize_llama(lib: ctypes.CDLL, name: str, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """The same through llama.cpp's ggml_quantize_chunk (what llama-quantize calls)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    out = np.zeros((rows, row_bytes(name, n)), np.uint8)
    imp = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    size = lib.ggml_quantize_chunk(TYPES[name][0], x.ctypes.data, out.ctypes.data, 0, rows, n,
                                   None if imp is None else imp.ctypes.data)
    assert size == out.size, (name, size, out.size)
    return out


def llama_meta(path: Path, lib: ctypes.CDLL) -> dict:
    meta = {"library": str(path), "library_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "ggml_version": lib.ggml_version().decode(), "ggml_commit": lib.ggml_commit().decode(),
            "function": "ggml_quantize_chunk(type, x, y, 0, nrows, n_per_row, imatrix or NULL)",
            "machine": platform.machine()}
    cache = path.resolve().parent.parent / "CMakeCache.txt"   # <build>/bin/libggml-base.so
    if cache.is_file():
        keep = ("CMAKE_HOME_DIRECTORY", "CMAKE_BUILD_TYPE", "CMAKE_C_COMPILER", "CMAKE_C_FLAGS", "GGML_NATIVE")
        for line in cache.read_text(errors="replace").splitlines():
            key = line.split(":", 1)[0]
            if key in keep and "=" in line:
                meta["build_" + key] = line.split("=", 1)[1]
    cmds = cache.parent / "compile_commands.json"
    if cmds.is_file():   # the flags ggml-quants.c was compiled with (FMA contraction would change bytes)
        for e in json.loads(cmds.read_text()):
            if e["file"].endswith("ggml-quants.c") and "ggml-base" in e.get("command", ""):
                meta["build_ggml_quants_c"] = " ".join(a for a in e["command"].split() if a.startswith(("-O", "-std", "-m", "-f")))
    return meta


# ---------------------------------------------------------------- the sweep and the golden file

def sweep(kq, ll, seeds: int, rows: int, width: int) -> dict:
    """Every type x distribution x seed, plain and with an importance matrix:
    {(type, dist, imat): [rows compared, rows differing]}."""
    res = {}
    for seed in range(seeds):
        imp = make_imatrix(seed, width)
        for dist in DISTS:
            x = np.stack([make_row(dist, seed * 1000 + r, width) for r in range(rows)])
            for name in TYPES:
                for use in (False, True):
                    w = imp if use else None
                    a, b = quantize_clex(kq, name, x, w), quantize_llama(ll, name, x, w)
                    cnt = res.setdefault((name, dist, use), [0, 0])
                    cnt[0] += rows
                    cnt[1] += int((a != b).any(axis=1).sum())
    return res


GOLDEN_SEED, GOLDEN_WIDTH = 20250613, 512


def golden_inputs() -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([make_row(d, GOLDEN_SEED, GOLDEN_WIDTH) for d in DISTS])
    return x, make_imatrix(GOLDEN_SEED, GOLDEN_WIDTH)


def write_golden(ll, meta: dict, out: Path) -> None:
    x, imp = golden_inputs()
    arrays = {"x": x, "imatrix": imp}
    for name in TYPES:
        arrays[name] = quantize_llama(ll, name, x)
        arrays[name + "_imat"] = quantize_llama(ll, name, x, imp)
    meta = dict(meta, dists=list(DISTS), seed=GOLDEN_SEED, n_per_row=GOLDEN_WIDTH, types=list(TYPES), numpy=np.__version__,
                generated_by="python tools/kquantize_check.py --write-golden",
                layout="x: [dist, n_per_row] float32 (one row per dist, in 'dists' order); imatrix: "
                       "[n_per_row]; <type>: llama.cpp's bytes of x without an importance matrix, "
                       "<type>_imat: with imatrix (the same importances for every row)")
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", help="llama.cpp's libggml-base.so")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--write-golden", action="store_true")
    ap.add_argument("-o", "--out", type=Path, default=GOLDEN)
    args = ap.parse_args(argv)
    path = find_llama_lib(args.lib)
    if path is None:
        print("llama.cpp's libggml-base.so not found (--lib or CLEXRT_LLAMA_LIB)", file=sys.stderr)
        return 2
    ll = load_llama(path)
    with tempfile.TemporaryDirectory() as tmp:
        kq = build_kquantize(Path(tmp))
        res = sweep(kq, ll, args.seeds, args.rows, args.width)
        bad = {k: v for k, v in res.items() if v[1]}
        total = sum(v[0] for v in res.values())
        for name in TYPES:
            n = sum(v[0] for k, v in res.items() if k[0] == name)
            d = sum(v[1] for k, v in res.items() if k[0] == name)
            print(f"{name:7s} {n - d}/{n} rows identical")
        for (name, dist, use), (n, d) in sorted(bad.items()):
            print(f"DIFFER {name} {dist} {'imatrix' if use else 'plain'}: {d}/{n} rows")
        print(f"{total} rows x type compared over {len(DISTS)} distributions, {args.seeds} seeds, "
              f"width {args.width}: {'all identical' if not bad else f'{len(bad)} groups differ'}")
        if args.write_golden:
            if bad:
                print("not writing the golden file: kquantize.c differs from llama.cpp", file=sys.stderr)
                return 1
            write_golden(ll, llama_meta(path, ll), args.out)
            print(f"wrote {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
