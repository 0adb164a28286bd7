"""Training throughput and batch-1 latency of fastnet against PyTorch (when installed).

    python bench/compare.py [--threads 2] [--seconds 3] [--workloads mlp_small_b32,...]

The workloads are those of the project's benchmark table; each framework builds the same network
(the definitions below) and trains it on the same random batch with the same optimizer, in a
process of its own (two OpenMP runtimes in one process would spin against each other). The
processes take turns in short timed windows after a warm-up, so a noisy machine affects both
alike; a process waiting for its turn is blocked on a pipe, not spinning. Reported: samples/s
(median over the windows), the ratio of fastnet's to PyTorch's, the GFLOP/s fastnet achieves
(3x the forward FLOPs of the linear and convolution layers per sample), and the median latency of
batch-1 inference in eval mode.
"""
import argparse
import multiprocessing
import statistics
import time

import numpy as np

SGD = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
ADAM = dict(lr=1e-3)

# name: (network, batch, per-sample input shape, classes, optimizer)
WORKLOADS = {
    "mlp_small_b32": ("mlp_small", 32, (64,), 10, "sgd"),
    "mlp_mnist_b128": ("mlp_mnist", 128, (784,), 10, "sgd"),
    "cnn_mnist_b64": ("cnn_mnist", 64, (1, 28, 28), 10, "adam"),
    "resnet8_cifar_b128": ("resnet8", 128, (3, 32, 32), 10, "sgd"),
}


# ---------------------------------------------------------------------------- fastnet


def fastnet_network(network):
    import fastnet as fn
    from fastnet import zoo

    if network == "mlp_small":
        return zoo.mlp(64, 10, (128, 128))
    if network == "mlp_mnist":
        return zoo.mlp(784, 10, (1024, 1024))
    if network == "cnn_mnist":
        return fn.Sequential(
            fn.Conv2d(1, 32, 3), fn.ReLU(), fn.Conv2d(32, 64, 3), fn.ReLU(), fn.MaxPool2d(2),
            fn.Dropout(0.25), fn.Flatten(), fn.Linear(9216, 128), fn.ReLU(), fn.Linear(128, 10),
            input_shape=(1, 28, 28))
    if network == "resnet8":
        return zoo.resnet((3, 32, 32), 10)
    raise ValueError(network)


def fastnet_workload(network, optimizer, x, y):
    import fastnet as fn

    model = fastnet_network(network)
    opt = fn.optim.SGD(model.parameters(), **SGD) if optimizer == "sgd" else \
        fn.optim.Adam(model.parameters(), **ADAM)
    loss = fn.CrossEntropyLoss()

    def step():
        model.train_step(x, y, loss, opt)

    def infer(sample):
        model(sample)

    return step, infer, model.train, model.eval, 3 * model.forward_flops()


# ---------------------------------------------------------------------------- PyTorch


