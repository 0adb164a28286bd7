"""Model averaging: an ensemble predicts the mean of its members' class probabilities.

:class:`Ensemble` wraps trained models that take the same input and give the same number of
class scores; :func:`train_ensemble` trains K of them from different seeds. An ensemble is saved
as a directory: one model file per member and an index, ``ensemble.json``, which names them. The
index is the commit point: members are written to new files first, then the index is replaced
atomically (temporary file, fsync, rename), and only then are the previous members removed, so
a reader (or a crash) sees the old ensemble or the new one, never a mixture.

Examples
--------
>>> import fastnet as fn
>>> from fastnet import zoo
>>> from fastnet.ensemble import Ensemble, train_ensemble
>>> data = fn.load_digits()
>>> ens = train_ensemble(lambda seed: zoo.mlp(64, 10, [32], seed=seed), data, k=3, epochs=2,
...                      progress=False)
>>> ens.predict_proba(data.test.x).shape
(269, 10)
"""
import json
import numbers
import os
import secrets
import sys

import numpy as np

from fastnet.io import write_atomic

INDEX = "ensemble.json"
FORMAT = "fastnet.ensemble"
VERSION = 1


def softmax(logits):
    """Row-wise softmax in float64, with each row's maximum subtracted (no overflow)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class Ensemble:
    """Models whose averaged class probabilities make one prediction.

    Each member's logits go through a softmax (in float64, in eval mode) and the ensemble's
    probability is their mean: ``p(x) = (1/K) sum_k softmax(f_k(x))``.

    Parameters
    ----------
    models : sequence of fastnet.Sequential
        At least one; all take the same input shape and give the same number of outputs.
    metadata : dict, optional
        JSON-able information kept with the ensemble (``train_ensemble`` records the seeds) and
        saved in its index.

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> models = [fn.Sequential(fn.Linear(4, 3), seed=s) for s in range(3)]
    >>> ens = fn.ensemble.Ensemble(models)
    >>> x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    >>> p = ens.predict_proba(x)
    >>> p.shape, bool(np.allclose(p.sum(axis=1), 1.0))
    ((5, 3), True)
    >>> ens.predict(x).shape
    (5,)
    """

    def __init__(self, models, metadata=None):
        from fastnet.model import Sequential

        if isinstance(models, Sequential) or not hasattr(models, "__iter__"):
            raise TypeError(f"models must be a list of fastnet models, got "
                            f"{type(models).__name__}")
        models = list(models)
        if not models:
            raise ValueError("an Ensemble needs at least one model, got an empty list")
        for i, model in enumerate(models):
            if not isinstance(model, Sequential):
                raise TypeError(f"models[{i}] is not a fastnet model: {type(model).__name__}")
        first = models[0]
        outputs = first._core.output_size
        for i, model in enumerate(models[1:], 1):
            if model.input_shape != first.input_shape:
                raise ValueError(f"models[{i}] takes input {model.input_shape}, models[0] takes "
                                 f"{first.input_shape}: members must take the same input")
            if model._core.output_size != outputs:
                raise ValueError(f"models[{i}] has {model._core.output_size} outputs, models[0] "
                                 f"has {outputs}: members must give the same classes")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
        self.models = models
        self.metadata = dict(metadata or {})
        self.histories = None  # train_ensemble sets each member's History

    @property
    def input_shape(self):
        """The per-sample input shape every member takes."""
        return self.models[0].input_shape

    @property
    def num_classes(self):
        return self.models[0]._core.output_size

    def __len__(self):
        return len(self.models)

    def __iter__(self):
        return iter(self.models)

    def __getitem__(self, i):
        return self.models[i]

    def __repr__(self):
        return (f"Ensemble({len(self)} models, input_shape={self.input_shape}, "
                f"{self.num_classes} classes)")

    def _check_x(self, x):
        x = np.asarray(x)
        if x.ndim < 1 or tuple(x.shape[1:]) != self.input_shape:
            expected = ", ".join(["N"] + [str(d) for d in self.input_shape])
            raise ValueError(f"x must have shape ({expected}), got {x.shape}")
        if len(x) == 0:
            raise ValueError("x is empty (0 samples)")
        return x

    def member_proba(self, x, batch_size=1024):
        """Every member's probabilities, shape ``(K, N, classes)``, float64."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        x = self._check_x(x)
        out = np.empty((len(self.models), len(x), self.num_classes))
        for k, model in enumerate(self.models):
            with model.mode(training=False):
                for start in range(0, len(x), batch_size):
                    out[k, start:start + batch_size] = softmax(model(x[start:start + batch_size]))
        return out

    def predict_proba(self, x, batch_size=1024):
        """The mean of the members' softmax probabilities, shape ``(N, classes)``, float64.

        Parameters
        ----------
        x : ndarray, shape (N, *input_shape)
        batch_size : int
            Samples per forward pass.
        """
        return self.member_proba(x, batch_size).mean(axis=0)

    def predict(self, x, batch_size=1024):
        """The class of highest averaged probability for each sample, shape ``(N,)``."""
        return self.predict_proba(x, batch_size).argmax(axis=1)

    def evaluate(self, x, y=None, batch_size=1024):
        """Accuracy and loss of the ensemble, and each member's accuracy.

        Parameters
        ----------
        x : ndarray or fastnet.Dataset
            Inputs (then ``y`` holds the labels), or a Dataset.
        y : ndarray of int, shape (N,), optional

        Returns
        -------
        dict
            ``accuracy`` and ``loss`` (the mean negative log of the averaged probability of the
            true class), ``member_accuracy`` (a list) and ``mean_member_accuracy``.
        """
        from fastnet.data import Dataset

        if isinstance(x, Dataset):
            if y is not None:
                raise ValueError("evaluate takes a Dataset or (x, y), not both")
            x, y = x.x, x.y
        if y is None:
            raise ValueError("evaluate needs the labels y")
        y = np.asarray(y)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y must be a 1-D array of integer labels, got dtype {y.dtype} and "
                             f"shape {y.shape}")
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} samples and y has {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}), got values from "
                             f"{int(y.min())} to {int(y.max())}")
        members = self.member_proba(x, batch_size)
        proba = members.mean(axis=0)
        rows = np.arange(len(y))
        member_accuracy = [float(np.mean(m.argmax(axis=1) == y)) for m in members]
        return {
            "accuracy": float(np.mean(proba.argmax(axis=1) == y)),
            "loss": float(-np.mean(np.log(np.maximum(proba[rows, y], np.finfo(float).tiny)))),
            "member_accuracy": member_accuracy,
            "mean_member_accuracy": float(np.mean(member_accuracy)),
        }

    # ------------------------------------------------------------------ files

    def save(self, directory):
        """Writes the ensemble to ``directory`` (created if needed): one ``.safetensors`` file
        per member and the index ``ensemble.json``, replacing a previous ensemble there
        atomically. Files the index does not name are left alone.

        Examples
        --------
        >>> import os, tempfile, fastnet as fn
        >>> from fastnet.ensemble import Ensemble
        >>> ens = Ensemble([fn.Sequential(fn.Linear(4, 3), seed=s) for s in range(2)])
        >>> path = os.path.join(tempfile.mkdtemp(), "ens")
        >>> ens.save(path)
        >>> len(Ensemble.load(path))
        2
        """
        from fastnet.io import save

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        previous = []
        if os.path.exists(os.path.join(directory, INDEX)):
            try:
                previous = _read_index(directory)["members"]
            except ValueError:
                previous = []  # an unreadable index is replaced; its files are not ours to remove
        token = secrets.token_hex(4)
        names = [f"member-{i}-{token}.safetensors" for i in range(len(self.models))]
        written = []
        try:
            for name, model in zip(names, self.models):
                save(model, os.path.join(directory, name))
                written.append(name)
            index = {"format": FORMAT, "version": VERSION, "members": names,
                     "metadata": self.metadata}
            try:
                from fastnet import __version__

                index["fastnet_version"] = __version__
            except ImportError:
                pass
            write_atomic(os.path.join(directory, INDEX),
                         [(json.dumps(index, indent=2) + "\n").encode()])
        except BaseException:
            for name in written:
                _remove(os.path.join(directory, name))
            raise
        for name in previous:
            if name not in names:
                _remove(os.path.join(directory, name))

    @classmethod
    def load(cls, directory):
        """Reads an ensemble written by :meth:`save`."""
        from fastnet.io import load

        directory = os.fspath(directory)
        index = _read_index(directory)
        models = []
        for name in index["members"]:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{os.path.join(directory, INDEX)} names the member "
                                        f"{name!r}, which is missing")
            models.append(load(path))
        return cls(models, metadata=index.get("metadata") or {})


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _read_index(directory):
    path = os.path.join(directory, INDEX)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ensemble index {INDEX} in {directory}")
    with open(path, "rb") as f:
        raw = f.read(1 << 20)
        if f.read(1):
            raise ValueError(f"{path}: the index is larger than 1 MiB")
    try:
        index = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a valid ensemble index: {error}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastnet ensemble index (format {FORMAT!r} expected)")
    if index.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported ensemble index version {index.get('version')!r}")
    members = index.get("members")
    if not isinstance(members, list) or not members:
        raise ValueError(f"{path}: 'members' must be a non-empty list of file names")
    for name in members:
        if (not isinstance(name, str) or not name.endswith(".safetensors")
                or os.path.basename(name) != name or name in (".", "..")
                or "/" in name or "\\" in name or "\0" in name):
            raise ValueError(f"{path}: a member must be a .safetensors file name in the same "
                             f"directory, got {name!r}")
    if len(set(members)) != len(members):
        raise ValueError(f"{path}: a member is listed twice")
    if "metadata" in index and not isinstance(index["metadata"], dict):
        raise ValueError(f"{path}: 'metadata' must be a table")
    return index


