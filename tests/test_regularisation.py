"""Parameter groups, L1 and L2 penalties, max-norm and gradient clipping, against the formulas
written out in numpy (float64, tests/optim_reference.py), and against torch when it is importable.

Also: the one-line exemption of biases and normalisation parameters from decay, group values
written between steps (as schedules do), the refusal of a non-finite gradient norm, and the
state-dict round trip of all of it.
"""

import copy

import numpy as np
import pytest

import fastnet as fn
from optim_reference import (Reference, apply_grads, assert_params_close, model_grads,
                             renorm_rows)

STEPS = 24

KINDS = {fn.optim.SGD: "sgd", fn.optim.Adagrad: "adagrad", fn.optim.RMSprop: "rmsprop",
         fn.optim.Adam: "adam", fn.optim.AdamW: "adamw"}


def conv_model(dtype="float64", seed=0):
    """Every kind of parameter: a 4-D conv weight and its bias, batch norm's weight and bias, 2-D
    linear weights and their biases."""
    return fn.Sequential(fn.Conv2d(2, 4, 3), fn.BatchNorm2d(4), fn.ReLU(), fn.Flatten(),
                         fn.Linear(4 * 4 * 4, 5), fn.Tanh(), fn.Linear(5, 3),
                         input_shape=(2, 6, 6), dtype=dtype, seed=seed)


def mlp(dtype="float64", seed=0):
    return fn.Sequential(fn.Linear(4, 6), fn.Tanh(), fn.Linear(6, 3), dtype=dtype, seed=seed)


def reference(model, cls, groups=None, **hyper):
    """The numpy reference of `cls` over the model's parameters; groups as given to fastnet
    (dicts with "params"), turned into the reference's member indices."""
    params = model.parameters()
    index = {p.name: i for i, p in enumerate(params)}
    specs = None
    if groups is not None:
        specs = [{"members": [index[p.name] for p in g["params"]],
                  **{k: v for k, v in g.items() if k != "params"}} for g in groups]
    biases = set(model._core.bias_tensors())
    rows = [p.data.ndim >= 2 and p.name not in biases for p in params]
    defaults = {fn.optim.AdamW: dict(lr=1e-3, weight_decay=1e-2), fn.optim.Adam: dict(lr=1e-3)}
    return Reference(KINDS[cls], [p.data for p in params], groups=specs, rows=rows,
                     **{**defaults.get(cls, dict(lr=0.01)), **hyper})


def split(model):
    """Two groups by hand: the weights of two or more dimensions, and the rest."""
    params = model.parameters()
    return ([p for p in params if p.data.ndim >= 2], [p for p in params if p.data.ndim < 2])


def own_lr_and_weight_decay(weights, rest, lr):
    """The weights at twice lr with weight decay 0.05, the rest at lr without decay."""
    return [{"params": weights, "lr": lr * 2, "weight_decay": 0.05},
            {"params": rest, "weight_decay": 0.0}]


def run_steps(model, opt, ref, sequence, what=""):
    for t, grads in enumerate(sequence, start=1):
        apply_grads(model, grads)
        opt.step()
        ref.step(grads)
        assert_params_close(model, ref.params, what=f"{what} step {t}")


# ------------------------------------------------------------------------------ groups

GROUP_CASES = {
    "sgd": (fn.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "sgd_nesterov_decoupled": (fn.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True,
                                                  decoupled_weight_decay=True)),
    "adagrad": (fn.optim.Adagrad, dict(lr=0.05, lr_decay=0.01)),
    "rmsprop": (fn.optim.RMSprop, dict(lr=0.002, momentum=0.5, centered=True)),
    "adam_amsgrad": (fn.optim.Adam, dict(lr=0.01, amsgrad=True)),
    "adamw": (fn.optim.AdamW, dict(lr=0.01, betas=(0.8, 0.99))),
}


@pytest.mark.parametrize("case", list(GROUP_CASES))
def test_groups_have_their_own_lr_and_weight_decay(case, threads):
    model = conv_model()
    cls, hyper = GROUP_CASES[case]
    weights, rest = split(model)
    groups = own_lr_and_weight_decay(weights, rest, hyper["lr"])
    opt = cls(groups, **hyper)
    assert [g["lr"] for g in opt.param_groups] == [hyper["lr"] * 2, hyper["lr"]]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.param_groups[0]["params"] == weights and opt.param_groups[1]["params"] == rest
    ref = reference(model, cls, groups, **hyper)
    run_steps(model, opt, ref, model_grads(model, STEPS, seed=1), case)
    assert model._core.param_groups() == [(hyper["lr"] * 2, 0.05, 0.0, 0.0),
                                          (hyper["lr"], 0.0, 0.0, 0.0)]


def test_groups_in_any_order_and_one_tensor_groups():
    model = conv_model()
    params = model.parameters()
    groups = [{"params": [p], "lr": 0.01 * (i + 1), "weight_decay": 0.01 * i}
              for i, p in enumerate(reversed(params))]
    opt = fn.optim.SGD(groups, lr=0.1, momentum=0.5)
    ref = reference(model, fn.optim.SGD, groups, lr=0.1, momentum=0.5)
    run_steps(model, opt, ref, model_grads(model, STEPS, seed=2))


