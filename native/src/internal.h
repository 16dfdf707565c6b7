/* Internal declarations shared by every translation unit of the C core, the arch kernel files
 * included: errors, type traits, the kernel dispatch table, the thread pool. (model.h adds the
 * model and context for the files that run the forward pass.) */
#ifndef CLEXRT_INTERNAL_H
#define CLEXRT_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../include/clexrt.h"
#include "../include/quant.h"
#include "fp16.h"

/* ---- errors: one line per thread, returned codes never exit (core.c) ---- */
int clex_fail(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- kernel signatures ----
 * vec_dot: s = sum_k w[k] * x[k] for n elements; w in the weight type, x in the paired
 *          activation type (already converted by that type's from_float).
 * vec_dot4: one weight row against four activation rows (x, x + xstride, ... bytes apart):
 *          s[0..3]. Prefill uses it so a weight block is unpacked once for four tokens.
 * vec_dot4w: four weight rows (w, w + wstride, w + 2 wstride, w + 3 wstride bytes) against one
 *          activation row: s[0..3]. Decoding uses it so the activations are loaded (and their
 *          offset sums made) once for four rows, with four independent sums in flight. Each s[r]
 *          is bit for bit what the same set's vec_dot gives for row r (the row summed in the
 *          same order); NULL: one row at a time.
 * Attention over runs of cached keys (rows of D, f32, f16 or Q8_0):
 *   scores: s[p] = scale * (q . K[p]) for p < n;   wsum: out += sum_p w[p] * V[p];
 * and the row conversions to and from f16 that an f16 cache's writes and re-rotations need.
 * A Q8_0 cache (D a multiple of 32, rows of D/32 blocks) has its own pair: scores_q8 takes the
 * query head quantized to Q8_0 and sums, block by block, the integer product times the key's
 * and the query's scales; wsum_q8 adds each value block times w[p] * its scale.
 * The scalar versions (quants.c, attn.c) are the specification; SIMD versions must match them
 * within float rounding, the activation quantizers bit for bit (tests hold them to it). */
typedef void (*clex_vec_dot_fn)(int64_t n, float *s, const void *w, const void *x);
typedef void (*clex_vec_dot4_fn)(int64_t n, float *s, const void *w, const void *x, size_t xstride);
typedef void (*clex_vec_dot4w_fn)(int64_t n, float s[4], const void *w, size_t wstride, const void *x);
typedef void (*clex_from_float_fn)(const float *x, void *y, int64_t n);
typedef void (*clex_to_float_fn)(const void *x, float *y, int64_t n);
typedef void (*clex_axpy_fn)(int64_t n, float a, const float *x, float *y);   /* y += a * x */
typedef void (*clex_scores32_fn)(int64_t n, int64_t D, const float *q, const float *K, float scale, float *s);
typedef void (*clex_scores16_fn)(int64_t n, int64_t D, const float *q, const clex_fp16 *K, float scale, float *s);
typedef void (*clex_wsum32_fn)(int64_t n, int64_t D, const float *w, const float *V, float *out);
typedef void (*clex_wsum16_fn)(int64_t n, int64_t D, const float *w, const clex_fp16 *V, float *out);
typedef void (*clex_to_f16_fn)(const float *x, clex_fp16 *y, int64_t n);
typedef void (*clex_from_f16_fn)(const clex_fp16 *x, float *y, int64_t n);
typedef void (*clex_scores_q8_fn)(int64_t n, int64_t D, const block_q8_0 *q, const block_q8_0 *K, float scale,
                                  float *s);
typedef void (*clex_wsum_q8_fn)(int64_t n, int64_t D, const float *w, const block_q8_0 *V, float *out);
/* The GQA group's query heads over one run of keys in one pass (decoding's kernels: each key and
 * value row is loaded, and converted, once for g heads): head j's query at q + j * D (Q8_0:
 * q + j * D / 32 blocks), its scores to s + j * n, its weights at w + j * n, its sum added to
 * out + j * ostride. Each head's results equal, bit for bit, what the per-head kernel of the same
 * set gives it (attn.c loops the per-head kernels where a set has none: NULL is allowed). */
typedef void (*clex_gscores32_fn)(int64_t g, int64_t n, int64_t D, const float *q, const float *K, float scale,
                                  float *s);
typedef void (*clex_gscores16_fn)(int64_t g, int64_t n, int64_t D, const float *q, const clex_fp16 *K, float scale,
                                  float *s);
typedef void (*clex_gscores_q8_fn)(int64_t g, int64_t n, int64_t D, const block_q8_0 *q, const block_q8_0 *K,
                                   float scale, float *s);
typedef void (*clex_gwsum32_fn)(int64_t g, int64_t n, int64_t D, const float *w, const float *V, float *out,
                                int64_t ostride);
typedef void (*clex_gwsum16_fn)(int64_t g, int64_t n, int64_t D, const float *w, const clex_fp16 *V, float *out,
                                int64_t ostride);
typedef void (*clex_gwsum_q8_fn)(int64_t g, int64_t n, int64_t D, const float *w, const block_q8_0 *V, float *out,
                                 int64_t ostride);
/* softmax step over n > 0 scores: *max = their maximum, s[i] = e^(s[i] - *max), *sum = the sum of
 * those in double (float lanes converted and added in double); normalize: then s[i] *= (float)(1 /
 * *sum). The reference (attn.c) uses expf; SIMD versions their own e^x, within a few ulp of it.
 * NULL: attn.c's reference. */
typedef void (*clex_softmax_fn)(int64_t n, float *s, int normalize, float *max, double *sum);
/* The FFN's activation over n values: g = act(g) * u, or g = act(g) when u is NULL; kind is a
 * CLEX_FFN_* (SiLU for SwiGLU, GELU's tanh form for GeGLU and GELU). Both are x * sigmoid(a x ...):
 * SIMD versions evaluate that sigmoid with their own exp, within a few ulp of the scalar one. */
typedef void (*clex_act_fn)(int32_t kind, int64_t n, float *g, const float *u);
/* Prefill attention of one query head over nt (<= 16) consecutive tokens of a batch: token t
 * (query q + t * q_stride, scaled by `scale`) attends to keys [k_lo[t], k_hi[t]) of its KV
 * head's cache rows k, v ([n_ctx, D] of the cache's type: f32, f16 or Q8_0, whose queries are
 * quantized to Q8_0 as decoding's are), softmax in float32, the result to out + t * out_stride.
 * D a multiple of 16 (Q8_0: of 32), at most CLEX_FATTN_MAX_D. NULL: the per-token path. */
#define CLEX_FATTN_MAX_D 256
typedef struct {
    int64_t D;
    int32_t nt, type;   /* type: the cache's, a CLEX_TYPE_* */
    const float *q;
    int64_t q_stride;
    const void *k, *v;
    const int64_t *k_lo, *k_hi;
    float scale;
    float *out;
    int64_t out_stride;
} clex_fattn_job;
typedef void (*clex_fattn_fn)(const clex_fattn_job *j);

/* ---- tiled prefill (matmul.c) ----
 * A weight type may have tile kernels: pack rewrites rows of its weights once into the kernel's
 * own layout (codes unpacked, scales expanded), and gemm multiplies those packed rows by many
 * activation rows in register tiles of several weight rows x several tokens, so that each
 * weight block loaded serves several tokens and each activation block several rows.
 *   bytes(n): bytes of one packed row of n values (n a multiple of the weight block, <= max_n);
 *   pack(n, w, wstride, rows, dst): rows of n values, wstride bytes apart, into dst;
 *   gemm(n, pw, rows, x, xstride, ntok, y, ystride, accumulate): for r < rows, t < ntok,
 *       y[t * ystride + r] (+)= packed row r . activation row t (x + t * xstride bytes).
 * They hold to the scalar vec_dot as the row kernels do: integer sums exact, the float
 * scaling up to summation order. */
typedef size_t (*clex_tile_bytes_fn)(int64_t n);
typedef void (*clex_tile_pack_fn)(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst);
typedef void (*clex_tile_gemm_fn)(int64_t n, const void *pw, int64_t rows, const void *x, size_t xstride,
                                  int64_t ntok, float *y, int64_t ystride, int accumulate);
typedef struct {
    clex_tile_bytes_fn bytes;   /* NULL: no tile kernels for this type */
    clex_tile_pack_fn pack;
    clex_tile_gemm_fn gemm;
    int64_t max_n;              /* values per gemm call at most (matmul.c splits longer rows) */
    int64_t min_tok;            /* with fewer tokens the row kernels are as fast */
} clex_tile_kernel;

typedef struct {
    clex_tile_kernel type[CLEX_TYPE_COUNT];   /* by weight type */
} clex_tile_set;

/* ---- type traits: what a type is (quants.c) ---- */
typedef struct {
    const char *name;          /* NULL: an id ggml does not define */
    int64_t blck;              /* elements per block */
    int64_t bytes;             /* bytes per block */
    int32_t vec_dot_type;      /* activation type the weights pair with; -1 if none */
    int weight_ok;             /* 1 when the forward pass runs weights of this type */
    clex_to_float_fn to_float;           /* NULL: no conversion in this build */
    clex_from_float_fn from_float_ref;   /* reference quantizer (the file format's definition) */
} clex_type_traits;

const clex_type_traits *clex_traits(int32_t type);   /* NULL for ids ggml does not define */

/* ---- the kernel dispatch table ----
 * One struct type for every instruction set. The scalar set (core.c) fills every slot the
 * forward pass calls; an arch file (arch/x86/avx2.c, avx512.c, arch/arm/neon.c) fills the slots
 * it implements and leaves the rest NULL; clex_kernels_install lays such a set over another.
 * clex_k is the selected set: scalar, then the chosen ISA's sets in order (AVX-512 over AVX2).
 * Per-type slots are indexed by type id: vec_dot and vec_dot4 by weight type (vec_dot4 may stay
 * NULL: then one row at a time), vec_dot4w likewise, from_float by activation type (Q8_0, Q8_1,
 * Q8_K). A set that brings a type's vec_dot without its vec_dot4w takes the one below away (it
 * was made to agree with the vec_dot below, not with the new one). The tile kernels come as one
 * set per instruction set (tiles; NULL: none), laid over whole. */
#define CLEX_KERNEL_SLOTS(X)                                                                      \
    X(clex_axpy_fn, axpy_f32)                                                                     \
    X(clex_scores32_fn, scores32)                                                                 \
    X(clex_scores16_fn, scores16)                                                                 \
    X(clex_wsum32_fn, wsum32)                                                                     \
    X(clex_wsum16_fn, wsum16)                                                                     \
    X(clex_to_f16_fn, to_f16)                                                                     \
    X(clex_from_f16_fn, from_f16)                                                                 \
    X(clex_act_fn, act)                                                                           \
    X(clex_fattn_fn, fattn)                                                                       \
    X(const clex_tile_set *, tiles)                                                               \
    X(clex_scores_q8_fn, scores_q8)                                                               \
    X(clex_wsum_q8_fn, wsum_q8)                                                                   \
    X(clex_gscores32_fn, gscores32)                                                               \
    X(clex_gscores16_fn, gscores16)                                                               \
    X(clex_gscores_q8_fn, gscores_q8)                                                             \
    X(clex_gwsum32_fn, gwsum32)                                                                   \
    X(clex_gwsum16_fn, gwsum16)                                                                   \
    X(clex_gwsum_q8_fn, gwsum_q8)                                                                 \
    X(clex_softmax_fn, softmax)

#define CLEX_KERNEL_FIELD(type, name) type name;
typedef struct {
    clex_vec_dot_fn vec_dot[CLEX_TYPE_COUNT];
    clex_vec_dot4_fn vec_dot4[CLEX_TYPE_COUNT];
    clex_vec_dot4w_fn vec_dot4w[CLEX_TYPE_COUNT];   /* by weight type; see clex_kernels_install */
    clex_from_float_fn from_float[CLEX_TYPE_COUNT];   /* same bytes as the traits' from_float_ref */
    CLEX_KERNEL_SLOTS(CLEX_KERNEL_FIELD)
} clex_kernels;
#undef CLEX_KERNEL_FIELD

extern const clex_kernels clex_kernels_scalar;
/* Valid once clex_init_once() has run: every public entry point that reaches a kernel calls it
 * (a context needs a model, and clex_model_create does). clex_set_isa rewrites it. */
extern clex_kernels clex_k;
void clex_kernels_install(clex_kernels *dst, const clex_kernels *src);   /* src's non-NULL slots */
void clex_init_once(void);
/* Decoding takes weight rows in fours through vec_dot4w, where the set has it, for rows of at
 * most this many bytes (-1: every row; core.c says why), else one row at a time; the kernels stay
 * in clex_k either way (tests, kbench). */
extern int64_t clex_decode_rows4_max;
/* Decoding asks for the weight bytes this far ahead of the rows it reads (0: none; core.c): rows
 * of at most CLEX_DECODE_PREFETCH_SHORT_ROW bytes (clexrt.h) clex_decode_prefetch ahead, longer
 * ones clex_decode_prefetch_long. */
extern int64_t clex_decode_prefetch, clex_decode_prefetch_long;
/* of each 4 KiB page in a long row's reach, the bytes asked for (0: every line; core.c) */
extern int64_t clex_decode_prefetch_page;
/* 1: decoding's four rows per call lie a quarter of the rows it was given apart; 0: neighbours */
extern int clex_decode_quarters_on;

/* The arch sets. Each returns the table to lay over the one below it (its choice may depend on
 * the CPU: VNNI, dotprod), and is only called after clex_isa_supported said yes. */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define CLEX_X86 1
const clex_kernels *clex_kernels_avx2(void);
const clex_kernels *clex_kernels_avx512(void);
/* the Q8_0 cache's attention kernels (arch/x86/avx2_attn.c, avx512_attn.c), laid over the
 * set of the same instruction set */
const clex_kernels *clex_kernels_avx2_attn(void);
const clex_kernels *clex_kernels_avx512_attn(void);
/* the four-weight-row kernels of decoding (arch/x86/avx2_dot4w.c, avx512_dot4w.c), laid over the
 * set of the same instruction set, each agreeing with that set's vec_dot */
const clex_kernels *clex_kernels_avx2_dot4w(void);
const clex_kernels *clex_kernels_avx512_dot4w(void);
void clex_avx512_fattn(const clex_fattn_job *j);
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
#define CLEX_NEON 1
const clex_kernels *clex_kernels_neon(void);
/* The widening (dotprod = 0) or SDOT (1) integer kernels; NULL when this build has no SDOT
 * kernels. The caller is responsible for dotprod = 1 only on a CPU that has it
 * (tools/neon_check compares both variants with the scalar set). */
const clex_kernels *clex_kernels_neon_variant(int dotprod);
#endif

/* ---- scalar reference kernels (quants.c, attn.c) ---- */
void clex_quantize_q8_0_ref(const float *x, void *y, int64_t n);
void clex_quantize_q8_1_ref(const float *x, void *y, int64_t n);
void clex_quantize_q4_0_ref(const float *x, void *y, int64_t n);
void clex_quantize_q4_1_ref(const float *x, void *y, int64_t n);
void clex_vec_dot_q8_0_q8_0_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_q4_0_q8_0_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_q4_1_q8_1_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_q5_0_q8_0_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_q5_1_q8_1_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_f32_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_f16_f32_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_bf16_f32_generic(int64_t n, float *s, const void *w, const void *x);
/* the K-quants and Q8_K (quants_k.c) */
void clex_quantize_q8_K_ref(const float *x, void *y, int64_t n);
void clex_dequant_q8_K(const void *x, float *y, int64_t n);
void clex_dequant_q2_K(const void *x, float *y, int64_t n);
void clex_dequant_q3_K(const void *x, float *y, int64_t n);
void clex_dequant_q4_K(const void *x, float *y, int64_t n);
void clex_dequant_q5_K(const void *x, float *y, int64_t n);
void clex_dequant_q6_K(const void *x, float *y, int64_t n);
void clex_vec_dot_q2_K_q8_K_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_q3_K_q8_K_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_q4_K_q8_K_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_q5_K_q8_K_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_q6_K_q8_K_generic(int64_t n, float *s, const void *w, const void *x);
/* the non-linear 4-bit types (iquants.c) */
extern const int8_t clex_iq4nl_levels[16];
void clex_dequant_iq4_nl(const void *x, float *y, int64_t n);
void clex_dequant_iq4_xs(const void *x, float *y, int64_t n);
void clex_vec_dot_iq4_nl_q8_0_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_iq4_xs_q8_K_generic(int64_t n, float *s, const void *w, const void *x);
void clex_axpy_f32_generic(int64_t n, float a, const float *x, float *y);
void clex_scores32_generic(int64_t n, int64_t D, const float *q, const float *K, float scale, float *s);
void clex_scores16_generic(int64_t n, int64_t D, const float *q, const clex_fp16 *K, float scale, float *s);
void clex_wsum32_generic(int64_t n, int64_t D, const float *w, const float *V, float *out);
void clex_wsum16_generic(int64_t n, int64_t D, const float *w, const clex_fp16 *V, float *out);
void clex_to_f16_generic(const float *x, clex_fp16 *y, int64_t n);
void clex_from_f16_generic(const clex_fp16 *x, float *y, int64_t n);
void clex_scores_q8_generic(int64_t n, int64_t D, const block_q8_0 *q, const block_q8_0 *K, float scale, float *s);
void clex_wsum_q8_generic(int64_t n, int64_t D, const float *w, const block_q8_0 *V, float *out);
void clex_softmax_generic(int64_t n, float *s, int normalize, float *max, double *sum);
void clex_act_generic(int32_t kind, int64_t n, float *g, const float *u);

/* ---- thread pool: every thread runs the same job; barriers separate its steps ---- */
typedef struct clex_pool clex_pool;
typedef void (*clex_job_fn)(void *arg, int ith, int nth);
int clex_pool_create(int n_threads, clex_pool **out);
void clex_pool_free(clex_pool *p);
void clex_pool_run(clex_pool *p, clex_job_fn fn, void *arg);   /* caller is thread 0 */
void clex_pool_barrier(clex_pool *p);
int clex_pool_size(const clex_pool *p);

#endif
