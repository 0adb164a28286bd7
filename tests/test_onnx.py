"""ONNX export (fastnet.export_onnx): every layer type exports, and onnxruntime computes from the
file what the model computes in eval mode. Needs onnx and onnxruntime (skipped without them),
except for the error raised when onnx is missing."""
import os
import sys

import numpy as np
import pytest

import fastnet as fn
import fastnet.onnx as fn_onnx
from fastnet import zoo
from fastnet.layers import Layer


@pytest.fixture(scope="module")
def onnx():
    return pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def ort(onnx):
    return pytest.importorskip("onnxruntime")


def trained(model, steps=3, seed=0):
    """The model after a few SGD steps on random data (batch norm statistics and weights away
    from their initial values), in eval mode."""
    rng = np.random.default_rng(seed)
    opt = fn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with model.mode(training=False):
        classes = model(np.zeros((1, *model.input_shape), model.dtype)).shape[1]
    model.train()
    for _ in range(steps):
        x = rng.standard_normal((8, *model.input_shape)).astype(model.dtype)
        model.train_step(x, rng.integers(0, classes, 8), fn.CrossEntropyLoss(), opt)
    return model.eval()


def run(ort, path, x):
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": x})
    return out


def assert_exports(ort, model, tmp_path, opset=17, batch_sizes=(1, 5)):
    """Exports ``model`` and compares onnxruntime's output with ``model.eval()(x)`` (which is
    flat, ``(N, features)``, where the graph's output keeps the last node's shape)."""
    path = tmp_path / "model.onnx"
    fn.export_onnx(model, path, opset=opset)
    model.eval()
    output_shape = tuple(model._core.node_info()[-1][2])
    rng = np.random.default_rng(42)
    for n in batch_sizes:
        x = rng.standard_normal((n, *model.input_shape)).astype(model.dtype)
        out = run(ort, path, x)
        assert out.dtype == model.dtype and out.shape == (n, *output_shape)
        np.testing.assert_allclose(out.reshape(n, -1), model(x), rtol=1e-4, atol=1e-5)


def mlp():
    return zoo.mlp(64, 10, hidden=(32, 16))


def cnn():
    return zoo.cnn((1, 8, 8), 10)


def resnet():
    return zoo.resnet((3, 8, 8), 4, widths=(4, 8, 16))


NETWORKS = {"mlp": mlp, "cnn": cnn, "resnet": resnet}


# ---------------------------------------------------------------------- networks


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_networks_match_onnxruntime(ort, tmp_path, network):
    assert_exports(ort, trained(NETWORKS[network]()), tmp_path)


@pytest.mark.parametrize("opset", [fn_onnx.MIN_OPSET, 17])
def test_resnet_exports_at_other_opsets(ort, onnx, tmp_path, opset):
    model = trained(resnet())
    assert_exports(ort, model, tmp_path, opset=opset)
    proto = onnx.load(os.fspath(tmp_path / "model.onnx"))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", opset)]


def test_batch_norm_is_in_inference_form(ort, onnx, tmp_path):
    model = trained(resnet(), steps=5)
    proto = fn.export_onnx(model, tmp_path / "model.onnx")
    batch_norms = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert len(batch_norms) == 9
    for node in batch_norms:
        assert len(node.output) == 1  # no training outputs
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes.get("training_mode", 0) == 0
        assert attributes["epsilon"] == pytest.approx(1e-5)
    state = model.state_dict()
    assert np.abs(state["1.running_mean"]).max() > 1e-3  # statistics really moved
    assert int(state["1.num_batches_tracked"]) == 5


def test_every_activation_and_batch_norm_1d(ort, tmp_path):
    model = fn.Sequential(fn.Linear(12, 16), fn.BatchNorm1d(16), fn.LeakyReLU(0.2),
                          fn.Linear(16, 16), fn.Sigmoid(), fn.Dropout(0.3),
                          fn.Linear(16, 8, bias=False), fn.BatchNorm1d(8, affine=False, eps=1e-3),
                          fn.Tanh(), fn.Linear(8, 5), fn.ReLU())
    assert_exports(ort, trained(model), tmp_path)


