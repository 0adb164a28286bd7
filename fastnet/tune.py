"""Random hyper-parameter search: sample configurations, train each for a few epochs, rank them
by a validation metric.

A *space* maps option names to distributions (:class:`LogUniform`, :class:`Uniform`,
:class:`IntUniform`, :class:`Choice`). Trial ``k`` draws its configuration from
``numpy.random.default_rng([seed, k])``, one value per name in sorted name order, so it depends
only on the seed, the trial number and the space, never on the other trials: a search of 10
trials begins with the 5 trials of a search of 5.

The search sees the training and validation splits only. It takes a
:class:`~fastnet.data.Splits` (whose ``test`` it never reads) or a ``(train, val)`` pair, and
hands each trial ``train`` and ``val`` alone; the test split stays untouched for the final
evaluation of the configuration the search picks.

``fastnet tune`` is the command-line form: the options of ``fastnet train`` (the base
configuration), ``--space`` (what to search), ``--trials``, ``--trial-epochs`` and ``--out DIR``,
which receives ``tune.json`` (every trial) and ``best_recipe.json``, which
``fastnet train --recipe DIR/best_recipe.json`` trains in full.

Examples
--------
>>> import fastnet as fn
>>> from fastnet import tune
>>> space = {"lr": tune.LogUniform(1e-3, 1e-2), "hidden": tune.Choice([[32], [64]])}
>>> result = tune.random_search({"epochs": 2}, space, fn.load_digits(), trials=2, seed=0,
...                             progress=False)
>>> len(result.trials), sorted(result.best_params)
(2, ['hidden', 'lr'])
"""
import argparse
import copy
import json
import math
import numbers
import os
import re
import sys
import time

import numpy as np

from fastnet.train import as_dataset

SUMMARY = "random hyper-parameter search on the validation split"

# The options of `fastnet train` that a search configuration may set (as base options or in the
# space), i.e. those the trial training below honours. `epochs` is the length of the full run
# written to the best recipe; trials run `--trial-epochs`.
CONFIG_OPTIONS = (
    "data", "model", "input_shape", "hidden", "epochs", "batch_size", "optimizer", "lr",
    "momentum", "weight_decay", "no_decay", "l1", "max_norm", "clip_grad_norm",
    "clip_grad_value", "init", "bias_init", "schedule", "schedule_interval", "warmup", "loss",
    "label_smoothing", "teacher", "temperature", "alpha", "scale", "augment", "balanced",
    "early_stopping", "early_stopping_metric", "min_delta", "average", "on_nonfinite",
    "deterministic", "no_monitors", "dtype", "seed",
)
# Options a space cannot search: where the data is, its dtype, and the run length.
NOT_SEARCHABLE = ("data", "dtype", "epochs")
# Train options copied onto `fastnet tune` besides the configuration ones.
RUN_OPTIONS = ("recipe", "threads", "quiet")

METRICS = ("val_accuracy", "val_loss")


# ------------------------------------------------------------------------------ distributions


def _number(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return value


class Distribution:
    """A distribution of one hyper-parameter: :meth:`sample` draws a value from a numpy
    Generator, :meth:`to_dict` describes it as ``{kind: [arguments]}`` (the form space files
    use)."""

    kind = None

    def sample(self, rng):
        raise NotImplementedError

    def _args(self):
        raise NotImplementedError

    def to_dict(self):
        """``{kind: [arguments]}``, e.g. ``{"loguniform": [0.0001, 0.1]}``."""
        return {self.kind: copy.deepcopy(self._args())}

    def __eq__(self, other):
        return (type(self) is type(other) and self.kind == other.kind
                and self._args() == other._args())

    def __hash__(self):
        return hash((self.kind, json.dumps(self._args())))

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(repr(a) for a in self._args())})"


class LogUniform(Distribution):
    """Log-uniform on ``[lo, hi]``: ``exp(U(log lo, log hi))``, for scales such as learning
    rates and weight decay.

    Parameters
    ----------
    lo, hi : float
        ``0 < lo < hi``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnet.tune import LogUniform
    >>> value = LogUniform(1e-4, 1e-1).sample(np.random.default_rng(0))
    >>> 1e-4 <= value <= 1e-1
    True
    """

    kind = "loguniform"

    def __init__(self, lo, hi):
        self.lo = float(_number(lo, "LogUniform lo"))
        self.hi = float(_number(hi, "LogUniform hi"))
        if not 0 < self.lo < self.hi:
            raise ValueError(f"LogUniform needs 0 < lo < hi, got lo={lo!r}, hi={hi!r}")

    def sample(self, rng):
        value = float(np.exp(rng.uniform(np.log(self.lo), np.log(self.hi))))
        return min(max(value, self.lo), self.hi)  # exp(log(x)) may round just outside

    def _args(self):
        return [self.lo, self.hi]


