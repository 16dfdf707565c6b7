/* Kernel micro-benchmark: one matrix-vector product over a matrix of a given size, per type and
 * ISA, reporting GB/s of weights streamed and ns per weight block (the type's own block: 32
 * values, or 256 for the K-quants and IQ4_XS); then the same matrix (at most 4 MiB of it) against
 * batches of 4 tokens (the four-row kernels) and of 64 (prefill: the tile kernels, where the type
 * and ISA have them), as ns per weight block per token; under each, decoding's row kernels alone
 * over the whole matrix, one row per call against four rows per call (vec_dot4w), neighbours and
 * then rows a quarter of the matrix apart, in GB/s; then the activation quantizers, ns per 256
 * values. After the first type, a plain read of its bytes as the yardstick, whole and as its
 * rows read 1, 2 and 4 side by side.
 * Rows are 576 values (SmolLM2's width) for the 32-value types, 1536 (its FFN width, a multiple
 * of 256) for the super-block types, or k=N values (a 1B model's 2048, 5632: from memory, AMD's
 * prefetchers lose the four-row kernel's four streams once rows pass ~700 bytes, which is why
 * decoding there takes longer rows one at a time). Each figure is the fastest of the runs in
 * half a second.
 * Build: make kbench; run: build/kbench [MiB] [TYPE ...] [k=N] (e.g. build/kbench 8 Q4_K Q6_K k=2048). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../native/include/clexrt.h"
#include "../native/src/internal.h"   /* clex_k: the row kernels themselves */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* the n bytes at p (whole 32-byte pieces) summed as 64-bit words, four sums at a time */
static inline uint64_t sum_words(const unsigned char *p, size_t n) {
    const uint64_t *q = (const uint64_t *)p;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= n / 8; i += 4) a += q[i], b += q[i + 1], c += q[i + 2], d += q[i + 3];
    return a + b + c + d;
}

/* The yardstick for the GB/s above: one thread summing the same bytes as 64-bit words. */
static void stream_read(const unsigned char *p, size_t n) {
    volatile uint64_t sink = 0;
    double best = 1e9, start = now();
    while (now() - start < 0.5) {
        const double t0 = now();
        sink += sum_words(p, n);
        const double dt = now() - t0;
        if (dt < best) best = dt;
    }
    printf("plain read, 1 thread   %7.1f MiB  %8.3f ms  %6.2f GB/s\n", n / 1048576.0, best * 1e3, n / best / 1e9);
}

/* The same bytes read as rows of rb bytes, S rows side by side (256 bytes of each in turn), the
 * way a kernel taking S rows a call reads them: what the CPU's prefetching makes of S streams. */
static void side_by_side_read(const unsigned char *p, size_t n, size_t rb) {
    printf("plain read, rows of %zu bytes side by side:", rb);
    for (int S = 1; S <= 4; S *= 2) {
        const size_t group = S * rb, m = n / group * group;
        volatile uint64_t sink = 0;
        double best = 1e9, start = now();
        while (now() - start < 0.5) {
            const double t0 = now();
            uint64_t sum = 0;
            for (size_t g = 0; g < m; g += group)
                for (size_t off = 0; off < rb; off += 256)
                    for (int r = 0; r < S; r++) sum += sum_words(p + g + r * rb + off, rb - off < 256 ? rb - off : 256);
            sink += sum;
            const double dt = now() - t0;
            if (dt < best) best = dt;
        }
        printf("  %d: %6.2f GB/s", S, m / best / 1e9);
    }
    printf("\n");
}

