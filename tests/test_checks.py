"""The pre-training checklist (fastnet.checks, `fastnet check`): it passes on healthy models and
catches a wrong gradient, a bad initialisation and dead or collapsed layers."""
import json
import math

import numpy as np
import pytest

import fastnet as fn
from fastnet import checks, cli, zoo


@pytest.fixture(scope="module")
def digits():
    return fn.load_digits()


def images(data):
    return data.train.x.reshape(-1, 1, 8, 8), data.train.y


def snapshot(model):
    """Everything the checks must leave as it was."""
    return (model.state_dict(), model._core.rng_step, model.training)


def assert_unchanged(model, before):
    state, step, training = before
    after = model.state_dict()
    assert list(after) == list(state)
    for name in state:
        np.testing.assert_array_equal(after[name], state[name], err_msg=name)
    assert model._core.rng_step == step
    assert model.training == training


# ------------------------------------------------------------------------------ healthy models


def test_checklist_passes_on_the_default_mlp(digits, capsys):
    model = zoo.mlp(64, 10, (128, 128))
    before = snapshot(model)
    report = checks.run_checks(model, digits)
    assert report.passed, str(report)
    assert [c.name for c in report.checks] == ["gradient", "init_loss", "overfit", "activations"]
    gradient = report["gradient"].data
    assert [layer["layer"] for layer in gradient["layers"]] == ["0", "2", "4"]
    assert all(layer["error"] < checks.GRAD_THRESHOLD for layer in gradient["layers"])
    assert all(layer["checked"] > 0 for layer in gradient["layers"])
    init = report["init_loss"].data
    assert init["reference"] == pytest.approx(math.log(10))
    assert len(init["losses"]) == checks.INIT_SEEDS and init["fresh"]
    assert report["overfit"].data["final_loss"] < report["overfit"].data["threshold"]
    assert report["overfit"].data["accuracy"] == 1.0
    printed = capsys.readouterr().out
    assert printed.count("[PASS]") == 4 and "all passed" in printed
    assert_unchanged(model, before)
    json.dumps(report.to_dict())  # the structured result is JSON-able


def test_checklist_passes_on_the_cnn_with_dropout_in_eval_mode(digits):
    model = zoo.cnn((1, 8, 8), 10).eval()
    before = snapshot(model)
    report = checks.run_checks(model, images(digits), verbose=False)
    assert report.passed, str(report)
    assert_unchanged(model, before)


def test_gradient_check_with_batch_norm_and_dropout_in_train_mode(digits):
    # Batch norm's gradient through the batch statistics, and dropout with one fixed mask.
    model = fn.Sequential(fn.Conv2d(1, 4, 3, padding=1), fn.BatchNorm2d(4), fn.ReLU(),
                          fn.Dropout(0.5), fn.Flatten(), fn.Linear(256, 10), input_shape=(1, 8, 8))
    x, y = images(digits)
    result = checks.gradient_check(model, x[:8], y[:8])
    assert result.passed, result.format()
    # The convolution's bias is followed by batch norm: its gradient is exactly zero, and the
    # numerical one only rounding; the check passes it and says so.
    conv_bias = next(t for t in result.data["tensors"] if t["name"] == "0.bias")
    assert conv_bias["norm"] < 1e-9
    assert "zero gradient" not in result.details[1]  # layer 0 has a weight gradient too


@pytest.mark.parametrize("loss", [fn.MSELoss(), fn.L1Loss(), fn.HuberLoss(), fn.BCEWithLogitsLoss(),
                                  fn.CrossEntropyLoss(label_smoothing=0.1,
                                                      weight=np.arange(1.0, 11.0))],
                         ids=lambda loss: type(loss).__name__)
def test_gradient_check_passes_with_every_loss(digits, loss):
    model = fn.Sequential(fn.Linear(64, 16), fn.Tanh(), fn.Linear(16, 10))
    result = checks.gradient_check(model, digits.train.x[:8], digits.train.y[:8], loss)
    assert result.passed, result.format()


