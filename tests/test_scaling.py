"""Tests for the scalers of fastnet.data: formulas, train-only fitting, state, dtypes and errors."""

import numpy as np
import pytest

from fastnet.data import Dataset, MinMaxScaler, Splits, Standardizer, scale_splits

pytestmark = pytest.mark.filterwarnings("error")  # no divide-by-zero or invalid-value warnings


def features(seed=0, n=200, shape=(5,), dtype=np.float64, loc=3.0, spread=2.0):
    rng = np.random.default_rng(seed)
    x = loc + spread * rng.standard_normal((n,) + shape) * np.arange(1, shape[-1] + 1)
    return x.astype(dtype)


def images(seed=0, n=30, channels=3, size=6, dtype=np.float32):
    rng = np.random.default_rng(seed)
    per_channel = np.arange(channels).reshape(1, channels, 1, 1)
    noise = rng.standard_normal((n, channels, size, size))
    return (per_channel * 10 + (1 + per_channel) * noise).astype(dtype)


# --------------------------------------------------------------------------
# Standardizer
# --------------------------------------------------------------------------

def test_standardizer_matches_the_formula_per_feature():
    x = features()
    scaler = Standardizer().fit(x)
    np.testing.assert_array_equal(scaler.mean_, x.mean(axis=0))
    np.testing.assert_array_equal(scaler.std_, x.std(axis=0))
    np.testing.assert_array_equal(scaler.transform(x), (x - x.mean(axis=0)) / x.std(axis=0))
    scaled = scaler.transform(x)
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(scaled.std(axis=0), 1.0, rtol=1e-12)


def test_standardizer_keeps_the_shape_of_multidimensional_samples():
    x = features(shape=(2, 3))
    scaler = Standardizer().fit(x)
    assert scaler.mean_.shape == (2, 3)
    out = scaler.transform(x)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, (x - x.mean(axis=0)) / x.std(axis=0), rtol=1e-12)


def test_standardizer_per_channel_uses_channel_statistics():
    x = images(dtype=np.float64)
    scaler = Standardizer(per="channel").fit(x)
    assert scaler.mean_.shape == (3,)
    np.testing.assert_array_equal(scaler.mean_, x.mean(axis=(0, 2, 3)))
    np.testing.assert_array_equal(scaler.std_, x.std(axis=(0, 2, 3)))
    expected = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(scaler.transform(x), expected, rtol=1e-12, atol=1e-12)
    # Other image sizes with the same channels are fine (e.g. after a crop).
    other = images(seed=1, size=4, dtype=np.float64)
    np.testing.assert_allclose(
        scaler.transform(other),
        (other - scaler.mean_.reshape(1, 3, 1, 1)) / scaler.std_.reshape(1, 3, 1, 1), rtol=1e-12)
    with pytest.raises(ValueError, match=r"got 2 channel\(s\).*fitted on 3"):
        scaler.transform(images(channels=2, dtype=np.float64))


