"""Optimizers against PyTorch's documented update rules, written out in numpy (float64), and
against torch.optim itself when torch is importable.

Synthetic gradients are written into ``p.grad`` and ``opt.step()`` applies them; ``train_step`` is
checked against a numpy forward/backward of a one-layer linear model. Also: hyper-parameter changes
between steps, validation, parameters of another model, and the state-dict round trip. Parameter
groups, penalties, max-norm and clipping are in test_regularisation.py.
"""

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnet as fn
from optim_reference import Reference, apply_grads, assert_params_close, model_grads

STEPS = 24

# The fastnet class, the reference's kind, and the defaults where fastnet's signature has them.
KINDS = {
    fn.optim.SGD: ("sgd", dict(lr=0.01)),
    fn.optim.Adagrad: ("adagrad", dict(lr=0.01)),
    fn.optim.RMSprop: ("rmsprop", dict(lr=0.01)),
    fn.optim.Adam: ("adam", dict(lr=1e-3)),
    fn.optim.AdamW: ("adamw", dict(lr=1e-3, weight_decay=1e-2)),
}

SGD_CONFIGS = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.05, momentum=0.9),
    "dampening": dict(lr=0.05, momentum=0.8, dampening=0.3),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "weight_decay": dict(lr=0.1, weight_decay=0.05),
    "momentum_weight_decay": dict(lr=0.05, momentum=0.9, weight_decay=0.01),
    "nesterov_weight_decay": dict(lr=0.03, momentum=0.7, weight_decay=0.1, nesterov=True),
    "dampening_weight_decay": dict(lr=0.03, momentum=0.5, dampening=1.0, weight_decay=0.2),
    "decoupled": dict(lr=0.05, momentum=0.9, weight_decay=0.1, decoupled_weight_decay=True),
}
ADAGRAD_CONFIGS = {
    "adagrad": dict(),
    "adagrad_lr_decay": dict(lr=0.1, lr_decay=0.05),
    "adagrad_hyper": dict(lr=0.05, lr_decay=0.01, weight_decay=0.1,
                          initial_accumulator_value=0.3, eps=1e-6),
}
RMSPROP_CONFIGS = {
    "rmsprop": dict(),
    "rmsprop_hyper": dict(lr=0.003, alpha=0.9, eps=1e-6, weight_decay=0.05),
    "rmsprop_momentum": dict(lr=0.002, momentum=0.9),
    "rmsprop_centered": dict(lr=0.002, centered=True, alpha=0.95),
    "rmsprop_centered_momentum": dict(lr=0.001, momentum=0.8, centered=True, weight_decay=0.01),
}
ADAM_CONFIGS = {
    "adam": dict(),
    "adam_hyper": dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    "adam_weight_decay": dict(lr=0.01, weight_decay=0.1),
    "adam_beta_zero": dict(lr=0.02, betas=(0.0, 0.5), eps=1e-3, weight_decay=0.01),
    "adam_amsgrad": dict(lr=0.01, amsgrad=True, weight_decay=0.05),
    "adam_decoupled": dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
}
ADAMW_CONFIGS = {
    "adamw": dict(),
    "adamw_hyper": dict(lr=0.01, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.1),
    "adamw_no_decay": dict(lr=0.01, weight_decay=0.0),
    "adamw_amsgrad": dict(lr=0.01, betas=(0.7, 0.9), weight_decay=0.1, amsgrad=True),
}
OPTIMIZERS = {
    **{f"sgd_{k}": (fn.optim.SGD, v) for k, v in SGD_CONFIGS.items()},
    **{k: (fn.optim.Adagrad, v) for k, v in ADAGRAD_CONFIGS.items()},
    **{k: (fn.optim.RMSprop, v) for k, v in RMSPROP_CONFIGS.items()},
    **{k: (fn.optim.Adam, v) for k, v in ADAM_CONFIGS.items()},
    **{k: (fn.optim.AdamW, v) for k, v in ADAMW_CONFIGS.items()},
}


def reference_for(cls, params, **hyper):
    kind, defaults = KINDS[cls]
    return Reference(kind, params, **{**defaults, **hyper})


def make_pair(name, model):
    """(fastnet optimizer, numpy reference) with the hyper-parameters of config `name`."""
    cls, hyper = OPTIMIZERS[name]
    return cls(model.parameters(), **hyper), reference_for(cls, [p.data for p in
                                                                 model.parameters()], **hyper)


def small_model(dtype="float64", seed=0):
    return fn.Sequential(fn.Linear(4, 3), fn.Tanh(), fn.Linear(3, 2), dtype=dtype, seed=seed)


