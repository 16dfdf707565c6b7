"""llama.cpp runs the GGUFs `clexrt convert --outtype f32` writes, and computes what clexrt computes:
for each tiny checkpoint of tests/test_convert_archs.py (LLaMA, Llama 3 rope scaling, Mistral,
Qwen2, Gemma 3 with local and global layers, and their CLEX variants, which llama.cpp runs as the
base model: within the training length CLEX is the base rope),

- greedy decoding: llama-completion's ids (prompt and continuation, read from the session file
  that --prompt-cache-all writes: it takes no ids and prints none) are our tokenizer's prompt ids
  and our greedy continuation of them;
- log-probabilities: llama-perplexity tokenizes a text as we do, and the log-probabilities it
  stores with --kl-divergence-base (uint16 codes, steps of 16/65535) are ours within 3e-4 over
  3 chunks (~1e-4 measured; gemma3: 6e-3, since ggml's CPU GELU reads an f16 table: 3e-3
  measured, and <= 1e-3 from a transformers forward whose GELU rounds through f16 likewise).

llama.cpp runs with an f32 KV cache and flash attention off (its CPU flash attention moves these
log-probabilities by ~1e-2 even on an f32 cache). Where llama.cpp cannot represent a checkpoint,
the check is made on one it can:
- Mistral: llama.cpp ignores llama.attention.sliding_window, so the sequences stay within the
  window (8): chunks of 8 tokens and prompt + continuation of at most 8 + 1;
- Gemma 3: llama.cpp scales queries by 1/sqrt(head_dim) whatever query_pre_attn_scalar says (but
  for the 27B), so the tiny checkpoint's config gets query_pre_attn_scalar = head_dim (as in the
  real 270M, 1B, 4B and 12B) before conversion; its window (8) is crossed by every check.

Skipped where llama.cpp's binaries are absent: CLEXRT_LLAMA_CPP_BIN names the folder holding
llama-completion and llama-perplexity (default: llama/build/bin beside this checkout).
"""
import json
import os
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

import hfgen  # noqa: E402
from clexrt.cli import cli  # noqa: E402
from test_convert_archs import SPECS  # noqa: E402     the same checkpoints

BIN = Path(os.environ.get("CLEXRT_LLAMA_CPP_BIN") or Path(__file__).resolve().parents[2] / "llama/build/bin")
if not (BIN / "llama-completion").is_file() or not (BIN / "llama-perplexity").is_file():
    pytest.skip(f"llama.cpp's llama-completion and llama-perplexity are not in {BIN} (set CLEXRT_LLAMA_CPP_BIN)",
                allow_module_level=True)

pytestmark = [pytest.mark.torch, pytest.mark.slow]

NAMES = list(SPECS)
LLAMA_FLAGS = ["-t", "2", "-ctk", "f32", "-ctv", "f32", "-fa", "off"]
PROMPTS = ["The quick brown fox", "Numbers like 12345 and"]
N_PREDICT = 16
SESSION_MAGIC = 0x6767736E        # 'ggsn': llama.h LLAMA_SESSION_MAGIC
N_CHUNKS = 3


def _run(*args) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, timeout=300,
                       env=dict(os.environ, LD_LIBRARY_PATH=str(BIN)))
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    return r


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("llamacpp_runs")


