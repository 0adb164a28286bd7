"""``fastnet bench``: the runner end to end on tiny time budgets (fastnet only), its options and
errors, its command-line registration, and the network definitions every framework builds.

No timings are asserted: the figures only have to be present and positive.
"""
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

import fastnet as fn
from fastnet import bench, cli

FAST = ["--seconds", "0.1", "--windows", "2", "--quiet"]


def run_json(capsys, *args):
    assert bench.main([*args, *FAST, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_fastnet_run_reports_every_field(capsys):
    document = run_json(capsys, "--frameworks", "fastnet", "--workloads", "mlp_small_b32",
                        "--threads", "1")
    assert document["threads"] == 1 and document["windows"] == 2
    assert document["memory_source"] in ("VmHWM", "ru_maxrss")
    assert document["versions"] == {"fastnet": fn.__version__}
    (result,) = document["results"]
    assert result["workload"] == "mlp_small_b32" and result["batch"] == 32
    assert result["train_flops_per_sample"] == 3 * result["forward_flops_per_sample"] > 0
    ours = result["frameworks"]["fastnet"]
    assert ours["status"] == "ok"
    assert ours["version"] == fn.__version__ and ours["threads"] == 1
    assert len(ours["windows"]) == 2 and all(rate > 0 for rate in ours["windows"])
    slowest, fastest = sorted(ours["windows"])
    assert ours["spread"] == pytest.approx((fastest - slowest) / ours["samples_per_s"])
    assert ours["samples_per_s"] > 0 and ours["fastnet_ratio"] == pytest.approx(1.0)
    assert ours["gflops"] == pytest.approx(
        ours["samples_per_s"] * result["train_flops_per_sample"] / 1e9)
    assert ours["latency_ms"] > 0 and ours["latency_fastnet_ratio"] == pytest.approx(1.0)
    assert ours["peak_rss_mb"] >= ours["import_rss_mb"] > 0
    assert ours["train_rss_mb"] == pytest.approx(ours["peak_rss_mb"] - ours["import_rss_mb"])
    assert ours["cpu_cores"] > 0


def test_table_and_json_file(tmp_path, capsys):
    path = tmp_path / "out.json"
    assert bench.main(["--frameworks", "fastnet", "--workloads", "cnn_mnist_b64", *FAST,
                       "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cnn_mnist_b64" in out and "samples/s" in out and "peak RSS" in out
    document = json.loads(path.read_text())
    ours = document["results"][0]["frameworks"]["fastnet"]
    assert ours["status"] == "ok"
    row = next(line for line in out.splitlines() if line.startswith("cnn_mnist_b64"))
    assert f"{100 * ours['spread']:.0f}%" in row.split()


def test_missing_frameworks_are_skipped(monkeypatch, capsys):
    monkeypatch.setattr(bench, "framework_installed", lambda name: name == "fastnet")
    document = run_json(capsys, "--frameworks", "fastnet,pytorch,jax", "--workloads",
                        "mlp_small_b32")
    frameworks = document["results"][0]["frameworks"]
    assert list(frameworks) == ["fastnet", "torch", "jax"]
    assert frameworks["fastnet"]["status"] == "ok"
    for name in ("torch", "jax"):
        assert frameworks[name] == {"status": "skipped", "reason": "not installed"}
    assert document["versions"]["torch"] is None

    assert bench.main(["--frameworks", "fastnet,jax", "--workloads", "mlp_small_b32",
                       *FAST]) == 0
    assert "skipped: not installed" in capsys.readouterr().out


def test_a_failing_worker_is_reported_not_raised(monkeypatch):
    class BrokenWorker(bench.Worker):
        def __init__(self, framework, workload, *args):
            super().__init__(framework, "no_such_workload", *args)

    monkeypatch.setattr(bench, "Worker", BrokenWorker)
    (result,) = bench.run(["mlp_small_b32"], ["fastnet"], 1, 0.05, 1)
    failed = result["frameworks"]["fastnet"]
    assert failed["status"] == "failed"
    assert "no_such_workload" in failed["reason"]


@pytest.mark.parametrize("option, value, message", [
    ("--workloads", "mlp_small_b32,nope", "unknown workload 'nope'; known: mlp_small_b32"),
    ("--frameworks", "fastnet,tensorflow", "unknown framework 'tensorflow'"),
    ("--seconds", "0", "expected a positive number"),
    ("--threads", "-1", "expected a positive integer"),
    ("--repeat", "0", "expected a positive integer"),
])
def test_bad_options_are_clear_errors(capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        bench.main([option, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_gemm_report(capsys):
    report = run_json(capsys, "--gemm", "--workloads", "mlp_small_b32", "--threads", "2",
                      "--seconds", "0.01", "--windows", "1")
    assert report["threads"] == 2 and report["target_ratio"] == 0.7
    rows = report["rows"]
    assert (rows[0]["m"], rows[0]["n"], rows[0]["k"], rows[0]["workload"]) == (1024, 1024, 1024,
                                                                               None)
    assert {row["threads"] for row in rows} == {1, 2}
    for row in rows:
        assert row["builtin_gflops"] > 0 and row["blas_gflops"] > 0
        assert row["ratio"] == pytest.approx(row["builtin_gflops"] / row["blas_gflops"])
    summary = report["workloads"]["mlp_small_b32"]
    assert summary["ratio"] == pytest.approx(summary["blas_ms"] / summary["builtin_ms"])


def test_scaling_report(capsys):
    report = run_json(capsys, "--scaling", "--frameworks", "fastnet", "--workloads",
                      "mlp_small_b32", "--threads", "2")
    assert report["threads"] == 2 and report["windows"] == 2
    (row,) = report["rows"]
    assert row["status"] == "ok" and (row["workload"], row["framework"]) == ("mlp_small_b32",
                                                                             "fastnet")
    assert len(row["windows_one"]) == len(row["windows_many"]) == 2
    assert row["one_thread"] > 0 and row["many_threads"] > 0
    assert row["speedup"] == pytest.approx(row["many_threads"] / row["one_thread"])
    assert bench.main(["--scaling", "--frameworks", "fastnet", "--workloads", "mlp_small_b32",
                       "--threads", "2", *FAST]) == 0
    table = capsys.readouterr().out
    assert "1 thread" in table and "2 threads" in table and "mlp_small_b32" in table


@pytest.mark.parametrize("args, message", [
    (["--scaling", "--threads", "1"], "at least 2"),
    (["--scaling", "--gemm", "--threads", "2"], "separate reports"),
    (["--repeat", "2", "--gemm"], "--repeat repeats the comparison"),
    (["--repeat", "2", "--scaling", "--threads", "2"], "--repeat repeats the comparison"),
])
def test_reports_refuse_options_they_cannot_take(capsys, args, message):
    assert bench.main([*args, *FAST]) == 2
    assert message in capsys.readouterr().err


def test_gemm_shapes_follow_the_layers():
    shapes = bench.gemm_shapes(["mlp_mnist_b128", "resnet8_cifar_b128"])
    mlp = [s for s in shapes if s["workload"] == "mlp_mnist_b128"]
    # forward and weight gradient of each of 3 layers, input gradient of the 2 after the first
    assert len(mlp) == 8
    first = mlp[0]
    assert (first["m"], first["n"], first["k"], first["trans_a"], first["trans_b"]) == \
        (128, 1024, 784, False, True)
    for workload in ("mlp_mnist_b128", "resnet8_cifar_b128"):
        assert sum(s["share"] for s in shapes if s["workload"] == workload) == pytest.approx(1)
    stem = next(s for s in shapes if s["workload"] == "resnet8_cifar_b128")
    assert (stem["m"], stem["n"], stem["k"], stem["calls"], stem["per_image"]) == \
        (16, 1024, 27, 128, True)
    # The 16-channel 32x32 convolutions run by Winograd: 16 products an image of 16 output by 16
    # input channels over the image's 256 tiles, forward and input gradient; 16 to 32 of stride 2
    # by im2col.
    winograd = [s for s in shapes if (s["m"], s["n"], s["k"], s["trans_a"], s["trans_b"]) ==
                (16, 256, 16, True, False)]
    assert len(winograd) == 1
    assert winograd[0]["where"] == ["Conv2d(16,16,3,s1) fwd Winograd",
                                    "Conv2d(16,16,3,s1) dX Winograd"]
    assert winograd[0]["calls"] == 16 * 128 * 4  # two layers, forward and input gradient
    assert any(s["where"] == ["Conv2d(16,32,3,s2) fwd"] for s in shapes)
    # The 64-channel 8x8 convolution: four images at a call, their 4 x 16 tiles side by side.
    # Its weight gradient by Winograd too, and the 32-channel one: 16 products of the transformed
    # output gradients (out, tiles) by the input tiles (in, tiles) transposed, per group of
    # images. The 16-channel ones keep the shifted windows' dot products.
    grouped = [s for s in shapes if (s["m"], s["n"], s["k"]) == (64, 64, 64)]
    assert [(s["where"], s["calls"], s["trans_a"], s["trans_b"]) for s in grouped] == [
        (["Conv2d(64,64,3,s1) fwd Winograd", "Conv2d(64,64,3,s1) dX Winograd"], 16 * 32 * 2,
         True, False),
        (["Conv2d(64,64,3,s1) dW Winograd"], 16 * 32, False, True)]
    assert [s["where"] for s in shapes if "dW Winograd" in s["where"][0]] == [
        ["Conv2d(32,32,3,s1) dW Winograd"], ["Conv2d(64,64,3,s1) dW Winograd"]]
    assert any(s["where"] == ["Conv2d(16,16,3,s1) dW"] for s in shapes)
    # The CNN's second convolution: its 144 tiles by 64 channels, which fill whole slivers.
    cnn = [s for s in bench.gemm_shapes(["cnn_mnist_b64"]) if "Winograd" in s["where"][0]]
    assert [(s["m"], s["n"], s["k"], s["trans_a"], s["trans_b"]) for s in cnn] == \
        [(144, 64, 32, True, False), (64, 32, 144, False, True)]


def test_registration_with_the_command_line(monkeypatch, capsys):
    monkeypatch.setitem(cli.EXTRA_COMMANDS, "bench", "fastnet.bench")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert bench.SUMMARY in capsys.readouterr().out
    assert cli.main(["bench", "--list", "--workloads", "mlp_small_b32"]) == 0
    out = capsys.readouterr().out
    assert "mlp_small_b32: batch 32" in out and "Linear(128, 10)" in out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--workloads", "nope"])
    assert "unknown workload 'nope'" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    # From a directory where a source tree cannot shadow the fastnet under test.
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fn.__file__)))
    result = subprocess.run([sys.executable, "-m", "fastnet.bench", "--list", "--workloads",
                             "cnn_mnist_b64"], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "Conv2d(32, 64, 3" in result.stdout


@pytest.mark.parametrize("workload", list(bench.WORKLOADS))
def test_fastnet_definition_matches_its_flop_count(workload):
    network, _, shape, _, _ = bench.WORKLOADS[workload]
    model = bench.fastnet_model(network, shape)
    assert model.forward_flops() == bench.forward_flops(network, shape)


def test_torch_definitions_are_the_same_networks():
    """Same tensor names and shapes as fastnet's, and with fastnet's weights the same outputs
    (eval mode)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for workload, (network, _, shape, _, _) in bench.WORKLOADS.items():
        ours = bench.fastnet_model(network, shape)
        theirs = bench.torch_model(network)
        state = ours.state_dict()
        assert {k: tuple(v.shape) for k, v in theirs.state_dict().items()} == \
            {k: v.shape for k, v in state.items()}, workload
        theirs.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
        x = rng.random((3,) + shape, dtype=np.float32)
        ours.eval()
        theirs.eval()
        with torch.no_grad():
            expected = theirs(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours(x), expected, rtol=1e-4, atol=1e-5, err_msg=workload)


def test_jax_definitions_have_the_same_parameters():
    jax = pytest.importorskip("jax")
    for workload, (network, _, shape, _, _) in bench.WORKLOADS.items():
        init, apply = bench.jax_model(network)
        params, state = init(np.random.default_rng(0))
        count = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
        assert count == bench.fastnet_model(network, shape).num_parameters(), workload
        x = np.zeros((2,) + (shape[1:] + shape[:1] if len(shape) == 3 else shape), np.float32)
        logits, _ = apply(params, state, x, False, None)
        assert logits.shape == (2, bench.WORKLOADS[workload][3])


def test_worker_environment_pins_threads_and_spin_count():
    env = bench.worker_environment("torch", 3)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NPROC"):
        assert env[name] == "3"
    # not fastnet's own setting, which its import put in this process's environment
    assert env.get("GOMP_SPINCOUNT") == bench._original_environ_value("GOMP_SPINCOUNT")
    assert bench.worker_environment("jax", 1, spin_count=500)["GOMP_SPINCOUNT"] == "500"
    assert bench.worker_environment("jax", 1)["JAX_PLATFORMS"] == "cpu"


def test_spread_of_the_windows():
    assert bench._spread([90.0, 100.0, 110.0]) == pytest.approx(0.2)
    assert bench._spread([100.0, 100.0]) == 0
    assert bench._spread([100.0]) is None and bench._spread([]) is None


def test_repeated_runs_end_with_each_figure_over_the_runs(tmp_path, capsys):
    path = tmp_path / "runs.json"
    assert bench.main(["--frameworks", "fastnet", "--workloads", "mlp_small_b32", *FAST,
                       "--repeat", "2", "--json", str(path)]) == 0
    document = json.loads(path.read_text())
    assert document["repeat"] == 2 and "results" not in document
    assert len(document["runs"]) == 2
    rates = [results[0]["frameworks"]["fastnet"]["samples_per_s"]
             for results in document["runs"]]
    assert all(rate > 0 for rate in rates)
    (row,) = document["summary"]
    assert (row["workload"], row["framework"], row["runs"], row["of"]) == (
        "mlp_small_b32", "fastnet", 2, 2)
    assert row["samples_per_s"] == {"values": rates, "median": pytest.approx(sum(rates) / 2),
                                    "low": min(rates), "high": max(rates)}
    assert row["fastnet_ratio"]["values"] == [pytest.approx(1.0)] * 2

    out = capsys.readouterr().out
    assert out.index("Run 1 of 2") < out.index("Run 2 of 2") < out.index("Over 2 runs")
    assert out.count("samples/s   training samples per second") == 1  # the legend, once
    summary = out[out.index("Over 2 runs"):]
    line = next(line for line in summary.splitlines() if line.startswith("mlp_small_b32"))
    assert line.split()[1:6] == ["fastnet", "2/2", f"{statistics.median(rates):,.0f}", "1.00x",
                                 "(1.00-1.00)"]


def test_summary_of_runs_with_failures_and_skips():
    def workload(name, **frameworks):
        return {"workload": name, "frameworks": frameworks}

    def ok(rate, ratio, latency_ratio=None):
        return {"status": "ok", "samples_per_s": rate, "fastnet_ratio": ratio,
                "latency_fastnet_ratio": latency_ratio}

    skipped = {"status": "skipped", "reason": "not installed"}
    failed = {"status": "failed", "reason": "out of memory"}
    runs = [
        [workload("a", fastnet=ok(100, 1.0, 1.0), torch=ok(10, 10.0, 3.0), jax=skipped)],
        [workload("a", fastnet=ok(90, 1.0, 1.0), torch=ok(12, 7.5, 2.0), jax=skipped)],
        [workload("a", fastnet=failed, torch=ok(11, None), jax=skipped)],
    ]
    rows = {row["framework"]: row for row in bench.summarize_runs(runs)}
    assert list(rows) == ["fastnet", "torch", "jax"]
    assert (rows["fastnet"]["runs"], rows["fastnet"]["of"]) == (2, 3)
    assert rows["fastnet"]["samples_per_s"] == {"values": [100, 90], "median": 95, "low": 90,
                                                "high": 100}
    torch_row = rows["torch"]
    assert (torch_row["runs"], torch_row["of"]) == (3, 3)
    assert torch_row["fastnet_ratio"] == {"values": [10.0, 7.5, None], "median": 8.75,
                                          "low": 7.5, "high": 10.0}
    assert torch_row["latency_fastnet_ratio"]["median"] == 2.5
    assert rows["jax"]["runs"] == 0
    assert rows["jax"]["fastnet_ratio"] == {"values": [], "median": None, "low": None,
                                            "high": None}
    text = bench.format_summary(bench.summarize_runs(runs), 3)
    assert "Over 3 runs" in text
    lines = text.splitlines()
    torch_line = next(line for line in lines if "PyTorch" in line)
    assert "8.75x (7.50-10.00)" in torch_line and "2.50x (2.00-3.00)" in torch_line
    jax_line = next(line for line in lines if "JAX" in line)
    assert jax_line.split()[-2:] == ["-", "-"]
