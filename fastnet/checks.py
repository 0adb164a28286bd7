"""Checks to run before training: is the gradient right, is the initialisation sane, can the model
learn at all, and do the activations look healthy?

:func:`run_checks` runs the four checks on a model and a dataset and prints a pass/fail report;
``fastnet check`` does the same from the command line, with ``fastnet train``'s model and data
options. Each check is also a function of its own:

- :func:`gradient_check`: backpropagation against central differences, in float64, on a sample
  of coordinates of every parameter tensor; the largest relative error per layer.
- :func:`init_loss_check`: the loss at initialisation over several seeds, against the loss of a
  uniform prediction (``ln C`` for cross-entropy over ``C`` classes).
- :func:`overfit_check`: a few hundred full-batch Adam steps on 20 samples, regularisation off:
  the loss must get close to zero.
- :func:`activation_check`: per-layer activation statistics at initialisation
  (:func:`activation_stats`): collapsing or exploding scales, dead ReLU units, saturated
  tanh/sigmoid units.

The model passed in is never changed: the checks work on copies (or restore what they touch).
"""
import json
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from fastnet.data import Dataset, Splits
from fastnet.layers import layer_from_config
from fastnet.losses import CrossEntropyLoss, DistillationLoss, Loss
from fastnet.model import Sequential

# --------------------------------------------------------------------------- thresholds

#: Largest relative error of a layer's gradient that passes (float64; see gradient_check).
GRAD_THRESHOLD = 1e-6
#: Central-difference step (float64).
GRAD_STEP = 1e-5
#: Sampled coordinates per parameter tensor.
GRAD_COORDS = 16
#: Samples in the gradient check's batch.
GRAD_BATCH = 8
#: Allowed distance of the mean loss at initialisation from the uniform prediction's, relative.
INIT_TOLERANCE = 0.10
#: Initialisations (seeds) the loss at initialisation is measured over.
INIT_SEEDS = 5
#: Samples, Adam steps and learning rate of the overfitting check.
OVERFIT_SAMPLES = 20
OVERFIT_STEPS = 300
OVERFIT_LR = 1e-2
#: The overfitting check passes below this fraction of the uniform prediction's loss (0.046 for
#: cross-entropy over 10 classes).
OVERFIT_FRACTION = 0.02
#: Activation std relative to the input's std outside [low, high] is flagged.
STD_LOW, STD_HIGH = 1e-3, 1e3
#: Fractions of dead or saturated units above which a layer is flagged.
DEAD_LIMIT = 0.5
SATURATED_LIMIT = 0.5
#: tanh outputs with |y| above this, sigmoid outputs within this distance of 0 or 1, saturate.
TANH_SATURATION = 0.97
SIGMOID_SATURATION = 0.03

_EPS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------- results


@dataclass
class CheckResult:
    """The outcome of one check.

    Attributes
    ----------
    name : str
        ``"gradient"``, ``"init_loss"``, ``"overfit"`` or ``"activations"``.
    passed : bool
    summary : str
        One line: what was measured, against which threshold.
    details : list of str
        Lines of detail (a table per layer, for instance).
    hint : str or None
        When the check fails, the likely causes.
    data : dict
        The numbers, JSON-able (per-layer errors, losses, statistics).
    """

    name: str
    passed: bool
    summary: str
    details: list = field(default_factory=list)
    hint: str = None
    data: dict = field(default_factory=dict)

    def format(self):
        """The result as text: ``[PASS]``/``[FAIL]``, the summary, details and hint."""
        lines = [f"[{'PASS' if self.passed else 'FAIL'}] {_TITLES.get(self.name, self.name)}: "
                 f"{self.summary}"]
        lines += [f"    {line}" for line in self.details]
        if self.hint and not self.passed:
            lines.append(f"    hint: {self.hint}")
        return "\n".join(lines)

    def to_dict(self):
        return {"name": self.name, "passed": self.passed, "summary": self.summary,
                "hint": self.hint, "data": self.data}


_TITLES = {"gradient": "gradient check", "init_loss": "loss at initialisation",
           "overfit": "overfitting a small batch", "activations": "activations at initialisation"}


@dataclass
class CheckReport:
    """The results of :func:`run_checks`, in the order they ran.

    ``report["gradient"]`` is one :class:`CheckResult`; ``report.passed`` is true when all
    passed; ``str(report)`` is the printed report and ``report.to_dict()`` its JSON form.
    """

    checks: list

    @property
    def passed(self):
        return all(check.passed for check in self.checks)

    def __getitem__(self, name):
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no check named {name!r} (ran: {[c.name for c in self.checks]})")

    def __str__(self):
        failed = [c.name for c in self.checks if not c.passed]
        verdict = (f"{len(self.checks)} checks: all passed" if not failed else
                   f"{len(self.checks)} checks: {len(failed)} failed ({', '.join(failed)})")
        return "\n".join([c.format() for c in self.checks] + [verdict])

    def to_dict(self):
        return {"passed": self.passed, "checks": [c.to_dict() for c in self.checks]}


# --------------------------------------------------------------------------- internals


def _zero_dropout(config):
    """The layer config with every Dropout's p set to 0 (in place; returns it)."""
    if isinstance(config, dict):
        if config.get("type") == "Dropout":
            config["p"] = 0.0
        for value in config.values():
            _zero_dropout(value)
    elif isinstance(config, list):
        for item in config:
            _zero_dropout(item)
    return config