def _gguf(root: Path, name: str) -> Path:
    """Our F32 GGUF of the checkpoint `name` (a Gemma 3 one with query_pre_attn_scalar = head_dim)."""
    folder, out = root / name, root / f"{name}.gguf"
    if out.exists():
        return out
    hfgen.make_tf_checkpoint(folder, SPECS[name])
    if SPECS[name].arch == "gemma3":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["query_pre_attn_scalar"] = cfg["head_dim"]
        (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    r = CliRunner().invoke(cli, ["convert", str(folder), "-o", str(out), "--outtype", "f32", "--no-progress"])
    assert r.exit_code == 0, r.output
    return out


def _session_ids(path: Path) -> list[int]:
    """The ids a llama.cpp session file starts with: magic, version, count, then int32 ids."""
    b = path.read_bytes()
    magic, _version, n = struct.unpack_from("<III", b)
    assert magic == SESSION_MAGIC
    return list(struct.unpack_from(f"<{n}i", b, 12))


def _llama_greedy(path: Path, prompt: str, n: int, tmp: Path) -> tuple[list[int], list[int]]:
    """llama-completion's (prompt ids, generated ids): it stops after n ids or an end-of-generation id."""
    sess = tmp / "session.bin"
    sess.unlink(missing_ok=True)
    r = _run(BIN / "llama-completion", "-m", path, "-p", prompt, "-n", n, "--temp", "0", "--seed", "0",
             "-no-cnv", "--no-display-prompt", "-c", 64, *LLAMA_FLAGS,
             "--prompt-cache", sess, "--prompt-cache-all", "--verbose-prompt")
    err = r.stderr.decode(errors="replace")
    prompt_ids = [int(t) for t in re.findall(r"^\S+ I +(\d+) -> '", err, re.M)]
    assert int(re.search(r"number of tokens in prompt = (\d+)", err).group(1)) == len(prompt_ids)
    ids = _session_ids(sess)
    assert ids[:len(prompt_ids)] == prompt_ids
    return prompt_ids, ids[len(prompt_ids):]


def _ours_greedy(model, tok, prompt_ids: list[int], n: int) -> list[int]:
    model.reset()
    logits, out = model.eval(prompt_ids), []
    while len(out) < n:
        out.append(int(np.argmax(logits)))
        if tok.is_eog(out[-1]):
            break
        logits = model.eval(out[-1:])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_llama_completion_greedy_ids_are_ours(root, name):
    from clexrt.engine.model import Model
    from clexrt.text.tokenizer import Tokenizer

    path = _gguf(root, name)
    window = SPECS[name].window if SPECS[name].arch == "mistral" else None
    with Model(path, n_threads=2) as m:
        tok = Tokenizer.from_metadata(m.metadata)
        for prompt in ["The"] if window else PROMPTS:
            p_ours = tok.encode(prompt, add_bos=True, special=True)
            # Mistral: the last id comes from the logits at position window - 1
            n = window + 1 - len(p_ours) if window else N_PREDICT
            p_theirs, g_theirs = _llama_greedy(path, prompt, n, root)
            assert p_ours == p_theirs, prompt
            assert _ours_greedy(m, tok, p_theirs, n) == g_theirs, prompt


def _read_logprobs(path: Path):
    """llama-perplexity's --kl-divergence-base file (tools/perplexity/perplexity.cpp): '_logits_',
    n_ctx, n_vocab, n_chunk, the text's ids [n_chunk * n_ctx], then per chunk and scored position
    (n_ctx/2 .. n_ctx-2) a row of two floats (scale, min log-prob) and n_vocab uint16 codes, padded
    to an even count: log-prob = min + scale * code. Returns (n_ctx, ids, [n_chunk, rows, n_vocab])."""
    b = path.read_bytes()
    assert b[:8] == b"_logits_"
    n_ctx, n_vocab, n_chunk = struct.unpack_from("<3i", b, 8)
    ids = np.frombuffer(b, "<i4", n_chunk * n_ctx, 20)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    rows = n_ctx - 1 - n_ctx // 2
    raw = np.frombuffer(b, "<u2", n_chunk * rows * nv, 20 + 4 * ids.size).reshape(n_chunk, rows, nv)
    head = np.ascontiguousarray(raw[..., :4]).view("<f4")
    return n_ctx, ids, head[..., :1] * raw[..., 4:4 + n_vocab].astype(np.float32) + head[..., 1:2]


@pytest.mark.parametrize("name", NAMES)
def test_llama_perplexity_log_probs_are_ours(root, name):
    from clexrt.engine.model import Model
    from clexrt.text.tokenizer import Tokenizer

    path = _gguf(root, name)
    spec = SPECS[name]
    n_ctx = spec.window if spec.arch == "mistral" else 32
    text = root / "text.txt"
    text.write_text(" ".join(hfgen.CORPUS), encoding="utf-8")
    base = root / f"{name}.kld"
    _run(BIN / "llama-perplexity", "-m", path, "-f", text, "-c", n_ctx, "-b", n_ctx, "--chunks", N_CHUNKS,
         *LLAMA_FLAGS, "--kl-divergence-base", base)
    ctx, ids, theirs = _read_logprobs(base)
    assert ctx == n_ctx and theirs.shape[0] == N_CHUNKS
    tol = 6e-3 if spec.arch == "gemma3" else 3e-4
    with Model(path, n_threads=2) as m:
        tok = Tokenizer.from_metadata(m.metadata)
        assert tok.encode(text.read_text(encoding="utf-8"), add_bos=True)[:ids.size] == ids.tolist()
        for c in range(N_CHUNKS):
            chunk = ids[c * n_ctx:(c + 1) * n_ctx].copy()
            if tok.add_bos:
                chunk[0] = tok.bos_id       # as llama-perplexity does
            x = m.logits(chunk)[n_ctx // 2:n_ctx - 1].astype(np.float64)
            lp = x - x.max(1, keepdims=True)
            lp -= np.log(np.exp(lp).sum(1, keepdims=True))
            keep = lp > lp.max(1, keepdims=True) - 15      # llama.cpp clamps at 16 below the largest
            worst = np.abs(lp - theirs[c])[keep].max()
            assert worst < tol, (c, worst)
