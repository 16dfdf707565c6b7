/* clex_quantize_rows: whole rows of floats into a ggml type, as llama-quantize's
 * ggml_quantize_chunk writes them, with or without an importance matrix.
 *
 * Without importances every type is its traits' reference quantizer (clex_quantize_row). With
 * them, the types whose ggml quantizer reads importances take kquantize.c's _imat searches;
 * Q8_0 and the float types ignore them, as ggml does. Rows are independent, so a caller may
 * split a tensor's rows across threads (nothing here is shared or allocated). */
#include "internal.h"
#include "kquantize.h"

typedef void (*imat_fn)(const float *x, void *y, int64_t n_per_row, int64_t nrows, const float *imatrix);

static imat_fn imat_quantizer(int32_t type) {
    switch (type) {
    case CLEX_TYPE_Q4_0: return clex_quantize_q4_0_imat;
    case CLEX_TYPE_Q4_1: return clex_quantize_q4_1_imat;
    case CLEX_TYPE_Q5_0: return clex_quantize_q5_0_imat;
    case CLEX_TYPE_Q5_1: return clex_quantize_q5_1_imat;
    case CLEX_TYPE_IQ4_NL: return clex_quantize_iq4_nl_imat;
    case CLEX_TYPE_Q2_K: return clex_quantize_q2_K_imat;
    case CLEX_TYPE_Q3_K: return clex_quantize_q3_K_imat;
    case CLEX_TYPE_Q4_K: return clex_quantize_q4_K_imat;
    case CLEX_TYPE_Q5_K: return clex_quantize_q5_K_imat;
    case CLEX_TYPE_Q6_K: return clex_quantize_q6_K_imat;
    case CLEX_TYPE_IQ4_XS: return clex_quantize_iq4_xs_imat;
    default: return NULL;
    }
}

int clex_quantize_uses_imatrix(int32_t type) {
    return imat_quantizer(type) != NULL;
}

int clex_quantize_rows(int32_t type, const float *src, void *dst, int64_t n_per_row, int64_t nrows,
                       const float *imatrix) {
    const clex_type_traits *t = clex_traits(type);
    if (!t) return clex_fail(CLEX_E_UNSUPPORTED, "unknown tensor type id %d", (int)type);
    if (!t->from_float_ref) return clex_fail(CLEX_E_UNSUPPORTED, "type %s has no quantizer in this build", t->name);
    if (n_per_row <= 0 || n_per_row % t->blck)
        return clex_fail(CLEX_E_INVALID, "a row of %lld elements is not a whole number of %s blocks of %lld",
                         (long long)n_per_row, t->name, (long long)t->blck);
    if (nrows < 0 || nrows > INT64_MAX / n_per_row)
        return clex_fail(CLEX_E_INVALID, "%lld rows of %lld elements", (long long)nrows, (long long)n_per_row);
    if (nrows == 0) return CLEX_OK;
    if (!src || !dst) return clex_fail(CLEX_E_INVALID, "NULL source or destination");
    const imat_fn f = imatrix ? imat_quantizer(type) : NULL;
    if (f)
        f(src, dst, n_per_row, nrows, imatrix);
    else
        t->from_float_ref(src, dst, n_per_row * nrows);
    return CLEX_OK;
}
