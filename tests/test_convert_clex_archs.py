"""`clexrt convert` on every architecture the official CLEX code patches beyond LLaMA, and on the
one its paper names: Phi-2 (PhiForCausalLM; the official CLEXPhiForCausalLM), Mixtral
(MixtralForCausalLM, 4 experts top-2; the official CLEXMixtralForCausalLM) and GPT-NeoX
(GPTNeoXForCausalLM; a CLEX one keeps the official layer's names under gpt_neox.), on
checkpoints that transformers' own classes build (tests/hfgen.py), against independent references:

(a) llama.cpp's converter on the plain folders, where its source is present: the same tensors
    (bit for bit, in F32 and Mixtral's experts in Q8_0) and keys;
(b) transformers' logits for the plain checkpoints, within 1e-4 of the largest logit;
(c) the official CLEX math for the CLEX checkpoints: the official CLEXScalingRotaryEmbedding
    (torchdiffeq's solve of its ODE over the rotary part of the head, t = ceil(N / L) capped at
    max_factor, its float32 cos/sin) swapped into transformers' Phi / GPT-NeoX / Mixtral
    modules; full forward from L/2 to max_factor * L in ceil mode within 1e-3;
(d) decoding token by token across t = 1 -> 2 -> 3: kv_policy recompute against (c)'s full
    forward at every length, rerotate against the official cached decoding (keys cached before
    RoPE, all rotated with the current length's table), both within 1e-3;
and clexify / --clex-init ntk on the plain files, the early official act and time_dt, quantized
experts (gguf-py; llama-quantize's mixture and bytes where found) and the refusals.
"""
import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import hfgen  # noqa: E402
from test_convert_archs import (OURS_ONLY, _convert, _ids, _model, _rel, llama_cpp_convert, read,  # noqa: E402
                                same_as_llama_cpp)
from clexrt.convert import clexify, convert_hf  # noqa: E402
from clexrt.errors import ConvertError  # noqa: E402
from clexrt.gguf.reader import GGUFFile  # noqa: E402
from clexrt.rope.tables import read_clex  # noqa: E402

pytestmark = pytest.mark.torch

