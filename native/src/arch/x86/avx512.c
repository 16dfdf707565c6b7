/* AVX-512 (F, BW, VL, DQ) kernels: two quantized blocks per 512-bit register, with the VNNI
 * dot-product instruction where the CPU has it (the VNNI Q8_0 / Q4_0 kernels and those of the
 * K-quant files' types are avx512_k.c's). Installed over the AVX2 set, so any slot the tables at
 * the end leave NULL keeps its AVX2 version. */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#endif

#include <immintrin.h>
#include <math.h>

#include "../../internal.h"
#include "exp512.h"
#include "x86_k.h"

static inline float h2f(clex_fp16 h) { return _cvtsh_ss(h); }

static inline __m512i load2(const void *a, const void *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

static inline __m512i nibbles2(const uint8_t *a, const uint8_t *b) {
    const __m256i q = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)b),
                                       _mm_loadu_si128((const __m128i *)a));
    const __m256i m = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(q, m);                          /* a.lo | b.lo */
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m);   /* a.hi | b.hi */
    /* per block: 16 low nibbles then 16 high ones */
    const __m256i blk_a = _mm256_permute2x128_si256(lo, hi, 0x20);
    const __m256i blk_b = _mm256_permute2x128_si256(lo, hi, 0x31);
    return _mm512_inserti64x4(_mm512_castsi256_si512(blk_a), blk_b, 1);
}

static inline __m512 scales2(float a, float b) {
    return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b));
}

/* unsigned x signed bytes, summed in groups of four into 16 int32 lanes (without VNNI) */
static inline __m512i dpbusd_plain(__m512i u, __m512i s) {
    return _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1));
}

/* signed x signed: move the sign of x onto y */
#define SIGNED_DOT(DP, x, y) \
    DP(_mm512_abs_epi8(x), _mm512_mask_sub_epi8((y), _mm512_movepi8_mask(x), _mm512_setzero_si512(), (y)))

#define DEFINE_KERNELS(SUF, DP)                                                                 \
static void vec_dot_q8_0_##SUF(int64_t n, float *s, const void *vw, const void *vx) {          \
    const block_q8_0 *w = vw, *x = vx;                                                          \
    const int64_t nb = n / QK;                                                                  \
    __m512 acc = _mm512_setzero_ps();                                                           \
    int64_t i = 0;                                                                              \
    for (; i + 1 < nb; i += 2) {                                                                \
        const __m512 d = scales2(h2f(w[i].d) * h2f(x[i].d), h2f(w[i + 1].d) * h2f(x[i + 1].d)); \
        const __m512i wq = load2(w[i].qs, w[i + 1].qs), xq = load2(x[i].qs, x[i + 1].qs);       \
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(SIGNED_DOT(DP, wq, xq)), acc);              \
    }                                                                                           \
    float sum = _mm512_reduce_add_ps(acc);                                                      \
    if (i < nb) {                                                                               \
        float t;                                                                                \
        clex_vec_dot_q8_0_q8_0_generic(QK, &t, w + i, x + i);                                   \
        sum += t;                                                                               \
    }                                                                                           \
    *s = sum;                                                                                   \
}                                                                                               \
static void vec_dot_q4_0_##SUF(int64_t n, float *s, const void *vw, const void *vx) {          \
    const block_q4_0 *w = vw;                                                                   \
    const block_q8_0 *x = vx;                                                                   \
    const int64_t nb = n / QK;                                                                  \
    const __m512i off = _mm512_set1_epi8(8);                                                    \
    __m512 acc = _mm512_setzero_ps();                                                           \
    int64_t i = 0;                                                                              \
    for (; i + 1 < nb; i += 2) {                                                                \
        const __m512 d = scales2(h2f(w[i].d) * h2f(x[i].d), h2f(w[i + 1].d) * h2f(x[i + 1].d)); \
        const __m512i wq = _mm512_sub_epi8(nibbles2(w[i].qs, w[i + 1].qs), off);                \
        const __m512i xq = load2(x[i].qs, x[i + 1].qs);                                         \
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(SIGNED_DOT(DP, wq, xq)), acc);              \
    }                                                                                           \
    float sum = _mm512_reduce_add_ps(acc);                                                      \
    if (i < nb) {                                                                               \
        float t;                                                                                \
        clex_vec_dot_q4_0_q8_0_generic(QK, &t, w + i, x + i);                                   \
        sum += t;                                                                               \
    }                                                                                           \
    *s = sum;                                                                                   \
}

