"""Looking inside a model and numerical faults: node outputs of the last forward, the layer a
non-finite loss or gradient comes from, and failed steps that change nothing."""

import numpy as np
import pytest

import fastnet as fn


def mlp(dtype="float32", seed=0):
    return fn.Sequential(fn.Linear(6, 5), fn.ReLU(), fn.Linear(5, 3), dtype=dtype, seed=seed)


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