class Uniform(Distribution):
    """Uniform on ``[lo, hi]``.

    Parameters
    ----------
    lo, hi : float
        ``lo < hi``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnet.tune import Uniform
    >>> 0.0 <= Uniform(0.0, 0.2).sample(np.random.default_rng(0)) <= 0.2
    True
    """

    kind = "uniform"

    def __init__(self, lo, hi):
        self.lo = float(_number(lo, "Uniform lo"))
        self.hi = float(_number(hi, "Uniform hi"))
        if not self.lo < self.hi:
            raise ValueError(f"Uniform needs lo < hi, got lo={lo!r}, hi={hi!r}")

    def sample(self, rng):
        return float(rng.uniform(self.lo, self.hi))

    def _args(self):
        return [self.lo, self.hi]


class IntUniform(Distribution):
    """A uniformly drawn integer in ``[lo, hi]`` (both included); with ``log=True`` uniform in
    the logarithm (as many values between 16 and 32 as between 32 and 64), for sizes.

    Parameters
    ----------
    lo, hi : int
        ``lo <= hi`` (``1 <= lo`` with ``log=True``).
    log : bool

    Examples
    --------
    >>> import numpy as np
    >>> from fastnet.tune import IntUniform
    >>> value = IntUniform(16, 256, log=True).sample(np.random.default_rng(0))
    >>> isinstance(value, int) and 16 <= value <= 256
    True
    """

    kind = "int"

    def __init__(self, lo, hi, log=False):
        for name, value in (("lo", lo), ("hi", hi)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"IntUniform {name} must be an integer, got {value!r}")
        self.lo, self.hi, self.log = int(lo), int(hi), bool(log)
        if self.lo > self.hi:
            raise ValueError(f"IntUniform needs lo <= hi, got lo={lo!r}, hi={hi!r}")
        if self.log and self.lo < 1:
            raise ValueError(f"IntUniform(log=True) needs lo >= 1, got lo={lo!r}")
        if self.log:
            self.kind = "logint"

    def sample(self, rng):
        if not self.log:
            return int(rng.integers(self.lo, self.hi, endpoint=True))
        value = math.floor(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi + 1))))
        return int(min(max(value, self.lo), self.hi))

    def _args(self):
        return [self.lo, self.hi]

    def __repr__(self):
        return f"IntUniform({self.lo}, {self.hi}{', log=True' if self.log else ''})"


class Choice(Distribution):
    """One of ``options``, each equally likely.

    Parameters
    ----------
    options : sequence
        At least one value; values may be lists (``[[64], [128, 128]]`` for hidden sizes).

    Examples
    --------
    >>> import numpy as np
    >>> from fastnet.tune import Choice
    >>> Choice([32, 64, 128]).sample(np.random.default_rng(0)) in (32, 64, 128)
    True
    """

    kind = "choice"

    def __init__(self, options):
        if isinstance(options, (str, bytes)) or not hasattr(options, "__len__"):
            raise ValueError(f"Choice needs a list of options, got {options!r}")
        self.options = [list(o) if isinstance(o, tuple) else o for o in options]
        if not self.options:
            raise ValueError("Choice needs at least one option, got an empty list")

    def sample(self, rng):
        return copy.deepcopy(self.options[int(rng.integers(len(self.options)))])

    def _args(self):
        return self.options

    def __repr__(self):
        return f"Choice({self.options!r})"


_KINDS = {"loguniform": LogUniform, "log-uniform": LogUniform, "uniform": Uniform,
          "int": IntUniform, "intuniform": IntUniform,
          "logint": lambda lo, hi: IntUniform(lo, hi, log=True), "choice": Choice}


# ------------------------------------------------------------------------------ spaces


def _value_from_text(text):
    """'64' -> 64, '1e-3' -> 0.001, 'true' -> True, '64,64' -> [64, 64], else the text."""
    text = text.strip()
    if "," in text:
        parts = [_value_from_text(p) for p in text.split(",") if p.strip()]
        if parts and all(isinstance(p, numbers.Number) and not isinstance(p, bool)
                         for p in parts):
            return parts
        return text
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _distribution_from_text(name, text, what):
    kind, sep, rest = text.strip().partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in _KINDS:
        raise ValueError(f"{what}: {name}={text!r}: expected KIND:ARGS with KIND one of "
                         f"loguniform, uniform, int, logint, choice (e.g. {name}=loguniform:"
                         f"1e-4:1e-1 or {name}=choice:32/64/128)")
    if kind == "choice":
        return Choice([_value_from_text(v) for v in rest.split("/")])
    bounds = rest.split(":")
    if len(bounds) != 2:
        raise ValueError(f"{what}: {name}={text!r}: {kind} takes two bounds, LO:HI")
    values = [_value_from_text(b) for b in bounds]
    if any(isinstance(v, str) for v in values):
        raise ValueError(f"{what}: {name}={text!r}: the bounds must be numbers")
    return _KINDS[kind](*values)


