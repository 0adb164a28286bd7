/* softmax.c — softmax and log-softmax over the first per-sample axis (PyTorch's nn.Softmax(dim=1)
 * and nn.LogSoftmax(dim=1)): features of an (N, C) input, channels of an (N, C, H, W) one, at each
 * spatial position on its own.
 *
 *     softmax:      y_c = exp(x_c - m) / sum_k exp(x_k - m)
 *     log_softmax:  y_c = x_c - m - log(sum_k exp(x_k - m)),     m = max_k x_k
 *
 * Subtracting the maximum keeps every exponential in (0, 1], so no input overflows and the sum is
 * at least 1. Sums are taken in double. Backward needs only the output:
 *
 *     softmax:      dx_c = y_c * (dy_c - sum_k dy_k y_k)
 *     log_softmax:  dx_c = dy_c - exp(y_c) * sum_k dy_k
 *
 * Each (sample, position) is computed by one thread, so results do not depend on the thread count.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

extern const fn_op fn_op_log_softmax;

static fn_status softmax_configure(fn_node *node, const fn_json *spec) {
    const fn_shape *in = &node->in_shape[0];
    const char *type = node->op->type;
    int64_t dim;
    FN_TRY(fn_json_get_int(spec, "dim", 0, 1, &dim, node->name));
    /* Axes count the batch: a sample of ndim dimensions is an input of ndim + 1. */
    int64_t axes = in->ndim + 1;
    if ((dim < 0 ? dim + axes : dim) != 1) {
        char buf[64];
        return fn_error(FN_EINVAL,
                        "node '%s': %s over dim=%lld of an input of shape (N, %s: only dim=1 (the "
                        "first per-sample axis: features or channels) is supported",
                        node->name, type, (long long)dim, fn_shape_str(in, buf, sizeof buf) + 1);
    }
    node->attr.softmax.channels = in->dim[0];
    node->attr.softmax.spatial = fn_shape_size(in) / in->dim[0];
    node->out_shape = *in;
    node->n_params = 0;
    return FN_OK;
}

static fn_status softmax_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status softmax_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status softmax_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status softmax_backward_f64(fn_node *node, const fn_model_ctx *ctx);

#define FN_SOFTMAX_OP(op_name, type_name)                                                        \
    const fn_op op_name = {                                                                      \
        .type = type_name,                                                                       \
        .min_inputs = 1,                                                                         \
        .max_inputs = 1,                                                                         \
        .configure = softmax_configure,                                                          \
        .forward = {softmax_forward_f32, softmax_forward_f64},                                   \
        .backward = {softmax_backward_f32, softmax_backward_f64},                                \
        .backward_ignores_inputs = true,                                                         \
    };
FN_SOFTMAX_OP(fn_op_softmax, "softmax")
FN_SOFTMAX_OP(fn_op_log_softmax, "log_softmax")

/* Partial sums of a row of features' exponentials (fn_softmax_forward). */
#define SOFTMAX_LANES 8

/* An exp per element: worth a thread from fewer elements than a copy is. */
static int softmax_threads(int64_t count, int threads) {
    return fn_threads_for(8 * count, threads);
}

#define FN_TEMPLATE_FILE "softmax.c"
#include "template.h"

#else /* templated half */

/* x, y (n, c, spatial), normalised over c at each (sample, position); take_log selects
 * log-softmax.
 * The c values of a position are `spatial` apart. A thread takes consecutive positions of a
 * sample, so the cache lines of a channel plane that one position loads serve the next ones. */
