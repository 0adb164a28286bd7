"""The fastnet command line, run in-process and (for the entry points) as a subprocess."""
import json
import subprocess
import sys

import numpy as np
import pytest

import fastnet as fn
from fastnet.cli import main


def test_train_defaults_reach_95_percent_and_write_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--quiet", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines[:-1]] == list(range(1, len(lines)))
    assert lines[-1]["split"] == "test"
    assert lines[-1]["accuracy"] >= 0.95
    assert "test accuracy" in capsys.readouterr().out
    model = fn.load(out / "model.safetensors")
    test = fn.load_digits().test
    accuracy = float(np.mean(model.predict(test.x) == test.y))
    assert accuracy == pytest.approx(lines[-1]["accuracy"])


def test_train_options(tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--quiet", "--optimizer", "sgd", "--lr", "0.05", "--epochs", "3",
                 "--batch-size", "32", "--hidden", "32", "--seed", "1", "--threads", "1",
                 "--dtype", "float64", "--out", str(out)])
    assert code == 0
    model = fn.load(out / "model.safetensors")
    assert model.dtype == np.float64
    assert [repr(layer) for layer in model.layers] == ["Linear(64, 32)", "ReLU()",
                                                       "Linear(32, 10)"]


def test_train_on_user_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((300, 5), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    out = tmp_path / "run"
    assert main(["train", "--quiet", "--data", str(path), "--epochs", "30", "--out", str(out)]) == 0
    result = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["accuracy"] > 0.85


def test_bad_data_path_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--quiet", "--data", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err


def test_bad_option_values_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_help_explains_every_command(tmp_path):
    # From another directory, so that the installed package runs, not the source tree.
    result = subprocess.run([sys.executable, "-m", "fastnet", "--help"], capture_output=True,
                            text=True, check=True, cwd=tmp_path)
    for command in ("train", "info"):
        assert command in result.stdout
    result = subprocess.run([sys.executable, "-m", "fastnet", "train", "--help"],
                            capture_output=True, text=True, check=True, cwd=tmp_path)
    for option in ("--data", "--model", "--epochs", "--batch-size", "--lr", "--optimizer",
                   "--seed", "--threads", "--quiet", "--out"):
        assert option in result.stdout


def test_info(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "threads" in text and "BLAS" in text