def rebuild(model, dtype=None, seed=None, dropout=True, copy_weights=True):
    """A new :class:`~fastnet.Sequential` of ``model``'s architecture.

    Parameters
    ----------
    model : fastnet.Sequential
    dtype : {"float32", "float64"}, optional
        Defaults to the model's.
    seed : int, optional
        Initialisation seed; defaults to the model's.
    dropout : bool
        False sets every dropout probability to 0 (the copy has no dropout at all).
    copy_weights : bool
        Copy the model's parameters and buffers (converted to ``dtype``); otherwise the copy has
        the fresh initialisation of ``seed``.

    Examples
    --------
    >>> import fastnet as fn
    >>> from fastnet import checks
    >>> model = fn.Sequential(fn.Linear(4, 3), fn.Dropout(0.5), fn.Linear(3, 2))
    >>> copy = checks.rebuild(model, dtype="float64", dropout=False)
    >>> copy.dtype.name, copy.layers[1].p
    ('float64', 0.0)
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"expected a fastnet.Sequential model, got {type(model).__name__}")
    config = model.config()
    if not dropout:
        _zero_dropout(config)
    layers = [layer_from_config(c) for c in config["layers"]]
    copy = Sequential(*layers, dtype=dtype or model.dtype.name,
                      seed=model.seed if seed is None else seed, input_shape=model.input_shape,
                      init=model.init, bias_init=model.bias_init)
    if copy_weights:
        copy.load_state_dict(model.state_dict())
    copy.train(model.training)
    return copy


def _layer_of(name):
    """'3.main.0.weight' -> '3.main.0'."""
    return name.rsplit(".", 1)[0] if "." in name else name


def loss_targets(loss, y, num_outputs, dtype=np.float64):
    """What ``loss`` takes for class labels ``y``: the labels themselves for cross-entropy, one-hot
    rows for the losses on float targets (as :class:`fastnet.Trainer` does)."""
    if isinstance(loss, DistillationLoss):
        raise ValueError("the checks do not run DistillationLoss (it needs a teacher's logits); "
                         "check the student with CrossEntropyLoss")
    if isinstance(loss, CrossEntropyLoss):
        return y
    onehot = np.zeros((len(y), num_outputs), dtype=dtype)
    onehot[np.arange(len(y)), y] = 1
    return onehot


def _check_loss(loss):
    loss = CrossEntropyLoss() if loss is None else loss
    if not isinstance(loss, Loss):
        raise TypeError(f"expected a fastnet loss (fastnet.CrossEntropyLoss, ...), got {loss!r}")
    return loss


def _as_arrays(model, x, y=None):
    """x reshaped to (N, *model.input_shape); y as int64 labels checked against the outputs."""
    x = np.asarray(x)
    if x.ndim < 1 or len(x) == 0:
        raise ValueError(f"expected a non-empty batch of inputs, got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"inputs must be floating point (scale integer images first), got "
                        f"{x.dtype}")
    size = int(np.prod(model.input_shape))
    if x[0].size != size:
        raise ValueError(f"the model takes samples of shape {model.input_shape}, the data has "
                         f"{x[0].size} values per sample")
    x = np.ascontiguousarray(x.reshape((len(x),) + tuple(model.input_shape)))
    if y is None:
        return x
    y = np.asarray(y)
    if y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise ValueError(f"expected {len(x)} integer labels, got shape {y.shape} and dtype "
                         f"{y.dtype}")
    classes = model._core.output_size
    if y.min() < 0 or y.max() >= classes:
        raise ValueError(f"labels must be in [0, {classes}) for the model's {classes} outputs, "
                         f"got {int(y.min())}..{int(y.max())}")
    return x, y.astype(np.int64)


def _pick(n, count, seed):
    """``count`` indices of ``n`` (all if fewer), seeded."""
    if count >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))


def _format_table(rows):
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in rows]


# --------------------------------------------------------------------------- (a) gradient


def backprop_gradients(model, x, targets, loss):
    """``{parameter name: d loss / d parameter}`` by ``model.forward``, the loss's
    ``forward_backward`` and ``model.backward``: the gradient :func:`gradient_check` verifies."""
    model.zero_grad()
    outputs = model.forward(x)
    _, grad = loss.forward_backward(outputs, targets)
    model.backward(grad)
    return {p.name: p.grad.copy() for p in model.parameters()}


def _difference(objective, flat, i, f0, step, rounding, threshold, refinements=2):
    """``(d objective / d flat[i], smooth)`` by central differences, ``flat[i]`` restored.

    The difference at step ``s`` is compared with the one at ``s/4``: where the function is
    smooth they agree to rounding and the symmetric parts ``(f(+s) + f(-s) - 2 f0) / s``, which
    are ``s f''``, differ by the factor 4. A kink within the step breaks one or the other (at a
    kink the symmetric part is the jump of the derivative whatever the step); then the steps are
    divided by 4 again, ``refinements`` times, before the coordinate is given up as non-smooth.
    """
    original = flat[i]

    def at(delta):
        flat[i] = original + delta
        try:
            return objective()
        finally:
            flat[i] = original

    s = step
    up, down = at(s), at(-s)
    estimate = (up - down) / (2 * s)
    for _ in range(refinements):
        t = s / 4
        up_t, down_t = at(t), at(-t)
        fine = (up_t - down_t) / (2 * t)
        noise = rounding * step / t
        agree = abs(estimate - fine) <= threshold * abs(estimate) + 4 * noise
        symmetric = abs((up + down - 2 * f0) / s - 4 * (up_t + down_t - 2 * f0) / t)
        if agree and symmetric <= threshold * abs(estimate) + 16 * noise:
            return estimate, True
        s, up, down, estimate = t, up_t, down_t, fine
    return estimate, False


def gradient_check(model, x, y, loss=None, *, coords=GRAD_COORDS, threshold=GRAD_THRESHOLD,
                   step=GRAD_STEP, seed=0, gradients=backprop_gradients):
    """Checks backpropagation through the whole model against central differences.

    The model is rebuilt in float64 with the same weights (the model itself is not touched). On
    ``coords`` randomly chosen coordinates of every parameter tensor, the analytic gradient of
    the mean loss of the batch ``(x, y)`` is compared with the central difference
    ``(f(θ + h) - f(θ - h)) / 2h``; a layer's error is the largest over its tensors of
    ``|g - g_num| / max(|g|, |g_num|)`` (vector norms over the sampled coordinates).

    Parameters
    ----------
    model : fastnet.Sequential
    x : ndarray, shape (N, ...)
        A small batch (a few samples are enough; every coordinate costs four forward passes).
    y : ndarray of int, shape (N,)
        Class labels (one-hot encoded for the losses on float targets).
    loss : fastnet.losses.Loss, optional
        Cross-entropy by default.
    coords : int
        Coordinates sampled per parameter tensor (all of them for smaller tensors).
    threshold : float
        Largest relative error that passes.
    step : float
        The difference step ``h``.
    seed : int
        Seeds the choice of coordinates.
    gradients : callable
        ``gradients(model64, x, targets, loss) -> {name: array}``, the analytic gradient under
        test (by default :func:`backprop_gradients`).

    Returns
    -------
    CheckResult
        ``data["layers"]``: per layer its tensors, coordinates checked and skipped, and error.

    Notes
    -----
    *Why 1e-6.* With ``h = 1e-5`` the truncation error of a central difference is
    ``O(h²)``, about 1e-10 of the gradient, and the rounding error about ``eps·|f| / h``, 1e-10
    absolute for a loss near 2; a wrong formula (a missing term, a transposed weight, a stale
    buffer, a forgotten ``eps``) is off by far more than 1e-6. Errors at the rounding level are
    not counted against tensors whose gradient is tiny: the denominator has a floor of the
    rounding of the sampled coordinates over ``threshold``, so a gradient that is exactly zero
    (the bias of a convolution followed by batch norm) and a numerical one made only of rounding
    pass; the table marks such layers "zero gradient".

    *Kinks.* ReLU, max pooling and L1 are not differentiable everywhere; a difference whose
    interval contains a kink estimates neither one-sided derivative. Each coordinate is also
    differenced with step ``h/4``, and the symmetric parts ``(f(θ+s) + f(θ-s) - 2f(θ)) / s`` of
    the two steps are compared: at a smooth point the two estimates agree and the symmetric part
    is ``s f''``, across a kink they do not (at a kink the symmetric part is the jump of the
    derivative, whatever the step). Failing that, steps ``h/4`` and ``h/16`` are compared the
    same way; a coordinate where neither pair agrees is skipped and counted.

    *Train mode, fixed dropout masks.* The gradient is that of training, so the check runs in
    train mode: batch norm normalises with the batch's statistics and its gradient goes through
    them (eval mode would check a different function). Dropout keeps one fixed mask: the dropout
    step counter of the float64 copy is reset before every forward pass, so every evaluation
    drops the same units and dropout's backward is checked with its mask.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> from fastnet import checks
    >>> model = fn.Sequential(fn.Linear(8, 16), fn.Tanh(), fn.Linear(16, 3))
    >>> rng = np.random.default_rng(0)
    >>> result = checks.gradient_check(model, rng.standard_normal((4, 8)), np.array([0, 1, 2, 0]))
    >>> result.passed
    True
    """
    loss = _check_loss(loss)
    x, y = _as_arrays(model, x, y)
    m64 = rebuild(model, dtype="float64")
    m64.train()
    x = x.astype(np.float64)
    targets = loss_targets(loss, y, m64._core.output_size)
    core = m64._core
    mask_step = core.rng_step

    def objective():
        core.rng_step = mask_step
        return loss(m64(x), targets)

    core.rng_step = mask_step
    analytic = gradients(m64, x, targets, loss)
    f0 = objective()
    if not np.isfinite(f0):
        return CheckResult("gradient", False, f"the loss is {f0} at the model's weights",
                           hint="the forward pass overflows: check the inputs' scale and the "
                                "initialisation", data={"loss": f0})
    # One evaluation of the loss is accurate to a few eps * |f| (a sum over the batch of terms
    # of about |f|): the rounding of a central difference is about that over the step.
    rounding = 8 * _EPS * max(abs(f0), 1.0) / step
    layers, tensors = {}, []
    for index, p in enumerate(m64.parameters()):
        flat = p.data.reshape(-1)
        chosen = _pick(flat.size, coords, [seed, index])
        a = np.asarray(analytic[p.name], dtype=np.float64).reshape(-1)[chosen]
        numeric = np.empty(len(chosen))
        smooth = np.ones(len(chosen), dtype=bool)
        for k, i in enumerate(chosen):
            numeric[k], smooth[k] = _difference(objective, flat, i, f0, step, rounding, threshold)
        kept_a, kept_n = a[smooth], numeric[smooth]
        floor = rounding * math.sqrt(max(len(kept_a), 1)) / threshold
        scale = max(np.linalg.norm(kept_a), np.linalg.norm(kept_n), floor)
        if not np.all(np.isfinite(kept_a)):
            error = math.inf
        else:
            error = float(np.linalg.norm(kept_a - kept_n) / scale) if len(kept_a) else None
        tensors.append({"name": p.name, "checked": int(smooth.sum()),
                        "skipped": int((~smooth).sum()), "error": error,
                        "norm": float(max(np.linalg.norm(kept_a), np.linalg.norm(kept_n))),
                        "floor": floor})
        layer = layers.setdefault(_layer_of(p.name), {"layer": _layer_of(p.name), "tensors": [],
                                                      "checked": 0, "skipped": 0, "error": 0.0})
        layer["tensors"].append(p.name.rsplit(".", 1)[-1])
        layer["checked"] += int(smooth.sum())
        layer["skipped"] += int((~smooth).sum())
        if error is None:
            layer.setdefault("unchecked", []).append(p.name)
        else:
            layer["error"] = max(layer["error"], error)
    rows = [("layer", "tensors", "checked", "at kinks", "max rel. error", "")]
    failed = []
    for layer in layers.values():
        ok = layer["error"] <= threshold and layer["checked"] > 0
        layer["passed"] = ok
        # A gradient at the rounding level everywhere: nothing was really compared.
        layer["zero_gradient"] = all(t["norm"] < t["floor"] * threshold for t in tensors
                                     if _layer_of(t["name"]) == layer["layer"])
        if not ok:
            failed.append(layer["layer"])
        note = "ok" if ok else "FAIL"
        if layer["zero_gradient"]:
            note += " (zero gradient)"
        rows.append((layer["layer"], ",".join(layer["tensors"]), layer["checked"],
                     layer["skipped"], f"{layer['error']:.2e}", note))
    worst = max((layer["error"] for layer in layers.values()), default=0.0)
    checked = sum(layer["checked"] for layer in layers.values())
    skipped = sum(layer["skipped"] for layer in layers.values())
    summary = (f"max relative error {worst:.2e} over {checked} coordinates of "
               f"{len(layers)} layers (threshold {threshold:g})")
    if skipped:
        summary += f"; {skipped} at kinks skipped"
    hint = None
    if failed:
        hint = (f"backpropagation disagrees with finite differences in {', '.join(failed)}. "
                "A wrong backward corrupts the gradient of every layer before it, so the "
                "failing layer nearest the output is where to look (or the layer right after "
                "it, if that one has no parameters)")
        if len(failed) == len(layers) > 1:
            hint += ("; every layer fails, which points at the gradient of the loss or the "
                     "backward of the last layer")
        if any(layer["checked"] == 0 for layer in layers.values()):
            hint += "; a layer with no checked coordinate had all of them at kinks"
    data = {"threshold": threshold, "step": step, "max_error": worst, "loss": f0,
            "layers": list(layers.values()), "tensors": tensors}
    return CheckResult("gradient", not failed, summary, _format_table(rows), hint, data)


# --------------------------------------------------------------------------- (b) init loss


def reference_loss(loss, y, num_outputs):
    """The loss of a uniform prediction (all outputs zero): ``ln C`` for cross-entropy over ``C``
    classes, what the loss of a well-initialised classifier should be near."""
    loss = _check_loss(loss)
    y = np.asarray(y, dtype=np.int64)
    zeros = np.zeros((len(y), num_outputs))
    return float(loss(zeros, loss_targets(loss, y, num_outputs)))


def _is_fresh(model):
    """True when the model's parameters are exactly its seed's initialisation."""
    fresh = rebuild(model, copy_weights=False)
    current = model.state_dict()
    return all(np.array_equal(current[p.name], p.data) for p in fresh.parameters())


def _train_outputs(model, x):
    """The model's outputs on x in train mode (the mode training starts in), without changing
    its dropout step or batch norm's running statistics."""
    with _preserved(model), model.mode(training=True):
        return model(x)


