"""Optimizers: configuration objects whose update runs in C, fused over the model's parameter arena.

Each follows PyTorch's documented update rule and argument names, so a recipe carries over
unchanged: :class:`SGD`, :class:`Adagrad`, :class:`RMSprop`, :class:`Adam` and :class:`AdamW`.

Parameter groups
    ``params`` is ``model.parameters()``, or a list of groups as in PyTorch::

        fn.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay}], lr=0.1)

    Each group has its own ``lr``, ``weight_decay``, ``l1`` and ``max_norm`` (missing keys take
    the optimizer's arguments); the other hyper-parameters are shared. Every parameter of the
    model must be in exactly one group: the update runs over the whole parameter arena in one
    pass. Which parameters a group holds is fixed when the optimizer is made (or by
    :meth:`Optimizer.load_state_dict`). :func:`param_groups` makes the usual split (no decay on biases and normalisation
    parameters) in one line.

    ``opt.param_groups`` is a list of dicts with ``"params"``, ``"lr"``, ``"initial_lr"``,
    ``"weight_decay"``, ``"l1"`` and ``"max_norm"``. Writing a group's ``"lr"`` (what learning-rate
    schedules do; they read ``"initial_lr"``) or any of the others takes effect at the next step.
    ``opt.lr = x`` (and ``opt.weight_decay``, ``opt.l1``, ``opt.max_norm``) sets every group;
    reading it gives the first group's value.

Regularisation
    ``weight_decay`` is L2 decay, coupled (``g += weight_decay * p``) or, with AdamW or
    ``decoupled_weight_decay=True``, decoupled (``p *= 1 - lr * weight_decay``); ``l1`` adds
    ``l1 * sign(p)`` to the gradient; ``max_norm`` rescales, after each update, every row (output
    unit: index along dim 0) of a weight of two or more dimensions whose L2 norm exceeds it, to
    norm ``max_norm`` (biases and 1-D tensors are exempt).

Gradient clipping
    ``clip_grad_norm=c`` scales all gradients by ``min(1, c / (norm + 1e-6))``, ``norm`` being
    their global L2 norm computed in double (PyTorch's ``clip_grad_norm_``; ``float("inf")``
    measures the norm without clipping); ``clip_grad_value=v`` clamps every gradient to
    ``[-v, v]`` (after the norm's scaling when both are set). Clipping happens inside ``step()``
    and ``model.train_step`` before the update, on the gradient the update uses (``p.grad`` keeps
    what backward wrote). ``opt.last_grad_norm`` is the norm before clipping of the last update.
    A NaN or Inf norm raises ``FloatingPointError`` and leaves the weights, the optimizer's state
    and its step count as they were.
"""
import fnmatch
import numbers
import operator

import numpy as np

from fastnet import _core

GROUP_KEYS = ("lr", "weight_decay", "l1", "max_norm")
_group_values = operator.itemgetter(*GROUP_KEYS)  # a group's values, in one C call
"""What a parameter group sets; the other hyper-parameters are the optimizer's, shared by all."""

_CLIP_KEYS = ("clip_grad_norm", "clip_grad_value")
# Optional features printed by repr only when they are on.
_OFF = {"l1": 0.0, "max_norm": None, "clip_grad_norm": None, "clip_grad_value": None,
        "amsgrad": False, "decoupled_weight_decay": False}


