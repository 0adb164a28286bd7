/* add.c — the sum of several inputs of one shape: the join of a residual connection. */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

static fn_status add_configure(fn_node *node, const fn_json *spec) {
    (void)spec;
    for (int j = 1; j < node->n_inputs; j++) {
        const fn_shape *a = &node->in_shape[0], *b = &node->in_shape[j];
        bool same = a->ndim == b->ndim;
        for (int d = 0; same && d < a->ndim; d++) same = a->dim[d] == b->dim[d];
        if (!same) {
            char sa[64], sb[64];
            return fn_error(FN_EINVAL,
                            "node '%s': add needs inputs of one shape, got %s and %s (a residual "
                            "block whose main path changes the shape needs a shortcut that "
                            "does too)",
                            node->name, fn_shape_str(a, sa, sizeof sa), fn_shape_str(b, sb, sizeof sb));
        }
    }
    node->out_shape = node->in_shape[0];
    return FN_OK;
}

static fn_status add_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status add_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status add_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status add_backward_f64(fn_node *node, const fn_model_ctx *ctx);

const fn_op fn_op_add = {
    .type = "add",
    .min_inputs = 2,
    .max_inputs = FN_MAX_INPUTS,
    .configure = add_configure,
    .forward = {add_forward_f32, add_forward_f64},
    .backward = {add_backward_f32, add_backward_f64},
    .backward_ignores_output = true,
    .backward_ignores_inputs = true,
    .in_place = true,
    .fuses_relu = true,
};

#define FN_TEMPLATE_FILE "add.c"
#include "template.h"

#else /* templated half */

/* inputs are k arrays of (n, size); y (n, size) is their sum, or its ReLU when one is fused
 * (applied with the last input). */
static fn_status FN_T(add_forward)(fn_node *node, const fn_model_ctx *ctx) {
    int64_t count = ctx->batch * node->out_size;
    real *y = node->out;
    if (y != node->in[0]) /* else planned in place: y already holds input 0 */
        FN_T(fn_copy_or_add)(y, node->in[0], count, false, ctx->threads);
    int last = node->n_inputs - 1;
    for (int j = 1; j < last; j++)
        FN_T(fn_copy_or_add)(y, node->in[j], count, true, ctx->threads);
    const real *x = node->in[last];
    int t = fn_threads_for(count, ctx->threads);
    if (node->relu_fused) {
        FN_PARALLEL_LOOP(t, i, count, {
            real v = y[i] + x[i];
            y[i] = FN_RELU(v);
        });
    } else {
        FN_T(fn_copy_or_add)(y, x, count, true, ctx->threads);
    }
    return FN_OK;
}

/* Every input's gradient is the output's; with a fused ReLU, where its output is positive. */
static fn_status FN_T(add_backward)(fn_node *node, const fn_model_ctx *ctx) {
    int64_t count = ctx->batch * node->out_size;
    const real *gy = node->grad_out;
    for (int j = 0; j < node->n_inputs; j++) {
        real *gx = node->grad_in[j];
        if (!gx) continue;
        if (node->relu_fused) /* the ReLU's backward, as its node would have run it */
            FN_T(fn_activation_backward)(FN_ACT_RELU, &(fn_activation_params){0}, NULL, node->out,
                                         gy, gx, node->grad_in_accumulate[j], count,
                                         ctx->threads);
        else
            FN_T(fn_copy_or_add)(gx, gy, count, node->grad_in_accumulate[j], ctx->threads);
    }
    return FN_OK;
}

#endif
