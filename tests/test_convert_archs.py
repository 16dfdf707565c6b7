"""`clexrt convert` on every architecture it reads (LLaMA, Llama 3 rope scaling, Mistral with a
sliding window and a wide head, Qwen2, Gemma 3 with local and global layers; each but Llama 3
also with CLEX), on checkpoints that transformers' own model classes build and save
(tests/hfgen.py make_tf_checkpoint), checked against two independent references:

(a) llama.cpp's converter (convert_hf_to_gguf.py, where its source is present; skipped where
    not) on the same folder: the same tensors (names, shapes, types, values
    bit for bit) and the same values for every key it writes, ours adding only the keys listed
    in OURS_ONLY; a CLEX file is the plain file plus its clex.* keys;
(b) transformers' logits for a short prompt and one longer than the sliding window (and, for
    CLEX, one past L with the official CLEX frequencies), within 1e-4 of the largest logit.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402
from gguf import GGUFReader  # noqa: E402

import hfgen  # noqa: E402
from clexrt.cli.convert import convert as convert_cmd  # noqa: E402
from clexrt.convert import convert_hf  # noqa: E402
from clexrt.errors import ConvertError  # noqa: E402

pytestmark = pytest.mark.torch

# llama.cpp's source: CLEXRT_LLAMA_CPP_SRC, or the copy vendored in llama-cpp-python
# (CLEXRT_LLAMA_CPP_PY, as tests/test_convert_llamacpp.py), or that copy beside this checkout
_PY = os.environ.get("CLEXRT_LLAMA_CPP_PY") or Path(__file__).resolve().parents[2] / "llama/llama_cpp_python-0.3.36"
LLAMA_CPP = Path(os.environ.get("CLEXRT_LLAMA_CPP_SRC") or Path(_PY) / "vendor/llama.cpp")
PLAIN = ["llama", "llama3", "mistral", "qwen2", "gemma3"]
CLEX = ["llama", "mistral", "qwen2", "gemma3"]
SPECS = {"llama": hfgen.TFSpec("llama"), "llama3": hfgen.TFSpec("llama3"),
         "mistral": hfgen.TFSpec("mistral", window=8), "qwen2": hfgen.TFSpec("qwen2"),
         "gemma3": hfgen.TFSpec("gemma3", n_layer=6, window=8)}
for _a in CLEX:     # the same seed: a CLEX checkpoint is its plain one plus the CLEX layer
    _s = SPECS[_a]
    SPECS[_a + "-clex"] = hfgen.TFSpec(_s.arch, clex=True, n_layer=_s.n_layer, window=_s.window)
L = 64              # max_position_embeddings of the CLEX checkpoints

# llama.cpp's descriptive metadata (name and size label from the folder and parameter count;
# general.quantization_version even in an F32 file): not compared
LLAMA_CPP_ONLY = {"general.name", "general.type", "general.size_label", "general.quantization_version"}
# what we write that llama.cpp's converter does not: the SentencePiece model's own unk id and
# dummy-prefix flag, Mistral's window (llama.cpp drops it), Gemma 3's query_pre_attn_scalar
OURS_ONLY = {"tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_space_prefix",
             "llama.attention.sliding_window", "gemma3.attention.scale"}
# our tiny BPE tokenizers cannot reproduce the hash llama.cpp's converter names a real model's
# pre-tokenizer by: the runner leaves it unnamed, test_bpe_pre_tokenizer checks ours
RUNNER = """
import sys
lc, outtype, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[:0] = [lc, lc + "/gguf-py"]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "(not hashed)"
import convert_hf_to_gguf as conv
for src, out in zip(pairs[::2], pairs[1::2]):
    sys.argv = ["convert_hf_to_gguf.py", src, "--outtype", outtype, "--outfile", out]
    conv.main()
"""


def llama_cpp_convert(folders: dict, root, outtype: str = "f32") -> dict:
    """name -> the GGUF llama.cpp's converter writes for folders[name] (skips without its source)."""
    if not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file():
        pytest.skip(f"llama.cpp's convert_hf_to_gguf.py is not at {LLAMA_CPP} (set CLEXRT_LLAMA_CPP_SRC)")
    args = [str(LLAMA_CPP), outtype]
    for name, folder in folders.items():
        args += [str(folder), str(Path(root) / f"{name}.gguf")]
    env = dict(os.environ, PYTHONPATH=str(LLAMA_CPP / "gguf-py"))
    r = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return {name: Path(root) / f"{name}.gguf" for name in folders}


