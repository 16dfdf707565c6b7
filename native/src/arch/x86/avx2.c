/* AVX2 + FMA + F16C kernels. Compiled for that target regardless of the build's baseline and
 * only installed after the CPU was checked (core.c: clex_isa_supported). Each function matches
 * its *_generic twin (quants.c, attn.c) up to float summation order; the quantizers are
 * bit-exact. The set is the table at the end of the file; the Q8_0 / Q4_0 kernels and those of
 * the K-quant files' types are in avx2_q5.c and avx2_k.c (x86_k.h). */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>
#include <math.h>

#include "../../internal.h"
#include "x86_k.h"

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float h2f(clex_fp16 h) { return _cvtsh_ss(h); }

static inline __m128i dot_u4_halves(__m128i lo, __m128i hi, const int8_t *xs) {
    const __m128i one = _mm_set1_epi16(1);
    const __m128i a = _mm_madd_epi16(_mm_maddubs_epi16(lo, _mm_loadu_si128((const __m128i *)xs)), one);
    const __m128i b = _mm_madd_epi16(_mm_maddubs_epi16(hi, _mm_loadu_si128((const __m128i *)(xs + 16))), one);
    return _mm_add_epi32(a, b);
}

#include "q4_1_body.h"

static void vec_dot_f32(int64_t n, float *s, const void *vw, const void *vx) {
    const float *a = vw, *b = vx;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) sum += a[i] * b[i];
    *s = sum;
}

static void vec_dot_f16(int64_t n, float *s, const void *vw, const void *vx) {
    const clex_fp16 *w = vw;
    const float *x = vx;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i)));
        const __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + 8)));
        s0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), s0);
        s1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), s1);
    }
    float sum = hsum_ps(_mm256_add_ps(s0, s1));
    for (; i < n; i++) sum += h2f(w[i]) * x[i];
    *s = sum;
}

static inline __m256 load_bf16(const clex_bf16 *p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static void vec_dot_bf16(int64_t n, float *s, const void *vw, const void *vx) {
    const clex_bf16 *w = vw;
    const float *x = vx;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(load_bf16(w + i), _mm256_loadu_ps(x + i), s0);
        s1 = _mm256_fmadd_ps(load_bf16(w + i + 8), _mm256_loadu_ps(x + i + 8), s1);
    }
    float sum = hsum_ps(_mm256_add_ps(s0, s1));
    for (; i < n; i++) sum += clex_bf16_to_fp32(w[i]) * x[i];
    *s = sum;
}

static void axpy_f32(int64_t n, float a, const float *x, float *y) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

/* e^x with x clamped to [-87, 88] (so 2^n stays a normal float): x = n ln2 + r with ln2 in two
 * parts (Cody and Waite), e^r by Cephes' degree-5 polynomial on |r| <= ln2 / 2; ~1 ulp */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* Both activations are g * sigmoid(a): SiLU a = g; GELU's tanh form 0.5 g (1 + tanh(z)) with
 * z = sqrt(2/pi) (g + 0.044715 g^3) is g * sigmoid(2z). */
static inline __m256 act8(int32_t kind, __m256 g) {
    __m256 a = g;
    if (kind != CLEX_FFN_SWIGLU)
        a = _mm256_mul_ps(_mm256_mul_ps(g, _mm256_set1_ps(2.0f * 0.7978845608028654f)),
                          _mm256_fmadd_ps(_mm256_mul_ps(g, g), _mm256_set1_ps(0.044715f), _mm256_set1_ps(1.0f)));
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), a));
    return _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

static void act_avx2(int32_t kind, int64_t n, float *g, const float *u) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = act8(kind, _mm256_loadu_ps(g + i));
        if (u) v = _mm256_mul_ps(v, _mm256_loadu_ps(u + i));
        _mm256_storeu_ps(g + i, v);
    }
    if (i < n) {   /* the tail through the same arithmetic, masked */
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - i)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 v = act8(kind, _mm256_maskload_ps(g + i, m));
        if (u) v = _mm256_mul_ps(v, _mm256_maskload_ps(u + i, m));
        _mm256_maskstore_ps(g + i, m, v);
    }
}

