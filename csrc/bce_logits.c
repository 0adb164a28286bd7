/* bce_logits.c — binary cross-entropy on logits (mean over every element) fused with the gradient.
 *
 * For logit x, target t and the positive weight w of its column (1 without pos_weight):
 *
 *     loss = -[w t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))]
 *          = w t softplus(-x) + (1 - t) softplus(x)
 *     grad = -w t sigmoid(-x) + (1 - t) sigmoid(x)
 *
 * with softplus(+-x) = max(+-x, 0) + log1p(exp(-|x|)) and both sigmoids from the same exp(-|x|):
 * no exp() of a positive argument, so no overflow for any logit, and no 1 - sigmoid(x) that
 * would cancel to 0 for a large x.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"

#define FN_TEMPLATE_FILE "bce_logits.c"
#include "template.h"

#else /* templated half */

typedef struct {
    const real *x, *t;
    const double *pos_weight; /* (c) or NULL */
    real *grad;
    real inv_count;
    int64_t count, c;
    double loss[FN_MAX_PARTIALS];
} FN_T(bce_job);

static void FN_T(bce_part)(int id, int parts, void *arg) {
    FN_T(bce_job) *job = arg;
    const real *x = job->x, *t = job->t;
    real *g = job->grad;
    const real inv = job->inv_count;
    int64_t begin, end;
    fn_partition(job->count, parts, id, &begin, &end);
    double sum = 0;
    int64_t k = begin % job->c; /* the column of element i */
    for (int64_t i = begin; i < end; i++) {
        real w = job->pos_weight ? (real)job->pos_weight[k] : 1;
        if (++k == job->c) k = 0;
        real xi = x[i], ti = t[i];
        real e = exp(-fabs(xi));    /* in (0, 1] */
        real log_term = log1p(e);   /* softplus(x) = max(x, 0) + log_term */
        real softplus_pos = (xi > 0 ? xi : 0) + log_term;
        real softplus_neg = (xi < 0 ? -xi : 0) + log_term;
        sum += (double)(w * ti * softplus_neg + (1 - ti) * softplus_pos);
        if (g) {
            real inv_1pe = 1 / (1 + e);
            real sig_pos = xi >= 0 ? inv_1pe : e * inv_1pe; /* sigmoid(x) */
            real sig_neg = xi >= 0 ? e * inv_1pe : inv_1pe; /* sigmoid(-x) */
            g[i] = ((1 - ti) * sig_pos - w * ti * sig_neg) * inv;
        }
    }
    job->loss[id] = sum;
}

/* logits and targets->values (n, c); pos_weight of `loss` (c) or NULL; grad (n, c) or NULL.
 * Returns the mean loss. */
double FN_T(fn_bce_with_logits_forward_backward)(const real *logits, const fn_targets *targets,
                                                 const fn_loss *loss, real *grad, int64_t n,
                                                 int64_t c, int threads) {
    int64_t count = n * c;
    FN_T(bce_job) job = {
        .x = logits,
        .t = targets->values,
        .pos_weight = loss->pos_weight,
        .grad = grad,
        .inv_count = (real)(1.0 / (double)count),
        .count = count,
        .c = c,
    };
    int parts = fn_partial_parts(4 * count, threads); /* exp, log1p and a division per element */
    fn_run_parts(parts, threads, FN_T(bce_part), &job);
    return fn_sum_partials(job.loss, parts) / (double)count;
}

#endif
