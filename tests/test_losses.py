"""The losses (fastnet/losses.py, csrc/softmax_xent.c, distillation.c, regression_loss.c,
bce_logits.c, loss.c): values and gradients against float64 numpy references written from
PyTorch's definitions, against torch.nn.functional when torch is installed, against central
differences; extreme inputs; training through train_step; argument errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnet as fn
from fastnet import _core
from gradcheck import assert_gradient_close, central_difference

DTYPES = [np.float32, np.float64]
LABEL_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]
# (5, 1030): rows the softmax cross-entropy takes one at a time, in two pieces
SHAPES = [(1, 1), (1, 5), (3, 1), (7, 3), (13, 10), (33, 17), (5, 1030)]

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the comparisons with torch are skipped
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def eps_of(dtype):
    return float(np.finfo(dtype).eps)


# ------------------------------------------------------------------------------ numpy references
# Each returns (loss, d loss / d outputs) in float64.


def log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def ref_cross_entropy(z, labels=None, soft=None, weight=None, smoothing=0.0):
    """PyTorch's cross_entropy, as its implementation writes it: with labels, (1 - s) times the
    weighted NLL plus s / C times the weighted sum of -log p over the classes, both divided by
    the summed weights of the labels; with soft targets, the weighted sum of -q log p over
    classes divided by N."""
    z = np.asarray(z, np.float64)
    n, c = z.shape
    logp = log_softmax(z)
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    if soft is None:
        labels = np.asarray(labels).astype(np.int64)
        rows = np.arange(n)
        norm = w[labels].sum()
        nll = -(w[labels] * logp[rows, labels]).sum() / norm
        smooth = -(logp * w).sum() / norm
        loss = (1 - smoothing) * nll + smoothing / c * smooth
        q = np.full((n, c), smoothing / c)
        q[rows, labels] += 1 - smoothing
    else:
        q = (1 - smoothing) * np.asarray(soft, np.float64) + smoothing / c
        norm = n
        loss = -(w * q * logp).sum() / n
    a = w * q
    grad = (a.sum(axis=1, keepdims=True) * np.exp(logp) - a) / norm
    return loss, grad


def ref_distillation(z, teacher, labels, temperature, alpha):
    """alpha T^2 KL(softmax(v/T) || softmax(z/T)) (batch mean) + (1 - alpha) CE(z, labels)."""
    z = np.asarray(z, np.float64)
    v = np.asarray(teacher, np.float64)
    n = z.shape[0]
    t = temperature
    log_q, log_p = log_softmax(z / t), log_softmax(v / t)
    kl = (np.exp(log_p) * (log_p - log_q)).sum() / n
    ce, ce_grad = ref_cross_entropy(z, labels)
    loss = alpha * t * t * kl + (1 - alpha) * ce
    grad = alpha * t * (np.exp(log_q) - np.exp(log_p)) / n + (1 - alpha) * ce_grad
    return loss, grad


def ref_mse(x, t):
    d = np.asarray(x, np.float64) - np.asarray(t, np.float64)
    return (d * d).mean(), 2 * d / d.size


def ref_l1(x, t):
    d = np.asarray(x, np.float64) - np.asarray(t, np.float64)
    return np.abs(d).mean(), np.sign(d) / d.size


def ref_huber(x, t, delta=1.0):
    d = np.asarray(x, np.float64) - np.asarray(t, np.float64)
    a = np.abs(d)
    loss = np.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    return loss.mean(), np.clip(d, -delta, delta) / d.size


def softplus(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def sigmoid(x):
    return np.exp(-softplus(-x))


def ref_bce(x, t, pos_weight=None):
    x = np.asarray(x, np.float64)
    t = np.asarray(t, np.float64)
    w = 1.0 if pos_weight is None else np.asarray(pos_weight, np.float64)
    loss = w * t * softplus(-x) + (1 - t) * softplus(x)
    grad = -w * t * sigmoid(-x) + (1 - t) * sigmoid(x)
    return loss.mean(), grad / x.size


# ------------------------------------------------------------------------------ the cases
# name -> (loss, targets(rng, outputs) as the loss takes them, reference(outputs, targets))


def random_labels(rng, n, c):
    labels = rng.integers(0, c, size=n)
    labels[0] = c - 1  # the last class is always read
    return labels


def soft_targets(rng, n, c):
    p = rng.random((n, c)) ** 3
    p[0, 0] = 0.0  # a zero probability
    p += 1e-12
    return p / p.sum(axis=1, keepdims=True)


def class_weights(c, seed=0):
    w = np.random.default_rng(seed).uniform(0.2, 3.0, c)
    if c > 2:
        w[1] = 0.0  # a class that does not count
    return w


def weighted_labels(rng, n, c):
    labels = random_labels(rng, n, c)
    if c > 2:
        labels[labels == 1] = 0  # at least one label of nonzero weight per batch
    return labels


CASES = {
    "ce": (lambda c: fn.CrossEntropyLoss(), random_labels,
           lambda z, y, c: ref_cross_entropy(z, y)),
    "ce_smoothing": (lambda c: fn.CrossEntropyLoss(label_smoothing=0.2), random_labels,
                     lambda z, y, c: ref_cross_entropy(z, y, smoothing=0.2)),
    "ce_weight": (lambda c: fn.CrossEntropyLoss(weight=class_weights(c)), weighted_labels,
                  lambda z, y, c: ref_cross_entropy(z, y, weight=class_weights(c))),
    "ce_weight_smoothing": (
        lambda c: fn.CrossEntropyLoss(weight=class_weights(c), label_smoothing=0.1),
        weighted_labels,
        lambda z, y, c: ref_cross_entropy(z, y, weight=class_weights(c), smoothing=0.1)),
    "ce_soft": (lambda c: fn.CrossEntropyLoss(), soft_targets,
                lambda z, t, c: ref_cross_entropy(z, soft=t)),
    "ce_soft_weight_smoothing": (
        lambda c: fn.CrossEntropyLoss(weight=class_weights(c), label_smoothing=0.3),
        soft_targets,
        lambda z, t, c: ref_cross_entropy(z, soft=t, weight=class_weights(c), smoothing=0.3)),
    "distillation": (
        lambda c: fn.DistillationLoss(temperature=3.0, alpha=0.7),
        lambda rng, n, c: (random_labels(rng, n, c), rng.standard_normal((n, c)) * 3),
        lambda z, yv, c: ref_distillation(z, yv[1], yv[0], 3.0, 0.7)),
    "mse": (lambda c: fn.MSELoss(), lambda rng, n, c: rng.standard_normal((n, c)),
            lambda x, t, c: ref_mse(x, t)),
    "l1": (lambda c: fn.L1Loss(), lambda rng, n, c: rng.standard_normal((n, c)),
           lambda x, t, c: ref_l1(x, t)),
    "huber": (lambda c: fn.HuberLoss(delta=0.8), lambda rng, n, c: rng.standard_normal((n, c)),
              lambda x, t, c: ref_huber(x, t, 0.8)),
    "bce": (lambda c: fn.BCEWithLogitsLoss(),
            lambda rng, n, c: (rng.random((n, c)) < 0.4).astype(np.float64),
            lambda x, t, c: ref_bce(x, t)),
    "bce_soft_pos_weight": (
        lambda c: fn.BCEWithLogitsLoss(pos_weight=np.linspace(0.5, 3.0, c)),
        lambda rng, n, c: rng.random((n, c)),
        lambda x, t, c: ref_bce(x, t, np.linspace(0.5, 3.0, c))),
}

LABEL_CASES = ["ce", "ce_smoothing", "ce_weight", "ce_weight_smoothing", "distillation"]


def cast_targets(targets, dtype):
    """Float targets (and teacher logits) in the outputs' dtype; labels unchanged."""
    if isinstance(targets, tuple):
        return targets[0], targets[1].astype(dtype)
    return targets.astype(dtype) if targets.dtype.kind == "f" else targets


