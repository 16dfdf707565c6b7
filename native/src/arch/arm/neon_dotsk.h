/* The integer kernels of the 256-value super-block types paired with Q8_K activations (Q2_K,
 * Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS), one body for both variants, included after neon_dots32.h
 * (its primitives dot16, dot32, dot32s and helpers act_row, nib_lo, nib_hi).
 *
 * The reference's arithmetic (quants_k.c, iquants.c; ggml's *_q8_K_generic) exactly: per
 * super-block an exact integer dot product per sub-block, weighted by the sub-block's integer
 * scale and summed in int32 (the minimums through the activations' bsums), then the same float
 * expression in the same order, one super-block after another. So the integers are the same
 * and the float operations too: the results are the reference's bits, not only within rounding
 * (unless the compiler contracts to FMA, which -std=c11 does not).
 *
 * Sub-block sums come four at a time: hadd4 turns four vectors of int32 partials into one
 * vector [S0, S1, S2, S3], which multiplies the vector of the four scales (MLA). Every sum is
 * bounded far below 2^31 (the largest, Q6_K's, by 16 * 128 * 16 * 32 * 128 < 2^27). */

/* ------------------------------------------------------------------ shared */

NEON_INLINE int32x4_t hadd4(int32x4_t p0, int32x4_t p1, int32x4_t p2, int32x4_t p3) {
    return vpaddq_s32(vpaddq_s32(p0, p1), vpaddq_s32(p2, p3));
}

/* super-block i of activation row r */
NEON_INLINE const block_q8_K *q8k_at(const void *x, size_t xstride, int r, int64_t i) {
    return (const block_q8_K *)act_row(x, xstride, r) + i;
}

/* 16 int8 scales as four vectors of int32 (lanes 0..3, 4..7, 8..11, 12..15) */
NEON_INLINE void widen_scales16(int8x16_t v, int32x4_t sc[4]) {
    const int16x8_t a = vmovl_s8(vget_low_s8(v)), b = vmovl_high_s8(v);
    sc[0] = vmovl_s16(vget_low_s16(a));
    sc[1] = vmovl_high_s16(a);
    sc[2] = vmovl_s16(vget_low_s16(b));
    sc[3] = vmovl_high_s16(b);
}

/* the four sums of 16 products: w[k] . x[16k .. 16k + 15], k < 4 */
NEON_INLINE int32x4_t dots16x4(const int8x16_t w[4], const int8_t *x) {
    return hadd4(dot16(w[0], vld1q_s8(x)), dot16(w[1], vld1q_s8(x + 16)), dot16(w[2], vld1q_s8(x + 32)),
                 dot16(w[3], vld1q_s8(x + 48)));
}

/* ------------------------------------------------------------------ Q4_K, Q5_K */

/* Q4_K / Q5_K scales (sc[0]: sub-blocks 0..3, sc[1]: 4..7, as int32) and minimums (int16 lane j):
 * sub-block j < 4 in the low 6 bits of bytes j (scale) and j + 4 (minimum); j >= 4 in the
 * nibbles of byte j + 4 with the top 2 bits of bytes j - 4 (scale) and j (minimum). Bytewise in
 * 32-bit words: the masks keep each byte's own bits. */
NEON_INLINE void k4_scales(const uint8_t s[K_SCALE_SIZE], int32x4_t sc[2], int16x8_t *mins) {
    const uint32_t a = le32(s), b = le32(s + 4), c = le32(s + 8);
    const uint32_t sc_lo = a & 0x3F3F3F3Fu, m_lo = b & 0x3F3F3F3Fu;
    const uint32_t sc_hi = (c & 0x0F0F0F0Fu) | ((a >> 2) & 0x30303030u);
    const uint32_t m_hi = ((c >> 4) & 0x0F0F0F0Fu) | ((b >> 2) & 0x30303030u);
    const uint16x8_t scv = vmovl_u8(vcreate_u8((uint64_t)sc_lo | (uint64_t)sc_hi << 32));
    sc[0] = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(scv)));
    sc[1] = vreinterpretq_s32_u32(vmovl_high_u16(scv));
    *mins = vreinterpretq_s16_u16(vmovl_u8(vcreate_u8((uint64_t)m_lo | (uint64_t)m_hi << 32)));
}