/* roundf() semantics (half away from zero), exactly: truncate, then add the sign where the
 * dropped fraction is at least one half. */
static inline __m256i round_away(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 frac = _mm256_and_ps(_mm256_sub_ps(v, t), absmask);
    const __m256 ge = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_andnot_ps(absmask, v));
    return _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(ge, one)));
}

/* one block of 32 floats -> 32 int8 with the same arithmetic as clex_quantize_q8_0_ref */
static inline float quant_block(const float *x, int8_t *qs, int *sum) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        m = _mm256_max_ps(m, _mm256_and_ps(v[k], absmask));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / 127.0f;
    const float id = d ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++) q[k] = round_away(_mm256_mul_ps(v[k], vid));
    if (sum) {
        __m256i t = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        t4 = _mm_hadd_epi32(t4, t4);
        t4 = _mm_hadd_epi32(t4, t4);
        *sum = _mm_cvtsi128_si32(t4);
    }
    /* pack 32 int32 -> 32 int8 in order (packs interleave 128-bit lanes; permute undoes it) */
    const __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
    const __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
    __m256i p = _mm256_packs_epi16(p01, p23);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, p);
    return d;
}

static inline clex_fp16 scale_to_half(float d) { return clex_fp32_to_fp16(d); }

#include "../act_quant.h"

/* ---- attention over runs of cached keys (attn.c has the reference): scores reduce four keys
 * at a time, weighted sums keep their output row in registers ---- */

static inline __m256 ld32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 ld16(const clex_fp16 *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* four 8-lane sums -> their four totals */
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    const __m256 abcd = _mm256_hadd_ps(ab, cd);   /* [a b c d | a b c d] halves */
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* D a multiple of 8 (head dims are); other D go to the reference */
#define SCORES(NAME, T, LD, REF)                                                                \
static void NAME(int64_t n, int64_t D, const float *q, const T *K, float scale, float *s) {     \
    if (D % 8) { REF(n, D, q, K, scale, s); return; }                                          \
    const __m128 vs = _mm_set1_ps(scale);                                                       \
    int64_t p = 0;                                                                              \
    for (; p + 4 <= n; p += 4) {                                                                \
        const T *k0 = K + p * D, *k1 = k0 + D, *k2 = k1 + D, *k3 = k2 + D;                    \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                             \
        for (int64_t i = 0; i < D; i += 8) {                                                    \
            const __m256 qi = _mm256_loadu_ps(q + i);                                           \
            a0 = _mm256_fmadd_ps(qi, LD(k0 + i), a0);                                           \
            a1 = _mm256_fmadd_ps(qi, LD(k1 + i), a1);                                           \
            a2 = _mm256_fmadd_ps(qi, LD(k2 + i), a2);                                           \
            a3 = _mm256_fmadd_ps(qi, LD(k3 + i), a3);                                           \
        }                                                                                       \
        _mm_storeu_ps(s + p, _mm_mul_ps(hsum4(a0, a1, a2, a3), vs));                            \
    }                                                                                           \
    for (; p < n; p++) {                                                                        \
        __m256 a = _mm256_setzero_ps();                                                         \
        for (int64_t i = 0; i < D; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), LD(K + p * D + i), a); \
        s[p] = hsum_ps(a) * scale;                                                                \
    }                                                                                           \
}

