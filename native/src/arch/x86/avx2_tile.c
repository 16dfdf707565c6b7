/* AVX2 + FMA + F16C tile kernels for prefill (internal.h's clex_tile_set) of the signed 32-value
 * types (Q8_0, Q4_0, Q5_0, IQ4_NL against Q8_0 activations): tiles of up to 2 weight rows x 4
 * tokens (16 vector registers: 8 accumulators and the operands), each weight block unpacked once
 * per call instead of once per four tokens, each loaded weight register serving four tokens and
 * each activation register two rows.
 *
 * Packed, a block of a weight row is 64 bytes, |w| then w (maddubs multiplies unsigned by
 * signed bytes and saturates its pair sums, so the weights' signs move onto the activations, as
 * in signed32_body.h); the row's block scales follow as floats. The activations are read as
 * they lie; their scales are converted once per tile of tokens. Per row, token and block: a sign,
 * maddubs, a pair sum, a conversion, the multiply of the two scales and an FMA. */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>

#include "../../internal.h"
#include "x86_k.h"

#define INLINE static inline __attribute__((always_inline))

INLINE float h2f_at(const void *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}
INLINE __m256i ld(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

#include "signed32_weights.h"

enum { TILE_R = 2, TILE_C = 4, BLOCK_W = 64, MAX_N = 4096 };

/* a packed row: nb blocks of 64 bytes, then nb floats (padded to whole cache lines) */
static size_t s32_bytes(int64_t n) { return (size_t)(n / QK) * BLOCK_W + ((size_t)(n / QK) * 4 + 63) / 64 * 64; }

INLINE void s32_pack(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst, int wt) {
    const int64_t nb = n / QK;
    const size_t ws = signed_stride(wt), rb = s32_bytes(n);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = (const uint8_t *)w + r * wstride;
        uint8_t *out = (uint8_t *)dst + r * rb;
        float *d = (float *)(out + nb * BLOCK_W);
        for (int64_t i = 0; i < nb; i++) {
            const __m256i wq = signed_weights(row, i, wt);
            _mm256_storeu_si256((__m256i *)(out + i * BLOCK_W), _mm256_sign_epi8(wq, wq));
            _mm256_storeu_si256((__m256i *)(out + i * BLOCK_W + 32), wq);
            d[i] = h2f_at(row + i * ws);
        }
        for (int64_t i = nb; i % 8; i++) d[i] = 0.0f;   /* the tile reads scales 8 at a time */
    }
}

/* R packed rows (rb bytes apart) x C tokens (their blocks x[c], scales dx[c]), nb blocks. The
 * products of the block scales are made 8 at a time first, so that the loop over blocks takes
 * each as a broadcast load (no arithmetic). */
INLINE void s32_tile(int R, int C, int64_t nb, const uint8_t *pw, size_t rb, const block_q8_0 *const x[TILE_C],
                     const float *dx, float *y, int64_t ystride, int accumulate) {
    float d[TILE_C][TILE_R][MAX_N / QK] __attribute__((aligned(32)));
    CLEX_UNROLL for (int c = 0; c < C; c++) CLEX_UNROLL for (int r = 0; r < R; r++) {
        const float *dw = (const float *)(pw + r * rb + nb * BLOCK_W);
        for (int64_t i = 0; i < nb; i += 8)
            _mm256_store_ps(d[c][r] + i, _mm256_mul_ps(_mm256_loadu_ps(dw + i), _mm256_loadu_ps(dx + c * (MAX_N / QK) + i)));
    }
    __m256 acc[TILE_C][TILE_R];
    CLEX_UNROLL for (int c = 0; c < TILE_C; c++) CLEX_UNROLL for (int r = 0; r < TILE_R; r++) acc[c][r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m256i aw[TILE_R];
        CLEX_UNROLL for (int r = 0; r < R; r++) aw[r] = ld(pw + r * rb + i * BLOCK_W);
        CLEX_UNROLL for (int c = 0; c < C; c++) {
            const __m256i xq = ld(x[c][i].qs);
            CLEX_UNROLL for (int r = 0; r < R; r++) {
                const __m256i sx = _mm256_sign_epi8(xq, ld(pw + r * rb + i * BLOCK_W + 32));
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[r], sx), _mm256_set1_epi16(1));
                acc[c][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(d[c][r] + i), acc[c][r]);
            }
        }
    }
    CLEX_UNROLL for (int c = 0; c < C; c++) {
        float *yc = y + c * ystride;
        CLEX_UNROLL for (int r = 0; r < R; r++) {
            const float s = hsum8(acc[c][r]);
            yc[r] = accumulate ? yc[r] + s : s;
        }
    }
}

#define S32_TILE_CASE(R, C) \
    case TILE_C * ((R) - 1) + (C): s32_tile(R, C, nb, pw, rb, x, dx, y, ystride, accumulate); break;

static void s32_tile_any(int R, int C, int64_t nb, const uint8_t *pw, size_t rb, const block_q8_0 *const x[TILE_C],
                         const float *dx, float *y, int64_t ystride, int accumulate) {
    switch (TILE_C * (R - 1) + C) {
        S32_TILE_CASE(1, 1) S32_TILE_CASE(1, 2) S32_TILE_CASE(1, 3) S32_TILE_CASE(1, 4)
        S32_TILE_CASE(2, 1) S32_TILE_CASE(2, 2) S32_TILE_CASE(2, 3) S32_TILE_CASE(2, 4)
    default: break;
    }
}

static void s32_gemm(int64_t n, const void *pw, int64_t rows, const void *vx, size_t xstride, int64_t ntok, float *y,
                     int64_t ystride, int accumulate) {
    const int64_t nb = n / QK;
    const size_t rb = s32_bytes(n);
    float dx[TILE_C * (MAX_N / QK)];
    for (int64_t t0 = 0; t0 < ntok; t0 += TILE_C) {
        const int C = ntok - t0 < TILE_C ? (int)(ntok - t0) : TILE_C;
        const block_q8_0 *x[TILE_C];
        for (int c = 0; c < TILE_C; c++) {
            x[c] = (const block_q8_0 *)((const uint8_t *)vx + (uint64_t)(t0 + (c < C ? c : 0)) * xstride);
            if (c < C) {
                float *d = dx + c * (MAX_N / QK);
                for (int64_t i = 0; i < nb; i++) d[i] = h2f_at(&x[c][i].d);
                for (int64_t i = nb; i % 8; i++) d[i] = 0.0f;
            }
        }
        for (int64_t r0 = 0; r0 < rows; r0 += TILE_R) {
            const int R = rows - r0 < TILE_R ? (int)(rows - r0) : TILE_R;
            s32_tile_any(R, C, nb, (const uint8_t *)pw + r0 * rb, rb, x, dx, y + t0 * ystride + r0, ystride,
                         accumulate);
        }
    }
}

#define S32_PACK(T, WT)                                                                          \
    static void pack_##T(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst) {      \
        s32_pack(n, w, wstride, rows, dst, WT);                                                    \
    }
S32_PACK(Q8_0, W_Q8_0)
S32_PACK(Q4_0, W_Q4_0)
S32_PACK(Q5_0, W_Q5_0)
S32_PACK(IQ4_NL, W_IQ4_NL)

#define S32_TILES(T) [CLEX_TYPE_##T] = {s32_bytes, pack_##T, s32_gemm, MAX_N, 8}

const clex_tile_set clex_avx2_tiles = {{
    S32_TILES(Q8_0), S32_TILES(Q4_0), S32_TILES(Q5_0), S32_TILES(IQ4_NL),
}};

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
