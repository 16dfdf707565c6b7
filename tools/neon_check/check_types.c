/* neon_check, part two: the NEON kernels of the weight types issue 13 added (Q5_0, Q5_1,
 * IQ4_NL with Q8_0 / Q8_1 activations; Q2_K .. Q6_K, IQ4_XS with Q8_K), the four-row kernels of
 * every 32-value type, and the Q8_K activation quantizer, against the scalar set:
 *   - check_quantizer_q8_K: from_float[Q8_K] byte for byte with clex_quantize_q8_K_ref (and
 *     clex_quantize_act with clex_quantize_row) for every length 256 * 1 .. 256 * 16 and ten
 *     input families, non-finite values and signalling NaNs included;
 *   - check_type_dots: vec_dot and vec_dot4 of each type on blocks quantized from floats by
 *     the reference quantizers, raw random bytes, fixed byte patterns (every code and sub-block
 *     scale at its extreme), any finite fp16 scale; activations quantized, raw (-128 included)
 *     or extreme. Criterion as for the other dots: |neon - ref| <= 1e-5 * sum|w*x| + 1e-6. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "neon_check.h"

/* ------------------------------------------------------------------ the types */

typedef struct {
    int32_t w, a;      /* weight type, activation type */
    const char *tag;
    int x4_only;       /* vec_dot already checked by neon_check.c */
    int max_blocks;    /* block counts 1 .. max_blocks */
    int reps;          /* draws per block count and operand kind */
} tdesc;

/* the 256-value types: fewer block counts (MAX_N holds 16 super-blocks), more draws each */
static const tdesc g_types[] = {
    {CLEX_TYPE_Q5_0, CLEX_TYPE_Q8_0, "q5_0", 0, 67, 1},     {CLEX_TYPE_Q5_1, CLEX_TYPE_Q8_1, "q5_1", 0, 67, 1},
    {CLEX_TYPE_IQ4_NL, CLEX_TYPE_Q8_0, "iq4_nl", 0, 67, 1}, {CLEX_TYPE_Q8_0, CLEX_TYPE_Q8_0, "q8_0", 1, 67, 1},
    {CLEX_TYPE_Q4_0, CLEX_TYPE_Q8_0, "q4_0", 1, 67, 1},     {CLEX_TYPE_Q4_1, CLEX_TYPE_Q8_1, "q4_1", 1, 67, 1},
    {CLEX_TYPE_Q2_K, CLEX_TYPE_Q8_K, "q2_K", 0, 16, 4},     {CLEX_TYPE_Q3_K, CLEX_TYPE_Q8_K, "q3_K", 0, 16, 4},
    {CLEX_TYPE_Q4_K, CLEX_TYPE_Q8_K, "q4_K", 0, 16, 4},     {CLEX_TYPE_Q5_K, CLEX_TYPE_Q8_K, "q5_K", 0, 16, 4},
    {CLEX_TYPE_Q6_K, CLEX_TYPE_Q8_K, "q6_K", 0, 16, 4},     {CLEX_TYPE_IQ4_XS, CLEX_TYPE_Q8_K, "iq4_xs", 0, 16, 4},
};
#define N_TYPES (sizeof g_types / sizeof g_types[0])

/* byte offsets of a weight block's fp16 scale fields (d, and m or dmin); returns how many */
static int half_fields(int32_t type, size_t off[2]) {
    switch (type) {
    case CLEX_TYPE_Q4_1: off[1] = offsetof(block_q4_1, m); break;
    case CLEX_TYPE_Q5_1: off[1] = offsetof(block_q5_1, m); break;
    case CLEX_TYPE_Q2_K:
        off[0] = offsetof(block_q2_K, d), off[1] = offsetof(block_q2_K, dmin);
        return 2;
    case CLEX_TYPE_Q3_K: off[0] = offsetof(block_q3_K, d); return 1;
    case CLEX_TYPE_Q4_K: off[1] = offsetof(block_q4_K, dmin); break;
    case CLEX_TYPE_Q5_K: off[1] = offsetof(block_q5_K, dmin); break;
    case CLEX_TYPE_Q6_K: off[0] = offsetof(block_q6_K, d); return 1;
    default: off[0] = 0; return 1;   /* d first: Q8_0, Q4_0, Q5_0, IQ4_NL, IQ4_XS */
    }
    off[0] = 0;
    return 2;
}

/* ------------------------------------------------------------------ operands */

