"""Optimizers: configuration objects whose update runs in C, fused over the model's parameter arena.

Each follows PyTorch's documented update rule and argument names, so a recipe carries over
unchanged. Changing a hyper-parameter (``opt.lr = 0.01``) takes effect at the next step.
"""
import numbers

import numpy as np

from fastnet import _core


def _number(value, what, low=0.0, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if value < low or (high is not None and (value >= high if high_open else value > high)):
        bound = f"[{low}, {high})" if high_open else f"[{low}, {high}]" if high is not None \
            else f">= {low}"
        raise ValueError(f"{what} must be {bound}, got {value!r}")
    return float(value)


class Optimizer:
    """Base class. ``params`` must be all of one model's parameters (``model.parameters()``):
    the update runs over the model's whole arena in one pass."""

    _kind = None
    _hyper = ()

    def __init__(self, params, **hyper):
        params = list(params)
        if not params:
            raise ValueError("the optimizer got an empty parameter list")
        model = getattr(params[0], "model", None)
        if model is None or any(getattr(p, "model", None) is not model for p in params):
            raise TypeError("an optimizer takes the parameters of one fastnet model: "
                            "model.parameters()")
        if len({id(p) for p in params}) != len(model.parameters()):
            raise ValueError("fastnet optimizers update all of a model's parameters; "
                             "pass model.parameters()")
        self.model = model
        self._version = 0
        self._values = {}
        for name in self._hyper:
            setattr(self, name, hyper[name])

    def __setattr__(self, name, value):
        if name in type(self)._hyper:
            value = self._validate(name, value)
            self._values[name] = value
            object.__setattr__(self, "_version", self._version + 1)
            return
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def _validate(self, name, value):
        return _number(value, f"{type(self).__name__} {name}")

    def _c_arguments(self):
        raise NotImplementedError

    def _configure(self):
        """Pushes the hyper-parameters to the C model. The model holds the state of one optimizer
        at a time: an optimizer that takes over a model starts from fresh state, as a new
        optimizer does."""
        core = self.model._core
        core.set_optimizer(self._kind, **self._c_arguments())
        if self.model._optimizer is not self:
            core.reset_optimizer()
        self.model._optimizer = self
        self.model._optimizer_version = self._version

    def step(self):
        """Applies one update from the gradients currently in the model (after ``backward``)."""
        if self.model._optimizer is not self or self.model._optimizer_version != self._version:
            self._configure()
        self.model._core.step()

    def zero_grad(self):
        self.model.zero_grad()

    @property
    def steps(self):
        """Updates applied so far."""
        return self.model._core.optimizer_steps if self.model._optimizer is self else 0

    def state_dict(self):
        """Hyper-parameters, step count and state arrays (copies; empty before the first step,
        or after another optimizer took over the model)."""
        active = self.model._optimizer is self
        core = self.model._core
        return {"type": type(self).__name__, "hyper": dict(self._values),
                "steps": self.steps,
                "momentum_started": core.momentum_started if active else False,
                "state": [s.copy() for s in core.optimizer_state()] if active else []}

    def load_state_dict(self, state):
        """Restores what :meth:`state_dict` returned; training then continues exactly."""
        if state.get("type") != type(self).__name__:
            raise ValueError(f"state is for {state.get('type')}, not {type(self).__name__}")
        core = self.model._core
        saved = state["state"]
        arena = core.param_arena().shape
        if any(np.shape(values) != arena for values in saved):
            raise ValueError(f"optimizer state of shapes {[np.shape(v) for v in saved]} does not "
                             f"match this model's parameter arena {arena}")
        for name, value in state["hyper"].items():
            setattr(self, name, value)
        self.model._optimizer = None  # a loaded state replaces whatever the model held
        self._configure()
        slots = core.optimizer_state()
        if saved:
            if len(saved) != len(slots):
                raise ValueError(f"optimizer state has {len(saved)} slots, {type(self).__name__} "
                                 f"needs {len(slots)}")
            for slot, values in zip(slots, saved):
                slot[...] = values
        core.optimizer_steps = int(state["steps"])
        core.momentum_started = bool(state.get("momentum_started", bool(saved)))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay.

    ``g = grad + weight_decay * p``; ``b = momentum * b + (1 - dampening) * g`` (``b = g`` at the
    first step); ``g = g + momentum * b`` with Nesterov, else ``b``; ``p -= lr * g``.

    Examples
    --------
    >>> import fastnet as fn
    >>> model = fn.Sequential(fn.Linear(4, 2))
    >>> fn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    SGD(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True)
    """

    _kind = _core.OPT_SGD
    _hyper = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params, lr=0.01, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")

    def _validate(self, name, value):
        if name == "nesterov":
            return bool(value)
        if name == "dampening":
            return _number(value, "SGD dampening", 0.0, 1.0)
        return super()._validate(name, value)

    def _c_arguments(self):
        v = self._values
        return dict(lr=v["lr"], momentum=v["momentum"], dampening=v["dampening"],
                    nesterov=v["nesterov"], weight_decay=v["weight_decay"])


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction and coupled L2 weight decay (PyTorch's ``Adam``).

    Examples
    --------
    >>> import fastnet as fn
    >>> model = fn.Sequential(fn.Linear(4, 2))
    >>> fn.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0)
    """

    _kind = _core.OPT_ADAM
    _hyper = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _validate(self, name, value):
        if name == "betas":
            try:
                beta1, beta2 = value
            except (TypeError, ValueError):
                raise ValueError(f"{type(self).__name__} betas must be a pair, got {value!r}")
            return (_number(beta1, "betas[0]", 0.0, 1.0, True),
                    _number(beta2, "betas[1]", 0.0, 1.0, True))
        return super()._validate(name, value)

    def _c_arguments(self):
        v = self._values
        return dict(lr=v["lr"], beta1=v["betas"][0], beta2=v["betas"][1], eps=v["eps"],
                    weight_decay=v["weight_decay"])


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay``
    before the Adam step, as PyTorch's ``AdamW``."""

    _kind = _core.OPT_ADAMW

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