def torch_network(network):
    import torch.nn as nn

    def mlp(sizes):
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def block(cin, cout, stride):
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.main = nn.Sequential(
                    nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
                self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

            def forward(self, x):
                return (self.main(x) + self.shortcut(x)).relu()

        return Block()

    if network == "mlp_small":
        return mlp([64, 128, 128, 10])
    if network == "mlp_mnist":
        return mlp([784, 1024, 1024, 10])
    if network == "cnn_mnist":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Linear(128, 10))
    if network == "resnet8":
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            block(16, 16, 1), block(16, 32, 2), block(32, 64, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    raise ValueError(network)


def torch_workload(network, optimizer, x, y):
    import torch

    model = torch_network(network)
    opt = torch.optim.SGD(model.parameters(), **SGD) if optimizer == "sgd" else \
        torch.optim.Adam(model.parameters(), **ADAM)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    def infer(sample):
        with torch.no_grad():
            model(torch.from_numpy(sample))

    return step, infer, model.train, model.eval, None


# ---------------------------------------------------------------------------- the runner


def window_rate(step, batch, seconds):
    """Samples per second over one window of about `seconds`."""
    steps, started = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return steps * batch / elapsed


def latency(infer, sample, seconds):
    """Median seconds of one batch-1 inference over about `seconds`."""
    times, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 5:
        t0 = time.perf_counter()
        infer(sample)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker(connection, framework, name, threads):
    """Runs in its own process: builds one workload, then answers requests."""
    network, batch, shape, classes, optimizer = WORKLOADS[name]
    rng = np.random.default_rng(0)
    x = rng.random((batch,) + shape, dtype=np.float32)
    y = rng.integers(0, classes, batch)
    if framework == "fastnet":
        import fastnet as fn

        fn.set_num_threads(threads)
        parts = fastnet_workload(network, optimizer, x, y)
    else:
        import torch

        torch.set_num_threads(threads)
        parts = torch_workload(network, optimizer, x, y)
    step, infer, train_mode, eval_mode, flops = parts
    connection.send(flops)
    while True:
        request = connection.recv()
        if request is None:
            return
        kind, seconds = request
        if kind == "train":
            train_mode()
            connection.send(window_rate(step, batch, seconds))
        else:
            eval_mode()
            connection.send(latency(infer, x[:1].copy(), seconds))


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run(args):
    """Measures every workload; returns a list of result dicts."""
    frameworks = ["fastnet"] + (["pytorch"] if torch_available() else [])
    context = multiprocessing.get_context("spawn")
    results = []
    for name in args.workloads.split(","):
        workers, flops = {}, None
        for framework in frameworks:
            ours, theirs = context.Pipe()
            process = context.Process(target=worker, args=(theirs, framework, name, args.threads))
            process.start()
            workers[framework] = (ours, process)
            reported = ours.recv()
            flops = reported if reported is not None else flops
        try:
            for connection, _ in workers.values():  # warm-up
                connection.send(("train", 0.5))
                connection.recv()
            rates = {k: [] for k in workers}
            latencies = {k: [] for k in workers}
            window = args.seconds / args.windows
            for _ in range(args.windows):
                for framework, (connection, _) in workers.items():
                    connection.send(("train", window))
                    rates[framework].append(connection.recv())
            for _ in range(3):
                for framework, (connection, _) in workers.items():
                    connection.send(("infer", window / 3))
                    latencies[framework].append(connection.recv())
        finally:
            for connection, process in workers.values():
                connection.send(None)
                process.join()
        result = {"workload": name, "flops_per_sample": flops}
        for framework in workers:
            result[framework] = statistics.median(rates[framework])
            result[f"{framework}_latency_ms"] = statistics.median(latencies[framework]) * 1e3
        results.append(result)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="timed training seconds per framework and workload")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args(argv)
    for name in args.workloads.split(","):
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")

    import fastnet as fn

    torch_version = None
    if torch_available():
        import torch

        torch_version = torch.__version__
    print(f"fastnet {fn.__version__}, PyTorch {torch_version or 'not installed'}, "
          f"{args.threads} threads")
    header = (f"{'workload':<20} {'fastnet /s':>11} {'PyTorch /s':>11} {'ratio':>6} "
              f"{'GFLOP/s':>8} {'b1 fastnet':>11} {'b1 PyTorch':>11} {'ratio':>6}")
    print(header)
    for r in run(args):
        theirs = r.get("pytorch")
        ratio = f"{r['fastnet'] / theirs:5.2f}x" if theirs else "     -"
        lat_ours, lat_theirs = r["fastnet_latency_ms"], r.get("pytorch_latency_ms")
        lat_ratio = f"{lat_ours / lat_theirs:5.2f}x" if lat_theirs else "     -"
        gflops = r["fastnet"] * r["flops_per_sample"] / 1e9
        print(f"{r['workload']:<20} {r['fastnet']:>11,.0f} {theirs or 0:>11,.0f} {ratio:>6} "
              f"{gflops:>8.1f} {lat_ours:>9.3f}ms {lat_theirs or 0:>9.3f}ms {lat_ratio:>6}")


if __name__ == "__main__":
    main()
