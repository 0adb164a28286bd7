/* batchnorm.c — batch normalisation (PyTorch's BatchNorm1d on (N, C) or (N, C, L), BatchNorm2d on
 * (N, C, H, W)).
 *
 * Every channel is normalised over its M = N * spatial values:
 *     y = (x - mean) * invstd * weight + bias,   invstd = 1 / sqrt(var + eps)
 * with the batch's mean and biased variance in train mode, and the running statistics in eval
 * mode. Train mode also updates the running statistics, with the unbiased variance as PyTorch
 * does, and counts the batch in num_batches_tracked.
 *
 * Work is split over channels. Each thread walks its channel range sample by sample (its sums
 * in blocks of channels), so that the inner loop runs along contiguous memory both for a large
 * spatial size and for (N, C) inputs (where a channel's values are C apart); a channel's sums are
 * taken in the same order whatever the split, so results do not depend on the thread count.
 *
 * A ReLU that directly follows and takes over the output's memory (model.c) is applied here
 * instead: forward clamps y in the normalise pass, and backward reads the ReLU's output gradient,
 * passing it where the ReLU's input, normalised again from x, was positive, as the ReLU's backward
 * would have. The same values, with four passes over the activations fewer (the ReLU's two, and
 * backward's two reads of y).
 *
 * The input gradient is an affine function of dy and x per channel once backward's sums are
 * known. After a convolution whose output only batch norm reads (model.c), backward computes the
 * sums and leaves the input gradient to the convolution (input_grad_deferred), which derives it
 * image by image (input_grad_of_sample) into a buffer that its GEMMs read while it is in cache:
 * the batch's gradient is neither written out nor read back.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

/* Independent partial sums of bn_sums: enough for the additions of several vector registers to
 * be in flight at once (their latency, not the memory, bounded the statistics passes with 8). */
#ifndef BN_LANES
#define BN_LANES 32
#endif

/* What bn_sums adds up (below). */
enum { BN_STATISTICS, BN_GRADIENT, BN_GRADIENT_RELU };

/* A channel's coefficients (coef[c * BN_COEFS + ...]): forward's mean, scale (invstd * weight)
 * and shift (bias), which normalise x; backward's k_dy, k_x, k_0, which give the input gradient
 * k_dy * dy + k_x * (x - mean) + k_0. */
enum { BN_MEAN, BN_SCALE, BN_SHIFT, BN_K_DY, BN_K_X, BN_K_0, BN_COEFS };
_Static_assert(BN_COEFS == FN_BATCH_NORM_COEFS, "kernels.h states the coefficients' count");

/* From this many values per channel and sample (spatial size), training statistics are taken
 * sample by sample and then combined (bn_sample_stats, bn_combine), so that the producer of the
 * input can take them while each sample is still in its cache (input_stats_of_sample); for fewer
 * (BatchNorm1d), a sample's row of a channel is too short for that to pay, and bn_sums reads
 * the whole batch. */
#define BN_SAMPLE_STATS_MIN 16

/* weight, bias (when affine), running_mean, running_var, num_batches_tracked */
#define BN_TENSORS(affine) ((affine) ? 5 : 3)

