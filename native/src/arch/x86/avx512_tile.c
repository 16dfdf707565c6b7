/* AVX-512 + VNNI tile kernels for prefill (internal.h's clex_tile_set): many tokens against the
 * same weight rows, the weights' unpacking done once per call instead of once per four tokens.
 * Tiles of 16 weight rows x 16 tokens. The signed 32-value types (Q8_0, Q4_0, Q5_0, IQ4_NL
 * against Q8_0 activations; their section says how), Q4_1 and Q5_1 (against Q8_1: the same with
 * the minimums' term) put the tokens in the lanes of the rows' accumulators, their activations
 * transposed once per call; the K-quants Q2_K .. Q6_K and IQ4_XS (against Q8_K) put the weight
 * rows in the lanes and broadcast the activations from where they lie (their section says why). */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#endif

#include <immintrin.h>

#include "../../internal.h"
#include "x86_k.h"

#define INLINE static inline __attribute__((always_inline))

INLINE float h2f_at(const void *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}
INLINE __m512i ld64(const void *p) { return _mm512_loadu_si512(p); }
INLINE __m256i ld32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

INLINE __m256i ld(const void *p) { return ld32(p); }

#include "signed32_weights.h"
#include "avx512_tr16.h"

/* ------------------------------------------------------------------ signed 32-value types */

/* Tokens in the lanes: a tile is 16 weight rows x 16 tokens, lane l of row r's accumulator
 * holding token l. Per block, the 16 tokens' 32 activation bytes are transposed once into eight
 * registers (register k: each token's bytes 4k .. 4k + 3, plus 128 as unsigned bytes) and each
 * weight row's bytes arrive four at a time as broadcasts from memory, so eight vpdpbusd leave
 * each lane with its token's whole block sum; one conversion, one multiply of the scales and one
 * FMA follow per row and block, for 16 tokens at once. The +128 comes out through the row's
 * -128 * (sum of its weights), the accumulator the vpdpbusd start from: the integer sums are
 * exact. Packed, a block of a weight row is 40 bytes: its 32 signed weights, that int32, its
 * scale as a float. The results are transposed back (16 x 16) into the tokens' rows of y. */

enum { TV_T = 16, TV_R = 16, S32_BW = 40, U32_BW = 48, S32_XB = 10 * 64, S32_MAX_N = 2048 };

