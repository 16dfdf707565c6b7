/* The forward pass.
 *
 * One clex_eval() call runs a whole batch through every layer inside a single thread-pool job:
 * every thread walks the same steps and takes its share of each (rows of a matrix product,
 * tokens of a norm, (token, head) pairs of attention), with a barrier between steps:
 *
 *   embed               x = tok_embd[tokens] (* embd_scale); the rope angles of each token's
 *                       position under each rope table
 *   for each layer:
 *     attention_block   n = norm(x); q, k, v = wq n + bq, ...; q, k = qk-norm(q, k) per head;
 *                       rotate q, k; cache k, v; a = wo attention(q, cached k, v) + bo;
 *                       x += post-norm(a)
 *     ffn_block         n = norm(x); x += post-norm(w_down act(w_gate n, w_up n) + b_down)
 *   output              logits = output(norm(x)) (+ bias, soft-capped), last token or all
 *
 * clex_eval_batch runs the same steps over one token of each of several contexts of the model:
 * the route (clex_route, model.h) gives each token's context and position, which only the rope
 * angles (embed), the KV write (rope_step) and attention read; everything else works on rows of
 * the batch, so the products read each weight once for all the contexts. A plain eval is the
 * route with every token on the one context.
 *
 * The architecture fields of clex_hparams / clex_layer are read where they matter: the norm
 * (norm_row), the rope layout (rope_rotate, model.h), the FFN's activation (clex_k.act), the
 * residual wiring (layer), and the optional tensors (biases, q/k norms, post-norms: absent ones
 * do nothing).
 */
#include <math.h>
#include <string.h>

#include "model.h"

typedef struct {
    clex_ctx *c;          /* the running context: its pool and scratch */
    const int32_t *tokens;
    int32_t n_tok;
    clex_route route;     /* each token's context and position */
    float *logits;        /* NULL, [n_vocab] (last) or [n_tok, n_vocab] */
    int32_t all_logits;
    float *hidden;        /* NULL or [n_tok, n_embd]: every token's output-normed row */
    int32_t one_by_one;   /* products token by token with the one-token kernels (an exact batch) */
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
    uint64_t *prof;       /* profiling: this thread's counters (clex_ctx_profile), else NULL */
    uint64_t last;        /* when its last note was taken */
} fwd;

/* profiling: the time since the last note was work of `step` */
static inline void note_work(fwd *f, int step) {
    if (!f->prof) return;
    const uint64_t now = clex_now_ns();
    f->prof[step * 3] += now - f->last;
    f->last = now;
}

/* the barrier that ends a step (profiling: its work, then its wait) */
static void sync(fwd *f, int step) {
    note_work(f, step);
    clex_pool_barrier(f->c->pool);
    if (!f->prof) return;
    const uint64_t now = clex_now_ns();
    f->prof[step * 3 + 1] += now - f->last;
    f->prof[step * 3 + 2]++;
    f->last = now;
}

static const float *opt(const clex_tensor *t) { return (const float *)t->data; }

/* rows [r0, r0 + n) of a 2-D weight matrix, as a matrix of their own */
static clex_tensor row_view(const clex_tensor *t, int64_t r0, int64_t n) {
    clex_tensor v = *t;
    const uint64_t rb = row_bytes(clex_traits(t->type), t->ne[0]);
    v.data = (const uint8_t *)t->data + (uint64_t)r0 * rb;
    v.ne[1] = n;
    v.nbytes = rb * (uint64_t)n;
    return v;
}

/* ------------------------------------------------------------------ the architecture's choices */

static void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* (x - mean) / sqrt(var + eps) * w + b, b optional */
static void layernorm(float *out, const float *x, const float *w, const float *b, int64_t n, float eps) {
    double sum = 0.0, ss = 0.0;
    for (int64_t i = 0; i < n; i++) sum += x[i];
    const double mean = sum / (double)n;
    for (int64_t i = 0; i < n; i++) ss += ((double)x[i] - mean) * ((double)x[i] - mean);
    const float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps)), fm = (float)mean;
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] - fm) * scale * w[i] + (b ? b[i] : 0.0f);
}

