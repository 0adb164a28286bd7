/* fastnet.h — the public C API of libfastnet.
 *
 * A model is an opaque handle built from a JSON spec (the same spec the Python package writes).
 * Every function that can fail returns an fn_status; on failure fn_last_error() returns a message
 * for the calling thread. Nothing in the library prints, exits or aborts. Distinct models may be
 * used from distinct threads at the same time; one model must not be used from two threads at
 * once. Of the process-wide settings, fn_set_num_threads and fn_set_deterministic may change
 * while other threads run models (each pass reads them once; a change applies from the next
 * pass), while fn_set_blas and fn_use_linked_blas must not be called while another thread may be
 * in the library: make them at start-up.
 *
 * The reference, with a complete example program, is docs/c-api.md.
 *
 * Arrays are C-contiguous, row-major, in the model's dtype (float or double), batch first.
 */
#ifndef FASTNET_H
#define FASTNET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FN_API __declspec(dllexport)
#elif defined(__GNUC__)
#define FN_API __attribute__((visibility("default")))
#else
#define FN_API
#endif

#define FN_VERSION_MAJOR 0
#define FN_VERSION_MINOR 1
#define FN_VERSION_PATCH 0
#define FN_VERSION_STRING "0.1.0"
/* MAJOR * 10000 + MINOR * 100 + PATCH, for comparisons in #if and against fn_version_number(). */
#define FN_VERSION_NUMBER (FN_VERSION_MAJOR * 10000 + FN_VERSION_MINOR * 100 + FN_VERSION_PATCH)

typedef enum {
    FN_OK = 0,
    FN_EINVAL,   /* a bad argument: shape, dtype, label range, NaN input, bad spec */
    FN_ENOMEM,   /* an allocation failed */
    FN_EIO,      /* a file could not be read or written */
    FN_EFORMAT,  /* a file is not a valid fastnet/safetensors file */
    FN_ENUMERIC, /* a non-finite loss or gradient; the weights were left untouched */
    FN_ESTATE    /* a call out of order, e.g. backward before forward */
} fn_status;

typedef enum { FN_FLOAT32 = 0, FN_FLOAT64 = 1 } fn_dtype;

/* The element type of an integer label array. */
typedef enum {
    FN_LABEL_I8, FN_LABEL_U8, FN_LABEL_I16, FN_LABEL_U16,
    FN_LABEL_I32, FN_LABEL_U32, FN_LABEL_I64, FN_LABEL_U64
} fn_label_type;

/* The message of the calling thread's last failure ("" if none). Valid until its next failure. */
FN_API const char *fn_last_error(void);
/* How many buffers the library has allocated so far. With a BLAS installed, a training loop's
 * steady state adds none (its buffers are planned when a batch size first appears), which tests
 * check with this. The built-in GEMM keeps its buffers per thread (the packed panels, a block
 * of C that some splits compute apart, and the masks and panels of a product that skips a
 * ReLU's zeros), allocated on a thread's first GEMM that needs them (or a larger one than
 * before) and freed when the thread exits. */
FN_API uint64_t fn_allocations(void);
/* Frees the built-in GEMM's buffers of the calling thread and of the OpenMP threads it
 * runs kernels on (they are otherwise kept until those threads exit). Safe at any time when the
 * calling thread is not itself inside a library call; other threads' buffers are untouched, so a
 * model training on another thread is not disturbed. The next GEMM allocates them again. */
FN_API void fn_release_thread_buffers(void);
/* "MAJOR.MINOR.PATCH" of the library actually linked (FN_VERSION_STRING is the header's). */
FN_API const char *fn_version(void);
/* FN_VERSION_NUMBER of the library actually linked: a program built against one header and run
 * with another library can tell (structs may change between minor versions before 1.0). */
FN_API int fn_version_number(void);

/* ------------------------------------------------------------------ threads */

/* Threads used by every kernel (OpenMP). n < 1 selects the number of processors. Without OpenMP
 * the library runs on one thread and fn_get_num_threads() returns 1. */
FN_API void fn_set_num_threads(int n);
FN_API int fn_get_num_threads(void);
/* 1 if the library was built with OpenMP. */
FN_API int fn_has_openmp(void);
/* Deterministic mode (off by default), process-wide. On, every reduction (loss sums, the
 * convolution's weight and bias gradients over images, GEMMs' division into blocks) is split into
 * parts that depend on the problem size only, at most 8, summed in a fixed order: training gives
 * the same weights, bit for bit, whatever fn_get_num_threads() is (for the same BLAS). Reductions
 * then use at most 8 threads. Off, each thread keeps its own partial sums: the same thread count
 * still gives the same bits from run to run, another one may not. */
