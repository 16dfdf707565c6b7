"""A validating, memory-mapped GGUF reader.

GGUF files come from strangers, so this parser trusts nothing it reads: every count and length is
checked against the bytes that are actually left in the file *before* anything is allocated or
looped over, nesting is bounded, type ids must be known, and tensor geometry (dims, 64-bit
products, block multiples, alignment, bounds, overlap) is checked before a single pointer can
reach the C core. Every failure is a one-line :class:`GGUFError` naming the file and the key or
tensor; no other exception escapes on malformed input.

Layout (little-endian, versions 2 and 3; v1 used 32-bit counts and is not supported)::

    "GGUF" u32 version  u64 tensor_count  u64 kv_count
    kv_count  x { str key, u32 value_type, value }
    tensor_count x { str name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
    padding to `general.alignment` (default 32)
    data section: tensor bytes at data_offset + offset
    str = u64 length + bytes;  array = u32 elem_type, u64 count, elements

Only the standard library and numpy are used (not the gguf package: importing it costs ~5 MiB of
resident memory, and its reader checks none of the above).
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import GGUFError
from .constants import _SCALAR, _SCALAR_STRUCT, FILE_TYPES, GGML_TYPES, TYPE_F16, TYPE_F32, ValueType
from .strings import StringArray

__all__ = ["GGUFFile", "TensorInfo", "ValueType", "GGML_TYPES", "FILE_TYPES", "read_metadata", "MAX_ALIGNMENT",
           "MAX_ARRAY_DEPTH"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# Largest `general.alignment` we accept. Real files use 32 (ggml's default) or a page size;
# 64 KiB covers every page size in use, and anything larger only wastes the file or hides junk.
MAX_ALIGNMENT = 1 << 16
# Arrays may hold arrays, but those may not hold arrays again: enough for every known writer,
# and it keeps the parser free of unbounded recursion.
MAX_ARRAY_DEPTH = 2
MAX_DIMS = 4
# Keys and tensor names longer than this are certainly hostile (ggml itself caps names at 64).
MAX_NAME_LEN = 1 << 16
_I64_LIMIT = 1 << 63



_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# Smallest possible encodings, used to bound counts by the bytes left in the file.
_MIN_KV_BYTES = 8 + 1 + 4 + 1          # key length, 1-byte key, value type, 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8   # name length, 1-byte name, n_dims, ne0, type, offset
_MIN_ARRAY_BYTES = 4 + 8               # element type + count (an empty array)
_MIN_STRING_BYTES = 8                  # an empty string

_HEADER_BYTES = 4 + 4 + 8 + 8


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's geometry. `shape` is in GGUF order (ne0, the row length, first);
    `offset` is absolute in the file."""
    name: str
    ggml_type: int
    type_name: str
    shape: tuple[int, ...]
    n_elements: int
    offset: int
    nbytes: int


def _one_line(s: str) -> str:
    return s.replace("\r", "\\r").replace("\n", "\\n")


def _q(name: str, limit: int = 120) -> str:
    """A name as it appears in messages: quoted, escaped, shortened."""
    r = repr(name)
    return r if len(r) <= limit else r[:limit - 4] + "...'"


def _type_name(t: int) -> str:
    return GGML_TYPES[t][0] if t in GGML_TYPES else f"type{t}"


def _value_type_name(t: int) -> str:
    try:
        return ValueType(t).name
    except ValueError:
        return f"type {t}"


