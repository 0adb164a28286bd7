"""Tests for fastnet.augment (transforms, BatchLoader) and fastnet.data.ClassBalancedSampler."""

import gc
import threading
import time

import numpy as np
import pytest

from fastnet.augment import BatchLoader, Compose, GaussianNoise, RandomCrop, RandomHorizontalFlip
from fastnet.data import ClassBalancedSampler, Dataset

TIMEOUT = 10.0  # seconds; a test that would hang fails instead


def run_with_timeout(function, seconds=TIMEOUT):
    """Run ``function`` in a thread; fail if it does not finish in time, re-raise what it raised."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds} s (hang)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def wait_until(condition, seconds=TIMEOUT):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def loader_threads():
    return [t for t in threading.enumerate() if t.name == "fastnet-BatchLoader"]


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    """Every test must leave no BatchLoader thread running."""
    yield
    gc.collect()
    assert wait_until(lambda: not loader_threads()), f"threads still running: {loader_threads()}"


def position_images(n=4, channels=2, height=5, width=6, dtype=np.float32):
    """Images whose every value is distinct and positive: 1 + position, channel and sample encoded."""
    values = np.arange(1, n * channels * height * width + 1, dtype=np.float64)
    return values.reshape(n, channels, height, width).astype(dtype)


def image_dataset(n=37, channels=3, size=8, num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, channels, size, size), dtype=np.float32)
    return Dataset(x, rng.integers(0, num_classes, n), num_classes=num_classes)


# --------------------------------------------------------------------------
# RandomCrop
# --------------------------------------------------------------------------

def find_offsets(padded, window):
    """All (top, left) at which ``window`` (C, h, w) occurs in ``padded`` (C, H, W)."""
    h, w = window.shape[1:]
    return [(top, left)
            for top in range(padded.shape[1] - h + 1)
            for left in range(padded.shape[2] - w + 1)
            if np.array_equal(padded[:, top:top + h, left:left + w], window)]


@pytest.mark.parametrize("size, padding", [((5, 6), 2), ((3, 4), 0), ((4, 4), 1), ((9, 10), 2)])
def test_random_crop_takes_a_window_of_the_zero_padded_image(size, padding):
    x = position_images(n=60)
    out = RandomCrop(size, padding=padding)(x, np.random.default_rng(3))
    assert out.shape == (60, 2) + size and out.dtype == x.dtype
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    # The offsets the documentation promises, drawn from the same generator state.
    rng = np.random.default_rng(3)
    tops = rng.integers(0, 5 + 2 * padding - size[0] + 1, size=60)
    lefts = rng.integers(0, 6 + 2 * padding - size[1] + 1, size=60)
    for i in range(60):
        found = find_offsets(padded[i], out[i])
        if np.any(out[i]):  # an all-zero window could sit anywhere in the padding
            assert found == [(tops[i], lefts[i])]
        assert 0 <= tops[i] <= 2 * padding + 5 - size[0]
        assert 0 <= lefts[i] <= 2 * padding + 6 - size[1]


def test_random_crop_shifts_content_by_the_offset():
    x = position_images(n=400, channels=1, height=4, width=4)
    out = RandomCrop(4, padding=1)(x, np.random.default_rng(0))
    seen = set()
    for i in range(len(x)):
        (top, left), = find_offsets(np.pad(x[i], ((0, 0), (1, 1), (1, 1))), out[i])
        seen.add((top, left))
        dy, dx = 1 - top, 1 - left  # how far the content moved down / right
        shifted = np.zeros_like(x[i])
        src = x[i][:, max(0, -dy):4 - max(0, dy), max(0, -dx):4 - max(0, dx)]
        shifted[:, max(0, dy):max(0, dy) + src.shape[1], max(0, dx):max(0, dx) + src.shape[2]] = src
        np.testing.assert_array_equal(out[i], shifted)
    assert seen == {(t, l) for t in range(3) for l in range(3)}  # every offset occurs


def test_random_crop_without_padding_of_full_size_is_the_identity():
    x = position_images()
    out = RandomCrop((5, 6))(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(out, x)


def test_random_crop_keeps_integer_dtypes_and_is_contiguous():
    x = position_images(dtype=np.uint8)
    out = RandomCrop(4, padding=2)(x, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.flags.c_contiguous and out.flags.writeable


def test_random_crop_errors():
    with pytest.raises(ValueError, match=r"size \(6, 6\) is larger than the padded images \(5, 8\)"):
        RandomCrop(6, padding=1)(position_images(height=3), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"size must be >= 1, got 0"):
        RandomCrop(0)
    with pytest.raises(ValueError, match=r"padding must be >= 0, got -1"):
        RandomCrop(3, padding=-1)
    with pytest.raises(ValueError, match=r"pair \(height, width\), got \(1, 2, 3\)"):
        RandomCrop((1, 2, 3))
    with pytest.raises(ValueError, match=r"RandomCrop needs a batch of images of shape \(N, C, H, W\), "
                                         r"got shape \(4, 64\)"):
        RandomCrop(3)(np.zeros((4, 64)), np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"rng must be a numpy.random.Generator.*got int"):
        RandomCrop(3)(position_images(), 0)


# --------------------------------------------------------------------------
# RandomHorizontalFlip
# --------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_flip_mirrors_exactly_the_chosen_samples(p):
    x = position_images(n=2000, channels=2, height=3, width=4)
    out = RandomHorizontalFlip(p)(x, np.random.default_rng(11))
    chosen = np.random.default_rng(11).random(2000) < p
    np.testing.assert_array_equal(out[chosen], x[chosen][..., ::-1])
    np.testing.assert_array_equal(out[~chosen], x[~chosen])
    # Independently of the draw: each image is either itself or its mirror image.
    mirrored = np.all(out == x[..., ::-1], axis=(1, 2, 3))
    unchanged = np.all(out == x, axis=(1, 2, 3))
    assert np.all(mirrored ^ unchanged)
    np.testing.assert_array_equal(mirrored, chosen)
    assert abs(mirrored.mean() - p) < 0.05


def test_flip_errors():
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        RandomHorizontalFlip(1.5)
    with pytest.raises(TypeError, match=r"p must be a real number, got str"):
        RandomHorizontalFlip("half")
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\), got shape \(2, 3, 4\)"):
        RandomHorizontalFlip()(np.zeros((2, 3, 4)), np.random.default_rng(0))


# --------------------------------------------------------------------------
# GaussianNoise
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("std", [0.05, 1.0, 3.0])
def test_noise_has_the_requested_spread(dtype, std):
    x = position_images(n=100, channels=3, height=16, width=16, dtype=dtype)  # 76,800 values
    out = GaussianNoise(std)(x, np.random.default_rng(5))
    assert out.dtype == dtype and out.shape == x.shape
    noise = out.astype(np.float64) - x
    # Standard errors: mean std/sqrt(n) ~ 0.0036 std, std ~ 0.0026 std; allow about 5 of them.
    assert abs(noise.mean()) < 0.02 * std
    assert abs(noise.std() / std - 1.0) < 0.015
    # Independent per value: neighbours and samples are uncorrelated.
    flat = noise.ravel()
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.02


def test_noise_of_zero_std_returns_an_equal_copy_and_flat_inputs_work():
    x = np.random.default_rng(0).random((10, 64))
    out = GaussianNoise(0.0)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(out, x)


def test_noise_errors():
    with pytest.raises(ValueError, match=r"std must be >= 0, got -0.1"):
        GaussianNoise(-0.1)
    with pytest.raises(ValueError, match=r"std must be finite, got inf"):
        GaussianNoise(float("inf"))
    with pytest.raises(TypeError, match=r"floating-point inputs, got dtype uint8"):
        GaussianNoise(0.1)(np.zeros((2, 1, 2, 2), dtype=np.uint8), np.random.default_rng(0))


# --------------------------------------------------------------------------
# Compose and purity of every transform
# --------------------------------------------------------------------------

def test_compose_applies_in_order_with_one_generator():
    x = position_images(n=50)
    transforms = [RandomCrop(5, padding=2), RandomHorizontalFlip(), GaussianNoise(0.1)]
    composed = Compose(transforms)(x, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    expected = x
    for transform in transforms:
        expected = transform(expected, rng)
    np.testing.assert_array_equal(composed, expected)
    assert composed.shape == (50, 2, 5, 5)


def test_empty_compose_copies_and_errors():
    x = position_images()
    out = Compose([])(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(out, x)
    with pytest.raises(TypeError, match=r"transforms\[1\] must be callable as t\(x, rng\), got int"):
        Compose([RandomHorizontalFlip(), 3])
    with pytest.raises(TypeError, match=r"sequence of callables, got RandomHorizontalFlip"):
        Compose(RandomHorizontalFlip())


@pytest.mark.parametrize("transform", [
    RandomCrop(4, padding=2), RandomCrop((5, 6)), RandomHorizontalFlip(1.0), GaussianNoise(0.5),
    Compose([RandomCrop(5, padding=1), RandomHorizontalFlip(), GaussianNoise(0.1)]),
], ids=repr)
def test_transforms_never_modify_their_input(transform):
    x = position_images(n=20)
    before = x.copy()
    out = transform(x, np.random.default_rng(0))
    np.testing.assert_array_equal(x, before)
    assert not np.shares_memory(out, x)
    out[...] = -1.0  # the result is the caller's to change
    np.testing.assert_array_equal(x, before)
    x.setflags(write=False)  # read-only inputs are fine
    transform(x, np.random.default_rng(0))


# --------------------------------------------------------------------------
# ClassBalancedSampler
# --------------------------------------------------------------------------

IMBALANCED = np.repeat(np.arange(4), [700, 200, 90, 10])  # 1000 labels, 70:20:9:1


def test_sampler_weights_are_inverse_class_counts():
    sampler = ClassBalancedSampler(IMBALANCED)
    expected = 1.0 / np.array([700, 200, 90, 10])[IMBALANCED]
    np.testing.assert_array_equal(sampler.weights, expected)
    assert len(sampler) == 1000


def test_sampler_draws_classes_uniformly():
    sampler = ClassBalancedSampler(IMBALANCED, num_samples=40_000)
    indices = sampler.sample(np.random.default_rng(0))
    assert indices.shape == (40_000,) and indices.dtype == np.intp
    assert indices.min() >= 0 and indices.max() < 1000
    frequencies = np.bincount(IMBALANCED[indices], minlength=4) / 40_000
    # Binomial standard error sqrt(0.25 * 0.75 / 40000) ~ 0.0022; allow about 5 of them.
    np.testing.assert_allclose(frequencies, 0.25, atol=0.011)
    # Within the rarest class every sample is drawn about equally often (~1000 times each).
    rare = np.bincount(indices[IMBALANCED[indices] == 3], minlength=1000)[990:]
    assert rare.min() > 850 and rare.max() < 1150


def test_sampler_is_deterministic_and_checks_its_generator():
    sampler = ClassBalancedSampler(Dataset(np.zeros((1000, 1)), IMBALANCED))
    first = sampler.sample(np.random.default_rng([4, 2]))
    np.testing.assert_array_equal(first, sampler.sample(np.random.default_rng([4, 2])))
    assert not np.array_equal(first, sampler.sample(np.random.default_rng([4, 3])))
    with pytest.raises(TypeError, match=r"rng must be a numpy.random.Generator.*got int"):
        sampler.sample(4)


def test_sampler_without_replacement():
    sampler = ClassBalancedSampler(IMBALANCED, num_samples=40, replacement=False)
    indices = sampler.sample(np.random.default_rng(1))
    assert len(np.unique(indices)) == 40
    # The 10 rare samples carry as much weight as the 700 common ones, so most are drawn.
    assert (IMBALANCED[indices] == 3).sum() >= 5
    with pytest.raises(ValueError, match=r"num_samples must be <= the number of labels \(1000\) "
                                         r"when replacement=False, got 1001"):
        ClassBalancedSampler(IMBALANCED, num_samples=1001, replacement=False)


def test_sampler_never_draws_absent_classes_and_checks_labels():
    labels = np.array([0, 0, 0, 2])
    drawn = labels[ClassBalancedSampler(labels, num_samples=1000).sample(np.random.default_rng(0))]
    assert set(drawn.tolist()) == {0, 2}
    assert 400 < (drawn == 2).sum() < 600
    with pytest.raises(TypeError, match=r"labels must have an integer dtype, got float64"):
        ClassBalancedSampler(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels must contain labels >= 0, found -1"):
        ClassBalancedSampler(np.array([0, -1]))
    with pytest.raises(ValueError, match=r"at least 1 label"):
        ClassBalancedSampler(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match=r"num_samples must be >= 1, got 0"):
        ClassBalancedSampler(labels, num_samples=0)
    with pytest.raises(TypeError, match=r"replacement must be True or False, got 'yes'"):
        ClassBalancedSampler(labels, replacement="yes")


# --------------------------------------------------------------------------
# BatchLoader: order
# --------------------------------------------------------------------------

def collect(iterator):
    return [(xb.copy(), yb.copy()) for xb, yb in iterator]


@pytest.mark.parametrize("prefetch", [0, 1, 2, 5])
@pytest.mark.parametrize("batch_size, drop_last",
                         [(8, False), (8, True), (37, False), (100, False), (1, False)])
def test_without_transform_or_sampler_batches_are_the_trainers(prefetch, batch_size, drop_last):
    ds = image_dataset()
    loader = BatchLoader(ds, batch_size, seed=3, prefetch=prefetch, drop_last=drop_last)
    for epoch in (1, 2, 7):
        order = np.random.default_rng([3, epoch]).permutation(len(ds))
        x_epoch, y_epoch = ds.x[order], ds.y[order]
        starts = range(0, len(ds) - batch_size + 1 if drop_last else len(ds), batch_size)
        expected = [(x_epoch[s:s + batch_size], y_epoch[s:s + batch_size]) for s in starts]
        batches = run_with_timeout(lambda: collect(loader.epoch(epoch)))
        assert len(batches) == len(expected) == len(loader)
        for (xb, yb), (x_want, y_want) in zip(batches, expected):
            np.testing.assert_array_equal(xb, x_want)
            np.testing.assert_array_equal(yb, y_want)


def test_batches_match_what_the_trainer_feeds_its_model(monkeypatch):
    import fastnet as fn

    data = fn.load_digits().train[:100]
    model = fn.Sequential(fn.Linear(64, 10), seed=0)
    trainer = fn.Trainer(model, fn.optim.SGD(model.parameters(), lr=0.0), seed=5, progress=False)
    fed = []
    original = model.train_step

    def record(xb, yb, loss, optimizer):
        fed.append((np.array(xb, copy=True), np.array(yb, copy=True)))
        return original(xb, yb, loss, optimizer)

    monkeypatch.setattr(model, "train_step", record)
    trainer.fit(data, epochs=2, batch_size=16)
    loader = BatchLoader(data, 16, seed=5)
    ours = collect(loader.epoch(1)) + collect(loader.epoch(2))
    assert len(ours) == len(fed) == 14
    for (xb, yb), (x_fed, y_fed) in zip(ours, fed):
        np.testing.assert_array_equal(xb, x_fed)
        np.testing.assert_array_equal(yb, y_fed)


def test_without_shuffle_batches_come_in_order():
    ds = image_dataset()
    batches = collect(BatchLoader(ds, 10, shuffle=False).epoch(4))
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), ds.y)
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in batches]), ds.x)


def test_sampler_sets_the_order():
    labels = IMBALANCED
    ds = Dataset(np.arange(1000, dtype=np.float32).reshape(1000, 1), labels)
    sampler = ClassBalancedSampler(labels, num_samples=4000)
    loader = BatchLoader(ds, 64, seed=2, sampler=sampler)
    assert loader.num_samples == 4000 and len(loader) == 63
    batches = run_with_timeout(lambda: collect(loader.epoch(3)))
    order = sampler.sample(np.random.default_rng([2, 3]))
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), labels[order])
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in batches]).ravel(), order)
    frequencies = np.bincount(labels[order], minlength=4) / 4000
    np.testing.assert_allclose(frequencies, 0.25, atol=0.035)


def test_a_bad_sampler_is_reported():
    class OutOfRange:
        def sample(self, rng):
            return np.array([0, 5, 37])

    class Floats:
        def sample(self, rng):
            return np.array([0.5])

    ds = image_dataset()
    with pytest.raises(ValueError, match=r"indices in \[0, 37\], outside the dataset's range \[0, 36\]"):
        BatchLoader(ds, 4, sampler=OutOfRange()).epoch(0)
    with pytest.raises(ValueError, match=r"1-D integer array of indices, got dtype float64"):
        BatchLoader(ds, 4, sampler=Floats()).epoch(0)


# --------------------------------------------------------------------------
# BatchLoader: transforms, determinism, the worker thread
# --------------------------------------------------------------------------

AUGMENT = Compose([RandomCrop(8, padding=2), RandomHorizontalFlip(), GaussianNoise(0.1)])


def test_batch_i_is_transformed_with_the_generator_of_seed_epoch_i():
    ds = image_dataset()
    loader = BatchLoader(ds, 8, seed=4, transform=AUGMENT)
    batches = run_with_timeout(lambda: collect(loader.epoch(2)))
    order = np.random.default_rng([4, 2]).permutation(len(ds))
    for i, (xb, yb) in enumerate(batches):
        chosen = order[i * 8:(i + 1) * 8]
        np.testing.assert_array_equal(yb, ds.y[chosen])
        np.testing.assert_array_equal(xb, AUGMENT(ds.x[chosen], np.random.default_rng([4, 2, i])))


def jittery(transform, seed):
    """``transform`` with random sleeps (from its own generator), to vary the thread timing."""
    delays = np.random.default_rng(seed)

    def slow(x, rng):
        time.sleep(float(delays.uniform(0, 0.004)))
        return transform(x, rng)

    return slow


def test_same_seed_and_epoch_give_the_same_batches_whatever_the_prefetch_or_timing():
    ds = image_dataset(n=101)
    reference = collect(BatchLoader(ds, 7, seed=1, transform=AUGMENT, prefetch=0).epoch(5))
    for prefetch, jitter in [(0, 1), (1, 2), (2, 3), (3, None), (16, 4), (200, 5)]:
        transform = AUGMENT if jitter is None else jittery(AUGMENT, jitter)
        loader = BatchLoader(ds, 7, seed=1, transform=transform, prefetch=prefetch)
        batches = run_with_timeout(lambda: collect(loader.epoch(5)))
        assert len(batches) == len(reference) == 15
        for (xb, yb), (x_ref, y_ref) in zip(batches, reference):
            np.testing.assert_array_equal(xb, x_ref)
            np.testing.assert_array_equal(yb, y_ref)
    # Other epochs and seeds give other batches.
    other_epoch = collect(BatchLoader(ds, 7, seed=1, transform=AUGMENT).epoch(6))
    other_seed = collect(BatchLoader(ds, 7, seed=2, transform=AUGMENT).epoch(5))
    assert not np.array_equal(other_epoch[0][0], reference[0][0])
    assert not np.array_equal(other_seed[0][0], reference[0][0])


def test_the_dataset_is_never_modified():
    ds = image_dataset()
    before = ds.x.copy()

    def scribble(x, rng):
        x += 1.0  # a careless transform writing into the gathered batch
        return x

    for epoch in range(3):
        for xb, _ in BatchLoader(ds, 5, transform=Compose([AUGMENT, scribble])).epoch(epoch):
            xb[...] = 0.0
    np.testing.assert_array_equal(ds.x, before)


def test_assembly_runs_in_a_background_thread_only_when_prefetching():
    ds = image_dataset()
    where = []

    def note_thread(x, rng):
        where.append(threading.current_thread())
        return x.copy()

    run_with_timeout(lambda: collect(BatchLoader(ds, 8, transform=note_thread, prefetch=2).epoch(0)))
    assert len(where) == 5 and all(t.name == "fastnet-BatchLoader" for t in where)
    where.clear()
    collect(BatchLoader(ds, 8, transform=note_thread, prefetch=0).epoch(0))
    assert where == [threading.current_thread()] * 5


@pytest.mark.parametrize("prefetch", [1, 2, 4])
def test_the_queue_is_bounded_by_prefetch(prefetch):
    ds = image_dataset(n=100)
    made = []

    def count(x, rng):
        made.append(1)
        return x

    with BatchLoader(ds, 2, transform=count, prefetch=prefetch) as loader:
        iterator = loader.epoch(0)
        assert wait_until(lambda: len(made) >= prefetch)
        time.sleep(0.3)  # the consumer takes nothing; the worker must stop producing
        # ``prefetch`` batches wait in the queue and at most one more waits to be put.
        assert len(made) <= prefetch + 1
        next(iterator)
        assert wait_until(lambda: len(made) >= prefetch + 1)
        time.sleep(0.1)
        assert len(made) <= prefetch + 2


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_an_exception_in_the_worker_is_raised_in_the_consumer(prefetch):
    ds = image_dataset()

    class Broken(Exception):
        pass

    def fail_on_third(x, rng):
        if fail_on_third.calls == 2:
            raise Broken("transform failed on purpose")
        fail_on_third.calls += 1
        return x

    fail_on_third.calls = 0
    iterator = BatchLoader(ds, 4, transform=fail_on_third, prefetch=prefetch).epoch(0)
    received = []

    def consume():
        for batch in iterator:
            received.append(batch)

    with pytest.raises(Broken, match="transform failed on purpose") as caught:
        run_with_timeout(consume)
    assert len(received) == 2  # the batches before the failing one arrive first
    if hasattr(caught.value, "__notes__"):
        assert "batch 2 of epoch 0" in caught.value.__notes__[-1]
    assert not iterator.running
    assert list(iterator) == []  # the iteration is over


def test_a_transform_changing_the_batch_size_is_reported():
    ds = image_dataset()
    iterator = BatchLoader(ds, 4, transform=lambda x, rng: x[:1]).epoch(0)
    with pytest.raises(ValueError, match=r"returned shape \(1, 3, 8, 8\) for a batch of 4 samples"):
        run_with_timeout(lambda: next(iterator))


def slow_loader(ds, prefetch=2):
    def slow(x, rng):
        time.sleep(0.01)
        return x

    return BatchLoader(ds, 1, transform=slow, prefetch=prefetch)


def test_close_after_stopping_early_ends_the_thread():
    ds = image_dataset(n=500)
    iterator = slow_loader(ds).epoch(0)
    first = run_with_timeout(lambda: next(iterator))
    assert first[0].shape == (1, 3, 8, 8) and iterator.running
    run_with_timeout(iterator.close, seconds=2.0)
    assert not iterator.running and not loader_threads()
    with pytest.raises(StopIteration):
        next(iterator)


def test_breaking_out_of_a_loop_and_dropping_the_iterator_ends_the_thread():
    ds = image_dataset(n=500)
    loader = slow_loader(ds)

    def consume_two():
        for i, _ in enumerate(loader.epoch(0)):
            if i == 1:
                break

    run_with_timeout(consume_two)
    gc.collect()
    assert wait_until(lambda: not loader_threads(), seconds=2.0)


def test_the_context_managers_close_open_epochs():
    ds = image_dataset(n=500)
    with slow_loader(ds) as loader:
        kept = [loader.epoch(e) for e in range(3)]  # never iterated: threads wait on full queues
        assert wait_until(lambda: len(loader_threads()) == 3)
    assert not loader_threads() and not any(it.running for it in kept)

    with slow_loader(ds).epoch(1) as iterator:
        next(iterator)
    assert not iterator.running


def test_a_finished_epoch_leaves_no_thread():
    ds = image_dataset()
    iterator = BatchLoader(ds, 8, transform=AUGMENT).epoch(0)
    assert len(run_with_timeout(lambda: collect(iterator))) == 5
    assert not iterator.running


# --------------------------------------------------------------------------
# BatchLoader: arguments
# --------------------------------------------------------------------------

def test_loader_argument_errors():
    ds = image_dataset()
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        BatchLoader(ds, 0)
    with pytest.raises(TypeError, match=r"batch_size must be an integer, got float 2.0"):
        BatchLoader(ds, 2.0)
    with pytest.raises(ValueError, match=r"prefetch must be >= 0, got -1"):
        BatchLoader(ds, 4, prefetch=-1)
    with pytest.raises(ValueError, match=r"seed must be >= 0, got -3"):
        BatchLoader(ds, 4, seed=-3)
    with pytest.raises(TypeError, match=r"shuffle must be True or False, got 'no'"):
        BatchLoader(ds, 4, shuffle="no")
    with pytest.raises(TypeError, match=r"transform must be callable as transform\(x, rng\), got str"):
        BatchLoader(ds, 4, transform="flip")
    with pytest.raises(TypeError, match=r"sampler must have a sample\(rng\) method.*got list"):
        BatchLoader(ds, 4, sampler=[1, 2])
    with pytest.raises(TypeError, match=r"dataset must have arrays x and y.*got ndarray"):
        BatchLoader(ds.x, 4)
    with pytest.raises(ValueError, match=r"epoch must be >= 0, got -1"):
        BatchLoader(ds, 4).epoch(-1)
