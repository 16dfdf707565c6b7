"""HF checkpoint (any architecture of convert/arch.py, plain or CLEX) -> GGUF plan: tensor
names, layouts, types and metadata."""
from __future__ import annotations

import numpy as np

from clexrt.errors import ConvertError

from clexrt.rope.ode import ClexODE
from clexrt.gguf.schema import hparams_metadata
from clexrt.rope import base_inv_freq, bake_clex

from .arch import llama3_rope_factors
from .gguf_out import FILE_TYPES, MIX_OUTTYPES, OUTTYPES, Plan, TensorPlan, permute_qk, weight_type
from .hf import HFCheckpoint


def _transform(spec, hp, gguf_name: str):
    """What llama.cpp's converter does to a weight on its way: the q/k permutation (rotate_half
    to adjacent pairs) where the architecture rotates adjacent pairs, the +1 of Gemma's norms,
    and the architecture's own (GPT-NeoX's q/k/v order)."""
    kind = gguf_name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    if spec.permute_qk and kind in ("attn_q", "attn_k"):
        n = hp.n_head if kind == "attn_q" else hp.n_head_kv
        return lambda a: permute_qk(a, n)
    if spec.norm_offset and gguf_name.endswith("norm.weight"):
        off = np.float32(spec.norm_offset)
        return lambda a: a + off
    own = spec.transforms.get(gguf_name.split(".", 2)[-1] if gguf_name.startswith("blk.") else gguf_name)
    if own:
        return lambda a: own(a, hp)
    return None


def _tensor_plans(ckpt: HFCheckpoint, outtype: str, notes: list[str]) -> list[TensorPlan]:
    cfg = ckpt.config
    hp, spec = cfg.hparams, cfg.arch
    plans: list[TensorPlan] = []

    def add(gguf_name: str, hf_names: list[str]):
        # one HF tensor, or one per expert stacked [expert, rows, cols]
        one = ckpt.shape(hf_names[0])
        shape = tuple(one) if len(hf_names) == 1 else (len(hf_names), *one)
        tid = weight_type(outtype, shape, gguf_name, notes)

        def load(hf_names=hf_names, transform=_transform(spec, hp, gguf_name)):
            a = ckpt.load(hf_names[0]) if len(hf_names) == 1 else np.stack([ckpt.load(n) for n in hf_names])
            return transform(a) if transform else a

        source = hf_names[0] if len(hf_names) == 1 else f"{hf_names[0]} .. ({len(hf_names)} experts)"
        plans.append(TensorPlan(gguf_name, shape, tid, load, source=source))

    if cfg.llama3:
        r = cfg.llama3
        factors = llama3_rope_factors(hp.freq_base, hp.head_dim, r.factor, r.low_freq_factor,
                                      r.high_freq_factor, r.original_max_position_embeddings)
        plans.append(TensorPlan("rope_freqs.weight", factors.shape, weight_type(outtype, factors.shape, "rope_freqs.weight", notes),
                                lambda: factors, source="rope_scaling llama3"))
    tensors = cfg.model_tensors()
    add(tensors[0][1], [tensors[0][0]])
    for i in range(hp.n_layer):
        for hf_names, gg, _ in cfg.layer_names(i):
            add(gg, hf_names)
    for hf, gg, _ in tensors[1:]:
        add(gg, [hf])
    return plans


def _arch_metadata(cfg, notes: list[str]) -> dict:
    """The {arch}.* keys as llama.cpp's converter writes them for this architecture, and ours."""
    hp, spec, a = cfg.hparams, cfg.arch, cfg.hparams.arch
    if spec.base_keys:
        md = spec.base_keys(hp, cfg.cfg, notes)
    else:
        md = hparams_metadata(hp)
        if not spec.vocab_size_key:
            md.pop(f"{a}.vocab_size", None)
        if not spec.rope_dim_key:
            md.pop(f"{a}.rope.dimension_count", None)
    if spec.always_head_dim_key or cfg.cfg.get("head_dim") is not None:
        md[f"{a}.attention.key_length"] = md[f"{a}.attention.value_length"] = hp.head_dim
    if spec.extra_keys:
        md.update(spec.extra_keys(cfg.cfg, hp, notes))
    return md


