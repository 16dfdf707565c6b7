/* Reference quantizers of Q5_0, Q5_1, IQ4_NL, Q2_K..Q6_K and IQ4_XS: ggml's searches for the
 * scales (what llama-quantize runs, with and without an importance matrix), reimplemented so
 * that every block comes out byte-identical to llama.cpp's for the same floats.
 *
 * Byte identity dictates the style: every sum runs in ggml's order and every expression keeps
 * ggml's association, in float, without fused multiply-adds (the pragmas below keep GCC and
 * clang from contracting a * b + c even with -march=native in a GNU mode; llama.cpp's reference
 * build compiles ggml-quants.c for plain x86-64, which has no FMA), rounding is ggml's (see
 * kq_round), fp16 conversions round to nearest even (fp16.h), and the few places where ggml
 * converts a float to a small integer by a plain cast reproduce what that cast does on x86-64
 * (kq_trunc8), the target llama.cpp's reference bytes were recorded on.
 *
 * The searches, in brief (the names ggml gives them in brackets):
 *   fit_symmetric  [make_qx_quants]  x ~ d * l, l in [-nmax, nmax): 19 candidate scales around
 *                  nmax / max|x|, each followed by the least-squares d for its codes, keeping the
 *                  one that explains most of the weighted energy.
 *   fit_q3         [make_q3_quants]  the same start, then coordinate descent on single codes.
 *   fit_affine     [make_qkx2/3_quants]  x ~ d * l - m, l in [0, nmax]: nstep + 1 candidate
 *                  ranges, each with the least-squares (d, m) of its codes, kept by weighted
 *                  error (squared or absolute).
 *   fit_positive   [make_qp_quants]  the sub-block scales and minimums (all >= 0) as codes of
 *                  one super-block scale, 9 candidates and then coordinate descent.
 *   iq4_fit_block  [quantize_row_iq4_nl_impl]  the scale of a 32-value block of IQ4 levels:
 *                  both orientations of the asymmetric level table, 15 trial scales.
 * Without an importance matrix, the K-quants use their fixed per-sub-block weights (|x|, x^2 or
 * mean |x| + |x|) and quantize the sub-block scales by the largest one; with one, the weights
 * are importance * sqrt(sigma^2 + x^2) and the sub-block scales go through fit_positive or
 * fit_symmetric, as ggml does. */
#include <math.h>
#include <string.h>

#include "fp16.h"
#include "kquantize.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")   /* GCC ignores the standard pragma; GNU modes contract */
#endif

#define GROUP_EPS 1e-15f     /* a group whose largest magnitude is below this is all zero */
#define IQ4_TRIES 7          /* trial scales on each side of the start in iq4_fit_block */

/* Round to nearest, ties to even, as ggml does it: adding 1.5 * 2^23 puts the integer part in
 * the low mantissa bits of the sum. Exact for |v| < 2^22. Beyond that, and for NaN and Inf, it
 * returns the same meaningless value it returns in ggml, which the callers clamp like ggml. */
static inline int kq_round(float v) {
    const float biased = v + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &biased, sizeof bits);
    return (bits & 0x007FFFFF) - 0x00400000;
}

/* The low byte of (int)v, v truncated toward zero, as x86-64's conversion computes it: NaN, Inf
 * and values outside int32 convert to INT32_MIN, whose low byte is 0. (Only the blocks of an
 * all-tiny Q5_0 / Q5_1 group, whose inverse scale overflows, reach those values.) */
static inline uint8_t kq_trunc8(float v) {
    if (!(v > -2147483648.0f && v < 2147483648.0f)) return 0;
    return (uint8_t)(int32_t)v;
}

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* ------------------------------------------------------------------ scale searches */

/* Weighted energy sums of x against its codes at inverse scale iscale, l in [-nmax, nmax);
 * L (optional) receives l + nmax. Weight: w[i], or x^2 when w is NULL. */
static void symmetric_sums(int n, int nmax, const float *x, const float *w, float iscale, int8_t *L,
                           float *sumlx, float *suml2) {
    float slx = 0, sl2 = 0;
    for (int i = 0; i < n; ++i) {
        const int l = clampi(kq_round(iscale * x[i]), -nmax, nmax - 1);
        if (L) L[i] = (int8_t)(l + nmax);
        const float wi = w ? w[i] : x[i] * x[i];
        slx += wi * x[i] * l;
        sl2 += wi * l * l;
    }
    *sumlx = slx;
    *suml2 = sl2;
}

/* x ~ d * (L - nmax); returns d (0 for an all-zero group, L all 0). */
static float fit_symmetric(int n, int nmax, const float *x, int8_t *L, const float *w) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float sumlx, suml2;
    symmetric_sums(n, nmax, x, w, -nmax / max, L, &sumlx, &suml2);
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        const float iscale = -(nmax + 0.1f * is) / max;
        symmetric_sums(n, nmax, x, w, iscale, NULL, &sumlx, &suml2);
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            symmetric_sums(n, nmax, x, w, iscale, L, &sumlx, &suml2);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q3_K's sub-block fit without an importance matrix: x ~ d * (L - nmax), weight x^2; codes moved
 * one at a time to their best value for the rest (up to 5 sweeps) while that improves the fit. */
