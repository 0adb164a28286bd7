/* im2col.c — unrolls the sliding windows of a convolution into the columns of a matrix, and
 * folds such a matrix back (col2im), so that a convolution becomes one GEMM per image and group.
 *
 * For an image of `channels` planes (height, width) and a kernel (kh, kw) with stride, padding and
 * dilation, the column matrix is (channels * kh * kw, out_h * out_w): row (c, i, j) holds, for
 * every output position (y, x), the input value under kernel tap (i, j) of channel c,
 *     in[c][y * stride_h - pad_h + i * dil_h][x * stride_w - pad_w + j * dil_w],
 * or 0 where that falls into the padding. Rows are ordered like PyTorch's weight
 * (out, channels, kh, kw), so a weight row times the column matrix is one output plane.
 *
 * Both kernels work channel by channel: a channel's rows of the matrix depend on that channel's
 * plane only, so channels can be shared between threads with no two threads writing the same
 * element (col2im included), and each element is summed in the same order whatever the thread
 * count.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"

#include <string.h>

/* One convolution's window geometry: kernel, stride, padding, dilation (rows, columns) and the
 * output size they give. */
typedef struct {
    int64_t kh, kw, sh, sw, ph, pw, dh, dw;
    int64_t out_h, out_w;
} im2col_geometry;

static im2col_geometry im2col_geometry_of(int64_t height, int64_t width, const int64_t kernel[2],
                                          const int64_t stride[2], const int64_t padding[2],
                                          const int64_t dilation[2]) {
    im2col_geometry g = {kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
                         dilation[0], dilation[1], 0, 0};
    /* (size + 2 pad - dil (k - 1) - 1) / stride + 1; the caller has checked that it is >= 1. */
    g.out_h = (height + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
    g.out_w = (width + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
    return g;
}

/* The output positions o in [*lo, *hi) of `out` whose input index o * stride + offset lies in
 * [0, size): before and after that range a kernel tap reads the padding. Solving the bounds once
 * per tap keeps the inner loops free of tests. */
static inline void im2col_valid_range(int64_t offset, int64_t stride, int64_t size, int64_t out,
                                      int64_t *lo, int64_t *hi) {
    int64_t first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    int64_t end = offset >= size ? 0 : (size - 1 - offset) / stride + 1;
    if (end > out) end = out;
    if (first > end) first = end;
    *lo = first;
    *hi = end;
}

/* A padded plane is copied into a stack buffer of this size, so that the rows of the column matrix
 * become plain copies of whole rows: with padding, every row otherwise splits into a zero head, a
 * copy and a zero tail of lengths that vary with the tap, and for the short rows of small images
 * (8 to 32 columns) that bookkeeping costs more than the copies (measured: im2col of 16 channels
 * of 32 x 32, 3 x 3, padding 1, took 26 us that way and 12 to 16 us through the buffer). Larger
 * planes take the bounded path. */
#define IM2COL_STACK_BYTES 32768

/* Whether a padded plane (rows, cols) fits the stack buffer; written so that a hostile padding
 * cannot overflow the product. */
static inline bool im2col_fits_stack(int64_t rows, int64_t cols, size_t elem_size) {
    int64_t capacity = (int64_t)(IM2COL_STACK_BYTES / elem_size);
    return rows <= capacity && cols <= capacity / rows;
}

#if defined(__AVX512F__)
#include <immintrin.h>

/* The lanes 0, 2, ..., 2 (count - 1) of a 16-lane mask: the even elements of a run of floats
 * that the first `count` of 8 values go to or come from (count <= 8). */
static inline __mmask16 im2col_even_lanes(int64_t count) {
    return (__mmask16)(0x5555u & ((1u << (2 * count)) - 1u));
}

/* dst[x] = src[2 x] for x < n (floats): 32 elements of src in two loads, their even lanes in one
 * permutation. GCC left the constant-width loops scalar, as it cannot read the odd element past
 * the last even one; the loads here are masked to the even lanes, so nothing past src[2 n - 2]
 * is read. With col2im_even_add_f32, for ResNet-8's strided convolutions: in `perf`, im2col's
 * planes 3.7 -> 3.3% of the training step's samples, col2im's 3.1 -> 1.7%, the step 1.02x
 * faster (8 alternations, 7 faster), the same bits. */
static inline void im2col_even_f32(float *restrict dst, const float *restrict src, int64_t n) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    for (int64_t x = 0; x < n; x += 16) {
        const int64_t left = n - x < 16 ? n - x : 16;
        const __m512 lo = _mm512_maskz_loadu_ps(im2col_even_lanes(left < 8 ? left : 8), src + 2 * x);
        const __m512 hi = _mm512_maskz_loadu_ps(im2col_even_lanes(left > 8 ? left - 8 : 0),
                                                src + 2 * x + 16);
        _mm512_mask_storeu_ps(dst + x, (__mmask16)((1u << left) - 1u),
                              _mm512_permutex2var_ps(lo, even, hi));
    }
}

/* dst[2 x] += src[x] for x < n (floats), the adjoint: each value of src moved to the even lane
 * of its pair and added there, the odd elements of dst neither read nor written (the same
 * additions as element by element). */
static inline void col2im_even_add_f32(float *restrict dst, const float *restrict src,
                                       int64_t n) {
    const __m512i low = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i high = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14,
                                           15, 15);
    for (int64_t x = 0; x < n; x += 16) {
        const int64_t left = n - x < 16 ? n - x : 16;
        const __m512 values = _mm512_maskz_loadu_ps((__mmask16)((1u << left) - 1u), src + x);
        const __mmask16 lo = im2col_even_lanes(left < 8 ? left : 8);
        const __mmask16 hi = im2col_even_lanes(left > 8 ? left - 8 : 0);
        float *d = dst + 2 * x;
        _mm512_mask_storeu_ps(d, lo, _mm512_add_ps(_mm512_maskz_loadu_ps(lo, d),
                                                   _mm512_permutexvar_ps(low, values)));
        _mm512_mask_storeu_ps(d + 16, hi, _mm512_add_ps(_mm512_maskz_loadu_ps(hi, d + 16),
                                                        _mm512_permutexvar_ps(high, values)));
    }
}
#endif

