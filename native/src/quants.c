/* Tensor types: the reference (scalar) quantizers, dequantizers and dot products that define
 * every result (the SIMD kernels are held to them), the traits table of every ggml type id, and
 * the public type API. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "kquantize.h"

/* ------------------------------------------------------------------ reference quantizers */

/* (int8_t)v where that is defined (v truncates into [-128, 127]); NaN and out-of-range values,
 * which a NaN or Inf in the row or a block of tiny values (whose scale's inverse overflows to
 * Inf) produce, become 0: the code x86's conversion has always produced here, and what numpy's
 * cast gives, so the bytes stay those of gguf-py and convert/quantize.py. A plain cast of such
 * a value is undefined behaviour in C. */
static inline int8_t q_int8(float v) {
    return (v > -129.0f && v < 128.0f) ? (int8_t)v : 0;   /* NaN fails both comparisons */
}

void clex_quantize_q8_0_ref(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[i * QK + j]));
        const float d = amax / 127.0f;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = clex_fp32_to_fp16(d);
        for (int j = 0; j < QK; j++) y[i].qs[j] = q_int8(roundf(x[i * QK + j] * id));
    }
}

void clex_quantize_q8_1_ref(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[i * QK + j]));
        const float d = amax / 127.0f;
        const float id = d ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            y[i].qs[j] = q_int8(roundf(x[i * QK + j] * id));
            sum += y[i].qs[j];
        }
        y[i].d = d;
        y[i].s = d * (float)sum;
    }
}

void clex_quantize_q4_0_ref(const float *x, void *vy, int64_t n) {
    block_q4_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) {
        const float *xb = x + i * QK;
        float amax = 0.0f, max = 0.0f;   /* the value of largest magnitude, sign kept */
        for (int j = 0; j < QK; j++) {
            if (amax < fabsf(xb[j])) { amax = fabsf(xb[j]); max = xb[j]; }
        }
        const float d = max / -8.0f;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = clex_fp32_to_fp16(d);
        for (int j = 0; j < QK / 2; j++) {
            int8_t a = q_int8(xb[j] * id + 8.5f);
            int8_t b = q_int8(xb[j + QK / 2] * id + 8.5f);
            uint8_t qa = (uint8_t)(a < 15 ? a : 15), qb = (uint8_t)(b < 15 ? b : 15);
            y[i].qs[j] = (uint8_t)(qa | (qb << 4));
        }
    }
}

void clex_quantize_q4_1_ref(const float *x, void *vy, int64_t n) {
    block_q4_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) {
        const float *xb = x + i * QK;
        float min = INFINITY, max = -INFINITY;
        for (int j = 0; j < QK; j++) {
            if (xb[j] < min) min = xb[j];
            if (xb[j] > max) max = xb[j];
        }
        const float d = (max - min) / 15.0f;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = clex_fp32_to_fp16(d);
        y[i].m = clex_fp32_to_fp16(min);
        for (int j = 0; j < QK / 2; j++) {
            int8_t a = q_int8((xb[j] - min) * id + 0.5f);
            int8_t b = q_int8((xb[j + QK / 2] - min) * id + 0.5f);
            uint8_t qa = (uint8_t)(a < 15 ? a : 15), qb = (uint8_t)(b < 15 ? b : 15);
            y[i].qs[j] = (uint8_t)(qa | (qb << 4));
        }
    }
}

static void quantize_f16(const float *x, void *vy, int64_t n) {
    clex_fp16 *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = clex_fp32_to_fp16(x[i]);
}
static void quantize_bf16(const float *x, void *vy, int64_t n) {
    clex_bf16 *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = clex_fp32_to_bf16(x[i]);
}
static void copy_f32(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * 4); }

/* ------------------------------------------------------------------ dequantizers */

