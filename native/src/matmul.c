/* Matrix products: activations prepared once per consumer type, rows of a weight matrix against
 * every token of a batch (the four-row kernels where a type has them), the forward pass's
 * dynamic row scheduling, and the standalone clex_matmul (tests, tools). */
#include <stdlib.h>

#include "model.h"

/* ------------------------------------------------------------------ activations */

void clex_prepare_acts(clex_acts *a, const float *x, int64_t k, int64_t t0, int64_t t1, int need0, int need1,
                       void *buf0, void *buf1) {
    a->f32 = x;
    a->k = k;
    a->q8_0 = buf0;
    a->q8_1 = buf1;
    const int64_t nb = k / QK;
    for (int64_t t = t0; t < t1; t++) {
        if (need0) clex_k.from_float[CLEX_TYPE_Q8_0](x + t * k, (block_q8_0 *)buf0 + t * nb, k);
        if (need1) clex_k.from_float[CLEX_TYPE_Q8_1](x + t * k, (block_q8_1 *)buf1 + t * nb, k);
    }
}

clex_acts clex_acts_from(const clex_acts *a, int64_t t0) {
    clex_acts r = *a;
    r.f32 = a->f32 + t0 * a->k;
    r.q8_0 = (block_q8_0 *)a->q8_0 + t0 * (a->k / QK);
    r.q8_1 = (block_q8_1 *)a->q8_1 + t0 * (a->k / QK);
    return r;
}

static const void *act_row(const clex_acts *a, int32_t type, int64_t t) {
    const int64_t nb = a->k / QK;
    switch (type) {
    case CLEX_TYPE_Q8_0: return (const block_q8_0 *)a->q8_0 + t * nb;
    case CLEX_TYPE_Q8_1: return (const block_q8_1 *)a->q8_1 + t * nb;
    default: return a->f32 + t * a->k;
    }
}

int clex_needs_act(const clex_tensor *w, int32_t act_type) {
    return clex_traits(w->type)->vec_dot_type == act_type;
}

/* ------------------------------------------------------------------ row products */

#define ROW_BLOCK 16   /* weight rows kept hot in L1 while every token of the batch passes */

/* rows [rs, re) against tokens [t, t + 4) with the four-row kernel */
static void rows_x4(const clex_tensor *w, const clex_acts *a, int64_t t, float *y, int64_t ystride, int accumulate,
                    int64_t rs, int64_t re) {
    const clex_type_traits *tr = clex_traits(w->type);
    const clex_vec_dot4_fn dot4 = clex_k.vec_dot4[w->type];
    const int64_t k = w->ne[0];
    const uint64_t rb = row_bytes(tr, k);
    const uint8_t *base = w->data;
    const void *xr = act_row(a, tr->vec_dot_type, t);
    const size_t xstride = (const uint8_t *)act_row(a, tr->vec_dot_type, t + 1) - (const uint8_t *)xr;
    for (int64_t r = rs; r < re; r++) {
        float s4[4];
        dot4(k, s4, base + (uint64_t)r * rb, xr, xstride);
        for (int j = 0; j < 4; j++) {
            float *yr = y + (t + j) * ystride + r;
            *yr = accumulate ? *yr + s4[j] : s4[j];
        }
    }
}

void clex_matmul_rows(const clex_tensor *w, const clex_acts *a, int64_t n_tok, float *y, int64_t ystride,
                      int accumulate, int64_t r0, int64_t r1) {
    const clex_type_traits *tr = clex_traits(w->type);
    const int64_t k = w->ne[0];
    const uint64_t rb = row_bytes(tr, k);
    const uint8_t *base = w->data;
    const clex_vec_dot_fn dot = clex_k.vec_dot[w->type];
    const int four = clex_k.vec_dot4[w->type] != NULL;
    for (int64_t rs = r0; rs < r1; rs += ROW_BLOCK) {
        const int64_t re = rs + ROW_BLOCK < r1 ? rs + ROW_BLOCK : r1;
        int64_t t = 0;
        if (four)
            for (; t + 4 <= n_tok; t += 4) rows_x4(w, a, t, y, ystride, accumulate, rs, re);
        for (; t < n_tok; t++) {
            const void *xr = act_row(a, tr->vec_dot_type, t);
            float *yr = y + t * ystride;
            for (int64_t r = rs; r < re; r++) {
                float s;
                dot(k, &s, base + (uint64_t)r * rb, xr);
                yr[r] = accumulate ? yr[r] + s : s;
            }
        }
    }
}

/* ------------------------------------------------------------------ scheduling */

clex_sched clex_sched_begin(clex_ctx *c, int *step, int ith, int nth, int64_t rows) {
    clex_sched sc = {&c->chunk[*step & 1], rows, 0};
    if (ith == 0) atomic_store_explicit(&c->chunk[(*step + 1) & 1], 0, memory_order_relaxed);
    int64_t ch = rows / ((int64_t)nth * 8);
    ch = (ch + 15) / 16 * 16;
    sc.chunk = ch < 16 ? 16 : ch;
    (*step)++;
    return sc;
}

int clex_sched_next(clex_sched *sc, int64_t *lo, int64_t *hi) {
    const int64_t j = atomic_fetch_add_explicit(sc->ctr, 1, memory_order_relaxed);
    *lo = j * sc->chunk;
    if (*lo >= sc->rows) return 0;
    *hi = *lo + sc->chunk < sc->rows ? *lo + sc->chunk : sc->rows;
    return 1;
}

/* ------------------------------------------------------------------ standalone product */

typedef struct {
    const clex_tensor *w;
    clex_acts a;
    int64_t n_tok;
    int64_t rows;       /* W's rows as checked: ne[1] only when n_dims >= 2 */
    float *y;
} mm_args;

static void mm_job(void *varg, int ith, int nth) {
    mm_args *ma = varg;
    int64_t lo, hi;
    split(ma->rows, ith, nth, &lo, &hi);
    clex_matmul_rows(ma->w, &ma->a, ma->n_tok, ma->y, ma->rows, 0, lo, hi);
}

int clex_matmul(const clex_tensor *w, const float *x, int64_t n_tok, float *y, int32_t n_threads) {
    clex_init_once();
    if (!w || !x || !y || n_tok <= 0) return clex_fail(CLEX_E_INVALID, "bad matmul arguments");
    const int64_t ne1 = w->n_dims >= 2 ? w->ne[1] : 1;
    int rc = clex_check_tensor(w, "weight", w->ne[0], ne1, 0);
    if (rc) return rc;
    const int64_t k = w->ne[0];
    void *b0 = NULL, *b1 = NULL;
    const int32_t vt = clex_traits(w->type)->vec_dot_type;
    if (vt == CLEX_TYPE_Q8_0 && !(b0 = calloc((size_t)(n_tok * (k / QK)), sizeof(block_q8_0))))
        return clex_fail(CLEX_E_NOMEM, "out of memory");
    if (vt == CLEX_TYPE_Q8_1 && !(b1 = calloc((size_t)(n_tok * (k / QK)), sizeof(block_q8_1))))
        return clex_fail(CLEX_E_NOMEM, "out of memory");
    mm_args ma = {w, {0}, n_tok, ne1, y};
    clex_prepare_acts(&ma.a, x, k, 0, n_tok, vt == CLEX_TYPE_Q8_0, vt == CLEX_TYPE_Q8_1, b0, b1);
    clex_pool *pool;
    rc = clex_pool_create(n_threads > 0 ? n_threads : 1, &pool);
    if (!rc) {
        clex_pool_run(pool, mm_job, &ma);
        clex_pool_free(pool);
    }
    free(b0);
    free(b1);
    return rc;
}
