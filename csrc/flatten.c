/* flatten.c — (C, H, W) per sample to (C*H*W): the layout is already flat, so this is a copy, or
 * nothing at all when the buffer planner gives the output its input's memory (in place). */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

static fn_status flatten_configure(fn_node *node, const fn_json *spec) {
    (void)spec;
    node->out_shape = (fn_shape){1, {fn_shape_size(&node->in_shape[0])}};
    return FN_OK;
}

static fn_status flatten_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status flatten_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status flatten_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status flatten_backward_f64(fn_node *node, const fn_model_ctx *ctx);

const fn_op fn_op_flatten = {
    .type = "flatten",
    .min_inputs = 1,
    .max_inputs = 1,
    .configure = flatten_configure,
    .forward = {flatten_forward_f32, flatten_forward_f64},
    .backward = {flatten_backward_f32, flatten_backward_f64},
    .backward_ignores_output = true,
    .backward_ignores_inputs = true,
    .in_place = true,
};

#define FN_TEMPLATE_FILE "flatten.c"
#include "template.h"

#else /* templated half */

/* x and y are (n, size). */
static fn_status FN_T(flatten_forward)(fn_node *node, const fn_model_ctx *ctx) {
    if (node->out != node->in[0]) /* else planned in place: nothing to do */
        FN_T(fn_copy_or_add)(node->out, node->in[0], ctx->batch * node->out_size, false,
                             ctx->threads);
    return FN_OK;
}

/* grad_out and grad_in are (n, size). */
static fn_status FN_T(flatten_backward)(fn_node *node, const fn_model_ctx *ctx) {
    if (node->grad_in[0])
        FN_T(fn_copy_or_add)(node->grad_in[0], node->grad_out, ctx->batch * node->out_size,
                             node->grad_in_accumulate[0], ctx->threads);
    return FN_OK;
}

#endif