def test_float64_model(ort, onnx, tmp_path):
    model = trained(fn.Sequential(fn.Linear(12, 16), fn.BatchNorm1d(16), fn.Tanh(),
                                  fn.Linear(16, 5), dtype="float64"))
    proto = fn.export_onnx(model, tmp_path / "model.onnx")
    double = onnx.TensorProto.DOUBLE
    assert proto.graph.input[0].type.tensor_type.elem_type == double
    assert {t.data_type for t in proto.graph.initializer} == {double}
    x = np.random.default_rng(0).standard_normal((5, 12))
    np.testing.assert_allclose(run(ort, tmp_path / "model.onnx", x), model(x),
                               rtol=1e-12, atol=1e-13)


def test_float64_convolutional_model_is_valid(onnx, tmp_path):
    # onnxruntime's CPU kernels run Conv in float32 only, so this is checked, not run.
    model = trained(zoo.resnet((2, 6, 6), 3, widths=(4, 6), dtype="float64"))
    proto = fn.export_onnx(model, tmp_path / "model.onnx")
    onnx.checker.check_model(onnx.load(os.fspath(tmp_path / "model.onnx")), full_check=True)
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.DOUBLE}
    for name, array in model.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            stored = [t for t in proto.graph.initializer if t.name == name]
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(stored[0]), array)


# ---------------------------------------------------------------------- single layers


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_local_response_norm(ort, tmp_path, size):
    # Odd sizes export as LRN; even ones, whose window ONNX centres differently, as the formula.
    model = fn.Sequential(fn.Conv2d(3, 7, 3, padding=1),
                          fn.LocalResponseNorm(size, alpha=0.5, beta=0.75, k=2.0),
                          fn.Flatten(), fn.Linear(7 * 5 * 5, 3), input_shape=(3, 5, 5))
    assert_exports(ort, model, tmp_path)
    ops = [node.op_type for node in fn.export_onnx(model, tmp_path / "model.onnx").graph.node]
    assert ("LRN" in ops) == (size % 2 == 1)
    assert_exports(ort, fn.Sequential(fn.LocalResponseNorm(size, alpha=0.3, k=1.5),
                                      input_shape=(6, 4)), tmp_path)


def test_pooling_with_padding(ort, tmp_path):
    model = fn.Sequential(fn.Conv2d(2, 4, 3), fn.AvgPool2d(3, stride=2, padding=1),
                          fn.MaxPool2d(3, stride=1, padding=1), fn.AvgPool2d((2, 3), stride=(1, 2)),
                          fn.AdaptiveAvgPool2d(1), fn.Flatten(), input_shape=(2, 11, 9))
    assert_exports(ort, model, tmp_path)
    # Negative inputs: padding must count as zeros for the average and be ignored by the max.
    model = fn.Sequential(fn.MaxPool2d(3, stride=2, padding=1), fn.AvgPool2d(3, padding=1),
                          input_shape=(2, 7, 7))
    assert_exports(ort, model, tmp_path)


def test_grouped_dilated_and_strided_convolutions(ort, tmp_path):
    model = fn.Sequential(
        fn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2),
        fn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),  # depthwise
        fn.Conv2d(8, 6, (3, 1), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
        fn.ReLU(), fn.Linear(6 * 2 * 2, 3),  # a linear layer reads (C, H, W) as flat features
        input_shape=(4, 7, 7))
    assert_exports(ort, trained(model), tmp_path)


def test_concat_and_residual_branches(ort, tmp_path):
    inception = fn.Concat(
        fn.Conv2d(4, 3, 1),
        fn.Sequential(fn.Conv2d(4, 2, 1), fn.ReLU(), fn.Conv2d(2, 5, 3, padding=1)),
        fn.Sequential(fn.MaxPool2d(3, stride=1, padding=1), fn.Conv2d(4, 2, 1)))
    model = fn.Sequential(
        inception, fn.BatchNorm2d(10), fn.ReLU(),
        fn.Residual(fn.Sequential(fn.Conv2d(10, 10, 3, padding=1), fn.Tanh())),  # identity
        fn.Concat(fn.Sequential(fn.AdaptiveAvgPool2d(1), fn.Flatten()),
                  fn.Sequential(fn.Conv2d(10, 1, 1), fn.Flatten())),
        fn.Linear(10 + 36, 4), input_shape=(4, 6, 6))
    assert_exports(ort, trained(model), tmp_path)