# ------------------------------------------------------------------------------ update rules


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_step_matches_documented_rule(name, threads):
    model = small_model()
    opt, ref = make_pair(name, model)
    assert opt.steps == 0
    for t, grads in enumerate(model_grads(model, STEPS, seed=1), start=1):
        apply_grads(model, grads)
        opt.step()
        ref.step(grads)
        assert opt.steps == t
        assert_params_close(model, ref.params, what=f"step {t}")
        # The update reads the gradients; it does not change them.
        for p, g in zip(model.parameters(), grads):
            np.testing.assert_array_equal(p.grad, g)
    # The parameters did move (the comparison above is not between two untouched models).
    moved = [np.abs(a - b).max() for a, b in zip(ref.params, small_model().state_dict().values())]
    assert min(moved) > 1e-4


@settings(max_examples=200)
@given(st.sampled_from(sorted(OPTIMIZERS)), st.integers(1, 300), st.integers(1, 300),
       st.sampled_from(["float32", "float64"]), st.sampled_from([1, 2, 3]),
       st.sampled_from([None, 1.0, float("inf")]))
def test_step_matches_documented_rule_at_random_sizes(name, n_in, n_out, dtype, thread_count,
                                                      clip):
    # Parameter counts drawn at random (up to 90,300) reach the update's vector loops with their
    # tails, its split between 1 to 3 threads, and the gradient norm's blocks of 8,192, which
    # clipping reads (at 1.0 it scales most steps' gradients; at infinity it computes the norm
    # and leaves them).
    #
    # An element can be ill-conditioned: where the weight decay nearly cancels the gradient,
    # Adam divides the few bits left by their own size. Such elements are those whose float64
    # reference moves by more than half the tolerance when the gradients and the parameters move
    # apart by 2 epsilons of the dtype, one way or the other; they are left out of the
    # comparison (at most one element or 1% of a tensor).
    fn.set_num_threads(thread_count)
    model = fn.Sequential(fn.Linear(n_in, n_out), dtype=dtype, seed=n_in + n_out)
    cls, hyper = OPTIMIZERS[name]
    opt = cls(model.parameters(), clip_grad_norm=clip, **hyper)
    start = [p.data.astype(np.float64) for p in model.parameters()]
    ref = reference_for(cls, start, clip_grad_norm=clip, **hyper)
    nudge = 2 * float(np.finfo(dtype).eps)
    nudged = [reference_for(cls, [p * (1 - sign * nudge) for p in start], clip_grad_norm=clip,
                            **hyper) for sign in (1, -1)]
    rtol, atol = (2e-5, 2e-6) if dtype == "float32" else (1e-12, 1e-14)
    for t, grads in enumerate(model_grads(model, 3, seed=n_in * 301 + n_out), start=1):
        grads = [g.astype(dtype).astype(np.float64) for g in grads]
        apply_grads(model, grads)
        opt.step()
        ref.step(grads)
        for sign, other in zip((1, -1), nudged):
            other.step([g * (1 + sign * nudge) for g in grads])
        for i, p in enumerate(model.parameters()):
            expected = ref.params[i]
            tolerance = atol + rtol * np.abs(expected)
            kept = np.ones(expected.shape, bool)
            for other in nudged:
                kept &= np.abs(other.params[i] - expected) <= tolerance / 2
            assert np.sum(~kept) <= max(1, expected.size // 100), (
                f"step {t} {p.name}: {np.sum(~kept)} ill-conditioned elements")
            error = np.where(kept, np.abs(p.data - expected), 0)
            assert np.all(error <= tolerance), (
                f"step {t} {p.name}: {np.sum(error > tolerance)} elements differ, the worst by "
                f"{np.max(error):.3g} at {np.unravel_index(np.argmax(error - tolerance), error.shape)}")


@pytest.mark.parametrize("cls, hyper", [(fn.optim.Adam, dict(lr=1.0, betas=(0.9, 0.9999))),
                                        (fn.optim.AdamW, dict(lr=1.0, betas=(0.5, 0.99999))),
                                        (fn.optim.RMSprop, dict(lr=0.01, alpha=0.9999))])
def test_float32_running_averages_weigh_the_gradient_by_one_minus_beta_in_double(cls, hyper):
    # In float32, 1 - 0.9999f is 1.0002e-4: taken so, the second moment would be 2e-4 too large,
    # and each step 1e-4 too short (relative), far more than float32's rounding. Taken in double
    # and then rounded, as PyTorch takes it, the steps are within a few roundings of the rule.
    model = small_model(dtype="float32")
    opt = cls(model.parameters(), **hyper)
    ref = reference_for(cls, [p.data.astype(np.float64) for p in model.parameters()], **hyper)
    for t, grads in enumerate(model_grads(model, 3, seed=3), start=1):
        grads32 = [g.astype(np.float32) for g in grads]
        apply_grads(model, grads32)
        opt.step()
        ref.step(grads32)
        assert_params_close(model, ref.params, rtol=1e-5, atol=1e-6, what=f"step {t}")


@pytest.mark.parametrize("name", ["sgd_nesterov_weight_decay", "sgd_dampening", "sgd_decoupled",
                                  "adagrad_hyper", "rmsprop_centered_momentum", "adam_hyper",
                                  "adam_weight_decay", "adam_amsgrad", "adamw_hyper"])
