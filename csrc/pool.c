/* pool.c — 2-D pooling: max_pool2d, avg_pool2d (PyTorch's MaxPool2d, AvgPool2d) and
 * global_avg_pool2d (AdaptiveAvgPool2d(1)).
 *
 * The windowed pools share one shape rule (floor mode):
 *     out = (in + 2 * padding - kernel) / stride + 1
 * and PyTorch's limit padding <= kernel / 2, which guarantees that every window overlaps the
 * input. With that limit and floor mode no window reaches past the padded border, so avg_pool2d's
 * divisor (count_include_pad=True) is always kernel_h * kernel_w.
 *
 * Each (sample, channel) plane is independent and is handled whole by one thread, so the results,
 * including the overlapping scatter of the backward passes, do not depend on the thread count.
 *
 * max_pool2d's forward, when a backward will follow, saves where each output's maximum is (an
 * int32 position in its plane, as many bytes as a float32 output): backward is then a scatter of
 * the output gradient, with no second search through the input, which it no longer reads. When
 * max_pool2d or avg_pool2d alone reads a convolution's output, its backward is left to the
 * convolution's, image by image into its cached buffer (input_grad_of_sample); through the ReLU
 * fused into the convolution, max_pool2d's forward also marks the windows whose maximum is not
 * positive, which the ReLU's backward would stop, and the scatter skips them.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

/* Reads a pair attribute given as an integer (both dimensions) or a list of two integers; an
 * absent or null attribute gives `fallback`, or fails when there is none. */
static fn_status read_pair(const fn_node *node, const fn_json *spec, const char *key,
                           const int64_t *fallback, int64_t out[2]) {
    const fn_json *value = fn_json_get(spec, key);
    if (!value || value->type == FN_JSON_NULL) {
        if (!fallback)
            return fn_error(FN_EINVAL, "node '%s': %s needs \"%s\"", node->name, node->op->type,
                            key);
        out[0] = fallback[0];
        out[1] = fallback[1];
        return FN_OK;
    }
    if (fn_json_to_int64(value, &out[0])) {
        out[1] = out[0];
        return FN_OK;
    }
    if (value->type == FN_JSON_ARRAY && value->count == 2 &&
        fn_json_to_int64(&value->items[0], &out[0]) && fn_json_to_int64(&value->items[1], &out[1]))
        return FN_OK;
    return fn_error(FN_EINVAL, "node '%s': %s \"%s\" must be an integer or a list of 2 integers",
                    node->name, node->op->type, key);
}

static fn_status check_image_input(const fn_node *node) {
    if (node->in_shape[0].ndim != 3) {
        char buf[64];
        return fn_error(FN_EINVAL,
                        "node '%s': %s expects a (C, H, W) input per sample, but its input has "
                        "shape %s",
                        node->name, node->op->type,
                        fn_shape_str(&node->in_shape[0], buf, sizeof buf));
    }
    return FN_OK;
}

/* Output size along one dimension (floor mode); configure made sure it is at least 1. */
static inline int64_t pool_out(int64_t in, int64_t kernel, int64_t stride, int64_t padding) {
    return (in + 2 * padding - kernel) / stride + 1;
}

/* The input rows [*r0, *r1) under output row i. Never empty: padding <= kernel / 2. */
static inline void pool_rows(int64_t i, int64_t h, int64_t kernel, int64_t stride,
                             int64_t padding, int64_t *r0, int64_t *r1) {
    int64_t start = i * stride - padding;
    *r0 = start > 0 ? start : 0;
    *r1 = start + kernel < h ? start + kernel : h;
}

/* The outputs [*lo, *hi) (of ow) whose window column b, input column j * stride - padding + b,
 * lies inside [0, w). */
static inline void pool_columns(int64_t b, int64_t w, int64_t ow, int64_t stride,
                                int64_t padding, int64_t *lo, int64_t *hi) {
    int64_t first = padding - b, last = w - 1 + padding - b;
    *lo = first > 0 ? (first + stride - 1) / stride : 0;
    *hi = last < 0 ? 0 : last / stride + 1;
    if (*hi > ow) *hi = ow;
    if (*lo > *hi) *lo = *hi;
}

