"""Losses, with PyTorch's names, definitions and mean reduction.

Each loss is computed in C by one fused, numerically stable kernel that also writes the gradient:
in ``model.train_step`` inside the training step's single C call, and called directly
(``loss(outputs, targets)``, ``loss.forward_backward(outputs, targets)``) by the same kernel.

- ``CrossEntropyLoss(weight=None, label_smoothing=0.0)``: logits against labels ``(N,)`` of any
  integer dtype, or soft targets ``(N, C)`` (rows of class probabilities);
- ``DistillationLoss(temperature=4.0, alpha=0.9)``: logits against the pair
  ``(labels, teacher_logits)``;
- ``BCEWithLogitsLoss(pos_weight=None)``: logits against float targets ``(N, C)``, usually 0 or 1;
- ``MSELoss()``, ``L1Loss()``, ``HuberLoss(delta=1.0)``: values against float targets ``(N, C)``.

Float targets may also be ``(N,)`` when the outputs are ``(N, 1)``.
"""
import numbers

import numpy as np

from fastnet import _core


def _real(value, name, low=None, high=None, low_open=False):
    """value as a float, checked against [low, high] (or (low, high] when low_open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    if not np.isfinite(value) or too_low or (high is not None and value > high):
        bound = "(" if low_open else "["
        upper = "inf)" if high is None else f"{high:g}]"
        raise ValueError(f"{name} must be in {bound}{low:g}, {upper}, got {value!r}")
    return value


def _class_weights(weights, name):
    """Per-class weights as a read-only float64 array (C checks their count against the outputs)."""
    if weights is None:
        return None
    w = np.array(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"{name} must be a 1-D array with one entry per class, got shape "
                         f"{w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{name} must hold finite values >= 0, got {w}")
    w.setflags(write=False)
    return w


def _outputs(outputs, loss):
    outputs = np.asarray(outputs)
    if outputs.ndim != 2:
        raise ValueError(f"{loss} expects outputs (N, C), got shape {outputs.shape}")
    return outputs


def _float_targets(targets, outputs_shape):
    """Float targets (N, C); (N,) is accepted for outputs (N, 1); integers and bools become
    floats."""
    targets = np.asarray(targets)
    if targets.dtype.kind in "iub":
        targets = targets.astype(np.float64)
    if targets.ndim == 1 and len(outputs_shape) == 2 and outputs_shape[1] == 1:
        targets = targets.reshape(-1, 1)
    return targets


class Loss:
    """Base class of the losses: calling conventions shared by every loss.

    A loss is a description (its hyper-parameters); it holds no state between calls. Subclasses
    set ``kind`` (the C loss) and say which targets they take.
    """

    kind = None

    def _spec(self, columns):
        """The loss as the C boundary takes it, for outputs of ``columns`` columns:
        ``{"kind": ..., hyper-parameters...}``."""
        return {"kind": self.kind}

    def _targets(self, targets, outputs_shape):
        """``(labels, values, teacher)`` for the C boundary, None where the loss takes none."""
        return None, _float_targets(targets, outputs_shape), None

    def __call__(self, outputs, targets):
        """The loss (a float) of ``outputs`` (N, C) against ``targets``."""
        return self.forward_backward(outputs, targets, want_grad=False)[0]

    def _run(self, outputs, targets, want_grad):
        """``(loss, gradient or None, correct)`` from the C kernel."""
        outputs = _outputs(outputs, type(self).__name__)
        labels, values, teacher = self._targets(targets, outputs.shape)
        return _core.loss_forward_backward(outputs, self._spec(outputs.shape[1]), labels, values,
                                           teacher, want_grad=want_grad)

    def forward_backward(self, outputs, targets, want_grad=True):
        """``(loss, d loss / d outputs)``; the gradient has the outputs' shape and dtype (None
        when ``want_grad`` is false)."""
        value, grad, _ = self._run(outputs, targets, want_grad)
        return value, grad

    def evaluate(self, outputs, targets):
        """``(loss, correct)``: ``correct`` is the number of rows whose first maximal output is at
        the label for the classification losses, None for the others."""
        return self(outputs, targets), None

    def __repr__(self):
        return f"{type(self).__name__}()"


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy over the last axis of the logits, averaged over the batch.

    Fused and numerically stable: ``-log softmax(z)[k]`` is computed as
    ``(max(z) - z[k]) + log(sum(exp(z - max(z))))``, so large logits neither overflow nor lose
    the loss to rounding, and the gradient comes out of the same pass.

    Parameters
    ----------
    weight : array_like of shape (C,), optional
        A weight per class, finite and ``>= 0`` (PyTorch's ``weight``). With labels the loss is
        the weighted mean ``sum_i w[y_i] l_i / sum_i w[y_i]``; with soft targets each class term
        is weighted and the sum over rows is divided by ``N``, as PyTorch does.
    label_smoothing : float, default 0
        ``s`` in ``[0, 1]``: the target of each row becomes ``(1 - s) * target + s / C``, with
        ``target`` the one-hot label or the soft target row (PyTorch's ``label_smoothing``).

    Notes
    -----
    Targets are either class indices of shape ``(N,)`` and any integer dtype, or soft targets of
    shape ``(N, C)``: rows of class probabilities, for example mixed-up labels. Writing ``q`` for
    the smoothed target row and ``p = softmax(z)``, a row's loss is
    ``l = -sum_k w[k] q[k] log p[k]`` and its gradient ``(sum_k w[k] q[k]) p - w q`` (divided by
    the normaliser of the mean); without weights and smoothing that is ``(softmax - onehot) / N``.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> loss = fn.CrossEntropyLoss()
    >>> round(loss(np.zeros((4, 10), np.float32), np.arange(4)), 4)   # ln 10
    2.3026
    >>> logits = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    >>> round(fn.CrossEntropyLoss(label_smoothing=0.1)(logits, np.array([0, 1])), 4)
    0.4421
    >>> round(fn.CrossEntropyLoss(weight=[1.0, 3.0, 1.0])(logits, np.array([0, 1])), 4)
    0.3907
    >>> soft = np.array([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5]])
    >>> value, grad = fn.CrossEntropyLoss().forward_backward(logits, soft)
    >>> grad.shape
    (2, 3)
    """

    kind = _core.LOSS_CROSS_ENTROPY

    def __init__(self, weight=None, label_smoothing=0.0):
        self.weight = _class_weights(weight, "weight")
        if self.weight is not None and not self.weight.sum() > 0:
            raise ValueError("weight: the class weights sum to 0 (expected a positive sum)")
        self.label_smoothing = _real(label_smoothing, "label_smoothing", 0.0, 1.0)

    def _spec(self, columns):
        return {"kind": self.kind, "weight": self.weight, "label_smoothing": self.label_smoothing}

    def _targets(self, targets, outputs_shape):
        targets = np.asarray(targets)
        if targets.dtype.kind == "f" and targets.ndim == 2:
            return None, targets, None
        return targets, None, None  # integer labels; anything else is refused with a TypeError

    def evaluate(self, outputs, targets):
        """``(loss, correct)`` without the gradient: ``correct`` counts the rows whose first
        maximal logit is at the label (with soft targets: at the target row's first maximum)."""
        value, _, correct = self._run(outputs, targets, False)
        return value, correct

    def __repr__(self):
        args = []
        if self.weight is not None:
            args.append(f"weight={self.weight.tolist()}")
        if self.label_smoothing:
            args.append(f"label_smoothing={self.label_smoothing}")
        return f"CrossEntropyLoss({', '.join(args)})"


