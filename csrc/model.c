/* model.c — the model runtime: create from a spec, plan buffers, forward, backward, train_step. */
#include "kernels.h"
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Batches above this are refused: every buffer size is batch * size-per-sample, and the BLAS
 * takes int dimensions. */
#define FN_MAX_BATCH ((int64_t)INT32_MAX)

/* ---------------------------------------------------------------- create and free */

static void set_param_pointers(fn_model *m) {
    size_t elem = fn_dtype_size(m->dtype);
    for (int i = 0; i < m->n_nodes; i++) {
        fn_node *node = &m->nodes[i];
        for (int p = 0; p < node->n_params; p++) {
            const fn_param *param = &m->params[node->param_index[p]];
            size_t offset = (size_t)param->offset * elem;
            if (param->is_buffer) {
                node->param[p] = (char *)m->buffer_arena + offset;
                node->grad[p] = NULL;
            } else {
                node->param[p] = (char *)m->param_arena + offset;
                node->grad[p] = (char *)m->grad_arena + offset;
            }
        }
    }
}

fn_status fn_model_init_params(fn_model *m, uint64_t seed) {
    if (!m) return fn_error(FN_EINVAL, "model: NULL");
    memset(m->param_arena, 0, (size_t)m->param_total * fn_dtype_size(m->dtype));
    memset(m->buffer_arena, 0, (size_t)m->buffer_total * fn_dtype_size(m->dtype));
    for (int i = 0; i < m->n_nodes; i++) {
        fn_node *node = &m->nodes[i];
        if (node->op->init && node->n_params) node->op->init(node, m->dtype, node->param, seed);
    }
    m->seed = seed;
    return FN_OK;
}

fn_status fn_model_create(const char *spec_json, fn_model **out) {
    if (!out) return fn_error(FN_EINVAL, "fn_model_create: out is NULL");
    *out = NULL;
    if (!spec_json) return fn_error(FN_EINVAL, "fn_model_create: spec is NULL");
    fn_model *m = calloc(1, sizeof *m);
    if (!m) return fn_error(FN_ENOMEM, "fn_model_create: out of memory");
    fn_status status = FN_OK;
    size_t length = strlen(spec_json);
    m->spec_json = malloc(length + 1);
    if (!m->spec_json) {
        status = fn_error(FN_ENOMEM, "fn_model_create: out of memory");
        goto fail;
    }
    memcpy(m->spec_json, spec_json, length + 1);
    if ((status = fn_spec_build(spec_json, m))) {
        /* A spec that is not JSON at all is a bad argument like any other bad spec: FN_EFORMAT
         * is kept for files (fn_model_load says which file). */
        if (status == FN_EFORMAT) {
            char message[512];
            snprintf(message, sizeof message, "%s", fn_last_error());
            status = fn_error(FN_EINVAL, "spec: %s", message);
        }
        goto fail;
    }
    size_t bytes = (size_t)m->param_total * fn_dtype_size(m->dtype);
    m->param_arena = fn_calloc(bytes);
    m->grad_arena = fn_calloc(bytes);
    m->buffer_arena = fn_calloc((size_t)m->buffer_total * fn_dtype_size(m->dtype));
    m->buffer_backup = fn_alloc((size_t)m->buffer_total * fn_dtype_size(m->dtype));
    m->training = true;
    m->nonfinite_node = -1;
    if (!m->param_arena || !m->grad_arena || !m->buffer_arena || !m->buffer_backup) {
        status = fn_error(FN_ENOMEM, "fn_model_create: cannot allocate %zu bytes of parameters",
                          bytes);
        goto fail;
    }
    set_param_pointers(m);
    fn_model_init_params(m, m->seed);
    *out = m;
    return FN_OK;
fail:
    fn_model_free(m);
    return status;
}

void fn_model_free(fn_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_nodes; i++) free(m->nodes[i].name);
    free(m->nodes);
    for (int i = 0; i < m->n_params; i++) free(m->params[i].name);
    free(m->params);
    fn_free(m->param_arena);
    fn_free(m->grad_arena);
    fn_free(m->buffer_arena);
    fn_free(m->buffer_backup);
    fn_free(m->saved);
    fn_free(m->workspace);
    fn_optimizer_free(m);
    fn_free(m->activations);
    fn_free(m->gradients);
    fn_free(m->input_copy);
    fn_free(m->input_grad);
    free(m->spec_json);
    free(m);
}

/* ---------------------------------------------------------------- accessors */

fn_dtype fn_model_dtype(const fn_model *m) { return m->dtype; }
const char *fn_model_spec(const fn_model *m) { return m->spec_json; }
int64_t fn_model_input_size(const fn_model *m) { return m->input_size; }
int64_t fn_model_output_size(const fn_model *m) { return m->output_size; }
int fn_model_tensor_count(const fn_model *m) { return m->n_params; }
int64_t fn_model_param_total(const fn_model *m) { return m->param_total; }
int64_t fn_model_buffer_total(const fn_model *m) { return m->buffer_total; }
void *fn_model_params(fn_model *m) { return m->param_arena; }
void *fn_model_buffers(fn_model *m) { return m->buffer_arena; }
void fn_model_set_training(fn_model *m, int training) {
    m->training = training != 0;
    m->forward_batch = 0; /* activations of the other mode cannot be backpropagated */
}
int fn_model_training(const fn_model *m) { return m->training; }
uint64_t fn_model_rng_step(const fn_model *m) { return m->rng_step; }
void fn_model_set_rng_step(fn_model *m, uint64_t step) { m->rng_step = step; }
void *fn_model_grads(fn_model *m) { return m->grad_arena; }
int64_t fn_model_optimizer_steps(const fn_model *m) { return m->optimizer_steps; }
void fn_model_set_optimizer_steps(fn_model *m, int64_t steps) { m->optimizer_steps = steps; }
int fn_model_momentum_started(const fn_model *m) { return m->momentum_started; }
void fn_model_set_momentum_started(fn_model *m, int started) { m->momentum_started = started != 0; }
int64_t fn_model_train_correct(const fn_model *m) { return m->train_correct; }
int fn_model_nonfinite_node(const fn_model *m) { return m->nonfinite_node; }
int fn_model_optimizer_state_count(const fn_model *m) { return m->optimizer_slots; }