def test_step_matches_documented_rule_float32(name, threads):
    model = small_model(dtype="float32")
    opt, ref = make_pair(name, model)
    for t, grads in enumerate(model_grads(model, STEPS, seed=2), start=1):
        grads32 = [g.astype(np.float32) for g in grads]
        apply_grads(model, grads32)
        opt.step()
        ref.step(grads32)
        assert model.parameters()[0].data.dtype == np.float32
        assert_params_close(model, ref.params, rtol=2e-5, atol=2e-6, what=f"step {t}")


def test_sgd_zero_gradient_with_zero_lr_leaves_params():
    model = small_model()
    before = model.state_dict()
    opt = fn.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=0.1)
    apply_grads(model, model_grads(model, 1, seed=3)[0])
    opt.step()
    for p in model.parameters():
        np.testing.assert_array_equal(p.data, before[p.name])


def test_adam_first_step_moves_each_param_by_lr():
    # At t = 1 the bias-corrected m / sqrt(v) is g / |g|: every parameter with a gradient much
    # larger than eps moves by lr against the sign of its gradient.
    model = small_model()
    before = model.state_dict()
    opt = fn.optim.Adam(model.parameters(), lr=0.01)
    grads = model_grads(model, 1, seed=4)[0]
    apply_grads(model, grads)
    opt.step()
    for p, g in zip(model.parameters(), grads):
        expected = before[p.name] - 0.01 * np.sign(g) * (np.abs(g) / (np.abs(g) + 1e-8))
        np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------ train_step


def numpy_linear_step(w, b, x, labels):
    """(loss, dW, db) of the mean softmax cross-entropy of x @ w.T + b."""
    logits = x @ w.T + b
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    prob = exp / exp.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -np.mean(np.log(prob[np.arange(n), labels]))
    grad = prob.copy()
    grad[np.arange(n), labels] -= 1
    grad /= n
    return loss, grad.T @ x, grad.sum(axis=0), logits


@pytest.mark.parametrize("name", ["sgd_plain", "sgd_momentum", "sgd_nesterov_weight_decay",
                                  "sgd_dampening_weight_decay", "sgd_decoupled", "adagrad_hyper",
                                  "rmsprop_centered_momentum", "rmsprop_hyper", "adam",
                                  "adam_weight_decay", "adam_amsgrad", "adamw_hyper",
                                  "adamw_amsgrad"])
