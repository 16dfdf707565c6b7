/* Where an evaluation's time goes: the counters clex_ctx_profile turns on. forward.c notes the
 * time at each step's end (its barrier, or the step's last work where it has none); this file
 * holds the counters' names, the switch and the read-out. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

_Static_assert(PROF_END + 1 == CLEX_PROF_STEPS, "CLEX_PROF_STEPS counts the profile's steps");

static const char *const STEP_NAMES[CLEX_PROF_STEPS] = {
    [PROF_START] = "start",         [PROF_EMBED] = "embed",         [PROF_ATTN_NORM] = "attn_norm",
    [PROF_QKV] = "qkv",             [PROF_ROPE] = "rope",           [PROF_ATTENTION] = "attention",
    [PROF_ATTN_OUT] = "attn_out",   [PROF_FFN_NORM] = "ffn_norm",   [PROF_GATE_UP] = "gate_up",
    [PROF_FFN_DOWN] = "ffn_down",   [PROF_MOE_ROUTE] = "moe_route", [PROF_MOE_EXPERTS] = "moe_experts",
    [PROF_PAR_ADD] = "parallel_add", [PROF_OUT_NORM] = "output_norm", [PROF_OUTPUT] = "output",
    [PROF_END] = "end",
};

uint64_t clex_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

const char *clex_profile_step_name(int32_t step) {
    return step >= 0 && step < CLEX_PROF_STEPS ? STEP_NAMES[step] : NULL;
}

static size_t prof_words(const clex_ctx *c) { return (size_t)clex_pool_size(c->pool) * CLEX_PROF_STEPS * 3; }

int clex_ctx_profile(clex_ctx *c, int32_t on) {
    if (!c) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (!on) {
        c->prof_on = 0;
        return CLEX_OK;
    }
    if (!c->prof) {
        c->prof = calloc(prof_words(c), sizeof(uint64_t));
        if (!c->prof) return clex_fail(CLEX_E_NOMEM, "out of memory for the profile's counters");
    }
    memset(c->prof, 0, prof_words(c) * sizeof(uint64_t));
    c->prof_passes = 0;
    c->prof_on = 1;
    return CLEX_OK;
}

int64_t clex_ctx_profile_read(const clex_ctx *c, uint64_t *out, int64_t n) {
    if (!c || !out) return clex_fail(CLEX_E_INVALID, "NULL argument");
    if (n < 0 || (uint64_t)n < prof_words(c))
        return clex_fail(CLEX_E_INVALID, "the profile of %d threads needs %zu counters, got room for %lld",
                         clex_pool_size(c->pool), prof_words(c), (long long)n);
    if (!c->prof) memset(out, 0, prof_words(c) * sizeof(uint64_t));
    else memcpy(out, c->prof, prof_words(c) * sizeof(uint64_t));
    return c->prof_passes;
}
