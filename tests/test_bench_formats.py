"""`clexrt bench` in llama-bench's conventions (issue 17 part 6): lists of values per flag, the
tests in llama-bench's order, and its output formats (md, json, jsonl, csv), on a tiny model.
Timings cannot be expected values; the checks are on structure, counts, order, the sizes gguf-py
reads from the file, and the consistency of each row's figures with its own samples."""
from __future__ import annotations

import csv
import io
import json
import re
import statistics

import gguf
import pytest
from click.testing import CliRunner

import tinymodel as tm
from clexrt.cli.bench import cmd as bench

ARGS = ["-p", "8,16", "-n", "4", "-d", "0,8", "-t", "1,2", "-r", "2", "--no-bandwidth"]
# llama-bench's order for those flags: threads, then depth, then the pp tests, then the tg tests
ORDER = [(t, d, p, n) for t in (1, 2) for d in (0, 8) for p, n in ((8, 0), (16, 0), (0, 4))]
LABELS = ["pp8", "pp16", "tg4", "pp8 @ d8", "pp16 @ d8", "tg4 @ d8"] * 2
LLAMA_BENCH_FIELDS = {"cpu_info", "backends", "model_filename", "model_type", "model_size", "model_n_params",
                      "n_batch", "n_threads", "type_k", "type_v", "n_prompt", "n_gen", "n_depth", "test_time",
                      "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "samples_ns", "samples_ts"}
# fields that do not depend on the timing: equal in two runs of the same command
STABLE = ("model_filename", "model_type", "model_size", "model_n_params", "n_batch", "n_threads", "type_k",
          "type_v", "kv_type", "n_prompt", "n_gen", "n_depth", "reps", "kv_bytes", "weight_bytes_per_token")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny-q8.gguf"
    tm.write_tiny(path, "q8_0")
    r = gguf.GGUFReader(str(path))
    return str(path), {"bytes": sum(int(t.n_bytes) for t in r.tensors),
                       "params": sum(int(t.n_elements) for t in r.tensors)}


def _run(*args):
    r = CliRunner().invoke(bench, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stdout


def _key(row):
    return int(row["n_threads"]), int(row["n_depth"]), int(row["n_prompt"]), int(row["n_gen"])


@pytest.fixture(scope="module")
def json_rows(tiny):
    return json.loads(_run("-m", tiny[0], *ARGS, "-o", "json"))


def test_json_is_one_array_of_rows_in_llama_bench_order(tiny, json_rows):
    _, sizes = tiny
    assert [_key(r) for r in json_rows] == ORDER
    for r in json_rows:
        assert LLAMA_BENCH_FIELDS <= set(r)
        assert (r["model_size"], r["model_n_params"], r["backends"]) == (sizes["bytes"], sizes["params"], "CPU")
        assert len(r["samples_ns"]) == len(r["samples_ts"]) == r["reps"] == 2
        n = r["n_prompt"] + r["n_gen"]
        assert r["samples_ts"] == pytest.approx([n * 1e9 / ns for ns in r["samples_ns"]])
        assert r["avg_ts"] == pytest.approx(statistics.mean(r["samples_ts"]))
        assert r["stddev_ts"] == pytest.approx(statistics.stdev(r["samples_ts"]))
        assert r["rope"]["method"] == "none" and "read_gbps" not in r
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["test_time"])


def test_jsonl_and_csv_give_the_same_rows_as_json(tiny, json_rows):
    lines = _run("-m", tiny[0], *ARGS, "-o", "jsonl").splitlines()
    assert len(lines) == len(ORDER)
    jsonl = [json.loads(line) for line in lines]
    text = _run("-m", tiny[0], *ARGS, "-o", "csv")
    head, first = text.splitlines()[:2]
    assert head.startswith("cpu_info,backends,") and first.startswith('"')    # llama-bench quotes values only
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(ORDER)
    for j, l, c in zip(json_rows, jsonl, rows):
        assert {k: l[k] for k in STABLE} == {k: j[k] for k in STABLE}
        assert {k: c[k] for k in STABLE} == {k: str(j[k]) for k in STABLE}
        assert (c["rope_method"], c["read_gbps"], c["table_change_ms"]) == ("none", "", "")
        assert float(c["avg_ts"]) > 0 and int(c["avg_ns"]) > 0
        assert "samples_ns" not in c


def test_markdown_is_llama_bench_table(tiny):
    path, sizes = tiny
    out = _run("-m", path, *ARGS).splitlines()
    head, rule, body = out[0], out[1], out[2:2 + len(ORDER)]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in [head] + body]
    assert cells[0] == ["model", "size", "params", "backend", "threads", "test", "t/s"]
    assert rule.startswith("| ------------------------------ | ---------: | ---------: | ")
    assert rule.endswith(" | ------: | --------------: | -------------------: |")
    # aligned columns; the last, t/s, is 20 wide as llama-bench's and, as there, a wider figure (a
    # tiny model's pp past 100000 t/s with its spread) overflows it rather than shifting the others
    assert len({len(line.rsplit("|", 2)[0]) for line in [head, rule] + body}) == 1
    assert all(len(line.rsplit("|", 2)[1]) >= 22 for line in [head, rule] + body)
    assert [c[5] for c in cells[1:]] == LABELS
    assert [c[4] for c in cells[1:]] == ["1"] * 6 + ["2"] * 6
    for c in cells[1:]:
        assert c[1] == f"{sizes['bytes'] / 2**20:.2f} MiB" and c[2] == f"{sizes['params'] / 1e6:.2f} M"
        assert re.fullmatch(r"CPU \((scalar|avx2|avx512|neon)\)", c[3])
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", c[6])
    assert len(out) == 2 + len(ORDER)          # --no-bandwidth, rope none: nothing below the table


