/* loss.c — the losses' checks and dispatch: fn_loss_forward_backward, the training step's loss.
 *
 * Everything a loss reads is checked here, before any kernel runs: the kind and its
 * hyper-parameters, the fields of other kinds (which must be 0), the targets the kind takes (and
 * no others), labels in range, targets and teacher logits finite. The kernels (softmax_xent.c,
 * distillation.c, regression_loss.c, bce_logits.c) then assume valid arguments.
 */
#include "kernels.h"

static const char *const loss_names[] = {
    [FN_LOSS_CROSS_ENTROPY] = "CrossEntropyLoss",  [FN_LOSS_MSE] = "MSELoss",
    [FN_LOSS_L1] = "L1Loss",                       [FN_LOSS_HUBER] = "HuberLoss",
    [FN_LOSS_BCE_WITH_LOGITS] = "BCEWithLogitsLoss", [FN_LOSS_DISTILLATION] = "DistillationLoss",
};

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

/* A hyper-parameter of another kind must be 0. */
static fn_status check_unused(const char *name, const char *field, double value, bool used) {
    if (!used && value != 0)
        return fn_error(FN_EINVAL, "%s: %s is not a parameter of this loss (got %g; it must be 0)",
                        name, field, value);
    return FN_OK;
}

/* An optional array of `count` per-class weights: NULL with count 0, or c finite entries >= 0
 * (with a positive sum when `positive_sum`). */
static fn_status check_weights(const char *name, const char *field, const double *w,
                               int64_t count, int64_t c, bool used, bool positive_sum) {
    if (!used) {
        if (w || count)
            return fn_error(FN_EINVAL, "%s: %s is not a parameter of this loss (it must be NULL "
                            "with count 0)", name, field);
        return FN_OK;
    }
    if (!w) {
        if (count)
            return fn_error(FN_EINVAL, "%s: %s is NULL but its count is %lld", name, field,
                            (long long)count);
        return FN_OK;
    }
    if (count != c)
        return fn_error(FN_EINVAL, "%s: %s has %lld entries for %lld classes (one per class)",
                        name, field, (long long)count, (long long)c);
    double sum = 0;
    for (int64_t k = 0; k < c; k++) {
        if (!isfinite(w[k]) || w[k] < 0)
            return fn_error(FN_EINVAL, "%s: %s[%lld] is %g (expected finite and >= 0)", name,
                            field, (long long)k, w[k]);
        sum += w[k];
    }
    if (positive_sum && !(sum > 0))
        return fn_error(FN_EINVAL, "%s: the entries of %s sum to 0 (expected a positive sum)",
                        name, field);
    return FN_OK;
}

/* A (n, c) array of targets in `dtype`: present and finite. */
static fn_status check_finite(const char *name, const char *what, const char *column,
                              fn_dtype dtype, const void *data, int64_t n, int64_t c) {
    int64_t bad = fn_first_nonfinite(dtype, data, n * c);
    if (bad >= 0)
        return fn_error(FN_EINVAL, "%s: the %s contain NaN or Inf (sample %lld, %s %lld)", name,
                        what, (long long)(bad / c), column, (long long)(bad % c));
    return FN_OK;
}

fn_status fn_loss_check(fn_dtype dtype, const fn_loss *loss, const fn_targets *targets, int64_t n,
                        int64_t c, double *norm) {
    if (!loss) return fn_error(FN_EINVAL, "unknown loss: the loss is NULL");
    if ((unsigned)loss->kind > FN_LOSS_DISTILLATION)
        return fn_error(FN_EINVAL, "unknown loss kind %d", (int)loss->kind);
    const fn_loss_kind kind = loss->kind;
    const char *name = loss_names[kind];
    if ((unsigned)dtype > FN_FLOAT64)
        return fn_error(FN_EINVAL, "%s: unknown dtype %d", name, (int)dtype);
    if (n < 1 || c < 1 || n > INT64_MAX / c)
        return fn_error(FN_EINVAL, "%s: needs outputs (n, c) with n >= 1 and c >= 1, got (%lld, "
                        "%lld)", name, (long long)n, (long long)c);
    if (!targets) return fn_error(FN_EINVAL, "%s: targets is NULL", name);

    /* Hyper-parameters: this kind's checked, the others' 0. */
    const bool ce = kind == FN_LOSS_CROSS_ENTROPY, distillation = kind == FN_LOSS_DISTILLATION;
    FN_TRY(check_unused(name, "label_smoothing", loss->label_smoothing, ce));
    FN_TRY(check_unused(name, "temperature", loss->temperature, distillation));
    FN_TRY(check_unused(name, "alpha", loss->alpha, distillation));
    FN_TRY(check_unused(name, "delta", loss->delta, kind == FN_LOSS_HUBER));
    FN_TRY(check_weights(name, "weight", loss->weight, loss->weight_count, c, ce, true));
    FN_TRY(check_weights(name, "pos_weight", loss->pos_weight, loss->pos_weight_count, c,
                         kind == FN_LOSS_BCE_WITH_LOGITS, false));
    if (ce && !(loss->label_smoothing >= 0 && loss->label_smoothing <= 1))
        return fn_error(FN_EINVAL, "%s: label_smoothing must be in [0, 1], got %g", name,
                        loss->label_smoothing);
    if (distillation) {
        double smallest = dtype == FN_FLOAT64 ? DBL_MIN : FLT_MIN;
        if (!(loss->temperature >= smallest && isfinite(loss->temperature)))
            return fn_error(FN_EINVAL, "%s: temperature must be finite and > 0, got %g", name,
                            loss->temperature);
        if (!(loss->alpha >= 0 && loss->alpha <= 1))
            return fn_error(FN_EINVAL, "%s: alpha must be in [0, 1], got %g", name, loss->alpha);
    }
    if (kind == FN_LOSS_HUBER && !(loss->delta > 0 && isfinite(loss->delta)))
        return fn_error(FN_EINVAL, "%s: delta must be finite and > 0, got %g", name, loss->delta);

    /* Targets: the ones this kind takes, and no others. */
    if (!distillation && targets->teacher)
        return fn_error(FN_EINVAL, "%s: takes no teacher logits (targets.teacher must be NULL)",
                        name);
    *norm = (double)n;
    switch (kind) {
    case FN_LOSS_CROSS_ENTROPY:
        if (targets->values) {
            if (targets->labels)
                return fn_error(FN_EINVAL, "%s: give labels or soft targets (values), not both",
                                name);
            return check_finite(name, "soft targets", "class", dtype, targets->values, n, c);
        }
        FN_TRY(fn_labels_check(targets->labels, targets->label_type, n, c));
        if (loss->weight) { /* the weighted mean's divisor: the weights of the batch's labels */
            double sum = 0;
            for (int64_t i = 0; i < n; i++)
                sum += loss->weight[fn_label_at(targets->labels, targets->label_type, i)];
            if (!(sum > 0))
                return fn_error(FN_EINVAL, "%s: every label of the batch has class weight 0 (the "
                                "weighted mean divides by their sum)", name);
            *norm = sum;
        }
        return FN_OK;
    case FN_LOSS_DISTILLATION:
        if (targets->values)
            return fn_error(FN_EINVAL, "%s: takes labels and teacher logits, not values", name);
        if (!targets->teacher)
            return fn_error(FN_EINVAL, "%s: needs the teacher's logits (targets.teacher)", name);
        FN_TRY(fn_labels_check(targets->labels, targets->label_type, n, c));
        return check_finite(name, "teacher logits", "class", dtype, targets->teacher, n, c);
    default: /* MSE, L1, HUBER, BCE_WITH_LOGITS: elementwise against float targets */
        if (targets->labels)
            return fn_error(FN_EINVAL, "%s: takes float targets (values), not labels", name);
        if (!targets->values)
            return fn_error(FN_EINVAL, "%s: needs float targets (targets.values)", name);
        *norm = (double)n * (double)c;
        return check_finite(name, "targets", "column", dtype, targets->values, n, c);
    }
}

