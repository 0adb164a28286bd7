"""Losses. In ``train_step`` they run fused in C; called directly they run the same C kernel."""
import numpy as np

from fastnet import _core


class CrossEntropyLoss:
    """Softmax cross-entropy over the last axis of the logits, averaged over the batch.

    Fused and numerically stable: computed as ``logsumexp(z) - z[label]`` with the row maximum
    subtracted, so large logits neither overflow nor lose the loss to rounding. Labels are class
    indices of any integer dtype.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> loss = fn.CrossEntropyLoss()
    >>> round(loss(np.zeros((4, 10), np.float32), np.arange(4)), 4)   # ln 10
    2.3026
    """

    def __call__(self, logits, labels):
        return self.forward_backward(logits, labels, want_grad=False)[0]

    def forward_backward(self, logits, labels, want_grad=True):
        """``(mean loss, d loss / d logits)``; the gradient is ``(softmax - onehot) / N``."""
        logits = np.asarray(logits)
        if logits.ndim != 2:
            raise ValueError(f"CrossEntropyLoss expects logits (N, classes), got {logits.shape}")
        loss, grad, _ = _core.softmax_cross_entropy(logits, labels, want_grad)
        return loss, grad

    def evaluate(self, logits, labels):
        """``(mean loss, number of correct argmax predictions)`` without the gradient."""
        loss, _, correct = _core.softmax_cross_entropy(np.asarray(logits), labels, False)
        return loss, correct

    def __repr__(self):
        return "CrossEntropyLoss()"
