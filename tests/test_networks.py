"""Convolutional and residual networks end to end: graph containers, modes, the benchmark
networks, batch-norm folding, files and the command line's image models."""
import json

import numpy as np
import pytest

import fastnet as fn
from fastnet import zoo
from fastnet.cli import main
from gradcheck import difference_at


def small_resnet(dtype="float32", seed=0):
    return zoo.resnet((2, 6, 6), 3, widths=(4, 6), dtype=dtype, seed=seed)


def central_difference_check(model, x, eps=1e-6):
    """Input and parameter gradients of sum(out * R) against central differences (float64)."""
    rng = np.random.default_rng(1)
    r = rng.standard_normal(model(x).shape)

    def objective():
        return float(np.sum(model(x) * r))

    model.zero_grad()
    model.forward(x)
    grad_x = model.backward(r).reshape(x.shape)
    worst = 0.0
    for index in [tuple(rng.integers(0, s) for s in x.shape) for _ in range(8)]:
        numeric = difference_at(objective, x, index, eps)
        worst = max(worst, abs(numeric - grad_x[index]) / max(1e-6, abs(numeric)))
    for p in model.parameters():
        flat, grad = p.data.reshape(-1), p.grad.reshape(-1)
        for i in rng.integers(0, flat.size, 4):
            numeric = difference_at(objective, flat, i, eps)
            worst = max(worst, abs(numeric - grad[i]) / max(1e-6, abs(numeric)))
    return worst


# ---------------------------------------------------------------------- graph containers


def test_residual_and_concat_names_follow_the_tree():
    model = fn.Sequential(
        fn.Linear(4, 6),
        fn.Residual(fn.Sequential(fn.Linear(6, 6), fn.Tanh()), shortcut=fn.Linear(6, 6)),
        fn.Concat(fn.Linear(6, 2), [fn.Linear(6, 3), fn.ReLU()]),
        fn.Linear(5, 2))
    assert list(model.state_dict()) == [
        "0.weight", "0.bias", "1.main.0.weight", "1.main.0.bias", "1.shortcut.weight",
        "1.shortcut.bias", "2.0.weight", "2.0.bias", "2.1.0.weight", "2.1.0.bias", "3.weight",
        "3.bias"]


def test_residual_computes_main_plus_shortcut():
    main, shortcut = fn.Linear(3, 3), fn.Linear(3, 3)
    model = fn.Sequential(fn.Residual(main, shortcut))
    identity = fn.Sequential(fn.Residual(fn.Linear(3, 3)))
    x = np.random.default_rng(0).random((4, 3), dtype=np.float32)
    sd = model.state_dict()
    expected = x @ sd["0.main.weight"].T + sd["0.main.bias"] + x @ sd["0.shortcut.weight"].T \
        + sd["0.shortcut.bias"]
    np.testing.assert_allclose(model(x), expected, rtol=1e-5)
    sd = identity.state_dict()
    np.testing.assert_allclose(identity(x), x @ sd["0.main.weight"].T + sd["0.main.bias"] + x,
                               rtol=1e-5)


def test_concat_joins_channels():
    model = fn.Sequential(fn.Concat(fn.Conv2d(2, 3, 1), fn.Conv2d(2, 1, 3, padding=1)),
                          input_shape=(2, 4, 5))
    x = np.random.default_rng(0).random((2, 2, 4, 5), dtype=np.float32)
    out = model(x).reshape(2, 4, 4, 5)
    single = fn.Sequential(fn.Conv2d(2, 3, 1), input_shape=(2, 4, 5))
    single.load_state_dict({"0.weight": model.state_dict()["0.0.weight"],
                            "0.bias": model.state_dict()["0.0.bias"]})
    np.testing.assert_allclose(out[:, :3], single(x).reshape(2, 3, 4, 5), rtol=1e-5, atol=1e-6)