def _convert(folder, out, *extra):
    r = CliRunner().invoke(convert_cmd, [str(folder), "-o", str(out), "--outtype", "f32", "--no-progress", *extra])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (folder, transformers model, our F32 GGUF)."""
    root = tmp_path_factory.mktemp("archs")
    out = {}
    for name, spec in SPECS.items():
        model = hfgen.make_tf_checkpoint(root / name, spec)
        out[name] = (root / name, model, _convert(root / name, root / f"{name}.gguf"))
    return out


@pytest.fixture(scope="module")
def llama_cpp(built, tmp_path_factory):
    """name -> the F32 GGUF llama.cpp's converter writes for the plain folders."""
    return llama_cpp_convert({name: built[name][0] for name in PLAIN}, tmp_path_factory.mktemp("llamacpp"))


def read(path):
    """(keys, tensors) through gguf-py: key -> value, name -> (shape, type name, data)."""
    r = GGUFReader(str(path))
    kv = {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("GGUF.")}
    ts = {t.name: (tuple(int(x) for x in t.shape), t.tensor_type.name, np.array(t.data)) for t in r.tensors}
    return kv, ts


def same_as_llama_cpp(ours_path, ref_path, bpe: bool, ours_only=OURS_ONLY) -> set:
    """Asserts our file has llama.cpp's tensors (names, shapes, types, bytes) and its keys with
    its values, adding only keys of ours_only; returns the keys we add."""
    ours_kv, ours = read(ours_path)
    ref_kv, ref = read(ref_path)
    assert sorted(ours) == sorted(ref)
    for n, (shape, kind, data) in ref.items():
        assert ours[n][:2] == (shape, kind), n
        if n == "rope_freqs.weight":
            # llama.cpp computes it with torch's float32 pow, which numpy cannot repeat bit for bit
            np.testing.assert_allclose(ours[n][2], data, rtol=2.4e-7, atol=0)
        else:
            assert np.array_equal(ours[n][2], data), n
    unnamed = {"tokenizer.ggml.pre"} if bpe else set()
    for k, v in ref_kv.items():
        if k in LLAMA_CPP_ONLY | unnamed:
            continue
        assert k in ours_kv, f"{k} missing (llama.cpp writes {v!r})"
        assert ours_kv[k] == v, k
    extra = set(ours_kv) - set(ref_kv)
    assert extra <= ours_only, extra
    return extra


@pytest.mark.parametrize("name", PLAIN)
def test_same_tensors_and_keys_as_llama_cpp(built, llama_cpp, name):
    extra = same_as_llama_cpp(built[name][2], llama_cpp[name], SPECS[name].tokenizer == "bpe")
    # and the keys of ours llama.cpp lacks are the ones the architecture calls for
    assert ("llama.attention.sliding_window" in extra) == (name == "mistral")
    assert ("gemma3.attention.scale" in extra) == (name == "gemma3")


@pytest.mark.parametrize("arch", CLEX)
def test_clex_file_is_the_plain_file_plus_tables(built, arch):
    from clexrt.rope.ode import ClexODE
    from clexrt.rope.tables import read_clex

    kv, ts = read(built[arch + "-clex"][2])
    plain_kv, plain_ts = read(built[arch][2])
    assert sorted(ts) == sorted(plain_ts)
    assert all(np.array_equal(ts[n][2], plain_ts[n][2]) for n in ts)
    clex_keys = {k for k in kv if k.startswith("clex.")}
    assert clex_keys and set(kv) - clex_keys == set(plain_kv)
    assert all(kv[k] == plain_kv[k] for k in plain_kv if k != "general.name")
    from clexrt.gguf.reader import GGUFFile
    with GGUFFile(str(built[arch + "-clex"][2])) as g:
        md = dict(g.metadata)
    model = built[arch][1]
    inv = model.model.rotary_emb.inv_freq.float().numpy()        # the global layers' frequencies
    c = read_clex(md, n_rot=2 * inv.size)
    assert (c.train_length, c.max_factor) == (L, 4) and np.array_equal(c.table_at(1), inv)
    w = _clex_weights(built[arch + "-clex"][0])
    ode = ClexODE(inv, act="tanh", time_dt=0.01, up=w["up"], down=w["down"])
    official = ode.solve(np.arange(1, 5, dtype=np.float32))
    for t in (2, 3, 4):
        assert np.array_equal(c.tables[np.flatnonzero(c.grid == t)[0]], official[t - 1])


