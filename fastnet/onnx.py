"""ONNX export: a fastnet model as an ONNX graph for inference runtimes (onnxruntime and others).

Each node of the compiled graph (:meth:`fastnet.Sequential.compiled`) becomes one ONNX operator,
and each tensor of :meth:`fastnet.Sequential.state_dict` an initializer under the same name:

=======================  ========================================================================
fastnet op               ONNX
=======================  ========================================================================
``linear``               ``Gemm`` (``transB=1``), after ``Flatten`` when its input is not flat
``conv2d``               ``Conv`` (``pads`` as ``[top, left, bottom, right]``, ``strides``,
                         ``dilations``, ``group``)
``max_pool2d``           ``MaxPool``
``avg_pool2d``           ``AveragePool`` with ``count_include_pad=1`` (padding counts, as in
                         fastnet)
``global_avg_pool2d``    ``GlobalAveragePool``
``batch_norm``           ``BatchNormalization`` in inference form (running statistics)
``dropout``              nothing: the identity at inference
``local_response_norm``  ``LRN`` for odd sizes on ``(C, H, W)`` samples; otherwise the same
                         formula from ``Mul``, a ``Conv`` that sums the window, ``Pow`` and
                         ``Div`` (for even sizes ONNX's window sits one channel higher than
                         fastnet's and PyTorch's, and onnxruntime runs ``LRN`` only for odd
                         sizes on 4-D inputs)
``flatten``              ``Flatten`` (``axis=1``)
``relu``, ...            ``Relu``, ``LeakyRelu``, ``Sigmoid``, ``Tanh``
``add``, ``concat``      ``Add`` (``Sum`` for more than two inputs), ``Concat`` (``axis=1``)
=======================  ========================================================================

The exported graph computes what ``model.eval()(x)`` computes, whatever mode the model is in. Its
input is ``input``, of shape ``(N, *model.input_shape)`` with a dynamic batch dimension ``N``, and
its output ``output``, of the last node's shape (``model(x)`` returns the same values flattened to
``(N, features)``); the element type is the model's (float32 or float64).

Exporting needs the ``onnx`` package (``pip install fastnet[onnx]``); fastnet itself does not.
"""
import os

import numpy as np

from fastnet.io import write_atomic
from fastnet.model import Sequential

#: The opset used unless another is asked for.
DEFAULT_OPSET = 17
#: The oldest opset supported: the operators used have had their present inputs and attributes
#: since.
MIN_OPSET = 13

_INSTALL_HINT = "pip install fastnet[onnx]"


def _import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper  # noqa: F401
    except ImportError as error:
        raise ImportError(f"exporting to ONNX needs the onnx package: {_INSTALL_HINT} "
                          f"(or pip install onnx)") from error
    return onnx


class _GraphBuilder:
    """Collects the ONNX nodes and initializers of one export."""

    def __init__(self, onnx, state, dtype):
        self.onnx = onnx
        self.state = state
        self.dtype = dtype
        self.nodes = []
        self.initializers = {}

    def tensor(self, name):
        """The state-dict tensor ``name`` as an initializer; returns its name."""
        if name not in self.initializers:
            array = np.ascontiguousarray(self.state[name], dtype=self.dtype)
            self.initializers[name] = self.onnx.numpy_helper.from_array(array, name)
        return name

    def constant(self, name, value):
        """An initializer made here (not in the state dict), in the model's dtype."""
        if name in self.initializers or name in self.state:
            raise ValueError(f"ONNX export: tensor name {name!r} is already taken")
        array = np.ascontiguousarray(np.asarray(value, dtype=self.dtype))
        self.initializers[name] = self.onnx.numpy_helper.from_array(array, name)
        return name

    def add(self, op_type, inputs, output, name, **attributes):
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [output], name=name,
                                                     **attributes))
        return output


def _pads(padding):
    """fastnet's ``[ph, pw]`` as ONNX's ``[top, left, bottom, right]``."""
    return [int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1])]


def _linear(b, node, inputs, output, in_shape):
    name, x = node["name"], inputs[0]
    if len(in_shape) != 1:  # fastnet's linear reads any input as flat features
        x = b.add("Flatten", [x], f"{name}.flat", f"{name}.flatten", axis=1)
    args = [x, b.tensor(f"{name}.weight")]
    if node.get("bias", True):
        args.append(b.tensor(f"{name}.bias"))
    return b.add("Gemm", args, output, name, transB=1)


