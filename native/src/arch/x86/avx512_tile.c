/* AVX-512 + VNNI tile kernels for prefill (internal.h's clex_tile_set): many tokens against the
 * same weight rows, in register tiles of up to 4 weight rows x 4 tokens, so that each weight
 * register loaded serves four tokens and each activation register four rows, and the weights'
 * unpacking is done once per call instead of once per four tokens. Two kinds: the signed
 * 32-value types below, and the K-quants Q2_K .. Q6_K (further down; IQ4_XS keeps its row
 * kernels).
 *
 * The signed 32-value types (Q8_0, Q4_0, Q5_0, IQ4_NL against Q8_0 activations) share one
 * product; only their packing differs. Packed, a pair of blocks of a weight row is 128 bytes:
 * its 64 weights plus 128 as unsigned bytes (vpdpbusd multiplies unsigned by signed bytes, so
 * no sign has to be moved per token and row), then the two fp16 scales as floats, the first in
 * lanes 0..7, the second in 8..15. A pair of activation blocks is prepared once per tile of
 * tokens into 192 bytes: the 64 codes, then -128 * the sums of each lane's four codes (the
 * accumulator vpdpbusd starts from, which takes the +128 back out: the integer sums are exact),
 * then the scales as for the weights. Per tile, weight row and token, each pair of blocks then
 * costs one vpdpbusd, one conversion, one multiply of the two scale vectors and one FMA.
 * A lone last block (an odd count) is padded with zero weights, codes and scales. */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
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
INLINE __m512i ld64(const void *p) { return _mm512_loadu_si512(p); }
INLINE __m256i ld32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
INLINE __m128i ld16(const void *p) { return _mm_loadu_si128((const __m128i *)p); }

#include "avx512_s32.h"

/* ------------------------------------------------------------------ the tile's results */

/* 16 sums of 16 lanes: lane 4k + j of the result is the sum of v[4k + j] (three rounds of
 * folding, each adding halves of two vectors) */
INLINE __m512 sum16(const __m512 v[16]) {
    __m512 a[8], b[4];
    CLEX_UNROLL for (int m = 0; m < 4; m++) {   /* v[m], v[4 + m] and v[8 + m], v[12 + m] */
        CLEX_UNROLL for (int h = 0; h < 2; h++) {
            const __m512 x = v[8 * h + m], y = v[8 * h + 4 + m];
            a[2 * m + h] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                                         _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
        }
    }
    CLEX_UNROLL for (int m = 0; m < 4; m++)   /* 128-bit chunk k: four lanes of v[4k + m] */
        b[m] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * m], a[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(a[2 * m], a[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    /* within each chunk, a transpose of the four b[m] folded as it goes */
    const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(b[0], b[1]), _mm512_unpackhi_ps(b[0], b[1]));
    const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(b[2], b[3]), _mm512_unpackhi_ps(b[2], b[3]));
    return _mm512_add_ps(_mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(3, 2, 3, 2)));
}

/* acc[4c + r] -> y[c * ystride + r] for r < R, c < C (added to y when accumulate) */
INLINE void tile_store(const __m512 acc[16], int R, int C, float *y, int64_t ystride, int accumulate) {
    float s[16] __attribute__((aligned(64)));
    _mm512_store_ps(s, sum16(acc));
    const __mmask8 m = (__mmask8)((1u << R) - 1);
    CLEX_UNROLL for (int c = 0; c < 4; c++) {
        if (c < C) {
            float *yc = y + c * ystride;
            __m128 v = _mm_load_ps(s + 4 * c);
            if (accumulate) v = _mm_add_ps(v, _mm_maskz_loadu_ps(m, yc));
            _mm_mask_storeu_ps(yc, m, v);
        }
    }
}

/* ------------------------------------------------------------------ signed 32-value types */

enum { S32_PW = 128, S32_PX = 192, S32_MAX_N = 2048, TILE_R = 4, TILE_C = 4 };

static size_t s32_bytes(int64_t n) { return (size_t)((n / QK + 1) / 2) * S32_PW; }

/* the d of block a in lanes 0..7, b's in 8..15 */
INLINE __m512 scales2(float a, float b) { return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b)); }

INLINE void s32_pack(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst, int wt) {
    const int64_t nb = n / QK, np = (nb + 1) / 2;
    const size_t ws = signed_stride(wt);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = (const uint8_t *)w + r * wstride;
        uint8_t *out = (uint8_t *)dst + r * np * S32_PW;
        for (int64_t p = 0; p < np; p++, out += S32_PW) {
            const int64_t i = 2 * p;
            const int lone = i + 1 == nb;
            const __m512i wq = _mm512_maskz_mov_epi8(lone ? 0xFFFFFFFFull : ~0ull,
                                                     signed_weights2(row, i, i + !lone, wt));
            _mm512_storeu_si512(out, _mm512_xor_si512(wq, _mm512_set1_epi8((char)0x80)));
            _mm512_storeu_ps(out + 64, scales2(h2f_at(row + i * ws), lone ? 0.0f : h2f_at(row + (i + 1) * ws)));
        }
    }
}