static fn_status batch_norm_configure(fn_node *node, const fn_json *spec) {
    int64_t channels;
    double eps, momentum;
    int affine;
    FN_TRY(fn_json_get_int(spec, "num_features", 1, 0, &channels, node->name));
    FN_TRY(fn_json_get_number(spec, "eps", 0, 1e-5, &eps, node->name));
    /* PyTorch's momentum=None (a cumulative average of the batch statistics) is kept as -1. */
    const fn_json *given = fn_json_get(spec, "momentum");
    if (given && given->type == FN_JSON_NULL) momentum = -1;
    else FN_TRY(fn_json_get_number(spec, "momentum", 0, 0.1, &momentum, node->name));
    FN_TRY(fn_json_get_bool(spec, "affine", 0, 1, &affine, node->name));
    if (channels < 1 || channels > INT32_MAX)
        return fn_error(FN_EINVAL,
                        "node '%s': batch_norm needs num_features in [1, 2^31), got %lld",
                        node->name, (long long)channels);
    if (!(eps >= 0))
        return fn_error(FN_EINVAL, "node '%s': batch_norm needs eps >= 0, got %g", node->name, eps);
    if (momentum != -1 && !(momentum >= 0 && momentum <= 1))
        return fn_error(FN_EINVAL,
                        "node '%s': batch_norm needs momentum in [0, 1] (or null for a cumulative "
                        "average), got %g",
                        node->name, momentum);
    const fn_shape *in = &node->in_shape[0];
    char buf[64];
    if (in->ndim < 1 || in->ndim > 3)
        return fn_error(FN_EINVAL,
                        "node '%s': batch_norm expects a (C), (C, L) or (C, H, W) input per "
                        "sample, but its input has shape %s",
                        node->name, fn_shape_str(in, buf, sizeof buf));
    if (in->dim[0] != channels)
        return fn_error(FN_EINVAL,
                        "node '%s': batch_norm with num_features=%lld expects %lld channels (the "
                        "first dimension), but its input has shape %s",
                        node->name, (long long)channels, (long long)channels,
                        fn_shape_str(in, buf, sizeof buf));
    _Static_assert(BN_TENSORS(1) <= FN_MAX_PARAMS, "a node must hold batch norm's tensors");
    node->attr.batch_norm.channels = channels;
    node->attr.batch_norm.eps = eps;
    node->attr.batch_norm.momentum = momentum;
    node->attr.batch_norm.affine = affine != 0;
    node->out_shape = *in;

    const fn_shape vector = {1, {channels}}, scalar = {0, {0}};
    fn_param_decl *decl = node->param_decl;
    int p = 0;
    if (affine) {
        decl[p++] = (fn_param_decl){"weight", vector, false, false, false};
        decl[p++] = (fn_param_decl){"bias", vector, true, false, false};
    }
    decl[p++] = (fn_param_decl){"running_mean", vector, false, true, false};
    decl[p++] = (fn_param_decl){"running_var", vector, false, true, false};
    decl[p++] = (fn_param_decl){"num_batches_tracked", scalar, false, true, true};
    node->n_params = p;
    return FN_OK;
}

/* PyTorch's reset_parameters and reset_running_stats: weight 1, bias 0, running_mean 0,
 * running_var 1, no batches seen. */
static void batch_norm_init(fn_node *node, fn_dtype dtype, void *const params[], uint64_t seed) {
    (void)seed;
    int64_t c = node->attr.batch_norm.channels;
    int p = 0;
    if (node->attr.batch_norm.affine) {
        fn_fill_constant(dtype, params[p++], c, 1.0);
        fn_fill_constant(dtype, params[p++], c, 0.0);
    }
    fn_fill_constant(dtype, params[p++], c, 0.0);
    fn_fill_constant(dtype, params[p++], c, 1.0);
    fn_fill_constant(dtype, params[p++], 1, 0.0);
}

static bool bn_stats_by_sample(const fn_node *node) {
    return node->out_size / node->attr.batch_norm.channels >= BN_SAMPLE_STATS_MIN;
}

/* The mean and inverse standard deviation used by forward (batch or running), per channel, in
 * double whatever the dtype, then the channel's coefficients (BN_COEFS, in the dtype): backward
 * normalises x again from them, and leaves its input gradient's coefficients there. With
 * statistics by sample, each sample's mean and squared deviations per channel follow (batch, c, 2
 * doubles; 6 * c elements keep them 8-byte aligned). */
static size_t batch_norm_saved(const fn_node *node, int64_t batch, size_t elem_size) {
    size_t c = (size_t)node->attr.batch_norm.channels;
    size_t by_sample = bn_stats_by_sample(node) ? (size_t)batch * c * 2 * sizeof(double) : 0;
    return c * (2 * sizeof(double) + BN_COEFS * elem_size) + by_sample;
}

/* Backward's two per-channel sums, sum(dy) and sum(dy * xhat). */
static size_t batch_norm_workspace(const fn_node *node, int64_t batch, int threads,
                                   size_t elem_size) {
    (void)batch, (void)threads, (void)elem_size;
    return 2 * (size_t)node->attr.batch_norm.channels * sizeof(double);
}

/* Training on one value per channel gives a zero variance and no usable statistics; PyTorch
 * refuses it with this message. */
