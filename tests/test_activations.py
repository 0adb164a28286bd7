"""The activation layers PReLU, ELU, GELU, SiLU, Softplus, Maxout, Softmax and LogSoftmax: forward
and backward against numpy references written from PyTorch's definitions (both dtypes, odd
shapes, batch 1, one and two threads), gradients against central differences in float64 (inputs
kept away from kinks), extreme inputs, thread independence and errors.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

import fastnet as fn
from fastnet import _core
from gradcheck import assert_gradient_close, central_difference

DTYPES = ["float32", "float64"]
# float32 results against a float64 reference.
TOL = {"float32": dict(rtol=3e-5, atol=3e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


def make(input_shape, node, dtype="float64", seed=0):
    """A one-node C model from a raw spec."""
    spec = {"format": "fastnet.model", "version": 1, "dtype": dtype, "seed": seed,
            "input_shape": list(input_shape), "nodes": [dict(node, name="act")]}
    return _core.Model(json.dumps(spec))


def tensor(model, name, grad=False):
    for full, shape, offset, _, _ in model.tensor_info():
        if full == name:
            arena = model.grad_arena() if grad else model.param_arena()
            return arena[offset:offset + int(np.prod(shape))].reshape(shape)
    raise KeyError(name)


def forward_backward(model, x, grad_y):
    """(y, grad_x) of one forward and backward, in x's and grad_y's shapes."""
    n = x.shape[0]
    model.zero_grad()
    y = model.forward(x.reshape(n, -1), keep=True)
    grad_x = model.backward(grad_y.reshape(n, -1), True)
    return y.reshape(grad_y.shape), grad_x.reshape(x.shape)


# ------------------------------------------------------------------------------ references
#
# Each returns (y, dy/dx) elementwise for the elementwise ops.

def elu_ref(x, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(x)), np.where(x > 0, 1.0, alpha * np.exp(x))


def gelu_ref(x, approximate="none"):
    if approximate == "tanh":
        k = np.sqrt(2 / np.pi)
        t = np.tanh(k * (x + 0.044715 * x ** 3))
        return (0.5 * x * (1 + t),
                0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * k * (1 + 3 * 0.044715 * x ** 2))
    cdf = 0.5 * (1 + special.erf(x / np.sqrt(2)))
    return x * cdf, cdf + x * np.exp(-x ** 2 / 2) / np.sqrt(2 * np.pi)


def silu_ref(x):
    s = special.expit(x)
    return x * s, s * (1 + x * (1 - s))


def softplus_ref(x, beta=1.0, threshold=20.0):
    z = beta * x
    return (np.where(z > threshold, x, np.logaddexp(0, z) / beta),
            np.where(z > threshold, 1.0, special.expit(z)))


ELEMENTWISE = {
    "elu": ({"op": "elu"}, elu_ref),
    "elu_alpha": ({"op": "elu", "alpha": 0.3}, lambda x: elu_ref(x, 0.3)),
    "gelu": ({"op": "gelu"}, gelu_ref),
    "gelu_none": ({"op": "gelu", "approximate": "none"}, gelu_ref),
    "gelu_tanh": ({"op": "gelu", "approximate": "tanh"}, lambda x: gelu_ref(x, "tanh")),
    "silu": ({"op": "silu"}, silu_ref),
    "softplus": ({"op": "softplus"}, softplus_ref),
    "softplus_beta": ({"op": "softplus", "beta": 2.0, "threshold": 3.0},
                      lambda x: softplus_ref(x, 2.0, 3.0)),
}

SHAPES = [(7,), (3, 5), (3, 5, 7), (1, 1, 1)]


def inputs(rng, shape, scale=3.0):
    """Normal values; for elementwise kinks (ELU at 0, Softplus at its threshold) the chance of
    landing within a difference step is negligible."""
    return rng.standard_normal(shape) * scale


@pytest.mark.parametrize("name", list(ELEMENTWISE))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_forward_backward(name, shape, batch, dtype, threads):
    check_elementwise(name, shape, batch, dtype, seed=len(shape) * 10 + batch)


def check_elementwise(name, shape, batch, dtype, seed):
    node, ref = ELEMENTWISE[name]
    rng = np.random.default_rng(seed)
    x = inputs(rng, (batch,) + shape)
    grad_y = rng.standard_normal(x.shape)
    y, grad_x = forward_backward(make(shape, node, dtype), x, grad_y)
    want_y, slope = ref(x)
    np.testing.assert_allclose(y, want_y, **TOL[dtype])
    np.testing.assert_allclose(grad_x, grad_y * slope, **TOL[dtype])


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_gradient_finite_differences(name):
    node, _ = ELEMENTWISE[name]
    rng = np.random.default_rng(5)
    # Away from ELU's kink at 0; Softplus's reversion at beta * x = threshold lies outside.
    x = rng.uniform(0.05, 2.5, (3, 6)) * rng.choice([-1.0, 1.0], (3, 6))
    check_gradients(make((6,), node), x, rng)


def check_gradients(model, x, rng, params=()):
    """d/dx and d/d(params) of L = sum(model(x) * R) against central differences (float64)."""
    x = x.reshape(x.shape[0], -1).copy()
    projection = rng.standard_normal(model.forward(x).shape)

    def objective():
        return float(np.sum(model.forward(x) * projection))

    model.zero_grad()
    model.forward(x, keep=True)
    grad_x = model.backward(projection, True)
    analytic = {name: tensor(model, name, grad=True).copy() for name in params}
    assert_gradient_close(grad_x, central_difference(objective, x), "input gradient")
    for name in params:
        assert_gradient_close(analytic[name], central_difference(objective, tensor(model, name)),
                              name, reshape=True)


def test_softplus_reverts_to_the_identity_above_the_threshold():
    model = make((4,), {"op": "softplus", "beta": 2.0, "threshold": 3.0})
    x = np.array([[1.49, 1.51, 100.0, -100.0]])
    y, grad_x = forward_backward(model, x, np.ones_like(x))
    assert y[0, 1] == 1.51 and y[0, 2] == 100.0 and grad_x[0, 1] == 1 and grad_x[0, 2] == 1
    assert y[0, 0] == pytest.approx(np.log1p(np.exp(2.98)) / 2, rel=1e-15)
    assert 0 < y[0, 3] < 1e-80 and 0 < grad_x[0, 3] < 1e-80


# ------------------------------------------------------------------------------ PReLU

def prelu_slopes(x, weight):
    """The slope of each element of x (n, c, ...): weight[c], or weight[0] when shared."""
    w = weight.reshape((1, -1) + (1,) * (x.ndim - 2)) if weight.size > 1 else weight[0]
    return np.broadcast_to(w, x.shape)


def prelu_weight_grad_ref(x, grad_y, num_parameters):
    contribution = np.where(x > 0, 0.0, grad_y * x)
    if num_parameters == 1:
        return np.array([contribution.sum()])
    axes = (0,) + tuple(range(2, x.ndim))
    return contribution.sum(axis=axes)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_channel"])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_prelu_forward_backward(shape, shared, batch, dtype, threads):
    check_prelu(shape, 1 if shared else shape[0], batch, dtype, seed=batch + len(shape))


def check_prelu(shape, k, batch, dtype, seed):
    rng = np.random.default_rng(seed)
    model = make(shape, {"op": "prelu", "num_parameters": k}, dtype)
    weight = tensor(model, "act.weight")
    np.testing.assert_array_equal(weight, np.full(k, 0.25))  # PyTorch's init
    weight[...] = rng.uniform(-0.5, 1.5, k)
    x = inputs(rng, (batch,) + shape)
    grad_y = rng.standard_normal(x.shape)
    y, grad_x = forward_backward(model, x, grad_y)
    w = weight.astype(np.float64)
    slopes = prelu_slopes(x, w)
    np.testing.assert_allclose(y, np.where(x > 0, x, slopes * x), **TOL[dtype])
    np.testing.assert_allclose(grad_x, np.where(x > 0, grad_y, slopes * grad_y), **TOL[dtype])
    np.testing.assert_allclose(tensor(model, "act.weight", grad=True),
                               prelu_weight_grad_ref(x, grad_y, k), **TOL[dtype])


@pytest.mark.parametrize("shape, k", [((6,), 1), ((6,), 6), ((3, 2, 5), 3), ((3, 2, 5), 1)])
def test_prelu_gradient_finite_differences(shape, k):
    rng = np.random.default_rng(k)
    model = make(shape, {"op": "prelu", "num_parameters": k, "init": 0.1})
    tensor(model, "act.weight")[...] = rng.uniform(0.05, 0.5, k)
    x = rng.uniform(0.05, 2.0, (3,) + shape) * rng.choice([-1.0, 1.0], (3,) + shape)
    check_gradients(model, x, rng, params=["act.weight"])


def test_prelu_weight_gradient_accumulates_over_backward_calls():
    rng = np.random.default_rng(2)
    model = make((4, 3), {"op": "prelu", "num_parameters": 4})
    x, grad_y = rng.standard_normal((2, 12)), rng.standard_normal((2, 12))
    model.zero_grad()
    for _ in range(2):
        model.forward(x, keep=True)
        model.backward(grad_y, False)
    np.testing.assert_allclose(tensor(model, "act.weight", grad=True),
                               2 * prelu_weight_grad_ref(x.reshape(2, 4, 3),
                                                         grad_y.reshape(2, 4, 3), 4), rtol=1e-12)


def test_prelu_init_and_pytorch_names():
    model = fn.Sequential(fn.Conv2d(2, 3, 1), fn.PReLU(3, init=0.1), input_shape=(2, 4, 4))
    assert model.state_dict()["1.weight"].tolist() == pytest.approx([0.1] * 3)
    assert [p.name for p in model.parameters()] == ["0.weight", "0.bias", "1.weight"]
    assert fn.Sequential(fn.Linear(3, 5), fn.PReLU()).state_dict()["1.weight"].shape == (1,)


def test_prelu_slopes_are_trained():
    rng = np.random.default_rng(0)
    model = fn.Sequential(fn.Linear(8, 6), fn.PReLU(6), fn.Linear(6, 3), dtype="float64")
    opt = fn.optim.SGD(model.parameters(), lr=0.5)
    x, y = rng.standard_normal((32, 8)), rng.integers(0, 3, 32)
    before = model.state_dict()["1.weight"].copy()
    model.train_step(x, y, fn.CrossEntropyLoss(), opt)
    assert not np.array_equal(model.state_dict()["1.weight"], before)


# ------------------------------------------------------------------------------ Maxout

def distinct_values(rng, shape):
    """Values at least 1e-3 apart: no ties in a group, even under a finite-difference step."""
    size = int(np.prod(shape))
    return (rng.permutation(size) * 1e-3 - size * 5e-4).reshape(shape)


def maxout_ref(x, pieces):
    n, c = x.shape[:2]
    grouped = x.reshape((n, c // pieces, pieces) + x.shape[2:])
    return grouped.max(axis=2), grouped


@pytest.mark.parametrize("shape, pieces", [((6,), 2), ((6,), 3), ((7,), 7), ((5,), 1),
                                           ((4, 3, 5), 2), ((9, 1, 1), 3)])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_maxout_forward_backward(shape, pieces, batch, dtype, threads):
    check_maxout(shape, pieces, batch, dtype, seed=batch)


def check_maxout(shape, pieces, batch, dtype, seed):
    rng = np.random.default_rng(seed)
    x = distinct_values(rng, (batch,) + shape)
    out_shape = (batch, shape[0] // pieces) + shape[1:]
    grad_y = rng.standard_normal(out_shape)
    y, grad_x = forward_backward(make(shape, {"op": "maxout", "pieces": pieces}, dtype), x,
                                 grad_y)
    want, grouped = maxout_ref(x, pieces)
    np.testing.assert_allclose(y, want, **TOL[dtype])
    # The gradient goes to the argmax of each group.
    mask = grouped == np.expand_dims(want, 2)
    want_grad = (mask * np.expand_dims(grad_y, 2)).reshape(x.shape)
    np.testing.assert_allclose(grad_x, want_grad, **TOL[dtype])


def test_maxout_gradient_finite_differences():
    rng = np.random.default_rng(1)
    model = make((6, 2, 3), {"op": "maxout", "pieces": 3})
    check_gradients(model, distinct_values(rng, (2, 6, 2, 3)), rng)


def test_maxout_routes_ties_to_the_first_channel_and_propagates_nan():
    model = make((4,), {"op": "maxout", "pieces": 2})
    x = np.array([[2.0, 2.0, -1.0, -1.0]])
    y, grad_x = forward_backward(model, x, np.array([[5.0, 7.0]]))
    assert y.tolist() == [[2.0, -1.0]] and grad_x.tolist() == [[5.0, 0.0, 7.0, 0.0]]
    # A NaN inside the model wins its group (it is not hidden from the loss).
    model = fn.Sequential(fn.Linear(2, 4, bias=False), fn.Maxout(2), dtype="float64")
    model.parameters()[0].data[...] = [[1, 0], [np.inf, 0], [0, 1], [0, 1]]
    out = model(np.array([[0.0, 1.0]]))
    assert np.isnan(out[0, 0]) and out[0, 1] == 1


@pytest.mark.parametrize("layer", [fn.ReLU(), fn.LeakyReLU(0.1), fn.ELU(), fn.GELU(), fn.SiLU(),
                                   fn.Softplus(), fn.Sigmoid(), fn.Tanh()])
def test_activations_propagate_nan(layer):
    # 0 * inf in the linear layer makes a NaN inside the model; an activation must pass it on
    # (as PyTorch's do) rather than hide it from the loss and the non-finite checks. ReLU with
    # x > 0 ? x : 0 turned it into 0.
    model = fn.Sequential(fn.Linear(2, 3, bias=False), layer, dtype="float64")
    model.parameters()[0].data[...] = [[np.inf, 0], [1, 0], [-1, 0]]
    out = model(np.array([[0.0, 2.0], [-1.0, 1.0]]))
    assert np.isnan(out[0, 0])
    assert np.all(np.isfinite(out[0, 1:])) and np.all(np.isfinite(out[1, 1:]))
    relu = fn.Sequential(fn.ReLU(), input_shape=(3,), dtype="float64")
    assert np.signbit(relu(np.array([[-0.0, 0.0, -1.0]]))).tolist() == [[False] * 3]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
def test_relu_fused_into_linear_matches_relu_layer(dtype, threads):
    # A ReLU fused into the linear layer is applied by the GEMM's micro-kernel to whole tiles
    # in registers, and to the edge tiles after them: the same values as the ReLU layer, NaN
    # passed on and every non-positive sum +0. 13 rows x 40 columns: full and short tiles both
    # ways; 0 * inf puts a NaN into a full tile (column 3) and an edge tile (column 38).
    rng = np.random.default_rng(3)
    x = rng.normal(size=(13, 24))
    x[5, 0] = 0.0
    weight = rng.normal(size=(40, 24))
    weight[[3, 38], 0] = np.inf
    fused = fn.Sequential(fn.Linear(24, 40), fn.ReLU(), dtype=dtype)
    plain = fn.Sequential(fn.Linear(24, 40), dtype=dtype)
    for model in (fused, plain):
        model.parameters()[0].data[...] = weight
        model.parameters()[1].data[...] = rng.normal(size=40) if model is fused else \
            fused.parameters()[1].data
    previous = fn.get_num_threads()
    fn.set_num_threads(threads)
    try:
        out = fused(x.astype(dtype))
        logits = plain(x.astype(dtype))
    finally:
        fn.set_num_threads(previous)
    expected = np.where(~(logits <= 0), logits, 0.0)
    assert np.isnan(out[5, 3]) and np.isnan(out[5, 38])
    np.testing.assert_array_equal(out, expected)
    assert not np.signbit(out[out == 0]).any()
    assert (out == 0).sum() > 100  # the ReLU cut about half of them


def test_maxout_output_shape_and_model():
    model = fn.Sequential(fn.Conv2d(3, 8, 3, padding=1), fn.Maxout(4), fn.Flatten(),
                          fn.Linear(2 * 5 * 5, 3), input_shape=(3, 5, 5))
    assert [shape for _, _, shape in model._core.node_info()][:2] == [(8, 5, 5), (2, 5, 5)]


# ------------------------------------------------------------------------------ Softmax

# Rows of features from 32 wide (two vectors and more: the maximum in lanes, the exponentials as
# vectors, the sums in lanes) take another path than short rows and channels of planes.
SOFTMAX_SHAPES = [(5,), (1,), (4, 3), (3, 2, 5), (2, 1, 1), (32,), (47,), (300,)]


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_forward_backward(op, shape, batch, dtype, threads):
    rng = np.random.default_rng(batch * 7 + len(shape))
    x = inputs(rng, (batch,) + shape)
    grad_y = rng.standard_normal(x.shape)
    y, grad_x = forward_backward(make(shape, {"op": op}, dtype), x, grad_y)
    p = special.softmax(x, axis=1)
    if op == "softmax":
        want_y = p
        want_grad = p * (grad_y - np.sum(grad_y * p, axis=1, keepdims=True))
    else:
        want_y = special.log_softmax(x, axis=1)
        want_grad = grad_y - p * np.sum(grad_y, axis=1, keepdims=True)
    np.testing.assert_allclose(y, want_y, **TOL[dtype])
    np.testing.assert_allclose(grad_x, want_grad, **TOL[dtype])


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("width", [7, 40])
def test_softmax_of_extreme_logits(op, width):
    # Logits far apart, and a row where one logit dominates: the maximum is subtracted first, so
    # nothing overflows, and a logit 1e30 below it gets a probability of exactly 0.
    x = np.linspace(-30, 30, 2 * width).reshape(2, width)
    x[0, 1], x[0, 3], x[1, 2] = 1e4, -1e30, -1e4
    model = fn.Sequential(fn.Softmax() if op == "softmax" else fn.LogSoftmax(),
                          input_shape=(width,), dtype="float64")
    want = special.softmax(x, axis=1) if op == "softmax" else special.log_softmax(x, axis=1)
    got = model(x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
    assert (got[0, 3] == 0) if op == "softmax" else (got[0, 3] < -1e29)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(5,), (3, 2, 2), (33,)], ids=str)
def test_softmax_gradient_finite_differences(op, shape):
    rng = np.random.default_rng(3)
    check_gradients(make(shape, {"op": op}), inputs(rng, (2,) + shape, 1.0), rng)


@pytest.mark.parametrize("dim, shape", [(1, (5,)), (-1, (5,)), (-3, (3, 2, 2)), (-2, (4, 3))])
def test_softmax_dim_names_the_first_per_sample_axis(dim, shape):
    model = fn.Sequential(fn.Softmax(dim=dim), input_shape=shape, dtype="float64")
    x = np.random.default_rng(0).standard_normal((2,) + shape)
    np.testing.assert_allclose(model(x).reshape(x.shape), special.softmax(x, axis=1),
                               rtol=1e-12)


# ------------------------------------------------------------------------------ all ops

ALL_NODES = {**{name: node for name, (node, _) in ELEMENTWISE.items()},
             "prelu": {"op": "prelu"}, "prelu_channels": {"op": "prelu", "num_parameters": 6},
             "maxout": {"op": "maxout", "pieces": 3}, "softmax": {"op": "softmax"},
             "log_softmax": {"op": "log_softmax"}}


@pytest.mark.parametrize("name", list(ALL_NODES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_inputs_give_finite_values_and_gradients(name, dtype):
    x = np.array([[1e4, -1e4, 3e4, -3e4, 0.0, 1e-30]] * 2 + [[-1e4] * 6] + [[1e4] * 6])
    model = make((6,), ALL_NODES[name], dtype)
    out = model.forward(x, keep=True)
    grad_x = model.backward(np.ones_like(out), True)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad_x)), (out, grad_x)
    if name.startswith("prelu"):
        assert np.all(np.isfinite(tensor(model, "act.weight", grad=True)))
    if name == "softmax":
        np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-6)
        assert out[0, 2] == 1 and out[2].tolist() == pytest.approx([1 / 6] * 6)
    if name == "log_softmax":
        assert out[0, 2] == 0 and out[0, 3] == -6e4


@pytest.mark.parametrize("name", list(ALL_NODES))
def test_results_do_not_depend_on_the_thread_count(name):
    """Large enough that the kernels split the work over two threads; bitwise equal."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6, 40, 40)).astype(np.float32) * 3
    grad_y = None
    results = []
    for count in (1, 2):
        fn.set_num_threads(count)
        model = make((6, 40, 40), ALL_NODES[name], "float32")
        if name.startswith("prelu"):
            k = tensor(model, "act.weight").size
            tensor(model, "act.weight")[...] = np.linspace(-0.5, 0.5, k)
        out = model.forward(x.reshape(64, -1), keep=True)
        if grad_y is None:
            grad_y = rng.standard_normal(out.shape).astype(np.float32)
        model.zero_grad()
        grad_x = model.backward(grad_y, True)
        weight_grad = tensor(model, "act.weight", grad=True).copy() \
            if name.startswith("prelu") else None
        results.append((out, grad_x, weight_grad))
    for a, b in zip(*results):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def test_layers_build_the_c_nodes_and_save_and_load(tmp_path):
    layers = [fn.Linear(6, 12), fn.PReLU(12, init=0.2), fn.ELU(0.5), fn.GELU("tanh"), fn.SiLU(),
              fn.Softplus(beta=2, threshold=10), fn.Maxout(3), fn.Softmax(dim=1),
              fn.LogSoftmax(dim=1)]
    model = fn.Sequential(*layers, dtype="float64")
    nodes = model.compiled().nodes
    assert [n["op"] for n in nodes][1:] == ["prelu", "elu", "gelu", "silu", "softplus",
                                            "maxout", "softmax", "log_softmax"]
    assert nodes[5]["beta"] == 2 and nodes[3]["approximate"] == "tanh" and nodes[6]["pieces"] == 3
    x = np.random.default_rng(0).standard_normal((3, 6))
    path = tmp_path / "m.safetensors"
    fn.save(model, path)
    loaded = fn.load(path)
    assert repr(loaded) == repr(model)
    np.testing.assert_array_equal(loaded(x), model(x))
    # A spec of bare nodes (written by hand or by a C program) maps each op to its layer.
    spec = model.spec()
    del spec["layers"]
    plain = fn.Sequential._from_core(_core.Model(json.dumps(spec)))
    assert [type(layer).__name__ for layer in plain.layers] == [
        type(layer).__name__ for layer in layers]
    assert repr(plain) == repr(model)