#define BUF_BYTES (1 << 16)
#define MAX_ELEMS (16 * QK_K)   /* <= MAX_N, what sum_abs_products holds */

enum { W_QUANT, W_RAW, W_ZERO, W_FF, W_ALT, W_MIX, W_ANYHALF };
enum { A_QUANT, A_RAW, A_MIN, A_ALT };
static const char *const g_wnames[] = {"quantized", "raw", "bytes-00", "bytes-ff", "bytes-80/7f", "mixed", "any-half"};
static const char *const g_anames[] = {"quantized", "raw", "all -128", "-128/127"};

static void fill_pattern(uint8_t *p, size_t n, int pat) {
    for (size_t j = 0; j < n; j++) {
        switch (pat) {
        case 0: p[j] = 0x00; break;
        case 1: p[j] = 0xFF; break;
        case 2: p[j] = j & 1 ? 0x7F : 0x80; break;
        case 3: p[j] = j & 1 ? 0xAA : 0x55; break;
        default: p[j] = (uint8_t)rnd_u64(); break;
        }
    }
}

static void gen_row_floats(float *f, int64_t n) {
    const float s = rnd_scale(-3, 2);
    for (int64_t j = 0; j < n; j++) f[j] = (float)rnd_normal() * s * (rnd_int(0, 15) ? 1.0f : 4.0f);
}

/* nb weight blocks of type t in mode m */
static void gen_weights(const tdesc *t, void *w, int nb, int mode) {
    static float f[MAX_ELEMS];
    const int64_t bs = clex_type_block_size(t->w), bb = clex_type_block_bytes(t->w);
    if (mode == W_QUANT) {
        gen_row_floats(f, nb * bs);
        if (clex_quantize_row(t->w, f, w, nb * bs)) { fprintf(stderr, "quantize: %s\n", clex_last_error()); exit(2); }
        return;
    }
    size_t off[2];
    const int nh = half_fields(t->w, off);
    for (int i = 0; i < nb; i++) {
        uint8_t *b = (uint8_t *)w + i * bb;
        const int pat = mode == W_ZERO ? 0 : mode == W_FF ? 1 : mode == W_ALT ? 2 : mode == W_MIX ? rnd_int(0, 4) : 4;
        fill_pattern(b, (size_t)bb, pat);
        for (int k = 0; k < nh; k++) {
            const clex_fp16 h = mode == W_ANYHALF ? rnd_half() : rnd_half_mid();
            memcpy(b + off[k], &h, sizeof h);
        }
    }
}

static void gen_acts(int32_t type, void *x, int nb, int mode) {
    static float f[MAX_ELEMS];
    const int64_t bs = clex_type_block_size(type);
    if (mode == A_QUANT) {
        gen_row_floats(f, nb * bs);
        clex_quantize_row(type, f, x, nb * bs);
        return;
    }
    for (int i = 0; i < nb; i++) {
        int8_t q[QK_K];
        for (int j = 0; j < bs; j++)
            q[j] = mode == A_MIN ? -128 : mode == A_ALT ? (int8_t)(j & 1 ? 127 : -128) : (int8_t)rnd_u64();
        const float d = rnd_scale(-4, 2) * (rnd_u64() & 1 ? -1.0f : 1.0f);
        int sum = 0;
        for (int j = 0; j < bs; j++) sum += q[j];
        if (type == CLEX_TYPE_Q8_0) {
            block_q8_0 *y = (block_q8_0 *)x + i;
            y->d = rnd_half_mid();
            memcpy(y->qs, q, QK);
        } else if (type == CLEX_TYPE_Q8_1) {
            block_q8_1 *y = (block_q8_1 *)x + i;
            y->d = d, y->s = d * (float)sum;
            memcpy(y->qs, q, QK);
        } else {
            block_q8_K *y = (block_q8_K *)x + i;
            y->d = d;
            memcpy(y->qs, q, QK_K);
            for (int g = 0; g < QK_K / 16; g++) {
                int bsum = 0;
                for (int l = 0; l < 16; l++) bsum += q[16 * g + l];
                y->bsums[g] = (int16_t)bsum;
            }
        }
    }
}

/* ------------------------------------------------------------------ dots */

static const char *stat_name(const char *kind, const char *tag, const char *variant) {
    char buf[64];
    snprintf(buf, sizeof buf, "%s_%s [%s]", kind, tag, variant);
    return strdup(buf);
}

/* one weight row against four activation rows xstride bytes apart (a row plus 0..2 spare
 * blocks, the spare ones poisoned), against four reference calls */
