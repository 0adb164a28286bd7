"""``fastnet bench``: training throughput, batch-1 latency and memory against PyTorch and JAX.

The four workloads of the project's benchmark table are trained by fastnet and, when they are
installed, by PyTorch and JAX, in one run. Every framework builds the same network (the
framework-neutral definitions in :data:`NETWORKS`, read by one builder per framework) and trains
it on the same random batch with the same optimizer.

Each framework runs in a long-lived worker process of its own, one per workload: imports, thread
pools and allocators never meet, and the peak resident memory of a worker is that of a process
that trains one workload. The workers take turns in timed windows (fastnet, PyTorch, JAX, then
again, the first of each round rotating), so a noisy machine slows them alike; a worker waiting
for its turn is blocked reading a pipe, not spinning. Samples/s is the median over the windows.

Run ``fastnet bench --help`` (or ``python -m fastnet.bench --help``) for the options;
``fastnet bench --gemm`` compares the built-in GEMM with the BLAS at the workloads' shapes, and
``fastnet bench --scaling`` each framework's training on one thread with its training on
``--threads``.

This module must stay importable on its own, without the ``fastnet`` package: the workers load
it by path so that a PyTorch or JAX process never imports fastnet. Framework imports are
therefore local to the functions that need them.
"""
import argparse
import importlib.util
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

SUMMARY = "compare training speed and memory with PyTorch and JAX"

DESCRIPTION = """\
Train the benchmark workloads with fastnet and, when installed, PyTorch and JAX, each framework in
a worker process of its own, taking turns in timed windows; print samples/s (median over the
windows), how many times faster fastnet is, the GFLOP/s achieved, the median batch-1 inference
latency and the peak resident memory of each training process.

Only ratios within one run are meaningful on a shared machine; --repeat N makes N runs and ends
with each ratio's median and range over them. Progress goes to stderr."""

# ---------------------------------------------------------------------------- the definitions
#
# Networks, in a framework-neutral form that one builder per framework reads, so that every
# framework trains exactly the same layers. Each layer is a tuple:
#   ("linear", in_features, out_features)                 fully connected, with bias
#   ("conv", in_ch, out_ch, kernel, stride, padding, bias)  square kernel, dilation 1, groups 1
#   ("bn", channels)                                      BatchNorm2d, eps 1e-5, momentum 0.1
#   ("relu",)
#   ("maxpool", kernel)                                   stride = kernel, no padding
#   ("dropout", p)
#   ("gap",)                                              global average pooling, (C, 1, 1)
#   ("flatten",)
#   ("residual", main, shortcut)                          main(x) + shortcut(x); shortcut None
#                                                         is the identity


def _basic_block(cin, cout, stride):
    main = [("conv", cin, cout, 3, stride, 1, False), ("bn", cout), ("relu",),
            ("conv", cout, cout, 3, 1, 1, False), ("bn", cout)]
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = [("conv", cin, cout, 1, stride, 0, False), ("bn", cout)]
    return [("residual", main, shortcut), ("relu",)]


NETWORKS = {
    "mlp_small": [("linear", 64, 128), ("relu",), ("linear", 128, 128), ("relu",),
                  ("linear", 128, 10)],
    "mlp_mnist": [("linear", 784, 1024), ("relu",), ("linear", 1024, 1024), ("relu",),
                  ("linear", 1024, 10)],
    "cnn_mnist": [("conv", 1, 32, 3, 1, 0, True), ("relu",), ("conv", 32, 64, 3, 1, 0, True),
                  ("relu",), ("maxpool", 2), ("dropout", 0.25), ("flatten",),
                  ("linear", 9216, 128), ("relu",), ("linear", 128, 10)],
    "resnet8": ([("conv", 3, 16, 3, 1, 1, False), ("bn", 16), ("relu",)]
                + _basic_block(16, 16, 1) + _basic_block(16, 32, 2) + _basic_block(32, 64, 2)
                + [("gap",), ("flatten",), ("linear", 64, 10)]),
}

#: Optimizers and their hyper-parameters (PyTorch's argument names and update rules).
OPTIMIZERS = {
    "sgd": {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},
}

#: name: (network, batch, per-sample input shape, classes, optimizer)
WORKLOADS = {
    "mlp_small_b32": ("mlp_small", 32, (64,), 10, "sgd"),
    "mlp_mnist_b128": ("mlp_mnist", 128, (784,), 10, "sgd"),
    "cnn_mnist_b64": ("cnn_mnist", 64, (1, 28, 28), 10, "adam"),
    "resnet8_cifar_b128": ("resnet8", 128, (3, 32, 32), 10, "sgd"),
}

#: framework: (module whose presence means it is installed, display name)
FRAMEWORKS = {"fastnet": ("fastnet", "fastnet"), "torch": ("torch", "PyTorch"),
              "jax": ("jax", "JAX")}
_ALIASES = {"pytorch": "torch"}


def describe(network):
    """The layers of ``network`` (a key of :data:`NETWORKS`) as PyTorch-style text, one layer a
    line, nested blocks indented."""
    def lines(layers, indent):
        out = []
        for layer in layers:
            kind, args = layer[0], layer[1:]
            pad = "  " * indent
            if kind == "linear":
                out.append(f"{pad}Linear({args[0]}, {args[1]})")
            elif kind == "conv":
                cin, cout, k, stride, padding, bias = args
                out.append(f"{pad}Conv2d({cin}, {cout}, {k}, stride={stride}, padding={padding}, "
                           f"bias={bias})")
            elif kind == "bn":
                out.append(f"{pad}BatchNorm2d({args[0]})")
            elif kind == "relu":
                out.append(f"{pad}ReLU()")
            elif kind == "maxpool":
                out.append(f"{pad}MaxPool2d({args[0]})")
            elif kind == "dropout":
                out.append(f"{pad}Dropout({args[0]})")
            elif kind == "gap":
                out.append(f"{pad}AdaptiveAvgPool2d(1)")
            elif kind == "flatten":
                out.append(f"{pad}Flatten()")
            elif kind == "residual":
                out.append(f"{pad}Residual(main=")
                out += lines(args[0], indent + 2)
                out.append(f"{pad}  shortcut=" + ("identity" if args[1] is None else ""))
                if args[1] is not None:
                    out += lines(args[1], indent + 2)
                out.append(f"{pad})")
            else:
                raise ValueError(f"unknown layer kind {kind!r}")
        return out

    return "\n".join(lines(NETWORKS[network], 0))


