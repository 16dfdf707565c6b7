"""Resident memory of a mixture-of-experts model while it decodes: the weights are a read-only
file mapping, so only the pages a token touches become resident, and a token touches only its
experts. Prints the resident set (VmRSS) and the file-backed part of it after loading, after the
prompt and as decoding goes on, against file + KV cache + 64 MiB, and which experts were used.

    python benchmarks/moe_memory.py MODEL.gguf [-n 128] [-t 2] [--json OUT]
(tools/synth_model.py mixtral makes a Mixtral-shaped model to run it on.)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def rss() -> dict:
    """VmRSS and RssFile of this process, MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssFile", "RssAnon"):
                out[k] = int(v.split()[0]) / 1024
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("-n", type=int, default=128, help="tokens to decode")
    ap.add_argument("-p", type=int, default=32, help="prompt tokens")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from clexrt import Model
    rows = [("start", rss())]
    m = Model(a.model, n_ctx=a.p + a.n + 8, n_threads=a.threads)
    hp = m.hparams
    rows.append(("loaded", rss()))
    rng = np.random.default_rng(0)
    ids = [int(x) for x in rng.integers(0, hp.n_vocab, a.p)]
    logits = m.eval(ids)
    rows.append((f"prompt of {a.p}", rss()))
    marks = {1, 4, 16, 64, a.n}
    for i in range(1, a.n + 1):
        logits = m.eval([int(np.argmax(logits))])
        if i in marks:
            rows.append((f"decoded {i}", rss()))
    size = os.path.getsize(a.model) / 2**20
    kv = m.kv_bytes / 2**20
    limit = size + kv + 64
    print(f"{a.model}: {size:.1f} MiB file, KV {kv:.1f} MiB, {hp.n_expert} experts ({hp.n_expert_used} per token); "
          f"limit file + KV + 64 MiB = {limit:.1f} MiB")
    print(f"{'when':<16} {'RSS MiB':>9} {'file-backed':>12} {'anon':>8}")
    for when, r in rows:
        print(f"{when:<16} {r.get('VmRSS', 0):>9.1f} {r.get('RssFile', 0):>12.1f} {r.get('RssAnon', 0):>8.1f}")
    peak = max(r.get("VmRSS", 0) for _, r in rows)
    print(f"peak {peak:.1f} MiB: {'within' if peak <= limit else 'OVER'} the limit")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "file_mib": size, "kv_mib": kv, "limit_mib": limit,
                       "rows": rows, "peak_mib": peak}, f, indent=1)
    m.close()
    return 0 if peak <= limit else 1


if __name__ == "__main__":
    sys.exit(main())
