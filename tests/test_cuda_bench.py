"""The GPU benchmarks and `make gpu-test` on a machine without a GPU: the
benchmarks say so and exit 0, `make gpu-test` and FUSEDOPT_REQUIRE_GPU=1 fail
at once, loudly. And the parts of the GPU harness that need no GPU: the
workloads' shapes, the bytes model, the memory plan, the launch count from
profiler events, the report, and which skips FUSEDOPT_REQUIRE_GPU=1 fails."""

import os
import subprocess
import sys
from types import SimpleNamespace

import conftest
import pytest
import torch
from _cuda_tools import REPO
from fusedopt.bench import gpu, workloads
from helpers import BackendCase

sys.path.insert(0, str(REPO / "bench"))
import bench_cuda  # noqa: E402
import gpu_report  # noqa: E402

no_gpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU is present: this checks the machines without one"
)
# H100 80GB HBM3: 81,559 MiB, as nvidia-smi reported it on a machine lent here.
H100_BYTES = 81_559 * 2**20


def _run(args, **env):
    return subprocess.run(
        args, capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=600
    )


@no_gpu_only
def test_bench_cuda_without_gpu_exits_0():
    result = _run([sys.executable, "bench/bench_cuda.py"])
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU is present" in result.stdout


@no_gpu_only
def test_bench_triton_without_gpu_exits_0():
    """Its interpreter mode: correctness, launches, host time (few tensors)."""
    result = _run(
        [sys.executable, "bench/bench_triton.py", "--tensors", "4", "--repeats", "1"],
        TRITON_INTERPRET="1",
    )
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU is present" in result.stdout
    assert "kernel launches per step" in result.stdout


@no_gpu_only
def test_gpu_test_fails_at_once_without_gpu():
    result = _run(["bash", "scripts/gpu_test.sh"], FUSEDOPT_PYTHON=sys.executable)
    assert result.returncode == 2
    assert "gpu-test: FAILED" in result.stderr and "no CUDA GPU" in result.stderr


@no_gpu_only
def test_require_gpu_stops_pytest_at_once_without_gpu():
    result = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        FUSEDOPT_REQUIRE_GPU="1",
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "torch.cuda.is_available() is False" in result.stderr


def test_only_gpu_tests_skips_fail_under_require_gpu():
    def item(marker=None, **params):
        return SimpleNamespace(
            get_closest_marker=lambda name: marker if name == "gpu" else None,
            callspec=SimpleNamespace(params=params),
        )

    assert conftest.is_gpu_test(item(marker=object()))
    assert conftest.is_gpu_test(item(backend=BackendCase("triton", "cuda")))
    assert not conftest.is_gpu_test(item(backend=BackendCase("triton", "cpu"), device="cuda"))
    assert not conftest.is_gpu_test(SimpleNamespace(get_closest_marker=lambda name: None))
    assert conftest.skip_fails(True, "no CUDA GPU on this machine")
    assert conftest.skip_fails(True, "cuda: fusedopt._C was built without CUDA kernels")
    assert not conftest.skip_fails(True, "needs two GPUs")
    assert not conftest.skip_fails(False, "needs the Triton interpreter")


def test_workloads():
    def count(shapes):
        return len(shapes), sum(torch.Size(s).numel() for s in shapes)

    assert count(workloads.gpt2_small_shapes()) == (148, 124_439_808)
    # Llama-3.2-1B's published size: 1.24B params (tied embeddings).
    assert count(workloads.llama_3_2_1b_shapes()) == (146, 1_235_814_400)
    assert count(gpu.WORKLOADS["2000 x 4096"]()) == (2000, 8_192_000)
    assert count(gpu.WORKLOADS["one 64M tensor"]()) == (1, 64 * 2**20)