void *fn_model_optimizer_state(fn_model *m, int slot) {
    if (slot < 0 || slot >= m->optimizer_slots) return NULL;
    return (char *)m->optimizer_state + (size_t)slot * (size_t)m->param_total * fn_dtype_size(m->dtype);
}

int fn_model_node_count(const fn_model *m) { return m->n_nodes; }

fn_status fn_model_node_info(const fn_model *m, int i, fn_node_info *info) {
    if (!m || !info || i < 0 || i >= m->n_nodes)
        return fn_error(FN_EINVAL, "node index %d out of range", i);
    const fn_node *node = &m->nodes[i];
    info->name = node->name;
    info->op = node->op->type;
    info->ndim = node->out_shape.ndim;
    for (int d = 0; d < 4; d++) info->shape[d] = d < node->out_shape.ndim ? node->out_shape.dim[d] : 1;
    return FN_OK;
}

fn_status fn_model_node_output(const fn_model *m, int i, const void **data, int64_t *rows) {
    if (!m || !data || !rows) return fn_error(FN_EINVAL, "node_output: model, data or rows is NULL");
    *data = NULL;
    *rows = 0;
    if (i < 0 || i >= m->n_nodes)
        return fn_error(FN_EINVAL, "node_output: node index %d out of range (the model has %d)", i,
                        m->n_nodes);
    if (m->output_batch == 0)
        return fn_error(FN_ESTATE,
                        m->outputs_predicted
                            ? "node_output: a prediction has overwritten the activations since the "
                              "last forward (predict keeps none); run a forward or a train_step first"
                            : "node_output: no forward has completed on the current buffers; run "
                              "a forward or a train_step first");
    const fn_node *node = &m->nodes[i];
    if (!node->out_kept)
        return fn_error(FN_ESTATE,
                        "node_output: the output of node '%s' (%s) is not kept: backward does not "
                        "read it, so a later layer's output reuses its memory; "
                        "fn_model_set_keep_outputs(m, 1) gives every output memory of its own",
                        node->name, node->op->type);
    if (node->out_skipped)
        return fn_error(FN_ESTATE,
                        "node_output: the output of node '%s' (%s) was not stored: this inference "
                        "of fewer samples than threads handed it to the next layer a few rows at "
                        "a time; fn_model_set_keep_outputs(m, 1) stores every output",
                        node->name, node->op->type);
    *data = node->out;
    *rows = m->output_batch;
    return FN_OK;
}

void fn_model_set_keep_outputs(fn_model *m, int keep) {
    if (m) m->keep_outputs = keep != 0; /* the next forward lays the buffers out again */
}

int fn_model_keep_outputs(const fn_model *m) { return m && m->keep_outputs; }

fn_status fn_model_memory_use(const fn_model *m, fn_memory_use *out) {
    if (!m || !out) return fn_error(FN_EINVAL, "memory_use: model or out is NULL");
    *out = m->memory;
    return FN_OK;
}

fn_status fn_model_tensor_info(const fn_model *m, int i, fn_tensor_info *info) {
    if (!m || !info || i < 0 || i >= m->n_params)
        return fn_error(FN_EINVAL, "tensor index %d out of range", i);
    const fn_param *p = &m->params[i];
    info->name = p->name;
    info->ndim = p->shape.ndim;
    for (int d = 0; d < 4; d++) info->shape[d] = d < p->shape.ndim ? p->shape.dim[d] : 1;
    info->offset = p->offset;
    info->count = p->count;
    info->is_buffer = p->is_buffer;
    info->is_integer = p->is_integer;
    info->is_bias = fn_param_is_bias(m, i);
    return FN_OK;
}

/* ---------------------------------------------------------------- buffer planning
 *
 * Each node's buffer is laid out for `capacity` samples; a smaller batch uses a prefix of it, so
 * the pointers only change when a larger batch arrives. */

/* What nodes keep from forward to backward (op->saved), one allocation for all. */
static fn_status plan_saved(fn_model *m, int64_t batch) {
    size_t elem = fn_dtype_size(m->dtype), total = 0;
    for (int i = 0; i < m->n_nodes; i++) {
        const fn_node *node = &m->nodes[i];
        if (node->op->saved) total += (node->op->saved(node, batch, elem) + 63) & ~(size_t)63;
    }
    fn_free(m->saved);
    m->saved = fn_alloc(total);
    m->memory.saved = m->saved ? total : 0;
    if (!m->saved) return fn_error(FN_ENOMEM, "cannot allocate %zu bytes of saved state", total);
    memset(m->saved, 0, total); /* what a node keeps across calls starts out invalid */
    char *next = m->saved;
    for (int i = 0; i < m->n_nodes; i++) {
        fn_node *node = &m->nodes[i];
        node->saved = NULL;
        if (!node->op->saved) continue;
        node->saved = next;
        next += (node->op->saved(node, batch, elem) + 63) & ~(size_t)63;
    }
    return FN_OK;
}

/* Scratch shared by all nodes: the most any node asks for at this batch and thread count. Grows
 * only, so the steady state allocates nothing. */