def _clex_keys(ckpt: HFCheckpoint, clex_init: str | None, clex_max_factor: int | None,
               notes: list[str]) -> dict:
    cfg = ckpt.config
    d = cfg.hparams.n_rot          # the CLEX layer covers the rotated part of the head only
    names = cfg.clex_names()
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
    if cfg.hparams.rope_scaling_type is not None or cfg.llama3:
        kind = "llama3" if cfg.llama3 else cfg.hparams.rope_scaling_type
        raise ConvertError(f"CLEX tables cannot be combined with {kind} rope scaling")
    if cfg.clex:
        inv = ckpt.load(names["inv"]).astype(np.float32)
        if np.any(inv <= 0):
            raise ConvertError(f"{names['inv']} has non-positive values")
        if cfg.clex.defaulted:
            notes.append(f"rope_scaling lacks {', '.join(cfg.clex.defaulted)}: the early official "
                         f"layer's act {cfg.clex.act!r}, time_dt {cfg.clex.time_dt:g}")
        m = clex_max_factor or cfg.clex.max_factor
        act, dt, log_scale, pf = cfg.clex.act, cfg.clex.time_dt, cfg.clex.log_scale, cfg.clex.param_factor
    else:
        if not clex_max_factor:
            raise ConvertError("--clex-init ntk needs --clex-max-factor M")
        inv = base_inv_freq(cfg.hparams.rope_freq_base, d, convention="hf")
        # no network: within L the file is the plain model; the official flash path's log_scale
        # belongs to a trained CLEX checkpoint's config, so it is written off
        m, act, dt, log_scale, pf = clex_max_factor, "tanh", 0.01, False, 0
    if m < 1 or m > 1024:
        raise ConvertError(f"CLEX max_factor must be in 1..1024, got {m}")
    if clex_init == "ode":
        ode = ClexODE(inv, act=act, time_dt=dt,
                      up=ckpt.load(names["up"]), down=ckpt.load(names["down"]))
    else:
        ode, pf = ClexODE(inv, act=act, time_dt=dt), 0
    md = bake_clex(ode, cfg.hparams.n_ctx_train, m, clex_init, param_factor=pf, log_scale=log_scale)
    n_grid = md["clex.grid"].size
    notes.append(f"CLEX ({clex_init}): tables for t in 1..{m} at {n_grid} grid points, "
                 f"L = {cfg.hparams.n_ctx_train}, d = {d}"
                 + (f" (the rotary part of the {cfg.hparams.head_dim}-wide head)" if d != cfg.hparams.head_dim else ""))
    return md


def _mixture_types(plan: Plan, outtype: str, hp) -> None:
    """Each tensor's type as llama-quantize gives it when quantizing the F32 file to outtype."""
    from collections import Counter

    from .mixture import choose_types
    from clexrt.gguf.constants import GGML_TYPES

    entries = [(t.name, tuple(t.shape[::-1]), t.type_id) for t in plan.tensors]
    types = choose_types(entries, outtype, hp.arch, hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_expert)
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
    plan.add("general.architecture", cfg.hparams.arch)
    plan.add("general.name", cfg.name or "model")
    if not vocab_only:
        plan.add("general.file_type", FILE_TYPES[outtype])
        if outtype not in ("f32", "f16", "bf16"):
            plan.add("general.quantization_version", 2)
    for key, value in _arch_metadata(cfg, plan.notes).items():
        plan.add(key, value)
    tok_md, tok_notes = tokenizer_metadata(ckpt)
    if cfg.arch.tokenizer_keys:
        tok_md.update(cfg.arch.tokenizer_keys(ckpt.has("tokenizer.model")))
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
