"""Tokenizer metadata (GGUF `tokenizer.ggml.*`, `tokenizer.chat_template`) from a checkpoint's
tokenizer.model (SentencePiece, through spm_model.py) or tokenizer.json (byte-level BPE), with
the special tokens, add_bos/eos flags and chat template of tokenizer_config.json, config.json
and tokenizer.json's post-processor, as llama.cpp's converter reads them."""
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


# The pre-tokenizers llama.cpp names, as tokenizer.json describes them. llama.cpp's converter
# hashes the tokenizer's ids on a probe text instead, which needs the model's own vocabulary; the
# descriptions say the same for these. The Split regexes are the ones Llama 3 and Qwen2 ship
# (quoted as "original regex from tokenizer.json" in llama.cpp's llama-vocab.cpp).
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_KNOWN_PRE = {
    (("ByteLevel", True),): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "smollm",      # the splitting of llama.cpp's starcoder/refact
    (("Split", LLAMA3_REGEX), ("ByteLevel", False)): "llama-bpe",
    (("Split", QWEN2_REGEX), ("ByteLevel", False)): "qwen2",
}


def _pre_step(s) -> tuple:
    """One pre-tokenizer step as the table above spells it; None where it is something else."""
    s = s if isinstance(s, dict) else {}
    kind = s.get("type")
    if kind == "ByteLevel" and not s.get("add_prefix_space", False):
        return ("ByteLevel", bool(s.get("use_regex", True)))
    if kind == "Digits":
        return ("Digits", bool(s.get("individual_digits", False)))
    if kind == "Split" and s.get("behavior") == "Isolated" and not s.get("invert", False):
        pattern = s.get("pattern") if isinstance(s.get("pattern"), dict) else {}
        return ("Split", pattern.get("Regex"))
    return (kind, s.get("add_prefix_space"), s.get("behavior"), s.get("invert"))


def _bpe_pre(tok: dict) -> str:
    """llama.cpp's name for the pre-tokenizer (tokenizer.ggml.pre), recognised from tokenizer.json;
    one we do not know is an error naming it, never a silent default."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    desc = tuple(_pre_step(s) for s in steps)
    if desc in _KNOWN_PRE:
        return _KNOWN_PRE[desc]
    if not any(d[0] == "ByteLevel" for d in desc):
        raise ConvertError(f"tokenizer.json: pre-tokenizer {[d[0] for d in desc]} is not byte-level BPE "
                           f"(a SentencePiece model needs its tokenizer.model)")
    shown = " + ".join(f"Split({d[1]!r})" if d[0] == "Split" else
                       f"ByteLevel(use_regex={d[1]})" if d[0] == "ByteLevel" and len(d) == 2 else str(d[0])
                       for d in desc)
    raise ConvertError(f"tokenizer.json: pre-tokenizer {shown} is not one we recognise "
                       f"(known: {', '.join(sorted(set(_KNOWN_PRE.values())))})")


def _looks_special(text: str) -> bool:
    """llama.cpp's converter makes these added tokens control tokens even when not marked special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _merge(m) -> str:
    """A merge as one string; the pair form (transformers >= 4.45) may hold spaces, which
    llama.cpp's converter writes as U+0120 so that the string splits in two."""
    if isinstance(m, list):
        return " ".join(part.replace(" ", chr(ord(" ") + 256)) for part in m)
    return m


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
        text = t["content"]
        if t.get("special") or _looks_special(text):
            by_id[int(t["id"])] = (text, CONTROL)
        else:       # llama.cpp's pre-normalised user-defined spaces
            by_id[int(t["id"])] = (text.replace("\u2581", " "), USER_DEFINED)
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
    merges = [_merge(m) for m in model.get("merges") or []]
    pre = _bpe_pre(tok)
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


# special token kinds -> their tokenizer.ggml key (gguf-py's SpecialVocab; it spells "seperator")
SPECIALS = (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
            ("sep", "seperator_token_id"), ("pad", "padding_token_id"), ("mask", "mask_token_id"))