static fn_status single_value_error(const fn_node *node, int64_t batch) {
    const fn_shape *in = &node->in_shape[0];
    fn_shape full = {in->ndim + 1, {batch}};
    for (int d = 0; d < in->ndim; d++) full.dim[d + 1] = in->dim[d];
    char buf[80];
    return fn_error(FN_EINVAL,
                    "node '%s': batch_norm expected more than 1 value per channel when training, "
                    "got input of size %s",
                    node->name, fn_shape_str(&full, buf, sizeof buf));
}

static fn_status batch_norm_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status batch_norm_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status batch_norm_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status batch_norm_backward_f64(fn_node *node, const fn_model_ctx *ctx);
static void batch_norm_input_grad_of_sample_f32(const fn_node *node, int64_t sample, void *out);
static void batch_norm_input_grad_of_sample_f64(const fn_node *node, int64_t sample, void *out);
static void batch_norm_input_stats_of_sample_f32(fn_node *node, int64_t sample, const void *x);
static void batch_norm_input_stats_of_sample_f64(fn_node *node, int64_t sample, const void *x);

const fn_op fn_op_batch_norm = {
    .type = "batch_norm",
    .min_inputs = 1,
    .max_inputs = 1,
    .configure = batch_norm_configure,
    .init = batch_norm_init,
    .workspace = batch_norm_workspace,
    .saved = batch_norm_saved,
    .forward = {batch_norm_forward_f32, batch_norm_forward_f64},
    .backward = {batch_norm_backward_f32, batch_norm_backward_f64},
    .backward_ignores_output = true, /* x is normalised again from the saved statistics */
    .fuses_relu = true,
    .input_grad_of_sample = {batch_norm_input_grad_of_sample_f32,
                             batch_norm_input_grad_of_sample_f64},
    .input_stats_of_sample = {batch_norm_input_stats_of_sample_f32,
                              batch_norm_input_stats_of_sample_f64},
};

/* The sum of a channel's BN_LANES partial sums, pairwise in a fixed order. */
static double bn_lanes_total(double *lanes) {
    for (int half = BN_LANES / 2; half > 0; half /= 2)
        for (int l = 0; l < half; l++) lanes[l] += lanes[l + half];
    return lanes[0];
}

/* Channel c's mean and biased variance over n samples of S values from their bn_sample_stats
 * (stats: (n, C, 2)), combined sample by sample in order with Chan, Golub and LeVeque's pairwise
 * update: deviations between means, never raw sums, so no cancellation either. */
static void bn_combine(const double *stats, int64_t n, int64_t C, int64_t S, int64_t c,
                       double *mean, double *var) {
    double m = stats[2 * c], squares = stats[2 * c + 1], count = (double)S;
    for (int64_t i = 1; i < n; i++) {
        const double *sample = stats + (i * C + c) * 2;
        double total = count + (double)S, delta = sample[0] - m;
        m += delta * (double)S / total;
        squares += sample[1] + delta * delta * count * (double)S / total;
        count = total;
    }
    *mean = m;
    *var = squares / count;
}

#define FN_TEMPLATE_FILE "batchnorm.c"
#include "template.h"

#else /* templated half */

/* A value normalised as forward does it, with its channel's mean, scale (invstd * gamma) and
 * shift (beta). Backward finds where a fused ReLU's input was positive by normalising x again
 * with it, rather than reading the ReLU's output (one pass over the activations fewer), so both
 * must round alike: both call this. */
static inline real FN_T(bn_normalize)(real x, real mean, real scale, real shift) {
    return (x - mean) * scale + shift;
}

/* The gradient a fused ReLU passes back to batch norm: dy where the ReLU's input v was positive
 * (where its output was), 0 elsewhere, as the ReLU's backward would. A function, so that dy is
 * read whatever v is (a conditional read keeps a loop from vectorising), and in double, as the
 * sums are (GCC does not vectorise a float select feeding double sums). */
static inline double FN_T(bn_pass)(real dy, real v) {
    double g = dy;
    return v > 0 ? g : 0.0;
}

/* Adds one row of `count` values, d = x - shift, to a channel's partial sums la, lb
 * (BN_LANES each):
 *     kind BN_STATISTICS:     la += d,  lb += d^2     (forward's statistics)
 *     kind BN_GRADIENT:       la += dy, lb += dy * d  (backward's)
 *     kind BN_GRADIENT_RELU:  the same with bn_pass(dy, v) for dy, v = x normalised with the
 *                             channel's coefficients coef
 * in double, value s of each run of BN_LANES going to lane s, the last count % BN_LANES values to
 * the first lanes: one running sum would wait on the latency of each addition, and a
 * floating-point sum is not the compiler's to reorder. The lanes are held in registers for the
 * row. Inlined with `kind` a constant, so that each kind is a loop of its own that vectorises. */