def test_bandwidth_lines_below_the_table_and_in_the_rows(tiny):
    path, _ = tiny
    out = _run("-m", path, "-p", "8", "-n", "4,2", "-t", "1", "-r", "1").splitlines()
    assert out[0].startswith("| model") and len(out) == 2 + 3 + 3
    assert out[5].startswith("tg streams ") and " MiB of weights per token, " in out[5]
    assert re.search(r" four per kernel call(, a quarter of a thread's rows apart|, side by side)? "
                     r"\(CLEXRT_DECODE_ROWS4_MAX=-?\d+, CLEXRT_DECODE_QUARTERS=[01]\), prefetch \d+ bytes ahead "
                     r"\(CLEXRT_DECODE_PREFETCH\), rows over 1024 bytes \d+ \(CLEXRT_DECODE_PREFETCH_LONG\), "
                     r"(every line|the first \d+ bytes of each 4 KiB page) \(CLEXRT_DECODE_PREFETCH_PAGE\):$",
                     out[5]), out[5]
    assert out[6].startswith("  tg4: ") and out[7].startswith("  tg2: ")
    assert all("a plain read reaches with 1 threads" in line for line in out[6:])
    # the rows' figures: tests/test_bandwidth.py::test_bench_reports_tg_against_the_bandwidth


def test_json_flag_is_jsonl(tiny):
    lines = _run("-m", tiny[0], "-p", "8", "-n", "4", "-r", "1", "-t", "1", "--no-bandwidth", "--json").splitlines()
    assert [(json.loads(x)["n_prompt"], json.loads(x)["n_gen"]) for x in lines] == [(8, 0), (0, 4)]
    r = CliRunner().invoke(bench, ["-m", tiny[0], "--json", "-o", "csv"])
    assert r.exit_code == 2 and "--json is -o jsonl" in r.output


def test_f16_cache_adds_type_columns(tiny):
    out = _run("-m", tiny[0], "-p", "8", "-n", "0", "-r", "1", "-t", "1", "--kv-type", "f16").splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in (out[0], out[2])]
    assert cells[0][5:7] == ["type_k", "type_v"] and cells[1][5:7] == ["f16", "f16"]


@pytest.mark.parametrize("args, flag", [
    (["-p", "12,x"], "'-p'"), (["-o", "xml"], "'-o'"), (["-t", "0"], "'-t'"), (["-d", "-1"], "'-d'"),
    (["-n", "4,,8"], "'-n'"), (["-p", "0", "-n", "0"], "nothing to measure"),
])
def test_bad_values_are_one_line_click_errors(tiny, args, flag):
    r = CliRunner().invoke(bench, ["-m", tiny[0]] + args)
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and flag in errors[0], r.output


