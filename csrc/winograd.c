/* winograd.c — 3x3 convolutions of stride 1 by Winograd's minimal filtering F(2x2, 3x3) (Lavin
 * and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
 *
 * The output is cut into 2x2 tiles; tile (ty, tx) reads the 4x4 input tile whose first value is
 * at padded position (2 ty, 2 tx). With the transforms
 *     B^T = [1  0 -1  0]     G = [ 1    0    0 ]     A^T = [1  1  1  0]
 *           [0  1  1  0]         [1/2  1/2  1/2]           [0  1 -1 -1]
 *           [0 -1  1  0]         [1/2 -1/2  1/2]
 *           [0  1  0 -1]         [ 0    0    1 ]
 * a tile of one output channel is A^T [sum over input channels of (G g G^T) .* (B^T d B)] A:
 * 16 multiplications per channel pair and tile where the direct sum takes 36. The sum over
 * channels at each of the 16 positions e of the 4x4 transformed tile is a GEMM, channels by
 * tiles or tiles by channels,
 *     M[e] (out, tiles) = U[e]^T (out, in) @ V[e] (in, tiles)  or
 *     M[e] (tiles, out) = V[e]^T (tiles, in) @ U[e] (in, out),
 * U[e] (in, out) being the transformed weights and V[e] (in, tiles) the transformed input tiles,
 * whichever leaves less of the packed kernel's 32-column slivers empty (winograd_by_tiles). The
 * output transform runs along the tiles or across the channels accordingly
 * (winograd_output_run). The transforms only add and subtract (G's halves are exact), so the
 * error stays within a few roundings of the direct sum's.
 *
 * fn_winograd_weights transforms a layer's weights once per pass; fn_winograd_conv runs one
 * image, or a band of its output rows, on the calling thread: input transform, 16 GEMMs
 * (fn_gemm_unsplit), output transform with the bias, a fused ReLU, or accumulation. A
 * convolution's input gradient with stride 1 is itself such a convolution, of the output
 * gradient with the weights rotated by 180 degrees, in and out channels swapped, and padding
 * 2 - p: fn_winograd_weights' `flip`. The weight gradient goes the forward's way backwards
 * (fn_winograd_weight_grad): the output gradient's tiles through A g A^T, their products with
 * the input tiles summed over the tiles in 16 GEMMs, and the sums taken back through G
 * (fn_winograd_weight_grad_finish). The bits depend on the sizes alone, not on the thread that
 * computes an image.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"

#include <string.h>

/* What the output transform does with a tile's values after the bias: nothing more, or a ReLU. */
enum { WINOGRAD_STORE, WINOGRAD_STORE_RELU };

/* Elements between consecutive matrices of V and of M beyond their size: one cache line. */
#define WINOGRAD_SKEW 16

/* Tiles a run of the input transform computes at once, for widths not compiled as constants
 * (winograd_input_tiles). */
#define WINOGRAD_RUN 16

/* Output channels the output transform takes at once with the products tiles by channels: a
 * vector. */
#define WINOGRAD_CHANNELS 16

/* The sizes of fn_winograd_conv's tiles and work buffer for `images` outputs (out_h, out_w). */
typedef struct {
    int64_t w1;        /* tiles a padded row holds: ceil(out_w / 2) and the spare one */
    int64_t tw;        /* tiles an output row uses, w1 - 1 */
    int64_t tile_rows; /* ceil(out_h / 2) */
    int64_t tiles;     /* an image's: tile_rows * tw */
    int64_t columns;   /* the GEMMs' columns: the images' tiles, image after image */
    /* The rows of V and, by channels, of M run over ld >= columns, a multiple of 32 (a
     * whole number of the micro-kernel's column slivers: a sliver cut by the edge cost as much
     * as half the product of 16 x 272 x 16); the columns of V past the tiles are then zero. */
    int64_t ld;
    int64_t n;     /* d B values of a padded plane, per j: its rows, and a run's slack */
    int64_t plane; /* a padded plane: its (tile_rows + 1) rows of 2 w1, then zeros */
} winograd_layout;

static winograd_layout winograd_layout_of(int64_t out_h, int64_t out_w, int64_t images) {
    winograd_layout l;
    l.w1 = (out_w + 1) / 2 + 1;
    l.tw = l.w1 - 1;
    l.tile_rows = (out_h + 1) / 2;
    l.tiles = l.tile_rows * l.tw;
    l.columns = images * l.tiles;
    l.ld = (l.columns + 31) / 32 * 32;
    l.n = (l.tile_rows + 1) * l.w1 + WINOGRAD_RUN;
    l.plane = 2 * l.n + 2;
    return l;
}

