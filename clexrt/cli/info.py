"""`clexrt info MODEL [--json]`: what a GGUF file holds, without loading the weights.

Architecture, parameter count, quantization (the file type and a count of tensors per type),
context length and shape, RoPE settings, the KV cache's bytes per token of each cache type, the
tokenizer (kind, pre-tokenizer, vocabulary size, special tokens), the chat template (the file's,
or the built-in format its vocabulary points to, and why), and the CLEX tables if the file has
them.
"""
from __future__ import annotations

import json
import os
from collections import Counter

import click
import numpy as np

from ..errors import ClexError
from ..gguf.constants import FILE_TYPES
from ..gguf.strings import StringArray
from ..rope.methods import declared_rope
from ..rope.tables import read_clex
from .registry import resolve_model

__all__ = ["cmd", "describe"]


def _plain(v):
    """JSON-ready: numpy scalars to Python, large arrays summarised by shape."""
    if isinstance(v, np.ndarray):
        return {"shape": list(v.shape), "dtype": str(v.dtype)} if v.size > 16 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, StringArray)):
        return [_plain(x) for x in v]
    return v


def _clex(md: dict):
    """The CLEX section (rope.tables.read_clex's summary), or the error that makes the tables
    unusable: the rest of the file is still worth showing."""
    try:
        c = read_clex(md)
    except ClexError as e:
        return {"error": str(e)}
    return None if c is None else _plain(c.to_json())


def _declared(hp, g):
    """The rope scaling the file declares, as llama.cpp applies it at the file's context length
    (rope.methods.declared_rope's fields and one-line description), or why it cannot run."""
    if hp is None:
        return None
    try:
        d = declared_rope(hp, g)
    except ClexError as e:
        return {"error": str(e)}
    return {**_plain(d.fields), "description": d.description}


def _tokenizer_info(md: dict) -> dict:
    k = "tokenizer.ggml."
    tokens = md.get(k + "tokens") or []
    info = {"model": md.get(k + "model"), "pre": md.get(k + "pre"), "vocab_size": len(tokens),
            "add_bos": md.get(k + "add_bos_token"), "special": {}}
    ids = {name: md.get(f"{k}{name}_token_id") for name in ("bos", "eos", "eot", "unknown",
                                                             "padding")}
    try:
        from ..text.tokenizer import Tokenizer

        tok = Tokenizer.from_metadata(md)
        ids.update(bos=tok.bos_id, eos=tok.eos_id, eot=tok.eot_id, unknown=tok.unk_id,
                   padding=tok.pad_id)
        info["add_bos"] = tok.add_bos
        info["eog"] = sorted(int(i) for i in tok.eog_ids)
    except Exception as e:               # an unsupported vocabulary is still worth describing
        info["error"] = str(e)
    for name, i in ids.items():
        if i is not None and 0 <= int(i) < len(tokens):
            info["special"][name] = {"id": int(i), "text": str(tokens[int(i)])}
    return info


def _chat_format(md: dict) -> dict:
    """Which chat template `clexrt chat` uses and why, and the texts that end its turns."""
    from ..text.chat_template import ChatTemplate

    try:
        t = ChatTemplate.from_metadata(md)
    except ClexError as e:              # a template that does not compile: still show the rest
        return {"name": "file", "origin": "from the file", "error": str(e)}
    return {"name": t.name, "origin": t.describe(), "end": list(t.end)}


