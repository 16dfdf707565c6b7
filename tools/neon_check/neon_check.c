/* neon_check: the NEON kernel set (native/src/arch/arm/) against the scalar reference.
 *
 * Built for aarch64 together with the C core's sources and run under qemu-aarch64 by run.sh
 * (docs/neon.md). Checks:
 *   - dispatch: clex_kernels_neon's table fills every slot NEON implements, and is the one with
 *     the SDOT integer kernels exactly when the build targets dotprod or the CPU reports
 *     HWCAP_ASIMDDP;
 *   - quantizers (q8_0, q8_1): the same bytes as clex_quantize_q8_*_ref, for many inputs
 *     (random scales, exact .5 ties, zero / -0 / sparse blocks, fp16-subnormal scales);
 *   - dot products (q8_0, q4_0, q4_1, f32, f16, bf16) against the *_generic kernels,
 *     q4_1_x4 (one row, four activation rows) against four calls of the generic q4_1:
 *     |neon - ref| <= 1e-5 * sum|w*x| + 1e-6, with sum|w*x| over the dequantized operands;
 *     axpy element-wise: |neon - ref| <= 1e-5 * (|y| + |a*x|) + 1e-6;
 *     ffn_act element-wise: |neon - ref| <= 1e-6 |ref| + 4e-7 |g u| (the tanh form's cancellation);
 *     for every variant the CPU runs (widening, and SDOT where available);
 *   - end to end, through the public API: tiny random models with F32 / F16 / BF16 / Q8_0 /
 *     Q4_0 / Q4_1 (and mixed) weights, clex_eval under CLEX_ISA_SCALAR and CLEX_ISA_NEON,
 *     every logit within 1e-4 of the row's largest magnitude, with the quantized activations
 *     kept in lock-step across rounding-tie flips (see check_e2e); plus a free-running
 *     two-thread run, strict for the float weight types; the same for Q5_0 / Q5_1 / IQ4_NL
 *     models and (E = 256) Q2_K .. Q6_K / IQ4_XS and a Q4_K/Q6_K mix, Q8_K activations kept in
 *     lock-step too;
 *   - check_types.c: the Q8_K quantizer byte for byte, and vec_dot / vec_dot4 of the types
 *     issue 13 added (plus the four-row kernels of Q8_0, Q4_0, Q4_1), both variants.
 * The original checks run first and draw the same random numbers as before the new ones.
 * Prints "N passed, N failed"; exit status 1 on any failure.
 *
 * Usage: neon_check [--expect-dotprod=0|1] [--seed=N]
 *   --expect-dotprod: fail unless the CPU's dot-product support (HWCAP_ASIMDDP) is as stated,
 *   so run.sh knows which variants a run really covered. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "neon_check.h"

#if !defined(CLEX_NEON)
#error "neon_check is built for aarch64 with NEON (see tools/neon_check/run.sh)"
#endif

#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#endif

/* ------------------------------------------------------------------ bookkeeping */

static long g_pass, g_fail;

typedef struct {
    const char *name;
    long n, fail;
    double worst;   /* largest |err| / allowed seen */
} stat_t;

#define MAX_STATS 160
static stat_t g_stats[MAX_STATS];
static int g_nstats;

static stat_t *stat_get(const char *name) {
    for (int i = 0; i < g_nstats; i++)
        if (strcmp(g_stats[i].name, name) == 0) return &g_stats[i];
    if (g_nstats == MAX_STATS) { fprintf(stderr, "too many stats\n"); exit(2); }
    g_stats[g_nstats].name = name;
    return &g_stats[g_nstats++];
}

void record(const char *name, int ok, double ratio, const char *fmt, ...) {
    stat_t *st = stat_get(name);
    st->n++;
    if (ratio > st->worst) st->worst = ratio;
    if (ok) { g_pass++; return; }
    g_fail++;
    st->fail++;
    if (st->fail <= 5) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stdout, "FAIL %s: ", name);
        vfprintf(stdout, fmt, ap);
        fputc('\n', stdout);
        va_end(ap);
    }
}

/* ------------------------------------------------------------------ random numbers (fixed seed) */

uint64_t g_rng = 0x9E3779B97F4A7C15ull;

