"""Write a trained model as a Hugging Face LLaMA folder (what `clexrt convert` reads).

    python tools/train_clex/export.py build/train_clex/clex/model.pt build/train_clex/corpus/../tokenizer.model OUT_DIR

config.json as transformers' LlamaConfig writes it; a CLEX model adds the official
`rope_scaling = {"type": "clex", "max_factor", "param_factor", "time_dt", "act", "factor": 1}` and
`log_scale: false` (the official trainer's --log_scale False) and the weights
`model.clex_layer.inv_freq`, `model.clex_layer.proj_func.ode_up_proj`, `...ode_down_proj`.
Weights are float32 in model.safetensors (q/k rows in HF's rotate_half layout, as trained);
tokenizer.model and a LLaMA-2 tokenizer_config.json (BOS added, no EOS).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config  # noqa: E402


def write_safetensors(path: str, tensors: dict) -> None:
    """The safetensors format: u64 header length, JSON header (padded to 8 bytes), raw F32 data."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = tensors[name].detach().float().contiguous().numpy()
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def hf_config(cfg: Config, clex: bool, name: str) -> dict:
    hp = cfg.hparams
    c = {
        "_name_or_path": name,
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": hp.n_vocab, "hidden_size": hp.n_embd, "intermediate_size": hp.n_ff,
        "num_hidden_layers": hp.n_layer, "num_attention_heads": hp.n_head,
        "num_key_value_heads": hp.n_head_kv, "max_position_embeddings": hp.n_ctx_train,
        "rms_norm_eps": hp.eps, "rope_theta": hp.freq_base, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": hp.tied_embeddings,
        "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02, "torch_dtype": "float32",
        "rope_scaling": None,
    }
    if clex:
        c["rope_scaling"] = {"type": "clex", "max_factor": cfg.max_factor, "param_factor": cfg.param_factor,
                             "time_dt": cfg.time_dt, "act": cfg.act, "factor": 1}
        c["log_scale"] = False
    return c


TOKENIZER_CONFIG = {
    "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
    "unk_token": "<unk>", "pad_token": None, "clean_up_tokenization_spaces": False, "legacy": False,
    "tokenizer_class": "LlamaTokenizer", "sp_model_kwargs": {},
}


def export(model_pt: str, tokenizer_model: str, out: str, name: str) -> dict:
    src = torch.load(model_pt, map_location="cpu", weights_only=False)
    sd, cfg = src["state_dict"], Config.from_dict(src["config"])
    clex = any(k.startswith("model.clex_layer.") for k in sd)
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "model.safetensors"), sd)
    conf = hf_config(cfg, clex, name)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(conf, f, indent=2)
    shutil.copyfile(tokenizer_model, os.path.join(out, "tokenizer.model"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(dict(TOKENIZER_CONFIG, model_max_length=cfg.hparams.n_ctx_train), f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2}, f, indent=2)
    return conf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_pt")
    ap.add_argument("tokenizer_model")
    ap.add_argument("out")
    ap.add_argument("--name", default=None)
    a = ap.parse_args()
    conf = export(a.model_pt, a.tokenizer_model, a.out, a.name or os.path.basename(a.out.rstrip("/")))
    print(f"{a.out}: rope_scaling {conf['rope_scaling']}", file=sys.stderr)


if __name__ == "__main__":
    main()