ARCHS = ["phi2", "gptneox", "mixtral"]
PLAIN = ARCHS + ["gptneox-seq"]         # and a GPT-NeoX with sequential blocks
GGUF_ARCH = {"phi2": "phi2", "gptneox": "gptneox", "mixtral": "llama"}
SPECS = {a: hfgen.TFSpec(a) for a in ARCHS}
SPECS["gptneox-seq"] = hfgen.TFSpec("gptneox", parallel=False)
SPECS.update({a + "-clex": hfgen.TFSpec(a, clex=True) for a in ARCHS})
L, M = 64, 4            # max_position_embeddings and max_factor of the CLEX checkpoints
TOL = 1e-3
F32 = np.float32


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (folder, transformers model, our F32 GGUF). A CLEX checkpoint is its plain one
    (the same seed, so the same transformers model) plus the official CLEX layer."""
    root = tmp_path_factory.mktemp("clexarchs")
    torch.set_num_threads(1)
    out = {}
    for name, spec in SPECS.items():
        model = hfgen.make_tf_checkpoint(root / name, spec)
        out[name] = (root / name, model, _convert(root / name, root / f"{name}.gguf"))
    return out


@pytest.fixture(scope="module")
def llama_cpp(built, tmp_path_factory):
    """name -> llama.cpp's converter's F32 GGUF of the plain folders, and mixtral-q8_0."""
    root = tmp_path_factory.mktemp("llamacpp")
    out = llama_cpp_convert({n: built[n][0] for n in PLAIN}, root)
    out.update(llama_cpp_convert({"mixtral-q8_0": built["mixtral"][0]}, root, "q8_0"))
    return out


# ---------------------------------------------------------------------------------------------
# (a) the files llama.cpp's converter writes
@pytest.mark.parametrize("name", PLAIN)
def test_same_tensors_and_keys_as_llama_cpp(built, llama_cpp, name):
    # llama.cpp's GPT-NeoX converter writes no general.file_type (its other ones do)
    own = {"general.file_type"} if name.startswith("gptneox") else set()
    extra = same_as_llama_cpp(built[name][2], llama_cpp[name], SPECS[name].tokenizer == "bpe", OURS_ONLY | own)
    assert own <= extra
    kv, ts = read(built[name][2])
    if name == "mixtral":
        assert ts["blk.0.ffn_gate_exps.weight"][0] == (64, 96, 4) and ts["blk.0.ffn_down_exps.weight"][0] == (96, 64, 4)
        assert ts["blk.0.ffn_gate_inp.weight"][0] == (64, 4)
        assert (kv["llama.expert_count"], kv["llama.expert_used_count"]) == (4, 2)
    else:
        a = GGUF_ARCH[name.split("-")[0]]
        assert kv[f"{a}.rope.dimension_count"] == {"phi2": 12, "gptneox": 8}[a]     # 0.4 x 32, 0.25 x 32
    if name.startswith("gptneox"):
        assert kv["gptneox.use_parallel_residual"] is (name == "gptneox")


def test_mixtral_q8_0_experts_as_llama_cpp_writes_them(built, llama_cpp, tmp_path):
    ours = _convert(built["mixtral"][0], tmp_path / "m.gguf", "--outtype", "q8_0")
    same_as_llama_cpp(ours, llama_cpp["mixtral-q8_0"], False)
    _, ts = read(ours)
    assert ts["blk.1.ffn_up_exps.weight"][1] == "Q8_0" and ts["blk.1.ffn_gate_inp.weight"][1] == "F32"


# ---------------------------------------------------------------------------------------------
# (b) plain checkpoints: transformers' logits
def _tf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].double().numpy()


@pytest.mark.parametrize("name", PLAIN)
def test_logits_match_transformers(built, name):
    folder, model, path = built[name]
    m = _model(path)
    for n in (6, 60):
        ids = _ids(n, model.config.vocab_size, seed=n)
        rel = _rel(np.asarray(m.logits(ids), np.float64), _tf_logits(model, ids))
        assert rel < 1e-4, (name, n, rel)


@pytest.mark.parametrize("name", PLAIN)
def test_llama_cpp_runs_our_files(built, name):
    """Optional, as tests/test_convert_llamacpp.py (LLAMA_CPP_LIB_PATH and CLEXRT_LLAMA_CPP_PY
    point to a llama.cpp build and llama-cpp-python): the same logits and greedy tokens."""
    import sys

    if not (os.environ.get("CLEXRT_LLAMA_CPP_PY") and os.environ.get("LLAMA_CPP_LIB_PATH")):
        pytest.skip("set LLAMA_CPP_LIB_PATH and CLEXRT_LLAMA_CPP_PY to compare with llama.cpp")
    sys.path.insert(0, os.environ["CLEXRT_LLAMA_CPP_PY"])
    pytest.importorskip("diskcache")
    llm = pytest.importorskip("llama_cpp").Llama(str(built[name][2]), n_ctx=128, n_batch=128, logits_all=True,
                                                 verbose=False, n_threads=1, type_k=0, type_v=0)  # f32 KV
    ids = _ids(40, built[name][1].config.vocab_size, seed=0)
    llm.eval(ids)
    # llama.cpp's CPU GELU reads a float16 table: ~2e-3 on these logits (Mixtral has no GELU)
    tol = 1e-3 if name == "mixtral" else 5e-3
    assert np.abs(np.array(llm.scores[:40], np.float32) - _model(built[name][2]).logits(ids)).max() < tol
    got = [t for t, _ in zip(llm.generate(ids[:8], temp=0.0, top_k=1, reset=True), range(16))]
    m, seq = _model(built[name][2]), list(ids[:8])
    for _ in range(16):
        seq.append(int(np.argmax(m.logits(seq)[-1])))
    assert got == seq[8:]


# ---------------------------------------------------------------------------------------------
# The official CLEX model: CLEX/clex_layer.py's CLEXScalingRotaryEmbedding at inference, in torch,
# inside transformers' own modules
class OfficialClexRope:
    """The official layer's tables (torchdiffeq's rk4 solve of its ODE at t = 1..max_factor,
    test_clex_ode.torch_official_solve) and its cos/sin for a sequence of seq_len tokens:
    t = ceil(seq_len / L) capped at max_factor, the stored inv_freq at t = 1, positions
    arange(L * t) in float32, cos and sin of their outer product in float32."""

    def __init__(self, inv, up, down, act, time_dt, max_t):
        from test_clex_ode import torch_official_solve

        self.inv = torch.from_numpy(np.asarray(inv, F32))
        self.max_t = max_t
        ode = SimpleNamespace(inv_freq=np.asarray(inv, F32), dim=2 * len(inv), up=up, down=down, act=act,
                              time_dt=time_dt)
        self.freq_cached = torch.exp(torch.from_numpy(torch_official_solve(ode, np.arange(1, max_t + 1, dtype=F32))))

    def t_of(self, seq_len: int) -> int:
        scale = seq_len // L
        return min(scale if seq_len % L == 0 else scale + 1, self.max_t)

    def cos_sin(self, seq_len: int):
        t = self.t_of(seq_len)
        inv = self.inv if t == 1 else self.freq_cached[t - 1]
        freqs = torch.outer(torch.arange(0, L * t, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[:seq_len], emb.sin()[:seq_len]


class OfficialRotary(torch.nn.Module):
    """In place of transformers' rotary embedding: the official cos/sin for the length the
    official model passes its CLEX layer (past + new tokens = the last position + 1)."""

    def __init__(self, rope: OfficialClexRope):
        super().__init__()
        self.rope = rope

    def forward(self, x, position_ids):
        cos, sin = self.rope.cos_sin(int(position_ids.max()) + 1)
        return cos[position_ids].to(x.dtype), sin[position_ids].to(x.dtype)


def _rotate(k, cos, sin, sign=1.0):
    """RoPE over the first cos.shape[-1] dims of k [batch, heads, n, head_dim] (rotate_half
    pairs); sign -1 undoes it."""
    r = cos.shape[-1]
    x = k[..., :r]
    half = torch.cat((-x[..., r // 2:], x[..., :r // 2]), dim=-1)
    c, s = cos.to(k.dtype)[None, None], sin.to(k.dtype)[None, None]
    return torch.cat((x * c + sign * half * s, k[..., r:]), dim=-1)


def _base(model, arch):                 # where transformers keeps the rotary embedding
    return model.gpt_neox if arch == "gptneox" else model.model

class Official:
    """The official CLEX model of a CLEX checkpoint: its transformers model in float64 with
    OfficialRotary; full() is the full forward, step() the official cached decoding."""

    def __init__(self, model, arch, rope: OfficialClexRope):
        self.rope = rope
        self.model = copy.deepcopy(model).double()
        _base(self.model, arch).rotary_emb = OfficialRotary(rope)

    def full(self, ids) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.tensor([list(ids)])).logits[0].numpy()

    def new_cache(self):
        from transformers import DynamicCache
        return {"cache": DynamicCache(), "pre": None, "n": 0}

    def step(self, c, ids) -> np.ndarray:
        """The official attention caches keys before RoPE and rotates every cached key with the
        current length's table: the cache's keys are rebuilt from the pre-RoPE ones before the
        step, and the step's new keys (rotated with that table) undone to pre-RoPE after it."""
        past, n = c["n"], c["n"] + len(ids)
        cos, sin = self.rope.cos_sin(n)
        layers = c["cache"].layers
        if past:
            for layer, pre in zip(layers, c["pre"]):
                layer.keys = _rotate(pre, cos[:past], sin[:past])
        with torch.no_grad():
            out = self.model(torch.tensor([list(ids)]), past_key_values=c["cache"], use_cache=True,
                             position_ids=torch.arange(past, n)[None]).logits[0].numpy()
        new = [_rotate(layer.keys[:, :, past:n], cos[past:n], sin[past:n], -1.0) for layer in layers]
        c["pre"] = new if c["pre"] is None else [torch.cat((p, k), dim=-2) for p, k in zip(c["pre"], new)]
        c["n"] = n
        return out


