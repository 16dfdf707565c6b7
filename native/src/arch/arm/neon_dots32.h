/* The integer kernels of the 32-value block types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL), one
 * body for both variants: neon_widen.c and neon_sdot.c include it after defining
 *     int32x4_t dot_q8(const int8_t *a, const int8_t *b);   32 x 32 bytes, any values
 *     int32x4_t dot16(int8x16_t a, int8x16_t b);            16 products, |a| <= 127
 *     int32x4_t dot32(int8x16_t a0, int8x16_t a1, const int8_t *x);    a0 . x[0..15] +
 *     int32x4_t dot32s(int8x16_t a0, int8x16_t a1, const int8_t *x);   a1 . x[16..31];
 *                                                   dot32: |a| <= 127, dot32s: |a| <= 63
 * (four int32 partial sums whose total is the exact dot product).
 *
 * Each block's int32 partials are scaled by that block's d_w * d_x into float lanes, as the
 * reference does with the block total (a block's total is at most 32 * 128 * 128 = 2^19 in
 * magnitude, so the int32 -> float conversion is exact); only the float summation order differs.
 * The four-row kernels (vec_dot4, prefill) unpack a weight block once for four activation rows
 * xstride bytes apart; row r gets what vec_dot gives for it, up to float rounding. */

/* ------------------------------------------------------------------ unpacking */

/* Q4 nibbles of one block: values 0..15 (low nibbles) and 16..31 (high nibbles), as 0..15 */
static inline int8x16_t nib_lo(const uint8_t *qs) {
    return vreinterpretq_s8_u8(vandq_u8(vld1q_u8(qs), vdupq_n_u8(0x0F)));
}
static inline int8x16_t nib_hi(const uint8_t *qs) {
    return vreinterpretq_s8_u8(vshrq_n_u8(vld1q_u8(qs), 4));
}

/* the fifth bits of a Q5 block as 0x10 in the byte of each value: 0..15 in *lo, 16..31 in *hi.
 * qh's four bytes are spread to one byte per value (TBL), then each lane tests its own bit. */
static const uint8_t k_q5_spread_lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
static const uint8_t k_q5_spread_hi[16] = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
static const uint8_t k_q5_bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};

static inline void q5_fifth_bits(const uint8_t qh[4], uint8x16_t *lo, uint8x16_t *hi) {
    const uint8x16_t h = vreinterpretq_u8_u32(vdupq_n_u32(le32(qh)));
    const uint8x16_t bit = vld1q_u8(k_q5_bit), sixteen = vdupq_n_u8(0x10);
    *lo = vandq_u8(vtstq_u8(vqtbl1q_u8(h, vld1q_u8(k_q5_spread_lo)), bit), sixteen);
    *hi = vandq_u8(vtstq_u8(vqtbl1q_u8(h, vld1q_u8(k_q5_spread_hi)), bit), sixteen);
}

/* a Q5 block's codes 0..31: values 0..15 in *lo, 16..31 in *hi */
static inline void q5_codes(const uint8_t qh[4], const uint8_t *qs, int8x16_t *lo, int8x16_t *hi) {
    uint8x16_t hl, hh;
    q5_fifth_bits(qh, &hl, &hh);
    const uint8x16_t q = vld1q_u8(qs);
    *lo = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0F)), hl));
    *hi = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q, 4), hh));
}

/* activation row r of a four-row call */
static inline const void *act_row(const void *x, size_t xstride, int r) {
    return (const uint8_t *)x + (size_t)r * xstride;
}

/* s[r] = the lanes of acc[r] summed, plus add[r], for r < nr (1 or 4) */
NEON_INLINE void store_rows(float *s, const float32x4_t acc[4], const float add[4], int nr) {
    if (nr == 1) {
        s[0] = vaddvq_f32(acc[0]) + add[0];
        return;
    }
    const float32x4_t t = vpaddq_f32(vpaddq_f32(acc[0], acc[1]), vpaddq_f32(acc[2], acc[3]));
    vst1q_f32(s, vaddq_f32(t, vld1q_f32(add)));
}

/* ------------------------------------------------------------------ Q8_0, Q4_0, Q4_1 */

/* Two blocks per iteration into two float accumulators. */
static void vec_dot_q8_0(int64_t n, float *s, const void *vw, const void *vx) {
    const block_q8_0 *w = vw, *x = vx;
    const int64_t nb = n / QK;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        const int32x4_t p0 = dot_q8(w[i].qs, x[i].qs);
        const int32x4_t p1 = dot_q8(w[i + 1].qs, x[i + 1].qs);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), h2f(w[i].d) * h2f(x[i].d));
        acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p1), h2f(w[i + 1].d) * h2f(x[i + 1].d));
    }
    for (; i < nb; i++)
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(dot_q8(w[i].qs, x[i].qs)), h2f(w[i].d) * h2f(x[i].d));
    *s = vaddvq_f32(vaddq_f32(acc0, acc1));
}

