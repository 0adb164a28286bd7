"""Activation memory: outputs that backward never reads share memory with later outputs, and ReLU,
add, dropout and flatten write over their input where nothing else needs it. The results must be
bit for bit those of a model that keeps every output, and the memory must be what the plan says."""

import json
import subprocess
import sys

import numpy as np
import pytest

import fastnet as fn
from fastnet import _core


def resnet():
    block = fn.Residual(fn.Sequential(fn.Conv2d(8, 8, 3, padding=1, bias=False),
                                      fn.BatchNorm2d(8), fn.ReLU(),
                                      fn.Conv2d(8, 8, 3, padding=1, bias=False),
                                      fn.BatchNorm2d(8)))
    down = fn.Residual(fn.Sequential(fn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
                                     fn.BatchNorm2d(16), fn.ReLU(),
                                     fn.Conv2d(16, 16, 3, padding=1, bias=False),
                                     fn.BatchNorm2d(16)),
                       shortcut=fn.Sequential(fn.Conv2d(8, 16, 1, stride=2, bias=False),
                                              fn.BatchNorm2d(16)))
    return fn.Sequential(fn.Conv2d(3, 8, 3, padding=1, bias=False), fn.BatchNorm2d(8), fn.ReLU(),
                         block, fn.ReLU(), down, fn.ReLU(), fn.AdaptiveAvgPool2d(1),
                         fn.Flatten(), fn.Linear(16, 5), input_shape=(3, 8, 8), seed=1)


def cnn():
    return fn.Sequential(fn.Conv2d(3, 6, 3), fn.ReLU(), fn.Conv2d(6, 8, 3), fn.ReLU(),
                         fn.MaxPool2d(2), fn.Dropout(0.25), fn.Flatten(), fn.Linear(32, 16),
                         fn.ReLU(), fn.Dropout(0.5), fn.Linear(16, 5), input_shape=(3, 8, 8),
                         seed=2)


def mixed():
    """Every op kind the planner treats differently: in place (sigmoid, tanh, dropout), reading
    only the input (leaky ReLU, ELU, GELU, PReLU, maxout), reading the output (softmax), both
    (local response norm), and concatenated branches."""
    branches = fn.Concat(fn.Sequential(fn.Conv2d(3, 4, 3, padding=1), fn.Sigmoid()),
                         fn.Sequential(fn.Conv2d(3, 4, 1), fn.Tanh(), fn.Dropout(0.3)),
                         fn.Conv2d(3, 2, 3, padding=1))
    return fn.Sequential(branches, fn.LeakyReLU(0.1), fn.LocalResponseNorm(3),
                         fn.AvgPool2d(2), fn.ELU(), fn.Flatten(), fn.Linear(160, 24),
                         fn.BatchNorm1d(24), fn.GELU(), fn.PReLU(), fn.Maxout(2),
                         fn.Linear(12, 5), fn.Softmax(), input_shape=(3, 8, 8), seed=3)


NETWORKS = {"resnet": resnet, "cnn": cnn, "mixed": mixed}


def train(model, keep_outputs, steps=4):
    model._core.keep_outputs = keep_outputs
    opt = fn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        x = rng.standard_normal((6, 3, 8, 8)).astype(np.float32)
        y = rng.integers(0, 5, 6)
        losses.append(model.train_step(x, y, fn.CrossEntropyLoss(), opt))
    return losses


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_sharing_changes_no_bit_of_training(network, threads):
    fn.set_num_threads(threads)
    shared, kept = NETWORKS[network](), NETWORKS[network]()
    assert train(shared, False) == train(kept, True)
    np.testing.assert_array_equal(shared._core.param_arena(), kept._core.param_arena())
    np.testing.assert_array_equal(shared._core.buffer_arena(), kept._core.buffer_arena())


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_sharing_changes_no_bit_of_the_input_gradient(network):
    shared, kept = NETWORKS[network](), NETWORKS[network]()
    shared._core.keep_outputs, kept._core.keep_outputs = False, True
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    g = rng.standard_normal((5, 5)).astype(np.float32)
    grads = []
    for model in (shared, kept):
        y = model._core.forward(x, True)
        grads.append((y, model._core.backward(g, True)))
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    np.testing.assert_array_equal(grads[0][1], grads[1][1])