class _Parser:
    """Reads the header, key/values and tensor infos of a GGUF held in a buffer.

    Every read is bounds-checked against `size`; callers see only GGUFError."""

    def __init__(self, buf, size: int, path: str):
        self.buf = buf
        self.size = size
        self.path = path
        self.pos = 0
        self.what = "header"   # what is being read, for truncation messages

    # -- primitives --------------------------------------------------------------------------
    def err(self, msg: str) -> GGUFError:
        return GGUFError(_one_line(f"{self.path}: {msg}"))

    def need(self, n: int) -> None:
        if n > self.size - self.pos:
            raise self.err(f"truncated at byte {self.size} while reading {self.what}: {n} bytes "
                           f"needed at byte {self.pos}, {self.size - self.pos} left")

    def u32(self) -> int:
        self.need(4)
        v = _U32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def u64(self) -> int:
        self.need(8)
        v = _U64.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return v

    def string(self, max_len: int | None = None) -> str:
        n = self.u64()
        if max_len is not None and n > max_len:
            raise self.err(f"{self.what}: string length {n} exceeds the limit of {max_len}")
        self.need(n)
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", "surrogateescape")
        self.pos += n
        return s

    def strings(self, count: int) -> StringArray:
        """`count` strings, kept as one copy of their bytes (see strings.py)."""
        base = self.pos + 8   # the first string's bytes
        start = [0] * (count + 1)
        unpack, buf = _U64.unpack_from, self.buf
        for i in range(count):
            self.need(8)
            n = unpack(buf, self.pos)[0]
            self.pos += 8
            self.need(n)
            start[i] = self.pos - base
            self.pos += n
        start[count] = self.pos - base + 8
        data = bytes(buf[base:self.pos]) if count else b""
        return StringArray(data, np.array(start, dtype=np.uint32 if self.pos - base < 1 << 31 else np.int64), 8)

    def remaining(self) -> int:
        return self.size - self.pos

    # -- values ------------------------------------------------------------------------------
    def value_type(self, where: str) -> ValueType:
        t = self.u32()
        try:
            return ValueType(t)
        except ValueError:
            raise self.err(f"{where}: unknown value type id {t}") from None

    def scalar(self, vt: ValueType, where: str):
        if vt is ValueType.STRING:
            return self.string()
        st = _SCALAR_STRUCT[vt]
        self.need(st.size)
        v = st.unpack_from(self.buf, self.pos)[0]
        self.pos += st.size
        if vt is ValueType.BOOL:
            if v > 1:
                raise self.err(f"{where}: bool value {v} is neither 0 nor 1")
            return bool(v)
        return v

    def array(self, where: str, depth: int):
        """Returns (value, type tuple). `depth` is the nesting level of this array (1 = top)."""
        et = self.value_type(where)
        count = self.u64()
        if et is ValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self.err(f"{where}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels")
            self._bound_count(count, _MIN_ARRAY_BYTES, where)
            items, inner = [], set()
            for _ in range(count):
                v, t = self.array(where, depth + 1)
                items.append(v)
                inner.add(t[1])
            types = (ValueType.ARRAY, ValueType.ARRAY) + ((inner.pop(),) if len(inner) == 1 else ())
            return items, types
        if et is ValueType.STRING:
            self._bound_count(count, _MIN_STRING_BYTES, where)
            return self.strings(count), (ValueType.ARRAY, et)
        dt = _SCALAR[et][1]
        self._bound_count(count, dt.itemsize, where)
        nbytes = count * dt.itemsize
        # A copy, not a view: small, and it lets close() release the map while metadata lives on.
        arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
        if et is ValueType.BOOL and count and arr.view(np.uint8).max() > 1:
            raise self.err(f"{where}: bool array holds a value that is neither 0 nor 1")
        arr.setflags(write=False)
        self.pos += nbytes
        return arr, (ValueType.ARRAY, et)

    def _bound_count(self, count: int, min_each: int, where: str) -> None:
        if count * min_each > self.remaining():
            raise self.err(f"{where}: array length {count} needs at least {count * min_each} bytes, "
                           f"only {self.remaining()} left (truncated at byte {self.size}, or a "
                           f"corrupt length)")

    # -- sections ----------------------------------------------------------------------------
    def header(self) -> tuple[int, int, int]:
        self.what = "the header"
        if self.size < 4 or bytes(self.buf[0:4]) != GGUF_MAGIC:
            head = bytes(self.buf[0:min(4, self.size)])
            raise self.err(f"not a GGUF file (magic {head!r}, expected b'GGUF')")
        self.pos = 4
        version = self.u32()
        if version not in SUPPORTED_VERSIONS:
            if version == 1:
                raise self.err("GGUF version 1 is not supported (only versions 2 and 3)")
            if version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
                raise self.err("big-endian GGUF files are not supported")
            raise self.err(f"unsupported GGUF version {version} (only versions 2 and 3)")
        n_tensors = self.u64()
        n_kv = self.u64()
        left = self.remaining()
        for name, need in (("kv_count", n_kv * _MIN_KV_BYTES),
                           ("tensor_count", n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES)):
            if need > left:
                count = n_kv if name == "kv_count" else n_tensors
                raise self.err(f"{name} {count} needs at least {need} bytes after the header, only "
                               f"{left} follow (truncated at byte {self.size}, or a corrupt count)")
        return version, n_tensors, n_kv

    def metadata(self, n_kv: int) -> tuple[dict, dict]:
        values, types = {}, {}
        for i in range(n_kv):
            self.what = f"key #{i}"
            key = self.string(MAX_NAME_LEN)
            if not key:
                raise self.err(f"key #{i} is empty")
            where = f"key {_q(key)}"
            if key in values:
                raise self.err(f"{where}: duplicate key")
            self.what = f"the value of {where}"
            vt = self.value_type(where)
            if vt is ValueType.ARRAY:
                v, t = self.array(where, 1)
            else:
                v, t = self.scalar(vt, where), (vt,)
            values[key] = v
            types[key] = t
        return values, types

    def tensor_infos(self, n_tensors: int) -> list[tuple[str, int, tuple[int, ...], int]]:
        infos, seen = [], set()
        for i in range(n_tensors):
            self.what = f"tensor info #{i}"
            name = self.string(MAX_NAME_LEN)
            if not name:
                raise self.err(f"tensor #{i} has an empty name")
            where = f"tensor {_q(name)}"
            if name in seen:
                raise self.err(f"{where}: duplicate tensor name")
            seen.add(name)
            self.what = f"the info of {where}"
            n_dims = self.u32()
            if not 1 <= n_dims <= MAX_DIMS:
                raise self.err(f"{where}: n_dims {n_dims} not in 1..{MAX_DIMS}")
            shape = tuple(self.u64() for _ in range(n_dims))
            ggml_type = self.u32()
            rel = self.u64()
            infos.append((name, ggml_type, shape, rel))
        return infos


