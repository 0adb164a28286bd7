"""Data-parallel training over MPI (fastnet.distributed).

The tests that need MPI run tests/mpi/worker.py under ``mpirun -n 2`` (and ``-n 3``, more ranks
than this machine's cores with --oversubscribe) and skip, saying why, where mpirun or mpi4py is
missing. Each subprocess runs from a temporary directory with PYTHONPATH set to the fastnet
under test, so the source tree cannot shadow it.
"""
import importlib.util
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import fastnet as fn
from fastnet import distributed
from fastnet.distributed import (MPIUnavailableError, make_backend, shard_bounds,
                                 sharded_step)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fn.__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mpi", "worker.py")
MPIRUN = shutil.which("mpirun")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None

needs_mpi = pytest.mark.skipif(
    MPIRUN is None or not HAVE_MPI4PY,
    reason="needs mpirun and mpi4py (apt-get install openmpi-bin libopenmpi-dev; "
           "pip install mpi4py); .ci/run installs them")
TRAINER_HAS_DISTRIBUTED = "distributed" in inspect.signature(fn.Trainer).parameters
needs_trainer_distributed = pytest.mark.skipif(
    not TRAINER_HAS_DISTRIBUTED,
    reason='enabled once fastnet.Trainer takes distributed="mpi"')

# A rank that hangs would hang the test run: every mpirun gets this long, then its process group
# is killed and the test fails.
TIMEOUT = 180


def run_mpi(n, args, cwd, timeout=TIMEOUT):
    """Runs ``mpirun -n n python *args`` (``n`` None: plain python, one rank) from ``cwd``;
    returns the CompletedProcess. A run that outlives ``timeout`` is killed and fails the test."""
    command = [sys.executable, *args]
    if n is not None:
        launcher = [MPIRUN, "-n", str(n), "--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            launcher.append("--allow-run-as-root")
        command = launcher + command
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("OMP_NUM_THREADS", None)
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{' '.join(command)} did not end within {timeout} s (a hang)\n"
                    f"stdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def run_worker(n, scenario, config, tmp_path):
    result = run_mpi(n, [WORKER, scenario, json.dumps(config)], cwd=tmp_path)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return np.load(config["out"]) if "out" in config else None


def mlp(seed=0, dropout=False):
    layers = [fn.Linear(20, 32), fn.ReLU()] + ([fn.Dropout(0.3)] if dropout else []) \
        + [fn.Linear(32, 5)]
    return fn.Sequential(*layers, seed=seed)


def data(sizes, seed=7, features=20, classes=5):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, features)).astype(np.float32), rng.integers(0, classes, n))
            for n in sizes]


# ---------------------------------------------------------------------------- without MPI


def test_shard_bounds_split_every_batch_contiguously_and_evenly():
    for size in range(1, 8):
        for n in range(0, 40):
            bounds = [shard_bounds(n, size, r) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1
            assert sizes == sorted(sizes, reverse=True)  # the first n % size take one more


def test_shard_bounds_refuses_what_is_not_a_split():
    with pytest.raises(ValueError, match="0 <= rank < size"):
        shard_bounds(10, 2, 2)
    with pytest.raises(ValueError, match="size >= 1"):
        shard_bounds(10, 0, 0)
    with pytest.raises(TypeError, match="n must be an integer"):
        shard_bounds(10.0, 2, 0)


@pytest.mark.parametrize("make_opt", [
    lambda m: fn.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, clip_grad_norm=1.0),
    lambda m: fn.optim.Adam(m.parameters(), lr=0.01)], ids=["sgd", "adam"])
def test_sharded_step_with_one_part_is_train_step_bit_for_bit(make_opt):
    a, b = mlp(dropout=True), mlp(dropout=True)
    opt_a, opt_b = make_opt(a), make_opt(b)
    loss = fn.CrossEntropyLoss()
    for x, y in data([16, 9, 16]):
        expected = a.train_step(x, y, loss, opt_a)
        value, correct = sharded_step(b, x, y, loss, opt_b, parts=1)
        assert value == expected
        assert correct == a.last_train_correct
    assert np.array_equal(a._core.param_arena(), b._core.param_arena())
    assert a._core.rng_step == b._core.rng_step == 3


