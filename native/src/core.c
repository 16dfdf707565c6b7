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
 * the four rows side by side. On the 2-core Xeon VM they were written on that paid at every row
 * length (the Q8_0 one, which did not, was left out). On a 2-core AMD EPYC (Zen 4) VM it pays only
 * for short rows. Decoding the 1.1B synthetic model (rows of 2048 values: 1152 bytes of Q4_0), 2
 * threads, clexrt bench -p 0 -n 32 interleaved, one row at a time against four: Q4_K_M 29.4 and
 * 31.1 t/s against 19.3 and 18.6, Q6_K 26.8-29.2 against 15.1-17.2, Q4_0 25.2 and 26.4 against 20.3
 * and 22.3; AVX2 alike. A 256 MiB product, one token, 2 threads (GB/s, one row / four): Q4_0 9.4 /
 * 22.2 at 324-byte rows, 15.6 / 13.5 at 576, 11.3 / 9.2 at 864; Q5_0 7.5 / 18.5 at 396, 12.3 / 12.5
 * at 704, 12.7 / 8.8 at 1056. In cache the four-row kernels are faster at every length (make kbench
 * 0.5), so it is the four side-by-side streams of long rows that this CPU's prefetching handles
 * badly; a short row's call costs more than that. Hence: four rows at every length on CPUs other
 * than AMD's, on AMD's only for rows of at most 512 bytes (SmolLM2's 576-wide Q5_0 and Q4_0
 * rows), and CLEXRT_DECODE_ROWS4_MAX=<bytes> (-1: every row, 0: none) to decide otherwise. The
 * sums are the same bits either way (tests/test_dot4w.py). */
#define ROWS4_SHORT_AMD 512
int64_t clex_decode_rows4_max = -1;

/* Decoding's software prefetch of the weights (matmul.c): 4096 bytes ahead paid on the Xeon VM. On
 * the EPYC VM it costs: the 1.1B synthetic model, 2 threads, clexrt bench -p 0 -n 32 (-n 64),
 * interleaved, without against with: Q8_0 31.6 and 33.7 t/s against 20.9 and 19.7, Q6_K 37.5 and
 * 30.6 against 27.5 and 26.3, Q4_K_M 38.4 and 39.0 against 34.6 and 34.6, Q4_0 26.0 and 29.9
 * against 27.7 and 26.9 (about even). So none on AMD's CPUs; CLEXRT_DECODE_PREFETCH=<bytes>
 * (0: none) decides otherwise.
 *
 * On a later 2-core Xeon VM (AVX-512 with AMX, 2026-12-03) 4096 bytes ahead cost the 1.1B model's
 * long rows: clexrt bench -p 0 -n 32 -t 2 -r 2, two interleaved rounds, t/s at 4096 / 1024 / 512 /
 * 0 bytes: Q8_0 (2176-byte rows and longer) 13.6, 12.9 / 19.0, 19.5 / 19.5, 18.5 / 17.8, 18.1;
 * Q6_K 21.1, 20.5 / 21.5, 21.9 / 22.5, 21.5 / 20.2, 20.6; Q4_K_M 26.2, 26.5 / 25.9, 26.9 / 26.9,
 * 26.7 / 25.7, 25.0; while SmolLM2 Q4_1 (rows of 360 and 960 bytes), tg128, wants the long reach:
 * 205, 209 / 179, 172 / 159, 153 / 116, 131. So rows of more than CLEX_DECODE_PREFETCH_SHORT_ROW
 * (clexrt.h) bytes look
 * PREFETCH_AHEAD_LONG ahead, shorter ones PREFETCH_AHEAD; CLEXRT_DECODE_PREFETCH=<bytes> sets both
 * distances, CLEXRT_DECODE_PREFETCH_LONG=<bytes> then the long rows' alone. */
#define PREFETCH_AHEAD 4096
#define PREFETCH_AHEAD_LONG 1024
int64_t clex_decode_prefetch = PREFETCH_AHEAD;
int64_t clex_decode_prefetch_long = PREFETCH_AHEAD_LONG;

/* On the same Xeon VM perf put about half of the 1.1B model's decoding on the prefetch
 * instructions themselves, waiting for a free fill buffer: one software request per cache line
 * was as many requests as the core can keep in flight. Asking only for the first 512 bytes of
 * each 4 KiB page in the reach, and leaving the rest of the page to the hardware prefetchers (which
 * stop at a page's edge), paid on every long-row type: clexrt bench -p 0 -n 32 -t 2 -r 2, two
 * interleaved rounds, t/s every line / a page's first 512 bytes: Q4_0 33.2, 33.6 / 36.4, 36.6;
 * Q4_1 29.5, 27.5 / 33.6, 33.5; Q8_0 21.0, 20.3 / 23.2, 23.5; Q4_K_M 30.5, 31.0 / 34.5, 33.7;
 * Q6_K 24.7, 24.3 / 25.7, 25.6; a page's first 256, 1024 or 2048 bytes 35.4-35.5, 34.4-35.7 and
 * 33.3-35.2 on Q4_0. SmolLM2's short rows lost (200, 216 / 191, 206), so they ask for every line.
 * CLEXRT_DECODE_PREFETCH_PAGE=<bytes> (0: every line) sets the long rows' share of a page. */
