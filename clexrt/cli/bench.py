"""`clexrt bench`: prompt-processing and generation speed, in the manner of llama-bench.

pp: one eval of P random token ids after D cached ones; tg: N evals of one random id each after
D cached ones. Only those evals are timed (the depth prefill is not). Each figure is the mean and
standard deviation of tokens/s over the repetitions, after one untimed warm-up. tg is also shown
as the weight bytes it streams per second and as a % of the read bandwidth the machine reaches
with the same threads, measured after the tests (clexrt.engine.bandwidth)."""
from __future__ import annotations

import json
import os
import resource
import statistics
import time

import click
import numpy as np

from ..engine.bandwidth import decode_bytes_per_token, read_bandwidth
from .options import log_scale_option, rope_options


def _stats(xs):
    return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def run_bench(model, n_prompt: int, n_gen: int, depth: int, reps: int, seed: int = 1234) -> dict:
    rng = np.random.default_rng(seed)
    V = model.n_vocab

    def prefill():
        model.reset()
        if depth:
            for i in range(0, depth, 512):
                model.eval(rng.integers(0, V, min(512, depth - i)))

    def one_pp():
        prefill()
        toks = rng.integers(0, V, n_prompt)
        t = time.perf_counter()
        model.eval(toks)
        return n_prompt / (time.perf_counter() - t)

    def one_tg():
        prefill()
        toks = rng.integers(0, V, n_gen)
        t = time.perf_counter()
        for tok in toks:
            model.eval([int(tok)])
        return n_gen / (time.perf_counter() - t)

    out = {}
    if n_prompt:
        one_pp()
        out["pp"] = [one_pp() for _ in range(reps)]
    if n_gen:
        one_tg()
        out["tg"] = [one_tg() for _ in range(reps)]
    return out


@click.command("bench")
@click.option("-m", "--model", "model_path", required=True, help="GGUF file or model alias.")
@click.option("-p", "--n-prompt", default=512, show_default=True, type=click.IntRange(0, 1 << 20))
@click.option("-n", "--n-gen", default=128, show_default=True, type=click.IntRange(0, 1 << 20))
@click.option("-t", "--threads", default=None, type=click.IntRange(1, 512), help="Default: physical cores.")
@click.option("-r", "--reps", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("-d", "--depth", default=0, show_default=True, type=click.IntRange(0, 1 << 24),
              help="Tokens already in the KV cache before each test.")
@click.option("-b", "--batch", default=512, show_default=True, type=click.IntRange(1, 1 << 16))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--bandwidth/--no-bandwidth", default=True, show_default=True,
              help="Measure the machine's read bandwidth with the same threads (a plain read of a buffer 4x the "
                   "last-level cache, best of 5) and show tg as weight GB/s and as a % of it.")
@rope_options
@log_scale_option
def cmd(model_path, n_prompt, n_gen, threads, reps, depth, batch, as_json, bandwidth, rope, clex_mode, kv_policy,
        kv_type, clex_log_scale):
    """Measure prompt-processing (pp) and generation (tg) tokens per second."""
    from ..engine import native as _lib
    from ..engine.model import Model

    from .registry import resolve_model

    model_path = resolve_model(model_path)
    n_ctx = depth + max(n_prompt, n_gen) + 1
    model = Model(model_path, n_ctx=n_ctx, n_threads=threads, n_batch=batch, rope=rope,
                  clex_mode=clex_mode, kv_policy=kv_policy, kv_type=kv_type, log_scale=clex_log_scale)
    res = run_bench(model, n_prompt, n_gen, depth, reps)
    change = None
    if depth and model.schedule.method != "none":
        # the one-off cost of a table change with `depth` tokens cached (re-rotating, or
        # re-evaluating, the whole cache), measured apart from the pp/tg figures
        model.reset()
        rng = np.random.default_rng(4321)
        model.eval(rng.integers(0, model.n_vocab, depth))
        change = model.measure_table_change(reps=1 if model.kv_policy == "recompute" else reps)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = {
        "model": os.path.basename(model_path),
        "model_path": os.path.abspath(model_path),
        "size_bytes": os.path.getsize(model_path),
        "n_params": model.n_params,
        "threads": model.n_threads,
        "isa": _lib.isa(),
        "depth": depth,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "reps": reps,
        "kv_bytes": model.kv_bytes,
        "kv_type": model.kv_type,
        "peak_rss_bytes": rss,
        "rope": model.rope_state,
    }
    if change:
        row["table_change_ms"] = 1e3 * _stats(change["seconds"])[0]
        row["table_change_ms_std"] = 1e3 * _stats(change["seconds"])[1]
        row["table_change"] = change
    for k in ("pp", "tg"):
        if k in res:
            mean, sd = _stats(res[k])
            row[f"{k}_tps"], row[f"{k}_tps_std"], row[f"{k}_samples"] = mean, sd, res[k]
    hp = model.hparams
    row["weight_bytes_per_token"] = decode_bytes_per_token(model.gguf, hp.n_expert, hp.n_expert_used)
    model.close()
    if bandwidth and "tg_tps" in row:
        row["read_gbps"] = read_bandwidth(row["threads"])
        row["tg_weight_gbps"] = row["tg_tps"] * row["weight_bytes_per_token"] / 1e9
        row["tg_bandwidth_pct"] = 100.0 * row["tg_weight_gbps"] / row["read_gbps"]
    if as_json:
        click.echo(json.dumps(row))
        return
    click.echo(f"model: {row['model']} ({row['size_bytes'] / 2**20:.1f} MiB, {row['n_params'] / 1e6:.1f}M params), "
               f"threads: {row['threads']}, isa: {row['isa']}")
    click.echo(f"{'test':>12} | {'t/s':>20}")
    click.echo(f"{'-' * 12}-+-{'-' * 20}")
    for k, n in (("pp", n_prompt), ("tg", n_gen)):
        if f"{k}_tps" in row:
            name = f"{k}{n}" + (f" @ d{depth}" if depth else "")
            click.echo(f"{name:>12} | {row[k + '_tps']:>11.2f} ± {row[k + '_tps_std']:>6.2f}")
    if "read_gbps" in row:
        click.echo(f"tg streams {row['weight_bytes_per_token'] / 2**20:.1f} MiB of weights per token: "
                   f"{row['tg_weight_gbps']:.1f} GB/s, {row['tg_bandwidth_pct']:.0f}% of the {row['read_gbps']:.1f} GB/s "
                   f"a plain read reaches with {row['threads']} threads")
    st = row["rope"]
    if st["method"] != "none":
        sched = model.schedule
        ts = sorted({sched.factor(depth + 1), sched.factor(depth + max(n_prompt, n_gen))})
        click.echo(f"rope: {st['method']} ({st['mode']}), t = {' .. '.join(f'{t:g}' for t in ts)} in the tests, "
                   f"kv policy {st['kv_policy']}{', log_scale on' if st.get('log_scale') else ''}")
    if change:
        click.echo(f"table change at depth {depth} (t {change['from_t']:g} <-> {change['to_t']:g}, "
                   f"{change['policy']}): {row['table_change_ms']:.2f} ± {row['table_change_ms_std']:.2f} ms")
    click.echo(f"peak RSS: {rss / 2**20:.1f} MiB", err=True)
