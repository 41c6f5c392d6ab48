"""gcc vectorizes every CPU element loop (csrc/cpu/loop.cpp, run_elements): one
instantiation per rule x param dtype x state dtype (fp32, bf16) x state set
(the rule's kStateSets) x GradScaler unscale, each of which must report "LOOP
VECTORIZED" in gcc's vectorizer dump, and none of whose loops may be left
scalar. The 8-bit blockwise loops (run_blocks8) are listed apart: their
decode, absmax and encode loops are checked by what they are (see
test_blockwise_loops). The file is
compiled here as CMakeLists.txt compiles it (its flags and each ISA's flag set
read from there), for the AVX-512 and the baseline (SSE2) builds."""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _cuda_tools import REPO
from fusedopt.registry import RULES

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None or shutil.which("c++filt") is None,
    reason="needs g++ and c++filt (binutils) to compile and read the CPU loops",
)

ISAS = ["avx512", "avx2", "baseline"]
DTYPES = {"float": "fp32", "fusedopt::Bf16": "bf16", "fusedopt::Fp16": "fp16"}
STATE_DTYPES = {"float": "fp32", "fusedopt::Bf16": "bf16"}
ELEMENT_STATE_DTYPES = tuple(STATE_DTYPES.values())
# A loop with no state (SGD without momentum) is the same code for every state
# dtype, and gcc folds the copies into one (-fipa-icf): keyed apart.
NO_STATE = "none"
CMAKE = (REPO / "CMakeLists.txt").read_text()


def isa_flags(isa: str) -> list[str]:
    m = re.search(rf"set\(FUSEDOPT_ISA_FLAGS_{isa}((?:\s+[^\s)]+)*)\s*\)", CMAKE)
    assert m, f"CMakeLists.txt sets no FUSEDOPT_ISA_FLAGS_{isa}"
    flags = m.group(1).split()
    return [] if flags == ['""'] else flags


def loop_flags() -> list[str]:
    """The flags CMakeLists.txt gives every fusedopt_cpu_<isa> object."""
    m = re.search(r"target_compile_options\(fusedopt_cpu_\$\{isa\} PRIVATE ([^$]*)\$\{", CMAKE)
    assert m, "CMakeLists.txt's compile options of the CPU loops moved"
    return m.group(1).split()


def rule_types() -> dict[str, str]:
    """C++ type -> rule name, from FUSEDOPT_FOR_EACH_RULE (rules/registry.h)."""
    header = (REPO / "csrc/include/fusedopt/rules/registry.h").read_text()
    pairs = dict(re.findall(r"\bX\((\w+),\s*(\w+)\)", header))
    assert set(pairs.values()) == set(RULES), "rules/registry.h and fusedopt/registry.py differ"
    return pairs


def state_sets(rule: str) -> set[int]:
    """The masks of `kStateSets[] = {...}` in the rule's header."""
    header = (REPO / f"csrc/include/fusedopt/rules/{rule}.h").read_text()
    m = re.search(r"kStateSets\[\]\s*=\s*\{([^}]*)\}", header)
    assert m, f"rules/{rule}.h declares no kStateSets"
    return {int(x.strip(), 0) for x in m.group(1).split(",") if x.strip()}


