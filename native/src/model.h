/* The model and the context, and what the files that run them share (model.c, forward.c,
 * attn.c, kv.c, matmul.c).
 *
 * KV cache: keys are stored after rotation (so decoding never re-rotates them), both caches as
 * [layer][kv head][position] rows of head_dim values in the cache's type (clex_ctx_create's
 * kv_type): float32, f16 (the new keys and values rounded to half when stored) or Q8_0 (each row
 * head_dim / 32 block_q8_0, quantized by the Q8_0 activation quantizer: gguf-py's bytes). f32 and
 * f16 rows meet float32 queries; a Q8_0 row meets the query head quantized to Q8_0 (integer
 * products, as llama.cpp's quantized cache does). Sums and the softmax stay float32.
 */
#ifndef CLEXRT_MODEL_H
#define CLEXRT_MODEL_H

#include "internal.h"

/* The quantized activation types, as slots of clex_acts and of the context's scratch: one
 * activation matrix is converted once per type that the weights reading it pair with. */
enum { CLEX_ACT_Q8_0, CLEX_ACT_Q8_1, CLEX_ACT_Q8_K, CLEX_ACT_N };

/* the slot of activation type `type`; -1 for a float one (F32: no conversion) */
static inline int clex_act_slot(int32_t type) {
    switch (type) {
    case CLEX_TYPE_Q8_0: return CLEX_ACT_Q8_0;
    case CLEX_TYPE_Q8_1: return CLEX_ACT_Q8_1;
    case CLEX_TYPE_Q8_K: return CLEX_ACT_Q8_K;
    default: return -1;
    }
}

/* the activation type of slot s */
static inline int32_t clex_act_type(int s) {
    return s == CLEX_ACT_Q8_0 ? CLEX_TYPE_Q8_0 : s == CLEX_ACT_Q8_1 ? CLEX_TYPE_Q8_1 : CLEX_TYPE_Q8_K;
}

/* Decoding splits each KV head's keys into up to this many chunks, so every thread works on a
 * model with few KV heads; the chunks' partial results are combined afterwards (attn.c). */
#define ATT_MAX_CHUNKS 16

/* rope tables a context holds (clex_hparams.n_rope_sets): a global one and a local one */
#define CLEX_MAX_ROPE_SETS 2

struct clex_model {
    clex_hparams hp;
    clex_tensor tok_embd;     /* [n_embd, n_vocab] */
    clex_tensor output_norm;  /* [n_embd] */
    clex_tensor output_norm_b;/* [n_embd] or absent (data NULL) */
    clex_tensor output;       /* [n_embd, n_vocab]; the embeddings when tied */
    clex_tensor output_b;     /* [n_vocab] or absent */
    clex_layer *layers;
    int32_t n_sets;           /* rope tables (hp.n_rope_sets, at least 1) */
    uint64_t n_params;
};

struct clex_ctx {
    const clex_model *m;
    int32_t n_ctx, n_batch;
    clex_pool *pool;
    int32_t n_pairs;       /* n_rot / 2 */
    float *inv_freq;       /* [n_sets][n_pairs] the tables new tokens are rotated with */
    float kq_scale;        /* extra factor on q.k/sqrt(head_dim) (YaRN temperature); 1 by default */
    void *k_cache;         /* [n_layer][n_head_kv][n_ctx] rows of head_dim values of kv_type */
    void *v_cache;         /* same */
    int32_t kv_type;       /* CLEX_TYPE_F32, CLEX_TYPE_F16 or CLEX_TYPE_Q8_0 */
    size_t kv_row;         /* bytes per cached row (head_dim values) */
    uint64_t kv_bytes;
    block_q8_0 *qq;        /* [n_threads][head_dim / 32]: a query head quantized for a Q8_0 cache */
    /* scratch for one batch of up to n_batch tokens */
    float *x;              /* [B, n_embd] residual stream */
    float *xn;             /* [B, n_embd] normalised input of the next products (then an output's pre-norm rows) */
    float *q;              /* [B, n_head*head_dim]; q, k, v and att are one allocation, */
    float *k;              /* [B, n_head_kv*head_dim]    which gate shares (model.c) */
    float *v;              /* [B, n_head_kv*head_dim] */
    float *att;            /* [B, n_head*head_dim] */
    float *gate;           /* [B, n_ff] (becomes act(gate) * up) */
    float *up;             /* [n_threads][B, CLEX_UP_ROWS]: a thread's slice of up; NULL for the ungated GELU MLP */
    void *act[CLEX_ACT_N]; /* [B, k/blck] blocks of each activation type, k the longest row of
                            * the weights paired with it; NULL when no weight is */
    float *cs;             /* [n_sets][B, n_pairs, 2] cos, sin of each token's angles, per table */
    float *par;            /* [B, n_embd] the attention output, with a parallel residual (else NULL) */
    /* mixture of experts (NULL for a dense model) */
    float *router;         /* [B, n_expert] router logits */
    int32_t *sel;          /* [B, n_expert_used] each token's experts */
    float *selw;           /* [B, n_expert_used] and their weights */
    int32_t *etok;         /* [n_expert, B] the tokens routed to each expert, in order; then */
    int32_t *eslot;        /* [n_expert, B] which of the token's choices it is */
    int32_t *ecount;       /* [n_expert] */
    float *xe;             /* [B, n_embd] an expert's gathered inputs, then its outputs */
    float *scores;         /* [n_threads, n_ctx] */
    float *part;           /* [part_tokens][n_head, ATT_MAX_CHUNKS, head_dim + 2]: chunked decoding's partials */
    int32_t part_tokens;   /* 1, more once a batched decode of more contexts has run on this one */
    /* row chunks of matrix products are handed out dynamically, so a thread that the OS
     * delays does not hold the others at the next barrier; step k uses counter k % 2 */
    _Atomic int64_t chunk[2];
    /* profiling (clex_ctx_profile): [n_threads][CLEX_PROF_STEPS][work ns, wait ns, barriers],
     * NULL until first asked for */
    uint64_t *prof;
    int32_t prof_on;
    int64_t prof_passes;
    uint64_t prof_t0;      /* when the caller started the current pass */
    uint64_t prof_last0;   /* when thread 0 finished its part of it */
};

