"""Generation speed with a rope schedule against --rope none at the same depth (docs/clex.md).

    python benchmarks/clex_overhead.py MODEL.gguf [--depth 2048] [--gen 128] [--rounds 2]

Runs none, clex ceil and clex continuous (default steps) side by side: each model is prefilled
with the same `depth` random tokens, then the runs take turns token by token, so a noisy shared
machine slows all three alike. Times are the process CPU time of one thread per eval (wall clock
printed too); table changes that fall in the window are included, as decoding pays them.
"""
import argparse
import time

import numpy as np

from clexrt import Model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--depth", type=int, default=2048)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    cfgs = {"none": dict(rope="none"), "clex ceil": dict(rope="clex", clex_mode="ceil"),
            "clex continuous": dict(rope="clex", clex_mode="continuous")}
    models = {k: Model(a.model, n_ctx=a.depth + a.gen + 1, n_threads=1, **v) for k, v in cfgs.items()}
    rng = np.random.default_rng(0)
    V = next(iter(models.values())).n_vocab
    ctx_ids, gen_ids = rng.integers(0, V, a.depth), rng.integers(0, V, a.gen)
    res = {k: [] for k in cfgs}
    changes = {}
    for _ in range(a.rounds):
        for m in models.values():
            m.reset()
            m.eval(ctx_ids)
        before = {k: m.rope_state["table_changes"] for k, m in models.items()}
        for tok in gen_ids:
            for k, m in models.items():
                c0, w0 = time.process_time(), time.perf_counter()
                m.eval([int(tok)])
                res[k].append((time.process_time() - c0, time.perf_counter() - w0))
        changes = {k: m.rope_state["table_changes"] - before[k] for k, m in models.items()}
    base = np.array(res["none"])[:, 0]
    print(f"{'rope':<16} {'tok/s cpu':>10} {'vs none':>8} {'median':>8} {'tok/s wall':>11} {'changes':>8}")
    for k, v in res.items():
        cpu, wall = np.array(v).T
        print(f"{k:<16} {len(cpu) / cpu.sum():>10.2f} {base.sum() / cpu.sum():>8.3f} "
              f"{np.median(base) / np.median(cpu):>8.3f} {len(wall) / wall.sum():>11.2f} {changes[k]:>8}")


if __name__ == "__main__":
    main()
