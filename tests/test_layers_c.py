"""The C ops max_pool2d, avg_pool2d, global_avg_pool2d, batch_norm, dropout and
local_response_norm, driven through raw specs (fastnet._core.Model), against plain numpy
references written from PyTorch's definitions.

Gradients are checked against central finite differences in float64 (see gradcheck.py for the
choice of step and tolerance); forwards in both dtypes; thread independence on inputs large
enough that the kernels really use two threads.
"""

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastnet
from fastnet import _core
from gradcheck import assert_gradient_close, central_difference

DTYPES = ["float32", "float64"]
# float32 results against a float64 reference.
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-12)}


def spec_of(input_shape, nodes, dtype="float64", seed=0):
    named = []
    for i, node in enumerate(nodes):
        node = dict(node)
        node.setdefault("name", str(i))
        named.append(node)
    return {"format": "fastnet.model", "version": 1, "dtype": dtype, "seed": seed,
            "input_shape": list(input_shape), "nodes": named}


def make(input_shape, nodes, dtype="float64", seed=0):
    return _core.Model(json.dumps(spec_of(input_shape, nodes, dtype, seed)))


def tensor(model, name, grad=False):
    """A writable view of a parameter, buffer or parameter gradient, in its shape."""
    for full, shape, offset, is_buffer, _ in model.tensor_info():
        if full == name:
            arena = (model.buffer_arena() if is_buffer
                     else model.grad_arena() if grad else model.param_arena())
            count = int(np.prod(shape)) if shape else 1
            return arena[offset:offset + count].reshape(shape)
    raise KeyError(name)


def run(model, x, shape):
    """Forward of a (n, *shape) batch, the output reshaped to (n, *out_shape)."""
    y = model.forward(x.reshape(x.shape[0], -1), keep=True)
    return y.reshape((x.shape[0],) + tuple(shape))


def check_gradients(model, x, rng, params=()):
    """d/dx and d/d(params) of L = sum(model(x) * R) for a random R, against finite differences
    (float64 models only)."""
    x = x.reshape(x.shape[0], -1).copy()
    out = model.forward(x)
    projection = rng.standard_normal(out.shape)

    def objective():
        return float(np.sum(model.forward(x) * projection))

    model.zero_grad()
    model.forward(x, keep=True)
    grad_x = model.backward(projection, True)
    analytic = {name: tensor(model, name, grad=True).copy() for name in params}
    assert_gradient_close(grad_x, central_difference(objective, x), "input gradient",
                          reshape=True)
    for name in params:
        assert_gradient_close(analytic[name], central_difference(objective, tensor(model, name)),
                              name, reshape=True)


def distinct_values(rng, shape):
    """Values at least 1e-3 apart, so that no max-pool window has a tie, even under a finite
    difference step."""
    size = int(np.prod(shape))
    return (rng.permutation(size) * 1e-3 - size * 5e-4 + rng.uniform(0, 1e-4)).reshape(shape)


# ------------------------------------------------------------------------------ pooling