def _clex_weights(folder, arch):
    from safetensors.numpy import load_file

    t = load_file(str(Path(folder) / "model.safetensors"))
    p = hfgen.clex_prefix(arch)
    return t[p + "inv_freq"], t[p + "proj_func.ode_up_proj"], t[p + "proj_func.ode_down_proj"]


@pytest.fixture(scope="module")
def official(built):
    """arch -> Official for its CLEX checkpoint (rope_scaling as its config.json says)."""
    pytest.importorskip("torchdiffeq")
    out = {}
    for arch in ARCHS:
        folder, model, _ = built[arch + "-clex"]
        rs = json.loads((folder / "config.json").read_text())["rope_scaling"]
        inv, up, down = _clex_weights(folder, arch)
        out[arch] = Official(model, arch, OfficialClexRope(inv, up, down, rs["act"], rs["time_dt"], rs["max_factor"]))
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_clex_file_is_the_plain_file_plus_the_official_tables(built, official, arch):
    from test_clex_ode import close

    kv, ts = read(built[arch + "-clex"][2])
    plain_kv, plain_ts = read(built[arch][2])
    assert sorted(ts) == sorted(plain_ts) and all(np.array_equal(ts[n][2], plain_ts[n][2]) for n in ts)
    clex_keys = {k for k in kv if k.startswith("clex.")}
    assert clex_keys and set(kv) - clex_keys == set(plain_kv)
    assert all(kv[k] == plain_kv[k] for k in plain_kv if k != "general.name")
    with GGUFFile(str(built[arch + "-clex"][2])) as g:
        md = dict(g.metadata)
    d = md[f"{GGUF_ARCH[arch]}.rope.dimension_count"]
    c = read_clex(md, n_rot=d)
    rope = official[arch].rope
    assert 2 * rope.inv.numel() == d and (c.train_length, c.max_factor) == (L, M)
    assert np.array_equal(c.table_at(1), rope.inv.numpy())
    for t in range(2, M + 1):
        assert close(c.tables[np.flatnonzero(c.grid == t)[0]], np.log(rope.freq_cached[t - 1].numpy()))