def compile_with_vect_dump(isa: str, out: Path) -> str:
    out.mkdir()
    cmd = [
        "g++",
        "-std=c++20",
        *loop_flags(),
        *isa_flags(isa),
        f"-DFUSEDOPT_ISA={isa}",
        f"-I{REPO / 'csrc/include'}",
        f"-I{REPO / 'csrc/cpu'}",
        "-fdump-tree-vect-details",
        "-c",
        str(REPO / "csrc/cpu/loop.cpp"),
        "-o",
        str(out / "loop.o"),
        "-dumpdir",
        f"{out}/",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (dump,) = out.glob("*.vect")
    return dump.read_text()


@pytest.fixture(scope="module")
def dumps(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("vect")
    with ThreadPoolExecutor(len(ISAS)) as pool:
        texts = pool.map(lambda isa: compile_with_vect_dump(isa, base / isa), ISAS)
        return dict(zip(ISAS, texts))


def run_elements_sections(
    dump: str, function: str = "run_elements"
) -> dict[tuple[str, str, str, int, bool], list[str]]:
    """{(rule, dtype, state dtype, state mask, unscale): [its function bodies
    in the dump]}, for `function` (run_blocks8: the state dtype is "int8").
    gcc names clones (.constprop, .isra) only by their mangled name, so every
    header's symbol is demangled."""
    sections = re.split(r"^;; Function ", dump, flags=re.M)[1:]
    symbols = [re.match(r".*?\((\S+?),", s).group(1) for s in sections]
    demangled = subprocess.run(
        ["c++filt"], input="\n".join(symbols), capture_output=True, text=True, check=True
    ).stdout.splitlines()
    types = rule_types()
    found: dict[tuple[str, str, str, int, bool], list[str]] = {}
    state = r", ([\w:]+)" if function == "run_elements" else "()"
    pattern = rf"{function}<fusedopt::(\w+), ([\w:]+){state}, (\d+)u?, (true|false)>"
    for name, body in zip(demangled, sections):
        m = re.search(pattern, name)
        if m:
            state_dtype = STATE_DTYPES[m[3]] if m[3] else "int8"
            mask = int(m[4])
            key = (
                types[m[1]],
                DTYPES[m[2]],
                state_dtype if mask else NO_STATE,
                mask,
                m[5] == "true",
            )
            found.setdefault(key, []).append(body)
    return found


def expected_instantiations(state_dtypes=ELEMENT_STATE_DTYPES) -> set[tuple]:
    return {
        (rule, dtype, state_dtype if mask else NO_STATE, mask, unscale)
        for rule in RULES
        for mask in state_sets(rule)
        for dtype in DTYPES.values()
        for state_dtype in state_dtypes
        for unscale in (False, True)
    }


def test_expected_count():
    # 3 dtypes x 2 (unscale or not) x (2 state dtypes x the state sets with
    # states of every rule + the stateless sets, once).
    with_states = sum(len(state_sets(rule) - {0}) for rule in RULES)
    stateless = sum(0 in state_sets(rule) for rule in RULES)
    assert len(expected_instantiations()) == 3 * 2 * (2 * with_states + stateless)


@pytest.mark.parametrize("isa", ISAS)
def test_every_element_loop_is_vectorized(dumps, isa):
    found = run_elements_sections(dumps[isa])
    assert set(found) == expected_instantiations()
    failures = []
    for key, bodies in sorted(found.items()):
        text = "\n".join(bodies)
        if "LOOP VECTORIZED" not in text:
            failures.append(f"{key}: no loop vectorized")
        for line in re.findall(r"^.*missed: couldn't vectorize loop.*$", text, flags=re.M):
            failures.append(f"{key}: {line}")
    assert not failures, f"{isa}:\n" + "\n".join(failures)


@pytest.mark.parametrize("isa", ISAS)
def test_blockwise_loops(dumps, isa):
    """8-bit blockwise states (run_blocks8, one per rule x param dtype x state
    set x unscale): its per-block absmax (an integer max) loop vectorizes,
    and so does its decode (a gather per element) but on AVX-512, where
    decode_block8 is written with intrinsics (the map in registers). The
    encoder (encode_block8, one per map): on AVX-512 intrinsics too (Note
    [keyed encoder]: one gather per 16 elements); on AVX2 gcc vectorizes
    encode_code8_fast (two gathers per element); the baseline (SSE2) encoder
    stays scalar. A state set without states (SGD without momentum) has no
    block loop."""
    found = run_elements_sections(dumps[isa], "run_blocks8")
    assert set(found) == expected_instantiations(("int8",))
    block_loops = 1 if isa == "avx512" else 2
    failures = [
        key
        for key, bodies in sorted(found.items())
        if key[3] != 0 and "\n".join(bodies).count("LOOP VECTORIZED") < block_loops
    ]
    assert not failures, f"{isa}: decode or absmax loop left scalar in {failures}"
    sections = re.split(r"^;; Function ", dumps[isa], flags=re.M)
    encoders = [s for s in sections if "encode_block8" in s.partition("\n")[0]]
    assert len(encoders) == 2, "one encoder per map"
    vectorized = ["LOOP VECTORIZED" in s for s in encoders]
    assert vectorized == [isa == "avx2"] * 2
    assert ["gathersiv16si" in s for s in encoders] == [isa == "avx512"] * 2
    decoders = [s for s in sections if "decode_block8" in s.partition("\n")[0]]
    assert [("vpermt2varps512" in s) for s in decoders] == [True] * (isa == "avx512")