/* Whether the 16 products run tiles by channels: where that leaves fewer of the packed
 * kernel's 32-column slivers empty than channels by tiles, whose columns (the tiles) are padded
 * to whole slivers already (ld). Ties stay channels by tiles. From Python, on OpenBLAS (AMD Zen
 * 4): the CNN's 64 channels over a band's 72 tiles 1.35x faster by tiles, over a whole image's
 * 144 1.17x; ResNet-8's 32 channels over 64 tiles (a tie) 0.85x; its 16 channels over 256 tiles
 * 1.22x on OpenBLAS but 0.39x on the built-in kernel (half of each sliver empty). */
static bool winograd_by_tiles(int64_t out_c, const winograd_layout *l) {
    return (double)l->columns * (double)((out_c + 31) / 32 * 32) < (double)out_c * (double)l->ld;
}

/* The work buffer fn_winograd_conv needs, in elements, for in_c input and out_c output channels
 * and `images` outputs (out_h, out_w), or a band of out_h rows of one: V and M (16 matrices
 * each, WINOGRAD_SKEW apart), the d B of a channel's padded rows (8 n), those rows (two planes),
 * and the output transform's buffer: a channel's tile outputs, or by tiles the two output rows
 * of a tile row for WINOGRAD_CHANNELS channels. */
int64_t fn_winograd_work(int64_t in_c, int64_t out_c, int64_t out_h, int64_t out_w,
                         int64_t images) {
    winograd_layout l = winograd_layout_of(out_h, out_w, images);
    int64_t outputs = 4 * l.w1 * WINOGRAD_CHANNELS;
    if (outputs < 4 * l.columns) outputs = 4 * l.columns;
    return 16 * ((in_c + out_c) * l.ld + 2 * WINOGRAD_SKEW) + 8 * l.n + 2 * l.plane + outputs;
}

#define FN_TEMPLATE_FILE "winograd.c"
#include "template.h"

#else /* templated half */

/* w (out_c, in_c, 3, 3) -> u (16, in_c, out_c): u[e][ci][co] = (G w[co][ci] G^T)[e], e = 4 i + j.
 * flip: the weights of the input gradient's convolution (in_c and out_c swapped, each kernel
 * rotated by 180 degrees): u (16, out_c, in_c), u[e][co][ci] = (G rot(w[co][ci]) G^T)[e].
 * Written in order, 16 pairs at a time (a cache line of each of the 16 matrices): pair by pair,
 * the 16 stores a matrix apart thrashed the cache (64 x 32 channels took 76 us). */
void FN_T(fn_winograd_weights)(const real *w, int64_t out_c, int64_t in_c, bool flip, real *u) {
    enum { BLOCK = 16 };
    const int64_t pairs = out_c * in_c, inner = flip ? in_c : out_c;
    int64_t outer_index = 0, inner_index = 0; /* of pair `first` */
    for (int64_t first = 0; first < pairs; first += BLOCK) {
        const int64_t count = pairs - first < BLOCK ? pairs - first : BLOCK;
        /* The block's kernels, tap by tap (rotated with flip), then G g G^T along the block. */
        real g[9][BLOCK] = {{0}}, t[4][3][BLOCK], block[16][BLOCK];
        for (int64_t p = 0; p < count; p++) {
            const int64_t co = flip ? outer_index : inner_index;
            const int64_t ci = flip ? inner_index : outer_index;
            const real *k = w + (co * in_c + ci) * 9;
            for (int tap = 0; tap < 9; tap++) g[tap][p] = k[flip ? 8 - tap : tap];
            if (++inner_index == inner) {
                inner_index = 0;
                outer_index++;
            }
        }
        for (int j = 0; j < 3; j++) /* G g */
            for (int p = 0; p < BLOCK; p++) {
                real g0 = g[j][p], g1 = g[3 + j][p], g2 = g[6 + j][p];
                t[0][j][p] = g0;
                t[1][j][p] = (g0 + g1 + g2) / 2;
                t[2][j][p] = (g0 - g1 + g2) / 2;
                t[3][j][p] = g2;
            }
        for (int i = 0; i < 4; i++) /* (G g) G^T */
            for (int p = 0; p < BLOCK; p++) {
                real t0 = t[i][0][p], t1 = t[i][1][p], t2 = t[i][2][p];
                block[4 * i + 0][p] = t0;
                block[4 * i + 1][p] = (t0 + t1 + t2) / 2;
                block[4 * i + 2][p] = (t0 - t1 + t2) / 2;
                block[4 * i + 3][p] = t2;
            }
        for (int e = 0; e < 16; e++) {
            real *out = u + e * pairs + first;
            if (count == BLOCK) /* a constant size: a vector move, not a call */
                memcpy(out, block[e], sizeof block[e]);
            else
                for (int64_t p = 0; p < count; p++) out[p] = block[e][p];
        }
    }
}

