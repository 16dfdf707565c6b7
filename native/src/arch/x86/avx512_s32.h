/* The signed 32-value types' weights two blocks to a 512-bit register, and their fp16 block scales
 * 16 at a time (avx512_k.c's and avx512_dot4w.c's kernels):
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

/* Q4_0 without unpacking: each block's 16 bytes of codes are broadcast to two quarters of the
 * register and masked with 0x0F and 0xF0, so the low quarter holds the codes of values 0..15 and
 * the high one 16 x those of 16..31, both unsigned, in the activations' order. dpbusd takes them
 * against the activations, a second dpbusd takes away the offset (8 x the activations' sum, 128 x
 * in the high quarters), and the high quarters' lanes come down by 1/16 before the final sum
 * (a power of two: the same bits as summing the true values). Fewer operations than nibbles2
 * and the sign trick, which left avx512_k.c's one-row kernel compute-bound. */
/* (Q4_1 takes the same layout: nibble_codes2 works on any two blocks' 16 bytes of codes.) */
INLINE __m512i nibble_codes2(const uint8_t *qa, const uint8_t *qb) {
    const __m512i q = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(ld16(qa)), 0xFF00, ld16(qb));
    const long long lo = 0x0F0F0F0F0F0F0F0FLL, hi = (long long)0xF0F0F0F0F0F0F0F0ULL;
    return _mm512_and_si512(q, _mm512_set_epi64(hi, hi, lo, lo, hi, hi, lo, lo));
}

INLINE __m512i q4_0_codes2(const block_q4_0 *a, const block_q4_0 *b) { return nibble_codes2(a->qs, b->qs); }

/* the offsets of q4_0_codes2's quarters: 8, 16 x 8, 8, 16 x 8 */
INLINE __m512i q4_0_offsets2(void) {
    const long long lo = 0x0808080808080808LL, hi = (long long)0x8080808080808080ULL;
    return _mm512_set_epi64(hi, hi, lo, lo, hi, hi, lo, lo);
}

/* an accumulator of q4_0_codes2's lanes with its high quarters brought down by 1/16 */
INLINE __m512 q4_0_down(__m512 acc) {
    return _mm512_mul_ps(acc, _mm512_setr_ps(1, 1, 1, 1, 0.0625f, 0.0625f, 0.0625f, 0.0625f,
                                             1, 1, 1, 1, 0.0625f, 0.0625f, 0.0625f, 0.0625f));
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

/* The scales d(w) * d(x) of 16 blocks at a time: the fp16 fields gathered four to a 64-bit word
 * in general-purpose registers (no vector port), converted with one instruction, multiplied
 * once; each pair of blocks then takes its two with one permute. */

/* the fp16 fields at p + k * stride, k < cnt (zero beyond), as 16 halves; no early exit, so
 * that with a constant cnt the loop unrolls into straight code */
INLINE uint64_t half_at(const void *p, size_t stride, int k, int cnt) {
    uint16_t h = 0;
    if (k < cnt) memcpy(&h, (const uint8_t *)p + k * stride, 2);
    return h;
}

/* four halves k0 .. k0 + 3 in one word */
INLINE uint64_t halves4(const void *p, size_t stride, int k0, int cnt) {
    return half_at(p, stride, k0, cnt) | half_at(p, stride, k0 + 1, cnt) << 16 |
           half_at(p, stride, k0 + 2, cnt) << 32 | half_at(p, stride, k0 + 3, cnt) << 48;
}

INLINE __m256i halves16(const void *p, size_t stride, int cnt) {
    const __m128i lo = _mm_insert_epi64(_mm_cvtsi64_si128((long long)halves4(p, stride, 0, cnt)),
                                        (long long)halves4(p, stride, 4, cnt), 1);
    const __m128i hi = _mm_insert_epi64(_mm_cvtsi64_si128((long long)halves4(p, stride, 8, cnt)),
                                        (long long)halves4(p, stride, 12, cnt), 1);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

INLINE __m512 block_scales16(const void *p, size_t stride, int cnt) { return _mm512_cvtph_ps(halves16(p, stride, cnt)); }

/* the scale of pair p (blocks 2p, 2p + 1 of the 16) in lanes 0..7 and 8..15 (the permute
 * indices from memory: loads are cheaper than building them) */
static const int32_t pair_idx[8][16] __attribute__((aligned(64))) = {
#define PAIR_IDX(p) {2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, \
                     2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1}
    PAIR_IDX(0), PAIR_IDX(1), PAIR_IDX(2), PAIR_IDX(3), PAIR_IDX(4), PAIR_IDX(5), PAIR_IDX(6), PAIR_IDX(7),
#undef PAIR_IDX
};

INLINE __m512 pair_scale(__m512 d16, int p) {
    return _mm512_permutexvar_ps(_mm512_load_si512(pair_idx[p]), d16);
}

/* ------------------------------------------------------------------ Q4_1 against Q8_1 */

/* Q4_1's codes are unsigned with no offset, so nibble_codes2's layout takes them to one dpbusd
 * per pair of blocks; each block adds m * s besides (s: the activation block's d times the sum of
 * its codes), 16 blocks at a time into a second accumulator. One weight row against one
 * activation row (q4_1_rows: R such pairs), so that the one-row kernel, four activation rows
 * against a weight row and four weight rows against an activation row sum each pair alike. */

/* the float field (0: d, 1: s) of activation blocks x[0 .. cnt - 1], zero beyond */
INLINE __m512 q8_1_field16(const block_q8_1 *x, int field, int cnt) {
    const int st = (int)(sizeof(block_q8_1) / sizeof(float));
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(st));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), (__mmask16)((1u << cnt) - 1), idx, (const float *)x + field, 4);
}