def test_only_what_backward_reads_keeps_memory_in_a_resnet():
    model = resnet()
    train(model, False, steps=1)
    info = model._core.node_info()
    sizes = {name: 6 * 4 * int(np.prod(shape)) for name, _, shape in info}
    use = model._core.memory_use()
    # Kept by backward: the convolutions' outputs (batch norm reads its input), the ReLUs'
    # (which hold the batch norms' and the sums' memory) and the logits; the strided block's
    # shortcut batch norm is read only by the sum, which writes over the main path's; its memory
    # then serves the global pool, which flatten writes over in place.
    kept = sum(sizes[name] for name, op, _ in info if op in ("conv2d", "relu", "linear"))
    assert use["activations"] == kept + sizes["5.shortcut.1"]
    readable = []
    for i, (name, op, _) in enumerate(info):
        try:
            model._core.node_output(i)
            readable.append(name)
        except RuntimeError as error:
            assert "is not kept" in str(error) and "keep_outputs" in str(error)
    assert readable == [name for name, op, _ in info
                        if op in ("conv2d", "relu", "linear", "flatten")]
    model._core.keep_outputs = True
    train(model, True, steps=1)
    assert model._core.memory_use()["activations"] == sum(sizes.values())
    assert use["gradients"] == model._core.memory_use()["gradients"] > 0


def test_memory_use_before_and_after_planning():
    model = cnn()
    assert model._core.memory_use() == dict(activations=0, gradients=0, input=0, saved=0,
                                            workspace=0)
    model._core.forward(np.zeros((4, 3, 8, 8), np.float32), False)
    use = model._core.memory_use()
    assert use["input"] == 4 * 3 * 8 * 8 * 4 and use["gradients"] == 0
    assert use["activations"] > 0 and use["workspace"] > 0
    model._core.forward(np.zeros((4, 3, 8, 8), np.float32), True)
    model._core.backward(np.zeros((4, 5), np.float32), True)
    after = model._core.memory_use()
    assert after["gradients"] > 0 and after["input"] == 2 * use["input"]  # and its gradient


def test_activation_stats_read_every_layer_and_leave_sharing_on():
    from fastnet import checks

    model = resnet()
    x = np.random.default_rng(2).standard_normal((6, 3, 8, 8)).astype(np.float32)
    stats = checks.activation_stats(model, x)
    assert [s["layer"] for s in stats] == [name for name, _, _ in model._core.node_info()]
    assert model._core.keep_outputs is False
    batch_norm = next(s for s in stats if s["layer"] == "1")  # overwritten by the ReLU otherwise
    assert abs(batch_norm["mean"]) < 1e-5 and abs(batch_norm["std"] - 1) < 1e-2


def test_the_bundled_openblas_is_used_without_importing_scipy_linalg(tmp_path):
    from fastnet import _blas

    if _blas._bundled_openblas() is None:
        pytest.skip("this SciPy bundles no OpenBLAS (it is reached through cython_blas)")
    code = ("import sys, fastnet, fastnet._blas as b; "
            "print(b.source, 'scipy.linalg' in sys.modules)")
    # Away from the source tree, whose fastnet/ would shadow the installed package.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    assert out.stdout.split() == ["scipy-openblas", "False"]


def test_install_blas_refuses_a_null_function():
    from fastnet import _blas

    with pytest.raises(ValueError, match="sgemm is a null pointer"):
        _core.install_blas(0, 1)
    assert _blas.source == "builtin" or _core.blas_installed()


# ---------------------------------------------------------------------------- graphs by hand


def graph(nodes, input_shape=(4, 5, 5)):
    spec = {"format": "fastnet.model", "version": 1, "dtype": "float32", "seed": 4,
            "input_shape": list(input_shape), "nodes": nodes}
    return _core.Model(json.dumps(spec))


