"""Speed of fastnet's kernels, with pytest-benchmark: GEMM (through the BLAS table and the
built-in kernel), convolution forward and backward, batch norm, the fused softmax cross-entropy
and the optimizer update, at the shapes of the benchmark workloads.

    pytest bench/ --benchmark-only [--kernel-threads N] [-k gemm] [--benchmark-json out.json]

Each benchmark's ``extra_info`` holds the achieved rate (``rate``, in ``unit``: GFLOP/s for the
compute-bound kernels, GB/s for the memory-bound ones) and its ``fraction_of_peak``: of the
machine's measured single-core GEMM peak times the threads used, or of one thread's measured copy
bandwidth. The end of the run prints them all, and the built-in GEMM's rate as a fraction of the
BLAS's at each shape.

Times include the Python call (a few microseconds), which dominates the smallest shapes.
Convolutions count the direct sum's FLOPs, also those that run by Winograd's F(2x2, 3x3), which
makes 2.25x fewer multiplications: their rate is an effective one, and can pass the peak.
"""
import numpy as np
import pytest

import fastnet as fn
from fastnet import _core
from fastnet.bench import NETWORKS, OPTIMIZERS, WORKLOADS, gemm_shapes, layer_shapes

pytest.importorskip("pytest_benchmark")

FLOAT = 4  # bytes


def _gemm_cases():
    square = {"m": 1024, "n": 1024, "k": 1024, "trans_a": False, "trans_b": False}
    cases = [dict(square, per_image=True), dict(square, per_image=False)]
    cases += gemm_shapes()
    params = []
    for shape in cases:
        op = ("T" if shape["trans_a"] else "N") + ("T" if shape["trans_b"] else "N")
        # Per-image (convolution) GEMMs run on one thread each inside the kernel; the others are
        # split between the threads.
        suffix = "-1thread" if shape["per_image"] else ""
        for impl in ("blas", "builtin"):
            params.append(pytest.param(impl, shape,
                                       id=f"{impl}-{shape['m']}x{shape['n']}x{shape['k']}-{op}"
                                          f"{suffix}"))
    return params


@pytest.mark.benchmark(group="gemm", max_time=0.5)
@pytest.mark.parametrize("impl, shape", _gemm_cases())
def test_gemm(benchmark, record, threads, impl, shape):
    if impl == "blas" and not _core.blas_installed():
        pytest.skip("no BLAS in fastnet's table")
    rng = np.random.default_rng(0)
    m, n, k = shape["m"], shape["n"], shape["k"]
    a = rng.standard_normal((k, m) if shape["trans_a"] else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if shape["trans_b"] else (k, n)).astype(np.float32)
    used = 1 if shape["per_image"] else threads
    # The BLAS alone (blas=True), not fastnet's choice between the two; into one result array,
    # so that the allocation of C is not timed.
    out = np.empty((m, n), np.float32)
    c = benchmark(_core.gemm, a, b, shape["trans_a"], shape["trans_b"], builtin=impl == "builtin",
                  blas=impl == "blas", threads=used, out=out)
    assert c.shape == (m, n)
    record(benchmark, 2.0 * m * n * k, "GFLOP/s", threads_used=used)


def _conv_cases():
    """Every distinct convolution of the workloads, with its batch and input shape."""
    seen, params = set(), []
    for name, (network, batch, input_shape, _, _) in WORKLOADS.items():
        for layer, shape, _ in layer_shapes(network, input_shape):
            if layer[0] != "conv" or (layer, shape, batch) in seen:
                continue
            seen.add((layer, shape, batch))
            _, cin, cout, k, stride, padding, bias = layer
            params.append(pytest.param(batch, shape, layer,
                                       id=f"{name.split('_')[0]}-{cin}x{shape[1]}x{shape[2]}-"
                                          f"{cout}k{k}s{stride}"))
    return params


def _conv_model(shape, layer):
    _, cin, cout, k, stride, padding, bias = layer
    return fn.Sequential(fn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias),
                         input_shape=shape)


@pytest.mark.benchmark(group="conv2d")
@pytest.mark.parametrize("batch, shape, layer", _conv_cases())
def test_conv2d_forward(benchmark, record, threads, batch, shape, layer):
    model = _conv_model(shape, layer)
    x = np.random.default_rng(0).random((batch,) + shape, dtype=np.float32)
    benchmark(model.forward, x)
    record(benchmark, batch * model.forward_flops(), "GFLOP/s")


