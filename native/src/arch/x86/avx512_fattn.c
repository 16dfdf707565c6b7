/* AVX-512 prefill attention (internal.h's clex_fattn_fn): one query head over up to 16
 * consecutive tokens of a batch, against its KV head's cached keys (f32, f16 or Q8_0, converted
 * to f32 a block at a time), in blocks of 16 keys with the running (online) softmax, so each
 * block of keys and values is read once for 16 tokens instead of once per token.
 *
 * The tokens sit in the lanes: the queries are transposed once (qt[d], lane t: token t's
 * component d, times the scale), a key's 16 scores are then D FMAs of qt[d] with the key's
 * component d broadcast, the softmax's maxima and sums are lane-wise (no horizontal step), and
 * the output accumulates transposed as well (ot[d], lane t) from the values' components
 * broadcast. A lane whose token sees none of a block's keys (causal mask, sliding window) keeps
 * its state. attn.c's per-token path is the reference (tests/test_kernels.py holds this to a
 * float64 softmax). */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#endif

#include <immintrin.h>
#include <math.h>

#include "../../internal.h"
#include "exp512.h"

enum { FT = 16, FK = 16 };   /* tokens per call (lanes), keys per block */

/* rows [k0, k0 + nk) of a cache head (rows of D: f32, f16 or Q8_0) as f32, in buf when converted */
static const float *key_rows(const clex_fattn_job *j, const void *base, int64_t k0, int nk, float *buf) {
    const int64_t n = (int64_t)nk * j->D;
    if (j->type == CLEX_TYPE_F16) {
        const clex_fp16 *h = (const clex_fp16 *)base + k0 * j->D;
        for (int64_t i = 0; i < n; i += 16)
            _mm512_storeu_ps(buf + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
        return buf;
    }
    if (j->type == CLEX_TYPE_Q8_0) {   /* each block's codes times its scale, as its to_float */
        const block_q8_0 *b = (const block_q8_0 *)base + k0 * (j->D / QK);
        for (int64_t i = 0; i < n; i += QK, b++) {
            const __m512 d = _mm512_set1_ps(_cvtsh_ss(b->d));
            for (int u = 0; u < QK; u += 16)
                _mm512_storeu_ps(buf + i + u, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                                                _mm_loadu_si128((const __m128i *)(b->qs + u)))), d));
        }
        return buf;
    }
    return (const float *)base + k0 * j->D;
}

/* token t's query as the scores see it: a Q8_0 cache's quantized to Q8_0 as decoding quantizes it
 * (attn.c), back in floats; the others' as they are */
static const float *query_row(const clex_fattn_job *j, int t, float *buf) {
    const float *q = j->q + t * j->q_stride;
    if (j->type != CLEX_TYPE_Q8_0) return q;
    block_q8_0 qb[CLEX_FATTN_MAX_D / QK];
    clex_k.from_float[CLEX_TYPE_Q8_0](q, qb, j->D);
    clex_traits(CLEX_TYPE_Q8_0)->to_float(qb, buf, j->D);
    return buf;
}

/* s[i], lane t = token t's scaled score against key i of kr (i < nk), over D components */
static inline void block_scores(int64_t D, const float *qt, const float *kr, int nk, __m512 s[FK]) {
    for (int i = 0; i < FK; i++) s[i] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 4 <= nk; i += 4) {
        __m512 a0 = s[i], a1 = s[i + 1], a2 = s[i + 2], a3 = s[i + 3];
        const float *k = kr + i * D;
        for (int64_t d = 0; d < D; d++) {
            const __m512 q = _mm512_load_ps(qt + 16 * d);
            a0 = _mm512_fmadd_ps(q, _mm512_set1_ps(k[d]), a0);
            a1 = _mm512_fmadd_ps(q, _mm512_set1_ps(k[D + d]), a1);
            a2 = _mm512_fmadd_ps(q, _mm512_set1_ps(k[2 * D + d]), a2);
            a3 = _mm512_fmadd_ps(q, _mm512_set1_ps(k[3 * D + d]), a3);
        }
        s[i] = a0, s[i + 1] = a1, s[i + 2] = a2, s[i + 3] = a3;
    }
    for (; i < nk; i++) {
        __m512 a = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d++) a = _mm512_fmadd_ps(_mm512_load_ps(qt + 16 * d), _mm512_set1_ps(kr[i * D + d]), a);
        s[i] = a;
    }
}

