"""Programs that tests/test_distributed.py runs under ``mpirun`` (or alone, as one rank).

    python worker.py SCENARIO CONFIG_JSON

Scenarios
    train       train data-parallel on fixed global batches; rank 0 writes the final weights, the
                losses and correct counts, and (with ``"reference": true``) the same run computed
                in one process by ``sharded_step`` and by plain ``model.train_step``, to
                ``config["out"]`` (an .npz file).
    resume      like train, from a checkpoint that rank 0 wrote (``config["checkpoint"]``);
                ``"save_at"`` makes a run write one after that many steps.
    fail        train a few steps, then rank ``config["rank"]`` fails as ``config["how"]`` says:
                ``raise`` (an uncaught exception), ``guarded`` (an exception inside
                ``backend.guard()`` that the program then catches and turns into an exit
                status), ``kill`` (SIGKILL).
    trainer     Trainer(..., distributed="mpi").fit; rank 0 writes the weights and the history.

Every rank runs one kernel thread, so that one-process references computed here match bit for
bit.
"""
import json
import os
import pickle
import signal
import sys

import numpy as np

import fastnet as fn
from fastnet.distributed import MPIBackend, shard_bounds, sharded_step

IN, CLASSES = 20, 5


def build(kind, seed):
    """A small model of the given kind, and its per-sample input shape."""
    if kind == "mlp":
        layers = [fn.Linear(IN, 32), fn.ReLU(), fn.Linear(32, CLASSES)]
        return fn.Sequential(*layers, seed=seed), (IN,)
    if kind == "dropout":
        layers = [fn.Linear(IN, 32), fn.ReLU(), fn.Dropout(0.3), fn.Linear(32, CLASSES)]
        return fn.Sequential(*layers, seed=seed), (IN,)
    if kind == "bn":
        layers = [fn.Linear(IN, 32), fn.BatchNorm1d(32), fn.ReLU(), fn.Dropout(0.2),
                  fn.Linear(32, CLASSES)]
        return fn.Sequential(*layers, seed=seed), (IN,)
    if kind == "cnn":
        layers = [fn.Conv2d(1, 4, 3, padding=1), fn.ReLU(), fn.MaxPool2d(2), fn.Flatten(),
                  fn.Linear(4 * 3 * 3, CLASSES)]
        return fn.Sequential(*layers, seed=seed, input_shape=(1, 6, 6)), (1, 6, 6)
    if kind == "wide_cnn":  # large enough for two threads to split its reductions
        layers = [fn.Conv2d(2, 16, 3, padding=1), fn.ReLU(), fn.MaxPool2d(2), fn.Flatten(),
                  fn.Linear(16 * 6 * 6, CLASSES)]
        return fn.Sequential(*layers, seed=seed, input_shape=(2, 12, 12)), (2, 12, 12)
    raise ValueError(f"unknown model kind {kind!r}")


def build_optimizer(kind, model):
    if kind == "sgd":
        return fn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, clip_grad_norm=1.0)
    if kind == "adam":
        return fn.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3)
    raise ValueError(f"unknown optimizer {kind!r}")


def build_loss(kind):
    if kind == "ce":
        return fn.CrossEntropyLoss()
    if kind == "weighted":
        return fn.CrossEntropyLoss(weight=[1.0, 0.0, 2.0, 0.5, 3.0], label_smoothing=0.1)
    if kind == "mse":
        return fn.MSELoss()
    raise ValueError(f"unknown loss {kind!r}")


def batches(config, shape):
    """The global batches: the same on every rank."""
    rng = np.random.default_rng(config.get("data_seed", 7))
    out = []
    for size in config["batches"]:
        x = rng.standard_normal((size,) + shape).astype(np.float32)
        y = rng.integers(0, CLASSES, size)
        out.append((x, y))
    return out


def targets(loss_kind, y):
    if loss_kind == "mse":
        onehot = np.zeros((len(y), CLASSES), np.float32)
        onehot[np.arange(len(y)), y] = 1
        return onehot
    return y


def distributed_run(config, backend, model, optimizer, loss, data, start=0, stop=None,
                    on_step=None):
    """Steps start:stop of the data-parallel run; (losses, corrects)."""
    losses, corrects = [], []
    for step, (x, y) in enumerate(data[start:stop], start):
        local = backend.shard(np.arange(len(x)))
        value, correct = backend.train_step(model, x[local], targets(config["loss"], y[local]),
                                            loss, optimizer, global_batch_size=len(x))
        losses.append(value)
        corrects.append(-1 if correct is None else correct)
        if on_step is not None:
            on_step(step + 1)
    return losses, corrects


def reference_runs(config, shape, size, data):
    """The same training in this one process: by sharded_step over ``size`` parts, and by plain
    model.train_step on each whole batch."""
    out = {}
    for name in ("sharded", "plain"):
        model, _ = build(config["model"], seed=0)
        optimizer = build_optimizer(config["optimizer"], model)
        loss = build_loss(config["loss"])
        losses = []
        for x, y in data:
            t = targets(config["loss"], y)
            if name == "sharded":
                value, _ = sharded_step(model, x, t, loss, optimizer, parts=size)
            else:
                value = model.train_step(x, t, loss, optimizer)
            losses.append(value)
        out[f"{name}_params"] = model._core.param_arena().copy()
        out[f"{name}_losses"] = np.array(losses)
    return out


