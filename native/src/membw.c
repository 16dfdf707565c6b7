/* The machine's read bandwidth, the yardstick for decoding (clexrt bench): n threads each read
 * their share of one buffer several times the last-level cache, as a plain sum of 64-bit
 * words; the best of several passes. Nothing here is used by the forward pass. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define BW_MAX_THREADS 64

typedef struct {
    const uint64_t *p;
    size_t n;
    atomic_int *go;
    uint64_t sum;
} bw_part;

static volatile uint64_t bw_sink;   /* the sums land here, so the reads are not optimised away */

static void *bw_read(void *arg) {
    bw_part *b = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    while (!atomic_load_explicit(b->go, memory_order_acquire)) {
    }
    for (size_t i = 0; i + 4 <= b->n; i += 4) {
        s0 += b->p[i];
        s1 += b->p[i + 1];
        s2 += b->p[i + 2];
        s3 += b->p[i + 3];
    }
    b->sum = s0 ^ s1 ^ s2 ^ s3;
    return NULL;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* One pass of n readers (the caller's thread among them), each over its share of buf: the bytes
 * per second read, or 0 where a thread could not be started */
static double bw_pass(const uint64_t *buf, size_t words, int n) {
    pthread_t tid[BW_MAX_THREADS];
    bw_part part[BW_MAX_THREADS];
    atomic_int go = 0;
    const size_t share = words / (size_t)n / 4 * 4;
    int made = 1;
    for (int i = 0; i < n; i++) part[i] = (bw_part){buf + (size_t)i * share, share, &go, 0};
    while (made < n && pthread_create(&tid[made], NULL, bw_read, &part[made]) == 0) made++;
    const double t0 = now_s();
    atomic_store_explicit(&go, 1, memory_order_release);
    bw_read(&part[0]);
    for (int i = 1; i < made; i++) pthread_join(tid[i], NULL);
    const double dt = now_s() - t0;
    for (int i = 0; i < made; i++) bw_sink ^= part[i].sum;
    return made == n && dt > 0 ? (double)(share * 8 * (size_t)n) / dt : 0.0;
}

/* 4 x the last-level cache (as sysconf reports it; 32 MiB if it does not), within 256 MiB..2 GiB */
static int64_t default_bytes(void) {
    long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (llc <= 0) llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
    int64_t b = 4 * (int64_t)(llc > 0 ? llc : 32L << 20);
    if (b < (256LL << 20)) b = 256LL << 20;
    return b > (2LL << 30) ? 2LL << 30 : b;
}

int clex_read_bandwidth(int64_t bytes, int32_t n_threads, int32_t passes, double *gb_per_s) {
    if (bytes <= 0) bytes = default_bytes();
    if (!gb_per_s || bytes < (1 << 20) || n_threads < 1 || n_threads > BW_MAX_THREADS || passes < 1)
        return clex_fail(CLEX_E_INVALID, "clex_read_bandwidth: bad arguments (%lld bytes, %d threads, %d passes)",
                         (long long)bytes, (int)n_threads, (int)passes);
    void *mem = NULL;
    if (posix_memalign(&mem, 4096, (size_t)bytes))
        return clex_fail(CLEX_E_NOMEM, "clex_read_bandwidth: cannot allocate %lld bytes", (long long)bytes);
    memset(mem, 1, (size_t)bytes);   /* every page resident before the passes */
    double best = 0.0;
    for (int r = 0; r < passes; r++) {
        const double bps = bw_pass(mem, (size_t)bytes / 8, n_threads);
        if (bps > best) best = bps;
    }
    free(mem);
    *gb_per_s = best / 1e9;
    return best > 0 ? CLEX_OK : clex_fail(CLEX_E_INTERNAL, "clex_read_bandwidth: no thread could be started");
}
