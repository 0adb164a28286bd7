/* lrn.c — local response normalisation across channels (AlexNet; PyTorch's
 * nn.LocalResponseNorm(size, alpha, beta, k)):
 *
 *     b_c = a_c * d_c^(-beta),   d_c = k + alpha / size * sum_{c' in window(c)} a_{c'}^2
 *     window(c) = [c - size / 2, c + (size - 1) / 2], clipped to the channels
 *
 * Channels beyond the edges count as zeros and the divisor stays `size`, as PyTorch pads. Forward
 * keeps q = 1 / d per element for backward:
 *
 *     dA_j = dB_j * q_j^beta - 2 * alpha * beta / size * a_j * sum_{c : j in window(c)} t_c,
 *     t_c = dB_c * b_c * q_c   (= dB_c * a_c * d_c^(-beta-1))
 *
 * so backward needs no division. Every (sample, channel) row is computed independently, by one
 * thread, so results do not depend on the thread count.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

static fn_status lrn_configure(fn_node *node, const fn_json *spec) {
    int64_t size;
    double alpha, beta, k;
    FN_TRY(fn_json_get_int(spec, "size", 1, 0, &size, node->name));
    FN_TRY(fn_json_get_number(spec, "alpha", 0, 1e-4, &alpha, node->name));
    FN_TRY(fn_json_get_number(spec, "beta", 0, 0.75, &beta, node->name));
    FN_TRY(fn_json_get_number(spec, "k", 0, 1.0, &k, node->name));
    if (size < 1 || size > INT32_MAX)
        return fn_error(FN_EINVAL,
                        "node '%s': local_response_norm needs size in [1, 2^31), got %lld",
                        node->name, (long long)size);
    /* alpha >= 0 and k > 0 keep d >= k > 0, so that d^(-beta) is finite. */
    if (!(alpha >= 0) || !(k > 0))
        return fn_error(FN_EINVAL,
                        "node '%s': local_response_norm needs alpha >= 0 and k > 0, got alpha=%g, "
                        "k=%g",
                        node->name, alpha, k);
    const fn_shape *in = &node->in_shape[0];
    if (in->ndim < 2) {
        char buf[64];
        return fn_error(FN_EINVAL,
                        "node '%s': local_response_norm expects a (C, L) or (C, H, W) input per "
                        "sample, but its input has shape %s",
                        node->name, fn_shape_str(in, buf, sizeof buf));
    }
    node->attr.lrn.size = size;
    node->attr.lrn.alpha = alpha;
    node->attr.lrn.beta = beta;
    node->attr.lrn.k = k;
    node->out_shape = *in;
    node->n_params = 0;
    return FN_OK;
}

/* q = 1 / d, one per element of the batch. */
static size_t lrn_saved(const fn_node *node, int64_t batch, size_t elem_size) {
    return (size_t)batch * (size_t)node->out_size * elem_size;
}

static fn_status lrn_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status lrn_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status lrn_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status lrn_backward_f64(fn_node *node, const fn_model_ctx *ctx);

const fn_op fn_op_local_response_norm = {
    .type = "local_response_norm",
    .min_inputs = 1,
    .max_inputs = 1,
    .configure = lrn_configure,
    .saved = lrn_saved,
    .forward = {lrn_forward_f32, lrn_forward_f64},
    .backward = {lrn_backward_f32, lrn_backward_f64},
};

/* Rows processed at a time by backward, whose window sum lives on the stack. */
#define LRN_BLOCK 256

#define FN_TEMPLATE_FILE "lrn.c"
#include "template.h"

#else /* templated half */

/* out, f and q are (count): out = f * q^beta. AlexNet's beta = 3/4 is q^(1/2) * q^(1/4), two
 * square roots, much cheaper than pow. */
static inline void FN_T(mul_pow)(real *out, const real *f, const real *q, int64_t count,
                                 real beta) {
    if (beta == (real)0.75) {
        for (int64_t s = 0; s < count; s++) {
            real r = sqrt(q[s]);
            out[s] = f[s] * r * sqrt(r);
        }
    } else {
        for (int64_t s = 0; s < count; s++) out[s] = f[s] * pow(q[s], beta);
    }
}