def test_per_channel_needs_images():
    with pytest.raises(ValueError, match=r"per='channel'.*\(N, C, H, W\).*got shape \(10, 4\)"):
        Standardizer(per="channel").fit(np.zeros((10, 4)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("scaler_class", [Standardizer, MinMaxScaler])
def test_dtype_is_preserved(dtype, scaler_class):
    x = features(dtype=dtype)
    scaler = scaler_class().fit(x)
    for out in (scaler.transform(x), scaler.fit_transform(x), scaler.inverse_transform(x)):
        assert out.dtype == dtype
    exact = scaler_class().fit(x.astype(np.float64)).transform(x.astype(np.float64))
    tolerance = {np.float16: 1e-2, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(scaler.transform(x), exact, rtol=tolerance, atol=tolerance)


def test_float32_statistics_are_computed_in_float64():
    x = features(dtype=np.float32, n=5000, loc=1000.0)
    scaler = Standardizer().fit(x)
    assert scaler.mean_.dtype == np.float64
    np.testing.assert_array_equal(scaler.mean_, x.astype(np.float64).mean(axis=0))


def test_constant_features_are_only_centred():
    x = features()
    x[:, 1] = 7.0
    scaler = Standardizer().fit(x)
    assert scaler.std_[1] == 0.0 and scaler.scale_[1] == 1.0
    out = scaler.transform(x)
    assert np.all(out[:, 1] == 0.0)
    other = scaler.transform(np.full((2, 5), 9.0))
    assert np.all(np.isfinite(other)) and np.all(other[:, 1] == 2.0)
    np.testing.assert_allclose(scaler.inverse_transform(out), x, rtol=1e-12)


def test_eps_is_the_threshold_for_constant_features():
    x = np.array([[1.0, 1.0], [1.0 + 2e-9, 1.0 + 2e-3]])
    scaler = Standardizer(eps=1e-8).fit(x)  # std of column 0 is 1e-9
    assert scaler.scale_.tolist() == [1.0, scaler.std_[1]]
    assert Standardizer(eps=0.0).fit(x).scale_[0] == pytest.approx(1e-9)


def test_a_single_sample_fits_without_dividing_by_zero():
    scaler = Standardizer().fit(np.array([[2.0, -1.0]]))
    assert scaler.transform(np.array([[2.0, -1.0]])).tolist() == [[0.0, 0.0]]
    minmax = MinMaxScaler().fit(np.array([[2.0, -1.0]]))
    assert minmax.transform(np.array([[2.0, -1.0]])).tolist() == [[0.0, 0.0]]


# --------------------------------------------------------------------------
# MinMaxScaler
# --------------------------------------------------------------------------

@pytest.mark.parametrize("feature_range", [(0, 1), (-1, 1), (2.5, 4.0)])
def test_minmax_matches_the_formula(feature_range):
    low, high = feature_range
    x = features()
    scaler = MinMaxScaler(feature_range=feature_range).fit(x)
    np.testing.assert_array_equal(scaler.data_min_, x.min(axis=0))
    np.testing.assert_array_equal(scaler.data_max_, x.max(axis=0))
    expected = (x - x.min(axis=0)) / (x.max(axis=0) - x.min(axis=0)) * (high - low) + low
    out = scaler.transform(x)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out.min(axis=0), low)
    np.testing.assert_allclose(out.max(axis=0), high, rtol=1e-12)
    np.testing.assert_allclose(scaler.inverse_transform(out), x, rtol=1e-12)


def test_minmax_per_channel_and_constant_features():
    x = images(dtype=np.float64)
    scaler = MinMaxScaler(per="channel").fit(x)
    np.testing.assert_array_equal(scaler.data_min_, x.min(axis=(0, 2, 3)))
    out = scaler.transform(x)
    np.testing.assert_array_equal(out.min(axis=(0, 2, 3)), 0.0)
    np.testing.assert_allclose(out.max(axis=(0, 2, 3)), 1.0, rtol=1e-12)

    flat = features()
    flat[:, 2] = -3.0
    constant = MinMaxScaler(feature_range=(-1, 1)).fit(flat)
    assert np.all(constant.transform(flat)[:, 2] == -1.0)
    assert constant.transform(np.full((1, 5), -2.0))[0, 2] == 1.0  # (-2 - -3) / 1 * 2 - 1


# --------------------------------------------------------------------------
# Both scalers: purity, NaN, state, errors
# --------------------------------------------------------------------------

@pytest.mark.parametrize("scaler", [Standardizer(), MinMaxScaler(), Standardizer(per="channel")])
def test_inputs_are_not_modified(scaler):
    x = images(dtype=np.float32)
    before = x.copy()
    out = scaler.fit_transform(x)
    back = scaler.inverse_transform(out)
    np.testing.assert_array_equal(x, before)
    assert not np.shares_memory(out, x) and not np.shares_memory(back, out)


@pytest.mark.parametrize("scaler_class", [Standardizer, MinMaxScaler])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(scaler_class, bad):
    x = features()
    broken = x.copy()
    broken[17, 3] = bad
    with pytest.raises(ValueError, match=r"non-finite.*sample 17"):
        scaler_class().fit(broken)
    scaler = scaler_class().fit(x)
    with pytest.raises(ValueError, match=r"transform.*non-finite.*sample 17"):
        scaler.transform(broken)


@pytest.mark.parametrize("scaler_class", [Standardizer, MinMaxScaler])
def test_clear_errors(scaler_class):
    scaler = scaler_class()
    with pytest.raises(RuntimeError, match="not fitted"):
        scaler.transform(np.zeros((2, 3)))
    with pytest.raises(RuntimeError, match="not fitted"):
        scaler.state_dict()
    with pytest.raises(TypeError, match=r"floating-point x, got dtype int64"):
        scaler.fit(np.arange(6).reshape(3, 2))
    with pytest.raises(ValueError, match=r"at least 1 sample"):
        scaler.fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"shape \(N, features...\).*got shape \(3,\)"):
        scaler.fit(np.zeros(3))
    scaler.fit(np.random.default_rng(0).random((4, 3)))
    with pytest.raises(ValueError, match=r"samples of shape \(2,\).*fitted on samples of shape \(3,\)"):
        scaler.transform(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"per must be 'feature' or 'channel', got 'pixel'"):
        scaler_class(per="pixel")


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match=r"eps must be >= 0, got -1.0"):
        Standardizer(eps=-1)
    with pytest.raises(TypeError, match=r"eps must be a real number, got str"):
        Standardizer(eps="small")
    with pytest.raises(ValueError, match=r"low < high, got \(1.0, 0.0\)"):
        MinMaxScaler(feature_range=(1, 0))
    with pytest.raises(ValueError, match=r"feature_range\[1\] must be finite, got nan"):
        MinMaxScaler(feature_range=(0, float("nan")))
    with pytest.raises(TypeError, match=r"feature_range must be a pair"):
        MinMaxScaler(feature_range="ab")
    with pytest.raises(TypeError, match=r"feature_range must be a pair"):
        MinMaxScaler(feature_range=(0, 1, 2))


