/* The forward pass.
 *
 * One clex_eval() call runs a whole batch through every layer inside a single thread-pool job:
 * every thread walks the same steps and takes its share of each (rows of a matrix product,
 * tokens of a norm, (token, head) pairs of attention), with a barrier between steps:
 *
 *   embed               x = tok_embd[tokens]; the rope angles of each token's position
 *   for each layer:
 *     attention_block   n = norm(x); q, k, v = wq n, wk n, wv n; rotate q, k; cache k, v;
 *                       x += wo attention(q, cached k, cached v)
 *     ffn_block         n = norm(x); x += w_down (silu(w_gate n) * w_up n)
 *   output              logits = output norm(x), for the last token or all of them
 *
 * The architecture fields of clex_hparams are read where they matter: the norm (norm_row), the
 * rope (rope_rotate, model.h), the FFN's activation (ffn_act) and the residual wiring (layer).
 * clex_model_create refuses the values none of them implements yet.
 */
#include <math.h>
#include <string.h>

#include "model.h"

typedef struct {
    clex_ctx *c;
    const int32_t *tokens;
    int32_t n_tok;
    int32_t n_past;
    float *logits;        /* NULL, [n_vocab] (last) or [n_tok, n_vocab] */
    int32_t all_logits;
} fwd_args;

/* One thread's walk through the steps of one batch. */
typedef struct {
    clex_ctx *c;
    const clex_model *m;
    const clex_hparams *hp;
    const fwd_args *fa;
    int64_t T;            /* tokens in the batch */
    int ith, nth;
    int step;             /* row-scheduled products so far (clex_sched_begin) */
    clex_acts a;          /* the prepared input of the next product */
} fwd;

static void sync(const fwd *f) { clex_pool_barrier(f->c->pool); }

/* ------------------------------------------------------------------ the architecture's choices */

static void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* The norm (hp->norm_kind) of one row of the residual stream. */
static void norm_row(const clex_hparams *hp, float *out, const float *x, const float *w) {
    switch (hp->norm_kind) {
    case CLEX_NORM_RMS:
    default:   /* the only kind check_hparams admits yet; CLEX_NORM_LAYER would add a bias */
        rmsnorm(out, x, w, hp->n_embd, hp->rms_eps);
        break;
    }
}

/* The FFN's activation (hp->ffn_kind) over rows [lo, hi) of one token: gate = act(gate) * up. */
static void ffn_act(const clex_hparams *hp, float *g, const float *u, int64_t lo, int64_t hi) {
    switch (hp->ffn_kind) {
    case CLEX_FFN_SWIGLU:
    default:   /* the only kind check_hparams admits yet (GeGLU: gelu(gate); GELU: no gate) */
        for (int64_t r = lo; r < hi; r++) g[r] = g[r] / (1.0f + expf(-g[r])) * u[r];
        break;
    }
}

/* ------------------------------------------------------------------ steps */

/* cos, sin of the angles pos * inv_freq[i] of one position */
static void rope_angles(const clex_ctx *c, float pos, float *cs) {
    for (int32_t i = 0; i < c->n_pairs; i++) {
        const float ang = pos * c->inv_freq[i];
        cs[2 * i] = cosf(ang);
        cs[2 * i + 1] = sinf(ang);
    }
}

/* x = the tokens' embeddings; cs = the angles of their positions */
static void embed(fwd *f) {
    clex_ctx *c = f->c;
    const int64_t E = f->hp->n_embd;
    const clex_type_traits *tr = clex_traits(f->m->tok_embd.type);
    const uint64_t rb = row_bytes(tr, E);
    int64_t lo, hi;
    split(f->T, f->ith, f->nth, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) {
        tr->to_float((const uint8_t *)f->m->tok_embd.data + (uint64_t)f->fa->tokens[t] * rb, c->x + t * E, E);
        rope_angles(c, (float)(f->fa->n_past + t), c->cs + t * c->n_pairs * 2);
    }
    sync(f);
}

/* xn = norm(x) for tokens [t0, T), prepared for the products that read it (cons) */
static void norm_step(fwd *f, const float *w_norm, const clex_tensor *const *cons, int ncons, int64_t t0) {
    clex_ctx *c = f->c;
    const int64_t E = f->hp->n_embd;
    unsigned need = 0;
    for (int i = 0; i < ncons; i++) need |= clex_act_need(cons[i]);
    int64_t lo, hi;
    split(f->T - t0, f->ith, f->nth, &lo, &hi);
    for (int64_t t = t0 + lo; t < t0 + hi; t++) norm_row(f->hp, c->xn + t * E, c->x + t * E, w_norm);
    clex_prepare_acts(&f->a, c->xn, E, t0 + lo, t0 + hi, need, c->act);
    sync(f);
}

/* y (+)= w a for n_tok tokens into rows of `rows` floats, the rows shared out dynamically */
static void product(fwd *f, const clex_tensor *w, const clex_acts *a, int64_t n_tok, float *y, int64_t rows,
                    int accumulate) {
    int64_t lo, hi;
    clex_sched sc = clex_sched_begin(f->c, &f->step, f->ith, f->nth, rows);
    while (clex_sched_next(&sc, &lo, &hi)) clex_matmul_rows(w, a, n_tok, y, rows, accumulate, lo, hi);
}

/* x += w in, for in [T, k]: a block's output projection, added to the residual stream */
static void add_to_residual(fwd *f, const clex_tensor *w, const float *in, int64_t k) {
    int64_t lo, hi;
    split(f->T, f->ith, f->nth, &lo, &hi);
    clex_prepare_acts(&f->a, in, k, lo, hi, clex_act_need(w), f->c->act);
    sync(f);
    product(f, w, &f->a, f->T, f->c->x, f->hp->n_embd, 1);
    sync(f);
}