def layer_shapes(network, input_shape):
    """Every ``linear``, ``conv`` and ``bn`` layer of ``network`` with its per-sample input shape.

    Returns
    -------
    list of (layer, input_shape, is_first)
        ``is_first`` is true for the layer that reads the network's input (its input gradient
        is never needed in training).
    """
    found = []

    def walk(layers, shape, first):
        for layer in layers:
            kind = layer[0]
            if kind in ("linear", "conv", "bn"):
                found.append((layer, tuple(shape), first))
            if kind == "linear":
                shape = (layer[2],)
            elif kind == "conv":
                _, cin, cout, k, stride, padding, _ = layer
                shape = (cout, (shape[1] + 2 * padding - k) // stride + 1,
                         (shape[2] + 2 * padding - k) // stride + 1)
            elif kind == "maxpool":
                shape = (shape[0], shape[1] // layer[1], shape[2] // layer[1])
            elif kind == "gap":
                shape = (shape[0], 1, 1)
            elif kind == "flatten":
                shape = (int(np.prod(shape)),)
            elif kind == "residual":
                main_out = walk(layer[1], shape, first)
                if layer[2] is not None:
                    walk(layer[2], shape, first)
                shape = main_out
            first = False
        return shape

    walk(NETWORKS[network], input_shape, True)
    return found


# When a convolution runs by Winograd's F(2x2, 3x3) (csrc/conv2d.c, geometry.winograd): a 3x3
# kernel of stride 1 (one group, padding <= 2), at least this many channels in and out, and
# inputs and outputs at least WINOGRAD_MIN_WIDTH wide; below WINOGRAD_WIDE only for a batch that
# fills a group of images with WINOGRAD_MIN_TILES 2x2 tiles between them, the images a call
# takes at once; its input gradient too when it has no more output channels than input ones.
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_WIDTH = 8
WINOGRAD_WIDE = 16
WINOGRAD_MIN_TILES = 64


def _winograd_tiles(out_h, out_w):
    """The 2x2 tiles of one image's output (out_h, out_w)."""
    return ((out_h + 1) // 2) * ((out_w + 1) // 2)


def _winograd_images(out_h, out_w):
    """The images a Winograd convolution with an output of (out_h, out_w) takes at once."""
    tiles = _winograd_tiles(out_h, out_w)
    return 1 if tiles >= WINOGRAD_MIN_TILES else -(-WINOGRAD_MIN_TILES // tiles)


def _weight_grad_windows(cin, cout, k, stride, padding, height, oh, ow):
    """Whether a convolution's weight gradient reads its input's windows from shifted planes
    (``geometry.windows`` in csrc/conv2d.c): stride 1 across, rows of a multiple of 16 outputs,
    few output channels for a long plane (``fn_gemm_dot_pays``), and the shifted planes fit the
    column buffer."""
    plane, depth = oh * ow, cin * k * k
    dot_pays = (cout <= 16 and plane >= 256) or (cout <= 32 and plane >= 512)
    shifted = k * cin * (height + 2 * padding) * ow
    pointwise = k == 1 and stride == 1 and padding == 0
    return (not pointwise and stride == 1 and ow % 16 == 0 and dot_pays and
            shifted + 2 * depth + 2 <= depth * plane)


def _winograd_products(channels_in, channels_out, out_h, out_w, images):
    """The GEMMs of one call of a Winograd convolution on ``images`` images: 16 of ``U[e]^T
    (out, in) @ V[e] (in, columns)``, the columns the images' 2x2 tiles rounded up to a multiple
    of 32, or of ``V[e]^T (tiles, in) @ U[e] (in, out)`` where that leaves fewer of 32-column
    slivers empty (``winograd_by_tiles`` in csrc/winograd.c)."""
    tiles = images * _winograd_tiles(out_h, out_w)
    columns = (tiles + 31) // 32 * 32
    if tiles * ((channels_out + 31) // 32 * 32) < channels_out * columns:
        return tiles, channels_out, channels_in, True, False
    return channels_out, columns, channels_in, True, False


def gemm_shapes(workloads=None):
    """The GEMMs of a training step of each workload, as fastnet's kernels call them.

    A linear layer makes three per batch (forward ``x @ W^T``, weight gradient ``dy^T @ x``,
    input gradient ``dy @ W``); a convolution makes the same three per image, on im2col columns
    (``W (out, k) @ cols (k, plane)``, ``dy @ cols^T``, ``W^T @ dy``), except that a convolution
    that runs by Winograd makes 16 per image, or per group of small images, for its forward (and
    input gradient, and weight gradient where that does not read shifted windows) instead, on
    transformed tiles. The input gradient of the first layer is not computed.

    Returns
    -------
    list of dict
        One per distinct shape of each workload, in order of first use: ``workload``, ``m``,
        ``n``, ``k``, ``trans_a``, ``trans_b`` (``C (m, n) = op(A) (m, k) @ op(B) (k, n)``),
        ``calls`` (per training step), ``share`` (of the FLOPs of the step's GEMMs),
        ``per_image`` (a convolution's: with a batch of at least the thread count, each thread
        runs whole GEMMs on its own images, so they run on one thread) and ``where`` (the layers
        and roles).
    """
    out = []
    for name in workloads or WORKLOADS:
        network, batch, input_shape, _, _ = WORKLOADS[name]
        shapes = {}
        for layer, shape, first in layer_shapes(network, input_shape):
            if layer[0] == "linear":
                _, fin, fout = layer
                what = f"Linear({fin},{fout})"
                gemms = [("fwd", batch, fout, fin, False, True, 1),
                         ("dW", fout, fin, batch, True, False, 1)]
                if not first:
                    gemms.append(("dX", batch, fin, fout, False, False, 1))
            elif layer[0] == "conv":
                _, cin, cout, k, stride, padding, _ = layer
                oh = (shape[1] + 2 * padding - k) // stride + 1
                ow = (shape[2] + 2 * padding - k) // stride + 1
                plane, depth = oh * ow, cin * k * k
                what = f"Conv2d({cin},{cout},{k},s{stride})"
                images = _winograd_images(oh, ow)
                winograd = (k == 3 and stride == 1 and padding <= 2 and
                            min(cin, cout) >= WINOGRAD_MIN_CHANNELS and
                            min(ow, shape[2]) >= WINOGRAD_MIN_WIDTH and
                            (min(ow, shape[2]) >= WINOGRAD_WIDE or batch >= images))
                groups = -(-batch // images)  # the last one may be short; counted whole
                if winograd:
                    gemms = [("fwd Winograd", *_winograd_products(cin, cout, oh, ow, images),
                              16 * groups)]
                else:
                    gemms = [("fwd", cout, plane, depth, False, False, batch)]
                if winograd and not _weight_grad_windows(cin, cout, k, stride, padding,
                                                         shape[1], oh, ow):
                    # du[e] (out, in) += Z[e] (out, tiles) @ V[e] (in, tiles)^T
                    gemms.append(("dW Winograd", cout, cin, images * _winograd_tiles(oh, ow),
                                  False, True, 16 * groups))
                else:
                    gemms.append(("dW", cout, depth, plane, False, True, batch))
                if not first and winograd and cout <= cin:
                    gemms.append(("dX Winograd",
                                  *_winograd_products(cout, cin, *shape[1:], images),
                                  16 * groups))
                elif not first:
                    gemms.append(("dX", depth, plane, cout, True, False, batch))
            else:
                continue
            for role, m, n, k, ta, tb, calls in gemms:
                entry = shapes.setdefault((m, n, k, ta, tb), {
                    "workload": name, "m": m, "n": n, "k": k, "trans_a": ta, "trans_b": tb,
                    "calls": 0, "per_image": False, "where": []})
                entry["calls"] += calls
                entry["per_image"] = entry["per_image"] or layer[0] == "conv"
                label = f"{what} {role}"
                if label not in entry["where"]:
                    entry["where"].append(label)
        total = sum(2.0 * e["m"] * e["n"] * e["k"] * e["calls"] for e in shapes.values())
        for entry in shapes.values():
            entry["share"] = 2.0 * entry["m"] * entry["n"] * entry["k"] * entry["calls"] / total
            out.append(entry)
    return out


def forward_flops(network, input_shape):
    """Floating-point operations of one sample's forward pass in the linear and convolution
    layers (2 per multiply-add), computed from the definition; the same count as
    ``fastnet.Sequential.forward_flops``."""
    total = 0
    for layer, shape, _ in layer_shapes(network, input_shape):
        if layer[0] == "linear":
            total += 2 * layer[1] * layer[2]
        elif layer[0] == "conv":
            _, cin, cout, k, stride, padding, _ = layer
            oh = (shape[1] + 2 * padding - k) // stride + 1
            ow = (shape[2] + 2 * padding - k) // stride + 1
            total += 2 * cin * k * k * cout * oh * ow
    return total


# ---------------------------------------------------------------------------- fastnet


def build_layers(layers, ns, residual):
    """The layer objects of a network description, from the namespace ``ns`` (``fastnet`` or
    ``torch.nn``: the two share the layer names and arguments used here) and a ``residual(main,
    shortcut)`` constructor."""
    out = []
    for layer in layers:
        kind, args = layer[0], layer[1:]
        if kind == "linear":
            out.append(ns.Linear(*args))
        elif kind == "conv":
            cin, cout, k, stride, padding, bias = args
            out.append(ns.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias))
        elif kind == "bn":
            out.append(ns.BatchNorm2d(args[0]))
        elif kind == "relu":
            out.append(ns.ReLU())
        elif kind == "maxpool":
            out.append(ns.MaxPool2d(args[0]))
        elif kind == "dropout":
            out.append(ns.Dropout(args[0]))
        elif kind == "gap":
            out.append(ns.AdaptiveAvgPool2d(1))
        elif kind == "flatten":
            out.append(ns.Flatten())
        elif kind == "residual":
            main, shortcut = args
            out.append(residual(ns.Sequential(*build_layers(main, ns, residual)),
                                None if shortcut is None
                                else ns.Sequential(*build_layers(shortcut, ns, residual))))
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    return out


def fastnet_model(network, input_shape):
    """``network`` as a :class:`fastnet.Sequential`."""
    import fastnet as fn

    return fn.Sequential(*build_layers(NETWORKS[network], fn, fn.Residual),
                         input_shape=input_shape)


class _ModuleRunner:
    """What the fastnet and PyTorch runners share: a model of train() and eval() modes, trained
    by the workload's optimizer from the framework's ``optim`` namespace, which both name
    alike."""

    def _optimizer(self, optim, optimizer):
        kind = optim.SGD if optimizer == "sgd" else optim.Adam
        return kind(self.model.parameters(), **OPTIMIZERS[optimizer])

    def sync(self):
        pass

    def train_mode(self):
        self.model.train()

    def eval_mode(self):
        self.model.eval()


class _FastnetRunner(_ModuleRunner):
    name = "fastnet"

    def __init__(self, threads):
        import fastnet as fn

        fn.set_num_threads(threads)
        self.fn = fn
        self.version = fn.__version__
        self.threads = fn.get_num_threads()

    def build(self, network, optimizer, x, y):
        fn = self.fn
        self.model = fastnet_model(network, x.shape[1:])
        self.opt = self._optimizer(fn.optim, optimizer)
        self.loss = fn.CrossEntropyLoss()
        self.x, self.y = x, y
        self.sample = x[:1].copy()

    def step(self):
        self.model.train_step(self.x, self.y, self.loss, self.opt)

    def infer(self):
        self.model(self.sample)


# ---------------------------------------------------------------------------- PyTorch


def torch_model(network):
    """``network`` as a ``torch.nn.Sequential``; its state-dict names and layouts are those of
    :func:`fastnet_model`'s, so weights move between the two as they are."""
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, main, shortcut):
            super().__init__()
            self.main = main
            self.shortcut = shortcut

        def forward(self, x):
            return self.main(x) + (x if self.shortcut is None else self.shortcut(x))

    torch.manual_seed(0)
    return nn.Sequential(*build_layers(NETWORKS[network], nn, Residual))


class _TorchRunner(_ModuleRunner):
    name = "torch"

    def __init__(self, threads):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.version = torch.__version__
        self.threads = torch.get_num_threads()

    def build(self, network, optimizer, x, y):
        torch = self.torch
        self.model = torch_model(network)
        self.opt = self._optimizer(torch.optim, optimizer)
        self.loss = torch.nn.CrossEntropyLoss()
        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(y)
        self.sample = x[:1].copy()

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.model(self.x), self.y).backward()
        self.opt.step()

    def infer(self):
        with self.torch.inference_mode():
            self.model(self.torch.from_numpy(self.sample))


# ---------------------------------------------------------------------------- JAX


def jax_model(network):
    """``network`` in JAX: ``(init, apply)`` with ``init(rng) -> (params, state)`` (``rng`` a
    numpy Generator; ``state`` holds the batch-norm running statistics) and ``apply(params, state,
    x, train, key) -> (logits, new_state)`` on NHWC inputs (``key``: the dropout key in
    training)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    dn = ("NHWC", "HWIO", "NHWC")

    def uniform(rng, shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return jnp.asarray(rng.uniform(-bound, bound, shape).astype(np.float32))

    def layer_fns(layer):
        kind, args = layer[0], layer[1:]
        if kind == "linear":
            fin, fout = args

            def init(rng):
                return {"w": uniform(rng, (fin, fout), fin), "b": uniform(rng, (fout,), fin)}, ()

            def apply(p, s, x, train, key):
                return x @ p["w"] + p["b"], s
        elif kind == "conv":
            cin, cout, k, stride, padding, bias = args
            fan_in = cin * k * k

            def init(rng):
                p = {"w": uniform(rng, (k, k, cin, cout), fan_in)}
                if bias:
                    p["b"] = uniform(rng, (cout,), fan_in)
                return p, ()

            def apply(p, s, x, train, key):
                y = lax.conv_general_dilated(x, p["w"], (stride, stride),
                                             [(padding, padding)] * 2, dimension_numbers=dn)
                return (y + p["b"] if bias else y), s
        elif kind == "bn":
            c = args[0]

            def init(rng):
                return ({"gamma": jnp.ones(c, jnp.float32), "beta": jnp.zeros(c, jnp.float32)},
                        {"mean": jnp.zeros(c, jnp.float32), "var": jnp.ones(c, jnp.float32)})

            def apply(p, s, x, train, key):
                if train:
                    mean = x.mean(axis=(0, 1, 2))
                    var = x.var(axis=(0, 1, 2))
                    count = x.shape[0] * x.shape[1] * x.shape[2]
                    s = {"mean": 0.9 * s["mean"] + 0.1 * mean,
                         "var": 0.9 * s["var"] + 0.1 * var * (count / (count - 1))}
                else:
                    mean, var = s["mean"], s["var"]
                return (x - mean) * (lax.rsqrt(var + 1e-5) * p["gamma"]) + p["beta"], s
        elif kind == "relu":
            def init(rng):
                return (), ()

            def apply(p, s, x, train, key):
                return jnp.maximum(x, 0), s
        elif kind == "maxpool":
            k = args[0]

            def init(rng):
                return (), ()

            def apply(p, s, x, train, key):
                return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, k, k, 1),
                                         "VALID"), s
        elif kind == "dropout":
            rate = args[0]

            def init(rng):
                return (), ()

            def apply(p, s, x, train, key):
                if not train:
                    return x, s
                keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
                return jnp.where(keep, x / (1.0 - rate), 0), s
        elif kind == "gap":
            def init(rng):
                return (), ()

            def apply(p, s, x, train, key):
                return x.mean(axis=(1, 2), keepdims=True), s
        elif kind == "flatten":
            def init(rng):
                return (), ()

            def apply(p, s, x, train, key):
                return x.reshape(x.shape[0], -1), s
        elif kind == "residual":
            main_init, main_apply = sequence(args[0])
            short = None if args[1] is None else sequence(args[1])

            def init(rng):
                pm, sm = main_init(rng)
                ps, ss = short[0](rng) if short else ((), ())
                return {"main": pm, "shortcut": ps}, {"main": sm, "shortcut": ss}

            def apply(p, s, x, train, key):
                ym, sm = main_apply(p["main"], s["main"], x, train, key)
                if short is None:
                    ys, ss = x, s["shortcut"]
                else:
                    ys, ss = short[1](p["shortcut"], s["shortcut"], x, train, key)
                return ym + ys, {"main": sm, "shortcut": ss}
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
        return init, apply

    def sequence(layers):
        parts = [layer_fns(layer) for layer in layers]

        def init(rng):
            pairs = [part_init(rng) for part_init, _ in parts]
            return [p for p, _ in pairs], [s for _, s in pairs]

        def apply(params, state, x, train, key):
            new_state = []
            for i, (_, part_apply) in enumerate(parts):
                sub = None if key is None else jax.random.fold_in(key, i)
                x, s = part_apply(params[i], state[i], x, train, sub)
                new_state.append(s)
            return x, new_state

        return init, apply

    return sequence(NETWORKS[network])


class _JaxRunner:
    name = "jax"

    def __init__(self, threads):
        import jax

        jax.config.update("jax_platforms", "cpu")
        jax.devices()  # starts the backend, and its thread pool, now
        self.jax = jax
        self.version = jax.__version__
        self.threads = threads  # NPROC, set before the import, sizes XLA's pool

    def build(self, network, optimizer, x, y):
        jax = self.jax
        import jax.numpy as jnp

        init, apply = jax_model(network)
        params, state = init(np.random.default_rng(0))
        hyper = OPTIMIZERS[optimizer]
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        if optimizer == "sgd":
            opt_state = {"t": jnp.zeros((), jnp.int32), "buf": zeros}
        else:
            opt_state = {"t": jnp.zeros((), jnp.int32), "m": zeros,
                         "v": jax.tree_util.tree_map(jnp.zeros_like, params)}
        base_key = jax.random.PRNGKey(0)

        def loss_fn(params, state, xs, ys, key):
            logits, new_state = apply(params, state, xs, True, key)
            picked = jnp.take_along_axis(logits, ys[:, None], axis=1)[:, 0]
            return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked), new_state

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def sgd(params, grads, opt_state):
            lr, momentum, decay = hyper["lr"], hyper["momentum"], hyper["weight_decay"]
            grads = jax.tree_util.tree_map(lambda g, p: g + decay * p, grads, params)
            buf = jax.tree_util.tree_map(lambda b, g: momentum * b + g, opt_state["buf"], grads)
            params = jax.tree_util.tree_map(lambda p, b: p - lr * b, params, buf)
            return params, {"t": opt_state["t"] + 1, "buf": buf}

        def adam(params, grads, opt_state):
            lr, (b1, b2), eps = hyper["lr"], hyper["betas"], hyper["eps"]
            t = opt_state["t"] + 1
            tf = t.astype(jnp.float32)
            m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, opt_state["m"], grads)
            v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, opt_state["v"],
                                       grads)
            step_size = lr / (1 - b1 ** tf)
            root_bc2 = jnp.sqrt(1 - b2 ** tf)
            params = jax.tree_util.tree_map(
                lambda p, m, v: p - step_size * m / (jnp.sqrt(v) / root_bc2 + eps), params, m, v)
            return params, {"t": t, "m": m, "v": v}

        update = sgd if optimizer == "sgd" else adam

        def train_step(params, opt_state, state, xs, ys):
            key = jax.random.fold_in(base_key, opt_state["t"])
            (loss, new_state), grads = grad_fn(params, state, xs, ys, key)
            params, opt_state = update(params, grads, opt_state)
            return params, opt_state, new_state, loss

        self.train_fn = jax.jit(train_step, donate_argnums=(0, 1, 2))
        self.predict_fn = jax.jit(lambda params, state, xs: apply(params, state, xs, False,
                                                                  None)[0])
        nhwc = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
        self.x = jax.device_put(np.ascontiguousarray(nhwc))
        self.y = jax.device_put(y.astype(np.int32))
        self.sample = jax.device_put(np.ascontiguousarray(nhwc[:1]))
        self.params, self.opt_state, self.state = params, opt_state, state
        self.pending = None

    def step(self):
        # Dispatch this step, then wait for the previous one: Python's dispatch overlaps the
        # computation by one step, and the queue never grows.
        self.params, self.opt_state, self.state, loss = self.train_fn(
            self.params, self.opt_state, self.state, self.x, self.y)
        if self.pending is not None:
            self.pending.block_until_ready()
        self.pending = loss

    def sync(self):
        if self.pending is not None:
            self.pending.block_until_ready()
            self.pending = None

    def train_mode(self):
        pass

    def eval_mode(self):
        self.sync()

    def infer(self):
        self.predict_fn(self.params, self.state, self.sample).block_until_ready()


_RUNNERS = {"fastnet": _FastnetRunner, "torch": _TorchRunner, "jax": _JaxRunner}


# ---------------------------------------------------------------------------- the worker


def memory_status():
    """Resident memory of this process in MiB: ``(peak, current, source)``.

    The peak is ``VmHWM`` of ``/proc/self/status`` (the high-water mark of the resident set
    size) on Linux, else ``ru_maxrss`` of ``getrusage``; current is ``VmRSS`` (None when not
    available).
    """
    try:
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        return (int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024,
                "VmHWM")
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024 if sys.platform == "darwin" else 1024), None, "ru_maxrss"


def make_batch(workload):
    """The random batch every framework trains ``workload`` on: ``(x float32, y int64)``."""
    _, batch, shape, classes, _ = WORKLOADS[workload]
    rng = np.random.default_rng(0)
    return rng.random((batch,) + tuple(shape), dtype=np.float32), rng.integers(0, classes, batch)


def _train_window(runner, batch, seconds):
    cpu0, started = os.times(), time.perf_counter()
    steps = 0
    while True:
        runner.step()
        steps += 1
        if time.perf_counter() - started >= seconds:
            break
    runner.sync()
    elapsed = time.perf_counter() - started
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"rate": steps * batch / elapsed, "steps": steps, "elapsed": elapsed,
            "cpu_cores": cpu / elapsed}


def _latency_window(runner, seconds):
    times, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 5:
        t0 = time.perf_counter()
        runner.infer()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "calls": len(times)}


def _worker_main(argv):
    """Runs in a worker process: ``framework workload threads``. Answers one JSON line on its
    original stdout per JSON request line on stdin; whatever else the process prints goes to
    stderr."""
    framework, workload, threads = argv[0], argv[1], int(argv[2])
    reply_file = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def reply(message):
        reply_file.write(json.dumps(message) + "\n")
        reply_file.flush()

    try:
        started = time.perf_counter()
        runner = _RUNNERS[framework](threads)
        import_rss = memory_status()[1]
        network, batch, _, _, optimizer = WORKLOADS[workload]
        x, y = make_batch(workload)
        runner.build(network, optimizer, x, y)
        del x, y
        runner.train_mode()
        runner.step()  # compiles (JAX) and allocates everything a step needs
        runner.sync()
        reply({"ok": True, "version": runner.version, "threads": runner.threads,
               "import_rss_mb": import_rss, "setup_s": time.perf_counter() - started})
    except BaseException as error:  # the parent reports it; nothing else to do here
        reply({"ok": False, "error": "".join(traceback.format_exception_only(
            type(error), error)).strip()})
        return 1
    for line in sys.stdin:
        request = json.loads(line)
        try:
            command = request["cmd"]
            if command == "quit":
                return 0
            if command == "train":
                runner.train_mode()
                result = _train_window(runner, batch, request["seconds"])
            elif command == "latency":
                runner.eval_mode()
                result = _latency_window(runner, request["seconds"])
            elif command == "memory":
                peak, current, source = memory_status()
                result = {"peak_rss_mb": peak, "rss_mb": current, "source": source}
            else:
                raise ValueError(f"unknown request {command!r}")
            reply({"ok": True, **result})
        except Exception as error:
            reply({"ok": False, "error": "".join(traceback.format_exception_only(
                type(error), error)).strip()})
    return 0


# Loads this file as a module of its own (not as part of the fastnet package) and runs a worker.
_BOOTSTRAP = """\
import importlib.util, sys
path = sys.argv[1]
spec = importlib.util.spec_from_file_location("_fastnet_bench_worker", path)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
sys.exit(module._worker_main(sys.argv[2:]))
"""


class WorkerError(RuntimeError):
    """A worker failed, died or did not answer in time."""


def _original_environ_value(name):
    """``name``'s value in the environment this process started with (``os.environ`` may have
    been changed since: fastnet sets ``GOMP_SPINCOUNT`` for itself at import); None if unset.
    Falls back to ``os.environ`` where the start-up environment cannot be read."""
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return os.environ.get(name)
    prefix = name.encode() + b"="
    for entry in entries:
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


def worker_environment(framework, threads, spin_count=None):
    """The environment of a worker: this one, with every thread pool sized to ``threads`` before
    anything is imported (OpenMP, MKL, OpenBLAS, and ``NPROC``, which sizes XLA's CPU pool), and
    ``GOMP_SPINCOUNT`` as the user set it (or unset), so that each framework runs with its own
    OpenMP defaults, unless ``spin_count`` is given: then every worker has that."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NPROC"):
        env[name] = str(threads)
    spin = _original_environ_value("GOMP_SPINCOUNT") if spin_count is None else str(spin_count)
    if spin is None:
        env.pop("GOMP_SPINCOUNT", None)
    else:
        env["GOMP_SPINCOUNT"] = spin
    if framework == "fastnet":
        # The worker imports the fastnet this process imported, whatever its working directory.
        import fastnet

        root = os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__)))
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(
            os.pathsep) if p])
    if framework == "jax":
        env["JAX_PLATFORMS"] = "cpu"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


