"""The training loop: epochs of seeded shuffles, one fused C step per batch, metrics and
monitors per epoch, checkpoints that resume exactly, early stopping and weight averaging."""
import contextlib
import json
import os
import signal
import sys
import threading
import time

import numpy as np

from fastnet import checkpoint
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


class NonFiniteError(FloatingPointError):
    """Training met a NaN or Inf loss or gradient. The message names the epoch, the step and
    the first layer where non-finite values appeared; the weights are those before that step,
    and the last checkpoint written is intact."""


class EarlyStopping:
    """Stops training when a validation metric has not improved for ``patience`` epochs, and
    (with ``restore_best``) puts back the weights of the best epoch.

    Parameters
    ----------
    monitor : str
        An entry of the epoch record: ``"val_loss"`` (default), ``"val_accuracy"``,
        ``"train_loss"``, ...
    patience : int
        Epochs without improvement tolerated before stopping (>= 1).
    min_delta : float
        An improvement must beat the best value by more than this (>= 0).
    mode : {"auto", "min", "max"}
        Whether smaller or larger is better; "auto" takes "max" for accuracies, else "min".
    restore_best : bool
        At the end of training (stopped or not), load the best epoch's weights into the model.

    Examples
    --------
    >>> import fastnet as fn
    >>> data = fn.load_digits()
    >>> model = fn.Sequential(fn.Linear(64, 32), fn.ReLU(), fn.Linear(32, 10))
    >>> stop = fn.EarlyStopping(monitor="val_loss", patience=2)
    >>> trainer = fn.Trainer(model, fn.optim.Adam(model.parameters(), lr=0.05),
    ...                      early_stopping=stop, progress=False)
    >>> history = trainer.fit(data.train, data.val, epochs=50)
    >>> stop.best_epoch <= len(history) <= 50
    True
    """

    def __init__(self, monitor="val_loss", patience=10, min_delta=0.0, mode="auto",
                 restore_best=True):
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be the name of an epoch metric, got {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive integer, got {patience!r}")
        if not (isinstance(min_delta, (int, float)) and min_delta >= 0):
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.mode, self.restore_best = mode, bool(restore_best)
        self.best = None
        self.best_epoch = None
        self.bad_epochs = 0

    def update(self, epoch, value):
        """Takes an epoch's value of the metric; True if it is the best so far."""
        if value is None or not np.isfinite(value):
            improved = False
        elif self.best is None:
            improved = True
        elif self.mode == "min":
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = float(value), int(epoch), 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self):
        return self.bad_epochs >= self.patience

    def state_dict(self):
        return {"monitor": self.monitor, "mode": self.mode, "best": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state):
        if state.get("monitor") != self.monitor or state.get("mode") != self.mode:
            raise ValueError(f"the checkpoint's early stopping follows {state.get('monitor')!r} "
                             f"({state.get('mode')}), this run {self.monitor!r} ({self.mode})")
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs = int(state["bad_epochs"])

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta}, mode={self.mode!r})")


