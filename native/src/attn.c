/* Attention over an f16 KV cache: q.k with f16 keys, out += a * v with f16 values, and the
 * row conversions the cache writes and re-rotations need. A scalar reference, and F16C+FMA
 * versions for x86 chosen when the dispatched ISA is AVX2 or AVX-512 (both imply F16C here).
 * Products and sums are float32: only the stored keys and values are rounded to half. */
#include "internal.h"

static float dot_f16_ref(int64_t n, const float *q, const clex_fp16 *k) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += q[i] * clex_fp16_to_fp32(k[i]);
    return s;
}

static void axpy_f16_ref(int64_t n, float a, const clex_fp16 *v, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] += a * clex_fp16_to_fp32(v[i]);
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

static inline __m256 ld8(const clex_fp16 *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

static float dot_f16_f16c(int64_t n, const float *q, const clex_fp16 *k) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), ld8(k + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), ld8(k + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), ld8(k + i), s0);
    const __m256 s = _mm256_add_ps(s0, s1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float sum = _mm_cvtss_f32(h);
    for (; i < n; i++) sum += q[i] * clex_fp16_to_fp32(k[i]);
    return sum;
}

static void axpy_f16_f16c(int64_t n, float a, const clex_fp16 *v, float *y) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, ld8(v + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * clex_fp16_to_fp32(v[i]);
}

static void to_f16_f16c(const float *x, clex_fp16 *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = clex_fp32_to_fp16(x[i]);
}

static void from_f16_f16c(const clex_fp16 *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, ld8(x + i));
    for (; i < n; i++) y[i] = clex_fp16_to_fp32(x[i]);
}

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
#endif

clex_kv_f16_ops clex_kv_f16_ops_for(int isa) {
    clex_kv_f16_ops o = {dot_f16_ref, axpy_f16_ref, to_f16_ref, from_f16_ref};
#ifdef CLEX_X86
    if (isa == CLEX_ISA_AVX2 || isa == CLEX_ISA_AVX512)
        o = (clex_kv_f16_ops){dot_f16_f16c, axpy_f16_f16c, to_f16_f16c, from_f16_f16c};
#else
    (void)isa;
#endif
    return o;
}
