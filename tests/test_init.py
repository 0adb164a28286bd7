"""Parameter initialisation: the schemes of ``init=`` / ``bias_init=`` on Linear and Conv2d (and as
a model's defaults), ``fastnet.init.calculate_gain`` and ``fastnet.init.apply``.

Each scheme's samples are checked against its formula (bounds, mean, standard deviation, shape of
the distribution) on layers large enough that the tolerances, six standard errors, are tight; the
generator itself against a numpy transcription of it; and the draws for reproducibility: the
same for a seed, on one or two threads, in float32 (rounded) and float64, different across seeds.
"""

import json
import math

import numpy as np
import pytest
from scipy import stats

import fastnet as fn
from fastnet import _core
from fastnet.layers import layer_from_config

GAINS = {"linear": 1, "conv2d": 1, "sigmoid": 1, "tanh": 5 / 3, "relu": math.sqrt(2),
         "selu": 0.75}

# (layer factory, fan_in, fan_out): PyTorch's fans, dim 1 and dim 0 of the weight times the
# kernel's area (groups divide fan_in only).
LAYERS = {
    "linear": (lambda **kw: fn.Linear(300, 400, **kw), 300, 400),
    "conv": (lambda **kw: fn.Conv2d(64, 256, 3, groups=2, **kw), 32 * 9, 256 * 9),
}


def weights(layer, dtype="float32", seed=0, name="0.weight", **model_args):
    model = fn.Sequential(layer, dtype=dtype, seed=seed,
                          input_shape=None if isinstance(layer, fn.Linear) else (64, 3, 3),
                          **model_args)
    return model.state_dict()[name].astype(np.float64).ravel()


def expected(scheme, fan_in, fan_out):
    """("uniform", low, high), ("normal", mean, std) or ("constant", value) from the formulas of
    torch.nn.init."""
    name, p = scheme["scheme"], scheme
    if name == "default":
        return "uniform", -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in)
    if name == "uniform":
        return "uniform", p.get("a", 0), p.get("b", 1)
    if name == "normal":
        return "normal", p.get("mean", 0), p.get("std", 1)
    if name in ("normal_fan_in", "lecun_normal"):
        return "normal", 0, math.sqrt(1 / fan_in)
    if name == "lecun_uniform":
        return "uniform", -math.sqrt(3 / fan_in), math.sqrt(3 / fan_in)
    if name.startswith("xavier"):
        std = p.get("gain", 1) * math.sqrt(2 / (fan_in + fan_out))
        return ("normal", 0, std) if name.endswith("normal") else \
            ("uniform", -math.sqrt(3) * std, math.sqrt(3) * std)
    if name.startswith(("kaiming", "he")):
        fan = fan_in if p.get("mode", "fan_in") == "fan_in" else fan_out
        gain = fn.init.calculate_gain(p.get("nonlinearity", "leaky_relu"), p.get("a", 0))
        std = gain / math.sqrt(fan)
        return ("normal", 0, std) if name.endswith("normal") else \
            ("uniform", -math.sqrt(3) * std, math.sqrt(3) * std)
    if name in ("zeros", "ones"):
        return "constant", float(name == "ones")
    if name == "constant":
        return "constant", p["value"]
    raise AssertionError(name)


def check_distribution(values, dist, what):
    n = values.size
    if dist[0] == "constant":
        np.testing.assert_array_equal(values, np.float32(dist[1]), err_msg=what)
        return
    if dist[0] == "uniform":
        low, high = dist[1], dist[2]
        width = high - low
        assert values.min() >= np.float32(low) and values.max() <= np.float32(high), what
        # Fills the range: the extremes of n uniforms are within width * 20 / n of the bounds.
        assert values.min() < low + 20 * width / n and values.max() > high - 20 * width / n, what
        mean, std = (low + high) / 2, width / math.sqrt(12)
        ks = stats.kstest((values - low) / width, "uniform")
    else:
        mean, std = dist[1], dist[2]
        ks = stats.kstest((values - mean) / std, "norm")
    assert abs(values.mean() - mean) < 6 * std / math.sqrt(n), (what, values.mean(), mean)
    assert abs(values.std() / std - 1) < 6 / math.sqrt(2 * n), (what, values.std(), std)
    # The whole shape of the distribution: the Kolmogorov-Smirnov distance against the formula's
    # distribution, below its 0.1% critical value.
    assert ks.statistic < 1.95 / math.sqrt(n), (what, ks)


