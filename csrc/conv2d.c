/* conv2d.c — 2-D convolution with PyTorch's nn.Conv2d semantics: input (N, C, H, W), weight
 * (out_channels, in_channels / groups, kh, kw), optional bias (out_channels); stride, zero
 * padding, dilation and groups.
 *
 * Each image and group is one GEMM, Y[g] (out/g, P) = W[g] (out/g, K) @ col (K, P), where col is
 * the group's channels unrolled by fn_im2col: K = in/g * kh * kw rows, P = out_h * out_w columns.
 * Threads take whole images, each with its own column buffer in the workspace and single-threaded
 * GEMMs: every GEMM stays as large as the layer allows, and the columns are still in the thread's
 * cache when its GEMM reads them. A batch smaller than the thread count (inference on one image)
 * runs image after image instead, with im2col and the GEMM split over the threads.
 *
 * 3x3 convolutions of stride 1 with enough channels and columns (geometry.winograd) run each
 * image, or a few small images together, by Winograd's F(2x2, 3x3) instead (winograd.c): forward,
 * input gradient (the output gradient convolved with the kernels rotated) and, unless it reads
 * shifted windows (below), weight gradient, whose sums stay in Winograd's transformed form over
 * a chunk's images. Batch-1 forwards cut into bands of channels keep im2col.
 *
 * Backward recomputes the columns rather than keeping them from forward: they are kh * kw times
 * the input's size, more memory than the rest of a network's activations. The weight and bias
 * gradients are sums over images; the batch is cut into chunks of consecutive images, each chunk
 * sums its images in order into a private partial (chunk 0 directly into the gradient), and the
 * partials are added in chunk order at the end. There is one chunk per thread, so the result
 * depends on the thread count but never on scheduling; in deterministic mode the chunks come from
 * the sizes alone (fn_reduction_parts) and the threads take whole chunks, so it does not depend on
 * the thread count either.
 *
 * A ReLU that directly follows, on this layer's output alone, is applied here (relu_fused): to
 * each image's output right after its GEMMs, while it is still in cache, and in backward by
 * passing each image's gradient where the output is positive, into the part's buffer, before the
 * GEMMs read it. The separate passes of the ReLU over the whole batch each way are gone.
 * Likewise the batch norm or pool that reads this layer's output alone (through the fused
 * ReLU, if there is one) leaves the output gradient to be derived here (fused_consumer), image by
 * image into the part's buffer, the ReLU then passing it where the output is positive (max pool
 * does that itself: a window's maximum tells); in a training forward, batch norm takes its
 * statistics of each image of the output here, right after the image's GEMMs. A max pool's input
 * gradient is then never written whole: zeros but at each window's maximum, it was written,
 * read back and masked at the output's size.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Sizes a spec may ask for are bounded like shapes (spec.c): far beyond any real layer, and small
 * enough that products of a few of them cannot overflow int64. */
#define CONV_MAX_ELEMENTS ((double)((int64_t)1 << 40))

/* Reads `key` as a list of two integers [h, w] into out; when absent (or null) and not required,
 * both are default_value. */
static fn_status conv_get_pair(const fn_json *spec, const char *key, int required,
                               int64_t default_value, int64_t out[2], const char *node_name) {
    const fn_json *value = fn_json_get(spec, key);
    if (!value || value->type == FN_JSON_NULL) {
        if (required) return fn_error(FN_EINVAL, "node '%s': missing \"%s\"", node_name, key);
        out[0] = out[1] = default_value;
        return FN_OK;
    }
    int64_t pair[2];
    if (value->type != FN_JSON_ARRAY || value->count != 2 ||
        !fn_json_to_int64(&value->items[0], &pair[0]) ||
        !fn_json_to_int64(&value->items[1], &pair[1]))
        return fn_error(FN_EINVAL, "node '%s': \"%s\" must be a list of two integers [h, w]",
                        node_name, key);
    out[0] = pair[0];
    out[1] = pair[1];
    return FN_OK;
}

/* Checks that both values of a pair are in [low, 2^31). */
static fn_status conv_check_pair(const fn_node *node, const char *layer, const char *key,
                                 const int64_t pair[2], int64_t low) {
    for (int d = 0; d < 2; d++)
        if (pair[d] < low || pair[d] > INT32_MAX)
            return fn_error(FN_EINVAL, "node '%s': %s needs %s in [%lld, 2^31), got [%lld, %lld]",
                            node->name, layer, key, (long long)low, (long long)pair[0],
                            (long long)pair[1]);
    return FN_OK;
}

static fn_status conv_configure(fn_node *node, const fn_json *spec) {
    int64_t in_channels, out_channels, groups;
    int64_t kernel[2], stride[2], padding[2], dilation[2];
    int bias;
    FN_TRY(fn_json_get_int(spec, "in_channels", 1, 0, &in_channels, node->name));
    FN_TRY(fn_json_get_int(spec, "out_channels", 1, 0, &out_channels, node->name));
    FN_TRY(conv_get_pair(spec, "kernel_size", 1, 0, kernel, node->name));
    FN_TRY(conv_get_pair(spec, "stride", 0, 1, stride, node->name));
    FN_TRY(conv_get_pair(spec, "padding", 0, 0, padding, node->name));
    FN_TRY(conv_get_pair(spec, "dilation", 0, 1, dilation, node->name));
    FN_TRY(fn_json_get_int(spec, "groups", 0, 1, &groups, node->name));
    FN_TRY(fn_json_get_bool(spec, "bias", 0, 1, &bias, node->name));

    /* The layer as PyTorch prints it, for messages. */
    char layer[160];
    snprintf(layer, sizeof layer, "Conv2d(%lld, %lld, kernel_size=(%lld, %lld))",
             (long long)in_channels, (long long)out_channels, (long long)kernel[0],
             (long long)kernel[1]);
    if (in_channels < 1 || out_channels < 1 || in_channels > INT32_MAX ||
        out_channels > INT32_MAX)
        return fn_error(FN_EINVAL, "node '%s': %s needs channel counts in [1, 2^31)", node->name,
                        layer);
    if (groups < 1 || groups > INT32_MAX || in_channels % groups || out_channels % groups)
        return fn_error(FN_EINVAL,
                        "node '%s': %s with groups=%lld: groups must be positive and divide both "
                        "in_channels and out_channels",
                        node->name, layer, (long long)groups);
    FN_TRY(conv_check_pair(node, layer, "kernel_size", kernel, 1));
    FN_TRY(conv_check_pair(node, layer, "stride", stride, 1));
    FN_TRY(conv_check_pair(node, layer, "padding", padding, 0));
    FN_TRY(conv_check_pair(node, layer, "dilation", dilation, 1));

    const fn_shape *in = &node->in_shape[0];
    char shape[64];
    if (in->ndim != 3 || in->dim[0] != in_channels)
        return fn_error(FN_EINVAL,
                        "node '%s': %s expects input of shape (%lld, H, W) per sample, but its "
                        "input has shape %s",
                        node->name, layer, (long long)in_channels,
                        fn_shape_str(in, shape, sizeof shape));
    int64_t out_hw[2];
    for (int d = 0; d < 2; d++) {
        /* Every operand is below 2^31, so none of this overflows. */
        int64_t padded = in->dim[1 + d] + 2 * padding[d];
        int64_t extent = dilation[d] * (kernel[d] - 1) + 1; /* the dilated kernel's span */
        if (padded < extent)
            return fn_error(FN_EINVAL,
                            "node '%s': %s: input of shape %s is too small: its %s padded to "
                            "%lld is less than the (dilated) kernel's extent %lld",
                            node->name, layer, fn_shape_str(in, shape, sizeof shape),
                            d == 0 ? "height" : "width", (long long)padded, (long long)extent);
        out_hw[d] = (padded - extent) / stride[d] + 1;
    }
    double k = (double)(in_channels / groups) * (double)kernel[0] * (double)kernel[1];
    double plane = (double)out_hw[0] * (double)out_hw[1];
    if ((double)out_channels * plane > CONV_MAX_ELEMENTS || k * plane > CONV_MAX_ELEMENTS ||
        (double)out_channels * k > CONV_MAX_ELEMENTS)
        return fn_error(FN_EINVAL, "node '%s': %s on input %s is too large", node->name, layer,
                        fn_shape_str(in, shape, sizeof shape));

    node->attr.conv.in_channels = in_channels;
    node->attr.conv.out_channels = out_channels;
    node->attr.conv.groups = groups;
    node->attr.conv.bias = bias != 0;
    /* PyTorch's fans of an (out, in / groups, kh, kw) weight: dims 1 and 0, each times the
     * kernel's area (the groups divide fan_in only). */
    int64_t area = kernel[0] * kernel[1];
    FN_TRY(fn_init_parse(spec, "init", false, in_channels / groups * area, out_channels * area,
                         &node->attr.conv.weight_init, node->name));
    const fn_json *bias_init = fn_json_get(spec, "bias_init");
    if (!bias && bias_init && bias_init->type != FN_JSON_NULL)
        return fn_error(FN_EINVAL, "node '%s': bias_init is given but %s has no bias", node->name,
                        layer);
    FN_TRY(fn_init_parse(spec, "bias_init", true, in_channels / groups * area,
                         out_channels * area, &node->attr.conv.bias_init, node->name));
    for (int d = 0; d < 2; d++) {
        node->attr.conv.kernel[d] = kernel[d];
        node->attr.conv.stride[d] = stride[d];
        node->attr.conv.padding[d] = padding[d];
        node->attr.conv.dilation[d] = dilation[d];
    }
    node->out_shape = (fn_shape){3, {out_channels, out_hw[0], out_hw[1]}};
    node->n_params = bias ? 2 : 1;
    node->param_decl[0] = (fn_param_decl){
        .name = "weight",
        .shape = {4, {out_channels, in_channels / groups, kernel[0], kernel[1]}}};
    if (bias)
        node->param_decl[1] =
            (fn_param_decl){.name = "bias", .shape = {1, {out_channels}}, .is_bias = true};
    return FN_OK;
}

