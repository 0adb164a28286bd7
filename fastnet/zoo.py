"""Ready-made networks: the command line's ``--model`` choices, the benchmark workloads, and
model description files (JSON or TOML).

A description file holds the per-sample ``input_shape`` and the ``layers``, each a table with its
``type`` (a layer class name) and its constructor arguments; containers nest
(``Sequential`` has ``layers``, ``Residual`` has ``main`` and optionally ``shortcut``,
``Concat`` has ``branches``)::

    input_shape = [1, 8, 8]

    [[layers]]
    type = "Conv2d"
    in_channels = 1
    out_channels = 16
    kernel_size = 3
    padding = 1

    [[layers]]
    type = "ReLU"

    [[layers]]
    type = "Flatten"

    [[layers]]
    type = "Linear"
    in_features = 1024
    out_features = 10
"""
import json
import os

import fastnet.layers as L
from fastnet.model import Sequential


def mlp(num_features, num_classes, hidden=(128, 128), **options):
    """ReLU multilayer perceptron: ``num_features - hidden... - num_classes``."""
    sizes = [num_features, *hidden, num_classes]
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(L.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(L.ReLU())
    return Sequential(*layers, input_shape=(num_features,), **options)


def cnn(input_shape, num_classes, **options):
    """A small CNN: two 3x3 convolutions (32, 64 channels, padded), 2x2 max pooling, dropout,
    and two fully connected layers."""
    channels, height, width = input_shape
    return Sequential(
        L.Conv2d(channels, 32, 3, padding=1), L.ReLU(),
        L.Conv2d(32, 64, 3, padding=1), L.ReLU(),
        L.MaxPool2d(2), L.Dropout(0.25), L.Flatten(),
        L.Linear(64 * (height // 2) * (width // 2), 128), L.ReLU(), L.Dropout(0.5),
        L.Linear(128, num_classes),
        input_shape=input_shape, **options)


def basic_block(in_channels, out_channels, stride=1):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity, or conv1x1 + BN when the shape
    changes), then ReLU: the residual block of ResNet-8/20."""
    main = Sequential(
        L.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        L.BatchNorm2d(out_channels), L.ReLU(),
        L.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        L.BatchNorm2d(out_channels))
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = Sequential(L.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                              L.BatchNorm2d(out_channels))
    return [L.Residual(main, shortcut), L.ReLU()]


def resnet(input_shape, num_classes, widths=(16, 32, 64), **options):
    """A small residual network with batch norm: a 3x3 stem, one basic block per width (the first
    at stride 1, the others at stride 2), global average pooling and a linear classifier. With
    the default widths on (3, 32, 32) inputs this is the ResNet-8 of the benchmarks."""
    channels = input_shape[0]
    layers = [L.Conv2d(channels, widths[0], 3, padding=1, bias=False),
              L.BatchNorm2d(widths[0]), L.ReLU()]
    previous = widths[0]
    for i, width in enumerate(widths):
        layers += basic_block(previous, width, stride=1 if i == 0 else 2)
        previous = width
    layers += [L.AdaptiveAvgPool2d(1), L.Flatten(), L.Linear(previous, num_classes)]
    return Sequential(*layers, input_shape=input_shape, **options)


def read_description(path):
    """The dict in a model description file (``.json`` or ``.toml``)."""
    extension = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model description: {path}")
    if extension == ".toml":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            raise ValueError("reading TOML needs Python 3.11 or newer; use JSON") from None
        with open(path, "rb") as f:
            try:
                return tomllib.load(f)
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"{path}: {error}") from None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON: {error}") from None


def from_description(description, input_shape=None, **options):
    """A model from a description dict (see the module docstring)."""
    if not isinstance(description, dict) or not isinstance(description.get("layers"), list):
        raise ValueError("a model description needs a list of 'layers'")
    layers = [L.layer_from_config(c) for c in description["layers"]]
    shape = description.get("input_shape", input_shape)
    return Sequential(*layers, input_shape=shape, **options)


#: The command line's built-in architectures: name -> (builder, needs image input).
ARCHITECTURES = {"mlp": (mlp, False), "cnn": (cnn, True), "resnet": (resnet, True)}