static float fit_q3(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    const float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        const int l = clampi(kq_round(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int sweep = 0; sweep < 5; ++sweep) {
        int changed = 0;
        for (int i = 0; i < n; ++i) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (!(slx > 0)) continue;
            float sl2 = suml2 - w * L[i] * L[i];
            const int nl = clampi(kq_round(x[i] * sl2 / slx), -nmax, nmax - 1);
            if (nl == L[i]) continue;
            slx += w * x[i] * nl;
            sl2 += w * nl * nl;
            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = (int8_t)nl;
                sumlx = slx;
                suml2 = sl2;
                ++changed;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Weighted error of x against d * L + m: squared, or absolute when use_mad. */
static float affine_error(int n, const float *x, const float *w, const uint8_t *L, float d, float m, int use_mad) {
    float err = 0;
    for (int i = 0; i < n; ++i) {
        float diff = d * L[i] + m - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        err += w[i] * diff;
    }
    return err;
}

/* x ~ d * L - m with L in [0, nmax] and m >= 0 (the group's minimum, or 0 when every x is
 * positive); returns d and stores m. Candidate k of 0..nstep spans the range with
 * nmax + rmin + k * rdelta steps; its (d, m) is the weighted least-squares fit of its codes. */
static float fit_affine(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                        float rmin, float rdelta, int nstep, int use_mad) {
    uint8_t Laux[32];
    float min = x[0], max = x[0];
    float sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)clampi(kq_round(iscale * (x[i] - min)), 0, nmax);
    float best_error = affine_error(n, x, w, L, scale, min, use_mad);
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            const int l = clampi(kq_round(iscale * (x[i] - min)), 0, nmax);
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (!(D > 0)) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        const float err = affine_error(n, x, w, Laux, this_scale, this_min, use_mad);
        if (err < best_error) {
            memcpy(L, Laux, (size_t)n);
            best_error = err;
            scale = this_scale;
            min = this_min;
        }
    }
    *the_min = -min;
    return scale;
}

/* Weighted squared error of x against s * min(nmax, round(iscale * x)). */
static float positive_error(int n, int nmax, const float *x, const float *w, float iscale, float s) {
    float mse = 0;
    for (int i = 0; i < n; ++i) {
        const int l = kq_round(iscale * x[i]);
        const float diff = x[i] - s * (l < nmax ? l : nmax);
        mse += w[i] * diff * diff;
    }
    return mse;
}

/* Non-negative x (sub-block scales or minimums) ~ d * L, L in [0, nmax], weights w; returns d.
 * Codes live in bytes as in ggml, so a negative code (only from a negative x) wraps. */
static float fit_positive(int n, int nmax, const float *x, uint8_t *L, const float *w) {
    float max = 0;
    for (int i = 0; i < n; ++i) max = max > x[i] ? max : x[i];
    if (max < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = nmax / max;
    float best_mse = 0;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)kq_round(iscale * x[i]);
    for (int i = 0; i < n; ++i) {
        const float diff = x[i] - (1 / iscale) * L[i];
        best_mse += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * is + nmax) / max;
        const float mse = positive_error(n, nmax, x, w, iscale_is, 1 / iscale_is);
        if (mse < best_mse) { best_mse = mse; iscale = iscale_is; }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = kq_round(iscale * x[i]);
        l = l < nmax ? l : nmax;
        L[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    for (int sweep = 0; sweep < 5; ++sweep) {
        int changed = 0;
        for (int i = 0; i < n; ++i) {
            float slx = sumlx - w[i] * x[i] * L[i];
            float sl2 = suml2 - w[i] * L[i] * L[i];
            if (!(slx > 0 && sl2 > 0)) continue;
            int nl = kq_round(x[i] * sl2 / slx);
            nl = nl < nmax ? nl : nmax;
            if (nl == L[i]) continue;
            slx += w[i] * x[i] * nl;
            sl2 += w[i] * nl * nl;
            if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = (uint8_t)nl;
                sumlx = slx;
                suml2 = sl2;
                ++changed;
            }
        }
        if (!changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Importance weights of n values: imp[i] * sqrt(sigma2 + x[i]^2). */
static void imat_weights(int n, const float *x, const float *imp, float sigma2, float *w) {
    for (int i = 0; i < n; ++i) w[i] = imp[i] * sqrtf(sigma2 + x[i] * x[i]);
}

static float sum_squares(int64_t n, const float *x) {
    float s = 0;
    for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
    return s;
}

static float sum_of(int n, const float *w) {
    float s = 0;
    for (int i = 0; i < n; ++i) s += w[i];
    return s;
}

/* ------------------------------------------------------------------ Q5_0, Q5_1 */

/* 32 codes of 5 bits: low nibbles as Q4_0's, the fifth bit of code j in bit j of qh (LE). */
static void pack5(const uint8_t *q, uint8_t *qs, uint8_t *qh) {
    uint32_t h = 0;
    for (int j = 0; j < QK / 2; ++j) {
        qs[j] = (uint8_t)((q[j] & 0x0F) | ((q[j + QK / 2] & 0x0F) << 4));
        h |= (uint32_t)((q[j] & 0x10u) >> 4) << j;
        h |= (uint32_t)((q[j + QK / 2] & 0x10u) >> 4) << (j + QK / 2);
    }
    for (int b = 0; b < 4; ++b) qh[b] = (uint8_t)(h >> (8 * b));
}

void clex_quantize_q5_0_ref(const float *x, void *vy, int64_t n) {
    block_q5_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) {
        const float *xb = x + i * QK;
        float amax = 0.0f, max = 0.0f;   /* the value of largest magnitude, sign kept */
        for (int j = 0; j < QK; j++) {
            if (amax < fabsf(xb[j])) { amax = fabsf(xb[j]); max = xb[j]; }
        }
        const float d = max / -16.0f;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = clex_fp32_to_fp16(d);
        uint8_t q[QK];
        for (int j = 0; j < QK; j++) {
            const int8_t t = (int8_t)kq_trunc8(xb[j] * id + 16.5f);
            q[j] = (uint8_t)(t < 31 ? t : 31);
        }
        pack5(q, y[i].qs, y[i].qh);
    }
}

void clex_quantize_q5_1_ref(const float *x, void *vy, int64_t n) {
    block_q5_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) {
        const float *xb = x + i * QK;
        float min = 3.40282347e+38f, max = -3.40282347e+38f;
        for (int j = 0; j < QK; j++) {
            if (xb[j] < min) min = xb[j];
            if (xb[j] > max) max = xb[j];
        }
        const float d = (max - min) / 31.0f;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = clex_fp32_to_fp16(d);
        y[i].m = clex_fp32_to_fp16(min);
        uint8_t q[QK];
        for (int j = 0; j < QK; j++) q[j] = kq_trunc8((xb[j] - min) * id + 0.5f);
        pack5(q, y[i].qs, y[i].qh);
    }
}

/* With importance: sigma2 over the whole row; Q5_0 by fit_symmetric, Q5_1 by fit_affine. */
static void q5_0_row_imat(const float *x, block_q5_0 *y, int64_t n, const float *imp) {
    const float sigma2 = sum_squares(n, x) / n;
    float w[QK];
    int8_t L[QK];
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        imat_weights(QK, x + QK * ib, imp + QK * ib, sigma2, w);
        y[ib].d = clex_fp32_to_fp16(fit_symmetric(QK, 16, x + QK * ib, L, w));
        pack5((const uint8_t *)L, y[ib].qs, y[ib].qh);
    }
}

static void q5_1_row_imat(const float *x, block_q5_1 *y, int64_t n, const float *imp) {
    const float sigma2 = sum_squares(n, x) / n;
    float w[QK], min;
    uint8_t L[QK];
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        imat_weights(QK, x + QK * ib, imp + QK * ib, sigma2, w);
        const float d = fit_affine(QK, 31, x + QK * ib, w, L, &min, -0.9f, 0.05f, 36, 0);
        y[ib].d = clex_fp32_to_fp16(d);
        y[ib].m = clex_fp32_to_fp16(-min);
        pack5(L, y[ib].qs, y[ib].qh);
    }
}