FN_API void fn_set_deterministic(int on);
FN_API int fn_get_deterministic(void);

/* ------------------------------------------------------------------ BLAS
 *
 * GEMM goes through a table of Fortran-ABI BLAS functions (column-major, arguments by pointer:
 * the sgemm_/dgemm_ every BLAS exports). Without a table, or with NULL entries, fastnet's built-in
 * kernel runs. set_threads_local, when given, sets the BLAS's thread count for the calling thread
 * only and returns the previous one (OpenBLAS's openblas_set_num_threads_local): fastnet calls BLAS
 * single-threaded from inside its own OpenMP partitions. */
typedef void (*fn_sgemm_fn)(const char *transa, const char *transb, const int *m, const int *n,
                            const int *k, const float *alpha, const float *a, const int *lda,
                            const float *b, const int *ldb, const float *beta, float *c,
                            const int *ldc);
typedef void (*fn_dgemm_fn)(const char *transa, const char *transb, const int *m, const int *n,
                            const int *k, const double *alpha, const double *a, const int *lda,
                            const double *b, const int *ldb, const double *beta, double *c,
                            const int *ldc);
typedef int (*fn_blas_threads_fn)(int num_threads);
typedef struct {
    fn_sgemm_fn sgemm;
    fn_dgemm_fn dgemm;
    fn_blas_threads_fn set_threads_local;
} fn_blas;

/* Installs a BLAS table for the whole process (copied); NULL restores the built-in kernel. */
FN_API void fn_set_blas(const fn_blas *table);
/* 1 if a BLAS table is installed for `dtype`. */
FN_API int fn_blas_installed(fn_dtype dtype);
/* A library built with a BLAS linked in (make FN_BLAS=openblas, which defines
 * FN_WITH_LINKED_BLAS) starts with that BLAS's table installed: its sgemm_ and dgemm_, and
 * openblas_set_num_threads_local when the OpenBLAS has it (0.3.27 and later). Nothing needs to be
 * called for that. fn_use_linked_blas() installs that table again (after fn_set_blas replaced it)
 * and returns 1; in a library built without a linked BLAS it changes nothing and returns 0. */
FN_API int fn_use_linked_blas(void);

/* Row-major GEMM: C = alpha * op(A) @ op(B) + beta * C, op(X) = X or X^T when trans_x is nonzero.
 * A is (M, K) after op, B is (K, N) after op, C is (M, N); lda/ldb/ldc are row strides.
 * Runs on up to `threads` threads (partitioned over columns of C). */
FN_API fn_status fn_gemm(fn_dtype dtype, int trans_a, int trans_b, int64_t m, int64_t n,
                         int64_t k, double alpha, const void *a, int64_t lda, const void *b,
                         int64_t ldb, double beta, void *c, int64_t ldc, int threads);
/* The same product by the built-in kernel only (for tests and benchmarks). */
FN_API fn_status fn_gemm_builtin(fn_dtype dtype, int trans_a, int trans_b, int64_t m, int64_t n,
                                 int64_t k, double alpha, const void *a, int64_t lda,
                                 const void *b, int64_t ldb, double beta, void *c, int64_t ldc,
                                 int threads);
/* The same product through the installed BLAS only, even for sizes where fn_gemm would run the
 * built-in kernel (for tests and benchmarks). FN_ESTATE when no BLAS is installed for the dtype,
 * FN_EINVAL when a size or stride does not fit the BLAS's int. */
FN_API fn_status fn_gemm_blas(fn_dtype dtype, int trans_a, int trans_b, int64_t m, int64_t n,
                              int64_t k, double alpha, const void *a, int64_t lda, const void *b,
                              int64_t ldb, double beta, void *c, int64_t ldc, int threads);

/* ------------------------------------------------------------------ optimizers and losses */

typedef enum {
    FN_OPT_SGD = 0,
    FN_OPT_ADAM = 1,
    FN_OPT_ADAMW = 2,
    FN_OPT_ADAGRAD = 3,
    FN_OPT_RMSPROP = 4
} fn_optimizer_kind;

