/* The KV cache's contents: writing a token's rows, re-rotating the cached keys to a new rope
 * table (clex_ctx_rerotate) and the context shift (clex_ctx_shift). A row is converted from
 * floats when it is stored and back to floats when a key turns (clex_kv_put_row, _get_row):
 * an f16 or Q8_0 key is rotated in float32 and stored again, rounded or requantized, as
 * llama.cpp's rope shift of a quantized cache does; values are only ever moved, as stored. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

void clex_kv_put_row(const clex_ctx *c, const float *x, void *row) {
    const int64_t D = c->m->hp.head_dim;
    switch (c->kv_type) {
    case CLEX_TYPE_F16: clex_k.to_f16(x, row, D); break;
    case CLEX_TYPE_Q8_0: clex_k.from_float[CLEX_TYPE_Q8_0](x, row, D); break;   /* the reference's bytes */
    default: memcpy(row, x, (size_t)D * sizeof(float)); break;
    }
}

void clex_kv_get_row(const clex_ctx *c, const void *row, float *x) {
    const int64_t D = c->m->hp.head_dim;
    switch (c->kv_type) {
    case CLEX_TYPE_F16: clex_k.from_f16(row, x, D); break;
    case CLEX_TYPE_Q8_0: clex_traits(CLEX_TYPE_Q8_0)->to_float(row, x, D); break;
    default: memcpy(x, row, (size_t)D * sizeof(float)); break;
    }
}

void clex_kv_store(clex_ctx *c, int l, int64_t h, int64_t pos, const float *k, const float *v) {
    clex_kv_put_row(c, k, kv_row_at(c, c->k_cache, l, h, pos));
    clex_kv_put_row(c, v, kv_row_at(c, c->v_cache, l, h, pos));
}

/* ------------------------------------------------------------------ re-rotation and shift */

typedef struct {
    clex_ctx *c;
    int32_t set;            /* the rope table whose layers turn */
    const float *old_inv;   /* table the cached keys carry */
    const float *new_inv;   /* the one they get: the set's current table */
    int32_t n;              /* positions to process */
    int32_t src0, dst0;     /* position p = src0 + j moves to dst0 + j (rerotate: both 0) */
    float *cs;              /* [n, n_pairs, 2] cos, sin of each position's change of angle */
    float *rows;            /* [n_threads, head_dim] scratch (a key while it turns) */
} rot_args;

/* The change of angle of each (position, pair), formed in double from the two float angles the
 * forward pass would use, so the result matches a fresh rotation; its cos and sin are computed
 * once and shared by every layer and head. */
static void rotation_angles(const rot_args *ra, int ith, int nth) {
    const clex_ctx *c = ra->c;
    const int64_t P = c->n_pairs;
    int64_t lo, hi;
    split(ra->n, ith, nth, &lo, &hi);
    for (int64_t j = lo; j < hi; j++) {
        const float ps = (float)(ra->src0 + j), pd = (float)(ra->dst0 + j);
        float *cs = ra->cs + j * P * 2;
        for (int64_t i = 0; i < P; i++) {
            const double delta = (double)(pd * ra->new_inv[i]) - (double)(ps * ra->old_inv[i]);
            cs[2 * i] = (float)cos(delta);
            cs[2 * i + 1] = (float)sin(delta);
        }
    }
}

/* One (layer, kv head) unit's keys at src0 + j, turned to dst0 + j, values moved with them.
 * Positions go in increasing order: a shift moves keys down, so a position is always read
 * before anything is written over it. row: head_dim floats of scratch (the key while it
 * turns). */
static void rotate_unit(const rot_args *ra, int64_t u, float *row) {
    const clex_ctx *c = ra->c;
    const int64_t P = c->n_pairs, l = u / c->m->hp.n_head_kv, h = u % c->m->hp.n_head_kv;
    const int32_t layout = c->m->hp.rope_layout;
    for (int64_t j = 0; j < ra->n; j++) {
        const int64_t ps = ra->src0 + j, pd = ra->dst0 + j;
        clex_kv_get_row(c, kv_row_at(c, c->k_cache, l, h, ps), row);
        rope_rotate(layout, row, row, ra->cs + j * P * 2, (int32_t)P);
        clex_kv_put_row(c, row, kv_row_at(c, c->k_cache, l, h, pd));
        if (pd != ps) memmove(kv_row_at(c, c->v_cache, l, h, pd), kv_row_at(c, c->v_cache, l, h, ps), c->kv_row);
    }
}

/* For each (layer, kv head) of the layers of table ra->set: keys at src0+j, rotated with
 * old_inv at that position, become keys at dst0+j rotated with the set's current table. */
static void rotate_job(void *varg, int ith, int nth) {
    const rot_args *ra = varg;
    const clex_ctx *c = ra->c;
    rotation_angles(ra, ith, nth);
    clex_pool_barrier(c->pool);
    const int64_t HKV = c->m->hp.n_head_kv, units = (int64_t)c->m->hp.n_layer * HKV;
    int64_t lo, hi;
    split(units, ith, nth, &lo, &hi);
    for (int64_t u = lo; u < hi; u++)
        if (c->m->layers[u / HKV].rope_set == ra->set) rotate_unit(ra, u, ra->rows + (int64_t)ith * c->m->hp.head_dim);
}

