"""The whole tiny-CLEX pipeline, each step skipped when its output exists (`make train-clex`):

  1. corpus     build/train_clex/corpus/{train,test}.txt, manifest.json (corpus.py)
  2. tokenizer  build/train_clex/tokenizer.model, {train,test}.ids.npy (tokenizer.py)
  3. train      base (L = 128), then from it clex (ODE network at --ode-lr) and twin side by side,
                one thread each (train.py; on a CUDA GPU when torch sees one, --device)
  4. export     build/train_clex/hf/{tiny-clex-base,tiny-clex,tiny-clex-twin} (export.py)
  5. convert    models/{tiny-clex-base,tiny-clex,tiny-clex-twin}.gguf with `clexrt convert --outtype q8_0`
  6. data       tools/train_clex/data/test.txt (+ LICENSE-PSF.txt, corpus_manifest.json)
  7. evaluate   `clexrt perplexity` and eval_torch.py on the held-out text at L, 2L, 4L, 8L, the same
                EVAL_TOKENS tokens at every length; build/train_clex/results.json, the table
                (docs/tiny_clex_table.md) and the plot (docs/img/tiny_clex_ppl.png) (report.py)

    python tools/train_clex/pipeline.py [--deb python3.11-doc_*.deb] [--base-steps 1000] [--ft-steps 600]
        [--ode-lr 2e-5] [--device auto|cpu|cuda] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
B = os.path.join(ROOT, "build", "train_clex")
PY = sys.executable
NAMES = {"base": "tiny-clex-base", "clex": "tiny-clex", "twin": "tiny-clex-twin"}


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def clexrt_cmd() -> tuple[list[str], dict]:
    """The `clexrt` command and subprocess keywords. CLEXRT_SRC=DIR runs the clexrt package in DIR
    instead of the installed one (e.g. a `git archive` of a commit with its core built, while
    someone rebuilds the working tree's core)."""
    src = os.environ.get("CLEXRT_SRC")
    if src:
        return [PY, "-c", "from clexrt.cli import main; main()"], {"cwd": src, "env": dict(os.environ, PYTHONPATH=src)}
    c = os.path.join(os.path.dirname(PY), "clexrt")
    return [c if os.path.exists(c) else "clexrt"], {"cwd": ROOT}


def trained(stage: str, steps: int, ode_lr: float | None = None) -> bool:
    p = os.path.join(B, stage, "info.json")
    if not os.path.exists(p):
        return False
    info = json.load(open(p))
    return info["steps"] == steps and (stage != "clex" or info.get("ode_lr") == ode_lr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deb", default=os.environ.get("CLEX_DEB"), help="python3.11-doc .deb (default: apt-get download)")
    ap.add_argument("--base-steps", type=int, default=1000)
    ap.add_argument("--ft-steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ode-lr", type=float, default=2e-5,
                    help="peak learning rate of the CLEX ODE network (the official run's; the rest at 3e-4)")
    ap.add_argument("--device", default="auto", help="train.py --device: auto (CUDA when torch sees it) | cpu | cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    ap.add_argument("--outtype", default="q8_0")
    ap.add_argument("--skip-eval", action="store_true")
    a = ap.parse_args()
    t0 = time.time()
    corpus = os.path.join(B, "corpus")
    if not os.path.exists(os.path.join(corpus, "manifest.json")):
        run([PY, os.path.join(HERE, "corpus.py"), "--out", corpus] + (["--deb", a.deb] if a.deb else []))
    if not os.path.exists(os.path.join(B, "test.ids.npy")):
        run([PY, os.path.join(HERE, "tokenizer.py"), "--corpus", corpus])
    train = [PY, os.path.join(HERE, "train.py")]
    import torch
    print(f"pipeline: training with --device {a.device}"
          f" (torch {torch.__version__}, CUDA {'seen' if torch.cuda.is_available() else 'not seen'})", flush=True)
    if not trained("base", a.base_steps):
        run(train + ["base", "--out", os.path.join(B, "base"), "--steps", str(a.base_steps),
                     "--batch", str(a.batch), "--ckpt-every", "50", "--threads", str(a.threads),
                     "--device", a.device])
    base_pt = os.path.join(B, "base", "model.pt")
    procs = []
    for stage in ("clex", "twin"):
        if not trained(stage, a.ft_steps, a.ode_lr):
            cmd = train + [stage, "--init", base_pt, "--out", os.path.join(B, stage), "--steps", str(a.ft_steps),
                           "--batch", str(a.batch), "--threads", str(a.threads), "--ckpt-every", "25",
                           "--device", a.device] + (["--ode-lr", str(a.ode_lr)] if stage == "clex" else [])
            print("+", " ".join(cmd), flush=True)
            os.makedirs(os.path.join(B, stage), exist_ok=True)
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=open(os.path.join(B, f"{stage}.log"), "a"),
                                          stderr=subprocess.STDOUT))
    if any(p.wait() for p in procs):
        sys.exit(f"a fine-tune failed: see {B}/clex.log, {B}/twin.log")
    os.makedirs(os.path.join(ROOT, "models"), exist_ok=True)
    tok = os.path.join(B, "tokenizer.model")
    for stage, name in NAMES.items():
        hf = os.path.join(B, "hf", name)
        run([PY, os.path.join(HERE, "export.py"), os.path.join(B, stage, "model.pt"), tok, hf, "--name", name])
        cmd, kw = clexrt_cmd()
        cmd += ["convert", hf, "-o", os.path.join(ROOT, "models", f"{name}.gguf"), "--outtype", a.outtype,
                "--no-progress"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, **kw)
    data = os.path.join(HERE, "data")
    os.makedirs(data, exist_ok=True)
    shutil.copyfile(os.path.join(corpus, "test.txt"), os.path.join(data, "test.txt"))
    shutil.copyfile(os.path.join(corpus, "LICENSE-PSF.txt"), os.path.join(data, "LICENSE-PSF.txt"))
    shutil.copyfile(os.path.join(corpus, "manifest.json"), os.path.join(data, "corpus_manifest.json"))
    if not a.skip_eval:
        run([PY, os.path.join(HERE, "report.py")])
    print(f"pipeline: done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