def load(directory):
    """Reads an ensemble directory: :meth:`Ensemble.load`."""
    return Ensemble.load(directory)


def _split_for_training(data):
    from fastnet.data import Dataset, Splits

    if isinstance(data, Dataset):
        return data, None
    if isinstance(data, Splits):
        return data.train, data.val
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data
    raise TypeError(f"data must be a fastnet Dataset, Splits or a (train, val) pair, got "
                    f"{type(data).__name__}")


def train_ensemble(build_model, data, k=5, seeds=None, *, epochs=20, batch_size=64,
                   optimizer=None, loss=None, progress=None, **trainer_options):
    """Trains ``k`` models from different seeds and returns them as an :class:`Ensemble`.

    Parameters
    ----------
    build_model : callable
        ``build_model(seed) -> fastnet.Sequential``: the member for a seed (its initialisation
        seed).
    data : fastnet.Splits, (train, val) or fastnet.Dataset
        Members train on ``train`` and record ``val`` metrics each epoch; a Splits' test split
        is not used.
    k : int
        Members (default 5).
    seeds : sequence of int, optional
        One per member (default ``0 .. k-1``); each seeds its member's model and its Trainer's
        shuffles.
    epochs, batch_size : int
    optimizer : callable, optional
        ``optimizer(model) -> fastnet.optim.Optimizer`` (default Adam, lr 1e-3).
    loss : fastnet.Loss, optional
        Default cross-entropy.
    progress : bool, optional
        A progress bar over the members; by default when stderr is a terminal.
    **trainer_options
        Passed to :class:`fastnet.Trainer`; ``schedule`` is a function ``schedule(optimizer)``
        that builds each member's schedule over its own optimizer.

    Returns
    -------
    Ensemble
        With ``metadata["seeds"]`` and ``histories`` (each member's :class:`fastnet.History`).

    Examples
    --------
    >>> import fastnet as fn
    >>> from fastnet import zoo
    >>> from fastnet.ensemble import train_ensemble
    >>> data = fn.load_digits()
    >>> ens = train_ensemble(lambda seed: zoo.mlp(64, 10, [32], seed=seed), data, k=3,
    ...                      epochs=3, progress=False)
    >>> ens.metadata["seeds"], len(ens.histories)
    ([0, 1, 2], 3)
    """
    from tqdm.auto import tqdm

    import fastnet as fn
    from fastnet.model import Sequential

    if not callable(build_model):
        raise TypeError(f"build_model must be a function seed -> model, got {build_model!r}")
    if seeds is None:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        seeds = list(range(int(k)))
    else:
        seeds = list(seeds)
        if len(seeds) != k:
            raise ValueError(f"seeds must hold k={k!r} seeds, got {len(seeds)}: {seeds!r}")
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
                raise ValueError(f"seeds must be non-negative integers, got {seed!r}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must differ, got {seeds!r}")
        seeds = [int(s) for s in seeds]
    make_schedule = trainer_options.pop("schedule", None)
    if make_schedule is not None and not callable(make_schedule):
        raise TypeError(f"schedule must be a function optimizer -> schedule (each member has "
                        f"its own optimizer), got {make_schedule!r}")
    train, val = _split_for_training(data)
    make_optimizer = optimizer or (lambda model: fn.optim.Adam(model.parameters(), lr=1e-3))
    show = sys.stderr.isatty() if progress is None else bool(progress)
    models, histories = [], []
    with tqdm(total=len(seeds), disable=not show, unit="model", desc="ensemble",
              dynamic_ncols=True) as bar:
        for seed in seeds:
            model = build_model(seed)
            if not isinstance(model, Sequential):
                raise TypeError(f"build_model({seed}) returned {type(model).__name__}, not a "
                                f"fastnet model")
            opt = make_optimizer(model)
            if make_schedule is not None:
                trainer_options["schedule"] = make_schedule(opt)
            trainer = fn.Trainer(model, opt, loss, seed=seed, progress=False, **trainer_options)
            histories.append(trainer.fit(train, val, epochs=epochs, batch_size=batch_size))
            models.append(model)
            bar.update(1)
            last = histories[-1][-1]
            if last.get("val_accuracy") is not None:
                bar.set_postfix({"val_accuracy": round(last["val_accuracy"], 4)})
    ensemble = Ensemble(models, metadata={"seeds": seeds})
    ensemble.histories = histories
    return ensemble
