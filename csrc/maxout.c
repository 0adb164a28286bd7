/* maxout.c — maxout over channels (Goodfellow et al., 2013): the per-sample channels (C, ...) are
 * split into C / pieces groups of `pieces` consecutive channels, and each output channel is the
 * elementwise maximum of its group:
 *
 *     y[g, s] = max_j x[g * pieces + j, s],   j in [0, pieces)
 *
 * Backward sends each output's gradient to the first channel of its group that holds the maximum
 * (ties go to the lowest channel), found again from x rather than saved. A NaN wins the maximum,
 * so that it reaches the loss instead of vanishing.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

static fn_status maxout_configure(fn_node *node, const fn_json *spec) {
    int64_t pieces;
    FN_TRY(fn_json_get_int(spec, "pieces", 1, 0, &pieces, node->name));
    const fn_shape *in = &node->in_shape[0];
    char buf[64];
    if (pieces < 1 || pieces > INT32_MAX)
        return fn_error(FN_EINVAL, "node '%s': maxout needs pieces in [1, 2^31), got %lld",
                        node->name, (long long)pieces);
    if (in->dim[0] % pieces)
        return fn_error(FN_EINVAL,
                        "node '%s': maxout with pieces=%lld needs a channel count (the first "
                        "dimension) divisible by %lld, but its input has shape %s",
                        node->name, (long long)pieces, (long long)pieces,
                        fn_shape_str(in, buf, sizeof buf));
    node->attr.maxout.pieces = pieces;
    node->attr.maxout.groups = in->dim[0] / pieces;
    node->attr.maxout.spatial = fn_shape_size(in) / in->dim[0];
    node->out_shape = *in;
    node->out_shape.dim[0] = node->attr.maxout.groups;
    node->n_params = 0;
    return FN_OK;
}

static fn_status maxout_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status maxout_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status maxout_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status maxout_backward_f64(fn_node *node, const fn_model_ctx *ctx);

const fn_op fn_op_maxout = {
    .type = "maxout",
    .min_inputs = 1,
    .max_inputs = 1,
    .configure = maxout_configure,
    .forward = {maxout_forward_f32, maxout_forward_f64},
    .backward = {maxout_backward_f32, maxout_backward_f64},
    .backward_ignores_output = true,
};

#define FN_TEMPLATE_FILE "maxout.c"
#include "template.h"

#else /* templated half */

/* x (n, groups * pieces, spatial) -> y (n, groups, spatial). Each (sample, group) row of y is
 * built plane by plane, so the inner loop runs along contiguous memory. */
void FN_T(fn_maxout_forward)(const real *x, real *y, int64_t n, int64_t groups, int64_t pieces,
                             int64_t spatial, int threads) {
    int t = fn_threads_for(n * groups * pieces * spatial, threads);
    FN_PARALLEL_LOOP(t, row, n * groups, {
        const real *xr = x + row * pieces * spatial;
        real *yr = y + row * spatial;
        for (int64_t s = 0; s < spatial; s++) yr[s] = xr[s];
        for (int64_t j = 1; j < pieces; j++) {
            const real *plane = xr + j * spatial;
            for (int64_t s = 0; s < spatial; s++) {
                real v = plane[s];
                /* v != v: a NaN replaces the maximum; once there, nothing compares above it. */
                if (v > yr[s] || v != v) yr[s] = v;
            }
        }
    });
}

/* x, grad_x (n, groups * pieces, spatial); grad_y (n, groups, spatial). grad_x is grad_y at the
 * first maximum of each group and 0 elsewhere, or that added with accumulate. */
void FN_T(fn_maxout_backward)(const real *x, const real *grad_y, real *grad_x, bool accumulate,
                              int64_t n, int64_t groups, int64_t pieces, int64_t spatial,
                              int threads) {
    int t = fn_threads_for(n * groups * pieces * spatial, threads);
    FN_PARALLEL_LOOP(t, row, n * groups, {
        const real *xr = x + row * pieces * spatial, *gy = grad_y + row * spatial;
        real *gx = grad_x + row * pieces * spatial;
        for (int64_t s = 0; s < spatial; s++) {
            int64_t arg = 0;
            real best = xr[s];
            for (int64_t j = 1; j < pieces && best == best; j++) {
                real v = xr[j * spatial + s];
                if (v > best || v != v) best = v, arg = j;
            }
            for (int64_t j = 0; j < pieces; j++) {
                real *g = &gx[j * spatial + s];
                *g = (accumulate ? *g : 0) + (j == arg ? gy[s] : 0);
            }
        }
    });
}

static fn_status FN_T(maxout_forward)(fn_node *node, const fn_model_ctx *ctx) {
    FN_T(fn_maxout_forward)((const real *)node->in[0], (real *)node->out, ctx->batch,
                            node->attr.maxout.groups, node->attr.maxout.pieces,
                            node->attr.maxout.spatial, ctx->threads);
    return FN_OK;
}

static fn_status FN_T(maxout_backward)(fn_node *node, const fn_model_ctx *ctx) {
    if (!node->grad_in[0]) return FN_OK;
    FN_T(fn_maxout_backward)((const real *)node->in[0], (const real *)node->grad_out,
                             (real *)node->grad_in[0], node->grad_in_accumulate[0], ctx->batch,
                             node->attr.maxout.groups, node->attr.maxout.pieces,
                             node->attr.maxout.spatial, ctx->threads);
    return FN_OK;
}

#endif
