"""Small GGUF files for tests, built with fixed seeds.

Two writers over the same content:
- make_tiny_llama_gguf(path, **overrides): a tiny LLaMA written with gguf.GGUFWriter (the
  reference writer), for tests that want a file like the converter's;
- build_gguf(kvs, tensors, ...): our own byte-level writer that can also write what GGUFWriter
  refuses (bad versions, duplicate keys, nested arrays, arbitrary offsets), and records where
  each count, length, type id and section boundary sits, so mutation and fuzz tests can hit them.

Content is plain data: kvs is an ordered dict key -> (ValueType, value), where an ARRAY value is
(element ValueType, items) and items of a nested array are again (element ValueType, items);
tensors is an ordered dict name -> numpy array (numpy order, F32/F16 from its dtype) or RawTensor.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from clexrt.gguf.constants import ValueType as VT

F32, F16 = 0, 1
GGUF_ALIGNMENT = 32


@dataclass
class RawTensor:
    """A tensor given as GGUF shape (ne0 first), ggml type id and raw bytes."""
    shape: tuple
    ggml_type: int
    data: bytes


@dataclass
class Field:
    offset: int
    size: int      # 4 or 8 for numbers, 0 for a boundary
    kind: str      # magic, version, tensor_count, kv_count, key_len, value_type, str_len,
                   # array_type, array_len, scalar, n_dims, dim, ggml_type, tensor_offset, boundary
    label: str = ""


@dataclass
class Built:
    data: bytes
    fields: list[Field] = field(default_factory=list)
    data_offset: int = 0

    def boundaries(self) -> list[int]:
        return sorted({f.offset for f in self.fields if f.kind == "boundary"} | {len(self.data)})

    def of_kind(self, *kinds: str) -> list[Field]:
        return [f for f in self.fields if f.kind in kinds]


_FMT = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I",
        VT.INT32: "<i", VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q",
        VT.FLOAT64: "<d"}
_NP = {VT.UINT8: "<u1", VT.INT8: "<i1", VT.UINT16: "<u2", VT.INT16: "<i2", VT.UINT32: "<u4",
       VT.INT32: "<i4", VT.FLOAT32: "<f4", VT.BOOL: "?", VT.UINT64: "<u8", VT.INT64: "<i8",
       VT.FLOAT64: "<f8"}


class _Out:
    def __init__(self):
        self.buf = bytearray()
        self.fields: list[Field] = []

    def num(self, fmt: str, v, kind: str, label: str = "") -> None:
        self.fields.append(Field(len(self.buf), struct.calcsize(fmt), kind, label))
        self.buf += struct.pack(fmt, v)

    def string(self, s, label: str) -> None:
        b = s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")
        self.num("<Q", len(b), "str_len", label)
        self.buf += b

    def mark(self, label: str) -> None:
        self.fields.append(Field(len(self.buf), 0, "boundary", label))

    def value(self, vt: VT, v, label: str) -> None:
        if vt == VT.STRING:
            self.string(v, label)
        elif vt == VT.ARRAY:
            et, items = v
            self.num("<I", int(et), "array_type", label)
            self.num("<Q", len(items), "array_len", label)
            if et in (VT.STRING, VT.ARRAY):
                for it in items:
                    self.value(et, it, label)
            else:
                self.fields.append(Field(len(self.buf), 0, "array_data", label))
                self.buf += np.asarray(items, dtype=_NP[et]).tobytes()
        else:
            self.num(_FMT[vt], v, "scalar", label)


def build_gguf(kvs: dict, tensors: dict, *, version: int = 3, alignment: int = GGUF_ALIGNMENT,
               magic: bytes = b"GGUF", offsets: dict | None = None) -> Built:
    """Serializes kvs and tensors (dicts, or lists of (name, value) pairs to write duplicates).
    Tensor data is laid out in order, each aligned; `offsets` (name -> relative offset)
    overrides the placement recorded in the tensor infos only."""
    kvs = list(kvs.items() if isinstance(kvs, dict) else kvs)
    tensors = list(tensors.items() if isinstance(tensors, dict) else tensors)
    o = _Out()
    o.fields.append(Field(0, 4, "magic"))
    o.buf += magic
    o.num("<I", version, "version")
    o.num("<Q", len(tensors), "tensor_count")
    o.num("<Q", len(kvs), "kv_count")
    o.mark("header end")
    for key, (vt, v) in kvs:
        o.fields.append(Field(len(o.buf), 8, "key_len", key))
        o.buf += struct.pack("<Q", len(key.encode("utf-8", "surrogateescape")))
        o.buf += key.encode("utf-8", "surrogateescape")
        o.num("<I", int(vt), "value_type", key)
        o.value(vt, v, key)
        o.mark(f"end of key {key}")
    blobs, rel = [], 0
    for name, t in tensors:
        if isinstance(t, RawTensor):
            shape, gt, data = tuple(t.shape), t.ggml_type, bytes(t.data)
        else:
            a = np.ascontiguousarray(t)
            gt = {np.dtype("float32"): F32, np.dtype("float16"): F16}[a.dtype]
            shape, data = tuple(reversed(a.shape)), a.astype(a.dtype.newbyteorder("<")).tobytes()
        o.string(name, name)
        o.num("<I", len(shape), "n_dims", name)
        for d in shape:
            o.num("<Q", d, "dim", name)
        o.num("<I", gt, "ggml_type", name)
        rel = -(-rel // alignment) * alignment
        o.num("<Q", (offsets or {}).get(name, rel), "tensor_offset", name)
        blobs.append((rel, data))
        rel += len(data)
        o.mark(f"end of tensor info {name}")
    data_offset = -(-len(o.buf) // alignment) * alignment
    o.buf += b"\0" * (data_offset - len(o.buf))
    o.mark("data start")
    for (r, data), (name, _) in zip(blobs, tensors):
        o.buf += b"\0" * (data_offset + r - len(o.buf))
        o.buf += data
        o.mark(f"end of tensor data {name}")
    return Built(bytes(o.buf), o.fields, data_offset)


# ------------------------------------------------------------------------------------------
# The tiny LLaMA
# ------------------------------------------------------------------------------------------

TINY = dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_vocab=100, n_ctx=256)


@dataclass
class Content:
    kvs: dict
    tensors: dict
    hparams: dict


def tiny_llama_content(*, seed: int = 0, tied: bool = False, rope_freqs: bool = False,
                       clex: bool = False, all_types: bool = False, tokenizer: bool = True,
                       **hp) -> Content:
    """The kvs and tensors of a tiny LLaMA (fixed seed). hp overrides TINY's hyper-parameters.
    Attention matrices and output.weight are F16, everything else F32."""
    unknown = set(hp) - set(TINY)
    if unknown:
        raise TypeError(f"unknown overrides {sorted(unknown)}")
    h = {**TINY, **hp}
    rng = np.random.default_rng(seed)
    n_embd, n_vocab, n_ff = h["n_embd"], h["n_vocab"], h["n_ff"]
    head_dim = n_embd // h["n_head"]
    kv_dim = h["n_head_kv"] * head_dim
    kvs = {
        "general.architecture": (VT.STRING, "llama"),
        "general.name": (VT.STRING, "tiny-llama"),
        "llama.context_length": (VT.UINT32, h["n_ctx"]),
        "llama.embedding_length": (VT.UINT32, n_embd),
        "llama.block_count": (VT.UINT32, h["n_layer"]),
        "llama.feed_forward_length": (VT.UINT32, n_ff),
        "llama.attention.head_count": (VT.UINT32, h["n_head"]),
        "llama.attention.head_count_kv": (VT.UINT32, h["n_head_kv"]),
        "llama.rope.dimension_count": (VT.UINT32, head_dim),
        "llama.rope.freq_base": (VT.FLOAT32, 10000.0),
        "llama.attention.layer_norm_rms_epsilon": (VT.FLOAT32, 1e-5),
        "llama.vocab_size": (VT.UINT32, n_vocab),
        "general.alignment": (VT.UINT32, GGUF_ALIGNMENT),
    }
    if tokenizer:
        tokens = ["<unk>", "<s>", "</s>", "▁", "é", "日本"] + [f"t{i}" for i in range(6, n_vocab)]
        kvs.update({
            "tokenizer.ggml.model": (VT.STRING, "llama"),
            "tokenizer.ggml.tokens": (VT.ARRAY, (VT.STRING, tokens)),
            "tokenizer.ggml.scores": (VT.ARRAY, (VT.FLOAT32,
                                                 [float(-i) for i in range(n_vocab)])),
            "tokenizer.ggml.token_type": (VT.ARRAY, (VT.INT32, [2, 3, 3] + [1] * (n_vocab - 3))),
            "tokenizer.ggml.bos_token_id": (VT.UINT32, 1),
            "tokenizer.ggml.eos_token_id": (VT.UINT32, 2),
            "tokenizer.ggml.unknown_token_id": (VT.UINT32, 0),
            "tokenizer.ggml.add_bos_token": (VT.BOOL, True),
        })
    if clex:
        # the clex.* schema of docs/convert.md (an "ode" network, P = 1, tables on t = 1, 1.5, 2);
        # its own generator, so the weights below do not depend on whether it is there
        crng = np.random.default_rng(seed + 1000)
        hd = head_dim // 2
        inv = (10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)).astype(np.float32)
        grid = [1.0, 1.5, 2.0]
        tables = np.log(inv)[None, :] - 0.1 * np.arange(3)[:, None]

        def f32s(a):
            return (VT.ARRAY, (VT.FLOAT32, [float(x) for x in np.ravel(a).astype(np.float32)]))

        kvs.update({
            "clex.init": (VT.STRING, "ode"),
            "clex.train_length": (VT.UINT32, h["n_ctx"]),
            "clex.max_factor": (VT.UINT32, 2),
            "clex.param_factor": (VT.UINT32, 1),
            "clex.act": (VT.STRING, "tanh"),
            "clex.time_dt": (VT.FLOAT32, 0.01),
            "clex.log_scale": (VT.BOOL, True),
            "clex.inv_freq": f32s(inv),
            "clex.grid": f32s(grid),
            "clex.log_inv_freq": f32s(tables),
            "clex.ode_up_shape": (VT.ARRAY, (VT.UINT32, [hd, 2 * hd])),
            "clex.ode_up": f32s(crng.standard_normal(hd * 2 * hd) * 0.01),
            "clex.ode_down_shape": (VT.ARRAY, (VT.UINT32, [2 * hd, hd])),
            "clex.ode_down": f32s(crng.standard_normal(2 * hd * hd) * 0.01),
        })
    if all_types:
        kvs.update({
            "test.u8": (VT.UINT8, 255), "test.i8": (VT.INT8, -128),
            "test.u16": (VT.UINT16, 65535), "test.i16": (VT.INT16, -32768),
            "test.u32": (VT.UINT32, 2**32 - 1), "test.i32": (VT.INT32, -2**31),
            "test.u64": (VT.UINT64, 2**64 - 1), "test.i64": (VT.INT64, -2**63),
            "test.f32": (VT.FLOAT32, 1.5), "test.f64": (VT.FLOAT64, -2.25e300),
            "test.bool": (VT.BOOL, False), "test.str": (VT.STRING, "héllo\nworld"),
            "test.empty_str": (VT.STRING, ""),
            "test.arr_u16": (VT.ARRAY, (VT.UINT16, [1, 2, 65535])),
            "test.arr_i64": (VT.ARRAY, (VT.INT64, [-1, 2**62])),
            "test.arr_f64": (VT.ARRAY, (VT.FLOAT64, [0.5, -1e-300])),
            "test.arr_bool": (VT.ARRAY, (VT.BOOL, [True, False, True])),
        })

    def w(*shape, dtype=np.float32, scale=0.02):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    def norm():
        return (1.0 + rng.standard_normal(n_embd) * 0.1).astype(np.float32)

    tensors = {"token_embd.weight": w(n_vocab, n_embd)}
    for i in range(h["n_layer"]):
        p = f"blk.{i}."
        tensors.update({
            p + "attn_norm.weight": norm(),
            p + "attn_q.weight": w(n_embd, n_embd, dtype=np.float16),
            p + "attn_k.weight": w(kv_dim, n_embd, dtype=np.float16),
            p + "attn_v.weight": w(kv_dim, n_embd, dtype=np.float16),
            p + "attn_output.weight": w(n_embd, n_embd, dtype=np.float16),
            p + "ffn_norm.weight": norm(),
            p + "ffn_gate.weight": w(n_ff, n_embd),
            p + "ffn_up.weight": w(n_ff, n_embd),
            p + "ffn_down.weight": w(n_embd, n_ff),
        })
    tensors["output_norm.weight"] = norm()
    if not tied:
        tensors["output.weight"] = w(n_vocab, n_embd, dtype=np.float16)
    if rope_freqs:
        tensors["rope_freqs.weight"] = np.ones(head_dim // 2, np.float32)
    return Content(kvs, tensors, h)


def _add_kv_with_writer(writer, key: str, vt: VT, v) -> None:
    import gguf

    if vt == VT.ARRAY:
        et, items = v
        if et == VT.ARRAY:
            raise ValueError("GGUFWriter test content has no nested arrays")
        # GGUFWriter packs each item with the sub_type's format; it wants a list.
        val = list(items) if et == VT.STRING else np.asarray(items, dtype=_NP[et]).tolist()
        writer.add_key_value(key, val, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType(int(et)))
    else:
        writer.add_key_value(key, v, gguf.GGUFValueType(int(vt)))


def write_with_gguf_writer(path, content: Content) -> None:
    """Writes content with gguf.GGUFWriter (general.architecture is the first key it writes)."""
    import gguf

    arch = content.kvs["general.architecture"][1]
    writer = gguf.GGUFWriter(str(path), arch)
    for key, (vt, v) in content.kvs.items():
        if key != "general.architecture":
            _add_kv_with_writer(writer, key, vt, v)
    for name, a in content.tensors.items():
        writer.add_tensor(name, a)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_tiny_llama_gguf(path, **overrides) -> Content:
    """Writes a tiny LLaMA GGUF with gguf.GGUFWriter and returns what was written.
    Overrides: seed, tied, rope_freqs, clex, all_types, tokenizer, and TINY's hyper-parameters
    (n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, n_ctx)."""
    content = tiny_llama_content(**overrides)
    write_with_gguf_writer(path, content)
    return content


def build_tiny_llama(**overrides) -> tuple[Built, Content]:
    """The same tiny LLaMA, serialized with our byte-level writer (field positions known)."""
    content = tiny_llama_content(**overrides)
    return build_gguf(content.kvs, content.tensors), content