class DistillationLoss(Loss):
    """Knowledge distillation (Hinton et al., 2015): match a teacher's softened outputs and the
    labels at once.

    With student logits ``z``, teacher logits ``v``, labels ``y``, temperature ``T`` and weight
    ``a``::

        loss = a * T**2 * KL(softmax(v / T) || softmax(z / T)) + (1 - a) * CE(z, y)

    where ``KL(P || Q) = sum_k P[k] (log P[k] - log Q[k])`` is summed over classes and averaged
    over the batch (PyTorch's ``kl_div(..., reduction="batchmean")``), and ``CE`` is the mean
    softmax cross-entropy. The softened term's gradient scales as ``1 / T``; the factor ``T**2``
    keeps its share of the gradient independent of the temperature, as in the paper. The teacher
    gets no gradient.

    Parameters
    ----------
    temperature : float, default 4.0
        ``T > 0``; a higher temperature exposes more of the teacher's ranking of the wrong
        classes.
    alpha : float, default 0.9
        ``a`` in ``[0, 1]``, the weight of the distillation term: 0 is plain cross-entropy, 1
        ignores the labels.

    Notes
    -----
    Targets are the pair ``(labels, teacher_logits)``: labels ``(N,)`` of any integer dtype and
    the teacher's logits ``(N, C)`` for the same batch. :meth:`evaluate` also accepts the labels
    alone and then returns the plain cross-entropy (what a validation set without a teacher
    measures).

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> student = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]])
    >>> teacher = np.array([[3.0, 1.0, -2.0], [-1.0, 4.0, 1.0]])
    >>> labels = np.array([0, 1])
    >>> round(fn.DistillationLoss(temperature=2.0, alpha=0.5)(student, (labels, teacher)), 4)
    0.3964
    >>> fn.DistillationLoss(alpha=0.0)(student, (labels, teacher)) == fn.CrossEntropyLoss()(
    ...     student, labels)
    True
    """

    kind = _core.LOSS_DISTILLATION

    def __init__(self, temperature=4.0, alpha=0.9):
        self.temperature = _real(temperature, "temperature", 0.0, low_open=True)
        self.alpha = _real(alpha, "alpha", 0.0, 1.0)

    def _spec(self, columns):
        return {"kind": self.kind, "temperature": self.temperature, "alpha": self.alpha}

    def _targets(self, targets, outputs_shape):
        if not isinstance(targets, (tuple, list)) or len(targets) != 2:
            raise TypeError("DistillationLoss takes the targets (labels, teacher_logits), got "
                            f"{type(targets).__name__}")
        labels, teacher = targets
        return labels, None, np.asarray(teacher)

    def evaluate(self, outputs, targets):
        """``(loss, correct)`` without the gradient, from ``(labels, teacher_logits)``, or from
        the labels alone (the plain cross-entropy). ``correct`` counts the rows whose first
        maximal logit is at the label."""
        if isinstance(targets, (tuple, list)):
            value, _, correct = self._run(outputs, targets, False)
            return value, correct
        return CrossEntropyLoss().evaluate(outputs, targets)

    def __repr__(self):
        return f"DistillationLoss(temperature={self.temperature}, alpha={self.alpha})"


