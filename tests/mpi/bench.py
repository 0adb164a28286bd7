"""Measurements behind the README's MPI section: data-parallel throughput and allreduce cost.

    python tests/mpi/bench.py throughput --network mlp_mnist --batch 128 --threads 2
    mpirun -n 2 python tests/mpi/bench.py throughput --network mlp_mnist --batch 128 --threads 1
    mpirun -n 2 python tests/mpi/bench.py allreduce
    python tests/mpi/bench.py compare --seconds 6 --rounds 3    # runs all of the above
    python tests/mpi/bench.py costmodel --threads 2              # 8, 32, 128 machines

``throughput`` trains on one random global batch (the same every step, as `fastnet bench`
does): one process uses the fused ``model.train_step``, several ranks ``MPIBackend.train_step``.
It prints one JSON line: samples/s, milliseconds per step, and per rank the milliseconds spent in
the gradient allreduce. ``allreduce`` times ``MPIBackend.allreduce_gradients`` on models of
1e3 to 1.6e7 parameters (plain and deterministic), and the same arena reduced as 4 buckets
(non-blocking allreduces, all in flight at once). ``compare`` alternates the configurations in
rounds, so that load from other processes affects them alike, and prints the best and the
median run of each (on a shared machine the best is the least disturbed).
``costmodel`` measures the compute of one step at each rank's share of the batch and predicts
the step time on P machines with a ring allreduce over 10, 25 and 100 Gb Ethernet (the
assumptions are in LINKS).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def network(name):
    from fastnet import bench, zoo

    if name == "mlp_mnist":  # 784-1024-1024-10
        return zoo.mlp(784, 10, (1024, 1024)), (784,)
    if name == "cnn_mnist":  # the small CNN of fastnet bench
        return bench.fastnet_model("cnn_mnist", (1, 28, 28)), (1, 28, 28)
    raise ValueError(f"unknown network {name!r}")


def throughput(args):
    import fastnet as fn

    fn.set_num_threads(args.threads)
    model, shape = network(args.network)
    opt = fn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = fn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.random((args.batch,) + shape, dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    distributed = "OMPI_COMM_WORLD_SIZE" in os.environ
    if distributed:
        from fastnet.distributed import MPIBackend

        backend = MPIBackend(model, opt, threads=args.threads)
        local = backend.shard(np.arange(args.batch))
        xl, yl = x[local], y[local]

        def step():
            backend.train_step(model, xl, yl, loss, opt, args.batch)
    else:
        backend = None

        def step():
            model.train_step(x, y, loss, opt)

    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(3):
        step()
    per_step = (time.perf_counter() - started) / 3
    steps = max(5, int(args.seconds / per_step))
    if backend is not None:
        steps = backend.broadcast(steps)
        backend.barrier()
        reduce_before = backend.reduce_seconds
    started = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - started
    record = {"network": args.network, "batch": args.batch, "threads": args.threads,
              "processes": 1, "parameters": model.num_parameters()}
    if backend is not None:
        reduce_ms = (backend.reduce_seconds - reduce_before) / steps * 1e3
        elapsed = backend.comm.allreduce(elapsed, op=backend._MPI.MAX)
        record["processes"] = backend.size
        record["allreduce_ms_per_rank"] = backend.comm.gather(round(reduce_ms, 3), root=0)
        if not backend.is_root:
            return
    record["samples_per_s"] = round(steps * args.batch / elapsed, 1)
    record["ms_per_step"] = round(elapsed / steps * 1e3, 3)
    print(json.dumps(record), flush=True)


def allreduce(args):
    import fastnet as fn
    from fastnet.distributed import MPIBackend

    fn.set_num_threads(1)
    rows = []
    for size in (1_000, 10_000, 100_000, 1_000_000, 4_000_000, 16_000_000):
        model = fn.Sequential(fn.Linear(1000, max(1, size // 1001)))
        row = {"parameters": model.num_parameters(), "megabytes": model.num_parameters() * 4e-6}
        for deterministic in (False, True):
            backend = MPIBackend(model, None, deterministic=deterministic, threads=None)
            MPI = backend._MPI
            reps = max(5, min(200, int(2e8 / size)))
            times = []
            for _ in range(reps + 2):
                backend.barrier()
                started = time.perf_counter()
                backend.allreduce_gradients()
                times.append(time.perf_counter() - started)
            times = np.array(times[2:])
            backend.comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
            row["deterministic_ms" if deterministic else "allreduce_ms"] = round(
                float(np.median(times)) * 1e3, 3)
            if not deterministic:  # the same arena as 4 buckets, all in flight at once
                arena = model._core.grad_arena()
                buckets = np.array_split(arena, 4)
                times = []
                for _ in range(reps + 2):
                    backend.barrier()
                    started = time.perf_counter()
                    MPI.Request.Waitall([backend.comm.Iallreduce(MPI.IN_PLACE, b, op=MPI.SUM)
                                         for b in buckets])
                    times.append(time.perf_counter() - started)
                times = np.array(times[2:])
                backend.comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
                row["4_buckets_ms"] = round(float(np.median(times)) * 1e3, 3)
            backend.close()
        if backend.is_root:
            row["GB_per_s"] = round(row["megabytes"] / row["allreduce_ms"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)


# Assumed links for the cost model: (name, effective bandwidth in bytes/s, per-message latency in
# s). Effective bandwidth is about 90% of the line rate (TCP and Ethernet framing); latencies are
# typical one-way MPI small-message latencies over the kernel's TCP stack at 10 and 25 Gb/s and
# over RDMA (RoCE) at 100 Gb/s.
LINKS = (("10 GbE", 10e9 / 8 * 0.9, 25e-6), ("25 GbE", 25e9 / 8 * 0.9, 15e-6),
         ("100 GbE", 100e9 / 8 * 0.9, 5e-6))


def ring_allreduce_seconds(nbytes, ranks, bandwidth, latency):
    """The ring allreduce's cost: 2 (P - 1) / P * bytes / bandwidth + 2 (P - 1) * latency."""
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def step_ms(name, batch, threads, seconds):
    """Measured milliseconds (median) of one fused training step (forward, loss, backward,
    update) of ``batch`` samples on ``threads`` threads, and the number of parameters."""
    import fastnet as fn

    fn.set_num_threads(threads)
    model, shape = network(name)
    opt = fn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.random((batch,) + shape, dtype=np.float32)
    y = rng.integers(0, 10, batch)
    loss = fn.CrossEntropyLoss()

    def timed(fn_, budget):
        fn_()
        fn_()
        times = []
        deadline = time.perf_counter() + budget
        while time.perf_counter() < deadline or len(times) < 5:
            started = time.perf_counter()
            fn_()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e3

    wait_for_quiet(60)
    return timed(lambda: model.train_step(x, y, loss, opt), seconds), model.num_parameters()


