"""`clexrt perplexity`: perplexity against context length, for CLEX and the classic RoPE scalings.

llama-perplexity's method, so the numbers compare with llama.cpp's: the text is tokenized once
(with BOS where the vocabulary asks for it), cut into chunks of n_ctx tokens whose first token is
set to BOS (where it asks), and each chunk is one full forward pass at context N = n_ctx; only the
second half of each chunk is scored (every scored token sees at least n_ctx/2 tokens of context).
After each chunk `[i]ppl` is printed; at the end `Final estimate: PPL = X +/- Y`, Y the standard
error of the mean negative log-likelihood carried through exp.

A sweep (`--ctx 512,1024,2048 --rope none,ntk,clex`) gives one row per (context, method).
With log_scale on (`--clex-log-scale on`, or a CLEX file that asks for it) each chunk's queries are
scaled by log(n_ctx)/log(L), as the official full forward of n_ctx tokens scales them.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import click
import numpy as np

from .options import kv_type_option, log_scale_option
from ..errors import ClexError

__all__ = ["cmd", "perplexity", "PplResult"]


@dataclass
class PplResult:
    ctx: int
    method: str
    mode: str | None
    t: float
    ppl: float
    ppl_err: float
    chunks: int
    tokens_scored: int
    seconds: float
    chunk_ppl: list
    log_scale: bool = False

    def label(self) -> str:
        name = self.method if self.mode is None else f"{self.method} ({self.mode})"
        return name + (" +log" if self.log_scale else "")


def _nll_rows(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64."""
    x = logits.astype(np.float64)
    mx = x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(x - mx).sum(axis=1)) + mx[:, 0]
    return lse - x[np.arange(x.shape[0]), targets]


