// Portability macros shared by the CPU backend and the CUDA kernels.
#pragma once

// FUSEDOPT_HD marks free functions of the rules and traversals: compiled for
// the host by g++ and for both sides by nvcc. FUSEDOPT_HD_MEMBER marks member
// functions (a rule's static functions): `static` means something else there.
//
// Note [internal linkage of host rules]: the CPU backend compiles the same rules
// in several translation units with different ISA flags (AVX-512, AVX2,
// baseline). An ordinary `inline` function would be one ODR entity and the
// linker could keep the AVX-512 copy for every caller, which faults on a CPU
// without AVX-512. `static` gives each translation unit its own copy of a free
// function; a member function cannot be `static` in that sense, so it is
// always_inline: every call is inlined into the caller's translation unit,
// with that unit's flags, and no out-of-line copy is ever called.
#if defined(__CUDACC__)
#define FUSEDOPT_HD __host__ __device__ __forceinline__
#define FUSEDOPT_HD_MEMBER __host__ __device__ __forceinline__
#else
#define FUSEDOPT_HD static inline __attribute__((always_inline))
#define FUSEDOPT_HD_MEMBER inline __attribute__((always_inline))
#endif
