"""Evaluate the three tiny models with `clexrt perplexity` (the committed q8_0 GGUFs) and with
eval_torch.py (the float32 PyTorch models), and write the results, the table and the plot.

    python tools/train_clex/report.py [--tokens 32768]

Every row scores the same first TOKENS tokens of tools/train_clex/data/test.txt: chunks = TOKENS/n_ctx
at each n_ctx (llama-perplexity's method, the second half of each chunk scored).
Writes build/train_clex/results.json, docs/tiny_clex_table.md, docs/img/tiny_clex_ppl.png and
models/MANIFEST.json (hashes, configs, the quick check tests/test_train_clex_models.py repeats).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from corpus import sha256_file as sha256  # noqa: E402
ROOT = os.path.dirname(os.path.dirname(HERE))
B = os.path.join(ROOT, "build", "train_clex")
TEXT = os.path.join(HERE, "data", "test.txt")
PY = sys.executable
CTX = (128, 256, 512, 1024)
# (label, model, clexrt --rope, clexrt --clex-mode, eval_torch method)
ROWS = [
    ("base", "tiny-clex-base", "none", "ceil", "none"),
    ("base + linear (PI)", "tiny-clex-base", "linear", "ceil", "linear"),
    ("base + NTK", "tiny-clex-base", "ntk", "ceil", "ntk"),
    ("base + YaRN", "tiny-clex-base", "yarn", "ceil", "yarn"),
    ("continued twin", "tiny-clex-twin", "none", "ceil", "none"),
    ("CLEX, its stored inv_freq only", "tiny-clex", "none", "ceil", "none"),
    ("CLEX ceil", "tiny-clex", "clex", "ceil", "clex"),
    ("CLEX continuous", "tiny-clex", "clex", "continuous", "clex-continuous"),
]
STAGE = {"tiny-clex-base": "base", "tiny-clex": "clex", "tiny-clex-twin": "twin"}
QUICK = {"model": "tiny-clex", "ctx": 512, "rope": "clex", "clex_mode": "ceil", "chunks": 4}


def clexrt_ppl(model: str, ctx: int, rope: str, mode: str, chunks: int, threads: int = 2) -> dict:
    exe = os.path.join(os.path.dirname(PY), "clexrt")
    out = subprocess.run([exe if os.path.exists(exe) else "clexrt", "perplexity", "-m", model, "-f", TEXT,
                          "--ctx", str(ctx), "--rope", rope, "--clex-mode", mode, "--chunks", str(chunks),
                          "-t", str(threads), "--json"], cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_ppl(stage: str, method: str, chunks: list[int]) -> list[dict]:
    out = subprocess.run([PY, os.path.join(HERE, "eval_torch.py"), os.path.join(B, stage, "model.pt"),
                          os.path.join(B, "tokenizer.model"), TEXT, "--ctx", ",".join(map(str, CTX)),
                          "--methods", method, "--chunks", ",".join(map(str, chunks)), "--json"],
                         cwd=ROOT, check=True, capture_output=True, text=True)
    return [json.loads(x) for x in out.stdout.strip().splitlines()]


def table_md(res: list[dict]) -> str:
    head = "| method | " + " | ".join(f"{c} ({c // CTX[0]}L)" for c in CTX) + " | 4L / L | 8L / L |"
    lines = [head, "|" + " --- |" * (len(CTX) + 3)]
    for r in res:
        cells = []
        for c in CTX:
            x = r["ppl"][str(c)]
            tt = r.get("torch", {}).get(str(c))
            cells.append(f"{x['ppl']:.2f}" + (f" ({tt['ppl']:.2f})" if tt else ""))
        p = {c: r["ppl"][str(c)]["ppl"] for c in CTX}
        lines.append(f"| {r['label']} | " + " | ".join(cells) +
                     f" | {p[4 * CTX[0]] / p[CTX[0]]:.2f} | {p[8 * CTX[0]] / p[CTX[0]]:.2f} |")
    return "\n".join(lines) + "\n"


def plot(res: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in res:
        if r["label"] == "CLEX continuous":      # identical to ceil at multiples of L
            continue
        y = [r["ppl"][str(c)]["ppl"] for c in CTX]
        e = [r["ppl"][str(c)]["ppl_err"] for c in CTX]
        ls = "-" if "CLEX" in r["label"] or r["label"] in ("base", "continued twin") else "--"
        ax.errorbar(CTX, y, yerr=e, marker="o", capsize=3, linestyle=ls, label=r["label"])
    ax.axvline(CTX[0], color="grey", linestyle=":", label=f"training length L = {CTX[0]}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(CTX)
    ax.set_xticklabels([str(c) for c in CTX])
    ax.set_xlabel("context length n_ctx (tokens)")
    ax.set_ylabel("perplexity (clexrt, q8_0; log scale)")
    ax.set_title("tiny CLEX-LLaMA (5.3M params, L = 128) on held-out Python docs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()
    chunks = [a.tokens // c for c in CTX]
    res = []
    for label, model, rope, mode, tm in ROWS:
        r = {"label": label, "model": model, "rope": rope, "clex_mode": mode, "torch_method": tm, "ppl": {}}
        for c, k in zip(CTX, chunks):
            d = clexrt_ppl(model, c, rope, mode, k)
            r["ppl"][str(c)] = {k2: d[k2] for k2 in ("t", "ppl", "ppl_err", "chunks", "tokens_scored", "seconds")}
            print(f"{label:<32} {c:>5} clexrt {d['ppl']:.4f}", flush=True)
        if not a.no_torch:
            r["torch"] = {str(x["ctx"]): x for x in torch_ppl(STAGE[model], tm, chunks)}
            print(f"{label:<32} torch " + " ".join(f"{r['torch'][str(c)]['ppl']:.4f}" for c in CTX), flush=True)
        res.append(r)
    out = {"text": os.path.relpath(TEXT, ROOT), "text_sha256": sha256(TEXT), "tokens": a.tokens,
           "ctx": list(CTX), "chunks": chunks, "rows": res}
    with open(os.path.join(B, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    md = table_md(res)
    with open(os.path.join(ROOT, "docs", "tiny_clex_table.md"), "w") as f:
        f.write(md)
    print(md)
    os.makedirs(os.path.join(ROOT, "docs", "img"), exist_ok=True)
    plot(res, os.path.join(ROOT, "docs", "img", "tiny_clex_ppl.png"))
    quick = dict(QUICK, ppl=clexrt_ppl(QUICK["model"], QUICK["ctx"], QUICK["rope"], QUICK["clex_mode"],
                                       QUICK["chunks"])["ppl"])
    man = {"models": {}, "test_text": {"path": os.path.relpath(TEXT, ROOT), "sha256": sha256(TEXT)},
           "quick_check": quick, "results": {r["label"]: {c: r["ppl"][c]["ppl"] for c in r["ppl"]} for r in res}}
    for name, stage in STAGE.items():
        g = os.path.join(ROOT, "models", f"{name}.gguf")
        info = json.load(open(os.path.join(B, stage, "info.json")))
        man["models"][name] = {"file": f"models/{name}.gguf", "sha256": sha256(g), "bytes": os.path.getsize(g),
                               "train": info}
    man["corpus"] = {k: v for k, v in json.load(open(os.path.join(HERE, "data", "corpus_manifest.json"))).items()
                     if k != "splits"}
    with open(os.path.join(ROOT, "models", "MANIFEST.json"), "w") as f:
        json.dump(man, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
