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
 * channels at each of the 16 positions e of the 4x4 transformed tile is a GEMM,
 *     M[e] (out, tiles) = U[e]^T (out, in) @ V[e] (in, tiles),
 * U[e] (in, out) being the transformed weights and V[e] the transformed input tiles. The
 * transforms only add and subtract (G's halves are exact), so the error stays within a few
 * roundings of the direct sum's.
 *
 * fn_winograd_weights transforms a layer's weights once per pass; fn_winograd_conv runs one
 * image (or a band of its tile rows, or of its output channels) on the calling thread: input
 * transform, 16 GEMMs by the built-in kernel, output transform with the bias, a fused ReLU, or
 * accumulation. A convolution's input gradient with stride 1 is itself such a convolution, of
 * the output gradient with the weights rotated by 180 degrees, in and out channels swapped, and
 * padding 2 - p: fn_winograd_weights' `flip`. Every value is computed the same way whatever the
 * band or the thread, so the bits depend on the sizes alone.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"

#include <string.h>

/* What the output transform does with a tile's values: overwrite (with the bias, then a ReLU
 * when asked) or add. */
enum { WINOGRAD_STORE, WINOGRAD_STORE_RELU, WINOGRAD_ADD };

/* Elements between consecutive matrices of V and of M beyond their size: one cache line. */
#define WINOGRAD_SKEW 16

/* The work buffer fn_winograd_conv needs, in elements, for in_c input and `cols` output channels
 * and `tiles` tiles of `tile_cols` tiles a row: V, M, the d B of a channel's padded rows and
 * those rows. */
int64_t fn_winograd_work(int64_t in_c, int64_t cols, int64_t tiles, int64_t tile_cols) {
    int64_t padded_rows = 2 * (tiles / tile_cols) + 2, w1 = tile_cols + 1;
    return 16 * ((in_c + cols) * tiles + 2 * WINOGRAD_SKEW) + 4 * (padded_rows * w1 - 1) +
           padded_rows * 2 * w1;
}

#define FN_TEMPLATE_FILE "winograd.c"
#include "template.h"

#else /* templated half */

/* w (out_c, in_c, 3, 3) -> u (16, in_c, out_c): u[e][ci][co] = (G w[co][ci] G^T)[e], e = 4 i + j.
 * flip: the weights of the input gradient's convolution (in_c and out_c swapped, each kernel
 * rotated by 180 degrees): u (16, out_c, in_c), u[e][co][ci] = (G rot(w[co][ci]) G^T)[e]. */
void FN_T(fn_winograd_weights)(const real *w, int64_t out_c, int64_t in_c, bool flip, real *u) {
    const int64_t pairs = out_c * in_c;
    for (int64_t co = 0; co < out_c; co++)
        for (int64_t ci = 0; ci < in_c; ci++) {
            const real *k = w + (co * in_c + ci) * 9;
            real g[3][3], t[4][3];
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++) g[i][j] = flip ? k[(2 - i) * 3 + 2 - j] : k[i * 3 + j];
            for (int j = 0; j < 3; j++) { /* G g */
                t[0][j] = g[0][j];
                t[1][j] = (g[0][j] + g[1][j] + g[2][j]) / 2;
                t[2][j] = (g[0][j] - g[1][j] + g[2][j]) / 2;
                t[3][j] = g[2][j];
            }
            int64_t at = flip ? co * in_c + ci : ci * out_c + co;
            for (int i = 0; i < 4; i++) { /* (G g) G^T */
                real row[4] = {t[i][0], (t[i][0] + t[i][1] + t[i][2]) / 2,
                               (t[i][0] - t[i][1] + t[i][2]) / 2, t[i][2]};
                for (int j = 0; j < 4; j++) u[(i * 4 + j) * pairs + at] = row[j];
            }
        }
}

/* Tiles are processed in runs of at most this many along a tile row, in local arrays. */
#define WINOGRAD_RUN 64

/* d B of every row of a band's padded plane p (rows, 2 w1) into q (4, rows * w1 - 1): for the
 * four values at columns 2 t .. 2 t + 3 of a row, d0 - d2, d1 + d2, d2 - d1 and d1 - d3, at
 * q[j * n + r * w1 + t] (t = w1 - 1, which reads into the next row, is never used). One flat
 * loop over the whole band: rows of a few vectors would cost more in loop bookkeeping than in
 * work. */
