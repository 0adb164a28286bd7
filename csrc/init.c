/* init.c — parameter initialisation: the schemes of a spec's "init" attributes, resolved to a
 * distribution, and fills from the counter-based RNG.
 *
 * Element i of a parameter gets the i-th value of its own stream, so initial weights do not depend
 * on the thread count (the fills run in parallel) or on which other parameters exist.
 *
 * Schemes follow torch.nn.init, with fan_in and fan_out as PyTorch's
 * _calculate_fan_in_and_fan_out computes them (dim 1 and dim 0 of the weight, each times the
 * kernel's area) and gains as its calculate_gain:
 *
 *     default             U(-1/sqrt(fan_in), 1/sqrt(fan_in))  (reset_parameters of Linear, Conv2d)
 *     uniform(a=0, b=1)   U(a, b)
 *     normal(mean=0, std=1)
 *     normal_fan_in, lecun_normal     N(0, 1/fan_in)
 *     lecun_uniform                   U(-sqrt(3/fan_in), sqrt(3/fan_in))
 *     xavier_uniform(gain=1)          U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out))
 *     xavier_normal(gain=1)           N(0, gain^2 * 2 / (fan_in + fan_out))
 *     kaiming_uniform, he_uniform     U(-b, b), b = gain * sqrt(3 / fan)
 *     kaiming_normal, he_normal       N(0, gain^2 / fan)
 *         (a=0, mode="fan_in" | "fan_out", nonlinearity="leaky_relu": PyTorch's defaults)
 *     zeros, ones, constant(value)
 */
#include "model.h"

#include <stdio.h>
#include <string.h>

