"""The package without its compiled extension: `import fusedopt` works and the
Triton and reference backends step every optimizer, as when a user installs
from source with no compiler (a failed extension build is the field's most
common complaint, apex and DeepSpeed alike). Run in a subprocess whose import
system refuses fusedopt._C."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import BackendCase, backend_params

SCRIPT = textwrap.dedent(
    """
    import sys, warnings

    class RefuseExtension:
        def find_spec(self, name, path=None, target=None):
            if name == "fusedopt._C":
                raise ImportError("hidden by the test")
            return None

    sys.meta_path.insert(0, RefuseExtension())
    sys.path.insert(0, sys.argv[2])
    import torch
    import fusedopt
    from fusedopt import _extension, backends
    from cases import CASES
    from helpers import clone_params, make_params, run_lockstep
    from tolerances import assert_normwise_close

    backend = sys.argv[1]
    assert not _extension.loaded(), "fusedopt._C was imported"
    assert backends.get("cpu").unavailable_reason() is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fusedopt.AdamW([torch.zeros(1, requires_grad=True)])
    assert any("fusedopt._C" in str(w.message) for w in caught), "no warning said why"
    for case in CASES:
        ours = make_params([(5, 3), 7])
        theirs = clone_params(ours)
        opt = case.make(ours, case.stateful, backend)
        ref = case.make_torch(theirs, case.stateful)
        run_lockstep([opt, ref], [ours, theirs], 2)
        assert "-> " + backend in fusedopt.report(opt)
        for p, q in zip(ours, theirs):
            assert_normwise_close(p, q)
    print("stepped without fusedopt._C")
    """
)


@pytest.mark.parametrize(
    "backend", backend_params([BackendCase("reference", "cpu"), BackendCase("triton", "cpu")])
)
def test_backends_work_without_the_extension(backend):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, backend.name, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stepped without fusedopt._C" in result.stdout
