"""Build ``fastnet/datasets/digits.npz`` from scikit-learn's copy of the UCI digits.

The bundled dataset is the test set of the UCI "Optical Recognition of
Handwritten Digits" data (Alpaydin & Kaynak, 1998): 1,797 images of 8x8
pixels with values 0..16 and ten classes, licensed CC BY 4.0.  scikit-learn
ships the same data as ``sklearn.datasets.load_digits``; this script converts
it once into a small compressed archive with a fixed, stratified
train / validation / test split so that the package itself needs only numpy.

Archive contents
----------------
x          uint8 (1797, 64)   pixel values 0..16, row-major 8x8 images
y          uint8 (1797,)      digit labels 0..9
train_idx  int32              indices of the training samples (~70 %)
val_idx    int32              indices of the validation samples (~15 %)
test_idx   int32              indices of the test samples (~15 %)
source     str (1,)           where the data comes from
license    str (1,)           licence of the data

The split is made per class with ``numpy.random.default_rng(0)``: the indices
of each class are permuted, ``round(0.15 * n_class)`` go to validation, as many
to test, and the rest to training.  Index arrays are stored sorted.

Usage (scikit-learn is needed only here, not by fastnet)::

    python3 tools/make_digits.py [output_path]
"""

import pathlib
import sys

import numpy as np
from sklearn.datasets import load_digits

VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
SEED = 0

SOURCE = (
    "UCI Machine Learning Repository: Optical Recognition of Handwritten Digits "
    "(E. Alpaydin, C. Kaynak, 1998), https://doi.org/10.24432/C50P49; "
    "converted from sklearn.datasets.load_digits by tools/make_digits.py"
)
LICENSE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"


def stratified_split(labels, val_fraction, test_fraction, seed):
    """Return sorted (train, val, test) index arrays, split class by class."""
    rng = np.random.default_rng(seed)
    train_parts, val_parts, test_parts = [], [], []
    for label in np.unique(labels):
        class_indices = rng.permutation(np.flatnonzero(labels == label))
        num_val = int(round(val_fraction * class_indices.size))
        num_test = int(round(test_fraction * class_indices.size))
        val_parts.append(class_indices[:num_val])
        test_parts.append(class_indices[num_val:num_val + num_test])
        train_parts.append(class_indices[num_val + num_test:])
    return tuple(np.sort(np.concatenate(parts)).astype(np.int32)
                 for parts in (train_parts, val_parts, test_parts))


def main(output_path):
    digits = load_digits()
    x = digits.data
    y = digits.target
    if x.shape != (1797, 64) or y.shape != (1797,):
        raise SystemExit(f"unexpected digits shapes: x {x.shape}, y {y.shape}")
    if x.min() < 0 or x.max() > 16 or not np.array_equal(x, np.round(x)):
        raise SystemExit("unexpected digits pixel values: expected integers 0..16")

    train_idx, val_idx, test_idx = stratified_split(y, VAL_FRACTION, TEST_FRACTION, SEED)
    all_indices = np.concatenate([train_idx, val_idx, test_idx])
    assert np.array_equal(np.sort(all_indices), np.arange(y.size)), "split is not a partition"

    output_path = pathlib.Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        output_path,
        x=x.astype(np.uint8),
        y=y.astype(np.uint8),
        train_idx=train_idx,
        val_idx=val_idx,
        test_idx=test_idx,
        source=np.array([SOURCE]),
        license=np.array([LICENSE]),
    )
    print(f"wrote {output_path} ({output_path.stat().st_size} bytes): "
          f"train {train_idx.size}, val {val_idx.size}, test {test_idx.size}")


if __name__ == "__main__":
    default_path = pathlib.Path(__file__).resolve().parent.parent / "fastnet" / "datasets" / "digits.npz"
    main(sys.argv[1] if len(sys.argv) > 1 else default_path)
