"""Whole-model behaviour: training sanity checks, determinism, threads, files, and clear errors."""
import math

import numpy as np
import pytest

import fastnet as fn


def mlp(dtype="float32", seed=0, sizes=(64, 128, 128, 10)):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(fn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(fn.ReLU())
    return fn.Sequential(*layers, dtype=dtype, seed=seed)


@pytest.fixture(scope="module")
def digits():
    return fn.load_digits()


def test_loss_at_initialisation_is_ln_classes(digits):
    """With small random weights the softmax is near uniform: loss ≈ ln 10, for several seeds."""
    loss = fn.CrossEntropyLoss()
    for seed in range(5):
        model = mlp(seed=seed)
        value = loss(model(digits.train.x), digits.train.y)
        assert abs(value - math.log(10)) < 0.15, (seed, value)


def test_overfits_twenty_samples(digits):
    model = mlp()
    opt = fn.optim.Adam(model.parameters(), lr=1e-2)
    x, y = digits.train.x[:20], digits.train.y[:20]
    for _ in range(300):
        last = model.train_step(x, y, fn.CrossEntropyLoss(), opt)
    assert last < 0.01
    assert np.array_equal(model.predict(x), y)


def train_weights(seed, steps=30, dtype="float32"):
    rng = np.random.default_rng(1)
    x = rng.random((64, 64)).astype(dtype)
    y = rng.integers(0, 10, 64)
    model = mlp(dtype=dtype, seed=seed)
    opt = fn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(steps):
        model.train_step(x, y, fn.CrossEntropyLoss(), opt)
    return model.state_dict()


def test_same_seed_gives_bitwise_identical_training():
    a, b = train_weights(seed=3), train_weights(seed=3)
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name
    c = train_weights(seed=4)
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_one_and_two_threads_agree():
    fn.set_num_threads(1)
    one = train_weights(seed=0)
    fn.set_num_threads(2)
    assert fn.get_num_threads() == 2
    two = train_weights(seed=0)
    for name in one:
        np.testing.assert_allclose(one[name], two[name], rtol=1e-4, atol=1e-5)


def test_large_layers_one_and_two_threads_agree():
    """Big enough that GEMM and elementwise kernels really split the work."""
    rng = np.random.default_rng(0)
    x = rng.random((128, 784), dtype=np.float32)
    y = rng.integers(0, 10, 128)
    results = []
    for n in (1, 2):
        fn.set_num_threads(n)
        model = mlp(sizes=(784, 512, 512, 10))
        opt = fn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        losses = [model.train_step(x, y, fn.CrossEntropyLoss(), opt) for _ in range(3)]
        results.append((losses, model.state_dict()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for name in results[0][1]:
        np.testing.assert_allclose(results[0][1][name], results[1][1][name], rtol=1e-4, atol=1e-6)


def test_initialisation_matches_pytorch_default_bounds():
    model = mlp(sizes=(64, 300, 10))
    sd = model.state_dict()
    for name, fan_in in (("0.weight", 64), ("0.bias", 64), ("2.weight", 300)):
        bound = 1 / math.sqrt(fan_in)
        assert np.abs(sd[name]).max() <= bound
        assert np.abs(sd[name]).max() > 0.9 * bound  # fills the range
        assert abs(sd[name].mean()) < 0.2 * bound


def test_save_load_gives_identical_predictions(tmp_path, digits):
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        model.train_step(digits.train.x[:64], digits.train.y[:64], fn.CrossEntropyLoss(), opt)
    path = tmp_path / "m.safetensors"
    fn.save(model, path)
    loaded = fn.load(path)
    assert [repr(layer) for layer in loaded.layers] == [repr(layer) for layer in model.layers]
    assert np.array_equal(loaded(digits.test.x), model(digits.test.x))
    for name, value in model.state_dict().items():
        assert np.array_equal(loaded.state_dict()[name], value)


def test_save_replaces_atomically_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "m.safetensors"
    fn.save(mlp(seed=1), path)
    fn.save(mlp(seed=2), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert np.array_equal(fn.load(path).state_dict()["0.weight"],
                          mlp(seed=2).state_dict()["0.weight"])


def test_float64_model_file_round_trip(tmp_path):
    model = mlp(dtype="float64")
    fn.save(model, tmp_path / "m.safetensors")
    loaded = fn.load(tmp_path / "m.safetensors")
    assert loaded.dtype == np.float64
    x = np.random.default_rng(0).random((5, 64))
    assert np.array_equal(loaded(x), model(x))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        fn.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError):
        fn.load(bad)
    good = tmp_path / "good.safetensors"
    fn.save(mlp(), good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        fn.load(truncated)


def test_state_dict_uses_pytorch_names_and_layouts():
    model = fn.Sequential(fn.Linear(5, 3), fn.Tanh(), fn.Linear(3, 2, bias=False))
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight"]
    assert sd["0.weight"].shape == (3, 5) and sd["2.weight"].shape == (2, 3)


def test_load_state_dict_round_trip_and_checks():
    source, target = mlp(seed=1), mlp(seed=2)
    target.load_state_dict(source.state_dict())
    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    assert np.array_equal(target(x), source(x))
    sd = source.state_dict()
    sd["0.weight"] = sd["0.weight"][:, :10]
    with pytest.raises(ValueError, match="0.weight"):
        target.load_state_dict(sd)
    sd = source.state_dict()
    sd["0.bias"][0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        target.load_state_dict(sd)
    with pytest.raises(KeyError, match="missing"):
        target.load_state_dict({"0.weight": source.state_dict()["0.weight"]})
    assert np.array_equal(target(x), source(x))  # failed loads changed nothing


def test_parameter_views_alias_the_model():
    model = fn.Sequential(fn.Linear(3, 2))
    weight = model.parameters()[0]
    weight.data[...] = 0
    model.parameters()[1].data[...] = [1, 2]
    out = model(np.ones((1, 3), np.float32))
    assert np.array_equal(out, [[1, 2]])


def test_trainer_reaches_high_accuracy_on_digits(digits):
    model = mlp()
    opt = fn.optim.Adam(model.parameters(), lr=1e-3)
    trainer = fn.Trainer(model, opt, fn.CrossEntropyLoss(), seed=0, progress=False)
    history = trainer.fit(digits.train, digits.val, epochs=15, batch_size=32)
    assert len(history) == 15
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert trainer.evaluate(digits.test)["accuracy"] > 0.93


def test_trainer_accepts_tuples_and_writes_metrics(tmp_path, digits):
    import json

    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    path = tmp_path / "metrics.jsonl"
    fn.Trainer(model, opt, progress=False, metrics_path=str(path)).fit(
        (digits.train.x, digits.train.y), epochs=2)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert 0 <= lines[-1]["train_accuracy"] <= 1


# ---------------------------------------------------------------------- clear errors


def test_wrong_input_width_names_the_layer():
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    x = np.zeros((8, 65), np.float32)
    with pytest.raises(ValueError, match=r"Linear\(64, 128\) \(layer 0\) expects input \(N, 64\)"):
        model(x)
    with pytest.raises(ValueError, match=r"Linear\(64, 128\)"):
        model.train_step(x, np.zeros(8, np.int64), fn.CrossEntropyLoss(), opt)


def test_wrong_dtype_is_a_type_error():
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="floating"):
        model(np.zeros((2, 64), np.int32))
    with pytest.raises(TypeError, match="integer"):
        model.train_step(np.zeros((2, 64), np.float32), np.zeros(2, np.float32),
                         fn.CrossEntropyLoss(), opt)


def test_float64_input_is_converted_for_a_float32_model():
    model = mlp()
    x = np.random.default_rng(0).random((3, 64))
    np.testing.assert_allclose(model(x), model(x.astype(np.float32)), rtol=1e-6)


def test_labels_out_of_range():
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    before = model.state_dict()
    x = np.zeros((4, 64), np.float32)
    with pytest.raises(ValueError, match=r"label 10 at index 2 is out of range for 10 classes"):
        model.train_step(x, np.array([0, 1, 10, 3]), fn.CrossEntropyLoss(), opt)
    with pytest.raises(ValueError, match=r"label -1"):
        model.train_step(x, np.array([0, -1, 2, 3], np.int8), fn.CrossEntropyLoss(), opt)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_nan_in_input_is_refused_and_changes_nothing():
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    before = model.state_dict()
    x = np.zeros((4, 64), np.float32)
    x[2, 5] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf: sample 2, feature 5"):
        model.train_step(x, np.zeros(4, np.int64), fn.CrossEntropyLoss(), opt)
    x[2, 5] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(x)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("thread_count", [1, 2, 3])
def test_a_large_batch_names_its_first_non_finite_value_on_any_thread_count(thread_count):
    """A batch of 2^18 values is copied and checked in one part a thread: the error names the
    first bad value of the whole batch, whichever part holds it, and the step changes nothing.
    (conftest's restore_threads puts the thread count back.)"""
    fn.set_num_threads(thread_count)
    model = fn.Sequential(fn.Linear(512, 4), input_shape=(512,))
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    before = model.state_dict()
    loss = fn.CrossEntropyLoss()
    labels = np.zeros(512, np.int64)
    for bad in ([(511, 511)], [(300, 7)], [(0, 0), (400, 1)], [(255, 511), (256, 0)],
                [(257, 3), (256, 9)]):
        x = np.ones((512, 512), np.float32)
        for sample, feature in bad:
            x[sample, feature] = np.nan if sample % 2 else np.inf
        sample, feature = min(bad)
        with pytest.raises(ValueError, match=rf"NaN or Inf: sample {sample}, feature "
                                             rf"{feature}$"):
            model.train_step(x, labels, loss, opt)
    model.train_step(np.ones((512, 512), np.float32), labels, loss, opt)
    assert opt.steps == 1 and not np.array_equal(model.state_dict()["0.weight"],
                                                  before["0.weight"])


def test_label_count_must_match_batch():
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        model.train_step(np.zeros((4, 64), np.float32), np.zeros(3, np.int64),
                         fn.CrossEntropyLoss(), opt)


def test_empty_batch_and_backward_before_forward():
    model = mlp()
    with pytest.raises(ValueError, match="empty"):
        model(np.zeros((0, 64), np.float32))
    with pytest.raises(RuntimeError, match="forward that keeps activations"):
        model.backward(np.zeros((2, 10), np.float32))


def test_non_finite_loss_stops_without_updating():
    model = fn.Sequential(fn.Linear(2, 2))
    model.load_state_dict({"0.weight": np.full((2, 2), 3e38, np.float32),
                           "0.bias": np.zeros(2, np.float32)})
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    before = model.state_dict()
    with pytest.raises(FloatingPointError, match="loss"):
        model.train_step(np.array([[1, -1]], np.float32) * 10, np.array([0]),
                         fn.CrossEntropyLoss(), opt)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="in_features"):
        fn.Linear(0, 3)
    with pytest.raises(ValueError, match="dtype"):
        fn.Sequential(fn.Linear(2, 2), dtype="float16")
    with pytest.raises(TypeError, match="not a fastnet layer"):
        fn.Sequential(fn.Linear(2, 2), "relu")
    with pytest.raises(ValueError, match=r"ReLU\(\) needs input_shape"):
        fn.Sequential(fn.ReLU()).parameters()  # a description until it knows its input
    with pytest.raises(ValueError, match="expects 3 input features"):
        fn.Sequential(fn.Linear(2, 4), fn.Linear(3, 1))
    with pytest.raises(ValueError, match="lr"):
        fn.optim.SGD(mlp().parameters(), lr=-1)