def test_gradient_check_skips_coordinates_at_kinks_instead_of_failing(digits):
    # Zero biases and the digits' blank borders put many ReLU inputs exactly at 0: perturbing
    # the first convolution's bias moves them across the kink, where the central difference is
    # the mean of the two one-sided derivatives and backpropagation takes one side.
    model = zoo.cnn((1, 8, 8), 10, bias_init="zeros")
    x, y = images(digits)
    result = checks.gradient_check(model, x[:8], y[:8])
    bias = next(t for t in result.data["tensors"] if t["name"] == "0.bias")
    assert bias["skipped"] == checks.GRAD_COORDS and bias["checked"] == 0
    assert result.passed, result.format()
    assert "at kinks skipped" in result.summary


# ------------------------------------------------------------------------------ broken gradients


def corrupted(tensor, factor):
    """A gradient provider that scales one tensor's backpropagated gradient."""
    def gradients(model, x, targets, loss):
        grads = checks.backprop_gradients(model, x, targets, loss)
        grads[tensor] = grads[tensor] * factor
        return grads
    return gradients


@pytest.mark.parametrize("factor", [1 + 1e-4, 0.0, -1.0])
def test_gradient_check_catches_a_wrong_parameter_gradient(digits, factor):
    model = zoo.mlp(64, 10, (128, 128))
    x, y = digits.train.x[:8], digits.train.y[:8]
    result = checks.gradient_check(model, x, y, gradients=corrupted("2.weight", factor))
    assert not result.passed
    by_layer = {layer["layer"]: layer for layer in result.data["layers"]}
    assert not by_layer["2"]["passed"] and by_layer["0"]["passed"] and by_layer["4"]["passed"]
    expected = abs(1 - factor) / max(1, abs(factor))  # |g - f g| / max(|g|, |f g|)
    assert by_layer["2"]["error"] == pytest.approx(expected, rel=1e-3)
    assert "[FAIL]" in result.format() and "2" in result.hint


class SkewedCrossEntropy(fn.CrossEntropyLoss):
    """Cross-entropy whose gradient is 1% too large: a wrong loss backward."""

    def forward_backward(self, outputs, targets, want_grad=True):
        value, grad = super().forward_backward(outputs, targets, want_grad)
        return value, None if grad is None else grad * 1.01


def test_gradient_check_catches_a_wrong_loss_gradient(digits):
    model = zoo.mlp(64, 10, (32,))
    result = checks.gradient_check(model, digits.train.x[:8], digits.train.y[:8],
                                   SkewedCrossEntropy())
    assert not result.passed
    assert all(not layer["passed"] for layer in result.data["layers"])
    assert result.data["max_error"] == pytest.approx(0.01 / 1.01, rel=1e-3)
    assert "gradient of the loss" in result.hint


# ------------------------------------------------------------------------------ initialisation


def test_init_loss_catches_a_last_layer_scaled_by_100(digits):
    model = zoo.mlp(64, 10, (128, 128))
    model.parameters()[-2].data[...] *= 100  # 4.weight
    result = checks.init_loss_check(model, digits.train.x[:256], digits.train.y[:256])
    assert not result.passed
    assert not result.data["fresh"] and len(result.data["losses"]) == 1
    assert result.data["mean"] > 2 * math.log(10)
    assert result.data["logit_std"] > 1
    assert "last layer" in result.hint


def test_init_loss_over_seeds_catches_a_large_last_layer_scheme(digits):
    model = fn.Sequential(fn.Linear(64, 64), fn.ReLU(),
                          fn.Linear(64, 10, init={"scheme": "normal", "std": 3.0}))
    result = checks.init_loss_check(model, digits.train.x[:256], digits.train.y[:256], seeds=4)
    assert not result.passed
    assert result.data["fresh"] and len(result.data["losses"]) == 4
    assert len(set(result.data["losses"])) == 4  # four different initialisations
    assert result.data["std"] > 0


def test_init_loss_below_chance_is_flagged():
    # Every label is 0 and the last bias already favours class 0.
    model = fn.Sequential(fn.Linear(4, 3))
    model.parameters()[1].data[...] = [5.0, 0.0, 0.0]
    x = np.random.default_rng(0).random((64, 4))
    result = checks.init_loss_check(model, x, np.zeros(64, dtype=np.int64))
    assert not result.passed and result.data["mean"] < 0.1
    assert "below" in result.hint


