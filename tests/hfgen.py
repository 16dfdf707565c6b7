"""Tiny Hugging Face LLaMA checkpoints, generated with fixed seeds: complete folders with
config.json, safetensors weights (written by our own writer), a SentencePiece tokenizer.model
trained here, and tokenizer_config.json. Two kinds:

- plain: GQA, tied embeddings, bf16 weights in two safetensors shards with an index, and a
  vocab_size padded past the tokenizer's pieces;
- clex: CLEX-LLaMA (rope_scaling type clex) with a non-zero ODE network, untied, f32 weights in
  one file, and an FFN width that is not a multiple of 32 (so block types fall back for ffn_down).

`make_checkpoint` returns the folder and the float32 weights exactly as stored (bf16-rounded
where stored as bf16), for an independent reference forward.
"""
from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from clexrt.convert.safetensors import write_safetensors

F32 = np.float32

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "CLEX extends the context of a language model by learning how its rotary frequencies scale.",
    "A converter turns a checkpoint into one file that a runtime maps into memory.",
    "Numbers like 12345 and 3.14159 are split into digits; so is 2024.",
    "Über naïve café, 東京 and emoji 🙂 need the byte fallback.",
    "def main():\n    print('hello, world')\n",
    "Tiny models are generated with fixed seeds, so every test sees the same weights.",
]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

_SPM_CACHE: dict[int, bytes] = {}


def train_spm(vocab_size: int = 400) -> bytes:
    """A LLaMA-style SentencePiece BPE model (byte fallback, digits split), trained once."""
    if vocab_size not in _SPM_CACHE:
        import sentencepiece as spm

        if hasattr(spm, "set_random_generator_seed"):
            spm.set_random_generator_seed(1234)
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 8), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
            byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
            character_coverage=1.0, hard_vocab_limit=False, num_threads=1, minloglevel=2)
        _SPM_CACHE[vocab_size] = buf.getvalue()
    return _SPM_CACHE[vocab_size]


@dataclass
class HFSpec:
    kind: str = "plain"          # plain | clex
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 96
    n_ctx: int = 64              # max_position_embeddings (L for CLEX)
    rope_theta: float = 10000.0
    eps: float = 1e-5
    tied: bool = True
    dtype: str = "BF16"          # storage: F32, F16, BF16
    shards: int = 2
    vocab_pad: int = 12          # config vocab_size = pieces + vocab_pad
    # CLEX
    max_factor: int = 4
    param_factor: int = 1
    act: str = "tanh"
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


PLAIN = HFSpec()
CLEX = HFSpec(kind="clex", n_ff=80, tied=False, dtype="F32", shards=1, vocab_pad=0, n_head_kv=4,
              act="silu", seed=1)


def _store(a: np.ndarray, dtype: str):
    """(value written, float32 value read back)"""
    a = np.asarray(a, F32)
    if dtype == "F32":
        return a, a
    if dtype == "F16":
        h = a.astype(np.float16)
        return h, h.astype(F32)
    u = a.view(np.uint32)
    b = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)      # round to nearest even
    return ("BF16", b), (b.astype(np.uint32) << 16).view(F32)


def weights(spec: HFSpec, n_vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + spec.seed)
    e, hd, ff = spec.n_embd, spec.head_dim, spec.n_ff

    def mat(rows, cols, scale=1.0):
        return (rng.standard_normal((rows, cols)) * scale / math.sqrt(cols)).astype(F32)

    w = {"model.embed_tokens.weight": (rng.standard_normal((n_vocab, e)) * 0.5).astype(F32),
         "model.norm.weight": (1 + 0.1 * rng.standard_normal(e)).astype(F32)}
    for i in range(spec.n_layer):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(e)).astype(F32)
        w[p + "self_attn.q_proj.weight"] = mat(spec.n_head * hd, e, 2.0)
        w[p + "self_attn.k_proj.weight"] = mat(spec.n_head_kv * hd, e, 2.0)
        w[p + "self_attn.v_proj.weight"] = mat(spec.n_head_kv * hd, e)
        w[p + "self_attn.o_proj.weight"] = mat(e, spec.n_head * hd)
        w[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(e)).astype(F32)
        w[p + "mlp.gate_proj.weight"] = mat(ff, e)
        w[p + "mlp.up_proj.weight"] = mat(ff, e)
        w[p + "mlp.down_proj.weight"] = mat(e, ff)
    if not spec.tied:
        w["lm_head.weight"] = mat(n_vocab, e, 2.0)
    if spec.kind == "clex":
        h = hd // 2
        inv = (F32(1) / (np.float64(spec.rope_theta) ** (np.arange(0, hd, 2, dtype=F32) / F32(hd))
                         .astype(np.float64)).astype(F32)).astype(F32)
        bound = 1 / math.sqrt(h)
        w["model.clex_layer.inv_freq"] = inv
        w["model.clex_layer.proj_func.ode_up_proj"] = rng.uniform(-bound, bound, (h, spec.param_factor * hd)).astype(F32)
        # non-zero, and strong enough that the tables differ visibly from NTK scaling
        w["model.clex_layer.proj_func.ode_down_proj"] = (rng.standard_normal((spec.param_factor * hd, h)) * 0.015).astype(F32)
    return w