@pytest.mark.parametrize("make", [
    lambda: Standardizer(eps=1e-3),
    lambda: Standardizer(per="channel"),
    lambda: MinMaxScaler(feature_range=(-2, 3)),
    lambda: MinMaxScaler(per="channel"),
])
def test_state_dict_round_trip(make):
    x = images(dtype=np.float32)
    scaler = make().fit(x)
    state = scaler.state_dict()
    assert state["type"] == type(scaler).__name__
    restored = type(scaler)()  # default configuration: the state brings its own
    restored.load_state_dict(state)
    assert repr(restored) == repr(scaler)
    np.testing.assert_array_equal(restored.transform(x), scaler.transform(x))
    # The state holds copies: changing it does not change the scaler.
    for value in state.values():
        if isinstance(value, np.ndarray):
            value += 1.0
    np.testing.assert_array_equal(restored.transform(x), scaler.transform(x))


def test_load_state_dict_checks_its_input():
    state = Standardizer().fit(features()).state_dict()
    with pytest.raises(ValueError, match=r"state is for 'Standardizer', not 'MinMaxScaler'"):
        MinMaxScaler().load_state_dict(state)
    with pytest.raises(ValueError, match=r"lacks the entry std"):
        Standardizer().load_state_dict({k: v for k, v in state.items() if k != "std"})
    with pytest.raises(ValueError, match=r"different shapes"):
        Standardizer().load_state_dict(dict(state, std=np.ones(3)))
    with pytest.raises(ValueError, match=r"non-finite values in 'mean'"):
        Standardizer().load_state_dict(dict(state, mean=np.full(5, np.nan)))
    with pytest.raises(ValueError, match=r"negative standard deviations"):
        Standardizer().load_state_dict(dict(state, std=-np.ones(5)))
    untouched = Standardizer(eps=0.5)
    with pytest.raises(ValueError):
        untouched.load_state_dict(dict(state, eps=-1.0))
    assert untouched.eps == 0.5 and not untouched.fitted


