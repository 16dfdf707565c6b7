/* Attention over the KV cache.
 *
 * The scalar reference kernels (see internal.h): scores and weighted value sums over a whole run
 * of keys, for each cache type, and the f16 row conversions. One call covers a run of keys, so
 * the SIMD versions (arch/x86/avx2.c, avx512.c; the Q8_0 ones in avx2_attn.c, avx512_attn.c)
 * pay the arithmetic, not a call and a horizontal sum per key. Arithmetic is float32 throughout;
 * an f16 cache only rounds what it stores. A Q8_0 cache's scores are integer products of the key
 * blocks and the query head quantized to Q8_0 (as llama.cpp's CPU attention over a Q8_0 cache
 * takes them), each block's scaled by the two scales.
 *
 * Then the attention step of the forward pass: causal attention, one (token, KV head, chunk of
 * keys) at a time, the query heads of a GQA group taking turns over the same run of cached keys
 * and values. Decoding one token splits each head's keys into chunks (so every thread has work
 * when there are few KV heads) and combines the chunks' partial softmaxes afterwards. Prefill
 * where the instruction set has the blocked kernel (clex_k.fattn: 16 tokens of one query head
 * per call, any of the three cache types) takes that instead. */
#include <math.h>
#include <string.h>

#include "model.h"

/* ------------------------------------------------------------------ reference kernels */

void clex_scores32_generic(int64_t n, int64_t D, const float *q, const float *K, float scale, float *s) {
    for (int64_t p = 0; p < n; p++) {
        float acc = 0.0f;
        for (int64_t i = 0; i < D; i++) acc += q[i] * K[p * D + i];
        s[p] = acc * scale;
    }
}

void clex_scores16_generic(int64_t n, int64_t D, const float *q, const clex_fp16 *K, float scale, float *s) {
    for (int64_t p = 0; p < n; p++) {
        float acc = 0.0f;
        for (int64_t i = 0; i < D; i++) acc += q[i] * clex_fp16_to_fp32(K[p * D + i]);
        s[p] = acc * scale;
    }
}

/* key row p's blocks against the query's: sum over blocks of (integer product) * (dk * dq),
 * the Q8_0 x Q8_0 dot product of the weights' kernels */
void clex_scores_q8_generic(int64_t n, int64_t D, const block_q8_0 *q, const block_q8_0 *K, float scale, float *s) {
    for (int64_t p = 0; p < n; p++) {
        float acc;
        clex_vec_dot_q8_0_q8_0_generic(D, &acc, K + p * (D / QK), q);
        s[p] = acc * scale;
    }
}

void clex_wsum32_generic(int64_t n, int64_t D, const float *w, const float *V, float *out) {
    for (int64_t p = 0; p < n; p++)
        for (int64_t i = 0; i < D; i++) out[i] += w[p] * V[p * D + i];
}

void clex_wsum16_generic(int64_t n, int64_t D, const float *w, const clex_fp16 *V, float *out) {
    for (int64_t p = 0; p < n; p++)
        for (int64_t i = 0; i < D; i++) out[i] += w[p] * clex_fp16_to_fp32(V[p * D + i]);
}

/* each value block once: its codes times w[p] * its scale */
void clex_wsum_q8_generic(int64_t n, int64_t D, const float *w, const block_q8_0 *V, float *out) {
    const int64_t nb = D / QK;
    for (int64_t p = 0; p < n; p++)
        for (int64_t b = 0; b < nb; b++) {
            const block_q8_0 *v = V + p * nb + b;
            const float a = w[p] * clex_fp16_to_fp32(v->d);
            for (int j = 0; j < QK; j++) out[b * QK + j] += a * (float)v->qs[j];
        }
}

/* the softmax step as decoding always took it: max, expf, a double sum in key order */
void clex_softmax_generic(int64_t n, float *s, int normalize, float *max, double *sum) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = s[i] > m ? s[i] : m;
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) {
        s[i] = expf(s[i] - m);
        acc += s[i];
    }
    if (normalize) {
        const float inv = (float)(1.0 / acc);
        for (int64_t i = 0; i < n; i++) s[i] *= inv;
    }
    *max = m;
    *sum = acc;
}

void clex_to_f16_generic(const float *x, clex_fp16 *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = clex_fp32_to_fp16(x[i]);
}

