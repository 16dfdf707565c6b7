/* libFuzzer harness for the C core's public entry points (native/include/clexrt.h), built with
 * AddressSanitizer + UBSan by `make fuzz-c`.
 *
 * The first input byte picks an instruction set this CPU runs (clex_set_isa) and one scenario:
 *   0  row conversions: clex_quantize_row / quantize_act / dequantize_row / vec_dot
 *   1  clex_matmul with a fuzzed tensor descriptor
 *   2  clex_model_create from fuzzed hyper-parameters (the architecture fields too, from ABI 6)
 *      and tensor descriptors, then (when it is accepted) clex_ctx_create (with a fuzzed KV type:
 *      clex_ctx_create_kv in ABI 5, clex_ctx_create from ABI 6) and a fuzzed sequence of
 *      clex_eval / set_rope / set_attn_scale (ABI 4) / rerotate / shift
 *
 * What clexrt.h leaves to the caller is respected: every pointer points at a buffer of the
 * length the API documents for the arguments passed (a tensor's data holds its nbytes; logits
 * hold n_vocab or n_tok * n_vocab floats; an old rope table holds n_rot/2 entries). Buffers are
 * allocated at exactly that length, so a read or write past it is an ASan report. Everything else
 * is hostile. Oracles, besides "no sanitizer report, no leak, no hang":
 *   - an argument the header says is checked (type id, block multiple, shape against the
 *     hyper-parameters, nbytes against shape and type, token id < n_vocab, n_past + n_tok <= n_ctx,
 *     table length, shift bounds) makes the call fail, computed here independently in 128 bits;
 *   - a call with arguments valid by those rules succeeds (row ops, eval).
 * A violated oracle aborts, which libFuzzer records as a crash with the input.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clexrt.h"

/* 1: steer around bugs found and reported but not yet fixed (see docs/robustness.md) so a run can
 * look for new ones. 0 (the default: every finding so far is fixed) checks them too. */
#ifndef CLEX_FUZZ_SKIP_KNOWN
#define CLEX_FUZZ_SKIP_KNOWN 0
#endif

/* ---- reading the input ---- */
typedef struct {
    const uint8_t *p;
    size_t n;
} input;

static uint64_t take(input *in, int nbytes) {
    uint64_t v = 0;
    for (int i = 0; i < nbytes && in->n; i++, in->p++, in->n--) v |= (uint64_t)in->p[0] << (8 * i);
    return v;
}

/* Mostly a value in [lo, hi]; one time in eight a boundary value that a careless check misses. */
static int64_t pick(input *in, int64_t lo, int64_t hi) {
    static const int64_t edge[] = {0, -1, 1, 2, 31, 32, 33, INT32_MAX, INT32_MIN, (int64_t)1 << 14,
                                   (int64_t)1 << 20, (int64_t)1 << 30, (int64_t)1 << 31, (int64_t)1 << 40,
                                   (int64_t)1 << 62, INT64_MAX, INT64_MIN};
    const uint8_t sel = (uint8_t)take(in, 1);
    if ((sel & 7) == 0) return edge[(sel >> 3) % (sizeof edge / sizeof edge[0])];
    const uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int64_t)(take(in, 4) % span);
}

static int32_t pick32(input *in, int64_t lo, int64_t hi) {
    const int64_t v = pick(in, lo, hi);
    return (int32_t)(uint32_t)(uint64_t)v;   /* edge values wrap, as a C caller's would */
}

static void fill(input *in, void *buf, size_t n) {
    uint8_t *b = buf;
    for (size_t i = 0; i < n; i++) b[i] = in->n ? (uint8_t)take(in, 1) : (uint8_t)(i * 131 + 7);
}

#define ORACLE(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "oracle failed: %s: ", #cond);                                         \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, " (last error: %s)\n", clex_last_error());                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* the weight types (the K-quant files' ones included), then the others: an activation type,
 * retired and unknown ids, and types known by their sizes only (IQ2_XXS, IQ1_S: not run) */
