/* AVX-512 + VNNI tile kernels for prefill (internal.h's clex_tile_set): many tokens against the
 * same weight rows, the weights' unpacking done once per call instead of once per four tokens.
 * The signed 32-value types (Q8_0, Q4_0, Q5_0, IQ4_NL against Q8_0 activations) put 16 tokens
 * in the lanes of 16 rows' accumulators (their section says how); the K-quants Q2_K .. Q6_K
 * (further down) run tiles of up to 4 weight rows x 4 tokens, so that each weight register
 * loaded serves four tokens and each activation register four rows. IQ4_XS keeps its row
 * kernels. */
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

INLINE __m256i ld(const void *p) { return ld32(p); }

#include "signed32_weights.h"

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

/* Tokens in the lanes: a tile is 16 weight rows x 16 tokens, lane l of row r's accumulator
 * holding token l. Per block, the 16 tokens' 32 activation bytes are transposed once into eight
 * registers (register k: each token's bytes 4k .. 4k + 3, plus 128 as unsigned bytes) and each
 * weight row's bytes arrive four at a time as broadcasts from memory, so eight vpdpbusd leave
 * each lane with its token's whole block sum; one conversion, one multiply of the scales and one
 * FMA follow per row and block, for 16 tokens at once. The +128 comes out through the row's
 * -128 * (sum of its weights), the accumulator the vpdpbusd start from: the integer sums are
 * exact. Packed, a block of a weight row is 40 bytes: its 32 signed weights, that int32, its
 * scale as a float. The results are transposed back (16 x 16) into the tokens' rows of y. */

enum { TV_T = 16, TV_R = 16, S32_BW = 40, S32_XB = 9 * 64, S32_MAX_N = 2048 };

