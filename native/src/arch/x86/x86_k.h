/* The x86 kernels of the K-quant files' weight types (Q5_0, Q5_1, IQ4_NL with Q8_0 / Q8_1
 * activations; Q2_K .. Q6_K and IQ4_XS with Q8_K), of Q8_0 and Q4_0, and the Q8_K activation
 * quantizer, defined in avx2_q5.c, avx2_k.c (AVX2 + FMA + F16C) and avx512_k.c (AVX-512
 * F/BW/VL/DQ + VNNI; a CPU with AVX-512 but no VNNI keeps the AVX2 ones), with the signed
 * 32-value types' 256-bit body in signed32_body.h, and listed in the sets of avx2.c and
 * avx512.c. Each holds to its *_generic twin (quants.c, quants_k.c, iquants.c): the integer sums
 * exactly, the float scaling up to summation order; the four-row kernel (dot4) runs each row
 * through the same operations as the one-row kernel (dot), so the two give the same bits
 * (tests/test_kernels.py checks it). The quantizer is bit-exact with clex_quantize_q8_K_ref.
 * Prefill's tile kernels (avx2_tile.c, avx512_tile.c, with the K-quants' packing in avx2_k.c and
 * avx512_k.c) hold to the same twins within the same tolerance. */
#ifndef CLEXRT_X86_K_H
#define CLEXRT_X86_K_H

#include <stddef.h>
#include <stdint.h>

#include "../../../include/quant.h"
#include "../../../include/clexrt.h"

#define CLEX_X86_K_KERNELS(PFX, X) \
    X(PFX, Q5_0) X(PFX, Q5_1) X(PFX, IQ4_NL) X(PFX, Q2_K) X(PFX, Q3_K) X(PFX, Q4_K) X(PFX, Q5_K) \
    X(PFX, Q6_K) X(PFX, IQ4_XS)

#define CLEX_X86_K_DECLARE(PFX, T)                                                              \
    void PFX##_dot_##T(int64_t n, float *s, const void *w, const void *x);                        \
    void PFX##_dot4_##T(int64_t n, float *s, const void *w, const void *x, size_t xstride);

CLEX_X86_K_KERNELS(clex_avx2, CLEX_X86_K_DECLARE)
CLEX_X86_K_KERNELS(clex_avx512vnni, CLEX_X86_K_DECLARE)
/* and the Q8_0 and Q4_0 kernels in the 32-value types' scheme (avx2_q5.c, avx512_k.c) */
CLEX_X86_K_DECLARE(clex_avx2, Q8_0)
CLEX_X86_K_DECLARE(clex_avx2, Q4_0)
CLEX_X86_K_DECLARE(clex_avx512vnni, Q8_0)
CLEX_X86_K_DECLARE(clex_avx512vnni, Q4_0)
CLEX_X86_K_DECLARE(clex_avx512vnni, Q4_1)

/* the tile kernels of prefill (avx2_tile.c, avx512_tile.c) */
extern const clex_tile_set clex_avx2_tiles;
extern const clex_tile_set clex_avx512vnni_tiles;

/* K-quant weight rows as the AVX-512 tile kernels take them (packed by avx512_k.c, which has the
 * unpacking, multiplied by avx512_tile.c): groups of 16 rows (the last group of a call holds the
 * R = rows mod 16 left, if any), the weight rows in the lanes. Per super-block, a group of R rows
 * is 64 + nvec vectors of R dwords (4R bytes) each: vector k (k < 64) holds every row's codes
 * 4k .. 4k + 3 (the activations' order) as unsigned bytes, row r in dword r; then the scale
 * vectors, floats: d * the scale of sub-block j in vector 64 + j (16 sub-blocks of 16 values, or
 * 8 of 32 for Q4_K, Q5_K, IQ4_XS), and -dmin * the minimum of sub-block j in vector 64 + 8 + j
 * (Q4_K, Q5_K) or 64 + 16 + j (Q2_K). The unsigned codes carry an offset: Q6_K's 32, Q3_K's 4,
 * 128 on IQ4_XS's signed levels, none for the types with minimums (the kernels take it out
 * through the activations' bsums). nvec: 16, or 32 for Q2_K, 8 for IQ4_XS; a full group's
 * super-block is whole cache lines. */