uint64_t rnd_u64(void) {   /* splitmix64 */
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
double rnd_unit(void) { return (double)(rnd_u64() >> 11) * (1.0 / 9007199254740992.0); }
int rnd_int(int lo, int hi) { return lo + (int)(rnd_u64() % (uint64_t)(hi - lo + 1)); }
double rnd_normal(void) {
    double u = rnd_unit(), v = rnd_unit();
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}
float rnd_scale(double lo10, double hi10) { return (float)pow(10.0, lo10 + (hi10 - lo10) * rnd_unit()); }

/* a finite half with random sign, exponent and mantissa (subnormals included) */
clex_fp16 rnd_half(void) {
    const uint16_t sign = (uint16_t)((rnd_u64() & 1) << 15);
    const uint16_t exp = (uint16_t)rnd_int(0, 30);
    const uint16_t man = (uint16_t)(rnd_u64() & 0x3FF);
    return (clex_fp16)(sign | (exp << 10) | man);
}
/* a half of moderate magnitude (normal range, 2^-14 .. 2^6) */
clex_fp16 rnd_half_mid(void) {
    const uint16_t sign = (uint16_t)((rnd_u64() & 1) << 15);
    return (clex_fp16)(sign | ((uint16_t)rnd_int(1, 21) << 10) | (uint16_t)(rnd_u64() & 0x3FF));
}

/* ------------------------------------------------------------------ activation-like inputs */

enum { PROF_NORMAL, PROF_BLOCK_SCALES, PROF_TIES, PROF_ZEROS, PROF_GRID, PROF_TINY, N_PROF };
static const char *const g_prof_names[N_PROF] = {"normal", "block-scales", "ties", "zeros/sparse", "grid",
                                                 "fp16-subnormal-d"};

static void gen_floats(float *x, int64_t n, int prof) {
    const float scale = rnd_scale(-6, 6);
    for (int64_t b = 0; b < n / QK; b++) {
        float *xb = x + b * QK;
        switch (prof) {
        case PROF_NORMAL:
            for (int j = 0; j < QK; j++) xb[j] = (float)rnd_normal() * scale;
            break;
        case PROF_BLOCK_SCALES: {
            const float s = rnd_scale(-20, 20);
            for (int j = 0; j < QK; j++) xb[j] = (float)rnd_normal() * s;
            break;
        }
        case PROF_TIES: {
            /* amax = 127 * 2^e, so d = 2^e and id = 2^-e exactly: (k + 1/2) * 2^e lands on a tie */
            const float u = ldexpf(1.0f, rnd_int(-20, 20));
            for (int j = 0; j < QK; j++) xb[j] = ((float)rnd_int(-127, 126) + 0.5f) * u;
            xb[rnd_int(0, QK - 1)] = (rnd_u64() & 1 ? 127.0f : -127.0f) * u;
            break;
        }
        case PROF_ZEROS: {
            const int kind = rnd_int(0, 3);
            for (int j = 0; j < QK; j++) xb[j] = kind == 1 ? -0.0f : 0.0f;
            if (kind == 2) xb[rnd_int(0, QK - 1)] = (float)rnd_normal() * scale;
            if (kind == 3) {
                for (int j = 0; j < QK; j++) {
                    if (rnd_int(0, 3) == 0) xb[j] = (float)rnd_normal() * scale;
                    else if (rnd_u64() & 1) xb[j] = -0.0f;
                }
            }
            break;
        }
        case PROF_GRID: {
            const float u = ldexpf(1.0f, rnd_int(-10, 10));
            for (int j = 0; j < QK; j++) xb[j] = (float)rnd_int(-127, 127) * u * (rnd_int(0, 9) ? 1.0f : 0.37f);
            break;
        }
        case PROF_TINY: {
            const float s = rnd_scale(-9, -4);   /* d = amax/127 below the smallest normal half */
            for (int j = 0; j < QK; j++) xb[j] = (float)rnd_normal() * s;
            break;
        }
        }
    }
}

/* floats whose Q8_0 / Q4_0 / Q4_1 scales stay finite halves: one scale for the row, or one per block */
static void gen_half_safe(float *x, int64_t n, int per_block) {
    float s = rnd_scale(-3, 2);
    for (int64_t b = 0; b < n / QK; b++) {
        if (per_block) s = rnd_scale(-3, 2);
        for (int j = 0; j < QK; j++) x[b * QK + j] = (float)rnd_normal() * s;
    }
}

/* ------------------------------------------------------------------ kernel sets */

/* shorthands for the slots of a kernel table (internal.h: clex_kernels) */
#define DOT(k, type) ((k)->vec_dot[CLEX_TYPE_##type])
#define DOT4(k, type) ((k)->vec_dot4[CLEX_TYPE_##type])
#define QUANT(k, type) ((k)->from_float[CLEX_TYPE_##type])

/* ------------------------------------------------------------------ checks: quantizers */


static void check_quantizers(const clex_kernels *nk) {
    static float x[MAX_N];
    static uint8_t a[MAX_BLOCKS * sizeof(block_q8_1)], b[MAX_BLOCKS * sizeof(block_q8_1)];
    for (int nb = 1; nb <= MAX_BLOCKS; nb++) {
        const int64_t n = (int64_t)nb * QK;
        for (int prof = 0; prof < N_PROF; prof++) {
            gen_floats(x, n, prof);
            memset(a, 0xA5, sizeof a);
            memset(b, 0x5A, sizeof b);
            clex_quantize_q8_0_ref(x, a, n);
            QUANT(nk, Q8_0)(x, b, n);
            int ok = memcmp(a, b, (size_t)nb * sizeof(block_q8_0)) == 0;
            record("quant_q8_0", ok, ok ? 0.0 : 1.0, "n=%lld profile=%s: bytes differ", (long long)n,
                   g_prof_names[prof]);
            memset(a, 0xA5, sizeof a);
            memset(b, 0x5A, sizeof b);
            clex_quantize_q8_1_ref(x, a, n);
            QUANT(nk, Q8_1)(x, b, n);
            ok = memcmp(a, b, (size_t)nb * sizeof(block_q8_1)) == 0;
            record("quant_q8_1", ok, ok ? 0.0 : 1.0, "n=%lld profile=%s: bytes differ", (long long)n,
                   g_prof_names[prof]);
        }
    }
}

/* ------------------------------------------------------------------ checks: quantized dots */

double sum_abs_products(int32_t wtype, const void *w, int32_t xtype, const void *x, int64_t n) {
    static float wf[MAX_N + 64], xf[MAX_N + 64];
    if (clex_dequantize_row(wtype, w, wf, n) || clex_dequantize_row(xtype, x, xf, n)) {
        fprintf(stderr, "dequantize failed: %s\n", clex_last_error());
        exit(2);
    }
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += fabs((double)wf[i] * (double)xf[i]);
    return s;
}

void compare_dot(const char *name, clex_vec_dot_fn ref_fn, clex_vec_dot_fn neon_fn, int32_t wtype,
                        const void *w, int32_t xtype, const void *x, int64_t n, const char *mode) {
    float r = NAN, v = NAN;
    ref_fn(n, &r, w, x);
    neon_fn(n, &v, w, x);
    const double allowed = 1e-5 * sum_abs_products(wtype, w, xtype, x, n) + 1e-6;
    const double err = fabs((double)r - (double)v);
    const int ok = isfinite(v) && err <= allowed;
    record(name, ok, isfinite(err) ? err / allowed : INFINITY, "n=%lld %s: ref %.9g neon %.9g (|d| %.3g > %.3g)",
           (long long)n, mode, (double)r, (double)v, err, allowed);
}

/* one Q4_1 row against four Q8_1 activation rows, xstride bytes apart (a row plus 0..2 spare
 * blocks), against four calls of the reference */
static void compare_dot4(const char *name, clex_vec_dot_fn ref_fn, clex_vec_dot4_fn neon_fn, const block_q4_1 *w,
                         const float *xa, int64_t n, int rep) {
    static block_q8_1 acts4[4 * (MAX_BLOCKS + 2)];
    static float rowf[MAX_N];
    const int64_t nb = n / QK;
    const int64_t stride_blocks = nb + rep % 3;
    for (int j = 0; j < 4; j++) {
        for (int64_t i = 0; i < n; i++) rowf[i] = xa[i] * (float)(j + 1) * (j & 1 ? -1.0f : 1.0f) + 0.01f * (float)j;
        clex_quantize_q8_1_ref(rowf, acts4 + j * stride_blocks, n);
    }
    float r[4], v[4] = {NAN, NAN, NAN, NAN};
    for (int j = 0; j < 4; j++) ref_fn(n, &r[j], w, acts4 + j * stride_blocks);
    neon_fn(n, v, w, acts4, (size_t)stride_blocks * sizeof(block_q8_1));
    for (int j = 0; j < 4; j++) {
        const double allowed = 1e-5 * sum_abs_products(CLEX_TYPE_Q4_1, w, CLEX_TYPE_Q8_1, acts4 + j * stride_blocks, n) + 1e-6;
        const double err = fabs((double)r[j] - (double)v[j]);
        record(name, isfinite(v[j]) && err <= allowed, isfinite(err) ? err / allowed : INFINITY,
               "n=%lld row %d stride %lld blocks: ref %.9g neon %.9g", (long long)n, j, (long long)stride_blocks,
               (double)r[j], (double)v[j]);
    }
}

/* raw blocks: every byte pattern the format allows, scales from the whole finite half range */
static void raw_q8_0(block_q8_0 *y, int nb, int extreme) {
    for (int i = 0; i < nb; i++) {
        y[i].d = rnd_half_mid();
        for (int j = 0; j < QK; j++)
            y[i].qs[j] = extreme == 1 ? -128 : extreme == 2 ? (int8_t)(j & 1 ? 127 : -128) : (int8_t)(rnd_u64() & 0xFF);
    }
}
static void raw_q8_1(block_q8_1 *y, int nb, int extreme) {
    for (int i = 0; i < nb; i++) {
        y[i].d = rnd_scale(-4, 2);
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            y[i].qs[j] = extreme == 1 ? -128 : extreme == 2 ? (int8_t)(j & 1 ? 127 : -128) : (int8_t)(rnd_u64() & 0xFF);
            sum += y[i].qs[j];
        }
        y[i].s = y[i].d * (float)sum;
    }
}
static void raw_q4(uint8_t *qs, int extreme) {
    for (int j = 0; j < QK / 2; j++)
        qs[j] = extreme == 1 ? 0x00 : extreme == 2 ? 0xFF : (uint8_t)(rnd_u64() & 0xFF);
}

