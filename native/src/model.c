/* The model (borrowed weights + hyper-parameters, validated once) and the context (KV cache,
 * scratch, threads, rope table). The forward pass that uses both is forward.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

/* ------------------------------------------------------------------ tensors */

static const char *tname(const clex_tensor *t, const char *fallback) {
    return (t && t->name) ? t->name : fallback;
}

/* n_dims in 1..4, every dim in (0, 2^40) and their product past ne[0] representable: its value */
static int tensor_rows(const clex_tensor *t, int64_t *rows) {
    int64_t got1 = 1;
    int dims_ok = t->n_dims >= 1 && t->n_dims <= 4;
    for (int d = 0; dims_ok && d < t->n_dims; d++) dims_ok = t->ne[d] > 0 && t->ne[d] < ((int64_t)1 << 40);
    for (int d = 1; dims_ok && d < t->n_dims; d++) {   /* each dim < 2^40: the product may not fit */
        dims_ok = got1 <= INT64_MAX / t->ne[d];
        if (dims_ok) got1 *= t->ne[d];
    }
    *rows = got1;
    return dims_ok;
}

static int shape_error(const clex_tensor *t, const char *name, int64_t ne0, int64_t ne1) {
    if (ne1 > 0)
        return clex_fail(CLEX_E_INVALID, "tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]", name,
                         (long long)t->ne[0], (long long)(t->n_dims >= 2 ? t->ne[1] : 1), (long long)ne0,
                         (long long)ne1);
    return clex_fail(CLEX_E_INVALID, "tensor '%s' has shape [%lld], expected [%lld]", name, (long long)t->ne[0],
                     (long long)ne0);
}

int clex_check_tensor(const clex_tensor *t, const char *what, int64_t ne0, int64_t ne1, int f32_only) {
    const char *name = tname(t, what);
    if (!t->data) return clex_fail(CLEX_E_INVALID, "tensor '%s' is missing", name);
    const clex_type_traits *tr = clex_traits(t->type);
    if (!tr) return clex_fail(CLEX_E_UNSUPPORTED, "tensor '%s' has unknown type id %d", name, (int)t->type);
    if (!tr->weight_ok)
        return clex_fail(CLEX_E_UNSUPPORTED, "tensor '%s' has type %s, which clexrt does not run (supported: %s)",
                         name, tr->name, clex_supported_weight_types());
    if (f32_only && t->type != CLEX_TYPE_F32)
        return clex_fail(CLEX_E_UNSUPPORTED, "tensor '%s' must be F32, not %s", name, tr->name);
    int64_t rows;
    if (!tensor_rows(t, &rows) || t->ne[0] != ne0 || rows != (ne1 > 0 ? ne1 : 1)) return shape_error(t, name, ne0, ne1);
    if (ne0 % tr->blck)
        return clex_fail(CLEX_E_INVALID, "tensor '%s': row length %lld is not a multiple of the %s block (%lld)",
                         name, (long long)ne0, tr->name, (long long)tr->blck);
    const uint64_t want = row_bytes(tr, ne0) * (uint64_t)(ne1 > 0 ? ne1 : 1);
    if (t->nbytes != want)
        return clex_fail(CLEX_E_INVALID, "tensor '%s' holds %llu bytes, its shape and type need %llu", name,
                         (unsigned long long)t->nbytes, (unsigned long long)want);
    return CLEX_OK;
}

/* ------------------------------------------------------------------ hyper-parameters */

/* One architecture field: its known values (named) and how many of them, from 0, are implemented. */
typedef struct {
    const char *field;
    int32_t value;
    int32_t n_known, n_implemented;
    const char *const *names;
} arch_field;

static const char *const NORM_KINDS[] = {"RMS norm", "layer norm"};
static const char *const ROPE_LAYOUTS[] = {"adjacent pairs", "NeoX rotate-half"};
static const char *const FFN_KINDS[] = {"SwiGLU", "GeGLU", "GELU MLP"};
static const char *const RESIDUALS[] = {"sequential", "parallel residual"};

