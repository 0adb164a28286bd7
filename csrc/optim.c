/* optim.c — optimizers, fused over the flat parameter arena: SGD, Adagrad, RMSProp, Adam, AdamW,
 * with parameter groups, L1/L2 penalties, max-norm, and gradient clipping.
 *
 * One pass reads each parameter, its gradient and its state once, whatever the number of layers:
 * the update is memory-bound, so the pass count is what matters. Clipping by norm adds one read of
 * the gradients before it (the norm must be known, and finite, before anything changes). The
 * arithmetic follows the update rules as PyTorch documents them (see fn_optimizer in fastnet.h),
 * in the same order of operations; the per-update scalars (scheduled rates, bias corrections) are
 * computed once per group in double.
 *
 * The pass walks the parameter tensors ("segments", each with the padding after it, so that they
 * tile the arena), each with its group's coefficients; the threads split the arena into
 * contiguous ranges, a range never splitting a row that max-norm rescales. Every element's
 * arithmetic, each row norm and the gradient norm (fixed blocks summed in order) are the same
 * whatever the thread count, so the weights are too.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

#include <string.h>

static const char *optimizer_name(fn_optimizer_kind kind) {
    switch (kind) {
    case FN_OPT_SGD: return "SGD";
    case FN_OPT_ADAM: return "Adam";
    case FN_OPT_ADAMW: return "AdamW";
    case FN_OPT_ADAGRAD: return "Adagrad";
    case FN_OPT_RMSPROP: return "RMSProp";
    }
    return "optimizer";
}

int fn_optimizer_slots(const fn_optimizer *opt) {
    switch (opt->kind) {
    case FN_OPT_SGD: return 1;     /* momentum buffer (unused when momentum == 0) */
    case FN_OPT_ADAGRAD: return 1; /* sum of squared gradients */
    case FN_OPT_RMSPROP:           /* square_avg, momentum_buffer, grad_avg */
        return opt->centered ? 3 : opt->momentum > 0 ? 2 : 1;
    case FN_OPT_ADAM:
    case FN_OPT_ADAMW: return opt->amsgrad ? 3 : 2; /* exp_avg, exp_avg_sq, max_exp_avg_sq */
    }
    return 0;
}

/* Comparisons are written as !(x >= 0) so that NaN fails them too. */
static bool finite_nonnegative(double x) { return x >= 0 && isfinite(x); }

fn_status fn_optimizer_check(const fn_optimizer *opt) {
    if (!opt) return fn_error(FN_EINVAL, "optimizer: NULL");
    if ((unsigned)opt->kind > FN_OPT_RMSPROP)
        return fn_error(FN_EINVAL, "optimizer: unknown kind %d", (int)opt->kind);
    const char *name = optimizer_name(opt->kind);
    if (!finite_nonnegative(opt->lr))
        return fn_error(FN_EINVAL, "%s: lr must be a finite number >= 0, got %g", name, opt->lr);
    if (!finite_nonnegative(opt->weight_decay))
        return fn_error(FN_EINVAL, "%s: weight_decay must be a finite number >= 0, got %g", name,
                        opt->weight_decay);
    if (!(opt->clip_grad_norm >= 0))
        return fn_error(FN_EINVAL,
                        "%s: clip_grad_norm must be >= 0 (0: off, INFINITY: only measure the "
                        "norm), got %g",
                        name, opt->clip_grad_norm);
    if (!finite_nonnegative(opt->clip_grad_value))
        return fn_error(FN_EINVAL,
                        "%s: clip_grad_value must be a finite number >= 0 (0: off), got %g", name,
                        opt->clip_grad_value);
    switch (opt->kind) {
    case FN_OPT_SGD:
        if (!finite_nonnegative(opt->momentum))
            return fn_error(FN_EINVAL, "SGD: momentum must be a finite number >= 0, got %g",
                            opt->momentum);
        if (!(opt->dampening >= 0 && opt->dampening <= 1))
            return fn_error(FN_EINVAL, "SGD: dampening must be in [0, 1], got %g", opt->dampening);
        if (opt->nesterov && (opt->momentum <= 0 || opt->dampening != 0))
            return fn_error(FN_EINVAL, "SGD: Nesterov momentum needs momentum > 0 and dampening 0");
        break;
    case FN_OPT_ADAM:
    case FN_OPT_ADAMW:
        if (!(opt->beta1 >= 0 && opt->beta1 < 1) || !(opt->beta2 >= 0 && opt->beta2 < 1))
            return fn_error(FN_EINVAL, "%s: betas must be in [0, 1), got (%g, %g)", name,
                            opt->beta1, opt->beta2);
        break;
    case FN_OPT_ADAGRAD:
        if (!finite_nonnegative(opt->lr_decay))
            return fn_error(FN_EINVAL, "Adagrad: lr_decay must be a finite number >= 0, got %g",
                            opt->lr_decay);
        if (!finite_nonnegative(opt->initial_accumulator_value))
            return fn_error(FN_EINVAL,
                            "Adagrad: initial_accumulator_value must be a finite number >= 0, "
                            "got %g",
                            opt->initial_accumulator_value);
        break;
    case FN_OPT_RMSPROP:
        if (!(opt->alpha >= 0 && opt->alpha <= 1))
            return fn_error(FN_EINVAL, "RMSProp: alpha must be in [0, 1], got %g", opt->alpha);
        if (!finite_nonnegative(opt->momentum))
            return fn_error(FN_EINVAL, "RMSProp: momentum must be a finite number >= 0, got %g",
                            opt->momentum);
        break;
    }
    if (opt->kind != FN_OPT_SGD && !finite_nonnegative(opt->eps))
        return fn_error(FN_EINVAL, "%s: eps must be a finite number >= 0, got %g", name, opt->eps);
    return FN_OK;
}