/* The norm (hp->norm_kind) of one row of the residual stream; b: the layer norm's bias or NULL. */
static void norm_row(const clex_hparams *hp, float *out, const float *x, const float *w, const float *b) {
    if (hp->norm_kind == CLEX_NORM_LAYER) layernorm(out, x, w, b, hp->n_embd, hp->rms_eps);
    else rmsnorm(out, x, w, hp->n_embd, hp->rms_eps);
}

/* y[t, lo..hi) += b[lo..hi) for T tokens of rows `rows` apart (b NULL: nothing) */
static void add_bias(float *y, int64_t rows, int64_t T, const float *b, int64_t lo, int64_t hi) {
    if (!b) return;
    for (int64_t t = 0; t < T; t++)
        for (int64_t r = lo; r < hi; r++) y[t * rows + r] += b[r];
}

/* Tokens per product call that give every token its one-token result: four where the type's
 * four-row kernel agrees with its one-row kernel bit for bit (and its tile kernels, which do
 * not, start later), else one. */
static int64_t exact_group(const clex_tensor *w) {
    if (!clex_dot4_exact(w->type)) return 1;
    int64_t g = 4;
    const clex_tile_kernel *tk = clex_k.tiles ? &clex_k.tiles->type[w->type] : NULL;
    if (tk && tk->bytes && tk->min_tok <= g) g = tk->min_tok - 1;
    return g < 1 ? 1 : g;
}

/* y[t, lo..hi) (+)= W[lo..hi) . a[t] for n_tok tokens: all at once (the kernels for n_tok
 * tokens), or with one_by_one in groups that the kernels treat as a one-token eval does, so
 * every row is bit for bit its token's own decode (the rows [lo, hi) stay in cache meanwhile) */
static inline void mat_rows(const fwd *f, const clex_tensor *w, const clex_acts *a, int64_t n_tok, float *y,
                            int64_t ystride, int accumulate, int64_t lo, int64_t hi) {
    if (!f->fa->one_by_one) {
        clex_matmul_rows(w, a, n_tok, y, ystride, accumulate, lo, hi);
        return;
    }
    const int64_t g = exact_group(w);
    for (int64_t t = 0; t < n_tok; t += g) {
        const clex_acts at = clex_acts_from(a, t);
        clex_matmul_rows(w, &at, n_tok - t < g ? n_tok - t : g, y + t * ystride, ystride, accumulate, lo, hi);
    }
}

/* ------------------------------------------------------------------ steps */

/* cos, sin of the angles pos * inv_freq[i] of one position */
static void rope_angles(const float *inv_freq, int32_t n_pairs, float pos, float *cs) {
    for (int32_t i = 0; i < n_pairs; i++) {
        const float ang = pos * inv_freq[i];
        cs[2 * i] = cosf(ang);
        cs[2 * i + 1] = sinf(ang);
    }
}

/* x = the tokens' embeddings (scaled); their positions' angles under every rope table */
static void embed(fwd *f) {
    clex_ctx *c = f->c;
    const int64_t E = f->hp->n_embd;
    const clex_type_traits *tr = clex_traits(f->m->tok_embd.type);
    const uint64_t rb = row_bytes(tr, E);
    const float es = f->hp->embd_scale;
    int64_t lo, hi;
    split(f->T, f->ith, f->nth, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) {
        float *x = c->x + t * E;
        tr->to_float((const uint8_t *)f->m->tok_embd.data + (uint64_t)f->fa->tokens[t] * rb, x, E);
        if (es != 0.0f && es != 1.0f)
            for (int64_t i = 0; i < E; i++) x[i] *= es;
        const clex_ctx *tc = route_ctx(c, &f->fa->route, t);   /* its own tables */
        for (int s = 0; s < f->m->n_sets; s++)
            rope_angles(tc->inv_freq + (int64_t)s * c->n_pairs, c->n_pairs, (float)route_pos(&f->fa->route, t),
                        set_angles(c, s, t));
    }
    sync(f, PROF_EMBED);
}

/* Decoding one token, each thread prepares a product's whole input itself, into its own row
 * (ith) of the activation buffers and xn, and goes on without a barrier: a row of a few
 * thousand values costs less than making the threads meet (two fewer barriers per block).
 * A batch, or a context whose buffers have fewer rows than threads, shares the rows out. */
static int own_rows(const fwd *f) { return f->T == 1 && f->c->n_batch >= f->nth; }

