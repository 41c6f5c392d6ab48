"""The package without its compiled extension: `import fusedopt` works and the
Triton and reference backends step, as when a user installs from source with
no compiler (a failed extension build is the field's most common complaint,
apex and DeepSpeed alike). Run in a subprocess whose import
system refuses fusedopt._C."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys, warnings

    class RefuseExtension:
        def find_spec(self, name, path=None, target=None):
            if name == "fusedopt._C":
                raise ImportError("hidden by the test")
            return None

    sys.meta_path.insert(0, RefuseExtension())
    import torch
    import fusedopt
    from fusedopt import _extension, backends

    assert not _extension.loaded(), "fusedopt._C was imported"
    assert backends.get("cpu").unavailable_reason() is not None
    results = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fusedopt.AdamW([torch.zeros(1, requires_grad=True)])
    assert any("fusedopt._C" in str(w.message) for w in caught), "no warning said why"
    # Triton comes with CUDA builds of torch; a CPU-only torch has the reference only.
    with_triton = importlib.util.find_spec("triton") is not None
    for backend in ("triton", "reference") if with_triton else ("reference",):
        torch.manual_seed(0)
        params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
        opt = fusedopt.AdamW(params, lr=1e-2, backend=backend)
        for _ in range(2):
            for p in params:
                p.grad = torch.ones_like(p)
            opt.step()
        results[backend] = [p.detach().clone() for p in params]
        assert "-> " + backend in fusedopt.report(opt)
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    opt = torch.optim.AdamW(params, lr=1e-2, foreach=False)
    for _ in range(2):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    for name, ours in results.items():
        for a, b in zip(ours, params):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    print("stepped without fusedopt._C")
    """
)


def test_triton_and_reference_work_without_the_extension():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stepped without fusedopt._C" in result.stdout