/* ---------------------------------------------------------------- learning-rate schedules */

static const char *schedule_name(fn_schedule_kind kind) {
    switch (kind) {
    case FN_SCHEDULE_CONSTANT: return "constant";
    case FN_SCHEDULE_STEP: return "step";
    case FN_SCHEDULE_EXPONENTIAL: return "exponential";
    case FN_SCHEDULE_INVERSE_TIME: return "inverse-time";
    case FN_SCHEDULE_COSINE: return "cosine";
    }
    return "unknown";
}

/* Every field is checked: those the kind uses against their ranges, the others against 0, so that
 * a schedule meant as another kind (say a step_size given to an exponential schedule) is refused
 * instead of running with part of what its author wrote ignored. */
static fn_status schedule_check(const fn_schedule *s) {
    if (!s) return fn_error(FN_EINVAL, "schedule: NULL");
    if ((unsigned)s->kind > FN_SCHEDULE_COSINE)
        return fn_error(FN_EINVAL, "schedule: unknown kind %d", (int)s->kind);
    const char *name = schedule_name(s->kind);
    bool step = s->kind == FN_SCHEDULE_STEP, cosine = s->kind == FN_SCHEDULE_COSINE;
    bool uses_gamma = step || s->kind == FN_SCHEDULE_EXPONENTIAL;
    bool uses_decay = s->kind == FN_SCHEDULE_INVERSE_TIME;
    if (s->warmup_steps < 0)
        return fn_error(FN_EINVAL, "%s schedule: warmup_steps must be >= 0, got %lld", name,
                        (long long)s->warmup_steps);
    if (step && s->step_size < 1)
        return fn_error(FN_EINVAL, "%s schedule: step_size must be >= 1, got %lld", name,
                        (long long)s->step_size);
    /* Comparisons written so that NaN fails them. */
    if (uses_gamma && !(s->gamma > 0 && s->gamma <= 1))
        return fn_error(FN_EINVAL, "%s schedule: gamma must be in (0, 1], got %g", name, s->gamma);
    if (uses_decay && !(s->decay >= 0 && isfinite(s->decay)))
        return fn_error(FN_EINVAL, "%s schedule: decay must be a finite number >= 0, got %g", name,
                        s->decay);
    if (cosine && s->total_steps < 1)
        return fn_error(FN_EINVAL, "%s schedule: total_steps must be >= 1, got %lld", name,
                        (long long)s->total_steps);
    if (cosine && !(s->min_lr >= 0 && isfinite(s->min_lr)))
        return fn_error(FN_EINVAL, "%s schedule: min_lr must be a finite number >= 0, got %g",
                        name, s->min_lr);
    const struct {
        const char *field;
        bool used;
        double value;
    } fields[] = {{"step_size", step, (double)s->step_size},
                  {"gamma", uses_gamma, s->gamma},
                  {"decay", uses_decay, s->decay},
                  {"total_steps", cosine, (double)s->total_steps},
                  {"min_lr", cosine, s->min_lr}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (!fields[i].used && fields[i].value != 0) /* NaN too */
            return fn_error(FN_EINVAL, "%s schedule: %s is not used and must be 0, got %g", name,
                            fields[i].field, fields[i].value);
    return FN_OK;
}

double fn_schedule_compute_lr(const fn_schedule *s, double base_lr, int64_t step) {
    if (step < 0) step = 0; /* a step counter set below 0 counts as the first update */
    if (step < s->warmup_steps) return base_lr * ((double)(step + 1) / (double)s->warmup_steps);
    int64_t since = step - s->warmup_steps;
    switch (s->kind) {
    case FN_SCHEDULE_CONSTANT: break;
    case FN_SCHEDULE_STEP: return base_lr * pow(s->gamma, (double)(since / s->step_size));
    case FN_SCHEDULE_EXPONENTIAL: return base_lr * pow(s->gamma, (double)since);
    case FN_SCHEDULE_INVERSE_TIME: return base_lr / (1.0 + s->decay * (double)since);
    case FN_SCHEDULE_COSINE: {
        const double pi = 3.14159265358979323846;
        int64_t done = since < s->total_steps ? since : s->total_steps;
        double progress = (double)done / (double)s->total_steps;
        return s->min_lr + (base_lr - s->min_lr) * (1.0 + cos(pi * progress)) / 2.0;
    }
    }
    return base_lr; /* constant: exactly the optimizer's lr, as without a schedule */
}

fn_status fn_schedule_lr(const fn_schedule *schedule, double base_lr, int64_t step, double *lr) {
    if (!lr) return fn_error(FN_EINVAL, "schedule_lr: lr is NULL");
    FN_TRY(schedule_check(schedule));
    if (!(base_lr >= 0) || !isfinite(base_lr))
        return fn_error(FN_EINVAL, "schedule_lr: base_lr must be a finite number >= 0, got %g",
                        base_lr);
    if (step < 0)
        return fn_error(FN_EINVAL, "schedule_lr: step must be >= 0, got %lld", (long long)step);
    *lr = fn_schedule_compute_lr(schedule, base_lr, step);
    return FN_OK;
}

fn_status fn_model_set_schedule(fn_model *m, const fn_schedule *schedule) {
    if (!m) return fn_error(FN_EINVAL, "set_schedule: model is NULL");
    FN_TRY(schedule_check(schedule));
    m->schedule = *schedule;
    return FN_OK;
}

fn_status fn_model_get_schedule(const fn_model *m, fn_schedule *schedule) {
    if (!m || !schedule) return fn_error(FN_EINVAL, "get_schedule: model or schedule is NULL");
    *schedule = m->schedule;
    return FN_OK;
}

/* ---------------------------------------------------------------- tensors, groups, state */

bool fn_param_is_bias(const fn_model *m, int param) {
    const fn_node *node = &m->nodes[m->params[param].node];
    for (int p = 0; p < node->n_params; p++)
        if (node->param_index[p] == param) return node->param_decl[p].is_bias;
    return false;
}

void fn_optimizer_free(fn_model *m) {
    fn_free(m->optimizer_state);
    fn_free(m->groups);
    fn_free(m->group_steps);
    fn_free(m->segments);
    fn_free(m->norm_blocks);
    m->optimizer_state = NULL;
    m->groups = NULL;
    m->group_steps = NULL;
    m->segments = NULL;
    m->norm_blocks = NULL;
}

/* The segment table, the norm's blocks and one group's coefficients: made once per model, when
 * an optimizer or groups are first set. */
static fn_status prepare(fn_model *m) {
    if (m->segments) return FN_OK;
    int n = 0;
    for (int i = 0; i < m->n_params; i++) n += !m->params[i].is_buffer && m->params[i].count > 0;
    int64_t blocks = (m->param_total + FN_NORM_BLOCK - 1) / FN_NORM_BLOCK;
    fn_optim_segment *segments = fn_calloc((n ? (size_t)n : 1) * sizeof *segments);
    double *norm_blocks = fn_alloc((blocks ? (size_t)blocks : 1) * sizeof *norm_blocks);
    fn_group_step *steps = m->group_steps ? m->group_steps : fn_calloc(sizeof *steps);
    if (!segments || !norm_blocks || !steps) {
        fn_free(segments);
        fn_free(norm_blocks);
        if (steps != m->group_steps) fn_free(steps);
        return fn_error(FN_ENOMEM, "optimizer: out of memory");
    }
    for (int i = 0, s = 0; i < m->n_params; i++) {
        const fn_param *p = &m->params[i];
        if (p->is_buffer || p->count == 0) continue;
        bool rows = p->shape.ndim >= 2 && !fn_param_is_bias(m, i);
        segments[s++] = (fn_optim_segment){.offset = p->offset,
                                           .count = p->count,
                                           .row = rows ? p->count / p->shape.dim[0] : 0,
                                           .tensor = i,
                                           .group = 0};
    }
    /* Each segment runs to the next one, so that the padding between tensors is updated as the
     * rest of the arena is (as a parameter that is always 0 with a gradient of 0, unless written
     * to): the update covers the whole arena, as the flat pass it replaces did. */
    int64_t work = 0;
    for (int s = 0; s < n; s++) {
        int64_t next = s + 1 < n ? segments[s + 1].offset : m->param_total;
        segments[s].span = next - segments[s].offset;
        segments[s].work_start = work;
        work += segments[s].span;
    }
    m->segments = segments;
    m->n_segments = n;
    m->segment_work = work;
    m->norm_blocks = norm_blocks;
    m->group_steps = steps; /* one entry, for the update without groups */
    return FN_OK;
}

/* Writes `value` to every element of state slot `slot`. */
static void fill_slot(fn_model *m, int slot, double value) {
    if (m->dtype == FN_FLOAT64) {
        double *s = (double *)m->optimizer_state + (size_t)slot * (size_t)m->param_total;
        for (int64_t i = 0; i < m->param_total; i++) s[i] = value;
    } else {
        float *s = (float *)m->optimizer_state + (size_t)slot * (size_t)m->param_total;
        for (int64_t i = 0; i < m->param_total; i++) s[i] = (float)value;
    }
}

/* The state a new optimizer starts from: zeros, and Adagrad's sums at their initial value. */
static void initial_state(fn_model *m) {
    if (m->optimizer_state)
        memset(m->optimizer_state, 0,
               (size_t)m->optimizer_slots * (size_t)m->param_total * fn_dtype_size(m->dtype));
    if (m->optimizer.kind == FN_OPT_ADAGRAD && m->optimizer.initial_accumulator_value != 0)
        fill_slot(m, 0, m->optimizer.initial_accumulator_value);
    m->optimizer_steps = 0;
    m->momentum_started = false;
    m->has_grad_norm = false;
}

fn_status fn_model_set_optimizer(fn_model *m, const fn_optimizer *opt) {
    if (!m) return fn_error(FN_EINVAL, "set_optimizer: model is NULL");
    FN_TRY(fn_optimizer_check(opt));
    FN_TRY(prepare(m));
    int slots = fn_optimizer_slots(opt);
    bool fresh = !m->has_optimizer || opt->kind != m->optimizer.kind;
    if (fresh || slots != m->optimizer_slots) {
        size_t slot_bytes = (size_t)m->param_total * fn_dtype_size(m->dtype);
        void *state = fn_calloc((size_t)slots * slot_bytes);
        if (!state) return fn_error(FN_ENOMEM, "set_optimizer: cannot allocate its state");
        if (!fresh) /* the same optimizer with a slot more or less: keep those it shares */
            memcpy(state, m->optimizer_state,
                   (size_t)(slots < m->optimizer_slots ? slots : m->optimizer_slots) * slot_bytes);
        fn_free(m->optimizer_state);
        m->optimizer_state = state;
        m->optimizer_slots = slots;
    }
    m->optimizer = *opt;
    m->has_optimizer = true;
    if (fresh) initial_state(m);
    return FN_OK;
}

void fn_model_reset_optimizer(fn_model *m) {
    if (!m) return;
    initial_state(m);
}

static fn_status check_group(const fn_param_group *g, int i) {
    const struct {
        const char *field;
        double value;
    } fields[] = {{"lr", g->lr}, {"weight_decay", g->weight_decay}, {"l1", g->l1},
                  {"max_norm", g->max_norm}};
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++)
        if (!finite_nonnegative(fields[f].value))
            return fn_error(FN_EINVAL,
                            "set_param_groups: group %d: %s must be a finite number >= 0, got %g",
                            i, fields[f].field, fields[f].value);
    return FN_OK;
}