WEIGHT_SCHEMES = [
    "default", {"scheme": "uniform", "a": -0.3, "b": 0.1}, "uniform",
    {"scheme": "normal", "mean": 0.5, "std": 0.02}, "normal", "normal_fan_in", "lecun_uniform",
    "lecun_normal", "xavier_uniform", {"scheme": "xavier_uniform", "gain": 2.5}, "xavier_normal",
    {"scheme": "xavier_normal", "gain": 0.5}, "kaiming_uniform", "kaiming_normal",
    {"scheme": "he_uniform", "mode": "fan_out", "nonlinearity": "relu"},
    {"scheme": "he_normal", "mode": "fan_in", "nonlinearity": "relu"},
    {"scheme": "kaiming_normal", "mode": "fan_out", "nonlinearity": "leaky_relu", "a": 0.2},
    {"scheme": "kaiming_uniform", "nonlinearity": "tanh"},
    {"scheme": "he_normal", "nonlinearity": "selu"},
    {"scheme": "kaiming_normal", "nonlinearity": "sigmoid"},
    {"scheme": "he_uniform", "nonlinearity": "linear", "mode": "fan_out"},
    "zeros", "ones", {"scheme": "constant", "value": -0.75},
]


def scheme_id(scheme):
    if isinstance(scheme, str):
        return scheme
    return "-".join(str(v) for v in scheme.values())


@pytest.mark.parametrize("scheme", WEIGHT_SCHEMES, ids=scheme_id)
@pytest.mark.parametrize("kind", list(LAYERS))
def test_weight_schemes_follow_their_formulas(scheme, kind):
    factory, fan_in, fan_out = LAYERS[kind]
    values = weights(factory(init=scheme))
    check_distribution(values, expected(fn.init.check_scheme(scheme), fan_in, fan_out),
                       f"{kind} {scheme}")


BIAS_SCHEMES = ["default", "zeros", "ones", {"scheme": "constant", "value": 0.1},
                {"scheme": "uniform", "a": -2, "b": -1}, {"scheme": "normal", "std": 3.0}]


@pytest.mark.parametrize("scheme", BIAS_SCHEMES, ids=scheme_id)
def test_bias_schemes_follow_their_formulas(scheme):
    # A wide layer, for enough bias values; default uses the weight's fan_in, as PyTorch.
    values = weights(fn.Linear(50, 40000, bias_init=scheme), name="0.bias")
    check_distribution(values, expected(fn.init.check_scheme(scheme), 50, 40000), str(scheme))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_default_is_pytorch_default_and_unchanged_by_naming_it(kind):
    factory, fan_in, _ = LAYERS[kind]
    plain = weights(factory())
    np.testing.assert_array_equal(plain, weights(factory(init="default")))
    np.testing.assert_array_equal(plain, weights(factory(init={"scheme": "default"})))
    check_distribution(plain, expected({"scheme": "default"}, fan_in, 0), "default")


def test_kaiming_defaults_are_pytorch_defaults():
    """kaiming_uniform_ defaults to a=0, mode="fan_in", nonlinearity="leaky_relu": gain sqrt(2)."""
    named = weights(fn.Linear(300, 400, init={"scheme": "kaiming_uniform", "a": 0,
                                               "mode": "fan_in",
                                               "nonlinearity": "leaky_relu"}))
    np.testing.assert_array_equal(weights(fn.Linear(300, 400, init="kaiming_uniform")), named)
    np.testing.assert_array_equal(weights(fn.Linear(300, 400, init="he_uniform")), named)
    assert named.max() == pytest.approx(math.sqrt(6 / 300), rel=1e-3)


@pytest.mark.parametrize("shape", [(400, 300), (256, 32, 3, 3), (8, 1, 5, 2)], ids=str)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_fans_are_pytorch_fans(shape, mode):
    """The weight (out, in / groups, kh, kw) of a grouped convolution, or a linear layer's."""
    torch = pytest.importorskip("torch")
    fans = dict(zip(("fan_in", "fan_out"),
                    torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))))
    out, group_in = shape[:2]
    init = {"scheme": "kaiming_uniform", "mode": mode, "nonlinearity": "linear"}
    layer = fn.Linear(group_in, out, init=init) if len(shape) == 2 else \
        fn.Conv2d(2 * group_in, out, shape[2:], groups=2, init=init)
    model = fn.Sequential(layer, dtype="float64",
                          input_shape=None if len(shape) == 2 else (2 * group_in, 5, 5))
    largest = np.abs(model.state_dict()["0.weight"]).max()
    bound = math.sqrt(3 / fans[mode])
    assert largest <= bound
    if np.prod(shape) > 10000:
        assert largest > 0.999 * bound


