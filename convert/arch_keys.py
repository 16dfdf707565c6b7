"""The keys and refusals of the architectures whose GGUF keys are not LLaMA's (Phi-2, GPT-NeoX)
and of Mixtral's experts, as llama.cpp's converter writes them (conversion/phi.py,
conversion/gptneox.py, conversion/llama.py); convert/arch.py puts them in its table."""
from __future__ import annotations

from clexrt.errors import ConvertError

# llama.cpp's runtime takes this rope base when a file has no {arch}.rope.freq_base; its
# converter never writes the key for phi2 and gptneox, so we write it only where it differs
DEFAULT_BASE = 10000.0


def _norm_arch_keys(hp, a: str) -> dict:
    md = {f"{a}.context_length": hp.n_ctx_train, f"{a}.embedding_length": hp.n_embd,
          f"{a}.feed_forward_length": hp.n_ff, f"{a}.block_count": hp.n_layer,
          f"{a}.attention.head_count": hp.n_head,
          f"{a}.attention.layer_norm_epsilon": hp.rms_norm_eps, f"{a}.rope.dimension_count": hp.n_rot}
    if hp.rope_freq_base != DEFAULT_BASE:
        md[f"{a}.rope.freq_base"] = hp.rope_freq_base
    return md


def phi2_keys(hp, cfg: dict, notes: list) -> dict:
    md = _norm_arch_keys(hp, "phi2")
    md["phi2.attention.head_count_kv"] = hp.n_head_kv
    if hp.n_ff != 4 * hp.n_embd:
        notes.append(f"phi2.feed_forward_length {hp.n_ff} from intermediate_size (llama.cpp's "
                     f"converter writes 4 x hidden_size = {4 * hp.n_embd})")
    return md


def gptneox_keys(hp, cfg: dict, notes: list) -> dict:
    md = _norm_arch_keys(hp, "gptneox")
    md["gptneox.use_parallel_residual"] = bool(hp.parallel_residual)
    if cfg.get("hidden_act") == "gelu":
        notes.append("hidden_act gelu (the erf form) runs as its tanh approximation, as in llama.cpp")
    return md


def phi2_tokenizer(has_spm: bool) -> dict:
    return {"tokenizer.ggml.add_bos_token": False}      # llama.cpp's converter sets it for phi2


def phi2_check(cfg: dict) -> None:
    if cfg.get("qk_layernorm"):
        raise ConvertError("config.json: qk_layernorm true is not supported for phi2 "
                           "(llama.cpp's phi2 has no q/k norms)")
    if cfg.get("tie_word_embeddings"):
        raise ConvertError("config.json: tie_word_embeddings true is not supported for phi2 "
                           "(its output has a bias of its own; llama.cpp's phi2 needs output.weight)")


def gptneox_check(cfg: dict) -> None:
    if cfg.get("attention_bias") is False:
        raise ConvertError("config.json: attention_bias false is not supported for gptneox "
                           "(llama.cpp's gptneox needs the q/k/v and dense biases)")


def mixtral_keys(cfg: dict, hp, notes: list) -> dict:
    md = {"llama.expert_count": hp.n_expert, "llama.expert_used_count": hp.n_expert_used}
    w = cfg.get("sliding_window")
    if w is not None:
        if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
            raise ConvertError(f"config.json: 'sliding_window' must be a positive integer or null, got {w!r}")
        # llama.cpp's converter drops it (its llama graph has no window); written for our runtime
        md["llama.attention.sliding_window"] = w
    return md


def expert_counts(cfg: dict) -> tuple[int, int]:
    """(num_local_experts, num_experts_per_tok), checked against each other."""
    out = []
    for key in ("num_local_experts", "num_experts_per_tok"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConvertError(f"config.json: {key!r} must be a positive integer, got {v!r}")
        out.append(v)
    n, used = out
    if used > n:
        raise ConvertError(f"config.json: num_experts_per_tok {used} is more than num_local_experts {n}")
    if n > 1024:
        raise ConvertError(f"config.json: num_local_experts {n} is more than 1024")
    return n, used


def rotary_dim(cfg: dict, keys: tuple[str, ...], head_dim: int) -> int:
    """The rotated part of each head: an explicit rotary_dim, or int(head_dim * factor) as
    transformers computes it from the first of keys cfg has; the whole head without either."""
    key = next((k for k in keys if cfg.get(k) is not None), None)
    if key is None:
        return head_dim
    v = cfg[key]
    if key == "rotary_dim":
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConvertError(f"config.json: 'rotary_dim' must be an integer, got {v!r}")
        n, where = v, "rotary_dim"
    else:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e6:
            raise ConvertError(f"config.json: {key!r} must be a positive number, got {v!r}")
        n, where = int(head_dim * v), f"{key} {v} x head_dim {head_dim}"
    if n > head_dim:
        raise ConvertError(f"config.json: rotary dimension {n} ({where}) is larger than the head ({head_dim})")
    if n < 2 or n % 2:
        raise ConvertError(f"config.json: rotary dimension {n} ({where}) must be even and at least 2")
    return n
