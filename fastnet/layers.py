"""Layers: declarative descriptions that compile to nodes of the C model spec.

A layer holds its hyper-parameters only; its parameters live in the model's arena once the layer
is part of a model (see :class:`fastnet.Sequential`). Names and layouts follow PyTorch
(``Linear.weight`` is ``(out_features, in_features)``).
"""
import numbers


class Layer:
    """Base class: ``op`` is the C op's name, ``attributes()`` its spec fields."""

    op = None

    def attributes(self):
        return {}

    def spec(self, name, inputs=None):
        node = {"name": name, "op": self.op}
        node.update(self.attributes())
        if inputs is not None:
            node["inputs"] = list(inputs)
        return node

    def output_shape(self, input_shape):
        """The per-sample output shape for a per-sample input shape (elementwise by default)."""
        return tuple(input_shape)

    def input_shape(self):
        """The per-sample input shape this layer fixes, or None if it takes any."""
        return None

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.attributes().items())
        return f"{type(self).__name__}({args})"


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class Linear(Layer):
    """Fully connected layer ``y = x @ weight.T + bias``.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of each input and output sample.
    bias : bool
        Whether to learn an additive bias.

    Examples
    --------
    >>> import fastnet as fn
    >>> model = fn.Sequential(fn.Linear(4, 3))
    >>> model.state_dict()["0.weight"].shape
    (3, 4)
    """

    op = "linear"

    def __init__(self, in_features, out_features, bias=True):
        self.in_features = _positive_int(in_features, "Linear in_features")
        self.out_features = _positive_int(out_features, "Linear out_features")
        self.bias = bool(bias)

    def attributes(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias}

    def input_shape(self):
        return (self.in_features,)

    def output_shape(self, input_shape):
        return (self.out_features,)

    def __repr__(self):
        extra = "" if self.bias else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{extra})"


class ReLU(Layer):
    """``max(x, 0)`` elementwise."""

    op = "relu"


class LeakyReLU(Layer):
    """``x`` for ``x > 0``, ``negative_slope * x`` otherwise.

    Examples
    --------
    >>> import fastnet as fn
    >>> fn.LeakyReLU(0.1)
    LeakyReLU(negative_slope=0.1)
    """

    op = "leaky_relu"

    def __init__(self, negative_slope=0.01):
        if not isinstance(negative_slope, numbers.Real) or negative_slope != negative_slope:
            raise ValueError(f"LeakyReLU negative_slope must be a number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def attributes(self):
        return {"negative_slope": self.negative_slope}


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))`` elementwise, computed without overflow."""

    op = "sigmoid"


class Tanh(Layer):
    """``tanh(x)`` elementwise."""

    op = "tanh"


#: Layer classes by C op name, to rebuild a model from its spec.
LAYERS_BY_OP = {cls.op: cls for cls in (Linear, ReLU, LeakyReLU, Sigmoid, Tanh)}


def layer_from_spec(node):
    """The layer described by one node of a model spec."""
    cls = LAYERS_BY_OP.get(node.get("op"))
    if cls is None:
        raise ValueError(f"unknown layer op {node.get('op')!r} in node {node.get('name')!r}")
    attributes = {k: v for k, v in node.items() if k not in ("name", "op", "inputs")}
    return cls(**attributes)