def test_a_small_network_trains(threads):
    data = fn.load_digits()
    model = fn.Sequential(fn.Linear(64, 64), fn.PReLU(64), fn.Linear(64, 64), fn.Maxout(2),
                          fn.GELU(), fn.Linear(32, 10), seed=1)
    opt = fn.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data.train.x[:256], data.train.y[:256]
    first = model.train_step(x, y, fn.CrossEntropyLoss(), opt)
    for _ in range(60):
        last = model.train_step(x, y, fn.CrossEntropyLoss(), opt)
    assert last < 0.2 * first


def test_new_ops_have_no_onnx_export(tmp_path):
    pytest.importorskip("onnx")
    model = fn.Sequential(fn.Linear(4, 4), fn.GELU())
    with pytest.raises(ValueError, match="'gelu' has no ONNX export"):
        fn.export_onnx(model, tmp_path / "m.onnx")


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("make_layer, message", [
    (lambda: fn.PReLU(0), "PReLU num_parameters must be a positive integer"),
    (lambda: fn.PReLU(True), "PReLU num_parameters must be a positive integer"),
    (lambda: fn.PReLU(init="x"), "PReLU init must be a number"),
    (lambda: fn.ELU(alpha=None), "ELU alpha must be a number"),
    (lambda: fn.GELU("erf"), "GELU approximate must be 'none' or 'tanh'"),
    (lambda: fn.Softplus(beta=0), "Softplus beta must be positive"),
    (lambda: fn.Softplus(threshold=float("nan")), "Softplus threshold must be a number"),
    (lambda: fn.Maxout(0), "Maxout pieces must be a positive integer"),
    (lambda: fn.Maxout(2.5), "Maxout pieces must be a positive integer"),
    (lambda: fn.Softmax(dim=0), "Softmax supports dim=1 only"),
    (lambda: fn.LogSoftmax(dim=2), "LogSoftmax supports dim=1 only"),
    (lambda: fn.Softmax(dim=None), "Softmax dim must be an integer"),
])
def test_bad_layer_arguments(make_layer, message):
    with pytest.raises(ValueError, match=message):
        make_layer()