/* sum_j m[j] * (bsums[2j] + bsums[2j + 1]); a pair sum is at most 2 * 16 * 128 in magnitude */
NEON_INLINE int32_t k4_summ(int16x8_t mins, const int16_t bsums[16]) {
    const int16x8_t pairs = vpaddq_s16(vld1q_s16(bsums), vld1q_s16(bsums + 8));
    return vaddvq_s32(vmlal_high_s16(vmull_s16(vget_low_s16(mins), vget_low_s16(pairs)), mins, pairs));
}

/* the 64 codes of chunk c (sub-blocks 2c and 2c + 1) of a Q4_K / Q5_K super-block: q[0], q[1]
 * the even sub-block (low nibbles), q[2], q[3] the odd one (high nibbles); with qh (Q5_K) bit
 * j of qh[l] is value l's fifth bit in sub-block j */
NEON_INLINE void k4_chunk(const uint8_t *qs, const uint8_t *qh, int c, int8x16_t q[4]) {
    const uint8_t *b = qs + 32 * c;
    q[0] = nib_lo(b);
    q[1] = nib_lo(b + 16);
    q[2] = nib_hi(b);
    q[3] = nib_hi(b + 16);
    if (qh) {
        const uint8x16_t h0 = vld1q_u8(qh), h1 = vld1q_u8(qh + 16), sixteen = vdupq_n_u8(0x10);
        const uint8x16_t e = vdupq_n_u8((uint8_t)(1u << (2 * c))), o = vdupq_n_u8((uint8_t)(2u << (2 * c)));
        q[0] = vorrq_s8(q[0], vreinterpretq_s8_u8(vandq_u8(vtstq_u8(h0, e), sixteen)));
        q[1] = vorrq_s8(q[1], vreinterpretq_s8_u8(vandq_u8(vtstq_u8(h1, e), sixteen)));
        q[2] = vorrq_s8(q[2], vreinterpretq_s8_u8(vandq_u8(vtstq_u8(h0, o), sixteen)));
        q[3] = vorrq_s8(q[3], vreinterpretq_s8_u8(vandq_u8(vtstq_u8(h1, o), sixteen)));
    }
}

/* acc[r] += the scaled sub-block sums of one super-block (codes <= 31: dot32s) */
NEON_INLINE void k4_block(const uint8_t *qs, const uint8_t *qh, const int32x4_t sc[2], const void *vx,
                          size_t xstride, int64_t i, int nr, int32x4_t acc[4]) {
    for (int p = 0; p < 2; p++) {   /* sub-blocks 4p .. 4p + 3 */
        int8x16_t q[8];
        k4_chunk(qs, qh, 2 * p, q);
        k4_chunk(qs, qh, 2 * p + 1, q + 4);
        for (int r = 0; r < nr; r++) {
            const int8_t *xq = q8k_at(vx, xstride, r, i)->qs + 128 * p;
            const int32x4_t sums = hadd4(dot32s(q[0], q[1], xq), dot32s(q[2], q[3], xq + 32),
                                         dot32s(q[4], q[5], xq + 64), dot32s(q[6], q[7], xq + 96));
            acc[r] = vmlaq_s32(acc[r], sums, sc[p]);
        }
    }
}

