"""fusedopt-bench (python/fusedopt/bench): the command on a tiny workload
writes its table, CSV (with provenance) and plots into --out and touches no
tracked file; the busy-machine rule; the GB/s and roofline arithmetic; the
competitors' bytes model; the decay study's grid and heatmap."""

import csv
import subprocess

import pytest
import torch
from _cuda_tools import REPO
from fusedopt.bench import cli, competitors, cpu, decay, roofline, timing, workloads

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROVENANCE = ("date", "git_rev", "torch", "cpu", "cores", "command")


@pytest.fixture
def one_thread():
    """The CLI tests check outputs, not speed: on a shared 2-core machine a
    second torch thread waiting for a busy core made them 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def git_status() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_writes_table_csv_and_plots_into_out(tmp_path, capsys, monkeypatch, one_thread):
    # 2 x 4 MiB: the test checks the outputs, not the machine's bandwidth.
    monkeypatch.setattr(roofline, "QUICK_ROOFLINE_ELEMENTS", 2**20)
    before = git_status()
    args = ["--quick", "--workload", "4x1024", "--optim", "adamw", "--repeats", "2"]
    args += ["--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    for text in ("torch fused", "fusedopt cpu", roofline.NAME, "median ms", "STREAM"):
        assert text in out, text
    rows = read_csv(tmp_path / "run" / "results.csv")
    names = [r["competitor"] for r in rows]
    assert names == [
        "torch for-loop",
        "torch foreach",
        "torch fused",
        "fusedopt cpu",
        roofline.NAME,
    ]
    for row in rows:
        assert all(row[key] for key in PROVENANCE), row
        assert row["command"].startswith("fusedopt-bench --quick --workload 4x1024")
        assert float(row["min_ms"]) <= float(row["median_ms"]) <= float(row["max_ms"])
        assert row["repeats"] == "2"
    assert (tmp_path / "run" / "4x1024.png").read_bytes().startswith(PNG_MAGIC)
    assert git_status() == before


def test_default_out_is_a_new_folder_under_bench_out(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    args = ["--quick", "--workload", "2x64", "--optim", "sgd", "--torch", "fused"]
    assert (
        cli.main([*args, "--repeats", "1", "--no-plots", "--no-progress", "--device", "cpu"]) == 0
    )
    (run,) = (tmp_path / "bench-out").iterdir()
    assert [p.name for p in run.iterdir()] == ["results.csv"]


def test_out_refuses_a_folder_git_tracks():
    with pytest.raises(SystemExit, match="tracked by git"):
        cli.main(["--out", str(REPO / "bench" / "results"), "--quick"])


def test_busy_rule():
    quiet = timing.Stats((1.0, 1.05, 1.1, 5.0))  # one slow step moves the max only
    assert quiet.spread == pytest.approx(1.075) and not quiet.busy
    edge = timing.Stats((1.0, timing.BUSY_SPREAD, timing.BUSY_SPREAD))
    assert not edge.busy
    busy = timing.Stats((24.9, 76.9, 80.0))  # issue 11's torch fused
    assert busy.busy and busy.median == 76.9 and busy.min == 24.9 and busy.max == 80.0
    rows = [
        {"busy": 0, "median_over_min": "1.1", "competitor": "a", "workload": "w", "optimizer": "o"},
        {
            "busy": 1,
            "median_over_min": "3.088",
            "competitor": "torch fused",
            "workload": "2000 x 4096",
            "optimizer": "AdamW",
            "median_ms": "76.9",
            "min_ms": "24.9",
        },
    ]
    warning = cpu.busy_warning(rows)
    assert "1 of 2 cells" in warning and "torch fused on 2000 x 4096" in warning
    assert cpu.busy_warning(rows[:1]) is None
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        timing.interleaved({"x": lambda: None}, warmup=0, repeats=0)


def test_interleaved_steps_alternate():
    calls = []
    stats = timing.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 1, 2
    )
    assert calls == ["a", "b"] * 3
    assert [len(s.samples) for s in stats.values()] == [2, 2]


def test_gb_per_s_and_roofline_arithmetic():
    assert roofline.gb_per_s(28, 1_000_000, 1e-3) == pytest.approx(28.0)
    w = workloads.Workload("w", lambda: [(1000,), (3000,)])
    comps, _ = competitors.competitors("AdamW", ["cpu"], ["fused"], "cpu")
    plan = cpu.Plan(w, "AdamW", comps, 0)
    roof_elements = 2_000_000
    stats = {
        "torch fused": timing.Stats((3.6e-6, 4e-6, 9e-6)),
        "fusedopt cpu": timing.Stats((1.8e-6, 2e-6, 3e-6)),
        roofline.NAME: timing.Stats((1e-3, 1e-3, 2e-3)),
    }
    rows = {r["competitor"]: r for r in cpu.cell_rows(plan, stats, roof_elements)}
    roof_gbs = 12 * roof_elements / 1e-3 / 1e9  # 24 GB/s
    assert rows[roofline.NAME]["gb_per_s"] == f"{roof_gbs:.2f}"
    ours = rows["fusedopt cpu"]
    assert ours["bytes_per_param"] == 28 and ours["params"] == 4000
    assert ours["gb_per_s"] == f"{28 * 4000 / 2e-6 / 1e9:.2f}"  # 56: above the roofline
    assert ours["fraction_of_roofline"] == f"{28 * 4000 / 2e-6 / 1e9 / roof_gbs:.3f}"
    assert ours["speedup_vs_torch"] == "2.000" and ours["busy"] == 0
    assert rows["torch fused"]["busy"] == 0 and rows["torch fused"]["speedup_vs_torch"] == "1.000"


def test_competitors_bytes_model_and_skips(monkeypatch):
    assert competitors.optimizer_names("AdamW, sgd") == ["AdamW", "SGD"]
    assert competitors.optimizer_names("all") == list(competitors.ENTRIES)
    with pytest.raises(ValueError, match="unknown optimizer 'adamx'.*AdamW"):
        competitors.optimizer_names("adamx")
    monkeypatch.setattr(competitors, "module_found", lambda name: False)
    comps, skipped = competitors.competitors("AdamW", ["cpu"], list(competitors.TORCH_PATHS), "cpu")
    per = {c.name: c.bytes_per_element(torch.bfloat16) for c in comps}
    # torch keeps bf16 states for bf16 params (14 B), fusedopt fp32 ones (22 B).
    assert per == {"torch for-loop": 14, "torch foreach": 14, "torch fused": 14, "fusedopt cpu": 22}
    assert "DeepSpeedCPUAdam: skipped, deepspeed is not installed" in skipped
    assert "torchao AdamW8bit: skipped, torchao is not installed" in skipped
    int8 = competitors.Competitor("8-bit", lambda ps: None, 2, competitors.INT8_STATE_BYTES)
    assert int8.bytes_per_element(torch.float32) == 12 + 2 * 2
    lion, skipped = competitors.competitors("Lion", ["cpu"], ["fused"], "cpu")
    assert [c.name for c in lion] == ["fusedopt cpu"] and skipped == [
        "torch: torch.optim has no Lion"
    ]


def test_workload_names():
    w = workloads.workload("8x1024:bf16")
    assert (w.numel(), w.dtype, len(w.shapes())) == (8192, torch.bfloat16, 8)
    assert workloads.workload("GPT-2 small (124M), bf16").numel() == 124_439_808
    with pytest.raises(ValueError, match="COUNTxNUMEL"):
        workloads.workload("GPT-3")


def test_decay_grid_trains_each_cell_as_its_own_run():
    """A batched grid's cell equals that cell trained alone."""
    data = decay.make_data()
    adamw = decay.modes(3)[1]
    grid = decay.train_grid(adamw, data, steps=5)
    alone = decay.Mode(adamw.name, adamw.make, adamw.lrs[2:], adamw.wds[1:2])
    (single,) = decay.train_grid(alone, data, steps=5)
    (same,) = [
        r for r in grid if (r["lr"], r["weight_decay"]) == (single["lr"], single["weight_decay"])
    ]
    # fp32 sums in another order (batched matmuls): a few ulps of the loss.
    assert same["test_loss"] == pytest.approx(single["test_loss"], rel=1e-5)
    assert len(grid) == 9 and len({r["test_loss"] for r in grid}) > 1  # the cells differ