static void check_quant_dots(const char *variant, const clex_kernels *gk, const clex_kernels *nk) {
    static float xw[MAX_N], xa[MAX_N];
    static block_q8_0 w8[MAX_BLOCKS], a8[MAX_BLOCKS];
    static block_q4_0 w40[MAX_BLOCKS];
    static block_q4_1 w41[MAX_BLOCKS];
    static block_q8_1 a81[MAX_BLOCKS];
    char n_q8_0[64], n_q4_0[64], n_q4_1[64];
    snprintf(n_q8_0, sizeof n_q8_0, "vec_dot_q8_0 [%s]", variant);
    snprintf(n_q4_0, sizeof n_q4_0, "vec_dot_q4_0 [%s]", variant);
    snprintf(n_q4_1, sizeof n_q4_1, "vec_dot_q4_1 [%s]", variant);
    /* the names must outlive this call (stat table keeps the pointer) */
    char n_q4_1x4[64];
    snprintf(n_q4_1x4, sizeof n_q4_1x4, "vec_dot_q4_1_x4 [%s]", variant);
    const char *s80 = strdup(n_q8_0), *s40 = strdup(n_q4_0), *s41 = strdup(n_q4_1), *s41x4 = strdup(n_q4_1x4);

    for (int nb = 1; nb <= MAX_BLOCKS; nb++) {
        const int64_t n = (int64_t)nb * QK;
        for (int rep = 0; rep < 2; rep++) {
            /* quantized from floats, the way the converter and the forward pass produce them */
            gen_half_safe(xw, n, rep);
            gen_half_safe(xa, n, !rep);
            clex_quantize_q8_0_ref(xw, w8, n);
            clex_quantize_q4_0_ref(xw, w40, n);
            clex_quantize_q4_1_ref(xw, w41, n);
            clex_quantize_q8_0_ref(xa, a8, n);
            clex_quantize_q8_1_ref(xa, a81, n);
            compare_dot(s80, DOT(gk, Q8_0), DOT(nk, Q8_0), CLEX_TYPE_Q8_0, w8, CLEX_TYPE_Q8_0, a8, n, "quantized");
            compare_dot(s40, DOT(gk, Q4_0), DOT(nk, Q4_0), CLEX_TYPE_Q4_0, w40, CLEX_TYPE_Q8_0, a8, n, "quantized");
            compare_dot(s41, DOT(gk, Q4_1), DOT(nk, Q4_1), CLEX_TYPE_Q4_1, w41, CLEX_TYPE_Q8_1, a81, n, "quantized");
            compare_dot4(s41x4, DOT(gk, Q4_1), DOT4(nk, Q4_1), w41, xa, n, rep);
        }
        /* raw bytes: full int8 range (-128 included), random and extreme patterns */
        for (int extreme = 0; extreme < 3; extreme++) {
            const char *mode = extreme == 0 ? "raw-random" : extreme == 1 ? "raw-extreme(-128/nibble 0)"
                                                                          : "raw-extreme(alternating/nibble 15)";
            raw_q8_0(w8, nb, extreme);
            raw_q8_0(a8, nb, extreme);
            raw_q8_1(a81, nb, extreme);
            for (int i = 0; i < nb; i++) {
                w40[i].d = rnd_half_mid();
                raw_q4(w40[i].qs, extreme);
                w41[i].d = rnd_half_mid();
                w41[i].m = rnd_half_mid();
                raw_q4(w41[i].qs, extreme);
            }
            compare_dot(s80, DOT(gk, Q8_0), DOT(nk, Q8_0), CLEX_TYPE_Q8_0, w8, CLEX_TYPE_Q8_0, a8, n, mode);
            compare_dot(s40, DOT(gk, Q4_0), DOT(nk, Q4_0), CLEX_TYPE_Q4_0, w40, CLEX_TYPE_Q8_0, a8, n, mode);
            compare_dot(s41, DOT(gk, Q4_1), DOT(nk, Q4_1), CLEX_TYPE_Q4_1, w41, CLEX_TYPE_Q8_1, a81, n, mode);
        }
        /* subnormal / huge half scales too */
        for (int i = 0; i < nb; i++) {
            w8[i].d = rnd_half();
            a8[i].d = rnd_half();
            w40[i].d = rnd_half();
            w41[i].d = rnd_half();
            w41[i].m = rnd_half();
        }
        compare_dot(s80, DOT(gk, Q8_0), DOT(nk, Q8_0), CLEX_TYPE_Q8_0, w8, CLEX_TYPE_Q8_0, a8, n, "any-half-scales");
        compare_dot(s40, DOT(gk, Q4_0), DOT(nk, Q4_0), CLEX_TYPE_Q4_0, w40, CLEX_TYPE_Q8_0, a8, n, "any-half-scales");
        compare_dot(s41, DOT(gk, Q4_1), DOT(nk, Q4_1), CLEX_TYPE_Q4_1, w41, CLEX_TYPE_Q8_1, a81, n, "any-half-scales");
    }
}

/* ------------------------------------------------------------------ checks: float kernels */

#define MAX_F (MAX_N + 37)

static int64_t float_len(int i) {
    /* every length 0..160 (all tails of the 16-, 8- and 4-wide loops), then spread out to 4192+37 */
    if (i <= 160) return i;
    return 161 + (int64_t)(rnd_u64() % (uint64_t)(MAX_F - 161 + 1));
}
#define N_FLOAT_LENS 260