static void dequant_q8_0(const void *vx, float *y, int64_t n) {
    const block_q8_0 *x = vx;
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = clex_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK; j++) y[i * QK + j] = d * (float)x[i].qs[j];
    }
}
static void dequant_q8_1(const void *vx, float *y, int64_t n) {
    const block_q8_1 *x = vx;
    for (int64_t i = 0; i < n / QK; i++)
        for (int j = 0; j < QK; j++) y[i * QK + j] = x[i].d * (float)x[i].qs[j];
}
static void dequant_q4_0(const void *vx, float *y, int64_t n) {
    const block_q4_0 *x = vx;
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = clex_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[i * QK + j] = d * (float)((x[i].qs[j] & 0x0F) - 8);
            y[i * QK + j + QK / 2] = d * (float)((x[i].qs[j] >> 4) - 8);
        }
    }
}
static void dequant_q4_1(const void *vx, float *y, int64_t n) {
    const block_q4_1 *x = vx;
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = clex_fp16_to_fp32(x[i].d), m = clex_fp16_to_fp32(x[i].m);
        for (int j = 0; j < QK / 2; j++) {
            y[i * QK + j] = d * (float)(x[i].qs[j] & 0x0F) + m;
            y[i * QK + j + QK / 2] = d * (float)(x[i].qs[j] >> 4) + m;
        }
    }
}
/* the fifth bits of a Q5 block: bit j is value j's (little-endian, whatever the host) */
static inline uint32_t q5_high_bits(const uint8_t qh[4]) {
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}
/* the 5-bit codes of value j and j + 16 */
static inline int q5_lo(const uint8_t *qs, uint32_t h, int j) { return (qs[j] & 0x0F) | (int)((h >> j) & 1) << 4; }
static inline int q5_hi(const uint8_t *qs, uint32_t h, int j) { return (qs[j] >> 4) | (int)((h >> (j + 16)) & 1) << 4; }

static void dequant_q5_0(const void *vx, float *y, int64_t n) {
    const block_q5_0 *x = vx;
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = clex_fp16_to_fp32(x[i].d);
        const uint32_t h = q5_high_bits(x[i].qh);
        for (int j = 0; j < QK / 2; j++) {
            y[i * QK + j] = d * (float)(q5_lo(x[i].qs, h, j) - 16);
            y[i * QK + j + QK / 2] = d * (float)(q5_hi(x[i].qs, h, j) - 16);
        }
    }
}
static void dequant_q5_1(const void *vx, float *y, int64_t n) {
    const block_q5_1 *x = vx;
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = clex_fp16_to_fp32(x[i].d), m = clex_fp16_to_fp32(x[i].m);
        const uint32_t h = q5_high_bits(x[i].qh);
        for (int j = 0; j < QK / 2; j++) {
            y[i * QK + j] = d * (float)q5_lo(x[i].qs, h, j) + m;
            y[i * QK + j + QK / 2] = d * (float)q5_hi(x[i].qs, h, j) + m;
        }
    }
}
static void dequant_f16(const void *vx, float *y, int64_t n) {
    const clex_fp16 *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = clex_fp16_to_fp32(x[i]);
}
static void dequant_bf16(const void *vx, float *y, int64_t n) {
    const clex_bf16 *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = clex_bf16_to_fp32(x[i]);
}
static void dequant_f32(const void *x, float *y, int64_t n) { memcpy(y, x, (size_t)n * 4); }

/* ------------------------------------------------------------------ generic dot products */

void clex_vec_dot_q8_0_q8_0_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const block_q8_0 *w = vw, *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        int acc = 0;
        for (int j = 0; j < QK; j++) acc += (int)w[i].qs[j] * (int)x[i].qs[j];
        sum += (float)acc * (clex_fp16_to_fp32(w[i].d) * clex_fp16_to_fp32(x[i].d));
    }
    *s = sum;
}

void clex_vec_dot_q4_0_q8_0_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const block_q4_0 *w = vw;
    const block_q8_0 *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        int acc = 0;
        for (int j = 0; j < QK / 2; j++) {
            acc += ((w[i].qs[j] & 0x0F) - 8) * x[i].qs[j];
            acc += ((w[i].qs[j] >> 4) - 8) * x[i].qs[j + QK / 2];
        }
        sum += (float)acc * (clex_fp16_to_fp32(w[i].d) * clex_fp16_to_fp32(x[i].d));
    }
    *s = sum;
}

void clex_vec_dot_q4_1_q8_1_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const block_q4_1 *w = vw;
    const block_q8_1 *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        int acc = 0;
        for (int j = 0; j < QK / 2; j++) {
            acc += (w[i].qs[j] & 0x0F) * x[i].qs[j];
            acc += (w[i].qs[j] >> 4) * x[i].qs[j + QK / 2];
        }
        sum += (float)acc * (clex_fp16_to_fp32(w[i].d) * x[i].d) + clex_fp16_to_fp32(w[i].m) * x[i].s;
    }
    *s = sum;
}