static inline __attribute__((always_inline)) void FN_T(bn_row_sums)(
    const int kind, const real *x, const real *dy, const real *coef, int64_t count,
    double shift, double *restrict la, double *restrict lb) {
    double a[BN_LANES], b[BN_LANES];
    for (int l = 0; l < BN_LANES; l++) {
        a[l] = la[l];
        b[l] = lb[l];
    }
    const real mean = coef ? coef[BN_MEAN] : 0, scale = coef ? coef[BN_SCALE] : 0,
               beta = coef ? coef[BN_SHIFT] : 0;
#define BN_TERMS(at, l)                                                                           \
    {                                                                                             \
        double d = (double)x[at] - shift;                                                         \
        double g = kind == BN_STATISTICS ? d                                                      \
                   : kind == BN_GRADIENT ? (double)dy[at]                                         \
                                         : FN_T(bn_pass)(dy[at], FN_T(bn_normalize)(              \
                                                                     x[at], mean, scale, beta));  \
        a[l] += g;                                                                                \
        b[l] += g * d;                                                                            \
    }
    int64_t s = 0;
    for (; s + BN_LANES <= count; s += BN_LANES)
        for (int l = 0; l < BN_LANES; l++) BN_TERMS(s + l, l)
    for (int l = 0; s < count; s++, l++) BN_TERMS(s, l)
#undef BN_TERMS
    for (int l = 0; l < BN_LANES; l++) {
        la[l] = a[l];
        lb[l] = b[l];
    }
}

/* bn_row_sums for dy == NULL (statistics), relu_coef == NULL (gradient) or neither. */
static void FN_T(bn_row)(const real *x, const real *dy, const real *relu_coef, int64_t count,
                         double shift, double *la, double *lb) {
    if (!dy)
        FN_T(bn_row_sums)(BN_STATISTICS, x, dy, NULL, count, shift, la, lb);
    else if (!relu_coef)
        FN_T(bn_row_sums)(BN_GRADIENT, x, dy, NULL, count, shift, la, lb);
    else
        FN_T(bn_row_sums)(BN_GRADIENT_RELU, x, dy, relu_coef, count, shift, la, lb);
}

/* Channels summed at once by bn_sums: their lanes fit a few KB of stack. */
#define BN_BLOCK 16

/* The two sums of bn_row_sums over every sample of channels [c0, c1) of x (and dy) (n, C, S),
 * d = x - shift[c] (shift NULL: the channel's first value, x[0, c, 0]), into s1[c] and s2[c];
 * relu_coef (C, BN_COEFS) or NULL: the gradient passes a fused ReLU. Blocks of BN_BLOCK channels
 * are walked sample by sample, so that memory is read in runs of BN_BLOCK planes (a plane of a
 * 32x32 image is a page: a run of one would restart the prefetcher at every plane), and each
 * channel's lanes are added up, pairwise in a fixed order, once at the end (after every plane,
 * that cost as much as the plane for 8x8 planes). The order depends on the sizes alone, so not
 * on the thread count. */
static void FN_T(bn_sums)(const real *x, const real *dy, const real *relu_coef, int64_t n,
                          int64_t C, int64_t S, int64_t c0, int64_t c1, const double *shift,
                          double *s1, double *s2) {
    for (int64_t block = c0; block < c1; block += BN_BLOCK) {
        int64_t width = c1 - block < BN_BLOCK ? c1 - block : BN_BLOCK;
        double la[BN_BLOCK][BN_LANES] = {{0}}, lb[BN_BLOCK][BN_LANES] = {{0}};
        for (int64_t i = 0; i < n; i++)
            for (int64_t k = 0; k < width; k++) {
                int64_t c = block + k, at = (i * C + c) * S;
                FN_T(bn_row)(x + at, dy ? dy + at : NULL,
                             relu_coef ? relu_coef + c * BN_COEFS : NULL, S,
                             shift ? shift[c] : (double)x[c * S], la[k], lb[k]);
            }
        for (int64_t k = 0; k < width; k++) {
            s1[block + k] = bn_lanes_total(la[k]);
            s2[block + k] = bn_lanes_total(lb[k]);
        }
    }
}

