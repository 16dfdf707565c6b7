"""Tokenizer metadata (GGUF `tokenizer.ggml.*`, `tokenizer.chat_template`) from a checkpoint's
tokenizer.model (SentencePiece, through spm_model.py) or tokenizer.json (byte-level
BPE), with tokenizer_config.json's special tokens, add_bos/eos flags and chat template."""
from __future__ import annotations

import numpy as np

from clexrt.errors import ConvertError

from .hf import HFCheckpoint

KEY = "tokenizer.ggml."
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _token_text(v) -> str | None:
    """tokenizer_config's special tokens are strings or AddedToken dicts."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def _chat_template(ckpt: HFCheckpoint, tc: dict) -> str | None:
    t = tc.get("chat_template")
    if isinstance(t, list):     # [{"name": ..., "template": ...}]: llama.cpp takes the default one
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    if t is None and ckpt.has("chat_template.jinja"):
        with open(ckpt._p("chat_template.jinja"), encoding="utf-8") as f:
            t = f.read()
    if t is not None and not isinstance(t, str):
        raise ConvertError("tokenizer_config.json: chat_template is not a string")
    return t or None


def _bpe_pre(tok: dict) -> str:
    """llama.cpp's name for the pre-tokenizer, recognised from tokenizer.json's description."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s or {}).get("type") for s in steps]
    byte_level = [s for s in steps if (s or {}).get("type") == "ByteLevel"]
    if not byte_level:
        raise ConvertError(f"tokenizer.json: pre-tokenizer {kinds} is not byte-level BPE "
                           f"(a SentencePiece model needs its tokenizer.model)")
    if byte_level[0].get("use_regex", True) is False:
        return "default"
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"      # the same splitting as llama.cpp's starcoder/refact
    return "default"


def bpe_metadata(tok: dict, n_vocab: int) -> tuple[dict, list[str]]:
    model = tok.get("model") if isinstance(tok, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise ConvertError(f"tokenizer.json: model type {model.get('type') if isinstance(model, dict) else None!r} "
                           f"is not supported (BPE only)")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise ConvertError("tokenizer.json: BPE model has no vocab")
    by_id: dict[int, tuple[str, int]] = {}
    for text, i in vocab.items():
        by_id[int(i)] = (text, NORMAL)
    for t in tok.get("added_tokens") or []:
        by_id[int(t["id"])] = (t["content"], CONTROL if t.get("special") else USER_DEFINED)
    n = max(by_id) + 1
    if n > n_vocab:
        raise ConvertError(f"tokenizer.json has {n} tokens, more than the model's vocab_size {n_vocab}")
    notes = []
    tokens, types = [], []
    for i in range(n_vocab):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    if len(by_id) < n_vocab:
        notes.append(f"vocabulary padded with {n_vocab - len(by_id)} [PAD] tokens to vocab_size {n_vocab}")
    merges = []
    for m in model.get("merges") or []:
        merges.append(" ".join(m) if isinstance(m, list) else m)
    pre = _bpe_pre(tok)
    if pre == "default":
        notes.append("pre-tokenizer not recognised: written as 'default'")
    md = {KEY + "model": "gpt2", KEY + "pre": pre, KEY + "tokens": tokens,
          KEY + "token_type": np.asarray(types, np.int32), KEY + "merges": merges}
    return md, notes


def spm_metadata(path: str, n_vocab: int) -> tuple[dict, list[str]]:
    from .spm_model import spm_metadata_from_model

    md = dict(spm_metadata_from_model(path))
    tokens = list(md[KEY + "tokens"])
    notes = []
    if len(tokens) > n_vocab:
        raise ConvertError(f"tokenizer.model has {len(tokens)} pieces, more than the model's vocab_size {n_vocab}")
    if len(tokens) < n_vocab:
        k = n_vocab - len(tokens)
        notes.append(f"vocabulary padded with {k} [PAD] tokens to vocab_size {n_vocab}")
        md[KEY + "tokens"] = tokens + [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
        md[KEY + "scores"] = np.concatenate([md[KEY + "scores"], np.full(k, -1000.0, np.float32)])
        md[KEY + "token_type"] = np.concatenate([md[KEY + "token_type"], np.full(k, UNUSED, np.int32)])
    return md, notes


def _added_tokens(md: dict, tc: dict) -> None:
    """tokenizer_config's added_tokens_decoder: names for padded ids, control types for specials."""
    dec = tc.get("added_tokens_decoder")
    if not isinstance(dec, dict):
        return
    tokens, types = md[KEY + "tokens"], md[KEY + "token_type"]
    for k, v in dec.items():
        try:
            i = int(k)
        except ValueError:
            continue
        text = _token_text(v)
        if text is None or not 0 <= i < len(tokens):
            continue
        if tokens[i] != text and tokens[i].startswith("[PAD"):
            tokens[i] = text
            types[i] = CONTROL if v.get("special") else USER_DEFINED
        elif tokens[i] == text and v.get("special") and types[i] == NORMAL:
            types[i] = CONTROL


def tokenizer_metadata(ckpt: HFCheckpoint) -> tuple[dict, list[str]]:
    """(metadata, notes). Raises ConvertError when the checkpoint has no usable tokenizer."""
    n_vocab = ckpt.config.hparams.n_vocab
    tc = ckpt.json_file("tokenizer_config.json") or {}
    if not isinstance(tc, dict):
        raise ConvertError("tokenizer_config.json: not a JSON object")
    if ckpt.has("tokenizer.model"):
        md, notes = spm_metadata(ckpt._p("tokenizer.model"), n_vocab)
        source = "tokenizer.model"
    elif ckpt.has("tokenizer.json"):
        md, notes = bpe_metadata(ckpt.json_file("tokenizer.json"), n_vocab)
        source = "tokenizer.json"
    else:
        raise ConvertError(f"no tokenizer in {ckpt.path}: expected tokenizer.model or tokenizer.json")
    md[KEY + "tokens"] = list(md[KEY + "tokens"])
    md[KEY + "token_type"] = np.array(md[KEY + "token_type"], np.int32)
    _added_tokens(md, tc)
    index = {t: i for i, t in enumerate(md[KEY + "tokens"])}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        text = _token_text(tc.get(name))
        if text is not None:
            if text not in index:
                raise ConvertError(f"tokenizer_config.json: {name} {text!r} is not in the vocabulary")
            md[KEY + key] = index[text]
    for flag in ("add_bos_token", "add_eos_token"):
        if isinstance(tc.get(flag), bool):
            md[KEY + flag] = tc[flag]
    template = _chat_template(ckpt, tc)
    if template:
        md["tokenizer.chat_template"] = template
    notes.insert(0, f"tokenizer from {source}: {len(md[KEY + 'tokens'])} tokens, model {md[KEY + 'model']}")
    return md, notes