/* From the distributions configure resolved ("init", "bias_init"; PyTorch's default without
 * them). */
static void conv_init(fn_node *node, fn_dtype dtype, void *const params[], uint64_t seed) {
    int64_t count = fn_shape_size(&node->param_decl[0].shape);
    fn_fill_dist(&node->attr.conv.weight_init, dtype, params[0], count, seed,
                 fn_param_stream(node, 0));
    if (node->attr.conv.bias)
        fn_fill_dist(&node->attr.conv.bias_init, dtype, params[1], node->attr.conv.out_channels,
                     seed, fn_param_stream(node, 1));
}

/* The sizes every kernel of a node works with, from its attributes and shapes. */
typedef struct {
    int64_t channels, height, width;        /* input, per sample */
    int64_t out_channels, out_h, out_w;     /* output, per sample */
    int64_t groups, group_in, group_out;    /* channels per group, in and out */
    int64_t k;                              /* rows of the column matrix: group_in * kh * kw */
    int64_t plane;                          /* its columns: out_h * out_w */
    /* 1x1, stride 1, no padding: each group's input planes are its column matrix already. */
    bool pointwise;
    /* The weight gradient reads the input's windows from planes shifted by each kernel column
     * instead of unrolling them (conv_weight_grad_windows): stride 1 along the width, so that
     * a window's row is a contiguous run; rows of a multiple of 16 outputs, aligned whole
     * vectors of the dot products; few output channels for many output positions, where the
     * weight gradient is computed as dot products anyway (fn_gemm_dot_pays); and the shifted
     * planes with the taps' offsets fit the column buffer. */
    bool windows;
    /* Forward and input gradient by Winograd's F(2x2, 3x3) (winograd.c): a 3x3 kernel, stride
     * and dilation 1, one group, padding of at most 2 (the input gradient's convolution pads by
     * 2 - p), at least WINOGRAD_MIN_CHANNELS channels in and out, and input and output at least
     * WINOGRAD_MIN_WIDTH wide; below WINOGRAD_WIDE, for batches of winograd_images images or
     * more (conv_plan.winograd). */
    bool winograd;
    /* The images a Winograd convolution takes at once: enough for WINOGRAD_MIN_TILES tiles, one
     * if an image has them. */
    int64_t winograd_images;
    /* The input gradient by Winograd too: its convolution has this layer's in and out channels
     * swapped, and its transforms cost in proportion to its input channels (this layer's
     * output's) while it saves in proportion to both: it pays where it has at most as many in
     * as out (the CNN's 32-to-64 layer's input gradient took 1.07x longer by Winograd; ResNet-8's
     * 16 and 32-channel ones 1.13x and 1.08x less). */
    bool winograd_grad;
} conv_geometry;

/* Where Winograd's transforms cost less than the multiplications they save (measured on one
 * image's forward, against im2col and the GEMM: 16 channels of 32 x 32 in and out 1.30x, 16 to
 * 32 1.63x, 32 of 16 x 16 1.17x, 32 to 64 of 26 x 26 unpadded 1.40x; 64 of 8 x 8 0.58x, where
 * the 16 tiles of an image make products too small for the kernel; 8 of 32 x 32 0.98x). Images
 * narrower than WINOGRAD_WIDE run by Winograd only in groups of WINOGRAD_MIN_TILES tiles or more
 * (four of 8 x 8: ResNet-8's 64-channel layer, forward and backward with its batch norm at batch
 * 128, 1.3x faster than by im2col). */
#define WINOGRAD_MIN_CHANNELS 16
#define WINOGRAD_MIN_WIDTH 8
#define WINOGRAD_WIDE 16
#define WINOGRAD_MIN_TILES 64

static conv_geometry conv_geometry_of(const fn_node *node) {
    conv_geometry g;
    g.channels = node->in_shape[0].dim[0];
    g.height = node->in_shape[0].dim[1];
    g.width = node->in_shape[0].dim[2];
    g.out_channels = node->out_shape.dim[0];
    g.out_h = node->out_shape.dim[1];
    g.out_w = node->out_shape.dim[2];
    g.groups = node->attr.conv.groups;
    g.group_in = g.channels / g.groups;
    g.group_out = g.out_channels / g.groups;
    g.k = g.group_in * node->attr.conv.kernel[0] * node->attr.conv.kernel[1];
    g.plane = g.out_h * g.out_w;
    /* Dilation does not matter for a 1x1 kernel. */
    g.pointwise = node->attr.conv.kernel[0] == 1 && node->attr.conv.kernel[1] == 1 &&
                  node->attr.conv.stride[0] == 1 && node->attr.conv.stride[1] == 1 &&
                  node->attr.conv.padding[0] == 0 && node->attr.conv.padding[1] == 0;
    /* In 4-byte units, the tighter case: 8-byte offsets against float columns. */
    double shifted = (double)node->attr.conv.kernel[1] * (double)g.group_in *
                     (double)(g.height + 2 * node->attr.conv.padding[0]) * (double)g.out_w;
    g.windows = !g.pointwise && node->attr.conv.stride[1] == 1 && g.out_w % 16 == 0 &&
                fn_gemm_dot_pays(g.group_out, g.plane) &&
                shifted + 2.0 * (double)g.k + 2 <= (double)g.k * (double)g.plane;
    const int64_t *kernel = node->attr.conv.kernel, *stride = node->attr.conv.stride;
    const int64_t *dilation = node->attr.conv.dilation, *padding = node->attr.conv.padding;
    g.winograd = kernel[0] == 3 && kernel[1] == 3 && stride[0] == 1 && stride[1] == 1 &&
                 dilation[0] == 1 && dilation[1] == 1 && g.groups == 1 && padding[0] <= 2 &&
                 padding[1] <= 2 && g.channels >= WINOGRAD_MIN_CHANNELS &&
                 g.out_channels >= WINOGRAD_MIN_CHANNELS && g.out_w >= WINOGRAD_MIN_WIDTH &&
                 g.width >= WINOGRAD_MIN_WIDTH;
    g.winograd_grad = g.winograd && g.out_channels <= g.channels;
    const int64_t tiles = (g.out_h + 1) / 2 * ((g.out_w + 1) / 2);
    g.winograd_images = tiles >= WINOGRAD_MIN_TILES ? 1 : (WINOGRAD_MIN_TILES + tiles - 1) / tiles;
    return g;
}

