"""The build's decisions (issue 11, section 5), read from CMake configured
here without building, and from the built package:

  - the CPU loop variants follow the target processor: AVX-512, AVX2 and
    baseline on x86-64, the baseline alone elsewhere (aarch64), with
    dispatch.cpp's x86 ISA detection only where the x86 loops are built;
  - the build records its torch's version, and fusedopt._extension refuses
    _C under another torch, saying how to rebuild;
  - a user's -DCMAKE_CUDA_ARCHITECTURES is honoured, and a different
    FUSEDOPT_CUDA_ARCHS beside it refused.

A configure takes ~6 s (13 s with the CUDA language); the cross-compile of
the loops for aarch64 runs where an aarch64 g++ is installed
(g++-aarch64-linux-gnu), under -m slow."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import fusedopt
import pytest
import torch
from fusedopt import _extension

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("ninja") is None,
    reason="needs cmake and ninja to configure the build",
)
REPO = Path(__file__).resolve().parents[1]
CROSS_GXX = "aarch64-linux-gnu-g++"
ELF_MACHINE_AARCH64 = 183


def configure(build_dir: Path, *args: str, cuda: str = "0", env_archs: str | None = None):
    """`cmake` in configure-only mode, as setup.py runs it; the completed process."""
    env = {**os.environ, "FUSEDOPT_CUDA": cuda, "FUSEDOPT_TESTING": "0"}
    env.pop("FUSEDOPT_CUDA_ARCHS", None)
    if env_archs is not None:
        env["FUSEDOPT_CUDA_ARCHS"] = env_archs
    command = ["cmake", "-S", str(REPO), "-B", str(build_dir), "-G", "Ninja"]
    command += [f"-DPython_EXECUTABLE={sys.executable}", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


# --- CPU loop variants per processor ------------------------------------------------


def test_x86_64_builds_three_loop_variants_and_detects_the_cpu(tmp_path):
    result = configure(tmp_path / "x86")
    assert result.returncode == 0, result.stderr
    assert "fusedopt: CPU loops for x86_64: avx512;avx2;baseline" in result.stdout
    ninja = (tmp_path / "x86" / "build.ninja").read_text()
    for isa in ("avx512", "avx2", "baseline"):
        assert f"fusedopt_cpu_{isa}" in ninja
    assert "-DFUSEDOPT_X86_ISAS" in ninja


def test_aarch64_builds_the_baseline_loops_only(tmp_path):
    """A cross configure for aarch64 with this machine's compiler (nothing is
    compiled): no AVX flags, no x86 detection in dispatch.cpp. That the
    result compiles and vectorizes is test_aarch64_loops_cross_compile_and_vectorize."""
    result = configure(
        tmp_path / "arm", "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64"
    )
    assert result.returncode == 0, result.stderr
    assert "fusedopt: CPU loops for aarch64: baseline" in result.stdout
    ninja = (tmp_path / "arm" / "build.ninja").read_text()
    assert "fusedopt_cpu_baseline" in ninja
    for absent in ("fusedopt_cpu_avx512", "fusedopt_cpu_avx2", "-mavx", "FUSEDOPT_X86_ISAS"):
        assert absent not in ninja


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(CROSS_GXX) is None, reason=f"needs {CROSS_GXX}")
def test_aarch64_loops_cross_compile_and_vectorize(tmp_path):
    """The aarch64 configure's own compile commands, run by an aarch64 g++:
    the loops and the ISA dispatch (torch-free, so no aarch64 torch is
    needed) compile, and gcc vectorizes every element loop with NEON (as
    tests/test_cpu_vectorized.py checks the x86 builds). (A full cross
    configure needs an aarch64 Python to link against, which this machine
    lacks.)"""
    import test_cpu_vectorized as vectorized

    build = tmp_path / "arm"
    result = configure(
        build,
        "-DCMAKE_SYSTEM_NAME=Linux",
        "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
        "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
    )
    assert result.returncode == 0, result.stderr
    entries = json.loads((build / "compile_commands.json").read_text())
    wanted = {"csrc/cpu/loop.cpp", "csrc/cpu/dispatch.cpp"}
    commands = {name: entry for entry in entries for name in wanted if entry["file"].endswith(name)}
    assert commands.keys() == wanted  # one loop build (the baseline) and the dispatch
    for name, entry in commands.items():
        _, *args = shlex.split(entry["command"])
        obj = args[args.index("-o") + 1]
        command = [CROSS_GXX, *args, "-fdump-tree-vect-details"]
        compiled = subprocess.run(command, cwd=entry["directory"], capture_output=True, text=True)
        assert compiled.returncode == 0, compiled.stderr[-3000:]
        # ELF e_machine, a little-endian u16 at offset 18: 183 is EM_AARCH64.
        header = (Path(entry["directory"]) / obj).read_bytes()[:20]
        assert int.from_bytes(header[18:20], "little") == ELF_MACHINE_AARCH64, name
    (dump,) = [d for d in build.rglob("*.vect") if "loop" in d.name]
    found = vectorized.run_elements_sections(dump.read_text())
    assert set(found) == vectorized.expected_instantiations()
    scalar = [key for key, bodies in found.items() if "LOOP VECTORIZED" not in "\n".join(bodies)]
    assert not scalar, f"not vectorized for aarch64: {sorted(scalar)}"


# --- the torch the build was made for -------------------------------------------------


def test_the_build_records_its_torch_version():
    from fusedopt import _build

    assert _build.torch_version == str(torch.__version__)
    assert _extension.loaded()


def test_configure_records_the_torch_it_builds_against(tmp_path):
    result = configure(tmp_path / "b")
    assert result.returncode == 0, result.stderr
    ninja = (tmp_path / "b" / "build.ninja").read_text()
    assert re.search(rf'FUSEDOPT_TORCH_VERSION=\\?"{re.escape(str(torch.__version__))}', ninja)


def test_another_torch_is_refused_with_how_to_rebuild():
    module, error = _extension.load("2.99.0+other")
    assert module is None
    assert f"built against torch {torch.__version__}" in error
    assert "this is torch 2.99.0+other" in error
    assert "pip install . --no-build-isolation" in error


def test_import_under_another_torch_leaves_c_unloaded_and_steps_in_python():
    """`import fusedopt` under a torch other than the build's: _C is never
    loaded, the pure-Python backends step, and report() says how to rebuild."""
    script = textwrap.dedent(
        """
        import sys, warnings
        import torch
        torch.__version__ = "2.99.0+other"
        import fusedopt
        from fusedopt import _extension
        assert not _extension.loaded()
        assert "fusedopt._C" not in sys.modules, "the mismatched _C was loaded"
        text = fusedopt.report()
        assert "built against torch" in text and "--no-build-isolation" in text, text
        p = torch.ones(3, requires_grad=True)
        p.grad = torch.ones(3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = fusedopt.AdamW([p], lr=0.1)
        assert any("this is torch 2.99.0+other" in str(w.message) for w in caught)
        opt.step()
        assert "-> reference" in fusedopt.report(opt)
        print("refused")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(Path(fusedopt.__file__).parents[1])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused" in result.stdout


# --- the CUDA architecture list --------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("nvcc") is None or torch.version.cuda is None,
    reason="needs nvcc and a CUDA build of torch to configure the CUDA kernels",
)
def test_cmake_cuda_architectures_given_by_the_user_is_honoured(tmp_path):
    result = configure(tmp_path / "b", "-DCMAKE_CUDA_ARCHITECTURES=86-real", cuda="1")
    assert result.returncode == 0, result.stderr
    assert "architectures 86-real (from -DCMAKE_CUDA_ARCHITECTURES" in result.stdout
    ninja = (tmp_path / "b" / "build.ninja").read_text()
    assert set(re.findall(r"arch=compute_(\d+)", ninja)) == {"86"}


def test_two_different_cuda_architecture_lists_are_refused(tmp_path):
    result = configure(
        tmp_path / "b", "-DCMAKE_CUDA_ARCHITECTURES=86-real", env_archs="90-real", cuda="1"
    )
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert "two CUDA architecture lists differ" in message
    assert "FUSEDOPT_CUDA_ARCHS='90-real'" in message
    assert "CMAKE_CUDA_ARCHITECTURES='86-real'" in message
