"""benchmarks/bench_vs_llamacpp.py (`make bench`, issue 17 part 5): it reads llama-bench's JSON
(a recorded llama-bench run), runs clexrt bench in interleaved rounds, and writes the docs'
section in place. A stand-in llama-bench with fixed figures makes the ratios checkable; the run
is tiny (a few tokens, one or two rounds)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import tinymodel as tm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_vs_llamacpp as B                  # noqa: E402

RECORDED = ROOT / "tests" / "data" / "llama_bench_smollm2_q4_1.json"    # llama-bench -p 16 -n 4 -o json
FAKE_PP, FAKE_TG = 1000.0, 100.0


def test_reads_llama_bench_json():
    rows = json.loads(RECORDED.read_text())
    got = B.parse_llama_bench(RECORDED.read_text())
    want_pp = next(r["avg_ts"] for r in rows if r["n_prompt"] == 16 and r["n_gen"] == 0)
    want_tg = next(r["avg_ts"] for r in rows if r["n_prompt"] == 0 and r["n_gen"] == 4)
    assert got == {"pp": want_pp, "tg": want_tg, "version": rows[0]["build_commit"]}


@pytest.fixture
def fake_llama_bench(tmp_path):
    """A llama-bench that prints two rows of its JSON with fixed figures (and checks its flags)."""
    exe = tmp_path / "llama-bench"
    exe.write_text(f"#!{sys.executable}\n" + f"""
import json, sys
a = sys.argv
assert a[a.index("-o") + 1] == "json" and a[a.index("-t") + 1] == "1"
p, n = int(a[a.index("-p") + 1]), int(a[a.index("-n") + 1])
print(json.dumps([{{"build_commit": "fake123", "n_prompt": p, "n_gen": 0, "n_depth": 0, "avg_ts": {FAKE_PP}}},
                  {{"build_commit": "fake123", "n_prompt": 0, "n_gen": n, "n_depth": 0, "avg_ts": {FAKE_TG}}}],
                 indent=2))
""")
    exe.chmod(0o755)
    return str(exe)


def test_rounds_ratios_and_the_doc_section(tmp_path, fake_llama_bench):
    model = tmp_path / "tiny-q8.gguf"
    tm.write_tiny(model, "q8_0")
    doc = tmp_path / "perf.md"
    before, after = "# Performance\n\ntext before\n\n", "\n\ntext after\n"
    doc.write_text(before + B.BEGIN + "\nold table\n" + B.END + after)
    out = tmp_path / "out.json"
    args = ["--model", str(model), "--llama-bench", fake_llama_bench, "-t", "1", "-p", "8", "-n", "4", "-r", "1",
            "--rounds", "2", "--json", str(out), "--doc", str(doc)]
    B.main(args)
    res = json.loads(out.read_text())
    assert res["machine"]["llama"] == "fake123" and len(res["results"]) == 1
    r = res["results"][0]
    assert r["llama.cpp"]["pp8"] == FAKE_PP and r["llama.cpp"]["tg4"] == FAKE_TG
    assert len(r["rounds_detail"]["clexrt"]) == len(r["rounds_detail"]["llama.cpp"]) == 2
    assert r["ratio"]["pp8"] == pytest.approx(r["clexrt"]["pp8"] / FAKE_PP)
    assert r["bandwidth_pct"]["llama.cpp"] == pytest.approx(
        100 * FAKE_TG * r["weight_bytes_per_token"] / 1e9 / r["read_gbps"])
    text = doc.read_text()
    assert text.startswith(before + B.BEGIN + "\n") and text.endswith(B.END + after)
    assert "old table" not in text and "llama.cpp fake123" in text and "1 threads" in text
    assert "load average" in text
    row = next(line for line in text.splitlines() if line.startswith("| tiny-q8.gguf |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == f"{FAKE_PP:.1f}" and cells[4] == f"{r['ratio']['pp8']:.2f}x"
    assert cells[6] == f"{FAKE_TG:.1f}" and cells[7] == f"{r['ratio']['tg4']:.2f}x"
    B.write_doc(str(doc), "new table")                 # replaced again, not appended
    assert doc.read_text() == before + B.BEGIN + "\nnew table\n" + B.END + after


def test_a_doc_without_markers_is_refused(tmp_path, fake_llama_bench):
    doc = tmp_path / "perf.md"
    doc.write_text("no section here\n")
    with pytest.raises(SystemExit) as e:
        B.write_doc(str(doc), "table")
    assert "bench:begin" in str(e.value) and doc.read_text() == "no section here\n"


def test_tinyllama_files_are_generated_when_missing(smollm2, tmp_path, fake_llama_bench):
    folder = tmp_path / "synth"
    out = tmp_path / "out.json"
    B.main(["--tinyllama", str(folder), "--types", "q8_0", "--only-tinyllama", "--synth-args",
            "--layers 1 --n-embd 256 --n-ff 512", "--llama-bench", fake_llama_bench, "-t", "1", "-p", "8",
            "-n", "2", "-r", "1", "--rounds", "1", "--json", str(out)])
    assert sorted(p.name for p in folder.iterdir()) == ["tinyllama-L1-E256-F512-f16.gguf", "tinyllama-Q8_0.gguf"]
    res = json.loads(out.read_text())["results"]
    assert [r["model"] for r in res] == ["tinyllama-Q8_0.gguf"] and res[0]["clexrt"]["tg2"] > 0
