"""The decoding yardstick of `clexrt bench` (issue 17): the read bandwidth the machine reaches
with the bench's threads, and the weight bytes one decoded token streams, checked against
gguf-py's own reading of the file's tensors."""
import json

import pytest
from click.testing import CliRunner
from gguf import GGUFReader

from clexrt.cli.bench import cmd as bench
from clexrt.engine.bandwidth import decode_bytes_per_token, read_bandwidth
from clexrt.engine.native import ffi, lib
from clexrt.gguf.reader import GGUFFile


def test_read_bandwidth_is_measured_and_bad_arguments_are_errors():
    g = ffi.new("double *")
    assert lib.clex_read_bandwidth(16 << 20, 2, 2, g) == 0 and 0.1 < g[0] < 10_000
    for args in ((1 << 10, 1, 1), (16 << 20, 0, 1), (16 << 20, 65, 1), (16 << 20, 1, 0)):
        assert lib.clex_read_bandwidth(*args, g) != 0
        assert b"clex_read_bandwidth" in ffi.string(lib.clex_last_error())
    assert lib.clex_read_bandwidth(16 << 20, 1, 1, ffi.NULL) != 0
    assert 0.1 < read_bandwidth(1, passes=1) < 10_000      # the default size, in a child process


def _independent_bytes(path, n_expert=0, n_used=0):
    """gguf-py: every tensor's bytes, the token embedding as one row where an output matrix
    exists, the expert tensors at n_used / n_expert"""
    total = 0
    r = GGUFReader(path)
    names = {t.name for t in r.tensors}
    for t in r.tensors:
        b = int(t.n_bytes)
        if t.name == "token_embd.weight" and "output.weight" in names:
            b //= int(t.shape[-1]) if len(t.shape) > 1 else 1
        elif "_exps." in t.name and n_expert:
            b = b * n_used // n_expert
        total += b
    return total


def test_weight_bytes_per_token_agree_with_gguf_py(smollm2, tmp_path):
    with GGUFFile(smollm2) as g:
        got = decode_bytes_per_token(g)
    assert got == _independent_bytes(smollm2)          # tied embeddings: the whole matrix is read
    import tinymodel as tm
    path = tmp_path / "untied.gguf"
    tm.write_tiny(path, "q8_0")
    with GGUFFile(path) as g:
        assert "output.weight" in g.tensors
        assert decode_bytes_per_token(g) == _independent_bytes(str(path))


def test_bench_reports_tg_against_the_bandwidth(smollm2):
    r = CliRunner().invoke(bench, ["-m", smollm2, "-p", "0", "-n", "4", "-r", "1", "-t", "1", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)
    assert row["read_gbps"] > 0 and row["weight_bytes_per_token"] == _independent_bytes(smollm2)
    assert row["tg_weight_gbps"] == pytest.approx(row["avg_ts"] * row["weight_bytes_per_token"] / 1e9)
    assert row["tg_bandwidth_pct"] == pytest.approx(100 * row["tg_weight_gbps"] / row["read_gbps"])
    r = CliRunner().invoke(bench, ["-m", smollm2, "-p", "0", "-n", "4", "-r", "1", "-t", "1"])
    assert r.exit_code == 0 and "% of the" in r.stdout and "a plain read reaches with 1 threads" in r.stdout
    r = CliRunner().invoke(bench, ["-m", smollm2, "-p", "0", "-n", "4", "-r", "1", "-t", "1", "--no-bandwidth",
                                   "--json"])
    assert r.exit_code == 0 and "read_gbps" not in json.loads(r.stdout)
