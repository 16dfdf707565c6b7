/* AVX-512 (F, BW, VL, DQ) + VNNI kernels of the K-quant files' weight types: Q5_0, Q5_1 and
 * IQ4_NL against Q8_0 / Q8_1 activations, Q2_K .. Q6_K and IQ4_XS against Q8_K (x86_k.h says
 * what they hold to). Installed by avx512.c only on a CPU with VNNI; without it these types keep
 * their AVX2 kernels.
 *
 * Super-block types: 64 codes per register, in the activations' order, so the activations load
 * as they lie: 32 bytes of packed codes are broadcast to both halves and a masked shift moves the
 * upper half's bits down (Q4_K's high nibbles, Q2_K / Q3_K's next plane), the extra high bits
 * come from a byte test against each half's bit into a masked add (Q3_K, Q5_K) or from shifts
 * (Q6_K). maddubs (unsigned codes x signed activations -> int16 pairs) and one VNNI dpwssd
 * (pairs x int16 sub-block scales, summed into int32) take each register into the super-block's
 * integer sum; the scales reach each lane by one vpermw. Offsets and minimums go through the
 * bsums as in avx2_k.c. The 32-value types (Q5_0, Q4_0, IQ4_NL, Q5_1) run two blocks per
 * register into VNNI dpbusd, the fifth bits straight from qh into a byte mask, the block scales
 * converted 16 at a time; Q8_0 runs signed32_body.h's 256-bit scheme with VNNI. */
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

/* ------------------------------------------------------------------ Q4_K, Q5_K */

INLINE void k45_rows(int64_t n, float *s, const void *vw, const block_q8_K *const *x, int R, int five) {
    const block_q4_K *w4 = vw;
    const block_q5_K *w5 = vw;
    const __m128i mpair = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    __m512 acc[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const __m128i sm = k4_scales(five ? w5[i].scales : w4[i].scales);
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, mpair));   /* m[t / 2] */
        __m512i u[4], v[4];
        k45_unpack(five ? w5[i].qs : w4[i].qs, five ? w5[i].qh : NULL, _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sm)),
                   five, u, v);
        const __m128 wdm = load_dmin(five ? &w5[i].d : &w4[i].d);
        CLEX_UNROLL for (int j = 0; j < R; j++) {
            __m512i isum = _mm512_setzero_si512();
            CLEX_UNROLL for (int k = 0; k < 4; k++) isum = dot_scaled(isum, u[k], x[j][i].qs + 64 * k, v[k]);
            acc[j] = fscale_min(acc[j], wdm, x[j][i].d, isum, _mm256_madd_epi16(ld32(x[j][i].bsums), mins));
        }
    }
    finish(s, acc, R);
}

#define Q4K_ROWS(n, s, w, x, R) k45_rows(n, s, w, x, R, 0)
#define Q5K_ROWS(n, s, w, x, R) k45_rows(n, s, w, x, R, 1)
CLEX_X86_K_DEFINE(clex_avx512vnni, Q4_K, block_q8_K, Q4K_ROWS)
CLEX_X86_K_DEFINE(clex_avx512vnni, Q5_K, block_q8_K, Q5K_ROWS)

/* ------------------------------------------------------------------ Q6_K */

INLINE void q6k_rows(int64_t n, float *s, const void *vw, const block_q8_K *const *x, int R) {
    const block_q6_K *w = vw;
    __m512 acc[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(ld16(w[i].scales));
        const __m256i off = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5));   /* -32 sc */
        __m512i u[4], v[4];
        q6k_unpack(&w[i], u);
        CLEX_UNROLL for (int c = 0; c < 4; c++) v[c] = scales16(_mm512_castsi256_si512(sc16), c);
        const float wd = h2f(w[i].d);
        CLEX_UNROLL for (int j = 0; j < R; j++) {
            __m512i isum = _mm512_zextsi256_si512(_mm256_madd_epi16(ld32(x[j][i].bsums), off));
            CLEX_UNROLL for (int c = 0; c < 4; c++) isum = dot_scaled(isum, u[c], x[j][i].qs + 64 * c, v[c]);
            acc[j] = fscale(acc[j], wd, x[j][i].d, isum);
        }
    }
    finish(s, acc, R);
}

CLEX_X86_K_DEFINE(clex_avx512vnni, Q6_K, block_q8_K, q6k_rows)

/* ------------------------------------------------------------------ Q2_K, Q3_K */