def scenario_train(config):
    fn.set_num_threads(1)
    if config.get("kernels_deterministic"):
        fn.set_deterministic(True)
    # Every rank but 0 starts from another seed, so other weights and dropout masks: creating
    # the backend must give every rank rank 0's.
    model, shape = build(config["model"], seed=int(os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    optimizer = build_optimizer(config["optimizer"], model)
    loss = build_loss(config["loss"])
    data = batches(config, shape)
    backend = MPIBackend(model, optimizer, deterministic=config.get("deterministic", False),
                         threads=1)
    started_in_sync = backend.in_sync()
    initial_params = model._core.param_arena().copy()
    with backend.guard():
        losses, corrects = distributed_run(config, backend, model, optimizer, loss, data)
    in_sync = backend.in_sync()
    buffers = model._core.buffer_arena()
    every_rank_buffers = backend.comm.gather(buffers.copy(), root=0)
    backend.sync_buffers()
    synced = backend.in_sync()
    if backend.is_root:
        integer = np.zeros(buffers.size, dtype=bool)
        for _, shape, offset, is_buffer, is_integer in model._core.tensor_info():
            if is_buffer and is_integer:
                integer[offset:offset + int(np.prod(shape))] = True
        result = {"params": model._core.param_arena().copy(), "losses": np.array(losses),
                  "corrects": np.array(corrects), "size": backend.size,
                  "started_in_sync": started_in_sync, "in_sync": in_sync,
                  "threads": fn.get_num_threads(), "steps": backend.steps,
                  "optimizer_steps": optimizer.steps,
                  "buffers_before": np.stack(every_rank_buffers), "buffers_after": buffers.copy(),
                  "integer_buffers": integer, "synced": synced,
                  "initial_params": initial_params}
        if config.get("reference"):
            fn.set_num_threads(config.get("reference_threads", 1))
            result.update(reference_runs(config, shape, backend.size, data))
        np.savez(config["out"], **result)


def save_checkpoint(path, model, optimizer):
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng_step": model._core.rng_step}
    with open(path + ".tmp", "wb") as f:
        pickle.dump(state, f)
    os.replace(path + ".tmp", path)


def load_checkpoint(path, model, optimizer):
    with open(path, "rb") as f:
        state = pickle.load(f)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    model._core.rng_step = state["rng_step"]


def scenario_resume(config):
    """Runs steps [0, N) writing a checkpoint after save_at steps, or, with ``load``, steps
    [save_at, N) from that checkpoint (loaded by every rank, or by rank 0 only)."""
    fn.set_num_threads(1)
    model, shape = build(config["model"], seed=0)
    optimizer = build_optimizer(config["optimizer"], model)
    loss = build_loss(config["loss"])
    data = batches(config, shape)
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    start = 0
    if config.get("load"):
        if config["load"] == "all" or rank == 0:
            load_checkpoint(config["checkpoint"], model, optimizer)
        start = config["save_at"]
    backend = MPIBackend(model, optimizer, threads=1)

    def on_step(step):
        if not config.get("load") and step == config["save_at"]:
            backend.sync_buffers()
            if backend.is_root:
                save_checkpoint(config["checkpoint"], model, optimizer)
            backend.barrier()

    with backend.guard():
        distributed_run(config, backend, model, optimizer, loss, data, start, None, on_step)
    backend.sync_buffers()
    in_sync = backend.in_sync()
    if backend.is_root:
        np.savez(config["out"], params=model._core.param_arena().copy(),
                 buffers=model._core.buffer_arena().copy(), in_sync=in_sync,
                 optimizer_steps=optimizer.steps, rng_step=model._core.rng_step)


def scenario_fail(config):
    fn.set_num_threads(1)
    model, shape = build("mlp", seed=0)
    optimizer = build_optimizer("sgd", model)
    loss = fn.CrossEntropyLoss()
    data = batches({"batches": [8] * 1000}, shape)
    backend = MPIBackend(model, optimizer, threads=1)
    failing, how = config["rank"], config["how"]

    def on_step(step):
        if step == 3 and backend.rank == failing:
            print(f"rank {backend.rank} failing now ({how})", file=sys.stderr, flush=True)
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"deliberate failure on rank {backend.rank}")

    config = {"loss": "ce"}
    if how == "guarded":
        try:
            with backend.guard():
                distributed_run(config, backend, model, optimizer, loss, data, on_step=on_step)
        except RuntimeError as error:  # a caller that would turn errors into an exit status
            print(f"caught: {error}", file=sys.stderr)
            return 2
    else:
        distributed_run(config, backend, model, optimizer, loss, data, on_step=on_step)
    return 0


def scenario_trainer(config):
    fn.set_num_threads(1)
    model, shape = build(config["model"], seed=0)
    optimizer = build_optimizer(config["optimizer"], model)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((config["samples"],) + shape).astype(np.float32)
    y = rng.integers(0, CLASSES, config["samples"])
    trainer = fn.Trainer(model, optimizer, fn.CrossEntropyLoss(), seed=1, progress=False,
                         metrics_path=config.get("metrics"), distributed=config["distributed"])
    history = trainer.fit((x, y), (x[:20], y[:20]), epochs=config["epochs"],
                          batch_size=config["batch_size"])
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    if rank == 0:
        np.savez(config["out"], params=model._core.param_arena().copy(),
                 train_loss=np.array(history.metric("train_loss")),
                 val_loss=np.array(history.metric("val_loss")))


def main():
    scenario, config = sys.argv[1], json.loads(sys.argv[2])
    handler = {"train": scenario_train, "resume": scenario_resume, "fail": scenario_fail,
               "trainer": scenario_trainer}[scenario]
    return handler(config) or 0


if __name__ == "__main__":
    sys.exit(main())