def _clex_weights(folder):
    from safetensors.numpy import load_file

    t = load_file(str(Path(folder) / "model.safetensors"))
    return {"up": t["model.clex_layer.proj_func.ode_up_proj"], "down": t["model.clex_layer.proj_func.ode_down_proj"]}


def _ids(n, n_vocab, seed=0):
    return [int(x) for x in np.random.default_rng(seed).integers(3, n_vocab - 8, n)]


def _transformers_logits(model, ids, inv_freq=None):
    rot = model.model.rotary_emb
    old = rot.inv_freq
    try:
        if inv_freq is not None:
            rot.inv_freq = torch.tensor(np.asarray(inv_freq, np.float32))
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].double().numpy()
    finally:
        rot.inv_freq = old


def _model(path, **kw):
    try:
        from clexrt.engine.model import Model
    except ImportError as e:    # the native core is not built
        pytest.skip(f"clexrt.engine.model unavailable: {e}")
    # transformers' modules, the reference, never apply a CLEX checkpoint's log_scale (only the
    # official flash-attention path does: tests/test_log_scale.py)
    return Model(str(path), n_threads=1, **{"log_scale": False, **kw})


def _rel(got, ref):
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", PLAIN + [a + "-clex" for a in CLEX])
def test_logits_match_transformers(built, name):
    folder, model, path = built[name]
    m = _model(path)
    for n in (6, 40):       # inside and past the sliding window (8)
        ids = _ids(n, model.config.vocab_size, seed=n)
        rel = _rel(np.asarray(m.logits(ids), np.float64), _transformers_logits(model, ids))
        assert rel < 1e-4, (name, n, rel)


