"""The C examples (csrc/examples/) against the Python package: a model saved by ``fn.save`` gives
the same predictions, bit for bit, through the C API; a model trained by the C example reaches the
expected accuracy and loads in Python; the installed library links through pkg-config.

The examples are built with make into a temporary directory (the library's default build: the
built-in GEMM), so the Python side computes its reference with the built-in GEMM too: with the same
kernel, the same model and the same input, the outputs must be identical.
"""
import contextlib
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

import fastnet as fn
from fastnet import _blas, _core
from fastnet.data import read_idx

ROOT = pathlib.Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
DATA = CSRC / "examples" / "data"
C_API_DOC = ROOT / "docs" / "c-api.md"


def c_compiler():
    """The C compiler make would use, or None."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"].split()[0]) and os.environ["CC"]
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    return None


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Builds the examples (and the library they link) into a fresh directory; its path."""
    if not (CSRC / "Makefile").is_file():
        pytest.skip("csrc/ is not beside the tests (not a source checkout)")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    compiler = c_compiler()
    if compiler is None:
        pytest.skip("no C compiler (cc, gcc or clang) is installed")
    directory = tmp_path_factory.mktemp("c-build") / "build"
    command = ["make", "-C", str(CSRC), f"-j{os.cpu_count() or 1}", f"BUILD={directory}",
               f"CC={compiler}", "examples"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return directory


@contextlib.contextmanager
def builtin_gemm():
    """Runs the block with fastnet's built-in GEMM, as the C examples do, then puts back the BLAS
    that was installed."""
    previous = _blas.source
    _core.uninstall_blas()
    try:
        yield
    finally:
        if previous != "builtin":
            _blas.install()


def run(args, **kwargs):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600,
                            **kwargs)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def parse_predictions(text, dtype):
    """(classes, outputs) from predict's lines: the class, then every output value."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    classes = np.array([int(row[0]) for row in rows])
    outputs = np.array([[dtype(value) for value in row[1:]] for row in rows], dtype=dtype)
    return classes, outputs


def trained_model(dtype):
    """A small model with every mode-dependent layer, trained a few steps so that its weights and
    running statistics are not their initial values."""
    model = fn.Sequential(fn.Linear(64, 48), fn.BatchNorm1d(48), fn.ReLU(), fn.Dropout(0.3),
                          fn.Linear(48, 10), dtype=dtype, seed=5)
    opt = fn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 64)).astype(dtype)
    y = rng.integers(0, 10, 64)
    for _ in range(5):
        model.train_step(x, y, fn.CrossEntropyLoss(), opt)
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_predict_equals_python_exactly(build, tmp_path, dtype):
    model = trained_model(dtype)
    model_path = tmp_path / "model.safetensors"
    fn.save(model, model_path)
    x = np.random.default_rng(2).standard_normal((37, 64)).astype(np.float32)
    input_path = tmp_path / "input.f32"
    x.tofile(input_path)

    classes, outputs = parse_predictions(run([build / "examples" / "predict", model_path,
                                              input_path]), dtype)
    with builtin_gemm():
        expected_classes = model.predict(x)  # eval mode, as fn_model_predict
        with model.mode(training=False):
            expected = model(x.astype(dtype))
    assert model.training  # predict and mode() restored train mode
    np.testing.assert_array_equal(classes, expected_classes)
    assert outputs.shape == expected.shape
    # Bit for bit: the printed digits round-trip, so equal bits mean equal values.
    assert outputs.tobytes() == expected.tobytes(), np.abs(outputs - expected).max()


def test_predict_reports_a_bad_input_file(build, tmp_path):
    model_path = tmp_path / "model.safetensors"
    fn.save(trained_model(np.float32), model_path)
    (tmp_path / "short.f32").write_bytes(b"\0" * 100)  # not a whole sample of 64 floats
    result = subprocess.run([str(build / "examples" / "predict"), str(model_path),
                             str(tmp_path / "short.f32")], capture_output=True, text=True)
    assert result.returncode != 0
    assert "not a whole number of samples" in result.stderr
    result = subprocess.run([str(build / "examples" / "predict"), str(tmp_path / "missing"),
                             str(tmp_path / "short.f32")], capture_output=True, text=True)
    assert result.returncode != 0 and "missing" in result.stderr


def test_train_digits_reaches_its_accuracy_and_loads_in_python(build, tmp_path):
    model_path = tmp_path / "digits.safetensors"
    output = run([build / "examples" / "train_digits", DATA, model_path])
    match = re.search(r"^test accuracy: ([0-9.]+) \((\d+) samples\)$", output, re.MULTILINE)
    assert match, output
    accuracy = float(match.group(1))
    assert accuracy >= 0.9, output
    assert int(match.group(2)) == 269

    # The model the C program saved, in Python: the same accuracy on the same IDX test files.
    model = fn.load(model_path)
    images = read_idx(DATA / "digits-test-images-idx3-ubyte").reshape(-1, 64)
    labels = read_idx(DATA / "digits-test-labels-idx1-ubyte")
    with builtin_gemm():
        predicted = model.predict(images.astype(np.float32) / 16)
    assert round(float(np.mean(predicted == labels)), 4) == accuracy


def test_idx_files_match_the_bundled_digits():
    """The committed IDX files are tools/export_digits_idx.py's output for the bundled data."""
    digits = fn.load_digits()
    test_images = read_idx(DATA / "digits-test-images-idx3-ubyte")
    assert test_images.shape == (269, 8, 8) and test_images.max() == 16
    np.testing.assert_array_equal(test_images.reshape(-1, 64) / 16, digits.test.x)
    np.testing.assert_array_equal(read_idx(DATA / "digits-test-labels-idx1-ubyte"), digits.test.y)
    train_labels = read_idx(DATA / "digits-train-labels-idx1-ubyte")
    assert len(train_labels) == len(digits.train) + len(digits.val)


