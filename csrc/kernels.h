/* kernels.h — prototypes of the templated kernels, declared for both dtypes.
 *
 * Shapes are in the comments at each definition. n is the batch size; `threads` is the most
 * threads a kernel may use (it uses fewer on small work).
 */
#ifndef FASTNET_KERNELS_H
#define FASTNET_KERNELS_H

#include "internal.h"

typedef enum {
    FN_ACT_RELU,
    FN_ACT_LEAKY_RELU,
    FN_ACT_SIGMOID,
    FN_ACT_TANH,
    FN_ACT_ELU,
    FN_ACT_GELU,      /* exact, with erf */
    FN_ACT_GELU_TANH, /* approximate="tanh" */
    FN_ACT_SILU,
    FN_ACT_SOFTPLUS,
} fn_activation_kind;

/* max(v, 0) with NaN passed on, as PyTorch's ReLU does (v > 0 ? v : 0 would turn a NaN into 0 and
 * hide it from the loss and the checks): the ReLU kernel and the ops that apply a fused ReLU. */
#define FN_RELU(v) (!((v) <= 0) ? (v) : 0)

/* The hyper-parameters of the elementwise activations (each reads its own). */
typedef struct {
    double negative_slope; /* LeakyReLU */
    double alpha;          /* ELU */
    double beta, threshold; /* Softplus */
} fn_activation_params;

/* The loss kernels' per-part partial sums: a job holds FN_MAX_PARTIALS slots, one per part, and
 * the parts are summed in part order, so that the same thread count gives the same bits every
 * run, and in deterministic mode any thread count does (the parts then come from the work alone;
 * they run with fn_run_parts). */
#define FN_MAX_PARTIALS 256

/* The number of parts for `work` units: fn_reduction_parts, at most FN_MAX_PARTIALS. */
static inline int fn_partial_parts(int64_t work, int threads) {
    int parts = fn_reduction_parts(work, threads);
    return parts > FN_MAX_PARTIALS ? FN_MAX_PARTIALS : parts;
}

/* partials[0] + ... + partials[parts - 1], in that order. */
static inline double fn_sum_partials(const double *partials, int parts) {
    double sum = 0;
    for (int i = 0; i < parts; i++) sum += partials[i];
    return sum;
}

struct fn_update_args; /* model.h */
/* Per-channel coefficients batch norm keeps (batchnorm.c) */
#define FN_BATCH_NORM_COEFS 6

#define FN_NORM_BLOCK 8192 /* elements per partial sum of fn_grad_sum_squares */

/* exp.c: the partial sums of fn_sum_lanes, and the elements of a row fn_sum_exp_shifted takes
 * at a time (through a buffer on the stack that stays in L1) */
#define FN_EXP_LANES 16
#define FN_EXP_PIECE 1024

/* gemm.c: whether C = A @ B^T with m rows and inner size k runs as dot products along k
 * (fn_gemm_dot_runs) rather than packed: few rows and a long k. */
bool fn_gemm_dot_pays(int64_t m, int64_t k);
/* sparse_gemm.c: the largest fraction of nonzeros at which fn_gemm_sparse skips the zeros */
double fn_sparse_max_density(void);

/* winograd.c: the elements of fn_winograd_conv's work buffer for in_c input and out_c output
 * channels and `images` outputs (out_h, out_w). */
int64_t fn_winograd_work(int64_t in_c, int64_t out_c, int64_t out_h, int64_t out_w,
                         int64_t images);