static fn_status pool_configure(fn_node *node, const fn_json *spec) {
    FN_TRY(check_image_input(node));
    int64_t *kernel = node->attr.pool.kernel, *stride = node->attr.pool.stride,
            *padding = node->attr.pool.padding;
    const int64_t none[2] = {0, 0};
    const char *type = node->op->type;
    FN_TRY(read_pair(node, spec, "kernel_size", NULL, kernel));
    if (kernel[0] < 1 || kernel[1] < 1 || kernel[0] > INT32_MAX || kernel[1] > INT32_MAX)
        return fn_error(FN_EINVAL,
                        "node '%s': %s needs \"kernel_size\" in [1, 2^31), got (%lld, %lld)",
                        node->name, type, (long long)kernel[0], (long long)kernel[1]);
    FN_TRY(read_pair(node, spec, "stride", kernel, stride)); /* PyTorch: stride=None is kernel */
    FN_TRY(read_pair(node, spec, "padding", none, padding));
    if (stride[0] < 1 || stride[1] < 1 || stride[0] > INT32_MAX || stride[1] > INT32_MAX)
        return fn_error(FN_EINVAL, "node '%s': %s needs \"stride\" in [1, 2^31), got (%lld, %lld)",
                        node->name, type, (long long)stride[0], (long long)stride[1]);
    if (padding[0] < 0 || padding[1] < 0 || padding[0] > kernel[0] / 2 ||
        padding[1] > kernel[1] / 2)
        return fn_error(FN_EINVAL,
                        "node '%s': %s padding (%lld, %lld) must be non-negative and at most half "
                        "the kernel size (%lld, %lld)",
                        node->name, type, (long long)padding[0], (long long)padding[1],
                        (long long)kernel[0], (long long)kernel[1]);
    const fn_shape *in = &node->in_shape[0];
    int64_t out[2];
    for (int d = 0; d < 2; d++) {
        int64_t padded = in->dim[1 + d] + 2 * padding[d];
        if (padded < kernel[d]) {
            char buf[64];
            return fn_error(FN_EINVAL,
                            "node '%s': %s kernel (%lld, %lld) with padding (%lld, %lld) is "
                            "larger than its input %s: the output would be empty",
                            node->name, type, (long long)kernel[0], (long long)kernel[1],
                            (long long)padding[0], (long long)padding[1],
                            fn_shape_str(in, buf, sizeof buf));
        }
        out[d] = pool_out(in->dim[1 + d], kernel[d], stride[d], padding[d]);
    }
    node->out_shape = (fn_shape){3, {in->dim[0], out[0], out[1]}};
    node->n_params = 0;
    return FN_OK;
}

static fn_status global_avg_pool_configure(fn_node *node, const fn_json *spec) {
    (void)spec;
    FN_TRY(check_image_input(node));
    node->out_shape = (fn_shape){3, {node->in_shape[0].dim[0], 1, 1}};
    node->n_params = 0;
    return FN_OK;
}

/* Where each output's maximum is: (batch, out_size) int32 positions in the input planes. */
static size_t max_pool_saved(const fn_node *node, int64_t batch, size_t elem_size) {
    (void)elem_size;
    return (size_t)batch * (size_t)node->out_size * sizeof(int32_t);
}

/* Bands of output rows for a band chain: one row at least each. */
static bool max_pool_band_fits(const fn_node *node, const fn_model_ctx *ctx, int bands,
                               size_t elem_size) {
    (void)ctx, (void)elem_size;
    return node->out_shape.dim[1] >= bands;
}

/* A window as tall as its stride, without padding: output row i reads input rows [s i, s i + s)
 * alone, so a producer can hand the input over a piece of whole windows at a time. */
static int64_t max_pool_input_rows_per_row(const fn_node *node) {
    const int64_t *kernel = node->attr.pool.kernel, *stride = node->attr.pool.stride;
    return kernel[0] == stride[0] && node->attr.pool.padding[0] == 0 ? stride[0] : 0;
}

static fn_status max_pool_configure(fn_node *node, const fn_json *spec) {
    FN_TRY(pool_configure(node, spec));
    const fn_shape *in = &node->in_shape[0];
    if (in->dim[1] > INT32_MAX / in->dim[2]) /* positions in a plane are saved as int32 */
        return fn_error(FN_EINVAL,
                        "node '%s': max_pool2d supports input planes of at most 2^31 - 1 "
                        "elements, got %lld x %lld",
                        node->name, (long long)in->dim[1], (long long)in->dim[2]);
    return FN_OK;
}