/* blocks i0 .. i0 + cnt - 1 (cnt <= 16) of weight row w against activation row x */
INLINE void q4_1_group(const block_q4_1 *w, const block_q8_1 *x, int64_t i0, int cnt, __m512 *acc, __m512 *accm) {
    const __m512 d16 = _mm512_mul_ps(block_scales16(&w[i0].d, sizeof(block_q4_1), cnt), q8_1_field16(x + i0, 0, cnt));
    *accm = _mm512_fmadd_ps(block_scales16(&w[i0].m, sizeof(block_q4_1), cnt), q8_1_field16(x + i0, 1, cnt), *accm);
    CLEX_UNROLL for (int p = 0; p < 8; p++) {
        if (2 * p < cnt) {
            const int64_t i = i0 + 2 * p, i1 = 2 * p + 1 < cnt ? i + 1 : i;
            const __mmask16 keep = 2 * p + 1 < cnt ? 0xFFFF : 0x00FF;
            const __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), nibble_codes2(w[i].qs, w[i1].qs),
                                                  load2(x[i].qs, x[i1].qs));
            *acc = _mm512_mask3_fmadd_ps(pair_scale(d16, p), _mm512_cvtepi32_ps(t), *acc, keep);
        }
    }
}

/* s[j] = w[j] . x[j] for j < R */
INLINE void q4_1_rows(int64_t n, float *s, const block_q4_1 *const *w, const block_q8_1 *const *x, int R) {
    const int64_t nb = n / QK;
    __m512 acc[4], accm[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = accm[j] = _mm512_setzero_ps();
    int64_t i0 = 0;
    for (; i0 + 16 <= nb; i0 += 16) CLEX_UNROLL for (int j = 0; j < R; j++) q4_1_group(w[j], x[j], i0, 16, &acc[j], &accm[j]);
    CLEX_UNROLL for (int g = 8; g >= 1; g /= 2)
        if ((nb - i0) & g) {
            CLEX_UNROLL for (int j = 0; j < R; j++) q4_1_group(w[j], x[j], i0, g, &acc[j], &accm[j]);
            i0 += g;
        }
    CLEX_UNROLL for (int j = 0; j < R; j++) s[j] = _mm512_reduce_add_ps(q4_0_down(acc[j])) + _mm512_reduce_add_ps(accm[j]);
}
