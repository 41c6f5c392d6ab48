"""bench/bench_cuda.py on a machine without a GPU: it says so and exits 0; its
bytes model is the one bench/README.md states."""

import subprocess
import sys

import pytest
import torch
from _cuda_tools import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_cuda  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the bench would run")
def test_bench_without_gpu_exits_0():
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_cuda.py")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU is present" in result.stdout


def test_bytes_model():
    assert bench_cuda.bytes_per_element(torch.float32, amsgrad=False) == 28
    assert bench_cuda.bytes_per_element(torch.float32, amsgrad=True) == 36
    assert bench_cuda.bytes_per_element(torch.bfloat16, amsgrad=False) == 22
    assert bench_cuda.bytes_per_element(torch.float16, amsgrad=False) == 22


def test_gpt2_small_workload():
    shapes = bench_cuda.gpt2_small_shapes()
    assert len(shapes) == 148
    assert sum(torch.Size(s).numel() for s in shapes) == 124_439_808
