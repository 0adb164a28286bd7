/* dropout.c — inverted dropout (PyTorch's nn.Dropout).
 *
 * In train mode element i of the batch is kept with probability 1 - p and scaled by 1 / (1 - p),
 * so that eval mode is the identity. Whether it is kept is a pure function of (seed, step, node,
 * i) through the counter-based RNG: the mask is the same for any thread count and any visiting
 * order, and backward draws it again instead of saving it.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

#include <string.h>

static fn_status dropout_configure(fn_node *node, const fn_json *spec) {
    double p;
    FN_TRY(fn_json_get_number(spec, "p", 0, 0.5, &p, node->name));
    if (p == 1)
        return fn_error(FN_EINVAL,
                        "node '%s': dropout p = 1 would zero every value (and its gradient); p "
                        "must be in [0, 1)",
                        node->name);
    if (!(p >= 0 && p < 1))
        return fn_error(FN_EINVAL, "node '%s': dropout p must be in [0, 1), got %g", node->name, p);
    node->attr.dropout.p = p;
    node->out_shape = node->in_shape[0];
    node->n_params = 0;
    return FN_OK;
}

/* The RNG stream of a node's mask at a step: distinct nodes and distinct steps get unrelated
 * masks (+1 because fn_mix64(0) is 0). */
static uint64_t dropout_stream(const fn_node *node, const fn_model_ctx *ctx) {
    return fn_mix64((uint64_t)node->index + 1) ^ ctx->rng_step;
}

/* Element i is kept when its 53-bit uniform integer u satisfies u * 2^-53 >= p, that is
 * u >= ceil(p * 2^53) (exact: scaling by a power of two): an integer comparison per element. */
static uint64_t dropout_threshold(double p) { return (uint64_t)ceil(p * 0x1.0p53); }

static fn_status dropout_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status dropout_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status dropout_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status dropout_backward_f64(fn_node *node, const fn_model_ctx *ctx);

const fn_op fn_op_dropout = {
    .type = "dropout",
    .min_inputs = 1,
    .max_inputs = 1,
    .configure = dropout_configure,
    .forward = {dropout_forward_f32, dropout_forward_f64},
    .backward = {dropout_backward_f32, dropout_backward_f64},
    .backward_ignores_output = true, /* the mask is drawn again */
    .backward_ignores_inputs = true,
    .in_place = true,
};

#define FN_TEMPLATE_FILE "dropout.c"
#include "template.h"

#else /* templated half */

/* x and y are (count) elements, the whole batch: y = x / (1 - p) where kept, else 0. The mask
 * comes from (seed, stream, i). */
void FN_T(fn_dropout_forward)(const real *x, real *y, double p, uint64_t seed, uint64_t stream,
                              int64_t count, int threads) {
    uint64_t threshold = dropout_threshold(p);
    real scale = (real)(1 / (1 - p));
    int t = fn_threads_for(4 * count, threads); /* an RNG draw costs a few multiplies */
    FN_PARALLEL_LOOP(t, i, count, {
        bool keep = fn_rng_bits(seed, stream, (uint64_t)i) >> 11 >= threshold;
        y[i] = keep ? x[i] * scale : 0;
    });
}

/* grad_y and grad_x are (count): grad_x = grad_y / (1 - p) where forward kept the element, else 0,
 * with the same (p, seed, stream) as that forward. Overwritten, or added to with accumulate
 * (a select, so a stale NaN in grad_x cannot survive an overwrite). */
void FN_T(fn_dropout_backward)(const real *grad_y, real *grad_x, bool accumulate, double p,
                               uint64_t seed, uint64_t stream, int64_t count, int threads) {
    uint64_t threshold = dropout_threshold(p);
    real scale = (real)(1 / (1 - p));
    int t = fn_threads_for(4 * count, threads);
    FN_PARALLEL_LOOP(t, i, count, {
        bool keep = fn_rng_bits(seed, stream, (uint64_t)i) >> 11 >= threshold;
        real g = keep ? grad_y[i] * scale : 0;
        grad_x[i] = accumulate ? grad_x[i] + g : g;
    });
}

static fn_status FN_T(dropout_forward)(fn_node *node, const fn_model_ctx *ctx) {
    int64_t count = ctx->batch * node->out_size;
    if (!ctx->training) { /* eval mode: the identity */
        if (node->out != node->in[0]) memcpy(node->out, node->in[0], (size_t)count * sizeof(real));
        return FN_OK;
    }
    FN_T(fn_dropout_forward)((const real *)node->in[0], (real *)node->out, node->attr.dropout.p,
                             ctx->seed, dropout_stream(node, ctx), count, ctx->threads);
    return FN_OK;
}

static fn_status FN_T(dropout_backward)(fn_node *node, const fn_model_ctx *ctx) {
    if (!node->grad_in[0]) return FN_OK;
    int64_t count = ctx->batch * node->out_size;
    const real *gy = (const real *)node->grad_out;
    real *gx = (real *)node->grad_in[0];
    if (!ctx->training) {
        if (node->grad_in_accumulate[0]) {
            int t = fn_threads_for(count, ctx->threads);
            FN_PARALLEL_LOOP(t, i, count, { gx[i] += gy[i]; });
        } else {
            memcpy(gx, gy, (size_t)count * sizeof(real));
        }
        return FN_OK;
    }
    FN_T(fn_dropout_backward)(gy, gx, node->grad_in_accumulate[0], node->attr.dropout.p,
                              ctx->seed, dropout_stream(node, ctx), count, ctx->threads);
    return FN_OK;
}

#endif