# ------------------------------------------------------------------------------ the generator

M64 = (1 << 64) - 1


def mix64(z):
    """splitmix64's finaliser on Python ints or uint64 arrays (internal.h, fn_mix64)."""
    if isinstance(z, int):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(seed, tensor_name, counters):
    """fn_rng_uniform(seed, stream, counter) for the stream of a tensor: FNV-1a of its name."""
    stream = 0xCBF29CE484222325
    for byte in tensor_name.encode():
        stream = ((stream ^ byte) * 0x100000001B3) & M64
    key = mix64(seed ^ mix64((stream + 0x9E3779B97F4A7C15) & M64))
    bits = mix64(np.uint64(key) + counters.astype(np.uint64))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def test_values_are_the_documented_function_of_seed_name_and_index():
    model = fn.Sequential(fn.Linear(30, 20, init={"scheme": "uniform", "a": -1, "b": 2}),
                          fn.Linear(20, 10, init={"scheme": "normal", "mean": 1, "std": 3}),
                          dtype="float64", seed=12345)
    sd = model.state_dict()
    i = np.arange(600)
    np.testing.assert_allclose(sd["0.weight"].ravel(), -1 + 3 * uniforms(12345, "0.weight", i),
                               rtol=1e-15, atol=1e-15)
    i = np.arange(200)
    u1, u2 = uniforms(12345, "1.weight", 2 * i), uniforms(12345, "1.weight", 2 * i + 1)
    normal = np.sqrt(-2 * np.log(1 - u1)) * np.cos(2 * np.pi * u2)
    np.testing.assert_allclose(sd["1.weight"].ravel(), 1 + 3 * normal, rtol=1e-13, atol=1e-13)
    bound = 1 / math.sqrt(30)
    np.testing.assert_allclose(sd["0.bias"], -bound + 2 * bound * uniforms(12345, "0.bias",
                                                                          np.arange(20)),
                               rtol=1e-15, atol=1e-15)


def test_normal_draws_are_normal_in_the_tails():
    values = weights(fn.Linear(1000, 1000, init="normal"), dtype="float64")
    n = values.size
    for k, p in ((1, 0.682689492), (2, 0.954499736), (3, 0.997300204), (4, 0.999936657)):
        inside = np.mean(np.abs(values) < k)
        assert abs(inside - p) < 6 * math.sqrt(p * (1 - p) / n), (k, inside)
    assert abs(stats.kurtosis(values)) < 6 * math.sqrt(24 / n)
    assert abs(stats.skew(values)) < 6 * math.sqrt(6 / n)


# ------------------------------------------------------------------------------ reproducibility

REPRO_SCHEMES = ["default", "normal", "xavier_uniform", "he_normal", "lecun_normal"]


@pytest.mark.parametrize("scheme", REPRO_SCHEMES)
def test_same_seed_same_values_and_other_seeds_differ(scheme):
    layer = lambda: fn.Conv2d(64, 32, 3, init=scheme, bias_init="normal")  # noqa: E731
    a = weights(layer(), seed=7)
    np.testing.assert_array_equal(a, weights(layer(), seed=7))
    b = weights(layer(), seed=8)
    assert np.mean(a == b) < 1e-3
    bias = weights(layer(), seed=7, name="0.bias")
    np.testing.assert_array_equal(bias, weights(layer(), seed=7, name="0.bias"))
    assert not np.array_equal(bias, weights(layer(), seed=8, name="0.bias"))


@pytest.mark.parametrize("scheme", REPRO_SCHEMES)
def test_values_do_not_depend_on_the_thread_count(scheme):
    """500,000 weights: the fills run on two threads when they may."""
    results = []
    for count in (1, 2):
        fn.set_num_threads(count)
        results.append(weights(fn.Linear(1000, 500, init=scheme), seed=3))
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("scheme", REPRO_SCHEMES)
def test_float32_values_are_the_float64_values_rounded(scheme):
    layer = lambda: fn.Linear(100, 50, init=scheme)  # noqa: E731
    np.testing.assert_array_equal(weights(layer(), "float32"),
                                  weights(layer(), "float64").astype(np.float32))


