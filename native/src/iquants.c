/* The non-linear 4-bit types: IQ4_NL (blocks of 32, paired with Q8_0 activations) and IQ4_XS
 * (super-blocks of 256 with 6-bit sub-block scales, paired with Q8_K): scalar reference
 * dequantizers, bit-identical to gguf-py's, and dot products with ggml's generic arithmetic
 * (an integer dot product per (sub-)block, then the float scales). */
#include "internal.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* The 16 levels a 4-bit index selects (ggml's kvalues_iq4nl). */
const int8_t clex_iq4nl_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

void clex_dequant_iq4_nl(const void *vx, float *y, int64_t n) {
    const block_iq4_nl *x = vx;
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = clex_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[i * QK + j] = d * (float)clex_iq4nl_levels[x[i].qs[j] & 0x0F];
            y[i * QK + j + QK / 2] = d * (float)clex_iq4nl_levels[x[i].qs[j] >> 4];
        }
    }
}

void clex_vec_dot_iq4_nl_q8_0_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const block_iq4_nl *w = vw;
    const block_q8_0 *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        int acc = 0;
        for (int j = 0; j < QK / 2; j++) {
            acc += clex_iq4nl_levels[w[i].qs[j] & 0x0F] * x[i].qs[j];
            acc += clex_iq4nl_levels[w[i].qs[j] >> 4] * x[i].qs[j + QK / 2];
        }
        sum += (float)acc * (clex_fp16_to_fp32(w[i].d) * clex_fp16_to_fp32(x[i].d));
    }
    *s = sum;
}

/* IQ4_XS scale of sub-block j (0..7), minus 32: the low 4 bits in nibble j%2 of scales_l[j/2],
 * the high 2 bits at shift 2j of scales_h */
static inline int iq4xs_scale(const block_iq4_xs *b, int j) {
    return (((b->scales_l[j >> 1] >> (4 * (j & 1))) & 0x0F) | ((b->scales_h >> (2 * j)) & 3) << 4) - 32;
}

/* sub-block j's 32 values: the low nibbles of its 16 bytes, then the high nibbles */
void clex_dequant_iq4_xs(const void *vx, float *y, int64_t n) {
    const block_iq4_xs *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = clex_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK_K / 32; j++) {
            const float dl = d * (float)iq4xs_scale(&x[i], j);
            const uint8_t *qs = x[i].qs + j * 16;
            float *yb = y + i * QK_K + j * 32;
            for (int l = 0; l < 16; l++) {
                yb[l] = dl * (float)clex_iq4nl_levels[qs[l] & 0x0F];
                yb[l + 16] = dl * (float)clex_iq4nl_levels[qs[l] >> 4];
            }
        }
    }
}

void clex_vec_dot_iq4_xs_q8_K_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const block_iq4_xs *w = vw;
    const block_q8_K *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int isum = 0;
        for (int j = 0; j < QK_K / 32; j++) {
            const uint8_t *qs = w[i].qs + j * 16;
            const int8_t *q8 = x[i].qs + j * 32;
            int acc = 0;
            for (int l = 0; l < 16; l++)
                acc += clex_iq4nl_levels[qs[l] & 0x0F] * q8[l] + clex_iq4nl_levels[qs[l] >> 4] * q8[l + 16];
            isum += iq4xs_scale(&w[i], j) * acc;
        }
        sum += (clex_fp16_to_fp32(w[i].d) * x[i].d) * (float)isum;
    }
    *s = sum;
}
