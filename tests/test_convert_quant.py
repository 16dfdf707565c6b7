"""convert's numpy quantizers: bit-identical to the C core's reference quantizers, and sane."""
import numpy as np
import pytest

from clexrt.convert import quantize as Q

F32 = np.float32
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]


def nasty_rows(seed=0):
    """Rows that hit every rounding corner: exact .5 ties after scaling, ties for the largest
    magnitude with both signs, zero blocks, constant blocks, subnormals, huge values."""
    rng = np.random.default_rng(seed)
    rows = [rng.standard_normal(256).astype(F32),
            (rng.standard_normal(256) * 1e-3).astype(F32),
            rng.uniform(-1, 1, 256).astype(F32) * F32(1e4)]
    ties = np.arange(-16, 16, dtype=F32) * F32(0.5)          # k/2 * (127/8): scaled values hit .5
    rows.append(np.concatenate([ties * F32(127 / 16), ties, ties / F32(8), np.full(32, 0.5, F32),
                                np.zeros(32, F32), np.full(32, -3.0, F32),
                                np.r_[F32(-2), F32(2), np.ones(30, F32)],      # |max| tie, negative first
                                np.r_[F32(2), F32(-2), np.ones(30, F32)]]).astype(F32))
    rows.append(np.concatenate([np.full(32, 1e-42, F32), (rng.standard_normal(32) * 1e-39).astype(F32),
                                (rng.standard_normal(32) * 6e4).astype(F32), np.full(32, 7e6, F32),
                                np.linspace(-1, 1, 32, dtype=F32), np.linspace(0, 15, 32, dtype=F32),
                                np.linspace(-8, 7, 32, dtype=F32), np.arange(32, dtype=F32) * F32(1 / 15)]))
    return rows


def test_known_values():
    x = np.zeros(32, F32)
    x[0], x[1], x[2] = 127.0, 0.5, -0.5          # d = 1: roundf(0.5) = 1, roundf(-0.5) = -1
    b = Q.quantize_q8_0(x)[0]
    assert b[:2].view(np.float16)[0] == 1.0
    assert list(b[2:5].view(np.int8)) == [127, 1, -1]
    x = np.zeros(32, F32)
    x[0], x[5] = -8.0, 4.0                        # m = -8, d = 1, id = 1: q = trunc(x + 8.5)
    b = Q.quantize_q4_0(x)[0]
    assert b[:2].view(np.float16)[0] == 1.0
    q = np.concatenate([b[2:] & 15, b[2:] >> 4])
    assert q[0] == 0 and q[5] == 12 and q[1] == 8
    x = np.linspace(0, 15, 32, dtype=F32)
    b = Q.quantize_q4_1(x)[0]
    assert b[:2].view(np.float16)[0] == 1.0 and b[2:4].view(np.float16)[0] == 0.0
    assert list(Q.to_bf16(np.array([1.0, np.nan, 1.00390625, 1.01171875], F32))) == [0x3F80, 0x7FC0, 0x3F80, 0x3F82]


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q4_1", "f16", "bf16"])
def test_round_trip_error_is_bounded(name):
    tid = Q.TYPE_IDS[name]
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(F32)
    y = Q.dequantize(Q.quantize(x, tid), tid, x.size).reshape(x.shape)
    blocks = np.abs(x).reshape(-1, 32).max(axis=1).repeat(32).reshape(x.shape)
    bound = {"q8_0": 0.5 / 127 * 1.01, "q4_0": 1.0 / 8, "q4_1": 2 * 1.0 / 15, "f16": 1e-3, "bf16": 8e-3}[name]
    assert np.all(np.abs(x - y) <= bound * blocks + 1e-6)


def test_row_bytes():
    assert Q.row_bytes(Q.Q8_0_ID, 64) == 68 and Q.row_bytes(Q.Q4_0_ID, 64) == 36
    assert Q.row_bytes(Q.Q4_1_ID, 32) == 20 and Q.row_bytes(Q.F16_ID, 3) == 6
    with pytest.raises(ValueError):
        Q.row_bytes(Q.Q8_0_ID, 33)


def _native():
    try:
        from clexrt._native import ffi, lib
    except ImportError:
        pytest.skip("clexrt._native is not built (make install)")
    if not hasattr(lib, "clex_quantize_row"):
        pytest.skip("this build of clexrt._native has no clex_quantize_row")
    return ffi, lib


@pytest.mark.parametrize("name", TYPES)
def test_bit_identical_to_native(name):
    ffi, lib = _native()
    tid = Q.TYPE_IDS[name]
    for seed in range(3):
        for row in nasty_rows(seed):
            ours = np.ascontiguousarray(Q.quantize(row, tid)).view(np.uint8).reshape(-1)
            dst = np.zeros(ours.size + 64, np.uint8)
            rc = lib.clex_quantize_row(tid, ffi.cast("const float *", ffi.from_buffer(row)),
                                       ffi.from_buffer(dst), row.size)
            assert rc == 0
            assert np.array_equal(dst[: ours.size], ours), (name, seed)
            assert not dst[ours.size:].any()           # and it wrote exactly that many bytes
            back = np.zeros(row.size, F32)
            assert lib.clex_dequantize_row(tid, ffi.from_buffer(ours),
                                           ffi.cast("float *", ffi.from_buffer(back)), row.size) == 0
            assert np.array_equal(back, Q.dequantize(ours, tid, row.size), equal_nan=True)
