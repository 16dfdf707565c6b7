/* The model (borrowed weights + hyper-parameters), the context (KV cache, scratch, threads,
 * rope table) and the forward pass.
 *
 * One clex_eval() call runs a whole batch through every layer inside a single thread-pool job:
 * every thread walks the same steps below and takes its share of each (rows of a matrix product,
 * tokens of a norm, (token, head) pairs of attention), with a barrier between steps.
 *
 * Rotary layout (llama.cpp's GGUF layout): pair i of a head is the adjacent elements 2i, 2i+1,
 * rotated by the angle pos * inv_freq[i]:
 *
 *     head:  [x0 x1][x2 x3] ... [x(2i) x(2i+1)] ...      (n_rot dims rotated, the rest kept)
 *     x(2i)'   = x(2i) cos a - x(2i+1) sin a
 *     x(2i+1)' = x(2i) sin a + x(2i+1) cos a
 *
 * KV cache: keys are stored after rotation (so decoding never re-rotates them), both caches as
 * [layer][kv head][position][head_dim], float32 or (clex_ctx_create_kv) f16. With f16 the new
 * keys and values are rounded to half when stored; every product and sum stays float32.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Decoding splits each KV head's keys into up to this many chunks, so every thread works on a
 * model with few KV heads; the chunks' partial results are combined afterwards. */
#define ATT_MAX_CHUNKS 16

struct clex_model {
    clex_hparams hp;
    clex_tensor tok_embd;     /* [n_embd, n_vocab] */
    clex_tensor output_norm;  /* [n_embd] */
    clex_tensor output;       /* [n_embd, n_vocab]; the embeddings when tied */
    clex_layer *layers;
    uint64_t n_params;
};

/* quantized copies of one activation matrix, one per activation type a consumer needs */
typedef struct {
    const float *f32;   /* [T, K] */
    void *q8_0;         /* [T, K/32] block_q8_0 */
    void *q8_1;         /* [T, K/32] block_q8_1 */
    int64_t k;
} acts;

struct clex_ctx {
    const clex_model *m;
    int32_t n_ctx, n_batch;
    clex_pool *pool;
    int32_t n_pairs;       /* n_rot / 2 */
    float *inv_freq;       /* [n_pairs] the table new tokens are rotated with */
    float kq_scale;        /* extra factor on q.k/sqrt(head_dim) (YaRN temperature); 1 by default */
    void *k_cache;         /* [n_layer][n_head_kv][n_ctx][head_dim] of kv_type */
    void *v_cache;         /* same */
    int32_t kv_type;       /* CLEX_TYPE_F32 or CLEX_TYPE_F16 */
    size_t kv_elt;         /* bytes per cached element */
    uint64_t kv_bytes;
    /* scratch for one batch of up to n_batch tokens */
    float *x;              /* [B, n_embd] residual stream */
    float *xn;             /* [B, max(n_embd, n_ff, q_dim)] normalised input of the next product */
    float *q;              /* [B, n_head*head_dim] */
    float *k;              /* [B, n_head_kv*head_dim] */
    float *v;              /* [B, n_head_kv*head_dim] */
    float *att;            /* [B, n_head*head_dim] */
    float *gate;           /* [B, n_ff] (becomes silu(gate) * up) */
    float *up;             /* [B, n_ff] */
    void *q8_0;            /* [B, max_k/32] */
    void *q8_1;            /* [B, max_k/32] */
    float *cs;             /* [B, n_pairs, 2] cos, sin of each token's angles */
    float *scores;         /* [n_threads, n_ctx] */
    float *part;           /* [n_head, ATT_MAX_CHUNKS, head_dim + 2]: chunked decoding's partials */
    /* row chunks of matrix products are handed out dynamically, so a thread that the OS
     * delays does not hold the others at the next barrier; step k uses counter k % 2 */
    _Atomic int64_t chunk[2];
};

/* ------------------------------------------------------------------ validation */

static const char *tname(const clex_tensor *t, const char *fallback) {
    return (t && t->name) ? t->name : fallback;
}

static uint64_t row_bytes(const clex_type_traits *tr, int64_t ne0) {
    return (uint64_t)(ne0 / tr->blck) * (uint64_t)tr->bytes;
}

