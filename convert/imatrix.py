"""llama.cpp importance-matrix files (llama-imatrix's output), for `clexrt quantize --imatrix`.

Two formats, told apart by the first four bytes (llama.cpp's common/imatrix-loader.cpp tries
GGUF first and falls back to the legacy one):

GGUF (llama-imatrix's default since 2025): keys `imatrix.datasets` (array of strings),
`imatrix.chunk_count`, `imatrix.chunk_size` (u32; llama-quantize insists on all three, we only
report them); per weight matrix NAME two F32 tensors, `NAME.in_sum2` of shape [ne0, n_mat] (the
sums of squared activations seen by each of the ne0 columns, per expert for a stack of n_mat
matrices) and `NAME.counts` of shape [1, n_mat] (how many activations each sum holds). The
importance of column i of matrix j is in_sum2[j, i] / counts[j] (1 where counts[j] is 0).

Legacy .dat: i32 n_entries, then per entry i32 name length, the name, i32 ncall, i32 nval,
nval f32 values; optionally i32 chunk count, i32 dataset-name length, the name. The stored values
are already means times ncall; the importance is value / ncall (the value itself if ncall is 0).

Both normalisations are llama-quantize's (tools/quantize/quantize.cpp, load_imatrix), in float32,
so the importances handed to the quantizers are the ones llama-quantize hands to ggml.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np

from clexrt.errors import ConvertError, GGUFError
from clexrt.gguf.strings import StringArray

SUM_SUFFIX, COUNT_SUFFIX = ".in_sum2", ".counts"
_MAX_NAME = 1 << 16

__all__ = ["ImportanceMatrix", "load_imatrix"]


@dataclass
class ImportanceMatrix:
    path: str
    entries: dict[str, np.ndarray]      # weight name -> importances (n_mat * ne0 float32)
    legacy: bool
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def err(self, msg: str) -> ConvertError:
        return ConvertError(f"{self.path}: {msg}")

    def for_tensor(self, name: str, ncols: int, n_mat: int = 1) -> np.ndarray:
        """The importances of tensor `name` (rows of ncols values, n_mat matrices), checked."""
        imp = self.entries.get(name)
        if imp is None:
            raise self.err(f"no importances for tensor {name!r}: the importance matrix does not "
                           f"match the model")
        if imp.size != ncols * n_mat:
            raise self.err(f"tensor {name!r}: {imp.size} importances, the model's tensor has "
                           f"{ncols * n_mat} columns{'' if n_mat == 1 else f' ({n_mat} x {ncols})'}: "
                           f"the importance matrix does not match the model")
        return imp

    def describe(self) -> str:
        what = "legacy .dat" if self.legacy else "GGUF"
        extra = f", {self.chunk_count} chunks" if self.chunk_count else ""
        if self.datasets:
            extra += f" of {', '.join(self.datasets)}"
        return f"importance matrix {self.path} ({what}, {len(self.entries)} entries{extra})"


def load_imatrix(path) -> ImportanceMatrix:
    """Reads either format; any problem is a one-line ConvertError naming the file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise ConvertError(f"no such importance-matrix file: {path}") from None
    except OSError as e:
        raise ConvertError(f"cannot read {path}: {e.strerror or e}") from None
    im = _load_gguf(path) if head == b"GGUF" else _load_legacy(path)
    if not im.entries:
        raise im.err("holds no importances: not an importance-matrix file")
    for name, v in im.entries.items():
        if not np.isfinite(v).all():
            raise im.err(f"tensor {name!r}: the importances hold a NaN or infinite value")
    return im