static fn_status max_pool_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status max_pool_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static void max_pool_forward_rows_f32(fn_node *node, const fn_model_ctx *ctx, int id, int bands);
static void max_pool_forward_rows_f64(fn_node *node, const fn_model_ctx *ctx, int id, int bands);
static void max_pool_forward_piece_f32(fn_node *node, int64_t sample, const void *x,
                                       int64_t x_plane, int64_t first_row, int64_t rows);
static void max_pool_forward_piece_f64(fn_node *node, int64_t sample, const void *x,
                                       int64_t x_plane, int64_t first_row, int64_t rows);
static fn_status max_pool_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status max_pool_backward_f64(fn_node *node, const fn_model_ctx *ctx);
static void max_pool_input_grad_of_sample_f32(const fn_node *node, int64_t sample, void *out);
static void max_pool_input_grad_of_sample_f64(const fn_node *node, int64_t sample, void *out);
static fn_status avg_pool_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status avg_pool_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status avg_pool_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status avg_pool_backward_f64(fn_node *node, const fn_model_ctx *ctx);
static void avg_pool_input_grad_of_sample_f32(const fn_node *node, int64_t sample, void *out);
static void avg_pool_input_grad_of_sample_f64(const fn_node *node, int64_t sample, void *out);
static fn_status global_avg_pool_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status global_avg_pool_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static fn_status global_avg_pool_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status global_avg_pool_backward_f64(fn_node *node, const fn_model_ctx *ctx);

const fn_op fn_op_max_pool2d = {
    .type = "max_pool2d",
    .min_inputs = 1,
    .max_inputs = 1,
    .configure = max_pool_configure,
    .saved = max_pool_saved,
    .forward = {max_pool_forward_f32, max_pool_forward_f64},
    .backward = {max_pool_backward_f32, max_pool_backward_f64},
    .backward_ignores_output = true,
    .backward_ignores_inputs = true, /* the saved positions are enough */
    .input_grad_of_sample = {max_pool_input_grad_of_sample_f32,
                             max_pool_input_grad_of_sample_f64},
    .input_grad_passes_relu = true,
    .band_fits = max_pool_band_fits,
    .forward_band = {max_pool_forward_rows_f32, max_pool_forward_rows_f64},
    .input_rows_per_output_row = max_pool_input_rows_per_row,
    .forward_piece = {max_pool_forward_piece_f32, max_pool_forward_piece_f64},
};

const fn_op fn_op_avg_pool2d = {
    .type = "avg_pool2d",
    .min_inputs = 1,
    .max_inputs = 1,
    .configure = pool_configure,
    .forward = {avg_pool_forward_f32, avg_pool_forward_f64},
    .backward = {avg_pool_backward_f32, avg_pool_backward_f64},
    .backward_ignores_output = true,
    .backward_ignores_inputs = true,
    .input_grad_of_sample = {avg_pool_input_grad_of_sample_f32,
                             avg_pool_input_grad_of_sample_f64},
};

const fn_op fn_op_global_avg_pool2d = {
    .type = "global_avg_pool2d",
    .min_inputs = 1,
    .max_inputs = 1,
    .configure = global_avg_pool_configure,
    .forward = {global_avg_pool_forward_f32, global_avg_pool_forward_f64},
    .backward = {global_avg_pool_backward_f32, global_avg_pool_backward_f64},
    .backward_ignores_output = true,
    .backward_ignores_inputs = true,
};

/* Whether v replaces best as a window's maximum: when it is larger, or when it is the first NaN
 * (a NaN counts as the maximum, so that it propagates as in PyTorch). A select, not a branch:
 * on real data the outcome is a coin flip, and the loops below vectorise. */
#define FN_POOL_TAKES(v, best) ((v) > (best) || ((v) != (v) && (best) == (best)))

#define FN_TEMPLATE_FILE "pool.c"
#include "template.h"

#else /* templated half */

/* The loops below run, for one output row, over the window's input rows r, then its columns b,
 * then all the outputs j whose column b lies inside the input (pool_columns): a strided pass
 * along contiguous rows that vectorises, where a loop over each output's own window would not.
 * Each output still meets its window's elements in row-major order, so "first maximum" keeps
 * its meaning. */

/* Rows [i0, i1) of one (h, w) plane's (oh, ow) maximum; with track, where (oh, ow) receives the
 * position in the plane of each output's first maximum (row-major within the window). Inlined
 * with track a constant, so that a forward that saves nothing keeps the loop without the
 * positions. */