class _AddThree(Layer):
    """``a(x) + b(x) + x`` as one add node of three inputs (the spec allows any number)."""

    op = "add"

    def __init__(self, a, b):
        self.a, self.b = a, b

    def compile(self, name, inputs, graph):
        a = self.a.compile(f"{name}.a", inputs, graph)
        b = self.b.compile(f"{name}.b", inputs, graph)
        graph.add(self, name, {"name": name, "op": "add", "inputs": [a, b, *inputs]})
        return name

    def children(self):
        return [self.a, self.b]


def test_add_of_more_than_two_inputs(ort, onnx, tmp_path):
    model = fn.Sequential(fn.Linear(6, 6), _AddThree(fn.Linear(6, 6), fn.Tanh()), fn.Linear(6, 2))
    proto = fn.export_onnx(model, tmp_path / "model.onnx")
    assert "Sum" in [node.op_type for node in proto.graph.node]
    assert_exports(ort, model, tmp_path)


def test_dropout_is_left_out(ort, onnx, tmp_path):
    model = fn.Sequential(fn.Linear(6, 6), fn.Dropout(0.5), fn.ReLU(), fn.Dropout(0.2))
    proto = fn.export_onnx(model, tmp_path / "model.onnx")
    assert [node.op_type for node in proto.graph.node] == ["Gemm", "Relu", "Identity"]
    assert_exports(ort, model, tmp_path)
    assert_exports(ort, fn.Sequential(fn.Dropout(0.5), input_shape=(3,)), tmp_path)


# ---------------------------------------------------------------------- the file


def test_graph_interface_names_and_initializers(onnx, tmp_path):
    model = trained(resnet())
    assert model.training is False
    model.train()
    proto = fn.export_onnx(model, tmp_path / "model.onnx")
    assert model.training is True  # exporting leaves the mode alone
    (graph_input,), (graph_output,) = proto.graph.input, proto.graph.output
    assert graph_input.name == "input" and graph_output.name == "output"
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 8, 8]
    assert [d.dim_value for d in graph_output.type.tensor_type.shape.dim[1:]] == [4]
    state = model.state_dict()
    expected = {name for name in state if not name.endswith("num_batches_tracked")}
    assert {t.name for t in proto.graph.initializer} == expected
    for tensor in proto.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(tensor), state[tensor.name])
    assert proto.producer_name == "fastnet" and proto.producer_version == fn.__version__
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # no temporary file left behind


def test_train_mode_model_exports_eval_behaviour(ort, tmp_path):
    model = trained(cnn())
    model.train()
    fn.export_onnx(model, tmp_path / "model.onnx")
    x = np.random.default_rng(3).standard_normal((4, 1, 8, 8)).astype(np.float32)
    with model.mode(training=False):
        expected = model(x)
    np.testing.assert_allclose(run(ort, tmp_path / "model.onnx", x), expected,
                               rtol=1e-4, atol=1e-5)


def test_export_replaces_an_existing_file(ort, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a model")
    model = mlp()
    fn.export_onnx(model, str(path))
    x = np.ones((2, 64), np.float32)
    np.testing.assert_allclose(run(ort, path, x), model.eval()(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- errors


def test_unsupported_opset_is_a_clear_error(onnx, tmp_path):
    for opset in (fn_onnx.MIN_OPSET - 1, onnx.defs.onnx_opset_version() + 1, 17.0, "17", True):
        with pytest.raises(ValueError, match="opset must be an integer from 13"):
            fn.export_onnx(mlp(), tmp_path / "model.onnx", opset=opset)
    assert not os.listdir(tmp_path)


def test_an_op_without_onnx_form_is_a_clear_error(onnx, tmp_path, monkeypatch):
    # Stands for an op the C core knows and the exporter does not (yet).
    converters = dict(fn_onnx._CONVERTERS)
    del converters["tanh"]
    monkeypatch.setattr(fn_onnx, "_CONVERTERS", converters)
    model = fn.Sequential(fn.Linear(4, 4), fn.Tanh(), fn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"node '1': op 'tanh' has no ONNX export \(exported "
                                         r"ops: add, avg_pool2d"):
        fn.export_onnx(model, tmp_path / "model.onnx")
    assert not os.listdir(tmp_path)


def test_not_a_model_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="export_onnx expects a fastnet model"):
        fn.export_onnx(fn.Linear(4, 2), tmp_path / "model.onnx")


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch):
    # Runs with or without onnx installed: a None entry makes the import fail.
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install fastnet\[onnx\]"):
        fn.export_onnx(mlp(), tmp_path / "model.onnx")
    assert not os.listdir(tmp_path)