@pytest.mark.parametrize("node, shape, message", [
    ({"op": "prelu", "num_parameters": 3}, (4, 2), "prelu with num_parameters=3 needs 1 or as "
                                                   "many as the input's channels"),
    ({"op": "maxout", "pieces": 3}, (4, 2), r"maxout with pieces=3 needs a channel count .* "
                                            r"divisible by 3, but its input has shape \(4, 2\)"),
    ({"op": "maxout"}, (4,), "missing \"pieces\""),
    ({"op": "maxout", "pieces": 0}, (4,), r"maxout needs pieces in \[1, 2\^31\)"),
    ({"op": "softmax", "dim": 2}, (4, 2), r"softmax over dim=2 of an input of shape \(N, 4, 2\): "
                                          "only dim=1"),
    ({"op": "log_softmax", "dim": -1}, (4, 2), "log_softmax over dim=-1"),
    ({"op": "gelu", "approximate": "fast"}, (4,), "gelu approximate must be 'none' or 'tanh'"),
    ({"op": "softplus", "beta": -1}, (4,), "softplus needs beta > 0"),
    ({"op": "elu", "alpha": "one"}, (4,), "\"alpha\" must be a number"),
])
def test_bad_nodes_are_clear_errors(node, shape, message):
    with pytest.raises(ValueError, match=message):
        make(shape, node)
    with pytest.raises(ValueError, match="^(node ')?act'?: "):  # names the node
        make(shape, node)


