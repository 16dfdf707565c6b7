/* AVX-512 attention kernels over a Q8_0 KV cache (attn.c has the reference: clex_scores_q8_generic,
 * clex_wsum_q8_generic), laid over avx2_attn.c's. The scores need AVX512-VNNI (without it
 * AVX2's stay: 512-bit maddubs is no faster). Rows are D / 32 blocks, two blocks per register.
 *
 * Scores: each key's codes against the query's with vpdpbusd, which multiplies unsigned by
 * signed bytes. The key goes in as k + 128 (k xor 0x80: exact for every byte, -128 included) and
 * the accumulator starts at -128 * (sum of the query's four codes) per lane, prepared once per
 * call, so each lane ends with the exact integer sum of k * q over its four bytes. Lanes are
 * converted to float and multiplied by dk * dq of their block (the reference's product), eight
 * keys reduced together. Integer sums exact; the float sum differs from the reference's only in
 * order. Weighted sums keep up to 128 output values in registers, each value block converted
 * once and added with weight w[p] * its scale. */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#endif

#include <immintrin.h>

#include "../../internal.h"

#define UNROLL8 _Pragma("GCC unroll 8")
#define MAX_PAIRS 8   /* the prepared query: rows up to 512 values; longer ones take the reference */

/* the query, per pair of blocks (b, b + 1): its codes, the accumulator's start and dq per lane */
typedef struct {
    __m512i q[MAX_PAIRS], corr[MAX_PAIRS];
    __m512 dq[MAX_PAIRS];
    int64_t nb, np;   /* blocks, pairs (the last pair of an odd count is half a pair) */
} query8;

/* codes of blocks b and b + 1 of x (zeros for b + 1 == nb) */
static inline __m512i codes2(const block_q8_0 *x, int64_t b, int64_t nb) {
    const __m256i lo = _mm256_loadu_si256((const __m256i *)x[b].qs);
    const __m256i hi = b + 1 < nb ? _mm256_loadu_si256((const __m256i *)x[b + 1].qs) : _mm256_setzero_si256();
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* the scales of blocks b and b + 1 (0 past nb), each over its half of the lanes */
static inline __m512 scales2(const block_q8_0 *x, int64_t b, int64_t nb) {
    __m128i h = _mm_cvtsi32_si128(x[b].d);
    if (b + 1 < nb) h = _mm_insert_epi16(h, x[b + 1].d, 1);
    const __m512 f = _mm512_castps128_ps512(_mm_cvtph_ps(h));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), f);
}

static void query_prepare(query8 *qp, const block_q8_0 *q, int64_t nb) {
    qp->nb = nb;
    qp->np = (nb + 1) / 2;
    for (int64_t i = 0; i < qp->np; i++) {
        qp->q[i] = codes2(q, 2 * i, nb);
        qp->corr[i] = _mm512_sub_epi32(_mm512_setzero_si512(),
                                       _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), qp->q[i]));
        qp->dq[i] = scales2(q, 2 * i, nb);
    }
}

/* one key row's per-lane partial sums of the score (before the total and `scale`) */
static inline __m512 key_lanes(const block_q8_0 *k, const query8 *qp) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512 a = _mm512_setzero_ps();
    for (int64_t i = 0; i < qp->np; i++) {
        const __m512i ku = _mm512_xor_si512(codes2(k, 2 * i, qp->nb), flip);
        const __m512i dot = _mm512_dpbusd_epi32(qp->corr[i], ku, qp->q[i]);
        a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(scales2(k, 2 * i, qp->nb), qp->dq[i]), a);
    }
    return a;
}