static int check_arch_field(const arch_field *f) {
    if (f->value < 0 || f->value >= f->n_known)
        return clex_fail(CLEX_E_INVALID, "%s %d is not a known value (0..%d)", f->field, f->value, f->n_known - 1);
    if (f->value >= f->n_implemented)
        return clex_fail(CLEX_E_UNSUPPORTED, "%s %d (%s) is not implemented yet", f->field, f->value,
                         f->names[f->value]);
    return CLEX_OK;
}

/* a float field that must be finite and >= 0 (0 meaning its default) */
static int check_nonneg(const char *what, float v) {
    if (!isfinite(v) || v < 0.0f) return clex_fail(CLEX_E_INVALID, "%s %g must be finite and >= 0", what, (double)v);
    return CLEX_OK;
}

/* The architecture fields: every value in range, and one this version runs. */
static int check_arch(const clex_hparams *hp) {
    const arch_field fields[] = {
        {"norm_kind", hp->norm_kind, 2, 2, NORM_KINDS},
        {"rope_layout", hp->rope_layout, 2, 2, ROPE_LAYOUTS},
        {"ffn_kind", hp->ffn_kind, 3, 3, FFN_KINDS},
        {"parallel_residual", hp->parallel_residual, 2, 2, RESIDUALS},
    };
    int rc;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if ((rc = check_arch_field(&fields[i]))) return rc;
    if (hp->n_expert < 0 || hp->n_expert > 1024 || hp->n_expert_used < 0 || hp->n_expert_used > hp->n_expert ||
        (hp->n_expert > 0 && hp->n_expert_used == 0))
        return clex_fail(CLEX_E_INVALID, "n_expert %d, n_expert_used %d: need 0 and 0 (dense) or 1 <= used <= n_expert <= 1024",
                         hp->n_expert, hp->n_expert_used);
    if ((rc = check_nonneg("embd_scale", hp->embd_scale)) || (rc = check_nonneg("attn_scale", hp->attn_scale)) ||
        (rc = check_nonneg("attn_softcap", hp->attn_softcap)) || (rc = check_nonneg("final_softcap", hp->final_softcap)))
        return rc;
    if (hp->n_rope_sets < 0 || hp->n_rope_sets > CLEX_MAX_ROPE_SETS)
        return clex_fail(CLEX_E_INVALID, "n_rope_sets %d: 0 .. %d", hp->n_rope_sets, CLEX_MAX_ROPE_SETS);
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
    return check_arch(hp);
}

/* ------------------------------------------------------------------ model */

/* an optional f32 vector: absent, or [n] */
static int check_opt(const clex_tensor *t, const char *what, int64_t n) {
    return t->data ? clex_check_tensor(t, what, n, 0, 1) : CLEX_OK;
}

/* the optional tensors of a layer (biases, q/k norms, post-norms) and its two integers */
static int check_layer_extras(const clex_hparams *hp, const clex_layer *L, int32_t n_sets) {
    const int64_t E = hp->n_embd, D = hp->head_dim, qd = (int64_t)hp->n_head * D, kvd = (int64_t)hp->n_head_kv * D;
    int rc;
    if ((rc = check_opt(&L->attn_norm_b, "attn_norm.bias", E)) || (rc = check_opt(&L->ffn_norm_b, "ffn_norm.bias", E)) ||
        (rc = check_opt(&L->bq, "attn_q.bias", qd)) || (rc = check_opt(&L->bk, "attn_k.bias", kvd)) ||
        (rc = check_opt(&L->bv, "attn_v.bias", kvd)) || (rc = check_opt(&L->bo, "attn_output.bias", E)) ||
        (rc = check_opt(&L->b_up, "ffn_up.bias", hp->n_ff)) || (rc = check_opt(&L->b_down, "ffn_down.bias", E)) ||
        (rc = check_opt(&L->q_norm, "attn_q_norm", D)) || (rc = check_opt(&L->k_norm, "attn_k_norm", D)) ||
        (rc = check_opt(&L->attn_post_norm, "post_attention_norm", E)) ||
        (rc = check_opt(&L->ffn_post_norm, "post_ffw_norm", E)))
        return rc;
    if (L->n_swa < 0) return clex_fail(CLEX_E_INVALID, "sliding window %d is negative", L->n_swa);
    if (L->rope_set < 0 || L->rope_set >= n_sets)
        return clex_fail(CLEX_E_INVALID, "rope table %d: the model has %d", L->rope_set, n_sets);
    return CLEX_OK;
}