static void check_float_kernels(const clex_kernels *gk, const clex_kernels *nk) {
#define SLACK 9   /* elements past the end: poisoned inputs, sentinel outputs */
    static float a[MAX_F + 1 + SLACK], x[MAX_F + 1 + SLACK], y0[MAX_F + 1 + SLACK], y1[MAX_F + 1 + SLACK];
    static clex_fp16 h[MAX_F + 1 + SLACK];
    static clex_bf16 bf[MAX_F + 1 + SLACK];
    for (int li = 0; li < N_FLOAT_LENS; li++) {
        const int64_t n = float_len(li);
        const int off = rnd_int(0, 1);   /* unaligned starts too */
        float *pa = a + off, *px = x + off;
        const float sa = rnd_scale(-3, 3), sx = rnd_scale(-3, 3);
        for (int64_t i = 0; i < n; i++) {
            pa[i] = (float)rnd_normal() * sa;
            px[i] = (float)rnd_normal() * sx;
        }
        for (int64_t i = n; i < n + SLACK; i++) pa[i] = px[i] = 1e3f;   /* a kernel reading past n shows */
        double S = 0.0;
        for (int64_t i = 0; i < n; i++) S += fabs((double)pa[i] * (double)px[i]);
        float r, v;

        DOT(gk, F32)(n, &r, pa, px);
        DOT(nk, F32)(n, &v, pa, px);
        double allowed = 1e-5 * S + 1e-6, err = fabs((double)r - v);
        record("vec_dot_f32", err <= allowed, err / allowed, "n=%lld: ref %.9g neon %.9g", (long long)n, r, v);

        /* f16 weights: converted floats, or any finite bit pattern (subnormals included) */
        for (int mode = 0; mode < 2; mode++) {
            clex_fp16 *ph = h + off;
            for (int64_t i = 0; i < n; i++) ph[i] = mode ? rnd_half() : clex_fp32_to_fp16(pa[i]);
            for (int64_t i = n; i < n + SLACK; i++) ph[i] = 0x6400;   /* 1024 */
            double Sh = 0.0;
            for (int64_t i = 0; i < n; i++) Sh += fabs((double)clex_fp16_to_fp32(ph[i]) * (double)px[i]);
            DOT(gk, F16)(n, &r, ph, px);
            DOT(nk, F16)(n, &v, ph, px);
            allowed = 1e-5 * Sh + 1e-6;
            err = fabs((double)r - v);
            record("vec_dot_f16", err <= allowed, err / allowed, "n=%lld %s: ref %.9g neon %.9g", (long long)n,
                   mode ? "any-half" : "converted", r, v);
        }

        clex_bf16 *pb = bf + off;
        for (int64_t i = 0; i < n; i++) pb[i] = clex_fp32_to_bf16(pa[i]);
        for (int64_t i = n; i < n + SLACK; i++) pb[i] = 0x4480;   /* 1024 */
        double Sb = 0.0;
        for (int64_t i = 0; i < n; i++) Sb += fabs((double)clex_bf16_to_fp32(pb[i]) * (double)px[i]);
        DOT(gk, BF16)(n, &r, pb, px);
        DOT(nk, BF16)(n, &v, pb, px);
        allowed = 1e-5 * Sb + 1e-6;
        err = fabs((double)r - v);
        record("vec_dot_bf16", err <= allowed, err / allowed, "n=%lld: ref %.9g neon %.9g", (long long)n, r, v);

        /* axpy: y += alpha * x, element by element */
        const float alpha = (float)rnd_normal() * rnd_scale(-2, 2);
        float *py0 = y0 + off, *py1 = y1 + off;
        for (int64_t i = 0; i < n; i++) py0[i] = py1[i] = (float)rnd_normal() * sa;
        for (int64_t i = n; i < n + SLACK; i++) py0[i] = py1[i] = 12345.0f;   /* sentinels past the end */
        gk->axpy_f32(n, alpha, px, py0);
        nk->axpy_f32(n, alpha, px, py1);
        double worst = 0.0;
        int ok = 1;
        for (int64_t i = n; i < n + SLACK; i++) ok &= py1[i] == 12345.0f;
        for (int64_t i = 0; i < n; i++) {
            const double before = (double)py0[i] - (double)alpha * (double)px[i];
            const double al = 1e-5 * (fabs(before) + fabs((double)alpha * px[i])) + 1e-6;
            const double e = fabs((double)py0[i] - (double)py1[i]) / al;
            if (e > worst) worst = e;
        }
        ok = ok && worst <= 1.0;
        record("axpy_f32", ok, worst, "n=%lld: worst |err|/allowed %.3g (or wrote past the end)", (long long)n,
               worst);

        /* the FFN activation of each kind (u: pa; g: px, widened) against the scalar reference */
        for (int32_t kind = CLEX_FFN_SWIGLU; kind <= CLEX_FFN_GELU; kind++) {
            const float *u = kind == CLEX_FFN_GELU ? NULL : pa;
            for (int64_t i = 0; i < n; i++) py0[i] = py1[i] = px[i] * 4.0f;
            gk->act(kind, n, py0, u);
            nk->act(kind, n, py1, u);
            double w = 0.0;
            int aok = 1;
            for (int64_t i = n; i < n + SLACK; i++) aok &= py1[i] == 12345.0f;
            for (int64_t i = 0; i < n; i++) {
                const double s = fabs(4.0 * px[i]) * (u ? fabs((double)u[i]) : 1.0);
                const double al = 1e-6 * fabs((double)py0[i]) + 4e-7 * s + 1e-30;
                const double e = fabs((double)py0[i] - (double)py1[i]) / al;
                if (e > w) w = e;
            }
            record("ffn_act", aok && w <= 1.0, w, "kind %d n=%lld: worst |err|/allowed %.3g", (int)kind, (long long)n, w);
        }
    }
}

/* ------------------------------------------------------------------ end to end, public API */

typedef struct {
    clex_hparams hp;
    int32_t types[10];   /* tok_embd, output, wq, wk, wv, wo, gate, up, down; types[9] = tied */
    void *bufs[64];
    int nbufs;
} tiny_t;

static void *keep(tiny_t *t, void *p) {
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    t->bufs[t->nbufs++] = p;
    return p;
}

static clex_tensor make_weight(tiny_t *t, int32_t type, int64_t ne0, int64_t ne1, double std, const char *name) {
    float *f = malloc((size_t)(ne0 * ne1) * sizeof(float));
    for (int64_t i = 0; i < ne0 * ne1; i++) f[i] = (float)(rnd_normal() * std);
    const uint64_t nbytes = (uint64_t)(ne0 / clex_type_block_size(type)) * (uint64_t)clex_type_block_bytes(type) *
                            (uint64_t)ne1;
    void *q = keep(t, malloc(nbytes));
    if (clex_quantize_row(type, f, q, ne0 * ne1)) {
        fprintf(stderr, "quantize %s: %s\n", name, clex_last_error());
        exit(2);
    }
    free(f);
    clex_tensor w = {type, 2, {ne0, ne1, 1, 1}, q, nbytes, name};
    return w;
}

