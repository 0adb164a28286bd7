"""Image augmentation and a prefetching mini-batch loader.

Transforms act on a whole batch of images of shape (N, C, H, W) at once and
take their randomness from a :class:`numpy.random.Generator`:

* :class:`RandomCrop` -- zero-pad, then cut a window at a random offset per image.
* :class:`RandomHorizontalFlip` -- mirror a random subset of the images.
* :class:`GaussianNoise` -- add normal noise.
* :class:`Compose` -- apply several in turn.

Each is a callable ``transform(x, rng) -> new array`` that never modifies
``x``, and any function of that form can stand in for one.

:class:`BatchLoader` yields the ``(x_batch, y_batch)`` pairs of an epoch.
It gathers and transforms batches in a background thread and keeps up to
``prefetch`` of them ready in a bounded queue, so the training thread only
takes finished batches (the compiled training step releases the GIL, so both
run at once).  The batches depend only on ``(seed, epoch)``: batch ``i`` is
transformed with ``numpy.random.default_rng([seed, epoch, i])``, whatever the
timing of the thread.

Examples
--------
>>> import numpy as np
>>> from fastnet.data import Dataset
>>> images = np.random.default_rng(0).random((10, 1, 8, 8), dtype=np.float32)
>>> ds = Dataset(images, np.arange(10) % 2)
>>> augment = Compose([RandomCrop(8, padding=1), RandomHorizontalFlip(), GaussianNoise(0.05)])
>>> with BatchLoader(ds, batch_size=4, transform=augment) as loader:
...     shapes = [xb.shape for xb, yb in loader.epoch(1)]
>>> shapes
[(4, 1, 8, 8), (4, 1, 8, 8), (2, 1, 8, 8)]
"""

from __future__ import annotations

import functools
import queue
import threading
import weakref
from typing import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fastnet.data import _check_generator, _real, _require_int

__all__ = [
    "RandomCrop",
    "RandomHorizontalFlip",
    "GaussianNoise",
    "Compose",
    "BatchLoader",
    "BatchIterator",
]

# How often (seconds) a blocked worker or consumer wakes up to check whether it should stop.
_POLL_SECONDS = 0.05


# --------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------

def _check_images(x, who: str) -> np.ndarray:
    """Return ``x`` as an array after checking that it is a batch (N, C, H, W)."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(
            f"{who} needs a batch of images of shape (N, C, H, W), got shape {x.shape}; "
            f"reshape flat inputs first, e.g. x.reshape(-1, 1, 28, 28)")
    return x


def _pair(value, name: str, minimum: int) -> tuple:
    """An int, or a pair of ints, as a pair ``(height, width)``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (height, width), got {value!r}")
        return (_require_int(value[0], f"{name}[0]", minimum), _require_int(value[1], f"{name}[1]", minimum))
    value = _require_int(value, name, minimum)
    return (value, value)


