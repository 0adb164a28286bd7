/* linear.c — fully connected layer: y = x @ weight^T + bias (PyTorch's nn.Linear layout).
 *
 * A ReLU that directly follows, on this layer's output alone, is applied here (relu_fused): by the
 * GEMM to each tile or block of y as it is finished, and in backward to the output gradient in
 * the pass that sums the bias gradient, where the ReLU's node made a pass of its own each way. */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

#include <math.h>

static fn_status linear_configure(fn_node *node, const fn_json *spec) {
    int64_t in_features, out_features;
    int bias;
    FN_TRY(fn_json_get_int(spec, "in_features", 1, 0, &in_features, node->name));
    FN_TRY(fn_json_get_int(spec, "out_features", 1, 0, &out_features, node->name));
    FN_TRY(fn_json_get_bool(spec, "bias", 0, 1, &bias, node->name));
    if (in_features < 1 || out_features < 1 || in_features > INT32_MAX ||
        out_features > INT32_MAX)
        return fn_error(FN_EINVAL, "node '%s': Linear(%lld, %lld) needs sizes in [1, 2^31)",
                        node->name, (long long)in_features, (long long)out_features);
    int64_t given = fn_shape_size(&node->in_shape[0]);
    if (given != in_features) {
        char buf[64];
        return fn_error(FN_EINVAL,
                        "node '%s': Linear(%lld, %lld) expects %lld input features per sample, "
                        "but its input has shape %s (%lld features)",
                        node->name, (long long)in_features, (long long)out_features,
                        (long long)in_features, fn_shape_str(&node->in_shape[0], buf, sizeof buf),
                        (long long)given);
    }
    node->attr.linear.in_features = in_features;
    node->attr.linear.out_features = out_features;
    node->attr.linear.bias = bias != 0;
    /* PyTorch's fans of an (out, in) weight: fan_in = in, fan_out = out. */
    FN_TRY(fn_init_parse(spec, "init", false, in_features, out_features,
                         &node->attr.linear.weight_init, node->name));
    const fn_json *bias_init = fn_json_get(spec, "bias_init");
    if (!bias && bias_init && bias_init->type != FN_JSON_NULL)
        return fn_error(FN_EINVAL, "node '%s': bias_init is given but the layer has no bias",
                        node->name);
    FN_TRY(fn_init_parse(spec, "bias_init", true, in_features, out_features,
                         &node->attr.linear.bias_init, node->name));
    node->out_shape = (fn_shape){1, {out_features}};
    node->n_params = bias ? 2 : 1;
    node->param_decl[0] = (fn_param_decl){.name = "weight", .shape = {2, {out_features, in_features}}};
    if (bias)
        node->param_decl[1] = (fn_param_decl){.name = "bias", .shape = {1, {out_features}}, .is_bias = true};
    return FN_OK;
}

/* From the distributions configure resolved ("init", "bias_init"; PyTorch's default without
 * them). */
static void linear_init(fn_node *node, fn_dtype dtype, void *const params[], uint64_t seed) {
    int64_t in = node->attr.linear.in_features, out = node->attr.linear.out_features;
    fn_fill_dist(&node->attr.linear.weight_init, dtype, params[0], out * in, seed,
                 fn_param_stream(node, 0));
    if (node->attr.linear.bias)
        fn_fill_dist(&node->attr.linear.bias_init, dtype, params[1], out, seed,
                     fn_param_stream(node, 1));
}

static fn_status linear_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status linear_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status linear_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status linear_backward_f64(fn_node *node, const fn_model_ctx *ctx);

const fn_op fn_op_linear = {
    .type = "linear",
    .min_inputs = 1,
    .max_inputs = 1,
    .configure = linear_configure,
    .init = linear_init,
    .forward = {linear_forward_f32, linear_forward_f64},
    .backward = {linear_backward_f32, linear_backward_f64},
    .backward_ignores_output = true, /* but a fused ReLU's mask: its node keeps the output */
    .fuses_relu = true,
};

#define FN_TEMPLATE_FILE "linear.c"
#include "template.h"

#else /* templated half */

/* x is (n, in), weight is (out, in), bias is (out) or NULL, y is (n, out), ReLU'd with relu;
 * reversed: the weights read last row first where the product streams them (fn_gemm_ordered). */
void FN_T(fn_linear_forward)(const real *x, const real *weight, const real *bias, real *y,
                             int64_t n, int64_t in, int64_t out, int threads, bool reversed,
                             bool relu) {
    /* The GEMM adds the bias: to each tile before it goes into y, or to y before the product is
     * added to it, on the thread that writes those rows (one rounding of bias + product either
     * way); then the ReLU, as the ReLU's node computed it on the finished sums. x after a ReLU
     * is about half zeros, which fn_gemm_sparse skips (it counts them first). */
    FN_T(fn_gemm_sparse)(false, true, n, out, in, x, in, weight, in, 0, y, out, threads, reversed,
                         bias, relu, false);
}

typedef struct {
    const real *y;
    real *grad_y, *grad_bias;
    int64_t n, out;
    bool accumulate_bias;
} FN_T(relu_mask_job);

/* Columns [begin, end) of relu_mask_job: grad_y where y > 0, else 0, as the ReLU's backward
 * writes it (0 + the select), and each column's sum over the rows in their order into
 * grad_bias unless NULL. The columns go MASK_COLUMNS at a time, their sums in registers down the
 * rows, where the bias gradient read and written at every row had cost as much as the mask. */
