/* The 256-bit kernels of the signed 32-value types (Q8_0, Q4_0, Q5_0, IQ4_NL against Q8_0
 * activations), shared by avx2_q5.c (maddubs) and avx512_k.c (VNNI): each includes this after
 * defining, with its own instruction set,
 *     INLINE (always-inline), ld (32-byte load), h2f, hsum8 and CLEX_UNROLL (x86_k.h), and
 *     s32w: a block's signed weights prepared for the rows (|w| and w's signs);
 *     INLINE s32w s32_prep(__m256i wq);
 *     INLINE __m256i s32_dot(const s32w *w, const int8_t *x);
 *         |w| . (x with w's signs) for one block: int32 lanes summing to the block's dot product.
 * A block unpacks into 32 bytes in the activations' order: nibbles by and/shift, the fifth bits
 * (bit j of qh is value j's) spread to bytes by a pshufb of the word and a compare with each
 * byte's bit, IQ4_NL's levels by a pshufb lookup. The block scales are converted eight at a
 * time. Two accumulators per row alternate blocks, so no row waits on each multiply-add. */

#include "signed32_weights.h"

/* The scales d(w) * d(x) of 8 blocks at a time: the fp16 fields inserted into one register
 * (a load and a shuffle-port operation each, the port the rest leaves idle), converted with one
 * instruction and multiplied once; each block then takes its lane with one permute. */

/* the fp16 field of block k */
INLINE int half_k(const void *p, size_t stride, int k) {
    uint16_t h;
    memcpy(&h, (const uint8_t *)p + k * stride, 2);
    return h;
}

/* the fields of blocks 0 .. cnt - 1 (cnt <= 8), 0 beyond; with a constant cnt, only cnt inserts */
INLINE __m256 block_scales8(const void *p, size_t stride, int cnt) {
    __m128i v = _mm_cvtsi32_si128(half_k(p, stride, 0));
    if (cnt > 1) v = _mm_insert_epi16(v, half_k(p, stride, 1), 1);
    if (cnt > 2) v = _mm_insert_epi16(v, half_k(p, stride, 2), 2);
    if (cnt > 3) v = _mm_insert_epi16(v, half_k(p, stride, 3), 3);
    if (cnt > 4) v = _mm_insert_epi16(v, half_k(p, stride, 4), 4);
    if (cnt > 5) v = _mm_insert_epi16(v, half_k(p, stride, 5), 5);
    if (cnt > 6) v = _mm_insert_epi16(v, half_k(p, stride, 6), 6);
    if (cnt > 7) v = _mm_insert_epi16(v, half_k(p, stride, 7), 7);
    return _mm256_cvtph_ps(v);
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
            const s32w pw = s32_prep(signed_weights(w, i0 + b, wt));
            CLEX_UNROLL for (int j = 0; j < R; j++) {
                const __m256 d = _mm256_permutevar8x32_ps(d8[j], _mm256_set1_epi32(b));
                acc[j][b & 1] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s32_dot(&pw, x[j][i0 + b].qs)), acc[j][b & 1]);
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

