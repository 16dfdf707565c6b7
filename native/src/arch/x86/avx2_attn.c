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

static const clex_kernels avx2_attn = {
    .scores_q8 = scores_q8_avx2,
    .wsum_q8 = wsum_q8_avx2,
};

const clex_kernels *clex_kernels_avx2_attn(void) { return &avx2_attn; }

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