/* sum[r] += d * isum - dmin * summ, as the reference forms it */
NEON_INLINE void k4_finish(clex_fp16 wd, clex_fp16 wdmin, int16x8_t mins, const void *vx, size_t xstride,
                           int64_t i, int nr, const int32x4_t acc[4], float sum[4]) {
    for (int r = 0; r < nr; r++) {
        const block_q8_K *x = q8k_at(vx, xstride, r, i);
        const float d = x->d * h2f(wd), dmin = x->d * h2f(wdmin);
        sum[r] += d * (float)vaddvq_s32(acc[r]) - dmin * (float)k4_summ(mins, x->bsums);
    }
}

NEON_INLINE void q4_K_rows(int64_t n, float *s, const void *vw, const void *vx, size_t xstride, int nr) {
    const block_q4_K *w = vw;
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t i = 0; i < n / QK_K; i++) {
        int32x4_t sc[2], acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        int16x8_t mins;
        k4_scales(w[i].scales, sc, &mins);
        k4_block(w[i].qs, NULL, sc, vx, xstride, i, nr, acc);
        k4_finish(w[i].d, w[i].dmin, mins, vx, xstride, i, nr, acc, sum);
    }
    for (int r = 0; r < nr; r++) s[r] = sum[r];
}

NEON_INLINE void q5_K_rows(int64_t n, float *s, const void *vw, const void *vx, size_t xstride, int nr) {
    const block_q5_K *w = vw;
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t i = 0; i < n / QK_K; i++) {
        int32x4_t sc[2], acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        int16x8_t mins;
        k4_scales(w[i].scales, sc, &mins);
        k4_block(w[i].qs, w[i].qh, sc, vx, xstride, i, nr, acc);
        k4_finish(w[i].d, w[i].dmin, mins, vx, xstride, i, nr, acc, sum);
    }
    for (int r = 0; r < nr; r++) s[r] = sum[r];
}

/* ------------------------------------------------------------------ Q6_K */

/* the codes (minus 32) of half h of a Q6_K super-block, 8 groups of 16 in value order: each
 * half takes 64 bytes of ql and 32 of qh; value r has the nibble r/64 of ql[r % 64] and the
 * 2 bits at shift 2 * (r/32) of qh[r % 32] */
NEON_INLINE void q6_half(const uint8_t *ql, const uint8_t *qh, int8x16_t q[8]) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m30 = vdupq_n_u8(0x30);
    const uint8x16_t l0 = vld1q_u8(ql), l1 = vld1q_u8(ql + 16), l2 = vld1q_u8(ql + 32), l3 = vld1q_u8(ql + 48);
    const uint8x16_t h0 = vld1q_u8(qh), h1 = vld1q_u8(qh + 16);
    const uint8x16_t u[8] = {
        vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8(h0, 4), m30)),
        vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_n_u8(h1, 4), m30)),
        vorrq_u8(vandq_u8(l2, m4), vandq_u8(vshlq_n_u8(h0, 2), m30)),
        vorrq_u8(vandq_u8(l3, m4), vandq_u8(vshlq_n_u8(h1, 2), m30)),
        vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(h0, m30)),
        vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(h1, m30)),
        vorrq_u8(vshrq_n_u8(l2, 4), vandq_u8(vshrq_n_u8(h0, 2), m30)),
        vorrq_u8(vshrq_n_u8(l3, 4), vandq_u8(vshrq_n_u8(h1, 2), m30)),
    };
    for (int g = 0; g < 8; g++) q[g] = vsubq_s8(vreinterpretq_s8_u8(u[g]), vdupq_n_s8(32));
}

NEON_INLINE void q6_K_rows(int64_t n, float *s, const void *vw, const void *vx, size_t xstride, int nr) {
    const block_q6_K *w = vw;
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t i = 0; i < n / QK_K; i++) {
        int32x4_t sc[4], acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        widen_scales16(vld1q_s8(w[i].scales), sc);
        for (int h = 0; h < 2; h++) {
            int8x16_t q[8];
            q6_half(w[i].ql + 64 * h, w[i].qh + 32 * h, q);
            for (int r = 0; r < nr; r++) {
                const int8_t *xq = q8k_at(vx, xstride, r, i)->qs + 128 * h;
                acc[r] = vmlaq_s32(acc[r], dots16x4(q, xq), sc[2 * h]);
                acc[r] = vmlaq_s32(acc[r], dots16x4(q + 4, xq + 64), sc[2 * h + 1]);
            }
        }
        const float dw = h2f(w[i].d);
        for (int r = 0; r < nr; r++)
            sum[r] += (dw * q8k_at(vx, xstride, r, i)->d) * (float)vaddvq_s32(acc[r]);
    }
    for (int r = 0; r < nr; r++) s[r] = sum[r];
}

