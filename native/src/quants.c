/* Tensor types: the reference (scalar) quantizers and dot products that define every result,
 * the traits table, and the choice of SIMD kernels at run time. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#ifdef CLEX_X86
#include <cpuid.h>
#endif

/* ------------------------------------------------------------------ errors */

static _Thread_local char g_err[512];

int clex_fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return code;
}

const char *clex_last_error(void) { return g_err; }
int clex_abi_version(void) { return CLEX_ABI_VERSION; }

/* ------------------------------------------------------------------ half precision */

float clex_fp16_to_fp32(clex_fp16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
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

clex_fp16 clex_fp32_to_fp16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t abs = u & 0x7FFFFFFF;
    if (abs > 0x7F800000) return (clex_fp16)(sign | 0x7E00 | ((abs >> 13) & 0x3FF)); /* nan, quiet */
    if (abs >= 0x477FF000) {   /* rounds to >= 65520 -> inf (exactly: >= 65520.0f) */
        return (clex_fp16)(sign | 0x7C00);
    }
    if (abs < 0x38800000) {    /* below the smallest normal half: subnormal or zero */
        if (abs < 0x33000000) return (clex_fp16)sign;   /* < 2^-25: rounds to zero */
        uint32_t e = abs >> 23;
        uint32_t m = (abs & 0x7FFFFF) | 0x800000;
        uint32_t shift = 126 - e;                        /* 14..24 */
        /* value = m * 2^(e-150); half subnormal unit = 2^-24 -> q = m * 2^(e-126) */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (clex_fp16)(sign | q);
    }
    /* normal */
    uint32_t e = (abs >> 23) - 112;
    uint32_t m = abs & 0x7FFFFF;
    uint32_t h = (e << 10) | (m >> 13);
    uint32_t rem = m & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;  /* may carry into the exponent: fine */
    return (clex_fp16)(sign | h);
}

