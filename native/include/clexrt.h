/* clexrt: the public C API of the native core.
 *
 * Everything between CDEF-BEGIN and CDEF-END is read by native/build.py as the cffi cdef, so it
 * must stay plain C declarations (no preprocessor lines inside that region).
 *
 * Conventions:
 *  - every function that can fail returns 0 on success and a negative CLEX_E* code otherwise;
 *    clex_last_error() then holds a one-line message (per thread);
 *  - sizes and offsets are 64-bit;
 *  - weights are borrowed: the caller keeps the memory (normally a read-only file mapping) alive
 *    for as long as the model exists. Nothing is copied or dequantized at load.
 */
#ifndef CLEXRT_H
#define CLEXRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CDEF-BEGIN */

/* Bumped whenever this header changes in a way the Python side depends on; the Python
 * wrapper compares it with its own expectation at import (a stale build is a clear error). */
#define CLEX_ABI_VERSION 18

enum {
    CLEX_OK = 0,
    CLEX_E_INVALID = -1,   /* bad argument: type, shape, token id, position ... */
    CLEX_E_NOMEM = -2,     /* an allocation failed */
    CLEX_E_UNSUPPORTED = -3, /* a tensor type or feature this build does not run */
    CLEX_E_FULL = -4,      /* the KV cache cannot take the tokens */
    CLEX_E_INTERNAL = -5
};

/* GGML type ids as stored in GGUF files: every id ggml defines (the gaps are ids it retired).
 * clex_type_name / clex_type_block_size / clex_type_block_bytes know all of them;
 * clex_type_supported says which ones the forward pass runs. */
enum {
    CLEX_TYPE_F32 = 0,
    CLEX_TYPE_F16 = 1,
    CLEX_TYPE_Q4_0 = 2,
    CLEX_TYPE_Q4_1 = 3,
    CLEX_TYPE_Q5_0 = 6,
    CLEX_TYPE_Q5_1 = 7,
    CLEX_TYPE_Q8_0 = 8,
    CLEX_TYPE_Q8_1 = 9,   /* activations only (paired with Q4_1 weights) */
    CLEX_TYPE_Q2_K = 10,
    CLEX_TYPE_Q3_K = 11,
    CLEX_TYPE_Q4_K = 12,
    CLEX_TYPE_Q5_K = 13,
    CLEX_TYPE_Q6_K = 14,
    CLEX_TYPE_Q8_K = 15,
    CLEX_TYPE_IQ2_XXS = 16,
    CLEX_TYPE_IQ2_XS = 17,
    CLEX_TYPE_IQ3_XXS = 18,
    CLEX_TYPE_IQ1_S = 19,
    CLEX_TYPE_IQ4_NL = 20,
    CLEX_TYPE_IQ3_S = 21,
    CLEX_TYPE_IQ2_S = 22,
    CLEX_TYPE_IQ4_XS = 23,
    CLEX_TYPE_I8 = 24,
    CLEX_TYPE_I16 = 25,
    CLEX_TYPE_I32 = 26,
    CLEX_TYPE_I64 = 27,
    CLEX_TYPE_F64 = 28,
    CLEX_TYPE_IQ1_M = 29,
    CLEX_TYPE_BF16 = 30,
    CLEX_TYPE_TQ1_0 = 34,
    CLEX_TYPE_TQ2_0 = 35,
    CLEX_TYPE_MXFP4 = 39,
    CLEX_TYPE_NVFP4 = 40,
    CLEX_TYPE_Q1_0 = 41,
    CLEX_TYPE_COUNT = 42  /* ids are below this */
};

enum {
    CLEX_ISA_SCALAR = 0,
    CLEX_ISA_AVX2 = 1,
    CLEX_ISA_AVX512 = 2,
    CLEX_ISA_NEON = 3
};

/* The architecture as data (clex_hparams, clex_layer). Zero is LLaMA's choice everywhere. */
enum {
    CLEX_NORM_RMS = 0,          /* x * w / sqrt(mean(x^2) + eps) */
    CLEX_NORM_LAYER = 1         /* (x - mean) * w / sqrt(var + eps) + b */
};
enum {
    CLEX_ROPE_ADJACENT = 0,     /* pair i of a head is elements 2i, 2i+1 (GGUF llama) */
    CLEX_ROPE_NEOX = 1          /* pair i is elements i, i + n_rot/2 (rotate-half) */
};
enum {
    CLEX_FFN_SWIGLU = 0,        /* down(silu(gate(x)) * up(x)) */
    CLEX_FFN_GEGLU = 1,         /* down(gelu(gate(x)) * up(x)), gelu the tanh approximation */
    CLEX_FFN_GELU = 2           /* down(gelu(up(x))), no gate */
};