def test_param_groups_exempts_biases_and_normalisation_parameters():
    model = conv_model()
    groups = fn.optim.param_groups(model, weight_decay=5e-4)
    names = [[p.name for p in g["params"]] for g in groups]
    assert names == [["0.weight", "4.weight", "6.weight"],
                     ["0.bias", "1.weight", "1.bias", "4.bias", "6.bias"]]
    assert [(g["weight_decay"], g["l1"]) for g in groups] == [(5e-4, 0.0), (0.0, 0.0)]
    # The biases are those declared as biases in C, not found by their names.
    assert model._core.bias_tensors() == ["0.bias", "1.bias", "4.bias", "6.bias"]
    only_bias = fn.optim.param_groups(model, 1e-3, no_decay=("bias",))
    assert [p.name for p in only_bias[1]["params"]] == ["0.bias", "1.bias", "4.bias", "6.bias"]
    only_norm = fn.optim.param_groups(model, 1e-3, no_decay="norm")
    assert [p.name for p in only_norm[1]["params"]] == ["1.weight", "1.bias"]
    pattern = fn.optim.param_groups(model, 1e-3, no_decay=("bias", "6.*"), l1=1e-5)
    assert [p.name for p in pattern[1]["params"]] == ["0.bias", "1.bias", "4.bias", "6.weight",
                                                     "6.bias"]
    assert pattern[0]["l1"] == 1e-5 and pattern[1]["l1"] == 0.0
    everything = fn.optim.param_groups(model, 1e-3, no_decay=())
    assert len(everything) == 1 and len(everything[0]["params"]) == 8
    no_biases = fn.Sequential(fn.Linear(4, 3, bias=False), fn.Tanh(), fn.Linear(3, 2, bias=False),
                              dtype="float64")
    assert [len(g["params"]) for g in fn.optim.param_groups(no_biases, 1e-3)] == [2]


def test_param_groups_trains_without_decay_on_the_exempt(threads):
    model = conv_model()
    groups = fn.optim.param_groups(model, weight_decay=0.1)
    opt = fn.optim.SGD(groups, lr=0.1, momentum=0.9)
    ref = reference(model, fn.optim.SGD, groups, lr=0.1, momentum=0.9)
    run_steps(model, opt, ref, model_grads(model, STEPS, seed=3))
    # With zero gradients, only the decayed parameters move.
    before = model.state_dict()
    opt = fn.optim.SGD(fn.optim.param_groups(model, weight_decay=0.1), lr=0.1)
    model.zero_grad()
    opt.step()
    moved = sorted(p.name for p in model.parameters()
                   if not np.array_equal(p.data, before[p.name]))
    assert moved == ["0.weight", "4.weight", "6.weight"]


def test_param_groups_rejects_bad_arguments():
    model = conv_model()
    with pytest.raises(ValueError, match=r"no_decay pattern 'biases' matches no parameter"):
        fn.optim.param_groups(model, 1e-3, no_decay=("biases",))
    with pytest.raises(TypeError, match="no_decay holds strings"):
        fn.optim.param_groups(model, 1e-3, no_decay=(1,))
    with pytest.raises(ValueError, match=r"param_groups weight_decay must be >= 0.0, got -1"):
        fn.optim.param_groups(model, -1)
    with pytest.raises(TypeError, match="model must be a fastnet model"):
        fn.optim.param_groups(model.parameters(), 1e-3)


def test_every_parameter_in_exactly_one_group():
    model, other = mlp(), mlp(seed=1)
    params = model.parameters()
    cases = [
        (ValueError, r"parameter '0.weight' is in param_groups\[0\] and param_groups\[1\]",
         [{"params": params}, {"params": params[:1]}]),
        (ValueError, r"parameters \['2.weight', '2.bias'\] are in no group",
         [{"params": params[:2]}]),
        (ValueError, r"param_groups\[1\] has unknown keys \['momentum'\]",
         [{"params": params[:2]}, {"params": params[2:], "momentum": 0.5}]),
        (ValueError, r"param_groups\[0\] has no 'params'", [{"lr": 0.1}]),
        (TypeError, "mixes parameter groups", [{"params": params[:2]}, *params[2:]]),
        (TypeError, "parameters of one fastnet model",
         [{"params": params[:2]}, {"params": other.parameters()[2:]}]),
        (TypeError, r"got ndarray in param_groups\[0\]", [{"params": [p.data for p in params]}]),
        (ValueError, "the parameter list is empty", []),
        (ValueError, "hold no parameters", [{"params": []}]),
        (ValueError, r"SGD param_groups\[1\]\['lr'\] must be >= 0.0, got -0.5",
         [{"params": params[:2]}, {"params": params[2:], "lr": -0.5}]),
        (ValueError, r"SGD param_groups\[0\]\['max_norm'\] must be None \(off\) or a finite",
         [{"params": params, "max_norm": 0}]),
    ]
    for error, message, groups in cases:
        with pytest.raises(error, match=message):
            fn.optim.SGD(groups, lr=0.1)
    # An empty group beside full ones is allowed, as in PyTorch.
    opt = fn.optim.SGD([{"params": params}, {"params": [], "lr": 1.0}], lr=0.1)
    apply_grads(model, model_grads(model, 1, seed=4)[0])
    opt.step()


def test_initial_lr_is_the_lr_at_construction_unless_given():
    model = mlp()
    weights, rest = split(model)
    opt = fn.optim.Adam([{"params": weights, "lr": 0.1},
                         {"params": rest, "initial_lr": 0.5}], lr=0.01)
    assert [(g["lr"], g["initial_lr"]) for g in opt.param_groups] == [(0.1, 0.1), (0.01, 0.5)]
    assert set(opt.param_groups[0]) == {"params", "lr", "initial_lr", "weight_decay", "l1",
                                        "max_norm"}