/* d B of every row of a padded plane p (rows of 2 w1), flattened: for the four values at
 * columns 2 t .. 2 t + 3 of a row, d0 - d2, d1 + d2, d2 - d1 and d1 - d3 into
 * q[j * n + r * w1 + t], for n positions: the plane's rows and some slack past them, for which
 * p holds zeros and two values more (t = w1 - 1 reads past its row: its tile is the spare one,
 * which no output uses). One flat loop over the plane: rows of a few vectors each would cost
 * more in loop bookkeeping than in work. */
static void FN_T(winograd_row_transform)(const real *restrict p, int64_t n, real *restrict q) {
    real *restrict q0 = q, *restrict q1 = q + n, *restrict q2 = q + 2 * n,
                   *restrict q3 = q + 3 * n;
    for (int64_t i = 0; i < n; i++) {
        real d0 = p[2 * i], d1 = p[2 * i + 1], d2 = p[2 * i + 2], d3 = p[2 * i + 3];
        q0[i] = d0 - d2;
        q1[i] = d1 + d2;
        q2[i] = d2 - d1;
        q3[i] = d1 - d3;
    }
}

/* B^T (d B) of the tiles of `rows` tile rows of tw, from the d B of the even padded rows (qe)
 * and of the odd ones (qo), each 4 arrays n apart, rows w1 apart: tile row ty reads padded rows
 * 2 ty .. 2 ty + 3, which are rows ty and ty + 1 of qe and qo. Into v[(4 i + j) * stride + t],
 * tile t = ty * tw + tx: the GEMMs' columns, without the spare tiles. A row is computed in runs
 * of `run` tiles, a constant at each call, so that a run is straight vector code: run = tw for
 * the widths compiled as constants; otherwise the last run of a row computes past its end, into
 * the next row's tiles, or from the last row into what follows in V: the next image's tiles,
 * the spare columns, the next channel's row or the skew, each written after it or never read.
 * It reads past the row in q, which has WINOGRAD_RUN values of slack. */
static inline __attribute__((always_inline)) void FN_T(winograd_input_tiles)(
    const real *restrict qe, const real *restrict qo, int64_t n, int64_t w1, int64_t rows,
    int64_t tw, const int64_t run, real *restrict v, int64_t stride) {
    for (int j = 0; j < 4; j++)
        for (int64_t ty = 0; ty < rows; ty++)
            for (int64_t t0 = 0; t0 < tw; t0 += run) {
                const real *a = qe + j * n + ty * w1 + t0, *b = qo + j * n + ty * w1 + t0;
                const real *c = a + w1, *d = b + w1;
                real *restrict v0 = v + j * stride + ty * tw + t0, *restrict v1 = v0 + 4 * stride,
                               *restrict v2 = v1 + 4 * stride, *restrict v3 = v2 + 4 * stride;
                for (int64_t t = 0; t < run; t++) {
                    v0[t] = a[t] - c[t];
                    v1[t] = b[t] + c[t];
                    v2[t] = c[t] - b[t];
                    v3[t] = b[t] - d[t];
                }
            }
}

/* winograd_input_tiles with rows of 16, 12, 8 and 4 tiles (outputs 32, 24, 16 and 8 wide)
 * compiled with the width a constant, other widths in runs of WINOGRAD_RUN: a loop of a variable
 * count of one or two vectors costs more in its bookkeeping than in its work (the input
 * transform of a 24-wide output took 2.8x longer that way, 1.4x in runs), and a run of 16 for a
 * row of 4 tiles computes four times the tiles it keeps. */