def make_case(name, shape, dtype, seed=0, scale=3.0):
    n, c = shape
    rng = np.random.default_rng([seed, n, c])
    make_loss, make_targets, reference = CASES[name]
    outputs = (rng.standard_normal(shape) * scale).astype(dtype)
    targets = cast_targets(make_targets(rng, n, c), dtype)
    return make_loss(c), outputs, targets, (lambda z, t: reference(z, t, c))


# ------------------------------------------------------------------------------ values, gradients


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{c}" for n, c in SHAPES])
@pytest.mark.parametrize("name", list(CASES))
def test_value_and_gradient_match_the_reference(name, shape, dtype, threads):
    loss, outputs, targets, reference = make_case(name, shape, dtype)
    value, grad = loss.forward_backward(outputs, targets)
    ref_value, ref_grad = reference(outputs, targets)
    assert isinstance(value, float)
    assert grad.dtype == dtype and grad.shape == outputs.shape
    eps = eps_of(dtype)
    size = outputs.shape[1] + 10
    assert value == pytest.approx(ref_value, rel=16 * size * eps, abs=16 * size * eps)
    scale = np.abs(ref_grad).max() + 1 / outputs.size
    np.testing.assert_allclose(grad, ref_grad, rtol=64 * size * eps, atol=64 * size * eps * scale)
    # The value alone, and evaluate, run the same kernel.
    assert loss(outputs, targets) == value
    assert loss.evaluate(outputs, targets)[0] == value


@settings(max_examples=300)
@given(st.sampled_from(sorted(CASES)), st.one_of(st.integers(1, 20), st.integers(21, 600)),
       st.one_of(st.integers(1, 40), st.integers(41, 3000)), st.sampled_from(DTYPES),
       st.sampled_from([1, 2, 3]), st.sampled_from([0.1, 3.0, 30.0]))
