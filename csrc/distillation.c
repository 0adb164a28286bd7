/* distillation.c — knowledge distillation (Hinton et al., 2015), fused with its softmaxes.
 *
 * For student logits z, teacher logits v, label y, temperature T and weight a, row i contributes
 *
 *     a T^2 KL(P || Q) + (1 - a) (-log p_y),
 *     P = softmax(v / T), Q = softmax(z / T), p = softmax(z)
 *
 * and the loss is the mean over rows. Its gradient with respect to z is
 * a T (Q - P) + (1 - a) (p - onehot(y)), over n. Each log-probability is computed shifted by its
 * row maximum, as (z_k - max) / T - log(sum exp((z - max) / T)): finite however large the logits,
 * so that a teacher probability that underflows to 0 contributes 0 * (finite) = 0 to the KL term.
 * The three softmaxes are recomputed in the last pass rather than stored: the training step
 * plans no scratch memory for its loss, and exp() is cheap next to the model the logits came from.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"

#define FN_TEMPLATE_FILE "distillation.c"
#include "template.h"

#else /* templated half */

typedef struct {
    const real *student, *teacher;
    const void *labels;
    fn_label_type label_type;
    real temperature, alpha;
    real *grad;
    int64_t n, c;
    double loss[FN_MAX_PARTIALS];
    int64_t correct[FN_MAX_PARTIALS];
} FN_T(distillation_job);

static void FN_T(distillation_part)(int id, int parts, void *arg) {
    FN_T(distillation_job) *job = arg;
    const int64_t c = job->c;
    const real t = job->temperature, alpha = job->alpha;
    const real inv_n = (real)(1.0 / (double)job->n);
    int64_t begin, end;
    fn_partition(job->n, parts, id, &begin, &end);
    double sum = 0;
    int64_t hits = 0;
    for (int64_t i = begin; i < end; i++) {
        const real *z = job->student + i * c, *v = job->teacher + i * c;
        int64_t label = fn_label_at(job->labels, job->label_type, i);
        real max_z = z[0], max_v = v[0];
        for (int64_t k = 1; k < c; k++) {
            max_z = z[k] > max_z ? z[k] : max_z;
            max_v = v[k] > max_v ? v[k] : max_v;
        }
        int64_t argmax = 0;
        while (argmax < c - 1 && z[argmax] != max_z) argmax++;
        hits += argmax == label;
        /* The hard term's sum as the softmax cross-entropy takes it: with alpha 0 the same bits */
        real total = FN_T(fn_sum_exp_shifted)(z, max_z, c, NULL);
        real total_soft = 0, total_teacher = 0;
        for (int64_t k = 0; k < c; k++) {
            total_soft += exp((z[k] - max_z) / t);
            total_teacher += exp((v[k] - max_v) / t);
        }
        real log_total = log(total), log_soft = log(total_soft);
        real log_teacher = log(total_teacher);
        real kl = 0;
        real *g = job->grad ? job->grad + i * c : NULL;
        for (int64_t k = 0; k < c; k++) {
            real log_q = (z[k] - max_z) / t - log_soft;   /* student, softened */
            real log_p = (v[k] - max_v) / t - log_teacher; /* teacher, softened */
            real p = exp(log_p);
            kl += p * (log_p - log_q);
            if (g) {
                real hard = exp((z[k] - max_z) - log_total) - (k == label ? 1 : 0);
                g[k] = (alpha * t * (exp(log_q) - p) + (1 - alpha) * hard) * inv_n;
            }
        }
        real hard_loss = (max_z - z[label]) + log_total;
        sum += (double)(alpha * t * t * kl + (1 - alpha) * hard_loss);
    }
    job->loss[id] = sum;
    job->correct[id] = hits;
}

/* student and targets->teacher (n, c), targets->labels (n) in [0, c) (checked by the caller);
 * grad (n, c) or NULL. Returns the mean loss; *correct counts the rows whose first maximal
 * student logit is at the label. */
double FN_T(fn_distillation_forward_backward)(const real *student, const fn_targets *targets,
                                              const fn_loss *loss, real *grad, int64_t n,
                                              int64_t c, int threads, int64_t *correct) {
    FN_T(distillation_job) job = {
        .student = student,
        .teacher = targets->teacher,
        .labels = targets->labels,
        .label_type = targets->label_type,
        .temperature = (real)loss->temperature,
        .alpha = (real)loss->alpha,
        .grad = grad,
        .n = n,
        .c = c,
    };
    int parts = fn_partial_parts(3 * n * c, threads);
    fn_run_parts(parts, threads, FN_T(distillation_part), &job);
    int64_t hits = 0;
    for (int i = 0; i < parts; i++) hits += job.correct[i];
    if (correct) *correct = hits;
    return fn_sum_partials(job.loss, parts) / (double)n;
}

#endif