INLINE int32_t ld_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
INLINE float ld_f32(const void *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

static size_t s32_bytes(int64_t n) { return (size_t)(n / QK) * S32_BW; }

INLINE void s32_pack(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst, int wt) {
    const int64_t nb = n / QK;
    const size_t ws = signed_stride(wt);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = (const uint8_t *)w + r * wstride;
        uint8_t *out = (uint8_t *)dst + r * nb * S32_BW;
        for (int64_t i = 0; i < nb; i++, out += S32_BW) {
            const __m256i wq = signed_weights(row, i, wt);
            /* sum(w) = sum(w + 128) - 32 * 128, the unsigned sum by vpsadbw */
            const __m256i sad = _mm256_sad_epu8(_mm256_xor_si256(wq, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
            const __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(sad), _mm256_extracti128_si256(sad, 1));
            const int32_t sum = (int32_t)_mm_cvtsi128_si64(_mm_add_epi64(s2, _mm_unpackhi_epi64(s2, s2))) - 32 * 128;
            const int32_t corr = -128 * sum;
            const float d = h2f_at(row + i * ws);
            _mm256_storeu_si256((__m256i *)out, wq);
            memcpy(out + 32, &corr, 4);
            memcpy(out + 36, &d, 4);
        }
    }
}

/* vpermt2d indices of the 16 x 8 transpose of dwords (tokens x a block's 8 dwords), in three
 * rounds of pairs: tokens 4j .. 4j + 3 (by dword halves), 8 (by dword pairs), 16 (by dwords) */
static const int32_t tv_idx[6][16] __attribute__((aligned(64))) = {
    {0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27},
    {4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31},
    {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23},
    {8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31},
    {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
    {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
};

INLINE __m512i tv_perm(__m512i a, int i, __m512i b) {
    return _mm512_permutex2var_epi32(a, _mm512_load_si512(tv_idx[i]), b);
}

/* out[k], lane l = dword k of the 32 bytes at tp[l] + off (a[i]: those of tokens 2i, 2i + 1) */
INLINE void tv_transpose(const uint8_t *const tp[TV_T], size_t off, __m512i out[8]) {
    __m512i a[8], p[4][2], q[2][2][2];
    CLEX_UNROLL for (int i = 0; i < 8; i++)
        a[i] = _mm512_inserti64x4(_mm512_castsi256_si512(ld32(tp[2 * i] + off)), ld32(tp[2 * i + 1] + off), 1);
    CLEX_UNROLL for (int j = 0; j < 4; j++) CLEX_UNROLL for (int h = 0; h < 2; h++)
        p[j][h] = tv_perm(a[2 * j], h, a[2 * j + 1]);
    CLEX_UNROLL for (int h = 0; h < 2; h++) CLEX_UNROLL for (int t = 0; t < 2; t++) CLEX_UNROLL for (int u = 0; u < 2; u++)
        q[h][t][u] = tv_perm(p[2 * t][h], 2 + u, p[2 * t + 1][h]);
    CLEX_UNROLL for (int h = 0; h < 2; h++) CLEX_UNROLL for (int u = 0; u < 2; u++) CLEX_UNROLL for (int v = 0; v < 2; v++)
        out[4 * h + 2 * u + v] = tv_perm(q[h][0][u], 4 + v, q[h][1][u]);
}

/* the TV_T token rows of a tile (x + t * xstride bytes) as pointers and byte offsets; the missing
 * tokens (t >= ntok) read the last token's row */
INLINE void tv_rows(const uint8_t *x, size_t xstride, int ntok, const uint8_t *tp[TV_T], int32_t off[TV_T]) {
    for (int l = 0; l < TV_T; l++) {
        off[l] = (int32_t)((uint64_t)(l < ntok ? l : ntok - 1) * xstride);
        tp[l] = x + off[l];
    }
}

/* nb blocks of ntok (<= 16) tokens' Q8_0 rows (q81: Q8_1 rows), xstride bytes apart, into S32_XB
 * bytes per block: the transposed codes plus 128, each token's scale d (0 beyond ntok; the
 * missing tokens' codes are the last token's), and for Q8_1 each token's s = d * sum(codes) */
INLINE void s32_prep(int64_t nb, const uint8_t *x, size_t xstride, int ntok, int q81, uint8_t *out) {
    const size_t bs = q81 ? sizeof(block_q8_1) : sizeof(block_q8_0);
    const size_t qs = q81 ? offsetof(block_q8_1, qs) : offsetof(block_q8_0, qs);
    const uint8_t *tp[TV_T];
    int32_t off[TV_T];
    tv_rows(x, xstride, ntok, tp, off);
    const __m512i vindex = _mm512_loadu_si512(off);
    const __mmask16 live = (__mmask16)((1u << ntok) - 1);
    for (int64_t b = 0; b < nb; b++, out += S32_XB) {
        __m512i xk[8];
        tv_transpose(tp, (size_t)b * bs + qs, xk);
        CLEX_UNROLL for (int k = 0; k < 8; k++)
            _mm512_storeu_si512(out + 64 * k, _mm512_xor_si512(xk[k], _mm512_set1_epi8((char)0x80)));
        const uint8_t *xb = x + b * bs;
        if (q81) {
            _mm512_storeu_ps(out + 512, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, vindex, xb, 1));
            _mm512_storeu_ps(out + 576, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, vindex, xb + 4, 1));
        } else {   /* the low half of each dword gathered: d */
            const __m512i h = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, vindex, xb, 1);
            _mm512_storeu_ps(out + 512, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)));
        }
    }
}

/* acc[r] += packed row wr[r] . the 16 prepared tokens, over nb blocks (mins: Q4_1 / Q5_1, whose
 * minimum m meets the tokens' s) */
INLINE void s32_tile(int mins, int64_t nb, const uint8_t *const wr[TV_R], const uint8_t *px, __m512 acc[TV_R]) {
    const size_t bw = mins ? U32_BW : S32_BW;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *xb = px + b * S32_XB;
        __m512i xk[8];
        CLEX_UNROLL for (int k = 0; k < 8; k++) xk[k] = ld64(xb + 64 * k);
        const __m512 dc = _mm512_loadu_ps(xb + 512), sc = mins ? _mm512_loadu_ps(xb + 576) : _mm512_setzero_ps();
        CLEX_UNROLL for (int r = 0; r < TV_R; r++) {
            const uint8_t *wb = wr[r] + b * bw;
            __m512i t = _mm512_set1_epi32(ld_i32(wb + 32));
            CLEX_UNROLL for (int k = 0; k < 8; k++) t = _mm512_dpbusd_epi32(t, xk[k], _mm512_set1_epi32(ld_i32(wb + 4 * k)));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(dc, _mm512_set1_ps(ld_f32(wb + 36))), acc[r]);
            if (mins) acc[r] = _mm512_fmadd_ps(sc, _mm512_set1_ps(ld_f32(wb + 40)), acc[r]);
        }
    }
}