#define FN_BY_DTYPE(dtype, call_f64, call_f32) ((dtype) == FN_FLOAT64 ? (call_f64) : (call_f32))

double fn_loss_run(fn_dtype dtype, const void *outputs, int64_t n, int64_t c,
                   const fn_targets *targets, const fn_loss *loss, double norm, void *grad,
                   int threads, int64_t *correct) {
    int64_t hits = 0;
    double value;
    switch (loss->kind) {
    case FN_LOSS_CROSS_ENTROPY:
        value = FN_BY_DTYPE(dtype,
                            fn_cross_entropy_forward_backward_f64(outputs, targets, loss, norm,
                                                                  grad, n, c, threads, &hits),
                            fn_cross_entropy_forward_backward_f32(outputs, targets, loss, norm,
                                                                  grad, n, c, threads, &hits));
        break;
    case FN_LOSS_DISTILLATION:
        value = FN_BY_DTYPE(dtype,
                            fn_distillation_forward_backward_f64(outputs, targets, loss, grad, n,
                                                                 c, threads, &hits),
                            fn_distillation_forward_backward_f32(outputs, targets, loss, grad, n,
                                                                 c, threads, &hits));
        break;
    case FN_LOSS_BCE_WITH_LOGITS:
        value = FN_BY_DTYPE(dtype,
                            fn_bce_with_logits_forward_backward_f64(outputs, targets, loss, grad,
                                                                    n, c, threads),
                            fn_bce_with_logits_forward_backward_f32(outputs, targets, loss, grad,
                                                                    n, c, threads));
        break;
    default: /* MSE, L1, HUBER */
        value = FN_BY_DTYPE(dtype,
                            fn_regression_loss_forward_backward_f64(outputs, targets, loss, grad,
                                                                    n, c, threads),
                            fn_regression_loss_forward_backward_f32(outputs, targets, loss, grad,
                                                                    n, c, threads));
        break;
    }
    if (correct) *correct = hits;
    return value;
}

fn_status fn_loss_forward_backward(fn_dtype dtype, const void *outputs, int64_t n, int64_t c,
                                   const fn_targets *targets, const fn_loss *loss, double *value,
                                   void *grad, int64_t *correct) {
    double norm;
    FN_TRY(fn_loss_check(dtype, loss, targets, n, c, &norm));
    const char *name = loss_names[loss->kind];
    if (!outputs) return fn_error(FN_EINVAL, "%s: outputs is NULL", name);
    if (!value) return fn_error(FN_EINVAL, "%s: value is NULL", name);
    *value = fn_loss_run(dtype, outputs, n, c, targets, loss, norm, grad, fn_threads_get(),
                         correct);
    if (!isfinite(*value))
        return fn_error(FN_ENUMERIC, "%s: the loss is %g (non-finite outputs?)", name, *value);
    return FN_OK;
}

fn_status fn_softmax_xent(fn_dtype dtype, const void *logits, int64_t n, int64_t c,
                          const void *labels, fn_label_type label_type, double *loss,
                          void *grad, int64_t *correct) {
    fn_loss plain = {FN_LOSS_CROSS_ENTROPY};
    fn_targets targets = {.labels = labels, .label_type = label_type};
    return fn_loss_forward_backward(dtype, logits, n, c, &targets, &plain, loss, grad, correct);
}