def test_value_and_gradient_at_random_sizes(name, n, c, dtype, thread_count, scale):
    # Batches and class counts drawn at random reach the losses' chunks of rows and pieces of
    # long rows, and their split of the batch between 1 to 3 threads; the logits' scale from
    # near-uniform to saturated. The same bounds as the fixed shapes above.
    fn.set_num_threads(thread_count)
    loss, outputs, targets, reference = make_case(name, (n, c), dtype, scale=scale)
    value, grad = loss.forward_backward(outputs, targets)
    ref_value, ref_grad = reference(outputs, targets)
    eps = eps_of(dtype)
    size = c + 10
    assert value == pytest.approx(ref_value, rel=16 * size * eps, abs=16 * size * eps)
    grad_scale = np.abs(ref_grad).max() + 1 / outputs.size
    np.testing.assert_allclose(grad, ref_grad, rtol=64 * size * eps,
                               atol=64 * size * eps * grad_scale)


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_matches_central_differences(name):
    shape = (6, 5)
    loss, outputs, targets, _ = make_case(name, shape, np.float64, seed=1)
    if name in ("l1", "huber"):  # keep |x - t| away from the kinks at 0 and delta
        d = outputs - targets
        d = np.where(np.abs(d) < 0.1, 0.3 * np.sign(d + 1e-9), d)
        d = np.where(np.abs(np.abs(d) - 0.8) < 0.05, 1.2 * np.sign(d), d)
        outputs = np.ascontiguousarray(targets + d)
    _, grad = loss.forward_backward(outputs, targets)
    numeric = central_difference(lambda: loss(outputs, targets), outputs)
    assert_gradient_close(grad, numeric, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CASES))
def test_many_threads_split_the_batch_the_same(name, dtype):
    """A batch large enough for several threads' parts gives the reference result with any
    thread count, and the same result every run."""
    loss, outputs, targets, reference = make_case(name, (700, 120), dtype, seed=2)
    ref_value, ref_grad = reference(outputs, targets)
    results = {}
    for threads in (1, 2, 3):
        fn.set_num_threads(threads)
        results[threads] = loss.forward_backward(outputs, targets)
        again = loss.forward_backward(outputs, targets)
        assert again[0] == results[threads][0]
        np.testing.assert_array_equal(again[1], results[threads][1])
    eps = eps_of(dtype)
    for value, grad in results.values():
        assert value == pytest.approx(ref_value, rel=2000 * eps)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e3 * eps,
                                   atol=1e3 * eps * np.abs(ref_grad).max())
        # Rows are independent: the gradient does not depend on the split at all.
        np.testing.assert_array_equal(grad, results[1][1])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("name", LABEL_CASES)
def test_every_integer_label_dtype(name, label_dtype, dtype):
    loss, outputs, targets, reference = make_case(name, (11, 7), dtype, seed=3)
    expected = loss.forward_backward(outputs, targets)
    if isinstance(targets, tuple):
        converted = (targets[0].astype(label_dtype), targets[1])
    else:
        converted = targets.astype(label_dtype)
    value, grad = loss.forward_backward(outputs, converted)
    assert value == expected[0]
    np.testing.assert_array_equal(grad, expected[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CASES))
def test_large_outputs_stay_finite(name, dtype):
    """Outputs of +-1e4 (and targets of the same size for the regression losses)."""
    n, c = 6, 4
    rng = np.random.default_rng(4)
    loss, _, targets, reference = make_case(name, (n, c), dtype, seed=4)
    outputs = (rng.choice([-1.0, 1.0], size=(n, c)) * 1e4).astype(dtype)
    outputs[0] = 1e4  # a row of equal maxima
    if name == "distillation":
        targets = (targets[0], (rng.choice([-1.0, 1.0], size=(n, c)) * 1e4).astype(dtype))
    value, grad = loss.forward_backward(outputs, targets)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    ref_value, ref_grad = reference(outputs, targets)
    assert value == pytest.approx(ref_value, rel=64 * eps_of(dtype))
    scale = np.abs(ref_grad).max()
    np.testing.assert_allclose(grad, ref_grad, rtol=64 * eps_of(dtype),
                               atol=64 * eps_of(dtype) * scale)


# ------------------------------------------------------------------------------ cross-entropy


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_smoothing_and_weights_reduce_to_the_plain_loss(dtype):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((9, 6)).astype(dtype)
    labels = rng.integers(0, 6, 9)
    plain = fn.CrossEntropyLoss().forward_backward(logits, labels)
    for loss in (fn.CrossEntropyLoss(weight=np.full(6, 2.5)),
                 fn.CrossEntropyLoss(label_smoothing=0.0, weight=np.ones(6))):
        value, grad = loss.forward_backward(logits, labels)
        assert value == pytest.approx(plain[0], rel=8 * eps_of(dtype))
        np.testing.assert_allclose(grad, plain[1], rtol=8 * eps_of(dtype),
                                   atol=8 * eps_of(dtype))
    # One-hot soft targets are the labels.
    onehot = np.eye(6, dtype=dtype)[labels]
    value, grad = fn.CrossEntropyLoss().forward_backward(logits, onehot)
    assert value == pytest.approx(plain[0], rel=8 * eps_of(dtype))
    np.testing.assert_allclose(grad, plain[1], rtol=8 * eps_of(dtype), atol=8 * eps_of(dtype))


