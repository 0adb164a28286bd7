"""Models: a Python description over a C model handle that owns parameters, buffers and state."""
import contextlib
import json
from collections import OrderedDict

import numpy as np

from fastnet import _core
from fastnet.layers import Layer, layer_from_spec

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


class Sequential:
    """A stack of layers, each feeding the next, trained and run by the C core.

    Parameters
    ----------
    *layers : Layer
        The layers, first to last. The last one's output is the logits.
    dtype : {"float32", "float64"}
        Element type of parameters and activations. float64 is for gradient checks.
    seed : int
        Seed of the parameter initialisation (PyTorch's default scheme); the same seed gives the
        same weights whatever the thread count.
    input_shape : tuple of int, optional
        Per-sample input shape; inferred from the first layer when it fixes one (``Linear``).

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

    def __init__(self, *layers, dtype="float32", seed=0, input_shape=None):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} is not a fastnet layer: {layer!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**53:
            raise ValueError(f"seed must be an integer in [0, 2**53), got {seed!r}")
        self.layers = list(layers)
        self.dtype = np.dtype(DTYPES[_dtype_name(dtype)])
        self.seed = int(seed)
        if input_shape is None:
            input_shape = self.layers[0].input_shape()
            if input_shape is None:
                raise ValueError(
                    f"Sequential: the first layer {self.layers[0]!r} does not fix the input "
                    "shape; pass input_shape=(features,)")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.training = True
        self._core = _core.Model(json.dumps(self.spec()))
        self._bind()

    # ------------------------------------------------------------------ construction

    def spec(self):
        """The model spec (a JSON-able dict) that the C core builds the model from."""
        return {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "input_shape": list(self.input_shape),
            "nodes": [layer.spec(str(i)) for i, layer in enumerate(self.layers)],
        }

    @classmethod
    def _from_core(cls, core):
        """Wraps a C model (e.g. loaded from a file), rebuilding the layers from its spec."""
        spec = json.loads(core.spec)
        self = cls.__new__(cls)
        self.layers = [layer_from_spec(node) for node in spec["nodes"]]
        self.dtype = np.dtype(spec.get("dtype", "float32"))
        self.seed = int(spec.get("seed", 0))
        self.input_shape = tuple(spec["input_shape"])
        self._core = core
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
        self._layer_names = [f"{layer!r} (layer {i})" for i, layer in enumerate(self.layers)]

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
            if not np.all(np.isfinite(array)):
                raise ValueError(f"parameter {name!r} contains NaN or Inf")
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
        self._core.training = self.training
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
            raise ValueError(f"{self._layer_names[0]} expects input ({expected}), got "
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
        y : ndarray of int, shape (N,)
            Class labels in ``[0, classes)``, of any integer dtype.
        loss : CrossEntropyLoss
        optimizer : fastnet.optim.Optimizer
            Built over this model's parameters.

        Returns
        -------
        float
            The mean loss of the batch, before the update.
        """
        from fastnet.losses import CrossEntropyLoss

        if not isinstance(loss, CrossEntropyLoss):
            raise TypeError(f"train_step supports fastnet.CrossEntropyLoss, got {loss!r}")
        if optimizer.model is not self:
            raise ValueError("the optimizer was built over another model's parameters")
        if self._optimizer is not optimizer or self._optimizer_version != optimizer._version:
            optimizer._configure()
        return self._core.train_step(self._check_input(x), y)

    @property
    def last_train_correct(self):
        """How many samples of the last ``train_step`` batch were classified right."""
        return self._core.train_correct

    def __repr__(self):
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + f"\n)  # {self.dtype.name}, " \
            f"{self.num_parameters():,} parameters"