fn_status fn_model_set_param_groups(fn_model *m, const fn_param_group *groups, int n_groups,
                                    const int *group_of_tensor) {
    if (!m) return fn_error(FN_EINVAL, "set_param_groups: model is NULL");
    if (n_groups < 0)
        return fn_error(FN_EINVAL, "set_param_groups: n_groups must be >= 0, got %d", n_groups);
    if (n_groups > 0 && !groups)
        return fn_error(FN_EINVAL, "set_param_groups: groups is NULL with n_groups %d", n_groups);
    if (n_groups > 1 && !group_of_tensor)
        return fn_error(FN_EINVAL,
                        "set_param_groups: group_of_tensor is NULL with %d groups (it may be "
                        "NULL with one group only)",
                        n_groups);
    for (int g = 0; g < n_groups; g++) FN_TRY(check_group(&groups[g], g));
    if (n_groups > 0 && group_of_tensor)
        for (int i = 0; i < m->n_params; i++) {
            if (m->params[i].is_buffer) continue;
            int g = group_of_tensor[i];
            if (g < 0 || g >= n_groups)
                return fn_error(FN_EINVAL,
                                "set_param_groups: tensor %d ('%s') is given group %d; the groups "
                                "are 0 to %d",
                                i, m->params[i].name, g, n_groups - 1);
        }
    FN_TRY(prepare(m));
    if (n_groups > m->group_capacity) {
        fn_param_group *new_groups = fn_alloc((size_t)n_groups * sizeof *new_groups);
        fn_group_step *new_steps = fn_calloc((size_t)n_groups * sizeof *new_steps);
        if (!new_groups || !new_steps) {
            fn_free(new_groups);
            fn_free(new_steps);
            return fn_error(FN_ENOMEM, "set_param_groups: out of memory");
        }
        fn_free(m->groups);
        fn_free(m->group_steps);
        m->groups = new_groups;
        m->group_steps = new_steps;
        m->group_capacity = n_groups;
    }
    if (n_groups > 0) memcpy(m->groups, groups, (size_t)n_groups * sizeof *groups);
    m->n_groups = n_groups;
    for (int s = 0; s < m->n_segments; s++) {
        fn_optim_segment *segment = &m->segments[s];
        segment->group = n_groups > 0 && group_of_tensor ? group_of_tensor[segment->tensor] : 0;
    }
    return FN_OK;
}

