/* AVX2 + FMA + F16C kernels of the K-quants (Q2_K .. Q6_K) and IQ4_XS against Q8_K activations,
 * and the Q8_K activation quantizer (x86_k.h says what they hold to).
 *
 * A super-block of 256 values is unpacked into unsigned byte codes in the activations' order,
 * 32 per register (nibbles by and/shift, the extra high bits shifted into place); each register
 * meets the activation bytes in maddubs (unsigned x signed -> int16 pairs), and one madd with
 * the sub-block scales as int16 applies the scales and sums the pairs into int32 lanes, so the
 * whole super-block is summed in integers. Code offsets (Q3_K's -4, Q6_K's -32) and the
 * minimums (Q2_K, Q4_K, Q5_K) go through the activations' bsums: one madd per super-block. Then
 * one float multiply-add per super-block with d(weight) * d(activation). IQ4_XS's signed levels
 * (a pshufb lookup) take the sign trick: |w| as the unsigned operand, w's sign moved onto x. */
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
#include "avx2_kunpack.h"   /* the shared pieces: Q4_K / Q5_K scales, Q6_K codes, ... */

/* ------------------------------------------------------------------ Q4_K, Q5_K */

/* Q4_K (five = 0) or Q5_K (five = 1): each 32 bytes of qs hold sub-blocks 2k (low nibbles) and
 * 2k + 1 (high); Q5_K's fifth bit of sub-block j, value l, is bit j of qh[l]. */
INLINE void k45_rows(int64_t n, float *s, const void *vw, const block_q8_K *const *x, int R, int five) {
    const block_q4_K *w4 = vw;
    const block_q5_K *w5 = vw;
    const __m256i m4 = _mm256_set1_epi8(0x0F), b4 = _mm256_set1_epi8(0x10);
    const __m128i mpair = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    __m256 acc[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const __m128i sm = k4_scales(five ? w5[i].scales : w4[i].scales);
        const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, mpair));   /* m[t / 2] */
        const uint8_t *qs = five ? w5[i].qs : w4[i].qs;
        __m256i hb = five ? ld(w5[i].qh) : _mm256_setzero_si256();
        __m256i isum[4];
        CLEX_UNROLL for (int j = 0; j < R; j++) isum[j] = _mm256_setzero_si256();
        CLEX_UNROLL for (int k = 0; k < 4; k++) {
            const __m256i q = ld(qs + 32 * k);
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (five) {   /* bits 2k, 2k + 1 of qh: bits 0, 1 of hb by now */
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hb, 4), b4));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hb, 3), b4));
                hb = _mm256_srli_epi16(hb, 2);
            }
            const __m256i vlo = lane16(sc, 2 * k), vhi = lane16(sc, 2 * k + 1);
            CLEX_UNROLL for (int j = 0; j < R; j++) {
                const int8_t *xq = x[j][i].qs + 64 * k;
                isum[j] = _mm256_add_epi32(isum[j], _mm256_add_epi32(dot_scaled(lo, xq, vlo), dot_scaled(hi, xq + 32, vhi)));
            }
        }
        const float wd = h2f(five ? w5[i].d : w4[i].d), wm = h2f(five ? w5[i].dmin : w4[i].dmin);
        CLEX_UNROLL for (int j = 0; j < R; j++) {
            const __m256i msum = _mm256_madd_epi16(ld(x[j][i].bsums), mins);
            acc[j] = fscale(acc[j], wd, x[j][i].d, isum[j]);
            acc[j] = _mm256_fnmadd_ps(_mm256_set1_ps(wm * x[j][i].d), _mm256_cvtepi32_ps(msum), acc[j]);
        }
    }
    CLEX_UNROLL for (int j = 0; j < R; j++) s[j] = hsum8(acc[j]);
}

#define Q4K_ROWS(n, s, w, x, R) k45_rows(n, s, w, x, R, 0)
#define Q5K_ROWS(n, s, w, x, R) k45_rows(n, s, w, x, R, 1)
CLEX_X86_K_DEFINE(clex_avx2, Q4_K, block_q8_K, Q4K_ROWS)
CLEX_X86_K_DEFINE(clex_avx2, Q5_K, block_q8_K, Q5K_ROWS)

/* ------------------------------------------------------------------ Q6_K */