void FN_T(fn_softmax_forward)(const real *x, real *y, bool take_log, int64_t n, int64_t c,
                              int64_t spatial, int threads) {
    int t = softmax_threads(n * c * spatial, threads);
    if (spatial == 1 && c >= 2 * FN_EXP_LANES) {
        /* Rows of c contiguous values (features), at least two vectors long: the maximum in lanes
         * (fn_max_lanes), the shifted row written to y and exponentiated there as vectors
         * (fn_exp_nonpositive), summed in SOFTMAX_LANES partial sums added pairwise. The
         * element-by-element loops below took 3.5 ns an element (libm's exp, and a running
         * maximum and sum that each wait on the last step); 64 x 1000 230 -> 76 us, 256 x 100
         * 113 -> 47 us, one thread, through the model. Shorter rows keep those loops, which
         * cost less than the vectors' remainders there (64 x 10: 3.4 against 8.4 us). */
        FN_PARALLEL_LOOP(t, i, n, {
            const real *xr = x + i * c;
            real *yr = y + i * c;
            const real m = FN_T(fn_max_lanes)(xr, c); /* NaN aside: a NaN makes the row NaN */
            for (int64_t k = 0; k < c; k++) yr[k] = xr[k] - m;
            FN_T(fn_exp_nonpositive)(yr, c);
            double partial[SOFTMAX_LANES] = {0};
            int64_t k = 0;
            for (; k + SOFTMAX_LANES <= c; k += SOFTMAX_LANES)
                for (int j = 0; j < SOFTMAX_LANES; j++) partial[j] += (double)yr[k + j];
            for (int j = 0; k < c; k++, j++) partial[j] += (double)yr[k];
            for (int width = SOFTMAX_LANES / 2; width > 0; width /= 2)
                for (int j = 0; j < width; j++) partial[j] += partial[j + width];
            const double sum = partial[0];
            if (take_log) {
                real shift = (real)((double)m + log(sum));
                for (int64_t j = 0; j < c; j++) yr[j] = xr[j] - shift;
            } else {
                real scale = (real)(1 / sum);
                for (int64_t j = 0; j < c; j++) yr[j] *= scale;
            }
        });
        return;
    }
    FN_PARALLEL_LOOP(t, r, n * spatial, {
        int64_t base = (r / spatial) * c * spatial + r % spatial;
        const real *xr = x + base;
        real *yr = y + base;
        real m = xr[0];
        for (int64_t k = 1; k < c; k++)
            if (xr[k * spatial] > m) m = xr[k * spatial];
        double sum = 0;
        if (take_log) {
            for (int64_t k = 0; k < c; k++) sum += (double)exp(xr[k * spatial] - m);
            real shift = (real)((double)m + log(sum));
            for (int64_t k = 0; k < c; k++) yr[k * spatial] = xr[k * spatial] - shift;
        } else {
            for (int64_t k = 0; k < c; k++) {
                real e = exp(xr[k * spatial] - m);
                yr[k * spatial] = e;
                sum += (double)e;
            }
            real scale = (real)(1 / sum);
            for (int64_t k = 0; k < c; k++) yr[k * spatial] *= scale;
        }
    });
}

/* y, grad_y, grad_x (n, c, spatial); grad_x is d loss / d x, or that added with accumulate. */
void FN_T(fn_softmax_backward)(const real *y, const real *grad_y, real *grad_x, bool take_log,
                               bool accumulate, int64_t n, int64_t c, int64_t spatial,
                               int threads) {
    int t = softmax_threads(n * c * spatial, threads);
    FN_PARALLEL_LOOP(t, r, n * spatial, {
        int64_t base = (r / spatial) * c * spatial + r % spatial;
        const real *yr = y + base, *gy = grad_y + base;
        real *gx = grad_x + base;
        double sum = 0;
        if (take_log) {
            for (int64_t k = 0; k < c; k++) sum += (double)gy[k * spatial];
            for (int64_t k = 0; k < c; k++) {
                int64_t i = k * spatial;
                gx[i] = (accumulate ? gx[i] : 0) + (gy[i] - exp(yr[i]) * (real)sum);
            }
        } else {
            for (int64_t k = 0; k < c; k++)
                sum += (double)gy[k * spatial] * (double)yr[k * spatial];
            for (int64_t k = 0; k < c; k++) {
                int64_t i = k * spatial;
                gx[i] = (accumulate ? gx[i] : 0) + yr[i] * (gy[i] - (real)sum);
            }
        }
    });
}

static fn_status FN_T(softmax_forward)(fn_node *node, const fn_model_ctx *ctx) {
    FN_T(fn_softmax_forward)((const real *)node->in[0], (real *)node->out,
                             node->op == &fn_op_log_softmax, ctx->batch,
                             node->attr.softmax.channels, node->attr.softmax.spatial,
                             ctx->threads);
    return FN_OK;
}

static fn_status FN_T(softmax_backward)(fn_node *node, const fn_model_ctx *ctx) {
    if (!node->grad_in[0]) return FN_OK;
    FN_T(fn_softmax_backward)((const real *)node->out, (const real *)node->grad_out,
                              (real *)node->grad_in[0], node->op == &fn_op_log_softmax,
                              node->grad_in_accumulate[0], ctx->batch,
                              node->attr.softmax.channels, node->attr.softmax.spatial,
                              ctx->threads);
    return FN_OK;
}

#endif
