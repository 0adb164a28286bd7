/* optim.c — optimizer updates, fused over the flat parameter arena.
 *
 * One pass reads each parameter, its gradient and its state once, whatever the number of layers:
 * the update is memory-bound, so the pass count is what matters. The arithmetic follows the update
 * rules as PyTorch documents them (see fn_optimizer in fastnet.h), in the same order of operations.
 */
#ifndef FN_TEMPLATE_PASS
#include "kernels.h"
#include "model.h"

int fn_optimizer_slots(fn_optimizer_kind kind) {
    switch (kind) {
    case FN_OPT_SGD: return 1; /* momentum buffer (unused when momentum == 0) */
    case FN_OPT_ADAM:
    case FN_OPT_ADAMW: return 2; /* first and second moments */
    }
    return 0;
}

fn_status fn_optimizer_check(const fn_optimizer *opt) {
    if (!opt) return fn_error(FN_EINVAL, "optimizer: NULL");
    if ((unsigned)opt->kind > FN_OPT_ADAMW)
        return fn_error(FN_EINVAL, "optimizer: unknown kind %d", (int)opt->kind);
    /* Written as !(x >= 0) so that NaN fails too. */
    if (!(opt->lr >= 0) || !isfinite(opt->lr))
        return fn_error(FN_EINVAL, "optimizer: lr must be a finite number >= 0, got %g", opt->lr);
    if (!(opt->weight_decay >= 0) || !isfinite(opt->weight_decay))
        return fn_error(FN_EINVAL, "optimizer: weight_decay must be >= 0, got %g",
                        opt->weight_decay);
    if (opt->kind == FN_OPT_SGD) {
        if (!(opt->momentum >= 0) || !isfinite(opt->momentum))
            return fn_error(FN_EINVAL, "SGD: momentum must be >= 0, got %g", opt->momentum);
        if (!(opt->dampening >= 0 && opt->dampening <= 1))
            return fn_error(FN_EINVAL, "SGD: dampening must be in [0, 1], got %g", opt->dampening);
        if (opt->nesterov && (opt->momentum <= 0 || opt->dampening != 0))
            return fn_error(FN_EINVAL, "SGD: Nesterov momentum needs momentum > 0 and dampening 0");
    } else {
        if (!(opt->beta1 >= 0 && opt->beta1 < 1) || !(opt->beta2 >= 0 && opt->beta2 < 1))
            return fn_error(FN_EINVAL, "Adam: betas must be in [0, 1), got (%g, %g)", opt->beta1,
                            opt->beta2);
        if (!(opt->eps >= 0) || !isfinite(opt->eps))
            return fn_error(FN_EINVAL, "Adam: eps must be >= 0, got %g", opt->eps);
    }
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

double fn_model_current_lr(const fn_model *m) {
    if (!m || !m->has_optimizer) return 0;
    return fn_schedule_compute_lr(&m->schedule, m->optimizer.lr, m->optimizer_steps);
}

/* ---------------------------------------------------------------- the update */

void fn_optimizer_update(fn_model *m) {
    int threads = fn_threads_get();
    /* The schedule's update t counts from 0: the steps taken before this one. */
    fn_optimizer scheduled = m->optimizer;
    scheduled.lr = fn_schedule_compute_lr(&m->schedule, m->optimizer.lr, m->optimizer_steps);
    m->optimizer_steps++;
    /* PyTorch starts the momentum buffer as the gradient at the first update that uses momentum,
     * which need not be the first update (momentum can be switched on later). */
    bool momentum_first = !m->momentum_started;
    if (m->optimizer.kind == FN_OPT_SGD && m->optimizer.momentum != 0) m->momentum_started = true;
    if (m->dtype == FN_FLOAT64)
        fn_optimizer_update_f64(&scheduled, m->optimizer_steps, momentum_first, m->param_arena,
                                m->grad_arena, m->optimizer_state, m->param_total, threads);
    else
        fn_optimizer_update_f32(&scheduled, m->optimizer_steps, momentum_first, m->param_arena,
                                m->grad_arena, m->optimizer_state, m->param_total, threads);
}

#define FN_TEMPLATE_FILE "optim.c"
#include "template.h"

#else /* templated half */

/* params, grads are (count); state is (slots, count); step counts from 1 (this update);
 * momentum_first: SGD's buffer is empty and starts as the gradient. */
void FN_T(fn_optimizer_update)(const fn_optimizer *opt, int64_t step, bool momentum_first,
                               real *params, const real *grads, real *state, int64_t count,
                               int threads) {
    const real lr = (real)opt->lr, wd = (real)opt->weight_decay;
    int t = fn_threads_for(count, threads);
    if (opt->kind == FN_OPT_SGD) {
        const real momentum = (real)opt->momentum, dampening = (real)opt->dampening;
        const bool nesterov = opt->nesterov != 0, first = momentum_first;
        real *buf = state;
        FN_PARALLEL_LOOP(t, i, count, {
            real g = grads[i] + wd * params[i];
            if (momentum != 0) {
                real b = first ? g : momentum * buf[i] + (1 - dampening) * g;
                buf[i] = b;
                g = nesterov ? g + momentum * b : b;
            }
            params[i] -= lr * g;
        });
        return;
    }
    /* Adam and AdamW: bias corrections in double once per step, as PyTorch computes them. */
    const real beta1 = (real)opt->beta1, beta2 = (real)opt->beta2, eps = (real)opt->eps;
    const double correction1 = 1.0 - pow(opt->beta1, (double)step);
    const double correction2 = 1.0 - pow(opt->beta2, (double)step);
    const real step_size = (real)(opt->lr / correction1);
    const real correction2_sqrt = (real)sqrt(correction2);
    const bool decoupled = opt->kind == FN_OPT_ADAMW;
    const real coupled_wd = decoupled ? 0 : wd, decay = decoupled ? 1 - lr * wd : 1;
    real *m1 = state, *m2 = state + count;
    FN_PARALLEL_LOOP(t, i, count, {
        real p = params[i] * decay;
        real g = grads[i] + coupled_wd * p;
        real m = beta1 * m1[i] + (1 - beta1) * g;
        real v = beta2 * m2[i] + (1 - beta2) * g * g;
        m1[i] = m;
        m2[i] = v;
        params[i] = p - step_size * m / (sqrt(v) / correction2_sqrt + eps);
    });
}

#endif
