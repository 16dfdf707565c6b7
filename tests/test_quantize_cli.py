"""`clexrt quantize` on tiny generated models (rows of 256 for the K-quants; rows of 64 for the
fallbacks): every file type writes a valid model with llama-quantize's mixture, keeps every key
(the clex.* tables too), order and alignment; the output appears only when complete (errors and
Ctrl-C leave nothing); importance matrices (GGUF and legacy) are read as llama-quantize reads
them and refused when they do not fit the model; bad input is one line and exit status 1.
llama-quantize itself is compared in tests/test_quantize_llamacpp.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imatrixgen import imatrix_entries, write_imatrix, write_legacy
from tinymodel import TINY_K, tiny_hparams, write_tiny
from clexrt.cli.quantize import TYPES as CLI_TYPES
from clexrt.convert import clexify, convert_hf
from clexrt.convert import native_rows as R
from clexrt.convert.imatrix import load_imatrix
from clexrt.convert.mixture import FILE_TYPES, choose_types, is_quantizable
from clexrt.convert.requantize import quantize_gguf
from clexrt.errors import ConvertError
from clexrt.gguf.reader import GGUFFile
from clexrt.gguf.schema import validate_model

ROOT = Path(__file__).resolve().parents[1]
Q4_K, Q6_K, TQ2_0 = 12, 14, 35
# logits of the quantized tiny model against the F32 one: correlation at least (measured 0.87
# for Q2_K, 0.95-0.96 for Q3_K_*, 0.985-0.989 for the 4-bit types, 0.996 for 5 bits, 0.999 for 6 and 8)
MIN_CORR = {"Q2": 0.84, "Q3": 0.93, "Q5": 0.99, "Q6": 0.995, "Q8": 0.995}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    f32 = d / "k-f32.gguf"
    write_tiny(f32, "f32", tiny_hparams(**TINY_K))
    clex = d / "k-clex.gguf"                      # the K-shaped model with CLEX tables baked in
    clexify(f32, clex, max_factor=4, progress=False)
    narrow = d / "narrow.gguf"                    # rows of 64 and 128: the mixture falls back
    write_tiny(narrow, "f32")
    q8 = d / "k-q8_0.gguf"
    write_tiny(q8, "q8_0", tiny_hparams(**TINY_K))
    return {"dir": d, "clex": clex, "narrow": narrow, "q8": q8}


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def floats(g: GGUFFile, name: str) -> np.ndarray:
    """A tensor's values as the core dequantizes them (numpy order)."""
    t = g.tensors[name]
    return np.array(R._floats(g.tensor_bytes(name), t.ggml_type, 0, t.n_elements, name)).reshape(t.shape[::-1])


def expected_types(path, file_type):
    with GGUFFile(path) as g:
        hp = validate_model(g)
        return choose_types([(n, t.shape, t.ggml_type) for n, t in g.tensors.items()], file_type,
                            hp.arch, hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_expert)


@pytest.fixture(scope="module")
def f32_logits(models):
    from clexrt.engine.model import Model
    with Model(str(models["clex"]), n_threads=1) as m:
        return m.logits(list(range(1, 17)))


@pytest.mark.parametrize("file_type", list(FILE_TYPES))
def test_every_file_type_writes_the_mixture(models, f32_logits, tmp_path, file_type):
    from clexrt.engine.model import Model

    src, out = models["clex"], tmp_path / f"{file_type}.gguf"
    quantize_gguf(src, out, file_type.lower(), n_threads=2, progress=False)
    want = expected_types(src, file_type)
    with GGUFFile(src) as a, GGUFFile(out) as b:
        validate_model(b)
        assert list(b.tensors) == list(a.tensors) and b.alignment == a.alignment
        assert {n: t.ggml_type for n, t in b.tensors.items()} == want
        assert b.metadata["general.file_type"] == FILE_TYPES[file_type]
        assert b.metadata["general.quantization_version"] == 2
        for k, v in a.metadata.items():
            assert b.metadata_types[k] == a.metadata_types[k], k
            if k != "general.file_type":
                assert np.array_equal(np.asarray(b.metadata[k]), np.asarray(v)), k
        assert any(k.startswith("clex.") for k in b.metadata)
        for name, t in b.tensors.items():
            if t.ggml_type == a.tensors[name].ggml_type:
                assert bytes(b.tensor_bytes(name)) == bytes(a.tensor_bytes(name)), name
            else:       # the C quantizers on the input's floats (llama-quantize's bytes)
                x = np.asarray(a.tensor_array(name), np.float32)
                assert bytes(b.tensor_bytes(name)) == R.quantize_array(x, t.ggml_type).tobytes(), name
    with Model(str(out), n_threads=1) as m:
        got = m.logits(list(range(1, 17)))
    corr = np.corrcoef(got.reshape(-1), f32_logits.reshape(-1))[0, 1]
    assert corr > MIN_CORR.get(file_type[:2], 0.97), corr


