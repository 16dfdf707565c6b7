"""`clexrt bench`: prompt-processing and generation speed, in the manner of llama-bench.

pp: one eval of P random token ids after D cached ones; tg: N evals of one random id each after
D cached ones. Only those evals are timed (the depth prefill is not). Each figure is the mean and
standard deviation of tokens/s over the repetitions, after one untimed warm-up. -p, -n, -d and
-t take comma-separated lists; the tests run in llama-bench's order (for each thread count, for
each depth: the pp tests, then the tg tests), one model load per thread count (`-t 2,2` loads
twice, as llama-bench runs it twice). tg is also shown as the weight bytes it streams per second
and as a % of the read bandwidth the machine reaches with the same threads, measured after that
thread count's tests (clexrt.engine.bandwidth)."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from itertools import groupby

import click
import numpy as np

from ..engine import native
from ..engine.bandwidth import decode_bytes_per_token, read_bandwidth
from ..gguf.constants import FILE_TYPES, GGML_TYPES
from .bench_report import FORMATS, Printer, label_of
from .options import log_scale_option, rope_options


class IntList(click.ParamType):
    """A comma-separated list of integers in [lo, hi] (llama-bench's `-p 128,512`)."""
    name = "N[,N...]"

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        out = []
        for part in str(value).split(","):
            try:
                v = int(part.strip())
            except ValueError:
                self.fail(f"{part.strip()!r} is not an integer (give a comma-separated list, e.g. 128,512)",
                          param, ctx)
            if not self.lo <= v <= self.hi:
                self.fail(f"{v} is not in the range {self.lo}<=x<={self.hi}", param, ctx)
            out.append(v)
        return out


@dataclass(frozen=True)
class Test:
    threads: int | None       # None: the physical cores
    depth: int
    n_prompt: int
    n_gen: int

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen


def plan_tests(threads, depths, prompts, gens) -> list[Test]:
    """Every combination, in llama-bench's order; a 0 in -p or -n is no test."""
    return [Test(t, d, p, n) for t in threads for d in depths
            for p, n in [(p, 0) for p in prompts if p] + [(0, n) for n in gens if n]]


# ------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------
class DepthCache:
    """Brings the model to `depth` cached random tokens before each run. With a fixed RoPE table
    the prefix left by the previous run is reused (truncated, or extended to a deeper depth), as
    llama-bench keeps its context state; a schedule that changes tables with the length (CLEX)
    gets a fresh prefill each run, so a run never starts with a table change left by the last."""

    def __init__(self, model, rng):
        self.model, self.rng = model, rng
        self.reuse = model.schedule.method == "none"
        self.filled = 0

    def to(self, depth: int) -> None:
        m = self.model
        keep = min(self.filled, depth) if self.reuse else 0
        if keep:
            m.truncate(keep)
        else:
            m.reset()
        for i in range(keep, depth, 512):
            m.eval(self.rng.integers(0, m.n_vocab, min(512, depth - i)))
        self.filled = depth


def run_once(model, cache: DepthCache, test: Test, rng) -> int:
    """Nanoseconds of one run of the test (its depth prefilled first, untimed)."""
    cache.to(test.depth)
    toks = rng.integers(0, model.n_vocab, max(test.n_prompt, test.n_gen))
    t = time.perf_counter_ns()
    if test.n_prompt:
        model.eval(toks)
    else:
        for tok in toks:
            model.eval([int(tok)])
    return time.perf_counter_ns() - t


def time_test(model, cache: DepthCache, test: Test, reps: int, rng) -> list[int]:
    """Nanoseconds of each of `reps` runs, after one untimed warm-up."""
    run_once(model, cache, test, rng)
    return [run_once(model, cache, test, rng) for _ in range(reps)]


def profile_test(model, cache: DepthCache, test: Test, rng) -> dict:
    """One more run of the test with the C core's step counters on (after the timed runs, so
    they do not touch those): where a token's time goes. Microseconds per token (a pp test: per
    prompt token): the run's wall time, thread 0's time inside the C passes and the rest
    (Python's eval calls), and for each step each thread's work and wait at its barriers."""
    model.profile(True)
    try:
        wall = run_once(model, cache, test, rng)
    finally:
        model.profile(False)
    passes, names, c = model.profile_read()
    per = 1e3 * test.n_tokens
    steps = {}
    for i, name in enumerate(names):
        work, wait, bars = c[:, i, 0], c[:, i, 1], c[:, i, 2]
        if work.any() or wait.any():
            steps[name] = {"work_us": [float(w) / per for w in work], "wait_us": [float(w) / per for w in wait],
                           "barriers": float(bars[0]) * 1e3 / per}
    in_c = float(c[0, :, :2].sum())
    return {"passes": passes, "wall_us": wall / per, "in_c_us": in_c / per, "outside_us": (wall - in_c) / per,
            "steps": steps}


def table_change(model, depth: int, reps: int) -> dict | None:
    """The one-off cost of a table change with `depth` tokens cached (re-rotating, or
    re-evaluating, the whole cache), measured apart from the pp/tg figures."""
    if not depth or model.schedule.method == "none":
        return None
    model.reset()
    model.eval(np.random.default_rng(4321).integers(0, model.n_vocab, depth))
    return model.measure_table_change(reps=1 if model.kv_policy == "recompute" else reps)


def _stats(xs):
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


# ------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------
def cpu_info() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def file_type_name(g) -> str:
    """general.file_type's name (Q4_K_M); without the key, the type holding most bytes."""
    ft = g.metadata.get("general.file_type")
    if ft in FILE_TYPES:
        return FILE_TYPES[ft]
    by_type = {}
    for ti in g.tensors.values():
        by_type[ti.ggml_type] = by_type.get(ti.ggml_type, 0) + ti.nbytes
    t = max(by_type, key=by_type.get)
    return GGML_TYPES[t][0] if t in GGML_TYPES else f"type{t}"


def model_fields(model, path: str, batch: int) -> dict:
    """The fields every row of one model load shares."""
    from ..engine import native as _lib

    g, hp = model.gguf, model.hparams
    n_params = sum(ti.n_elements for ti in g.tensors.values())
    label = next(f"{n_params / d:.{p}f}{u}" for d, p, u in ((1e9, 1, "B"), (1e6, 0, "M"), (1e3, 0, "K"), (1, 0, ""))
                 if n_params >= d or d == 1)
    return {"cpu_info": cpu_info(), "backends": "CPU", "isa": _lib.isa(),
            "model_filename": os.path.abspath(path), "model_type": f"{hp.arch} {label} {file_type_name(g)}",
            "model_size": sum(ti.nbytes for ti in g.tensors.values()), "model_n_params": n_params,
            "n_batch": model.n_batch, "n_threads": model.n_threads,
            "type_k": model.kv_type, "type_v": model.kv_type, "kv_type": model.kv_type,
            "kv_bytes": model.kv_bytes,
            "weight_bytes_per_token": decode_bytes_per_token(g, hp.n_expert, hp.n_expert_used)}


def make_row(base: dict, test: Test, start: float, samples_ns: list[int], model) -> dict:
    ts = [test.n_tokens * 1e9 / ns for ns in samples_ns]
    avg_ns, sd_ns = _stats(samples_ns)
    avg_ts, sd_ts = _stats(ts)
    return {**base, "n_prompt": test.n_prompt, "n_gen": test.n_gen, "n_depth": test.depth,
            "test_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
            "avg_ns": int(round(avg_ns)), "stddev_ns": int(round(sd_ns)), "avg_ts": avg_ts, "stddev_ts": sd_ts,
            "reps": len(samples_ns),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rope": model.rope_state, "samples_ns": samples_ns, "samples_ts": ts}


def add_table_change(row: dict, change: dict) -> None:
    mean, sd = _stats(change["seconds"])
    row["table_change_ms"], row["table_change_ms_std"], row["table_change"] = 1e3 * mean, 1e3 * sd, change


def add_bandwidth(row: dict, read_gbps: float) -> None:
    row["read_gbps"] = read_gbps
    row["tg_weight_gbps"] = row["avg_ts"] * row["weight_bytes_per_token"] / 1e9
    row["tg_bandwidth_pct"] = 100.0 * row["tg_weight_gbps"] / read_gbps


def run_group(load, model_path: str, batch: int, tests: list[Test], reps: int,
              bandwidth: bool, profile: bool = False) -> tuple[list[dict], object]:
    """One model load for the tests of one thread count: their rows (with the table-change cost
    at each depth, and tg's share of the read bandwidth), and the model's rope schedule."""
    n_ctx = max(t.depth + t.n_tokens for t in tests) + 1
    model = load(n_ctx, tests[0].threads)
    rng = np.random.default_rng(1234)
    try:
        base = model_fields(model, model_path, batch)
        cache, rows = DepthCache(model, rng), []
        for depth, same_depth in groupby(tests, key=lambda t: t.depth):
            here = []
            for test in same_depth:
                start = time.time()
                here.append(make_row(base, test, start, time_test(model, cache, test, reps, rng), model))
                if profile:
                    here[-1]["profile"] = profile_test(model, cache, test, rng)
            change = table_change(model, depth, reps)
            if change:
                for row in here:
                    add_table_change(row, change)
            rows += here
        schedule = model.schedule
    finally:
        model.close()
    if bandwidth and any(r["n_gen"] for r in rows):
        gbps = read_bandwidth(base["n_threads"])
        for row in rows:
            if row["n_gen"]:
                add_bandwidth(row, gbps)
    return rows, schedule


# ------------------------------------------------------------------------------------------
# The lines below the markdown table
# ------------------------------------------------------------------------------------------
def page_reach(page: int) -> str:
    """what the long rows' prefetch asks for of each page"""
    return "every line" if page == 0 else f"the first {page} bytes of each 4 KiB page"


def profile_lines(row: dict) -> list[str]:
    """--profile's account of one test: a token's time, then each step's share"""
    p = row["profile"]
    unit = "prompt token" if row["n_prompt"] else "token"
    nth = row["n_threads"]
    out = [f"{label_of(row['n_prompt'], row['n_gen'], row['n_depth'])}, {nth} threads, profiled once more: "
           f"{p['wall_us']:.1f} us a {unit}, {p['in_c_us']:.1f} in the C core's passes and "
           f"{p['outside_us']:.1f} outside them (Python's eval calls)",
           f"  {'step':<12} {'barriers':>8}  {'work us (each thread)':>24}  {'wait us (each thread)':>24}"]
    tot_work = [0.0] * nth
    tot_wait = [0.0] * nth
    for name, st in p["steps"].items():
        tot_work = [a + b for a, b in zip(tot_work, st["work_us"])]
        tot_wait = [a + b for a, b in zip(tot_wait, st["wait_us"])]
        out.append(f"  {name:<12} {st['barriers']:8.1f}  {' '.join(f'{w:7.1f}' for w in st['work_us']):>24}  "
                   f"{' '.join(f'{w:7.1f}' for w in st['wait_us']):>24}")
    out.append(f"  {'all':<12} {sum(st['barriers'] for st in p['steps'].values()):8.1f}  "
               f"{' '.join(f'{w:7.1f}' for w in tot_work):>24}  {' '.join(f'{w:7.1f}' for w in tot_wait):>24}")
    return out


def notes(rows: list[dict], schedule) -> list[str]:
    out = []
    tg = [r for r in rows if "read_gbps" in r]
    if tg:
        r4 = native.decode_rows4_bytes()
        how = ("every row" if r4 < 0 else "no row" if r4 == 0 else f"rows up to {r4} bytes") + " four per kernel call"
        if r4 != 0:
            how += (", a quarter of a thread's rows apart" if native.decode_quarters() else ", side by side")
        out.append(f"tg streams {tg[0]['weight_bytes_per_token'] / 2**20:.1f} MiB of weights per token, "
                   f"{how} (CLEXRT_DECODE_ROWS4_MAX={r4}, CLEXRT_DECODE_QUARTERS={int(native.decode_quarters())}), prefetch "
                   f"{native.decode_prefetch_bytes()} bytes ahead (CLEXRT_DECODE_PREFETCH), rows over "
                   f"{native.DECODE_PREFETCH_SHORT_ROW} bytes "
                   f"{native.decode_prefetch_long_bytes()} (CLEXRT_DECODE_PREFETCH_LONG), "
                   f"{page_reach(native.decode_prefetch_page_bytes())} (CLEXRT_DECODE_PREFETCH_PAGE):")
        for r in tg:
            out.append(f"  {label_of(r['n_prompt'], r['n_gen'], r['n_depth'])}: {r['tg_weight_gbps']:.1f} GB/s, "
                       f"{r['tg_bandwidth_pct']:.0f}% of the {r['read_gbps']:.1f} GB/s a plain read reaches with "
                       f"{r['n_threads']} threads")
    st = rows[0]["rope"]
    if st["method"] != "none":
        lo = min(r["n_depth"] for r in rows) + 1
        hi = max(r["n_depth"] + r["n_prompt"] + r["n_gen"] for r in rows)
        ts = sorted({schedule.factor(lo), schedule.factor(hi)})
        out.append(f"rope: {st['method']} ({st['mode']}), t = {' .. '.join(f'{t:g}' for t in ts)} in the tests, "
                   f"kv policy {st['kv_policy']}{', log_scale on' if st.get('log_scale') else ''}")
    seen = set()
    for r in rows:
        ch = r.get("table_change")
        if ch and (r["n_threads"], r["n_depth"]) not in seen:
            seen.add((r["n_threads"], r["n_depth"]))
            out.append(f"table change at depth {r['n_depth']}, {r['n_threads']} threads (t {ch['from_t']:g} <-> "
                       f"{ch['to_t']:g}, {ch['policy']}): {r['table_change_ms']:.2f} ± {r['table_change_ms_std']:.2f} ms")
    for r in rows:
        if "profile" in r:
            out += profile_lines(r)
    return out


# ------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------
@click.command("bench")
@click.option("-m", "--model", "model_path", required=True, help="GGUF file or model alias.")
@click.option("-p", "--n-prompt", default="512", show_default=True, type=IntList(0, 1 << 20),
              help="Prompt lengths of the pp tests (comma-separated; 0: none).")
@click.option("-n", "--n-gen", default="128", show_default=True, type=IntList(0, 1 << 20),
              help="Token counts of the tg tests (comma-separated; 0: none).")
@click.option("-t", "--threads", default=None, type=IntList(1, 512),
              help="Thread counts (comma-separated; default: the physical cores). One model load each.")
@click.option("-r", "--reps", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("-d", "--depth", default="0", show_default=True, type=IntList(0, 1 << 24),
              help="Tokens already in the KV cache before each test (comma-separated).")
@click.option("-b", "--batch", default=None, type=click.IntRange(1, 1 << 16),
              help="Tokens per evaluation step (default: 512, fewer where the batch scratch would pass 16 MiB).")
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default=None,
              help="md (default): llama-bench's table (backend: CPU and the instruction set the kernels "
                   "use, e.g. 'CPU (avx512)'), then tg's bandwidth, the rope state and a table change's cost; "
                   "json: one array of rows; jsonl: one row object per line; csv: a header and one line per row. "
                   "The rows carry llama-bench's field names (n_prompt, n_gen, n_depth, n_threads, avg_ts, "
                   "stddev_ts, samples_ts, model_size, ...) and ours (isa, kv_type, peak_rss_bytes: the "
                   "process's peak so far, weight_bytes_per_token, read_gbps, tg_bandwidth_pct, rope, ...).")
@click.option("--json", "as_json", is_flag=True, help="The same as -o jsonl.")
@click.option("--bandwidth/--no-bandwidth", default=True, show_default=True,
              help="Measure the machine's read bandwidth with each thread count (a plain read of a buffer 4x the "
                   "last-level cache, best of 5) and show tg as weight GB/s and as a % of it.")
@click.option("--profile", is_flag=True,
              help="After each test's timed runs, run it once more with the C core's step counters on and "
                   "show where a token's time goes: the time outside the C passes, and for each step of the "
                   "forward pass (qkv, attention, gate_up, ...) the barriers a token crosses and each thread's "
                   "microseconds of work and of waiting at them (the rows' \"profile\" field in json).")
@rope_options
@log_scale_option
def cmd(model_path, n_prompt, n_gen, threads, reps, depth, batch, fmt, as_json, bandwidth, profile, rope, clex_mode,
        kv_policy, kv_type, clex_log_scale):
    """Measure prompt-processing (pp) and generation (tg) tokens per second."""
    from ..engine.model import Model

    from .registry import resolve_model

    if as_json and fmt not in (None, "jsonl"):
        raise click.UsageError(f"--json is -o jsonl; it cannot go with -o {fmt}")
    fmt = "jsonl" if as_json else fmt or "md"
    tests = plan_tests(threads or [None], depth, n_prompt, n_gen)
    if not tests:
        raise click.UsageError("nothing to measure: every -p and -n value is 0")
    model_path = resolve_model(model_path)

    def load(n_ctx, n_threads):
        return Model(model_path, n_ctx=n_ctx, n_threads=n_threads, n_batch=batch, rope=rope, clex_mode=clex_mode,
                     kv_policy=kv_policy, kv_type=kv_type, log_scale=clex_log_scale)

    printer = Printer(fmt, kv_columns=kv_type != "f32")
    rows, schedule = [], None
    for _, group in groupby(tests, key=lambda x: x.threads):
        got, schedule = run_group(load, model_path, batch, list(group), reps, bandwidth, profile)
        printer.print_rows(got)
        rows += got
    printer.finish()
    if fmt == "md":
        for line in notes(rows, schedule):
            click.echo(line)
    click.echo(f"peak RSS: {max(r['peak_rss_bytes'] for r in rows) / 2**20:.1f} MiB", err=True)
