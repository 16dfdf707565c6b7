/* A small thread pool in the style of ggml's: one job per forward pass, run by every thread,
 * with spin barriers between its steps. Decoding one token crosses a barrier a few hundred
 * times, so barriers spin (a condition variable would cost microseconds each); idle workers
 * go to sleep on a condition variable after a short spin, so an idle model costs no CPU. */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax(void) { __asm__ __volatile__("yield"); }
#else
static inline void cpu_relax(void) {}
#endif

#define SPIN_BEFORE_SLEEP 200000   /* pause iterations a worker spins before sleeping */
#define SPIN_BEFORE_YIELD 1000     /* in a barrier: spins (~0.1 ms) before yielding the CPU to
                                     * a thread that may be descheduled on a busy machine */

struct clex_pool {
    int n;                          /* threads, including the caller (thread 0) */
    pthread_t *threads;
    clex_job_fn fn;
    void *arg;
    atomic_int job;                 /* incremented for each job */
    atomic_int busy;                /* workers still running the current job */
    atomic_int stop;
    atomic_int sleepers;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* barrier */
    atomic_int bar_count;
    atomic_int bar_phase;
};

typedef struct {
    clex_pool *p;
    int ith;
} worker_arg;

static void *worker(void *varg) {
    worker_arg *wa = varg;
    clex_pool *p = wa->p;
    const int ith = wa->ith;
    free(wa);
    int seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&p->job, memory_order_acquire) == seen &&
               !atomic_load_explicit(&p->stop, memory_order_acquire)) {
            if (++spins < SPIN_BEFORE_SLEEP) { cpu_relax(); continue; }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->job) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = atomic_load(&p->job);
        p->fn(p->arg, ith, p->n);
        atomic_fetch_sub_explicit(&p->busy, 1, memory_order_acq_rel);
    }
}

int clex_pool_create(int n_threads, clex_pool **out) {
    *out = NULL;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 512) return clex_fail(CLEX_E_INVALID, "n_threads %d is more than 512", n_threads);
    clex_pool *p = calloc(1, sizeof *p);
    if (!p) return clex_fail(CLEX_E_NOMEM, "out of memory creating the thread pool");
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) { free(p); return clex_fail(CLEX_E_NOMEM, "out of memory creating the thread pool"); }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) { wa->p = p; wa->ith = i; }
        if (!wa || pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
            free(wa);
            p->n = i;   /* join the ones that started */
            clex_pool_free(p);
            return clex_fail(CLEX_E_NOMEM, "could not start thread %d of %d", i, n_threads);
        }
    }
    *out = p;
    return CLEX_OK;
}

void clex_pool_free(clex_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}

int clex_pool_size(const clex_pool *p) { return p->n; }

void clex_pool_run(clex_pool *p, clex_job_fn fn, void *arg) {
    if (p->n == 1) { fn(arg, 0, 1); return; }
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->bar_count, 0);
    atomic_store(&p->busy, p->n - 1);
    atomic_fetch_add(&p->job, 1);   /* seq_cst: ordered before the sleepers check below */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(arg, 0, p->n);
    int spins = 0;
    while (atomic_load_explicit(&p->busy, memory_order_acquire) > 0) {
        if (++spins < SPIN_BEFORE_YIELD) cpu_relax();
        else sched_yield();
    }
}

void clex_pool_barrier(clex_pool *p) {
    if (p->n == 1) return;
    const int phase = atomic_load_explicit(&p->bar_phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == p->n - 1) {
        atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->bar_phase, 1, memory_order_release);
        return;
    }
    int spins = 0;
    while (atomic_load_explicit(&p->bar_phase, memory_order_acquire) == phase) {
        if (++spins < SPIN_BEFORE_YIELD) cpu_relax();
        else sched_yield();
    }
}