/* Hyper-parameters of the update, with PyTorch's meaning and order of operations. One update
 * runs in one pass over the parameter arena. t counts updates from 1; lr and wd are the
 * parameter's group's (fn_model_set_param_groups), lr after the schedule (fn_model_set_schedule).
 * For each parameter p with gradient g:
 *
 *   1. clipping, when set (both may be): g *= c with c = min(1, clip_grad_norm / (N + 1e-6)),
 *      N the L2 norm of all gradients together (PyTorch's clip_grad_norm_), summed in double
 *      (float gradients: their squares in float in runs of 16, within 1.1e-6 of the exact norm);
 *      then g = clamp(g, -clip_grad_value, clip_grad_value). The gradient arena itself is left
 *      as it was: the clipped gradient is the one the update uses.
 *   2. penalties, from p before the update: coupled decay g += wd*p (every kind but AdamW, when
 *      decoupled_weight_decay is 0); L1 g += l1*sign(p). Decoupled decay instead multiplies
 *      p *= 1 - lr*wd first (AdamW always; any other kind with decoupled_weight_decay).
 *   3. the update:
 *      SGD:     b = momentum*b + (1-dampening)*g (b = g at the first update with momentum);
 *               g = nesterov ? g + momentum*b : b; p -= lr*g
 *      Adagrad: s += g^2 (s starts at initial_accumulator_value);
 *               p -= lr / (1 + (t-1)*lr_decay) * g / (sqrt(s) + eps)
 *      RMSProp: v = alpha*v + (1-alpha)*g^2; centered: a = alpha*a + (1-alpha)*g,
 *               d = sqrt(v - a^2) + eps, else d = sqrt(v) + eps;
 *               momentum > 0: b = momentum*b + g/d, p -= lr*b; else p -= lr*g/d
 *      Adam:    m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; amsgrad: vmax = max(vmax, v), and
 *               vmax takes v's place in  p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 *      AdamW:   Adam with decoupled decay.
 *   4. max-norm, for a group with max_norm > 0: every row (index along dim 0) of a weight of two
 *      or more dimensions whose L2 norm exceeds max_norm is rescaled to norm max_norm. Biases and
 *      1-D tensors are exempt.
 *
 * Without parameter groups, lr and weight_decay below apply to every parameter (no L1, no
 * max-norm); with groups, each group's replace them. Every field after weight_decay is off at 0,
 * so a struct written with designated initialisers names only the fields it uses. */
typedef struct {
    fn_optimizer_kind kind;
    double lr;                  /* >= 0; unused while parameter groups are set */
    double momentum, dampening; /* SGD (momentum >= 0, dampening in [0, 1]); momentum: RMSProp */
    int nesterov;               /* SGD */
    double beta1, beta2, eps;   /* Adam, AdamW: betas in [0, 1); eps >= 0 for Adagrad and
                                 * RMSProp too (PyTorch's: 1e-8, Adagrad 1e-10) */
    double weight_decay;        /* >= 0; unused while parameter groups are set */
    int amsgrad;                /* Adam, AdamW: keep the maximum of the second moments */
    double lr_decay;            /* Adagrad: >= 0 */
    double initial_accumulator_value; /* Adagrad: >= 0, the sum's start (state creation/reset) */
    double alpha;               /* RMSProp: smoothing constant in [0, 1] (PyTorch: 0.99) */
    int centered;               /* RMSProp: divide by the estimated variance, not the 2nd moment */
    int decoupled_weight_decay; /* p *= 1 - lr*wd instead of g += wd*p (AdamW: always) */
    double clip_grad_norm;      /* > 0: clip by global norm (INFINITY: only compute the norm,
                                 * fn_model_last_grad_norm); 0: off */
    double clip_grad_value;     /* > 0: clamp every gradient to [-v, v]; 0: off */
    int check_finite;           /* nonzero: compute the gradient norm before every update (one
                                 * more read of the gradients, as clip_grad_norm does) and refuse
                                 * a non-finite one, naming the first layer whose gradient is not
                                 * finite (fn_model_nonfinite_node) */
} fn_optimizer;

