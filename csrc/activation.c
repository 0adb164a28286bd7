/* activation.c — elementwise activations: ReLU, LeakyReLU, Sigmoid, Tanh, ELU, GELU, SiLU and
 * Softplus, with PyTorch's definitions and defaults.
 *
 * They share one shape rule (output shape = input shape) and one parallel loop; each has its own
 * formula. Backward reads what is cheapest: ReLU, Sigmoid and Tanh their output, the others their
 * input (LeakyReLU's output has the input's sign only for a positive slope, and the derivatives of
 * ELU, GELU, SiLU and Softplus are simplest in x).
 *
 * Formulas are arranged so that no intermediate overflows for any finite input: exponentials only
 * of non-positive arguments, GELU's normal CDF through erfc (no cancellation in 1 + erf(x) for
 * negative x), Softplus as max(z, 0) + log1p(exp(-|z|)).
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

#include <string.h>

fn_activation_kind fn_activation_kind_of(const fn_op *op);

static fn_status activation_configure(fn_node *node, const fn_json *spec) {
    node->out_shape = node->in_shape[0];
    node->n_params = 0;
    fn_activation_kind kind = fn_activation_kind_of(node->op);
    double *negative_slope = &node->attr.activation.negative_slope;
    double *alpha = &node->attr.activation.alpha, *beta = &node->attr.activation.beta;
    double *threshold = &node->attr.activation.threshold;
    switch (kind) {
    case FN_ACT_LEAKY_RELU:
        FN_TRY(fn_json_get_number(spec, "negative_slope", 0, 0.01, negative_slope, node->name));
        break;
    case FN_ACT_ELU:
        FN_TRY(fn_json_get_number(spec, "alpha", 0, 1.0, alpha, node->name));
        break;
    case FN_ACT_GELU: {
        const char *approximate;
        FN_TRY(fn_json_get_string(spec, "approximate", 0, "none", &approximate, node->name));
        if (strcmp(approximate, "tanh") == 0) kind = FN_ACT_GELU_TANH;
        else if (strcmp(approximate, "none") != 0)
            return fn_error(FN_EINVAL,
                            "node '%s': gelu approximate must be 'none' or 'tanh', got '%s'",
                            node->name, approximate);
        break;
    }
    case FN_ACT_SOFTPLUS:
        FN_TRY(fn_json_get_number(spec, "beta", 0, 1.0, beta, node->name));
        FN_TRY(fn_json_get_number(spec, "threshold", 0, 20.0, threshold, node->name));
        if (!(*beta > 0))
            return fn_error(FN_EINVAL, "node '%s': softplus needs beta > 0, got %g", node->name,
                            *beta);
        break;
    default:
        break;
    }
    node->attr.activation.kind = (int)kind;
    return FN_OK;
}

static fn_status activation_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status activation_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status activation_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status activation_backward_f64(fn_node *node, const fn_model_ctx *ctx);

/* reads_output: backward needs y only (ReLU, sigmoid, tanh), which also lets forward overwrite x;
 * the others need x only. */
#define FN_ACTIVATION_OP(op_name, type_name, reads_output)                                       \
    const fn_op op_name = {                                                                      \
        .type = type_name,                                                                       \
        .min_inputs = 1,                                                                         \
        .max_inputs = 1,                                                                         \
        .configure = activation_configure,                                                       \
        .init = NULL,                                                                            \
        .forward = {activation_forward_f32, activation_forward_f64},                             \
        .backward = {activation_backward_f32, activation_backward_f64},                          \
        .backward_ignores_output = !(reads_output),                                              \
        .backward_ignores_inputs = (reads_output),                                               \
        .in_place = (reads_output),                                                              \
    };
FN_ACTIVATION_OP(fn_op_relu, "relu", true)
FN_ACTIVATION_OP(fn_op_leaky_relu, "leaky_relu", false)
FN_ACTIVATION_OP(fn_op_sigmoid, "sigmoid", true)
FN_ACTIVATION_OP(fn_op_tanh, "tanh", true)
FN_ACTIVATION_OP(fn_op_elu, "elu", false)
FN_ACTIVATION_OP(fn_op_gelu, "gelu", false)
FN_ACTIVATION_OP(fn_op_silu, "silu", false)
FN_ACTIVATION_OP(fn_op_softplus, "softplus", false)

