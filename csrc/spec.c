/* spec.c — builds a model's graph from its JSON spec.
 *
 *   {"format": "fastnet.model", "version": 1, "dtype": "float32", "seed": 0,
 *    "input_shape": [64],
 *    "nodes": [{"name": "0", "op": "linear", "in_features": 64, "out_features": 10},
 *              {"name": "1", "op": "relu", "inputs": ["0"]}],
 *    "output": "1"}
 *
 * "inputs" lists earlier node names or "input"; it defaults to the previous node (the model input
 * for the first). "output" defaults to the last node. Every node must contribute to the output.
 */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FN_SPEC_MAX_NODES 100000
#define FN_SPEC_MAX_NAME 200

extern const fn_op fn_op_linear, fn_op_relu, fn_op_leaky_relu, fn_op_sigmoid, fn_op_tanh,
    fn_op_conv2d, fn_op_max_pool2d, fn_op_avg_pool2d, fn_op_global_avg_pool2d, fn_op_batch_norm,
    fn_op_dropout, fn_op_local_response_norm, fn_op_flatten, fn_op_add, fn_op_concat;
extern const fn_op fn_op_prelu, fn_op_elu, fn_op_gelu, fn_op_silu, fn_op_softplus, fn_op_maxout,
    fn_op_softmax, fn_op_log_softmax;

static const fn_op *const fn_ops[] = {
    &fn_op_linear,     &fn_op_relu,       &fn_op_leaky_relu,      &fn_op_sigmoid,
    &fn_op_tanh,       &fn_op_conv2d,     &fn_op_max_pool2d,      &fn_op_avg_pool2d,
    &fn_op_global_avg_pool2d, &fn_op_batch_norm, &fn_op_dropout,  &fn_op_local_response_norm,
    &fn_op_flatten,    &fn_op_add,        &fn_op_concat,
    &fn_op_prelu,      &fn_op_elu,        &fn_op_gelu,            &fn_op_silu,
    &fn_op_softplus,   &fn_op_maxout,     &fn_op_softmax,         &fn_op_log_softmax,
};

const fn_op *fn_op_find(const char *type) {
    for (size_t i = 0; i < sizeof fn_ops / sizeof fn_ops[0]; i++)
        if (strcmp(fn_ops[i]->type, type) == 0) return fn_ops[i];
    return NULL;
}

static fn_status unknown_op_error(const char *node_name, const char *type) {
    char known[512] = "";
    for (size_t i = 0; i < sizeof fn_ops / sizeof fn_ops[0]; i++) {
        strncat(known, i ? ", " : "", sizeof known - strlen(known) - 1);
        strncat(known, fn_ops[i]->type, sizeof known - strlen(known) - 1);
    }
    return fn_error(FN_EINVAL, "node '%s': unknown op '%s' (known: %s)", node_name, type, known);
}

int64_t fn_shape_size(const fn_shape *s) {
    int64_t size = 1;
    for (int i = 0; i < s->ndim; i++) size *= s->dim[i];
    return size;
}

const char *fn_shape_str(const fn_shape *s, char *buf, size_t size) {
    size_t used = (size_t)snprintf(buf, size, "(");
    for (int i = 0; i < s->ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, i ? ", %lld" : "%lld",
                                 (long long)s->dim[i]);
    if (used < size) snprintf(buf + used, size - used, ")");
    return buf;
}

static fn_status read_shape(const fn_json *array, fn_shape *shape, const char *what) {
    if (!array || array->type != FN_JSON_ARRAY || array->count < 1 || array->count > 3)
        return fn_error(FN_EINVAL, "spec: %s must be a list of 1 to 3 positive sizes", what);
    shape->ndim = (int)array->count;
    int64_t total = 1;
    for (size_t i = 0; i < array->count; i++) {
        const fn_json *d = &array->items[i];
        if (d->type != FN_JSON_NUMBER || d->number < 1 || d->number > (double)INT32_MAX ||
            d->number != (double)(int64_t)d->number)
            return fn_error(FN_EINVAL, "spec: %s[%zu] must be an integer in [1, 2^31)", what, i);
        shape->dim[i] = (int64_t)d->number;
        total *= shape->dim[i];
        if (total > ((int64_t)1 << 40))
            return fn_error(FN_EINVAL, "spec: %s is too large", what);
    }
    return FN_OK;
}

