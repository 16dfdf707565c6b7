/* Matrix products: activations prepared once per consumer type, rows of a weight matrix against
 * every token of a batch (the tile kernels where a type has them and the batch is long enough,
 * else the four-row kernels where it has those; a lone token, as in decoding, four weight rows at
 * a time where the type has vec_dot4w, neighbours or a quarter of the rows apart), the forward
 * pass's dynamic row scheduling, and
 * the standalone clex_matmul (tests, tools). */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "model.h"

/* ------------------------------------------------------------------ activations */

unsigned clex_act_need(const clex_tensor *w) {
    const int slot = clex_act_slot(clex_traits(w->type)->vec_dot_type);
    return slot < 0 ? 0u : 1u << slot;
}

/* bytes of one row of k activations in slot s */
static inline uint64_t act_row_bytes(int s, int64_t k) { return row_bytes(clex_traits(clex_act_type(s)), k); }

void clex_prepare_acts(clex_acts *a, const float *x, int64_t k, int64_t t0, int64_t t1, unsigned need,
                       void *const bufs[CLEX_ACT_N]) {
    a->f32 = x;
    a->k = k;
    for (int s = 0; s < CLEX_ACT_N; s++) {
        a->q[s] = bufs[s];
        if (!(need & (1u << s))) continue;
        const clex_from_float_fn quant = clex_k.from_float[clex_act_type(s)];
        const uint64_t rb = act_row_bytes(s, k);
        for (int64_t t = t0; t < t1; t++) quant(x + t * k, (uint8_t *)bufs[s] + (uint64_t)t * rb, k);
    }
}

void clex_prepare_row(clex_acts *a, const float *x, int64_t k, int64_t row, unsigned need,
                      void *const bufs[CLEX_ACT_N]) {
    a->f32 = x;
    a->k = k;
    for (int s = 0; s < CLEX_ACT_N; s++) {
        a->q[s] = bufs[s] ? (uint8_t *)bufs[s] + (uint64_t)row * act_row_bytes(s, k) : NULL;
        if (need & (1u << s)) clex_k.from_float[clex_act_type(s)](x, a->q[s], k);
    }
}

clex_acts clex_acts_from(const clex_acts *a, int64_t t0) {
    clex_acts r = *a;
    r.f32 = a->f32 + t0 * a->k;
    for (int s = 0; s < CLEX_ACT_N; s++)
        if (a->q[s]) r.q[s] = (uint8_t *)a->q[s] + (uint64_t)t0 * act_row_bytes(s, a->k);
    return r;
}

/* ------------------------------------------------------------------ row products */

#define ROW_BLOCK 16   /* weight rows kept hot in L1 while every token of the batch passes */
/* The tile kernels' blocking: packed weight rows (as many as fit in the tile scratch) stay in
 * L2 while up to TILE_TOKENS tokens pass, so that the tokens' activations and outputs stay in
 * L2 as well. A gemm call transposes each 16 tokens' activations once for all the rows it is
 * given, so the more rows a call has the less that costs: at 64 KiB a 2048-wide K-quant row
 * block was 16 rows and the transposes about a third of the tile's own work (pp512 of a 1B
 * model gained 20-40% at 512 KiB on a 2 MiB L2; 1.5 MiB gained nothing more). The scratch is a
 * quarter of the L2, within [64 KiB, 1 MiB]; 256 KiB where the system does not say. */
static size_t g_tile_scratch;
static pthread_once_t g_tile_once = PTHREAD_ONCE_INIT;

static void tile_scratch_init(void) {
    long l2 = -1;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    const size_t s = l2 > 0 ? (size_t)l2 / 4 : (size_t)256 << 10;
    g_tile_scratch = s < ((size_t)64 << 10) ? (size_t)64 << 10 : s > ((size_t)1 << 20) ? (size_t)1 << 20 : s;
}

