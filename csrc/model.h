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

/* A parameter's initial distribution, resolved by configure from an "init" attribute and the
 * tensor's fans (init.c), so that op->init, which sees no spec, only draws from it. */
typedef enum { FN_INIT_UNIFORM, FN_INIT_NORMAL, FN_INIT_CONSTANT } fn_init_kind;
typedef struct {
    fn_init_kind kind;
    double a, b; /* uniform: [a, b); normal: mean a, standard deviation b; constant: a */
} fn_init_dist;

/* What the kernels of one node see at run time. */
struct fn_model_ctx {
    int64_t batch;
    int threads;
    bool deterministic;          /* fn_get_deterministic, read once per pass */
    bool training;               /* train mode: batch statistics, dropout active */
    bool keep;                   /* forward: a backward follows, so save what it needs */
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
    /* What backward reads besides the gradients, parameters and saved state, for the buffer
     * planner (model.c): an output, or inputs, that backward never reads can give up their memory
     * as soon as forward is done with them. Left false, they are kept to the end of backward,
     * which is always safe. */
    bool backward_ignores_output, backward_ignores_inputs;
    /* forward may run with out == in[0]: element by element, each input element read before the
     * output element at the same place is written. The planner then lets the output take its
     * first input's memory when nothing else needs that input any more (and backward_ignores_inputs
     * must hold, since the input is gone by then). */
    bool in_place;
    /* forward can end with a ReLU (node->relu_fused) and backward then takes the ReLU's output
     * gradient, passing it where the output is positive: set where that saves the passes of a
     * ReLU that directly follows (convolution, linear, batch norm, add). */
    bool fuses_relu;
    /* Optional: backward can leave the input gradient to the node that produced the input,
     * computing only what it needs (input_grad_deferred); that node then gets each sample's input
     * gradient from input_grad_of_sample (into out, (in_size) elements), after this node's
     * backward has run, right before it reads it. */
    void (*input_grad_of_sample[2])(const fn_node *node, int64_t sample, void *out);
    /* With input_grad_of_sample: it can also pass the gradient through a ReLU fused into the
     * producer (node->input_grad_relu), knowing from its forward where the input was positive
     * (max pool: a window's maximum). */
    bool input_grad_passes_relu;
    /* Optional, with input_grad_of_sample: in a training forward, the producer may hand over each
     * sample of the input as it writes it (x: (in_size) elements, still in cache), for the
     * statistics this node would otherwise read the input again for; it then sets
     * node->input_stats_ready. */
    void (*input_stats_of_sample[2])(fn_node *node, int64_t sample, const void *x);
    /* backward can take its output gradient sample by sample from a consumer that left it, and
     * forward hand that consumer each sample (node->fused_consumer): set where the gradient and
     * the output are then read while in cache (convolution). */
    bool derives_output_grad;
    /* Optional, for an inference forward of fewer samples than threads (batch-1 latency): the
     * node computed as bands of the rows of its (n, c, h, w) output. forward_band computes band
     * `id` of `bands`, rows fn_partition(h, bands, id) of every output plane, single-threaded;
     * band_fits says whether the node can be cut into `bands` such bands in this context (enough
     * rows, the workspace they need, for elements of elem_size bytes). model.c runs consecutive
     * nodes that fit in one team, thread `id` taking band `id` of each with a barrier between
     * nodes ("Band chains" there). */
    bool (*band_fits)(const fn_node *node, const fn_model_ctx *ctx, int bands, size_t elem_size);
    void (*forward_band[2])(fn_node *node, const fn_model_ctx *ctx, int id, int bands);
    /* Optional, with forward_band: in a band chain, the node's input can be handed over a piece
     * of rows at a time by its producer, which then never stores it (out_skipped).
     * input_rows_per_output_row gives s > 0 when output row i reads input rows [s i, s i + s)
     * alone (0: not now); forward_piece computes sample `sample`'s output rows that input rows
     * [first_row, first_row + rows) make (first_row and rows multiples of s), from those rows
     * alone at x, input plane p at x + p * x_plane (elements). */
    int64_t (*input_rows_per_output_row)(const fn_node *node);
    void (*forward_piece[2])(fn_node *node, int64_t sample, const void *x, int64_t x_plane,
                             int64_t first_row, int64_t rows);
    /* Optional, with forward_band: forward_band that hands its output to `consumer` (which has
     * forward_piece) a piece of rows at a time instead of storing it. Band `id` of `bands` is
     * the input rows of the consumer's band `id` (fn_partition of its output rows). */
    void (*forward_band_into[2])(fn_node *node, fn_node *consumer, const fn_model_ctx *ctx,
                                 int id, int bands);
    /* Optional, with forward_band: run once, on one thread, before a band chain's team computes
     * the node's bands (what the bands share: a convolution's transformed weights). */
    void (*band_prepare[2])(fn_node *node, const fn_model_ctx *ctx);
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
        struct {
            int64_t in_features, out_features;
            bool bias;
            fn_init_dist weight_init, bias_init;
        } linear;
        /* kind: an fn_activation_kind (kernels.h); negative_slope: LeakyReLU; alpha: ELU;
         * beta, threshold: Softplus */
        struct { int kind; double negative_slope, alpha, beta, threshold; } activation;
        struct {
            int64_t in_channels, out_channels, groups;
            int64_t kernel[2], stride[2], padding[2], dilation[2];
            bool bias;
            fn_init_dist weight_init, bias_init;
        } conv;
        struct { int64_t kernel[2], stride[2], padding[2]; } pool;
        struct { int64_t channels; double eps, momentum; bool affine; } batch_norm;
        struct { double p; } dropout;
        struct { int64_t size; double alpha, beta, k; } lrn;
        struct { int64_t channels, num_parameters, spatial; double init; } prelu;
        struct { int64_t pieces, groups, spatial; } maxout; /* (groups * pieces, spatial) in */
        struct { int64_t channels, spatial; } softmax;      /* softmax and log_softmax */
    } attr;

    int n_params;
    fn_param_decl param_decl[FN_MAX_PARAMS];
    int param_index[FN_MAX_PARAMS]; /* into fn_model.params */

    /* Pointers set when buffers are planned (fn_model_plan) and when the arenas are allocated. */
    const void *in[FN_MAX_INPUTS]; /* (batch, in_size) */
    void *out;                     /* (batch, out_size) */
    bool out_kept;                 /* out still holds this node's output after a forward: no
                                    * later node's output shares its memory */
    bool out_skipped;              /* the last forward never stored this output: a band chain
                                    * handed it to its consumer piece by piece (forward_piece) */
    bool relu_fused;               /* this node applies the ReLU that follows it (op->fuses_relu) */
    bool fused_away;               /* a ReLU that its producer applies: forward and backward skip
                                    * it (its output and gradient are the producer's memory) */
    bool input_grad_deferred;      /* backward leaves grad_in[0] to the input's producer */
    bool input_grad_relu;          /* and input_grad_of_sample passes it through the ReLU fused
                                    * into that producer (op->input_grad_passes_relu) */
    bool input_stats_ready;        /* the producer handed over every sample of this training
                                    * forward's input (op->input_stats_of_sample) */
    bool weights_reversed;         /* a linear layer: whether its last forward read its weights
                                    * last row first (fn_gemm_ordered); the next reads them the
                                    * other way */
    fn_node *fused_consumer;       /* the consumer that left this node's output gradient to it
                                    * (input_grad_deferred): backward takes it from there, and
                                    * grad_out is that node's; forward may hand it each sample of
                                    * the output (op->derives_output_grad) */
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
    /* The buffer arena as it was before a training step's forward, put back when the step fails
     * (batch norm updates its running statistics during the forward, before the loss is known). */
    void *buffer_backup;
    bool training;     /* the mode forward and train_step run in (fn_model_set_training) */
    uint64_t rng_step; /* train-mode forwards so far: the counter of dropout's masks */

    fn_optimizer optimizer;
    bool has_optimizer;
    fn_schedule schedule; /* the learning rate of each update (all zero: constant) */
    int64_t optimizer_steps;
    bool momentum_started; /* SGD's buffer holds a value (see fn_model_momentum_started) */
    int optimizer_slots;
    void *optimizer_state; /* optimizer_slots * param_total elements */
    /* Parameter groups and what the update needs besides (optim.c); allocated with the first
     * optimizer or groups, freed by fn_optimizer_free. */
    int n_groups;                    /* 0: one group of the optimizer's lr and weight_decay */
    int group_capacity;              /* entries allocated in groups and group_steps */
    fn_param_group *groups;
    struct fn_group_step *group_steps; /* per group: the coefficients of the running update */
    struct fn_optim_segment *segments; /* the parameter tensors in arena order */
    int n_segments;
    int64_t segment_work;            /* elements over all segments (the whole arena) */
    double *norm_blocks;             /* per block of the gradient arena: its sum of squares */
    double last_grad_norm;           /* of the last update, when has_grad_norm */
    bool has_grad_norm;
    /* The node the last train_step or update refused for a non-finite value named (the first
     * whose output, or one of whose parameter gradients, held one); -1 if none. */
    int nonfinite_node;

    /* Buffers planned for up to `capacity` samples; the last forward's batch and mode. */
    int64_t capacity;
    void *activations;     /* every node's out, one allocation */
    /* Every node's out in memory of its own (fn_model_set_keep_outputs), and whether the buffers
     * were planned so; otherwise outputs that backward does not read share memory. */
    bool keep_outputs, planned_keep_outputs;
    fn_memory_use memory; /* bytes of the buffers above (fn_model_memory_use) */
    void *gradients;       /* every node's grad_out */
    void *input_copy;      /* (capacity, input_size): the validated copy of x */
    void *input_grad;      /* (capacity, input_size), allocated on first request */
    void *saved;           /* every node's op->saved bytes */
    void *workspace;       /* the largest op->workspace */
    size_t workspace_size;
    int64_t forward_batch; /* batch of the last forward that kept activations, 0 if none */
    /* Rows in every node's out from the last forward, kept or not (fn_model_node_output); 0 if
     * there was none, it failed, or a prediction overwrote the buffers since (then
     * outputs_predicted, so that the error can say so). */
    int64_t output_batch;
    bool outputs_predicted;
    uint64_t forward_rng_step; /* rng_step of that forward, for backward's dropout masks */
    int forward_threads;       /* and its thread count, to run it again the same way */
    int64_t train_correct; /* argmax hits of the last train_step */
};

