/* GGUF block formats of the types the kernels run, defined once: every kernel includes this
 * header, and the traits table (native/src/quants.c) takes these types' sizes from the structs.
 * The compiled module exports the sizes of every ggml type id to Python (clex_type_block_size,
 * clex_type_block_bytes); tests/test_kernels.py holds them to gguf-py's table.
 *
 * Q4_0 / Q4_1 nibble layout (32 values per block):
 *   qs[j] & 0x0F = value j        (j = 0..15)
 *   qs[j] >> 4   = value j + 16
 */
#ifndef CLEXRT_QUANT_H
#define CLEXRT_QUANT_H

#include <assert.h>
#include <stdint.h>

typedef uint16_t clex_fp16;   /* IEEE half, stored as bits */
typedef uint16_t clex_bf16;   /* bfloat16, stored as bits */

#define QK 32                 /* elements per block of the 32-value types */

typedef struct {
    clex_fp16 d;              /* scale */
    int8_t qs[QK];            /* x = d * q */
} block_q8_0;
static_assert(sizeof(block_q8_0) == 2 + QK, "block_q8_0 size");

typedef struct {
    clex_fp16 d;              /* scale */
    uint8_t qs[QK / 2];       /* x = d * (q - 8) */
} block_q4_0;
static_assert(sizeof(block_q4_0) == 2 + QK / 2, "block_q4_0 size");

typedef struct {
    clex_fp16 d;              /* scale */
    clex_fp16 m;              /* minimum */
    uint8_t qs[QK / 2];       /* x = d * q + m */
} block_q4_1;
static_assert(sizeof(block_q4_1) == 4 + QK / 2, "block_q4_1 size");

/* Activations paired with Q4_1 weights: s = d * sum(qs) carries the term the weight's minimum
 * multiplies, so the integer dot product needs no per-block correction pass. Not a file type:
 * kept in float for accuracy (40 bytes, the size gguf-py records for this type id). */
typedef struct {
    float d;
    float s;
    int8_t qs[QK];
} block_q8_1;
static_assert(sizeof(block_q8_1) == 8 + QK, "block_q8_1 size");

/* ---- 5-bit blocks of 32 (Q5_0, Q5_1): the 4 low bits as in Q4_0, the fifth bit of value j in
 * bit j of qh (little-endian u32). Q5_0: x = d * (q - 16); Q5_1: x = d * q + m. */
typedef struct {
    clex_fp16 d;
    uint8_t qh[4];
    uint8_t qs[QK / 2];
} block_q5_0;
static_assert(sizeof(block_q5_0) == 2 + 4 + QK / 2, "block_q5_0 size");

typedef struct {
    clex_fp16 d;
    clex_fp16 m;
    uint8_t qh[4];
    uint8_t qs[QK / 2];
} block_q5_1;
static_assert(sizeof(block_q5_1) == 4 + 4 + QK / 2, "block_q5_1 size");

/* ---- IQ4_NL: 4-bit indices into a fixed non-linear table of 16 int8 levels, x = d * level;
 * nibbles laid out as Q4_0's. */
typedef struct {
    clex_fp16 d;
    uint8_t qs[QK / 2];
} block_iq4_nl;
static_assert(sizeof(block_iq4_nl) == 2 + QK / 2, "block_iq4_nl size");

/* ---- K-quants: super-blocks of 256 values in sub-blocks of 16 or 32, each sub-block with a
 * quantized scale (and minimum) relative to the super-block's fp16 d (and dmin). */
#define QK_K 256
#define K_SCALE_SIZE 12       /* 8 6-bit scales and 8 6-bit minimums, packed */

typedef struct {
    uint8_t scales[QK_K / 16];   /* low nibble: scale, high nibble: minimum, per 16 values */
    uint8_t qs[QK_K / 4];        /* 2-bit codes */
    clex_fp16 d;                 /* super-block scale of the scales */
    clex_fp16 dmin;              /* super-block scale of the minimums */
} block_q2_K;                    /* x = d * sc * q - dmin * m */
static_assert(sizeof(block_q2_K) == 2 * 2 + QK_K / 16 + QK_K / 4, "block_q2_K size");

typedef struct {
    uint8_t hmask[QK_K / 8];     /* the third bit of each code (set: no offset) */
    uint8_t qs[QK_K / 4];        /* the low 2 bits */
    uint8_t scales[12];          /* 16 6-bit scales, offset by 32 */
    clex_fp16 d;
} block_q3_K;                    /* x = d * (sc - 32) * (q - (hbit ? 0 : 4)) */
static_assert(sizeof(block_q3_K) == 2 + QK_K / 8 + QK_K / 4 + 12, "block_q3_K size");

typedef struct {
    clex_fp16 d;
    clex_fp16 dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];        /* 4-bit codes; 64 values per 32 bytes: low nibbles, then high */
} block_q4_K;                    /* x = d * sc * q - dmin * m, per sub-block of 32 */
static_assert(sizeof(block_q4_K) == 2 * 2 + K_SCALE_SIZE + QK_K / 2, "block_q4_K size");

typedef struct {
    clex_fp16 d;
    clex_fp16 dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];        /* the fifth bit */
    uint8_t qs[QK_K / 2];        /* the low 4 bits, as Q4_K */
} block_q5_K;
static_assert(sizeof(block_q5_K) == 2 * 2 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2, "block_q5_K size");

typedef struct {
    uint8_t ql[QK_K / 2];        /* the low 4 bits */
    uint8_t qh[QK_K / 4];        /* the high 2 bits */
    int8_t scales[QK_K / 16];    /* 8-bit scales per 16 values */
    clex_fp16 d;
} block_q6_K;                    /* x = d * sc * (q - 32) */
static_assert(sizeof(block_q6_K) == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, "block_q6_K size");

/* Activations paired with the K-quants: float scale, 8-bit codes, and the sum of each 16 codes
 * (what the minimums and offsets multiply). */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;
static_assert(sizeof(block_q8_K) == 4 + QK_K + QK_K / 16 * 2, "block_q8_K size");

/* ---- IQ4_XS: IQ4_NL's levels in super-blocks of 256 with 6-bit sub-block scales (offset 32). */
typedef struct {
    clex_fp16 d;
    uint16_t scales_h;           /* the high 2 bits of the 8 scales */
    uint8_t scales_l[QK_K / 64]; /* the low 4 bits, two per byte */
    uint8_t qs[QK_K / 2];
} block_iq4_xs;
static_assert(sizeof(block_iq4_xs) == 2 + 2 + QK_K / 64 + QK_K / 2, "block_iq4_xs size");

#endif