void clex_from_f16_generic(const clex_fp16 *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = clex_fp16_to_fp32(x[i]);
}

/* ------------------------------------------------------------------ one head */

typedef struct {
    int32_t type;             /* the cache's CLEX_TYPE_* */
    const char *k, *v;        /* one KV head's rows [n_ctx], `row` bytes each */
    size_t row;
} kv_head;

static kv_head kv_head_at(const clex_ctx *c, int l, int64_t hk) {
    return (kv_head){c->kv_type, kv_row_at(c, c->k_cache, l, hk, 0), kv_row_at(c, c->v_cache, l, hk, 0), c->kv_row};
}

/* the kernels of the cache's type over keys (values) [p0, p0 + n); q: the query in the type's
 * query form (floats; Q8_0 blocks for a Q8_0 cache) */
static void scores_run(const kv_head *kv, int64_t D, const void *q, int64_t p0, int64_t n, float scale, float *s) {
    const void *K = kv->k + (size_t)p0 * kv->row;
    switch (kv->type) {
    case CLEX_TYPE_F16: clex_k.scores16(n, D, q, K, scale, s); break;
    case CLEX_TYPE_Q8_0: clex_k.scores_q8(n, D, q, K, scale, s); break;
    default: clex_k.scores32(n, D, q, K, scale, s); break;
    }
}

static void wsum_run(const kv_head *kv, int64_t D, const float *w, int64_t p0, int64_t n, float *out) {
    const void *V = kv->v + (size_t)p0 * kv->row;
    switch (kv->type) {
    case CLEX_TYPE_F16: clex_k.wsum16(n, D, w, V, out); break;
    case CLEX_TYPE_Q8_0: clex_k.wsum_q8(n, D, w, V, out); break;
    default: clex_k.wsum32(n, D, w, V, out); break;
    }
}

static void softmax_run(int64_t n, float *s, int normalize, float *max, double *sum) {
    (clex_k.softmax ? clex_k.softmax : clex_softmax_generic)(n, s, normalize, max, sum);
}

/* The g query heads of a GQA group (q: g rows in the query form, D floats or D / 32 blocks
 * apart) over keys [p0, p0 + n): scores to s + j * n; the group kernel where the set has one,
 * else the per-head kernel head by head (the same bits either way). */
static void gscores_run(const kv_head *kv, int64_t g, int64_t D, const void *q, int64_t p0, int64_t n, float scale,
                        float *s) {
    const void *K = kv->k + (size_t)p0 * kv->row;
    switch (kv->type) {
    case CLEX_TYPE_F16:
        if (clex_k.gscores16) { clex_k.gscores16(g, n, D, q, K, scale, s); return; }
        break;
    case CLEX_TYPE_Q8_0:
        if (clex_k.gscores_q8) { clex_k.gscores_q8(g, n, D, q, K, scale, s); return; }
        break;
    default:
        if (clex_k.gscores32) { clex_k.gscores32(g, n, D, q, K, scale, s); return; }
        break;
    }
    const size_t qrow = kv->type == CLEX_TYPE_Q8_0 ? (size_t)(D / QK) * sizeof(block_q8_0) : (size_t)D * sizeof(float);
    for (int64_t j = 0; j < g; j++) scores_run(kv, D, (const char *)q + j * qrow, p0, n, scale, s + j * n);
}

/* out + j * ostride += sum_p w[j * n + p] V[p0 + p] for heads j < g */
static void gwsum_run(const kv_head *kv, int64_t g, int64_t D, const float *w, int64_t p0, int64_t n, float *out,
                      int64_t ostride) {
    const void *V = kv->v + (size_t)p0 * kv->row;
    switch (kv->type) {
    case CLEX_TYPE_F16:
        if (clex_k.gwsum16) { clex_k.gwsum16(g, n, D, w, V, out, ostride); return; }
        break;
    case CLEX_TYPE_Q8_0:
        if (clex_k.gwsum_q8) { clex_k.gwsum_q8(g, n, D, w, V, out, ostride); return; }
        break;
    default:
        if (clex_k.gwsum32) { clex_k.gwsum32(g, n, D, w, V, out, ostride); return; }
        break;
    }
    for (int64_t j = 0; j < g; j++) wsum_run(kv, D, w + j * n, p0, n, out + j * ostride);
}