static inline int32x4_t q4_0_block(const block_q4_0 *w, const int8_t *xq) {
    const int8x16_t eight = vdupq_n_s8(8);
    return dot32s(vsubq_s8(nib_lo(w->qs), eight), vsubq_s8(nib_hi(w->qs), eight), xq);
}

static void vec_dot_q4_0(int64_t n, float *s, const void *vw, const void *vx) {
    const block_q4_0 *w = vw;
    const block_q8_0 *x = vx;
    const int64_t nb = n / QK;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        const int32x4_t p0 = q4_0_block(&w[i], x[i].qs), p1 = q4_0_block(&w[i + 1], x[i + 1].qs);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), h2f(w[i].d) * h2f(x[i].d));
        acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p1), h2f(w[i + 1].d) * h2f(x[i + 1].d));
    }
    for (; i < nb; i++)
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(q4_0_block(&w[i], x[i].qs)), h2f(w[i].d) * h2f(x[i].d));
    *s = vaddvq_f32(vaddq_f32(acc0, acc1));
}

/* x.s = x.d * sum(x.qs) carries the weight minimum's term: w.m * x.s per block */
static void vec_dot_q4_1(int64_t n, float *s, const void *vw, const void *vx) {
    const block_q4_1 *w = vw;
    const block_q8_1 *x = vx;
    const int64_t nb = n / QK;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    float summs = 0.0f;
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        const int32x4_t p0 = dot32s(nib_lo(w[i].qs), nib_hi(w[i].qs), x[i].qs);
        const int32x4_t p1 = dot32s(nib_lo(w[i + 1].qs), nib_hi(w[i + 1].qs), x[i + 1].qs);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), h2f(w[i].d) * x[i].d);
        acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p1), h2f(w[i + 1].d) * x[i + 1].d);
        summs += h2f(w[i].m) * x[i].s + h2f(w[i + 1].m) * x[i + 1].s;
    }
    for (; i < nb; i++) {
        const int32x4_t p0 = dot32s(nib_lo(w[i].qs), nib_hi(w[i].qs), x[i].qs);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), h2f(w[i].d) * x[i].d);
        summs += h2f(w[i].m) * x[i].s;
    }
    *s = vaddvq_f32(vaddq_f32(acc0, acc1)) + summs;
}

/* ------------------------------------------------------------------ rows kernels
 * One body per type for one (nr = 1: vec_dot) or four (nr = 4: vec_dot4) activation rows; the
 * weight block is unpacked once per block, the row loop is unrolled by the constant nr. */

NEON_INLINE void q8_0_rows(int64_t n, float *s, const void *vw, const void *vx, size_t xstride, int nr) {
    const block_q8_0 *w = vw;
    float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t i = 0; i < n / QK; i++) {
        const float dw = h2f(w[i].d);
        for (int r = 0; r < nr; r++) {
            const block_q8_0 *x = (const block_q8_0 *)act_row(vx, xstride, r) + i;
            acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(dot_q8(w[i].qs, x->qs)), dw * h2f(x->d));
        }
    }
    store_rows(s, acc, zero, nr);
}

NEON_INLINE void q4_0_rows(int64_t n, float *s, const void *vw, const void *vx, size_t xstride, int nr) {
    const block_q4_0 *w = vw;
    float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int8x16_t eight = vdupq_n_s8(8);
    for (int64_t i = 0; i < n / QK; i++) {
        const int8x16_t lo = vsubq_s8(nib_lo(w[i].qs), eight), hi = vsubq_s8(nib_hi(w[i].qs), eight);
        const float dw = h2f(w[i].d);
        for (int r = 0; r < nr; r++) {
            const block_q8_0 *x = (const block_q8_0 *)act_row(vx, xstride, r) + i;
            acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(dot32s(lo, hi, x->qs)), dw * h2f(x->d));
        }
    }
    store_rows(s, acc, zero, nr);
}

NEON_INLINE void q4_1_rows(int64_t n, float *s, const void *vw, const void *vx, size_t xstride, int nr) {
    const block_q4_1 *w = vw;
    float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    float summs[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t i = 0; i < n / QK; i++) {
        const int8x16_t lo = nib_lo(w[i].qs), hi = nib_hi(w[i].qs);
        const float dw = h2f(w[i].d), mw = h2f(w[i].m);
        for (int r = 0; r < nr; r++) {
            const block_q8_1 *x = (const block_q8_1 *)act_row(vx, xstride, r) + i;
            acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(dot32s(lo, hi, x->qs)), dw * x->d);
            summs[r] += mw * x->s;
        }
    }
    store_rows(s, acc, summs, nr);
}