def test_graph_gradients_against_central_differences():
    model = fn.Sequential(
        fn.Linear(5, 6), fn.Tanh(),
        fn.Residual(fn.Sequential(fn.Linear(6, 6), fn.Sigmoid()), shortcut=fn.Linear(6, 6)),
        fn.Residual(fn.Linear(6, 6)),
        fn.Concat(fn.Linear(6, 2), fn.Sequential(fn.Linear(6, 3), fn.Tanh())),
        fn.Linear(5, 3), dtype="float64")
    x = np.random.default_rng(0).standard_normal((3, 5))
    assert central_difference_check(model, x) < 1e-6


def test_gradients_through_shared_gradient_buffers():
    # Gradients that are never needed at once share memory (a slot is as large as its largest
    # user): a long skip over layers of growing and shrinking widths, nested branches and a
    # concat make slots be reused by gradients of other sizes and kept while a far consumer
    # still has to add to them.
    model = fn.Sequential(
        fn.Linear(4, 8), fn.Tanh(),
        fn.Residual(fn.Sequential(
            fn.Linear(8, 20), fn.Tanh(), fn.Linear(20, 3), fn.Sigmoid(),
            fn.Residual(fn.Sequential(fn.Linear(3, 3), fn.Tanh())), fn.Linear(3, 8))),
        fn.Concat(fn.Sequential(fn.Linear(8, 16), fn.Tanh(), fn.Linear(16, 2)), fn.Linear(8, 5)),
        fn.Tanh(), fn.Linear(7, 3), dtype="float64")
    x = np.random.default_rng(2).standard_normal((5, 4))
    assert central_difference_check(model, x) < 1e-6


def test_resnet_gradients_in_both_modes():
    model = small_resnet(dtype="float64")
    x = np.random.default_rng(0).standard_normal((4, 2, 6, 6))
    assert central_difference_check(model, x) < 1e-5
    model.eval()
    assert central_difference_check(model, x) < 1e-5


def test_nested_sequential_is_only_a_description():
    inner = fn.Sequential(fn.Linear(3, 3))
    model = fn.Sequential(fn.Residual(inner))
    assert inner._handle is None
    assert list(model.state_dict()) == ["0.main.0.weight", "0.main.0.bias"]


def test_mismatched_residual_shapes_are_a_clear_error():
    with pytest.raises(ValueError, match="add needs inputs of one shape"):
        fn.Sequential(fn.Residual(fn.Conv2d(2, 4, 3, padding=1)), input_shape=(2, 5, 5))


def test_conv_model_needs_an_input_shape():
    model = fn.Sequential(fn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match=r"needs input_shape"):
        model.parameters()


# ---------------------------------------------------------------------- modes


def test_modes_switch_dropout_and_batch_norm():
    model = fn.Sequential(fn.Linear(8, 32), fn.BatchNorm1d(32), fn.Dropout(0.5), fn.Linear(32, 2))
    x = np.random.default_rng(0).random((16, 8), dtype=np.float32)
    assert model.training
    first, second = model(x), model(x)
    assert not np.array_equal(first, second)  # new dropout masks (and updated statistics)
    model.eval()
    assert not model.training
    np.testing.assert_array_equal(model(x), model(x))
    with model.mode(training=True):
        assert model.training
    assert not model.training
    model.train()
    before = model.state_dict()["1.num_batches_tracked"]
    model.predict(x)  # eval mode inside, training mode restored
    assert model.training
    assert model.state_dict()["1.num_batches_tracked"] == before


def test_batch_norm_running_statistics_follow_training():
    model = fn.Sequential(fn.Linear(3, 4), fn.BatchNorm1d(4, momentum=0.5))
    x = np.random.default_rng(0).standard_normal((32, 3)).astype(np.float32)
    hidden = x @ model.state_dict()["0.weight"].T + model.state_dict()["0.bias"]
    model(x)
    sd = model.state_dict()
    np.testing.assert_allclose(sd["1.running_mean"], 0.5 * hidden.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sd["1.running_var"], 0.5 + 0.5 * hidden.var(0, ddof=1), rtol=1e-4)
    assert sd["1.num_batches_tracked"].dtype == np.int64 and sd["1.num_batches_tracked"] == 1