/* xn = norm(x) for tokens [t0, T), prepared for the products that read it (cons). only_cons:
 * nothing but those products reads xn, so one token's row may be each thread's own. */
static void norm_step(fwd *f, int step, const clex_tensor *w_norm, const clex_tensor *b_norm,
                      const clex_tensor *const *cons, int ncons, int64_t t0, int only_cons) {
    clex_ctx *c = f->c;
    const int64_t E = f->hp->n_embd;
    unsigned need = 0;
    for (int i = 0; i < ncons; i++) need |= clex_act_need(cons[i]);
    if (only_cons && t0 == 0 && own_rows(f)) {
        float *xn = c->xn + f->ith * E;
        norm_row(f->hp, xn, c->x, opt(w_norm), opt(b_norm));
        clex_prepare_row(&f->a, xn, E, f->ith, need, c->act);
        note_work(f, step);
        return;
    }
    int64_t lo, hi;
    split(f->T - t0, f->ith, f->nth, &lo, &hi);
    for (int64_t t = t0 + lo; t < t0 + hi; t++) norm_row(f->hp, c->xn + t * E, c->x + t * E, opt(w_norm), opt(b_norm));
    clex_prepare_acts(&f->a, c->xn, E, t0 + lo, t0 + hi, need, c->act);
    sync(f, step);
}

/* y (+)= w a (+ b) for n_tok tokens into rows of `rows` floats, the rows shared out dynamically */
static void product(fwd *f, const clex_tensor *w, const clex_tensor *b, const clex_acts *a, int64_t n_tok, float *y,
                    int64_t rows, int accumulate) {
    int64_t lo, hi;
    clex_sched sc = clex_sched_begin(f->c, &f->step, f->ith, f->nth, rows);
    while (clex_sched_next(&sc, &lo, &hi)) {
        mat_rows(f, w, a, n_tok, y, rows, accumulate, lo, hi);
        add_bias(y, rows, n_tok, opt(b), lo, hi);
    }
}

/* dst += post-norm(w in + b), for in [T, k]: a block's output projection, added to the residual
 * stream (dst: x, or the parallel residual's buffer, which accumulate = 0 overwrites). Without
 * a post-norm the product accumulates into dst directly; with one it goes through xn (free
 * here: the block's input was read) and each token's row is normalised and added. */
static void project_out(fwd *f, int step, const clex_tensor *w, const clex_tensor *b, const clex_tensor *post,
                        const float *in, int64_t k, float *dst, int accumulate) {
    clex_ctx *c = f->c;
    const int64_t E = f->hp->n_embd;
    int64_t lo, hi;
    split(f->T, f->ith, f->nth, &lo, &hi);
    if (own_rows(f)) {
        clex_prepare_row(&f->a, in, k, f->ith, clex_act_need(w), c->act);
    } else {
        clex_prepare_acts(&f->a, in, k, lo, hi, clex_act_need(w), c->act);
        sync(f, step);
    }
    if (!post->data) {
        product(f, w, b, &f->a, f->T, dst, E, accumulate);
        sync(f, step);
        return;
    }
    product(f, w, b, &f->a, f->T, c->xn, E, 0);
    sync(f, step);
    for (int64_t t = lo; t < hi; t++) {
        float *y = c->xn + t * E, *d = dst + t * E;
        rmsnorm(y, y, opt(post), E, f->hp->rms_eps);
        for (int64_t i = 0; i < E; i++) d[i] = accumulate ? d[i] + y[i] : y[i];
    }
    sync(f, step);
}

