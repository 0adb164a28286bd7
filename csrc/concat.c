/* concat.c — concatenation along the channel axis (the first per-sample axis): the join of
 * parallel branches, as in Inception. Inputs (C_j, H, W) with one H, W give (sum C_j, H, W). */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

static fn_status concat_configure(fn_node *node, const fn_json *spec) {
    (void)spec;
    fn_shape out = node->in_shape[0];
    for (int j = 1; j < node->n_inputs; j++) {
        const fn_shape *s = &node->in_shape[j];
        bool same = s->ndim == out.ndim;
        for (int d = 1; same && d < s->ndim; d++) same = s->dim[d] == out.dim[d];
        if (!same) {
            char sa[64], sb[64];
            return fn_error(FN_EINVAL,
                            "node '%s': concat needs inputs that differ only in channels, got %s "
                            "and %s",
                            node->name, fn_shape_str(&node->in_shape[0], sa, sizeof sa),
                            fn_shape_str(s, sb, sizeof sb));
        }
        out.dim[0] += s->dim[0];
    }
    node->out_shape = out;
    return FN_OK;
}

static fn_status concat_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status concat_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status concat_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status concat_backward_f64(fn_node *node, const fn_model_ctx *ctx);

const fn_op fn_op_concat = {
    .type = "concat",
    .min_inputs = 2,
    .max_inputs = FN_MAX_INPUTS,
    .configure = concat_configure,
    .forward = {concat_forward_f32, concat_forward_f64},
    .backward = {concat_backward_f32, concat_backward_f64},
    .backward_ignores_output = true,
    .backward_ignores_inputs = true,
};

#define FN_TEMPLATE_FILE "concat.c"
#include "template.h"

#else /* templated half */

/* Sample i of input j, (size_j), goes to sample i of y, (out_size), after the inputs before j:
 * within a sample the channels of one input are contiguous. */
static fn_status FN_T(concat_forward)(fn_node *node, const fn_model_ctx *ctx) {
    real *y = node->out;
    int64_t offset = 0;
    for (int j = 0; j < node->n_inputs; j++) {
        const real *x = node->in[j];
        int64_t size = fn_shape_size(&node->in_shape[j]);
        for (int64_t i = 0; i < ctx->batch; i++)
            FN_T(fn_copy_or_add)(y + i * node->out_size + offset, x + i * size, size, false, 1);
        offset += size;
    }
    return FN_OK;
}

static fn_status FN_T(concat_backward)(fn_node *node, const fn_model_ctx *ctx) {
    const real *grad_out = node->grad_out;
    int64_t offset = 0;
    for (int j = 0; j < node->n_inputs; j++) {
        real *grad_in = node->grad_in[j];
        int64_t size = fn_shape_size(&node->in_shape[j]);
        if (grad_in)
            for (int64_t i = 0; i < ctx->batch; i++)
                FN_T(fn_copy_or_add)(grad_in + i * size, grad_out + i * node->out_size + offset,
                                     size, node->grad_in_accumulate[j], 1);
        offset += size;
    }
    return FN_OK;
}

#endif