#ifndef MASK_COLUMNS
#define MASK_COLUMNS 64
#endif
static inline __attribute__((always_inline)) void FN_T(relu_mask_block)(
    const FN_T(relu_mask_job) *job, int64_t j0, const int64_t width) {
    real *restrict grad_bias = job->grad_bias;
    real sums[MASK_COLUMNS];
    for (int64_t j = 0; j < width; j++)
        sums[j] = grad_bias && job->accumulate_bias ? grad_bias[j0 + j] : 0;
    for (int64_t i = 0; i < job->n; i++) {
        const real *restrict y = job->y + i * job->out + j0;
        real *restrict g = job->grad_y + i * job->out + j0;
        for (int64_t j = 0; j < width; j++) {
            real v = (real)0 + (y[j] > 0 ? g[j] : 0);
            g[j] = v;
            sums[j] += v;
        }
    }
    if (grad_bias)
        for (int64_t j = 0; j < width; j++) grad_bias[j0 + j] = sums[j];
}

static void FN_T(relu_mask_columns)(const FN_T(relu_mask_job) *job, int64_t begin, int64_t end) {
    int64_t j0 = begin;
    for (; j0 + MASK_COLUMNS <= end; j0 += MASK_COLUMNS)
        FN_T(relu_mask_block)(job, j0, MASK_COLUMNS);
    for (; j0 < end; j0 += 16) FN_T(relu_mask_block)(job, j0, end - j0 < 16 ? end - j0 : 16);
}

static void FN_T(relu_mask_part)(int id, int parts, void *arg) {
    const FN_T(relu_mask_job) *job = arg;
    int64_t begin, end; /* in blocks of 16 columns: no thread shares a cache line of a row */
    fn_partition((job->out + 15) / 16, parts, id, &begin, &end);
    begin *= 16;
    end = end * 16 < job->out ? end * 16 : job->out;
    if (end > begin) FN_T(relu_mask_columns)(job, begin, end);
}

/* x is (n, in), weight is (out, in), grad_y is (n, out);
 * grad_x (n, in) = grad_x_beta * grad_x + grad_y @ weight, skipped when grad_x is NULL;
 * grad_weight (out, in) = grad_param_beta * grad_weight + grad_y^T @ x;
 * grad_bias (out) = grad_param_beta * grad_bias + sum over the batch of grad_y (if not NULL).
 * Both products take grad_y as a sparse A (fn_gemm_sparse): after a ReLU, fused or not, about
 * half of it is zeros; fn_gemm_sparse counts them and runs the dense product where they are too
 * few. The weight gradient takes x instead where x has fewer nonzeros (the output of a ReLU
 * whose layer's gradient is denser). The same operands thus give the same bits whether their
 * ReLUs were fused or not. */
void FN_T(fn_linear_backward)(const real *x, const real *weight, const real *grad_y, real *grad_x,
                              real grad_x_beta, real *grad_weight, real *grad_bias,
                              real grad_param_beta, int64_t n, int64_t in, int64_t out,
                              int threads) {
    FN_T(fn_gemm_sparse)(true, false, out, in, n, grad_y, out, x, in, grad_param_beta,
                         grad_weight, in, threads, false, NULL, false, true);
    if (grad_bias) {
        /* Row by row so the inner loop runs along contiguous memory and vectorises. */
        if (grad_param_beta == 0)
            for (int64_t j = 0; j < out; j++) grad_bias[j] = 0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < out; j++) grad_bias[j] += grad_y[i * out + j];
    }
    if (grad_x)
        FN_T(fn_gemm_sparse)(false, false, n, in, out, grad_y, out, weight, in, grad_x_beta,
                             grad_x, in, threads, false, NULL, false, false);
}

/* Each forward reads the weights in the other order than the last (fn_gemm_ordered): a batch-1
 * forward streams them, and starts where the last one ended, on what is still in cache. */
static fn_status FN_T(linear_forward)(fn_node *node, const fn_model_ctx *ctx) {
    node->weights_reversed = !node->weights_reversed;
    FN_T(fn_linear_forward)((const real *)node->in[0], (const real *)node->param[0],
                            node->attr.linear.bias ? (const real *)node->param[1] : NULL,
                            (real *)node->out, ctx->batch, node->attr.linear.in_features,
                            node->attr.linear.out_features, ctx->threads,
                            node->weights_reversed, node->relu_fused);
    return FN_OK;
}

static fn_status FN_T(linear_backward)(fn_node *node, const fn_model_ctx *ctx) {
    real *grad_bias = node->attr.linear.bias ? (real *)node->grad[1] : NULL;
    if (node->relu_fused) {
        /* The fused ReLU's backward, in place: the output gradient is this node's alone (the
         * ReLU's, which nothing reads after it). The bias gradient comes with it. */
        FN_T(relu_mask_job) job = {(const real *)node->out, (real *)node->grad_out, grad_bias,
                                   ctx->batch, node->attr.linear.out_features,
                                   ctx->accumulate_param_grads};
        int parts = fn_threads_for(ctx->batch * job.out, ctx->threads);
        int64_t blocks = (job.out + 15) / 16;
        fn_run_team(parts < blocks ? parts : (int)blocks, FN_T(relu_mask_part), &job);
        grad_bias = NULL;
    }
    FN_T(fn_linear_backward)((const real *)node->in[0], (const real *)node->param[0],
                             (const real *)node->grad_out, (real *)node->grad_in[0],
                             node->grad_in_accumulate[0] ? 1 : 0, (real *)node->grad[0],
                             grad_bias, ctx->accumulate_param_grads ? 1 : 0, ctx->batch,
                             node->attr.linear.in_features, node->attr.linear.out_features,
                             ctx->threads);
    return FN_OK;
}

#endif