/* a stacked expert tensor: exactly [ne0, ne1, n_expert] */
static int check_experts(const clex_tensor *t, const char *what, int64_t ne0, int64_t ne1, int64_t ne) {
    int rc = clex_check_tensor(t, what, ne0, ne1 * ne, 0);
    if (rc) return rc;
    if (t->n_dims != 3 || t->ne[1] != ne1 || t->ne[2] != ne)
        return clex_fail(CLEX_E_INVALID, "tensor '%s' must be [%lld, %lld, %lld] (one matrix per expert)",
                         t->name ? t->name : what, (long long)ne0, (long long)ne1, (long long)ne);
    return CLEX_OK;
}

/* the FFN's tensors: dense (gate, up, down) or the router and the stacked experts */
static int check_ffn(const clex_hparams *hp, const clex_layer *L) {
    const int64_t E = hp->n_embd, F = hp->n_ff, NE = hp->n_expert;
    int rc;
    if (NE > 0) {
        if ((rc = clex_check_tensor(&L->ffn_gate_inp, "ffn_gate_inp", E, NE, 0)) ||
            (rc = check_experts(&L->ffn_gate_exps, "ffn_gate_exps", E, F, NE)) ||
            (rc = check_experts(&L->ffn_up_exps, "ffn_up_exps", E, F, NE)) ||
            (rc = check_experts(&L->ffn_down_exps, "ffn_down_exps", F, E, NE)))
            return rc;
        if (hp->ffn_kind != CLEX_FFN_SWIGLU)
            return clex_fail(CLEX_E_UNSUPPORTED, "experts run SwiGLU only (ffn_kind %d)", hp->ffn_kind);
        return CLEX_OK;
    }
    if ((hp->ffn_kind != CLEX_FFN_GELU && (rc = clex_check_tensor(&L->w_gate, "ffn_gate", E, F, 0))) ||
        (rc = clex_check_tensor(&L->w_up, "ffn_up", E, F, 0)) || (rc = clex_check_tensor(&L->w_down, "ffn_down", F, E, 0)))
        return rc;
    return CLEX_OK;
}

static int check_layer(const clex_hparams *hp, const clex_layer *L, int l) {
    const int64_t E = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    const int need_ffn_norm = !hp->parallel_residual || L->ffn_norm.data;
    int rc;
    if ((rc = clex_check_tensor(&L->attn_norm, "attn_norm", E, 0, 1)) || (rc = clex_check_tensor(&L->wq, "attn_q", E, qd, 0)) ||
        (rc = clex_check_tensor(&L->wk, "attn_k", E, kvd, 0)) || (rc = clex_check_tensor(&L->wv, "attn_v", E, kvd, 0)) ||
        (rc = clex_check_tensor(&L->wo, "attn_output", qd, E, 0)) ||
        (need_ffn_norm && (rc = clex_check_tensor(&L->ffn_norm, "ffn_norm", E, 0, 1))) ||
        (rc = check_ffn(hp, L)) ||
        (rc = check_layer_extras(hp, L, hp->n_rope_sets > 0 ? hp->n_rope_sets : 1))) {
        if (!L->attn_norm.name) {   /* unnamed tensors: say which layer */
            char msg[512];
            snprintf(msg, sizeof msg, "%s", clex_last_error());
            return clex_fail(rc, "layer %d: %s", l, msg);
        }
        return rc;
    }
    return CLEX_OK;
}

static uint64_t numel(const clex_tensor *t) {
    if (!t->data) return 0;
    uint64_t n = 1;
    for (int d = 0; d < t->n_dims && d < 4; d++) n *= (uint64_t)t->ne[d];
    return n;
}

static uint64_t layer_params(const clex_layer *L) {
    const clex_tensor *ts[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_norm, &L->w_gate, &L->w_up,
                               &L->w_down, &L->attn_norm_b, &L->ffn_norm_b, &L->bq, &L->bk, &L->bv, &L->bo,
                               &L->b_up, &L->b_down, &L->q_norm, &L->k_norm, &L->attn_post_norm, &L->ffn_post_norm,
                               &L->ffn_gate_inp, &L->ffn_gate_exps, &L->ffn_up_exps, &L->ffn_down_exps};
    uint64_t n = 0;
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) n += numel(ts[i]);
    return n;
}