static size_t tile_scratch(void) {
    pthread_once(&g_tile_once, tile_scratch_init);
    return g_tile_scratch;
}
#define TILE_TOKENS 512

/* One weight matrix against prepared activations, everything the row loops need looked up once
 * per call: weight rows (base, rb bytes apart), activation rows (x, xb bytes apart), kernels. */
typedef struct {
    const uint8_t *base, *x;
    uint64_t rb, xb;
    int64_t k;
    clex_vec_dot_fn dot;
    clex_vec_dot4_fn dot4;   /* NULL: one row at a time */
    clex_vec_dot4w_fn dot4w;   /* four weight rows against one token; NULL: one row at a time */
    const clex_type_traits *wt;   /* the weight type */
    int32_t xtype;                /* the activation type; -1: float */
} row_op;

static row_op row_op_for(const clex_tensor *w, const clex_acts *a) {
    const clex_type_traits *tr = clex_traits(w->type);
    const int s = clex_act_slot(tr->vec_dot_type);
    row_op op = {w->data, s < 0 ? (const uint8_t *)a->f32 : (const uint8_t *)a->q[s], row_bytes(tr, w->ne[0]),
                 s < 0 ? (uint64_t)a->k * sizeof(float) : act_row_bytes(s, a->k), w->ne[0],
                 clex_k.vec_dot[w->type], clex_k.vec_dot4[w->type], NULL, tr,
                 s < 0 ? -1 : tr->vec_dot_type};
    if (clex_decode_rows4_max < 0 || op.rb <= (uint64_t)clex_decode_rows4_max) op.dot4w = clex_k.vec_dot4w[w->type];
    return op;
}

/* the type's tile kernels, when it has them and the batch is long enough for them */
static const clex_tile_kernel *tile_for(const clex_tensor *w, const row_op *op, int64_t n_tok) {
    if (!clex_k.tiles || op->xtype < 0) return NULL;
    const clex_tile_kernel *tk = &clex_k.tiles->type[w->type];
    return tk->bytes && n_tok >= tk->min_tok && tk->max_n >= op->wt->blck ? tk : NULL;
}

/* Rows [r0, r1) against every token with the tile kernels, TILE_TOKENS tokens at a time: the
 * weights packed a block of rows at a time (as many as the tile scratch holds, a multiple of 16), a
 * row longer than the kernel's max_n in pieces, each piece after the first added to y. Returns
 * 0 (nothing done) when out of memory. */
#if defined(__GNUC__)
__attribute__((noinline))   /* kept out of the row kernels' loop, which generation runs */
#endif
static int rows_tiled(const clex_tile_kernel *tk, const row_op *op, int64_t n_tok, float *y, int64_t ystride,
                      int accumulate, int64_t r0, int64_t r1) {
    const clex_type_traits *xt = clex_traits(op->xtype);
    const int64_t kc = op->k <= tk->max_n ? op->k : tk->max_n / op->wt->blck * op->wt->blck;
    const size_t pb = tk->bytes(kc);
    int64_t nr = (int64_t)(tile_scratch() / pb) / 16 * 16;
    if (nr < 16) nr = 16;
    if (nr > (r1 - r0 + 15) / 16 * 16) nr = (r1 - r0 + 15) / 16 * 16;   /* no more than the rows asked for */
    void *buf = aligned_alloc(64, ((size_t)nr * pb + 63) / 64 * 64);
    if (!buf) return 0;
    for (int64_t t0 = 0; t0 < n_tok; t0 += TILE_TOKENS) {
        const int64_t nt = n_tok - t0 < TILE_TOKENS ? n_tok - t0 : TILE_TOKENS;
        const uint8_t *x = op->x + (uint64_t)t0 * op->xb;
        float *yt = y + t0 * ystride;
        for (int64_t rs = r0; rs < r1; rs += nr) {
            const int64_t re = rs + nr < r1 ? rs + nr : r1;
            for (int64_t k0 = 0; k0 < op->k; k0 += kc) {
                const int64_t kn = op->k - k0 < kc ? op->k - k0 : kc;
                tk->pack(kn, op->base + (uint64_t)rs * op->rb + row_bytes(op->wt, k0), (size_t)op->rb, re - rs, buf);
                tk->gemm(kn, buf, re - rs, x + row_bytes(xt, k0), (size_t)op->xb, nt, yt + rs, ystride,
                         accumulate || k0 > 0);
            }
        }
    }
    free(buf);
    return 1;
}