static fn_status plan_workspace(fn_model *m, int64_t batch, int threads) {
    size_t elem = fn_dtype_size(m->dtype), need = 0;
    for (int i = 0; i < m->n_nodes; i++) {
        const fn_node *node = &m->nodes[i];
        if (node->op->workspace) {
            size_t bytes = node->op->workspace(node, batch, threads, elem);
            if (bytes > need) need = bytes;
        }
    }
    if (need <= m->workspace_size) return FN_OK;
    void *workspace = fn_alloc(need);
    if (!workspace) return fn_error(FN_ENOMEM, "cannot allocate %zu bytes of workspace", need);
    fn_free(m->workspace);
    m->workspace = workspace;
    m->workspace_size = m->memory.workspace = need;
    return FN_OK;
}

/* Slots for the buffer planners below: a slot holds one buffer at a time and grows to the largest
 * it holds; sizes are in elements of one sample. */
typedef struct {
    int count;
    int64_t *size; /* after slot_pool_layout: each slot's offset */
    bool *busy;
} slot_pool;

/* On failure the pool holds nothing (slot_pool_free is still safe). */
static fn_status slot_pool_init(slot_pool *pool, int capacity, const char *what) {
    pool->count = 0;
    pool->size = malloc((size_t)capacity * sizeof *pool->size);
    pool->busy = malloc((size_t)capacity * sizeof *pool->busy);
    if (!pool->size || !pool->busy) {
        free(pool->size);
        free(pool->busy);
        pool->size = NULL;
        pool->busy = NULL;
        return fn_error(FN_ENOMEM, "cannot plan the %s", what);
    }
    return FN_OK;
}

static void slot_pool_free(slot_pool *pool) {
    free(pool->size);
    free(pool->busy);
}

/* A free slot for a buffer of `need` elements: the smallest free one that is large enough, else
 * the largest free one (which grows), else a new one. */
static int slot_take(slot_pool *pool, int64_t need) {
    int best = -1;
    for (int s = 0; s < pool->count; s++) {
        if (pool->busy[s]) continue;
        bool fits = pool->size[s] >= need, best_fits = best >= 0 && pool->size[best] >= need;
        if (best < 0 || (fits && (!best_fits || pool->size[s] < pool->size[best])) ||
            (!fits && !best_fits && pool->size[s] > pool->size[best]))
            best = s;
    }
    if (best < 0) {
        best = pool->count++;
        pool->size[best] = 0;
    }
    if (pool->size[best] < need) pool->size[best] = need;
    pool->busy[best] = true;
    return best;
}

/* Lays the slots out one after another: size[s] becomes slot s's offset; returns the total. */
static int64_t slot_pool_layout(slot_pool *pool) {
    int64_t offset = 0;
    for (int s = 0; s < pool->count; s++) {
        int64_t size = pool->size[s];
        pool->size[s] = offset;
        offset += size;
    }
    return offset;
}

/* Places every node's output, sharing memory between outputs that are never needed at the same
 * time, unless m->keep_outputs. An output is needed from its node's forward to its last
 * consumer's forward, and on to the end of backward when a backward reads it (its own node's,
 * unless the op declares backward_ignores_output; a consumer's, unless it declares
 * backward_ignores_inputs) or it is the model's output. Walking forward's order, an output takes a
 * slot before its node runs and gives it back after its last reader has run (not before: a node
 * reads its inputs while it writes its output). An op that works in place (ReLU, add, dropout,
 * flatten) takes its first input's slot instead when that input is needed by nothing after it:
 * batch norm's output becomes the ReLU's, and the copy that add or flatten would make is gone.
 * In a ResNet only the outputs that backward reads (convolutions', ReLUs') then take memory of
 * their own. out_kept says which outputs are still there after the forward.
 *
 * A ReLU that so takes over the output of the node just before it, when that node's op can apply
 * it (fuses_relu: convolution, linear, batch norm, add), is fused: the producer applies it (relu_fused) and the ReLU
 * node is skipped (fused_away), saving a pass over the activations each way.
 *
 * A node that alone reads an output whose producer can take its output gradient sample by sample
 * (batch norm or a pool after a convolution: op->input_grad_of_sample, op->derives_output_grad)
 * leaves its input gradient to that producer (input_grad_deferred, fused_consumer), which in a
 * training forward also hands it each sample of the output (op->input_stats_of_sample). */
