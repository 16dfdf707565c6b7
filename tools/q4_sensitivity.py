#!/usr/bin/env python3
"""How sensitive SmolLM2 Q4_1's logits are to how activations are rounded to 8 bits.

Runs the numpy reference forward (tests/tinymodel.py: gguf-py dequantized weights, float64 math)
on llama.cpp's recorded greedy sequences (tests/data/llamacpp_greedy.json) twice: with clexrt's
activation rounding (Q8_1 blocks with a float32 scale for the Q4_1 matrices) and with the scale
rounded to fp16 (as ggml stores it). Prints, per prompt, the std of the logit differences between
the two, and of each against llama.cpp's recorded top-5 logits. The first is as large as the
second: a rounding detail this small moves the logits as far as llama.cpp's are from ours, so
greedy equality at near-ties would need ggml's every rounding step, not a better algorithm.

    python tools/q4_sensitivity.py [--cases N]      (about 20 s per prompt)
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=5)
    a = ap.parse_args()
    import gguf

    import tinymodel as tm
    from conftest import smollm2_path
    path = smollm2_path()
    if path is None:
        sys.exit("SmolLM2 is not installed: make install")
    cfg = tm.config_from_gguf(path)
    r = gguf.GGUFReader(path)
    w = tm.read_weights(path)
    types = {t.name: t.tensor_type.name.lower() for t in r.tensors}
    ours = {n: tm.ACT_OF.get(t) for n, t in types.items()}             # q8_1 (float scale) for Q4_1
    fp16 = {n: ("q8_0" if a else None) for n, a in ours.items()}        # every scale rounded to fp16
    cases = json.loads((ROOT / "tests/data/llamacpp_greedy.json").read_text())["cases"][:a.cases]
    print("prompt                    | ours vs fp16-scale | ours vs llama.cpp | fp16-scale vs llama.cpp")
    for c in cases:
        ids = c["prompt_ids"] + c["gen_ids"]
        n0 = len(c["prompt_ids"])
        la = tm.reference_forward(w, cfg, ids, act=ours)[n0 - 1:]
        lb = tm.reference_forward(w, cfg, ids, act=fp16)[n0 - 1:]
        top = c["top5_logits_per_step"]

        def vs_llamacpp(lg):
            return np.std([lg[s][t] - v for s, row in enumerate(top) for t, v in row])
        print(f"{c['prompt'][:25]:25s} | std {np.std(la - lb):.3f}          | std {vs_llamacpp(la):.3f}         "
              f"| std {vs_llamacpp(lb):.3f}", flush=True)


if __name__ == "__main__":
    main()