int fn_model_param_group_count(const fn_model *m) { return m ? m->n_groups : 0; }

fn_status fn_model_get_param_group(const fn_model *m, int group, fn_param_group *out) {
    if (!m || !out) return fn_error(FN_EINVAL, "get_param_group: model or out is NULL");
    if (group < 0 || group >= m->n_groups)
        return fn_error(FN_EINVAL, "get_param_group: group %d out of range (the model has %d)",
                        group, m->n_groups);
    *out = m->groups[group];
    return FN_OK;
}

double fn_model_group_lr(const fn_model *m, int group) {
    if (!m || !m->has_optimizer || group < 0) return 0;
    if (group >= (m->n_groups > 0 ? m->n_groups : 1)) return 0;
    double lr = m->n_groups > 0 ? m->groups[group].lr : m->optimizer.lr;
    return fn_schedule_compute_lr(&m->schedule, lr, m->optimizer_steps);
}

double fn_model_current_lr(const fn_model *m) { return fn_model_group_lr(m, 0); }

double fn_model_last_grad_norm(const fn_model *m) {
    return m && m->has_grad_norm ? m->last_grad_norm : -1;
}

/* ---------------------------------------------------------------- the update */

/* FN_ENUMERIC for a non-finite gradient norm, naming the first node (execution order) with a
 * non-finite parameter gradient and the tensor: a bad value born in a layer's forward reaches
 * the gradients of every layer before it only through later ones, so the first in forward order
 * is the one to look at. Runs only on this failure. */
static fn_status nonfinite_norm_error(fn_model *m, const char *what, double norm) {
    size_t elem = fn_dtype_size(m->dtype);
    for (int i = 0; i < m->n_nodes; i++) {
        const fn_node *node = &m->nodes[i];
        for (int p = 0; p < node->n_params; p++) {
            const fn_param *param = &m->params[node->param_index[p]];
            if (param->is_buffer) continue;
            const void *grad = (const char *)m->grad_arena + (size_t)param->offset * elem;
            int64_t bad = fn_first_nonfinite(m->dtype, grad, param->count);
            if (bad < 0) continue;
            m->nonfinite_node = i;
            return fn_error(FN_ENUMERIC,
                            "%s: the gradient norm is %g; the weights were not updated: the first "
                            "non-finite gradient is in layer '%s' (%s), tensor '%s', element "
                            "%lld (lower the learning rate, or check the data and the weights)",
                            what, norm, node->name, node->op->type, param->name, (long long)bad);
        }
    }
    return fn_error(FN_ENUMERIC,
                    "%s: the gradient norm is %g; the weights were not updated: every gradient is "
                    "finite, the sum of their squares overflowed (lower the learning rate, or "
                    "clip by value)",
                    what, norm);
}