static fn_status plan_output_slots(fn_model *m, int64_t *out_offset, int64_t *total) {
    const int n = m->n_nodes;
    int *last_use = malloc((size_t)n * sizeof *last_use); /* n: to the end of backward */
    int *slot_of = malloc((size_t)n * sizeof *slot_of);
    int *readers = calloc((size_t)n, sizeof *readers); /* how many inputs of nodes each output is */
    slot_pool pool;
    fn_status status = slot_pool_init(&pool, n, "activation buffers");
    if (status == FN_OK && (!last_use || !slot_of || !readers))
        status = fn_error(FN_ENOMEM, "cannot plan the activation buffers");
    if (status != FN_OK) {
        free(last_use);
        free(slot_of);
        free(readers);
        slot_pool_free(&pool);
        return status;
    }
    for (int i = 0; i < n; i++) {
        fn_node *node = &m->nodes[i];
        bool backward_reads = m->keep_outputs || i == m->output_node ||
                              !node->op->backward_ignores_output;
        last_use[i] = backward_reads ? n : i;
        node->relu_fused = node->fused_away = node->input_grad_deferred = false;
        node->input_grad_relu = false;
        node->input_stats_ready = false;
        node->fused_consumer = NULL;
    }
    for (int j = 0; j < n; j++) {
        const fn_node *consumer = &m->nodes[j];
        for (int k = 0; k < consumer->n_inputs; k++) {
            int i = consumer->input[k];
            if (i == FN_MODEL_INPUT) continue;
            readers[i]++;
            if (!consumer->op->backward_ignores_inputs) last_use[i] = n;
            if (last_use[i] < j) last_use[i] = j;
        }
    }
    for (int j = 0; j < n; j++) {
        fn_node *node = &m->nodes[j];
        int first = node->n_inputs > 0 ? node->input[0] : FN_MODEL_INPUT;
        bool in_place = node->op->in_place && node->op->backward_ignores_inputs &&
                        first != FN_MODEL_INPUT && last_use[first] == j;
        for (int k = 1; k < node->n_inputs && in_place; k++) in_place = node->input[k] != first;
        if (in_place) {
            slot_of[j] = slot_of[first];
            if (pool.size[slot_of[j]] < node->out_size) pool.size[slot_of[j]] = node->out_size;
            if (node->op == &fn_op_relu && first == j - 1 && m->nodes[first].op->fuses_relu)
                m->nodes[first].relu_fused = node->fused_away = true;
        } else {
            slot_of[j] = slot_take(&pool, node->out_size);
        }
        for (int k = 0; k < node->n_inputs; k++) {
            int i = node->input[k];
            if (i != FN_MODEL_INPUT && last_use[i] == j && slot_of[i] != slot_of[j])
                pool.busy[slot_of[i]] = false;
        }
        if (last_use[j] == j) pool.busy[slot_of[j]] = false; /* read by nothing */
    }
    /* A node whose input gradient its input's producer can derive as it goes leaves it to that
     * producer, when it is the output's only reader (the gradient is then all its own), and the
     * output is not the model's (the loss writes that one's gradient). The producer may be
     * behind a ReLU fused into it, read by that node alone: the ReLU's backward is then the
     * producer's, on the derived gradient, or the node's where its op can take it
     * (input_grad_relu: a convolution, ReLU, max pool). */
    for (int j = 0; j < n; j++) {
        fn_node *node = &m->nodes[j];
        int i = node->n_inputs == 1 ? node->input[0] : FN_MODEL_INPUT;
        if (i == FN_MODEL_INPUT || !node->op->input_grad_of_sample[m->dtype] ||
            readers[i] != 1 || i == m->output_node)
            continue;
        bool through_relu = m->nodes[i].fused_away; /* applied by its producer, i - 1 */
        if (through_relu) {
            i--;
            if (readers[i] != 1 || i == m->output_node) continue;
        }
        if (m->nodes[i].op->derives_output_grad) {
            node->input_grad_deferred = true;
            node->input_grad_relu = through_relu && node->op->input_grad_passes_relu;
            m->nodes[i].fused_consumer = node;
        }
    }
    *total = slot_pool_layout(&pool);
    for (int i = 0; i < n; i++) out_offset[i] = pool.size[slot_of[i]];
    /* An output is kept unless a later node's shares its slot: walking back, busy marks the slots
     * a later node has used. */
    for (int s = 0; s < pool.count; s++) pool.busy[s] = false;
    for (int i = n - 1; i >= 0; i--) {
        m->nodes[i].out_kept = !pool.busy[slot_of[i]];
        pool.busy[slot_of[i]] = true;
    }
    free(last_use);
    free(slot_of);
    free(readers);
    slot_pool_free(&pool);
    return FN_OK;
}

static fn_status plan_activations(fn_model *m, int64_t batch) {
    if (batch <= m->capacity && m->activations && m->planned_keep_outputs == m->keep_outputs)
        return FN_OK;
    size_t elem = fn_dtype_size(m->dtype), bytes, input_bytes;
    int64_t *out_offset = malloc((size_t)m->n_nodes * sizeof *out_offset), total = 0;
    if (!out_offset) return fn_error(FN_ENOMEM, "cannot plan the activation buffers");
    fn_status status = plan_output_slots(m, out_offset, &total);
    if (status == FN_OK &&
        (!fn_mul_size((size_t)total, (size_t)batch * elem, &bytes) ||
         !fn_mul_size((size_t)m->input_size, (size_t)batch * elem, &input_bytes)))
        status = fn_error(FN_ENOMEM, "batch of %lld samples is too large", (long long)batch);
    if (status != FN_OK) {
        free(out_offset);
        return status;
    }
    fn_free(m->activations);
    fn_free(m->input_copy);
    fn_free(m->gradients); /* laid out for the old capacity */
    fn_free(m->input_grad);
    m->gradients = m->input_grad = NULL;
    m->activations = fn_alloc(bytes);
    m->input_copy = fn_alloc(input_bytes);
    m->capacity = 0;
    m->forward_batch = 0;
    m->output_batch = 0; /* the new buffers hold nothing yet */
    m->outputs_predicted = false;
    if (!m->activations || !m->input_copy) {
        free(out_offset);
        return fn_error(FN_ENOMEM, "cannot allocate %zu bytes of activations for a batch of %lld",
                        bytes + input_bytes, (long long)batch);
    }
    m->capacity = batch;
    m->planned_keep_outputs = m->keep_outputs;
    m->memory.activations = bytes;
    m->memory.input = input_bytes;
    m->memory.gradients = 0;
    for (int i = 0; i < m->n_nodes; i++)
        m->nodes[i].out = (char *)m->activations + (size_t)out_offset[i] * (size_t)batch * elem;
    free(out_offset);
    FN_TRY(plan_saved(m, batch));
    for (int i = 0; i < m->n_nodes; i++) {
        fn_node *node = &m->nodes[i];
        for (int j = 0; j < node->n_inputs; j++)
            node->in[j] = node->input[j] == FN_MODEL_INPUT ? m->input_copy
                                                           : m->nodes[node->input[j]].out;
    }
    return FN_OK;
}

