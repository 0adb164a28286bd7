/* regression_loss.c — MSE, L1 and Huber losses (mean over every element) fused with the gradient.
 *
 * With d = x - t elementwise and m the number of elements:
 *   MSE    loss = sum d^2 / m                                    grad = 2 d / m
 *   L1     loss = sum |d| / m                                    grad = sign(d) / m (0 at d = 0)
 *   Huber  loss = sum (|d| < delta ? d^2 / 2 : delta (|d| - delta / 2)) / m
 *                                                                grad = clamp(d, -delta, delta) / m
 * The elements are split into contiguous ranges, one per thread, each summed in double.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"

#define FN_TEMPLATE_FILE "regression_loss.c"
#include "template.h"

#else /* templated half */

typedef struct {
    fn_loss_kind kind;
    const real *x, *t;
    real *grad;
    real delta, inv_count;
    int64_t count;
    double loss[FN_MAX_PARTIALS];
} FN_T(regression_job);

static void FN_T(regression_part)(int id, int parts, void *arg) {
    FN_T(regression_job) *job = arg;
    const real *x = job->x, *t = job->t;
    real *g = job->grad;
    const real inv = job->inv_count, delta = job->delta;
    int64_t begin, end;
    fn_partition(job->count, parts, id, &begin, &end);
    double sum = 0;
    switch (job->kind) {
    case FN_LOSS_MSE:
        for (int64_t i = begin; i < end; i++) {
            real d = x[i] - t[i];
            sum += (double)(d * d);
            if (g) g[i] = 2 * d * inv;
        }
        break;
    case FN_LOSS_L1:
        for (int64_t i = begin; i < end; i++) {
            real d = x[i] - t[i];
            sum += (double)fabs(d);
            if (g) g[i] = (d > 0 ? inv : d < 0 ? -inv : 0);
        }
        break;
    default: /* FN_LOSS_HUBER */
        for (int64_t i = begin; i < end; i++) {
            real d = x[i] - t[i], a = fabs(d);
            sum += (double)(a < delta ? d * d / 2 : delta * (a - delta / 2));
            if (g) g[i] = (a < delta ? d : d > 0 ? delta : -delta) * inv;
        }
        break;
    }
    job->loss[id] = sum;
}

/* outputs and targets->values (n, c); grad (n, c) or NULL. Returns the mean loss of `kind` (MSE,
 * L1 or HUBER, checked by the caller). */
double FN_T(fn_regression_loss_forward_backward)(const real *outputs, const fn_targets *targets,
                                                 const fn_loss *loss, real *grad, int64_t n,
                                                 int64_t c, int threads) {
    int64_t count = n * c;
    FN_T(regression_job) job = {
        .kind = loss->kind,
        .x = outputs,
        .t = targets->values,
        .grad = grad,
        .delta = (real)loss->delta,
        .inv_count = (real)(1.0 / (double)count),
        .count = count,
    };
    int parts = fn_partial_parts(count, threads);
    fn_run_parts(parts, threads, FN_T(regression_part), &job);
    return fn_sum_partials(job.loss, parts) / (double)count;
}

#endif
