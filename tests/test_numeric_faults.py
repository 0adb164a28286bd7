"""Looking inside a model and numerical faults: node outputs of the last forward, the layer a
non-finite loss or gradient comes from, and failed steps that change nothing."""

import numpy as np
import pytest

import fastnet as fn


def mlp(dtype="float32", seed=0, keep_outputs=True):
    """Linear-ReLU-Linear; keep_outputs: every node's output readable after a forward (by
    default the first layer's output would become the ReLU's)."""
    model = fn.Sequential(fn.Linear(6, 5), fn.ReLU(), fn.Linear(5, 3), dtype=dtype, seed=seed)
    model._core.keep_outputs = keep_outputs
    return model


def reference_outputs(model, x):
    """The three node outputs of mlp() computed with numpy, in float64."""
    state = model.state_dict()
    h = x.astype(np.float64) @ state["0.weight"].T.astype(np.float64) + state["0.bias"]
    r = np.maximum(h, 0)
    return [h, r, r @ state["2.weight"].T.astype(np.float64) + state["2.bias"]]


# ---------------------------------------------------------------------------- node outputs


@pytest.mark.parametrize("keep", [False, True])
def test_node_outputs_match_numpy_after_a_forward(keep):
    model = mlp("float64")
    x = np.random.default_rng(0).standard_normal((7, 6))
    y = model._core.forward(x, keep)
    expected = reference_outputs(model, x)
    for i, want in enumerate(expected):
        got = model._core.node_output(i)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(model._core.node_output(2), y)


def test_node_output_shapes_are_per_sample_shapes():
    model = fn.Sequential(fn.Conv2d(1, 2, 3, padding=1), fn.ReLU(), fn.MaxPool2d(2), fn.Flatten(),
                          fn.Linear(32, 4), input_shape=(1, 8, 8))
    model._core.keep_outputs = True
    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    model._core.forward(x, False)
    for i, (_, _, shape) in enumerate(model._core.node_info()):
        assert model._core.node_output(i).shape == (3, *shape)
    assert model._core.node_output(0).dtype == np.float32


def test_node_outputs_of_a_train_step_are_its_forward_before_the_update():
    model = mlp("float64")
    opt = fn.optim.SGD(model.parameters(), lr=0.5)
    x = np.random.default_rng(2).standard_normal((9, 6))
    y = np.arange(9) % 3
    expected = reference_outputs(model, x)  # the weights before the step
    model.train_step(x, y, fn.CrossEntropyLoss(), opt)
    for i, want in enumerate(expected):
        np.testing.assert_allclose(model._core.node_output(i), want, rtol=1e-12, atol=1e-12)


def test_node_output_is_a_copy():
    model = mlp()
    x = np.random.default_rng(3).random((4, 6), dtype=np.float32)
    model._core.forward(x, False)
    first = model._core.node_output(0)
    first[:] = 1e6
    model._core.forward(x[:2] * 0, False)
    assert model._core.node_output(0).shape == (2, 5)
    assert not np.any(first != 1e6)  # the copy did not follow the buffer


def test_node_output_refused_before_a_forward_and_after_predict():
    model = mlp()
    with pytest.raises(RuntimeError, match="no forward"):
        model._core.node_output(0)
    x = np.random.default_rng(4).random((4, 6), dtype=np.float32)
    model._core.forward(x, True)
    model._core.node_output(1)
    model._core.predict(x)
    with pytest.raises(RuntimeError, match="prediction"):
        model._core.node_output(1)
    model._core.forward(x, False)
    model._core.node_output(1)
    with pytest.raises(ValueError, match="NaN"):
        model._core.forward(np.full((4, 6), np.nan, np.float32), False)
    with pytest.raises(RuntimeError, match="no forward"):  # the refused forward is the last
        model._core.node_output(1)
    with pytest.raises(ValueError, match="out of range"):
        model._core.node_output(3)
    with pytest.raises(ValueError, match="out of range"):
        model._core.node_output(-1)


# ---------------------------------------------------------------------------- non-finite losses


def snapshot(core):
    """Bit patterns of everything a refused step must leave alone."""
    return {"params": core.param_arena().copy().view(np.uint8),
            "buffers": core.buffer_arena().copy().view(np.uint8),
            "state": [s.copy().view(np.uint8) for s in core.optimizer_state()],
            "steps": core.optimizer_steps}


def assert_unchanged(before, core):
    after = snapshot(core)
    np.testing.assert_array_equal(after["params"], before["params"])
    np.testing.assert_array_equal(after["buffers"], before["buffers"])
    assert len(after["state"]) == len(before["state"])
    for a, b in zip(after["state"], before["state"]):
        np.testing.assert_array_equal(a, b)
    assert after["steps"] == before["steps"]


def adam(core, **options):
    core.set_optimizer(fn._core.OPT_ADAM, lr=1e-2, **options)


def data(n=8, features=6, classes=3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)).astype(dtype), np.arange(n) % classes