/* op registry (ops.c) */
const fn_op *fn_op_find(const char *type);
extern const fn_op fn_op_relu; /* the buffer planner fuses it into its producer (model.c) */

/* spec.c: parses spec_json into an unconfigured model (nodes, shapes, params declared). */
fn_status fn_spec_build(const char *spec_json, fn_model *m);
/* fn_model_load from `size` bytes of a safetensors file in memory (for the fuzz harness and the
 * corpus replay test; internal, not in fastnet.h). Messages name the source "safetensors buffer". */
fn_status fn_model_load_bytes(const void *bytes, size_t size, fn_model **out);

/* Parameter initialisation helpers (init.c): fill `count` elements of a dtype array. */
void fn_fill_uniform(fn_dtype dtype, void *dst, int64_t count, double low, double high,
                     uint64_t seed, uint64_t stream);
void fn_fill_constant(fn_dtype dtype, void *dst, int64_t count, double value);
void fn_fill_normal(fn_dtype dtype, void *dst, int64_t count, double mean, double std,
                    uint64_t seed, uint64_t stream);
void fn_fill_dist(const fn_init_dist *dist, fn_dtype dtype, void *dst, int64_t count,
                  uint64_t seed, uint64_t stream);
/* Reads the attribute `key` ("init" or "bias_init") of a node's spec, a scheme name or an object
 * {"scheme": name, parameters...}, into a distribution for a tensor with these fans (PyTorch's
 * _calculate_fan_in_and_fan_out). Absent or null is "default": PyTorch's reset_parameters,
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias alike. A bias takes only default, zeros,
 * ones, constant, uniform and normal. */