/* Q5_0: x = d * (q - 16) */
NEON_INLINE void q5_0_rows(int64_t n, float *s, const void *vw, const void *vx, size_t xstride, int nr) {
    const block_q5_0 *w = vw;
    float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int8x16_t sixteen = vdupq_n_s8(16);
    for (int64_t i = 0; i < n / QK; i++) {
        int8x16_t lo, hi;
        q5_codes(w[i].qh, w[i].qs, &lo, &hi);
        lo = vsubq_s8(lo, sixteen);
        hi = vsubq_s8(hi, sixteen);
        const float dw = h2f(w[i].d);
        for (int r = 0; r < nr; r++) {
            const block_q8_0 *x = (const block_q8_0 *)act_row(vx, xstride, r) + i;
            acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(dot32s(lo, hi, x->qs)), dw * h2f(x->d));
        }
    }
    store_rows(s, acc, zero, nr);
}

/* Q5_1: x = d * q + m, the minimum's term through x.s as in Q4_1 */
NEON_INLINE void q5_1_rows(int64_t n, float *s, const void *vw, const void *vx, size_t xstride, int nr) {
    const block_q5_1 *w = vw;
    float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    float summs[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t i = 0; i < n / QK; i++) {
        int8x16_t lo, hi;
        q5_codes(w[i].qh, w[i].qs, &lo, &hi);
        const float dw = h2f(w[i].d), mw = h2f(w[i].m);
        for (int r = 0; r < nr; r++) {
            const block_q8_1 *x = (const block_q8_1 *)act_row(vx, xstride, r) + i;
            acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(dot32s(lo, hi, x->qs)), dw * x->d);
            summs[r] += mw * x->s;
        }
    }
    store_rows(s, acc, summs, nr);
}

/* IQ4_NL: x = d * level[q], the 16 levels in one register, looked up by TBL */
NEON_INLINE void iq4_nl_rows(int64_t n, float *s, const void *vw, const void *vx, size_t xstride, int nr) {
    const block_iq4_nl *w = vw;
    float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int8x16_t levels = vld1q_s8(clex_iq4nl_levels);
    for (int64_t i = 0; i < n / QK; i++) {
        const int8x16_t lo = vqtbl1q_s8(levels, vreinterpretq_u8_s8(nib_lo(w[i].qs)));
        const int8x16_t hi = vqtbl1q_s8(levels, vreinterpretq_u8_s8(nib_hi(w[i].qs)));
        const float dw = h2f(w[i].d);
        for (int r = 0; r < nr; r++) {
            const block_q8_0 *x = (const block_q8_0 *)act_row(vx, xstride, r) + i;
            acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(dot32(lo, hi, x->qs)), dw * h2f(x->d));
        }
    }
    store_rows(s, acc, zero, nr);
}

/* vec_dot_T (one row) and vec_dot4_T (four rows) from T_rows */
#define NEON_ROWS_PAIR(T)                                                                         \
    static void vec_dot_##T(int64_t n, float *s, const void *w, const void *x) {                 \
        T##_rows(n, s, w, x, 0, 1);                                                               \
    }                                                                                             \
    static void vec_dot4_##T(int64_t n, float *s, const void *w, const void *x, size_t xstride) { \
        T##_rows(n, s, w, x, xstride, 4);                                                         \
    }
#define NEON_ROWS_FOUR(T)                                                                         \
    static void vec_dot4_##T(int64_t n, float *s, const void *w, const void *x, size_t xstride) { \
        T##_rows(n, s, w, x, xstride, 4);                                                         \
    }

NEON_ROWS_FOUR(q8_0)
NEON_ROWS_FOUR(q4_0)
NEON_ROWS_FOUR(q4_1)
NEON_ROWS_PAIR(q5_0)
NEON_ROWS_PAIR(q5_1)
NEON_ROWS_PAIR(iq4_nl)

#define NEON_DOTS32_SLOTS                                                                         \
    .vec_dot[CLEX_TYPE_Q8_0] = vec_dot_q8_0, .vec_dot[CLEX_TYPE_Q4_0] = vec_dot_q4_0,             \
    .vec_dot[CLEX_TYPE_Q4_1] = vec_dot_q4_1, .vec_dot[CLEX_TYPE_Q5_0] = vec_dot_q5_0,             \
    .vec_dot[CLEX_TYPE_Q5_1] = vec_dot_q5_1, .vec_dot[CLEX_TYPE_IQ4_NL] = vec_dot_iq4_nl,         \
    .vec_dot4[CLEX_TYPE_Q8_0] = vec_dot4_q8_0, .vec_dot4[CLEX_TYPE_Q4_0] = vec_dot4_q4_0,         \
    .vec_dot4[CLEX_TYPE_Q4_1] = vec_dot4_q4_1, .vec_dot4[CLEX_TYPE_Q5_0] = vec_dot4_q5_0,         \
    .vec_dot4[CLEX_TYPE_Q5_1] = vec_dot4_q5_1, .vec_dot4[CLEX_TYPE_IQ4_NL] = vec_dot4_iq4_nl
