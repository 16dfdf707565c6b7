/* The K-quants (Q2_K .. Q6_K: super-blocks of 256 values) and their activation type Q8_K: the
 * scalar reference dequantizers, dot products and the Q8_K quantizer (the specification the
 * SIMD kernels are held to). The block layouts are quant.h's.
 *
 * Dequantizers: bit-identical to gguf-py's numpy dequantizers, so the float operations are
 * theirs, in their order: each sub-block's scale (and minimum) is formed in float32 as
 * d * (float)sc and dmin * (float)m, then x = scale * (float)q - min. (No FMA contraction:
 * -std=c11 turns it off for GCC; the pragma does for clang.)
 *
 * Dot products: ggml's ggml_vec_dot_*_q8_K_generic arithmetic: an exact integer dot product per
 * sub-block, weighted by the sub-block's integer scale and summed per super-block in int32, the
 * minimums through the activations' bsums; then one float scale per super-block, d(weight) *
 * d(activation). No sum overflows int32 whatever the bytes (the largest, Q6_K's, is < 2^28). */
#include <math.h>
#include <string.h>

#include "internal.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ------------------------------------------------------------------ Q8_K (activations) */

/* ggml's nearest_int: round half to even (the default rounding mode) by the 1.5 * 2^23 trick.
 * A product that is not a number within [-127.5, 127.5] (NaN or Inf: only a non-finite row
 * makes one) gives code 0, so every code is defined whatever the input. */
static inline int8_t q8k_code(float f) {
    if (!(fabsf(f) <= 127.5f)) return 0;
    const float v = f + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, 4);
    const int q = (i & 0x007FFFFF) - 0x00400000;
    return (int8_t)(q < 127 ? q : 127);
}

/* ggml's quantize_row_q8_K_ref: per 256 values, `max` is the value of largest magnitude (the
 * first such, sign kept), iscale = -127 / max, q = nearest(iscale * x) (at most 127), d = 1 /
 * iscale (so d has the opposite sign of max); bsums[j] = the sum of codes 16j .. 16j + 15. An
 * all-zero block has d = 0, codes 0 and bsums 0. */
void clex_quantize_q8_K_ref(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float *xb = x + i * QK_K;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++)
            if (fabsf(xb[j]) > amax) { amax = fabsf(xb[j]); max = xb[j]; }
        memset(&y[i], 0, sizeof y[i]);
        if (amax == 0.0f) continue;
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) y[i].qs[j] = q8k_code(iscale * xb[j]);
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[i].qs[j * 16 + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1.0f / iscale;
    }
}

void clex_dequant_q8_K(const void *vx, float *y, int64_t n) {
    const block_q8_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++)
        for (int j = 0; j < QK_K; j++) y[i * QK_K + j] = x[i].d * (float)x[i].qs[j];
}

/* ------------------------------------------------------------------ code and scale unpacking */

/* Q2_K / Q3_K low bits: value v of a super-block is 2 bits of byte (v/128)*32 + v%32 of qs, at
 * shift 2 * ((v%128) / 32): each 32 bytes hold 128 values as four planes of 32. */
static inline int q2_bits(const uint8_t *qs, int v) {
    return (qs[(v >> 7) * 32 + (v & 31)] >> (2 * ((v >> 5) & 3))) & 3;
}

/* Q3_K's code of value v: the 2 low bits, minus 4 unless v's bit of hmask is set */
static inline int q3_code(const block_q3_K *b, int v) {
    return q2_bits(b->qs, v) - (((b->hmask[v & 31] >> (v >> 5)) & 1) ? 0 : 4);
}

/* Q3_K's 16 6-bit scales, minus 32: the low 4 bits are the nibbles of bytes 0..7 (low nibbles
 * for scales 0..7, high for 8..15), the high 2 bits come from bytes 8..11, scale j's at
 * byte 8 + j%4, shift 2 * (j/4). */
static void q3_scales(const uint8_t s[12], int sc[16]) {
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? s[j] & 0x0F : s[j - 8] >> 4;
        const int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        sc[j] = (lo | hi << 4) - 32;
    }
}

