"""tools/synth_model.py's TinyLlama-shaped model (issue 17 part 5), at a reduced size: the shape
is TinyLlama-1.1B's, the files gguf-py reads back hold that shape, clexrt runs them, and the
quantized types are `clexrt quantize` of the F16 file."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import synth_model as S                        # noqa: E402

# TinyLlama-1.1B's config.json (TinyLlama/TinyLlama-1.1B-Chat-v1.0)
TINYLLAMA = {"n_layer": 22, "n_embd": 2048, "n_head": 32, "n_head_kv": 4, "n_ff": 5632, "n_ctx_train": 2048}
SMOLLM2_VOCAB = 49152
REDUCED = {"n_layer": 1, "n_embd": 256, "n_ff": 512}       # rows of 256: every K-quant fits


def _independent_params(V, E, L, n_head, n_head_kv, F) -> int:
    kvd = E // n_head * n_head_kv
    per_layer = 2 * E + 2 * E * E + 2 * E * kvd + 3 * E * F      # two norms, q/o, k/v, gate/up/down
    return 2 * V * E + E + L * per_layer                          # embedding, untied output, final norm


def _field(r: GGUFReader, key: str):
    f = r.fields[key]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0].name == "STRING" else v.tolist()[0]


def test_the_shape_is_tinyllamas_with_1_17b_parameters():
    sp = S.shape("tinyllama")
    assert {k: sp[k] for k in TINYLLAMA} == TINYLLAMA
    plan = S.plan("tinyllama", sp, "f16", {}, SMOLLM2_VOCAB)
    n = sum(int(np.prod(t.shape)) for t in plan.tensors)
    assert n == _independent_params(SMOLLM2_VOCAB, 2048, 22, 32, 4, 5632)
    assert 1.16e9 < n < 1.18e9
    assert "output.weight" in {t.name for t in plan.tensors}       # untied


@pytest.mark.parametrize("wtype, ggml", [("f16", QT.F16), ("f32", QT.F32)])
def test_reduced_tinyllama_has_the_shape_and_runs(smollm2, tmp_path, wtype, ggml):
    from clexrt.engine.model import Model

    out = tmp_path / f"t-{wtype}.gguf"
    S.build("tinyllama", str(out), wtype, progress=False, **REDUCED)
    r = GGUFReader(out)
    want = {"llama.block_count": 1, "llama.embedding_length": 256, "llama.attention.head_count": 32,
            "llama.attention.head_count_kv": 4, "llama.feed_forward_length": 512, "llama.context_length": 2048,
            "general.file_type": 1 if wtype == "f16" else 0, "general.architecture": "llama"}
    assert {k: _field(r, k) for k in want} == want
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["output.weight"] == types["blk.0.ffn_gate.weight"] == types["token_embd.weight"] == ggml
    assert types["blk.0.attn_norm.weight"] == QT.F32
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in r.tensors}
    assert shapes["blk.0.attn_k.weight"] == (256, 256 // 32 * 4)           # GQA 8:1
    assert shapes["output.weight"] == (256, SMOLLM2_VOCAB)
    with Model(str(out), n_ctx=32, n_threads=1) as m:
        hp = m.hparams
        assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.n_ff, hp.n_vocab, hp.tied_embeddings) == \
            (1, 256, 32, 4, 512, SMOLLM2_VOCAB, False)
        logits = m.eval([1, 2, 3])
        assert logits.shape == (SMOLLM2_VOCAB,) and np.isfinite(logits).all()


def test_quantized_types_are_clexrt_quantize_of_one_f16_file(smollm2, tmp_path):
    from clexrt.convert.requantize import quantize_gguf
    from clexrt.engine.model import Model

    q4km = tmp_path / "t-Q4_K_M.gguf"
    base = S.build("tinyllama", str(q4km), "Q4_K_M", progress=False, **REDUCED)
    assert os.path.basename(base) == "tinyllama-L1-E256-F512-f16.gguf" and os.path.dirname(base) == str(tmp_path)
    ref = tmp_path / "ref.gguf"
    quantize_gguf(base, ref, "Q4_K_M", progress=False)
    assert q4km.read_bytes() == ref.read_bytes()
    assert _field(GGUFReader(q4km), "general.file_type") == 15          # llama_ftype MOSTLY_Q4_K_M
    stamp = os.stat(base).st_mtime_ns
    q8 = tmp_path / "t-Q8_0.gguf"
    assert S.build("tinyllama", str(q8), "q8_0", progress=False, **REDUCED) == base
    assert os.stat(base).st_mtime_ns == stamp                           # made once, reused
    assert {t.tensor_type for t in GGUFReader(q8).tensors if len(t.shape) == 2} == {QT.Q8_0}
    for path in (q4km, q8):
        with Model(str(path), n_ctx=16, n_threads=1) as m:
            assert np.isfinite(m.eval([5, 6])).all()


@pytest.mark.parametrize("args, message", [
    (["--type", "q9_9"], "unknown type"),
    (["--n-embd", "100"], "heads"),
    (["--layers", "0"], "at least 1"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        S.main(["tinyllama", str(tmp_path / "x.gguf")] + args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error:" in err[-1] and message in err[-1]
    assert not list(tmp_path.iterdir())