static clex_tensor make_norm(tiny_t *t, int64_t n, const char *name) {
    float *f = keep(t, malloc((size_t)n * sizeof(float)));
    for (int64_t i = 0; i < n; i++) f[i] = (float)(1.0 + 0.2 * rnd_normal());
    clex_tensor w = {CLEX_TYPE_F32, 1, {n, 1, 1, 1}, f, (uint64_t)n * 4, name};
    return w;
}

#define E2E_PROMPT 11
#define E2E_DECODE 4

/* Activation lock-step. The forward pass quantizes activations to Q8_0 / Q8_1 (bit-exact in both
 * ISAs), but the floats it quantizes come from dot products summed in a different order, so a
 * value sitting on a rounding tie (x * id = k + 1/2 within float noise) can round to k under one
 * ISA and k + 1 under the other: a legitimate one-step change of one activation, which moves the
 * logits by ~1% and would hide what the comparison is for. So the harness wraps the two
 * activation quantizers (through the traits table): the scalar run records every call's input
 * and bytes; the NEON run quantizes with the NEON kernel, checks its bytes against the record,
 * and where they differ only by such tie flips (every differing q off by one, at an element
 * within 1e-3 of a tie, block scales within 1e-5 relative: the float noise of the inputs) it
 * continues with the recorded bytes. Any other difference is a failure. The logits of the two
 * runs must then agree within 1e-4: what remains is the kernels' own float rounding. */
typedef struct {
    int32_t type;
    int64_t k;
    float *x;
    uint8_t *q;
} act_rec;

static act_rec *g_recs;
static size_t g_nrecs, g_caprecs, g_replay_pos;
static int g_mode;   /* 0 off, 1 record, 2 replay */
static long g_flips, g_replaced, g_replay_bad;
static clex_from_float_fn g_real_q8_0, g_real_q8_1, g_real_q8_K;

static size_t act_bytes(int32_t type, int64_t k) {
    if (type == CLEX_TYPE_Q8_K) return (size_t)(k / QK_K) * sizeof(block_q8_K);
    return (size_t)(k / QK) * (type == CLEX_TYPE_Q8_0 ? sizeof(block_q8_0) : sizeof(block_q8_1));
}

/* block b's scale, codes and (the recorded run's) 1/scale as the reference computes it */
static int act_block(int32_t type, const uint8_t *q, int64_t b, const float *x, float *d, const int8_t **qs,
                     float *id) {
    if (type == CLEX_TYPE_Q8_K) {
        const block_q8_K *y = (const block_q8_K *)q + b;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        *d = y->d, *qs = y->qs, *id = amax ? -127.0f / max : 0.0f;
        return QK_K;
    }
    if (type == CLEX_TYPE_Q8_0) {
        const block_q8_0 *y = (const block_q8_0 *)q + b;
        *d = clex_fp16_to_fp32(y->d), *qs = y->qs;
    } else {
        const block_q8_1 *y = (const block_q8_1 *)q + b;
        *d = y->d, *qs = y->qs;
    }
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float dd = amax / 127.0f;
    *id = dd ? 1.0f / dd : 0.0f;
    return QK;
}

/* a Q8_K block's bsums are the sums of its own codes */
static int bsums_consistent(const block_q8_K *y) {
    for (int g = 0; g < QK_K / 16; g++) {
        int sum = 0;
        for (int l = 0; l < 16; l++) sum += y->qs[16 * g + l];
        if (sum != y->bsums[g]) return 0;
    }
    return 1;
}

/* differing blocks explained by tie flips? counts the flipped elements */
static int flips_explained(int32_t type, int64_t k, const float *xs, const uint8_t *qs_rec, const uint8_t *qn,
                           long *flips) {
    const int64_t bs = type == CLEX_TYPE_Q8_K ? QK_K : QK;
    for (int64_t b = 0; b < k / bs; b++) {
        const float *x = xs + b * bs;
        float dr, dn, id;
        const int8_t *a, *c;
        act_block(type, qs_rec, b, x, &dr, &a, &id);
        act_block(type, qn, b, x, &dn, &c, &id);
        if (fabsf(dr - dn) > 1e-5f * fmaxf(fabsf(dr), fabsf(dn))) return 0;
        if (type == CLEX_TYPE_Q8_K && !bsums_consistent((const block_q8_K *)qn + b)) return 0;
        if (type == CLEX_TYPE_Q8_1) {   /* s = d * sum(qs) follows the codes */
            int sum = 0;
            for (int j = 0; j < QK; j++) sum += c[j];
            const block_q8_1 *yn = (const block_q8_1 *)qn + b;
            if (yn->s != yn->d * (float)sum) return 0;
        }
        for (int j = 0; j < bs; j++) {
            if (a[j] == c[j]) continue;
            const double v = (double)x[j] * id;
            if (abs(a[j] - c[j]) != 1 || fabs(fabs(v - floor(v)) - 0.5) > 1e-3) return 0;
            (*flips)++;
        }
    }
    return 1;
}

static void hook(int32_t type, const float *x, void *y, int64_t n) {
    (type == CLEX_TYPE_Q8_0 ? g_real_q8_0 : type == CLEX_TYPE_Q8_1 ? g_real_q8_1 : g_real_q8_K)(x, y, n);
    const size_t nb = act_bytes(type, n);
    if (g_mode == 1) {
        if (g_nrecs == g_caprecs) {
            g_caprecs = g_caprecs ? 2 * g_caprecs : 256;
            g_recs = realloc(g_recs, g_caprecs * sizeof *g_recs);
            if (!g_recs) { fprintf(stderr, "out of memory\n"); exit(2); }
        }
        act_rec *r = &g_recs[g_nrecs++];
        r->type = type;
        r->k = n;
        r->x = malloc((size_t)n * sizeof(float));
        r->q = malloc(nb);
        if (!r->x || !r->q) { fprintf(stderr, "out of memory\n"); exit(2); }
        memcpy(r->x, x, (size_t)n * sizeof(float));
        memcpy(r->q, y, nb);
    } else if (g_mode == 2) {
        if (g_replay_pos >= g_nrecs || g_recs[g_replay_pos].type != type || g_recs[g_replay_pos].k != n) {
            g_replay_bad++;   /* the two runs did not make the same calls */
            return;
        }
        const act_rec *r = &g_recs[g_replay_pos++];
        if (memcmp(r->q, y, nb) != 0) {
            g_replaced++;
            if (!flips_explained(type, n, r->x, r->q, y, &g_flips)) g_replay_bad++;
            memcpy(y, r->q, nb);   /* continue in lock-step */
        }
    }
}
static void hook_q8_0(const float *x, void *y, int64_t n) { hook(CLEX_TYPE_Q8_0, x, y, n); }
static void hook_q8_1(const float *x, void *y, int64_t n) { hook(CLEX_TYPE_Q8_1, x, y, n); }
static void hook_q8_K(const float *x, void *y, int64_t n) { hook(CLEX_TYPE_Q8_K, x, y, n); }

