/* model_file.c — a model as a safetensors file: parameters under their PyTorch names, the spec and
 * the library version in __metadata__. */
#include "model.h"
#include "safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FN_META_SPEC "fastnet.spec"
#define FN_META_VERSION "fastnet.version"

/* Where tensor i lives: the parameter arena or the buffer arena. */
static void *tensor_data(const fn_model *m, const fn_param *p) {
    void *arena = p->is_buffer ? m->buffer_arena : m->param_arena;
    return (char *)arena + (size_t)p->offset * fn_dtype_size(m->dtype);
}

static double real_at(fn_dtype dtype, const void *data, int64_t i) {
    return dtype == FN_FLOAT64 ? ((const double *)data)[i] : ((const float *)data)[i];
}

fn_status fn_model_save(const fn_model *m, const char *path) {
    if (!m || !path) return fn_error(FN_EINVAL, "save: model or path is NULL");
    /* Counts kept in reals (num_batches_tracked) are written as int64, as PyTorch has them. */
    size_t integers = 0;
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].is_integer) integers += (size_t)m->params[i].count;
    fn_st_tensor *tensors = calloc(m->n_params > 0 ? (size_t)m->n_params : 1, sizeof *tensors);
    int64_t *converted = malloc((integers ? integers : 1) * sizeof *converted);
    if (!tensors || !converted) {
        free(tensors);
        free(converted);
        return fn_error(FN_ENOMEM, "save: out of memory");
    }
    int64_t *next_integer = converted;
    for (int i = 0; i < m->n_params; i++) {
        const fn_param *p = &m->params[i];
        tensors[i].name = p->name;
        tensors[i].ndim = p->shape.ndim;
        for (int d = 0; d < p->shape.ndim; d++) tensors[i].shape[d] = p->shape.dim[d];
        const void *data = tensor_data(m, p);
        if (p->is_integer) {
            for (int64_t k = 0; k < p->count; k++)
                next_integer[k] = (int64_t)real_at(m->dtype, data, k);
            tensors[i].dtype = FN_ST_I64;
            tensors[i].data = next_integer;
            next_integer += p->count;
        } else {
            tensors[i].dtype = m->dtype == FN_FLOAT64 ? FN_ST_F64 : FN_ST_F32;
            tensors[i].data = data;
        }
    }
    const char *keys[] = {FN_META_SPEC, FN_META_VERSION};
    const char *values[] = {m->spec_json, FN_VERSION_STRING};
    fn_status status = fn_safetensors_write(path, tensors, (size_t)m->n_params, keys, values, 2);
    free(tensors);
    free(converted);
    return status;
}

/* Checks that the file holds exactly the model's tensors, each with the model's dtype (int64
 * for counts) and shape. Needs only the model's declared parameters, not its arenas. */
static fn_status check_params(const fn_model *m, const fn_safetensors *file, const char *path) {
    for (int i = 0; i < m->n_params; i++) {
        const fn_param *p = &m->params[i];
        const fn_st_tensor *t = fn_safetensors_find(file, p->name);
        if (!t) return fn_error(FN_EFORMAT, "%s: tensor '%s' is missing", path, p->name);
        fn_st_dtype want = p->is_integer ? FN_ST_I64 : m->dtype == FN_FLOAT64 ? FN_ST_F64 : FN_ST_F32;
        if (t->dtype != want)
            return fn_error(FN_EFORMAT, "%s: tensor '%s' is %s, expected %s", path, p->name,
                            fn_st_dtype_name(t->dtype), fn_st_dtype_name(want));
        bool same = t->ndim == p->shape.ndim;
        for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == p->shape.dim[d];
        if (!same) {
            char expected[64];
            return fn_error(FN_EFORMAT, "%s: tensor '%s' has %d dimensions, expected shape %s",
                            path, p->name, t->ndim, fn_shape_str(&p->shape, expected, sizeof expected));
        }
    }
    if (fn_safetensors_count(file) != (size_t)m->n_params) {
        for (size_t i = 0; i < fn_safetensors_count(file); i++) {
            const char *name = fn_safetensors_tensor(file, i)->name;
            bool known = false;
            for (int j = 0; j < m->n_params && !known; j++) known = strcmp(m->params[j].name, name) == 0;
            if (!known)
                return fn_error(FN_EFORMAT, "%s: unexpected tensor '%s' (not a parameter of the model)",
                                path, name);
        }
    }
    return FN_OK;
}

