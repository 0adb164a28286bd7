"""Robustness: the public API under random and hostile arguments, and model files under crashes,
read-only directories and full disks.

Every call either returns a correct result or raises a clear exception (one of CLEAR, with a
message that names what was wrong); nothing may crash the interpreter or write out of bounds.
"""
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnet as fn

CLEAR = (ValueError, TypeError, FloatingPointError, OSError, KeyError)
SETTINGS = settings(max_examples=50, suppress_health_check=list(HealthCheck))
# The directory the tested fastnet was imported from: subprocesses must import the same one (the
# installed package under CI, the in-place build in development), and run from a directory where
# the source tree cannot shadow it.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fn.__file__)))

DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_,
          np.complex64, object, ">f4"]
SPECIAL = [0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e30, -1e30, 1e300, 5e-324, 1e-40, 3.0e38]


def outcome(call, *words, allowed=CLEAR):
    """Runs call(); returns (True, result) or (False, exception) for an exception of `allowed`
    whose message contains one of `words` (case-insensitive). Anything else fails the test."""
    try:
        return True, call()
    except allowed as e:
        message = str(e).lower()
        assert message, f"{type(e).__name__} without a message"
        if words:
            assert any(w.lower() in message for w in words), \
                f"unclear {type(e).__name__}: {e!r} (expected one of {words})"
        return False, e


@st.composite
def arrays(draw, shape=None, dtypes=DTYPES, max_batch=40):
    """Arrays of random shape, dtype, values (special values included) and memory layout."""
    if shape is None:
        ndim = draw(st.integers(0, 4))
        shape = tuple(draw(st.integers(0, 6)) for _ in range(ndim))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    size = int(np.prod(shape)) if shape else 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.normal(size=size) * draw(st.sampled_from([1e-3, 1.0, 100.0]))
    if size and draw(st.booleans()):
        idx = rng.integers(0, size, size=draw(st.integers(1, 3)))
        values[idx] = draw(st.sampled_from(SPECIAL))
    with np.errstate(all="ignore"):
        if dtype.kind in "iub":
            values = np.nan_to_num(values, nan=0, posinf=100, neginf=-100).clip(-100, 100)
        a = values.astype(dtype).reshape(shape)
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim:
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        big[..., ::2] = a
        a = big[..., ::2]
    return a


@st.composite
def batch_of(draw, feature_shape, dtypes=DTYPES):
    n = draw(st.sampled_from([0, 1, 2, 7, 300]))
    return draw(arrays(shape=(n,) + tuple(feature_shape), dtypes=dtypes))


_MODELS = {}


def mlp(dtype="float32"):
    if dtype not in _MODELS:
        _MODELS[dtype] = fn.Sequential(fn.Linear(4, 8), fn.ReLU(), fn.Linear(8, 3), dtype=dtype)
    return _MODELS[dtype]


def cnn():
    if "cnn" not in _MODELS:
        _MODELS["cnn"] = fn.Sequential(fn.Conv2d(2, 3, 3, padding=1), fn.ReLU(), fn.MaxPool2d(2),
                                       fn.Flatten(), fn.Linear(3 * 2 * 2, 3), input_shape=(2, 4, 4))
    return _MODELS["cnn"]


def _finite_as(x, dtype):
    """Inputs holding NaN or Inf (after conversion to the model's dtype) are refused."""
    with np.errstate(all="ignore"):
        return bool(np.isfinite(x.astype(dtype)).all())


def _reference_forward(model, x):
    """The logits of a model of Linear/ReLU layers in float64 numpy."""
    h = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    for layer, name in zip(model.layers, range(len(model.layers))):
        if isinstance(layer, fn.Linear):
            p = dict(model.named_parameters())
            h = h @ p[f"{name}.weight"].data.astype(np.float64).T + p[f"{name}.bias"].data
        elif isinstance(layer, fn.ReLU):
            h = np.maximum(h, 0)
    return h


# ---------------------------------------------------------------------------- forward / backward


