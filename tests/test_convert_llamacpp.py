"""Our GGUFs in llama.cpp: the same logits and greedy tokens as clexrt. Optional: runs only where a
llama.cpp build and llama-cpp-python's Python package are pointed to (docs/convert.md):

    LLAMA_CPP_LIB_PATH=/path/to/llama.cpp/build/bin \
    CLEXRT_LLAMA_CPP_PY=/path/to/llama_cpp_python-0.3.36 \
    .venv/bin/python -m pytest -q tests/test_convert_llamacpp.py

llama.cpp runs with an f32 KV cache (its default f16 cache alone moves logits by ~0.03).
"""
import os
import sys

import numpy as np
import pytest

import hfgen
from clexrt.convert import convert_hf

PY = os.environ.get("CLEXRT_LLAMA_CPP_PY")
LIB = os.environ.get("LLAMA_CPP_LIB_PATH")
if not (PY and LIB):
    pytest.skip("set LLAMA_CPP_LIB_PATH and CLEXRT_LLAMA_CPP_PY to compare with llama.cpp",
                allow_module_level=True)
sys.path.insert(0, PY)
pytest.importorskip("diskcache")
llama_cpp = pytest.importorskip("llama_cpp")
from clexrt.engine.model import Model  # noqa: E402

OUTTYPES = os.environ.get("CLEXRT_LLAMA_CPP_TYPES", "f32,f16,bf16").split(",")


@pytest.mark.parametrize("kind", ["plain", "clex"])
@pytest.mark.parametrize("outtype", OUTTYPES)
def test_llama_cpp_same_logits_and_greedy_tokens(tmp_path, kind, outtype):
    spec = hfgen.PLAIN if kind == "plain" else hfgen.CLEX
    folder = tmp_path / kind
    hfgen.make_checkpoint(folder, spec)
    path = str(tmp_path / f"{kind}-{outtype}.gguf")
    convert_hf(folder, path, outtype=outtype, progress=False)
    n = spec.n_ctx
    ids = [int(x) for x in np.random.default_rng(0).integers(3, 390, n)]
    llm = llama_cpp.Llama(path, n_ctx=2 * n, n_batch=2 * n, logits_all=True, verbose=False, n_threads=1,
                          type_k=0, type_v=0)
    llm.eval(ids)
    theirs = np.array(llm.scores[:n], np.float32)
    ours = Model(path, n_threads=1, log_scale=False).logits(ids)   # llama.cpp has no log_scale
    tol = {"f32": 1e-3}.get(outtype, 0.5)     # llama.cpp rounds activations to the weights' type
    assert np.abs(theirs - ours).max() < tol
    prompt, got = ids[:8], []
    for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        got.append(tok)
        if len(got) == 16:
            break
    m, seq = Model(path, n_threads=1, log_scale=False), list(prompt)
    for _ in range(16):
        seq.append(int(np.argmax(m.logits(seq)[-1])))
    assert got == seq[8:]
