"""Export the bundled digits as IDX files for the C examples (csrc/examples/train_digits.c).

Reads ``fastnet/datasets/digits.npz`` and writes, in ``csrc/examples/data/``:

    digits-train-images-idx3-ubyte   uint8 (1528, 8, 8), pixel values 0..16
    digits-train-labels-idx1-ubyte   uint8 (1528,), digits 0..9
    digits-test-images-idx3-ubyte    uint8 (269, 8, 8)
    digits-test-labels-idx1-ubyte    uint8 (269,)

The training files hold the package's training and validation splits together (a C example that
does no model selection has no use for a validation set), in index order; the test files hold its
test split, so the C example's test accuracy is measured on the same samples as ``fastnet train``'s.

IDX is MNIST's format: a big-endian header (two zero bytes, the element type 0x08 for unsigned
bytes, the number of dimensions, then each dimension as a 32-bit integer) followed by the values.
The pixels keep their 0..16 range; the C example scales them by 1/16.

Run once from the repository root (only numpy is needed)::

    python3 tools/export_digits_idx.py [output_dir]
"""
import pathlib
import struct
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIGITS = ROOT / "fastnet" / "datasets" / "digits.npz"
OUTPUT = ROOT / "csrc" / "examples" / "data"
UNSIGNED_BYTE = 0x08


def idx_bytes(array):
    """The IDX encoding of a uint8 array."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, UNSIGNED_BYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def main(output=OUTPUT):
    output = pathlib.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with np.load(DIGITS, allow_pickle=False) as archive:
        x, y = archive["x"], archive["y"]
        train = np.sort(np.concatenate([archive["train_idx"], archive["val_idx"]]))
        test = archive["test_idx"]
    if x.max() > 16 or y.max() > 9:
        raise SystemExit(f"{DIGITS}: unexpected values (pixels up to {x.max()}, labels up to {y.max()})")
    images = x.reshape(-1, 8, 8)
    for split, indices in (("train", train), ("test", test)):
        (output / f"digits-{split}-images-idx3-ubyte").write_bytes(idx_bytes(images[indices]))
        (output / f"digits-{split}-labels-idx1-ubyte").write_bytes(idx_bytes(y[indices]))
        print(f"{split}: {len(indices)} samples -> {output}")


if __name__ == "__main__":
    main(*sys.argv[1:])
