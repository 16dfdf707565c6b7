/* Shared by the AArch64 kernel files (docs/neon.md):
 *   neon.c        float dot products, axpy, the three activation quantizers, the dispatch;
 *   neon_widen.c  the integer (quantized-weight) kernels with widening multiplies (ARMv8.0);
 *   neon_sdot.c   the same kernels with SDOT (FEAT_DotProd), compiled for armv8.2-a+dotprod.
 * The two integer files include one body (neon_dots32.h, neon_dotsk.h) after defining the
 * variant's few block-dot primitives, and each defines a full kernel table (its integer
 * kernels plus neon.c's float slots, NEON_FLOAT_SLOTS). Only included when CLEX_NEON. */
#ifndef CLEXRT_ARM_NEON_H
#define CLEXRT_ARM_NEON_H

#include <arm_neon.h>
#include <string.h>

#include "../../internal.h"

#if defined(__ARM_FEATURE_DOTPROD)
#define CLEX_NEON_DP_NATIVE 1
#elif defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10
/* arm_neon.h declares vdotq_s32 under its own target pragma (arch=armv8.2-a+dotprod), so a
 * region compiled for that target may use it: neon_sdot.c is such a region, and neon.c installs
 * its table only when the kernel reports HWCAP_ASIMDDP */
#define CLEX_NEON_DP_RUNTIME 1
#endif
#if defined(CLEX_NEON_DP_NATIVE) || defined(CLEX_NEON_DP_RUNTIME)
#define CLEX_NEON_HAVE_SDOT 1
#endif

#if defined(__GNUC__)
#define NEON_INLINE static inline __attribute__((always_inline))
#else
#define NEON_INLINE static inline
#endif

/* ------------------------------------------------------------------ conversions */

NEON_INLINE float h2f(clex_fp16 h) {
    __fp16 f;
    memcpy(&f, &h, sizeof f);
    return (float)f;   /* FCVT: exact, subnormals included */
}

NEON_INLINE clex_fp16 f2h(float x) {
    const __fp16 f = (__fp16)x;   /* FCVT, nearest even: clex_fp32_to_fp16's bits (finite, inf) */
    clex_fp16 h;
    memcpy(&h, &f, sizeof h);
    return h;
}

/* four bytes as a little-endian u32 whatever the target's byte order (one load on AArch64 LE) */
NEON_INLINE uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ------------------------------------------------------------------ neon.c's slots */

void clex_neon_vec_dot_f32(int64_t n, float *s, const void *w, const void *x);
void clex_neon_vec_dot_f16(int64_t n, float *s, const void *w, const void *x);
void clex_neon_vec_dot_bf16(int64_t n, float *s, const void *w, const void *x);
void clex_neon_axpy_f32(int64_t n, float a, const float *x, float *y);
void clex_neon_act(int32_t kind, int64_t n, float *g, const float *u);
void clex_neon_quant_q8_0(const float *x, void *y, int64_t n);
void clex_neon_quant_q8_1(const float *x, void *y, int64_t n);
void clex_neon_quant_q8_K(const float *x, void *y, int64_t n);

#define NEON_FLOAT_SLOTS                                                                          \
    .vec_dot[CLEX_TYPE_F32] = clex_neon_vec_dot_f32, .vec_dot[CLEX_TYPE_F16] = clex_neon_vec_dot_f16, \
    .vec_dot[CLEX_TYPE_BF16] = clex_neon_vec_dot_bf16, .from_float[CLEX_TYPE_Q8_0] = clex_neon_quant_q8_0, \
    .from_float[CLEX_TYPE_Q8_1] = clex_neon_quant_q8_1, .from_float[CLEX_TYPE_Q8_K] = clex_neon_quant_q8_K, \
    .axpy_f32 = clex_neon_axpy_f32, .act = clex_neon_act

/* the two integer-kernel tables (neon_widen.c; neon_sdot.c when CLEX_NEON_HAVE_SDOT) */
extern const clex_kernels clex_neon_widen;
#if defined(CLEX_NEON_HAVE_SDOT)
extern const clex_kernels clex_neon_sdot;
#endif

#endif