@pytest.mark.parametrize("via", ["step", "train_step"])
def test_writing_group_values_takes_effect_at_the_next_step(via, threads):
    rng = np.random.default_rng(5)
    model = fn.Sequential(fn.Linear(5, 3), dtype="float64", seed=9)
    weight, bias = model.parameters()
    groups = [{"params": [weight], "weight_decay": 0.01}, {"params": [bias]}]
    opt = fn.optim.SGD(groups, lr=0.1, momentum=0.9)
    ref = reference(model, fn.optim.SGD, groups, lr=0.1, momentum=0.9)
    changes = {2: (1, "lr", 0.5), 3: (0, "lr", 0.01), 4: (0, "weight_decay", 0.2),
               5: (1, "l1", 0.01), 6: (0, "max_norm", 0.3), 7: (None, "lr", 0.05),
               8: (None, "weight_decay", 0.0), 9: (1, "lr", 0.0)}
    loss_fn = fn.CrossEntropyLoss()
    for t in range(1, 11):
        if t in changes:
            group, key, value = changes[t]
            if group is None:  # the attribute sets every group
                setattr(opt, key, value)
                setattr(ref, key, value)
                assert getattr(opt, key) == value
                assert [g[key] for g in opt.param_groups] == [value, value]
            else:
                opt.param_groups[group][key] = value
                ref.groups[group][key] = value
        before = bias.data.copy()
        if via == "step":
            grads = [rng.standard_normal(p.shape) for p in model.parameters()]
            apply_grads(model, grads)
            opt.step()
        else:
            x = rng.standard_normal((6, 5))
            labels = rng.integers(0, 3, size=6)
            model.train_step(x, labels, loss_fn, opt)
            grads = [weight.grad.copy(), bias.grad.copy()]
        ref.step(grads)
        assert_params_close(model, ref.params, what=f"step {t}")
        if t == 9:  # the bias group's lr is 0 and its momentum buffer keeps nothing but lr * b
            np.testing.assert_array_equal(bias.data, before)
    # Reading an attribute gives the first group's value.
    opt.param_groups[1]["lr"] = 0.7
    assert opt.lr == 0.05


def test_a_bad_group_value_is_refused_at_the_next_step_with_nothing_changed():
    model = mlp()
    weights, rest = split(model)
    opt = fn.optim.Adam([{"params": weights}, {"params": rest}], lr=0.01)
    apply_grads(model, model_grads(model, 1, seed=6)[0])
    opt.step()
    before = model.state_dict()
    state = opt.state_dict()
    opt.param_groups[1]["lr"] = -1
    with pytest.raises(ValueError, match=r"Adam param_groups\[1\]\['lr'\] must be >= 0.0, got -1"):
        opt.step()
    opt.param_groups[1]["lr"] = float("nan")
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\] must be a finite number"):
        model.train_step(np.ones((2, 4)), np.array([0, 1]), fn.CrossEntropyLoss(), opt)
    for p in model.parameters():
        np.testing.assert_array_equal(p.data, before[p.name])
    assert opt.steps == 1
    for a, b in zip(opt.state_dict()["state"], state["state"]):
        np.testing.assert_array_equal(a, b)
    opt.param_groups[1]["lr"] = 0.02
    opt.step()
    assert opt.steps == 2


