"""Tiny Hugging Face checkpoints, generated with fixed seeds: complete folders with config.json,
safetensors weights, a tokenizer and tokenizer_config.json.

LLaMA checkpoints written by our own safetensors writer, with a SentencePiece tokenizer.model
trained here (make_checkpoint). Two kinds:

- plain: GQA, tied embeddings, bf16 weights in two safetensors shards with an index, and a
  vocab_size padded past the tokenizer's pieces;
- clex: CLEX-LLaMA (rope_scaling type clex) with a non-zero ODE network, untied, f32 weights in
  one file, and an FFN width that is not a multiple of 32 (so block types fall back for ffn_down).

`make_checkpoint` returns the folder and the float32 weights exactly as stored (bf16-rounded
where stored as bf16), for an independent reference forward.

Checkpoints of every converted architecture (LLaMA, Llama 3 rope scaling, Mistral, Qwen2,
Gemma 3, Phi-2, GPT-NeoX, Mixtral; each also with CLEX, in the official code's format where it
has one) built by transformers' own classes (make_tf_checkpoint), which returns the model itself
as the reference.
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


# ---------------------------------------------------------------------------------------------
# Checkpoints of every converted architecture, built by transformers' own model classes with a
# fixed seed and written by save_pretrained (safetensors), with a SentencePiece tokenizer.model
# (train_spm) or a byte-level BPE tokenizer.json trained here with the `tokenizers` library.

# The Split regexes Llama 3 and Qwen2 ship in their tokenizer.json (facts of those files).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BPE_SPECIALS = {"llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
                "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                "gpt2": ["<|endoftext|>"]}
_BPE_CACHE: dict[str, str] = {}


def train_bpe(kind: str, vocab_size: int = 320) -> str:
    """tokenizer.json text of a byte-level BPE shaped like Llama 3's (kind llama3: ignore_merges,
    a template that adds <|begin_of_text|>), Qwen2's (qwen2: nothing added) or GPT-2's as Phi-2
    and GPT-NeoX ship it (gpt2: the ByteLevel pre-tokenizer's own regex, nothing added)."""
    if kind not in _BPE_CACHE:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

        tok = Tokenizer(models.BPE(ignore_merges=kind == "llama3", byte_fallback=False))
        if kind == "gpt2":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT if kind == "llama3" else QWEN2_SPLIT),
                                     behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=kind == "llama3", use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(CORPUS * 8, trainer)
        specials = BPE_SPECIALS[kind]
        tok.add_special_tokens(specials)
        if kind == "llama3":
            bos = specials[0]
            tok.post_processor = processors.Sequence([
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                              special_tokens=[(bos, tok.token_to_id(bos))])])
        else:
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
        _BPE_CACHE[kind] = tok.to_str()
    return _BPE_CACHE[kind]


@dataclass
class TFSpec:
    """One transformers checkpoint: `arch` llama | llama3 | mistral | qwen2 | gemma3 | phi2 |
    gptneox | mixtral, plus CLEX (the official code's format where it has one)."""
    arch: str
    clex: bool = False
    n_layer: int = 2
    seed: int = 0
    window: int | None = None       # sliding_window (mistral, gemma3)
    parallel: bool = True           # use_parallel_residual (gptneox)
    n_expert: int = 4               # mixtral (top-2)
    width: int = 64                 # mixtral: hidden and FFN width (256: rows whole K-quant blocks)

    @property
    def name(self) -> str:
        return self.arch + ("-clex" if self.clex else "")

    @property
    def tokenizer(self) -> str:
        return "bpe" if self.arch in ("llama3", "qwen2", "phi2", "gptneox") else "spm"

    @property
    def bpe(self) -> str:
        return self.arch if self.arch in ("llama3", "qwen2") else "gpt2"


def _tf_config(spec: TFSpec, n_vocab: int):
    import transformers as T

    common = dict(vocab_size=n_vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=spec.n_layer,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                  initializer_range=0.2)      # peaked attention: the logits feel every rotary frequency
    if spec.arch == "llama":
        return T.LlamaConfig(**common, rope_theta=10000.0), T.LlamaForCausalLM
    if spec.arch == "llama3":
        specials = dict(bos_token_id=n_vocab - 7, eos_token_id=n_vocab - 6)      # the BPE's added tokens
        rs = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
        specials["max_position_embeddings"] = 128       # past the original 64, as Llama 3.1's
        return T.LlamaConfig(**{**common, **specials}, rope_theta=500000.0, rope_scaling=rs,
                             tie_word_embeddings=True), T.LlamaForCausalLM
    if spec.arch == "mistral":      # Mistral Nemo style: a head wider than hidden / heads
        return T.MistralConfig(**common, head_dim=24, sliding_window=spec.window), T.MistralForCausalLM
    if spec.arch == "qwen2":
        specials = dict(bos_token_id=n_vocab - 7, eos_token_id=n_vocab - 5)
        return T.Qwen2Config(**{**common, **specials}, rope_theta=1000000.0, tie_word_embeddings=True), \
            T.Qwen2ForCausalLM
    eot = dict(bos_token_id=n_vocab - 5, eos_token_id=n_vocab - 5)     # <|endoftext|>
    big = dict(vocab_size=n_vocab, hidden_size=128, intermediate_size=512, num_hidden_layers=spec.n_layer,
               num_attention_heads=4, max_position_embeddings=64, layer_norm_eps=1e-5, initializer_range=0.1)
    if spec.arch == "phi2":         # Phi-2's proportions: 40% of each head rotated, the FFN 4x wide
        return T.PhiConfig(**big, **eot, partial_rotary_factor=0.4), T.PhiForCausalLM
    if spec.arch == "gptneox":      # Pythia's: a quarter of each head rotated
        return T.GPTNeoXConfig(**big, **eot, rotary_pct=0.25, hidden_act="gelu_new",
                               use_parallel_residual=spec.parallel), T.GPTNeoXForCausalLM
    if spec.arch == "mixtral":
        ff = 96 if spec.width == 64 else spec.width       # 96: the common FFN width of the others
        wide = dict(hidden_size=spec.width, intermediate_size=ff)
        return T.MixtralConfig(**{**common, **wide}, rope_theta=1000000.0, num_local_experts=spec.n_expert,
                               num_experts_per_tok=2), T.MixtralForCausalLM
    if spec.arch == "gemma3":
        return T.Gemma3TextConfig(**common, head_dim=24, pad_token_id=0, query_pre_attn_scalar=20,
                                  sliding_window=spec.window, final_logit_softcapping=30.0,
                                  rope_theta=1000000.0, rope_local_base_freq=10000.0), T.Gemma3ForCausalLM
    raise ValueError(spec.arch)