static void FN_T(winograd_input_rows)(const real *restrict qe, const real *restrict qo,
                                      int64_t n, int64_t w1, int64_t rows, int64_t tw,
                                      real *restrict v, int64_t stride) {
    if (tw == 16)
        FN_T(winograd_input_tiles)(qe, qo, n, w1, rows, 16, 16, v, stride);
    else if (tw == 12)
        FN_T(winograd_input_tiles)(qe, qo, n, w1, rows, 12, 12, v, stride);
    else if (tw == 8)
        FN_T(winograd_input_tiles)(qe, qo, n, w1, rows, 8, 8, v, stride);
    else if (tw == 4)
        FN_T(winograd_input_tiles)(qe, qo, n, w1, rows, 4, 4, v, stride);
    else
        FN_T(winograd_input_tiles)(qe, qo, n, w1, rows, tw, WINOGRAD_RUN, v, stride);
}

/* The bias of a convolution without one: zeros, added like a bias, as the 0 that stood for a
 * missing bias was before (the same bits). */
static const real FN_T(winograd_no_bias)[WINOGRAD_CHANNELS];

/* A^T m A for `count` tiles, or one tile's `count` channels: the 16 values of element k at
 * m[e * stride + k], e = 4 i + j, into its 2x2 block of outputs, upper_left[k], upper_right[k],
 * lower_left[k] and lower_right[k], plus bias[k * bias_step] (winograd_no_bias for none: a
 * test for NULL in the loop kept GCC from vectorising the runs along the tiles, which were half
 * of the transforms' time in ResNet-8), then a ReLU (mode WINOGRAD_STORE_RELU). count and
 * bias_step are constants at the calls that take whole vectors. */
static inline __attribute__((always_inline)) void FN_T(winograd_output_run)(
    const int mode, const real *restrict m, int64_t stride, const int64_t count,
    const real *restrict bias, const int64_t bias_step, real *restrict upper_left,
    real *restrict upper_right, real *restrict lower_left, real *restrict lower_right) {
    real *restrict upper[2] = {upper_left, upper_right}, *restrict lower[2] = {lower_left,
                                                                                 lower_right};
    for (int64_t k = 0; k < count; k++) {
        const real b = bias[k * bias_step];
        real s[4][2];
        for (int i = 0; i < 4; i++) { /* m A, row i */
            const real *row = m + 4 * i * stride + k;
            real e0 = row[0], e1 = row[stride], e2 = row[2 * stride], e3 = row[3 * stride];
            s[i][0] = e0 + e1 + e2;
            s[i][1] = e1 - e2 - e3;
        }
        for (int j = 0; j < 2; j++) { /* A^T (m A) */
            real top = s[0][j] + s[1][j] + s[2][j] + b;
            real bottom = s[1][j] - s[2][j] - s[3][j] + b;
            if (mode == WINOGRAD_STORE_RELU) {
                top = FN_RELU(top);
                bottom = FN_RELU(bottom);
            }
            upper[j][k] = top;
            lower[j][k] = bottom;
        }
    }
}

/* Output row y (out_w values) from a tile row's outputs along the tiles: y[2 tx + j] = or +=
 * row[j][tx], the odd width's last column from its tile's first. */
static inline void FN_T(winograd_store_tiles)(const real *restrict left,
                                              const real *restrict right, int64_t out_w, bool add,
                                              real *restrict y) {
    const int64_t pairs = out_w / 2;
    if (add) {
        for (int64_t t = 0; t < pairs; t++) {
            y[2 * t] += left[t];
            y[2 * t + 1] += right[t];
        }
        if (out_w % 2) y[out_w - 1] += left[pairs];
    } else {
        for (int64_t t = 0; t < pairs; t++) {
            y[2 * t] = left[t];
            y[2 * t + 1] = right[t];
        }
        if (out_w % 2) y[out_w - 1] = left[pairs];
    }
}

/* Output row y (out_w values) of one channel from a row of the outputs across the channels,
 * whose column x holds the channel's value at src[x * WINOGRAD_CHANNELS]: y[x] = or += it. */
static inline void FN_T(winograd_store_channel)(const real *restrict src, int64_t out_w,
                                                bool add, real *restrict y) {
    if (add)
        for (int64_t x = 0; x < out_w; x++) y[x] += src[x * WINOGRAD_CHANNELS];
    else
        for (int64_t x = 0; x < out_w; x++) y[x] = src[x * WINOGRAD_CHANNELS];
}

