/* AVX-512 VNNI four-weight-row kernels (internal.h's vec_dot4w): four consecutive weight rows
 * against one activation row, for decoding, where every product is one token. Each row is summed
 * exactly as avx512_k.c's one-row kernel of its type sums it (the same integer lanes into the
 * same float operations in the same order), so each of the four sums is that kernel's, bit for
 * bit; what the four rows share is the activations: their loads, and for the types whose codes
 * are unsigned with a fixed offset (Q4_0 - 8, Q5_0 - 16, Q8_0 as w + 128 - 128) the offset's
 * part of every lane, sum_4 offset * x, made once for the four rows and given to each row's VNNI
 * dpbusd as its starting value, so that a row's block costs one dpbusd and no sign handling.
 * The four rows' sums are four independent chains, where the one-row kernel has one.
 *
 * Lane by lane, for a lane of four codes u with activations x: the one-row kernel's
 * |w| . (x with w's signs) and this file's (u . x) - c sum(x) are both sum (u - c) x, exact in
 * int32 (activations from the Q8_0 quantizer lie in [-127, 127], so moving a sign onto them
 * never wraps). Installed over avx512.c's set only on a CPU with VNNI (without it the one-row
 * kernels are others). */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#endif

#include <immintrin.h>

#include "../../internal.h"
#include "x86_k.h"
#include "avx512_kunpack.h"
#include "avx512_s32.h"

/* the four rows' starts */
INLINE void rows4(const void *w, size_t ws, const uint8_t *r[4]) {
    CLEX_UNROLL for (int j = 0; j < 4; j++) r[j] = (const uint8_t *)w + j * ws;
}

/* ------------------------------------------------------------------ block scales */

/* the fp16 block scales as avx512_s32.h gathers them (a conversion is exact, so how the fields
 * are gathered does not change a bit): 16 at a time there, 8 here for the 256-bit kernels */
INLINE __m256 block_scales8(const void *p, size_t stride, int cnt) {
    const __m128i v = _mm_insert_epi64(_mm_cvtsi64_si128((long long)halves4(p, stride, 0, cnt)),
                                       (long long)halves4(p, stride, 4, cnt), 1);
    return _mm256_cvtph_ps(v);
}

INLINE float hsum8(__m256 v) {   /* avx512_k.c's order */
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ------------------------------------------------------------------ Q4_0, Q5_0 */

/* the unsigned codes of blocks i, i1: Q4_0's as q4_0_codes2 lays them out, Q5_0's nibble + 16
 * where the fifth bit is set (the weights are these minus their offsets) */
INLINE __m512i ucodes2(const uint8_t *vw, int64_t i, int64_t i1, int wt) {
    if (wt == W_Q4_0) return q4_0_codes2((const block_q4_0 *)vw + i, (const block_q4_0 *)vw + i1);
    const block_q5_0 *b = (const block_q5_0 *)vw;
    const __m512i nib = nibbles2(b[i].qs, b[i1].qs);
    return _mm512_mask_add_epi8(nib, bits2(b[i].qh, b[i1].qh), nib, _mm512_set1_epi8(16));
}

/* blocks i0 .. i0 + cnt - 1 (cnt <= 16) of the four rows: signed32_group512's pairs, scales and
 * masks, each row into its own accumulator */
INLINE void u32_group4w(const uint8_t *const w[4], int64_t i0, int cnt, int wt, const block_q8_0 *x, __m512 acc[4]) {
    const size_t ws = signed_stride(wt);
    const __m512 xd = block_scales16(&x[i0].d, sizeof(block_q8_0), cnt);
    __m512 d16[4];
    CLEX_UNROLL for (int r = 0; r < 4; r++) d16[r] = _mm512_mul_ps(block_scales16(w[r] + i0 * ws, ws, cnt), xd);
    const __m512i off = wt == W_Q4_0 ? q4_0_offsets2() : _mm512_set1_epi8(16);
    CLEX_UNROLL for (int p = 0; p < 8; p++) {
        if (2 * p < cnt) {
            const int64_t i = i0 + 2 * p, i1 = 2 * p + 1 < cnt ? i + 1 : i;
            const __mmask16 keep = 2 * p + 1 < cnt ? 0xFFFF : 0x00FF;
            const __m512i xq = load2(x[i].qs, x[i1].qs);
            /* -c sum(x) per lane of four: each row's dpbusd starts there */
            const __m512i base = _mm512_sub_epi32(_mm512_setzero_si512(),
                                                  _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, xq));
            CLEX_UNROLL for (int r = 0; r < 4; r++) {
                const __m512 prod = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(base, ucodes2(w[r], i, i1, wt), xq));
                acc[r] = _mm512_mask3_fmadd_ps(pair_scale(d16[r], p), prod, acc[r], keep);
            }
        }
    }
}

