"""Tests for fastnet.data: datasets, loaders, the IDX reader and batching."""

import gzip
import importlib.resources
import struct

import numpy as np
import pytest

from fastnet.data import (
    Dataset,
    Splits,
    iterate_batches,
    load_data,
    load_digits,
    load_idx,
    load_mnist_dir,
    load_npz,
    read_idx,
    scale_inputs,
)

IDX_TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(array):
    """Encode ``array`` in the IDX format by hand."""
    array = np.asarray(array)
    header = bytes([0, 0, IDX_TYPE_CODES[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, compress=False):
    payload = idx_bytes(array)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def rows_as_set(x):
    return {tuple(row) for row in np.asarray(x).reshape(len(x), -1).tolist()}


# --------------------------------------------------------------------------
# Bundled digits
# --------------------------------------------------------------------------

def raw_digits():
    resource = importlib.resources.files("fastnet.datasets").joinpath("digits.npz")
    with resource.open("rb") as file, np.load(file) as archive:
        return {name: archive[name] for name in archive.files}


def test_digits_shapes_classes_and_range():
    splits = load_digits()
    assert isinstance(splits, Splits)
    for ds in splits:
        assert ds.x.dtype == np.float32
        assert ds.x.shape == (len(ds), 64)
        assert ds.num_features == 64
        assert ds.num_classes == 10
        assert np.issubdtype(ds.y.dtype, np.integer)
        assert ds.x.min() >= 0.0 and ds.x.max() <= 1.0
    assert set(np.unique(splits.train.y).tolist()) == set(range(10))
    assert splits.train.x.max() == 1.0  # 16 / 16


def test_digits_split_sizes_cover_all_samples_without_overlap():
    splits = load_digits()
    sizes = [len(ds) for ds in splits]
    assert sizes == [1259, 269, 269]
    assert sum(sizes) == 1797
    raw = raw_digits()
    assert raw["x"].dtype == np.uint8 and raw["x"].shape == (1797, 64)
    assert raw["y"].dtype == np.uint8 and raw["y"].shape == (1797,)
    indices = [raw["train_idx"], raw["val_idx"], raw["test_idx"]]
    combined = np.concatenate(indices)
    assert np.array_equal(np.sort(combined), np.arange(1797))  # disjoint and complete
    for ds, idx in zip(splits, indices):
        np.testing.assert_allclose(ds.x, raw["x"][idx] / 16.0, rtol=1e-6)
        np.testing.assert_array_equal(ds.y, raw["y"][idx])


def test_digits_split_is_stratified():
    splits = load_digits()
    total = np.bincount(np.concatenate([ds.y for ds in splits]), minlength=10)
    for ds, fraction in zip(splits, (0.70, 0.15, 0.15)):
        counts = np.bincount(ds.y, minlength=10)
        assert np.all(np.abs(counts - fraction * total) <= 2), counts


def test_digits_same_every_call_and_dtype_option():
    first, second = load_digits(), load_digits()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    wide = load_digits(dtype="float64")
    assert wide.train.x.dtype == np.float64
    np.testing.assert_allclose(wide.train.x, first.train.x, rtol=1e-6)
    with pytest.raises(TypeError, match="dtype"):
        load_digits(dtype="int32")


def test_bundled_archive_is_small():
    resource = importlib.resources.files("fastnet.datasets").joinpath("digits.npz")
    assert len(resource.read_bytes()) < 100_000


# --------------------------------------------------------------------------
# Dataset and scale_inputs
# --------------------------------------------------------------------------

def test_dataset_basics_and_indexing():
    x = np.arange(24, dtype=np.float32).reshape(6, 2, 2)
    y = np.array([0, 1, 2, 0, 1, 4])
    ds = Dataset(x, y)
    assert len(ds) == 6
    assert ds.num_classes == 5
    assert ds.num_features == 4
    assert ds.x is x and ds.y is y

    sliced = ds[1:3]
    np.testing.assert_array_equal(sliced.y, [1, 2])
    assert sliced.num_classes == 5  # inherited, although label 4 is absent
    picked = ds[np.array([5, 0])]
    np.testing.assert_array_equal(picked.x, x[[5, 0]])
    masked = ds[y == 1]
    assert len(masked) == 2
    assert "num_samples=6" in repr(ds) and "num_classes=5" in repr(ds)

    with pytest.raises(TypeError, match="slice"):
        ds[0]
    with pytest.raises(TypeError, match="index"):
        ds[np.array([0.5])]
    with pytest.raises(ValueError, match="at least 1 sample"):
        ds[3:3]


@pytest.mark.parametrize(
    "x, y, error, message",
    [
        (np.zeros((3, 2), dtype=np.uint8), np.zeros(3, dtype=int), TypeError, "uint8.*scale"),
        (np.zeros((3, 2)), np.zeros(3, dtype=float), TypeError, "integer dtype"),
        (np.zeros((3, 2)), np.zeros((3, 1), dtype=int), ValueError, "1-D"),
        (np.zeros((3, 2)), np.zeros(4, dtype=int), ValueError, "3 and 4"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), ValueError, "at least 1 sample"),
        (np.zeros((2, 2)), np.array([0, -1]), ValueError, "-1"),
    ],
)
def test_dataset_rejects_bad_inputs(x, y, error, message):
    with pytest.raises(error, match=message):
        Dataset(x, y)


def test_dataset_num_classes_argument():
    ds = Dataset(np.zeros((2, 1)), np.array([0, 1]), num_classes=10)
    assert ds.num_classes == 10
    with pytest.raises(ValueError, match="num_classes"):
        Dataset(np.zeros((2, 1)), np.array([0, 3]), num_classes=3)


def test_scale_inputs():
    scaled = scale_inputs(np.array([[0, 255], [51, 102]], dtype=np.uint8))
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0, 1], [0.2, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(scale_inputs(np.array([0, 8, 16]), max_value=16), [0, 0.5, 1])
    assert scale_inputs(np.array([1], dtype=np.uint16), dtype="float64").dtype == np.float64
    np.testing.assert_array_equal(scale_inputs(np.array([True, False])), [1.0, 0.0])
    with pytest.raises(TypeError, match="float64"):
        scale_inputs(np.array([0.5]))
    with pytest.raises(ValueError, match="non-negative"):
        scale_inputs(np.array([-1, 2]))
    with pytest.raises(ValueError, match="above max_value"):
        scale_inputs(np.array([17]), max_value=16)
    with pytest.raises(ValueError, match="max_value"):
        scale_inputs(np.array([0]), max_value=0)


# --------------------------------------------------------------------------
# .npz files
# --------------------------------------------------------------------------

def make_labelled_data(num_samples=200, num_classes=4, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(num_samples, 3, 2), dtype=np.uint8)
    x[:, 0, 0] = np.arange(num_samples) % 256  # make rows distinct
    x[:, 0, 1] = np.arange(num_samples) // 256
    y = rng.permutation(np.arange(num_samples) % num_classes)
    return x, y


def test_npz_single_layout_round_trip(tmp_path):
    x, y = make_labelled_data()
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    splits = load_npz(path, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert [len(ds) for ds in splits] == [140, 40, 20]
    for ds in splits:
        assert ds.x.dtype == np.float32
        assert ds.x.shape[1:] == (3, 2)
        assert ds.num_classes == 4
    # Every sample lands in exactly one split with its own label and inputs scaled by 255;
    # the first two input values encode the sample's original index.
    seen = []
    for ds in splits:
        pixels = np.round(ds.x * 255).astype(int)
        original = pixels[:, 0, 0] + 256 * pixels[:, 0, 1]
        np.testing.assert_array_equal(pixels, x[original])
        np.testing.assert_array_equal(ds.y, y[original])
        seen.append(original)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(200))
    # Stratified: 50 samples per class -> 35 / 10 / 5.
    for ds, per_class in zip(splits, (35, 10, 5)):
        np.testing.assert_array_equal(np.bincount(ds.y, minlength=4), [per_class] * 4)


def test_npz_split_is_seeded(tmp_path):
    x, y = make_labelled_data()
    path = tmp_path / "data.npz"
    np.savez_compressed(path, x=x, y=y)
    first, again = load_npz(path, seed=5), load_npz(path, seed=5)
    other = load_npz(path, seed=6)
    np.testing.assert_array_equal(first.val.x, again.val.x)
    assert rows_as_set(first.val.x) != rows_as_set(other.val.x)


def test_npz_zero_fractions_give_no_split(tmp_path):
    x, y = make_labelled_data(num_samples=20)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    splits = load_npz(path, val_fraction=0.0, test_fraction=0.0)
    assert len(splits.train) == 20 and splits.val is None and splits.test is None
    only_val = load_npz(path, val_fraction=0.25, test_fraction=0)
    assert (len(only_val.train), len(only_val.val), only_val.test) == (15, 5, None)


def test_npz_float_inputs_are_used_as_given(tmp_path):
    x = np.linspace(-3, 7, 40).reshape(20, 2)
    y = np.arange(20) % 2
    path = tmp_path / "float.npz"
    np.savez(path, x=x, y=y)
    splits = load_npz(path, dtype="float64", val_fraction=0.0, test_fraction=0.0)
    np.testing.assert_array_equal(np.sort(splits.train.x.ravel()), np.sort(x.ravel()))


def test_npz_wide_integers_scaled_by_training_max(tmp_path):
    path = tmp_path / "wide.npz"
    np.savez(path,
             x_train=np.array([[0, 1000], [500, 250]], dtype=np.uint16), y_train=np.array([0, 1]),
             x_test=np.array([[2000, 0]], dtype=np.uint16), y_test=np.array([1]))
    splits = load_npz(path)
    np.testing.assert_allclose(splits.train.x, [[0, 1], [0.5, 0.25]])
    np.testing.assert_allclose(splits.test.x, [[2, 0]])  # same factor as training
    assert splits.val is None


def test_npz_presplit_layout_used_as_given(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 30), ("val", 7), ("test", 9)):
        arrays[f"x_{split}"] = rng.integers(0, 256, size=(n, 5), dtype=np.uint8)
        arrays[f"y_{split}"] = rng.integers(0, 3, size=n).astype(np.int32)
    arrays["y_test"][0] = 6  # a class only present in the test split
    path = tmp_path / "presplit.npz"
    np.savez(path, **arrays)
    splits = load_npz(path, val_fraction=0.5, seed=9)  # fractions are ignored
    for ds, split in zip(splits, ("train", "val", "test")):
        np.testing.assert_allclose(ds.x, arrays[f"x_{split}"] / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(ds.y, arrays[f"y_{split}"])
        assert ds.num_classes == 7


def test_npz_presplit_train_only(tmp_path):
    path = tmp_path / "train_only.npz"
    np.savez(path, x_train=np.ones((3, 2), dtype=np.float32), y_train=np.array([0, 1, 1]))
    splits = load_npz(path)
    assert len(splits.train) == 3 and splits.val is None and splits.test is None


def test_npz_missing_file(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_npz(path)


@pytest.mark.parametrize(
    "arrays, error, message",
    [
        ({"inputs": np.zeros((2, 2)), "labels": np.zeros(2, int)}, ValueError,
         r"'x' and 'y'.*found: inputs, labels"),
        ({"x": np.zeros((2, 2))}, ValueError, "found: x"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(2, int)}, ValueError, "3 and 2"),
        ({"x": np.zeros((2, 2)), "y": np.array([0.0, 1.0])}, TypeError, "integer"),
        ({"x": np.array([[np.nan, 1.0], [np.inf, -np.inf]]), "y": np.array([0, 1])}, ValueError,
         "3 non-finite"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, -2])}, ValueError, "-2"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0, int)}, ValueError, "no samples"),
        ({"x": np.zeros((2, 2)), "y": np.zeros(2, int), "x_train": np.zeros((2, 2)),
          "y_train": np.zeros(2, int)}, ValueError, "both"),
        ({"x_train": np.zeros((2, 2)), "y_train": np.zeros(2, int), "x_val": np.zeros((1, 2))},
         ValueError, "y_val"),
        ({"x_train": np.zeros((2, 2)), "y_train": np.zeros(2, int), "x_test": np.zeros((1, 3)),
          "y_test": np.zeros(1, int)}, ValueError, "shape"),
        ({"x_train": np.zeros((2, 2), np.uint8), "y_train": np.zeros(2, int),
          "x_test": np.zeros((1, 2)), "y_test": np.zeros(1, int)}, ValueError, "mix integer and floating"),
        ({"x_train": np.zeros((2, 2)), "y_train": np.zeros(2, int), "x_val": np.full((1, 2), np.nan),
          "y_val": np.zeros(1, int)}, ValueError, "x_val contains 2 non-finite"),
    ],
)
def test_npz_bad_contents(tmp_path, arrays, error, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(error, match=message):
        load_npz(path)


def test_npz_not_an_archive(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"definitely not a zip file")
    with pytest.raises(ValueError, match="garbage.npz"):
        load_npz(garbage)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match="single numpy array"):
        load_npz(single)


