/* The quantized-weight kernels, widening variant (plain ARMv8.0): vmull_s8 / vmlal_s8 products
 * into int16 lanes, then pairwise into int32. The bodies are neon_dots32.h and neon_dotsk.h;
 * this file supplies their block-dot primitives and the table (neon.h). */
#if defined(__aarch64__) && defined(__ARM_NEON)

#include "neon.h"

/* 32 x 32 bytes, any values: one product per int16 lane ((-128)^2 = 16384 fits, two might not) */
NEON_INLINE int32x4_t dot_q8(const int8_t *a, const int8_t *b) {
    const int8x16_t a0 = vld1q_s8(a), a1 = vld1q_s8(a + 16);
    const int8x16_t b0 = vld1q_s8(b), b1 = vld1q_s8(b + 16);
    int32x4_t acc = vpaddlq_s16(vmull_s8(vget_low_s8(a0), vget_low_s8(b0)));
    acc = vpadalq_s16(acc, vmull_high_s8(a0, b0));
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a1), vget_low_s8(b1)));
    acc = vpadalq_s16(acc, vmull_high_s8(a1, b1));
    return acc;
}

/* 16 products, two per int16 lane: |a| <= 127 keeps 2 * 127 * 128 = 32512 in range */
NEON_INLINE int16x8_t mul16_pairs(int8x16_t a, int8x16_t b) {
    return vmlal_high_s8(vmull_s8(vget_low_s8(a), vget_low_s8(b)), a, b);
}

NEON_INLINE int32x4_t dot16(int8x16_t a, int8x16_t b) { return vpaddlq_s16(mul16_pairs(a, b)); }

NEON_INLINE int32x4_t dot32(int8x16_t a0, int8x16_t a1, const int8_t *x) {
    return vpadalq_s16(dot16(a0, vld1q_s8(x)), mul16_pairs(a1, vld1q_s8(x + 16)));
}

/* |a| <= 63: four products per int16 lane (|sum| <= 4 * 63 * 128 = 32256) */
NEON_INLINE int32x4_t dot32s(int8x16_t a0, int8x16_t a1, const int8_t *x) {
    const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
    int16x8_t p = vmull_s8(vget_low_s8(a0), vget_low_s8(x0));
    p = vmlal_high_s8(p, a0, x0);
    p = vmlal_s8(p, vget_low_s8(a1), vget_low_s8(x1));
    p = vmlal_high_s8(p, a1, x1);
    return vpaddlq_s16(p);
}

#include "neon_dots32.h"
#include "neon_dotsk.h"

const clex_kernels clex_neon_widen = {NEON_DOTS32_SLOTS, NEON_DOTSK_SLOTS, NEON_FLOAT_SLOTS};

#endif
