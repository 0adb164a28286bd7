/* softmax_xent.c — the fused, numerically stable softmax cross-entropy loss.
 *
 * Fusing the softmax with the loss gives the gradient in the same pass, and working with
 * log-sum-exp shifted by the row maximum keeps every exp() argument <= 0: no overflow for large
 * logits, and -log p_k is computed as (max - z_k) + log(sum exp(z - max)), a sum of two terms
 * >= 0, rather than as the log of a rounded probability.
 *
 * Every variant (labels or soft targets, label smoothing, class weights) is one row formula:
 * with a_k >= 0 the weight of class k in the row's target (see fastnet.h), the row loss is
 * sum_k a_k (-log p_k) and its gradient A p - a, A = sum_k a_k; the sum over rows is divided by
 * the caller's normaliser (n, or the summed weights of the labels). Plain labels (a = onehot) keep
 * a shorter path: it is the common case and its gradient (softmax - onehot) / n needs no weights.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"

#include <math.h>

/* first_argmax's search for its maximum, a block at a time */
#define ARGMAX_LANES 16
/* The exponentials of the rows no longer than FN_EXP_PIECE are taken a chunk of rows at a time,
 * at most XENT_CHUNK elements (in L1 between the passes) and XENT_ROWS rows, by the call that
 * fn_sum_exp_shifted makes for one row: one vectorised call for many short rows, the same bits. */
#define XENT_CHUNK 2048
#define XENT_ROWS 256
/* Rows of at most FN_EXP_LANES classes with plain labels go this many at a time through
 * xent_narrow_rows, transposed. */
#define XENT_NARROW_ROWS 16

#define FN_TEMPLATE_FILE "softmax_xent.c"
#include "template.h"

#else /* templated half */

typedef struct {
    const real *logits;
    const void *labels;   /* (n), or NULL with soft targets */
    fn_label_type label_type;
    const real *soft;     /* (n, c) soft targets, or NULL with labels */
    const double *weight; /* (c) class weights, or NULL */
    double smoothing;
    real *grad;
    real inv_norm;
    int64_t n, c;
    double loss[FN_MAX_PARTIALS];
    int64_t correct[FN_MAX_PARTIALS];
} FN_T(softmax_xent_job);

/* Index of the first maximum of row[0..c), and the maximum: the largest element that is not NaN
 * (-inf if there is none; the index is then c - 1). A long row's maximum is taken in lanes
 * (fn_max_lanes), which vectorises where one running maximum waits on the last comparison for
 * every element: a maximum is one value in whichever order it is found. */
static inline int64_t FN_T(first_argmax)(const real *row, int64_t c, real *max_out) {
    if (c < 2 * ARGMAX_LANES) { /* a few elements: one running maximum is quicker */
        real max = -INFINITY;
        for (int64_t j = 0; j < c; j++) max = row[j] > max ? row[j] : max;
        int64_t argmax = 0;
        while (argmax < c - 1 && row[argmax] != max) argmax++;
        *max_out = max;
        return argmax;
    }
    real max = FN_T(fn_max_lanes)(row, c);
    /* The first block that holds it, then the element. */
    int64_t argmax = 0;
    for (; argmax + ARGMAX_LANES <= c; argmax += ARGMAX_LANES) {
        int found = 0;
#pragma omp simd reduction(| : found)
        for (int l = 0; l < ARGMAX_LANES; l++) found |= row[argmax + l] == max;
        if (found) break;
    }
    while (argmax < c - 1 && row[argmax] != max) argmax++;
    *max_out = max;
    return argmax;
}

/* Weight of class k in row i's target: w_k ((1 - s) [k == label] + s / c), or with soft targets
 * w_k ((1 - s) t_ik + s / c). */
static inline real FN_T(target_weight)(const FN_T(softmax_xent_job) *job, const real *soft_row,
                                       int64_t label, int64_t k) {
    real s = (real)job->smoothing;
    real q = soft_row ? (1 - s) * soft_row[k] + s / (real)job->c
                      : (k == label ? 1 - s : 0) + s / (real)job->c;
    return job->weight ? (real)job->weight[k] * q : q;
}