/* ot[d] = ot[d] * alpha + sum_i p[i] * vr[i][d] */
static inline void block_values(int64_t D, const __m512 p[FK], const float *vr, int nk, __m512 alpha, float *ot) {
    for (int64_t d0 = 0; d0 < D; d0 += 8) {
        __m512 o[8];
        for (int u = 0; u < 8; u++) o[u] = _mm512_mul_ps(_mm512_load_ps(ot + 16 * (d0 + u)), alpha);
        for (int i = 0; i < nk; i++) {
            const float *v = vr + i * D + d0;
            for (int u = 0; u < 8; u++) o[u] = _mm512_fmadd_ps(p[i], _mm512_set1_ps(v[u]), o[u]);
        }
        for (int u = 0; u < 8; u++) _mm512_store_ps(ot + 16 * (d0 + u), o[u]);
    }
}

void clex_avx512_fattn(const clex_fattn_job *j) {
    const int64_t D = j->D;
    const int nt = j->nt;
    _Alignas(64) float qt[CLEX_FATTN_MAX_D * FT], ot[CLEX_FATTN_MAX_D * FT];
    _Alignas(64) float kbuf[FK * CLEX_FATTN_MAX_D], vbuf[FK * CLEX_FATTN_MAX_D], qbuf[CLEX_FATTN_MAX_D];
    int32_t lo[FT], hi[FT];   /* token t sees keys [lo, hi) */
    int64_t kmin = INT64_MAX, kmax = 0;
    for (int t = 0; t < FT; t++) {
        const int tt = t < nt ? t : nt - 1;   /* missing lanes repeat the last token; not stored */
        const float *q = query_row(j, tt, qbuf);
        for (int64_t d = 0; d < D; d++) qt[16 * d + t] = q[d] * j->scale;
        lo[t] = (int32_t)j->k_lo[tt];
        hi[t] = (int32_t)j->k_hi[tt];
        kmin = lo[t] < kmin ? lo[t] : kmin;
        kmax = hi[t] > kmax ? hi[t] : kmax;
    }
    memset(ot, 0, (size_t)D * FT * sizeof(float));
    const __m512i vlo = _mm512_loadu_si512(lo), vhi = _mm512_loadu_si512(hi);
    __m512 m = _mm512_set1_ps(-INFINITY), l = _mm512_setzero_ps();
    for (int64_t k0 = kmin; k0 < kmax; k0 += FK) {
        const int nk = kmax - k0 < FK ? (int)(kmax - k0) : FK;
        const float *kr = key_rows(j, j->k, k0, nk, kbuf), *vr = key_rows(j, j->v, k0, nk, vbuf);
        __m512 s[FK];
        __mmask16 live[FK];
        block_scores(D, qt, kr, nk, s);
        __m512 bm = m;
        for (int i = 0; i < nk; i++) {
            const __m512i key = _mm512_set1_epi32((int32_t)(k0 + i));
            live[i] = _mm512_cmpge_epi32_mask(key, vlo) & _mm512_cmplt_epi32_mask(key, vhi);
            bm = _mm512_mask_max_ps(bm, live[i], bm, s[i]);
        }
        /* a lane with no key yet keeps max -inf: its exponents are then taken against 0 (and
         * masked), so no inf - inf appears */
        const __mmask16 seen = _mm512_cmp_ps_mask(bm, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
        const __m512 ref = _mm512_maskz_mov_ps(seen, bm);
        const __m512 alpha = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(m, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ),
                                                 clex_exp512(_mm512_sub_ps(m, ref)));
        __m512 sum = _mm512_setzero_ps();
        for (int i = 0; i < nk; i++) {
            s[i] = _mm512_maskz_mov_ps(live[i], clex_exp512(_mm512_sub_ps(s[i], ref)));
            sum = _mm512_add_ps(sum, s[i]);
        }
        l = _mm512_fmadd_ps(l, alpha, sum);
        m = bm;
        block_values(D, s, vr, nk, alpha, ot);
    }
    _Alignas(64) float inv[FT];
    _mm512_store_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.0f), l));
    for (int t = 0; t < nt; t++) {
        float *o = j->out + t * j->out_stride;
        for (int64_t d = 0; d < D; d++) o[d] = ot[16 * d + t] * inv[t];
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