/* Q4_K / Q5_K scale and minimum of sub-block j (0..7), 6 bits each: j < 4 in the low 6 bits of
 * bytes j and j + 4; j >= 4 in the nibbles of byte j + 4 with the top 2 bits of bytes j - 4
 * (scale) and j (minimum). */
static inline void k4_scale_min(const uint8_t s[K_SCALE_SIZE], int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K / Q5_K low 4 bits of value l (0..31) of sub-block j: 64 values per 32 bytes, the even
 * sub-block in the low nibbles, the odd one in the high nibbles */
static inline int k4_nibble(const uint8_t *qs, int j, int l) {
    return (qs[(j >> 1) * 32 + l] >> (4 * (j & 1))) & 0x0F;
}

/* Q5_K's code of value l of sub-block j: the nibble and bit j of qh[l] as the fifth bit */
static inline int q5k_code(const block_q5_K *b, int j, int l) {
    return k4_nibble(b->qs, j, l) | ((b->qh[l] >> j) & 1) << 4;
}

/* Q6_K's code of value v (0..255), minus 32: each half of 128 values takes 64 bytes of ql and
 * 32 of qh; within a half, value r has the nibble (r/64: low, high) of ql[r%64] and the 2 bits
 * at shift 2 * (r/32) of qh[r%32]. */
static inline int q6_code(const block_q6_K *b, int v) {
    const int h = v >> 7, r = v & 127;
    const int lo = (b->ql[h * 64 + (r & 63)] >> (4 * (r >> 6))) & 0x0F;
    const int hi = (b->qh[h * 32 + (r & 31)] >> (2 * (r >> 5))) & 3;
    return (lo | hi << 4) - 32;
}

/* ------------------------------------------------------------------ dequantizers */

void clex_dequant_q2_K(const void *vx, float *y, int64_t n) {
    const block_q2_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = clex_fp16_to_fp32(x[i].d), dmin = clex_fp16_to_fp32(x[i].dmin);
        for (int j = 0; j < QK_K / 16; j++) {
            const float dl = d * (float)(x[i].scales[j] & 0x0F), ml = dmin * (float)(x[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++) y[i * QK_K + j * 16 + l] = dl * (float)q2_bits(x[i].qs, j * 16 + l) - ml;
        }
    }
}

void clex_dequant_q3_K(const void *vx, float *y, int64_t n) {
    const block_q3_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = clex_fp16_to_fp32(x[i].d);
        int sc[16];
        q3_scales(x[i].scales, sc);
        for (int j = 0; j < QK_K / 16; j++) {
            const float dl = d * (float)sc[j];
            for (int l = 0; l < 16; l++) y[i * QK_K + j * 16 + l] = dl * (float)q3_code(&x[i], j * 16 + l);
        }
    }
}

void clex_dequant_q4_K(const void *vx, float *y, int64_t n) {
    const block_q4_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = clex_fp16_to_fp32(x[i].d), dmin = clex_fp16_to_fp32(x[i].dmin);
        for (int j = 0; j < QK_K / 32; j++) {
            int sc, m;
            k4_scale_min(x[i].scales, j, &sc, &m);
            const float dl = d * (float)sc, ml = dmin * (float)m;
            for (int l = 0; l < 32; l++) y[i * QK_K + j * 32 + l] = dl * (float)k4_nibble(x[i].qs, j, l) - ml;
        }
    }
}

void clex_dequant_q5_K(const void *vx, float *y, int64_t n) {
    const block_q5_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = clex_fp16_to_fp32(x[i].d), dmin = clex_fp16_to_fp32(x[i].dmin);
        for (int j = 0; j < QK_K / 32; j++) {
            int sc, m;
            k4_scale_min(x[i].scales, j, &sc, &m);
            const float dl = d * (float)sc, ml = dmin * (float)m;
            for (int l = 0; l < 32; l++) y[i * QK_K + j * 32 + l] = dl * (float)q5k_code(&x[i], j, l) - ml;
        }
    }
}