/* ------------------------------------------------------------------ Q4_0, Q4_1 with importance */

/* ggml's quantize_row_q4_0_impl / q4_1_impl: Q5_0's and Q5_1's searches with 4-bit codes. Without
 * an importance matrix ggml uses the plain reference quantizers (quants.c's), so these take one. */
static void pack4(const uint8_t *q, uint8_t *qs) {
    for (int j = 0; j < QK / 2; ++j) qs[j] = (uint8_t)(q[j] | (q[j + QK / 2] << 4));
}

static void q4_0_row_imat(const float *x, block_q4_0 *y, int64_t n, const float *imp) {
    const float sigma2 = sum_squares(n, x) / n;
    float w[QK];
    int8_t L[QK];
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        imat_weights(QK, x + QK * ib, imp + QK * ib, sigma2, w);
        y[ib].d = clex_fp32_to_fp16(fit_symmetric(QK, 8, x + QK * ib, L, w));
        pack4((const uint8_t *)L, y[ib].qs);
    }
}

static void q4_1_row_imat(const float *x, block_q4_1 *y, int64_t n, const float *imp) {
    const float sigma2 = sum_squares(n, x) / n;
    float w[QK], min;
    uint8_t L[QK];
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        imat_weights(QK, x + QK * ib, imp + QK * ib, sigma2, w);
        const float d = fit_affine(QK, 15, x + QK * ib, w, L, &min, -0.9f, 0.05f, 36, 0);
        y[ib].d = clex_fp32_to_fp16(d);
        y[ib].m = clex_fp32_to_fp16(-min);
        pack4(L, y[ib].qs);
    }
}

