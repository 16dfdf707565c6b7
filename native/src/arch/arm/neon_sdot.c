/* The quantized-weight kernels, SDOT variant (FEAT_DotProd, ARMv8.2+): vdotq_s32 sums four
 * int8 products into each int32 lane. Same bodies as neon_widen.c (neon_dots32.h,
 * neon_dotsk.h), other primitives. Compiled natively when the target has dotprod; otherwise
 * (GCC >= 10, Linux) the whole file is a "arch=armv8.2-a+dotprod" region and neon.c installs
 * its table only on a CPU reporting HWCAP_ASIMDDP. Without either, it compiles to nothing. */
#if defined(__aarch64__) && defined(__ARM_NEON)

#include "neon.h"

#if defined(CLEX_NEON_HAVE_SDOT)
#if defined(CLEX_NEON_DP_RUNTIME)
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")   /* FEAT_DotProd exists from v8.2 on */
#endif

NEON_INLINE int32x4_t dot_q8(const int8_t *a, const int8_t *b) {
    const int32x4_t acc = vdotq_s32(vdupq_n_s32(0), vld1q_s8(a), vld1q_s8(b));
    return vdotq_s32(acc, vld1q_s8(a + 16), vld1q_s8(b + 16));
}

NEON_INLINE int32x4_t dot16(int8x16_t a, int8x16_t b) { return vdotq_s32(vdupq_n_s32(0), a, b); }

NEON_INLINE int32x4_t dot32(int8x16_t a0, int8x16_t a1, const int8_t *x) {
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), a0, vld1q_s8(x)), a1, vld1q_s8(x + 16));
}

NEON_INLINE int32x4_t dot32s(int8x16_t a0, int8x16_t a1, const int8_t *x) { return dot32(a0, a1, x); }

#include "neon_dots32.h"
#include "neon_dotsk.h"

#if defined(CLEX_NEON_DP_RUNTIME)
#pragma GCC pop_options
#endif

const clex_kernels clex_neon_sdot = {NEON_DOTS32_SLOTS, NEON_DOTSK_SLOTS, NEON_FLOAT_SLOTS};

#endif
#endif