# ---------------------------------------------------------------------------------------------
# (c) full forward against the official math
@pytest.mark.parametrize("n", [L // 2, L, L + 1, 2 * L + 5, 3 * L, M * L])
@pytest.mark.parametrize("arch", ARCHS)
def test_full_forward_ceil_equals_official(built, official, arch, n):
    folder, model, path = built[arch + "-clex"]
    ref = official[arch]
    ids = _ids(n, model.config.vocab_size, seed=n)
    m = _model(path, clex_mode="ceil")
    ours = np.asarray(m.logits(ids), np.float64)
    assert m.rope_state["t"] == ref.rope.t_of(n)
    want = ref.full(ids)
    assert np.abs(ours - want).max() < TOL, (arch, n, np.abs(ours - want).max())
    if n == 3 * L:      # the tables matter: transformers' own rope (t = 1 everywhere) is far off,
        assert np.abs(_tf_logits(model, ids) - want).max() > 10 * TOL
        # and so is the official layer with a zero network (NTK scaling): the ODE network counts
        ntk = Official(model, arch, OfficialClexRope(ref.rope.inv.numpy(), None, None, "tanh", 0.01, M))
        assert np.abs(ntk.full(ids) - want).max() > 10 * TOL


# ---------------------------------------------------------------------------------------------
# (d) decoding across table changes
def _decode(path, policy, ids, n0):
    """Prefill ids[:n0] in one eval, then one token at a time: the logits after each length."""
    out = {}
    m = _model(path, clex_mode="ceil", kv_policy=policy)
    out[n0] = m.eval(ids[:n0])
    for n in range(n0 + 1, len(ids) + 1):
        out[n] = m.eval(ids[n - 1:n])
    return out, m.rope_state


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_recompute_equals_full_forward_every_step(built, official, arch):
    folder, model, path = built[arch + "-clex"]
    ref = official[arch]
    ids = _ids(2 * L + 6, model.config.vocab_size, seed=7)
    got, state = _decode(path, "recompute", ids, L - 12)
    assert state["table_changes"] == 2 and state["t"] == 3 and state["kv_policy"] == "recompute"
    worst = max(np.abs(got[n] - ref.full(ids[:n])[-1]).max() for n in got)
    assert worst < TOL, (arch, worst)


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_rerotate_equals_official_cached_decoding(built, official, arch):
    folder, model, path = built[arch + "-clex"]
    ref = official[arch]
    ids = _ids(2 * L + 6, model.config.vocab_size, seed=7)
    n0 = L - 12
    got, state = _decode(path, "rerotate", ids, n0)
    assert state["table_changes"] == 2 and state["t"] == 3
    cache = ref.new_cache()
    want = {n0: ref.step(cache, ids[:n0])[-1]}
    for n in range(n0 + 1, len(ids) + 1):
        want[n] = ref.step(cache, ids[n - 1:n])[-1]
    worst = max(np.abs(got[n] - want[n]).max() for n in got)
    assert worst < TOL, (arch, worst)
    # cached decoding is not the full forward once a multiple of L is crossed (CLEX.md)
    assert np.abs(want[2 * L + 1] - ref.full(ids[:2 * L + 1])[-1]).max() > 10 * TOL


# ---------------------------------------------------------------------------------------------
# CLEX for the plain files: clexify and --clex-init ntk (the zero network of the official layer's
# initialisation, ode_down_proj = 0), over the rotary part only
@pytest.mark.parametrize("arch", ARCHS)
def test_clexify_and_ntk_init_cover_the_rotary_part(built, tmp_path, arch):
    pytest.importorskip("torchdiffeq")
    folder, model, path = built[arch]
    out = tmp_path / "cx.gguf"
    clexify(str(path), str(out), max_factor=M, progress=False)
    with GGUFFile(str(out)) as g:
        md = dict(g.metadata)
    d = md[f"{GGUF_ARCH[arch]}.rope.dimension_count"]
    inv = _base(model, arch).rotary_emb.inv_freq.double().numpy()
    assert d == 2 * inv.size
    c = read_clex(md, n_rot=d)
    assert (c.init, c.max_factor, c.train_length) == ("ntk", M, L)
    np.testing.assert_allclose(c.table_at(1), inv, rtol=1e-6)
    plan = convert_hf(folder, dry_run=True, clex_init="ntk", clex_max_factor=M)
    c2 = read_clex({k: v[0] for k, v in plan.kv.items()}, n_rot=d)
    np.testing.assert_allclose(c2.tables, c.tables, rtol=1e-6, atol=1e-6)
    ref = Official(model, arch, OfficialClexRope(inv.astype(F32), None, None, "tanh", 0.01, M))
    ids = _ids(2 * L + 5, model.config.vocab_size, seed=4)
    ours = np.asarray(_model(out, clex_mode="ceil").logits(ids), np.float64)
    assert np.abs(ours - ref.full(ids)).max() < TOL


def test_early_clex_config_takes_the_early_official_defaults(built, tmp_path):
    """Configs saved before the official layer read act and time_dt from rope_scaling: that
    layer used SiLU and a step of 0.01."""
    pytest.importorskip("torchdiffeq")
    from test_clex_ode import close

    folder = tmp_path / "early"
    shutil.copytree(built["phi2-clex"][0], folder)
    _edit(folder, lambda c: [c["rope_scaling"].pop(k) for k in ("act", "time_dt")])
    plan = convert_hf(folder, dry_run=True)
    md = {k: v[0] for k, v in plan.kv.items()}
    assert (md["clex.act"], md["clex.time_dt"]) == ("silu", pytest.approx(0.01))
    assert any("lacks act, time_dt" in n for n in plan.notes)
    inv, up, down = _clex_weights(folder, "phi2")
    rope = OfficialClexRope(inv, up, down, "silu", 0.01, M)
    c = read_clex(md, n_rot=12)
    for t in range(2, M + 1):
        assert close(c.tables[np.flatnonzero(c.grid == t)[0]], np.log(rope.freq_cached[t - 1].numpy()))


# ---------------------------------------------------------------------------------------------
# Quantized experts
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q4_k_m", "iq4_nl"])
def test_every_outtype_quantizes_the_stacked_experts(built, tmp_path, outtype):
    """gguf-py reads back each expert of each stack close to the checkpoint's own weights (the
    3-D layout survives quantization); the router stays F32."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    folder = built["mixtral"][0]
    path = _convert(folder, tmp_path / "m.gguf", "--outtype", outtype)
    w = load_file(str(folder / "model.safetensors"))
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    assert tensors["blk.0.ffn_gate_inp.weight"].tensor_type.name == "F32"
    tol = {"f16": 1e-3, "bf16": 8e-3, "q8_0": 1e-2}.get(outtype, 0.2)
    for gg, wid in (("ffn_gate_exps", "w1"), ("ffn_up_exps", "w3"), ("ffn_down_exps", "w2")):
        t = tensors[f"blk.1.{gg}.weight"]
        if outtype in ("f16", "bf16", "q8_0", "q4_0", "q4_1"):
            assert t.tensor_type.name == outtype.upper()
        refs = [w[f"model.layers.1.block_sparse_moe.experts.{e}.{wid}.weight"] for e in range(4)]
        a = dequantize(np.asarray(t.data), t.tensor_type).reshape(4, *refs[0].shape)
        for e, ref in enumerate(refs):
            assert np.abs(a[e] - ref).max() < tol * np.abs(ref).max(), (gg, e)


@pytest.fixture(scope="module")
def wide_mixtral(tmp_path_factory):
    """8 experts (llama.cpp's mixture has rules for exactly 8) with rows of 256 (whole K blocks)."""
    root = tmp_path_factory.mktemp("wide")
    hfgen.make_tf_checkpoint(root / "hf", hfgen.TFSpec("mixtral", n_expert=8, width=256, seed=3))
    return root, _convert(root / "hf", root / "f32.gguf")


@pytest.mark.parametrize("outtype", ["q2_k", "q3_k_m", "q4_k_m", "q5_k_s", "q6_k", "iq4_xs"])
def test_expert_mixture_is_llama_quantizes(wide_mixtral, outtype):
    """--outtype of a llama.cpp file type gives each expert stack the type llama-quantize gives
    it from the F32 file, with the same bytes."""
    from test_quantize_llamacpp import LQ as lq     # $LLAMA_QUANTIZE, llama.cpp's build, or PATH

    if lq is None:
        pytest.skip("llama-quantize not found (set LLAMA_QUANTIZE)")
    root, f32 = wide_mixtral
    ours = _convert(root / "hf", root / f"ours-{outtype}.gguf", "--outtype", outtype)
    theirs = root / f"lq-{outtype}.gguf"
    env = dict(os.environ, LD_LIBRARY_PATH=str(Path(lq).parent))
    r = subprocess.run([lq, str(f32), str(theirs), outtype.upper(), "1"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with GGUFFile(str(ours)) as a, GGUFFile(str(theirs)) as b:
        assert set(a.tensors) == set(b.tensors)
        types = {n: (t.type_name, b.tensors[n].type_name) for n, t in a.tensors.items()
                 if t.ggml_type != b.tensors[n].ggml_type}
        assert not types, f"types differ (ours, llama-quantize's): {types}"
        assert any("_exps" in n and t.type_name not in ("F32", "F16") for n, t in a.tensors.items())
        diff = [n for n in a.tensors if bytes(a.tensor_bytes(n)) != bytes(b.tensor_bytes(n))]
        assert not diff, diff[:6]


# ---------------------------------------------------------------------------------------------
# Bad input: a one-line ConvertError naming the key, nothing written
def _edit(folder, config=None, tensors=None):
    from safetensors.numpy import load_file

    from clexrt.convert.safetensors import write_safetensors

    if config:
        cfg = json.loads((folder / "config.json").read_text())
        config(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    if tensors:
        t = load_file(str(folder / "model.safetensors"))
        tensors(t)
        write_safetensors(str(folder / "model.safetensors"), t, {"format": "pt"})


def _full_head_ode(t):      # a CLEX layer over the whole 32-wide head instead of its rotary 12
    rng = np.random.default_rng(0)
    t["model.clex_layer.proj_func.ode_up_proj"] = rng.standard_normal((16, 32)).astype(F32)
    t["model.clex_layer.proj_func.ode_down_proj"] = np.zeros((32, 16), F32)


@pytest.mark.parametrize("name,config,tensors,words", [
    ("phi2-clex", None, _full_head_ode,
     "tensor 'model.clex_layer.proj_func.ode_up_proj' has shape [16, 32], config.json implies [6, 12] "
     "(the CLEX layer covers the rotary dimension 12"),
    ("phi2", lambda c: c.update(partial_rotary_factor=1.5), None,
     "rotary dimension 48 (partial_rotary_factor 1.5 x head_dim 32) is larger than the head (32)"),
    ("phi2", lambda c: c.update(rotary_dim=40), None, "rotary dimension 40 (rotary_dim) is larger"),
    ("gptneox", lambda c: c.update(rotary_pct=0.3), None, "rotary dimension 9 (rotary_pct 0.3"),
    ("mixtral", lambda c: c.update(num_local_experts=3), None,
     "tensor 'model.layers.0.block_sparse_moe.gate.weight' has shape [4, 64], config.json implies [3, 64] "
     "(the router of num_local_experts = 3)"),
    ("mixtral", None, lambda t: t.update({"model.layers.1.block_sparse_moe.experts.4.w2.weight": np.zeros((64, 96), F32)}),
     "tensor 'model.layers.1.block_sparse_moe.experts.4.w2.weight' is expert 4, but num_local_experts is 4"),
    ("mixtral", lambda c: c.update(num_local_experts=5), None,
     "missing tensor 'model.layers.0.block_sparse_moe.experts.4.w1.weight' (num_local_experts = 5)"),
    ("mixtral", lambda c: c.update(num_experts_per_tok=6), None,
     "num_experts_per_tok 6 is more than num_local_experts 4"),
    ("mixtral", None, lambda t: t.pop("model.layers.1.block_sparse_moe.gate.weight"),
     "missing tensor 'model.layers.1.block_sparse_moe.gate.weight' (the router of num_local_experts = 4)"),
    ("phi2", lambda c: c.update(qk_layernorm=True), None, "qk_layernorm"),
    ("gptneox", lambda c: c.update(hidden_act="relu"), None, "hidden_act 'relu' is not supported"),
])
def test_bad_input(built, tmp_path, name, config, tensors, words):
    folder = tmp_path / "hf"
    shutil.copytree(built[name][0], folder)
    _edit(folder, config, tensors)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConvertError) as e:
        convert_hf(folder, out / "x.gguf", outtype="f32", progress=False)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(out) == []
