"""Train the tiny models: the base LLaMA at L, then from it the CLEX fine-tune and its plain twin.

    python tools/train_clex/train.py base --out build/train_clex/base --steps 1000
    python tools/train_clex/train.py clex --init build/train_clex/base/model.pt --out build/train_clex/clex --steps 500
    python tools/train_clex/train.py twin --init build/train_clex/base/model.pt --out build/train_clex/twin --steps 500

Every step draws `batch` windows of L+1 tokens from the training ids (first token set to BOS;
inputs are the first L, targets the last L). `clex` draws, per step, t uniform in 1..max_factor,
positions 0 < sorted distinct integers < L*t - 1 (plus both ends) and the frequencies exp(y(t))
from the ODE solved on [1, t], as the official trainer does at training length = L; `twin` sees the
same windows (same data seed) with positions 0..L-1 and the base frequencies.

Matmuls run under bfloat16 autocast (AMX on this CPU: ~4x float32); weights, optimizer, RoPE and the
ODE solve stay float32. --device auto trains on a CUDA GPU when torch sees one, with the same seeds
and recipe (the model is initialized on the CPU and moved; windows, t and positions are drawn by
CPU generators, so every step sees what it sees on the CPU; the GPU's bfloat16 kernels make the
result close to, not bit-identical with, a CPU run). A checkpoint (model, optimizer, random generators) is written every
--ckpt-every steps and a rerun resumes from it to the same result.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config, TinyLlama  # noqa: E402

BOS = 1
DEFAULTS = {   # stage: (lr, final lr, warmup, weight decay)
    "base": (1e-3, 1e-4, 50, 0.1),
    "clex": (3e-4, 3e-5, 20, 0.0),
    "twin": (3e-4, 3e-5, 20, 0.0),
}


def lr_at(step: int, steps: int, lr: float, lr_min: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(1.0, p)))


def draw_batch(ids: np.ndarray, batch: int, n: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, ids.size - n - 1, (batch,), generator=gen).numpy()
    x = torch.from_numpy(np.stack([ids[s:s + n + 1].astype(np.int64) for s in starts]))
    x[:, 0] = BOS
    return x


def build(stage: str, init: str | None, cfg: Config, seed: int) -> TinyLlama:
    torch.manual_seed(seed)
    model = TinyLlama(cfg, clex=(stage == "clex"))
    if init:
        src = torch.load(init, map_location="cpu", weights_only=False)
        missing, unexpected = model.load_state_dict(src["state_dict"], strict=False)
        if unexpected or any(not k.startswith("model.clex_layer.") for k in missing):
            raise SystemExit(f"{init}: missing {missing}, unexpected {unexpected}")
    return model


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no CUDA GPU")
    return name


def cpu_state(model: torch.nn.Module) -> dict:
    """The state_dict on the CPU (checkpoints and model.pt load the same from a GPU run)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=("base", "clex", "twin"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--init", help="model.pt of the base (clex, twin)")
    ap.add_argument("--data", default="build/train_clex/train.ids.npy")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--ode-lr", type=float, help="peak learning rate of the CLEX ODE network (default: --lr's)")
    ap.add_argument("--warmup", type=int, help="warm-up steps (default: the stage's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-seed", type=int, default=1, help="windows drawn (the same for clex and twin)")
    ap.add_argument("--threads", type=int, default=1,
                    help="1 by default: with other jobs on the 2 cores, 2 threads ran 3-4x slower")
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop (checkpoint written) after this many steps, as if killed; rerun to resume")
    ap.add_argument("--no-bf16", action="store_true", help="float32 matmuls")
    ap.add_argument("--device", default="auto", help="auto (cuda when torch sees a GPU, else cpu) | cpu | cuda[:N]")
    ap.add_argument("--config", default="{}", help="JSON overrides (base only): HParams.llama's arguments "
                    "(n_vocab, n_embd, n_layer, n_head, n_ff, n_ctx_train, ...) and the CLEX keys of model.Config")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device(pick_device(a.device))
    if a.stage != "base" and not a.init:
        ap.error(f"{a.stage} needs --init")
    os.makedirs(a.out, exist_ok=True)
    if a.init:
        cfg = Config.from_dict(torch.load(a.init, map_location="cpu", weights_only=False)["config"])
    else:
        cfg = Config.make(**json.loads(a.config))
    ids = np.load(a.data)
    if int(ids.max()) >= cfg.hparams.n_vocab:
        raise SystemExit(f"token id {int(ids.max())} >= n_vocab {cfg.hparams.n_vocab}")
    model = build(a.stage, a.init, cfg, a.seed).to(dev)
    lr, lr_min, warmup, wd = DEFAULTS[a.stage]
    if a.lr:
        lr, lr_min = a.lr, a.lr / 10
    if a.warmup is not None:
        warmup = a.warmup
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "clex_layer" not in n]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2 and "clex_layer" not in n]
    ode = [p for n, p in model.named_parameters() if "clex_layer" in n]
    groups = [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]
    if ode:
        groups.append({"params": ode, "weight_decay": 0.0, "lr_scale": (a.ode_lr / lr) if a.ode_lr else 1.0})
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)
    data_gen = torch.Generator().manual_seed(a.data_seed)
    pos_gen = torch.Generator().manual_seed(a.seed + 1000)
    step = 0
    ckpt = os.path.join(a.out, "ckpt.pt")
    if os.path.exists(ckpt):
        c = torch.load(ckpt, map_location=dev, weights_only=False)
        model.load_state_dict(c["state_dict"])
        opt.load_state_dict(c["opt"])
        data_gen.set_state(c["data_gen"].cpu())
        pos_gen.set_state(c["pos_gen"].cpu())
        step = c["step"]
        print(f"resumed from {ckpt} at step {step}", flush=True)
    log = open(os.path.join(a.out, "log.jsonl"), "a")
    n = cfg.hparams.n_ctx_train
    t_start = time.time()
    model.train()
    while step < a.steps:
        t0 = time.time()
        cur = lr_at(step, a.steps, lr, lr_min, warmup)
        for g in opt.param_groups:
            g["lr"] = cur * g.get("lr_scale", 1.0)
        x = draw_batch(ids, a.batch, n, data_gen).to(dev)
        t, pos, inv = 1, None, None
        if a.stage == "clex":
            t, pos, inv = model.model.clex_layer.train_draw(n, pos_gen)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=not a.no_bf16):
            logits = model(x[:, :-1], pos, inv)
        loss = F.cross_entropy(logits.float().reshape(-1, cfg.hparams.n_vocab), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        rec = {"step": step, "loss": round(loss.item(), 4), "t": t, "lr": cur,
               "grad_norm": round(float(gn), 3), "sec": round(time.time() - t0, 3)}
        log.write(json.dumps(rec) + "\n")
        if step % 10 == 0 or step == a.steps:
            log.flush()
            print(json.dumps(rec), flush=True)
        if step % a.ckpt_every == 0 or step == a.steps:
            torch.save({"state_dict": cpu_state(model), "opt": opt.state_dict(), "step": step,
                        "data_gen": data_gen.get_state(), "pos_gen": pos_gen.get_state()}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
        if a.stop_after is not None and step >= a.stop_after and step < a.steps:
            log.close()
            return {"stopped_at": step}
    info = {"stage": a.stage, "config": cfg.to_dict(), "steps": a.steps, "batch": a.batch,
            "tokens": a.steps * a.batch * n, "lr": lr, "lr_min": lr_min, "warmup": warmup,
            "weight_decay": wd, "ode_lr": a.ode_lr, "seed": a.seed, "data_seed": a.data_seed, "init": a.init,
            "bf16": not a.no_bf16, "seconds_this_run": round(time.time() - t_start, 1),
            "threads": a.threads, "device": str(dev)}
    torch.save({"state_dict": cpu_state(model), "config": cfg.to_dict(), "info": info},
               os.path.join(a.out, "model.pt"))
    with open(os.path.join(a.out, "info.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


if __name__ == "__main__":
    main()