/* Losses, with PyTorch's definitions and mean reduction. Outputs are (n, c): logits for the
 * softmax losses and BCE, predictions for the regression losses. Every loss is computed in one
 * fused, numerically stable pass that also writes d loss / d outputs.
 *
 *   FN_LOSS_CROSS_ENTROPY   softmax cross-entropy over the last axis. With labels y (n):
 *                           l_i = sum_k w_k q_ik (-log softmax(z_i)_k), where
 *                           q_ik = (1 - s) [k == y_i] + s / c  (s = label_smoothing) and w the
 *                           class weights (all 1 without), and loss = sum_i l_i / sum_i w_{y_i}
 *                           (the weighted mean; = mean over rows without weights).
 *                           With soft targets t (n, c) in `values` (probabilities per row):
 *                           the same l_i with q_ik = (1 - s) t_ik + s / c, and loss = sum_i l_i / n
 *                           (PyTorch divides by n here even with weights).
 *   FN_LOSS_MSE             mean over all n*c elements of (x - t)^2.
 *   FN_LOSS_L1              mean of |x - t|; its gradient at x == t is 0.
 *   FN_LOSS_HUBER           mean of 0.5 d^2 if |d| < delta, else delta (|d| - 0.5 delta),
 *                           d = x - t.
 *   FN_LOSS_BCE_WITH_LOGITS mean of -[p_k t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))], with p_k
 *                           the pos_weight of column k (1 without), computed as
 *                           p_k t softplus(-x) + (1 - t) softplus(x), softplus(x) =
 *                           max(x, 0) + log1p(exp(-|x|)): finite for any logit.
 *   FN_LOSS_DISTILLATION    knowledge distillation (Hinton et al., 2015), student logits z, teacher
 *                           logits v (n, c) and labels y (n), temperature T, weight a:
 *                           loss = a T^2 (1/n) sum_i KL(softmax(v_i / T) || softmax(z_i / T))
 *                                + (1 - a) (1/n) sum_i -log softmax(z_i)_{y_i}.
 *                           The softened term's gradient scales as 1/T; the T^2 keeps its share of
 *                           the gradient independent of T. The teacher gets no gradient.
 *
 * The fields a kind does not use must be 0 (NULL for pointers), so that a parameter meant for
 * another loss is refused rather than silently ignored; `fn_loss l = {FN_LOSS_CROSS_ENTROPY};` is
 * the plain cross-entropy. Arrays are read during the call only (not kept). */
typedef enum {
    FN_LOSS_CROSS_ENTROPY = 0,
    FN_LOSS_MSE,
    FN_LOSS_L1,
    FN_LOSS_HUBER,
    FN_LOSS_BCE_WITH_LOGITS,
    FN_LOSS_DISTILLATION
} fn_loss_kind;
typedef struct {
    fn_loss_kind kind;
    double label_smoothing;   /* CROSS_ENTROPY: in [0, 1] */
    const double *weight;     /* CROSS_ENTROPY: c class weights (finite, >= 0, sum > 0) or NULL */
    int64_t weight_count;     /* entries in weight (c), 0 with NULL */
    double temperature;       /* DISTILLATION: T > 0 */
    double alpha;             /* DISTILLATION: in [0, 1], the share of the softened term */
    double delta;             /* HUBER: > 0 (PyTorch's default is 1) */
    const double *pos_weight; /* BCE_WITH_LOGITS: c weights of positives (finite, >= 0) or NULL */
    int64_t pos_weight_count; /* entries in pos_weight (c), 0 with NULL */
} fn_loss;

/* What the outputs are compared with; the pointers a loss does not take must be NULL.
 *   labels   (n) class indices in [0, c) of type label_type: CROSS_ENTROPY (or values),
 *            DISTILLATION;
 *   values   (n, c) in the outputs' dtype: soft targets of CROSS_ENTROPY (rows of
 *            probabilities), targets of MSE, L1, HUBER and BCE_WITH_LOGITS; must be finite;
 *   teacher  (n, c) teacher logits in the outputs' dtype: DISTILLATION; must be finite. */
typedef struct {
    const void *labels;
    fn_label_type label_type;
    const void *values;
    const void *teacher;
} fn_targets;

/* A loss on its own: outputs (n, c) of `dtype` and targets -> *value (the loss) and, if grad is
 * not NULL, grad (n, c) = d loss / d outputs. correct, if not NULL, receives the number of rows
 * whose first maximal output is at the label (soft targets: at the target's first maximum; 0 for
 * the losses without classes). Checks the loss and the targets first (FN_EINVAL); a non-finite
 * loss returns FN_ENUMERIC. */
FN_API fn_status fn_loss_forward_backward(fn_dtype dtype, const void *outputs, int64_t n,
                                          int64_t c, const fn_targets *targets,
                                          const fn_loss *loss, double *value, void *grad,
                                          int64_t *correct);

/* The plain softmax cross-entropy, as fn_loss_forward_backward with {FN_LOSS_CROSS_ENTROPY}:
 * logits (n, c), labels (n) -> *loss = mean_i -log softmax(logits_i)[labels_i];
 * grad (n, c), if not NULL, receives d loss / d logits = (softmax - onehot) / n;
 * correct, if not NULL, the number of rows whose argmax is the label. */
FN_API fn_status fn_softmax_xent(fn_dtype dtype, const void *logits, int64_t n, int64_t c,
                                 const void *labels, fn_label_type label_type, double *loss,
                                 void *grad, int64_t *correct);