def test_init_loss_reference_of_other_losses():
    y = np.array([0, 1, 2, 1])
    assert checks.reference_loss(fn.MSELoss(), y, 4) == pytest.approx(1 / 4)
    assert checks.reference_loss(fn.BCEWithLogitsLoss(), y, 4) == pytest.approx(math.log(2))
    assert checks.reference_loss(None, y, 4) == pytest.approx(math.log(4))


def test_all_zero_initialisation_fails_the_activation_and_overfitting_checks(digits):
    model = zoo.mlp(64, 10, (128, 128), init="zeros", bias_init="zeros")
    report = checks.run_checks(model, digits, verbose=False)
    assert not report.passed
    activations = report["activations"]
    assert not activations.passed
    flags = {s["layer"]: s["flags"] for s in activations.data["layers"]}
    assert flags["1"] == ["collapsed", "dead"] and flags["3"] == ["collapsed", "dead"]
    assert "initialisation" in activations.hint
    assert not report["overfit"].passed
    assert "barely moved" in report["overfit"].hint
    # The gradient of the hidden layers is exactly zero: checked, but said to prove nothing.
    assert "zero gradient" in "\n".join(report["gradient"].details)


def test_saturated_tanh_is_flagged(digits):
    model = fn.Sequential(fn.Linear(64, 32, init={"scheme": "normal", "std": 3.0}), fn.Tanh(),
                          fn.Linear(32, 10))
    result = checks.activation_check(model, digits.train.x[:256])
    assert not result.passed
    assert result.data["layers"][1]["flags"] == ["saturated"]


# ------------------------------------------------------------------------------ activation_stats


def test_activation_stats_match_a_numpy_forward(digits):
    model = fn.Sequential(fn.Linear(64, 32), fn.ReLU(), fn.Linear(32, 16), fn.Tanh(),
                          fn.Linear(16, 8), fn.Sigmoid(), fn.Linear(8, 10), seed=3)
    weights = model.parameters()[0].data
    weights[:12] = -np.abs(weights[:12])  # 12 units that no digit (pixels >= 0) turns on
    model.parameters()[1].data[:12] = -1.0
    x = digits.train.x[:200].astype(np.float64)
    sd = model.state_dict()
    z0 = x @ sd["0.weight"].T + sd["0.bias"]
    h1 = np.maximum(z0, 0)
    h3 = np.tanh(h1 @ sd["2.weight"].T + sd["2.bias"])
    h5 = 1 / (1 + np.exp(-(h3 @ sd["4.weight"].T + sd["4.bias"])))
    stats = checks.activation_stats(model, digits.train.x[:200])
    assert [(s["layer"], s["op"]) for s in stats] == [
        ("0", "linear"), ("1", "relu"), ("2", "linear"), ("3", "tanh"), ("4", "linear"),
        ("5", "sigmoid"), ("6", "linear")]
    assert stats[0]["mean"] == pytest.approx(z0.mean(), rel=1e-4, abs=1e-6)
    assert stats[0]["std"] == pytest.approx(z0.std(), rel=1e-4)
    dead = float(np.mean(np.all(h1 == 0, axis=0)))
    assert dead >= 12 / 32
    assert stats[1]["dead_fraction"] == pytest.approx(dead)
    assert stats[3]["saturated_fraction"] == pytest.approx(float(np.mean(np.abs(h3) > 0.97)),
                                                           abs=1e-2)
    sigmoid_saturated = float(np.mean((h5 < 0.03) | (h5 > 0.97)))
    assert stats[5]["saturated_fraction"] == pytest.approx(sigmoid_saturated, abs=1e-2)
    assert stats[0]["dead_fraction"] is None and stats[0]["saturated_fraction"] is None
    assert stats[1]["saturated_fraction"] is None and stats[3]["dead_fraction"] is None