void clex_quantize_q4_0_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imp) {
    for (int64_t r = 0; r < nrows; ++r) q4_0_row_imat(x + r * n_per_row, (block_q4_0 *)y + r * (n_per_row / QK), n_per_row, imp);
}

void clex_quantize_q4_1_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imp) {
    for (int64_t r = 0; r < nrows; ++r) q4_1_row_imat(x + r * n_per_row, (block_q4_1 *)y + r * (n_per_row / QK), n_per_row, imp);
}

/* ------------------------------------------------------------------ IQ4_NL, IQ4_XS */

static const int8_t k_iq4_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                        1,    13,   25,  38,  53,  69,  89,  113};

/* The index of the level nearest v (the upper one of a tie). */
static int iq4_level(float v) {
    const int8_t *lv = k_iq4_levels;
    if (v <= lv[0]) return 0;
    if (v >= lv[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (v < lv[mid]) hi = mid; else lo = mid;
    }
    return v - lv[hi - 1] < lv[hi] - v ? hi - 1 : hi;
}

/* Weighted sums of xb against the levels nearest id * xb. */
static void iq4_sums(const float *xb, const float *w, float id, float *sumqx, float *sumq2) {
    float sqx = 0, sq2 = 0;
    for (int j = 0; j < 32; ++j) {
        const float q = k_iq4_levels[iq4_level(id * xb[j])];
        sqx += w[j] * q * xb[j];
        sq2 += w[j] * q * q;
    }
    *sumqx = sqx;
    *sumq2 = sq2;
}

/* The scale of one 32-value block (0 for an all-zero one): the largest value first on the
 * table's +127 side, then 15 trial scales with it on the -127 side, each refined by least
 * squares; the best explained energy wins. */
static float iq4_fit_block(const float *xb, const float *w) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
        const float ax = fabsf(xb[j]);
        if (ax > amax) { amax = ax; max = xb[j]; }
    }
    if (amax < GROUP_EPS) return 0.0f;
    float sumqx, sumq2;
    iq4_sums(xb, w, 1 / (-max / k_iq4_levels[0]), &sumqx, &sumq2);
    float d = sumq2 > 0 ? sumqx / sumq2 : 0.0f;
    float best = d * sumqx;
    for (int t = -IQ4_TRIES; t <= IQ4_TRIES; ++t) {
        iq4_sums(xb, w, (t + k_iq4_levels[0]) / max, &sumqx, &sumq2);
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

/* IQ4_XS's 6-bit sub-block scales, relative to d = -max_scale / 32, and each sub-block's codes
 * at its quantized scale. */
static void iq4_xs_scales(const float *x, const float *scales, float max_scale, block_iq4_xs *y, uint8_t *L) {
    const float d = -max_scale / 32;
    y->d = clex_fp32_to_fp16(d);
    const float id = d ? 1 / d : 0.0f;
    y->scales_h = 0;
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        int l = clampi(kq_round(id * scales[ib]), -32, 31);
        const float dl = d * l;
        const float idl = dl ? 1 / dl : 0.0f;
        for (int j = 0; j < 32; ++j) L[32 * ib + j] = (uint8_t)iq4_level(idl * x[32 * ib + j]);
        l += 32;
        if (ib % 2 == 0) y->scales_l[ib / 2] = (uint8_t)(l & 0xF);
        else y->scales_l[ib / 2] |= (uint8_t)((l & 0xF) << 4);
        y->scales_h |= (uint16_t)((l >> 4) << (2 * (ib % 8)));
    }
}

/* The scales of the 32-value blocks of a group of n (32 or 256) and their largest (by
 * magnitude, sign kept); imp NULL: weights x^2. */
static float iq4_block_scales(int n, const float *x, const float *imp, float *scales) {
    const float sigma2 = sum_squares(n, x) * (2.0f / n);
    float w[32], max_scale = 0, amax_scale = 0;
    for (int ib = 0; ib < n / 32; ++ib) {
        const float *xb = x + 32 * ib;
        if (imp) imat_weights(32, xb, imp + 32 * ib, sigma2, w);
        else for (int j = 0; j < 32; ++j) w[j] = xb[j] * xb[j];
        scales[ib] = iq4_fit_block(xb, w);
        if (fabsf(scales[ib]) > amax_scale) { amax_scale = fabsf(scales[ib]); max_scale = scales[ib]; }
    }
    return max_scale;
}

static void iq4_pack(int n, const uint8_t *L, uint8_t *qs) {
    for (int i = 0; i < n / 32; ++i)
        for (int j = 0; j < 16; ++j) qs[16 * i + j] = (uint8_t)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

static void iq4_nl_row(const float *x, block_iq4_nl *y, int64_t n, const float *imp) {
    uint8_t L[32];
    float scale;
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        const float *xb = x + QK * ib;
        iq4_block_scales(QK, xb, imp ? imp + QK * ib : NULL, &scale);
        y[ib].d = clex_fp32_to_fp16(scale);
        const float id = scale ? 1 / scale : 0;
        for (int j = 0; j < QK; ++j) L[j] = (uint8_t)iq4_level(id * xb[j]);
        iq4_pack(QK, L, y[ib].qs);
    }
}

