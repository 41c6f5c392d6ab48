"""fusedopt's benchmark harness, run as `fusedopt-bench` or
`python -m fusedopt.bench` (cli.py says what it takes).

    cli.py          the command: arguments, progress bar, CPU or GPU run, study
    workloads.py    the workloads' shapes and the bytes model
    competitors.py  who steps: torch's paths, fusedopt's backends, other libraries
    timing.py       interleaved rounds, min/median/max, the busy-machine rule
    roofline.py     the in-place a += s*b roofline and GB/s from counted bytes
    cpu.py          the CPU run: cells, their tables and CSV rows
    gpu.py          the GPU harness (CUDA events; bench/bench_cuda.py, bench_triton.py)
    output.py       the results folder, CSV with provenance (provenance.py), plots
    decay.py        --study decay: the weight-decay modes on a small task
"""