static int check_tensor(const clex_tensor *t, const char *what, int64_t ne0, int64_t ne1, int f32_only) {
    const char *name = tname(t, what);
    if (!t->data) return clex_fail(CLEX_E_INVALID, "tensor '%s' is missing", name);
    const clex_type_traits *tr = clex_traits(t->type);
    if (!tr) return clex_fail(CLEX_E_UNSUPPORTED, "tensor '%s' has unknown type id %d", name, (int)t->type);
    if (!tr->weight_ok)
        return clex_fail(CLEX_E_UNSUPPORTED,
                         "tensor '%s' has type %s, which clexrt does not run (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                         name, tr->name);
    if (f32_only && t->type != CLEX_TYPE_F32)
        return clex_fail(CLEX_E_UNSUPPORTED, "tensor '%s' must be F32, not %s", name, tr->name);
    int64_t got1 = 1;
    int dims_ok = t->n_dims >= 1 && t->n_dims <= 4;
    for (int d = 0; dims_ok && d < t->n_dims; d++) dims_ok = t->ne[d] > 0 && t->ne[d] < ((int64_t)1 << 40);
    for (int d = 1; dims_ok && d < t->n_dims; d++) {   /* each dim < 2^40: the product may not fit */
        dims_ok = got1 <= INT64_MAX / t->ne[d];
        if (dims_ok) got1 *= t->ne[d];
    }
    if (!dims_ok || t->ne[0] != ne0 || got1 != (ne1 > 0 ? ne1 : 1)) {
        if (ne1 > 0)
            return clex_fail(CLEX_E_INVALID, "tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]", name,
                             (long long)t->ne[0], (long long)(t->n_dims >= 2 ? t->ne[1] : 1),
                             (long long)ne0, (long long)ne1);
        return clex_fail(CLEX_E_INVALID, "tensor '%s' has shape [%lld], expected [%lld]", name,
                         (long long)t->ne[0], (long long)ne0);
    }
    if (ne0 % tr->blck)
        return clex_fail(CLEX_E_INVALID, "tensor '%s': row length %lld is not a multiple of the %s block (%lld)",
                         name, (long long)ne0, tr->name, (long long)tr->blck);
    const uint64_t want = row_bytes(tr, ne0) * (uint64_t)(ne1 > 0 ? ne1 : 1);
    if (t->nbytes != want)
        return clex_fail(CLEX_E_INVALID, "tensor '%s' holds %llu bytes, its shape and type need %llu", name,
                         (unsigned long long)t->nbytes, (unsigned long long)want);
    return CLEX_OK;
}

static int check_hparams(const clex_hparams *hp) {
    if (hp->n_vocab <= 0 || hp->n_embd <= 0 || hp->n_layer <= 0 || hp->n_head <= 0 || hp->n_head_kv <= 0 ||
        hp->head_dim <= 0 || hp->n_ff <= 0)
        return clex_fail(CLEX_E_INVALID, "hyper-parameters must be positive (vocab %d, embd %d, layers %d, heads %d, kv heads %d, head_dim %d, ff %d)",
                         hp->n_vocab, hp->n_embd, hp->n_layer, hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_ff);
    if (hp->n_head % hp->n_head_kv)
        return clex_fail(CLEX_E_INVALID, "head count %d is not a multiple of the kv head count %d", hp->n_head,
                         hp->n_head_kv);
    if (hp->n_rot <= 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2)
        return clex_fail(CLEX_E_INVALID, "rope dimension count %d must be even and in (0, head_dim=%d]", hp->n_rot,
                         hp->head_dim);
    if (!(hp->rms_eps > 0.0f) || !isfinite(hp->rms_eps))
        return clex_fail(CLEX_E_INVALID, "RMS epsilon %g must be a positive number", (double)hp->rms_eps);
    if ((int64_t)hp->n_head * hp->head_dim > (1 << 20) || hp->n_embd > (1 << 20) || hp->n_ff > (1 << 22))
        return clex_fail(CLEX_E_INVALID, "hyper-parameters are implausibly large");
    return CLEX_OK;
}

/* ------------------------------------------------------------------ model */

static uint64_t numel(const clex_tensor *t) {
    uint64_t n = 1;
    for (int d = 0; d < t->n_dims && d < 4; d++) n *= (uint64_t)t->ne[d];
    return n;
}

int clex_model_create(const clex_hparams *hp, const clex_tensor *tok_embd, const clex_tensor *output_norm,
                      const clex_tensor *output, const clex_layer *layers, clex_model **out) {
    clex_init_once();
    if (!out) return clex_fail(CLEX_E_INVALID, "out pointer is NULL");
    *out = NULL;
    if (!hp || !tok_embd || !output_norm || !layers) return clex_fail(CLEX_E_INVALID, "a required argument is NULL");
    int rc = check_hparams(hp);
    if (rc) return rc;
    const int64_t E = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff;
    if ((rc = check_tensor(tok_embd, "token_embd.weight", E, hp->n_vocab, 0))) return rc;
    if ((rc = check_tensor(output_norm, "output_norm.weight", E, 0, 1))) return rc;
    const clex_tensor *outw = (output && output->data) ? output : tok_embd;
    if ((rc = check_tensor(outw, "output.weight", E, hp->n_vocab, 0))) return rc;
    for (int l = 0; l < hp->n_layer; l++) {
        const clex_layer *L = &layers[l];
        if ((rc = check_tensor(&L->attn_norm, "attn_norm", E, 0, 1)) || (rc = check_tensor(&L->wq, "attn_q", E, qd, 0)) ||
            (rc = check_tensor(&L->wk, "attn_k", E, kvd, 0)) || (rc = check_tensor(&L->wv, "attn_v", E, kvd, 0)) ||
            (rc = check_tensor(&L->wo, "attn_output", qd, E, 0)) || (rc = check_tensor(&L->ffn_norm, "ffn_norm", E, 0, 1)) ||
            (rc = check_tensor(&L->w_gate, "ffn_gate", E, F, 0)) || (rc = check_tensor(&L->w_up, "ffn_up", E, F, 0)) ||
            (rc = check_tensor(&L->w_down, "ffn_down", F, E, 0))) {
            if (!L->attn_norm.name) {   /* unnamed tensors: say which layer */
                char msg[512];
                snprintf(msg, sizeof msg, "%s", clex_last_error());
                return clex_fail(rc, "layer %d: %s", l, msg);
            }
            return rc;
        }
    }
    clex_model *m = calloc(1, sizeof *m);
    if (!m) return clex_fail(CLEX_E_NOMEM, "out of memory");
    m->layers = calloc((size_t)hp->n_layer, sizeof(clex_layer));
    if (!m->layers) { free(m); return clex_fail(CLEX_E_NOMEM, "out of memory"); }
    m->hp = *hp;
    m->tok_embd = *tok_embd;
    m->output_norm = *output_norm;
    m->output = *outw;
    memcpy(m->layers, layers, (size_t)hp->n_layer * sizeof(clex_layer));
    m->n_params = numel(tok_embd) + numel(output_norm) + (outw != tok_embd ? numel(outw) : 0);
    for (int l = 0; l < hp->n_layer; l++) {
        const clex_layer *L = &layers[l];
        m->n_params += numel(&L->attn_norm) + numel(&L->wq) + numel(&L->wk) + numel(&L->wv) + numel(&L->wo) +
                       numel(&L->ffn_norm) + numel(&L->w_gate) + numel(&L->w_up) + numel(&L->w_down);
    }
    *out = m;
    return CLEX_OK;
}

void clex_model_free(clex_model *m) {
    if (!m) return;
    free(m->layers);
    free(m);
}

uint64_t clex_model_n_params(const clex_model *m) { return m ? m->n_params : 0; }

/* ------------------------------------------------------------------ context */

static void *xcalloc(size_t n, size_t sz, int *fail) {
    if (n == 0) n = 1;
    void *p = calloc(n, sz);
    if (!p) *fail = 1;
    return p;
}

void clex_ctx_free(clex_ctx *c) {
    if (!c) return;
    clex_pool_free(c->pool);
    free(c->inv_freq);
    free(c->k_cache);
    free(c->v_cache);
    free(c->x);
    free(c->xn);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->att);
    free(c->gate);
    free(c->up);
    free(c->q8_0);
    free(c->q8_1);
    free(c->cs);
    free(c->scores);
    free(c->part);
    free(c);
}