/* avx2_k.c's q3_scales16: the 16 scales minus 32, as bytes */
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

/* the 2-bit planes: register c holds planes 2 (c % 2), 2 (c % 2) + 1 of half c / 2; Q3_K's
 * third bit of value 64c + l is bit 2c (l < 32) or 2c + 1 of hmask[l % 32] */
INLINE void k23_unpack(const uint8_t *qs, const uint8_t *hmask, int three, __m512i u[4]) {
    const __m512i m2 = _mm512_set1_epi8(3);
    CLEX_UNROLL for (int h = 0; h < 2; h++) {
        const __m512i q = bcast32(qs + 32 * h);
        const __m512i t = _mm512_mask_srli_epi16(q, 0xFFFF0000u, q, 2);
        u[2 * h] = _mm512_and_si512(t, m2);
        u[2 * h + 1] = _mm512_and_si512(_mm512_srli_epi16(t, 4), m2);
    }
    if (three) {
        const __m512i hb = bcast32(hmask);
        CLEX_UNROLL for (int c = 0; c < 4; c++)
            u[c] = _mm512_mask_add_epi8(u[c], _mm512_test_epi8_mask(hb, halves8(1 << (2 * c), 1 << (2 * c + 1))), u[c],
                                        _mm512_set1_epi8(4));
    }
}

/* Q3_K: mins = -4 sc (the code offset, into the integer sum); Q2_K: the minimums (times dmin) */
INLINE void k23_rows(int64_t n, float *s, const void *vw, const block_q8_K *const *x, int R, int three) {
    const block_q2_K *w2 = vw;
    const block_q3_K *w3 = vw;
    __m512 acc[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m256i sc16, mins;
        if (three) {
            sc16 = _mm256_cvtepi8_epi16(q3_scales16(w3[i].scales));
            mins = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 2));
        } else {
            const __m128i raw = ld16(w2[i].scales), m4 = _mm_set1_epi8(0x0F);
            sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
            mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4));
        }
        __m512i u[4], v[4];
        k23_unpack(three ? w3[i].qs : w2[i].qs, three ? w3[i].hmask : NULL, three, u);
        CLEX_UNROLL for (int c = 0; c < 4; c++) v[c] = scales16(_mm512_castsi256_si512(sc16), c);
        const float wd = h2f(three ? w3[i].d : w2[i].d);
        const __m128 wdm = three ? _mm_setzero_ps() : load_dmin(&w2[i].d);
        CLEX_UNROLL for (int j = 0; j < R; j++) {
            const __m256i msum = _mm256_madd_epi16(ld32(x[j][i].bsums), mins);
            __m512i isum = three ? _mm512_zextsi256_si512(msum) : _mm512_setzero_si512();
            CLEX_UNROLL for (int c = 0; c < 4; c++) isum = dot_scaled(isum, u[c], x[j][i].qs + 64 * c, v[c]);
            acc[j] = three ? fscale(acc[j], wd, x[j][i].d, isum) : fscale_min(acc[j], wdm, x[j][i].d, isum, msum);
        }
    }
    finish(s, acc, R);
}

#define Q2K_ROWS(n, s, w, x, R) k23_rows(n, s, w, x, R, 0)
#define Q3K_ROWS(n, s, w, x, R) k23_rows(n, s, w, x, R, 1)
CLEX_X86_K_DEFINE(clex_avx512vnni, Q2_K, block_q8_K, Q2K_ROWS)
CLEX_X86_K_DEFINE(clex_avx512vnni, Q3_K, block_q8_K, Q3K_ROWS)

/* ------------------------------------------------------------------ IQ4_XS */

/* the 8 scales minus 32 as int16: lane j takes nibble j % 2 of scales_l[j / 2] and bits 2j, 2j + 1
 * of scales_h (the 8 bytes from scales_h on, loaded as one word) */
INLINE __m128i iq4xs_scales(const block_iq4_xs *b) {
    uint64_t u;
    memcpy(&u, &b->scales_h, 8);
    const __m128i v = _mm_cvtsi64_si128((long long)u);
    const __m128i lo = _mm_shuffle_epi8(v, _mm_setr_epi8(2, -1, 2, -1, 3, -1, 3, -1, 4, -1, 4, -1, 5, -1, 5, -1));
    const __m128i hi = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1));
    const __m128i l4 = _mm_and_si128(_mm_srlv_epi16(lo, _mm_setr_epi16(0, 4, 0, 4, 0, 4, 0, 4)), _mm_set1_epi16(0x0F));
    const __m128i h2 = _mm_and_si128(_mm_srlv_epi16(hi, _mm_setr_epi16(0, 2, 4, 6, 8, 10, 12, 14)), _mm_set1_epi16(3));
    return _mm_sub_epi16(_mm_or_si128(l4, _mm_slli_epi16(h2, 4)), _mm_set1_epi16(32));
}