fn_status fn_optimizer_update(fn_model *m, const char *what) {
    const fn_optimizer *opt = &m->optimizer;
    int threads = fn_threads_get();
    double grad_scale = 1;
    m->has_grad_norm = false;
    m->nonfinite_node = -1;
    if (opt->clip_grad_norm > 0 || opt->check_finite) {
        double sum = m->dtype == FN_FLOAT64
                         ? fn_grad_sum_squares_f64(m->grad_arena, m->param_total, m->norm_blocks,
                                                   threads)
                         : fn_grad_sum_squares_f32(m->grad_arena, m->param_total, m->norm_blocks,
                                                   threads);
        double norm = sqrt(sum);
        m->last_grad_norm = norm;
        m->has_grad_norm = true;
        /* Before anything below changes the weights, the state or the step counter. */
        if (!isfinite(norm)) return nonfinite_norm_error(m, what, norm);
        /* PyTorch's clip_grad_norm_: the factor min(1, max_norm / (norm + 1e-6)). */
        double factor = opt->clip_grad_norm / (norm + 1e-6);
        if (opt->clip_grad_norm > 0 && factor < 1) grad_scale = factor;
    }

    /* The schedule's update t counts from 0 (the steps before this one); the bias corrections
     * and Adagrad's decay count this update from 1. */
    int64_t before = m->optimizer_steps, t = before + 1;
    bool decoupled = opt->kind == FN_OPT_ADAMW || opt->decoupled_weight_decay;
    double correction1 = 1.0 - pow(opt->beta1, (double)t);
    double correction2 = 1.0 - pow(opt->beta2, (double)t);
    int n_groups = m->n_groups > 0 ? m->n_groups : 1;
    for (int g = 0; g < n_groups; g++) {
        fn_param_group group = {.lr = opt->lr, .weight_decay = opt->weight_decay};
        if (m->n_groups > 0) group = m->groups[g];
        double lr = fn_schedule_compute_lr(&m->schedule, group.lr, before);
        fn_group_step *step = &m->group_steps[g];
        step->lr = lr;
        step->decay = decoupled ? 1.0 - lr * group.weight_decay : 1.0;
        step->coupled_wd = decoupled ? 0.0 : group.weight_decay;
        step->l1 = group.l1;
        step->max_norm = group.max_norm;
        switch (opt->kind) {
        case FN_OPT_ADAM:
        case FN_OPT_ADAMW: step->step_size = lr / correction1; break;
        case FN_OPT_ADAGRAD: step->step_size = lr / (1.0 + (double)(t - 1) * opt->lr_decay); break;
        default: step->step_size = lr;
        }
    }
    m->optimizer_steps = t;
    /* PyTorch starts SGD's momentum buffer as the gradient at the first update that uses
     * momentum, which need not be the first update (momentum can be switched on later). */
    bool momentum_first = !m->momentum_started;
    if (opt->kind == FN_OPT_SGD && opt->momentum != 0) m->momentum_started = true;

    fn_update_args args = {.opt = opt,
                           .momentum_first = momentum_first,
                           .grad_scale = grad_scale,
                           .clip_value = opt->clip_grad_value,
                           .correction2_sqrt = sqrt(correction2),
                           .groups = m->group_steps,
                           .segments = m->segments,
                           .n_segments = m->n_segments,
                           .work = m->segment_work,
                           .params = m->param_arena,
                           .grads = m->grad_arena,
                           .state = m->optimizer_state,
                           .stride = m->param_total};
    if (m->dtype == FN_FLOAT64)
        fn_optimizer_update_f64(&args, threads);
    else
        fn_optimizer_update_f32(&args, threads);
    return FN_OK;
}

fn_status fn_model_step(fn_model *m) {
    if (!m) return fn_error(FN_EINVAL, "step: model is NULL");
    m->nonfinite_node = -1;
    if (!m->has_optimizer)
        return fn_error(FN_ESTATE, "step: no optimizer is set (fn_model_set_optimizer)");
    return fn_optimizer_update(m, "step");
}

#define FN_TEMPLATE_FILE "optim.c"
#include "template.h"

#else /* templated half */

/* The sum of squares of x[0, n) in double, as FN_LANES interleaved partial sums added in a fixed
 * order: the same bits on every call, vectorised, and with enough independent sums to keep the
 * adds from waiting on each other (32 measured 1.3x faster than 16 on a cached mlp_small
 * gradient, 64 no faster than 32). Each square is exact (a float's square fits in a double). */
#ifndef FN_LANES
#define FN_LANES 32
#define NORM_AHEAD 16384
/* Float gradients: squares summed in float over runs of NORM_RUN steps of FN_FLOAT_LANES, each
 * run's lanes then added to FN_FLOAT_LANES double sums. Converting every element to double was
 * the bound of the pass (a cached mlp_small gradient of 26 K floats: 1.63 us, 0.60 us so); a
 * run's float sum of at most 16 nonnegative terms is within 17 roundings, a relative error below
 * 1.1e-6, where PyTorch's clip_grad_norm_ sums float gradients in float throughout; squares that
 * underflow (elements under 1e-19) would lose that bound, and blocks this small are summed
 * again exactly (FN_NORM_FLOAT_FLOOR). */