static void hooks_install(int mode) {
    /* the selected kernel table (core.c) is plain data; clex_set_isa rewrites these slots */
    if (mode) {
        g_real_q8_0 = QUANT(&clex_k, Q8_0);
        g_real_q8_1 = QUANT(&clex_k, Q8_1);
        g_real_q8_K = QUANT(&clex_k, Q8_K);
        QUANT(&clex_k, Q8_0) = hook_q8_0;
        QUANT(&clex_k, Q8_1) = hook_q8_1;
        QUANT(&clex_k, Q8_K) = hook_q8_K;
    } else {
        QUANT(&clex_k, Q8_0) = g_real_q8_0;
        QUANT(&clex_k, Q8_1) = g_real_q8_1;
        QUANT(&clex_k, Q8_K) = g_real_q8_K;
    }
    g_mode = mode;
}

static void recs_clear(void) {
    for (size_t i = 0; i < g_nrecs; i++) {
        free(g_recs[i].x);
        free(g_recs[i].q);
    }
    g_nrecs = g_replay_pos = 0;
    g_flips = g_replaced = g_replay_bad = 0;
}

/* logits of the prompt (all rows) then of E2E_DECODE single-token steps, under one ISA.
 * mode: 0 free-running, 1 record the activations, 2 replay them (one thread: same call order) */
static int run_model(const clex_model *m, const clex_hparams *hp, int isa, int n_threads, int mode, float *logits) {
    if (clex_set_isa(isa)) {
        fprintf(stdout, "clex_set_isa(%s): %s\n", clex_isa_name(isa), clex_last_error());
        return -1;
    }
    clex_ctx *c;
    if (clex_ctx_create(m, 32, 4, n_threads, CLEX_TYPE_F32, &c)) {   /* n_batch 4: the prompt runs in three steps */
        fprintf(stdout, "clex_ctx_create: %s\n", clex_last_error());
        return -1;
    }
    float inv[64];
    for (int i = 0; i < hp->n_rot / 2; i++) inv[i] = powf(10000.0f, -2.0f * (float)i / (float)hp->n_rot);
    int rc = clex_ctx_set_rope(c, inv, hp->n_rot / 2);
    int32_t toks[E2E_PROMPT + E2E_DECODE];
    uint64_t save = g_rng;
    g_rng = 12345;   /* same tokens for both ISAs */
    for (int i = 0; i < E2E_PROMPT + E2E_DECODE; i++) toks[i] = rnd_int(0, hp->n_vocab - 1);
    g_rng = save;
    if (mode) hooks_install(mode);
    if (!rc) rc = clex_eval(c, toks, E2E_PROMPT, 0, logits, 1);
    for (int s = 0; !rc && s < E2E_DECODE; s++)
        rc = clex_eval(c, toks + E2E_PROMPT + s, 1, E2E_PROMPT + s,
                       logits + (int64_t)(E2E_PROMPT + s) * hp->n_vocab, 0);
    if (mode) hooks_install(0);
    if (rc) fprintf(stdout, "eval: %s\n", clex_last_error());
    clex_ctx_free(c);
    return rc;
}

/* largest |a - b| / (1e-4 * row max |a|) over the rows; -1 if something is not finite */
static double logit_ratio(const float *a, const float *b, int rows, int V, int *bad_row) {
    double worst = 0.0;
    *bad_row = -1;
    for (int r = 0; r < rows; r++) {
        double amax = 0.0, dmax = 0.0;
        for (int v = 0; v < V; v++) {
            const double x = a[(int64_t)r * V + v], y = b[(int64_t)r * V + v];
            if (!isfinite(x) || !isfinite(y)) { *bad_row = r; return -1.0; }
            if (fabs(x) > amax) amax = fabs(x);
            if (fabs(x - y) > dmax) dmax = fabs(x - y);
        }
        const double ratio = dmax / (1e-4 * amax + 1e-7);
        if (ratio > worst) { worst = ratio; *bad_row = r; }
    }
    return worst;
}

static int is_float_type(int32_t t) { return t == CLEX_TYPE_F32 || t == CLEX_TYPE_F16 || t == CLEX_TYPE_BF16; }

/* the weights of t->types (tok_embd, output, wq, wk, wv, wo, gate, up, down; types[9] = tied) */
static int build_tiny(tiny_t *t, clex_model **m) {
    const clex_hparams *hp = &t->hp;
    const int64_t E = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff;
    clex_tensor tok = make_weight(t, t->types[0], E, hp->n_vocab, 1.0, "token_embd");
    clex_tensor onorm = make_norm(t, E, "output_norm");
    clex_tensor out = t->types[9] ? (clex_tensor){0} : make_weight(t, t->types[1], E, hp->n_vocab, 0.3, "output");
    clex_layer layers[2] = {0};   /* the optional tensors (biases, extra norms, experts) absent */
    for (int l = 0; l < hp->n_layer; l++) {
        clex_layer *L = &layers[l];
        L->attn_norm = make_norm(t, E, "attn_norm");
        L->wq = make_weight(t, t->types[2], E, qd, 0.25, "attn_q");
        L->wk = make_weight(t, t->types[3], E, kvd, 0.25, "attn_k");
        L->wv = make_weight(t, t->types[4], E, kvd, 0.25, "attn_v");
        L->wo = make_weight(t, t->types[5], qd, E, 0.15, "attn_output");
        L->ffn_norm = make_norm(t, E, "ffn_norm");
        L->w_gate = make_weight(t, t->types[6], E, F, 0.2, "ffn_gate");
        L->w_up = make_weight(t, t->types[7], E, F, 0.2, "ffn_up");
        L->w_down = make_weight(t, t->types[8], F, E, 0.15, "ffn_down");
    }
    return clex_model_create(hp, &tok, &onorm, NULL, t->types[9] ? NULL : &out, NULL, layers, m);
}

/* one model: the lock-step check (one thread), then the free-running two-thread run, strict
 * where nothing is quantized */
