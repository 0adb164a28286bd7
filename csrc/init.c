/* init.c — parameter initialisation from the counter-based RNG.
 *
 * Element i of a parameter gets the i-th value of its own stream, so initial weights do not depend
 * on the thread count or on which other parameters exist.
 */
#include "model.h"

#include <string.h>

uint64_t fn_param_stream(const fn_node *node, int p) {
    /* FNV-1a over "<node>.<param>" */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const char *s = node->name; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
    h = (h ^ '.') * 0x100000001b3ULL;
    for (const char *s = node->param_decl[p].name; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
    return h;
}

void fn_fill_uniform(fn_dtype dtype, void *dst, int64_t count, double low, double high,
                     uint64_t seed, uint64_t stream) {
    double width = high - low;
    if (dtype == FN_FLOAT64) {
        double *d = dst;
        for (int64_t i = 0; i < count; i++)
            d[i] = low + width * fn_rng_uniform(seed, stream, (uint64_t)i);
    } else {
        float *f = dst;
        for (int64_t i = 0; i < count; i++)
            f[i] = (float)(low + width * fn_rng_uniform(seed, stream, (uint64_t)i));
    }
}

void fn_fill_constant(fn_dtype dtype, void *dst, int64_t count, double value) {
    if (dtype == FN_FLOAT64) {
        double *d = dst;
        for (int64_t i = 0; i < count; i++) d[i] = value;
    } else {
        float *f = dst;
        for (int64_t i = 0; i < count; i++) f[i] = (float)value;
    }
}