/* Places every node's grad_out in m->gradients, sharing memory between gradients that are never
 * needed at the same time. Backward runs the nodes from last to first: node i's output gradient
 * is first written by its consumer of highest index (the others add to it) and last read by node
 * i's own backward, and it is needed in between; the output node's is written by the loss before
 * backward starts. Walking backward's order, a gradient takes a slot when its first writer runs
 * and gives it back once its own node has run (not before: a node reads its output gradient
 * while it writes its inputs'). In a chain of layers two or three slots serve the whole network,
 * which halves the memory a training step needs beside the activations. */
static fn_status plan_gradient_slots(fn_model *m, int64_t *grad_offset, int64_t *total) {
    int n = m->n_nodes;
    int *slot_of = malloc((size_t)n * sizeof *slot_of);
    slot_pool pool;
    fn_status status = slot_pool_init(&pool, n, "gradient buffers");
    if (status == FN_OK && !slot_of)
        status = fn_error(FN_ENOMEM, "cannot plan the gradient buffers");
    if (status != FN_OK) {
        free(slot_of);
        slot_pool_free(&pool);
        return status;
    }
    for (int i = 0; i < n; i++) slot_of[i] = -1;
    for (int j = n; j >= 0; j--) {
        /* j == n: before backward, the loss writes the output's gradient. */
        const fn_node *writer = j < n ? &m->nodes[j] : NULL;
        int count = writer ? writer->n_inputs : 1;
        for (int k = 0; k < count; k++) {
            int i = writer ? writer->input[k] : m->output_node;
            if (i == FN_MODEL_INPUT || slot_of[i] >= 0) continue;
            /* A fused ReLU's producer reads the ReLU's output gradient as its own; one that
             * derives its output gradient reads its consumer's, which then lives until the
             * producer's backward. */
            slot_of[i] = writer && (writer->fused_away || writer->input_grad_deferred)
                             ? slot_of[j]
                             : slot_take(&pool, m->nodes[i].out_size);
        }
        if (writer && !writer->fused_away && !writer->input_grad_deferred)
            pool.busy[slot_of[j]] = false;
    }
    *total = slot_pool_layout(&pool);
    for (int i = 0; i < n; i++) grad_offset[i] = pool.size[slot_of[i]];
    free(slot_of);
    slot_pool_free(&pool);
    return FN_OK;
}

/* Gradient buffers, after plan_activations for the same batch; the input gradient only when
 * asked for (train_step never needs it). */
static fn_status plan_gradients(fn_model *m, bool want_input_grad) {
    size_t elem = fn_dtype_size(m->dtype);
    if (!m->gradients) {
        int64_t *grad_offset = malloc((size_t)m->n_nodes * sizeof *grad_offset), total = 0;
        if (!grad_offset) return fn_error(FN_ENOMEM, "cannot plan the gradient buffers");
        fn_status status = plan_gradient_slots(m, grad_offset, &total);
        if (status == FN_OK) {
            m->gradients = fn_alloc((size_t)total * (size_t)m->capacity * elem);
            m->memory.gradients = m->gradients ? (size_t)total * (size_t)m->capacity * elem : 0;
            if (!m->gradients)
                status = fn_error(FN_ENOMEM,
                                  "cannot allocate gradient buffers for a batch of %lld",
                                  (long long)m->capacity);
        }
        for (int i = 0; i < m->n_nodes && status == FN_OK; i++) {
            m->nodes[i].grad_out =
                (char *)m->gradients + (size_t)grad_offset[i] * (size_t)m->capacity * elem;
        }
        free(grad_offset);
        FN_TRY(status);
    }
    if (want_input_grad && !m->input_grad) {
        m->input_grad = fn_alloc((size_t)m->input_size * (size_t)m->capacity * elem);
        if (m->input_grad) m->memory.input += (size_t)m->input_size * (size_t)m->capacity * elem;
        if (!m->input_grad)
            return fn_error(FN_ENOMEM, "cannot allocate the input gradient");
    }
    for (int i = 0; i < m->n_nodes; i++) {
        fn_node *node = &m->nodes[i];
        for (int j = 0; j < node->n_inputs; j++)
            node->grad_in[j] = node->input[j] != FN_MODEL_INPUT ? m->nodes[node->input[j]].grad_out
                               : want_input_grad                ? m->input_grad
                                                                : NULL;
    }
    return FN_OK;
}

/* ---------------------------------------------------------------- running the graph */

static fn_status check_batch(const fn_model *m, const void *x, int64_t n, const char *what) {
    if (!m) return fn_error(FN_EINVAL, "%s: model is NULL", what);
    if (n < 1 || n > FN_MAX_BATCH)
        return fn_error(FN_EINVAL, "%s: batch size must be in [1, 2^31), got %lld", what,
                        (long long)n);
    if (!x) return fn_error(FN_EINVAL, "%s: input is NULL", what);
    return FN_OK;
}

typedef struct {
    const char *x;
    char *copy;
    size_t elem;
    int64_t count;
    fn_dtype dtype;
    int64_t first_bad[FN_MAX_PARTIALS]; /* each part's first non-finite element, or -1 */
} load_job;

/* One part of the input: copied, then scanned while it is in this core's cache. */
static void load_part(int id, int parts, void *arg) {
    load_job *job = arg;
    int64_t begin, end;
    fn_partition(job->count, parts, id, &begin, &end);
    size_t offset = (size_t)begin * job->elem;
    memcpy(job->copy + offset, job->x + offset, (size_t)(end - begin) * job->elem);
    int64_t bad = fn_first_nonfinite(job->dtype, job->copy + offset, end - begin);
    job->first_bad[id] = bad < 0 ? -1 : begin + bad;
}