class WeightAveraging:
    """A running average of the parameters during training, used for evaluation.

    ``decay`` a float in (0, 1): an exponential moving average, ``avg = d * avg + (1 - d) * w``
    after every update, with ``d = min(decay, (1 + t) / (10 + t))`` at update ``t`` so that the
    first updates are not swamped by the initial weights. ``decay="polyak"``: the plain mean of
    the weights after every update (Polyak-Ruppert averaging). Buffers (batch-norm running
    statistics) are not averaged: the live ones are used.

    Examples
    --------
    >>> import fastnet as fn
    >>> data = fn.load_digits()
    >>> model = fn.Sequential(fn.Linear(64, 32), fn.ReLU(), fn.Linear(32, 10))
    >>> trainer = fn.Trainer(model, fn.optim.SGD(model.parameters(), lr=0.1),
    ...                      averaging=fn.WeightAveraging(0.99), progress=False)
    >>> _ = trainer.fit(data.train, data.val, epochs=2)
    >>> trainer.evaluate(data.val)["accuracy"] > 0.5     # with the averaged weights
    True
    >>> trainer.apply_averaged_weights()                  # keep them in the model
    """

    def __init__(self, decay=0.999):
        if decay != "polyak" and not (isinstance(decay, float) and 0.0 < decay < 1.0):
            raise ValueError(f"decay must be a float in (0, 1) or 'polyak', got {decay!r}")
        self.decay = decay
        self.average = None
        self.updates = 0
        self._scratch = None

    def start(self, params):
        self.average = params.copy()
        self._scratch = np.empty_like(params)
        self.updates = 0

    def update(self, params):
        self.updates += 1
        t = self.updates
        weight = 1.0 / (t + 1) if self.decay == "polyak" else \
            1.0 - min(self.decay, (1.0 + t) / (10.0 + t))
        # avg += weight * (w - avg): three passes, no temporary
        np.subtract(params, self.average, out=self._scratch)
        self._scratch *= self.average.dtype.type(weight)
        self.average += self._scratch

    def state_dict(self):
        return {"decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state, average):
        if state.get("decay") != self.decay:
            raise ValueError(f"the checkpoint averages with decay {state.get('decay')!r}, this "
                             f"run with {self.decay!r}")
        self.average = np.array(average, dtype=self.average.dtype)
        self.updates = int(state["updates"])

    def __repr__(self):
        return f"WeightAveraging({self.decay!r})"


class _Progress:
    """Where a run is: the epoch under way (1-based), batches done in it and its running sums.
    A checkpoint stores exactly this, so training continues from the next batch."""

    def __init__(self, epoch=1, batch=0):
        self.epoch, self.batch = epoch, batch
        self.loss_sum = 0.0
        self.correct = 0
        self.seen = 0
        self.grad_norm_sum = 0.0
        self.grad_norms = 0
        self.skipped = 0
        self.seconds = 0.0

    def state_dict(self):
        return dict(vars(self))

    @classmethod
    def from_state(cls, state):
        progress = cls()
        for key, value in state.items():
            if not hasattr(progress, key):
                raise ValueError(f"unknown progress entry {key!r} in the checkpoint")
            setattr(progress, key, value)
        return progress


CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
METRICS = "metrics.jsonl"
ON_NONFINITE = ("stop", "skip")


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
        Appends one JSON line per epoch to this file (default with ``checkpoint_dir``:
        ``checkpoint_dir/metrics.jsonl``, started afresh unless resuming).
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
    checkpoint_dir : str, optional
        Writes ``checkpoint.safetensors`` there after every epoch (and every
        ``checkpoint_every`` updates, and when interrupted with Ctrl-C), ``best.safetensors``
        (a model file of the best epoch by the early-stopping metric, or ``monitor``) and
        ``metrics.jsonl``. ``fit(..., resume=True)`` continues from the checkpoint.
    checkpoint_every : int, optional
        Also checkpoint after every this many updates (mid-epoch).
    early_stopping : EarlyStopping, optional
    averaging : WeightAveraging, optional
        Keeps averaged weights (EMA or Polyak); evaluation uses them.
    monitors : bool
        Per epoch, record the gradient norm, the update/weight ratio of every layer (on the
        epoch's last update), and activation statistics (mean, std, dead ReLU and saturated
        sigmoid/tanh fractions) on a fixed batch of up to 256 samples.
    on_nonfinite : {"stop", "skip"}
        What a NaN/Inf loss or gradient does: raise :class:`NonFiniteError` (default), or skip
        that update and multiply the learning rates by ``nonfinite_lr_factor`` (at most
        ``max_skipped_steps`` times in a row, then stop). Either way the weights are untouched.
    deterministic : bool
        Reductions in fixed chunks, so the weights are bitwise the same for any thread count
        (:func:`fastnet.set_deterministic`, for the duration of :meth:`fit`).
    distributed : {None, "mpi"}
        ``"mpi"``: data-parallel training under ``mpirun -n P`` (see
        :mod:`fastnet.distributed`): every rank takes its shard of each global batch of
        ``batch_size`` samples, gradients are summed with one allreduce per update, batch-norm
        running statistics are averaged over the ranks before every evaluation and checkpoint,
        and only rank 0 writes files, prints and shows progress. Checkpoints need a directory
        every rank can read. Ctrl-C is not deferred under MPI (it ends the job).

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
                 teacher=None, checkpoint_dir=None, checkpoint_every=None, early_stopping=None,
                 averaging=None, monitors=True, on_nonfinite="stop", nonfinite_lr_factor=0.5,
                 max_skipped_steps=10, deterministic=False, distributed=None):
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
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        if metrics_path is None and self.checkpoint_dir is not None:
            metrics_path = os.path.join(self.checkpoint_dir, METRICS)
        self.metrics_path = metrics_path
        self.schedule = schedule
        self.monitor = monitor
        self.transform = transform
        self.sampler = sampler
        self.prefetch = prefetch
        if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or
                                             not isinstance(checkpoint_every, int) or
                                             checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be a positive number of updates, got "
                             f"{checkpoint_every!r}")
        if checkpoint_every is not None and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every needs a checkpoint_dir")
        self.checkpoint_every = checkpoint_every
        if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be a fastnet.EarlyStopping, got "
                            f"{early_stopping!r}")
        self.early_stopping = early_stopping
        if averaging is not None and not isinstance(averaging, WeightAveraging):
            raise TypeError(f"averaging must be a fastnet.WeightAveraging, got {averaging!r}")
        self.averaging = averaging
        self.monitors = bool(monitors)
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
        if not (isinstance(nonfinite_lr_factor, float) and 0 < nonfinite_lr_factor < 1):
            raise ValueError(f"nonfinite_lr_factor must be a float in (0, 1), got "
                             f"{nonfinite_lr_factor!r}")
        self.on_nonfinite = on_nonfinite
        self.nonfinite_lr_factor = nonfinite_lr_factor
        self.max_skipped_steps = int(max_skipped_steps)
        self.deterministic = bool(deterministic)
        if distributed not in (None, "mpi"):
            raise ValueError(f"distributed must be None or 'mpi', got {distributed!r}")
        if distributed == "mpi":
            from fastnet.distributed import _import_mpi

            _import_mpi()  # now, not at fit: says what to install
        self.distributed = distributed
        self._backend = None
        self.rank = 0  # this process's rank in the last data-parallel fit
        self._last_correct = None
        self.history = History()
        self._best = None  # (params, buffers) copies of the best epoch's evaluated weights
        self._tracker = None  # early_stopping, or a tracker of the best epoch for best.safetensors
        self._stopped_early = False
        self._skipped_in_row = 0

    # ------------------------------------------------------------------ checks

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

    # ------------------------------------------------------------------ the loop

    def fit(self, train, val=None, epochs=10, batch_size=64, shuffle=True, resume=False):
        """Trains for ``epochs`` passes over ``train``; evaluates on ``val`` after each.

        Parameters
        ----------
        train, val : Dataset or (x, y)
        epochs : int
            The epoch to end at (counting the epochs of a resumed checkpoint).
        batch_size : int
        shuffle : bool
        resume : bool
            Continue from ``checkpoint_dir/checkpoint.safetensors`` if it exists (the model,
            optimizer, schedule, averaging, early stopping, history and the position in the
            data are restored; the run then ends bitwise as the uninterrupted run would, with
            the same thread count); start afresh if there is none.

        Returns
        -------
        History
            Every epoch's record, those before a resume included.

        Raises
        ------
        NonFiniteError
            A NaN/Inf loss or gradient (with ``on_nonfinite="stop"``).
        KeyboardInterrupt
            After writing a checkpoint of the last completed update (with ``checkpoint_dir``).
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs the Trainer's checkpoint_dir")
        train = self._check_data(train, "train")
        val = self._check_data(val, "val")
        self._run = {"batch_size": batch_size, "shuffle": bool(shuffle), "epochs": epochs,
                     "data": checkpoint.fingerprint(train.x, train.y)}
        if self.distributed is not None:
            from fastnet.distributed import make_backend

            self._backend = make_backend(self.distributed, self.model, self.optimizer,
                                         deterministic=self.deterministic)
            self.rank = self._backend.rank
        try:
            with self._backend.guard() if self._backend else contextlib.nullcontext():
                return self._fit(train, val, epochs, resume)
        finally:
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    @property
    def is_root(self):
        """Whether this process writes files and prints (always, without MPI)."""
        return self.rank == 0

    def _fit(self, train, val, epochs, resume):
        if self.checkpoint_dir is not None and self.is_root:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
        progress = None
        if resume and os.path.exists(self._path(CHECKPOINT)):
            self._tracker = self._new_tracker(val)
            progress = self._load_checkpoint(self._path(CHECKPOINT))
        else:
            self.history = History()
            self._best = None
            self._stopped_early = False
            self._tracker = self._new_tracker(val)
            if self.averaging is not None:
                self.averaging.start(self.model._core.param_arena())
            if self.metrics_path and self.checkpoint_dir is not None and self.is_root:
                open(self.metrics_path, "w").close()
        if progress is None:
            progress = _Progress(epoch=len(self.history) + 1)
        self._prepare_optimizer()
        previous_deterministic = _set_deterministic(self.deterministic)
        try:
            self._train(train, val, epochs, progress)
        finally:
            _set_deterministic(previous_deterministic)
        if self.early_stopping is not None and self.early_stopping.restore_best and \
                self._best is not None:
            self._load_arenas(*self._best)
        return self.history

    def _train(self, train, val, epochs, progress):
        from tqdm.auto import tqdm

        x_all = np.ascontiguousarray(train.x, dtype=self.model.dtype)
        batch_size, shuffle = self._run["batch_size"], self._run["shuffle"]
        per_epoch = self._batches_per_epoch(len(train), batch_size)
        done = (progress.epoch - 1) * per_epoch + progress.batch
        bar = tqdm(total=max(epochs * per_epoch, done), initial=done, unit="batch",
                   disable=not (self.progress and self.is_root), dynamic_ncols=True)
        self._monitor_x = None
        if self.monitors:
            source = val if val is not None else train
            self._monitor_x = np.ascontiguousarray(source.x[:256], dtype=self.model.dtype)
        # The C step counts argmax hits for the losses over classes; for the others the training
        # accuracy is left out rather than computed in a second pass.
        counts_hits = isinstance(self.loss, (CrossEntropyLoss, DistillationLoss))
        self.model.train()
        interrupt = _InterruptGuard(enabled=self._backend is None)
        try:
            while progress.epoch <= epochs and not self._stopped_early:
                started = time.perf_counter()
                batches = _peekable(self._batches(train, x_all, progress.epoch, batch_size,
                                                  shuffle, start=progress.batch))
                before = None
                for xb, yb in batches:
                    last = batches.exhausted()
                    if last and self.monitors:
                        before = self.model._core.param_arena().copy()
                    loss = self._step(xb, yb, progress)
                    progress.batch += 1
                    bar.update(1)
                    if loss is None:  # skipped
                        continue
                    progress.loss_sum += loss * len(xb)
                    if counts_hits:
                        progress.correct += self._last_correct
                    progress.seen += len(xb)
                    norm = self.model._core.last_grad_norm
                    if norm >= 0:
                        progress.grad_norm_sum += norm
                        progress.grad_norms += 1
                    if self.averaging is not None:
                        self.averaging.update(self.model._core.param_arena())
                    if self.schedule is not None and self.schedule.interval == "step":
                        self.schedule.step()
                    if self.checkpoint_every and \
                            self.model._core.optimizer_steps % self.checkpoint_every == 0 and \
                            not last:
                        progress.seconds += time.perf_counter() - started
                        started = time.perf_counter()
                        self._save_checkpoint(progress)
                    if interrupt.requested:
                        progress.seconds += time.perf_counter() - started
                        raise KeyboardInterrupt
                progress.seconds += time.perf_counter() - started
                record = self._end_epoch(progress, val, counts_hits, before)
                bar.set_description(f"epoch {record['epoch']}/{epochs}")
                bar.set_postfix({k: round(v, 4) for k, v in record.items()
                                 if k in ("train_loss", "val_loss", "val_accuracy", "grad_norm")
                                 and v is not None})
                progress.__init__(epoch=progress.epoch + 1)
                if self.checkpoint_dir is not None:
                    self._save_checkpoint(progress)
                if interrupt.requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            # Only raised at a point where the model, the optimizer and `progress` agree (the
            # guard defers Ctrl-C to the end of the update under way).
            if self.checkpoint_dir is not None and interrupt.requested:  # (never under MPI)
                self._save_checkpoint(progress)
                print(f"\ninterrupted: checkpoint of epoch {progress.epoch}, batch "
                      f"{progress.batch} written to {self._path(CHECKPOINT)}; continue with "
                      f"resume=True (fastnet train --resume)", file=sys.stderr)
            raise
        finally:
            interrupt.close()
            bar.close()

    def _step(self, xb, yb, progress):
        """One update; the batch's loss, or None when a non-finite value made it skip."""
        try:
            if self._backend is None:
                loss = self.model.train_step(xb, self._targets(xb, yb), self.loss,
                                             self.optimizer)
                self._last_correct = self.model.last_train_correct
            else:  # this rank's shard; the loss and hits are the global batch's
                start, stop = self._backend.shard_bounds(len(xb))
                loss, self._last_correct = self._backend.train_step(
                    self.model, xb[start:stop], self._targets(xb[start:stop], yb[start:stop]),
                    self.loss, self.optimizer, len(xb))
            self._skipped_in_row = 0
            return loss
        except FloatingPointError as error:
            where = (f"epoch {progress.epoch}, batch {progress.batch + 1} (update "
                     f"{self.model._core.optimizer_steps + 1})")
            kept = (f"; the last checkpoint ({self._path(CHECKPOINT)}) is intact"
                    if self.checkpoint_dir is not None else "")
            if self.on_nonfinite == "stop":
                raise _on_all_ranks(NonFiniteError(f"{where}: {error}{kept}")) from None
            progress.skipped += 1
            self._skipped_in_row += 1
            if self._skipped_in_row > self.max_skipped_steps:
                raise _on_all_ranks(NonFiniteError(
                    f"{where}: {error}; {self._skipped_in_row} updates in a row skipped, giving "
                    f"up{kept}")) from None
            for group in self.optimizer.param_groups:
                group["lr"] *= self.nonfinite_lr_factor
                if "initial_lr" in group:
                    group["initial_lr"] *= self.nonfinite_lr_factor
            if self.is_root:
                print(f"{where}: {error}; update skipped, learning rate lowered to "
                      f"{self._lr():.3g}", file=sys.stderr)
            return None

    def _end_epoch(self, progress, val, counts_hits, before):
        seen = max(progress.seen, 1)
        record = {
            "epoch": progress.epoch,
            "train_loss": progress.loss_sum / seen if progress.seen else None,
            "train_accuracy": progress.correct / seen if counts_hits and progress.seen else None,
            "lr": self._lr(),
            "grad_norm": (progress.grad_norm_sum / progress.grad_norms
                          if progress.grad_norms else None),
            "seconds": progress.seconds,
        }
        if progress.skipped:
            record["skipped_updates"] = progress.skipped
        if self._backend is not None:
            self._backend.sync_buffers()
        if val is not None:
            metrics = self.evaluate(val)
            record["val_loss"], record["val_accuracy"] = metrics["loss"], metrics["accuracy"]
        if self.monitors:
            record.update(self._monitor_record(before))
        self._track_best(record)
        self._step_schedule_after_epoch(record)
        self.history.append(record)
        self._write_metrics(record)
        return record

    def _new_tracker(self, val):
        """What decides the best epoch: the early stopping (reset), or the ``monitor`` metric
        (the training loss without validation data) for best.safetensors."""
        if self.early_stopping is not None:
            if self.early_stopping.monitor.startswith("val_") and val is None:
                raise ValueError(f"early stopping follows {self.early_stopping.monitor!r}: pass "
                                 f"validation data to fit")
            self.early_stopping.best = self.early_stopping.best_epoch = None
            self.early_stopping.bad_epochs = 0
            return self.early_stopping
        monitor = self.monitor if val is not None or not self.monitor.startswith("val_") \
            else "train_loss"
        return EarlyStopping(monitor=monitor, patience=1 << 30)

    def _track_best(self, record):
        """Early stopping's bookkeeping, and best.safetensors when checkpointing."""
        tracker = self._tracker
        if tracker.monitor not in record:
            raise ValueError(f"the best epoch is chosen by {tracker.monitor!r}, which the epoch "
                             f"record does not have (it has {sorted(record)})")
        if tracker.update(record["epoch"], record[tracker.monitor]):
            with self._evaluated_weights():
                if self.early_stopping is not None:
                    self._best = (self.model._core.param_arena().copy(),
                                  self.model._core.buffer_arena().copy())
                if self.checkpoint_dir is not None and self.is_root:
                    from fastnet.io import save

                    save(self.model, self._path(BEST))
        if self.early_stopping is not None and self.early_stopping.should_stop:
            record["stopped_early"] = True
            self._stopped_early = True

    # ------------------------------------------------------------------ monitors

    def _monitor_record(self, before):
        """Update/weight ratios per layer (from the arena before the epoch's last update) and
        activation statistics of the monitoring batch, in eval mode."""
        out = {}
        if before is not None:
            after = self.model._core.param_arena()
            ratios = {}
            for layer, spans in self._layer_spans().items():
                delta = sum(float(np.sum((after[a:b] - before[a:b]) ** 2)) for a, b in spans)
                weight = sum(float(np.sum(before[a:b].astype(np.float64) ** 2)) for a, b in spans)
                ratios[layer] = (delta / weight) ** 0.5 if weight > 0 else None
            out["update_ratio"] = ratios
        if self._monitor_x is not None and len(self._monitor_x):
            from fastnet.checks import activation_stats

            stats = activation_stats(self.model, self._monitor_x, training=False)
            out["activation_mean"] = {s["layer"]: s["mean"] for s in stats}
            out["activation_std"] = {s["layer"]: s["std"] for s in stats}
            dead = {s["layer"]: s["dead_fraction"] for s in stats
                    if s.get("dead_fraction") is not None}
            saturated = {s["layer"]: s["saturated_fraction"] for s in stats
                         if s.get("saturated_fraction") is not None}
            if dead:
                out["dead_fraction"] = dead
            if saturated:
                out["saturated_fraction"] = saturated
        return out

    def _layer_spans(self):
        """{layer name: [(begin, end) in the parameter arena]} of every trainable tensor."""
        spans = {}
        for name, shape, offset, is_buffer, _ in self.model._core.tensor_info():
            if not is_buffer:
                size = int(np.prod(shape, dtype=np.int64))
                spans.setdefault(name.rsplit(".", 1)[0], []).append((offset, offset + size))
        return spans

    # ------------------------------------------------------------------ batches

    def _batches_per_epoch(self, n, batch_size):
        if self.sampler is not None and hasattr(self.sampler, "__len__"):
            n = len(self.sampler)
        return -(-n // batch_size)

    def _batches(self, train, x_all, epoch, batch_size, shuffle, start=0):
        """The epoch's (x, y) batches from batch ``start`` on: a seeded shuffle
        (``default_rng([seed, epoch])``) sliced in order; through a background
        :class:`fastnet.augment.BatchLoader` when batches are augmented or drawn by a sampler.
        Batch i depends only on (seed, epoch, i), so a resumed epoch sees the same batches."""
        if self.transform is None and self.sampler is None:
            n = len(train)
            # One gather per epoch, then contiguous slices: no copy per batch.
            if shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(n)
                x_epoch, y_epoch = x_all[order], train.y[order]
            else:
                x_epoch, y_epoch = x_all, train.y
            for begin in range(start * batch_size, n, batch_size):
                yield x_epoch[begin:begin + batch_size], y_epoch[begin:begin + batch_size]
            return
        from fastnet.augment import BatchLoader

        loader = BatchLoader(Dataset(x_all, train.y, num_classes=train.num_classes), batch_size,
                             shuffle=shuffle, seed=self.seed, transform=self.transform,
                             sampler=self.sampler, prefetch=self.prefetch)
        with loader.epoch(epoch, start=start) as batches:
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

    def _prepare_optimizer(self):
        """Pushes the optimizer's configuration to C before the first update."""
        if self.optimizer._needs_configure():
            self.optimizer._configure()

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, data, batch_size=512):
        """``{"loss": mean loss, "accuracy": fraction correct}`` of the model on ``data`` (with
        the averaged weights when the trainer averages)."""
        data = self._check_data(data, "data")
        loss_sum, correct = 0.0, 0
        with self.model.mode(training=False), self._evaluated_weights():
            for start in range(0, len(data), batch_size):
                xb = data.x[start:start + batch_size]
                yb = data.y[start:start + batch_size]
                outputs = self.model(xb)
                loss_sum += self.loss(outputs, self._targets(xb, yb)) * len(xb)
                correct += int(np.count_nonzero(outputs.argmax(axis=1) == yb))
        return {"loss": loss_sum / len(data), "accuracy": correct / len(data)}

    @contextlib.contextmanager
    def _evaluated_weights(self):
        """The averaged weights swapped into the model for the block, if averaging."""
        if self.averaging is None or self.averaging.average is None:
            yield
            return
        params = self.model._core.param_arena()
        live = params.copy()
        params[...] = self.averaging.average
        try:
            yield
        finally:
            params[...] = live

    def apply_averaged_weights(self):
        """Copies the averaged weights into the model (for saving or predicting with them)."""
        if self.averaging is None or self.averaging.average is None:
            raise ValueError("this trainer keeps no averaged weights (averaging=None or no fit)")
        self.model._core.param_arena()[...] = self.averaging.average

    def _load_arenas(self, params, buffers):
        self.model._core.param_arena()[...] = params
        self.model._core.buffer_arena()[...] = buffers
        if self.averaging is not None and self.averaging.average is not None:
            self.averaging.average[...] = params

    def _write_metrics(self, record):
        if self.metrics_path and self.is_root:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ checkpoints

    def _path(self, name):
        return os.path.join(self.checkpoint_dir, name) if self.checkpoint_dir else None

    def save_checkpoint(self, path):
        """Writes a checkpoint of the state after the last completed epoch to ``path``."""
        self._save_checkpoint(_Progress(epoch=len(self.history) + 1), path)

    def _save_checkpoint(self, progress, path=None):
        import fastnet

        if self._backend is not None:  # every rank calls this; rank 0 writes
            self._backend.sync_buffers()
            if not self.is_root:
                return
        core = self.model._core
        tensors = dict(self.model.state_dict())
        optimizer_state = self.optimizer.state_dict()
        for i, slot in enumerate(optimizer_state.pop("state")):
            tensors[f"optimizer.state.{i}"] = slot
        trainer = {
            "format": checkpoint.FORMAT_VERSION,
            "progress": progress.state_dict(),
            "history": self.history.epochs,
            "run": self._run,
            "seed": self.seed,
            "rng_step": int(core.rng_step),
            "threads": fastnet.get_num_threads(),
            "deterministic": self.deterministic,
            "metrics_bytes": (os.path.getsize(self.metrics_path)
                              if self.metrics_path and os.path.exists(self.metrics_path) else 0),
            "stopped_early": self._stopped_early,
        }
        if self.schedule is not None:
            trainer["schedule"] = self.schedule.state_dict()
        trainer["best_tracker"] = self._tracker.state_dict()
        if self.averaging is not None and self.averaging.average is not None:
            trainer["averaging"] = self.averaging.state_dict()
            tensors["averaging.params"] = self.averaging.average
        if self._best is not None:
            tensors["best.params"], tensors["best.buffers"] = self._best
        checkpoint.write(path or self._path(CHECKPOINT), tensors,
                         {"format": checkpoint.FORMAT, "fastnet_version": fastnet.__version__,
                          "spec": self.model.spec(), "optimizer": optimizer_state,
                          "trainer": trainer})

    def _load_checkpoint(self, path):
        """Restores everything from a checkpoint (checked first: nothing changes if it does not
        fit this model, optimizer and data); the progress to continue from."""
        import fastnet

        tensors, meta = checkpoint.read(path)
        if meta.get("format") != checkpoint.FORMAT or "trainer" not in meta:
            raise checkpoint.CheckpointError(f"{path} is not a fastnet training checkpoint")
        trainer = meta["trainer"]
        if meta.get("spec") != self.model.spec():
            raise checkpoint.CheckpointError(f"{path} was written for another model (its spec "
                                             f"differs from this model's)")
        saved_run = trainer.get("run", {})
        for key in ("batch_size", "shuffle", "data"):
            if saved_run.get(key) != self._run[key]:
                raise checkpoint.CheckpointError(
                    f"{path}: the run used {key}={saved_run.get(key)!r}, this one "
                    f"{self._run[key]!r}; resume with the same data and batch size")
        if trainer.get("seed") != self.seed:
            raise checkpoint.CheckpointError(f"{path}: the run used seed {trainer.get('seed')}, "
                                             f"this one {self.seed}")
        if (self.schedule is None) != ("schedule" not in trainer):
            raise checkpoint.CheckpointError(f"{path}: the run {'had' if 'schedule' in trainer else 'had no'} "
                                             f"learning-rate schedule; this one differs")
        if (self.averaging is None) != ("averaging" not in trainer):
            raise checkpoint.CheckpointError(f"{path}: weight averaging differs from the run's")
        if trainer.get("threads") != fastnet.get_num_threads() and not self.deterministic:
            print(f"warning: {path} was written with {trainer.get('threads')} threads, this run "
                  f"has {fastnet.get_num_threads()}: results can differ in the last bits (use "
                  f"deterministic=True for bitwise equality across thread counts)",
                  file=sys.stderr)
        state = {name: tensors[name] for name in self.model.state_dict()
                 if name in tensors}
        optimizer_state = dict(meta["optimizer"])
        optimizer_state["state"] = [tensors[f"optimizer.state.{i}"]
                                    for i in range(sum(1 for k in tensors
                                                       if k.startswith("optimizer.state.")))]
        # Everything that can refuse does so before anything changes.
        snapshot = self.model.state_dict()
        try:
            self.model.load_state_dict(state)
            self.optimizer.load_state_dict(optimizer_state)
            if self.schedule is not None:
                self.schedule.load_state_dict(trainer["schedule"])
            self._tracker.load_state_dict(trainer["best_tracker"])
            if self.averaging is not None:
                self.averaging.start(self.model._core.param_arena())
                self.averaging.load_state_dict(trainer["averaging"], tensors["averaging.params"])
        except (KeyError, ValueError, TypeError) as error:
            self.model.load_state_dict(snapshot)
            raise checkpoint.CheckpointError(f"{path}: {error}") from None
        self.model._core.rng_step = int(trainer["rng_step"])
        self.history = History()
        for record in trainer["history"]:
            self.history.append(record)
        self._best = ((tensors["best.params"], tensors["best.buffers"])
                      if "best.params" in tensors else None)
        self._stopped_early = bool(trainer.get("stopped_early"))
        if self.metrics_path and self.is_root:
            keep = int(trainer.get("metrics_bytes", 0))
            if os.path.exists(self.metrics_path) and os.path.getsize(self.metrics_path) > keep:
                with open(self.metrics_path, "r+b") as f:
                    f.truncate(keep)
        return _Progress.from_state(trainer["progress"])