def test_depth_prefix_is_reused_between_runs(tiny):
    import numpy as np

    from clexrt.cli.bench import DepthCache
    from clexrt.engine.model import Model

    with Model(tiny[0], n_ctx=64, n_threads=1) as m:
        cache = DepthCache(m, np.random.default_rng(0))
        cache.to(8)
        first = m.tokens
        m.eval([1, 2, 3])                          # a test's tokens after the depth
        cache.to(16)
        assert m.n_past == 16 and (m.tokens[:8] == first).all()
        m.eval([4])
        cache.to(8)
        assert m.n_past == 8 and (m.tokens == first).all()
        cache.to(0)
        assert m.n_past == 0


def test_table_change_cost_at_each_depth_of_a_clex_model(tmp_path):
    import dataclasses

    import hfgen
    from clexrt.convert import convert_hf

    spec = dataclasses.replace(hfgen.CLEX, n_ctx=32, max_factor=4)
    hfgen.make_checkpoint(tmp_path / "hf", spec)
    model = tmp_path / "clex.gguf"
    convert_hf(tmp_path / "hf", model, outtype="f32", progress=False)
    args = ["-m", model, "-p", "0", "-n", "4", "-d", "0,40,60", "-r", "1", "-t", "1", "--rope", "clex",
            "--clex-mode", "ceil", "--no-bandwidth"]
    rows = [json.loads(line) for line in _run(*args, "-o", "jsonl").splitlines()]
    assert [r["n_depth"] for r in rows] == [0, 40, 60]
    assert "table_change" not in rows[0]
    for r in rows[1:]:
        assert r["table_change"]["n_past"] == r["n_depth"] and r["table_change_ms"] > 0
        assert r["rope"]["method"] == "clex"
    notes = _run(*args).splitlines()[2 + 3:]
    assert notes[0].startswith("rope: clex (ceil)")
    assert [n.split(",")[0] for n in notes[1:]] == ["table change at depth 40", "table change at depth 60"]


def test_plan_repeats_follow_llama_bench_loops():
    from clexrt.cli.bench import Test, plan_tests

    got = plan_tests([2, 2], [0, 8], [16, 0], [4])
    want = [Test(2, d, p, n) for _ in range(2) for d in (0, 8) for p, n in ((16, 0), (0, 4))]
    assert got == want


def test_profile_shows_where_a_token_goes(tiny):
    path, _ = tiny
    args = ["-m", path, "-p", "8", "-n", "4", "-t", "2", "-r", "1", "--no-bandwidth", "--profile"]
    res = CliRunner().invoke(bench, args + ["-o", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    pp, tg = rows
    for row, per in ((pp, 8), (tg, 1)):
        p = row["profile"]
        assert p["passes"] == (1 if per == 8 else 4)
        # the tiny model's two layers: one qkv barrier per layer per pass, per token
        assert p["steps"]["qkv"]["barriers"] == pytest.approx(2 / per)
        assert len(p["steps"]["gate_up"]["work_us"]) == 2
        assert 0 < p["in_c_us"] <= p["wall_us"]
        assert p["outside_us"] == pytest.approx(p["wall_us"] - p["in_c_us"])
    md = CliRunner().invoke(bench, args)
    assert md.exit_code == 0, md.output
    lines = md.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("tg4, 2 threads, profiled once more: "))
    assert "us a token" in lines[head] and "outside them" in lines[head]
    qkv = next(ln for ln in lines[head:] if ln.split()[0] == "qkv").split()
    assert float(qkv[1]) == 2.0 and len(qkv) == 6   # name, barriers, two threads' work, two waits
    assert any(ln.startswith("pp8, 2 threads, profiled once more: ") and "us a prompt token" in ln for ln in lines)
    csv_out = CliRunner().invoke(bench, args + ["-o", "csv"])
    assert csv_out.exit_code == 0, csv_out.output
    table = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert [float(r["profile_wall_us"]) > 0 for r in table] == [True, True]
    for r in table:
        assert float(r["profile_in_c_us"]) + float(r["profile_outside_us"]) == pytest.approx(
            float(r["profile_wall_us"]), rel=1e-6)
