/* AVX2 four-weight-row kernels (internal.h's vec_dot4w; avx512_dot4w.c says what they are for):
 * each of four weight rows summed exactly as the AVX2 one-row kernel of its type sums it (the
 * same int32 lanes into the same float operations in the same order: avx2_q5.c's
 * signed32_body.h scheme for Q4_0 (and Q8_0, Q5_0, not installed); avx2_k.c's for Q4_K, Q5_K,
 * Q6_K), so each sum is that kernel's bit for bit, with the activations loaded once for the
 * four rows.
 *
 * Q4_0 and Q5_0 codes are unsigned with a fixed offset c (8, 16): a lane of four is
 * madd(maddubs(u, x)) - c sum(x), the second part made from the activations once for the four
 * rows, where the one-row kernel moves each weight's sign onto x (two vpsignb per block); both
 * are sum (u - c) x, exact in int32 (no int16 pair saturates: |u|, |w| <= 31). Q8_0 keeps the
 * sign trick per row (its w + 128 would saturate maddubs's pairs). */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>

#include "../../internal.h"
#include "x86_k.h"
#include "avx2_kunpack.h"
#include "signed32_weights.h"

INLINE void rows4(const void *w, size_t ws, const uint8_t *r[4]) {
    CLEX_UNROLL for (int j = 0; j < 4; j++) r[j] = (const uint8_t *)w + j * ws;
}

/* ------------------------------------------------------------------ Q8_0, Q4_0, Q5_0 */

/* the unsigned codes of block i: Q4_0's nibbles, Q5_0's with the fifth bit as 16 */
INLINE __m256i ucodes(const uint8_t *vw, int64_t i, int wt) {
    if (wt == W_Q4_0) return nibbles(((const block_q4_0 *)vw)[i].qs);
    const block_q5_0 *b = (const block_q5_0 *)vw;
    return _mm256_or_si256(nibbles(b[i].qs), _mm256_and_si256(bit_bytes(b[i].qh), _mm256_set1_epi8(16)));
}

/* blocks i0 .. i0 + cnt - 1 (cnt <= 8) of the four rows, as signed32_group: block b into each
 * row's accumulator b & 1. The scale d(w) d(x) of a block is the same float product that
 * signed32_group's eight-lane multiply makes for it (fp16 -> float is exact), made here in a
 * scalar register: sixteen vector registers would not hold four rows' eight-lane scales. */
INLINE void s32_group4w(const uint8_t *const w[4], int64_t i0, int cnt, int wt, const block_q8_0 *x, __m256 acc[4][2]) {
    const size_t ws = signed_stride(wt);
    const __m256i ones = _mm256_set1_epi16(1);
    CLEX_UNROLL for (int b = 0; b < 8; b++) {
        if (b < cnt) {
            const __m256i xq = ld(x[i0 + b].qs);
            const float xd = h2f(x[i0 + b].d);
            /* c sum(x) per lane of four (Q4_0, Q5_0) */
            const __m256i base = wt == W_Q8_0 ? _mm256_setzero_si256()
                : _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(wt == W_Q4_0 ? 8 : 16), xq), ones);
            CLEX_UNROLL for (int r = 0; r < 4; r++) {
                __m256i lane;
                if (wt == W_Q8_0) {
                    const __m256i wq = ld(((const block_q8_0 *)w[r])[i0 + b].qs);
                    lane = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq)), ones);
                } else {
                    lane = _mm256_sub_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(ucodes(w[r], i0 + b, wt), xq), ones), base);
                }
                clex_fp16 wd;
                memcpy(&wd, w[r] + (i0 + b) * ws, sizeof wd);
                const __m256 d = _mm256_set1_ps(h2f(wd) * xd);
                acc[r][b & 1] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lane), acc[r][b & 1]);
            }
        }
    }
}

INLINE void s32_rows4w(int64_t n, float s[4], const void *vw, size_t ws, const void *vx, int wt) {
    const block_q8_0 *x = vx;
    const uint8_t *w[4];
    rows4(vw, ws, w);
    const int64_t nb = n / QK;
    __m256 acc[4][2];
    CLEX_UNROLL for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int64_t i0 = 0;
    for (; i0 + 8 <= nb; i0 += 8) s32_group4w(w, i0, 8, wt, x, acc);
    CLEX_UNROLL for (int g = 4; g >= 1; g /= 2)
        if ((nb - i0) & g) {
            s32_group4w(w, i0, g, wt, x, acc);
            i0 += g;
        }
    CLEX_UNROLL for (int r = 0; r < 4; r++) s[r] = hsum8(_mm256_add_ps(acc[r][0], acc[r][1]));
}

/* Q8_0 and Q5_0 are not in the set: with the weights from memory their four-row kernels
 * measured slower than the one-row ones (tools/kbench.c: 0.75x), the body handles them for a
 * later try */