class RandomCrop:
    """Cut a ``size`` window at a random position out of each zero-padded image.

    Every image is padded with ``padding`` zeros on all four sides, then a
    window of ``size`` is taken at an offset ``(top, left)`` drawn uniformly
    and independently per image, with ``0 <= top <= H + 2 * padding - height``
    and likewise for ``left``.  With ``size`` equal to the image size this
    shifts each image by up to ``padding`` pixels in each direction, the usual
    augmentation for small images such as CIFAR-10.

    The offsets come from ``rng.integers(0, H + 2 * padding - height + 1,
    size=N)`` and then the same for ``left``; the crop itself is one gather
    (no Python loop over images or pixels).

    Parameters
    ----------
    size : int or (int, int)
        Output height and width (one int: a square).
    padding : int, default 0
        Zeros added on each side before cropping.

    Raises
    ------
    TypeError, ValueError
        If ``size`` is not positive or ``padding`` is negative.  Calling it
        raises ``ValueError`` if the padded images are smaller than ``size``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    >>> crop = RandomCrop(3, padding=1)
    >>> out = crop(x, np.random.default_rng(2))
    >>> out.shape, out.dtype
    ((1, 1, 3, 3), dtype('float32'))
    >>> RandomCrop(2)(x, np.random.default_rng(0)).shape
    (1, 1, 2, 2)
    """

    def __init__(self, size, padding=0):
        self.size = _pair(size, "size", minimum=1)
        self.padding = _require_int(padding, "padding", minimum=0)

    def __call__(self, x, rng) -> np.ndarray:
        x = _check_images(x, "RandomCrop")
        rng = _check_generator(rng)
        n, channels, height, width = x.shape
        pad = self.padding
        out_height, out_width = self.size
        padded_height, padded_width = height + 2 * pad, width + 2 * pad
        if out_height > padded_height or out_width > padded_width:
            raise ValueError(
                f"RandomCrop size {self.size} is larger than the padded images "
                f"({padded_height}, {padded_width}) (images {height}x{width}, padding {pad})")
        if pad:
            padded = np.zeros((n, channels, padded_height, padded_width), dtype=x.dtype)
            padded[:, :, pad:pad + height, pad:pad + width] = x
        else:
            padded = x
        top = rng.integers(0, padded_height - out_height + 1, size=n)
        left = rng.integers(0, padded_width - out_width + 1, size=n)
        # A read-only view of every window, shape (N, C, rows, cols, out_height, out_width); indexing
        # it with one (top, left) per image copies out exactly the chosen windows, (N, C, oh, ow).
        windows = sliding_window_view(padded, (out_height, out_width), axis=(2, 3))
        return np.ascontiguousarray(windows[np.arange(n), :, top, left])

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left to right with probability ``p``.

    The images flipped are those with ``rng.random(N) < p``; each is reversed
    along the width axis.

    Parameters
    ----------
    p : float, default 0.5
        Probability of flipping an image, in ``[0, 1]``.

    Raises
    ------
    TypeError, ValueError
        If ``p`` is not a number in ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[[1.0, 2.0, 3.0]]]])  # one 1x3 image
    >>> RandomHorizontalFlip(p=1.0)(x, np.random.default_rng(0)).tolist()
    [[[[3.0, 2.0, 1.0]]]]
    >>> RandomHorizontalFlip(p=0.0)(x, np.random.default_rng(0)).tolist()
    [[[[1.0, 2.0, 3.0]]]]
    """

    def __init__(self, p=0.5):
        p = _real(p, "p")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x, rng) -> np.ndarray:
        x = _check_images(x, "RandomHorizontalFlip")
        rng = _check_generator(rng)
        flip = rng.random(x.shape[0]) < self.p
        out = np.array(x, copy=True)
        out[flip] = x[flip, :, :, ::-1]
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class GaussianNoise:
    """Add independent normal noise of standard deviation ``std`` to every value.

    The noise is ``std * rng.standard_normal(x.shape)``, drawn in float32 for
    float32 inputs and in float64 otherwise; the result keeps the dtype of
    ``x``.  Inputs of any shape with samples first are accepted.

    Parameters
    ----------
    std : float
        Standard deviation of the noise, ``>= 0`` (0 returns a copy).

    Raises
    ------
    TypeError, ValueError
        If ``std`` is not a finite number ``>= 0``.  Calling it raises
        ``TypeError`` for non-floating inputs.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((1000, 1, 4, 4), dtype=np.float32)
    >>> noisy = GaussianNoise(0.1)(x, np.random.default_rng(0))
    >>> noisy.dtype, round(float(noisy.std()), 2), float(x.max())
    (dtype('float32'), 0.1, 0.0)
    """

    def __init__(self, std):
        std = _real(std, "std")
        if std < 0:
            raise ValueError(f"std must be >= 0, got {std}")
        self.std = std

    def __call__(self, x, rng) -> np.ndarray:
        x = np.asarray(x)
        rng = _check_generator(rng)
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(
                f"GaussianNoise needs floating-point inputs, got dtype {x.dtype}; "
                f"convert them first, e.g. with fastnet.data.scale_inputs(x)")
        noise_dtype = np.float32 if x.dtype == np.float32 else np.float64
        noise = rng.standard_normal(x.shape, dtype=noise_dtype)
        noise *= noise_dtype(self.std)
        noise += x
        return noise.astype(x.dtype, copy=False)

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std})"


class Compose:
    """Apply several transforms in turn, all drawing from the same generator.

    Parameters
    ----------
    transforms : sequence of callables
        Each called as ``t(x, rng)`` and returning the new batch.

    Raises
    ------
    TypeError
        If ``transforms`` is not a sequence of callables.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[[1.0, 2.0]]]])
    >>> both = Compose([RandomHorizontalFlip(p=1.0), GaussianNoise(0.0)])
    >>> both(x, np.random.default_rng(0)).tolist(), x.tolist()
    ([[[[2.0, 1.0]]]], [[[[1.0, 2.0]]]])
    """

    def __init__(self, transforms: Sequence[Callable]):
        if isinstance(transforms, (str, bytes)) or not hasattr(transforms, "__iter__"):
            raise TypeError(f"transforms must be a sequence of callables, got {type(transforms).__name__}")
        transforms = list(transforms)
        for position, transform in enumerate(transforms):
            if not callable(transform):
                raise TypeError(
                    f"transforms[{position}] must be callable as t(x, rng), got {type(transform).__name__}")
        self.transforms = transforms

    def __call__(self, x, rng) -> np.ndarray:
        rng = _check_generator(rng)
        if not self.transforms:
            return np.array(x, copy=True)
        for transform in self.transforms:
            x = transform(x, rng)
        return x

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


# --------------------------------------------------------------------------
# The prefetching loader
# --------------------------------------------------------------------------

def _assemble(x, y, order, batch_size, transform, seed, epoch, index):
    """Gather (and transform) batch ``index`` of an epoch.  Runs in the worker thread."""
    try:
        chosen = order[index * batch_size:(index + 1) * batch_size]
        xb, yb = x[chosen], y[chosen]
        if transform is not None:
            xb = transform(xb, np.random.default_rng([seed, epoch, index]))
            shape = np.shape(xb)
            if not shape or shape[0] != chosen.shape[0]:
                raise ValueError(
                    f"transform {transform!r} returned shape {shape} for a batch of {chosen.shape[0]} "
                    f"samples; it must keep the samples on the first axis")
        return xb, yb
    except Exception as error:
        if hasattr(error, "add_note"):  # Python >= 3.11
            error.add_note(f"(while the BatchLoader assembled batch {index} of epoch {epoch})")
        raise


def _put(channel: queue.Queue, stop: threading.Event, item) -> bool:
    """Put ``item`` unless ``stop`` is set first; return whether it was put."""
    while not stop.is_set():
        try:
            channel.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            pass
    return False


def _produce(channel: queue.Queue, stop: threading.Event, make_batch, count: int) -> None:
    """Worker thread body: assemble batches in order and queue them, then an end marker.

    It holds no reference to the iterator, so an abandoned iterator can be
    collected (and its ``__del__`` stops this thread).
    """
    try:
        for index in range(count):
            if stop.is_set():
                return
            if not _put(channel, stop, ("batch", make_batch(index))):
                return
        final = ("end", None)
    except BaseException as error:  # handed to the consumer, which re-raises it
        final = ("error", error)
    _put(channel, stop, final)


class BatchIterator:
    """The ``(x_batch, y_batch)`` pairs of one epoch of a :class:`BatchLoader`.

    Made by :meth:`BatchLoader.epoch`; iterate over it once.  With
    ``prefetch >= 1`` a background thread assembles the batches; :meth:`close`
    (or leaving a ``with`` block, or dropping the iterator) stops that thread
    after the batch it is working on.  Iterating to the end stops it too.

    An exception raised while assembling a batch (for example by the
    transform) is raised here, by the ``next()`` that would have returned that
    batch; the iteration then ends.
    """

    def __init__(self, make_batch, count: int, prefetch: int):
        self._make_batch = make_batch
        self._count = count
        self._next_index = 0
        self._done = False
        self._thread = None
        if prefetch > 0 and count > 0:
            self._queue = queue.Queue(maxsize=prefetch)
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=_produce, args=(self._queue, self._stop, make_batch, count),
                name="fastnet-BatchLoader", daemon=True)
            self._thread.start()

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        if self._thread is None:
            if self._next_index >= self._count:
                self._done = True
                raise StopIteration
            index = self._next_index
            self._next_index += 1
            try:
                return self._make_batch(index)
            except BaseException:
                self._done = True
                raise
        kind, value = self._receive()
        if kind == "batch":
            self._next_index += 1
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def _receive(self):
        while True:
            try:
                return self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not self._thread.is_alive():
                    try:  # it may have queued its last item just before ending
                        return self._queue.get_nowait()
                    except queue.Empty:
                        raise RuntimeError("the BatchLoader worker thread ended without a result") from None

    def close(self) -> None:
        """Stop the background thread (after its current batch) and end the iteration."""
        self._done = True
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        while True:  # free the queue so a blocked put returns at once
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if thread is not threading.current_thread():
            thread.join()
        self._thread = None

    @property
    def running(self) -> bool:
        """Whether a background thread is still alive for this iterator."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # never raise from a finaliser (e.g. at interpreter exit)
            pass