/* ------------------------------------------------------------------ models */

typedef struct fn_model fn_model;

/* Builds a model from its JSON spec (see docs in the README) and initialises its parameters from
 * the spec's seed. */
FN_API fn_status fn_model_create(const char *spec_json, fn_model **out);
/* Frees the model and everything it owns; NULL is accepted. */
FN_API void fn_model_free(fn_model *m);

FN_API fn_dtype fn_model_dtype(const fn_model *m);
/* The spec the model was built from (NUL-terminated JSON, owned by the model). */
FN_API const char *fn_model_spec(const fn_model *m);
/* Elements per sample of the input and the output. */
FN_API int64_t fn_model_input_size(const fn_model *m);
FN_API int64_t fn_model_output_size(const fn_model *m);

/* Parameters live in one flat arena, gradients in another at the same offsets; buffers (state
 * that is saved but not trained, like batch norm's running statistics) in a third. */
FN_API int64_t fn_model_param_total(const fn_model *m);  /* elements in the parameter arena */
FN_API int64_t fn_model_buffer_total(const fn_model *m); /* elements in the buffer arena */
FN_API void *fn_model_params(fn_model *m);
FN_API void *fn_model_grads(fn_model *m);
FN_API void *fn_model_buffers(fn_model *m);

/* The model's named tensors, parameters and buffers, in state-dict order. */
typedef struct {
    const char *name;  /* PyTorch's state-dict name, e.g. "0.weight", "1.running_mean" */
    int ndim;
    int64_t shape[4];  /* unused dimensions are 1 */
    int64_t offset;    /* elements into the parameter arena, or the buffer arena */
    int64_t count;
    int is_buffer;     /* in the buffer arena (no gradient, not trained) */
    int is_integer;    /* a count (num_batches_tracked): saved as int64 */
    int is_bias;       /* declared as a bias (Linear, Conv2d, batch norm): exempt from max-norm */
} fn_tensor_info;
FN_API int fn_model_tensor_count(const fn_model *m);
FN_API fn_status fn_model_tensor_info(const fn_model *m, int i, fn_tensor_info *info);
/* The info of the tensor called `name`; FN_EINVAL if the model has none of that name. */
FN_API fn_status fn_model_find_tensor(const fn_model *m, const char *name, fn_tensor_info *info);
/* Copies the tensor called `name` (a parameter or a buffer, in the model's dtype, row-major in
 * its shape) to dst, which holds `count` elements: count must be the tensor's element count.
 * Counts kept in reals (num_batches_tracked) are copied as reals of the model's dtype. */
FN_API fn_status fn_model_get_tensor(const fn_model *m, const char *name, void *dst,
                                     int64_t count);
/* Overwrites the tensor called `name` with `count` elements from src (the model's dtype).
 * Refuses, changing nothing, a wrong count, NaN or Inf, and for a count tensor anything but a
 * whole number >= 0. The optimizer's state for the tensor is kept. */
FN_API fn_status fn_model_set_tensor(fn_model *m, const char *name, const void *src,
                                     int64_t count);

/* The graph's nodes in execution order: name, op type and per-sample output shape. */
typedef struct {
    const char *name;
    const char *op;
    int ndim;
    int64_t shape[4]; /* unused dimensions are 1 */
} fn_node_info;
FN_API int fn_model_node_count(const fn_model *m);
FN_API fn_status fn_model_node_info(const fn_model *m, int i, fn_node_info *info);
/* The output of node i (execution order, as fn_model_node_info) from the last forward that
 * completed: fn_model_forward (keep or not) or the forward half of a train_step (also one whose
 * loss was not finite; the update that followed a successful one does not change it). *data
 * points into the model's activation buffer, (*rows, node's per-sample size) elements of the
 * model's dtype, valid until the next call that runs the model or changes its batch size; *rows
 * is that forward's batch. FN_ESTATE, with *data NULL and *rows 0, when no forward has completed
 * on the current buffers, when fn_model_predict has run since (a prediction runs in chunks and
 * keeps no activations), or when the node's output is not kept (below). */