@SETTINGS
@given(st.data(), st.sampled_from(["float32", "float64"]))
def test_forward_random_inputs(data, model_dtype):
    model = mlp(model_dtype)
    x = data.draw(st.one_of(batch_of((4,)), arrays()))
    method = data.draw(st.sampled_from(["call", "forward", "predict"]))
    f = {"call": model, "forward": model.forward, "predict": model.predict}[method]
    ok, out = outcome(lambda: f(x), "input", "expects", "batch", "dtype", "float")
    valid = (x.ndim == 2 and x.shape[1:] == (4,) and x.shape[0] > 0 and x.dtype.kind == "f"
             and _finite_as(x, model.dtype))
    assert ok == valid, (x.shape, x.dtype, out)
    if ok:
        expected_shape = (len(x),) if method == "predict" else (len(x), 3)
        assert out.shape == expected_shape
        finite = np.isfinite(x).all() and np.abs(x).max() < 1e30
        if method != "predict":
            assert out.dtype == model.dtype
            if finite:
                assert np.isfinite(out).all()
                ref = _reference_forward(model, x.astype(model.dtype))
                np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 * (1 + np.abs(ref).max()))


@SETTINGS
@given(st.data())
def test_conv_forward_layouts(data):
    model = cnn()
    x = data.draw(st.one_of(batch_of((2, 4, 4), dtypes=[np.float32, np.float64]),
                            arrays(dtypes=[np.float32])))
    ok, out = outcome(lambda: model(x), "input", "expects", "batch")
    valid = (x.shape[1:] == (2, 4, 4) and x.ndim == 4 and x.shape[0] > 0
             and _finite_as(x, np.float32))
    assert ok == valid
    if ok:
        assert out.shape == (len(x), 3)
        # Same result as the C-contiguous float32 copy: layout must not matter.
        np.testing.assert_array_equal(out, model(np.ascontiguousarray(x, dtype=np.float32)))


@SETTINGS
@given(st.data())
def test_backward_random_grad(data):
    model = mlp("float64")
    n = data.draw(st.sampled_from([1, 3, 64]))
    x = np.random.default_rng(n).normal(size=(n, 4))
    model.zero_grad()
    model.forward(x)
    g = data.draw(st.one_of(arrays(), batch_of((3,)),
                            arrays(shape=(n, 3), dtypes=[np.float32, np.float64, np.int32])))
    # A grad_out whose batch is not the forward's is a usage error of the C state (RuntimeError).
    ok, gx = outcome(lambda: model.backward(g), "grad_out", "batch", "shape", "forward",
                     allowed=CLEAR + (RuntimeError,))
    valid = g.shape == (n, 3) and g.dtype.kind == "f"
    assert ok == valid, (g.shape, g.dtype, gx)
    if ok:
        assert gx.shape == (n, 4)
        if np.isfinite(g).all() and np.abs(g).max() < 1e30:
            assert np.isfinite(gx).all()


def test_backward_before_forward_is_an_error():
    model = fn.Sequential(fn.Linear(4, 3))
    with pytest.raises((RuntimeError, ValueError), match="forward"):
        model.backward(np.zeros((2, 3), np.float32))


@SETTINGS
@given(st.data())
def test_core_model_checks_input_size(data):
    """fastnet._core.Model (the handle for graph specs) checks that inputs hold N whole samples
    before C reads them: a short array used to be read past its end."""
    model = fn.Sequential(fn.Linear(4, 3))
    fn.optim.SGD(model.parameters(), lr=0.01)._configure()
    core = model._core
    x = data.draw(st.one_of(arrays(dtypes=[np.float32, np.float64]),
                            batch_of((4,), dtypes=[np.float32]),
                            batch_of((2, 2), dtypes=[np.float32])))
    valid_shape = x.ndim >= 2 and x.size == x.shape[0] * 4 and x.shape[0] > 0
    ok, out = outcome(lambda: core.forward(x), "input", "batch", "nan")
    assert ok == (valid_shape and _finite_as(x, np.float32)), (x.shape, out)
    if ok:
        assert out.shape == (x.shape[0], 3)
    labels = np.zeros(x.shape[0] if x.ndim else 0, np.int64)
    ok, value = outcome(lambda: core.train_step(x, labels), "input", "batch", "nan", "label")
    if ok:
        assert valid_shape and isinstance(value, float)


def test_core_model_without_spec_is_refused():
    with pytest.raises(TypeError, match="spec"):
        fn._core.Model()


@SETTINGS
@given(st.data())
def test_load_state_dict_random(data):
    model = fn.Sequential(fn.Linear(4, 3), fn.BatchNorm1d(3))
    before = model.state_dict()
    name = data.draw(st.sampled_from(list(before) + ["nope"]))
    shape = before.get(name, np.zeros(2)).shape
    value = data.draw(st.one_of(arrays(shape=shape), arrays()))
    ok, _ = outcome(lambda: model.load_state_dict({name: value}, strict=False),
                    name, "parameter")
    after = model.state_dict()
    if ok:
        assert name == "nope" or np.isfinite(after[name]).all()
    else:
        for key in before:
            np.testing.assert_array_equal(after[key], before[key])


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, None])
def test_predict_batch_size(batch_size):
    model = fn.Sequential(fn.Linear(4, 3))
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(np.zeros((5, 4), np.float32), batch_size=batch_size)