def test_schedules_scale_every_group_from_its_initial_lr(threads):
    schedules = pytest.importorskip("fastnet.schedules")
    model = conv_model()
    weights, rest = split(model)
    groups = [{"params": weights, "lr": 0.1}, {"params": rest, "lr": 0.02}]
    opt = fn.optim.SGD(groups, lr=0.1, momentum=0.9)
    ref = reference(model, fn.optim.SGD, groups, lr=0.1, momentum=0.9)
    schedule = schedules.StepLR(opt, step_size=3, gamma=0.5, interval="step")
    for t, grads in enumerate(model_grads(model, STEPS, seed=7)):
        factor = 0.5 ** (t // 3)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * factor, 0.02 * factor])
        for group, ref_group in zip(opt.param_groups, ref.groups):
            ref_group["lr"] = group["lr"]
        apply_grads(model, grads)
        opt.step()
        ref.step(grads)
        assert_params_close(model, ref.params, what=f"step {t}")
        # The C model runs with the rates the schedule wrote.
        assert [model._core.group_lr(g) for g in range(2)] == [g["lr"] for g in opt.param_groups]
        schedule.step()


# ------------------------------------------------------------------------------ L1 and max-norm


@pytest.mark.parametrize("cls, hyper", [(fn.optim.SGD, dict(lr=0.05)),
                                        (fn.optim.SGD, dict(lr=0.05, momentum=0.9,
                                                            weight_decay=0.01)),
                                        (fn.optim.Adam, dict(lr=0.01)),
                                        (fn.optim.AdamW, dict(lr=0.01)),
                                        (fn.optim.RMSprop, dict(lr=0.003, centered=True))],
                         ids=["sgd", "sgd_momentum_l2", "adam", "adamw", "rmsprop"])
def test_l1_penalty_adds_l1_sign_p_to_the_gradient(cls, hyper, threads):
    model = conv_model()
    params = model.parameters()
    params[0].data.reshape(-1)[::7] = 0.0  # sign(0) = 0: no pull on a zero weight
    weights, rest = split(model)
    groups = [{"params": weights, "l1": 0.02}, {"params": rest}]
    opt = cls(groups, **hyper)
    ref = reference(model, cls, groups, **hyper)
    assert [g["l1"] for g in ref.groups] == [0.02, 0.0]
    run_steps(model, opt, ref, model_grads(model, STEPS, seed=8))


def test_l1_first_step_by_formula():
    model = mlp()
    before = model.state_dict()
    opt = fn.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.01, l1=0.03)
    grads = model_grads(model, 1, seed=9)[0]
    apply_grads(model, grads)
    opt.step()
    for p, g in zip(model.parameters(), grads):
        w = before[p.name]
        np.testing.assert_allclose(p.data, w - 0.1 * (g + 0.01 * w + 0.03 * np.sign(w)),
                                   rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("cls, hyper", [(fn.optim.SGD, dict(lr=0.5, momentum=0.9)),
                                        (fn.optim.Adam, dict(lr=0.05)),
                                        (fn.optim.Adagrad, dict(lr=0.3))],
                         ids=["sgd", "adam", "adagrad"])
def test_max_norm_rescales_rows_after_each_update(cls, hyper, threads):
    model = conv_model()
    weights, rest = split(model)
    groups = [{"params": weights, "max_norm": 0.6}, {"params": rest, "max_norm": 0.01}]
    opt = cls(groups, **hyper)
    ref = reference(model, cls, groups, **hyper)
    biases = set(model._core.bias_tensors())
    for t, grads in enumerate(model_grads(model, STEPS, seed=10), start=1):
        apply_grads(model, grads)
        opt.step()
        ref.step(grads)
        assert_params_close(model, ref.params, what=f"step {t}")
        for p in model.parameters():
            if p.data.ndim >= 2:
                norms = np.sqrt(np.sum(p.data.reshape(len(p.data), -1) ** 2, axis=1))
                assert norms.max() <= 0.6 * (1 + 1e-12), p.name
            else:  # biases and 1-D tensors are exempt, even with their group's tiny bound
                assert p.name in biases or p.name == "1.weight"
    # The bound did bind: some rows sit on it, some below.
    norms = np.sqrt(np.sum(model.parameters()[0].data.reshape(4, -1) ** 2, axis=1))
    assert np.any(np.abs(norms - 0.6) < 1e-9)
    assert np.max(np.abs(model.parameters()[1].data)) > 0.01  # 0.bias: exempt


def test_max_norm_of_a_row_by_formula():
    model = fn.Sequential(fn.Linear(3, 2), dtype="float64")
    weight, bias = model.parameters()
    weight.data[...] = [[3.0, 4.0, 0.0], [0.1, 0.2, 0.2]]
    bias.data[...] = [10.0, -10.0]
    opt = fn.optim.SGD(model.parameters(), lr=0.0, max_norm=2.0)
    model.zero_grad()
    opt.step()
    np.testing.assert_allclose(weight.data, [[1.2, 1.6, 0.0], [0.1, 0.2, 0.2]], rtol=1e-15)
    np.testing.assert_array_equal(bias.data, [10.0, -10.0])
    np.testing.assert_allclose(renorm_rows(np.array([[3.0, 4.0, 0.0]]), 2.0), [[1.2, 1.6, 0.0]])


def large_model(seed=0):
    # More than 2 * 32768 weights, so that two threads split the arena (and a matrix's rows).
    return fn.Sequential(fn.Linear(300, 250), fn.Tanh(), fn.Linear(250, 7), dtype="float64",
                         seed=seed)


def test_max_norm_of_long_float32_rows_decided_by_the_exact_norm():
    """A float32 row of 1024 weights is scaled when its exact norm exceeds max_norm, by max_norm /
    that norm, even when the two differ in the seventh digit: the gradient norm's float sums
    are not used for it."""
    rng = np.random.default_rng(16)
    for trial in range(40):
        model = fn.Sequential(fn.Linear(1024, 8, bias=False), input_shape=(1024,),
                              dtype="float32")
        w = model.parameters()[0]
        w.data[...] = rng.standard_normal(w.data.shape).astype(np.float32)
        before = w.data.copy()
        exact = np.sqrt(np.sum(before.astype(np.float64) ** 2, axis=1))
        bound = float(exact[0] * (1 - rng.uniform(0, 1e-6)))
        opt = fn.optim.SGD([{"params": model.parameters(), "max_norm": bound}], lr=0.0)
        w.grad[...] = 0
        opt.step()
        expected = before.copy()
        for r in range(8):
            if exact[r] > bound:
                expected[r] *= np.float32(bound / exact[r])
        np.testing.assert_array_equal(w.data, expected, err_msg=f"trial {trial}")


def test_threads_give_the_same_bits_with_max_norm_and_clipping():
    results = []
    for threads in (1, 2):
        fn.set_num_threads(threads)
        model = large_model()
        opt = fn.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, max_norm=0.8,
                           clip_grad_norm=30.0, l1=1e-3)
        norms = []
        for grads in model_grads(model, 6, seed=11):
            apply_grads(model, grads)
            opt.step()
            norms.append(opt.last_grad_norm)
        results.append(([p.data.copy() for p in model.parameters()], norms))
    (params_1, norms_1), (params_2, norms_2) = results
    assert norms_1 == norms_2
    for a, b in zip(params_1, params_2):
        np.testing.assert_array_equal(a, b)
    model = large_model()
    ref = reference(model, fn.optim.SGD, None, lr=0.5, momentum=0.9, max_norm=0.8,
                    clip_grad_norm=30.0, l1=1e-3)
    for grads in model_grads(model, 6, seed=11):
        ref.step(grads)
    for a, b in zip(params_1, ref.params):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


# ------------------------------------------------------------------------------ clipping


CLIP_CASES = {  # the gradients' norms are 2.5 to 195, their largest elements 1.3 to 32
    "norm": dict(clip_grad_norm=20.0),
    "value": dict(clip_grad_value=5.0),
    "norm_and_value": dict(clip_grad_norm=50.0, clip_grad_value=10.0),
    "norm_inf": dict(clip_grad_norm=float("inf")),
}