def _write_tokenizer(folder: str, spec: TFSpec) -> int:
    """The tokenizer files; returns the number of tokens the tokenizer has."""
    def dump(name, obj):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)

    if spec.tokenizer == "spm":
        import sentencepiece as spm

        model = train_spm()
        with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
            f.write(model)
        dump("tokenizer_config.json", {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                                       "eos_token": {"content": "</s>", "special": True}, "unk_token": "<unk>",
                                       "chat_template": CHAT_TEMPLATE, "model_max_length": 64})
        return spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    text = train_bpe(spec.bpe)
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(text)
    specials = BPE_SPECIALS[spec.bpe]
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE, "model_max_length": 64}
    if spec.bpe == "gpt2":          # Phi-2's and Pythia's: <|endoftext|> for all three
        tc.update(bos_token=specials[0], eos_token=specials[0], unk_token=specials[0])
    elif spec.arch == "llama3":
        tc.update(bos_token=specials[0], eos_token=specials[1])
    else:
        tc.update(bos_token=None, eos_token=specials[2], pad_token=specials[0])
    dump("tokenizer_config.json", tc)
    return len(json.loads(text)["model"]["vocab"]) + len(specials)


def make_tf_checkpoint(folder, spec: TFSpec):
    """Writes a complete HF folder with transformers' save_pretrained; returns the model (float32,
    eager attention, eval mode). A CLEX checkpoint is the plain one plus the CLEX layer (the
    rotary inv_freq transformers computes and a seeded ODE network) and rope_scaling type clex."""
    import torch

    os.makedirs(folder, exist_ok=True)
    n_tok = _write_tokenizer(os.fspath(folder), spec)
    n_vocab = n_tok + 4 if spec.tokenizer == "bpe" else n_tok      # BPE: padded, as Llama 3's and Qwen2's are
    cfg, cls = _tf_config(spec, n_vocab)
    cfg._attn_implementation = "eager"
    torch.manual_seed(1234 + spec.seed)
    model = cls(cfg).eval()
    with torch.no_grad():       # norms away from their init of 1 (0 for Gemma) so a wrong offset shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or (name.endswith(".bias") and spec.arch in ("phi2", "gptneox")):
                p.add_(0.1 * torch.randn_like(p))       # and Phi-2's and NeoX's biases away from 0
    model.save_pretrained(folder, safe_serialization=True)
    if spec.clex:
        _add_clex(folder, model, spec)
    return model


# the official CLEX code's model classes (its config classes keep transformers' model_type)
CLEX_ARCHITECTURES = {"llama": "CLEXLlamaForCausalLM", "phi2": "CLEXPhiForCausalLM",
                      "mixtral": "CLEXMixtralForCausalLM"}


def clex_prefix(arch: str) -> str:
    """Where the official code's CLEXScalingRotaryEmbedding lives: the base model's clex_layer
    (a GPT-NeoX has no official CLEX; its base model is gpt_neox)."""
    return "gpt_neox.clex_layer." if arch == "gptneox" else "model.clex_layer."


def _add_clex(folder, model, spec: TFSpec, max_factor: int = 4, param_factor: int = 1) -> None:
    """The official layer's weights (CLEX/clex_layer.py: inv_freq over the rotary part of the
    head, proj_func.ode_up_proj [d/2, P*d], ode_down_proj [P*d, d/2]) and its rope_scaling."""
    from safetensors.numpy import load_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    base = model.gpt_neox if spec.arch == "gptneox" else model.model
    inv = base.rotary_emb.inv_freq.detach().float().numpy().copy()     # the global layers' rope
    h = inv.size
    rng = np.random.default_rng(2000 + spec.seed)
    p = clex_prefix(spec.arch)
    tensors[p + "inv_freq"] = inv
    tensors[p + "proj_func.ode_up_proj"] = rng.uniform(
        -1 / math.sqrt(h), 1 / math.sqrt(h), (h, 2 * h * param_factor)).astype(F32)
    tensors[p + "proj_func.ode_down_proj"] = (rng.standard_normal((2 * h * param_factor, h)) * 0.015).astype(F32)
    write_safetensors(path, tensors, {"format": "pt"})
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    cfg["rope_scaling"] = {"type": "clex", "max_factor": max_factor, "param_factor": param_factor,
                           "time_dt": 0.01, "act": "tanh", "factor": 1}
    if spec.arch in CLEX_ARCHITECTURES:
        cfg["architectures"] = [CLEX_ARCHITECTURES[spec.arch]]
    if spec.arch == "mixtral":      # CLEXMixtralConfig's own fields
        cfg.update(use_flashattn=True, log_scale=True, pretraining_tp=1)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