/* rows [rs, re) against tokens [t, t + 4) with the four-row kernel */
static void rows_x4(const row_op *op, int64_t t, float *y, int64_t ystride, int accumulate, int64_t rs, int64_t re) {
    const void *xr = op->x + (uint64_t)t * op->xb;
    for (int64_t r = rs; r < re; r++) {
        float s4[4];
        op->dot4(op->k, s4, op->base + (uint64_t)r * op->rb, xr, (size_t)op->xb);
        for (int j = 0; j < 4; j++) {
            float *yr = y + (t + j) * ystride + r;
            *yr = accumulate ? *yr + s4[j] : s4[j];
        }
    }
}

/* Decoding streams each weight row once, from memory: on the 2-core Xeon VM the hardware
 * prefetchers alone left one thread well under a plain read's bandwidth (kbench, 512 MiB of Q8_0:
 * 7.0 GB/s without, 9.8 with). So before a lone token's rows [r, r + g) are read, the bytes that
 * lie `ahead` further on (the rows a few calls later; core.c's distance for rows of this length)
 * are asked for, up to the matrix's end; ahead 0 (AMD's CPUs, where it costs: core.c) asks for
 * nothing. Where `page` is not 0, only the first `page` bytes of each 4 KiB page in that reach
 * are asked for (core.c: the long rows' default): the hardware prefetchers, which stop at a
 * page's edge, take the rest of the page from there. */
typedef struct {
    int64_t ahead, page;
    const uint8_t *end;   /* NULL: no prefetch */
} pf_plan;

#define PF_PAGE 4096

static inline void prefetch_ahead(const row_op *op, int64_t r, int64_t g, const pf_plan *pf) {
#if defined(__GNUC__)
    uintptr_t p = (uintptr_t)(op->base + (uint64_t)r * op->rb) + (uint64_t)pf->ahead,
              e = p + (uint64_t)g * op->rb;
    if (e > (uintptr_t)pf->end) e = (uintptr_t)pf->end;
    for (p &= ~(uintptr_t)63; p < e;) {
        if (pf->page && (int64_t)(p & (PF_PAGE - 1)) >= pf->page) {
            p = (p | (PF_PAGE - 1)) + 1;   /* on to the next page's start */
            continue;
        }
        __builtin_prefetch((const void *)p, 0, 3);
        p += 64;
    }
#else
    (void)op, (void)r, (void)g, (void)pf;
#endif
}

/* row r against one token's activations xr into *yr, its bytes ahead asked for first (pf) */
static inline void row_one(const row_op *op, int64_t r, const void *xr, float *yr, int accumulate, const pf_plan *pf) {
    float s;
    if (pf->end) prefetch_ahead(op, r, 1, pf);
    op->dot(op->k, &s, op->base + (uint64_t)r * op->rb, xr);
    *yr = accumulate ? *yr + s : s;
}

/* A lone token's rows [r0, r1) four per call, the four a quarter of the range apart (core.c says
 * why): rows r, r + q, r + 2q, r + 3q for r in [r0, r0 + q), so that the call reads four streams
 * far apart, each prefetched on its own; then the 0-3 rows left one at a time. */