static inline __attribute__((always_inline)) void FN_T(max_pool_plane_body)(
    const real *plane, real *out, int32_t *where, bool track, int64_t h, int64_t w, int64_t i0,
    int64_t i1, int64_t ow, const int64_t kernel[2], const int64_t stride[2],
    const int64_t padding[2]) {
    for (int64_t i = i0; i < i1; i++) {
        int64_t h0, h1;
        pool_rows(i, h, kernel[0], stride[0], padding[0], &h0, &h1);
        real *o = out + i * ow;
        int32_t *at = track ? where + i * ow : NULL;
        for (int64_t j = 0; j < ow; j++) o[j] = -INFINITY;
        /* The window's first element, for a window of -inf only (nothing takes over from it). */
        if (track)
            for (int64_t j = 0; j < ow; j++) {
                int64_t col = j * stride[1] - padding[1];
                at[j] = (int32_t)(h0 * w + (col > 0 ? col : 0));
            }
        for (int64_t r = h0; r < h1; r++)
            for (int64_t b = 0; b < kernel[1]; b++) {
                int64_t lo, hi, shift = b - padding[1];
                pool_columns(b, w, ow, stride[1], padding[1], &lo, &hi);
                const real *row = plane + r * w;
                if (track) {
                    const int32_t base = (int32_t)(r * w + shift);
                    for (int64_t j = lo; j < hi; j++) {
                        real v = row[j * stride[1] + shift];
                        bool take = FN_POOL_TAKES(v, o[j]);
                        o[j] = take ? v : o[j];
                        at[j] = take ? base + (int32_t)(j * stride[1]) : at[j];
                    }
                } else {
                    for (int64_t j = lo; j < hi; j++) {
                        real v = row[j * stride[1] + shift];
                        o[j] = FN_POOL_TAKES(v, o[j]) ? v : o[j];
                    }
                }
            }
    }
}

/* The common 2 x 2 window with stride 2 and no padding, as max_pool_plane_body computes it (the
 * same maxima and positions): one loop along each output row, each output comparing its four
 * inputs in row-major order. The general loops make four passes of ow elements per output row,
 * which for the 12-wide rows of a 24 x 24 image cost more than the comparisons; this one
 * vectorises whole. */
static inline __attribute__((always_inline)) void FN_T(max_pool_2x2_body)(
    const real *plane, real *out, int32_t *where, bool track, int64_t w, int64_t i0, int64_t i1,
    int64_t ow) {
    for (int64_t i = i0; i < i1; i++) {
        const real *r0 = plane + 2 * i * w, *r1 = r0 + w;
        real *restrict o = out + i * ow;
        int32_t *restrict at = track ? where + i * ow : NULL;
        const int32_t base = (int32_t)(2 * i * w), below = (int32_t)w;
        for (int64_t j = 0; j < ow; j++) {
            real best = r0[2 * j], v;
            int32_t offset = 0; /* of the maximum from the window's first element */
            bool take;
            v = r0[2 * j + 1], take = FN_POOL_TAKES(v, best);
            best = take ? v : best, offset = take ? 1 : offset;
            v = r1[2 * j], take = FN_POOL_TAKES(v, best);
            best = take ? v : best, offset = take ? below : offset;
            v = r1[2 * j + 1], take = FN_POOL_TAKES(v, best);
            best = take ? v : best, offset = take ? below + 1 : offset;
            o[j] = best;
            if (track) at[j] = base + 2 * (int32_t)j + offset;
        }
    }
}

/* max_pool_2x2_body with rows of the common widths as loops of a constant length, which
 * vectorise whole: with a variable one, the last outputs of a 12-wide row fell to a scalar loop
 * whose comparisons are branches the data decides (1.4x slower on the CNN's 24 x 24 planes). */
static inline __attribute__((always_inline)) void FN_T(max_pool_2x2)(
    const real *plane, real *out, int32_t *where, bool track, int64_t w, int64_t i0, int64_t i1,
    int64_t ow) {
    switch (ow) {
    case 4: FN_T(max_pool_2x2_body)(plane, out, where, track, w, i0, i1, 4); break;
    case 8: FN_T(max_pool_2x2_body)(plane, out, where, track, w, i0, i1, 8); break;
    case 12: FN_T(max_pool_2x2_body)(plane, out, where, track, w, i0, i1, 12); break;
    case 16: FN_T(max_pool_2x2_body)(plane, out, where, track, w, i0, i1, 16); break;
    default: FN_T(max_pool_2x2_body)(plane, out, where, track, w, i0, i1, ow);
    }
}

/* Output rows [i0, i1) of one plane on the loops its window calls for, saving the positions or
 * not. */
