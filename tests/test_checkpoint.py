"""Checkpoints resume exactly: after an epoch, mid-epoch, after SIGKILL and after Ctrl-C; the
file is checked before anything changes; early stopping and weight averaging survive a resume."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnet as fn
from fastnet import checkpoint
from fastnet.augment import RandomCrop

FASTNET_PARENT = os.path.dirname(os.path.dirname(fn.__file__))


def digits():
    return fn.load_digits()


def make_run(out, kind="mlp", schedule=False, averaging=None, early_stopping=None,
             transform=False, **trainer_options):
    """A model, optimizer and trainer built the same way every time (seeded)."""
    if kind == "mlp":
        model = fn.Sequential(fn.Linear(64, 48), fn.ReLU(), fn.Dropout(0.2), fn.Linear(48, 10),
                              seed=3)
    else:
        model = fn.Sequential(fn.Conv2d(1, 4, 3, padding=1), fn.BatchNorm2d(4), fn.ReLU(),
                              fn.MaxPool2d(2), fn.Flatten(), fn.Dropout(0.1),
                              fn.Linear(64, 10), input_shape=(1, 8, 8), seed=3)
    optimizer = fn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                             weight_decay=1e-4)
    sched = fn.schedules.StepLR(optimizer, step_size=2, gamma=0.5) if schedule else None
    if averaging is True:
        averaging = fn.WeightAveraging(0.9)
    trainer = fn.Trainer(model, optimizer, seed=11, progress=False, checkpoint_dir=out,
                         schedule=sched, averaging=averaging, early_stopping=early_stopping,
                         transform=RandomCrop((8, 8), padding=1) if transform else None,
                         **trainer_options)
    return model, optimizer, trainer


def image_data(data):
    shape = lambda ds: fn.Dataset(ds.x.reshape(-1, 1, 8, 8), ds.y)  # noqa: E731
    return shape(data.train), shape(data.val)


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert np.array_equal(sa[name], sb[name]), name


def strip_seconds(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history.epochs]


@pytest.mark.parametrize("kind,options", [
    ("mlp", dict(schedule=True)),
    ("mlp", dict(averaging=True)),
    ("cnn", dict(transform=True, schedule=True)),
])
def test_resume_after_an_epoch_is_bitwise_the_uninterrupted_run(tmp_path, kind, options):
    data = digits()
    train, val = image_data(data) if kind == "cnn" else (data.train, data.val)
    full_model, full_opt, full = make_run(tmp_path / "full", kind, **options)
    full_history = full.fit(train, val, epochs=4, batch_size=32)

    _, _, first = make_run(tmp_path / "split", kind, **options)
    first.fit(train, val, epochs=2, batch_size=32)
    model, optimizer, second = make_run(tmp_path / "split", kind, **options)
    history = second.fit(train, val, epochs=4, batch_size=32, resume=True)

    same_state(model, full_model)
    for a, b in zip(optimizer.state_dict()["state"], full_opt.state_dict()["state"]):
        assert np.array_equal(a, b)
    assert strip_seconds(history) == strip_seconds(full_history)
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [int(eval(line.replace("null", "None"))["epoch"]) for line in lines] == [1, 2, 3, 4]
    if "averaging" in options:
        assert np.array_equal(second.averaging.average, full.averaging.average)


def test_checkpoint_every_resumes_mid_epoch(tmp_path):
    data = digits()
    full_model, _, full = make_run(tmp_path / "full")
    full.fit(data.train, data.val, epochs=2, batch_size=64)

    model, _, trainer = make_run(tmp_path / "mid", checkpoint_every=7)
    original = trainer._step
    calls = {"n": 0}

    def stop_at_30(*args):
        calls["n"] += 1
        if calls["n"] == 31:
            raise RuntimeError("simulated crash")
        return original(*args)

    trainer._step = stop_at_30
    with pytest.raises(RuntimeError):
        trainer.fit(data.train, data.val, epochs=2, batch_size=64)
    tensors, meta = checkpoint.read(tmp_path / "mid" / "checkpoint.safetensors")
    per_epoch = -(-len(data.train) // 64)
    assert 14 < per_epoch < 28  # the last checkpoint (after update 28) was in epoch 2
    assert meta["trainer"]["progress"]["epoch"] == 2
    assert meta["trainer"]["progress"]["batch"] == 28 - per_epoch

    model, _, resumed = make_run(tmp_path / "mid", checkpoint_every=7)
    history = resumed.fit(data.train, data.val, epochs=2, batch_size=64, resume=True)
    same_state(model, full_model)
    assert strip_seconds(history) == strip_seconds(full.history)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import fastnet as fn
    out, mode, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = fn.load_digits()
    model = fn.Sequential(fn.Linear(64, 48), fn.ReLU(), fn.Dropout(0.2), fn.Linear(48, 10), seed=3)
    opt = fn.optim.Adam(model.parameters(), lr=3e-3)
    sched = fn.schedules.ExponentialLR(opt, gamma=0.9)
    trainer = fn.Trainer(model, opt, seed=5, progress=False, checkpoint_dir=out, schedule=sched,
                         checkpoint_every=5)
    step, calls = trainer._step, [0]
    def counting(*args):
        calls[0] += 1
        if calls[0] == at and mode != "none":
            os.kill(os.getpid(), signal.SIGKILL if mode == "kill" else signal.SIGINT)
        return step(*args)
    trainer._step = counting
    write = fn.checkpoint.write
    def dying_write(path, tensors, meta):
        if mode == "kill-in-save" and calls[0] >= at:
            real_replace = os.replace
            def die(*a):
                os.kill(os.getpid(), signal.SIGKILL)
            os.replace = die
        return write(path, tensors, meta)
    fn.checkpoint.write = dying_write
    try:
        trainer.fit(data.train, data.val, epochs=3, batch_size=64, resume=True)
    except KeyboardInterrupt:
        sys.exit(130)
    fn.save(model, os.path.join(out, "final.safetensors"))
""")


