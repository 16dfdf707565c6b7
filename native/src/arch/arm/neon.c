/* AArch64 Advanced SIMD (NEON) kernels.
 *
 * Every function matches its *_generic twin in quants.c up to float summation order (the
 * integer part of each block's dot product is exact), and the two activation quantizers are
 * bit-exact with clex_quantize_q8_0_ref / clex_quantize_q8_1_ref. tools/neon_check holds them
 * to that under qemu-aarch64 (docs/neon.md).
 *
 * Integer dot products come in two variants:
 *   widen   - vmull_s8 / vmlal_s8 into int16 lanes, then vpadalq_s16 into int32: plain ARMv8.0,
 *             what a default (-march=armv8-a) build runs on a CPU without the dot-product unit;
 *   dotprod - vdotq_s32 (SDOT, ARMv8.2 FEAT_DotProd). Compiled natively when the build's target
 *             has it (__ARM_FEATURE_DOTPROD); otherwise, with GCC >= 10 on Linux, compiled for
 *             "arch=armv8.2-a+dotprod" in a pragma region and installed only when the kernel reports
 *             HWCAP_ASIMDDP (getauxval), so one binary serves both kinds of CPU.
 * Both variants cover the Q8_0, Q4_0 and Q4_1 dot products and Q4_1's four-row one (one row
 * against four activation rows). The two sets are the tables at the end: clex_kernels_neon()
 * picks the one the CPU runs; clex_kernels_neon_variant() hands out either (the check harness
 * compares both with the scalar reference).
 *
 * fp16 storage and conversion (FCVT, vcvt_f32_f16) are baseline AArch64; bf16 widens by a shift. */
#if defined(__aarch64__) && defined(__ARM_NEON)

#include <arm_neon.h>
#include <string.h>

#include "../../internal.h"

#if defined(__ARM_FEATURE_DOTPROD)
#define CLEX_NEON_DP_NATIVE 1
#elif defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10
/* arm_neon.h declares vdotq_s32 under its own target pragma (arch=armv8.2-a+dotprod), so a
 * region compiled for that target may use it */
#define CLEX_NEON_DP_RUNTIME 1
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#endif

/* ------------------------------------------------------------------ conversions */

static inline float h2f(clex_fp16 h) {
    __fp16 f;
    memcpy(&f, &h, sizeof f);
    return (float)f;   /* FCVT: exact, subnormals included */
}

static inline clex_fp16 f2h(float x) {
    const __fp16 f = (__fp16)x;   /* FCVT, nearest even: clex_fp32_to_fp16's bits (finite, inf) */
    clex_fp16 h;
    memcpy(&h, &f, sizeof h);
    return h;
}

/* Q4 nibbles of one block: values 0..15 (low nibbles) and 16..31 (high nibbles), as 0..15 */
static inline int8x16_t nib_lo(const uint8_t *qs) {
    return vreinterpretq_s8_u8(vandq_u8(vld1q_u8(qs), vdupq_n_u8(0x0F)));
}
static inline int8x16_t nib_hi(const uint8_t *qs) {
    return vreinterpretq_s8_u8(vshrq_n_u8(vld1q_u8(qs), 4));
}

/* ------------------------------------------------------------------ integer block dots
 * dot_q8_*: 32 x 32 signed bytes, any values (-128 included) -> 4 int32 partial sums.
 * dot_q4_*: lo . x[0..15] + hi . x[16..31] with |lo|, |hi| <= 15 -> 4 int32 partial sums. */

static inline int32x4_t dot_q8_widen(const int8_t *a, const int8_t *b) {
    const int8x16_t a0 = vld1q_s8(a), a1 = vld1q_s8(a + 16);
    const int8x16_t b0 = vld1q_s8(b), b1 = vld1q_s8(b + 16);
    /* one product per int16 lane: (-128)^2 = 16384 fits, a sum of two might not */
    int32x4_t acc = vpaddlq_s16(vmull_s8(vget_low_s8(a0), vget_low_s8(b0)));
    acc = vpadalq_s16(acc, vmull_high_s8(a0, b0));
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a1), vget_low_s8(b1)));
    acc = vpadalq_s16(acc, vmull_high_s8(a1, b1));
    return acc;
}

