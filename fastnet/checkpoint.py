"""Training checkpoints: everything a run needs to continue bit for bit, in one safetensors file.

A checkpoint holds the model's parameters and buffers under their PyTorch names (so any
safetensors reader sees the weights), the optimizer's state slots, the averaged weights and the
best weights when the run keeps them, and in ``__metadata__`` (JSON strings) the model spec and
the trainer's state: epoch and batch reached, step counts, the schedule, the dropout counter,
early-stopping bookkeeping, the history so far and a fingerprint of the training data.

The file is written to ``<path>.tmp.<pid>``, flushed, fsynced and renamed over ``path`` (then the
directory is fsynced), so a crash at any moment leaves either the previous checkpoint or the new
one, never a mix. Reading checks the header and every tensor's extent against the file before
building any array; it never executes anything from the file.
"""
import json
import os
import struct
import zlib

import numpy as np

from fastnet.io import write_atomic

FORMAT = "fastnet-checkpoint"
FORMAT_VERSION = 1

# safetensors dtype names <-> numpy
_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "U8": np.uint8}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}

# A header larger than this is refused before it is read (a checkpoint's header lists a few
# hundred tensors and the metadata: kilobytes to a few megabytes).
MAX_HEADER_BYTES = 64 << 20


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or does not fit the run resuming from it."""


def write(path, tensors, metadata):
    """Writes ``tensors`` (name -> array) and ``metadata`` (name -> JSON-able) to ``path``
    atomically (temp file, fsync, rename).

    Parameters
    ----------
    path : str
    tensors : dict of str to numpy.ndarray
        float32, float64, int64, int32 or uint8 arrays.
    metadata : dict of str to object
        Each value is stored as its JSON text.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "c.safetensors")
    >>> write(path, {"w": np.arange(3, dtype=np.float32)}, {"step": 7})
    >>> tensors, meta = read(path)
    >>> tensors["w"].tolist(), meta["step"]
    ([0.0, 1.0, 2.0], 7)
    """
    path = os.fspath(path)
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        array = np.asarray(array)
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
            array = array.copy(order="C")
        if array.dtype not in _NAMES:
            raise TypeError(f"checkpoint tensor {name!r}: unsupported dtype {array.dtype}")
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        blobs.append(array)
        offset += array.nbytes
    header["__metadata__"] = {key: json.dumps(value) for key, value in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # keeps the data 8-byte aligned
    write_atomic(path, [struct.pack("<Q", len(text)), text] +
                 [array.tobytes() if array.ndim == 0 else memoryview(array).cast("B")
                  for array in blobs])


def read(path):
    """Reads a file written by :func:`write`: ``(tensors, metadata)``.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    CheckpointError
        If the file is truncated, its header is not valid JSON of the safetensors layout, or a
        tensor's dtype, shape or offsets disagree with the file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise CheckpointError(f"{path}: {len(data)} bytes is too short for a safetensors file")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise CheckpointError(f"{path}: the header claims {header_size} bytes; the file has "
                              f"{len(data) - 8} after the size field (truncated or not a "
                              f"safetensors file)")
    try:
        header = json.loads(data[8:8 + header_size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path}: the header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the header is not a JSON object")
    raw_meta = header.pop("__metadata__", {})
    if not isinstance(raw_meta, dict) or not all(isinstance(v, str) for v in raw_meta.values()):
        raise CheckpointError(f"{path}: __metadata__ must map names to strings")
    try:
        metadata = {key: json.loads(value) for key, value in raw_meta.items()}
    except ValueError as error:
        raise CheckpointError(f"{path}: a metadata entry is not valid JSON ({error})") from None
    body = memoryview(data)[8 + header_size:]
    tensors, extents = {}, []
    for name, entry in header.items():
        tensors[name] = _tensor(path, name, entry, body)
        extents.append((entry["data_offsets"][0], entry["data_offsets"][1], name))
    extents.sort()
    for (_, end, first), (begin, _, second) in zip(extents, extents[1:]):
        if begin < end:
            raise CheckpointError(f"{path}: tensors {first!r} and {second!r} overlap")
    return tensors, metadata


def _tensor(path, name, entry, body):
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"{where}: expected dtype, shape and data_offsets")
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None:
        raise CheckpointError(f"{where}: unsupported dtype {entry['dtype']!r}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
        raise CheckpointError(f"{where}: the shape must be a list of sizes, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where}: bad data_offsets {offsets!r}")
    begin, end = offsets
    if end > len(body):
        raise CheckpointError(f"{where}: its data ends at byte {end} of a {len(body)}-byte "
                              f"data section (truncated file?)")
    count = 1
    for size in shape:
        count *= size
    if count * np.dtype(dtype).itemsize != end - begin:
        raise CheckpointError(f"{where}: shape {shape} of {entry['dtype']} needs "
                              f"{count * np.dtype(dtype).itemsize} bytes, the offsets give "
                              f"{end - begin}")
    return np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).copy()


def fingerprint(x, y):
    """A cheap identity of a training set (its size, sample shape and a CRC of the labels and
    of a strided sample of the inputs), so that a run does not resume on other data."""
    x = np.ascontiguousarray(x)
    step = max(1, x.shape[0] // 64)
    crc = zlib.crc32(np.ascontiguousarray(y).tobytes())
    crc = zlib.crc32(np.ascontiguousarray(x[::step]).tobytes(), crc)
    return {"samples": int(x.shape[0]), "shape": list(x.shape[1:]), "crc32": crc}
