/* AArch64 Advanced SIMD (NEON) kernels: the float slots, the activation quantizers, and the
 * choice between the two integer-kernel tables (neon.h lists the files).
 *
 * Every function matches its *_generic twin up to float summation order, and the three
 * activation quantizers are bit-exact with clex_quantize_q8_0_ref / _q8_1_ref / _q8_K_ref.
 * tools/neon_check holds them to that under qemu-aarch64 (docs/neon.md).
 *
 * The quantized-weight kernels come in two variants, each a complete table:
 *   widen (neon_widen.c) - vmull_s8 / vmlal_s8 into int16 lanes, then into int32: plain ARMv8.0,
 *                          what a default (-march=armv8-a) build runs on a CPU without SDOT;
 *   sdot  (neon_sdot.c)  - vdotq_s32 (SDOT, ARMv8.2 FEAT_DotProd). Compiled natively when the
 *                          build's target has it (__ARM_FEATURE_DOTPROD); otherwise, with GCC >= 10
 *                          on Linux, compiled for "arch=armv8.2-a+dotprod" and installed only when
 *                          the kernel reports HWCAP_ASIMDDP (getauxval), so one binary serves both.
 * clex_kernels_neon() picks the one the CPU runs; clex_kernels_neon_variant() hands out either
 * (the check harness compares both with the scalar reference).
 *
 * fp16 storage and conversion (FCVT, vcvt_f32_f16) are baseline AArch64; bf16 widens by a shift. */
#if defined(__aarch64__) && defined(__ARM_NEON)

#include "neon.h"

#if defined(CLEX_NEON_DP_RUNTIME)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#endif

/* ------------------------------------------------------------------ float dot products */

void clex_neon_vec_dot_f32(int64_t n, float *s, const void *vw, const void *vx) {
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

void clex_neon_vec_dot_f16(int64_t n, float *s, const void *vw, const void *vx) {
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

void clex_neon_vec_dot_bf16(int64_t n, float *s, const void *vw, const void *vx) {
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

/* e^x with x clamped to [-87, 88]: the x86 sets' method (Cody-Waite reduction by ln 2, Cephes'
 * degree-5 polynomial, 2^n built in the exponent bits); ~1 ulp */
static inline float32x4_t exp4(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0f)), vdupq_n_f32(88.0f));
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
    float32x4_t r = vfmsq_n_f32(x, n, 0.693359375f);
    r = vfmsq_n_f32(r, n, -2.12194440e-4f);
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), vmulq_f32(p, r), r);
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

/* g * sigmoid(a): SiLU a = g, GELU's tanh form a = 2 sqrt(2/pi) (g + 0.044715 g^3) */
static inline float32x4_t act4(int32_t kind, float32x4_t g) {
    float32x4_t a = g;
    if (kind != CLEX_FFN_SWIGLU)
        a = vmulq_f32(vmulq_n_f32(g, 2.0f * 0.7978845608028654f),
                      vfmaq_n_f32(vdupq_n_f32(1.0f), vmulq_f32(g, g), 0.044715f));
    return vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0f), exp4(vnegq_f32(a))));
}

void clex_neon_act(int32_t kind, int64_t n, float *g, const float *u) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = act4(kind, vld1q_f32(g + i));
        if (u) v = vmulq_f32(v, vld1q_f32(u + i));
        vst1q_f32(g + i, v);
    }
    if (i < n) {   /* the tail through the same arithmetic, in a padded copy */
        float tg[4] = {0}, tu[4] = {0};
        for (int64_t j = i; j < n; j++) tg[j - i] = g[j], tu[j - i] = u ? u[j] : 0.0f;
        float32x4_t v = act4(kind, vld1q_f32(tg));
        if (u) v = vmulq_f32(v, vld1q_f32(tu));
        vst1q_f32(tg, v);
        for (int64_t j = i; j < n; j++) g[j] = tg[j - i];
    }
}

