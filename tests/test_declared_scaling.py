"""The rope scaling a GGUF declares (rope.scaling.type = yarn / longrope / linear / none, with
rope_freqs.weight or rope_factors_long/short.weight), honoured as llama.cpp honours it
(clexrt.rope.methods.declared_rope, the static table of --rope auto):

- the table and the attention factor against llama.cpp's math reimplemented here in float64 from
  its sources (llama.cpp as vendored in llama-cpp-python 0.3.36):
    src/llama-model.cpp:1410-1431  n_ctx_orig_yarn defaults to n_ctx_train, the type to "linear",
                                   freq_scale = 1/factor (0: 1), rope.scale_linear the older name;
    src/llama-model.cpp:2337-2350  get_rope_factors: rope_freqs, else long if n_ctx > n_ctx_orig;
    src/llama-context.cpp:114-117, 173-214  ext_factor < 0 = not set (1 for yarn), the attention
                                   factor (get_mscale, its cancelling, times rope.scaling.attn_factor);
    src/llama-context.cpp:290-296  n_ctx (per sequence) padded to a multiple of 256;
    ggml/src/ggml.c:4478-4490      ggml_rope_yarn_corr_dim(s): floor/ceil, clamped to [0, n_dims-1];
    ggml/src/ggml-cpu/ops.cpp:6180-6217  rope_yarn_ramp, rope_yarn (theta blend, mscale on cos and
                                   sin), ggml_rope_cache_init (theta / freq_factors);
  and, for YaRN and LongRoPE, against transformers' rope init functions;
- bad declarations are one-line errors naming the key or tensor;
- a tiny model with a declared YaRN runs the reference forward at that table and q.k scale;
- llama-perplexity on the same files (a tiny F32 checkpoint live where llama.cpp is built; copies
  of SmolLM2 recorded in tests/data/llamacpp_declared_scaling.json by
  tools/record_declared_scaling.py) gives clexrt perplexity's numbers, at 4x the declared
  training context.
"""
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tinymodel as tm
from clexrt.cli import cli
from clexrt.errors import ClexError
from clexrt.gguf import HParams
from clexrt.rope.methods import declared_rope

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from record_declared_scaling import declared_copy  # noqa: E402

DATA = ROOT / "tests/data/llamacpp_declared_scaling.json"
BIN = Path(os.environ.get("CLEXRT_LLAMA_CPP_BIN") or ROOT.parent / "llama/build/bin")


# ---------------------------------------------------------------------------------------------
# llama.cpp's math, float64
def _corr_dims(n_dims, n_ctx_orig, base, beta_fast, beta_slow):
    def dim(beta):
        return n_dims * math.log(n_ctx_orig / (beta * 2 * math.pi)) / (2 * math.log(base))
    return max(0.0, math.floor(dim(beta_fast))), min(n_dims - 1.0, math.ceil(dim(beta_slow)))


def _get_mscale(scale, mscale):
    return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0


