"""`clexrt perplexity` with the continuous schedule's step count chosen: t = ceil(N * S / L) / S
(S = --steps; 0: t = N / L exactly). The command itself has no option for S and uses
clexrt.rope.default_steps(L) = max(1, min(16, L // 256)), which is 1 for the tiny models
(L = 128): there the default continuous schedule is the ceil one at every length. This runs the
same measurement (clexrt's Model and clexrt.cli.perplexity.perplexity, llama-perplexity's
chunking) with a Model(rope_steps=S), and prints one JSON row per length as `--json` does.

    python tools/train_clex/ppl_steps.py models/tiny-clex.gguf TEXT --ctx 192,320,448 --steps 0
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--ctx", required=True, help="comma-separated context lengths")
    ap.add_argument("--rope", default="clex")
    ap.add_argument("--steps", type=int, default=0, help="steps per unit of t (0: t = N/L exactly)")
    ap.add_argument("--chunks", type=int, default=-1)
    ap.add_argument("-t", "--threads", type=int, default=1)
    a = ap.parse_args()
    from clexrt.cli.perplexity import perplexity
    from clexrt.engine.model import Model
    from clexrt.text.tokenizer import Tokenizer

    ctxs = [int(c) for c in a.ctx.split(",")]
    with open(a.text, encoding="utf-8", errors="replace") as f:
        text = f.read()
    with Model(a.model, n_ctx=max(ctxs), n_threads=a.threads, rope=a.rope, clex_mode="continuous",
               rope_steps=a.steps) as m:
        tok = Tokenizer.from_metadata(m.metadata)
        tokens = tok.encode(text, add_bos=True)
        bos = tok.bos_id if tok.add_bos else None
        for n in ctxs:
            d = asdict(perplexity(m, tokens, n, a.chunks, bos_id=bos))
            d.update(steps=a.steps, t=m.schedule.factor(n))
            print(json.dumps(d), flush=True)


if __name__ == "__main__":
    main()
