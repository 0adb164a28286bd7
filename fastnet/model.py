"""Models: a Python description over a C model handle that owns parameters, buffers and state."""
import contextlib
import json
import numbers
from collections import OrderedDict

import numpy as np

from fastnet import _core
from fastnet.init import check_scheme
from fastnet.layers import Graph, Layer, layer_from_config
from fastnet.losses import Loss

SPEC_FORMAT = "fastnet.model"
SPEC_VERSION = 1
DTYPES = {"float32": np.float32, "float64": np.float64}


def _dtype_name(dtype):
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return name


def adopt(layer):
    """A Sequential placed inside another model is only a description there: drop the C model it
    built for itself (it would rebuild one if used on its own again)."""
    if isinstance(layer, Sequential):
        layer._handle = None
        for name in Sequential._BOUND:
            layer.__dict__.pop(name, None)


def first_leaf(layer):
    """The first layer that is one node (not a container) in a layer tree."""
    while layer.children():
        layer = layer.children()[0]
    return layer


def layers_from_spec(spec):
    """The layer list of a spec: its ``layers`` tree if Python wrote it, else one layer per node
    of a plain chain (a spec written by hand or by a C program)."""
    if "layers" in spec:
        return [layer_from_config(c) for c in spec["layers"]]
    from fastnet.layers import LAYER_TYPES

    by_op = {cls.op: cls for cls in LAYER_TYPES.values()}
    by_op["batch_norm"] = LAYER_TYPES["BatchNorm2d"]
    layers, previous = [], "input"
    for node in spec["nodes"]:
        if node.get("inputs", [previous]) != [previous] or node.get("op") not in by_op:
            raise ValueError("this model's spec is a graph that fastnet.Sequential cannot "
                             "describe; use fastnet._core.Model for it")
        attributes = {k: v for k, v in node.items() if k not in ("name", "op", "inputs")}
        layers.append(by_op[node["op"]](**attributes))
        previous = node["name"]
    return layers


class Parameter:
    """A named parameter of a model: ``data`` and ``grad`` are numpy views into the model's
    parameter and gradient arenas (writing to ``data`` changes the model)."""

    __slots__ = ("name", "data", "grad", "model")

    def __init__(self, name, data, grad, model):
        self.name, self.data, self.grad, self.model = name, data, grad, model

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"