static void e2e_case(tiny_t *t, const char *sname) {
    const clex_hparams *hp = &t->hp;
    int quantized = !t->types[9] && !is_float_type(t->types[1]);
    for (int i = 2; i < 9; i++) quantized |= !is_float_type(t->types[i]);
    clex_model *m;
    if (build_tiny(t, &m)) {
        record(sname, 0, INFINITY, "model_create: %s", clex_last_error());
        return;
    }
    const int rows = E2E_PROMPT + E2E_DECODE, V = hp->n_vocab;
    float *ls = calloc((size_t)rows * V, sizeof(float));
    float *ln = calloc((size_t)rows * V, sizeof(float));
    int bad_row = -1;
    recs_clear();
    int rc = run_model(m, hp, CLEX_ISA_SCALAR, 1, 1, ls) | run_model(m, hp, CLEX_ISA_NEON, 1, 2, ln);
    const int same_calls = g_replay_pos == g_nrecs;
    double ratio = rc ? -1.0 : logit_ratio(ls, ln, rows, V, &bad_row);
    record(sname, !rc && same_calls && g_replay_bad == 0 && ratio >= 0.0 && ratio <= 1.0, ratio < 0 ? INFINITY : ratio,
           "rc %d, activation calls %zu/%zu, unexplained activation differences %ld, "
           "worst row %d: |scalar - neon| / (1e-4 * max|logit|) = %.3g",
           rc, g_replay_pos, g_nrecs, g_replay_bad, bad_row, ratio);
    const long flips = g_flips, replaced = g_replaced;
    const size_t calls = g_nrecs;
    recs_clear();
    rc = run_model(m, hp, CLEX_ISA_SCALAR, 2, 0, ls) | run_model(m, hp, CLEX_ISA_NEON, 2, 0, ln);
    ratio = rc ? -1.0 : logit_ratio(ls, ln, rows, V, &bad_row);
    printf("  %-26s activation rows %3zu, replayed %3ld (tie flips %ld); free-running worst |diff|/(1e-4 max) %.3g%s\n",
           sname, calls, replaced, flips, ratio, quantized ? " (info)" : "");
    if (!quantized || rc || ratio < 0.0) {
        char *fname = malloc(strlen(sname) + 16);
        sprintf(fname, "%s 2 threads", sname);
        record(fname, !rc && ratio >= 0.0 && ratio <= 1.0, ratio < 0 ? INFINITY : ratio, "rc %d, worst row %d: ratio %.3g",
               rc, bad_row, ratio);
    }
    free(ls);
    free(ln);
    clex_model_free(m);
    for (int i = 0; i < t->nbufs; i++) free(t->bufs[i]);
}

/* the original models (E 64): one per type, then two mixed ones */
static void e2e_small(void) {
    static const int32_t all[] = {CLEX_TYPE_F32, CLEX_TYPE_F16, CLEX_TYPE_BF16,
                                  CLEX_TYPE_Q8_0, CLEX_TYPE_Q4_0, CLEX_TYPE_Q4_1};
    for (int cfg = 0; cfg < 6 + 2; cfg++) {
        tiny_t t = {0};
        t.hp = (clex_hparams){.n_vocab = 96, .n_embd = 64, .n_layer = 2, .n_head = 4, .n_head_kv = 2,
                              .head_dim = 16, .n_rot = cfg == 6 ? 12 : 16, .n_ff = 96, .rms_eps = 1e-5f};
        for (int i = 0; i < 9; i++) t.types[i] = cfg < 6 ? all[cfg] : all[(i + cfg) % 6];
        t.types[9] = cfg == 7;   /* tied output */
        char name[96];
        if (cfg < 6) snprintf(name, sizeof name, "e2e %s", clex_type_name(all[cfg]));
        else snprintf(name, sizeof name, "e2e mixed%s%s", cfg == 6 ? " n_rot<head_dim" : "", t.types[9] ? " tied" : "");
        e2e_case(&t, strdup(name));
    }
}

/* issue 13's types: the 32-value ones at E 64, the 256-value ones (and a Q4_K_M-like mix:
 * Q6_K attn_v, ffn_down and output) at E = n_ff = 256, head_dim 64, one layer */
static void e2e_new_types(void) {
    static const int32_t types[] = {CLEX_TYPE_Q5_0, CLEX_TYPE_Q5_1, CLEX_TYPE_IQ4_NL, CLEX_TYPE_Q2_K, CLEX_TYPE_Q3_K,
                                    CLEX_TYPE_Q4_K, CLEX_TYPE_Q5_K, CLEX_TYPE_Q6_K, CLEX_TYPE_IQ4_XS, -1};
    for (size_t c = 0; c < sizeof types / sizeof types[0]; c++) {
        const int32_t ty = types[c];
        const int k = ty < 0 || clex_type_block_size(ty) == QK_K;
        tiny_t t = {0};
        t.hp = (clex_hparams){.n_vocab = 96, .n_embd = k ? 256 : 64, .n_layer = k ? 1 : 2, .n_head = 4, .n_head_kv = 2,
                              .head_dim = k ? 64 : 16, .n_rot = k ? 64 : 16, .n_ff = k ? 256 : 96, .rms_eps = 1e-5f};
        for (int i = 0; i < 9; i++) t.types[i] = ty >= 0 ? ty : (i == 1 || i == 4 || i == 8) ? CLEX_TYPE_Q6_K : CLEX_TYPE_Q4_K;
        char name[96];
        if (ty >= 0) snprintf(name, sizeof name, "e2e %s", clex_type_name(ty));
        else snprintf(name, sizeof name, "e2e mixed Q4_K/Q6_K");
        e2e_case(&t, strdup(name));
    }
}

static void check_e2e(void) {
    printf("end to end (free-running, 2 threads; informational where activations are quantized):\n");
    e2e_small();
    e2e_new_types();
    clex_set_isa(CLEX_ISA_NEON);
}

/* ------------------------------------------------------------------ public API plumbing */

static void check_api(void) {
    /* the library's own choice on this CPU */
    const int isa = clex_isa();
    record("api: default ISA is neon", isa == CLEX_ISA_NEON, 0.0, "clex_isa() = %s", clex_isa_name(isa));
    record("api: neon supported", clex_isa_supported(CLEX_ISA_NEON) == 1, 0.0, "clex_isa_supported(neon) = 0");
    record("api: avx2 unsupported", clex_isa_supported(CLEX_ISA_AVX2) == 0, 0.0, "avx2 reported on aarch64");
    /* clex_quantize_act under NEON gives the reference bytes */
    static float x[MAX_N];
    static uint8_t a[MAX_BLOCKS * sizeof(block_q8_1)], b[MAX_BLOCKS * sizeof(block_q8_1)];
    clex_set_isa(CLEX_ISA_NEON);
    for (int prof = 0; prof < N_PROF; prof++) {
        const int64_t n = (int64_t)rnd_int(1, MAX_BLOCKS) * QK;
        gen_floats(x, n, prof);
        for (int ty = 0; ty < 2; ty++) {
            const int32_t type = ty ? CLEX_TYPE_Q8_1 : CLEX_TYPE_Q8_0;
            const int rc = clex_quantize_row(type, x, a, n) | clex_quantize_act(type, x, b, n);
            const size_t bytes = (size_t)(n / QK) * (size_t)clex_type_block_bytes(type);
            record("api: quantize_act == quantize_row", rc == 0 && memcmp(a, b, bytes) == 0, 0.0, "%s profile %s",
                   clex_type_name(type), g_prof_names[prof]);
        }
    }
}

