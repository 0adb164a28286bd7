"""The training recipe through the Trainer and the command line: schedules, losses, distillation,
regularisation, clipping, scaling, augmentation, balanced sampling and recipe files."""
import json
import math

import numpy as np
import pytest

import fastnet as fn
from fastnet import augment, schedules, zoo
from fastnet.cli import build_parser, main


@pytest.fixture(scope="module")
def digits():
    return fn.load_digits()


def mlp(seed=0):
    return zoo.mlp(64, 10, (32,), seed=seed)


# ---------------------------------------------------------------------- the Trainer


def test_epoch_schedule_sets_each_epochs_lr(digits):
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = schedules.StepLR(opt, step_size=2, gamma=0.5)
    history = fn.Trainer(model, opt, progress=False, schedule=schedule).fit(
        digits.train, epochs=6, batch_size=128)
    assert history.metric("lr") == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_step_schedule_advances_every_update(digits):
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    schedule = schedules.ExponentialLR(opt, gamma=0.99, interval="step")
    fn.Trainer(model, opt, progress=False, schedule=schedule).fit(digits.train, epochs=2,
                                                                  batch_size=100)
    updates = 2 * math.ceil(len(digits.train) / 100)
    assert schedule.t == updates
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.99 ** updates)


def test_plateau_schedule_follows_the_validation_loss(digits):
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=1e-6)  # too small to improve: a plateau
    schedule = schedules.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.5)
    history = fn.Trainer(model, opt, progress=False, schedule=schedule).fit(
        digits.train, digits.val, epochs=4)
    assert history.metric("lr")[-1] < 1e-6


def test_augmentation_and_balanced_sampling(digits):
    images = lambda ds: fn.Dataset(ds.x.reshape(-1, 1, 8, 8), ds.y)  # noqa: E731
    train, val = images(digits.train), images(digits.val)
    model = zoo.cnn((1, 8, 8), 10)
    opt = fn.optim.Adam(model.parameters(), lr=3e-3)
    transform = augment.Compose([augment.RandomCrop(8, padding=1), augment.GaussianNoise(0.02)])
    sampler = fn.data.ClassBalancedSampler(train.y)
    trainer = fn.Trainer(model, opt, progress=False, transform=transform, sampler=sampler)
    history = trainer.fit(train, val, epochs=6)
    assert history[-1]["val_accuracy"] > 0.9


def test_regression_losses_train_a_classifier_on_one_hot_targets(digits):
    for loss in (fn.MSELoss(), fn.HuberLoss(delta=0.5), fn.BCEWithLogitsLoss()):
        model = mlp()
        trainer = fn.Trainer(model, fn.optim.Adam(model.parameters(), lr=1e-2), loss,
                             progress=False)
        history = trainer.fit(digits.train, epochs=8)
        assert history[-1]["train_accuracy"] is None
        assert history[-1]["train_loss"] < history[0]["train_loss"]
        assert trainer.evaluate(digits.test)["accuracy"] > 0.85, loss


def test_distillation_from_a_teacher(digits):
    teacher = zoo.mlp(64, 10, (128,))
    fn.Trainer(teacher, fn.optim.Adam(teacher.parameters(), lr=3e-3), progress=False).fit(
        digits.train, epochs=15)
    student = mlp(seed=1)
    loss = fn.DistillationLoss(temperature=4.0, alpha=0.7)
    trainer = fn.Trainer(student, fn.optim.Adam(student.parameters(), lr=3e-3), loss,
                         progress=False, teacher=teacher)
    trainer.fit(digits.train, epochs=15)
    assert trainer.evaluate(digits.test)["accuracy"] > 0.9
    with pytest.raises(ValueError, match="teacher"):
        fn.Trainer(student, fn.optim.Adam(student.parameters()), loss)


# ---------------------------------------------------------------------- the command line


