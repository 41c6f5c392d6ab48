"""fusedopt's Triton kernels (installed as fusedopt.kernels): `mta` is the one
multi-tensor kernel frame and its launcher, `storage` its conversions between
fp32 and bf16/fp16 (core/storage.h's); `rules/` mirrors the C++ rule
headers (csrc/include/fusedopt/rules/), one module per rule. Nothing here
imports from the rest of fusedopt."""