static inline int clex_kpack_nvec(int32_t type) {
    return type == CLEX_TYPE_Q2_K ? 32 : type == CLEX_TYPE_IQ4_XS ? 8 : 16;
}
/* bytes per row and super-block */
static inline size_t clex_kpack_bytes(int32_t type) { return 256 + 4 * (size_t)clex_kpack_nvec(type); }

/* The same for the AVX2 tile kernels (packed by avx2_k.c, multiplied by avx2_tile.c): the codes
 * 32 to a register, v[j] the int16 scales of register j's 16 pair sums after maddubs (the madd
 * factors), the bsums' factors, and the float scales of the integer sum (d) and of the bsums'
 * sum (-dmin; 0 where the bsums go into the integer sum). */
typedef struct {
    uint8_t u[8][32];
    int16_t v[8][16];
    int16_t bias[16];
    float d, dm;
    uint8_t pad[24];
} clex_kpack2;
_Static_assert(sizeof(clex_kpack2) == 576, "clex_kpack2: whole cache lines");

#define CLEX_X86_KPACK_TYPES(PFX, X) X(PFX, Q2_K) X(PFX, Q3_K) X(PFX, Q4_K) X(PFX, Q5_K) X(PFX, Q6_K)
#define CLEX_X86_KPACK_DECLARE(PFX, T) \
    void PFX##_kpack_##T(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst);
CLEX_X86_KPACK_TYPES(clex_avx2, CLEX_X86_KPACK_DECLARE)
CLEX_X86_KPACK_TYPES(clex_avx512vnni, CLEX_X86_KPACK_DECLARE)
CLEX_X86_KPACK_DECLARE(clex_avx512vnni, IQ4_XS)

/* Q8_K activations, bit-exact with clex_quantize_q8_K_ref (avx2_k.c) */
void clex_avx2_quantize_q8_K(const float *x, void *y, int64_t n);

/* the signed 32-value weight types (signed32_body.h, avx512_s32.h, the tile kernels): their
 * weights are signed bytes times one fp16 scale per block */
enum { W_Q8_0, W_Q4_0, W_Q5_0, W_IQ4_NL };

static inline size_t signed_stride(int wt) {
    return wt == W_Q8_0 ? sizeof(block_q8_0) : wt == W_Q5_0 ? sizeof(block_q5_0) : sizeof(block_q4_0);
}

/* complete unrolling of the loops over rows and sub-blocks, whatever the optimisation level
 * (the bodies index register arrays by the loop variables) */
#define CLEX_UNROLL _Pragma("GCC unroll 16")

/* the table entries: [CLEX_TYPE_Q4_K] = clex_avx2_dot_Q4_K, ... */
#define CLEX_X86_K_DOT(PFX, T) [CLEX_TYPE_##T] = PFX##_dot_##T,
#define CLEX_X86_K_DOT4(PFX, T) [CLEX_TYPE_##T] = PFX##_dot4_##T,

/* the two kernels of one type from one body: BODY(n, s, w, x rows, R) for R = 1 and 4 */
#define CLEX_X86_K_DEFINE(PFX, T, XT, BODY)                                                     \
    void PFX##_dot_##T(int64_t n, float *s, const void *w, const void *x) {                       \
        const XT *xr[1] = {(const XT *)x};                                                        \
        BODY(n, s, w, xr, 1);                                                                     \
    }                                                                                             \
    void PFX##_dot4_##T(int64_t n, float *s, const void *w, const void *x, size_t xstride) {      \
        const XT *xr[4];                                                                          \
        for (int j = 0; j < 4; j++) xr[j] = (const XT *)((const uint8_t *)x + j * xstride);       \
        BODY(n, s, w, xr, 4);                                                                     \
    }

#endif