/* ------------------------------------------------------------------ Q2_K, Q3_K */

/* the 2-bit fields of half h of a Q2_K / Q3_K super-block (32 bytes of qs), 8 groups of 16 in
 * value order: group 2g + t is the bits at shift 2g of qs[16t .. 16t + 15] */
NEON_INLINE void q2_half(const uint8_t *qs, uint8x16_t q[8]) {
    const uint8x16_t m3 = vdupq_n_u8(3), a = vld1q_u8(qs), b = vld1q_u8(qs + 16);
    q[0] = vandq_u8(a, m3);
    q[1] = vandq_u8(b, m3);
    q[2] = vandq_u8(vshrq_n_u8(a, 2), m3);
    q[3] = vandq_u8(vshrq_n_u8(b, 2), m3);
    q[4] = vandq_u8(vshrq_n_u8(a, 4), m3);
    q[5] = vandq_u8(vshrq_n_u8(b, 4), m3);
    q[6] = vshrq_n_u8(a, 6);
    q[7] = vshrq_n_u8(b, 6);
}

/* acc[r] += the scaled sums of the 8 groups of 16 of half h: codes q, scales sc[2h], sc[2h + 1] */
NEON_INLINE void half16_rows(const int8x16_t q[8], const int32x4_t sc[4], int h, const void *vx, size_t xstride,
                             int64_t i, int nr, int32x4_t acc[4]) {
    for (int r = 0; r < nr; r++) {
        const int8_t *xq = q8k_at(vx, xstride, r, i)->qs + 128 * h;
        acc[r] = vmlaq_s32(acc[r], dots16x4(q, xq), sc[2 * h]);
        acc[r] = vmlaq_s32(acc[r], dots16x4(q + 4, xq + 64), sc[2 * h + 1]);
    }
}

/* sum_j m[j] * bsums[j] over the 16 groups (|m| <= 15, |bsum| <= 16 * 128) */
NEON_INLINE int32_t q2_summs(uint8x16_t m, const int16_t bsums[16]) {
    const int16x8_t m0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(m)));
    const int16x8_t m1 = vreinterpretq_s16_u16(vmovl_high_u8(m));
    const int16x8_t b0 = vld1q_s16(bsums), b1 = vld1q_s16(bsums + 8);
    int32x4_t t = vmull_s16(vget_low_s16(m0), vget_low_s16(b0));
    t = vmlal_high_s16(t, m0, b0);
    t = vmlal_s16(t, vget_low_s16(m1), vget_low_s16(b1));
    t = vmlal_high_s16(t, m1, b1);
    return vaddvq_s32(t);
}

/* Q2_K: scale (low nibble) and minimum (high nibble) per 16 values; codes 0..3, the minimums
 * through bsums: sum += dall * isum - dmin * summs */