class _peekable:
    """An iterator that can tell whether the item just returned was the last one."""

    _END = object()

    def __init__(self, iterable):
        self._it = iter(iterable)
        self._next = next(self._it, self._END)

    def __iter__(self):
        return self

    def __next__(self):
        if self._next is self._END:
            raise StopIteration
        item, self._next = self._next, next(self._it, self._END)
        return item

    def exhausted(self):
        return self._next is self._END


def _set_deterministic(flag):
    """Sets the C core's deterministic mode; the previous setting."""
    import fastnet

    setter = getattr(fastnet, "set_deterministic", None)
    if setter is None:
        if flag:
            raise NotImplementedError("deterministic mode is not available in this build")
        return False
    previous = fastnet.get_deterministic()
    setter(flag)
    return previous


class _InterruptGuard:
    """Defers Ctrl-C (SIGINT) to a point where the run's state is consistent: the first one sets
    ``requested`` and the loop stops after the update under way; a second one interrupts at
    once. Only in the main thread (where Python delivers signals); elsewhere it does nothing."""

    def __init__(self, enabled=True):
        self.requested = False
        self._previous = None
        if enabled and threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handle)
            except ValueError:  # not the main interpreter
                self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _on_all_ranks(error):
    """Marks an error that every rank of a data-parallel run raises at the same update (they
    all see the same global loss and gradients), so that it is not treated as one rank's
    failure that must end the job."""
    error.all_ranks = True
    return error