def conv(name, inputs, channels=4):
    return {"name": name, "op": "conv2d", "in_channels": channels, "out_channels": 4,
            "kernel_size": [3, 3], "padding": [1, 1], "inputs": inputs}


def head(inputs, width=4 * 5 * 5):
    return [{"name": "flat", "op": "flatten", "inputs": inputs},
            {"name": "out", "op": "linear", "in_features": width, "out_features": 3,
             "inputs": ["flat"]}]


# A ReLU right after a convolution, batch norm or a sum is applied by them (fused); these graphs
# put a ReLU where it must not be, or where the producer's output is needed elsewhere.
GRAPHS = {
    "convolution, ReLU": [conv("c", ["input"]), {"name": "r", "op": "relu", "inputs": ["c"]}]
    + head(["r"]),
    "grouped strided convolution without bias, ReLU": [
        {"name": "c", "op": "conv2d", "in_channels": 4, "out_channels": 6, "kernel_size": [3, 3],
         "stride": [2, 2], "padding": [1, 1], "groups": 2, "bias": False, "inputs": ["input"]},
        {"name": "r", "op": "relu", "inputs": ["c"]}] + head(["r"], width=6 * 3 * 3),
    "convolution read twice": [
        conv("c", ["input"]), {"name": "r", "op": "relu", "inputs": ["c"]},
        {"name": "s", "op": "add", "inputs": ["r", "c"]}] + head(["s"]),
    "ReLU of a sum of a node with itself": [
        conv("c", ["input"]), {"name": "s", "op": "add", "inputs": ["c", "c"]},
        {"name": "r", "op": "relu", "inputs": ["s"]}] + head(["r"]),
    "ReLU of a sum whose inputs' gradients both accumulate": [
        conv("c", ["input"]), conv("d", ["input"]),
        {"name": "s", "op": "add", "inputs": ["c", "d"]},
        {"name": "r", "op": "relu", "inputs": ["s"]},
        {"name": "t", "op": "add", "inputs": ["r", "c", "d"]}] + head(["t"]),
    "convolution, ReLU, convolution": [
        conv("c", ["input"]), {"name": "r", "op": "relu", "inputs": ["c"]},
        conv("d", ["r"]), {"name": "q", "op": "relu", "inputs": ["d"]}] + head(["q"]),
    "batch norm, ReLU": [conv("c", ["input"]), {"name": "b", "op": "batch_norm",
                                                "num_features": 4, "inputs": ["c"]},
                         {"name": "r", "op": "relu", "inputs": ["b"]}] + head(["r"]),
    "sum, ReLU": [conv("c", ["input"]), {"name": "s", "op": "add", "inputs": ["c", "input"]},
                  {"name": "r", "op": "relu", "inputs": ["s"]}] + head(["r"]),
    "batch norm read twice": [
        conv("c", ["input"]),
        {"name": "b", "op": "batch_norm", "num_features": 4, "inputs": ["c"]},
        {"name": "r", "op": "relu", "inputs": ["b"]},
        {"name": "s", "op": "add", "inputs": ["r", "b"]}] + head(["s"]),
    "a node between": [
        conv("c", ["input"]),
        {"name": "b", "op": "batch_norm", "num_features": 4, "inputs": ["c"]},
        conv("d", ["input"]),
        {"name": "r", "op": "relu", "inputs": ["b"]},
        {"name": "s", "op": "add", "inputs": ["r", "d"]}] + head(["s"]),
    "leaky ReLU": [conv("c", ["input"]), {"name": "b", "op": "batch_norm",
                                          "num_features": 4, "inputs": ["c"]},
                   {"name": "r", "op": "leaky_relu", "negative_slope": 0.2,
                    "inputs": ["b"]}] + head(["r"]),
    "ReLU of the sum of three, summed again": [
        conv("c", ["input"]), conv("d", ["input"]),
        {"name": "s", "op": "add", "inputs": ["c", "d", "input"]},
        {"name": "r", "op": "relu", "inputs": ["s"]},
        {"name": "t", "op": "add", "inputs": ["r", "r"]}] + head(["t"]),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_fused_relus_give_the_bits_of_separate_ones(name, mode):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4, 5, 5)).astype(np.float32)
    g = rng.standard_normal((6, 3)).astype(np.float32)
    results = []
    for keep in (False, True):
        core = graph(GRAPHS[name])
        core.keep_outputs = keep
        core.training = mode == "train"
        y = core.forward(x, True)
        results.append((y, core.backward(g, True), core.grad_arena().copy()))
    for shared, kept in zip(*results):
        np.testing.assert_array_equal(shared, kept)