def test_npz_bad_arguments(tmp_path):
    x, y = make_labelled_data(num_samples=10)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(ValueError, match="val_fraction"):
        load_npz(path, val_fraction=1.2)
    with pytest.raises(ValueError, match="no training samples"):
        load_npz(path, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(TypeError, match="dtype"):
        load_npz(path, dtype="uint8")
    with pytest.raises(ValueError, match="seed"):
        load_npz(path, seed=-1)


# --------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(IDX_TYPE_CODES))
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)])
def test_idx_round_trip(tmp_path, dtype, shape):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    else:
        array = rng.standard_normal(shape).astype(dtype)
    result = read_idx(write_idx(tmp_path / "array-idx", array))
    assert result.dtype == dtype and result.dtype.isnative
    assert result.shape == shape
    np.testing.assert_array_equal(result, array)


def test_idx_gzip_round_trip(tmp_path):
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5) - 30
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.gz", array, compress=True)), array)
    # Detected by content too: compressed data without the .gz suffix ...
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "b-idx", array, compress=True)), array)
    # ... and uncompressed data that merely has a .gz name.
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "c.gz", array)), array)


def test_idx_empty_dimension(tmp_path):
    result = read_idx(write_idx(tmp_path / "empty", np.zeros((0, 3), dtype=np.uint8)))
    assert result.shape == (0, 3)