@pytest.mark.parametrize("case", list(CLIP_CASES))
@pytest.mark.parametrize("cls, hyper", [(fn.optim.SGD, dict(lr=0.05, momentum=0.9,
                                                            weight_decay=0.01)),
                                        (fn.optim.AdamW, dict(lr=0.01, amsgrad=True))],
                         ids=["sgd", "adamw"])
def test_clipping_by_formula(cls, hyper, case, threads):
    model = conv_model()
    clip = CLIP_CASES[case]
    opt = cls(model.parameters(), **hyper, **clip)
    ref = reference(model, cls, None, **hyper, **clip)
    clipped = 0
    for t, grads in enumerate(model_grads(model, STEPS, seed=12), start=1):
        apply_grads(model, grads)
        opt.step()
        ref.step(grads)
        assert_params_close(model, ref.params, what=f"step {t}")
        # The update used the clipped gradient; the gradients themselves are as they were.
        for p, g in zip(model.parameters(), grads):
            np.testing.assert_array_equal(p.grad, g)
        norm = np.sqrt(sum(np.sum(g * g) for g in grads))
        # The norm before clipping is measured at every update (the non-finite check).
        assert opt.last_grad_norm == pytest.approx(norm, rel=1e-14)
        if "clip_grad_norm" in clip:
            assert opt.last_grad_norm == pytest.approx(ref.last_grad_norm, rel=1e-14)
            clipped += norm > clip["clip_grad_norm"]
        else:
            clipped += max(np.abs(g).max() for g in grads) > clip["clip_grad_value"]
    if case != "norm_inf":
        assert 0 < clipped < STEPS  # some steps were clipped, some not


def test_clip_grad_norm_by_formula_on_one_step():
    model = mlp()
    before = model.state_dict()
    opt = fn.optim.SGD(model.parameters(), lr=0.1, clip_grad_norm=0.5)
    grads = model_grads(model, 2, seed=13)[1]
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    assert norm > 0.5
    apply_grads(model, grads)
    opt.step()
    for p, g in zip(model.parameters(), grads):
        np.testing.assert_allclose(p.data, before[p.name] - 0.1 * g * (0.5 / (norm + 1e-6)),
                                   rtol=1e-14, atol=1e-16)
    # Below the bound nothing is scaled: the same bits as without clipping.
    small = [g * 1e-3 for g in grads]
    twin = mlp()
    plain = fn.optim.SGD(twin.parameters(), lr=0.1)
    twin.load_state_dict(model.state_dict())
    for m, o in ((model, opt), (twin, plain)):
        apply_grads(m, small)
        o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    small_norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in small))
    assert plain.last_grad_norm == pytest.approx(small_norm, rel=1e-12)


@pytest.mark.parametrize("kind", ["random", "equal", "wide_range", "square_overflows_float",
                                  "squares_underflow_float", "zeros"])
def test_float32_gradient_norm_within_its_bound(kind, threads):
    """float32 squares are summed in float in runs of 16 (fastnet.h: within 1.1e-6 of the exact
    norm); a block whose float squares overflow is summed again exactly, so a finite gradient of
    1e20 is measured, not refused as non-finite; so is a block whose squares underflow (elements
    near 1e-22, whose float squares are subnormal or 0)."""
    model = fn.Sequential(fn.Linear(97, 201), fn.Tanh(), fn.Linear(201, 3), dtype="float32")
    rng = np.random.default_rng(21)
    grads = []
    for p in model.parameters():
        if kind == "random":
            g = rng.standard_normal(p.data.shape)
        elif kind == "equal":
            g = np.full(p.data.shape, 0.1)
        elif kind == "squares_underflow_float":
            g = rng.standard_normal(p.data.shape) * 1e-22
        elif kind == "zeros":
            g = np.zeros(p.data.shape)
        else:
            g = rng.standard_normal(p.data.shape) * 10.0 ** rng.integers(-20, 20, p.data.shape)
        grads.append(g.astype(np.float32))
    if kind == "square_overflows_float":
        grads[0].flat[5000] = 3e20
        grads[2].flat[7] = -2e38
    exact = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
    assert sum(g.size for g in grads) > 2 * 8192  # several blocks, the last one partial
    opt = fn.optim.SGD(model.parameters(), lr=1e-30)
    apply_grads(model, grads)
    opt.step()
    assert opt.steps == 1 and np.isfinite(opt.last_grad_norm)
    assert opt.last_grad_norm == pytest.approx(exact, rel=1.1e-6, abs=0)
    if kind == "square_overflows_float":
        assert opt.last_grad_norm == pytest.approx(exact, rel=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_train_step_reports_the_norm_and_weights_of_step(dtype, threads):
    """The norm train_step reports, and the weights it leaves, are those of forward, backward and
    step() on the same batch, bit for bit: tensors of several of the norm's blocks, one ending
    mid-block, batch norm between. A step() after a train_step measures the gradients it is
    given."""
    def make():
        return fn.Sequential(fn.Linear(150, 130), fn.BatchNorm1d(130), fn.ReLU(),
                             fn.Linear(130, 70), fn.ReLU(), fn.Linear(70, 4),
                             input_shape=(150,), dtype=dtype, seed=8)
    fused, manual = make(), make()
    opt_fused = fn.optim.SGD(fused.parameters(), lr=0.05, momentum=0.9, clip_grad_norm=1e9)
    opt_manual = fn.optim.SGD(manual.parameters(), lr=0.05, momentum=0.9, clip_grad_norm=1e9)
    loss_fn = fn.CrossEntropyLoss()
    rng = np.random.default_rng(15)
    for _ in range(3):
        x = rng.standard_normal((16, 150)).astype(dtype)
        labels = rng.integers(0, 4, size=16)
        fused.train_step(x, labels, loss_fn, opt_fused)
        opt_manual.zero_grad()
        _, grad = loss_fn.forward_backward(manual.forward(x), labels)
        manual.backward(grad)
        opt_manual.step()
        assert opt_fused.last_grad_norm == opt_manual.last_grad_norm
        for a, b in zip(fused.parameters(), manual.parameters()):
            np.testing.assert_array_equal(a.data, b.data)
    grads = [rng.standard_normal(p.data.shape).astype(dtype) for p in fused.parameters()]
    apply_grads(fused, grads)
    opt_fused.step()
    exact = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
    assert opt_fused.last_grad_norm == pytest.approx(exact, rel=1.1e-6 if dtype == "float32"
                                                     else 1e-13)


def test_train_step_clips_and_reports_the_norm_of_its_gradients(threads):
    rng = np.random.default_rng(14)
    fused, manual = conv_model(seed=3), conv_model(seed=3)
    opt_fused = fn.optim.Adam(fused.parameters(), lr=0.01, clip_grad_norm=0.3,
                              clip_grad_value=0.02)
    opt_manual = fn.optim.Adam(manual.parameters(), lr=0.01, clip_grad_norm=0.3,
                               clip_grad_value=0.02)
    loss_fn = fn.CrossEntropyLoss()
    for _ in range(6):
        x = rng.standard_normal((8, 2, 6, 6))
        labels = rng.integers(0, 3, size=8)
        fused.train_step(x, labels, loss_fn, opt_fused)
        # train_step leaves the unclipped gradients, whose norm is the one reported.
        norm = np.sqrt(sum(np.sum(p.grad ** 2) for p in fused.parameters()))
        assert opt_fused.last_grad_norm == pytest.approx(norm, rel=1e-13)
        opt_manual.zero_grad()
        _, grad = loss_fn.forward_backward(manual.forward(x), labels)
        manual.backward(grad)
        opt_manual.step()
        assert opt_manual.last_grad_norm == pytest.approx(norm, rel=1e-13)
        for a, b in zip(fused.parameters(), manual.parameters()):
            np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad, word", [(float("nan"), "nan"), (float("inf"), "inf"),
                                       (-float("inf"), "inf")])