INLINE void q6k_rows(int64_t n, float *s, const void *vw, const block_q8_K *const *x, int R) {
    const block_q6_K *w = vw;
    __m256 acc[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(ld16(w[i].scales));
        const __m256i off = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5));   /* -32 sc */
        __m256i isum[4];
        CLEX_UNROLL for (int j = 0; j < R; j++) isum[j] = _mm256_madd_epi16(ld(x[j][i].bsums), off);
        CLEX_UNROLL for (int h = 0; h < 2; h++) {
            const __m256i half = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11) : _mm256_permute2x128_si256(sc16, sc16, 0x00);
            __m256i u[4];
            q6k_codes(w[i].ql + 64 * h, w[i].qh + 32 * h, u);
            CLEX_UNROLL for (int q = 0; q < 4; q++) {
                const __m256i v = pair16(half, q);
                CLEX_UNROLL for (int j = 0; j < R; j++)
                    isum[j] = _mm256_add_epi32(isum[j], dot_scaled(u[q], x[j][i].qs + 128 * h + 32 * q, v));
            }
        }
        const float wd = h2f(w[i].d);
        CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = fscale(acc[j], wd, x[j][i].d, isum[j]);
    }
    CLEX_UNROLL for (int j = 0; j < R; j++) s[j] = hsum8(acc[j]);
}

CLEX_X86_K_DEFINE(clex_avx2, Q6_K, block_q8_K, q6k_rows)

/* ------------------------------------------------------------------ Q2_K, Q3_K */

/* Q3_K's 16 scales minus 32, as bytes: quants_k.c's q3_scales on the 12 bytes as three words */
INLINE __m128i q3_scales16(const uint8_t s[12]) {
    uint32_t a[3];
    memcpy(a, s, sizeof a);
    const uint32_t m4 = 0x0F0F0F0F, m2 = 0x03030303;
    const __m128i v = _mm_setr_epi32((int)((a[0] & m4) | (a[2] & m2) << 4),
                                     (int)((a[1] & m4) | ((a[2] >> 2) & m2) << 4),
                                     (int)(((a[0] >> 4) & m4) | ((a[2] >> 4) & m2) << 4),
                                     (int)(((a[1] >> 4) & m4) | ((a[2] >> 6) & m2) << 4));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
}

/* Q2_K (three = 0) or Q3_K (1): 32 bytes of qs per half of 128 values, value 32p + l of a half
 * in bits 2p, 2p + 1 of byte l; Q3_K's third bit of value v is bit v / 32 of hmask[v % 32] and
 * its code is (low | bit << 2) - 4 (the -4 through the bsums); Q2_K's minimums go through them. */
INLINE void k23_rows(int64_t n, float *s, const void *vw, const block_q8_K *const *x, int R, int three) {
    const block_q2_K *w2 = vw;
    const block_q3_K *w3 = vw;
    const __m256i m2 = _mm256_set1_epi8(3), b2 = _mm256_set1_epi8(4);
    __m256 acc[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m256i sc16, mins;   /* Q3_K: -4 sc (the offset); Q2_K: the minimums */
        if (three) {
            sc16 = _mm256_cvtepi8_epi16(q3_scales16(w3[i].scales));
            mins = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 2));
        } else {
            const __m128i raw = ld16(w2[i].scales), m4 = _mm_set1_epi8(0x0F);
            sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
            mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4));
        }
        const uint8_t *qs = three ? w3[i].qs : w2[i].qs;
        __m256i hb = three ? ld(w3[i].hmask) : _mm256_setzero_si256();
        __m256i isum[4];
        CLEX_UNROLL for (int j = 0; j < R; j++) isum[j] = _mm256_setzero_si256();
        CLEX_UNROLL for (int h = 0; h < 2; h++) {
            const __m256i half = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11) : _mm256_permute2x128_si256(sc16, sc16, 0x00);
            __m256i q = ld(qs + 32 * h);
            CLEX_UNROLL for (int p = 0; p < 4; p++) {
                __m256i u = _mm256_and_si256(q, m2);
                q = _mm256_srli_epi16(q, 2);
                if (three) {   /* bit 4h + p of hmask: bit 0 of hb by now */
                    u = _mm256_or_si256(u, _mm256_and_si256(_mm256_slli_epi16(hb, 2), b2));
                    hb = _mm256_srli_epi16(hb, 1);
                }
                const __m256i v = pair16(half, p);
                CLEX_UNROLL for (int j = 0; j < R; j++)
                    isum[j] = _mm256_add_epi32(isum[j], dot_scaled(u, x[j][i].qs + 128 * h + 32 * p, v));
            }
        }
        const float wd = h2f(three ? w3[i].d : w2[i].d);
        CLEX_UNROLL for (int j = 0; j < R; j++) {
            const __m256i msum = _mm256_madd_epi16(ld(x[j][i].bsums), mins);
            if (three) acc[j] = fscale(acc[j], wd, x[j][i].d, _mm256_add_epi32(isum[j], msum));
            else {
                acc[j] = fscale(acc[j], wd, x[j][i].d, isum[j]);
                acc[j] = _mm256_fnmadd_ps(_mm256_set1_ps(h2f(w2[i].dmin) * x[j][i].d), _mm256_cvtepi32_ps(msum), acc[j]);
            }
        }
    }
    CLEX_UNROLL for (int j = 0; j < R; j++) s[j] = hsum8(acc[j]);
}