static void rows_quarters(const row_op *op, float *y, int accumulate, int64_t r0, int64_t r1, const pf_plan *pf) {
    const int64_t q = (r1 - r0) / 4;
    for (int64_t r = r0; r < r0 + q; r++) {
        float s4[4];
        if (pf->end)
            for (int j = 0; j < 4; j++) prefetch_ahead(op, r + j * q, 1, pf);
        op->dot4w(op->k, s4, op->base + (uint64_t)r * op->rb, (size_t)q * op->rb, op->x);
        for (int j = 0; j < 4; j++) y[r + j * q] = accumulate ? y[r + j * q] + s4[j] : s4[j];
    }
    for (int64_t r = r0 + 4 * q; r < r1; r++) row_one(op, r, op->x, y + r, accumulate, pf);
}

void clex_matmul_rows(const clex_tensor *w, const clex_acts *a, int64_t n_tok, float *y, int64_t ystride,
                      int accumulate, int64_t r0, int64_t r1) {
    const row_op op = row_op_for(w, a);
    const clex_tile_kernel *tk = tile_for(w, &op, n_tok);
    if (tk && rows_tiled(tk, &op, n_tok, y, ystride, accumulate, r0, r1)) return;
    /* only a lone token streams the rows from memory; a batch's leftover tokens (after its
     * groups of four) find them in cache, where the prefetches are wasted instructions */
    const int is_long = op.rb > CLEX_DECODE_PREFETCH_SHORT_ROW;
    pf_plan pf = {is_long ? clex_decode_prefetch_long : clex_decode_prefetch, is_long ? clex_decode_prefetch_page : 0,
                  NULL};
    if (n_tok == 1 && pf.ahead > 0) pf.end = op.base + (uint64_t)(w->n_dims >= 2 ? w->ne[1] : 1) * op.rb;
    if (n_tok == 1 && op.dot4w && clex_decode_quarters_on) {
        rows_quarters(&op, y, accumulate, r0, r1, &pf);
        return;
    }
    for (int64_t rs = r0; rs < r1; rs += ROW_BLOCK) {
        const int64_t re = rs + ROW_BLOCK < r1 ? rs + ROW_BLOCK : r1;
        int64_t t = 0;
        if (op.dot4)
            for (; t + 4 <= n_tok; t += 4) rows_x4(&op, t, y, ystride, accumulate, rs, re);
        for (; t < n_tok; t++) {
            const void *xr = op.x + (uint64_t)t * op.xb;
            float *yr = y + t * ystride;
            int64_t r = rs;
            if (op.dot4w)
                for (; r + 4 <= re; r += 4) {
                    float s4[4];
                    if (pf.end) prefetch_ahead(&op, r, 4, &pf);
                    op.dot4w(op.k, s4, op.base + (uint64_t)r * op.rb, (size_t)op.rb, xr);
                    for (int j = 0; j < 4; j++) yr[r + j] = accumulate ? yr[r + j] + s4[j] : s4[j];
                }
            for (; r < re; r++) row_one(&op, r, xr, yr + r, accumulate, &pf);
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
    void *bufs[CLEX_ACT_N] = {NULL};
    const int slot = clex_act_slot(clex_traits(w->type)->vec_dot_type);
    if (slot >= 0) {   /* the one activation type w reads */
        const uint64_t bytes = (uint64_t)n_tok * act_row_bytes(slot, k);
        if (bytes > SIZE_MAX || !(bufs[slot] = calloc(1, (size_t)(bytes ? bytes : 1))))
            return clex_fail(CLEX_E_NOMEM, "out of memory");
    }
    mm_args ma = {w, {0}, n_tok, ne1, y};
    clex_prepare_acts(&ma.a, x, k, 0, n_tok, clex_act_need(w), bufs);
    clex_pool *pool;
    rc = clex_pool_create(n_threads > 0 ? n_threads : 1, &pool);
    if (!rc) {
        clex_pool_run(pool, mm_job, &ma);
        clex_pool_free(pool);
    }
    if (slot >= 0) free(bufs[slot]);
    return rc;
}