def _load_gguf(path: str) -> ImportanceMatrix:
    from clexrt.gguf.reader import GGUFFile

    try:
        g = GGUFFile(path)
    except GGUFError as e:
        raise ConvertError(f"importance matrix: {e}") from None
    try:
        md = g.metadata
        im = ImportanceMatrix(path, {}, legacy=False,
                              datasets=[str(d) for d in md.get("imatrix.datasets", [])]
                              if isinstance(md.get("imatrix.datasets"), (list, StringArray)) else [],
                              chunk_count=_int(md.get("imatrix.chunk_count")),
                              chunk_size=_int(md.get("imatrix.chunk_size")))
        pairs: dict[str, list] = {}
        for tname in g.tensors:
            for suffix, slot in ((SUM_SUFFIX, 0), (COUNT_SUFFIX, 1)):
                if tname.endswith(suffix) and len(tname) > len(suffix):
                    pairs.setdefault(tname[:-len(suffix)], [None, None])[slot] = g.tensors[tname]
        for name, (sums, counts) in pairs.items():
            if sums is None or counts is None:
                raise im.err(f"tensor {name!r}: {SUM_SUFFIX} without {COUNT_SUFFIX} or the other way round")
            if sums.type_name != "F32" or counts.type_name != "F32":
                raise im.err(f"tensor {name!r}: sums and counts must be F32")
            im.entries[name] = _normalise(im, name, np.array(g.tensor_array(sums.name), np.float32).reshape(-1),
                                          np.array(g.tensor_array(counts.name), np.float32).reshape(-1))
        return im
    finally:
        g.close()


def _int(v) -> int:
    try:
        return int(v) if v is not None else 0
    except (TypeError, ValueError):
        return 0


def _normalise(im: ImportanceMatrix, name: str, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """in_sum2 / counts per matrix, in float32 (counts rounded to whole numbers as lround does)."""
    if counts.size == 0 or sums.size % counts.size:
        raise im.err(f"tensor {name!r}: {sums.size} sums do not split into {counts.size} matrices")
    if not np.isfinite(counts).all():
        raise im.err(f"tensor {name!r}: the counts hold a NaN or infinite value")
    c = (np.sign(counts) * np.floor(np.abs(counts.astype(np.float64)) + 0.5)).astype(np.float32)
    per = sums.reshape(counts.size, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(c[:, None] > 0, per / c[:, None], np.float32(1)).astype(np.float32)
    return out.reshape(-1)


def _load_legacy(path: str) -> ImportanceMatrix:
    with open(path, "rb") as f:
        data = f.read()
    im = ImportanceMatrix(path, {}, legacy=True)
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise im.err(f"truncated at byte {len(data)} while reading {what}: not a GGUF or legacy "
                         f"importance-matrix file")
        b = data[pos:pos + n]
        pos += n
        return b

    def i32(what: str) -> int:
        return struct.unpack("<i", take(4, what))[0]

    n_entries = i32("the entry count")
    if n_entries < 1:
        raise im.err(f"entry count {n_entries}: not an importance-matrix file")
    if n_entries * 16 > len(data):
        raise im.err(f"entry count {n_entries} does not fit in {len(data)} bytes: not an importance-matrix file")
    for i in range(n_entries):
        n = i32(f"entry {i + 1}'s name length")
        if not 0 < n <= _MAX_NAME:
            raise im.err(f"entry {i + 1}: name length {n}: not an importance-matrix file")
        try:
            name = take(n, f"entry {i + 1}'s name").decode("utf-8")
        except UnicodeDecodeError:
            raise im.err(f"entry {i + 1}: the name is not UTF-8: not an importance-matrix file") from None
        ncall = i32(f"the call count of {name!r}")
        nval = i32(f"the value count of {name!r}")
        if nval < 1:
            raise im.err(f"tensor {name!r}: {nval} values")
        vals = np.frombuffer(take(4 * nval, f"the values of {name!r}"), "<f4").astype(np.float32)
        im.entries[name] = (vals / np.float32(ncall)).astype(np.float32) if ncall > 0 else vals
    if len(data) - pos >= 4:
        im.chunk_count = i32("the chunk count")
        if len(data) - pos >= 4:
            n = i32("the dataset name length")
            if 0 < n <= len(data) - pos:
                im.datasets.append(take(n, "the dataset name").decode("utf-8", "replace"))
    return im