class Worker:
    """One framework training one workload in a process of its own."""

    def __init__(self, framework, workload, threads, directory, spin_count=None):
        self.framework = framework
        self.log = tempfile.TemporaryFile(dir=directory)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, os.path.abspath(__file__), framework, workload,
             str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=directory,
            env=worker_environment(framework, threads, spin_count))
        self.buffer = b""
        self.info = None

    def _stderr_tail(self, lines=6):
        try:
            self.log.seek(0)
            text = self.log.read().decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return "\n".join(text[-lines:])

    def _fail(self, message):
        tail = self._stderr_tail()
        raise WorkerError(message + (f"\n{tail}" if tail else ""))

    def receive(self, timeout):
        """The next reply, as a dict; raises :class:`WorkerError` if the worker fails."""
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                self._fail(f"no answer within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.process.wait()
                self._fail(f"the worker exited with status {code}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        if not message.get("ok"):
            self._fail(message.get("error", "failed"))
        return message

    def request(self, timeout, **message):
        try:
            self.process.stdin.write((json.dumps(message) + "\n").encode())
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail("the worker is gone")
        return self.receive(timeout)

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write(b'{"cmd": "quit"}\n')
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.log.close()

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------------------- the runner


class Progress:
    """Progress lines on stderr: rewritten in place on a terminal, one per line otherwise."""

    def __init__(self, stream=None, enabled=True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.active = False

    def __call__(self, message):
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + message)
            self.active = True
        else:
            self.stream.write(message + "\n")
        self.stream.flush()

    def done(self):
        if self.enabled and self.tty and self.active:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.active = False


def framework_installed(framework):
    """Whether ``framework``'s module can be found (without importing it)."""
    try:
        return importlib.util.find_spec(FRAMEWORKS[framework][0]) is not None
    except (ImportError, ValueError):
        return False


def _median(values):
    return statistics.median(values) if values else None


def _spread(rates):
    """(fastest - slowest window) / median: how far the windows of one run disagree, which on a
    shared machine says how much a ratio of medians can be trusted."""
    if len(rates) < 2:
        return None
    return (max(rates) - min(rates)) / statistics.median(rates)


def run_workload(name, frameworks, threads, seconds, windows, progress, directory,
                 spin_count=None):
    """Measures one workload with every framework of ``frameworks`` (already known to be
    installed); returns ``{framework: result dict}``."""
    window = seconds / windows
    setup_timeout = 900
    window_timeout = 20 * window + 300
    results = {f: {"status": "ok"} for f in frameworks}
    workers = {}

    def fail(framework, error):
        results[framework] = {"status": "failed", "reason": str(error)}
        worker = workers.pop(framework, None)
        if worker is not None:
            worker.kill()
            worker.close()

    try:
        progress(f"{name}: starting {', '.join(FRAMEWORKS[f][1] for f in frameworks)}")
        for framework in frameworks:
            workers[framework] = Worker(framework, name, threads, directory, spin_count)
        for framework in list(workers):
            try:
                info = workers[framework].receive(setup_timeout)
            except WorkerError as error:
                fail(framework, error)
                continue
            results[framework].update(version=info["version"], threads=info["threads"],
                                      import_rss_mb=info["import_rss_mb"],
                                      setup_s=info["setup_s"])
        rates = {f: [] for f in workers}
        cores = {f: [] for f in workers}
        latencies = {f: [] for f in workers}

        def each(round_index, action):
            order = list(workers)
            shift = round_index % len(order) if order else 0
            for framework in order[shift:] + order[:shift]:
                if framework in workers:
                    try:
                        action(framework, workers[framework])
                    except WorkerError as error:
                        fail(framework, error)

        progress(f"{name}: warm-up")
        each(0, lambda f, w: w.request(window_timeout, cmd="train", seconds=window))

        def train(framework, worker):
            reply = worker.request(window_timeout, cmd="train", seconds=window)
            rates[framework].append(reply["rate"])
            cores[framework].append(reply["cpu_cores"])

        for r in range(windows):
            progress(f"{name}: training window {r + 1}/{windows}")
            each(r, train)

        def memory(framework, worker):
            reply = worker.request(window_timeout, cmd="memory")
            results[framework].update(peak_rss_mb=reply["peak_rss_mb"],
                                      memory_source=reply["source"])

        each(0, memory)

        def latency(framework, worker):
            reply = worker.request(window_timeout, cmd="latency", seconds=window / 3)
            latencies[framework].append(reply["median_s"])

        each(0, lambda f, w: w.request(window_timeout, cmd="latency", seconds=min(window, 0.2)))
        for r in range(3):
            progress(f"{name}: batch-1 latency {r + 1}/3")
            each(r, latency)
    finally:
        for worker in workers.values():
            worker.close()
    for framework in workers:
        result = results[framework]
        result["samples_per_s"] = _median(rates[framework])
        result["windows"] = rates[framework]
        result["spread"] = _spread(rates[framework])
        result["cpu_cores"] = _median(cores[framework])
        lat = _median(latencies[framework])
        result["latency_ms"] = None if lat is None else lat * 1e3
        peak, imported = result.get("peak_rss_mb"), result.get("import_rss_mb")
        result["train_rss_mb"] = (None if peak is None or imported is None
                                  else peak - imported)
    return results


def run(workloads, frameworks, threads, seconds, windows, progress=None, spin_count=None):
    """Measures ``workloads`` with ``frameworks``.

    Parameters
    ----------
    workloads, frameworks : list of str
        Keys of :data:`WORKLOADS` and :data:`FRAMEWORKS`.
    threads : int
        Threads of every framework.
    seconds : float
        Timed training seconds per framework and workload, split into ``windows`` windows.
    windows : int
    progress : callable, optional
        Called with a line of progress text.
    spin_count : int, optional
        ``GOMP_SPINCOUNT`` of every worker (default: as this process was started with, or
        unset: each OpenMP runtime's default, and fastnet's own setting for fastnet).

    Returns
    -------
    list of dict
        One per workload: ``workload``, ``network``, ``batch``, ``input_shape``, ``optimizer``,
        ``forward_flops_per_sample``, ``train_flops_per_sample`` and ``frameworks``, a dict from
        framework to its result (``status`` ``"ok"``, ``"skipped"`` or ``"failed"``, with a
        ``reason`` unless ok).
    """
    progress = progress or (lambda message: None)
    installed = {f: framework_installed(f) for f in frameworks}
    out = []
    with tempfile.TemporaryDirectory(prefix="fastnet-bench-") as directory:
        for i, name in enumerate(workloads):
            network, batch, shape, _, optimizer = WORKLOADS[name]
            flops = forward_flops(network, shape)
            present = [f for f in frameworks if installed[f]]
            progress(f"[{i + 1}/{len(workloads)}] {name}")
            measured = run_workload(name, present, threads, seconds, windows,
                                    lambda m, i=i: progress(f"[{i + 1}/{len(workloads)}] {m}"),
                                    directory, spin_count)
            results = {}
            for framework in frameworks:
                if not installed[framework]:
                    results[framework] = {"status": "skipped", "reason": "not installed"}
                else:
                    results[framework] = measured[framework]
            ours = results.get("fastnet", {})
            for result in results.values():
                if result["status"] != "ok":
                    continue
                rate = result.get("samples_per_s")
                result["gflops"] = None if rate is None else rate * 3 * flops / 1e9
                result["fastnet_ratio"] = (
                    ours["samples_per_s"] / rate
                    if ours.get("samples_per_s") and rate else None)
                lat = result.get("latency_ms")
                result["latency_fastnet_ratio"] = (
                    lat / ours["latency_ms"] if ours.get("latency_ms") and lat else None)
            out.append({"workload": name, "network": network, "batch": batch,
                        "input_shape": list(shape), "optimizer": optimizer,
                        "forward_flops_per_sample": flops, "train_flops_per_sample": 3 * flops,
                        "frameworks": results})
    return out


# ---------------------------------------------------------------------------- thread scaling


def scaling_report(workloads, frameworks, threads, seconds, windows, progress=None,
                   spin_count=None):
    """How much faster each framework trains each workload on ``threads`` threads than on one:
    two workers per framework and workload, one with 1 thread and one with ``threads``, taking
    turns in ``windows`` timed windows of ``seconds / windows`` each (the first alternating);
    medians.

    Returns
    -------
    dict
        ``threads``, ``seconds``, ``windows``, ``cpu``, ``versions`` and ``rows``: one dict per
        workload and installed framework with ``status`` (``"ok"`` or ``"failed"`` with a
        ``reason``), and when ok ``one_thread`` and ``many_threads`` (samples/s, medians),
        ``windows_one`` and ``windows_many`` (each window's rate) and ``speedup``.
    """
    if threads < 2:
        raise ValueError(f"--scaling compares 1 thread with --threads N, which must be at least "
                         f"2 (got {threads})")
    progress = progress or (lambda message: None)
    present = [f for f in frameworks if framework_installed(f)]
    window = seconds / windows
    timeout = 20 * window + 300
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastnet-bench-") as directory:
        for i, name in enumerate(workloads):
            for framework in present:
                label = f"[{i + 1}/{len(workloads)}] {name}, {FRAMEWORKS[framework][1]}"
                row = {"workload": name, "framework": framework}
                workers = {}
                try:
                    progress(f"{label}: starting 1 and {threads} threads")
                    for t in (1, threads):
                        workers[t] = Worker(framework, name, t, directory, spin_count)
                    for worker in workers.values():
                        worker.receive(900)
                    for worker in workers.values():  # warm-up
                        worker.request(timeout, cmd="train", seconds=window)
                    rates = {t: [] for t in workers}
                    for r in range(windows):
                        progress(f"{label}: window {r + 1}/{windows}")
                        for t in ((1, threads) if r % 2 == 0 else (threads, 1)):
                            reply = workers[t].request(timeout, cmd="train", seconds=window)
                            rates[t].append(reply["rate"])
                    one, many = _median(rates[1]), _median(rates[threads])
                    row.update(status="ok", one_thread=one, many_threads=many,
                               windows_one=rates[1], windows_many=rates[threads],
                               speedup=many / one)
                except WorkerError as error:
                    row.update(status="failed", reason=str(error))
                    for worker in workers.values():
                        worker.kill()
                finally:
                    for worker in workers.values():
                        worker.close()
                rows.append(row)
    return {"threads": threads, "seconds": seconds, "windows": windows, "cpu": _cpu_name(),
            "versions": {f: _framework_version(f) for f in present}, "rows": rows}


def format_scaling_report(report):
    """The thread-scaling report as a text table."""
    threads = report["threads"]
    lines = [f"fastnet bench --scaling: 1 thread against {threads}, {report['seconds']:g} s of "
             f"training per worker in {report['windows']} alternating windows; "
             f"{report['cpu']}",
             f"{'workload':<20} {'framework':<9} {'1 thread':>11} {f'{threads} threads':>11} "
             f"{'speed-up':>9}"]
    for row in report["rows"]:
        name = FRAMEWORKS[row["framework"]][1]
        if row["status"] != "ok":
            lines.append(f"{row['workload']:<20} {name:<9} failed: {row['reason']}")
            continue
        lines.append(f"{row['workload']:<20} {name:<9} {row['one_thread']:>11,.0f} "
                     f"{row['many_threads']:>11,.0f} {row['speedup']:>8.2f}x")
    lines.append("samples/s, medians over the windows; speed-up: the second over the first")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- GEMM report


def _gemm_operands(shape, rng):
    m, n, k = shape["m"], shape["n"], shape["k"]
    a = rng.standard_normal((k, m) if shape["trans_a"] else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if shape["trans_b"] else (k, n)).astype(np.float32)
    return a, b


def _calls_per_second(function, seconds):
    function()
    calls, started = 0, time.perf_counter()
    while True:
        function()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls / elapsed


# The floating-point operations that one timed call of gemm_report computes at least: about
# 20 us of work at this machine's speed, so that the call's Python overhead (under 1 us) is a
# few percent of it before it is subtracted.
_GEMM_CALL_FLOP = 4e6


def gemm_report(workloads, threads, seconds, windows, progress=None):
    """Built-in GEMM against the BLAS table alone (both through ``fastnet._core.gemm``, float32,
    into a preallocated result; the BLAS even where training would take the built-in kernel) at
    1024x1024x1024 and at every GEMM shape of ``workloads``: on 1 thread and on ``threads``,
    except a convolution's GEMMs, which the kernels run on one thread each.

    The implementations alternate in ``windows`` windows of ``seconds / windows`` each. Each call
    from Python computes the product ``repeat`` times in a loop in C, enough for about 20 us of
    work (a product of 0.5 us timed one call at a time was mostly the call's overhead); a
    window's time per product, less the Python overhead of a call (that of a 1x1x1 GEMM,
    measured the same way) shared between its ``repeat`` products, gives the GFLOP/s; medians.

    Returns
    -------
    dict
        ``blas`` (where the table's GEMM comes from), ``overhead_us``, ``threads``, ``rows``:
        one dict per shape of :func:`gemm_shapes` (and 1024^3, workload None) and thread count,
        with ``builtin_gflops``, ``blas_gflops`` and ``ratio`` (built-in / BLAS) added; and
        ``workloads``: per workload, the time its step's GEMMs take with each implementation,
        each shape run as the kernels run it (a convolution's on one thread, the others on
        ``threads``), and ``ratio`` (the BLAS's time / the built-in's).
    """
    import fastnet
    from fastnet import _blas, _core

    progress = progress or (lambda message: None)
    if not _core.blas_installed():
        raise ValueError("no BLAS is installed in fastnet's table (FASTNET_BLAS=builtin, or "
                         "SciPy missing): there is nothing to compare the built-in GEMM with")
    rng = np.random.default_rng(0)
    square = {"workload": None, "m": 1024, "n": 1024, "k": 1024, "trans_a": False,
              "trans_b": False, "calls": None, "share": None, "per_image": False,
              "where": ["1024^3"]}
    shapes = [square] + gemm_shapes(workloads)
    thread_counts = sorted({1, threads})
    one, one_out = np.ones((1, 1), np.float32), np.empty((1, 1), np.float32)
    overhead = statistics.median(
        1.0 / _calls_per_second(
            lambda: _core.gemm(one, one, builtin=True, threads=1, out=one_out), 0.05)
        for _ in range(5))
    window = seconds / windows
    measured = {}  # (m, n, k, trans_a, trans_b, threads) -> (built-in, BLAS) GFLOP/s
    rows = []
    for i, shape in enumerate(shapes):
        key = tuple(shape[x] for x in ("m", "n", "k", "trans_a", "trans_b"))
        a = b = None
        flop = 2.0 * shape["m"] * shape["n"] * shape["k"]
        repeat = max(1, int(_GEMM_CALL_FLOP / flop))
        for t in ([1] if shape["per_image"] else thread_counts):
            if key + (t,) not in measured:
                progress(f"GEMM {i + 1}/{len(shapes)}: {shape['m']}x{shape['n']}x{shape['k']}, "
                         f"{t} thread{'s' if t > 1 else ''}")
                if a is None:
                    a, b = _gemm_operands(shape, rng)
                    out = np.empty((shape["m"], shape["n"]), np.float32)
                times = {True: [], False: []}
                for r in range(windows):
                    for builtin in ((True, False) if r % 2 == 0 else (False, True)):
                        rate = _calls_per_second(
                            lambda: _core.gemm(a, b, shape["trans_a"], shape["trans_b"],
                                               builtin=builtin, blas=not builtin, threads=t,
                                               out=out, repeat=repeat), window)
                        times[builtin].append(max((1.0 / rate - overhead) / repeat, 1e-12))
                measured[key + (t,)] = tuple(flop / statistics.median(times[x]) / 1e9
                                             for x in (True, False))
            built, blas = measured[key + (t,)]
            rows.append({**shape, "threads": t, "builtin_gflops": built, "blas_gflops": blas,
                         "ratio": built / blas})
    summary = {}
    for row in rows:
        if row["workload"] is None or row["threads"] != (1 if row["per_image"] else threads):
            continue
        entry = summary.setdefault(row["workload"], {"builtin_ms": 0.0, "blas_ms": 0.0})
        flop = 2.0 * row["m"] * row["n"] * row["k"] * row["calls"]
        entry["builtin_ms"] += flop / row["builtin_gflops"] / 1e6
        entry["blas_ms"] += flop / row["blas_gflops"] / 1e6
    for entry in summary.values():
        entry["ratio"] = entry["blas_ms"] / entry["builtin_ms"]
    return {"blas": _blas.source, "overhead_us": overhead * 1e6, "threads": threads,
            "rows": rows, "workloads": summary, "fastnet_version": fastnet.__version__,
            "target_ratio": 0.7}


def format_gemm_report(report):
    """The GEMM report as a text table."""
    target = report["target_ratio"]
    lines = [f"fastnet {report['fastnet_version']}: built-in GEMM against the BLAS table "
             f"({report['blas']}), float32, through fastnet._core.gemm; the Python overhead of "
             f"a call ({report['overhead_us']:.1f} us) subtracted",
             f"{'m x n x k':<16} {'op':<3} {'share':>6} {'calls':>5} {'thr':>3} "
             f"{'built-in':>9} {'BLAS':>9} {'ratio':>7}  layers"]
    workload = object()
    for row in report["rows"]:
        if row["workload"] != workload:
            workload = row["workload"]
            if workload is None:
                lines.append("1024^3")
            else:
                w = report["workloads"][workload]
                lines.append(f"{workload}: its step's GEMMs, each on the threads the kernels "
                             f"give it, take {w['builtin_ms']:.2f} ms built-in, "
                             f"{w['blas_ms']:.2f} ms BLAS: built-in at {w['ratio']:.0%}"
                             f"{'' if w['ratio'] >= target else ' (below target)'}")
        op = ("T" if row["trans_a"] else "N") + ("T" if row["trans_b"] else "N")
        flag = "" if row["ratio"] >= target else " <"
        share = "" if row["share"] is None else f"{row['share']:.1%}"
        calls = "" if row["calls"] is None else str(row["calls"])
        dims = f"{row['m']}x{row['n']}x{row['k']}"
        lines.append(f"  {dims:<14} {op:<3} {share:>6} {calls:>5} {row['threads']:>3} "
                     f"{row['builtin_gflops']:>9.1f} {row['blas_gflops']:>9.1f} "
                     f"{row['ratio']:>6.2f}x{flag:<2} {'; '.join(row['where'])}")
    lines += ["",
              "GFLOP/s; share: of the FLOPs of the step's GEMMs; calls: per training step; thr: "
              "threads;",
              f"ratio: built-in / BLAS ('<' marks those below the target of {target:.0%}). "
              "Convolution GEMMs run",
              "per image, one thread each; the others are split between the threads."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- output


def format_table(results, meta, legend=True):
    """The results of :func:`run` as a text table, with what its columns mean unless ``legend``
    is false."""
    lines = [f"fastnet bench: {meta['threads']} thread{'s' if meta['threads'] > 1 else ''}, "
             f"{meta['seconds']:g} s of training per framework and workload in "
             f"{meta['windows']} window{'s' if meta['windows'] > 1 else ''}; {meta['cpu']}"]
    versions = ", ".join(f"{FRAMEWORKS[f][1]} {v or 'not installed'}"
                         for f, v in meta["versions"].items())
    spin = meta.get("gomp_spincount")
    spin_text = ("each runtime's default (fastnet sets its own)" if spin is None
                 else f"{spin} in every worker")
    lines.append(f"{versions}; GOMP_SPINCOUNT {spin_text}")
    header = (f"{'workload':<20} {'framework':<9} {'samples/s':>11} {'spread':>6} "
              f"{'fastnet x':>9} {'GFLOP/s':>8} {'b1 latency':>11} {'fastnet x':>9} "
              f"{'peak RSS':>9} {'train RSS':>9}")
    lines += [header, "-" * len(header)]

    def number(value, spec, suffix=""):
        return "-" if value is None else f"{value:{spec}}{suffix}"

    for workload in results:
        first = True
        for framework, r in workload["frameworks"].items():
            label = workload["workload"] if first else ""
            first = False
            name = FRAMEWORKS[framework][1]
            if r["status"] != "ok":
                reason = r["reason"].strip().splitlines()
                lines.append(f"{label:<20} {name:<9} {r['status']}: "
                             f"{reason[-1] if reason else ''}")
                continue
            latency = r.get("latency_ms")
            latency_text = "-" if latency is None else (
                f"{latency * 1e3:.1f} us" if latency < 1 else f"{latency:.3f} ms")
            lines.append(
                f"{label:<20} {name:<9} {number(r.get('samples_per_s'), ',.0f'):>11} "
                f"{number(r.get('spread'), '.0%'):>6} "
                f"{number(r.get('fastnet_ratio'), '.2f', 'x'):>9} "
                f"{number(r.get('gflops'), '.1f'):>8} {latency_text:>11} "
                f"{number(r.get('latency_fastnet_ratio'), '.2f', 'x'):>9} "
                f"{number(r.get('peak_rss_mb'), '.0f', ' MB'):>9} "
                f"{number(r.get('train_rss_mb'), '.0f', ' MB'):>9}")
    if legend:
        lines += ["", _legend(meta)]
    return "\n".join(lines)


def _legend(meta):
    """What the comparison's columns mean."""
    return "\n".join([
        "samples/s   training samples per second, median over the windows",
        "spread      (fastest window - slowest) / median: how much the machine's speed moved "
        "during the run",
        "fastnet x   fastnet's samples/s / this framework's; for latency this framework's / "
        "fastnet's (above 1: fastnet faster)",
        "GFLOP/s     samples/s x 3 x the forward FLOPs of the linear and convolution layers",
        "b1 latency  median time of one batch-1 inference, eval mode",
        f"peak RSS    {meta['memory_source']} of the worker process, which trains only this "
        "workload",
        "train RSS   peak RSS less the resident size right after importing the framework"])


def summarize_runs(runs):
    """Each framework's figures across repeated runs of :func:`run` (``runs``: a list of their
    results), one row per workload and framework in the order they first appear: ``workload``,
    ``framework``, ``of`` (the runs that include it), ``runs`` (those in which it measured, status
    ok) and, over the latter, ``samples_per_s``, ``fastnet_ratio`` and
    ``latency_fastnet_ratio``: each a dict of ``values`` (one per such run, in order; None where
    the run has none, as a ratio where fastnet failed), and ``median``, ``low`` and ``high`` of
    the values present (None if none is)."""
    rows = []
    order = {}
    for results in runs:
        for workload in results:
            for framework in workload["frameworks"]:
                order.setdefault((workload["workload"], framework), len(order))
    for (name, framework) in sorted(order, key=order.get):
        measured = [w["frameworks"][framework] for results in runs for w in results
                    if w["workload"] == name and framework in w["frameworks"]]
        ok = [r for r in measured if r["status"] == "ok"]

        def spread_of(key):
            values = [r.get(key) for r in ok]
            present = [v for v in values if v is not None]
            return {"values": values, "median": _median(present),
                    "low": min(present) if present else None,
                    "high": max(present) if present else None}

        rows.append({"workload": name, "framework": framework, "runs": len(ok),
                     "of": len(measured),
                     "samples_per_s": spread_of("samples_per_s"),
                     "fastnet_ratio": spread_of("fastnet_ratio"),
                     "latency_fastnet_ratio": spread_of("latency_fastnet_ratio")})
    return rows


def format_summary(rows, repeat):
    """The rows of :func:`summarize_runs` as a text table."""
    def ratio(spread):
        if spread["median"] is None:
            return "-"
        return f"{spread['median']:.2f}x ({spread['low']:.2f}-{spread['high']:.2f})"

    header = (f"{'workload':<20} {'framework':<9} {'runs':>5} {'samples/s':>11} "
              f"{'fastnet x (lowest-highest)':>27} {'b1 latency fastnet x':>27}")
    lines = [f"Over {repeat} runs: medians of the runs' figures, each run's ratio taken within "
             "that run", header, "-" * len(header)]
    previous = None
    for row in rows:
        label = row["workload"] if row["workload"] != previous else ""
        previous = row["workload"]
        rate = row["samples_per_s"]["median"]
        lines.append(
            f"{label:<20} {FRAMEWORKS[row['framework']][1]:<9} "
            f"{row['runs']:>2}/{row['of']:<2} {'-' if rate is None else f'{rate:,.0f}':>11} "
            f"{ratio(row['fastnet_ratio']):>27} {ratio(row['latency_fastnet_ratio']):>27}")
    return "\n".join(lines)


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _framework_version(framework):
    if framework == "fastnet":  # this package: its own version, installed or run from a tree
        from fastnet import __version__

        return __version__
    if not framework_installed(framework):
        return None
    try:
        from importlib import metadata

        return metadata.version({"torch": "torch", "jax": "jax"}[framework])
    except Exception:  # an installed module without distribution metadata
        return "installed"


# ---------------------------------------------------------------------------- options



def _workload_list(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected at least one workload")
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown workload{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; known: {', '.join(WORKLOADS)}")
    return list(dict.fromkeys(names))


def _framework_list(text):
    names = [_ALIASES.get(name.strip().lower(), name.strip().lower())
             for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected at least one framework")
    unknown = [name for name in names if name not in FRAMEWORKS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown framework{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; known: {', '.join(FRAMEWORKS)} (or pytorch)")
    return list(dict.fromkeys(names))


def _number_type(convert, minimum, strict, what):
    """An argparse type converting with ``convert`` and requiring ``> minimum`` (strict) or
    ``>= minimum``, finite. (The command line's own helpers live in fastnet.cli, which this
    module does not import: a PyTorch or JAX worker must not load fastnet.)"""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > minimum if strict else value >= minimum) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


_positive_int = _number_type(int, 0, True, "a positive integer")
_non_negative_int = _number_type(int, 0, False, "a non-negative integer")
_positive_float = _number_type(float, 0, True, "a positive number")


def _default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def add_arguments(parser):
    """Adds the options of ``fastnet bench`` to ``parser``."""
    parser.add_argument("--workloads", type=_workload_list, default=list(WORKLOADS),
                        metavar="A,B", help=f"comma-separated (default: all: "
                                            f"{', '.join(WORKLOADS)})")
    parser.add_argument("--frameworks", type=_framework_list, default=list(FRAMEWORKS),
                        metavar="A,B", help="comma-separated, among fastnet, torch (or pytorch) "
                                            "and jax (default: all; those not installed are "
                                            "reported as skipped)")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="threads of every framework (default: the CPUs this process may "
                             "use)")
    parser.add_argument("--seconds", type=_positive_float, default=None, metavar="S",
                        help="timed training seconds per framework and workload, split into "
                             "the windows (default: 3); with --gemm, seconds per shape, "
                             "thread count and implementation (default: 0.4)")
    parser.add_argument("--windows", type=_positive_int, default=5, metavar="N",
                        help="timed windows per framework and workload (default: 5)")
    parser.add_argument("--repeat", type=_positive_int, default=1, metavar="N",
                        help="run the comparison N times in a row and end with each ratio's "
                             "median and range over the runs (default: 1)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write the results as JSON to PATH, or to stdout instead of the "
                             "table when no PATH is given")
    parser.add_argument("--gemm", action="store_true",
                        help="instead: the built-in GEMM against the BLAS, at 1024^3 and at the "
                             "GEMM shapes of the workloads")
    parser.add_argument("--scaling", action="store_true",
                        help="instead: each framework's training on 1 thread against "
                             "--threads N (at least 2), in alternating windows: the speed-up")
    parser.add_argument("--list", action="store_true",
                        help="instead: print the workloads and their networks, layer by layer")
    parser.add_argument("--spin-count", type=_non_negative_int, default=None, metavar="N",
                        help="GOMP_SPINCOUNT of every framework's worker (default: each "
                             "framework's own OpenMP setting; fastnet sets 20000 for itself, "
                             "libgomp's default is 300000, which on a machine whose cores are "
                             "busy with other processes can slow PyTorch many times)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def handle(args):
    """Runs ``fastnet bench`` with parsed ``args``; returns the exit status."""
    threads = args.threads or _default_threads()
    progress = Progress(enabled=not args.quiet)
    if args.list:
        for name in args.workloads:
            network, batch, shape, classes, optimizer = WORKLOADS[name]
            options = ", ".join(f"{k} {v}" for k, v in OPTIMIZERS[optimizer].items())
            print(f"{name}: batch {batch}, input {tuple(shape)}, {classes} classes, "
                  f"{optimizer.upper()} ({options}), "
                  f"{forward_flops(network, shape) / 1e6:.2f} MFLOP per sample forward")
            print("  " + describe(network).replace("\n", "\n  "))
        return 0
    if args.gemm and args.scaling:
        raise ValueError("--gemm and --scaling are separate reports: give one")
    if args.repeat > 1 and (args.gemm or args.scaling):
        raise ValueError("--repeat repeats the comparison of the frameworks; --gemm and "
                         "--scaling take one run")
    if args.scaling:
        seconds = args.seconds or 3.0
        document = scaling_report(args.workloads, args.frameworks, threads, seconds,
                                  args.windows, progress, args.spin_count)
        progress.done()
        text = format_scaling_report(document)
    elif args.gemm:
        seconds = args.seconds or 0.4
        report = gemm_report(args.workloads, threads, seconds, args.windows, progress)
        progress.done()
        document = report
        text = format_gemm_report(report)
    else:
        seconds = args.seconds or 3.0
        meta = {"threads": threads, "seconds": seconds, "windows": args.windows,
                "cpu": _cpu_name(), "python": platform.python_version(),
                "numpy": np.__version__,
                "versions": {f: _framework_version(f) for f in args.frameworks},
                "memory_source": memory_status()[2],
                "gomp_spincount": (args.spin_count if args.spin_count is not None
                                   else _original_environ_value("GOMP_SPINCOUNT"))}
        runs = []
        for index in range(args.repeat):
            label = f"run {index + 1}/{args.repeat} " if args.repeat > 1 else ""
            runs.append(run(args.workloads, args.frameworks, threads, seconds, args.windows,
                            lambda message, label=label: progress(label + message),
                            args.spin_count))
        progress.done()
        if args.repeat == 1:
            document = {**meta, "results": runs[0]}
            text = format_table(runs[0], meta)
        else:
            summary = summarize_runs(runs)
            document = {**meta, "repeat": args.repeat, "runs": runs, "summary": summary}
            text = "\n\n".join(
                [f"Run {index + 1} of {args.repeat}\n" + format_table(results, meta, legend=False)
                 for index, results in enumerate(runs)]
                + [format_summary(summary, args.repeat), _legend(meta)])
    if args.json == "-":
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(document, f, indent=2)
                f.write("\n")
            print(f"(JSON written to {args.json})", file=sys.stderr)
    return 0


def register(commands):
    """Adds ``bench`` to the ``fastnet`` command's subparsers; returns its handler."""
    parser = commands.add_parser("bench", help=SUMMARY, description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return handle


def main(argv=None):
    """``python -m fastnet.bench [options]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fastnet.bench", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return handle(args)
    except (ValueError, OSError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