GOOD_HEADER = bytes([0, 0, 0x08, 2]) + struct.pack(">2i", 2, 3)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "truncated"),
        (b"\x00\x00\x08", "truncated"),
        (bytes([1, 0, 0x08, 1]) + struct.pack(">i", 1) + b"\x00", "magic"),
        (bytes([0, 0, 0x0A, 1]) + struct.pack(">i", 1) + b"\x00", "type code 0x0A"),
        (bytes([0, 0, 0x08, 0]), "0 dimensions"),
        (bytes([0, 0, 0x08, 3]) + struct.pack(">2i", 2, 3), "truncated"),
        (GOOD_HEADER + bytes(5), r"need 6 data bytes, found 5"),
        (GOOD_HEADER + bytes(7), "trailing bytes"),
        (bytes([0, 0, 0x0E, 1]) + struct.pack(">i", 2) + bytes(12), "need 16 data bytes"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">i", -4) + bytes(4), "negative"),
        # Huge declared sizes must be rejected, not allocated.
        (bytes([0, 0, 0x0E, 3]) + struct.pack(">3i", 2**31 - 1, 2**31 - 1, 2**31 - 1) + bytes(8),
         "truncated"),
        (b"\x1f\x8b" + b"not really gzip data", "gzip"),
    ],
)
def test_idx_malformed(tmp_path, content, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_idx(tmp_path / "nothing-here")


def test_load_idx(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    labels = np.array([1, 0], dtype=np.uint8)
    ds = load_idx(write_idx(tmp_path / "img", images, compress=True), write_idx(tmp_path / "lab", labels))
    assert ds.x.shape == (2, 12) and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.x, images.reshape(2, 12) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, labels)

    with pytest.raises(ValueError, match="2 images but .* 3 labels"):
        load_idx(tmp_path / "img", write_idx(tmp_path / "lab3", np.array([0, 1, 2], dtype=np.uint8)))
    with pytest.raises(TypeError, match="integers"):
        load_idx(tmp_path / "img", write_idx(tmp_path / "labf", np.array([0.0, 1.0], dtype=np.float32)))
    with pytest.raises(ValueError, match="1-D"):
        load_idx(tmp_path / "img", write_idx(tmp_path / "lab2d", np.zeros((2, 1), dtype=np.uint8)))
    with pytest.raises(ValueError, match="negative"):
        load_idx(write_idx(tmp_path / "neg", np.full((2, 2), -3, dtype=np.int8)), tmp_path / "lab")


def write_mnist_dir(folder, num_train=50, num_test=12, compress=True):
    rng = np.random.default_rng(2)
    folder.mkdir(exist_ok=True)
    suffix = ".gz" if compress else ""
    data = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 4, 3), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(num_train) % 5).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, 4, 3), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(num_test) % 5).astype(np.uint8),
    }
    for name, array in data.items():
        write_idx(folder / (name + suffix), array, compress=compress)
    return data


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_dir(tmp_path, compress):
    data = write_mnist_dir(tmp_path / "mnist", compress=compress)
    splits = load_mnist_dir(tmp_path / "mnist", val_fraction=0.2, seed=4)
    assert [len(ds) for ds in splits] == [40, 10, 12]
    for ds in splits:
        assert ds.x.shape[1] == 12 and ds.num_classes == 5
        assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    np.testing.assert_allclose(splits.test.x, data["t10k-images-idx3-ubyte"].reshape(12, 12) / 255.0,
                               rtol=1e-6)
    train_rows = rows_as_set(data["train-images-idx3-ubyte"].reshape(50, 12))
    carved = rows_as_set(np.round(np.concatenate([splits.train.x, splits.val.x]) * 255).astype(int))
    assert carved == train_rows
    np.testing.assert_array_equal(np.bincount(splits.val.y), [2] * 5)
    again = load_mnist_dir(tmp_path / "mnist", val_fraction=0.2, seed=4)
    np.testing.assert_array_equal(again.val.x, splits.val.x)
    assert load_mnist_dir(tmp_path / "mnist", val_fraction=0).val is None


