"""The CUDA backend as built here: the extension imports without a GPU, says
what it built, registers a CUDA kernel for every rule's op, refuses what the
kernels cannot take with our own errors, and CMake's FUSEDOPT_CUDA and
FUSEDOPT_TESTING switches decide as documented."""

import os
import re
import shutil
import subprocess
import sys

import fusedopt
import pytest
import torch
from _cuda_tools import REPO, cuda_build_expected
from _op_hyper import OP_HYPER, op_lists
from fusedopt import backends
from fusedopt._C import cuda_archs, cuda_built, kernel_arg_bytes
from fusedopt.registry import RULES

DEFAULT_ARCHS = "80-real,90-real,100-real,120"  # CMakeLists.txt FUSEDOPT_DEFAULT_CUDA_ARCHS
OVERLOADS = ["default", "tensor_lr"]


def test_cuda_kernels_built_where_nvcc_and_cuda_torch_are():
    # FUSEDOPT_CUDA=auto: built exactly when nvcc and a CUDA torch are present
    # (both are, on this project's machines).
    assert cuda_built == int(cuda_build_expected())
    if cuda_built:
        want = os.environ.get("FUSEDOPT_CUDA_ARCHS", DEFAULT_ARCHS).replace(";", ",")
        assert cuda_archs == want


def _nvcc_version() -> tuple[int, int]:
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    major, minor = re.search(r"release (\d+)\.(\d+)", out).groups()
    return int(major), int(minor)


def test_kernel_parameter_space():
    # 32,764 bytes with nvcc >= 12.1 (mta/args.h); the classic 4 KB only when
    # CMake found an older nvcc, which also defines FUSEDOPT_SMALL_KERNEL_ARGS
    # for the host code.
    small = cuda_built and shutil.which("nvcc") is not None and _nvcc_version() < (12, 1)
    assert kernel_arg_bytes == (4096 if small else 32764)


needs_cuda_build = pytest.mark.skipif(
    not cuda_built, reason="fusedopt._C was built without CUDA kernels: none to call"
)


@needs_cuda_build
@pytest.mark.parametrize("overload", OVERLOADS)
@pytest.mark.parametrize("rule", RULES)
def test_cuda_kernel_registered(rule, overload):
    name = f"fusedopt::{rule}_step_" + ("" if overload == "default" else ".tensor_lr")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")


@needs_cuda_build
@pytest.mark.parametrize("overload", OVERLOADS)
@pytest.mark.parametrize("rule", RULES)
def test_cuda_kernel_refuses_cpu_tensors_with_our_error(rule, overload):
    # No CUDA tensor can exist here, so the dispatcher would pick the CPU
    # kernel; redispatching to the CUDA key runs our CUDA kernel's own checks,
    # which must refuse before touching the driver (else: "CUDA driver version
    # is insufficient").
    op = getattr(getattr(torch.ops.fusedopt, f"{rule}_step_"), overload)
    lr = 1e-3 if overload == "default" else torch.tensor(1e-3)
    params, grads, states, steps = op_lists(rule, [4])
    before = [t.clone() for t in (*params, *grads, *states, *steps)]
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    with pytest.raises(RuntimeError, match="this kernel takes CUDA tensors, got params on cpu"):
        op.redispatch(keys, params, grads, states, steps, lr=lr, **OP_HYPER[rule])
    after = (*params, *grads, *states, *steps)
    assert all(torch.equal(a, b) for a, b in zip(after, before)), "a refused call writes nothing"


def test_cuda_backend_availability():
    reason = backends.get("cuda").unavailable_reason()
    if not cuda_built:
        assert "built without CUDA kernels" in reason
    elif torch.cuda.is_available():
        assert reason is None
    else:
        assert reason == "torch sees no CUDA device"


@pytest.mark.parametrize("make", [fusedopt.AdamW, fusedopt.Adam, fusedopt.SGD])
def test_cuda_backend_refuses_cpu_params(make):
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.ones(3)
    opt = make([param], lr=1e-3, backend="cuda")
    with pytest.raises(ValueError, match="backend='cuda' cannot step"):
        opt.step()
    assert torch.equal(param.detach(), torch.zeros(3))


@pytest.mark.parametrize(
    "capability,runs",
    [
        ((8, 0), True),
        ((8, 6), True),
        ((8, 9), True),  # sm_80 SASS runs on 8.x
        ((9, 0), True),
        ((10, 0), True),
        ((10, 3), True),
        ((12, 0), True),
        ((12, 1), True),
        ((13, 0), True),  # compute_120 PTX, JIT-compiled
        ((7, 5), False),
        ((11, 0), False),  # no sm_11x SASS, and the compute_120 PTX needs 12.0+
    ],
)
def test_cuda_backend_arch_coverage(capability, runs):
    reason = backends.CudaBackend.arch_reason(capability, DEFAULT_ARCHS)
    assert (reason is None) == runs, reason


def _configure(tmp_path, **env):
    """Runs CMake's configure step alone (no compile) with the given env."""
    full_env = {**os.environ, **env}
    return subprocess.run(
        [
            "cmake",
            "-S",
            str(REPO),
            "-B",
            str(tmp_path / "build"),
            f"-DPython_EXECUTABLE={sys.executable}",
        ],
        env=full_env,
        capture_output=True,
        text=True,
    )


def test_cmake_cuda_0_skips_the_kernels_and_testing_1_adds_the_test_ops(tmp_path):
    # One configure for both switches: each costs ~4 s.
    result = _configure(tmp_path, FUSEDOPT_CUDA="0", FUSEDOPT_TESTING="1")
    assert result.returncode == 0, result.stderr
    assert "fusedopt: CUDA kernels NOT built (FUSEDOPT_CUDA=0)" in result.stdout
    assert "fusedopt: building fusedopt._testing (FUSEDOPT_TESTING=1)" in result.stdout


def test_cmake_fusedopt_cuda_1_fails_clearly_without_nvcc(tmp_path):
    result = _configure(
        tmp_path, FUSEDOPT_CUDA="1", CUDACXX="/nonexistent/nvcc", PATH="/usr/bin:/bin"
    )
    assert result.returncode != 0
    assert "FUSEDOPT_CUDA=1 requires the CUDA kernels, but: no CUDA compiler" in result.stderr


@pytest.mark.skipif(not cuda_build_expected(), reason="needs nvcc and a CUDA build of torch")
def test_cmake_auto_says_which_archs(tmp_path):
    result = _configure(tmp_path, FUSEDOPT_CUDA_ARCHS="")
    assert result.returncode == 0, result.stderr
    assert (
        "fusedopt: building the CUDA kernels for architectures 80-real;90-real;100-real;120"
        in result.stdout
    )


def test_cmake_fusedopt_testing_2_fails_configure_clearly(tmp_path):
    result = _configure(tmp_path, FUSEDOPT_CUDA="0", FUSEDOPT_TESTING="2")
    assert result.returncode != 0
    assert "FUSEDOPT_TESTING must be 0 or 1, got '2'" in result.stderr