def llama_cpp_rope(keys: dict, tensors: dict, n_rot, base, n_ctx_train, n_ctx, positions):
    """(angles [len(positions), n_rot/2], mscale) as llama.cpp forms them for a llama-arch file
    whose keys (without the arch prefix) and F32 tensors are given, at context n_ctx."""
    kind = keys.get("rope.scaling.type", "linear")
    ropescale = keys.get("rope.scaling.factor", keys.get("rope.scale_linear", 0.0))
    freq_scale = 1.0 if ropescale == 0.0 else 1.0 / ropescale
    if kind == "none":
        freq_scale = 1.0
    n_ctx_orig = keys.get("rope.scaling.original_context_length", n_ctx_train)
    ext = keys.get("rope.scaling.yarn_ext_factor", -1.0)
    if ext < 0:
        ext = 1.0 if kind == "yarn" else 0.0
    attn = keys.get("rope.scaling.yarn_attn_factor", 1.0)
    if ext != 0:
        factor = 1.0 / freq_scale
        log_mul = keys.get("rope.scaling.yarn_log_multiplier", 0.0)
        attn = (_get_mscale(factor, 1.0) / _get_mscale(factor, log_mul) if log_mul
                else _get_mscale(factor, 1.0))
        attn *= 1.0 / (1.0 + 0.1 * math.log(factor))
    attn *= keys.get("rope.scaling.attn_factor", 1.0)
    ff = tensors.get("rope_freqs.weight")
    if ff is None and kind == "longrope":
        n_ctx_seq = -(-n_ctx // 256) * 256                   # GGML_PAD(n_ctx, 256)
        ff = tensors["rope_factors_long.weight" if n_ctx_seq > n_ctx_orig else "rope_factors_short.weight"]
    ff = np.ones(n_rot // 2) if ff is None else np.asarray(ff, np.float64)
    lo, hi = _corr_dims(n_rot, n_ctx_orig, base, keys.get("rope.scaling.yarn_beta_fast", 32.0),
                        keys.get("rope.scaling.yarn_beta_slow", 1.0))
    angles = np.zeros((len(positions), n_rot // 2))
    mscale = attn
    for r, p in enumerate(positions):
        theta = float(p)
        for i in range(n_rot // 2):
            extrap = theta / ff[i]
            interp = freq_scale * extrap
            t, ms = interp, attn
            if ext != 0:
                y = (i - lo) / max(0.001, hi - lo)
                mix = (1 - min(1, max(0, y))) * ext
                t = interp * (1 - mix) + extrap * mix
                ms = attn * (1.0 + 0.1 * math.log(1.0 / freq_scale))
            angles[r, i], mscale = t, ms
            theta *= base ** (-2.0 / n_rot)
    return angles, mscale


class _Tensor:
    def __init__(self, a):
        self.a, self.type_name, self.n_elements, self.shape = a, "F32", a.size, list(a.shape)


class FakeGGUF:
    """What declared_rope reads of a GGUFFile: metadata, tensors, tensor_array."""

    def __init__(self, arch, keys, tensors=None):
        self.path = "test.gguf"
        self.metadata = {f"{arch}.{k}": v for k, v in keys.items()}
        self.tensors = {n: _Tensor(np.asarray(v, np.float32)) for n, v in (tensors or {}).items()}

    def tensor_array(self, name):
        return self.tensors[name].a


def _hp(n_rot=64, base=100000.0, n_ctx_train=2048, **kw):
    return HParams.llama(n_vocab=32, n_embd=n_rot * 2, n_layer=2, n_head=2, n_ff=64, n_ctx_train=n_ctx_train,
                         rope_freq_base=base, **kw)


H32 = np.arange(32) / 31
LONG, SHORT = 1 + 3 * H32 ** 2, 1 + 0.1 * H32
CASES = {     # name -> (keys, tensors, n_rot, base, n_ctx_train, n_ctx)
    "smollm2 yarn x4 from 512": ({"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                                  "rope.scaling.original_context_length": 512}, {}, 64, 1e5, 2048, 2048),
    "qwen2.5 yarn x4 from 32768": ({"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                                    "rope.scaling.original_context_length": 32768}, {}, 128, 1e6, 32768, 131072),
    "yarn betas, ext 0.5, attn": ({"rope.scaling.type": "yarn", "rope.scaling.factor": 8.0,
                                   "rope.scaling.original_context_length": 4096, "rope.scaling.yarn_beta_fast": 16.0,
                                   "rope.scaling.yarn_beta_slow": 2.0, "rope.scaling.yarn_ext_factor": 0.5,
                                   "rope.scaling.attn_factor": 0.9}, {}, 128, 5e5, 4096, 8192),
    "yarn ext 0: linear": ({"rope.scaling.type": "yarn", "rope.scaling.factor": 2.0,
                            "rope.scaling.original_context_length": 1024, "rope.scaling.yarn_ext_factor": 0.0,
                            "rope.scaling.yarn_attn_factor": 1.2}, {}, 64, 1e4, 2048, 2048),
    "yarn log multiplier": ({"rope.scaling.type": "yarn", "rope.scaling.factor": 40.0,
                             "rope.scaling.original_context_length": 4096,
                             "rope.scaling.yarn_log_multiplier": 0.707}, {}, 64, 1e4, 4096, 4096),
    "yarn below 1": ({"rope.scaling.type": "yarn", "rope.scaling.factor": 0.5,
                      "rope.scaling.original_context_length": 2048}, {}, 64, 1e4, 2048, 2048),
    "yarn over rope_freqs": ({"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                              "rope.scaling.original_context_length": 512},
                             {"rope_freqs.weight": LONG}, 64, 5e5, 2048, 2048),
    "linear with attn_factor": ({"rope.scaling.type": "linear", "rope.scaling.factor": 2.0,
                                 "rope.scaling.attn_factor": 1.1}, {}, 64, 1e4, 2048, 2048),
    "old rope.scale_linear": ({"rope.scale_linear": 2.0}, {"rope_freqs.weight": SHORT}, 64, 1e4, 2048, 2048),
    "none ignores the factor": ({"rope.scaling.type": "none", "rope.scaling.factor": 4.0},
                                {"rope_freqs.weight": LONG}, 64, 1e4, 2048, 2048),
    "no keys": ({}, {}, 64, 1e4, 2048, 2048),
    "longrope long": ({"rope.scaling.type": "longrope", "rope.scaling.original_context_length": 512,
                       "rope.scaling.attn_factor": 1.1}, {"rope_factors_long.weight": LONG,
                                                          "rope_factors_short.weight": SHORT}, 64, 1e4, 2048, 2048),
    "longrope short": ({"rope.scaling.type": "longrope", "rope.scaling.original_context_length": 512,
                        "rope.scaling.attn_factor": 1.1}, {"rope_factors_long.weight": LONG,
                                                           "rope_factors_short.weight": SHORT}, 64, 1e4, 2048, 512),
    "longrope long by padding": ({"rope.scaling.type": "longrope", "rope.scaling.original_context_length": 500},
                                 {"rope_factors_long.weight": LONG, "rope_factors_short.weight": SHORT},
                                 64, 1e4, 2048, 300),
    "longrope at n_ctx_train, with a factor": ({"rope.scaling.type": "longrope", "rope.scaling.factor": 2.0},
                                               {"rope_factors_long.weight": LONG,
                                                "rope_factors_short.weight": SHORT}, 64, 1e4, 4096, 0),
}


@pytest.mark.parametrize("name", CASES)
def test_table_and_attention_factor_are_llama_cpps(name):
    keys, tensors, n_rot, base, n_train, n_ctx = CASES[name]
    d = declared_rope(_hp(n_rot, base, n_train), FakeGGUF("llama", keys, tensors), n_ctx)
    positions = [0, 1, 7, 100, 511, 2047, n_ctx or n_train]
    want, mscale = llama_cpp_rope(keys, tensors, n_rot, base, n_train, n_ctx or n_train, positions)
    got = np.asarray(positions, np.float64)[:, None] * d.inv_freq.astype(np.float64)[None, :]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert d.inv_freq.dtype == np.float32 and d.inv_freq.size == n_rot // 2
    assert math.isclose(d.attn_factor, mscale, rel_tol=1e-6), (d.attn_factor, mscale)
    assert isinstance(d.description, str) and "\n" not in d.description


def test_yarn_and_longrope_are_transformers():
    T = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for base, orig, s, fast, slow in ((1e5, 512, 4.0, 32.0, 1.0), (5e5, 8192, 8.0, 16.0, 2.0)):
        rs = {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": orig,
              "beta_fast": fast, "beta_slow": slow}
        cfg = T.LlamaConfig(hidden_size=512, num_attention_heads=4, rope_theta=base,
                            max_position_embeddings=orig * 4, rope_scaling=rs)
        inv, attn = ROPE_INIT_FUNCTIONS["yarn"](cfg, torch.device("cpu"))
        keys = {"rope.scaling.type": "yarn", "rope.scaling.factor": s, "rope.scaling.original_context_length": orig,
                "rope.scaling.yarn_beta_fast": fast, "rope.scaling.yarn_beta_slow": slow}
        d = declared_rope(_hp(128, base, orig * 4), FakeGGUF("llama", keys), orig * 4)
        np.testing.assert_allclose(d.inv_freq, inv.numpy(), rtol=2e-6)
        assert math.isclose(d.attn_factor, attn, rel_tol=1e-6)
    orig, n_max = 512, 2048
    cfg = T.LlamaConfig(hidden_size=128, num_attention_heads=2, rope_theta=1e4, max_position_embeddings=n_max,
                        rope_scaling={"rope_type": "longrope", "long_factor": LONG.tolist(),
                                      "short_factor": SHORT.tolist()})
    cfg.original_max_position_embeddings = orig
    tensors = {"rope_factors_long.weight": LONG, "rope_factors_short.weight": SHORT}
    for n in (n_max, orig):
        inv, attn = ROPE_INIT_FUNCTIONS["longrope"](cfg, torch.device("cpu"), seq_len=n)
        keys = {"rope.scaling.type": "longrope", "rope.scaling.original_context_length": orig,
                "rope.scaling.attn_factor": float(np.float32(attn))}     # as llama.cpp's converter writes it
        d = declared_rope(_hp(64, 1e4, n_max), FakeGGUF("llama", keys, tensors), n)
        np.testing.assert_allclose(d.inv_freq, inv.numpy(), rtol=2e-6)
        assert math.isclose(d.attn_factor, attn, rel_tol=1e-6)


def test_unscaled_table_and_train_length_for_the_explicit_methods():
    keys, tensors = CASES["longrope long"][:2]
    d = declared_rope(_hp(64, 1e4), FakeGGUF("llama", keys, tensors), 2048)
    base = 1e4 ** (-np.arange(32) / 32)
    np.testing.assert_allclose(d.unscaled, base / SHORT, rtol=1e-6)         # the model's own, short
    assert d.train_length == 512 and d.scaling == "longrope"
    d = declared_rope(_hp(64, 1e5), FakeGGUF("llama", CASES["smollm2 yarn x4 from 512"][0]), 2048)
    np.testing.assert_allclose(d.unscaled, 1e5 ** (-np.arange(32) / 32), rtol=1e-6)
    # SmolLM2's: 64 * ln(512 / (2 pi beta)) / (2 ln 1e5) = 2.6 (beta 32), 12.2 (beta 1); pairs 0..2
    # keep their frequency, 13.. are divided by 4
    assert d.train_length == 512 and d.fields["corr_dims"] == [2.0, 13.0]
    d = declared_rope(_hp(64, 1e4), FakeGGUF("llama", {}, {"rope_freqs.weight": LONG}), 0)
    np.testing.assert_allclose(d.unscaled, base / LONG, rtol=1e-6)
    assert d.train_length == 2048 and d.attn_factor == 1.0 and d.description == "none"


# ---------------------------------------------------------------------------------------------
# bad declarations
YARN = {"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0, "rope.scaling.original_context_length": 512}
LR = {"rope_factors_long.weight": LONG, "rope_factors_short.weight": SHORT}
BAD = [
    ({"rope.scaling.type": "dynamic"}, {}, r"'llama\.rope\.scaling\.type'.*unknown rope scaling 'dynamic'"),
    ({"rope.scaling.type": "yarn", "rope.scaling.original_context_length": 512}, {},
     r"'llama\.rope\.scaling\.factor': missing"),
    ({"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0}, {},
     r"'llama\.rope\.scaling\.original_context_length': missing"),
    ({**YARN, "rope.scaling.factor": float("nan")}, {}, r"'llama\.rope\.scaling\.factor'.*finite"),
    ({**YARN, "rope.scaling.factor": -2.0}, {}, r"'llama\.rope\.scaling\.factor'"),
    ({**YARN, "rope.scaling.factor": 0.0}, {}, r"'llama\.rope\.scaling\.factor': 0 \(no scaling\) with"),
    ({**YARN, "rope.scaling.original_context_length": 0}, {}, r"original_context_length.*positive"),
    ({**YARN, "rope.scaling.yarn_beta_fast": 1.0, "rope.scaling.yarn_beta_slow": 2.0}, {},
     r"'llama\.rope\.scaling\.yarn_beta_fast'.*above yarn_beta_slow"),
    ({**YARN, "rope.scaling.attn_factor": 0.0}, {}, r"'llama\.rope\.scaling\.attn_factor'.*positive"),
    ({**YARN, "rope.scaling.factor": "4"}, {}, r"'llama\.rope\.scaling\.factor'.*not a finite number"),
    ({"rope.scaling.type": "longrope"}, {"rope_factors_long.weight": LONG}, r"needs rope_factors_long.*short"),
    ({"rope.scaling.type": "longrope"}, {**LR, "rope_freqs.weight": LONG}, r"and no rope_freqs"),
    ({"rope.scaling.type": "longrope"}, {**LR, "rope_factors_long.weight": LONG[:16]},
     r"tensor 'rope_factors_long\.weight' must be F32 with 32 values"),
    ({"rope.scaling.type": "longrope"}, {**LR, "rope_factors_short.weight": -SHORT},
     r"'rope_factors_short\.weight' has non-positive"),
    (YARN, LR, r"'rope_factors_long\.weight' is only read with rope\.scaling\.type = longrope"),
    ({}, {"rope_freqs.weight": np.r_[LONG[:31], np.inf]}, r"'rope_freqs\.weight' has non-positive or non-finite"),
]


@pytest.mark.parametrize("keys,tensors,match", BAD)
def test_bad_declarations_name_the_key(keys, tensors, match):
    with pytest.raises(ClexError, match=match) as e:
        declared_rope(_hp(64, 1e4), FakeGGUF("llama", keys, tensors), 2048)
    assert "\n" not in str(e.value) and str(e.value).startswith("test.gguf: ")


def test_what_one_q_k_scale_cannot_carry():
    partial = dataclasses.replace(_hp(64, 1e4), n_rot=32)        # half the head rotated
    with pytest.raises(ClexError, match="partly rotated head"):
        declared_rope(partial, FakeGGUF("llama", YARN), 2048)
    declared_rope(partial, FakeGGUF("llama", {"rope.scaling.type": "linear", "rope.scaling.factor": 2.0}), 2048)
    g3 = dataclasses.replace(_hp(64, 1e4), arch="gemma3", n_swa=8, swa_layers=(True, False), local_rope_base=1e4)
    with pytest.raises(ClexError, match="sliding-window layers"):
        declared_rope(g3, FakeGGUF("gemma3", YARN), 2048)
    d = declared_rope(g3, FakeGGUF("gemma3", {"rope.scaling.type": "linear", "rope.scaling.factor": 8.0}), 2048)
    assert d.attn_factor == 1.0                      # Gemma 3's linear x8: the global layers only


# ---------------------------------------------------------------------------------------------
# a tiny model with a declared YaRN: the reference forward at llama.cpp's table and q.k scale
def _tiny_yarn(path, keys=YARN, tensors=None):
    cfg = tm.tiny_hparams(n_ctx_train=2048)

    def extra(w):
        for k, v in keys.items():
            k = f"llama.{k}"
            (w.add_string if isinstance(v, str) else w.add_uint32 if isinstance(v, int) else w.add_float32)(k, v)
        for n, v in (tensors or {}).items():
            w.add_tensor(n, np.asarray(v, np.float32))

    tm.write_tiny(path, "f32", cfg, extra=extra)
    return cfg


def test_tiny_model_runs_the_declared_table(tmp_path):
    from clexrt.engine.model import Model

    p = tmp_path / "yarn.gguf"
    cfg = _tiny_yarn(p)
    ids = [(7 * i) % cfg.n_vocab for i in range(600)]        # past the declared 512
    angles, mscale = llama_cpp_rope(YARN, {}, cfg.n_rot, cfg.freq_base, 2048, 2048, [1])
    w = tm.read_weights(p)
    ref = tm.reference_forward(w, cfg, ids, inv_freq=angles[0].astype(np.float32), kq_scale=mscale ** 2)
    with Model(p, n_threads=2) as m:
        assert math.isclose(m.rope_state["attn_factor"], mscale, rel_tol=1e-6)
        np.testing.assert_allclose(m.rope_table, angles[0], rtol=1e-6)
        assert np.abs(m.logits(ids) - ref).max() < 1e-3
    with Model(p, n_threads=2, rope="none") as m:       # an explicit method: the unscaled table
        assert "attn_factor" not in m.rope_state and m.rope_state["train_length"] == 512
        assert np.abs(m.logits(ids[:64]) - tm.reference_forward(w, cfg, ids[:64])).max() < 1e-3


def test_model_and_info_refuse_or_show_the_declaration(tmp_path):
    from clexrt.cli.info import describe
    from clexrt.engine.model import Model

    p = tmp_path / "yarn.gguf"
    _tiny_yarn(p)
    r = CliRunner().invoke(cli, ["info", str(p)])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("rope:"))
    assert "yarn x4 from 512 (beta 32/1, ext 1), q and k x1.139" in line, line
    rope = describe(str(p))["rope"]
    assert rope["declared"]["original_context_length"] == 512 and rope["declared"]["corr_dims"] == [0.0, 4.0]   # 16 dims, base 1e4: 0.8, 3.8
    bad = tmp_path / "bad.gguf"
    _tiny_yarn(bad, {"rope.scaling.type": "su"})
    with pytest.raises(ClexError, match=r"'llama\.rope\.scaling\.type'.*'su'"):
        Model(bad, n_threads=1)
    r = CliRunner().invoke(cli, ["info", str(bad)])
    assert r.exit_code == 0 and "unknown rope scaling 'su'" in r.output, r.output


# ---------------------------------------------------------------------------------------------
# llama-perplexity, live on a tiny F32 checkpoint
def _llama_ppl(model, text, n_ctx, chunks) -> list[float]:
    import re
    import subprocess
    r = subprocess.run([str(BIN / "llama-perplexity"), "-m", str(model), "-f", str(text), "-c", str(n_ctx),
                        "-b", str(n_ctx), "--chunks", str(chunks), "-t", "2", "-ctk", "f32", "-ctv", "f32",
                        "-fa", "off"], capture_output=True, timeout=300, env=dict(os.environ, LD_LIBRARY_PATH=str(BIN)))
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    return [float(v) for v in re.findall(r"\[\d+\](\d+\.\d+),", (r.stdout + r.stderr).decode(errors="replace"))]


def _ours_ppl(model, text, n_ctx, chunks) -> list[float]:
    r = CliRunner().invoke(cli, ["perplexity", "-m", str(model), "-f", str(text), "-c", str(n_ctx),
                                 "--chunks", str(chunks), "-t", "2", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["ctx"] == n_ctx and row["method"] == "none"
    return row["chunk_ppl"]


FACTORS = {"rope_factors_long.weight": np.linspace(1, 4, 8), "rope_factors_short.weight": np.linspace(1, 1.2, 8)}
TINY_VARIANTS = {   # 16 of the tiny checkpoint's 64 positions declared as its training context
    "yarn": ({"context_length": 64, "rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
              "rope.scaling.original_context_length": 16}, {}),
    "longrope-long": ({"context_length": 64, "rope.scaling.type": "longrope", "rope.scaling.attn_factor": 1.1,
                       "rope.scaling.original_context_length": 16}, FACTORS),
    # llama.cpp pads the context to 256 before it compares: -c 64 is short against 256
    "longrope-short": ({"context_length": 1024, "rope.scaling.type": "longrope", "rope.scaling.attn_factor": 1.1,
                        "rope.scaling.original_context_length": 256}, FACTORS),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY_VARIANTS)
def test_llama_perplexity_on_a_tiny_declared_checkpoint(tmp_path, name):
    if not (BIN / "llama-perplexity").is_file():
        pytest.skip(f"llama.cpp's llama-perplexity is not in {BIN} (set CLEXRT_LLAMA_CPP_BIN)")
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    import hfgen

    hfgen.make_tf_checkpoint(tmp_path / "ckpt", hfgen.TFSpec("llama"))
    plain = tmp_path / "plain.gguf"
    r = CliRunner().invoke(cli, ["convert", str(tmp_path / "ckpt"), "-o", str(plain), "--outtype", "f32",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    keys, tensors = TINY_VARIANTS[name]
    path = tmp_path / f"{name}.gguf"
    declared_copy(str(plain), str(path), keys, tensors)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(hfgen.CORPUS * 4), encoding="utf-8")
    theirs, ours = _llama_ppl(path, text, 64, 3), _ours_ppl(path, text, 64, 3)
    assert len(theirs) == 3
    worst = max(abs(a / b - 1) for a, b in zip(ours, theirs))
    assert worst < 2e-4, (ours, theirs)
    plain_ppl = _llama_ppl(plain, text, 64, 3)      # the declaration matters: the plain file scores otherwise
    assert max(abs(a / b - 1) for a, b in zip(plain_ppl, theirs)) > 1e-2, (plain_ppl, theirs)


# ---------------------------------------------------------------------------------------------
# SmolLM2 copies against llama-perplexity's recorded numbers
REC = json.loads(DATA.read_text(encoding="utf-8"))
CHUNKS = int(os.environ.get("CLEXRT_DECLARED_CHUNKS", "2"))
TOL_PPL = 5e-4      # issue 16 asks 0.5%; F32 weights, f32 KV caches: <= 5e-6 measured (print rounding)


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def gpl3():
    t = Path(REC["text"]["path"])
    if not t.is_file() or _sha256(t) != REC["text"]["sha256"]:
        pytest.skip(f"{t} (sha256 {REC['text']['sha256'][:12]}...) is not on this machine")
    return t


@pytest.fixture(scope="module")
def smollm2_f32(smollm2, tmp_path_factory):
    """SmolLM2's F32 copy (tests/f32copy.py), the weights llama.cpp ran."""
    from f32copy import f32_copy, tensor_data_sha256

    assert _sha256(smollm2) == REC["source"]["sha256"], (
        f"{smollm2} is not the file llama.cpp was measured on: re-run tools/record_declared_scaling.py")
    folder = tmp_path_factory.mktemp("declared")
    if shutil.disk_usage(folder).free < 2 << 30:
        pytest.skip(f"less than 2 GB free in {folder} for two 540 MB F32 copies")
    path = folder / "smollm2-f32.gguf"
    f32_copy(smollm2, str(path))
    assert tensor_data_sha256(str(path)) == REC["source"]["f32_tensor_data_sha256"]
    yield path
    path.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REC["variants"]))
def test_smollm2_copy_perplexity_is_llama_perplexitys(smollm2_f32, gpl3, tmp_path, name):
    v = REC["variants"][name]
    path = tmp_path / f"smollm2-{name}.gguf"
    declared_copy(str(smollm2_f32), str(path), v["keys"], v["tensors"])
    assert _sha256(path) == v["copy_sha256"]                    # the file llama.cpp ran
    for n_ctx, rec in v["perplexity"].items():
        assert CHUNKS <= rec["chunks"]
        theirs = rec["running_ppl"][:CHUNKS]
        ours = _ours_ppl(path, gpl3, int(n_ctx), CHUNKS)
        worst = max(abs(a / b - 1) for a, b in zip(ours, theirs))
        assert worst <= TOL_PPL, f"{name} ctx {n_ctx}: ours {ours}, llama-perplexity {theirs} ({worst:.3%})"
    # and the declaration matters: llama.cpp scores the unchanged file otherwise at ctx 2048
    plain, scaled = REC["plain"]["running_ppl"], v["perplexity"]["2048"]["running_ppl"]
    assert min(abs(a / b - 1) for a, b in zip(plain, scaled)) > 0.03