def _check_tensor(p: _Parser, name: str, ggml_type: int, shape: tuple[int, ...], rel: int,
                  data_offset: int, alignment: int) -> TensorInfo:
    where = f"tensor {_q(name)}"
    if ggml_type not in GGML_TYPES:
        raise p.err(f"{where}: unknown ggml type id {ggml_type}")
    type_name = _type_name(ggml_type)
    _, block, type_size = GGML_TYPES[ggml_type]
    n = 1
    for i, d in enumerate(shape):
        if d == 0:
            raise p.err(f"{where}: dimension {i} is 0")
        n *= d
        if n >= _I64_LIMIT:
            raise p.err(f"{where}: shape {list(shape)} overflows a 64-bit element count")
    if shape[0] % block:
        raise p.err(f"{where}: row length {shape[0]} is not a multiple of the {type_name} block "
                    f"size {block}")
    nbytes = n // block * type_size
    if nbytes >= _I64_LIMIT:
        raise p.err(f"{where}: byte size of shape {list(shape)} overflows 64 bits")
    if rel % alignment:
        raise p.err(f"{where}: data offset {rel} is not a multiple of the alignment {alignment}")
    start = data_offset + rel
    if start > p.size or nbytes > p.size - start:
        raise p.err(f"{where}: data [{start}, {start + nbytes}) lies outside the file "
                    f"(truncated at byte {p.size}?)")
    return TensorInfo(name, ggml_type, type_name, shape, n, start, nbytes)


def _check_alignment(p: _Parser, metadata: dict, types: dict) -> int:
    if "general.alignment" not in metadata:
        return DEFAULT_ALIGNMENT
    t = types["general.alignment"]
    a = metadata["general.alignment"]
    if t != (ValueType.UINT32,):
        raise p.err(f"key 'general.alignment': type {_value_type_name(t[0])}, expected UINT32")
    if not 1 <= a <= MAX_ALIGNMENT or a & (a - 1):
        raise p.err(f"key 'general.alignment': {a} is not a power of two in 1..{MAX_ALIGNMENT}")
    return a