static const clex_tensor NO_TENSOR;

int clex_model_create(const clex_hparams *hp, const clex_tensor *tok_embd, const clex_tensor *output_norm,
                      const clex_tensor *output_norm_b, const clex_tensor *output, const clex_tensor *output_b,
                      const clex_layer *layers, clex_model **out) {
    clex_init_once();
    if (!out) return clex_fail(CLEX_E_INVALID, "out pointer is NULL");
    *out = NULL;
    if (!hp || !tok_embd || !output_norm || !layers) return clex_fail(CLEX_E_INVALID, "a required argument is NULL");
    int rc = check_hparams(hp);
    if (rc) return rc;
    const int64_t E = hp->n_embd;
    if ((rc = clex_check_tensor(tok_embd, "token_embd.weight", E, hp->n_vocab, 0))) return rc;
    if ((rc = clex_check_tensor(output_norm, "output_norm.weight", E, 0, 1))) return rc;
    const clex_tensor *outw = (output && output->data) ? output : tok_embd;
    if ((rc = clex_check_tensor(outw, "output.weight", E, hp->n_vocab, 0))) return rc;
    if (!output_norm_b) output_norm_b = &NO_TENSOR;
    if (!output_b) output_b = &NO_TENSOR;
    if ((rc = check_opt(output_norm_b, "output_norm.bias", E)) || (rc = check_opt(output_b, "output.bias", hp->n_vocab)))
        return rc;
    for (int l = 0; l < hp->n_layer; l++)
        if ((rc = check_layer(hp, &layers[l], l))) return rc;
    clex_model *m = calloc(1, sizeof *m);
    if (!m) return clex_fail(CLEX_E_NOMEM, "out of memory");
    m->layers = calloc((size_t)hp->n_layer, sizeof(clex_layer));
    if (!m->layers) { free(m); return clex_fail(CLEX_E_NOMEM, "out of memory"); }
    m->hp = *hp;
    m->tok_embd = *tok_embd;
    m->output_norm = *output_norm;
    m->output = *outw;
    m->output_norm_b = *output_norm_b;
    m->output_b = *output_b;
    m->n_sets = hp->n_rope_sets > 0 ? hp->n_rope_sets : 1;
    memcpy(m->layers, layers, (size_t)hp->n_layer * sizeof(clex_layer));
    m->n_params = numel(tok_embd) + numel(output_norm) + (outw != tok_embd ? numel(outw) : 0) +
                  numel(output_norm_b) + numel(output_b);
    for (int l = 0; l < hp->n_layer; l++) m->n_params += layer_params(&layers[l]);
    *out = m;
    return CLEX_OK;
}

int64_t clex_tensor_nonfinite_row(const clex_tensor *t) {
    int64_t rows;
    if (!t || !t->data) return clex_fail(CLEX_E_INVALID, "NULL tensor");
    const clex_type_traits *tr = clex_traits(t->type);
    if (!tr || !tr->weight_ok || !tr->to_float || !tensor_rows(t, &rows) || t->ne[0] % tr->blck)
        return clex_fail(CLEX_E_INVALID, "tensor '%s' is not one the forward pass runs", tname(t, "?"));
    const uint64_t rb = row_bytes(tr, t->ne[0]);
    if (t->nbytes < rb * (uint64_t)rows) return clex_fail(CLEX_E_INVALID, "tensor '%s' is short", tname(t, "?"));
    float *row = malloc((size_t)t->ne[0] * sizeof(float));
    if (!row) return clex_fail(CLEX_E_NOMEM, "out of memory");
    int64_t bad = -1;
    for (int64_t r = 0; r < rows && bad < 0; r++) {
        tr->to_float((const uint8_t *)t->data + (uint64_t)r * rb, row, t->ne[0]);
        for (int64_t i = 0; i < t->ne[0]; i++)
            if (!isfinite(row[i])) { bad = r; break; }
    }
    free(row);
    return bad;
}

void clex_model_free(clex_model *m) {
    if (!m) return;
    free(m->layers);
    free(m);
}

uint64_t clex_model_n_params(const clex_model *m) { return m ? m->n_params : 0; }

/* ------------------------------------------------------------------ kernels' agreement */