/* the output in registers, 64 elements (8 vectors) at a time */
#define WSUM(NAME, T, LD, REF)                                                                  \
static void NAME(int64_t n, int64_t D, const float *w, const T *V, float *out) {                \
    if (D % 8) { REF(n, D, w, V, out); return; }                                               \
    for (int64_t d0 = 0; d0 < D; d0 += 64) {                                                    \
        const int64_t m = D - d0 < 64 ? (D - d0) / 8 : 8;                                       \
        __m256 o[8];                                                                            \
        for (int64_t j = 0; j < m; j++) o[j] = _mm256_loadu_ps(out + d0 + 8 * j);               \
        for (int64_t p = 0; p < n; p++) {                                                       \
            const __m256 wp = _mm256_set1_ps(w[p]);                                             \
            const T *v = V + p * D + d0;                                                        \
            for (int64_t j = 0; j < m; j++) o[j] = _mm256_fmadd_ps(wp, LD(v + 8 * j), o[j]);    \
        }                                                                                       \
        for (int64_t j = 0; j < m; j++) _mm256_storeu_ps(out + d0 + 8 * j, o[j]);               \
    }                                                                                           \
}

SCORES(scores32_avx2, float, ld32, clex_scores32_generic)
SCORES(scores16_avx2, clex_fp16, ld16, clex_scores16_generic)
WSUM(wsum32_avx2, float, ld32, clex_wsum32_generic)
WSUM(wsum16_avx2, clex_fp16, ld16, clex_wsum16_generic)

/* The GQA group's kernels (internal.h clex_gscores32_fn ...): up to three heads at a time against
 * each key (value) row, loaded and converted once (three heads' four keys are twelve of the
 * sixteen registers). Each head's arithmetic is SCORES' (WSUM's) step for step: the same FMA chain
 * per lane, hsum4 per four keys, hsum_ps for the last n % 4; so the bits are the per-head kernel's. */
static inline int head_step3(int64_t left) { return left == 4 ? 2 : left > 3 ? 3 : (int)left; }

#define GSCORES_BODY(NAME, T, LD)                                                              \
static inline __attribute__((always_inline)) void NAME(int G, int64_t n, int64_t D, const float *q, \
                                                       const T *K, float scale, float *s, int64_t sstride) { \
    const __m128 vs = _mm_set1_ps(scale);                                                       \
    int64_t p = 0;                                                                              \
    for (; p + 4 <= n; p += 4) {                                                                \
        const T *k0 = K + p * D;                                                                \
        __m256 a[3][4];                                                                         \
        CLEX_UNROLL for (int h = 0; h < G; h++)                                                 \
            CLEX_UNROLL for (int j = 0; j < 4; j++) a[h][j] = _mm256_setzero_ps();              \
        for (int64_t i = 0; i < D; i += 8)                                                      \
            CLEX_UNROLL for (int j = 0; j < 4; j++) {                                           \
                const __m256 kv = LD(k0 + j * D + i);                                           \
                CLEX_UNROLL for (int h = 0; h < G; h++)                                         \
                    a[h][j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * D + i), kv, a[h][j]);     \
            }                                                                                   \
        CLEX_UNROLL for (int h = 0; h < G; h++)                                                 \
            _mm_storeu_ps(s + h * sstride + p, _mm_mul_ps(hsum4(a[h][0], a[h][1], a[h][2], a[h][3]), vs)); \
    }                                                                                           \
    for (; p < n; p++) {                                                                        \
        __m256 a[3];                                                                            \
        CLEX_UNROLL for (int h = 0; h < G; h++) a[h] = _mm256_setzero_ps();                     \
        for (int64_t i = 0; i < D; i += 8) {                                                    \
            const __m256 kv = LD(K + p * D + i);                                                \
            CLEX_UNROLL for (int h = 0; h < G; h++) a[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * D + i), kv, a[h]); \
        }                                                                                       \
        CLEX_UNROLL for (int h = 0; h < G; h++) s[h * sstride + p] = hsum_ps(a[h]) * scale;     \
    }                                                                                           \
}

#define G3_CASES(CALL, B) \
    switch (G) { case 3: CALL(B, 3); break; case 2: CALL(B, 2); break; default: CALL(B, 1); break; }

