"""Evaluate the three tiny models with `clexrt perplexity` (the committed q8_0 GGUFs) and with
eval_torch.py (the float32 PyTorch models), and write the results, the table and the plot.

    python tools/train_clex/report.py [--tokens 32768] [--xtokens 8192] [--only MODEL]

The result: one `clexrt perplexity --ctx 128,192,...,1024 --rope ... --chunks -1 --json` per model on
build/train_clex/eval_main.txt, the text of the first TOKENS + 64 tokens of tools/train_clex/data/test.txt
(TOKENS / n_ctx chunks at every length: the same text; llama-perplexity's method, the second half of
each chunk scored); the CLEX continuous row is the same measurement with t = N/L exactly
(ppl_steps.py: clexrt's Model(rope_steps=0), since the command's default step, L // 256 = 1 for
L = 128, makes continuous the ceil schedule on these models). The cross-check: the same command and eval_torch.py (the float32 PyTorch
models, the slow side) on eval_xcheck.txt, the first XTOKENS + 64 tokens. Results are cached per
model in build/train_clex/eval/ (`--only MODEL` evaluates one model while others still train).
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
from pipeline import clexrt_cmd  # noqa: E402
ROOT = os.path.dirname(os.path.dirname(HERE))
B = os.path.join(ROOT, "build", "train_clex")      # --build: the trained model.pt files
OUT = ROOT                                          # --root: where models/ and docs/ are written
TEXT = os.path.join(HERE, "data", "test.txt")
PY = sys.executable
CTX = (128, 192, 256, 320, 448, 512, 1024)       # L..8L, and 1.5L, 2.5L, 3.5L for the schedules
# (label, model, clexrt method, clexrt mode (None for none), eval_torch method)
ROWS = [
    ("base", "tiny-clex-base", "none", None, "none"),
    ("base + linear (PI)", "tiny-clex-base", "linear", "ceil", "linear"),
    ("base + NTK", "tiny-clex-base", "ntk", "ceil", "ntk"),
    ("base + YaRN", "tiny-clex-base", "yarn", "ceil", "yarn"),
    ("continued twin", "tiny-clex-twin", "none", None, "none"),
    ("CLEX model, stored inv_freq only", "tiny-clex", "none", None, "none"),
    ("CLEX ceil", "tiny-clex", "clex", "ceil", "clex"),
    ("CLEX continuous", "tiny-clex", "clex", "exact", "clex-continuous"),
]
EXACT = "exact"        # the continuous schedule with t = N/L (ppl_steps.py --steps 0)
STAGE = {"tiny-clex-base": "base", "tiny-clex": "clex", "tiny-clex-twin": "twin"}
QUICK = {"model": "tiny-clex", "ctx": 512, "rope": "clex", "clex_mode": "ceil", "chunks": 4}
QUICK_EXACT = {"model": "tiny-clex", "ctx": 192, "rope": "clex", "steps": 0, "chunks": 4}


THREADS = 1      # --threads; one thread ran faster than two with other jobs on the 2 cores


def clexrt_ppl(model: str, text: str, ropes: list[str], modes: list[str], ctx=CTX, chunks: int = -1) -> list[dict]:
    """`clexrt perplexity` rows (JSON) for one model at every CTX, the whole text (CLEXRT_SRC: see
    pipeline.clexrt_cmd)."""
    path = os.path.join(OUT, "models", f"{model}.gguf")
    args = ["perplexity", "-m", path, "-f", text, "--ctx", ",".join(map(str, ctx)), "--rope", ",".join(ropes),
            "--clex-mode", ",".join(modes), "--chunks", str(chunks), "-t", str(THREADS), "--json"]
    cmd, kw = clexrt_cmd()
    out = subprocess.run(cmd + args, check=True, capture_output=True, text=True, **kw)
    return [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]


def clexrt_exact_ppl(model: str, text: str, ctx=CTX, chunks: int = -1, steps: int = 0) -> list[dict]:
    """The same rows for CLEX's continuous schedule with t = ceil(N * steps / L) / steps (0: N/L)."""
    cmd, kw = clexrt_cmd()
    args = [os.path.join(OUT, "models", f"{model}.gguf"), text, "--ctx", ",".join(map(str, ctx)),
            "--steps", str(steps), "--chunks", str(chunks), "-t", str(THREADS)]
    out = subprocess.run([PY, os.path.join(HERE, "ppl_steps.py")] + args, check=True, capture_output=True,
                         text=True, **kw)
    return [dict(json.loads(x), mode=EXACT) for x in out.stdout.splitlines() if x.startswith("{")]