# ---------------------------------------------------------------------------- losses


LOSSES = [fn.CrossEntropyLoss, fn.MSELoss, fn.L1Loss, fn.HuberLoss, fn.BCEWithLogitsLoss,
          fn.DistillationLoss, lambda: fn.CrossEntropyLoss(weight=[1, 2, 3], label_smoothing=0.1),
          lambda: fn.BCEWithLogitsLoss(pos_weight=2.0)]


@st.composite
def targets_for(draw, loss, n, c):
    """Targets of random validity for `loss` and outputs (n, c)."""
    wrong = arrays()
    if isinstance(loss, fn.DistillationLoss):
        return draw(st.one_of(
            st.tuples(labels(n, c), arrays(shape=(n, c), dtypes=[np.float32, np.float64])),
            st.tuples(labels(n, c), wrong), labels(n, c), wrong))
    if isinstance(loss, fn.CrossEntropyLoss):
        return draw(st.one_of(labels(n, c), arrays(shape=(n, c)), wrong))
    return draw(st.one_of(arrays(shape=(n, c)), arrays(shape=(n,)), wrong, labels(n, c)))


@st.composite
def labels(draw, n, c):
    dtype = draw(st.sampled_from([np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64,
                                  ">i4", np.float32, np.bool_, object]))
    length = draw(st.sampled_from([n, n, n, max(n - 1, 0), n + 1]))
    low, high = draw(st.sampled_from([(0, c), (0, c), (-3, c), (0, c + 5)]))
    y = np.random.default_rng(draw(st.integers(0, 1000))).integers(low, high, size=length)
    if np.dtype(dtype).kind == "u":
        y = np.abs(y)
    y = y.astype(dtype)
    if draw(st.booleans()) and length:
        y = np.repeat(y, 2)[::2]
    if draw(st.integers(0, 9)) == 0:
        y = y.reshape(-1, 1)
    return y


def _check_loss_result(value, grad, outputs_shape):
    assert isinstance(value, float)
    if grad is not None:
        assert grad.shape == outputs_shape


@SETTINGS
@given(st.data(), st.sampled_from(range(len(LOSSES))))
def test_loss_direct(data, which):
    loss = LOSSES[which]()
    outputs = data.draw(st.one_of(
        arrays(shape=(data.draw(st.sampled_from([0, 1, 5, 200])), 3)), arrays()))
    n = outputs.shape[0] if outputs.ndim else 0
    c = outputs.shape[1] if outputs.ndim == 2 else 3
    targets = data.draw(targets_for(loss, n, c))
    ok, result = outcome(lambda: loss.forward_backward(outputs, targets),
                         "output", "target", "label", "teacher", "dtype", "shape", "weight",
                         "batch", "range", "class", "empty", "float", "integer", "pair")
    if ok:
        value, grad = result
        assert outputs.ndim == 2 and outputs.dtype.kind == "f"
        _check_loss_result(value, grad, outputs.shape)
        assert grad.dtype == (np.float64 if outputs.dtype == np.float64 else np.float32)
        if (np.isfinite(outputs).all() and np.abs(outputs).max(initial=0) < 1e4 and n
                and not isinstance(loss, (fn.MSELoss,))):
            assert np.isfinite(value)
    outcome(lambda: loss(outputs, targets), "output", "target", "label", "teacher", "dtype",
            "shape", "weight", "batch", "range", "class", "empty", "float", "integer", "pair")


@SETTINGS
@given(st.data(), st.sampled_from(range(len(LOSSES))))
def test_train_step_each_loss(data, which):
    loss = LOSSES[which]()
    model = fn.Sequential(fn.Linear(4, 3), seed=which)
    before = model.state_dict()
    opt = fn.optim.SGD(model.parameters(), lr=0.01)
    x = data.draw(st.one_of(batch_of((4,), dtypes=[np.float32, np.float64, np.int32]),
                            arrays()))
    n = x.shape[0] if x.ndim else 0
    targets = data.draw(targets_for(loss, n, 3))
    ok, value = outcome(lambda: model.train_step(x, targets, loss, opt),
                        "input", "expects", "target", "label", "teacher", "dtype", "shape",
                        "batch", "range", "class", "float", "integer", "pair", "finite", "nan")
    if ok:
        assert isinstance(value, float)
        if np.isfinite(x).all() and np.abs(x).max() < 1e4 and np.isfinite(value):
            for name, p in model.state_dict().items():
                assert np.isfinite(p).all(), name
    else:
        # A refused step leaves the weights as they were.
        for name, p in model.state_dict().items():
            np.testing.assert_array_equal(p, before[name])