static inline int32x4_t dot_q4_widen(int8x16_t lo, int8x16_t hi, const int8_t *x) {
    const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
    /* four products per int16 lane: |sum| <= 4 * 15 * 128 = 7680 */
    int16x8_t p = vmull_s8(vget_low_s8(lo), vget_low_s8(x0));
    p = vmlal_high_s8(p, lo, x0);
    p = vmlal_s8(p, vget_low_s8(hi), vget_low_s8(x1));
    p = vmlal_high_s8(p, hi, x1);
    return vpaddlq_s16(p);
}

/* ------------------------------------------------------------------ quantized dot products
 * One definition, instantiated per integer-dot variant SFX (dot_q8_SFX / dot_q4_SFX). Two
 * blocks per iteration into two float accumulators; each block's int32 partials are scaled by
 * that block's d_w * d_x, as the reference does with the block total (a block's total is at
 * most 32 * 128 * 128 = 2^19 in magnitude, so the int32 -> float conversion is exact). */

#define CLEX_NEON_QUANT_DOTS(SFX)                                                                     \
    static void vec_dot_q8_0_##SFX(int64_t n, float *s, const void *vw, const void *vx) {            \
        const block_q8_0 *w = vw, *x = vx;                                                            \
        const int64_t nb = n / QK;                                                                    \
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);                               \
        int64_t i = 0;                                                                                \
        for (; i + 1 < nb; i += 2) {                                                                  \
            const int32x4_t p0 = dot_q8_##SFX(w[i].qs, x[i].qs);                                      \
            const int32x4_t p1 = dot_q8_##SFX(w[i + 1].qs, x[i + 1].qs);                              \
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), h2f(w[i].d) * h2f(x[i].d));                   \
            acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p1), h2f(w[i + 1].d) * h2f(x[i + 1].d));           \
        }                                                                                             \
        for (; i < nb; i++)                                                                           \
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(dot_q8_##SFX(w[i].qs, x[i].qs)),                   \
                               h2f(w[i].d) * h2f(x[i].d));                                            \
        *s = vaddvq_f32(vaddq_f32(acc0, acc1));                                                       \
    }                                                                                                 \
                                                                                                      \
    static void vec_dot_q4_0_##SFX(int64_t n, float *s, const void *vw, const void *vx) {            \
        const block_q4_0 *w = vw;                                                                     \
        const block_q8_0 *x = vx;                                                                     \
        const int64_t nb = n / QK;                                                                    \
        const int8x16_t eight = vdupq_n_s8(8);                                                        \
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);                               \
        int64_t i = 0;                                                                                \
        for (; i + 1 < nb; i += 2) {                                                                  \
            const int32x4_t p0 = dot_q4_##SFX(vsubq_s8(nib_lo(w[i].qs), eight),                       \
                                              vsubq_s8(nib_hi(w[i].qs), eight), x[i].qs);             \
            const int32x4_t p1 = dot_q4_##SFX(vsubq_s8(nib_lo(w[i + 1].qs), eight),                   \
                                              vsubq_s8(nib_hi(w[i + 1].qs), eight), x[i + 1].qs);     \
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), h2f(w[i].d) * h2f(x[i].d));                   \
            acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p1), h2f(w[i + 1].d) * h2f(x[i + 1].d));           \
        }                                                                                             \
        for (; i < nb; i++) {                                                                         \
            const int32x4_t p0 = dot_q4_##SFX(vsubq_s8(nib_lo(w[i].qs), eight),                       \
                                              vsubq_s8(nib_hi(w[i].qs), eight), x[i].qs);             \
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), h2f(w[i].d) * h2f(x[i].d));                   \
        }                                                                                             \
        *s = vaddvq_f32(vaddq_f32(acc0, acc1));                                                       \
    }                                                                                                 \
                                                                                                      \
    /* x.s = x.d * sum(x.qs) carries the weight minimum's term: w.m * x.s per block */                \
    static void vec_dot_q4_1_##SFX(int64_t n, float *s, const void *vw, const void *vx) {            \
        const block_q4_1 *w = vw;                                                                     \
        const block_q8_1 *x = vx;                                                                     \
        const int64_t nb = n / QK;                                                                    \
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);                               \
        float summs = 0.0f;                                                                           \
        int64_t i = 0;                                                                                \
        for (; i + 1 < nb; i += 2) {                                                                  \
            const int32x4_t p0 = dot_q4_##SFX(nib_lo(w[i].qs), nib_hi(w[i].qs), x[i].qs);             \
            const int32x4_t p1 = dot_q4_##SFX(nib_lo(w[i + 1].qs), nib_hi(w[i + 1].qs), x[i + 1].qs); \
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), h2f(w[i].d) * x[i].d);                        \
            acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p1), h2f(w[i + 1].d) * x[i + 1].d);                \
            summs += h2f(w[i].m) * x[i].s + h2f(w[i + 1].m) * x[i + 1].s;                             \
        }                                                                                             \
        for (; i < nb; i++) {                                                                         \
            const int32x4_t p0 = dot_q4_##SFX(nib_lo(w[i].qs), nib_hi(w[i].qs), x[i].qs);             \
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), h2f(w[i].d) * x[i].d);                        \
            summs += h2f(w[i].m) * x[i].s;                                                            \
        }                                                                                             \
        *s = vaddvq_f32(vaddq_f32(acc0, acc1)) + summs;                                               \
    }                                                                                                 \
                                                                                                      \
    /* one Q4_1 row against four activation rows xstride bytes apart (prefill): each weight block    \
     * is unpacked once; s[j] is what vec_dot_q4_1 gives for row j, up to float rounding */          \
    static void vec_dot_q4_1_x4_##SFX(int64_t n, float *s, const void *vw, const void *vx,           \
                                      size_t xstride) {                                               \
        const block_q4_1 *w = vw;                                                                     \
        const block_q8_1 *x[4];                                                                       \
        for (int j = 0; j < 4; j++) x[j] = (const block_q8_1 *)((const uint8_t *)vx + j * xstride);   \
        const int64_t nb = n / QK;                                                                    \
        float32x4_t acc[4];                                                                           \
        float summs[4] = {0.0f, 0.0f, 0.0f, 0.0f};                                                    \
        for (int j = 0; j < 4; j++) acc[j] = vdupq_n_f32(0.0f);                                       \
        for (int64_t i = 0; i < nb; i++) {                                                            \
            const int8x16_t lo = nib_lo(w[i].qs), hi = nib_hi(w[i].qs);                               \
            const float dw = h2f(w[i].d), mw = h2f(w[i].m);                                           \
            for (int j = 0; j < 4; j++) {                                                             \
                const int32x4_t p = dot_q4_##SFX(lo, hi, x[j][i].qs);                                 \
                acc[j] = vfmaq_n_f32(acc[j], vcvtq_f32_s32(p), dw * x[j][i].d);                       \
                summs[j] += mw * x[j][i].s;                                                           \
            }                                                                                         \
        }                                                                                             \
        /* lane j = the sum of acc[j]'s lanes */                                                      \
        const float32x4_t t = vpaddq_f32(vpaddq_f32(acc[0], acc[1]), vpaddq_f32(acc[2], acc[3]));     \
        vst1q_f32(s, vaddq_f32(t, vld1q_f32(summs)));                                                 \
    }