/* The kind an op computes; GELU's approximation is an attribute, resolved by configure. */
fn_activation_kind fn_activation_kind_of(const fn_op *op) {
    if (op == &fn_op_leaky_relu) return FN_ACT_LEAKY_RELU;
    if (op == &fn_op_sigmoid) return FN_ACT_SIGMOID;
    if (op == &fn_op_tanh) return FN_ACT_TANH;
    if (op == &fn_op_elu) return FN_ACT_ELU;
    if (op == &fn_op_gelu) return FN_ACT_GELU;
    if (op == &fn_op_silu) return FN_ACT_SILU;
    if (op == &fn_op_softplus) return FN_ACT_SOFTPLUS;
    return FN_ACT_RELU;
}

/* Elements per thread worth waking a thread for scale down with the cost of one element: a
 * compare for ReLU, an exp or erfc (some tens of cycles) for the others. */
static int activation_threads(fn_activation_kind kind, int64_t count, int threads) {
    bool cheap = kind == FN_ACT_RELU || kind == FN_ACT_LEAKY_RELU;
    return fn_threads_for(cheap ? count : 8 * count, threads);
}

static fn_activation_params activation_params(const fn_node *node) {
    return (fn_activation_params){
        .negative_slope = node->attr.activation.negative_slope,
        .alpha = node->attr.activation.alpha,
        .beta = node->attr.activation.beta,
        .threshold = node->attr.activation.threshold,
    };
}

#define FN_TEMPLATE_FILE "activation.c"
#include "template.h"

#else /* templated half */

/* 1 / (1 + exp(-x)) with exp of a non-positive argument only. */
static inline real FN_T(sigmoid_of)(real x) {
    real e = exp(-fabs(x));
    return x >= 0 ? 1 / (1 + e) : e / (1 + e);
}

/* x and y are (count) elements, any shape. */
void FN_T(fn_activation_forward)(fn_activation_kind kind, const fn_activation_params *params,
                                 const real *x, real *y, int64_t count, int threads) {
    int t = activation_threads(kind, count, threads);
    const real negative_slope = (real)params->negative_slope, alpha = (real)params->alpha;
    const real beta = (real)params->beta, threshold = (real)params->threshold;
    /* sqrt(2 / pi) and 1 / sqrt(2), rounded to real */
    const real k0 = (real)0.79788456080286535588, rsqrt2 = (real)0.70710678118654752440;
    switch (kind) {
    case FN_ACT_RELU:
        FN_PARALLEL_LOOP(t, i, count, { y[i] = FN_RELU(x[i]); });
        break;
    case FN_ACT_LEAKY_RELU:
        FN_PARALLEL_LOOP(t, i, count, { y[i] = x[i] > 0 ? x[i] : negative_slope * x[i]; });
        break;
    case FN_ACT_SIGMOID:
        FN_PARALLEL_LOOP(t, i, count, { y[i] = FN_T(sigmoid_of)(x[i]); });
        break;
    case FN_ACT_TANH:
        FN_PARALLEL_LOOP(t, i, count, { y[i] = tanh(x[i]); });
        break;
    case FN_ACT_ELU:
        /* expm1 keeps the relative precision of alpha * (e^x - 1) near 0. */
        FN_PARALLEL_LOOP(t, i, count, { y[i] = x[i] > 0 ? x[i] : alpha * expm1(x[i]); });
        break;
    case FN_ACT_GELU:
        /* x * Phi(x) with Phi(x) = erfc(-x / sqrt(2)) / 2 */
        FN_PARALLEL_LOOP(t, i, count, { y[i] = (real)0.5 * x[i] * erfc(-x[i] * rsqrt2); });
        break;
    case FN_ACT_GELU_TANH:
        FN_PARALLEL_LOOP(t, i, count, {
            real v = x[i];
            y[i] = (real)0.5 * v * (1 + tanh(k0 * (v + (real)0.044715 * v * v * v)));
        });
        break;
    case FN_ACT_SILU:
        FN_PARALLEL_LOOP(t, i, count, { y[i] = x[i] * FN_T(sigmoid_of)(x[i]); });
        break;
    case FN_ACT_SOFTPLUS:
        /* PyTorch reverts to the identity where beta * x > threshold, for speed and to match
         * its gradient there (exactly 1). */
        FN_PARALLEL_LOOP(t, i, count, {
            real z = beta * x[i];
            y[i] = z > threshold ? x[i] : (fmax(z, (real)0) + log1p(exp(-fabs(z)))) / beta;
        });
        break;
    }
}