class Sequential(Layer):
    """A stack of layers, each feeding the next, trained and run by the C core.

    Parameters
    ----------
    *layers : Layer
        The layers, first to last. The last one's output is the logits.
    dtype : {"float32", "float64"}
        Element type of parameters and activations. float64 is for gradient checks.
    seed : int
        Seed of the parameter initialisation (PyTorch's default scheme, or the layers' and
        ``init``'s); the same seed gives the same weights whatever the thread count.
    input_shape : tuple of int, optional
        Per-sample input shape; inferred from the first layer when it fixes one (``Linear``).
    init, bias_init : str or dict, optional
        Default initialisation schemes (see :mod:`fastnet.init`) of the weights and biases of
        every ``Linear`` and ``Conv2d`` in the model that has none of its own.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> model = fn.Sequential(fn.Linear(64, 32), fn.ReLU(), fn.Linear(32, 10))
    >>> opt = fn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> x = np.random.default_rng(0).random((16, 64), dtype=np.float32)
    >>> y = np.arange(16) % 10
    >>> loss = model.train_step(x, y, fn.CrossEntropyLoss(), opt)
    >>> model(x).shape
    (16, 10)
    """

    def __init__(self, *layers, dtype="float32", seed=0, input_shape=None, init=None,
                 bias_init=None):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} is not a fastnet layer: {layer!r}")
            adopt(layer)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**53:
            raise ValueError(f"seed must be an integer in [0, 2**53), got {seed!r}")
        self.layers = list(layers)
        self.dtype = np.dtype(DTYPES[_dtype_name(dtype)])
        self.seed = int(seed)
        self.init = check_scheme(init, "Sequential init")
        self.bias_init = check_scheme(bias_init, "Sequential bias_init", bias=True)
        if input_shape is None:
            input_shape = self.input_shape_from_layers()
        elif isinstance(input_shape, numbers.Integral):
            input_shape = (input_shape,)
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        if self.input_shape is not None and (
                not 1 <= len(self.input_shape) <= 3 or min(self.input_shape) < 1):
            raise ValueError(f"input_shape must be 1 to 3 positive sizes, got {input_shape!r}")
        self.training = True
        self._handle = None
        # Built now when the input shape is known; a Sequential nested in another model (the
        # main path of a Residual, say) is only a description and is never built itself.
        if self.input_shape is not None:
            self._build()

    # ------------------------------------------------------------------ as a layer

    def input_shape_from_layers(self):
        return self.layers[0].fixed_input_shape()

    def fixed_input_shape(self):
        return self.input_shape

    def compile(self, name, inputs, graph):
        graph.add(self, name)
        prefix = f"{name}." if name else ""
        first = len(graph.nodes)
        for i, layer in enumerate(self.layers):
            inputs = [layer.compile(f"{prefix}{i}", inputs, graph)]
        # The default schemes go to the linear and convolution nodes of this subtree that have
        # none of their own (a nested Sequential has given its defaults already).
        for node in graph.nodes[first:]:
            if node["op"] in ("linear", "conv2d"):
                if self.init is not None:
                    node.setdefault("init", self.init)
                if self.bias_init is not None and node.get("bias", True):
                    node.setdefault("bias_init", self.bias_init)
        return inputs[0]

    def config(self):
        config = {"type": "Sequential", "layers": [layer.config() for layer in self.layers]}
        for key in ("init", "bias_init"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        return config

    def children(self):
        return list(self.layers)

    # ------------------------------------------------------------------ construction

    def compiled(self):
        """The layer tree compiled: a :class:`fastnet.layers.Graph` (nodes and layer names)."""
        graph = Graph()
        self.compile("", ["input"], graph)
        return graph

    def spec(self):
        """The model spec (a JSON-able dict) that the C core builds the model from: the graph's
        nodes, and the layer tree (``layers``) from which Python rebuilds this object."""
        if self.input_shape is None:
            raise ValueError(self._needs_input_shape())
        spec = {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "input_shape": list(self.input_shape),
            "nodes": self.compiled().nodes,
            "layers": self.config()["layers"],
        }
        # The default schemes, for _from_core to rebuild this object (the nodes have them).
        for key in ("init", "bias_init"):
            if getattr(self, key) is not None:
                spec[key] = getattr(self, key)
        return spec

    def _needs_input_shape(self):
        return (f"Sequential starting with {first_leaf(self)!r} needs input_shape=(C, H, W) or "
                "(features,) to be built as a model")

    def _build(self):
        self._handle = _core.Model(json.dumps(self.spec()))
        self._bind()

    @property
    def _core(self):
        if self._handle is None:
            if self.input_shape is None:
                raise ValueError(self._needs_input_shape())
            self._build()
        return self._handle

    _BOUND = ("_params", "_buffers", "_integer_buffers", "_tensor_order", "_first_layer",
              "_optimizer", "_optimizer_version")

    def __getattr__(self, name):
        # What _bind sets exists once the C model is built: build it on first use (or raise the
        # error that says what is missing).
        if name in Sequential._BOUND and "_handle" in self.__dict__:
            self._core  # noqa: B018
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def _from_core(cls, core):
        """Wraps a C model (e.g. loaded from a file), rebuilding the layers from its spec."""
        spec = json.loads(core.spec)
        self = cls.__new__(cls)
        self.layers = layers_from_spec(spec)
        self.dtype = np.dtype(spec.get("dtype", "float32"))
        self.seed = int(spec.get("seed", 0))
        self.init, self.bias_init = spec.get("init"), spec.get("bias_init")
        self.input_shape = tuple(spec["input_shape"])
        self._handle = core
        self.training = core.training
        self._bind()
        return self

    def _bind(self):
        """Makes the numpy views of parameters, gradients and buffers."""
        arena, grads = self._core.param_arena(), self._core.grad_arena()
        buffers = self._core.buffer_arena()
        self._params = OrderedDict()
        self._buffers = OrderedDict()
        self._integer_buffers = set()
        self._tensor_order = []
        for name, shape, offset, is_buffer, is_integer in self._core.tensor_info():
            count = int(np.prod(shape))
            self._tensor_order.append(name)
            if is_buffer:
                self._buffers[name] = buffers[offset:offset + count].reshape(shape)
                if is_integer:
                    self._integer_buffers.add(name)
            else:
                self._params[name] = Parameter(
                    name, arena[offset:offset + count].reshape(shape),
                    grads[offset:offset + count].reshape(shape), self)
        self._optimizer = None
        self._optimizer_version = -1
        self._first_layer = f"{first_leaf(self)!r} (layer {self.compiled().names[id(first_leaf(self))]})"

    # ------------------------------------------------------------------ parameters

    def parameters(self):
        """The model's parameters (views into its arenas), in state-dict order."""
        return list(self._params.values())

    def named_parameters(self):
        return [(name, p) for name, p in self._params.items()]

    def num_parameters(self):
        return sum(p.data.size for p in self._params.values())

    def buffers(self):
        """Named buffers (state that is saved but not trained, such as batch norm's running
        statistics) as numpy views."""
        return OrderedDict(self._buffers)

    def state_dict(self):
        """Parameters and buffers as an ordered dict of numpy copies under PyTorch's names
        (``0.weight``, ``1.running_mean``); counts such as ``num_batches_tracked`` are int64."""
        out = OrderedDict()
        for name in self._tensor_order:
            if name in self._params:
                out[name] = self._params[name].data.copy()
            elif name in self._integer_buffers:
                out[name] = self._buffers[name].astype(np.int64)
            else:
                out[name] = self._buffers[name].copy()
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copies parameters in from a mapping of names to arrays (numpy, or anything
        ``np.asarray`` accepts, such as PyTorch tensors converted with ``.numpy()``).

        Every array is checked for its shape and for NaN/Inf before anything is written, so a bad
        state dict leaves the model unchanged. With ``strict``, missing and unexpected names are
        errors.
        """
        targets = {name: p.data for name, p in self._params.items()}
        targets.update(self._buffers)
        arrays = {}
        for name, value in state_dict.items():
            if name not in targets:
                if strict:
                    raise KeyError(f"unexpected parameter {name!r}; the model has "
                                   f"{self._tensor_order}")
                continue
            target = targets[name]
            array = np.asarray(value)
            if array.shape != target.shape:
                raise ValueError(f"parameter {name!r}: expected shape {target.shape}, "
                                 f"got {array.shape}")
            if array.dtype.kind not in "fiu":
                raise TypeError(f"parameter {name!r}: expected a numeric array, got {array.dtype}")
            with np.errstate(over="ignore", invalid="ignore"):
                finite = np.all(np.isfinite(array.astype(target.dtype)))
            if not finite:
                raise ValueError(f"parameter {name!r} contains NaN or Inf, or values that "
                                 f"overflow {target.dtype}")
            arrays[name] = array
        missing = [name for name in targets if name not in arrays]
        if strict and missing:
            raise KeyError(f"missing parameters: {missing}")
        for name, array in arrays.items():
            targets[name][...] = array

    def zero_grad(self):
        """Sets every gradient to zero (``backward`` accumulates)."""
        self._core.zero_grad()

    # ------------------------------------------------------------------ modes

    def train(self, mode=True):
        """Train mode (the default): batch norm uses batch statistics and updates its running
        ones, dropout is active. Returns the model."""
        self.training = bool(mode)
        if self._handle is not None:
            self._handle.training = self.training
        return self

    def eval(self):
        """Eval mode: batch norm uses its running statistics, dropout is the identity."""
        return self.train(False)

    # ------------------------------------------------------------------ computation

    def _check_input(self, x):
        shape = getattr(x, "shape", None)
        if shape is None:
            x = np.asarray(x)
            shape = x.shape
        if len(shape) < 1 or tuple(shape[1:]) != self.input_shape:
            expected = ", ".join(["N"] + [str(d) for d in self.input_shape])
            raise ValueError(f"{self._first_layer} expects input ({expected}), got "
                             f"{tuple(shape)}")
        if shape[0] == 0:
            raise ValueError("the batch is empty (0 samples)")
        return x

    def __call__(self, x):
        """The output (logits) for a batch ``x`` of shape ``(N, *input_shape)``, in the current
        mode (call :meth:`eval` first for inference with batch norm or dropout)."""
        return self._core.forward(self._check_input(x), False)

    def predict(self, x, batch_size=1024):
        """Class predictions (argmax of the logits), computed in batches in eval mode (the
        model's mode is restored afterwards)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        x = self._check_input(x)
        with self.mode(training=False):
            return np.concatenate([self(x[i:i + batch_size]).argmax(axis=1)
                                   for i in range(0, len(x), batch_size)])

    @contextlib.contextmanager
    def mode(self, training):
        """Context manager running the model in train (True) or eval (False) mode."""
        before = self.training
        self.train(training)
        try:
            yield self
        finally:
            self.train(before)

    def forward(self, x):
        """Forward in the current mode that keeps what :meth:`backward` needs; the output."""
        return self._core.forward(self._check_input(x), True)

    def backward(self, grad_out):
        """Backward from ``d loss / d output`` after :meth:`forward` of the same batch.

        Accumulates into the parameters' ``grad`` views (call :meth:`zero_grad` first) and returns
        ``d loss / d x``.
        """
        return self._core.backward(grad_out, True)

    def train_step(self, x, y, loss, optimizer):
        """One training step in one C call: forward, loss, backward and the optimizer update.

        Parameters
        ----------
        x : ndarray, shape (N, *input_shape)
        y : ndarray or tuple
            The targets ``loss`` takes: class labels ``(N,)`` of any integer dtype
            (:class:`~fastnet.CrossEntropyLoss`), soft targets ``(N, C)`` (CrossEntropyLoss),
            float targets ``(N, C)`` (:class:`~fastnet.MSELoss`, :class:`~fastnet.L1Loss`,
            :class:`~fastnet.HuberLoss`, :class:`~fastnet.BCEWithLogitsLoss`; ``(N,)`` for one
            output), or the pair ``(labels, teacher_logits)``
            (:class:`~fastnet.DistillationLoss`).
        loss : fastnet.losses.Loss
        optimizer : fastnet.optim.Optimizer
            Built over this model's parameters.

        Returns
        -------
        float
            The loss of the batch, before the update.
        """
        if not isinstance(loss, Loss):
            raise TypeError(f"train_step expects a fastnet loss (fastnet.CrossEntropyLoss, "
                            f"fastnet.MSELoss, ...), got {loss!r}")
        if optimizer.model is not self:
            raise ValueError("the optimizer was built over another model's parameters")
        # Every step: a batch of the right shape skips the method that says what is wrong.
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) < 2 or shape[1:] != self.input_shape or shape[0] == 0:
            x = self._check_input(x)
        core = self._handle
        if core is None:
            core = self._core
        outputs_shape = (x.shape[0], core.output_size)
        labels, values, teacher = loss._targets(y, outputs_shape)
        if optimizer._needs_configure():
            optimizer._configure()
        return core.train_step(x, labels, loss._spec(outputs_shape[1]), values, teacher)

    def forward_flops(self):
        """Floating-point operations of one sample's forward pass in the linear and convolution
        layers (2 per multiply-add; the other layers are memory-bound and not counted). A
        training step costs about three times this."""
        nodes = {node["name"]: node for node in self.compiled().nodes}
        total = 0
        for name, op, shape in self._core.node_info():
            node = nodes[name]
            if op == "linear":
                total += 2 * node["in_features"] * node["out_features"]
            elif op == "conv2d":
                kh, kw = node["kernel_size"]
                total += 2 * node["in_channels"] // node["groups"] * kh * kw * int(np.prod(shape))
        return total

    def summary(self):
        """A table of the graph's nodes: name, op, per-sample output shape, parameter count."""
        counts = {}
        for name, p in self._params.items():
            node = name.rsplit(".", 1)[0]
            counts[node] = counts.get(node, 0) + p.data.size
        rows = [("node", "op", "output", "parameters")]
        for name, op, shape in self._core.node_info():
            rows.append((name, op, "x".join(map(str, shape)), f"{counts.get(name, 0):,}"))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                           for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
        lines.append(f"total: {self.num_parameters():,} parameters, "
                     f"{self.forward_flops() / 1e6:.2f} MFLOP per sample forward")
        return "\n".join(lines)

    @property
    def last_train_correct(self):
        """How many samples of the last ``train_step`` batch were classified right."""
        return self._core.train_correct

    def __repr__(self):
        lines = []
        for i, layer in enumerate(self.layers):
            text = repr(layer).replace("\n", "\n  ")
            lines.append(f"  ({i}): {text}")
        text = "Sequential(\n" + "\n".join(lines) + "\n)"
        if self._handle is not None:
            text += f"  # {self.dtype.name}, {self.num_parameters():,} parameters"
        return text