def test_train_step_matches_numpy(name, threads):
    rng = np.random.default_rng(5)
    model = fn.Sequential(fn.Linear(5, 3), dtype="float64", seed=7)
    opt, ref = make_pair(name, model)
    for p in model.parameters():
        p.grad[...] = 1e3  # train_step overwrites the gradients, it does not add to them
    loss_fn = fn.CrossEntropyLoss()
    for t in range(1, 9):
        n = int(rng.integers(1, 12))
        x = rng.standard_normal((n, 5)) * 2
        labels = rng.integers(0, 3, size=n)
        w, b = ref.params
        expected_loss, dw, db, logits = numpy_linear_step(w, b, x, labels)
        value = model.train_step(x, labels, loss_fn, opt)
        ref.step([dw, db])
        assert value == pytest.approx(expected_loss, rel=1e-12)
        assert model.last_train_correct == int(np.sum(logits.argmax(axis=1) == labels))
        grads = {p.name: p.grad for p in model.parameters()}
        np.testing.assert_allclose(grads["0.weight"], dw, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(grads["0.bias"], db, rtol=1e-12, atol=1e-15)
        assert_params_close(model, ref.params, what=f"step {t}")
        assert opt.steps == t


@pytest.mark.parametrize("name", ["sgd_nesterov", "adagrad_lr_decay", "rmsprop_centered",
                                  "adam_weight_decay", "adamw", "adamw_amsgrad"])
def test_train_step_equals_forward_backward_step(name, threads):
    rng = np.random.default_rng(6)
    fused = small_model(seed=3)
    manual = small_model(seed=3)
    opt_fused, _ = make_pair(name, fused)
    opt_manual, _ = make_pair(name, manual)
    loss_fn = fn.CrossEntropyLoss()
    for _ in range(6):
        x = rng.standard_normal((10, 4))
        labels = rng.integers(0, 2, size=10)
        value = fused.train_step(x, labels, loss_fn, opt_fused)
        opt_manual.zero_grad()
        manual_value, grad = loss_fn.forward_backward(manual.forward(x), labels)
        manual.backward(grad)
        opt_manual.step()
        assert value == pytest.approx(manual_value, rel=1e-14)
        for a, b in zip(fused.parameters(), manual.parameters()):
            np.testing.assert_allclose(a.data, b.data, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(a.grad, b.grad, rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------------------------ changing hyper


@pytest.mark.parametrize("via", ["step", "train_step"])
@pytest.mark.parametrize("name", ["sgd_momentum", "adagrad_lr_decay", "rmsprop_centered_momentum",
                                  "adam", "adam_amsgrad", "adamw_hyper"])
def test_changing_lr_between_steps_takes_effect(name, via, threads):
    rng = np.random.default_rng(8)
    model = fn.Sequential(fn.Linear(5, 3), dtype="float64", seed=9)
    opt, ref = make_pair(name, model)
    schedule = [0.1, 0.1, 0.01, 0.01, 0.0, 0.3, 0.05]
    loss_fn = fn.CrossEntropyLoss()
    for t, lr in enumerate(schedule, start=1):
        opt.lr = lr
        ref.lr = lr
        assert opt.lr == lr
        x = rng.standard_normal((6, 5))
        labels = rng.integers(0, 3, size=6)
        before = model.state_dict()
        if via == "step":
            grads = [rng.standard_normal(p.shape) for p in model.parameters()]
            apply_grads(model, grads)
            opt.step()
        else:
            _, dw, db, _ = numpy_linear_step(*ref.params, x, labels)
            grads = [dw, db]
            model.train_step(x, labels, loss_fn, opt)
        ref.step(grads)
        assert_params_close(model, ref.params, what=f"step {t} (lr {lr})")
        if lr == 0.0 and "adamw" not in name:
            for p in model.parameters():
                np.testing.assert_array_equal(p.data, before[p.name])
    assert opt.steps == len(schedule)


@pytest.mark.parametrize("name", ["sgd_momentum", "adagrad", "rmsprop", "adam_weight_decay",
                                  "adamw_hyper"])
def test_changing_other_hyper_parameters_between_steps(name, threads):
    model = small_model()
    opt, ref = make_pair(name, model)
    changes = {3: ("weight_decay", 0.2), 6: ("weight_decay", 0.0)}
    if name.startswith("sgd"):
        changes[5] = ("momentum", 0.5)
        changes[9] = ("decoupled_weight_decay", True)
        changes[10] = ("weight_decay", 0.3)
    elif name.startswith("adagrad"):
        changes[5] = ("lr_decay", 0.1)
        changes[8] = ("eps", 1e-3)
    elif name.startswith("rmsprop"):
        # Momentum and centring switched on later start their buffers at 0, as PyTorch's do.
        changes[5] = ("alpha", 0.8)
        changes[8] = ("momentum", 0.7)
        changes[11] = ("centered", True)
    else:
        changes[5] = ("betas", (0.7, 0.95))
        changes[8] = ("eps", 1e-4)
        changes[10] = ("amsgrad", True)  # the maximum starts at 0: max(0, v) = v
    for t, grads in enumerate(model_grads(model, STEPS, seed=10), start=1):
        if t in changes:
            key, value = changes[t]
            setattr(opt, key, value)
            setattr(ref, key, value)
        apply_grads(model, grads)
        opt.step()
        ref.step(grads)
        assert_params_close(model, ref.params, what=f"step {t}")


# ------------------------------------------------------------------------------ validation

INVALID = [
    (fn.optim.SGD, dict(lr=-0.1)),
    (fn.optim.SGD, dict(lr=float("nan"))),
    (fn.optim.SGD, dict(lr=float("inf"))),
    (fn.optim.SGD, dict(lr=0.1, momentum=-0.5)),
    (fn.optim.SGD, dict(lr=0.1, momentum=float("nan"))),
    (fn.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=1.5)),
    (fn.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=-0.1)),
    (fn.optim.SGD, dict(lr=0.1, weight_decay=-1e-4)),
    (fn.optim.SGD, dict(lr=0.1, weight_decay=float("nan"))),
    (fn.optim.SGD, dict(lr=0.1, nesterov=True)),  # needs momentum
    (fn.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)),
    (fn.optim.Adam, dict(lr=-1e-3)),
    (fn.optim.Adam, dict(lr=float("nan"))),
    (fn.optim.Adam, dict(betas=(1.0, 0.999))),
    (fn.optim.Adam, dict(betas=(0.9, 1.0))),
    (fn.optim.Adam, dict(betas=(0.9, 1.5))),
    (fn.optim.Adam, dict(betas=(-0.1, 0.999))),
    (fn.optim.Adam, dict(betas=(float("nan"), 0.999))),
    (fn.optim.Adam, dict(betas=(0.9, float("nan")))),
    (fn.optim.Adam, dict(betas=(0.9,))),
    (fn.optim.Adam, dict(betas=0.9)),
    (fn.optim.Adam, dict(eps=-1e-8)),
    (fn.optim.Adam, dict(eps=float("nan"))),
    (fn.optim.Adam, dict(weight_decay=-0.1)),
    (fn.optim.AdamW, dict(lr=-1e-3)),
    (fn.optim.AdamW, dict(betas=(0.9, 1.0))),
    (fn.optim.AdamW, dict(betas=(1.0, 0.5))),
    (fn.optim.AdamW, dict(eps=float("inf"))),
    (fn.optim.AdamW, dict(weight_decay=float("nan"))),
    (fn.optim.AdamW, dict(weight_decay=-0.01)),
    (fn.optim.Adagrad, dict(lr=-0.1)),
    (fn.optim.Adagrad, dict(lr_decay=-0.1)),
    (fn.optim.Adagrad, dict(lr_decay=float("nan"))),
    (fn.optim.Adagrad, dict(initial_accumulator_value=-1.0)),
    (fn.optim.Adagrad, dict(eps=-1e-10)),
    (fn.optim.Adagrad, dict(weight_decay=float("inf"))),
    (fn.optim.RMSprop, dict(lr=float("nan"))),
    (fn.optim.RMSprop, dict(alpha=1.5)),
    (fn.optim.RMSprop, dict(alpha=-0.1)),
    (fn.optim.RMSprop, dict(eps=-1.0)),
    (fn.optim.RMSprop, dict(momentum=-0.9)),
    (fn.optim.RMSprop, dict(weight_decay=-1.0)),
    (fn.optim.SGD, dict(lr=0.1, clip_grad_norm=0.0)),
    (fn.optim.SGD, dict(lr=0.1, clip_grad_norm=-1.0)),
    (fn.optim.SGD, dict(lr=0.1, clip_grad_norm=float("nan"))),
    (fn.optim.Adam, dict(clip_grad_value=0.0)),
    (fn.optim.Adam, dict(clip_grad_value=float("inf"))),
    (fn.optim.RMSprop, dict(l1=-0.1)),
    (fn.optim.AdamW, dict(max_norm=0.0)),
    (fn.optim.AdamW, dict(max_norm=-2.0)),
]


