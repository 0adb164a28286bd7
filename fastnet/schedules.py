"""Learning-rate schedules: per-epoch or per-step, composable, resumable.

A schedule changes the learning rate of every parameter group of an optimizer. The optimizer
exposes ``param_groups``, a list of dicts with ``"lr"`` (the rate the next update uses) and
``"initial_lr"`` (the base rate; a schedule sets it from ``"lr"`` where it is missing). Every
schedule here except :class:`ReduceLROnPlateau` is a closed form: after ``t`` calls of
:meth:`Schedule.step` each group's rate is ``group["initial_lr"] * factor(t)``, so the rate at any
count can be computed without running the ones before, composition is arithmetic on factors, and
a state dict only needs ``t``.

Each schedule has an ``interval``, ``"epoch"`` or ``"step"``, which tells the training loop when
to call ``step()``: after every epoch, or after every optimizer update. ``t`` counts those calls
and starts at 0 when the schedule is made, which already sets the rates for ``t = 0``.

The formulas, argument names and defaults are PyTorch's (``torch.optim.lr_scheduler``), so a
recipe carries over: :class:`StepLR`, :class:`MultiStepLR`, :class:`ExponentialLR`,
:class:`CosineAnnealingLR`, :class:`SequentialLR` and :class:`ReduceLROnPlateau` give the rates
their PyTorch namesakes give. :class:`InverseTimeLR`, :class:`Constant`, :class:`LinearWarmup`
and :class:`Chain` are fastnet's own; :func:`make_schedule` builds any of them by name.

Examples
--------
Any object with ``param_groups`` can be scheduled; a fastnet optimizer is the usual one.

>>> from types import SimpleNamespace
>>> from fastnet.schedules import CosineAnnealingLR, LinearWarmup
>>> opt = SimpleNamespace(param_groups=[{"lr": 0.1}])
>>> schedule = LinearWarmup(CosineAnnealingLR(opt, T_max=4), warmup=2)
>>> lrs = []
>>> for epoch in range(6):
...     lrs.append(round(opt.param_groups[0]["lr"], 4))   # the rate this epoch trains with
...     schedule.step()
>>> lrs
[0.05, 0.075, 0.1, 0.0854, 0.05, 0.0146]
"""
import bisect
import inspect
import math
import numbers

__all__ = [
    "Schedule", "Constant", "StepLR", "MultiStepLR", "ExponentialLR", "InverseTimeLR",
    "CosineAnnealingLR", "LinearWarmup", "Chain", "SequentialLR", "ReduceLROnPlateau",
    "make_schedule", "SCHEDULE_NAMES",
]

INTERVALS = ("epoch", "step")


# ------------------------------------------------------------------------------ argument checks


def _real(value, what, low=None, high=None, low_open=False, high_open=False):
    """``value`` as a float, or a ValueError naming ``what`` when it is not a finite number in the
    range (``low``/``high`` bound it, open where ``low_open``/``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if low is not None and high is not None:
            bound = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            bound = f"{'>' if low_open else '>='} {low}"
        else:
            bound = f"{'<' if high_open else '<='} {high}"
        raise ValueError(f"{what} must be {bound}, got {value!r}")
    return float(value)


def _integer(value, what, low=0):
    """``value`` as an int, or a ValueError naming ``what`` when it is not an integer >= low."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{what} must be >= {low}, got {value!r}")
    return int(value)


