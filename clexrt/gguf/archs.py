"""The architectures clexrt runs, as data: what each GGUF architecture name means for the one
forward pass of the C core (norm, rope layout, FFN, residual wiring), which tensors a layer has
(required or optional, and their shapes), and the per-architecture rules llama.cpp applies to
its keys (embedding scale, sliding-window layers, the local layers' rope base, the attention
scale). A new architecture is an entry here, not new code in the forward pass.

Shapes are written in symbols that schema.py resolves for the model at hand: E (embedding
width), Q (n_head * head_dim), KV (n_head_kv * head_dim), QKV (Q + 2 KV), F (FFN width),
D (head_dim), X (experts). A tensor's group says when it belongs to the layer: "" always,
"dense" / "moe" for an FFN without / with experts ({arch}.expert_count), "qkv" / "fused" for
separate q, k, v projections / one attn_qkv (whichever the file has, where the arch allows both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ArchSpec", "LayerTensor", "ARCHS", "SUPPORTED_ARCHS", "arch_spec", "layer_tensors"]


@dataclass(frozen=True)
class LayerTensor:
    name: str                  # GGUF name inside blk.N. (e.g. "attn_q.bias")
    field: str                 # the clex_layer field it fills ("wqkv"/"bqkv": split into q, k, v)
    shape: tuple[str, ...]
    required: bool = True
    group: str = ""

    @property
    def f32(self) -> bool:     # vectors (norms, biases) are F32, as llama.cpp's converter writes them
        return len(self.shape) == 1


def _w(name, field, shape, required=True, group=""):
    return LayerTensor(f"{name}.weight", field, shape, required, group)


def _b(name, field, shape, required=False, group=""):
    return LayerTensor(f"{name}.bias", field, shape, required, group)


# LLaMA's layer, the base the others extend; llama.cpp's llama loader takes the projection
# biases when a file has them (not required).
_QKV = (_w("attn_q", "wq", ("E", "Q"), group="qkv"), _w("attn_k", "wk", ("E", "KV"), group="qkv"),
        _w("attn_v", "wv", ("E", "KV"), group="qkv"))
_LLAMA_LAYER = (
    _w("attn_norm", "attn_norm", ("E",)),
    *_QKV,
    _w("attn_output", "wo", ("Q", "E")),
    _w("ffn_norm", "ffn_norm", ("E",)),
    _w("ffn_gate", "w_gate", ("E", "F"), group="dense"), _w("ffn_up", "w_up", ("E", "F"), group="dense"),
    _w("ffn_down", "w_down", ("F", "E"), group="dense"),
    # Mixtral: the router and the stacked experts (llama.cpp's names)
    _w("ffn_gate_inp", "ffn_gate_inp", ("E", "X"), group="moe"),
    _w("ffn_gate_exps", "ffn_gate_exps", ("E", "F", "X"), group="moe"),
    _w("ffn_up_exps", "ffn_up_exps", ("E", "F", "X"), group="moe"),
    _w("ffn_down_exps", "ffn_down_exps", ("F", "E", "X"), group="moe"),
)
_QKV_BIASES = (_b("attn_q", "bq", ("Q",), group="qkv"), _b("attn_k", "bk", ("KV",), group="qkv"),
               _b("attn_v", "bv", ("KV",), group="qkv"))
_FUSED_QKV = (_w("attn_qkv", "wqkv", ("E", "QKV"), group="fused"), _b("attn_qkv", "bqkv", ("QKV",), group="fused"))
_OUT_BIAS = (_b("attn_output", "bo", ("E",)),)


def _required(ts):
    return tuple(LayerTensor(t.name, t.field, t.shape, True, t.group) for t in ts)


# Phi-2 and GPT-NeoX: layer norms with biases, GELU MLPs with biases, biases on every projection
_NEOX_COMMON = (
    _w("attn_norm", "attn_norm", ("E",)), _b("attn_norm", "attn_norm_b", ("E",), True),
    _w("attn_output", "wo", ("Q", "E")), _b("attn_output", "bo", ("E",), True),
    _w("ffn_up", "w_up", ("E", "F")), _b("ffn_up", "b_up", ("F",), True),
    _w("ffn_down", "w_down", ("F", "E")), _b("ffn_down", "b_down", ("E",), True),
)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    layer: tuple[LayerTensor, ...]
    norm: str = "rms"                  # rms | layer
    rope_layout: str = "adjacent"      # adjacent | neox
    ffn: str = "swiglu"                # swiglu | geglu | gelu
    parallel_residual: bool = False
    embd_scale_sqrt: bool = False      # embeddings * sqrt(n_embd) (Gemma)
    # sliding window ({arch}.attention.sliding_window): "all" layers, "pattern" (every
    # swa_pattern-th layer global, the rest local, llama.cpp's default pattern for the arch,
    # overridden by {arch}.attention.sliding_window_pattern), or "none" (the key is not read)
    swa: str = "none"
    swa_pattern: int = 0
    # the local (sliding-window) layers' rope base when they have their own table
    # ({arch}.rope.freq_base_swa overrides); None: they share the global table
    local_rope_base: float | None = None
    note: str = ""                     # what `info` says about the architecture's choices

    @property
    def has_experts(self) -> bool:
        return any(t.group == "moe" for t in self.layer)

    def default_swa_layers(self, n_layer: int, period: int | None = None) -> tuple[bool, ...]:
        """llama.cpp's pattern: layer i is local unless i % period == period - 1 (period 0: all
        local); the arch's own period unless the file gives one."""
        n = self.swa_pattern if period is None else period
        return tuple(n == 0 or i % n < n - 1 for i in range(n_layer))

    def attn_scale(self, n_layer: int, n_embd: int, n_head: int) -> float:
        """The attention scale llama.cpp hard-codes for the architecture (0: 1/sqrt(head_dim))."""
        if self.name == "gemma3" and n_layer == 62:    # Gemma 3 27B: query_pre_attn_scalar = n_embd / n_head
            return 1.0 / math.sqrt(n_embd / n_head)
        return 0.0


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec(
        "llama", _LLAMA_LAYER + _QKV_BIASES + _OUT_BIAS, swa="all",
        note="a sliding window (llama.attention.sliding_window, as clexrt convert writes for "
             "Mistral) is honoured; llama.cpp ignores it"),
    "qwen2": ArchSpec("qwen2", _LLAMA_LAYER + _required(_QKV_BIASES), rope_layout="neox"),
    "gemma3": ArchSpec(
        "gemma3",
        _LLAMA_LAYER + (_w("attn_q_norm", "q_norm", ("D",)), _w("attn_k_norm", "k_norm", ("D",)),
                        _w("post_attention_norm", "attn_post_norm", ("E",)),
                        _w("post_ffw_norm", "ffn_post_norm", ("E",))),
        rope_layout="neox", ffn="geglu", embd_scale_sqrt=True, swa="pattern", swa_pattern=6,
        local_rope_base=10000.0,
        note="sliding-window layers (5 of every 6) rotate with their own base; CLEX and rope "
             "scaling apply to the global layers"),
}
ARCHS["phi2"] = ArchSpec(
    "phi2", _NEOX_COMMON + _required(_QKV + _QKV_BIASES) + _required(_FUSED_QKV), norm="layer",
    rope_layout="neox", ffn="gelu", parallel_residual=True,
    note="one layer norm feeds attention and MLP in parallel; the rope covers the first "
         "rope.dimension_count dims of each head")
ARCHS["gptneox"] = ArchSpec(
    "gptneox", _NEOX_COMMON + _required(_FUSED_QKV) + (_w("ffn_norm", "ffn_norm", ("E",)),
                                                       _b("ffn_norm", "ffn_norm_b", ("E",), True)),
    norm="layer", rope_layout="neox", ffn="gelu", parallel_residual=True,
    note="gptneox.use_parallel_residual picks parallel or sequential blocks")
SUPPORTED_ARCHS = tuple(ARCHS)


def arch_spec(name: str) -> ArchSpec:
    return ARCHS[name]


def layer_tensors(spec: ArchSpec, n_expert: int, fused_present: bool) -> tuple[LayerTensor, ...]:
    """The arch's layer tensors of the groups a file uses: dense or experts (n_expert), and
    separate or fused q/k/v (fused_present: layer 0 has attn_qkv.weight, where both may be)."""
    groups = {t.group for t in spec.layer}
    fused = "fused" in groups and ("qkv" not in groups or fused_present)
    drop = {"moe" if not n_expert else "dense", "qkv" if fused else "fused"}
    return tuple(t for t in spec.layer if t.group not in drop)
