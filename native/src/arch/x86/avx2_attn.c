/* AVX2 attention kernels over a Q8_0 KV cache (attn.c has the reference: clex_scores_q8_generic,
 * clex_wsum_q8_generic), laid over avx2.c's set; rows are D / 32 blocks, one block per register.
 *
 * Scores: each key block against the query's with maddubs, which multiplies unsigned by signed
 * bytes: |k| times q carrying k's sign (sign_epi8), so |k| <= 128, |q| <= 127 and the pairs'
 * sums stay below 2^15 (no saturation; exact for every key byte, -128 included). The block's
 * eight int32 lanes are converted to float and scaled by dk * dq (the reference's product), four
 * keys reduced together. Integer sums exact; the float sum differs from the reference's only in
 * order. Weighted sums keep 64 output values in registers, each value block converted once and
 * added with weight w[p] * its scale. */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>

#include "../../internal.h"

#define UNROLL8 _Pragma("GCC unroll 8")
#define MAX_BLOCKS 16   /* the prepared query: rows up to 512 values; longer ones take the reference */

/* one key block's eight lanes of the score, scaled by dk * dq, added to acc */
static inline __m256 block_lanes(const block_q8_0 *k, __m256i q, float dq, __m256 acc) {
    const __m256i kq = _mm256_loadu_si256((const __m256i *)k->qs);
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(kq), _mm256_sign_epi8(q, kq));
    const __m256i p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_set1_ps(_cvtsh_ss(k->d) * dq), acc);
}

/* four 8-lane sums -> their four totals */
static inline __m128 totals4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

static inline float total(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* inline, so that a constant nb unrolls the blocks */
static inline __attribute__((always_inline)) void scores_q8_body(int64_t n, int64_t nb, const block_q8_0 *q,
                                                                  const block_q8_0 *K, float scale, float *s) {
    __m256i qs[MAX_BLOCKS];
    float dq[MAX_BLOCKS];
    for (int64_t b = 0; b < nb; b++) {
        qs[b] = _mm256_loadu_si256((const __m256i *)q[b].qs);
        dq[b] = _cvtsh_ss(q[b].d);
    }
    const __m128 vs = _mm_set1_ps(scale);
    int64_t p = 0;
    for (; p + 4 <= n; p += 4) {
        const block_q8_0 *k = K + p * nb;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t b = 0; b < nb; b++) {
            a0 = block_lanes(k + b, qs[b], dq[b], a0);
            a1 = block_lanes(k + nb + b, qs[b], dq[b], a1);
            a2 = block_lanes(k + 2 * nb + b, qs[b], dq[b], a2);
            a3 = block_lanes(k + 3 * nb + b, qs[b], dq[b], a3);
        }
        _mm_storeu_ps(s + p, _mm_mul_ps(totals4(a0, a1, a2, a3), vs));
    }
    for (; p < n; p++) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) a = block_lanes(K + p * nb + b, qs[b], dq[b], a);
        s[p] = total(a) * scale;
    }
}

static void scores_q8_avx2(int64_t n, int64_t D, const block_q8_0 *q, const block_q8_0 *K, float scale, float *s) {
    const int64_t nb = D / QK;
    if (nb == 2) scores_q8_body(n, 2, q, K, scale, s);         /* head_dim 64 */
    else if (nb == 4) scores_q8_body(n, 4, q, K, scale, s);    /* 128 */
    else if (nb <= MAX_BLOCKS) scores_q8_body(n, nb, q, K, scale, s);
    else clex_scores_q8_generic(n, D, q, K, scale, s);
}

static inline __m256 codes8(const int8_t *qs) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)qs)));
}