def _number(value, what, low=0.0, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if value < low or (high is not None and (value >= high if high_open else value > high)):
        bound = f"[{low}, {high})" if high_open else f"[{low}, {high}]" if high is not None \
            else f">= {low}"
        raise ValueError(f"{what} must be {bound}, got {value!r}")
    return float(value)


def _positive_or_none(value, what, allow_inf=False):
    """None (off) or a number > 0 (and finite unless allow_inf)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or np.isnan(value) \
            or (np.isinf(value) and not allow_inf) or value <= 0:
        expected = "a number > 0 (inf: measure only)" if allow_inf else "a finite number > 0"
        raise ValueError(f"{what} must be None (off) or {expected}, got {value!r}")
    return float(value)


def _group_value(key, value, what):
    if key == "max_norm":
        return _positive_or_none(value, what)
    return _number(value, what)


class Optimizer:
    """Base class: parameter groups, clipping, the hand-over to C, and the state dict.

    Subclasses list their optimizer-wide hyper-parameters in ``_hyper`` (passed to C under the
    same names unless ``_c_arguments`` maps them otherwise) and those bounded above in
    ``_bounds``.
    """

    _kind = None
    _hyper = ()
    _bounds = {}  # hyper-parameter: (low, high), both included

    def __init__(self, params, *, lr, weight_decay=0.0, l1=0.0, max_norm=None,
                 clip_grad_norm=None, clip_grad_value=None, **hyper):
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_hyper_version", 0)
        object.__setattr__(self, "_pushed", None)
        name = type(self).__name__
        defaults = {key: _group_value(key, value, f"{name} {key}") for key, value in
                    dict(lr=lr, weight_decay=weight_decay, l1=l1, max_norm=max_norm).items()}
        model, groups, index = self._build_groups(params, defaults)
        self.model = model
        self.param_groups = groups
        self._group_of_tensor = index
        for key in self._hyper:
            setattr(self, key, hyper[key])
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self._check_combination(self._values)

    # ------------------------------------------------------------------ groups

    def _build_groups(self, params, defaults):
        """(model, groups, group index per C tensor) from ``params``, checking that every
        parameter of one model is in exactly one group."""
        name = type(self).__name__
        if isinstance(params, dict):
            params = [params]
        params = list(params)
        if not params:
            raise ValueError(f"{name}: the parameter list is empty; pass model.parameters() or a "
                             "list of parameter groups")
        is_group = [isinstance(p, dict) for p in params]
        if all(is_group):
            specs = params
        elif any(is_group):
            raise TypeError(f"{name}: params mixes parameter groups (dicts) with parameters; pass "
                            "model.parameters(), or a list of dicts each with 'params'")
        else:
            specs = [{"params": params}]
        model, groups, where = None, [], {}
        for i, spec in enumerate(specs):
            if "params" not in spec:
                raise ValueError(f"{name}: param_groups[{i}] has no 'params'")
            unknown = sorted(set(spec) - {"params", "initial_lr", *GROUP_KEYS})
            if unknown:
                raise ValueError(f"{name}: param_groups[{i}] has unknown keys {unknown}; a group "
                                 f"sets {', '.join(GROUP_KEYS)} and initial_lr (the other "
                                 "hyper-parameters are the optimizer's, shared by all groups)")
            members = spec["params"]
            members = [members] if hasattr(members, "model") else list(members)
            for p in members:
                owner = getattr(p, "model", None)
                if owner is None:
                    raise TypeError(f"{name}: expected fastnet Parameters (model.parameters()), "
                                    f"got {type(p).__name__} in param_groups[{i}]")
                if model is None:
                    model = owner
                elif owner is not model:
                    raise TypeError(f"{name}: an optimizer takes the parameters of one fastnet "
                                    "model (model.parameters()); these come from two")
                if id(p) in where:
                    raise ValueError(f"{name}: parameter {p.name!r} is in param_groups"
                                     f"[{where[id(p)]}] and param_groups[{i}]; each parameter "
                                     "must be in exactly one group")
                where[id(p)] = i
            group = {"params": members}
            for key in GROUP_KEYS:
                group[key] = _group_value(key, spec.get(key, defaults[key]),
                                          f"{name} param_groups[{i}]['{key}']")
            group["initial_lr"] = _number(spec.get("initial_lr", group["lr"]),
                                          f"{name} param_groups[{i}]['initial_lr']")
            groups.append(group)
        if model is None:
            raise ValueError(f"{name}: the parameter groups hold no parameters")
        missing = [p.name for p in model.parameters() if id(p) not in where]
        if missing:
            raise ValueError(f"{name}: parameters {missing} are in no group; fastnet optimizers "
                             "update all of a model's parameters, each in exactly one group")
        group_of = {p.name: where[id(p)] for p in model.parameters()}
        index = np.array([group_of.get(info[0], 0) for info in model._core.tensor_info()],
                         dtype=np.intc)
        return model, groups, index

    def _group_snapshot(self):
        # Taken on every step (_needs_configure): itemgetter is a third of the cost of a loop of
        # get()s; a group whose dict has lost a key takes the slow path, and _checked_groups
        # then names the problem.
        try:
            return tuple(map(_group_values, self.param_groups))
        except (KeyError, TypeError):
            return tuple(tuple(group.get(key) for key in GROUP_KEYS) for group in self.param_groups)

    def _checked_groups(self):
        """The groups' values as C takes them, each checked (the dicts may have been written to
        directly); max_norm None is 0."""
        name = type(self).__name__
        out = []
        for i, group in enumerate(self.param_groups):
            values = [_group_value(key, group.get(key), f"{name} param_groups[{i}]['{key}']")
                      for key in GROUP_KEYS]
            out.append(tuple(0.0 if v is None else v for v in values))
        return out

    # ------------------------------------------------------------------ hyper-parameters

    @classmethod
    def _all_hyper(cls):
        return cls._hyper + _CLIP_KEYS

    def __setattr__(self, name, value):
        if name in GROUP_KEYS and "param_groups" in self.__dict__:
            value = _group_value(name, value, f"{type(self).__name__} {name}")
            for group in self.param_groups:
                group[name] = value
            return
        if name in type(self)._all_hyper():
            self._values[name] = self._validate(name, value)
            object.__setattr__(self, "_hyper_version", self._hyper_version + 1)
            return
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Called only for names not found the ordinary way: the hyper-parameters.
        state = self.__dict__
        if name in GROUP_KEYS and state.get("param_groups"):
            return state["param_groups"][0][name]
        if name in state.get("_values", {}):
            return state["_values"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _validate(self, name, value):
        what = f"{type(self).__name__} {name}"
        if name == "clip_grad_norm":
            return _positive_or_none(value, what, allow_inf=True)
        if name == "clip_grad_value":
            return _positive_or_none(value, what)
        if name in ("amsgrad", "nesterov", "centered", "decoupled_weight_decay"):
            return bool(value)
        return _number(value, what, *self._bounds.get(name, ()))

    def _check_combination(self, values):
        """Checks what no single value shows (SGD: Nesterov needs momentum)."""

    def _c_arguments(self, values):
        """The optimizer-wide hyper-parameters as keyword arguments of the C call."""
        return {key: values[key] for key in self._hyper}

    def _state_slots(self, values):
        """The number of state slots C keeps for these hyper-parameters."""
        raise NotImplementedError

    def _needs_configure(self):
        """Whether the C model lacks this optimizer's current values: it holds another
        optimizer's state, or a hyper-parameter or a group's dict was written since _configure.
        Checked on every step, so that a write takes effect at the next one; compares with what
        was pushed without building the whole _version."""
        model = self.model
        if model._optimizer is not self:
            return True
        pushed = model._optimizer_version
        if pushed[0] != self._hyper_version:
            return True
        return self._group_snapshot() != pushed[1]

    @property
    def _version(self):
        """What the C model must have been given: compared on every step, so that a write to a
        hyper-parameter or to a group's dict takes effect at the next one."""
        return self._hyper_version, self._group_snapshot()

    def _configure(self):
        """Pushes what changed to the C model. The model holds the state of one optimizer at a
        time: an optimizer that takes over a model starts from fresh state, as a new optimizer
        does."""
        core = self.model._core
        version = self._version
        groups = self._checked_groups()
        owner = self.model._optimizer is self
        pushed = self._pushed if owner else None
        if pushed is None or pushed[0] != version[0]:
            values = self._values
            clip = {key: 0.0 if values[key] is None else values[key] for key in _CLIP_KEYS}
            # check_finite: every update first measures the global gradient norm (one more
            # read of the gradients, about 2% of an MLP step) and refuses a NaN or Inf one,
            # naming the layer, with the weights untouched; the norm is then always reported.
            core.set_optimizer(self._kind, lr=groups[0][0], weight_decay=groups[0][1],
                               check_finite=True, **self._c_arguments(values), **clip)
            if not owner:
                core.reset_optimizer()
        if pushed is None or pushed[1] != version[1]:
            core.set_param_groups(groups, self._group_of_tensor)
        object.__setattr__(self, "_pushed", version)
        self.model._optimizer = self
        self.model._optimizer_version = version

    # ------------------------------------------------------------------ stepping

    def step(self):
        """Applies one update from the gradients currently in the model (after ``backward``).

        Raises
        ------
        FloatingPointError
            If the gradient norm is NaN or Inf (the message names the first layer with a
            non-finite gradient); nothing changed.
        """
        if self._needs_configure():
            self._configure()
        self.model._core.step()

    def zero_grad(self):
        self.model.zero_grad()

    @property
    def steps(self):
        """Updates applied so far."""
        return self.model._core.optimizer_steps if self.model._optimizer is self else 0

    @property
    def last_grad_norm(self):
        """The global L2 norm of the gradients (before clipping) at the last update (``step``
        or ``train_step``); None before the first update."""
        if self.model._optimizer is not self:
            return None
        norm = self.model._core.last_grad_norm
        return None if norm < 0 else norm

    # ------------------------------------------------------------------ state dict

    def state_dict(self):
        """Everything resuming needs, as copies: the type, the optimizer-wide hyper-parameters
        (``hyper``), the groups (``param_groups``: their parameters by name and their values),
        the step count and the state slots (arrays laid out as the parameter arena; empty before
        the first step, or after another optimizer took over the model).

        Examples
        --------
        >>> import fastnet as fn
        >>> model = fn.Sequential(fn.Linear(4, 2))
        >>> opt = fn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> state = opt.state_dict()
        >>> state["param_groups"][0]["params"], state["hyper"]["momentum"]
        (['0.weight', '0.bias'], 0.9)
        >>> fn.optim.SGD(model.parameters(), lr=0.5).load_state_dict(state)
        """
        active = self.model._optimizer is self
        core = self.model._core
        groups = [{"params": [p.name for p in group["params"]],
                   **{key: group[key] for key in (*GROUP_KEYS, "initial_lr")}}
                  for group in self.param_groups]
        return {"type": type(self).__name__, "hyper": dict(self._values),
                "param_groups": groups, "steps": self.steps,
                "momentum_started": core.momentum_started if active else False,
                "state": [s.copy() for s in core.optimizer_state()] if active else []}

    def load_state_dict(self, state):
        """Restores what :meth:`state_dict` returned (hyper-parameters, groups, step count and
        state): training then continues bit for bit as if it had not stopped. Everything is
        checked before anything changes."""
        name = type(self).__name__
        kind = state.get("type") if isinstance(state, dict) else type(state).__name__
        if kind != name:
            raise ValueError(f"the state is for {kind}, not {name}")
        params = self.model._params
        hyper = dict(state.get("hyper", {}))
        specs = state.get("param_groups")
        if specs is None:  # written before parameter groups: one group, lr and decay in hyper
            specs = [{"params": list(params),
                      **{k: hyper.pop(k) for k in ("lr", "weight_decay") if k in hyper}}]
        groups_in = []
        for i, spec in enumerate(specs):
            names = list(spec.get("params", []))
            unknown = [n for n in names if n not in params]
            if unknown:
                raise ValueError(f"{name}: the state's param_groups[{i}] names parameters "
                                 f"{unknown} that this model does not have")
            groups_in.append({**{k: v for k, v in spec.items() if k != "params"},
                              "params": [params[n] for n in names]})
        defaults = {key: self.param_groups[0][key] for key in GROUP_KEYS}
        _, groups, index = self._build_groups(groups_in, defaults)
        unknown = sorted(set(hyper) - set(self._all_hyper()))
        if unknown:
            raise ValueError(f"{name}: the state has hyper-parameters {unknown} that {name} "
                             "does not take")
        values = dict(self._values)
        values.update({key: self._validate(key, value) for key, value in hyper.items()})
        self._check_combination(values)
        saved = state.get("state", [])
        arena = self.model._core.param_arena().shape
        if any(np.shape(values_) != arena for values_ in saved):
            raise ValueError(f"optimizer state of shapes {[np.shape(v) for v in saved]} does not "
                             f"match this model's parameter arena {arena}")
        if saved and len(saved) != self._state_slots(values):
            raise ValueError(f"optimizer state has {len(saved)} slots, {name} with these "
                             f"hyper-parameters keeps {self._state_slots(values)}")

        self._values.clear()
        self._values.update(values)
        object.__setattr__(self, "_hyper_version", self._hyper_version + 1)
        self.param_groups = groups
        self._group_of_tensor = index
        self.model._optimizer = None  # a loaded state replaces whatever the model held
        self._configure()
        core = self.model._core
        for slot, values_ in zip(core.optimizer_state(), saved):
            slot[...] = values_
        core.optimizer_steps = int(state.get("steps", 0))
        core.momentum_started = bool(state.get("momentum_started", bool(saved)))

    def __repr__(self):
        # .get: a group's dict may have lost a key (max_norm, read as None: off)
        groups = [{key: group.get(key) for key in GROUP_KEYS
                   if group.get(key) != _OFF.get(key, object())} for group in self.param_groups]
        hyper = [f"{key}={value!r}" for key, value in self._values.items()
                 if key not in _CLIP_KEYS and value != _OFF.get(key, object())]
        clip = [f"{key}={self._values[key]!r}" for key in _CLIP_KEYS
                if self._values[key] is not None]
        if len(groups) == 1:  # in the order of PyTorch's signature, then the additions
            group = groups[0]
            parts = [f"lr={group.get('lr')!r}"] + hyper
            parts.insert(self._repr_decay_position, f"weight_decay={group.get('weight_decay')!r}")
            parts += [f"{key}={group[key]!r}" for key in ("l1", "max_norm") if key in group]
        else:
            parts = [f"param_groups={groups!r}"] + hyper
        return f"{type(self).__name__}({', '.join(parts + clip)})"

    _repr_decay_position = 1


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

    ``g = grad + weight_decay * p``; ``b = momentum * b + (1 - dampening) * g`` (``b = g`` at the
    first step with momentum); ``g = g + momentum * b`` with Nesterov, else ``b``;
    ``p -= lr * g`` (PyTorch's ``SGD``).

    Parameters
    ----------
    params : list of Parameter, or list of dict
        ``model.parameters()``, or parameter groups (see the module's documentation).
    lr, momentum, dampening, weight_decay, nesterov
        As PyTorch's; lr and weight_decay are the groups' defaults.
    decoupled_weight_decay : bool
        Decay as ``p *= 1 - lr * weight_decay`` before the step, instead of adding
        ``weight_decay * p`` to the gradient (SGDW, Loshchilov & Hutter).
    l1 : float
        L1 penalty: ``g += l1 * sign(p)``.
    max_norm : float, optional
        Bound on the L2 norm of each weight row after each update.
    clip_grad_norm, clip_grad_value : float, optional
        Gradient clipping by global norm and by value, before the update.

    Examples
    --------
    >>> import fastnet as fn
    >>> model = fn.Sequential(fn.Linear(4, 2))
    >>> fn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    SGD(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True)
    >>> groups = fn.optim.param_groups(model, weight_decay=5e-4)
    >>> fn.optim.SGD(groups, lr=0.1, momentum=0.9, clip_grad_norm=5.0)  # doctest: +ELLIPSIS
    SGD(param_groups=[{'lr': 0.1, 'weight_decay': 0.0005}, {'lr': 0.1, 'weight_decay': 0.0}], ...)
    """

    _kind = _core.OPT_SGD
    _hyper = ("momentum", "dampening", "nesterov", "decoupled_weight_decay")
    _bounds = {"dampening": (0.0, 1.0)}
    _repr_decay_position = 3

    def __init__(self, params, lr=0.01, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, decoupled_weight_decay=False, l1=0.0, max_norm=None,
                 clip_grad_norm=None, clip_grad_value=None):
        super().__init__(params, lr=lr, weight_decay=weight_decay, l1=l1, max_norm=max_norm,
                         clip_grad_norm=clip_grad_norm, clip_grad_value=clip_grad_value,
                         momentum=momentum, dampening=dampening, nesterov=nesterov,
                         decoupled_weight_decay=decoupled_weight_decay)

    def _check_combination(self, values):
        if values["nesterov"] and (values["momentum"] <= 0 or values["dampening"] != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")

    def _state_slots(self, values):
        return 1  # momentum_buffer


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.), as PyTorch's ``Adagrad``.

    ``g = grad + weight_decay * p``; ``clr = lr / (1 + (t - 1) * lr_decay)``; ``s += g^2``
    (``s`` starts at ``initial_accumulator_value``); ``p -= clr * g / (sqrt(s) + eps)``.

    Parameters
    ----------
    params : list of Parameter, or list of dict
        ``model.parameters()``, or parameter groups (see the module's documentation).
    lr, lr_decay, weight_decay, initial_accumulator_value, eps
        As PyTorch's; lr and weight_decay are the groups' defaults.
    l1, max_norm, clip_grad_norm, clip_grad_value
        Regularisation and clipping, as for :class:`SGD`.

    Examples
    --------
    >>> import fastnet as fn
    >>> model = fn.Sequential(fn.Linear(4, 2))
    >>> fn.optim.Adagrad(model.parameters(), lr=0.05, lr_decay=1e-3)
    Adagrad(lr=0.05, lr_decay=0.001, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10)
    """

    _kind = _core.OPT_ADAGRAD
    _hyper = ("lr_decay", "initial_accumulator_value", "eps")
    _repr_decay_position = 2

    def __init__(self, params, lr=0.01, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, l1=0.0, max_norm=None,
                 clip_grad_norm=None, clip_grad_value=None):
        super().__init__(params, lr=lr, weight_decay=weight_decay, l1=l1, max_norm=max_norm,
                         clip_grad_norm=clip_grad_norm, clip_grad_value=clip_grad_value,
                         lr_decay=lr_decay, initial_accumulator_value=initial_accumulator_value,
                         eps=eps)

    def _state_slots(self, values):
        return 1  # sum


class RMSprop(Optimizer):
    """RMSprop (Hinton), as PyTorch's ``RMSprop``: centered and with momentum if asked.

    ``g = grad + weight_decay * p``; ``v = alpha * v + (1 - alpha) * g^2``; centered:
    ``a = alpha * a + (1 - alpha) * g`` and ``d = sqrt(v - a^2) + eps``, else
    ``d = sqrt(v) + eps``; with momentum ``b = momentum * b + g / d``, ``p -= lr * b``, without
    ``p -= lr * g / d``.

    Parameters
    ----------
    params : list of Parameter, or list of dict
        ``model.parameters()``, or parameter groups (see the module's documentation).
    lr, alpha, eps, weight_decay, momentum, centered
        As PyTorch's; lr and weight_decay are the groups' defaults.
    l1, max_norm, clip_grad_norm, clip_grad_value
        Regularisation and clipping, as for :class:`SGD`.

    Examples
    --------
    >>> import fastnet as fn
    >>> model = fn.Sequential(fn.Linear(4, 2))
    >>> fn.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, centered=True)
    RMSprop(lr=0.001, alpha=0.99, eps=1e-08, weight_decay=0.0, momentum=0.9, centered=True)
    """

    _kind = _core.OPT_RMSPROP
    _hyper = ("alpha", "eps", "momentum", "centered")
    _bounds = {"alpha": (0.0, 1.0)}
    _repr_decay_position = 3

    def __init__(self, params, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, l1=0.0, max_norm=None, clip_grad_norm=None,
                 clip_grad_value=None):
        super().__init__(params, lr=lr, weight_decay=weight_decay, l1=l1, max_norm=max_norm,
                         clip_grad_norm=clip_grad_norm, clip_grad_value=clip_grad_value,
                         alpha=alpha, eps=eps, momentum=momentum, centered=centered)

    def _state_slots(self, values):
        # square_avg; momentum_buffer with momentum (or as a place holder when centered);
        # grad_avg when centered.
        return 3 if values["centered"] else 2 if values["momentum"] > 0 else 1


RMSProp = RMSprop


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, amsgrad and coupled L2 weight decay (PyTorch's
    ``Adam``).

    ``g = grad + weight_decay * p``; ``m = b1 * m + (1 - b1) * g``;
    ``v = b2 * v + (1 - b2) * g^2``; with amsgrad ``vmax = max(vmax, v)`` replaces ``v`` in
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    Parameters
    ----------
    params : list of Parameter, or list of dict
        ``model.parameters()``, or parameter groups (see the module's documentation).
    lr, betas, eps, weight_decay, amsgrad
        As PyTorch's; lr and weight_decay are the groups' defaults.
    decoupled_weight_decay : bool
        ``True`` makes this AdamW, as in PyTorch.
    l1, max_norm, clip_grad_norm, clip_grad_value
        Regularisation and clipping, as for :class:`SGD`.

    Examples
    --------
    >>> import fastnet as fn
    >>> model = fn.Sequential(fn.Linear(4, 2))
    >>> fn.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0)
    >>> fn.optim.Adam(model.parameters(), amsgrad=True, clip_grad_value=1.0)
    Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, amsgrad=True, \
clip_grad_value=1.0)
    """

    _kind = _core.OPT_ADAM
    _hyper = ("betas", "eps", "amsgrad", "decoupled_weight_decay")
    _repr_decay_position = 3

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, decoupled_weight_decay=False, l1=0.0, max_norm=None,
                 clip_grad_norm=None, clip_grad_value=None):
        super().__init__(params, lr=lr, weight_decay=weight_decay, l1=l1, max_norm=max_norm,
                         clip_grad_norm=clip_grad_norm, clip_grad_value=clip_grad_value,
                         betas=betas, eps=eps, amsgrad=amsgrad,
                         decoupled_weight_decay=decoupled_weight_decay)

    def _validate(self, name, value):
        if name == "betas":
            try:
                beta1, beta2 = value
            except (TypeError, ValueError):
                raise ValueError(f"{type(self).__name__} betas must be a pair, got {value!r}")
            return (_number(beta1, "betas[0]", 0.0, 1.0, True),
                    _number(beta2, "betas[1]", 0.0, 1.0, True))
        return super()._validate(name, value)

    def _c_arguments(self, v):
        return dict(beta1=v["betas"][0], beta2=v["betas"][1], eps=v["eps"],
                    amsgrad=v["amsgrad"],
                    decoupled_weight_decay=v.get("decoupled_weight_decay", False))

    def _state_slots(self, values):
        return 3 if values["amsgrad"] else 2  # exp_avg, exp_avg_sq, max_exp_avg_sq


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay``
    before the Adam step, as PyTorch's ``AdamW`` (amsgrad too).

    Examples
    --------
    >>> import fastnet as fn
    >>> model = fn.Sequential(fn.Linear(4, 2))
    >>> fn.optim.AdamW(fn.optim.param_groups(model, weight_decay=0.05), lr=3e-4, amsgrad=True)
    AdamW(param_groups=[{'lr': 0.0003, 'weight_decay': 0.05}, \
{'lr': 0.0003, 'weight_decay': 0.0}], betas=(0.9, 0.999), eps=1e-08, amsgrad=True)
    """

    _kind = _core.OPT_ADAMW
    _hyper = ("betas", "eps", "amsgrad")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, l1=0.0, max_norm=None, clip_grad_norm=None,
                 clip_grad_value=None):
        Optimizer.__init__(self, params, lr=lr, weight_decay=weight_decay, l1=l1,
                           max_norm=max_norm, clip_grad_norm=clip_grad_norm,
                           clip_grad_value=clip_grad_value, betas=betas, eps=eps,
                           amsgrad=amsgrad)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "adagrad": Adagrad, "rmsprop": RMSprop}


