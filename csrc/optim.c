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

void fn_optimizer_update(fn_model *m) {
    int threads = fn_threads_get();
    m->optimizer_steps++;
    /* PyTorch starts the momentum buffer as the gradient at the first update that uses momentum,
     * which need not be the first update (momentum can be switched on later). */
    bool momentum_first = !m->momentum_started;
    if (m->optimizer.kind == FN_OPT_SGD && m->optimizer.momentum != 0) m->momentum_started = true;
    if (m->dtype == FN_FLOAT64)
        fn_optimizer_update_f64(&m->optimizer, m->optimizer_steps, momentum_first, m->param_arena,
                                m->grad_arena, m->optimizer_state, m->param_total, threads);
    else
        fn_optimizer_update_f32(&m->optimizer, m->optimizer_steps, momentum_first, m->param_arena,
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