/* Copies x into the model's input buffer, refusing NaN or Inf: a bad value would otherwise
 * surface steps later as a NaN loss with no trace of where it came from. A large batch is
 * copied and scanned by the team (`mlp_mnist_b128`'s 401 KB: 43-54 -> 30-35 us on two threads,
 * where the other thread had waited). */
static fn_status load_input(fn_model *m, const void *x, int64_t n) {
    m->output_batch = 0; /* the outputs of the forward before are no longer the last forward's */
    load_job job = {x, m->input_copy, fn_dtype_size(m->dtype), n * m->input_size, m->dtype, {0}};
    int parts = fn_threads_for(job.count, fn_threads_get());
    if (parts > FN_MAX_PARTIALS) parts = FN_MAX_PARTIALS;
    fn_run_team(parts, load_part, &job);
    int64_t bad = -1; /* the first in the input: the first that a part found, in their order */
    for (int part = 0; part < parts && bad < 0; part++) bad = job.first_bad[part];
    if (bad >= 0)
        return fn_error(FN_EINVAL, "input contains NaN or Inf: sample %lld, feature %lld",
                        (long long)(bad / m->input_size), (long long)(bad % m->input_size));
    return FN_OK;
}

/* The thread count and the mode are read once per pass, and the workspace is planned for that
 * count: another thread may call fn_set_num_threads or fn_set_deterministic meanwhile, which then
 * takes effect at the next pass. */
static fn_model_ctx make_ctx(fn_model *m, int64_t n, int threads) {
    return (fn_model_ctx){.batch = n,
                          .threads = threads,
                          .deterministic = fn_deterministic(),
                          .training = m->training,
                          .seed = m->seed,
                          .rng_step = m->rng_step,
                          .workspace = m->workspace,
                          .workspace_size = m->workspace_size};
}

/* Band chains. An inference forward of fewer samples than threads (batch-1 latency) cannot share
 * samples between the threads; each node then splits its own work, and a small node (the first
 * convolution of a network, a pooling) stays on one thread, below the grain worth waking a team
 * for, reading a whole output that two threads wrote: half of it from the other core's cache.
 * Consecutive nodes that can be computed as bands of output rows (op->forward_band) run instead
 * in one team: thread `id` computes band `id` of every node, with a barrier between nodes. The
 * bands of consecutive nodes cover nearly the same rows of the image, so a thread mostly reads
 * rows it wrote itself, and the team is woken once for the chain. The CNN's batch-1 inference,
 * conv-ReLU-conv-ReLU-max pool as one chain: see the README ("Where the time goes"). */
typedef struct {
    fn_model *m;
    const fn_model_ctx *ctx;
    int first, end; /* nodes [first, end) */
} band_chain;

/* The node of the chain [i, end) that takes node i's output a piece at a time
 * (op->forward_band_into, op->forward_piece), or -1: the next node after the ReLUs fused into i,
 * reading their output alone, where nothing else reads it (nor node i's), none of them is the
 * model's output, and the outputs need not be kept (fn_model_set_keep_outputs). Node i's output
 * and its ReLUs' are then never stored (out_skipped): a conv-ReLU-max pool hands each piece of
 * rows to the pool while it is in L1. */
static int band_chain_consumer(const fn_model *m, int i, int end) {
    const fn_node *node = &m->nodes[i];
    if (m->keep_outputs || !node->op->forward_band_into[m->dtype]) return -1;
    int last = i; /* the last node whose output is node i's memory */
    while (last + 1 < end && m->nodes[last + 1].fused_away && m->nodes[last + 1].input[0] == last)
        last++;
    int j = last + 1;
    if (j >= end) return -1;
    const fn_node *consumer = &m->nodes[j];
    if (consumer->n_inputs != 1 || consumer->input[0] != last ||
        !consumer->op->forward_piece[m->dtype] ||
        consumer->op->input_rows_per_output_row(consumer) < 1)
        return -1;
    for (int k = i; k <= last; k++)
        if (k == m->output_node) return -1;
    for (int r = 0; r < m->n_nodes; r++) {
        if (r == j || (r > i && r <= last)) continue;
        for (int k = 0; k < m->nodes[r].n_inputs; k++)
            if (m->nodes[r].input[k] >= i && m->nodes[r].input[k] <= last) return -1;
    }
    return j;
}

static void band_chain_part(int id, int bands, void *arg) {
    const band_chain *chain = arg;
    const fn_model *m = chain->m;
    bool waiting = false; /* the first node reads nothing the team wrote */
    for (int i = chain->first; i < chain->end; i++) {
        fn_node *node = &m->nodes[i];
        if (node->fused_away) continue;
        if (waiting) fn_team_barrier(); /* for the rows of the input the other threads wrote */
        if (node->out_skipped) { /* run_forward found its consumer: the next node it runs */
            int consumer = i + 1;
            while (m->nodes[consumer].fused_away) consumer++;
            node->op->forward_band_into[m->dtype](node, &m->nodes[consumer], chain->ctx, id,
                                                  bands);
            i = consumer;
        } else {
            node->op->forward_band[m->dtype](node, chain->ctx, id, bands);
        }
        waiting = true;
    }
}

/* The end of the band chain that starts at node `first`: past the last of at least two
 * consecutive nodes (fused-away ones aside) that fit ctx->threads bands; `first` when there is
 * no such chain there. */
static int band_chain_end(const fn_model *m, int first, const fn_model_ctx *ctx) {
#ifdef _OPENMP
    if (ctx->batch >= ctx->threads || ctx->training || ctx->keep || ctx->deterministic)
        return first;
    int end = first, nodes = 0;
    for (int i = first; i < m->n_nodes; i++) {
        const fn_node *node = &m->nodes[i];
        if (node->fused_away) continue;
        if (!node->op->band_fits ||
            !node->op->band_fits(node, ctx, ctx->threads, fn_dtype_size(m->dtype)))
            break;
        nodes++;
        end = i + 1;
    }
    return nodes >= 2 ? end : first;
#else
    (void)m, (void)ctx; /* the parts of a team would run one after another */
    return first;
#endif
}

