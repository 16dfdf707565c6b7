"""The batch scratch: what the core says one token of n_batch costs, against the memory a
batch really makes resident, and the default n_batch chosen from it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tinymodel import tiny_hparams, write_tiny

# a narrow model with a wide FFN: the scratch, not the weights, is what grows with n_batch
WIDE_FFN = {"n_embd": 64, "n_ff": 8192, "n_head": 4, "n_head_kv": 2, "n_layer": 1, "n_ctx_train": 1024}

# in a fresh process: RssAnon grown by evaluating 512 tokens (calloc's pages become resident
# when first written, so the growth is the scratch and the KV rows the batch touched)
PROBE = r"""
import json, sys
from clexrt.engine.model import Model
from clexrt.engine.native import lib

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

path, b = sys.argv[1], sys.argv[2]
with Model(path, n_ctx=1024, n_threads=1, n_batch=None if b == "auto" else int(b)) as m:
    before = anon()
    m.eval([1 + i % 90 for i in range(512)])
    print(json.dumps({"grown": anon() - before, "n_batch": m.n_batch,
                      "per_token": int(lib.clex_batch_token_bytes(m._model, 1))}))
"""


def _probe(path, n_batch) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), str(n_batch)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    path = tmp_path_factory.mktemp("scratch") / "wide-q8_0.gguf"
    write_tiny(path, "q8_0", cfg=tiny_hparams(**WIDE_FFN))
    return path


def test_the_reported_bytes_per_token_are_what_a_batch_makes_resident(wide):
    big, small = _probe(wide, 512), _probe(wide, 32)
    per_token = big["per_token"]
    assert per_token == small["per_token"]
    # one 8192-float gate row alone is 32 KiB a token
    assert per_token > 4 * WIDE_FFN["n_ff"]
    measured = (big["grown"] - small["grown"]) / (512 - 32)
    assert abs(measured - per_token) < 0.15 * per_token, (measured, per_token)


def test_the_default_batch_keeps_the_scratch_within_its_budget(wide):
    from clexrt.engine.native import BATCH_SCRATCH_BUDGET, DEFAULT_BATCH

    auto = _probe(wide, "auto")
    n, per_token = auto["n_batch"], auto["per_token"]
    assert n % 32 == 0 and 32 <= n <= DEFAULT_BATCH
    assert n * per_token <= BATCH_SCRATCH_BUDGET < (n + 32) * per_token or n == DEFAULT_BATCH


def test_a_small_model_keeps_the_full_default_batch(smollm2):
    from clexrt.engine.model import Model
    from clexrt.engine.native import DEFAULT_BATCH

    with Model(smollm2, n_ctx=1024, n_threads=1) as m:
        assert m.n_batch == DEFAULT_BATCH
    with Model(smollm2, n_ctx=1024, n_threads=1, n_batch=96) as m:   # asked for: kept
        assert m.n_batch == 96