void clex_dequant_q6_K(const void *vx, float *y, int64_t n) {
    const block_q6_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = clex_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK_K / 16; j++) {
            const float dl = d * (float)x[i].scales[j];
            for (int l = 0; l < 16; l++) y[i * QK_K + j * 16 + l] = dl * (float)q6_code(&x[i], j * 16 + l);
        }
    }
}

/* ------------------------------------------------------------------ dot products with Q8_K */

void clex_vec_dot_q2_K_q8_K_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const block_q2_K *w = vw;
    const block_q8_K *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int isum = 0, summs = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            int acc = 0;
            for (int l = 0; l < 16; l++) acc += q2_bits(w[i].qs, j * 16 + l) * x[i].qs[j * 16 + l];
            isum += (w[i].scales[j] & 0x0F) * acc;
            summs += (w[i].scales[j] >> 4) * x[i].bsums[j];
        }
        const float dall = x[i].d * clex_fp16_to_fp32(w[i].d), dmin = x[i].d * clex_fp16_to_fp32(w[i].dmin);
        sum += dall * (float)isum - dmin * (float)summs;
    }
    *s = sum;
}

void clex_vec_dot_q3_K_q8_K_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const block_q3_K *w = vw;
    const block_q8_K *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int sc[16], isum = 0;
        q3_scales(w[i].scales, sc);
        for (int j = 0; j < QK_K / 16; j++) {
            int acc = 0;
            for (int l = 0; l < 16; l++) acc += q3_code(&w[i], j * 16 + l) * x[i].qs[j * 16 + l];
            isum += sc[j] * acc;
        }
        sum += (clex_fp16_to_fp32(w[i].d) * x[i].d) * (float)isum;
    }
    *s = sum;
}

/* Q4_K and Q5_K: the same scales and minimums, 4- or 5-bit codes */
#define DEFINE_K4_DOT(fn, block_t, code)                                                          \
    void fn(int64_t n, float *s, const void *vw, const void *vx) {                                \
        const block_t *w = vw;                                                                    \
        const block_q8_K *x = vx;                                                                 \
        float sum = 0.0f;                                                                         \
        for (int64_t i = 0; i < n / QK_K; i++) {                                                  \
            int isum = 0, summ = 0;                                                               \
            for (int j = 0; j < QK_K / 32; j++) {                                                 \
                int sc, m, acc = 0;                                                               \
                k4_scale_min(w[i].scales, j, &sc, &m);                                            \
                for (int l = 0; l < 32; l++) acc += code(&w[i], j, l) * x[i].qs[j * 32 + l];      \
                isum += sc * acc;                                                                 \
                summ += m * (x[i].bsums[2 * j] + x[i].bsums[2 * j + 1]);                          \
            }                                                                                     \
            const float d = x[i].d * clex_fp16_to_fp32(w[i].d);                                   \
            const float dmin = x[i].d * clex_fp16_to_fp32(w[i].dmin);                             \
            sum += d * (float)isum - dmin * (float)summ;                                          \
        }                                                                                         \
        *s = sum;                                                                                 \
    }

static inline int q4k_code(const block_q4_K *b, int j, int l) { return k4_nibble(b->qs, j, l); }

DEFINE_K4_DOT(clex_vec_dot_q4_K_q8_K_generic, block_q4_K, q4k_code)
DEFINE_K4_DOT(clex_vec_dot_q5_K_q8_K_generic, block_q5_K, q5k_code)

void clex_vec_dot_q6_K_q8_K_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const block_q6_K *w = vw;
    const block_q8_K *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int isum = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            int acc = 0;
            for (int l = 0; l < 16; l++) acc += q6_code(&w[i], j * 16 + l) * x[i].qs[j * 16 + l];
            isum += w[i].scales[j] * acc;
        }
        sum += (clex_fp16_to_fp32(w[i].d) * x[i].d) * (float)isum;
    }
    *s = sum;
}