@pytest.mark.parametrize("parts", [2, 3, 5])
@pytest.mark.parametrize("loss", [fn.CrossEntropyLoss(), fn.MSELoss(),
                                  fn.CrossEntropyLoss(weight=[1, 0, 2, 0.5, 3],
                                                      label_smoothing=0.1)],
                         ids=["ce", "mse", "weighted-smoothed-ce"])
def test_sharded_step_is_the_whole_batch_step_to_round_off(parts, loss):
    # Uneven batches, and a 3-sample batch that leaves some of 5 parts empty.
    a, b = mlp(), mlp()
    opt_a = fn.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = fn.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    start = a._core.param_arena().copy()
    for x, y in data([16, 13, 3, 7]):
        t = y
        if isinstance(loss, fn.MSELoss):
            t = np.eye(5, dtype=np.float32)[y]
        expected = a.train_step(x, t, loss, opt_a)
        value, _ = sharded_step(b, x, t, loss, opt_b, parts=parts)
        assert value == pytest.approx(expected, rel=1e-6)
    wa, wb = a._core.param_arena(), b._core.param_arena()
    np.testing.assert_allclose(wb, wa, rtol=1e-5, atol=1e-6)
    assert np.abs(wa - start).max() > 1e-2  # training moved the weights far beyond the tolerance


def test_sharded_step_counts_a_weighted_shard_whose_labels_all_weigh_zero():
    # With label smoothing, rows whose label has weight 0 still have a loss; a shard made only of
    # them must still contribute (the kernel alone refuses a batch whose label weights sum to 0).
    loss = fn.CrossEntropyLoss(weight=[0, 1, 1, 1, 1], label_smoothing=0.2)
    x = np.random.default_rng(1).standard_normal((4, 20)).astype(np.float32)
    y = np.array([0, 0, 3, 4])  # the first of two shards: labels of weight 0 only
    a, b = mlp(), mlp()
    opt_a, opt_b = fn.optim.SGD(a.parameters(), lr=0.5), fn.optim.SGD(b.parameters(), lr=0.5)
    expected = a.train_step(x, y, loss, opt_a)
    value, correct = sharded_step(b, x, y, loss, opt_b, parts=2)
    assert value == pytest.approx(expected, rel=1e-6)
    assert correct == a.last_train_correct
    np.testing.assert_allclose(b._core.param_arena(), a._core.param_arena(), rtol=1e-5,
                               atol=1e-7)


def test_sharded_step_slices_distillation_targets():
    teacher = mlp(seed=5)
    loss = fn.DistillationLoss(temperature=2.0, alpha=0.7)
    a, b = mlp(), mlp()
    opt_a, opt_b = fn.optim.Adam(a.parameters(), lr=0.01), fn.optim.Adam(b.parameters(), lr=0.01)
    for x, y in data([12, 7]):
        targets = (y, teacher(x))
        expected = a.train_step(x, targets, loss, opt_a)
        value, correct = sharded_step(b, x, targets, loss, opt_b, parts=3)
        assert value == pytest.approx(expected, rel=1e-6)
        assert correct == a.last_train_correct
    np.testing.assert_allclose(b._core.param_arena(), a._core.param_arena(), rtol=1e-4,
                               atol=1e-6)


def test_sharded_step_refuses_a_non_finite_loss_without_changing_the_weights():
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    model._core.param_arena()[...] *= np.float32(1e36)  # logits overflow to Inf
    before = model._core.param_arena().copy()
    (x, y), = data([8])
    with pytest.raises(FloatingPointError, match="weights were not updated") as info:
        sharded_step(model, x, y, fn.CrossEntropyLoss(), opt, parts=2)
    assert info.value.all_ranks
    assert np.array_equal(model._core.param_arena(), before)
    assert opt.steps == 0


