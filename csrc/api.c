/* api.c — a model's tensors by name: find, read and write a parameter or a buffer.
 *
 * The arenas are reachable directly (fn_model_params), but a C program that wants one tensor
 * would have to walk fn_model_tensor_info and compute offsets itself; these functions do that
 * and check what a raw write could not: the count, and that the values are finite.
 */
#include "model.h"

#include <stdio.h>
#include <string.h>

/* The tensor called `name`, or NULL with an FN_EINVAL message that lists a few real names (the
 * usual mistake is a name of another framework's numbering). */
static const fn_param *find_param(const fn_model *m, const char *name, const char *what) {
    if (!m) {
        fn_error(FN_EINVAL, "%s: model is NULL", what);
        return NULL;
    }
    if (!name) {
        fn_error(FN_EINVAL, "%s: name is NULL", what);
        return NULL;
    }
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    char known[256] = "";
    for (int i = 0; i < m->n_params; i++) {
        size_t used = strlen(known);
        size_t needed = strlen(m->params[i].name) + 2;
        if (used + needed + 4 >= sizeof known) {
            snprintf(known + used, sizeof known - used, ", ...");
            break;
        }
        snprintf(known + used, sizeof known - used, "%s%s", i ? ", " : "", m->params[i].name);
    }
    fn_error(FN_EINVAL, "%s: the model has no tensor named '%.200s' (it has: %s)", what, name,
             m->n_params ? known : "none");
    return NULL;
}

static void *param_data(const fn_model *m, const fn_param *p) {
    void *arena = p->is_buffer ? m->buffer_arena : m->param_arena;
    return (char *)arena + (size_t)p->offset * fn_dtype_size(m->dtype);
}

static fn_status check_count(const fn_param *p, int64_t count, const char *what) {
    if (count != p->count) {
        char shape[64];
        return fn_error(FN_EINVAL,
                        "%s: tensor '%s' has %lld elements (shape %s), got a count of %lld", what,
                        p->name, (long long)p->count,
                        fn_shape_str(&p->shape, shape, sizeof shape), (long long)count);
    }
    return FN_OK;
}

fn_status fn_model_find_tensor(const fn_model *m, const char *name, fn_tensor_info *info) {
    if (!info) return fn_error(FN_EINVAL, "find_tensor: info is NULL");
    const fn_param *p = find_param(m, name, "find_tensor");
    if (!p) return FN_EINVAL;
    return fn_model_tensor_info(m, (int)(p - m->params), info);
}

fn_status fn_model_get_tensor(const fn_model *m, const char *name, void *dst, int64_t count) {
    const fn_param *p = find_param(m, name, "get_tensor");
    if (!p) return FN_EINVAL;
    FN_TRY(check_count(p, count, "get_tensor"));
    if (!dst) return fn_error(FN_EINVAL, "get_tensor: destination for '%s' is NULL", p->name);
    memcpy(dst, param_data(m, p), (size_t)count * fn_dtype_size(m->dtype));
    return FN_OK;
}

fn_status fn_model_set_tensor(fn_model *m, const char *name, const void *src, int64_t count) {
    const fn_param *p = find_param(m, name, "set_tensor");
    if (!p) return FN_EINVAL;
    FN_TRY(check_count(p, count, "set_tensor"));
    if (!src) return fn_error(FN_EINVAL, "set_tensor: source for '%s' is NULL", p->name);
    /* Everything is checked before the first element is written: a refused call changes nothing. */
    int64_t bad = fn_first_nonfinite(m->dtype, src, count);
    if (bad >= 0)
        return fn_error(FN_EINVAL, "set_tensor: tensor '%s': element %lld is NaN or Inf", p->name,
                        (long long)bad);
    if (p->is_integer) {
        for (int64_t i = 0; i < count; i++) {
            double v = m->dtype == FN_FLOAT64 ? ((const double *)src)[i] : ((const float *)src)[i];
            if (v < 0 || v != floor(v))
                return fn_error(FN_EINVAL,
                                "set_tensor: tensor '%s' is a count: element %lld must be a whole "
                                "number >= 0, got %g",
                                p->name, (long long)i, v);
        }
    }
    memcpy(param_data(m, p), src, (size_t)count * fn_dtype_size(m->dtype));
    return FN_OK;
}