int clex_ctx_create(const clex_model *m, int32_t n_ctx, int32_t n_batch, int32_t n_threads, clex_ctx **out) {
    return clex_ctx_create_kv(m, n_ctx, n_batch, n_threads, CLEX_TYPE_F32, out);
}

int clex_ctx_create_kv(const clex_model *m, int32_t n_ctx, int32_t n_batch, int32_t n_threads, int32_t kv_type,
                       clex_ctx **out) {
    if (!out) return clex_fail(CLEX_E_INVALID, "out pointer is NULL");
    *out = NULL;
    if (!m) return clex_fail(CLEX_E_INVALID, "model is NULL");
    if (kv_type != CLEX_TYPE_F32 && kv_type != CLEX_TYPE_F16)
        return clex_fail(CLEX_E_INVALID, "KV cache type %d: only F32 (%d) and F16 (%d)", kv_type, CLEX_TYPE_F32,
                         CLEX_TYPE_F16);
    if (n_ctx <= 0) return clex_fail(CLEX_E_INVALID, "n_ctx must be positive, got %d", n_ctx);
    if (n_batch <= 0) return clex_fail(CLEX_E_INVALID, "n_batch must be positive, got %d", n_batch);
    if (n_threads <= 0) n_threads = clex_physical_cores();
    if (n_batch > n_ctx) n_batch = n_ctx;
    const clex_hparams *hp = &m->hp;
    const size_t elt = kv_type == CLEX_TYPE_F16 ? 2 : 4;
    /* every product checked: n_layer * n_head_kv * n_ctx * head_dim can pass 2^64 */
    uint64_t kv_elems = 1;
    const uint64_t dims[4] = {(uint64_t)hp->n_layer, (uint64_t)hp->n_head_kv, (uint64_t)n_ctx, (uint64_t)hp->head_dim};
    for (int i = 0; i < 4; i++)
        if (__builtin_mul_overflow(kv_elems, dims[i], &kv_elems) || kv_elems > (uint64_t)SIZE_MAX / 2 / 2 / elt)
            return clex_fail(CLEX_E_NOMEM, "a KV cache of %d tokens does not fit in memory", n_ctx);
    clex_ctx *c = calloc(1, sizeof *c);
    if (!c) return clex_fail(CLEX_E_NOMEM, "out of memory");
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    c->n_pairs = hp->n_rot / 2;
    c->kq_scale = 1.0f;
    c->kv_type = kv_type;
    c->kv_elt = elt;
    int rc = clex_pool_create(n_threads, &c->pool);
    if (rc) { free(c); return rc; }
    const size_t B = (size_t)n_batch, E = (size_t)hp->n_embd, F = (size_t)hp->n_ff;
    const size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    size_t maxk = E > F ? E : F;
    if (qd > maxk) maxk = qd;
    int fail = 0;
    c->inv_freq = xcalloc((size_t)c->n_pairs, sizeof(float), &fail);
    /* calloc of a large block maps zero pages lazily: only the positions used become resident */
    c->k_cache = xcalloc(kv_elems, elt, &fail);
    c->v_cache = xcalloc(kv_elems, elt, &fail);
    c->kv_bytes = kv_elems * 2 * elt;
    c->x = xcalloc(B * E, sizeof(float), &fail);
    c->xn = xcalloc(B * maxk, sizeof(float), &fail);
    c->q = xcalloc(B * qd, sizeof(float), &fail);
    c->k = xcalloc(B * kvd, sizeof(float), &fail);
    c->v = xcalloc(B * kvd, sizeof(float), &fail);
    c->att = xcalloc(B * qd, sizeof(float), &fail);
    c->gate = xcalloc(B * F, sizeof(float), &fail);
    c->up = xcalloc(B * F, sizeof(float), &fail);
    c->q8_0 = xcalloc(B * (maxk / QK + 1), sizeof(block_q8_0), &fail);
    c->q8_1 = xcalloc(B * (maxk / QK + 1), sizeof(block_q8_1), &fail);
    c->cs = xcalloc(B * (size_t)c->n_pairs * 2, sizeof(float), &fail);
    c->scores = xcalloc((size_t)clex_pool_size(c->pool) * (size_t)n_ctx, sizeof(float), &fail);
    c->part = xcalloc((size_t)hp->n_head * ATT_MAX_CHUNKS * ((size_t)hp->head_dim + 2), sizeof(float), &fail);
    if (fail) {
        clex_ctx_free(c);
        return clex_fail(CLEX_E_NOMEM, "out of memory allocating a context of %d tokens (KV cache %.1f MiB)", n_ctx,
                         (double)kv_elems * 2.0 * (double)elt / (1024.0 * 1024.0));
    }
    *out = c;
    return CLEX_OK;
}