static int rotate_run(clex_ctx *c, int32_t set, const float *old_inv, int32_t n, int32_t src0, int32_t dst0) {
    if (n <= 0) return CLEX_OK;
    const size_t n_cs = (size_t)n * (size_t)c->n_pairs * 2;
    const size_t n_rows = (size_t)clex_pool_size(c->pool) * (size_t)c->m->hp.head_dim;
    float *cs = malloc((n_cs + n_rows) * sizeof(float));
    if (!cs) return clex_fail(CLEX_E_NOMEM, "out of memory rotating %d cached positions", n);
    const float *cur = c->inv_freq + (int64_t)set * c->n_pairs;
    rot_args ra = {c, set, old_inv ? old_inv : cur, cur, n, src0, dst0, cs, cs + n_cs};
    clex_pool_run(c->pool, rotate_job, &ra);
    free(cs);
    return CLEX_OK;
}

int clex_ctx_rerotate_set(clex_ctx *c, int32_t set, const float *old_inv, int32_t n_past) {
    if (!c || !old_inv) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (set < 0 || set >= c->m->n_sets)
        return clex_fail(CLEX_E_INVALID, "rope table %d: the model has %d", set, c->m->n_sets);
    if (n_past < 0 || n_past > c->n_ctx)
        return clex_fail(CLEX_E_INVALID, "n_past %d outside the context of %d", n_past, c->n_ctx);
    return rotate_run(c, set, old_inv, n_past, 0, 0);
}

int clex_ctx_rerotate(clex_ctx *c, const float *old_inv, int32_t n_past) {
    return clex_ctx_rerotate_set(c, 0, old_inv, n_past);
}

int clex_ctx_shift(clex_ctx *c, int32_t n_past, int32_t n_keep, int32_t n_discard) {
    if (!c) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (n_past < 0 || n_past > c->n_ctx || n_keep < 0 || n_discard <= 0 || (int64_t)n_keep + n_discard > n_past)
        return clex_fail(CLEX_E_INVALID, "bad context shift: n_past %d, keep %d, discard %d (context %d)", n_past,
                         n_keep, n_discard, c->n_ctx);
    int rc = CLEX_OK;   /* every table's layers, each turned by its own table */
    for (int32_t s = 0; s < c->m->n_sets && !rc; s++)
        rc = rotate_run(c, s, NULL, n_past - n_keep - n_discard, n_keep + n_discard, n_keep);
    return rc;
}

/* ------------------------------------------------------------------ saved state */

uint64_t clex_ctx_kv_state_bytes(const clex_ctx *c, int32_t n_past) {
    if (!c || n_past < 0 || n_past > c->n_ctx) return 0;
    const clex_hparams *hp = &c->m->hp;
    return 2 * (uint64_t)hp->n_layer * (uint64_t)hp->n_head_kv * (uint64_t)n_past * (uint64_t)c->kv_row;
}

/* rows [0, n_past) of every (layer, kv head) of both caches to (to_buf) or from buf */
static int kv_copy(const clex_ctx *c, int32_t n_past, char *buf, uint64_t nbytes, int to_buf) {
    if (!c || !buf) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (n_past < 0 || n_past > c->n_ctx)
        return clex_fail(CLEX_E_INVALID, "n_past %d outside the context of %d", n_past, c->n_ctx);
    if (nbytes != clex_ctx_kv_state_bytes(c, n_past))
        return clex_fail(CLEX_E_INVALID, "KV state of %d positions is %llu bytes, not %llu", n_past,
                         (unsigned long long)clex_ctx_kv_state_bytes(c, n_past), (unsigned long long)nbytes);
    const int64_t units = (int64_t)c->m->hp.n_layer * c->m->hp.n_head_kv;
    const size_t run = (size_t)n_past * c->kv_row, whole = (size_t)c->n_ctx * c->kv_row;
    char *caches[2] = {c->k_cache, c->v_cache};
    for (int kv = 0; kv < 2; kv++)
        for (int64_t u = 0; u < units; u++) {
            char *row = caches[kv] + (size_t)u * whole, *b = buf + ((size_t)kv * (size_t)units + (size_t)u) * run;
            if (to_buf) memcpy(b, row, run);
            else memcpy(row, b, run);
        }
    return CLEX_OK;
}

int clex_ctx_kv_read(const clex_ctx *c, int32_t n_past, void *dst, uint64_t nbytes) {
    return kv_copy(c, n_past, dst, nbytes, 1);
}

int clex_ctx_kv_write(clex_ctx *c, int32_t n_past, const void *src, uint64_t nbytes) {
    return kv_copy(c, n_past, (char *)src, nbytes, 0);
}
