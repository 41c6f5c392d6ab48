"""fusedopt: fused multi-tensor optimizers for PyTorch.

import fusedopt
opt = fusedopt.AdamW(model.parameters(), lr=1e-3)   # as torch.optim.AdamW
print(fusedopt.report(opt))                          # which backend steps what
"""

from fusedopt import _extension, _fake, reference  # noqa: F401  (_fake registers fake ops)
from fusedopt.backends import BACKEND_NAMES
from fusedopt.optim.adam import Adam, AdamW
from fusedopt.optim.adamax import Adamax
from fusedopt.optim.radam import RAdam
from fusedopt.optim.sgd import SGD
from fusedopt.registry import RULES
from fusedopt.report import report

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Adamax",
    "RAdam",
    "BACKEND_NAMES",
    "RULES",
    "reference",
    "report",
]
__version__ = "0.1.0"
