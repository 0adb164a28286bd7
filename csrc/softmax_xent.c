/* softmax_xent.c — the fused, numerically stable softmax cross-entropy loss.
 *
 * Fusing the softmax with the loss gives the gradient (softmax - onehot) / n directly, and working
 * with log-sum-exp shifted by the row maximum keeps every exp() argument ≤ 0: no overflow for
 * large logits, and -log p is computed as lse - logit rather than log of a rounded probability.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"

#define FN_MAX_PARTIALS 256 /* per-thread partial sums; more threads than this share slots */

fn_status fn_labels_check(const void *labels, fn_label_type label_type, int64_t n,
                          int64_t classes) {
    if (n > 0 && !labels) return fn_error(FN_EINVAL, "labels: NULL pointer");
    if ((unsigned)label_type > FN_LABEL_U64)
        return fn_error(FN_EINVAL, "labels: unknown label type %d", (int)label_type);
    for (int64_t i = 0; i < n; i++) {
        int64_t y = fn_label_at(labels, label_type, i);
        if (label_type == FN_LABEL_U64 && y < 0)
            return fn_error(FN_EINVAL,
                            "labels: label %llu at index %lld is out of range for %lld classes "
                            "(expected 0 <= label < %lld)",
                            (unsigned long long)((const uint64_t *)labels)[i], (long long)i,
                            (long long)classes, (long long)classes);
        if (y < 0 || y >= classes)
            return fn_error(FN_EINVAL,
                            "labels: label %lld at index %lld is out of range for %lld classes "
                            "(expected 0 <= label < %lld)",
                            (long long)y, (long long)i, (long long)classes, (long long)classes);
    }
    return FN_OK;
}

fn_status fn_softmax_xent(fn_dtype dtype, const void *logits, int64_t n, int64_t c,
                          const void *labels, fn_label_type label_type, double *loss,
                          void *grad, int64_t *correct) {
    if (n < 1 || c < 1)
        return fn_error(FN_EINVAL, "softmax cross-entropy: needs n >= 1 and c >= 1, got (%lld, %lld)",
                        (long long)n, (long long)c);
    if (!logits || !loss) return fn_error(FN_EINVAL, "softmax cross-entropy: NULL pointer");
    FN_TRY(fn_labels_check(labels, label_type, n, c));
    int threads = fn_threads_get();
    *loss = dtype == FN_FLOAT64 ? fn_softmax_xent_forward_backward_f64(
                                      logits, labels, label_type, grad, n, c, threads, correct)
                                : fn_softmax_xent_forward_backward_f32(
                                      logits, labels, label_type, grad, n, c, threads, correct);
    if (!isfinite(*loss))
        return fn_error(FN_ENUMERIC, "softmax cross-entropy: the loss is %g (non-finite logits?)",
                        *loss);
    return FN_OK;
}

#define FN_TEMPLATE_FILE "softmax_xent.c"
#include "template.h"

#else /* templated half */

typedef struct {
    const real *logits;
    const void *labels;
    fn_label_type label_type;
    real *grad;
    int64_t n, c;
    double loss[FN_MAX_PARTIALS];
    int64_t correct[FN_MAX_PARTIALS];
} FN_T(softmax_xent_job);

/* Rows [begin, end) of part `id`: their summed loss and argmax hits into the job's slots. */
static void FN_T(softmax_xent_part)(int id, int parts, void *arg) {
    FN_T(softmax_xent_job) *job = arg;
    const int64_t c = job->c;
    const real inv_n = (real)(1.0 / (double)job->n);
    int64_t begin, end;
    fn_partition(job->n, parts, id, &begin, &end);
    double sum = 0;
    int64_t hits = 0;
    for (int64_t i = begin; i < end; i++) {
        const real *row = job->logits + i * c;
        int64_t label = fn_label_at(job->labels, job->label_type, i);
        real max = row[0];
        for (int64_t j = 1; j < c; j++) max = row[j] > max ? row[j] : max;
        /* the first maximum, as numpy's argmax; bounded, since a NaN row equals no max */
        int64_t argmax = 0;
        while (argmax < c - 1 && row[argmax] != max) argmax++;
        hits += argmax == label;
        real total = 0;
        if (job->grad) {
            real *g = job->grad + i * c;
            for (int64_t j = 0; j < c; j++) {
                g[j] = exp(row[j] - max);
                total += g[j];
            }
            real scale = inv_n / total;
            for (int64_t j = 0; j < c; j++) g[j] *= scale;
            g[label] -= inv_n;
        } else {
            for (int64_t j = 0; j < c; j++) total += exp(row[j] - max);
        }
        sum += (double)(max + log(total) - row[label]);
    }
    job->loss[id] = sum;
    job->correct[id] = hits;
}

/* logits is (n, c), labels is (n) in [0, c) (checked by the caller), grad is (n, c) or NULL.
 * Returns the mean loss; grad = (softmax(logits) - onehot(labels)) / n; *correct (if not NULL)
 * counts the rows whose first maximal logit is at the label, for the training accuracy. */
double FN_T(fn_softmax_xent_forward_backward)(const real *logits, const void *labels,
                                              fn_label_type label_type, real *grad, int64_t n,
                                              int64_t c, int threads, int64_t *correct) {
    FN_T(softmax_xent_job) job = {logits, labels, label_type, grad, n, c, {0}, {0}};
    int parts = fn_threads_for(n * c, threads);
    if (parts > FN_MAX_PARTIALS) parts = FN_MAX_PARTIALS;
    fn_run_team(parts, FN_T(softmax_xent_part), &job);
    /* Summed in part order: the same thread count gives the same bits every run. */
    double loss = 0;
    int64_t hits = 0;
    for (int i = 0; i < parts; i++) {
        loss += job.loss[i];
        hits += job.correct[i];
    }
    if (correct) *correct = hits;
    return loss / (double)n;
}

#endif