def test_a_non_finite_gradient_norm_changes_nothing(bad, word, threads):
    model = mlp()
    opt = fn.optim.Adam(model.parameters(), lr=0.01, clip_grad_norm=1.0)
    grads = model_grads(model, 3, seed=15)
    apply_grads(model, grads[0])
    opt.step()
    before = model.state_dict()
    state = opt.state_dict()
    grads[1][2].reshape(-1)[3] = bad
    apply_grads(model, grads[1])
    with pytest.raises(FloatingPointError, match=f"step: the gradient norm is {word}; the "
                                                 "weights were not updated"):
        opt.step()
    for p in model.parameters():
        np.testing.assert_array_equal(p.data, before[p.name])
    assert opt.steps == 1
    for a, b in zip(opt.state_dict()["state"], state["state"]):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(opt.last_grad_norm) if word == "nan" else opt.last_grad_norm == np.inf
    apply_grads(model, grads[2])
    opt.step()  # finite again: training goes on from where it was
    assert opt.steps == 2 and np.isfinite(opt.last_grad_norm)


def test_train_step_with_an_overflowing_gradient_norm_raises():
    # Finite gradients of about 1e200 whose squares overflow: the norm (in double) is inf.
    model = fn.Sequential(fn.Linear(3, 2), dtype="float64")
    for p in model.parameters():
        p.data[...] = 0.0
    opt = fn.optim.SGD(model.parameters(), lr=0.1, clip_grad_norm=1.0)
    with pytest.raises(FloatingPointError, match="train_step: the gradient norm is inf"):
        model.train_step(np.full((2, 3), 1e200), np.array([0, 0]), fn.CrossEntropyLoss(), opt)
    assert opt.steps == 0 and opt.last_grad_norm == np.inf
    for p in model.parameters():
        np.testing.assert_array_equal(p.data, 0.0)


# ------------------------------------------------------------------------------ state dict


def batches(count, seed):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((7, 2, 6, 6)), rng.integers(0, 3, size=7)) for _ in range(count)]


def run(model, opt, data, via):
    losses, norms = [], []
    for x, labels in data:
        if via == "train_step":
            losses.append(model.train_step(x, labels, fn.CrossEntropyLoss(), opt))
        else:
            opt.zero_grad()
            value, grad = fn.CrossEntropyLoss().forward_backward(model.forward(x), labels)
            model.backward(grad)
            opt.step()
            losses.append(value)
        norms.append(opt.last_grad_norm)
    return losses, norms


ROUND_TRIP = {
    "sgd": (fn.optim.SGD, dict(lr=0.05, momentum=0.9, clip_grad_norm=1.0, l1=1e-4,
                               max_norm=1.5)),
    "adagrad": (fn.optim.Adagrad, dict(lr=0.05, lr_decay=0.1, clip_grad_value=0.1,
                                       initial_accumulator_value=0.1)),
    "rmsprop": (fn.optim.RMSprop, dict(lr=0.003, momentum=0.5, centered=True,
                                       clip_grad_norm=0.5)),
    "adamw": (fn.optim.AdamW, dict(lr=0.01, amsgrad=True, clip_grad_norm=0.5, max_norm=2.0)),
}