/* eight 16-lane sums -> their eight totals */
static inline __m256 totals8(const __m512 a[8]) {
    __m256 h[8];
    UNROLL8 for (int j = 0; j < 8; j++) h[j] = _mm256_add_ps(_mm512_castps512_ps256(a[j]), _mm512_extractf32x8_ps(a[j], 1));
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* inline, so that a constant nb unrolls the pairs and keeps the query in registers */
static inline __attribute__((always_inline)) void scores_q8_body(int64_t n, int64_t nb, const block_q8_0 *q,
                                                                  const block_q8_0 *K, float scale, float *s) {
    query8 qp;
    query_prepare(&qp, q, nb);
    const __m256 vs = _mm256_set1_ps(scale);
    int64_t p = 0;
    for (; p + 8 <= n; p += 8) {
        __m512 a[8];
        UNROLL8 for (int j = 0; j < 8; j++) a[j] = key_lanes(K + (p + j) * nb, &qp);
        _mm256_storeu_ps(s + p, _mm256_mul_ps(totals8(a), vs));
    }
    for (; p < n; p++) s[p] = _mm512_reduce_add_ps(key_lanes(K + p * nb, &qp)) * scale;
}

static void scores_q8_avx512(int64_t n, int64_t D, const block_q8_0 *q, const block_q8_0 *K, float scale, float *s) {
    const int64_t nb = D / QK;
    if (nb == 2) scores_q8_body(n, 2, q, K, scale, s);         /* head_dim 64 */
    else if (nb == 4) scores_q8_body(n, 4, q, K, scale, s);    /* 128 */
    else if (nb <= 2 * MAX_PAIRS) scores_q8_body(n, nb, q, K, scale, s);
    else clex_scores_q8_generic(n, D, q, K, scale, s);
}

/* The GQA group's kernels (internal.h clex_gscores_q8_fn, clex_gwsum_q8_fn): up to four heads
 * against each key (value) row, whose codes are loaded, flipped (converted) and whose scales are
 * converted once. Each head's arithmetic is the per-head kernel's, step for step: key_lanes' chain
 * per key, totals8's tree per eight keys (formed as two halves of four, as totals8 does: u0 from
 * keys 0-3, u1 from 4-7), _mm512_reduce_add_ps for the last n % 8; so the same bits. */
static inline __attribute__((always_inline)) void gscores_q8_body(int G, int64_t n, int64_t nb, const query8 *qp,
                                                                   const block_q8_0 *K, float scale, float *s,
                                                                   int64_t sstride) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int64_t np = (nb + 1) / 2;
    const __m256 vs = _mm256_set1_ps(scale);
    int64_t p = 0;
    for (; p + 8 <= n; p += 8) {
        __m256 u[2][4];
        UNROLL8 for (int half = 0; half < 2; half++) {
            __m512 a[4][4];
            UNROLL8 for (int h = 0; h < G; h++)
                UNROLL8 for (int j = 0; j < 4; j++) a[h][j] = _mm512_setzero_ps();
            for (int64_t i = 0; i < np; i++) {
                UNROLL8 for (int j = 0; j < 4; j++) {
                    const block_q8_0 *k = K + (p + 4 * half + j) * nb;
                    const __m512i ku = _mm512_xor_si512(codes2(k, 2 * i, nb), flip);
                    const __m512 sk = scales2(k, 2 * i, nb);
                    UNROLL8 for (int h = 0; h < G; h++) {
                        const __m512i dot = _mm512_dpbusd_epi32(qp[h].corr[i], ku, qp[h].q[i]);
                        a[h][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(sk, qp[h].dq[i]), a[h][j]);
                    }
                }
            }
            UNROLL8 for (int h = 0; h < G; h++) {
                __m256 t[4];
                UNROLL8 for (int j = 0; j < 4; j++)
                    t[j] = _mm256_add_ps(_mm512_castps512_ps256(a[h][j]), _mm512_extractf32x8_ps(a[h][j], 1));
                u[half][h] = _mm256_hadd_ps(_mm256_hadd_ps(t[0], t[1]), _mm256_hadd_ps(t[2], t[3]));
            }
        }
        UNROLL8 for (int h = 0; h < G; h++) {
            const __m256 tot = _mm256_add_ps(_mm256_permute2f128_ps(u[0][h], u[1][h], 0x20),
                                             _mm256_permute2f128_ps(u[0][h], u[1][h], 0x31));
            _mm256_storeu_ps(s + h * sstride + p, _mm256_mul_ps(tot, vs));
        }
    }
    for (; p < n; p++) {
        __m512 a[4];
        UNROLL8 for (int h = 0; h < G; h++) a[h] = _mm512_setzero_ps();
        for (int64_t i = 0; i < np; i++) {
            const block_q8_0 *k = K + p * nb;
            const __m512i ku = _mm512_xor_si512(codes2(k, 2 * i, nb), flip);
            const __m512 sk = scales2(k, 2 * i, nb);
            UNROLL8 for (int h = 0; h < G; h++) {
                const __m512i dot = _mm512_dpbusd_epi32(qp[h].corr[i], ku, qp[h].q[i]);
                a[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(sk, qp[h].dq[i]), a[h]);
            }
        }
        UNROLL8 for (int h = 0; h < G; h++) s[h * sstride + p] = _mm512_reduce_add_ps(a[h]) * scale;
    }
}