void clex_vec_dot_q5_0_q8_0_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const block_q5_0 *w = vw;
    const block_q8_0 *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        const uint32_t h = q5_high_bits(w[i].qh);
        int acc = 0;
        for (int j = 0; j < QK / 2; j++) {
            acc += (q5_lo(w[i].qs, h, j) - 16) * x[i].qs[j];
            acc += (q5_hi(w[i].qs, h, j) - 16) * x[i].qs[j + QK / 2];
        }
        sum += (float)acc * (clex_fp16_to_fp32(w[i].d) * clex_fp16_to_fp32(x[i].d));
    }
    *s = sum;
}

void clex_vec_dot_q5_1_q8_1_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const block_q5_1 *w = vw;
    const block_q8_1 *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        const uint32_t h = q5_high_bits(w[i].qh);
        int acc = 0;
        for (int j = 0; j < QK / 2; j++) {
            acc += q5_lo(w[i].qs, h, j) * x[i].qs[j];
            acc += q5_hi(w[i].qs, h, j) * x[i].qs[j + QK / 2];
        }
        sum += (float)acc * (clex_fp16_to_fp32(w[i].d) * x[i].d) + clex_fp16_to_fp32(w[i].m) * x[i].s;
    }
    *s = sum;
}

void clex_vec_dot_f32_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const float *w = vw, *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += w[i] * x[i];
    *s = sum;
}
void clex_vec_dot_f16_f32_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const clex_fp16 *w = vw;
    const float *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += clex_fp16_to_fp32(w[i]) * x[i];
    *s = sum;
}
void clex_vec_dot_bf16_f32_generic(int64_t n, float *s, const void *vw, const void *vx) {
    const clex_bf16 *w = vw;
    const float *x = vx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += clex_bf16_to_fp32(w[i]) * x[i];
    *s = sum;
}
void clex_axpy_f32_generic(int64_t n, float a, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* ------------------------------------------------------------------ traits */

/* A type whose format this build knows by size only: named, no conversion, not run. */
#define SIZE_ONLY(name, blck, bytes) {name, blck, bytes, -1, 0, NULL, NULL}

/* Sizes as ggml defines them (gguf-py's GGML_QUANT_SIZES; tests/test_kernels.py compares).
 * The from_float_ref of Q5_*, the K-quants and IQ4_* are kquantize.c's (llama-quantize's blocks). */
static const clex_type_traits g_traits[CLEX_TYPE_COUNT] = {
    [CLEX_TYPE_F32] = {"F32", 1, 4, CLEX_TYPE_F32, 1, dequant_f32, copy_f32},
    [CLEX_TYPE_F16] = {"F16", 1, 2, CLEX_TYPE_F32, 1, dequant_f16, quantize_f16},
    [CLEX_TYPE_Q4_0] = {"Q4_0", QK, sizeof(block_q4_0), CLEX_TYPE_Q8_0, 1, dequant_q4_0, clex_quantize_q4_0_ref},
    [CLEX_TYPE_Q4_1] = {"Q4_1", QK, sizeof(block_q4_1), CLEX_TYPE_Q8_1, 1, dequant_q4_1, clex_quantize_q4_1_ref},
    [CLEX_TYPE_Q5_0] = {"Q5_0", QK, sizeof(block_q5_0), CLEX_TYPE_Q8_0, 1, dequant_q5_0, clex_quantize_q5_0_ref},
    [CLEX_TYPE_Q5_1] = {"Q5_1", QK, sizeof(block_q5_1), CLEX_TYPE_Q8_1, 1, dequant_q5_1, clex_quantize_q5_1_ref},
    [CLEX_TYPE_Q8_0] = {"Q8_0", QK, sizeof(block_q8_0), CLEX_TYPE_Q8_0, 1, dequant_q8_0, clex_quantize_q8_0_ref},
    [CLEX_TYPE_Q8_1] = {"Q8_1", QK, sizeof(block_q8_1), CLEX_TYPE_Q8_1, 0, dequant_q8_1, clex_quantize_q8_1_ref},
    [CLEX_TYPE_Q2_K] = {"Q2_K", QK_K, sizeof(block_q2_K), CLEX_TYPE_Q8_K, 1, clex_dequant_q2_K, clex_quantize_q2_K_ref},
    [CLEX_TYPE_Q3_K] = {"Q3_K", QK_K, sizeof(block_q3_K), CLEX_TYPE_Q8_K, 1, clex_dequant_q3_K, clex_quantize_q3_K_ref},
    [CLEX_TYPE_Q4_K] = {"Q4_K", QK_K, sizeof(block_q4_K), CLEX_TYPE_Q8_K, 1, clex_dequant_q4_K, clex_quantize_q4_K_ref},
    [CLEX_TYPE_Q5_K] = {"Q5_K", QK_K, sizeof(block_q5_K), CLEX_TYPE_Q8_K, 1, clex_dequant_q5_K, clex_quantize_q5_K_ref},
    [CLEX_TYPE_Q6_K] = {"Q6_K", QK_K, sizeof(block_q6_K), CLEX_TYPE_Q8_K, 1, clex_dequant_q6_K, clex_quantize_q6_K_ref},
    [CLEX_TYPE_Q8_K] = {"Q8_K", QK_K, sizeof(block_q8_K), CLEX_TYPE_Q8_K, 0, clex_dequant_q8_K, clex_quantize_q8_K_ref},
    [CLEX_TYPE_IQ2_XXS] = SIZE_ONLY("IQ2_XXS", 256, 66),
    [CLEX_TYPE_IQ2_XS] = SIZE_ONLY("IQ2_XS", 256, 74),
    [CLEX_TYPE_IQ3_XXS] = SIZE_ONLY("IQ3_XXS", 256, 98),
    [CLEX_TYPE_IQ1_S] = SIZE_ONLY("IQ1_S", 256, 50),
    [CLEX_TYPE_IQ4_NL] = {"IQ4_NL", QK, sizeof(block_iq4_nl), CLEX_TYPE_Q8_0, 1, clex_dequant_iq4_nl, clex_quantize_iq4_nl_ref},
    [CLEX_TYPE_IQ3_S] = SIZE_ONLY("IQ3_S", 256, 110),
    [CLEX_TYPE_IQ2_S] = SIZE_ONLY("IQ2_S", 256, 82),
    [CLEX_TYPE_IQ4_XS] = {"IQ4_XS", QK_K, sizeof(block_iq4_xs), CLEX_TYPE_Q8_K, 1, clex_dequant_iq4_xs, clex_quantize_iq4_xs_ref},
    [CLEX_TYPE_I8] = SIZE_ONLY("I8", 1, 1),
    [CLEX_TYPE_I16] = SIZE_ONLY("I16", 1, 2),
    [CLEX_TYPE_I32] = SIZE_ONLY("I32", 1, 4),
    [CLEX_TYPE_I64] = SIZE_ONLY("I64", 1, 8),
    [CLEX_TYPE_F64] = SIZE_ONLY("F64", 1, 8),
    [CLEX_TYPE_IQ1_M] = SIZE_ONLY("IQ1_M", 256, 56),
    [CLEX_TYPE_BF16] = {"BF16", 1, 2, CLEX_TYPE_F32, 1, dequant_bf16, quantize_bf16},
    [CLEX_TYPE_TQ1_0] = SIZE_ONLY("TQ1_0", 256, 54),
    [CLEX_TYPE_TQ2_0] = SIZE_ONLY("TQ2_0", 256, 66),
    [CLEX_TYPE_MXFP4] = SIZE_ONLY("MXFP4", 32, 17),
    [CLEX_TYPE_NVFP4] = SIZE_ONLY("NVFP4", 64, 36),
    [CLEX_TYPE_Q1_0] = SIZE_ONLY("Q1_0", 128, 18),
};

const clex_type_traits *clex_traits(int32_t type) {
    if (type < 0 || type >= CLEX_TYPE_COUNT || g_traits[type].name == NULL) return NULL;
    return &g_traits[type];
}

/* ------------------------------------------------------------------ public type API */

const char *clex_type_name(int32_t type) {
    const clex_type_traits *t = clex_traits(type);
    return t ? t->name : NULL;
}
int clex_type_supported(int32_t type) {
    const clex_type_traits *t = clex_traits(type);
    return t && t->weight_ok;
}
int64_t clex_type_block_size(int32_t type) {
    const clex_type_traits *t = clex_traits(type);
    return t ? t->blck : 0;
}
int64_t clex_type_block_bytes(int32_t type) {
    const clex_type_traits *t = clex_traits(type);
    return t ? t->bytes : 0;
}
int32_t clex_type_vec_dot_type(int32_t type) {
    const clex_type_traits *t = clex_traits(type);
    return t ? t->vec_dot_type : -1;
}

static char g_weight_types[256];
static pthread_once_t g_weight_types_once = PTHREAD_ONCE_INIT;

static void list_weight_types(void) {
    for (int32_t t = 0; t < CLEX_TYPE_COUNT; t++) {
        if (!clex_type_supported(t)) continue;
        const size_t used = strlen(g_weight_types);
        snprintf(g_weight_types + used, sizeof g_weight_types - used, "%s%s", used ? ", " : "", g_traits[t].name);
    }
}

const char *clex_supported_weight_types(void) {
    pthread_once(&g_weight_types_once, list_weight_types);
    return g_weight_types;
}

/* A row of n elements of a known type (t = its traits) that has the conversion asked for
 * (have; what names it) must be a whole number of blocks. */
static int check_row(int32_t type, const clex_type_traits *t, int64_t n, int have, const char *what) {
    if (!t) return clex_fail(CLEX_E_UNSUPPORTED, "unknown tensor type id %d", (int)type);
    if (!have) return clex_fail(CLEX_E_UNSUPPORTED, "type %s has no %s in this build", t->name, what);
    if (n < 0 || n % t->blck)
        return clex_fail(CLEX_E_INVALID, "%lld elements is not a whole number of %s blocks of %lld",
                         (long long)n, t->name, (long long)t->blck);
    return CLEX_OK;
}

int clex_quantize_row(int32_t type, const float *src, void *dst, int64_t n) {
    const clex_type_traits *t = clex_traits(type);
    const int rc = check_row(type, t, n, t && t->from_float_ref, "quantizer");
    if (rc) return rc;
    t->from_float_ref(src, dst, n);
    return CLEX_OK;
}

/* the activation conversion the kernels use; the reference for a type that has none */
int clex_quantize_act(int32_t type, const float *src, void *dst, int64_t n) {
    clex_init_once();
    const clex_type_traits *t = clex_traits(type);
    clex_from_float_fn fn = t ? clex_k.from_float[type] : NULL;
    if (t && !fn) fn = t->from_float_ref;
    const int rc = check_row(type, t, n, fn != NULL, "quantizer");
    if (rc) return rc;
    fn(src, dst, n);
    return CLEX_OK;
}

int clex_dequantize_row(int32_t type, const void *src, float *dst, int64_t n) {
    const clex_type_traits *t = clex_traits(type);
    const int rc = check_row(type, t, n, t && t->to_float, "dequantizer");
    if (rc) return rc;
    t->to_float(src, dst, n);
    return CLEX_OK;
}

int clex_ffn_act(int32_t kind, int64_t n, float *g, const float *u) {
    clex_init_once();
    if (kind < CLEX_FFN_SWIGLU || kind > CLEX_FFN_GELU || n < 0 || !g || (kind != CLEX_FFN_GELU && !u))
        return clex_fail(CLEX_E_INVALID, "clex_ffn_act: bad arguments (kind %d, n %lld)", (int)kind, (long long)n);
    clex_k.act(kind, n, g, u);
    return CLEX_OK;
}

int clex_vec_dot(int32_t type, int64_t n, const void *w, const void *act, float *out) {
    clex_init_once();
    const clex_type_traits *t = clex_traits(type);
    const clex_vec_dot_fn fn = t ? clex_k.vec_dot[type] : NULL;
    const int rc = check_row(type, t, n, fn != NULL, "dot product");
    if (rc) return rc;
    fn(n, out, w, act);
    return CLEX_OK;
}

int clex_vec_dot4w(int32_t type, int64_t n, const void *w, size_t wstride, const void *act, float *out) {
    clex_init_once();
    const clex_type_traits *t = clex_traits(type);
    const clex_vec_dot4w_fn fn = t ? clex_k.vec_dot4w[type] : NULL;
    const int rc = check_row(type, t, n, fn != NULL, "four-weight-row dot product");
    if (rc) return rc;
    fn(n, out, w, wstride, act);
    return CLEX_OK;
}