/* Node names -> indices, so that a spec of many nodes builds in linear time (a hostile file may
 * hold FN_SPEC_MAX_NODES of them): open addressing, -1 for an empty slot. Holds the nodes built
 * so far, so a lookup finds only earlier nodes. */
typedef struct {
    int *slot;
    size_t mask;
} name_table;

static size_t name_hash(const char *name) {
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (const unsigned char *c = (const unsigned char *)name; *c; c++) h = (h ^ *c) * 1099511628211u;
    return (size_t)h;
}

/* The slot holding `name`, or the empty slot where it would go. */
static size_t name_slot(const name_table *t, const fn_model *m, const char *name) {
    size_t i = name_hash(name) & t->mask;
    while (t->slot[i] >= 0 && strcmp(m->nodes[t->slot[i]].name, name) != 0) i = (i + 1) & t->mask;
    return i;
}

/* Finds an earlier node by name; FN_MODEL_INPUT for "input". */
static fn_status resolve_input(const fn_model *m, const name_table *t, const char *name,
                               const char *who, int *out) {
    if (strcmp(name, "input") == 0) {
        *out = FN_MODEL_INPUT;
        return FN_OK;
    }
    int found = t->slot[name_slot(t, m, name)];
    if (found >= 0) {
        *out = found;
        return FN_OK;
    }
    return fn_error(FN_EINVAL, "%s: '%s' is not an earlier node (nodes are listed in order)", who,
                    name);
}

