/* AVX2 + FMA + F16C kernels of the 32-value types of the K-quant files: Q5_0 and IQ4_NL
 * against Q8_0 activations, Q5_1 against Q8_1 (x86_k.h says what they hold to); and, in the
 * same scheme, those of Q8_0 and Q4_0.
 *
 * A block unpacks into 32 bytes in the activations' order: nibbles by and/shift, the fifth bits
 * (bit j of qh is value j's) spread to bytes by a pshufb of the word and a compare with each
 * byte's bit, IQ4_NL's levels by a pshufb lookup. Signed weights (Q5_0, IQ4_NL) take the sign
 * trick (|w| unsigned, w's sign moved onto x) into maddubs; Q5_1's codes are unsigned and its
 * minimum meets the activations' s = d * sum(q). The signed types' block scales are converted
 * eight at a time. Two accumulators per row alternate blocks, so one row does not wait on each
 * multiply-add. */
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

/* 16 bytes of nibbles -> 32 bytes: values 0..15 (low nibbles), then 16..31 */
INLINE __m256i nibbles(const uint8_t *qs) {
    const __m128i q = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m));
}

/* bit j of the little-endian word at p as byte j: 0xFF where set, else 0 */
INLINE __m256i bit_bytes(const uint8_t *p) {
    uint32_t b;
    memcpy(&b, p, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)b),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, sel), sel);
}

/* 32 signed weights . one Q8_0 block of activations: the pair sums as 8 int32 lanes */
INLINE __m256i dot_signed(__m256i aw, __m256i wq, const int8_t *x) {
    const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(ld(x), wq));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* The scales d(w) * d(x) of 8 blocks at a time: the fp16 fields gathered four to a 64-bit word
 * in general-purpose registers, converted with one instruction and multiplied once; each block
 * then takes its lane with one permute. */

/* the fp16 fields at p + k * stride, k < cnt (zero beyond); no early exit, so that with a
 * constant cnt the loop unrolls into straight code */
INLINE __m256 block_scales8(const void *p, size_t stride, int cnt) {
    uint64_t q[2] = {0, 0};
    CLEX_UNROLL for (int k = 0; k < 8; k++) {
        uint16_t h = 0;
        if (k < cnt) memcpy(&h, (const uint8_t *)p + k * stride, 2);
        q[k >> 2] |= (uint64_t)h << (16 * (k & 3));
    }
    return _mm256_cvtph_ps(_mm_set_epi64x((long long)q[1], (long long)q[0]));
}

/* the signed int8 weights of block i: Q8_0 as they are, Q4_0 nibble - 8, Q5_0 code - 16,
 * IQ4_NL levels */
enum { W_Q8_0, W_Q4_0, W_Q5_0, W_IQ4_NL };

INLINE size_t signed_stride(int wt) {
    return wt == W_Q8_0 ? sizeof(block_q8_0) : wt == W_Q5_0 ? sizeof(block_q5_0) : sizeof(block_q4_0);
}

INLINE __m256i signed_weights(const void *vw, int64_t i, int wt) {
    switch (wt) {
    case W_Q8_0: return ld(((const block_q8_0 *)vw)[i].qs);
    case W_Q4_0: return _mm256_sub_epi8(nibbles(((const block_q4_0 *)vw)[i].qs), _mm256_set1_epi8(8));
    case W_Q5_0: {   /* q - 16 = nibble - (fifth bit ? 0 : 16) */
        const block_q5_0 *b = vw;
        return _mm256_sub_epi8(nibbles(b[i].qs), _mm256_andnot_si256(bit_bytes(b[i].qh), _mm256_set1_epi8(16)));
    }
    default:
        return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)clex_iq4nl_levels)),
                                   nibbles(((const block_iq4_nl *)vw)[i].qs));
    }
}

/* blocks i0 .. i0 + cnt - 1 (cnt <= 8) of every row, alternating between two accumulators */
INLINE void signed32_group(const void *w, int64_t i0, int cnt, int wt, const block_q8_0 *const *x, int R,
                           __m256 acc[][2]) {
    const size_t ws = signed_stride(wt);
    const __m256 wd = block_scales8((const uint8_t *)w + i0 * ws, ws, cnt);
    __m256 d8[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) d8[j] = _mm256_mul_ps(wd, block_scales8(&x[j][i0].d, sizeof(block_q8_0), cnt));
    CLEX_UNROLL for (int b = 0; b < 8; b++) {
        if (b < cnt) {
            const __m256i wq = signed_weights(w, i0 + b, wt);
            const __m256i aw = _mm256_sign_epi8(wq, wq);
            CLEX_UNROLL for (int j = 0; j < R; j++) {
                const __m256 d = _mm256_permutevar8x32_ps(d8[j], _mm256_set1_epi32(b));
                acc[j][b & 1] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_signed(aw, wq, x[j][i0 + b].qs)), acc[j][b & 1]);
            }
        }
    }
}

INLINE void signed32_rows(int64_t n, float *s, const void *w, const block_q8_0 *const *x, int R, int wt) {
    const int64_t nb = n / QK;
    __m256 acc[4][2];
    CLEX_UNROLL for (int j = 0; j < R; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    int64_t i0 = 0;
    for (; i0 + 8 <= nb; i0 += 8) signed32_group(w, i0, 8, wt, x, R, acc);
    CLEX_UNROLL for (int g = 4; g >= 1; g /= 2)   /* the rest: each a constant count */
        if ((nb - i0) & g) {
            signed32_group(w, i0, g, wt, x, R, acc);
            i0 += g;
        }
    CLEX_UNROLL for (int j = 0; j < R; j++) s[j] = hsum8(_mm256_add_ps(acc[j][0], acc[j][1]));
}

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
