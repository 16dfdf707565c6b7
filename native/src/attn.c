/* Attention kernels over the KV cache, for both cache types (f32, f16):
 *   scores: s[p] = scale * (q . K[p]) for n keys (rows of D),
 *   wsum:   out += sum_p w[p] * V[p],
 * and the row conversions to and from f16 the cache writes and re-rotations need. One call covers
 * a whole run of keys, so the per-key cost is the arithmetic, not a call and a horizontal sum per
 * key: scores reduce four keys at a time, wsum keeps its output in registers. A scalar reference,
 * and AVX2+FMA+F16C versions chosen when the dispatched ISA is AVX2 or AVX-512. Arithmetic is
 * float32 throughout; an f16 cache only rounds what it stores. */
#include "internal.h"

static void scores32_ref(int64_t n, int64_t D, const float *q, const float *K, float scale, float *s) {
    for (int64_t p = 0; p < n; p++) {
        float acc = 0.0f;
        for (int64_t i = 0; i < D; i++) acc += q[i] * K[p * D + i];
        s[p] = acc * scale;
    }
}

static void scores16_ref(int64_t n, int64_t D, const float *q, const clex_fp16 *K, float scale, float *s) {
    for (int64_t p = 0; p < n; p++) {
        float acc = 0.0f;
        for (int64_t i = 0; i < D; i++) acc += q[i] * clex_fp16_to_fp32(K[p * D + i]);
        s[p] = acc * scale;
    }
}

static void wsum32_ref(int64_t n, int64_t D, const float *w, const float *V, float *out) {
    for (int64_t p = 0; p < n; p++)
        for (int64_t i = 0; i < D; i++) out[i] += w[p] * V[p * D + i];
}

static void wsum16_ref(int64_t n, int64_t D, const float *w, const clex_fp16 *V, float *out) {
    for (int64_t p = 0; p < n; p++)
        for (int64_t i = 0; i < D; i++) out[i] += w[p] * clex_fp16_to_fp32(V[p * D + i]);
}

static void to_f16_ref(const float *x, clex_fp16 *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = clex_fp32_to_fp16(x[i]);
}

static void from_f16_ref(const clex_fp16 *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = clex_fp16_to_fp32(x[i]);
}

#ifdef CLEX_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#include <immintrin.h>

static inline __m256 ld32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 ld16(const clex_fp16 *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* four 8-lane sums -> their four totals */
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    const __m256 abcd = _mm256_hadd_ps(ab, cd);   /* [a b c d | a b c d] halves */
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

static inline float hsum1(__m256 a) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* D a multiple of 8 (head dims are); other D go to the reference */
#define SCORES(NAME, T, LD, REF)                                                                \
static void NAME(int64_t n, int64_t D, const float *q, const T *K, float scale, float *s) {     \
    if (D % 8) { REF(n, D, q, K, scale, s); return; }                                          \
    const __m128 vs = _mm_set1_ps(scale);                                                       \
    int64_t p = 0;                                                                              \
    for (; p + 4 <= n; p += 4) {                                                                \
        const T *k0 = K + p * D, *k1 = k0 + D, *k2 = k1 + D, *k3 = k2 + D;                    \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                             \
        for (int64_t i = 0; i < D; i += 8) {                                                    \
            const __m256 qi = _mm256_loadu_ps(q + i);                                           \
            a0 = _mm256_fmadd_ps(qi, LD(k0 + i), a0);                                           \
            a1 = _mm256_fmadd_ps(qi, LD(k1 + i), a1);                                           \
            a2 = _mm256_fmadd_ps(qi, LD(k2 + i), a2);                                           \
            a3 = _mm256_fmadd_ps(qi, LD(k3 + i), a3);                                           \
        }                                                                                       \
        _mm_storeu_ps(s + p, _mm_mul_ps(hsum4(a0, a1, a2, a3), vs));                            \
    }                                                                                           \
    for (; p < n; p++) {                                                                        \
        __m256 a = _mm256_setzero_ps();                                                         \
        for (int64_t i = 0; i < D; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), LD(K + p * D + i), a); \
        s[p] = hsum1(a) * scale;                                                                \
    }                                                                                           \
}

/* the output in registers, 64 elements (8 vectors) at a time */
#define WSUM(NAME, T, LD, REF)                                                                  \
static void NAME(int64_t n, int64_t D, const float *w, const T *V, float *out) {                \
    if (D % 8) { REF(n, D, w, V, out); return; }                                               \
    for (int64_t d0 = 0; d0 < D; d0 += 64) {                                                    \
        const int64_t m = D - d0 < 64 ? (D - d0) / 8 : 8;                                       \
        __m256 o[8];                                                                            \
        for (int64_t j = 0; j < m; j++) o[j] = _mm256_loadu_ps(out + d0 + 8 * j);               \
        for (int64_t p = 0; p < n; p++) {                                                       \
            const __m256 wp = _mm256_set1_ps(w[p]);                                             \
            const T *v = V + p * D + d0;                                                        \
            for (int64_t j = 0; j < m; j++) o[j] = _mm256_fmadd_ps(wp, LD(v + 8 * j), o[j]);    \
        }                                                                                       \
        for (int64_t j = 0; j < m; j++) _mm256_storeu_ps(out + d0 + 8 * j, o[j]);               \
    }                                                                                           \
}

SCORES(scores32_avx2, float, ld32, scores32_ref)
SCORES(scores16_avx2, clex_fp16, ld16, scores16_ref)
WSUM(wsum32_avx2, float, ld32, wsum32_ref)
WSUM(wsum16_avx2, clex_fp16, ld16, wsum16_ref)

static void to_f16_avx2(const float *x, clex_fp16 *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = clex_fp32_to_fp16(x[i]);
}

static void from_f16_avx2(const clex_fp16 *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, ld16(x + i));
    for (; i < n; i++) y[i] = clex_fp16_to_fp32(x[i]);
}

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
#endif

clex_attn_ops clex_attn_ops_for(int isa) {
    clex_attn_ops o = {scores32_ref, scores16_ref, wsum32_ref, wsum16_ref, to_f16_ref, from_f16_ref};
#ifdef CLEX_X86
    if (isa == CLEX_ISA_AVX2 || isa == CLEX_ISA_AVX512)
        o = (clex_attn_ops){scores32_avx2, scores16_avx2, wsum32_avx2, wsum16_avx2, to_f16_avx2, from_f16_avx2};
#else
    (void)isa;
#endif
    return o;
}
