"""Fixtures of the kernel benchmarks: the machine's measured peaks, and a summary of every
benchmark's achieved rate against them at the end of the run.

Run with ``pytest bench/ --benchmark-only`` (the project's ``pytest`` collects ``tests/`` only).
``--kernel-threads N`` sets fastnet's thread count (default: the CPUs this process may use).
"""
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastnet as fn
from fastnet import _core

#: (test id, achieved rate, unit, reference, reference name) of every benchmark run.
_RESULTS = []
#: The peaks measured in this session.
_PEAKS = {}


def pytest_addoption(parser):
    parser.addoption("--kernel-threads", type=int, default=None,
                     help="fastnet threads in the kernel benchmarks (default: the CPUs this "
                          "process may use)")


def _available_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@pytest.fixture(scope="session")
def threads(request):
    """The thread count the benchmarks run fastnet with (set for the whole session)."""
    count = request.config.getoption("--kernel-threads") or _available_cpus()
    fn.set_num_threads(count)
    return count


def _best_seconds(function, repeats):
    function()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def _copy_bandwidth(nbytes, threads):
    """GB/s of copying ``nbytes`` with ``threads`` threads, each a contiguous share (numpy
    releases the GIL while it copies), counting bytes read plus bytes written, as STREAM
    does; the best of several copies."""
    source = np.ones(nbytes // 4, np.float32)
    target = np.empty_like(source)
    bounds = np.linspace(0, source.size, threads + 1).astype(int)
    shares = [(target[lo:hi], source[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(threads) as pool:
        def copy():
            list(pool.map(lambda share: np.copyto(*share), shares))

        return 2.0 * source.nbytes / _best_seconds(copy, 5) / 1e9


@pytest.fixture(scope="session")
def peak(threads):
    """The machine's measured peaks, once per session.

    ``gemm_gflops_per_core``: the best of several single-thread float32 2048x2048x2048 GEMMs
    through fastnet's BLAS table (OpenBLAS when SciPy provides it, else the built-in kernel), an
    FMA-bound loop a few percent under the core's FMA peak. ``copy_gbs``: the memory bandwidth of
    ``threads`` threads copying 256 MiB (far more than the caches), the reference of the
    memory-bound kernels: those whose data fit in the caches can exceed it.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 2048)).astype(np.float32)
    b = rng.standard_normal((2048, 2048)).astype(np.float32)
    out = np.empty((2048, 2048), np.float32)
    gemm = 2.0 * 2048 ** 3 / _best_seconds(lambda: _core.gemm(a, b, threads=1, out=out), 4) / 1e9
    copy = _copy_bandwidth(256 << 20, threads)
    _PEAKS.update(gemm_gflops_per_core=gemm, copy_gbs=copy, threads=threads)
    return {"gemm_gflops_per_core": gemm, "copy_gbs": copy,
            "gemm_source": fn._blas.source if _core.blas_installed() else "builtin"}


@pytest.fixture
def record(request, peak, threads):
    """``record(benchmark, amount, unit)`` after a benchmark has run: ``amount`` FLOPs
    (``unit="GFLOP/s"``) or bytes (``unit="GB/s"``) per call. Puts the achieved rate and its
    fraction of the machine's peak (the GEMM peak per core times the threads used, or the copy
    bandwidth) in ``benchmark.extra_info`` and the end-of-run summary."""

    def record_rate(benchmark, amount, unit, threads_used=None):
        used = threads if threads_used is None else threads_used
        if unit == "GFLOP/s":
            reference = peak["gemm_gflops_per_core"] * used
            reference_name = f"GEMM peak x {used}"
        else:
            reference = peak["copy_gbs"]
            reference_name = f"copy bandwidth, {threads} threads"
        benchmark.extra_info.update(threads=used, unit=unit, peak=reference,
                                    peak_measure=reference_name)
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # benchmarks disabled: ran once, untimed
            return None
        rate = amount / stats.stats.median / 1e9
        benchmark.extra_info.update(rate=rate, fraction_of_peak=rate / reference)
        _RESULTS.append((request.node.name, rate, unit, reference, reference_name))
        return rate

    return record_rate


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("achieved rates (median time per call)")
    if _PEAKS:
        write(f"measured: single-thread GEMM {_PEAKS['gemm_gflops_per_core']:.1f} GFLOP/s (2048^3, "
              f"best of 4); copy bandwidth {_PEAKS['copy_gbs']:.1f} GB/s ({_PEAKS['threads']} "
              f"threads, 256 MiB, best of 5)")
    width = max(len(name) for name, *_ in _RESULTS)
    for name, rate, unit, reference, reference_name in _RESULTS:
        write(f"{name:<{width}}  {rate:8.1f} {unit:<7}  {rate / reference:6.1%} of "
              f"{reference_name} ({reference:.1f})")
    pairs = {}
    for name, rate, *_ in _RESULTS:
        if name.startswith("test_gemm["):
            impl, _, shape = name[len("test_gemm["):-1].partition("-")
            pairs.setdefault(shape, {})[impl] = rate
    rows = [(shape, r["builtin"], r["blas"]) for shape, r in pairs.items()
            if "builtin" in r and "blas" in r]
    if rows:
        terminalreporter.section("built-in GEMM / BLAS (target: at least 70%)")
        for shape, builtin, blas in rows:
            mark = "" if builtin >= 0.7 * blas else "  < 70%"
            write(f"{shape:<{width}}  {builtin:8.1f} / {blas:8.1f} GFLOP/s = "
                  f"{builtin / blas:6.1%}{mark}")