def test_load_mnist_dir_missing_files(tmp_path):
    write_mnist_dir(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist_dir(tmp_path / "mnist")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mnist_dir(tmp_path / "nowhere")


# --------------------------------------------------------------------------
# load_data dispatch
# --------------------------------------------------------------------------

def test_load_data_default_is_digits():
    splits = load_data()
    reference = load_digits()
    np.testing.assert_array_equal(splits.train.x, reference.train.x)


def test_load_data_dispatch(tmp_path):
    x, y = make_labelled_data(num_samples=30)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    assert [len(ds) for ds in load_data(tmp_path / "data.npz")] == [24, 3, 3]

    write_mnist_dir(tmp_path / "mnist")
    assert [len(ds) for ds in load_data(tmp_path / "mnist")] == [45, 5, 12]

    images_path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    splits = load_data(images_path, seed=1)
    assert [len(ds) for ds in splits] == [40, 5, 5]
    assert splits.train.num_features == 12


def test_load_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_data(tmp_path / "missing.npz")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="unsupported data path"):
        load_data(text)
    write_idx(tmp_path / "pixels-idx", np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="'images' or 'idx3'"):
        load_data(tmp_path / "pixels-idx")
    write_idx(tmp_path / "lonely-images-idx3-ubyte", np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match="lonely-labels-idx1-ubyte"):
        load_data(tmp_path / "lonely-images-idx3-ubyte")


