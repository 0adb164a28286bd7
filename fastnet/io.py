"""Model files: safetensors with the weights under PyTorch's names and the model spec in the
metadata. Written atomically by the C core (temp file, fsync, rename); never pickle. The other
files fastnet writes from Python (checkpoints, ensembles, ONNX, search results) go through
:func:`write_atomic`, the same protocol."""
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


def write_atomic(path, chunks):
    """Writes the bytes-like ``chunks``, in order, to ``path`` as one atomic replacement: into
    ``<path>.tmp.<pid>`` in the same directory, flushed, fsynced and renamed over ``path``, then
    the directory fsynced. A crash at any moment leaves the previous file or the new one; a
    failure removes the temporary and raises. Temporaries that killed writers left next to
    ``path`` (their process no longer exists) are removed first.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> write_atomic(path, [b"one ", b"two"])
    >>> open(path, "rb").read()
    b'one two'
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(path)
    temporary = f"{path}.tmp.{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(path):
    """Deletes ``<path>.tmp.<pid>`` files left by writers that were killed (their process no
    longer exists); the temporaries of live processes are left alone."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(path) + ".tmp."
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):]
        if not name.startswith(prefix) or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _process_exists(int(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
