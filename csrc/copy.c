/* copy.c — the copy-or-accumulate every gradient hand-off needs (flatten, add, concat). */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"

#include <string.h>

#define FN_TEMPLATE_FILE "copy.c"
#include "template.h"

#else /* templated half */

/* dst and src are (count); dst = src, or dst += src with accumulate. */
void FN_T(fn_copy_or_add)(real *dst, const real *src, int64_t count, bool accumulate,
                          int threads) {
    if (!accumulate) {
        memcpy(dst, src, (size_t)count * sizeof(real));
        return;
    }
    int t = fn_threads_for(count, threads);
    FN_PARALLEL_LOOP(t, i, count, { dst[i] += src[i]; });
}

#endif