NEON_INLINE void q2_K_rows(int64_t n, float *s, const void *vw, const void *vx, size_t xstride, int nr) {
    const block_q2_K *w = vw;
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8x16_t sb = vld1q_u8(w[i].scales);
        int32x4_t sc[4], acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        widen_scales16(vreinterpretq_s8_u8(vandq_u8(sb, vdupq_n_u8(0x0F))), sc);
        for (int h = 0; h < 2; h++) {
            uint8x16_t u[8];
            int8x16_t q[8];
            q2_half(w[i].qs + 32 * h, u);
            for (int g = 0; g < 8; g++) q[g] = vreinterpretq_s8_u8(u[g]);
            half16_rows(q, sc, h, vx, xstride, i, nr, acc);
        }
        const float dw = h2f(w[i].d), mw = h2f(w[i].dmin);
        for (int r = 0; r < nr; r++) {
            const block_q8_K *x = q8k_at(vx, xstride, r, i);
            const float dall = x->d * dw, dmin = x->d * mw;
            sum[r] += dall * (float)vaddvq_s32(acc[r]) - dmin * (float)q2_summs(vshrq_n_u8(sb, 4), x->bsums);
        }
    }
    for (int r = 0; r < nr; r++) s[r] = sum[r];
}

/* Q3_K's 16 6-bit scales minus 32: the low 4 bits are the nibbles of bytes 0..7 (low nibbles
 * for scales 0..7, high for 8..15), the high 2 bits of scale j at shift 2 * (j/4) of byte
 * 8 + j%4 (the four bytes repeated across the register, each lane shifted by its own amount) */
static const int8_t k_q3_hshift[16] = {0, 0, 0, 0, -2, -2, -2, -2, -4, -4, -4, -4, -6, -6, -6, -6};

NEON_INLINE void q3_scales(const uint8_t s[12], int32x4_t sc[4]) {
    const uint8x8_t l = vld1_u8(s);
    const uint8x16_t lo = vcombine_u8(vand_u8(l, vdup_n_u8(0x0F)), vshr_n_u8(l, 4));
    const uint8x16_t h = vreinterpretq_u8_u32(vdupq_n_u32(le32(s + 8)));
    const uint8x16_t hi = vandq_u8(vshlq_u8(h, vld1q_s8(k_q3_hshift)), vdupq_n_u8(3));
    widen_scales16(vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, vshlq_n_u8(hi, 4))), vdupq_n_s8(32)), sc);
}

/* Q3_K codes of half h, -4..3: the 2 low bits, minus 4 unless the value's bit of hmask is set
 * (hmask[v % 32], bit v / 32) */
NEON_INLINE void q3_half(const block_q3_K *b, int h, int8x16_t q[8]) {
    uint8x16_t u[8];
    q2_half(b->qs + 32 * h, u);
    const uint8x16_t m0 = vld1q_u8(b->hmask), m1 = vld1q_u8(b->hmask + 16), four = vdupq_n_u8(4);
    for (int g = 0; g < 4; g++) {
        const uint8x16_t bit = vdupq_n_u8((uint8_t)(1u << (4 * h + g)));
        q[2 * g] = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(u[2 * g], vandq_u8(vtstq_u8(m0, bit), four))),
                            vdupq_n_s8(4));
        q[2 * g + 1] = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(u[2 * g + 1], vandq_u8(vtstq_u8(m1, bit), four))),
                                vdupq_n_s8(4));
    }
}

NEON_INLINE void q3_K_rows(int64_t n, float *s, const void *vw, const void *vx, size_t xstride, int nr) {
    const block_q3_K *w = vw;
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t i = 0; i < n / QK_K; i++) {
        int32x4_t sc[4], acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        q3_scales(w[i].scales, sc);
        for (int h = 0; h < 2; h++) {
            int8x16_t q[8];
            q3_half(&w[i], h, q);
            half16_rows(q, sc, h, vx, xstride, i, nr, acc);
        }
        const float dw = h2f(w[i].d);
        for (int r = 0; r < nr; r++)
            sum[r] += (dw * q8k_at(vx, xstride, r, i)->d) * (float)vaddvq_s32(acc[r]);
    }
    for (int r = 0; r < nr; r++) s[r] = sum[r];
}

/* ------------------------------------------------------------------ IQ4_XS */

/* IQ4_XS scale of sub-block j, minus 32: the low 4 bits in nibble j%2 of scales_l[j/2], the
 * high 2 bits at shift 2j of scales_h */