INLINE void u32_rows4w(int64_t n, float s[4], const void *vw, size_t ws, const void *vx, int wt) {
    const block_q8_0 *x = vx;
    const uint8_t *w[4];
    rows4(vw, ws, w);
    const int64_t nb = n / QK;
    __m512 acc[4];
    CLEX_UNROLL for (int r = 0; r < 4; r++) acc[r] = _mm512_setzero_ps();
    int64_t i0 = 0;
    for (; i0 + 16 <= nb; i0 += 16) u32_group4w(w, i0, 16, wt, x, acc);
    CLEX_UNROLL for (int g = 8; g >= 1; g /= 2)
        if ((nb - i0) & g) {
            u32_group4w(w, i0, g, wt, x, acc);
            i0 += g;
        }
    if (wt == W_Q4_0) CLEX_UNROLL for (int r = 0; r < 4; r++) acc[r] = q4_0_down(acc[r]);
    finish(s, acc, 4);
}

static void dot4w_q4_0(int64_t n, float s[4], const void *w, size_t ws, const void *x) { u32_rows4w(n, s, w, ws, x, W_Q4_0); }

/* Q4_1: four weight rows against one activation row (avx512_s32.h) */
static void dot4w_q4_1(int64_t n, float s[4], const void *w, size_t ws, const void *x) {
    const uint8_t *r[4];
    rows4(w, ws, r);
    const block_q4_1 *wr[4] = {(const block_q4_1 *)r[0], (const block_q4_1 *)r[1], (const block_q4_1 *)r[2],
                               (const block_q4_1 *)r[3]};
    const block_q8_1 *xr[4] = {x, x, x, x};
    q4_1_rows(n, s, wr, xr, 4);
}
static void dot4w_q5_0(int64_t n, float s[4], const void *w, size_t ws, const void *x) { u32_rows4w(n, s, w, ws, x, W_Q5_0); }

/* ------------------------------------------------------------------ Q8_0 */

/* signed32_body.h's 256-bit scheme (avx512_k.c's Q8_0): groups of 8 blocks, then 4, 2, 1; two
 * accumulators per row alternating blocks. A lane is (w + 128) . x - 128 sum(x). */
INLINE void q8_group4w(const uint8_t *const w[4], int64_t i0, int cnt, const block_q8_0 *x, __m256 acc[4][2]) {
    const size_t ws = sizeof(block_q8_0);
    const __m256 xd = block_scales8(&x[i0].d, ws, cnt);
    __m256 d8[4];
    CLEX_UNROLL for (int r = 0; r < 4; r++) d8[r] = _mm256_mul_ps(block_scales8(w[r] + i0 * ws, ws, cnt), xd);
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    CLEX_UNROLL for (int b = 0; b < 8; b++) {
        if (b < cnt) {
            const __m256i xq = ld32(x[i0 + b].qs);
            const __m256i base = _mm256_sub_epi32(_mm256_setzero_si256(),
                                                  _mm256_dpbusd_epi32(_mm256_setzero_si256(), flip, xq));
            CLEX_UNROLL for (int r = 0; r < 4; r++) {
                const __m256i wq = ld32(((const block_q8_0 *)w[r])[i0 + b].qs);
                const __m256i lane = _mm256_dpbusd_epi32(base, _mm256_xor_si256(wq, flip), xq);
                const __m256 d = _mm256_permutevar8x32_ps(d8[r], _mm256_set1_epi32(b));
                acc[r][b & 1] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lane), acc[r][b & 1]);
            }
        }
    }
}

/* As neighbours, with the weight rows prefetched (matmul.c), it lost to one row at a time (kbench,
 * 512 MiB, seven interleaved runs each: medians 8.5 GB/s one row, 7.9 four rows; and on the Xeon
 * VM with AMX in the model); with the four rows a quarter of the matrix apart it wins there
 * (core.c), so it is in the set. */
static void dot4w_q8_0(int64_t n, float s[4], const void *vw, size_t ws, const void *vx) {
    const block_q8_0 *x = vx;
    const uint8_t *w[4];
    rows4(vw, ws, w);
    const int64_t nb = n / QK;
    __m256 acc[4][2];
    CLEX_UNROLL for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int64_t i0 = 0;
    for (; i0 + 8 <= nb; i0 += 8) q8_group4w(w, i0, 8, x, acc);
    CLEX_UNROLL for (int g = 4; g >= 1; g /= 2)
        if ((nb - i0) & g) {
            q8_group4w(w, i0, g, x, acc);
            i0 += g;
        }
    CLEX_UNROLL for (int r = 0; r < 4; r++) s[r] = hsum8(_mm256_add_ps(acc[r][0], acc[r][1]));
}