/* acc[r] lane l -> y[l * ystride + r] for r < R, l < ntok (added to y when accumulate) */
INLINE void tv_store(const __m512 acc[TV_R], int R, int ntok, float *y, int64_t ystride, int accumulate) {
    __m512 o[TV_T];
    tr16_ps(acc, o);
    const __mmask16 m = (__mmask16)((1u << R) - 1);
    for (int l = 0; l < ntok; l++) {
        float *yl = y + l * ystride;
        const __m512 v = accumulate ? _mm512_add_ps(o[l], _mm512_maskz_loadu_ps(m, yl)) : o[l];
        _mm512_mask_storeu_ps(yl, m, v);
    }
}

INLINE void s32_gemm_any(int64_t n, const void *pw, int64_t rows, const void *x, size_t xstride, int64_t ntok,
                         float *y, int64_t ystride, int accumulate, int mins) {
    const int64_t nb = n / QK;
    const size_t wrow = (size_t)nb * (mins ? U32_BW : S32_BW);
    _Alignas(64) uint8_t xt[(S32_MAX_N / QK) * S32_XB];
    for (int64_t t0 = 0; t0 < ntok; t0 += TV_T) {
        const int nt = ntok - t0 < TV_T ? (int)(ntok - t0) : TV_T;
        s32_prep(nb, (const uint8_t *)x + (uint64_t)t0 * xstride, xstride, nt, mins, xt);
        for (int64_t r0 = 0; r0 < rows; r0 += TV_R) {
            const int R = rows - r0 < TV_R ? (int)(rows - r0) : TV_R;
            const uint8_t *wr[TV_R];   /* the rows past the last repeat it; their sums are not stored */
            for (int r = 0; r < TV_R; r++) wr[r] = (const uint8_t *)pw + (size_t)(r0 + (r < R ? r : R - 1)) * wrow;
            __m512 acc[TV_R];
            CLEX_UNROLL for (int r = 0; r < TV_R; r++) acc[r] = _mm512_setzero_ps();
            s32_tile(mins, nb, wr, xt, acc);
            tv_store(acc, R, nt, y + t0 * ystride + r0, ystride, accumulate);
        }
    }
}

static void s32_gemm(int64_t n, const void *pw, int64_t rows, const void *x, size_t xstride, int64_t ntok, float *y,
                     int64_t ystride, int accumulate) {
    s32_gemm_any(n, pw, rows, x, xstride, ntok, y, ystride, accumulate, 0);
}

static void u32_gemm(int64_t n, const void *pw, int64_t rows, const void *x, size_t xstride, int64_t ntok, float *y,
                     int64_t ystride, int accumulate) {
    s32_gemm_any(n, pw, rows, x, xstride, ntok, y, ystride, accumulate, 1);
}

/* Q4_1, Q5_1: the unsigned codes (values 0..31 fit the signed operand), then as s32_pack, and m */
static size_t u32_bytes(int64_t n) { return (size_t)(n / QK) * U32_BW; }

INLINE void u32_pack(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst, int five) {
    const int64_t nb = n / QK;
    for (int64_t r = 0; r < rows; r++) {
        const block_q4_1 *b4 = (const block_q4_1 *)((const uint8_t *)w + r * wstride);
        const block_q5_1 *b5 = (const block_q5_1 *)((const uint8_t *)w + r * wstride);
        uint8_t *out = (uint8_t *)dst + r * nb * U32_BW;
        for (int64_t i = 0; i < nb; i++, out += U32_BW) {
            __m256i u = nibbles(five ? b5[i].qs : b4[i].qs);
            if (five) u = _mm256_or_si256(u, _mm256_and_si256(bit_bytes(b5[i].qh), _mm256_set1_epi8(16)));
            const __m256i sad = _mm256_sad_epu8(u, _mm256_setzero_si256());
            const __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(sad), _mm256_extracti128_si256(sad, 1));
            const int32_t corr = -128 * (int32_t)_mm_cvtsi128_si64(_mm_add_epi64(s2, _mm_unpackhi_epi64(s2, s2)));
            const float d = h2f_at(five ? &b5[i].d : &b4[i].d), m = h2f_at(five ? &b5[i].m : &b4[i].m);
            _mm256_storeu_si256((__m256i *)out, u);
            memcpy(out + 32, &corr, 4);
            memcpy(out + 36, &d, 4);
            memcpy(out + 40, &m, 4);
        }
    }
}

