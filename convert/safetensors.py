"""A small, validating safetensors reader: tensors are mapped lazily and read one at a time.

File layout: u64 little-endian header length N, N bytes of JSON header, then the data section.
The header maps each name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
to the data section) plus an optional "__metadata__" of strings. Everything is checked before a
byte of data is touched: the header lies inside the file, offsets inside the data section, and
each tensor's byte size equals prod(shape) * itemsize.
"""
from __future__ import annotations

import json
import math
import mmap
import os
from dataclasses import dataclass

import numpy as np

from clexrt.errors import ConvertError

# the dtypes a LLaMA checkpoint's weights come in; bf16 is read as raw uint16
DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
_OTHER_SIZES = {"F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str          # safetensors' name: F32, F16, BF16 (others are listed, but not readable)
    shape: tuple[int, ...]
    begin: int          # absolute offsets in the file
    end: int
    path: str


class SafetensorsFile:
    """The header of one .safetensors file; `read(name)` maps just that tensor."""

    def __init__(self, path: str):
        self.path = path
        shown = os.path.basename(path)
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ConvertError(f"{shown}: not a safetensors file (shorter than 8 bytes)")
                n = int.from_bytes(head, "little")
                if n < 2 or n > size - 8 or n > MAX_HEADER:
                    raise ConvertError(f"{shown}: corrupt safetensors header: header length {n} "
                                       f"does not fit in the {size}-byte file")
                raw = f.read(n)
        except OSError as e:
            raise ConvertError(f"{shown}: cannot read: {e.strerror or e}") from None
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConvertError(f"{shown}: corrupt safetensors header: not JSON ({e.__class__.__name__})") from None
        if not isinstance(header, dict):
            raise ConvertError(f"{shown}: corrupt safetensors header: not a JSON object")
        data_start, data_size = 8 + n, size - 8 - n
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries: dict[str, Entry] = {}
        for name, e in header.items():
            self.entries[name] = self._entry(shown, name, e, data_start, data_size)

    def _entry(self, shown, name, e, data_start, data_size) -> Entry:
        bad = f"{shown}: corrupt safetensors header: tensor {name!r}"
        if not isinstance(e, dict):
            raise ConvertError(f"{bad} is not an object")
        dtype, shape, offs = e.get("dtype"), e.get("shape"), e.get("data_offsets")
        if not isinstance(dtype, str):
            raise ConvertError(f"{bad} has no dtype")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise ConvertError(f"{bad} has an invalid shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise ConvertError(f"{bad} has invalid data_offsets {offs!r}")
        begin, end = offs
        if not 0 <= begin <= end <= data_size:
            raise ConvertError(f"{bad} has data_offsets [{begin}, {end}] outside the "
                               f"{data_size}-byte data section")
        itemsize = DTYPES[dtype].itemsize if dtype in DTYPES else _OTHER_SIZES.get(dtype)
        if itemsize is None:
            raise ConvertError(f"{bad} has unknown dtype {dtype!r}")
        want = math.prod(shape) * itemsize          # Python ints: a hostile shape cannot overflow
        if end - begin != want:
            raise ConvertError(f"{bad}: {end - begin} bytes of data for shape {shape} of {dtype} "
                               f"({want} bytes)")
        return Entry(name, dtype, tuple(shape), data_start + begin, data_start + end, self.path)


def read_entry(e: Entry) -> np.ndarray:
    """The tensor as float32 (a fresh array: the map is released before returning)."""
    if e.dtype not in DTYPES:
        raise ConvertError(f"{os.path.basename(e.path)}: tensor {e.name!r} has dtype {e.dtype}; "
                           f"supported: {', '.join(DTYPES)}")
    dt = DTYPES[e.dtype]
    count = (e.end - e.begin) // dt.itemsize
    try:
        with open(e.path, "rb") as f:
            if count == 0:
                return np.zeros(e.shape, np.float32)
            # map the page-aligned window holding this tensor only
            start = e.begin - e.begin % mmap.ALLOCATIONGRANULARITY
            with mmap.mmap(f.fileno(), e.end - start, access=mmap.ACCESS_READ, offset=start) as mm:
                a = np.frombuffer(mm, dtype=dt, count=count, offset=e.begin - start)
                if e.dtype == "BF16":
                    out = a.astype(np.uint32)
                    out <<= 16
                    out = out.view(np.float32)
                else:
                    out = a.astype(np.float32)       # a copy in every case
                del a
    except (OSError, ValueError) as err:
        raise ConvertError(f"{os.path.basename(e.path)}: cannot read tensor {e.name!r}: {err}") from None
    return out.reshape(e.shape)


def write_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Writes float32/float16 numpy arrays (and bf16 given as ("BF16", uint16 array)) as a
    safetensors file. For tests and tools: the converter itself only reads."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        if isinstance(t, tuple):
            dtype, arr = t
        else:
            arr = np.asarray(t)
            dtype = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}[arr.dtype]
        b = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for b in blobs:
            f.write(b)