/* the steps a profile counts time in (clex_profile_step_name gives their names) */
enum {
    PROF_START, PROF_EMBED, PROF_ATTN_NORM, PROF_QKV, PROF_ROPE, PROF_ATTENTION, PROF_ATTN_OUT, PROF_FFN_NORM,
    PROF_GATE_UP, PROF_FFN_DOWN, PROF_MOE_ROUTE, PROF_MOE_EXPERTS, PROF_PAR_ADD, PROF_OUT_NORM, PROF_OUTPUT,
    PROF_END
};
uint64_t clex_now_ns(void);

/* rows of a gated FFN's up projection a thread computes (and combines with gate) at a time */
#define CLEX_UP_ROWS 256

/* ---- small shared helpers ---- */

/* thread ith's share [lo, hi) of n items */
static inline void split(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi) {
    *lo = n * ith / nth;
    *hi = n * (ith + 1) / nth;
}

static inline uint64_t row_bytes(const clex_type_traits *tr, int64_t ne0) {
    return (uint64_t)(ne0 / tr->blck) * (uint64_t)tr->bytes;
}

/* The row of (layer, kv head, position) in `cache` (c->k_cache or c->v_cache). */
static inline char *kv_row_at(const clex_ctx *c, void *cache, int64_t l, int64_t h, int64_t pos) {
    const int64_t row = (l * c->m->hp.n_head_kv + h) * c->n_ctx + pos;
    return (char *)cache + (size_t)row * c->kv_row;
}

/* Rotary position embedding of one head: pair i turns by the angle whose cos, sin are
 * cs[2i], cs[2i+1]; the dimensions past the n_pairs pairs are kept. dst may be src. Which
 * elements (a, b) form pair i is the model's rope_layout:
 *   CLEX_ROPE_ADJACENT (GGUF llama):  2i, 2i+1
 *   CLEX_ROPE_NEOX (rotate-half):     i, i + n_pairs
 * and a' = a cos - b sin, b' = a sin + b cos. */
static inline void rope_rotate(int32_t layout, float *dst, const float *src, const float *cs, int32_t n_pairs) {
    const int32_t step = layout == CLEX_ROPE_NEOX ? 1 : 2, other = layout == CLEX_ROPE_NEOX ? n_pairs : 1;
    for (int32_t i = 0; i < n_pairs; i++) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const int32_t ia = i * step, ib = ia + other;
        const float a = src[ia], b = src[ib];
        dst[ia] = a * c - b * s;
        dst[ib] = a * s + b * c;
    }
}

/* the table (rope set) of layer l, and the angles of token t under it */
static inline const float *layer_inv_freq(const clex_ctx *c, int l) {
    return c->inv_freq + (int64_t)c->m->layers[l].rope_set * c->n_pairs;
}
static inline float *set_angles(const clex_ctx *c, int set, int64_t t) {
    return c->cs + ((int64_t)set * c->n_batch + t) * c->n_pairs * 2;
}

