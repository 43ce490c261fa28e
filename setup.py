"""Build the Cython kernels in fastcnn/_kernels/*.pyx.

One directive set for every extension; an OpenMP probe that falls back to a
serial build when the compiler has no OpenMP; portable flags only (no
-march=native, so a wheel built here runs on any x86-64 / arm64 machine).

Environment switches:
  FASTCNN_DEBUG_BUILD=1   bounds checking, wraparound and initialised-check on,
                          no -O3 (run the test suite against this build)
  FASTCNN_NO_OPENMP=1     skip the OpenMP probe and build serial kernels
"""
import os
import sys
import glob
import shutil
import tempfile
import subprocess

import numpy as np
from setuptools import setup, Extension
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("FASTCNN_DEBUG_BUILD", "0") not in ("", "0")


def _compiler_has_openmp(cc_cmd):
    """Compile and link a tiny OpenMP program; True only if both succeed."""
    if os.environ.get("FASTCNN_NO_OPENMP", "0") not in ("", "0"):
        return False
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    tmp = tempfile.mkdtemp()
    try:
        c = os.path.join(tmp, "probe.c")
        with open(c, "w") as f:
            f.write(src)
        exe = os.path.join(tmp, "probe")
        r = subprocess.run(cc_cmd + [c, "-fopenmp", "-o", exe],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """Adds OpenMP flags when the compiler supports them."""

    def build_extensions(self):
        cc = getattr(self.compiler, "compiler_so", None) or ["cc"]
        ctype = self.compiler.compiler_type
        openmp = False
        if ctype == "msvc":
            omp_compile, omp_link, openmp = ["/openmp"], [], True
        else:
            openmp = _compiler_has_openmp([cc[0]])
            omp_compile = omp_link = ["-fopenmp"] if openmp else []
        # -fno-trapping-math: no kernel reads the FP exception flags, and without
        # it GCC may not compute a value it might not need (inf * 0 could
        # raise a flag), so a select stays a mispredicted branch (ReLU
        # backward on random signs: 8 ms instead of ~0.3). Results are
        # unchanged: unlike -ffast-math it allows no reassociation.
        opt = [] if ctype == "msvc" else (["-O0", "-g"] if DEBUG else
                                           ["-O3", "-fno-trapping-math"])
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + opt + omp_compile
            ext.extra_link_args = list(ext.extra_link_args or []) + omp_link
            ext.define_macros = list(ext.define_macros or []) + [
                ("FASTCNN_OPENMP", "1" if openmp else "0")]
        print(f"fastcnn: building kernels with OpenMP={'yes' if openmp else 'no'}, "
              f"debug={'yes' if DEBUG else 'no'}", file=sys.stderr)
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
