// Portability macros shared by the CPU backend and the CUDA kernels.
#pragma once

// FUSEDOPT_HD marks the update rules: compiled for the host by g++ and for both
// sides by nvcc.
//
// Note [internal linkage of host rules]: the CPU backend compiles the same rules
// in several translation units with different ISA flags (AVX-512, AVX2,
// baseline). An ordinary `inline` function would be one ODR entity and the
// linker could keep the AVX-512 copy for every caller, which faults on a CPU
// without AVX-512. `static` gives each translation unit its own copy.
#if defined(__CUDACC__)
#define FUSEDOPT_HD __host__ __device__ __forceinline__
#else
#define FUSEDOPT_HD static inline __attribute__((always_inline))
#endif
