/* Internal declarations shared by the C core's translation units. */
#ifndef CLEXRT_INTERNAL_H
#define CLEXRT_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../include/clexrt.h"
#include "../include/quant.h"

/* ---- errors: one line per thread, returned codes never exit ---- */
int clex_fail(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- half / bfloat16 (bit-exact IEEE round-to-nearest-even) ---- */
float clex_fp16_to_fp32(clex_fp16 h);
clex_fp16 clex_fp32_to_fp16(float f);
static inline float clex_bf16_to_fp32(clex_bf16 h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
clex_bf16 clex_fp32_to_bf16(float f);

/* ---- kernels ----
 * vec_dot: s = sum_k w[k] * x[k] for n elements; w in the weight type, x in the paired
 *          activation type (already converted by that type's from_float).
 * The *_generic versions in quants.c are the specification; SIMD versions must match them
 * within float rounding (tests hold them to it). */
typedef void (*clex_vec_dot_fn)(int64_t n, float *s, const void *w, const void *x);
/* One weight row against four activation rows (x, x + xstride, ... bytes apart): s[0..3].
 * Prefill uses it so a weight block is unpacked once for four tokens. Optional per type. */
typedef void (*clex_vec_dot4_fn)(int64_t n, float *s, const void *w, const void *x, size_t xstride);
typedef void (*clex_from_float_fn)(const float *x, void *y, int64_t n);
typedef void (*clex_to_float_fn)(const void *x, float *y, int64_t n);

typedef struct {
    const char *name;
    int64_t blck;              /* elements per block */
    int64_t bytes;             /* bytes per block */
    int32_t vec_dot_type;      /* activation type the weights pair with */
    int weight_ok;             /* 1 when the forward pass runs weights of this type */
    clex_to_float_fn to_float;
    clex_from_float_fn from_float_ref;   /* reference quantizer (the file format's definition) */
    clex_from_float_fn from_float;       /* used for activations; may be faster, same result */
    clex_vec_dot_fn vec_dot;             /* selected for the current ISA */
    clex_vec_dot4_fn vec_dot4;           /* may be NULL: then four vec_dot calls */
} clex_type_traits;

const clex_type_traits *clex_traits(int32_t type);   /* NULL for unknown ids */

/* Attention kernels over runs of cached keys (rows of D, f32 or f16):
 *   scores: s[p] = scale * (q . K[p]) for p < n;   wsum: out += sum_p w[p] * V[p];
 * and the row conversions to and from f16 that an f16 cache's writes and re-rotations need. */
typedef void (*clex_scores32_fn)(int64_t n, int64_t D, const float *q, const float *K, float scale, float *s);
typedef void (*clex_scores16_fn)(int64_t n, int64_t D, const float *q, const clex_fp16 *K, float scale, float *s);
typedef void (*clex_wsum32_fn)(int64_t n, int64_t D, const float *w, const float *V, float *out);
typedef void (*clex_wsum16_fn)(int64_t n, int64_t D, const float *w, const clex_fp16 *V, float *out);
typedef void (*clex_to_f16_fn)(const float *x, clex_fp16 *y, int64_t n);
typedef void (*clex_from_f16_fn)(const clex_fp16 *x, float *y, int64_t n);

/* Small float kernels used by attention and norms, dispatched with the ISA. */
typedef struct {
    float (*dot_f32)(int64_t n, const float *a, const float *b);
    void (*axpy_f32)(int64_t n, float a, const float *x, float *y);   /* y += a * x */
    clex_scores32_fn scores32;
    clex_scores16_fn scores16;
    clex_wsum32_fn wsum32;
    clex_wsum16_fn wsum16;
    clex_to_f16_fn to_f16;
    clex_from_f16_fn from_f16;
} clex_f32_ops;
extern clex_f32_ops clex_ops;

void clex_init_once(void);

/* Generic (scalar reference) kernels, from quants.c */
void clex_quantize_q8_0_ref(const float *x, void *y, int64_t n);
void clex_quantize_q8_1_ref(const float *x, void *y, int64_t n);
void clex_quantize_q4_0_ref(const float *x, void *y, int64_t n);
void clex_quantize_q4_1_ref(const float *x, void *y, int64_t n);
void clex_vec_dot_q8_0_q8_0_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_q4_0_q8_0_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_q4_1_q8_1_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_f32_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_f16_f32_generic(int64_t n, float *s, const void *w, const void *x);
void clex_vec_dot_bf16_f32_generic(int64_t n, float *s, const void *w, const void *x);
float clex_dot_f32_generic(int64_t n, const float *a, const float *b);
void clex_axpy_f32_generic(int64_t n, float a, const float *x, float *y);

/* Per-ISA kernel sets; each arch file fills the slots it implements. */
typedef struct {
    clex_vec_dot_fn q8_0, q4_0, q4_1, f32, f16, bf16;
    clex_vec_dot4_fn q4_1_x4, q8_0_x4, q4_0_x4;   /* may stay NULL: then one row at a time */
    clex_from_float_fn quant_q8_0, quant_q8_1;
    float (*dot_f32)(int64_t n, const float *a, const float *b);
    void (*axpy_f32)(int64_t n, float a, const float *x, float *y);
    clex_scores32_fn scores32;
    clex_scores16_fn scores16;
    clex_wsum32_fn wsum32;
    clex_wsum16_fn wsum16;
    clex_to_f16_fn to_f16;
    clex_from_f16_fn from_f16;
} clex_kernel_set;

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define CLEX_X86 1
void clex_kernels_avx2(clex_kernel_set *k);
void clex_kernels_avx512(clex_kernel_set *k);
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
#define CLEX_NEON 1
void clex_kernels_neon(clex_kernel_set *k);
#endif

/* ---- thread pool: every thread runs the same job; barriers separate its steps ---- */
typedef struct clex_pool clex_pool;
typedef void (*clex_job_fn)(void *arg, int ith, int nth);
int clex_pool_create(int n_threads, clex_pool **out);
void clex_pool_free(clex_pool *p);
void clex_pool_run(clex_pool *p, clex_job_fn fn, void *arg);   /* caller is thread 0 */
void clex_pool_barrier(clex_pool *p);
int clex_pool_size(const clex_pool *p);

/* ---- attention kernels, scalar reference (attn.c) ---- */
void clex_scores32_generic(int64_t n, int64_t D, const float *q, const float *K, float scale, float *s);
void clex_scores16_generic(int64_t n, int64_t D, const float *q, const clex_fp16 *K, float scale, float *s);
void clex_wsum32_generic(int64_t n, int64_t D, const float *w, const float *V, float *out);
void clex_wsum16_generic(int64_t n, int64_t D, const float *w, const clex_fp16 *V, float *out);
void clex_to_f16_generic(const float *x, clex_fp16 *y, int64_t n);
void clex_from_f16_generic(const clex_fp16 *x, float *y, int64_t n);

#endif