def test_a_tensor_values_do_not_depend_on_other_layers():
    alone = fn.Sequential(fn.Linear(8, 4, init="he_normal"), seed=5).state_dict()["0.weight"]
    wider = fn.Sequential(fn.Linear(8, 4, init="he_normal"), fn.ReLU(),
                          fn.Linear(4, 3, init="xavier_normal"), seed=5)
    np.testing.assert_array_equal(wider.state_dict()["0.weight"], alone)


# ------------------------------------------------------------------------------ model defaults

def test_model_defaults_apply_to_layers_without_their_own():
    model = fn.Sequential(fn.Linear(4, 3), fn.ReLU(), fn.Linear(3, 3, init="zeros"),
                          fn.Linear(3, 2, bias=False), init="ones",
                          bias_init={"scheme": "constant", "value": 0.5})
    sd = model.state_dict()
    assert np.all(sd["0.weight"] == 1) and np.all(sd["0.bias"] == 0.5)
    assert np.all(sd["2.weight"] == 0) and np.all(sd["2.bias"] == 0.5)
    assert np.all(sd["3.weight"] == 1) and "3.bias" not in sd
    nodes = model.compiled().nodes
    assert nodes[2]["init"] == {"scheme": "zeros"} and "bias_init" not in nodes[3]


def test_nested_model_defaults_come_before_the_outer_ones():
    block = fn.Residual(fn.Sequential(fn.Conv2d(2, 2, 1), bias_init="ones", init="zeros"))
    model = fn.Sequential(block, fn.Flatten(), fn.Linear(8, 2), init="ones", bias_init="zeros",
                          input_shape=(2, 2, 2))
    sd = model.state_dict()
    assert np.all(sd["0.main.0.weight"] == 0) and np.all(sd["0.main.0.bias"] == 1)
    assert np.all(sd["2.weight"] == 1) and np.all(sd["2.bias"] == 0)
    rebuilt = layer_from_config(model.config())
    assert rebuilt.init == {"scheme": "ones"} and rebuilt.layers[0].main.init == {
        "scheme": "zeros"}


def test_init_survives_save_load_and_config(tmp_path):
    model = fn.Sequential(fn.Linear(6, 5, init={"scheme": "normal", "std": 0.1},
                                    bias_init="zeros"), fn.Tanh(), fn.Linear(5, 2),
                          init="xavier_uniform", seed=4)
    assert repr(model.layers[0]) == \
        "Linear(6, 5, init={'scheme': 'normal', 'std': 0.1}, bias_init='zeros')"
    path = tmp_path / "m.safetensors"
    fn.save(model, path)
    loaded = fn.load(path)
    assert repr(loaded) == repr(model)
    assert loaded.init == {"scheme": "xavier_uniform"} and loaded.bias_init is None
    # Rebuilt from its spec, the model draws the same initial values.
    again = fn.Sequential(*loaded.layers, init=loaded.init, seed=loaded.seed)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name], value)
    copy = layer_from_config(model.layers[0].config())
    assert copy.init == {"scheme": "normal", "std": 0.1} and copy.bias_init == {"scheme": "zeros"}