/* 32 bytes of two 16-byte sub-blocks -> their 64 levels in order: the 128-bit lanes [A, A, B, B],
 * the odd lanes shifted to their high nibbles, then the table lookup */
INLINE __m512i iq4_levels64(const uint8_t *qs, __m512i lv) {
    const __m512i q = _mm512_castsi256_si512(ld32(qs));
    const __m512i qq = _mm512_shuffle_i64x2(q, q, _MM_SHUFFLE(1, 1, 0, 0));
    const __m512i nib = _mm512_and_si512(_mm512_mask_srli_epi16(qq, 0xFF00FF00u, qq, 4), _mm512_set1_epi8(0x0F));
    return _mm512_shuffle_epi8(lv, nib);
}

INLINE void iq4xs_rows(int64_t n, float *s, const void *vw, const block_q8_K *const *x, int R) {
    const block_iq4_xs *w = vw;
    const __m512i lv = _mm512_broadcast_i32x4(ld16(clex_iq4nl_levels));
    __m512 acc[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const __m512i sc = _mm512_castsi128_si512(iq4xs_scales(&w[i]));
        __m512i a[4], v[4];
        __mmask64 neg[4];
        CLEX_UNROLL for (int k = 0; k < 4; k++) {
            const __m512i l = iq4_levels64(w[i].qs + 32 * k, lv);
            a[k] = _mm512_abs_epi8(l);
            neg[k] = _mm512_movepi8_mask(l);
            v[k] = scales32(sc, k);
        }
        const float wd = h2f(w[i].d);
        CLEX_UNROLL for (int j = 0; j < R; j++) {
            __m512i isum = _mm512_setzero_si512();
            CLEX_UNROLL for (int k = 0; k < 4; k++) {
                const __m512i xq = ld64(x[j][i].qs + 64 * k);
                const __m512i sx = _mm512_mask_sub_epi8(xq, neg[k], _mm512_setzero_si512(), xq);
                isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(a[k], sx), v[k]);
            }
            acc[j] = fscale(acc[j], wd, x[j][i].d, isum);
        }
    }
    finish(s, acc, R);
}

CLEX_X86_K_DEFINE(clex_avx512vnni, IQ4_XS, block_q8_K, iq4xs_rows)

/* ------------------------------------------------------------------ Q5_0, IQ4_NL, Q5_1 */

/* the 256-bit scheme of avx2_q5.c (signed32_body.h) with VNNI: while no 512-bit instruction is
 * in flight, port 1 stays open to vector work */
INLINE __m256i ld(const void *p) { return ld32(p); }

INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* the sign trick into VNNI (a masked subtract for the signs measured slower than vpsignb) */
typedef struct {
    __m256i aw, wq;     /* |w|, w */
} s32w;

INLINE s32w s32_prep(__m256i wq) { return (s32w){_mm256_sign_epi8(wq, wq), wq}; }

INLINE __m256i s32_dot(const s32w *w, const int8_t *x) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w->aw, _mm256_sign_epi8(ld(x), w->wq));
}

#include "signed32_body.h"
#include "avx512_s32.h"
#include "avx512_tr16.h"

/* acc += d * (|w| . (x with w's signs)) for the pair of activation blocks at xa, xb; the upper
 * half only where keep says (a lone last block) */
INLINE __m512 signed_pair_row(__m512 acc, __m512i aw, __mmask64 neg, const int8_t *xa, const int8_t *xb, __m512 d,
                              __mmask16 keep) {
    const __m512i xq = load2(xa, xb);
    const __m512i sx = _mm512_mask_sub_epi8(xq, neg, _mm512_setzero_si512(), xq);
    const __m512 prod = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), aw, sx));
    return _mm512_mask3_fmadd_ps(d, prod, acc, keep);
}

/* acc += d * sum((codes - 8) x) for the pair of activation blocks at xa, xb (keep as above) */
INLINE __m512 q4_0_pair_row(__m512 acc, __m512i codes, const int8_t *xa, const int8_t *xb, __m512 d, __mmask16 keep) {
    const __m512i xq = load2(xa, xb);
    const __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, xq);
    const __m512i u = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q4_0_offsets2(), xq);
    return _mm512_mask3_fmadd_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(t, u)), acc, keep);
}

