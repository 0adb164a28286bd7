"""fastnet: fast neural-network training on CPUs.

The hot path (kernels, the fused training step, optimizer updates) runs in C with OpenMP; this
package describes models, feeds data and runs the training loop.
"""
import os as _os

# OpenMP threads that finish a parallel region spin before they sleep; libgomp's default spin is
# long (300,000 iterations), and on a machine whose cores are shared with other processes the
# spinning thread takes the core from the one it waits for. Measured on 2 cores with both kept
# busy by two other processes, `fastnet train --model cnn --epochs 5` took 6.4 s with the default
# and 2.9 s with this; on the idle machine 0.94 s and 0.92 s. libgomp reads this once, when it is
# loaded with the C core just below; a value the user set wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from fastnet import _blas, _core  # noqa: E402
from fastnet import augment, checks, data, ensemble, init, optim, schedules, tune  # noqa: E402
from fastnet.data import Dataset, Splits, load_data, load_digits
from fastnet.ensemble import Ensemble
from fastnet.fold import fold_batchnorm
from fastnet.io import load, save
from fastnet.layers import (ELU, GELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d,
                            Concat, Conv2d, Dropout, Flatten, LeakyReLU, Linear,
                            LocalResponseNorm, LogSoftmax, Maxout, MaxPool2d, PReLU, ReLU,
                            Residual, Sigmoid, SiLU, Softmax, Softplus, Tanh)
from fastnet.losses import (BCEWithLogitsLoss, CrossEntropyLoss, DistillationLoss, HuberLoss,
                            L1Loss, Loss, MSELoss)
from fastnet.model import Parameter, Sequential
from fastnet.onnx import export_onnx
from fastnet.train import EarlyStopping, History, NonFiniteError, Trainer, WeightAveraging

__version__ = _core.version()


def set_num_threads(n):
    """Sets the number of threads every kernel uses (OpenMP). ``n < 1`` means all CPUs this
    process may run on."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads expects an int, got {n!r}")
    _core.set_num_threads(n if n >= 1 else _available_cpus())


def get_num_threads():
    """The number of threads kernels use."""
    return _core.get_num_threads()


def set_deterministic(on):
    """Deterministic mode (off by default, process-wide): every reduction is split into parts
    fixed by the problem size alone and summed in a fixed order, so that training gives the same
    weights, bit for bit, with any number of threads (reductions then use at most 8 threads).
    Off, the same thread count gives the same weights; another count may round differently."""
    if not isinstance(on, (bool, int)):
        raise TypeError(f"set_deterministic expects a bool, got {on!r}")
    _core.set_deterministic(bool(on))


def get_deterministic():
    """Whether deterministic mode is on (see :func:`set_deterministic`)."""
    return _core.get_deterministic()


def _available_cpus():
    try:
        return len(_os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return _os.cpu_count() or 1


_core.set_num_threads(_available_cpus())
_blas.install()

__all__ = [
    "Sequential", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Conv2d", "MaxPool2d",
    "AvgPool2d", "AdaptiveAvgPool2d", "Flatten", "BatchNorm1d", "BatchNorm2d", "Dropout",
    "LocalResponseNorm", "Residual", "Concat", "fold_batchnorm", "CrossEntropyLoss",
    "PReLU", "ELU", "GELU", "SiLU", "Softplus", "Maxout", "Softmax", "LogSoftmax", "init",
    "DistillationLoss", "MSELoss", "L1Loss", "HuberLoss", "BCEWithLogitsLoss", "Loss",
    "Parameter", "optim", "Trainer", "History", "EarlyStopping", "WeightAveraging",
    "NonFiniteError", "Ensemble", "ensemble", "tune", "checks", "Dataset", "Splits", "load_digits", "load_data",
    "save", "load", "set_num_threads", "get_num_threads", "set_deterministic",
    "get_deterministic",
]
