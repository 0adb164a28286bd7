"""`fastnet distill`: a student trained from a saved teacher's softened outputs on the digits,
the accuracies it reports, the files it writes, and its errors."""
import json
import os

import numpy as np
import pytest

import fastnet as fn
from fastnet import cli, zoo


@pytest.fixture(autouse=True)
def commands(monkeypatch):
    monkeypatch.setattr(cli, "EXTRA_COMMANDS", {**cli.EXTRA_COMMANDS, "tune": "fastnet.tune",
                                                "distill": "fastnet.distill"})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 64-128-128-10 MLP trained for 15 epochs, saved by `fastnet train`."""
    out = tmp_path_factory.mktemp("teacher")
    assert cli.main(["train", "--quiet", "--epochs", "15", "--out", str(out)]) == 0
    return out / "model.safetensors"


def accuracy(model, data):
    return float(np.mean(model.predict(data.x) == data.y))


def test_distill_writes_a_student_that_loads_and_predicts(tmp_path, teacher, capsys):
    out = tmp_path / "student"
    code = cli.main(["distill", "--quiet", "--teacher", str(teacher), "--hidden", "32",
                     "--epochs", "8", "--lr", "3e-3", "--temperature", "3", "--alpha", "0.7",
                     "--compare", "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["teacher", "student", "baseline"]
    report = json.loads((out / "distill.json").read_text())
    assert report["split"] == "test"
    assert (report["temperature"], report["alpha"]) == (3.0, 0.7)

    test = fn.load_digits().test
    student = fn.load(out / "model.safetensors")
    assert [repr(layer) for layer in student.layers] == ["Linear(64, 32)", "ReLU()",
                                                         "Linear(32, 10)"]
    predictions = student.predict(test.x)
    assert predictions.shape == (len(test),)
    assert report["student"]["accuracy"] == pytest.approx(accuracy(student, test))
    assert report["student"]["accuracy"] > 0.8
    assert report["student"]["parameters"] == student.num_parameters() == 64 * 32 + 32 + 330
    assert report["teacher"]["accuracy"] == pytest.approx(accuracy(fn.load(teacher), test))
    assert report["teacher"]["parameters"] == fn.load(teacher).num_parameters()
    baseline = fn.load(out / "baseline" / "model.safetensors")
    assert report["baseline"]["accuracy"] == pytest.approx(accuracy(baseline, test))
    # The student is what `fastnet train --teacher` wrote: its test line agrees.
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["split"] == "test"
    assert last["accuracy"] == pytest.approx(report["student"]["accuracy"])
    # Same architecture and seed: the two differ only by the teacher.
    assert not np.array_equal(student.state_dict()["0.weight"],
                              baseline.state_dict()["0.weight"])
    for line, name in zip(lines, ("teacher", "student", "baseline")):
        assert f"test accuracy {report[name]['accuracy']:.4f}" in line


def test_distill_trains_with_the_teacher_the_same_as_train(tmp_path, teacher, capsys):
    """`fastnet distill` is `fastnet train --teacher` plus the report: the same student."""
    common = ["--quiet", "--teacher", str(teacher), "--hidden", "16", "--epochs", "3",
              "--alpha", "1.0"]
    assert cli.main(["distill", *common, "--out", str(tmp_path / "d")]) == 0
    assert cli.main(["train", *common, "--out", str(tmp_path / "t")]) == 0
    a = fn.load(tmp_path / "d" / "model.safetensors").state_dict()
    b = fn.load(tmp_path / "t" / "model.safetensors").state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    capsys.readouterr()


def test_distill_without_out_writes_nothing(tmp_path, teacher, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["distill", "--quiet", "--teacher", str(teacher), "--hidden", "8",
                     "--epochs", "1"]) == 0
    assert os.listdir(tmp_path) == []
    assert capsys.readouterr().out.startswith("teacher ")


def test_distill_needs_a_teacher(capsys):
    with pytest.raises(SystemExit):
        cli.main(["distill", "--epochs", "1"])
    assert "--teacher" in capsys.readouterr().err


def test_teacher_and_student_must_take_the_same_input(tmp_path, capsys):
    path = tmp_path / "cnn.safetensors"
    fn.save(zoo.cnn((1, 8, 8), 10), path)
    assert cli.main(["distill", "--quiet", "--teacher", str(path), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "takes samples of shape (1, 8, 8) and the student (64,)" in err
    path = tmp_path / "three.safetensors"
    fn.save(zoo.mlp(64, 3, [8]), path)
    assert cli.main(["distill", "--quiet", "--teacher", str(path), "--epochs", "1"]) == 2
    assert "has 3 outputs and the data 10 classes" in capsys.readouterr().err
    assert cli.main(["distill", "--quiet", "--teacher", str(tmp_path / "none.safetensors")]) == 2
    assert "none.safetensors" in capsys.readouterr().err


def test_distill_help_lists_the_workflow_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["distill", "--help"])
    text = capsys.readouterr().out
    for option in ("--teacher", "--temperature", "--alpha", "--compare", "--out", "--hidden",
                   "--epochs", "--model", "--early-stopping"):
        assert option in text