def test_sharded_step_checks_its_arguments():
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    (x, y), = data([4])
    with pytest.raises(ValueError, match="parts must be a positive integer"):
        sharded_step(model, x, y, fn.CrossEntropyLoss(), opt, parts=0)
    with pytest.raises(ValueError, match="another model"):
        sharded_step(mlp(), x, y, fn.CrossEntropyLoss(), opt, parts=2)
    with pytest.raises(TypeError, match="fastnet loss"):
        sharded_step(model, x, y, "ce", opt, parts=2)
    with pytest.raises(ValueError, match="class weight 0"):
        sharded_step(model, x, np.zeros(4, int), fn.CrossEntropyLoss(weight=[0, 1, 1, 1, 1]),
                     opt, parts=2)


def test_make_backend_names_the_choices():
    model = mlp()
    assert make_backend(None, model, fn.optim.SGD(model.parameters())) is None
    with pytest.raises(ValueError, match='None or "mpi"'):
        make_backend("gloo", model, fn.optim.SGD(model.parameters()))


def test_without_mpi4py_asking_for_mpi_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now fails
    model = mlp()
    opt = fn.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(MPIUnavailableError) as info:
        make_backend("mpi", model, opt)
    message = str(info.value)
    assert 'pip install "fastnet[mpi]"' in message
    assert "openmpi-bin" in message and "libopenmpi-dev" in message
    assert isinstance(info.value, ImportError)
    # Everything else works without it.
    (x, y), = data([8])
    assert np.isfinite(model.train_step(x, y, fn.CrossEntropyLoss(), opt))
    assert np.isfinite(sharded_step(model, x, y, fn.CrossEntropyLoss(), opt, parts=2)[0])