static void iq4_xs_row(const float *x, block_iq4_xs *y, int64_t n, const float *imp) {
    uint8_t L[QK_K];
    float scales[QK_K / 32];
    for (int64_t ib = 0; ib < n / QK_K; ++ib) {
        const float *xb = x + QK_K * ib;
        const float max_scale = iq4_block_scales(QK_K, xb, imp ? imp + QK_K * ib : NULL, scales);
        iq4_xs_scales(xb, scales, max_scale, &y[ib], L);
        iq4_pack(QK_K, L, y[ib].qs);
    }
}

void clex_quantize_iq4_nl_ref(const float *x, void *y, int64_t n) { iq4_nl_row(x, y, n, NULL); }
void clex_quantize_iq4_xs_ref(const float *x, void *y, int64_t n) { iq4_xs_row(x, y, n, NULL); }

/* ------------------------------------------------------------------ Q2_K */

/* Codes of every sub-block whose quantized scale is not 0, at the stored scales; then packed:
 * four codes 32 apart in each byte, two bits each. */
static void q2k_finish(const float *x, block_q2_K *y, uint8_t *L) {
    const float dh = clex_fp16_to_fp32(y->d), mh = clex_fp16_to_fp32(y->dmin);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = dh * (y->scales[j] & 0xF);
        if (!d) continue;
        const float dm = mh * (y->scales[j] >> 4);
        for (int i = 0; i < 16; ++i) L[16 * j + i] = (uint8_t)clampi(kq_round((x[16 * j + i] + dm) / d), 0, 3);
    }
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            y->qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

static void q2k_block(const float *x, block_q2_K *y) {
    uint8_t L[QK_K];
    float w[16], mins[QK_K / 16], scales[QK_K / 16];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
        for (int l = 0; l < 16; ++l) w[l] = fabsf(x[16 * j + l]);
        scales[j] = fit_affine(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, 1);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    memset(y->scales, 0, sizeof y->scales);
    y->d = clex_fp32_to_fp16(0.0f);
    y->dmin = clex_fp32_to_fp16(0.0f);
    if (max_scale > 0) {
        const float iscale = 15.f / max_scale;
        for (int j = 0; j < QK_K / 16; ++j) y->scales[j] = (uint8_t)kq_round(iscale * scales[j]);
        y->d = clex_fp32_to_fp16(max_scale / 15.f);
    }
    if (max_min > 0) {
        const float iscale = 15.f / max_min;
        for (int j = 0; j < QK_K / 16; ++j) y->scales[j] |= (uint8_t)((unsigned)kq_round(iscale * mins[j]) << 4);
        y->dmin = clex_fp32_to_fp16(max_min / 15.f);
    }
    q2k_finish(x, y, L);
}

static void q2k_block_imat(const float *x, block_q2_K *y, const float *imp) {
    uint8_t L[QK_K], Ls[QK_K / 16], Lm[QK_K / 16];
    float w[16], mins[QK_K / 16], scales[QK_K / 16], sw[QK_K / 16];
    const float sigma2 = sum_squares(QK_K, x) / QK_K;
    for (int j = 0; j < QK_K / 16; ++j) {
        imat_weights(16, x + 16 * j, imp + 16 * j, sigma2, w);
        sw[j] = sum_of(16, w);
        scales[j] = fit_affine(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.9f, 0.05f, 36, 0);
    }
    y->d = clex_fp32_to_fp16(fit_positive(QK_K / 16, 15, scales, Ls, sw));
    y->dmin = clex_fp32_to_fp16(fit_positive(QK_K / 16, 15, mins, Lm, sw));
    for (int j = 0; j < QK_K / 16; ++j) y->scales[j] = (uint8_t)(Ls[j] | (Lm[j] << 4));
    q2k_finish(x, y, L);
}

/* ------------------------------------------------------------------ Q3_K */

/* 16 6-bit scales (0..63): low nibbles of 0..7 then 8..15 in bytes 0..7, the high 2 bits of
 * scale j in bits 2 * (j / 4) of byte 8 + j % 4. */
