/* Kernel micro-benchmark: one matrix-vector product over a matrix of a given size, per type and
 * ISA, reporting GB/s of weights streamed; then the same matrix against a batch of 64 tokens
 * (prefill: the four-row kernels), as ns per weight block per token.
 * Build: make kbench; run: build/kbench [MiB]. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../native/include/clexrt.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The yardstick for the GB/s above: one thread summing the same bytes as 64-bit words. */
static void stream_read(const unsigned char *p, size_t n) {
    const uint64_t *q = (const uint64_t *)p;
    volatile uint64_t sink = 0;
    double best = 1e9, start = now();
    while (now() - start < 0.5) {
        const double t0 = now();
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (size_t i = 0; i + 4 <= n / 8; i += 4) a += q[i], b += q[i + 1], c += q[i + 2], d += q[i + 3];
        sink += a + b + c + d;
        const double dt = now() - t0;
        if (dt < best) best = dt;
    }
    printf("plain read, 1 thread   %7.1f MiB  %8.3f ms  %6.2f GB/s\n", n / 1048576.0, best * 1e3, n / best / 1e9);
}

int main(int argc, char **argv) {
    const double mib = argc > 1 ? atof(argv[1]) : 64;
    const int types[] = {CLEX_TYPE_Q4_1, CLEX_TYPE_Q8_0, CLEX_TYPE_Q4_0, CLEX_TYPE_F16};
    const int64_t K = 576;
    enum { T = 64 };
    float *x = malloc(K * T * 4), *row = malloc(K * 4);
    for (int i = 0; i < K * T; i++) x[i] = (float)rand() / RAND_MAX - 0.5f;
    for (int i = 0; i < K; i++) row[i] = (float)rand() / RAND_MAX - 0.5f;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int t = types[ti];
        const int64_t rb = K / clex_type_block_size(t) * clex_type_block_bytes(t);
        const int64_t N = (int64_t)(mib * 1048576 / rb);
        unsigned char *w = malloc(N * rb);
        for (int64_t r = 0; r < N; r++) clex_quantize_row(t, row, w + r * rb, K);
        clex_tensor ct = {t, 2, {K, N, 1, 1}, w, (uint64_t)(N * rb), "w"};
        float *y = malloc(N * 4 * T);
        for (int isa = 0; isa <= 3; isa++) {
            if (!clex_isa_supported(isa)) continue;
            clex_set_isa(isa);
            clex_matmul(&ct, x, 1, y, 1);
            /* the fastest of many runs: the machine is shared and noisy */
            double s = 1e9, start = now();
            while (now() - start < 0.5) {
                const double t0 = now();
                clex_matmul(&ct, x, 1, y, 1);
                const double dt = now() - t0;
                if (dt < s) s = dt;
            }
            double sb = 1e9;
            start = now();
            while (now() - start < 0.5) {
                const double t0 = now();
                clex_matmul(&ct, x, T, y, 1);
                const double dt = now() - t0;
                if (dt < sb) sb = dt;
            }
            printf("%-5s %-7s %7.1f MiB  %8.3f ms  %6.2f GB/s  %5.2f ns/block  batch of %d: %5.2f ns/block/token\n",
                   clex_type_name(t), clex_isa_name(isa), N * rb / 1048576.0, s * 1e3, N * rb / s / 1e9,
                   s * 1e9 / (N * K / 32.0), T, sb * 1e9 / (N * K / 32.0) / T);
        }
        if (ti == 0) stream_read(w, (size_t)(N * rb));
        free(w);
        free(y);
    }
    return 0;
}