/* blocks i0 .. i0 + cnt - 1 (cnt <= 16) of every row */
INLINE void signed32_group512(const void *w, int64_t i0, int cnt, int wt, const block_q8_0 *const *x, int R,
                              __m512 *acc) {
    const size_t ws = signed_stride(wt);
    const __m512 wd = block_scales16((const uint8_t *)w + i0 * ws, ws, cnt);
    __m512 d16[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) d16[j] = _mm512_mul_ps(wd, block_scales16(&x[j][i0].d, sizeof(block_q8_0), cnt));
    CLEX_UNROLL for (int p = 0; p < 8; p++) {
        if (2 * p < cnt) {
            const int64_t i = i0 + 2 * p, i1 = 2 * p + 1 < cnt ? i + 1 : i;
            const __mmask16 keep = 2 * p + 1 < cnt ? 0xFFFF : 0x00FF;
            if (wt == W_Q4_0) {
                const __m512i codes = q4_0_codes2((const block_q4_0 *)w + i, (const block_q4_0 *)w + i1);
                CLEX_UNROLL for (int j = 0; j < R; j++)
                    acc[j] = q4_0_pair_row(acc[j], codes, x[j][i].qs, x[j][i1].qs, pair_scale(d16[j], p), keep);
                continue;
            }
            const __m512i wq = signed_weights2(w, i, i1, wt);
            const __m512i aw = _mm512_abs_epi8(wq);
            const __mmask64 neg = _mm512_movepi8_mask(wq);
            CLEX_UNROLL for (int j = 0; j < R; j++)
                acc[j] = signed_pair_row(acc[j], aw, neg, x[j][i].qs, x[j][i1].qs, pair_scale(d16[j], p), keep);
        }
    }
}

INLINE void signed32_rows512(int64_t n, float *s, const void *w, const block_q8_0 *const *x, int R, int wt) {
    const int64_t nb = n / QK;
    __m512 acc[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = _mm512_setzero_ps();
    int64_t i0 = 0;
    for (; i0 + 16 <= nb; i0 += 16) signed32_group512(w, i0, 16, wt, x, R, acc);
    /* the rest as groups of 8, 4, 2, 1: each a constant count, so straight code */
    CLEX_UNROLL for (int g = 8; g >= 1; g /= 2)
        if ((nb - i0) & g) {
            signed32_group512(w, i0, g, wt, x, R, acc);
            i0 += g;
        }
    if (wt == W_Q4_0) CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = q4_0_down(acc[j]);
    finish(s, acc, R);
}

/* Q8_0 (no unpacking) runs faster in 256-bit registers, the others in 512-bit (measured) */
#define Q8_0_ROWS(n, s, w, x, R) signed32_rows(n, s, w, x, R, W_Q8_0)
#define Q5_0_ROWS(n, s, w, x, R) signed32_rows512(n, s, w, x, R, W_Q5_0)
#define IQ4_NL_ROWS(n, s, w, x, R) signed32_rows512(n, s, w, x, R, W_IQ4_NL)
#define Q4_0_ROWS(n, s, w, x, R) signed32_rows512(n, s, w, x, R, W_Q4_0)
CLEX_X86_K_DEFINE(clex_avx512vnni, Q5_0, block_q8_0, Q5_0_ROWS)
CLEX_X86_K_DEFINE(clex_avx512vnni, Q8_0, block_q8_0, Q8_0_ROWS)
CLEX_X86_K_DEFINE(clex_avx512vnni, Q4_0, block_q8_0, Q4_0_ROWS)

/* Q4_1: one weight row against R activation rows (avx512_s32.h) */
INLINE void q4_1_rows_one_w(int64_t n, float *s, const void *w, const block_q8_1 *const *x, int R) {
    const block_q4_1 *wr[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) wr[j] = w;
    q4_1_rows(n, s, wr, x, R);
}
CLEX_X86_K_DEFINE(clex_avx512vnni, Q4_1, block_q8_1, q4_1_rows_one_w)
CLEX_X86_K_DEFINE(clex_avx512vnni, IQ4_NL, block_q8_0, IQ4_NL_ROWS)

/* the d of block a in the low 8 lanes, b's in the high 8 */
INLINE __m512 scales2(float a, float b) {
    return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b));
}