/* one row of Q8_0 activations (nb blocks) into its prepared pairs */
INLINE void s32_prep_x(int64_t nb, const block_q8_0 *x, uint8_t *out) {
    for (int64_t i = 0; i < nb; i += 2, out += S32_PX) {
        const int lone = i + 1 == nb;
        const __m512i xq = lone ? _mm512_zextsi256_si512(ld32(x[i].qs)) : load2(x[i].qs, x[i + 1].qs);
        const __m512i sum128 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), xq);
        _mm512_storeu_si512(out, xq);
        _mm512_storeu_si512(out + 64, _mm512_sub_epi32(_mm512_setzero_si512(), sum128));
        _mm512_storeu_ps(out + 128, scales2(h2f_at(&x[i].d), lone ? 0.0f : h2f_at(&x[i + 1].d)));
    }
}

/* R weight rows (wrow bytes apart) x C prepared tokens (xrow bytes apart), np pairs of blocks */
INLINE void s32_tile(int R, int C, int64_t np, const uint8_t *pw, size_t wrow, const uint8_t *px, size_t xrow,
                     float *y, int64_t ystride, int accumulate) {
    __m512 acc[16];
    CLEX_UNROLL for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t p = 0; p < np; p++) {
        __m512i u[TILE_R];
        __m512 dr[TILE_R];
        CLEX_UNROLL for (int r = 0; r < R; r++) {
            u[r] = ld64(pw + r * wrow + p * S32_PW);
            dr[r] = _mm512_loadu_ps(pw + r * wrow + p * S32_PW + 64);
        }
        CLEX_UNROLL for (int c = 0; c < C; c++) {
            const uint8_t *xp = px + c * xrow + p * S32_PX;
            const __m512i xq = ld64(xp), off = ld64(xp + 64);
            const __m512 dc = _mm512_loadu_ps(xp + 128);
            CLEX_UNROLL for (int r = 0; r < R; r++) {
                const __m512i t = _mm512_dpbusd_epi32(off, u[r], xq);
                acc[4 * c + r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(dr[r], dc), acc[4 * c + r]);
            }
        }
    }
    tile_store(acc, R, C, y, ystride, accumulate);
}

/* every (R, C) up to 4 x 4 as its own straight code */
#define S32_TILE_CASE(R, C) \
    case 4 * (R) + (C): s32_tile(R, C, np, pw, wrow, px, xrow, y, ystride, accumulate); break;
#define S32_TILE_CASES(R) S32_TILE_CASE(R, 1) S32_TILE_CASE(R, 2) S32_TILE_CASE(R, 3) S32_TILE_CASE(R, 4)

static void s32_tile_any(int R, int C, int64_t np, const uint8_t *pw, size_t wrow, const uint8_t *px, size_t xrow,
                         float *y, int64_t ystride, int accumulate) {
    switch (4 * R + C) {
        S32_TILE_CASES(1) S32_TILE_CASES(2) S32_TILE_CASES(3) S32_TILE_CASES(4)
    default: break;
    }
}