static void FN_T(winograd_row_transform)(const real *restrict p, int64_t n,
                                         real *restrict q) {
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

/* B^T (d B) of a tile row from the d B of its four padded rows (r0..r3, each j's values n
 * apart): v[(4 i + j) * stride + tx]. */
static inline __attribute__((always_inline)) void FN_T(winograd_input_tiles)(
    const real *restrict r0, const real *restrict r1, const real *restrict r2,
    const real *restrict r3, int64_t tw, int64_t n, real *restrict v, int64_t stride) {
    for (int j = 0; j < 4; j++) {
        const real *a = r0 + j * n, *b = r1 + j * n, *c = r2 + j * n, *d = r3 + j * n;
        real *v0 = v + j * stride, *v1 = v0 + 4 * stride, *v2 = v1 + 4 * stride,
             *v3 = v2 + 4 * stride;
        for (int64_t t = 0; t < tw; t++) {
            v0[t] = a[t] - c[t];
            v1[t] = b[t] + c[t];
            v2[t] = c[t] - b[t];
            v3[t] = b[t] - d[t];
        }
    }
}

/* A^T m A of the tiles [0, tw) of one tile row of one output channel, m[e * stride + tx], into
 * output rows y0 and y1 (y1 NULL: the output has an odd height and this is its last row),
 * columns 2 tx and 2 tx + 1 (the last column dropped when out_w is odd): overwritten with the
 * bias added (and a ReLU, mode WINOGRAD_STORE_RELU), or added to (WINOGRAD_ADD). Computed into
 * local runs along the tile row, then interleaved into the output rows. */
static inline __attribute__((always_inline)) void FN_T(winograd_output_tiles)(
    const int mode, const real *restrict m, int64_t stride, int64_t tw, int64_t out_w,
    real bias, real *restrict y0, real *restrict y1) {
    for (int64_t t0 = 0; t0 < tw; t0 += WINOGRAD_RUN) {
        const int64_t n = tw - t0 < WINOGRAD_RUN ? tw - t0 : WINOGRAD_RUN;
        real s[4][2][WINOGRAD_RUN], out[2][2][WINOGRAD_RUN];
        for (int i = 0; i < 4; i++) { /* m A, row i */
            const real *a = m + 4 * i * stride + t0, *b = a + stride, *c = b + stride,
                       *d = c + stride;
            for (int64_t t = 0; t < n; t++) {
                s[i][0][t] = a[t] + b[t] + c[t];
                s[i][1][t] = b[t] - c[t] - d[t];
            }
        }
        for (int j = 0; j < 2; j++) /* A^T (m A) */
            for (int64_t t = 0; t < n; t++) {
                real top = s[0][j][t] + s[1][j][t] + s[2][j][t] + bias;
                real bottom = s[1][j][t] - s[2][j][t] - s[3][j][t] + bias;
                if (mode == WINOGRAD_STORE_RELU) {
                    top = FN_RELU(top);
                    bottom = FN_RELU(bottom);
                }
                out[0][j][t] = top;
                out[1][j][t] = bottom;
            }
        /* Tiles with both columns inside the output, then the odd width's last column. */
        const int64_t last = 2 * (t0 + n) <= out_w ? n : n - 1;
        for (int i = 0; i < 2; i++) {
            real *y = (i == 0 ? y0 : y1);
            if (!y) break;
            y += 2 * t0;
            if (mode == WINOGRAD_ADD) {
                for (int64_t t = 0; t < last; t++) {
                    y[2 * t] += out[i][0][t];
                    y[2 * t + 1] += out[i][1][t];
                }
                if (last < n) y[2 * last] += out[i][0][last];
            } else {
                for (int64_t t = 0; t < last; t++) {
                    y[2 * t] = out[i][0][t];
                    y[2 * t + 1] = out[i][1][t];
                }
                if (last < n) y[2 * last] = out[i][0][last];
            }
        }
    }
}

/* One image x (in_c, height, width), zero-padded by ph rows and pw columns, convolved with the
 * 3x3 kernels transformed into u (16, in_c, out_c) (fn_winograd_weights) -> y (out_c, out_h,
 * out_w), the output channels [c0, c1) and tile rows [tile_rows[0], tile_rows[1]) (output rows
 * 2 t0 to 2 t1 - 1, within out_h) only:
 *     y = conv + bias[co] (bias NULL: none), then max(y, 0) with relu, or y += conv with
 *     accumulate (no bias nor ReLU then),
 * on the calling thread, in work (fn_winograd_work elements for c1 - c0 output channels and the
 * rows' tiles). out_h and out_w are height + 2 ph - 2 and width + 2 pw - 2. */
static inline __attribute__((always_inline)) void FN_T(winograd_conv_rows)(
    const int64_t tw, const real *x, int64_t in_c, int64_t height, int64_t width, int64_t ph,
    int64_t pw, const real *u, int64_t out_c, int64_t out_h, int64_t out_w, int64_t t0,
    int64_t t1, int64_t c0, int64_t c1, const real *bias, bool relu, bool accumulate, real *y,
    real *work) {
    const int64_t tiles = (t1 - t0) * tw, cols = c1 - c0;
    if (tiles <= 0 || cols <= 0) return;
    /* The band's padded plane (padded_rows, 2 w1): its padding is zeroed once, every channel
     * then writes the same interior. */
    const int64_t padded_rows = 2 * (t1 - t0) + 2, w1 = tw + 1, wp = 2 * w1;
    const int64_t q_count = padded_rows * w1 - 1;
    /* The 16 matrices of V and of M each one cache line further than a multiple of a page:
     * the transforms read or write all 16 at once, and 16 streams a power of two apart would
     * meet in the same few sets of the L1 cache. */
    const int64_t v_stride = in_c * tiles + WINOGRAD_SKEW, m_stride = cols * tiles + WINOGRAD_SKEW;
    real *v = work, *m = v + 16 * v_stride;
    real *q = m + 16 * m_stride, *padded = q + 4 * q_count;
    memset(padded, 0, (size_t)(padded_rows * wp) * sizeof(real));
    const int64_t y_first = 2 * t0 - ph; /* the input row of padded row 0 */
    int64_t r_lo = y_first < 0 ? -y_first : 0, r_hi = height - y_first;
    if (r_hi > padded_rows) r_hi = padded_rows;
    const int64_t copy = width < wp - pw ? width : wp - pw; /* columns of a row inside */

    /* V[e] (in_c, tiles): each channel's padded band through d B, then each tile row's four
     * rows through B^T. */
    for (int64_t ci = 0; ci < in_c; ci++) {
        const real *plane = x + ci * height * width;
        for (int64_t r = r_lo; r < r_hi; r++) { /* a loop: a call to memcpy costs more */
            const real *src = plane + (y_first + r) * width;
            real *dst = padded + r * wp + pw;
            for (int64_t c = 0; c < copy; c++) dst[c] = src[c];
        }
        FN_T(winograd_row_transform)(padded, q_count, q);
        for (int64_t ty = t0; ty < t1; ty++) {
            const real *rows = q + 2 * (ty - t0) * w1;
            FN_T(winograd_input_tiles)(rows, rows + w1, rows + 2 * w1, rows + 3 * w1, tw,
                                       q_count, v + ci * tiles + (ty - t0) * tw, v_stride);
        }
    }
    /* M[e] (cols, tiles) = U[e]^T (cols, in_c) @ V[e] (in_c, tiles), by the built-in kernel on
     * this thread, whatever BLAS is installed: its bits do not depend on the band. */
    for (int e = 0; e < 16; e++)
        FN_T(fn_gemm_builtin_unsplit)(true, false, cols, tiles, in_c, 1, u + e * in_c * out_c + c0,
                                      out_c, v + e * v_stride, tiles, 0,
                                      m + e * m_stride, tiles);
    /* Y = A^T M A, tile row by tile row. */
    for (int64_t o = 0; o < cols; o++) {
        const int64_t co = c0 + o;
        const real b = bias ? bias[co] : 0;
        real *plane = y + co * out_h * out_w;
        for (int64_t ty = t0; ty < t1; ty++) {
            const real *tile_m = m + o * tiles + (ty - t0) * tw;
            real *y0 = plane + 2 * ty * out_w, *y1 = 2 * ty + 1 < out_h ? y0 + out_w : NULL;
            if (accumulate)
                FN_T(winograd_output_tiles)(WINOGRAD_ADD, tile_m, m_stride, tw, out_w, 0, y0, y1);
            else if (relu)
                FN_T(winograd_output_tiles)(WINOGRAD_STORE_RELU, tile_m, m_stride, tw, out_w, b,
                                            y0, y1);
            else
                FN_T(winograd_output_tiles)(WINOGRAD_STORE, tile_m, m_stride, tw, out_w, b, y0,
                                            y1);
        }
    }
}

void FN_T(fn_winograd_conv)(const real *x, int64_t in_c, int64_t height, int64_t width,
                            int64_t ph, int64_t pw, const real *u, int64_t out_c, int64_t out_h,
                            int64_t out_w, const int64_t tile_rows[2], int64_t c0, int64_t c1,
                            const real *bias, bool relu, bool accumulate, real *y, real *work) {
    /* Rows of 16 and 8 tiles (outputs 32 and 16 wide) compiled with the width a constant: their
     * loops become straight vector code, where a loop of a variable count of one or two vectors
     * costs more in its bookkeeping than in its work. */
    const int64_t tw = (out_w + 1) / 2, t0 = tile_rows[0], t1 = tile_rows[1];
    if (tw == 16)
        FN_T(winograd_conv_rows)(16, x, in_c, height, width, ph, pw, u, out_c, out_h, out_w, t0,
                                 t1, c0, c1, bias, relu, accumulate, y, work);
    else if (tw == 8)
        FN_T(winograd_conv_rows)(8, x, in_c, height, width, ph, pw, u, out_c, out_h, out_w, t0,
                                 t1, c0, c1, bias, relu, accumulate, y, work);
    else
        FN_T(winograd_conv_rows)(tw, x, in_c, height, width, ph, pw, u, out_c, out_h, out_w, t0,
                                 t1, c0, c1, bias, relu, accumulate, y, work);
}

#endif /* FN_TEMPLATE_PASS */