void clex_neon_axpy_f32(int64_t n, float a, const float *x, float *y) {
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

void clex_neon_quant_q8_0(const float *x, void *y, int64_t n) { quant_q8_0(x, y, n); }
void clex_neon_quant_q8_1(const float *x, void *y, int64_t n) { quant_q8_1(x, y, n); }

/* Q8_K (clex_quantize_q8_K_ref, ggml's quantize_row_q8_K_ref) per 256 values: max = the first
 * element of the largest magnitude, sign kept; iscale = -127 / max; q = iscale * x rounded to
 * nearest even (FCVTNS, what the reference's 1.5 * 2^23 addition does in the default rounding
 * mode), at most 127, and 0 where |iscale * x| is not <= 127.5 (NaN, Inf: FACGE is false);
 * bsums = the sums of 16 codes; d = 1 / iscale. An all-zero block is all zero bytes. */

/* |x| as bits, NaN (quiet or signalling) as 0: for the rest the unsigned order of the bits is
 * the order of the magnitudes, Inf included. (FMAXNM would ignore a quiet NaN but turn a
 * signalling one into a quiet NaN, which the next FMAXNM drops with the maximum so far.) */
static inline uint32x4_t q8k_mag(const float *x) {
    const uint32x4_t a = vandq_u32(vreinterpretq_u32_f32(vld1q_f32(x)), vdupq_n_u32(0x7FFFFFFFu));
    return vbicq_u32(a, vcgtq_u32(a, vdupq_n_u32(0x7F800000u)));
}

/* the value of largest magnitude, the first of its kind (0 when every |x| is 0 or NaN): the
 * reference's strict `|x| > amax` scan keeps the first */
static float q8k_max(const float *x) {
    uint32x4_t m0 = vdupq_n_u32(0), m1 = m0, m2 = m0, m3 = m0;
    for (int k = 0; k < QK_K; k += 16) {
        m0 = vmaxq_u32(m0, q8k_mag(x + k));
        m1 = vmaxq_u32(m1, q8k_mag(x + k + 4));
        m2 = vmaxq_u32(m2, q8k_mag(x + k + 8));
        m3 = vmaxq_u32(m3, q8k_mag(x + k + 12));
    }
    const uint32_t amax = vmaxvq_u32(vmaxq_u32(vmaxq_u32(m0, m1), vmaxq_u32(m2, m3)));
    if (amax == 0) return 0.0f;
    const uint32x4_t va = vdupq_n_u32(amax);
    int j = 0;
    while (j + 4 < QK_K && vmaxvq_u32(vceqq_u32(q8k_mag(x + j), va)) == 0) j += 4;
    uint32_t bits;
    for (;; j++) {
        memcpy(&bits, x + j, 4);
        if ((bits & 0x7FFFFFFFu) == amax || j + 1 == QK_K) break;
    }
    return x[j];
}

/* 16 codes of iscale * x[0..15] */
static inline int8x16_t q8k_codes16(const float *x, float iscale) {
    const float32x4_t lim = vdupq_n_f32(127.5f);
    const int32x4_t top = vdupq_n_s32(127);
    int16x4_t h[4];
    for (int k = 0; k < 4; k++) {
        const float32x4_t f = vmulq_n_f32(vld1q_f32(x + 4 * k), iscale);
        const int32x4_t q = vminq_s32(vcvtnq_s32_f32(f), top);
        h[k] = vmovn_s32(vandq_s32(q, vreinterpretq_s32_u32(vcaleq_f32(f, lim))));
    }
    return vcombine_s8(vmovn_s16(vcombine_s16(h[0], h[1])), vmovn_s16(vcombine_s16(h[2], h[3])));
}

void clex_neon_quant_q8_K(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float *xb = x + i * QK_K;
        const float max = q8k_max(xb);
        if (max == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.0f / max;
        for (int g = 0; g < QK_K / 16; g++) {
            const int8x16_t q = q8k_codes16(xb + 16 * g, iscale);
            vst1q_s8(y[i].qs + 16 * g, q);
            y[i].bsums[g] = vaddlvq_s8(q);
        }
        y[i].d = 1.0f / iscale;
    }
}

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

/* the attention kernels (scores, wsum, f16 rows) stay scalar on NEON */
const clex_kernels *clex_kernels_neon_variant(int dotprod) {
#if defined(CLEX_NEON_HAVE_SDOT)
    return dotprod ? &clex_neon_sdot : &clex_neon_widen;
#else
    return dotprod ? NULL : &clex_neon_widen;
#endif
}

const clex_kernels *clex_kernels_neon(void) { return clex_kernels_neon_variant(cpu_has_dotprod()); }

#endif
