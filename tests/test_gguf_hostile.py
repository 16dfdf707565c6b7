"""clexrt.gguf.reader against hostile bytes: every count, length, type id and geometry rule of
the format, each a one-line GGUFError naming the file (and the key or tensor)."""
import struct

import numpy as np
import pytest

from clexrt.errors import GGUFError
from clexrt.gguf.constants import ValueType as VT
from clexrt.gguf.reader import MAX_ALIGNMENT, GGUFFile
from ggufgen import F32, RawTensor, build_gguf, build_tiny_llama
from test_gguf_reader import expect_error, field, poke, write

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