#define FN_FLOAT_LANES 64
#define NORM_RUN 16
/* 2^-100: below it, 8192 squares each rounded to a float subnormal's spacing (2^-149) may be off
 * by more than 2^-23 of the block's sum. */
#define FN_NORM_FLOAT_FLOOR 0x1p-100
#endif
/* The lines NORM_AHEAD bytes past x + i, in FN_LANES * sizeof(real) bytes, asked for. The
 * gradients come from the backward's GEMMs, in L3 or in the other core's L2, and the hardware
 * prefetchers alone kept this one stream at about half the bandwidth (mlp_mnist_b128's 7.4 MB on
 * two threads: 200 us -> 115 us in a training step; 4 KB ahead 135 us, 32 KB 119 us). Past the
 * end, the address is only a hint (computed as an integer). The SGD update, with three streams
 * read and two written, gained nothing from the same. */
static inline void FN_T(norm_prefetch)(const real *x, size_t bytes) {
    for (size_t line = 0; line < bytes; line += 64)
        FN_PREFETCH((const void *)((uintptr_t)x + NORM_AHEAD + line));
}

static double FN_T(sum_squares_exact)(const real *x, int64_t n) {
    double acc[FN_LANES] = {0};
    int64_t i = 0;
    for (; i + FN_LANES <= n; i += FN_LANES) {
        FN_T(norm_prefetch)(x + i, FN_LANES * sizeof(real));
        for (int j = 0; j < FN_LANES; j++) acc[j] += (double)x[i + j] * (double)x[i + j];
    }
    for (int j = 0; i < n; i++, j++) acc[j] += (double)x[i] * (double)x[i];
    for (int width = FN_LANES / 2; width > 0; width /= 2) /* pairwise, in a fixed order */
        for (int j = 0; j < width; j++) acc[j] += acc[j + width];
    return acc[0];
}

static double FN_T(sum_squares)(const real *x, int64_t n) {
    if (FN_DTYPE == FN_FLOAT64) return FN_T(sum_squares_exact)(x, n);
    double acc[FN_FLOAT_LANES] = {0};
    int64_t i = 0;
    while (i + FN_FLOAT_LANES <= n) {
        real run[FN_FLOAT_LANES] = {0};
        for (int step = 0; step < NORM_RUN && i + FN_FLOAT_LANES <= n;
             step++, i += FN_FLOAT_LANES) {
            FN_T(norm_prefetch)(x + i, FN_FLOAT_LANES * sizeof(real));
            for (int j = 0; j < FN_FLOAT_LANES; j++) run[j] += x[i + j] * x[i + j];
        }
        for (int j = 0; j < FN_FLOAT_LANES; j++) acc[j] += run[j];
    }
    for (int j = 0; i < n; i++, j++) acc[j] += (double)x[i] * (double)x[i];
    for (int width = FN_FLOAT_LANES / 2; width > 0; width /= 2)
        for (int j = 0; j < width; j++) acc[j] += acc[j + width];
    /* A float square overflows from 1.9e19 on: such a block is summed again exactly, so that only
     * a gradient that is itself non-finite (or a sum past a double's range) makes the norm so;
     * likewise a block of squares that underflow (an all-zero block among them). */
    return isfinite(acc[0]) && acc[0] >= FN_NORM_FLOAT_FLOOR ? acc[0]
                                                            : FN_T(sum_squares_exact)(x, n);
}

typedef struct {
    const real *grads;
    int64_t count;
    double *blocks;
} FN_T(norm_job);

static void FN_T(norm_part)(int id, int parts, void *arg) {
    const FN_T(norm_job) *job = arg;
    int64_t n_blocks = (job->count + FN_NORM_BLOCK - 1) / FN_NORM_BLOCK, begin, end;
    fn_partition(n_blocks, parts, id, &begin, &end);
    for (int64_t b = begin; b < end; b++) {
        int64_t lo = b * FN_NORM_BLOCK;
        int64_t hi = job->count - lo < FN_NORM_BLOCK ? job->count : lo + FN_NORM_BLOCK;
        job->blocks[b] = FN_T(sum_squares)(job->grads + lo, hi - lo);
    }
}

double FN_T(fn_grad_sum_squares)(const real *grads, int64_t count, double *blocks, int threads) {
    int64_t n_blocks = (count + FN_NORM_BLOCK - 1) / FN_NORM_BLOCK;
    if (n_blocks == 0) return 0;
    FN_T(norm_job) job = {grads, count, blocks};
    int parts = fn_threads_for(count, threads);
    if (parts > n_blocks) parts = (int)n_blocks;
    fn_run_team(parts, FN_T(norm_part), &job);
    double total = 0;
    for (int64_t b = 0; b < n_blocks; b++) total += blocks[b];
    return total;
}

/* The update's loops are written once, with the flags that change their structure (momentum on or
 * off, amsgrad, centered) as arguments that are constants at each call: every combination becomes
 * its own branch-free loop, which the compiler vectorises. */
#ifndef FN_OPTIM_INLINE
#if defined(__GNUC__)
#define FN_OPTIM_INLINE static inline __attribute__((always_inline))
#else
#define FN_OPTIM_INLINE static inline
#endif
#endif

/* What every kind does first: the gradient clipped (by the global norm's factor, then to
 * [-clip, clip], clip = INFINITY when off: a NaN stays NaN, as in torch.clamp), plus the coupled L2
 * and the L1 penalty from the parameter p before the update. Off is 1, INFINITY and 0, which
 * leave g as it is, so the expression has no branch; without any of them nor decoupled decay
 * (extra false) it is only g + wd*p. */