def _is_norm_op(op):
    return op.endswith("norm")


def param_groups(model, weight_decay, no_decay=("bias", "norm"), l1=0.0):
    """Two parameter groups: with weight decay, and without for the parameters ``no_decay``
    names — the usual way to keep decay off biases and normalisation parameters.

    Parameters
    ----------
    model : fastnet.Sequential
    weight_decay : float
        The decay of the first group (the second's is 0).
    no_decay : iterable of str
        What is exempt: ``"bias"``, every parameter declared as a bias (the biases of ``Linear``,
        ``Conv2d`` and batch norm, whatever their names); ``"norm"``, every parameter of a
        normalisation layer, a node whose op type ends in ``norm`` (batch norm's ``weight`` and
        ``bias``); any other string is a parameter-name pattern (``fnmatch``: ``"0.*"``,
        ``"*.weight"``), which must match some parameter.
    l1 : float
        The L1 penalty of the first group (the second's is 0).

    Returns
    -------
    list of dict
        ``[{"params": [...], "weight_decay": weight_decay, "l1": l1},
        {"params": [...], "weight_decay": 0.0, "l1": 0.0}]``, without a group that would be
        empty; pass it as an optimizer's ``params``.

    Examples
    --------
    >>> import fastnet as fn
    >>> model = fn.Sequential(fn.Conv2d(3, 8, 3), fn.BatchNorm2d(8), fn.ReLU(), fn.Flatten(),
    ...                       fn.Linear(8 * 30 * 30, 10), input_shape=(3, 32, 32))
    >>> groups = fn.optim.param_groups(model, weight_decay=5e-4)
    >>> [[p.name for p in g["params"]] for g in groups]
    [['0.weight', '4.weight'], ['0.bias', '1.weight', '1.bias', '4.bias']]
    >>> opt = fn.optim.SGD(groups, lr=0.1, momentum=0.9)
    """
    if not hasattr(model, "parameters") or not hasattr(model, "_core"):
        raise TypeError(f"param_groups: model must be a fastnet model, got {type(model).__name__}")
    weight_decay = _number(weight_decay, "param_groups weight_decay")
    l1 = _number(l1, "param_groups l1")
    if isinstance(no_decay, str):
        no_decay = (no_decay,)
    no_decay = tuple(no_decay)
    for token in no_decay:
        if not isinstance(token, str):
            raise TypeError(f"param_groups: no_decay holds strings, got {token!r}")
    params = model.parameters()
    names = [p.name for p in params]
    exempt = set()
    for token in no_decay:
        if token == "bias":
            exempt.update(model._core.bias_tensors())
        elif token == "norm":
            ops = {node: op for node, op, _ in model._core.node_info()}
            exempt.update(n for n in names if _is_norm_op(ops.get(n.rsplit(".", 1)[0], "")))
        else:
            matched = fnmatch.filter(names, token)
            if not matched:
                raise ValueError(f"param_groups: no_decay pattern {token!r} matches no parameter "
                                 f"(the parameters are {names}); the keywords are 'bias' and "
                                 "'norm'")
            exempt.update(matched)
    decay = [p for p in params if p.name not in exempt]
    rest = [p for p in params if p.name in exempt]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "l1": l1})
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0, "l1": 0.0})
    return groups