# ---------------------------------------------------------------------- benchmark networks


BENCHMARK_NETWORKS = {
    "mlp_small_b32": (lambda: zoo.mlp(64, 10, (128, 128)), (64,), 32, "sgd"),
    "mlp_mnist_b128": (lambda: zoo.mlp(784, 10, (1024, 1024)), (784,), 128, "sgd"),
    "cnn_mnist_b64": (lambda: fn.Sequential(
        fn.Conv2d(1, 32, 3), fn.ReLU(), fn.Conv2d(32, 64, 3), fn.ReLU(), fn.MaxPool2d(2),
        fn.Dropout(0.25), fn.Flatten(), fn.Linear(9216, 128), fn.ReLU(), fn.Linear(128, 10),
        input_shape=(1, 28, 28)), (1, 28, 28), 64, "adam"),
    "resnet8_cifar_b128": (lambda: zoo.resnet((3, 32, 32), 10), (3, 32, 32), 128, "sgd"),
}


@pytest.mark.parametrize("name", list(BENCHMARK_NETWORKS))
def test_benchmark_networks_train(name):
    build, shape, batch, optimizer = BENCHMARK_NETWORKS[name]
    model = build()
    opt = fn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) \
        if optimizer == "sgd" else fn.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = rng.random((batch,) + shape, dtype=np.float32)
    y = rng.integers(0, 10, batch)
    losses = [model.train_step(x, y, fn.CrossEntropyLoss(), opt) for _ in range(4)]
    assert all(np.isfinite(losses))
    assert abs(losses[0] - np.log(10)) < 0.5
    assert losses[-1] < losses[0]  # the same batch four times: the loss must fall


@pytest.mark.parametrize("gemm", ["installed", "builtin"])
@pytest.mark.parametrize("threads", [1, 2])
def test_steady_state_training_allocates_nothing(threads, gemm):
    """Buffers are planned when a batch size first appears; later steps of that size (and
    smaller ones) allocate nothing in the C core, with the BLAS or with the built-in GEMM, whose
    packing buffers are kept per thread."""
    from fastnet import _blas, _core

    before_threads, before_gemm = fn.get_num_threads(), _blas.source
    fn.set_num_threads(threads)
    if gemm == "builtin":
        _core.uninstall_blas()
    try:
        model = small_resnet()
        opt = fn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        rng = np.random.default_rng(0)
        x = rng.random((8, 2, 6, 6), dtype=np.float32)
        y = rng.integers(0, 3, 8)
        model.train_step(x, y, fn.CrossEntropyLoss(), opt)
        count = _core.allocations()
        for _ in range(5):
            model.train_step(x, y, fn.CrossEntropyLoss(), opt)
        model.train_step(x[:5], y[:5], fn.CrossEntropyLoss(), opt)
        assert _core.allocations() == count
    finally:
        fn.set_num_threads(before_threads)
        if gemm == "builtin" and before_gemm != "builtin":
            _blas.install()


def test_released_gemm_buffers_are_allocated_again_and_give_the_same_bits():
    """release_thread_buffers frees the built-in GEMM's per-thread packing buffers; the next
    step allocates them again and computes what it would have computed."""
    from fastnet import _blas, _core

    before_gemm = _blas.source
    _core.uninstall_blas()
    try:
        rng = np.random.default_rng(0)
        x = rng.random((8, 2, 6, 6), dtype=np.float32)
        y = rng.integers(0, 3, 8)
        losses = []
        for release in (False, True):
            model = small_resnet()
            opt = fn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            model.train_step(x, y, fn.CrossEntropyLoss(), opt)
            if release:
                _core.release_thread_buffers()
                count = _core.allocations()
            losses.append(model.train_step(x, y, fn.CrossEntropyLoss(), opt))
            if release:
                assert _core.allocations() > count
        assert losses[0] == losses[1]
    finally:
        if before_gemm != "builtin":
            _blas.install()