/* One sample's statistics, channels [c0, c1) of x (C, S): each channel's mean and the sum of the
 * squared deviations from it, into stats[2 c] and stats[2 c + 1]; from the sums of
 * d = x - x[c, 0] (a value of the row: no cancellation, as in forward's bn_sums). */
static void FN_T(bn_sample_stats)(const real *x, int64_t S, int64_t c0, int64_t c1,
                                  double *stats) {
    for (int64_t c = c0; c < c1; c++) {
        const real *row = x + c * S;
        double la[BN_LANES] = {0}, lb[BN_LANES] = {0}, shift = (double)row[0];
        FN_T(bn_row)(row, NULL, NULL, S, shift, la, lb);
        double s1 = bn_lanes_total(la), s2 = bn_lanes_total(lb);
        double squares = s2 - s1 * s1 / (double)S;
        stats[2 * c] = shift + s1 / (double)S;
        stats[2 * c + 1] = squares > 0 ? squares : 0; /* rounding */
    }
}


/* One sample's input gradient, channels [c0, c1) of x, grad_y and grad_x (C, spatial) (pointers
 * to the sample's first channel): grad_x = or += k_dy * dy + k_x * (x - mean) + k_0 with the
 * channel's coefficients from coef (C, BN_COEFS) as backward left them, dy being what a fused
 * ReLU (relu) passes back. Batch norm's backward runs it on every sample, or leaves it to the
 * node that produced x (input_grad_deferred), which runs it image by image just before reading
 * the image's gradient: the same values, without writing the gradient out and reading it back. */
void FN_T(fn_batch_norm_input_grad)(const real *x, const real *grad_y, bool relu,
                                    const real *coef, int64_t c0, int64_t c1, int64_t spatial,
                                    real *grad_x, bool accumulate) {
    for (int64_t c = c0; c < c1; c++) {
        const real *row = x + c * spatial, *gy = grad_y + c * spatial, *k = coef + c * BN_COEFS;
        real *gx = grad_x + c * spatial;
        const real m = k[BN_MEAN], scale = k[BN_SCALE], beta = k[BN_SHIFT];
        const real k_dy = k[BN_K_DY], k_x = k[BN_K_X], k_0 = k[BN_K_0];
        if (accumulate && relu)
            for (int64_t s = 0; s < spatial; s++)
                gx[s] += k_dy * (real)FN_T(bn_pass)(gy[s], FN_T(bn_normalize)(row[s], m, scale,
                                                                               beta)) +
                         k_x * (row[s] - m) + k_0;
        else if (accumulate)
            for (int64_t s = 0; s < spatial; s++) gx[s] += k_dy * gy[s] + k_x * (row[s] - m) + k_0;
        else if (relu)
            for (int64_t s = 0; s < spatial; s++)
                gx[s] = k_dy * (real)FN_T(bn_pass)(gy[s], FN_T(bn_normalize)(row[s], m, scale,
                                                                              beta)) +
                        k_x * (row[s] - m) + k_0;
        else
            for (int64_t s = 0; s < spatial; s++) gx[s] = k_dy * gy[s] + k_x * (row[s] - m) + k_0;
    }
}

typedef struct {
    const real *x;
    real *y;
    const real *gamma, *beta;
    real *running_mean, *running_var;
    bool training, relu;
    double momentum, eps;
    double *mean, *invstd;
    real *coef;
    double *sample_stats; /* statistics by sample (bn_stats_by_sample), or NULL */
    bool sample_stats_ready;
    int64_t n, c, spatial;
} FN_T(bn_forward_args);

