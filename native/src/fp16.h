/* IEEE half and bfloat16 <-> float, bit-exact: float -> half and float -> bfloat16 round to
 * nearest even; half -> float is exact (subnormals included). Inline, so the scalar kernels pay
 * no call per element. The tests hold float -> half to numpy's astype(float16) over the whole
 * range and half -> float over all 65536 halves. */
#ifndef CLEXRT_FP16_H
#define CLEXRT_FP16_H

#include <stdint.h>
#include <string.h>

#include "../include/quant.h"

static inline float clex_fp16_to_fp32(clex_fp16 h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1F;
    uint32_t man = h & 0x3FF;
    uint32_t u;
    if (exp == 0x1F) {
        u = sign | 0x7F800000u | (man << 13);            /* inf / nan */
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);    /* normal: rebias 15 -> 127 */
    } else if (man == 0) {
        u = sign;                                        /* zero */
    } else {                                             /* subnormal: normalise */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* below the smallest normal half: a subnormal half or zero, rounded to nearest even */
static inline clex_fp16 clex_fp32_to_fp16_small(uint32_t sign, uint32_t abs) {
    if (abs < 0x33000000) return (clex_fp16)sign;      /* < 2^-25: rounds to zero */
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7FFFFF) | 0x800000;
    const uint32_t shift = 126 - e;                      /* 14..24 */
    /* value = m * 2^(e-150); half subnormal unit = 2^-24 -> q = m * 2^(e-126) */
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (clex_fp16)(sign | q);
}

static inline clex_fp16 clex_fp32_to_fp16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000;
    const uint32_t abs = u & 0x7FFFFFFF;
    if (abs > 0x7F800000) return (clex_fp16)(sign | 0x7E00 | ((abs >> 13) & 0x3FF)); /* nan, quiet */
    if (abs >= 0x477FF000) return (clex_fp16)(sign | 0x7C00);   /* rounds to >= 65520 -> inf */
    if (abs < 0x38800000) return clex_fp32_to_fp16_small(sign, abs);
    /* normal */
    const uint32_t e = (abs >> 23) - 112;
    const uint32_t m = abs & 0x7FFFFF;
    uint32_t h = (e << 10) | (m >> 13);
    const uint32_t rem = m & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;  /* may carry into the exponent: fine */
    return (clex_fp16)(sign | h);
}

static inline float clex_bf16_to_fp32(clex_bf16 h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline clex_bf16 clex_fp32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFF) > 0x7F800000) return (clex_bf16)((u >> 16) | 0x40);   /* quiet nan */
    u += 0x7FFF + ((u >> 16) & 1);
    return (clex_bf16)(u >> 16);
}

#endif
