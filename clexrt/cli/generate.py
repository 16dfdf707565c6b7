"""`clexrt generate`: continue a prompt and stream the continuation to stdout.

The prompt is not echoed; timings go to stderr, so `clexrt generate ... > out.txt` holds only the
generated text. Sampling defaults are llama.cpp's; `--temp 0` is greedy, and then the output is
the same text llama.cpp's `llama-completion --temp 0` prints. Like llama.cpp, special-token text in
the prompt (e.g. "<|im_start|>") is parsed as special tokens.
"""
from __future__ import annotations

import sys
import time

import click

from .options import ctx_threads_options, log_scale_option, rope_options
from ..errors import ClexError
from .registry import resolve_model

__all__ = ["cmd"]


def _rate(n: int, t: float) -> str:
    return f"{n / t:.2f} tokens/s" if t > 0 and n else "-"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-m", "--model", "model_name", required=True, metavar="MODEL",
              help="GGUF file, or an alias: smollm2 (default model), or a name under models/.")
@click.option("-p", "--prompt", default=None, help="The text to continue.")
@click.option("-f", "--file", "prompt_file", type=click.Path(exists=True, dir_okay=False),
              help="Read the prompt from a file.")
@click.option("-n", "--n-predict", "n_predict", type=int, default=128, show_default=True,
              help="Tokens to generate; -1: until EOS or the context is full.")
@click.option("--temp", type=float, default=0.8, show_default=True,
              help="Temperature; 0 is greedy.")
@click.option("--seed", type=int, default=-1, show_default=True, help="Sampling seed; -1: random.")
@click.option("--top-k", type=int, default=40, show_default=True, help="0 disables.")
@click.option("--top-p", type=float, default=0.95, show_default=True, help="1.0 disables.")
@click.option("--min-p", type=float, default=0.05, show_default=True, help="0.0 disables.")
@click.option("--repeat-penalty", type=float, default=1.0, show_default=True,
              help="1.0 disables.")
@click.option("--repeat-last-n", type=int, default=64, show_default=True,
              help="Window of the penalties; 0 disables, -1: the whole context.")
@click.option("--presence-penalty", type=float, default=0.0, show_default=True)
@click.option("--frequency-penalty", type=float, default=0.0, show_default=True)
@click.option("--stop", multiple=True, help="Stop at this text (repeatable); it is not printed.")
@ctx_threads_options
@rope_options
@log_scale_option
@click.option("--context-shift", is_flag=True,
              help="When the context is full, drop the older half (after the first token) and go on.")
@click.option("--verbose", is_flag=True, help="Report loading and settings on stderr.")
def cmd(model_name, prompt, prompt_file, n_predict, temp, seed, top_k, top_p, min_p,
        repeat_penalty, repeat_last_n, presence_penalty, frequency_penalty, stop, n_ctx, threads,
        rope, clex_mode, kv_policy, kv_type, clex_log_scale, context_shift, verbose):
    """Continue PROMPT with MODEL and stream the text to stdout (timings to stderr)."""
    from ..engine.session import Session
    from ..text.generate import Generation
    from ..engine.model import Model
    from ..text.sampler import Sampler, SamplingParams
    from ..text.tokenizer import Tokenizer

    if (prompt is None) == (prompt_file is None):
        raise click.UsageError("give the prompt with exactly one of -p/--prompt and -f/--file")
    if prompt_file is not None:
        with open(prompt_file, encoding="utf-8") as fh:
            prompt = fh.read()
    path = resolve_model(model_name)
    err = sys.stderr
    t0 = time.perf_counter()
    model = Model(path, n_ctx=n_ctx, n_threads=threads, rope=rope, clex_mode=clex_mode,
                  kv_policy=kv_policy, context_shift=context_shift, kv_type=kv_type,
                  log_scale=clex_log_scale)
    try:
        tok = Tokenizer.from_metadata(model.metadata)
        if verbose:
            print(f"clexrt: loaded {path} in {time.perf_counter() - t0:.2f} s: n_ctx={model.n_ctx}, "
                  f"threads={model.n_threads}, vocab={tok.n_vocab}", file=err)
            print(f"clexrt: rope {_rope_line(model)}", file=err)
        ids = tok.encode(prompt, add_bos=True, special=True)
        if not ids:
            if tok.bos_id is None:
                raise ClexError("the prompt is empty and the model has no BOS token")
            ids = [tok.bos_id]
        params = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, penalty_last_n=repeat_last_n,
                                seed=None if seed < 0 else seed)
        if verbose:
            print(f"clexrt: prompt {len(ids)} tokens; sampling {params}", file=err)
        gen = Generation(Session(model), tok, ids, Sampler(params),
                         max_tokens=None if n_predict < 0 else n_predict, stop=list(stop))
        out = sys.stdout
        last = ""
        try:
            if n_predict != 0:
                t_seen = _rope_t(model)
                for piece in gen:
                    if piece.text:
                        out.write(piece.text)
                        out.flush()
                        last = piece.text
                    if verbose and _rope_t(model) != t_seen:
                        t_seen = _rope_t(model)
                        print(f"\nclexrt: rope t={t_seen:g} from {model.n_past} tokens", file=err)
        except KeyboardInterrupt:
            out.write("\n")
            out.flush()
            _timings(gen, err)
            raise
        if out.isatty() and not last.endswith("\n"):
            out.write("\n")
        out.flush()
        _timings(gen, err)
        if verbose:
            print(f"clexrt: finish reason {gen.finish_reason}", file=err)
            print(f"clexrt: rope {_rope_line(model)} after {model.n_past} tokens", file=err)
    finally:
        model.close()


def _rope_t(model) -> float:
    return float(model.rope_state["t"])


def _rope_line(model) -> str:
    """The RoPE scaling in force (method, t, table changes, log_scale), from model.rope_state."""
    from ..rope import describe_state
    st = model.rope_state
    ls = ", log_scale on" if st.get("log_scale") else ""
    if ls and model.n_past:
        ls += f" (q x{st['log_factor']:.4g})"
    return describe_state(st) + ls


def _timings(gen, err) -> None:
    n_gen = len(gen.tokens)
    print(f"clexrt: prompt    {gen.n_prompt_eval:6d} tokens {gen.t_prompt * 1e3:9.1f} ms  "
          f"{_rate(gen.n_prompt_eval, gen.t_prompt)}", file=err)
    print(f"clexrt: generated {n_gen:6d} tokens {gen.t_gen * 1e3:9.1f} ms  "
          f"{_rate(n_gen, gen.t_gen)}", file=err)
