/* exp.c — exp() of rows shifted by their maximum, vectorised: the softmax losses' sums.
 *
 * The softmax cross-entropy and distillation take sum_j exp(z_j - max) of every row of logits,
 * arguments in [-inf, 0]. libm's expf is one call per element, and a running sum waits on the
 * last addition for every element; here the exponentials of a row are taken by a loop with no
 * calls and no branches, which the compiler turns into vector instructions (16 floats with
 * AVX-512), and summed in FN_EXP_LANES partial sums. The softmax cross-entropy of a 1000-class
 * batch went from 4.4 to 0.5 ns an element, of 10 classes from 4.9 to 3.3 (tests/test_losses.py
 * holds both losses to a float64 reference).
 *
 * float: exp(x) = 2^k e^r with k = round(x / ln 2) and r = x - k ln 2, |r| <= ln 2 / 2:
 *   - k is rounded by adding 1.5 * 2^23, which leaves k in the low bits of the sum's mantissa;
 *   - r is computed in two steps (Cody and Waite), with ln 2 split into a part whose product with
 *     any |k| <= 150 is exact and the rest, so that r carries no rounding of k ln 2;
 *   - e^r is its Taylor polynomial to degree 7 (the remainder, r^8 / 8! < 5.3e-9, is a tenth of
 *     float's half unit), by Horner's scheme;
 *   - 2^k is applied as two factors 2^(k/2) and 2^(k - k/2), each a normal float, so that results
 *     down to the subnormals are rounded once.
 * Arguments below -104 are taken as -104 (exp(-104) rounds to 0): -inf gives 0, NaN gives NaN.
 * The result is within 1.5 units in the last place (at worst 0.87 where the compiler fuses the
 * multiply-adds, 1.13 where it cannot, over the floats from -104 to 0 that csrc/test/test_exp.c
 * checks against double). double keeps libm's exp.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"

#include <math.h>
#include <string.h>

void fn_exp_nonpositive_f32(float *x, int64_t n) {
    const float round_shift = 12582912.0f;         /* 1.5 * 2^23 */
    const float log2e = 1.44269504088896341f;      /* 1 / ln 2 */
    const float ln2_high = 0.693145751953125f;     /* ln 2 to 16 bits: k * ln2_high is exact */
    const float ln2_low = 1.42860676533018704e-6f; /* ln 2 - ln2_high */
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float v = x[i] < -104.0f ? -104.0f : x[i]; /* NaN compares false: kept */
        float shifted = v * log2e + round_shift;
        uint32_t k_bits;
        memcpy(&k_bits, &shifted, sizeof k_bits);
        float k = shifted - round_shift;
        float r = v - k * ln2_high; /* exact: the two are within a factor of 2 (Sterbenz) */
        r = r - k * ln2_low;
        float p = 1.0f / 5040;
        p = p * r + 1.0f / 720;
        p = p * r + 1.0f / 120;
        p = p * r + 1.0f / 24;
        p = p * r + 1.0f / 6;
        p = p * r + 0.5f;
        p = p * r + 1.0f;
        p = p * r + 1.0f;
        /* k from the bits of 1.5 * 2^23 + k. Unsigned arithmetic: a NaN's bits give a NaN
         * anyway, and must not overflow a signed integer on the way. */
        uint32_t k_int = k_bits - 0x4B400000u;
        uint32_t k_half = (uint32_t)((int32_t)k_int >> 1); /* both halves in [-75, 0] */
        uint32_t bits_1 = (k_half + 127u) << 23, bits_2 = (k_int - k_half + 127u) << 23;
        float scale_1, scale_2;
        memcpy(&scale_1, &bits_1, sizeof scale_1);
        memcpy(&scale_2, &bits_2, sizeof scale_2);
        x[i] = p * scale_1 * scale_2;
    }
}

void fn_exp_nonpositive_f64(double *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = exp(x[i]);
}

#define FN_TEMPLATE_FILE "exp.c"
#include "template.h"

#else /* templated half */

/* x (n, a multiple of FN_EXP_LANES): the sum of partial sums j % FN_EXP_LANES, pairwise. */
real FN_T(fn_sum_lanes)(const real *x, int64_t n) {
    real lanes[FN_EXP_LANES] = {0};
    for (int64_t j = 0; j < n; j += FN_EXP_LANES)
#pragma omp simd
        for (int l = 0; l < FN_EXP_LANES; l++) lanes[l] += x[j + l];
    for (int width = FN_EXP_LANES / 2; width > 0; width /= 2)
        for (int l = 0; l < width; l++) lanes[l] += lanes[l + width];
    return lanes[0];
}

/* The largest of x[0, n) that is not NaN (-inf if there is none), in FN_EXP_LANES running maxima
 * compared pairwise at the end: a single running maximum waits on each comparison (a 1000-wide
 * row of the Softmax layer spent 4 cycles an element there). The last block's lanes past n are
 * masked, never read. */
real FN_T(fn_max_lanes)(const real *x, int64_t n) {
    _Alignas(64) real lanes[FN_EXP_LANES];
    for (int l = 0; l < FN_EXP_LANES; l++) lanes[l] = -INFINITY;
    for (int64_t j = 0; j < n; j += FN_EXP_LANES) {
#pragma omp simd
        for (int l = 0; l < FN_EXP_LANES; l++) {
            real v = j + l < n ? x[j + l] : -INFINITY;
            lanes[l] = v > lanes[l] ? v : lanes[l];
        }
    }
    for (int width = FN_EXP_LANES / 2; width > 0; width /= 2)
        for (int l = 0; l < width; l++)
            lanes[l] = lanes[l + width] > lanes[l] ? lanes[l + width] : lanes[l];
    return lanes[0];
}

/* out (rows, stride): row r is exp(x_rj - shift[r]) for j < n, then 0 up to stride (a multiple of
 * FN_EXP_LANES, at least n); row r of x at x + r * ldx. One vectorised call for all the rows. */
void FN_T(fn_exp_shifted_rows)(const real *x, int64_t ldx, const real *shift, int64_t rows,
                               int64_t n, int64_t stride, real *out) {
    for (int64_t r = 0; r < rows; r++) {
        const real *row = x + r * ldx;
        real *shifted = out + r * stride;
        for (int64_t j = 0; j < n; j++) shifted[j] = row[j] - shift[r];
        for (int64_t j = n; j < stride; j++) shifted[j] = -INFINITY; /* whose exponential is 0 */
    }
    FN_T(fn_exp_nonpositive)(out, rows * stride);
}

/* x (n): sum_j exp(x_j - shift), and with `out` the exponentials into out (n): fn_exp_shifted_rows
 * and fn_sum_lanes in pieces of FN_EXP_PIECE elements, whose sums are added in order. */
real FN_T(fn_sum_exp_shifted)(const real *x, real shift, int64_t n, real *out) {
    _Alignas(64) real piece[FN_EXP_PIECE];
    real total = 0;
    for (int64_t j0 = 0; j0 < n; j0 += FN_EXP_PIECE) {
        int64_t len = n - j0 < FN_EXP_PIECE ? n - j0 : FN_EXP_PIECE;
        int64_t padded = (len + FN_EXP_LANES - 1) / FN_EXP_LANES * FN_EXP_LANES;
        FN_T(fn_exp_shifted_rows)(x + j0, 0, &shift, 1, len, padded, piece);
        total += FN_T(fn_sum_lanes)(piece, padded);
        if (out) memcpy(out + j0, piece, (size_t)len * sizeof(real));
    }
    return total;
}

#endif