fn_status fn_init_parse(const fn_json *spec, const char *key, bool is_bias, int64_t fan_in,
                        int64_t fan_out, fn_init_dist *out, const char *node_name);
/* The RNG stream of a node's parameter p: a hash of its name, so that adding a node elsewhere in
 * the graph does not change this parameter's initial values. */
uint64_t fn_param_stream(const fn_node *node, int p);

/* optim.c */

/* A parameter tensor as the update walks it: where it is, its rows for max-norm, its group. */
typedef struct fn_optim_segment {
    int64_t offset, count; /* elements into the parameter arena */
    int64_t span;          /* count and the padding after it: the segments tile the arena */
    int64_t row;           /* elements per row for max-norm (count / dim 0); 0: exempt */
    int64_t work_start;    /* elements of the segments before it (the threads split this range) */
    int tensor;            /* index into m->params */
    int group;
} fn_optim_segment;

/* One group's coefficients for one update, computed in double once per update. */
typedef struct fn_group_step {
    double lr;         /* after the schedule */
    double step_size;  /* the step's factor: lr; Adam lr / (1 - b1^t); Adagrad's decayed lr */
    double decay;      /* 1 - lr*wd with decoupled decay, else 1 */
    double coupled_wd; /* wd with coupled decay, else 0 */
    double l1, max_norm;
} fn_group_step;

/* Everything one update reads, for the templated kernels. */
typedef struct fn_update_args {
    const fn_optimizer *opt;
    bool momentum_first;     /* SGD: the buffer is empty and starts as the gradient */
    double grad_scale;       /* clipping by norm: the factor of every gradient (1: none) */
    double clip_value;       /* clipping by value (0: none) */
    double correction2_sqrt; /* Adam: sqrt(1 - b2^t) */
    const fn_group_step *groups;
    const fn_optim_segment *segments;
    int n_segments;
    int64_t work;            /* elements over all segments' spans */
    void *params;
    const void *grads;
    void *state;             /* slots of `stride` elements */
    int64_t stride;
} fn_update_args;

int fn_optimizer_slots(const fn_optimizer *opt);
fn_status fn_optimizer_check(const fn_optimizer *opt);
/* Whether parameter tensor `param` (an index into m->params) was declared as a bias. */
bool fn_param_is_bias(const fn_model *m, int param);
/* Frees what the optimizer and the groups hold (fn_model_free). */
void fn_optimizer_free(fn_model *m);
/* The learning rate of update `step` (from 0) of an already checked schedule. */
double fn_schedule_compute_lr(const fn_schedule *schedule, double base_lr, int64_t step);
/* One update; `what` names the caller in errors. FN_ENUMERIC, changing nothing, for a non-finite
 * gradient norm when clipping by norm or checking (check_finite): the message names the first
 * node (execution order) with a non-finite parameter gradient, and m->nonfinite_node is set. */
fn_status fn_optimizer_update(fn_model *m, const char *what);

#endif /* FASTNET_MODEL_H */