# ---------------------------------------------------------------------------- model construction


def _layer_strategy():
    small = st.integers(-1, 6)
    real = st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan, np.inf, 1e300])
    return st.one_of(
        st.builds(fn.Linear, small, small), st.builds(fn.ReLU), st.builds(fn.Tanh),
        st.builds(fn.Sigmoid), st.builds(fn.LeakyReLU, real), st.builds(fn.ELU, real),
        st.builds(fn.GELU), st.builds(fn.SiLU), st.builds(fn.Softplus, real, real),
        st.builds(fn.PReLU, small), st.builds(fn.Maxout, small), st.builds(fn.Softmax),
        st.builds(fn.LogSoftmax), st.builds(fn.Flatten), st.builds(fn.Dropout, real),
        st.builds(fn.BatchNorm1d, small), st.builds(fn.BatchNorm2d, small),
        st.builds(fn.Conv2d, small, small, small, stride=st.integers(0, 3),
                  padding=st.integers(-1, 2)),
        st.builds(fn.MaxPool2d, small), st.builds(fn.AvgPool2d, small),
        st.builds(fn.AdaptiveAvgPool2d, small),
        st.builds(fn.LocalResponseNorm, small, real, real, real),
        st.builds(fn.Dropout, real), st.just("not a layer"), st.just(None))


def _try_layer(data):
    """A layer from random (possibly invalid) arguments; None when its constructor refused them
    with a clear error."""
    ok, layer = outcome(lambda: data.draw(_layer_strategy()))
    return layer if ok else None


@SETTINGS
@given(st.data())
def test_random_layer_stacks(data):
    layers = [layer for layer in (_try_layer(data) for _ in range(data.draw(st.integers(0, 5))))]
    layers = [layer for layer in layers if layer is not None or data.draw(st.booleans())]
    shape = data.draw(st.sampled_from([None, (4,), (2, 4, 4), (3, 5, 5), (0,), (1, 2, 3, 4),
                                       (4, 4), 6]))
    dtype = data.draw(st.sampled_from(["float32", "float64", "float16", "int32", np.float64]))
    ok, model = outcome(lambda: fn.Sequential(*layers, input_shape=shape, dtype=dtype))
    if not ok:
        return
    ok, _ = outcome(lambda: model._core, "input_shape")
    if not ok:
        return
    x = np.random.default_rng(0).normal(size=(3,) + model.input_shape).astype(model.dtype)
    ok, out = outcome(lambda: model(x), "nan", "inf", "finite")
    if ok:
        assert out.shape == (3, model._core.output_size)
    # Saving and loading a valid random model keeps its spec and weights.
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        fn.save(model, path)
        again = fn.load(path)
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(again.state_dict()[name], value)


@SETTINGS
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3),
                 st.sampled_from([1.0, 0.999999, 1.5, "0.5", None, True])))
def test_dropout_p(p):
    ok, layer = outcome(lambda: fn.Dropout(p), "dropout p")
    valid = (not isinstance(p, (bool, str)) and p is not None and 0 <= p < 1)
    assert ok == valid
    if ok:
        model = fn.Sequential(fn.Linear(4, 4), layer)
        out = model(np.ones((5, 4), np.float32))
        assert np.isfinite(out).all()


# ---------------------------------------------------------------------------- optimizers


ABSURD = st.one_of(st.sampled_from([-1.0, 0.0, 1e-3, 0.9, 1.0, 1.5, 1e300, np.nan, np.inf,
                                    -np.inf, -0.0, True, None, "0.1", 5e-324]),
                   st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5))