/* heads in groups of four (six: two of three), each group one pass over the keys */
static inline int head_step(int64_t left) { return left == 6 ? 3 : left > 4 ? 4 : (int)left; }

#define GQ8_CASES(CALL) \
    switch (G) { case 4: CALL(4); break; case 3: CALL(3); break; case 2: CALL(2); break; default: CALL(1); break; }

static void gscores_q8_avx512(int64_t g, int64_t n, int64_t D, const block_q8_0 *q, const block_q8_0 *K, float scale,
                              float *s) {
    const int64_t nb = D / QK;
    if (nb > 2 * MAX_PAIRS) {
        for (int64_t h = 0; h < g; h++) clex_scores_q8_generic(n, D, q + h * nb, K, scale, s + h * n);
        return;
    }
    query8 qp[4];
    for (int64_t h = 0; h < g;) {
        const int G = head_step(g - h);
        for (int j = 0; j < G; j++) query_prepare(&qp[j], q + (h + j) * nb, nb);
        float *sh = s + h * n;
        if (nb == 2) {   /* head_dim 64, 128: constant block counts */
#define GQ8_CALL(GG) gscores_q8_body(GG, n, 2, qp, K, scale, sh, n)
            GQ8_CASES(GQ8_CALL)
#undef GQ8_CALL
        } else if (nb == 4) {
#define GQ8_CALL(GG) gscores_q8_body(GG, n, 4, qp, K, scale, sh, n)
            GQ8_CASES(GQ8_CALL)
#undef GQ8_CALL
        } else {
#define GQ8_CALL(GG) gscores_q8_body(GG, n, nb, qp, K, scale, sh, n)
            GQ8_CASES(GQ8_CALL)
#undef GQ8_CALL
        }
        h += G;
    }
}

/* G heads' outputs over blocks [b0, b0 + m) of the rows (m 1 or 2): each block's codes converted
 * once, added with weight w[h][p] * its scale, as wsum_q8_run adds them */
static inline __attribute__((always_inline)) void gwsum_q8_body(int G, int m, int64_t n, int64_t nb, const float *w,
                                                                 const block_q8_0 *V, float *out, int64_t ostride) {
    __m512 o[4][4];
    UNROLL8 for (int h = 0; h < G; h++)
        UNROLL8 for (int j = 0; j < 2 * m; j++) o[h][j] = _mm512_loadu_ps(out + h * ostride + 16 * j);
    for (int64_t p = 0; p < n; p++) {
        const block_q8_0 *v = V + p * nb;
        UNROLL8 for (int b = 0; b < m; b++) {
            const float d = _cvtsh_ss(v[b].d);
            const __m512 x0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)v[b].qs)));
            const __m512 x1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(v[b].qs + 16))));
            UNROLL8 for (int h = 0; h < G; h++) {
                const __m512 a = _mm512_set1_ps(w[h * n + p] * d);
                o[h][2 * b] = _mm512_fmadd_ps(a, x0, o[h][2 * b]);
                o[h][2 * b + 1] = _mm512_fmadd_ps(a, x1, o[h][2 * b + 1]);
            }
        }
    }
    UNROLL8 for (int h = 0; h < G; h++)
        UNROLL8 for (int j = 0; j < 2 * m; j++) _mm512_storeu_ps(out + h * ostride + 16 * j, o[h][j]);
}