class MSELoss(Loss):
    """Mean squared error: ``mean((x - t)**2)`` over every element.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> fn.MSELoss()(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 0.0], [3.0, 5.0]]))
    1.25
    >>> fn.MSELoss().forward_backward(np.array([[2.0]]), np.array([0.5]))[1]
    array([[3.]])
    """

    kind = _core.LOSS_MSE


class L1Loss(Loss):
    """Mean absolute error: ``mean(|x - t|)`` over every element; its gradient at ``x == t`` is 0.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> fn.L1Loss()(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 0.0], [3.0, 5.0]]))
    0.75
    """

    kind = _core.LOSS_L1


class HuberLoss(Loss):
    """Huber loss, PyTorch's definition: with ``d = x - t``, ``0.5 * d**2`` where
    ``|d| < delta`` and ``delta * (|d| - 0.5 * delta)`` elsewhere, averaged over every element.

    Quadratic near the target and linear far from it: outliers pull with a force of at most
    ``delta``.

    Parameters
    ----------
    delta : float, default 1.0
        Where the loss turns from quadratic to linear; ``> 0``.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> fn.HuberLoss(delta=1.0)(np.array([[0.5, 3.0]]), np.array([[0.0, 0.0]]))
    1.3125
    """

    kind = _core.LOSS_HUBER

    def __init__(self, delta=1.0):
        self.delta = _real(delta, "delta", 0.0, low_open=True)

    def _spec(self, columns):
        return {"kind": self.kind, "delta": self.delta}

    def __repr__(self):
        return f"HuberLoss(delta={self.delta})"


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits, one independent yes/no per output, averaged over every
    element.

    With ``sigmoid`` inside the loss: for logit ``x``, target ``t`` and ``w`` the ``pos_weight``
    of its column, ``-(w t log(sigmoid(x)) + (1 - t) log(1 - sigmoid(x)))``, computed as
    ``w t softplus(-x) + (1 - t) softplus(x)`` with ``softplus(x) = max(x, 0) +
    log1p(exp(-|x|))``: finite for any logit.

    Parameters
    ----------
    pos_weight : float or array_like of shape (C,), optional
        The weight of the positive term of each column (PyTorch's ``pos_weight``): above 1 it
        raises recall, e.g. ``negatives / positives`` for a rare class. A single number applies
        to every column.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> logits = np.array([[0.0, 2.0], [-1.0, 3.0]])
    >>> targets = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> round(fn.BCEWithLogitsLoss()(logits, targets), 4)
    0.7955
    >>> round(fn.BCEWithLogitsLoss(pos_weight=[2.0, 1.0])(logits, targets), 4)
    0.9688
    """

    kind = _core.LOSS_BCE_WITH_LOGITS

    def __init__(self, pos_weight=None):
        if pos_weight is not None and np.ndim(pos_weight) == 0:
            pos_weight = [pos_weight]
        self.pos_weight = _class_weights(pos_weight, "pos_weight")

    def _spec(self, columns):
        weights = self.pos_weight
        if weights is not None and weights.size == 1:  # one number for every column
            weights = np.full(columns, weights[0])
        return {"kind": self.kind, "pos_weight": weights}

    def __repr__(self):
        if self.pos_weight is None:
            return "BCEWithLogitsLoss()"
        return f"BCEWithLogitsLoss(pos_weight={self.pos_weight.tolist()})"