/* The g query heads of one GQA group over keys [p0, p1) of their KV head: scores, (soft-cap,)
 * max, exp, sum for each head, the scores and the value sums one pass over the run for all g
 * (sc holds g * (p1 - p0) scores). Head j's result goes to out + j * ostride: the normalised output, or
 * with part set (max, sum of exp, unnormalised sum of e * v) for the combination step. */
static void attend_group(int64_t D, int64_t g, const void *q, const kv_head *kv, int64_t p0, int64_t p1, float scale,
                         float cap, float *sc, float *out, int64_t ostride, int part) {
    const int64_t n = p1 - p0;
    gscores_run(kv, g, D, q, p0, n, scale, sc);
    for (int64_t j = 0; j < g; j++) {
        float *s = sc + j * n, m;
        double acc;
        if (cap > 0.0f)
            for (int64_t i = 0; i < n; i++) s[i] = cap * tanhf(s[i] / cap);
        softmax_run(n, s, !part, &m, &acc);
        if (part) {
            out[j * ostride] = m;
            out[j * ostride + 1] = (float)acc;
        }
        memset(out + j * ostride + (part ? 2 : 0), 0, (size_t)D * sizeof(float));
    }
    gwsum_run(kv, g, D, sc, p0, n, out + (part ? 2 : 0), ostride);
}

/* ------------------------------------------------------------------ the kernels, for tests */

static int attn_check(int32_t kv_type, int64_t n, int64_t D, const void *a, const void *b, const void *c) {
    clex_init_once();
    if (!clex_kv_type_supported(kv_type)) return clex_fail(CLEX_E_INVALID, "KV cache type %d is not supported", kv_type);
    const int64_t blck = clex_traits(kv_type)->blck;
    if (n < 0 || D <= 0 || D % blck)
        return clex_fail(CLEX_E_INVALID, "%lld rows of %lld values of %s (whole blocks of %lld)", (long long)n,
                         (long long)D, clex_traits(kv_type)->name, (long long)blck);
    if (n > 0 && (!a || !b || !c)) return clex_fail(CLEX_E_INVALID, "NULL argument");
    return CLEX_OK;
}

int clex_attn_scores(int32_t kv_type, int64_t n, int64_t D, const void *q, const void *K, float scale, float *s) {
    const int rc = attn_check(kv_type, n, D, q, K, s);
    if (rc || n == 0) return rc;
    const kv_head kv = {kv_type, K, NULL, 0};
    scores_run(&kv, D, q, 0, n, scale, s);
    return CLEX_OK;
}

int clex_attn_wsum(int32_t kv_type, int64_t n, int64_t D, const float *w, const void *V, float *out) {
    const int rc = attn_check(kv_type, n, D, w, V, out);
    if (rc || n == 0) return rc;
    const kv_head kv = {kv_type, NULL, V, 0};
    wsum_run(&kv, D, w, 0, n, out);
    return CLEX_OK;
}

int clex_attn_group_scores(int32_t kv_type, int64_t g, int64_t n, int64_t D, const void *q, const void *K,
                           float scale, float *s) {
    const int rc = attn_check(kv_type, n, D, q, K, s);
    if (rc) return rc;
    if (g <= 0) return clex_fail(CLEX_E_INVALID, "a group of %lld heads", (long long)g);
    if (n == 0) return CLEX_OK;
    const kv_head kv = {kv_type, K, NULL, 0};
    gscores_run(&kv, g, D, q, 0, n, scale, s);
    return CLEX_OK;
}

int clex_attn_group_wsum(int32_t kv_type, int64_t g, int64_t n, int64_t D, const float *w, const void *V, float *out,
                         int64_t out_stride) {
    const int rc = attn_check(kv_type, n, D, w, V, out);
    if (rc) return rc;
    if (g <= 0 || out_stride < D)
        return clex_fail(CLEX_E_INVALID, "a group of %lld heads, outputs %lld floats apart", (long long)g,
                         (long long)out_stride);
    if (n == 0) return CLEX_OK;
    const kv_head kv = {kv_type, NULL, V, 0};
    gwsum_run(&kv, g, D, w, 0, n, out, out_stride);
    return CLEX_OK;
}