/* Runs every node forward; keep: the activations are for a backward of the same batch. */
static fn_status run_forward(fn_model *m, int64_t n, bool keep) {
    int threads = fn_threads_get();
    FN_TRY(plan_workspace(m, n, threads));
    fn_model_ctx ctx = make_ctx(m, n, threads);
    ctx.keep = keep;
    m->forward_batch = 0;
    m->output_batch = 0; /* a node that fails leaves the outputs half written */
    for (int i = 0; i < m->n_nodes; i++) m->nodes[i].out_skipped = false;
    for (int i = 0; i < m->n_nodes;) {
        int end = band_chain_end(m, i, &ctx);
        if (end > i) {
            band_chain chain = {m, &ctx, i, end};
            for (int k = i; k < end; k++)
                if (!m->nodes[k].fused_away && m->nodes[k].op->band_prepare[m->dtype])
                    m->nodes[k].op->band_prepare[m->dtype](&m->nodes[k], &ctx);
            for (int k = i; k < end; k++) { /* the outputs handed over piece by piece */
                int consumer = m->nodes[k].fused_away ? -1 : band_chain_consumer(m, k, end);
                for (int skipped = k; skipped < consumer; skipped++)
                    m->nodes[skipped].out_skipped = true;
                if (consumer >= 0) k = consumer - 1;
            }
            fn_run_team(threads, band_chain_part, &chain);
            i = end;
            continue;
        }
        fn_node *node = &m->nodes[i++];
        if (!node->fused_away) FN_TRY(node->op->forward[m->dtype](node, &ctx));
    }
    m->forward_batch = keep ? n : 0;
    m->output_batch = n;
    m->outputs_predicted = false;
    m->forward_rng_step = m->rng_step;
    m->forward_threads = threads;
    if (m->training) m->rng_step++; /* the next forward draws new dropout masks */
    return FN_OK;
}

static fn_status run_backward(fn_model *m, int64_t n, bool accumulate_param_grads) {
    int threads = fn_threads_get();
    FN_TRY(plan_workspace(m, n, threads));
    fn_model_ctx ctx = make_ctx(m, n, threads);
    ctx.rng_step = m->forward_rng_step; /* the masks of the forward being differentiated */
    ctx.accumulate_param_grads = accumulate_param_grads;
    for (int i = m->n_nodes - 1; i >= 0; i--)
        if (!m->nodes[i].fused_away)
            FN_TRY(m->nodes[i].op->backward[m->dtype](&m->nodes[i], &ctx));
    return FN_OK;
}

fn_status fn_model_forward(fn_model *m, const void *x, int64_t n, void *y, int keep) {
    FN_TRY(check_batch(m, x, n, "forward"));
    FN_TRY(plan_activations(m, n));
    m->forward_batch = 0;
    FN_TRY(load_input(m, x, n));
    FN_TRY(run_forward(m, n, keep != 0));
    if (y)
        memcpy(y, m->nodes[m->output_node].out,
               (size_t)n * (size_t)m->output_size * fn_dtype_size(m->dtype));
    return FN_OK;
}

/* Predictions run in chunks of at most this many samples (or the batch the model has already
 * planned for, if larger): inference over a whole data set then needs no more activation memory
 * than a training batch of this size. */
#define FN_PREDICT_CHUNK 1024

fn_status fn_model_predict(fn_model *m, const void *x, int64_t n, void *y) {
    FN_TRY(check_batch(m, x, n, "predict"));
    if (!y) return fn_error(FN_EINVAL, "predict: output buffer is NULL");
    if (n > INT64_MAX / m->input_size || n > INT64_MAX / m->output_size)
        return fn_error(FN_EINVAL, "predict: a batch of %lld samples is too large", (long long)n);
    /* Checked whole first, so that a bad sample late in x leaves y untouched. */
    int64_t bad = fn_first_nonfinite(m->dtype, x, n * m->input_size);
    if (bad >= 0)
        return fn_error(FN_EINVAL, "predict: input contains NaN or Inf: sample %lld, feature %lld",
                        (long long)(bad / m->input_size), (long long)(bad % m->input_size));
    int64_t chunk = m->capacity > FN_PREDICT_CHUNK ? m->capacity : FN_PREDICT_CHUNK;
    if (chunk > n) chunk = n;
    FN_TRY(plan_activations(m, chunk));
    bool was_training = m->training;
    m->training = false;
    size_t elem = fn_dtype_size(m->dtype);
    fn_status status = FN_OK;
    for (int64_t start = 0; start < n && status == FN_OK; start += chunk) {
        int64_t rows = n - start < chunk ? n - start : chunk;
        memcpy(m->input_copy, (const char *)x + (size_t)start * (size_t)m->input_size * elem,
               (size_t)rows * (size_t)m->input_size * elem);
        status = run_forward(m, rows, false);
        if (status == FN_OK)
            memcpy((char *)y + (size_t)start * (size_t)m->output_size * elem,
                   m->nodes[m->output_node].out, (size_t)rows * (size_t)m->output_size * elem);
    }
    m->training = was_training;
    m->forward_batch = 0; /* the activations are this prediction's, not a training forward's */
    /* They hold the last chunk only, in eval mode: not outputs anyone asked to look at. */
    m->output_batch = 0;
    m->outputs_predicted = true;
    return status;
}