/* The sizes fn_winograd_conv hands to its two ways of running the products and the output
 * transform. */
typedef struct {
    int64_t in_c, out_c, out_w, band_h, tile_rows, tw, tiles, ld, wp;
    int64_t images, columns; /* the images, and their tiles: the GEMMs' columns */
    int64_t v_stride, m_stride, ldy;
    int64_t y_image; /* from one image's output to the next */
    const real *bias; /* NULL with accumulate */
    bool relu, add;   /* a ReLU (never with add); y += the convolution */
} FN_T(winograd_pass);

/* Channels by tiles: M[e] (out_c, ld) = U[e]^T (out_c, in_c) @ V[e] (in_c, ld) on this thread,
 * through the BLAS where it is faster (fn_gemm_unsplit), the columns of V past the tiles zeroed
 * first; then Y = A^T M A a channel at a time along the tiles of every image into out (4
 * columns), and each image's rows written out. */
static void FN_T(winograd_run_by_channels)(const FN_T(winograd_pass) *p, const real *u,
                                           real *v, real *m, real *out, real *y) {
    const int64_t in_c = p->in_c, out_c = p->out_c, ld = p->ld, tiles = p->tiles, tw = p->tw;
    const int64_t columns = p->columns;
    for (int64_t row = 0; row < 16 * in_c && ld > columns; row++) { /* the spare columns */
        real *spare = v + row / in_c * p->v_stride + row % in_c * ld;
        for (int64_t t = columns; t < ld; t++) spare[t] = 0;
    }
    for (int e = 0; e < 16; e++)
        FN_T(fn_gemm_unsplit)(true, false, out_c, ld, in_c, 1, u + e * in_c * out_c, out_c,
                              v + e * p->v_stride, ld, 0, m + e * p->m_stride, ld);
    for (int64_t co = 0; co < out_c; co++) {
        const real *channel_bias = p->bias ? p->bias + co : FN_T(winograd_no_bias);
        if (p->relu) /* the mode a constant: a loop that vectorises */
            FN_T(winograd_output_run)(WINOGRAD_STORE_RELU, m + co * ld, p->m_stride, columns,
                                      channel_bias, 0, out, out + columns, out + 2 * columns,
                                      out + 3 * columns);
        else
            FN_T(winograd_output_run)(WINOGRAD_STORE, m + co * ld, p->m_stride, columns,
                                      channel_bias, 0, out, out + columns, out + 2 * columns,
                                      out + 3 * columns);
        for (int64_t image = 0; image < p->images; image++) {
            real *plane_y = y + image * p->y_image + co * p->ldy;
            for (int64_t ty = 0; ty < p->tile_rows; ty++) {
                const int64_t at = image * tiles + ty * tw;
                real *y0 = plane_y + 2 * ty * p->out_w;
                FN_T(winograd_store_tiles)(out + at, out + columns + at, p->out_w, p->add, y0);
                if (2 * ty + 1 < p->band_h)
                    FN_T(winograd_store_tiles)(out + 2 * columns + at, out + 3 * columns + at,
                                               p->out_w, p->add, y0 + p->out_w);
            }
        }
    }
}

/* Tiles by channels: M[e] (columns, out_c) = V[e]^T (columns, in_c) @ U[e] (in_c, out_c), the
 * GEMMs reading the first `columns` columns of V; then Y = A^T M A, WINOGRAD_CHANNELS channels
 * of a tile row at a time across the channels into the row's two output rows (out: column x of
 * a row at x * WINOGRAD_CHANNELS), which are then written out channel by channel. */