def test_bytes_model():
    """bench/README.md's table: fusedopt keeps fp32 states, torch the param's dtype."""

    def per_element(case, dtype):
        return {i.name: i.bytes_per_element(dtype) for i in gpu.implementations(case, dtype)}

    adamw, sgd = bench_cuda.CASES["AdamW"], bench_cuda.CASES["SGD"]
    (amsgrad,) = bench_cuda.cases(["AdamW"], amsgrad=True)
    torch_paths = ("torch for-loop", "torch foreach", "torch fused")
    fusedopt_backends = ("fusedopt cuda", "fusedopt triton")
    for case, dtype, torch_bytes, fusedopt_bytes in (
        (adamw, torch.float32, 28, 28),
        (amsgrad, torch.float32, 36, 36),
        (adamw, torch.bfloat16, 14, 22),
        (adamw, torch.float16, 14, 22),
        (sgd, torch.float32, 20, 20),
        (sgd, torch.bfloat16, 10, 14),
    ):
        got = per_element(case, dtype)
        assert got == {
            **dict.fromkeys(torch_paths, torch_bytes),
            **dict.fromkeys(fusedopt_backends, fusedopt_bytes),
        }, (case.name, dtype)
    assert workloads.bytes_per_element(torch.float32, amsgrad=True) == 36
    assert workloads.bytes_per_element(torch.bfloat16) == 22


def test_llama_workload_fits_an_h100():
    """p and g once, five implementations' m and v, torch foreach's sqrt(v):
    52 B per param, 64 GB, inside an H100's memory with the headroom."""
    impls = gpu.implementations(bench_cuda.CASES["AdamW"], torch.float32)
    numel = sum(torch.Size(s).numel() for s in workloads.llama_3_2_1b_shapes())
    need = gpu.plan_bytes(numel, torch.float32, impls)
    assert need == numel * (8 + 5 * 8 + 4)
    assert need < gpu.MEMORY_HEADROOM * H100_BYTES


def test_launches_from_profiler_events():
    """Kernels and copies; neither the CPU's events nor the GPU side of a
    record_function range (torch's "Optimizer.step#AdamW.step")."""
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def event(name, device_type=cuda, **kind):
        return SimpleNamespace(name=name, device_type=device_type, **kind)

    step = "Optimizer.step#AdamW.step"
    torch_2_11 = [  # no activity_type
        event(step, cpu),
        event("cudaLaunchKernel", cpu),
        event(step),
        event("void at::native::multi_tensor_apply_kernel<...>"),
        event("_element_kernel"),
        event("Memcpy HtoD (Pageable -> Device)"),
        event("Memset (Device)"),
    ]
    assert gpu.classify_device_events(torch_2_11) == (2, 2)
    assert gpu.classify_device_events(torch_2_11[:3]) is None
    torch_2_14 = [
        event(step, cpu, activity_type="cpu_op"),
        event(step, activity_type="gpu_user_annotation"),
        event("_element_kernel", activity_type="kernel"),
        event("Memcpy HtoD (Pinned -> Device)", activity_type="gpu_memcpy"),
        event("CUPTI overhead", activity_type="overhead"),
    ]
    assert gpu.classify_device_events(torch_2_14) == (1, 1)


def test_gpu_slug():
    assert gpu.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu.gpu_slug("NVIDIA H200") == "nvidia-h200"


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_ok" />
<testcase classname="tests.test_a" name="test_bad[cuda]">
<failure message="AssertionError: 1 != 2&#10;more">trace</failure></testcase>
<testcase classname="tests.test_b" name="test_two_gpus">
<skipped message="needs two GPUs" /></testcase>
<testcase classname="tests.test_b" name="test_two_more">
<skipped message="needs two GPUs" /></testcase>
</testsuite></testsuites>"""


def test_report(tmp_path):
    summary = gpu_report.junit_summary(JUNIT)
    assert summary["counts"] == {"passed": 1, "failed": 1, "skipped": 2}
    assert summary["failures"] == [("tests.test_a::test_bad[cuda]", "AssertionError: 1 != 2")]
    assert summary["skips"] == {"needs two GPUs": 2}

    (tmp_path / "phases.tsv").write_text("build\t0\t61\ntests\t1\t170\nbench_cuda\t124\t100\n")
    (tmp_path / "junit.xml").write_text(JUNIT)
    (tmp_path / "bench_cuda.log").write_text("AdamW, float32, GPT-2 small\n")
    text = gpu_report.build_report(tmp_path, {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0"})
    assert "# fusedopt `make gpu-test` on NVIDIA H100 80GB HBM3" in text
    assert "## Result: FAILED (tests, bench_cuda)" in text
    assert "| bench_cuda | 124 (its time limit) | 100 |" in text
    assert "1 passed, 1 failed, 0 errors, 2 skipped." in text
    assert "- `tests.test_a::test_bad[cuda]`: AssertionError: 1 != 2" in text
    assert "| 2 | needs two GPUs |" in text
    assert "AdamW, float32, GPT-2 small" in text
    assert "(bench_triton.py: no output was written)" in text


FAKE_GPU_CONFTEST = """
import torch