typedef struct clex_model clex_model;   /* weights + hyper-parameters (read-only once built) */
typedef struct clex_ctx clex_ctx;       /* KV cache, scratch, thread pool, current rope table */

/* A borrowed tensor: ne[0] is the row length (fastest-varying), as in GGUF. */
typedef struct {
    int32_t type;
    int32_t n_dims;
    int64_t ne[4];
    const void *data;
    uint64_t nbytes;
    const char *name;     /* for error messages; may be NULL */
} clex_tensor;

/* One layer. The tensors after w_down are optional (data NULL: absent), all f32; an absent
 * norm is no norm, an absent bias adds nothing. */
typedef struct {
    clex_tensor attn_norm;   /* [n_embd] f32 */
    clex_tensor wq;          /* [n_embd, n_head*head_dim] */
    clex_tensor wk;          /* [n_embd, n_head_kv*head_dim] */
    clex_tensor wv;          /* [n_embd, n_head_kv*head_dim] */
    clex_tensor wo;          /* [n_head*head_dim, n_embd] */
    clex_tensor ffn_norm;    /* [n_embd] f32; optional with a parallel residual (attn_norm's output is reused) */
    clex_tensor w_gate;      /* [n_embd, n_ff]; absent for CLEX_FFN_GELU */
    clex_tensor w_up;        /* [n_embd, n_ff] */
    clex_tensor w_down;      /* [n_ff, n_embd] */
    clex_tensor attn_norm_b; /* [n_embd] the layer norms' biases */
    clex_tensor ffn_norm_b;
    clex_tensor bq, bk, bv, bo;   /* the attention projections' biases ([rows of the product]) */
    clex_tensor b_up, b_down;     /* the FFN's */
    clex_tensor q_norm;      /* [head_dim]: RMS norm of each query head before the rope (Gemma 3) */
    clex_tensor k_norm;      /* [head_dim]: and of each key head */
    clex_tensor attn_post_norm;   /* [n_embd]: RMS norm of the attention output before the residual add */
    clex_tensor ffn_post_norm;    /* [n_embd]: and of the FFN's */
    /* mixture of experts (hp.n_expert > 0) in place of w_gate, w_up, w_down: */
    clex_tensor ffn_gate_inp;     /* [n_embd, n_expert]: the router */
    clex_tensor ffn_gate_exps;    /* [n_embd, n_ff, n_expert]: expert e's gate is rows [e n_ff, (e+1) n_ff) */
    clex_tensor ffn_up_exps;      /* [n_embd, n_ff, n_expert] */
    clex_tensor ffn_down_exps;    /* [n_ff, n_embd, n_expert] */
    int32_t n_swa;           /* 0: attends to every earlier position; n: to the last n (itself included) */
    int32_t rope_set;        /* the context's rope table that rotates this layer: 0 .. n_rope_sets-1 */
} clex_layer;

typedef struct {
    int32_t n_vocab;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;
    int32_t n_rot;          /* rotated dimensions per head (<= head_dim, even) */
    int32_t n_ff;
    float rms_eps;          /* the norm's epsilon */
    /* architecture; 0 everywhere is LLaMA (a cffi caller that leaves them out gets that) */
    int32_t norm_kind;      /* CLEX_NORM_* */
    int32_t rope_layout;    /* CLEX_ROPE_* */
    int32_t ffn_kind;       /* CLEX_FFN_* */
    int32_t parallel_residual;  /* 0: x += attn(norm(x)), then x += ffn(norm(x)); 1: both read the same x */
    int32_t n_expert;       /* 0: a dense FFN; else experts per layer (mixture of experts: each
                             * token's FFN is the sum of its n_expert_used best experts by router
                             * logit, weighted by the softmax of the router logits renormalised
                             * over those experts, as Mixtral) */
    int32_t n_expert_used;  /* experts each token uses: 0 when dense, else 1..n_expert */
    float embd_scale;       /* the embeddings are multiplied by it (Gemma: sqrt(n_embd)); 0: 1 */
    float attn_scale;       /* attention logits are q.k * attn_scale * kq_scale; 0: 1/sqrt(head_dim) */
    float attn_softcap;     /* > 0: attention logits become c tanh(logit / c); 0: none */
    float final_softcap;    /* > 0: the same on the output logits */
    int32_t n_rope_sets;    /* rope tables per context (layers pick one: clex_layer.rope_set); 0: 1 */
} clex_hparams;