def _distribution_from_value(name, value, what):
    if isinstance(value, Distribution):
        return value
    if isinstance(value, str):
        return _distribution_from_text(name, value, what)
    if isinstance(value, dict) and len(value) == 1:
        (kind, args), = value.items()
        kind = str(kind).lower()
        if kind == "choice" and isinstance(args, list):
            return Choice(args)
        if kind in _KINDS and isinstance(args, list) and len(args) == 2:
            return _KINDS[kind](*args)
    raise ValueError(f"{what}: {name} must be a distribution such as 'loguniform:1e-4:1e-1' or "
                     f"{{\"loguniform\": [1e-4, 1e-1]}} or {{\"choice\": [32, 64]}}, got {value!r}")


def parse_space(text, what="space"):
    """A space from its text form: ``NAME=KIND:ARGS`` items separated by commas (or by
    semicolons).

    Kinds: ``loguniform:LO:HI``, ``uniform:LO:HI``, ``int:LO:HI``, ``logint:LO:HI`` and
    ``choice:A/B/C`` (options separated by ``/``; an option with commas is a list, e.g.
    ``hidden=choice:64/128,128`` chooses between ``[64]`` and ``[128, 128]``). A comma separates
    two items only where a new ``NAME=`` follows, so commas inside an option are kept; when the
    text holds a ``;``, items are separated by ``;`` alone. Dashes in names become underscores.

    Examples
    --------
    >>> from fastnet.tune import parse_space
    >>> space = parse_space("lr=loguniform:1e-4:1e-1,hidden=choice:64,64/128")
    >>> space["hidden"], space["lr"]
    (Choice([[64, 64], 128]), LogUniform(0.0001, 0.1))
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what}: expected NAME=KIND:ARGS items, got {text!r}")
    if ";" in text:
        items = text.split(";")
    else:
        items = re.split(r",(?=\s*[A-Za-z_][A-Za-z0-9_-]*\s*=)", text)
    space = {}
    for item in filter(str.strip, items):
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ValueError(f"{what}: expected NAME=KIND:ARGS, got {item.strip()!r}")
        if name in space:
            raise ValueError(f"{what}: {name} is given twice")
        space[name] = _distribution_from_text(name, value, what)
    return space


def load_space(path):
    """A space from a JSON or TOML file: a table of ``name = "KIND:ARGS"`` strings or
    ``name = {KIND = [ARGS]}`` tables, e.g. (TOML)::

        lr = "loguniform:1e-4:1e-1"
        weight_decay = {loguniform = [1e-6, 1e-2]}
        batch_size = {choice = [32, 64, 128]}
        hidden = {choice = [[64, 64], [128, 128]]}
    """
    from fastnet import zoo

    content = zoo.read_description(os.fspath(path))
    if not isinstance(content, dict) or not content:
        raise ValueError(f"{path}: a space file holds a table of name -> distribution")
    return {str(name).replace("-", "_"): _distribution_from_value(name, value, str(path))
            for name, value in content.items()}


def check_space(space, what="space"):
    """The space as a dict of name -> :class:`Distribution`; strings and ``{kind: args}``
    tables are converted."""
    if not isinstance(space, dict) or not space:
        raise ValueError(f"{what} must be a non-empty dict of name -> distribution, got "
                         f"{space!r}")
    checked = {}
    for name, value in space.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what}: names must be non-empty strings, got {name!r}")
        checked[name] = _distribution_from_value(name, value, what)
    return checked


def space_to_dict(space):
    """A space as JSON-able ``{name: {kind: [arguments]}}`` (what :func:`load_space` reads)."""
    return {name: dist.to_dict() for name, dist in space.items()}


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def sample_config(space, seed, trial):
    """Trial ``trial``'s values: one draw per name, in sorted name order, from
    ``numpy.random.default_rng([seed, trial])``.

    Examples
    --------
    >>> from fastnet.tune import LogUniform, sample_config
    >>> space = {"lr": LogUniform(1e-4, 1e-1)}
    >>> sample_config(space, seed=0, trial=3) == sample_config(space, seed=0, trial=3)
    True
    """
    space = check_space(space)
    seed = _check_seed(seed)
    if isinstance(trial, bool) or not isinstance(trial, numbers.Integral) or trial < 0:
        raise ValueError(f"trial must be a non-negative integer, got {trial!r}")
    rng = np.random.default_rng([seed, int(trial)])
    return {name: space[name].sample(rng) for name in sorted(space)}


# ------------------------------------------------------------------------------ configurations


def _train_actions():
    """The `fastnet train` parser's actions by destination."""
    from fastnet import cli

    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    return {a.dest: a for a in train._actions if a.dest != "help"}