#define PROBE_N 2048   /* values per probe row: 8 super-blocks, 64 small blocks */

/* pseudo-random values in [-1, 1) from a fixed LCG */
static void probe_values(float *x, int64_t n, uint32_t seed) {
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)(seed >> 8) / (float)(1u << 23) - 1.0f;
    }
}

/* Four rows of `type` against four activation rows: the four-row kernel's sums equal the
 * one-row kernel's, bit for bit. 0 when the type cannot be probed (no quantizer). */
static int probe_dot4(int32_t type) {
    const clex_type_traits *tr = clex_traits(type);
    const clex_vec_dot4_fn dot4 = clex_k.vec_dot4[type];
    if (!dot4) return 1;
    const clex_type_traits *xt = tr->vec_dot_type >= 0 ? clex_traits(tr->vec_dot_type) : NULL;
    const uint64_t wb = row_bytes(tr, PROBE_N), xb = xt ? row_bytes(xt, PROBE_N) : PROBE_N * sizeof(float);
    float *f = malloc(PROBE_N * sizeof(float));
    uint8_t *w = malloc(4 * wb), *x = malloc(4 * xb);
    int ok = f && w && x;
    for (int r = 0; ok && r < 4; r++) {
        probe_values(f, PROBE_N, 17u + (uint32_t)r);
        ok = clex_quantize_row(type, f, w + r * wb, PROBE_N) == CLEX_OK;
        probe_values(f, PROBE_N, 91u + (uint32_t)r);
        if (xt) ok = ok && clex_quantize_act(tr->vec_dot_type, f, x + r * xb, PROBE_N) == CLEX_OK;
        else memcpy(x + r * xb, f, PROBE_N * sizeof(float));
    }
    for (int r = 0; ok && r < 4; r++) {
        float s4[4], s;
        dot4(PROBE_N, s4, w + r * wb, x, (size_t)xb);
        for (int j = 0; j < 4 && ok; j++) {
            clex_k.vec_dot[type](PROBE_N, &s, w + r * wb, x + j * xb);
            ok = memcmp(&s, &s4[j], sizeof s) == 0;
        }
    }
    free(f);
    free(w);
    free(x);
    return ok;
}

int clex_dot4_exact(int32_t type) {
    static _Atomic signed char known[CLEX_ISA_NEON + 1][CLEX_TYPE_COUNT];   /* 0: not probed yet */
    const int isa = clex_isa();
    if (type < 0 || type >= CLEX_TYPE_COUNT || isa < 0 || isa > CLEX_ISA_NEON || !clex_traits(type)) return 0;
    signed char k = atomic_load(&known[isa][type]);
    if (!k) {
        k = probe_dot4(type) ? 1 : -1;
        atomic_store(&known[isa][type], k);
    }
    return k > 0;
}

/* ------------------------------------------------------------------ context */

int clex_kv_type_supported(int32_t type) {
    return type == CLEX_TYPE_F32 || type == CLEX_TYPE_F16 || type == CLEX_TYPE_Q8_0;
}

static void *xcalloc(size_t n, size_t sz, int *fail) {
    if (n == 0) n = 1;
    void *p = calloc(n, sz);
    if (!p) *fail = 1;
    return p;
}

void clex_ctx_free(clex_ctx *c) {
    if (!c) return;
    clex_pool_free(c->pool);
    void *bufs[] = {c->inv_freq, c->k_cache, c->v_cache, c->x, c->xn, c->q /* and k, v, att, gate */,
                    c->up, c->cs, c->par, c->scores, c->part, c->router, c->sel, c->selw,
                    c->etok, c->eslot, c->ecount, c->xe, c->qq, c->prof};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    for (int s = 0; s < CLEX_ACT_N; s++) free(c->act[s]);
    free(c);
}

/* Rows in each cache, every product checked: n_layer * n_head_kv * n_ctx rows of `row` bytes
 * can pass 2^64; 0 when both caches cannot be addressed. */
static uint64_t kv_rows(const clex_hparams *hp, int32_t n_ctx, size_t row) {
    uint64_t rows = 1;
    const uint64_t dims[3] = {(uint64_t)hp->n_layer, (uint64_t)hp->n_head_kv, (uint64_t)n_ctx};
    for (int i = 0; i < 3; i++)
        if (__builtin_mul_overflow(rows, dims[i], &rows) || rows > (uint64_t)SIZE_MAX / 4 / row) return 0;
    return rows;
}