static void FN_T(bn_forward_part)(int id, int parts, void *arg) {
    const FN_T(bn_forward_args) *a = arg;
    int64_t c0, c1, C = a->c, S = a->spatial, N = a->n;
    fn_partition(C, parts, id, &c0, &c1);
    double *mean = a->mean, *invstd = a->invstd;
    if (a->training) {
        /* Statistics pass, unless the producer took them sample by sample (sample_stats_ready).
         * By sample: each sample's mean and squared deviations, combined. Otherwise sums of
         * d = x - x[0, c, 0] rather than of x: shifting by a value of the channel keeps
         * sum(d^2) - sum(d)^2 / M free of cancellation when the mean is large next to the
         * standard deviation, in one pass; mean and invstd hold the two sums. */
        double M = (double)(N * S);
        if (a->sample_stats && !a->sample_stats_ready)
            for (int64_t i = 0; i < N; i++)
                FN_T(bn_sample_stats)(a->x + i * C * S, S, c0, c1, a->sample_stats + i * C * 2);
        else if (!a->sample_stats)
            FN_T(bn_sums)(a->x, NULL, NULL, N, C, S, c0, c1, NULL, mean, invstd);
        double keep = 1 - a->momentum, unbias = M / (M - 1);
        for (int64_t c = c0; c < c1; c++) {
            double var;
            if (a->sample_stats) {
                bn_combine(a->sample_stats, N, C, S, c, &mean[c], &var);
            } else {
                double s1 = mean[c], s2 = invstd[c];
                var = (s2 - s1 * s1 / M) / M;
                if (var < 0) var = 0; /* rounding */
                mean[c] = (double)a->x[c * S] + s1 / M;
            }
            invstd[c] = 1 / sqrt(var + a->eps);
            a->running_mean[c] = (real)(keep * a->running_mean[c] + a->momentum * mean[c]);
            a->running_var[c] = (real)(keep * a->running_var[c] + a->momentum * var * unbias);
        }
    } else {
        for (int64_t c = c0; c < c1; c++) {
            mean[c] = a->running_mean[c];
            invstd[c] = 1 / sqrt((double)a->running_var[c] + a->eps);
        }
    }
    for (int64_t c = c0; c < c1; c++) {
        real *k = a->coef + c * BN_COEFS;
        k[BN_MEAN] = (real)mean[c];
        k[BN_SCALE] = (real)(invstd[c] * (a->gamma ? a->gamma[c] : 1));
        k[BN_SHIFT] = a->beta ? a->beta[c] : 0;
    }
    /* Normalise pass. */
    for (int64_t i = 0; i < N; i++)
        for (int64_t c = c0; c < c1; c++) {
            const real *row = a->x + (i * C + c) * S, *k = a->coef + c * BN_COEFS;
            real *out = a->y + (i * C + c) * S;
            const real m = k[BN_MEAN], scale = k[BN_SCALE], shift = k[BN_SHIFT];
            if (a->relu)
                for (int64_t s = 0; s < S; s++) {
                    real v = FN_T(bn_normalize)(row[s], m, scale, shift);
                    out[s] = FN_RELU(v);
                }
            else
                for (int64_t s = 0; s < S; s++) out[s] = FN_T(bn_normalize)(row[s], m, scale, shift);
        }
}

/* x and y are (n, c, spatial); gamma, beta are (c) or NULL (no affine); running_mean and
 * running_var are (c), updated in training with factor `momentum`; mean and invstd are (c)
 * outputs: the statistics used (the batch's in training, the running ones otherwise); coef
 * (c, BN_COEFS) receives each channel's BN_MEAN, BN_SCALE and BN_SHIFT, for backward. relu: y is
 * max(y, 0) (NaN passing). Training needs n * spatial > 1. sample_stats: with spatial >=
 * BN_SAMPLE_STATS_MIN, room for (n, c, 2) doubles, which hold every sample's statistics already
 * if sample_stats_ready (handed over by the producer: input_stats_of_sample); NULL otherwise. */
void FN_T(fn_batch_norm_forward)(const real *x, real *y, const real *gamma, const real *beta,
                                 real *running_mean, real *running_var, bool training, bool relu,
                                 double momentum, double eps, double *mean, double *invstd,
                                 real *coef, double *sample_stats, bool sample_stats_ready,
                                 int64_t n, int64_t c, int64_t spatial, int threads) {
    FN_T(bn_forward_args) args = {.x = x, .y = y, .gamma = gamma, .beta = beta,
                                  .running_mean = running_mean, .running_var = running_var,
                                  .training = training, .relu = relu, .momentum = momentum,
                                  .eps = eps, .mean = mean, .invstd = invstd, .coef = coef,
                                  .sample_stats = sample_stats,
                                  .sample_stats_ready = sample_stats_ready,
                                  .n = n, .c = c, .spatial = spatial};
    int parts = fn_threads_for(2 * n * c * spatial, threads);
    fn_run_team(parts < c ? parts : (int)c, FN_T(bn_forward_part), &args);
}

