"""Datasets, data-file loaders and mini-batch iteration.

Everything here needs only numpy.  The main pieces are:

* :class:`Dataset` -- floating-point inputs ``x`` with integer labels ``y``.
* :class:`Splits` -- a ``(train, val, test)`` triple of datasets.
* :func:`load_data` -- the single entry point used by the command line; it
  dispatches to :func:`load_digits` (the bundled 8x8 digits),
  :func:`load_npz`, :func:`load_mnist_dir` or :func:`load_idx`.
* :func:`read_idx` -- a validating reader for the IDX format used by MNIST.
* :func:`iterate_batches` -- reproducible mini-batch index generation.

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