static void FN_T(winograd_run_by_tiles)(const FN_T(winograd_pass) *p, const real *u,
                                        const real *v, real *m, real *out, real *y) {
    const int64_t in_c = p->in_c, out_c = p->out_c, tw = p->tw, ms = p->m_stride;
    for (int e = 0; e < 16; e++)
        FN_T(fn_gemm_unsplit)(true, false, p->columns, out_c, in_c, 1, v + e * p->v_stride,
                              p->ld, u + e * in_c * out_c, out_c, 0, m + e * ms, out_c);
    real *top = out, *bottom = out + p->wp * WINOGRAD_CHANNELS;
    for (int64_t co = 0; co < out_c; co += WINOGRAD_CHANNELS) {
        const int64_t count = out_c - co < WINOGRAD_CHANNELS ? out_c - co : WINOGRAD_CHANNELS;
        const real *channel_bias = p->bias ? p->bias + co : FN_T(winograd_no_bias);
        for (int64_t row = 0; row < p->images * p->tile_rows; row++) { /* image after image */
            const int64_t image = row / p->tile_rows, ty = row % p->tile_rows;
            for (int64_t tx = 0; tx < tw; tx++) {
                const real *mt = m + (image * p->tiles + ty * tw + tx) * out_c + co;
                real *upper = top + 2 * tx * WINOGRAD_CHANNELS;
                real *lower = bottom + 2 * tx * WINOGRAD_CHANNELS;
                real *upper_right = upper + WINOGRAD_CHANNELS;
                real *lower_right = lower + WINOGRAD_CHANNELS;
                if (count == WINOGRAD_CHANNELS && p->relu) /* constants: vector code */
                    FN_T(winograd_output_run)(WINOGRAD_STORE_RELU, mt, ms, WINOGRAD_CHANNELS,
                                              channel_bias, 1, upper, upper_right, lower,
                                              lower_right);
                else if (count == WINOGRAD_CHANNELS)
                    FN_T(winograd_output_run)(WINOGRAD_STORE, mt, ms, WINOGRAD_CHANNELS,
                                              channel_bias, 1, upper, upper_right, lower,
                                              lower_right);
                else
                    FN_T(winograd_output_run)(p->relu ? WINOGRAD_STORE_RELU : WINOGRAD_STORE, mt,
                                              ms, count, channel_bias, 1, upper, upper_right,
                                              lower, lower_right);
            }
            for (int64_t c = 0; c < count; c++) {
                real *y0 = y + image * p->y_image + (co + c) * p->ldy + 2 * ty * p->out_w;
                FN_T(winograd_store_channel)(top + c, p->out_w, p->add, y0);
                if (2 * ty + 1 < p->band_h)
                    FN_T(winograd_store_channel)(bottom + c, p->out_w, p->add, y0 + p->out_w);
            }
        }
    }
}

/* V[e] (in_c, columns) of `images` images x (images, in_c, height, width), zero-padded by ph rows
 * and pw columns, from output row r0 on (layout l): each channel's padded rows through d B, then
 * the tiles through B^T, image after image along a channel's row of V (a run past an image's
 * last tile writes into the next image's tiles, written after it: winograd_input_tiles). q holds
 * 8 n values, padded two planes.
 *
 * The padded rows are split by parity: padded row r is row r / 2 of plane r % 2, and holds input
 * row r0 + r - ph. The padding is zeroed once; every channel then writes the same interior. They
 * are 2 w1 values wide, w1 = ceil(out_w / 2) + 1 being one tile more than a row has: with that
 * spare tile, the d B of every padded row is one flat loop, which vectorises whatever the width
 * (rows of one or two vectors would cost more in loop bookkeeping than in work). */
static void FN_T(winograd_input_transform)(const real *x, int64_t images, int64_t in_c,
                                           int64_t height, int64_t width, int64_t ph,
                                           int64_t pw, int64_t r0, const winograd_layout *l,
                                           real *v, int64_t v_stride, real *q, real *padded) {
    const int64_t w1 = l->w1, wp = 2 * w1, n = l->n, plane = l->plane;
    memset(padded, 0, (size_t)(2 * plane) * sizeof(real));
    int64_t r_lo = ph - r0 > 0 ? ph - r0 : 0, r_hi = ph + height - r0; /* rows holding input */
    if (r_hi > 2 * l->tile_rows + 2) r_hi = 2 * l->tile_rows + 2;
    const int64_t copy = width < wp - pw ? width : wp - pw; /* columns of a row inside */
    for (int64_t ci = 0; ci < in_c; ci++) {
        for (int64_t image = 0; image < images; image++) {
            const real *source = x + (image * in_c + ci) * height * width;
            for (int64_t r = r_lo; r < r_hi; r++) { /* a loop: a call to memcpy costs more */
                const real *src = source + (r0 + r - ph) * width;
                real *dst = padded + (r % 2) * plane + (r / 2) * wp + pw;
                for (int64_t c = 0; c < copy; c++) dst[c] = src[c];
            }
            FN_T(winograd_row_transform)(padded, n, q);
            FN_T(winograd_row_transform)(padded + plane, n, q + 4 * n);
            FN_T(winograd_input_rows)(q, q + 4 * n, n, w1, l->tile_rows, l->tw,
                                      v + ci * l->ld + image * l->tiles, v_stride);
        }
    }
}