def test_activation_stats_count_dead_channels_of_images_and_restore_the_model(digits):
    model = fn.Sequential(fn.Conv2d(1, 6, 3, padding=1), fn.BatchNorm2d(6), fn.ReLU(),
                          fn.Dropout(0.5), input_shape=(1, 8, 8))
    x, _ = images(digits)
    before = snapshot(model)
    training = checks.activation_stats(model, x[:64])
    assert_unchanged(model, before)  # running statistics and dropout step put back
    # Batch norm in train mode: mean 0, std 1 over each channel.
    assert training[1]["mean"] == pytest.approx(0, abs=1e-5)
    assert training[1]["std"] == pytest.approx(1, rel=1e-3)
    assert training[2]["dead_fraction"] == 0.0
    # Eval mode: running statistics (0 and 1 at initialisation) instead of the batch's.
    evaluated = checks.activation_stats(model, x[:64], training=False)
    assert evaluated[1]["std"] != pytest.approx(training[1]["std"], rel=1e-2)
    # Kill channels 0-2 with a large negative batch-norm shift: dead on every position.
    model.parameters()[3].data[:3] = -100.0  # 1.bias
    stats = checks.activation_stats(model, x[:64])
    assert stats[2]["dead_fraction"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------ misuse


def test_clear_errors_for_bad_data(digits):
    model = zoo.mlp(64, 10, (16,))
    with pytest.raises(ValueError, match="64"):
        checks.run_checks(model, (np.zeros((10, 63), np.float32), np.zeros(10, np.int64)),
                          verbose=False)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        checks.init_loss_check(model, digits.train.x[:8], np.full(8, 10))
    with pytest.raises(TypeError, match="Dataset, Splits or an"):
        checks.run_checks(model, "digits", verbose=False)
    with pytest.raises(ValueError, match="DistillationLoss"):
        checks.gradient_check(model, digits.train.x[:4], digits.train.y[:4], fn.DistillationLoss())


# ------------------------------------------------------------------------------ the command


@pytest.fixture
def check_command(monkeypatch):
    monkeypatch.setattr(cli, "EXTRA_COMMANDS", {"check": "fastnet.checks"})
    return cli.main


def test_fastnet_check_passes_on_the_defaults(check_command, capsys):
    assert check_command(["check"]) == 0
    out = capsys.readouterr().out
    assert out.count("[PASS]") == 4
    for title in ("gradient check", "loss at initialisation", "overfitting", "activations"):
        assert title in out
    assert "ln 10 = 2.3026" in out


def test_fastnet_check_fails_with_status_1_on_a_zero_initialisation(check_command, capsys):
    code = check_command(["check", "--hidden", "32", "--init", "zeros", "--bias-init", "zeros",
                          "--seeds", "2", "--json"])
    assert code == 1
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] is False
    status = {c["name"]: c["passed"] for c in result["checks"]}
    assert status == {"gradient": True, "init_loss": True, "overfit": False,
                      "activations": False}


def test_fastnet_check_takes_the_cnn_options(check_command, capsys):
    code = check_command(["check", "--model", "cnn", "--coords", "4", "--seeds", "2",
                          "--overfit-steps", "100", "--scale", "standard", "--dtype", "float64"])
    assert code == 0, capsys.readouterr().out
    assert "float64" in capsys.readouterr().out


def test_fastnet_check_bad_data_is_a_clear_error(check_command, tmp_path, capsys):
    assert check_command(["check", "--data", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err


def test_fastnet_check_help_lists_the_model_and_data_options(check_command, capsys):
    with pytest.raises(SystemExit):
        check_command(["check", "--help"])
    text = capsys.readouterr().out
    for option in ("--data", "--model", "--hidden", "--input-shape", "--dtype", "--seed",
                   "--init", "--loss", "--scale", "--recipe", "--json"):
        assert option in text


def test_fastnet_check_reads_a_training_recipe(check_command, tmp_path, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"hidden": [16], "init": "zeros", "bias_init": "zeros",
                                  "epochs": 3}))
    assert check_command(["check", "--recipe", str(recipe), "--seeds", "2"]) == 1
    out = capsys.readouterr().out
    assert "1,210 parameters" in out  # 64-16-10
    assert "[FAIL] activations" in out
