/* activation.c — elementwise activations: ReLU, LeakyReLU, Sigmoid, Tanh.
 *
 * They share one shape rule (output shape = input shape) and one parallel loop; each has its own
 * formula. Backward reads what is cheapest: ReLU, Sigmoid and Tanh their output, LeakyReLU its
 * input (the output's sign is the input's only for a positive slope).
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

#include <string.h>

fn_activation_kind fn_activation_kind_of(const fn_op *op);

static fn_status activation_configure(fn_node *node, const fn_json *spec) {
    node->out_shape = node->in_shape[0];
    node->n_params = 0;
    if (fn_activation_kind_of(node->op) == FN_ACT_LEAKY_RELU)
        FN_TRY(fn_json_get_number(spec, "negative_slope", 0, 0.01,
                                  &node->attr.activation.negative_slope, node->name));
    return FN_OK;
}

static fn_status activation_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status activation_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status activation_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status activation_backward_f64(fn_node *node, const fn_model_ctx *ctx);

#define FN_ACTIVATION_OP(op_name, type_name)                                                     \
    const fn_op op_name = {                                                                      \
        .type = type_name,                                                                       \
        .min_inputs = 1,                                                                         \
        .max_inputs = 1,                                                                         \
        .configure = activation_configure,                                                       \
        .init = NULL,                                                                            \
        .forward = {activation_forward_f32, activation_forward_f64},                             \
        .backward = {activation_backward_f32, activation_backward_f64},                          \
    };
FN_ACTIVATION_OP(fn_op_relu, "relu")
FN_ACTIVATION_OP(fn_op_leaky_relu, "leaky_relu")
FN_ACTIVATION_OP(fn_op_sigmoid, "sigmoid")
FN_ACTIVATION_OP(fn_op_tanh, "tanh")

fn_activation_kind fn_activation_kind_of(const fn_op *op) {
    if (op == &fn_op_leaky_relu) return FN_ACT_LEAKY_RELU;
    if (op == &fn_op_sigmoid) return FN_ACT_SIGMOID;
    if (op == &fn_op_tanh) return FN_ACT_TANH;
    return FN_ACT_RELU;
}

#define FN_TEMPLATE_FILE "activation.c"
#include "template.h"

#else /* templated half */

/* x and y are (count) elements, any shape. */
void FN_T(fn_activation_forward)(fn_activation_kind kind, real negative_slope, const real *x,
                                 real *y, int64_t count, int threads) {
    int t = fn_threads_for(count, threads);
    switch (kind) {
    case FN_ACT_RELU:
        FN_PARALLEL_LOOP(t, i, count, { y[i] = x[i] > 0 ? x[i] : 0; });
        break;
    case FN_ACT_LEAKY_RELU:
        FN_PARALLEL_LOOP(t, i, count, { y[i] = x[i] > 0 ? x[i] : negative_slope * x[i]; });
        break;
    case FN_ACT_SIGMOID:
        /* exp of a non-positive argument only, so neither branch overflows. */
        FN_PARALLEL_LOOP(t, i, count, {
            real e = exp(-fabs(x[i]));
            y[i] = x[i] >= 0 ? 1 / (1 + e) : e / (1 + e);
        });
        break;
    case FN_ACT_TANH:
        FN_PARALLEL_LOOP(t, i, count, { y[i] = tanh(x[i]); });
        break;
    }
}

/* x, y, grad_y, grad_x are (count) elements; grad_x = grad_y * f'(x), or += with accumulate
 * (a select, not a multiply by 0 or 1, so stale NaN in grad_x cannot leak through). */
void FN_T(fn_activation_backward)(fn_activation_kind kind, real negative_slope, const real *x,
                                  const real *y, const real *grad_y, real *grad_x,
                                  bool accumulate, int64_t count, int threads) {
    int t = fn_threads_for(count, threads);
    switch (kind) {
    case FN_ACT_RELU:
        FN_PARALLEL_LOOP(t, i, count, {
            grad_x[i] = (accumulate ? grad_x[i] : 0) + (y[i] > 0 ? grad_y[i] : 0);
        });
        break;
    case FN_ACT_LEAKY_RELU:
        FN_PARALLEL_LOOP(t, i, count, {
            real slope = x[i] > 0 ? 1 : negative_slope;
            grad_x[i] = (accumulate ? grad_x[i] : 0) + slope * grad_y[i];
        });
        break;
    case FN_ACT_SIGMOID:
        FN_PARALLEL_LOOP(t, i, count, {
            grad_x[i] = (accumulate ? grad_x[i] : 0) + grad_y[i] * y[i] * (1 - y[i]);
        });
        break;
    case FN_ACT_TANH:
        FN_PARALLEL_LOOP(t, i, count, {
            grad_x[i] = (accumulate ? grad_x[i] : 0) + grad_y[i] * (1 - y[i] * y[i]);
        });
        break;
    }
}

static fn_status FN_T(activation_forward)(fn_node *node, const fn_model_ctx *ctx) {
    FN_T(fn_activation_forward)(fn_activation_kind_of(node->op),
                                (real)node->attr.activation.negative_slope,
                                (const real *)node->in[0], (real *)node->out,
                                ctx->batch * node->out_size, ctx->threads);
    return FN_OK;
}

static fn_status FN_T(activation_backward)(fn_node *node, const fn_model_ctx *ctx) {
    if (!node->grad_in[0]) return FN_OK;
    FN_T(fn_activation_backward)(fn_activation_kind_of(node->op),
                                 (real)node->attr.activation.negative_slope,
                                 (const real *)node->in[0], (const real *)node->out,
                                 (const real *)node->grad_out, (real *)node->grad_in[0],
                                 node->grad_in_accumulate[0],
                                 ctx->batch * node->out_size, ctx->threads);
    return FN_OK;
}

#endif