def test_full_smoothing_is_the_uniform_target():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((5, 4))
    value = fn.CrossEntropyLoss(label_smoothing=1.0)(logits, rng.integers(0, 4, 5))
    assert value == pytest.approx(-log_softmax(logits).mean(), rel=1e-14)


def test_weighted_mean_divides_by_the_weights_of_the_labels():
    logits = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    labels = np.array([0, 1, 2, 1])
    weight = np.array([1.0, 3.0, 0.0])
    per_row = -log_softmax(logits)[np.arange(4), labels]
    expected = (1 * per_row[0] + 3 * per_row[1] + 0 * per_row[2] + 3 * per_row[3]) / 7
    assert fn.CrossEntropyLoss(weight=weight)(logits, labels) == pytest.approx(expected, rel=1e-14)
    # Soft targets divide by N instead, as PyTorch does.
    soft = np.eye(3)[labels]
    assert fn.CrossEntropyLoss(weight=weight)(logits, soft) == pytest.approx(
        expected * 7 / 4, rel=1e-14)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_evaluate_counts_argmax_hits(dtype):
    rng = np.random.default_rng(7)
    logits = rng.integers(-2, 3, size=(200, 4)).astype(dtype)  # many ties: the first maximum
    labels = rng.integers(0, 4, 200)
    expected = int(np.sum(np.argmax(logits, axis=1) == labels))
    for loss in (fn.CrossEntropyLoss(), fn.CrossEntropyLoss(weight=[1, 2, 3, 4.0],
                                                            label_smoothing=0.1)):
        value, correct = loss.evaluate(logits, labels)
        assert correct == expected and value == loss(logits, labels)
    soft = soft_targets(rng, 200, 4).astype(dtype)
    _, correct = fn.CrossEntropyLoss().evaluate(logits, soft)
    assert correct == int(np.sum(np.argmax(logits, axis=1) == np.argmax(soft, axis=1)))
    teacher = rng.standard_normal((200, 4)).astype(dtype)
    distillation = fn.DistillationLoss()
    assert distillation.evaluate(logits, (labels, teacher))[1] == expected
    # Labels alone: the plain cross-entropy (validation data has no teacher).
    assert distillation.evaluate(logits, labels) == fn.CrossEntropyLoss().evaluate(logits, labels)
    assert fn.MSELoss().evaluate(logits, soft) == (fn.MSELoss()(logits, soft), None)


# ------------------------------------------------------------------------------ distillation


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_distillation_limits_and_temperature_scaling(dtype):
    rng = np.random.default_rng(8)
    n, c = 10, 5
    student = (rng.standard_normal((n, c)) * 2).astype(dtype)
    teacher = (rng.standard_normal((n, c)) * 2).astype(dtype)
    labels = rng.integers(0, c, n)
    tol = 16 * eps_of(dtype)
    # alpha = 0 is the cross-entropy with the labels: the same value, bit for bit.
    ce_value, ce_grad = fn.CrossEntropyLoss().forward_backward(student, labels)
    value, grad = fn.DistillationLoss(temperature=5.0, alpha=0.0).forward_backward(
        student, (labels, teacher))
    assert value == ce_value
    np.testing.assert_allclose(grad, ce_grad, rtol=tol, atol=tol)
    # alpha = 1 is T^2 times the batch-mean KL divergence, whatever the labels.
    log_q_ref = {}
    for t in (0.5, 1.0, 4.0, 20.0):
        log_p = log_softmax(teacher.astype(np.float64) / t)
        log_q = log_softmax(student.astype(np.float64) / t)
        log_q_ref[t] = log_q
        kl = (np.exp(log_p) * (log_p - log_q)).sum() / n
        loss = fn.DistillationLoss(temperature=t, alpha=1.0)
        value, grad = loss.forward_backward(student, (labels, teacher))
        assert value == pytest.approx(t * t * kl, rel=64 * eps_of(dtype) * t, abs=tol)
        assert loss(student, ((labels + 1) % c, teacher)) == value
        # The gradient of T^2 KL is T (Q - P) / n: the T^2 keeps it of order 1 / T * T^2 / T^2.
        np.testing.assert_allclose(grad, t * (np.exp(log_q) - np.exp(log_p)) / n,
                                   rtol=64 * eps_of(dtype), atol=64 * eps_of(dtype) * t / n)
    # The student that equals its teacher has nothing left to learn from it.
    value, grad = fn.DistillationLoss(temperature=2.0, alpha=1.0).forward_backward(
        teacher, (labels, teacher))
    assert value == pytest.approx(0.0, abs=tol)
    np.testing.assert_allclose(grad, 0.0, atol=tol)
    # The mix is linear in alpha.
    at = {a: fn.DistillationLoss(temperature=3.0, alpha=a)(student, (labels, teacher))
          for a in (0.0, 0.25, 1.0)}
    assert at[0.25] == pytest.approx(0.75 * at[0.0] + 0.25 * at[1.0], rel=8 * tol)


