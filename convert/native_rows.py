"""Whole tensors converted by the C core, row chunks in threads: dequantized from whatever type
they are stored in (clex_dequantize_row) and quantized with llama-quantize's quantizers
(clex_quantize_rows, an importance matrix optional).

The C calls release the GIL (cffi does for every call), so a thread pool keeps every core busy;
each chunk is about CHUNK_VALUES values, so the float temporaries stay small next to the tensor.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from clexrt.engine.native import check, ffi, lib, physical_cores, type_name
from clexrt.errors import ConvertError

F32_ID = lib.CLEX_TYPE_F32
CHUNK_VALUES = 1 << 18          # values per chunk of rows (1 MiB of float32)


def block_size(type_id: int) -> int:
    return int(lib.clex_type_block_size(type_id))


def row_bytes(type_id: int, n: int) -> int:
    blck, nbytes = block_size(type_id), int(lib.clex_type_block_bytes(type_id))
    if not blck or n % blck:
        raise ConvertError(f"a row of {n} values is not a whole number of {type_name(type_id)} blocks")
    return n // blck * nbytes


def can_dequantize(type_id: int) -> bool:
    """Whether the core converts this type to float32 (every type it runs does)."""
    return lib.clex_dequantize_row(type_id, ffi.NULL, ffi.NULL, 0) == lib.CLEX_OK


def can_quantize(type_id: int) -> bool:
    return lib.clex_quantize_row(type_id, ffi.NULL, ffi.NULL, 0) == lib.CLEX_OK


def uses_imatrix(type_id: int) -> bool:
    """Whether llama-quantize's quantizer for this type reads an importance matrix."""
    return bool(lib.clex_quantize_uses_imatrix(type_id))


def default_threads(n_threads: int | None) -> int:
    if n_threads is None or n_threads <= 0:
        return max(1, physical_cores() or os.cpu_count() or 1)
    return int(n_threads)


def _floats(src, src_type: int, offset: int, n: int, where: str) -> np.ndarray:
    """n values stored as src_type from byte `offset` of src (whole rows), as float32: a view
    for F32, else dequantized by the core."""
    if src_type == F32_ID:
        return np.frombuffer(src, np.float32, count=n, offset=offset)
    out = np.empty(n, np.float32)
    check(lib.clex_dequantize_row(src_type, ffi.from_buffer(src) + offset,
                                  ffi.cast("float *", ffi.from_buffer(out)), n), where=where)
    return out


def _chunks(nrows: int, step: int, per_mat: int):
    """[r0, r1) row ranges of at most step rows that never cross a matrix of a stack (each
    matrix has its own importances)."""
    for m0 in range(0, nrows, per_mat):
        for r in range(m0, m0 + per_mat, step):
            yield r, min(r + step, m0 + per_mat)


def convert_tensor(src, src_type: int, shape: tuple[int, ...], dst_type: int, imatrix: np.ndarray | None = None,
                   n_threads: int | None = None, name: str = "tensor") -> np.ndarray:
    """The bytes of a tensor of GGUF shape (ne0 = row length first) stored as src_type in `src`
    (a buffer: the file's mapping), re-typed to dst_type. imatrix: None, or ne0 importances per
    matrix (ne0 * ne2 for a stack of ne2 matrices, as llama-quantize indexes them)."""
    ncols = int(shape[0])
    nrows = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    per_mat = int(shape[1]) if len(shape) > 2 else nrows     # rows that share one imatrix slice
    where = f"tensor {name!r}"
    src_row, dst_row = row_bytes(src_type, ncols), row_bytes(dst_type, ncols)
    out = np.empty(nrows * dst_row, np.uint8)
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, np.float32)
        if imatrix.size != ncols * (nrows // per_mat):
            raise ConvertError(f"{where}: {imatrix.size} importances for {nrows // per_mat} x {ncols} columns")
    chunks = list(_chunks(nrows, max(1, CHUNK_VALUES // ncols), per_mat))

    def job(r0: int, r1: int) -> None:
        x = _floats(src, src_type, r0 * src_row, (r1 - r0) * ncols, where)
        imp = ffi.NULL
        if imatrix is not None:
            m = r0 // per_mat
            imp = ffi.cast("float *", ffi.from_buffer(imatrix[m * ncols:(m + 1) * ncols]))
        dst = ffi.from_buffer(out)
        check(lib.clex_quantize_rows(dst_type, ffi.cast("float *", ffi.from_buffer(x)), dst + r0 * dst_row,
                                     ncols, r1 - r0, imp), where=where)

    n_threads = min(default_threads(n_threads), len(chunks))
    if n_threads <= 1:
        for r0, r1 in chunks:
            job(r0, r1)
        return out
    pool = ThreadPoolExecutor(n_threads, thread_name_prefix="clexrt-quantize")
    try:
        for f in [pool.submit(job, r0, r1) for r0, r1 in chunks]:
            f.result()
    finally:
        # on an error or Ctrl-C: drop the chunks not started, wait for those running (they
        # read the input mapping, which must outlive them)
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def quantize_array(a: np.ndarray, dst_type: int, n_threads: int | None = None, name: str = "tensor") -> np.ndarray:
    """float32 data in numpy order (last axis = rows) -> bytes [rows, row bytes] in dst_type."""
    a = np.ascontiguousarray(a, np.float32)
    shape = a.shape[::-1] if a.ndim else (1,)
    out = convert_tensor(a.reshape(-1), F32_ID, shape, dst_type, n_threads=n_threads, name=name)
    return out.reshape(-1, row_bytes(dst_type, shape[0]))