def _parse(buf, size: int, path: str, with_tensors: bool = True):
    """Parses everything but tensor data. Returns (version, metadata, types, alignment,
    data_offset, tensors). Any failure is a GGUFError."""
    p = _Parser(buf, size, path)
    try:
        version, n_tensors, n_kv = p.header()
        metadata, types = p.metadata(n_kv)
        alignment = _check_alignment(p, metadata, types)
        tensors: dict[str, TensorInfo] = {}
        data_offset = 0
        if with_tensors:
            raw = p.tensor_infos(n_tensors)
            data_offset = -(-p.pos // alignment) * alignment
            for name, ggml_type, shape, rel in raw:
                tensors[name] = _check_tensor(p, name, ggml_type, shape, rel, data_offset, alignment)
            _check_overlap(p, tensors)
    except GGUFError:
        raise
    except (struct.error, UnicodeError, ValueError, OverflowError, MemoryError, IndexError,
            TypeError, KeyError, RecursionError) as e:
        # Nothing above should get here; if it does, it is still a malformed file, not a crash.
        raise GGUFError(_one_line(f"{path}: malformed GGUF while reading {p.what} at byte {p.pos}: "
                                  f"{type(e).__name__}: {e}")) from e
    return version, metadata, types, alignment, data_offset, tensors


def _check_overlap(p: _Parser, tensors: dict[str, TensorInfo]) -> None:
    prev = None
    for t in sorted(tensors.values(), key=lambda t: (t.offset, t.nbytes)):
        if prev is not None and t.offset < prev.offset + prev.nbytes:
            raise p.err(f"tensor {_q(t.name)}: data at byte {t.offset} overlaps tensor "
                        f"{_q(prev.name)} [{prev.offset}, {prev.offset + prev.nbytes})")
        prev = t


def _open_map(path) -> tuple[str, mmap.mmap | None, int]:
    spath = os.fspath(path)
    if isinstance(spath, bytes):
        spath = os.fsdecode(spath)
    shown = _one_line(spath)
    try:
        with open(spath, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER_BYTES:
                raise GGUFError(f"{shown}: truncated at byte {size}: a GGUF header needs "
                                f"{_HEADER_BYTES} bytes")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise GGUFError(_one_line(f"{shown}: cannot open: {e.strerror or e}")) from e
    except (ValueError, OverflowError) as e:   # e.g. a file too large to map on this platform
        raise GGUFError(_one_line(f"{shown}: cannot map: {e}")) from e
    return shown, mm, size


class GGUFFile:
    """A GGUF file, validated and mapped read-only.

    Attributes: path, version, alignment, data_offset, file_size, metadata (key -> value, in file
    order), metadata_types (key -> tuple of ValueType, e.g. (ARRAY, STRING)), tensors (name ->
    TensorInfo, in file order). Numeric metadata arrays are read-only numpy copies; string arrays
    are lists of str. Tensor data stays in the map: tensor_bytes/tensor_array are zero-copy.
    """

    def __init__(self, path):
        shown, mm, size = _open_map(path)
        try:
            self._load(shown, mm, size)
        except BaseException:
            mm.close()
            self._mm = None
            raise

    @classmethod
    def from_bytes(cls, data, name: str = "<memory>") -> "GGUFFile":
        """Parses a GGUF held in memory (bytes or any contiguous buffer), with the same checks;
        `buffer` is then a read-only memoryview of it. For fuzzing and for in-memory files."""
        self = cls.__new__(cls)
        mv = memoryview(data)
        if mv.ndim != 1 or mv.format != "B":
            mv = mv.cast("B")
        mv = mv.toreadonly()
        self._load(_one_line(str(name)), mv, mv.nbytes)
        return self

    def _load(self, shown: str, buf, size: int) -> None:
        self.path, self._mm, self.file_size = shown, buf, size
        (self.version, self.metadata, self.metadata_types, self.alignment, self.data_offset,
         self.tensors) = _parse(buf, size, shown)

    # -- metadata ----------------------------------------------------------------------------
    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    @property
    def arch(self):
        return self.metadata.get("general.architecture")

    # -- tensor data -------------------------------------------------------------------------
    @property
    def buffer(self) -> mmap.mmap:
        """The read-only map of the whole file (for cffi's ffi.from_buffer); a read-only
        memoryview for from_bytes."""
        if self._mm is None:
            raise GGUFError(f"{self.path}: file is closed")
        return self._mm

    def tensor_info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {_q(name)}") from None

    def tensor_bytes(self, name: str) -> memoryview:
        """The tensor's bytes as a read-only memoryview into the map (no copy)."""
        t = self.tensor_info(name)
        return memoryview(self.buffer)[t.offset:t.offset + t.nbytes]

    def tensor_array(self, name: str) -> np.ndarray:
        """A read-only numpy view: F32/F16 as float32/float16 in numpy order (shape reversed,
        e.g. (ne1, ne0)); any other type as its raw bytes (uint8, 1-D)."""
        t = self.tensor_info(name)
        if t.ggml_type in (TYPE_F32, TYPE_F16):
            dt = np.dtype("<f4") if t.ggml_type == TYPE_F32 else np.dtype("<f2")
            a = np.frombuffer(self.buffer, dtype=dt, count=t.n_elements, offset=t.offset)
            return a.reshape(t.shape[::-1])
        return np.frombuffer(self.buffer, dtype=np.uint8, count=t.nbytes, offset=t.offset)

    # -- model-level checks ------------------------------------------------------------------
    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Releases the map. Views handed out earlier (tensor_array, tensor_bytes, cffi
        pointers) keep it alive until they are gone: then it is unmapped by the GC."""
        mm, self._mm = self._mm, None
        if isinstance(mm, mmap.mmap):
            try:
                mm.close()
            except BufferError:
                pass

    @property
    def closed(self) -> bool:
        return self._mm is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"GGUFFile({self.path!r}, version={self.version}, arch={self.arch!r}, "
                f"{len(self.metadata)} keys, {len(self.tensors)} tensors)")


def read_metadata(path) -> dict[str, object]:
    """Reads and validates only the header and the key/values (no tensor infos or data): what
    a vocabulary-only GGUF holds. Same value conventions as GGUFFile.metadata."""
    shown, mm, size = _open_map(path)
    try:
        return _parse(mm, size, shown, with_tensors=False)[1]
    finally:
        mm.close()


# ------------------------------------------------------------------------------------------
