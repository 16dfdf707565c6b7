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


def hf_config(cfg: dict, clex: bool, name: str) -> dict:
    c = {
        "_name_or_path": name,
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg["vocab_size"], "hidden_size": cfg["dim"], "intermediate_size": cfg["ffn"],
        "num_hidden_layers": cfg["n_layers"], "num_attention_heads": cfg["n_heads"],
        "num_key_value_heads": cfg["n_heads"], "max_position_embeddings": cfg["max_len"],
        "rms_norm_eps": cfg["rms_eps"], "rope_theta": cfg["rope_theta"], "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02, "torch_dtype": "float32",
        "rope_scaling": None,
    }
    if clex:
        c["rope_scaling"] = {"type": "clex", "max_factor": cfg["max_factor"], "param_factor": cfg["param_factor"],
                             "time_dt": cfg["time_dt"], "act": cfg["act"], "factor": 1}
        c["log_scale"] = False
    return c


TOKENIZER_CONFIG = {
    "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
    "unk_token": "<unk>", "pad_token": None, "clean_up_tokenization_spaces": False, "legacy": False,
    "tokenizer_class": "LlamaTokenizer", "sp_model_kwargs": {},
}


def export(model_pt: str, tokenizer_model: str, out: str, name: str) -> dict:
    src = torch.load(model_pt, map_location="cpu", weights_only=False)
    sd, cfg = src["state_dict"], src["config"]
    clex = any(k.startswith("model.clex_layer.") for k in sd)
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "model.safetensors"), sd)
    conf = hf_config(cfg, clex, name)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(conf, f, indent=2)
    shutil.copyfile(tokenizer_model, os.path.join(out, "tokenizer.model"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(dict(TOKENIZER_CONFIG, model_max_length=cfg["max_len"]), f, indent=2)
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