uint64_t fn_param_stream(const fn_node *node, int p) {
    /* FNV-1a over "<node>.<param>" */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const char *s = node->name; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
    h = (h ^ '.') * 0x100000001b3ULL;
    for (const char *s = node->param_decl[p].name; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
    return h;
}

/* ---------------------------------------------------------------- fills
 *
 * Values are computed in double and rounded once to the dtype. Every element is a pure function
 * of its index, so splitting the loop over threads changes nothing but the time. */

void fn_fill_uniform(fn_dtype dtype, void *dst, int64_t count, double low, double high,
                     uint64_t seed, uint64_t stream) {
    double width = high - low;
    int t = fn_threads_for(count, fn_threads_get());
    if (dtype == FN_FLOAT64) {
        double *d = dst;
        FN_PARALLEL_LOOP(t, i, count, { d[i] = low + width * fn_rng_uniform(seed, stream, i); });
    } else {
        float *f = dst;
        FN_PARALLEL_LOOP(t, i, count,
                         { f[i] = (float)(low + width * fn_rng_uniform(seed, stream, i)); });
    }
}

void fn_fill_normal(fn_dtype dtype, void *dst, int64_t count, double mean, double std,
                    uint64_t seed, uint64_t stream) {
    /* A normal draw costs a log, a sqrt and a cos: worth threads from fewer elements. */
    int t = fn_threads_for(8 * count, fn_threads_get());
    if (dtype == FN_FLOAT64) {
        double *d = dst;
        FN_PARALLEL_LOOP(t, i, count, { d[i] = mean + std * fn_rng_normal(seed, stream, i); });
    } else {
        float *f = dst;
        FN_PARALLEL_LOOP(t, i, count,
                         { f[i] = (float)(mean + std * fn_rng_normal(seed, stream, i)); });
    }
}

void fn_fill_constant(fn_dtype dtype, void *dst, int64_t count, double value) {
    if (dtype == FN_FLOAT64) {
        double *d = dst;
        for (int64_t i = 0; i < count; i++) d[i] = value;
    } else {
        float *f = dst;
        for (int64_t i = 0; i < count; i++) f[i] = (float)value;
    }
}

void fn_fill_dist(const fn_init_dist *dist, fn_dtype dtype, void *dst, int64_t count,
                  uint64_t seed, uint64_t stream) {
    switch (dist->kind) {
    case FN_INIT_UNIFORM: fn_fill_uniform(dtype, dst, count, dist->a, dist->b, seed, stream); break;
    case FN_INIT_NORMAL: fn_fill_normal(dtype, dst, count, dist->a, dist->b, seed, stream); break;
    case FN_INIT_CONSTANT: fn_fill_constant(dtype, dst, count, dist->a); break;
    }
}

/* ---------------------------------------------------------------- schemes */

typedef enum {
    SCHEME_DEFAULT,
    SCHEME_UNIFORM,
    SCHEME_NORMAL,
    SCHEME_NORMAL_FAN_IN,
    SCHEME_LECUN_UNIFORM,
    SCHEME_LECUN_NORMAL,
    SCHEME_XAVIER_UNIFORM,
    SCHEME_XAVIER_NORMAL,
    SCHEME_KAIMING_UNIFORM,
    SCHEME_KAIMING_NORMAL,
    SCHEME_ZEROS,
    SCHEME_ONES,
    SCHEME_CONSTANT,
} scheme_id;

static const struct {
    const char *name;
    scheme_id id;
    const char *const params[4]; /* the keys its object may hold besides "scheme" */
    bool for_bias;               /* needs no fans, so a bias may use it */
} schemes[] = {
    {"default", SCHEME_DEFAULT, {NULL}, true},
    {"zeros", SCHEME_ZEROS, {NULL}, true},
    {"ones", SCHEME_ONES, {NULL}, true},
    {"constant", SCHEME_CONSTANT, {"value", NULL}, true},
    {"uniform", SCHEME_UNIFORM, {"a", "b", NULL}, true},
    {"normal", SCHEME_NORMAL, {"mean", "std", NULL}, true},
    {"normal_fan_in", SCHEME_NORMAL_FAN_IN, {NULL}, false},
    {"lecun_uniform", SCHEME_LECUN_UNIFORM, {NULL}, false},
    {"lecun_normal", SCHEME_LECUN_NORMAL, {NULL}, false},
    {"xavier_uniform", SCHEME_XAVIER_UNIFORM, {"gain", NULL}, false},
    {"xavier_normal", SCHEME_XAVIER_NORMAL, {"gain", NULL}, false},
    {"kaiming_uniform", SCHEME_KAIMING_UNIFORM, {"a", "mode", "nonlinearity", NULL}, false},
    {"kaiming_normal", SCHEME_KAIMING_NORMAL, {"a", "mode", "nonlinearity", NULL}, false},
    {"he_uniform", SCHEME_KAIMING_UNIFORM, {"a", "mode", "nonlinearity", NULL}, false},
    {"he_normal", SCHEME_KAIMING_NORMAL, {"a", "mode", "nonlinearity", NULL}, false},
};
#define N_SCHEMES (sizeof schemes / sizeof schemes[0])

/* PyTorch's calculate_gain; false for a name it does not know. `a` is leaky_relu's slope. */
static bool gain_of(const char *nonlinearity, double a, double *gain) {
    static const char *const unit[] = {"linear",           "conv1d",           "conv2d",
                                       "conv3d",           "conv_transpose1d", "conv_transpose2d",
                                       "conv_transpose3d", "sigmoid"};
    for (size_t i = 0; i < sizeof unit / sizeof unit[0]; i++)
        if (strcmp(nonlinearity, unit[i]) == 0) return *gain = 1, true;
    if (strcmp(nonlinearity, "tanh") == 0) return *gain = 5.0 / 3, true;
    if (strcmp(nonlinearity, "relu") == 0) return *gain = sqrt(2.0), true;
    if (strcmp(nonlinearity, "leaky_relu") == 0) return *gain = sqrt(2 / (1 + a * a)), true;
    if (strcmp(nonlinearity, "selu") == 0) return *gain = 0.75, true;
    return false;
}

/* "a, b, c" of the schemes a weight (or a bias) may use, for messages. */
static const char *scheme_list(bool is_bias, char *buf, size_t size) {
    buf[0] = 0;
    for (size_t i = 0; i < N_SCHEMES; i++) {
        if (is_bias && !schemes[i].for_bias) continue;
        strncat(buf, buf[0] ? ", " : "", size - strlen(buf) - 1);
        strncat(buf, schemes[i].name, size - strlen(buf) - 1);
    }
    return buf;
}

/* Every key of an init object must be "scheme" or one of its scheme's parameters: a misspelt
 * "std" would otherwise be ignored without a word. */
static fn_status check_keys(const fn_json *object, size_t scheme, const char *where) {
    for (size_t k = 0; k < object->count; k++) {
        const char *key = object->keys[k];
        bool known = strcmp(key, "scheme") == 0;
        for (int p = 0; !known && schemes[scheme].params[p]; p++)
            known = strcmp(key, schemes[scheme].params[p]) == 0;
        if (known) continue;
        char takes[64] = "";
        for (int p = 0; schemes[scheme].params[p]; p++) {
            strncat(takes, p ? ", " : "", sizeof takes - strlen(takes) - 1);
            strncat(takes, schemes[scheme].params[p], sizeof takes - strlen(takes) - 1);
        }
        return fn_error(FN_EINVAL, "%s: scheme '%s' has no parameter \"%s\" (%s%s)", where,
                        schemes[scheme].name, key, takes[0] ? "it takes: " : "it takes none",
                        takes);
    }
    return FN_OK;
}

/* The typed getters, for an init given as a bare name (object NULL): every parameter takes its
 * default, and a required one is missing. */
static fn_status get_number(const fn_json *object, const char *key, int required, double fallback,
                            double *out, const char *where) {
    if (object) return fn_json_get_number(object, key, required, fallback, out, where);
    if (required) return fn_error(FN_EINVAL, "%s: missing \"%s\"", where, key);
    *out = fallback;
    return FN_OK;
}

static fn_status get_string(const fn_json *object, const char *key, const char *fallback,
                            const char **out, const char *where) {
    if (object) return fn_json_get_string(object, key, 0, fallback, out, where);
    *out = fallback;
    return FN_OK;
}

/* The distribution of scheme `s` with the parameters in `object` (NULL: all defaults). */
static fn_status resolve(size_t s, const fn_json *object, int64_t fan_in, int64_t fan_out,
                         fn_init_dist *out, const char *where) {
    const char *name = schemes[s].name;
    /* Fans are at least 1: every size in a spec is. */
    double fan_mean = 0.5 * ((double)fan_in + (double)fan_out);
    double gain = 1, a = 0, b = 0;
    const char *mode = "fan_in", *nonlinearity = "leaky_relu";
    switch (schemes[s].id) {
    case SCHEME_DEFAULT:
        b = 1 / sqrt((double)fan_in);
        *out = (fn_init_dist){FN_INIT_UNIFORM, -b, b};
        return FN_OK;
    case SCHEME_ZEROS: *out = (fn_init_dist){FN_INIT_CONSTANT, 0, 0}; return FN_OK;
    case SCHEME_ONES: *out = (fn_init_dist){FN_INIT_CONSTANT, 1, 0}; return FN_OK;
    case SCHEME_CONSTANT:
        FN_TRY(get_number(object, "value", 1, 0, &a, where));
        *out = (fn_init_dist){FN_INIT_CONSTANT, a, 0};
        return FN_OK;
    case SCHEME_UNIFORM:
        FN_TRY(get_number(object, "a", 0, 0, &a, where));
        FN_TRY(get_number(object, "b", 0, 1, &b, where));
        if (!(a <= b))
            return fn_error(FN_EINVAL, "%s: uniform needs a <= b, got a=%g, b=%g", where, a, b);
        *out = (fn_init_dist){FN_INIT_UNIFORM, a, b};
        return FN_OK;
    case SCHEME_NORMAL:
        FN_TRY(get_number(object, "mean", 0, 0, &a, where));
        FN_TRY(get_number(object, "std", 0, 1, &b, where));
        if (!(b >= 0))
            return fn_error(FN_EINVAL, "%s: normal needs std >= 0, got %g", where, b);
        *out = (fn_init_dist){FN_INIT_NORMAL, a, b};
        return FN_OK;
    case SCHEME_NORMAL_FAN_IN:
    case SCHEME_LECUN_NORMAL:
        *out = (fn_init_dist){FN_INIT_NORMAL, 0, 1 / sqrt((double)fan_in)};
        return FN_OK;
    case SCHEME_LECUN_UNIFORM:
        b = sqrt(3 / (double)fan_in);
        *out = (fn_init_dist){FN_INIT_UNIFORM, -b, b};
        return FN_OK;
    case SCHEME_XAVIER_UNIFORM:
    case SCHEME_XAVIER_NORMAL:
        FN_TRY(get_number(object, "gain", 0, 1, &gain, where));
        if (!(gain > 0))
            return fn_error(FN_EINVAL, "%s: %s needs gain > 0, got %g", where, name, gain);
        /* std = gain * sqrt(2 / (fan_in + fan_out)); a uniform of that std has bound sqrt(3) std */
        b = gain / sqrt(fan_mean);
        *out = schemes[s].id == SCHEME_XAVIER_NORMAL
                   ? (fn_init_dist){FN_INIT_NORMAL, 0, b}
                   : (fn_init_dist){FN_INIT_UNIFORM, -sqrt(3.0) * b, sqrt(3.0) * b};
        return FN_OK;
    case SCHEME_KAIMING_UNIFORM:
    case SCHEME_KAIMING_NORMAL: {
        FN_TRY(get_number(object, "a", 0, 0, &a, where));
        FN_TRY(get_string(object, "mode", "fan_in", &mode, where));
        FN_TRY(get_string(object, "nonlinearity", "leaky_relu", &nonlinearity, where));
        if (strcmp(mode, "fan_in") != 0 && strcmp(mode, "fan_out") != 0)
            return fn_error(FN_EINVAL, "%s: mode must be 'fan_in' or 'fan_out', got '%s'", where,
                            mode);
        if (!gain_of(nonlinearity, a, &gain))
            return fn_error(FN_EINVAL,
                            "%s: unknown nonlinearity '%s' (known: linear, conv1d, conv2d, "
                            "conv3d, conv_transpose1d, conv_transpose2d, conv_transpose3d, "
                            "sigmoid, tanh, relu, leaky_relu, selu)",
                            where, nonlinearity);
        double fan = (double)(strcmp(mode, "fan_in") == 0 ? fan_in : fan_out);
        b = gain / sqrt(fan);
        *out = schemes[s].id == SCHEME_KAIMING_NORMAL
                   ? (fn_init_dist){FN_INIT_NORMAL, 0, b}
                   : (fn_init_dist){FN_INIT_UNIFORM, -sqrt(3.0) * b, sqrt(3.0) * b};
        return FN_OK;
    }
    }
    return fn_error(FN_EINVAL, "%s: scheme '%s' is not handled", where, name);
}

fn_status fn_init_parse(const fn_json *spec, const char *key, bool is_bias, int64_t fan_in,
                        int64_t fan_out, fn_init_dist *out, const char *node_name) {
    char where[300];
    snprintf(where, sizeof where, "node '%s': %s", node_name, key);
    const fn_json *value = fn_json_get(spec, key);
    const fn_json *object = NULL;
    const char *name = "default";
    if (value && value->type == FN_JSON_STRING) {
        name = value->string;
    } else if (value && value->type == FN_JSON_OBJECT) {
        object = value;
        FN_TRY(fn_json_get_string(object, "scheme", 1, NULL, &name, where));
    } else if (value && value->type != FN_JSON_NULL) {
        return fn_error(FN_EINVAL,
                        "%s must be a scheme name or an object {\"scheme\": name, ...}, got %s",
                        where, fn_json_type_name(value->type));
    }
    char known[400];
    size_t s = 0;
    while (s < N_SCHEMES && strcmp(schemes[s].name, name) != 0) s++;
    if (s == N_SCHEMES)
        return fn_error(FN_EINVAL, "%s: unknown scheme '%s' (known: %s)", where, name,
                        scheme_list(is_bias, known, sizeof known));
    if (is_bias && !schemes[s].for_bias)
        return fn_error(FN_EINVAL, "%s: scheme '%s' is for weights; a bias takes %s", where, name,
                        scheme_list(true, known, sizeof known));
    if (object) FN_TRY(check_keys(object, s, where));

    FN_TRY(resolve(s, object, fan_in, fan_out, out, where));
    /* Beyond float32's range a float32 model would start from Inf. */
    if (!(fabs(out->a) <= FLT_MAX && fabs(out->b) <= FLT_MAX))
        return fn_error(FN_EINVAL, "%s: scheme '%s' with values beyond float32's range (%g)",
                        where, name, (double)FLT_MAX);
    return FN_OK;
}
