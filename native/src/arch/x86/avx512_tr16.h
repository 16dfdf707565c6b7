/* 16 x 16 transposes of 32-bit lanes (avx512_k.c's K-quant packing, avx512_tile.c's tile stores):
 * included after INLINE and CLEX_UNROLL are defined, with AVX-512 F enabled. The float version is the
 * integer one through casts: the shuffles move bits, they do not look at them. */
/* v[r] dword l -> o[l] dword r (16 x 16: dword and qword interleaves, then 128-bit chunks) */
INLINE void tr16_epi32(const __m512i v[16], __m512i o[16]) {
    __m512i a[16], b[16];
    CLEX_UNROLL for (int i = 0; i < 8; i++) {
        a[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    CLEX_UNROLL for (int i = 0; i < 4; i++) {
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    CLEX_UNROLL for (int j = 0; j < 4; j++) {
        const __m512i c0 = _mm512_shuffle_i32x4(b[j], b[4 + j], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512i c1 = _mm512_shuffle_i32x4(b[j], b[4 + j], _MM_SHUFFLE(3, 2, 3, 2));
        const __m512i c2 = _mm512_shuffle_i32x4(b[8 + j], b[12 + j], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512i c3 = _mm512_shuffle_i32x4(b[8 + j], b[12 + j], _MM_SHUFFLE(3, 2, 3, 2));
        o[j] = _mm512_shuffle_i32x4(c0, c2, _MM_SHUFFLE(2, 0, 2, 0));
        o[4 + j] = _mm512_shuffle_i32x4(c0, c2, _MM_SHUFFLE(3, 1, 3, 1));
        o[8 + j] = _mm512_shuffle_i32x4(c1, c3, _MM_SHUFFLE(2, 0, 2, 0));
        o[12 + j] = _mm512_shuffle_i32x4(c1, c3, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* v[r] lane l -> o[l] lane r, floats */
INLINE void tr16_ps(const __m512 v[16], __m512 o[16]) {
    __m512i vi[16], oi[16];
    CLEX_UNROLL for (int r = 0; r < 16; r++) vi[r] = _mm512_castps_si512(v[r]);
    tr16_epi32(vi, oi);
    CLEX_UNROLL for (int r = 0; r < 16; r++) o[r] = _mm512_castsi512_ps(oi[r]);
}
