/* AVX2 + FMA + F16C kernels of the 32-value types of the K-quant files: Q5_0 and IQ4_NL
 * against Q8_0 activations, Q5_1 against Q8_1 (x86_k.h says what they hold to); and, in the
 * same scheme, those of Q8_0 and Q4_0.
 *
 * The signed types (signed32_body.h) take the sign trick (|w| unsigned, w's sign moved onto x)
 * into maddubs; Q5_1's codes are unsigned and its minimum meets the activations'
 * s = d * sum(q). */
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

INLINE float h2f(clex_fp16 h) { return _cvtsh_ss(h); }
INLINE __m256i ld(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 32 signed weights . one Q8_0 block of activations (the sign trick into maddubs): the pair sums
 * as 8 int32 lanes */
typedef struct {
    __m256i aw, wq;     /* |w|, w */
} s32w;

INLINE s32w s32_prep(__m256i wq) { return (s32w){_mm256_sign_epi8(wq, wq), wq}; }

INLINE __m256i s32_dot(const s32w *w, const int8_t *x) {
    const __m256i p = _mm256_maddubs_epi16(w->aw, _mm256_sign_epi8(ld(x), w->wq));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

#include "signed32_body.h"

#define Q5_0_ROWS(n, s, w, x, R) signed32_rows(n, s, w, x, R, W_Q5_0)
#define IQ4_NL_ROWS(n, s, w, x, R) signed32_rows(n, s, w, x, R, W_IQ4_NL)
#define Q8_0_ROWS(n, s, w, x, R) signed32_rows(n, s, w, x, R, W_Q8_0)
#define Q4_0_ROWS(n, s, w, x, R) signed32_rows(n, s, w, x, R, W_Q4_0)
CLEX_X86_K_DEFINE(clex_avx2, Q5_0, block_q8_0, Q5_0_ROWS)
CLEX_X86_K_DEFINE(clex_avx2, IQ4_NL, block_q8_0, IQ4_NL_ROWS)
CLEX_X86_K_DEFINE(clex_avx2, Q8_0, block_q8_0, Q8_0_ROWS)
CLEX_X86_K_DEFINE(clex_avx2, Q4_0, block_q8_0, Q4_0_ROWS)

/* Q5_1: d * q + m against Q8_1: (d * xd) * sum(q x) + m * xs; block i into accumulator c */
INLINE void q5_1_block(const block_q5_1 *w, int64_t i, const block_q8_1 *const *x, int R, __m256 acc[][2],
                       float *accm, int c) {
    const __m256i u = _mm256_or_si256(nibbles(w[i].qs), _mm256_and_si256(bit_bytes(w[i].qh), _mm256_set1_epi8(16)));
    const float wd = h2f(w[i].d), wm = h2f(w[i].m);
    CLEX_UNROLL for (int j = 0; j < R; j++) {
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, ld(x[j][i].qs)), _mm256_set1_epi16(1));
        acc[j][c] = _mm256_fmadd_ps(_mm256_set1_ps(wd * x[j][i].d), _mm256_cvtepi32_ps(p), acc[j][c]);
        accm[j] += wm * x[j][i].s;
    }
}

INLINE void q5_1_rows(int64_t n, float *s, const void *vw, const block_q8_1 *const *x, int R) {
    const block_q5_1 *w = vw;
    const int64_t nb = n / QK;
    __m256 acc[4][2];
    float accm[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) {
        acc[j][0] = acc[j][1] = _mm256_setzero_ps();
        accm[j] = 0.0f;
    }
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        q5_1_block(w, i, x, R, acc, accm, 0);
        q5_1_block(w, i + 1, x, R, acc, accm, 1);
    }
    if (i < nb) q5_1_block(w, i, x, R, acc, accm, 0);
    CLEX_UNROLL for (int j = 0; j < R; j++) s[j] = hsum8(_mm256_add_ps(acc[j][0], acc[j][1])) + accm[j];
}

CLEX_X86_K_DEFINE(clex_avx2, Q5_1, block_q8_1, q5_1_rows)

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
