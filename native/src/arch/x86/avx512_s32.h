/* The signed 32-value types' weights two blocks to a 512-bit register (avx512_k.c's kernels):
 * included after INLINE, ld16 and ld32 are defined, with AVX-512 BW enabled. */
/* the nibbles of blocks a and b: [a low | a high | b low | b high], 16 bytes each */
INLINE __m512i nibbles2(const uint8_t *a, const uint8_t *b) {
    const __m512i q = _mm512_castsi256_si512(_mm256_set_m128i(ld16(b), ld16(a)));
    const __m512i qq = _mm512_shuffle_i64x2(q, q, _MM_SHUFFLE(1, 1, 0, 0));
    return _mm512_and_si512(_mm512_mask_srli_epi16(qq, 0xFF00FF00u, qq, 4), _mm512_set1_epi8(0x0F));
}

INLINE __m512i load2(const void *a, const void *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(ld32(a)), ld32(b), 1);
}

/* the fifth bits of blocks a and b as a byte mask (bit j of qh is value j's) */
INLINE __mmask64 bits2(const uint8_t *qa, const uint8_t *qb) {
    uint32_t a, b;
    memcpy(&a, qa, 4);
    memcpy(&b, qb, 4);
    return _cvtu64_mask64((uint64_t)a | (uint64_t)b << 32);
}

/* the signed int8 weights of blocks i, i1 (x86_k.h's kinds) */
INLINE __m512i signed_weights2(const void *vw, int64_t i, int64_t i1, int wt) {
    switch (wt) {
    case W_Q8_0: return load2(((const block_q8_0 *)vw)[i].qs, ((const block_q8_0 *)vw)[i1].qs);
    case W_Q4_0: {
        const block_q4_0 *b = vw;
        return _mm512_sub_epi8(nibbles2(b[i].qs, b[i1].qs), _mm512_set1_epi8(8));
    }
    case W_Q5_0: {   /* the nibble, minus 16 where the fifth bit is clear */
        const block_q5_0 *b = vw;
        const __m512i nib = nibbles2(b[i].qs, b[i1].qs);
        return _mm512_mask_sub_epi8(nib, _knot_mask64(bits2(b[i].qh, b[i1].qh)), nib, _mm512_set1_epi8(16));
    }
    default: {
        const block_iq4_nl *b = vw;
        return _mm512_shuffle_epi8(_mm512_broadcast_i32x4(ld16(clex_iq4nl_levels)), nibbles2(b[i].qs, b[i1].qs));
    }
    }
}