/* out[0 .. 32 m) += sum_p w[p] V[p][...] for the first m (1 or 2) blocks of rows of nb blocks */
static inline __attribute__((always_inline)) void wsum_q8_run(int64_t n, int64_t nb, const float *w,
                                                               const block_q8_0 *V, float *out, int m) {
    __m256 o[8];
    UNROLL8 for (int j = 0; j < 4 * m; j++) o[j] = _mm256_loadu_ps(out + 8 * j);
    for (int64_t p = 0; p < n; p++) {
        const block_q8_0 *v = V + p * nb;
        UNROLL8 for (int b = 0; b < m; b++) {
            const __m256 a = _mm256_set1_ps(w[p] * _cvtsh_ss(v[b].d));
            UNROLL8 for (int g = 0; g < 4; g++) o[4 * b + g] = _mm256_fmadd_ps(a, codes8(v[b].qs + 8 * g), o[4 * b + g]);
        }
    }
    UNROLL8 for (int j = 0; j < 4 * m; j++) _mm256_storeu_ps(out + 8 * j, o[j]);
}

static void wsum_q8_avx2(int64_t n, int64_t D, const float *w, const block_q8_0 *V, float *out) {
    const int64_t nb = D / QK;
    for (int64_t b = 0; b < nb; b += 2) {   /* two blocks (64 values) a pass */
        if (nb - b >= 2) wsum_q8_run(n, nb, w, V + b, out + b * QK, 2);
        else wsum_q8_run(n, nb, w, V + b, out + b * QK, 1);
    }
}

/* The GQA group's kernels (internal.h clex_gscores_q8_fn, clex_gwsum_q8_fn): up to three heads
 * against each key (value) block, whose codes are loaded and made unsigned (converted) and whose
 * scale is converted once. Each head's arithmetic is the per-head kernel's step for step:
 * block_lanes' chain per key over the blocks, totals4 per four keys, total for the last n % 4;
 * so the same bits. */
static inline int head_step3(int64_t left) { return left == 4 ? 2 : left > 3 ? 3 : (int)left; }

#define G3_CASES(CALL) \
    switch (G) { case 3: CALL(3); break; case 2: CALL(2); break; default: CALL(1); break; }

/* one key block against G heads' query blocks b (rows nb blocks apart): a[h] += its lanes */
#define GBLOCK(G, kb, q, nb, b, a)                                                              \
    do {                                                                                        \
        const __m256i kq_ = _mm256_loadu_si256((const __m256i *)(kb)->qs);                     \
        const __m256i ku_ = _mm256_abs_epi8(kq_);                                               \
        const float dk_ = _cvtsh_ss((kb)->d);                                                   \
        UNROLL8 for (int h_ = 0; h_ < (G); h_++) {                                              \
            const block_q8_0 *qb_ = (q) + h_ * (nb) + (b);                                      \
            const __m256i qv_ = _mm256_loadu_si256((const __m256i *)qb_->qs);                   \
            const __m256i p16_ = _mm256_maddubs_epi16(ku_, _mm256_sign_epi8(qv_, kq_));         \
            const __m256i p32_ = _mm256_madd_epi16(p16_, _mm256_set1_epi16(1));                 \
            (a)[h_] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32_), _mm256_set1_ps(dk_ * _cvtsh_ss(qb_->d)), (a)[h_]); \
        }                                                                                       \
    } while (0)

static inline __attribute__((always_inline)) void gscores_q8_body(int G, int64_t n, int64_t nb, const block_q8_0 *q,
                                                                   const block_q8_0 *K, float scale, float *s,
                                                                   int64_t sstride) {
    const __m128 vs = _mm_set1_ps(scale);
    int64_t p = 0;
    for (; p + 4 <= n; p += 4) {
        const block_q8_0 *k = K + p * nb;
        __m256 a[4][3];   /* [key][head] */
        UNROLL8 for (int j = 0; j < 4; j++)
            UNROLL8 for (int h = 0; h < G; h++) a[j][h] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++)
            UNROLL8 for (int j = 0; j < 4; j++) GBLOCK(G, k + j * nb + b, q, nb, b, a[j]);
        UNROLL8 for (int h = 0; h < G; h++)
            _mm_storeu_ps(s + h * sstride + p, _mm_mul_ps(totals4(a[0][h], a[1][h], a[2][h], a[3][h]), vs));
    }
    for (; p < n; p++) {
        __m256 a[3];
        UNROLL8 for (int h = 0; h < G; h++) a[h] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) GBLOCK(G, K + p * nb + b, q, nb, b, a);
        UNROLL8 for (int h = 0; h < G; h++) s[h * sstride + p] = total(a[h]) * scale;
    }
}