@pytest.mark.parametrize("cls, kwargs", INVALID,
                         ids=[f"{c.__name__}-{k}" for c, k in INVALID])
def test_invalid_hyper_parameters_raise(cls, kwargs):
    model = small_model()
    with pytest.raises(ValueError):
        cls(model.parameters(), **kwargs)


@pytest.mark.parametrize("cls, kwargs", [(c, k) for c, k in INVALID if "nesterov" not in k],
                         ids=[f"{c.__name__}-{k}" for c, k in INVALID if "nesterov" not in k])
def test_invalid_hyper_parameter_assignment_raises_and_keeps_old_value(cls, kwargs):
    # The bad value is the last one of each INVALID entry; the others are valid.
    *valid, (key, value) = kwargs.items()
    model = small_model()
    opt = cls(model.parameters(), **{"lr": 0.01, **dict(valid)})
    old = getattr(opt, key)
    with pytest.raises(ValueError):
        setattr(opt, key, value)
    assert getattr(opt, key) == old
    # The optimizer still works with its old settings.
    apply_grads(model, model_grads(model, 1, seed=11)[0])
    before = model.state_dict()
    opt.step()
    assert any(not np.array_equal(p.data, before[p.name]) for p in model.parameters())


def test_sgd_nesterov_set_later_without_momentum_raises_at_step():
    model = small_model()
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    before = model.state_dict()
    apply_grads(model, model_grads(model, 1, seed=12)[0])
    with pytest.raises(ValueError):
        opt.nesterov = True
        opt.step()
    for p in model.parameters():
        np.testing.assert_array_equal(p.data, before[p.name])


def test_optimizer_over_another_models_parameters_raises():
    model_a, model_b = small_model(seed=1), small_model(seed=2)
    opt_a = fn.optim.SGD(model_a.parameters(), lr=0.1)
    x = np.ones((3, 4))
    labels = np.array([0, 1, 0])
    b_before = model_b.state_dict()
    with pytest.raises(ValueError):
        model_b.train_step(x, labels, fn.CrossEntropyLoss(), opt_a)
    for p in model_b.parameters():
        np.testing.assert_array_equal(p.data, b_before[p.name])
    # Stepping model a's optimizer changes model a only.
    apply_grads(model_b, model_grads(model_b, 1, seed=13)[0])
    apply_grads(model_a, model_grads(model_a, 1, seed=14)[0])
    a_before = model_a.state_dict()
    opt_a.step()
    for p in model_b.parameters():
        np.testing.assert_array_equal(p.data, b_before[p.name])
    assert any(not np.array_equal(p.data, a_before[p.name]) for p in model_a.parameters())


def test_optimizer_needs_all_parameters_of_one_model():
    model_a, model_b = small_model(seed=1), small_model(seed=2)
    for cls in (fn.optim.SGD, fn.optim.Adam, fn.optim.AdamW):
        with pytest.raises(TypeError):
            cls(model_a.parameters() + model_b.parameters(), lr=0.1)
        with pytest.raises(TypeError):
            cls([model_a.parameters()[0], model_b.parameters()[1]] + model_a.parameters()[2:],
                lr=0.1)
        with pytest.raises(ValueError):
            cls(model_a.parameters()[:2], lr=0.1)
        with pytest.raises(ValueError):
            cls([], lr=0.1)
        with pytest.raises(TypeError):
            cls([p.data for p in model_a.parameters()], lr=0.1)