# ------------------------------------------------------------------------------ regression, BCE


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_regression_losses_at_the_kinks(dtype):
    x = np.array([[0.0, 1.0, -1.0, 2.5, 0.5]], dtype)
    t = np.array([[0.0, 0.0, 0.0, 0.0, 0.0]], dtype)
    # L1's gradient at x == t is 0, as PyTorch's sign().
    assert fn.L1Loss().forward_backward(x, t)[1][0, 0] == 0
    # Huber at |d| == delta is on the linear side, and both sides agree there.
    value, grad = fn.HuberLoss(delta=1.0).forward_backward(x, t)
    np.testing.assert_allclose(grad[0] * 5, [0.0, 1.0, -1.0, 1.0, 0.5], rtol=eps_of(dtype))
    assert value == pytest.approx((0 + 0.5 + 0.5 + 2.0 + 0.125) / 5, rel=eps_of(dtype))
    # A large delta is MSE / 2, a small one delta * L1 (up to delta^2 / 2).
    far, close = np.array([[3.0, -2.0]], dtype), np.zeros((1, 2), dtype)
    assert fn.HuberLoss(delta=10.0)(far, close) == pytest.approx(fn.MSELoss()(far, close) / 2)
    assert fn.HuberLoss(delta=1e-3)(far, close) == pytest.approx(
        1e-3 * fn.L1Loss()(far, close), rel=1e-3)


def test_float_targets_of_one_output_may_be_one_dimensional():
    x = np.array([[0.5], [2.0], [-1.0]])
    t = np.array([1.0, 1.5, -3.0])
    for loss in (fn.MSELoss(), fn.L1Loss(), fn.HuberLoss(), fn.BCEWithLogitsLoss()):
        value, grad = loss.forward_backward(x, t)
        assert grad.shape == (3, 1)
        assert value == loss(x, t.reshape(3, 1))
    # Integer and boolean targets are read as floats.
    labels = np.array([1, 0, 1])
    assert fn.BCEWithLogitsLoss()(x, labels) == fn.BCEWithLogitsLoss()(x, labels.astype(float))
    assert fn.BCEWithLogitsLoss()(x, labels == 1) == fn.BCEWithLogitsLoss()(x, labels * 1.0)


def test_bce_pos_weight_number_applies_to_every_column():
    rng = np.random.default_rng(9)
    x, t = rng.standard_normal((4, 3)), (rng.random((4, 3)) < 0.5) * 1.0
    assert fn.BCEWithLogitsLoss(pos_weight=2.5)(x, t) == fn.BCEWithLogitsLoss(
        pos_weight=[2.5] * 3)(x, t)
    assert fn.BCEWithLogitsLoss(pos_weight=[1.0] * 3)(x, t) == fn.BCEWithLogitsLoss()(x, t)


def test_bce_is_precise_where_the_sigmoid_saturates():
    # -log sigmoid(30) = log1p(e^-30) ~ 9.4e-14: the form 1 - sigmoid(x) would give 0.
    value, grad = fn.BCEWithLogitsLoss().forward_backward(np.array([[30.0]]), np.array([[1.0]]))
    assert value == pytest.approx(np.log1p(np.exp(-30.0)), rel=1e-14)
    assert grad[0, 0] == pytest.approx(-np.exp(-30.0) / (1 + np.exp(-30.0)), rel=1e-14)


# ------------------------------------------------------------------------------ against torch


def torch_loss_and_grad(fn_torch, outputs, *args):
    z = torch.tensor(outputs, dtype=torch.float64, requires_grad=True)
    value = fn_torch(z, *args)
    value.backward()
    return value.item(), z.grad.numpy()


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cross_entropy_matches_torch(dtype):
    rng = np.random.default_rng(10)
    n, c = 12, 7
    logits = (rng.standard_normal((n, c)) * 3).astype(dtype)
    labels = rng.integers(0, c, n)
    soft = soft_targets(rng, n, c)
    weight = class_weights(c, seed=3)
    labels[labels == 1] = 2
    tol = 64 * eps_of(dtype)
    for w in (None, weight):
        for s in (0.0, 0.15, 1.0):
            tw = None if w is None else torch.tensor(w)
            for target, torch_target in ((labels, torch.tensor(labels)),
                                         (soft.astype(dtype), torch.tensor(soft))):
                expected = torch_loss_and_grad(
                    lambda z: F.cross_entropy(z, torch_target, weight=tw, label_smoothing=s),
                    logits.astype(np.float64))
                value, grad = fn.CrossEntropyLoss(weight=w, label_smoothing=s).forward_backward(
                    logits, target)
                assert value == pytest.approx(expected[0], rel=tol), (w, s, target.dtype)
                np.testing.assert_allclose(grad, expected[1], rtol=tol, atol=tol / n)


