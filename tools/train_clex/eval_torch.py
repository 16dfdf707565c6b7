"""Perplexity of the trained models in PyTorch, with the chunking of `clexrt perplexity`
(llama-perplexity's: the text encoded once with BOS in front, chunks of n_ctx tokens whose first
token is set to BOS, one full forward per chunk, only the second half scored: rows n_ctx/2 ..
n_ctx-2 predicting the next token).

    python tools/train_clex/eval_torch.py MODEL.pt TOKENIZER.model TEXT --ctx 128,256,512,1024 \
        --methods none,linear,ntk,yarn --chunks 64,32,16,8 --json

Methods (t = N/L rounded up, as clexrt's ceil schedule; all in float32):
  none     the base frequencies (a CLEX model: its stored inv_freq)
  linear   inv_freq / t
  ntk      inv_freq_j * t^(-2j/(d-2))
  yarn     NTK-by-parts (beta_fast 32, beta_slow 1, ramp in the number of turns within L) and the
           temperature 0.1 ln t + 1 on q and k (q.k scaled by its square)
  clex     official CLEX inference: t = min(ceil(N/L), M), the ODE solved once on the grid 1..M
           (torchdiffeq rk4, float32), row t; t = 1 the stored inv_freq
  clex-continuous  the ODE solved on [1, N/L] (equal to clex when N is a multiple of L)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config, TinyLlama  # noqa: E402

BOS = 1


def load(model_pt: str) -> TinyLlama:
    src = torch.load(model_pt, map_location="cpu", weights_only=False)
    cfg = Config.from_dict(src["config"])
    m = TinyLlama(cfg, clex=any(k.startswith("model.clex_layer.") for k in src["state_dict"]))
    m.load_state_dict(src["state_dict"])
    return m.eval()


def table(model: TinyLlama, method: str, n: int) -> tuple[torch.Tensor, float, float]:
    """(inverse frequencies, t, attention scale on q.k) for a sequence of n tokens."""
    c = model.c
    L = c.hparams.n_ctx_train
    base = model.model.clex_layer.inv_freq if model.is_clex else model.rope_inv_freq
    t = float(max(1, -(-n // L)))
    if method == "none":
        return base, 1.0, 1.0
    if method == "clex":
        t = min(t, c.max_factor)
        return model.model.clex_layer.table(int(t)), t, 1.0
    if method == "clex-continuous":
        t = min(max(n / L, 1.0), c.max_factor)
        if t == 1.0:
            return base, t, 1.0
        return model.model.clex_layer.solve([1.0, t])[1], t, 1.0
    b = base.double()
    h = b.numel()
    if method == "linear":
        return (b / t).float(), t, 1.0
    if method == "ntk":
        return (b * t ** (-torch.arange(h, dtype=torch.float64) / (h - 1))).float(), t, 1.0
    if method == "yarn":
        r = L * b / (2 * math.pi)
        gamma = ((r - 1.0) / (32.0 - 1.0)).clamp(0.0, 1.0)
        f = 1.0 if t <= 1 else 0.1 * math.log(t) + 1.0
        return ((1 - gamma) * b / t + gamma * b).float(), t, f * f
    raise ValueError(f"unknown method {method!r}")


@torch.no_grad()
def perplexity(model: TinyLlama, tokens: list[int], n_ctx: int, n_chunks: int, method: str) -> dict:
    inv, t, scale = table(model, method, n_ctx)
    avail = len(tokens) // n_ctx
    n = avail if n_chunks <= 0 else min(n_chunks, avail)
    first = n_ctx // 2
    nll, count = 0.0, 0
    t0 = time.perf_counter()
    for i in range(n):
        chunk = torch.tensor(tokens[i * n_ctx:(i + 1) * n_ctx], dtype=torch.long)
        chunk[0] = BOS
        logits = model(chunk[None], None, inv, attn_scale=scale)[0].double()
        lp = F.log_softmax(logits[first:n_ctx - 1], dim=-1)
        tgt = chunk[first + 1:n_ctx]
        nll -= float(lp.gather(1, tgt[:, None]).sum())
        count += tgt.numel()
    return {"ctx": n_ctx, "method": method, "t": t, "ppl": math.exp(nll / count), "chunks": n,
            "tokens_scored": count, "seconds": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_pt")
    ap.add_argument("tokenizer")
    ap.add_argument("text")
    ap.add_argument("--ctx", default="128,256,512,1024")
    ap.add_argument("--methods", default="none")
    ap.add_argument("--chunks", default="-1", help="one value, or one per context")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=a.tokenizer)
    with open(a.text, encoding="utf-8") as f:
        tokens = [BOS] + sp.encode(f.read())
    model = load(a.model_pt)
    ctxs = [int(c) for c in a.ctx.split(",")]
    chunks = [int(c) for c in a.chunks.split(",")]
    chunks = chunks * len(ctxs) if len(chunks) == 1 else chunks
    print(f"eval_torch: {len(tokens)} tokens", file=sys.stderr)
    for method in a.methods.split(","):
        for n_ctx, k in zip(ctxs, chunks):
            r = perplexity(model, tokens, n_ctx, k, method)
            print(json.dumps(r) if a.json else f"{n_ctx:>6} {method:<16} t={r['t']:<5g} PPL {r['ppl']:.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