DEFINE_KERNELS(bw, dpbusd_plain)

static void vec_dot_f32(int64_t n, float *s, const void *vw, const void *vx) {
    const float *a = vw, *b = vx;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    if (i + 16 <= n) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        i += 16;
    }
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static void vec_dot_f16(int64_t n, float *s, const void *vw, const void *vx) {
    const clex_fp16 *w = vw;
    const float *x = vx;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i))),
                             _mm512_loadu_ps(x + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i + 16))),
                             _mm512_loadu_ps(x + i + 16), s1);
    }
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    for (; i < n; i++) sum += h2f(w[i]) * x[i];
    *s = sum;
}

/* ---- attention over runs of cached keys (attn.c has the reference), avx2.c's scheme with 16
 * floats per register: scores reduce eight keys at a time, weighted sums keep up to 128 output
 * values in registers; a head dimension that is an odd multiple of 8 ends in a half vector
 * (masked); other D go to the reference. ---- */

static inline __m512 ldm32(const float *p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
static inline __m512 ldm16(const clex_fp16 *p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }

/* eight 16-lane sums -> their eight totals */
static inline __m256 hsum8x16(const __m512 a[8]) {
    __m256 h[8];
    for (int k = 0; k < 8; k++) h[k] = _mm256_add_ps(_mm512_castps512_ps256(a[k]), _mm512_extractf32x8_ps(a[k], 1));
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* the mask of vector i of a row of D (D a multiple of 8): all 16, or the last 8's half */
static inline __mmask16 row_mask(int64_t D, int64_t i) { return D - i >= 16 ? 0xFFFF : 0x00FF; }

#define SCORES512(NAME, T, LDM, REF)                                                           \
static void NAME(int64_t n, int64_t D, const float *q, const T *K, float scale, float *s) {     \
    if (D % 8) { REF(n, D, q, K, scale, s); return; }                                          \
    const __m256 vs = _mm256_set1_ps(scale);                                                    \
    int64_t p = 0;                                                                              \
    for (; p + 8 <= n; p += 8) {                                                                \
        const T *k0 = K + p * D;                                                                \
        __m512 a[8];                                                                            \
        CLEX_UNROLL for (int j = 0; j < 8; j++) a[j] = _mm512_setzero_ps();                     \
        for (int64_t i = 0; i < D; i += 16) {                                                   \
            const __mmask16 m = row_mask(D, i);                                                 \
            const __m512 qi = ldm32(q + i, m);                                                  \
            CLEX_UNROLL for (int j = 0; j < 8; j++) a[j] = _mm512_fmadd_ps(qi, LDM(k0 + j * D + i, m), a[j]); \
        }                                                                                       \
        _mm256_storeu_ps(s + p, _mm256_mul_ps(hsum8x16(a), vs));                                \
    }                                                                                           \
    for (; p < n; p++) {                                                                        \
        __m512 a = _mm512_setzero_ps();                                                         \
        for (int64_t i = 0; i < D; i += 16)                                                     \
            a = _mm512_fmadd_ps(ldm32(q + i, row_mask(D, i)), LDM(K + p * D + i, row_mask(D, i)), a); \
        s[p] = _mm512_reduce_add_ps(a) * scale;                                                 \
    }                                                                                           \
}

/* out[0 .. 16m) (the last vector masked by last) += sum_p w[p] V[p][...]: inline, so that a
 * constant m keeps o in registers */
#define WSUM512_RUN(NAME, T, LDM)                                                              \
static inline __attribute__((always_inline)) void NAME(int64_t n, int64_t D, const float *w, const T *V, \
                                                       float *out, int m, __mmask16 last) {     \
    __m512 o[8];                                                                                \
    CLEX_UNROLL for (int j = 0; j < 8; j++)   /* all eight set, so no compiler sees one unset */  \
        o[j] = j < m ? ldm32(out + 16 * j, j == m - 1 ? last : 0xFFFF) : _mm512_setzero_ps();   \
    for (int64_t p = 0; p < n; p++) {                                                           \
        const __m512 wp = _mm512_set1_ps(w[p]);                                                 \
        const T *v = V + p * D;                                                                 \
        CLEX_UNROLL for (int j = 0; j < m; j++)                                                 \
            o[j] = _mm512_fmadd_ps(wp, LDM(v + 16 * j, j == m - 1 ? last : 0xFFFF), o[j]);      \
    }                                                                                           \
    CLEX_UNROLL for (int j = 0; j < m; j++) _mm512_mask_storeu_ps(out + 16 * j, j == m - 1 ? last : 0xFFFF, o[j]); \
}

#define WSUM512(NAME, RUN, T, REF)                                                             \
static void NAME(int64_t n, int64_t D, const float *w, const T *V, float *out) {                \
    if (D % 8) { REF(n, D, w, V, out); return; }                                               \
    if (D == 64) { RUN(n, D, w, V, out, 4, 0xFFFF); return; }                                   \
    if (D == 128) { RUN(n, D, w, V, out, 8, 0xFFFF); return; }                                  \
    for (int64_t d0 = 0; d0 < D; d0 += 128) {                                                   \
        const int64_t left = D - d0 < 128 ? D - d0 : 128;                                       \
        RUN(n, D, w, V + d0, out + d0, (int)((left + 15) / 16), left % 16 ? 0x00FF : 0xFFFF);  \
    }                                                                                           \
}

/* The GQA group's kernels (internal.h clex_gscores32_fn ...): up to four heads at a time against
 * each key (value) row, loaded and converted once. Each head's arithmetic is the per-head
 * kernel's step for step: the same FMA chains per lane, hsum8x16's tree per block of eight keys
 * (computed as two halves of four keys: u0 from keys 0-3, u1 from 4-7, as hsum8x16 forms them),
 * _mm512_reduce_add_ps for the last n % 8, so the bits are the per-head kernel's. */
#define GSCORES512_BODY(NAME, T, LDM)                                                          \
static inline __attribute__((always_inline)) void NAME(int G, int64_t n, int64_t D, const float *q, \
                                                       const T *K, float scale, float *s, int64_t sstride) { \
    const __m256 vs = _mm256_set1_ps(scale);                                                    \
    int64_t p = 0;                                                                              \
    for (; p + 8 <= n; p += 8) {                                                                \
        __m256 u[2][4];                                                                         \
        CLEX_UNROLL for (int half = 0; half < 2; half++) {                                      \
            const T *k0 = K + (p + 4 * half) * D;                                               \
            __m512 a[4][4];                                                                     \
            CLEX_UNROLL for (int h = 0; h < G; h++)                                             \
                CLEX_UNROLL for (int j = 0; j < 4; j++) a[h][j] = _mm512_setzero_ps();          \
            for (int64_t i = 0; i < D; i += 16) {                                               \
                const __mmask16 m = row_mask(D, i);                                             \
                __m512 kv[4];                                                                   \
                CLEX_UNROLL for (int j = 0; j < 4; j++) kv[j] = LDM(k0 + j * D + i, m);          \
                CLEX_UNROLL for (int h = 0; h < G; h++) {                                       \
                    const __m512 qi = ldm32(q + h * D + i, m);                                  \
                    CLEX_UNROLL for (int j = 0; j < 4; j++) a[h][j] = _mm512_fmadd_ps(qi, kv[j], a[h][j]); \
                }                                                                               \
            }                                                                                   \
            CLEX_UNROLL for (int h = 0; h < G; h++) {                                           \
                __m256 t[4];                                                                    \
                CLEX_UNROLL for (int j = 0; j < 4; j++)                                         \
                    t[j] = _mm256_add_ps(_mm512_castps512_ps256(a[h][j]), _mm512_extractf32x8_ps(a[h][j], 1)); \
                u[half][h] = _mm256_hadd_ps(_mm256_hadd_ps(t[0], t[1]), _mm256_hadd_ps(t[2], t[3])); \
            }                                                                                   \
        }                                                                                       \
        CLEX_UNROLL for (int h = 0; h < G; h++) {                                               \
            const __m256 tot = _mm256_add_ps(_mm256_permute2f128_ps(u[0][h], u[1][h], 0x20),    \
                                             _mm256_permute2f128_ps(u[0][h], u[1][h], 0x31));   \
            _mm256_storeu_ps(s + h * sstride + p, _mm256_mul_ps(tot, vs));                      \
        }                                                                                       \
    }                                                                                           \
    for (; p < n; p++) {                                                                        \
        __m512 a[4];                                                                            \
        CLEX_UNROLL for (int h = 0; h < G; h++) a[h] = _mm512_setzero_ps();                     \
        for (int64_t i = 0; i < D; i += 16) {                                                   \
            const __m512 kv = LDM(K + p * D + i, row_mask(D, i));                               \
            CLEX_UNROLL for (int h = 0; h < G; h++)                                             \
                a[h] = _mm512_fmadd_ps(ldm32(q + h * D + i, row_mask(D, i)), kv, a[h]);         \
        }                                                                                       \
        CLEX_UNROLL for (int h = 0; h < G; h++) s[h * sstride + p] = _mm512_reduce_add_ps(a[h]) * scale; \
    }                                                                                           \
}

/* heads in groups of four (six: two of three), each group one pass over the keys */
static inline int head_step(int64_t left) { return left == 6 ? 3 : left > 4 ? 4 : (int)left; }

#define GSCORES512(NAME, BODY, T, REF)                                                         \
static void NAME(int64_t g, int64_t n, int64_t D, const float *q, const T *K, float scale, float *s) { \
    if (D % 8) { for (int64_t h = 0; h < g; h++) REF(n, D, q + h * D, K, scale, s + h * n); return; } \
    for (int64_t h = 0; h < g;) {                                                               \
        const int G = head_step(g - h);                                                         \
        switch (G) {                                                                            \
        case 4: BODY(4, n, D, q + h * D, K, scale, s + h * n, n); break;                        \
        case 3: BODY(3, n, D, q + h * D, K, scale, s + h * n, n); break;                        \
        case 2: BODY(2, n, D, q + h * D, K, scale, s + h * n, n); break;                        \
        default: BODY(1, n, D, q + h * D, K, scale, s + h * n, n); break;                       \
        }                                                                                       \
        h += G;                                                                                 \
    }                                                                                           \
}

/* G heads' outputs over values [d0, d0 + 64) of the row (vectors past D masked off): o[h][j] +=
 * w[h][p] * V[p][...], FMA by FMA as WSUM512_RUN adds them */
#define GWSUM512_BODY(NAME, T, LDM)                                                            \
static inline __attribute__((always_inline)) void NAME(int G, int64_t n, int64_t D, int64_t d0, const float *w, \
                                                       const T *V, float *out, int64_t ostride) { \
    __mmask16 mk[4];                                                                            \
    CLEX_UNROLL for (int j = 0; j < 4; j++) {                                                   \
        const int64_t left = D - d0 - 16 * j;                                                   \
        mk[j] = left >= 16 ? 0xFFFF : left > 0 ? 0x00FF : 0;                                   \
    }                                                                                           \
    __m512 o[4][4];                                                                             \
    CLEX_UNROLL for (int h = 0; h < G; h++)                                                     \
        CLEX_UNROLL for (int j = 0; j < 4; j++) o[h][j] = ldm32(out + h * ostride + d0 + 16 * j, mk[j]); \
    for (int64_t p = 0; p < n; p++) {                                                           \
        const T *v = V + p * D + d0;                                                            \
        __m512 x[4];                                                                            \
        CLEX_UNROLL for (int j = 0; j < 4; j++) x[j] = LDM(v + 16 * j, mk[j]);                  \
        CLEX_UNROLL for (int h = 0; h < G; h++) {                                               \
            const __m512 wp = _mm512_set1_ps(w[h * n + p]);                                     \
            CLEX_UNROLL for (int j = 0; j < 4; j++) o[h][j] = _mm512_fmadd_ps(wp, x[j], o[h][j]); \
        }                                                                                       \
    }                                                                                           \
    CLEX_UNROLL for (int h = 0; h < G; h++)                                                     \
        CLEX_UNROLL for (int j = 0; j < 4; j++) _mm512_mask_storeu_ps(out + h * ostride + d0 + 16 * j, mk[j], o[h][j]); \
}

#define GWSUM512(NAME, BODY, T, REF)                                                           \
static void NAME(int64_t g, int64_t n, int64_t D, const float *w, const T *V, float *out, int64_t ostride) { \
    if (D % 8) { for (int64_t h = 0; h < g; h++) REF(n, D, w + h * n, V, out + h * ostride); return; } \
    for (int64_t h = 0; h < g;) {                                                               \
        const int G = head_step(g - h);                                                         \
        for (int64_t d0 = 0; d0 < D; d0 += 64) {                                                \
            switch (G) {                                                                        \
            case 4: BODY(4, n, D, d0, w + h * n, V, out + h * ostride, ostride); break;         \
            case 3: BODY(3, n, D, d0, w + h * n, V, out + h * ostride, ostride); break;         \
            case 2: BODY(2, n, D, d0, w + h * n, V, out + h * ostride, ostride); break;         \
            default: BODY(1, n, D, d0, w + h * n, V, out + h * ostride, ostride); break;        \
            }                                                                                   \
        }                                                                                       \
        h += G;                                                                                 \
    }                                                                                           \
}

/* The softmax step (internal.h clex_softmax_fn): the max, then e^(s - max) by clex_exp512, the
 * sum of each vector's lanes in double (two vectors of eight), so it is no less accurate than
 * the reference's sum in key order; normalising multiplies by the same float as the reference. */
static inline __mmask16 tail_mask(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

/* e^x for x <= 0; 0 below -87 (where clex_exp512 clamps; expf's results there are subnormal) */
static inline __m512 exp_le0(__m512 x) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ), clex_exp512(x));
}

