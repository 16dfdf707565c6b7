"""The architectures `clexrt convert` reads, as data: for each, the config.json names that select
it, the GGUF architecture llama.cpp's converter writes for it, the HF -> GGUF tensor names with
the shapes config.json implies, what is done to the weights on the way (the q/k permutation, the
Gemma norms' +1, GPT-NeoX's fused q/k/v reordered, Mixtral's experts stacked) and the keys beyond
the common ones. The facts are those of llama.cpp's
convert_hf_to_gguf.py and gguf-py (constants.py, tensor_mapping.py); adding an architecture is a
new ArchSpec, never a new converter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from clexrt.errors import ConvertError
from clexrt.gguf.archs import arch_spec

from . import arch_keys as K

# Shapes in torch order ([out, in]), by kind: e = hidden size, q = heads * head dim,
# kv = kv heads * head dim, f = FFN width, h = head dim, x = experts.
_SHAPES: dict[str, Callable] = {
    "e": lambda hp: (hp.n_embd,),
    "f": lambda hp: (hp.n_ff,),
    "qkv": lambda hp: ((hp.n_head + 2 * hp.n_head_kv) * hp.head_dim, hp.n_embd),
    "qkv_bias": lambda hp: ((hp.n_head + 2 * hp.n_head_kv) * hp.head_dim,),
    "router": lambda hp: (hp.n_expert, hp.n_embd),
    "h": lambda hp: (hp.head_dim,),
    "q": lambda hp: (hp.n_head * hp.head_dim, hp.n_embd),
    "kv": lambda hp: (hp.n_head_kv * hp.head_dim, hp.n_embd),
    "o": lambda hp: (hp.n_embd, hp.n_head * hp.head_dim),
    "q_bias": lambda hp: (hp.n_head * hp.head_dim,),
    "kv_bias": lambda hp: (hp.n_head_kv * hp.head_dim,),
    "ff_in": lambda hp: (hp.n_ff, hp.n_embd),
    "ff_out": lambda hp: (hp.n_embd, hp.n_ff),
}

# (HF name inside model.layers.N., GGUF name inside blk.N., shape kind)
_ATTN = (
    ("self_attn.q_proj.weight", "attn_q.weight", "q"),
    ("self_attn.k_proj.weight", "attn_k.weight", "kv"),
    ("self_attn.v_proj.weight", "attn_v.weight", "kv"),
    ("self_attn.o_proj.weight", "attn_output.weight", "o"),
)
_MLP = (
    ("mlp.gate_proj.weight", "ffn_gate.weight", "ff_in"),
    ("mlp.up_proj.weight", "ffn_up.weight", "ff_in"),
    ("mlp.down_proj.weight", "ffn_down.weight", "ff_out"),
)
LLAMA_LAYER = (("input_layernorm.weight", "attn_norm.weight", "e"), *_ATTN,
               ("post_attention_layernorm.weight", "ffn_norm.weight", "e"), *_MLP)
QWEN2_LAYER = LLAMA_LAYER + (
    ("self_attn.q_proj.bias", "attn_q.bias", "q_bias"),
    ("self_attn.k_proj.bias", "attn_k.bias", "kv_bias"),
    ("self_attn.v_proj.bias", "attn_v.bias", "kv_bias"),
)
GEMMA3_LAYER = (
    ("input_layernorm.weight", "attn_norm.weight", "e"), *_ATTN,
    ("self_attn.q_norm.weight", "attn_q_norm.weight", "h"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight", "h"),
    ("post_attention_layernorm.weight", "post_attention_norm.weight", "e"),
    ("pre_feedforward_layernorm.weight", "ffn_norm.weight", "e"),
    ("post_feedforward_layernorm.weight", "post_ffw_norm.weight", "e"),
    *_MLP,
)
# Mixtral: the router, then each expert's w1 (gate), w3 (up), w2 (down). An HF name with {e}
# is one tensor per expert, stacked into one GGUF tensor [expert, rows, cols] as llama.cpp's
# converter merges them (GGUF dims [cols, rows, n_expert]).
MIXTRAL_LAYER = LLAMA_LAYER[:6] + (
    ("block_sparse_moe.gate.weight", "ffn_gate_inp.weight", "router"),
    ("block_sparse_moe.experts.{e}.w1.weight", "ffn_gate_exps.weight", "ff_in"),
    ("block_sparse_moe.experts.{e}.w3.weight", "ffn_up_exps.weight", "ff_in"),
    ("block_sparse_moe.experts.{e}.w2.weight", "ffn_down_exps.weight", "ff_out"),
)


def _with_bias(pairs):
    """(HF, GGUF, kind, bias kind) -> the weight and its bias, both named as the weight is."""
    out = []
    for hf, gg, kind, bias in pairs:
        out += [(hf + ".weight", gg + ".weight", kind), (hf + ".bias", gg + ".bias", bias)]
    return tuple(out)


# Phi-2: one LayerNorm per layer feeding attention and MLP in parallel; biases everywhere
PHI2_LAYER = _with_bias((
    ("input_layernorm", "attn_norm", "e", "e"),
    ("self_attn.q_proj", "attn_q", "q", "q_bias"),
    ("self_attn.k_proj", "attn_k", "kv", "kv_bias"),
    ("self_attn.v_proj", "attn_v", "kv", "kv_bias"),
    ("self_attn.dense", "attn_output", "o", "e"),
    ("mlp.fc1", "ffn_up", "ff_in", "f"),
    ("mlp.fc2", "ffn_down", "ff_out", "e"),
))
# GPT-NeoX: fused q/k/v (reordered, see neox_qkv), two LayerNorms, biases everywhere
GPTNEOX_LAYER = _with_bias((
    ("input_layernorm", "attn_norm", "e", "e"),
    ("attention.query_key_value", "attn_qkv", "qkv", "qkv_bias"),
    ("attention.dense", "attn_output", "o", "e"),
    ("post_attention_layernorm", "ffn_norm", "e", "e"),
    ("mlp.dense_h_to_4h", "ffn_up", "ff_in", "f"),
    ("mlp.dense_4h_to_h", "ffn_down", "ff_out", "e"),
))

# model-level tensors: (HF name, GGUF name, shape kind), the embedding first; the outputs are
# added unless the embeddings are tied
GLOBAL_TENSORS = (("model.embed_tokens.weight", "token_embd.weight", "vocab"),
                  ("model.norm.weight", "output_norm.weight", "e"))
OUTPUT_TENSOR = ("lm_head.weight", "output.weight", "vocab")
PHI2_GLOBALS = (("model.embed_tokens.weight", "token_embd.weight", "vocab"),
                ("model.final_layernorm.weight", "output_norm.weight", "e"),
                ("model.final_layernorm.bias", "output_norm.bias", "e"))
PHI2_OUTPUTS = (OUTPUT_TENSOR, ("lm_head.bias", "output.bias", "vocab_bias"))
GPTNEOX_GLOBALS = (("gpt_neox.embed_in.weight", "token_embd.weight", "vocab"),
                   ("gpt_neox.final_layer_norm.weight", "output_norm.weight", "e"),
                   ("gpt_neox.final_layer_norm.bias", "output_norm.bias", "e"))
GPTNEOX_OUTPUTS = (("embed_out.weight", "output.weight", "vocab"),)


def neox_qkv(a: np.ndarray, hp) -> np.ndarray:
    """GPT-NeoX's query_key_value rows come per head as [q_h; k_h; v_h]; llama.cpp's converter
    (and its gptneox graph) wants [q of every head; k of every head; v of every head]."""
    lead = (hp.n_head, 3, hp.head_dim)
    return np.ascontiguousarray(a.reshape(*lead, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape))


@dataclass(frozen=True)
class ArchSpec:
    name: str                          # what errors and notes call it
    hf_architectures: tuple[str, ...]  # config.json "architectures" that select it
    model_types: tuple[str, ...]       # config.json "model_type" when "architectures" is absent
    gguf_arch: str                     # general.architecture
    layer: tuple                       # (HF, GGUF, shape kind) per layer
    act_key: str                       # the config key naming the FFN activation ...
    act: str | tuple[str, ...]         # ... and the values it may have (the first: the default)
    ffn: str                           # HParams.ffn: swiglu | geglu | gelu
    permute_qk: bool                   # llama.cpp's undo of rotate_half (adjacent pairs); else NEOX
    rope_types: tuple[str, ...]        # rope_scaling types accepted
    norm_offset: float = 0.0           # added to every *norm.weight (Gemma's RMSNorm is x*(1+w))
    # transformers' config defaults for the keys we read, where they differ from LLaMA's
    defaults: dict = field(default_factory=dict)
    # the common keys llama.cpp's converter writes for this architecture beyond the base set
    vocab_size_key: bool = False       # {arch}.vocab_size
    rope_dim_key: bool = False         # {arch}.rope.dimension_count
    always_head_dim_key: bool = False  # key/value_length even when config.json has no head_dim
    extra_keys: Callable[[dict, object, list], dict] | None = None   # (config, hparams, notes)
    tokenizer_keys: Callable[[bool], dict] | None = None             # (has tokenizer.model)
    check: Callable[[dict], None] | None = None                      # refusals beyond the common ones
    # where the HF names live, and the model-level tensors (see GLOBAL_TENSORS)
    prefix: str = "model.layers.{i}."
    globals: tuple = GLOBAL_TENSORS
    outputs: tuple = (OUTPUT_TENSOR,)
    clex_prefix: str = "model.clex_layer."    # the CLEX layer's weights (the official name)
    official_clex: bool = False        # the official CLEX code patches it (its head_dim rule)
    norm: str = "rms"                  # HParams.norm: rms | layer
    eps_key: str = "rms_norm_eps"
    theta_keys: tuple[str, ...] = ("rope_theta",)      # the rope base: the first present
    rotary_keys: tuple[str, ...] = ()  # the rotated fraction of each head: the first present
    parallel_key: str | None = None    # config key of a parallel residual (None: sequential)
    parallel_default: bool = False
    experts: bool = False              # num_local_experts / num_experts_per_tok
    refused_flags: tuple[str, ...] = ("attention_bias", "mlp_bias")   # refused when true
    transforms: dict = field(default_factory=dict)     # GGUF name suffix -> f(array, hparams)
    # the {arch}.* keys in place of schema.hparams_metadata's, where llama.cpp writes other ones
    base_keys: Callable[[object, dict, list], dict] | None = None     # (hparams, config, notes)

    def layer_shapes(self, hp) -> list[tuple[str, str, tuple[int, ...]]]:
        return [(hf, gg, shape(kind, hp)) for hf, gg, kind in self.layer]

    @property
    def acts(self) -> tuple[str, ...]:
        return (self.act,) if isinstance(self.act, str) else self.act


def shape(kind: str, hp) -> tuple[int, ...]:
    if kind == "vocab":
        return (hp.n_vocab, hp.n_embd)
    if kind == "vocab_bias":
        return (hp.n_vocab,)
    return _SHAPES[kind](hp)


# -- per-architecture keys and checks ---------------------------------------------------------
def _sliding_window(cfg: dict, key: str = "sliding_window") -> int | None:
    v = cfg.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConvertError(f"config.json: {key!r} must be a positive integer or null, got {v!r}")
    return v


def _mistral_keys(cfg: dict, hp, notes: list) -> dict:
    # llama.cpp's converter drops it (its llama graph has no window); written for our runtime
    w = _sliding_window(cfg)
    return {} if w is None else {"llama.attention.sliding_window": w}


def _qwen2_check(cfg: dict) -> None:
    if cfg.get("use_sliding_window"):
        raise ConvertError("config.json: use_sliding_window true is not supported for Qwen2 "
                           "(llama.cpp's qwen2 has no sliding window)")


def _gemma3_check(cfg: dict) -> None:
    if cfg.get("use_bidirectional_attention"):
        raise ConvertError("config.json: use_bidirectional_attention true is not supported "
                           "(a causal Gemma 3 only)")


def gemma3_layer_types(cfg: dict, n_layer: int) -> list[str]:
    """Each layer's attention: config.json's layer_types, else transformers' rule (every
    sliding_window_pattern-th layer, 6 by default, is global)."""
    types = cfg.get("layer_types")
    if types is None:
        p = cfg.get("sliding_window_pattern", cfg.get("_sliding_window_pattern", 6))
        if isinstance(p, bool) or not isinstance(p, int) or p <= 0:
            raise ConvertError(f"config.json: 'sliding_window_pattern' must be a positive integer, got {p!r}")
        return ["sliding_attention" if (i + 1) % p else "full_attention" for i in range(n_layer)]
    if not isinstance(types, list) or len(types) != n_layer:
        raise ConvertError(f"config.json: 'layer_types' must list the {n_layer} layers, got {types!r}")
    bad = [t for t in types if t not in ("sliding_attention", "full_attention")]
    if bad:
        raise ConvertError(f"config.json: 'layer_types' entry {bad[0]!r} is not sliding_attention "
                           f"or full_attention")
    return types


def _finite(cfg: dict, key: str) -> float | None:
    v = cfg.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ConvertError(f"config.json: {key!r} must be a positive number or null, got {v!r}")
    return float(v)


def _gemma3_keys(cfg: dict, hp, notes: list) -> dict:
    a = "gemma3"
    md: dict = {}
    types = gemma3_layer_types(cfg, hp.n_layer)
    swa = [t == "sliding_attention" for t in types]
    window = _sliding_window(cfg)
    if any(swa):
        # llama.cpp's converter writes the window unless sliding_window_pattern is 1 (no
        # sliding layers); its runtime then assumes every 6th layer is global
        if window is None:
            raise ConvertError("config.json: 'sliding_window' is needed: layer_types has sliding layers")
        md[f"{a}.attention.sliding_window"] = window
        if tuple(swa) != arch_spec(a).default_swa_layers(hp.n_layer):
            # the per-layer form llama.cpp's runtime reads (true: sliding) where the pattern differs
            md[f"{a}.attention.sliding_window_pattern"] = np.array(swa, dtype=bool)
            notes.append("layer_types differs from every-6th-layer-global: written as "
                         f"{a}.attention.sliding_window_pattern")
    local_base = _finite(cfg, "rope_local_base_freq")      # the sliding layers' rope base
    if local_base is not None:
        md[f"{a}.rope.freq_base_swa"] = local_base
    final = _finite(cfg, "final_logit_softcapping")
    if final:
        md[f"{a}.final_logit_softcapping"] = final
    attn = _finite(cfg, "attn_logit_softcapping")
    if attn:     # llama.cpp's converter refuses it (Gemma 3 dropped it); written for our runtime
        md[f"{a}.attn_logit_softcapping"] = attn
    qpas = _finite(cfg, "query_pre_attn_scalar")
    if qpas is not None and qpas != hp.head_dim:
        # llama.cpp has no key for it (it recognises the 27B, where it is hidden/heads, by layer count)
        md[f"{a}.attention.scale"] = float(np.float32(qpas ** -0.5))
    return md


def _gemma3_tokenizer(has_spm: bool) -> dict:
    return {"tokenizer.ggml.add_space_prefix": False} if has_spm else {}


# transformers' defaults (LlamaConfig, Qwen2Config, Gemma3TextConfig) for keys a config may omit
_GEMMA3_DEFAULTS = {"hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072,
                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                    "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256,
                    "rope_local_base_freq": 10000.0, "sliding_window": 4096, "tie_word_embeddings": True}

# transformers' MixtralConfig, PhiConfig, GPTNeoXConfig
_MIXTRAL_DEFAULTS = {"max_position_embeddings": 4096 * 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
                     "rope_theta": 1e6, "num_local_experts": 8, "num_experts_per_tok": 2}
_PHI2_DEFAULTS = {"hidden_act": "gelu_new", "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
                  "partial_rotary_factor": 0.5}
_GPTNEOX_DEFAULTS = {"hidden_act": "gelu", "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
                     "rotary_pct": 0.25, "use_parallel_residual": True}

_LLAMA_ROPES = ("linear", "llama3", "clex")
ARCHS = (
    ArchSpec("llama", ("LlamaForCausalLM", "CLEXLlamaForCausalLM"), ("llama",), "llama", LLAMA_LAYER,
             "hidden_act", "silu", "swiglu", permute_qk=True, rope_types=_LLAMA_ROPES,
             vocab_size_key=True, rope_dim_key=True, official_clex=True),
    ArchSpec("mistral", ("MistralForCausalLM",), ("mistral",), "llama", LLAMA_LAYER,
             "hidden_act", "silu", "swiglu", permute_qk=True, rope_types=_LLAMA_ROPES,
             defaults={"sliding_window": 4096},
             vocab_size_key=True, rope_dim_key=True, extra_keys=_mistral_keys),
    ArchSpec("qwen2", ("Qwen2ForCausalLM",), ("qwen2",), "qwen2", QWEN2_LAYER,
             "hidden_act", "silu", "swiglu", permute_qk=False, rope_types=("linear", "clex"),
             check=_qwen2_check),
    ArchSpec("gemma3", ("Gemma3ForCausalLM",), ("gemma3_text",), "gemma3", GEMMA3_LAYER,
             "hidden_activation", "gelu_pytorch_tanh", "geglu", permute_qk=False,
             rope_types=("linear", "clex"), norm_offset=1.0, defaults=_GEMMA3_DEFAULTS,
             always_head_dim_key=True, extra_keys=_gemma3_keys, tokenizer_keys=_gemma3_tokenizer,
             check=_gemma3_check),
    # the official CLEX code's CLEXMixtralForCausalLM and CLEXPhiForCausalLM (its config classes
    # keep model_type mixtral / phi)
    ArchSpec("mixtral", ("MixtralForCausalLM", "CLEXMixtralForCausalLM"), ("mixtral",), "llama",
             MIXTRAL_LAYER, "hidden_act", "silu", "swiglu", permute_qk=True, rope_types=("linear", "clex"),
             defaults=_MIXTRAL_DEFAULTS, vocab_size_key=True, rope_dim_key=True,
             extra_keys=K.mixtral_keys, official_clex=True, experts=True),
    ArchSpec("phi2", ("PhiForCausalLM", "CLEXPhiForCausalLM"), ("phi",), "phi2", PHI2_LAYER,
             "hidden_act", ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"), "gelu", permute_qk=False,
             rope_types=("clex",), defaults=_PHI2_DEFAULTS, tokenizer_keys=K.phi2_tokenizer,
             check=K.phi2_check, globals=PHI2_GLOBALS, outputs=PHI2_OUTPUTS, official_clex=True,
             norm="layer", eps_key="layer_norm_eps", rotary_keys=("partial_rotary_factor",),
             parallel_default=True, refused_flags=(), base_keys=K.phi2_keys),
    # the paper's other RoPE model; a CLEX GPT-NeoX keeps the official layer's names under its
    # base model (gpt_neox.clex_layer.*)
    ArchSpec("gptneox", ("GPTNeoXForCausalLM",), ("gpt_neox",), "gptneox", GPTNEOX_LAYER,
             "hidden_act", ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"), "gelu",
             permute_qk=False, rope_types=("clex",), defaults=_GPTNEOX_DEFAULTS,
             check=K.gptneox_check, prefix="gpt_neox.layers.{i}.", globals=GPTNEOX_GLOBALS,
             outputs=GPTNEOX_OUTPUTS, clex_prefix="gpt_neox.clex_layer.", norm="layer",
             eps_key="layer_norm_eps", theta_keys=("rotary_emb_base", "rope_theta"),
             rotary_keys=("rotary_pct", "partial_rotary_factor"), parallel_key="use_parallel_residual", parallel_default=True,
             refused_flags=(), transforms={"attn_qkv.weight": neox_qkv, "attn_qkv.bias": neox_qkv},
             base_keys=K.gptneox_keys),
)
SUPPORTED_ARCHITECTURES = tuple(a for spec in ARCHS for a in spec.hf_architectures)


def arch_for(cfg: dict) -> ArchSpec:
    """The ArchSpec config.json selects, or a ConvertError naming the ones we convert."""
    archs = cfg.get("architectures")
    if archs is not None:
        if not isinstance(archs, list) or not archs:
            raise ConvertError(f"config.json: 'architectures' must be a list, got {archs!r}")
        for spec in ARCHS:
            if any(a in spec.hf_architectures for a in archs):
                return spec
        raise ConvertError(f"unsupported architecture {', '.join(map(str, archs))}; "
                           f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    mt = cfg.get("model_type")
    for spec in ARCHS:
        if mt in spec.model_types:
            return spec
    raise ConvertError(f"unsupported model_type {mt!r} (no 'architectures'); "
                       f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")


# -- rope_freqs.weight for rope_scaling type llama3 -------------------------------------------
def llama3_rope_factors(base: float, dim: int, factor: float, low_freq_factor: float,
                        high_freq_factor: float, old_context_len: int) -> np.ndarray:
    """The frequency divisors llama.cpp's converter bakes for Llama 3.x, float32 [dim/2], with
    its operations in its order (torch's a/b on a tensor is b's reciprocal times a). The one
    difference: torch's float32 pow is not numpy's; a float64 pow rounded to float32 is closest
    to it (within an ulp of a divisor)."""
    F = np.float32
    e = np.arange(0, dim, 2, dtype=F) / F(dim)
    freqs = F(1) / (np.float64(F(base)) ** e.astype(np.float64)).astype(F)
    wavelen = (F(1) / freqs) * F(2 * math.pi)
    low_wavelen, high_wavelen = old_context_len / low_freq_factor, old_context_len / high_freq_factor
    smooth = ((F(1) / wavelen) * F(old_context_len) - F(low_freq_factor)) / F(high_freq_factor - low_freq_factor)
    blend = F(1) / ((F(1) - smooth) / F(factor) + smooth)
    out = np.where(wavelen < F(high_wavelen), F(1), np.where(wavelen > F(low_wavelen), F(factor), blend))
    return out.astype(F)