/* Q5_1: (d * xd) * sum(q x) + m * xs per block */
INLINE void q5_1_rows(int64_t n, float *s, const void *vw, const block_q8_1 *const *x, int R) {
    const block_q5_1 *w = vw;
    const int64_t nb = n / QK;
    __m512 acc[4];
    float accm[4];
    CLEX_UNROLL for (int j = 0; j < R; j++) acc[j] = _mm512_setzero_ps(), accm[j] = 0.0f;
    for (int64_t i = 0; i < nb; i += 2) {
        const int64_t i1 = i + 1 < nb ? i + 1 : i;
        const __mmask16 keep = i + 1 < nb ? 0xFFFF : 0x00FF;
        const __m512i nib = nibbles2(w[i].qs, w[i1].qs);
        const __m512i u = _mm512_mask_add_epi8(nib, bits2(w[i].qh, w[i1].qh), nib, _mm512_set1_epi8(16));
        const float d0 = h2f(w[i].d), d1 = h2f(w[i1].d), m0 = h2f(w[i].m), m1 = i + 1 < nb ? h2f(w[i1].m) : 0.0f;
        CLEX_UNROLL for (int j = 0; j < R; j++) {
            const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, load2(x[j][i].qs, x[j][i1].qs));
            const __m512 d = scales2(d0 * x[j][i].d, d1 * x[j][i1].d);
            acc[j] = _mm512_mask3_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc[j], keep);
            accm[j] += m0 * x[j][i].s + m1 * x[j][i1].s;
        }
    }
    finish(s, acc, R);
    CLEX_UNROLL for (int j = 0; j < R; j++) s[j] += accm[j];
}

CLEX_X86_K_DEFINE(clex_avx512vnni, Q5_1, block_q8_1, q5_1_rows)

/* ------------------------------------------------------------------ packing for the tile kernels */

/* One super-block of one row for the tile kernels (x86_k.h's packed groups): its codes as unsigned
 * bytes in the activations' order (u), and its scale vector(s): sv[0] lane j = d * the scale of
 * sub-block j (sub-blocks of 32: lanes 0 .. 7, with -dmin * the minimums in lanes 8 .. 15),
 * sv[1] (Q2_K) lane j = -dmin * the minimum of sub-block j. */
INLINE void kpack_one(const void *vw, int64_t i, int32_t type, __m512i u[4], __m512 sv[2]) {
    __m512i v[4];
    sv[1] = _mm512_setzero_ps();
    if (type == CLEX_TYPE_Q4_K || type == CLEX_TYPE_Q5_K) {
        const int five = type == CLEX_TYPE_Q5_K;
        const block_q4_K *w4 = vw;
        const block_q5_K *w5 = vw;
        const __m128i sm = k4_scales(five ? w5[i].scales : w4[i].scales);
        k45_unpack(five ? w5[i].qs : w4[i].qs, five ? w5[i].qh : NULL, _mm512_setzero_si512(), five, u, v);
        const clex_fp16 *dm = five ? &w5[i].d : &w4[i].d;
        const __m512 sc = _mm512_mul_ps(_mm512_set1_ps(h2f(dm[0])), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sm)));
        const __m512 mn = _mm512_mul_ps(_mm512_set1_ps(-h2f(dm[1])),
                                        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_srli_si128(sm, 8))));
        sv[0] = _mm512_insertf32x8(sc, _mm512_castps512_ps256(mn), 1);
    } else if (type == CLEX_TYPE_Q6_K) {
        const block_q6_K *w = vw;
        q6k_unpack(&w[i], u);
        sv[0] = _mm512_mul_ps(_mm512_set1_ps(h2f(w[i].d)), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld16(w[i].scales))));
    } else if (type == CLEX_TYPE_Q3_K) {
        const block_q3_K *w = vw;
        k23_unpack(w[i].qs, w[i].hmask, 1, u);
        sv[0] = _mm512_mul_ps(_mm512_set1_ps(h2f(w[i].d)),
                              _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q3_scales16(w[i].scales))));
    } else if (type == CLEX_TYPE_IQ4_XS) {   /* the signed levels plus 128 */
        const block_iq4_xs *w = vw;
        const __m512i lv = _mm512_broadcast_i32x4(ld16(clex_iq4nl_levels));
        CLEX_UNROLL for (int k = 0; k < 4; k++)
            u[k] = _mm512_xor_si512(iq4_levels64(w[i].qs + 32 * k, lv), _mm512_set1_epi8((char)0x80));
        sv[0] = _mm512_mul_ps(_mm512_set1_ps(h2f(w[i].d)),
                              _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm256_zextsi128_si256(iq4xs_scales(&w[i])))));
    } else {   /* Q2_K */
        const block_q2_K *w = vw;
        const __m128i raw = ld16(w[i].scales), m4 = _mm_set1_epi8(0x0F);
        k23_unpack(w[i].qs, NULL, 0, u);
        sv[0] = _mm512_mul_ps(_mm512_set1_ps(h2f(w[i].d)), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(raw, m4))));
        sv[1] = _mm512_mul_ps(_mm512_set1_ps(-h2f(w[i].dmin)),
                              _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(raw, 4), m4))));
    }
}