# --------------------------------------------------------------------------
# iterate_batches
# --------------------------------------------------------------------------

def test_iterate_batches_covers_every_index_once():
    batches = list(iterate_batches(103, 10, shuffle=True, seed=7, epoch=0))
    assert [len(batch) for batch in batches] == [10] * 10 + [3]
    combined = np.concatenate(batches)
    assert combined.dtype == np.intp
    np.testing.assert_array_equal(np.sort(combined), np.arange(103))
    assert not np.array_equal(combined, np.arange(103))


def test_iterate_batches_order_depends_on_seed_and_epoch():
    def order(seed, epoch):
        return np.concatenate(list(iterate_batches(50, 8, shuffle=True, seed=seed, epoch=epoch)))

    np.testing.assert_array_equal(order(3, 2), order(3, 2))
    assert not np.array_equal(order(3, 2), order(3, 3))
    assert not np.array_equal(order(3, 2), order(4, 2))


def test_iterate_batches_without_shuffle_and_edge_cases():
    batches = list(iterate_batches(5, 2, shuffle=False))
    assert [batch.tolist() for batch in batches] == [[0, 1], [2, 3], [4]]
    assert [batch.tolist() for batch in iterate_batches(3, 10, shuffle=False)] == [[0, 1, 2]]
    assert list(iterate_batches(0, 4)) == []


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"n": 10, "batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
        ({"n": 10, "batch_size": 2.5}, TypeError, "batch_size"),
        ({"n": -1, "batch_size": 2}, ValueError, "n must be >= 0"),
        ({"n": 10, "batch_size": 2, "epoch": -1}, ValueError, "epoch"),
    ],
)
def test_iterate_batches_validates_arguments_when_called(kwargs, error, message):
    with pytest.raises(error, match=message):
        iterate_batches(**kwargs)  # no iteration needed