static void compare_four(const char *name, const tdesc *t, clex_vec_dot_fn ref, clex_vec_dot4_fn neon, const void *w,
                         int nb, int wmode, int amode, int spare) {
    static uint8_t acts[BUF_BYTES];
    const int64_t bs = clex_type_block_size(t->w), ab = clex_type_block_bytes(t->a), n = nb * bs;
    const size_t stride = (size_t)((nb + spare) * ab);
    memset(acts, 0x7F, sizeof acts);
    for (int r = 0; r < 4; r++) gen_acts(t->a, acts + r * stride, nb, r == 3 && amode == A_QUANT ? A_RAW : amode);
    float v[4] = {NAN, NAN, NAN, NAN};
    neon(n, v, w, acts, stride);
    for (int r = 0; r < 4; r++) {
        float ref_v;
        ref(n, &ref_v, w, acts + r * stride);
        const double allowed = 1e-5 * sum_abs_products(t->w, w, t->a, acts + r * stride, n) + 1e-6;
        const double err = fabs((double)ref_v - (double)v[r]);
        record(name, isfinite(v[r]) && err <= allowed, isfinite(err) ? err / allowed : INFINITY,
               "n=%lld weights %s, activations %s, row %d, stride %zu bytes: ref %.9g neon %.9g", (long long)n,
               g_wnames[wmode], g_anames[amode], r, stride, (double)ref_v, (double)v[r]);
    }
}

static const int g_pairs[][2] = {{W_QUANT, A_QUANT}, {W_RAW, A_RAW}, {W_ZERO, A_MIN}, {W_FF, A_MIN},
                                 {W_FF, A_ALT},     {W_ALT, A_ALT}, {W_MIX, A_RAW},  {W_ANYHALF, A_RAW}};

static void check_one_type(const tdesc *t, const char *variant, const clex_kernels *gk, const clex_kernels *nk) {
    static uint8_t w[BUF_BYTES], x[BUF_BYTES];
    const char *n1 = stat_name("vec_dot", t->tag, variant), *n4 = stat_name("vec_dot4", t->tag, variant);
    const clex_vec_dot_fn ref = gk->vec_dot[t->w];
    const int64_t bs = clex_type_block_size(t->w);
    const int npairs = (int)(sizeof g_pairs / sizeof g_pairs[0]);
    for (int nb = 1; nb <= t->max_blocks; nb++) {
        const int64_t n = nb * bs;
        for (int k = 0; k < t->reps * npairs; k++) {
            const int p = k % npairs, wm = g_pairs[p][0], am = g_pairs[p][1];
            memset(w, 0x7F, sizeof w);   /* a block past the end would count */
            memset(x, 0x7F, sizeof x);
            gen_weights(t, w, nb, wm);
            if (!t->x4_only) {
                gen_acts(t->a, x, nb, am);
                char mode[64];
                snprintf(mode, sizeof mode, "weights %s, activations %s", g_wnames[wm], g_anames[am]);
                compare_dot(n1, ref, nk->vec_dot[t->w], t->w, w, t->a, x, n, mode);
            }
            if (wm == W_QUANT || wm == W_RAW || wm == W_MIX || wm == W_ANYHALF)
                compare_four(n4, t, ref, nk->vec_dot4[t->w], w, nb, wm, am, (nb + k) % 3);
        }
    }
}

void check_type_dots(const char *variant, const clex_kernels *gk, const clex_kernels *nk) {
    for (size_t i = 0; i < N_TYPES; i++) check_one_type(&g_types[i], variant, gk, nk);
}

/* ------------------------------------------------------------------ Q8_K quantizer */

enum { K_NORMAL, K_BLOCK_SCALES, K_TIES, K_ZEROS, K_GRID, K_TINY, K_HUGE, K_DUP_MAX, K_NONFINITE, K_SNAN, NK_PROF };
static const char *const g_kprof[NK_PROF] = {"normal", "block-scales", "ties", "zeros/sparse", "grid",
                                             "iscale overflows", "huge", "equal |max| of both signs",
                                             "NaN/Inf", "signalling NaN"};

