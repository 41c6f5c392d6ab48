"""fusedopt: fused multi-tensor optimizers for PyTorch.

import fusedopt
opt = fusedopt.AdamW(model.parameters(), lr=1e-3)   # as torch.optim.AdamW
print(fusedopt.report(opt))                          # which backend steps what
"""

from fusedopt import _extension, _fake, reference  # noqa: F401  (_fake registers fake ops)
from fusedopt.backends import BACKEND_NAMES
from fusedopt.optim.adam import Adam, AdamW
from fusedopt.optim.lion import Lion
from fusedopt.optim.rprop import Rprop
from fusedopt.optim.sgd import SGD
from fusedopt.registry import RULES
from fusedopt.report import report

__all__ = ["SGD", "Adam", "AdamW", "Lion", "Rprop", "BACKEND_NAMES", "RULES", "reference", "report"]
__version__ = "0.1.0"
