"""HF LLaMA (plain or CLEX) -> GGUF plan: tensor names, layouts, types and metadata."""
from __future__ import annotations

import numpy as np

from clexrt.errors import ConvertError

from clexrt.rope.ode import ClexODE
from clexrt.gguf.schema import hparams_metadata
from clexrt.rope import base_inv_freq, bake_clex

from .gguf_out import FILE_TYPES, MIX_OUTTYPES, OUTTYPES, Plan, TensorPlan, permute_qk, weight_type
from .hf import HFCheckpoint

# HF name (per layer) -> GGUF name
LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _tensor_plans(ckpt: HFCheckpoint, outtype: str, notes: list[str]) -> list[TensorPlan]:
    cfg = ckpt.config
    plans: list[TensorPlan] = []

    def add(gguf_name: str, hf_name: str, transform=None):
        shape = ckpt.shape(hf_name)
        tid = weight_type(outtype, shape, gguf_name, notes)

        def load(hf_name=hf_name, transform=transform):
            a = ckpt.load(hf_name)
            return transform(a) if transform else a

        plans.append(TensorPlan(gguf_name, tuple(shape), tid, load, source=hf_name))

    add("token_embd.weight", "model.embed_tokens.weight")
    for i in range(cfg.hparams.n_layer):
        for hf, gg in LAYER_MAP.items():
            tr = None
            if hf == "self_attn.q_proj.weight":
                tr = lambda a: permute_qk(a, cfg.hparams.n_head)      # noqa: E731
            elif hf == "self_attn.k_proj.weight":
                tr = lambda a: permute_qk(a, cfg.hparams.n_head_kv)   # noqa: E731
            add(f"blk.{i}.{gg}", f"model.layers.{i}.{hf}", tr)
    add("output_norm.weight", "model.norm.weight")
    if not cfg.hparams.tied_embeddings:
        add("output.weight", "lm_head.weight")
    return plans


def _clex_keys(ckpt: HFCheckpoint, clex_init: str | None, clex_max_factor: int | None,
               notes: list[str]) -> dict:
    cfg = ckpt.config
    d = cfg.hparams.head_dim
    if clex_init is None:
        clex_init = "ode" if cfg.clex else None
    if clex_init is None:
        if clex_max_factor is not None:
            raise ConvertError("--clex-max-factor needs --clex-init ntk for a checkpoint without CLEX weights")
        return {}
    if clex_init not in ("ode", "ntk"):
        raise ConvertError(f"--clex-init must be ode or ntk, got {clex_init!r}")
    if clex_init == "ode" and not cfg.clex:
        raise ConvertError("--clex-init ode needs a CLEX checkpoint (rope_scaling type 'clex'); "
                           "use --clex-init ntk for any other RoPE model")
    if cfg.hparams.rope_scaling_type is not None:
        raise ConvertError("CLEX tables cannot be combined with linear rope scaling")
    if cfg.clex:
        inv = ckpt.load("model.clex_layer.inv_freq").astype(np.float32)
        if np.any(inv <= 0):
            raise ConvertError("model.clex_layer.inv_freq has non-positive values")
        m = clex_max_factor or cfg.clex.max_factor
        act, dt, log_scale, pf = cfg.clex.act, cfg.clex.time_dt, cfg.clex.log_scale, cfg.clex.param_factor
    else:
        if not clex_max_factor:
            raise ConvertError("--clex-init ntk needs --clex-max-factor M")
        inv = base_inv_freq(cfg.hparams.rope_freq_base, d, convention="hf")
        m, act, dt, log_scale, pf = clex_max_factor, "tanh", 0.01, True, 0
    if m < 1 or m > 1024:
        raise ConvertError(f"CLEX max_factor must be in 1..1024, got {m}")
    if clex_init == "ode":
        ode = ClexODE(inv, act=act, time_dt=dt,
                      up=ckpt.load("model.clex_layer.proj_func.ode_up_proj"),
                      down=ckpt.load("model.clex_layer.proj_func.ode_down_proj"))
    else:
        ode, pf = ClexODE(inv, act=act, time_dt=dt), 0
    md = bake_clex(ode, cfg.hparams.n_ctx_train, m, clex_init, param_factor=pf, log_scale=log_scale)
    n_grid = md["clex.grid"].size
    notes.append(f"CLEX ({clex_init}): tables for t in 1..{m} at {n_grid} grid points, "
                 f"L = {cfg.hparams.n_ctx_train}, d = {d}")
    return md


def _mixture_types(plan: Plan, outtype: str, hp) -> None:
    """Each tensor's type as llama-quantize gives it when quantizing the F32 file to outtype."""
    from collections import Counter

    from .mixture import choose_types
    from clexrt.gguf.constants import GGML_TYPES

    entries = [(t.name, tuple(t.shape[::-1]), t.type_id) for t in plan.tensors]
    types = choose_types(entries, outtype, "llama", hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_expert)
    for t in plan.tensors:
        t.type_id = types[t.name]
    counts = Counter(GGML_TYPES[t.type_id][0] for t in plan.tensors)
    plan.notes.append(f"{outtype.upper()}: llama-quantize's mixture: "
                      + ", ".join(f"{n} {name}" for name, n in counts.most_common()))


def build_plan(ckpt: HFCheckpoint, outtype: str = "f16", vocab_only: bool = False,
               clex_init: str | None = None, clex_max_factor: int | None = None) -> Plan:
    from .vocab import tokenizer_metadata

    outtype = outtype.lower() if isinstance(outtype, str) else outtype
    if outtype not in OUTTYPES + MIX_OUTTYPES:
        raise ConvertError(f"unknown outtype {outtype!r}; supported: {', '.join(OUTTYPES + MIX_OUTTYPES)}")
    cfg = ckpt.config
    plan = Plan()
    ignored = [] if vocab_only else ckpt.check_tensors()
    plan.add("general.architecture", "llama")
    plan.add("general.name", cfg.name or "model")
    if not vocab_only:
        plan.add("general.file_type", FILE_TYPES[outtype])
        if outtype not in ("f32", "f16", "bf16"):
            plan.add("general.quantization_version", 2)
    for key, value in hparams_metadata(cfg.hparams).items():
        plan.add(key, value)
    tok_md, tok_notes = tokenizer_metadata(ckpt)
    for k, v in tok_md.items():
        plan.add(k, v)
    plan.notes.extend(tok_notes)
    if not vocab_only:
        for k, v in _clex_keys(ckpt, clex_init, clex_max_factor, plan.notes).items():
            plan.add(k, v)
        if outtype in MIX_OUTTYPES:
            plan.tensors = _tensor_plans(ckpt, "f32", plan.notes)
            _mixture_types(plan, outtype, cfg.hparams)
        else:
            plan.tensors = _tensor_plans(ckpt, outtype, plan.notes)
    if ignored:
        plan.notes.append(f"ignored: {', '.join(ignored)}")
    return plan
