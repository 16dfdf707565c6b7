"""The converter on broken checkpoints (each a one-line ConvertError that leaves no output file)
and on the other weight formats (sharded, pytorch_model.bin)."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

from clexrt.convert import convert_hf
from clexrt.errors import ConvertError
from clexrt.gguf.reader import GGUFFile

F32 = np.float32

def _break(kind):
    def edit_config(f):
        def go(folder):
            p = folder / "config.json"
            cfg = json.loads(p.read_text())
            f(cfg)
            p.write_text(json.dumps(cfg))
        return go

    def edit_st(f):
        def go(folder):
            p = folder / "model.safetensors"
            f(p)
        return go

    def header_len(p):
        b = bytearray(p.read_bytes())
        b[:8] = (len(b) * 2).to_bytes(8, "little")
        p.write_bytes(bytes(b))

    def not_json(p):
        b = bytearray(p.read_bytes())
        b[8:12] = b"\xff{[x"
        p.write_bytes(bytes(b))

    def rewrite_header(change):
        def go(p):
            b = p.read_bytes()
            n = int.from_bytes(b[:8], "little")
            h = json.loads(b[8:8 + n])
            change(h)
            raw = json.dumps(h).encode()
            raw += b" " * (n - len(raw)) if len(raw) <= n else b""
            p.write_bytes(len(raw).to_bytes(8, "little") + raw + b[8 + n:])
        return go

    def offsets_out(h):
        h["model.norm.weight"]["data_offsets"][1] += 10 ** 9

    def size_mismatch(h):
        h["model.norm.weight"]["shape"] = [3, 3]

    def dtype_i64(h):
        e = h["model.norm.weight"]
        e["dtype"] = "I64"
        e["shape"] = [e["shape"][0] // 2]

    def nan_weight(folder):
        from clexrt.convert.safetensors import SafetensorsFile
        p = folder / "model.safetensors"
        e = SafetensorsFile(str(p)).entries["model.layers.1.mlp.up_proj.weight"]
        b = bytearray(p.read_bytes())
        b[e.begin + 40:e.begin + 44] = np.array([np.nan], F32).tobytes()
        p.write_bytes(bytes(b))

    def inf_weight(folder):
        from clexrt.convert.safetensors import SafetensorsFile
        p = folder / "model.safetensors"
        e = SafetensorsFile(str(p)).entries["model.clex_layer.proj_func.ode_down_proj"]
        b = bytearray(p.read_bytes())
        b[e.begin:e.begin + 4] = np.array([np.inf], F32).tobytes()
        p.write_bytes(bytes(b))

    cases = {
        "missing config": (lambda f: (f / "config.json").unlink(), "config.json"),
        "missing weights": (lambda f: (f / "model.safetensors").unlink(), "no weights"),
        "missing tokenizer": (lambda f: (f / "tokenizer.model").unlink(), "tokenizer"),
        "header length": (edit_st(header_len), "header length"),
        "header not json": (edit_st(not_json), "not JSON"),
        "offsets outside": (edit_st(rewrite_header(offsets_out)), "outside"),
        "size mismatch": (edit_st(rewrite_header(size_mismatch)), "bytes of data"),
        "dtype": (edit_st(rewrite_header(dtype_i64)), "I64"),
        "shape vs config": (edit_config(lambda c: c.update(intermediate_size=96)), "config.json implies"),
        "architecture": (edit_config(lambda c: c.update(architectures=["FalconForCausalLM"])),
                         "supported: LlamaForCausalLM, CLEXLlamaForCausalLM, MistralForCausalLM, "
                         "Qwen2ForCausalLM, Gemma3ForCausalLM"),
        "rope field": (edit_config(lambda c: c["rope_scaling"].update(beta_fast=32)), "beta_fast"),
        "llama3 field": (edit_config(lambda c: c.update(rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "mscale": 1.0})), "mscale"),
        "llama3 missing": (edit_config(lambda c: c.update(rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0})),
            "original_max_position_embeddings"),
        "clex keys": (edit_config(lambda c: c["rope_scaling"].pop("param_factor")), "param_factor"),
        "clex act": (edit_config(lambda c: c["rope_scaling"].update(act="relu")), "relu"),
        "rope type": (edit_config(lambda c: c.update(rope_scaling={"type": "yarn", "factor": 2})), "yarn"),
        "bad json": (lambda f: (f / "config.json").write_text("{nope"), "JSON"),
        "nan": (nan_weight, "NaN/Inf"),
        "inf in ode": (inf_weight, "NaN/Inf"),
        "bin without torch": (lambda f: ((f / "model.safetensors").rename(f / "pytorch_model.bin")), "safetensors"),
    }
    return cases[kind]


BAD = ["missing config", "missing weights", "missing tokenizer", "header length", "header not json",
       "offsets outside", "size mismatch", "dtype", "shape vs config", "architecture", "clex keys",
       "clex act", "rope type", "bad json", "nan", "inf in ode", "bin without torch", "rope field",
       "llama3 field", "llama3 missing"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_one_line_and_leaves_nothing(ckpts, tmp_path, kind, monkeypatch):
    if kind == "bin without torch":
        monkeypatch.setitem(sys.modules, "torch", None)      # `import torch` now fails
    src = ckpts["clex"][0]
    folder = tmp_path / "ck"
    shutil.copytree(src, folder)
    breaker, words = _break(kind)
    breaker(folder)
    outdir = tmp_path / "out"
    outdir.mkdir()
    with pytest.raises(ConvertError) as e:
        convert_hf(folder, outdir / "m.gguf", outtype="q8_0", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and words in msg, msg
    assert os.listdir(outdir) == []


def test_sharded_index_problems(ckpts, tmp_path):
    folder = tmp_path / "ck"
    shutil.copytree(ckpts["plain"][0], folder)
    idx = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = sorted(set(idx["weight_map"].values()))[1]
    (folder / shard).rename(folder / "elsewhere")
    with pytest.raises(ConvertError, match="missing"):
        convert_hf(folder, dry_run=True)
    (folder / "elsewhere").rename(folder / shard)
    idx["weight_map"]["model.norm.weight"] = "../escape.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(ConvertError, match="invalid file name"):
        convert_hf(folder, dry_run=True)


def test_pytorch_bin_with_torch(ckpts, tmp_path):
    torch = pytest.importorskip("torch")
    src, w, ref_path, spec = ckpts["clex"]
    folder = tmp_path / "bin"
    shutil.copytree(src, folder)
    (folder / "model.safetensors").unlink()
    torch.save({k: torch.from_numpy(v.copy()) for k, v in w.items()}, folder / "pytorch_model.bin")
    out = tmp_path / "bin.gguf"
    convert_hf(folder, out, outtype="f32", progress=False)
    with GGUFFile(out) as a, GGUFFile(ref_path) as b:
        for n in b.tensors:
            assert bytes(a.tensor_bytes(n)) == bytes(b.tensor_bytes(n))