/* How a batch is shared: `parts` threads take whole images with single-threaded kernels, or, for
 * a batch smaller than the thread count, one part runs kernels on `inner_threads` threads. The
 * batch is cut into `chunks` of consecutive images for the gradient sums (see the top of the
 * file), each part taking whole chunks. The workspace holds a column buffer of col_bytes per part
 * (followed, with a fused ReLU or a derived gradient, by the output gradient of an image, or of
 * a group that Winograd's input or weight gradient takes at once: mask_bytes, then with
 * Winograd's weight gradient its transformed sums: du_bytes),
 * then a weight-and-bias partial of partial_bytes for each chunk after the first. unsplit: the
 * GEMMs run single-threaded for every thread count, so they need not be cut into deterministic
 * mode's blocks (fn_gemm_unsplit). */
typedef struct {
    int parts, chunks, inner_threads;
    /* Forward of a batch smaller than the thread count: each image's output is cut into
     * `bands` (> 1), one per thread, each with its own columns and single-threaded GEMMs, so
     * that no thread reads columns another one wrote (inner_threads otherwise): bands of output
     * rows, each from the columns of its rows, or, for small planes, of output channels
     * (band_channels), each from all the columns. */
    int bands;
    bool band_channels;
    bool unsplit;
    /* Winograd forward and input gradient (geometry.winograd and winograd_grad, narrow images
     * only in batches of winograd_images or more), on `winograd_images` images at a call; the
     * weight gradient too (winograd_weight_grad) where each part's kernels run on one thread. */
    bool winograd, winograd_grad, winograd_weight_grad;
    int64_t winograd_images;
    /* u_bytes: the Winograd-transformed weights, at the start of the workspace (0 without). */
    size_t u_bytes, col_bytes, mask_bytes, du_bytes, partial_bytes;
} conv_plan;

