"""Parameter initialisation: the schemes of ``Linear``/``Conv2d`` ``init=`` and ``bias_init=``,
PyTorch's :func:`calculate_gain`, and :func:`apply` to re-initialise a built model.

The values are drawn by the C core from a counter-based generator keyed by the model's seed and
each tensor's name, so a seed gives the same weights on any thread count. A scheme is a name or a
dict ``{"scheme": name, **parameters}``:

================================  ============================================================
scheme                            distribution (fans as PyTorch computes them)
================================  ============================================================
``"default"``                     ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, PyTorch's default
``"uniform"`` (a=0, b=1)          ``U(a, b)``
``"normal"`` (mean=0, std=1)      ``N(mean, std**2)``
``"normal_fan_in"``               ``N(0, 1/fan_in)``
``"lecun_uniform"``               ``U(-sqrt(3/fan_in), sqrt(3/fan_in))``
``"lecun_normal"``                ``N(0, 1/fan_in)``
``"xavier_uniform"`` (gain=1)     ``U(-b, b)``, ``b = gain * sqrt(6 / (fan_in + fan_out))``
``"xavier_normal"`` (gain=1)      ``N(0, gain**2 * 2 / (fan_in + fan_out))``
``"kaiming_uniform"``             ``U(-b, b)``, ``b = gain * sqrt(3 / fan)``
``"kaiming_normal"``              ``N(0, gain**2 / fan)``
``"he_uniform"``, ``"he_normal"`` the same as ``kaiming_uniform``, ``kaiming_normal``
``"zeros"``, ``"ones"``           constants
``"constant"`` (value)            ``value`` everywhere
================================  ============================================================

The kaiming (he) schemes take PyTorch's ``a=0``, ``mode="fan_in"`` (or ``"fan_out"``) and
``nonlinearity="leaky_relu"``, with ``gain = calculate_gain(nonlinearity, a)``. For a linear
layer ``fan_in = in_features`` and ``fan_out = out_features``; for a convolution ``fan_in =
in_channels / groups * kh * kw`` and ``fan_out = out_channels * kh * kw``. A bias takes
``default`` (the bound of its weight's fan_in, as PyTorch), ``zeros``, ``ones``, ``constant``,
``uniform`` or ``normal``.
"""
import json
import math
import numbers

#: Each scheme's parameters (the keys its dict form may hold besides "scheme").
SCHEMES = {
    "default": (), "uniform": ("a", "b"), "normal": ("mean", "std"), "normal_fan_in": (),
    "lecun_uniform": (), "lecun_normal": (), "xavier_uniform": ("gain",),
    "xavier_normal": ("gain",), "kaiming_uniform": ("a", "mode", "nonlinearity"),
    "kaiming_normal": ("a", "mode", "nonlinearity"), "he_uniform": ("a", "mode", "nonlinearity"),
    "he_normal": ("a", "mode", "nonlinearity"), "zeros": (), "ones": (), "constant": ("value",),
}
#: The schemes a bias may use: those that need no fans (and "default").
BIAS_SCHEMES = ("default", "zeros", "ones", "constant", "uniform", "normal")
_STRING_PARAMETERS = ("mode", "nonlinearity")
_UNIT_GAIN = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity, as PyTorch's ``torch.nn.init.calculate_gain``.

    Parameters
    ----------
    nonlinearity : str
        ``"linear"``, ``"conv1d"``, ``"conv2d"``, ``"conv3d"``, ``"conv_transpose1d"``,
        ``"conv_transpose2d"``, ``"conv_transpose3d"``, ``"sigmoid"`` (gain 1), ``"tanh"`` (5/3),
        ``"relu"`` (sqrt 2), ``"leaky_relu"`` (``sqrt(2 / (1 + param**2))``) or ``"selu"`` (3/4).
    param : float, optional
        The negative slope of ``leaky_relu`` (default 0.01).

    Returns
    -------
    float

    Examples
    --------
    >>> import fastnet as fn
    >>> fn.init.calculate_gain("tanh")
    1.6666666666666667
    >>> round(fn.init.calculate_gain("leaky_relu", 0.2), 4)
    1.3868
    """
    if nonlinearity in _UNIT_GAIN:
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, numbers.Real) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def check_scheme(value, what="init", bias=False):
    """``value`` (a scheme name, a dict ``{"scheme": name, ...}`` or None) as the dict a spec
    holds, or None; checks the name and the parameters' names and types (the C core checks their
    values when the model is built).

    Examples
    --------
    >>> import fastnet as fn
    >>> fn.init.check_scheme("he_normal")
    {'scheme': 'he_normal'}
    >>> fn.init.check_scheme({"scheme": "normal", "std": 0.02})
    {'scheme': 'normal', 'std': 0.02}
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = {"scheme": value}
    elif isinstance(value, dict):
        value = dict(value)
        if not isinstance(value.get("scheme"), str):
            raise ValueError(f"{what}: a dict needs a 'scheme' name, got {value!r}")
    else:
        raise TypeError(f"{what} must be a scheme name or a dict {{'scheme': name, ...}}, got "
                        f"{value!r}")
    name = value["scheme"]
    known = BIAS_SCHEMES if bias else tuple(SCHEMES)
    if name not in known:
        if bias and name in SCHEMES:
            raise ValueError(f"{what}: scheme {name!r} is for weights; a bias takes "
                             f"{', '.join(BIAS_SCHEMES)}")
        raise ValueError(f"{what}: unknown scheme {name!r} (known: {', '.join(known)})")
    for key, parameter in value.items():
        if key == "scheme":
            continue
        if key not in SCHEMES[name]:
            takes = ", ".join(SCHEMES[name]) or "none"
            raise ValueError(f"{what}: scheme {name!r} has no parameter {key!r} (it takes: "
                             f"{takes})")
        if key in _STRING_PARAMETERS:
            if not isinstance(parameter, str):
                raise ValueError(f"{what}: {key} must be a string, got {parameter!r}")
        elif isinstance(parameter, bool) or not isinstance(parameter, numbers.Real) or \
                not math.isfinite(parameter):
            raise ValueError(f"{what}: {key} must be a finite number, got {parameter!r}")
        else:
            value[key] = float(parameter)
    return value