/* Rows [i0, i0 + rows) (rows <= XENT_NARROW_ROWS) of a job with plain labels and c <=
 * FN_EXP_LANES: the row path's operations for each row, in the same order (the running maximum,
 * the first index that holds it, the exponentials of the shifted row padded with zeros to
 * FN_EXP_LANES, their pairwise sum as fn_sum_lanes takes it, the log, the loss and the
 * gradient), so the same bits; but on the rows transposed, so that each step runs down a column
 * of them and vectorises across the rows, where a row of 10 classes had left its maximum, argmax
 * and sum to scalar chains, and its argmax search to a mispredicted exit (mlp_small's 32 x 10
 * from C: 1.16-1.22 -> 0.65-0.66 us). Adds the rows' losses in order to *sum and their hits to
 * *hits. */
static void FN_T(xent_narrow_rows)(const FN_T(softmax_xent_job) *job, int64_t i0, int64_t rows,
                                   double *sum, int64_t *hits) {
    enum { R = XENT_NARROW_ROWS, L = FN_EXP_LANES };
    const int64_t c = job->c;
    _Alignas(64) real z[L][R];     /* z[j][r]: logit j of row i0 + r (rows past `rows`: 0) */
    _Alignas(64) real ex[L][R];    /* exp(z - max), 0 past c */
    _Alignas(64) real lanes[L][R]; /* fn_sum_lanes's partial sums, then its pairwise tree */
    _Alignas(64) real max[R];
    int32_t argmax[R];
    for (int r = 0; r < R; r++)
        for (int64_t j = 0; j < c; j++) z[j][r] = r < rows ? job->logits[(i0 + r) * c + j] : 0;
    /* Each loop over r below is one vector: omp simd keeps GCC from unrolling it into scalars. */
#pragma omp simd
    for (int r = 0; r < R; r++) {
        max[r] = -INFINITY;
        argmax[r] = (int32_t)(c - 1);
    }
    for (int64_t j = 0; j < c; j++)
#pragma omp simd
        for (int r = 0; r < R; r++) max[r] = z[j][r] > max[r] ? z[j][r] : max[r];
    for (int64_t j = c - 1; j >= 0; j--)
#pragma omp simd
        for (int r = 0; r < R; r++) argmax[r] = z[j][r] == max[r] ? (int32_t)j : argmax[r];
    for (int64_t j = 0; j < L; j++)
#pragma omp simd
        for (int r = 0; r < R; r++) ex[j][r] = j < c ? z[j][r] - max[r] : -INFINITY;
    FN_T(fn_exp_nonpositive)(&ex[0][0], L * R);
    for (int j = 0; j < L; j++)
#pragma omp simd
        for (int r = 0; r < R; r++) lanes[j][r] = (real)0 + ex[j][r];
    for (int width = L / 2; width > 0; width /= 2)
        for (int j = 0; j < width; j++)
#pragma omp simd
            for (int r = 0; r < R; r++) lanes[j][r] += lanes[j + width][r];
    const real inv_norm = job->inv_norm;
    double loss = *sum; /* the rows' losses added in order, as the row path adds them */
    for (int64_t r = 0; r < rows; r++) {
        int64_t i = i0 + r, label = fn_label_at(job->labels, job->label_type, i);
        *hits += argmax[r] == label;
        real total = lanes[0][r], log_total = log(total);
        loss += (double)((max[r] - job->logits[i * c + label]) + log_total);
        if (job->grad) {
            real scale = inv_norm / total, *g = job->grad + i * c;
            for (int64_t j = 0; j < c; j++) g[j] = ex[j][r] * scale;
            g[label] -= inv_norm;
        }
    }
    *sum = loss;
}

/* Rows [begin, end) of part `id`: their summed loss and argmax hits into the job's slots. Narrow
 * rows with plain labels 16 at a time (xent_narrow_rows); the others per chunk of rows: the
 * maxima, the exponentials, then each row's sum, loss and gradient. */