#define GSCORES(NAME, BODY, T, REF)                                                            \
static void NAME(int64_t g, int64_t n, int64_t D, const float *q, const T *K, float scale, float *s) { \
    if (D % 8) { for (int64_t h = 0; h < g; h++) REF(n, D, q + h * D, K, scale, s + h * n); return; } \
    for (int64_t h = 0; h < g;) {                                                               \
        const int G = head_step3(g - h);                                                        \
        G3_CASES(GS_CALL, BODY)                                                                       \
        h += G;                                                                                 \
    }                                                                                           \
}
#define GS_CALL(B, GG) B(GG, n, D, q + h * D, K, scale, s + h * n, n)

/* G heads' outputs over values [d0, d0 + 8 m) of the row (m up to 4: twelve accumulators, the
 * three weights and the value vector): o[h][j] += w[h][p] * V[p][...], as WSUM adds them */
#define GWSUM_BODY(NAME, T, LD)                                                                \
static inline __attribute__((always_inline)) void NAME(int G, int m, int64_t n, int64_t D, int64_t d0, \
                                                       const float *w, const T *V, float *out, int64_t ostride) { \
    __m256 o[3][4];                                                                             \
    CLEX_UNROLL for (int h = 0; h < G; h++)                                                     \
        CLEX_UNROLL for (int j = 0; j < m; j++) o[h][j] = _mm256_loadu_ps(out + h * ostride + d0 + 8 * j); \
    for (int64_t p = 0; p < n; p++) {                                                           \
        const T *v = V + p * D + d0;                                                            \
        __m256 wp[3];                                                                           \
        CLEX_UNROLL for (int h = 0; h < G; h++) wp[h] = _mm256_set1_ps(w[h * n + p]);           \
        CLEX_UNROLL for (int j = 0; j < m; j++) {                                               \
            const __m256 x = LD(v + 8 * j);                                                     \
            CLEX_UNROLL for (int h = 0; h < G; h++) o[h][j] = _mm256_fmadd_ps(wp[h], x, o[h][j]); \
        }                                                                                       \
    }                                                                                           \
    CLEX_UNROLL for (int h = 0; h < G; h++)                                                     \
        CLEX_UNROLL for (int j = 0; j < m; j++) _mm256_storeu_ps(out + h * ostride + d0 + 8 * j, o[h][j]); \
}

#define GWSUM(NAME, BODY, T, REF)                                                              \
static void NAME(int64_t g, int64_t n, int64_t D, const float *w, const T *V, float *out, int64_t ostride) { \
    if (D % 8) { for (int64_t h = 0; h < g; h++) REF(n, D, w + h * n, V, out + h * ostride); return; } \
    for (int64_t h = 0; h < g;) {                                                               \
        const int G = head_step3(g - h);                                                        \
        for (int64_t d0 = 0; d0 < D; d0 += 32) {                                                \
            switch (D - d0 < 32 ? (D - d0) / 8 : 4) {                                           \
            case 4: { const int m = 4; G3_CASES(GW_CALL, BODY) } break;                               \
            case 3: { const int m = 3; G3_CASES(GW_CALL, BODY) } break;                               \
            case 2: { const int m = 2; G3_CASES(GW_CALL, BODY) } break;                               \
            default: { const int m = 1; G3_CASES(GW_CALL, BODY) } break;                              \
            }                                                                                   \
        }                                                                                       \
        h += G;                                                                                 \
    }                                                                                           \
}
#define GW_CALL(B, GG) B(GG, m, n, D, d0, w + h * n, V, out + h * ostride, ostride)

GSCORES_BODY(gscores32_body, float, ld32)
GSCORES_BODY(gscores16_body, clex_fp16, ld16)
GSCORES(gscores32_avx2, gscores32_body, float, clex_scores32_generic)
GSCORES(gscores16_avx2, gscores16_body, clex_fp16, clex_scores16_generic)
GWSUM_BODY(gwsum32_body, float, ld32)
GWSUM_BODY(gwsum16_body, clex_fp16, ld16)
GWSUM(gwsum32_avx2, gwsum32_body, float, clex_wsum32_generic)
GWSUM(gwsum16_avx2, gwsum16_body, clex_fp16, clex_wsum16_generic)