static void softmax_avx512(int64_t n, float *s, int normalize, float *max, double *sum) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 vm0 = ninf, vm1 = ninf;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        vm0 = _mm512_max_ps(vm0, _mm512_loadu_ps(s + i));
        vm1 = _mm512_max_ps(vm1, _mm512_loadu_ps(s + i + 16));
    }
    for (; i < n; i += 16) vm0 = _mm512_max_ps(vm0, _mm512_mask_loadu_ps(ninf, tail_mask(n - i), s + i));
    const float m = _mm512_reduce_max_ps(_mm512_max_ps(vm0, vm1));
    const __m512 vm = _mm512_set1_ps(m);
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    for (i = 0; i + 32 <= n; i += 32) {
        const __m512 e0 = exp_le0(_mm512_sub_ps(_mm512_loadu_ps(s + i), vm));
        const __m512 e1 = exp_le0(_mm512_sub_ps(_mm512_loadu_ps(s + i + 16), vm));
        _mm512_storeu_ps(s + i, e0);
        _mm512_storeu_ps(s + i + 16, e1);
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(e0)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e0, 1)));
        a2 = _mm512_add_pd(a2, _mm512_cvtps_pd(_mm512_castps512_ps256(e1)));
        a3 = _mm512_add_pd(a3, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e1, 1)));
    }
    for (; i < n; i += 16) {
        const __mmask16 t = tail_mask(n - i);
        const __m512 e = _mm512_maskz_mov_ps(t, exp_le0(_mm512_sub_ps(_mm512_maskz_loadu_ps(t, s + i), vm)));
        _mm512_mask_storeu_ps(s + i, t, e);
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    const double acc = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a0, a1), _mm512_add_pd(a2, a3)));
    if (normalize) {
        const __m512 inv = _mm512_set1_ps((float)(1.0 / acc));
        for (i = 0; i < n; i += 16) {
            const __mmask16 t = tail_mask(n - i);
            _mm512_mask_storeu_ps(s + i, t, _mm512_mul_ps(_mm512_maskz_loadu_ps(t, s + i), inv));
        }
    }
    *max = m;
    *sum = acc;
}