@needs_torch
def test_distillation_matches_torch():
    rng = np.random.default_rng(11)
    n, c, t, a = 9, 6, 4.0, 0.9
    student = rng.standard_normal((n, c)) * 3
    teacher = rng.standard_normal((n, c)) * 3
    labels = rng.integers(0, c, n)

    def hinton(z):
        soft = F.kl_div(F.log_softmax(z / t, dim=1), F.softmax(torch.tensor(teacher) / t, dim=1),
                        reduction="batchmean")
        return a * t * t * soft + (1 - a) * F.cross_entropy(z, torch.tensor(labels))

    expected = torch_loss_and_grad(hinton, student)
    value, grad = fn.DistillationLoss(temperature=t, alpha=a).forward_backward(
        student, (labels, teacher))
    assert value == pytest.approx(expected[0], rel=1e-13)
    np.testing.assert_allclose(grad, expected[1], rtol=1e-12, atol=1e-15)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_regression_and_bce_match_torch(dtype):
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((8, 5)) * 4).astype(dtype)
    t = rng.standard_normal((8, 5)).astype(dtype)
    binary = (rng.random((8, 5)) < 0.3).astype(dtype)
    pos_weight = np.array([0.5, 1.0, 2.0, 4.0, 0.0])
    tt, tb = torch.tensor(t, dtype=torch.float64), torch.tensor(binary, dtype=torch.float64)
    cases = [
        (fn.MSELoss(), t, lambda z: F.mse_loss(z, tt)),
        (fn.L1Loss(), t, lambda z: F.l1_loss(z, tt)),
        (fn.HuberLoss(), t, lambda z: F.huber_loss(z, tt)),
        (fn.HuberLoss(delta=2.5), t, lambda z: F.huber_loss(z, tt, delta=2.5)),
        (fn.BCEWithLogitsLoss(), binary, lambda z: F.binary_cross_entropy_with_logits(z, tb)),
        (fn.BCEWithLogitsLoss(pos_weight=pos_weight), binary,
         lambda z: F.binary_cross_entropy_with_logits(z, tb, pos_weight=torch.tensor(pos_weight))),
        (fn.BCEWithLogitsLoss(pos_weight=pos_weight), np.abs(t) % 1,
         lambda z: F.binary_cross_entropy_with_logits(
             z, torch.tensor(np.abs(t) % 1, dtype=torch.float64),
             pos_weight=torch.tensor(pos_weight))),
    ]
    tol = 64 * eps_of(dtype)
    for loss, target, torch_fn in cases:
        expected = torch_loss_and_grad(torch_fn, x.astype(np.float64))
        value, grad = loss.forward_backward(x, target)
        assert value == pytest.approx(expected[0], rel=tol), loss
        np.testing.assert_allclose(grad, expected[1], rtol=tol, atol=tol / x.size,
                                   err_msg=repr(loss))


# ------------------------------------------------------------------------------ training


def small_model(dtype, outputs, seed=0):
    return fn.Sequential(fn.Linear(6, 16), fn.Tanh(), fn.Linear(16, outputs), dtype=dtype,
                         seed=seed)


def training_case(name, rng, n, c):
    """(loss, targets) of a learnable task on inputs x (n, 6)."""
    x = rng.standard_normal((n, 6))
    if name in ("mse", "l1", "huber"):
        return x, (x[:, :c] * 0.5 + 0.2).astype(np.float64)
    if name.startswith("bce"):
        return x, (x[:, :c] > 0).astype(np.float64)
    labels = np.argmax(x[:, :c], axis=1)
    if name in ("ce_soft", "ce_soft_weight_smoothing"):
        return x, np.eye(c)[labels] * 0.8 + 0.2 / c
    if name == "distillation":
        return x, (labels, x[:, :c] * 3.0)
    return x, labels


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CASES))
def test_train_step_lowers_each_loss(name, dtype):
    n, c = 32, 4
    rng = np.random.default_rng(13)
    loss = CASES[name][0](c)
    x, targets = training_case(name, rng, n, c)
    x = x.astype(dtype)
    targets = cast_targets(targets, dtype)
    model = small_model(dtype, c)
    opt = fn.optim.Adam(model.parameters(), lr=0.02)
    before = loss(model(x), targets)
    losses = [model.train_step(x, targets, loss, opt) for _ in range(25)]
    # The step's loss is the loss of the model before its update, computed by the same kernel.
    assert losses[0] == pytest.approx(before, rel=64 * eps_of(dtype))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    after = loss(model(x), targets)
    assert after < losses[-1] * 1.05
    if name in LABEL_CASES:
        labels = targets[0] if isinstance(targets, tuple) else targets
        outputs = model(x)
        model.train_step(x, targets, loss, opt)
        assert model.last_train_correct == int(np.sum(outputs.argmax(axis=1) == labels))