static size_t conv_round64(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

/* The threads worth using for `work` multiply-adds, at most `threads`: below FN_PARALLEL_GRAIN
 * per thread, a thread costs more to wake than it saves. In double: the work can pass 2^63 for
 * absurd (valid) sizes. */
static int conv_useful_threads(double work, int threads) {
    return work / FN_PARALLEL_GRAIN >= threads ? threads
           : work < FN_PARALLEL_GRAIN         ? 1
                                              : (int)(work / FN_PARALLEL_GRAIN);
}

#define CONV_SPLIT_WORK ((double)(1 << 22))

/* Forward splits an image into bands from this many multiply-adds: a thread's share is
 * independent there (its own columns, its own GEMM), so it pays earlier than the inner split, but
 * waking the team costs ~5-10 us. Bands of rows hold at least CONV_BAND_COLUMNS output positions,
 * else bands of channels at least CONV_BAND_CHANNELS channels (each computes all the columns).
 * Measured on batch-1 convolutions, two threads against one: 16 channels of 32 x 32, 3 x 3
 * (2.4 M multiply-adds), 1.28x faster; 32 of 16 x 16 (2.4 M), 1.32x; 64 of 8 x 8 (2.4 M) in bands
 * of 4 rows, 0.83x; 3 to 16 channels of 32 x 32 (0.44 M), 0.69x. */
#define CONV_BAND_WORK ((double)(1 << 20))
#define CONV_BAND_COLUMNS 128
#define CONV_BAND_CHANNELS 16

/* A band of rows is unrolled and multiplied in pieces whose columns take about this many bytes
 * (up to twice as many to fill whole slivers): each piece's columns are written and read back at
 * once through one buffer, which stays in L2, where a whole band's columns had to be fetched from
 * L3 for writing at every call (in a batch-1 inference, the large linear layer after the
 * convolutions streams its weights through L2 in between). Measured in the batch-1 latency, alternating builds: the CNN 129-133 ->
 * 126-130 us (its second convolution in pieces of 4 rows, 110 KB, instead of bands of 12,
 * 331 KB; pieces of 8 and 4 rows, 1.01-1.05x); ResNet-8 152-154 -> 143-144 us. */
#define CONV_PIECE_BYTES (128 * 1024)

/* The rows of each piece of a band of `rows` output rows (a multiple of `multiple`): all of them
 * when their columns fit CONV_PIECE_BYTES, else the band cut into equal pieces that fit, each
 * rounded up to a multiple of `multiple` (whole windows of a consumer that takes the pieces) and
 * to fill whole slivers of the GEMM's columns where that at most doubles a piece: 32 columns, a
 * whole number of slivers in every build (a sliver cut by the edge costs about as much as a whole
 * one: pieces of 3 and 6 rows of 24 positions, 2.25 and 4.5 slivers, ran 0.8x and 0.93x of whole
 * bands). */
static int64_t conv_piece_rows(const conv_geometry *g, int64_t rows, int64_t multiple,
                               size_t elem_size) {
    const double row_bytes = (double)g->k * (double)g->out_w * (double)elem_size;
    int64_t fit = (int64_t)(CONV_PIECE_BYTES / row_bytes);
    if (fit < 1) fit = 1;
    if (fit >= rows) return rows;
    int64_t pieces = (rows + fit - 1) / fit, step = (rows + pieces - 1) / pieces;
    int64_t a = g->out_w, b = 32; /* whole slivers: multiples of 32 / gcd(out_w, 32) rows */
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    const int64_t whole = 32 / a;
    int64_t unit = whole; /* the least multiple of both */
    while (unit % multiple) unit += whole;
    /* Whole slivers only while they at most double the piece (an odd width needs 32 rows) */
    if ((step + unit - 1) / unit * unit > 2 * fit) unit = multiple;
    step = (step + unit - 1) / unit * unit;
    return step < rows ? step : rows;
}

/* Whether a batch of `batch` images runs by Winograd: images narrower than WINOGRAD_WIDE only
 * where they fill a group (geometry.winograd_images). */
static bool conv_winograd_for(const conv_geometry *g, int64_t batch) {
    return g->winograd && ((g->out_w >= WINOGRAD_WIDE && g->width >= WINOGRAD_WIDE) ||
                           batch >= g->winograd_images);
}

/* per_image_grad: backward rewrites each image's output gradient into the part's buffer (a fused
 * ReLU, or a gradient derived from the consumer's). */
static conv_plan conv_plan_of(const conv_geometry *g, int64_t batch, int threads,
                              bool deterministic, bool per_image_grad, size_t elem_size) {
    conv_plan plan;
    double work = (double)batch * (double)g->out_channels * (double)g->k * (double)g->plane;
    if (deterministic) {
        /* Chunks from the sizes alone; the threads take whole chunks, and a single part (one
         * thread, or one chunk) runs its kernels on all of them. */
        int useful = conv_useful_threads(work, FN_DETERMINISTIC_PARTS);
        plan.chunks = batch < useful ? (int)batch : useful;
        plan.parts = plan.chunks < threads ? plan.chunks : threads;
        plan.inner_threads = plan.parts > 1 ? 1 : threads;
        /* With several chunks a part's kernels run on one thread whatever the thread count
         * (one thread is one part); with one chunk they run on all the threads there are. */
        plan.unsplit = plan.chunks > 1;
        plan.bands = 1; /* bands would make the GEMMs' bits depend on the thread count */
        plan.band_channels = false;
    } else {
        int useful = conv_useful_threads(work, threads);
        bool by_images = batch >= useful;
        plan.parts = plan.chunks = by_images ? useful : 1;
        /* Fewer images than threads (batch-1 inference): the image's im2col and GEMM split over
         * the threads only when each share is worth a wake-up of the team and a join; below
         * CONV_SPLIT_WORK multiply-adds two threads measured slower than one (ResNet-8's
         * 16-channel 3x3 convolutions on a 32x32 image, 2.4 M each). */
        plan.inner_threads = by_images || work < CONV_SPLIT_WORK ? 1 : threads;
        plan.unsplit = plan.inner_threads == 1; /* what fn_gemm does on one thread */
        int64_t bands = g->plane / CONV_BAND_COLUMNS < g->out_h ? g->plane / CONV_BAND_COLUMNS
                                                                 : g->out_h;
        plan.band_channels = bands < 2 && g->groups == 1;
        if (plan.band_channels) bands = g->out_channels / CONV_BAND_CHANNELS;
        plan.bands = by_images || work < CONV_BAND_WORK || bands < 2 ? 1
                     : bands < threads                                ? (int)bands
                                                                      : threads;
    }
    plan.col_bytes = g->pointwise ? 0 : conv_round64((size_t)(g->k * g->plane) * elem_size);
    plan.u_bytes = 0;
    plan.winograd = conv_winograd_for(g, batch);
    plan.winograd_grad = plan.winograd && g->winograd_grad;
    plan.winograd_images = plan.winograd ? g->winograd_images : 1;
    plan.winograd_weight_grad = plan.winograd && plan.unsplit && !g->windows;
    plan.du_bytes = plan.winograd_weight_grad
                        ? conv_round64((size_t)(16 * g->channels * g->out_channels) * elem_size)
                        : 0;
    if (plan.winograd) {
        /* A part's Winograd buffers take the column buffer's place: the forward's, and the
         * input gradient's (its in and out channels swapped). */
        const int64_t images = plan.winograd_images;
        int64_t forward =
            fn_winograd_work(g->channels, g->out_channels, g->out_h, g->out_w, images);
        int64_t backward = plan.winograd_grad ? fn_winograd_work(g->out_channels, g->channels,
                                                                 g->height, g->width, images)
                                              : 0;
        size_t most = (size_t)(forward > backward ? forward : backward) * elem_size;
        if (conv_round64(most) > plan.col_bytes) plan.col_bytes = conv_round64(most);
        plan.u_bytes = conv_round64((size_t)(16 * g->channels * g->out_channels) * elem_size);
    }
    /* The input and weight gradients by Winograd read the output gradients of their images at
     * once. */
    const int64_t grad_images =
        plan.winograd_grad || plan.winograd_weight_grad ? plan.winograd_images : 1;
    plan.mask_bytes =
        per_image_grad
            ? conv_round64((size_t)(grad_images * g->out_channels * g->plane) * elem_size)
            : 0;
    plan.partial_bytes =
        conv_round64((size_t)(g->out_channels * g->k + g->out_channels) * elem_size);
    return plan;
}

static size_t conv_plan_bytes(const conv_plan *plan) {
    size_t part = plan->col_bytes + plan->mask_bytes + plan->du_bytes;
    size_t by_parts = (size_t)plan->parts * part + (size_t)(plan->chunks - 1) * plan->partial_bytes;
    size_t by_bands = (size_t)plan->bands * part; /* forward only: the partials are not in use */
    return plan->u_bytes + (by_parts > by_bands ? by_parts : by_bands);
}

/* The plan of a band chain's `bands` bands of output rows (model.c): each part's buffer holds its
 * columns, then, in the place of the masked gradient (an inference forward has none), room for
 * the output of a piece of its rows, which a piece consumer reads from there
 * (conv_forward_band). */
static conv_plan conv_chain_plan(const fn_node *node, const conv_geometry *g, int64_t batch,
                                 int threads, int bands, size_t elem_size) {
    conv_plan plan = conv_plan_of(g, batch, threads, false,
                                  node->relu_fused || node->fused_consumer, elem_size);
    plan.bands = bands;
    plan.band_channels = false;
    size_t outputs = conv_round64((size_t)(g->out_channels * g->plane) * elem_size);
    if (plan.mask_bytes < outputs) plan.mask_bytes = outputs;
    return plan;
}

/* Per-part column buffers and (for backward) per-chunk weight and bias gradient partials, enough
 * for either mode: the mode is process-wide, and may change between planning and running. */
static size_t conv_workspace(const fn_node *node, int64_t batch, int threads, size_t elem_size) {
    conv_geometry g = conv_geometry_of(node);
    bool per_image_grad = node->relu_fused || node->fused_consumer;
    conv_plan usual = conv_plan_of(&g, batch, threads, false, per_image_grad, elem_size);
    conv_plan fixed = conv_plan_of(&g, batch, threads, true, per_image_grad, elem_size);
    size_t a = conv_plan_bytes(&usual), b = conv_plan_bytes(&fixed);
    size_t most = a > b ? a : b;
    if (batch >= threads) return most;
    /* A band chain (model.c) may cut fewer images than threads into a band per thread. */
    conv_plan chained = conv_chain_plan(node, &g, batch, threads, threads, elem_size);
    size_t chain = conv_plan_bytes(&chained);
    return chain > most ? chain : most;
}

static fn_status conv_check_workspace(const fn_node *node, const fn_model_ctx *ctx,
                                      const conv_plan *plan) {
    if (conv_plan_bytes(plan) > ctx->workspace_size)
        return fn_error(FN_ESTATE, "node '%s': workspace of %zu bytes planned, %zu needed",
                        node->name, ctx->workspace_size, conv_plan_bytes(plan));
    return FN_OK;
}

/* A band chain's bands are bands of output rows (conv_forward_band), each of at least
 * CONV_BAND_COLUMNS output positions: below that, two threads measured slower than one. */
static bool conv_band_fits(const fn_node *node, const fn_model_ctx *ctx, int bands,
                           size_t elem_size) {
    conv_geometry g = conv_geometry_of(node);
    if (g.out_h < bands || g.plane / CONV_BAND_COLUMNS < bands) return false;
    conv_plan plan = conv_chain_plan(node, &g, ctx->batch, ctx->threads, bands, elem_size);
    return conv_plan_bytes(&plan) <= ctx->workspace_size;
}

/* What a Winograd convolution keeps across calls at node->saved (conv_winograd_refresh): a
 * 64-byte header whose first int64 is 1 once the rest is valid, a copy of the weights (of
 * conv_weight_bytes), then the forward's transformed weights made from them. */
static size_t conv_weight_bytes(const conv_geometry *g, size_t elem_size) {
    return (size_t)(g->out_channels * g->k) * elem_size;
}

static size_t conv_saved(const fn_node *node, int64_t batch, size_t elem_size) {
    (void)batch;
    conv_geometry g = conv_geometry_of(node);
    if (!g.winograd) return 0;
    return 64 + conv_round64(conv_weight_bytes(&g, elem_size)) +
           conv_round64((size_t)(16 * g.channels * g.out_channels) * elem_size);
}

static fn_status conv_forward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status conv_forward_f64(fn_node *node, const fn_model_ctx *ctx);
static void conv_band_prepare_f32(fn_node *node, const fn_model_ctx *ctx);
static void conv_band_prepare_f64(fn_node *node, const fn_model_ctx *ctx);
static void conv_forward_rows_f32(fn_node *node, const fn_model_ctx *ctx, int id, int bands);
static void conv_forward_rows_f64(fn_node *node, const fn_model_ctx *ctx, int id, int bands);
static void conv_forward_rows_into_f32(fn_node *node, fn_node *consumer, const fn_model_ctx *ctx,
                                       int id, int bands);
static void conv_forward_rows_into_f64(fn_node *node, fn_node *consumer, const fn_model_ctx *ctx,
                                       int id, int bands);
static fn_status conv_backward_f32(fn_node *node, const fn_model_ctx *ctx);
static fn_status conv_backward_f64(fn_node *node, const fn_model_ctx *ctx);

const fn_op fn_op_conv2d = {
    .type = "conv2d",
    .min_inputs = 1,
    .max_inputs = 1,
    .configure = conv_configure,
    .init = conv_init,
    .workspace = conv_workspace,
    .forward = {conv_forward_f32, conv_forward_f64},
    .backward = {conv_backward_f32, conv_backward_f64},
    .backward_ignores_output = true,
    .fuses_relu = true,
    .derives_output_grad = true,
    .band_fits = conv_band_fits,
    .forward_band = {conv_forward_rows_f32, conv_forward_rows_f64},
    .forward_band_into = {conv_forward_rows_into_f32, conv_forward_rows_into_f64},
    .band_prepare = {conv_band_prepare_f32, conv_band_prepare_f64},
    .saved = conv_saved,
};

#define FN_TEMPLATE_FILE "conv2d.c"
#include "template.h"

#else /* templated half */

/* One forward or backward pass, as handed to each part. */
typedef struct {
    const fn_node *node;
    conv_geometry g;
    conv_plan plan;
    int64_t batch;
    const real *x, *weight, *bias, *grad_y;
    real *y, *grad_x, *grad_weight, *grad_bias;
    bool grad_x_accumulate, grad_param_accumulate;
    char *workspace; /* the parts' column buffers, then the chunks' partials */
    fn_node *stats_consumer; /* forward hands it each image of y (input_stats_of_sample) */
    fn_node *piece_consumer; /* a band chain's forward hands it y a piece of rows at a time
                              * (op->forward_piece), y never stored */
    const real *winograd_u;  /* plan.winograd: the transformed weights of this pass */
} FN_T(conv_job);

/* C (m, n) = op(A) (m, k) @ B (k, n) + beta * C, row strides lda, ldb, ldc, on the part's
 * threads. */
static void FN_T(conv_gemm)(const FN_T(conv_job) *job, bool trans_a, int64_t m, int64_t n,
                            int64_t k, const real *a, int64_t lda, const real *b, int64_t ldb,
                            bool trans_b, real beta, real *c, int64_t ldc) {
    if (job->plan.unsplit)
        FN_T(fn_gemm_unsplit)(trans_a, trans_b, m, n, k, 1, a, lda, b, ldb, beta, c, ldc);
    else
        FN_T(fn_gemm)(trans_a, trans_b, m, n, k, 1, a, lda, b, ldb, beta, c, ldc,
                      job->plan.inner_threads);
}

/* Part `id`'s buffers: its column buffer, then (with a fused ReLU or a derived gradient) its
 * images' output gradients, then Winograd's weight gradient sums; after the transformed weights
 * of Winograd's convolutions. */
static char *FN_T(conv_part_buffer)(const FN_T(conv_job) *job, int id) {
    return job->workspace + job->plan.u_bytes +
           (size_t)id * (job->plan.col_bytes + job->plan.mask_bytes + job->plan.du_bytes);
}

/* The weights as Winograd's convolutions take them (fn_winograd_weights), at the start of the
 * workspace: the forward's, or (flip) the input gradient's. */
static const real *FN_T(conv_winograd_weights)(const FN_T(conv_job) *job, bool flip) {
    real *u = (real *)job->workspace;
    FN_T(fn_winograd_weights)(job->weight, job->g.out_channels, job->g.channels, flip, u);
    return u;
}

/* The forward's transformed weights as kept at node->saved (conv_saved), valid once
 * conv_winograd_refresh has run. */
static real *FN_T(conv_winograd_kept)(const fn_node *node, const conv_geometry *g) {
    return (real *)((char *)node->saved + 64 + conv_round64(conv_weight_bytes(g, sizeof(real))));
}

/* Makes the kept transformed weights those of the current weights: transformed again only
 * where the weights differ from the copy kept with them, compared bit for bit, so that a write
 * to the weights through any view is seen. A batch-1 inference's bands would otherwise
 * transform them at every call (the CNN's 64 x 32 kernels: 17-24 us, against 2-3 us for the
 * comparison). On the calling thread, before the bands run. */
static const real *FN_T(conv_winograd_refresh)(const fn_node *node, const conv_geometry *g) {
    int64_t *valid = (int64_t *)node->saved;
    real *copy = (real *)((char *)node->saved + 64), *u = FN_T(conv_winograd_kept)(node, g);
    const real *weight = (const real *)node->param[0];
    const size_t bytes = conv_weight_bytes(g, sizeof(real));
    if (*valid != 1 || memcmp(copy, weight, bytes) != 0) {
        memcpy(copy, weight, bytes);
        FN_T(fn_winograd_weights)(weight, g->out_channels, g->channels, false, u);
        *valid = 1;
    }
    return u;
}

/* The column matrix of group `group` of one image x (channels, height, width), for output rows
 * [rows[0], rows[1]) (rows NULL: all of them, (k, plane)): the image's own planes when pointwise,
 * else fn_im2col into col on `threads` threads; *ld is its row stride. */
static const real *FN_T(conv_columns)(const FN_T(conv_job) *job, const real *x, int64_t group,
                                      const int64_t rows[2], int threads, real *col,
                                      int64_t *ld) {
    const conv_geometry *g = &job->g;
    const real *planes = x + group * g->group_in * g->height * g->width;
    if (g->pointwise) {
        *ld = g->plane;
        return rows ? planes + rows[0] * g->out_w : planes;
    }
    FN_T(fn_im2col)(planes, g->group_in, g->height, g->width, job->node->attr.conv.kernel,
                    job->node->attr.conv.stride, job->node->attr.conv.padding,
                    job->node->attr.conv.dilation, rows, col, threads);
    *ld = rows ? (rows[1] - rows[0]) * g->out_w : g->plane;
    return col;
}

/* The sum of a plane of n values, over 16 partial sums added pairwise at the end: one running sum
 * waits on the latency of every addition (the bias gradient of the CNN's second convolution cost
 * 3.7% of its training step that way). The order depends on n alone. */
static real FN_T(conv_plane_sum)(const real *x, int64_t n) {
    enum { LANES = 16 };
    real lanes[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) lanes[l] += x[i + l];
    for (int l = 0; i < n; i++, l++) lanes[l] += x[i];
    for (int width = LANES / 2; width > 0; width /= 2)
        for (int l = 0; l < width; l++) lanes[l] += lanes[l + width];
    return lanes[0];
}

/* The bias and the fused ReLU, in one pass over the output planes of one image y (out_channels,
 * plane), still in cache after its GEMMs: what the built-in GEMM applies to each tile of a band
 * (fn_bias_relu_rows), one plane at a time. */
static void FN_T(conv_bias_relu)(const FN_T(conv_job) *job, real *y, int threads) {
    const real *bias = job->bias;
    const bool relu = job->node->relu_fused;
    if (!bias && !relu) return;
    const int64_t plane = job->g.plane;
    int t = fn_threads_for(job->g.out_channels * plane, threads);
    FN_PARALLEL_LOOP(t, o, job->g.out_channels, {
        FN_T(fn_bias_relu_rows)(y + o * plane, 1, plane, plane, bias ? bias + o : NULL, relu);
    });
}

/* Part `id` of `parts`: its share of the images of x (batch, channels, height, width) ->
 * y (batch, out_channels, out_h, out_w) = weight (out_channels, k) per group @ columns + bias.
 * The parts take whole groups of the images Winograd's convolution takes at once, counted from
 * the first image: the same groups for every thread count. */
static void FN_T(conv_forward_part)(int id, int parts, void *arg) {
    const FN_T(conv_job) *job = arg;
    const conv_geometry *g = &job->g;
    const int64_t group = job->plan.winograd_images;
    int64_t first, end;
    fn_partition((job->batch + group - 1) / group, parts, id, &first, &end);
    first *= group;
    end = end * group < job->batch ? end * group : job->batch;
    real *col = (real *)FN_T(conv_part_buffer)(job, id);
    const int64_t *padding = job->node->attr.conv.padding;
    for (int64_t n = first; n < end; n++) {
        const real *x = job->x + n * g->channels * g->height * g->width;
        real *y = job->y + n * g->out_channels * g->plane;
        if (job->plan.winograd) { /* with the bias and the ReLU */
            if (n % group == 0) { /* `first` is a multiple of group */
                const int64_t images = end - n < group ? end - n : group;
                FN_T(fn_winograd_conv)(x, images, g->channels, g->height, g->width, padding[0],
                                       padding[1], job->winograd_u, g->out_channels, g->out_h,
                                       g->out_w, NULL, job->bias, job->node->relu_fused, false,
                                       y, g->plane, col);
            }
        } else {
            for (int64_t group = 0; group < g->groups; group++) {
                int64_t ld;
                const real *columns =
                    FN_T(conv_columns)(job, x, group, NULL, job->plan.inner_threads, col, &ld);
                FN_T(conv_gemm)(job, false, g->group_out, g->plane, g->k,
                                job->weight + group * g->group_out * g->k, g->k, columns, ld,
                                false, 0, y + group * g->group_out * g->plane, g->plane);
            }
            FN_T(conv_bias_relu)(job, y, job->plan.inner_threads);
        }
        if (job->stats_consumer) /* while the image is in cache */
            job->stats_consumer->op->input_stats_of_sample[FN_DTYPE](job->stats_consumer, n, y);
    }
}

/* Band `id` of the plan's bands, single-threaded, for every image: output rows [r0, r1) from the
 * columns of those rows alone (fn_im2col's rows), or output channels [c0, c1) (band_channels,
 * one group) from all the columns. The same products as conv_forward_part's, cut by columns or
 * rows of C. With a bias or a ReLU they run on the built-in kernel, whose bits do not depend on
 * the cut, and which finishes each tile with them while it is in L1, which a BLAS cannot: on the
 * CNN's first convolution at batch 1 (32x338x9 a band) that outweighs OpenBLAS's 1.18x on the
 * product alone, and its second one saves a pass of 5 us a thread.
 *
 * A band of rows runs in pieces (conv_piece_rows). With a piece consumer, the band is the input
 * rows of the consumer's band `id`, and each piece's output goes to the part's buffer after the
 * columns, where the consumer takes it at once (a max pool reads it from L1), instead of into y:
 * y's lines, evicted since the last call, would each be fetched from L3 to be written (the CNN's
 * batch-1 latency 127-128 -> 120-121 us, alternating builds). */
static void FN_T(conv_forward_band)(int id, int bands, void *arg) {
    const FN_T(conv_job) *job = arg;
    const conv_geometry *g = &job->g;
    fn_node *consumer = job->piece_consumer;
    const int64_t per_row = consumer ? consumer->op->input_rows_per_output_row(consumer) : 1;
    int64_t rows[2] = {0, g->out_h}, c0 = 0, c1 = g->group_out;
    if (job->plan.band_channels) {
        fn_partition(g->out_channels, bands, id, &c0, &c1);
    } else if (consumer) {
        fn_partition(consumer->out_shape.dim[1], bands, id, &rows[0], &rows[1]);
        rows[0] *= per_row;
        rows[1] *= per_row;
    } else {
        fn_partition(g->out_h, bands, id, &rows[0], &rows[1]);
    }
    if (rows[1] == rows[0] || c0 == c1) return;
    char *buffer = FN_T(conv_part_buffer)(job, id);
    real *col = (real *)buffer;
    real *piece_out = consumer ? (real *)(buffer + job->plan.col_bytes) : NULL;
    if (job->winograd_u && !job->plan.band_channels) {
        /* Winograd over the whole band at once (the more tiles, the fuller its products), into
         * y or for the consumer into the part's buffer: fewer multiplications than the im2col
         * products, which on a core of half the FMA throughput (AMD Zen 4) they outweigh. */
        const int64_t *padding = job->node->attr.conv.padding;
        const int64_t count = (rows[1] - rows[0]) * g->out_w;
        for (int64_t n = 0; n < job->batch; n++) {
            const real *x = job->x + n * g->channels * g->height * g->width;
            real *y = piece_out ? piece_out
                                : job->y + n * g->out_channels * g->plane + rows[0] * g->out_w;
            FN_T(fn_winograd_conv)(x, 1, g->channels, g->height, g->width, padding[0],
                                   padding[1], job->winograd_u, g->out_channels, g->out_h,
                                   g->out_w, rows, job->bias, job->node->relu_fused, false, y,
                                   piece_out ? count : g->plane, col);
            if (consumer)
                consumer->op->forward_piece[FN_DTYPE](consumer, n, piece_out, count, rows[0],
                                                      rows[1] - rows[0]);
        }
        return;
    }
    const int64_t step = job->plan.band_channels
                             ? rows[1] - rows[0]
                             : conv_piece_rows(g, rows[1] - rows[0], per_row, sizeof(real));
    for (int64_t n = 0; n < job->batch; n++) {
        const real *x = job->x + n * g->channels * g->height * g->width;
        real *y = job->y + n * g->out_channels * g->plane;
        for (int64_t r0 = rows[0]; r0 < rows[1]; r0 += step) {
            const int64_t piece[2] = {r0, r0 + step < rows[1] ? r0 + step : rows[1]};
            const int64_t first = piece[0] * g->out_w, count = (piece[1] - piece[0]) * g->out_w;
            /* y's rows of the piece, or the piece's own planes of count values */
            real *y_piece = piece_out ? piece_out : y + first;
            const int64_t ldy = piece_out ? count : g->plane;
            for (int64_t group = 0; group < g->groups; group++) {
                int64_t ld;
                const real *columns = FN_T(conv_columns)(job, x, group, piece, 1, col, &ld);
                int64_t out = group * g->group_out + c0;
                const real *weight = job->weight + out * g->k;
                real *y_band = y_piece + out * ldy;
                if (job->bias || job->node->relu_fused) /* on each tile as it is finished */
                    FN_T(fn_gemm_bias_relu)(c1 - c0, count, g->k, weight, g->k, columns, ld,
                                            job->bias ? job->bias + out : NULL,
                                            job->node->relu_fused, y_band, ldy);
                else
                    FN_T(fn_gemm_unsplit)(false, false, c1 - c0, count, g->k, 1, weight, g->k,
                                          columns, ld, 0, y_band, ldy);
            }
            if (consumer)
                consumer->op->forward_piece[FN_DTYPE](consumer, n, piece_out, count, piece[0],
                                                      piece[1] - piece[0]);
        }
    }
}

/* The weight gradient of one image's group without unrolling its windows
 * (geometry.windows): grad_weight (group_out, k) = (or += with add) grad_y (group_out, plane)
 * @ columns^T by fn_gemm_dot_runs, where column (c, i, j) of the weight, the input under tap
 * (i, j) at every output position, is read from `shifted` where it lies. shifted holds, for each
 * kernel column j, the group's padded planes shifted left by j * dilation_w and cut to out_w
 * columns (kw, group_in, padded height, out_w): under tap (i, j), output row y reads row
 * y * stride_h + i * dilation_h of plane (j, c) whole, so the column is one run of the plane
 * (stride_h 1) or a run per output row, each aligned like the buffer. Written: kw planes per
 * channel, where im2col writes kh * kw; in the column buffer (this path needs no columns),
 * followed by the columns' offsets. */
static void FN_T(conv_weight_grad_windows)(const FN_T(conv_job) *job, const real *x,
                                           const real *grad_y, char *buffer, bool add,
                                           real *grad_weight) {
    const conv_geometry *g = &job->g;
    const int64_t *kernel = job->node->attr.conv.kernel, *padding = job->node->attr.conv.padding;
    const int64_t *dilation = job->node->attr.conv.dilation, *stride = job->node->attr.conv.stride;
    const int64_t ph = padding[0], pw = padding[1], hp = g->height + 2 * ph, ow = g->out_w;
    const int64_t plane = hp * ow; /* one shifted plane */
    real *shifted = (real *)buffer;
    /* Each input row is padded once (on the stack when it fits), then copied kw times at the
     * kernel columns' shifts: copies of out_w values, constant-size for the widths of 16 and 32
     * (a row copy of varying length costs more than the copy itself at these widths). */
    const int64_t padded_w = g->width + 2 * pw;
    real stack_row[256];
    real *padded_row = padded_w <= 256 ? stack_row : NULL;
    for (int64_t c = 0; c < g->group_in; c++) {
        const real *src = x + c * g->height * g->width;
        for (int64_t j = 0; j < kernel[1]; j++) {
            real *out = shifted + (j * g->group_in + c) * plane;
            memset(out, 0, (size_t)(ph * ow) * sizeof(real));
            memset(out + (ph + g->height) * ow, 0, (size_t)(ph * ow) * sizeof(real));
        }
        for (int64_t y = 0; y < g->height; y++) {
            const real *row = src + y * g->width;
            if (padded_row) {
                memset(padded_row, 0, (size_t)pw * sizeof(real));
                memcpy(padded_row + pw, row, (size_t)g->width * sizeof(real));
                memset(padded_row + pw + g->width, 0, (size_t)pw * sizeof(real));
            }
            for (int64_t j = 0; j < kernel[1]; j++) {
                real *out = shifted + ((j * g->group_in + c) * hp + y + ph) * ow;
                const int64_t shift = j * dilation[1] - pw; /* input column of output column 0 */
                if (padded_row && ow == 16) {
                    memcpy(out, padded_row + pw + shift, 16 * sizeof(real));
                } else if (padded_row && ow == 32) {
                    memcpy(out, padded_row + pw + shift, 32 * sizeof(real));
                } else {
                    /* Output columns [lo, hi) read inside the row, the others the padding. */
                    const int64_t lo = shift < 0 ? -shift : 0;
                    const int64_t hi = g->width - shift < ow ? g->width - shift : ow;
                    for (int64_t o = 0; o < ow; o++)
                        out[o] = o >= lo && o < hi ? row[o + shift] : 0;
                }
            }
        }
    }
    size_t offsets_at =
        ((size_t)(kernel[1] * g->group_in * plane) * sizeof(real) + 7) & ~(size_t)7;
    int64_t *offsets = (int64_t *)(buffer + offsets_at);
    for (int64_t c = 0, r = 0; c < g->group_in; c++)
        for (int64_t i = 0; i < kernel[0]; i++)
            for (int64_t j = 0; j < kernel[1]; j++, r++)
                offsets[r] = (j * g->group_in + c) * plane + i * dilation[0] * ow;
    /* With stride_h 1 the rows a column reads follow each other: one run of the whole plane. */
    const bool one_run = stride[0] == 1;
    FN_T(fn_gemm_dot_runs)(g->group_out, g->k, one_run ? 1 : g->out_h,
                           one_run ? g->plane : ow, 1, grad_y, g->plane, ow, shifted, offsets,
                           stride[0] * ow, add ? 1 : 0, grad_weight, g->k);
}

/* Chunk `chunk` of the job's chunks, with x and grad_y as in forward, using the column buffer
 * col (k, plane):
 *   weight gradient (out_channels, k) += grad_y per group (group_out, plane) @ columns^T, and bias
 *     gradient (out_channels) += grad_y summed over the plane, into the gradient itself for chunk
 *     0 (overwriting it unless grad_param_accumulate) and into the chunk's partial for the others;
 *   grad_x (batch, channels, height, width), if not NULL, = or += col2im(weight^T @ grad_y) per
 *     group. */
static void FN_T(conv_backward_chunk)(const FN_T(conv_job) *job, int chunk, real *col) {
    const conv_geometry *g = &job->g;
    int64_t first, end;
    fn_partition(job->batch, job->plan.chunks, chunk, &first, &end);
    real *grad_weight = job->grad_weight, *grad_bias = job->grad_bias;
    bool add = job->grad_param_accumulate;
    if (chunk > 0) {
        char *partials = FN_T(conv_part_buffer)(job, job->plan.parts);
        grad_weight = (real *)(partials + (size_t)(chunk - 1) * job->plan.partial_bytes);
        grad_bias = job->grad_bias ? grad_weight + g->out_channels * g->k : NULL;
        add = false;
    }
    if (first == end && !add) { /* no images: the chunk still contributes its zeros */
        for (int64_t i = 0; i < g->out_channels * g->k; i++) grad_weight[i] = 0;
        if (grad_bias)
            for (int64_t o = 0; o < g->out_channels; o++) grad_bias[o] = 0;
    }
    const int64_t image_size = g->channels * g->height * g->width;
    const int64_t group_size = g->group_in * g->height * g->width;
    const int64_t out_size = g->out_channels * g->plane;
    const int inner = job->plan.inner_threads;
    /* The input and weight gradients by Winograd take the images in groups counted from the
     * first image (as forward does), cut by the chunk's ends. The weight gradient's transformed
     * sums (du) run over the chunk's groups and are taken back to the weights at its end. */
    const bool winograd_grad = job->plan.winograd_grad && job->grad_x;
    const bool winograd_weight_grad = job->plan.winograd_weight_grad;
    const int64_t images =
        winograd_grad || winograd_weight_grad ? job->plan.winograd_images : 1;
    const bool derived = job->node->relu_fused || job->node->fused_consumer;
    const int64_t *padding = job->node->attr.conv.padding;
    real *grads = (real *)((char *)col + job->plan.col_bytes); /* the derived grad_y */
    real *du = (real *)((char *)grads + job->plan.mask_bytes);
    const bool add_first = add; /* how the chunk's sums meet grad_weight */
    for (int64_t n = first; n < end; n++) {
        const real *x = job->x + n * image_size;
        /* The images [group_first, group_end) of n's group; a derived grad_y goes to the part's
         * buffer after the columns, the group's one after the other. */
        const int64_t start = n - n % images; /* of the whole group */
        const int64_t group_first = start > first ? start : first;
        const int64_t group_end = start + images < end ? start + images : end;
        real *image_grad = grads + (n - group_first) * out_size;
        /* With a consumer that leaves this gradient here, job->grad_y is the consumer's own. */
        const fn_node *source = job->node->fused_consumer;
        const real *grad_y = source ? image_grad : job->grad_y + n * out_size;
        if (source) source->op->input_grad_of_sample[FN_DTYPE](source, n, image_grad);
        if (job->node->relu_fused && !(source && source->input_grad_relu)) {
            /* The ReLU's backward, on this image: its gradient where the output is positive. */
            const real *y = (const real *)job->node->out + n * out_size;
            FN_T(fn_activation_backward)(FN_ACT_RELU, &(fn_activation_params){0}, NULL, y, grad_y,
                                         image_grad, false, out_size, job->plan.inner_threads);
            grad_y = image_grad;
        }
        /* The group's output gradients, once its last image's is there (one group of channels
         * with Winograd). */
        const bool group_done = n + 1 == group_end;
        const real *group_grad_y = derived ? grads : job->grad_y + group_first * out_size;
        for (int64_t group = 0; group < g->groups; group++) {
            const real *grad_y_group = grad_y + group * g->group_out * g->plane;
            const real *weight_group = job->weight + group * g->group_out * g->k;
            real *grad_weight_group = grad_weight + group * g->group_out * g->k;
            if (winograd_weight_grad) {
                if (group_done)
                    FN_T(fn_winograd_weight_grad)(job->x + group_first * image_size, group_grad_y,
                                                  group_end - group_first, g->channels,
                                                  g->height, g->width, padding[0], padding[1],
                                                  g->out_channels, g->out_h, g->out_w,
                                                  group_first != first, du, col);
            } else if (g->windows && job->plan.unsplit) {
                FN_T(conv_weight_grad_windows)(job, x + group * group_size, grad_y_group,
                                               (char *)col, add, grad_weight_group);
            } else {
                int64_t ld;
                const real *columns =
                    FN_T(conv_columns)(job, x, group, NULL, inner, col, &ld);
                FN_T(conv_gemm)(job, false, g->group_out, g->k, g->plane, grad_y_group, g->plane,
                                columns, ld, true, add ? 1 : 0, grad_weight_group, g->k);
            }
            if (grad_bias) {
                for (int64_t o = 0; o < g->group_out; o++) {
                    real sum = FN_T(conv_plane_sum)(grad_y_group + o * g->plane, g->plane);
                    real *b = &grad_bias[group * g->group_out + o];
                    *b = add ? *b + sum : sum;
                }
            }
            if (!job->grad_x) continue;
            real *grad_x = job->grad_x + n * image_size + group * group_size;
            if (winograd_grad) {
                /* The input gradient is the output gradient convolved with the weights rotated
                 * by 180 degrees, in and out swapped, padded by 2 - p: for the whole group. */
                if (!group_done) continue;
                FN_T(fn_winograd_conv)(group_grad_y, group_end - group_first, g->out_channels,
                                       g->out_h, g->out_w, 2 - padding[0], 2 - padding[1],
                                       job->winograd_u, g->channels, g->height, g->width, NULL,
                                       NULL, false, job->grad_x_accumulate,
                                       job->grad_x + group_first * image_size,
                                       g->height * g->width, col);
            } else if (g->pointwise) {
                /* The column gradient is the input gradient itself. */
                FN_T(conv_gemm)(job, true, g->group_in, g->plane, g->group_out, weight_group, g->k,
                                grad_y_group, g->plane, false, job->grad_x_accumulate ? 1 : 0,
                                grad_x, g->plane);
            } else {
                /* The columns of this group are no longer needed: their buffer takes the column
                 * gradient (k, plane). */
                FN_T(conv_gemm)(job, true, g->k, g->plane, g->group_out, weight_group, g->k,
                                grad_y_group, g->plane, false, 0, col, g->plane);
                FN_T(fn_col2im)(col, g->group_in, g->height, g->width, job->node->attr.conv.kernel,
                                job->node->attr.conv.stride, job->node->attr.conv.padding,
                                job->node->attr.conv.dilation, grad_x, job->grad_x_accumulate,
                                inner);
            }
        }
        add = true; /* later images add to what the first one wrote */
    }
    if (winograd_weight_grad && first < end)
        FN_T(fn_winograd_weight_grad_finish)(du, g->out_channels, g->channels, add_first,
                                             grad_weight);
}

/* Part `id` of `parts`: its share of the chunks, in order, with its own column buffer. */
static void FN_T(conv_backward_part)(int id, int parts, void *arg) {
    const FN_T(conv_job) *job = arg;
    int64_t first, end;
    fn_partition(job->plan.chunks, parts, id, &first, &end);
    real *col = (real *)FN_T(conv_part_buffer)(job, id);
    for (int64_t chunk = first; chunk < end; chunk++)
        FN_T(conv_backward_chunk)(job, (int)chunk, col);
}

static FN_T(conv_job) FN_T(conv_job_of)(fn_node *node, const fn_model_ctx *ctx) {
    FN_T(conv_job) job;
    memset(&job, 0, sizeof job);
    job.node = node;
    job.g = conv_geometry_of(node);
    job.plan = conv_plan_of(&job.g, ctx->batch, ctx->threads, ctx->deterministic,
                            node->relu_fused || node->fused_consumer, sizeof(real));
    job.batch = ctx->batch;
    job.x = (const real *)node->in[0];
    job.weight = (const real *)node->param[0];
    job.workspace = ctx->workspace;
    return job;
}

static fn_status FN_T(conv_forward)(fn_node *node, const fn_model_ctx *ctx) {
    FN_T(conv_job) job = FN_T(conv_job_of)(node, ctx);
    FN_TRY(conv_check_workspace(node, ctx, &job.plan));
    job.bias = node->attr.conv.bias ? (const real *)node->param[1] : NULL;
    job.y = (real *)node->out;
    fn_node *consumer = node->fused_consumer;
    if (consumer) consumer->input_stats_ready = false;
    if (job.plan.bands > 1) {
        /* Bands of rows, by Winograd where whole images run by it, with the transformed weights
         * kept across calls (conv_winograd_refresh). */
        if (job.plan.winograd && !job.plan.band_channels)
            job.winograd_u = FN_T(conv_winograd_refresh)(node, &job.g);
        fn_run_team(job.plan.bands, FN_T(conv_forward_band), &job);
    } else {
        if (job.plan.winograd) job.winograd_u = FN_T(conv_winograd_weights)(&job, false);
        /* A consumer's training statistics, image by image (bands cut the images). */
        if (consumer && ctx->training && consumer->op->input_stats_of_sample[FN_DTYPE])
            job.stats_consumer = consumer;
        fn_run_team(job.plan.parts, FN_T(conv_forward_part), &job);
        if (job.stats_consumer) consumer->input_stats_ready = true;
    }
    return FN_OK;
}

/* Band `id` of `bands` of the output's rows, as a band chain runs it (model.c); with a consumer,
 * handed to it piece by piece (op->forward_band_into). */
static void FN_T(conv_forward_rows_into)(fn_node *node, fn_node *consumer,
                                         const fn_model_ctx *ctx, int id, int bands) {
    FN_T(conv_job) job = FN_T(conv_job_of)(node, ctx);
    job.plan = conv_chain_plan(node, &job.g, ctx->batch, ctx->threads, bands, sizeof(real));
    job.bias = node->attr.conv.bias ? (const real *)node->param[1] : NULL;
    job.y = (real *)node->out;
    job.piece_consumer = consumer;
    if (job.plan.winograd && !job.plan.band_channels) /* made by conv_band_prepare */
        job.winograd_u = FN_T(conv_winograd_kept)(node, &job.g);
    FN_T(conv_forward_band)(id, bands, &job);
}

/* Before a band chain's team runs the bands: the transformed weights they share. */
static void FN_T(conv_band_prepare)(fn_node *node, const fn_model_ctx *ctx) {
    conv_geometry g = conv_geometry_of(node);
    if (conv_winograd_for(&g, ctx->batch)) (void)FN_T(conv_winograd_refresh)(node, &g);
}

static void FN_T(conv_forward_rows)(fn_node *node, const fn_model_ctx *ctx, int id, int bands) {
    FN_T(conv_forward_rows_into)(node, NULL, ctx, id, bands);
}

static fn_status FN_T(conv_backward)(fn_node *node, const fn_model_ctx *ctx) {
    FN_T(conv_job) job = FN_T(conv_job_of)(node, ctx);
    FN_TRY(conv_check_workspace(node, ctx, &job.plan));
    job.grad_y = (const real *)node->grad_out;
    job.grad_x = (real *)node->grad_in[0];
    job.grad_x_accumulate = node->grad_in_accumulate[0];
    job.grad_weight = (real *)node->grad[0];
    job.grad_bias = node->attr.conv.bias ? (real *)node->grad[1] : NULL;
    job.grad_param_accumulate = ctx->accumulate_param_grads;
    if (job.plan.winograd_grad && job.grad_x)
        job.winograd_u = FN_T(conv_winograd_weights)(&job, true);
    /* Every chunk runs even if OpenMP starts fewer threads than parts: each part takes its range
     * of the chunks from the team's actual size. */
    fn_run_team(job.plan.parts, FN_T(conv_backward_part), &job);

    /* Adds the partials of chunks 1 and up to chunk 0's sums, element by element in chunk order.
     * A partial holds the weight partial followed by the bias partial, read here as one array of
     * `count` elements. */
    const conv_geometry *g = &job.g;
    const int chunks = job.plan.chunks;
    if (chunks < 2) return FN_OK;
    const int64_t weight_count = g->out_channels * g->k;
    const int64_t count = weight_count + (job.grad_bias ? g->out_channels : 0);
    const char *partials = FN_T(conv_part_buffer)(&job, job.plan.parts);
    const size_t stride = job.plan.partial_bytes;
    real *grad_weight = job.grad_weight, *grad_bias = job.grad_bias;
    int t = fn_threads_for(count * (chunks - 1), ctx->threads);
    FN_PARALLEL_LOOP(t, i, count, {
        real sum = i < weight_count ? grad_weight[i] : grad_bias[i - weight_count];
        for (int p = 1; p < chunks; p++)
            sum += ((const real *)(partials + (size_t)(p - 1) * stride))[i];
        if (i < weight_count) {
            grad_weight[i] = sum;
        } else {
            grad_bias[i - weight_count] = sum;
        }
    });
    return FN_OK;
}

#endif /* FN_TEMPLATE_PASS */
