"""Helpers of the CUDA tests that need no GPU: the built library, the
cuobjdump that ships in triton's wheel (the CUDA 13.0 toolkit on this
project's machines has none), and a reader of SASS and PTX for the checks of
Note [bit-identical backends] (kernels/mta.py), shared by the CUDA kernels'
tests (tests/test_cuda_sass.py) and the Triton ones (tests/triton_aot.py).
Importing it loads no part of fusedopt."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def cuda_build_expected() -> bool:
    """What FUSEDOPT_CUDA=auto must have decided on this machine."""
    return shutil.which("nvcc") is not None and torch.version.cuda is not None


def cuobjdump() -> str:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    assert tool.is_file(), f"triton's wheel should bundle cuobjdump at {tool}"
    return str(tool)


def run_cuobjdump(*args: str, path: Path | None = None) -> str:
    """cuobjdump's output on `path`, by default the built fusedopt._C."""
    if path is None:
        import fusedopt._C

        path = Path(fusedopt._C.__file__)
    return subprocess.run(
        [cuobjdump(), *args, str(path)], check=True, capture_output=True, text=True
    ).stdout


# --- SASS ------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with its modifiers: "FFMA.RZ", "MUFU.RSQ", "BRA"
    operands: str

    def target(self) -> int | None:
        """The address a BRA or CALL goes to."""
        if self.opcode.startswith(("BRA", "CALL")):
            found = re.search(r"0x([0-9a-f]+)", self.operands)
            return int(found.group(1), 16) if found else None
        return None


# "/*0c40*/  @!P0 FFMA R1, R2, R3, R4 ;": address, optional predicate, opcode, operands.
_SASS_LINE = re.compile(
    r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);"
)


def sass_functions(sass: str) -> dict[str, list[Instruction]]:
    """cuobjdump -sass output as {function name: its instructions}."""
    functions = {}
    for block in re.split(r"\n\s*Function : ", sass)[1:]:
        name, _, body = block.partition("\n")
        functions[name.strip()] = [
            Instruction(int(address, 16), opcode, operands.strip())
            for address, opcode, operands in _SASS_LINE.findall(body)
        ]
    return functions