/* x, y, grad_y, grad_x are (count) elements; grad_x = grad_y * f'(x), or += with accumulate
 * (a select, not a multiply by 0 or 1, so stale NaN in grad_x cannot leak through). */
void FN_T(fn_activation_backward)(fn_activation_kind kind, const fn_activation_params *params,
                                  const real *x, const real *y, const real *grad_y, real *grad_x,
                                  bool accumulate, int64_t count, int threads) {
    int t = activation_threads(kind, count, threads);
    const real negative_slope = (real)params->negative_slope, alpha = (real)params->alpha;
    const real beta = (real)params->beta, threshold = (real)params->threshold;
    /* sqrt(2 / pi), 1 / sqrt(2), 1 / sqrt(2 pi) */
    const real k0 = (real)0.79788456080286535588, rsqrt2 = (real)0.70710678118654752440;
    const real rsqrt2pi = (real)0.39894228040143267794;
    switch (kind) {
    case FN_ACT_RELU:
        /* g read whatever y is: a conditional read would keep the loop from vectorising. */
        FN_PARALLEL_LOOP(t, i, count, {
            real g = grad_y[i];
            grad_x[i] = (accumulate ? grad_x[i] : 0) + (y[i] > 0 ? g : 0);
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
    case FN_ACT_ELU:
        FN_PARALLEL_LOOP(t, i, count, {
            real slope = x[i] > 0 ? 1 : alpha * exp(x[i]);
            grad_x[i] = (accumulate ? grad_x[i] : 0) + slope * grad_y[i];
        });
        break;
    case FN_ACT_GELU:
        /* Phi(x) + x * phi(x) */
        FN_PARALLEL_LOOP(t, i, count, {
            real v = x[i];
            real slope = (real)0.5 * erfc(-v * rsqrt2) + v * rsqrt2pi * exp((real)-0.5 * v * v);
            grad_x[i] = (accumulate ? grad_x[i] : 0) + slope * grad_y[i];
        });
        break;
    case FN_ACT_GELU_TANH:
        /* (1 + t) / 2 + x / 2 * (1 - t^2) * k0 * (1 + 3 c x^2), t = tanh(k0 (x + c x^3)). Where
         * t^2 rounds to 1 the second term is 0: skipping it keeps 0 * x^3 from becoming NaN when
         * x^2 overflows. */
        FN_PARALLEL_LOOP(t, i, count, {
            real v = x[i];
            real th = tanh(k0 * (v + (real)0.044715 * v * v * v));
            real sech2 = 1 - th * th;
            real slope = (real)0.5 * (1 + th);
            if (sech2 != 0)
                slope += (real)0.5 * v * sech2 * k0 * (1 + (real)(3 * 0.044715) * v * v);
            grad_x[i] = (accumulate ? grad_x[i] : 0) + slope * grad_y[i];
        });
        break;
    case FN_ACT_SILU:
        /* s (1 + x (1 - s)), s = sigmoid(x) */
        FN_PARALLEL_LOOP(t, i, count, {
            real s = FN_T(sigmoid_of)(x[i]);
            grad_x[i] = (accumulate ? grad_x[i] : 0) + grad_y[i] * s * (1 + x[i] * (1 - s));
        });
        break;
    case FN_ACT_SOFTPLUS:
        FN_PARALLEL_LOOP(t, i, count, {
            real z = beta * x[i];
            real slope = z > threshold ? 1 : FN_T(sigmoid_of)(z);
            grad_x[i] = (accumulate ? grad_x[i] : 0) + slope * grad_y[i];
        });
        break;
    }
}

static fn_status FN_T(activation_forward)(fn_node *node, const fn_model_ctx *ctx) {
    fn_activation_params params = activation_params(node);
    FN_T(fn_activation_forward)((fn_activation_kind)node->attr.activation.kind, &params,
                                (const real *)node->in[0], (real *)node->out,
                                ctx->batch * node->out_size, ctx->threads);
    return FN_OK;
}

static fn_status FN_T(activation_backward)(fn_node *node, const fn_model_ctx *ctx) {
    if (!node->grad_in[0]) return FN_OK;
    fn_activation_params params = activation_params(node);
    FN_T(fn_activation_backward)((fn_activation_kind)node->attr.activation.kind, &params,
                                 (const real *)node->in[0], (const real *)node->out,
                                 (const real *)node->grad_out, (real *)node->grad_in[0],
                                 node->grad_in_accumulate[0], ctx->batch * node->out_size,
                                 ctx->threads);
    return FN_OK;
}

#endif
