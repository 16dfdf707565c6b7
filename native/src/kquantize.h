/* Reference quantizers of the 5-bit, IQ4 and K-quant formats (kquantize.c): the blocks that
 * llama-quantize writes for the same floats, byte for byte (tests/test_kquantize.py compares
 * them with llama.cpp's own ggml_quantize_chunk, and a recorded golden file where llama.cpp is
 * absent). The block layouts are those of include/quant.h.
 *
 * _ref(x, y, n): n floats (a whole number of blocks: 32 for Q5_0, Q5_1, IQ4_NL, 256 for the
 *     K-quants and IQ4_XS) into n / block-size blocks, without an importance matrix. This is
 *     the traits table's from_float_ref.
 * _imat(x, y, n_per_row, nrows, imatrix): nrows rows of n_per_row floats each (a whole number of
 *     blocks); imatrix holds one importance per column (n_per_row floats, shared by every row),
 *     as llama-quantize's --imatrix gives it per tensor. imatrix NULL: the same bytes as _ref.
 *
 * IQ4_NL: llama-quantize's blocks, from ggml's 15-trial scale search (quantize_iq4_nl); ggml's
 * own quantize_row_iq4_nl_ref, which only rounds at the first scale (ggml uses it to copy
 * activations into an IQ4_NL cache), gives other bytes and is not what a file holds.
 *
 * Q4_0, Q4_1: _imat only (ggml's quantize_row_q4_0_impl / q4_1_impl), imatrix not NULL; without
 *     one, llama-quantize's blocks are quants.c's reference quantizers (clex_quantize_row).
 *
 * Neither allocates nor fails; rows are quantized independently, so a caller may split the
 * rows of a tensor across threads. */
#ifndef CLEXRT_KQUANTIZE_H
#define CLEXRT_KQUANTIZE_H

#include <stdint.h>

void clex_quantize_q5_0_ref(const float *x, void *y, int64_t n);
void clex_quantize_q5_1_ref(const float *x, void *y, int64_t n);
void clex_quantize_iq4_nl_ref(const float *x, void *y, int64_t n);
void clex_quantize_q2_K_ref(const float *x, void *y, int64_t n);
void clex_quantize_q3_K_ref(const float *x, void *y, int64_t n);
void clex_quantize_q4_K_ref(const float *x, void *y, int64_t n);
void clex_quantize_q5_K_ref(const float *x, void *y, int64_t n);
void clex_quantize_q6_K_ref(const float *x, void *y, int64_t n);
void clex_quantize_iq4_xs_ref(const float *x, void *y, int64_t n);

void clex_quantize_q4_0_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imatrix);
void clex_quantize_q4_1_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imatrix);
void clex_quantize_q5_0_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imatrix);
void clex_quantize_q5_1_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imatrix);
void clex_quantize_iq4_nl_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imatrix);
void clex_quantize_q2_K_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imatrix);
void clex_quantize_q3_K_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imatrix);
void clex_quantize_q4_K_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imatrix);
void clex_quantize_q5_K_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imatrix);
void clex_quantize_q6_K_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imatrix);
void clex_quantize_iq4_xs_imat(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imatrix);

#endif