#define N_WEIGHT_TYPES 15
static const int32_t TYPES[] = {CLEX_TYPE_F32, CLEX_TYPE_F16, CLEX_TYPE_BF16, CLEX_TYPE_Q8_0, CLEX_TYPE_Q4_0,
                                CLEX_TYPE_Q4_1, CLEX_TYPE_Q5_0, CLEX_TYPE_Q5_1, CLEX_TYPE_Q2_K, CLEX_TYPE_Q3_K,
                                CLEX_TYPE_Q4_K, CLEX_TYPE_Q5_K, CLEX_TYPE_Q6_K, CLEX_TYPE_IQ4_NL, CLEX_TYPE_IQ4_XS,
                                CLEX_TYPE_Q8_1, 4, 5, 99, -1, CLEX_TYPE_IQ2_XXS, CLEX_TYPE_IQ1_S};

static int32_t pick_type(input *in) {
    const uint8_t s = (uint8_t)take(in, 1);
    if (s < 240) return TYPES[s % N_WEIGHT_TYPES];                                      /* weight types */
    return TYPES[N_WEIGHT_TYPES + s % (sizeof TYPES / sizeof TYPES[0] - N_WEIGHT_TYPES)];   /* the others */
}

/* a * b for non-negative a, b, saturating at 2^100 (far above any size that can be real) */
static __int128 mul_sat(__int128 a, __int128 b) {
    const __int128 cap = (__int128)1 << 100;
    if (a == 0 || b == 0) return 0;
    return a > cap / b ? cap : a * b;
}

/* Bytes of n elements of a type (n a whole number of blocks); -1 when that is not the case. */
static __int128 row_bytes(int32_t type, __int128 n) {
    const int64_t bs = clex_type_block_size(type), bb = clex_type_block_bytes(type);
    if (bs <= 0 || n < 0 || n % bs) return -1;
    return n / bs * bb;
}

/* ---- scenario 0: row conversions ---- */
#define MAX_ROW 4096

static void fuzz_rows(input *in) {
    const int32_t type = pick_type(in);
    const int64_t n = pick(in, 0, 2 * MAX_ROW);
    const int op = (int)(take(in, 1) % 4);
    const int64_t bs = clex_type_block_size(type);
    /* the row conversions exist for the weight types and Q8_1 */
    const int valid = bs > 0 && n >= 0 && n % bs == 0 && (clex_type_supported(type) || type == CLEX_TYPE_Q8_1);
    /* Unchecked-by-contract lengths: only pass a big n when the call must refuse it. */
    if (valid && n > MAX_ROW) return;
    const size_t nf = valid ? (size_t)n : 0;
    const size_t nq = valid ? (size_t)row_bytes(type, n) : 0;
    float *f = malloc(nf * sizeof(float) + 1);
    uint8_t *q = malloc(nq + 1);
    fill(in, f, nf * sizeof(float));
    fill(in, q, nq);
    int rc;
    switch (op) {
    case 0: rc = clex_quantize_row(type, f, q, n); break;
    case 1: rc = clex_quantize_act(type, f, q, n); break;
    case 2: rc = clex_dequantize_row(type, q, f, n); break;
    default: {
        const int32_t at = clex_type_vec_dot_type(type);
        const size_t na = valid && at >= 0 && row_bytes(at, n) >= 0 ? (size_t)row_bytes(at, n) : 0;
        uint8_t *act = malloc(na + 1);
        fill(in, act, na);
        float out = 0;
        rc = clex_vec_dot(type, n, q, act, &out);
        free(act);
        if (!clex_type_supported(type)) ORACLE(rc != 0, "vec_dot on type %d", type);
        else if (valid) ORACLE(rc == 0, "vec_dot refused type %d, n %lld", type, (long long)n);
        break;
    }
    }
    if (!valid) ORACLE(rc != 0, "row op %d accepted type %d, n %lld", op, type, (long long)n);
    else if (op < 3) ORACLE(rc == 0, "row op %d refused type %d, n %lld", op, type, (long long)n);
    free(f);
    free(q);
}

/* ---- tensor descriptors ---- */
#define MAX_TENSOR_BYTES (1u << 20)

typedef struct {
    clex_tensor t;
    void *buf;
} owned;

/* A tensor meant to be [ne0, ne1] (ne1 = 0: a vector) of a type, perturbed now and then;
 * its data is a buffer of exactly t.nbytes bytes. Returns 0 when that would be too big. */