static void pack_Q4_1(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst) {
    u32_pack(n, w, wstride, rows, dst, 0);
}
static void pack_Q5_1(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst) {
    u32_pack(n, w, wstride, rows, dst, 1);
}

#define S32_PACK(T, WT)                                                                          \
    static void pack_##T(int64_t n, const void *w, size_t wstride, int64_t rows, void *dst) {      \
        s32_pack(n, w, wstride, rows, dst, WT);                                                    \
    }
S32_PACK(Q8_0, W_Q8_0)
S32_PACK(Q4_0, W_Q4_0)
S32_PACK(Q5_0, W_Q5_0)
S32_PACK(IQ4_NL, W_IQ4_NL)

/* ------------------------------------------------------------------ K-quants */

/* Groups of 16 weight rows packed by avx512_k.c (x86_k.h's layout): here the weight rows are in the
 * lanes and the tokens are broadcast, so the activations need no transposing: each token's Q8_K
 * codes arrive four at a time as broadcasts from its own row (signed, the operand vpdpbusd takes
 * from memory) against a register of 16 rows' unsigned codes. Per super-block, eight registers of
 * codes (32 values of 16 rows) serve 16 tokens in turn: eight vpdpbusd (two chains of four for
 * sub-blocks of 16) give each row's exact integer sub-block sum, started from -offset * the
 * sub-block's activation sum (the codes' offset, prepared per token from the bsums); one
 * conversion and one FMA by the rows' d * scale add it to the token's super-block sum, the
 * minimums' term (-dmin * m times the activation sum, prepared as a float) one FMA more; the
 * token's scale multiplies the super-block sum once, into the token's accumulator. The rows'
 * sums of a token are one register: stored as they are into its row of y. */

enum { KQ_T = 16, KQ_MAX_N = 8 * QK_K, KQ_QS = offsetof(block_q8_K, qs), KQ_PRE = 128, KQ_H = 8 };

static size_t kq_bytes16(int64_t n) { return (size_t)(n / QK_K) * clex_kpack_bytes(CLEX_TYPE_Q4_K); }
static size_t kq_bytes32(int64_t n) { return (size_t)(n / QK_K) * clex_kpack_bytes(CLEX_TYPE_Q2_K); }
static size_t kq_bytes8(int64_t n) { return (size_t)(n / QK_K) * clex_kpack_bytes(CLEX_TYPE_IQ4_XS); }

/* per token (KQ_T of them, x0 + t * xs) and super-block, KQ_PRE bytes at pre + (sb * KQ_T + t) *
 * KQ_PRE: 16 int32, each sub-block's activation sum (sub-blocks of 16 or 32) times -off (0 with
 * minimums, whose chains start from 0), then with minimums the sums as 16 floats */
INLINE void kq_prep(int64_t nsb, const uint8_t *x0, size_t xs, int sub16, int mins, int off, uint8_t *pre) {
    for (int t = 0; t < KQ_T; t++)
        for (int64_t sb = 0; sb < nsb; sb++) {
            const __m256i b16 = ld32(x0 + t * xs + sb * sizeof(block_q8_K) + offsetof(block_q8_K, bsums));
            const __m512i b = sub16 ? _mm512_cvtepi16_epi32(b16)
                                    : _mm512_zextsi256_si512(_mm256_madd_epi16(b16, _mm256_set1_epi16(1)));
            uint8_t *o = pre + (sb * KQ_T + t) * KQ_PRE;
            _mm512_storeu_si512(o, _mm512_mullo_epi32(b, _mm512_set1_epi32(-off)));
            if (mins) _mm512_storeu_ps(o + 64, _mm512_cvtepi32_ps(b));
        }
}

INLINE __m512i bc32(const uint8_t *p) { return _mm512_set1_epi32(ld_i32(p)); }

/* c + the unsigned bytes of w . the four signed bytes at p broadcast, the broadcast embedded in
 * the instruction (one fused uop; compilers otherwise load it into a register first) */
INLINE __m512i dpbusd_bc(__m512i c, __m512i w, const uint8_t *p) {
#if defined(__GNUC__)
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(c) : "v"(w), "m"(*(const int32_t *)p));
    return c;