/* q, k, v = wq n + bq, wk n + bk, wv n + bv, the three matrices' rows one space under one schedule */
static void qkv_step(fwd *f, const clex_layer *L) {
    clex_ctx *c = f->c;
    const int64_t D = f->hp->head_dim, T = f->T;
    const int64_t qd = f->hp->n_head * D, kvd = f->hp->n_head_kv * D;
    const int64_t b1 = qd, b2 = qd + kvd, b3 = qd + 2 * kvd;
    int64_t lo, hi;
    clex_sched sc = clex_sched_begin(c, &f->step, f->ith, f->nth, b3);
    while (clex_sched_next(&sc, &lo, &hi)) {
        if (lo < b1) {
            const int64_t r1 = hi < b1 ? hi : b1;
            mat_rows(f, &L->wq, &f->a, T, c->q, qd, 0, lo, r1);
            add_bias(c->q, qd, T, opt(&L->bq), lo, r1);
        }
        if (hi > b1 && lo < b2) {
            const int64_t r0 = (lo > b1 ? lo : b1) - b1, r1 = (hi < b2 ? hi : b2) - b1;
            mat_rows(f, &L->wk, &f->a, T, c->k, kvd, 0, r0, r1);
            add_bias(c->k, kvd, T, opt(&L->bk), r0, r1);
        }
        if (hi > b2) {
            const int64_t r0 = (lo > b2 ? lo : b2) - b2, r1 = (hi < b3 ? hi : b3) - b2;
            mat_rows(f, &L->wv, &f->a, T, c->v, kvd, 0, r0, r1);
            add_bias(c->v, kvd, T, opt(&L->bv), r0, r1);
        }
    }
    sync(f, PROF_QKV);
}

/* one head of q or k: its RMS norm (if the layer has one), then the rotation */
static void head_rope(const clex_hparams *hp, float *h, const float *norm, const float *cs, int32_t P) {
    if (norm) rmsnorm(h, h, norm, hp->head_dim, hp->rms_eps);
    rope_rotate(hp->rope_layout, h, h, cs, P);
}

/* rotate the new keys and append them and the values to layer l's cache; rotate the queries */
static void rope_step(fwd *f, const clex_layer *L, int l) {
    clex_ctx *c = f->c;
    const clex_hparams *hp = f->hp;
    const int64_t D = hp->head_dim, H = hp->n_head, HKV = hp->n_head_kv, kvd = HKV * D;
    const int32_t P = c->n_pairs;
    int64_t lo, hi;
    split(f->T * HKV, f->ith, f->nth, &lo, &hi);
    for (int64_t j = lo; j < hi; j++) {
        const int64_t t = j / HKV, h = j % HKV;
        float *ks = c->k + t * kvd + h * D;
        head_rope(hp, ks, opt(&L->k_norm), set_angles(c, L->rope_set, t), P);
        clex_kv_store(route_ctx(c, &f->fa->route, t), l, h, route_pos(&f->fa->route, t), ks, c->v + t * kvd + h * D);
    }
    split(f->T * H, f->ith, f->nth, &lo, &hi);
    for (int64_t j = lo; j < hi; j++) head_rope(hp, c->q + j * D, opt(&L->q_norm), set_angles(c, L->rope_set, j / H), P);
    sync(f, PROF_ROPE);
}

/* gate = act(w_gate a + b, w_up a + b_up) for n_tok tokens of acts a, the rows shared out
 * dynamically (no gate: the up projection goes into `gate` and the activation works on it alone) */
static void gate_up_step(fwd *f, int step, const clex_tensor *w_gate, const clex_tensor *w_up,
                         const clex_tensor *b_up, int64_t T) {
    clex_ctx *c = f->c;
    const int64_t F = f->hp->n_ff;
    const int gated = f->hp->ffn_kind != CLEX_FFN_GELU;
    int64_t lo, hi;
    clex_sched sc = clex_sched_begin(c, &f->step, f->ith, f->nth, F);
    while (clex_sched_next(&sc, &lo, &hi)) {
        if (!gated) {   /* act(up), in place */
            mat_rows(f, w_up, &f->a, T, c->gate, F, 0, lo, hi);
            add_bias(c->gate, F, T, opt(b_up), lo, hi);
            for (int64_t t = 0; t < T; t++) clex_k.act(f->hp->ffn_kind, hi - lo, c->gate + t * F + lo, NULL);
            continue;
        }
        /* gate's rows, then up's a slice at a time into this thread's buffer (rows [r0, r1) of
         * w_up as a matrix of their own, the up values of token t at up[t * n]) */
        mat_rows(f, w_gate, &f->a, T, c->gate, F, 0, lo, hi);
        float *up = c->up + (int64_t)f->ith * c->n_batch * CLEX_UP_ROWS;
        for (int64_t r0 = lo; r0 < hi; r0 += CLEX_UP_ROWS) {
            const int64_t n = hi - r0 < CLEX_UP_ROWS ? hi - r0 : CLEX_UP_ROWS;
            const clex_tensor wu = row_view(w_up, r0, n);
            mat_rows(f, &wu, &f->a, T, up, n, 0, 0, n);
            if (b_up->data) add_bias(up, n, T, (const float *)b_up->data + r0, 0, n);
            for (int64_t t = 0; t < T; t++) clex_k.act(f->hp->ffn_kind, n, c->gate + t * F + r0, up + t * n);
        }
    }
    sync(f, step);
}

