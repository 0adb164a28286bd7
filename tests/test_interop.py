"""Weights that travel between fastnet and PyTorch: a fastnet model file loads into the equivalent
torch.nn model, PyTorch's state dict loads into fastnet, and both compute the same outputs and the
same SGD steps. Skipped without PyTorch."""
import json

import numpy as np
import pytest

import fastnet as fn
from fastnet import zoo

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


# ---------------------------------------------------------------------- reading model files


_SAFETENSORS_DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}


def parse_safetensors(path):
    """(tensors as torch tensors, metadata) of a safetensors file, read with numpy: an 8-byte
    little-endian header length, a JSON header, then the data at the header's offsets."""
    with open(path, "rb") as f:
        data = f.read()
    length = int(np.frombuffer(data[:8], "<u8")[0])
    header = json.loads(data[8:8 + length])
    metadata = header.pop("__metadata__", {})
    start = 8 + length
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        array = np.frombuffer(data[start + begin:start + end], _SAFETENSORS_DTYPES[entry["dtype"]])
        tensors[name] = torch.from_numpy(array.reshape(entry["shape"]).copy())
    return tensors, metadata


def read_tensors(path):
    """The tensors of a model file, as PyTorch users read them: with the safetensors package
    when it is installed, else with the parser above."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        return parse_safetensors(path)[0]
    return load_file(path)


# ---------------------------------------------------------------------- equivalent networks


class Residual(nn.Module):
    """fastnet.Residual in PyTorch: ``main(x) + shortcut(x)`` under the same submodule names, so
    that state-dict keys (``3.main.0.weight``, ``5.shortcut.1.running_mean``) match."""

    def __init__(self, main, shortcut=None):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x):
        return self.main(x) + (x if self.shortcut is None else self.shortcut(x))


def mlp_pair(dtype, dropout=True):
    model = zoo.mlp(64, 10, hidden=(32, 16), dtype=dtype)
    reference = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                              nn.Linear(16, 10))
    return model, reference


def cnn_pair(dtype, dropout=True):
    """zoo.cnn on 1x8x8 images; without dropout (p = 0 in both) for comparing training steps,
    whose random masks the two libraries draw differently."""
    model = zoo.cnn((1, 8, 8), 10, dtype=dtype)
    p1, p2 = (0.25, 0.5) if dropout else (0.0, 0.0)
    if not dropout:
        layers = [dict(c, p=0.0) if c["type"] == "Dropout" else c
                  for c in model.config()["layers"]]
        model = zoo.from_description({"input_shape": [1, 8, 8], "layers": layers}, dtype=dtype)
    reference = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(p1), nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
        nn.Dropout(p2), nn.Linear(128, 10))
    return model, reference


def torch_basic_block(in_channels, out_channels, stride):
    main = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels))
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(out_channels))
    return [Residual(main, shortcut), nn.ReLU()]


def resnet_pair(dtype, dropout=True):
    """zoo.resnet with widths 4, 8, 16 on 3x8x8 images: an identity block and two projection
    blocks (stride 2)."""
    widths = (4, 8, 16)
    model = zoo.resnet((3, 8, 8), 5, widths=widths, dtype=dtype)
    layers = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
              nn.ReLU()]
    previous = widths[0]
    for i, width in enumerate(widths):
        layers += torch_basic_block(previous, width, 1 if i == 0 else 2)
        previous = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, 5)]
    return model, nn.Sequential(*layers)


PAIRS = {"mlp": mlp_pair, "cnn": cnn_pair, "resnet": resnet_pair}
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def make_pair(network, dtype="float32", dropout=True):
    model, reference = PAIRS[network](dtype, dropout)
    return model, reference.to(TORCH_DTYPES[dtype])


def batch(model, n=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *model.input_shape)).astype(model.dtype)
    return x, (np.arange(n) % 5).astype(np.int64)


def train_fastnet(model, steps=3):
    """A few SGD steps, so that weights and batch norm statistics move from their defaults."""
    opt = fn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        model.train_step(*batch(model, 8, seed=10 + step), fn.CrossEntropyLoss(), opt)


def train_torch(reference, model, steps=3):
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    reference.train()
    for step in range(steps):
        x, y = batch(model, 8, seed=20 + step)
        opt.zero_grad()
        F.cross_entropy(reference(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()


def torch_eval(reference, x):
    reference.eval()
    with torch.no_grad():
        return reference(torch.from_numpy(x)).numpy()


def assert_state_equal(model, reference, **tolerance):
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value.detach().numpy(), err_msg=name, **tolerance)


# ---------------------------------------------------------------------- fastnet -> PyTorch


@pytest.mark.parametrize("network", sorted(PAIRS))
def test_fastnet_file_loads_into_pytorch(tmp_path, network):
    model, reference = make_pair(network)
    train_fastnet(model)
    path = tmp_path / "model.safetensors"
    fn.save(model, path)

    reference.load_state_dict(read_tensors(path))  # strict: the same names and shapes
    assert_state_equal(model, reference, rtol=0, atol=0)
    model.eval()
    for n in (1, 5):
        x, _ = batch(model, n, seed=n)
        np.testing.assert_allclose(torch_eval(reference, x), model(x), rtol=1e-4, atol=1e-5)


def test_model_file_is_plain_safetensors(tmp_path):
    model, _ = make_pair("resnet")
    train_fastnet(model)
    path = tmp_path / "model.safetensors"
    fn.save(model, path)
    tensors, metadata = parse_safetensors(path)
    assert json.loads(metadata["fastnet.spec"])["nodes"] == model.compiled().nodes
    state = model.state_dict()
    assert sorted(tensors) == sorted(state)
    for name, value in state.items():
        assert tensors[name].numpy().dtype == value.dtype
        np.testing.assert_array_equal(tensors[name].numpy(), value, err_msg=name)
    assert int(tensors["1.num_batches_tracked"]) == 3


def test_safetensors_package_reads_model_files(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model, _ = make_pair("resnet")
    train_fastnet(model)
    path = tmp_path / "model.safetensors"
    fn.save(model, path)
    tensors, _ = parse_safetensors(path)
    loaded = safetensors_torch.load_file(path)
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in loaded.items():
        assert torch.equal(tensor, tensors[name]), name


# ---------------------------------------------------------------------- PyTorch -> fastnet


@pytest.mark.parametrize("network", sorted(PAIRS))
def test_pytorch_weights_load_into_fastnet(network):
    model, reference = make_pair(network)
    torch.manual_seed(0)
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):  # affine parameters away from 1 and 0
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    train_torch(reference, model)

    model.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    assert_state_equal(model, reference, rtol=0, atol=0)  # incl. num_batches_tracked
    model.eval()
    for n in (1, 5):
        x, _ = batch(model, n, seed=n)
        np.testing.assert_allclose(model(x), torch_eval(reference, x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- training


@pytest.mark.parametrize("network", sorted(PAIRS))
def test_sgd_steps_agree_with_pytorch(network):
    """From the same weights, train-mode SGD steps (momentum, weight decay; batch norm with batch
    statistics) give the same losses, weights and running statistics (float64)."""
    model, reference = make_pair(network, "float64", dropout=False)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    model.train()
    reference.train()
    options = dict(lr=0.1, momentum=0.9, weight_decay=5e-3)
    opt = fn.optim.SGD(model.parameters(), **options)
    reference_opt = torch.optim.SGD(reference.parameters(), **options)
    for step in range(2):  # the second step uses the momentum buffers
        x, y = batch(model, 8, seed=30 + step)
        loss = model.train_step(x, y, fn.CrossEntropyLoss(), opt)
        reference_opt.zero_grad()
        reference_loss = F.cross_entropy(reference(torch.from_numpy(x)), torch.from_numpy(y))
        reference_loss.backward()
        reference_opt.step()
        assert loss == pytest.approx(reference_loss.item(), rel=1e-10, abs=1e-12)
        assert_state_equal(model, reference, rtol=1e-9, atol=1e-12)
    model.eval()
    x, _ = batch(model, 5, seed=99)
    np.testing.assert_allclose(model(x), torch_eval(reference, x), rtol=1e-9, atol=1e-12)