/* ---- library ---- */
int clex_abi_version(void);
const char *clex_last_error(void);
/* The instruction set the kernels run with. clex_set_isa() picks one (it must be supported by
 * this CPU and build); the environment variable CLEXRT_ISA=scalar|avx2|avx512|neon does the
 * same at start-up (CLEXRT_FORCE_SCALAR=1 is a synonym for scalar). */
int clex_isa(void);
int clex_isa_supported(int isa);
int clex_set_isa(int isa);
const char *clex_isa_name(int isa);
int clex_physical_cores(void);
/* Decoding one token takes weight rows of at most this many bytes four per kernel call (the
 * four-weight-row kernels, where the type has one), longer rows one at a time; -1: every row.
 * Decided at start-up from the CPU (core.c says why: -1, or 512 on AMD's), or by the environment
 * variable CLEXRT_DECODE_ROWS4_MAX=<bytes>; clex_set_decode_rows4_bytes sets it (-1 or more, else
 * CLEX_E_INVALID). The sums are the same bits either way; only the speed differs. */
int64_t clex_decode_rows4_bytes(void);
int clex_set_decode_rows4_bytes(int64_t max_bytes);
/* Decoding one token asks for the weight bytes this far ahead of the rows it reads (software
 * prefetch; 0: none): rows of at most CLEX_DECODE_PREFETCH_SHORT_ROW bytes 4096 ahead, longer rows
 * 1024 (the _long pair),
 * both 0 on AMD's CPUs (core.c says why). CLEXRT_DECODE_PREFETCH=<bytes> at start-up or
 * clex_set_decode_prefetch_bytes sets both distances, CLEXRT_DECODE_PREFETCH_LONG=<bytes> or
 * clex_set_decode_prefetch_long_bytes the long rows' alone (0 or more, else CLEX_E_INVALID). */
int64_t clex_decode_prefetch_bytes(void);
int clex_set_decode_prefetch_bytes(int64_t bytes);
#define CLEX_DECODE_PREFETCH_SHORT_ROW 1024   /* longer rows take the _long distance */
int64_t clex_decode_prefetch_long_bytes(void);
int clex_set_decode_prefetch_long_bytes(int64_t bytes);
/* Of each 4 KiB page within a long row's reach, the bytes asked for: the first 512 by default, the
 * hardware prefetchers taking the rest of the page (core.c says why); 0: every cache line.
 * CLEXRT_DECODE_PREFETCH_PAGE=<bytes> at start-up or clex_set_decode_prefetch_page_bytes (0 or
 * more, else CLEX_E_INVALID). Short rows ask for every line. */
int64_t clex_decode_prefetch_page_bytes(void);
int clex_set_decode_prefetch_page_bytes(int64_t bytes);
/* Where decoding takes four rows per kernel call, which four: 1, rows a quarter of a thread's
 * share of the matrix apart (r, r + q, r + 2q, r + 3q: four streams far apart); 0, four
 * neighbouring rows. Decided at start-up from the CPU (core.c says why: 1, or 0 on AMD's), or by
 * CLEXRT_DECODE_QUARTERS=0|1; clex_set_decode_quarters sets it (0 or 1, else CLEX_E_INVALID). The
 * sums are the same bits either way. */
int clex_decode_quarters(void);
int clex_set_decode_quarters(int on);
/* Read bandwidth in GB/s (1e9 bytes): n_threads threads read their shares of a fresh buffer of
 * `bytes` (<= 0: 4 x the last-level cache, 256 MiB..2 GiB; a plain sum of 64-bit words), the
 * best of `passes`. The buffer is freed before it
 * returns; call it in a process whose peak RSS does not matter (clexrt bench uses a child). */
int clex_read_bandwidth(int64_t bytes, int32_t n_threads, int32_t passes, double *gb_per_s);

