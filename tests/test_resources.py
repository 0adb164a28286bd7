"""Resources: memory that stays flat over a long training run, and two models trained at once
from two Python threads (the C core releases the GIL around its work)."""

import os
import sys
import threading

import numpy as np
import pytest

import fastnet as fn
from fastnet import _core, zoo


def resident_bytes():
    """The process's resident set size, from /proc/self/statm (pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="reads /proc/self/statm")


def test_ten_thousand_steps_do_not_grow_resident_memory(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 20)).astype(np.float32)
    y = rng.integers(0, 5, 32)
    model = zoo.mlp(20, 5, hidden=(32,), seed=0)
    opt = fn.optim.Adam(model.parameters(), lr=1e-3, clip_grad_norm=10.0)
    loss = fn.CrossEntropyLoss()
    core = model._core

    def run(steps):
        for step in range(steps):
            model.train_step(x, y, loss, opt)
            if step % 50 == 0:  # the other calls that allocate in C or in the boundary
                core.forward(x, True)
                core.backward(np.ones((32, 5), np.float32), True)
                core.predict(x)
                core.forward(x[:7], False)
                core.node_output(1)
            if step % 500 == 0:  # files, and models made and freed
                core.save(str(tmp_path / "m.safetensors"))
                _core.Model.load(str(tmp_path / "m.safetensors")).predict(x)

    run(500)  # warm-up: buffers planned, the allocator's arenas sized
    before = resident_bytes()
    run(10_000)
    grown = resident_bytes() - before
    assert grown < 2 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MB over 10,000 steps"
    assert np.all(np.isfinite(core.param_arena()))


def test_refused_steps_do_not_grow_resident_memory():
    # The failure paths (messages, the search for the layer) allocate nothing that stays.
    model = zoo.mlp(20, 5, hidden=(32,), seed=0)
    core = model._core
    core.set_optimizer(_core.OPT_SGD, lr=0.1, check_finite=True)
    x = np.random.default_rng(1).standard_normal((16, 20)).astype(np.float32)
    y = np.arange(16) % 5
    dict(model.named_parameters())["2.weight"].data[0, 0] = np.nan

    def run(steps):
        for _ in range(steps):
            with pytest.raises(FloatingPointError):
                core.train_step(x, y)

    run(200)
    before = resident_bytes()
    run(3000)
    assert resident_bytes() - before < 2 * 2**20


# ---------------------------------------------------------------------------- two threads


def make_models():
    """An MLP, and a CNN with batch norm and dropout, with their optimizers and data."""
    rng = np.random.default_rng(2)
    mlp = zoo.mlp(64, 10, hidden=(128, 64), seed=5)
    cnn = fn.Sequential(fn.Conv2d(1, 16, 3, padding=1), fn.BatchNorm2d(16), fn.ReLU(),
                        fn.MaxPool2d(2), fn.Dropout(0.2), fn.Flatten(), fn.Linear(256, 10),
                        input_shape=(1, 8, 8), seed=6)
    x = rng.random((256, 64), dtype=np.float32)
    y = rng.integers(0, 10, 256)
    return [(mlp, fn.optim.SGD(mlp.parameters(), lr=0.05, momentum=0.9), x, y),
            (cnn, fn.optim.Adam(cnn.parameters(), lr=1e-3), x.reshape(-1, 1, 8, 8), y)]


def train(model, opt, x, y, steps=40, batch=32):
    loss = fn.CrossEntropyLoss()
    for step in range(steps):
        i = (step * batch) % (len(x) - batch)
        model.train_step(x[i:i + batch], y[i:i + batch], loss, opt)
    model._core.predict(x)
    return model.state_dict()


def test_two_models_trained_at_once_match_one_after_the_other():
    sequential = [train(*job) for job in make_models()]
    jobs = make_models()
    results, errors = [None, None], []

    def work(i):
        try:
            results[i] = train(*jobs[i])
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for alone, together in zip(sequential, results):
        assert list(alone) == list(together)
        for name in alone:
            assert alone[name].tobytes() == together[name].tobytes(), name


def test_changing_the_thread_count_while_another_thread_trains_is_safe():
    # The count is read once per pass: a change lands at the next forward, backward or update.
    model, opt, x, y = make_models()[1]
    stop = threading.Event()

    def toggle():
        while not stop.is_set():
            for n in (1, 3, 2):
                fn.set_num_threads(n)

    toggler = threading.Thread(target=toggle)
    toggler.start()
    try:
        train(model, opt, x, y, steps=60)
    finally:
        stop.set()
        toggler.join()
    assert all(np.all(np.isfinite(v)) for v in model.state_dict().values())


@pytest.fixture
def no_forced_switches():
    """A switch interval so long that a thread holding the GIL keeps it unless it releases it
    itself: another thread runs during a call only if the call released the GIL."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    yield
    sys.setswitchinterval(before)


