/* The AVX2 K-quant kernels' shared pieces (avx2_k.c's one-row and four-token kernels,
 * avx2_dot4w.c's four-weight-row ones): loads, the pair sums times int16 scales, the scale
 * selection, the float scaling, Q4_K / Q5_K's scales and Q6_K's codes. One definition, so that
 * every kernel built on them sums a row with the same integer lanes and float operations.
 * Included after internal.h and x86_k.h, with AVX2, FMA and F16C enabled. */
#ifndef CLEXRT_AVX2_KUNPACK_H
#define CLEXRT_AVX2_KUNPACK_H

#define INLINE static inline __attribute__((always_inline))

INLINE float h2f(clex_fp16 h) { return _cvtsh_ss(h); }
INLINE __m256i ld(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
INLINE __m128i ld16(const void *p) { return _mm_loadu_si128((const __m128i *)p); }

INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 32 unsigned codes . 32 activation bytes, times the int16 scales v per pair: 8 int32 */
INLINE __m256i dot_scaled(__m256i u, const int8_t *x, __m256i v) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, ld(x)), v);
}

/* int16 lane j of a register whose two halves are alike, in all 16 lanes */
INLINE __m256i lane16(__m256i v, int j) {
    return _mm256_shuffle_epi8(v, _mm256_set1_epi16((short)(0x0100 + 0x0202 * j)));
}

/* Sub-blocks of 16 (Q2_K, Q3_K, Q6_K): the scales of 32 values, sub-blocks 2c and 2c + 1, one
 * per 128-bit half, from `half`: the 8 int16 scales of c's half of the super-block in both
 * halves of the register */
INLINE __m256i pair16(__m256i half, int c) {
    const int q = c & 3;
    return _mm256_shuffle_epi8(half, _mm256_setr_m128i(_mm_set1_epi16((short)(0x0100 + 0x0404 * q)),
                                                       _mm_set1_epi16((short)(0x0302 + 0x0404 * q))));
}

/* acc += (wd * xd) * isum */
INLINE __m256 fscale(__m256 acc, float wd, float xd, __m256i isum) {
    return _mm256_fmadd_ps(_mm256_set1_ps(wd * xd), _mm256_cvtepi32_ps(isum), acc);
}

/* the 8 6-bit scales (bytes 0..7) and minimums (bytes 8..15) of a Q4_K / Q5_K super-block:
 * quants_k.c's k4_scale_min for all j at once, on the 12 bytes as three little-endian words */
INLINE __m128i k4_scales(const uint8_t s[K_SCALE_SIZE]) {
    uint32_t u[3];
    memcpy(u, s, sizeof u);
    const uint32_t m6 = 0x3F3F3F3F, m4 = 0x0F0F0F0F, m2 = 0x03030303;
    return _mm_setr_epi32((int)(u[0] & m6), (int)((u[2] & m4) | ((u[0] >> 6) & m2) << 4),
                          (int)(u[1] & m6), (int)(((u[2] >> 4) & m4) | ((u[1] >> 6) & m2) << 4));
}

/* Each half of 128 values: ql bytes A = [0, 32), B = [32, 64) and qh bytes H = [0, 32) of the
 * half; values 32q + l have the nibble (q < 2: low, else high) of (q odd ? B : A)[l] and bits
 * 2q, 2q + 1 of H[l] as bits 4, 5. Codes u - 32: the -32 through the bsums. */
INLINE void q6k_codes(const uint8_t *ql, const uint8_t *qh, __m256i u[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x30);
    const __m256i a = ld(ql), b = ld(ql + 32), h = ld(qh);
    u[0] = _mm256_or_si256(_mm256_and_si256(a, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m2));
    u[1] = _mm256_or_si256(_mm256_and_si256(b, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m2));
    u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), m4), _mm256_and_si256(h, m2));
    u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b, 4), m4),
                           _mm256_and_si256(_mm256_srli_epi16(h, 2), m2));
}

#endif