def describe(path: str) -> dict:
    """Everything `info` shows, as a JSON-ready dict."""
    from ..engine.model import log_scale_choice, unsupported_weight
    from ..gguf import GGUFFile, validate_model

    with GGUFFile(path) as g:
        md = g.metadata
        hp = None
        try:                       # a file can parse and still not be a model clexrt runs
            hp = validate_model(g)
            problem = unsupported_weight(g)
        except ClexError as e:
            problem = str(e)
        arch = md.get("general.architecture", "?")

        def a(key, default=None):
            return _plain(md.get(f"{arch}.{key}", default))

        declared = _declared(hp, g)
        if problem is None and declared and declared.get("error"):
            problem = declared["error"]
        clex = _clex(md)
        if clex and "error" not in clex and hp is not None:
            # whether Model(log_scale=None) applies it, and why (docs/clex.md, "log_scale")
            clex["log_scale_default"], clex["log_scale_why"] = log_scale_choice(hp)
        types = Counter(t.type_name for t in g.tensors.values())
        ft = md.get("general.file_type")
        out = {
            "path": path,
            "file_size": g.file_size,
            "gguf_version": g.version,
            "architecture": arch,
            "name": md.get("general.name"),
            "parameters": int(sum(t.n_elements for t in g.tensors.values())),
            "quantization": {
                "file_type": None if ft is None else int(ft),
                "file_type_name": None if ft is None else FILE_TYPES.get(int(ft), f"type {ft}"),
                "tensor_types": dict(types.most_common()),
            },
            "context_length": a("context_length"),
            "embedding_length": a("embedding_length"),
            "block_count": a("block_count"),
            "feed_forward_length": a("feed_forward_length"),
            "head_count": a("attention.head_count"),
            "head_count_kv": a("attention.head_count_kv"),
            "rope": {"freq_base": a("rope.freq_base"), "dimension_count": a("rope.dimension_count"),
                     "scaling_type": a("rope.scaling.type"),
                     "scaling_factor": a("rope.scaling.factor"), "declared": declared},
            "tokenizer": _tokenizer_info(md),
            "chat_template": md.get("tokenizer.chat_template"),
            "chat_format": _chat_format(md),
            "clex": clex,
            "forward": _forward_info(hp, g) if hp is not None else None,
            "kv_cache": _kv_cache(hp) if hp is not None else None,
            "runnable": problem is None,
            "problem": problem,
        }
    return out


def _forward_info(hp, g) -> dict:
    """How clexrt runs the architecture: its choices from clexrt.gguf.archs and the file's keys
    (norm, rope layout, FFN, optional tensors, sliding window, rope tables, scales, soft-caps)."""
    from ..gguf.archs import arch_spec
    spec = arch_spec(hp.arch)
    present = [t.name.split(".")[0] + (" bias" if t.name.endswith(".bias") else "")
               for t in spec.layer if not t.required and f"blk.0.{t.name}" in g.tensors]
    extra = [t.name.replace(".weight", "").replace(".bias", " bias") for t in spec.layer
             if t.required and t.field in ("bq", "bk", "bv", "bo", "b_up", "b_down", "attn_norm_b", "q_norm",
                                           "k_norm", "attn_post_norm", "ffn_post_norm")
             and f"blk.0.{t.name}" in g.tensors]
    swa = None
    if hp.n_swa:
        n_local = sum(hp.layer_swa(i) for i in range(hp.n_layer))
        swa = {"window": hp.n_swa, "layers": n_local, "of": hp.n_layer,
               "local_rope_base": hp.local_rope_base}
    return {"norm": hp.norm, "rope_layout": hp.rope_layout, "ffn": hp.ffn,
            "parallel_residual": hp.parallel_residual, "head_dim": hp.head_dim,
            "experts": [hp.n_expert, hp.n_expert_used] if hp.n_expert else None,
            "tensors": extra + present, "embd_scale": hp.embd_scale or None,
            "attn_scale": hp.attn_scale or None, "attn_softcap": hp.attn_softcap or None,
            "final_softcap": hp.final_softcap or None, "sliding_window": swa, "note": spec.note or None}


def _kv_cache(hp) -> dict:
    """The KV cache's bytes per token for each cache type (--kv-type): keys and values of every
    layer and KV head; None for a type whose blocks the head dimension is not a whole number of."""
    from ..engine.native import KV_TYPES
    rows = 2 * hp.n_layer * hp.n_head_kv
    return {name: None if hp.head_dim % blck else rows * hp.head_dim // blck * nbytes
            for name, (_, blck, nbytes) in KV_TYPES.items()}


def _kv_line(kv: dict) -> str:
    return "per token " + ", ".join(f"{k} {v / 1024:.1f} KiB" if v is not None else f"{k} n/a (head dim)"
                                    for k, v in kv.items()) + " (--kv-type)"


def _forward_line(f: dict) -> str:
    parts = [f"{f['norm']} norm", f"{f['rope_layout']} rope", f["ffn"], f"head dim {f['head_dim']}"]
    if f["parallel_residual"]:
        parts.append("parallel residual")
    if f.get("experts"):
        parts.append(f"{f['experts'][0]} experts, {f['experts'][1]} per token")
    if f["tensors"]:
        parts.append("with " + ", ".join(f["tensors"]))
    if f["embd_scale"]:
        parts.append(f"embeddings x {f['embd_scale']:.4g}")
    if f["attn_scale"]:
        parts.append(f"attention scale {f['attn_scale']:.4g}")
    for k in ("attn_softcap", "final_softcap"):
        if f[k]:
            parts.append(f"{k.split('_')[0]} logits soft-capped at {f[k]:g}")
    w = f["sliding_window"]
    if w:
        base = f", their own rope base {w['local_rope_base']:g}" if w["local_rope_base"] else ""
        parts.append(f"sliding window {w['window']} on {w['layers']} of {w['of']} layers{base} "
                     f"(honoured)")
    return "; ".join(parts)