def pool_reference(x, kernel, stride, padding, kind):
    """PyTorch's MaxPool2d / AvgPool2d(count_include_pad=True), floor mode; for max also the
    flat index (into each input plane) of the first maximal element of every window."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    fill = -np.inf if kind == "max" else 0.0
    padded = np.full((n, c, h + 2 * ph, w + 2 * pw), fill)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    y = np.empty((n, c, oh, ow))
    argmax = np.empty((n, c, oh, ow), dtype=np.int64)
    for i in range(oh):
        for j in range(ow):
            window = padded[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(n, c, -1)
            if kind == "max":
                k = np.argmax(window, axis=2)  # the first maximum, as PyTorch
                y[:, :, i, j] = np.take_along_axis(window, k[..., None], 2)[..., 0]
                argmax[:, :, i, j] = (i * sh + k // kw - ph) * w + (j * sw + k % kw - pw)
            else:
                y[:, :, i, j] = window.sum(axis=2) / (kh * kw)
    return y, argmax


def pool_backward_reference(grad_y, x_shape, kernel, stride, padding, kind, argmax=None):
    n, c, h, w = x_shape
    if kind == "max":  # each output's gradient to its window's argmax
        grad = np.zeros((n, c, h * w))
        index = (np.arange(n)[:, None, None], np.arange(c)[None, :, None], argmax.reshape(n, c, -1))
        np.add.at(grad, index, grad_y.reshape(n, c, -1))
        return grad.reshape(x_shape)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    grad = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for i in range(grad_y.shape[2]):
        for j in range(grad_y.shape[3]):
            grad[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += (
                grad_y[:, :, i, j][:, :, None, None] / (kh * kw))
    return grad[:, :, ph:ph + h, pw:pw + w]


POOL_CASES = [
    # (input (C, H, W), kernel, stride, padding)
    ((3, 8, 8), (2, 2), None, (0, 0)),
    ((2, 7, 9), (3, 3), (2, 2), (1, 1)),
    ((2, 7, 5), (3, 2), (1, 2), (1, 1)),
    ((1, 5, 6), (2, 3), (3, 1), (0, 1)),
    ((4, 6, 6), (3, 3), (1, 1), (0, 0)),  # overlapping windows
    ((2, 1, 4), (1, 2), (1, 1), (0, 1)),
    ((3, 11, 4), (5, 4), (2, 3), (2, 2)),
    ((1, 3, 600), (2, 3), (1, 2), (1, 1)),  # rows of more outputs than a kernel block
]


def pool_node(kind, kernel, stride, padding):
    node = {"op": f"{kind}_pool2d", "kernel_size": list(kernel), "padding": list(padding)}
    if stride is not None:
        node["stride"] = list(stride)
    return node


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3])
def test_pool_forward_backward(kind, case, dtype, batch, threads):
    shape, kernel, stride, padding = case
    rng = np.random.default_rng(1)
    model = make(shape, [pool_node(kind, kernel, stride, padding)], dtype)
    x = distinct_values(rng, (batch,) + shape).astype(dtype)
    expected, argmax = pool_reference(x.astype(np.float64), kernel, stride or kernel, padding, kind)
    y = run(model, x, expected.shape[1:])
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y, expected, **TOL[dtype])
    grad_y = rng.standard_normal(expected.shape).astype(dtype)
    grad_x = model.backward(grad_y.reshape(batch, -1), True).reshape(x.shape)
    np.testing.assert_allclose(
        grad_x, pool_backward_reference(grad_y.astype(np.float64), x.shape, kernel,
                                        stride or kernel, padding, kind, argmax),
        **TOL[dtype])


@st.composite
def pool_cases(draw):
    """(input (C, H, W), kernel, stride or None, padding), padding at most half the kernel."""
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = draw(st.none() | st.tuples(st.integers(1, 4), st.integers(1, 4)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    shape = (draw(st.integers(1, 8)), draw(st.integers(1, 40)), draw(st.integers(1, 70)))
    return shape, kernel, stride, padding


@settings(max_examples=300)
@given(st.sampled_from(["max", "avg"]), pool_cases(), st.sampled_from(DTYPES),
       st.integers(1, 4), st.sampled_from([1, 2, 3]))
def test_pool_random_geometries(kind, case, dtype, batch, thread_count):
    # Geometries drawn at random reach the pools' special cases (2 x 2, rows of more outputs than
    # a kernel block, overlapping and padded windows) and their splits between 1 to 3 threads, in
    # training and then image by image in eval mode.
    shape, kernel, stride, padding = case
    (kh, kw), (sh, sw) = kernel, stride or kernel
    assume(shape[1] + 2 * padding[0] >= kh and shape[2] + 2 * padding[1] >= kw)
    fastnet.set_num_threads(thread_count)
    rng = np.random.default_rng(sum(shape) + kh * 7 + kw * 11 + batch)
    model = make(shape, [pool_node(kind, kernel, stride, padding)], dtype)
    x = distinct_values(rng, (batch,) + shape).astype(dtype)
    expected, argmax = pool_reference(x.astype(np.float64), kernel, (sh, sw), padding, kind)
    np.testing.assert_allclose(run(model, x, expected.shape[1:]), expected, **TOL[dtype])
    grad_y = rng.standard_normal(expected.shape).astype(dtype)
    grad_x = model.backward(grad_y.reshape(batch, -1), True).reshape(x.shape)
    np.testing.assert_allclose(
        grad_x, pool_backward_reference(grad_y.astype(np.float64), x.shape, kernel, (sh, sw),
                                        padding, kind, argmax), **TOL[dtype])
    model.training = False
    for i in range(min(batch, 2)):
        alone = model.forward(x[i:i + 1].reshape(1, -1)).reshape(expected[i:i + 1].shape)
        np.testing.assert_allclose(alone, expected[i:i + 1], **TOL[dtype])


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES[1:5])
def test_pool_gradient_finite_differences(kind, case):
    shape, kernel, stride, padding = case
    rng = np.random.default_rng(2)
    model = make(shape, [pool_node(kind, kernel, stride, padding)])
    check_gradients(model, distinct_values(rng, (2,) + shape), rng)


def test_max_pool_routes_ties_to_the_first_element():
    model = make((1, 2, 4), [{"op": "max_pool2d", "kernel_size": 2}])
    x = np.array([[1.0, 3.0, 5.0, 5.0, 3.0, 2.0, 5.0, 5.0]])
    assert model.forward(x, keep=True).tolist() == [[3.0, 5.0]]
    grad = model.backward(np.array([[10.0, 20.0]]), True)
    assert grad.tolist() == [[0.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0, 0.0]]


def max_pool_2x2_reference(x, grad_y):
    """The first maximal element of each 2 x 2 window (stride 2, floor mode), in the order
    (0, 0), (0, 1), (1, 0), (1, 1): output and input gradient, with plain loops."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, h // 2, w // 2))
    grad_x = np.zeros(x.shape)
    for b, ch, i, j in np.ndindex(y.shape):
        window = [(2 * i + r, 2 * j + q) for r in (0, 1) for q in (0, 1)]
        best = max(window, key=lambda at: (x[b, ch][at], -window.index(at)))
        y[b, ch, i, j] = x[b, ch][best]
        grad_x[b, ch][best] += grad_y[b, ch, i, j]
    return y, grad_x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 4, 6), (3, 5, 7), (1, 2, 3),
                                   # output rows of the widths the kernel unrolls (4, 8, 12, 16)
                                   (2, 8, 8), (1, 5, 17), (2, 24, 24), (1, 4, 33)])