def _conv2d(b, node, inputs, output, in_shape):
    name = node["name"]
    args = [inputs[0], b.tensor(f"{name}.weight")]
    if node.get("bias", True):
        args.append(b.tensor(f"{name}.bias"))
    return b.add("Conv", args, output, name, kernel_shape=list(node["kernel_size"]),
                 strides=list(node["stride"]), pads=_pads(node["padding"]),
                 dilations=list(node["dilation"]), group=int(node["groups"]))


def _max_pool2d(b, node, inputs, output, in_shape):
    return b.add("MaxPool", inputs, output, node["name"], kernel_shape=list(node["kernel_size"]),
                 strides=list(node["stride"]), pads=_pads(node["padding"]))


def _avg_pool2d(b, node, inputs, output, in_shape):
    return b.add("AveragePool", inputs, output, node["name"],
                 kernel_shape=list(node["kernel_size"]), strides=list(node["stride"]),
                 pads=_pads(node["padding"]), count_include_pad=1)


def _batch_norm(b, node, inputs, output, in_shape):
    name, channels = node["name"], int(node["num_features"])
    if node.get("affine", True):
        scale, shift = b.tensor(f"{name}.weight"), b.tensor(f"{name}.bias")
    else:
        scale = b.constant(f"{name}.unit_scale", np.ones(channels))
        shift = b.constant(f"{name}.zero_shift", np.zeros(channels))
    args = [inputs[0], scale, shift, b.tensor(f"{name}.running_mean"),
            b.tensor(f"{name}.running_var")]
    return b.add("BatchNormalization", args, output, name, epsilon=float(node["eps"]))