@pytest.mark.parametrize("via", ["step", "train_step"])
@pytest.mark.parametrize("case", list(ROUND_TRIP))
def test_state_dict_round_trip_with_groups_continues_bitwise(case, via, threads):
    cls, hyper = ROUND_TRIP[case]
    data = batches(10, seed=16)

    model = conv_model(seed=4)
    groups = fn.optim.param_groups(model, weight_decay=0.01)
    groups[1]["lr"] = hyper["lr"] / 2
    opt = cls(groups, **hyper)
    run(model, opt, data[:5], via)
    opt.param_groups[0]["lr"] *= 0.5  # as a schedule would, between the halves
    model_state, opt_state = model.state_dict(), opt.state_dict()
    saved = copy.deepcopy(opt_state)
    expected = run(model, opt, data[5:], via)
    assert opt_state["steps"] == saved["steps"] == 5

    # Resumed into a fresh model and an optimizer made without groups or clipping.
    resumed = conv_model(seed=99)
    resumed.load_state_dict(model_state)
    resumed_opt = cls(resumed.parameters(), lr=0.5)
    resumed_opt.load_state_dict(opt_state)
    assert [[p.name for p in g["params"]] for g in resumed_opt.param_groups] == \
        [g["params"] for g in saved["param_groups"]]
    for mine, theirs in zip(resumed_opt.param_groups, opt.param_groups):
        assert {k: v for k, v in mine.items() if k != "params"} == \
            {k: v for k, v in theirs.items() if k != "params"}
    assert resumed_opt._values == opt._values
    assert run(resumed, resumed_opt, data[5:], via) == expected
    for a, b in zip(resumed.parameters(), model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    for a, b in zip(resumed_opt.state_dict()["state"], opt.state_dict()["state"]):
        np.testing.assert_array_equal(a, b)
    assert resumed_opt.steps == opt.steps == 10


def test_load_state_dict_checks_before_changing_anything():
    model = mlp()
    opt = fn.optim.SGD(fn.optim.param_groups(model, 1e-3), lr=0.1, momentum=0.9)
    apply_grads(model, model_grads(model, 1, seed=17)[0])
    opt.step()
    state = opt.state_dict()
    target = fn.optim.SGD(mlp().parameters(), lr=0.3)
    bad_name = copy.deepcopy(state)
    bad_name["param_groups"][0]["params"][0] = "9.weight"
    bad_hyper = copy.deepcopy(state)
    bad_hyper["hyper"]["betas"] = (0.9, 0.99)
    bad_value = copy.deepcopy(state)
    bad_value["param_groups"][1]["weight_decay"] = -1.0
    bad_slots = copy.deepcopy(state)
    bad_slots["state"].append(bad_slots["state"][0])
    for bad, message in [(bad_name, r"names parameters \['9.weight'\]"),
                         (bad_hyper, r"hyper-parameters \['betas'\] that SGD does not take"),
                         (bad_value, r"param_groups\[1\]\['weight_decay'\] must be >= 0.0"),
                         (bad_slots, "optimizer state has 2 slots, SGD")]:
        with pytest.raises(ValueError, match=message):
            target.load_state_dict(bad)
        assert target.lr == 0.3 and len(target.param_groups) == 1 and target.momentum == 0.0


def test_state_dict_from_before_groups_loads():
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    apply_grads(model, model_grads(model, 1, seed=18)[0])
    opt.step()
    state = opt.state_dict()
    old = {"type": "SGD", "hyper": {"lr": 0.1, "momentum": 0.9, "dampening": 0.0,
                                    "weight_decay": 0.01, "nesterov": False},
           "steps": state["steps"], "momentum_started": True, "state": state["state"]}
    other = fn.optim.SGD(model.parameters(), lr=0.5)
    other.load_state_dict(old)
    assert other.lr == 0.1 and other.weight_decay == 0.01 and other.momentum == 0.9
    assert other.steps == 1


# ------------------------------------------------------------------------------ the C boundary


def test_c_param_groups_are_checked():
    core = mlp()._core
    core.set_optimizer(fn._core.OPT_SGD, lr=0.1)
    count = len(core.tensor_info())
    with pytest.raises(ValueError, match=r"group_of_tensor is NULL with 2 groups"):
        core.set_param_groups([(0.1, 0, 0, 0), (0.2, 0, 0, 0)])
    with pytest.raises(ValueError, match=r"tensor 1 \('0.bias'\) is given group 2; the groups "
                                         r"are 0 to 1"):
        core.set_param_groups([(0.1, 0, 0, 0), (0.2, 0, 0, 0)], [0, 2] + [0] * (count - 2))
    with pytest.raises(ValueError, match=r"group 1: weight_decay must be a finite number >= 0"):
        core.set_param_groups([(0.1, 0, 0, 0), (0.2, -1, 0, 0)], [0] * count)
    with pytest.raises(ValueError, match=r"group 0: max_norm must be a finite number >= 0"):
        core.set_param_groups([(0.1, 0, 0, float("nan"))])
    assert core.param_groups() == []  # the refused groups left none set
    core.set_param_groups([(0.1, 0, 0, 0), (0.2, 0, 0, 0)], [1, 0] + [0] * (count - 2))
    assert core.param_groups() == [(0.1, 0, 0, 0), (0.2, 0, 0, 0)]
    assert (core.group_lr(0), core.group_lr(1), core.group_lr(2)) == (0.1, 0.2, 0.0)
    core.set_param_groups([])  # back to the optimizer's lr
    assert core.param_groups() == [] and core.group_lr(0) == 0.1
    with pytest.raises(ValueError, match="clip_grad_norm must be >= 0"):
        core.set_optimizer(fn._core.OPT_ADAM, lr=0.1, clip_grad_norm=-1.0)
    with pytest.raises(ValueError, match="RMSProp: alpha must be in"):
        core.set_optimizer(fn._core.OPT_RMSPROP, lr=0.1, alpha=2.0)
    with pytest.raises(ValueError, match="Adagrad: initial_accumulator_value must be"):
        core.set_optimizer(fn._core.OPT_ADAGRAD, lr=0.1, initial_accumulator_value=-1.0)


def test_a_group_dict_that_lost_a_key_is_refused_until_it_is_given_back():
    model = mlp()
    weights, rest = split(model)
    opt = fn.optim.SGD([{"params": weights}, {"params": rest, "lr": 0.05}], lr=0.1)
    apply_grads(model, model_grads(model, 1, seed=21)[0])
    opt.step()
    before = [p.data.copy() for p in model.parameters()]
    del opt.param_groups[1]["lr"]
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\] must be a finite number, "
                                         r"got None"):
        opt.step()
    for p, old in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, old)
    opt.param_groups[1]["lr"] = 0.02
    opt.step()
    assert fn._core.Model.group_lr(model._core, 1) == 0.02


