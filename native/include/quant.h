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

#define QK 32                 /* elements per block of every quantized type here */

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

#endif