/* `images` consecutive images x (images, in_c, height, width), zero-padded by ph rows and pw
 * columns, convolved with the 3x3 kernels transformed into u (16, in_c, out_c)
 * (fn_winograd_weights) -> y (images, out_c, out_h, out_w), or, for one image, only its output
 * rows [rows[0], rows[1]) (rows NULL: all of them):
 *     y = conv + bias[co] (bias NULL: none), then max(y, 0) with relu, or y += conv with
 *     accumulate (no bias nor ReLU then),
 * output row r of channel co of image i at y + (i * out_c + co) * ldy + (r - rows[0]) * out_w,
 * on the calling thread, in work (fn_winograd_work elements for the images and rows computed).
 * out_h and out_w are height + 2 ph - 2 and width + 2 pw - 2. A band's tiles start at its first
 * row: from an even row, the tiles and so the operations are the whole image's.
 *
 * Several images share the 16 GEMMs, their tiles side by side as columns: a small image's few
 * tiles alone make products too narrow for the kernel to reach its speed (64 channels of 8 x 8,
 * 16 tiles an image, ran 0.58x of im2col; four at a time, like one image of 16 x 16, 1.4x). A
 * column's sum runs over the input channels in the same order whichever images share it. */
void FN_T(fn_winograd_conv)(const real *x, int64_t images, int64_t in_c, int64_t height,
                            int64_t width, int64_t ph, int64_t pw, const real *u, int64_t out_c,
                            int64_t out_h, int64_t out_w, const int64_t rows[2], const real *bias,
                            bool relu, bool accumulate, real *y, int64_t ldy, real *work) {
    const int64_t r0 = rows ? rows[0] : 0, band_h = (rows ? rows[1] : out_h) - r0;
    if (band_h <= 0 || out_c <= 0 || images <= 0) return;
    const winograd_layout l = winograd_layout_of(band_h, out_w, images);
    const int64_t ld = l.ld;
    const bool by_tiles = winograd_by_tiles(out_c, &l);
    /* The 16 matrices of V and of M each one cache line further than a multiple of a page:
     * the transforms read or write all 16 at once, and 16 streams a power of two apart would
     * meet in the same few sets of the L1 cache. */
    const int64_t v_stride = in_c * ld + WINOGRAD_SKEW;
    const int64_t m_stride = (by_tiles ? l.columns : ld) * out_c + WINOGRAD_SKEW;
    real *v = work, *m = v + 16 * v_stride;
    real *q = m + 16 * (out_c * ld + WINOGRAD_SKEW); /* the even rows' d B, then the odd rows' */
    real *padded = q + 8 * l.n;           /* the even padded rows, then the odd ones */
    real *out = padded + 2 * l.plane;     /* the output transform's buffer */
    FN_T(winograd_input_transform)(x, images, in_c, height, width, ph, pw, r0, &l, v, v_stride,
                                   q, padded);
    const FN_T(winograd_pass) pass = {in_c, out_c, out_w, band_h, l.tile_rows, l.tw, l.tiles,
                                      ld, 2 * l.w1, images, l.columns, v_stride, m_stride, ldy,
                                      out_c * ldy, accumulate ? NULL : bias,
                                      relu && !accumulate, accumulate};
    if (by_tiles)
        FN_T(winograd_run_by_tiles)(&pass, u, v, m, out, y);
    else
        FN_T(winograd_run_by_channels)(&pass, u, v, m, out, y);
}

/* The weight gradient of fn_winograd_conv's convolution in its transformed form, for `images`
 * images x and their output gradients dy (images, out_c, out_h, out_w):
 *     du[e] (out_c, in_c) = (or += with add) sum over the tiles of Z[e] (out_c, tiles)
 *                           @ V[e] (in_c, tiles)^T,
 * V the input tiles as the forward transforms them and Z[e] = (A g A^T)[e] of each 2x2 tile g of
 * dy (zero past an odd edge): the forward's tile of a channel is A^T M A with M = U .* V, so the
 * gradient of M is A g A^T, that of U is that times V, summed over the tiles, and
 * fn_winograd_weight_grad_finish takes du back through G. 16 GEMMs over the images' tiles, on
 * the calling thread, in work (fn_winograd_work elements for these sizes and images). */