/* Where the tokens of one forward pass go. A plain eval (ctx and pos NULL): every token to the
 * running context, at n_past + t. A batched decode (clex_eval_batch): token t to ctx[t] at
 * pos[t], with that context's KV cache, rope tables and kq scale; the running context (the
 * batch's first) lends its thread pool and its scratch (activations, angles, scores). */
typedef struct {
    clex_ctx *const *ctx;   /* [T] or NULL */
    const int32_t *pos;     /* [T] or NULL */
    int32_t n_past;
} clex_route;

static inline clex_ctx *route_ctx(clex_ctx *c, const clex_route *r, int64_t t) { return r->ctx ? r->ctx[t] : c; }
static inline int64_t route_pos(const clex_route *r, int64_t t) { return r->pos ? r->pos[t] : r->n_past + t; }

/* ---- model.c ---- */
/* t must be [ne0, ne1] (ne1 = 0: a vector) of a type the forward pass runs (F32 if f32_only),
 * with nbytes to match; `what` names it when t->name is NULL. */
int clex_check_tensor(const clex_tensor *t, const char *what, int64_t ne0, int64_t ne1, int f32_only);

/* 1 when the current kernels' four-row product of weight type `type` gives bit for bit its
 * one-row product (or it has no four-row kernel), 0 otherwise: found once per instruction set
 * and type on fixed pseudo-random rows (model.c). An exact batched decode groups tokens by four
 * only for such types. */
int clex_dot4_exact(int32_t type);

/* Room in c->part for the chunks of n tokens' heads (a batched decode run on c). */
int clex_ctx_reserve_part(clex_ctx *c, int32_t n);

/* ---- matmul.c: activations and row products ---- */

/* quantized copies of one activation matrix, one per activation type a consumer needs */
typedef struct {
    const float *f32;      /* [T, K] */
    void *q[CLEX_ACT_N];   /* [T, K/blck] blocks of the slot's type (valid where prepared) */
    int64_t k;
} clex_acts;

/* The slots (bit 1 << slot) that weight w's products read: its activation type's; 0 for float. */
unsigned clex_act_need(const clex_tensor *w);
/* Convert rows [t0, t1) of x [T, k] into every activation type of `need`, into bufs[slot]
 * (rows of k / block blocks; k a whole number of blocks of each such type). */
void clex_prepare_acts(clex_acts *a, const float *x, int64_t k, int64_t t0, int64_t t1, unsigned need,
                       void *const bufs[CLEX_ACT_N]);
/* x (one row of k) into row `row` of bufs in every activation type of `need`; a then reads
 * that row (and x itself for float weights) */
void clex_prepare_row(clex_acts *a, const float *x, int64_t k, int64_t row, unsigned need,
                      void *const bufs[CLEX_ACT_N]);
/* the same activations from row t0 on */
clex_acts clex_acts_from(const clex_acts *a, int64_t t0);
/* y[t, r] (+)= W[r, :] . x[t, :]  for rows [r0, r1) and all n_tok tokens */
void clex_matmul_rows(const clex_tensor *w, const clex_acts *a, int64_t n_tok, float *y, int64_t ystride,
                      int accumulate, int64_t r0, int64_t r1);

/* Dynamic row scheduling for one step of the forward pass. Every thread calls clex_sched_begin
 * with the same step number; thread 0 clears the counter the *next* step will use (nobody
 * touches it until after the barrier that ends this step). */
typedef struct {
    _Atomic int64_t *ctr;
    int64_t rows, chunk;
} clex_sched;

clex_sched clex_sched_begin(clex_ctx *c, int *step, int ith, int nth, int64_t rows);
int clex_sched_next(clex_sched *sc, int64_t *lo, int64_t *hi);

/* ---- attn.c ---- */
/* Causal attention of the batch's queries (c->q, rotated, [T, n_head*head_dim]) over layer l's
 * cache of each token's context (positions <= its own, route r) into c->att. A step of the
 * forward job: every thread calls it; the caller puts a barrier after it. */
void clex_attention(clex_ctx *c, int l, int64_t T, const clex_route *r, int ith, int nth);

/* ---- kv.c ---- */
/* Store token row k (rotated) and v of kv head h at position pos of layer l's cache. */
void clex_kv_store(clex_ctx *c, int l, int64_t h, int64_t pos, const float *k, const float *v);
/* One cached row (head_dim values) in the cache's type from floats, and back. */
void clex_kv_put_row(const clex_ctx *c, const float *x, void *row);
void clex_kv_get_row(const clex_ctx *c, const void *row, float *x);

#endif
