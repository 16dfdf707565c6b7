/* The two activation quantizers of an arch file, around its block kernel: the including file
 * defines, before including this,
 *     static inline float quant_block(const float *x, int8_t *qs, int *sum);
 *         32 floats -> 32 int8 codes with clex_quantize_q8_0_ref's arithmetic; returns the
 *         scale d, and *sum = the sum of the codes when sum != NULL;
 *     static inline clex_fp16 scale_to_half(float d);    (round to nearest even)
 * and gets quant_q8_0 and quant_q8_1, bit-exact with clex_quantize_q8_0_ref / _q8_1_ref. */

static void quant_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) y[i].d = scale_to_half(quant_block(x + i * QK, y[i].qs, NULL));
}

static void quant_q8_1(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) {
        int sum;
        const float d = quant_block(x + i * QK, y[i].qs, &sum);
        y[i].d = d;
        y[i].s = d * (float)sum;
    }
}