def _choice(value, what, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _param_groups(optimizer, who):
    """The optimizer's parameter groups, checked: a non-empty list of dicts, each with a finite
    ``"lr"`` >= 0."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, (list, tuple)):
        raise TypeError(f"{who} needs an optimizer with param_groups (a list of dicts with "
                        f"'lr'), got {type(optimizer).__name__} without them")
    if not groups:
        raise ValueError(f"{who}: the optimizer has no parameter groups")
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or "lr" not in group:
            raise ValueError(f"{who}: param_groups[{i}] must be a dict with 'lr', got {group!r}")
        _real(group["lr"], f"{who}: param_groups[{i}]['lr']", low=0.0)
    return groups


def _check_config(who, saved, current):
    """Raises a ValueError when a state dict was saved by a schedule with other arguments."""
    if saved == current:
        return
    names = sorted(set(saved) | set(current))
    differences = [f"{name}={saved.get(name)!r} (this one has {current.get(name)!r})"
                   for name in names if saved.get(name) != current.get(name)]
    raise ValueError(f"{who} state was saved with " + ", ".join(differences) +
                     "; make the schedule with the saved arguments to resume it")


# ------------------------------------------------------------------------------ closed forms


class Schedule:
    """Base class of the closed-form schedules: after ``t`` calls of :meth:`step`, every group's
    rate is ``group["initial_lr"] * factor(t, group)``.

    Making a schedule sets ``initial_lr`` from ``lr`` in the groups that lack it, and sets the
    rates for ``t = 0``. A subclass checks and stores its arguments, calls
    ``super().__init__(optimizer, interval)``, and implements ``_factor(t, group)``.

    Parameters
    ----------
    optimizer : object with ``param_groups``
        A list of dicts, each with ``"lr"`` and optionally ``"initial_lr"``.
    interval : {"epoch", "step"}
        When the training loop calls :meth:`step`: after every epoch or after every optimizer
        update.

    Attributes
    ----------
    t : int
        Calls of :meth:`step` so far (or the count a loaded state dict set).
    last_lr : list of float
        The rate of each group, as this schedule last set it.
    needs_metric : bool
        False: :meth:`step` takes no argument (:class:`ReduceLROnPlateau` has it True).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from fastnet.schedules import Constant
    >>> opt = SimpleNamespace(param_groups=[{"lr": 0.1}, {"lr": 0.01}])
    >>> schedule = Constant(opt, interval="step")
    >>> schedule.step()
    >>> schedule.t, schedule.last_lr, opt.param_groups[1]["initial_lr"]
    (1, [0.1, 0.01], 0.01)
    """

    needs_metric = False

    def __init__(self, optimizer, interval="epoch"):
        who = type(self).__name__
        groups = _param_groups(optimizer, who)
        self.interval = _choice(interval, f"{who} interval", INTERVALS)
        self.optimizer = optimizer
        for i, group in enumerate(groups):
            group.setdefault("initial_lr", group["lr"])
            _real(group["initial_lr"], f"{who}: param_groups[{i}]['initial_lr']", low=0.0)
        self.t = 0
        self._last_lr = []
        self._apply()

    # -- what subclasses provide

    def _factor(self, t, group):
        raise NotImplementedError

    def _config(self):
        """The arguments that define the schedule (besides the optimizer), JSON-friendly."""
        return {"interval": self.interval}

    # -- the interface

    def factor(self, t, group=0):
        """The multiplier of ``initial_lr`` after ``t`` calls of :meth:`step`.

        A pure function of ``t``: it neither reads nor changes the schedule's count.

        Parameters
        ----------
        t : int
            The count, >= 0.
        group : int
            Index of the parameter group. Only schedules with an absolute rate among their
            arguments (:class:`CosineAnnealingLR`'s ``eta_min``) give groups different factors.

        Returns
        -------
        float

        Examples
        --------
        >>> from types import SimpleNamespace
        >>> from fastnet.schedules import StepLR
        >>> schedule = StepLR(SimpleNamespace(param_groups=[{"lr": 1.0}]), step_size=2, gamma=0.5)
        >>> [schedule.factor(t) for t in range(6)]
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
        """
        t = _integer(t, f"{type(self).__name__}.factor t")
        groups = self.optimizer.param_groups
        if isinstance(group, bool) or not isinstance(group, numbers.Integral) \
                or not 0 <= group < len(groups):
            raise ValueError(f"{type(self).__name__}.factor group must be an index below "
                             f"{len(groups)} (the parameter groups), got {group!r}")
        return float(self._factor(t, int(group)))

    def lrs_at(self, t):
        """The rate of every group after ``t`` calls of :meth:`step`, without setting them.

        Examples
        --------
        >>> from types import SimpleNamespace
        >>> from fastnet.schedules import ExponentialLR
        >>> opt = SimpleNamespace(param_groups=[{"lr": 1.0}, {"lr": 0.5}])
        >>> ExponentialLR(opt, gamma=0.5).lrs_at(3)
        [0.125, 0.0625]
        """
        groups = self.optimizer.param_groups
        for i, group in enumerate(groups):
            if "initial_lr" not in group:
                raise ValueError(f"{type(self).__name__}: param_groups[{i}] has no 'initial_lr' "
                                 f"(were the groups replaced after the schedule was made?)")
        return [group["initial_lr"] * self.factor(t, i) for i, group in enumerate(groups)]

    def step(self):
        """Advances the count by one and sets every group's rate for the new count.

        Call it after the epoch or the optimizer update (per :attr:`interval`) that used the
        previous rate.
        """
        self.t += 1
        self._apply()

    @property
    def last_lr(self):
        return list(self._last_lr)

    def _apply(self):
        groups = _param_groups(self.optimizer, type(self).__name__)
        lrs = self.lrs_at(self.t)
        for group, lr in zip(groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    def state_dict(self):
        """What resuming needs: the count, each group's ``initial_lr``, and the arguments (to
        check that the schedule loading it is the same). Plain Python values.

        Examples
        --------
        >>> from types import SimpleNamespace
        >>> from fastnet.schedules import StepLR
        >>> schedule = StepLR(SimpleNamespace(param_groups=[{"lr": 0.1}]), step_size=3)
        >>> schedule.step()
        >>> schedule.state_dict()
        {'type': 'StepLR', 't': 1, 'initial_lr': [0.1], 'config': {'interval': 'epoch', \
'step_size': 3, 'gamma': 0.1}}
        """
        return {"type": type(self).__name__, "t": self.t,
                "initial_lr": [float(g["initial_lr"]) for g in self.optimizer.param_groups],
                "config": self._config()}

    def load_state_dict(self, state):
        """Restores what :meth:`state_dict` returned and sets the rates for the restored count,
        so that the next :meth:`step` continues as the saved schedule would have.

        Raises
        ------
        ValueError
            When the state is another kind of schedule's, was saved with other arguments or for
            another number of parameter groups.
        """
        who = type(self).__name__
        if not isinstance(state, dict) or state.get("type") != who:
            saved = state.get("type") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"the state is for {saved}, not {who}")
        _check_config(who, state.get("config"), self._config())
        t = _integer(state.get("t"), f"{who} state t")
        groups = _param_groups(self.optimizer, who)
        initial = state.get("initial_lr")
        if not isinstance(initial, (list, tuple)) or len(initial) != len(groups):
            raise ValueError(f"{who} state has initial_lr {initial!r}; the optimizer has "
                             f"{len(groups)} parameter groups")
        initial = [_real(v, f"{who} state initial_lr[{i}]", low=0.0)
                   for i, v in enumerate(initial)]
        for group, value in zip(groups, initial):
            group["initial_lr"] = value
        self.t = t
        self._apply()

    def __repr__(self):
        config = self._config()
        args = ", ".join(f"{k}={v!r}" for k, v in config.items() if k != "interval")
        args = f"{args}, " if args else ""
        return f"{type(self).__name__}({args}interval={self.interval!r})"


class Constant(Schedule):
    """The initial rate throughout: ``factor(t) = 1``. With :class:`LinearWarmup`, a warm-up to a
    constant rate.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from fastnet.schedules import Constant
    >>> Constant(SimpleNamespace(param_groups=[{"lr": 0.1}])).lrs_at(100)
    [0.1]
    """

    def _factor(self, t, group):
        return 1.0


class StepLR(Schedule):
    """Multiplies the rate by ``gamma`` every ``step_size`` counts:
    ``factor(t) = gamma ** (t // step_size)``.

    Parameters
    ----------
    optimizer : object with ``param_groups``
    step_size : int
        Counts between decays, >= 1.
    gamma : float
        The multiplier, > 0 (above 1 the rate grows).
    interval : {"epoch", "step"}

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from fastnet.schedules import StepLR
    >>> schedule = StepLR(SimpleNamespace(param_groups=[{"lr": 1.0}]), step_size=30)
    >>> schedule.lrs_at(29), schedule.lrs_at(30), schedule.lrs_at(60)
    ([1.0], [0.1], [0.010000000000000002])
    """

    def __init__(self, optimizer, step_size, gamma=0.1, interval="epoch"):
        self.step_size = _integer(step_size, "StepLR step_size", low=1)
        self.gamma = _real(gamma, "StepLR gamma", low=0.0, low_open=True)
        super().__init__(optimizer, interval)

    def _factor(self, t, group):
        return self.gamma ** (t // self.step_size)

    def _config(self):
        return {**super()._config(), "step_size": self.step_size, "gamma": self.gamma}


def _milestones(milestones, what, low=1):
    """A strictly increasing tuple of integers >= low."""
    try:
        values = list(milestones)
    except TypeError:
        raise ValueError(f"{what} must be a list of integers, got {milestones!r}") from None
    values = [_integer(v, f"{what}[{i}]", low=low) for i, v in enumerate(values)]
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{what} must be strictly increasing, got {values!r}")
    return tuple(values)


class MultiStepLR(Schedule):
    """Multiplies the rate by ``gamma`` at each milestone:
    ``factor(t) = gamma ** (number of milestones <= t)``.

    Parameters
    ----------
    optimizer : object with ``param_groups``
    milestones : list of int
        Counts at which the rate decays, strictly increasing, each >= 1.
    gamma : float
        The multiplier, > 0.
    interval : {"epoch", "step"}

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from fastnet.schedules import MultiStepLR
    >>> schedule = MultiStepLR(SimpleNamespace(param_groups=[{"lr": 1.0}]), [2, 5], gamma=0.5)
    >>> [schedule.lrs_at(t)[0] for t in range(7)]
    [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    """

    def __init__(self, optimizer, milestones, gamma=0.1, interval="epoch"):
        self.milestones = _milestones(milestones, "MultiStepLR milestones")
        self.gamma = _real(gamma, "MultiStepLR gamma", low=0.0, low_open=True)
        super().__init__(optimizer, interval)

    def _factor(self, t, group):
        return self.gamma ** bisect.bisect_right(self.milestones, t)

    def _config(self):
        return {**super()._config(), "milestones": list(self.milestones), "gamma": self.gamma}


class ExponentialLR(Schedule):
    """Multiplies the rate by ``gamma`` at every count: ``factor(t) = gamma ** t``.

    Parameters
    ----------
    optimizer : object with ``param_groups``
    gamma : float
        The multiplier, > 0 (above 1 the rate grows, as in a learning-rate range test).
    interval : {"epoch", "step"}

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from fastnet.schedules import ExponentialLR
    >>> ExponentialLR(SimpleNamespace(param_groups=[{"lr": 1.0}]), gamma=0.5).lrs_at(2)
    [0.25]
    """

    def __init__(self, optimizer, gamma, interval="epoch"):
        self.gamma = _real(gamma, "ExponentialLR gamma", low=0.0, low_open=True)
        super().__init__(optimizer, interval)

    def _factor(self, t, group):
        return self.gamma ** t

    def _config(self):
        return {**super()._config(), "gamma": self.gamma}


class InverseTimeLR(Schedule):
    """Inverse-time decay: ``factor(t) = 1 / (1 + decay * t)``.

    Parameters
    ----------
    optimizer : object with ``param_groups``
    decay : float
        >= 0 (0 keeps the rate constant).
    interval : {"epoch", "step"}

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from fastnet.schedules import InverseTimeLR
    >>> schedule = InverseTimeLR(SimpleNamespace(param_groups=[{"lr": 1.0}]), decay=0.5)
    >>> [schedule.lrs_at(t)[0] for t in range(4)]
    [1.0, 0.6666666666666666, 0.5, 0.4]
    """

    def __init__(self, optimizer, decay, interval="epoch"):
        self.decay = _real(decay, "InverseTimeLR decay", low=0.0)
        super().__init__(optimizer, interval)

    def _factor(self, t, group):
        return 1.0 / (1.0 + self.decay * t)

    def _config(self):
        return {**super()._config(), "decay": self.decay}


class CosineAnnealingLR(Schedule):
    """Cosine annealing from each group's initial rate to ``eta_min`` over ``T_max`` counts.

    The rate of a group with initial rate ``lr0`` is
    ``eta_min + (lr0 - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (PyTorch's closed form), so
    ``factor(t, group) = r + (1 - r) * (1 + cos(pi * t / T_max)) / 2`` with
    ``r = eta_min / lr0`` of that group. As in PyTorch the cosine goes on past ``T_max``: the
    rate rises again and is back at ``lr0`` at ``2 * T_max``. Set ``T_max`` to the length of
    training, or follow the annealing with another schedule (:class:`SequentialLR`), to end at
    ``eta_min``. A group whose initial rate is 0 stays at 0.

    Parameters
    ----------
    optimizer : object with ``param_groups``
    T_max : int
        Counts from the initial rate to ``eta_min``, >= 1.
    eta_min : float
        The lowest rate, an absolute rate (not a multiplier), >= 0.
    interval : {"epoch", "step"}

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from fastnet.schedules import CosineAnnealingLR
    >>> opt = SimpleNamespace(param_groups=[{"lr": 1.0}, {"lr": 0.1}])
    >>> schedule = CosineAnnealingLR(opt, T_max=10, eta_min=0.01)
    >>> [[round(lr, 6) for lr in schedule.lrs_at(t)] for t in (0, 5, 10)]
    [[1.0, 0.1], [0.505, 0.055], [0.01, 0.01]]
    """

    def __init__(self, optimizer, T_max, eta_min=0.0, interval="epoch"):
        self.T_max = _integer(T_max, "CosineAnnealingLR T_max", low=1)
        self.eta_min = _real(eta_min, "CosineAnnealingLR eta_min", low=0.0)
        super().__init__(optimizer, interval)

    def _factor(self, t, group):
        initial = self.optimizer.param_groups[group]["initial_lr"]
        if initial == 0:
            return 1.0
        floor = self.eta_min / initial
        return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * t / self.T_max)) / 2.0

    def _config(self):
        return {**super()._config(), "T_max": self.T_max, "eta_min": self.eta_min}


# ------------------------------------------------------------------------------ composition


def _children(schedules, who):
    """Checks that ``schedules`` are closed-form schedules of one optimizer with one interval."""
    schedules = list(schedules)
    if not schedules:
        raise ValueError(f"{who} needs at least one schedule")
    for i, schedule in enumerate(schedules):
        if isinstance(schedule, ReduceLROnPlateau):
            raise ValueError(f"{who} cannot hold ReduceLROnPlateau (schedule {i}): it changes the "
                             f"rate from a metric, not by a factor of the count")
        if not isinstance(schedule, Schedule):
            raise ValueError(f"{who} schedule {i} must be a fastnet schedule, got "
                             f"{type(schedule).__name__}")
    first = schedules[0]
    for i, schedule in enumerate(schedules[1:], start=1):
        if schedule.optimizer is not first.optimizer:
            raise ValueError(f"{who}: schedule {i} ({type(schedule).__name__}) belongs to another "
                             f"optimizer than schedule 0 ({type(first).__name__})")
        if schedule.interval != first.interval:
            raise ValueError(f"{who}: schedule {i} ({type(schedule).__name__}) has interval "
                             f"{schedule.interval!r}, schedule 0 ({type(first).__name__}) has "
                             f"{first.interval!r}; they must agree")
    return schedules


def _describe(schedule):
    return {"type": type(schedule).__name__, "config": schedule._config()}


class LinearWarmup(Schedule):
    """A linear warm-up, then another schedule counted from the end of the warm-up.

    ``factor(t) = start_factor + (1 - start_factor) * t / warmup`` for ``t < warmup``, then
    ``schedule.factor(t - warmup)`` (1 without a schedule). The factor thus rises from
    ``start_factor`` and reaches 1 at ``t = warmup``, where the inner schedule starts at its own
    count 0. This is PyTorch's ``LinearLR(start_factor, total_iters=warmup)`` followed by the
    schedule (``SequentialLR`` with the milestone ``warmup``). The warm-up of the C API's
    schedules (``warmup_steps``) differs: its factor is ``(t + 1) / warmup``, which reaches 1 one
    count earlier.

    Parameters
    ----------
    schedule : Schedule or None
        The schedule after the warm-up; the warm-up takes its optimizer and interval. Step only
        the warm-up, not the schedule inside it. None holds the initial rate after the warm-up
        (``optimizer`` is then needed).
    warmup : int
        Counts of warm-up, >= 1.
    start_factor : float, optional
        The factor at ``t = 0``, in [0, 1]. Default ``1 / warmup``: the first count trains at
        ``initial_lr / warmup``, none trains at 0.
    optimizer : object with ``param_groups``, optional
        Only with ``schedule=None``.
    interval : {"epoch", "step"}, optional
        Only with ``schedule=None``; default "epoch".

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from fastnet.schedules import LinearWarmup, StepLR
    >>> opt = SimpleNamespace(param_groups=[{"lr": 1.0}])
    >>> schedule = LinearWarmup(StepLR(opt, step_size=2, gamma=0.5), warmup=4)
    >>> [schedule.lrs_at(t)[0] for t in range(9)]
    [0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0, 0.5, 0.5, 0.25]
    >>> LinearWarmup(None, warmup=2, start_factor=0.0, optimizer=opt, interval="step")
    LinearWarmup(schedule=None, warmup=2, start_factor=0.0, interval='step')
    """

    def __init__(self, schedule, warmup, start_factor=None, *, optimizer=None, interval=None):
        if schedule is None:
            if optimizer is None:
                raise ValueError("LinearWarmup with schedule=None needs optimizer=")
            interval = "epoch" if interval is None else interval
        else:
            schedule = _children([schedule], "LinearWarmup")[0]
            if optimizer is not None and optimizer is not schedule.optimizer:
                raise ValueError("LinearWarmup: optimizer= is not the schedule's optimizer; "
                                 "leave it out when giving a schedule")
            if interval is not None and interval != schedule.interval:
                raise ValueError(f"LinearWarmup interval={interval!r} differs from the "
                                 f"schedule's {schedule.interval!r}; leave it out when giving a "
                                 f"schedule")
            optimizer, interval = schedule.optimizer, schedule.interval
        self.schedule = schedule
        self.warmup = _integer(warmup, "LinearWarmup warmup", low=1)
        if start_factor is None:
            start_factor = 1.0 / self.warmup
        self.start_factor = _real(start_factor, "LinearWarmup start_factor", low=0.0, high=1.0)
        super().__init__(optimizer, interval)

    def _factor(self, t, group):
        if t < self.warmup:
            return self.start_factor + (1.0 - self.start_factor) * t / self.warmup
        return 1.0 if self.schedule is None else self.schedule._factor(t - self.warmup, group)

    def _config(self):
        inner = None if self.schedule is None else _describe(self.schedule)
        return {**super()._config(), "schedule": inner, "warmup": self.warmup,
                "start_factor": self.start_factor}

    def __repr__(self):
        return (f"LinearWarmup(schedule={self.schedule!r}, warmup={self.warmup}, "
                f"start_factor={self.start_factor!r}, interval={self.interval!r})")


class Chain(Schedule):
    """Several schedules at once: the factor is the product of theirs at the same count
    (PyTorch's ``ChainedScheduler`` for schedules that multiply the rate).

    Parameters
    ----------
    *schedules : Schedule
        At least one, all of the same optimizer and interval. Step only the chain.

    Examples
    --------
    Exponential decay with a further halving at count 3:

    >>> from types import SimpleNamespace
    >>> from fastnet.schedules import Chain, ExponentialLR, MultiStepLR
    >>> opt = SimpleNamespace(param_groups=[{"lr": 1.0}])
    >>> schedule = Chain(ExponentialLR(opt, gamma=0.9), MultiStepLR(opt, [3], gamma=0.5))
    >>> [round(schedule.lrs_at(t)[0], 4) for t in range(5)]
    [1.0, 0.9, 0.81, 0.3645, 0.3281]
    """

    def __init__(self, *schedules):
        self.schedules = _children(schedules, "Chain")
        super().__init__(self.schedules[0].optimizer, self.schedules[0].interval)

    def _factor(self, t, group):
        return math.prod(s._factor(t, group) for s in self.schedules)

    def _config(self):
        return {**super()._config(), "schedules": [_describe(s) for s in self.schedules]}

    def __repr__(self):
        return f"Chain({', '.join(map(repr, self.schedules))})"


class SequentialLR(Schedule):
    """Schedules one after another: schedule ``i`` runs from milestone ``i - 1`` (0 for the
    first) to milestone ``i``, counted from its start (PyTorch's ``SequentialLR``).

    ``factor(t) = schedules[i].factor(t - start)`` with ``i`` the number of milestones <= ``t``
    and ``start`` the last of them (0 when none).

    Parameters
    ----------
    schedules : list of Schedule
        At least one, all of the same optimizer and interval. Step only the sequence.
    milestones : list of int
        One fewer than the schedules, strictly increasing, each >= 1.

    Examples
    --------
    Four epochs halving the rate every two, then cosine annealing over four:

    >>> from types import SimpleNamespace
    >>> from fastnet.schedules import CosineAnnealingLR, SequentialLR, StepLR
    >>> opt = SimpleNamespace(param_groups=[{"lr": 1.0}])
    >>> schedule = SequentialLR([StepLR(opt, step_size=2, gamma=0.5), CosineAnnealingLR(opt, 4)],
    ...                         milestones=[4])
    >>> [round(schedule.lrs_at(t)[0], 4) for t in range(9)]
    [1.0, 1.0, 0.5, 0.5, 1.0, 0.8536, 0.5, 0.1464, 0.0]
    """

    def __init__(self, schedules, milestones):
        if isinstance(schedules, Schedule):
            raise ValueError("SequentialLR schedules must be a list of schedules, got one "
                             f"{type(schedules).__name__}")
        self.schedules = _children(schedules, "SequentialLR")
        self.milestones = _milestones(milestones, "SequentialLR milestones")
        if len(self.milestones) != len(self.schedules) - 1:
            raise ValueError(f"SequentialLR needs one milestone fewer than schedules: got "
                             f"{len(self.schedules)} schedules and milestones "
                             f"{list(self.milestones)}")
        super().__init__(self.schedules[0].optimizer, self.schedules[0].interval)

    def _factor(self, t, group):
        i = bisect.bisect_right(self.milestones, t)
        start = self.milestones[i - 1] if i else 0
        return self.schedules[i]._factor(t - start, group)

    def _config(self):
        return {**super()._config(), "schedules": [_describe(s) for s in self.schedules],
                "milestones": list(self.milestones)}

    def __repr__(self):
        return (f"SequentialLR([{', '.join(map(repr, self.schedules))}], "
                f"milestones={list(self.milestones)})")


# ------------------------------------------------------------------------------ plateau


class ReduceLROnPlateau:
    """Multiplies the rates by ``factor`` when a validation metric stops improving
    (PyTorch's ``ReduceLROnPlateau``, the same rules).

    Call ``step(metric)`` after every validation. A metric is an improvement when it beats the
    best so far by the threshold: in "min" mode ``metric < best * (1 - threshold)`` ("rel") or
    ``metric < best - threshold`` ("abs"); in "max" mode ``metric > best * (1 + threshold)`` or
    ``metric > best + threshold``. The first metric always is one, and a NaN never is. Each
    metric that is not an improvement counts as a bad epoch; when the count exceeds
    ``patience``, every group's rate becomes ``max(lr * factor, min_lr)`` (left as it is when
    that lowers it by ``eps`` or less), the count restarts, and the next ``cooldown`` steps count
    no bad epochs.

    It works on the current rates, not on ``initial_lr``, so it does not combine with the other
    schedules.

    Parameters
    ----------
    optimizer : object with ``param_groups``
    mode : {"min", "max"}
        Whether lower (a loss) or higher (an accuracy) metrics are better.
    factor : float
        The multiplier, in (0, 1).
    patience : int
        Bad epochs tolerated before reducing, >= 0.
    threshold : float
        How much better than the best a metric must be to count as an improvement, >= 0.
    threshold_mode : {"rel", "abs"}
        Whether ``threshold`` is relative to the best or absolute.
    cooldown : int
        Steps after a reduction during which bad epochs are not counted, >= 0.
    min_lr : float or list of float
        The lowest rate, for all groups or one per group, >= 0.
    eps : float
        Reductions of ``eps`` or less are skipped, >= 0.

    Attributes
    ----------
    interval : str
        "epoch".
    needs_metric : bool
        True: :meth:`step` takes the metric.
    t : int
        Calls of :meth:`step` so far.
    best, num_bad_epochs, cooldown_counter
        The state of the rules above.
    last_lr : list of float

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from fastnet.schedules import ReduceLROnPlateau
    >>> opt = SimpleNamespace(param_groups=[{"lr": 1.0}])
    >>> schedule = ReduceLROnPlateau(opt, patience=1, factor=0.5)
    >>> for val_loss in [1.0, 0.9, 0.95, 0.92, 0.91, 0.93]:
    ...     schedule.step(val_loss)
    ...     print(val_loss, schedule.num_bad_epochs, schedule.last_lr)
    1.0 0 [1.0]
    0.9 0 [1.0]
    0.95 1 [1.0]
    0.92 0 [0.5]
    0.91 1 [0.5]
    0.93 0 [0.25]
    """

    needs_metric = True
    interval = "epoch"

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        who = "ReduceLROnPlateau"
        groups = _param_groups(optimizer, who)
        self.optimizer = optimizer
        self.mode = _choice(mode, f"{who} mode", ("min", "max"))
        self.factor = _real(factor, f"{who} factor", low=0.0, high=1.0, low_open=True,
                            high_open=True)
        self.patience = _integer(patience, f"{who} patience")
        self.threshold = _real(threshold, f"{who} threshold", low=0.0)
        self.threshold_mode = _choice(threshold_mode, f"{who} threshold_mode", ("rel", "abs"))
        self.cooldown = _integer(cooldown, f"{who} cooldown")
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(groups):
                raise ValueError(f"{who} min_lr has {len(min_lr)} values, the optimizer has "
                                 f"{len(groups)} parameter groups")
            self.min_lr = [_real(v, f"{who} min_lr[{i}]", low=0.0) for i, v in enumerate(min_lr)]
        else:
            self.min_lr = _real(min_lr, f"{who} min_lr", low=0.0)
        self.eps = _real(eps, f"{who} eps", low=0.0)
        self.t = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self._last_lr = [float(g["lr"]) for g in groups]

    @property
    def last_lr(self):
        return list(self._last_lr)

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def is_better(self, metric, best):
        """Whether ``metric`` improves on ``best`` by the threshold (see the class)."""
        if self.mode == "min":
            bound = best * (1.0 - self.threshold) if self.threshold_mode == "rel" \
                else best - self.threshold
            return metric < bound
        bound = best * (1.0 + self.threshold) if self.threshold_mode == "rel" \
            else best + self.threshold
        return metric > bound

    def step(self, metric=None):
        """Takes the validation metric of the epoch that ended and reduces the rates when it is
        due.

        Parameters
        ----------
        metric : float
            A real number (a NaN counts as no improvement).
        """
        if metric is None:
            raise ValueError("ReduceLROnPlateau.step needs the validation metric: step(metric)")
        if isinstance(metric, bool):
            raise ValueError(f"ReduceLROnPlateau.step metric must be a number, got {metric!r}")
        try:
            current = float(metric)
        except (TypeError, ValueError):
            raise ValueError(f"ReduceLROnPlateau.step metric must be a number, got "
                             f"{metric!r}") from None
        self.t += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    def _reduce(self):
        groups = _param_groups(self.optimizer, "ReduceLROnPlateau")
        floors = self.min_lr if isinstance(self.min_lr, list) else [self.min_lr] * len(groups)
        if len(floors) != len(groups):
            raise ValueError(f"ReduceLROnPlateau min_lr has {len(floors)} values, the optimizer "
                             f"now has {len(groups)} parameter groups")
        for group, floor in zip(groups, floors):
            old = float(group["lr"])
            new = max(old * self.factor, floor)
            if old - new > self.eps:
                group["lr"] = new

    def _config(self):
        return {"mode": self.mode, "factor": self.factor, "patience": self.patience,
                "threshold": self.threshold, "threshold_mode": self.threshold_mode,
                "cooldown": self.cooldown, "min_lr": self.min_lr, "eps": self.eps}

    def state_dict(self):
        """The count, the best metric, the counters, the current rates (this schedule's state
        lives in them) and the arguments. Plain Python values."""
        return {"type": "ReduceLROnPlateau", "t": self.t, "best": self.best,
                "num_bad_epochs": self.num_bad_epochs, "cooldown_counter": self.cooldown_counter,
                "lr": [float(g["lr"]) for g in self.optimizer.param_groups],
                "config": self._config()}

    def load_state_dict(self, state):
        """Restores what :meth:`state_dict` returned, rates included.

        Raises
        ------
        ValueError
            When the state is another schedule's, was saved with other arguments or for another
            number of parameter groups.
        """
        who = "ReduceLROnPlateau"
        if not isinstance(state, dict) or state.get("type") != who:
            saved = state.get("type") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"the state is for {saved}, not {who}")
        _check_config(who, state.get("config"), self._config())
        groups = _param_groups(self.optimizer, who)
        lrs = state.get("lr")
        if not isinstance(lrs, (list, tuple)) or len(lrs) != len(groups):
            raise ValueError(f"{who} state has lr {lrs!r}; the optimizer has {len(groups)} "
                             f"parameter groups")
        lrs = [_real(v, f"{who} state lr[{i}]", low=0.0) for i, v in enumerate(lrs)]
        best = state.get("best")
        if isinstance(best, bool) or not isinstance(best, numbers.Real):
            raise ValueError(f"{who} state best must be a number, got {best!r}")
        t = _integer(state.get("t"), f"{who} state t")
        bad = _integer(state.get("num_bad_epochs"), f"{who} state num_bad_epochs")
        cooldown = _integer(state.get("cooldown_counter"), f"{who} state cooldown_counter")
        for group, lr in zip(groups, lrs):
            group["lr"] = lr
        self.t, self.best, self.num_bad_epochs, self.cooldown_counter = t, float(best), bad, \
            cooldown
        self._last_lr = lrs

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"ReduceLROnPlateau({args})"


# ------------------------------------------------------------------------------ by name


_BY_NAME = {
    "constant": Constant,
    "step": StepLR,
    "multistep": MultiStepLR,
    "exponential": ExponentialLR,
    "inverse_time": InverseTimeLR,
    "cosine": CosineAnnealingLR,
    "plateau": ReduceLROnPlateau,
}
SCHEDULE_NAMES = tuple(_BY_NAME)


def _arguments(cls):
    """The keyword arguments of ``cls`` after the optimizer: {name: default or required}."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]
    return {p.name: p.default for p in parameters}


def make_schedule(name, optimizer, **kwargs):
    """A schedule by name, for the command line and recipe files.

    Parameters
    ----------
    name : str
        One of ``SCHEDULE_NAMES``: "constant" (:class:`Constant`), "step" (:class:`StepLR`),
        "multistep" (:class:`MultiStepLR`), "exponential" (:class:`ExponentialLR`),
        "inverse_time" (:class:`InverseTimeLR`), "cosine" (:class:`CosineAnnealingLR`),
        "plateau" (:class:`ReduceLROnPlateau`). Case and "-" for "_" do not matter.
    optimizer : object with ``param_groups``
    **kwargs
        The arguments of that class (``step_size``, ``gamma``, ``T_max``, ``interval``...),
        plus ``warmup`` (counts of :class:`LinearWarmup` before the schedule; 0 or None for none)
        and ``warmup_start_factor`` (its ``start_factor``). "plateau" takes no warm-up.

    Returns
    -------
    Schedule or ReduceLROnPlateau

    Raises
    ------
    ValueError
        For an unknown name, an argument the schedule does not take, a missing one, or a value
        out of range.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from fastnet.schedules import make_schedule
    >>> opt = SimpleNamespace(param_groups=[{"lr": 0.1}])
    >>> make_schedule("cosine", opt, T_max=50, warmup=5, interval="step")
    LinearWarmup(schedule=CosineAnnealingLR(T_max=50, eta_min=0.0, interval='step'), warmup=5, \
start_factor=0.2, interval='step')
    >>> make_schedule("step", opt, T_max=50)
    Traceback (most recent call last):
    ...
    ValueError: make_schedule('step') does not take T_max; it takes step_size, gamma, interval, \
warmup, warmup_start_factor
    """
    if not isinstance(name, str):
        raise ValueError(f"make_schedule name must be one of {', '.join(SCHEDULE_NAMES)}, got "
                         f"{name!r}")
    key = name.strip().lower().replace("-", "_")
    if key not in _BY_NAME:
        raise ValueError(f"make_schedule name must be one of {', '.join(SCHEDULE_NAMES)}, got "
                         f"{name!r}")
    cls = _BY_NAME[key]
    accepted = _arguments(cls)
    warmup_arguments = ("warmup", "warmup_start_factor") if cls is not ReduceLROnPlateau else ()
    unknown = [k for k in kwargs if k not in accepted and k not in warmup_arguments]
    if unknown:
        takes = ", ".join(list(accepted) + list(warmup_arguments)) or "nothing"
        if cls is ReduceLROnPlateau and any(k.startswith("warmup") for k in unknown):
            raise ValueError("make_schedule('plateau') takes no warm-up: ReduceLROnPlateau "
                             "changes the current rate and does not combine with one")
        raise ValueError(f"make_schedule({key!r}) does not take {', '.join(unknown)}; it takes "
                         f"{takes}")
    missing = [k for k, default in accepted.items()
               if default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ValueError(f"make_schedule({key!r}) needs {', '.join(missing)}")
    warmup = kwargs.pop("warmup", None)
    start_factor = kwargs.pop("warmup_start_factor", None)
    schedule = cls(optimizer, **kwargs)
    if warmup is None or (warmup == 0 and not isinstance(warmup, bool)):
        if start_factor is not None:
            raise ValueError(f"make_schedule({key!r}) got warmup_start_factor={start_factor!r} "
                             f"without a warmup")
        return schedule
    return LinearWarmup(schedule, warmup, start_factor)