def test_fold_batchnorm_keeps_working_with_init():
    model = fn.Sequential(fn.Conv2d(1, 4, 3, bias=False, init="he_normal"), fn.BatchNorm2d(4),
                          fn.ReLU(), fn.Flatten(), fn.Linear(36, 3, init="xavier_uniform"),
                          input_shape=(1, 5, 5)).eval()
    x = np.random.default_rng(0).random((2, 1, 5, 5), dtype=np.float32)
    np.testing.assert_allclose(fn.fold_batchnorm(model)(x), model(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ init.apply

def test_apply_gives_what_init_at_construction_gives():
    model = fn.Sequential(fn.Conv2d(3, 8, 3, groups=1), fn.BatchNorm2d(8), fn.PReLU(8),
                          fn.Flatten(), fn.Linear(8 * 4 * 4, 10), input_shape=(3, 6, 6), seed=2)
    before = model.state_dict()
    assert fn.init.apply(model, "he_normal", bias="zeros", seed=9) is model
    built = fn.Sequential(fn.Conv2d(3, 8, 3, init="he_normal", bias_init="zeros"),
                          fn.BatchNorm2d(8), fn.PReLU(8), fn.Flatten(),
                          fn.Linear(8 * 4 * 4, 10, init="he_normal", bias_init="zeros"),
                          input_shape=(3, 6, 6), seed=9).state_dict()
    after = model.state_dict()
    for name in after:
        if name.startswith(("0.", "4.")):
            np.testing.assert_array_equal(after[name], built[name], err_msg=name)
        else:  # batch norm and PReLU are left alone
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_apply_leaves_biases_by_default_and_uses_the_model_seed():
    model = fn.Sequential(fn.Linear(5, 4), fn.ReLU(), fn.Linear(4, 3), seed=6)
    initial = model.state_dict()
    for p in model.parameters():
        p.data[...] = 7
    fn.init.apply(model, "default")  # the model's seed: the initial weights again
    sd = model.state_dict()
    np.testing.assert_array_equal(sd["0.weight"], initial["0.weight"])
    assert np.all(sd["0.bias"] == 7) and np.all(sd["2.bias"] == 7)
    fn.init.apply(model, None, bias="default")
    np.testing.assert_array_equal(model.state_dict()["2.bias"], initial["2.bias"])
    # The model still trains from the views it had.
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    model.train_step(np.ones((2, 5), np.float32), np.array([0, 1]), fn.CrossEntropyLoss(), opt)
    assert not np.array_equal(model.state_dict()["0.weight"], initial["0.weight"])


@pytest.mark.parametrize("call, error, message", [
    (lambda m: fn.init.apply(object(), "zeros"), TypeError, "expects a fastnet model"),
    (lambda m: fn.init.apply(m, "glorot"), ValueError, "unknown scheme 'glorot'"),
    (lambda m: fn.init.apply(m, "zeros", bias="xavier_uniform"), ValueError, "is for weights"),
    (lambda m: fn.init.apply(m, "zeros", seed=-1), ValueError, "seed must be an integer"),
    (lambda m: fn.init.apply(m, {"scheme": "normal", "std": -1}), ValueError,
     "normal needs std >= 0"),
])
def test_apply_errors(call, error, message):
    model = fn.Sequential(fn.Linear(3, 2))
    before = model.state_dict()
    with pytest.raises(error, match=message):
        call(model)
    np.testing.assert_array_equal(model.state_dict()["0.weight"], before["0.weight"])


# ------------------------------------------------------------------------------ calculate_gain

def test_calculate_gain_is_pytorch_calculate_gain():
    for name, gain in GAINS.items():
        assert fn.init.calculate_gain(name) == pytest.approx(gain, rel=1e-15)
    for name in ("conv1d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        assert fn.init.calculate_gain(name) == 1
    assert fn.init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert fn.init.calculate_gain("leaky_relu", 0.3) == pytest.approx(math.sqrt(2 / 1.09))
    assert fn.init.calculate_gain("leaky_relu", 0) == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="Unsupported nonlinearity gelu"):
        fn.init.calculate_gain("gelu")
    with pytest.raises(ValueError, match="not a valid number"):
        fn.init.calculate_gain("leaky_relu", "0.1")
    torch = pytest.importorskip("torch")
    for name in list(GAINS) + ["leaky_relu"]:
        assert fn.init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name))


@pytest.mark.parametrize("nonlinearity, a", [("relu", 0), ("leaky_relu", 0.2), ("tanh", 0),
                                             ("selu", 0), ("sigmoid", 0), ("linear", 0)])