def _int_typed(action):
    try:
        return isinstance(action.type("1"), int)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        return False


def coerce_option(name, value, action):
    """``value`` as ``fastnet train`` would hold option ``name`` (the parser's action), or a
    ValueError naming the option and the value."""
    def bad(reason):
        return ValueError(f"option {name}: {reason}, got {value!r}")

    if action.nargs == 0:  # store_true
        if not isinstance(value, (bool, np.bool_)):
            raise bad("expected true or false")
        return bool(value)
    if value is None:
        if action.default is not None:
            raise bad("a value is needed")
        return None
    if name in ("hidden", "input_shape"):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, str):
            try:
                return list(action.type(value))
            except argparse.ArgumentTypeError as error:
                raise bad(str(error)) from None
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
                for v in value):
            raise bad("expected positive integer sizes such as [128, 64]")
        return [int(v) for v in value]
    if isinstance(value, str):
        if action.type is not None:
            try:
                value = action.type(value)
            except (argparse.ArgumentTypeError, ValueError) as error:
                raise bad(str(error)) from None
    elif name == "schedule" and isinstance(value, dict):
        pass  # {"name": "cosine", "T_max": 10}, as build_schedule takes it
    elif isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and action.type is not None:
        if _int_typed(action):
            if not float(value).is_integer():
                raise bad("expected an integer (search it with IntUniform or Choice)")
            value = int(value)
        try:
            value = action.type(str(value))
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise bad(str(error)) from None
    else:
        raise bad("expected " + ("a number" if action.type is not None else "a string"))
    if action.choices is not None and value not in action.choices:
        raise bad(f"expected one of {', '.join(map(str, action.choices))}")
    return value


def make_args(config, actions=None):
    """An ``argparse.Namespace`` of ``fastnet train``'s defaults with ``config`` applied (names
    with underscores or dashes), every value checked as the command line checks it."""
    actions = actions or _train_actions()
    args = argparse.Namespace(**{dest: copy.deepcopy(a.default) for dest, a in actions.items()})
    for key, value in config.items():
        name = str(key).replace("-", "_")
        if name not in CONFIG_OPTIONS or name not in actions:
            raise ValueError(f"unknown option {key!r} in the configuration (known: "
                             f"{', '.join(sorted(o for o in CONFIG_OPTIONS if o in actions))})")
        setattr(args, name, coerce_option(name, value, actions[name]))
    return args


def train_config(config, train, val, epochs=None, progress=False):
    """Trains the model a ``fastnet train`` configuration describes on ``train``, evaluating on
    ``val`` after every epoch, exactly as the command line would (model, optimizer, schedule,
    loss, scaling fitted on ``train``, augmentation, sampling).

    Parameters
    ----------
    config : dict
        ``fastnet train`` options by name (``{"lr": 3e-3, "hidden": [64]}``); the others keep
        their defaults.
    train, val : fastnet.Dataset
    epochs : int, optional
        Overrides ``config["epochs"]``.
    progress : bool

    Returns
    -------
    model : fastnet.Sequential
    history : fastnet.History

    Examples
    --------
    >>> import fastnet as fn
    >>> from fastnet.tune import train_config
    >>> data = fn.load_digits()
    >>> model, history = train_config({"hidden": [32], "lr": 3e-3}, data.train, data.val, epochs=2)
    >>> len(history), model.input_shape
    (2, (64,))
    """
    model, history, _ = _train_config(config, train, val, epochs, progress)
    return model, history


def _train_config(config, train, val, epochs=None, progress=False):
    """:func:`train_config`, and the Trainer."""
    import fastnet as fn
    from fastnet import cli

    args = make_args(config)
    if epochs is not None:
        args.epochs = epochs
    model, trainer, (train, val, _) = cli.prepare_training(args, fn.Splits(train, val, None),
                                                           progress=progress)
    history = trainer.fit(train, val, epochs=args.epochs, batch_size=args.batch_size)
    if trainer.averaging is not None:
        trainer.apply_averaged_weights()
    return model, history, trainer


# ------------------------------------------------------------------------------ the search


def search_data(data):
    """``(train, val)`` from a Splits (its test split is never read) or a ``(train, val)``
    pair; a ValueError without a validation split."""
    from fastnet.data import Splits

    if isinstance(data, Splits):
        train, val = data.train, data.val  # never data.test
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        train, val = data
    else:
        raise TypeError(f"data must be a fastnet Splits or a (train, val) pair, got "
                        f"{type(data).__name__}")
    train, val = as_dataset(train, "data train"), as_dataset(val, "data val")
    if train is None:
        raise ValueError("data has no training split")
    if val is None:
        raise ValueError("the search ranks trials on a validation split and data has none "
                         "(the test split is never used for this)")
    return train, val


