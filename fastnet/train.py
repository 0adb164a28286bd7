"""The training loop: epochs of seeded shuffles, one fused C step per batch, metrics per epoch."""
import json
import sys
import time

import numpy as np

from fastnet.data import Dataset
from fastnet.losses import CrossEntropyLoss


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

    def __init__(self, model, optimizer, loss=None, *, seed=0, progress=None, metrics_path=None):
        self.model = model
        self.optimizer = optimizer
        self.loss = loss if loss is not None else CrossEntropyLoss()
        if not isinstance(self.loss, CrossEntropyLoss):
            raise TypeError(f"Trainer supports fastnet.CrossEntropyLoss, got {self.loss!r}")
        if optimizer.model is not model:
            raise ValueError("the optimizer was built over another model's parameters")
        self.seed = int(seed)
        self.progress = sys.stderr.isatty() if progress is None else bool(progress)
        self.metrics_path = metrics_path

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
        self.model.train()
        try:
            for epoch in range(1, epochs + 1):
                started = time.perf_counter()
                # One gather per epoch, then contiguous slices: no copy per batch.
                if shuffle:
                    order = np.random.default_rng([self.seed, epoch]).permutation(n)
                    x_epoch, y_epoch = x_all[order], train.y[order]
                else:
                    x_epoch, y_epoch = x_all, train.y
                loss_sum, correct = 0.0, 0
                for start in range(0, n, batch_size):
                    xb = x_epoch[start:start + batch_size]
                    yb = y_epoch[start:start + batch_size]
                    loss = self.model.train_step(xb, yb, self.loss, self.optimizer)
                    loss_sum += loss * len(xb)
                    correct += self.model.last_train_correct
                    bar.update(1)
                record = {
                    "epoch": epoch,
                    "train_loss": loss_sum / n,
                    "train_accuracy": correct / n,
                    "lr": self.optimizer.lr,
                    "seconds": time.perf_counter() - started,
                }
                if val is not None:
                    metrics = self.evaluate(val)
                    record["val_loss"], record["val_accuracy"] = metrics["loss"], metrics["accuracy"]
                history.append(record)
                self._write_metrics(record)
                bar.set_description(f"epoch {epoch}/{epochs}")
                bar.set_postfix({k: round(v, 4) for k, v in record.items()
                                 if k in ("train_loss", "val_loss", "val_accuracy")})
        finally:
            bar.close()
        return history

    def evaluate(self, data, batch_size=512):
        """``{"loss": mean loss, "accuracy": fraction correct}`` of the model on ``data``."""
        data = self._check_data(data, "data")
        loss_sum, correct = 0.0, 0
        with self.model.mode(training=False):
            for start in range(0, len(data), batch_size):
                xb = data.x[start:start + batch_size]
                yb = data.y[start:start + batch_size]
                loss, hits = self.loss.evaluate(self.model(xb), yb)
                loss_sum += loss * len(xb)
                correct += hits
        return {"loss": loss_sum / len(data), "accuracy": correct / len(data)}

    def _write_metrics(self, record):
        if self.metrics_path:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
