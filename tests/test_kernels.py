"""Each C kernel against a plain numpy reference: Linear, the activations, the softmax
cross-entropy loss, GEMM (BLAS table and built-in), and single-layer backward passes.

Every kernel runs with 1 and 2 threads; the larger shapes are big enough for the kernels to
actually split the work between two threads. References are computed in float64; tolerances are
error bounds scaled by the length of the reduction and the dtype's machine epsilon.
"""

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnet as fn
from fastnet import _core

DTYPES = [np.float32, np.float64]

# (batch, features). 257 x 257 and 513 x 129 are above the size at which elementwise kernels and
# the loss use a second thread.
# The softmax cross-entropy takes rows of up to 1024 classes in chunks of 2048 elements and 256
# rows (300 x 16), longer ones a row at a time in pieces of 1024 (3 x 1025, 2 x 2500).
SHAPES = [(1, 1), (3, 7), (2, 1), (1, 9), (17, 33), (257, 129), (257, 257), (513, 129), (300, 16),
          (3, 1025), (2, 2500)]

LABEL_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


def eps_of(dtype):
    return float(np.finfo(dtype).eps)


# The tests at sizes that hypothesis draws (the same draws at every run: conftest.py's profile).
RANDOM_SIZES = settings(max_examples=300)


def sizes(largest):
    """Small sizes (tails, single rows) as often as large ones (blocks, splits)."""
    return st.one_of(st.integers(1, 40), st.integers(41, largest))