static void q3k_pack_scales(uint8_t *s, const int8_t *ls) {
    memset(s, 0, 12);
    for (int j = 0; j < QK_K / 16; ++j) {
        const int l = ls[j];
        if (j < 8) s[j] = (uint8_t)(l & 0xF);
        else s[j - 8] |= (uint8_t)((l & 0xF) << 4);
        s[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
    }
}

/* Codes at the stored scales (sub-blocks of scale 0 keep their search codes), the third bit of
 * code j in bit j / 32 of hmask[j % 32], and the low two bits packed as Q2_K's. */
static void q3k_finish(const float *x, block_q3_K *y, int8_t *L) {
    const float dh = clex_fp16_to_fp32(y->d);
    for (int j = 0; j < QK_K / 16; ++j) {
        int sc = j < 8 ? y->scales[j] & 0xF : y->scales[j - 8] >> 4;
        sc = (sc | (((y->scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        const float d = dh * sc;
        if (!d) continue;
        for (int i = 0; i < 16; ++i) L[16 * j + i] = (int8_t)(clampi(kq_round(x[16 * j + i] / d), -4, 3) + 4);
    }
    memset(y->hmask, 0, sizeof y->hmask);
    for (int j = 0; j < QK_K; ++j) {
        if (L[j] > 3) {
            y->hmask[j % 32] |= (uint8_t)(1u << (j / 32));
            L[j] = (int8_t)(L[j] - 4);
        }
    }
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            y->qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

static void q3k_block(const float *x, block_q3_K *y) {
    int8_t L[QK_K], ls[QK_K / 16];
    float scales[QK_K / 16];
    float max_scale = 0, amax = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
        scales[j] = fit_q3(16, 4, x + 16 * j, L + 16 * j);
        if (fabsf(scales[j]) > amax) { amax = fabsf(scales[j]); max_scale = scales[j]; }
    }
    memset(y->scales, 0, sizeof y->scales);
    y->d = clex_fp32_to_fp16(0.0f);
    if (max_scale) {
        const float iscale = -32.f / max_scale;
        for (int j = 0; j < QK_K / 16; ++j) {
            const int8_t l = (int8_t)kq_round(iscale * scales[j]);   /* wraps as ggml's int8_t does */
            ls[j] = (int8_t)(clampi(l, -32, 31) + 32);
        }
        q3k_pack_scales(y->scales, ls);
        y->d = clex_fp32_to_fp16(1 / iscale);
    }
    q3k_finish(x, y, L);
}

static void q3k_block_imat(const float *x, block_q3_K *y, const float *imp) {
    int8_t L[QK_K], ls[QK_K / 16];
    float w[16], scales[QK_K / 16], sw[QK_K / 16];
    const float sigma2 = 2 * sum_squares(QK_K, x) / QK_K;
    for (int j = 0; j < QK_K / 16; ++j) {
        imat_weights(16, x + 16 * j, imp + 16 * j, sigma2, w);
        sw[j] = sum_of(16, w);
        scales[j] = fit_symmetric(16, 4, x + 16 * j, L + 16 * j, w);
    }
    const float d = fit_symmetric(QK_K / 16, 32, scales, ls, sw);
    q3k_pack_scales(y->scales, ls);
    y->d = clex_fp32_to_fp16(d);
    q3k_finish(x, y, L);
}

/* ------------------------------------------------------------------ Q4_K, Q5_K */

/* Q4_K and Q5_K begin alike: d, dmin, then 8 6-bit scales and 8 6-bit minimums in 12 bytes
 * (sub-blocks 0..3 in the low 6 bits of bytes 0..3 and 4..7; 4..7 as nibbles of bytes 8..11
 * with their top 2 bits in the spare bits of bytes 0..7). */
typedef struct {
    clex_fp16 d, dmin;
    uint8_t scales[K_SCALE_SIZE];
} k4_head;
static_assert(sizeof(k4_head) == 4 + K_SCALE_SIZE, "k4_head size");

static void k4_put(uint8_t *s, int j, uint8_t ls, uint8_t lm) {   /* in order j = 0..7 */
    if (j < 4) {
        s[j] = ls;
        s[j + 4] = lm;
    } else {
        s[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        s[j - 4] |= (uint8_t)((ls >> 4) << 6);
        s[j] |= (uint8_t)((lm >> 4) << 6);
    }
}

static void k4_get(const uint8_t *s, int j, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* Codes in [0, nmax] at the stored scales and minimums (scale-0 sub-blocks keep their own). */
static void k4_requantize(const float *x, const k4_head *h, int nmax, uint8_t *L) {
    const float dh = clex_fp16_to_fp32(h->d), mh = clex_fp16_to_fp32(h->dmin);
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t sc, m;
        k4_get(h->scales, j, &sc, &m);
        const float d = dh * sc;
        if (!d) continue;
        const float dm = mh * m;
        for (int i = 0; i < 32; ++i) L[32 * j + i] = (uint8_t)clampi(kq_round((x[32 * j + i] + dm) / d), 0, nmax);
    }
}

/* Without importance: weights mean|x| + |x| per sub-block, scales and minimums as 6-bit
 * fractions of the largest. */
static void k4_search(const float *x, int nmax, float rmin, int nstep, k4_head *h, uint8_t *L) {
    float w[32], mins[QK_K / 32], scales[QK_K / 32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
        const float *xb = x + 32 * j;
        const float av_x = sqrtf(sum_squares(32, xb) / 32);
        for (int l = 0; l < 32; ++l) w[l] = av_x + fabsf(xb[l]);
        scales[j] = fit_affine(32, nmax, xb, w, L + 32 * j, &mins[j], rmin, 0.1f, nstep, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < QK_K / 32; ++j) {
        const uint8_t ls = (uint8_t)kq_round(inv_scale * scales[j]);
        const uint8_t lm = (uint8_t)kq_round(inv_min * mins[j]);
        k4_put(h->scales, j, ls < 63 ? ls : 63, lm < 63 ? lm : 63);
    }
    h->d = clex_fp32_to_fp16(max_scale / 63.f);
    h->dmin = clex_fp32_to_fp16(max_min / 63.f);
    k4_requantize(x, h, nmax, L);
}

/* With importance: the sub-block scales and minimums by fit_positive. ggml caps the codes at
 * 63 for Q5_K only (cap63); they exceed it only through a negative scale's wrapped code. */
static void k4_search_imat(const float *x, const float *imp, int nmax, int cap63, k4_head *h, uint8_t *L) {
    float w[32], mins[QK_K / 32], scales[QK_K / 32], sw[QK_K / 32];
    uint8_t Ls[QK_K / 32], Lm[QK_K / 32];
    const float sigma2 = 2 * sum_squares(QK_K, x) / QK_K;
    for (int j = 0; j < QK_K / 32; ++j) {
        imat_weights(32, x + 32 * j, imp + 32 * j, sigma2, w);
        sw[j] = sum_of(32, w);
        scales[j] = fit_affine(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], -0.9f, 0.05f, 36, 0);
    }
    const float d = fit_positive(QK_K / 32, 63, scales, Ls, sw);
    const float m = fit_positive(QK_K / 32, 63, mins, Lm, sw);
    for (int j = 0; j < QK_K / 32; ++j) {
        const uint8_t ls = cap63 && Ls[j] > 63 ? 63 : Ls[j], lm = cap63 && Lm[j] > 63 ? 63 : Lm[j];
        k4_put(h->scales, j, ls, lm);
    }
    h->d = clex_fp32_to_fp16(d);
    h->dmin = clex_fp32_to_fp16(m);
    k4_requantize(x, h, nmax, L);
}

/* Q4_K codes: each 64 values as 32 bytes, the first 32 in the low nibbles. */
static void q4k_pack(const uint8_t *L, block_q4_K *y) {
    for (int j = 0; j < QK_K; j += 64)
        for (int l = 0; l < 32; ++l) y->qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

/* Q5_K codes: the low 4 bits as Q4_K's; the fifth bit of value 64 * k + i (i < 32) in bit 2k
 * of qh[i], of value 64 * k + 32 + i in bit 2k + 1. */
static void q5k_pack(const uint8_t *L, block_q5_K *y) {
    memset(y->qh, 0, sizeof y->qh);
    for (int k = 0; k < QK_K / 64; ++k) {
        for (int i = 0; i < 32; ++i) {
            const int l1 = L[64 * k + i], l2 = L[64 * k + 32 + i];
            y->qh[i] |= (uint8_t)(((l1 >> 4) & 1) << (2 * k) | ((l2 >> 4) & 1) << (2 * k + 1));
            y->qs[32 * k + i] = (uint8_t)((l1 & 0xF) | ((l2 & 0xF) << 4));
        }
    }
}

static void q4k_block(const float *x, block_q4_K *y, const float *imp) {
    uint8_t L[QK_K];
    k4_head h;
    if (imp) k4_search_imat(x, imp, 15, 0, &h, L);
    else k4_search(x, 15, -1.f, 20, &h, L);
    y->d = h.d;
    y->dmin = h.dmin;
    memcpy(y->scales, h.scales, sizeof y->scales);
    q4k_pack(L, y);
}

static void q5k_block(const float *x, block_q5_K *y, const float *imp) {
    uint8_t L[QK_K];
    k4_head h;
    if (imp) k4_search_imat(x, imp, 31, 1, &h, L);
    else k4_search(x, 31, -0.5f, 15, &h, L);
    y->d = h.d;
    y->dmin = h.dmin;
    memcpy(y->scales, h.scales, sizeof y->scales);
    q5k_pack(L, y);
}

/* ------------------------------------------------------------------ Q6_K */

/* 6-bit codes: per 128 values, the low nibbles of 0..31 | 64..95 and 32..63 | 96..127 in
 * ql[0..31] and ql[32..63], the high 2 bits of value 32 * k + l in bits 2k of qh[l]. */
static void q6k_pack(const int8_t *L, block_q6_K *y) {
    for (int j = 0; j < QK_K; j += 128) {
        uint8_t *ql = y->ql + j / 2, *qh = y->qh + j / 4;
        for (int l = 0; l < 32; ++l) {
            const int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
            ql[l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
            ql[l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
            qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
        }
    }
}

/* 16 sub-blocks by fit_symmetric (weights x^2, or the importances as given), their scales as
 * signed 8-bit fractions of the largest; an all-zero super-block is all zero bytes. */
static void q6k_block(const float *x, block_q6_K *y, const float *imp) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    float max_scale = 0, max_abs = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        scales[ib] = fit_symmetric(16, 32, x + 16 * ib, L + 16 * ib, imp ? imp + 16 * ib : NULL);
        if (fabsf(scales[ib]) > max_abs) { max_abs = fabsf(scales[ib]); max_scale = scales[ib]; }
    }
    if (max_abs < GROUP_EPS) {
        memset(y, 0, sizeof *y);
        return;
    }
    const float iscale = -128.f / max_scale;
    y->d = clex_fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        const int l = kq_round(iscale * scales[ib]);
        y->scales[ib] = (int8_t)(l < 127 ? l : 127);
    }
    const float dh = clex_fp16_to_fp32(y->d);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = dh * y->scales[j];
        if (!d) continue;
        for (int i = 0; i < 16; ++i) L[16 * j + i] = (int8_t)(clampi(kq_round(x[16 * j + i] / d), -32, 31) + 32);
    }
    q6k_pack(L, y);
}

/* ------------------------------------------------------------------ entry points */

void clex_quantize_q2_K_ref(const float *x, void *vy, int64_t n) {
    block_q2_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) q2k_block(x + QK_K * i, &y[i]);
}
void clex_quantize_q3_K_ref(const float *x, void *vy, int64_t n) {
    block_q3_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) q3k_block(x + QK_K * i, &y[i]);
}
void clex_quantize_q4_K_ref(const float *x, void *vy, int64_t n) {
    block_q4_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) q4k_block(x + QK_K * i, &y[i], NULL);
}
void clex_quantize_q5_K_ref(const float *x, void *vy, int64_t n) {
    block_q5_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) q5k_block(x + QK_K * i, &y[i], NULL);
}
void clex_quantize_q6_K_ref(const float *x, void *vy, int64_t n) {
    block_q6_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) q6k_block(x + QK_K * i, &y[i], NULL);
}