@pytest.mark.benchmark(group="conv2d")
@pytest.mark.parametrize("batch, shape, layer", _conv_cases())
def test_conv2d_backward(benchmark, record, threads, batch, shape, layer):
    """Weight and input gradients (twice the forward's FLOPs), after one forward."""
    model = _conv_model(shape, layer)
    x = np.random.default_rng(0).random((batch,) + shape, dtype=np.float32)
    grad = np.ones_like(model.forward(x))
    benchmark(model.backward, grad)
    record(benchmark, 2 * batch * model.forward_flops(), "GFLOP/s")


def _batchnorm_cases():
    seen, params = set(), []
    for network, batch, input_shape, _, _ in WORKLOADS.values():
        for layer, shape, _ in layer_shapes(network, input_shape):
            if layer[0] == "bn" and (batch, shape) not in seen:
                seen.add((batch, shape))
                params.append(pytest.param(batch, shape,
                                           id=f"{batch}x" + "x".join(map(str, shape))))
    return params


@pytest.mark.benchmark(group="batchnorm")
@pytest.mark.parametrize("batch, shape", _batchnorm_cases())
def test_batchnorm_forward(benchmark, record, threads, batch, shape):
    """Training mode (batch statistics); GB/s counts reading x and writing y once."""
    model = fn.Sequential(fn.BatchNorm2d(shape[0]), input_shape=shape)
    x = np.random.default_rng(0).random((batch,) + shape, dtype=np.float32)
    benchmark(model.forward, x)
    record(benchmark, 2 * x.size * FLOAT, "GB/s")


@pytest.mark.benchmark(group="batchnorm")
@pytest.mark.parametrize("batch, shape", _batchnorm_cases())
def test_batchnorm_backward(benchmark, record, threads, batch, shape):
    """GB/s counts reading x and the output gradient and writing the input gradient once."""
    model = fn.Sequential(fn.BatchNorm2d(shape[0]), input_shape=shape)
    x = np.random.default_rng(0).random((batch,) + shape, dtype=np.float32)
    grad = np.ones_like(model.forward(x))
    benchmark(model.backward, grad)
    record(benchmark, 3 * x.size * FLOAT, "GB/s")


@pytest.mark.benchmark(group="softmax_xent")
@pytest.mark.parametrize("batch, classes", [(128, 10), (1024, 1000), (8192, 1000)],
                         ids=["128x10", "1024x1000", "8192x1000"])
def test_softmax_cross_entropy(benchmark, record, threads, batch, classes):
    """Loss and gradient in one pass; GB/s counts reading the logits and writing the gradient."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((batch, classes)).astype(np.float32)
    labels = rng.integers(0, classes, batch)
    loss, grad, _ = benchmark(_core.softmax_cross_entropy, logits, labels)
    assert np.isfinite(loss) and grad.shape == logits.shape
    record(benchmark, 2 * logits.size * FLOAT, "GB/s")


@pytest.mark.benchmark(group="optimizer")
@pytest.mark.parametrize("workload", ["mlp_mnist_b128", "cnn_mnist_b64"])
def test_optimizer_update(benchmark, record, threads, workload):
    """The update over the whole parameter arena (the workload's optimizer). GB/s counts each
    float read or written once: SGD with momentum reads the parameter, gradient and momentum and
    writes the parameter and momentum (5 per parameter); Adam 7."""
    network, batch, shape, classes, optimizer = WORKLOADS[workload]
    from fastnet.bench import fastnet_model

    model = fastnet_model(network, shape)
    params = model.parameters()
    for p in params:
        p.grad[...] = 1e-3
    if optimizer == "sgd":
        opt, floats = fn.optim.SGD(params, **OPTIMIZERS["sgd"]), 5
    else:
        opt, floats = fn.optim.Adam(params, **OPTIMIZERS["adam"]), 7
    benchmark(opt.step)
    record(benchmark, floats * model.num_parameters() * FLOAT, "GB/s")


def test_networks_cover_every_layer_kind():
    """The cases above are derived from the workloads: they must find some of each."""
    kinds = {layer[0] for network, _, shape, _, _ in WORKLOADS.values()
             for layer, _, _ in layer_shapes(network, shape)}
    assert kinds == {"linear", "conv", "bn"}
    assert set(NETWORKS) == {w[0] for w in WORKLOADS.values()}