/* q, k, v = wq n, wk n, wv n, the three matrices' rows one space under one schedule */
static void qkv_step(fwd *f, const clex_layer *L) {
    clex_ctx *c = f->c;
    const int64_t D = f->hp->head_dim, T = f->T;
    const int64_t qd = f->hp->n_head * D, kvd = f->hp->n_head_kv * D;
    const int64_t b1 = qd, b2 = qd + kvd, b3 = qd + 2 * kvd;
    int64_t lo, hi;
    clex_sched sc = clex_sched_begin(c, &f->step, f->ith, f->nth, b3);
    while (clex_sched_next(&sc, &lo, &hi)) {
        if (lo < b1) clex_matmul_rows(&L->wq, &f->a, T, c->q, qd, 0, lo, hi < b1 ? hi : b1);
        if (hi > b1 && lo < b2)
            clex_matmul_rows(&L->wk, &f->a, T, c->k, kvd, 0, (lo > b1 ? lo : b1) - b1, (hi < b2 ? hi : b2) - b1);
        if (hi > b2)
            clex_matmul_rows(&L->wv, &f->a, T, c->v, kvd, 0, (lo > b2 ? lo : b2) - b2, (hi < b3 ? hi : b3) - b2);
    }
    sync(f);
}

/* rotate the new keys and append them and the values to layer l's cache; rotate the queries */
static void rope_step(fwd *f, int l) {
    clex_ctx *c = f->c;
    const clex_hparams *hp = f->hp;
    const int64_t D = hp->head_dim, H = hp->n_head, HKV = hp->n_head_kv, kvd = HKV * D;
    const int32_t P = c->n_pairs;
    int64_t lo, hi;
    split(f->T * HKV, f->ith, f->nth, &lo, &hi);
    for (int64_t j = lo; j < hi; j++) {
        const int64_t t = j / HKV, h = j % HKV;
        float *ks = c->k + t * kvd + h * D;
        rope_rotate(hp->rope_layout, ks, ks, c->cs + t * P * 2, P);
        clex_kv_store(c, l, h, f->fa->n_past + t, ks, c->v + t * kvd + h * D);
    }
    split(f->T * H, f->ith, f->nth, &lo, &hi);
    for (int64_t j = lo; j < hi; j++) rope_rotate(hp->rope_layout, c->q + j * D, c->q + j * D, c->cs + (j / H) * P * 2, P);
    sync(f);
}

/* gate = act(w_gate n) * (w_up n), the rows shared out dynamically */
static void gate_up_step(fwd *f, const clex_layer *L) {
    clex_ctx *c = f->c;
    const int64_t F = f->hp->n_ff, T = f->T;
    int64_t lo, hi;
    clex_sched sc = clex_sched_begin(c, &f->step, f->ith, f->nth, F);
    while (clex_sched_next(&sc, &lo, &hi)) {
        clex_matmul_rows(&L->w_gate, &f->a, T, c->gate, F, 0, lo, hi);
        clex_matmul_rows(&L->w_up, &f->a, T, c->up, F, 0, lo, hi);
        for (int64_t t = 0; t < T; t++) ffn_act(f->hp, c->gate + t * F, c->up + t * F, lo, hi);
    }
    sync(f);
}

/* ------------------------------------------------------------------ blocks */

static void attention_block(fwd *f, const clex_layer *L, int l) {
    const clex_tensor *qkv[3] = {&L->wq, &L->wk, &L->wv};
    norm_step(f, L->attn_norm.data, qkv, 3, 0);
    qkv_step(f, L);
    rope_step(f, l);
    clex_attention(f->c, l, f->T, f->fa->n_past, f->ith, f->nth);
    sync(f);
    add_to_residual(f, &L->wo, f->c->att, (int64_t)f->hp->n_head * f->hp->head_dim);
}

static void ffn_block(fwd *f, const clex_layer *L) {
    const clex_tensor *gu[2] = {&L->w_gate, &L->w_up};
    norm_step(f, L->ffn_norm.data, gu, 2, 0);
    gate_up_step(f, L);
    add_to_residual(f, &L->w_down, f->c->gate, f->hp->n_ff);
}

/* One layer, wired as hp->parallel_residual says: sequential (the FFN normalises the x the
 * attention block has added to). Parallel (both blocks read the same x) is refused by
 * check_hparams for now; it would take the FFN's norm before the attention's projection. */
static void layer(fwd *f, int l) {
    const clex_layer *L = &f->m->layers[l];
    switch (f->hp->parallel_residual) {
    case 0:
    default:
        attention_block(f, L, l);
        ffn_block(f, L);
        break;
    }
}

/* the final norm and the vocabulary projection, for the last token or all of them */
static void output(fwd *f) {
    const fwd_args *fa = f->fa;
    if (!fa->logits) return;
    const int64_t t0 = fa->all_logits ? 0 : f->T - 1;
    const clex_tensor *ow[1] = {&f->m->output};
    norm_step(f, f->m->output_norm.data, ow, 1, t0);
    const clex_acts ao = clex_acts_from(&f->a, t0);
    product(f, &f->m->output, &ao, f->T - t0, fa->logits, f->hp->n_vocab, 0);
}

static void forward_job(void *varg, int ith, int nth) {
    const fwd_args *fa = varg;
    fwd f = {fa->c, fa->c->m, &fa->c->m->hp, fa, fa->n_tok, ith, nth, 0, {0}};
    embed(&f);
    for (int l = 0; l < f.hp->n_layer; l++) layer(&f, l);
    output(&f);
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