/* ------------------------------------------------------------------ mixture of experts */

static const clex_tensor NO_TENSOR;

/* expert e's matrix in a stacked [ne0, ne1, n_expert] tensor, as a 2-D tensor */
static clex_tensor expert_view(const clex_tensor *t, int64_t e) {
    clex_tensor v = *t;
    const uint64_t rb = row_bytes(clex_traits(t->type), t->ne[0]);
    v.n_dims = 2;
    v.ne[2] = 1;
    v.data = (const uint8_t *)t->data + (uint64_t)e * (uint64_t)t->ne[1] * rb;
    v.nbytes = rb * (uint64_t)t->ne[1];
    return v;
}

/* a token's experts: the k best of n router logits (ties: the lower index), each weighted by
 * its softmax probability renormalised over the k (Mixtral's rule) */
static void select_experts(const float *logit, int32_t n, int32_t k, int32_t *sel, float *w) {
    float mx = logit[0];
    for (int32_t i = 1; i < n; i++) mx = logit[i] > mx ? logit[i] : mx;
    double sum = 0.0;
    for (int32_t j = 0; j < k; j++) {
        int32_t best = -1;
        for (int32_t i = 0; i < n; i++) {
            int taken = 0;
            for (int32_t q = 0; q < j; q++) taken |= sel[q] == i;
            if (!taken && (best < 0 || logit[i] > logit[best])) best = i;
        }
        sel[j] = best;
        w[j] = expf(logit[best] - mx);
        sum += w[j];
    }
    for (int32_t j = 0; j < k; j++) w[j] = (float)(w[j] / sum);
}

/* router logits, each token's experts, then (thread 0) the tokens of each expert */
static void route_step(fwd *f, const clex_layer *L) {
    clex_ctx *c = f->c;
    const int32_t NE = f->hp->n_expert, K = f->hp->n_expert_used;
    product(f, &L->ffn_gate_inp, &NO_TENSOR, &f->a, f->T, c->router, NE, 0);
    sync(f, PROF_MOE_ROUTE);
    int64_t lo, hi;
    split(f->T, f->ith, f->nth, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) select_experts(c->router + t * NE, NE, K, c->sel + t * K, c->selw + t * K);
    sync(f, PROF_MOE_ROUTE);
    if (f->ith == 0) {
        memset(c->ecount, 0, (size_t)NE * sizeof(int32_t));
        for (int64_t t = 0; t < f->T; t++)
            for (int32_t j = 0; j < K; j++) {
                const int32_t e = c->sel[t * K + j], i = c->ecount[e]++;
                c->etok[(int64_t)e * c->n_batch + i] = (int32_t)t;
                c->eslot[(int64_t)e * c->n_batch + i] = j;
            }
    }
    sync(f, PROF_MOE_ROUTE);
}

/* expert e over its tokens: gather their normalised rows, x[t] += w (down act(gate, up)) */
static void expert_step(fwd *f, const clex_layer *L, int64_t e) {
    clex_ctx *c = f->c;
    const int64_t n = c->ecount[e], E = f->hp->n_embd, F = f->hp->n_ff, K = f->hp->n_expert_used;
    const int32_t *tok = c->etok + e * c->n_batch, *slot = c->eslot + e * c->n_batch;
    if (!n) return;
    const clex_tensor g = expert_view(&L->ffn_gate_exps, e), u = expert_view(&L->ffn_up_exps, e);
    const clex_tensor d = expert_view(&L->ffn_down_exps, e);
    int64_t lo, hi;
    split(n, f->ith, f->nth, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) memcpy(c->xe + i * E, c->xn + (int64_t)tok[i] * E, (size_t)E * sizeof(float));
    clex_prepare_acts(&f->a, c->xe, E, lo, hi, clex_act_need(&g) | clex_act_need(&u), c->act);
    sync(f, PROF_MOE_EXPERTS);
    gate_up_step(f, PROF_MOE_EXPERTS, &g, &u, &NO_TENSOR, n);
    clex_prepare_acts(&f->a, c->gate, F, lo, hi, clex_act_need(&d), c->act);
    sync(f, PROF_MOE_EXPERTS);
    product(f, &d, &NO_TENSOR, &f->a, n, c->xe, E, 0);
    sync(f, PROF_MOE_EXPERTS);
    for (int64_t i = lo; i < hi; i++) {   /* a token appears once per expert: no two threads share a row */
        const float w = c->selw[tok[i] * K + slot[i]];
        float *x = c->x + (int64_t)tok[i] * E;
        for (int64_t k = 0; k < E; k++) x[k] += w * c->xe[i * E + k];
    }
    sync(f, PROF_MOE_EXPERTS);
}