/* The softmax step (internal.h clex_softmax_fn), as avx512.c's: the max, e^(s - max) by exp8
 * (0 below -87, NaN kept), each vector's lanes added in double; the last n % 8 by the reference's
 * expf, into the same double sum. */
static inline __m256 exp8_le0(__m256 x) {
    const __m256 e = _mm256_and_ps(exp8(x), _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_NLT_UQ));
    return _mm256_blendv_ps(e, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

static void softmax_avx2(int64_t n, float *s, int normalize, float *max, double *sum) {
    __m256 vm = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + i));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float m = _mm_cvtss_f32(h);
    for (; i < n; i++) m = s[i] > m ? s[i] : m;
    const __m256 b = _mm256_set1_ps(m);
    __m256d a0 = _mm256_setzero_pd(), a1 = a0;
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp8_le0(_mm256_sub_ps(_mm256_loadu_ps(s + i), b));
        _mm256_storeu_ps(s + i, e);
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    const __m256d a = _mm256_add_pd(a0, a1);
    const __m128d a2 = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    double acc = _mm_cvtsd_f64(_mm_add_sd(a2, _mm_unpackhi_pd(a2, a2)));
    for (; i < n; i++) {
        s[i] = expf(s[i] - m);
        acc += s[i];
    }
    if (normalize) {
        const float inv = (float)(1.0 / acc);
        const __m256 vi = _mm256_set1_ps(inv);
        for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(s + i, _mm256_mul_ps(_mm256_loadu_ps(s + i), vi));
        for (; i < n; i++) s[i] *= inv;
    }
    *max = m;
    *sum = acc;
}

static void to_f16_avx2(const float *x, clex_fp16 *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = clex_fp32_to_fp16(x[i]);
}

static void from_f16_avx2(const clex_fp16 *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, ld16(x + i));
    for (; i < n; i++) y[i] = clex_fp16_to_fp32(x[i]);
}

static const clex_kernels avx2_set = {
    .vec_dot = {
        [CLEX_TYPE_F32] = vec_dot_f32,
        [CLEX_TYPE_F16] = vec_dot_f16,
        [CLEX_TYPE_BF16] = vec_dot_bf16,
        [CLEX_TYPE_Q8_0] = clex_avx2_dot_Q8_0,
        [CLEX_TYPE_Q4_0] = clex_avx2_dot_Q4_0,
        [CLEX_TYPE_Q4_1] = vec_dot_q4_1,
        CLEX_X86_K_KERNELS(clex_avx2, CLEX_X86_K_DOT)
    },
    .vec_dot4 = {
        [CLEX_TYPE_Q8_0] = clex_avx2_dot4_Q8_0,
        [CLEX_TYPE_Q4_0] = clex_avx2_dot4_Q4_0,
        [CLEX_TYPE_Q4_1] = vec_dot_q4_1_x4,
        CLEX_X86_K_KERNELS(clex_avx2, CLEX_X86_K_DOT4)
    },
    .from_float = {
        [CLEX_TYPE_Q8_0] = quant_q8_0,
        [CLEX_TYPE_Q8_1] = quant_q8_1,
        [CLEX_TYPE_Q8_K] = clex_avx2_quantize_q8_K,
    },
    .axpy_f32 = axpy_f32,
    .scores32 = scores32_avx2,
    .scores16 = scores16_avx2,
    .wsum32 = wsum32_avx2,
    .wsum16 = wsum16_avx2,
    .gscores32 = gscores32_avx2,
    .gscores16 = gscores16_avx2,
    .gwsum32 = gwsum32_avx2,
    .gwsum16 = gwsum16_avx2,
    .to_f16 = to_f16_avx2,
    .from_f16 = from_f16_avx2,
    .act = act_avx2,
    .softmax = softmax_avx2,
    .tiles = &clex_avx2_tiles,
};

const clex_kernels *clex_kernels_avx2(void) { return &avx2_set; }

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