# A ReLU right after a linear layer is applied by its GEMM, and its backward is done in the pass
# that sums the bias gradient; keep_outputs runs it as its own node. Widths and batches take the
# GEMM's paths: C^T tiles (32 x 128 x 100), the packed kernel, the dot products of one sample,
# and a backward mask split between two threads (70 x 1000).
def linear(name, inputs, n_in, n_out, bias=True):
    return {"name": name, "op": "linear", "in_features": n_in, "out_features": n_out,
            "bias": bias, "inputs": inputs}


def relu(name, inputs):
    return {"name": name, "op": "relu", "inputs": inputs}


LINEAR_GRAPHS = {
    "linear, ReLU": lambda w: [
        {"name": "f", "op": "flatten", "inputs": ["input"]}, linear("l", ["f"], 100, w),
        relu("r", ["l"]), linear("out", ["r"], w, 3)],
    "linear without bias, ReLU, linear, ReLU at the output": lambda w: [
        {"name": "f", "op": "flatten", "inputs": ["input"]},
        linear("l", ["f"], 100, w, bias=False), relu("r", ["l"]),
        linear("m", ["r"], w, 5), relu("out", ["m"])],
    "linear read twice": lambda w: [
        {"name": "f", "op": "flatten", "inputs": ["input"]}, linear("l", ["f"], 100, w),
        relu("r", ["l"]), {"name": "s", "op": "add", "inputs": ["r", "l"]},
        linear("out", ["s"], w, 3)],
    "ReLU read by two layers": lambda w: [
        {"name": "f", "op": "flatten", "inputs": ["input"]}, linear("l", ["f"], 100, w),
        relu("r", ["l"]), linear("a", ["r"], w, 3), linear("b", ["r"], w, 3),
        {"name": "out", "op": "add", "inputs": ["a", "b"]}],
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch, width", [(1, 40), (6, 40), (32, 128), (70, 1000)])
@pytest.mark.parametrize("name", sorted(LINEAR_GRAPHS))
def test_relus_fused_into_linear_layers_give_the_bits_of_separate_ones(name, batch, width,
                                                                      dtype, threads):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((batch, 4, 5, 5)).astype(dtype)
    results = []
    for keep in (False, True):
        spec = {"format": "fastnet.model", "version": 1, "dtype": dtype, "seed": 4,
                "input_shape": [4, 5, 5], "nodes": LINEAR_GRAPHS[name](width)}
        core = _core.Model(json.dumps(spec))
        core.keep_outputs = keep
        core.training = False
        inference = core.forward(x, True)
        core.training = True
        y = core.forward(x, True)
        g = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
        results.append((inference, y, core.backward(g, True), core.grad_arena().copy()))
        if keep:  # the ReLU had work both ways: some outputs negative, some positive
            pre = core.node_output(1)
            assert (pre < 0).any() and (pre > 0).any()
    for fused, separate in zip(*results):
        np.testing.assert_array_equal(fused, separate)


# Batch norm and the pools leave their input gradient to the convolution before them (through the
# ReLU fused into it, if there is one), when they are that output's only reader; a dropout with
# p = 0 between the two (an exact identity both ways) keeps the gradient a buffer of its own. The
# convolution's GEMMs must read the same bits either way.
def bn(name, inputs, channels=4, **options):
    return {"name": name, "op": "batch_norm", "num_features": channels, "inputs": inputs,
            **options}


def identity(name, inputs):
    return {"name": name, "op": "dropout", "p": 0.0, "inputs": inputs}


DEFERRED = {
    "convolution, batch norm, ReLU": lambda between: [
        conv("c", ["input"]), *between("c"), bn("b", [between.last]),
        {"name": "r", "op": "relu", "inputs": ["b"]}] + head(["r"]),
    "convolution, batch norm without affine": lambda between: [
        conv("c", ["input"]), *between("c"), bn("b", [between.last], affine=False)]
        + head(["b"]),
    "grouped strided convolution without bias, batch norm, ReLU": lambda between: [
        {"name": "c", "op": "conv2d", "in_channels": 4, "out_channels": 6, "kernel_size": [3, 3],
         "stride": [2, 2], "padding": [1, 1], "groups": 2, "bias": False, "inputs": ["input"]},
        *between("c"), bn("b", [between.last], channels=6),
        {"name": "r", "op": "relu", "inputs": ["b"]}] + head(["r"], width=6 * 3 * 3),
    "a residual block": lambda between: [
        conv("c", ["input"]), *between("c"), bn("b", [between.last]),
        {"name": "r", "op": "relu", "inputs": ["b"]},
        conv("d", ["r"]), bn("e", ["d"]),  # deferred in both
        {"name": "s", "op": "add", "inputs": ["e", "input"]},
        {"name": "q", "op": "relu", "inputs": ["s"]}] + head(["q"]),
    "pointwise convolution, batch norm": lambda between: [
        {"name": "c", "op": "conv2d", "in_channels": 4, "out_channels": 4, "kernel_size": [1, 1],
         "inputs": ["input"]}, *between("c"), bn("b", [between.last])] + head(["b"]),
    "convolution, ReLU, batch norm": lambda between: [
        conv("c", ["input"]), {"name": "r", "op": "relu", "inputs": ["c"]}, *between("r"),
        bn("b", [between.last])] + head(["b"]),
    # 5 x 5 by 2 x 2 windows: the last row and column are in no window, their gradient zero.
    "convolution, ReLU, max pool": lambda between: [
        conv("c", ["input"]), {"name": "r", "op": "relu", "inputs": ["c"]}, *between("r"),
        max_pool("p", [between.last], 2, 2, 0)] + head(["p"], width=4 * 2 * 2),
    # Overlapping windows: a maximum two windows share takes both gradients.
    "convolution, ReLU, overlapping padded max pool": lambda between: [
        conv("c", ["input"]), {"name": "r", "op": "relu", "inputs": ["c"]}, *between("r"),
        max_pool("p", [between.last], 3, 1, 1)] + head(["p"]),
    "convolution, strided max pool": lambda between: [
        conv("c", ["input"]), *between("c"), max_pool("p", [between.last], 3, 2, 1)]
        + head(["p"], width=4 * 3 * 3),
    "convolution, ReLU, avg pool": lambda between: [
        conv("c", ["input"]), {"name": "r", "op": "relu", "inputs": ["c"]}, *between("r"),
        max_pool("p", [between.last], 2, 2, 0, op="avg_pool2d")] + head(["p"], width=4 * 2 * 2),
    "convolution, overlapping padded avg pool": lambda between: [
        conv("c", ["input"]), *between("c"), max_pool("p", [between.last], 3, 1, 1,
                                                     op="avg_pool2d")] + head(["p"]),
}


def max_pool(name, inputs, kernel, stride, padding, op="max_pool2d"):
    return {"name": name, "op": op, "kernel_size": kernel, "stride": stride, "padding": padding,
            "inputs": inputs}


class Between:
    """The nodes put between the convolution and the batch norm: none, or an identity."""

    def __init__(self, with_identity):
        self.with_identity = with_identity
        self.last = None

    def __call__(self, producer):
        self.last = "i" if self.with_identity else producer
        return [identity("i", [producer])] if self.with_identity else []


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(DEFERRED))
def test_deferred_input_gradients_give_the_bits_of_separate_ones(name, mode, dtype, threads):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 4, 5, 5)).astype(dtype)
    g = rng.standard_normal((6, 3)).astype(dtype)
    results, gradient_memory = [], []
    for with_identity in (False, True):
        spec = {"format": "fastnet.model", "version": 1, "dtype": dtype, "seed": 4,
                "input_shape": [4, 5, 5], "nodes": DEFERRED[name](Between(with_identity))}
        core = _core.Model(json.dumps(spec))
        core.training = mode == "train"
        for _ in range(2):  # the second backward accumulates the parameter gradients
            y = core.forward(x, True)
            grad_x = core.backward(g, True)
        results.append((y, grad_x, core.grad_arena().copy()))
        gradient_memory.append(core.memory_use()["gradients"])
    for deferred, separate in zip(*results):
        np.testing.assert_array_equal(deferred, separate)
    if "pool" in name and "overlapping" not in name:
        # No gradient buffer holds the convolution's output gradient (the size of x): it is
        # derived image by image.
        assert gradient_memory[0] < x.nbytes <= gradient_memory[1]