def test_softmax_dim_beyond_the_input_is_an_error_when_built():
    with pytest.raises(ValueError, match=r"softmax over dim=-1 of an input of shape \(N, 3, 4, 4\)"):
        fn.Sequential(fn.Softmax(dim=-1), input_shape=(3, 4, 4))


# ------------------------------------------------------------------------------ random sizes


@settings(max_examples=300)
@given(st.data())
def test_elementwise_prelu_and_maxout_at_random_sizes(data):
    # Every elementwise activation, PReLU (one slope or one per channel) and maxout, at channel
    # counts, planes and batches drawn at random, on 1 to 3 threads: the loops' tails and their
    # split between the threads, with the checks of the fixed shapes above.
    kind = data.draw(st.sampled_from(sorted(ELEMENTWISE) + ["prelu", "maxout"]), label="kind")
    pieces = data.draw(st.integers(1, 5), label="pieces") if kind == "maxout" else 1
    channels = pieces * data.draw(st.one_of(st.integers(1, 8), st.integers(9, 300)),
                                  label="channels")
    plane = data.draw(st.sampled_from([(), (1, 1), (3, 5), (17, 9), (32, 40)]), label="plane")
    shape = (channels,) + plane
    batch = data.draw(st.integers(1, 9), label="batch")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    fn.set_num_threads(data.draw(st.sampled_from([1, 2, 3]), label="threads"))
    seed = channels * 31 + batch
    if kind == "prelu":
        check_prelu(shape, data.draw(st.sampled_from([1, channels]), label="k"), batch, dtype, seed)
    elif kind == "maxout":
        check_maxout(shape, pieces, batch, dtype, seed)
    else:
        check_elementwise(kind, shape, batch, dtype, seed)