#define FN_TEMPLATE_FILE "im2col.c"
#include "template.h"

#else /* templated half */

/* dst[0, n) = src[0, n) for rows of a plane. Written as a loop, each row becomes a call to memcpy
 * (GCC recognises the loop, even a loop of fixed-size blocks), and for the rows of 8 to 32
 * elements of small images the calls cost more than the copies: im2col of 64 channels of 8 x 8
 * spent two thirds of its time in memmove. Short rows are instead copied as two fixed-size blocks,
 * the second ending at n and overlapping the first, which compile to a few vector moves. */
static inline void FN_T(im2col_copy)(real *restrict dst, const real *restrict src, int64_t n) {
    enum { BLOCK = 32 / sizeof(real) }; /* one 256-bit vector */
    if (n > 4 * BLOCK) {
        memcpy(dst, src, (size_t)n * sizeof(real)); /* long enough to pay for the call */
    } else if (n >= 2 * BLOCK) {
        memcpy(dst, src, 2 * BLOCK * sizeof(real));
        memcpy(dst + n - 2 * BLOCK, src + n - 2 * BLOCK, 2 * BLOCK * sizeof(real));
    } else if (n >= BLOCK) {
        memcpy(dst, src, BLOCK * sizeof(real));
        memcpy(dst + n - BLOCK, src + n - BLOCK, BLOCK * sizeof(real));
    } else if (n >= BLOCK / 2) {
        memcpy(dst, src, BLOCK / 2 * sizeof(real));
        memcpy(dst + n - BLOCK / 2, src + n - BLOCK / 2, BLOCK / 2 * sizeof(real));
    } else { /* at most 3 floats or 1 double */
        if (n > 0) dst[0] = src[0];
        if (n > 1) dst[1] = src[1];
        if (n > 2) dst[2] = src[2];
    }
}

/* `rows` rows of n elements, src_stride apart, to consecutive rows of dst; inlined where n is a
 * constant, each row becomes a few vector moves. */
static inline __attribute__((always_inline)) void FN_T(im2col_rows)(real *restrict dst,
                                                                    const real *restrict src,
                                                                    int64_t rows,
                                                                    int64_t src_stride, int64_t n) {
    for (int64_t r = 0; r < rows; r++, dst += n, src += src_stride)
        memcpy(dst, src, (size_t)n * sizeof(real));
}

/* The same reading every other element of src (stride 2 across). */
static inline __attribute__((always_inline)) void FN_T(im2col_rows_stride2)(
    real *restrict dst, const real *restrict src, int64_t rows, int64_t src_stride, int64_t n) {
#if defined(__AVX512F__)
    if (FN_DTYPE == FN_FLOAT32) { /* im2col_even_f32 */
        for (int64_t r = 0; r < rows; r++, dst += n, src += src_stride)
            im2col_even_f32((float *)(void *)dst, (const float *)(const void *)src, n);
        return;
    }
#endif
    for (int64_t r = 0; r < rows; r++, dst += n, src += src_stride)
        for (int64_t x = 0; x < n; x++) dst[x] = src[2 * x];
}