@pytest.mark.parametrize("batch", [1, 3])
def test_deferred_batch_norm_after_a_convolution_cut_in_bands(batch, threads):
    # A batch smaller than the thread count cuts the convolution's forward into bands of output
    # rows: batch norm then takes its statistics itself, and still leaves its input gradient to
    # the convolution.
    rng = np.random.default_rng(9)
    x = rng.standard_normal((batch, 16, 32, 32)).astype(np.float32)
    g = rng.standard_normal((batch, 3)).astype(np.float32)

    def nodes(between):
        return [{"name": "c", "op": "conv2d", "in_channels": 16, "out_channels": 16,
                 "kernel_size": [3, 3], "padding": [1, 1], "inputs": ["input"]},
                *between("c"), bn("b", [between.last], channels=16),
                {"name": "r", "op": "relu", "inputs": ["b"]}] + head(["r"], width=16 * 32 * 32)

    results = []
    for with_identity in (False, True):
        spec = {"format": "fastnet.model", "version": 1, "dtype": "float32", "seed": 4,
                "input_shape": [16, 32, 32], "nodes": nodes(Between(with_identity))}
        core = _core.Model(json.dumps(spec))
        y = core.forward(x, True)
        results.append((y, core.backward(g, True), core.grad_arena().copy()))
    for deferred, separate in zip(*results):
        np.testing.assert_array_equal(deferred, separate)


