"""Test-wide set-up.

TRITON_INTERPRET must be set before any module with @triton.jit is imported
(else Triton looks for a GPU driver and finds none): the interpreter is how
the Triton kernels run on this GPU-less machine, and it only takes effect if
set first. `make gpu-test` sets it to 0, so that the Triton kernels compile
for the GPU.

FUSEDOPT_REQUIRE_GPU=1 (`make gpu-test`, scripts/gpu_test.sh) is for a machine
that has a GPU: the run stops at once if torch sees none, and a GPU test that
skips fails instead, with its reason. GPU tests are those marked `gpu` and the
rows parametrized with a backend on CUDA tensors (tests/helpers.py), whatever
their skip reason (a CUDA backend that was not built, a Triton that does not
import); only a skip for want of more GPUs than the machine has stays a skip.
"""

import os
import re

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")

REQUIRE_GPU = os.environ.get("FUSEDOPT_REQUIRE_GPU", "0") == "1"
# The skip reason of a test that needs more GPUs than this machine has
# (tests/test_gpu.py's "needs two GPUs"): the machine's size, not a failure.
GPU_COUNT_SKIP = re.compile(r"needs (two|three|four|\d+) GPUs")


def pytest_configure(config):
    if REQUIRE_GPU:
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError(
                "FUSEDOPT_REQUIRE_GPU=1 (make gpu-test) but torch.cuda.is_available() is False: "
                f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU here, so "
                "the GPU tests would only skip. Run without FUSEDOPT_REQUIRE_GPU on a machine "
                "without a GPU."
            )


def is_gpu_test(item) -> bool:
    """Marked `gpu`, or parametrized with a backend case on CUDA tensors."""
    if item.get_closest_marker("gpu") is not None:
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(getattr(value, "device", None) == "cuda" for value in params.values())


def skip_fails(gpu_test: bool, reason: str) -> bool:
    """Whether FUSEDOPT_REQUIRE_GPU=1 turns this skip into a failure."""
    return gpu_test and not GPU_COUNT_SKIP.search(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (REQUIRE_GPU and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if skip_fails(is_gpu_test(item), reason):
        report.outcome = "failed"
        report.longrepr = f"FUSEDOPT_REQUIRE_GPU=1: this GPU test skipped ({reason})"