def apply(model, scheme, bias=None, seed=None):
    """Re-initialises the weights (and optionally the biases) of every ``Linear`` and ``Conv2d``
    of a built model, in place.

    The C core builds a temporary model of the same architecture with these schemes and the seed,
    and its tensors are copied into ``model``: the values are exactly those that ``init=`` on
    each layer would have given with that seed. Layers' own ``init`` and the model's defaults are
    overridden; other tensors (batch norm, PReLU slopes) and the optimizer's state are left as
    they are.

    Parameters
    ----------
    model : fastnet.Sequential
    scheme : str or dict or None
        The weights' scheme (see the module's table); None leaves the weights.
    bias : str or dict or None
        The biases' scheme; None (the default) leaves the biases.
    seed : int, optional
        The seed of the draw; defaults to the model's.

    Returns
    -------
    fastnet.Sequential
        ``model``.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> model = fn.Sequential(fn.Linear(100, 50), fn.ReLU(), fn.Linear(50, 10))
    >>> _ = fn.init.apply(model, "he_normal", bias="zeros", seed=1)
    >>> bool(np.all(model.state_dict()["0.bias"] == 0))
    True
    >>> same = fn.Sequential(fn.Linear(100, 50, init="he_normal"), fn.ReLU(),
    ...                      fn.Linear(50, 10, init="he_normal"), seed=1)
    >>> bool(np.array_equal(model.state_dict()["0.weight"], same.state_dict()["0.weight"]))
    True
    """
    from fastnet import _core
    from fastnet.model import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"init.apply expects a fastnet model (fastnet.Sequential), got "
                        f"{type(model).__name__}")
    weight = check_scheme(scheme, "init")
    bias = check_scheme(bias, "bias_init", bias=True)
    if seed is None:
        seed = model.seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**53:
        raise ValueError(f"seed must be an integer in [0, 2**53), got {seed!r}")
    spec = model.spec()
    spec["seed"] = int(seed)
    targets = set()
    for node in spec["nodes"]:
        if node["op"] not in ("linear", "conv2d"):
            continue
        if weight is not None:
            node["init"] = weight
            targets.add(f"{node['name']}.weight")
        if bias is not None and node.get("bias", True):
            node["bias_init"] = bias
            targets.add(f"{node['name']}.bias")
    if not targets:
        return model
    fresh = _core.Model(json.dumps(spec))
    arena = fresh.param_arena()
    params = dict(model.named_parameters())
    for name, shape, offset, _, _ in fresh.tensor_info():
        if name in targets:
            count = math.prod(shape)
            params[name].data[...] = arena[offset:offset + count].reshape(shape)
    return model
