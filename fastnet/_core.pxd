# Declarations of csrc/include/fastnet.h for the Cython boundary (fastnet/_core.pyx).
from libc.stdint cimport int64_t, uint64_t

cdef extern from "include/fastnet.h" nogil:
    ctypedef enum fn_status:
        FN_OK, FN_EINVAL, FN_ENOMEM, FN_EIO, FN_EFORMAT, FN_ENUMERIC, FN_ESTATE
    ctypedef enum fn_dtype:
        FN_FLOAT32, FN_FLOAT64
    ctypedef enum fn_label_type:
        FN_LABEL_I8, FN_LABEL_U8, FN_LABEL_I16, FN_LABEL_U16,
        FN_LABEL_I32, FN_LABEL_U32, FN_LABEL_I64, FN_LABEL_U64

    const char *fn_last_error()
    const char *fn_version()
    uint64_t fn_allocations()
    void fn_release_thread_buffers() nogil
    void fn_set_num_threads(int n)
    int fn_get_num_threads()
    int fn_has_openmp()
    void fn_set_deterministic(int on)
    int fn_get_deterministic()

    ctypedef void (*fn_sgemm_fn)(const char *, const char *, const int *, const int *,
                                 const int *, const float *, const float *, const int *,
                                 const float *, const int *, const float *, float *, const int *)
    ctypedef void (*fn_dgemm_fn)(const char *, const char *, const int *, const int *,
                                 const int *, const double *, const double *, const int *,
                                 const double *, const int *, const double *, double *,
                                 const int *)
    ctypedef int (*fn_blas_threads_fn)(int)
    ctypedef struct fn_blas:
        fn_sgemm_fn sgemm
        fn_dgemm_fn dgemm
        fn_blas_threads_fn set_threads_local
    void fn_set_blas(const fn_blas *table)
    int fn_blas_installed(fn_dtype dtype)
    fn_status fn_gemm(fn_dtype dtype, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                      double alpha, const void *a, int64_t lda, const void *b, int64_t ldb,
                      double beta, void *c, int64_t ldc, int threads)
    fn_status fn_gemm_builtin(fn_dtype dtype, int trans_a, int trans_b, int64_t m, int64_t n,
                              int64_t k, double alpha, const void *a, int64_t lda, const void *b,
                              int64_t ldb, double beta, void *c, int64_t ldc, int threads)
    fn_status fn_gemm_blas(fn_dtype dtype, int trans_a, int trans_b, int64_t m, int64_t n,
                           int64_t k, double alpha, const void *a, int64_t lda, const void *b,
                           int64_t ldb, double beta, void *c, int64_t ldc, int threads)

    ctypedef enum fn_optimizer_kind:
        FN_OPT_SGD, FN_OPT_ADAM, FN_OPT_ADAMW, FN_OPT_ADAGRAD, FN_OPT_RMSPROP
    ctypedef struct fn_optimizer:
        fn_optimizer_kind kind
        double lr, momentum, dampening
        int nesterov
        double beta1, beta2, eps, weight_decay
        int amsgrad
        double lr_decay, initial_accumulator_value, alpha
        int centered, decoupled_weight_decay
        double clip_grad_norm, clip_grad_value
        int check_finite
    ctypedef struct fn_param_group:
        double lr, weight_decay, l1, max_norm
    ctypedef enum fn_loss_kind:
        FN_LOSS_CROSS_ENTROPY, FN_LOSS_MSE, FN_LOSS_L1, FN_LOSS_HUBER, FN_LOSS_BCE_WITH_LOGITS,
        FN_LOSS_DISTILLATION
    ctypedef struct fn_loss:
        fn_loss_kind kind
        double label_smoothing
        const double *weight
        int64_t weight_count
        double temperature, alpha, delta
        const double *pos_weight
        int64_t pos_weight_count
    ctypedef struct fn_targets:
        const void *labels
        fn_label_type label_type
        const void *values
        const void *teacher

    fn_status fn_loss_forward_backward(fn_dtype dtype, const void *outputs, int64_t n, int64_t c,
                                       const fn_targets *targets, const fn_loss *loss,
                                       double *value, void *grad, int64_t *correct)
    fn_status fn_softmax_xent(fn_dtype dtype, const void *logits, int64_t n, int64_t c,
                              const void *labels, fn_label_type label_type, double *loss,
                              void *grad, int64_t *correct)

    ctypedef struct fn_model:
        pass
    fn_status fn_model_create(const char *spec_json, fn_model **out)
    void fn_model_free(fn_model *m)
    fn_dtype fn_model_dtype(const fn_model *m)
    const char *fn_model_spec(const fn_model *m)
    int64_t fn_model_input_size(const fn_model *m)
    int64_t fn_model_output_size(const fn_model *m)
    int64_t fn_model_param_total(const fn_model *m)
    int64_t fn_model_buffer_total(const fn_model *m)
    void *fn_model_params(fn_model *m)
    void *fn_model_grads(fn_model *m)
    void *fn_model_buffers(fn_model *m)
    ctypedef struct fn_tensor_info:
        const char *name
        int ndim
        int64_t shape[4]
        int64_t offset
        int64_t count
        int is_buffer
        int is_integer
        int is_bias
    ctypedef struct fn_node_info:
        const char *name
        const char *op
        int ndim
        int64_t shape[4]
    int fn_model_node_count(const fn_model *m)
    fn_status fn_model_node_info(const fn_model *m, int i, fn_node_info *info)
    fn_status fn_model_node_output(const fn_model *m, int i, const void **data, int64_t *rows)
    void fn_model_set_keep_outputs(fn_model *m, int keep)
    int fn_model_keep_outputs(const fn_model *m)
    ctypedef struct fn_memory_use:
        size_t activations, gradients, input, saved, workspace
    fn_status fn_model_memory_use(const fn_model *m, fn_memory_use *out)
    int fn_model_tensor_count(const fn_model *m)
    fn_status fn_model_tensor_info(const fn_model *m, int i, fn_tensor_info *info)
    void fn_model_set_training(fn_model *m, int training)
    int fn_model_training(const fn_model *m)
    uint64_t fn_model_rng_step(const fn_model *m)
    void fn_model_set_rng_step(fn_model *m, uint64_t step)
    fn_status fn_model_init_params(fn_model *m, uint64_t seed)
    fn_status fn_model_forward(fn_model *m, const void *x, int64_t n, void *y, int keep)
    fn_status fn_model_predict(fn_model *m, const void *x, int64_t n, void *y)
    fn_status fn_model_backward(fn_model *m, const void *grad_y, int64_t n, void *grad_x)
    void fn_model_zero_grad(fn_model *m)
    fn_status fn_model_set_optimizer(fn_model *m, const fn_optimizer *opt)
    fn_status fn_model_step(fn_model *m)
    int fn_model_nonfinite_node(const fn_model *m)
    fn_status fn_model_set_param_groups(fn_model *m, const fn_param_group *groups, int n_groups,
                                        const int *group_of_tensor)
    int fn_model_param_group_count(const fn_model *m)
    fn_status fn_model_get_param_group(const fn_model *m, int group, fn_param_group *out)
    double fn_model_group_lr(const fn_model *m, int group)
    double fn_model_last_grad_norm(const fn_model *m)
    void fn_model_reset_optimizer(fn_model *m)
    int fn_model_momentum_started(const fn_model *m)
    void fn_model_set_momentum_started(fn_model *m, int started)
    int64_t fn_model_optimizer_steps(const fn_model *m)
    void fn_model_set_optimizer_steps(fn_model *m, int64_t steps)
    int fn_model_optimizer_state_count(const fn_model *m)
    void *fn_model_optimizer_state(fn_model *m, int slot)
    fn_status fn_model_train_step(fn_model *m, const void *x, const void *labels,
                                  fn_label_type label_type, int64_t n, const fn_loss *loss,
                                  double *loss_out)
    fn_status fn_model_train_step_targets(fn_model *m, const void *x, int64_t n,
                                          const fn_targets *targets, const fn_loss *loss,
                                          double *loss_out)
    int64_t fn_model_train_correct(const fn_model *m)
    fn_status fn_model_save(const fn_model *m, const char *path)
    fn_status fn_model_load(const char *path, fn_model **out)