@needs_trainer_distributed
def test_without_mpi4py_the_trainer_refuses_distributed_mpi(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    model = mlp()
    with pytest.raises(ImportError, match=r"fastnet\[mpi\]"):
        fn.Trainer(model, fn.optim.SGD(model.parameters(), lr=0.1), distributed="mpi")


def test_launched_by_mpirun_reads_the_launchers_variables(monkeypatch):
    for name in distributed._LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_mpirun()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert not distributed.launched_by_mpirun()
    monkeypatch.setenv("PMI_SIZE", "4")
    assert distributed.launched_by_mpirun()


def test_the_mpi_extra_installs_mpi4py():
    path = os.path.join(os.path.dirname(HERE), "pyproject.toml")
    if not os.path.exists(path):
        pytest.skip("no pyproject.toml beside the tests")
    tomllib = pytest.importorskip("tomllib")
    with open(path, "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert any(req.startswith("mpi4py") for req in extras["mpi"])


# ---------------------------------------------------------------------------- under mpirun


def train_config(tmp_path, model, optimizer, loss, batches, **extra):
    return {"model": model, "optimizer": optimizer, "loss": loss, "batches": batches,
            "out": str(tmp_path / "result.npz"), "reference": True, **extra}


@needs_mpi
@pytest.mark.parametrize("model,optimizer,loss", [
    ("mlp", "sgd", "ce"), ("cnn", "sgd", "mse"), ("mlp", "adam", "weighted"),
])
def test_two_ranks_train_as_one_process_does(tmp_path, model, optimizer, loss):
    # Uneven batches (13 = 7 + 6) and a 1-sample batch that leaves rank 1 with nothing.
    config = train_config(tmp_path, model, optimizer, loss, [16, 16, 13, 1, 7, 10])
    r = run_worker(2, "train", config, tmp_path)
    assert int(r["size"]) == 2 and int(r["threads"]) == 1
    assert r["started_in_sync"] and r["in_sync"]  # rank 1's other seed was overwritten
    assert int(r["steps"]) == int(r["optimizer_steps"]) == 6
    # Bit for bit what one process computes from the same shards ...
    assert np.array_equal(r["params"], r["sharded_params"])
    assert np.array_equal(r["losses"], r["sharded_losses"])
    # ... and what one process computes from the whole batches, to float32 round-off.
    np.testing.assert_allclose(r["losses"], r["plain_losses"], rtol=1e-5)
    np.testing.assert_allclose(r["params"], r["plain_params"], rtol=1e-5, atol=1e-6)
    assert np.abs(r["params"] - r["initial_params"]).max() > 1e-3  # far beyond the tolerance
    if loss != "mse":
        assert (r["corrects"] >= 0).all() and r["corrects"].sum() > 0
    else:
        assert (r["corrects"] == -1).all()  # None: the loss has no classes


@needs_mpi
def test_deterministic_reduction_on_three_ranks_is_bitwise_the_one_process_sum(tmp_path):
    # Three ranks on two cores; batches of 2 leave a rank empty.
    config = train_config(tmp_path, "dropout", "adam", "weighted", [16, 11, 2, 9, 16],
                          deterministic=True)
    r = run_worker(3, "train", config, tmp_path)
    assert int(r["size"]) == 3 and r["in_sync"]
    assert np.array_equal(r["params"], r["sharded_params"])
    assert np.array_equal(r["losses"], r["sharded_losses"])


@needs_mpi
@pytest.mark.skipif(not hasattr(fn, "set_deterministic"), reason="needs fn.set_deterministic")
def test_with_deterministic_kernels_the_thread_count_does_not_matter(tmp_path):
    # Ranks of one thread each against the one-process sum computed with two threads (which,
    # without fn.set_deterministic, sum this network's convolution gradients in another order).
    config = train_config(tmp_path, "wide_cnn", "adam", "ce", [16, 13, 16],
                          deterministic=True, kernels_deterministic=True, reference_threads=2)
    r = run_worker(2, "train", config, tmp_path)
    assert int(r["threads"]) == 1
    assert np.array_equal(r["params"], r["sharded_params"])


@needs_mpi
def test_dropout_masks_differ_by_rank_and_match_the_sharded_step(tmp_path):
    config = train_config(tmp_path, "dropout", "sgd", "ce", [16, 16, 12])
    r = run_worker(2, "train", config, tmp_path)
    assert r["in_sync"]
    assert np.array_equal(r["params"], r["sharded_params"])
    # Dropout's masks are drawn per rank, so the whole-batch run differs beyond round-off.
    assert not np.allclose(r["params"], r["plain_params"], rtol=1e-5, atol=1e-6)


@needs_mpi
def test_batch_norm_statistics_are_per_rank_until_synchronised(tmp_path):
    config = train_config(tmp_path, "bn", "adam", "ce", [16, 16, 12, 8])
    r = run_worker(2, "train", config, tmp_path)
    assert np.array_equal(r["params"], r["sharded_params"])  # train-mode forwards: shard stats
    before, after, integer = r["buffers_before"], r["buffers_after"], r["integer_buffers"]
    assert integer.any() and not integer.all()
    assert not np.array_equal(before[0][~integer], before[1][~integer])  # per rank
    assert not r["in_sync"] and r["synced"]
    np.testing.assert_allclose(after[~integer], before[:, ~integer].mean(axis=0), rtol=1e-6)
    assert np.array_equal(after[integer], before[0][integer])  # num_batches_tracked: 4 steps
    assert (after[integer] == 4).all()


@needs_mpi
def test_one_rank_without_mpirun_is_the_plain_train_step(tmp_path):
    config = train_config(tmp_path, "dropout", "adam", "ce", [16, 9, 16])
    r = run_worker(None, "train", config, tmp_path)
    assert int(r["size"]) == 1
    assert np.array_equal(r["params"], r["plain_params"])
    assert np.array_equal(r["losses"], r["plain_losses"])


@needs_mpi
@pytest.mark.parametrize("load", ["all", "root"])
def test_resuming_from_rank_zeros_checkpoint_continues_bit_for_bit(tmp_path, load):
    config = {"model": "bn", "optimizer": "adam", "loss": "ce",
              "batches": [16, 16, 12, 8, 9, 16, 6], "save_at": 3,
              "checkpoint": str(tmp_path / "checkpoint.pkl")}
    full = run_worker(2, "resume", {**config, "out": str(tmp_path / "full.npz")}, tmp_path)
    assert os.path.exists(config["checkpoint"])
    resumed = run_worker(2, "resume", {**config, "load": load,
                                       "out": str(tmp_path / "resumed.npz")}, tmp_path)
    assert full["in_sync"] and resumed["in_sync"]
    for key in ("params", "buffers", "optimizer_steps", "rng_step"):
        assert np.array_equal(full[key], resumed[key]), key
    assert int(resumed["optimizer_steps"]) == 7 and int(resumed["rng_step"]) == 7


@needs_mpi
@pytest.mark.parametrize("how,rank", [("raise", 1), ("raise", 0), ("guarded", 1),
                                      ("kill", 1)])
def test_a_failing_rank_ends_the_whole_job(tmp_path, how, rank):
    # The other rank is waiting in the next allreduce: without the abort it would wait forever
    # (run_mpi fails the test if the job outlives its timeout).
    result = run_mpi(2, [WORKER, "fail", json.dumps({"rank": rank, "how": how})], cwd=tmp_path)
    assert result.returncode != 0
    assert f"rank {rank} failing now ({how})" in result.stderr
    if how == "kill":
        assert "signal 9" in result.stderr
    else:
        assert f"RuntimeError: deliberate failure on rank {rank}" in result.stderr
        assert f"fastnet: rank {rank} of 2:" in result.stderr  # then MPI_Abort (Open MPI's
        # own notice of it is not asserted: it is sometimes lost as the job is torn down)
    assert "caught:" not in result.stderr  # guard aborted before the caller could catch it


# ---------------------------------------------------------------------------- the Trainer


@needs_mpi
@needs_trainer_distributed
def test_trainer_distributed_mpi_matches_one_process(tmp_path):
    config = {"model": "mlp", "optimizer": "sgd", "samples": 203, "epochs": 3,
              "batch_size": 32, "metrics": str(tmp_path / "metrics.jsonl")}
    mpi = run_worker(2, "trainer", {**config, "distributed": "mpi",
                                    "out": str(tmp_path / "mpi.npz")}, tmp_path)
    with open(config["metrics"]) as f:
        lines = f.read().splitlines()
    assert len(lines) == 3  # rank 0 alone wrote: one line per epoch
    single = run_worker(None, "trainer", {**config, "distributed": None,
                                          "metrics": str(tmp_path / "single.jsonl"),
                                          "out": str(tmp_path / "single.npz")}, tmp_path)
    np.testing.assert_allclose(mpi["params"], single["params"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mpi["train_loss"], single["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(mpi["val_loss"], single["val_loss"], rtol=1e-5)


@needs_mpi
@needs_trainer_distributed
def test_command_line_under_mpirun_prints_and_writes_once(tmp_path):
    out = tmp_path / "run"
    result = run_mpi(2, ["-m", "fastnet", "train", "--epochs", "2", "--quiet", "--out",
                         str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("accuracy") == 1, result.stdout  # rank 0 alone printed
    with open(out / "metrics.jsonl") as f:
        assert len(f.read().splitlines()) == 3  # two epochs and the final evaluation, once
    assert fn.load(str(out / "model.safetensors")).num_parameters() > 0


@needs_mpi
@needs_trainer_distributed
def test_command_line_resume_under_mpirun_ends_as_the_uninterrupted_run(tmp_path):
    """A CNN with batch norm and dropout on 2 ranks, checkpointed by rank 0 after 2 epochs and
    resumed on 2 ranks, ends with the weights of the 4-epoch run, bit for bit."""
    common = ["-m", "fastnet", "train", "--model", "cnn", "--quiet", "--threads", "1"]
    full = run_mpi(2, common + ["--epochs", "4", "--out", str(tmp_path / "full")], cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    first = run_mpi(2, common + ["--epochs", "2", "--out", str(tmp_path / "split")],
                    cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_mpi(2, common + ["--epochs", "4", "--out", str(tmp_path / "split"),
                                   "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a = fn.load(str(tmp_path / "full" / "model.safetensors")).state_dict()
    b = fn.load(str(tmp_path / "split" / "model.safetensors")).state_dict()
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_the_modules_examples_run():
    import doctest

    result = doctest.testmod(distributed, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