static int make_tensor(input *in, owned *o, int64_t ne0, int64_t ne1, int f32_only, const char *name) {
    memset(o, 0, sizeof *o);
    clex_tensor *t = &o->t;
    t->name = (take(in, 1) & 1) ? name : NULL;
    t->type = f32_only ? CLEX_TYPE_F32 : pick_type(in);
    t->n_dims = ne1 > 0 ? 2 : 1;
    t->ne[0] = ne0;
    t->ne[1] = ne1 > 0 ? ne1 : 1;
    t->ne[2] = t->ne[3] = 1;
    const uint8_t how = (uint8_t)take(in, 1);
    switch (how % 16) {   /* 10 of 16: as meant */
    case 10: t->type = pick_type(in); break;
    case 11: t->n_dims = pick32(in, 0, 5); break;
    case 12: t->ne[take(in, 1) % 4] = pick(in, -2, 70); break;
    case 13: t->n_dims = 4; t->ne[1] = pick(in, 1, 4); t->ne[2] = pick(in, 1, 4); t->ne[3] = pick(in, 1, 1 << 20); break;
    case 14: t->ne[0] = pick(in, 1, 70); break;
    default: break;
    }
    __int128 nel = 1;
    int dims_ok = t->n_dims >= 1 && t->n_dims <= 4;
    for (int d = 0; dims_ok && d < t->n_dims; d++) {
        dims_ok = t->ne[d] > 0;
        if (dims_ok) nel = mul_sat(nel, t->ne[d]);
    }
    const __int128 want = dims_ok && t->ne[0] > 0 ? row_bytes(t->type, t->ne[0]) : -1;
    __int128 nb = want < 0 ? (__int128)pick(in, 0, 4096) : mul_sat(want, nel / t->ne[0]);
    /* a wrong byte count now and then, and always for a shape too big to back with memory: the
     * call must then refuse the descriptor, whatever the products of its dims overflow to */
    if (how % 16 == 15 || nb > MAX_TENSOR_BYTES) nb = (__int128)(uint64_t)pick(in, 0, 4096);
    if (nb < 0 || nb > MAX_TENSOR_BYTES) return 0;
    t->nbytes = (uint64_t)nb;
    o->buf = malloc((size_t)nb + 1);
    fill(in, o->buf, (size_t)nb);
    t->data = (take(in, 1) == 0xFF) ? NULL : o->buf;
    return 1;
}

/* Whether a descriptor is what the header says clex_model_create requires of it. */
static int tensor_ok(const clex_tensor *t, int64_t ne0, int64_t ne1, int f32_only) {
    if (!t->data || !clex_type_supported(t->type) || (f32_only && t->type != CLEX_TYPE_F32)) return 0;
    if (t->n_dims < 1 || t->n_dims > 4 || t->ne[0] != ne0) return 0;
    __int128 rest = 1;
    for (int d = 0; d < t->n_dims; d++) {
        if (t->ne[d] <= 0) return 0;
        if (d) rest = mul_sat(rest, t->ne[d]);
    }
    if (rest != (ne1 > 0 ? ne1 : 1)) return 0;
    const __int128 rb = row_bytes(t->type, ne0);
    return rb >= 0 && (__int128)t->nbytes == mul_sat(rb, rest);
}