def test_nan_weight_names_the_layer_whose_output_it_spoils():
    model = mlp()
    core = model._core
    adam(core)
    x, y = data()
    for _ in range(3):  # optimizer state that is not all zeros
        core.train_step(x, y)
    dict(model.named_parameters())["2.weight"].data[1, 2] = np.nan
    before = snapshot(core)
    with pytest.raises(FloatingPointError,
                       match=r"loss is nan; the first non-finite values appear in the output of "
                             r"layer '2' \(linear\), sample 0, element 1; the weights were not "
                             r"updated"):
        core.train_step(x, y)
    assert core.last_nonfinite_layer == "2"
    assert_unchanged(before, core)
    assert not np.all(np.isfinite(core.node_output(2)))
    assert np.all(np.isfinite(core.node_output(1)))


def test_an_input_that_overflows_names_the_first_layer():
    model = mlp()
    dict(model.named_parameters())["0.weight"].data[...] = 1
    core = model._core
    adam(core)
    x, y = data()
    x[3] = 3e38  # finite, but six of them summed are not
    before = snapshot(core)
    with pytest.raises(FloatingPointError, match=r"layer '0' \(linear\), sample 3"):
        core.train_step(x, y)
    assert core.last_nonfinite_layer == "0"
    assert_unchanged(before, core)


def test_a_nan_input_is_refused_before_the_step():
    core = mlp()._core
    adam(core)
    x, y = data()
    x[2, 4] = np.nan
    with pytest.raises(ValueError, match="sample 2, feature 4"):
        core.train_step(x, y)
    assert core.last_nonfinite_layer is None


def test_a_huge_learning_rate_names_the_first_layer_that_overflows():
    def run(keep_outputs):
        model = fn.Sequential(fn.Linear(6, 16), fn.Tanh(), fn.Linear(16, 16), fn.ReLU(),
                              fn.Linear(16, 3), seed=1)
        core = model._core
        core.keep_outputs = keep_outputs
        core.set_optimizer(fn._core.OPT_SGD, lr=1e36)
        x, y = data(seed=1)
        with pytest.raises(FloatingPointError) as failure:
            for _ in range(20):
                before = snapshot(core)
                core.train_step(x, y)
        assert_unchanged(before, core)
        return core, str(failure.value)

    core, message = run(keep_outputs=True)
    layer = core.last_nonfinite_layer
    first = next(i for i in range(5) if not np.all(np.isfinite(core.node_output(i))))
    assert layer == str(first)
    assert f"layer '{layer}'" in message
    # With shared buffers the same layer is named, from a second forward.
    core, shared_message = run(keep_outputs=False)
    assert core.last_nonfinite_layer == layer
    assert shared_message == message


def test_a_layer_whose_output_is_not_kept_is_still_named():
    # Dropout's output is overwritten by the ReLU after it (in place), so the overflow that
    # dropout's scaling causes is found by running the forward again.
    model = fn.Sequential(fn.Linear(6, 5), fn.Dropout(0.5), fn.ReLU(), fn.Linear(5, 3), seed=2)
    dict(model.named_parameters())["0.weight"].data[...] = 1
    dict(model.named_parameters())["0.bias"].data[...] = 0
    core = model._core
    adam(core)
    x, y = data()
    x[:] = np.abs(x)
    x[5] = 5e37  # six of them sum to 3e38, finite; dropout's factor 2 makes that inf
    before = snapshot(core)
    with pytest.raises(FloatingPointError,
                       match=r"output of layer '1' \(dropout\), sample 5, element \d"):
        core.train_step(x, y)
    assert core.last_nonfinite_layer == "1"
    assert_unchanged(before, core)
    with pytest.raises(RuntimeError, match="'1' \\(dropout\\) is not kept"):
        core.node_output(1)
    assert not np.all(np.isfinite(core.node_output(2)))  # kept, and as the failed forward left it


def test_a_loss_that_overflows_alone_says_so():
    model = fn.Sequential(fn.Linear(6, 3), dtype="float64")
    dict(model.named_parameters())["0.bias"].data[...] = 1e200
    core = model._core
    adam(core)
    x, _ = data(dtype=np.float64)
    with pytest.raises(FloatingPointError, match="every layer's output is finite"):
        core.train_step(x, loss={"kind": fn._core.LOSS_MSE}, values=np.zeros((8, 3)))
    assert core.last_nonfinite_layer is None


def test_a_refused_step_leaves_the_running_statistics():
    model = fn.Sequential(fn.Linear(6, 8), fn.BatchNorm1d(8), fn.ReLU(), fn.Linear(8, 3))
    core = model._core
    adam(core)
    x, y = data()
    core.train_step(x, y)
    dict(model.named_parameters())["3.weight"].data[0, 0] = np.inf
    before = snapshot(core)
    with pytest.raises(FloatingPointError, match=r"layer '3'"):
        core.train_step(x, y)
    assert_unchanged(before, core)  # running_mean, running_var, num_batches_tracked included
    dict(model.named_parameters())["3.weight"].data[0, 0] = 0
    core.train_step(x, y)
    assert core.last_nonfinite_layer is None
    assert not np.array_equal(core.buffer_arena().view(np.uint8), before["buffers"])