CLEX_NEON_QUANT_DOTS(widen)

#if defined(CLEX_NEON_DP_NATIVE) || defined(CLEX_NEON_DP_RUNTIME)
#if defined(CLEX_NEON_DP_RUNTIME)
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")   /* FEAT_DotProd exists from v8.2 on */
#endif

static inline int32x4_t dot_q8_sdot(const int8_t *a, const int8_t *b) {
    const int32x4_t acc = vdotq_s32(vdupq_n_s32(0), vld1q_s8(a), vld1q_s8(b));
    return vdotq_s32(acc, vld1q_s8(a + 16), vld1q_s8(b + 16));
}

static inline int32x4_t dot_q4_sdot(int8x16_t lo, int8x16_t hi, const int8_t *x) {
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), lo, vld1q_s8(x)), hi, vld1q_s8(x + 16));
}

CLEX_NEON_QUANT_DOTS(sdot)

#if defined(CLEX_NEON_DP_RUNTIME)
#pragma GCC pop_options
#endif
#define CLEX_NEON_HAVE_SDOT 1
#endif

/* ------------------------------------------------------------------ float dot products */

static void vec_dot_f32(int64_t n, float *s, const void *vw, const void *vx) {
    const float *a = vw, *b = vx;
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
    float32x4_t s2 = vdupq_n_f32(0.0f), s3 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        s2 = vfmaq_f32(s2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        s3 = vfmaq_f32(s3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++) sum += a[i] * b[i];
    *s = sum;
}

static void vec_dot_f16(int64_t n, float *s, const void *vw, const void *vx) {
    const clex_fp16 *w = vw;
    const float *x = vx;
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
    float32x4_t s2 = vdupq_n_f32(0.0f), s3 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const float16x8_t h0 = vreinterpretq_f16_u16(vld1q_u16(w + i));
        const float16x8_t h1 = vreinterpretq_f16_u16(vld1q_u16(w + i + 8));
        s0 = vfmaq_f32(s0, vcvt_f32_f16(vget_low_f16(h0)), vld1q_f32(x + i));
        s1 = vfmaq_f32(s1, vcvt_high_f32_f16(h0), vld1q_f32(x + i + 4));
        s2 = vfmaq_f32(s2, vcvt_f32_f16(vget_low_f16(h1)), vld1q_f32(x + i + 8));
        s3 = vfmaq_f32(s3, vcvt_high_f32_f16(h1), vld1q_f32(x + i + 12));
    }
    for (; i + 4 <= n; i += 4)
        s0 = vfmaq_f32(s0, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(w + i))), vld1q_f32(x + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++) sum += h2f(w[i]) * x[i];
    *s = sum;
}