/* ---- scenario 1: a standalone matrix product ---- */
static void fuzz_matmul(input *in) {
    const int64_t ne0 = pick(in, 1, 128), ne1 = pick(in, 1, 64);
    owned w;
    if (!make_tensor(in, &w, ne0, ne1, 0, "w")) { free(w.buf); return; }
    const int64_t n_tok = pick(in, 0, 9);
    const int ok = n_tok > 0 && w.t.n_dims >= 1 && tensor_ok(&w.t, w.t.ne[0], w.t.n_dims >= 2 ? w.t.ne[1] : 1, 0);
    /* x is [n_tok, ne[0]], y [n_tok, ne[1]]: the caller's buffers, so only for shapes we can hold */
    size_t nx = 1, ny = 1;
    if (ok && n_tok > 64) { free(w.buf); return; }   /* more rows than we hold: not a hostile call */
#if CLEX_FUZZ_SKIP_KNOWN
    /* known, reported (docs/robustness.md): clex_matmul checks a 1-D weight as one row but
     * multiplies w->ne[1] rows, reading past the data (and y) when ne[1] > 1 beyond n_dims */
    if (w.t.n_dims < 2 && w.t.ne[1] != 1) { free(w.buf); return; }
#endif
    if (ok) {
        nx = (size_t)(n_tok * w.t.ne[0]);
        ny = (size_t)(n_tok * (w.t.n_dims >= 2 ? w.t.ne[1] : 1));
    }
    float *x = malloc(nx * sizeof(float)), *y = malloc(ny * sizeof(float));
    fill(in, x, nx * sizeof(float));
    const int rc = clex_matmul(&w.t, x, n_tok, y, 1 + (int32_t)(take(in, 1) % 2));
    if (!ok) ORACLE(rc != 0, "matmul accepted type %d dims %d [%lld %lld %lld %lld] nbytes %llu n_tok %lld", w.t.type,
                    w.t.n_dims, (long long)w.t.ne[0], (long long)w.t.ne[1], (long long)w.t.ne[2],
                    (long long)w.t.ne[3], (unsigned long long)w.t.nbytes, (long long)n_tok);
    free(x);
    free(y);
    free(w.buf);
}

/* ---- scenario 2: model, context, evaluation ---- */
#define MAX_LAYERS_BUILT 3   /* distinct layers; more layers repeat them (the API allows it) */