#else
    return _mm512_dpbusd_epi32(c, w, bc32(p));
#endif
}

/* acc[t] (+)= the group's R rows (lanes) . token t, over nsb super-blocks; acc in memory, 16
 * floats a token */
INLINE void kq_group(int sub16, int mins, int nvec, int64_t nsb, const uint8_t *gw, int R, const uint8_t *x0, size_t xs,
                     const uint8_t *pre, float *acc) {
    const size_t vs = 4 * (size_t)R, sbb = (size_t)(64 + nvec) * vs;
    const __mmask16 m = (__mmask16)((1u << R) - 1);
    for (int64_t sb = 0; sb < nsb; sb++)
        for (int th = 0; th < KQ_T; th += KQ_H) {   /* eight tokens at a time */
            const uint8_t *ws = gw + sb * sbb, *xsb = x0 + (th * xs + sb * sizeof(block_q8_K));
            const uint8_t *ps = pre + (sb * KQ_T + th) * KQ_PRE;
            __m512 as[KQ_H];
            CLEX_UNROLL for (int t = 0; t < KQ_H; t++) as[t] = _mm512_setzero_ps();
            for (int g = 0; g < 8; g++) {   /* 32 values: eight registers of codes */
                __m512i w[8];
                CLEX_UNROLL for (int k = 0; k < 8; k++) w[k] = _mm512_maskz_loadu_epi32(m, ws + (8 * g + k) * vs);
                const int j0 = sub16 ? 2 * g : g, mv = sub16 ? 16 : 8;   /* first sub-block; minimums' vectors */
                const __m512 s0 = _mm512_maskz_loadu_ps(m, ws + (64 + j0) * vs);
                const __m512 s1 = sub16 ? _mm512_maskz_loadu_ps(m, ws + (64 + j0 + 1) * vs) : s0;
                const __m512 m0 = mins ? _mm512_maskz_loadu_ps(m, ws + (64 + mv + j0) * vs) : s0;
                const __m512 m1 = mins && sub16 ? _mm512_maskz_loadu_ps(m, ws + (64 + mv + j0 + 1) * vs) : s0;
                const uint8_t *xq = xsb + KQ_QS + 32 * g;
                /* eight chains of vpdpbusd side by side (their latency hidden): eight tokens' sub-blocks
                 * of 32, or four tokens' two of 16 each; each chain starts from its int32 in pre */
                const int tpc = sub16 ? 4 : 8;
                CLEX_UNROLL for (int t0 = 0; t0 < KQ_H; t0 += tpc) {
                    __m512i c[8];
                    CLEX_UNROLL for (int u = 0; u < 8; u++) {
                        const int t = t0 + (sub16 ? u >> 1 : u), h = sub16 ? u & 1 : 0;
                        c[u] = mins ? _mm512_setzero_si512() : bc32(ps + t * KQ_PRE + 4 * (j0 + h));
                    }
                    CLEX_UNROLL for (int k = 0; k < 8; k++) {
                        if (sub16 && k >= 4) break;
                        CLEX_UNROLL for (int u = 0; u < 8; u++) {
                            const int t = t0 + (sub16 ? u >> 1 : u), h = sub16 ? u & 1 : 0;
                            c[u] = dpbusd_bc(c[u], w[4 * h + k], xq + t * xs + 16 * h + 4 * k);
                        }
                    }
                    CLEX_UNROLL for (int u = 0; u < 8; u++) {
                        const int t = t0 + (sub16 ? u >> 1 : u), h = sub16 ? u & 1 : 0;
                        as[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c[u]), h ? s1 : s0, as[t]);
                        if (mins)
                            as[t] = _mm512_fmadd_ps(h ? m1 : m0, _mm512_set1_ps(ld_f32(ps + t * KQ_PRE + 64 + 4 * (j0 + h))),
                                                    as[t]);
                    }
                }
            }
            CLEX_UNROLL for (int t = 0; t < KQ_H; t++) {   /* times the token's d */
                float *a = acc + 16 * (th + t);
                _mm512_storeu_ps(a, _mm512_fmadd_ps(as[t], _mm512_set1_ps(ld_f32(xsb + t * xs)), _mm512_loadu_ps(a)));
            }
        }
}