def perplexity(model, tokens, n_ctx: int, n_chunks: int = -1, bos_id: int | None = None,
               progress=None, block: int = 256) -> PplResult:
    """llama-perplexity over `tokens` with chunks of n_ctx: the second half of each is scored.
    bos_id: the first token of every chunk is set to it (None: left as it is). progress(i, ppl)
    is called after each chunk."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if n_ctx < 4:
        raise ClexError(f"a context of {n_ctx} tokens is too small to score")
    if tokens.size < 2 * n_ctx:
        raise ClexError(f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of "
                        f"{n_ctx} (the text has {tokens.size})")
    avail = tokens.size // n_ctx
    n = avail if n_chunks is None or n_chunks <= 0 else min(n_chunks, avail)
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    chunk_ppl = []
    t0 = time.perf_counter()
    for i in range(n):
        batch = tokens[i * n_ctx:(i + 1) * n_ctx].copy()
        if bos_id is not None:
            batch[0] = bos_id
        for pos, rows in model.logits_blocks(batch, start=first, block=block):
            stop = min(pos + rows.shape[0], n_ctx - 1)      # the last row predicts past the chunk
            if stop <= pos:
                continue
            targets = tokens[i * n_ctx + pos + 1:i * n_ctx + stop + 1]
            v = _nll_rows(rows[:stop - pos], targets)
            nll += float(v.sum())
            nll2 += float((v * v).sum())
            count += v.size
        chunk_ppl.append(math.exp(nll / count))
        if progress:
            progress(i + 1, chunk_ppl[-1])
    mean, mean2 = nll / count, nll2 / count
    ppl = math.exp(mean)
    var = mean2 - mean * mean
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else float("nan")
    st = model.rope_state
    method = st.get("method", "none")
    return PplResult(ctx=n_ctx, method=method, mode=st.get("mode") if method != "none" else None,
                     t=float(st.get("t", 1.0)), ppl=ppl, ppl_err=err, chunks=n, tokens_scored=count,
                     seconds=time.perf_counter() - t0, chunk_ppl=chunk_ppl,
                     log_scale=bool(st.get("log_scale", False)))


def _split(values: str, what: str) -> list[str]:
    out = [v.strip() for v in values.split(",") if v.strip()]
    if not out:
        raise click.BadParameter(f"give at least one {what}")
    return out


def _ctx_list(value: str) -> list[int]:
    out = []
    for v in _split(value, "context length"):
        try:
            n = int(v)
        except ValueError:
            raise click.BadParameter(f"{v!r} is not a whole number") from None
        if n < 4:
            raise click.BadParameter(f"context {n} is too small (at least 4)")
        out.append(n)
    return out


def _plot(rows: list[PplResult], path: str, title: str, train_length: int | None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = list(dict.fromkeys(r.label() for r in rows))
    for lab in labels:
        pts = sorted((r.ctx, r.ppl, r.ppl_err) for r in rows if r.label() == lab and math.isfinite(r.ppl))
        if pts:
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=[v if math.isfinite(v) else 0 for v in e], marker="o", capsize=3, label=lab)
    if train_length:
        ax.axvline(train_length, color="grey", linestyle=":", label=f"training length {train_length}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-m", "--model", "model_name", required=True, metavar="MODEL", help="GGUF file or model alias.")
@click.option("-f", "--file", "text_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The text to score (UTF-8).")
@click.option("-c", "--ctx", "ctx", default="512", show_default=True,
              help="Context length(s), comma-separated: one row per length and method.")
@click.option("--rope", default="auto", show_default=True,
              help="Method(s), comma-separated: auto, none, linear, ntk, yarn, clex.")
@click.option("--clex-mode", default=None,
              help="Schedule mode(s), comma-separated: ceil, continuous (default: the method's).")
@click.option("--kv-policy", default=None, help="rerotate | recompute (full forwards do not use it).")
@kv_type_option
@log_scale_option
@click.option("--chunks", type=int, default=-1, show_default=True,
              help="Chunks per row; -1: as many as the text holds.")
@click.option("-t", "--threads", type=int, default=None, help="Threads (default: physical cores).")
@click.option("-b", "--batch", type=click.IntRange(1, 1 << 16), default=None,
              help="Tokens per evaluation step (default: 512, fewer where the batch scratch would pass 16 MiB).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row on stdout.")
@click.option("--plot", "plot_path", default=None, metavar="OUT.png",
              help="Plot perplexity against context length (needs matplotlib: pip install 'clexrt[plot]').")
def cmd(model_name, text_file, ctx, rope, clex_mode, kv_policy, kv_type, clex_log_scale, chunks, threads, batch,
        as_json, plot_path):
    """Perplexity of MODEL on a text at one or more context lengths (llama-perplexity's method)."""
    from ..engine.model import Model
    from .registry import resolve_model
    from ..text.tokenizer import Tokenizer

    ctxs = _ctx_list(ctx)
    methods = _split(rope, "rope method")
    modes = _split(clex_mode, "mode") if clex_mode else [None]
    if plot_path:
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:
            raise ClexError("--plot needs matplotlib, which is not installed: pip install 'clexrt[plot]' "
                            "(or pip install matplotlib)")
    path = resolve_model(model_name)
    with open(text_file, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    out, err = sys.stdout, sys.stderr
    log = err if as_json else out
    rows: list[PplResult] = []
    train_length = None
    tokens = tok = None
    failed = 0
    done = set()
    for method in methods:
        for mode in modes:
            try:
                model = Model(path, n_ctx=max(ctxs), n_threads=threads, rope=method, clex_mode=mode,
                              kv_policy=kv_policy, n_batch=batch, kv_type=kv_type, log_scale=clex_log_scale)
            except ClexError as e:
                if len(methods) * len(modes) == 1:
                    raise
                failed += 1
                print(f"perplexity: rope {method}{'' if mode is None else f' ({mode})'}: {e}", file=err)
                continue
            st = model.schedule
            key = (st.method, None if st.method == "none" else st.mode)
            if key in done:          # e.g. none under several modes: one row is enough
                model.close()
                continue
            done.add(key)
            try:
                if tokens is None:
                    tok = Tokenizer.from_metadata(model.metadata)
                    tokens = tok.encode(text, add_bos=True)
                    print(f"perplexity: {len(tokens)} tokens from {text_file}", file=err)
                train_length = model.schedule.train_length
                bos = tok.bos_id if tok.add_bos else None
                for n_ctx in ctxs:
                    st = model.schedule
                    name = st.method if st.method == "none" else f"{st.method} ({st.mode})"
                    ls = f", log_scale x{model.log_factor(n_ctx):.4g}" if model.log_scale else ""
                    print(f"perplexity: ctx {n_ctx}, rope {name}, t = {st.factor(n_ctx):g}{ls}", file=log)
                    try:
                        res = perplexity(model, tokens, n_ctx, chunks, bos_id=bos,
                                         progress=lambda i, p: (log.write(f"[{i}]{p:.4f},"), log.flush()))
                    except ClexError as e:
                        failed += 1
                        print(f"\nperplexity: ctx {n_ctx}, rope {name}: {e}", file=err)
                        if as_json:
                            out.write(json.dumps({"ctx": n_ctx, "method": st.method, "mode": st.mode,
                                                  "error": str(e)}) + "\n")
                        continue
                    log.write("\n")
                    if math.isfinite(res.ppl_err):
                        print(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_err:.5f}", file=log)
                    else:
                        print(f"Final estimate: PPL = {res.ppl:.4f}", file=log)
                    rows.append(res)
                    if as_json:
                        d = asdict(res)
                        d.update(model=path, train_length=train_length)
                        out.write(json.dumps(d) + "\n")
                        out.flush()
            finally:
                model.close()
    if not as_json and len(rows) > 1:
        print(f"\n{'ctx':>7}  {'method':<22} {'t':>7}  {'PPL':>10}  {'+/-':>9}  {'chunks':>6}", file=out)
        for r in rows:
            print(f"{r.ctx:>7}  {r.label():<22} {r.t:>7g}  {r.ppl:>10.4f}  {r.ppl_err:>9.5f}  {r.chunks:>6}", file=out)
    if plot_path and rows:
        _plot(rows, plot_path, f"perplexity: {path.rsplit('/', 1)[-1]}", train_length)
        print(f"perplexity: plot written to {plot_path}", file=err)
    if failed and not rows:
        raise ClexError("no row could be computed")