def test_max_pool_2x2_with_ties_and_odd_sizes(dtype, shape, threads):
    # The most common window, against plain loops: values from {-1, 0, 1} (ties everywhere,
    # -0.0 among them) and odd sizes whose last row or column no window covers; then twice in
    # one graph, so that backward also adds to a gradient.
    rng = np.random.default_rng(11)
    batch = 3
    x = rng.choice([-1.0, -0.0, 0.0, 1.0], size=(batch,) + shape).astype(dtype)
    grad_y = rng.standard_normal((batch, shape[0], shape[1] // 2, shape[2] // 2)).astype(dtype)
    expected_y, expected_grad = max_pool_2x2_reference(x.astype(np.float64), grad_y)
    model = make(shape, [{"op": "max_pool2d", "kernel_size": 2}], dtype)
    y = model.forward(x.reshape(batch, -1), keep=True)
    np.testing.assert_array_equal(y.reshape(expected_y.shape), expected_y.astype(dtype))
    grad_x = model.backward(grad_y.reshape(batch, -1), True).reshape(x.shape)
    np.testing.assert_array_equal(grad_x, expected_grad.astype(dtype))  # one term each: exact
    twice = make(shape, [{"name": "p", "op": "max_pool2d", "kernel_size": 2, "inputs": ["input"]},
                         {"name": "q", "op": "max_pool2d", "kernel_size": 2, "stride": 2,
                          "inputs": ["input"]},
                         {"name": "s", "op": "add", "inputs": ["p", "q"]}], dtype)
    twice.forward(x.reshape(batch, -1), keep=True)
    grad_x = twice.backward(grad_y.reshape(batch, -1), True).reshape(x.shape)
    np.testing.assert_allclose(grad_x, 2 * expected_grad, rtol=1e-6)


@pytest.mark.parametrize("pool", [{"kernel_size": 2},  # the 2 x 2 kernel
                                  {"kernel_size": [2, 2], "stride": [2, 3]}])  # the general one
def test_max_pool_infinite_windows(pool):
    # Inputs are finite, so the infinities come from doubling +-3e38 in the graph: a window of
    # -inf only gives -inf and routes the gradient to its first element; +inf is a maximum like
    # any other, the first one taking the gradient.
    model = make((1, 2, 6), [{"name": "d", "op": "add", "inputs": ["input", "input"]},
                             {"name": "p", "op": "max_pool2d", "inputs": ["d"], **pool}],
                 "float32")
    big = 3e38
    x = np.array([[-big, -big, -big, 1.0, big, big,
                   -big, -big, big, 2.0, big, 0.0]], np.float32)
    y = model.forward(x, keep=True)
    general = "stride" in pool  # windows at columns 0-1 and 3-4
    np.testing.assert_array_equal(y, [[-np.inf, np.inf]] if general
                                  else [[-np.inf, np.inf, np.inf]])
    grad = model.backward(np.array([[10.0, 20.0, 30.0][:y.shape[1]]], np.float32), True)
    expected = np.zeros((1, 12))
    expected[0, 0] = 2 * 10.0  # add's backward passes the gradient to both of its inputs
    if general:
        expected[0, 4] = 2 * 20.0
    else:
        expected[0, 8], expected[0, 4] = 2 * 20.0, 2 * 30.0
    np.testing.assert_array_equal(grad, expected)


def test_pool_integer_kernel_and_default_stride():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 6))
    a = make((3, 6, 6), [{"op": "avg_pool2d", "kernel_size": 3}])
    b = make((3, 6, 6), [{"op": "avg_pool2d", "kernel_size": [3, 3], "stride": [3, 3],
                          "padding": [0, 0]}])
    np.testing.assert_array_equal(a.forward(x.reshape(2, -1)), b.forward(x.reshape(2, -1)))
    assert a.output_size == 3 * 2 * 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 1, 1), (5, 7, 3)])
@pytest.mark.parametrize("batch", [1, 4])
def test_global_avg_pool(dtype, shape, batch, threads):
    rng = np.random.default_rng(4)
    model = make(shape, [{"op": "global_avg_pool2d"}], dtype)
    x = rng.standard_normal((batch,) + shape).astype(dtype)
    y = run(model, x, (shape[0], 1, 1))
    np.testing.assert_allclose(y, x.astype(np.float64).mean(axis=(2, 3), keepdims=True),
                               **TOL[dtype])
    grad_y = rng.standard_normal((batch, shape[0])).astype(dtype)
    grad_x = model.backward(grad_y, True).reshape(x.shape)
    expected = np.broadcast_to(grad_y[:, :, None, None].astype(np.float64) / (shape[1] * shape[2]),
                               x.shape)
    np.testing.assert_allclose(grad_x, expected, **TOL[dtype])


def test_global_avg_pool_gradient_finite_differences():
    rng = np.random.default_rng(5)
    check_gradients(make((3, 4, 5), [{"op": "global_avg_pool2d"}]),
                    rng.standard_normal((2, 3, 4, 5)), rng)