static void dot4w_q4_0(int64_t n, float s[4], const void *w, size_t ws, const void *x) { s32_rows4w(n, s, w, ws, x, W_Q4_0); }

/* ------------------------------------------------------------------ Q4_K, Q5_K */

/* avx2_k.c's k45_rows for four weight rows against one activation row */
INLINE void k45_rows4w(int64_t n, float s[4], const void *vw, size_t ws, const void *vx, int five) {
    const block_q8_K *x = vx;
    const uint8_t *w[4];
    rows4(vw, ws, w);
    const __m256i m4 = _mm256_set1_epi8(0x0F), b4 = _mm256_set1_epi8(0x10);
    const __m128i mpair = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    __m256 acc[4];
    CLEX_UNROLL for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const int8_t *xq = x[i].qs;
        const __m256i bs = ld(x[i].bsums);
        const float xd = x[i].d;
        CLEX_UNROLL for (int r = 0; r < 4; r++) {
            const block_q4_K *w4 = (const block_q4_K *)w[r] + i;
            const block_q5_K *w5 = (const block_q5_K *)w[r] + i;
            const __m128i sm = k4_scales(five ? w5->scales : w4->scales);
            const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
            const __m256i mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, mpair));
            const uint8_t *qs = five ? w5->qs : w4->qs;
            __m256i hb = five ? ld(w5->qh) : _mm256_setzero_si256();
            __m256i isum = _mm256_setzero_si256();
            CLEX_UNROLL for (int k = 0; k < 4; k++) {
                const __m256i q = ld(qs + 32 * k);
                __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if (five) {
                    lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hb, 4), b4));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hb, 3), b4));
                    hb = _mm256_srli_epi16(hb, 2);
                }
                isum = _mm256_add_epi32(isum, _mm256_add_epi32(dot_scaled(lo, xq + 64 * k, lane16(sc, 2 * k)),
                                                               dot_scaled(hi, xq + 64 * k + 32, lane16(sc, 2 * k + 1))));
            }
            const float wd = h2f(five ? w5->d : w4->d), wm = h2f(five ? w5->dmin : w4->dmin);
            acc[r] = fscale(acc[r], wd, xd, isum);
            acc[r] = _mm256_fnmadd_ps(_mm256_set1_ps(wm * xd), _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mins)), acc[r]);
        }
    }
    CLEX_UNROLL for (int r = 0; r < 4; r++) s[r] = hsum8(acc[r]);
}

static void dot4w_q4_K(int64_t n, float s[4], const void *w, size_t ws, const void *x) { k45_rows4w(n, s, w, ws, x, 0); }
static void dot4w_q5_K(int64_t n, float s[4], const void *w, size_t ws, const void *x) { k45_rows4w(n, s, w, ws, x, 1); }

/* ------------------------------------------------------------------ Q6_K */

/* avx2_k.c's q6k_rows for four weight rows */
static void dot4w_q6_K(int64_t n, float s[4], const void *vw, size_t ws, const void *vx) {
    const block_q8_K *x = vx;
    const uint8_t *w[4];
    rows4(vw, ws, w);
    __m256 acc[4];
    CLEX_UNROLL for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const __m256i bs = ld(x[i].bsums);
        const float xd = x[i].d;
        CLEX_UNROLL for (int r = 0; r < 4; r++) {
            const block_q6_K *b = (const block_q6_K *)w[r] + i;
            const __m256i sc16 = _mm256_cvtepi8_epi16(ld16(b->scales));
            const __m256i off = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5));   /* -32 sc */
            __m256i isum = _mm256_madd_epi16(bs, off);
            CLEX_UNROLL for (int h = 0; h < 2; h++) {
                const __m256i half = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11) : _mm256_permute2x128_si256(sc16, sc16, 0x00);
                __m256i u[4];
                q6k_codes(b->ql + 64 * h, b->qh + 32 * h, u);
                CLEX_UNROLL for (int q = 0; q < 4; q++)
                    isum = _mm256_add_epi32(isum, dot_scaled(u[q], x[i].qs + 128 * h + 32 * q, pair16(half, q)));
            }
            acc[r] = fscale(acc[r], h2f(b->d), xd, isum);
        }
    }
    CLEX_UNROLL for (int r = 0; r < 4; r++) s[r] = hsum8(acc[r]);
}

/* ------------------------------------------------------------------ the set */

static const clex_kernels avx2_dot4w = {
    .vec_dot4w = {
        [CLEX_TYPE_Q4_0] = dot4w_q4_0,
        [CLEX_TYPE_Q4_K] = dot4w_q4_K,
        [CLEX_TYPE_Q6_K] = dot4w_q6_K,
        [CLEX_TYPE_Q5_K] = dot4w_q5_K,
    },
};

const clex_kernels *clex_kernels_avx2_dot4w(void) { return &avx2_dot4w; }

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