/* x, y and inv_d are (n, c, spatial): y = x * d^(-beta), and inv_d = 1 / d for backward. */
void FN_T(fn_lrn_forward)(const real *x, real *y, real *inv_d, int64_t n, int64_t c,
                          int64_t spatial, int64_t size, double alpha, double beta, double k,
                          int threads) {
    int64_t before = size / 2, after = (size - 1) / 2;
    real scale = (real)(alpha / (double)size), kr = (real)k, br = (real)beta;
    int t = fn_threads_for(n * c * spatial * (size < c ? size : c), threads);
    FN_PARALLEL_LOOP(t, row, n * c, {
        int64_t i = row / c, ch = row % c;
        int64_t lo = ch - before > 0 ? ch - before : 0;
        int64_t hi = ch + after < c - 1 ? ch + after : c - 1;
        real *q = inv_d + row * spatial;
        /* Sum the window's squares into q, row by row along contiguous memory. */
        for (int64_t s = 0; s < spatial; s++) q[s] = 0;
        for (int64_t cc = lo; cc <= hi; cc++) {
            const real *a = x + (i * c + cc) * spatial;
            for (int64_t s = 0; s < spatial; s++) q[s] += a[s] * a[s];
        }
        for (int64_t s = 0; s < spatial; s++) q[s] = 1 / (kr + scale * q[s]);
        FN_T(mul_pow)(y + row * spatial, x + row * spatial, q, spatial, br);
    });
}

/* x, y, inv_d (as forward left them), grad_y and grad_x are (n, c, spatial). grad_x is
 * overwritten, or added to with accumulate. */
void FN_T(fn_lrn_backward)(const real *x, const real *y, const real *inv_d, const real *grad_y,
                           real *grad_x, bool accumulate, int64_t n, int64_t c, int64_t spatial,
                           int64_t size, double alpha, double beta, int threads) {
    int64_t before = size / 2, after = (size - 1) / 2;
    real coef = (real)(2 * alpha * beta / (double)size), br = (real)beta;
    int t = fn_threads_for(2 * n * c * spatial * (size < c ? size : c), threads);
    FN_PARALLEL_LOOP(t, row, n * c, {
        int64_t i = row / c, j = row % c;
        /* The channels whose window holds j: c - before <= j <= c + after. */
        int64_t lo = j - after > 0 ? j - after : 0;
        int64_t hi = j + before < c - 1 ? j + before : c - 1;
        const real *a = x + row * spatial, *gy = grad_y + row * spatial;
        const real *q = inv_d + row * spatial;
        real *gx = grad_x + row * spatial;
        for (int64_t s0 = 0; s0 < spatial; s0 += LRN_BLOCK) {
            int64_t len = spatial - s0 < LRN_BLOCK ? spatial - s0 : LRN_BLOCK;
            real sum[LRN_BLOCK], direct[LRN_BLOCK];
            for (int64_t s = 0; s < len; s++) sum[s] = 0;
            for (int64_t cc = lo; cc <= hi; cc++) {
                int64_t at = (i * c + cc) * spatial + s0;
                for (int64_t s = 0; s < len; s++)
                    sum[s] += grad_y[at + s] * y[at + s] * inv_d[at + s];
            }
            FN_T(mul_pow)(direct, gy + s0, q + s0, len, br);
            if (accumulate)
                for (int64_t s = 0; s < len; s++)
                    gx[s0 + s] += direct[s] - coef * a[s0 + s] * sum[s];
            else
                for (int64_t s = 0; s < len; s++)
                    gx[s0 + s] = direct[s] - coef * a[s0 + s] * sum[s];
        }
    });
}

static fn_status FN_T(lrn_forward)(fn_node *node, const fn_model_ctx *ctx) {
    int64_t c = node->in_shape[0].dim[0];
    FN_T(fn_lrn_forward)((const real *)node->in[0], (real *)node->out, (real *)node->saved,
                         ctx->batch, c, node->out_size / c, node->attr.lrn.size,
                         node->attr.lrn.alpha, node->attr.lrn.beta, node->attr.lrn.k,
                         ctx->threads);
    return FN_OK;
}

static fn_status FN_T(lrn_backward)(fn_node *node, const fn_model_ctx *ctx) {
    if (!node->grad_in[0]) return FN_OK;
    int64_t c = node->in_shape[0].dim[0];
    FN_T(fn_lrn_backward)((const real *)node->in[0], (const real *)node->out,
                          (const real *)node->saved, (const real *)node->grad_out,
                          (real *)node->grad_in[0], node->grad_in_accumulate[0], ctx->batch, c,
                          node->out_size / c, node->attr.lrn.size, node->attr.lrn.alpha,
                          node->attr.lrn.beta, ctx->threads);
    return FN_OK;
}

#endif
