"""The training loop: epochs of seeded shuffles, one fused C step per batch, metrics per epoch."""
import json
import sys
import time

import numpy as np

from fastnet.data import Dataset
from fastnet.losses import CrossEntropyLoss, DistillationLoss, Loss


def as_dataset(data, what, dtype=None):
    """A Dataset from a Dataset or an ``(x, y)`` pair."""
    if data is None or isinstance(data, Dataset):
        return data
    try:
        x, y = data
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a fastnet Dataset or an (x, y) pair, got "
                        f"{type(data).__name__}") from None
    return Dataset(np.asarray(x), np.asarray(y))


class History:
    """Per-epoch metrics of a :meth:`Trainer.fit` run: a list of dicts such as
    ``{"epoch": 3, "train_loss": 0.12, "train_accuracy": 0.97, "val_loss": ..., "lr": ...}``."""

    def __init__(self):
        self.epochs = []

    def append(self, record):
        self.epochs.append(record)

    def __getitem__(self, i):
        return self.epochs[i]

    def __len__(self):
        return len(self.epochs)

    def metric(self, name):
        """One metric over the epochs, e.g. ``history.metric("val_loss")``."""
        return [record.get(name) for record in self.epochs]

    def __repr__(self):
        last = self.epochs[-1] if self.epochs else {}
        return f"History({len(self.epochs)} epochs, last={last})"