/* ------------------------------------------------------------------ dispatch */

static int g_expect_dotprod = -1;

/* the scalar set with a NEON table laid over it, as clex_set_isa builds the selected one */
static clex_kernels over_scalar(const clex_kernels *neon) {
    clex_kernels k = clex_kernels_scalar;
    if (neon) clex_kernels_install(&k, neon);
    return k;
}

static int check_dispatch(clex_kernels *widen, clex_kernels *sdot, clex_kernels *autoset) {
    const clex_kernels *gk = &clex_kernels_scalar;
    const clex_kernels *sdot_table = clex_kernels_neon_variant(1);
    const int have_sdot = sdot_table != NULL;
    *widen = over_scalar(clex_kernels_neon_variant(0));
    *sdot = over_scalar(sdot_table);
    *autoset = over_scalar(clex_kernels_neon());
#if defined(__linux__)
    const int cpu_dp = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    const int cpu_dp = 0;
#endif
#if defined(__ARM_FEATURE_DOTPROD)
    const char *build = "native (-march has dotprod)";
    const int want_sdot = 1;
#else
    const char *build = have_sdot ? "run-time (target pragma + HWCAP)" : "none (widening only)";
    const int want_sdot = have_sdot && cpu_dp;
#endif
    printf("cpu dotprod (HWCAP_ASIMDDP): %s; SDOT kernels in this build: %s; clex_kernels_neon uses: %s\n",
           cpu_dp ? "yes" : "no", build, DOT(autoset, Q8_0) == DOT(sdot, Q8_0) && have_sdot ? "sdot" : "widen");

    /* every slot NEON implements holds a NEON kernel, and the integer ones all come from the table
     * the CPU should run */
    static const int32_t dot_types[] = {CLEX_TYPE_Q8_0, CLEX_TYPE_Q4_0, CLEX_TYPE_Q4_1, CLEX_TYPE_Q5_0,
                                        CLEX_TYPE_Q5_1, CLEX_TYPE_IQ4_NL, CLEX_TYPE_Q2_K, CLEX_TYPE_Q3_K,
                                        CLEX_TYPE_Q4_K, CLEX_TYPE_Q5_K, CLEX_TYPE_Q6_K, CLEX_TYPE_IQ4_XS};
    int uses_sdot = have_sdot, uses_widen = 1;
    for (size_t i = 0; i < sizeof dot_types / sizeof dot_types[0]; i++) {
        const int32_t t = dot_types[i];
        record("dispatch: every slot is a NEON kernel", autoset->vec_dot[t] && autoset->vec_dot[t] != gk->vec_dot[t],
               0.0, "vec_dot[%s] kept the generic kernel or is NULL", clex_type_name(t));
        record("dispatch: every slot is a NEON kernel", autoset->vec_dot4[t] != NULL, 0.0, "vec_dot4[%s] is NULL",
               clex_type_name(t));
        uses_sdot &= autoset->vec_dot[t] == sdot->vec_dot[t] && autoset->vec_dot4[t] == sdot->vec_dot4[t];
        uses_widen &= autoset->vec_dot[t] == widen->vec_dot[t] && autoset->vec_dot4[t] == widen->vec_dot4[t];
    }
#define SLOT(name, f) {name, autoset->f != NULL && autoset->f != gk->f}
    const struct { const char *name; int ok; } slots[] = {
        SLOT("f32", vec_dot[CLEX_TYPE_F32]), SLOT("f16", vec_dot[CLEX_TYPE_F16]), SLOT("bf16", vec_dot[CLEX_TYPE_BF16]),
        SLOT("quant_q8_0", from_float[CLEX_TYPE_Q8_0]), SLOT("quant_q8_1", from_float[CLEX_TYPE_Q8_1]),
        SLOT("quant_q8_K", from_float[CLEX_TYPE_Q8_K]), SLOT("axpy_f32", axpy_f32),
        SLOT("act", act),
    };
#undef SLOT
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++)
        record("dispatch: every slot is a NEON kernel", slots[i].ok, 0.0, "slot %s kept the generic kernel or is NULL",
               slots[i].name);
    record("dispatch: sdot exactly when available", want_sdot ? uses_sdot : uses_widen, 0.0,
           "want %s", want_sdot ? "sdot" : "widen");
    if (g_expect_dotprod >= 0)
        record("dispatch: cpu dotprod as expected", cpu_dp == g_expect_dotprod, 0.0, "HWCAP_ASIMDDP %d, expected %d",
               cpu_dp, g_expect_dotprod);
    return have_sdot && (cpu_dp || want_sdot);   /* may the SDOT set run here? */
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--expect-dotprod=", 17) == 0) g_expect_dotprod = atoi(argv[i] + 17);
        else if (strncmp(argv[i], "--seed=", 7) == 0) g_rng = strtoull(argv[i] + 7, NULL, 0);
        else {
            fprintf(stderr, "usage: %s [--expect-dotprod=0|1] [--seed=N]\n", argv[0]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    clex_init_once();
    clex_kernels widen, sdot, autoset;
    const int run_sdot = check_dispatch(&widen, &sdot, &autoset);
    const clex_kernels gk = clex_kernels_scalar;

    check_quantizers(&autoset);
    check_quant_dots("widen", &gk, &widen);
    if (run_sdot) check_quant_dots("sdot", &gk, &sdot);
    check_float_kernels(&gk, &autoset);
    check_api();
    check_e2e();
    /* issue 13's types and the Q8_K quantizer (check_types.c), last: the checks above draw the
     * same random numbers as before them */
    check_quantizer_q8_K(&autoset);
    check_type_dots("widen", &gk, &widen);
    if (run_sdot) check_type_dots("sdot", &gk, &sdot);

    printf("\n%-44s %7s %6s %12s\n", "check", "cases", "failed", "worst/allowed");
    for (int i = 0; i < g_nstats; i++)
        printf("%-44s %7ld %6ld %12.3g\n", g_stats[i].name, g_stats[i].n, g_stats[i].fail, g_stats[i].worst);
    printf("\n%ld passed, %ld failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