# ------------------------------------------------------------------------------ state dict


def batches(count, seed):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((7, 4)), rng.integers(0, 2, size=7)) for _ in range(count)]


def run(model, opt, data, via):
    losses = []
    for t, (x, labels) in enumerate(data):
        if via == "train_step":
            losses.append(model.train_step(x, labels, fn.CrossEntropyLoss(), opt))
        else:
            opt.zero_grad()
            value, grad = fn.CrossEntropyLoss().forward_backward(model.forward(x), labels)
            model.backward(grad)
            opt.step()
            losses.append(value)
    return losses


ROUND_TRIP = ["sgd_momentum", "sgd_nesterov_weight_decay", "sgd_dampening_weight_decay",
              "sgd_plain", "sgd_decoupled", "adagrad_hyper", "rmsprop_centered_momentum",
              "rmsprop_momentum", "adam_weight_decay", "adam_hyper", "adam_amsgrad",
              "adamw_hyper", "adamw_amsgrad"]


@pytest.mark.parametrize("via", ["step", "train_step"])
@pytest.mark.parametrize("name", ROUND_TRIP)
def test_state_dict_round_trip_continues_bitwise(name, via, threads):
    data = batches(10, seed=15)
    cls, hyper = OPTIMIZERS[name]

    # Uninterrupted run.
    model = small_model(seed=4)
    opt = cls(model.parameters(), **hyper)
    run(model, opt, data[:5], via)
    model_state = model.state_dict()
    opt_state = opt.state_dict()
    saved = copy.deepcopy(opt_state)
    assert opt_state["steps"] == 5 and opt_state["type"] == cls.__name__
    expected_losses = run(model, opt, data[5:], via)
    # The saved state is a copy: training on did not change it.
    assert opt_state["steps"] == saved["steps"]
    for a, b in zip(opt_state["state"], saved["state"]):
        np.testing.assert_array_equal(a, b)

    # Resumed in a fresh model and optimizer, built with other hyper-parameters.
    resumed = small_model(seed=99)
    resumed.load_state_dict(model_state)
    resumed_opt = cls(resumed.parameters(), lr=0.5)
    resumed_opt.load_state_dict(opt_state)
    assert resumed_opt.steps == 5
    assert resumed_opt.lr == hyper.get("lr", resumed_opt.lr)
    losses = run(resumed, resumed_opt, data[5:], via)

    assert losses == expected_losses
    for a, b in zip(resumed.parameters(), model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    for a, b in zip(resumed_opt.state_dict()["state"], opt.state_dict()["state"]):
        np.testing.assert_array_equal(a, b)
    assert resumed_opt.steps == opt.steps == 10


# The state slots in C's order (fastnet.h) and the reference's names for them.
SLOTS = {
    "adam_amsgrad": ["m", "v", "v_max"],
    "adamw_hyper": ["m", "v"],
    "sgd_momentum": ["buf"],
    "adagrad_hyper": ["sum"],
    "rmsprop_centered_momentum": ["v", "b", "g_ave"],
    "rmsprop_momentum": ["v", "b"],
    "rmsprop_hyper": ["v"],
}


@pytest.mark.parametrize("name", list(SLOTS))
def test_state_dict_holds_the_documented_state(name):
    model = small_model()
    opt, ref = make_pair(name, model)
    for grads in model_grads(model, 3, seed=16):
        apply_grads(model, grads)
        opt.step()
        ref.step(grads)
    state = opt.state_dict()
    cls, hyper = OPTIMIZERS[name]
    assert state["type"] == cls.__name__ and state["steps"] == 3
    assert [g["params"] for g in state["param_groups"]] == [[p.name for p in model.parameters()]]
    group = state["param_groups"][0]
    assert group["lr"] == group["initial_lr"] == hyper.get("lr", KINDS[cls][1]["lr"])
    assert group["weight_decay"] == hyper.get("weight_decay", KINDS[cls][1].get("weight_decay", 0))
    assert group["l1"] == 0.0 and group["max_norm"] is None
    assert {k: v for k, v in state["hyper"].items() if k in hyper} == \
        {k: v for k, v in hyper.items() if k not in ("lr", "weight_decay")}
    assert len(state["state"]) == len(SLOTS[name])
    # The state slots are laid out as the parameter arena (which may pad between parameters).
    info = [t for t in model._core.tensor_info() if not t[3]]  # parameters, not buffers
    for slot, key in zip(state["state"], SLOTS[name]):
        for (tensor, shape, offset, _, _), ref_state in zip(info, ref.state):
            count = int(np.prod(shape))
            np.testing.assert_allclose(slot[offset:offset + count], ref_state[key].ravel(),
                                       rtol=1e-12, atol=1e-300, err_msg=f"{key} of {tensor}")


def test_load_state_dict_rejects_mismatches():
    model = small_model()
    opt = fn.optim.Adam(model.parameters())
    apply_grads(model, model_grads(model, 1, seed=17)[0])
    opt.step()
    state = opt.state_dict()
    with pytest.raises(ValueError):
        fn.optim.SGD(small_model().parameters(), lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError):
        fn.optim.AdamW(small_model().parameters()).load_state_dict(state)
    bigger = fn.Sequential(fn.Linear(4, 5), fn.Tanh(), fn.Linear(5, 2), dtype="float64")
    with pytest.raises(ValueError):
        fn.optim.Adam(bigger.parameters()).load_state_dict(state)


def test_state_dict_of_fresh_optimizer_loads():
    model = small_model()
    opt = fn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = opt.state_dict()
    other = small_model()
    other_opt = fn.optim.SGD(other.parameters(), lr=0.2, momentum=0.5)
    other_opt.load_state_dict(state)
    assert other_opt.lr == 0.1 and other_opt.momentum == 0.9 and other_opt.steps == 0


def test_new_optimizer_starts_from_fresh_state():
    model = small_model()
    first = fn.optim.Adam(model.parameters(), lr=0.01)
    for grads in model_grads(model, 3, seed=18):
        apply_grads(model, grads)
        first.step()
    second, ref = make_pair("adam_hyper", model)  # a fresh Adam: t = 1, zero moments
    grads = model_grads(model, 1, seed=19)[0]
    apply_grads(model, grads)
    second.step()
    ref.step(grads)
    assert second.steps == 1
    assert_params_close(model, ref.params)


def test_sgd_momentum_turned_on_later_starts_buffer_from_gradient():
    model = small_model()
    opt, ref = make_pair("sgd_plain", model)
    for t, grads in enumerate(model_grads(model, 5, seed=20), start=1):
        if t == 3:
            for target in (opt, ref):
                target.momentum, target.dampening = 0.9, 0.5
        apply_grads(model, grads)
        opt.step()
        ref.step(grads)
        assert_params_close(model, ref.params, what=f"step {t}")


def test_adagrad_sums_start_at_initial_accumulator_value_again_for_a_new_optimizer():
    model = small_model()
    first, _ = make_pair("adagrad_hyper", model)
    for grads in model_grads(model, 3, seed=22):
        apply_grads(model, grads)
        first.step()
    assert first.state_dict()["state"][0].max() > 1
    second, ref = make_pair("adagrad_hyper", model)
    for grads in model_grads(model, 4, seed=23):
        apply_grads(model, grads)
        second.step()
        ref.step(grads)
        assert_params_close(model, ref.params)
    assert second.steps == 4


def test_state_slots_follow_the_hyper_parameters():
    model = small_model()
    grads = model_grads(model, 2, seed=24)
    cases = [(fn.optim.SGD(model.parameters(), lr=0.1), 1),
             (fn.optim.Adagrad(model.parameters()), 1),
             (fn.optim.RMSprop(model.parameters()), 1),
             (fn.optim.RMSprop(model.parameters(), momentum=0.5), 2),
             (fn.optim.RMSprop(model.parameters(), centered=True), 3),
             (fn.optim.Adam(model.parameters()), 2),
             (fn.optim.Adam(model.parameters(), amsgrad=True), 3),
             (fn.optim.AdamW(model.parameters(), amsgrad=True), 3)]
    for opt, slots in cases:
        for g in grads:
            apply_grads(model, g)
            opt.step()
        assert len(opt.state_dict()["state"]) == slots == opt._state_slots(opt._values), opt


def test_optimizer_names_and_aliases():
    assert fn.optim.RMSProp is fn.optim.RMSprop
    assert set(fn.optim.OPTIMIZERS) == {"sgd", "adam", "adamw", "adagrad", "rmsprop"}
    model = small_model()
    opt = fn.optim.RMSprop(model.parameters(), lr=0.01, momentum=0.9, l1=1e-4, max_norm=3.0,
                           clip_grad_norm=1.0)
    assert repr(opt) == ("RMSprop(lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.0, "
                         "momentum=0.9, centered=False, l1=0.0001, max_norm=3.0, "
                         "clip_grad_norm=1.0)")
    assert opt.lr == 0.01 and opt.l1 == 1e-4 and opt.max_norm == 3.0 and opt.clip_grad_norm == 1.0
    with pytest.raises(AttributeError):
        opt.nesterov  # noqa: B018


# ------------------------------------------------------------------------------ torch.optim

try:
    import torch
except ImportError:  # the comparisons with torch are skipped
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

TORCH_NAMES = {fn.optim.SGD: "SGD", fn.optim.Adagrad: "Adagrad", fn.optim.RMSprop: "RMSprop",
               fn.optim.Adam: "Adam", fn.optim.AdamW: "AdamW"}
# Our state slots (fastnet.h's order) by torch's names.
TORCH_SLOTS = {"SGD": ["momentum_buffer"], "Adagrad": ["sum"],
               "RMSprop": ["square_avg", "momentum_buffer", "grad_avg"],
               "Adam": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
               "AdamW": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]}