def test_fused_relu_and_deferred_batch_norm_on_small_images_by_winograd_in_groups(threads):
    # 8 x 8 images run by Winograd four at a time; a batch of 7 ends in a short group. A fused
    # ReLU masks each image's output gradient into the group's buffer, and batch norm derives
    # each one there, which the input gradient's transforms then read as one; with an identity
    # after each convolution, from the batch's gradients.
    rng = np.random.default_rng(10)
    x = rng.standard_normal((7, 16, 8, 8)).astype(np.float32)
    g = rng.standard_normal((7, 3)).astype(np.float32)

    def convolution(name, inputs):
        return {"name": name, "op": "conv2d", "in_channels": 16, "out_channels": 16,
                "kernel_size": [3, 3], "padding": [1, 1], "inputs": inputs}

    def nodes(with_identity):
        after_a = [identity("i", ["a"])] if with_identity else []
        after_c = [identity("j", ["c"])] if with_identity else []
        return ([convolution("a", ["input"]), *after_a,
                 {"name": "q", "op": "relu", "inputs": ["i" if with_identity else "a"]},
                 convolution("c", ["q"]), *after_c,
                 bn("b", ["j" if with_identity else "c"], channels=16),
                 {"name": "r", "op": "relu", "inputs": ["b"]}] + head(["r"], width=16 * 8 * 8))

    results = []
    for with_identity in (False, True):
        spec = {"format": "fastnet.model", "version": 1, "dtype": "float32", "seed": 4,
                "input_shape": [16, 8, 8], "nodes": nodes(with_identity)}
        core = _core.Model(json.dumps(spec))
        y = core.forward(x, True)
        results.append((y, core.backward(g, True), core.grad_arena().copy()))
    for fused, separate in zip(*results):
        np.testing.assert_array_equal(fused, separate)
