"""Training throughput of fastnet against PyTorch (when installed) on the MLP workloads.

    python bench/compare.py [--threads 2] [--seconds 3] [--workloads mlp_small_b32,mlp_mnist_b128]

Each framework trains the same network (the definitions below) on the same random batch with the
same optimizer, in a process of its own (two OpenMP runtimes in one process would spin against
each other). The processes take turns in short timed windows after a warm-up, so a noisy machine
affects both alike; a process waiting for its turn is blocked on a pipe, not spinning. Reported:
samples/s (median over the windows), the ratio of fastnet's to PyTorch's, and the GFLOP/s fastnet
achieves (2 * multiply-adds of forward + backward).
"""
import argparse
import multiprocessing
import statistics
import time

import numpy as np

WORKLOADS = {
    # name: (layer sizes, batch)
    "mlp_small_b32": ((64, 128, 128, 10), 32),
    "mlp_mnist_b128": ((784, 1024, 1024, 10), 128),
}
SGD = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)


def step_flops(sizes, batch):
    """Forward (1 GEMM) + backward (2 GEMMs, the first layer's input gradient skipped)."""
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    first = sizes[0] * sizes[1]
    return 2 * batch * (3 * macs - first)


def fastnet_step(sizes, batch, x, y):
    import fastnet as fn

    layers = []
    for i in range(len(sizes) - 1):
        layers.append(fn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(fn.ReLU())
    model = fn.Sequential(*layers)
    opt = fn.optim.SGD(model.parameters(), **SGD)
    loss = fn.CrossEntropyLoss()
    return lambda: model.train_step(x, y, loss, opt)


def torch_step(sizes, batch, x, y):
    import torch

    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), **SGD)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def window_rate(step, batch, seconds):
    """Samples per second over one window of about `seconds`."""
    steps, started = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return steps * batch / elapsed


def worker(connection, framework, name, threads):
    """Runs in its own process: builds one workload, then answers window requests."""
    sizes, batch = WORKLOADS[name]
    rng = np.random.default_rng(0)
    x = rng.random((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch)
    if framework == "fastnet":
        import fastnet as fn

        fn.set_num_threads(threads)
        step = fastnet_step(sizes, batch, x, y)
    else:
        import torch

        torch.set_num_threads(threads)
        step = torch_step(sizes, batch, x, y)
    while True:
        seconds = connection.recv()
        if seconds is None:
            return
        connection.send(window_rate(step, batch, seconds))


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per framework")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args(argv)

    import fastnet as fn

    frameworks = ["fastnet"] + (["pytorch"] if torch_available() else [])
    torch_version = None
    if "pytorch" in frameworks:
        import torch

        torch_version = torch.__version__
    print(f"fastnet {fn.__version__}, PyTorch {torch_version or 'not installed'}, "
          f"{args.threads} threads")
    print(f"{'workload':<16} {'fastnet /s':>12} {'PyTorch /s':>12} {'ratio':>7} {'GFLOP/s':>8}")
    context = multiprocessing.get_context("spawn")
    for name in args.workloads.split(","):
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
        sizes, batch = WORKLOADS[name]
        workers = {}
        for framework in frameworks:
            ours, theirs = context.Pipe()
            process = context.Process(target=worker, args=(theirs, framework, name, args.threads))
            process.start()
            workers[framework] = (ours, process)
        try:
            for connection, _ in workers.values():  # warm-up
                connection.send(0.5)
                connection.recv()
            rates = {k: [] for k in workers}
            window = args.seconds / args.windows
            for _ in range(args.windows):
                for framework, (connection, _) in workers.items():
                    connection.send(window)
                    rates[framework].append(connection.recv())
        finally:
            for connection, process in workers.values():
                connection.send(None)
                process.join()
        median = {k: statistics.median(v) for k, v in rates.items()}
        ours = median["fastnet"]
        theirs = median.get("pytorch")
        ratio = f"{ours / theirs:6.2f}x" if theirs else "    -"
        gflops = ours / batch * step_flops(sizes, batch) / 1e9
        print(f"{name:<16} {ours:>12,.0f} {theirs or 0:>12,.0f} {ratio:>7} {gflops:>8.1f}")


if __name__ == "__main__":
    main()