class _Scored:
    """A History scored on one of its epochs (the best one, when early stopping restored it)."""

    def __init__(self, history, record):
        self.history, self.record = history, record


def _metrics_of(outcome, metric):
    """A trial function's result as a dict of metrics."""
    from fastnet.train import History

    if isinstance(outcome, _Scored):
        outcome = outcome.record
    elif isinstance(outcome, History):
        if not len(outcome):
            raise ValueError("the train function returned an empty History")
        outcome = outcome[-1]
    if isinstance(outcome, numbers.Real) and not isinstance(outcome, bool):
        return {metric: float(outcome)}
    if not isinstance(outcome, dict) or metric not in outcome:
        raise ValueError(f"the train function must return a number, a History or a dict with "
                         f"{metric!r}, got {outcome!r}")
    return dict(outcome)


def _scalars(record):
    """The numbers and strings of a metrics record (no timings, no per-layer statistics)."""
    return {k: v for k, v in record.items() if k != "seconds" and (
        v is None or isinstance(v, (str, numbers.Real)))}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class SearchResult:
    """The trials of a :func:`random_search`, ranked by its metric.

    Attributes
    ----------
    trials : list of dict
        In trial order: ``trial`` (its number), ``params`` (the sampled values), ``metrics``
        (the last epoch's ``val_accuracy``, ``val_loss``, ... or what the train function
        returned), ``score`` (the ranking metric; None for a failed trial), ``status`` (``"ok"``
        or ``"failed"``), ``error`` and ``seconds``.
    metric, mode : str
        The ranking metric and ``"max"`` or ``"min"``.
    seed : int
    space : dict
    base : dict
        The fixed configuration every trial shares (empty for a train function).

    Examples
    --------
    >>> import fastnet as fn
    >>> from fastnet import tune
    >>> result = tune.random_search({"hidden": [32], "epochs": 1}, {"lr": tune.LogUniform(
    ...     1e-3, 1e-2)}, fn.load_digits(), trials=2, progress=False)
    >>> print(result.table())  # doctest: +SKIP
    rank  trial  lr        val_accuracy  val_loss
       1      1  0.007451        0.8141    0.8830
       2      0  0.001875        0.4981    1.8880
    """

    def __init__(self, trials, metric, mode, seed, space, base=None):
        self.trials = trials
        self.metric, self.mode, self.seed = metric, mode, seed
        self.space = space
        self.base = dict(base or {})

    def _key(self, trial):
        score = trial["score"]
        if score is None or not math.isfinite(score):
            return (1, 0.0, trial["trial"])
        return (0, -score if self.mode == "max" else score, trial["trial"])

    @property
    def ranked(self):
        """The trials from best to worst (failed ones last; ties by trial number)."""
        return sorted(self.trials, key=self._key)

    @property
    def best_trial(self):
        """The best trial's record; a RuntimeError when every trial failed."""
        ranked = self.ranked
        if not ranked or ranked[0]["status"] != "ok":
            raise RuntimeError("every trial failed: " + "; ".join(
                f"trial {t['trial']}: {t['error']}" for t in self.trials))
        return ranked[0]

    @property
    def best_params(self):
        """The best trial's sampled values."""
        return copy.deepcopy(self.best_trial["params"])

    @property
    def best(self):
        """The best configuration: the base configuration with the best trial's values."""
        return {**copy.deepcopy(self.base), **self.best_params}

    def table(self):
        """The ranked trials as an aligned text table: rank, trial, the sampled values and the
        validation metrics."""
        names = sorted(self.space)
        metrics = [self.metric] + [m for m in METRICS if m != self.metric
                                   and any(m in t["metrics"] for t in self.trials)]
        failed = any(t["status"] != "ok" for t in self.trials)
        header = ["rank", "trial"] + names + metrics + (["note"] if failed else [])
        rows = []
        for rank, trial in enumerate(self.ranked, 1):
            row = [str(rank), str(trial["trial"])]
            row += [_cell(trial["params"].get(n)) for n in names]
            ok = trial["status"] == "ok"
            row += [_metric_cell(trial["metrics"].get(m)) if ok else "" for m in metrics]
            if failed:
                row.append("" if ok else "failed: " + _short(trial["error"]))
            rows.append(row)
        numeric = [all(_is_numeric_cell(r[i]) for r in rows) for i in range(len(header))]
        widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
        lines = []
        for row in [header] + rows:
            cells = [c.rjust(w) if numeric[i] else c.ljust(w)
                     for i, (c, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def __repr__(self):
        ok = sum(t["status"] == "ok" for t in self.trials)
        best = self.ranked[0]["score"] if ok else None
        return (f"SearchResult({len(self.trials)} trials, {ok} ok, {self.metric} "
                f"{self.mode}, best={best})")

    def to_dict(self):
        """Everything as JSON-able data: metric, mode, seed, space, base, trials, best."""
        ok = any(t["status"] == "ok" for t in self.trials)
        return _jsonable({
            "metric": self.metric, "mode": self.mode, "seed": self.seed,
            "space": space_to_dict(self.space), "base": self.base, "trials": self.trials,
            "ranking": [t["trial"] for t in self.ranked],
            "best": self.best if ok else None,
            "best_trial": self.best_trial["trial"] if ok else None,
        })

    def to_json(self, indent=2):
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value)
    return "" if value is None else str(value)


def _metric_cell(value):
    return "" if value is None else f"{value:.4f}"


def _is_numeric_cell(text):
    try:
        float(text)
        return True
    except ValueError:
        return text == ""


def _short(text, limit=60):
    text = str(text).replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_metric(metric, mode):
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric must be a metric name such as 'val_accuracy', got {metric!r}")
    if mode is None:
        if metric.endswith("accuracy"):
            mode = "max"
        elif metric.endswith("loss"):
            mode = "min"
        else:
            raise ValueError(f"mode must be given ('max' or 'min') for the metric {metric!r}")
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    return metric, mode


def random_search(objective, space, data=None, *, trials=10, seed=0, metric="val_accuracy",
                  mode=None, epochs=None, progress=None):
    """Random search: ``trials`` configurations drawn from ``space``, each trained and scored
    on the validation split.

    Parameters
    ----------
    objective : dict or callable
        A dict (or None) is a base configuration of ``fastnet train`` options (``{"model":
        "mlp", "optimizer": "sgd"}``); each trial trains it with the sampled values for
        ``epochs`` epochs (see :func:`train_config`) and is scored on the last epoch's
        validation metrics. A callable ``train_fn(config, train, val)`` is called with the
        sampled values instead and returns the metric (a number), a dict holding it, or a
        :class:`fastnet.History` (its last epoch).
    space : dict
        Name -> :class:`LogUniform`, :class:`Uniform`, :class:`IntUniform`, :class:`Choice`
        (or their text forms, ``"loguniform:1e-4:1e-1"``).
    data : fastnet.Splits or (train, val), optional
        The training and validation splits; a Splits' ``test`` is never read. With a
        configuration and no data, its ``data`` option (the digits by default) is loaded.
    trials : int
    seed : int
        Seeds the sampling: trial ``k`` draws from ``default_rng([seed, k])``. Training is seeded
        by the configuration's own ``seed`` (0 by default), the same for every trial.
    metric : str
        ``"val_accuracy"`` (the default) or ``"val_loss"``, or any key the train function
        returns.
    mode : {"max", "min"}, optional
        Inferred for names ending in ``accuracy`` (max) and ``loss`` (min).
    epochs : int, optional
        Epochs per trial for a configuration search (default 5).
    progress : bool, optional
        A progress bar over the trials; by default when stderr is a terminal.

    Returns
    -------
    SearchResult

    Notes
    -----
    A trial whose training diverges (a ``FloatingPointError``, or a NaN or infinite metric) is
    recorded as failed and ranked last; any other error stops the search.

    Examples
    --------
    >>> import fastnet as fn
    >>> from fastnet import tune
    >>> def train_fn(config, train, val):
    ...     model = fn.Sequential(fn.Linear(64, 32), fn.ReLU(), fn.Linear(32, 10))
    ...     opt = fn.optim.Adam(model.parameters(), lr=config["lr"])
    ...     return fn.Trainer(model, opt, progress=False).fit(train, val, epochs=2)
    >>> result = tune.random_search(train_fn, {"lr": tune.LogUniform(1e-4, 1e-1)},
    ...                             fn.load_digits(), trials=3, seed=1, progress=False)
    >>> [t["trial"] for t in result.trials], 0 < result.best_params["lr"] < 0.1
    ([0, 1, 2], True)
    """
    from tqdm.auto import tqdm

    space = check_space(space)
    seed = _check_seed(seed)
    if isinstance(trials, bool) or not isinstance(trials, numbers.Integral) or trials < 1:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    metric, mode = _check_metric(metric, mode)
    if callable(objective):
        if epochs is not None:
            raise ValueError("epochs applies to a configuration search; a train function "
                             "chooses its own")
        base, run, normalise = {}, objective, dict
    elif objective is None or isinstance(objective, dict):
        base = {str(k).replace("-", "_"): v for k, v in (objective or {}).items()}
        epochs = 5 if epochs is None else epochs
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        actions = _train_actions()
        for name in space:
            if name in NOT_SEARCHABLE or name not in CONFIG_OPTIONS or name not in actions:
                searchable = [o for o in CONFIG_OPTIONS if o not in NOT_SEARCHABLE and o in actions]
                raise ValueError(f"space: {name!r} cannot be searched (searchable: "
                                 f"{', '.join(searchable)})")
        for trial in range(trials):  # an unusable draw fails here, before any training
            make_args({**base, **sample_config(space, seed, trial)}, actions)
        make_args(base, actions)

        def normalise(params):  # as training takes them: hidden=64 is [64]
            return {k: coerce_option(k, v, actions[k]) for k, v in params.items()}

        def run(config, train, val):
            _, history, trainer = _train_config(config, train, val, epochs=int(epochs))
            stop = getattr(trainer, "early_stopping", None)
            if stop is not None and stop.restore_best and stop.best_epoch:
                return _Scored(history, history[stop.best_epoch - 1])  # the restored weights
            return history
    else:
        raise TypeError(f"objective must be a configuration dict or a train function, got "
                        f"{type(objective).__name__}")
    if data is None:
        if callable(objective):
            raise ValueError("data is needed with a train function: a Splits or (train, val)")
        import fastnet as fn

        args = make_args(base)
        data = fn.load_data(args.data, dtype=args.dtype, seed=args.seed)
    train, val = search_data(data)
    del data

    records = []
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(total=trials, disable=not show, unit="trial", desc="tune", dynamic_ncols=True)
    best = None
    try:
        for trial in range(trials):
            params = normalise(sample_config(space, seed, trial))
            record = {"trial": trial, "params": params, "metrics": {}, "score": None,
                      "status": "ok", "error": None}
            started = time.perf_counter()
            try:
                outcome = run({**copy.deepcopy(base), **copy.deepcopy(params)}, train, val)
            except FloatingPointError as error:
                record.update(status="failed", error=f"FloatingPointError: {error}")
            else:
                from fastnet.train import History

                history = outcome.history if isinstance(outcome, _Scored) else outcome
                if isinstance(history, History):
                    record["history"] = [_scalars(r) for r in history.epochs]
                record["metrics"] = _scalars(_metrics_of(outcome, metric))
                metrics = _metrics_of(outcome, metric)
                score = metrics[metric]
                if not isinstance(score, numbers.Real) or not math.isfinite(score):
                    record.update(status="failed", error=f"{metric} is {score!r}")
                else:
                    record["score"] = float(score)
            record["seconds"] = time.perf_counter() - started
            records.append(record)
            if record["score"] is not None and (
                    best is None or (record["score"] > best if mode == "max"
                                     else record["score"] < best)):
                best = record["score"]
            bar.update(1)
            if best is not None:
                bar.set_postfix({f"best {metric}": round(best, 4)})
    finally:
        bar.close()
    return SearchResult(records, metric, mode, seed, space, base)


# ------------------------------------------------------------------------------ files


def write_json(path, content):
    """Writes JSON to ``path`` atomically: a temporary file in the same directory, fsynced,
    renamed over the target."""
    from fastnet.io import write_atomic

    write_atomic(path, [(json.dumps(_jsonable(content), indent=2) + "\n").encode()])


def recipe_of(config, actions=None, keep=()):
    """A recipe (``fastnet train --recipe``) of ``config``: the options that differ from the
    defaults, those named in ``keep`` and ``epochs`` always, paths made absolute."""
    actions = actions or _train_actions()
    args = make_args(config, actions)
    recipe = {}
    for name in CONFIG_OPTIONS:
        if name not in actions:
            continue
        value = getattr(args, name)
        if name != "epochs" and name not in keep and value == actions[name].default:
            continue
        if name in ("data", "teacher") and value is not None:
            value = os.path.abspath(value)
        elif name == "model" and value is not None and os.path.splitext(value)[1].lower() in (
                ".json", ".toml"):
            value = os.path.abspath(value)
        recipe[name] = value
    return _jsonable(recipe)


# ------------------------------------------------------------------------------ command line

SPACE_HELP = ("what to search: NAME=KIND:ARGS items separated by commas (or by ';'), or a "
              ".json/.toml space file; may be repeated (see the syntax above)")

DESCRIPTION = """\
Random search over training options. Each trial trains the configuration that the training
options give, with values drawn from --space, for --trial-epochs epochs, and is ranked by its
validation metric; the test split is never used. --out DIR writes DIR/tune.json (every trial)
and DIR/best_recipe.json, which 'fastnet train --recipe DIR/best_recipe.json' trains in full
(for --epochs epochs).

The space: NAME=KIND:ARGS items, NAME a training option (lr, batch_size, hidden, weight_decay,
momentum, optimizer, ...), KIND one of
  loguniform:LO:HI   log-uniform between LO and HI (learning rates, decay)
  uniform:LO:HI      uniform between LO and HI
  int:LO:HI          an integer from LO to HI; logint:LO:HI uniform in its logarithm
  choice:A/B/C       one of the options; an option with commas is a list (hidden sizes)
Items are separated by commas (a comma followed by NAME=) or by semicolons. For example:
  --space 'lr=loguniform:1e-4:1e-1,batch_size=choice:32/64/128,hidden=choice:64,64/128,128'
A .json or .toml space file holds the same per name: lr = "loguniform:1e-4:1e-1" or
lr = {loguniform = [1e-4, 1e-1]}, hidden = {choice = [[64, 64], [128, 128]]}.
Trial k draws from numpy.random.default_rng([search seed, k]): the same seed gives the same
trials and the same results."""


def copy_train_options(commands, container, only=None, exclude=()):
    """Adds ``fastnet train``'s options (the same argparse actions, so the same types, defaults
    and help) to ``container``, a parser or an argument group: those named in ``only`` (all by
    default), minus ``exclude``."""
    train = commands.choices["train"]
    for action in train._actions:
        if action.dest == "help" or action.dest in exclude:
            continue
        if only is not None and action.dest not in only:
            continue
        container._add_action(action)
    return container


def register(commands):
    parser = commands.add_parser(
        "tune", help=SUMMARY,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    search = parser.add_argument_group("search")
    search.add_argument("--space", action="append", required=True, metavar="SPACE",
                        help=SPACE_HELP)
    search.add_argument("--trials", type=_positive_int, default=20,
                        help="configurations to try (default 20)")
    search.add_argument("--trial-epochs", type=_positive_int, default=5, metavar="N",
                        help="epochs each trial trains (default 5)")
    search.add_argument("--metric", default="val_accuracy", choices=list(METRICS),
                        help="ranking metric: val_accuracy (highest first, the default) or "
                             "val_loss (lowest first)")
    search.add_argument("--search-seed", type=int, default=None, metavar="N",
                        help="seeds the sampling of the trials (default: --seed)")
    search.add_argument("--out", metavar="DIR",
                        help="write DIR/tune.json and DIR/best_recipe.json")
    copy_train_options(commands, parser.add_argument_group(
        "training options (as in fastnet train; the base of every trial)"),
        only=CONFIG_OPTIONS + RUN_OPTIONS)
    return command_tune


def _positive_int(text):
    from fastnet.cli import _positive_int as check

    return check(text)


def check_supported(args, command, supported):
    """A ValueError when a recipe set a ``fastnet train`` option that ``command`` does not
    honour."""
    for dest, action in _train_actions().items():
        if dest in supported or dest == "out" or not hasattr(args, dest):
            continue
        if getattr(args, dest) != action.default:
            raise ValueError(f"fastnet {command} does not support the option {dest!r} (given "
                             f"{getattr(args, dest)!r})")


def space_from_options(values):
    """The space of one or more ``--space`` values (text or .json/.toml files)."""
    space = {}
    for value in values:
        if os.path.splitext(value)[1].lower() in (".json", ".toml"):
            part = load_space(value)
        else:
            part = parse_space(value, "--space")
        for name in part:
            if name in space:
                raise ValueError(f"--space: {name} is given twice")
        space.update(part)
    return space


def command_tune(args):
    import fastnet as fn

    check_supported(args, "tune", CONFIG_OPTIONS + RUN_OPTIONS)
    if args.threads:
        fn.set_num_threads(args.threads)
    space = space_from_options(args.space)
    actions = _train_actions()
    base = {name: getattr(args, name) for name in CONFIG_OPTIONS if name in actions}
    splits = fn.load_data(args.data, dtype=args.dtype, seed=args.seed)
    data = search_data(splits)  # the training and validation splits, nothing else
    del splits
    if not args.quiet:
        print(f"fastnet tune: {args.trials} trials of {args.trial_epochs} epochs, "
              f"{len(data[0])} training and {len(data[1])} validation samples, ranked by "
              f"{args.metric}", file=sys.stderr)
    seed = args.seed if args.search_seed is None else args.search_seed
    result = random_search(base, space, data, trials=args.trials, seed=seed, metric=args.metric,
                           epochs=args.trial_epochs, progress=None if not args.quiet else False)
    print(result.table())
    best = result.best_trial
    print(f"best: trial {best['trial']}, {args.metric} {best['score']:.4f}: " + ", ".join(
        f"{k}={_cell(v)}" for k, v in sorted(best["params"].items())))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        content = result.to_dict()
        content["trial_epochs"] = args.trial_epochs
        write_json(os.path.join(args.out, "tune.json"), content)
        recipe_path = os.path.join(args.out, "best_recipe.json")
        write_json(recipe_path, recipe_of(result.best, actions, keep=space))
        print(f"wrote {os.path.join(args.out, 'tune.json')}; train the best configuration in "
              f"full with: fastnet train --recipe {recipe_path}")
    return 0