def _post_processor(tok: dict, tc: dict, md: dict, index: dict) -> dict:
    """add_bos/eos/sep as llama.cpp's converter reads tokenizer.json's post_processor: ByteLevel
    adds nothing; a TemplateProcessing that starts (ends) with a special token adds bos (eos).
    A template ending in another token than eos makes that token the eos, the old one the eot."""
    pp = tok.get("post_processor")
    flags: dict[str, bool] = {}
    if not isinstance(pp, dict):
        return flags
    bos, eos = _token_text(tc.get("bos_token")), _token_text(tc.get("eos_token"))
    for p in pp.get("processors", [pp]):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "ByteLevel":
            flags.setdefault("bos", False)
            flags.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            flags.update(bos=True, eos=True)
        elif kind == "TemplateProcessing" and len(p.get("single") or []) > 1:
            first, last = ((x.get("SpecialToken") or {}).get("id") if isinstance(x, dict) else None
                           for x in (p["single"][0], p["single"][-1]))
            if first:
                if bos is None and first in index:
                    bos = first
                    md[KEY + "bos_token_id"] = index[first]
                flags["bos"] = first == bos
            if last:
                if last != eos and last in index:
                    if eos in index:
                        md[KEY + "eot_token_id"] = index[eos]
                    eos = last
                    md[KEY + "eos_token_id"] = index[last]
                flags["eos"] = last == eos
            sep = _add_sep(p.get("pair") or [], first, last, (_token_text(tc.get("sep_token")), eos))
            if sep is not None:
                flags["sep"] = sep
    return flags


def _add_sep(pair: list, first, last, seps) -> bool | None:
    """add_sep as llama.cpp's converter reads a pair template `[first] A [sep [sep]] B [last]`:
    None where the template has nothing between A and B."""
    def special(x):
        return (x.get("SpecialToken") or {}).get("id") if isinstance(x, dict) else None

    def seq(x):
        return (x.get("Sequence") or {}).get("id") if isinstance(x, dict) else None

    pair = pair[1 if first and pair and special(pair[0]) == first else 0:]
    if last and pair and special(pair[-1]) == last:
        pair = pair[:-1]
    if len(pair) < 3 or seq(pair[0]) != "A" or seq(pair[-1]) != "B":
        return None
    mid = pair[1:-1]
    return ((special(mid[0]) in seps and not last)
            or (len(mid) == 2 and special(mid[1]) in seps))


def tokenizer_metadata(ckpt: HFCheckpoint) -> tuple[dict, list[str]]:
    """(metadata, notes). Raises ConvertError when the checkpoint has no usable tokenizer.
    Special ids: the SentencePiece model's own, then config.json's `*_token_id`, then
    tokenizer_config.json's token texts (the last word, as in llama.cpp's converter)."""
    n_vocab = ckpt.config.hparams.n_vocab
    tc = ckpt.json_file("tokenizer_config.json") or {}
    if not isinstance(tc, dict):
        raise ConvertError("tokenizer_config.json: not a JSON object")
    tok = None
    if ckpt.has("tokenizer.model"):
        md, notes = spm_metadata(ckpt._p("tokenizer.model"), n_vocab)
        source = "tokenizer.model"
    elif ckpt.has("tokenizer.json"):
        tok = ckpt.json_file("tokenizer.json")
        md, notes = bpe_metadata(tok, n_vocab)
        source = "tokenizer.json"
    else:
        raise ConvertError(f"no tokenizer in {ckpt.path}: expected tokenizer.model or tokenizer.json")
    md[KEY + "tokens"] = list(md[KEY + "tokens"])
    md[KEY + "token_type"] = np.array(md[KEY + "token_type"], np.int32)
    _added_tokens(md, tc)
    index: dict[str, int] = {}
    for i, t in enumerate(md[KEY + "tokens"]):
        index.setdefault(t, i)
    config = ckpt.config.raw
    for typ, key in SPECIALS:
        v = config.get(f"{typ}_token_id")
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n_vocab:
            md[KEY + key] = v
    for typ, key in SPECIALS:
        text = _token_text(tc.get(f"{typ}_token"))
        if text is not None:
            if text not in index:
                raise ConvertError(f"tokenizer_config.json: {typ}_token {text!r} is not in the vocabulary")
            md[KEY + key] = index[text]
    flags = _post_processor(tok, tc, md, index) if tok else {}
    for typ in ("bos", "eos", "sep"):
        if typ in flags:
            md[KEY + f"add_{typ}_token"] = flags[typ]
        elif isinstance(tc.get(f"add_{typ}_token"), bool):
            md[KEY + f"add_{typ}_token"] = tc[f"add_{typ}_token"]
    template = _chat_template(ckpt, tc)
    if template:
        md["tokenizer.chat_template"] = template
    notes.insert(0, f"tokenizer from {source}: {len(md[KEY + 'tokens'])} tokens, model {md[KEY + 'model']}")
    return md, notes