static float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* one super-block of 256 values of profile prof */
static void gen_k_block(float *x, int prof, float row_scale) {
    const float s = prof == K_BLOCK_SCALES ? rnd_scale(-20, 20) : prof == K_TINY ? rnd_scale(-44, -37)
                    : prof == K_HUGE ? rnd_scale(30, 38) : row_scale;
    for (int j = 0; j < QK_K; j++) x[j] = (float)rnd_normal() * s;
    if (prof == K_HUGE && rnd_int(0, 1)) x[rnd_int(0, QK_K - 1)] = rnd_int(0, 1) ? 3.4028235e38f : -3.4028235e38f;
    if (prof == K_TIES) {
        /* max = +-127 * 2^e, so iscale = -+2^-e exactly and (k + 1/2) * 2^e lands on a tie */
        const float u = ldexpf(1.0f, rnd_int(-20, 20));
        for (int j = 0; j < QK_K; j++) x[j] = ((float)rnd_int(-127, 126) + 0.5f) * u;
        x[rnd_int(0, QK_K - 1)] = (rnd_u64() & 1 ? 127.0f : -127.0f) * u;
    } else if (prof == K_ZEROS) {
        const int kind = rnd_int(0, 3);
        for (int j = 0; j < QK_K; j++) x[j] = kind == 1 ? -0.0f : kind == 3 && rnd_int(0, 7) == 0 ? x[j] : 0.0f;
        if (kind == 2) x[rnd_int(0, QK_K - 1)] = (float)rnd_normal() * s;
    } else if (prof == K_GRID) {
        const float u = ldexpf(1.0f, rnd_int(-10, 10));
        for (int j = 0; j < QK_K; j++) x[j] = (float)rnd_int(-127, 127) * u * (rnd_int(0, 9) ? 1.0f : 0.37f);
    } else if (prof == K_DUP_MAX) {
        const float m = 8.0f * s;   /* beyond every normal sample but rarely */
        for (int k = rnd_int(2, 6); k > 0; k--) x[rnd_int(0, QK_K - 1)] = rnd_int(0, 1) ? m : -m;
    } else if (prof == K_NONFINITE || prof == K_SNAN) {
        static const uint32_t special[] = {0x7FC00000u, 0xFFC00000u, 0x7F800000u, 0xFF800000u, 0x7FA00001u, 0xFF800001u};
        const int lo = prof == K_SNAN ? 4 : 0, hi = prof == K_SNAN ? 5 : 3;
        for (int k = rnd_int(1, 4); k > 0; k--) x[rnd_int(0, QK_K - 1)] = bits_float(special[rnd_int(lo, hi)]);
    }
}

void check_quantizer_q8_K(const clex_kernels *nk) {
    static float x[MAX_ELEMS];
    static block_q8_K a[16 + 1], b[16 + 1];
    for (int nb = 1; nb <= 16; nb++) {
        const int64_t n = (int64_t)nb * QK_K;
        for (int prof = 0; prof < NK_PROF; prof++) {
            const float row_scale = rnd_scale(-6, 6);
            for (int i = 0; i < nb; i++) gen_k_block(x + i * QK_K, prof, row_scale);
            memset(a, 0xA5, sizeof a);
            memset(b, 0x5A, sizeof b);
            clex_quantize_q8_K_ref(x, a, n);
            nk->from_float[CLEX_TYPE_Q8_K](x, b, n);
            int ok = memcmp(a, b, (size_t)nb * sizeof(block_q8_K)) == 0;
            for (size_t j = 0; j < sizeof b[nb]; j++) ok &= ((const uint8_t *)&b[nb])[j] == 0x5A;   /* nothing past n */
            int blk = -1;
            for (int i = 0; i < nb && blk < 0; i++)
                if (memcmp(&a[i], &b[i], sizeof a[i])) blk = i;
            record("quant_q8_K", ok, ok ? 0.0 : 1.0, "n=%lld profile=%s: bytes differ in block %d (d %.9g vs %.9g)",
                   (long long)n, g_kprof[prof], blk, blk < 0 ? 0.0 : (double)a[blk].d, blk < 0 ? 0.0 : (double)b[blk].d);
            /* the public entry point under NEON gives the reference's bytes too */
            if (nb % 5 == 1) {
                clex_set_isa(CLEX_ISA_NEON);
                const int rc = clex_quantize_row(CLEX_TYPE_Q8_K, x, a, n) | clex_quantize_act(CLEX_TYPE_Q8_K, x, b, n);
                record("api: quantize_act == quantize_row (Q8_K)", rc == 0 && memcmp(a, b, (size_t)nb * sizeof a[0]) == 0,
                       0.0, "profile %s", g_kprof[prof]);
            }
        }
    }
}