def torch_pair(cls, hyper, model):
    """A torch optimizer of the same class and hyper-parameters over float64 copies of the
    model's parameters."""
    tensors = [torch.tensor(p.data.copy(), dtype=torch.float64, requires_grad=True)
               for p in model.parameters()]
    return tensors, getattr(torch.optim, TORCH_NAMES[cls])(tensors, **hyper)


@needs_torch
@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n != "sgd_decoupled"])
def test_matches_torch_optim(name, threads):
    model = small_model()
    cls, hyper = OPTIMIZERS[name]
    opt = cls(model.parameters(), **hyper)
    tensors, theirs = torch_pair(cls, hyper, model)
    for t, grads in enumerate(model_grads(model, 25, seed=25), start=1):
        apply_grads(model, grads)
        opt.step()
        for tensor, g in zip(tensors, grads):
            tensor.grad = torch.from_numpy(g.copy())
        theirs.step()
        assert_params_close(model, [x.detach().numpy() for x in tensors], rtol=1e-11,
                            atol=1e-13, what=f"step {t} against torch.optim")
    # The state too, slot by slot, where torch keeps the same one.
    info = [x for x in model._core.tensor_info() if not x[3]]
    slots = opt.state_dict()["state"]
    for slot, key in zip(slots, TORCH_SLOTS[TORCH_NAMES[cls]]):
        for (tensor_name, shape, offset, _, _), tensor in zip(info, tensors):
            state = theirs.state[tensor]
            if key in state:
                count = int(np.prod(shape))
                np.testing.assert_allclose(slot[offset:offset + count],
                                           state[key].numpy().ravel(), rtol=1e-10,
                                           atol=1e-300, err_msg=f"{key} of {tensor_name}")
    if "step" in theirs.state[tensors[0]]:  # torch's SGD counts none
        assert opt.steps == int(theirs.state[tensors[0]]["step"]) == 25