INLINE void kq_gemm(int64_t n, const void *pw, int64_t rows, const void *x, size_t xstride, int64_t ntok, float *y,
                    int64_t ystride, int accumulate, int sub16, int mins, int off, int nvec) {
    const int64_t nsb = n / QK_K;
    const size_t rowb = (size_t)nsb * (256 + 4 * (size_t)nvec), xrow = (size_t)nsb * sizeof(block_q8_K);
    _Alignas(64) uint8_t pre[(KQ_MAX_N / QK_K) * KQ_T * KQ_PRE];
    _Alignas(64) float acc[KQ_T * 16];
    _Alignas(64) uint8_t xl[KQ_T * (KQ_MAX_N / QK_K) * sizeof(block_q8_K)];   /* a last group of fewer
                                                                                than 16 tokens: copied, the rest zero */
    for (int64_t t0 = 0; t0 < ntok; t0 += KQ_T) {
        const int nt = ntok - t0 < KQ_T ? (int)(ntok - t0) : KQ_T;
        const uint8_t *xg = (const uint8_t *)x + (uint64_t)t0 * xstride;
        size_t xs = xstride;
        if (nt < KQ_T) {
            memset(xl, 0, KQ_T * xrow);
            for (int t = 0; t < nt; t++) memcpy(xl + t * xrow, xg + t * xstride, xrow);
            xg = xl, xs = xrow;
        }
        kq_prep(nsb, xg, xs, sub16, mins, off, pre);
        for (int64_t r0 = 0; r0 < rows; r0 += 16) {
            const int R = rows - r0 < 16 ? (int)(rows - r0) : 16;
            memset(acc, 0, sizeof(acc));
            kq_group(sub16, mins, nvec, nsb, (const uint8_t *)pw + r0 * rowb, R, xg, xs, pre, acc);
            const __mmask16 m = (__mmask16)((1u << R) - 1);
            for (int t = 0; t < nt; t++) {
                float *yt = y + (t0 + t) * ystride + r0;
                const __m512 v = _mm512_loadu_ps(acc + 16 * t);
                _mm512_mask_storeu_ps(yt, m, accumulate ? _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, yt)) : v);
            }
        }
    }
}

/* sub-blocks of 16 with offsets (Q3_K: 4, Q6_K: 32), of 16 with minimums (Q2_K), of 32 with
 * minimums (Q4_K, Q5_K), of 32 with IQ4_XS's offset 128 */
#define KQ_GEMM(NAME, SUB16, MINS, OFF, NVEC)                                                     \
    static void NAME(int64_t n, const void *pw, int64_t rows, const void *x, size_t xstride, int64_t ntok, float *y, \
                     int64_t ystride, int accumulate) {                                            \
        kq_gemm(n, pw, rows, x, xstride, ntok, y, ystride, accumulate, SUB16, MINS, OFF, NVEC);    \
    }
KQ_GEMM(kq_gemm_q3k, 1, 0, 4, 16)
KQ_GEMM(kq_gemm_q6k, 1, 0, 32, 16)
KQ_GEMM(kq_gemm_min16, 1, 1, 0, 32)
KQ_GEMM(kq_gemm_min32, 0, 1, 0, 16)
KQ_GEMM(kq_gemm_lv32, 0, 0, 128, 8)

/* from 12 tokens on (with fewer, the 16 lanes are too empty to beat the four-row kernels) */
#define KQ_TILES(T, BYTES, GEMM) [CLEX_TYPE_##T] = {BYTES, clex_avx512vnni_kpack_##T, GEMM, KQ_MAX_N, 12}

/* from 6 tokens on (measured against the four-row kernels) */
#define S32_TILES(T) [CLEX_TYPE_##T] = {s32_bytes, pack_##T, s32_gemm, S32_MAX_N, 6}

const clex_tile_set clex_avx512vnni_tiles = {{
    S32_TILES(Q8_0), S32_TILES(Q4_0), S32_TILES(Q5_0), S32_TILES(IQ4_NL),
    [CLEX_TYPE_Q4_1] = {u32_bytes, pack_Q4_1, u32_gemm, S32_MAX_N, 6},
    [CLEX_TYPE_Q5_1] = {u32_bytes, pack_Q5_1, u32_gemm, S32_MAX_N, 6},
    KQ_TILES(Q2_K, kq_bytes32, kq_gemm_min16), KQ_TILES(Q4_K, kq_bytes16, kq_gemm_min32),
    KQ_TILES(Q5_K, kq_bytes16, kq_gemm_min32), KQ_TILES(Q3_K, kq_bytes16, kq_gemm_q3k),
    KQ_TILES(Q6_K, kq_bytes16, kq_gemm_q6k), KQ_TILES(IQ4_XS, kq_bytes8, kq_gemm_lv32),
}};

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
