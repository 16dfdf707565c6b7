/* The library's frame: errors, the ABI version, the CPU (instruction sets, physical cores), the
 * one-time initialisation, and the kernel dispatch table: the scalar set, the selected set
 * (clex_k) and the one step that lays an arch file's set over it. */
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

/* ------------------------------------------------------------------ errors, ABI */

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

/* ------------------------------------------------------------------ dispatch table */

/* The specification: every slot the forward pass calls. */
/* GELU, the tanh approximation (GPT-2's, Gemma's gelu_pytorch_tanh, Phi-2's gelu_new) */
static inline float gelu(float x) {
    const float k = 0.7978845608028654f;   /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

void clex_act_generic(int32_t kind, int64_t n, float *g, const float *u) {
    switch (kind) {
    case CLEX_FFN_GEGLU:
        for (int64_t r = 0; r < n; r++) g[r] = gelu(g[r]) * u[r];
        break;
    case CLEX_FFN_GELU:
        for (int64_t r = 0; r < n; r++) g[r] = gelu(g[r]);
        break;
    case CLEX_FFN_SWIGLU:
    default:
        for (int64_t r = 0; r < n; r++) g[r] = g[r] / (1.0f + expf(-g[r])) * u[r];
        break;
    }
}

const clex_kernels clex_kernels_scalar = {
    .vec_dot = {
        [CLEX_TYPE_F32] = clex_vec_dot_f32_generic,
        [CLEX_TYPE_F16] = clex_vec_dot_f16_f32_generic,
        [CLEX_TYPE_BF16] = clex_vec_dot_bf16_f32_generic,
        [CLEX_TYPE_Q8_0] = clex_vec_dot_q8_0_q8_0_generic,
        [CLEX_TYPE_Q4_0] = clex_vec_dot_q4_0_q8_0_generic,
        [CLEX_TYPE_Q4_1] = clex_vec_dot_q4_1_q8_1_generic,
        [CLEX_TYPE_Q5_0] = clex_vec_dot_q5_0_q8_0_generic,
        [CLEX_TYPE_Q5_1] = clex_vec_dot_q5_1_q8_1_generic,
        [CLEX_TYPE_Q2_K] = clex_vec_dot_q2_K_q8_K_generic,
        [CLEX_TYPE_Q3_K] = clex_vec_dot_q3_K_q8_K_generic,
        [CLEX_TYPE_Q4_K] = clex_vec_dot_q4_K_q8_K_generic,
        [CLEX_TYPE_Q5_K] = clex_vec_dot_q5_K_q8_K_generic,
        [CLEX_TYPE_Q6_K] = clex_vec_dot_q6_K_q8_K_generic,
        [CLEX_TYPE_IQ4_NL] = clex_vec_dot_iq4_nl_q8_0_generic,
        [CLEX_TYPE_IQ4_XS] = clex_vec_dot_iq4_xs_q8_K_generic,
    },
    .from_float = {
        [CLEX_TYPE_Q8_0] = clex_quantize_q8_0_ref,
        [CLEX_TYPE_Q8_1] = clex_quantize_q8_1_ref,
        [CLEX_TYPE_Q8_K] = clex_quantize_q8_K_ref,
    },
    .axpy_f32 = clex_axpy_f32_generic,
    .scores32 = clex_scores32_generic,
    .scores16 = clex_scores16_generic,
    .wsum32 = clex_wsum32_generic,
    .wsum16 = clex_wsum16_generic,
    .to_f16 = clex_to_f16_generic,
    .from_f16 = clex_from_f16_generic,
    .act = clex_act_generic,
    .scores_q8 = clex_scores_q8_generic,
    .wsum_q8 = clex_wsum_q8_generic,
};

clex_kernels clex_k;

/* The four-weight-row kernels share one activation row's loads among four weight rows, and read
 * the four rows side by side. On the 2-core Xeon VM they were written on that paid (the Q8_0 one,
 * which did not, was left out). On a 2-core AMD EPYC (Zen 4) VM it does not: decoding the 1.1B
 * synthetic model, 2 threads, one row at a time against four (`CLEXRT_DECODE_ROWS4=0|1 clexrt
 * bench -p 0 -n 32`, interleaved): Q4_K_M 29.4 and 31.1 t/s against 19.3 and 18.6, Q6_K 26.8-29.2
 * against 15.1-17.2, Q4_0 25.2 and 26.4 against 20.3 and 22.3; AVX2 the same. In cache the four-row
 * kernels are still the faster (make kbench 0.5), from memory (kbench 64) they are 0.24-0.35x, so
 * the side-by-side streams are what that CPU's prefetching handles badly. Hence: four rows on
 * CPUs other than AMD's, one row on AMD's, and CLEXRT_DECODE_ROWS4=0 or 1 to decide otherwise. The
 * sums are the same bits either way (tests/test_dot4w.py). */
int clex_decode_rows4 = 1;

static void choose_decode_rows4(void) {
    const char *env = getenv("CLEXRT_DECODE_ROWS4");
    if (env && (strcmp(env, "0") == 0 || strcmp(env, "1") == 0)) {
        clex_decode_rows4 = env[0] == '1';
        return;
    }
#ifdef CLEX_X86
    clex_decode_rows4 = !__builtin_cpu_is("amd");
#endif
}

void clex_kernels_install(clex_kernels *dst, const clex_kernels *src) {
    for (int t = 0; t < CLEX_TYPE_COUNT; t++) {
        if (src->vec_dot[t]) dst->vec_dot[t] = src->vec_dot[t];
        if (src->vec_dot4[t]) dst->vec_dot4[t] = src->vec_dot4[t];
        if (src->vec_dot4w[t] || src->vec_dot[t]) dst->vec_dot4w[t] = src->vec_dot4w[t];
        if (src->from_float[t]) dst->from_float[t] = src->from_float[t];
    }
#define INSTALL(type, name) if (src->name) dst->name = src->name;
    CLEX_KERNEL_SLOTS(INSTALL)
#undef INSTALL
}

/* ------------------------------------------------------------------ instruction sets */

static int g_isa = CLEX_ISA_SCALAR;
static pthread_mutex_t g_isa_lock = PTHREAD_MUTEX_INITIALIZER;

static void apply_isa(int isa) {
    clex_kernels k = clex_kernels_scalar;
#ifdef CLEX_X86
    if (isa == CLEX_ISA_AVX2 || isa == CLEX_ISA_AVX512) {
        clex_kernels_install(&k, clex_kernels_avx2());
        clex_kernels_install(&k, clex_kernels_avx2_attn());
        clex_kernels_install(&k, clex_kernels_avx2_dot4w());
    }
    if (isa == CLEX_ISA_AVX512) {
        clex_kernels_install(&k, clex_kernels_avx512());
        clex_kernels_install(&k, clex_kernels_avx512_attn());
        clex_kernels_install(&k, clex_kernels_avx512_dot4w());
    }
#endif
#ifdef CLEX_NEON
    if (isa == CLEX_ISA_NEON) clex_kernels_install(&k, clex_kernels_neon());
#endif
    clex_k = k;
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

/* the best instruction set, unless CLEXRT_FORCE_SCALAR or CLEXRT_ISA says otherwise */
static void init_impl(void) {
    int isa = best_isa();
    const char *env = getenv("CLEXRT_ISA");
    const char *force = getenv("CLEXRT_FORCE_SCALAR");
    if (force && *force && strcmp(force, "0") != 0) isa = CLEX_ISA_SCALAR;
    else if (env && *env) {
        for (int i = 0; i <= CLEX_ISA_NEON; i++)
            if (strcmp(env, g_isa_names[i]) == 0 && clex_isa_supported(i)) isa = i;
    }
    choose_decode_rows4();
    apply_isa(isa);
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
void clex_init_once(void) { pthread_once(&g_once, init_impl); }

int clex_decode_rows(void) {
    clex_init_once();
    return clex_decode_rows4 ? 4 : 1;
}

int clex_set_decode_rows(int rows) {
    clex_init_once();
    if (rows != 1 && rows != 4) return clex_fail(CLEX_E_INVALID, "decode rows must be 1 or 4, not %d", rows);
    clex_decode_rows4 = rows == 4;
    return CLEX_OK;
}

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

/* ------------------------------------------------------------------ physical cores */

/* distinct (physical id, core id) pairs in /proc/cpuinfo; 0 if it cannot be read */
static int cpuinfo_cores(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return 0;
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
    return ns;
}

int clex_physical_cores(void) {
    int n = cpuinfo_cores();
    if (n <= 0) {   /* else the online CPU count */
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    return n;
}
