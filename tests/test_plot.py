"""Plots of a run's metrics.jsonl (fastnet.plot, `fastnet plot DIR`)."""
import json
import sys

import pytest

from fastnet import cli, plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def epoch_record(epoch, layers=("0", "2", "4")):
    return {
        "epoch": epoch, "train_loss": 2.0 / epoch, "train_accuracy": 1 - 0.5 / epoch,
        "val_loss": 2.2 / epoch, "val_accuracy": 1 - 0.6 / epoch, "lr": 1e-3 * 0.9 ** epoch,
        "grad_norm": 1.0 / epoch, "seconds": 0.1,
        "update_ratio": {layer: 1e-2 / epoch for layer in layers},
        "dead_fraction": {"1": 0.05, "3": 0.1 + 0.01 * epoch},
        "saturated_fraction": {"5": 0.2},
        "activation_mean": {layer: 0.1 for layer in layers},
        "activation_std": {layer: 0.5 + 0.1 * epoch for layer in layers},
    }


def write_run(directory, records, final=True):
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    if final:
        lines.append(json.dumps({"split": "test", "loss": 0.1, "accuracy": 0.97}))
    (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100
    assert data.rstrip(b"\0").endswith(b"IEND\xaeB`\x82")


@pytest.fixture
def matplotlib_present():
    pytest.importorskip("matplotlib")


def test_every_plot_of_a_full_run_is_a_valid_png(tmp_path, matplotlib_present):
    run = write_run(tmp_path / "run", [epoch_record(e) for e in range(1, 9)])
    written = plot.plot_run(run)
    names = ["loss.png", "accuracy.png", "update_ratio.png", "activations.png", "lr.png"]
    assert [p.rsplit("/", 1)[-1] for p in written] == names
    for name in names:
        assert_png(run / name)
    import matplotlib.image

    image = matplotlib.image.imread(run / "update_ratio.png")
    assert image.ndim == 3 and image.shape[0] > 100
    assert image.std() > 0  # not a blank canvas


def test_older_files_get_the_plots_they_have_data_for(tmp_path, matplotlib_present):
    records = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": None, "lr": 0.01,
                "seconds": 0.2} for e in range(1, 5)]
    run = write_run(tmp_path / "old", records, final=False)
    written = plot.plot_run(run, out=tmp_path / "plots")
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == ["loss.png", "lr.png"]
    assert not (tmp_path / "plots" / "accuracy.png").exists()
    assert_png(tmp_path / "plots" / "loss.png")


def test_update_ratios_with_zeros_and_missing_layers_still_plot(tmp_path, matplotlib_present):
    records = [epoch_record(1, layers=("0",)), epoch_record(2, layers=("0", "2"))]
    records[0]["update_ratio"]["0"] = 0.0
    records[1]["update_ratio"]["2"] = None
    run = write_run(tmp_path / "run", records)
    assert any(p.endswith("update_ratio.png") for p in plot.plot_run(run))


def test_read_metrics_skips_non_epoch_lines_and_an_unfinished_last_line(tmp_path):
    run = write_run(tmp_path / "run", [epoch_record(1), epoch_record(2)])
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps(epoch_record(1) | {"train_loss": 9.0}) + "\n")  # a resumed epoch 1
        f.write('{"epoch": 3, "train_lo')  # being written
    records = plot.read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0]["train_loss"] == 9.0


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        plot.read_metrics(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl in .*fastnet train --out"):
        plot.read_metrics(tmp_path / "empty")


def test_bad_metrics_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        plot.read_metrics(bad)
    (bad / "metrics.jsonl").write_text('{"split": "test", "accuracy": 0.9}\n')
    with pytest.raises(ValueError, match="no epoch records"):
        plot.read_metrics(bad)


def hide_matplotlib(monkeypatch):
    """Makes every import of matplotlib fail, as when it is not installed."""
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends",
                 "matplotlib.backends.backend_agg", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, name, None)


def test_without_matplotlib_the_error_says_what_to_install(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", [epoch_record(1)])
    hide_matplotlib(monkeypatch)
    with pytest.raises(ImportError, match=r"pip install 'fastnet\[plot\]'"):
        plot.plot_run(run)
    assert not list(run.glob("*.png"))


# ------------------------------------------------------------------------------ the command


@pytest.fixture
def plot_command(monkeypatch):
    monkeypatch.setattr(cli, "EXTRA_COMMANDS", {"plot": "fastnet.plot"})
    return cli.main


def test_fastnet_plot_writes_and_lists_the_files(plot_command, tmp_path, capsys,
                                                 matplotlib_present):
    run = write_run(tmp_path / "run", [epoch_record(e) for e in range(1, 4)])
    assert plot_command(["plot", str(run)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run / n) for n in ("loss.png", "accuracy.png", "update_ratio.png",
                                              "activations.png", "lr.png")]
    for path in printed:
        assert_png(type(run)(path))


def test_fastnet_plot_without_matplotlib_exits_2(plot_command, tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "run", [epoch_record(1)])
    hide_matplotlib(monkeypatch)
    assert plot_command(["plot", str(run)]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install 'fastnet[plot]'" in err


def test_fastnet_plot_of_a_missing_directory_exits_2(plot_command, tmp_path, capsys,
                                                     matplotlib_present):
    assert plot_command(["plot", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_fastnet_plot_of_a_real_training_run(tmp_path, monkeypatch, capsys, matplotlib_present):
    monkeypatch.setattr(cli, "EXTRA_COMMANDS", {"plot": "fastnet.plot"})
    run = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--epochs", "3", "--hidden", "16", "--out",
                     str(run)]) == 0
    assert cli.main(["plot", str(run)]) == 0
    for name in ("loss.png", "accuracy.png"):
        assert_png(run / name)
