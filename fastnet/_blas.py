"""Fills the C core's BLAS table from SciPy's BLAS (``scipy.linalg.cython_blas``).

SciPy exports its Fortran-ABI ``sgemm``/``dgemm`` as PyCapsules in ``cython_blas.__pyx_capi__``, so
no SciPy headers are needed at build time. fastnet calls the BLAS single-threaded from inside its
own OpenMP partitions; OpenBLAS's ``openblas_set_num_threads_local`` lets it do so for its own
threads only, leaving the rest of the process (and the user's SciPy calls) as they were.
"""
import ctypes
import glob
import os

from fastnet import _core

#: How the table was filled: "scipy-openblas", "scipy" (no per-thread setter found) or "builtin".
source = "builtin"


def _openblas_libraries():
    """Paths of the OpenBLAS libraries mapped into this process, then SciPy's bundled ones."""
    paths = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    import scipy

    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    paths += [p for p in sorted(glob.glob(os.path.join(libs, "*openblas*"))) if p not in paths]
    return paths


def _thread_local_setter():
    """Address of openblas_set_num_threads_local in the OpenBLAS that SciPy uses, or 0."""
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("openblas_set_num_threads_local", "scipy_openblas_set_num_threads_local"):
            function = getattr(lib, name, None)
            if function is not None:
                return ctypes.cast(function, ctypes.c_void_p).value or 0
    return 0


def install():
    """Installs SciPy's BLAS if it is importable; otherwise the built-in GEMM stays in use."""
    global source
    if os.environ.get("FASTNET_BLAS", "").lower() == "builtin":
        _core.uninstall_blas()
        source = "builtin"
        return source
    try:
        from scipy.linalg import cython_blas
    except ImportError:
        source = "builtin"
        return source
    capsules = cython_blas.__pyx_capi__
    setter = _thread_local_setter()
    _core.install_blas(capsules["sgemm"], capsules["dgemm"], setter)
    source = "scipy-openblas" if setter else "scipy"
    return source
