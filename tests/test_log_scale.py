"""CLEX's log_scale (docs/clex.md, "log_scale") against the official flash-attention path's math:
tests/test_clex_runtime.py's PyTorch model of the official code with modeling_llama_clex.py's
LlamaFlashAttention2 step added, q *= log(kv_seq_len) / log(max_position_embeddings), kv_seq_len
the keys of the forward call (the cache included). Full forward, decoding across t = 1 -> 2 -> 3
under both KV policies, a chunked prompt, the perplexity path, context shift, all within 1e-3;
the default (the file's clex.log_scale where the official code applies it) and the CLI's
--clex-log-scale on|off, which must win over the file's flag."""
import dataclasses
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import hfgen
from test_clex_runtime import L, M, TOL, build, ids_for
from clexrt import Model
from clexrt.cli import cli
from clexrt.convert import clexify, convert_hf
from clexrt.engine.model import log_scale_choice
from clexrt.engine.session import Session
from clexrt.gguf import GGUFFile

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same checkpoint twice: its config.json saying log_scale true, then false."""
    root = tmp_path_factory.mktemp("logscale")
    on, w, ref = build(root, log_scale=True)
    cfg_path = root / "hf" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["log_scale"] = False
    cfg_path.write_text(json.dumps(cfg))
    off = root / "clex-off.gguf"
    convert_hf(root / "hf", off, outtype="f32", progress=False)
    return str(on), str(off), ref


def _ids(ref, n, seed):
    return ids_for(n, seed=seed, vocab=ref.w["lm_head.weight"].shape[0])


def _close(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max()) < TOL


def test_the_default_follows_the_file_and_an_explicit_choice_wins(files):
    on, off, ref = files
    ids = _ids(ref, L // 2, seed=1)
    want = {True: ref.full(ids, log_scale=True), False: ref.full(ids)}
    assert np.abs(want[True] - want[False]).max() > 10 * TOL     # log 16 / log 32 = 0.8 matters
    for path, flag in ((on, True), (off, False)):
        with GGUFFile(path) as g:
            assert bool(g.metadata["clex.log_scale"]) is flag     # the converter kept the config's
        for asked in (None, True, False):
            runs = flag if asked is None else asked
            with Model(path, log_scale=asked) as m:
                assert m.log_scale is runs and m.rope_state["log_scale"] is runs
                assert _close(m.logits(ids), want[runs]), (path, asked)
                if runs:
                    assert m.rope_state["log_factor"] == pytest.approx(math.log(L // 2) / math.log(L))


def test_off_where_the_official_code_never_applies_it(files, tmp_path):
    """The official Phi-2 and Mixtral never read log_scale; clexify's zero-network tables are the
    plain model within L (clexify writes the flag off; older files carried it on only as the
    converter's default); a file without CLEX tables has no L of its own."""
    tm = pytest.importorskip("tinymodel")
    on, _, _ = files
    with Model(on) as m:
        hp = m.hparams
    assert log_scale_choice(hp) == (True, "the file's clex.log_scale, as the official LLaMA applies it")
    assert log_scale_choice(dataclasses.replace(hp, arch="phi2"))[0] is False
    assert log_scale_choice(dataclasses.replace(hp, n_expert=4, n_expert_used=2))[0] is False
    plain = tmp_path / "plain.gguf"
    tm.write_tiny(plain, "f32")
    clexify(str(plain), str(tmp_path / "cx.gguf"), max_factor=2, progress=False)
    ids = list(range(3, 40))
    for path in (plain, tmp_path / "cx.gguf"):
        with Model(path) as m:
            assert m.log_scale is False
            base = m.logits(ids)
        with Model(path, log_scale=True) as m:       # asked for: log(n)/log(the training length)
            assert m.log_scale is True and np.abs(m.logits(ids) - base).max() > 1e-3
    with GGUFFile(str(tmp_path / "cx.gguf")) as g:      # clexify writes the flag off now ...
        assert bool(g.metadata["clex.log_scale"]) is False and g.metadata["clex.init"] == "ntk"
    # ... and an older clexify's file (flag on, zero network) still runs without it
    assert log_scale_choice(dataclasses.replace(hp, clex=dataclasses.replace(hp.clex, init="ntk")))[0] is False
    with pytest.raises(Exception, match="log_scale must be True, False or None"):
        Model(on, log_scale="on")


@pytest.mark.parametrize("n", [L // 2, L, 2 * L + 3, 3 * L + 5, 8 * L])
def test_full_forward_equals_the_official_flash_path(files, n):
    on, _, ref = files
    ids = _ids(ref, n, seed=n)
    with Model(on, clex_mode="ceil") as m:
        ours = m.logits(ids)
        assert m.rope_state["t"] == ref.t_of(n)
    want = ref.full(ids, log_scale=True)
    assert _close(ours, want)
    if n != L:                                   # log(L)/log(L) = 1: the same as without
        assert np.abs(want - ref.full(ids)).max() > 10 * TOL


def _official_decoding(ref, ids, n0, policy):
    """The official cached decoding with log_scale (one forward of ids[:n0], then one token per
    call); "recompute": at each table change a full forward of the sequence instead."""
    cache = ref.new_cache()
    out = {n0: ref.step(cache, ids[:n0], True)[-1]}
    for n in range(n0 + 1, len(ids) + 1):
        if policy == "recompute" and ref.t_of(n) != ref.t_of(n - 1):
            cache = ref.new_cache()
            out[n] = ref.step(cache, ids[:n], True)[-1]
        else:
            out[n] = ref.step(cache, ids[n - 1:n], True)[-1]
    return out


@pytest.mark.parametrize("policy", ["rerotate", "recompute"])
def test_decoding_across_table_changes(files, policy):
    on, _, ref = files
    ids = _ids(ref, 3 * L - 2, seed=7)               # t = 1 -> 2 -> 3
    n0 = L - 12
    want = _official_decoding(ref, ids, n0, policy)
    with Model(on, clex_mode="ceil", kv_policy=policy) as m:
        got = {n0: m.eval(ids[:n0])}
        for n in range(n0 + 1, len(ids) + 1):
            got[n] = m.eval(ids[n - 1:n])
            assert m.rope_state["log_factor"] == pytest.approx(math.log(n) / math.log(L))
        assert m.rope_state["table_changes"] == 2 and m.rope_state["t"] == 3
    worst = max(np.abs(got[n] - want[n]).max() for n in got)
    assert worst < TOL, worst
    if policy == "recompute":                        # at a change: the full forward, log(N) for all
        assert _close(got[2 * L + 1], ref.full(ids[:2 * L + 1], log_scale=True)[-1])


def test_a_chunked_prompt_and_raw_chunks(files):
    """Session.prefill (reserve, 16-token chunks) is the official one-forward prompt: every query
    scaled by log(len(prompt)); decoding then follows kv_len. Without reserve each eval is one
    official forward call with its own kv_len, as the official evaluation's cached chunks are."""
    on, _, ref = files
    ids = _ids(ref, 2 * L + 20, seed=12)
    n0 = 2 * L + 4
    with Model(on, clex_mode="ceil") as m:
        last = Session(m, chunk=16).prefill(ids[:n0])
        assert m.rope_state["table_changes"] == 0 and m.rope_state["t"] == 3
        cache = ref.new_cache()
        assert _close(last, ref.step(cache, ids[:n0], True)[-1])
        for n in range(n0 + 1, len(ids) + 1):
            assert _close(m.eval(ids[n - 1:n]), ref.step(cache, ids[n - 1:n], True)[-1]), n
    with Model(on, clex_mode="ceil") as m:
        cache = ref.new_cache()
        for i in range(0, len(ids), 16):
            got = m.eval(ids[i:i + 16], all_logits=True)
            assert _close(got, ref.step(cache, ids[i:i + 16], True)), i


def test_logits_blocks_are_the_full_forward(files):
    on, _, ref = files
    ids = _ids(ref, 2 * L + 8, seed=4)
    with Model(on, clex_mode="ceil") as m:
        parts = list(m.logits_blocks(ids, start=L, block=8))
    assert [p for p, _ in parts] == list(range(L, 2 * L + 8, 8))
    assert _close(np.concatenate([r for _, r in parts]), ref.full(ids, log_scale=True)[L:])


def test_context_shift_follows_the_shorter_cache(files):
    """Past L x M the older half goes: the official cached decoding over the kept keys (cached
    before RoPE, so dropping them is the reference's shift), kv_len the tokens that remain."""
    on, _, ref = files
    ids = _ids(ref, L * M + 3, seed=5)
    keep, drop = 4, (L * M - 4) // 2
    cache = ref.new_cache()
    ref.step(cache, ids[:L * M], True)
    for part in ("k", "v"):
        cache[part] = [torch.cat([x[:keep], x[keep + drop:]]) for x in cache[part]]
    with Model(on, clex_mode="ceil", context_shift=True, n_keep=keep) as m:
        m.eval(ids[:L * M])
        for n in range(L * M + 1, len(ids) + 1):
            got = m.eval(ids[n - 1:n])
            assert _close(got, ref.step(cache, ids[n - 1:n], True)[-1]), n
        assert m.n_past == L * M + 3 - drop and m.rope_state["t"] == ref.t_of(m.n_past)


# ---------------------------------------------------------------------------------------------
# the CLI: --clex-log-scale on|off, honoured over the file's flag
def _cli(*args, input=None):
    r = CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def _tokenizer(path):
    from clexrt.text.tokenizer import Tokenizer
    with GGUFFile(path) as g:
        return Tokenizer.from_metadata(dict(g.metadata))


def _official_ppl(ref, tokens, n_ctx, chunks, bos, log_scale):
    """llama-perplexity's method (docs/perplexity.md) over the official full forward."""
    nll = []
    for i in range(chunks):
        batch = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if bos is not None:
            batch[0] = bos
        x = ref.full(batch, log_scale)
        for p in range(n_ctx // 2, n_ctx - 1):
            row = x[p]
            nll.append(np.logaddexp.reduce(row) - row[tokens[i * n_ctx + p + 1]])
    return math.exp(float(np.mean(nll)))


def test_cli_perplexity(files, tmp_path):
    on, off, ref = files
    text = tmp_path / "text.txt"
    text.write_text(" ".join(hfgen.CORPUS * 6))
    tok = _tokenizer(on)
    tokens = tok.encode(text.read_text(), add_bos=True)
    bos = tok.bos_id if tok.add_bos else None
    n_ctx = 2 * L                                    # log 64 / log 32 = 1.2
    rows = {}
    for path, flag in ((on, None), (on, "off"), (off, None), (off, "on")):
        args = ["perplexity", "-m", path, "-f", text, "--ctx", n_ctx, "--chunks", 2, "--rope", "clex",
                "--clex-mode", "ceil", "--json"] + (["--clex-log-scale", flag] if flag else [])
        rows[path, flag] = json.loads(_cli(*args).stdout.splitlines()[-1])
    for key, runs in (((on, None), True), ((on, "off"), False), ((off, None), False), ((off, "on"), True)):
        assert rows[key]["log_scale"] is runs
        want = _official_ppl(ref, tokens, n_ctx, 2, bos, runs)
        assert math.isclose(rows[key]["ppl"], want, rel_tol=1e-3), (key, rows[key]["ppl"], want)
    a, b = rows[on, None]["ppl"], rows[on, "off"]["ppl"]
    assert abs(a - b) > 3e-3 * a                   # apart by more than the tolerance (random weights)


def test_cli_generate_greedy_is_the_official_cached_decoding(files):
    on, off, ref = files
    tok = _tokenizer(on)
    prompt = "the model reads"
    ids = tok.encode(prompt, add_bos=True, special=True)
    texts = {}
    for runs in (True, False):
        cache, out = ref.new_cache(), []
        logits = ref.step(cache, ids, runs)[-1]
        while len(out) < 12:
            out.append(int(np.argmax(logits)))
            if out[-1] in tok.eog_ids:
                out.pop()
                break
            logits = ref.step(cache, out[-1:], runs)[-1]
        dec = tok.stream_decoder()
        texts[runs] = "".join(dec.feed(t) for t in out) + dec.flush()
    assert texts[True] != texts[False]
    # the flag on the file whose config says the opposite: it must win
    for path, flag, runs in ((off, "on", True), (on, "off", False), (on, None, True)):
        args = ["generate", "-m", path, "-p", prompt, "-n", 12, "--temp", 0, "--clex-mode", "ceil", "--verbose"]
        r = _cli(*(args + (["--clex-log-scale", flag] if flag else [])))
        assert r.stdout == texts[runs], (path, flag)
        assert ("log_scale on" in r.stderr) is runs


def test_cli_chat_bench_and_info(files):
    on, off, _ = files
    replies = {}
    for path, flag in ((on, None), (off, "on"), (off, None), (on, "off")):
        args = ["chat", "-m", path, "--temp", 0, "-n", 10] + (["--clex-log-scale", flag] if flag else [])
        replies[path, flag] = _cli(*args, input="the model reads\n").stdout
    assert replies[on, None] == replies[off, "on"] != replies[off, None] == replies[on, "off"]
    for path, flag, runs in ((off, "on", True), (on, "off", False), (on, None, True)):
        args = ["bench", "-m", path, "-p", 4, "-n", 2, "-r", 1, "--json"] + (["--clex-log-scale", flag] if flag else [])
        rows = [json.loads(line) for line in _cli(*args).stdout.splitlines()]     # --json: a row per test
        assert [r["rope"]["log_scale"] for r in rows] == [runs, runs]
    for path, runs in ((on, True), (off, False)):
        c = json.loads(_cli("info", path, "--json").stdout)["clex"]
        assert c["log_scale"] is runs and c["log_scale_default"] is runs
        text = _cli("info", path).stdout
        assert f"log_scale: {str(runs).lower()} in the file; {'on' if runs else 'off'} by default" in text
    for name in ("generate", "chat", "perplexity", "bench"):
        assert "--clex-log-scale [on|off]" in _cli(name, "--help").output