#define Q2K_ROWS(n, s, w, x, R) k23_rows(n, s, w, x, R, 0)
#define Q3K_ROWS(n, s, w, x, R) k23_rows(n, s, w, x, R, 1)
CLEX_X86_K_DEFINE(clex_avx2, Q2_K, block_q8_K, Q2K_ROWS)
CLEX_X86_K_DEFINE(clex_avx2, Q3_K, block_q8_K, Q3K_ROWS)

/* ------------------------------------------------------------------ IQ4_XS */

/* the 8 scales minus 32 as int16, in both halves: lane j takes nibble j % 2 of scales_l[j / 2]
 * and bits 2j, 2j + 1 of scales_h (the 8 bytes from scales_h on, loaded as one word; the shifts
 * per lane in 32-bit lanes, then packed) */
INLINE __m256i iq4xs_scales(const block_iq4_xs *b) {
    uint64_t u;
    memcpy(&u, &b->scales_h, 8);
    const __m256i v = _mm256_broadcastsi128_si256(_mm_cvtsi64_si128((long long)u));
    const __m256i lo = _mm256_shuffle_epi8(v, _mm256_setr_epi8(2, -1, -1, -1, 2, -1, -1, -1, 3, -1, -1, -1, 3, -1, -1, -1,
                                                              4, -1, -1, -1, 4, -1, -1, -1, 5, -1, -1, -1, 5, -1, -1, -1));
    const __m256i hi = _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 1, -1, -1, 0, 1, -1, -1, 0, 1, -1, -1, 0, 1, -1, -1,
                                                              0, 1, -1, -1, 0, 1, -1, -1, 0, 1, -1, -1, 0, 1, -1, -1));
    const __m256i l4 = _mm256_and_si256(_mm256_srlv_epi32(lo, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4)), _mm256_set1_epi32(0x0F));
    const __m256i h2 = _mm256_and_si256(_mm256_srlv_epi32(hi, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)), _mm256_set1_epi32(3));
    const __m256i sc = _mm256_sub_epi32(_mm256_or_si256(l4, _mm256_slli_epi32(h2, 4)), _mm256_set1_epi32(32));
    const __m128i s16 = _mm_packs_epi32(_mm256_castsi256_si128(sc), _mm256_extracti128_si256(sc, 1));
    return _mm256_broadcastsi128_si256(s16);
}

INLINE void iq4xs_rows(int64_t n, float *s, const void *vw, const block_q8_K *const *x, int R) {
    const block_iq4_xs *w = vw;
    const __m256i lv = _mm256_broadcastsi128_si256(ld16(clex_iq4nl_levels)), m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const __m256i sc = iq4xs_scales(&w[i]);
        __m256i isum[4];
        CLEX_UNROLL for (int j = 0; j < R; j++) isum[j] = _mm256_setzero_si256();
        CLEX_UNROLL for (int k = 0; k < 4; k++) {   /* sub-blocks 2k, 2k + 1: 16 bytes each, low then high nibbles */
            const __m256i q = ld(w[i].qs + 32 * k);
            const __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            const __m256i l0 = _mm256_shuffle_epi8(lv, _mm256_permute2x128_si256(lo, hi, 0x20));
            const __m256i l1 = _mm256_shuffle_epi8(lv, _mm256_permute2x128_si256(lo, hi, 0x31));
            const __m256i a0 = _mm256_sign_epi8(l0, l0), a1 = _mm256_sign_epi8(l1, l1);
            const __m256i v0 = lane16(sc, 2 * k), v1 = lane16(sc, 2 * k + 1);
            CLEX_UNROLL for (int j = 0; j < R; j++) {
                const int8_t *xq = x[j][i].qs + 64 * k;
                const __m256i p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(ld(xq), l0));
                const __m256i p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(ld(xq + 32), l1));
                isum[j] = _mm256_add_epi32(isum[j], _mm256_add_epi32(_mm256_madd_epi16(p0, v0), _mm256_madd_epi16(p1, v1)));
            }
        }
        const float wd = h2f(w[i].d);
        CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = fscale(acc[j], wd, x[j][i].d, isum[j]);
    }
    CLEX_UNROLL for (int j = 0; j < R; j++) s[j] = hsum8(acc[j]);
}