@SETTINGS
@given(st.sampled_from(["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]), st.data())
def test_optimizer_absurd_hyperparameters(name, data):
    model = fn.Sequential(fn.Linear(4, 3))
    kwargs = {"lr": data.draw(ABSURD)}
    extra = {"SGD": ["momentum", "dampening", "weight_decay"],
             "Adam": ["eps", "weight_decay"], "AdamW": ["eps", "weight_decay"],
             "RMSprop": ["alpha", "eps", "momentum"], "Adagrad": ["lr_decay", "eps"]}[name]
    for key in extra:
        if data.draw(st.booleans()):
            kwargs[key] = data.draw(ABSURD)
    if name in ("Adam", "AdamW") and data.draw(st.booleans()):
        kwargs["betas"] = (data.draw(ABSURD), data.draw(ABSURD))
    if name == "SGD" and data.draw(st.booleans()):
        kwargs["nesterov"] = True
    ok, opt = outcome(lambda: getattr(fn.optim, name)(model.parameters(), **kwargs),
                      *kwargs, "betas", "nesterov")
    if not ok:
        return
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    y = np.arange(8) % 3
    for _ in range(3):
        ok, value = outcome(lambda: model.train_step(x, y, fn.CrossEntropyLoss(), opt),
                            "nan", "inf", "finite", "diverg", "overflow")
        if not ok:
            break
        assert isinstance(value, float)
    # Changing a hyper-parameter afterwards is validated the same way.
    outcome(lambda: setattr(opt, "lr", data.draw(ABSURD)), "lr")


# ---------------------------------------------------------------------------- Trainer


@SETTINGS
@given(st.sampled_from([0, -1, 1, 3, 10**9, True, 1.5, None, "2"]),
       st.sampled_from([0, -1, 1, 2, True, 2.0, None]),
       st.sampled_from(["ok", "float_labels", "negative", "too_big", "2d", "nan_x", "int_x",
                        "short_y", "wrong_features", "empty"]))
def test_trainer_fit_arguments(batch_size, epochs, case):
    model = fn.Sequential(fn.Linear(4, 3))
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 4)).astype(np.float32)
    y = np.arange(10) % 3
    if case == "float_labels":
        y = y.astype(np.float64) + 0.5
    elif case == "negative":
        y = y - 1
    elif case == "too_big":
        y = y + 5
    elif case == "2d":
        y = y.reshape(-1, 1)
    elif case == "nan_x":
        x[3, 1] = np.nan
    elif case == "int_x":
        x = (x * 10).astype(np.int32)
    elif case == "short_y":
        y = y[:-1]
    elif case == "wrong_features":
        x = x[:, :3]
    elif case == "empty":
        x, y = x[:0], y[:0]
    trainer = fn.Trainer(model, opt, progress=False)
    ok, history = outcome(lambda: trainer.fit((x, y), epochs=epochs, batch_size=batch_size),
                          "batch_size", "epochs", "label", "y", "x", "nan", "sample", "shape")
    valid_args = (type(batch_size) is int and batch_size >= 1 and type(epochs) is int
                  and epochs >= 1)
    assert ok == (valid_args and case == "ok"), (batch_size, epochs, case, history)
    if ok:
        assert len(history) == epochs
        assert np.isfinite(history.metric("train_loss")).all()


@pytest.mark.parametrize("loss", [fn.MSELoss(), fn.BCEWithLogitsLoss(), fn.HuberLoss()])
def test_trainer_one_hot_losses_refuse_negative_labels(loss):
    model = fn.Sequential(fn.Linear(4, 3))
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    x = np.ones((6, 4), np.float32)
    with pytest.raises(ValueError, match="label"):
        fn.Trainer(model, opt, loss, progress=False).fit((x, np.array([0, 1, -1, 2, 0, 1])),
                                                         epochs=1)


# ---------------------------------------------------------------------------- durability

BIG_FEATURES = 3500  # Linear(3500, 3500): 12.25 M float32 parameters, about 49 MB


def _run(code, timeout=120, **kwargs):
    kwargs.setdefault("cwd", tempfile.gettempdir())
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT),
                          **kwargs)


def _uniform_weights(path):
    """The single value every weight of the model file holds (the save loop fills them so)."""
    state = fn.load(path).state_dict()
    values = {float(v.flat[0]) for v in state.values()}
    assert len(values) == 1, f"mixed weights {values}"
    for v in state.values():
        assert (v == v.flat[0]).all(), "a torn file"
    return values.pop()