def run(tmp_path, *options):
    out = tmp_path / "run"
    assert main(["train", "--quiet", "--out", str(out), *options]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return lines[:-1], lines[-1]


def test_cli_schedule_warmup_and_regularisation(tmp_path):
    epochs, result = run(tmp_path, "--optimizer", "sgd", "--lr", "0.1", "--epochs", "8",
                         "--schedule", "cosine", "--warmup", "2", "--weight-decay", "5e-4",
                         "--no-decay", "bias", "--clip-grad-norm", "5", "--max-norm", "4",
                         "--l1", "1e-6", "--init", "he_normal", "--bias-init", "zeros")
    lrs = [e["lr"] for e in epochs]
    assert lrs[:3] == pytest.approx([0.05, 0.075, 0.1])  # linear warm-up from 1/2 of the rate
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # then cosine annealing
    assert result["accuracy"] > 0.9


@pytest.mark.parametrize("optimizer", ["adagrad", "rmsprop", "adamw"])
def test_cli_optimizers(tmp_path, optimizer):
    _, result = run(tmp_path, "--optimizer", optimizer, "--epochs", "10")
    assert result["accuracy"] > 0.85


def test_cli_losses_scaling_augmentation_and_balance(tmp_path):
    _, result = run(tmp_path, "--loss", "huber", "--scale", "standard", "--balanced",
                    "--epochs", "10")
    assert result["accuracy"] > 0.85
    _, result = run(tmp_path, "--model", "cnn", "--augment", "crop:1,noise:0.02",
                    "--label-smoothing", "0.1", "--scale", "minmax", "--epochs", "5")
    assert result["accuracy"] > 0.9


def test_cli_distillation(tmp_path):
    teacher_dir = tmp_path / "teacher"
    assert main(["train", "--quiet", "--epochs", "15", "--out", str(teacher_dir)]) == 0
    _, result = run(tmp_path, "--teacher", str(teacher_dir / "model.safetensors"),
                    "--hidden", "32", "--epochs", "15", "--temperature", "3", "--alpha", "0.5")
    assert result["accuracy"] > 0.85


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_recipe_file_sets_options_and_the_command_line_wins(tmp_path, suffix):
    recipe = {"epochs": 3, "optimizer": "sgd", "lr": 0.05, "hidden": [16],
              "schedule": "exponential:gamma=0.5", "batch_size": 32}
    path = tmp_path / f"recipe{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(recipe))
    else:
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in recipe.items()))
    epochs, _ = run(tmp_path, "--recipe", str(path), "--epochs", "4")
    assert len(epochs) == 4  # the command line wins
    assert [e["lr"] for e in epochs] == pytest.approx([0.05, 0.025, 0.0125, 0.00625])
    model = fn.load(tmp_path / "run" / "model.safetensors")
    assert repr(model.layers[0]) == "Linear(64, 16)"


def test_recipe_errors(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"epochz": 3}))
    assert main(["train", "--quiet", "--recipe", str(path)]) == 2
    assert "unknown option 'epochz'" in capsys.readouterr().err
    path.write_text(json.dumps({"optimizer": "lbfgs"}))
    assert main(["train", "--quiet", "--recipe", str(path)]) == 2
    assert "optimizer must be one of" in capsys.readouterr().err


def test_bad_schedule_and_augment_options(capsys):
    assert main(["train", "--quiet", "--schedule", "step:gamma"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["train", "--quiet", "--augment", "rotate"]) == 2
    assert "unknown transform 'rotate'" in capsys.readouterr().err
    assert main(["train", "--quiet", "--augment", "crop"]) == 2  # the MLP takes flat samples
    assert "needs image inputs" in capsys.readouterr().err


def test_every_recipe_option_is_documented():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for option in ("--schedule", "--warmup", "--loss", "--teacher", "--scale", "--augment",
                   "--balanced", "--recipe", "--clip-grad-norm", "--no-decay", "--init",
                   "--l1", "--max-norm"):
        assert option in text
