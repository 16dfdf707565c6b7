/* Shared by the neon_check harness files (neon_check.c: bookkeeping, random numbers, the
 * original checks, end to end; check_types.c: the weight types added by issue 13 and the Q8_K
 * quantizer). */
#ifndef NEON_CHECK_H
#define NEON_CHECK_H

#include "internal.h"   /* -I native/src (run.sh) */

#define MAX_BLOCKS 131   /* 4096 + 96 elements */
#define MAX_N (MAX_BLOCKS * QK)

/* one case of check `name` (a name that outlives the run): ok, and |err| / allowed */
void record(const char *name, int ok, double ratio, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

extern uint64_t g_rng;
uint64_t rnd_u64(void);
double rnd_unit(void);
int rnd_int(int lo, int hi);
double rnd_normal(void);
float rnd_scale(double lo10, double hi10);
clex_fp16 rnd_half(void);       /* any finite half, subnormals and zero included */
clex_fp16 rnd_half_mid(void);   /* a normal half of moderate magnitude, 2^-14 .. 2^6 */

/* sum |w_k * x_k| over the dequantized operands */
double sum_abs_products(int32_t wtype, const void *w, int32_t xtype, const void *x, int64_t n);
/* ref_fn and neon_fn on (w, x): |neon - ref| <= 1e-5 * sum|w*x| + 1e-6 */
void compare_dot(const char *name, clex_vec_dot_fn ref_fn, clex_vec_dot_fn neon_fn, int32_t wtype, const void *w,
                 int32_t xtype, const void *x, int64_t n, const char *mode);

/* check_types.c */
void check_quantizer_q8_K(const clex_kernels *nk);
void check_type_dots(const char *variant, const clex_kernels *gk, const clex_kernels *nk);

#endif