/* One row of n_per_row values with the row's importances (never NULL here). */
static void q2k_row_imat(const float *x, void *vy, int64_t n, const float *imp) {
    block_q2_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) q2k_block_imat(x + QK_K * i, &y[i], imp + QK_K * i);
}
static void q3k_row_imat(const float *x, void *vy, int64_t n, const float *imp) {
    block_q3_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) q3k_block_imat(x + QK_K * i, &y[i], imp + QK_K * i);
}
static void q4k_row_imat(const float *x, void *vy, int64_t n, const float *imp) {
    block_q4_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) q4k_block(x + QK_K * i, &y[i], imp + QK_K * i);
}
static void q5k_row_imat(const float *x, void *vy, int64_t n, const float *imp) {
    block_q5_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) q5k_block(x + QK_K * i, &y[i], imp + QK_K * i);
}
static void q6k_row_imat(const float *x, void *vy, int64_t n, const float *imp) {
    block_q6_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) q6k_block(x + QK_K * i, &y[i], imp + QK_K * i);
}
static void q5_0_row_imat_v(const float *x, void *y, int64_t n, const float *imp) { q5_0_row_imat(x, y, n, imp); }
static void q5_1_row_imat_v(const float *x, void *y, int64_t n, const float *imp) { q5_1_row_imat(x, y, n, imp); }
static void iq4_nl_row_v(const float *x, void *y, int64_t n, const float *imp) { iq4_nl_row(x, y, n, imp); }
static void iq4_xs_row_v(const float *x, void *y, int64_t n, const float *imp) { iq4_xs_row(x, y, n, imp); }

