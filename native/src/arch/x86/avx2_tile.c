/* AVX2 + FMA + F16C tile kernels for prefill (internal.h's clex_tile_set). The signed 32-value
 * types (Q8_0, Q4_0, Q5_0, IQ4_NL against Q8_0 activations) in tiles of up to 2 weight rows x 4
 * tokens (16 vector registers: 8 accumulators and the operands), each weight block unpacked once
 * per call instead of once per four tokens, each loaded weight register serving four tokens and
 * each activation register two rows; the K-quants Q2_K .. Q6_K (further down) one packed row x 4
 * tokens (IQ4_XS keeps its row kernels).
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
    CLEX_UNROLL for (int c = 0; c < TILE_C; c++)
        CLEX_UNROLL for (int r = 0; r < TILE_R; r++) acc[c][r] = _mm256_setzero_ps();
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

/* ------------------------------------------------------------------ K-quants */

/* Super-blocks packed by avx2_k.c (x86_k.h's clex_kpack2) against Q8_K activations as they lie,
 * one packed row x up to 4 tokens: per row, token and 32 codes a maddubs, a madd with the scales
 * and an add (as the row kernels, without their unpacking); per super-block the bsums' madd and
 * one or two conversions and FMAs. */

enum { KQ_MAX_N = 16 * QK_K };

static size_t kq_bytes(int64_t n) { return (size_t)(n / QK_K) * sizeof(clex_kpack2); }

INLINE void kq_row(int C, int mins, int64_t nsb, const clex_kpack2 *pw, const uint8_t *x, size_t xstride, float *y,
                   int64_t ystride, int accumulate) {
    __m256 acc[TILE_C];
    CLEX_UNROLL for (int c = 0; c < TILE_C; c++) acc[c] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const clex_kpack2 *p = pw + sb;
        const block_q8_K *xb[TILE_C];
        __m256i isum[TILE_C];
        const __m256i bias = ld(p->bias);
        CLEX_UNROLL for (int c = 0; c < C; c++) {
            xb[c] = (const block_q8_K *)(x + c * xstride) + sb;
            isum[c] = mins ? _mm256_setzero_si256() : _mm256_madd_epi16(ld(xb[c]->bsums), bias);
        }
        CLEX_UNROLL for (int j = 0; j < 8; j++) {
            const __m256i u = ld(p->u[j]), v = ld(p->v[j]);
            CLEX_UNROLL for (int c = 0; c < C; c++)
                isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(_mm256_maddubs_epi16(u, ld(xb[c]->qs + 32 * j)), v));
        }
        CLEX_UNROLL for (int c = 0; c < C; c++) {
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), _mm256_set1_ps(p->d * xb[c]->d), acc[c]);
            if (mins)
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(ld(xb[c]->bsums), bias)),
                                         _mm256_set1_ps(p->dm * xb[c]->d), acc[c]);
        }
    }
    CLEX_UNROLL for (int c = 0; c < C; c++) {
        const float s = hsum8(acc[c]);
        y[c * ystride] = accumulate ? y[c * ystride] + s : s;
    }
}

INLINE void kq_gemm(int64_t n, const void *pw, int64_t rows, const void *vx, size_t xstride, int64_t ntok, float *y,
                    int64_t ystride, int accumulate, int mins) {
    const int64_t nsb = n / QK_K;
    for (int64_t t0 = 0; t0 < ntok; t0 += TILE_C) {
        const int C = ntok - t0 < TILE_C ? (int)(ntok - t0) : TILE_C;
        const uint8_t *x = (const uint8_t *)vx + (uint64_t)t0 * xstride;
        for (int64_t r = 0; r < rows; r++) {
            const clex_kpack2 *p = (const clex_kpack2 *)pw + r * nsb;
            float *yt = y + t0 * ystride + r;
            switch (C) {
            case 1: kq_row(1, mins, nsb, p, x, xstride, yt, ystride, accumulate); break;
            case 2: kq_row(2, mins, nsb, p, x, xstride, yt, ystride, accumulate); break;
            case 3: kq_row(3, mins, nsb, p, x, xstride, yt, ystride, accumulate); break;
            default: kq_row(4, mins, nsb, p, x, xstride, yt, ystride, accumulate); break;
            }
        }
    }
}

static void kq_gemm_mins(int64_t n, const void *pw, int64_t rows, const void *x, size_t xstride, int64_t ntok,
                         float *y, int64_t ystride, int accumulate) {
    kq_gemm(n, pw, rows, x, xstride, ntok, y, ystride, accumulate, 1);
}

static void kq_gemm_bias(int64_t n, const void *pw, int64_t rows, const void *x, size_t xstride, int64_t ntok,
                         float *y, int64_t ystride, int accumulate) {
    kq_gemm(n, pw, rows, x, xstride, ntok, y, ystride, accumulate, 0);
}

#define KQ_TILES(T, GEMM) [CLEX_TYPE_##T] = {kq_bytes, clex_avx2_kpack_##T, GEMM, KQ_MAX_N, 8}
#define S32_TILES(T) [CLEX_TYPE_##T] = {s32_bytes, pack_##T, s32_gemm, MAX_N, 8}

const clex_tile_set clex_avx2_tiles = {{
    S32_TILES(Q8_0), S32_TILES(Q4_0), S32_TILES(Q5_0), S32_TILES(IQ4_NL),
    KQ_TILES(Q2_K, kq_gemm_mins), KQ_TILES(Q4_K, kq_gemm_mins), KQ_TILES(Q5_K, kq_gemm_mins),
    KQ_TILES(Q3_K, kq_gemm_bias), KQ_TILES(Q6_K, kq_gemm_bias),
}};

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