FN_API fn_status fn_model_node_output(const fn_model *m, int i, const void **data, int64_t *rows);
/* By default the outputs that backward never reads (batch norm's before a ReLU, a residual sum's,
 * dropout's) share memory with later outputs, and ReLU, add, dropout and flatten write over
 * their input where nothing else needs it: a training step then needs memory only for what
 * backward reads. Such outputs are gone after the forward, and fn_model_node_output refuses
 * them. In an inference of fewer samples than threads (in a build with OpenMP, outside
 * deterministic mode), a convolution (with its ReLU) whose output only a max pool reads, with
 * unpadded windows as tall as their stride, where both are large enough to be cut into a band
 * per thread, hands that output to the pool a few rows at a time and never stores it;
 * fn_model_node_output refuses it too. keep != 0 gives every node's output memory of its own
 * from the next forward on, and stores them all (more memory; the same results, but for the
 * last bits of such an inference, whose ReLUs then run on their own); 0 goes back to sharing. */
FN_API void fn_model_set_keep_outputs(fn_model *m, int keep);
FN_API int fn_model_keep_outputs(const fn_model *m);

/* The memory a model holds for running it, in bytes, as the forwards and backwards so far have
 * planned it (all 0 before the first): every node's output, the output gradients, the copy of
 * the input (and the input gradient once backward was asked for it), what nodes keep from
 * forward to backward (and, for a convolution that runs by Winograd, its transformed weights
 * with the copy of the weights they came from, kept across calls), and the scratch all nodes
 * share. Parameters, their gradients, the
 * buffers and the optimizer's state are not included (fn_model_param_total and friends). */
typedef struct {
    size_t activations, gradients, input, saved, workspace;
} fn_memory_use;
FN_API fn_status fn_model_memory_use(const fn_model *m, fn_memory_use *out);

/* Train mode (the default) uses batch statistics in batch norm and applies dropout; eval mode
 * uses the running statistics and no dropout. Forward, backward and train_step run in the
 * current mode. */
FN_API void fn_model_set_training(fn_model *m, int training);
FN_API int fn_model_training(const fn_model *m);
/* Train-mode forwards so far: with the seed it determines dropout's masks (checkpointed). */
FN_API uint64_t fn_model_rng_step(const fn_model *m);
FN_API void fn_model_set_rng_step(fn_model *m, uint64_t step);

/* Re-initialises every parameter from `seed` (PyTorch's default initialisation). */
FN_API fn_status fn_model_init_params(fn_model *m, uint64_t seed);

/* Inference or the forward half of a manual step, in the current mode: x (n, input_size) ->
 * y (n, output_size), a caller buffer (may be NULL when only the activations for backward are
 * wanted). keep != 0 keeps what backward needs. Rejects NaN/Inf in x. */
FN_API fn_status fn_model_forward(fn_model *m, const void *x, int64_t n, void *y, int keep);
/* Inference: x (n, input_size) -> y (n, output_size), a caller buffer, in eval mode whatever the
 * model's mode (which is left as it was), keeping no activations: a backward must follow a new
 * keeping forward. Draws no dropout masks (fn_model_rng_step is unchanged). Large batches run in
 * chunks of a bounded size. Rejects NaN/Inf in x, writing nothing to y. */
FN_API fn_status fn_model_predict(fn_model *m, const void *x, int64_t n, void *y);
/* Backward from d loss / d output (n, output_size) after a keeping forward of the same n.
 * Accumulates parameter gradients into the gradient arena; grad_x (n, input_size) receives
 * d loss / d x unless NULL. */
FN_API fn_status fn_model_backward(fn_model *m, const void *grad_y, int64_t n, void *grad_x);
FN_API void fn_model_zero_grad(fn_model *m);

/* Selects the optimizer (its state is reset when the kind changes) or updates its
 * hyper-parameters (state kept; a state slot that the new hyper-parameters add, such as
 * amsgrad's maximum, starts at 0, and one they no longer use is dropped). */
FN_API fn_status fn_model_set_optimizer(fn_model *m, const fn_optimizer *opt);
/* Zeroes the optimizer state and its step counters, as for a newly created optimizer (Adagrad's
 * sums start again at initial_accumulator_value). */
FN_API void fn_model_reset_optimizer(fn_model *m);
/* One optimizer update from the current gradients, at the learning rates of the schedule. With
 * clip_grad_norm or check_finite set and a gradient norm that is NaN or Inf, returns FN_ENUMERIC
 * and changes nothing (neither the weights, nor the state, nor the step counter); the message
 * names the first layer, in execution order, with a non-finite parameter gradient, and the
 * tensor. */
FN_API fn_status fn_model_step(fn_model *m);
/* The node (execution order, as fn_model_node_info) that the last fn_model_train_step(_targets)
 * or fn_model_step named when it returned FN_ENUMERIC: the first whose output held a non-finite
 * value (a non-finite loss), or the first with a non-finite parameter gradient (a non-finite
 * gradient norm). -1 after any other outcome, including a loss or norm that overflowed with every
 * value finite. */