static void FN_T(max_pool_plane)(const real *plane, real *out, int32_t *where, int64_t h,
                                 int64_t w, int64_t i0, int64_t i1, int64_t ow,
                                 const int64_t kernel[2], const int64_t stride[2],
                                 const int64_t padding[2]) {
    bool two_by_two = kernel[0] == 2 && kernel[1] == 2 && stride[0] == 2 && stride[1] == 2 &&
                      padding[0] == 0 && padding[1] == 0;
    if (two_by_two && where)
        FN_T(max_pool_2x2)(plane, out, where, true, w, i0, i1, ow);
    else if (two_by_two)
        FN_T(max_pool_2x2)(plane, out, NULL, false, w, i0, i1, ow);
    else if (where)
        FN_T(max_pool_plane_body)(plane, out, where, true, h, w, i0, i1, ow, kernel, stride,
                                  padding);
    else
        FN_T(max_pool_plane_body)(plane, out, NULL, false, h, w, i0, i1, ow, kernel, stride,
                                  padding);
}

/* x is (n, c, h, w), y is (n, c, oh, ow) with oh, ow from the floor-mode rule; argmax (n, c, oh,
 * ow), unless NULL, receives the position of each output's maximum in its input plane, or with
 * positive_only -1 for an output that is not positive: x is then a ReLU's output, whose backward
 * passes no gradient there, and the backward's scatter skips it (input_grad_relu). */
void FN_T(fn_max_pool2d_forward)(const real *x, real *y, int32_t *argmax, bool positive_only,
                                 int64_t n, int64_t c, int64_t h, int64_t w,
                                 const int64_t kernel[2], const int64_t stride[2],
                                 const int64_t padding[2], int threads) {
    int64_t oh = pool_out(h, kernel[0], stride[0], padding[0]);
    int64_t ow = pool_out(w, kernel[1], stride[1], padding[1]);
    int t = fn_threads_for(n * c * oh * ow * kernel[0] * kernel[1], threads);
    FN_PARALLEL_LOOP(t, p, n * c, {
        real *out = y + p * oh * ow;
        int32_t *at = argmax ? argmax + p * oh * ow : NULL;
        FN_T(max_pool_plane)(x + p * h * w, out, at, h, w, 0, oh, ow, kernel, stride, padding);
        if (at && positive_only)
            for (int64_t o = 0; o < oh * ow; o++) at[o] = out[o] > 0 ? at[o] : -1;
    });
}

/* One plane's input gradient gx (size elements) from its output gradient gy (outputs): each
 * output's gradient added at its maximum's position at[o], in output order; none from an output
 * whose position is -1 (fn_max_pool2d_forward's positive_only). */
static inline void FN_T(max_pool_scatter_plane)(const int32_t *at, const real *gy, real *gx,
                                                bool accumulate, int64_t size, int64_t outputs) {
    if (!accumulate)
        for (int64_t i = 0; i < size; i++) gx[i] = 0;
    for (int64_t o = 0; o < outputs; o++)
        if (at[o] >= 0) gx[at[o]] += gy[o];
}

/* argmax and grad_y are (n, c, oh, ow), grad_x is (n, c, h, w): each output's gradient is added
 * at its maximum's position, in output order (overlapping windows may share a maximum). grad_x
 * is overwritten, or added to with accumulate. */
void FN_T(fn_max_pool2d_backward)(const int32_t *argmax, const real *grad_y, real *grad_x,
                                  bool accumulate, int64_t n, int64_t c, int64_t h, int64_t w,
                                  int64_t oh, int64_t ow, int threads) {
    int t = fn_threads_for(n * c * (h * w + oh * ow), threads);
    FN_PARALLEL_LOOP(t, p, n * c, {
        FN_T(max_pool_scatter_plane)(argmax + p * oh * ow, grad_y + p * oh * ow,
                                     grad_x + p * h * w, accumulate, h * w, oh * ow);
    });
}

/* x is (n, c, h, w), y is (n, c, oh, ow): the window's sum (padding counts as zeros) over
 * kernel_h * kernel_w. */