int32_t clex_ctx_n_ctx(const clex_ctx *c) { return c ? c->n_ctx : 0; }
int32_t clex_ctx_n_threads(const clex_ctx *c) { return c ? clex_pool_size(c->pool) : 0; }
uint64_t clex_ctx_kv_bytes(const clex_ctx *c) { return c ? c->kv_bytes : 0; }
int32_t clex_ctx_kv_type(const clex_ctx *c) { return c ? c->kv_type : -1; }

int clex_ctx_set_rope(clex_ctx *c, const float *inv_freq, int32_t n) {
    if (!c || !inv_freq) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (n != c->n_pairs)
        return clex_fail(CLEX_E_INVALID, "rope table has %d entries, the model rotates %d pairs", n, c->n_pairs);
    for (int32_t i = 0; i < n; i++)
        if (!isfinite(inv_freq[i])) return clex_fail(CLEX_E_INVALID, "rope table entry %d is not finite", i);
    memcpy(c->inv_freq, inv_freq, (size_t)n * sizeof(float));
    return CLEX_OK;
}

int clex_ctx_set_attn_scale(clex_ctx *c, float kq_scale) {
    if (!c) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (!isfinite(kq_scale) || !(kq_scale > 0.0f))
        return clex_fail(CLEX_E_INVALID, "attention scale must be finite and positive, got %g", (double)kq_scale);
    c->kq_scale = kq_scale;
    return CLEX_OK;
}

/* ------------------------------------------------------------------ small ops */

static void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* rotate pairs (2i, 2i+1) of one head by the angles whose cos/sin are cs[2i], cs[2i+1] */
static void rope_apply(float *h, const float *cs, int32_t n_pairs) {
    for (int32_t i = 0; i < n_pairs; i++) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float a = h[2 * i], b = h[2 * i + 1];
        h[2 * i] = a * c - b * s;
        h[2 * i + 1] = a * s + b * c;
    }
}

static void split(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi) {
    *lo = n * ith / nth;
    *hi = n * (ith + 1) / nth;
}

/* Dynamic row scheduling for one step of the forward pass. Every thread calls sched_begin with
 * the same step number; thread 0 clears the counter the *next* step will use (nobody touches it
 * until after the barrier that ends this step). */
typedef struct {
    _Atomic int64_t *ctr;
    int64_t rows, chunk;
} sched;

static sched sched_begin(clex_ctx *c, int *step, int ith, int nth, int64_t rows) {
    sched sc = {&c->chunk[*step & 1], rows, 0};
    if (ith == 0) atomic_store_explicit(&c->chunk[(*step + 1) & 1], 0, memory_order_relaxed);
    int64_t ch = rows / ((int64_t)nth * 8);
    ch = (ch + 15) / 16 * 16;
    sc.chunk = ch < 16 ? 16 : ch;
    (*step)++;
    return sc;
}

static int sched_next(sched *sc, int64_t *lo, int64_t *hi) {
    const int64_t j = atomic_fetch_add_explicit(sc->ctr, 1, memory_order_relaxed);
    *lo = j * sc->chunk;
    if (*lo >= sc->rows) return 0;
    *hi = *lo + sc->chunk < sc->rows ? *lo + sc->chunk : sc->rows;
    return 1;
}

/* ------------------------------------------------------------------ matrix products */

/* Convert rows [t0, t1) of x [T, k] into every activation type the consumers want. */
static void prepare_acts(acts *a, const float *x, int64_t k, int64_t t0, int64_t t1, int need0, int need1,
                         void *buf0, void *buf1) {
    a->f32 = x;
    a->k = k;
    a->q8_0 = buf0;
    a->q8_1 = buf1;
    const int64_t nb = k / QK;
    for (int64_t t = t0; t < t1; t++) {
        if (need0) clex_traits(CLEX_TYPE_Q8_0)->from_float(x + t * k, (block_q8_0 *)buf0 + t * nb, k);
        if (need1) clex_traits(CLEX_TYPE_Q8_1)->from_float(x + t * k, (block_q8_1 *)buf1 + t * nb, k);
    }
}

static const void *act_row(const acts *a, int32_t type, int64_t t) {
    const int64_t nb = a->k / QK;
    switch (type) {
    case CLEX_TYPE_Q8_0: return (const block_q8_0 *)a->q8_0 + t * nb;
    case CLEX_TYPE_Q8_1: return (const block_q8_1 *)a->q8_1 + t * nb;
    default: return a->f32 + t * a->k;
    }
}

#define ROW_BLOCK 16   /* weight rows kept hot in L1 while every token of the batch passes */