int clex_attn_softmax(int64_t n, float *s, int32_t normalize, float *max, double *sum) {
    clex_init_once();
    if (n <= 0 || !s || !max || !sum) return clex_fail(CLEX_E_INVALID, "softmax of %lld scores", (long long)n);
    softmax_run(n, s, normalize != 0, max, sum);
    return CLEX_OK;
}

/* ------------------------------------------------------------------ chunked decoding */

/* How many chunks decoding one token splits each KV head's keys into: enough units for every
 * thread twice over, none shorter than 64 keys; 1 (no split) for a batch. */
static int64_t attn_chunks(int64_t T, int64_t HKV, int64_t n_keys, int nth) {
    if (T != 1 || nth == 1) return 1;
    int64_t ch = (2 * nth + HKV - 1) / HKV;
    if (ch > ATT_MAX_CHUNKS) ch = ATT_MAX_CHUNKS;
    if (ch > n_keys / 64) ch = n_keys / 64;
    return ch < 1 ? 1 : ch;
}

/* Head h's output (out) from its chunks' (max, sum of exp, sum of e * v) at ph: each chunk's sum
 * rescaled to the overall max, over the overall sum of exp. */
static void combine_chunks(int64_t D, const float *ph, int64_t chunks, float *out) {
    float m = -INFINITY;
    for (int64_t ch = 0; ch < chunks; ch++) m = ph[ch * (D + 2)] > m ? ph[ch * (D + 2)] : m;
    double l = 0.0;
    for (int64_t ch = 0; ch < chunks; ch++) l += (double)ph[ch * (D + 2) + 1] * exp((double)ph[ch * (D + 2)] - m);
    memset(out, 0, (size_t)D * sizeof(float));
    for (int64_t ch = 0; ch < chunks; ch++)
        clex_k.axpy_f32(D, (float)(exp((double)ph[ch * (D + 2)] - m) / l), ph + ch * (D + 2) + 2, out);
}

/* ------------------------------------------------------------------ the attention step */

/* The first key position token `pos` attends to: 0, or with a sliding window of n_swa the
 * oldest of the last n_swa positions (itself included). */
static int64_t first_key(int64_t pos, int32_t n_swa) {
    return n_swa > 0 && pos + 1 > n_swa ? pos + 1 - n_swa : 0;
}

/* How many chunks token t's keys are split into: as a lone token's decode splits them for a
 * batched decode (each token then equals its own decode bit for bit), else attn_chunks. */
static int64_t token_chunks(const clex_route *r, int32_t n_swa, int64_t T, int64_t t, int64_t HKV, int nth) {
    const int64_t pos = route_pos(r, t);
    return attn_chunks(r->ctx ? 1 : T, HKV, pos + 1 - first_key(pos, n_swa), nth);
}

/* the chunks' partial results of token t, head h (c->part: [T][n_head][ATT_MAX_CHUNKS][D + 2]) */
static float *part_at(const clex_ctx *c, int64_t t, int64_t h) {
    const int64_t D = c->m->hp.head_dim;
    return c->part + ((t * c->m->hp.n_head + h) * ATT_MAX_CHUNKS) * (D + 2);
}

/* Prefill through the blocked kernel (clex_k.fattn), in units of (query head, 16 consecutive
 * tokens) dealt round-robin to the threads, so each thread gets early and late tokens alike.
 * Returns 0 where it does not apply: a batch over several contexts (batched decoding keeps each
 * token's own chunking), soft-capping, a head size or cache type the kernel does not take, a
 * batch too short to fill its lanes. */