# --------------------------------------------------------------------------
# scale_splits: fitted on the training split only
# --------------------------------------------------------------------------

def shifted_splits():
    """Splits whose validation and test inputs have other means and spreads than training."""
    rng = np.random.default_rng(7)
    train = Dataset(rng.normal(0.0, 1.0, (300, 4)).astype(np.float32), rng.integers(0, 3, 300), num_classes=4)
    val = Dataset(rng.normal(5.0, 3.0, (100, 4)).astype(np.float32), rng.integers(0, 3, 100), num_classes=4)
    test = Dataset(rng.normal(-10.0, 0.5, (80, 4)).astype(np.float32), rng.integers(0, 3, 80), num_classes=4)
    return Splits(train, val, test)


def test_scale_splits_fits_on_the_training_split_only():
    splits = shifted_splits()
    originals = [ds.x.copy() for ds in splits]
    scaled, scaler = scale_splits(splits, Standardizer())

    train_mean = splits.train.x.astype(np.float64).mean(axis=0)
    train_std = splits.train.x.astype(np.float64).std(axis=0)
    np.testing.assert_array_equal(scaler.mean_, train_mean)
    np.testing.assert_array_equal(scaler.std_, train_std)
    # The statistics of the whole data, or of val/test, are far from what was fitted.
    everything = np.concatenate([ds.x for ds in splits]).astype(np.float64)
    for other in (everything, splits.val.x, splits.test.x):
        assert np.abs(other.mean(axis=0) - scaler.mean_).min() > 0.5

    assert scaled.train.x.dtype == np.float32
    np.testing.assert_allclose(scaled.train.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(scaled.train.x.std(axis=0), 1.0, rtol=1e-5)
    for name in ("val", "test"):
        raw, out = getattr(splits, name).x, getattr(scaled, name).x
        np.testing.assert_allclose(out, (raw - train_mean) / train_std, rtol=1e-5, atol=1e-5)
        assert abs(out.mean()) > 1.0  # not standardised with their own statistics
    for before, after, original in zip(splits, scaled, originals):
        np.testing.assert_array_equal(after.y, before.y)
        assert after.num_classes == before.num_classes == 4
        np.testing.assert_array_equal(before.x, original)  # the given datasets are untouched


def test_scale_splits_passes_only_training_inputs_to_fit():
    class Spy:
        def __init__(self):
            self.fitted_on = []

        def fit(self, x):
            self.fitted_on.append(x)
            return self

        def transform(self, x):
            return x * 2.0

    splits = shifted_splits()
    spy = Spy()
    scaled, returned = scale_splits(splits, spy)
    assert returned is spy
    assert len(spy.fitted_on) == 1 and spy.fitted_on[0] is splits.train.x
    np.testing.assert_array_equal(scaled.test.x, splits.test.x * 2.0)


def test_scale_splits_with_minmax_and_missing_splits():
    splits = shifted_splits()
    scaled, scaler = scale_splits(Splits(splits.train, None, splits.test), MinMaxScaler())
    assert scaled.val is None
    assert scaled.train.x.min() == 0.0 and scaled.train.x.max() == pytest.approx(1.0)
    assert scaled.test.x.max() < 0.0  # the test data lies below the training range
    np.testing.assert_array_equal(scaler.data_min_, splits.train.x.min(axis=0))


def test_scale_splits_errors():
    splits = shifted_splits()
    with pytest.raises(TypeError, match=r"splits must be a fastnet.data.Splits, got tuple"):
        scale_splits((splits.train, None, None), Standardizer())
    with pytest.raises(TypeError, match=r"fit\(x\) and transform\(x\).*got object without fit\(\)"):
        scale_splits(splits, object())
