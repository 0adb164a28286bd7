"""Layers: declarative descriptions that compile to nodes of the C model's graph.

A layer holds its hyper-parameters only; its parameters live in the model's arenas once the layer
is part of a model (see :class:`fastnet.Sequential`). Arguments, names and layouts follow PyTorch
(``Linear.weight`` is ``(out_features, in_features)``, ``Conv2d.weight`` is
``(out, in/groups, kh, kw)``, batch norm has ``running_mean``, ``running_var`` and
``num_batches_tracked``), so weights move between the two with no conversion.

Containers (:class:`Sequential`, :class:`Residual`, :class:`Concat`) nest; a child's tensors are
named by its path, PyTorch-style: ``3.main.0.weight`` is the weight of the first layer of the main
path of the residual block at position 3.
"""
import numbers

from fastnet.init import check_scheme


class Layer:
    """Base class of the layers that are one node of the C graph: ``op`` is the C op's name,
    ``attributes()`` its spec fields (and the constructor's keyword arguments)."""

    op = None

    def attributes(self):
        return {}

    def compile(self, name, inputs, graph):
        """Appends this layer's node(s) to ``graph`` (a :class:`Graph`) reading ``inputs`` (node
        names); returns the name of the node that holds the output."""
        node = {"name": name, "op": self.op, "inputs": list(inputs)}
        node.update(self.attributes())
        graph.add(self, name, node)
        return name

    def config(self):
        """A JSON-able description from which :func:`layer_from_config` rebuilds the layer."""
        return {"type": type(self).__name__, **self.attributes()}

    def fixed_input_shape(self):
        """The per-sample input shape this layer fixes, or None if it takes any."""
        return None

    def children(self):
        return []

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.attributes().items())
        return f"{type(self).__name__}({args})"


class Graph:
    """What compiling a layer tree produces: the node list of the spec, and each layer's name."""

    def __init__(self):
        self.nodes = []
        self.names = {}  # id(layer) -> node name (the prefix of its tensors)

    def add(self, layer, name, node=None):
        self.names[id(layer)] = name
        if node is not None:
            self.nodes.append(node)


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _pair(value, what, minimum=1):
    """An int or a pair of ints, as PyTorch takes kernel sizes, strides and paddings."""
    pair = (value, value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) \
        else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or any(
            isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum
            for v in pair):
        raise ValueError(f"{what} must be an integer >= {minimum} or a pair of them, got "
                         f"{value!r}")
    return [int(pair[0]), int(pair[1])]


def _init_attributes(layer, attributes):
    """Adds a layer's ``init`` and ``bias_init`` to its attributes when given."""
    for key in ("init", "bias_init"):
        if getattr(layer, key) is not None:
            attributes[key] = getattr(layer, key)
    return attributes


def _init_repr(layer):
    """``, init='he_normal'`` (or the dict when it has parameters) for each scheme given."""
    text = ""
    for key in ("init", "bias_init"):
        value = getattr(layer, key)
        if value is not None:
            shown = value["scheme"] if len(value) == 1 else value
            text += f", {key}={shown!r}"
    return text


def _init_schemes(layer, init, bias_init):
    name = type(layer).__name__
    layer.init = check_scheme(init, f"{name} init")
    layer.bias_init = check_scheme(bias_init, f"{name} bias_init", bias=True)
    if layer.bias_init is not None and not layer.bias:
        raise ValueError(f"{name} bias_init is given but bias=False")