#define FATTN_MIN_TOKENS 8
static int attention_blocked(clex_ctx *c, int l, int64_t T, const clex_route *r, float scale, int ith, int nth) {
    const clex_hparams *hp = &c->m->hp;
    const int64_t D = hp->head_dim, H = hp->n_head, grp = H / hp->n_head_kv, qd = H * D;
    if (!clex_k.fattn || r->ctx || T < FATTN_MIN_TOKENS || hp->attn_softcap > 0.0f || D % 16 || D > CLEX_FATTN_MAX_D ||
        D % clex_traits(c->kv_type)->blck)
        return 0;
    const int32_t n_swa = c->m->layers[l].n_swa;
    const int64_t blocks = (T + 15) / 16;
    for (int64_t u = ith; u < H * blocks; u += nth) {
        const int64_t h = u % H, t0 = u / H * 16, nt = T - t0 < 16 ? T - t0 : 16;
        int64_t lo[16], hi[16];
        for (int64_t i = 0; i < nt; i++) {
            const int64_t pos = route_pos(r, t0 + i);
            lo[i] = first_key(pos, n_swa);
            hi[i] = pos + 1;
        }
        const kv_head kv = kv_head_at(c, l, h / grp);
        const clex_fattn_job job = {D, (int32_t)nt, kv.type, c->q + t0 * qd + h * D, qd,
                                    kv.k, kv.v, lo, hi, scale, c->att + t0 * qd + h * D, qd};
        clex_k.fattn(&job);
    }
    return 1;
}

/* Units (token, kv head, chunk) of chunks_max chunks per token: a token with fewer skips the rest. */
void clex_attention(clex_ctx *c, int l, int64_t T, const clex_route *r, int ith, int nth) {
    const clex_hparams *hp = &c->m->hp;
    const int64_t D = hp->head_dim, H = hp->n_head, HKV = hp->n_head_kv, qd = H * D;
    const int64_t grp = H / HKV;
    const int32_t n_swa = c->m->layers[l].n_swa;
    int64_t cmax = token_chunks(r, n_swa, T, 0, HKV, nth);
    for (int64_t t = 1; r->ctx && t < T; t++) {
        const int64_t ct = token_chunks(r, n_swa, T, t, HKV, nth);
        cmax = ct > cmax ? ct : cmax;
    }
    const float base = hp->attn_scale > 0.0f ? hp->attn_scale : 1.0f / sqrtf((float)D);
    if (attention_blocked(c, l, T, r, c->kq_scale * base, ith, nth)) return;
    float *scores = c->scores + (int64_t)ith * c->n_ctx * grp;       /* [grp][run] */
    block_q8_0 *qq = c->qq + (int64_t)ith * (D / QK + 1) * grp;       /* [grp][D / 32] */
    int64_t lo, hi;
    split(T * HKV * cmax, ith, nth, &lo, &hi);
    for (int64_t j = lo; j < hi; j++) {
        const int64_t t = j / (HKV * cmax), hk = (j / cmax) % HKV, ch = j % cmax;
        const int64_t chunks = cmax > 1 ? token_chunks(r, n_swa, T, t, HKV, nth) : 1;
        if (ch >= chunks) continue;
        const clex_ctx *kc = route_ctx(c, r, t);   /* the token's own cache and kq scale */
        const int64_t pos = route_pos(r, t), k0 = first_key(pos, n_swa), n_keys = pos + 1 - k0;
        const int64_t p0 = k0 + n_keys * ch / chunks, p1 = k0 + n_keys * (ch + 1) / chunks;
        const kv_head kv = kv_head_at(kc, l, hk);
        const float scale = kc->kq_scale * base;
        const float *qg = c->q + t * qd + hk * grp * D;
        const void *q = qg;
        if (kv.type == CLEX_TYPE_Q8_0) {   /* each head quantized once, as the activation quantizer does */
            for (int64_t j = 0; j < grp; j++) clex_k.from_float[CLEX_TYPE_Q8_0](qg + j * D, qq + j * (D / QK), D);
            q = qq;
        }
        if (chunks > 1)
            attend_group(D, grp, q, &kv, p0, p1, scale, hp->attn_softcap, scores, part_at(c, t, hk * grp) + ch * (D + 2),
                         ATT_MAX_CHUNKS * (D + 2), 1);
        else
            attend_group(D, grp, q, &kv, p0, p1, scale, hp->attn_softcap, scores, c->att + t * qd + hk * grp * D, D, 0);
    }
    if (cmax > 1) {   /* combine the chunks of each (token, head) that has several */
        clex_pool_barrier(c->pool);
        split(T * H, ith, nth, &lo, &hi);
        for (int64_t j = lo; j < hi; j++) {
            const int64_t t = j / H, chunks = token_chunks(r, n_swa, T, t, HKV, nth);
            if (chunks > 1) combine_chunks(D, part_at(c, t, j % H), chunks, c->att + j * D);
        }
    }
}