/* ---- tensor types ---- */
const char *clex_type_name(int32_t type);       /* "Q4_K" ...; NULL for an id ggml does not define */
int clex_type_supported(int32_t type);          /* 1 for the weight types the kernels run */
/* Those weight types, comma-separated in id order ("F32, F16, ..."), for messages. */
const char *clex_supported_weight_types(void);
int64_t clex_type_block_size(int32_t type);     /* elements per block; 0 if unknown */
int64_t clex_type_block_bytes(int32_t type);    /* bytes per block; 0 if unknown */
/* Reference (scalar) conversions, n a multiple of the block size; CLEX_E_UNSUPPORTED for a type
 * this build has no conversion for (the run types and Q8_1 have both directions). */
int clex_quantize_row(int32_t type, const float *src, void *dst, int64_t n);
int clex_dequantize_row(int32_t type, const void *src, float *dst, int64_t n);
/* nrows rows of n_per_row floats (a whole number of blocks each) into dst, the blocks that
 * llama-quantize writes (ggml_quantize_chunk): imatrix NULL, or one importance per column
 * (n_per_row floats, shared by every row: llama-quantize's --imatrix entry for the tensor).
 * Types whose ggml quantizer ignores importances (Q8_0, F16, BF16, F32) ignore it here too;
 * clex_quantize_uses_imatrix(type) says which do not. Thread-safe; rows are independent. */
int clex_quantize_rows(int32_t type, const float *src, void *dst, int64_t n_per_row, int64_t nrows,
                       const float *imatrix);
int clex_quantize_uses_imatrix(int32_t type);
/* The conversion the forward pass applies to activations (current ISA); same bytes as
 * clex_quantize_row. */
int clex_quantize_act(int32_t type, const float *src, void *dst, int64_t n);
/* Dot product of n elements of a weight row of `type` with a row of activations already in the
 * paired activation type (clex_type_vec_dot_type); uses the current ISA. */
int32_t clex_type_vec_dot_type(int32_t type);
int clex_vec_dot(int32_t type, int64_t n, const void *w, const void *act, float *out);
/* The same for four weight rows (w, w + wstride, ... bytes apart) against one activation row,
 * out[0..3], with the current ISA's four-weight-row kernel (decoding's); CLEX_E_UNSUPPORTED where
 * the ISA has none for the type (decoding then takes one row at a time). Tests and tools. */
int clex_vec_dot4w(int32_t type, int64_t n, const void *w, size_t wstride, const void *act, float *out);
/* Y[t, r] = sum_k W[r, k] * X[t, k] for t < n_tok, r < W.ne[1]: the matrix product the forward
 * pass uses (activations quantized internally), with n_threads threads. */
int clex_matmul(const clex_tensor *w, const float *x, int64_t n_tok, float *y, int32_t n_threads);
/* The FFN activation the forward pass applies (current ISA) over n values: g = act(g) * u, or
 * g = act(g) where u is NULL; kind a CLEX_FFN_* (SwiGLU: SiLU; GeGLU, GELU: GELU's tanh form). */
int clex_ffn_act(int32_t kind, int64_t n, float *g, const float *u);
/* The attention kernels the forward pass runs over n cached rows of D values of KV cache type
 * kv_type (current ISA): scores s[p] = scale * (q . K[p]) for p < n, and the weighted sum
 * out[i] += sum_p w[p] * V[p][i]. K and V are rows as the cache stores them (for Q8_0: D / 32
 * blocks each, D a multiple of 32); q is D floats for F32 and F16, and D / 32 Q8_0 blocks (the
 * query as clex_quantize_act quantizes it) for Q8_0. */
int clex_attn_scores(int32_t kv_type, int64_t n, int64_t D, const void *q, const void *K, float scale, float *s);
int clex_attn_wsum(int32_t kv_type, int64_t n, int64_t D, const float *w, const void *V, float *out);
/* Decoding's GQA-group forms: g query heads (rows D floats, or D / 32 Q8_0 blocks, apart) over the
 * same n rows, scores to s[j * n + p]; weights w[j * n + p], sums added to out + j * out_stride.
 * Each head's result is the per-head kernel's, bit for bit. The softmax step over n scores:
 * *max, s[i] = e^(s[i] - *max), *sum their sum (double); normalize: s[i] then divided by it. */
int clex_attn_group_scores(int32_t kv_type, int64_t g, int64_t n, int64_t D, const void *q, const void *K,
                           float scale, float *s);
