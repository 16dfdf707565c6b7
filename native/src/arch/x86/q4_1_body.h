/* The AVX2 Q4_1 kernels (avx2.c includes this after defining
 *     static inline __m128i dot_u4_halves(__m128i lo, __m128i hi, const int8_t *xs);
 * (16 unsigned low nibbles . xs[0..15] + 16 high nibbles . xs[16..31], as int32x4) with
 * maddubs; AVX-512 with VNNI has its own, avx512_s32.h). Blocks are unpacked in 128-bit halves, so no
 * cross-lane shuffle is needed; both block scales [d, m] convert with one instruction and meet
 * the activation's [d, s] pair in one multiply. */

static inline __m128 load_dm(const void *p) {   /* two fp16 at p -> [d, m, d, m] */
    uint32_t u;
    memcpy(&u, p, 4);
    return _mm_cvtph_ps(_mm_set1_epi32((int)u));
}

static inline __m128 load_ds(const block_q8_1 *x) {   /* [d, s, d, s] */
    return _mm_castpd_ps(_mm_loaddup_pd((const double *)&x->d));
}

static inline void unpack_q4(const uint8_t *qs, __m128i *lo, __m128i *hi) {
    const __m128i q = _mm_loadu_si128((const __m128i *)qs);
    const __m128i m = _mm_set1_epi8(0x0F);
    *lo = _mm_and_si128(q, m);
    *hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
}

static inline float hsum128(__m128 t) {
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    t = _mm_add_ss(t, _mm_movehdup_ps(t));
    return _mm_cvtss_f32(t);
}

/* accm lanes hold [d*xd, m*xs, ...] summed over blocks: lane 1 is the minimum's term */
static inline float finish(__m128 acc, __m128 accm) {
    return hsum128(acc) + _mm_cvtss_f32(_mm_shuffle_ps(accm, accm, 1));
}

static void vec_dot_q4_1(int64_t n, float *s, const void *vw, const void *vx) {
    const block_q4_1 *w = vw;
    const block_q8_1 *x = vx;
    const int64_t nb = n / QK;
    __m128 acc0 = _mm_setzero_ps(), acc1 = _mm_setzero_ps(), accm = _mm_setzero_ps();
    int64_t i = 0;
    __m128i lo, hi;
    for (; i + 1 < nb; i += 2) {
        const __m128 s0 = _mm_mul_ps(load_dm(&w[i].d), load_ds(&x[i]));
        const __m128 s1 = _mm_mul_ps(load_dm(&w[i + 1].d), load_ds(&x[i + 1]));
        accm = _mm_add_ps(accm, _mm_add_ps(s0, s1));
        unpack_q4(w[i].qs, &lo, &hi);
        acc0 = _mm_fmadd_ps(_mm_shuffle_ps(s0, s0, 0), _mm_cvtepi32_ps(dot_u4_halves(lo, hi, x[i].qs)), acc0);
        unpack_q4(w[i + 1].qs, &lo, &hi);
        acc1 = _mm_fmadd_ps(_mm_shuffle_ps(s1, s1, 0), _mm_cvtepi32_ps(dot_u4_halves(lo, hi, x[i + 1].qs)), acc1);
    }
    for (; i < nb; i++) {
        const __m128 s0 = _mm_mul_ps(load_dm(&w[i].d), load_ds(&x[i]));
        accm = _mm_add_ps(accm, s0);
        unpack_q4(w[i].qs, &lo, &hi);
        acc0 = _mm_fmadd_ps(_mm_shuffle_ps(s0, s0, 0), _mm_cvtepi32_ps(dot_u4_halves(lo, hi, x[i].qs)), acc0);
    }
    *s = finish(_mm_add_ps(acc0, acc1), accm);
}

/* Four activation rows, each summed exactly as vec_dot_q4_1 sums one (even and odd blocks in
 * two accumulators, the minimum's terms a pair at a time), so prefill gives decoding's bits and
 * an exact batched decode may group four tokens. */
static inline void q4_1_x4_block(const block_q4_1 *w, const block_q8_1 *const x[4], int64_t i, __m128 acc[4],
                                 __m128 sm[4]) {
    __m128i lo, hi;
    unpack_q4(w[i].qs, &lo, &hi);
    const __m128 dm = load_dm(&w[i].d);
    for (int j = 0; j < 4; j++) {
        sm[j] = _mm_mul_ps(dm, load_ds(&x[j][i]));
        acc[j] = _mm_fmadd_ps(_mm_shuffle_ps(sm[j], sm[j], 0), _mm_cvtepi32_ps(dot_u4_halves(lo, hi, x[j][i].qs)),
                              acc[j]);
    }
}

static void vec_dot_q4_1_x4(int64_t n, float *s, const void *vw, const void *vx, size_t xstride) {
    const block_q4_1 *w = vw;
    const block_q8_1 *x[4];
    for (int j = 0; j < 4; j++) x[j] = (const block_q8_1 *)((const uint8_t *)vx + j * xstride);
    const int64_t nb = n / QK;
    __m128 acc0[4], acc1[4], accm[4], s0[4], s1[4];
    for (int j = 0; j < 4; j++) acc0[j] = acc1[j] = accm[j] = _mm_setzero_ps();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        q4_1_x4_block(w, x, i, acc0, s0);
        q4_1_x4_block(w, x, i + 1, acc1, s1);
        for (int j = 0; j < 4; j++) accm[j] = _mm_add_ps(accm[j], _mm_add_ps(s0[j], s1[j]));
    }
    if (i < nb) {
        q4_1_x4_block(w, x, i, acc0, s0);
        for (int j = 0; j < 4; j++) accm[j] = _mm_add_ps(accm[j], s0[j]);
    }
    for (int j = 0; j < 4; j++) s[j] = finish(_mm_add_ps(acc0[j], acc1[j]), accm[j]);
}