/* One plane without padding, every window inside it: plane (height, width) -> dst
 * (kh * kw, out_h * out_w). */
static void FN_T(im2col_plane)(const real *restrict plane, int64_t width,
                               const im2col_geometry *g, real *restrict dst) {
    for (int64_t i = 0; i < g->kh; i++) {
        for (int64_t j = 0; j < g->kw; j++) {
            const real *src = plane + i * g->dh * width + j * g->dw;
            const int64_t src_stride = g->sh * width;
            if (g->sw == 1) {
                /* Rows of the widths of small images take constant-size copies: a row costs a
                 * few cycles of loop and size tests otherwise, as much as the copy itself
                 * (3.5 ns a row, whatever its width up to 32). */
                switch (g->out_w) {
                case 8: FN_T(im2col_rows)(dst, src, g->out_h, src_stride, 8); break;
                case 16: FN_T(im2col_rows)(dst, src, g->out_h, src_stride, 16); break;
                case 24: FN_T(im2col_rows)(dst, src, g->out_h, src_stride, 24); break;
                case 32: FN_T(im2col_rows)(dst, src, g->out_h, src_stride, 32); break;
                default:
                    for (int64_t oy = 0; oy < g->out_h; oy++)
                        FN_T(im2col_copy)(dst + oy * g->out_w, src + oy * src_stride, g->out_w);
                }
                dst += g->out_h * g->out_w;
                continue;
            }
            if (g->sw == 2) { /* likewise: a constant stride and width become shuffles */
                switch (g->out_w) {
                case 8: FN_T(im2col_rows_stride2)(dst, src, g->out_h, src_stride, 8); break;
                case 16: FN_T(im2col_rows_stride2)(dst, src, g->out_h, src_stride, 16); break;
                default: FN_T(im2col_rows_stride2)(dst, src, g->out_h, src_stride, g->out_w);
                }
                dst += g->out_h * g->out_w;
                continue;
            }
            for (int64_t oy = 0; oy < g->out_h; oy++, dst += g->out_w) {
                const real *row = src + oy * src_stride;
                for (int64_t ox = 0; ox < g->out_w; ox++) dst[ox] = row[ox * g->sw];
            }
        }
    }
}

/* One plane (height, width) with its padding read as zeros -> dst (kh * kw, out_h * out_w), for
 * planes too large for the stack buffer; the output's rows start at row first_row of the
 * convolution's. */
static void FN_T(im2col_plane_bounded)(const real *restrict plane, int64_t height, int64_t width,
                                       const im2col_geometry *g, int64_t first_row,
                                       real *restrict dst) {
    const int64_t size = g->out_h * g->out_w;
    for (int64_t i = 0; i < g->kh; i++) {
        const int64_t y_offset = first_row * g->sh + i * g->dh - g->ph;
        int64_t y_lo, y_hi;
        im2col_valid_range(y_offset, g->sh, height, g->out_h, &y_lo, &y_hi);
        for (int64_t j = 0; j < g->kw; j++, dst += size) {
            const int64_t x_offset = j * g->dw - g->pw;
            int64_t x_lo, x_hi;
            im2col_valid_range(x_offset, g->sw, width, g->out_w, &x_lo, &x_hi);
            for (int64_t oy = 0; oy < g->out_h; oy++) {
                real *out = dst + oy * g->out_w;
                if (oy < y_lo || oy >= y_hi) {
                    for (int64_t ox = 0; ox < g->out_w; ox++) out[ox] = 0;
                    continue;
                }
                const real *row = plane + (oy * g->sh + y_offset) * width;
                for (int64_t ox = 0; ox < x_lo; ox++) out[ox] = 0;
                for (int64_t ox = x_lo; ox < x_hi; ox++) out[ox] = row[ox * g->sw + x_offset];
                for (int64_t ox = x_hi; ox < g->out_w; ox++) out[ox] = 0;
            }
        }
    }
}

/* x (channels, height, width) -> col (channels * kh * kw, out_h * out_w), every element written
 * (zeros for padding); kernel, stride, padding, dilation are (h, w) pairs. With rows, only the
 * output rows [rows[0], rows[1]): col is then (channels * kh * kw, (rows[1] - rows[0]) * out_w),
 * the columns of a band of the output (a convolution of one image split over threads by bands). */
