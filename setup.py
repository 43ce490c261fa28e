"""Build the Cython kernels in fastcnn/_kernels/*.pyx.

One directive set for every extension; portable flags only (no
-march=native, so a wheel built here runs on any x86-64 / arm64 machine).
No OpenMP: every loop is single-threaded, and fastcnn runs pieces of an op
concurrently on its own pool of Python threads (fastcnn/backends/_concurrent.py),
which, unlike an OpenMP team, never spins and survives a fork.

Environment switches:
  FASTCNN_DEBUG_BUILD=1   bounds checking, wraparound and initialised-check on,
                          no -O3 (run the test suite against this build)
"""
import os
import sys
import glob

import numpy as np
from setuptools import setup, Extension
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("FASTCNN_DEBUG_BUILD", "0") not in ("", "0")


class BuildExt(build_ext):
    """Adds the optimisation (or debug) flags."""

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        # -fno-trapping-math: no kernel reads the FP exception flags, and without
        # it GCC may not compute a value it might not need (inf * 0 could
        # raise a flag), so a select stays a mispredicted branch (ReLU
        # backward on random signs: 8 ms instead of ~0.3). Results are
        # unchanged: unlike -ffast-math it allows no reassociation.
        opt = [] if ctype == "msvc" else (["-O0", "-g"] if DEBUG else
                                           ["-O3", "-fno-trapping-math"])
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + opt
        print(f"fastcnn: building kernels, debug={'yes' if DEBUG else 'no'}", file=sys.stderr)
        super().build_extensions()


def _extensions():
    from Cython.Build import cythonize

    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": not DEBUG,
        "nonecheck": DEBUG,
    }
    exts = []
    for pyx in sorted(glob.glob(os.path.join("fastcnn", "_kernels", "*.pyx"))):
        name = os.path.splitext(pyx)[0].replace(os.sep, ".")
        exts.append(Extension(
            name, [pyx],
            include_dirs=[np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        ))
    # The generated C depends on the directives, which cythonize's timestamp
    # check does not see: keep the debug and release C apart so that flipping
    # FASTCNN_DEBUG_BUILD really recompiles with the other directive set.
    build_dir = os.path.join("build", "cython-debug" if DEBUG else "cython-release")
    return cythonize(exts, compiler_directives=directives, build_dir=build_dir,
                     compile_time_env={"FASTCNN_DEBUG": DEBUG}, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
