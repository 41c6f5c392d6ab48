"""The CUDA backend as built here: the extension imports without a GPU, says
what it built, registers its CUDA kernels, refuses what they cannot take with
our own errors, and CMake's FUSEDOPT_CUDA switch decides as documented."""

import os
import subprocess
import sys

import fusedopt
import pytest
import torch
from _cuda_tools import REPO, cuda_build_expected
from fusedopt import backends
from fusedopt._C import cuda_archs, cuda_built
from helpers import adam_hyper

DEFAULT_ARCHS = "80-real,90-real,100-real,120"  # CMakeLists.txt FUSEDOPT_DEFAULT_CUDA_ARCHS


def test_cuda_kernels_built_where_nvcc_and_cuda_torch_are():
    # FUSEDOPT_CUDA=auto: built exactly when nvcc and a CUDA torch are present
    # (both are, on this project's machines).
    assert cuda_built == int(cuda_build_expected())
    if cuda_built:
        want = os.environ.get("FUSEDOPT_CUDA_ARCHS", DEFAULT_ARCHS).replace(";", ",")
        assert cuda_archs == want


needs_cuda_build = pytest.mark.skipif(
    not cuda_built, reason="fusedopt._C was built without CUDA kernels: none to call"
)


@needs_cuda_build
@pytest.mark.parametrize("overload", ["default", "tensor_lr"])
def test_cuda_kernel_registered(overload):
    name = "fusedopt::adam_step_" + ("" if overload == "default" else ".tensor_lr")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")


def _lists(n=4):
    return (
        [torch.zeros(n)],
        [torch.ones(n)],
        [torch.zeros(n)],
        [torch.zeros(n)],
        [],
        [torch.zeros(())],
    )


HYPER = adam_hyper(weight_decay=0.0)


@needs_cuda_build
@pytest.mark.parametrize("overload", ["default", "tensor_lr"])
def test_cuda_kernel_refuses_cpu_tensors_with_our_error(overload):
    # No CUDA tensor can exist here, so the dispatcher would pick the CPU
    # kernel; redispatching to the CUDA key runs our CUDA kernel's own checks,
    # which must refuse before touching the driver (else: "CUDA driver version
    # is insufficient").
    op = getattr(torch.ops.fusedopt.adam_step_, overload)
    lr = 1e-3 if overload == "default" else torch.tensor(1e-3)
    params, *rest = _lists()
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    with pytest.raises(RuntimeError, match="this kernel takes CUDA tensors, got params on cpu"):
        op.redispatch(keys, params, *rest, lr=lr, **HYPER)
    assert torch.equal(params[0], torch.zeros(4)), "a refused call writes nothing"


def test_cuda_backend_availability():
    reason = backends.get("cuda").unavailable_reason()
    if not cuda_built:
        assert "built without CUDA kernels" in reason
    elif torch.cuda.is_available():
        assert reason is None
    else:
        assert reason == "torch sees no CUDA device"


def test_cuda_backend_refuses_cpu_params():
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.ones(3)
    opt = fusedopt.AdamW([param], backend="cuda")
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


def test_cmake_fusedopt_cuda_0_skips_the_kernels(tmp_path):
    result = _configure(tmp_path, FUSEDOPT_CUDA="0")
    assert result.returncode == 0, result.stderr
    assert "fusedopt: CUDA kernels NOT built (FUSEDOPT_CUDA=0)" in result.stdout


def test_cmake_fusedopt_cuda_1_fails_clearly_without_nvcc(tmp_path):
    result = _configure(
        tmp_path, FUSEDOPT_CUDA="1", CUDACXX="/nonexistent/nvcc", PATH="/usr/bin:/bin"
    )
    assert result.returncode != 0
    assert "FUSEDOPT_CUDA=1 requires the CUDA kernels, but: no CUDA compiler" in result.stderr


@pytest.mark.skipif(not cuda_build_expected(), reason="needs nvcc and a CUDA build of torch")
def test_cmake_auto_says_which_archs(tmp_path):
    result = _configure(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "fusedopt: building the CUDA kernels for architectures 80-real;90-real;100-real;120"
        in result.stdout
    )