/* g * sigmoid(a), as avx2.c's act8 */
static inline __m512 act16(int32_t kind, __m512 g) {
    __m512 a = g;
    if (kind != CLEX_FFN_SWIGLU)
        a = _mm512_mul_ps(_mm512_mul_ps(g, _mm512_set1_ps(2.0f * 0.7978845608028654f)),
                          _mm512_fmadd_ps(_mm512_mul_ps(g, g), _mm512_set1_ps(0.044715f), _mm512_set1_ps(1.0f)));
    const __m512 e = clex_exp512(_mm512_sub_ps(_mm512_setzero_ps(), a));
    return _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

static void act_avx512(int32_t kind, int64_t n, float *g, const float *u) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = act16(kind, _mm512_maskz_loadu_ps(m, g + i));
        if (u) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, u + i));
        _mm512_mask_storeu_ps(g + i, m, v);
    }
}

SCORES512(scores32_avx512, float, ldm32, clex_scores32_generic)
SCORES512(scores16_avx512, clex_fp16, ldm16, clex_scores16_generic)
WSUM512_RUN(wsum32_run, float, ldm32)
WSUM512_RUN(wsum16_run, clex_fp16, ldm16)
WSUM512(wsum32_avx512, wsum32_run, float, clex_wsum32_generic)
WSUM512(wsum16_avx512, wsum16_run, clex_fp16, clex_wsum16_generic)
GSCORES512_BODY(gscores32_body, float, ldm32)
GSCORES512_BODY(gscores16_body, clex_fp16, ldm16)
GSCORES512(gscores32_avx512, gscores32_body, float, clex_scores32_generic)
GSCORES512(gscores16_avx512, gscores16_body, clex_fp16, clex_scores16_generic)
GWSUM512_BODY(gwsum32_body, float, ldm32)
GWSUM512_BODY(gwsum16_body, clex_fp16, ldm16)
GWSUM512(gwsum32_avx512, gwsum32_body, float, clex_wsum32_generic)
GWSUM512(gwsum16_avx512, gwsum16_body, clex_fp16, clex_wsum16_generic)

