"""Test-wide set-up.

TRITON_INTERPRET must be set before any module with @triton.jit is imported
(else Triton looks for a GPU driver and finds none): the interpreter is how
the Triton kernels run on this GPU-less machine, and it only takes effect if
set first.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