/* Bytes of one cached row of head_dim values of kv_type (a supported type); 0 with the error
 * set when head_dim is not a whole number of the type's blocks. */
static size_t kv_row_bytes(const clex_hparams *hp, int32_t kv_type) {
    const clex_type_traits *t = clex_traits(kv_type);
    if (hp->head_dim % t->blck) {
        clex_fail(CLEX_E_INVALID, "a %s KV cache stores rows in blocks of %lld values: the head dimension %d is "
                  "not a multiple of %lld (use an f16 or f32 cache)", t->name, (long long)t->blck, hp->head_dim,
                  (long long)t->blck);
        return 0;
    }
    return (size_t)(hp->head_dim / t->blck) * (size_t)t->bytes;
}

/* w's row length, if it is longer than the one kept for its activation slot (maxk) */
static void note_act_row(const clex_tensor *w, int64_t maxk[CLEX_ACT_N]) {
    if (!w->data) return;
    const int s = clex_act_slot(clex_traits(w->type)->vec_dot_type);
    if (s >= 0 && w->ne[0] > maxk[s]) maxk[s] = w->ne[0];
}

/* maxk[s]: the longest row of the weights whose activations are of slot s (the model's products only) */
static void act_rows(const clex_model *m, int64_t maxk[CLEX_ACT_N]) {
    note_act_row(&m->output, maxk);
    for (int l = 0; l < m->hp.n_layer; l++) {
        const clex_layer *L = &m->layers[l];
        const clex_tensor *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down,
                                   &L->ffn_gate_inp, &L->ffn_gate_exps, &L->ffn_up_exps, &L->ffn_down_exps};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) note_act_row(ws[i], maxk);
    }
}

/* Each activation type's scratch: B rows of the longest row of the weights paired with it,
 * nothing for a type no weight reads. */
static void alloc_acts(clex_ctx *c, int *fail) {
    int64_t maxk[CLEX_ACT_N] = {0};
    act_rows(c->m, maxk);
    for (int s = 0; s < CLEX_ACT_N; s++) {
        if (!maxk[s]) continue;
        const clex_type_traits *t = clex_traits(clex_act_type(s));
        c->act[s] = xcalloc((size_t)c->n_batch * (size_t)(maxk[s] / t->blck), (size_t)t->bytes, fail);
    }
}

/* The batch scratch's floats per token: q, k, v and att, or the FFN's gate (one shared block). */
static size_t shared_block_floats(const clex_hparams *hp) {
    const size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t att_phase = 2 * qd + 2 * kvd, ffn_phase = (size_t)hp->n_ff;
    return att_phase > ffn_phase ? att_phase : ffn_phase;
}

/* The batch scratch in 4-byte items per token of n_batch: ctx_alloc allocates n_batch times each,
 * clex_batch_token_bytes adds them up. 0: a buffer this model does not have (left NULL). */
typedef struct {
    size_t x, xn, block, up, cs, par, router, sel, selw, etok, eslot, xe;
} batch_items;

static batch_items batch_per_token(const clex_model *m, int32_t n_threads) {
    const clex_hparams *hp = &m->hp;
    const size_t E = (size_t)hp->n_embd, moe = hp->n_expert > 0;
    const size_t NE = moe ? (size_t)hp->n_expert : 0, K = moe ? (size_t)hp->n_expert_used : 0;
    const batch_items b = {
        .x = E, .xn = E, .block = shared_block_floats(hp),
        /* a gated FFN's up rows, a thread's slice at a time (forward.c's CLEX_UP_ROWS) */
        .up = hp->ffn_kind != CLEX_FFN_GELU ? (size_t)n_threads * CLEX_UP_ROWS : 0,
        .cs = (size_t)m->n_sets * (size_t)(hp->n_rot / 2) * 2, .par = hp->parallel_residual ? E : 0,
        .router = NE, .sel = K, .selw = K, .etok = NE, .eslot = NE, .xe = moe ? E : 0};
    return b;
}