/* Copies the file's tensors into the model after check_params, checking that every real is
 * finite and every count non-negative. */
static fn_status load_params(fn_model *m, const fn_safetensors *file, const char *path) {
    FN_TRY(check_params(m, file, path));
    size_t elem = fn_dtype_size(m->dtype);
    for (int i = 0; i < m->n_params; i++) {
        const fn_param *p = &m->params[i];
        const fn_st_tensor *t = fn_safetensors_find(file, p->name);
        void *target = tensor_data(m, p);
        if (p->is_integer) {
            const int64_t *counts = t->data;
            for (int64_t k = 0; k < p->count; k++) {
                if (counts[k] < 0)
                    return fn_error(FN_EFORMAT, "%s: tensor '%s' holds a negative count", path,
                                    p->name);
                if (m->dtype == FN_FLOAT64) ((double *)target)[k] = (double)counts[k];
                else ((float *)target)[k] = (float)counts[k];
            }
            continue;
        }
        if (fn_first_nonfinite(m->dtype, t->data, p->count) >= 0)
            return fn_error(FN_EFORMAT, "%s: tensor '%s' contains NaN or Inf", path, p->name);
        memcpy(target, t->data, (size_t)p->count * elem);
    }
    return FN_OK;
}

/* Checks the file's tensors against the spec before the model's arenas are allocated and
 * initialised, so that a small file whose spec declares billions of parameters fails without
 * allocating for them: the file must hold every parameter, so the arenas stay within a small
 * multiple of its size. A spec that does not build passes here; fn_model_create reports it. */
static fn_status precheck_params(const char *spec, const fn_safetensors *file, const char *path) {
    fn_model *probe = calloc(1, sizeof *probe);
    if (!probe) return fn_error(FN_ENOMEM, "%s: out of memory", path);
    fn_status status = FN_OK;
    if (fn_spec_build(spec, probe) == FN_OK) status = check_params(probe, file, path);
    fn_model_free(probe);
    return status;
}

/* Builds the model a parsed file describes; `path` names the source in messages. Frees `file`. */
static fn_status model_from_file(fn_safetensors *file, const char *path, fn_model **out) {
    fn_status status;
    fn_model *m = NULL;
    const char *spec = fn_safetensors_metadata(file, FN_META_SPEC);
    if (!spec) {
        status = fn_error(FN_EFORMAT, "%s: not a fastnet model (no '%s' in its metadata)", path,
                          FN_META_SPEC);
        goto done;
    }
    if ((status = precheck_params(spec, file, path))) goto done;
    if ((status = fn_model_create(spec, &m))) {
        /* Keep the spec's own message, but say which file it came from. */
        char message[512];
        snprintf(message, sizeof message, "%s", fn_last_error());
        status = fn_error(FN_EFORMAT, "%s: invalid model spec: %s", path, message);
        goto done;
    }
    if ((status = load_params(m, file, path))) goto done;
    *out = m;
    m = NULL;
done:
    fn_model_free(m);
    fn_safetensors_free(file);
    return status;
}

fn_status fn_model_load(const char *path, fn_model **out) {
    if (!out || !path) return fn_error(FN_EINVAL, "load: path or out is NULL");
    *out = NULL;
    fn_safetensors *file = NULL;
    FN_TRY(fn_safetensors_read(path, &file));
    return model_from_file(file, path, out);
}

fn_status fn_model_load_bytes(const void *bytes, size_t size, fn_model **out) {
    if (!out) return fn_error(FN_EINVAL, "load: out is NULL");
    *out = NULL;
    fn_safetensors *file = NULL;
    FN_TRY(fn_safetensors_parse(bytes, size, &file));
    return model_from_file(file, "safetensors buffer", out);
}