void FN_T(fn_avg_pool2d_forward)(const real *x, real *y, int64_t n, int64_t c, int64_t h,
                                 int64_t w, const int64_t kernel[2], const int64_t stride[2],
                                 const int64_t padding[2], int threads) {
    int64_t oh = pool_out(h, kernel[0], stride[0], padding[0]);
    int64_t ow = pool_out(w, kernel[1], stride[1], padding[1]);
    real inv_area = (real)(1.0 / (double)(kernel[0] * kernel[1]));
    int t = fn_threads_for(n * c * oh * ow * kernel[0] * kernel[1], threads);
    FN_PARALLEL_LOOP(t, p, n * c, {
        const real *plane = x + p * h * w;
        for (int64_t i = 0; i < oh; i++) {
            int64_t h0, h1;
            pool_rows(i, h, kernel[0], stride[0], padding[0], &h0, &h1);
            real *o = y + (p * oh + i) * ow;
            for (int64_t j = 0; j < ow; j++) o[j] = 0;
            for (int64_t r = h0; r < h1; r++)
                for (int64_t b = 0; b < kernel[1]; b++) {
                    int64_t lo, hi, shift = b - padding[1];
                    pool_columns(b, w, ow, stride[1], padding[1], &lo, &hi);
                    const real *row = plane + r * w;
                    for (int64_t j = lo; j < hi; j++) o[j] += row[j * stride[1] + shift];
                }
            for (int64_t j = 0; j < ow; j++) o[j] *= inv_area;
        }
    });
}

/* One plane's input gradient gx (h, w) from its output gradient gy: each output's gradient over
 * kernel_h * kernel_w, added to its window's elements inside the input. */
static void FN_T(avg_pool_backward_plane)(const real *gy, real *gx, bool accumulate, int64_t h,
                                          int64_t w, const int64_t kernel[2],
                                          const int64_t stride[2], const int64_t padding[2]) {
    int64_t oh = pool_out(h, kernel[0], stride[0], padding[0]);
    int64_t ow = pool_out(w, kernel[1], stride[1], padding[1]);
    real inv_area = (real)(1.0 / (double)(kernel[0] * kernel[1]));
    /* Overlapping windows sum into the plane; see max pool. */
    if (!accumulate)
        for (int64_t i = 0; i < h * w; i++) gx[i] = 0;
    for (int64_t i = 0; i < oh; i++) {
        int64_t h0, h1;
        pool_rows(i, h, kernel[0], stride[0], padding[0], &h0, &h1);
        const real *g = gy + i * ow;
        for (int64_t r = h0; r < h1; r++)
            for (int64_t b = 0; b < kernel[1]; b++) {
                int64_t lo, hi, shift = b - padding[1];
                pool_columns(b, w, ow, stride[1], padding[1], &lo, &hi);
                real *row = gx + r * w;
                /* Distinct j write distinct columns, so this pass vectorises too. */
                for (int64_t j = lo; j < hi; j++) row[j * stride[1] + shift] += g[j] * inv_area;
            }
    }
}

/* grad_y is (n, c, oh, ow), grad_x is (n, c, h, w): each output's gradient over
 * kernel_h * kernel_w, added to the window's elements inside the input. grad_x is overwritten,
 * or added to with accumulate. */
void FN_T(fn_avg_pool2d_backward)(const real *grad_y, real *grad_x, bool accumulate, int64_t n,
                                  int64_t c, int64_t h, int64_t w, const int64_t kernel[2],
                                  const int64_t stride[2], const int64_t padding[2],
                                  int threads) {
    int64_t oh = pool_out(h, kernel[0], stride[0], padding[0]);
    int64_t ow = pool_out(w, kernel[1], stride[1], padding[1]);
    int t = fn_threads_for(n * c * oh * ow * kernel[0] * kernel[1], threads);
    FN_PARALLEL_LOOP(t, p, n * c, {
        FN_T(avg_pool_backward_plane)(grad_y + p * oh * ow, grad_x + p * h * w, accumulate, h, w,
                                      kernel, stride, padding);
    });
}

/* The sum of a row of `count` values in double, over 8 independent partial sums: one running
 * sum would wait on each addition's latency, and reordering a floating-point sum is not the
 * compiler's to do. The order is fixed by `count` alone. */
static inline double FN_T(pool_row_sum)(const real *row, int64_t count) {
    double lane[8] = {0}, sum = 0;
    int64_t i = 0;
    for (; i + 8 <= count; i += 8)
        for (int l = 0; l < 8; l++) lane[l] += row[i + l];
    for (; i < count; i++) sum += row[i];
    for (int l = 0; l < 8; l++) sum += lane[l];
    return sum;
}