@pytest.mark.parametrize("arch", CLEX)
def test_clex_logits_past_L_match_transformers_with_the_official_frequencies(built, arch):
    """Past L the official inference rotates with exp(y(t)), t = ceil(N / L) (the global layers'
    rope, for Gemma 3): transformers run with those frequencies against clexrt's ceil mode."""
    from clexrt.rope.ode import ClexODE

    folder, model, path = built[arch + "-clex"]
    w = _clex_weights(folder)
    inv = model.model.rotary_emb.inv_freq.float().numpy()
    official = ClexODE(inv, act="tanh", time_dt=0.01, up=w["up"], down=w["down"]).solve(
        np.arange(1, 5, dtype=np.float32))
    m = _model(path, clex_mode="ceil")
    n = 2 * L + 5
    ids = _ids(n, model.config.vocab_size, seed=3)
    ref = _transformers_logits(model, ids, inv_freq=np.exp(official[-(-n // L) - 1].astype(np.float64)))
    rel = _rel(np.asarray(m.logits(ids), np.float64), ref)
    assert rel < 1e-4, (arch, rel)


def test_llama3_rope_freqs_give_transformers_frequencies(built):
    """Independent of llama.cpp: base frequencies / rope_freqs.weight are the frequencies
    transformers' llama3 rope runs with."""
    _, ts = read(built["llama3"][2])
    model = built["llama3"][1]
    factors = ts["rope_freqs.weight"][2].astype(np.float64)
    d = model.config.head_dim
    base = 1.0 / (500000.0 ** (np.arange(0, d, 2) / d))
    assert len(set(np.round(factors, 6))) > 2          # some pairs scaled, some not, some blended
    np.testing.assert_allclose(base / factors, model.model.rotary_emb.inv_freq.double().numpy(), rtol=1e-6)


def test_bpe_pre_tokenizer(built, tmp_path):
    from clexrt.gguf.reader import GGUFFile

    for name, pre in (("llama3", "llama-bpe"), ("qwen2", "qwen2")):
        with GGUFFile(str(built[name][2])) as g:
            md = g.metadata
            assert (md["tokenizer.ggml.model"], md["tokenizer.ggml.pre"]) == ("gpt2", pre)
    with GGUFFile(str(built["llama3"][2])) as g:       # Llama 3's template adds <|begin_of_text|>
        md = g.metadata
        assert md["tokenizer.ggml.add_bos_token"] is True and md["tokenizer.ggml.add_eos_token"] is False
        assert md["tokenizer.ggml.tokens"][md["tokenizer.ggml.bos_token_id"]] == "<|begin_of_text|>"
    folder = tmp_path / "odd"
    shutil.copytree(built["qwen2"][0], folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{N}{1,2}|\s+"
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ConvertError, match=r"Split\(.*N\}\{1,2\}.*not one we recognise") as e:
        convert_hf(folder, dry_run=True)
    assert "\n" not in str(e.value)


def test_gemma3_layer_types(built, tmp_path):
    """llama.cpp's runtime assumes every 6th layer global; other layer_types are written as
    the per-layer flags it reads; no sliding layers: no window (as llama.cpp's converter)."""
    folder = tmp_path / "g"
    shutil.copytree(built["gemma3"][0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    for types, flags in ((["sliding_attention", "full_attention"] * 3, [True, False] * 3),
                         (["full_attention"] * 6, None)):
        cfg["layer_types"] = types
        (folder / "config.json").write_text(json.dumps(cfg))
        plan = convert_hf(folder, dry_run=True)
        if flags is None:
            assert "gemma3.attention.sliding_window" not in plan.kv
        else:
            assert plan.kv["gemma3.attention.sliding_window"][0] == 8
            assert list(plan.kv["gemma3.attention.sliding_window_pattern"][0]) == flags
            assert any("layer_types" in n for n in plan.notes)
    _, _, path = built["gemma3"]
    kv, _ = read(path)
    assert "gemma3.attention.sliding_window_pattern" not in kv      # the default pattern: not written


def test_gemma3_scaling_and_softcaps(built, tmp_path):
    """rope_scaling linear (Gemma 3 4B+) as llama.cpp's converter writes it; attn_logit_softcapping
    (which llama.cpp's refuses) written when set; query_pre_attn_scalar = head_dim: no scale key."""
    folder = tmp_path / "g"
    shutil.copytree(built["gemma3"][0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(rope_scaling={"rope_type": "linear", "factor": 8.0}, attn_logit_softcapping=50.0,
               query_pre_attn_scalar=cfg["head_dim"])
    (folder / "config.json").write_text(json.dumps(cfg))
    kv = {k: v[0] for k, v in convert_hf(folder, dry_run=True).kv.items()}
    assert (kv["gemma3.rope.scaling.type"], kv["gemma3.rope.scaling.factor"]) == ("linear", 8.0)
    assert kv["gemma3.attn_logit_softcapping"] == 50.0 and kv["gemma3.final_logit_softcapping"] == 30.0
    assert "gemma3.attention.scale" not in kv


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_ntk_clex_tables_for_any_architecture(built, arch):
    """--clex-init ntk starts from the (global) rope base: transformers' own frequencies at t = 1."""
    from clexrt.rope.tables import read_clex

    folder, model, _ = built[arch]
    plan = convert_hf(folder, dry_run=True, clex_init="ntk", clex_max_factor=4)
    md = {k: v[0] for k, v in plan.kv.items()}
    inv = model.model.rotary_emb.inv_freq.double().numpy()
    c = read_clex(md, n_rot=2 * inv.size)
    assert c.init == "ntk" and c.max_factor == 4
    np.testing.assert_allclose(c.table_at(1), inv, rtol=1e-6)


@pytest.mark.parametrize("edit,words", [
    ("drop_bias", "missing tensor 'model.layers.1.self_attn.k_proj.bias'"),
    ("llama3_rope", "rope_scaling type 'llama3' is not supported for qwen2"),
    ("yarn_field", "rope_scaling field 'beta_fast'"),
    ("sliding", "use_sliding_window"),
])
def test_qwen2_bad_input(built, tmp_path, edit, words):
    from safetensors.numpy import load_file

    from clexrt.convert.safetensors import write_safetensors

    folder = tmp_path / "q"
    shutil.copytree(built["qwen2"][0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    if edit == "drop_bias":
        t = load_file(str(folder / "model.safetensors"))
        del t["model.layers.1.self_attn.k_proj.bias"]
        write_safetensors(str(folder / "model.safetensors"), t, {"format": "pt"})
    elif edit == "llama3_rope":
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    elif edit == "yarn_field":
        cfg["rope_scaling"] = {"type": "linear", "factor": 2.0, "beta_fast": 32}
    else:
        cfg.update(use_sliding_window=True, sliding_window=16)
    (folder / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConvertError) as e:
        convert_hf(folder, out / "q.gguf", outtype="f32", progress=False)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(out) == []