def _human_params(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _print(d: dict) -> None:
    echo = click.echo
    q = d["quantization"]
    echo(f"file:            {d['path']} ({d['file_size'] / 2**20:.1f} MiB, GGUF v{d['gguf_version']})")
    echo(f"architecture:    {d['architecture']}" + (f" ({d['name']})" if d["name"] else ""))
    if not d["runnable"]:
        echo(f"NOT RUNNABLE:    {d['problem']}")
    echo(f"parameters:      {_human_params(d['parameters'])} ({d['parameters']:,})")
    tt = ", ".join(f"{k} {v}" for k, v in q["tensor_types"].items())
    echo(f"quantization:    {q['file_type_name'] or '?'}; tensors: {tt}")
    echo(f"context length:  {d['context_length']}")
    echo(f"shape:           {d['block_count']} layers, embedding {d['embedding_length']}, "
         f"ffn {d['feed_forward_length']}, heads {d['head_count']} (kv {d['head_count_kv']})")
    r = d["rope"]
    scaling = f", scaling {r['scaling_type']} x{r['scaling_factor']}" if r["scaling_type"] else ""
    dec = r.get("declared")
    if dec and dec.get("error"):
        scaling = f", scaling NOT RUNNABLE: {dec['error']}"
    elif dec:
        scaling = "" if dec["description"] == "none" else f", scaling {dec['description']} (static, as llama.cpp)"
    dims = r["dimension_count"] or (d["forward"] or {}).get("head_dim", "?")
    echo(f"rope:            base {r['freq_base']}, {dims} dims{scaling}")
    if d.get("forward"):
        echo(f"forward:         {_forward_line(d['forward'])}")
    if d.get("kv_cache"):
        echo(f"kv cache:        {_kv_line(d['kv_cache'])}")
    t = d["tokenizer"]
    pre = f", pre {t['pre']}" if t.get("pre") else ""
    echo(f"tokenizer:       {t['model']}{pre}, {t['vocab_size']} tokens, add_bos {t['add_bos']}")
    if t["special"]:
        echo("special tokens:  " + ", ".join(f"{k} {v['id']} {v['text']!r}"
                                            for k, v in t["special"].items()))
    if t.get("error"):
        echo(f"tokenizer error: {t['error']}")
    tmpl, fmt = d["chat_template"], d["chat_format"]
    ends = f"; a turn ends with {', '.join(fmt['end'])}" if fmt.get("end") else ""
    if tmpl:
        lines = tmpl.splitlines()
        echo(f"chat template:   from the file, {len(tmpl)} chars{ends}")
        for line in lines[:8]:
            echo(f"    {line}")
        if len(lines) > 8:
            echo(f"    ... ({len(lines) - 8} more lines; --json shows all)")
    else:
        echo(f"chat template:   none in the file; chat uses {fmt['origin']}{ends}")
    if fmt.get("error"):
        echo(f"template error:  {fmt['error']}")
    c = d["clex"]
    if c:
        echo("clex:")
        for k, v in c.items():
            if k in ("log_scale_default", "log_scale_why"):
                continue
            if k == "log_scale" and "log_scale_default" in c:
                v = (f"{str(v).lower()} in the file; {'on' if c['log_scale_default'] else 'off'} by default: "
                     f"{c['log_scale_why']} (--clex-log-scale on|off)")
            if k == "grid" and isinstance(v, list) and len(v) > 8:
                v = f"{len(v)} points, {v[0]:g} .. {v[-1]:g}"
            echo(f"    {k}: {json.dumps(v) if not isinstance(v, str) else v}")
    else:
        echo("clex:            none")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_name", metavar="MODEL", required=False)
@click.option("-m", "--model", "model_opt", default=None, metavar="MODEL",
              help="The same as the MODEL argument (as the other commands take it).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cmd(model_name, model_opt, as_json):
    """Show what the GGUF file MODEL (a path or an alias such as smollm2) holds."""
    if model_name and model_opt and model_name != model_opt:
        raise click.UsageError("give MODEL once: as the argument or with -m")
    if not (model_name or model_opt):
        raise click.UsageError("which model? give a GGUF path or an alias (MODEL or -m MODEL)")
    path = resolve_model(model_name or model_opt)
    d = describe(os.fspath(path))
    if as_json:
        click.echo(json.dumps(d, indent=2, ensure_ascii=False))
    else:
        _print(d)