def run_script(tmp_path, out, mode, at):
    script = tmp_path / "train_script.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=FASTNET_PARENT)
    return subprocess.run([sys.executable, str(script), str(out), mode, str(at)], env=env,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode,expected_code", [("kill", -signal.SIGKILL),
                                                ("kill-in-save", -signal.SIGKILL),
                                                ("interrupt", 130)])
def test_killed_or_interrupted_mid_epoch_then_resumed_matches(tmp_path, mode, expected_code):
    reference = run_script(tmp_path, tmp_path / "ref", "none", 0)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "run"
    per_epoch = -(-len(digits().train) // 64)
    at = per_epoch + 7  # stopped in update 7 of epoch 2; checkpoints every 5 updates
    stopped = run_script(tmp_path, out, mode, at)
    assert stopped.returncode == expected_code, stopped.stderr
    assert not (out / "final.safetensors").exists()
    tensors, meta = checkpoint.read(out / "checkpoint.safetensors")  # intact, readable
    progress = meta["trainer"]["progress"]
    last_checkpoint = (at - 1) // 5 * 5  # updates done at the last checkpoint before `at`
    if mode == "interrupt":
        assert (progress["epoch"], progress["batch"]) == (2, 7)  # the update under way finished
        assert "interrupted: checkpoint" in stopped.stderr
    else:
        assert (progress["epoch"], progress["batch"]) == (2, last_checkpoint - per_epoch)
    resumed = run_script(tmp_path, out, "none", 0)
    assert resumed.returncode == 0, resumed.stderr
    assert not [n for n in os.listdir(out) if ".tmp." in n]  # a killed save's temporary is gone
    final = fn.load(out / "final.safetensors")
    same_state(final, fn.load(tmp_path / "ref" / "final.safetensors"))
    ref_lines = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(ref_lines) == 3


def test_early_stopping_restores_the_best_epoch(tmp_path):
    data = digits()
    stop = fn.EarlyStopping(monitor="val_loss", patience=2)
    model, _, trainer = make_run(tmp_path, early_stopping=stop)
    # A learning rate high enough that validation loss turns up after a few epochs.
    trainer.optimizer.param_groups[0]["lr"] = 0.4
    history = trainer.fit(data.train, data.val, epochs=60, batch_size=32)
    losses = history.metric("val_loss")
    best = int(np.argmin(losses)) + 1
    assert stop.best_epoch == best
    assert len(history) == best + 2 < 60, losses  # stopped after `patience` worse epochs
    assert history[-1].get("stopped_early")
    assert trainer.evaluate(data.val)["loss"] == pytest.approx(losses[best - 1], rel=1e-6)
    saved = fn.load(tmp_path / "best.safetensors")
    same_state(saved, model)


def test_early_stopping_modes_and_min_delta():
    stop = fn.EarlyStopping(monitor="val_accuracy", patience=2, min_delta=0.01)
    assert stop.mode == "max"
    assert stop.update(1, 0.5)
    assert not stop.update(2, 0.505)  # within min_delta: not an improvement
    assert not stop.should_stop
    assert not stop.update(3, float("nan"))
    assert stop.should_stop and stop.best_epoch == 1
    with pytest.raises(ValueError, match="patience"):
        fn.EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode"):
        fn.EarlyStopping(mode="down")


def test_weight_averaging_follows_its_formula(tmp_path):
    data = digits()
    ema = fn.WeightAveraging(0.9)
    model, optimizer, trainer = make_run(None, averaging=ema)
    arena = model._core.param_arena()
    expected = arena.astype(np.float64).copy()
    step = trainer._step

    def tracked(*args):
        loss = step(*args)
        t = ema.updates + 1
        d = min(0.9, (1 + t) / (10 + t))
        expected[...] = d * expected + (1 - d) * arena
        return loss

    trainer._step = tracked
    trainer.fit(data.train, epochs=1, batch_size=64)
    np.testing.assert_allclose(ema.average, expected, rtol=1e-5, atol=1e-6)
    live = arena.copy()
    with model.mode(training=False):
        averaged_outputs = trainer.evaluate(data.val)
    assert np.array_equal(arena, live)  # evaluation swapped the average in and back out
    trainer.apply_averaged_weights()
    assert np.array_equal(arena, ema.average)
    assert trainer.evaluate(data.val) == averaged_outputs


def test_polyak_is_the_mean_of_the_iterates():
    data = digits()
    polyak = fn.WeightAveraging("polyak")
    model, _, trainer = make_run(None, averaging=polyak)
    arena = model._core.param_arena()
    iterates = [arena.astype(np.float64).copy()]
    step = trainer._step

    def tracked(*args):
        loss = step(*args)
        iterates.append(arena.astype(np.float64).copy())
        return loss

    trainer._step = tracked
    trainer.fit(data.train, epochs=1, batch_size=128)
    np.testing.assert_allclose(polyak.average, np.mean(iterates, axis=0), rtol=1e-5, atol=1e-6)


def test_resume_refuses_another_model_data_or_batch_size(tmp_path):
    data = digits()
    _, _, trainer = make_run(tmp_path)
    trainer.fit(data.train, data.val, epochs=1)
    other = fn.Sequential(fn.Linear(64, 10))
    with pytest.raises(checkpoint.CheckpointError, match="another model"):
        fn.Trainer(other, fn.optim.SGD(other.parameters(), lr=0.1), seed=11, progress=False,
                   checkpoint_dir=tmp_path).fit(data.train, epochs=2, resume=True)
    model, _, again = make_run(tmp_path)
    before = model.state_dict()
    with pytest.raises(checkpoint.CheckpointError, match="batch_size"):
        again.fit(data.train, data.val, epochs=2, batch_size=32, resume=True)
    with pytest.raises(checkpoint.CheckpointError, match="data"):
        again.fit(data.val, data.val, epochs=2, resume=True)
    for name, value in model.state_dict().items():
        assert np.array_equal(value, before[name])


@pytest.mark.parametrize("damage", ["truncate", "header", "offsets", "meta"])
def test_damaged_checkpoints_are_clear_errors(tmp_path, damage):
    data = digits()
    _, _, trainer = make_run(tmp_path)
    trainer.fit(data.train, epochs=1)
    path = tmp_path / "checkpoint.safetensors"
    raw = bytearray(path.read_bytes())
    size = int.from_bytes(raw[:8], "little")
    if damage == "truncate":
        raw = raw[:len(raw) // 2]
    elif damage == "header":
        raw[:8] = (10 ** 12).to_bytes(8, "little")
    elif damage == "offsets":
        header = raw[8:8 + size].decode()
        raw[8:8 + size] = header.replace('"data_offsets":[0,', '"data_offsets":[1,', 1).encode()
    else:
        header = raw[8:8 + size].decode().replace('"format":"\\"fastnet-checkpoint\\""',
                                                  '"format":"\\"other\\""')
        raw[8:8 + size] = header.encode()
    path.write_bytes(bytes(raw))
    model, _, again = make_run(tmp_path)
    before = model.state_dict()
    with pytest.raises(checkpoint.CheckpointError):
        again.fit(data.train, epochs=2, resume=True)
    for name, value in model.state_dict().items():
        assert np.array_equal(value, before[name])


def test_checkpoint_file_is_safetensors_with_pytorch_names(tmp_path):
    data = digits()
    model, _, trainer = make_run(tmp_path)
    trainer.fit(data.train, epochs=1)
    tensors, meta = checkpoint.read(tmp_path / "checkpoint.safetensors")
    for name, value in model.state_dict().items():
        assert np.array_equal(tensors[name], value)
    assert meta["format"] == "fastnet-checkpoint"
    assert meta["trainer"]["progress"]["epoch"] == 2
    assert len([k for k in tensors if k.startswith("optimizer.state.")]) == 1  # momentum
    safetensors = pytest.importorskip("safetensors.numpy")
    loaded = safetensors.load_file(str(tmp_path / "checkpoint.safetensors"))
    assert np.array_equal(loaded["0.weight"], model.state_dict()["0.weight"])


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    path = tmp_path / "c.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / f"c.safetensors.tmp.{dead}").write_bytes(b"partial")
    (tmp_path / f"c.safetensors.tmp.{os.getppid()}").write_bytes(b"a live writer's")
    checkpoint.write(path, {"w": np.zeros(2, np.float32)}, {})
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(["c.safetensors", f"c.safetensors.tmp.{os.getppid()}"])


def test_deterministic_resume_on_another_thread_count(tmp_path):
    """With deterministic=True a run checkpointed on one thread and resumed on two ends bitwise
    as a run on two threads from the start (the CNN: convolution, batch norm, dropout)."""
    train, val = image_data(digits())
    fn.set_num_threads(2)
    full_model, _, full = make_run(tmp_path / "full", "cnn", deterministic=True)
    full.fit(train, val, epochs=3, batch_size=32)
    fn.set_num_threads(1)
    _, _, first = make_run(tmp_path / "split", "cnn", deterministic=True)
    first.fit(train, val, epochs=1, batch_size=32)
    fn.set_num_threads(2)
    model, _, second = make_run(tmp_path / "split", "cnn", deterministic=True)
    second.fit(train, val, epochs=3, batch_size=32, resume=True)
    assert not fn.get_deterministic()  # fit restores the global setting
    same_state(model, full_model)


def test_cli_deterministic_gives_the_same_model_on_1_and_2_threads(tmp_path):
    from fastnet import cli

    for threads in (1, 2):
        assert cli.main(["train", "--model", "cnn", "--epochs", "2", "--deterministic",
                         "--threads", str(threads), "--quiet",
                         "--out", str(tmp_path / str(threads))]) == 0
    same_state(fn.load(tmp_path / "1" / "model.safetensors"),
               fn.load(tmp_path / "2" / "model.safetensors"))


def test_cli_resume_continues_the_run(tmp_path):
    from fastnet import cli

    common = ["train", "--quiet", "--early-stopping", "50", "--average", "ema:0.99"]
    assert cli.main(common + ["--epochs", "6", "--out", str(tmp_path / "full")]) == 0
    assert cli.main(common + ["--epochs", "3", "--out", str(tmp_path / "split")]) == 0
    assert cli.main(common + ["--epochs", "6", "--out", str(tmp_path / "split"),
                              "--resume"]) == 0
    for name in ("model.safetensors", "best.safetensors"):
        same_state(fn.load(tmp_path / "split" / name), fn.load(tmp_path / "full" / name))
    full = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    split = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in __import__("json").loads(line).items()  # noqa: E731
                          if k != "seconds"}
    assert [strip(line) for line in split] == [strip(line) for line in full]