static fn_status build_node(fn_model *m, name_table *t, int index, const fn_json *spec) {
    fn_node *node = &m->nodes[index];
    char where[32];
    snprintf(where, sizeof where, "nodes[%d]", index);
    if (spec->type != FN_JSON_OBJECT)
        return fn_error(FN_EINVAL, "spec: %s must be an object", where);
    const char *name, *type;
    FN_TRY(fn_json_get_string(spec, "name", 1, NULL, &name, where));
    FN_TRY(fn_json_get_string(spec, "op", 1, NULL, &type, where));
    size_t name_length = strlen(name);
    if (name_length == 0 || name_length > FN_SPEC_MAX_NAME || strcmp(name, "input") == 0)
        return fn_error(FN_EINVAL, "spec: %s has an invalid name '%s'", where, name);
    size_t slot = name_slot(t, m, name);
    if (t->slot[slot] >= 0) return fn_error(FN_EINVAL, "spec: two nodes are named '%s'", name);
    node->name = malloc(name_length + 1);
    if (!node->name) return fn_error(FN_ENOMEM, "spec: out of memory");
    memcpy(node->name, name, name_length + 1);
    node->op = fn_op_find(type);
    if (!node->op) return unknown_op_error(name, type);

    const fn_json *inputs = fn_json_get(spec, "inputs");
    if (!inputs) {
        node->n_inputs = 1;
        node->input[0] = index == 0 ? FN_MODEL_INPUT : index - 1;
    } else {
        if (inputs->type != FN_JSON_ARRAY || inputs->count < 1 || inputs->count > FN_MAX_INPUTS)
            return fn_error(FN_EINVAL, "node '%s': inputs must be a list of 1 to %d names", name,
                            FN_MAX_INPUTS);
        node->n_inputs = (int)inputs->count;
        for (size_t j = 0; j < inputs->count; j++) {
            if (inputs->items[j].type != FN_JSON_STRING)
                return fn_error(FN_EINVAL, "node '%s': inputs[%zu] must be a name", name, j);
            char who[FN_SPEC_MAX_NAME + 32];
            snprintf(who, sizeof who, "node '%s': inputs[%zu]", name, j);
            FN_TRY(resolve_input(m, t, inputs->items[j].string, who, &node->input[j]));
        }
    }
    t->slot[slot] = index; /* only now: a node cannot be its own input */
    if (node->n_inputs < node->op->min_inputs || node->n_inputs > node->op->max_inputs)
        return fn_error(FN_EINVAL, "node '%s': op '%s' takes %d to %d inputs, got %d", name, type,
                        node->op->min_inputs, node->op->max_inputs, node->n_inputs);
    for (int j = 0; j < node->n_inputs; j++)
        node->in_shape[j] =
            node->input[j] == FN_MODEL_INPUT ? m->input_shape : m->nodes[node->input[j]].out_shape;
    FN_TRY(node->op->configure(node, spec));
    node->out_size = fn_shape_size(&node->out_shape);
    return FN_OK;
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Lays the declared parameters out in the parameter arena and the buffers in the buffer arena,
 * each at a 64-byte boundary. */
static fn_status layout_params(fn_model *m) {
    int count = 0;
    for (int i = 0; i < m->n_nodes; i++) count += m->nodes[i].n_params;
    m->params = calloc(count ? (size_t)count : 1, sizeof *m->params);
    if (!m->params) return fn_error(FN_ENOMEM, "spec: out of memory");
    const int64_t align = 64 / (int64_t)fn_dtype_size(m->dtype);
    int64_t offsets[2] = {0, 0}; /* parameters, buffers */
    for (int i = 0; i < m->n_nodes; i++) {
        fn_node *node = &m->nodes[i];
        for (int p = 0; p < node->n_params; p++) {
            fn_param *param = &m->params[m->n_params];
            size_t length = strlen(node->name) + 1 + strlen(node->param_decl[p].name) + 1;
            param->name = malloc(length);
            if (!param->name) return fn_error(FN_ENOMEM, "spec: out of memory");
            snprintf(param->name, length, "%s.%s", node->name, node->param_decl[p].name);
            const fn_param_decl *decl = &node->param_decl[p];
            int64_t *offset = &offsets[decl->is_buffer];
            param->shape = decl->shape;
            param->count = fn_shape_size(&param->shape);
            param->offset = *offset;
            param->node = i;
            param->is_buffer = decl->is_buffer;
            param->is_integer = decl->is_integer;
            node->param_index[p] = m->n_params++;
            *offset += (param->count + align - 1) / align * align;
            if (*offset > ((int64_t)1 << 40)) return fn_error(FN_EINVAL, "spec: model too large");
        }
    }
    m->param_total = offsets[0];
    m->buffer_total = offsets[1];
    /* Distinct node names can still give equal parameter names ("a" + "b.c", "a.b" + "c"):
     * sorted, any repeat is between neighbours. */
    if (m->n_params < 2) return FN_OK;
    const char **sorted = malloc((size_t)m->n_params * sizeof *sorted);
    if (!sorted) return fn_error(FN_ENOMEM, "spec: out of memory");
    for (int i = 0; i < m->n_params; i++) sorted[i] = m->params[i].name;
    qsort(sorted, (size_t)m->n_params, sizeof *sorted, compare_names);
    fn_status status = FN_OK;
    for (int i = 1; i < m->n_params && status == FN_OK; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            status = fn_error(FN_EINVAL, "spec: two parameters are named '%s'", sorted[i]);
    free(sorted);
    return status;
}

/* Marks, for each input of each node, whether backward accumulates into its gradient: the
 * first consumer visited in reverse order writes, later ones add. */
static fn_status plan_gradient_flow(fn_model *m) {
    bool *written = calloc((size_t)m->n_nodes + 1, sizeof *written);
    if (!written) return fn_error(FN_ENOMEM, "spec: out of memory");
    bool *model_input_written = &written[m->n_nodes];
    written[m->output_node] = true;
    for (int i = m->n_nodes - 1; i >= 0; i--) {
        fn_node *node = &m->nodes[i];
        if (!written[i]) {
            free(written);
            return fn_error(FN_EINVAL, "spec: node '%s' does not contribute to the output '%s'",
                            node->name, m->nodes[m->output_node].name);
        }
        for (int j = 0; j < node->n_inputs; j++) {
            bool *flag = node->input[j] == FN_MODEL_INPUT ? model_input_written
                                                          : &written[node->input[j]];
            node->grad_in_accumulate[j] = *flag;
            *flag = true;
        }
    }
    free(written);
    return FN_OK;
}

fn_status fn_spec_build(const char *spec_json, fn_model *m) {
    fn_json *spec = NULL;
    FN_TRY(fn_json_parse(spec_json, strlen(spec_json), &spec));
    fn_status status = FN_OK;
    const char *format, *dtype;
    int64_t version, seed;
    const fn_json *nodes;
    name_table names = {NULL, 0};
    if (spec->type != FN_JSON_OBJECT) {
        status = fn_error(FN_EINVAL, "spec: must be a JSON object");
        goto done;
    }
    if ((status = fn_json_get_string(spec, "format", 1, NULL, &format, "spec")) ||
        (status = fn_json_get_int(spec, "version", 1, 0, &version, "spec")) ||
        (status = fn_json_get_string(spec, "dtype", 0, "float32", &dtype, "spec")) ||
        (status = fn_json_get_int(spec, "seed", 0, 0, &seed, "spec")))
        goto done;
    if (strcmp(format, "fastnet.model") != 0 || version != 1) {
        status = fn_error(FN_EINVAL, "spec: expected format 'fastnet.model' version 1, got '%s' "
                                     "version %lld", format, (long long)version);
        goto done;
    }
    if (strcmp(dtype, "float32") == 0) m->dtype = FN_FLOAT32;
    else if (strcmp(dtype, "float64") == 0) m->dtype = FN_FLOAT64;
    else {
        status = fn_error(FN_EINVAL, "spec: dtype must be 'float32' or 'float64', got '%s'", dtype);
        goto done;
    }
    m->seed = (uint64_t)seed;
    if ((status = read_shape(fn_json_get(spec, "input_shape"), &m->input_shape, "input_shape")))
        goto done;
    m->input_size = fn_shape_size(&m->input_shape);

    nodes = fn_json_get(spec, "nodes");
    if (!nodes || nodes->type != FN_JSON_ARRAY || nodes->count < 1 ||
        nodes->count > FN_SPEC_MAX_NODES) {
        status = fn_error(FN_EINVAL, "spec: nodes must be a list of 1 to %d nodes",
                          FN_SPEC_MAX_NODES);
        goto done;
    }
    m->nodes = calloc(nodes->count, sizeof *m->nodes);
    size_t capacity = 16;
    while (capacity < 2 * nodes->count) capacity *= 2;
    names.slot = malloc(capacity * sizeof *names.slot);
    names.mask = capacity - 1;
    if (names.slot)
        for (size_t i = 0; i < capacity; i++) names.slot[i] = -1;
    if (!m->nodes || !names.slot) {
        status = fn_error(FN_ENOMEM, "spec: out of memory");
        goto done;
    }
    for (size_t i = 0; i < nodes->count; i++) {
        m->n_nodes = (int)i + 1; /* so that a failure frees what was built */
        m->nodes[i].index = (int)i;
        if ((status = build_node(m, &names, (int)i, &nodes->items[i]))) goto done;
    }

    m->output_node = m->n_nodes - 1;
    const char *output;
    if ((status = fn_json_get_string(spec, "output", 0, m->nodes[m->output_node].name, &output,
                                     "spec")))
        goto done;
    if ((status = resolve_input(m, &names, output, "spec: output", &m->output_node)))
        goto done;
    if (m->output_node == FN_MODEL_INPUT) {
        status = fn_error(FN_EINVAL, "spec: the output must be a node, not the input");
        goto done;
    }
    m->output_size = m->nodes[m->output_node].out_size;
    if ((status = layout_params(m)) || (status = plan_gradient_flow(m))) goto done;
done:
    free(names.slot);
    fn_json_free(spec);
    return status;
}
