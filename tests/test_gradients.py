"""Analytic gradients (model.forward / model.backward, the loss's forward_backward) against central
finite differences, all in float64.

The step is 1e-6: the truncation error of a central difference is O(h^2) ~ 1e-12 and the rounding
error O(eps * |f| / h) ~ 1e-10 * |f|, so a relative error of 1e-6 leaves a wide margin while a
wrong formula (a missing factor, a transposed weight, a stale buffer) is off by O(1). Inputs of
ReLU and LeakyReLU are kept away from the kink at 0, where the derivative does not exist.
"""

import numpy as np
import pytest

import fastnet as fn
from gradcheck import assert_gradient_close, central_difference


def away_from_zero(rng, shape, low=0.05, high=2.0):
    """Values with |x| in [low, high] and random sign."""
    return rng.uniform(low, high, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def check_projection_gradients(model, x, rng):
    """Checks d/dx and d/dparams of L = sum(model(x) * R) for a random projection R."""
    out = model.forward(x)
    projection = rng.standard_normal(out.shape)

    def objective():
        return float(np.sum(model(x) * projection))

    model.zero_grad()
    model.forward(x)
    grad_x = model.backward(projection)
    analytic = {p.name: p.grad.copy() for p in model.parameters()}

    assert_gradient_close(grad_x, central_difference(objective, x), "input gradient")
    for p in model.parameters():
        assert_gradient_close(analytic[p.name], central_difference(objective, p.data), p.name)
    return analytic


# ------------------------------------------------------------------------------ single layers


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("n, n_in, n_out", [(1, 1, 1), (1, 4, 3), (5, 3, 4), (7, 6, 2)])
def test_linear_gradients(bias, n, n_in, n_out, threads):
    rng = np.random.default_rng(n * 100 + n_in * 10 + n_out)
    model = fn.Sequential(fn.Linear(n_in, n_out, bias=bias), dtype="float64", seed=3)
    x = rng.standard_normal((n, n_in))
    grads = check_projection_gradients(model, x, rng)
    assert sorted(grads) == (["0.bias", "0.weight"] if bias else ["0.weight"])


ACTIVATIONS = {
    "relu": lambda: fn.ReLU(),
    "leaky_relu": lambda: fn.LeakyReLU(),
    "leaky_relu_0.3": lambda: fn.LeakyReLU(0.3),
    "sigmoid": lambda: fn.Sigmoid(),
    "tanh": lambda: fn.Tanh(),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("n, features", [(1, 1), (3, 5), (6, 2)])
def test_activation_input_gradient(name, n, features, threads):
    rng = np.random.default_rng(n * 10 + features)
    model = fn.Sequential(ACTIVATIONS[name](), dtype="float64", input_shape=(features,))
    # Away from 0 for the kinks; within a range where sigmoid and tanh are not flat.
    x = away_from_zero(rng, (n, features), low=0.05, high=3.0)
    check_projection_gradients(model, x, rng)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_after_linear_parameter_gradients(name, threads):
    # The activation's derivative reaches the Linear's parameters through the chain rule.
    rng = np.random.default_rng(11)
    model = fn.Sequential(fn.Linear(4, 6), ACTIVATIONS[name](), dtype="float64", seed=5)
    x = rng.standard_normal((5, 4))
    sd = model.state_dict()
    pre = x @ sd["0.weight"].T + sd["0.bias"]
    assert np.min(np.abs(pre)) > 1e-3, "pre-activation too close to the kink; pick another seed"
    check_projection_gradients(model, x, rng)


# ------------------------------------------------------------------------------ the loss


@pytest.mark.parametrize("n, c", [(1, 1), (1, 2), (4, 3), (6, 10)])
def test_cross_entropy_gradient(n, c, threads):
    rng = np.random.default_rng(n * 10 + c)
    logits = rng.standard_normal((n, c)) * 3
    labels = rng.integers(0, c, size=n)
    loss = fn.CrossEntropyLoss()
    value, grad = loss.forward_backward(logits, labels)
    assert value == loss(logits, labels)
    numeric = central_difference(lambda: loss(logits, labels), logits)
    if c == 1:
        # One class: the loss is identically 0 and so is its gradient.
        np.testing.assert_array_equal(grad, 0)
        np.testing.assert_array_equal(numeric, 0)
        return
    assert_gradient_close(grad, numeric, "d loss / d logits")


def test_cross_entropy_gradient_with_large_logits():
    rng = np.random.default_rng(12)
    logits = rng.standard_normal((5, 4)) * 3 + np.array([[1e3], [-1e3], [0], [50], [-50]])
    labels = np.array([0, 1, 2, 3, 0])
    loss = fn.CrossEntropyLoss()
    _, grad = loss.forward_backward(logits, labels)
    # A larger step: at |logit| = 1e3 the rounding error of the loss is about 1e-13 absolute.
    numeric = central_difference(lambda: loss(logits, labels), logits, h=1e-4)
    assert_gradient_close(grad, numeric, "d loss / d logits", rtol=1e-6)


# ------------------------------------------------------------------------------ whole MLP


def mlp():
    """The MLP with parameters drawn here: unit-scale weights, and biases before the ReLU that
    keep some of its units active and some inactive for typical inputs."""
    model = fn.Sequential(
        fn.Linear(5, 7), fn.Tanh(),
        fn.Linear(7, 6), fn.Sigmoid(),
        fn.Linear(6, 6), fn.LeakyReLU(0.1),
        fn.Linear(6, 5), fn.ReLU(),
        fn.Linear(5, 4),
        dtype="float64",
    )
    rng = np.random.default_rng(21)
    state = {}
    for name, value in model.state_dict().items():
        fan_in = value.shape[1] if value.ndim == 2 else 1
        state[name] = rng.standard_normal(value.shape) / np.sqrt(fan_in)
    state["6.bias"] = np.array([0.8, -0.8, 0.6, 0.5, -0.3])
    model.load_state_dict(state)
    return model


def numpy_mlp_preactivations(state, x):
    """The inputs of the LeakyReLU and ReLU layers, from a plain numpy forward."""
    h = np.tanh(x @ state["0.weight"].T + state["0.bias"])
    h = 1 / (1 + np.exp(-(h @ state["2.weight"].T + state["2.bias"])))
    z_leaky = h @ state["4.weight"].T + state["4.bias"]
    h = np.where(z_leaky > 0, z_leaky, 0.1 * z_leaky)
    z_relu = h @ state["6.weight"].T + state["6.bias"]
    logits = np.maximum(z_relu, 0) @ state["8.weight"].T + state["8.bias"]
    return z_leaky, z_relu, logits


def mlp_batch(model, n, seed):
    """A batch whose pre-activations at the kinks are all at least 1e-3 from 0."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    x = np.empty((0, 5))
    while len(x) < n:
        candidate = rng.standard_normal((1, 5)) * 2
        z_leaky, z_relu, _ = numpy_mlp_preactivations(state, candidate)
        if min(np.abs(z_leaky).min(), np.abs(z_relu).min()) > 1e-3:
            x = np.vstack([x, candidate])
    labels = rng.integers(0, 4, size=n)
    return x, labels


@pytest.mark.parametrize("n", [1, 8])
def test_mlp_cross_entropy_gradients(n, threads):
    model = mlp()
    x, labels = mlp_batch(model, n, seed=n)
    loss = fn.CrossEntropyLoss()
    # The numpy forward is right, so the kink screening above is about this model.
    np.testing.assert_allclose(model(x), numpy_mlp_preactivations(model.state_dict(), x)[2],
                               rtol=1e-12, atol=1e-12)
    # Some ReLU units are active, so gradients flow through every layer.
    _, z_relu, _ = numpy_mlp_preactivations(model.state_dict(), x)
    assert np.any(z_relu > 0) and np.any(z_relu < 0)

    def objective():
        return loss(model(x), labels)

    inference_value = objective()
    model.zero_grad()
    logits = model.forward(x)
    value, grad_logits = loss.forward_backward(logits, labels)
    assert value == pytest.approx(inference_value, rel=1e-15)
    grad_x = model.backward(grad_logits)
    analytic = {p.name: p.grad.copy() for p in model.parameters()}
    assert len(analytic) == 10

    # The mean loss is O(1) while the gradients of the first layers are O(1e-3): a step of 1e-5
    # keeps the rounding error (eps * |loss| / h) well below 1e-6 of them.
    h = 1e-5
    assert_gradient_close(grad_x, central_difference(objective, x, h), "input gradient")
    for p in model.parameters():
        assert_gradient_close(analytic[p.name], central_difference(objective, p.data, h), p.name)


def test_mlp_gradient_accumulates_over_batches(threads):
    # Backward of two half batches with the loss of each scaled by 1/2 accumulates to the
    # gradient of the mean loss over the whole batch.
    model = mlp()
    x, labels = mlp_batch(model, 6, seed=3)
    loss = fn.CrossEntropyLoss()
    model.zero_grad()
    model.forward(x)
    model.backward(loss.forward_backward(model.forward(x), labels)[1])
    whole = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    for part in (slice(0, 3), slice(3, 6)):
        _, g = loss.forward_backward(model.forward(x[part]), labels[part])
        model.backward(g / 2)
    for p, expected in zip(model.parameters(), whole):
        np.testing.assert_allclose(p.grad, expected, rtol=1e-12, atol=1e-15, err_msg=p.name)
    assert any(np.any(w) for w in whole)


def test_activation_first_model_gradients(threads):
    # An activation as the first layer, then a Linear: the input gradient goes through both.
    rng = np.random.default_rng(13)
    model = fn.Sequential(fn.Sigmoid(), fn.Linear(3, 2), fn.Tanh(), dtype="float64",
                          input_shape=(3,), seed=2)
    x = rng.standard_normal((4, 3))
    check_projection_gradients(model, x, rng)