def test_decay_study_writes_heatmap_and_csv(tmp_path, capsys):
    args = ["--study", "decay", "--quick", "--steps", "3", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    rows = read_csv(tmp_path / "decay_study.csv")
    assert len(rows) == 5 * 3 * 3
    assert {r["mode"] for r in rows} == {m.name for m in decay.modes(3)}
    assert all(r["git_rev"] and r["command"] for r in rows)
    assert (tmp_path / "decay_study.png").read_bytes().startswith(PNG_MAGIC)
    assert "best test loss" in capsys.readouterr().out


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU is present: this checks machines without one"
)
def test_device_cuda_without_gpu_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        cli.main(["--device", "cuda", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_gpu_run_writes_csv_and_plots(tmp_path, monkeypatch, capsys):
    """The GPU path of the command, its measuring (fusedopt.bench.gpu.run)
    replaced by rows made as gpu.report makes them: CSV and one plot per
    workload, with the copy bandwidth as the roofline line."""
    from fusedopt.bench import gpu

    def fake_run(cases, workloads, dtype, backends, **kwargs):
        rows = []
        for case in cases:
            impls = gpu.implementations(case, dtype, backends)
            samples = {i.name: gpu.Samples([1e-4] * 3, [1e-3, 2e-3, 4e-3]) for i in impls}
            for name, make_shapes in workloads.items():
                shapes = make_shapes()
                rows += gpu.report(case.name, name, shapes, dtype, impls, samples, 3000.0)
        return [{**row, "gpu": "fake"} for row in rows]

    monkeypatch.setattr(gpu, "run", fake_run)
    monkeypatch.setattr(gpu, "torch_has", lambda entry, path, device: path == "fused")
    args = cli.parse_args(["--workload", "4x1024", "--optim", "adamw", "--out", str(tmp_path)])
    assert gpu.main(args, ["--workload", "4x1024"], tmp_path) == 0
    rows = read_csv(tmp_path / "results.csv")
    assert [r["implementation"] for r in rows] == [
        "torch fused",
        "fusedopt cuda",
        "fusedopt triton",
    ]
    assert all(r["kernel_max_ms"] == "4.0000" and r["command"] for r in rows)
    assert (tmp_path / "4x1024.png").read_bytes().startswith(PNG_MAGIC)
