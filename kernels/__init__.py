"""fusedopt's Triton kernels (installed as fusedopt.kernels): `rules` mirrors
csrc/include/fusedopt/adam_rule.h; each optimizer file holds its kernels, then
their launcher."""