def costmodel(args):
    """Predicted step time on P machines (one rank each, ``--threads`` threads) from measured
    compute and the ring-allreduce model, without overlap."""
    print("| network | P | global batch | per rank | compute ms (measured) | link | "
          "allreduce ms (model) | step ms | samples/s | vs 1 machine |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    # (network, its usual batch on one machine, [(machines, global batch)]): the global batch of
    # 128 split over more machines (strong scaling), and the usual batch on every machine (weak).
    for name, usual, cases in (("mlp_mnist", 128, [(8, 128), (32, 128), (128, 128), (8, 1024),
                                                   (32, 4096), (128, 16384)]),
                               ("cnn_mnist", 64, [(8, 512), (32, 2048), (128, 8192)])):
        measured = {}
        compute_one = step_ms(name, usual, args.threads, args.seconds)[0]
        rate_one = usual / compute_one * 1e3
        print(f"| {name} | 1 | {usual} | {usual} | {compute_one:.2f} | - | - | "
              f"{compute_one:.2f} | {rate_one:,.0f} | 1.0x |", flush=True)
        for ranks, global_batch in cases:
            local = global_batch // ranks
            if local not in measured:
                measured[local] = step_ms(name, local, args.threads, args.seconds)
            compute, parameters = measured[local]
            for link, bandwidth, latency in LINKS:
                reduce = ring_allreduce_seconds(parameters * 4, ranks, bandwidth, latency) * 1e3
                total = compute + reduce
                rate = global_batch / total * 1e3
                print(f"| {name} | {ranks} | {global_batch} | {local} | {compute:.2f} | {link} | "
                      f"{reduce:.2f} | {total:.2f} | {rate:,.0f} | {rate / rate_one:.1f}x |",
                      flush=True)


def mpirun(n):
    command = [shutil.which("mpirun"), "-n", str(n), "--oversubscribe"]
    if os.geteuid() == 0:
        command.append("--allow-run-as-root")
    return command


def idle_fraction(seconds=0.5):
    """The fraction of CPU time idle over the next ``seconds`` (Linux), or None."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total
    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except OSError:
        return None
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(limit):
    """Waits (up to ``limit`` seconds) until the machine is at least 90% idle: other processes
    would take cores from the configuration being measured."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        idle = idle_fraction()
        if idle is None or idle >= 0.9:
            return True
    return False


def compare(args):
    """Alternates 1 process x 1 thread, 1 process x 2 threads and 2 processes x 1 thread."""
    me = os.path.abspath(__file__)
    results = {}
    for name, batch in (("mlp_mnist", 128), ("cnn_mnist", 64)):
        configs = {
            "1 process x 1 thread": [sys.executable, me, "throughput", "--threads", "1"],
            "1 process x 2 threads": [sys.executable, me, "throughput", "--threads", "2"],
            "2 processes x 1 thread": mpirun(2) + [sys.executable, me, "throughput",
                                                   "--threads", "1"],
        }
        for round_ in range(args.rounds):
            for label, command in configs.items():
                quiet = wait_for_quiet(args.wait)
                out = subprocess.run(command + ["--network", name, "--batch", str(batch),
                                                "--seconds", str(args.seconds)],
                                     capture_output=True, text=True, check=True)
                record = json.loads(out.stdout.strip().splitlines()[-1])
                record["quiet_before"] = quiet
                results.setdefault((name, batch, label), []).append(record)
                print(f"round {round_}: {name} b{batch} {label}: {record}", file=sys.stderr)
    print("| network | global batch | configuration | samples/s best | samples/s median | "
          "ms/step best | allreduce ms/step (best run) |")
    print("|---|---|---|---|---|---|---|")
    for (name, batch, label), records in results.items():
        best = max(records, key=lambda r: r["samples_per_s"])
        median = statistics.median(r["samples_per_s"] for r in records)
        reduce = best.get("allreduce_ms_per_rank")
        reduce_text = f"{max(reduce):.2f}" if reduce else "-"
        print(f"| {name} | {batch} | {label} | {best['samples_per_s']:,.0f} | {median:,.0f} | "
              f"{best['ms_per_step']:.1f} | {reduce_text} |")
    wait_for_quiet(args.wait)
    out = subprocess.run(mpirun(2) + [sys.executable, me, "allreduce"], capture_output=True,
                         text=True, check=True)
    print()
    print("| parameters | MB | allreduce ms | deterministic ms | 4 buckets ms | GB/s |")
    print("|---|---|---|---|---|---|")
    for line in out.stdout.splitlines():
        row = json.loads(line)
        print(f"| {row['parameters']:,} | {row['megabytes']:.3g} | {row['allreduce_ms']} | "
              f"{row['deterministic_ms']} | {row['4_buckets_ms']} | {row['GB_per_s']} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--network", default="mlp_mnist", choices=["mlp_mnist", "cnn_mnist"])
    t.add_argument("--batch", type=int, default=128, help="the global batch")
    t.add_argument("--threads", type=int, default=1, help="kernel threads per process")
    t.add_argument("--seconds", type=float, default=5.0)
    sub.add_parser("allreduce")
    m = sub.add_parser("costmodel")
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--seconds", type=float, default=2.0)
    c = sub.add_parser("compare")
    c.add_argument("--seconds", type=float, default=5.0)
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--wait", type=float, default=60.0,
                   help="seconds to wait at most for an idle machine before each run")
    args = parser.parse_args()
    {"throughput": throughput, "allreduce": allreduce, "compare": compare,
     "costmodel": costmodel}[args.command](args)


if __name__ == "__main__":
    main()
