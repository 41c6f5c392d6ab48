"""fusedopt: fused multi-tensor optimizers for PyTorch.

import fusedopt
opt = fusedopt.AdamW(model.parameters(), lr=1e-3)   # as torch.optim.AdamW
print(fusedopt.report(opt))                          # which backend steps what
"""

from fusedopt import _extension, _fake, reference  # noqa: F401  (_fake registers fake ops)
from fusedopt.backends import BACKEND_NAMES
from fusedopt.clip import clip_grad_norm_, grad_norm
from fusedopt.optim.adadelta import Adadelta
from fusedopt.optim.adafactor import Adafactor
from fusedopt.optim.adagrad import Adagrad
from fusedopt.optim.adam import Adam, Adam8bit, AdamW, AdamW8bit, HFAdamW
from fusedopt.optim.adamax import Adamax
from fusedopt.optim.asgd import ASGD
from fusedopt.optim.lion import Lion
from fusedopt.optim.nadam import NAdam
from fusedopt.optim.radam import RAdam
from fusedopt.optim.rmsprop import RMSprop, RMSpropTF
from fusedopt.optim.rprop import Rprop
from fusedopt.optim.sgd import SGD
from fusedopt.param_groups import param_groups
from fusedopt.registry import REDUCTION_RULES, RULES
from fusedopt.report import report

__all__ = [
    "ASGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "Adam8bit",
    "AdamW",
    "AdamW8bit",
    "Adamax",
    "HFAdamW",
    "Lion",
    "NAdam",
    "RAdam",
    "RMSprop",
    "RMSpropTF",
    "Rprop",
    "SGD",
    "BACKEND_NAMES",
    "REDUCTION_RULES",
    "RULES",
    "clip_grad_norm_",
    "grad_norm",
    "param_groups",
    "reference",
    "report",
]
__version__ = "0.1.0"
