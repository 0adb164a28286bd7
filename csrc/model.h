/* model.h — the model runtime's private structures: nodes, ops, parameters, planned buffers.
 *
 * A model is a list of nodes in topological order. Each node applies one op to the outputs of
 * earlier nodes (or the model input) and owns one activation buffer and one gradient buffer of
 * (batch, out_size) elements, planned when a batch size first appears. Parameters, gradients and
 * optimizer state are slices of flat arenas, so the update, a checkpoint or an allreduce touches
 * one contiguous buffer.
 */
#ifndef FASTNET_MODEL_H
#define FASTNET_MODEL_H

#include "internal.h"
#include "json.h"

#define FN_MAX_INPUTS 8  /* a concatenation of more branches is split into several nodes */
#define FN_MAX_PARAMS 5  /* batch norm: weight, bias, running_mean, running_var, num_batches_tracked */
#define FN_MAX_DIMS 4    /* per-sample dimensions (C, H, W) plus one spare */
#define FN_MODEL_INPUT (-1) /* a node input that is the model's input */

typedef struct {
    int ndim;
    int64_t dim[FN_MAX_DIMS];
} fn_shape;

int64_t fn_shape_size(const fn_shape *s);
/* Writes "(64)" or "(3, 32, 32)" into buf. */
const char *fn_shape_str(const fn_shape *s, char *buf, size_t size);

typedef struct fn_node fn_node;
typedef struct fn_model_ctx fn_model_ctx;

/* What the kernels of one node see at run time. */
struct fn_model_ctx {
    int64_t batch;
    int threads;
    bool training;               /* train mode: batch statistics, dropout active */
    bool accumulate_param_grads; /* manual backward accumulates; train_step overwrites */
    uint64_t seed;               /* the model's seed and the count of train-mode forwards: */
    uint64_t rng_step;           /*   dropout masks are a function of (seed, step, node, i) */
    void *workspace;             /* scratch shared by all nodes, 64-byte aligned, of the size */
    size_t workspace_size;       /*   the largest op->workspace asked for (per thread parts) */
};

/* What a node declares: a trainable parameter, or a buffer (state that is saved but not
 * trained, such as batch norm's running statistics). */
typedef struct {
    char name[24];       /* "weight", "bias", "running_mean", "num_batches_tracked" */
    fn_shape shape;
    bool is_bias;        /* initialised as a bias; exempt from decay where a group asks */
    bool is_buffer;      /* lives in the buffer arena: no gradient, no optimizer update */
    bool is_integer;     /* a count kept in a real, saved as int64 (num_batches_tracked) */
} fn_param_decl;

/* An op: its spec type name, how it reads its attributes and infers its shapes, and its kernels
 * for each dtype (indexed by fn_dtype). */
typedef struct fn_op {
    const char *type;
    int min_inputs, max_inputs;
    /* Reads the node's attributes from its spec object, checks the input shapes (node->in_shape),
     * sets node->out_shape and declares parameters (node->n_params, node->param_decl). */
    fn_status (*configure)(fn_node *node, const fn_json *spec);
    /* Initialises the node's parameters and buffers (PyTorch's defaults), dtype-independent. */
    void (*init)(fn_node *node, fn_dtype dtype, void *const params[], uint64_t seed);
    /* Optional. Bytes of scratch the node needs during one forward or backward call, for a batch
     * and a thread count (e.g. per-thread im2col columns); shared by all nodes. */
    size_t (*workspace)(const fn_node *node, int64_t batch, int threads, size_t elem_size);
    /* Optional. Bytes the node keeps from a forward to its backward (e.g. batch norm's mean and
     * inverse standard deviation), at node->saved; planned with the activations. */
    size_t (*saved)(const fn_node *node, int64_t batch, size_t elem_size);
    /* Kernels run by the runtime; they fail (with fn_error) only on what the spec could not
     * rule out, such as batch norm training on one value per channel. */
    fn_status (*forward[2])(fn_node *node, const fn_model_ctx *ctx);
    fn_status (*backward[2])(fn_node *node, const fn_model_ctx *ctx);
} fn_op;

struct fn_node {
    const fn_op *op;
    char *name;
    int n_inputs;
    int input[FN_MAX_INPUTS]; /* node indices, or FN_MODEL_INPUT */
    fn_shape in_shape[FN_MAX_INPUTS];
    fn_shape out_shape;
    int64_t out_size; /* elements per sample */

    int index; /* position in the model: with the step, keys the node's random numbers */

