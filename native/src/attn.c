/* Attention kernels over the KV cache, scalar reference (see internal.h): scores and weighted
 * value sums over a whole run of keys, for both cache types, and the f16 row conversions. One
 * call covers a run of keys, so the SIMD versions (arch/x86/avx2.c) pay the arithmetic, not a
 * call and a horizontal sum per key. Arithmetic is float32 throughout; an f16 cache only rounds
 * what it stores. */
#include "internal.h"

void clex_scores32_generic(int64_t n, int64_t D, const float *q, const float *K, float scale, float *s) {
    for (int64_t p = 0; p < n; p++) {
        float acc = 0.0f;
        for (int64_t i = 0; i < D; i++) acc += q[i] * K[p * D + i];
        s[p] = acc * scale;
    }
}

void clex_scores16_generic(int64_t n, int64_t D, const float *q, const clex_fp16 *K, float scale, float *s) {
    for (int64_t p = 0; p < n; p++) {
        float acc = 0.0f;
        for (int64_t i = 0; i < D; i++) acc += q[i] * clex_fp16_to_fp32(K[p * D + i]);
        s[p] = acc * scale;
    }
}

void clex_wsum32_generic(int64_t n, int64_t D, const float *w, const float *V, float *out) {
    for (int64_t p = 0; p < n; p++)
        for (int64_t i = 0; i < D; i++) out[i] += w[p] * V[p * D + i];
}

void clex_wsum16_generic(int64_t n, int64_t D, const float *w, const clex_fp16 *V, float *out) {
    for (int64_t p = 0; p < n; p++)
        for (int64_t i = 0; i < D; i++) out[i] += w[p] * clex_fp16_to_fp32(V[p * D + i]);
}

void clex_to_f16_generic(const float *x, clex_fp16 *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = clex_fp32_to_fp16(x[i]);
}

void clex_from_f16_generic(const clex_fp16 *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = clex_fp16_to_fp32(x[i]);
}