void FN_T(fn_im2col)(const real *x, int64_t channels, int64_t height, int64_t width,
                     const int64_t kernel[2], const int64_t stride[2], const int64_t padding[2],
                     const int64_t dilation[2], const int64_t rows[2], real *col, int threads) {
    im2col_geometry g = im2col_geometry_of(height, width, kernel, stride, padding, dilation);
    const int64_t first_row = rows ? rows[0] : 0;
    if (rows) g.out_h = rows[1] - rows[0];
    const int64_t taps = g.kh * g.kw, size = g.out_h * g.out_w;
    const int64_t padded_h = height + 2 * g.ph, padded_w = width + 2 * g.pw;
    const bool padded = g.ph > 0 || g.pw > 0;
    const bool fits = im2col_fits_stack(padded_h, padded_w, sizeof(real));
    /* The input rows the band reads, in padded coordinates (all of them without rows). */
    int64_t y_lo = first_row * g.sh, y_hi = (first_row + g.out_h - 1) * g.sh + (g.kh - 1) * g.dh + 1;
    int t = fn_threads_for(channels * taps * size, threads);
    /* Each thread takes a range of channels; through the stack buffer, its zero border is
     * written once for the range, and each channel only fills the interior rows it reads. */
    FN_PARALLEL_LOOP(t, part, t, {
        int64_t first, end;
        fn_partition(channels, t, (int)part, &first, &end);
        real buffer[IM2COL_STACK_BYTES / sizeof(real)];
        if (padded && fits && first < end)
            memset(buffer, 0, (size_t)(padded_h * padded_w) * sizeof(real));
        for (int64_t c = first; c < end; c++) {
            const real *plane = x + c * height * width;
            real *dst = col + c * taps * size;
            if (!padded) {
                FN_T(im2col_plane)(plane + first_row * g.sh * width, width, &g, dst);
            } else if (fits) {
                real *interior = buffer + g.ph * padded_w + g.pw;
                int64_t from = y_lo - g.ph > 0 ? y_lo - g.ph : 0;
                int64_t to = y_hi - g.ph < height ? y_hi - g.ph : height;
                for (int64_t y = from; y < to; y++)
                    FN_T(im2col_copy)(interior + y * padded_w, plane + y * width, width);
                FN_T(im2col_plane)(buffer + y_lo * padded_w, padded_w, &g, dst);
            } else {
                FN_T(im2col_plane_bounded)(plane, height, width, &g, first_row, dst);
            }
        }
    });
}

/* The adjoint of im2col_rows: consecutive rows of n elements of src added into `rows` rows of
 * dst, dst_stride apart; with a constant n, a few vector operations a row. */
static inline __attribute__((always_inline)) void FN_T(col2im_rows)(real *restrict dst,
                                                                    const real *restrict src,
                                                                    int64_t rows,
                                                                    int64_t dst_stride, int64_t n) {
    for (int64_t r = 0; r < rows; r++, src += n, dst += dst_stride)
        for (int64_t x = 0; x < n; x++) dst[x] += src[x];
}

/* The adjoint of im2col_rows_stride2. */
static inline __attribute__((always_inline)) void FN_T(col2im_rows_stride2)(
    real *restrict dst, const real *restrict src, int64_t rows, int64_t dst_stride, int64_t n) {
#if defined(__AVX512F__)
    if (FN_DTYPE == FN_FLOAT32) {
        for (int64_t r = 0; r < rows; r++, src += n, dst += dst_stride)
            col2im_even_add_f32((float *)(void *)dst, (const float *)(const void *)src, n);
        return;
    }
#endif
    for (int64_t r = 0; r < rows; r++, src += n, dst += dst_stride)
        for (int64_t x = 0; x < n; x++) dst[2 * x] += src[x];
}

/* The adjoint of im2col_plane: src (kh * kw, out_h * out_w) added into plane (height, width),
 * every window inside it. */