INLINE int32_t ld_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
INLINE float ld_f32(const void *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

static size_t s32_bytes(int64_t n) { return (size_t)(n / QK) * S32_BW; }

INLINE void s32_pack(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst, int wt) {
    const int64_t nb = n / QK;
    const size_t ws = signed_stride(wt);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = (const uint8_t *)w + r * wstride;
        uint8_t *out = (uint8_t *)dst + r * nb * S32_BW;
        for (int64_t i = 0; i < nb; i++, out += S32_BW) {
            const __m256i wq = signed_weights(row, i, wt);
            /* sum(w) = sum(w + 128) - 32 * 128, the unsigned sum by vpsadbw */
            const __m256i sad = _mm256_sad_epu8(_mm256_xor_si256(wq, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
            const __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(sad), _mm256_extracti128_si256(sad, 1));
            const int32_t sum = (int32_t)_mm_cvtsi128_si64(_mm_add_epi64(s2, _mm_unpackhi_epi64(s2, s2))) - 32 * 128;
            const int32_t corr = -128 * sum;
            const float d = h2f_at(row + i * ws);
            _mm256_storeu_si256((__m256i *)out, wq);
            memcpy(out + 32, &corr, 4);
            memcpy(out + 36, &d, 4);
        }
    }
}

/* vpermt2d indices of the 16 x 8 transpose of dwords (tokens x a block's 8 dwords), in three
 * rounds of pairs: tokens 4j .. 4j + 3 (by dword halves), 8 (by dword pairs), 16 (by dwords) */
static const int32_t tv_idx[6][16] __attribute__((aligned(64))) = {
    {0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27},
    {4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31},
    {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23},
    {8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31},
    {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
    {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
};

INLINE __m512i tv_perm(__m512i a, int i, __m512i b) {
    return _mm512_permutex2var_epi32(a, _mm512_load_si512(tv_idx[i]), b);
}

/* out[k], lane l = dword k of the 32 bytes at tp[l] + off (a[i]: those of tokens 2i, 2i + 1) */
INLINE void tv_transpose(const uint8_t *const tp[TV_T], size_t off, __m512i out[8]) {
    __m512i a[8], p[4][2], q[2][2][2];
    CLEX_UNROLL for (int i = 0; i < 8; i++)
        a[i] = _mm512_inserti64x4(_mm512_castsi256_si512(ld32(tp[2 * i] + off)), ld32(tp[2 * i + 1] + off), 1);
    CLEX_UNROLL for (int j = 0; j < 4; j++) CLEX_UNROLL for (int h = 0; h < 2; h++) p[j][h] = tv_perm(a[2 * j], h, a[2 * j + 1]);
    CLEX_UNROLL for (int h = 0; h < 2; h++) CLEX_UNROLL for (int t = 0; t < 2; t++) CLEX_UNROLL for (int u = 0; u < 2; u++)
        q[h][t][u] = tv_perm(p[2 * t][h], 2 + u, p[2 * t + 1][h]);
    CLEX_UNROLL for (int h = 0; h < 2; h++) CLEX_UNROLL for (int u = 0; u < 2; u++) CLEX_UNROLL for (int v = 0; v < 2; v++)
        out[4 * h + 2 * u + v] = tv_perm(q[h][0][u], 4 + v, q[h][1][u]);
}

/* nb blocks of ntok (<= 16) tokens' Q8_0 rows (xstride bytes apart) into S32_XB bytes per block:
 * the transposed codes plus 128, then each token's scale (0 beyond ntok; the missing tokens'
 * codes are the last token's) */
INLINE void s32_prep(int64_t nb, const uint8_t *x, size_t xstride, int ntok, uint8_t *out) {
    const uint8_t *tp[TV_T];
    int32_t off[TV_T];
    for (int l = 0; l < TV_T; l++) {
        off[l] = (int32_t)((uint64_t)(l < ntok ? l : ntok - 1) * xstride);
        tp[l] = x + off[l];
    }
    const __m512i vindex = _mm512_loadu_si512(off);
    const __mmask16 live = (__mmask16)((1u << ntok) - 1);
    for (int64_t b = 0; b < nb; b++, out += S32_XB) {
        __m512i xk[8];
        tv_transpose(tp, (size_t)b * sizeof(block_q8_0) + offsetof(block_q8_0, qs), xk);
        CLEX_UNROLL for (int k = 0; k < 8; k++) _mm512_storeu_si512(out + 64 * k, _mm512_xor_si512(xk[k], _mm512_set1_epi8((char)0x80)));
        const __m512i h = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, vindex, x + b * sizeof(block_q8_0), 1);
        _mm512_storeu_ps(out + 512, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)));   /* the low half of each: d */
    }
}

/* acc[r] += packed row wr[r] . the 16 prepared tokens, over nb blocks */
INLINE void s32_tile(int64_t nb, const uint8_t *const wr[TV_R], const uint8_t *px, __m512 acc[TV_R]) {
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *xb = px + b * S32_XB;
        __m512i xk[8];
        CLEX_UNROLL for (int k = 0; k < 8; k++) xk[k] = ld64(xb + 64 * k);
        const __m512 dc = _mm512_loadu_ps(xb + 512);
        CLEX_UNROLL for (int r = 0; r < TV_R; r++) {
            const uint8_t *wb = wr[r] + b * S32_BW;
            __m512i t = _mm512_set1_epi32(ld_i32(wb + 32));
            CLEX_UNROLL for (int k = 0; k < 8; k++) t = _mm512_dpbusd_epi32(t, xk[k], _mm512_set1_epi32(ld_i32(wb + 4 * k)));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(dc, _mm512_set1_ps(ld_f32(wb + 36))), acc[r]);
        }
    }
}