#define FN_KERNELS(real, S)                                                                      \
    /* gemm.c: row-major C = alpha*op(A)@op(B) + beta*C through the BLAS table or built-in */   \
    void fn_gemm##S(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, real alpha,     \
                    const real *a, int64_t lda, const real *b, int64_t ldb, real beta, real *c,  \
                    int64_t ldc, int threads);                                                   \
    /* the same with each thread's columns last to first where dot products stream B        \
     * (reversed; the same bits): alternated by a caller that streams the same B each call;   \
     * col_bias (n), unless NULL, is added to every row of C (with beta 0, a linear layer's   \
     * forward, in the same rounding as C seeded with it; with another beta, to beta * C);    \
     * relu: C = ReLU(C) at the end, on each block of C as its thread finishes it */           \
    void fn_gemm_ordered##S(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,         \
                            real alpha, const real *a, int64_t lda, const real *b, int64_t ldb,  \
                            real beta, real *c, int64_t ldc, int threads, bool reversed,         \
                            const real *col_bias, bool relu);                                    \
    void fn_gemm_builtin##S(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,         \
                            real alpha, const real *a, int64_t lda, const real *b, int64_t ldb,  \
                            real beta, real *c, int64_t ldc, int threads);                       \
    void fn_gemm_blas##S(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,            \
                         real alpha, const real *a, int64_t lda, const real *b, int64_t ldb,     \
                         real beta, real *c, int64_t ldc, int threads);                          \
    /* dst[p * width + i] = src[i * ld + p] for i < rows, p < kc: the transposition that packs \
     * a transposed B (fastest in 16 x 16 blocks of rows) */                                   \
    void fn_gemm_pack_rows##S(const real *src, int64_t ld, int64_t rows, int64_t kc, real *dst,  \
                              int64_t width);                                                    \
    /* sparse_gemm.c: the same product as fn_gemm_ordered (alpha 1), with the multiply-adds  \
     * of A's exact zeros skipped when A has few enough nonzeros to pay (a ReLU's output, or  \
     * a gradient masked by one), or with sparse_b those of B where B has fewer */              \
    void fn_gemm_sparse##S(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,          \
                           const real *a, int64_t lda, const real *b, int64_t ldb, real beta,    \
                           real *c, int64_t ldc, int threads, bool reversed,                     \
                           const real *col_bias, bool relu, bool sparse_b);                      \
    /* the same in one call on the calling thread (never divided into blocks) */                 \
    void fn_gemm_dot_runs##S(int64_t m, int64_t n, int64_t segments, int64_t len, real alpha,    \
                             const real *a, int64_t lda, int64_t a_step, const real *b,          \
                             const int64_t *b_rows, int64_t b_step, real beta, real *c,          \
                             int64_t ldc);                                                       \
    void fn_gemm_unsplit##S(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,         \
                            real alpha, const real *a, int64_t lda, const real *b, int64_t ldb,  \
                            real beta, real *c, int64_t ldc);                                    \
    /* C (m, n) = A (m, k) @ B (k, n) + bias (m) per row (NULL: none), then ReLU (relu), by the \
     * built-in kernel on the calling thread: each tile finished while it is in L1 */             \
    void fn_gemm_bias_relu##S(int64_t m, int64_t n, int64_t k, const real *a, int64_t lda,       \
                              const real *b, int64_t ldb, const real *bias, bool relu, real *c,  \
                              int64_t ldc);                                                      \
    /* c (rows, cols), row stride ldc: c + bias (rows) per row (NULL: none), then ReLU (relu), \
     * as fn_gemm_bias_relu finishes its tiles */                                                \
    void fn_bias_relu_rows##S(real *c, int64_t rows, int64_t cols, int64_t ldc,                  \
                              const real *bias, bool relu);                                      \
    /* winograd.c: 3x3 stride-1 convolutions by F(2x2, 3x3); w (out_c, in_c, 3, 3) -> u       \
     * (16, in_c, out_c), or flipped (16, out_c, in_c); x (images, in_c, h, w) -> y (images,  \
     * out_c, oh, ow), or one image's output rows [rows[0], rows[1]) (rows NULL: all),        \
     * channels ldy apart */                                                                     \
    void fn_winograd_weights##S(const real *w, int64_t out_c, int64_t in_c, bool flip,          \
                                real *u);                                                        \
    void fn_winograd_conv##S(const real *x, int64_t images, int64_t in_c, int64_t height,       \
                             int64_t width, int64_t ph, int64_t pw, const real *u,              \
                             int64_t out_c, int64_t out_h, int64_t out_w,                       \
                             const int64_t rows[2], const real *bias, bool relu,                \
                             bool accumulate, real *y, int64_t ldy, real *work);                \
    /* its weight gradient: du (16, out_c, in_c) = (or += with add) the transformed tiles' sums \
     * over `images` images x and output gradients dy; then grad_w (out_c, in_c, 3, 3) = (or   \
     * += with add) G^T du G */                                                                  \
    void fn_winograd_weight_grad##S(const real *x, const real *dy, int64_t images,              \
                                    int64_t in_c, int64_t height, int64_t width, int64_t ph,    \
                                    int64_t pw, int64_t out_c, int64_t out_h, int64_t out_w,    \
                                    bool add, real *du, real *work);                            \
    void fn_winograd_weight_grad_finish##S(const real *du, int64_t out_c, int64_t in_c,         \
                                           bool add, real *grad_w);                             \
    /* copy.c */                                                                                 \
    void fn_copy_or_add##S(real *dst, const real *src, int64_t count, bool accumulate,           \
                           int threads);                                                         \
    /* linear.c */                                                                               \
    void fn_linear_forward##S(const real *x, const real *weight, const real *bias, real *y,      \
                              int64_t n, int64_t in, int64_t out, int threads, bool reversed,    \
                              bool relu);                                                        \
    void fn_linear_backward##S(const real *x, const real *weight, const real *grad_y,            \
                               real *grad_x, real grad_x_beta, real *grad_weight,                \
                               real *grad_bias, real grad_param_beta, int64_t n, int64_t in,     \
                               int64_t out, int threads);                                        \
    /* im2col.c: x (c, h, w) <-> col (c*kh*kw, out_h*out_w); pairs are (h, w); im2col's       \
     * rows[2]: the output rows [rows[0], rows[1]) whose columns it writes, or NULL for all */    \
    void fn_im2col##S(const real *x, int64_t channels, int64_t height, int64_t width,            \
                      const int64_t kernel[2], const int64_t stride[2],                          \
                      const int64_t padding[2], const int64_t dilation[2],                       \
                      const int64_t rows[2], real *col, int threads);                            \
    void fn_col2im##S(const real *col, int64_t channels, int64_t height, int64_t width,          \
                      const int64_t kernel[2], const int64_t stride[2],                          \
                      const int64_t padding[2], const int64_t dilation[2], real *x,              \
                      bool accumulate, int threads);                                             \
    /* activation.c */                                                                           \
    void fn_activation_forward##S(fn_activation_kind kind, const fn_activation_params *params,   \
                                  const real *x, real *y, int64_t count, int threads);           \
    void fn_activation_backward##S(fn_activation_kind kind, const fn_activation_params *params,  \
                                   const real *x, const real *y, const real *grad_y,             \
                                   real *grad_x, bool accumulate, int64_t count, int threads);   \
    /* prelu.c: x, y (n, c, spatial); weight (c), or (1) shared by every channel */              \
    void fn_prelu_forward##S(const real *x, const real *weight, bool shared, real *y, int64_t n, \
                             int64_t c, int64_t spatial, int threads);                           \
    void fn_prelu_backward##S(const real *x, const real *weight, bool shared,                    \
                              const real *grad_y, real *grad_x, bool accumulate,                 \
                              real *grad_weight, bool accumulate_weight, double *row_sums,       \
                              int64_t n, int64_t c, int64_t spatial, int threads);               \
    /* maxout.c: x (n, groups * pieces, spatial) -> y (n, groups, spatial) */                    \
    void fn_maxout_forward##S(const real *x, real *y, int64_t n, int64_t groups, int64_t pieces, \
                              int64_t spatial, int threads);                                     \
    void fn_maxout_backward##S(const real *x, const real *grad_y, real *grad_x, bool accumulate, \
                               int64_t n, int64_t groups, int64_t pieces, int64_t spatial,       \
                               int threads);                                                     \
    /* softmax.c: x, y (n, c, spatial), normalised over c; y does not overlap x */              \
    void fn_softmax_forward##S(const real *x, real *y, bool take_log, int64_t n, int64_t c,      \
                               int64_t spatial, int threads);                                    \
    void fn_softmax_backward##S(const real *y, const real *grad_y, real *grad_x, bool take_log,  \
                                bool accumulate, int64_t n, int64_t c, int64_t spatial,          \
                                int threads);                                                    \
    /* pool.c: x (n, c, h, w) <-> y (n, c, oh, ow); pairs are (h, w) */                          \
    void fn_max_pool2d_forward##S(const real *x, real *y, int32_t *argmax, bool positive_only,   \
                                  int64_t n, int64_t c, int64_t h, int64_t w,                    \
                                  const int64_t kernel[2], const int64_t stride[2],              \
                                  const int64_t padding[2], int threads);                        \
    void fn_max_pool2d_backward##S(const int32_t *argmax, const real *grad_y, real *grad_x,      \
                                   bool accumulate, int64_t n, int64_t c, int64_t h, int64_t w,  \
                                   int64_t oh, int64_t ow, int threads);                         \
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
    /* batchnorm.c: x (n, c, spatial); per-channel statistics in double; coef (c,                \
     * FN_BATCH_NORM_COEFS): each channel's coefficients, left by forward for backward and by   \
     * backward for fn_batch_norm_input_grad */                                                  \
    void fn_batch_norm_forward##S(const real *x, real *y, const real *gamma, const real *beta,   \
                                  real *running_mean, real *running_var, bool training,          \
                                  bool relu, double momentum, double eps, double *mean,          \
                                  double *invstd, real *coef, double *sample_stats,              \
                                  bool sample_stats_ready,                                       \
                                  int64_t n, int64_t c, int64_t spatial, int threads);           \
    void fn_batch_norm_backward##S(const real *x, const real *grad_y, bool relu,                 \
                                   const real *gamma, const double *mean, const double *invstd,  \
                                   real *coef, bool training, real *grad_x, bool accumulate,     \
                                   real *grad_gamma, real *grad_beta, bool accumulate_params,    \
                                   double *scratch, int64_t n, int64_t c, int64_t spatial,       \
                                   int threads);                                                 \
    void fn_batch_norm_input_grad##S(const real *x, const real *grad_y, bool relu,               \
                                     const real *coef, int64_t c0, int64_t c1, int64_t spatial,  \
                                     real *grad_x, bool accumulate);                             \
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
    void fn_optimizer_update##S(const struct fn_update_args *args, int threads);                \
    /* the sum of squares of grads (count), in double (float squares first in runs of 16 in     \
     * float), in blocks of FN_NORM_BLOCK (one per entry of blocks) summed in order: the same    \
     * bits for any thread count */                                                              \
    double fn_grad_sum_squares##S(const real *grads, int64_t count, double *blocks,              \
                                  int threads);                                                  \
    /* exp.c: x = exp(x) for x in [-inf, 0] or NaN, vectorised for float (within 1.5 units  \
     * in the last place); rows of exp(x - their shift), each padded with zeros to stride; the  \
     * sum of x (n, a multiple of FN_EXP_LANES) in FN_EXP_LANES partial sums; from those,       \
     * sum_j exp(x_j - shift) of a softmax row, the exponentials also into out unless NULL */   \
    void fn_exp_nonpositive##S(real *x, int64_t n);                                              \
    void fn_exp_shifted_rows##S(const real *x, int64_t ldx, const real *shift, int64_t rows,     \
                                int64_t n, int64_t stride, real *out);                           \
    real fn_sum_lanes##S(const real *x, int64_t n);                                              \
    real fn_max_lanes##S(const real *x, int64_t n);                                              \
    real fn_sum_exp_shifted##S(const real *x, real shift, int64_t n, real *out);                 \
    /* losses: outputs, targets and grad (n, c); arguments checked by fn_loss_check; each     \
     * returns the loss and writes d loss / d outputs unless grad is NULL */                     \
    double fn_cross_entropy_forward_backward##S(const real *logits, const fn_targets *targets,   \
                                                const fn_loss *loss, double norm, real *grad,    \
                                                int64_t n, int64_t c, int threads,               \
                                                int64_t *correct);                               \
    double fn_distillation_forward_backward##S(const real *student, const fn_targets *targets,   \
                                               const fn_loss *loss, real *grad, int64_t n,       \
                                               int64_t c, int threads, int64_t *correct);        \
    double fn_regression_loss_forward_backward##S(const real *outputs,                           \
                                                  const fn_targets *targets,                     \
                                                  const fn_loss *loss, real *grad, int64_t n,    \
                                                  int64_t c, int threads);                       \
    double fn_bce_with_logits_forward_backward##S(const real *logits, const fn_targets *targets,  \
                                                  const fn_loss *loss, real *grad, int64_t n,    \
                                                  int64_t c, int threads);

/* loss.c. Checks that every label is in [0, classes), naming the first that is not. */
fn_status fn_labels_check(const void *labels, fn_label_type label_type, int64_t n,
                          int64_t classes);
/* Checks a loss and its targets for outputs (n, c) of `dtype`; *norm receives the divisor of the
 * summed loss (n, n * c, or the summed class weights of the labels). */
fn_status fn_loss_check(fn_dtype dtype, const fn_loss *loss, const fn_targets *targets, int64_t n,
                        int64_t c, double *norm);
/* Runs a checked loss on up to `threads` threads: returns its value, writes grad unless NULL and
 * the argmax hits to *correct unless NULL. */
double fn_loss_run(fn_dtype dtype, const void *outputs, int64_t n, int64_t c,
                   const fn_targets *targets, const fn_loss *loss, double norm, void *grad,
                   int threads, int64_t *correct);

FN_KERNELS(float, _f32)
FN_KERNELS(double, _f64)

#endif /* FASTNET_KERNELS_H */
