"""fusedopt's Triton kernels (installed as fusedopt.kernels): `mta` is the one
multi-tensor kernel frame and its launcher; `rules/` mirrors the C++ rule
headers (csrc/include/fusedopt/rules/), one module per rule. Nothing here
imports from the rest of fusedopt."""