typedef struct {
    real scale, clip, wd, l1, decay;
} FN_T(grad_terms);

FN_OPTIM_INLINE real FN_T(effective_grad)(const FN_T(grad_terms) *t, real g, real p,
                                          bool extra) {
    if (!extra) return g + t->wd * p; /* no clipping and no L1: the common case, kept lean */
    g *= t->scale;
    g = g < -t->clip ? -t->clip : g > t->clip ? t->clip : g;
    real l1 = p > 0 ? t->l1 : p < 0 ? -t->l1 : 0; /* l1 * sign(p) */
    return g + t->wd * p + l1;
}

/* p after decoupled decay; the lean path (extra false) has none, and leaves p - lr*g as the
 * one expression it always was (so that it contracts to the same FMA). */
FN_OPTIM_INLINE real FN_T(decayed)(const FN_T(grad_terms) *t, real p, bool extra) {
    return extra ? p * t->decay : p;
}

FN_OPTIM_INLINE void FN_T(sgd_loop)(const FN_T(grad_terms) *t, real *restrict params,
                                    const real *restrict grads, real *restrict buf, int64_t n,
                                    real lr, real momentum, real undamped, bool nesterov,
                                    bool first, bool has_momentum, bool extra) {
    for (int64_t i = 0; i < n; i++) {
        real p = params[i], g = FN_T(effective_grad)(t, grads[i], p, extra);
        if (has_momentum) {
            real b = first ? g : momentum * buf[i] + undamped * g;
            buf[i] = b;
            g = nesterov ? g + momentum * b : b;
        }
        params[i] = FN_T(decayed)(t, p, extra) - lr * g;
    }
}

FN_OPTIM_INLINE void FN_T(adagrad_loop)(const FN_T(grad_terms) *t, real *restrict params,
                                        const real *restrict grads, real *restrict sum,
                                        int64_t n, real step_size, real eps, bool extra) {
    for (int64_t i = 0; i < n; i++) {
        real p = params[i], g = FN_T(effective_grad)(t, grads[i], p, extra);
        real s = sum[i] + g * g;
        sum[i] = s;
        params[i] = FN_T(decayed)(t, p, extra) - step_size * (g / (sqrt(s) + eps));
    }
}

FN_OPTIM_INLINE void FN_T(rmsprop_loop)(const FN_T(grad_terms) *t, real *restrict params,
                                        const real *restrict grads, real *restrict square_avg,
                                        real *restrict buf, real *restrict grad_avg, int64_t n,
                                        real lr, real alpha, real one_minus_alpha, real momentum,
                                        real eps, bool centered, bool has_momentum, bool extra) {
    for (int64_t i = 0; i < n; i++) {
        real p = params[i], g = FN_T(effective_grad)(t, grads[i], p, extra);
        real v = alpha * square_avg[i] + one_minus_alpha * g * g;
        square_avg[i] = v;
        if (centered) {
            real mean = alpha * grad_avg[i] + one_minus_alpha * g;
            grad_avg[i] = mean;
            v -= mean * mean;
        }
        real d = sqrt(v) + eps;
        if (has_momentum) {
            real b = momentum * buf[i] + g / d;
            buf[i] = b;
            params[i] = FN_T(decayed)(t, p, extra) - lr * b;
        } else {
            params[i] = FN_T(decayed)(t, p, extra) - lr * (g / d);
        }
    }
}

FN_OPTIM_INLINE void FN_T(adam_loop)(const FN_T(grad_terms) *t, real *restrict params,
                                     const real *restrict grads, real *restrict m1,
                                     real *restrict m2, real *restrict vmax, int64_t n,
                                     real step_size, real beta1, real one_minus_beta1,
                                     real beta2, real one_minus_beta2, real correction2_sqrt,
                                     real eps, bool amsgrad, bool extra) {
    for (int64_t i = 0; i < n; i++) {
        real p = params[i], g = FN_T(effective_grad)(t, grads[i], p, extra);
        real m = beta1 * m1[i] + one_minus_beta1 * g;
        real v = beta2 * m2[i] + one_minus_beta2 * g * g;
        m1[i] = m;
        m2[i] = v;
        if (amsgrad) {
            v = vmax[i] > v ? vmax[i] : v;
            vmax[i] = v;
        }
        real d = sqrt(v) / correction2_sqrt + eps;
        params[i] = FN_T(decayed)(t, p, extra) - step_size * (m / d);
    }
}