class Trainer:
    """Trains a model with one optimizer and one loss.

    Parameters
    ----------
    model : fastnet.Sequential
    optimizer : fastnet.optim.Optimizer
    loss : CrossEntropyLoss, optional
    seed : int
        Seeds the shuffle of every epoch (``default_rng([seed, epoch])``), so a run is repeatable.
    progress : bool, optional
        Show a progress bar; by default only when stderr is a terminal.
    metrics_path : str, optional
        Appends one JSON line per epoch to this file.
    schedule : fastnet.schedules.Schedule or ReduceLROnPlateau, optional
        Stepped after every epoch or every update, as its ``interval`` says; a schedule that
        needs a metric (reduce-on-plateau) gets ``monitor`` after each epoch.
    monitor : str
        The record entry a plateau schedule follows (``"val_loss"`` by default; ``train_loss``
        when there is no validation data).
    transform : callable, optional
        Augmentation applied to each training batch, ``(x, rng) -> x'`` (see
        :mod:`fastnet.augment`); batches are then prepared in a background thread.
    sampler : fastnet.data.ClassBalancedSampler, optional
        Draws each epoch's samples (class-balanced) instead of a shuffle.
    prefetch : int
        Batches prepared ahead by the background thread (with ``transform`` or ``sampler``).
    teacher : fastnet.Sequential, optional
        For :class:`fastnet.DistillationLoss`: the model whose logits (in eval mode) the student
        learns from, batch by batch.

    The data holds class labels. Cross-entropy and distillation take them as they are; the
    losses that take float targets (MSE, L1, Huber, binary cross-entropy) get them one-hot
    encoded, so any loss trains a classifier; accuracy is the argmax's.

    Examples
    --------
    >>> import fastnet as fn
    >>> data = fn.load_digits()
    >>> model = fn.Sequential(fn.Linear(64, 64), fn.ReLU(), fn.Linear(64, 10))
    >>> opt = fn.optim.Adam(model.parameters(), lr=3e-3)
    >>> history = fn.Trainer(model, opt, progress=False).fit(data.train, data.val, epochs=3)
    >>> len(history)
    3
    """

    def __init__(self, model, optimizer, loss=None, *, seed=0, progress=None, metrics_path=None,
                 schedule=None, monitor="val_loss", transform=None, sampler=None, prefetch=2,
                 teacher=None):
        self.model = model
        self.optimizer = optimizer
        self.loss = loss if loss is not None else CrossEntropyLoss()
        if not isinstance(self.loss, Loss):
            raise TypeError(f"Trainer needs a fastnet loss, got {self.loss!r}")
        if isinstance(self.loss, DistillationLoss) and teacher is None:
            raise ValueError("DistillationLoss needs the teacher model: Trainer(..., teacher=...)")
        self.teacher = teacher
        if optimizer.model is not model:
            raise ValueError("the optimizer was built over another model's parameters")
        self.seed = int(seed)
        self.progress = sys.stderr.isatty() if progress is None else bool(progress)
        self.metrics_path = metrics_path
        self.schedule = schedule
        self.monitor = monitor
        self.transform = transform
        self.sampler = sampler
        self.prefetch = prefetch

    def _check_data(self, data, what):
        data = as_dataset(data, what)
        if data is None:
            return None
        if data.x.shape[1:] != self.model.input_shape:
            raise ValueError(f"{what}: samples have shape {data.x.shape[1:]}, the model expects "
                             f"{self.model.input_shape}")
        classes = self.model._core.output_size
        if data.y.max() >= classes:
            raise ValueError(f"{what}: label {int(data.y.max())} is out of range for the model's "
                             f"{classes} outputs")
        if not np.all(np.isfinite(data.x)):
            bad = int(np.count_nonzero(~np.isfinite(data.x)))
            raise ValueError(f"{what}: the inputs contain {bad} NaN or Inf values")
        return data

    def fit(self, train, val=None, epochs=10, batch_size=64, shuffle=True):
        """Trains for ``epochs`` passes over ``train``; evaluates on ``val`` after each.

        Returns
        -------
        History
        """
        from tqdm.auto import tqdm

        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        train = self._check_data(train, "train")
        val = self._check_data(val, "val")
        x_all = np.ascontiguousarray(train.x, dtype=self.model.dtype)
        n = len(train)
        history = History()
        batches = (n + batch_size - 1) // batch_size
        bar = tqdm(total=epochs * batches, disable=not self.progress, unit="batch",
                   dynamic_ncols=True)
        # The C step counts argmax hits for the losses over classes; for the others the training
        # accuracy is left out rather than computed in a second pass.
        counts_hits = isinstance(self.loss, (CrossEntropyLoss, DistillationLoss))
        self.model.train()
        try:
            for epoch in range(1, epochs + 1):
                started = time.perf_counter()
                lr = self._lr()
                loss_sum, correct, seen = 0.0, 0, 0
                for xb, yb in self._batches(train, x_all, epoch, batch_size, shuffle):
                    loss = self.model.train_step(xb, self._targets(xb, yb), self.loss,
                                                 self.optimizer)
                    loss_sum += loss * len(xb)
                    if counts_hits:
                        correct += self.model.last_train_correct
                    seen += len(xb)
                    bar.update(1)
                    if self.schedule is not None and self.schedule.interval == "step":
                        self.schedule.step()
                record = {
                    "epoch": epoch,
                    "train_loss": loss_sum / seen,
                    "train_accuracy": correct / seen if counts_hits else None,
                    "lr": lr,
                    "seconds": time.perf_counter() - started,
                }
                if val is not None:
                    metrics = self.evaluate(val)
                    record["val_loss"], record["val_accuracy"] = metrics["loss"], metrics["accuracy"]
                self._step_schedule_after_epoch(record)
                history.append(record)
                self._write_metrics(record)
                bar.set_description(f"epoch {epoch}/{epochs}")
                bar.set_postfix({k: round(v, 4) for k, v in record.items()
                                 if k in ("train_loss", "val_loss", "val_accuracy")
                                 and v is not None})
        finally:
            bar.close()
        return history

    def _batches(self, train, x_all, epoch, batch_size, shuffle):
        """The epoch's (x, y) batches: a seeded shuffle (``default_rng([seed, epoch])``) sliced
        in order; through a background :class:`fastnet.augment.BatchLoader` when batches are
        augmented or drawn by a sampler."""
        if self.transform is None and self.sampler is None:
            n = len(train)
            # One gather per epoch, then contiguous slices: no copy per batch.
            if shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(n)
                x_epoch, y_epoch = x_all[order], train.y[order]
            else:
                x_epoch, y_epoch = x_all, train.y
            for start in range(0, n, batch_size):
                yield x_epoch[start:start + batch_size], y_epoch[start:start + batch_size]
            return
        from fastnet.augment import BatchLoader

        loader = BatchLoader(Dataset(x_all, train.y, num_classes=train.num_classes), batch_size,
                             shuffle=shuffle, seed=self.seed, transform=self.transform,
                             sampler=self.sampler, prefetch=self.prefetch)
        with loader.epoch(epoch) as batches:
            yield from batches

    def _targets(self, xb, yb):
        """What the loss takes for a batch of class labels."""
        if isinstance(self.loss, CrossEntropyLoss):
            return yb
        if isinstance(self.loss, DistillationLoss):
            with self.teacher.mode(training=False):
                return yb, self.teacher(xb)
        onehot = np.zeros((len(yb), self.model._core.output_size), dtype=self.model.dtype)
        onehot[np.arange(len(yb)), yb] = 1
        return onehot

    def _lr(self):
        groups = getattr(self.optimizer, "param_groups", None)
        return groups[0]["lr"] if groups else self.optimizer.lr

    def _step_schedule_after_epoch(self, record):
        if self.schedule is None or self.schedule.interval != "epoch":
            return
        if getattr(self.schedule, "needs_metric", False):
            key = self.monitor if self.monitor in record else "train_loss"
            self.schedule.step(record[key])
        else:
            self.schedule.step()

    def evaluate(self, data, batch_size=512):
        """``{"loss": mean loss, "accuracy": fraction correct}`` of the model on ``data``."""
        data = self._check_data(data, "data")
        loss_sum, correct = 0.0, 0
        with self.model.mode(training=False):
            for start in range(0, len(data), batch_size):
                xb = data.x[start:start + batch_size]
                yb = data.y[start:start + batch_size]
                outputs = self.model(xb)
                loss_sum += self.loss(outputs, self._targets(xb, yb)) * len(xb)
                correct += int(np.count_nonzero(outputs.argmax(axis=1) == yb))
        return {"loss": loss_sum / len(data), "accuracy": correct / len(data)}

    def _write_metrics(self, record):
        if self.metrics_path:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
