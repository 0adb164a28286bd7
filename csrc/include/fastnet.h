/* fastnet.h — the public C API of libfastnet.
 *
 * A model is an opaque handle built from a JSON spec (the same spec the Python package writes).
 * Every function that can fail returns an fn_status; on failure fn_last_error() returns a message
 * for the calling thread. Nothing in the library prints, exits or aborts. Distinct models may be
 * used from distinct threads at the same time; one model must not be used from two threads at
 * once. The process-wide settings (fn_set_num_threads, fn_set_blas) are meant to be made at
 * start-up, before other threads use the library.
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
/* How many buffers the library has allocated so far: a training loop's steady state adds none
 * (its buffers are planned when a batch size first appears), which tests check with this. */
FN_API uint64_t fn_allocations(void);
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

/* ------------------------------------------------------------------ optimizers and losses */

typedef enum { FN_OPT_SGD = 0, FN_OPT_ADAM = 1, FN_OPT_ADAMW = 2 } fn_optimizer_kind;

/* Hyper-parameters of the update, with PyTorch's meaning:
 *   SGD:   g += wd*p; b = momentum*b + (1-dampening)*g (b = g at the first step);
 *          g = nesterov ? g + momentum*b : b; p -= lr*g
 *   Adam:  g += wd*p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
 *          p -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
 *   AdamW: p *= 1 - lr*wd, then Adam without the g += wd*p term. */
typedef struct {
    fn_optimizer_kind kind;
    double lr;
    double momentum, dampening; /* SGD */
    int nesterov;               /* SGD */
    double beta1, beta2, eps;   /* Adam, AdamW */
    double weight_decay;
} fn_optimizer;

typedef enum { FN_LOSS_CROSS_ENTROPY = 0 } fn_loss_kind;
typedef struct {
    fn_loss_kind kind; /* softmax cross-entropy over the last axis, mean over the batch */
} fn_loss;

/* Fused, numerically stable softmax cross-entropy on its own:
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
 * hyper-parameters (state kept). */
FN_API fn_status fn_model_set_optimizer(fn_model *m, const fn_optimizer *opt);
/* Zeroes the optimizer state and its step counters, as for a newly created optimizer. */
FN_API void fn_model_reset_optimizer(fn_model *m);
/* One optimizer update from the current gradients, at the learning rate of the schedule. */
FN_API fn_status fn_model_step(fn_model *m);

/* Steps taken by the optimizer; its state arena (state_count slots of param_total elements:
 * SGD momentum buffer; Adam/AdamW first and second moments). */
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
 * too) uses lr_t = base_lr * factor, with base_lr the optimizer's lr. With W = warmup_steps
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
/* The learning rate the next update will use; 0 if no optimizer is set. */
FN_API double fn_model_current_lr(const fn_model *m);
/* The learning rate of a schedule at update `step` from base_lr (what fn_model_current_lr uses),
 * checking the schedule, base_lr >= 0 and step >= 0 first. */
FN_API fn_status fn_schedule_lr(const fn_schedule *schedule, double base_lr, int64_t step,
                                double *lr);

/* One whole training step in one call: forward, loss, backward, optimizer update.
 * x (n, input_size), labels (n) in [0, output_size). *loss receives the mean loss. A non-finite
 * loss returns FN_ENUMERIC before anything is updated. */
FN_API fn_status fn_model_train_step(fn_model *m, const void *x, const void *labels,
                                     fn_label_type label_type, int64_t n, const fn_loss *loss,
                                     double *loss_out);
/* Rows of the last train_step whose argmax was the label (before the update). */
FN_API int64_t fn_model_train_correct(const fn_model *m);

/* ------------------------------------------------------------------ files */

/* A model file is a safetensors file: the parameters under their PyTorch names, the spec and the
 * library version in __metadata__ ("fastnet.spec", "fastnet.version"). Writes are atomic: a temp
 * file in the same directory, fsynced, then renamed over `path`. */
FN_API fn_status fn_model_save(const fn_model *m, const char *path);
FN_API fn_status fn_model_load(const char *path, fn_model **out);

#ifdef __cplusplus
}
#endif
#endif /* FASTNET_H */