/* the FFN as a mixture of experts: every expert runs once over the tokens routed to it (a
 * batch reads each expert's weights once; decoding touches only the chosen experts) */
static void moe_block(fwd *f, const clex_layer *L) {
    const clex_tensor *router[1] = {&L->ffn_gate_inp};   /* the experts prepare their own inputs */
    norm_step(f, PROF_FFN_NORM, &L->ffn_norm, &L->ffn_norm_b, router, 1, 0, 0);
    route_step(f, L);
    for (int64_t e = 0; e < f->hp->n_expert; e++) expert_step(f, L, e);
}

/* ------------------------------------------------------------------ blocks */

/* the attention block; its output goes to dst (x, accumulated; or the parallel buffer) */
static void attention_block(fwd *f, const clex_layer *L, int l, float *dst, int accumulate) {
    const clex_tensor *qkv[3] = {&L->wq, &L->wk, &L->wv};
    norm_step(f, PROF_ATTN_NORM, &L->attn_norm, &L->attn_norm_b, qkv, 3, 0, 1);
    qkv_step(f, L);
    rope_step(f, L, l);
    clex_attention(f->c, l, f->T, &f->fa->route, f->ith, f->nth);
    sync(f, PROF_ATTENTION);
    project_out(f, PROF_ATTN_OUT, &L->wo, &L->bo, &L->attn_post_norm, f->c->att,
                (int64_t)f->hp->n_head * f->hp->head_dim, dst, accumulate);
}

static void ffn_block(fwd *f, const clex_layer *L) {
    if (f->hp->n_expert > 0) {
        moe_block(f, L);
        return;
    }
    const clex_tensor *gu[2] = {&L->w_gate, &L->w_up};
    const int own_norm = L->ffn_norm.data != NULL;   /* else (parallel residual) attn_norm's again */
    norm_step(f, PROF_FFN_NORM, own_norm ? &L->ffn_norm : &L->attn_norm, own_norm ? &L->ffn_norm_b : &L->attn_norm_b,
              f->hp->ffn_kind == CLEX_FFN_GELU ? gu + 1 : gu, f->hp->ffn_kind == CLEX_FFN_GELU ? 1 : 2, 0, 1);
    gate_up_step(f, PROF_GATE_UP, &L->w_gate, &L->w_up, &L->b_up, f->T);
    project_out(f, PROF_FFN_DOWN, &L->w_down, &L->b_down, &L->ffn_post_norm, f->c->gate, f->hp->n_ff, f->c->x, 1);
}

/* One layer, wired as hp->parallel_residual says: sequential (the FFN normalises the x the
 * attention block has added to), or parallel (both blocks read the same x: the attention's
 * output waits in c->par until the FFN has added its own). */
static void layer(fwd *f, int l) {
    const clex_layer *L = &f->m->layers[l];
    clex_ctx *c = f->c;
    if (!f->hp->parallel_residual) {
        attention_block(f, L, l, c->x, 1);
        ffn_block(f, L);
        return;
    }
    attention_block(f, L, l, c->par, 0);
    ffn_block(f, L);
    const int64_t E = f->hp->n_embd;
    int64_t lo, hi;
    split(f->T, f->ith, f->nth, &lo, &hi);
    for (int64_t i = lo * E; i < hi * E; i++) c->x[i] += c->par[i];
    sync(f, PROF_PAR_ADD);
}