fn_status fn_model_backward(fn_model *m, const void *grad_y, int64_t n, void *grad_x) {
    FN_TRY(check_batch(m, grad_y, n, "backward"));
    if (m->forward_batch != n)
        return fn_error(FN_ESTATE,
                        "backward: needs a forward that keeps activations, of the same batch and "
                        "mode, first (batch %lld, last such forward: %lld)",
                        (long long)n, (long long)m->forward_batch);
    FN_TRY(plan_gradients(m, grad_x != NULL));
    fn_node *out = &m->nodes[m->output_node];
    size_t count = (size_t)n * (size_t)m->output_size;
    memcpy(out->grad_out, grad_y, count * fn_dtype_size(m->dtype));
    if (fn_first_nonfinite(m->dtype, out->grad_out, (int64_t)count) >= 0)
        return fn_error(FN_EINVAL, "backward: grad_out contains NaN or Inf");
    FN_TRY(run_backward(m, n, true));
    if (grad_x)
        memcpy(grad_x, m->input_grad, (size_t)n * (size_t)m->input_size * fn_dtype_size(m->dtype));
    return FN_OK;
}

void fn_model_zero_grad(fn_model *m) {
    memset(m->grad_arena, 0, (size_t)m->param_total * fn_dtype_size(m->dtype));
}

/* ---------------------------------------------------------------- the fused training step */

/* The first node (execution order) whose output in the forward just run holds a non-finite value,
 * or -1; *bad is its first such element. Outputs whose memory later nodes reused are gone, so the
 * forward then runs again, each output checked while it is there: the same input, mode, dropout
 * masks and thread count give the same values. The whole forward runs, so that every kept output
 * is as it was; batch norm's running statistics, which it updates again, are put back by the
 * failed step with the rest. */
static int first_nonfinite_output(fn_model *m, int64_t n, int64_t *bad) {
    bool all_kept = true;
    for (int i = 0; i < m->n_nodes; i++) all_kept = all_kept && m->nodes[i].out_kept;
    fn_model_ctx ctx = make_ctx(m, n, m->forward_threads);
    ctx.rng_step = m->forward_rng_step;
    ctx.keep = true; /* as the training step's forward */
    int first = -1;
    for (int i = 0; i < m->n_nodes; i++) {
        fn_node *node = &m->nodes[i];
        if (!all_kept && !node->fused_away) /* it succeeded before */
            (void)node->op->forward[m->dtype](node, &ctx);
        int64_t at = fn_first_nonfinite(m->dtype, node->out, n * node->out_size);
        if (at >= 0 && first < 0) {
            first = i;
            *bad = at;
            if (all_kept) break;
        }
    }
    return first;
}

/* FN_ENUMERIC for a non-finite loss, naming the first node whose output holds a non-finite
 * value: where a bad value starts is what one needs to know. Runs only on this failure, so it
 * costs a step nothing. */
static fn_status nonfinite_loss_error(fn_model *m, int64_t n, double value) {
    int64_t bad = -1;
    int i = first_nonfinite_output(m, n, &bad);
    if (i >= 0) {
        const fn_node *node = &m->nodes[i];
        m->nonfinite_node = i;
        return fn_error(FN_ENUMERIC,
                        "train_step: the loss is %g; the first non-finite values appear in the "
                        "output of layer '%s' (%s), sample %lld, element %lld; the weights were "
                        "not updated (lower the learning rate, or check the data and the weights)",
                        value, node->name, node->op->type, (long long)(bad / node->out_size),
                        (long long)(bad % node->out_size));
    }
    return fn_error(FN_ENUMERIC,
                    "train_step: the loss is %g although every layer's output is finite: the loss "
                    "itself overflowed; the weights were not updated (lower the learning rate, or "
                    "check the targets)",
                    value);
}

fn_status fn_model_train_step_targets(fn_model *m, const void *x, int64_t n,
                                      const fn_targets *targets, const fn_loss *loss,
                                      double *loss_out) {
    FN_TRY(check_batch(m, x, n, "train_step"));
    m->nonfinite_node = -1;
    if (!loss || (unsigned)loss->kind > FN_LOSS_DISTILLATION)
        return fn_error(FN_EINVAL, "train_step: unknown loss");
    if (!m->has_optimizer)
        return fn_error(FN_ESTATE, "train_step: no optimizer is set (fn_model_set_optimizer)");
    double norm;
    FN_TRY(fn_loss_check(m->dtype, loss, targets, n, m->output_size, &norm));
    FN_TRY(plan_activations(m, n));
    FN_TRY(plan_gradients(m, false));
    FN_TRY(load_input(m, x, n));
    size_t buffer_bytes = (size_t)m->buffer_total * fn_dtype_size(m->dtype);
    memcpy(m->buffer_backup, m->buffer_arena, buffer_bytes);
    fn_status status = run_forward(m, n, true);

    if (status == FN_OK) {
        fn_node *out = &m->nodes[m->output_node];
        double value = fn_loss_run(m->dtype, out->out, n, m->output_size, targets, loss, norm,
                                   out->grad_out, fn_threads_get(), &m->train_correct);
        if (loss_out) *loss_out = value;
        if (!isfinite(value))
            status = nonfinite_loss_error(m, n, value);
    }
    if (status == FN_OK) status = run_backward(m, n, false);
    if (status == FN_OK) status = fn_optimizer_update(m, "train_step");
    /* A refused step leaves the running statistics as they were, as it leaves the weights. */
    if (status != FN_OK) memcpy(m->buffer_arena, m->buffer_backup, buffer_bytes);
    return status;
}

fn_status fn_model_train_step(fn_model *m, const void *x, const void *labels,
                              fn_label_type label_type, int64_t n, const fn_loss *loss,
                              double *loss_out) {
    fn_targets targets = {.labels = labels, .label_type = label_type};
    return fn_model_train_step_targets(m, x, n, &targets, loss, loss_out);
}