/* Updates the arena's elements [lo, hi), all of one group. */
static void FN_T(update_range)(const fn_update_args *a, const fn_group_step *gs, int64_t lo,
                               int64_t hi) {
    const fn_optimizer *opt = a->opt;
    real *params = (real *)a->params + lo;
    const real *grads = (const real *)a->grads + lo;
    const int slots = fn_optimizer_slots(opt);
    real *s0 = (real *)a->state + lo;
    real *s1 = slots > 1 ? s0 + a->stride : NULL, *s2 = slots > 2 ? s0 + 2 * a->stride : NULL;
    const int64_t n = hi - lo;
    const FN_T(grad_terms) t = {.scale = (real)a->grad_scale,
                                .clip = a->clip_value > 0 ? (real)a->clip_value : (real)INFINITY,
                                .wd = (real)gs->coupled_wd,
                                .l1 = (real)gs->l1,
                                .decay = (real)gs->decay};
    const real lr = (real)gs->lr, step_size = (real)gs->step_size, eps = (real)opt->eps;
    const real momentum = (real)opt->momentum;
    /* Each loop twice: with clipping, L1 and decoupled decay, and without any of them. */
    const bool extra = a->grad_scale != 1 || a->clip_value > 0 || gs->l1 != 0 || gs->decay != 1;
#define FN_LOOP(loop, ...)                                                                        \
    do {                                                                                          \
        if (extra)                                                                                \
            loop(__VA_ARGS__, true);                                                              \
        else                                                                                      \
            loop(__VA_ARGS__, false);                                                             \
    } while (0)
    /* The weights of the running averages, 1 - beta, are taken in double and then rounded, as
     * PyTorch takes them: in float, 1 - 0.999f is 0.0010000467, 4.7e-5 off. */
    switch (opt->kind) {
    case FN_OPT_SGD: {
        const real undamped = (real)(1.0 - opt->dampening);
        const bool nesterov = opt->nesterov != 0, first = a->momentum_first;
        if (opt->momentum != 0)
            FN_LOOP(FN_T(sgd_loop), &t, params, grads, s0, n, lr, momentum, undamped, nesterov,
                    first, true);
        else
            FN_LOOP(FN_T(sgd_loop), &t, params, grads, s0, n, lr, momentum, undamped, false,
                    false, false);
        break;
    }
    case FN_OPT_ADAGRAD:
        FN_LOOP(FN_T(adagrad_loop), &t, params, grads, s0, n, step_size, eps);
        break;
    case FN_OPT_RMSPROP: {
        const real alpha = (real)opt->alpha, one_minus_alpha = (real)(1.0 - opt->alpha);
        /* Slot 1 exists when momentum > 0 or centered, slot 2 when centered. */
        if (opt->centered && opt->momentum > 0)
            FN_LOOP(FN_T(rmsprop_loop), &t, params, grads, s0, s1, s2, n, lr, alpha,
                    one_minus_alpha, momentum, eps, true, true);
        else if (opt->centered)
            FN_LOOP(FN_T(rmsprop_loop), &t, params, grads, s0, s1, s2, n, lr, alpha,
                    one_minus_alpha, momentum, eps, true, false);
        else if (opt->momentum > 0)
            FN_LOOP(FN_T(rmsprop_loop), &t, params, grads, s0, s1, NULL, n, lr, alpha,
                    one_minus_alpha, momentum, eps, false, true);
        else
            FN_LOOP(FN_T(rmsprop_loop), &t, params, grads, s0, NULL, NULL, n, lr, alpha,
                    one_minus_alpha, momentum, eps, false, false);
        break;
    }
    case FN_OPT_ADAM:
    case FN_OPT_ADAMW: {
        const real beta1 = (real)opt->beta1, one_minus_beta1 = (real)(1.0 - opt->beta1);
        const real beta2 = (real)opt->beta2, one_minus_beta2 = (real)(1.0 - opt->beta2);
        const real correction2_sqrt = (real)a->correction2_sqrt;
        if (opt->amsgrad)
            FN_LOOP(FN_T(adam_loop), &t, params, grads, s0, s1, s2, n, step_size, beta1,
                    one_minus_beta1, beta2, one_minus_beta2, correction2_sqrt, eps, true);
        else
            FN_LOOP(FN_T(adam_loop), &t, params, grads, s0, s1, NULL, n, step_size, beta1,
                    one_minus_beta1, beta2, one_minus_beta2, correction2_sqrt, eps, false);
        break;
    }
    }
#undef FN_LOOP
}

/* Rescales x (n) to L2 norm max_norm if its norm exceeds it: the exact norm, which decides
 * whether and by what a row of weights is scaled. */
static void FN_T(max_norm_row)(real *x, int64_t n, double max_norm) {
    double norm = sqrt(FN_T(sum_squares_exact)(x, n));
    if (!(norm > max_norm)) return;
    const real factor = (real)(max_norm / norm);
    for (int64_t i = 0; i < n; i++) x[i] *= factor;
}

/* Thread `id` of `parts`: the segments' elements in its share of [0, work); in a segment under
 * max-norm, the rows that start in that share (a row is never split between threads) and the
 * padding after the tensor. */
static void FN_T(update_part)(int id, int parts, void *arg) {
    const fn_update_args *a = arg;
    int64_t begin, end;
    fn_partition(a->work, parts, id, &begin, &end);
    for (int s = 0; s < a->n_segments; s++) {
        const fn_optim_segment *seg = &a->segments[s];
        if (seg->work_start >= end) break;
        int64_t lo = begin - seg->work_start, hi = end - seg->work_start;
        if (lo < 0) lo = 0;
        if (hi > seg->span) hi = seg->span;
        if (lo >= hi) continue;
        const fn_group_step *gs = &a->groups[seg->group];
        if (gs->max_norm > 0 && seg->row > 0) {
            /* The rows that start in [lo, hi), whole; then the padding after the tensor. */
            int64_t row = seg->row;
            for (int64_t r = (lo + row - 1) / row; r * row < hi && r * row < seg->count; r++) {
                int64_t start = seg->offset + r * row;
                FN_T(update_range)(a, gs, start, start + row);
                FN_T(max_norm_row)((real *)a->params + start, row, gs->max_norm);
            }
            if (hi > seg->count)
                FN_T(update_range)(a, gs, seg->offset + (lo > seg->count ? lo : seg->count),
                                   seg->offset + hi);
        } else {
            FN_T(update_range)(a, gs, seg->offset + lo, seg->offset + hi);
        }
    }
}

void FN_T(fn_optimizer_update)(const fn_update_args *a, int threads) {
    fn_run_team(fn_threads_for(a->work, threads), FN_T(update_part), (void *)a);
}

#endif