NEON_INLINE void iq4_xs_scales(const block_iq4_xs *b, int32x4_t sc[2]) {
    int32_t v[8];
    for (int j = 0; j < 8; j++)
        v[j] = (((b->scales_l[j >> 1] >> (4 * (j & 1))) & 0x0F) | ((b->scales_h >> (2 * j)) & 3) << 4) - 32;
    sc[0] = vld1q_s32(v);
    sc[1] = vld1q_s32(v + 4);
}

/* levels of sub-block j: its 16 bytes' low nibbles (values 0..15), then the high ones (16..31);
 * |level| <= 127: dot32 */
NEON_INLINE void iq4_xs_rows(int64_t n, float *s, const void *vw, const void *vx, size_t xstride, int nr) {
    const block_iq4_xs *w = vw;
    const int8x16_t levels = vld1q_s8(clex_iq4nl_levels);
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t i = 0; i < n / QK_K; i++) {
        int32x4_t sc[2], acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        iq4_xs_scales(&w[i], sc);
        for (int p = 0; p < 2; p++) {   /* sub-blocks 4p .. 4p + 3 */
            int8x16_t q[8];
            for (int k = 0; k < 4; k++) {
                const uint8_t *b = w[i].qs + 16 * (4 * p + k);
                q[2 * k] = vqtbl1q_s8(levels, vreinterpretq_u8_s8(nib_lo(b)));
                q[2 * k + 1] = vqtbl1q_s8(levels, vreinterpretq_u8_s8(nib_hi(b)));
            }
            for (int r = 0; r < nr; r++) {
                const int8_t *xq = q8k_at(vx, xstride, r, i)->qs + 128 * p;
                const int32x4_t sums = hadd4(dot32(q[0], q[1], xq), dot32(q[2], q[3], xq + 32),
                                             dot32(q[4], q[5], xq + 64), dot32(q[6], q[7], xq + 96));
                acc[r] = vmlaq_s32(acc[r], sums, sc[p]);
            }
        }
        const float dw = h2f(w[i].d);
        for (int r = 0; r < nr; r++)
            sum[r] += (dw * q8k_at(vx, xstride, r, i)->d) * (float)vaddvq_s32(acc[r]);
    }
    for (int r = 0; r < nr; r++) s[r] = sum[r];
}

NEON_ROWS_PAIR(q2_K)
NEON_ROWS_PAIR(q3_K)
NEON_ROWS_PAIR(q4_K)
NEON_ROWS_PAIR(q5_K)
NEON_ROWS_PAIR(q6_K)
NEON_ROWS_PAIR(iq4_xs)

#define NEON_DOTSK_SLOTS                                                                          \
    .vec_dot[CLEX_TYPE_Q2_K] = vec_dot_q2_K, .vec_dot[CLEX_TYPE_Q3_K] = vec_dot_q3_K,             \
    .vec_dot[CLEX_TYPE_Q4_K] = vec_dot_q4_K, .vec_dot[CLEX_TYPE_Q5_K] = vec_dot_q5_K,             \
    .vec_dot[CLEX_TYPE_Q6_K] = vec_dot_q6_K, .vec_dot[CLEX_TYPE_IQ4_XS] = vec_dot_iq4_xs,         \
    .vec_dot4[CLEX_TYPE_Q2_K] = vec_dot4_q2_K, .vec_dot4[CLEX_TYPE_Q3_K] = vec_dot4_q3_K,         \
    .vec_dot4[CLEX_TYPE_Q4_K] = vec_dot4_q4_K, .vec_dot4[CLEX_TYPE_Q5_K] = vec_dot4_q5_K,         \
    .vec_dot4[CLEX_TYPE_Q6_K] = vec_dot4_q6_K, .vec_dot4[CLEX_TYPE_IQ4_XS] = vec_dot4_iq4_xs