/* x is (planes, area), y is (planes): the mean of each plane, summed in double. */
void FN_T(fn_global_avg_pool2d_forward)(const real *x, real *y, int64_t planes, int64_t area,
                                        int threads) {
    int t = fn_threads_for(planes * area, threads);
    double inv_area = 1.0 / (double)area;
    FN_PARALLEL_LOOP(t, p, planes, {
        y[p] = (real)(FN_T(pool_row_sum)(x + p * area, area) * inv_area);
    });
}

/* grad_y is (planes), grad_x is (planes, area) = grad_y / area broadcast over each plane;
 * overwritten, or added to with accumulate. */
void FN_T(fn_global_avg_pool2d_backward)(const real *grad_y, real *grad_x, bool accumulate,
                                         int64_t planes, int64_t area, int threads) {
    int t = fn_threads_for(planes * area, threads);
    real inv_area = (real)(1.0 / (double)area);
    FN_PARALLEL_LOOP(t, p, planes, {
        real g = grad_y[p] * inv_area;
        real *gx = grad_x + p * area;
        if (accumulate)
            for (int64_t i = 0; i < area; i++) gx[i] += g;
        else
            for (int64_t i = 0; i < area; i++) gx[i] = g;
    });
}

static fn_status FN_T(max_pool_forward)(fn_node *node, const fn_model_ctx *ctx) {
    const fn_shape *in = &node->in_shape[0];
    FN_T(fn_max_pool2d_forward)((const real *)node->in[0], (real *)node->out,
                                ctx->keep ? (int32_t *)node->saved : NULL, node->input_grad_relu,
                                ctx->batch,
                                in->dim[0], in->dim[1], in->dim[2], node->attr.pool.kernel,
                                node->attr.pool.stride, node->attr.pool.padding, ctx->threads);
    return FN_OK;
}

/* Output rows [i0, i1) of `planes` planes of the node's max pool, without the positions: input
 * plane p, of h rows, at x + p * x_plane, output plane p at y + p * oh * ow. */
static void FN_T(max_pool_node_rows)(const fn_node *node, const real *x, int64_t x_plane,
                                     int64_t h, int64_t planes, real *y, int64_t i0, int64_t i1) {
    const int64_t *kernel = node->attr.pool.kernel, *stride = node->attr.pool.stride,
                  *padding = node->attr.pool.padding;
    const int64_t w = node->in_shape[0].dim[2];
    const int64_t oh = node->out_shape.dim[1], ow = node->out_shape.dim[2];
    for (int64_t p = 0; p < planes; p++)
        FN_T(max_pool_plane)(x + p * x_plane, y + p * oh * ow, NULL, h, w, i0, i1, ow, kernel,
                             stride, padding);
}

/* Band `id` of `bands` of the output's rows, as a band chain runs it (model.c): an inference
 * forward, which saves no positions. */
static void FN_T(max_pool_forward_rows)(fn_node *node, const fn_model_ctx *ctx, int id,
                                        int bands) {
    const fn_shape *in = &node->in_shape[0];
    int64_t i0, i1;
    fn_partition(node->out_shape.dim[1], bands, id, &i0, &i1);
    FN_T(max_pool_node_rows)(node, (const real *)node->in[0], in->dim[1] * in->dim[2], in->dim[1],
                             ctx->batch * in->dim[0], (real *)node->out, i0, i1);
}

/* The output rows of sample `sample` that input rows [first_row, first_row + rows) make, from
 * those rows alone at x (plane p at x + p * x_plane): each piece a plane of `rows` rows whose
 * windows (as tall as their stride, max_pool_input_rows_per_row) are the full plane's. */
static void FN_T(max_pool_forward_piece)(fn_node *node, int64_t sample, const void *x,
                                         int64_t x_plane, int64_t first_row, int64_t rows) {
    const int64_t channels = node->in_shape[0].dim[0], stride = node->attr.pool.stride[0];
    const int64_t oh = node->out_shape.dim[1], ow = node->out_shape.dim[2];
    real *y = (real *)node->out + (sample * channels * oh + first_row / stride) * ow;
    FN_T(max_pool_node_rows)(node, (const real *)x, x_plane, rows, channels, y, 0, rows / stride);
}