#define PREFETCH_PAGE_LONG 512
int64_t clex_decode_prefetch_page = PREFETCH_PAGE_LONG;

/* Which four rows a four-row call takes. On the Xeon VM with AMX (2026-12-03) four neighbouring
 * rows streamed badly even with the prefetch, and rows a quarter of a thread's share apart (four
 * streams tens of KiB apart) well: the 1.1B synthetic model, 2 threads, clexrt bench -p 0 -n 32
 * -r 2, two interleaved rounds, t/s neighbours / quarters: Q4_0 28.5, 27.7 / 34.5, 35.1; Q4_K_M
 * 28.0, 26.3 / 33.0, 31.5; Q6_K 21.2, 20.9 / 24.0, 24.5; Q5_K_M 22.9, 21.7 / 27.2, 26.4; and Q8_0,
 * whose four-row kernel lost as neighbours (13.2, 13.0 against one row's 14.0, 13.8), 16.9, 16.8.
 * On the EPYC VM (Zen 4) quarters lost (docs/performance.md: Q4_K_M 39.0 / 34.5, Q6_K 32.7 /
 * 27.4, Q8_0 30.0 / 25.9 t/s), so there neighbours, as before. CLEXRT_DECODE_QUARTERS=0|1
 * decides otherwise. */
int clex_decode_quarters_on = 1;

/* the environment variable's integer value, when it is one >= lo */
static int env_int(const char *name, long long lo, int64_t *out) {
    const char *env = getenv(name);
    if (!env || !*env) return 0;
    char *end;
    const long long v = strtoll(env, &end, 10);
    if (*end != '\0' || v < lo) return 0;
    *out = v;
    return 1;
}

static void choose_decode_policy(void) {
    int amd = 0;
#ifdef CLEX_X86
    amd = __builtin_cpu_is("amd");
#endif
    if (!env_int("CLEXRT_DECODE_ROWS4_MAX", -1, &clex_decode_rows4_max) && amd)
        clex_decode_rows4_max = ROWS4_SHORT_AMD;
    if (env_int("CLEXRT_DECODE_PREFETCH", 0, &clex_decode_prefetch)) clex_decode_prefetch_long = clex_decode_prefetch;
    else if (amd) clex_decode_prefetch = clex_decode_prefetch_long = 0;
    env_int("CLEXRT_DECODE_PREFETCH_LONG", 0, &clex_decode_prefetch_long);
    env_int("CLEXRT_DECODE_PREFETCH_PAGE", 0, &clex_decode_prefetch_page);
    int64_t quarters;
    if (env_int("CLEXRT_DECODE_QUARTERS", 0, &quarters) && quarters <= 1) clex_decode_quarters_on = (int)quarters;
    else if (amd) clex_decode_quarters_on = 0;
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
    choose_decode_policy();
    apply_isa(isa);
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
void clex_init_once(void) { pthread_once(&g_once, init_impl); }

int64_t clex_decode_rows4_bytes(void) {
    clex_init_once();
    return clex_decode_rows4_max;
}

int clex_set_decode_rows4_bytes(int64_t max_bytes) {
    clex_init_once();
    if (max_bytes < -1) return clex_fail(CLEX_E_INVALID, "decode rows4 bytes must be -1 (every row) or more, not %lld",
                                         (long long)max_bytes);
    clex_decode_rows4_max = max_bytes;
    return CLEX_OK;
}

int64_t clex_decode_prefetch_bytes(void) {
    clex_init_once();
    return clex_decode_prefetch;
}

/* the prefetch setters' one check and store: `bytes` (0 or more; `what` says what 0 means) into
 * *a, and into *b too where b is not NULL */
static int set_prefetch(int64_t *a, int64_t *b, int64_t bytes, const char *what) {
    clex_init_once();
    if (bytes < 0) return clex_fail(CLEX_E_INVALID, "%s or more bytes, not %lld", what, (long long)bytes);
    *a = bytes;
    if (b) *b = bytes;
    return CLEX_OK;
}

#define PREFETCH_DISTANCE "decode prefetch must be 0 (none)"

int clex_set_decode_prefetch_bytes(int64_t bytes) {
    return set_prefetch(&clex_decode_prefetch_long, &clex_decode_prefetch, bytes, PREFETCH_DISTANCE);
}

int64_t clex_decode_prefetch_long_bytes(void) {
    clex_init_once();
    return clex_decode_prefetch_long;
}

int clex_set_decode_prefetch_long_bytes(int64_t bytes) {
    return set_prefetch(&clex_decode_prefetch_long, NULL, bytes, PREFETCH_DISTANCE);
}

int64_t clex_decode_prefetch_page_bytes(void) {
    clex_init_once();
    return clex_decode_prefetch_page;
}

int clex_set_decode_prefetch_page_bytes(int64_t bytes) {
    return set_prefetch(&clex_decode_prefetch_page, NULL, bytes, "decode prefetch page must be 0 (every line)");
}

int clex_decode_quarters(void) {
    clex_init_once();
    return clex_decode_quarters_on;
}

int clex_set_decode_quarters(int on) {
    clex_init_once();
    if (on != 0 && on != 1) return clex_fail(CLEX_E_INVALID, "decode quarters must be 0 or 1, not %d", on);
    clex_decode_quarters_on = on;
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