def test_sigkill_while_saving_keeps_previous_file(tmp_path):
    path = tmp_path / "big.safetensors"
    loop = f"""
        import sys, fastnet as fn
        model = fn.Sequential(fn.Linear({BIG_FEATURES}, {BIG_FEATURES}))
        k = 0
        while True:
            k += 1
            for p in model.parameters():
                p.data[...] = k
            fn.save(model, {str(path)!r})
            print(k, flush=True)
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(loop)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=ROOT), cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete file exists
    finally:
        proc.kill()
        proc.wait()
    rng = random.Random(0)
    previous = _uniform_weights(path)
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(loop)],
                                stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=ROOT), cwd=tmp_path)
        time.sleep(rng.uniform(0.5, 2.0))
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0].split()
        assert proc.returncode == -signal.SIGKILL
        value = _uniform_weights(path)
        completed = [int(k) for k in out]
        # The file is the last complete save of this process, or the one in progress when it was
        # killed (rename done, print not yet), or the previous file when nothing completed.
        allowed = {previous} | set(completed) | {max(completed, default=0) + 1}
        assert value in allowed, (value, allowed)
        previous = value
        strays = [f for f in os.listdir(tmp_path) if f != path.name]
        # At most one temp file per killed process (named by its pid); later saves ignore them.
        assert all(f.startswith(path.name + ".tmp.") for f in strays), strays
        assert len(strays) <= attempt + 2, strays
    # A later save and load work despite stray temp files, and load ignores them.
    model = fn.load(path)
    for p in model.parameters():
        p.data[...] = -7
    fn.save(model, path)
    assert _uniform_weights(path) == -7


def _small_model_file(path, value):
    model = fn.Sequential(fn.Linear(300, 300))
    for p in model.parameters():
        p.data[...] = value
    fn.save(model, path)
    return model


def test_save_into_read_only_directory(tmp_path):
    if os.geteuid() != 0:
        directory = tmp_path / "ro"
        directory.mkdir()
        path = directory / "m.safetensors"
        model = _small_model_file(path, 1.0)
        os.chmod(directory, 0o555)
        try:
            for p in model.parameters():
                p.data[...] = 2.0
            with pytest.raises(OSError, match="m.safetensors") as info:
                fn.save(model, path)
            assert "denied" in str(info.value).lower() or "read-only" in str(info.value).lower()
            assert _uniform_weights(path) == 1.0
            assert os.listdir(directory) == ["m.safetensors"]
        finally:
            os.chmod(directory, 0o755)
        return
    # As root a mode of 0o555 does not stop writes: the save runs in a forked child that has
    # dropped to the unprivileged user "nobody" (65534), for whom the directory is read-only.
    directory = tempfile.mkdtemp(prefix="fastnet-ro-")
    try:
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "m.safetensors")
        model = _small_model_file(path, 1.0)
        for p in model.parameters():
            p.data[...] = 2.0
        os.chmod(directory, 0o555)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                os.setgid(65534)
                os.setuid(65534)
                try:
                    fn.save(model, path)
                    message = "saved"
                except OSError as e:
                    message = f"OSError: {e}"
            except BaseException as e:  # noqa: BLE001
                message = f"{type(e).__name__}: {e}"
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            message = f.read()
        os.waitpid(pid, 0)
        assert message.startswith("OSError:"), message
        assert path in message and "denied" in message.lower()
        assert _uniform_weights(path) == 1.0
        assert os.listdir(directory) == ["m.safetensors"]
    finally:
        os.chmod(directory, 0o755)
        for f in os.listdir(directory):
            os.unlink(os.path.join(directory, f))
        os.rmdir(directory)


def test_save_where_the_parent_is_a_file(tmp_path):
    parent = tmp_path / "file"
    parent.write_text("x")
    path = parent / "m.safetensors"
    with pytest.raises(OSError, match="m.safetensors"):
        fn.save(fn.Sequential(fn.Linear(2, 2)), path)


def test_save_into_proc_is_a_clear_error():
    with pytest.raises(OSError, match="/proc/m.safetensors"):
        fn.save(fn.Sequential(fn.Linear(2, 2)), "/proc/m.safetensors")


def test_full_disk_keeps_previous_file(tmp_path):
    path = str(tmp_path / "m.safetensors")
    _small_model_file(path, 1.0)  # about 360 kB
    result = _run(f"""
        import resource, signal, fastnet as fn
        model = fn.Sequential(fn.Linear(1000, 1000))   # about 4 MB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
        try:
            fn.save(model, {path!r})
        except OSError as e:
            print("OSError:", e)
        else:
            print("saved")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OSError:"), result.stdout
    assert path in result.stdout and "too large" in result.stdout.lower()
    assert _uniform_weights(path) == 1.0
    assert fn.load(path).state_dict()["0.weight"].shape == (300, 300)
    assert os.listdir(tmp_path) == ["m.safetensors"]  # the temp file was removed
