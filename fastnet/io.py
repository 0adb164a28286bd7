"""Model files: safetensors with the weights under PyTorch's names and the model spec in the
metadata. Written atomically by the C core (temp file, fsync, rename); never pickle."""
import os

from fastnet import _core
from fastnet.model import Sequential


def save(model, path):
    """Writes ``model`` to ``path`` (a ``.safetensors`` file), replacing it atomically.

    Examples
    --------
    >>> import os, tempfile, fastnet as fn
    >>> model = fn.Sequential(fn.Linear(4, 2))
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> fn.save(model, path)
    >>> fn.load(path).state_dict()["0.weight"].shape
    (2, 4)
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"save expects a fastnet model, got {type(model).__name__}")
    model._core.save(os.fspath(path))


def load(path):
    """Reads a model written by :func:`save` (or by the C API's ``fn_model_save``)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    return Sequential._from_core(_core.Model.load(path))