#define ATTENTION_512 .scores32 = scores32_avx512, .scores16 = scores16_avx512, .wsum32 = wsum32_avx512, \
                      .wsum16 = wsum16_avx512, .act = act_avx512, .fattn = clex_avx512_fattn,           \
                      .gscores32 = gscores32_avx512, .gscores16 = gscores16_avx512, .gwsum32 = gwsum32_avx512, \
                      .gwsum16 = gwsum16_avx512, .softmax = softmax_avx512

static const clex_kernels avx512_vnni = {
    .vec_dot = {
        [CLEX_TYPE_F32] = vec_dot_f32,
        [CLEX_TYPE_F16] = vec_dot_f16,
        [CLEX_TYPE_Q8_0] = clex_avx512vnni_dot_Q8_0,
        [CLEX_TYPE_Q4_0] = clex_avx512vnni_dot_Q4_0,
        [CLEX_TYPE_Q4_1] = clex_avx512vnni_dot_Q4_1,
        CLEX_X86_K_KERNELS(clex_avx512vnni, CLEX_X86_K_DOT)
    },
    .vec_dot4 = {
        [CLEX_TYPE_Q8_0] = clex_avx512vnni_dot4_Q8_0,
        [CLEX_TYPE_Q4_0] = clex_avx512vnni_dot4_Q4_0,
        [CLEX_TYPE_Q4_1] = clex_avx512vnni_dot4_Q4_1,
        CLEX_X86_K_KERNELS(clex_avx512vnni, CLEX_X86_K_DOT4)
    },
    ATTENTION_512,
    .tiles = &clex_avx512vnni_tiles,
};

/* without VNNI, Q4_1, the four-row kernels and the K-quant files' types (avx512_k.c) keep their
 * AVX2 versions: faster than 512-bit maddubs */
static const clex_kernels avx512_bw = {
    .vec_dot = {
        [CLEX_TYPE_F32] = vec_dot_f32,
        [CLEX_TYPE_F16] = vec_dot_f16,
        [CLEX_TYPE_Q8_0] = vec_dot_q8_0_bw,
        [CLEX_TYPE_Q4_0] = vec_dot_q4_0_bw,
    },
    ATTENTION_512,
};

const clex_kernels *clex_kernels_avx512(void) {
    return __builtin_cpu_supports("avx512vnni") ? &avx512_vnni : &avx512_bw;
}

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