class BatchLoader:
    """Mini-batches of a dataset, assembled ahead of time in a background thread.

    For each epoch the sample order is

    * drawn by ``sampler.sample(numpy.random.default_rng([seed, epoch]))`` if a
      ``sampler`` is given (``shuffle`` is then ignored);
    * otherwise ``numpy.random.default_rng([seed, epoch]).permutation(N)`` if
      ``shuffle``, the order :class:`fastnet.Trainer` uses, so without a sampler
      or transform the batches are exactly the Trainer's;
    * otherwise ``0, 1, ..., N - 1``;

    and batch ``i`` holds the consecutive slice ``order[i * batch_size:(i + 1) *
    batch_size]``.  The inputs of a batch are gathered and, with a
    ``transform``, passed through ``transform(x_batch,
    numpy.random.default_rng([seed, epoch, i]))``.  The batches therefore
    depend only on ``(seed, epoch)``, not on ``prefetch`` or thread timing.

    With ``prefetch >= 1`` a background thread does this work and keeps up to
    ``prefetch`` finished batches in a queue, so the consumer only takes them;
    ``prefetch=0`` assembles each batch in the consumer's thread when asked.

    Parameters
    ----------
    dataset : Dataset
        Anything with arrays ``x`` (inputs) and ``y`` (labels) of equal length.
    batch_size : int
        Samples per batch (>= 1).
    shuffle : bool, default True
        Permute the samples each epoch (when there is no sampler).
    seed : int, default 0
        Seeds the order and the transforms (>= 0).
    transform : callable, optional
        ``transform(x_batch, rng) -> new x_batch``, e.g. a :class:`Compose`.
        Labels are not transformed.
    sampler : object, optional
        Has ``sample(rng)`` returning the epoch's indices into the dataset,
        e.g. :class:`fastnet.data.ClassBalancedSampler`.
    prefetch : int, default 2
        Batches prepared ahead (>= 0; 0: no thread).
    drop_last : bool, default False
        Leave out a last batch smaller than ``batch_size``.

    Raises
    ------
    TypeError, ValueError
        If an argument has the wrong type or is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnet.data import Dataset
    >>> ds = Dataset(np.arange(10, dtype=np.float32).reshape(10, 1), np.arange(10))
    >>> loader = BatchLoader(ds, batch_size=4, shuffle=False)
    >>> [yb.tolist() for xb, yb in loader.epoch(1)]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    >>> len(loader), len(BatchLoader(ds, batch_size=4, drop_last=True))
    (3, 2)
    >>> order = np.random.default_rng([0, 1]).permutation(10)
    >>> first_x, first_y = next(iter(BatchLoader(ds, batch_size=4).epoch(1)))
    >>> first_y.tolist() == order[:4].tolist()
    True

    Stopping early: leave a ``with`` block (or call ``close()``) and the thread ends.

    >>> with BatchLoader(ds, batch_size=2) as loader:
    ...     for xb, yb in loader.epoch(3):
    ...         break
    """

    def __init__(self, dataset, batch_size, shuffle=True, seed=0, transform=None, sampler=None,
                 prefetch=2, drop_last=False):
        x = getattr(dataset, "x", None)
        y = getattr(dataset, "y", None)
        if x is None or y is None:
            raise TypeError(
                f"dataset must have arrays x and y (e.g. a fastnet.data.Dataset), "
                f"got {type(dataset).__name__}")
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"dataset.x and dataset.y must have the same number of samples, got shapes {x.shape} "
                f"and {y.shape}")
        for flag, name in ((shuffle, "shuffle"), (drop_last, "drop_last")):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        if transform is not None and not callable(transform):
            raise TypeError(
                f"transform must be callable as transform(x, rng), got {type(transform).__name__}")
        if sampler is not None and not callable(getattr(sampler, "sample", None)):
            raise TypeError(
                f"sampler must have a sample(rng) method returning indices (e.g. "
                f"fastnet.data.ClassBalancedSampler), got {type(sampler).__name__}")
        self.dataset = dataset
        self._x, self._y = x, y
        self.batch_size = _require_int(batch_size, "batch_size", minimum=1)
        self.seed = _require_int(seed, "seed", minimum=0)
        self.prefetch = _require_int(prefetch, "prefetch", minimum=0)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.sampler = sampler
        self._open = weakref.WeakSet()

    @property
    def num_samples(self) -> int:
        """Samples drawn per epoch: ``len(sampler)`` with a sampler that has a length, else N."""
        if self.sampler is not None and hasattr(self.sampler, "__len__"):
            return len(self.sampler)
        return self._y.shape[0]

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def order(self, epoch) -> np.ndarray:
        """The sample indices of ``epoch`` in the order they are batched.

        Parameters
        ----------
        epoch : int
            Epoch number (>= 0).

        Returns
        -------
        numpy.ndarray of numpy.intp
        """
        epoch = _require_int(epoch, "epoch", minimum=0)
        n = self._y.shape[0]
        if self.sampler is not None:
            order = np.asarray(self.sampler.sample(np.random.default_rng([self.seed, epoch])))
            if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer):
                raise ValueError(
                    f"sampler.sample(rng) must return a 1-D integer array of indices, got dtype "
                    f"{order.dtype} and shape {order.shape}")
            if order.size and (order.min() < 0 or order.max() >= n):
                raise ValueError(
                    f"sampler.sample(rng) returned indices in [{int(order.min())}, {int(order.max())}], "
                    f"outside the dataset's range [0, {n - 1}]")
            return order.astype(np.intp, copy=False)
        if self.shuffle:
            return np.random.default_rng([self.seed, epoch]).permutation(n).astype(np.intp, copy=False)
        return np.arange(n, dtype=np.intp)

    def epoch(self, epoch, start=0) -> BatchIterator:
        """Start epoch ``epoch`` and return an iterator over its ``(x_batch, y_batch)`` pairs.

        With ``prefetch >= 1`` the background thread starts at once, so the
        first batches can be ready before the iteration begins.

        Parameters
        ----------
        epoch : int
            Epoch number (>= 0); the same number gives the same batches.
        start : int, default 0
            Begin at this batch (a resumed epoch): the batches are those the
            whole epoch would give from there, none of the earlier ones is built.

        Returns
        -------
        BatchIterator
        """
        order = self.order(epoch)
        epoch = int(epoch)
        full, rest = divmod(order.shape[0], self.batch_size)
        count = full if self.drop_last or not rest else full + 1
        start = _require_int(start, "start", minimum=0)
        if start > count:
            raise ValueError(f"start must be at most the epoch's {count} batches, got {start}")
        assemble = functools.partial(_assemble, self._x, self._y, order, self.batch_size, self.transform,
                                     self.seed, epoch)
        make_batch = assemble if start == 0 else (lambda index: assemble(start + index))
        iterator = BatchIterator(make_batch, count - start, self.prefetch)
        self._open.add(iterator)
        return iterator

    def close(self) -> None:
        """Close every iterator of this loader that is still open (their threads end)."""
        for iterator in list(self._open):
            iterator.close()
        self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"BatchLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, seed={self.seed}, transform={self.transform!r}, "
                f"sampler={self.sampler!r}, prefetch={self.prefetch}, drop_last={self.drop_last})")
