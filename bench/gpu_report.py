"""The report of `make gpu-test` (scripts/gpu_test.sh): one markdown file
with the machine, the versions, the commit, each phase's exit status and
time, the test summary with every failure and the skips by reason, and the
benchmarks' tables.

    python bench/gpu_report.py --logs DIR --out bench/results/gpu-<gpu>.md
    python bench/gpu_report.py --slug     # prints <gpu> for the file names

DIR holds what gpu_test.sh wrote: phases.tsv (phase, exit status, seconds),
build.log, pytest.log, junit.xml, bench_cuda.log, bench_triton.log; a
missing file is reported as missing.
"""

from __future__ import annotations

import argparse
import collections
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# Failures listed one by one in the report; the rest are counted (pytest.log
# travels beside the report with all of them).
MAX_LISTED_FAILURES = 60
# A message's first line, cut here: enough for an assertion's or error's gist.
MAX_MESSAGE_CHARS = 200
BUILD_LOG_TAIL_LINES = 30
# Exit statuses of a phase that `timeout` stopped (SIGINT, then SIGKILL).
TIMEOUT_STATUSES = ("124", "137")


def junit_summary(xml_text: str) -> dict:
    """Counts, failures ([(test id, first line of the message)]) and skip
    reasons (Counter) of a pytest junit XML file."""
    root = ET.fromstring(xml_text)
    counts = collections.Counter()
    failures = []
    skips = collections.Counter()
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "").strip()
                first_line = message.splitlines()[0][:MAX_MESSAGE_CHARS] if message else ""
                if child.tag == "skipped":
                    skips[first_line] += 1
                else:
                    failures.append((test_id, first_line))
        counts[outcome] += 1
    return {"counts": counts, "failures": failures, "skips": skips}


def read(path: Path) -> str | None:
    return path.read_text(errors="replace") if path.exists() else None


def code_block(text: str | None, what: str) -> str:
    if text is None:
        return f"({what}: no output was written)\n"
    return f"```text\n{text.rstrip()}\n```\n"


def phases_table(tsv: str | None) -> tuple[str, list[str]]:
    """The phases' markdown table and the names of those that failed."""
    if tsv is None:
        return "(phases.tsv is missing: the run stopped before its first phase)\n", ["all"]
    lines = ["| phase | exit status | seconds |", "|---|---|---|"]
    failed = []
    for row in tsv.strip().splitlines():
        phase, status, seconds = row.split("\t")
        note = " (its time limit)" if status in TIMEOUT_STATUSES else ""
        lines.append(f"| {phase} | {status}{note} | {seconds} |")
        if status != "0":
            failed.append(phase)
    return "\n".join(lines) + "\n", failed


def tests_section(junit: str | None, pytest_log: str | None) -> str:
    if junit is None:
        tail = "\n".join((pytest_log or "").splitlines()[-20:]) or None
        return "No junit.xml: pytest did not finish. Its last lines:\n\n" + code_block(
            tail, "pytest"
        )
    summary = junit_summary(junit)
    counts = summary["counts"]
    out = [", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "errors", "skipped")) + ".\n"]
    if summary["failures"]:
        out.append("\n### Failures and errors\n")
        for test_id, message in summary["failures"][:MAX_LISTED_FAILURES]:
            out.append(f"- `{test_id}`: {message}")
        extra = len(summary["failures"]) - MAX_LISTED_FAILURES
        if extra > 0:
            out.append(f"- ... and {extra} more (pytest.log)")
        out.append("")
    if summary["skips"]:
        out.append("\n### Skips, by reason\n")
        out.append("| tests | reason |\n|---|---|")
        for reason, n in summary["skips"].most_common():
            out.append(f"| {n} | {reason.replace('|', '/')} |")
        out.append("")
    return "\n".join(out) + "\n"


def build_report(logs: Path, machine: dict[str, str]) -> str:
    phases, failed = phases_table(read(logs / "phases.tsv"))
    verdict = "FAILED (" + ", ".join(failed) + ")" if failed else "PASSED"
    build_log = read(logs / "build.log")
    build_tail = (
        None if build_log is None else "\n".join(build_log.splitlines()[-BUILD_LOG_TAIL_LINES:])
    )
    parts = [
        f"# fusedopt `make gpu-test` on {machine.get('gpu', 'an unknown GPU')}\n",
        ", ".join(f"{k}: {v}" for k, v in machine.items()) + "\n",
        f"## Result: {verdict}\n",
        phases,
        "## Tests (FUSEDOPT_REQUIRE_GPU=1, TRITON_INTERPRET=0)\n",
        tests_section(read(logs / "junit.xml"), read(logs / "pytest.log")),
        "## bench/bench_cuda.py\n",
        code_block(read(logs / "bench_cuda.log"), "bench_cuda.py"),
        "\n## bench/bench_triton.py\n",
        code_block(read(logs / "bench_triton.log"), "bench_triton.py"),
        f"\n## Build (last {BUILD_LOG_TAIL_LINES} lines)\n",
        code_block(build_tail, "build"),
    ]
    return "\n".join(parts)


def machine_info() -> dict[str, str]:
    """fusedopt.bench.gpu.provenance(), or what can be said without it (no
    GPU, or no fusedopt: its build failed)."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu": "no GPU", "torch": torch.__version__}
    try:
        from fusedopt.bench.gpu import provenance
    except ImportError as error:
        name = torch.cuda.get_device_name()
        return {"gpu": name, "torch": torch.__version__, "fusedopt": repr(error)}
    return provenance()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slug", action="store_true", help="print the GPU's name as a file name")
    parser.add_argument("--logs", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.slug:
        import torch
        from fusedopt.bench.gpu import gpu_slug

        print(gpu_slug(torch.cuda.get_device_name()))
        return 0
    if args.logs is None or args.out is None:
        parser.error("--logs and --out are needed (or --slug)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(build_report(args.logs, machine_info()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
