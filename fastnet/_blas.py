"""Fills the C core's BLAS table from SciPy's BLAS.

A SciPy wheel bundles OpenBLAS (``scipy.libs/libscipy_openblas*.so``, exporting ``scipy_sgemm_``,
``scipy_dgemm_`` and ``openblas_set_num_threads_local``): fastnet loads that library with ctypes,
without importing ``scipy.linalg``, which would cost about 20 MB of resident memory and a tenth
of a second for modules fastnet never uses. Any other SciPy (built against a system BLAS) is
reached through ``scipy.linalg.cython_blas``, which exports its Fortran-ABI ``sgemm``/``dgemm`` as
PyCapsules, so no SciPy headers are needed at build time either way. fastnet calls the BLAS
single-threaded from inside its own OpenMP partitions; OpenBLAS's
``openblas_set_num_threads_local`` lets it do so for its own threads only, leaving the rest of
the process (and the user's SciPy calls) as they were.
"""
import ctypes
import glob
import importlib.util
import os

from fastnet import _core

#: How the table was filled: "scipy-openblas" (OpenBLAS with its per-thread setter), "scipy" (no
#: such setter found) or "builtin".
source = "builtin"


def _scipy_directory():
    """The directory SciPy is installed in, found without importing it; None without SciPy."""
    try:
        spec = importlib.util.find_spec("scipy")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


#: The per-thread thread-count setter, under the names OpenBLAS builds give it.
_SETTER_NAMES = ("openblas_set_num_threads_local", "scipy_openblas_set_num_threads_local")


def _address(lib, names):
    """The address of the first of ``names`` that ``lib`` exports, or 0."""
    for name in names:
        function = getattr(lib, name, None)
        if function is not None:
            return ctypes.cast(function, ctypes.c_void_p).value or 0
    return 0


def _bundled_openblas():
    """(sgemm, dgemm, setter) addresses from the OpenBLAS a SciPy wheel bundles, or None."""
    directory = _scipy_directory()
    if directory is None:
        return None
    libs = os.path.join(os.path.dirname(directory), "scipy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        found = tuple(_address(lib, names) for names in
                      (("scipy_sgemm_", "sgemm_"), ("scipy_dgemm_", "dgemm_"), _SETTER_NAMES))
        if found[0] and found[1]:
            return found
    return None


def _openblas_libraries():
    """Paths of the OpenBLAS libraries mapped into this process."""
    paths = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return paths


def _thread_local_setter():
    """Address of openblas_set_num_threads_local in an OpenBLAS mapped into this process, or 0."""
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = _address(lib, _SETTER_NAMES)
        if setter:
            return setter
    return 0


def install():
    """Installs SciPy's BLAS if SciPy is there; otherwise the built-in GEMM stays in use."""
    global source
    if os.environ.get("FASTNET_BLAS", "").lower() == "builtin":
        _core.uninstall_blas()
        source = "builtin"
        return source
    bundled = _bundled_openblas()
    if bundled is not None:
        sgemm, dgemm, setter = bundled
    else:
        try:
            from scipy.linalg import cython_blas
        except ImportError:
            source = "builtin"
            return source
        sgemm, dgemm = cython_blas.__pyx_capi__["sgemm"], cython_blas.__pyx_capi__["dgemm"]
        setter = _thread_local_setter()
    _core.install_blas(sgemm, dgemm, setter)
    source = "scipy-openblas" if setter else "scipy"
    return source