def test_train_step_with_one_output_and_one_dimensional_targets():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    for loss, y in ((fn.MSELoss(), x[:, 0] - x[:, 1]),
                    (fn.BCEWithLogitsLoss(pos_weight=2.0), (x[:, 0] > x[:, 1]) * 1)):
        model = small_model(np.float32, 1)
        opt = fn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses = [model.train_step(x, y, loss, opt) for _ in range(20)]
        assert losses[-1] < 0.7 * losses[0]


# ------------------------------------------------------------------------------ errors


def params_of(model):
    return [p.data.copy() for p in model.parameters()]


def test_constructor_arguments_are_checked():
    for bad in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="label_smoothing"):
            fn.CrossEntropyLoss(label_smoothing=bad)
    with pytest.raises(TypeError, match="label_smoothing"):
        fn.CrossEntropyLoss(label_smoothing=True)
    with pytest.raises(TypeError, match="label_smoothing"):
        fn.CrossEntropyLoss(label_smoothing="0.1")
    for bad in ([1.0, -1.0], [1.0, float("nan")], [[1.0, 2.0]], [], [0.0, 0.0]):
        with pytest.raises(ValueError, match="weight"):
            fn.CrossEntropyLoss(weight=bad)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            fn.DistillationLoss(temperature=bad)
    for bad in (-0.01, 1.01):
        with pytest.raises(ValueError, match="alpha"):
            fn.DistillationLoss(alpha=bad)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="delta"):
            fn.HuberLoss(delta=bad)
    for bad in (-1.0, [1.0, -2.0], [float("nan")]):
        with pytest.raises(ValueError, match="pos_weight"):
            fn.BCEWithLogitsLoss(pos_weight=bad)
    assert repr(fn.CrossEntropyLoss()) == "CrossEntropyLoss()"
    assert repr(fn.CrossEntropyLoss(weight=[1, 2], label_smoothing=0.1)) == (
        "CrossEntropyLoss(weight=[1.0, 2.0], label_smoothing=0.1)")
    assert repr(fn.DistillationLoss()) == "DistillationLoss(temperature=4.0, alpha=0.9)"
    assert repr(fn.HuberLoss()) == "HuberLoss(delta=1.0)"
    assert repr(fn.BCEWithLogitsLoss(pos_weight=3)) == "BCEWithLogitsLoss(pos_weight=[3.0])"


def test_targets_are_checked():
    logits = np.zeros((4, 3))
    labels = np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match="weight has 2 entries for 3 classes"):
        fn.CrossEntropyLoss(weight=[1.0, 2.0])(logits, labels)
    with pytest.raises(ValueError, match="every label of the batch has class weight 0"):
        fn.CrossEntropyLoss(weight=[0.0, 0.0, 1.0])(logits, np.array([0, 1, 1, 0]))
    with pytest.raises(ValueError, match="out of range"):
        fn.CrossEntropyLoss(label_smoothing=0.1)(logits, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="out of range"):
        fn.DistillationLoss()(logits, (np.array([0, -1, 2, 0]), logits))
    soft = np.full((4, 3), 1 / 3)
    soft[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"soft targets contain NaN or Inf \(sample 2, class 1\)"):
        fn.CrossEntropyLoss()(logits, soft)
    with pytest.raises(ValueError, match="shape"):
        fn.CrossEntropyLoss()(logits, np.full((4, 4), 0.25))
    with pytest.raises(TypeError, match="integer"):
        fn.CrossEntropyLoss()(logits, np.zeros(4))
    teacher = np.zeros((4, 3))
    teacher[3, 0] = np.inf
    with pytest.raises(ValueError, match=r"teacher logits contain NaN or Inf \(sample 3"):
        fn.DistillationLoss()(logits, (labels, teacher))
    with pytest.raises(TypeError, match=r"\(labels, teacher_logits\)"):
        fn.DistillationLoss()(logits, labels)
    with pytest.raises(ValueError, match="shape"):
        fn.DistillationLoss()(logits, (labels, np.zeros((4, 2))))
    values = np.zeros((4, 3))
    values[1, 2] = np.nan
    for loss in (fn.MSELoss(), fn.L1Loss(), fn.HuberLoss(), fn.BCEWithLogitsLoss()):
        name = type(loss).__name__
        with pytest.raises(ValueError, match=rf"{name}: the targets contain NaN or Inf "
                                             r"\(sample 1, column 2\)"):
            loss(logits, values)
        with pytest.raises(ValueError, match="shape"):
            loss(logits, np.zeros((4, 2)))
        with pytest.raises(ValueError, match="shape"):
            loss(logits, labels)  # labels given to a loss of float targets
        with pytest.raises(ValueError, match=r"expects outputs \(N, C\)"):
            loss(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="pos_weight has 2 entries for 3 classes"):
        fn.BCEWithLogitsLoss(pos_weight=[1.0, 2.0])(logits, values * 0)
    with pytest.raises(TypeError, match="floating"):
        fn.MSELoss()(np.zeros((4, 3), np.int64), values)


