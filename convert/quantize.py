"""numpy quantizers, bit-identical to the C core's reference quantizers (clex_quantize_row).

Every step is float32 arithmetic in the C code's order; the places where numpy's defaults would
differ from C are marked (np.round rounds half to even, C's roundf rounds half away from zero;
a float-to-int8 cast truncates toward zero). Block layouts are GGUF's (native/include/quant.h):

    Q8_0 {fp16 d; int8 qs[32]}            x = d * q
    Q4_0 {fp16 d; uint8 qs[16]}           x = d * (q - 8),  qs[j] = q[j] | q[j+16] << 4
    Q4_1 {fp16 d; fp16 m; uint8 qs[16]}   x = d * q + m,    same nibbles
"""
from __future__ import annotations

import numpy as np

from clexrt.engine.native import lib

F32 = np.float32

# GGML type ids and block sizes come from the compiled core (native/include/quant.h)
F32_ID, F16_ID, BF16_ID = lib.CLEX_TYPE_F32, lib.CLEX_TYPE_F16, lib.CLEX_TYPE_BF16
Q4_0_ID, Q4_1_ID, Q8_0_ID = lib.CLEX_TYPE_Q4_0, lib.CLEX_TYPE_Q4_1, lib.CLEX_TYPE_Q8_0
TYPE_IDS = {"f32": F32_ID, "f16": F16_ID, "bf16": BF16_ID, "q8_0": Q8_0_ID, "q4_0": Q4_0_ID, "q4_1": Q4_1_ID}
BLOCK_TYPES = {Q8_0_ID, Q4_0_ID, Q4_1_ID}
QK = int(lib.clex_type_block_size(Q8_0_ID))      # 32 values per block in each of them


def row_bytes(type_id: int, n: int) -> int:
    """Bytes of a row of n values of this type."""
    blck, nbytes = int(lib.clex_type_block_size(type_id)), int(lib.clex_type_block_bytes(type_id))
    if not blck:
        raise ValueError(f"unknown GGML type {type_id}")
    if n % blck:
        raise ValueError(f"row length {n} is not a multiple of {blck}")
    return n // blck * nbytes


def _fp16_bits(x: np.ndarray) -> np.ndarray:
    # numpy's float32 -> float16 cast rounds to nearest even, like the C core's conversion
    with np.errstate(over="ignore"):
        return np.asarray(x, F32).astype(np.float16).view(np.uint16)


def _blocks(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=F32)
    if x.shape[-1] % QK:
        raise ValueError(f"row length {x.shape[-1]} is not a multiple of {QK}")
    return x.reshape(-1, QK)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d != 0, F32(1) / d, F32(0)).astype(F32)


def _nibbles(v: np.ndarray) -> np.ndarray:
    """min(15, (int8_t)v) packed two to a byte, in C's order: the cast comes first (truncation
    toward zero; an out-of-range value, which only a block of subnormals whose 1/d overflows can
    produce, converts as the platform's C cast does, numpy's cast being that same C cast), then
    the clamp, then the uint8 arithmetic of `qa | (qb << 4)`."""
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.minimum(v.astype(np.int8), np.int8(15)).view(np.uint8)
    return q[:, : QK // 2] | (q[:, QK // 2:] << 4)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    b = _blocks(x)
    amax = np.abs(b).max(axis=1)
    d = (amax / F32(127)).astype(F32)
    with np.errstate(invalid="ignore", over="ignore"):
        v = b * _inverse(d)[:, None]
        # roundf: half away from zero (np.round would send 2.5 to 2)
        r = np.trunc(v)
        r += np.where(np.abs(v - r) >= F32(0.5), np.sign(v), F32(0))
        q = r.astype(np.int8)
    out = np.empty((b.shape[0], 34), np.uint8)
    out[:, :2] = _fp16_bits(d)[:, None].view(np.uint8)
    out[:, 2:] = q.view(np.uint8)
    return out


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    b = _blocks(x)
    # the element of largest magnitude, with its sign; the first one on ties (C's strict '<')
    m = b[np.arange(b.shape[0]), np.abs(b).argmax(axis=1)]
    d = (m / F32(-8)).astype(F32)
    with np.errstate(invalid="ignore", over="ignore"):
        v = b * _inverse(d)[:, None] + F32(8.5)
    out = np.empty((b.shape[0], 18), np.uint8)
    out[:, :2] = _fp16_bits(d)[:, None].view(np.uint8)
    out[:, 2:] = _nibbles(v)
    return out


def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    b = _blocks(x)
    lo = b.min(axis=1)
    hi = b.max(axis=1)
    d = ((hi - lo) / F32(15)).astype(F32)
    with np.errstate(invalid="ignore", over="ignore"):
        v = (b - lo[:, None]) * _inverse(d)[:, None] + F32(0.5)
    out = np.empty((b.shape[0], 20), np.uint8)
    out[:, 0:2] = _fp16_bits(d)[:, None].view(np.uint8)
    out[:, 2:4] = _fp16_bits(lo)[:, None].view(np.uint8)
    out[:, 4:] = _nibbles(v)
    return out


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits: round to nearest even on the top 16 bits; NaN stays a quiet NaN."""
    u = np.ascontiguousarray(x, dtype=F32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16
    return np.where(nan, (u >> 16) | 64, rounded).astype(np.uint16)


def quantize(x: np.ndarray, type_id: int) -> np.ndarray:
    """The bytes of x (float32, last axis = rows) in the given GGML type, shaped [rows, row_bytes]
    for block types and as the same shape for float types (f32, f16 as float16, bf16 as uint16)."""
    x = np.ascontiguousarray(x, dtype=F32)
    if type_id == F32_ID:
        return x
    if type_id == F16_ID:
        with np.errstate(over="ignore"):
            return x.astype(np.float16)
    if type_id == BF16_ID:
        return to_bf16(x)
    fn = {Q8_0_ID: quantize_q8_0, Q4_0_ID: quantize_q4_0, Q4_1_ID: quantize_q4_1}.get(type_id)
    if fn is None:
        raise ValueError(f"cannot quantize to GGML type {type_id}")
    rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    return fn(rows).reshape(rows.shape[0], row_bytes(type_id, x.shape[-1]))


def dequantize(data: np.ndarray, type_id: int, n: int) -> np.ndarray:
    """float32 values of n elements stored as `data` (bytes) in the given type: for tests and plans."""
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if type_id == F32_ID:
        return raw.view(F32)[:n].copy()
    if type_id == F16_ID:
        return raw.view(np.float16)[:n].astype(F32)
    if type_id == BF16_ID:
        return (raw.view(np.uint16)[:n].astype(np.uint32) << 16).view(F32)
    nb = n // QK
    if type_id == Q8_0_ID:
        blk = raw[: nb * 34].reshape(nb, 34)
        d = blk[:, :2].copy().view(np.float16).astype(F32)
        return (d * blk[:, 2:].view(np.int8).astype(F32)).reshape(-1)
    blk = raw[: row_bytes(type_id, nb * QK)].reshape(nb, -1)
    d = blk[:, :2].copy().view(np.float16).astype(F32)
    qs = blk[:, -16:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(F32)
    if type_id == Q4_0_ID:
        return (d * (q - F32(8))).reshape(-1)
    if type_id == Q4_1_ID:
        m = blk[:, 2:4].copy().view(np.float16).astype(F32)
        return (d * q + m).reshape(-1)
    raise ValueError(f"cannot dequantize GGML type {type_id}")
