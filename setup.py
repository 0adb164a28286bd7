"""Build of fastnet's compiled core: csrc/ (C11 + OpenMP) and the Cython boundary fastnet/_core.pyx.

Flags are chosen by trying them on the compiler at hand:
- ``-O3`` always;
- OpenMP when a test program compiles and links with ``-fopenmp`` (otherwise a single-threaded
  build, with a warning);
- ``-march=native`` (the build machine's vector instructions) unless ``FASTNET_PORTABLE=1``.
"""
import os
import sys
import tempfile
import textwrap
from glob import glob

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 && omp_get_max_threads() > 0 ? 0 : 1;
    }
    """
)


def compiler_accepts(compiler, source, compile_args, link_args):
    """True if `source` compiles and links with the given flags."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        try:
            objects = compiler.compile([path], output_dir=tmp, extra_postargs=compile_args)
            compiler.link_executable(objects, os.path.join(tmp, "probe"), extra_postargs=link_args)
        except Exception:
            return False
    return True


class BuildWithProbedFlags(build_ext):
    def build_extensions(self):
        compiler = self.compiler
        # -fno-trapping-math as in csrc/Makefile (FP operations taken not to trap: vectorised
        # selects, the same bits).
        compile_args = ["-O3", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math", "-Wall",
                        "-Wno-unused-function"]
        link_args = []
        if os.environ.get("FASTNET_PORTABLE", "") not in ("", "0"):
            print("fastnet: FASTNET_PORTABLE set, building for a generic CPU")
        elif compiler_accepts(compiler, "int main(void){return 0;}", ["-march=native"], []):
            compile_args.append("-march=native")
        else:
            print("fastnet: the compiler does not accept -march=native; generic build")
        if compiler_accepts(compiler, OPENMP_TEST, ["-fopenmp"], ["-fopenmp"]):
            compile_args.append("-fopenmp")
            link_args.append("-fopenmp")
        else:
            print(
                "WARNING: fastnet: the compiler does not support OpenMP; building a "
                "single-threaded fastnet",
                file=sys.stderr,
            )
            # The `omp simd` loops vectorised all the same, where the compiler knows the flag.
            if compiler_accepts(compiler, "int main(void){return 0;}", ["-fopenmp-simd"], []):
                compile_args.append("-fopenmp-simd")
        for ext in self.extensions:
            ext.extra_compile_args = compile_args
            ext.extra_link_args = link_args + ["-lm"]
        super().build_extensions()


csrc = sorted(glob("csrc/*.c"))
extension = Extension(
    "fastnet._core",
    sources=["fastnet/_core.pyx"] + csrc,
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "embedsignature": True,
        },
    ),
    cmdclass={"build_ext": BuildWithProbedFlags},
)