def test_setting_groups_every_step_allocates_nothing():
    model = mlp()
    weights, rest = split(model)
    opt = fn.optim.SGD([{"params": weights}, {"params": rest}], lr=0.1)
    apply_grads(model, model_grads(model, 1, seed=19)[0])
    opt.step()
    count = fn._core.allocations()
    for t in range(20):
        opt.param_groups[t % 2]["lr"] = 0.1 / (t + 1)
        opt.step()
    assert fn._core.allocations() == count


# ------------------------------------------------------------------------------ torch

try:
    import torch
except ImportError:  # the comparisons with torch are skipped
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def torch_copies(model):
    return [torch.tensor(p.data.copy(), dtype=torch.float64, requires_grad=True)
            for p in model.parameters()]


@needs_torch
@pytest.mark.parametrize("case", ["sgd", "adagrad", "rmsprop", "adam_amsgrad", "adamw"])
def test_groups_match_torch(case):
    model = conv_model()
    cls, hyper = GROUP_CASES[case]
    weights, rest = split(model)
    groups = own_lr_and_weight_decay(weights, rest, hyper["lr"])
    opt = cls(groups, **hyper)
    tensors = torch_copies(model)
    by_name = dict(zip([p.name for p in model.parameters()], tensors))
    torch_groups = [{**{k: v for k, v in g.items() if k != "params"},
                     "params": [by_name[p.name] for p in g["params"]]} for g in groups]
    theirs = getattr(torch.optim, cls.__name__)(torch_groups, **hyper)
    for t, grads in enumerate(model_grads(model, 25, seed=20), start=1):
        apply_grads(model, grads)
        opt.step()
        for tensor, g in zip(tensors, grads):
            tensor.grad = torch.from_numpy(g.copy())
        theirs.step()
        assert_params_close(model, [x.detach().numpy() for x in tensors], rtol=1e-11,
                            atol=1e-13, what=f"step {t} against torch")


@needs_torch
@pytest.mark.parametrize("case", list(CLIP_CASES))
def test_clipping_matches_torch_clip_grad(case):
    model = conv_model()
    clip = CLIP_CASES[case]
    opt = fn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, **clip)
    tensors = torch_copies(model)
    theirs = torch.optim.SGD(tensors, lr=0.05, momentum=0.9)
    for t, grads in enumerate(model_grads(model, 25, seed=21), start=1):
        apply_grads(model, grads)
        opt.step()
        for tensor, g in zip(tensors, grads):
            tensor.grad = torch.from_numpy(g.copy())
        if "clip_grad_norm" in clip:
            norm = torch.nn.utils.clip_grad_norm_(tensors, clip["clip_grad_norm"])
            assert opt.last_grad_norm == pytest.approx(float(norm), rel=1e-13)
        if "clip_grad_value" in clip:
            torch.nn.utils.clip_grad_value_(tensors, clip["clip_grad_value"])
        theirs.step()
        assert_params_close(model, [x.detach().numpy() for x in tensors], rtol=1e-11,
                            atol=1e-13, what=f"step {t} against torch")


@needs_torch
def test_l1_and_max_norm_match_torch_written_out():
    # torch has neither built in: the penalty is added to p.grad, the rows renormed after.
    model = conv_model()
    opt = fn.optim.Adam(model.parameters(), lr=0.05, l1=0.01, max_norm=0.7)
    tensors = torch_copies(model)
    theirs = torch.optim.Adam(tensors, lr=0.05)
    biases = set(model._core.bias_tensors())
    rows = [x.dim() >= 2 and p.name not in biases for x, p in zip(tensors, model.parameters())]
    for t, grads in enumerate(model_grads(model, 25, seed=22), start=1):
        apply_grads(model, grads)
        opt.step()
        for tensor, g in zip(tensors, grads):
            tensor.grad = torch.from_numpy(g.copy()) + 0.01 * torch.sign(tensor.detach())
        theirs.step()
        with torch.no_grad():
            for tensor, renorm in zip(tensors, rows):
                if renorm:
                    flat = tensor.view(tensor.shape[0], -1)
                    norms = flat.norm(dim=1, keepdim=True)
                    flat.mul_(torch.where(norms > 0.7, 0.7 / norms, torch.ones_like(norms)))
        assert_params_close(model, [x.detach().numpy() for x in tensors], rtol=1e-11,
                            atol=1e-13, what=f"step {t} against torch")