CLEX_X86_K_DEFINE(clex_avx2, IQ4_XS, block_q8_K, iq4xs_rows)

/* ------------------------------------------------------------------ packing for the tile kernels */

/* a super-block as x86_k.h's clex_kpack2, in the row kernels' unpacking */
INLINE void kpack2_store(clex_kpack2 *p, const __m256i u[8], const __m256i v[8], __m256i bias, float d, float dm) {
    CLEX_UNROLL for (int j = 0; j < 8; j++) {
        _mm256_storeu_si256((__m256i *)p->u[j], u[j]);
        _mm256_storeu_si256((__m256i *)p->v[j], v[j]);
    }
    _mm256_storeu_si256((__m256i *)p->bias, bias);
    p->d = d;
    p->dm = dm;
}

/* Q4_K, Q5_K: registers 2k, 2k + 1 are sub-blocks 2k, 2k + 1 (one scale each) */
INLINE void kpack2_45(const void *vw, int64_t i, int five, clex_kpack2 *p) {
    const block_q4_K *w4 = vw;
    const block_q5_K *w5 = vw;
    const __m256i m4 = _mm256_set1_epi8(0x0F), b4 = _mm256_set1_epi8(0x10);
    const __m128i sm = k4_scales(five ? w5[i].scales : w4[i].scales);
    const __m128i mpair = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
    const uint8_t *qs = five ? w5[i].qs : w4[i].qs;
    __m256i hb = five ? ld(w5[i].qh) : _mm256_setzero_si256(), u[8], v[8];
    CLEX_UNROLL for (int k = 0; k < 4; k++) {
        const __m256i q = ld(qs + 32 * k);
        u[2 * k] = _mm256_and_si256(q, m4);
        u[2 * k + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (five) {   /* as k45_rows */
            u[2 * k] = _mm256_or_si256(u[2 * k], _mm256_and_si256(_mm256_slli_epi16(hb, 4), b4));
            u[2 * k + 1] = _mm256_or_si256(u[2 * k + 1], _mm256_and_si256(_mm256_slli_epi16(hb, 3), b4));
            hb = _mm256_srli_epi16(hb, 2);
        }
        v[2 * k] = lane16(sc, 2 * k);
        v[2 * k + 1] = lane16(sc, 2 * k + 1);
    }
    kpack2_store(p, u, v, _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, mpair)), h2f(five ? w5[i].d : w4[i].d),
                 -h2f(five ? w5[i].dmin : w4[i].dmin));
}

/* Q2_K, Q3_K, Q6_K: register 4h + q holds sub-blocks 8h + 2q, 8h + 2q + 1 (as k23_rows, q6k_rows) */
INLINE void kpack2_16(const void *vw, int64_t i, int32_t type, clex_kpack2 *p) {
    const block_q2_K *w2 = vw;
    const block_q3_K *w3 = vw;
    const block_q6_K *w6 = vw;
    const int three = type == CLEX_TYPE_Q3_K;
    __m256i u[8], v[8], sc16, bias;
    float dm = 0.0f;
    if (type == CLEX_TYPE_Q6_K) {
        sc16 = _mm256_cvtepi8_epi16(ld16(w6[i].scales));
        bias = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5));
        CLEX_UNROLL for (int h = 0; h < 2; h++) q6k_codes(w6[i].ql + 64 * h, w6[i].qh + 32 * h, u + 4 * h);
    } else {
        if (three) {
            sc16 = _mm256_cvtepi8_epi16(q3_scales16(w3[i].scales));
            bias = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 2));
        } else {
            const __m128i raw = ld16(w2[i].scales), m4 = _mm_set1_epi8(0x0F);
            sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
            bias = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4));
            dm = -h2f(w2[i].dmin);
        }
        __m256i hb = three ? ld(w3[i].hmask) : _mm256_setzero_si256();
        CLEX_UNROLL for (int h = 0; h < 2; h++) {
            __m256i q = ld((three ? w3[i].qs : w2[i].qs) + 32 * h);
            CLEX_UNROLL for (int b = 0; b < 4; b++) {
                u[4 * h + b] = _mm256_and_si256(q, _mm256_set1_epi8(3));
                q = _mm256_srli_epi16(q, 2);
                if (three) {
                    u[4 * h + b] = _mm256_or_si256(u[4 * h + b],
                                                   _mm256_and_si256(_mm256_slli_epi16(hb, 2), _mm256_set1_epi8(4)));
                    hb = _mm256_srli_epi16(hb, 1);
                }
            }
        }
    }
    CLEX_UNROLL for (int h = 0; h < 2; h++) {
        const __m256i half = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11)
                               : _mm256_permute2x128_si256(sc16, sc16, 0x00);   /* an immediate for clang */
        CLEX_UNROLL for (int q = 0; q < 4; q++) v[4 * h + q] = pair16(half, q);
    }
    kpack2_store(p, u, v, bias, h2f(type == CLEX_TYPE_Q6_K ? w6[i].d : three ? w3[i].d : w2[i].d), dm);
}

