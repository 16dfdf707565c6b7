"""`clexrt perplexity`: llama-perplexity's method (chunks of n_ctx, second half scored, BOS first)
against a numpy reference forward, and the command line (sweep rows, --json, --plot)."""
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import hfgen
from clexrt import Model
from clexrt.cli.perplexity import cmd, perplexity
from clexrt.convert import convert_hf
from clexrt.errors import ClexError
from tinymodel import read_weights, reference_forward, tiny_hparams, write_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("ppl") / "tiny.gguf"
    cfg = write_tiny(path, "f32", tiny_hparams(n_ctx_train=64))
    return str(path), cfg, read_weights(path)


def test_perplexity_is_llama_perplexity(tiny):
    path, cfg, w = tiny
    n_ctx, bos = 32, 1
    tokens = np.random.default_rng(0).integers(0, cfg.n_vocab, 3 * n_ctx + 5)
    seen = []
    with Model(path) as m:
        res = perplexity(m, tokens, n_ctx, bos_id=bos, block=5, progress=lambda i, p: seen.append((i, p)))
    nll = []
    for i in range(3):
        batch = tokens[i * n_ctx:(i + 1) * n_ctx].copy()
        batch[0] = bos
        logits = reference_forward(w, cfg, batch)
        for j in range(n_ctx // 2, n_ctx - 1):
            row = logits[j]
            lse = np.log(np.exp(row - row.max()).sum()) + row.max()
            nll.append(lse - row[tokens[i * n_ctx + j + 1]])
    nll = np.array(nll)
    assert res.chunks == 3 and res.tokens_scored == nll.size == 3 * 15
    assert math.isclose(res.ppl, math.exp(nll.mean()), rel_tol=1e-5)
    assert math.isclose(res.ppl_err, nll.std(ddof=1) / math.sqrt(nll.size) * res.ppl, rel_tol=1e-4)
    assert [i for i, _ in seen] == [1, 2, 3] and math.isclose(seen[-1][1], res.ppl)
    assert res.method == "none" and res.t == 1.0


def test_chunks_and_too_short_text(tiny):
    path, cfg, _ = tiny
    tokens = np.arange(100) % cfg.n_vocab
    with Model(path) as m:
        assert perplexity(m, tokens, 16, n_chunks=2).chunks == 2
        assert perplexity(m, tokens, 16).chunks == 6
        with pytest.raises(ClexError, match="at least 128 tokens"):
            perplexity(m, tokens, 64)


def test_logits_blocks_are_the_full_forward_rows(tiny):
    path, cfg, _ = tiny
    ids = np.random.default_rng(2).integers(0, cfg.n_vocab, 50)
    with Model(path, n_ctx=64, rope="ntk") as m:
        full = m.logits(ids)
        parts = list(m.logits_blocks(ids, start=20, block=8))
        assert [p for p, _ in parts] == [20, 28, 36, 44]
        np.testing.assert_allclose(np.concatenate([r for _, r in parts]), full[20:], atol=1e-5)
        assert m.n_past == 50 and m.rope_state["t"] == 1.0


@pytest.fixture(scope="module")
def clex_gguf(tmp_path_factory):
    import dataclasses
    root = tmp_path_factory.mktemp("pplclex")
    spec = dataclasses.replace(hfgen.CLEX, n_ctx=32, max_factor=4)
    hfgen.make_checkpoint(root / "hf", spec)
    convert_hf(root / "hf", root / "clex.gguf", outtype="f32", progress=False)
    text = root / "text.txt"
    text.write_text(" ".join(hfgen.CORPUS * 6))
    return str(root / "clex.gguf"), str(text)


def test_cli_sweep_and_json(clex_gguf):
    model, text = clex_gguf
    r = CliRunner().invoke(cmd, ["-m", model, "-f", text, "--ctx", "32,64", "--rope", "none,clex",
                                 "--chunks", "2", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["ctx"], x["method"]) for x in rows] == [(32, "none"), (64, "none"), (32, "clex"), (64, "clex")]
    assert all(x["ppl"] > 1 and x["chunks"] == 2 for x in rows)
    assert rows[3]["t"] == 2.0 and rows[3]["mode"] == "continuous"      # the default mode
    # at ctx <= L the CLEX model runs its stored frequencies: the same numbers as none
    assert math.isclose(rows[0]["ppl"], rows[2]["ppl"], rel_tol=1e-6)


def test_cli_text_output(clex_gguf):
    model, text = clex_gguf
    r = CliRunner().invoke(cmd, ["-m", model, "-f", text, "--ctx", "48", "--chunks", "3",
                                 "--clex-mode", "ceil,continuous"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "[1]" in out and "[3]" in out and out.count("Final estimate: PPL = ") == 2
    assert "clex (ceil)" in out and "clex (continuous)" in out


def test_cli_plot(clex_gguf, tmp_path):
    model, text = clex_gguf
    png = tmp_path / "ppl.png"
    r = CliRunner().invoke(cmd, ["-m", model, "-f", text, "--ctx", "32,64", "--chunks", "1",
                                 "--plot", str(png)])
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        assert r.exit_code != 0 and "matplotlib" in str(r.exception)
        return
    assert r.exit_code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_too_long_context_is_a_row_error(clex_gguf):
    model, text = clex_gguf
    r = CliRunner().invoke(cmd, ["-m", model, "-f", text, "--ctx", "64,160", "--chunks", "1", "--json"])
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert "ppl" in rows[0] and "L x max_factor" in rows[1]["error"]


# ---------------------------------------------------------------------------------------------
# the rope options of the other commands
def test_bench_reports_the_cost_of_a_table_change(clex_gguf):
    from clexrt.cli.bench import cmd as bench
    model, _ = clex_gguf
    r = CliRunner().invoke(bench, ["-m", model, "-p", "0", "-n", "4", "-d", "40", "-r", "2", "--rope", "clex",
                                   "--clex-mode", "ceil", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)
    ch = row["table_change"]
    assert (ch["from_t"], ch["to_t"], ch["policy"], ch["n_past"]) == (2.0, 3.0, "rerotate", 40)
    assert len(ch["seconds"]) == 4 and row["table_change_ms"] > 0
    assert row["rope"]["method"] == "clex"
    r = CliRunner().invoke(bench, ["-m", model, "-p", "8", "-n", "0", "-d", "40", "-r", "1", "--rope", "none"])
    assert r.exit_code == 0 and "table change" not in r.stdout


def test_generate_verbose_shows_t(clex_gguf):
    from clexrt.cli.generate import cmd as generate
    model, _ = clex_gguf
    prompt = " ".join(hfgen.CORPUS)[:150]
    r = CliRunner().invoke(generate, ["-m", model, "-p", prompt, "-n", "12", "--temp", "0", "--verbose",
                                      "--clex-mode", "continuous"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    err = r.stderr
    assert "rope clex (continuous) t=1, 0 table changes (rerotate), next at 33 tokens" in err
    assert "clexrt: rope t=" in err and " after " in err