int clex_attn_group_wsum(int32_t kv_type, int64_t g, int64_t n, int64_t D, const float *w, const void *V, float *out,
                         int64_t out_stride);
int clex_attn_softmax(int64_t n, float *s, int32_t normalize, float *max, double *sum);

/* ---- model ---- */
/* output NULL (or data NULL): tied, the logits come from tok_embd; output_norm_b and output_b
 * (f32 biases of the final norm and of the logits) may be NULL. */
int clex_model_create(const clex_hparams *hp, const clex_tensor *tok_embd,
                      const clex_tensor *output_norm, const clex_tensor *output_norm_b,
                      const clex_tensor *output, const clex_tensor *output_b,
                      const clex_layer *layers, clex_model **out);
void clex_model_free(clex_model *m);
/* The first row of t (ne[0] elements; the rows are all of ne[1..]) that holds a NaN or an
 * infinity once dequantized (a block scale that is not finite, or such a float); -1 if none,
 * CLEX_E_* if t is not a tensor the forward pass runs. For naming the tensor behind non-finite
 * logits: it reads every byte of t. */
int64_t clex_tensor_nonfinite_row(const clex_tensor *t);
uint64_t clex_model_n_params(const clex_model *m);
/* Bytes of a context's batch scratch per token of n_batch (activations of every product, the
 * attention's and the FFN's buffers) with n_threads threads (0: the physical cores); the KV
 * cache is apart. For choosing n_batch under a memory budget; 0 for a NULL model. */
uint64_t clex_batch_token_bytes(const clex_model *m, int32_t n_threads);

/* ---- context ---- */
/* n_ctx: KV cache capacity in tokens; n_batch: tokens per internal step (scratch size);
 * n_threads <= 0: one per physical core; kv_type: the cache's element type, CLEX_TYPE_F32,
 * CLEX_TYPE_F16 (half the memory; keys and values rounded to half when stored) or CLEX_TYPE_Q8_0
 * (34 bytes per 32 values; each row of head_dim values quantized to Q8_0 blocks when stored,
 * and attention scores taken against the query quantized to Q8_0; head_dim must be a multiple
 * of 32, else CLEX_E_INVALID). */
int clex_ctx_create(const clex_model *m, int32_t n_ctx, int32_t n_batch, int32_t n_threads,
                    int32_t kv_type, clex_ctx **out);
int clex_kv_type_supported(int32_t type);       /* 1 for the KV cache types clex_ctx_create takes */
void clex_ctx_free(clex_ctx *c);
int32_t clex_ctx_n_ctx(const clex_ctx *c);
int32_t clex_ctx_n_threads(const clex_ctx *c);
int32_t clex_ctx_n_batch(const clex_ctx *c);    /* n_batch as created (at most n_ctx) */
uint64_t clex_ctx_kv_bytes(const clex_ctx *c);
int32_t clex_ctx_kv_type(const clex_ctx *c);
/* The rope table: n_rot/2 inverse frequencies; pair i of every head is rotated by
 * pos * inv_freq[i] (which elements form pair i: hp.rope_layout). Applies to tokens evaluated
 * from now on; cached keys keep the table they were rotated with (see clex_ctx_rerotate).
 * clex_ctx_set_rope sets table 0; _set_rope_set table `set` (the layers whose rope_set it is:
 * Gemma 3's sliding-window layers have their own base). Every table starts as all zeros. */
int clex_ctx_set_rope(clex_ctx *c, const float *inv_freq, int32_t n);
int clex_ctx_set_rope_set(clex_ctx *c, int32_t set, const float *inv_freq, int32_t n);
/* Attention logits are q.k * kq_scale * hp.attn_scale (1/sqrt(head_dim) by default); kq_scale defaults to 1 (YaRN's
 * temperature sets it to mscale^2). Must be finite and positive; applies from the next eval. */
int clex_ctx_set_attn_scale(clex_ctx *c, float kq_scale);
/* Rotate the cached keys at positions [0, n_past) from table `old_inv` to the current table
 * (of the layers of table 0; _set: of table `set`). An f16 or Q8_0 key is converted to float,
 * rotated and stored again in the cache's type (rounded or requantized). */