class _preserved:
    """Restores a model's buffers (batch norm running statistics) and dropout step on exit."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.step = self.model._core.rng_step
        self.buffers = {name: b.copy() for name, b in self.model.buffers().items()}
        return self.model

    def __exit__(self, *exc):
        self.model._core.rng_step = self.step
        views = self.model.buffers()
        for name, value in self.buffers.items():
            views[name][...] = value


def init_loss_check(model, x, y, loss=None, *, seeds=INIT_SEEDS, tolerance=INIT_TOLERANCE):
    """The loss at initialisation against the loss of a uniform prediction (``ln C``).

    A classifier whose outputs start small predicts nearly uniform probabilities, so its
    cross-entropy starts near ``ln C``. Much higher means confidently wrong outputs at step 0
    (weights of the last layer, or inputs, too large); much lower means the outputs already
    follow the labels (a leak from inputs to labels, or a last-layer bias set on purpose).

    When the model's weights are its seed's initialisation, the loss is measured for ``seeds``
    initialisations (the model's seed and the next ones) and their mean is judged; otherwise
    (loaded, trained or edited weights) the model is measured as it is. Train mode, as training
    starts (dropout active, batch norm on batch statistics).

    Parameters
    ----------
    model : fastnet.Sequential
    x, y : ndarray
        A batch (a few hundred samples) and its class labels.
    loss : fastnet.losses.Loss, optional
    seeds : int
        Initialisations measured.
    tolerance : float
        Largest ``|mean - reference| / reference`` that passes.

    Returns
    -------
    CheckResult
        ``data``: ``losses``, ``mean``, ``std``, ``reference``, ``logit_std``.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> from fastnet import checks
    >>> data = fn.load_digits().train
    >>> model = fn.Sequential(fn.Linear(64, 32), fn.ReLU(), fn.Linear(32, 10))
    >>> result = checks.init_loss_check(model, data.x[:256], data.y[:256])
    >>> result.passed, round(result.data["reference"], 4)
    (True, 2.3026)
    """
    loss = _check_loss(loss)
    x, y = _as_arrays(model, x, y)
    classes = model._core.output_size
    targets = loss_targets(loss, y, classes)
    reference = reference_loss(loss, y, classes)
    fresh = _is_fresh(model)
    models = [model]
    if fresh:
        models += [rebuild(model, seed=model.seed + i, copy_weights=False)
                   for i in range(1, max(1, seeds))]
    losses, logit_stds = [], []
    for m in models:
        outputs = _train_outputs(m, x)
        losses.append(float(loss(outputs, targets)))
        logit_stds.append(float(np.std(outputs)))
    mean = float(np.mean(losses))
    std = float(np.std(losses))
    logit_std = float(np.mean(logit_stds))
    finite = np.isfinite(mean)
    relative = abs(mean - reference) / reference if finite and reference > 0 else math.inf
    passed = bool(finite and relative <= tolerance)
    name = f"ln {classes}" if isinstance(loss, CrossEntropyLoss) else "uniform prediction"
    over = (f"{len(losses)} initialisations (seeds {model.seed}..{model.seed + len(losses) - 1})"
            if fresh else "the model's weights as given (not its seed's initialisation)")
    spread = f" ± {std:.4f}" if len(losses) > 1 else ""
    summary = (f"{mean:.4f}{spread} over {over}; {name} = {reference:.4f}, "
               f"tolerance ±{tolerance:.0%}")
    details = [f"outputs at initialisation: std {logit_std:.3g}",
               "losses: " + ", ".join(f"{v:.4f}" for v in losses)]
    hint = None
    if not finite:
        hint = "the loss is not finite at initialisation: the outputs overflow"
    elif mean > reference:
        hint = (f"the loss starts {mean / reference:.1f}x the uniform prediction's: the outputs "
                f"are too large (std {logit_std:.3g}; about 1 or less is expected), so the model "
                "is confidently wrong at step 0. Usually the last layer's weights are too large "
                "(initialise it with a small std, e.g. init={'scheme': 'normal', 'std': 0.01}), "
                "or the inputs are not scaled (--scale standard)")
    elif mean < reference:
        hint = ("the loss starts below the uniform prediction's: the untrained outputs already "
                "follow the labels. Check that the labels cannot be read off the inputs (a "
                "leaked label column) and whether the last layer's bias was set on purpose")
    data = {"losses": losses, "mean": mean, "std": std, "reference": reference,
            "tolerance": tolerance, "logit_std": logit_std, "fresh": fresh}
    return CheckResult("init_loss", passed, summary, details, hint, data)


# --------------------------------------------------------------------------- (c) overfit


def overfit_check(model, x, y, loss=None, *, samples=OVERFIT_SAMPLES, steps=OVERFIT_STEPS,
                  lr=OVERFIT_LR, fraction=OVERFIT_FRACTION, seed=0):
    """Can the model fit a handful of samples? Full-batch Adam on ``samples`` of them.

    A copy of the model (same weights, dropout removed) is trained with Adam, no weight decay or
    other penalty, for ``steps`` steps on one batch; label smoothing is dropped from a
    cross-entropy loss (it keeps the loss above zero by design). A model that cannot drive the
    loss of 20 samples to nearly zero has a bug in its wiring, gradient or update, or far too
    little capacity.

    Parameters
    ----------
    model : fastnet.Sequential
    x, y : ndarray
        Samples to pick from, and their class labels.
    loss : fastnet.losses.Loss, optional
    samples, steps, lr : int, int, float
        The batch size, Adam steps and learning rate.
    fraction : float
        Passes when the final loss is below ``fraction`` times the uniform prediction's loss
        (``0.02 · ln 10 = 0.046`` for 10 classes).
    seed : int
        Seeds which samples are picked.

    Returns
    -------
    CheckResult
        ``data``: ``initial_loss``, ``final_loss``, ``threshold``, ``accuracy``, ``curve``
        (the loss every 10% of the steps).

    Examples
    --------
    >>> import fastnet as fn
    >>> from fastnet import checks
    >>> data = fn.load_digits().train
    >>> model = fn.Sequential(fn.Linear(64, 32), fn.ReLU(), fn.Linear(32, 10))
    >>> checks.overfit_check(model, data.x, data.y).passed
    True
    """
    from fastnet.optim import Adam

    loss = _check_loss(loss)
    if isinstance(loss, CrossEntropyLoss) and loss.label_smoothing:
        loss = CrossEntropyLoss(weight=loss.weight)
    x, y = _as_arrays(model, x, y)
    chosen = _pick(len(x), samples, seed)
    x, y = x[chosen], y[chosen]
    copy = rebuild(model, dropout=False)
    copy.train()
    classes = copy._core.output_size
    targets = loss_targets(loss, y, classes, dtype=copy.dtype)
    reference = reference_loss(loss, y, classes)
    threshold = fraction * reference
    optimizer = Adam(copy.parameters(), lr=lr)
    x = x.astype(copy.dtype)
    curve, value = [], math.nan
    every = max(1, steps // 10)
    try:
        for t in range(steps):
            value = copy.train_step(x, targets, loss, optimizer)
            if t % every == 0:
                curve.append(float(value))
        with copy.mode(training=True):
            outputs = copy(x)
        value = float(loss(outputs, targets))
        curve.append(value)
    except FloatingPointError as error:
        value = math.inf
        curve.append(value)
        failure = str(error)
    else:
        failure = None
    accuracy = float(np.mean(outputs.argmax(axis=1) == y)) if failure is None else 0.0
    passed = bool(failure is None and value < threshold)
    summary = (f"loss {curve[0]:.4f} -> {value:.4g} after {steps} Adam steps (lr {lr:g}) on "
               f"{len(x)} samples, threshold {threshold:.3g}; accuracy {accuracy:.0%}")
    details = ["loss every " + f"{every} steps: " + ", ".join(f"{v:.3g}" for v in curve)]
    hint = None
    if failure is not None:
        hint = f"training diverged ({failure}): lower the learning rate or check the initialisation"
    elif not passed:
        stalled = curve[-1] > 0.5 * curve[0]
        hint = ("the loss barely moved: the gradient does not reach the weights (dead units, a "
                "detached layer, a wrong gradient) or the learning rate is far too small"
                if stalled else
                "the loss falls but not to zero: too little capacity for even 20 samples, or "
                "too few steps for this model (raise --overfit-steps)")
        if accuracy == 1.0:
            hint = ("every sample is classified right but the loss is not near zero yet: more "
                    "steps (--overfit-steps) should finish the job; " + hint)
    data = {"samples": int(len(x)), "steps": steps, "lr": lr, "initial_loss": curve[0],
            "final_loss": value, "threshold": threshold, "accuracy": accuracy, "curve": curve}
    return CheckResult("overfit", passed, summary, details, hint, data)


# --------------------------------------------------------------------------- (d) activations


def _node_outputs(model):
    """The output of every node of the last forward pass, in ``node_info`` order."""
    core = model._core
    return [core.node_output(i) for i in range(len(core.node_info()))]


def activation_stats(model, x, training=True):
    """Statistics of every node's output on a batch.

    Parameters
    ----------
    model : fastnet.Sequential
    x : ndarray, shape (N, ...)
    training : bool
        Run in train mode (the default: what training sees, batch norm on batch statistics and
        dropout active) or eval mode. The model's mode, dropout step and batch norm running
        statistics are restored afterwards.

    Returns
    -------
    list of dict
        One per node, in execution order: ``layer`` (the node's name, as in the state dict),
        ``op``, ``mean`` and ``std`` of all its output values, ``dead_fraction`` (ReLU outputs:
        the fraction of units that are zero on every sample of the batch; a unit is a feature,
        or a channel of an image output, zero at every position; None for other ops) and
        ``saturated_fraction`` (tanh: fraction of values with ``|y| > 0.97``; sigmoid: below 0.03
        or above 0.97; None for other ops).

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> from fastnet import checks
    >>> model = fn.Sequential(fn.Linear(8, 16), fn.ReLU(), fn.Linear(16, 4))
    >>> stats = checks.activation_stats(model, np.random.default_rng(0).random((32, 8)))
    >>> [(s["layer"], s["op"]) for s in stats]
    [('0', 'linear'), ('1', 'relu'), ('2', 'linear')]
    >>> 0 <= stats[1]["dead_fraction"] <= 1, stats[0]["dead_fraction"]
    (True, None)
    """
    x = _as_arrays(model, x)
    core = model._core
    info = core.node_info()
    keep = core.keep_outputs
    core.keep_outputs = True  # outputs that backward does not need otherwise share memory
    try:
        with _preserved(model), model.mode(training=training):
            model(x.astype(model.dtype, copy=False))
            outputs = _node_outputs(model)
    finally:
        core.keep_outputs = keep
    stats = []
    for (name, op, shape), out in zip(info, outputs):
        values = np.asarray(out, dtype=np.float64).reshape((len(x),) + tuple(shape))
        dead = saturated = None
        if op == "relu":
            # Units: features of a flat output, channels of an image (C, H, W) output.
            per_unit = np.abs(values).reshape(len(x), shape[0], -1)
            dead = float(np.mean(np.all(per_unit == 0, axis=(0, 2))))
        elif op == "tanh":
            saturated = float(np.mean(np.abs(values) > TANH_SATURATION))
        elif op == "sigmoid":
            saturated = float(np.mean((values < SIGMOID_SATURATION)
                                      | (values > 1 - SIGMOID_SATURATION)))
        stats.append({"layer": name, "op": op, "mean": float(np.mean(values)),
                      "std": float(np.std(values)), "dead_fraction": dead,
                      "saturated_fraction": saturated})
    return stats


def activation_check(model, x, *, low=STD_LOW, high=STD_HIGH, dead=DEAD_LIMIT,
                     saturated=SATURATED_LIMIT):
    """Flags layers whose activations are unhealthy at initialisation.

    From :func:`activation_stats` in train mode: a layer fails when its output's std relative to
    the input's is below ``low`` (the signal collapses: nothing reaches the output, and the
    gradient shrinks the same way on its way back) or above ``high`` (it explodes), when more
    than ``dead`` of its ReLU units are zero on every sample (dead units get no gradient and
    never recover), when more than ``saturated`` of its tanh/sigmoid outputs are saturated
    (their gradient is nearly zero), or when it is not finite.

    Returns
    -------
    CheckResult
        ``data["layers"]``: the statistics, each with ``std_ratio`` and its ``flags``.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> from fastnet import checks
    >>> model = fn.Sequential(fn.Linear(8, 16), fn.ReLU(), fn.Linear(16, 4), init="zeros",
    ...                       bias_init="zeros")
    >>> result = checks.activation_check(model, np.random.default_rng(0).random((32, 8)))
    >>> result.passed, result.data["layers"][1]["flags"]
    (False, ['collapsed', 'dead'])
    """
    x = _as_arrays(model, x)
    input_std = float(np.std(x))
    stats = activation_stats(model, x, training=True)
    rows = [("layer", "op", "mean", "std", "std/input", "dead", "saturated", "")]
    flagged, layers = [], []
    for s in stats:
        ratio = s["std"] / input_std if input_std > 0 else math.inf
        flags = []
        if not (np.isfinite(s["mean"]) and np.isfinite(s["std"])):
            flags.append("not finite")
        elif ratio < low:
            flags.append("collapsed")
        elif ratio > high:
            flags.append("exploded")
        if s["dead_fraction"] is not None and s["dead_fraction"] > dead:
            flags.append("dead")
        if s["saturated_fraction"] is not None and s["saturated_fraction"] > saturated:
            flags.append("saturated")
        s = dict(s, std_ratio=ratio, flags=flags)
        layers.append(s)
        if flags:
            flagged.append(s)
        rows.append((s["layer"], s["op"], f"{s['mean']:.3g}", f"{s['std']:.3g}", f"{ratio:.3g}",
                     "-" if s["dead_fraction"] is None else f"{s['dead_fraction']:.0%}",
                     "-" if s["saturated_fraction"] is None else f"{s['saturated_fraction']:.0%}",
                     ", ".join(flags).upper()))
    if flagged:
        summary = f"{len(flagged)} of {len(stats)} layers flagged: " + "; ".join(
            f"{s['layer']} ({s['op']}) {', '.join(s['flags'])}" for s in flagged)
    else:
        summary = (f"{len(stats)} layers; std relative to the input within [{low:g}, {high:g}], "
                   f"at most {dead:.0%} dead and {saturated:.0%} saturated units")
    hints = []
    kinds = {flag for s in flagged for flag in s["flags"]}
    if "collapsed" in kinds or "dead" in kinds:
        hints.append("collapsed or dead layers point at weights that are too small or zero, or "
                     "biases that push every unit below zero: use a scaled initialisation "
                     "(he_normal for ReLU networks, --init he_normal) and zero or small biases")
    if "exploded" in kinds or "not finite" in kinds:
        hints.append("exploding activations point at weights too large for the depth: use a "
                     "fan-in scaled initialisation (he_normal, lecun_normal) or batch norm")
    if "saturated" in kinds:
        hints.append("saturated tanh/sigmoid units have nearly zero gradient: shrink the "
                     "weights feeding them (xavier_uniform) or scale the inputs (--scale standard)")
    data = {"input_std": input_std, "low": low, "high": high, "dead_limit": dead,
            "saturated_limit": saturated, "layers": layers}
    return CheckResult("activations", not flagged, summary, _format_table(rows),
                       "; ".join(hints) or None, data)


# --------------------------------------------------------------------------- all of them


def _arrays_of(data):
    """(x, y) from a Dataset, Splits (its training split) or an (x, y) pair."""
    if isinstance(data, Splits):
        data = data.train
    if isinstance(data, Dataset):
        return data.x, data.y
    try:
        x, y = data
    except (TypeError, ValueError):
        raise TypeError(f"data must be a fastnet Dataset, Splits or an (x, y) pair, got "
                        f"{type(data).__name__}") from None
    return np.asarray(x), np.asarray(y)


def run_checks(model, data, loss=None, *, seed=0, batch_size=256, seeds=INIT_SEEDS,
               coords=GRAD_COORDS, overfit_steps=OVERFIT_STEPS, verbose=True, file=None):
    """Runs the pre-training checklist and prints its report.

    1. :func:`gradient_check` on ``GRAD_BATCH`` (8) samples;
    2. :func:`init_loss_check` over ``seeds`` initialisations;
    3. :func:`overfit_check` on 20 samples;
    4. :func:`activation_check` at initialisation.

    The model itself is not changed.

    Parameters
    ----------
    model : fastnet.Sequential
    data : fastnet.Dataset, fastnet.Splits or (x, y)
        Labelled samples (of Splits, the training split); a random ``batch_size`` of them is
        used (``seed``).
    loss : fastnet.losses.Loss, optional
        The training loss (cross-entropy by default).
    seed : int
        Seeds which samples and coordinates are used.
    batch_size : int
        Samples for the loss at initialisation and the activation statistics.
    seeds, coords, overfit_steps : int
        Passed to the checks.
    verbose : bool
        Print the report.
    file : file object, optional
        Where to print it (default: standard output).

    Returns
    -------
    CheckReport

    Examples
    --------
    >>> import fastnet as fn
    >>> from fastnet import checks
    >>> model = fn.Sequential(fn.Linear(64, 32), fn.ReLU(), fn.Linear(32, 10))
    >>> report = checks.run_checks(model, fn.load_digits(), verbose=False)
    >>> report.passed, [check.name for check in report.checks]
    (True, ['gradient', 'init_loss', 'overfit', 'activations'])
    """
    loss = _check_loss(loss)
    x, y = _arrays_of(data)
    x, y = _as_arrays(model, x, y)
    batch = _pick(len(x), batch_size, [seed, 1])
    small = _pick(len(x), GRAD_BATCH, [seed, 2])
    checks = [
        gradient_check(model, x[small], y[small], loss, coords=coords, seed=seed),
        init_loss_check(model, x[batch], y[batch], loss, seeds=seeds),
        overfit_check(model, x, y, loss, steps=overfit_steps, seed=seed),
        activation_check(model, x[batch]),
    ]
    report = CheckReport(checks)
    if verbose:
        print(report, file=sys.stdout if file is None else file)
    return report


# --------------------------------------------------------------------------- the command


SUMMARY = "check a model before training: gradient, loss at init, overfitting, activations"


def register(commands):
    """Adds ``fastnet check`` to the command line's subparsers; returns its handler."""
    from fastnet import cli

    check = commands.add_parser(
        "check", help="run the pre-training checklist on a model and its data",
        description="Run four checks on a freshly initialised model before training it: the "
                    "gradient (backpropagation against finite differences, float64, per "
                    "layer), the loss at initialisation (near ln C over several seeds), "
                    "overfitting 20 samples (the loss must reach nearly zero) and the "
                    "activations at initialisation (no collapsed, exploding, dead or saturated "
                    "layers). Takes the model and data options of 'fastnet train'. Exit status "
                    "0 when every check passes, 1 when one fails, 2 on an error.")
    check.add_argument("--data", metavar="PATH",
                       help="dataset, as for 'fastnet train' (default: the bundled digits)")
    check.add_argument("--model", default="mlp", metavar="MODEL",
                       help="mlp (default), cnn, resnet, or a .json/.toml model description")
    check.add_argument("--input-shape", type=cli._shape, default=None, metavar="C,H,W",
                       help="per-sample shape for image models (default: a square image)")
    check.add_argument("--hidden", type=cli._hidden_sizes, default=[128, 128], metavar="SIZES",
                       help="hidden layer sizes of the MLP (default: 128,128)")
    check.add_argument("--init", default=None, metavar="SCHEME",
                       help="weight initialisation of every linear and convolution layer")
    check.add_argument("--bias-init", default=None, metavar="SCHEME",
                       help="bias initialisation")
    check.add_argument("--loss", default="ce", choices=["ce", "mse", "l1", "huber", "bce"],
                       help="the training loss (default: cross-entropy)")
    check.add_argument("--label-smoothing", type=float, default=0.0,
                       help="cross-entropy label smoothing (default 0)")
    check.add_argument("--scale", default="none", choices=["none", "standard", "minmax"],
                       help="input scaling fitted on the training split (default: none)")
    check.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                       help="the model's dtype (the gradient check always runs in float64)")
    check.add_argument("--seed", type=int, default=0,
                       help="seeds the initialisation and the samples checked (default 0)")
    check.add_argument("--threads", type=int, default=0,
                       help="threads (default: all CPUs this process may use)")
    check.add_argument("--seeds", type=cli._positive_int, default=INIT_SEEDS,
                       help=f"initialisations for the loss at initialisation (default "
                            f"{INIT_SEEDS})")
    check.add_argument("--coords", type=cli._positive_int, default=GRAD_COORDS,
                       help=f"coordinates per parameter tensor in the gradient check (default "
                            f"{GRAD_COORDS})")
    check.add_argument("--overfit-steps", type=cli._positive_int, default=OVERFIT_STEPS,
                       help=f"Adam steps of the overfitting check (default {OVERFIT_STEPS})")
    check.add_argument("--recipe", metavar="FILE",
                       help="a 'fastnet train' recipe file (JSON or TOML): its model and data "
                            "options apply; options given on the command line win")
    check.add_argument("--json", action="store_true",
                       help="print the results as JSON instead of the report")
    check.set_defaults(teacher=None)
    return command_check