def progress_during(call):
    """How many times another Python thread ran while call() was running."""
    counter, stop, started = [0], threading.Event(), threading.Event()

    def count():
        started.set()
        while not stop.is_set():
            counter[0] += 1
            stop.wait(0.0001)  # gives the GIL back each time, so call() can return

    other = threading.Thread(target=count)
    other.start()
    started.wait()
    before = counter[0]
    call()
    during = counter[0] - before
    stop.set()
    other.join()
    return during


def test_the_long_calls_release_the_gil(tmp_path, no_forced_switches):
    # On one thread, so that a core is left for the counting thread: with both cores in the
    # call's team, the 50 updates (20 ms) could end before the scheduler gave it a turn, and
    # "step" failed one run in three.
    fn.set_num_threads(1)
    rng = np.random.default_rng(3)
    model = zoo.mlp(512, 10, hidden=(1024, 1024), seed=0)
    core = model._core
    core.set_optimizer(_core.OPT_SGD, lr=0.01)
    x = rng.random((1024, 512), dtype=np.float32)
    y = rng.integers(0, 10, 1024)
    path = str(tmp_path / "big.safetensors")
    core.save(path)
    calls = {
        "train_step": lambda: [core.train_step(x, y) for _ in range(3)],
        "forward": lambda: [core.forward(x, True) for _ in range(3)],
        "backward": lambda: [core.backward(np.ones((1024, 10), np.float32), True)
                             for _ in range(3)],
        "step": lambda: [core.step() for _ in range(50)],
        "predict": lambda: [core.predict(x) for _ in range(3)],
        "save": lambda: [core.save(path) for _ in range(3)],
        "load": lambda: [_core.Model.load(path) for _ in range(3)],
    }
    for name, call in calls.items():
        assert progress_during(call) > 0, f"{name} held the GIL"
    # The check itself can fail: a call that holds the GIL lets the other thread run not once.
    assert progress_during(lambda: sum(i for i in range(3_000_000))) == 0


# ---------------------------------------------------------------------------- stray temp files


def test_a_save_removes_the_temporaries_of_dead_writers(tmp_path):
    import subprocess

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    path = tmp_path / "m.safetensors"
    stale = tmp_path / f"m.safetensors.tmp.{dead}"
    kept = [f"m.safetensors.tmp.{os.getppid()}",  # a live process's save in progress
            f"other.safetensors.tmp.{dead}",      # another file's
            f"m.safetensors.tmp.{dead}.bak",      # not a temporary's name
            "m.safetensors.tmp."]
    stale.write_bytes(b"the start of a file whose writer was killed")
    for name in kept:
        (tmp_path / name).write_bytes(b"keep")
    (tmp_path / f"m.safetensors.tmp.{int(dead) + 1}0").mkdir()  # not a file (pid unlikely alive)
    model = zoo.mlp(8, 2, hidden=(4,))
    fn.save(model, path)
    assert not stale.exists()
    for name in kept:
        assert (tmp_path / name).read_bytes() == b"keep", name
    assert (tmp_path / f"m.safetensors.tmp.{int(dead) + 1}0").is_dir()
    assert np.array_equal(fn.load(path).state_dict()["0.weight"], model.state_dict()["0.weight"])