int clex_ctx_rerotate(clex_ctx *c, const float *old_inv, int32_t n_past);
int clex_ctx_rerotate_set(clex_ctx *c, int32_t set, const float *old_inv, int32_t n_past);
/* Context shift: drop cached positions [n_keep, n_keep + n_discard) of [0, n_past), move the
 * later ones down and rotate their keys to the new positions (current table; keys converted as
 * clex_ctx_rerotate converts them, values moved as stored). */
int clex_ctx_shift(clex_ctx *c, int32_t n_past, int32_t n_keep, int32_t n_discard);
/* Evaluate n_tok tokens at positions n_past .. n_past+n_tok-1 (appending to the KV cache).
 * logits: [n_vocab] for the last token, or [n_tok, n_vocab] when all_logits != 0; may be NULL. */
int clex_eval(clex_ctx *c, const int32_t *tokens, int32_t n_tok, int32_t n_past, float *logits,
              int32_t all_logits);
/* The same evaluation (appending to the KV cache), writing instead of logits every token's
 * final hidden state after the output norm (the LM head's input): hidden [n_tok, n_embd]. */
int clex_eval_hidden(clex_ctx *c, const int32_t *tokens, int32_t n_tok, int32_t n_past, float *hidden);
/* One decoding step of n contexts of the same model in one pass: token i goes to ctxs[i] at
 * position n_past[i] (appended to that context's KV cache, rotated with its rope tables, its
 * attention scaled by its kq scale), and logits (may be NULL) gets [n, n_vocab], row i token i's.
 * The contexts must be distinct; n <= ctxs[0]'s n_batch and n_past[i] < ctxs[0]'s n_ctx as
 * well as ctxs[i]'s: the first context runs the step (its thread pool, its scratch), the
 * others lend only their caches and tables. Each weight is read once per step for all n
 * tokens. exact = 0: the products run over the n tokens together (the multi-token kernels),
 * each row equal to that token's lone clex_eval up to float summation order; exact != 0: the
 * products take the tokens in groups the kernels treat as a lone token (by four where a type's
 * four-row kernel agrees bit for bit with its one-row one, else one by one; the weight rows
 * stay in cache between groups), so each row is bit for bit what clex_eval of that token alone
 * gives on a context with as many threads as ctxs[0] (attention is split into chunks as a lone
 * token's is, either way). */
int clex_eval_batch(clex_ctx *const *ctxs, const int32_t *tokens, const int32_t *n_past, int32_t n, float *logits,
                    int32_t exact);
/* The KV cache's rows of positions [0, n_past) as stored (the cache's element type), keys then
 * values, each [n_layer][n_head_kv][n_past] rows of head_dim values (F32: 4 bytes a value, F16:
 * 2, Q8_0: head_dim / 32 blocks of 34 bytes): clex_ctx_kv_state_bytes(c, n_past) bytes.
 * _read copies them out; _write puts them back (nbytes must be that size, n_past <= n_ctx). */
uint64_t clex_ctx_kv_state_bytes(const clex_ctx *c, int32_t n_past);
int clex_ctx_kv_read(const clex_ctx *c, int32_t n_past, void *dst, uint64_t nbytes);
int clex_ctx_kv_write(clex_ctx *c, int32_t n_past, const void *src, uint64_t nbytes);

/* Where an evaluation's time goes (clexrt bench --profile). While a context profiles, every
 * thread of its pool notes, for each step of the forward pass (clex_profile_step_name), the
 * nanoseconds it worked in the step, the nanoseconds it then waited at the step's barriers,
 * and how many barriers it crossed; "start" is the time a worker took to begin after the
 * caller started the pass, "end" the time the caller waited for the workers to finish it.
 * clex_ctx_profile(c, 1) zeroes the counters and starts, (c, 0) stops and keeps them. Reading
 * a clock costs about 20 ns a step, so a profiled pass runs almost as fast as a plain one.
 * _read fills out[(thread * CLEX_PROF_STEPS + step) * 3 + {0: work ns, 1: wait ns, 2: barriers}]
 * (n >= n_threads * CLEX_PROF_STEPS * 3) and returns the passes counted, or a negative error. */
#define CLEX_PROF_STEPS 16
const char *clex_profile_step_name(int32_t step);   /* NULL outside [0, CLEX_PROF_STEPS) */
int clex_ctx_profile(clex_ctx *c, int32_t on);
int64_t clex_ctx_profile_read(const clex_ctx *c, uint64_t *out, int64_t n);

/* CDEF-END */

#ifdef __cplusplus
}
#endif
#endif
