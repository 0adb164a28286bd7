"""Batch-norm folding: an inference model with each BatchNorm merged into the layer before it.

In eval mode a batch norm is the per-channel affine map ``y = (x - mean) * s + beta`` with
``s = gamma / sqrt(running_var + eps)``. Following a convolution or a linear layer ``x = W a + b``,
the two compose into one layer with ``W' = W * s`` (per output channel) and
``b' = (b - mean) * s + beta``: the same predictions, one pass over the activations fewer.
"""
import numpy as np

from fastnet.layers import BatchNorm1d, BatchNorm2d, Concat, Conv2d, Linear, Residual
from fastnet.model import Sequential

_FOLDABLE = (Conv2d, Linear)
_BATCH_NORMS = (BatchNorm1d, BatchNorm2d)


def _copy_layer(layer, **changes):
    config = layer.config()
    config.pop("type")
    config.update(changes)
    return type(layer)(**config)


def _fold_sequence(layers, sources):
    """Copies of a Sequential's layers with each (Conv2d|Linear, BatchNorm) pair merged."""
    children, i = [], 0
    while i < len(layers):
        child = layers[i]
        following = layers[i + 1] if i + 1 < len(layers) else None
        out_channels = getattr(child, "out_channels", getattr(child, "out_features", None))
        if isinstance(child, _FOLDABLE) and isinstance(following, _BATCH_NORMS) and \
                following.num_features == out_channels:
            folded = _copy_layer(child, bias=True)
            sources[id(folded)] = (child, following)
            children.append(folded)
            i += 2
            continue
        children.append(_fold_tree(child, sources))
        i += 1
    return children


def _fold_tree(layer, sources):
    """A copy of the layer tree with (Conv2d|Linear, BatchNorm) pairs inside each Sequential
    merged. ``sources`` maps id(new layer) -> (old layer, old batch norm or None)."""
    if isinstance(layer, Sequential):
        copy = Sequential(*_fold_sequence(layer.layers, sources))
        sources[id(copy)] = (layer, None)
        return copy
    if isinstance(layer, Residual):
        copy = Residual(_fold_tree(layer.main, sources),
                        None if layer.shortcut is None else _fold_tree(layer.shortcut, sources))
    elif isinstance(layer, Concat):
        copy = Concat(*[_fold_tree(branch, sources) for branch in layer.branches])
    else:
        copy = _copy_layer(layer)
    sources[id(copy)] = (layer, None)
    return copy


def fold_batchnorm(model):
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a Conv2d or a
    Linear (in the same Sequential) folded into it.

    The result predicts what ``model.eval()`` predicts (up to rounding) with fewer passes; it is
    meant for inference (its batch statistics are gone, so train it no further).

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> model = fn.Sequential(fn.Conv2d(1, 4, 3), fn.BatchNorm2d(4), fn.ReLU(), fn.Flatten(),
    ...                       fn.Linear(4 * 6 * 6, 10), input_shape=(1, 8, 8))
    >>> folded = fn.fold_batchnorm(model)
    >>> [type(layer).__name__ for layer in folded.layers]
    ['Conv2d', 'ReLU', 'Flatten', 'Linear']
    >>> x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    >>> bool(np.allclose(folded(x), model.eval()(x), atol=1e-5))
    True
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"fold_batchnorm expects a fastnet model, got {type(model).__name__}")
    sources = {}
    folded = Sequential(*_fold_sequence(model.layers, sources), dtype=model.dtype.name,
                        seed=model.seed, input_shape=model.input_shape)
    old_names = model.compiled().names
    new_graph = folded.compiled()
    old_state = model.state_dict()
    new_state = {}
    for new_id, new_name in new_graph.names.items():
        if new_id not in sources:
            continue
        old, batch_norm = sources[new_id]
        old_name = old_names[id(old)]
        prefix_new = f"{new_name}." if new_name else ""
        prefix_old = f"{old_name}." if old_name else ""
        if batch_norm is None:
            if not old.children():  # a leaf: its tensors keep their values
                for key, value in old_state.items():
                    if key.startswith(prefix_old) and "." not in key[len(prefix_old):]:
                        new_state[prefix_new + key[len(prefix_old):]] = value
            continue
        bn = old_names[id(batch_norm)]
        weight = old_state[f"{prefix_old}weight"].astype(np.float64)
        bias = old_state.get(f"{prefix_old}bias")
        bias = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
        mean = old_state[f"{bn}.running_mean"].astype(np.float64)
        var = old_state[f"{bn}.running_var"].astype(np.float64)
        gamma = old_state.get(f"{bn}.weight", np.ones_like(mean)).astype(np.float64)
        beta = old_state.get(f"{bn}.bias", np.zeros_like(mean)).astype(np.float64)
        scale = gamma / np.sqrt(var + batch_norm.eps)
        new_state[f"{prefix_new}weight"] = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        new_state[f"{prefix_new}bias"] = (bias - mean) * scale + beta
    folded.load_state_dict(new_state)
    return folded.eval()