@pytest.mark.parametrize("node", [
    {"op": "max_pool2d", "kernel_size": 3, "stride": 1, "padding": 1},
    {"op": "avg_pool2d", "kernel_size": [2, 3], "stride": [1, 2], "padding": [1, 0]},
    {"op": "global_avg_pool2d"},
])
def test_pool_results_do_not_depend_on_the_thread_count(node):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((16, 32, 24, 24))
    grad_y = None
    results = []
    for n in (1, 2):
        fastnet.set_num_threads(n)
        model = make((32, 24, 24), [node])
        y = model.forward(x.reshape(16, -1), keep=True)
        if grad_y is None:
            grad_y = rng.standard_normal(y.shape)
        results.append((y, model.backward(grad_y, True)))
    for a, b in zip(results[0], results[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("swap", [False, True], ids=["in_order", "swapped"])
def test_gradients_through_a_graph_where_inputs_have_two_consumers(swap):
    """Every input below feeds two nodes; backward visits the later one first, which writes the
    input's gradient, and the earlier one adds to it. Swapping each pair exercises both paths
    of every op."""
    def pair(first, second):
        return (second, first) if swap else (first, second)

    nodes = [
        *pair({"name": "b1", "op": "batch_norm", "num_features": 2, "inputs": ["input"]},
              {"name": "b2", "op": "batch_norm", "num_features": 2, "affine": False,
               "inputs": ["input"]}),
        {"name": "bb", "op": "add", "inputs": ["b1", "b2"]},
        *pair({"name": "m", "op": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1,
               "inputs": ["bb"]},
              {"name": "a", "op": "avg_pool2d", "kernel_size": 3, "stride": 2, "padding": 1,
               "inputs": ["bb"]}),
        {"name": "s", "op": "add", "inputs": ["m", "a"]},
        *pair({"name": "l", "op": "local_response_norm", "size": 3, "alpha": 0.5,
               "inputs": ["s"]},
              {"name": "d", "op": "dropout", "p": 0.0, "inputs": ["s"]}),
        {"name": "t", "op": "add", "inputs": ["l", "d"]},
        {"name": "g", "op": "global_avg_pool2d", "inputs": ["t"]},
    ]
    rng = np.random.default_rng(7)
    model = make((2, 5, 5), nodes)
    tensor(model, "b1.weight")[:] = [0.7, 1.3]
    tensor(model, "b1.bias")[:] = [0.2, -0.4]
    check_gradients(model, distinct_values(rng, (3, 2, 5, 5)), rng, ("b1.weight", "b1.bias"))


@pytest.mark.parametrize("node, message", [
    ({"op": "max_pool2d"}, "needs \"kernel_size\""),
    ({"op": "max_pool2d", "kernel_size": 0}, "kernel_size"),
    ({"op": "avg_pool2d", "kernel_size": [2, 2, 2]}, "list of 2 integers"),
    ({"op": "avg_pool2d", "kernel_size": 2.5}, "list of 2 integers"),
    ({"op": "max_pool2d", "kernel_size": 2, "stride": 0}, "stride"),
    ({"op": "max_pool2d", "kernel_size": 3, "padding": 2}, "at most half the kernel size"),
    ({"op": "avg_pool2d", "kernel_size": [2, 2], "padding": [0, -1]}, "non-negative"),
    ({"op": "max_pool2d", "kernel_size": [9, 2]}, "the output would be empty"),
    ({"op": "avg_pool2d", "kernel_size": [2, 8], "padding": [0, 1]}, "the output would be empty"),
])
def test_pool_rejects_bad_attributes(node, message):
    with pytest.raises(ValueError, match="node '0': .*" + message.replace("(", r"\(")):
        make((3, 6, 5), [node])


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d", "global_avg_pool2d"])
@pytest.mark.parametrize("shape", [(12,), (3, 4)])
def test_pool_rejects_inputs_that_are_not_images(op, shape):
    with pytest.raises(ValueError, match=r"expects a \(C, H, W\) input per sample"):
        make(shape, [{"op": op, "kernel_size": 1}])


# ------------------------------------------------------------------------------ batch norm

def bn_reference(x, gamma, beta, eps):
    """Train-mode BatchNorm over every axis but 1: output, batch mean, biased variance."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)
    return y, mean.reshape(-1), var.reshape(-1)


def bn_eval_reference(x, gamma, beta, running_mean, running_var, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return ((x - running_mean.reshape(shape)) / np.sqrt(running_var.reshape(shape) + eps)
            * gamma.reshape(shape) + beta.reshape(shape))


# Spatial sizes on both sides of BN_SAMPLE_STATS_MIN (16): from 16 on, the training statistics are
# taken sample by sample and combined; 272 leaves a partial run of lanes.
BN_SHAPES = [(5,), (3, 4, 5), (2, 7), (4, 1, 1), (1, 3, 3), (2, 3, 5), (2, 4, 4), (2, 8, 8),
             (3, 16, 17)]


def set_affine(model, rng, c):
    gamma = rng.uniform(0.5, 2.0, c)
    beta = rng.standard_normal(c)
    tensor(model, "0.weight")[:] = gamma
    tensor(model, "0.bias")[:] = beta
    return tensor(model, "0.weight").astype(np.float64), tensor(model, "0.bias").astype(np.float64)


def test_batch_norm_declares_pytorch_tensors():
    model = make((3, 4, 4), [{"op": "batch_norm", "num_features": 3}])
    info = {name: (shape, is_buffer, is_integer)
            for name, shape, _, is_buffer, is_integer in model.tensor_info()}
    assert info == {"0.weight": ((3,), False, False), "0.bias": ((3,), False, False),
                    "0.running_mean": ((3,), True, False), "0.running_var": ((3,), True, False),
                    "0.num_batches_tracked": ((), True, True)}
    assert tensor(model, "0.weight").tolist() == [1, 1, 1]
    assert tensor(model, "0.bias").tolist() == [0, 0, 0]
    assert tensor(model, "0.running_mean").tolist() == [0, 0, 0]
    assert tensor(model, "0.running_var").tolist() == [1, 1, 1]
    assert tensor(model, "0.num_batches_tracked").tolist() == 0
    plain = make((3,), [{"op": "batch_norm", "num_features": 3, "affine": False}])
    assert [t[0] for t in plain.tensor_info()] == [
        "0.running_mean", "0.running_var", "0.num_batches_tracked"]


@pytest.mark.parametrize("shape, batch", [
    (shape, batch) for shape in BN_SHAPES for batch in (1, 2, 6)
    if batch * int(np.prod(shape[1:])) > 1  # see test_batch_norm_refuses_one_value_per_channel
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_train_forward_and_running_statistics(shape, batch, dtype, threads):
    rng = np.random.default_rng(10)
    c, momentum, eps = shape[0], 0.3, 1e-3
    model = make(shape, [{"op": "batch_norm", "num_features": c, "momentum": momentum,
                          "eps": eps}], dtype)
    gamma, beta = set_affine(model, rng, c)
    running_mean, running_var = np.zeros(c), np.ones(c)
    m = batch * int(np.prod(shape[1:]))
    # float32 inputs near 50 carry an absolute error of ~4e-6, amplified by invstd.
    tol = TOL[dtype] if dtype == "float64" else dict(rtol=1e-4, atol=1e-4)
    spread = rng.uniform(0.5, 3, (1, c) + (1,) * (len(shape) - 1))
    for step in range(3):
        # A large mean next to the spread: the variance must not cancel.
        x = (rng.standard_normal((batch,) + shape) * spread + 50).astype(dtype)
        expected, mean, var = bn_reference(x.astype(np.float64), gamma, beta, eps)
        np.testing.assert_allclose(run(model, x, shape), expected, **tol)
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * var * m / (m - 1)
        assert tensor(model, "0.num_batches_tracked").tolist() == step + 1
        np.testing.assert_allclose(tensor(model, "0.running_mean"), running_mean, **TOL[dtype])
        np.testing.assert_allclose(tensor(model, "0.running_var"), running_var, **tol)
    # Eval mode: the running statistics, and nothing is updated.
    model.training = False
    x = rng.standard_normal((batch,) + shape).astype(dtype)
    stats = tensor(model, "0.running_mean").copy(), tensor(model, "0.running_var").copy()
    expected = bn_eval_reference(x.astype(np.float64), gamma, beta,
                                 *(s.astype(np.float64) for s in stats), eps)
    np.testing.assert_allclose(run(model, x, shape), expected, **TOL[dtype])
    np.testing.assert_array_equal(tensor(model, "0.running_mean"), stats[0])
    np.testing.assert_array_equal(tensor(model, "0.running_var"), stats[1])
    assert tensor(model, "0.num_batches_tracked").tolist() == 3


def test_batch_norm_cumulative_average_when_momentum_is_null():
    rng = np.random.default_rng(11)
    model = make((2, 3), [{"op": "batch_norm", "num_features": 2, "momentum": None}])
    means, variances = [], []
    for _ in range(4):
        x = rng.standard_normal((5, 2, 3)) + rng.standard_normal()
        model.forward(x.reshape(5, -1))
        means.append(x.mean(axis=(0, 2)))
        variances.append(x.var(axis=(0, 2), ddof=1))
    np.testing.assert_allclose(tensor(model, "0.running_mean"), np.mean(means, axis=0), rtol=1e-12)
    np.testing.assert_allclose(tensor(model, "0.running_var"), np.mean(variances, axis=0),
                               rtol=1e-12)


@pytest.mark.parametrize("shape", [(4,), (3, 2, 3), (2, 5)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradient_finite_differences(shape, affine, training):
    rng = np.random.default_rng(12)
    model = make(shape, [{"op": "batch_norm", "num_features": shape[0], "affine": affine}])
    params = ()
    if affine:
        set_affine(model, rng, shape[0])
        params = ("0.weight", "0.bias")
    tensor(model, "0.running_mean")[:] = rng.standard_normal(shape[0])
    tensor(model, "0.running_var")[:] = rng.uniform(0.5, 2, shape[0])
    model.training = training
    check_gradients(model, rng.standard_normal((3,) + shape) * 2 + 1, rng, params)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_backward_formula(dtype, threads):
    """Train-mode backward against the closed form, in both dtypes."""
    rng = np.random.default_rng(13)
    shape, batch = (3, 4, 4), 5
    model = make(shape, [{"op": "batch_norm", "num_features": 3}], dtype)
    gamma, beta = set_affine(model, rng, 3)
    x = rng.standard_normal((batch,) + shape).astype(dtype)
    dy = rng.standard_normal((batch,) + shape).astype(dtype)
    model.zero_grad()
    run(model, x, shape)
    dx = model.backward(dy.reshape(batch, -1), True).reshape(x.shape)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3), keepdims=True)
    invstd = 1 / np.sqrt(x64.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    xhat = (x64 - mean) * invstd
    m = batch * 16
    sum_dy = dy64.sum(axis=(0, 2, 3), keepdims=True)
    sum_dy_xhat = (dy64 * xhat).sum(axis=(0, 2, 3), keepdims=True)
    expected = gamma.reshape(1, -1, 1, 1) * invstd / m * (m * dy64 - sum_dy - xhat * sum_dy_xhat)
    tol = TOL[dtype] if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, expected, **tol)
    np.testing.assert_allclose(tensor(model, "0.weight", grad=True), sum_dy_xhat.reshape(-1), **tol)
    np.testing.assert_allclose(tensor(model, "0.bias", grad=True), sum_dy.reshape(-1), **tol)


@settings(max_examples=300)
@given(st.integers(1, 20), st.sampled_from([None, (1, 1), (3, 5), (16, 17), (30, 40)]),
       st.integers(1, 8), st.sampled_from(DTYPES), st.sampled_from([1, 2, 3]), st.data())
def test_batch_norm_random_sizes(channels, plane, batch, dtype, thread_count, data):
    # Channels, planes and batches drawn at random (the planes on both sides of the statistics'
    # sample-by-sample size, 16, and with partial runs of lanes), on 1 to 3 threads: the
    # training forward and the running statistics, the backward against its closed form, and
    # the eval forward.
    if plane is not None:
        plane = (data.draw(st.integers(1, plane[0]), label="H"),
                 data.draw(st.integers(1, plane[1]), label="W"))
    shape = (channels,) + (plane or ())
    per_channel = batch * int(np.prod(plane or (1,)))
    assume(per_channel > 1)
    fastnet.set_num_threads(thread_count)
    rng = np.random.default_rng(channels * 31 + batch * 7 + per_channel)
    momentum, eps = 0.3, 1e-3
    model = make(shape, [{"op": "batch_norm", "num_features": channels, "momentum": momentum,
                          "eps": eps}], dtype)
    gamma, beta = set_affine(model, rng, channels)
    spread = rng.uniform(0.5, 3, (1, channels) + (1,) * len(plane or ()))
    x = (rng.standard_normal((batch,) + shape) * spread + 50).astype(dtype)
    x64 = x.astype(np.float64)
    tol = TOL[dtype] if dtype == "float64" else dict(rtol=1e-4, atol=1e-4)
    expected, mean, var = bn_reference(x64, gamma, beta, eps)
    np.testing.assert_allclose(run(model, x, shape), expected, **tol)
    np.testing.assert_allclose(tensor(model, "0.running_mean"), momentum * mean, **TOL[dtype])
    np.testing.assert_allclose(tensor(model, "0.running_var"),
                               1 - momentum + momentum * var * per_channel / (per_channel - 1),
                               **tol)

    dy = rng.standard_normal((batch,) + shape).astype(dtype)
    model.zero_grad()
    dx = model.backward(dy.reshape(batch, -1), True).reshape(x.shape)
    axes = (0,) + tuple(range(2, x.ndim))
    keep = (1, -1) + (1,) * (x.ndim - 2)
    dy64 = dy.astype(np.float64)
    invstd = 1 / np.sqrt(var + eps).reshape(keep)
    xhat = (x64 - mean.reshape(keep)) * invstd
    sum_dy = dy64.sum(axis=axes, keepdims=True)
    sum_dy_xhat = (dy64 * xhat).sum(axis=axes, keepdims=True)
    expected_dx = (gamma.reshape(keep) * invstd / per_channel *
                   (per_channel * dy64 - sum_dy - xhat * sum_dy_xhat))
    grad_tol = TOL[dtype] if dtype == "float64" else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, expected_dx, **grad_tol)
    np.testing.assert_allclose(tensor(model, "0.weight", grad=True), sum_dy_xhat.reshape(-1),
                               **grad_tol)
    np.testing.assert_allclose(tensor(model, "0.bias", grad=True), sum_dy.reshape(-1), **grad_tol)

    model.training = False
    stats = [tensor(model, name).astype(np.float64) for name in ("0.running_mean",
                                                                 "0.running_var")]
    x = rng.standard_normal((batch,) + shape).astype(dtype)
    np.testing.assert_allclose(run(model, x, shape),
                               bn_eval_reference(x.astype(np.float64), gamma, beta, *stats, eps),
                               **TOL[dtype])


def test_batch_norm_parameter_gradients_accumulate_over_backward_calls():
    rng = np.random.default_rng(14)
    model = make((3,), [{"op": "batch_norm", "num_features": 3}])
    set_affine(model, rng, 3)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    model.zero_grad()
    model.forward(x, keep=True)
    model.backward(dy, False)
    once = tensor(model, "0.weight", grad=True).copy(), tensor(model, "0.bias", grad=True).copy()
    model.forward(x, keep=True)
    model.backward(dy, False)
    np.testing.assert_allclose(tensor(model, "0.weight", grad=True), 2 * once[0], rtol=1e-14)
    np.testing.assert_allclose(tensor(model, "0.bias", grad=True), 2 * once[1], rtol=1e-14)


@pytest.mark.parametrize("shape, batch", [((4,), 1), ((2, 1), 1), ((3, 1, 1), 1)])
def test_batch_norm_refuses_one_value_per_channel(shape, batch):
    model = make(shape, [{"op": "batch_norm", "num_features": shape[0]}])
    x = np.ones((batch, int(np.prod(shape))))
    size = ", ".join(str(d) for d in (batch,) + shape)
    with pytest.raises(ValueError, match=r"expected more than 1 value per channel when training, "
                                         rf"got input of size \({size}\)"):
        model.forward(x)
    assert tensor(model, "0.num_batches_tracked").tolist() == 0  # nothing was updated
    model.training = False
    np.testing.assert_allclose(model.forward(x), x / np.sqrt(1 + 1e-5))


def test_batch_norm_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(15)
    results = []
    shape = (24, 20, 20)
    x = rng.standard_normal((32,) + shape).reshape(32, -1) * 3 + 1
    dy = rng.standard_normal(x.shape)
    for n in (1, 2):
        fastnet.set_num_threads(n)
        model = make(shape, [{"op": "batch_norm", "num_features": 24}])
        y = model.forward(x, keep=True)
        dx = model.backward(dy, True)
        results.append((y, dx, tensor(model, "0.weight", grad=True).copy(),
                        tensor(model, "0.running_var").copy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("node, shape, message", [
    ({"op": "batch_norm"}, (3,), "missing \"num_features\""),
    ({"op": "batch_norm", "num_features": 4}, (3, 2, 2), "expects 4 channels"),
    ({"op": "batch_norm", "num_features": 0}, (3,), "num_features in"),
    ({"op": "batch_norm", "num_features": 3, "momentum": 1.5}, (3,), "momentum in"),
    ({"op": "batch_norm", "num_features": 3, "eps": -1}, (3,), "eps >= 0"),
    ({"op": "batch_norm", "num_features": 3, "affine": 1}, (3,), "\"affine\" must be"),
])
def test_batch_norm_rejects_bad_attributes(node, shape, message):
    with pytest.raises(ValueError, match=message):
        make(shape, [node])


# ------------------------------------------------------------------------------ dropout

def dropout_model(p, size=1000, dtype="float64", seed=0):
    return make((size,), [{"op": "dropout", "p": p}], dtype, seed)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_keep_rate_and_scaling(p, dtype, threads):
    rng = np.random.default_rng(20)
    model = dropout_model(p, 4000, dtype)
    x = rng.uniform(0.5, 2.0, (50, 4000)).astype(dtype)
    y = model.forward(x)
    kept = y != 0
    # Within 5 standard deviations of the binomial count.
    n = kept.size
    assert abs(kept.sum() - n * (1 - p)) < 5 * np.sqrt(n * p * (1 - p))
    scale = np.asarray(1 / (1 - p), dtype=dtype)
    np.testing.assert_array_equal(y[kept], x[kept] * scale)


def test_dropout_is_the_identity_in_eval_mode_and_for_p_zero():
    rng = np.random.default_rng(21)
    x = rng.standard_normal((7, 1000))
    model = dropout_model(0.5)
    model.training = False
    np.testing.assert_array_equal(model.forward(x, keep=True), x)
    np.testing.assert_array_equal(model.backward(x * 3, True), x * 3)
    assert model.rng_step == 0  # eval forwards draw no masks
    zero = dropout_model(0.0)
    np.testing.assert_array_equal(zero.forward(x, keep=True), x)
    np.testing.assert_array_equal(zero.backward(x * 3, True), x * 3)


def test_dropout_masks_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(22)
    x = rng.uniform(0.5, 2.0, (64, 5000))
    dy = rng.standard_normal(x.shape)
    results = []
    for n in (1, 2, 3):
        fastnet.set_num_threads(n)
        model = dropout_model(0.4, 5000)
        y = model.forward(x, keep=True)
        results.append((y, model.backward(dy, True)))
    for other in results[1:]:
        np.testing.assert_array_equal(results[0][0], other[0])
        np.testing.assert_array_equal(results[0][1], other[1])


@settings(max_examples=200)
@given(st.one_of(st.integers(1, 8), st.integers(9, 200)),
       st.one_of(st.integers(1, 40), st.integers(41, 6000)), st.sampled_from([0.1, 0.5, 0.9]),
       st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_dropout_masks_do_not_depend_on_the_thread_count_at_random_sizes(n, features, p, dtype,
                                                                          seed):
    # Batches and widths drawn at random cut the counter-based masks into the threads' parts at
    # every kind of boundary; the masks, forward and backward, must be the same on 1, 2 and 3
    # threads, and keep about 1 - p of the elements.
    rng = np.random.default_rng(seed % 1000)
    x = rng.uniform(0.5, 2.0, (n, features)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    results = []
    for threads in (1, 2, 3):
        fastnet.set_num_threads(threads)
        model = dropout_model(p, features, dtype, seed)
        results.append((model.forward(x, keep=True), model.backward(dy, True)))
    for y, dx in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])
    kept = results[0][0] != 0
    assert abs(kept.sum() - kept.size * (1 - p)) <= 6 * np.sqrt(kept.size * p * (1 - p)) + 1


def test_dropout_draws_a_new_mask_each_train_forward():
    x = np.ones((10, 1000))
    model = dropout_model(0.5)
    first = model.forward(x) != 0
    second = model.forward(x) != 0
    assert model.rng_step == 2
    assert (first != second).mean() > 0.3  # independent masks differ in about half the places
    model.rng_step = 0  # the step determines the mask
    np.testing.assert_array_equal(model.forward(x) != 0, first)
    other_seed = dropout_model(0.5, seed=1)
    assert ((other_seed.forward(x) != 0) != first).mean() > 0.3


def test_dropout_backward_uses_the_mask_of_its_forward():
    rng = np.random.default_rng(23)
    x = rng.uniform(0.5, 2.0, (8, 1000))
    dy = rng.standard_normal(x.shape)
    model = dropout_model(0.3)
    model.forward(x)  # an earlier step, with another mask
    y = model.forward(x, keep=True)
    assert model.rng_step == 2  # advanced past the forward being differentiated
    grad = model.backward(dy, True)
    np.testing.assert_array_equal(grad, np.where(y != 0, dy * (1 / 0.7), 0))


def test_two_dropout_nodes_draw_different_masks():
    x = np.ones((4, 1000))
    model = make((1000,), [{"op": "dropout", "p": 0.5}, {"op": "dropout", "p": 0.0}])
    one = dropout_model(0.5)
    # Node 0 of both models draws the same mask; a node elsewhere draws its own.
    np.testing.assert_array_equal(model.forward(x), one.forward(x))
    swapped = make((1000,), [{"op": "dropout", "p": 0.0}, {"op": "dropout", "p": 0.5}])
    assert ((swapped.forward(x) != 0) != (one.forward(x) != 0)).mean() > 0.3


def test_dropout_gradient_finite_differences():
    rng = np.random.default_rng(24)
    model = make((3, 4, 4), [{"op": "dropout", "p": 0.4}])
    x = rng.standard_normal((2, 3, 4, 4)).reshape(2, -1)
    projection = rng.standard_normal(x.shape)
    step = model.rng_step

    def objective():
        model.rng_step = step  # the same mask for every evaluation
        return float(np.sum(model.forward(x) * projection))

    model.rng_step = step
    model.forward(x, keep=True)
    grad = model.backward(projection, True)
    assert_gradient_close(grad, central_difference(objective, x), "input gradient", reshape=True)


@pytest.mark.parametrize("p, message", [
    (1.0, "p = 1 would zero every value"),
    (1.5, r"p must be in \[0, 1\)"),
    (-0.1, r"p must be in \[0, 1\)"),
    ("0.5", "\"p\" must be"),
])
def test_dropout_rejects_bad_p(p, message):
    with pytest.raises(ValueError, match=message):
        dropout_model(p)


# ------------------------------------------------------------------------------ LRN

def lrn_reference(x, size, alpha, beta, k):
    """PyTorch's local_response_norm: the channel window [c - size//2, c + (size-1)//2] with zero
    padding, and the divisor always `size`."""
    c = x.shape[1]
    squares = x ** 2
    d = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c - 1, ch + (size - 1) // 2)
        d[:, ch] = k + alpha / size * squares[:, lo:hi + 1].sum(axis=1)
    return x * d ** -beta


LRN_CASES = [
    # (input shape, size, alpha, beta, k)
    ((7, 3, 3), 5, 1e-4, 0.75, 1.0),
    ((7, 3, 3), 5, 0.5, 0.75, 2.0),
    ((6, 2, 5), 2, 0.3, 0.6, 1.0),
    ((5, 4), 3, 0.8, 1.3, 0.5),
    ((3, 2, 2), 1, 0.4, 0.75, 1.0),
    ((4, 3, 3), 9, 0.6, 0.5, 1.5),  # the window is wider than the channels
    ((1, 5, 5), 4, 0.9, 0.75, 1.0),
    ((9, 31), 4, 0.9, 0.75, 0.2),
    ((3, 20, 20), 2, 0.7, 0.75, 1.0),  # more positions than a kernel block
]


@pytest.mark.parametrize("case", LRN_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3])
def test_lrn_forward(case, dtype, batch, threads):
    shape, size, alpha, beta, k = case
    rng = np.random.default_rng(30)
    model = make(shape, [{"op": "local_response_norm", "size": size, "alpha": alpha,
                          "beta": beta, "k": k}], dtype)
    x = (rng.standard_normal((batch,) + shape) * 2).astype(dtype)
    np.testing.assert_allclose(run(model, x, shape),
                               lrn_reference(x.astype(np.float64), size, alpha, beta, k),
                               **TOL[dtype])


def test_lrn_defaults_are_pytorch_defaults():
    rng = np.random.default_rng(31)
    x = rng.standard_normal((2, 6, 3, 3)) * 30
    model = make((6, 3, 3), [{"op": "local_response_norm", "size": 3}])
    np.testing.assert_allclose(run(model, x, (6, 3, 3)), lrn_reference(x, 3, 1e-4, 0.75, 1.0),
                               rtol=1e-12)


@pytest.mark.parametrize("case", LRN_CASES)
def test_lrn_gradient_finite_differences(case):
    shape, size, alpha, beta, k = case
    rng = np.random.default_rng(32)
    model = make(shape, [{"op": "local_response_norm", "size": size, "alpha": alpha,
                          "beta": beta, "k": k}])
    check_gradients(model, rng.standard_normal((2,) + shape), rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lrn_backward_in_float32_matches_float64(dtype, threads):
    rng = np.random.default_rng(33)
    shape = (8, 5, 5)
    node = {"op": "local_response_norm", "size": 5, "alpha": 0.2}
    x = rng.standard_normal((3,) + shape).reshape(3, -1)
    dy = rng.standard_normal(x.shape)
    reference = make(shape, [node])
    reference.forward(x, keep=True)
    expected = reference.backward(dy, True)
    model = make(shape, [node], dtype)
    model.forward(x.astype(dtype), keep=True)
    np.testing.assert_allclose(model.backward(dy.astype(dtype), True), expected, **TOL[dtype])


@settings(max_examples=200)
@given(st.integers(1, 40), st.sampled_from([(1,), (31,), (1, 1), (3, 5), (20, 20)]),
       st.integers(1, 12),
       st.floats(1e-4, 1.0), st.floats(0.25, 1.5), st.floats(0.2, 2.0), st.integers(1, 4),
       st.sampled_from([1, 2, 3]))
def test_lrn_random_sizes(channels, plane, size, alpha, beta, k, batch, thread_count):
    # Channel counts, windows (wider than the channels too) and planes drawn at random, on 1 to
    # 3 threads: the forward in both dtypes against the reference, and the float32 backward
    # against the float64 one (whose formula the finite-difference tests above check).
    fastnet.set_num_threads(thread_count)
    shape = (channels,) + plane
    node = {"op": "local_response_norm", "size": size, "alpha": alpha, "beta": beta, "k": k}
    rng = np.random.default_rng(channels * 7 + size)
    x = rng.standard_normal((batch,) + shape) * 2
    dy = rng.standard_normal(x.shape)
    grads = {}
    for dtype in DTYPES:
        model = make(shape, [node], dtype)
        np.testing.assert_allclose(run(model, x.astype(dtype), shape),
                                   lrn_reference(x.astype(dtype).astype(np.float64), size, alpha,
                                                 beta, k), **TOL[dtype])
        grads[dtype] = model.backward(dy.reshape(batch, -1).astype(dtype), True)
    np.testing.assert_allclose(grads["float32"], grads["float64"], rtol=1e-4, atol=1e-5)


def test_lrn_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(34)
    shape = (16, 20, 20)
    x = rng.standard_normal((16,) + shape).reshape(16, -1)
    dy = rng.standard_normal(x.shape)
    results = []
    for n in (1, 2):
        fastnet.set_num_threads(n)
        model = make(shape, [{"op": "local_response_norm", "size": 5, "alpha": 0.1}])
        y = model.forward(x, keep=True)
        results.append((y, model.backward(dy, True)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("node, shape, message", [
    ({"op": "local_response_norm"}, (3, 2, 2), "missing \"size\""),
    ({"op": "local_response_norm", "size": 0}, (3, 2, 2), "size in"),
    ({"op": "local_response_norm", "size": 2, "k": 0}, (3, 2, 2), "k > 0"),
    ({"op": "local_response_norm", "size": 2, "alpha": -1}, (3, 2, 2), "alpha >= 0"),
    ({"op": "local_response_norm", "size": 2}, (12,), r"expects a \(C, L\) or \(C, H, W\)"),
])
def test_lrn_rejects_bad_attributes_and_shapes(node, shape, message):
    with pytest.raises(ValueError, match=message):
        make(shape, [node])