def test_c_gains_match_calculate_gain(nonlinearity, a):
    values = weights(fn.Linear(100, 10, init={"scheme": "kaiming_uniform", "a": a,
                                              "nonlinearity": nonlinearity}), dtype="float64")
    bound = fn.init.calculate_gain(nonlinearity, a) * math.sqrt(3 / 100)
    assert bound * 0.99 < np.abs(values).max() <= bound


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("make_layer, error, message", [
    (lambda: fn.Linear(3, 2, init=3), TypeError, "Linear init must be a scheme name or a dict"),
    (lambda: fn.Linear(3, 2, init="glorot"), ValueError, r"unknown scheme 'glorot' \(known: "),
    (lambda: fn.Linear(3, 2, init={"std": 1}), ValueError, "a dict needs a 'scheme' name"),
    (lambda: fn.Linear(3, 2, init={"scheme": "normal", "sd": 1}), ValueError,
     r"scheme 'normal' has no parameter 'sd' \(it takes: mean, std\)"),
    (lambda: fn.Linear(3, 2, init={"scheme": "zeros", "value": 1}), ValueError,
     r"it takes: none"),
    (lambda: fn.Linear(3, 2, init={"scheme": "normal", "std": "1"}), ValueError,
     "std must be a finite number"),
    (lambda: fn.Linear(3, 2, init={"scheme": "he_normal", "mode": 1}), ValueError,
     "mode must be a string"),
    (lambda: fn.Linear(3, 2, bias_init="he_normal"), ValueError,
     "Linear bias_init: scheme 'he_normal' is for weights; a bias takes default, zeros"),
    (lambda: fn.Linear(3, 2, bias=False, bias_init="zeros"), ValueError,
     "Linear bias_init is given but bias=False"),
    (lambda: fn.Conv2d(3, 2, 1, init="nope"), ValueError, "Conv2d init: unknown scheme"),
    (lambda: fn.Sequential(fn.Linear(3, 2), init=["he_normal"]), TypeError, "Sequential init"),
    (lambda: fn.Sequential(fn.Linear(3, 2), bias_init="lecun_normal"), ValueError,
     "Sequential bias_init: scheme 'lecun_normal' is for weights"),
    (lambda: fn.Sequential(fn.Linear(3, 2, init={"scheme": "he_normal", "mode": "fan"})),
     ValueError, "node '0': init: mode must be 'fan_in' or 'fan_out', got 'fan'"),
    (lambda: fn.Sequential(fn.Linear(3, 2, init={"scheme": "he_normal",
                                                 "nonlinearity": "gelu"})),
     ValueError, "node '0': init: unknown nonlinearity 'gelu'"),
    (lambda: fn.Sequential(fn.Linear(3, 2, init={"scheme": "uniform", "a": 1, "b": 0})),
     ValueError, "uniform needs a <= b, got a=1, b=0"),
    (lambda: fn.Sequential(fn.Linear(3, 2, init={"scheme": "xavier_normal", "gain": 0})),
     ValueError, "xavier_normal needs gain > 0"),
    (lambda: fn.Sequential(fn.Linear(3, 2, init="constant")), ValueError,
     "node '0': init: missing \"value\""),
    (lambda: fn.Sequential(fn.Linear(3, 2, init={"scheme": "constant", "value": 1e39})),
     ValueError, "beyond float32's range"),
])
def test_bad_init_arguments(make_layer, error, message):
    with pytest.raises(error, match=message):
        make_layer()


def spec_with(node):
    return json.dumps({"format": "fastnet.model", "version": 1, "input_shape": [3, 4, 4],
                       "nodes": [dict({"name": "c", "op": "conv2d", "in_channels": 3,
                                       "out_channels": 2, "kernel_size": [1, 1]}, **node)]})


@pytest.mark.parametrize("node, message", [
    ({"init": "xavier"}, r"node 'c': init: unknown scheme 'xavier' \(known: default, zeros"),
    ({"init": 1}, "node 'c': init must be a scheme name or an object {\"scheme\": name, ...}, "
                  "got a number"),
    ({"init": {"mode": "fan_in"}}, "node 'c': init: missing \"scheme\""),
    ({"init": {"scheme": "normal", "variance": 1}}, "scheme 'normal' has no parameter "
                                                    "\"variance\" \\(it takes: mean, std\\)"),
    ({"init": {"scheme": "normal", "std": "x"}}, "node 'c': init: \"std\" must be a number"),
    ({"bias_init": "xavier_uniform"}, "node 'c': bias_init: scheme 'xavier_uniform' is for "
                                      "weights; a bias takes default, zeros, ones, constant, "
                                      "uniform, normal"),
    ({"bias": False, "bias_init": "zeros"}, "node 'c': bias_init is given but Conv2d"),
    ({"init": {"scheme": "normal", "std": -0.1}}, "normal needs std >= 0"),
])
def test_bad_init_attributes_in_a_spec(node, message):
    with pytest.raises(ValueError, match=message):
        _core.Model(spec_with(node))


def test_null_init_attributes_are_the_default():
    a = _core.Model(spec_with({"init": None, "bias_init": None}))
    b = _core.Model(spec_with({}))
    np.testing.assert_array_equal(a.param_arena(), b.param_arena())
