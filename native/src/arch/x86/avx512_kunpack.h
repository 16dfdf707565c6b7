/* The AVX-512 VNNI K-quant kernels' shared pieces (avx512_k.c's one-row and four-token
 * kernels, avx512_dot4w.c's four-weight-row ones): loads, the unpacking of Q4_K / Q5_K / Q6_K
 * super-blocks into 64 codes per register in the activations' order, their int16 scales, and
 * the float scaling of a super-block's integer sums. One definition, so that every kernel built
 * on them sums each row with the same integer lanes and the same float operations. Included
 * after internal.h and x86_k.h, with AVX-512 F/BW/VL/DQ + VNNI enabled. */
#ifndef CLEXRT_AVX512_KUNPACK_H
#define CLEXRT_AVX512_KUNPACK_H

#define INLINE static inline __attribute__((always_inline))

INLINE float h2f(clex_fp16 h) { return _cvtsh_ss(h); }
INLINE __m512i ld64(const void *p) { return _mm512_loadu_si512(p); }
INLINE __m256i ld32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
INLINE __m128i ld16(const void *p) { return _mm_loadu_si128((const __m128i *)p); }
INLINE __m512i bcast32(const void *p) { return _mm512_broadcast_i64x4(ld32(p)); }

/* 32 bytes of nibbles: the low nibbles in the low half, the high ones in the high half */
INLINE __m512i nib64(const uint8_t *p) {
    const __m512i q = bcast32(p);
    return _mm512_and_si512(_mm512_mask_srli_epi16(q, 0xFFFF0000u, q, 4), _mm512_set1_epi8(0x0F));
}

/* the byte a in the low half, b in the high half */
INLINE __m512i halves8(int a, int b) {
    return _mm512_mask_blend_epi8(0xFFFFFFFF00000000ull, _mm512_set1_epi8((char)a), _mm512_set1_epi8((char)b));
}

/* int16 scales for 64 values: sub-blocks of 32 (lanes 2k, 2k + 1 of sc) or of 16 (4c .. 4c + 3) */
INLINE __m512i scales32(__m512i sc, int k) {
    const __m512i idx = _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16((short)(2 * k)), _mm512_set1_epi16((short)(2 * k + 1)));
    return _mm512_permutexvar_epi16(idx, sc);
}
INLINE __m512i scales16(__m512i sc, int c) {
    const long long w = 0x0001000100010001ll;
    const __m512i idx = _mm512_add_epi16(_mm512_set_epi64(3 * w, 3 * w, 2 * w, 2 * w, w, w, 0, 0), _mm512_set1_epi16((short)(4 * c)));
    return _mm512_permutexvar_epi16(idx, sc);
}

/* acc += maddubs(u, x) . v  (int16 pairs times int16 scales, into int32) */
INLINE __m512i dot_scaled(__m512i acc, __m512i u, const int8_t *x, __m512i v) {
    return _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(u, ld64(x)), v);
}

INLINE __m512 fscale(__m512 acc, float wd, float xd, __m512i isum) {
    return _mm512_fmadd_ps(_mm512_set1_ps(wd * xd), _mm512_cvtepi32_ps(isum), acc);
}

/* the super-block scale and minimum scale [d, dmin] (adjacent fp16) as floats in lanes 0, 1 */
INLINE __m128 load_dmin(const clex_fp16 *dm) {
    uint32_t u;
    memcpy(&u, dm, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)u));
}

/* acc += (d xd) isum - (dmin xd) msum in one conversion and one multiply-add: isum's 16 lanes
 * folded to 8 beside -msum's 8, the two scales [d, dmin] xd spread beside each other */
INLINE __m512 fscale_min(__m512 acc, __m128 wdm, float xd, __m512i isum, __m256i msum) {
    const __m256i i8 = _mm256_add_epi32(_mm512_castsi512_si256(isum), _mm512_extracti64x4_epi64(isum, 1));
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(i8), _mm256_sub_epi32(_mm256_setzero_si256(), msum), 1);
    const __m512i idx = _mm512_mask_blend_epi32(0xFF00, _mm512_setzero_si512(), _mm512_set1_epi32(1));
    const __m512 sc = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_mul_ps(wdm, _mm_set1_ps(xd))));
    return _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(both), acc);
}

INLINE void finish(float *s, const __m512 *acc, int R) {
    CLEX_UNROLL for (int j = 0; j < R; j++) s[j] = _mm512_reduce_add_ps(acc[j]);
}


/* avx2_k.c's k4_scales: scales in bytes 0..7, minimums in 8..15 */
INLINE __m128i k4_scales(const uint8_t s[K_SCALE_SIZE]) {
    uint32_t u[3];
    memcpy(u, s, sizeof u);
    const uint32_t m6 = 0x3F3F3F3F, m4 = 0x0F0F0F0F, m2 = 0x03030303;
    return _mm_setr_epi32((int)(u[0] & m6), (int)((u[2] & m4) | ((u[0] >> 6) & m2) << 4),
                          (int)(u[1] & m6), (int)(((u[2] >> 4) & m4) | ((u[1] >> 6) & m2) << 4));
}

/* the 4 registers of codes of a Q4_K / Q5_K super-block and their scales */
INLINE void k45_unpack(const uint8_t *qs, const uint8_t *qh, __m512i sc, int five, __m512i u[4], __m512i v[4]) {
    const __m512i hb = five ? bcast32(qh) : _mm512_setzero_si512();
    CLEX_UNROLL for (int k = 0; k < 4; k++) {
        u[k] = nib64(qs + 32 * k);
        if (five) u[k] = _mm512_mask_add_epi8(u[k], _mm512_test_epi8_mask(hb, halves8(1 << (2 * k), 1 << (2 * k + 1))),
                                              u[k], _mm512_set1_epi8(16));
        v[k] = scales32(sc, k);
    }
}

/* avx2_k.c's layout: per half of 128 values, ql bytes [0, 64) give the low nibbles of values
 * 0..63 and the high nibbles of 64..127; qh byte l gives bits 4, 5 of values l, 32 + l, 64 + l,
 * 96 + l from its bit pairs 0, 1, 2, 3 */
INLINE void q6k_unpack(const block_q6_K *b, __m512i u[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x30);
    CLEX_UNROLL for (int h = 0; h < 2; h++) {
        const __m512i q = ld64(b->ql + 64 * h), hb = bcast32(b->qh + 32 * h);
        const __m512i t = _mm512_mask_srli_epi16(hb, 0xFFFF0000u, hb, 2);
        u[2 * h] = _mm512_or_si512(_mm512_and_si512(q, m4), _mm512_and_si512(_mm512_slli_epi16(t, 4), m2));
        u[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(q, 4), m4), _mm512_and_si512(t, m2));
    }
}

#endif
