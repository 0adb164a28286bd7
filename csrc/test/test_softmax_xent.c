/* test_softmax_xent.c — checks the cross-entropy's rows of at most FN_EXP_LANES classes, which
 * softmax_xent.c takes 16 at a time, transposed, against the row path they replace written out
 * here from the same pieces (running maximum, first index of it, fn_exp_shifted_rows,
 * fn_sum_lanes, the log): the same loss, gradient and hits, bit for bit, in both dtypes, for
 * every narrow width, batches that end inside a block of 16 rows, ties, -inf and large logits.
 *
 * Prints one line per failure and finally "N passed, M failed"; exits nonzero on failure.
 */
#include "kernels.h"
#include "test/check.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static double random_uniform(void) { /* in [0, 1) */
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

/* Logits of one of the kinds a network gives, and the ones that test the edges. */
static double random_logit(int kind) {
    double u = random_uniform();
    switch (kind) {
    case 0: return (u - 0.5) * 12;                           /* spread */
    case 1: return floor(u * 3);                             /* ties */
    case 2: return u < 0.2 ? -INFINITY : (u - 0.5) * 8;      /* some classes ruled out */
    default: return u < 0.5 ? (u - 0.25) * 1e30 : u * 1e-30; /* far apart, and tiny */
    }
}

#define ROW_TEST(real, S)                                                                          \
    /* The row path: what softmax_xent_part does for one plain row of c <= FN_EXP_LANES. */        \
    static double row_reference##S(const real *row, int64_t c, int64_t label, real inv_norm,      \
                                   real *g, int64_t *hits) {                                     \
        real max = -INFINITY, buffer[FN_EXP_LANES];                                              \
        for (int64_t j = 0; j < c; j++) max = row[j] > max ? row[j] : max;                       \
        int64_t argmax = 0;                                                                      \
        while (argmax < c - 1 && row[argmax] != max) argmax++;                                   \
        *hits += argmax == label;                                                                \
        fn_exp_shifted_rows##S(row, 0, &max, 1, c, FN_EXP_LANES, buffer);                        \
        real total = fn_sum_lanes##S(buffer, FN_EXP_LANES);                                      \
        real log_total = log(total);                                                             \
        real scale = inv_norm / total;                                                           \
        for (int64_t j = 0; j < c; j++) g[j] = buffer[j] * scale;                                \
        g[label] -= inv_norm;                                                                    \
        return (double)((max - row[label]) + log_total);                                        \
    }                                                                                            \
                                                                                                 \
    static void test_narrow_rows##S(const char *dtype) {                                         \
        const int64_t batches[] = {1, 5, 16, 17, 32, 33, 70};                                    \
        for (int64_t c = 1; c <= FN_EXP_LANES; c++) {                                            \
            for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {                    \
                for (int kind = 0; kind < 4; kind++) {                                           \
                    const int64_t n = batches[b];                                                \
                    real *z = malloc(sizeof(real) * (size_t)(n * c));                            \
                    real *grad = malloc(sizeof(real) * (size_t)(n * c));                         \
                    real *expected = malloc(sizeof(real) * (size_t)(n * c));                     \
                    int64_t *labels = malloc(sizeof(int64_t) * (size_t)n);                       \
                    for (int64_t i = 0; i < n; i++) {                                            \
                        for (int64_t j = 0; j < c; j++) z[i * c + j] = (real)random_logit(kind); \
                        labels[i] = (int64_t)(random_uniform() * (double)c);                     \
                        /* a finite logit at the label: a finite loss (ties stay ties) */        \
                        if (isinf(z[i * c + labels[i]])) z[i * c + labels[i]] = 0;              \
                    }                                                                            \
                    const real inv_norm = (real)(1.0 / (double)n);                               \
                    double sum = 0;                                                              \
                    int64_t hits = 0, correct = -1;                                              \
                    for (int64_t i = 0; i < n; i++)                                              \
                        sum += row_reference##S(z + i * c, c, labels[i], inv_norm,               \
                                                expected + i * c, &hits);                        \
                    fn_targets targets = {.labels = labels, .label_type = FN_LABEL_I64};         \
                    fn_loss loss = {.kind = FN_LOSS_CROSS_ENTROPY};                              \
                    double value = fn_cross_entropy_forward_backward##S(                         \
                        z, &targets, &loss, (double)n, grad, n, c, 1, &correct);                 \
                    bool same = value == sum / (double)n && correct == hits &&                   \
                                memcmp(grad, expected, sizeof(real) * (size_t)(n * c)) == 0;     \
                    if (!CHECK(same))                                                            \
                        printf("    %s, %lld x %lld, logits of kind %d: loss %.17g against "   \
                               "%.17g, hits %lld against %lld\n",                                \
                               dtype, (long long)n, (long long)c, kind, value,                   \
                               sum / (double)n, (long long)correct, (long long)hits);            \
                    free(z), free(grad), free(expected), free(labels);                           \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }

ROW_TEST(float, _f32)
ROW_TEST(double, _f64)

int main(void) {
    test_narrow_rows_f32("float32");
    test_narrow_rows_f64("float64");
    return check_report();
}