typedef struct {
    const real *x, *grad_y, *gamma;
    bool relu;
    const double *mean, *invstd;
    real *coef;
    bool training;
    real *grad_x;
    bool accumulate;
    real *grad_gamma, *grad_beta;
    bool accumulate_params;
    double *sum_dy, *sum_dy_xhat;
    int64_t n, c, spatial;
} FN_T(bn_backward_args);

static void FN_T(bn_backward_part)(int id, int parts, void *arg) {
    const FN_T(bn_backward_args) *a = arg;
    int64_t c0, c1, C = a->c, S = a->spatial, N = a->n;
    fn_partition(C, parts, id, &c0, &c1);
    const double *mean = a->mean, *invstd = a->invstd;
    double *sum_dy = a->sum_dy, *sum_dy_xhat = a->sum_dy_xhat;
    double M = (double)(N * S);
    /* In training every x moved the batch statistics, so dx needs both sums; in eval mode only
     * the parameter gradients do. */
    bool sums = a->grad_gamma || a->training;
    if (sums) {
        FN_T(bn_sums)(a->x, a->grad_y, a->relu ? a->coef : NULL, N, C, S, c0, c1, mean, sum_dy,
                      sum_dy_xhat);
        /* That was sum(dy * (x - mean)); xhat = (x - mean) * invstd. */
        for (int64_t c = c0; c < c1; c++) sum_dy_xhat[c] *= invstd[c];
    }
    if (a->grad_gamma)
        for (int64_t c = c0; c < c1; c++) {
            a->grad_gamma[c] = (real)((a->accumulate_params ? a->grad_gamma[c] : 0) +
                                      sum_dy_xhat[c]);
            a->grad_beta[c] = (real)((a->accumulate_params ? a->grad_beta[c] : 0) + sum_dy[c]);
        }
    /* dx = gamma * invstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M) in training,
     * gamma * invstd * dy in eval mode; as k_dy * dy + k_x * (x - mean) + k_0 per channel. */
    for (int64_t c = c0; c < c1; c++) {
        real *k = a->coef + c * BN_COEFS;
        double g = invstd[c] * (a->gamma ? a->gamma[c] : 1);
        k[BN_K_DY] = (real)g;
        k[BN_K_X] = a->training ? (real)(-g * invstd[c] * sum_dy_xhat[c] / M) : 0;
        k[BN_K_0] = a->training ? (real)(-g * sum_dy[c] / M) : 0;
    }
    if (!a->grad_x) return;
    for (int64_t i = 0; i < N; i++)
        FN_T(fn_batch_norm_input_grad)(a->x + i * C * S, a->grad_y + i * C * S, a->relu, a->coef,
                                       c0, c1, S, a->grad_x + i * C * S, a->accumulate);
}

/* x, grad_y and grad_x are (n, c, spatial); relu: forward applied a ReLU, and grad_y is the
 * ReLU's output gradient; gamma is (c) or NULL; mean, invstd (c) and coef (c, BN_COEFS) as
 * forward left them; training selects the formula of the mode forward ran in. coef receives
 * BN_K_DY, BN_K_X and BN_K_0, the input gradient's coefficients (fn_batch_norm_input_grad).
 * grad_x (or NULL: left to fn_batch_norm_input_grad) is overwritten, or added to with accumulate;
 * grad_gamma and grad_beta (c), both or neither, likewise with accumulate_params. scratch holds
 * 2 * c doubles. */
void FN_T(fn_batch_norm_backward)(const real *x, const real *grad_y, bool relu, const real *gamma,
                                  const double *mean, const double *invstd, real *coef,
                                  bool training, real *grad_x, bool accumulate, real *grad_gamma,
                                  real *grad_beta, bool accumulate_params, double *scratch,
                                  int64_t n, int64_t c, int64_t spatial, int threads) {
    FN_T(bn_backward_args) args = {.x = x, .grad_y = grad_y, .relu = relu, .gamma = gamma,
                                   .mean = mean, .invstd = invstd, .coef = coef,
                                   .training = training, .grad_x = grad_x,
                                   .accumulate = accumulate, .grad_gamma = grad_gamma,
                                   .grad_beta = grad_beta,
                                   .accumulate_params = accumulate_params, .sum_dy = scratch,
                                   .sum_dy_xhat = scratch + c, .n = n, .c = c,
                                   .spatial = spatial};
    int parts = fn_threads_for(2 * n * c * spatial, threads);
    fn_run_team(parts < c ? parts : (int)c, FN_T(bn_backward_part), &args);
}