static void FN_T(softmax_xent_part)(int id, int parts, void *arg) {
    FN_T(softmax_xent_job) *job = arg;
    const int64_t c = job->c, stride = (c + FN_EXP_LANES - 1) / FN_EXP_LANES * FN_EXP_LANES;
    const real inv_norm = job->inv_norm;
    const bool plain = job->labels && !job->weight && job->smoothing == 0;
    const bool chunked = stride <= FN_EXP_PIECE;
    int64_t begin, end;
    fn_partition(job->n, parts, id, &begin, &end);
    double sum = 0;
    int64_t hits = 0;
    if (plain && c <= FN_EXP_LANES) {
        for (int64_t i0 = begin; i0 < end; i0 += XENT_NARROW_ROWS)
            FN_T(xent_narrow_rows)(job, i0, end - i0 < XENT_NARROW_ROWS ? end - i0 : XENT_NARROW_ROWS,
                                   &sum, &hits);
        job->loss[id] = sum;
        job->correct[id] = hits;
        return;
    }
    _Alignas(64) real buffer[XENT_CHUNK];
    real row_max[XENT_ROWS];
    for (int64_t i0 = begin; i0 < end;) {
        int64_t rows = end - i0 < XENT_ROWS ? end - i0 : XENT_ROWS;
        if (!chunked) rows = 1;
        else if (rows * stride > XENT_CHUNK) rows = XENT_CHUNK / stride;
        for (int64_t r = 0; r < rows; r++) {
            int64_t i = i0 + r;
            const real *soft_row = job->soft ? job->soft + i * c : NULL;
            real ignored;
            int64_t argmax = FN_T(first_argmax)(job->logits + i * c, c, &row_max[r]);
            int64_t label = soft_row ? FN_T(first_argmax)(soft_row, c, &ignored)
                                     : fn_label_at(job->labels, job->label_type, i);
            hits += argmax == label;
        }
        if (chunked)
            FN_T(fn_exp_shifted_rows)(job->logits + i0 * c, c, row_max, rows, c, stride, buffer);
        for (int64_t r = 0; r < rows; r++) {
            int64_t i = i0 + r;
            const real *row = job->logits + i * c;
            const real *soft_row = job->soft ? job->soft + i * c : NULL;
            int64_t label = soft_row ? -1 : fn_label_at(job->labels, job->label_type, i);
            real max = row_max[r];
            real *g = job->grad ? job->grad + i * c : NULL;
            const real *ex = g; /* exp(z - max) */
            real total;
            if (chunked) {
                ex = buffer + r * stride;
                total = FN_T(fn_sum_lanes)(ex, stride);
            } else {
                total = FN_T(fn_sum_exp_shifted)(row, max, c, g);
            }
            real log_total = log(total);
            if (plain) {
                sum += (double)((max - row[label]) + log_total);
                if (g) {
                    real scale = inv_norm / total;
                    for (int64_t j = 0; j < c; j++) g[j] = ex[j] * scale;
                    g[label] -= inv_norm;
                }
                continue;
            }
            /* The general row: loss sum_k a_k (-log p_k), gradient (A p_k - a_k) / norm. */
            real row_loss = 0, weight_sum = 0;
            for (int64_t k = 0; k < c; k++) {
                real a = FN_T(target_weight)(job, soft_row, label, k);
                weight_sum += a;
                if (a != 0) row_loss += a * ((max - row[k]) + log_total);
            }
            sum += (double)row_loss;
            if (g) {
                real scale = weight_sum / total;
                for (int64_t k = 0; k < c; k++) {
                    real a = FN_T(target_weight)(job, soft_row, label, k);
                    g[k] = (ex[k] * scale - a) * inv_norm;
                }
            }
        }
        i0 += rows;
    }
    job->loss[id] = sum;
    job->correct[id] = hits;
}

/* logits (n, c); targets->labels (n) in [0, c) or targets->values (n, c) soft targets (checked by
 * the caller, fn_loss_check); grad (n, c) or NULL. Returns the summed row losses / norm, writes
 * their gradient / norm to grad, and counts in *correct the rows whose first maximal logit is at
 * the label (at the soft target's first maximum). */
double FN_T(fn_cross_entropy_forward_backward)(const real *logits, const fn_targets *targets,
                                               const fn_loss *loss, double norm, real *grad,
                                               int64_t n, int64_t c, int threads,
                                               int64_t *correct) {
    FN_T(softmax_xent_job) job = {
        .logits = logits,
        .labels = targets->values ? NULL : targets->labels,
        .label_type = targets->label_type,
        .soft = targets->values,
        .weight = loss->weight,
        .smoothing = loss->label_smoothing,
        .grad = grad,
        .inv_norm = (real)(1.0 / norm),
        .n = n,
        .c = c,
    };
    int parts = fn_partial_parts(n * c, threads);
    fn_run_parts(parts, threads, FN_T(softmax_xent_part), &job);
    int64_t hits = 0;
    for (int i = 0; i < parts; i++) hits += job.correct[i];
    if (correct) *correct = hits;
    return fn_sum_partials(job.loss, parts) / norm;
}

#endif