FN_API int fn_model_nonfinite_node(const fn_model *m);

/* Parameter groups, as PyTorch's param_groups: every parameter tensor is in one group, and is
 * updated with that group's lr, weight_decay, l1 and max_norm (fn_optimizer describes each);
 * the optimizer's other hyper-parameters are shared by all groups. */
typedef struct {
    double lr;           /* base learning rate, >= 0 */
    double weight_decay; /* L2, >= 0: coupled or decoupled as the optimizer says */
    double l1;           /* L1, >= 0: g += l1*sign(p) */
    double max_norm;     /* > 0: the rows' L2 norm bound after each update; 0: none */
} fn_param_group;
/* Sets n_groups groups. group_of_tensor has fn_model_tensor_count entries, indexed as
 * fn_model_tensor_info: the group in [0, n_groups) of each parameter tensor (entries of buffers
 * are ignored); it may be NULL when n_groups is 1 (every tensor in group 0). n_groups = 0 removes
 * the groups: the optimizer's lr and weight_decay apply again. Checked whole first: on failure
 * the previous groups stay. The groups belong to the model (they survive fn_model_set_optimizer
 * and fn_model_reset_optimizer) and are copied; setting them again (say a new lr each update)
 * allocates nothing unless there are more groups than ever before.
 *
 * The schedule runs per group: group g's lr at update t is fn_schedule_lr(schedule, lr of g, t).
 * A constant schedule leaves every group's lr as it is; warm-up, STEP, EXPONENTIAL and
 * INVERSE_TIME multiply every group's lr by the same factor; COSINE takes each group from its lr
 * down to the schedule's min_lr. */
FN_API fn_status fn_model_set_param_groups(fn_model *m, const fn_param_group *groups,
                                           int n_groups, const int *group_of_tensor);
/* The number of groups set (0 when none are). */
FN_API int fn_model_param_group_count(const fn_model *m);
/* Group `group` as set. */
FN_API fn_status fn_model_get_param_group(const fn_model *m, int group, fn_param_group *out);
/* The learning rate group `group` will use at the next update (after the schedule); without
 * groups, group 0 is the optimizer's. 0 if there is no optimizer or no such group. */
FN_API double fn_model_group_lr(const fn_model *m, int group);
/* The L2 norm of all the gradients together, before clipping, that the last update computed (in
 * double): it does so when clip_grad_norm is set; -1 if the last update did not, or there was
 * none since the optimizer was set or reset. NaN or Inf after an update refused for it. */
FN_API double fn_model_last_grad_norm(const fn_model *m);

/* Steps taken by the optimizer; its state arena (state_count slots of param_total elements, in
 * the parameters' layout). The slots, in order, as PyTorch names its state:
 *   SGD      momentum_buffer (used when momentum > 0)
 *   Adagrad  sum
 *   RMSProp  square_avg, then momentum_buffer when momentum > 0 or centered (used only with
 *            momentum), then grad_avg when centered
 *   Adam, AdamW  exp_avg, exp_avg_sq, then max_exp_avg_sq with amsgrad */
FN_API int64_t fn_model_optimizer_steps(const fn_model *m);
FN_API void fn_model_set_optimizer_steps(fn_model *m, int64_t steps);
/* Whether SGD's momentum buffer holds a value yet (it starts as the gradient at the first update
 * with momentum, which may come after updates without). Saved and restored with the state. */
FN_API int fn_model_momentum_started(const fn_model *m);
FN_API void fn_model_set_momentum_started(fn_model *m, int started);
FN_API int fn_model_optimizer_state_count(const fn_model *m);
FN_API void *fn_model_optimizer_state(fn_model *m, int slot);