static void s32_gemm(int64_t n, const void *pw, int64_t rows, const void *x, size_t xstride, int64_t ntok, float *y,
                     int64_t ystride, int accumulate) {
    const int64_t nb = n / QK, np = (nb + 1) / 2;
    const size_t wrow = (size_t)np * S32_PW, xrow = (size_t)np * S32_PX;
    _Alignas(64) uint8_t xt[TILE_C * (S32_MAX_N / 64) * S32_PX];
    for (int64_t t0 = 0; t0 < ntok; t0 += TILE_C) {
        const int C = ntok - t0 < TILE_C ? (int)(ntok - t0) : TILE_C;
        for (int c = 0; c < C; c++)
            s32_prep_x(nb, (const block_q8_0 *)((const uint8_t *)x + (uint64_t)(t0 + c) * xstride), xt + c * xrow);
        for (int64_t r0 = 0; r0 < rows; r0 += TILE_R) {
            const int R = rows - r0 < TILE_R ? (int)(rows - r0) : TILE_R;
            s32_tile_any(R, C, np, (const uint8_t *)pw + r0 * wrow, wrow, xt, xrow, y + t0 * ystride + r0, ystride,
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

/* Super-blocks packed by avx512_k.c (x86_k.h's clex_kpack) against Q8_K activations as they
 * lie. Per weight row, token and super-block: four vpdpbusd (codes x activations, int32 sums of
 * four values, small enough for int16), two vpackssdw and two vpdpwssd with the scales, one
 * vpmaddwd of the bsums with the bias factors (with the minimums: beside the folded sum, in
 * lanes 8..15, under -dmin), one conversion, one multiply of the scales and one FMA. The packs
 * run on the port the multiplies leave idle. */

enum { KQ_MAX_N = 16 * QK_K };

static size_t kq_bytes(int64_t n) { return (size_t)(n / QK_K) * sizeof(clex_kpack); }

/* the integer sum of packed super-block p with activation block x, as 16 int32 lanes the
 * lanes of p->dv scale */
INLINE __m512i kq_isum(const __m512i u[4], const __m512i v[2], __m256i bias, const block_q8_K *x, int mins) {
    __m512i d[4];
    CLEX_UNROLL for (int k = 0; k < 4; k++) d[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[k], ld64(x->qs + 64 * k));
    const __m256i m = _mm256_madd_epi16(ld32(x->bsums), bias);
    __m512i is = mins ? _mm512_setzero_si512() : _mm512_zextsi256_si512(m);
    is = _mm512_dpwssd_epi32(is, _mm512_packs_epi32(d[0], d[1]), v[0]);
    is = _mm512_dpwssd_epi32(is, _mm512_packs_epi32(d[2], d[3]), v[1]);
    if (!mins) return is;
    const __m256i folded = _mm256_add_epi32(_mm512_castsi512_si256(is), _mm512_extracti64x4_epi64(is, 1));
    return _mm512_inserti64x4(_mm512_castsi256_si512(folded), m, 1);
}

/* R packed rows (nsb super-blocks each) x C tokens (xstride bytes apart) */
INLINE void kq_tile(int R, int C, int mins, int64_t nsb, const clex_kpack *pw, const uint8_t *x, size_t xstride,
                    float *y, int64_t ystride, int accumulate) {
    __m512 acc[16];
    CLEX_UNROLL for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        CLEX_UNROLL for (int r = 0; r < R; r++) {
            const clex_kpack *p = pw + r * nsb + sb;
            __m512i u[4], v[2];
            CLEX_UNROLL for (int k = 0; k < 4; k++) u[k] = ld64(p->u[k]);
            CLEX_UNROLL for (int h = 0; h < 2; h++) v[h] = ld64(p->v[h]);
            const __m256i bias = ld32(p->bias);
            const __m512 dv = _mm512_loadu_ps(p->dv);
            CLEX_UNROLL for (int c = 0; c < C; c++) {
                const block_q8_K *xb = (const block_q8_K *)(x + c * xstride) + sb;
                const __m512i is = kq_isum(u, v, bias, xb, mins);
                acc[4 * c + r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dv, _mm512_set1_ps(xb->d)),
                                                 acc[4 * c + r]);
            }
        }
    }
    tile_store(acc, R, C, y, ystride, accumulate);
}

#define KQ_TILE_CASE(R, C) \
    case 4 * (R) + (C): kq_tile(R, C, mins, nsb, pw, x, xstride, yt, ystride, accumulate); break;
#define KQ_TILE_CASES(R) KQ_TILE_CASE(R, 1) KQ_TILE_CASE(R, 2) KQ_TILE_CASE(R, 3) KQ_TILE_CASE(R, 4)

INLINE void kq_gemm(int64_t n, const void *vpw, int64_t rows, const void *vx, size_t xstride, int64_t ntok, float *y,
                    int64_t ystride, int accumulate, int mins) {
    const int64_t nsb = n / QK_K;
    for (int64_t t0 = 0; t0 < ntok; t0 += TILE_C) {
        const int C = ntok - t0 < TILE_C ? (int)(ntok - t0) : TILE_C;
        const uint8_t *x = (const uint8_t *)vx + (uint64_t)t0 * xstride;
        for (int64_t r0 = 0; r0 < rows; r0 += TILE_R) {
            const int R = rows - r0 < TILE_R ? (int)(rows - r0) : TILE_R;
            const clex_kpack *pw = (const clex_kpack *)vpw + r0 * nsb;
            float *yt = y + t0 * ystride + r0;
            switch (4 * R + C) {
                KQ_TILE_CASES(1) KQ_TILE_CASES(2) KQ_TILE_CASES(3) KQ_TILE_CASES(4)
            default: break;
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

#define KQ_TILES(T, GEMM) [CLEX_TYPE_##T] = {kq_bytes, clex_avx512vnni_kpack_##T, GEMM, KQ_MAX_N, 8}

#define S32_TILES(T) [CLEX_TYPE_##T] = {s32_bytes, pack_##T, s32_gemm, S32_MAX_N, 8}

const clex_tile_set clex_avx512vnni_tiles = {{
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