def test_c_checks_the_fields_of_other_losses_and_the_targets_a_loss_takes():
    """The C API refuses a hyper-parameter meant for another kind, and targets of the wrong
    sort (what a C program could pass)."""
    z = np.zeros((2, 3))
    labels = np.array([0, 1])
    values = np.zeros((2, 3))
    call = _core.loss_forward_backward
    with pytest.raises(ValueError, match="MSELoss: label_smoothing is not a parameter"):
        call(z, {"kind": _core.LOSS_MSE, "label_smoothing": 0.1}, values=values)
    with pytest.raises(ValueError, match="CrossEntropyLoss: delta is not a parameter"):
        call(z, {"kind": _core.LOSS_CROSS_ENTROPY, "delta": 1.0}, labels=labels)
    with pytest.raises(ValueError, match="HuberLoss: delta must be finite and > 0"):
        call(z, {"kind": _core.LOSS_HUBER}, values=values)
    with pytest.raises(ValueError, match="DistillationLoss: temperature must be"):
        call(z, {"kind": _core.LOSS_DISTILLATION, "alpha": 0.5}, labels=labels, teacher=z)
    with pytest.raises(ValueError, match="L1Loss: pos_weight is not a parameter"):
        call(z, {"kind": _core.LOSS_L1, "pos_weight": np.ones(3)}, values=values)
    with pytest.raises(ValueError, match="not both"):
        call(z, {"kind": _core.LOSS_CROSS_ENTROPY}, labels=labels, values=values)
    with pytest.raises(ValueError, match="takes no teacher"):
        call(z, {"kind": _core.LOSS_CROSS_ENTROPY}, labels=labels, teacher=z)
    with pytest.raises(ValueError, match="needs the teacher's logits"):
        call(z, {"kind": _core.LOSS_DISTILLATION, "temperature": 2.0}, labels=labels)
    with pytest.raises(ValueError, match="takes float targets"):
        call(z, {"kind": _core.LOSS_BCE_WITH_LOGITS}, labels=labels, values=values)
    with pytest.raises(ValueError, match="needs float targets"):
        call(z, {"kind": _core.LOSS_MSE})
    with pytest.raises(ValueError, match="labels: NULL"):
        call(z, {"kind": _core.LOSS_CROSS_ENTROPY})
    with pytest.raises(ValueError, match="unknown loss kind 9"):
        call(z, {"kind": 9}, values=values)
    with pytest.raises(FloatingPointError, match="the loss is"):
        call(np.array([[np.inf, 0.0, 0.0], [0.0, 0.0, 0.0]]), {"kind": _core.LOSS_MSE},
             values=values)


def test_train_step_refuses_bad_targets_before_changing_anything():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    model = small_model(np.float32, 3)
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    before = params_of(model)
    bad = np.zeros((8, 3), np.float32)
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.train_step(x, bad, fn.MSELoss(), opt)
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.train_step(x, bad, fn.CrossEntropyLoss(), opt)
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.train_step(x, (np.zeros(8, np.int64), bad), fn.DistillationLoss(), opt)
    with pytest.raises(ValueError, match="weight has 4 entries for 3 classes"):
        model.train_step(x, np.zeros(8, np.int64), fn.CrossEntropyLoss(weight=np.ones(4)), opt)
    with pytest.raises(ValueError, match="shape"):
        model.train_step(x, np.zeros((8, 2), np.float32), fn.HuberLoss(), opt)
    with pytest.raises(TypeError, match="fastnet loss"):
        model.train_step(x, np.zeros(8, np.int64), lambda z, y: 0.0, opt)
    for a, b in zip(before, params_of(model)):
        np.testing.assert_array_equal(a, b)
    # A loss that overflows is refused with the weights as they were.
    linear = fn.Sequential(fn.Linear(6, 3))
    opt = fn.optim.SGD(linear.parameters(), lr=0.1)
    before = params_of(linear)
    with pytest.raises(FloatingPointError, match="not updated"):
        linear.train_step(np.full((8, 6), 1e30, np.float32), np.zeros((8, 3)), fn.MSELoss(), opt)
    for a, b in zip(before, params_of(linear)):
        np.testing.assert_array_equal(a, b)