/* the fastest of the products of W with T tokens run in half a second */
static double best_matmul(const clex_tensor *ct, const float *x, int64_t T, float *y) {
    clex_matmul(ct, x, T, y, 1);
    double best = 1e9, start = now();
    while (now() - start < 0.5) {
        const double t0 = now();
        clex_matmul(ct, x, T, y, 1);
        const double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

enum { T = 64 };

/* Decoding's row kernels alone, one thread: every row of w against one activation row, one
 * row per call (vec_dot) and four per call (vec_dot4w, where the ISA has one for the type), as
 * GB/s of weights; the fastest pass of those in half a second. Both from the same rows. */
static void bench_rows(int t, const unsigned char *w, int64_t N, int64_t K, int64_t rb, const float *x) {
    const int at = clex_type_vec_dot_type(t);
    unsigned char *xq = malloc(K * 4 + 64);
    if (at) clex_quantize_act(at, x, xq, K);
    else memcpy(xq, x, K * 4);
    const clex_vec_dot_fn dot = clex_k.vec_dot[t];
    const clex_vec_dot4w_fn dot4w = clex_k.vec_dot4w[t];
    volatile float sink = 0;
    double best[3] = {1e9, 1e9, 1e9};
    const int64_t q = N / 4;   /* v == 2: rows r, r + q, r + 2q, r + 3q a call (four far-apart streams) */
    for (int v = 0; v < (dot4w ? 3 : 1); v++) {
        const double start = now();
        while (now() - start < 0.5) {
            const double t0 = now();
            float acc = 0, s4[4];
            int64_t r = 0;
            if (v == 1)
                for (; r + 4 <= N; r += 4) {
                    dot4w(K, s4, w + r * rb, (size_t)rb, xq);
                    acc += s4[0] + s4[3];
                }
            if (v == 2) {
                for (; r < q; r++) {
                    dot4w(K, s4, w + r * rb, (size_t)(q * rb), xq);
                    acc += s4[0] + s4[3];
                }
                r = 4 * q;
            }
            for (; r < N; r++) {
                dot(K, s4, w + r * rb, xq);
                acc += s4[0];
            }
            sink += acc;
            const double dt = now() - t0;
            if (dt < best[v]) best[v] = dt;
        }
    }
    printf("       rows: one-row %6.2f GB/s", N * rb / best[0] / 1e9);
    if (dot4w) printf("   four-row (vec_dot4w) %6.2f GB/s  x%.2f   four rows from the matrix's quarters %6.2f GB/s",
                      N * rb / best[1] / 1e9, best[0] / best[1], N * rb / best[2] / 1e9);
    else printf("   four-row: none");
    printf("\n");
    free(xq);
}

static void bench_type(int t, double mib, const float *x, const float *row, int yardstick, int64_t k) {
    const int64_t blck = clex_type_block_size(t), K = k ? k : blck == 256 ? 1536 : 576;
    if (K % blck) {
        printf("%-6s k=%lld is not a multiple of its %lld-value blocks: skipped\n", clex_type_name(t), (long long)K,
               (long long)blck);
        return;
    }
    const int64_t rb = K / blck * clex_type_block_bytes(t);
    const int64_t N = (int64_t)(mib * 1048576 / rb);
    unsigned char *w = malloc(N * rb);
    float *y = malloc(N * 4 * T);
    for (int64_t r = 0; r < N; r++) clex_quantize_row(t, row, w + r * rb, K);
    clex_tensor ct = {t, 2, {K, N, 1, 1}, w, (uint64_t)(N * rb), "w"};
    /* the batch over at most 4 MiB of the rows (the scalar K-quants would take minutes) */
    const int64_t Nb = N < (4 << 20) / rb ? N : (4 << 20) / rb;
    clex_tensor cb = {t, 2, {K, Nb, 1, 1}, w, (uint64_t)(Nb * rb), "w"};
    const double blocks = (double)N * K / blck, bblocks = (double)Nb * K / blck;
    for (int isa = 0; isa <= 3; isa++) {
        if (!clex_isa_supported(isa)) continue;
        clex_set_isa(isa);
        const double s = best_matmul(&ct, x, 1, y), s4 = best_matmul(&cb, x, 4, y), sb = best_matmul(&cb, x, T, y);
        printf("%-6s %-7s %7.1f MiB  %8.3f ms  %6.2f GB/s  %6.2f ns/block  ns/block/token, batch of 4: %6.2f, "
               "of %d: %6.2f\n", clex_type_name(t), clex_isa_name(isa), N * rb / 1048576.0, s * 1e3, N * rb / s / 1e9,
               s * 1e9 / blocks, s4 * 1e9 / bblocks / 4, T, sb * 1e9 / bblocks / T);
        bench_rows(t, w, N, K, rb, row);
    }
    if (yardstick) {
        stream_read(w, (size_t)(N * rb));
        side_by_side_read(w, (size_t)(N * rb), (size_t)rb);
    }
    free(w);
    free(y);
}

/* the activation quantizers (what each token's row costs before the products) */
static void bench_act(const float *x) {
    static const int acts[] = {CLEX_TYPE_Q8_0, CLEX_TYPE_Q8_1, CLEX_TYPE_Q8_K};
    const int64_t n = 1536 * T;
    unsigned char *buf = malloc(n / 32 * 40);
    for (size_t a = 0; a < sizeof acts / sizeof acts[0]; a++) {
        for (int isa = 0; isa <= 3; isa++) {
            if (!clex_isa_supported(isa)) continue;
            clex_set_isa(isa);
            double best = 1e9, start = now();
            while (now() - start < 0.25) {
                const double t0 = now();
                clex_quantize_act(acts[a], x, buf, n);
                const double dt = now() - t0;
                if (dt < best) best = dt;
            }
            printf("act %-5s %-7s %6.1f ns per 256 values\n", clex_type_name(acts[a]), clex_isa_name(isa),
                   best * 1e9 / (n / 256.0));
        }
    }
    free(buf);
}

int main(int argc, char **argv) {
    const double mib = argc > 1 ? atof(argv[1]) : 64;
    static const int all[] = {CLEX_TYPE_Q4_1, CLEX_TYPE_Q8_0, CLEX_TYPE_Q4_0, CLEX_TYPE_F16, CLEX_TYPE_Q4_K,
                              CLEX_TYPE_Q6_K, CLEX_TYPE_Q5_0, CLEX_TYPE_Q5_K, CLEX_TYPE_Q3_K, CLEX_TYPE_Q2_K,
                              CLEX_TYPE_IQ4_XS, CLEX_TYPE_IQ4_NL, CLEX_TYPE_Q5_1};
    if (argc > 1 && !(mib > 0)) {
        fprintf(stderr, "kbench: MiB must be a positive number, not %s\n", argv[1]);
        return 2;
    }
    /* the arguments after MiB: type names and k=N; anything else is an error */
    int64_t k = 0, ntypes = 0;
    for (int a = 2; a < argc; a++) {
        if (strncmp(argv[a], "k=", 2) == 0) {
            k = atoll(argv[a] + 2);
            if (k < 256 || k > (1 << 20)) {
                fprintf(stderr, "kbench: k=N takes a row length of 256 to 1048576 values, not %s\n", argv[a] + 2);
                return 2;
            }
            continue;
        }
        int known = 0;
        for (size_t ti = 0; ti < sizeof all / sizeof all[0]; ti++) known |= strcmp(argv[a], clex_type_name(all[ti])) == 0;
        if (!known) {
            fprintf(stderr, "kbench: unknown type %s\n", argv[a]);
            return 2;
        }
        ntypes++;
    }
    const int64_t K = k > 1536 ? k : 1536;
    float *x = malloc(K * T * 4), *row = malloc(K * 4);
    for (int i = 0; i < K * T; i++) x[i] = (float)rand() / RAND_MAX - 0.5f;
    for (int i = 0; i < K; i++) row[i] = (float)rand() / RAND_MAX - 0.5f;
    int first = 1;
    for (size_t ti = 0; ti < sizeof all / sizeof all[0]; ti++) {
        int want = ntypes == 0;
        for (int a = 2; a < argc; a++) want |= strcmp(argv[a], clex_type_name(all[ti])) == 0;
        if (!want) continue;
        bench_type(all[ti], mib, x, row, first, k);
        first = 0;
    }
    if (ntypes == 0 && !k) bench_act(x);
    free(x);
    free(row);
    return 0;
}