/* every token's output-normed row (norm_step's xn) into fa->hidden */
static void copy_hidden(const fwd *f) {
    const int64_t E = f->hp->n_embd;
    int64_t lo, hi;
    split(f->T, f->ith, f->nth, &lo, &hi);
    memcpy(f->fa->hidden + lo * E, f->c->xn + lo * E, (size_t)((hi - lo) * E) * sizeof(float));
}

/* the final norm (its rows copied out when asked) and the vocabulary projection (+ bias,
 * soft-capped), for the last token or all */
static void output(fwd *f) {
    const fwd_args *fa = f->fa;
    if (!fa->logits && !fa->hidden) return;
    const int64_t t0 = fa->all_logits ? 0 : f->T - 1, V = f->hp->n_vocab;
    const clex_tensor *ow[1] = {&f->m->output};
    norm_step(f, PROF_OUT_NORM, &f->m->output_norm, &f->m->output_norm_b, ow, fa->logits ? 1 : 0,
              fa->hidden ? 0 : t0, !fa->hidden);
    if (fa->hidden) copy_hidden(f);
    if (!fa->logits) {
        note_work(f, PROF_OUT_NORM);
        return;
    }
    const clex_acts ao = clex_acts_from(&f->a, t0);
    const float cap = f->hp->final_softcap;
    int64_t lo, hi;
    clex_sched sc = clex_sched_begin(f->c, &f->step, f->ith, f->nth, V);
    while (clex_sched_next(&sc, &lo, &hi)) {
        mat_rows(f, &f->m->output, &ao, f->T - t0, fa->logits, V, 0, lo, hi);
        add_bias(fa->logits, V, f->T - t0, opt(&f->m->output_b), lo, hi);
        if (cap > 0.0f)
            for (int64_t t = 0; t < f->T - t0; t++)
                for (int64_t r = lo; r < hi; r++) fa->logits[t * V + r] = cap * tanhf(fa->logits[t * V + r] / cap);
    }
    note_work(f, PROF_OUTPUT);
}

static void forward_job(void *varg, int ith, int nth) {
    const fwd_args *fa = varg;
    clex_ctx *c = fa->c;
    fwd f = {c, c->m, &c->m->hp, fa, fa->n_tok, ith, nth, 0, {0}, NULL, 0};
    if (c->prof_on) {   /* a worker's start: how long after the caller began the pass */
        f.prof = c->prof + (size_t)ith * CLEX_PROF_STEPS * 3;
        f.last = clex_now_ns();
        f.prof[PROF_START * 3 + 1] += f.last - c->prof_t0;
    }
    embed(&f);
    for (int l = 0; l < f.hp->n_layer; l++) layer(&f, l);
    output(&f);
    if (f.prof && ith == 0) c->prof_last0 = f.last;
}