@needs_torch
@pytest.mark.parametrize("name", ["sgd_nesterov_weight_decay", "adagrad_hyper",
                                  "rmsprop_centered_momentum", "adam_amsgrad", "adamw_hyper"])
def test_matches_torch_optim_float32(name):
    model = small_model(dtype="float32")
    cls, hyper = OPTIMIZERS[name]
    opt = cls(model.parameters(), **hyper)
    tensors = [torch.tensor(p.data.copy(), requires_grad=True) for p in model.parameters()]
    theirs = getattr(torch.optim, TORCH_NAMES[cls])(tensors, **hyper)
    for t, grads in enumerate(model_grads(model, 25, seed=26), start=1):
        grads32 = [g.astype(np.float32) for g in grads]
        apply_grads(model, grads32)
        opt.step()
        for tensor, g in zip(tensors, grads32):
            tensor.grad = torch.from_numpy(g.copy())
        theirs.step()
        assert_params_close(model, [x.detach().numpy() for x in tensors], rtol=2e-5,
                            atol=2e-6, what=f"step {t} against torch.optim")


@needs_torch
@pytest.mark.parametrize("name", ["sgd_decoupled"])
def test_sgd_decoupled_weight_decay_is_sgd_on_decayed_weights(name):
    # torch's SGD has no decoupled decay: p *= 1 - lr * wd, then torch's SGD step without decay.
    model = small_model()
    cls, hyper = OPTIMIZERS[name]
    opt = cls(model.parameters(), **hyper)
    torch_hyper = {k: v for k, v in hyper.items() if k not in ("weight_decay",
                                                                "decoupled_weight_decay")}
    tensors, theirs = torch_pair(cls, torch_hyper, model)
    for grads in model_grads(model, 25, seed=27):
        apply_grads(model, grads)
        opt.step()
        with torch.no_grad():
            for tensor in tensors:
                tensor.mul_(1 - hyper["lr"] * hyper["weight_decay"])
        for tensor, g in zip(tensors, grads):
            tensor.grad = torch.from_numpy(g.copy())
        theirs.step()
    assert_params_close(model, [x.detach().numpy() for x in tensors], rtol=1e-11, atol=1e-13)


def test_a_group_without_an_optional_key_is_pushed_once():
    """A group's dict that lost max_norm reads as None (off), what it held: the steps after do not
    push the groups to C again, and a later write is still seen; the optimizer still prints."""
    model = fn.Sequential(fn.Linear(4, 3), input_shape=(4,))
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    x, y = np.ones((2, 4), np.float32), np.array([0, 1])
    loss = fn.CrossEntropyLoss()
    model.train_step(x, y, loss, opt)
    del opt.param_groups[0]["max_norm"]
    assert not opt._needs_configure()
    model.train_step(x, y, loss, opt)
    assert not opt._needs_configure()
    assert repr(opt).startswith("SGD(lr=0.1, ") and "max_norm" not in repr(opt)
    opt.param_groups[0]["lr"] = 0.2
    assert opt._needs_configure()
    model.train_step(x, y, loss, opt)
    assert not opt._needs_configure() and opt.lr == 0.2