static void FN_T(col2im_plane)(const real *restrict src, int64_t width, const im2col_geometry *g,
                               real *restrict plane) {
    for (int64_t i = 0; i < g->kh; i++) {
        for (int64_t j = 0; j < g->kw; j++) {
            real *dst = plane + i * g->dh * width + j * g->dw;
            const int64_t dst_stride = g->sh * width;
            if (g->sw == 1) { /* constant widths, as in im2col_plane */
                switch (g->out_w) {
                case 8: FN_T(col2im_rows)(dst, src, g->out_h, dst_stride, 8); break;
                case 16: FN_T(col2im_rows)(dst, src, g->out_h, dst_stride, 16); break;
                case 24: FN_T(col2im_rows)(dst, src, g->out_h, dst_stride, 24); break;
                case 32: FN_T(col2im_rows)(dst, src, g->out_h, dst_stride, 32); break;
                default: FN_T(col2im_rows)(dst, src, g->out_h, dst_stride, g->out_w);
                }
            } else if (g->sw == 2) {
                switch (g->out_w) {
                case 8: FN_T(col2im_rows_stride2)(dst, src, g->out_h, dst_stride, 8); break;
                case 16: FN_T(col2im_rows_stride2)(dst, src, g->out_h, dst_stride, 16); break;
                default: FN_T(col2im_rows_stride2)(dst, src, g->out_h, dst_stride, g->out_w);
                }
            } else {
                for (int64_t oy = 0; oy < g->out_h; oy++) {
                    real *row = dst + oy * dst_stride;
                    const real *in = src + oy * g->out_w;
                    for (int64_t ox = 0; ox < g->out_w; ox++) row[ox * g->sw] += in[ox];
                }
            }
            src += g->out_h * g->out_w;
        }
    }
}

/* The adjoint of im2col_plane_bounded: entries read from padding are dropped. */
static void FN_T(col2im_plane_bounded)(const real *restrict src, int64_t height, int64_t width,
                                       const im2col_geometry *g, real *restrict plane) {
    const int64_t size = g->out_h * g->out_w;
    for (int64_t i = 0; i < g->kh; i++) {
        const int64_t y_offset = i * g->dh - g->ph;
        int64_t y_lo, y_hi;
        im2col_valid_range(y_offset, g->sh, height, g->out_h, &y_lo, &y_hi);
        for (int64_t j = 0; j < g->kw; j++, src += size) {
            const int64_t x_offset = j * g->dw - g->pw;
            int64_t x_lo, x_hi;
            im2col_valid_range(x_offset, g->sw, width, g->out_w, &x_lo, &x_hi);
            for (int64_t oy = y_lo; oy < y_hi; oy++) {
                const real *in = src + oy * g->out_w;
                real *row = plane + (oy * g->sh + y_offset) * width;
                for (int64_t ox = x_lo; ox < x_hi; ox++) row[ox * g->sw + x_offset] += in[ox];
            }
        }
    }
}

/* col (channels * kh * kw, out_h * out_w) -> x (channels, height, width): the adjoint of
 * fn_im2col. Every column entry is added to the input element it was read from (entries read from
 * padding are dropped), so overlapping windows sum, in the same order whatever the thread count.
 * accumulate: add to x; otherwise x is overwritten. */
void FN_T(fn_col2im)(const real *col, int64_t channels, int64_t height, int64_t width,
                     const int64_t kernel[2], const int64_t stride[2], const int64_t padding[2],
                     const int64_t dilation[2], real *x, bool accumulate, int threads) {
    const im2col_geometry g =
        im2col_geometry_of(height, width, kernel, stride, padding, dilation);
    const int64_t rows = g.kh * g.kw, size = g.out_h * g.out_w;
    const int64_t padded_h = height + 2 * g.ph, padded_w = width + 2 * g.pw;
    const bool padded = g.ph > 0 || g.pw > 0;
    const bool fits = im2col_fits_stack(padded_h, padded_w, sizeof(real));
    int t = fn_threads_for(channels * rows * size, threads);
    FN_PARALLEL_LOOP(t, c, channels, {
        real *plane = x + c * height * width;
        const real *src = col + c * rows * size;
        if (padded && fits) {
            /* Sum into a zeroed padded plane, then hand its interior over. */
            real buffer[IM2COL_STACK_BYTES / sizeof(real)];
            memset(buffer, 0, (size_t)(padded_h * padded_w) * sizeof(real));
            FN_T(col2im_plane)(src, padded_w, &g, buffer);
            for (int64_t y = 0; y < height; y++) {
                const real *from = buffer + (y + g.ph) * padded_w + g.pw;
                real *to = plane + y * width;
                if (accumulate) {
                    for (int64_t i = 0; i < width; i++) to[i] += from[i];
                } else {
                    FN_T(im2col_copy)(to, from, width);
                }
            }
        } else {
            if (!accumulate) memset(plane, 0, (size_t)(height * width) * sizeof(real));
            if (padded) {
                FN_T(col2im_plane_bounded)(src, height, width, &g, plane);
            } else {
                FN_T(col2im_plane)(src, width, &g, plane);
            }
        }
    });
}

#endif /* FN_TEMPLATE_PASS */
