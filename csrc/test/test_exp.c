/* test_exp.c — checks exp.c: fn_exp_nonpositive_f32 against exp() in double, and the shifted
 * sums of both dtypes against a plain sum in long double.
 *
 * Prints one line per failure and finally "N passed, M failed"; exits nonzero on failure.
 */
#include "kernels.h"
#include "test/check.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static float float_from_bits(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* |got - exact| in units of the last place of a float at `exact` (subnormals: of 2^-149). */
static double ulps(float got, double exact) {
    double ulp = exact < FLT_MIN ? ldexp(1.0, -149) : ldexp(1.0, ilogb(exact) - 23);
    return fabs((double)got - exact) / ulp;
}

/* Every float in [-104, 0] that a stride of 997 bit patterns reaches: normal results, subnormal
 * ones and those that round to 0, within 1.5 units in the last place (at worst 0.87 with fused
 * multiply-adds, 1.13 without). */
static void test_accuracy(void) {
    enum { BATCH = 4096 };
    static float x[BATCH], y[BATCH];
    const uint32_t last = 0xC2D00000u; /* -104.0f */
    double worst = 0;
    float worst_at = 0;
    uint32_t bits = 0x80000000u; /* -0.0f */
    while (bits <= last) {
        int count = 0;
        for (; count < BATCH && bits <= last; count++, bits += 997)
            x[count] = float_from_bits(bits);
        memcpy(y, x, sizeof(float) * (size_t)count);
        fn_exp_nonpositive_f32(y, count);
        for (int i = 0; i < count; i++) {
            double error = ulps(y[i], exp((double)x[i]));
            if (error > worst) worst = error, worst_at = x[i];
        }
    }
    if (!CHECK(worst <= 1.5)) printf("    worst: %.3f ulp at %.9g\n", worst, (double)worst_at);
}

static void test_special_values(void) {
    float x[] = {0.0f, -0.0f, -INFINITY, NAN, -104.0f, -104.5f, -1e30f, -FLT_MIN, -1.0f};
    float y[sizeof x / sizeof x[0]];
    memcpy(y, x, sizeof x);
    fn_exp_nonpositive_f32(y, (int64_t)(sizeof x / sizeof x[0]));
    CHECK(y[0] == 1.0f && y[1] == 1.0f);
    CHECK(y[2] == 0.0f && !signbit(y[2]));
    CHECK(isnan(y[3]));
    CHECK(y[4] == 0.0f && y[5] == 0.0f && y[6] == 0.0f);
    CHECK(y[7] == 1.0f);
    CHECK(ulps(y[8], exp(-1.0)) <= 1.0);
}

/* An element's result does not depend on where it stands: vector body, remainder, any length. */
static void test_position_does_not_matter(void) {
    float alone[64], x[64];
    uint64_t state = 12345;
    for (int i = 0; i < 64; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        alone[i] = -(float)(state >> 40) / (float)(1 << 20); /* in [-16, 0] */
    }
    for (int n = 1; n <= 64; n++) {
        for (int offset = 0; offset + n <= 64; offset += 7) {
            memcpy(x, alone + offset, sizeof(float) * (size_t)n);
            fn_exp_nonpositive_f32(x, n);
            bool same = true;
            for (int i = 0; i < n; i++) {
                float one = alone[offset + i];
                fn_exp_nonpositive_f32(&one, 1);
                same = same && memcmp(&one, &x[i], sizeof one) == 0;
            }
            if (!CHECK(same)) printf("    n %d, offset %d\n", n, offset);
        }
    }
}

/* sum_j exp(x_j - max) against long double, rows short, padded, and in several pieces; the
 * exponentials written out are those summed. */
static void test_shifted_sums(void) {
    const int64_t lengths[] = {1, 5, 16, 17, 1000, FN_EXP_PIECE, FN_EXP_PIECE + 1, 2500};
    for (size_t t = 0; t < sizeof lengths / sizeof lengths[0]; t++) {
        int64_t n = lengths[t];
        float *xf = malloc(sizeof(float) * (size_t)n), *of = malloc(sizeof(float) * (size_t)n);
        double *xd = malloc(sizeof(double) * (size_t)n), *od = malloc(sizeof(double) * (size_t)n);
        float max = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            xf[j] = (float)sin((double)j * 0.37) * 12.0f;
            xd[j] = xf[j];
            max = xf[j] > max ? xf[j] : max;
        }
        long double exact = 0;
        for (int64_t j = 0; j < n; j++) exact += expl((long double)xd[j] - max);
        float sum_f = fn_sum_exp_shifted_f32(xf, max, n, of);
        double sum_d = fn_sum_exp_shifted_f64(xd, max, n, od);
        CHECK(fabsl(sum_f - exact) <= 4 * FLT_EPSILON * exact);
        CHECK(fabsl(sum_d - exact) <= 4 * DBL_EPSILON * exact);
        CHECK(fn_sum_exp_shifted_f32(xf, max, n, NULL) == sum_f);
        bool written = true;
        for (int64_t j = 0; j < n; j++)
            written = written && fabs(of[j] - exp((double)xf[j] - max)) <= 2 * FLT_EPSILON &&
                      fabs(od[j] - exp(xd[j] - max)) <= 2 * DBL_EPSILON;
        if (!CHECK(written)) printf("    n %lld\n", (long long)n);
        free(xf), free(of), free(xd), free(od);
    }
}

int main(void) {
    test_accuracy();
    test_special_values();
    test_position_does_not_matter();
    test_shifted_sums();
    return check_report();
}
