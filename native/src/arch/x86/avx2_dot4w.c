/* AVX2 four-weight-row kernels (internal.h's vec_dot4w): see avx512_dot4w.c. */
#if defined(__x86_64__) || defined(__i386__)

#include "../../internal.h"

static const clex_kernels avx2_dot4w;

const clex_kernels *clex_kernels_avx2_dot4w(void) { return &avx2_dot4w; }

#endif
