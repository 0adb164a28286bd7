/* prelu.c — parametric ReLU (PyTorch's nn.PReLU(num_parameters=1, init=0.25)):
 *
 *     y = x             for x > 0
 *     y = weight[c] * x otherwise
 *
 * with one learned slope per channel (the first per-sample dimension) or one shared by all
 * (num_parameters=1). Input and output are (n, c, spatial).
 *
 * The slope's gradient is a sum over the batch and space. Backward writes one partial sum per
 * (sample, channel) row into the workspace, in double, and adds the rows up in order afterwards:
 * the sums have the same bits for any thread count.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

static fn_status prelu_configure(fn_node *node, const fn_json *spec) {
    int64_t num_parameters;
    double init;
    FN_TRY(fn_json_get_int(spec, "num_parameters", 0, 1, &num_parameters, node->name));
    FN_TRY(fn_json_get_number(spec, "init", 0, 0.25, &init, node->name));
    const fn_shape *in = &node->in_shape[0];
    int64_t channels = in->dim[0];
    if (num_parameters != 1 && num_parameters != channels) {
        char buf[64];
        return fn_error(FN_EINVAL,
                        "node '%s': prelu with num_parameters=%lld needs 1 or as many as the "
                        "input's channels (its first dimension), but its input has shape %s",
                        node->name, (long long)num_parameters, fn_shape_str(in, buf, sizeof buf));
    }
    node->attr.prelu.channels = channels;
    node->attr.prelu.num_parameters = num_parameters;
    node->attr.prelu.spatial = fn_shape_size(in) / channels;
    node->attr.prelu.init = init;
    node->out_shape = *in;
    node->n_params = 1;
    node->param_decl[0] = (fn_param_decl){.name = "weight", .shape = {1, {num_parameters}}};
    return FN_OK;
}

/* Every slope starts at `init` (0.25 by default), as PyTorch's. */
static void prelu_init(fn_node *node, fn_dtype dtype, void *const params[], uint64_t seed) {
    (void)seed;
    fn_fill_constant(dtype, params[0], node->attr.prelu.num_parameters, node->attr.prelu.init);
}

/* Backward's partial sums of the slope gradient, one double per (sample, channel). */
static size_t prelu_workspace(const fn_node *node, int64_t batch, int threads, size_t elem_size) {
    (void)threads, (void)elem_size;
    return (size_t)batch * (size_t)node->attr.prelu.channels * sizeof(double);
}

static fn_status prelu_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status prelu_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status prelu_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status prelu_backward_f64(fn_node *node, const fn_model_ctx *ctx);

const fn_op fn_op_prelu = {
    .type = "prelu",
    .min_inputs = 1,
    .max_inputs = 1,
    .configure = prelu_configure,
    .init = prelu_init,
    .workspace = prelu_workspace,
    .forward = {prelu_forward_f32, prelu_forward_f64},
    .backward = {prelu_backward_f32, prelu_backward_f64},
    .backward_ignores_output = true,
};

#define FN_TEMPLATE_FILE "prelu.c"
#include "template.h"

#else /* templated half */

/* x, y (n, c, spatial); weight (c), or (1) when shared. */
void FN_T(fn_prelu_forward)(const real *x, const real *weight, bool shared, real *y, int64_t n,
                            int64_t c, int64_t spatial, int threads) {
    int t = fn_threads_for(n * c * spatial, threads);
    FN_PARALLEL_LOOP(t, row, n * c, {
        real slope = weight[shared ? 0 : row % c];
        const real *xr = x + row * spatial;
        real *yr = y + row * spatial;
        for (int64_t s = 0; s < spatial; s++) yr[s] = xr[s] > 0 ? xr[s] : slope * xr[s];
    });
}

/* x, grad_y (n, c, spatial); weight (c) or (1) when shared.
 * grad_x (n, c, spatial) = grad_y * (x > 0 ? 1 : slope), or += with accumulate; skipped if NULL.
 * grad_weight (c) or (1) = sum of grad_y * x where x <= 0, or += with accumulate_weight.
 * row_sums holds n * c doubles. */
void FN_T(fn_prelu_backward)(const real *x, const real *weight, bool shared, const real *grad_y,
                             real *grad_x, bool accumulate, real *grad_weight,
                             bool accumulate_weight, double *row_sums, int64_t n, int64_t c,
                             int64_t spatial, int threads) {
    int t = fn_threads_for(n * c * spatial, threads);
    FN_PARALLEL_LOOP(t, row, n * c, {
        real slope = weight[shared ? 0 : row % c];
        const real *xr = x + row * spatial, *gr = grad_y + row * spatial;
        double sum = 0;
        for (int64_t s = 0; s < spatial; s++)
            if (!(xr[s] > 0)) sum += (double)gr[s] * (double)xr[s];
        row_sums[row] = sum;
        if (grad_x) {
            real *gx = grad_x + row * spatial;
            for (int64_t s = 0; s < spatial; s++)
                gx[s] = (accumulate ? gx[s] : 0) + (xr[s] > 0 ? gr[s] : slope * gr[s]);
        }
    });
    /* Row sums in a fixed order: sample by sample, for each slope. */
    int64_t slopes = shared ? 1 : c;
    for (int64_t k = 0; k < slopes; k++) {
        double total = 0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t ch = shared ? 0 : k; ch < (shared ? c : k + 1); ch++)
                total += row_sums[i * c + ch];
        grad_weight[k] = (real)((accumulate_weight ? (double)grad_weight[k] : 0) + total);
    }
}

static fn_status FN_T(prelu_forward)(fn_node *node, const fn_model_ctx *ctx) {
    FN_T(fn_prelu_forward)((const real *)node->in[0], (const real *)node->param[0],
                           node->attr.prelu.num_parameters == 1, (real *)node->out, ctx->batch,
                           node->attr.prelu.channels, node->attr.prelu.spatial, ctx->threads);
    return FN_OK;
}

static fn_status FN_T(prelu_backward)(fn_node *node, const fn_model_ctx *ctx) {
    FN_T(fn_prelu_backward)((const real *)node->in[0], (const real *)node->param[0],
                            node->attr.prelu.num_parameters == 1, (const real *)node->grad_out,
                            (real *)node->grad_in[0], node->grad_in_accumulate[0],
                            (real *)node->grad[0], ctx->accumulate_param_grads,
                            (double *)ctx->workspace, ctx->batch, node->attr.prelu.channels,
                            node->attr.prelu.spatial, ctx->threads);
    return FN_OK;
}

#endif