def config(spec: HFSpec, n_vocab: int) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": spec.n_embd, "intermediate_size": spec.n_ff, "num_hidden_layers": spec.n_layer,
        "num_attention_heads": spec.n_head, "num_key_value_heads": spec.n_head_kv,
        "max_position_embeddings": spec.n_ctx, "rms_norm_eps": spec.eps, "rope_theta": spec.rope_theta,
        "vocab_size": n_vocab, "tie_word_embeddings": spec.tied, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[spec.dtype],
    }
    if spec.kind == "clex":
        cfg["architectures"] = ["CLEXLlamaForCausalLM"]
        cfg["rope_scaling"] = {"type": "clex", "max_factor": spec.max_factor, "param_factor": spec.param_factor,
                               "time_dt": 0.01, "act": spec.act, "factor": 1}
        cfg["log_scale"] = True
    return cfg


def make_checkpoint(folder, spec: HFSpec = PLAIN) -> dict[str, np.ndarray]:
    """Writes a complete HF folder; returns the weights as stored, in float32."""
    os.makedirs(folder, exist_ok=True)
    model = train_spm()
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    n_vocab = pieces + spec.vocab_pad
    w = weights(spec, n_vocab)
    stored, readback = {}, {}
    for k, v in w.items():
        stored[k], readback[k] = _store(v, "F32" if "clex" in k else spec.dtype)
    names = list(stored)
    if spec.shards == 1:
        write_safetensors(os.path.join(folder, "model.safetensors"), stored, {"format": "pt"})
    else:
        per = -(-len(names) // spec.shards)
        wm = {}
        for s in range(spec.shards):
            fn = f"model-{s + 1:05d}-of-{spec.shards:05d}.safetensors"
            part = names[s * per:(s + 1) * per]
            write_safetensors(os.path.join(folder, fn), {n: stored[n] for n in part}, {"format": "pt"})
            wm.update({n: fn for n in part})
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": wm}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config(spec, n_vocab), f, indent=1)
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
        f.write(model)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                   "eos_token": {"content": "</s>", "special": True}, "unk_token": "<unk>",
                   "chat_template": CHAT_TEMPLATE, "model_max_length": spec.n_ctx}, f, indent=1)
    return readback


# ---------------------------------------------------------------------------------------------
# An independent PyTorch forward of the HF model (rotate_half layout), as transformers computes it.
def torch_forward(w: dict[str, np.ndarray], spec: HFSpec, ids, inv_freq=None) -> np.ndarray:
    import torch

    torch.set_num_threads(1)
    t = {k: torch.from_numpy(np.asarray(v, F32)).double() for k, v in w.items()}
    hd = spec.head_dim
    n = len(ids)
    if inv_freq is None:
        inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, hd, 2).double() / hd))
    else:
        inv_freq = torch.as_tensor(np.asarray(inv_freq, np.float64))
    pos = torch.arange(n).double()
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + spec.eps) * g

    def rotate_half(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return torch.cat([-x2, x1], dim=-1)

    x = t["model.embed_tokens.weight"][torch.as_tensor(ids)]
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    rep = spec.n_head // spec.n_head_kv
    for i in range(spec.n_layer):
        p = f"model.layers.{i}."
        h = rms(x, t[p + "input_layernorm.weight"])
        q = (h @ t[p + "self_attn.q_proj.weight"].T).view(n, spec.n_head, hd).transpose(0, 1)
        k = (h @ t[p + "self_attn.k_proj.weight"].T).view(n, spec.n_head_kv, hd).transpose(0, 1)
        v = (h @ t[p + "self_attn.v_proj.weight"].T).view(n, spec.n_head_kv, hd).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(rep, dim=0)
        v = v.repeat_interleave(rep, dim=0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, dim=-1)
        o = (att @ v).transpose(0, 1).reshape(n, spec.n_head * hd)
        x = x + o @ t[p + "self_attn.o_proj.weight"].T
        h = rms(x, t[p + "post_attention_layernorm.weight"])
        g = h @ t[p + "mlp.gate_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * (h @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
    x = rms(x, t["model.norm.weight"])
    out = t["model.embed_tokens.weight"] if spec.tied else t["lm_head.weight"]
    return (x @ out.T).float().numpy()