/* Learning-rate schedules. Update t (counted from 0 by the optimizer's step counter,
 * fn_model_optimizer_steps, so fn_model_reset_optimizer and fn_model_set_optimizer_steps move it
 * too) uses lr_t = base_lr * factor, with base_lr the optimizer's lr, or with parameter groups
 * each group's (see fn_model_set_param_groups). With W = warmup_steps
 * updates of linear warm-up, and s = t - W the updates since the warm-up ended:
 *
 *   t < W (any kind)          factor = (t + 1) / W          (base_lr / W rising to base_lr)
 *   FN_SCHEDULE_CONSTANT      factor = 1
 *   FN_SCHEDULE_STEP          factor = gamma ^ floor(s / step_size)
 *   FN_SCHEDULE_EXPONENTIAL   factor = gamma ^ s
 *   FN_SCHEDULE_INVERSE_TIME  factor = 1 / (1 + decay * s)
 *   FN_SCHEDULE_COSINE        lr_t = min_lr + (base_lr - min_lr) * (1 + cos(pi * c / T)) / 2
 *                             with T = total_steps and c = min(s, T): from base_lr down to
 *                             min_lr over total_steps updates, then min_lr
 *
 * Fields: step_size >= 1 (STEP); 0 < gamma <= 1 (STEP, EXPONENTIAL); decay >= 0 (INVERSE_TIME);
 * total_steps >= 1 and 0 <= min_lr (COSINE); warmup_steps >= 0 (every kind). A field the kind
 * does not use must be 0, so that a schedule of the wrong kind is refused rather than silently
 * different. The schedule belongs to the model (not to its file) and survives
 * fn_model_set_optimizer; a new model's is constant without warm-up, which leaves lr as it is. */
typedef enum {
    FN_SCHEDULE_CONSTANT = 0,
    FN_SCHEDULE_STEP,
    FN_SCHEDULE_EXPONENTIAL,
    FN_SCHEDULE_INVERSE_TIME,
    FN_SCHEDULE_COSINE
} fn_schedule_kind;
typedef struct {
    fn_schedule_kind kind;
    int64_t step_size;   /* STEP: updates between two multiplications by gamma */
    double gamma;        /* STEP, EXPONENTIAL: the factor per step_size updates, or per update */
    double decay;        /* INVERSE_TIME */
    int64_t total_steps; /* COSINE: updates from base_lr down to min_lr */
    double min_lr;       /* COSINE: the floor */
    int64_t warmup_steps; /* updates of linear warm-up before the schedule starts; 0 for none */
} fn_schedule;

/* Checks and sets the model's schedule; on failure the previous one stays. */
FN_API fn_status fn_model_set_schedule(fn_model *m, const fn_schedule *schedule);
/* The model's schedule. */
FN_API fn_status fn_model_get_schedule(const fn_model *m, fn_schedule *schedule);
/* The learning rate the next update will use: fn_model_group_lr(m, 0), the only rate without
 * parameter groups; 0 if no optimizer is set. */
FN_API double fn_model_current_lr(const fn_model *m);
/* The learning rate of a schedule at update `step` from base_lr (what fn_model_current_lr uses),
 * checking the schedule, base_lr >= 0 and step >= 0 first. */
FN_API fn_status fn_schedule_lr(const fn_schedule *schedule, double base_lr, int64_t step,
                                double *lr);

/* One whole training step in one call: forward, loss, backward, optimizer update.
 * x (n, input_size); targets as for fn_loss_forward_backward with c = output_size. The loss and
 * the targets are checked before anything changes. *loss_out receives the loss. A non-finite
 * loss returns FN_ENUMERIC before anything is updated, naming the first layer (execution order)
 * whose output holds a non-finite value (fn_model_nonfinite_node). A step that fails after its
 * forward (a non-finite loss or gradient norm) also puts the buffers (batch norm's running
 * statistics) back as they were; it still counts as a train-mode forward (fn_model_rng_step),
 * and its node outputs stay readable (fn_model_node_output). */
FN_API fn_status fn_model_train_step_targets(fn_model *m, const void *x, int64_t n,
                                             const fn_targets *targets, const fn_loss *loss,
                                             double *loss_out);
/* fn_model_train_step_targets with class labels only: labels (n) in [0, output_size). */
FN_API fn_status fn_model_train_step(fn_model *m, const void *x, const void *labels,
                                     fn_label_type label_type, int64_t n, const fn_loss *loss,
                                     double *loss_out);
/* Rows of the last train_step whose argmax was the label (before the update); see `correct` of
 * fn_loss_forward_backward. */
FN_API int64_t fn_model_train_correct(const fn_model *m);

/* ------------------------------------------------------------------ files */

/* A model file is a safetensors file: the parameters under their PyTorch names, the spec and the
 * library version in __metadata__ ("fastnet.spec", "fastnet.version"). Writes are atomic: a temp
 * file "<path>.tmp.<pid>" in the same directory, fsynced, then renamed over `path`. A save first
 * removes the temp files of `path` that writers killed while saving left behind: those whose pid
 * has no process on this machine (kill(pid, 0) fails with ESRCH). */
FN_API fn_status fn_model_save(const fn_model *m, const char *path);
FN_API fn_status fn_model_load(const char *path, fn_model **out);

#ifdef __cplusplus
}
#endif
#endif /* FASTNET_H */