static void vec_dot_bf16(int64_t n, float *s, const void *vw, const void *vx) {
    const clex_bf16 *w = vw;
    const float *x = vx;
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
    float32x4_t s2 = vdupq_n_f32(0.0f), s3 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const uint16x8_t b0 = vld1q_u16(w + i), b1 = vld1q_u16(w + i + 8);
        /* bf16 -> f32 is the 16 bits moved to the top of the word */
        s0 = vfmaq_f32(s0, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(b0), 16)), vld1q_f32(x + i));
        s1 = vfmaq_f32(s1, vreinterpretq_f32_u32(vshll_high_n_u16(b0, 16)), vld1q_f32(x + i + 4));
        s2 = vfmaq_f32(s2, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(b1), 16)), vld1q_f32(x + i + 8));
        s3 = vfmaq_f32(s3, vreinterpretq_f32_u32(vshll_high_n_u16(b1, 16)), vld1q_f32(x + i + 12));
    }
    for (; i + 4 <= n; i += 4)
        s0 = vfmaq_f32(s0, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(w + i), 16)), vld1q_f32(x + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++) sum += clex_bf16_to_fp32(w[i]) * x[i];
    *s = sum;
}

static void axpy_f32(int64_t n, float a, const float *x, float *y) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
        vst1q_f32(y + i + 4, vfmaq_n_f32(vld1q_f32(y + i + 4), vld1q_f32(x + i + 4), a));
    }
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    for (; i < n; i++) y[i] += a * x[i];
}