clex_bf16 clex_fp32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFF) > 0x7F800000) return (clex_bf16)((u >> 16) | 0x40);   /* quiet nan */
    u += 0x7FFF + ((u >> 16) & 1);
    return (clex_bf16)(u >> 16);
}

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
float clex_dot_f32_generic(int64_t n, const float *a, const float *b) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}
void clex_axpy_f32_generic(int64_t n, float a, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* ------------------------------------------------------------------ traits + dispatch */

enum { N_TYPES = 31 };
static clex_type_traits g_traits[N_TYPES];
clex_f32_ops clex_ops;
static int g_isa = CLEX_ISA_SCALAR;
static pthread_mutex_t g_isa_lock = PTHREAD_MUTEX_INITIALIZER;

static void set_traits(void) {
    g_traits[CLEX_TYPE_F32] = (clex_type_traits){"F32", 1, 4, CLEX_TYPE_F32, 1, dequant_f32,
        copy_f32, copy_f32, clex_vec_dot_f32_generic, NULL};
    g_traits[CLEX_TYPE_F16] = (clex_type_traits){"F16", 1, 2, CLEX_TYPE_F32, 1, dequant_f16,
        quantize_f16, quantize_f16, clex_vec_dot_f16_f32_generic, NULL};
    g_traits[CLEX_TYPE_BF16] = (clex_type_traits){"BF16", 1, 2, CLEX_TYPE_F32, 1, dequant_bf16,
        quantize_bf16, quantize_bf16, clex_vec_dot_bf16_f32_generic, NULL};
    g_traits[CLEX_TYPE_Q8_0] = (clex_type_traits){"Q8_0", QK, sizeof(block_q8_0), CLEX_TYPE_Q8_0, 1,
        dequant_q8_0, clex_quantize_q8_0_ref, clex_quantize_q8_0_ref, clex_vec_dot_q8_0_q8_0_generic, NULL};
    g_traits[CLEX_TYPE_Q8_1] = (clex_type_traits){"Q8_1", QK, sizeof(block_q8_1), CLEX_TYPE_Q8_1, 0,
        dequant_q8_1, clex_quantize_q8_1_ref, clex_quantize_q8_1_ref, NULL, NULL};
    g_traits[CLEX_TYPE_Q4_0] = (clex_type_traits){"Q4_0", QK, sizeof(block_q4_0), CLEX_TYPE_Q8_0, 1,
        dequant_q4_0, clex_quantize_q4_0_ref, clex_quantize_q4_0_ref, clex_vec_dot_q4_0_q8_0_generic, NULL};
    g_traits[CLEX_TYPE_Q4_1] = (clex_type_traits){"Q4_1", QK, sizeof(block_q4_1), CLEX_TYPE_Q8_1, 1,
        dequant_q4_1, clex_quantize_q4_1_ref, clex_quantize_q4_1_ref, clex_vec_dot_q4_1_q8_1_generic, NULL};
}

static void apply_isa(int isa) {
    clex_kernel_set k = {
        .q8_0 = clex_vec_dot_q8_0_q8_0_generic, .q4_0 = clex_vec_dot_q4_0_q8_0_generic,
        .q4_1 = clex_vec_dot_q4_1_q8_1_generic, .f32 = clex_vec_dot_f32_generic,
        .f16 = clex_vec_dot_f16_f32_generic, .bf16 = clex_vec_dot_bf16_f32_generic,
        .quant_q8_0 = clex_quantize_q8_0_ref, .quant_q8_1 = clex_quantize_q8_1_ref,
        .dot_f32 = clex_dot_f32_generic, .axpy_f32 = clex_axpy_f32_generic,
        .scores32 = clex_scores32_generic, .scores16 = clex_scores16_generic,
        .wsum32 = clex_wsum32_generic, .wsum16 = clex_wsum16_generic,
        .to_f16 = clex_to_f16_generic, .from_f16 = clex_from_f16_generic,
    };
#ifdef CLEX_X86
    if (isa >= CLEX_ISA_AVX2 && isa <= CLEX_ISA_AVX512) clex_kernels_avx2(&k);
    if (isa == CLEX_ISA_AVX512) clex_kernels_avx512(&k);
#endif
#ifdef CLEX_NEON
    if (isa == CLEX_ISA_NEON) clex_kernels_neon(&k);
#endif
    g_traits[CLEX_TYPE_Q8_0].vec_dot = k.q8_0;
    g_traits[CLEX_TYPE_Q4_0].vec_dot = k.q4_0;
    g_traits[CLEX_TYPE_Q4_1].vec_dot = k.q4_1;
    g_traits[CLEX_TYPE_Q4_1].vec_dot4 = k.q4_1_x4;
    g_traits[CLEX_TYPE_Q8_0].vec_dot4 = k.q8_0_x4;
    g_traits[CLEX_TYPE_Q4_0].vec_dot4 = k.q4_0_x4;
    g_traits[CLEX_TYPE_F32].vec_dot = k.f32;
    g_traits[CLEX_TYPE_F16].vec_dot = k.f16;
    g_traits[CLEX_TYPE_BF16].vec_dot = k.bf16;
    g_traits[CLEX_TYPE_Q8_0].from_float = k.quant_q8_0;
    g_traits[CLEX_TYPE_Q8_1].from_float = k.quant_q8_1;
    clex_ops = (clex_f32_ops){k.dot_f32, k.axpy_f32, k.scores32, k.scores16, k.wsum32, k.wsum16, k.to_f16, k.from_f16};
    g_isa = isa;
}

#ifdef CLEX_X86
/* CPUID.1:ECX.F16C directly: clang before 15 has no "f16c" in __builtin_cpu_supports. */
static int cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

int clex_isa_supported(int isa) {
    switch (isa) {
    case CLEX_ISA_SCALAR: return 1;
#ifdef CLEX_X86
    case CLEX_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    case CLEX_ISA_AVX512:
        return clex_isa_supported(CLEX_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq");
#endif
#ifdef CLEX_NEON
    case CLEX_ISA_NEON: return 1;
#endif
    default: return 0;
    }
}

static int best_isa(void) {
    static const int order[] = {CLEX_ISA_AVX512, CLEX_ISA_AVX2, CLEX_ISA_NEON};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (clex_isa_supported(order[i])) return order[i];
    return CLEX_ISA_SCALAR;
}

static const char *const g_isa_names[] = {"scalar", "avx2", "avx512", "neon"};

const char *clex_isa_name(int isa) {
    return (isa >= 0 && isa <= CLEX_ISA_NEON) ? g_isa_names[isa] : "unknown";
}

static void init_impl(void) {
    set_traits();
    int isa = best_isa();
    const char *env = getenv("CLEXRT_ISA");
    const char *force = getenv("CLEXRT_FORCE_SCALAR");
    if (force && *force && strcmp(force, "0") != 0) isa = CLEX_ISA_SCALAR;
    else if (env && *env) {
        for (int i = 0; i <= CLEX_ISA_NEON; i++)
            if (strcmp(env, g_isa_names[i]) == 0 && clex_isa_supported(i)) isa = i;
    }
    apply_isa(isa);
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
void clex_init_once(void) { pthread_once(&g_once, init_impl); }

int clex_isa(void) {
    clex_init_once();
    return g_isa;
}

int clex_set_isa(int isa) {
    clex_init_once();
    if (!clex_isa_supported(isa))
        return clex_fail(CLEX_E_UNSUPPORTED, "instruction set '%s' is not supported by this CPU or build",
                         clex_isa_name(isa));
    pthread_mutex_lock(&g_isa_lock);
    apply_isa(isa);
    pthread_mutex_unlock(&g_isa_lock);
    return CLEX_OK;
}

const clex_type_traits *clex_traits(int32_t type) {
    clex_init_once();
    if (type < 0 || type >= N_TYPES || g_traits[type].name == NULL) return NULL;
    return &g_traits[type];
}

int clex_physical_cores(void) {
    /* distinct (physical id, core id) pairs in /proc/cpuinfo; else the online CPU count */
    int n = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[256];
        int phys = 0, seen[1024][2], ns = 0;
        while (fgets(line, sizeof line, f)) {
            int v;
            if (sscanf(line, "physical id : %d", &v) == 1) phys = v;
            else if (sscanf(line, "core id : %d", &v) == 1) {
                int dup = 0;
                for (int i = 0; i < ns; i++) dup |= (seen[i][0] == phys && seen[i][1] == v);
                if (!dup && ns < 1024) { seen[ns][0] = phys; seen[ns][1] = v; ns++; }
            }
        }
        fclose(f);
        n = ns;
    }
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    return n;
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

static int check_row(int32_t type, int64_t n, const clex_type_traits **out) {
    const clex_type_traits *t = clex_traits(type);
    if (!t) return clex_fail(CLEX_E_UNSUPPORTED, "unknown tensor type id %d", (int)type);
    if (n < 0 || n % t->blck)
        return clex_fail(CLEX_E_INVALID, "%lld elements is not a whole number of %s blocks of %lld",
                         (long long)n, t->name, (long long)t->blck);
    *out = t;
    return CLEX_OK;
}

int clex_quantize_row(int32_t type, const float *src, void *dst, int64_t n) {
    const clex_type_traits *t;
    int rc = check_row(type, n, &t);
    if (rc) return rc;
    t->from_float_ref(src, dst, n);
    return CLEX_OK;
}

int clex_quantize_act(int32_t type, const float *src, void *dst, int64_t n) {
    const clex_type_traits *t;
    int rc = check_row(type, n, &t);
    if (rc) return rc;
    t->from_float(src, dst, n);
    return CLEX_OK;
}

int clex_dequantize_row(int32_t type, const void *src, float *dst, int64_t n) {
    const clex_type_traits *t;
    int rc = check_row(type, n, &t);
    if (rc) return rc;
    t->to_float(src, dst, n);
    return CLEX_OK;
}

int clex_vec_dot(int32_t type, int64_t n, const void *w, const void *act, float *out) {
    const clex_type_traits *t;
    int rc = check_row(type, n, &t);
    if (rc) return rc;
    if (!t->vec_dot) return clex_fail(CLEX_E_UNSUPPORTED, "type %s has no dot product (activation-only)", t->name);
    t->vec_dot(n, out, w, act);
    return CLEX_OK;
}