def _training_data(args):
    """The training split, reshaped and scaled as 'fastnet train' does, and the model."""
    import fastnet as fn
    from fastnet import cli

    splits = fn.load_data(args.data, dtype=args.dtype, seed=args.seed)
    train = splits.train
    model, shape = cli.build_model(args, train.x.shape[1:], train.num_classes)
    if int(np.prod(shape)) != train.num_features:
        raise ValueError(f"the model takes samples of shape {shape}, the data has "
                         f"{train.num_features} values per sample")
    x = train.x.reshape((len(train),) + tuple(shape))
    if args.scale != "none":
        from fastnet.data import MinMaxScaler, Standardizer

        scaler = (Standardizer(per="channel" if len(shape) == 3 else "feature")
                  if args.scale == "standard" else MinMaxScaler())
        x = scaler.fit_transform(x)
    return model, x, train.y


def command_check(args):
    """``fastnet check``: prints the report (or JSON); 0 if every check passed, else 1."""
    import fastnet as fn
    from fastnet import cli

    if args.threads:
        fn.set_num_threads(args.threads)
    model, x, y = _training_data(args)
    loss, _ = cli.build_loss(args)
    if not args.json:
        print(f"checking {args.model} ({model.num_parameters():,} parameters, {model.dtype.name})"
              f" on {len(x)} training samples, {model._core.output_size} classes")
    report = run_checks(model, (x, y), loss, seed=args.seed, seeds=args.seeds, coords=args.coords,
                        overfit_steps=args.overfit_steps, verbose=not args.json)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    return 0 if report.passed else 1
