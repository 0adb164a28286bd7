/* model_file.c — a model as a safetensors file: parameters under their PyTorch names, the spec and
 * the library version in __metadata__. */
#include "model.h"
#include "safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FN_META_SPEC "fastnet.spec"
#define FN_META_VERSION "fastnet.version"

fn_status fn_model_save(const fn_model *m, const char *path) {
    if (!m || !path) return fn_error(FN_EINVAL, "save: model or path is NULL");
    fn_st_tensor *tensors = calloc(m->n_params ? (size_t)m->n_params : 1, sizeof *tensors);
    if (!tensors) return fn_error(FN_ENOMEM, "save: out of memory");
    size_t elem = fn_dtype_size(m->dtype);
    for (int i = 0; i < m->n_params; i++) {
        const fn_param *p = &m->params[i];
        tensors[i].name = p->name;
        tensors[i].dtype = m->dtype == FN_FLOAT64 ? FN_ST_F64 : FN_ST_F32;
        tensors[i].ndim = p->shape.ndim;
        for (int d = 0; d < p->shape.ndim; d++) tensors[i].shape[d] = p->shape.dim[d];
        tensors[i].data = (const char *)m->param_arena + (size_t)p->offset * elem;
    }
    const char *keys[] = {FN_META_SPEC, FN_META_VERSION};
    const char *values[] = {m->spec_json, FN_VERSION_STRING};
    fn_status status = fn_safetensors_write(path, tensors, (size_t)m->n_params, keys, values, 2);
    free(tensors);
    return status;
}

/* Copies the file's tensors into the model, checking that each one exists, has the model's
 * dtype and shape and holds only finite values; and that the file holds nothing else. */
static fn_status load_params(fn_model *m, const fn_safetensors *file, const char *path) {
    size_t elem = fn_dtype_size(m->dtype);
    fn_st_dtype want = m->dtype == FN_FLOAT64 ? FN_ST_F64 : FN_ST_F32;
    for (int i = 0; i < m->n_params; i++) {
        const fn_param *p = &m->params[i];
        const fn_st_tensor *t = fn_safetensors_find(file, p->name);
        if (!t) return fn_error(FN_EFORMAT, "%s: tensor '%s' is missing", path, p->name);
        if (t->dtype != want)
            return fn_error(FN_EFORMAT, "%s: tensor '%s' is %s, the model is %s", path, p->name,
                            fn_st_dtype_name(t->dtype), fn_dtype_name(m->dtype));
        bool same = t->ndim == p->shape.ndim;
        for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == p->shape.dim[d];
        if (!same) {
            char expected[64];
            return fn_error(FN_EFORMAT, "%s: tensor '%s' has %d dimensions, expected shape %s",
                            path, p->name, t->ndim, fn_shape_str(&p->shape, expected, sizeof expected));
        }
        if (fn_first_nonfinite(m->dtype, t->data, p->count) >= 0)
            return fn_error(FN_EFORMAT, "%s: tensor '%s' contains NaN or Inf", path, p->name);
        memcpy((char *)m->param_arena + (size_t)p->offset * elem, t->data, (size_t)p->count * elem);
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

fn_status fn_model_load(const char *path, fn_model **out) {
    if (!out || !path) return fn_error(FN_EINVAL, "load: path or out is NULL");
    *out = NULL;
    fn_safetensors *file = NULL;
    FN_TRY(fn_safetensors_read(path, &file));
    fn_status status;
    fn_model *m = NULL;
    const char *spec = fn_safetensors_metadata(file, FN_META_SPEC);
    if (!spec) {
        status = fn_error(FN_EFORMAT, "%s: not a fastnet model (no '%s' in its metadata)", path,
                          FN_META_SPEC);
        goto done;
    }
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
