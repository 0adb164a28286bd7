/* kernels.h — prototypes of the templated kernels, declared for both dtypes.
 *
 * Shapes are in the comments at each definition. n is the batch size; `threads` is the most
 * threads a kernel may use (it uses fewer on small work).
 */
#ifndef FASTNET_KERNELS_H
#define FASTNET_KERNELS_H

#include "internal.h"

typedef enum { FN_ACT_RELU, FN_ACT_LEAKY_RELU, FN_ACT_SIGMOID, FN_ACT_TANH } fn_activation_kind;

#define FN_KERNELS(real, S)                                                                      \
    /* gemm.c: row-major C = alpha*op(A)@op(B) + beta*C through the BLAS table or built-in */   \
    void fn_gemm##S(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, real alpha,     \
                    const real *a, int64_t lda, const real *b, int64_t ldb, real beta, real *c,  \
                    int64_t ldc, int threads);                                                   \
    void fn_gemm_builtin##S(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,         \
                            real alpha, const real *a, int64_t lda, const real *b, int64_t ldb,  \
                            real beta, real *c, int64_t ldc, int threads);                       \
    /* copy.c */                                                                                 \
    void fn_copy_or_add##S(real *dst, const real *src, int64_t count, bool accumulate,           \
                           int threads);                                                         \
    /* linear.c */                                                                               \
    void fn_linear_forward##S(const real *x, const real *weight, const real *bias, real *y,      \
                              int64_t n, int64_t in, int64_t out, int threads);                  \
    void fn_linear_backward##S(const real *x, const real *weight, const real *grad_y,            \
                               real *grad_x, real grad_x_beta, real *grad_weight,                \
                               real *grad_bias, real grad_param_beta, int64_t n, int64_t in,     \
                               int64_t out, int threads);                                        \
    /* im2col.c: x (c, h, w) <-> col (c*kh*kw, out_h*out_w); pairs are (h, w) */                 \
    void fn_im2col##S(const real *x, int64_t channels, int64_t height, int64_t width,            \
                      const int64_t kernel[2], const int64_t stride[2],                          \
                      const int64_t padding[2], const int64_t dilation[2], real *col,            \
                      int threads);                                                              \
    void fn_col2im##S(const real *col, int64_t channels, int64_t height, int64_t width,          \
                      const int64_t kernel[2], const int64_t stride[2],                          \
                      const int64_t padding[2], const int64_t dilation[2], real *x,              \
                      bool accumulate, int threads);                                             \
    /* activation.c */                                                                           \
    void fn_activation_forward##S(fn_activation_kind kind, real negative_slope, const real *x,   \
                                  real *y, int64_t count, int threads);                          \
    void fn_activation_backward##S(fn_activation_kind kind, real negative_slope, const real *x,  \
                                   const real *y, const real *grad_y, real *grad_x,              \
                                   bool accumulate, int64_t count, int threads);                 \
    /* pool.c: x (n, c, h, w) <-> y (n, c, oh, ow); pairs are (h, w) */                          \
    void fn_max_pool2d_forward##S(const real *x, real *y, int64_t n, int64_t c, int64_t h,       \
                                  int64_t w, const int64_t kernel[2], const int64_t stride[2],   \
                                  const int64_t padding[2], int threads);                        \
    void fn_max_pool2d_backward##S(const real *x, const real *grad_y, real *grad_x,              \
                                   bool accumulate, int64_t n, int64_t c, int64_t h, int64_t w,  \
                                   const int64_t kernel[2], const int64_t stride[2],             \
                                   const int64_t padding[2], int threads);                       \
    void fn_avg_pool2d_forward##S(const real *x, real *y, int64_t n, int64_t c, int64_t h,       \
                                  int64_t w, const int64_t kernel[2], const int64_t stride[2],   \
                                  const int64_t padding[2], int threads);                        \
    void fn_avg_pool2d_backward##S(const real *grad_y, real *grad_x, bool accumulate, int64_t n, \
                                   int64_t c, int64_t h, int64_t w, const int64_t kernel[2],     \
                                   const int64_t stride[2], const int64_t padding[2],            \
                                   int threads);                                                 \
    void fn_global_avg_pool2d_forward##S(const real *x, real *y, int64_t planes, int64_t area,   \
                                         int threads);                                           \
    void fn_global_avg_pool2d_backward##S(const real *grad_y, real *grad_x, bool accumulate,     \
                                          int64_t planes, int64_t area, int threads);            \
    /* batchnorm.c: x (n, c, spatial); per-channel statistics in double */                       \
    void fn_batch_norm_forward##S(const real *x, real *y, const real *gamma, const real *beta,   \
                                  real *running_mean, real *running_var, bool training,          \
                                  double momentum, double eps, double *mean, double *invstd,     \
                                  int64_t n, int64_t c, int64_t spatial, int threads);           \
    void fn_batch_norm_backward##S(const real *x, const real *grad_y, const real *gamma,         \
                                   const double *mean, const double *invstd, bool training,      \
                                   real *grad_x, bool accumulate, real *grad_gamma,              \
                                   real *grad_beta, bool accumulate_params, double *scratch,     \
                                   int64_t n, int64_t c, int64_t spatial, int threads);          \
    /* dropout.c: the mask is a function of (seed, stream, element index) */                     \
    void fn_dropout_forward##S(const real *x, real *y, double p, uint64_t seed, uint64_t stream, \
                               int64_t count, int threads);                                      \
    void fn_dropout_backward##S(const real *grad_y, real *grad_x, bool accumulate, double p,     \
                                uint64_t seed, uint64_t stream, int64_t count, int threads);     \
    /* lrn.c: x (n, c, spatial), normalised across channels */                                   \
    void fn_lrn_forward##S(const real *x, real *y, real *inv_d, int64_t n, int64_t c,            \
                           int64_t spatial, int64_t size, double alpha, double beta, double k,   \
                           int threads);                                                         \
    void fn_lrn_backward##S(const real *x, const real *y, const real *inv_d, const real *grad_y, \
                            real *grad_x, bool accumulate, int64_t n, int64_t c,                 \
                            int64_t spatial, int64_t size, double alpha, double beta,            \
                            int threads);                                                        \
    /* optim.c */                                                                                \
    void fn_optimizer_update##S(const fn_optimizer *opt, int64_t step, bool momentum_first,      \
                                real *params, const real *grads, real *state, int64_t count,     \
                                int threads);                                                    \
    /* softmax_xent.c */                                                                         \
    double fn_softmax_xent_forward_backward##S(const real *logits, const void *labels,           \
                                               fn_label_type label_type, real *grad, int64_t n,  \
                                               int64_t c, int threads, int64_t *correct);

/* Checks that every label is in [0, classes), naming the first that is not. */
fn_status fn_labels_check(const void *labels, fn_label_type label_type, int64_t n,
                          int64_t classes);

FN_KERNELS(float, _f32)
FN_KERNELS(double, _f64)

#endif /* FASTNET_KERNELS_H */