def _innermost(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The spans that hold no other span: the element loops, not the
    persistent grid's loop over chunks around them (mta/launches.h), whose
    body computes a chunk's per-tensor scalars (in double, from device
    counts) once per chunk, before the element loops."""
    return [
        (a, b)
        for a, b in spans
        if not any((a, b) != (c, d) and a <= c and d <= b for c, d in spans)
    ]


def sass_loops(code: list[Instruction]) -> list[list[Instruction]]:
    """The body of every innermost loop: from a backward branch's target to
    the branch."""
    spans = []
    for branch in code:
        start = branch.target()
        if branch.opcode.startswith("BRA") and start is not None and start <= branch.address:
            spans.append((start, branch.address))
    return [[i for i in code if a <= i.address <= b] for a, b in _innermost(spans)]


def _subroutine(code: list[Instruction], start: int) -> list[Instruction]:
    """The instructions from `start` to its RET; none when an EXIT comes
    first: then the CALL is not a call but sm_80's way out of a loop
    (`@P0 CALL.REL.NOINC` to the instruction after the loop's branch)."""
    body = []
    for i in code:
        if i.address < start:
            continue
        if i.opcode.startswith("EXIT"):
            return []
        body.append(i)
        if i.opcode.startswith("RET"):
            return body
    return []


def sass_called(code: list[Instruction], body: list[Instruction]) -> list[Instruction]:
    """The instructions of every subroutine that a CALL in `body` reaches,
    directly or through other calls: each from its address to its RET."""
    seen, todo, out = set(), [i.target() for i in body if i.opcode.startswith("CALL")], []
    while todo:
        start = todo.pop()
        if start is None or start in seen:
            continue
        seen.add(start)
        called = _subroutine(code, start)
        out += called
        todo += [i.target() for i in called if i.opcode.startswith("CALL")]
    return out


def sass_main_body(code: list[Instruction]) -> list[Instruction]:
    """A function's instructions less its subroutines (the targets of its
    CALLs: the slow paths of IEEE division and square root, CUDA's pow)."""
    called = {i.address for i in sass_called(code, code)}
    return [i for i in code if i.address not in called]


_FP64_OPCODES = {"DADD", "DMUL", "DFMA", "DSETP", "DSET", "DMNMX", "DMMA"}


def is_fp64(opcode: str) -> bool:
    """Double arithmetic, compares and conversions (F2F.F32.F64, FRND.F64,
    MUFU.RCP64H): DEPBAR or LDG.E.64 are not."""
    return opcode.split(".")[0] in _FP64_OPCODES or ".F64" in opcode or "64H" in opcode


def contracted_fmas(body: list[Instruction]) -> int:
    """FFMAs (FFMA2, the paired fp32 FMA of sm_100/sm_120, included) beyond
    those of IEEE division, reciprocal and square root, which ptxas expands
    into FMAs whatever --fmad says, each exactly rounded. Measured in every
    element kernel of nvcc 13.0 and of triton 3.8's ptxas, sm_80 to sm_120:
    a division (div.rn.f32) is MUFU.RCP, 5 FFMA and FCHK (its slow path a
    subroutine); a reciprocal (rcp.rn.f32, 1 / x) MUFU.RCP and 2 FFMA; a
    square root (sqrt.rn.f32) MUFU.RSQ and 2 FFMA. So 3 FCHK + 2 RCP + 2 RSQ
    FFMAs are theirs, and any other is a multiply-add contraction (with
    contraction on, 2-40 per loop)."""
    ops = Counter(i.opcode for i in body)
    fmas = sum(n for op, n in ops.items() if op.startswith("FFMA"))
    return fmas - 3 * ops["FCHK"] - 2 * ops["MUFU.RCP"] - 2 * ops["MUFU.RSQ"]


# --- PTX -------------------------------------------------------------------------

# fp32 arithmetic without an explicit rounding mode: ptxas may contract a
# mul.f32 and an add.f32 into an FMA; with .rn it may not (PTX ISA, mul).
_PTX_FREE_F32 = re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:mul|add|sub)\.f32\b", re.M)
# Instructions that are not IEEE: approximate division, square root and
# reciprocal, and flushing subnormals to zero.
_PTX_INEXACT = re.compile(r"\b(?:div\.full|div\.approx|sqrt\.approx|rcp\.approx)\b|\.ftz\b")


def ptx_entries(ptx: str) -> dict[str, str]:
    """{kernel name: its body} of every .entry in a PTX module."""
    entries = {}
    # Each function runs to the next one's header (its body holds nested braces).
    for part in re.split(r"\n(?=(?:\.visible\s+|\.weak\s+)?\.(?:entry|func)\s)", ptx):
        if found := re.match(r"(?:\.visible\s+|\.weak\s+)?\.entry\s+(\w+)", part):
            entries[found.group(1)] = part
    return entries


def ptx_loops(body: str) -> list[str]:
    """The text of every innermost loop of a PTX function: from a label to a
    later branch back to it."""
    lines = body.splitlines()
    labels = {}
    spans = []
    for n, line in enumerate(lines):
        if found := re.match(r"\s*(\$\w+):", line):
            labels[found.group(1)] = n
        elif (found := re.search(r"\bbra(?:\.uni)?\s+(\$\w+);", line)) and found.group(1) in labels:
            spans.append((labels[found.group(1)], n))
    return ["\n".join(lines[a : b + 1]) for a, b in _innermost(spans)]


def ptx_facts(body: str) -> dict[str, int]:
    """What Note [bit-identical backends] asks of a kernel's PTX, as counts:
    FMAs (fma.rn.f32), fp32 arithmetic that ptxas may contract, non-IEEE
    instructions, and fp32 -> 16-bit conversions by rounding mode."""
    return {
        "fma_f32": len(re.findall(r"\bfma\.rn\.f32\b", body)),
        "free_f32": len(_PTX_FREE_F32.findall(body)),
        "inexact": len(_PTX_INEXACT.findall(body)),
        "cvt_rn_16": len(re.findall(r"\bcvt\.rn\.(?:bf16|f16)(?:x2)?\.f32\b", body)),
        "cvt_other_16": len(re.findall(r"\bcvt\.r[zmp]i?\.(?:bf16|f16)(?:x2)?\.f32\b", body)),
    }