uint64_t clex_batch_token_bytes(const clex_model *m, int32_t n_threads) {
    if (!m) return 0;
    if (n_threads <= 0) n_threads = clex_physical_cores();
    const batch_items b = batch_per_token(m, n_threads);
    const size_t *item = (const size_t *)&b;
    uint64_t bytes = 0;
    for (size_t i = 0; i < sizeof b / sizeof *item; i++) bytes += 4 * (uint64_t)item[i];
    int64_t maxk[CLEX_ACT_N] = {0};
    act_rows(m, maxk);
    for (int s = 0; s < CLEX_ACT_N; s++)
        if (maxk[s]) bytes += row_bytes(clex_traits(clex_act_type(s)), maxk[s]);
    return bytes;
}

/* the KV cache and the scratch for batches of n_batch tokens; 0 when an allocation failed */
static int ctx_alloc(clex_ctx *c, uint64_t kv_rows) {
    const clex_hparams *hp = &c->m->hp;
    const size_t B = (size_t)c->n_batch;
    const size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    int fail = 0;
    const size_t S = (size_t)c->m->n_sets;
    c->inv_freq = xcalloc(S * (size_t)c->n_pairs, sizeof(float), &fail);
    /* calloc of a large block maps zero pages lazily: only the positions used become resident */
    c->k_cache = xcalloc(kv_rows, c->kv_row, &fail);
    c->v_cache = xcalloc(kv_rows, c->kv_row, &fail);
    const batch_items bt = batch_per_token(c->m, clex_pool_size(c->pool));
    c->x = xcalloc(B * bt.x, sizeof(float), &fail);
    c->xn = xcalloc(B * bt.xn, sizeof(float), &fail);
    /* The attention's q, k, v, att and the FFN's gate never live at once (a layer's attention
     * has been projected out before its FFN starts, and the FFN's output is in x or par before
     * the next attention), so they share one block: the larger of the two phases. */
    c->q = xcalloc(B * bt.block, sizeof(float), &fail);
    if (c->q) {
        c->k = c->q + B * qd;
        c->v = c->k + B * kvd;
        c->att = c->v + B * kvd;
        c->gate = c->q;
    }
    if (bt.up) c->up = xcalloc(B * bt.up, sizeof(float), &fail);
    alloc_acts(c, &fail);
    c->cs = xcalloc(B * bt.cs, sizeof(float), &fail);
    if (bt.par) c->par = xcalloc(B * bt.par, sizeof(float), &fail);
    if (hp->n_expert > 0) {
        c->router = xcalloc(B * bt.router, sizeof(float), &fail);
        c->sel = xcalloc(B * bt.sel, sizeof(int32_t), &fail);
        c->selw = xcalloc(B * bt.selw, sizeof(float), &fail);
        c->etok = xcalloc(B * bt.etok, sizeof(int32_t), &fail);
        c->eslot = xcalloc(B * bt.eslot, sizeof(int32_t), &fail);
        c->ecount = xcalloc((size_t)hp->n_expert, sizeof(int32_t), &fail);
        c->xe = xcalloc(B * bt.xe, sizeof(float), &fail);
    }
    /* a GQA group's heads take one run of keys together (attn.c): n_ctx scores for each */
    const size_t grp = (size_t)(hp->n_head / hp->n_head_kv);
    c->scores = xcalloc((size_t)clex_pool_size(c->pool) * (size_t)c->n_ctx * grp, sizeof(float), &fail);
    c->part = xcalloc((size_t)hp->n_head * ATT_MAX_CHUNKS * ((size_t)hp->head_dim + 2), sizeof(float), &fail);
    /* every context: a batched decode runs on the first context's scratch whatever its own type */
    c->qq = xcalloc((size_t)clex_pool_size(c->pool) * (size_t)(hp->head_dim / QK + 1) * grp, sizeof(block_q8_0), &fail);
    c->part_tokens = 1;
    return !fail;
}