def test_installed_library_links_with_pkg_config(build, tmp_path):
    if shutil.which("pkg-config") is None:
        pytest.skip("pkg-config is not installed")
    prefix = tmp_path / "prefix"
    run(["make", "-C", CSRC, f"BUILD={build}", f"CC={c_compiler()}", f"PREFIX={prefix}",
         "install"])
    assert (prefix / "include" / "fastnet.h").is_file()
    assert (prefix / "lib" / "libfastnet.a").is_file()
    environment = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib" / "pkgconfig"))
    flags = run(["pkg-config", "--cflags", "--libs", "fastnet"], env=environment).split()
    assert f"-I{prefix}/include" in flags and "-lfastnet" in flags and "-lm" in flags
    program = tmp_path / "predict_shared"
    run([c_compiler(), CSRC / "examples" / "predict.c", *flags, "-o", program])

    # The program linked against the installed shared library prints what the example does.
    model_path = tmp_path / "model.safetensors"
    fn.save(trained_model(np.float32), model_path)
    np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32).tofile(tmp_path / "x.f32")
    shared = run([program, model_path, tmp_path / "x.f32"],
                 env=dict(os.environ, LD_LIBRARY_PATH=str(prefix / "lib")))
    static = run([build / "examples" / "predict", model_path, tmp_path / "x.f32"])
    assert shared == static


def test_the_documented_program_compiles_and_runs(build, tmp_path):
    """docs/c-api.md's complete program, as printed there, against the library built above."""
    if not C_API_DOC.is_file():
        pytest.skip("docs/ is not beside the tests")
    match = re.search(r"```c\n(#include <fastnet.h>.*?)```", C_API_DOC.read_text(), re.DOTALL)
    assert match, "docs/c-api.md has no complete program"
    source = tmp_path / "xor.c"
    source.write_text(match.group(1))
    program = tmp_path / "xor"
    run([c_compiler(), "-std=c11", "-Wall", "-Werror", "-I", CSRC / "include", source,
         build / "libfastnet.a", "-lm", "-fopenmp", "-o", program])
    output = run([program], cwd=tmp_path)
    match = re.fullmatch(r"loss ([0-9.]+), accuracy ([0-9.]+)\n", output)
    assert match and float(match.group(2)) >= 0.95, output
    model = fn.load(tmp_path / "xor.safetensors")  # the file it saved, in Python
    assert model.predict(np.array([[0.5, -0.5], [0.5, 0.5]], np.float32)).tolist() == [1, 0]