/* y[t, r] (+)= W[r, :] . x[t, :]  for rows [r0, r1) and all n_tok tokens */
static void matmul_rows(const clex_tensor *w, const acts *a, int64_t n_tok, float *y, int64_t ystride, int accumulate,
                        int64_t r0, int64_t r1) {
    const clex_type_traits *tr = clex_traits(w->type);
    const int64_t k = w->ne[0];
    const uint64_t rb = row_bytes(tr, k);
    const uint8_t *base = w->data;
    const clex_vec_dot_fn dot = tr->vec_dot;
    const clex_vec_dot4_fn dot4 = tr->vec_dot4;
    const size_t xstride = (const uint8_t *)act_row(a, tr->vec_dot_type, 1) - (const uint8_t *)act_row(a, tr->vec_dot_type, 0);
    for (int64_t rs = r0; rs < r1; rs += ROW_BLOCK) {
        const int64_t re = rs + ROW_BLOCK < r1 ? rs + ROW_BLOCK : r1;
        int64_t t = 0;
        if (dot4) {
            for (; t + 4 <= n_tok; t += 4) {
                const void *xr = act_row(a, tr->vec_dot_type, t);
                for (int64_t r = rs; r < re; r++) {
                    float s4[4];
                    dot4(k, s4, base + (uint64_t)r * rb, xr, xstride);
                    for (int j = 0; j < 4; j++) {
                        float *yr = y + (t + j) * ystride + r;
                        *yr = accumulate ? *yr + s4[j] : s4[j];
                    }
                }
            }
        }
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

static int need_type(const clex_tensor *w, int32_t act_type) {
    return clex_traits(w->type)->vec_dot_type == act_type;
}

/* ------------------------------------------------------------------ forward */

typedef struct {
    clex_ctx *c;
    const int32_t *tokens;
    int32_t n_tok;
    int32_t n_past;
    float *logits;        /* NULL, [n_vocab] (last) or [n_tok, n_vocab] */
    int32_t all_logits;
} fwd_args;

/* normalise rows of x into c->xn and quantize them for the given consumers */
static void norm_and_quantize(clex_ctx *c, acts *a, const float *w_norm, const clex_tensor *const *cons, int ncons,
                              int64_t t0, int64_t t1, int ith, int nth) {
    const clex_hparams *hp = &c->m->hp;
    const int64_t E = hp->n_embd;
    int need0 = 0, need1 = 0;
    for (int i = 0; i < ncons; i++) {
        need0 |= need_type(cons[i], CLEX_TYPE_Q8_0);
        need1 |= need_type(cons[i], CLEX_TYPE_Q8_1);
    }
    int64_t lo, hi;
    split(t1 - t0, ith, nth, &lo, &hi);
    for (int64_t t = t0 + lo; t < t0 + hi; t++) rmsnorm(c->xn + t * E, c->x + t * E, w_norm, E, hp->rms_eps);
    prepare_acts(a, c->xn, E, t0 + lo, t0 + hi, need0, need1, c->q8_0, c->q8_1);
}

static void quantize_rows(clex_ctx *c, acts *a, const float *x, int64_t k, const clex_tensor *w, int64_t n_tok,
                          int ith, int nth) {
    int64_t lo, hi;
    split(n_tok, ith, nth, &lo, &hi);
    prepare_acts(a, x, k, lo, hi, need_type(w, CLEX_TYPE_Q8_0), need_type(w, CLEX_TYPE_Q8_1), c->q8_0, c->q8_1);
}

/* ------------------------------------------------------------------ attention */

typedef struct {
    const float *k32, *v32;        /* one KV head's rows [n_ctx, D] (f32 cache) */
    const clex_fp16 *k16, *v16;    /* or (f16 cache) */
} kv_head;

/* One query head over keys [p0, p1) of its KV head, scores and value sum each one kernel call
 * over the whole run of keys (the run stays in cache for the group's next head); `sc` holds
 * p1 - p0 scores. part == NULL: [p0, p1) is every key, and `out` gets the normalised result
 * (scores, max, exp, sum, then the sum of (e/sum) * v). Otherwise part gets (max, sum of exp,
 * unnormalised sum of e * v) for the combination step. */
static void attend_head(int64_t D, const float *q, const kv_head *kv, int64_t p0, int64_t p1,
                        float scale, float *sc, float *out, float *part) {
    const int64_t n = p1 - p0;
    if (kv->k16) clex_ops.scores16(n, D, q, kv->k16 + p0 * D, scale, sc);
    else clex_ops.scores32(n, D, q, kv->k32 + p0 * D, scale, sc);
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = sc[i] > m ? sc[i] : m;
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sc[i] = expf(sc[i] - m);
        acc += sc[i];
    }
    if (!part) {
        const float inv = (float)(1.0 / acc);
        for (int64_t i = 0; i < n; i++) sc[i] *= inv;
    }
    float *o = part ? part + 2 : out;
    memset(o, 0, (size_t)D * sizeof(float));
    if (kv->v16) clex_ops.wsum16(n, D, sc, kv->v16 + p0 * D, o);
    else clex_ops.wsum32(n, D, sc, kv->v32 + p0 * D, o);
    if (part) {
        part[0] = m;
        part[1] = (float)acc;
    }
}

/* How many chunks decoding one token splits each KV head's keys into: enough units for every
 * thread twice over, none shorter than 64 keys; 1 (no split) for a batch. */
static int64_t attn_chunks(int64_t T, int64_t HKV, int64_t n_keys, int nth) {
    if (T != 1 || nth == 1) return 1;
    int64_t ch = (2 * nth + HKV - 1) / HKV;
    if (ch > ATT_MAX_CHUNKS) ch = ATT_MAX_CHUNKS;
    if (ch > n_keys / 64) ch = n_keys / 64;
    return ch < 1 ? 1 : ch;
}

static void forward_job(void *varg, int ith, int nth) {
    fwd_args *fa = varg;
    clex_ctx *c = fa->c;
    const clex_model *m = c->m;
    const clex_hparams *hp = &m->hp;
    const int64_t T = fa->n_tok, E = hp->n_embd, F = hp->n_ff, D = hp->head_dim;
    const int64_t H = hp->n_head, HKV = hp->n_head_kv, qd = H * D, kvd = HKV * D;
    const int32_t P = c->n_pairs;
    const int64_t n_ctx = c->n_ctx;
    clex_pool *pool = c->pool;
    acts a;
    int64_t lo, hi;
    int step = 0;

    /* embeddings and the rotation angles of each token */
    {
        const clex_type_traits *tr = clex_traits(m->tok_embd.type);
        const uint64_t rb = row_bytes(tr, E);
        split(T, ith, nth, &lo, &hi);
        for (int64_t t = lo; t < hi; t++) {
            tr->to_float((const uint8_t *)m->tok_embd.data + (uint64_t)fa->tokens[t] * rb, c->x + t * E, E);
            const float pos = (float)(fa->n_past + t);
            for (int32_t i = 0; i < P; i++) {
                const float ang = pos * c->inv_freq[i];
                c->cs[(t * P + i) * 2] = cosf(ang);
                c->cs[(t * P + i) * 2 + 1] = sinf(ang);
            }
        }
    }
    clex_pool_barrier(pool);

    const float scale = c->kq_scale / sqrtf((float)D);
    float *scores = c->scores + (int64_t)ith * n_ctx;

    for (int l = 0; l < hp->n_layer; l++) {
        const clex_layer *L = &m->layers[l];
        const int64_t layer_off = (int64_t)l * HKV * n_ctx * D;   /* elements */
        const int f16 = c->kv_type == CLEX_TYPE_F16;
        float *kc = f16 ? NULL : (float *)c->k_cache + layer_off;
        float *vc = f16 ? NULL : (float *)c->v_cache + layer_off;
        clex_fp16 *kc16 = f16 ? (clex_fp16 *)c->k_cache + layer_off : NULL;
        clex_fp16 *vc16 = f16 ? (clex_fp16 *)c->v_cache + layer_off : NULL;

        /* attention input: norm, quantize, then q, k, v as one row space */
        const clex_tensor *qkv[3] = {&L->wq, &L->wk, &L->wv};
        norm_and_quantize(c, &a, L->attn_norm.data, qkv, 3, 0, T, ith, nth);
        clex_pool_barrier(pool);
        {
            const int64_t b1 = qd, b2 = qd + kvd, b3 = qd + 2 * kvd;
            sched sc = sched_begin(c, &step, ith, nth, b3);
            while (sched_next(&sc, &lo, &hi)) {
                if (lo < b1) matmul_rows(&L->wq, &a, T, c->q, qd, 0, lo, hi < b1 ? hi : b1);
                if (hi > b1 && lo < b2) matmul_rows(&L->wk, &a, T, c->k, kvd, 0, (lo > b1 ? lo : b1) - b1, (hi < b2 ? hi : b2) - b1);
                if (hi > b2) matmul_rows(&L->wv, &a, T, c->v, kvd, 0, (lo > b2 ? lo : b2) - b2, (hi < b3 ? hi : b3) - b2);
            }
        }
        clex_pool_barrier(pool);

        /* rotate new keys and append keys and values to the cache */
        split(T * HKV, ith, nth, &lo, &hi);
        for (int64_t j = lo; j < hi; j++) {
            const int64_t t = j / HKV, h = j % HKV, pos = fa->n_past + t;
            float *ks = c->k + t * kvd + h * D, *vs = c->v + t * kvd + h * D;
            rope_apply(ks, c->cs + t * P * 2, P);
            if (f16) {
                clex_ops.to_f16(ks, kc16 + (h * n_ctx + pos) * D, D);
                clex_ops.to_f16(vs, vc16 + (h * n_ctx + pos) * D, D);
            } else {
                memcpy(kc + (h * n_ctx + pos) * D, ks, (size_t)D * sizeof(float));
                memcpy(vc + (h * n_ctx + pos) * D, vs, (size_t)D * sizeof(float));
            }
        }
        split(T * H, ith, nth, &lo, &hi);      /* and rotate the queries */
        for (int64_t j = lo; j < hi; j++) rope_apply(c->q + j * D, c->cs + (j / H) * P * 2, P);
        clex_pool_barrier(pool);

        /* causal attention, one (token, KV head, chunk of keys) at a time: the query heads of a
         * group take turns over the same run of cached keys and values */
        {
            const int64_t grp = H / HKV;
            const int64_t chunks = attn_chunks(T, HKV, fa->n_past + 1, nth);
            split(T * HKV * chunks, ith, nth, &lo, &hi);
            for (int64_t j = lo; j < hi; j++) {
                const int64_t t = j / (HKV * chunks), hk = (j / chunks) % HKV, ch = j % chunks;
                const int64_t n_keys = fa->n_past + t + 1;
                const int64_t p0 = n_keys * ch / chunks, p1 = n_keys * (ch + 1) / chunks;
                kv_head kv = {NULL, NULL, NULL, NULL};
                if (f16) kv.k16 = kc16 + hk * n_ctx * D, kv.v16 = vc16 + hk * n_ctx * D;
                else kv.k32 = kc + hk * n_ctx * D, kv.v32 = vc + hk * n_ctx * D;
                for (int64_t h = hk * grp; h < (hk + 1) * grp; h++)
                    attend_head(D, c->q + t * qd + h * D, &kv, p0, p1, scale, scores, c->att + t * qd + h * D,
                                chunks > 1 ? c->part + (h * ATT_MAX_CHUNKS + ch) * (D + 2) : NULL);
            }
            if (chunks > 1) {   /* combine the chunks of each head (T = 1) */
                clex_pool_barrier(pool);
                split(H, ith, nth, &lo, &hi);
                for (int64_t h = lo; h < hi; h++) {
                    const float *ph = c->part + h * ATT_MAX_CHUNKS * (D + 2);
                    float m = -INFINITY;
                    for (int64_t ch = 0; ch < chunks; ch++) m = ph[ch * (D + 2)] > m ? ph[ch * (D + 2)] : m;
                    double l = 0.0;
                    for (int64_t ch = 0; ch < chunks; ch++) l += (double)ph[ch * (D + 2) + 1] * exp((double)ph[ch * (D + 2)] - m);
                    float *out = c->att + h * D;
                    memset(out, 0, (size_t)D * sizeof(float));
                    for (int64_t ch = 0; ch < chunks; ch++)
                        clex_ops.axpy_f32(D, (float)(exp((double)ph[ch * (D + 2)] - m) / l), ph + ch * (D + 2) + 2, out);
                }
            }
        }
        clex_pool_barrier(pool);

        /* output projection, added to the residual stream */
        quantize_rows(c, &a, c->att, qd, &L->wo, T, ith, nth);
        clex_pool_barrier(pool);
        {
            sched sc = sched_begin(c, &step, ith, nth, E);
            while (sched_next(&sc, &lo, &hi)) matmul_rows(&L->wo, &a, T, c->x, E, 1, lo, hi);
        }
        clex_pool_barrier(pool);

        /* feed-forward: silu(gate) * up, then down, added to the residual stream */
        const clex_tensor *gu[2] = {&L->w_gate, &L->w_up};
        norm_and_quantize(c, &a, L->ffn_norm.data, gu, 2, 0, T, ith, nth);
        clex_pool_barrier(pool);
        {
            sched sc = sched_begin(c, &step, ith, nth, F);
            while (sched_next(&sc, &lo, &hi)) {
                matmul_rows(&L->w_gate, &a, T, c->gate, F, 0, lo, hi);
                matmul_rows(&L->w_up, &a, T, c->up, F, 0, lo, hi);
                for (int64_t t = 0; t < T; t++) {
                    float *g = c->gate + t * F;
                    const float *u = c->up + t * F;
                    for (int64_t r = lo; r < hi; r++) g[r] = g[r] / (1.0f + expf(-g[r])) * u[r];
                }
            }
        }
        clex_pool_barrier(pool);
        quantize_rows(c, &a, c->gate, F, &L->w_down, T, ith, nth);
        clex_pool_barrier(pool);
        {
            sched sc = sched_begin(c, &step, ith, nth, E);
            while (sched_next(&sc, &lo, &hi)) matmul_rows(&L->w_down, &a, T, c->x, E, 1, lo, hi);
        }
        clex_pool_barrier(pool);
    }

    if (!fa->logits) return;
    /* final norm and the vocabulary projection, for the last token or all of them */
    const int64_t t0 = fa->all_logits ? 0 : T - 1;
    const clex_tensor *ow[1] = {&m->output};
    norm_and_quantize(c, &a, m->output_norm.data, ow, 1, t0, T, ith, nth);
    clex_pool_barrier(pool);
    acts ao = a;   /* rows t0.. of the prepared activations */
    ao.f32 = a.f32 + t0 * E;
    ao.q8_0 = (block_q8_0 *)a.q8_0 + t0 * (E / QK);
    ao.q8_1 = (block_q8_1 *)a.q8_1 + t0 * (E / QK);
    sched sc = sched_begin(c, &step, ith, nth, hp->n_vocab);
    while (sched_next(&sc, &lo, &hi)) matmul_rows(&m->output, &ao, T - t0, fa->logits, hp->n_vocab, 0, lo, hi);
}

int clex_eval(clex_ctx *c, const int32_t *tokens, int32_t n_tok, int32_t n_past, float *logits, int32_t all_logits) {
    if (!c || !tokens) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (n_tok <= 0) return clex_fail(CLEX_E_INVALID, "no tokens to evaluate");
    if (n_past < 0) return clex_fail(CLEX_E_INVALID, "n_past %d is negative", n_past);
    if ((int64_t)n_past + n_tok > c->n_ctx)
        return clex_fail(CLEX_E_FULL, "%d tokens at position %d do not fit in the context of %d", n_tok, n_past,
                         c->n_ctx);
    const int32_t V = c->m->hp.n_vocab;
    for (int32_t i = 0; i < n_tok; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return clex_fail(CLEX_E_INVALID, "token id %d at index %d is outside the vocabulary (0..%d)", tokens[i], i,
                             V - 1);
    for (int32_t done = 0; done < n_tok; done += c->n_batch) {
        const int32_t nb = n_tok - done < c->n_batch ? n_tok - done : c->n_batch;
        const int last = done + nb == n_tok;
        fwd_args fa = {c, tokens + done, nb, n_past + done, NULL, all_logits};
        atomic_store(&c->chunk[0], 0);
        atomic_store(&c->chunk[1], 0);
        if (logits && all_logits) fa.logits = logits + (int64_t)done * V;
        else if (logits && last) fa.logits = logits;
        clex_pool_run(c->pool, forward_job, &fa);
    }
    return CLEX_OK;
}

/* ------------------------------------------------------------------ KV cache surgery */

typedef struct {
    clex_ctx *c;
    const float *old_inv;   /* table the cached keys carry */
    int32_t n;              /* positions to process */
    int32_t src0, dst0;     /* position p = src0 + j moves to dst0 + j (rerotate: both 0) */
    float *cs;              /* [n, n_pairs, 2] cos, sin of each position's change of angle */
    float *rows;            /* [n_threads, head_dim] scratch (f16 cache) */
} rot_args;

/* For each (layer, kv head): keys at src0+j, rotated with old_inv at that position, become keys
 * at dst0+j rotated with the current table. The change of angle is formed in double from the two
 * float angles the forward pass would use, so the result matches a fresh rotation; its cos and
 * sin are computed once per (position, pair) and shared by every layer and head. */
static void rotate_job(void *varg, int ith, int nth) {
    rot_args *ra = varg;
    clex_ctx *c = ra->c;
    const clex_hparams *hp = &c->m->hp;
    const int64_t D = hp->head_dim, n_ctx = c->n_ctx, P = c->n_pairs;
    const int64_t units = (int64_t)hp->n_layer * hp->n_head_kv;
    int64_t lo, hi;

    split(ra->n, ith, nth, &lo, &hi);
    for (int64_t j = lo; j < hi; j++) {
        const float ps = (float)(ra->src0 + j), pd = (float)(ra->dst0 + j);
        float *cs = ra->cs + j * P * 2;
        for (int64_t i = 0; i < P; i++) {
            const double delta = (double)(pd * c->inv_freq[i]) - (double)(ps * ra->old_inv[i]);
            cs[2 * i] = (float)cos(delta);
            cs[2 * i + 1] = (float)sin(delta);
        }
    }
    clex_pool_barrier(c->pool);

    /* positions in increasing order within each (layer, head): a shift moves keys down, so a
     * position is always read before anything is written over it */
    const size_t elt = c->kv_elt;
    float *row = ra->rows + (int64_t)ith * D;    /* an f16 key in float while it turns */
    split(units, ith, nth, &lo, &hi);
    for (int64_t u = lo; u < hi; u++) {
        char *kb = (char *)c->k_cache + (size_t)(u * n_ctx * D) * elt;
        char *vb = (char *)c->v_cache + (size_t)(u * n_ctx * D) * elt;
        for (int64_t j = 0; j < ra->n; j++) {
            const int64_t ps = ra->src0 + j, pd = ra->dst0 + j;
            const float *cs = ra->cs + j * P * 2;
            float *k = row;
            if (elt == 2) clex_ops.from_f16((const clex_fp16 *)(kb + (size_t)(ps * D) * 2), row, D);
            else k = (float *)(kb + (size_t)(ps * D) * 4);
            float *kd = elt == 2 ? row : (float *)(kb + (size_t)(pd * D) * 4);
            for (int64_t i = 0; i < P; i++) {
                const float a = k[2 * i], b = k[2 * i + 1], co = cs[2 * i], sn = cs[2 * i + 1];
                kd[2 * i] = a * co - b * sn;
                kd[2 * i + 1] = a * sn + b * co;
            }
            if (elt == 2) {
                clex_ops.to_f16(row, (clex_fp16 *)(kb + (size_t)(pd * D) * 2), D);
            } else if (pd != ps) {
                memmove(kd + 2 * P, k + 2 * P, (size_t)(D - 2 * P) * sizeof(float));
            }
            if (pd != ps) memmove(vb + (size_t)(pd * D) * elt, vb + (size_t)(ps * D) * elt, (size_t)D * elt);
        }
    }
}

static int rotate_run(clex_ctx *c, const float *old_inv, int32_t n, int32_t src0, int32_t dst0) {
    if (n <= 0) return CLEX_OK;
    const size_t n_cs = (size_t)n * (size_t)c->n_pairs * 2;
    const size_t n_rows = (size_t)clex_pool_size(c->pool) * (size_t)c->m->hp.head_dim;
    float *cs = malloc((n_cs + n_rows) * sizeof(float));
    if (!cs) return clex_fail(CLEX_E_NOMEM, "out of memory rotating %d cached positions", n);
    rot_args ra = {c, old_inv, n, src0, dst0, cs, cs + n_cs};
    clex_pool_run(c->pool, rotate_job, &ra);
    free(cs);
    return CLEX_OK;
}

int clex_ctx_rerotate(clex_ctx *c, const float *old_inv, int32_t n_past) {
    if (!c || !old_inv) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (n_past < 0 || n_past > c->n_ctx)
        return clex_fail(CLEX_E_INVALID, "n_past %d outside the context of %d", n_past, c->n_ctx);
    return rotate_run(c, old_inv, n_past, 0, 0);
}

int clex_ctx_shift(clex_ctx *c, int32_t n_past, int32_t n_keep, int32_t n_discard) {
    if (!c) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (n_past < 0 || n_past > c->n_ctx || n_keep < 0 || n_discard <= 0 || (int64_t)n_keep + n_discard > n_past)
        return clex_fail(CLEX_E_INVALID, "bad context shift: n_past %d, keep %d, discard %d (context %d)", n_past,
                         n_keep, n_discard, c->n_ctx);
    return rotate_run(c, c->inv_freq, n_past - n_keep - n_discard, n_keep + n_discard, n_keep);
}

/* ------------------------------------------------------------------ standalone product (tests, tools) */

typedef struct {
    const clex_tensor *w;
    acts a;
    int64_t n_tok;
    int64_t rows;       /* W's rows as checked: ne[1] only when n_dims >= 2 */
    float *y;
} mm_args;

static void mm_job(void *varg, int ith, int nth) {
    mm_args *ma = varg;
    int64_t lo, hi;
    split(ma->rows, ith, nth, &lo, &hi);
    matmul_rows(ma->w, &ma->a, ma->n_tok, ma->y, ma->rows, 0, lo, hi);
}

int clex_matmul(const clex_tensor *w, const float *x, int64_t n_tok, float *y, int32_t n_threads) {
    clex_init_once();
    if (!w || !x || !y || n_tok <= 0) return clex_fail(CLEX_E_INVALID, "bad matmul arguments");
    const int64_t ne1 = w->n_dims >= 2 ? w->ne[1] : 1;
    int rc = check_tensor(w, "weight", w->ne[0], ne1, 0);
    if (rc) return rc;
    const int64_t k = w->ne[0];
    void *b0 = NULL, *b1 = NULL;
    const int32_t vt = clex_traits(w->type)->vec_dot_type;
    if (vt == CLEX_TYPE_Q8_0 && !(b0 = calloc((size_t)(n_tok * (k / QK)), sizeof(block_q8_0))))
        return clex_fail(CLEX_E_NOMEM, "out of memory");
    if (vt == CLEX_TYPE_Q8_1 && !(b1 = calloc((size_t)(n_tok * (k / QK)), sizeof(block_q8_1))))
        return clex_fail(CLEX_E_NOMEM, "out of memory");
    mm_args ma = {w, {0}, n_tok, ne1, y};
    prepare_acts(&ma.a, x, k, 0, n_tok, vt == CLEX_TYPE_Q8_0, vt == CLEX_TYPE_Q8_1, b0, b1);
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