/* rows of n values into groups of 16 rows (the last one R = rows mod 16 if not 0), x86_k.h's
 * layout: each super-block's 16 rows unpacked, then their codes and scale vectors transposed 16 x
 * 16 (rows into the lanes) and stored R dwords to a vector */
/* The pack reads 16 rows a super-block at a time, 16 streams a row apart: the super-block
 * KPACK_AHEAD on in each row is asked for while this one is unpacked (pp512 of the 1.1B Q5_K_M
 * file on the Xeon VM: about 1.5% faster; the pack is ~7% of its prefill). */
#define KPACK_AHEAD 4
INLINE void kpack_rows(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst, int32_t type) {
    const int64_t nsb = n / QK_K;
    const int nvec = clex_kpack_nvec(type);
    const size_t rowb = (size_t)nsb * clex_kpack_bytes(type);
    const size_t sbb = (size_t)clex_traits(type)->bytes;
    for (int64_t g0 = 0; g0 < rows; g0 += 16) {
        const int R = rows - g0 < 16 ? (int)(rows - g0) : 16;
        const size_t vs = 4 * (size_t)R;
        const __mmask16 m = (__mmask16)((1u << R) - 1);
        uint8_t *gb = (uint8_t *)dst + (size_t)g0 * rowb;
        for (int64_t i = 0; i < nsb; i++) {
            uint8_t *o = gb + (size_t)i * R * clex_kpack_bytes(type);
            if (i + KPACK_AHEAD < nsb)
                for (int r = 0; r < R; r++) {
                    const uint8_t *a = (const uint8_t *)w + (g0 + r) * wstride + (size_t)(i + KPACK_AHEAD) * sbb;
                    for (size_t b = 0; b < sbb; b += 64) _mm_prefetch((const char *)a + b, _MM_HINT_T0);
                    _mm_prefetch((const char *)a + sbb - 1, _MM_HINT_T0);
                }
            __m512i u[16][4], t[16], c[16];
            __m512 sv[2][16];
            for (int r = 0; r < 16; r++) {
                if (r < R) {
                    __m512 s2[2];
                    kpack_one((const uint8_t *)w + (g0 + r) * wstride, i, type, u[r], s2);
                    sv[0][r] = s2[0], sv[1][r] = s2[1];
                } else {
                    CLEX_UNROLL for (int k = 0; k < 4; k++) u[r][k] = _mm512_setzero_si512();
                    sv[0][r] = sv[1][r] = _mm512_setzero_ps();
                }
            }
            CLEX_UNROLL for (int q = 0; q < 4; q++) {
                CLEX_UNROLL for (int r = 0; r < 16; r++) c[r] = u[r][q];
                tr16_epi32(c, t);
                CLEX_UNROLL for (int k = 0; k < 16; k++) _mm512_mask_storeu_epi32(o + (16 * q + k) * vs, m, t[k]);
            }
            o += 64 * vs;
            for (int h = 0; h < (nvec + 15) / 16; h++) {
                CLEX_UNROLL for (int r = 0; r < 16; r++) c[r] = _mm512_castps_si512(sv[h][r]);
                tr16_epi32(c, t);
                for (int k = 0; k < 16 && 16 * h + k < nvec; k++) _mm512_mask_storeu_epi32(o + (16 * h + k) * vs, m, t[k]);
            }
        }
    }
}

#define KPACK_DEFINE(PFX, T)                                                                     \
    void PFX##_kpack_##T(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst) {     \
        kpack_rows(n, w, wstride, rows, dst, CLEX_TYPE_##T);                                      \
    }
CLEX_X86_KPACK_TYPES(clex_avx512vnni, KPACK_DEFINE)
KPACK_DEFINE(clex_avx512vnni, IQ4_XS)

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