static void fuzz_model(input *in) {
    clex_hparams hp;
    memset(&hp, 0, sizeof hp);   /* the architecture fields: 0 is LLaMA */
    hp.n_vocab = pick32(in, 1, 48);
    hp.n_embd = (take(in, 1) & 1) ? (int32_t)(uint32_t)(32 * (uint64_t)pick(in, 1, 2)) : pick32(in, 1, 40);
    hp.n_layer = pick32(in, 1, 3);
    hp.n_head = pick32(in, 1, 4);
    hp.n_head_kv = (take(in, 1) & 3) ? hp.n_head : pick32(in, 1, 4);
    hp.head_dim = (int32_t)(uint32_t)(2 * (uint64_t)pick(in, 1, 8));
    hp.n_rot = (take(in, 1) & 3) ? hp.head_dim : pick32(in, 0, 17);
    hp.n_ff = (take(in, 1) & 1) ? 32 : pick32(in, 1, 40);
    {
        const uint8_t e = (uint8_t)take(in, 1);
        const float eps[] = {1e-5f, 1e-6f, 0.0f, -1.0f, NAN, INFINITY, 1e30f, 1e-30f};
        hp.rms_eps = eps[e % 8];
    }
    int arch_llama = 1;
#if CLEX_ABI_VERSION >= 6
    /* now and then one architecture field off LLaMA's 0: the named values run (norms, rope
     * layouts, FFNs, parallel residual: the forward pass below exercises them), out-of-range ones
     * and experts (this harness builds no expert tensors) must be refused */
    if ((take(in, 1) & 7) == 0) {
        int32_t *fields[] = {&hp.norm_kind, &hp.rope_layout, &hp.ffn_kind, &hp.parallel_residual, &hp.n_expert,
                             &hp.n_expert_used};
        *fields[take(in, 1) % 6] = pick32(in, -2, 9);
        arch_llama = hp.norm_kind >= 0 && hp.norm_kind <= 1 && hp.rope_layout >= 0 && hp.rope_layout <= 1 &&
                     hp.ffn_kind >= 0 && hp.ffn_kind <= 2 && hp.parallel_residual >= 0 && hp.parallel_residual <= 1 &&
                     !hp.n_expert && !hp.n_expert_used;
    }
#if CLEX_ABI_VERSION >= 8
    /* and the scales and soft-caps: finite and >= 0 run, others are refused */
    if ((take(in, 1) & 7) == 0) {
        static const float vals[] = {0.0f, 1.0f, 0.125f, 30.0f, -1.0f, NAN, INFINITY, 1e30f};
        float *ff[] = {&hp.embd_scale, &hp.attn_scale, &hp.attn_softcap, &hp.final_softcap};
        const float v = vals[take(in, 1) % 8];
        *ff[take(in, 1) % 4] = v;
        if (!(isfinite(v) && v >= 0.0f)) arch_llama = 0;
    }
#endif
#endif
    const int64_t E = hp.n_embd, V = hp.n_vocab, F = hp.n_ff;
    const int64_t qd = (int64_t)hp.n_head * hp.head_dim, kvd = (int64_t)hp.n_head_kv * hp.head_dim;
    /* descriptors for shapes of absurd size cannot be backed by memory: leave those to the
     * hyper-parameter checks (hostile values still reach clex_model_create through them, with
     * tensors that then cannot match) */
    const int64_t sE = E > 0 && E < 4096 ? E : 32, sV = V > 0 && V < 4096 ? V : 8, sF = F > 0 && F < 4096 ? F : 32;
    const int64_t sq = qd > 0 && qd < 4096 ? qd : 16, skv = kvd > 0 && kvd < 4096 ? kvd : 16;

    owned all[3 + 9 * MAX_LAYERS_BUILT];
    int n_owned = 0, ok = 1, shapes_ok = 1;
#define T(dst, ne0, ne1, f32, name)                                                                \
    do {                                                                                           \
        owned *o_ = &all[n_owned++];                                                               \
        if (!make_tensor(in, o_, ne0, ne1, f32, name)) ok = 0;                                     \
        shapes_ok &= tensor_ok(&o_->t, ne0, ne1, f32);                                             \
        dst = o_->t;                                                                               \
    } while (0)
    clex_tensor tok, onorm, out;
    T(tok, sE, sV, 0, "token_embd.weight");
    shapes_ok &= sE == E && sV == V;
    T(onorm, sE, 0, 1, "output_norm.weight");
    const int tied = take(in, 1) & 1;
    if (tied) memset(&out, 0, sizeof out);
    else {
        /* an output tensor without data means tied embeddings (model.c), so it is not checked */
        const int before = shapes_ok;
        T(out, sE, sV, 0, "output.weight");
        if (!out.data) shapes_ok = before;
    }
    const int n_built = hp.n_layer >= 1 && hp.n_layer <= MAX_LAYERS_BUILT ? hp.n_layer : 1;
    clex_layer built[MAX_LAYERS_BUILT];
    for (int l = 0; l < n_built; l++) {
        clex_layer *L = &built[l];
        memset(L, 0, sizeof *L);   /* the optional tensors absent, window 0, rope table 0 */
        T(L->attn_norm, sE, 0, 1, "attn_norm");
        T(L->wq, sE, sq, 0, "attn_q");
        T(L->wk, sE, skv, 0, "attn_k");
        T(L->wv, sE, skv, 0, "attn_v");
        T(L->wo, sq, sE, 0, "attn_output");
        T(L->ffn_norm, sE, 0, 1, "ffn_norm");
        T(L->w_gate, sE, sF, 0, "ffn_gate");
        T(L->w_up, sE, sF, 0, "ffn_up");
        T(L->w_down, sF, sE, 0, "ffn_down");
    }
#undef T
    shapes_ok &= sF == F && sq == qd && skv == kvd;
    clex_model *m = NULL;
    clex_layer *layers = NULL;
    if (!ok) goto done;
    /* the header's contract: layers has n_layer entries (a hostile count we cannot back is skipped) */
    if (hp.n_layer > 1 << 16) goto done;
    const size_t n_layers_arr = hp.n_layer > 0 ? (size_t)hp.n_layer : 1;
    layers = malloc(n_layers_arr * sizeof(clex_layer));
    for (size_t l = 0; l < n_layers_arr; l++) layers[l] = built[l % (size_t)n_built];
#if CLEX_ABI_VERSION >= 8
    int rc = clex_model_create(&hp, &tok, &onorm, NULL, tied ? NULL : &out, NULL, layers, &m);
#else
    int rc = clex_model_create(&hp, &tok, &onorm, tied ? NULL : &out, layers, &m);
#endif
    if (!shapes_ok) ORACLE(rc != 0, "model_create accepted a tensor that does not fit the hyper-parameters");
    const int hp_ok = hp.n_vocab > 0 && hp.n_embd > 0 && hp.n_layer > 0 && hp.n_head > 0 && hp.n_head_kv > 0 &&
                      hp.head_dim > 0 && hp.n_ff > 0 && hp.n_head % hp.n_head_kv == 0 && hp.n_rot > 0 &&
                      hp.n_rot <= hp.head_dim && hp.n_rot % 2 == 0 && hp.rms_eps > 0 && isfinite(hp.rms_eps);
    if (!hp_ok) ORACLE(rc != 0, "model_create accepted bad hyper-parameters");
    if (!arch_llama) ORACLE(rc != 0, "model_create accepted an architecture value it must refuse");
    if (rc) { ORACLE(m == NULL, "a failed model_create left *out set"); goto done; }

    /* context: n_ctx within what this process may hold, or absurd (then it must be refused) */
    const int absurd = (take(in, 1) & 15) == 0;
    int32_t n_ctx = absurd ? pick32(in, INT32_MAX - 4, INT32_MAX) : pick32(in, 1, 40);
    const int32_t n_batch = pick32(in, 1, 16);
    const int32_t n_threads = 1 + (int32_t)(take(in, 1) % 2);
    /* all positive here (the model was accepted): at most 2^31^4 * 8 < 2^127 */
    const __int128 kv = (__int128)hp.n_layer * hp.n_head_kv * hp.head_dim * (n_ctx > 0 ? n_ctx : 0) * 8;
    if (!absurd && kv > (64 << 20)) goto done;
    if (absurd && kv < ((__int128)1 << 64)) goto done;   /* large but representable: not our case */
    clex_ctx *c = NULL;
#if CLEX_ABI_VERSION >= 5
    /* the KV cache's element type: F32, F16, Q8_0 (since ABI 13; a head_dim of whole blocks of 32
     * only), or one it must refuse */
    static const int32_t kv_types[] = {CLEX_TYPE_F32, CLEX_TYPE_F16, CLEX_TYPE_Q4_0, CLEX_TYPE_Q8_0, 99};
    const int32_t kv_type = kv_types[take(in, 1) % 5];
#if CLEX_ABI_VERSION >= 13
    const int kv_ok = kv_type == CLEX_TYPE_F32 || kv_type == CLEX_TYPE_F16 || kv_type == CLEX_TYPE_Q8_0;
#else
    const int kv_ok = kv_type == CLEX_TYPE_F32 || kv_type == CLEX_TYPE_F16;
#endif
#if CLEX_ABI_VERSION >= 6
    rc = clex_ctx_create(m, n_ctx, n_batch, n_threads, kv_type, &c);
    ORACLE(clex_kv_type_supported(kv_type) == kv_ok, "kv_type_supported(%d)", kv_type);
#else
    rc = clex_ctx_create_kv(m, n_ctx, n_batch, n_threads, kv_type, &c);
#endif
    if (!kv_ok) ORACLE(rc != 0, "ctx_create accepted kv type %d", kv_type);
    if (kv_type == CLEX_TYPE_Q8_0 && hp.head_dim % 32) ORACLE(rc != 0, "Q8_0 cache with head_dim %d", hp.head_dim);
#else
    rc = clex_ctx_create(m, n_ctx, n_batch, n_threads, &c);
#endif
    if (n_ctx <= 0 || n_batch <= 0 || absurd) ORACLE(rc != 0, "ctx_create accepted n_ctx %d n_batch %d", n_ctx, n_batch);
    if (rc) goto done;
    ORACLE(clex_ctx_n_ctx(c) == n_ctx, "n_ctx");
    const int32_t n_pairs = hp.n_rot / 2;

    for (int step = 0; step < 6 && in->n; step++) {
        switch (take(in, 1) % 6) {
        case 0:
        case 1: {   /* eval */
            const int32_t n_tok = pick32(in, 0, 12);
            const int32_t n_past = pick32(in, 0, 40);
            const size_t nt = n_tok > 0 && n_tok <= 64 ? (size_t)n_tok : 1;
            int32_t *toks = malloc(nt * sizeof(int32_t));
            int tok_ok = 1;
            for (size_t i = 0; i < nt; i++) {
                toks[i] = (take(in, 1) & 7) ? (int32_t)(take(in, 2) % (uint64_t)V) : pick32(in, -2, V + 2);
                tok_ok &= toks[i] >= 0 && toks[i] < V;
            }
            if (n_tok > 64) { free(toks); break; }   /* the caller holds n_tok ids */
            const int mode = (int)(take(in, 1) % 3);   /* no logits, last, all */
            const size_t nl = mode == 2 ? nt * (size_t)V : (size_t)V;
            float *logits = mode ? malloc(nl * sizeof(float)) : NULL;
            rc = clex_eval(c, toks, n_tok, n_past, logits, mode == 2);
            const int fits = n_past >= 0 && (int64_t)n_past + n_tok <= n_ctx;
            if (n_tok > 0 && tok_ok && fits) ORACLE(rc == 0, "eval refused %d tokens at %d (n_ctx %d)", n_tok, n_past, n_ctx);
            else ORACLE(rc != 0, "eval accepted %d tokens at %d (n_ctx %d, ids ok %d)", n_tok, n_past, n_ctx, tok_ok);
            if (n_tok > 0 && n_past >= 0 && tok_ok && !fits) ORACLE(rc == CLEX_E_FULL, "eval past n_ctx: rc %d", rc);
            free(logits);
            free(toks);
            break;
        }
        case 2: {   /* set_rope: the length is checked, the caller's buffer holds n entries */
            const int32_t n = (take(in, 1) & 3) ? n_pairs : pick32(in, 0, 20);
            const size_t nn = n > 0 && n <= 64 ? (size_t)n : 1;
            if (n > 64) break;
            float *inv = malloc(nn * sizeof(float));
            fill(in, inv, nn * sizeof(float));
            rc = clex_ctx_set_rope(c, inv, n);
            int finite = 1;
            for (int32_t i = 0; i < n && n == n_pairs; i++) finite &= isfinite(inv[i]) != 0;
            if (n != n_pairs || !finite) ORACLE(rc != 0, "set_rope accepted %d entries (model %d)", n, n_pairs);
            else ORACLE(rc == 0, "set_rope refused a good table");
            free(inv);
            break;
        }
        case 3: {   /* rerotate: old table of n_pairs (the caller's part), n_past checked */
            float *old = malloc((size_t)(n_pairs > 0 ? n_pairs : 1) * sizeof(float));
            fill(in, old, (size_t)n_pairs * sizeof(float));
            const int32_t n_past = pick32(in, 0, 44);
            rc = clex_ctx_rerotate(c, old, n_past);
            if (n_past < 0 || n_past > n_ctx) ORACLE(rc != 0, "rerotate accepted n_past %d (n_ctx %d)", n_past, n_ctx);
            free(old);
            break;
        }
#if CLEX_ABI_VERSION >= 4
        case 5: {   /* attention scale: finite and positive */
            float s;
            fill(in, &s, sizeof s);
            rc = clex_ctx_set_attn_scale(c, s);
            if (!(isfinite(s) && s > 0)) ORACLE(rc != 0, "set_attn_scale accepted %g", (double)s);
            break;
        }
#endif
        default: {  /* context shift */
            const int32_t n_past = pick32(in, 0, 44), keep = pick32(in, 0, 20), disc = pick32(in, 0, 20);
            rc = clex_ctx_shift(c, n_past, keep, disc);
            const int good = n_past >= 0 && n_past <= n_ctx && keep >= 0 && disc > 0 && (int64_t)keep + disc <= n_past;
            if (!good) ORACLE(rc != 0, "shift accepted n_past %d keep %d discard %d (n_ctx %d)", n_past, keep, disc, n_ctx);
            else ORACLE(rc == 0, "shift refused n_past %d keep %d discard %d", n_past, keep, disc);
            break;
        }
        }
    }
    clex_ctx_free(c);
done:
    clex_model_free(m);
    free(layers);
    for (int i = 0; i < n_owned; i++) free(all[i].buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    input in = {data, size};
    const uint8_t sel = (uint8_t)take(&in, 1);
    /* the kernels of every instruction set this CPU runs, not only the default one */
    const int isa = (sel >> 2) % 4;
    if (clex_isa_supported(isa)) ORACLE(clex_set_isa(isa) == 0, "set_isa %d", isa);
    else ORACLE(clex_set_isa(isa) != 0, "set_isa accepted unsupported %d", isa);
    switch (sel % 3) {
    case 0: fuzz_rows(&in); break;
    case 1: fuzz_matmul(&in); break;
    default: fuzz_model(&in); break;
    }
    return 0;
}