int clex_ctx_create(const clex_model *m, int32_t n_ctx, int32_t n_batch, int32_t n_threads, int32_t kv_type,
                    clex_ctx **out) {
    if (!out) return clex_fail(CLEX_E_INVALID, "out pointer is NULL");
    *out = NULL;
    if (!m) return clex_fail(CLEX_E_INVALID, "model is NULL");
    if (!clex_kv_type_supported(kv_type))
        return clex_fail(CLEX_E_INVALID, "KV cache type %d: only F32 (%d), F16 (%d) and Q8_0 (%d)", kv_type,
                         CLEX_TYPE_F32, CLEX_TYPE_F16, CLEX_TYPE_Q8_0);
    if (n_ctx <= 0) return clex_fail(CLEX_E_INVALID, "n_ctx must be positive, got %d", n_ctx);
    if (n_batch <= 0) return clex_fail(CLEX_E_INVALID, "n_batch must be positive, got %d", n_batch);
    if (n_threads <= 0) n_threads = clex_physical_cores();
    if (n_batch > n_ctx) n_batch = n_ctx;
    const size_t row = kv_row_bytes(&m->hp, kv_type);
    if (!row) return CLEX_E_INVALID;
    const uint64_t rows = kv_rows(&m->hp, n_ctx, row);
    if (!rows) return clex_fail(CLEX_E_NOMEM, "a KV cache of %d tokens does not fit in memory", n_ctx);
    clex_ctx *c = calloc(1, sizeof *c);
    if (!c) return clex_fail(CLEX_E_NOMEM, "out of memory");
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    c->n_pairs = m->hp.n_rot / 2;
    c->kq_scale = 1.0f;
    c->kv_type = kv_type;
    c->kv_row = row;
    c->kv_bytes = rows * 2 * row;
    int rc = clex_pool_create(n_threads, &c->pool);
    if (rc) { free(c); return rc; }
    if (!ctx_alloc(c, rows)) {
        clex_ctx_free(c);
        return clex_fail(CLEX_E_NOMEM, "out of memory allocating a context of %d tokens (KV cache %.1f MiB)", n_ctx,
                         (double)rows * 2.0 * (double)row / (1024.0 * 1024.0));
    }
    *out = c;
    return CLEX_OK;
}

int clex_ctx_reserve_part(clex_ctx *c, int32_t n) {
    if (n <= c->part_tokens) return CLEX_OK;
    const size_t per = (size_t)c->m->hp.n_head * ATT_MAX_CHUNKS * ((size_t)c->m->hp.head_dim + 2) * sizeof(float);
    float *p = realloc(c->part, (size_t)n * per);
    if (!p) return clex_fail(CLEX_E_NOMEM, "out of memory for a batch of %d contexts", n);
    c->part = p;
    c->part_tokens = n;
    return CLEX_OK;
}

int32_t clex_ctx_n_ctx(const clex_ctx *c) { return c ? c->n_ctx : 0; }
int32_t clex_ctx_n_threads(const clex_ctx *c) { return c ? clex_pool_size(c->pool) : 0; }
int32_t clex_ctx_n_batch(const clex_ctx *c) { return c ? c->n_batch : 0; }
uint64_t clex_ctx_kv_bytes(const clex_ctx *c) { return c ? c->kv_bytes : 0; }
int32_t clex_ctx_kv_type(const clex_ctx *c) { return c ? c->kv_type : -1; }

int clex_ctx_set_rope_set(clex_ctx *c, int32_t set, const float *inv_freq, int32_t n) {
    if (!c || !inv_freq) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (set < 0 || set >= c->m->n_sets) return clex_fail(CLEX_E_INVALID, "rope table %d: the model has %d", set, c->m->n_sets);
    if (n != c->n_pairs)
        return clex_fail(CLEX_E_INVALID, "rope table has %d entries, the model rotates %d pairs", n, c->n_pairs);
    for (int32_t i = 0; i < n; i++)
        if (!isfinite(inv_freq[i])) return clex_fail(CLEX_E_INVALID, "rope table entry %d is not finite", i);
    memcpy(c->inv_freq + (int64_t)set * c->n_pairs, inv_freq, (size_t)n * sizeof(float));
    return CLEX_OK;
}

int clex_ctx_set_rope(clex_ctx *c, const float *inv_freq, int32_t n) { return clex_ctx_set_rope_set(c, 0, inv_freq, n); }

int clex_ctx_set_attn_scale(clex_ctx *c, float kq_scale) {
    if (!c) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (!isfinite(kq_scale) || !(kq_scale > 0.0f))
        return clex_fail(CLEX_E_INVALID, "attention scale must be finite and positive, got %g", (double)kq_scale);
    c->kq_scale = kq_scale;
    return CLEX_OK;
}
