"""Datasets, data-file loaders and mini-batch iteration.

Everything here needs only numpy.  The main pieces are:

* :class:`Dataset` -- floating-point inputs ``x`` with integer labels ``y``.
* :class:`Splits` -- a ``(train, val, test)`` triple of datasets.
* :func:`load_data` -- the single entry point used by the command line; it
  dispatches to :func:`load_digits` (the bundled 8x8 digits),
  :func:`load_npz`, :func:`load_mnist_dir` or :func:`load_idx`.
* :func:`read_idx` -- a validating reader for the IDX format used by MNIST.
* :func:`iterate_batches` -- reproducible mini-batch index generation.
* :class:`Standardizer` and :class:`MinMaxScaler` -- per-feature (or
  per-channel) scaling whose statistics come from the training data only;
  :func:`scale_splits` fits one on ``splits.train`` and applies it to every
  split.
* :class:`ClassBalancedSampler` -- draws sample indices so that every class
  is equally likely, for imbalanced data (see also
  :class:`fastnet.augment.BatchLoader`).

Integer inputs are always converted to floats in ``[0, 1]`` when loaded
(see :func:`scale_inputs`); floating inputs are kept as they are.
"""

from __future__ import annotations

import gzip
import importlib.resources
import math
import os
import zlib
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np

__all__ = [
    "Dataset",
    "Splits",
    "scale_inputs",
    "load_digits",
    "load_npz",
    "read_idx",
    "load_idx",
    "load_mnist_dir",
    "load_data",
    "iterate_batches",
    "Standardizer",
    "MinMaxScaler",
    "scale_splits",
    "ClassBalancedSampler",
]

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_DIGITS_PIXEL_MAX = 16

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------
# Small validation helpers
# --------------------------------------------------------------------------

def _require_int(value, name: str, minimum: Optional[int] = None) -> int:
    """Return ``value`` as an ``int`` after checking its type and lower bound."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float_dtype(dtype, name: str = "dtype") -> np.dtype:
    """Resolve ``dtype`` and check that it is a floating-point type."""
    try:
        resolved = np.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"{name} must name a floating-point dtype such as 'float32', got {dtype!r}") from error
    if not np.issubdtype(resolved, np.floating):
        raise TypeError(f"{name} must be a floating-point dtype such as 'float32', got {resolved}")
    return resolved


def _fraction(value, name: str) -> float:
    """Check that ``value`` is a real number in ``[0, 1)``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(value).__name__} {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _check_labels(y: np.ndarray, name: str) -> None:
    """Check that ``y`` is a 1-D array of non-negative integers."""
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per sample), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(
            f"{name} must have an integer dtype, got {y.dtype}; "
            f"class labels must be whole numbers 0, 1, 2, ... (convert with y.astype(np.int64))")
    if y.size and y.min() < 0:
        raise ValueError(f"{name} must contain labels >= 0, found {int(y.min())}")