# ---------------------------------------------------------------------------- the gradient check


def manual_gradients(model, x, y):
    core = model._core
    logits = core.forward(x, True)
    _, grad, _ = fn._core.softmax_cross_entropy(logits, y)
    core.zero_grad()
    core.backward(grad, False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_check_names_the_layer_and_tensor_of_a_nan_gradient(dtype):
    model = mlp(dtype)
    core = model._core
    adam(core, check_finite=True)
    x, y = data(dtype=model.dtype)
    for _ in range(2):
        core.train_step(x, y)
    manual_gradients(model, x, y)
    dict(model.named_parameters())["2.bias"].grad[1] = np.nan
    dict(model.named_parameters())["0.weight"].grad[0, 0] = np.inf  # 0 comes first
    before = snapshot(core)
    with pytest.raises(FloatingPointError,
                       match=r"^step: the gradient norm is nan; the weights were not updated: "
                             r"the first non-finite gradient is in layer '0' \(linear\), tensor "
                             r"'0.weight', element 0 \(lower"):
        core.step()
    assert core.last_nonfinite_layer == "0"
    assert np.isnan(core.last_grad_norm)
    assert_unchanged(before, core)

    dict(model.named_parameters())["0.weight"].grad[0, 0] = 0
    with pytest.raises(FloatingPointError, match=r"layer '2' \(linear\), tensor '2.bias', element 1"):
        core.step()
    assert core.last_nonfinite_layer == "2"
    assert_unchanged(before, core)

    adam(core, check_finite=False)  # without the check the update goes through, NaN and all
    core.step()
    assert core.last_nonfinite_layer is None
    assert core.last_grad_norm == -1
    assert np.isnan(dict(model.named_parameters())["2.bias"].data[1])


def test_the_check_catches_a_gradient_overflow_the_loss_does_not_show():
    # Layer 0's output is a tiny positive constant, so the logits are finite; the gradient of
    # layer 0's weight is (huge layer-2 weights) x (large inputs), which overflows double.
    model = fn.Sequential(fn.Linear(6, 4), fn.ReLU(), fn.Linear(4, 3), dtype="float64")
    params = dict(model.named_parameters())
    params["0.weight"].data[...] = 0
    params["0.bias"].data[...] = 1e-300
    params["2.weight"].data[...] = np.array([[1e300], [-1e300], [1e300]])
    core = model._core
    adam(core, check_finite=True)
    x, y = data(dtype=np.float64)
    x[:] = 1e10
    before = snapshot(core)
    with pytest.raises(FloatingPointError, match=r"^train_step: the gradient norm is inf; the "
                                                 r"weights were not updated: the first non-finite "
                                                 r"gradient is in layer '0' \(linear\), tensor "
                                                 r"'0.weight'"):
        loss = core.train_step(x, y)
    assert core.last_nonfinite_layer == "0"
    assert core.last_grad_norm == np.inf
    assert_unchanged(before, core)
    adam(core)  # the unchecked update spoils the weights
    loss = core.train_step(x, y)
    assert np.isfinite(loss)
    assert not np.all(np.isfinite(core.param_arena()))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_check_reports_the_norm_and_changes_no_update(dtype):
    x, y = data(n=32, dtype=np.dtype(dtype))
    checked, plain = mlp(dtype, seed=3), mlp(dtype, seed=3)
    adam(checked._core, check_finite=True)
    adam(plain._core)
    for _ in range(5):
        checked._core.train_step(x, y)
        plain._core.train_step(x, y)
        grads = checked._core.grad_arena().astype(np.float64)
        # float32 squares are summed in float in runs of 16 (fastnet.h: within 1.1e-6)
        np.testing.assert_allclose(checked._core.last_grad_norm, np.linalg.norm(grads),
                                   rtol=1.1e-6 if dtype == "float32" else 1e-12)
        assert plain._core.last_grad_norm == -1
        assert checked._core.last_nonfinite_layer is None
    np.testing.assert_array_equal(checked._core.param_arena(), plain._core.param_arena())


def test_a_norm_that_overflows_with_finite_gradients_says_so():
    model = fn.Sequential(fn.Linear(3, 2), dtype="float64")
    for p in model.parameters():
        p.data[...] = 0.0
    core = model._core
    core.set_optimizer(fn._core.OPT_SGD, lr=0.1, check_finite=True)
    with pytest.raises(FloatingPointError, match="every gradient is finite, the sum of their "
                                                 "squares overflowed"):
        core.train_step(np.full((2, 3), 1e200), np.array([0, 0]))
    assert core.last_nonfinite_layer is None
    assert core.last_grad_norm == np.inf
    np.testing.assert_array_equal(core.param_arena(), 0.0)