def torch_ppl(stage: str, text: str, methods: list[str], ctx=CTX, chunks: int = -1) -> list[dict]:
    out = subprocess.run([PY, os.path.join(HERE, "eval_torch.py"), os.path.join(B, stage, "model.pt"),
                          os.path.join(B, "tokenizer.model"), text, "--ctx", ",".join(map(str, ctx)),
                          "--methods", ",".join(methods), "--chunks", str(chunks), "--threads", str(THREADS),
                          "--json"],
                         cwd=ROOT, check=True, capture_output=True, text=True)
    return [json.loads(x) for x in out.stdout.strip().splitlines()]


def prefix_text(n_tokens: int, name: str) -> str:
    """The text of the first n_tokens + 64 tokens of TEXT (so every n_ctx up to 1024 gets
    n_tokens / n_ctx chunks: the same text at every length), written to build/train_clex/NAME.txt."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(B, "tokenizer.model"))
    with open(TEXT, encoding="utf-8") as f:
        ids = sp.encode(f.read())
    path = os.path.join(B, f"{name}.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(sp.decode(ids[:n_tokens + 64]))
    return path


def evaluate(model: str, text: str, with_torch: bool) -> list[dict]:
    """The rows of ROWS for one model, cached in build/train_clex/eval/ under the hashes of the
    GGUF, the text and (with torch) the model.pt."""
    key = [sha256(os.path.join(OUT, "models", f"{model}.gguf")), sha256(text), THREADS]
    if with_torch:
        key.append(sha256(os.path.join(B, STAGE[model], "model.pt")))
    cache = os.path.join(B, "eval", f"{model}-{os.path.basename(text)}-{int(with_torch)}.json")
    if os.path.exists(cache):
        c = json.load(open(cache))
        if c["key"] == key:
            return c["rows"]
    rows = [r for r in ROWS if r[1] == model]
    ropes = list(dict.fromkeys(r[2] for r in rows))
    modes = list(dict.fromkeys(r[3] for r in rows if r[3] and r[3] != EXACT)) or ["ceil"]
    got = clexrt_ppl(model, text, ropes, modes)
    if any(r[3] == EXACT for r in rows):
        got += clexrt_exact_ppl(model, text)
    tor = torch_ppl(STAGE[model], text, [r[4] for r in rows]) if with_torch else []
    res = []
    for label, _, method, mode, tm in rows:
        mine = {str(d["ctx"]): {k: d[k] for k in ("t", "ppl", "ppl_err", "chunks", "tokens_scored", "seconds")}
                for d in got if d["method"] == method and d["mode"] == mode}
        assert set(mine) == set(map(str, CTX)), (label, got)
        r = {"label": label, "model": model, "method": method, "mode": mode, "ppl": mine}
        if with_torch:
            r["torch"] = {str(d["ctx"]): d for d in tor if d["method"] == tm}
        res.append(r)
        print(f"{label:<34} " + " ".join(f"{mine[str(c)]['ppl']:9.4f}" for c in CTX) +
              ("  torch " + " ".join(f"{r['torch'][str(c)]['ppl']:9.4f}" for c in CTX) if with_torch else ""),
              flush=True)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "w") as f:
        json.dump({"key": key, "rows": res}, f, indent=1)
    return res


def table_md(res: list[dict]) -> str:
    """The result (clexrt, +/- one standard error) and the cross-check (clexrt / PyTorch)."""
    head = "| method | " + " | ".join(f"{c} ({c / CTX[0]:g}L)" for c in CTX) + " | 4L / L | 8L / L |"
    lines = [head, "|" + " --- |" * (len(CTX) + 3)]
    for r in res:
        cells = [f"{r['ppl'][str(c)]['ppl']:.2f} ± {r['ppl'][str(c)]['ppl_err']:.2f}" for c in CTX]
        p = {c: r["ppl"][str(c)]["ppl"] for c in CTX}
        lines.append(f"| {r['label']} | " + " | ".join(cells) +
                     f" | {p[4 * CTX[0]] / p[CTX[0]]:.3f} | {p[8 * CTX[0]] / p[CTX[0]]:.3f} |")
    if any("torch" in r for r in res):
        lines += ["", "| method | " + " | ".join(f"{c}: clexrt / torch" for c in CTX) + " | max rel. diff |",
                  "|" + " --- |" * (len(CTX) + 2)]
        for r in res:
            if "torch" not in r:
                continue
            a = [r["xcheck"][str(c)] for c in CTX]
            b = [r["torch"][str(c)]["ppl"] for c in CTX]
            d = max(abs(x / y - 1) for x, y in zip(a, b))
            lines.append(f"| {r['label']} | " + " | ".join(f"{x:.3f} / {y:.3f}" for x, y in zip(a, b)) +
                         f" | {100 * d:.2f}% |")
    return "\n".join(lines) + "\n"


def plot(res: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in res:
        y = [r["ppl"][str(c)]["ppl"] for c in CTX]
        e = [r["ppl"][str(c)]["ppl_err"] for c in CTX]
        ls = "-" if "CLEX" in r["label"] or r["label"] in ("base", "continued twin") else "--"
        ax.errorbar(CTX, y, yerr=e, marker="o", capsize=3, linestyle=ls, label=r["label"])
    ax.axvline(CTX[0], color="grey", linestyle=":", label=f"training length L = {CTX[0]}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(CTX)
    ax.set_xticklabels([str(c) for c in CTX], fontsize=8)
    ax.set_xlabel("context length n_ctx (tokens)")
    ax.set_ylabel("perplexity (clexrt, q8_0; log scale)")
    ax.set_title("tiny CLEX-LLaMA (5.3M params, L = 128) on held-out Python docs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    global B, OUT, THREADS, TEXT
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32768, help="the result: tokens scored at every length")
    ap.add_argument("--xtokens", type=int, default=8192, help="the cross-check with PyTorch")
    ap.add_argument("--only", choices=tuple(STAGE), help="evaluate this model (cached) and stop")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--reuse", action="append", default=[], choices=tuple(STAGE),
                    help="a model not retrained: its GGUF under --root as it is, its training record from "
                         "the repository's models/MANIFEST.json, no PyTorch cross-check")
    ap.add_argument("--build", default=B)
    ap.add_argument("--root", default=ROOT)
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--text", default=TEXT, help="held-out text (default: the committed one)")
    a = ap.parse_args()
    B, OUT, THREADS, TEXT = os.path.abspath(a.build), os.path.abspath(a.root), a.threads, os.path.abspath(a.text)
    main_text = prefix_text(a.tokens, "eval_main")
    x_text = prefix_text(a.xtokens, "eval_xcheck")
    res = []
    for model in ([a.only] if a.only else dict.fromkeys(r[1] for r in ROWS)):
        rows = evaluate(model, main_text, False)
        if not a.no_torch and model not in a.reuse:
            for r, x in zip(rows, evaluate(model, x_text, True)):
                r["xcheck"] = {c: v["ppl"] for c, v in x["ppl"].items()}
                r["torch"] = x["torch"]
        res += rows
    if a.only:
        return
    out = {"text": os.path.relpath(TEXT, ROOT), "text_sha256": sha256(TEXT), "ctx": list(CTX),
           "tokens": a.tokens, "xtokens": a.xtokens, "rows": res}
    with open(os.path.join(B, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    md = table_md(res)
    with open(os.path.join(OUT, "docs", "tiny_clex_table.md"), "w") as f:
        f.write(md)
    print(md)
    os.makedirs(os.path.join(OUT, "docs", "img"), exist_ok=True)
    plot(res, os.path.join(OUT, "docs", "img", "tiny_clex_ppl.png"))
    man = {"models": {}, "test_text": {"path": os.path.relpath(TEXT, ROOT), "sha256": sha256(TEXT)},
           "results": {r["label"]: {c: r["ppl"][c]["ppl"] for c in r["ppl"]} for r in res}}
    old = json.load(open(os.path.join(ROOT, "models", "MANIFEST.json"))) if a.reuse else {}
    for name, stage in STAGE.items():
        g = os.path.join(OUT, "models", f"{name}.gguf")
        if name in a.reuse:
            info = dict(old["models"][name]["train"], reused="not retrained: the GGUF of the earlier run")
        else:
            info = json.load(open(os.path.join(B, stage, "info.json")))
        man["models"][name] = {"file": f"models/{name}.gguf", "sha256": sha256(g), "bytes": os.path.getsize(g),
                               "train": info}
    man["corpus"] = {k: v for k, v in json.load(open(os.path.join(HERE, "data", "corpus_manifest.json"))).items()
                     if k != "splits"}
    # the quick check tests/test_train_clex_models.py repeats: CLEX ceil at 4L on the first chunks
    q = QUICK
    # the references are the float32 PyTorch model's (eval_torch.py, the same chunks)
    row = clexrt_ppl(q["model"], TEXT, [q["rope"]], [q["clex_mode"]], [q["ctx"]], q["chunks"])[0]
    ref = torch_ppl("clex", TEXT, ["clex"], [q["ctx"]], q["chunks"])[0]
    man["quick_check"] = dict(q, ppl=row["ppl"], ppl_torch=ref["ppl"])
    q = QUICK_EXACT
    row = clexrt_exact_ppl(q["model"], TEXT, [q["ctx"]], q["chunks"], q["steps"])[0]
    ref = torch_ppl("clex", TEXT, ["clex-continuous"], [q["ctx"]], q["chunks"])[0]
    man["quick_check_continuous"] = dict(q, t=row["t"], ppl=row["ppl"], ppl_torch=ref["ppl"], t_torch=ref["t"])
    with open(os.path.join(OUT, "models", "MANIFEST.json"), "w") as f:
        json.dump(man, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