static void gwsum_q8_avx512(int64_t g, int64_t n, int64_t D, const float *w, const block_q8_0 *V, float *out,
                            int64_t ostride) {
    const int64_t nb = D / QK;
    for (int64_t h = 0; h < g;) {
        const int G = head_step(g - h);
        const float *wh = w + h * n;
        float *oh = out + h * ostride;
        for (int64_t b = 0; b < nb; b += 2) {   /* two blocks (64 values) a pass */
            if (nb - b >= 2) {
#define GQ8_CALL(GG) gwsum_q8_body(GG, 2, n, nb, wh, V + b, oh + b * QK, ostride)
                GQ8_CASES(GQ8_CALL)
#undef GQ8_CALL
            } else {
#define GQ8_CALL(GG) gwsum_q8_body(GG, 1, n, nb, wh, V + b, oh + b * QK, ostride)
                GQ8_CASES(GQ8_CALL)
#undef GQ8_CALL
            }
        }
        h += G;
    }
}

/* out[0 .. 32 m) += sum_p w[p] V[p][...] for the first m blocks of rows of nb blocks: inline, so
 * that a constant m keeps o in registers */
static inline __attribute__((always_inline)) void wsum_q8_run(int64_t n, int64_t nb, const float *w,
                                                               const block_q8_0 *V, float *out, int m) {
    __m512 o[8];
    UNROLL8 for (int j = 0; j < 2 * m; j++) o[j] = _mm512_loadu_ps(out + 16 * j);
    for (int64_t p = 0; p < n; p++) {
        const block_q8_0 *v = V + p * nb;
        UNROLL8 for (int b = 0; b < m; b++) {
            const __m512 a = _mm512_set1_ps(w[p] * _cvtsh_ss(v[b].d));
            const __m512 x0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)v[b].qs)));
            const __m512 x1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(v[b].qs + 16))));
            o[2 * b] = _mm512_fmadd_ps(a, x0, o[2 * b]);
            o[2 * b + 1] = _mm512_fmadd_ps(a, x1, o[2 * b + 1]);
        }
    }
    UNROLL8 for (int j = 0; j < 2 * m; j++) _mm512_storeu_ps(out + 16 * j, o[j]);
}

static void wsum_q8_avx512(int64_t n, int64_t D, const float *w, const block_q8_0 *V, float *out) {
    const int64_t nb = D / QK;
    if (nb == 2) { wsum_q8_run(n, nb, w, V, out, 2); return; }
    if (nb == 4) { wsum_q8_run(n, nb, w, V, out, 4); return; }
    for (int64_t b = 0; b < nb; b += 4) {   /* pieces of four blocks, then what is left */
        switch (nb - b >= 4 ? 4 : nb - b) {
        case 4: wsum_q8_run(n, nb, w, V + b, out + b * QK, 4); break;
        case 3: wsum_q8_run(n, nb, w, V + b, out + b * QK, 3); break;
        case 2: wsum_q8_run(n, nb, w, V + b, out + b * QK, 2); break;
        default: wsum_q8_run(n, nb, w, V + b, out + b * QK, 1); break;
        }
    }
}

static const clex_kernels avx512_attn_vnni = {
    .scores_q8 = scores_q8_avx512,
    .wsum_q8 = wsum_q8_avx512,
    .gscores_q8 = gscores_q8_avx512,
    .gwsum_q8 = gwsum_q8_avx512,
};

/* without VNNI the scores stay AVX2's, and so does their group form */
static const clex_kernels avx512_attn_bw = {
    .wsum_q8 = wsum_q8_avx512,
    .gwsum_q8 = gwsum_q8_avx512,
};

const clex_kernels *clex_kernels_avx512_attn(void) {
    return __builtin_cpu_supports("avx512vnni") ? &avx512_attn_vnni : &avx512_attn_bw;
}

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