static void gscores_q8_avx2(int64_t g, int64_t n, int64_t D, const block_q8_0 *q, const block_q8_0 *K, float scale,
                            float *s) {
    const int64_t nb = D / QK;
    for (int64_t h = 0; h < g;) {
        const int G = head_step3(g - h);
        const block_q8_0 *qh = q + h * nb;
        float *sh = s + h * n;
        if (nb == 2) {   /* head_dim 64, 128: constant block counts */
#define GQ8_CALL(GG) gscores_q8_body(GG, n, 2, qh, K, scale, sh, n)
            G3_CASES(GQ8_CALL)
#undef GQ8_CALL
        } else if (nb == 4) {
#define GQ8_CALL(GG) gscores_q8_body(GG, n, 4, qh, K, scale, sh, n)
            G3_CASES(GQ8_CALL)
#undef GQ8_CALL
        } else {
#define GQ8_CALL(GG) gscores_q8_body(GG, n, nb, qh, K, scale, sh, n)
            G3_CASES(GQ8_CALL)
#undef GQ8_CALL
        }
        h += G;
    }
}

/* G heads' outputs over block b of the rows (32 values, four vectors): its codes converted once,
 * added with weight w[h][p] * its scale, as wsum_q8_run adds them */
static inline __attribute__((always_inline)) void gwsum_q8_body(int G, int64_t n, int64_t nb, const float *w,
                                                                 const block_q8_0 *V, float *out, int64_t ostride) {
    __m256 o[3][4];
    UNROLL8 for (int h = 0; h < G; h++)
        UNROLL8 for (int j = 0; j < 4; j++) o[h][j] = _mm256_loadu_ps(out + h * ostride + 8 * j);
    for (int64_t p = 0; p < n; p++) {
        const block_q8_0 *v = V + p * nb;
        const float d = _cvtsh_ss(v->d);
        __m256 a[3];
        UNROLL8 for (int h = 0; h < G; h++) a[h] = _mm256_set1_ps(w[h * n + p] * d);
        UNROLL8 for (int j = 0; j < 4; j++) {
            const __m256 x = codes8(v->qs + 8 * j);
            UNROLL8 for (int h = 0; h < G; h++) o[h][j] = _mm256_fmadd_ps(a[h], x, o[h][j]);
        }
    }
    UNROLL8 for (int h = 0; h < G; h++)
        UNROLL8 for (int j = 0; j < 4; j++) _mm256_storeu_ps(out + h * ostride + 8 * j, o[h][j]);
}

static void gwsum_q8_avx2(int64_t g, int64_t n, int64_t D, const float *w, const block_q8_0 *V, float *out,
                          int64_t ostride) {
    const int64_t nb = D / QK;
    for (int64_t h = 0; h < g;) {
        const int G = head_step3(g - h);
        for (int64_t b = 0; b < nb; b++) {
#define GQ8_CALL(GG) gwsum_q8_body(GG, n, nb, w + h * n, V + b, out + h * ostride + b * QK, ostride)
            G3_CASES(GQ8_CALL)
#undef GQ8_CALL
        }
        h += G;
    }
}

static const clex_kernels avx2_attn = {
    .scores_q8 = scores_q8_avx2,
    .wsum_q8 = wsum_q8_avx2,
    .gscores_q8 = gscores_q8_avx2,
    .gwsum_q8 = gwsum_q8_avx2,
};

const clex_kernels *clex_kernels_avx2_attn(void) { return &avx2_attn; }

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
