"""The tile kernels of prefill against the scalar one-row kernels, for every type that has them
and every instruction set this CPU runs (split out of test_kernels.py, whose helpers they use).
Tolerance as there: |tile - scalar| <= 1e-5 * sum|w_i * x_i| + 1e-6."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from clexrt.engine import native as _lib
from clexrt.engine.native import ffi, lib
from test_kernels import ISAS, RUN_ONLY, TYPES, dequantize, ptr, quantize, weight_rows


@pytest.fixture(autouse=True)
def restore_isa():
    before = _lib.isa()
    yield
    _lib.set_isa(before)


# The tile kernels of prefill (native/src/internal.h clex_tile_set; x86: avx512_tile.c with
# 16 rows x 16 tokens, avx2_tile.c with 2 x 4 or 1 x 4), taken from a few tokens on (the kernels'
# min_tok: AVX-512 6, or 12 for the super-block types; AVX2 8), against the scalar one-row
# kernels (the scalar set has no tiles), per output. Shapes (blocks per row, rows, tokens) that
# take every edge: one block per row; an odd count; rows longer than one gemm call (2048 values:
# split, the later pieces added to y); more rows than one packed block of rows (matmul.c's
# TILE_SCRATCH); tokens past one block of 512 (TILE_TOKENS) and past one group of 16; row and
# token counts not multiples of the tile; token counts on both sides of each min_tok.
TILE_TYPES = ["q8_0", "q4_0", "q5_0", "iq4_nl", "q4_1", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs"]
# (The packed block is at most 1 MiB of rows: a 2048-wide row of a 32-value type packs into
# 2.5-3 KiB, a super-block type's into 3.5-4.5, so (64, 900, _) and (8, 600, _) give each of the
# two threads' halves more rows than one block.)
TILE_SHAPES_32 = [(1, 5, 8), (1, 4, 5), (1, 3, 6), (3, 6, 13), (18, 61, 9), (67, 37, 11), (18, 10, 37), (2, 3, 517),
                  (64, 900, 7)]
TILE_SHAPES_256 = [(1, 5, 13), (1, 3, 11), (1, 2, 8), (3, 6, 12), (17, 37, 14), (6, 45, 13), (2, 6, 37), (1, 2, 517),
                   (8, 600, 13)]


def _matmul(t, Wq, N, K, X, threads):
    ct = ffi.new("clex_tensor *", dict(type=t, n_dims=2, data=ptr(Wq), nbytes=Wq.nbytes))
    ct.ne[0], ct.ne[1] = K, N
    Y = np.zeros((X.shape[0], N), np.float32)
    _lib.check(lib.clex_matmul(ct, ptr(X, "float *"), X.shape[0], ptr(Y, "float *"), threads))
    return Y


def _scalar_and_tiles(t, at, Wq, N, K, X, isa):
    """The scalar kernels' product (one thread), the ISA's (two threads, the tiles), the float64
    product of the dequantized weights and activations, and the tolerance bound per output."""
    _lib.set_isa("scalar")
    ref = _matmul(t, Wq, N, K, X, 1)
    _lib.set_isa(isa)
    got = _matmul(t, Wq, N, K, X, 2)
    Wd = dequantize(Wq, t, N * K).reshape(N, K).astype(np.float64)
    Xd = np.stack([dequantize(quantize(X[i], at), at, K) for i in range(X.shape[0])]).astype(np.float64)
    return ref, got, Xd @ Wd.T, 1e-5 * (np.abs(Xd) @ np.abs(Wd).T) + 1e-6


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", TILE_TYPES)
def test_tile_kernels_match_scalar(isa, name):
    """Every output within the summation-order tolerance of the scalar kernels': |tile - scalar|
    <= 1e-5 * sum_k |w x| + 1e-6 (dequantized, float64), and the scalar product within it of the
    textbook product of the dequantized values."""
    rng = np.random.default_rng(9)
    t = {**TYPES, **RUN_ONLY}[name]
    at = lib.clex_type_vec_dot_type(t)
    blck = lib.clex_type_block_size(t)
    for nb, N, T in TILE_SHAPES_32 if blck == 32 else TILE_SHAPES_256:
        K = nb * blck
        Wq = weight_rows(name, rng, N, K)
        X = rng.standard_normal((T, K)).astype(np.float32)
        ref, got, exact, bound = _scalar_and_tiles(t, at, Wq, N, K, X, isa)
        assert (np.abs(got - ref) <= bound).all(), (isa, name, nb, N, T, np.abs(got - ref).max())
        assert (np.abs(ref - exact) <= bound).all(), (name, nb, N, T)


# The code bytes of each super-block type's block (ggml's layout), for the extreme-code test.
TILE_CODE_BYTES = {"q2_k": (16, 80), "q3_k": (0, 96), "q4_k": (16, 144), "q5_k": (16, 176), "q6_k": (0, 192),
                   "iq4_xs": (8, 136)}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(TILE_CODE_BYTES))
def test_tile_kernels_extreme_codes(isa, name):
    """The super-block tile kernels at the ends of their integer ranges: every code at its
    largest or smallest (code bytes all 0xFF or all 0x00, the scales random) against activations
    at +-127 (constant rows of either sign, and alternating signs), where the sub-block sums are
    largest; 20 rows (a short group of rows after a full one) x 17 tokens (a short group of
    tokens), 2048 values. Within the tile test's bound of the scalar kernels, which are exact in
    their integer sums."""
    from gguf.constants import GGML_QUANT_SIZES
    import tinymodel as tm
    rng = np.random.default_rng(5)
    t = RUN_ONLY[name]
    at = lib.clex_type_vec_dot_type(t)
    N, K, T = 20, 2048, 17
    lo, hi = TILE_CODE_BYTES[name]
    bb = GGML_QUANT_SIZES[QT(t)][1]
    X = np.ones((T, K), np.float32)
    X[1::3] = -1.0
    X[2::3, 1::2] = -1.0
    X[2::3, 0::4] *= 0.5   # some codes below 127 too
    for fill in (0xFF, 0x00):
        W = tm.scaled_blocks(QT(t), N, K, rng, 1.0).reshape(-1, bb).copy()
        W[:, lo:hi] = fill
        Wq = W.reshape(-1)
        ref, got, exact, bound = _scalar_and_tiles(t, at, Wq, N, K, X, isa)
        assert np.abs(ref).max() > 0, (name, fill)
        assert (np.abs(got - ref) <= bound).all(), (isa, name, fill, np.abs(got - ref).max())
        assert (np.abs(ref - exact) <= bound).all(), (name, fill)