INLINE void kpack2_one(const void *vw, int64_t i, int32_t type, clex_kpack2 *p) {
    if (type == CLEX_TYPE_Q4_K || type == CLEX_TYPE_Q5_K) kpack2_45(vw, i, type == CLEX_TYPE_Q5_K, p);
    else kpack2_16(vw, i, type, p);
}

#define KPACK2_DEFINE(PFX, T)                                                                    \
    void PFX##_kpack_##T(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst) {     \
        const int64_t nsb = n / QK_K;                                                             \
        for (int64_t r = 0; r < rows; r++)                                                        \
            for (int64_t i = 0; i < nsb; i++)                                                     \
                kpack2_one((const uint8_t *)w + r * wstride, i, CLEX_TYPE_##T, (clex_kpack2 *)dst + r * nsb + i); \
    }
CLEX_X86_KPACK_TYPES(clex_avx2, KPACK2_DEFINE)

/* ------------------------------------------------------------------ Q8_K quantizer */

/* The largest |x| of 256 (NaN never chosen: max_ps returns its second operand, the running
 * maximum, when the first is NaN, as the reference's `>` skips it), then the first value of that
 * magnitude, sign kept; 0 when all are zero. */
INLINE float q8k_max(const float *x) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < QK_K / 8; k++) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * k), absmask), m);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    if (amax == 0.0f) return 0.0f;
    const __m256 va = _mm256_set1_ps(amax);
    for (int k = 0; k < QK_K / 8; k++) {
        const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * k), absmask), va, _CMP_EQ_OQ));
        if (hit) return x[8 * k + __builtin_ctz((unsigned)hit)];
    }
    return 0.0f;   /* not reached: amax is one of the |x| */
}

/* 8 codes: nearest(iscale * x), half to even, at most 127; 0 where the product is not a number
 * within [-127.5, 127.5] (the reference's q8k_code) */
INLINE __m256i q8k_codes8(const float *x, __m256 vis) {
    const __m256 f = _mm256_mul_ps(_mm256_loadu_ps(x), vis);
    const __m256 absf = _mm256_and_ps(f, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)));
    const __m256i ok = _mm256_castps_si256(_mm256_cmp_ps(absf, _mm256_set1_ps(127.5f), _CMP_LE_OQ));
    const __m256i q = _mm256_cvttps_epi32(_mm256_round_ps(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return _mm256_and_si256(_mm256_min_epi32(q, _mm256_set1_epi32(127)), ok);
}

/* four sums of 16 codes (t[k] = the two vectors of 8 of sum k added) -> int32 x 4 */
INLINE __m128i sums4(const __m256i t[4]) {
    const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(t[0], t[1]), _mm256_hadd_epi32(t[2], t[3]));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

INLINE void q8k_block(const float *x, block_q8_K *y) {
    const float max = q8k_max(x);
    if (max == 0.0f) {
        memset(y, 0, sizeof *y);
        return;
    }
    const float iscale = -127.0f / max;
    const __m256 vis = _mm256_set1_ps(iscale);
    __m128i sums[4];
    CLEX_UNROLL for (int g = 0; g < 4; g++) {   /* 64 codes: 2 x 32 stored, 4 bsums */
        __m256i t[4];
        CLEX_UNROLL for (int h = 0; h < 2; h++) {
            const float *xb = x + 64 * g + 32 * h;
            __m256i q[4];
            CLEX_UNROLL for (int k = 0; k < 4; k++) q[k] = q8k_codes8(xb + 8 * k, vis);
            t[2 * h] = _mm256_add_epi32(q[0], q[1]);
            t[2 * h + 1] = _mm256_add_epi32(q[2], q[3]);
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(y->qs + 64 * g + 32 * h), p);
        }
        sums[g] = sums4(t);
    }
    _mm_storeu_si128((__m128i *)y->bsums, _mm_packs_epi32(sums[0], sums[1]));
    _mm_storeu_si128((__m128i *)(y->bsums + 8), _mm_packs_epi32(sums[2], sums[3]));
    y->d = 1.0f / iscale;
}

void clex_avx2_quantize_q8_K(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) q8k_block(x + i * QK_K, &y[i]);
}

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