def test_resnet8_has_the_benchmark_shape():
    model = zoo.resnet((3, 32, 32), 10)
    shapes = [shape for _, op, shape in model._core.node_info() if op == "conv2d"]
    assert shapes[0] == (16, 32, 32) and shapes[-1] == (64, 8, 8)
    assert model(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)
    assert "total:" in model.summary()


# ---------------------------------------------------------------------- folding


def trained_with_batch_norm(model, shape, steps=5):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16,) + shape).astype(np.float32)
    y = rng.integers(0, 3, 16)
    opt = fn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        model.train_step(x, y, fn.CrossEntropyLoss(), opt)
    return x


def test_folding_preserves_predictions():
    model = small_resnet()
    x = trained_with_batch_norm(model, (2, 6, 6))
    folded = fn.fold_batchnorm(model)
    assert not folded.training
    names = [type(layer).__name__ for layer in folded.layers]
    assert "BatchNorm2d" not in names
    assert not any(k.endswith("running_mean") for k in folded.state_dict())
    np.testing.assert_allclose(folded(x), model.eval()(x), rtol=1e-4, atol=1e-5)


def test_folding_linear_and_batch_norm_1d():
    model = fn.Sequential(fn.Linear(4, 8, bias=False), fn.BatchNorm1d(8), fn.ReLU(),
                          fn.Linear(8, 3))
    x = trained_with_batch_norm(model, (4,))
    folded = fn.fold_batchnorm(model)
    assert [type(layer).__name__ for layer in folded.layers] == ["Linear", "ReLU", "Linear"]
    np.testing.assert_allclose(folded(x), model.eval()(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- files


def test_save_load_keeps_buffers_and_the_tree(tmp_path):
    model = small_resnet()
    x = trained_with_batch_norm(model, (2, 6, 6))
    path = tmp_path / "resnet.safetensors"
    fn.save(model, path)
    loaded = fn.load(path)
    assert repr(loaded.layers) == repr(model.layers)
    for name, value in model.state_dict().items():
        assert np.array_equal(loaded.state_dict()[name], value), name
    np.testing.assert_array_equal(loaded.eval()(x), model.eval()(x))


# ---------------------------------------------------------------------- the command line


def test_cli_cnn_reaches_98_percent_on_digits(tmp_path):
    out = tmp_path / "cnn"
    assert main(["train", "--quiet", "--model", "cnn", "--out", str(out)]) == 0
    result = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["split"] == "test" and result["accuracy"] >= 0.98
    model = fn.load(out / "model.safetensors")
    assert model.input_shape == (1, 8, 8)


def test_cli_resnet_trains_with_batch_norm(tmp_path):
    out = tmp_path / "resnet"
    assert main(["train", "--quiet", "--model", "resnet", "--epochs", "8", "--out",
                 str(out)]) == 0
    result = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["accuracy"] > 0.9
    assert any(k.endswith("running_var") for k in fn.load(out / "model.safetensors").state_dict())


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_cli_model_description_files(tmp_path, suffix):
    layers = [{"type": "Conv2d", "in_channels": 1, "out_channels": 8, "kernel_size": 3,
               "padding": 1}, {"type": "ReLU"}, {"type": "Flatten"},
              {"type": "Linear", "in_features": 512, "out_features": 10}]
    path = tmp_path / f"model{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"input_shape": [1, 8, 8], "layers": layers}))
    else:
        text = "input_shape = [1, 8, 8]\n"
        for layer in layers:
            text += "\n[[layers]]\n" + "".join(
                f"{k} = {json.dumps(v)}\n" for k, v in layer.items())
        path.write_text(text)
    out = tmp_path / "run"
    assert main(["train", "--quiet", "--model", str(path), "--epochs", "5", "--out",
                 str(out)]) == 0
    model = fn.load(out / "model.safetensors")
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2d", "ReLU", "Flatten",
                                                                "Linear"]


def test_cli_bad_model_description(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"layers": [{"type": "Conv3d"}]}))
    assert main(["train", "--quiet", "--model", str(path)]) == 2
    assert "unknown layer type 'Conv3d'" in capsys.readouterr().err