torch.cuda.is_available = lambda: True  # what a GPU machine's torch says
exec(compile(open({path!r}).read(), {path!r}, "exec"))
"""
SKIPPING_TESTS = """
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Case:
    device: str


@pytest.mark.gpu
def test_gpu_skips():
    pytest.skip("no CUDA GPU on this machine")


@pytest.mark.gpu
@pytest.mark.skipif(True, reason="no CUDA GPU")
def test_gpu_skipped_by_mark():
    pass


@pytest.mark.gpu
def test_two_gpus():
    pytest.skip("needs two GPUs")


@pytest.mark.parametrize("case", [Case("cuda"), Case("cpu")], ids=["cuda", "cpu"])
def test_backend_rows(case):
    pytest.skip("the backend was not built")


def test_plain():
    pytest.skip("timm is not installed")
"""


def test_require_gpu_turns_gpu_skips_into_failures(tmp_path):
    """tests/conftest.py's hook in a pytest run that believes it has a GPU:
    the GPU tests' skips fail (at setup: an error), the others stay skips."""
    (tmp_path / "conftest.py").write_text(
        FAKE_GPU_CONFTEST.format(path=str(REPO / "tests" / "conftest.py"))
    )
    (tmp_path / "test_skips.py").write_text(SKIPPING_TESTS)
    junit = tmp_path / "junit.xml"
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    result = subprocess.run(
        [*args, "-W", "ignore::pytest.PytestUnknownMarkWarning", f"--junitxml={junit}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "FUSEDOPT_REQUIRE_GPU": "1"},
        timeout=300,
    )
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    summary = gpu_report.junit_summary(junit.read_text())
    failed = sorted(test_id.split("::")[1] for test_id, _ in summary["failures"])
    assert failed == ["test_backend_rows[cuda]", "test_gpu_skipped_by_mark", "test_gpu_skips"]
    assert all("FUSEDOPT_REQUIRE_GPU=1" in message for _, message in summary["failures"])
    assert summary["skips"] == {
        "needs two GPUs": 1,
        "the backend was not built": 1,
        "timm is not installed": 1,
    }


def test_table_rows(capsys):
    """GB/s from the bytes model and the kernel time's median, the speed
    against torch fused, launches from the profiler or the launcher."""
    impls = gpu.implementations(bench_cuda.CASES["AdamW"], torch.float32)
    shapes = workloads.gpt2_small_shapes()
    ms = {"torch for-loop": 4.0, "torch foreach": 2.0, "torch fused": 1.5}
    samples = {
        i.name: gpu.Samples(
            host_s=[1e-4, 3e-4, 2e-4],
            kernel_s=[ms.get(i.name, 1.0) / 1e3] * 3,
            launches=None if i.name == "fusedopt triton" else (3, 1),
            counted_launches=2 if i.name == "fusedopt triton" else None,
        )
        for i in impls
    }
    rows = gpu.report("AdamW", "GPT-2", shapes, torch.float32, impls, samples, 3000.0)
    by_name = {row["implementation"]: row for row in rows}
    cuda = by_name["fusedopt cuda"]
    assert cuda["gb_per_s"] == f"{28 * 124_439_808 / 1e-3 / 1e9:.1f}"  # 3484.3
    assert cuda["fraction_of_copy"] == f"{28 * 124_439_808 / 1e-3 / 1e9 / 3000:.4f}"
    assert cuda["speedup_vs_torch"] == "1.500"
    assert (cuda["launches"], cuda["copies"], cuda["host_ms"]) == ("3", "1", "0.2000")
    triton = by_name["fusedopt triton"]
    assert (triton["launches"], triton["copies"]) == ("2 (counted)", "?")
    assert by_name["torch for-loop"]["speedup_vs_torch"] == "0.375"
    assert "fusedopt triton" in capsys.readouterr().out
