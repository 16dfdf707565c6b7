"""benchmarks/quality.py: llama-perplexity's KL-divergence method reimplemented. The base file's
16-bit log-probability codes, the per-position KLD and same-top count against a float64 direct
computation, the statistics' formulas, the parse of llama-perplexity's summary, and a scoring run
on tiny generated models (an F32 model against itself: KLD 0; its Q8_0 and Q4_0 files: small and
ordered)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tinymodel import write_tiny

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality as Q  # noqa: E402


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def test_base_codes_round_trip():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((7, 1001)) * 4).astype(np.float32)
    logits[3] = 2.5                                    # a flat row: scale 0
    rows = Q.encode_base(logits)
    assert rows.shape == (7, Q.row_width(1001)) and Q.row_width(1001) == 1006
    back, exact = Q.decode_base(rows, 1001), log_softmax(logits)
    top = exact > -16 + 1e-3
    step = 16 / 65535
    assert np.abs(back - exact)[top].max() < step
    assert np.allclose(back[3], exact[3], atol=1e-6)


def test_kld_matches_the_definition():
    rng = np.random.default_rng(1)
    base = (rng.standard_normal((40, 500)) * 3).astype(np.float32)
    q = (base + rng.standard_normal(base.shape) * 0.3).astype(np.float32)
    targets = rng.integers(0, 500, 40)
    acc = Q.KLD()
    kld = acc.add(q, Q.encode_base(base), targets)
    lp, lq = log_softmax(base), log_softmax(q)
    want = np.where(lp > -16, np.exp(lp) * (lp - lq), 0).sum(axis=1)
    assert np.allclose(kld, want, rtol=2e-3, atol=1e-6)
    r = acc.result()
    assert r["kld"] == pytest.approx(want.mean(), rel=2e-3)
    assert r["kld_err"] == pytest.approx(np.sqrt(want.var() / 39), rel=1e-2)
    assert r["same_top"] == pytest.approx(100 * np.mean(base.argmax(1) == q.argmax(1)))
    assert r["ppl"] == pytest.approx(np.exp(-lq[np.arange(40), targets].mean()), rel=1e-5)
    same = Q.KLD()
    # the base's 16-bit codes (steps of 16/65535 nats) leave llama.cpp's KLD of a model against
    # itself within about 1e-4 of 0 per position
    assert np.abs(same.add(base, Q.encode_base(base), targets)).max() < 1e-4
    assert same.result()["same_top"] == 100.0


def test_mean_and_uncertainty_is_llama_perplexitys():
    assert Q.mean_and_uncertainty(0.0, 0.0, 0) == (0.0, 0.0)
    assert Q.mean_and_uncertainty(10.0, 20.0, 10)[1] == 0.0       # 10 values or fewer: no error
    x = np.arange(20, dtype=np.float64)
    m, e = Q.mean_and_uncertainty(x.sum(), (x * x).sum(), 20)
    assert m == pytest.approx(9.5) and e == pytest.approx(np.sqrt(x.var() / 19))


SUMMARY = """====== Perplexity statistics ======
Mean PPL(Q)                   :  18.156797 ±   2.274700
Mean PPL(base)                :  17.958109 ±   2.241313
Cor(ln(PPL(Q)), ln(PPL(base))):  99.93%

====== KL divergence statistics ======
Mean    KLD:   0.004342 ±   0.000189
Maximum KLD:   0.048553

====== Token probability statistics ======
RMS Δp    :  2.120 ± 0.110 %
Same top p: 96.078 ± 0.860 %
"""


def test_parse_llama_perplexity_summary():
    r = Q.parse_llama_kld(SUMMARY)
    assert r == {"kld": 0.004342, "kld_err": 0.000189, "same_top": 96.078, "same_top_err": 0.86,
                 "ppl": 18.156797, "ppl_err": 2.2747, "ppl_base": 17.958109, "ppl_base_err": 2.241313}
    assert np.isnan(Q.parse_llama_kld("nothing here")["kld"])


def test_scoring_tiny_models(tmp_path):
    """A base file written from the tiny F32 model (llama.cpp's layout), then its F32, Q8_0 and
    Q4_0 files scored against it by clexrt."""
    from clexrt.convert.requantize import quantize_gguf
    from clexrt.engine.model import Model

    f32 = tmp_path / "f32.gguf"
    write_tiny(f32, "f32")
    n_ctx, n_chunk = 32, 2
    tokens = np.random.default_rng(2).integers(0, 96, n_ctx * n_chunk).astype(np.int32)
    base = tmp_path / "base.kld"
    with Model(str(f32), n_ctx=n_ctx, n_threads=1) as m, open(base, "wb") as f:
        Q.write_base_header(f, n_ctx, m.n_vocab, tokens)
        for i in range(n_chunk):
            rows = Q.chunk_rows(m, tokens, n_ctx, i, None)
            assert rows.shape == (n_ctx - 1 - n_ctx // 2, 96)
            f.write(Q.encode_base(rows).tobytes())
    hdr, chunks = Q.read_base(base)
    assert (hdr.n_ctx, hdr.n_vocab, hdr.n_chunk) == (32, 96, 2) and np.array_equal(hdr.tokens, tokens)
    assert sum(1 for _ in chunks) == 2
    quiet = lambda *a: None  # noqa: E731
    r = Q.score(f32, base, threads=1, log=quiet)
    assert abs(r["kld"]) < 1e-6 and r["same_top"] == 100.0 and r["tokens"] == 30
    klds = {}
    for t in ("Q8_0", "Q4_0"):
        quantize_gguf(f32, tmp_path / f"{t}.gguf", t, progress=False)
        klds[t] = Q.score(tmp_path / f"{t}.gguf", base, threads=1, log=quiet)["kld"]
    assert 0 < klds["Q8_0"] < klds["Q4_0"] < 0.1