void FN_T(fn_winograd_weight_grad)(const real *x, const real *dy, int64_t images, int64_t in_c,
                                   int64_t height, int64_t width, int64_t ph, int64_t pw,
                                   int64_t out_c, int64_t out_h, int64_t out_w, bool add,
                                   real *du, real *work) {
    if (images <= 0) return;
    const winograd_layout l = winograd_layout_of(out_h, out_w, images);
    const int64_t ld = l.ld, tw = l.tw;
    const int64_t v_stride = in_c * ld + WINOGRAD_SKEW, z_stride = out_c * ld + WINOGRAD_SKEW;
    real *v = work, *z = v + 16 * v_stride;
    real *q = z + 16 * z_stride, *padded = q + 8 * l.n;
    FN_T(winograd_input_transform)(x, images, in_c, height, width, ph, pw, 0, &l, v, v_stride, q,
                                   padded);
    /* Z, a tile row of a channel at a time: the tile's two rows through A (p, p + q, p - q, -q
     * along each), then its four columns the same way. */
    for (int64_t image = 0; image < images; image++)
        for (int64_t co = 0; co < out_c; co++) {
            const real *plane = dy + (image * out_c + co) * out_h * out_w;
            for (int64_t ty = 0; ty < l.tile_rows; ty++) {
                const real *row0 = plane + 2 * ty * out_w;
                const real *row1 = 2 * ty + 1 < out_h ? row0 + out_w : NULL;
                real *zt = z + co * ld + image * l.tiles + ty * tw;
                for (int64_t tx = 0; tx < tw; tx++) {
                    const bool right = 2 * tx + 1 < out_w;
                    real g00 = row0[2 * tx], g01 = right ? row0[2 * tx + 1] : 0;
                    real g10 = row1 ? row1[2 * tx] : 0, g11 = row1 && right ? row1[2 * tx + 1] : 0;
                    real h[2][4] = {{g00, g00 + g01, g00 - g01, -g01},
                                    {g10, g10 + g11, g10 - g11, -g11}};
                    for (int j = 0; j < 4; j++) {
                        real p0 = h[0][j], p1 = h[1][j];
                        zt[(0 + j) * z_stride + tx] = p0;
                        zt[(4 + j) * z_stride + tx] = p0 + p1;
                        zt[(8 + j) * z_stride + tx] = p0 - p1;
                        zt[(12 + j) * z_stride + tx] = -p1;
                    }
                }
            }
        }
    for (int e = 0; e < 16; e++)
        FN_T(fn_gemm_unsplit)(false, true, out_c, in_c, l.columns, 1, z + e * z_stride, ld,
                              v + e * v_stride, ld, add ? 1 : 0, du + e * out_c * in_c, in_c);
}

/* grad_w (out_c, in_c, 3, 3) = (or += with add) G^T du[.][co][ci] G, du (16, out_c, in_c) as
 * fn_winograd_weight_grad sums it: the gradient of U = G g G^T taken back to g. */
void FN_T(fn_winograd_weight_grad_finish)(const real *du, int64_t out_c, int64_t in_c, bool add,
                                          real *grad_w) {
    const int64_t pairs = out_c * in_c;
    for (int64_t pair = 0; pair < pairs; pair++) {
        real d[16], t[3][4];
        for (int e = 0; e < 16; e++) d[e] = du[e * pairs + pair];
        for (int j = 0; j < 4; j++) { /* G^T d, column j: rows (1, 1/2, 1/2, 0), (0, 1/2, -1/2, 0),
                                       * (0, 1/2, 1/2, 1) */
            real d0 = d[j], d1 = d[4 + j], d2 = d[8 + j], d3 = d[12 + j];
            t[0][j] = d0 + (d1 + d2) / 2;
            t[1][j] = (d1 - d2) / 2;
            t[2][j] = (d1 + d2) / 2 + d3;
        }
        real *w = grad_w + pair * 9;
        for (int i = 0; i < 3; i++) { /* (G^T d) G */
            real t0 = t[i][0], t1 = t[i][1], t2 = t[i][2], t3 = t[i][3];
            real g[3] = {t0 + (t1 + t2) / 2, (t1 - t2) / 2, (t1 + t2) / 2 + t3};
            for (int j = 0; j < 3; j++) w[3 * i + j] = add ? w[3 * i + j] + g[j] : g[j];
        }
    }
}

#endif /* FN_TEMPLATE_PASS */