def assert_within_bound(actual, expected, bound, what=""):
    """|actual - expected| <= bound elementwise, with a readable message on failure."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), what
    error = np.abs(actual - expected)
    bad = error > bound
    if np.any(bad):
        i = np.unravel_index(np.argmax(error - bound), error.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {error.size} elements out of bounds; worst at {i}: "
            f"actual {actual[i]!r}, expected {expected[i]!r}, error {error[i]:.3g} > "
            f"bound {np.broadcast_to(bound, error.shape)[i]:.3g}")


def linear_model(n_in, n_out, bias, dtype, rng):
    """A one-Linear model whose parameters are set to random values drawn here."""
    model = fn.Sequential(fn.Linear(n_in, n_out, bias=bias), dtype=np.dtype(dtype).name)
    weight = rng.standard_normal((n_out, n_in)).astype(dtype)
    state = {"0.weight": weight}
    if bias:
        state["0.bias"] = rng.standard_normal(n_out).astype(dtype)
    model.load_state_dict(state)
    return model, state


def activation_model(layer, features, dtype):
    return fn.Sequential(layer, dtype=np.dtype(dtype).name, input_shape=(features,))


# ------------------------------------------------------------------------------ numpy references


def ref_sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def ref_softmax_xent(logits, labels):
    """(mean loss, (softmax - onehot) / N) in float64."""
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    n = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    log_softmax = shifted - np.log(total)
    loss = -log_softmax[np.arange(n), labels].mean()
    grad = exp / total
    grad[np.arange(n), labels] -= 1.0
    return loss, grad / n


ACTIVATIONS = {
    "relu": (lambda: fn.ReLU(), lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(np.float64)),
    "leaky_relu_default": (
        lambda: fn.LeakyReLU(),
        lambda x: np.where(x > 0, x, 0.01 * x),
        lambda x: np.where(x > 0, 1.0, 0.01)),
    "leaky_relu_0.2": (
        lambda: fn.LeakyReLU(0.2),
        lambda x: np.where(x > 0, x, 0.2 * x),
        lambda x: np.where(x > 0, 1.0, 0.2)),
    "leaky_relu_1.5": (
        lambda: fn.LeakyReLU(1.5),
        lambda x: np.where(x > 0, x, 1.5 * x),
        lambda x: np.where(x > 0, 1.0, 1.5)),
    "sigmoid": (lambda: fn.Sigmoid(), ref_sigmoid,
                lambda x: ref_sigmoid(x) * (1.0 - ref_sigmoid(x))),
    "tanh": (lambda: fn.Tanh(), np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
}


def activation_input(shape, dtype, rng):
    """Normal values with exact zeros and some large magnitudes mixed in."""
    x = rng.standard_normal(shape) * 3
    flat = x.reshape(-1)
    flat[::5] = 0.0
    flat[1::7] = rng.choice([-1e4, 1e4, -100.0, 100.0, -50.0, 50.0], size=flat[1::7].shape)
    return x.astype(dtype)


# ------------------------------------------------------------------------------ Linear forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("n, n_in, n_out", [(1, 1, 1), (3, 7, 5), (2, 1, 9), (257, 129, 65),
                                            (31, 300, 17), (129, 65, 257)])
def test_linear_forward(dtype, bias, n, n_in, n_out, threads):
    rng = np.random.default_rng(n * 1000 + n_in * 10 + n_out)
    model, state = linear_model(n_in, n_out, bias, dtype, rng)
    x = rng.standard_normal((n, n_in)).astype(dtype)
    w = state["0.weight"].astype(np.float64)
    b = state["0.bias"].astype(np.float64) if bias else np.zeros(n_out)
    expected = x.astype(np.float64) @ w.T + b
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w).T + np.abs(b)
    bound = (n_in + 2) * eps_of(dtype) * magnitude

    out = model(x)
    assert out.dtype == dtype and out.shape == (n, n_out)
    assert_within_bound(out, expected, bound, "inference forward")
    train_out = model.forward(x)
    assert_within_bound(train_out, expected, bound, "training forward")
    np.testing.assert_array_equal(train_out, out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, n_in, n_out", [(1, 300, 1030), (1, 9, 13), (1, 1000, 8),
                                            (37, 300, 10), (5, 70, 3)])
def test_linear_forward_alternates_its_weights_order_with_the_same_bits(dtype, n, n_in, n_out,
                                                                       threads):
    # Each forward reads the weights in the other order than the last (the dot products of a
    # single row, or of few columns, take C's columns last to first every other call): the
    # same values each time, whatever the order, with short blocks of columns at either end and
    # each thread's share of them.
    rng = np.random.default_rng(n * 7 + n_out)
    model, state = linear_model(n_in, n_out, True, dtype, rng)
    x = rng.standard_normal((n, n_in)).astype(dtype)
    w, b = state["0.weight"].astype(np.float64), state["0.bias"].astype(np.float64)
    expected = x.astype(np.float64) @ w.T + b
    bound = (n_in + 2) * eps_of(dtype) * (np.abs(x.astype(np.float64)) @ np.abs(w).T + np.abs(b))
    outputs = [model(x) for _ in range(3)]
    for i, out in enumerate(outputs):
        assert_within_bound(out, expected, bound, f"forward {i}")
        np.testing.assert_array_equal(out, outputs[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_forward_smaller_batch_after_larger(dtype, threads):
    # Buffers are planned for the largest batch seen; a smaller batch must use them correctly.
    rng = np.random.default_rng(1)
    model, state = linear_model(6, 4, True, dtype, rng)
    w, b = state["0.weight"].astype(np.float64), state["0.bias"].astype(np.float64)
    for n in (50, 3, 1, 50, 7):
        x = rng.standard_normal((n, 6)).astype(dtype)
        expected = x.astype(np.float64) @ w.T + b
        bound = 8 * eps_of(dtype) * (np.abs(x.astype(np.float64)) @ np.abs(w).T + np.abs(b))
        assert_within_bound(model(x), expected, bound, f"batch {n}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_forward_converts_other_float_width_and_layout(dtype, threads):
    rng = np.random.default_rng(2)
    model, state = linear_model(5, 3, True, dtype, rng)
    other = np.float64 if dtype == np.float32 else np.float32
    x = rng.standard_normal((5, 8)).astype(other).T  # Fortran-ordered, other width
    expected = model(np.ascontiguousarray(x, dtype=dtype))
    out = model(x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected)


# ------------------------------------------------------------------------------ activations


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{f}" for n, f in SHAPES])
def test_activation_forward(dtype, name, shape, threads):
    check_activation_forward(name, shape, dtype)


def check_activation_forward(name, shape, dtype):
    make, forward, _ = ACTIVATIONS[name]
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    x = activation_input(shape, dtype, rng)
    model = activation_model(make(), shape[1], dtype)
    assert model.parameters() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model(x)
    expected = forward(x.astype(np.float64))
    assert out.dtype == dtype and out.shape == shape
    bound = 4 * eps_of(dtype) * np.abs(expected) + np.finfo(dtype).tiny
    assert_within_bound(out, expected, bound, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_saturating_activations_at_extreme_inputs(dtype, name, threads):
    big = float(np.finfo(dtype).max)
    x = np.array([[-big, -1e30, -1e4, -800.0, -89.0, -88.0, -20.0, -1e-30, 0.0,
                   1e-30, 20.0, 88.0, 89.0, 800.0, 1e4, 1e30, big]], dtype=dtype)
    model = activation_model(ACTIVATIONS[name][0](), x.shape[1], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            out = model(x)
    assert np.all(np.isfinite(out))
    if name == "sigmoid":
        assert np.all((out >= 0) & (out <= 1))
        assert out[0, 0] == 0 and out[0, -1] == 1
        assert out[0, 8] == 0.5
        # e^-20 / (1 + e^-20) is far from 0 in either dtype: the small tail is kept, not
        # rounded away by computing 1 - sigmoid(20).
        expected = np.array([ref_sigmoid(v) for v in x[0].astype(np.float64)])
        bound = 4 * eps_of(dtype) * expected + np.finfo(dtype).tiny
        assert_within_bound(out[0], expected, bound, "sigmoid")
        assert out[0, 6] > 0
    else:
        assert out[0, 0] == -1 and out[0, -1] == 1
        assert out[0, 8] == 0
        np.testing.assert_allclose(out[0], np.tanh(x[0].astype(np.float64)),
                                   rtol=4 * eps_of(dtype), atol=np.finfo(dtype).tiny)
    # Monotone non-decreasing over the sorted inputs.
    assert np.all(np.diff(out[0].astype(np.float64)) >= 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_between_linears_matches_numpy(dtype, name, threads):
    rng = np.random.default_rng(3)
    make, forward, _ = ACTIVATIONS[name]
    model = fn.Sequential(fn.Linear(9, 11), make(), fn.Linear(11, 4), dtype=np.dtype(dtype).name)
    sd = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    x = (rng.standard_normal((13, 9)) * 2).astype(dtype)
    h = forward(x.astype(np.float64) @ sd["0.weight"].T + sd["0.bias"])
    expected = h @ sd["2.weight"].T + sd["2.bias"]
    np.testing.assert_allclose(model(x), expected, rtol=100 * eps_of(dtype),
                               atol=100 * eps_of(dtype))


# ------------------------------------------------------------------------------ loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{c}" for n, c in SHAPES])
def test_cross_entropy_value_and_gradient(dtype, shape, threads):
    n, c = shape
    rng = np.random.default_rng(n * 31 + c)
    logits = (rng.standard_normal(shape) * 4).astype(dtype)
    labels = rng.integers(0, c, size=n)
    loss = fn.CrossEntropyLoss()
    value, grad = loss.forward_backward(logits, labels)
    ref_value, ref_grad = ref_softmax_xent(logits, labels)

    assert isinstance(value, float)
    scale = np.abs(logits.astype(np.float64)).max() + np.log(c) + 1
    assert abs(value - ref_value) <= 8 * eps_of(dtype) * scale
    assert abs(loss(logits, labels) - value) == 0
    assert grad.dtype == dtype and grad.shape == shape
    assert_within_bound(grad, ref_grad, 8 * eps_of(dtype) * (c + scale) / n, "grad")
    # Each row of (softmax - onehot) sums to zero.
    np.testing.assert_allclose(grad.astype(np.float64).sum(axis=1), 0,
                               atol=4 * c * eps_of(dtype) / n)


def test_cross_entropy_single_class_is_zero(threads):
    for dtype in DTYPES:
        value, grad = fn.CrossEntropyLoss().forward_backward(
            np.array([[5.0], [-3.0]], dtype=dtype), np.array([0, 0]))
        assert value == 0
        np.testing.assert_array_equal(grad, np.zeros((2, 1)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_uniform_logits_is_log_classes(dtype, threads):
    for c in (1, 2, 10, 1000):
        value = fn.CrossEntropyLoss()(np.full((3, c), 7.5, dtype=dtype), np.arange(3) % c)
        assert value == pytest.approx(np.log(c), rel=8 * eps_of(dtype), abs=8 * eps_of(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_extreme_logits_stay_finite(dtype, threads):
    logits = np.array([
        [1e4, -1e4, 0.0],      # label 1: loss 2e4
        [1e4, -1e4, 0.0],      # label 0: loss ~0 (e^-1e4 underflows)
        [-1e4, 1e4, 1e4],      # label 0: loss 2e4 + log 2
        [-1e4, 1e4, 1e4],      # label 2: loss log 2
        [1e4, 1e4, 1e4],       # label 1: log 3
        [-1e4, -1e4, -1e4],    # label 2: log 3
    ], dtype=dtype)
    labels = np.array([1, 0, 0, 2, 1, 2])
    per_row = np.array([2e4, 0.0, 2e4 + np.log(2), np.log(2), np.log(3), np.log(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = fn.CrossEntropyLoss().forward_backward(logits, labels)
    assert np.isfinite(value)
    assert value == pytest.approx(per_row.mean(), rel=8 * eps_of(dtype))
    assert np.all(np.isfinite(grad))
    n = len(labels)
    expected = np.array([
        [1.0, -1.0, 0.0],
        [0.0, 0.0, 0.0],
        [-1.0, 0.5, 0.5],
        [0.0, 0.5, -0.5],
        [1 / 3, -2 / 3, 1 / 3],
        [1 / 3, 1 / 3, -2 / 3],
    ]) / n
    np.testing.assert_allclose(grad, expected, rtol=4 * eps_of(dtype), atol=4 * eps_of(dtype) / n)
    _, ref_grad = ref_softmax_xent(logits, labels)
    np.testing.assert_allclose(grad, ref_grad, rtol=4 * eps_of(dtype), atol=4 * eps_of(dtype) / n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_large_shifted_logits(dtype, threads):
    # Adding a constant to every logit of a row changes neither the loss nor the gradient.
    rng = np.random.default_rng(4)
    base = rng.standard_normal((9, 6))
    labels = rng.integers(0, 6, size=9)
    ref_value, ref_grad = ref_softmax_xent(base, labels)
    for shift in (-1e3, 1e3):
        logits = (base + shift).astype(dtype)
        value, grad = fn.CrossEntropyLoss().forward_backward(logits, labels)
        # The shifted logits are rounded to the dtype: tolerance relative to the shift.
        tol = 16 * eps_of(dtype) * abs(shift)
        assert value == pytest.approx(ref_value, abs=tol)
        np.testing.assert_allclose(grad, ref_grad, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=lambda t: np.dtype(t).name)
def test_cross_entropy_every_label_dtype(dtype, label_dtype, threads):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((11, 7)).astype(dtype)
    labels64 = rng.integers(0, 7, size=11)
    labels64[0], labels64[1] = 0, 6
    labels = labels64.astype(label_dtype)
    value, grad = fn.CrossEntropyLoss().forward_backward(logits, labels)
    ref_value, ref_grad = fn.CrossEntropyLoss().forward_backward(logits, labels64)
    assert value == ref_value
    np.testing.assert_array_equal(grad, ref_grad)
    expected_value, expected_grad = ref_softmax_xent(logits, labels64)
    assert value == pytest.approx(expected_value, rel=16 * eps_of(dtype))
    np.testing.assert_allclose(grad, expected_grad, rtol=16 * eps_of(dtype),
                               atol=16 * eps_of(dtype))
    # Byte-swapped and strided label arrays read the same labels.
    swapped = labels.astype(np.dtype(label_dtype).newbyteorder("S"))
    assert fn.CrossEntropyLoss()(logits, swapped) == value
    strided = np.repeat(labels, 2)[::2]
    assert not strided.flags.c_contiguous
    assert fn.CrossEntropyLoss()(logits, strided) == value


@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=lambda t: np.dtype(t).name)
def test_cross_entropy_rejects_out_of_range_labels(label_dtype):
    logits = np.zeros((3, 5), dtype=np.float32)
    info = np.iinfo(label_dtype)
    bad_values = [5, info.max]
    if info.min < 0:
        bad_values += [-1, info.min]
    for bad in bad_values:
        labels = np.array([0, bad, 1], dtype=label_dtype)
        with pytest.raises(ValueError, match="out of range"):
            fn.CrossEntropyLoss()(logits, labels)
    upper = np.array([4, 4, 4], dtype=label_dtype)
    assert np.isfinite(fn.CrossEntropyLoss()(logits, upper))


def test_cross_entropy_rejects_non_integer_labels_and_bad_shapes():
    logits = np.zeros((3, 5), dtype=np.float64)
    for labels in (np.zeros(3), np.zeros(3, dtype=bool)):
        with pytest.raises(TypeError):
            fn.CrossEntropyLoss()(logits, labels)
    with pytest.raises(ValueError):
        fn.CrossEntropyLoss()(logits, np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError):
        fn.CrossEntropyLoss()(np.zeros(5), np.zeros(1, dtype=np.int64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_evaluate_counts_first_argmax(dtype, threads):
    rng = np.random.default_rng(6)
    logits = rng.integers(-2, 3, size=(300, 4)).astype(dtype)  # many ties
    labels = rng.integers(0, 4, size=300)
    value, correct = fn.CrossEntropyLoss().evaluate(logits, labels)
    assert correct == int(np.sum(np.argmax(logits, axis=1) == labels))
    assert value == pytest.approx(ref_softmax_xent(logits, labels)[0], rel=16 * eps_of(dtype))


# ------------------------------------------------------------------------------ GEMM

GEMM_SHAPES = [  # (m, k, n)
    (1, 1, 1), (3, 7, 5), (1, 9, 1), (7, 1, 3), (2, 3, 17), (13, 33, 31), (257, 129, 65),
    (65, 257, 129), (33, 513, 17), (5, 3, 1100), (37, 531, 10), (32, 676, 9), (16, 1024, 27),
    (12, 40, 16), (37, 100, 10), (21, 128, 5), (10, 70, 64), (22, 40, 33),
    # A @ B^T with B of many more rows than A runs as C^T tiles: one block of k, and two
    (32, 300, 70), (60, 1100, 130), (30, 70, 100),
]
GEMM_EMPTY = [(0, 5, 3), (3, 0, 4), (3, 5, 0), (0, 0, 0), (0, 4, 0)]
# How training runs a product (the BLAS, or the built-in kernel where it is faster), the
# built-in kernel alone, the BLAS alone.
KERNELS = {"auto": {}, "builtin": {"builtin": True}, "blas": {"blas": True}}


def gemm_operands(m, k, n, trans_a, trans_b, dtype, rng):
    """Stored a, b (transposed in storage when asked) and op(a), op(b) in float64."""
    op_a = rng.standard_normal((m, k))
    op_b = rng.standard_normal((k, n))
    a = (op_a.T if trans_a else op_a).astype(dtype)
    b = (op_b.T if trans_b else op_b).astype(dtype)
    return a, b, (a.T if trans_a else a).astype(np.float64), (b.T if trans_b else b).astype(
        np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["auto", "builtin", "blas"])
@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("m, k, n", GEMM_SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in GEMM_SHAPES])
def test_gemm(dtype, kernel, trans_a, trans_b, m, k, n, threads):
    rng = np.random.default_rng(m * 10007 + k * 101 + n)
    a, b, op_a, op_b = gemm_operands(m, k, n, trans_a, trans_b, dtype, rng)
    expected = op_a @ op_b
    bound = (k + 2) * eps_of(dtype) * (np.abs(op_a) @ np.abs(op_b))
    for thread_arg in (None, threads):
        c = _core.gemm(a, b, trans_a=trans_a, trans_b=trans_b, **KERNELS[kernel],
                       threads=thread_arg)
        assert c.dtype == dtype and c.shape == (m, n)
        assert_within_bound(c, expected, bound, f"gemm threads={thread_arg}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["auto", "builtin", "blas"])
@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("m, k, n", GEMM_EMPTY, ids=[f"{m}x{k}x{n}" for m, k, n in GEMM_EMPTY])
def test_gemm_empty(dtype, kernel, trans_a, trans_b, m, k, n, threads):
    rng = np.random.default_rng(0)
    a, b, _, _ = gemm_operands(m, k, n, trans_a, trans_b, dtype, rng)
    c = _core.gemm(a, b, trans_a=trans_a, trans_b=trans_b, **KERNELS[kernel], threads=threads)
    assert c.dtype == dtype and c.shape == (m, n)
    np.testing.assert_array_equal(c, np.zeros((m, n)))  # k == 0: the empty sum


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["auto", "builtin", "blas"])
def test_gemm_exact_small_integers(dtype, kernel, threads):
    # Small integers multiply and add exactly in either dtype: the result must be bitwise exact.
    rng = np.random.default_rng(7)
    a = rng.integers(-8, 9, size=(37, 70)).astype(dtype)
    b = rng.integers(-8, 9, size=(70, 45)).astype(dtype)
    expected = a.astype(np.int64) @ b.astype(np.int64)
    for ta, tb in ((False, False), (True, False), (False, True), (True, True)):
        c = _core.gemm(a.T.copy() if ta else a, b.T.copy() if tb else b, trans_a=ta,
                       trans_b=tb, **KERNELS[kernel], threads=threads)
        np.testing.assert_array_equal(c, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k, n", [(32, 300, 70), (60, 1100, 130), (128, 784, 1024),
                                     (64, 288, 576), (12, 40, 16), (257, 129, 65)])
def test_gemm_builtin_bits_do_not_depend_on_the_thread_count(dtype, m, k, n):
    # The threads split C by columns and each column is the same sums in the same order, whichever
    # path the product's sizes choose (as C^T tiles for the first four in float32).
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype)
    one = _core.gemm(a, b, trans_b=True, builtin=True, threads=1)
    np.testing.assert_array_equal(_core.gemm(a, b, trans_b=True, builtin=True, threads=2), one)
    expected = a.astype(np.float64) @ b.astype(np.float64).T
    magnitude = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)).T
    assert_within_bound(one, expected, (k + 2) * eps_of(dtype) * magnitude, "built-in")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k, n", [(128, 1024, 1024), (40, 600, 300)])
def test_gemm_column_blocks_computed_apart(dtype, m, k, n):
    # A @ B with a B too large to read in place and k in several blocks (an MLP's input gradient,
    # dY @ W) is split between the threads by columns, each thread's block computed in a buffer of
    # its own and then copied into C: the bits of one thread, within the bound of the product.
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    one = _core.gemm(a, b, builtin=True, threads=1)
    np.testing.assert_array_equal(_core.gemm(a, b, builtin=True, threads=2), one)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    magnitude = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    assert_within_bound(one, expected, (k + 2) * eps_of(dtype) * magnitude, "built-in")


@RANDOM_SIZES
@given(st.data())
def test_gemm_random_shapes(data):
    # Sizes drawn at random reach every path of the built-in kernel by its own choice: dot-product
    # blocks (4 x 4, 8 x 2, 8 x 3, one row) with masked tails, packed tiles with short last tiles,
    # C^T tiles, splits by rows and by columns. Each must be within the error bound, and give the
    # bits of one thread on two and on three (an odd split), as each element is the same sums in
    # the same order whichever thread computes it. Training's choice between the BLAS and the
    # built-in kernel must be within the bound too.
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    m, n = data.draw(sizes(600), label="m"), data.draw(sizes(600), label="n")
    k = data.draw(st.one_of(st.integers(1, 64), st.integers(65, 1300)), label="k")
    trans_a = data.draw(st.booleans(), label="trans_a")
    trans_b = data.draw(st.booleans(), label="trans_b")
    rng = np.random.default_rng(m * 7919 + n * 104729 + k)
    a, b, op_a, op_b = gemm_operands(m, k, n, trans_a, trans_b, dtype, rng)
    bound = (k + 2) * eps_of(dtype) * (np.abs(op_a) @ np.abs(op_b))
    one = _core.gemm(a, b, trans_a=trans_a, trans_b=trans_b, builtin=True, threads=1)
    assert_within_bound(one, op_a @ op_b, bound, "built-in")
    for threads in (2, 3):
        more = _core.gemm(a, b, trans_a=trans_a, trans_b=trans_b, builtin=True, threads=threads)
        np.testing.assert_array_equal(more, one, err_msg=f"built-in on {threads} threads")
    auto = _core.gemm(a, b, trans_a=trans_a, trans_b=trans_b, threads=2)
    assert_within_bound(auto, op_a @ op_b, bound, "as training runs it")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k, n", [(1024, 128, 784), (257, 65, 129), (200, 65, 97)])
def test_gemm_weight_gradient_split_by_rows(dtype, m, k, n):
    # A^T @ B with at least as many rows as columns and a short k (a linear layer's weight
    # gradient) is split between the threads by rows: the same bits as one thread built in, and
    # through the BLAS within the usual bound.
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((k, m)).astype(dtype)  # stored transposed: op(a) = a.T
    b = rng.standard_normal((k, n)).astype(dtype)
    expected = a.astype(np.float64).T @ b.astype(np.float64)
    magnitude = np.abs(a.astype(np.float64)).T @ np.abs(b.astype(np.float64))
    one = _core.gemm(a, b, trans_a=True, builtin=True, threads=1)
    np.testing.assert_array_equal(_core.gemm(a, b, trans_a=True, builtin=True, threads=2), one)
    for options in KERNELS.values():
        c = _core.gemm(a, b, trans_a=True, **options, threads=2)
        assert_within_bound(c, expected, (k + 2) * eps_of(dtype) * magnitude, str(options))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k, n", [(128, 1024, 10), (257, 300, 16), (33, 65, 5), (512, 256, 8)])
def test_gemm_few_columns_split_by_rows(dtype, m, k, n):
    # A @ B^T with few enough columns for the dot products (a classifier's forward) is split
    # between the threads by rows, the blocks' edges at row counts that are not multiples of the tile: every row
    # within the bound on any thread count. Built in, each element is one dot product whichever
    # block holds it, so the same bits on any thread count in either mode; through the BLAS, a
    # narrower call may sum differently (OpenBLAS 0.3.30's dgemm does for 128 x 10 x 1024), so
    # the same bits only in deterministic mode, whose blocks come from the sizes alone.
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype)
    expected = a.astype(np.float64) @ b.astype(np.float64).T
    bound = (k + 2) * eps_of(dtype) * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)).T)

    def product(threads, builtin=False):
        # Into NaNs: a row no block writes fails the bound (a fresh array may reuse the memory
        # of the last result, which holds the right values).
        out = np.full((m, n), np.nan, dtype)
        return _core.gemm(a, b, trans_b=True, builtin=builtin, threads=threads, out=out)

    try:
        for deterministic in (False, True):
            _core.set_deterministic(deterministic)
            builtin_one, one = product(1, builtin=True), product(1)
            for threads in (1, 2, 3):
                where = f"{threads} threads, deterministic={deterministic}"
                builtin = product(threads, builtin=True)
                assert_within_bound(builtin, expected, bound, "built in, " + where)
                np.testing.assert_array_equal(builtin, builtin_one, err_msg="built in, " + where)
                chosen = product(threads)
                assert_within_bound(chosen, expected, bound, where)
                if deterministic:
                    np.testing.assert_array_equal(chosen, one, err_msg=where)
    finally:
        _core.set_deterministic(False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [784, 1024, 512, 2048, 300])
def test_gemm_one_row_is_a_row_of_more(dtype, k):
    # A one-row product with a transposed B (a batch-1 inference of a linear layer) runs as dot
    # products in blocks of 8 rows of B, or 4 where those rows lie a multiple of 4 KB apart
    # (float32 k = 1024 and 2048, float64 k = 512 and 1024), in a loop of its own
    # (gemm_dot_row): the same sums in the same order as the rows of a product of 5 rows, whose
    # blocks are 4 x 4, so the same bits, for any n; k = 300 ends in a part of a vector.
    rng = np.random.default_rng(k)
    a = rng.standard_normal((5, k)).astype(dtype)
    for n in (70, 4, 1):
        b = rng.standard_normal((n, k)).astype(dtype)
        rows = _core.gemm(a, b, trans_b=True, builtin=True, threads=1)
        for threads in (1, 2):
            one = _core.gemm(a[:1], b, trans_b=True, builtin=True, threads=threads)
            np.testing.assert_array_equal(one, rows[:1])
        expected = a[:1].astype(np.float64) @ b.astype(np.float64).T
        magnitude = np.abs(a[:1].astype(np.float64)) @ np.abs(b.astype(np.float64)).T
        assert_within_bound(one, expected, (k + 2) * eps_of(dtype) * magnitude, "one row")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_builtin_and_blas_agree(dtype):
    rng = np.random.default_rng(8)
    a = rng.standard_normal((120, 300)).astype(dtype)
    b = rng.standard_normal((300, 90)).astype(dtype)
    magnitude = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    results = [_core.gemm(a, b, **options, threads=t) for options in KERNELS.values()
               for t in (1, 2)]
    for r in results[1:]:
        assert_within_bound(r, results[0], 2 * 302 * eps_of(dtype) * magnitude, "agreement")


@pytest.mark.parametrize("kernel", ["auto", "builtin", "blas"])
def test_gemm_rejects_mismatched_inner_dimensions(kernel):
    a = np.ones((3, 4))
    with pytest.raises(ValueError):
        _core.gemm(a, np.ones((5, 2)), **KERNELS[kernel])
    with pytest.raises(ValueError):
        _core.gemm(a, np.ones((3, 2)), trans_b=True, **KERNELS[kernel])
    with pytest.raises(ValueError):
        _core.gemm(np.ones(3), np.ones(3), **KERNELS[kernel])
    assert _core.gemm(a, np.ones((3, 2)), trans_a=True, **KERNELS[kernel]).shape == (4, 2)


@pytest.mark.parametrize("kernel", ["auto", "builtin", "blas"])
def test_gemm_repeat_computes_the_same_product(kernel):
    # repeat (for timing) computes the product that many times into the same result.
    rng = np.random.default_rng(8)
    a = rng.standard_normal((7, 33)).astype(np.float32)
    b = rng.standard_normal((33, 12)).astype(np.float32)
    once = _core.gemm(a, b, **KERNELS[kernel])
    out = np.full((7, 12), np.nan, np.float32)
    assert _core.gemm(a, b, out=out, repeat=5, **KERNELS[kernel]) is out
    np.testing.assert_array_equal(out, once)
    with pytest.raises(ValueError, match="repeat must be at least 1"):
        _core.gemm(a, b, repeat=0, **KERNELS[kernel])


def test_gemm_writes_into_out_and_checks_it():
    rng = np.random.default_rng(9)
    a = rng.standard_normal((6, 5)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    out = np.full((6, 4), np.nan, np.float32)
    for options in KERNELS.values():
        result = _core.gemm(a, b, out=out, **options)
        assert result is out
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    for wrong in (np.empty((4, 6), np.float32), np.empty((6, 4), np.float64),
                  np.empty((4, 6), np.float32).T):
        with pytest.raises(ValueError, match="out must be"):
            _core.gemm(a, b, out=wrong)
    with pytest.raises(ValueError, match="exclude each other"):
        _core.gemm(a, b, builtin=True, blas=True)


# ------------------------------------------------------------------------------ backward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("n, n_in, n_out", [(1, 1, 1), (3, 7, 5), (257, 129, 65), (2, 1, 9),
                                            (129, 65, 257)])
def test_linear_backward(dtype, bias, n, n_in, n_out, threads):
    rng = np.random.default_rng(n * 977 + n_in * 13 + n_out)
    model, state = linear_model(n_in, n_out, bias, dtype, rng)
    x = rng.standard_normal((n, n_in)).astype(dtype)
    dy = rng.standard_normal((n, n_out)).astype(dtype)
    x64, dy64, w64 = x.astype(np.float64), dy.astype(np.float64), state["0.weight"].astype(
        np.float64)
    eps = eps_of(dtype)

    model.zero_grad()
    model.forward(x)
    dx = model.backward(dy)
    params = {p.name: p for p in model.parameters()}
    assert sorted(params) == (["0.bias", "0.weight"] if bias else ["0.weight"])

    assert dx.dtype == dtype and dx.shape == (n, n_in)
    assert_within_bound(dx, dy64 @ w64, (n_out + 2) * eps * (np.abs(dy64) @ np.abs(w64)), "dX")
    dw_bound = (n + 2) * eps * (np.abs(dy64).T @ np.abs(x64))
    assert params["0.weight"].grad.shape == (n_out, n_in)
    assert_within_bound(params["0.weight"].grad, dy64.T @ x64, dw_bound, "dW")
    if bias:
        db_bound = (n + 2) * eps * np.abs(dy64).sum(axis=0)
        assert_within_bound(params["0.bias"].grad, dy64.sum(axis=0), db_bound, "db")

    # A second backward of the same forward accumulates into the parameter gradients only.
    dx2 = model.backward(dy)
    np.testing.assert_array_equal(dx2, dx)
    assert_within_bound(params["0.weight"].grad, 2 * (dy64.T @ x64), 2 * dw_bound + 2 * eps *
                        np.abs(dy64).T @ np.abs(x64), "accumulated dW")
    if bias:
        assert_within_bound(params["0.bias"].grad, 2 * dy64.sum(axis=0),
                            2 * db_bound + 2 * eps * np.abs(dy64).sum(axis=0), "accumulated db")

    # zero_grad clears them; the parameters themselves are untouched by backward.
    model.zero_grad()
    assert not np.any(params["0.weight"].grad)
    np.testing.assert_array_equal(params["0.weight"].data, state["0.weight"])


@RANDOM_SIZES
@given(st.data())
def test_linear_relu_linear_random_sizes(data):
    # Linear-ReLU-Linear, the ReLU applied by the first layer's GEMM and undone in the pass that
    # sums its bias gradient (columns in blocks of 64 and 16, split between the threads), at
    # sizes drawn at random, on 1 to 3 threads: each result within the error bound of a float64
    # reference. The reference takes the ReLU's mask from fastnet's own output, as an element
    # whose sum lies within rounding of 0 may fall either way.
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    n, n_in, hidden, n_out = (data.draw(sizes(700), label=name)
                              for name in ("n", "in", "hidden", "out"))
    bias = data.draw(st.booleans(), label="bias")
    fn.set_num_threads(data.draw(st.sampled_from([1, 2, 3]), label="threads"))
    spec = {"format": "fastnet.model", "version": 1, "dtype": np.dtype(dtype).name, "seed": 0,
            "input_shape": [n_in], "nodes": [
                {"name": "a", "op": "linear", "in_features": n_in, "out_features": hidden,
                 "bias": bias},
                {"name": "r", "op": "relu", "inputs": ["a"]},
                {"name": "b", "op": "linear", "in_features": hidden, "out_features": n_out,
                 "bias": bias}]}
    model = _core.Model(json.dumps(spec))
    rng = np.random.default_rng(n * 7 + n_in * 11 + hidden * 13 + n_out)
    model.param_arena()[:] = rng.uniform(-1, 1, model.param_arena().shape)
    params = {name: model.param_arena()[offset:offset + int(np.prod(shape))].reshape(shape)
              .astype(np.float64) for name, shape, offset, _, _ in model.tensor_info()}
    zero = {"a": np.zeros(hidden), "b": np.zeros(n_out)}
    w1, w2 = params["a.weight"], params["b.weight"]
    b1, b2 = (params["a.bias"], params["b.bias"]) if bias else (zero["a"], zero["b"])
    x = rng.standard_normal((n, n_in)).astype(dtype)
    g = rng.standard_normal((n, n_out)).astype(dtype)
    x64, g64, eps = x.astype(np.float64), g.astype(np.float64), eps_of(dtype)

    y = model.forward(x, True)
    model.zero_grad()
    dx = model.backward(g, True)
    grads = {name: model.grad_arena()[offset:offset + int(np.prod(shape))].reshape(shape)
             for name, shape, offset, _, _ in model.tensor_info()}
    relu = model.node_output(1).astype(np.float64)

    pre = x64 @ w1.T + b1
    pre_bound = (n_in + 2) * eps * (np.abs(x64) @ np.abs(w1).T + np.abs(b1))
    assert_within_bound(relu, np.maximum(pre, 0), pre_bound, "hidden ReLU")
    # The second layer from fastnet's hidden values, whose own errors the bound above covers.
    assert_within_bound(y, relu @ w2.T + b2,
                        (hidden + 2) * eps * (relu @ np.abs(w2).T + np.abs(b2)), "output")
    mask = relu > 0
    assert_within_bound(grads["b.weight"], g64.T @ relu, (n + 2) * eps * (np.abs(g64).T @ relu),
                        "second weight gradient")
    upstream = (g64 @ w2) * mask
    upstream_magnitude = (np.abs(g64) @ np.abs(w2)) * mask
    upstream_error = (n_out + 2) * eps * upstream_magnitude
    # The first layer's gradients are sums of the rounded upstream gradient.
    assert_within_bound(grads["a.weight"], upstream.T @ x64,
                        (n + 2) * eps * (upstream_magnitude.T @ np.abs(x64)) +
                        upstream_error.T @ np.abs(x64), "first weight gradient")
    assert_within_bound(dx, upstream @ w1,
                        (hidden + 2) * eps * (upstream_magnitude @ np.abs(w1)) +
                        upstream_error @ np.abs(w1), "input gradient")
    if bias:
        assert_within_bound(grads["b.bias"], g64.sum(axis=0),
                            (n + 2) * eps * np.abs(g64).sum(axis=0), "second bias gradient")
        assert_within_bound(grads["a.bias"], upstream.sum(axis=0),
                            (n + 2) * eps * upstream_magnitude.sum(axis=0) +
                            upstream_error.sum(axis=0), "first bias gradient")


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_backward_ignores_stale_gradient_buffers(dtype, threads):
    # A backward of a smaller batch after a larger one must not read the larger batch's rows.
    rng = np.random.default_rng(9)
    model, state = linear_model(4, 3, True, dtype, rng)
    w64 = state["0.weight"].astype(np.float64)
    big = rng.standard_normal((40, 4)).astype(dtype)
    model.forward(big)
    model.backward(rng.standard_normal((40, 3)).astype(dtype) * 1e3)
    x = rng.standard_normal((5, 4)).astype(dtype)
    dy = rng.standard_normal((5, 3)).astype(dtype)
    model.zero_grad()
    model.forward(x)
    dx = model.backward(dy)
    tol = 64 * eps_of(dtype)
    np.testing.assert_allclose(dx, dy.astype(np.float64) @ w64, rtol=tol, atol=tol)
    grads = {p.name: p.grad for p in model.parameters()}
    np.testing.assert_allclose(grads["0.weight"], dy.astype(np.float64).T @ x, rtol=tol,
                               atol=tol)
    np.testing.assert_allclose(grads["0.bias"], dy.astype(np.float64).sum(0), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{f}" for n, f in SHAPES])
def test_activation_backward(dtype, name, shape, threads):
    check_activation_backward(name, shape, dtype)


@RANDOM_SIZES
@given(st.data())
def test_activations_at_random_sizes(data):
    # Widths and batches drawn at random reach the elementwise loops' tails and their split
    # between 1 to 3 threads; the same checks as the fixed shapes.
    name = data.draw(st.sampled_from(sorted(ACTIVATIONS)), label="name")
    shape = (data.draw(sizes(300), label="n"), data.draw(sizes(3000), label="features"))
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    fn.set_num_threads(data.draw(st.sampled_from([1, 2, 3]), label="threads"))
    check_activation_forward(name, shape, dtype)
    check_activation_backward(name, shape, dtype)


def check_activation_backward(name, shape, dtype):
    make, _, derivative = ACTIVATIONS[name]
    rng = np.random.default_rng(shape[0] * 3 + shape[1])
    x = activation_input(shape, dtype, rng)
    dy = rng.standard_normal(shape).astype(dtype)
    model = activation_model(make(), shape[1], dtype)
    model.forward(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dx = model.backward(dy)
    assert dx.dtype == dtype and dx.shape == shape
    if name in ("sigmoid", "tanh"):
        # The kernel uses its own rounded output y: f'(x) = y (1 - y) or 1 - y^2.
        y = model(x).astype(np.float64)
        d = y * (1 - y) if name == "sigmoid" else 1 - y * y
        expected = dy.astype(np.float64) * d
        bound = 8 * eps_of(dtype) * np.abs(dy.astype(np.float64)) + np.finfo(dtype).tiny
        assert_within_bound(dx, expected, bound, f"{name} derivative from its output")
        # And against the exact derivative, to the accuracy of the rounded output.
        exact = dy.astype(np.float64) * derivative(x.astype(np.float64))
        assert_within_bound(dx, exact, 16 * eps_of(dtype) * np.abs(dy.astype(np.float64)),
                            f"{name} exact derivative")
    else:
        # Piecewise-linear: exact products (x == 0 takes the left branch, as in PyTorch).
        # The slope is rounded to the dtype first, then multiplied in the dtype (one rounding).
        expected = derivative(x.astype(np.float64)).astype(dtype) * dy
        np.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_family_derivative_at_zero(dtype):
    x = np.array([[0.0, -0.0, 1.0, -1.0]], dtype=dtype)
    dy = np.array([[2.0, 3.0, 5.0, 7.0]], dtype=dtype)
    relu = activation_model(fn.ReLU(), 4, dtype)
    relu.forward(x)
    np.testing.assert_array_equal(relu.backward(dy), [[0.0, 0.0, 5.0, 0.0]])
    leaky = activation_model(fn.LeakyReLU(0.5), 4, dtype)
    leaky.forward(x)
    np.testing.assert_array_equal(leaky.backward(dy), [[1.0, 1.5, 5.0, 3.5]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_needs_training_forward_of_same_batch(dtype):
    model = fn.Sequential(fn.Linear(3, 2), dtype=np.dtype(dtype).name)
    x = np.ones((4, 3), dtype=dtype)
    with pytest.raises(RuntimeError):
        model.backward(np.ones((4, 2), dtype=dtype))
    model(x)  # inference does not keep activations for backward
    with pytest.raises(RuntimeError):
        model.backward(np.ones((4, 2), dtype=dtype))
    model.forward(x)
    with pytest.raises(RuntimeError):
        model.backward(np.ones((3, 2), dtype=dtype))
    with pytest.raises(ValueError):
        model.backward(np.ones((4, 3), dtype=dtype))
    with pytest.raises(ValueError):
        model.backward(np.array([[np.nan, 0.0]] * 4, dtype=dtype))
    assert model.backward(np.ones((4, 2), dtype=dtype)).shape == (4, 3)