/* the tokens' ids in the vocabulary, checked */
static int check_tokens(const clex_ctx *c, const int32_t *tokens, int32_t n_tok) {
    const int32_t V = c->m->hp.n_vocab;
    for (int32_t i = 0; i < n_tok; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return clex_fail(CLEX_E_INVALID, "token id %d at index %d is outside the vocabulary (0..%d)", tokens[i], i,
                             V - 1);
    return CLEX_OK;
}

static void run_forward(fwd_args *fa) {
    atomic_store(&fa->c->chunk[0], 0);
    atomic_store(&fa->c->chunk[1], 0);
    clex_ctx *c = fa->c;
    if (c->prof_on) c->prof_t0 = clex_now_ns();
    clex_pool_run(c->pool, forward_job, fa);
    if (c->prof_on) {   /* the caller's wait for the workers to finish */
        c->prof[PROF_END * 3 + 1] += clex_now_ns() - c->prof_last0;
        c->prof_passes++;
    }
}

/* n_tok tokens of one context from n_past, n_batch at a time (clex_eval, clex_eval_hidden) */
static int eval_seq(clex_ctx *c, const int32_t *tokens, int32_t n_tok, int32_t n_past, float *logits,
                    int32_t all_logits, float *hidden) {
    if (!c || !tokens) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (n_tok <= 0) return clex_fail(CLEX_E_INVALID, "no tokens to evaluate");
    if (n_past < 0) return clex_fail(CLEX_E_INVALID, "n_past %d is negative", n_past);
    if ((int64_t)n_past + n_tok > c->n_ctx)
        return clex_fail(CLEX_E_FULL, "%d tokens at position %d do not fit in the context of %d", n_tok, n_past,
                         c->n_ctx);
    int rc = check_tokens(c, tokens, n_tok);
    if (rc) return rc;
    const int64_t V = c->m->hp.n_vocab, E = c->m->hp.n_embd;
    for (int32_t done = 0; done < n_tok; done += c->n_batch) {
        const int32_t nb = n_tok - done < c->n_batch ? n_tok - done : c->n_batch;
        const int last = done + nb == n_tok;
        fwd_args fa = {c, tokens + done, nb, {NULL, NULL, n_past + done}, NULL, all_logits, NULL, 0};
        if (logits && all_logits) fa.logits = logits + (int64_t)done * V;
        else if (logits && last) fa.logits = logits;
        if (hidden) fa.hidden = hidden + (int64_t)done * E;
        run_forward(&fa);
    }
    return CLEX_OK;
}

int clex_eval(clex_ctx *c, const int32_t *tokens, int32_t n_tok, int32_t n_past, float *logits, int32_t all_logits) {
    return eval_seq(c, tokens, n_tok, n_past, logits, all_logits, NULL);
}

int clex_eval_hidden(clex_ctx *c, const int32_t *tokens, int32_t n_tok, int32_t n_past, float *hidden) {
    if (!hidden) return clex_fail(CLEX_E_INVALID, "NULL argument");
    return eval_seq(c, tokens, n_tok, n_past, NULL, 0, hidden);
}

/* clex_eval_batch's contexts: distinct, of one model, each position inside its own context and
 * (for the scores scratch) inside the first's */
static int check_batch(clex_ctx *const *ctxs, const int32_t *n_past, int32_t n) {
    const clex_ctx *c0 = ctxs[0];
    if (n > c0->n_batch)
        return clex_fail(CLEX_E_INVALID, "a batch of %d contexts: the first one's n_batch is %d", n, c0->n_batch);
    for (int32_t i = 0; i < n; i++) {
        const clex_ctx *c = ctxs[i];
        if (!c) return clex_fail(CLEX_E_INVALID, "context %d of the batch is NULL", i);
        if (c->m != c0->m) return clex_fail(CLEX_E_INVALID, "context %d of the batch runs another model", i);
        for (int32_t j = 0; j < i; j++)
            if (ctxs[j] == c) return clex_fail(CLEX_E_INVALID, "context %d of the batch is also context %d", i, j);
        if (n_past[i] < 0) return clex_fail(CLEX_E_INVALID, "n_past %d of context %d is negative", n_past[i], i);
        if (n_past[i] >= c->n_ctx)
            return clex_fail(CLEX_E_FULL, "context %d is full (%d of %d tokens)", i, n_past[i], c->n_ctx);
        if (n_past[i] >= c0->n_ctx)
            return clex_fail(CLEX_E_INVALID, "context %d at position %d: the first context of the batch holds %d",
                             i, n_past[i], c0->n_ctx);
    }
    return CLEX_OK;
}

/* every weight type of m probed (clex_dot4_exact) before the threads ask */
static void probe_weights(const clex_model *m) {
    clex_dot4_exact(m->output.type);
    for (int l = 0; l < m->hp.n_layer; l++) {
        const clex_layer *L = &m->layers[l];
        const clex_tensor *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down,
                                   &L->ffn_gate_inp, &L->ffn_gate_exps, &L->ffn_up_exps, &L->ffn_down_exps};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            if (ws[i]->data) clex_dot4_exact(ws[i]->type);
    }
}

int clex_eval_batch(clex_ctx *const *ctxs, const int32_t *tokens, const int32_t *n_past, int32_t n, float *logits,
                    int32_t exact) {
    if (!ctxs || !tokens || !n_past || !ctxs[0]) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (n <= 0) return clex_fail(CLEX_E_INVALID, "no tokens to evaluate");
    int rc = check_batch(ctxs, n_past, n);
    if (!rc) rc = check_tokens(ctxs[0], tokens, n);
    if (!rc) rc = clex_ctx_reserve_part(ctxs[0], n);
    if (rc) return rc;
    if (exact) probe_weights(ctxs[0]->m);
    fwd_args fa = {ctxs[0], tokens, n, {ctxs, n_past, 0}, logits, 1, NULL, exact != 0};
    run_forward(&fa);
    return CLEX_OK;
}