    /* Op attributes, read by configure. */
    union {
        struct { int64_t in_features, out_features; bool bias; } linear;
        struct { double negative_slope; } activation;
        struct {
            int64_t in_channels, out_channels, groups;
            int64_t kernel[2], stride[2], padding[2], dilation[2];
            bool bias;
        } conv;
        struct { int64_t kernel[2], stride[2], padding[2]; } pool;
        struct { int64_t channels; double eps, momentum; bool affine; } batch_norm;
        struct { double p; } dropout;
        struct { int64_t size; double alpha, beta, k; } lrn;
    } attr;

    int n_params;
    fn_param_decl param_decl[FN_MAX_PARAMS];
    int param_index[FN_MAX_PARAMS]; /* into fn_model.params */

    /* Pointers set when buffers are planned (fn_model_plan) and when the arenas are allocated. */
    const void *in[FN_MAX_INPUTS]; /* (batch, in_size) */
    void *out;                     /* (batch, out_size) */
    void *grad_out;                /* (batch, out_size): d loss / d out */
    void *grad_in[FN_MAX_INPUTS];  /* (batch, in_size) or NULL when not needed */
    bool grad_in_accumulate[FN_MAX_INPUTS]; /* another consumer already wrote it in backward */
    void *param[FN_MAX_PARAMS];    /* into the parameter arena, or the buffer arena */
    void *grad[FN_MAX_PARAMS];     /* into the gradient arena; NULL for a buffer */
    void *saved;                   /* op->saved bytes, kept from forward to backward */
};

typedef struct {
    char *name;    /* "<node>.<param>", PyTorch's state-dict name */
    fn_shape shape;
    int64_t offset; /* elements into the parameter (and gradient) arena, or the buffer arena */
    int64_t count;
    int node;
    bool is_buffer, is_integer;
} fn_param;

struct fn_model {
    fn_dtype dtype;
    char *spec_json; /* as given, NUL-terminated */
    uint64_t seed;
    fn_shape input_shape;
    int64_t input_size, output_size;

    int n_nodes;
    fn_node *nodes;
    int output_node;

    int n_params;
    fn_param *params;
    int64_t param_total, buffer_total;
    void *param_arena, *grad_arena, *buffer_arena;
    bool training;     /* the mode forward and train_step run in (fn_model_set_training) */
    uint64_t rng_step; /* train-mode forwards so far: the counter of dropout's masks */

    fn_optimizer optimizer;
    bool has_optimizer;
    fn_schedule schedule; /* the learning rate of each update (all zero: constant) */
    int64_t optimizer_steps;
    bool momentum_started; /* SGD's buffer holds a value (see fn_model_momentum_started) */
    int optimizer_slots;
    void *optimizer_state; /* optimizer_slots * param_total elements */

    /* Buffers planned for up to `capacity` samples; the last forward's batch and mode. */
    int64_t capacity;
    void *activations;     /* every node's out, one allocation */
    void *gradients;       /* every node's grad_out */
    void *input_copy;      /* (capacity, input_size): the validated copy of x */
    void *input_grad;      /* (capacity, input_size), allocated on first request */
    void *saved;           /* every node's op->saved bytes */
    void *workspace;       /* the largest op->workspace */
    size_t workspace_size;
    int64_t forward_batch; /* batch of the last forward that kept activations, 0 if none */
    uint64_t forward_rng_step; /* rng_step of that forward, for backward's dropout masks */
    int64_t train_correct; /* argmax hits of the last train_step */
};

/* op registry (ops.c) */
const fn_op *fn_op_find(const char *type);

/* spec.c: parses spec_json into an unconfigured model (nodes, shapes, params declared). */
fn_status fn_spec_build(const char *spec_json, fn_model *m);

/* Parameter initialisation helpers (init.c): fill `count` elements of a dtype array. */
void fn_fill_uniform(fn_dtype dtype, void *dst, int64_t count, double low, double high,
                     uint64_t seed, uint64_t stream);
void fn_fill_constant(fn_dtype dtype, void *dst, int64_t count, double value);
/* The RNG stream of a node's parameter p: a hash of its name, so that adding a node elsewhere in
 * the graph does not change this parameter's initial values. */
uint64_t fn_param_stream(const fn_node *node, int p);

/* optim.c */
int fn_optimizer_slots(fn_optimizer_kind kind);
fn_status fn_optimizer_check(const fn_optimizer *opt);
/* The learning rate of update `step` (from 0) of an already checked schedule. */
double fn_schedule_compute_lr(const fn_schedule *schedule, double base_lr, int64_t step);
void fn_optimizer_update(fn_model *m);

#endif /* FASTNET_MODEL_H */