def _local_response_norm(b, node, inputs, output, in_shape):
    name, x = node["name"], inputs[0]
    size, alpha, beta, k = (int(node["size"]), float(node["alpha"]), float(node["beta"]),
                            float(node["k"]))
    if size % 2 == 1 and len(in_shape) == 3:
        # ONNX sums channels [c - (size-1)/2, c + (size-1)/2]: fastnet's window for odd sizes.
        return b.add("LRN", [x], output, name, size=size, alpha=alpha, beta=beta, bias=k)
    # fastnet's window is [c - size/2, c + (size-1)/2]; for even sizes ONNX's LRN would take
    # [c - size/2 + 1, c + size/2]. Sum the window with a 1x1 convolution by a band matrix.
    channels = int(in_shape[0])
    band = np.zeros((channels, channels) + (1,) * (len(in_shape) - 1))
    for c in range(channels):
        band[c, max(0, c - size // 2):min(channels, c + (size - 1) // 2 + 1)] = 1
    squared = b.add("Mul", [x, x], f"{name}.squared", f"{name}.square")
    window = b.add("Conv", [squared, b.constant(f"{name}.window", band)], f"{name}.window_sum",
                   f"{name}.sum_window", kernel_shape=[1] * (len(in_shape) - 1))
    scaled = b.add("Mul", [window, b.constant(f"{name}.alpha_over_size", alpha / size)],
                   f"{name}.scaled", f"{name}.scale")
    base = b.add("Add", [scaled, b.constant(f"{name}.k", k)], f"{name}.base", f"{name}.add_k")
    divisor = b.add("Pow", [base, b.constant(f"{name}.beta", beta)], f"{name}.divisor",
                    f"{name}.power")
    return b.add("Div", [x, divisor], output, name)


def _unary(op_type, **attributes):
    def convert(b, node, inputs, output, in_shape):
        values = {key: float(node[field]) for key, field in attributes.items()}
        return b.add(op_type, inputs, output, node["name"], **values)
    return convert


def _add(b, node, inputs, output, in_shape):
    return b.add("Add" if len(inputs) == 2 else "Sum", inputs, output, node["name"])


def _concat(b, node, inputs, output, in_shape):
    return b.add("Concat", inputs, output, node["name"], axis=1)


def _flatten(b, node, inputs, output, in_shape):
    return b.add("Flatten", inputs, output, node["name"], axis=1)


def _global_avg_pool2d(b, node, inputs, output, in_shape):
    return b.add("GlobalAveragePool", inputs, output, node["name"])


_CONVERTERS = {
    "linear": _linear,
    "conv2d": _conv2d,
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "global_avg_pool2d": _global_avg_pool2d,
    "batch_norm": _batch_norm,
    "local_response_norm": _local_response_norm,
    "flatten": _flatten,
    "relu": _unary("Relu"),
    "leaky_relu": _unary("LeakyRelu", alpha="negative_slope"),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "add": _add,
    "concat": _concat,
}
_PASS_THROUGH = {"dropout"}  # the identity at inference


def to_onnx(model, opset=DEFAULT_OPSET):
    """The ONNX model (an ``onnx.ModelProto``) for ``model`` in inference form, checked with
    ``onnx.checker``. :func:`export_onnx` writes it to a file; see there for the arguments."""
    if not isinstance(model, Sequential):
        raise TypeError(f"export_onnx expects a fastnet model (fastnet.Sequential), got "
                        f"{type(model).__name__}")
    onnx = _import_onnx()
    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or \
            not MIN_OPSET <= opset <= latest:
        raise ValueError(f"opset must be an integer from {MIN_OPSET} to {latest} (the newest "
                         f"this onnx {onnx.__version__} knows), got {opset!r}")
    opset = int(opset)
    if model.input_shape is None:
        raise ValueError(model._needs_input_shape())

    graph = model.compiled()
    shapes = {"input": tuple(model.input_shape)}
    for name, _, shape in model._core.node_info():
        shapes[name] = tuple(shape)
    builder = _GraphBuilder(onnx, model.state_dict(), model.dtype)
    values = {"input": "input"}  # fastnet node name -> ONNX tensor holding its output
    last = graph.nodes[-1]["name"]
    for node in graph.nodes:
        name, op = node["name"], node["op"]
        inputs = [values[i] for i in node.get("inputs", [])]
        output = "output" if name == last else name
        if op in _PASS_THROUGH:
            values[name] = builder.add("Identity", inputs, output, name) if name == last \
                else inputs[0]
            continue
        convert = _CONVERTERS.get(op)
        if convert is None:
            supported = ", ".join(sorted(set(_CONVERTERS) | _PASS_THROUGH))
            raise ValueError(f"node {name!r}: op {op!r} has no ONNX export (exported ops: "
                             f"{supported})")
        values[name] = convert(builder, node, inputs, output, shapes[node["inputs"][0]])

    helper = onnx.helper
    element = helper.np_dtype_to_tensor_dtype(model.dtype)
    onnx_graph = helper.make_graph(
        builder.nodes, "fastnet",
        [helper.make_tensor_value_info("input", element, ["N", *model.input_shape])],
        [helper.make_tensor_value_info("output", element, ["N", *shapes[last]])],
        initializer=list(builder.initializers.values()))
    opsets = [helper.make_opsetid("", opset)]
    from fastnet import __version__

    proto = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="fastnet",
                              producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path, opset=DEFAULT_OPSET):
    """Writes ``model`` as an ONNX file for inference, replacing ``path`` atomically.

    Parameters
    ----------
    model : fastnet.Sequential
        Any fastnet model (every layer type exports; dropout is left out). The graph computes
        what ``model.eval()(x)`` does: batch norm with its running statistics.
    path : str or os.PathLike
        The ``.onnx`` file to write.
    opset : int
        The ONNX opset (default 17; from 13 to the newest the installed ``onnx`` knows).

    Returns
    -------
    onnx.ModelProto
        The exported model (input ``input``, output ``output``, batch dimension ``N``).

    Raises
    ------
    ImportError
        When the ``onnx`` package is missing (``pip install fastnet[onnx]``).
    ValueError
        For an opset out of range or a node with no ONNX form.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, onnxruntime, fastnet as fn
    >>> model = fn.Sequential(fn.Conv2d(1, 4, 3, padding=1), fn.BatchNorm2d(4), fn.ReLU(),
    ...                       fn.Flatten(), fn.Linear(4 * 8 * 8, 10), input_shape=(1, 8, 8))
    >>> path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    >>> _ = fn.export_onnx(model, path)
    >>> session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    >>> x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    >>> (out,) = session.run(None, {"input": x})
    >>> bool(np.allclose(out, model.eval()(x), rtol=1e-4, atol=1e-5))
    True
    """
    proto = to_onnx(model, opset)
    path = os.fspath(path)
    data = proto.SerializeToString()
    write_atomic(path, [data])  # a failure never leaves half a file
    return proto
