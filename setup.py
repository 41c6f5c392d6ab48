"""Thin hand-off to CMake: every build decision lives in CMakeLists.txt.

Build against the torch already installed (its headers and ABI must match):
    pip install . --no-build-isolation
    pip wheel . --no-build-isolation
Environment switches (read by CMakeLists.txt): FUSEDOPT_CUDA, FUSEDOPT_CUDA_ARCHS,
FUSEDOPT_TESTING.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        jobs = str(os.cpu_count() or 1)
        # Ninja when it is there (faster rebuilds); CMake's default generator else.
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(
            [
                "cmake",
                "-S",
                str(Path(__file__).parent.resolve()),
                "-B",
                str(build_dir),
                *generator,
                f"-DPython_EXECUTABLE={sys.executable}",
                f"-DFUSEDOPT_OUTPUT_DIR={out_dir}",
            ],
            check=True,
        )
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


setup(
    ext_modules=[CMakeExtension("fusedopt._C")],
    cmdclass={"build_ext": CMakeBuild},
    package_dir={"fusedopt": "python/fusedopt", "fusedopt.kernels": "kernels"},
    packages=[
        "fusedopt",
        "fusedopt.bench",
        "fusedopt.optim",
        "fusedopt.reference",
        "fusedopt.kernels",
        "fusedopt.kernels.rules",
    ],
)