static fn_status FN_T(max_pool_backward)(fn_node *node, const fn_model_ctx *ctx) {
    /* Deferred: the producer of the input takes it image by image (input_grad_of_sample). */
    if (!node->grad_in[0] || node->input_grad_deferred) return FN_OK;
    const fn_shape *in = &node->in_shape[0];
    const fn_shape *out = &node->out_shape;
    FN_T(fn_max_pool2d_backward)((const int32_t *)node->saved, (const real *)node->grad_out,
                                 (real *)node->grad_in[0], node->grad_in_accumulate[0],
                                 ctx->batch, in->dim[0], in->dim[1], in->dim[2], out->dim[1],
                                 out->dim[2], ctx->threads);
    return FN_OK;
}

/* Sample `sample`'s input gradient (in_size elements) into out, for the node that produced the
 * input (input_grad_deferred), after this node's backward has run: the planes of
 * fn_max_pool2d_backward, in cache for that node's GEMMs; with input_grad_relu, already passed
 * through the ReLU fused into that node (the forward marked the outputs it stops). */
static void FN_T(max_pool_input_grad_of_sample)(const fn_node *node, int64_t sample, void *out) {
    const fn_shape *in = &node->in_shape[0];
    const int64_t size = in->dim[1] * in->dim[2];
    const int64_t outputs = node->out_shape.dim[1] * node->out_shape.dim[2];
    const int32_t *at = (const int32_t *)node->saved + sample * node->out_size;
    const real *gy = (const real *)node->grad_out + sample * node->out_size;
    for (int64_t p = 0; p < in->dim[0]; p++)
        FN_T(max_pool_scatter_plane)(at + p * outputs, gy + p * outputs, (real *)out + p * size,
                                     false, size, outputs);
}

static fn_status FN_T(avg_pool_forward)(fn_node *node, const fn_model_ctx *ctx) {
    const fn_shape *in = &node->in_shape[0];
    FN_T(fn_avg_pool2d_forward)((const real *)node->in[0], (real *)node->out, ctx->batch,
                                in->dim[0], in->dim[1], in->dim[2], node->attr.pool.kernel,
                                node->attr.pool.stride, node->attr.pool.padding, ctx->threads);
    return FN_OK;
}

static fn_status FN_T(avg_pool_backward)(fn_node *node, const fn_model_ctx *ctx) {
    /* Deferred: the producer of the input takes it image by image (input_grad_of_sample). */
    if (!node->grad_in[0] || node->input_grad_deferred) return FN_OK;
    const fn_shape *in = &node->in_shape[0];
    FN_T(fn_avg_pool2d_backward)((const real *)node->grad_out, (real *)node->grad_in[0],
                                 node->grad_in_accumulate[0], ctx->batch, in->dim[0], in->dim[1],
                                 in->dim[2], node->attr.pool.kernel, node->attr.pool.stride,
                                 node->attr.pool.padding, ctx->threads);
    return FN_OK;
}

/* Sample `sample`'s input gradient (in_size elements) into out, for the node that produced the
 * input (input_grad_deferred), after this node's backward has run: the planes of
 * fn_avg_pool2d_backward, in cache for that node's GEMMs. */
static void FN_T(avg_pool_input_grad_of_sample)(const fn_node *node, int64_t sample, void *out) {
    const fn_shape *in = &node->in_shape[0];
    const int64_t size = in->dim[1] * in->dim[2];
    const int64_t outputs = node->out_shape.dim[1] * node->out_shape.dim[2];
    const real *gy = (const real *)node->grad_out + sample * node->out_size;
    for (int64_t p = 0; p < in->dim[0]; p++)
        FN_T(avg_pool_backward_plane)(gy + p * outputs, (real *)out + p * size, false, in->dim[1],
                                      in->dim[2], node->attr.pool.kernel, node->attr.pool.stride,
                                      node->attr.pool.padding);
}

static fn_status FN_T(global_avg_pool_forward)(fn_node *node, const fn_model_ctx *ctx) {
    const fn_shape *in = &node->in_shape[0];
    FN_T(fn_global_avg_pool2d_forward)((const real *)node->in[0], (real *)node->out,
                                       ctx->batch * in->dim[0], in->dim[1] * in->dim[2],
                                       ctx->threads);
    return FN_OK;
}

static fn_status FN_T(global_avg_pool_backward)(fn_node *node, const fn_model_ctx *ctx) {
    if (!node->grad_in[0]) return FN_OK;
    const fn_shape *in = &node->in_shape[0];
    FN_T(fn_global_avg_pool2d_backward)((const real *)node->grad_out, (real *)node->grad_in[0],
                                        node->grad_in_accumulate[0], ctx->batch * in->dim[0],
                                        in->dim[1] * in->dim[2], ctx->threads);
    return FN_OK;
}

#endif
