"""`clexrt quantize` against llama-quantize itself: for every file type, from the same F32 input,
the same tensor types and the same tensor bytes, without and with an importance matrix. Runs
where a llama.cpp build is found ($LLAMA_QUANTIZE, /work/llama/build/bin/llama-quantize, or on
PATH); the mixture alone is also checked without llama.cpp (tests/test_mixture.py), and the
quantizers' bytes against libggml (tests/test_kquantize.py).

Models: an 8-layer llama with rows of 256 (n_layer / 8 = 1, so the position rules and the
imatrix rules for the first ffn_down reach a layer) and the 2-layer one with rows of 64 and 128
(every K-quant falls back). docs/convert.md records the same comparison on SmolLM2-135M."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imatrixgen import imatrix_entries, write_imatrix
from tinymodel import TINY_K, tiny_hparams, write_tiny
from clexrt.convert.mixture import FILE_TYPES
from clexrt.convert.requantize import quantize_gguf
from clexrt.gguf.reader import GGUFFile


def _llama_quantize() -> str | None:
    for c in (os.environ.get("LLAMA_QUANTIZE"), "/work/llama/build/bin/llama-quantize", shutil.which("llama-quantize")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


LQ = _llama_quantize()
pytestmark = [pytest.mark.skipif(LQ is None, reason="llama-quantize not found (set LLAMA_QUANTIZE)"),
              pytest.mark.slow]   # about 30 s of CPU: 80 quantizations by each program


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("lq")
    deep, narrow = d / "deep.gguf", d / "narrow.gguf"
    write_tiny(deep, "f32", tiny_hparams(**{**TINY_K, "n_layer": 8}))
    write_tiny(narrow, "f32")
    im = d / "deep-imatrix.gguf"
    write_imatrix(im, imatrix_entries(deep, seed=3))
    return {"dir": d, "deep": deep, "narrow": narrow, "imatrix": im}


def compare(ours: Path, theirs: Path) -> dict:
    with GGUFFile(ours) as a, GGUFFile(theirs) as b:
        assert set(a.tensors) == set(b.tensors)
        types = {n: (t.type_name, b.tensors[n].type_name) for n, t in a.tensors.items()
                 if t.ggml_type != b.tensors[n].ggml_type}
        assert not types, f"types differ (ours, llama-quantize's): {types}"
        diff = [n for n in a.tensors if bytes(a.tensor_bytes(n)) != bytes(b.tensor_bytes(n))]
        assert not diff, f"{len(diff)} tensors with other bytes: {diff[:6]}"
        assert a.metadata["general.file_type"] == b.metadata["general.file_type"]
        return {k: b.metadata[k] for k in b.metadata if k.startswith("quantize.")}


def run_llama_quantize(src: Path, out: Path, file_type: str, imatrix: Path | None = None) -> None:
    cmd = [LQ] + (["--imatrix", str(imatrix)] if imatrix else []) + [str(src), str(out), file_type, "2"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


@pytest.mark.parametrize("model", ["deep", "narrow"])
@pytest.mark.parametrize("file_type", list(FILE_TYPES))
def test_same_types_and_bytes_as_llama_quantize(inputs, tmp_path, model, file_type):
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    quantize_gguf(inputs[model], ours, file_type, n_threads=2, progress=False)
    run_llama_quantize(inputs[model], theirs, file_type)
    compare(ours, theirs)


@pytest.mark.parametrize("file_type", list(FILE_TYPES))
def test_same_bytes_with_an_imatrix(inputs, tmp_path, file_type):
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    quantize_gguf(inputs["deep"], ours, file_type, imatrix=inputs["imatrix"], n_threads=2, progress=False)
    run_llama_quantize(inputs["deep"], theirs, file_type, inputs["imatrix"])
    keys = compare(ours, theirs)
    with GGUFFile(ours) as a:
        assert a.metadata["quantize.imatrix.entries_count"] == keys["quantize.imatrix.entries_count"]
        assert a.metadata["quantize.imatrix.chunks_count"] == keys["quantize.imatrix.chunks_count"]
        assert a.metadata["quantize.imatrix.dataset"] == keys["quantize.imatrix.dataset"]