def test_the_cli_lists_the_mixture_types():
    assert CLI_TYPES == list(FILE_TYPES)


def test_requantizing_dequantizes_first(models, tmp_path):
    out = tmp_path / "q.gguf"
    plan = quantize_gguf(models["q8"], out, "Q4_K_M", progress=False)
    assert any("requantized from Q8_0" in n for n in plan.notes)
    with GGUFFile(models["q8"]) as a, GGUFFile(out) as b:
        name = "blk.0.ffn_up.weight"
        x = floats(a, name)
        assert bytes(b.tensor_bytes(name)) == R.quantize_array(x, b.tensors[name].ggml_type).tobytes()


def test_narrow_rows_fall_back_and_pure_refuses_them(models, tmp_path):
    out = tmp_path / "n.gguf"
    quantize_gguf(models["narrow"], out, "Q4_K_M", progress=False)
    with GGUFFile(out) as b:
        validate_model(b)
        assert {n: t.ggml_type for n, t in b.tensors.items()} == expected_types(models["narrow"], "Q4_K_M")
        assert Q4_K not in {t.ggml_type for t in b.tensors.values()}
    with pytest.raises(ConvertError, match=r"'token_embd.weight': rows of 64 .* not a multiple of Q4_K's 256"):
        quantize_gguf(models["narrow"], tmp_path / "p.gguf", "Q4_K_M", pure=True, progress=False)
    quantize_gguf(models["clex"], tmp_path / "p.gguf", "Q4_K_M", pure=True, progress=False)
    with GGUFFile(tmp_path / "p.gguf") as b:
        assert {t.ggml_type for n, t in b.tensors.items() if is_quantizable(n, t.shape)} == {Q4_K}
    assert listing(tmp_path) == ["n.gguf", "p.gguf"]


def test_a_type_the_core_cannot_dequantize_is_named(tmp_path):
    src = tmp_path / "tq.gguf"
    write_tiny(src, "f32", tiny_hparams(**TINY_K), override_types={"blk.1.ffn_up.weight": "TQ2_0"})
    with pytest.raises(ConvertError, match=r"tensor 'blk.1.ffn_up.weight' is TQ2_0, which clexrt cannot dequantize"):
        quantize_gguf(src, tmp_path / "o.gguf", "Q4_K_M", progress=False)
    assert listing(tmp_path) == ["tq.gguf"]


@pytest.mark.parametrize("exc", [ConvertError("disk on fire"), KeyboardInterrupt()])
def test_nothing_is_left_behind(models, tmp_path, monkeypatch, exc):
    """An error or a Ctrl-C while the fourth tensor is being quantized: an existing OUT keeps its
    bytes, and no temporary file stays."""
    out = tmp_path / "o.gguf"
    out.write_bytes(b"old")
    real, calls = R.convert_tensor, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(R, "convert_tensor", failing)
    with pytest.raises(type(exc)):
        quantize_gguf(models["clex"], out, "Q4_K_M", progress=False)
    assert out.read_bytes() == b"old" and listing(tmp_path) == ["o.gguf"]


SLOW_MAIN = """
import sys, time
from clexrt.convert import native_rows as R
real = R.convert_tensor
def slow(*a, **k):
    time.sleep(0.3)
    return real(*a, **k)
R.convert_tensor = slow
from clexrt.cli import main
main(sys.argv[1:])
"""