typedef void (*row_imat_fn)(const float *x, void *y, int64_t n, const float *imp);

/* Rows one by one with the shared importances; without them, the reference over all rows. */
static void rows_imat(row_imat_fn row, void (*ref)(const float *, void *, int64_t), int64_t blck, size_t bytes,
                      const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imp) {
    if (!imp) {
        ref(x, y, n_per_row * nrows);
        return;
    }
    const size_t row_bytes = (size_t)(n_per_row / blck) * bytes;
    for (int64_t r = 0; r < nrows; ++r) row(x + r * n_per_row, (char *)y + (size_t)r * row_bytes, n_per_row, imp);
}

#define IMAT_ENTRY(t, row, blck, block)                                                                   \
    void clex_quantize_##t##_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imp) { \
        rows_imat(row, clex_quantize_##t##_ref, blck, sizeof(block), x, y, n_per_row, nrows, imp);      \
    }
IMAT_ENTRY(q5_0, q5_0_row_imat_v, QK, block_q5_0)
IMAT_ENTRY(q5_1, q5_1_row_imat_v, QK, block_q5_1)
IMAT_ENTRY(iq4_nl, iq4_nl_row_v, QK, block_iq4_nl)
IMAT_ENTRY(q2_K, q2k_row_imat, QK_K, block_q2_K)
IMAT_ENTRY(q3_K, q3k_row_imat, QK_K, block_q3_K)
IMAT_ENTRY(q4_K, q4k_row_imat, QK_K, block_q4_K)
IMAT_ENTRY(q5_K, q5k_row_imat, QK_K, block_q5_K)
IMAT_ENTRY(q6_K, q6k_row_imat, QK_K, block_q6_K)
IMAT_ENTRY(iq4_xs, iq4_xs_row_v, QK_K, block_iq4_xs)
#undef IMAT_ENTRY