def _number(value, what, low=None, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise ValueError(f"{what} must be a number, got {value!r}")
    if (low is not None and value < low) or (
            high is not None and (value >= high if high_open else value > high)):
        raise ValueError(f"{what} must be in [{low}, {high}{')' if high_open else ']'}, "
                         f"got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------- fully connected


class Linear(Layer):
    """Fully connected layer ``y = x @ weight.T + bias``.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of each input and output sample.
    bias : bool
        Whether to learn an additive bias.
    init, bias_init : str or dict, optional
        Initialisation schemes of the weight and the bias (see :mod:`fastnet.init`), a name such
        as ``"he_normal"`` or a dict such as ``{"scheme": "normal", "std": 0.01}``. None takes
        the model's default (``Sequential(init=...)``), else PyTorch's.

    Examples
    --------
    >>> import fastnet as fn
    >>> model = fn.Sequential(fn.Linear(4, 3))
    >>> model.state_dict()["0.weight"].shape
    (3, 4)
    >>> fn.Linear(256, 10, init="xavier_uniform", bias_init="zeros")
    Linear(256, 10, init='xavier_uniform', bias_init='zeros')
    """

    op = "linear"

    def __init__(self, in_features, out_features, bias=True, init=None, bias_init=None):
        self.in_features = _positive_int(in_features, "Linear in_features")
        self.out_features = _positive_int(out_features, "Linear out_features")
        self.bias = bool(bias)
        _init_schemes(self, init, bias_init)

    def attributes(self):
        return _init_attributes(self, {"in_features": self.in_features,
                                       "out_features": self.out_features, "bias": self.bias})

    def fixed_input_shape(self):
        return (self.in_features,)

    def __repr__(self):
        extra = "" if self.bias else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{extra}{_init_repr(self)})"


# ---------------------------------------------------------------------------- activations


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
        self.negative_slope = _number(negative_slope, "LeakyReLU negative_slope")

    def attributes(self):
        return {"negative_slope": self.negative_slope}


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))`` elementwise, computed without overflow."""

    op = "sigmoid"


class Tanh(Layer):
    """``tanh(x)`` elementwise."""

    op = "tanh"


class PReLU(Layer):
    """Parametric ReLU: ``x`` for ``x > 0``, ``weight[c] * x`` otherwise, with learned slopes.

    Parameters
    ----------
    num_parameters : int
        1 (one slope shared by every element) or the number of channels of the input, its first
        per-sample dimension (features of an ``(N, F)`` input, channels of ``(N, C, H, W)``).
    init : float
        The slopes' initial value.

    Notes
    -----
    The slopes are the parameter ``weight`` of shape ``(num_parameters,)``, as PyTorch's; like
    any parameter they are trained, and weight decay applies to them unless a parameter group
    says otherwise.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> model = fn.Sequential(fn.Linear(4, 3), fn.PReLU(3))
    >>> model.state_dict()["1.weight"]
    array([0.25, 0.25, 0.25], dtype=float32)
    """

    op = "prelu"

    def __init__(self, num_parameters=1, init=0.25):
        self.num_parameters = _positive_int(num_parameters, "PReLU num_parameters")
        self.init = _number(init, "PReLU init")

    def attributes(self):
        return {"num_parameters": self.num_parameters, "init": self.init}


class ELU(Layer):
    """``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> model = fn.Sequential(fn.ELU(), input_shape=(2,), dtype="float64")
    >>> model(np.array([[1.0, -1.0]])).round(4)
    array([[ 1.    , -0.6321]])
    """

    op = "elu"

    def __init__(self, alpha=1.0):
        self.alpha = _number(alpha, "ELU alpha")

    def attributes(self):
        return {"alpha": self.alpha}


class GELU(Layer):
    """Gaussian error linear unit ``x * Phi(x)``, ``Phi`` the standard normal CDF.

    Parameters
    ----------
    approximate : {"none", "tanh"}
        ``"none"``: exact, with ``erf``; ``"tanh"``:
        ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))``.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> model = fn.Sequential(fn.GELU(), input_shape=(2,), dtype="float64")
    >>> model(np.array([[1.0, -1.0]])).round(4)
    array([[ 0.8413, -0.1587]])
    """

    op = "gelu"

    def __init__(self, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def attributes(self):
        return {"approximate": self.approximate}


class SiLU(Layer):
    """Sigmoid-weighted linear unit (Swish): ``x * sigmoid(x)``.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> model = fn.Sequential(fn.SiLU(), input_shape=(2,), dtype="float64")
    >>> model(np.array([[1.0, -1.0]])).round(4)
    array([[ 0.7311, -0.2689]])
    """

    op = "silu"


class Softplus(Layer):
    """``log(1 + exp(beta * x)) / beta``, and ``x`` where ``beta * x > threshold`` (PyTorch's
    reversion to the identity for large inputs).

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> model = fn.Sequential(fn.Softplus(), input_shape=(2,), dtype="float64")
    >>> model(np.array([[0.0, 30.0]])).round(4)
    array([[ 0.6931, 30.    ]])
    """

    op = "softplus"

    def __init__(self, beta=1.0, threshold=20.0):
        self.beta = _number(beta, "Softplus beta")
        if self.beta <= 0:
            raise ValueError(f"Softplus beta must be positive, got {beta!r}")
        self.threshold = _number(threshold, "Softplus threshold")

    def attributes(self):
        return {"beta": self.beta, "threshold": self.threshold}


class Maxout(Layer):
    """Maxout: the channels ``(C, ...)`` of each sample, split into ``C / pieces`` groups of
    ``pieces`` consecutive channels, reduced to the maximum of each group, giving
    ``(C / pieces, ...)``.

    The gradient flows to the first maximum of each group. Put it after a ``Linear`` or
    ``Conv2d`` with ``pieces`` times the channels wanted.

    Parameters
    ----------
    pieces : int
        Channels per group; must divide the input's channel count (its first per-sample
        dimension).

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> model = fn.Sequential(fn.Maxout(2), input_shape=(4,), dtype="float64")
    >>> model(np.array([[1.0, 3.0, -2.0, -5.0]]))
    array([[ 3., -2.]])
    """

    op = "maxout"

    def __init__(self, pieces):
        self.pieces = _positive_int(pieces, "Maxout pieces")

    def attributes(self):
        return {"pieces": self.pieces}


def _softmax_dim(layer, dim):
    name = type(layer).__name__
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise ValueError(f"{name} dim must be an integer, got {dim!r}")
    # A negative dim is resolved against the input's dimensions when the model is built.
    if dim >= 0 and dim != 1:
        raise ValueError(f"{name} supports dim=1 only (the first per-sample axis: features or "
                         f"channels), got dim={dim}")
    return int(dim)


class Softmax(Layer):
    """``exp(x) / sum(exp(x))`` over ``dim=1``: the features of ``(N, F)`` inputs, or the
    channels of ``(N, C, H, W)`` ones at each position. Computed with the maximum subtracted, so
    no input overflows.

    Parameters
    ----------
    dim : int
        Must be 1 (or a negative index of that axis, such as -1 for ``(N, F)`` inputs).

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> model = fn.Sequential(fn.Softmax(dim=1), input_shape=(2,), dtype="float64")
    >>> model(np.array([[0.0, np.log(3.0)]]))
    array([[0.25, 0.75]])
    """

    op = "softmax"

    def __init__(self, dim=1):
        self.dim = _softmax_dim(self, dim)

    def attributes(self):
        return {"dim": self.dim}


class LogSoftmax(Layer):
    """``x - log(sum(exp(x)))`` over ``dim=1``, as :class:`Softmax`, without overflow or
    ``log(0)``.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> model = fn.Sequential(fn.LogSoftmax(dim=1), input_shape=(2,), dtype="float64")
    >>> np.exp(model(np.array([[0.0, np.log(3.0)]])))
    array([[0.25, 0.75]])
    """

    op = "log_softmax"

    def __init__(self, dim=1):
        self.dim = _softmax_dim(self, dim)

    def attributes(self):
        return {"dim": self.dim}


# ---------------------------------------------------------------------------- convolution


class Conv2d(Layer):
    """2-D convolution over ``(N, C, H, W)`` inputs, as PyTorch's ``nn.Conv2d``.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation : int or (int, int)
    groups : int
        Channels are split into this many groups convolved separately (``groups ==
        in_channels`` is a depthwise convolution).
    bias : bool
    init, bias_init : str or dict, optional
        Initialisation schemes of the weight and the bias, as for :class:`Linear`; the fans are
        ``in_channels / groups * kh * kw`` and ``out_channels * kh * kw``.

    Examples
    --------
    >>> import fastnet as fn
    >>> model = fn.Sequential(fn.Conv2d(1, 8, 3, padding=1), fn.ReLU(), input_shape=(1, 8, 8))
    >>> model.state_dict()["0.weight"].shape
    (8, 1, 3, 3)
    """

    op = "conv2d"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, init=None, bias_init=None):
        self.in_channels = _positive_int(in_channels, "Conv2d in_channels")
        self.out_channels = _positive_int(out_channels, "Conv2d out_channels")
        self.kernel_size = _pair(kernel_size, "Conv2d kernel_size")
        self.stride = _pair(stride, "Conv2d stride")
        self.padding = _pair(padding, "Conv2d padding", minimum=0)
        self.dilation = _pair(dilation, "Conv2d dilation")
        self.groups = _positive_int(groups, "Conv2d groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv2d channels ({self.in_channels}, {self.out_channels}) must be "
                             f"divisible by groups={self.groups}")
        self.bias = bool(bias)
        _init_schemes(self, init, bias_init)

    def attributes(self):
        return _init_attributes(self, {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
            "dilation": self.dilation, "groups": self.groups, "bias": self.bias})

    def __repr__(self):
        kernel = self.kernel_size[0] if self.kernel_size[0] == self.kernel_size[1] \
            else tuple(self.kernel_size)
        text = f"Conv2d({self.in_channels}, {self.out_channels}, {kernel}"
        for name, default in (("stride", [1, 1]), ("padding", [0, 0]), ("dilation", [1, 1])):
            value = getattr(self, name)
            if value != default:
                text += f", {name}={value[0] if value[0] == value[1] else tuple(value)}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + ("" if self.bias else ", bias=False") + _init_repr(self) + ")"


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0):
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, f"{name} kernel_size")
        self.stride = _pair(stride if stride is not None else kernel_size, f"{name} stride")
        self.padding = _pair(padding, f"{name} padding", minimum=0)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name} padding {self.padding} must be at most half the kernel "
                             f"{self.kernel_size}")

    def attributes(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}


class MaxPool2d(_Pool2d):
    """Maximum over windows of ``(N, C, H, W)`` inputs (``stride`` defaults to the kernel)."""

    op = "max_pool2d"


class AvgPool2d(_Pool2d):
    """Average over windows, counting zero padding in the divisor (PyTorch's default)."""

    op = "avg_pool2d"


class AdaptiveAvgPool2d(Layer):
    """Global average pooling: ``(N, C, H, W)`` to ``(N, C, 1, 1)``. Only ``output_size=1``."""

    op = "global_avg_pool2d"

    def __init__(self, output_size=1):
        if output_size not in (1, (1, 1), [1, 1]):
            raise ValueError(f"AdaptiveAvgPool2d supports output_size=1 (global average "
                             f"pooling), got {output_size!r}")
        self.output_size = 1

    def config(self):
        return {"type": "AdaptiveAvgPool2d", "output_size": 1}

    def __repr__(self):
        return "AdaptiveAvgPool2d(1)"


class Flatten(Layer):
    """``(N, C, H, W)`` to ``(N, C*H*W)``."""

    op = "flatten"


# ---------------------------------------------------------------------------- normalisation


class _BatchNorm(Layer):
    op = "batch_norm"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
        name = type(self).__name__
        self.num_features = _positive_int(num_features, f"{name} num_features")
        self.eps = _number(eps, f"{name} eps", low=0)
        if self.eps <= 0:
            raise ValueError(f"{name} eps must be positive, got {eps!r}")
        self.momentum = _number(momentum, f"{name} momentum", 0, 1)
        self.affine = bool(affine)

    def attributes(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine}

    def __repr__(self):
        return f"{type(self).__name__}({self.num_features})"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of ``(N, C)`` inputs over the batch, per feature.

    In train mode, normalises with the batch's mean and (biased) variance and updates
    ``running_mean`` / ``running_var`` (unbiased) with ``momentum``; in eval mode uses them.
    """


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of ``(N, C, H, W)`` inputs over batch and space, per channel."""


class Dropout(Layer):
    """Inverted dropout: in train mode zeroes each element with probability ``p`` and scales the
    rest by ``1 / (1 - p)``; the identity in eval mode. Masks come from a counter-based RNG keyed
    by the model's seed, the step and the element, so they do not depend on the thread count.
    """

    op = "dropout"

    def __init__(self, p=0.5):
        self.p = _number(p, "Dropout p", 0, 1, high_open=True)

    def attributes(self):
        return {"p": self.p}


class LocalResponseNorm(Layer):
    """AlexNet's normalisation across ``size`` neighbouring channels:
    ``b_c = a_c / (k + alpha / size * sum a_c'^2) ** beta``."""

    op = "local_response_norm"

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        self.size = _positive_int(size, "LocalResponseNorm size")
        self.alpha = _number(alpha, "LocalResponseNorm alpha")
        self.beta = _number(beta, "LocalResponseNorm beta")
        self.k = _number(k, "LocalResponseNorm k")

    def attributes(self):
        return {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}


# ---------------------------------------------------------------------------- containers


def _as_layer(item, what):
    from fastnet.model import Sequential, adopt

    if isinstance(item, (list, tuple)):
        item = Sequential(*item)
    if not isinstance(item, Layer):
        raise TypeError(f"{what} is not a fastnet layer: {item!r}")
    adopt(item)
    return item


class Residual(Layer):
    """A residual connection: ``main(x) + shortcut(x)``, with ``shortcut`` the identity when None.

    Follow it with an activation for the classic post-activation block.

    Examples
    --------
    >>> import fastnet as fn
    >>> block = fn.Residual(fn.Sequential(fn.Conv2d(16, 16, 3, padding=1), fn.BatchNorm2d(16),
    ...                                   fn.ReLU(), fn.Conv2d(16, 16, 3, padding=1),
    ...                                   fn.BatchNorm2d(16)))
    >>> model = fn.Sequential(block, fn.ReLU(), input_shape=(16, 8, 8))
    >>> "0.main.0.weight" in model.state_dict()
    True
    """

    op = "add"

    def __init__(self, main, shortcut=None):
        self.main = _as_layer(main, "Residual main")
        self.shortcut = None if shortcut is None else _as_layer(shortcut, "Residual shortcut")

    def compile(self, name, inputs, graph):
        main = self.main.compile(f"{name}.main", inputs, graph)
        short = list(inputs) if self.shortcut is None else \
            [self.shortcut.compile(f"{name}.shortcut", inputs, graph)]
        graph.add(self, name, {"name": name, "op": "add", "inputs": [main] + short})
        return name

    def config(self):
        return {"type": "Residual", "main": self.main.config(),
                "shortcut": None if self.shortcut is None else self.shortcut.config()}

    def children(self):
        return [self.main] + ([self.shortcut] if self.shortcut is not None else [])

    def fixed_input_shape(self):
        return self.main.fixed_input_shape()

    def __repr__(self):
        text = f"Residual({self.main!r}"
        return text + (f", shortcut={self.shortcut!r})" if self.shortcut is not None else ")")


class Concat(Layer):
    """Parallel branches on one input, concatenated along channels (Inception).

    Examples
    --------
    >>> import fastnet as fn
    >>> block = fn.Concat(fn.Conv2d(8, 4, 1), fn.Sequential(fn.Conv2d(8, 4, 3, padding=1)))
    >>> model = fn.Sequential(block, input_shape=(8, 5, 5))
    >>> model(__import__("numpy").zeros((1, 8, 5, 5), "float32")).shape  # 8 channels of 5 x 5
    (1, 200)
    """

    op = "concat"

    def __init__(self, *branches):
        if len(branches) < 2:
            raise ValueError("Concat needs at least two branches")
        self.branches = [_as_layer(b, f"Concat branch {i}") for i, b in enumerate(branches)]

    def compile(self, name, inputs, graph):
        outputs = [b.compile(f"{name}.{i}", inputs, graph) for i, b in enumerate(self.branches)]
        graph.add(self, name, {"name": name, "op": "concat", "inputs": outputs})
        return name

    def config(self):
        return {"type": "Concat", "branches": [b.config() for b in self.branches]}

    def children(self):
        return list(self.branches)

    def fixed_input_shape(self):
        return None

    def __repr__(self):
        return "Concat(" + ", ".join(repr(b) for b in self.branches) + ")"


#: Layer classes by name, to rebuild a layer tree from its config.
LAYER_TYPES = {cls.__name__: cls for cls in (
    Linear, ReLU, LeakyReLU, Sigmoid, Tanh, Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d,
    Flatten, BatchNorm1d, BatchNorm2d, Dropout, LocalResponseNorm, PReLU, ELU, GELU, SiLU,
    Softplus, Maxout, Softmax, LogSoftmax)}


def layer_from_config(config):
    """The layer (or container) described by ``config`` (see :meth:`Layer.config`)."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"a layer description needs a 'type', got {config!r}")
    kind = config["type"]
    args = {k: v for k, v in config.items() if k != "type"}
    if kind == "Sequential":
        from fastnet.model import Sequential

        return Sequential(*[layer_from_config(c) for c in args.get("layers", [])],
                          init=args.get("init"), bias_init=args.get("bias_init"))
    if kind == "Residual":
        shortcut = args.get("shortcut")
        return Residual(layer_from_config(args["main"]),
                        None if shortcut is None else layer_from_config(shortcut))
    if kind == "Concat":
        return Concat(*[layer_from_config(c) for c in args["branches"]])
    cls = LAYER_TYPES.get(kind)
    if cls is None:
        known = ", ".join(sorted(list(LAYER_TYPES) + ["Sequential", "Residual", "Concat"]))
        raise ValueError(f"unknown layer type {kind!r} (known: {known})")
    try:
        return cls(**args)
    except TypeError as error:
        raise ValueError(f"{kind}: {error}") from None