/* v[r] lane l -> o[l] lane r (16 x 16 floats: 32-bit and 64-bit interleaves, then 128-bit chunks) */
INLINE void transpose16(const __m512 v[16], __m512 o[16]) {
    __m512 a[16], b[16];
    CLEX_UNROLL for (int i = 0; i < 8; i++) {
        a[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
#define PD(x) _mm512_castps_pd(x)
#define PS(x) _mm512_castpd_ps(x)
    CLEX_UNROLL for (int i = 0; i < 4; i++) {
        b[4 * i] = PS(_mm512_unpacklo_pd(PD(a[4 * i]), PD(a[4 * i + 2])));
        b[4 * i + 1] = PS(_mm512_unpackhi_pd(PD(a[4 * i]), PD(a[4 * i + 2])));
        b[4 * i + 2] = PS(_mm512_unpacklo_pd(PD(a[4 * i + 1]), PD(a[4 * i + 3])));
        b[4 * i + 3] = PS(_mm512_unpackhi_pd(PD(a[4 * i + 1]), PD(a[4 * i + 3])));
    }
#undef PD
#undef PS
    CLEX_UNROLL for (int j = 0; j < 4; j++) {
        const __m512 c0 = _mm512_shuffle_f32x4(b[j], b[4 + j], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512 c1 = _mm512_shuffle_f32x4(b[j], b[4 + j], _MM_SHUFFLE(3, 2, 3, 2));
        const __m512 c2 = _mm512_shuffle_f32x4(b[8 + j], b[12 + j], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512 c3 = _mm512_shuffle_f32x4(b[8 + j], b[12 + j], _MM_SHUFFLE(3, 2, 3, 2));
        o[j] = _mm512_shuffle_f32x4(c0, c2, _MM_SHUFFLE(2, 0, 2, 0));
        o[4 + j] = _mm512_shuffle_f32x4(c0, c2, _MM_SHUFFLE(3, 1, 3, 1));
        o[8 + j] = _mm512_shuffle_f32x4(c1, c3, _MM_SHUFFLE(2, 0, 2, 0));
        o[12 + j] = _mm512_shuffle_f32x4(c1, c3, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* acc[r] lane l -> y[l * ystride + r] for r < R, l < ntok (added to y when accumulate) */
INLINE void tv_store(const __m512 acc[TV_R], int R, int ntok, float *y, int64_t ystride, int accumulate) {
    __m512 o[TV_T];
    transpose16(acc, o);
    const __mmask16 m = (__mmask16)((1u << R) - 1);
    for (int l = 0; l < ntok; l++) {
        float *yl = y + l * ystride;
        const __m512 v = accumulate ? _mm512_add_ps(o[l], _mm512_maskz_loadu_ps(m, yl)) : o[l];
        _mm512_mask_storeu_ps(yl, m, v);
    }
}

static void s32_gemm(int64_t n, const void *pw, int64_t rows, const void *x, size_t xstride, int64_t ntok, float *y,
                     int64_t ystride, int accumulate) {
    const int64_t nb = n / QK;
    const size_t wrow = (size_t)nb * S32_BW;
    _Alignas(64) uint8_t xt[(S32_MAX_N / QK) * S32_XB];
    for (int64_t t0 = 0; t0 < ntok; t0 += TV_T) {
        const int nt = ntok - t0 < TV_T ? (int)(ntok - t0) : TV_T;
        s32_prep(nb, (const uint8_t *)x + (uint64_t)t0 * xstride, xstride, nt, xt);
        for (int64_t r0 = 0; r0 < rows; r0 += TV_R) {
            const int R = rows - r0 < TV_R ? (int)(rows - r0) : TV_R;
            const uint8_t *wr[TV_R];   /* the rows past the last repeat it; their sums are not stored */
            for (int r = 0; r < TV_R; r++) wr[r] = (const uint8_t *)pw + (size_t)(r0 + (r < R ? r : R - 1)) * wrow;
            __m512 acc[TV_R];
            CLEX_UNROLL for (int r = 0; r < TV_R; r++) acc[r] = _mm512_setzero_ps();
            s32_tile(nb, wr, xt, acc);
            tv_store(acc, R, nt, y + t0 * ystride + r0, ystride, accumulate);
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

enum { KQ_MAX_N = 16 * QK_K, TILE_R = 4, TILE_C = 4 };

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