/* ------------------------------------------------------------------ Q4_K, Q5_K */

/* avx512_k.c's k45_rows for four weight rows: the activations' 256 codes and bsums loaded once */
INLINE void k45_rows4w(int64_t n, float s[4], const void *vw, size_t ws, const void *vx, int five) {
    const block_q8_K *x = vx;
    const uint8_t *w[4];
    rows4(vw, ws, w);
    const __m128i mpair = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    __m512 acc[4];
    CLEX_UNROLL for (int r = 0; r < 4; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m512i xq[4];
        CLEX_UNROLL for (int k = 0; k < 4; k++) xq[k] = ld64(x[i].qs + 64 * k);
        const __m256i bs = ld32(x[i].bsums);
        const float xd = x[i].d;
        CLEX_UNROLL for (int r = 0; r < 4; r++) {
            const block_q4_K *w4 = (const block_q4_K *)w[r] + i;
            const block_q5_K *w5 = (const block_q5_K *)w[r] + i;
            const __m128i sm = k4_scales(five ? w5->scales : w4->scales);
            const __m256i mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, mpair));
            __m512i u[4], v[4];
            k45_unpack(five ? w5->qs : w4->qs, five ? w5->qh : NULL, _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sm)),
                       five, u, v);
            __m512i isum = _mm512_setzero_si512();
            CLEX_UNROLL for (int k = 0; k < 4; k++) isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(u[k], xq[k]), v[k]);
            acc[r] = fscale_min(acc[r], load_dmin(five ? &w5->d : &w4->d), xd, isum, _mm256_madd_epi16(bs, mins));
        }
    }
    finish(s, acc, 4);
}

static void dot4w_q4_K(int64_t n, float s[4], const void *w, size_t ws, const void *x) { k45_rows4w(n, s, w, ws, x, 0); }
static void dot4w_q5_K(int64_t n, float s[4], const void *w, size_t ws, const void *x) { k45_rows4w(n, s, w, ws, x, 1); }

/* ------------------------------------------------------------------ Q6_K */

/* avx512_k.c's q6k_rows for four weight rows */
static void dot4w_q6_K(int64_t n, float s[4], const void *vw, size_t ws, const void *vx) {
    const block_q8_K *x = vx;
    const uint8_t *w[4];
    rows4(vw, ws, w);
    __m512 acc[4];
    CLEX_UNROLL for (int r = 0; r < 4; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m512i xq[4];
        CLEX_UNROLL for (int k = 0; k < 4; k++) xq[k] = ld64(x[i].qs + 64 * k);
        const __m256i bs = ld32(x[i].bsums);
        const float xd = x[i].d;
        CLEX_UNROLL for (int r = 0; r < 4; r++) {
            const block_q6_K *b = (const block_q6_K *)w[r] + i;
            const __m256i sc16 = _mm256_cvtepi8_epi16(ld16(b->scales));
            const __m256i off = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5));   /* -32 sc */
            __m512i u[4];
            q6k_unpack(b, u);
            __m512i isum = _mm512_zextsi256_si512(_mm256_madd_epi16(bs, off));
            CLEX_UNROLL for (int c = 0; c < 4; c++)
                isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(u[c], xq[c]), scales16(_mm512_castsi256_si512(sc16), c));
            acc[r] = fscale(acc[r], h2f(b->d), xd, isum);
        }
    }
    finish(s, acc, 4);
}

/* ------------------------------------------------------------------ the set */

static const clex_kernels avx512_dot4w = {
    .vec_dot4w = {
        [CLEX_TYPE_Q4_0] = dot4w_q4_0,
        [CLEX_TYPE_Q4_K] = dot4w_q4_K,
        [CLEX_TYPE_Q6_K] = dot4w_q6_K,
        [CLEX_TYPE_Q5_0] = dot4w_q5_0,
        [CLEX_TYPE_Q5_K] = dot4w_q5_K,
        [CLEX_TYPE_Q8_0] = dot4w_q8_0,
        [CLEX_TYPE_Q4_1] = dot4w_q4_1,
    },
};

static const clex_kernels avx512_dot4w_none;

const clex_kernels *clex_kernels_avx512_dot4w(void) {
    return __builtin_cpu_supports("avx512vnni") ? &avx512_dot4w : &avx512_dot4w_none;
}

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