/* Where the node's saved state holds its coefficients (c, BN_COEFS): after mean and invstd. */
static real *FN_T(bn_coef)(const fn_node *node) {
    return (real *)((double *)node->saved + 2 * node->attr.batch_norm.channels);
}

/* And its statistics by sample (batch, c, 2), after the coefficients; NULL without. */
static double *FN_T(bn_sample_stats_of)(const fn_node *node) {
    if (!bn_stats_by_sample(node)) return NULL;
    return (double *)(FN_T(bn_coef)(node) + BN_COEFS * node->attr.batch_norm.channels);
}

static fn_status FN_T(batch_norm_forward)(fn_node *node, const fn_model_ctx *ctx) {
    int64_t c = node->attr.batch_norm.channels, spatial = node->out_size / c;
    if (ctx->training && ctx->batch * spatial == 1) return single_value_error(node, ctx->batch);
    bool affine = node->attr.batch_norm.affine;
    int b = affine ? 2 : 0; /* the buffers follow weight and bias */
    double momentum = node->attr.batch_norm.momentum;
    if (ctx->training) {
        real *tracked = (real *)node->param[b + 2];
        *tracked += 1;
        if (momentum < 0) momentum = 1 / (double)*tracked; /* cumulative average */
    }
    double *mean = (double *)node->saved;
    FN_T(fn_batch_norm_forward)((const real *)node->in[0], (real *)node->out,
                                affine ? (const real *)node->param[0] : NULL,
                                affine ? (const real *)node->param[1] : NULL,
                                (real *)node->param[b], (real *)node->param[b + 1], ctx->training,
                                node->relu_fused, momentum, node->attr.batch_norm.eps, mean,
                                mean + c, FN_T(bn_coef)(node), FN_T(bn_sample_stats_of)(node),
                                node->input_stats_ready, ctx->batch, c, spatial, ctx->threads);
    node->input_stats_ready = false; /* used */
    return FN_OK;
}

static fn_status FN_T(batch_norm_backward)(fn_node *node, const fn_model_ctx *ctx) {
    int64_t c = node->attr.batch_norm.channels, spatial = node->out_size / c;
    bool affine = node->attr.batch_norm.affine;
    if (!node->grad_in[0] && !affine) return FN_OK; /* nothing wanted */
    const double *mean = (const double *)node->saved;
    FN_T(fn_batch_norm_backward)((const real *)node->in[0], (const real *)node->grad_out,
                                 node->relu_fused, affine ? (const real *)node->param[0] : NULL,
                                 mean, mean + c, FN_T(bn_coef)(node), ctx->training,
                                 node->input_grad_deferred ? NULL : (real *)node->grad_in[0],
                                 node->grad_in_accumulate[0],
                                 affine ? (real *)node->grad[0] : NULL,
                                 affine ? (real *)node->grad[1] : NULL,
                                 ctx->accumulate_param_grads, (double *)ctx->workspace,
                                 ctx->batch, c, spatial, ctx->threads);
    return FN_OK;
}

/* Sample `sample`'s statistics, from the node that produced the input, as it writes it. */
static void FN_T(batch_norm_input_stats_of_sample)(fn_node *node, int64_t sample, const void *x) {
    double *stats = FN_T(bn_sample_stats_of)(node);
    if (!stats) return; /* too few values a sample: forward reads the batch instead */
    int64_t c = node->attr.batch_norm.channels;
    FN_T(bn_sample_stats)((const real *)x, node->out_size / c, 0, c, stats + sample * c * 2);
}

/* Sample `sample`'s input gradient, for the node that produced the input (input_grad_deferred),
 * after this node's backward has run. */
static void FN_T(batch_norm_input_grad_of_sample)(const fn_node *node, int64_t sample, void *out) {
    int64_t c = node->attr.batch_norm.channels, size = node->out_size;
    FN_T(fn_batch_norm_input_grad)((const real *)node->in[0] + sample * size,
                                   (const real *)node->grad_out + sample * size, node->relu_fused,
                                   FN_T(bn_coef)(node), 0, c, size / c, (real *)out, false);
}

#endif