def _check_finite(x: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` if the floating array ``x`` holds NaN or Inf."""
    finite = np.isfinite(x)
    if not finite.all():
        bad = finite.size - int(np.count_nonzero(finite))
        first_sample = int(np.argwhere(~finite)[0][0]) if x.ndim else 0
        raise ValueError(
            f"{name} contains {bad} non-finite value(s) (NaN or Inf), "
            f"the first in sample {first_sample}")


def _check_same_length(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> None:
    if x.ndim == 0:
        raise ValueError(f"{x_name} must have at least one dimension (samples first), got a scalar")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{x_name} and {y_name} must have the same number of samples, "
            f"got {x.shape[0]} and {y.shape[0]}")


# --------------------------------------------------------------------------
# Dataset containers
# --------------------------------------------------------------------------

class Dataset:
    """Inputs with integer class labels.

    Parameters
    ----------
    x : array_like of floating dtype, shape (N, ...)
        Inputs, one sample per row along the first axis.  Integer data must be
        converted first, for example with :func:`scale_inputs`.
    y : array_like of integer dtype, shape (N,)
        Class labels, each ``>= 0``.
    num_classes : int, optional
        Number of classes.  Defaults to ``y.max() + 1``; give it explicitly when
        ``y`` may not contain the highest class (for example a small subset).

    Attributes
    ----------
    x : numpy.ndarray
        The inputs (not copied).
    y : numpy.ndarray
        The labels (not copied).
    num_classes : int
        Number of classes; subsets keep the value of the dataset they came from.
    num_features : int
        Number of input values per sample, ``prod(x.shape[1:])``.

    Raises
    ------
    TypeError
        If ``x`` is not floating or ``y`` is not integer.
    ValueError
        If the lengths differ, there are no samples, ``y`` is not 1-D, a label
        is negative, or ``num_classes`` is too small.

    Examples
    --------
    >>> import numpy as np
    >>> ds = Dataset(np.zeros((4, 3), dtype=np.float32), np.array([0, 2, 1, 2]))
    >>> len(ds), ds.num_classes, ds.num_features
    (4, 3, 3)
    >>> subset = ds[1:3]
    >>> subset.y.tolist(), subset.num_classes
    ([2, 1], 3)
    """

    def __init__(self, x, y, num_classes: Optional[int] = None):
        x = np.asarray(x)
        y = np.asarray(y)
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(
                f"x must have a floating-point dtype, got {x.dtype}; scale integer data to [0, 1] "
                f"first, e.g. fastnet.data.scale_inputs(x) or x.astype(np.float32) / x.max()")
        _check_labels(y, "y")
        _check_same_length(x, y, "x", "y")
        if y.shape[0] < 1:
            raise ValueError("a Dataset needs at least 1 sample, got 0")
        smallest_num_classes = int(y.max()) + 1
        if num_classes is None:
            num_classes = smallest_num_classes
        else:
            num_classes = _require_int(num_classes, "num_classes", minimum=1)
            if num_classes < smallest_num_classes:
                raise ValueError(
                    f"num_classes must be > the largest label ({smallest_num_classes - 1}), "
                    f"got {num_classes}")
        self._x = x
        self._y = y
        self._num_classes = num_classes

    @property
    def x(self) -> np.ndarray:
        """Inputs, shape (N, ...)."""
        return self._x

    @property
    def y(self) -> np.ndarray:
        """Integer labels, shape (N,)."""
        return self._y

    @property
    def num_classes(self) -> int:
        """Number of classes (``max label + 1`` unless given explicitly)."""
        return self._num_classes

    @property
    def num_features(self) -> int:
        """Number of input values per sample, ``prod(x.shape[1:])``."""
        return math.prod(self._x.shape[1:])

    def __len__(self) -> int:
        return self._y.shape[0]

    def __getitem__(self, index) -> "Dataset":
        """Return the subset selected by a slice, an integer index array or a boolean mask."""
        if isinstance(index, (int, np.integer)) and not isinstance(index, (bool, np.bool_)):
            raise TypeError(
                f"Dataset indexing selects a subset and needs a slice or an index array, got the "
                f"integer {index!r}; use ds[{index}:{index} + 1] or ds.x[{index}], ds.y[{index}]")
        if not isinstance(index, slice):
            index = np.asarray(index)
            if index.ndim != 1 or not (np.issubdtype(index.dtype, np.integer) or index.dtype == np.bool_):
                raise TypeError(
                    f"Dataset index must be a slice, a 1-D integer array or a 1-D boolean mask, "
                    f"got an array of dtype {index.dtype} and shape {index.shape}")
        return Dataset(self._x[index], self._y[index], num_classes=self._num_classes)

    def __repr__(self) -> str:
        return (f"Dataset(num_samples={len(self)}, input_shape={tuple(self._x.shape[1:])}, "
                f"x_dtype={self._x.dtype}, num_classes={self._num_classes})")


class Splits(NamedTuple):
    """Training, validation and test datasets.

    Attributes
    ----------
    train : Dataset
        Data to fit the model on.
    val : Dataset or None
        Data for model selection / early stopping, if any.
    test : Dataset or None
        Held-out data for the final evaluation, if any.

    Examples
    --------
    >>> import numpy as np
    >>> train = Dataset(np.zeros((2, 1)), np.array([0, 1]))
    >>> splits = Splits(train, None, None)
    >>> len(splits.train), splits.val is None
    (2, True)
    """

    train: Dataset
    val: Optional[Dataset] = None
    test: Optional[Dataset] = None


# --------------------------------------------------------------------------
# Input scaling
# --------------------------------------------------------------------------

def scale_inputs(x, max_value=None, dtype="float32") -> np.ndarray:
    """Convert integer inputs to floats in ``[0, 1]``.

    Each value is divided by ``max_value``, which defaults to the largest value
    the integer dtype can hold (255 for ``uint8``, 65535 for ``uint16``, ...).
    Pass the real maximum when the data uses a smaller range, e.g. 16 for the
    4-bit digits images.

    Parameters
    ----------
    x : array_like of integer or boolean dtype
        Non-negative integer inputs.
    max_value : int or float, optional
        The value mapped to 1.0; must be positive and at least ``x.max()``.
    dtype : str or numpy.dtype, default "float32"
        Floating-point dtype of the result.

    Returns
    -------
    numpy.ndarray
        ``x / max_value`` with the given dtype and the shape of ``x``.

    Raises
    ------
    TypeError
        If ``x`` is not an integer array or ``dtype`` is not floating.
    ValueError
        If ``x`` holds negative values or values above ``max_value``, or
        ``max_value`` is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> scale_inputs(np.array([0, 51, 255], dtype=np.uint8)).tolist()
    [0.0, 0.20000000298023224, 1.0]
    >>> scale_inputs(np.array([0, 8, 16]), max_value=16).tolist()
    [0.0, 0.5, 1.0]
    """
    x = np.asarray(x)
    out_dtype = _float_dtype(dtype)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
        if max_value is None:
            max_value = 1
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(
            f"x must have an integer dtype to be scaled, got {x.dtype}; floating data is used as given")
    if max_value is None:
        max_value = np.iinfo(x.dtype).max
    if isinstance(max_value, (bool, np.bool_)) or not isinstance(
            max_value, (int, float, np.integer, np.floating)):
        raise TypeError(f"max_value must be a number, got {type(max_value).__name__} {max_value!r}")
    if not max_value > 0 or not math.isfinite(max_value):
        raise ValueError(f"max_value must be a positive finite number, got {max_value}")
    if x.size:
        smallest, largest = x.min(), x.max()
        if smallest < 0:
            raise ValueError(
                f"x must be non-negative to be scaled to [0, 1], found {int(smallest)}; "
                f"convert signed data to floats yourself")
        if largest > max_value:
            raise ValueError(f"x holds {int(largest)}, which is above max_value={max_value}")
    result = x.astype(out_dtype)
    result /= out_dtype.type(max_value)
    return result


def _to_float_inputs(arrays: Sequence[np.ndarray], names: Sequence[str], dtype: np.dtype) -> list:
    """Convert the x arrays of several splits (training first) to ``dtype``.

    Integer arrays are scaled to ``[0, 1]``: ``uint8`` by 255, other integer
    types by the training array's maximum (so every split uses the same
    factor).  Floating arrays are only cast.  All arrays must be of the same
    kind (integer or floating) and the result must be finite.
    """
    is_integer = [a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer) for a in arrays]
    is_floating = [np.issubdtype(a.dtype, np.floating) for a in arrays]
    for array, name, integer, floating in zip(arrays, names, is_integer, is_floating):
        if not (integer or floating):
            raise TypeError(f"{name} must hold integer or floating-point numbers, got dtype {array.dtype}")
    if any(is_integer) and not all(is_integer):
        kinds = ", ".join(f"{name}: {array.dtype}" for name, array in zip(names, arrays))
        raise ValueError(f"the input arrays mix integer and floating dtypes ({kinds}); store them alike")

    converted = []
    if all(is_integer):
        train = arrays[0]
        if train.dtype == np.bool_:
            max_value = 1
        elif train.dtype == np.uint8:
            max_value = 255
        else:
            max_value = max(int(train.max()), 1) if train.size else 1
        for array, name in zip(arrays, names):
            if array.size and array.dtype != np.bool_ and array.min() < 0:
                raise ValueError(
                    f"{name} holds negative integer inputs (minimum {int(array.min())}), which cannot be "
                    f"scaled to [0, 1]; store the inputs as floats instead")
            converted.append(array.astype(dtype) / dtype.type(max_value))
    else:
        converted = [array.astype(dtype, copy=False) for array in arrays]
    for array, name in zip(converted, names):
        _check_finite(array, name)
    return converted


# --------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------

def _split_counts(num_samples: int, val_fraction: float, test_fraction: float) -> tuple:
    """Return ``(num_val, num_test)``; any positive fraction gets at least one sample."""
    num_val = max(1, round(val_fraction * num_samples)) if val_fraction > 0 else 0
    num_test = max(1, round(test_fraction * num_samples)) if test_fraction > 0 else 0
    if num_samples - num_val - num_test < 1:
        raise ValueError(
            f"cannot split {num_samples} samples with val_fraction={val_fraction} and "
            f"test_fraction={test_fraction}: no training samples would remain")
    return num_val, num_test


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return a random permutation in which every class is spread evenly.

    Each sample gets the position ``(rank within its class + 0.5) / class size``
    where ranks follow a random permutation; sorting by that position (ties
    kept in random order) interleaves the classes so that any prefix of the
    result holds each class in proportion to its size.
    """
    permutation = rng.permutation(labels.shape[0])
    permuted_labels = labels[permutation]
    _, class_ids, class_sizes = np.unique(permuted_labels, return_inverse=True, return_counts=True)
    class_ids = class_ids.reshape(-1)
    by_class = np.argsort(class_ids, kind="stable")
    class_starts = np.concatenate(([0], np.cumsum(class_sizes)[:-1]))
    rank_within_class = np.empty(labels.shape[0], dtype=np.int64)
    rank_within_class[by_class] = np.arange(labels.shape[0]) - np.repeat(class_starts, class_sizes)
    position = (rank_within_class + 0.5) / class_sizes[class_ids]
    return permutation[np.argsort(position, kind="stable")]


def _split_indices(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> tuple:
    """Return sorted ``(train, val, test)`` index arrays of a seeded stratified split."""
    num_val, num_test = _split_counts(labels.shape[0], val_fraction, test_fraction)
    order = _stratified_order(labels, np.random.default_rng(seed))
    val_idx = np.sort(order[:num_val])
    test_idx = np.sort(order[num_val:num_val + num_test])
    train_idx = np.sort(order[num_val + num_test:])
    return train_idx, val_idx, test_idx


def _make_splits(x_parts: Sequence[Optional[np.ndarray]], y_parts: Sequence[Optional[np.ndarray]]) -> Splits:
    """Build :class:`Splits` whose datasets share one ``num_classes``."""
    num_classes = 1 + max(int(y.max()) for y in y_parts if y is not None and y.size)
    datasets = []
    for x, y in zip(x_parts, y_parts):
        datasets.append(None if x is None else Dataset(x, y, num_classes=num_classes))
    return Splits(*datasets)


def _split_arrays(x: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float,
                  seed: int) -> Splits:
    train_idx, val_idx, test_idx = _split_indices(y, val_fraction, test_fraction, seed)
    x_parts = [x[train_idx], x[val_idx] if val_idx.size else None, x[test_idx] if test_idx.size else None]
    y_parts = [y[train_idx], y[val_idx] if val_idx.size else None, y[test_idx] if test_idx.size else None]
    return _make_splits(x_parts, y_parts)


# --------------------------------------------------------------------------
# Bundled digits
# --------------------------------------------------------------------------

def load_digits(dtype="float32") -> Splits:
    """Load the bundled 8x8 handwritten digits with their fixed split.

    The data is the UCI "Optical Recognition of Handwritten Digits" set
    (1,797 images of 8x8 pixels, 10 classes, licensed CC BY 4.0).  Pixel values
    0..16 are scaled to ``[0, 1]`` and each image is flattened to 64 features.
    The split is fixed and stratified: 1,259 training, 269 validation and 269
    test samples.  The data ships with the package, so no download is needed.

    Parameters
    ----------
    dtype : str or numpy.dtype, default "float32"
        Floating-point dtype of the inputs.

    Returns
    -------
    Splits
        ``train``, ``val`` and ``test`` datasets with inputs of shape (N, 64)
        and labels 0..9 (``int64``).

    Examples
    --------
    >>> splits = load_digits()
    >>> splits.train.x.shape, splits.train.num_classes
    ((1259, 64), 10)
    >>> len(splits.val), len(splits.test)
    (269, 269)
    """
    out_dtype = _float_dtype(dtype)
    resource = importlib.resources.files("fastnet.datasets").joinpath("digits.npz")
    with resource.open("rb") as file, np.load(file, allow_pickle=False) as archive:
        x = archive["x"]
        y = archive["y"].astype(np.int64)
        split_indices = [archive[name].astype(np.intp) for name in ("train_idx", "val_idx", "test_idx")]
    x = x.astype(out_dtype) / out_dtype.type(_DIGITS_PIXEL_MAX)
    return _make_splits([x[idx] for idx in split_indices], [y[idx] for idx in split_indices])


# --------------------------------------------------------------------------
# .npz files
# --------------------------------------------------------------------------

def _require_file(path, what: str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"{what} must be a file, but {path!r} is a directory or special file")
    return path


def load_npz(path, dtype="float32", val_fraction=0.1, test_fraction=0.1, seed=0) -> Splits:
    """Load a classification dataset from a numpy ``.npz`` archive.

    Two layouts are accepted:

    * ``x`` and ``y``: all the data.  It is split into train / validation /
      test with a seeded stratified permutation (each class is spread over the
      splits in proportion to its size) using ``val_fraction`` and
      ``test_fraction``.
    * ``x_train`` and ``y_train``, optionally with ``x_val``, ``y_val`` and
      ``x_test``, ``y_test``: the splits are used as given and the fractions and
      seed are ignored.

    Integer inputs are scaled to ``[0, 1]``: ``uint8`` by 255, other integer
    types by the maximum of the training inputs (the same factor for every
    split).  Floating inputs are used as given, only cast to ``dtype``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    dtype : str or numpy.dtype, default "float32"
        Floating-point dtype of the inputs.
    val_fraction, test_fraction : float, default 0.1
        Fractions of the samples for validation and test (single-array layout
        only).  0 means no such split (``None`` in the result).
    seed : int, default 0
        Seed of the split permutation.

    Returns
    -------
    Splits

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the archive cannot be read, lacks the expected arrays, the lengths
        of inputs and labels differ, the splits' feature shapes differ, or the
        inputs contain NaN or Inf.
    TypeError
        If labels are not integers.

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "toy.npz")
    >>> rng = np.random.default_rng(0)
    >>> np.savez(path, x=rng.integers(0, 256, (100, 5), dtype=np.uint8), y=np.arange(100) % 4)
    >>> splits = load_npz(path, val_fraction=0.2, test_fraction=0.1)
    >>> len(splits.train), len(splits.val), len(splits.test), splits.train.num_classes
    (70, 20, 10, 4)
    >>> bool(splits.train.x.max() <= 1.0)
    True
    """
    path = _require_file(path, "npz file")
    out_dtype = _float_dtype(dtype)
    val_fraction = _fraction(val_fraction, "val_fraction")
    test_fraction = _fraction(test_fraction, "test_fraction")
    seed = _require_int(seed, "seed", minimum=0)

    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zlib.error) as error:
        raise ValueError(f"cannot read {path!r} as a numpy .npz archive: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path!r} holds a single numpy array (.npy), expected a .npz archive with arrays "
            f"'x' and 'y' or 'x_train' and 'y_train'")
    try:
        names = set(archive.files)
        try:
            arrays = {name: archive[name] for name in names}
        except (OSError, ValueError, EOFError, zlib.error) as error:
            raise ValueError(f"cannot read the arrays of {path!r}: {error}") from error
    finally:
        archive.close()

    single_layout = {"x", "y"} <= names
    split_layout = {"x_train", "y_train"} <= names
    present = ", ".join(sorted(names)) or "no arrays"
    if single_layout and split_layout:
        raise ValueError(
            f"{path!r} holds both 'x', 'y' and 'x_train', 'y_train'; keep only one layout "
            f"(found: {present})")
    if not (single_layout or split_layout):
        raise ValueError(
            f"{path!r} must contain arrays 'x' and 'y', or 'x_train' and 'y_train' (optionally with "
            f"'x_val', 'y_val', 'x_test', 'y_test'); found: {present}")

    if single_layout:
        x, y = arrays["x"], arrays["y"]
        _check_labels(y, "y")
        _check_same_length(x, y, "x", "y")
        if y.shape[0] < 1:
            raise ValueError(f"{path!r} holds no samples: 'x' and 'y' are empty")
        (x,) = _to_float_inputs([x], ["x"], out_dtype)
        return _split_arrays(x, y.astype(np.int64), val_fraction, test_fraction, seed)

    split_names = ["train"]
    for split in ("val", "test"):
        has_x, has_y = f"x_{split}" in names, f"y_{split}" in names
        if has_x != has_y:
            missing = f"y_{split}" if has_x else f"x_{split}"
            raise ValueError(f"{path!r} has '{'x' if has_x else 'y'}_{split}' but not '{missing}'; "
                             f"give both or neither (found: {present})")
        if has_x:
            split_names.append(split)

    x_parts, y_parts = [], []
    for split in split_names:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        _check_labels(y, f"y_{split}")
        _check_same_length(x, y, f"x_{split}", f"y_{split}")
        if y.shape[0] < 1:
            raise ValueError(f"{path!r}: 'x_{split}' and 'y_{split}' hold no samples")
        if x_parts and x.shape[1:] != x_parts[0].shape[1:]:
            raise ValueError(
                f"x_{split} samples have shape {x.shape[1:]}, but x_train samples have shape "
                f"{x_parts[0].shape[1:]}")
        x_parts.append(x)
        y_parts.append(y.astype(np.int64))
    x_parts = _to_float_inputs(x_parts, [f"x_{split}" for split in split_names], out_dtype)
    by_split = dict(zip(split_names, zip(x_parts, y_parts)))
    ordered = [by_split.get(split, (None, None)) for split in ("train", "val", "test")]
    return _make_splits([pair[0] for pair in ordered], [pair[1] for pair in ordered])


# --------------------------------------------------------------------------
# IDX files (MNIST)
# --------------------------------------------------------------------------

def _read_maybe_gzipped(path: str) -> bytes:
    with open(path, "rb") as file:
        raw = file.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path!r} looks gzip-compressed but cannot be decompressed: {error}") from error


def read_idx(path) -> np.ndarray:
    """Read an array stored in the IDX format (the format of the MNIST files).

    An IDX file starts with the magic bytes ``0x00 0x00 <type code> <ndim>``,
    followed by ``ndim`` big-endian 32-bit sizes and the big-endian data in
    row-major order.  Type codes: ``0x08`` uint8, ``0x09`` int8, ``0x0B``
    int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64.  Files that
    start with the gzip magic bytes (such as the ``.gz`` downloads) are
    decompressed transparently; a file named ``.gz`` whose content is not
    compressed is read as is.

    Parameters
    ----------
    path : str or os.PathLike
        The IDX file, possibly gzip-compressed.

    Returns
    -------
    numpy.ndarray
        The array with the stored shape, in native byte order.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated, has a bad magic number or unknown type code,
        or its sizes disagree with the amount of data.

    Examples
    --------
    >>> import os, struct, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> with open(path, "wb") as file:
    ...     _ = file.write(bytes([0, 0, 0x08, 1]) + struct.pack(">i", 3) + bytes([7, 2, 1]))
    >>> read_idx(path).tolist()
    [7, 2, 1]
    """
    path = _require_file(path, "IDX file")
    data = _read_maybe_gzipped(path)
    if len(data) < 4:
        raise ValueError(f"{path!r} is truncated: an IDX file needs a 4-byte header, found {len(data)} bytes")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{path!r} is not an IDX file: the magic number must start with bytes 0x00 0x00, "
            f"got 0x{data[0]:02X} 0x{data[1]:02X}")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        known = ", ".join(f"0x{code:02X} ({dtype.name})" for code, dtype in _IDX_DTYPES.items())
        raise ValueError(f"{path!r} has unknown IDX type code 0x{type_code:02X}; expected one of {known}")
    if ndim < 1:
        raise ValueError(f"{path!r} declares 0 dimensions; an IDX array needs at least 1")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(
            f"{path!r} is truncated: a header with {ndim} dimension(s) takes {header_size} bytes, "
            f"the file has {len(data)}")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    if any(size < 0 for size in shape):
        raise ValueError(f"{path!r} declares negative sizes {shape}")
    dtype = _IDX_DTYPES[type_code]
    expected_bytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    found_bytes = len(data) - header_size
    if found_bytes != expected_bytes:
        problem = "is truncated" if found_bytes < expected_bytes else "has trailing bytes"
        raise ValueError(
            f"{path!r} {problem}: sizes {shape} of {dtype.name} need {expected_bytes} data bytes, "
            f"found {found_bytes}")
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _read_idx_pair(images_path, labels_path) -> tuple:
    """Read and check an IDX images file and its labels file."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels file {os.fspath(labels_path)!r} must hold integers, got {labels.dtype}")
    _check_labels(labels, f"labels in {os.fspath(labels_path)!r}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{os.fspath(images_path)!r} holds {images.shape[0]} images but "
            f"{os.fspath(labels_path)!r} holds {labels.shape[0]} labels")
    if labels.shape[0] < 1:
        raise ValueError(f"{os.fspath(images_path)!r} holds no images")
    return images.reshape(images.shape[0], -1), labels.astype(np.int64)


def load_idx(images_path, labels_path, dtype="float32") -> Dataset:
    """Load images and labels stored as a pair of IDX files.

    Images of shape (N, rows, cols) become rows of ``rows * cols`` features.
    ``uint8`` pixels are divided by 255; other integer pixels by their maximum;
    floating pixels are used as given.

    Parameters
    ----------
    images_path, labels_path : str or os.PathLike
        The images file (IDX, any dimensions, samples first) and the labels
        file (1-D IDX of an integer type).  Either may be gzip-compressed.
    dtype : str or numpy.dtype, default "float32"
        Floating-point dtype of the inputs.

    Returns
    -------
    Dataset

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        See :func:`read_idx`; also if the counts differ or labels are not integers.

    Examples
    --------
    >>> import os, struct, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> images, labels = os.path.join(folder, "images"), os.path.join(folder, "labels")
    >>> with open(images, "wb") as file:
    ...     _ = file.write(bytes([0, 0, 8, 3]) + struct.pack(">3i", 2, 2, 2) + bytes(range(0, 255, 32)))
    >>> with open(labels, "wb") as file:
    ...     _ = file.write(bytes([0, 0, 8, 1]) + struct.pack(">i", 2) + bytes([3, 1]))
    >>> ds = load_idx(images, labels)
    >>> ds.x.shape, ds.y.tolist()
    ((2, 4), [3, 1])
    """
    out_dtype = _float_dtype(dtype)
    images, labels = _read_idx_pair(images_path, labels_path)
    (x,) = _to_float_inputs([images], [f"images in {os.fspath(images_path)!r}"], out_dtype)
    return Dataset(x, labels)


def _find_mnist_file(directory: str, standard_name: str) -> Optional[str]:
    """Find ``standard_name`` in ``directory``, also as ``.gz`` or with ``.idx`` for ``-idx``."""
    dotted_name = standard_name.replace("-idx", ".idx")
    for name in (standard_name, standard_name + ".gz", dotted_name, dotted_name + ".gz"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def load_mnist_dir(directory, dtype="float32", val_fraction=0.1, seed=0) -> Splits:
    """Load MNIST (or a dataset in the same layout) from a directory of IDX files.

    The directory must hold the four standard files ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``, each optionally gzip-compressed with a ``.gz``
    suffix (names with ``.idx`` instead of ``-idx`` are accepted too).  Images
    are flattened to ``rows * cols`` features and scaled to ``[0, 1]``.  The
    validation set is carved from the training files with a seeded stratified
    permutation; the t10k files form the test set.

    Parameters
    ----------
    directory : str or os.PathLike
        Directory holding the four files.
    dtype : str or numpy.dtype, default "float32"
        Floating-point dtype of the inputs.
    val_fraction : float, default 0.1
        Fraction of the training files used for validation (0: no validation).
    seed : int, default 0
        Seed of the validation split.

    Returns
    -------
    Splits

    Raises
    ------
    FileNotFoundError
        If the directory or one of the files is missing.
    ValueError, TypeError
        If a file is malformed (see :func:`read_idx`) or train and test images
        have different sizes.

    Examples
    --------
    >>> import os, struct, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> def write(name, header, payload):
    ...     with open(os.path.join(folder, name), "wb") as file:
    ...         _ = file.write(header + payload)
    >>> write("train-images-idx3-ubyte", bytes([0, 0, 8, 3]) + struct.pack(">3i", 10, 2, 2), bytes(40))
    >>> write("train-labels-idx1-ubyte", bytes([0, 0, 8, 1]) + struct.pack(">i", 10), bytes([0, 1] * 5))
    >>> write("t10k-images-idx3-ubyte", bytes([0, 0, 8, 3]) + struct.pack(">3i", 2, 2, 2), bytes(8))
    >>> write("t10k-labels-idx1-ubyte", bytes([0, 0, 8, 1]) + struct.pack(">i", 2), bytes([1, 0]))
    >>> splits = load_mnist_dir(folder, val_fraction=0.2)
    >>> len(splits.train), len(splits.val), len(splits.test), splits.train.num_features
    (8, 2, 2, 4)
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise ValueError(f"directory must be a directory of MNIST IDX files, got the file {directory!r}")
        raise FileNotFoundError(f"MNIST directory not found: {directory!r}")
    out_dtype = _float_dtype(dtype)
    val_fraction = _fraction(val_fraction, "val_fraction")
    seed = _require_int(seed, "seed", minimum=0)

    found = {key: _find_mnist_file(directory, name) for key, name in _MNIST_FILES.items()}
    missing = [_MNIST_FILES[key] for key, path in found.items() if path is None]
    if missing:
        present = sorted(os.listdir(directory))
        shown = ", ".join(present[:10]) + (", ..." if len(present) > 10 else "") or "nothing"
        raise FileNotFoundError(
            f"{directory!r} lacks the MNIST file(s) {', '.join(missing)} (each may end in .gz); "
            f"it contains: {shown}")

    train_images, train_labels = _read_idx_pair(found["train_images"], found["train_labels"])
    test_images, test_labels = _read_idx_pair(found["test_images"], found["test_labels"])
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"training images have {train_images.shape[1]} pixels but test images have "
            f"{test_images.shape[1]}")
    train_x, test_x = _to_float_inputs(
        [train_images, test_images], ["training images", "test images"], out_dtype)
    train_idx, val_idx, _ = _split_indices(train_labels, val_fraction, 0.0, seed)
    return _make_splits(
        [train_x[train_idx], train_x[val_idx] if val_idx.size else None, test_x],
        [train_labels[train_idx], train_labels[val_idx] if val_idx.size else None, test_labels])


# --------------------------------------------------------------------------
# The command-line entry point
# --------------------------------------------------------------------------

def _file_starts_like_idx(path: str) -> bool:
    """Return True if ``path`` (possibly gzipped) begins with a plausible IDX header."""
    try:
        with open(path, "rb") as file:
            start = file.read(4)
            if start[:2] == _GZIP_MAGIC:
                file.seek(0)
                with gzip.GzipFile(fileobj=file) as unzipped:
                    start = unzipped.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return len(start) == 4 and start[0] == 0 and start[1] == 0 and start[2] in _IDX_DTYPES and start[3] >= 1


def _labels_path_for(images_path: str) -> str:
    folder, name = os.path.split(images_path)
    labels_name = name.replace("images", "labels").replace("idx3", "idx1")
    if labels_name == name:
        raise ValueError(
            f"cannot find the labels for the IDX images file {images_path!r}: its name must contain "
            f"'images' or 'idx3' so that the labels file name can be formed by replacing them with "
            f"'labels' and 'idx1' (e.g. train-images-idx3-ubyte -> train-labels-idx1-ubyte)")
    return os.path.join(folder, labels_name)


def load_data(path=None, dtype="float32", seed=0) -> Splits:
    """Load training data from wherever ``path`` points.

    * ``None``: the bundled digits (:func:`load_digits`, fixed split).
    * a directory: MNIST-style IDX files (:func:`load_mnist_dir`, 10 %
      validation carved from training).
    * a ``.npz`` file: :func:`load_npz` (10 % validation, 10 % test when the
      archive holds a single ``x``, ``y`` pair).
    * an IDX images file (possibly ``.gz``): its labels file is the same name
      with ``images`` replaced by ``labels`` and ``idx3`` by ``idx1``; the pair
      is split 80/10/10 like a single-array ``.npz``.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Where the data is; ``None`` for the bundled digits.
    dtype : str or numpy.dtype, default "float32"
        Floating-point dtype of the inputs.
    seed : int, default 0
        Seed of any random split (the digits split is fixed).

    Returns
    -------
    Splits

    Raises
    ------
    FileNotFoundError
        If ``path`` (or an IDX labels file) does not exist.
    ValueError
        If ``path`` is of no supported kind, or the data is malformed.

    Examples
    --------
    >>> splits = load_data()
    >>> splits.train.num_features, splits.train.num_classes
    (64, 10)
    """
    if path is None:
        return load_digits(dtype)
    path = os.fspath(path)
    seed = _require_int(seed, "seed", minimum=0)
    if not os.path.exists(path):
        raise FileNotFoundError(f"data path not found: {path!r}")
    if os.path.isdir(path):
        return load_mnist_dir(path, dtype=dtype, seed=seed)
    if not os.path.isfile(path):
        raise ValueError(f"data path must be a file or directory, got {path!r}")
    with open(path, "rb") as file:
        start = file.read(4)
    if path.lower().endswith(".npz") or start == _ZIP_MAGIC:
        return load_npz(path, dtype=dtype, seed=seed)
    if _file_starts_like_idx(path):
        labels_path = _labels_path_for(path)
        if not os.path.isfile(labels_path):
            raise FileNotFoundError(
                f"labels file for the IDX images {path!r} not found; expected {labels_path!r}")
        out_dtype = _float_dtype(dtype)
        images, labels = _read_idx_pair(path, labels_path)
        (x,) = _to_float_inputs([images], [f"images in {path!r}"], out_dtype)
        return _split_arrays(x, labels, 0.1, 0.1, seed)
    raise ValueError(
        f"unsupported data path {path!r}: expected nothing (the bundled digits), a .npz file, "
        f"a directory with MNIST IDX files, or an IDX images file")


# --------------------------------------------------------------------------
# Mini-batches
# --------------------------------------------------------------------------

def iterate_batches(n, batch_size, shuffle=True, seed=0, epoch=0) -> Iterator[np.ndarray]:
    """Yield the sample indices of each mini-batch of one epoch.

    Every index in ``range(n)`` appears exactly once.  With ``shuffle`` the
    order is a permutation drawn from ``numpy.random.default_rng([seed,
    epoch])``, so it is the same for the same ``(seed, epoch)`` and changes
    from epoch to epoch; without it the indices come in order.  All batches
    have ``batch_size`` indices except possibly the last, which is smaller.

    Parameters
    ----------
    n : int
        Number of samples (>= 0).
    batch_size : int
        Samples per batch (>= 1).
    shuffle : bool, default True
        Whether to permute the samples.
    seed, epoch : int, default 0
        Non-negative integers selecting the permutation.

    Returns
    -------
    iterator of numpy.ndarray of numpy.intp
        The indices of each batch in turn.

    Raises
    ------
    TypeError, ValueError
        If an argument is not an integer or is out of range.

    Examples
    --------
    >>> [batch.tolist() for batch in iterate_batches(5, 2, shuffle=False)]
    [[0, 1], [2, 3], [4]]
    >>> sorted(np.concatenate(list(iterate_batches(5, 2, seed=1, epoch=3))).tolist())
    [0, 1, 2, 3, 4]
    """
    # Arguments are checked here, when called, not at the first ``next()``.
    n = _require_int(n, "n", minimum=0)
    batch_size = _require_int(batch_size, "batch_size", minimum=1)
    seed = _require_int(seed, "seed", minimum=0)
    epoch = _require_int(epoch, "epoch", minimum=0)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n).astype(np.intp, copy=False)
    else:
        order = np.arange(n, dtype=np.intp)
    return (order[start:start + batch_size] for start in range(0, n, batch_size))


# --------------------------------------------------------------------------
# Feature scaling fitted on the training split
# --------------------------------------------------------------------------

_SCALE_PER = ("feature", "channel")


def _check_per(per) -> str:
    if not isinstance(per, str) or per not in _SCALE_PER:
        raise ValueError(f"per must be 'feature' or 'channel', got {per!r}")
    return per


def _real(value, name: str) -> float:
    """Return ``value`` as a finite ``float`` after checking that it is a real number."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _fitted_statistic(key: str, doc: str) -> property:
    """A read-only property: the scaler's fitted statistic ``key`` (``None`` before fit)."""
    def get(self) -> Optional[np.ndarray]:
        return None if self._stats is None else self._stats[key]
    return property(get, doc=doc)


class _Scaler:
    """What :class:`Standardizer` and :class:`MinMaxScaler` share.

    A subclass sets ``_STATISTICS`` (the names of its fitted arrays, as they
    appear in the state dict), implements ``_fit_statistics(x, axes)`` returning
    them as float64 arrays, ``_forward(out, stats)`` and ``_backward(out,
    stats)``, which work in place on a copy of the input whose statistics were
    cast to its dtype, and ``_config()`` / ``_set_config(state)`` for the
    hyper-parameters kept in the state dict.
    """

    _STATISTICS: tuple = ()

    def __init__(self, per: str):
        self.per = _check_per(per)
        self._stats: Optional[dict] = None

    # -- shapes ------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load_state_dict`) has run."""
        return self._stats is not None

    def _check_input(self, x, action: str) -> np.ndarray:
        name = type(self).__name__
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(
                f"{name}.{action} needs floating-point x, got dtype {x.dtype}; convert integer data "
                f"first, e.g. with fastnet.data.scale_inputs(x) or x.astype(np.float32)")
        minimum_ndim = 3 if self.per == "channel" else 2
        if x.ndim < minimum_ndim:
            if self.per == "channel":
                raise ValueError(
                    f"{name}(per='channel').{action} needs images of shape (N, C, H, W) (at least 3 "
                    f"dimensions, channels on axis 1), got shape {x.shape}; use per='feature' for "
                    f"flat inputs")
            raise ValueError(
                f"{name}.{action} needs x of shape (N, features...) with samples on the first axis, "
                f"got shape {x.shape}; reshape a single feature column with x.reshape(-1, 1)")
        _check_finite(x, f"x passed to {name}.{action}")
        return x

    def _axes(self, x: np.ndarray) -> tuple:
        """The axes the statistics reduce over."""
        if self.per == "channel":
            return (0,) + tuple(range(2, x.ndim))
        return (0,)

    def _broadcast(self, x: np.ndarray, action: str) -> dict:
        """The fitted statistics, cast to ``x.dtype`` and shaped to broadcast against ``x``."""
        name = type(self).__name__
        if self._stats is None:
            raise RuntimeError(f"{name} is not fitted yet; call fit(x) on the training inputs first")
        first = self._stats[self._STATISTICS[0]]
        if self.per == "channel":
            if x.shape[1] != first.shape[0]:
                raise ValueError(
                    f"{name}.{action} got {x.shape[1]} channel(s) (x of shape {x.shape}) but was fitted "
                    f"on {first.shape[0]}")
            shape = (1, first.shape[0]) + (1,) * (x.ndim - 2)
        else:
            if x.shape[1:] != first.shape:
                raise ValueError(
                    f"{name}.{action} got samples of shape {x.shape[1:]} (x of shape {x.shape}) but was "
                    f"fitted on samples of shape {first.shape}")
            shape = (1,) + first.shape
        return {key: value.astype(x.dtype).reshape(shape) for key, value in self._stats.items()}

    # -- public API --------------------------------------------------------

    def fit(self, x):
        """Compute the statistics of ``x`` (the training inputs).

        Parameters
        ----------
        x : array_like of floating dtype, shape (N, ...)
            Samples on the first axis; (N, C, ...) with ``per="channel"``.

        Returns
        -------
        self

        Raises
        ------
        TypeError
            If ``x`` is not floating.
        ValueError
            If ``x`` has no samples, too few dimensions, or holds NaN or Inf.
        """
        x = self._check_input(x, "fit")
        if x.shape[0] < 1:
            raise ValueError(f"{type(self).__name__}.fit needs at least 1 sample, got x of shape {x.shape}")
        self._stats = self._fit_statistics(x, self._axes(x))
        return self

    def transform(self, x) -> np.ndarray:
        """Scale ``x`` with the fitted statistics.

        Parameters
        ----------
        x : array_like of floating dtype
            Samples of the shape seen by :meth:`fit` (with ``per="channel"``,
            the same number of channels; the other sizes may differ).

        Returns
        -------
        numpy.ndarray
            A new array of the dtype and shape of ``x``; ``x`` is not modified.

        Raises
        ------
        RuntimeError
            If the scaler is not fitted.
        TypeError, ValueError
            If ``x`` is not floating, holds NaN or Inf, or its shape does not
            match the fitted statistics.
        """
        x = self._check_input(x, "transform")
        stats = self._broadcast(x, "transform")
        out = np.array(x, copy=True)
        self._forward(out, stats)
        return out

    def fit_transform(self, x) -> np.ndarray:
        """Fit on ``x`` and return ``x`` scaled: ``fit(x).transform(x)``."""
        return self.fit(x).transform(x)

    def inverse_transform(self, x) -> np.ndarray:
        """Undo :meth:`transform`: map scaled values back to the original units.

        Parameters
        ----------
        x : array_like of floating dtype
            Scaled values, shaped as for :meth:`transform`.

        Returns
        -------
        numpy.ndarray
            A new array of the dtype and shape of ``x``.
        """
        x = self._check_input(x, "inverse_transform")
        stats = self._broadcast(x, "inverse_transform")
        out = np.array(x, copy=True)
        self._backward(out, stats)
        return out

    def state_dict(self) -> dict:
        """The configuration and fitted statistics (copies), for :meth:`load_state_dict`.

        Raises
        ------
        RuntimeError
            If the scaler is not fitted.
        """
        if self._stats is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; there is no state to save")
        state = {"type": type(self).__name__, "per": self.per}
        state.update(self._config())
        state.update({key: value.copy() for key, value in self._stats.items()})
        return state

    def load_state_dict(self, state) -> None:
        """Restore what :meth:`state_dict` returned (configuration included).

        Parameters
        ----------
        state : dict
            The output of :meth:`state_dict` of a scaler of the same class.

        Raises
        ------
        ValueError
            If ``state`` is for another class, lacks an entry, or holds
            statistics of inconsistent shapes or non-finite values.
        """
        name = type(self).__name__
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from {name}.state_dict(), got {type(state).__name__}")
        if state.get("type") != name:
            raise ValueError(f"state is for {state.get('type')!r}, not {name!r}")
        missing = [key for key in ("per",) + self._STATISTICS if key not in state]
        if missing:
            raise ValueError(f"state for {name} lacks the entr{'y' if len(missing) == 1 else 'ies'} "
                             f"{', '.join(missing)}")
        per = _check_per(state["per"])
        stats = {key: np.array(state[key], dtype=np.float64) for key in self._STATISTICS}
        shapes = {key: value.shape for key, value in stats.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"state for {name} holds statistics of different shapes: {shapes}")
        if per == "channel" and stats[self._STATISTICS[0]].ndim != 1:
            raise ValueError(f"per-channel statistics must be 1-D, got shapes {shapes}")
        for key, value in stats.items():
            if not np.isfinite(value).all():
                raise ValueError(f"state for {name} holds non-finite values in {key!r}")
        self._validate_statistics(stats)
        self._set_config(state)
        self.per = per
        self._stats = stats

    def _validate_statistics(self, stats: dict) -> None:
        """Subclass hook: check loaded statistics."""


class Standardizer(_Scaler):
    """Scale inputs to zero mean and unit variance with statistics of the training data.

    :meth:`fit` computes the mean and the (population, ``ddof=0``) standard
    deviation of each feature -- or of each channel of (N, C, H, W) images --
    and :meth:`transform` returns ``(x - mean) / std``.  Fit on the training
    split only and transform the others with the same statistics, so nothing
    about the validation or test data leaks into training (see
    :func:`scale_splits`).  Statistics are computed in float64; the output keeps
    the dtype of the input (float32 stays float32).

    A feature whose standard deviation is at most ``eps`` (a constant feature)
    is only centred -- divided by 1 instead of by (almost) zero -- so it maps
    to 0 on the training data and never to Inf.

    Parameters
    ----------
    eps : float, default 1e-8
        Standard deviations ``<= eps`` count as zero.
    per : {"feature", "channel"}, default "feature"
        ``"feature"``: one mean and deviation per input value (statistics of
        shape ``x.shape[1:]``).  ``"channel"``: one per channel of inputs of
        shape (N, C, ...) (statistics of shape (C,)), as image normalisation
        usually does.

    Attributes
    ----------
    mean_ : numpy.ndarray of float64 or None
        Fitted means (``None`` before :meth:`fit`).
    std_ : numpy.ndarray of float64 or None
        Fitted standard deviations.
    scale_ : numpy.ndarray of float64 or None
        The divisors actually used: ``std_`` with values ``<= eps`` replaced by 1.

    Raises
    ------
    TypeError, ValueError
        If ``eps`` is not a non-negative finite number or ``per`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)
    >>> scaler = Standardizer().fit(x)
    >>> scaler.mean_.tolist(), scaler.std_.tolist()
    ([2.0, 5.0], [1.0, 0.0])
    >>> scaled = scaler.transform(x)
    >>> scaled.tolist(), scaled.dtype
    ([[-1.0, 0.0], [1.0, 0.0]], dtype('float32'))
    >>> scaler.inverse_transform(scaled).tolist()
    [[1.0, 5.0], [3.0, 5.0]]

    Per-channel statistics of images:

    >>> images = np.stack([np.zeros((2, 2)), np.full((2, 2), 4.0)])[None]  # (1, 2, 2, 2)
    >>> Standardizer(per="channel").fit(images).mean_.tolist()
    [0.0, 4.0]
    """

    _STATISTICS = ("mean", "std")

    def __init__(self, eps=1e-8, per="feature"):
        super().__init__(per)
        self.eps = self._check_eps(eps)

    @staticmethod
    def _check_eps(eps) -> float:
        eps = _real(eps, "eps")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        return eps

    def _config(self) -> dict:
        return {"eps": self.eps}

    def _set_config(self, state) -> None:
        self.eps = self._check_eps(state.get("eps", self.eps))

    def _validate_statistics(self, stats: dict) -> None:
        if (stats["std"] < 0).any():
            raise ValueError("state for Standardizer holds negative standard deviations in 'std'")

    def _fit_statistics(self, x, axes) -> dict:
        mean = x.mean(axis=axes, dtype=np.float64)
        std = x.std(axis=axes, dtype=np.float64)
        return {"mean": mean, "std": std}

    def _scale(self, std: np.ndarray) -> np.ndarray:
        return np.where(std > self.eps, std, np.ones_like(std))

    def _broadcast(self, x, action):
        stats = super()._broadcast(x, action)
        # The divisor is derived in float64 and then cast, so that constant features never divide by 0.
        stats["scale"] = self._scale(self._stats["std"]).astype(x.dtype).reshape(stats["std"].shape)
        return stats

    def _forward(self, out, stats) -> None:
        out -= stats["mean"]
        out /= stats["scale"]

    def _backward(self, out, stats) -> None:
        out *= stats["scale"]
        out += stats["mean"]

    mean_ = _fitted_statistic("mean", "Fitted means, float64 (``None`` before :meth:`fit`).")
    std_ = _fitted_statistic("std", "Fitted standard deviations (``ddof=0``), float64.")

    @property
    def scale_(self) -> Optional[np.ndarray]:
        """The divisors used: ``std_`` with values ``<= eps`` replaced by 1."""
        return None if self._stats is None else self._scale(self._stats["std"])

    def __repr__(self) -> str:
        return f"Standardizer(eps={self.eps!r}, per={self.per!r})"


class MinMaxScaler(_Scaler):
    """Scale each feature linearly so the training data spans ``feature_range``.

    :meth:`fit` records the minimum and maximum of each feature -- or of each
    channel of (N, C, H, W) images -- and :meth:`transform` returns
    ``(x - min) / (max - min) * (high - low) + low``.  The training data then
    lies in ``[low, high]``; other splits transformed with the same statistics
    may fall outside it.  Fit on the training split only (see
    :func:`scale_splits`).  The output keeps the dtype of the input.

    A constant feature (``max == min``) is divided by 1 instead of 0: it maps
    to ``low`` on the training data and never to Inf.

    Parameters
    ----------
    feature_range : (float, float), default (0, 1)
        ``(low, high)`` with ``low < high``.
    per : {"feature", "channel"}, default "feature"
        One minimum and maximum per input value, or per channel of inputs of
        shape (N, C, ...).

    Attributes
    ----------
    data_min_, data_max_ : numpy.ndarray of float64 or None
        Fitted minima and maxima (``None`` before :meth:`fit`).

    Raises
    ------
    TypeError, ValueError
        If ``feature_range`` is not two finite numbers with ``low < high`` or
        ``per`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> train = np.array([[0.0, 10.0], [2.0, 30.0]])
    >>> scaler = MinMaxScaler().fit(train)
    >>> scaler.transform(train).tolist()
    [[0.0, 0.0], [1.0, 1.0]]
    >>> scaler.transform(np.array([[1.0, 40.0]])).tolist()  # outside the training range
    [[0.5, 1.5]]
    >>> MinMaxScaler(feature_range=(-1, 1)).fit_transform(train).tolist()
    [[-1.0, -1.0], [1.0, 1.0]]
    """

    _STATISTICS = ("data_min", "data_max")

    def __init__(self, feature_range=(0, 1), per="feature"):
        super().__init__(per)
        self.feature_range = self._check_range(feature_range)

    @staticmethod
    def _check_range(feature_range) -> tuple:
        if isinstance(feature_range, (str, bytes)) or not hasattr(feature_range, "__len__") \
                or len(feature_range) != 2:
            raise TypeError(f"feature_range must be a pair (low, high), got {feature_range!r}")
        low = _real(feature_range[0], "feature_range[0]")
        high = _real(feature_range[1], "feature_range[1]")
        if not low < high:
            raise ValueError(f"feature_range must have low < high, got ({low}, {high})")
        return (low, high)

    def _config(self) -> dict:
        return {"feature_range": self.feature_range}

    def _set_config(self, state) -> None:
        self.feature_range = self._check_range(state.get("feature_range", self.feature_range))

    def _validate_statistics(self, stats: dict) -> None:
        if (stats["data_max"] < stats["data_min"]).any():
            raise ValueError("state for MinMaxScaler holds 'data_max' values below 'data_min'")

    def _fit_statistics(self, x, axes) -> dict:
        return {"data_min": x.min(axis=axes).astype(np.float64),
                "data_max": x.max(axis=axes).astype(np.float64)}

    def _factor(self) -> np.ndarray:
        """``(high - low) / (max - min)`` with a zero range replaced by 1, float64."""
        low, high = self.feature_range
        data_range = self._stats["data_max"] - self._stats["data_min"]
        return (high - low) / np.where(data_range > 0, data_range, np.ones_like(data_range))

    def _broadcast(self, x, action):
        stats = super()._broadcast(x, action)
        stats["factor"] = self._factor().astype(x.dtype).reshape(stats["data_min"].shape)
        return stats

    def _forward(self, out, stats) -> None:
        out -= stats["data_min"]
        out *= stats["factor"]
        out += out.dtype.type(self.feature_range[0])

    def _backward(self, out, stats) -> None:
        out -= out.dtype.type(self.feature_range[0])
        out /= stats["factor"]
        out += stats["data_min"]

    data_min_ = _fitted_statistic("data_min",
                                  "Fitted minima, float64 (``None`` before :meth:`fit`).")
    data_max_ = _fitted_statistic("data_max",
                                  "Fitted maxima, float64 (``None`` before :meth:`fit`).")

    def __repr__(self) -> str:
        return f"MinMaxScaler(feature_range={self.feature_range!r}, per={self.per!r})"


def scale_splits(splits, scaler) -> tuple:
    """Fit ``scaler`` on the training inputs and apply it to every split.

    Only ``splits.train.x`` is passed to ``scaler.fit``; the validation and
    test inputs are transformed with the training statistics, so nothing about
    them influences training.  Labels and ``num_classes`` are kept.

    Parameters
    ----------
    splits : Splits
        The datasets; ``val`` and ``test`` may be ``None``.
    scaler : Standardizer or MinMaxScaler
        Any object with ``fit(x)`` and ``transform(x)`` methods.  It is
        (re)fitted in place.

    Returns
    -------
    scaled : Splits
        New datasets with scaled inputs (the given ones are not modified).
    scaler
        The fitted scaler, to transform future inputs the same way (for
        example at prediction time) or to save with ``state_dict()``.

    Raises
    ------
    TypeError
        If ``splits`` is not a :class:`Splits` or ``scaler`` lacks ``fit`` or
        ``transform``.

    Examples
    --------
    >>> import numpy as np
    >>> train = Dataset(np.array([[0.0], [2.0]]), np.array([0, 1]))
    >>> test = Dataset(np.array([[4.0]]), np.array([1]))
    >>> scaled, scaler = scale_splits(Splits(train, None, test), Standardizer())
    >>> scaler.mean_.tolist(), scaled.train.x.ravel().tolist(), scaled.test.x.ravel().tolist()
    ([1.0], [-1.0, 1.0], [3.0])
    >>> scaled.val is None
    True
    """
    if not isinstance(splits, Splits):
        raise TypeError(f"splits must be a fastnet.data.Splits, got {type(splits).__name__}")
    for method in ("fit", "transform"):
        if not callable(getattr(scaler, method, None)):
            raise TypeError(
                f"scaler must have fit(x) and transform(x) methods (e.g. Standardizer() or "
                f"MinMaxScaler()), got {type(scaler).__name__} without {method}()")
    scaler.fit(splits.train.x)
    scaled = [None if ds is None else Dataset(scaler.transform(ds.x), ds.y, num_classes=ds.num_classes)
              for ds in splits]
    return Splits(*scaled), scaler


# --------------------------------------------------------------------------
# Class-balanced sampling
# --------------------------------------------------------------------------

def _check_generator(rng, name: str = "rng") -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{name} must be a numpy.random.Generator (e.g. numpy.random.default_rng(0)), "
            f"got {type(rng).__name__}")
    return rng


class ClassBalancedSampler:
    """Draw sample indices so that every class is equally likely.

    Each sample is weighted by ``1 / count(its class)``, so each class present
    in ``labels`` carries the same total weight: a draw picks each class with
    probability ``1 / (number of classes present)`` and, within the class,
    each sample uniformly.  This is what a weighted random sampler with
    class-balance weights does; it lets a model see rare classes as often as
    common ones.  Classes absent from ``labels`` are never drawn.

    Pass it to :class:`fastnet.augment.BatchLoader` as ``sampler=`` to use it
    for the epoch order, or call :meth:`sample` yourself.

    Parameters
    ----------
    labels : array_like of int, shape (N,), or Dataset
        Class labels (``>= 0``) of the samples; a :class:`Dataset` gives its ``y``.
    num_samples : int, optional
        Indices drawn per epoch; defaults to ``N``.
    replacement : bool, default True
        Draw with replacement (a sample may appear several times).  Without
        replacement each index appears at most once, rare classes are
        exhausted first, and ``num_samples`` may not exceed ``N``.

    Attributes
    ----------
    weights : numpy.ndarray of float64, shape (N,)
        ``1 / count(class of sample)``.
    num_samples : int
        Indices per epoch (also ``len(sampler)``).

    Raises
    ------
    TypeError, ValueError
        If the labels are not a non-empty 1-D array of non-negative integers,
        or ``num_samples`` is not a positive integer (at most ``N`` without
        replacement).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.array([0] * 90 + [1] * 10)
    >>> sampler = ClassBalancedSampler(labels)
    >>> sampler.weights[[0, 95]].tolist()
    [0.011111111111111112, 0.1]
    >>> drawn = labels[sampler.sample(np.random.default_rng(0))]
    >>> len(drawn), 35 < int((drawn == 1).sum()) < 65
    (100, True)
    """

    def __init__(self, labels, num_samples=None, replacement=True):
        if isinstance(labels, Dataset):
            labels = labels.y
        labels = np.asarray(labels)
        _check_labels(labels, "labels")
        if labels.shape[0] < 1:
            raise ValueError("labels must hold at least 1 label, got an empty array")
        if not isinstance(replacement, (bool, np.bool_)):
            raise TypeError(f"replacement must be True or False, got {replacement!r}")
        n = labels.shape[0]
        num_samples = n if num_samples is None else _require_int(num_samples, "num_samples", minimum=1)
        if not replacement and num_samples > n:
            raise ValueError(
                f"num_samples must be <= the number of labels ({n}) when replacement=False, "
                f"got {num_samples}")
        counts = np.bincount(labels)
        self._labels = labels
        self._weights = 1.0 / counts[labels]
        self._probabilities = self._weights / self._weights.sum()
        self.num_samples = num_samples
        self.replacement = bool(replacement)

    @property
    def weights(self) -> np.ndarray:
        """Per-sample weights ``1 / count(class)`` (a copy)."""
        return self._weights.copy()

    def __len__(self) -> int:
        return self.num_samples

    def sample(self, rng) -> np.ndarray:
        """Draw one epoch's indices.

        Parameters
        ----------
        rng : numpy.random.Generator
            The source of randomness; the same state gives the same indices.

        Returns
        -------
        numpy.ndarray of numpy.intp, shape (num_samples,)
            Indices into ``labels``.
        """
        rng = _check_generator(rng)
        indices = rng.choice(self._labels.shape[0], size=self.num_samples, replace=self.replacement,
                             p=self._probabilities)
        return indices.astype(np.intp, copy=False)

    def __repr__(self) -> str:
        return (f"ClassBalancedSampler(num_labels={self._labels.shape[0]}, num_samples={self.num_samples}, "
                f"replacement={self.replacement})")