/* ------------------------------------------------------------------ activation quantizers
 * The reference's arithmetic step for step: amax by max-of-|x| (FMAXNM ignores a quiet NaN as
 * fmaxf does; max is exact, so the order is free), d = amax / 127 and id = 1 / d as scalar
 * float divisions, q = x * id rounded half away from zero (FCVTAS = roundf then the int
 * conversion; |q| <= 127 so the narrowing is exact). */
static inline float quant_block(const float *x, int8_t *qs, int *sum) {
    float32x4_t v[8];
    float32x4_t m = vdupq_n_f32(0.0f);
    for (int k = 0; k < 8; k++) {
        v[k] = vld1q_f32(x + 4 * k);
        m = vmaxnmq_f32(m, vabsq_f32(v[k]));
    }
    const float amax = vmaxnmvq_f32(m);
    const float d = amax / 127.0f;
    const float id = d ? 1.0f / d : 0.0f;
    int32x4_t q[8];
    for (int k = 0; k < 8; k++) q[k] = vcvtaq_s32_f32(vmulq_n_f32(v[k], id));
    if (sum) {
        const int32x4_t t = vaddq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])),
                                      vaddq_s32(vaddq_s32(q[4], q[5]), vaddq_s32(q[6], q[7])));
        *sum = vaddvq_s32(t);
    }
    for (int h = 0; h < 2; h++) {
        const int16x8_t a = vcombine_s16(vmovn_s32(q[4 * h]), vmovn_s32(q[4 * h + 1]));
        const int16x8_t b = vcombine_s16(vmovn_s32(q[4 * h + 2]), vmovn_s32(q[4 * h + 3]));
        vst1q_s8(qs + 16 * h, vcombine_s8(vmovn_s16(a), vmovn_s16(b)));
    }
    return d;
}

static inline clex_fp16 scale_to_half(float d) { return f2h(d); }

#include "../act_quant.h"

/* ------------------------------------------------------------------ installation */

static int cpu_has_dotprod(void) {
#if defined(CLEX_NEON_DP_NATIVE)
    return 1;   /* the build's target promises it */
#elif defined(CLEX_NEON_DP_RUNTIME)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    return 0;
#endif
}

#define NEON_INT_SLOTS(SFX)                                                                       \
    .vec_dot[CLEX_TYPE_Q8_0] = vec_dot_q8_0_##SFX, .vec_dot[CLEX_TYPE_Q4_0] = vec_dot_q4_0_##SFX,      \
    .vec_dot[CLEX_TYPE_Q4_1] = vec_dot_q4_1_##SFX, .vec_dot4[CLEX_TYPE_Q4_1] = vec_dot_q4_1_x4_##SFX
#define NEON_FLOAT_SLOTS                                                                          \
    .vec_dot[CLEX_TYPE_F32] = vec_dot_f32, .vec_dot[CLEX_TYPE_F16] = vec_dot_f16,                  \
    .vec_dot[CLEX_TYPE_BF16] = vec_dot_bf16, .from_float[CLEX_TYPE_Q8_0] = quant_q8_0,             \
    .from_float[CLEX_TYPE_Q8_1] = quant_q8_1, .axpy_f32 = axpy_f32

/* the attention kernels (scores, wsum, f16 rows) stay scalar on NEON */
static const clex_kernels neon_widen = {NEON_INT_SLOTS(widen), NEON_FLOAT_SLOTS};
#if defined(CLEX_NEON_HAVE_SDOT)
static const clex_kernels neon_sdot = {NEON_INT_SLOTS(sdot), NEON_FLOAT_SLOTS};
#endif

const clex_kernels *clex_kernels_neon_variant(int dotprod) {
#if defined(CLEX_NEON_HAVE_SDOT)
    return dotprod ? &neon_sdot : &neon_widen;
#else
    return dotprod ? NULL : &neon_widen;
#endif
}

const clex_kernels *clex_kernels_neon(void) { return clex_kernels_neon_variant(cpu_has_dotprod()); }

#endif
