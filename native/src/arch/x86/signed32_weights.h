/* The signed 32-value types' weights of one block as 32 bytes in a 256-bit register
 * (signed32_body.h's kernels, the tile kernels' packing): included after INLINE and ld (a 32-byte
 * load) are defined, with AVX2 enabled. */

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

/* the signed int8 weights of block i (x86_k.h's kinds): Q8_0 as they are, Q4_0 nibble - 8,
 * Q5_0 code - 16, IQ4_NL levels */
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