def test_ctrl_c_in_the_cli_removes_the_temporary_file(models, tmp_path):
    """A real SIGINT to `clexrt quantize` once its temporary file exists (each tensor slowed to
    0.3 s): exit 130, no OUT, no OUT.tmp-*."""
    out = tmp_path / "o.gguf"
    # SIGINT at its default in the child: a suite started in the background by a script has it
    # ignored, and Python then never raises KeyboardInterrupt
    p = subprocess.Popen([sys.executable, "-c", SLOW_MAIN, "quantize", str(models["clex"]), str(out),
                          "--type", "Q4_K_M", "--no-progress"], stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.monotonic()
        while not any(".tmp-" in n for n in os.listdir(tmp_path)):
            assert p.poll() is None and time.monotonic() - t0 < 30, p.stderr.read() if p.poll() is not None else "slow"
            time.sleep(0.02)
        time.sleep(0.4)
        p.send_signal(signal.SIGINT)
        rc = p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    assert rc == 130, p.stderr.read()
    assert listing(tmp_path) == []


# ---------------------------------------------------------------- importance matrices

def test_imatrix_gguf_and_legacy_read_alike(models, tmp_path):
    ent = imatrix_entries(models["clex"])
    write_imatrix(tmp_path / "im.gguf", ent)
    write_legacy(tmp_path / "im.dat", ent)
    a, b = load_imatrix(tmp_path / "im.gguf"), load_imatrix(tmp_path / "im.dat")
    assert not a.legacy and b.legacy and a.datasets == b.datasets == ["test.txt"] and a.chunk_count == 3
    for name, (sums, count) in ent.items():
        assert np.array_equal(a.entries[name], sums / np.float32(count))
        assert np.allclose(b.entries[name], a.entries[name], rtol=1e-6)


@pytest.mark.parametrize("file_type", ["Q4_K_M", "Q4_0"])
def test_imatrix_quantizes_with_the_importances(models, tmp_path, file_type):
    ent = imatrix_entries(models["clex"])
    write_imatrix(tmp_path / "im.gguf", ent)
    out, plain = tmp_path / "o.gguf", tmp_path / "p.gguf"
    quantize_gguf(models["clex"], out, file_type, imatrix=tmp_path / "im.gguf", progress=False)
    quantize_gguf(models["clex"], plain, file_type, progress=False)
    with GGUFFile(models["clex"]) as a, GGUFFile(out) as b, GGUFFile(plain) as c:
        validate_model(b)
        assert b.metadata["quantize.imatrix.entries_count"] == len(ent)
        assert b.metadata["quantize.imatrix.dataset"] == "test.txt"
        for name, t in b.tensors.items():
            if name in ent:
                sums, count = ent[name]
                want = R.convert_tensor(a.tensor_bytes(name), 0, a.tensors[name].shape, t.ggml_type,
                                        sums / np.float32(count))
                assert bytes(b.tensor_bytes(name)) == want.tobytes(), name
                if R.uses_imatrix(t.ggml_type):
                    assert bytes(b.tensor_bytes(name)) != bytes(c.tensor_bytes(name)), name
            else:
                assert bytes(b.tensor_bytes(name)) == bytes(c.tensor_bytes(name)), name


def _bad_imatrix(kind, ent):
    ent = dict(ent)
    if kind == "missing":
        del ent["blk.1.attn_k.weight"]
    elif kind == "length":
        sums, count = ent["blk.0.ffn_down.weight"]
        ent["blk.0.ffn_down.weight"] = (sums[:256], count)
    elif kind == "extra":
        ent["blk.7.attn_q.weight"] = ent["blk.0.attn_q.weight"]
    elif kind == "nan":
        sums, count = ent["blk.0.attn_v.weight"]
        ent["blk.0.attn_v.weight"] = (np.where(np.arange(sums.size) == 3, np.nan, sums).astype(np.float32), count)
    return ent


@pytest.mark.parametrize("kind,msg", [
    ("missing", r"im.gguf: no importances for tensor 'blk.1.attn_k.weight'"),
    ("length", r"im.gguf: tensor 'blk.0.ffn_down.weight': 256 importances, the model's tensor has 512"),
    ("extra", r"im.gguf: importances for tensor 'blk.7.attn_q.weight', which the model does not have"),
    ("nan", r"im.gguf: tensor 'blk.0.attn_v.weight': the importances hold a NaN"),
])
def test_an_imatrix_that_does_not_match_is_refused(models, tmp_path, kind, msg):
    write_imatrix(tmp_path / "im.gguf", _bad_imatrix(kind, imatrix_entries(models["clex"])))
    with pytest.raises(ConvertError, match=msg):
        quantize_gguf(models["clex"], tmp_path / "o.gguf", "Q4_K_M", imatrix=tmp_path / "im.gguf", progress=False)
    assert listing(tmp_path) == ["im.gguf"]


def test_files_that_are_not_an_imatrix(models, tmp_path):
    (tmp_path / "t.dat").write_bytes(b"hello, not an importance matrix at all")
    with pytest.raises(ConvertError, match="t.dat: .*not a GGUF or legacy importance-matrix file|t.dat: entry count"):
        load_imatrix(tmp_path / "t.dat")
    with pytest.raises(ConvertError, match="holds no importances"):
        load_imatrix(models["clex"])
    with pytest.raises(ConvertError, match="no such importance-matrix file"):
        load_imatrix(tmp_path / "absent.gguf")


# ---------------------------------------------------------------- the command line

def run_cli(args, capsys):
    from clexrt.cli import main
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().err


def test_cli_writes_the_file(models, tmp_path, capsys):
    from clexrt.cli import main

    out = tmp_path / "o.gguf"
    main(["quantize", str(models["clex"]), str(out), "--type", "q6_k", "--threads", "2", "--no-progress"])
    assert f"wrote {out} (Q6_K," in capsys.readouterr().err and listing(tmp_path) == ["o.gguf"]


@pytest.mark.parametrize("case", ["type", "not-a-model", "not-gguf", "missing-input", "folder", "pure", "same"])
def test_cli_bad_input_is_one_line(models, tmp_path, capsys, case):
    src, out = str(models["clex"]), str(tmp_path / "o.gguf")
    (tmp_path / "text.gguf").write_text("just a text file, not a model\n")
    write_imatrix(tmp_path / "im.gguf", imatrix_entries(models["clex"]))
    args, want = {
        "type": ([src, out, "--type", "Q4_K_X"], "unknown type 'Q4_K_X'; choose one of Q4_0, Q4_1,"),
        "not-a-model": ([str(tmp_path / "im.gguf"), out, "--type", "Q4_0"], "not a model GGUF"),
        "not-gguf": ([str(tmp_path / "text.gguf"), out, "--type", "Q4_0"], "not a GGUF file"),
        "missing-input": ([str(tmp_path / "none.gguf"), out, "--type", "Q4_0"], "no such file"),
        "folder": ([src, str(tmp_path / "no" / "o.gguf"), "--type", "Q4_0"], "output folder does not exist"),
        "pure": ([str(models["narrow"]), out, "--type", "Q6_K", "--pure"], "not a multiple of Q6_K's 256"),
        "same": ([src, src, "--type", "Q6_K"], "would overwrite the input"),
    }[case]
    code, err = run_cli(["quantize"] + args + ["--no-progress"], capsys)
    assert code == 1 and err.startswith("clexrt: error: ") and err.count("\n") == 1, err
    assert want in err and "Traceback" not in err
    assert listing(tmp_path) == ["im.gguf", "text.gguf"]


def test_convert_outtype_is_convert_then_quantize(ckpts, tmp_path):
    """convert --outtype q4_k_m writes the same file (types and bytes of every tensor) as
    converting to f32 and quantizing that to Q4_K_M."""
    folder, _w, f32, _spec = ckpts["plain"]
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    plan = convert_hf(folder, a, outtype="q4_k_m", progress=False)
    assert any("llama-quantize's mixture" in n for n in plan.notes)
    quantize_gguf(f32, b, "Q4_K_M", progress=False)
    with GGUFFile(a) as x, GGUFFile(b) as y:
        validate_model(x)
        assert x.metadata["general.file_type"] == FILE_TYPES["Q4_K_M"]
        assert x.metadata["general.quantization_version"] == 2
        assert {n: t.ggml_type for n, t in x.tensors.items()} == {n: t.ggml_type for n, t in y.tensors.items()}
        assert all(bytes(x.tensor_bytes(n)) == bytes(y.tensor_bytes(n)) for n in x.tensors)
