"""The per-epoch monitors against direct computations, and non-finite steps in the Trainer."""
import json

import numpy as np
import pytest

import fastnet as fn


def mlp(activation=fn.ReLU):
    return fn.Sequential(fn.Linear(64, 32), activation(), fn.Linear(32, 10), seed=1)


def layer_norms(arena, model):
    """{layer: squared norm of its parameters} over the given parameter arena copy."""
    out = {}
    for name, shape, offset, is_buffer, _ in model._core.tensor_info():
        if not is_buffer:
            part = arena[offset:offset + int(np.prod(shape))].astype(np.float64)
            layer = name.rsplit(".", 1)[0]
            out[layer] = out.get(layer, 0.0) + float(np.sum(part ** 2))
    return out


def test_update_ratio_is_the_last_updates_relative_size():
    data = fn.load_digits()
    model = mlp()
    trainer = fn.Trainer(model, fn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                         progress=False)
    snapshots = []
    step = trainer._step

    def keep(*args):
        snapshots.append(model._core.param_arena().copy())
        return step(*args)

    trainer._step = keep
    record = trainer.fit(data.train, data.val, epochs=1)[-1]
    before, after = snapshots[-1], model._core.param_arena().copy()
    delta = layer_norms(after - before, model)
    weight = layer_norms(before, model)
    assert set(record["update_ratio"]) == {"0", "2"}
    for layer, ratio in record["update_ratio"].items():
        assert ratio == pytest.approx((delta[layer] / weight[layer]) ** 0.5, rel=1e-6)
        assert 1e-5 < ratio < 1


def test_activation_statistics_on_the_monitoring_batch():
    data = fn.load_digits()
    model = mlp(fn.Tanh)
    trainer = fn.Trainer(model, fn.optim.Adam(model.parameters(), lr=1e-3), progress=False)
    record = trainer.fit(data.train, data.val, epochs=1)[-1]
    x = data.val.x[:256]
    w1, b1 = model.state_dict()["0.weight"], model.state_dict()["0.bias"]
    hidden = np.tanh(x.astype(np.float64) @ w1.T + b1)
    assert record["activation_mean"]["1"] == pytest.approx(hidden.mean(), rel=1e-4, abs=1e-6)
    assert record["activation_std"]["1"] == pytest.approx(hidden.std(), rel=1e-4)
    saturated = float(np.mean(np.abs(hidden) > 0.97))
    assert record["saturated_fraction"]["1"] == pytest.approx(saturated, abs=1e-6)


def test_dead_relu_fraction_counts_units_dead_on_every_sample():
    data = fn.load_digits()
    model = mlp()
    # Kill half of the hidden units: weights and bias that keep them negative for inputs >= 0.
    weight = model.parameters()[0].data
    bias = model.parameters()[1].data
    weight[:16] = -np.abs(weight[:16])
    bias[:16] = -1.0
    trainer = fn.Trainer(model, fn.optim.SGD(model.parameters(), lr=1e-6), progress=False)
    record = trainer.fit(data.train, data.val, epochs=1)[-1]
    x = data.val.x[:256].astype(np.float64)
    hidden = np.maximum(x @ model.state_dict()["0.weight"].T + model.state_dict()["0.bias"], 0)
    expected = float(np.mean(np.all(hidden == 0, axis=0)))
    assert expected >= 0.5
    assert record["dead_fraction"]["1"] == pytest.approx(expected)


def test_metrics_file_has_one_line_per_epoch(tmp_path):
    data = fn.load_digits()
    model = mlp()
    path = tmp_path / "m.jsonl"
    fn.Trainer(model, fn.optim.Adam(model.parameters()), progress=False,
               metrics_path=path).fit(data.train, data.val, epochs=3)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"train_loss", "val_loss", "val_accuracy", "lr", "update_ratio",
                "activation_std", "dead_fraction"} <= set(r)


def poisoned_digits():
    """Digits with one training sample so large that the first layer's output overflows."""
    data = fn.load_digits()
    x = data.train.x.copy()
    x[5] = 3e38
    return fn.Dataset(x, data.train.y), data.val


def test_nonfinite_stops_naming_the_first_layer_and_keeps_the_checkpoint(tmp_path):
    train, val = poisoned_digits()
    model = mlp()
    trainer = fn.Trainer(model, fn.optim.SGD(model.parameters(), lr=0.01), progress=False,
                         checkpoint_dir=tmp_path)
    trainer.fit(fn.Dataset(train.x[64:], train.y[64:]), val, epochs=1, shuffle=False)
    saved = (tmp_path / "checkpoint.safetensors").read_bytes()
    weights = model._core.param_arena().copy()
    trainer2 = fn.Trainer(model, trainer.optimizer, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(fn.NonFiniteError, match=r"epoch 1, batch 1 .*'0'") as caught:
        trainer2.fit(train, val, epochs=1, shuffle=False)
    assert "intact" in str(caught.value)
    assert np.array_equal(model._core.param_arena(), weights)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == saved


def test_nonfinite_skip_lowers_the_rate_and_goes_on(capsys):
    train, val = poisoned_digits()
    model = mlp()
    optimizer = fn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = fn.Trainer(model, optimizer, progress=False, on_nonfinite="skip",
                         nonfinite_lr_factor=0.5)
    history = trainer.fit(train, val, epochs=2, shuffle=False)
    assert [r.get("skipped_updates") for r in history] == [1, 1]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    assert np.all(np.isfinite(model._core.param_arena()))
    assert history[-1]["val_accuracy"] > 0.5
    assert "update skipped" in capsys.readouterr().err


def test_nonfinite_skip_gives_up_after_too_many_in_a_row():
    data = fn.load_digits()
    model = mlp()
    optimizer = fn.optim.SGD(model.parameters(), lr=1e30)
    trainer = fn.Trainer(model, optimizer, progress=False, on_nonfinite="skip",
                         max_skipped_steps=3)
    with pytest.raises(fn.NonFiniteError, match="in a row"):
        trainer.fit(data.train, epochs=1)


def test_grad_norm_is_the_mean_of_the_updates_norms():
    data = fn.load_digits()
    model = mlp()
    trainer = fn.Trainer(model, fn.optim.SGD(model.parameters(), lr=0.05), progress=False)
    norms = []
    step = trainer._step

    def keep(*args):
        loss = step(*args)
        norms.append(float(np.linalg.norm(model._core.grad_arena().astype(np.float64))))
        return loss

    trainer._step = keep
    record = trainer.fit(data.train, epochs=1)[-1]
    assert record["grad_norm"] == pytest.approx(np.mean(norms), rel=1e-4)
