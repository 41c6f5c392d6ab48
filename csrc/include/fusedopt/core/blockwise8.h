// 8-bit blockwise state storage (Dettmers et al. 2022, "8-bit Optimizers via
// Block-wise Quantization"; bitsandbytes' layout): Note [state dtypes] in
// core/storage.h. The definition, tables included, is
// python/fusedopt/reference/codecs.py; the tables below are its output, and
// tests/test_state_dtypes.py checks them against it bit for bit.
//
// A state of n elements is n bytes of codes plus one fp32 absmax per block of
// kBlock8 elements of its memory order. Decoding: map[code] * absmax. Encoding
// a block: absmax = max |x| (NaN if any x is NaN), then each code = the number
// of midpoints strictly below x / absmax (IEEE division; an all-zero block,
// absmax 0, divides by 1 and encodes as the code of 0), found by an 8-step branch-free
// binary search over the 255 sorted midpoints. Every backend runs these same
// comparisons, so codes agree bit for bit. The signed map serves states of
// either sign (first moments), the unsigned map states that are never
// negative (second moments); the code tensor's dtype (int8 or uint8) says
// which (fusedopt/reference/codecs.py).
#pragma once

#include <cstdint>
#include <cstring>
#if !defined(__CUDACC__)
#include <bit>
#endif

#include "fusedopt/core/macros.h"

namespace fusedopt {

// Elements per absmax: bitsandbytes' 8-bit optimizer blocksize. The CPU and
// CUDA chunk sizes are multiples of it, so a block never straddles two chunks.
constexpr int32_t kBlock8 = 256;
constexpr int32_t kCodes8 = 256;

#if defined(__CUDACC__)
#define FUSEDOPT_CODEC_TABLE __device__ __constant__ const
#else
#define FUSEDOPT_CODEC_TABLE inline constexpr
#endif

FUSEDOPT_CODEC_TABLE float kSignedMap[256] = {
    -0x1.fc66660000000p-1f, -0x1.f533340000000p-1f, -0x1.ee00000000000p-1f, -0x1.e6cccc0000000p-1f,
    -0x1.df999a0000000p-1f, -0x1.d866660000000p-1f, -0x1.d133340000000p-1f, -0x1.ca00000000000p-1f,
    -0x1.c2cccc0000000p-1f, -0x1.bb999a0000000p-1f, -0x1.b466660000000p-1f, -0x1.ad33340000000p-1f,
    -0x1.a600000000000p-1f, -0x1.9ecccc0000000p-1f, -0x1.97999a0000000p-1f, -0x1.9066660000000p-1f,
    -0x1.8933340000000p-1f, -0x1.8200000000000p-1f, -0x1.7acccc0000000p-1f, -0x1.73999a0000000p-1f,
    -0x1.6c66680000000p-1f, -0x1.6533340000000p-1f, -0x1.5e00000000000p-1f, -0x1.56cccc0000000p-1f,
    -0x1.4f999a0000000p-1f, -0x1.4866680000000p-1f, -0x1.4133340000000p-1f, -0x1.3a00000000000p-1f,
    -0x1.32cccc0000000p-1f, -0x1.2b999a0000000p-1f, -0x1.2466680000000p-1f, -0x1.1d33340000000p-1f,
    -0x1.1600000000000p-1f, -0x1.0ecccc0000000p-1f, -0x1.0799980000000p-1f, -0x1.0066660000000p-1f,
    -0x1.f266640000000p-2f, -0x1.e400000000000p-2f, -0x1.d599980000000p-2f, -0x1.c733340000000p-2f,
    -0x1.b8cccc0000000p-2f, -0x1.aa66660000000p-2f, -0x1.9c00000000000p-2f, -0x1.8d99980000000p-2f,
    -0x1.7f33340000000p-2f, -0x1.70cccc0000000p-2f, -0x1.6266660000000p-2f, -0x1.5400000000000p-2f,
    -0x1.4599980000000p-2f, -0x1.3733340000000p-2f, -0x1.28cccc0000000p-2f, -0x1.1a66680000000p-2f,
    -0x1.0c00000000000p-2f, -0x1.fb33320000000p-3f, -0x1.de66660000000p-3f, -0x1.c1999a0000000p-3f,
    -0x1.a4cccc0000000p-3f, -0x1.8800000000000p-3f, -0x1.6b33340000000p-3f, -0x1.4e66660000000p-3f,
    -0x1.31999a0000000p-3f, -0x1.14cccc0000000p-3f, -0x1.f000000000000p-4f, -0x1.b666680000000p-4f,
    -0x1.93d70a0000000p-4f, -0x1.8851ee0000000p-4f, -0x1.7cccce0000000p-4f, -0x1.7147ae0000000p-4f,
    -0x1.65c2900000000p-4f, -0x1.5a3d700000000p-4f, -0x1.4eb8540000000p-4f, -0x1.4333340000000p-4f,
    -0x1.37ae140000000p-4f, -0x1.2c28f60000000p-4f, -0x1.20a3d60000000p-4f, -0x1.151eba0000000p-4f,
    -0x1.09999a0000000p-4f, -0x1.fc28f60000000p-5f, -0x1.e51eba0000000p-5f, -0x1.ce147a0000000p-5f,
    -0x1.b70a3e0000000p-5f, -0x1.a000000000000p-5f, -0x1.88f5c20000000p-5f, -0x1.71eb860000000p-5f,
    -0x1.5ae1460000000p-5f, -0x1.43d70a0000000p-5f, -0x1.2cccce0000000p-5f, -0x1.15c2900000000p-5f,
    -0x1.fd70a40000000p-6f, -0x1.cf5c2a0000000p-6f, -0x1.a147ae0000000p-6f, -0x1.7333340000000p-6f,
    -0x1.451eba0000000p-6f, -0x1.170a3e0000000p-6f, -0x1.d1eb860000000p-7f, -0x1.75c2900000000p-7f,
    -0x1.3e76c80000000p-7f, -0x1.2c08300000000p-7f, -0x1.19999a0000000p-7f, -0x1.072b020000000p-7f,
    -0x1.e978d40000000p-8f, -0x1.c49ba60000000p-8f, -0x1.9fbe760000000p-8f, -0x1.7ae1480000000p-8f,
    -0x1.56041a0000000p-8f, -0x1.3126e80000000p-8f, -0x1.0c49ba0000000p-8f, -0x1.ced9140000000p-9f,
    -0x1.851eb80000000p-9f, -0x1.3b645a0000000p-9f, -0x1.e353f80000000p-10f, -0x1.4fdf3a0000000p-10f,
    -0x1.eecbfe0000000p-11f, -0x1.b3d07c0000000p-11f, -0x1.78d5000000000p-11f, -0x1.3dd9820000000p-11f,
    -0x1.02de020000000p-11f, -0x1.8fc5060000000p-12f, -0x1.19ce0a0000000p-12f, -0x1.47ae160000000p-13f,
    -0x1.743e960000000p-14f, -0x1.15df660000000p-14f, -0x1.6f00680000000p-15f, -0x1.64840c0000000p-16f,
    -0x1.040bfe0000000p-17f, -0x1.b435280000000p-19f, -0x1.27476e0000000p-21f, 0x0.0p+0f,
    0x1.27476e0000000p-21f, 0x1.b435280000000p-19f, 0x1.040bfe0000000p-17f, 0x1.64840c0000000p-16f,
    0x1.6f00680000000p-15f, 0x1.15df660000000p-14f, 0x1.743e960000000p-14f, 0x1.47ae160000000p-13f,
    0x1.19ce0a0000000p-12f, 0x1.8fc5060000000p-12f, 0x1.02de020000000p-11f, 0x1.3dd9820000000p-11f,
    0x1.78d5000000000p-11f, 0x1.b3d07c0000000p-11f, 0x1.eecbfe0000000p-11f, 0x1.4fdf3a0000000p-10f,
    0x1.e353f80000000p-10f, 0x1.3b645a0000000p-9f, 0x1.851eb80000000p-9f, 0x1.ced9140000000p-9f,
    0x1.0c49ba0000000p-8f, 0x1.3126e80000000p-8f, 0x1.56041a0000000p-8f, 0x1.7ae1480000000p-8f,
    0x1.9fbe760000000p-8f, 0x1.c49ba60000000p-8f, 0x1.e978d40000000p-8f, 0x1.072b020000000p-7f,
    0x1.19999a0000000p-7f, 0x1.2c08300000000p-7f, 0x1.3e76c80000000p-7f, 0x1.75c2900000000p-7f,
    0x1.d1eb860000000p-7f, 0x1.170a3e0000000p-6f, 0x1.451eba0000000p-6f, 0x1.7333340000000p-6f,
    0x1.a147ae0000000p-6f, 0x1.cf5c2a0000000p-6f, 0x1.fd70a40000000p-6f, 0x1.15c2900000000p-5f,
    0x1.2cccce0000000p-5f, 0x1.43d70a0000000p-5f, 0x1.5ae1460000000p-5f, 0x1.71eb860000000p-5f,
    0x1.88f5c20000000p-5f, 0x1.a000000000000p-5f, 0x1.b70a3e0000000p-5f, 0x1.ce147a0000000p-5f,
    0x1.e51eba0000000p-5f, 0x1.fc28f60000000p-5f, 0x1.09999a0000000p-4f, 0x1.151eba0000000p-4f,
    0x1.20a3d60000000p-4f, 0x1.2c28f60000000p-4f, 0x1.37ae140000000p-4f, 0x1.4333340000000p-4f,
    0x1.4eb8540000000p-4f, 0x1.5a3d700000000p-4f, 0x1.65c2900000000p-4f, 0x1.7147ae0000000p-4f,
    0x1.7cccce0000000p-4f, 0x1.8851ee0000000p-4f, 0x1.93d70a0000000p-4f, 0x1.b666680000000p-4f,
    0x1.f000000000000p-4f, 0x1.14cccc0000000p-3f, 0x1.31999a0000000p-3f, 0x1.4e66660000000p-3f,
    0x1.6b33340000000p-3f, 0x1.8800000000000p-3f, 0x1.a4cccc0000000p-3f, 0x1.c1999a0000000p-3f,
    0x1.de66660000000p-3f, 0x1.fb33320000000p-3f, 0x1.0c00000000000p-2f, 0x1.1a66680000000p-2f,
    0x1.28cccc0000000p-2f, 0x1.3733340000000p-2f, 0x1.4599980000000p-2f, 0x1.5400000000000p-2f,
    0x1.6266660000000p-2f, 0x1.70cccc0000000p-2f, 0x1.7f33340000000p-2f, 0x1.8d99980000000p-2f,
    0x1.9c00000000000p-2f, 0x1.aa66660000000p-2f, 0x1.b8cccc0000000p-2f, 0x1.c733340000000p-2f,
    0x1.d599980000000p-2f, 0x1.e400000000000p-2f, 0x1.f266640000000p-2f, 0x1.0066660000000p-1f,
    0x1.0799980000000p-1f, 0x1.0ecccc0000000p-1f, 0x1.1600000000000p-1f, 0x1.1d33340000000p-1f,
    0x1.2466680000000p-1f, 0x1.2b999a0000000p-1f, 0x1.32cccc0000000p-1f, 0x1.3a00000000000p-1f,
    0x1.4133340000000p-1f, 0x1.4866680000000p-1f, 0x1.4f999a0000000p-1f, 0x1.56cccc0000000p-1f,
    0x1.5e00000000000p-1f, 0x1.6533340000000p-1f, 0x1.6c66680000000p-1f, 0x1.73999a0000000p-1f,
    0x1.7acccc0000000p-1f, 0x1.8200000000000p-1f, 0x1.8933340000000p-1f, 0x1.9066660000000p-1f,
    0x1.97999a0000000p-1f, 0x1.9ecccc0000000p-1f, 0x1.a600000000000p-1f, 0x1.ad33340000000p-1f,
    0x1.b466660000000p-1f, 0x1.bb999a0000000p-1f, 0x1.c2cccc0000000p-1f, 0x1.ca00000000000p-1f,
    0x1.d133340000000p-1f, 0x1.d866660000000p-1f, 0x1.df999a0000000p-1f, 0x1.e6cccc0000000p-1f,
    0x1.ee00000000000p-1f, 0x1.f533340000000p-1f, 0x1.fc66660000000p-1f, 0x1.0000000000000p+0f,
};

FUSEDOPT_CODEC_TABLE float kSignedMidpoints[255] = {
    -0x1.f8cccc0000000p-1f, -0x1.f1999a0000000p-1f, -0x1.ea66660000000p-1f, -0x1.e333340000000p-1f,
    -0x1.dc00000000000p-1f, -0x1.d4cccc0000000p-1f, -0x1.cd999a0000000p-1f, -0x1.c666660000000p-1f,
    -0x1.bf33340000000p-1f, -0x1.b800000000000p-1f, -0x1.b0cccc0000000p-1f, -0x1.a9999a0000000p-1f,
    -0x1.a266660000000p-1f, -0x1.9b33340000000p-1f, -0x1.9400000000000p-1f, -0x1.8ccccc0000000p-1f,
    -0x1.85999a0000000p-1f, -0x1.7e66660000000p-1f, -0x1.7733340000000p-1f, -0x1.7000000000000p-1f,
    -0x1.68ccce0000000p-1f, -0x1.61999a0000000p-1f, -0x1.5a66660000000p-1f, -0x1.5333340000000p-1f,
    -0x1.4c00000000000p-1f, -0x1.44ccce0000000p-1f, -0x1.3d999a0000000p-1f, -0x1.3666660000000p-1f,
    -0x1.2f33340000000p-1f, -0x1.2800000000000p-1f, -0x1.20ccce0000000p-1f, -0x1.19999a0000000p-1f,
    -0x1.1266660000000p-1f, -0x1.0b33320000000p-1f, -0x1.0400000000000p-1f, -0x1.f999980000000p-2f,
    -0x1.eb33320000000p-2f, -0x1.dccccc0000000p-2f, -0x1.ce66660000000p-2f, -0x1.c000000000000p-2f,
    -0x1.b199980000000p-2f, -0x1.a333340000000p-2f, -0x1.94cccc0000000p-2f, -0x1.8666660000000p-2f,
    -0x1.7800000000000p-2f, -0x1.6999980000000p-2f, -0x1.5b33340000000p-2f, -0x1.4ccccc0000000p-2f,
    -0x1.3e66660000000p-2f, -0x1.3000000000000p-2f, -0x1.21999a0000000p-2f, -0x1.1333340000000p-2f,
    -0x1.04cccc0000000p-2f, -0x1.eccccc0000000p-3f, -0x1.d000000000000p-3f, -0x1.b333340000000p-3f,
    -0x1.9666660000000p-3f, -0x1.79999a0000000p-3f, -0x1.5ccccc0000000p-3f, -0x1.4000000000000p-3f,
    -0x1.2333340000000p-3f, -0x1.0666660000000p-3f, -0x1.d333340000000p-4f, -0x1.a51eb80000000p-4f,
    -0x1.8e147c0000000p-4f, -0x1.828f5e0000000p-4f, -0x1.770a3e0000000p-4f, -0x1.6b85200000000p-4f,
    -0x1.6000000000000p-4f, -0x1.547ae20000000p-4f, -0x1.48f5c40000000p-4f, -0x1.3d70a40000000p-4f,
    -0x1.31eb840000000p-4f, -0x1.2666660000000p-4f, -0x1.1ae1480000000p-4f, -0x1.0f5c2a0000000p-4f,
    -0x1.03d70a0000000p-4f, -0x1.f0a3d80000000p-5f, -0x1.d9999a0000000p-5f, -0x1.c28f5c0000000p-5f,
    -0x1.ab85200000000p-5f, -0x1.947ae00000000p-5f, -0x1.7d70a40000000p-5f, -0x1.6666660000000p-5f,
    -0x1.4f5c280000000p-5f, -0x1.3851ec0000000p-5f, -0x1.2147b00000000p-5f, -0x1.0a3d700000000p-5f,
    -0x1.e666680000000p-6f, -0x1.b851ec0000000p-6f, -0x1.8a3d700000000p-6f, -0x1.5c28f80000000p-6f,
    -0x1.2e147c0000000p-6f, -0x1.0000000000000p-6f, -0x1.a3d70c0000000p-7f, -0x1.5a1cac0000000p-7f,
    -0x1.353f7c0000000p-7f, -0x1.22d0e40000000p-7f, -0x1.10624e0000000p-7f, -0x1.fbe76c0000000p-8f,
    -0x1.d70a3c0000000p-8f, -0x1.b22d0e0000000p-8f, -0x1.8d4fe00000000p-8f, -0x1.6872b00000000p-8f,
    -0x1.4395800000000p-8f, -0x1.1eb8500000000p-8f, -0x1.f3b6440000000p-9f, -0x1.a9fbe60000000p-9f,
    -0x1.6041880000000p-9f, -0x1.16872c0000000p-9f, -0x1.9999980000000p-10f, -0x1.23a29c0000000p-10f,
    -0x1.d14e3c0000000p-11f, -0x1.9652be0000000p-11f, -0x1.5b57400000000p-11f, -0x1.205bc20000000p-11f,
    -0x1.cac0840000000p-12f, -0x1.54c9880000000p-12f, -0x1.bda5140000000p-13f, -0x1.00e6b00000000p-13f,
    -0x1.450efe0000000p-14f, -0x1.cd5f9a0000000p-15f, -0x1.10a1380000000p-15f, -0x1.e68a0c0000000p-17f,
    -0x1.7119480000000p-18f, -0x1.fe07040000000p-20f, -0x1.27476e0000000p-22f, 0x1.27476e0000000p-22f,
    0x1.fe07040000000p-20f, 0x1.7119480000000p-18f, 0x1.e68a0c0000000p-17f, 0x1.10a1380000000p-15f,
    0x1.cd5f9a0000000p-15f, 0x1.450efe0000000p-14f, 0x1.00e6b00000000p-13f, 0x1.bda5140000000p-13f,
    0x1.54c9880000000p-12f, 0x1.cac0840000000p-12f, 0x1.205bc20000000p-11f, 0x1.5b57400000000p-11f,
    0x1.9652be0000000p-11f, 0x1.d14e3c0000000p-11f, 0x1.23a29c0000000p-10f, 0x1.9999980000000p-10f,
    0x1.16872c0000000p-9f, 0x1.6041880000000p-9f, 0x1.a9fbe60000000p-9f, 0x1.f3b6440000000p-9f,
    0x1.1eb8500000000p-8f, 0x1.4395800000000p-8f, 0x1.6872b00000000p-8f, 0x1.8d4fe00000000p-8f,
    0x1.b22d0e0000000p-8f, 0x1.d70a3c0000000p-8f, 0x1.fbe76c0000000p-8f, 0x1.10624e0000000p-7f,
    0x1.22d0e40000000p-7f, 0x1.353f7c0000000p-7f, 0x1.5a1cac0000000p-7f, 0x1.a3d70c0000000p-7f,
    0x1.0000000000000p-6f, 0x1.2e147c0000000p-6f, 0x1.5c28f80000000p-6f, 0x1.8a3d700000000p-6f,
    0x1.b851ec0000000p-6f, 0x1.e666680000000p-6f, 0x1.0a3d700000000p-5f, 0x1.2147b00000000p-5f,
    0x1.3851ec0000000p-5f, 0x1.4f5c280000000p-5f, 0x1.6666660000000p-5f, 0x1.7d70a40000000p-5f,
    0x1.947ae00000000p-5f, 0x1.ab85200000000p-5f, 0x1.c28f5c0000000p-5f, 0x1.d9999a0000000p-5f,
    0x1.f0a3d80000000p-5f, 0x1.03d70a0000000p-4f, 0x1.0f5c2a0000000p-4f, 0x1.1ae1480000000p-4f,
    0x1.2666660000000p-4f, 0x1.31eb840000000p-4f, 0x1.3d70a40000000p-4f, 0x1.48f5c40000000p-4f,
    0x1.547ae20000000p-4f, 0x1.6000000000000p-4f, 0x1.6b85200000000p-4f, 0x1.770a3e0000000p-4f,
    0x1.828f5e0000000p-4f, 0x1.8e147c0000000p-4f, 0x1.a51eb80000000p-4f, 0x1.d333340000000p-4f,
    0x1.0666660000000p-3f, 0x1.2333340000000p-3f, 0x1.4000000000000p-3f, 0x1.5ccccc0000000p-3f,
    0x1.79999a0000000p-3f, 0x1.9666660000000p-3f, 0x1.b333340000000p-3f, 0x1.d000000000000p-3f,
    0x1.eccccc0000000p-3f, 0x1.04cccc0000000p-2f, 0x1.1333340000000p-2f, 0x1.21999a0000000p-2f,
    0x1.3000000000000p-2f, 0x1.3e66660000000p-2f, 0x1.4ccccc0000000p-2f, 0x1.5b33340000000p-2f,
    0x1.6999980000000p-2f, 0x1.7800000000000p-2f, 0x1.8666660000000p-2f, 0x1.94cccc0000000p-2f,
    0x1.a333340000000p-2f, 0x1.b199980000000p-2f, 0x1.c000000000000p-2f, 0x1.ce66660000000p-2f,
    0x1.dccccc0000000p-2f, 0x1.eb33320000000p-2f, 0x1.f999980000000p-2f, 0x1.0400000000000p-1f,
    0x1.0b33320000000p-1f, 0x1.1266660000000p-1f, 0x1.19999a0000000p-1f, 0x1.20ccce0000000p-1f,
    0x1.2800000000000p-1f, 0x1.2f33340000000p-1f, 0x1.3666660000000p-1f, 0x1.3d999a0000000p-1f,
    0x1.44ccce0000000p-1f, 0x1.4c00000000000p-1f, 0x1.5333340000000p-1f, 0x1.5a66660000000p-1f,
    0x1.61999a0000000p-1f, 0x1.68ccce0000000p-1f, 0x1.7000000000000p-1f, 0x1.7733340000000p-1f,
    0x1.7e66660000000p-1f, 0x1.85999a0000000p-1f, 0x1.8ccccc0000000p-1f, 0x1.9400000000000p-1f,
    0x1.9b33340000000p-1f, 0x1.a266660000000p-1f, 0x1.a9999a0000000p-1f, 0x1.b0cccc0000000p-1f,
    0x1.b800000000000p-1f, 0x1.bf33340000000p-1f, 0x1.c666660000000p-1f, 0x1.cd999a0000000p-1f,
    0x1.d4cccc0000000p-1f, 0x1.dc00000000000p-1f, 0x1.e333340000000p-1f, 0x1.ea66660000000p-1f,
    0x1.f1999a0000000p-1f, 0x1.f8cccc0000000p-1f, 0x1.fe33340000000p-1f,
};

FUSEDOPT_CODEC_TABLE float kUnsignedMap[256] = {
    0x0.0p+0f, 0x1.5cf7540000000p-22f, 0x1.a013300000000p-21f, 0x1.1d36700000000p-19f,
    0x1.2599ec0000000p-18f, 0x1.bc98a20000000p-18f, 0x1.29cbaa0000000p-17f, 0x1.0624dc0000000p-16f,
    0x1.c2e3400000000p-16f, 0x1.3fd0d00000000p-15f, 0x1.9e30000000000p-15f, 0x1.fc8f340000000p-15f,
    0x1.2d77320000000p-14f, 0x1.5ca6c80000000p-14f, 0x1.8bd6620000000p-14f, 0x1.0cb2960000000p-13f,
    0x1.82a9940000000p-13f, 0x1.f8a0920000000p-13f, 0x1.374bc80000000p-12f, 0x1.7247440000000p-12f,
    0x1.ad42c60000000p-12f, 0x1.e83e440000000p-12f, 0x1.119ce20000000p-11f, 0x1.2f1aa00000000p-11f,
    0x1.4c98600000000p-11f, 0x1.6a16200000000p-11f, 0x1.8793de0000000p-11f, 0x1.a511a00000000p-11f,
    0x1.c28f5e0000000p-11f, 0x1.e00d1c0000000p-11f, 0x1.fd8adc0000000p-11f, 0x1.2b020c0000000p-10f,
    0x1.74bc6a0000000p-10f, 0x1.be76c80000000p-10f, 0x1.0418940000000p-9f, 0x1.28f5c20000000p-9f,
    0x1.4dd2f00000000p-9f, 0x1.72b0200000000p-9f, 0x1.978d4e0000000p-9f, 0x1.bc6a800000000p-9f,
    0x1.e147ae0000000p-9f, 0x1.03126e0000000p-8f, 0x1.1581040000000p-8f, 0x1.27ef9e0000000p-8f,
    0x1.3a5e340000000p-8f, 0x1.4ccccc0000000p-8f, 0x1.5f3b640000000p-8f, 0x1.71a9fa0000000p-8f,
    0x1.8418940000000p-8f, 0x1.96872a0000000p-8f, 0x1.a8f5c20000000p-8f, 0x1.bb645c0000000p-8f,
    0x1.cdd2f00000000p-8f, 0x1.e0418a0000000p-8f, 0x1.f2b01e0000000p-8f, 0x1.028f5c0000000p-7f,
    0x1.0bc6a80000000p-7f, 0x1.14fdf20000000p-7f, 0x1.1e35400000000p-7f, 0x1.276c8a0000000p-7f,
    0x1.30a3d60000000p-7f, 0x1.39db240000000p-7f, 0x1.43126e0000000p-7f, 0x1.5eb8540000000p-7f,
    0x1.8cccce0000000p-7f, 0x1.bae1460000000p-7f, 0x1.e8f5c40000000p-7f, 0x1.0b851e0000000p-6f,
    0x1.228f5e0000000p-6f, 0x1.39999a0000000p-6f, 0x1.50a3d60000000p-6f, 0x1.67ae160000000p-6f,
    0x1.7eb8520000000p-6f, 0x1.95c28e0000000p-6f, 0x1.acccce0000000p-6f, 0x1.c3d70e0000000p-6f,
    0x1.dae1460000000p-6f, 0x1.f1eb860000000p-6f, 0x1.047ae00000000p-5f, 0x1.1000000000000p-5f,
    0x1.1b851e0000000p-5f, 0x1.270a3e0000000p-5f, 0x1.328f5e0000000p-5f, 0x1.3e147a0000000p-5f,
    0x1.49999a0000000p-5f, 0x1.551eb80000000p-5f, 0x1.60a3d60000000p-5f, 0x1.6c28f60000000p-5f,
    0x1.77ae140000000p-5f, 0x1.8333340000000p-5f, 0x1.8eb8500000000p-5f, 0x1.9a3d700000000p-5f,
    0x1.a5c28e0000000p-5f, 0x1.b147ae0000000p-5f, 0x1.bcccce0000000p-5f, 0x1.c851ee0000000p-5f,
    0x1.d3d70e0000000p-5f, 0x1.df5c2a0000000p-5f, 0x1.eae1460000000p-5f, 0x1.f666660000000p-5f,
    0x1.00f5c40000000p-4f, 0x1.06b8540000000p-4f, 0x1.0c7ae20000000p-4f, 0x1.123d700000000p-4f,
    0x1.1800000000000p-4f, 0x1.1dc2900000000p-4f, 0x1.2385200000000p-4f, 0x1.2947ae0000000p-4f,
    0x1.2f0a3e0000000p-4f, 0x1.34ccce0000000p-4f, 0x1.3a8f5e0000000p-4f, 0x1.4051ec0000000p-4f,
    0x1.46147c0000000p-4f, 0x1.4bd70a0000000p-4f, 0x1.51999a0000000p-4f, 0x1.575c2a0000000p-4f,
    0x1.5d1eb80000000p-4f, 0x1.62e1480000000p-4f, 0x1.68a3d60000000p-4f, 0x1.6e66660000000p-4f,
    0x1.7428f60000000p-4f, 0x1.79eb860000000p-4f, 0x1.7fae160000000p-4f, 0x1.8570a40000000p-4f,
    0x1.8b33340000000p-4f, 0x1.90f5c40000000p-4f, 0x1.96b8520000000p-4f, 0x1.a800000000000p-4f,
    0x1.c4cccc0000000p-4f, 0x1.e1999a0000000p-4f, 0x1.fe66660000000p-4f, 0x1.0d99980000000p-3f,
    0x1.1c00000000000p-3f, 0x1.2a66680000000p-3f, 0x1.38cccc0000000p-3f, 0x1.4733340000000p-3f,
    0x1.5599980000000p-3f, 0x1.6400000000000p-3f, 0x1.7266680000000p-3f, 0x1.80cccc0000000p-3f,
    0x1.8f33340000000p-3f, 0x1.9d99980000000p-3f, 0x1.ac00000000000p-3f, 0x1.ba66680000000p-3f,
    0x1.c8cccc0000000p-3f, 0x1.d733340000000p-3f, 0x1.e599980000000p-3f, 0x1.f400000000000p-3f,
    0x1.0133320000000p-2f, 0x1.0866660000000p-2f, 0x1.0f999a0000000p-2f, 0x1.16cccc0000000p-2f,
    0x1.1e00000000000p-2f, 0x1.2533340000000p-2f, 0x1.2c66660000000p-2f, 0x1.3399980000000p-2f,
    0x1.3acccc0000000p-2f, 0x1.4200000000000p-2f, 0x1.4933340000000p-2f, 0x1.5066660000000p-2f,
    0x1.5799980000000p-2f, 0x1.5ecccc0000000p-2f, 0x1.6600000000000p-2f, 0x1.6d33340000000p-2f,
    0x1.7466660000000p-2f, 0x1.7b99980000000p-2f, 0x1.82cccc0000000p-2f, 0x1.8a00000000000p-2f,
    0x1.9133340000000p-2f, 0x1.9866660000000p-2f, 0x1.9f99980000000p-2f, 0x1.a6cccc0000000p-2f,
    0x1.ae00000000000p-2f, 0x1.b533340000000p-2f, 0x1.bc66660000000p-2f, 0x1.c399980000000p-2f,
    0x1.cacccc0000000p-2f, 0x1.d200000000000p-2f, 0x1.d933340000000p-2f, 0x1.e066660000000p-2f,
    0x1.e799980000000p-2f, 0x1.eecccc0000000p-2f, 0x1.f600000000000p-2f, 0x1.fd33320000000p-2f,
    0x1.0233340000000p-1f, 0x1.05cccc0000000p-1f, 0x1.0966660000000p-1f, 0x1.0d00000000000p-1f,
    0x1.1099980000000p-1f, 0x1.1433340000000p-1f, 0x1.17cccc0000000p-1f, 0x1.1b66680000000p-1f,
    0x1.1f00000000000p-1f, 0x1.22999a0000000p-1f, 0x1.2633340000000p-1f, 0x1.29cccc0000000p-1f,
    0x1.2d66680000000p-1f, 0x1.3100000000000p-1f, 0x1.34999a0000000p-1f, 0x1.3833340000000p-1f,
    0x1.3bcccc0000000p-1f, 0x1.3f66680000000p-1f, 0x1.4300000000000p-1f, 0x1.46999a0000000p-1f,
    0x1.4a33340000000p-1f, 0x1.4dcccc0000000p-1f, 0x1.5166680000000p-1f, 0x1.5500000000000p-1f,
    0x1.58999a0000000p-1f, 0x1.5c33340000000p-1f, 0x1.5fcccc0000000p-1f, 0x1.6366680000000p-1f,
    0x1.6700000000000p-1f, 0x1.6a999a0000000p-1f, 0x1.6e33340000000p-1f, 0x1.71cccc0000000p-1f,
    0x1.7566680000000p-1f, 0x1.7900000000000p-1f, 0x1.7c999a0000000p-1f, 0x1.8033340000000p-1f,
    0x1.83cccc0000000p-1f, 0x1.8766680000000p-1f, 0x1.8b00000000000p-1f, 0x1.8e99980000000p-1f,
    0x1.9233340000000p-1f, 0x1.95cccc0000000p-1f, 0x1.9966680000000p-1f, 0x1.9d00000000000p-1f,
    0x1.a099980000000p-1f, 0x1.a433340000000p-1f, 0x1.a7cccc0000000p-1f, 0x1.ab66680000000p-1f,
    0x1.af00000000000p-1f, 0x1.b299980000000p-1f, 0x1.b633340000000p-1f, 0x1.b9cccc0000000p-1f,
    0x1.bd66680000000p-1f, 0x1.c100000000000p-1f, 0x1.c499980000000p-1f, 0x1.c833340000000p-1f,
    0x1.cbcccc0000000p-1f, 0x1.cf66680000000p-1f, 0x1.d300000000000p-1f, 0x1.d699980000000p-1f,
    0x1.da33340000000p-1f, 0x1.ddcccc0000000p-1f, 0x1.e166680000000p-1f, 0x1.e500000000000p-1f,
    0x1.e899980000000p-1f, 0x1.ec33340000000p-1f, 0x1.efcccc0000000p-1f, 0x1.f366680000000p-1f,
    0x1.f700000000000p-1f, 0x1.fa99980000000p-1f, 0x1.fe33340000000p-1f, 0x1.0000000000000p+0f,
};

FUSEDOPT_CODEC_TABLE float kUnsignedMidpoints[255] = {
    0x1.5cf7540000000p-23f, 0x1.27476c0000000p-21f, 0x1.853b3c0000000p-20f, 0x1.b435240000000p-19f,
    0x1.7119480000000p-18f, 0x1.040bfe0000000p-17f, 0x1.9b0ab00000000p-17f, 0x1.64840e0000000p-16f,
    0x1.10a1380000000p-15f, 0x1.6f00680000000p-15f, 0x1.cd5f9a0000000p-15f, 0x1.15df660000000p-14f,
    0x1.450efc0000000p-14f, 0x1.743e940000000p-14f, 0x1.d29dc80000000p-14f, 0x1.47ae140000000p-13f,
    0x1.bda5140000000p-13f, 0x1.19ce080000000p-12f, 0x1.54c9860000000p-12f, 0x1.8fc5040000000p-12f,
    0x1.cac0840000000p-12f, 0x1.02de020000000p-11f, 0x1.205bc00000000p-11f, 0x1.3dd9800000000p-11f,
    0x1.5b57400000000p-11f, 0x1.78d5000000000p-11f, 0x1.9652c00000000p-11f, 0x1.b3d0800000000p-11f,
    0x1.d14e3c0000000p-11f, 0x1.eecbfc0000000p-11f, 0x1.14e3bc0000000p-10f, 0x1.4fdf3c0000000p-10f,
    0x1.9999980000000p-10f, 0x1.e353f80000000p-10f, 0x1.16872c0000000p-9f, 0x1.3b64580000000p-9f,
    0x1.6041880000000p-9f, 0x1.851eb80000000p-9f, 0x1.a9fbe80000000p-9f, 0x1.ced9180000000p-9f,
    0x1.f3b6440000000p-9f, 0x1.0c49b80000000p-8f, 0x1.1eb8500000000p-8f, 0x1.3126e80000000p-8f,
    0x1.4395800000000p-8f, 0x1.5604180000000p-8f, 0x1.6872b00000000p-8f, 0x1.7ae1480000000p-8f,
    0x1.8d4fe00000000p-8f, 0x1.9fbe760000000p-8f, 0x1.b22d100000000p-8f, 0x1.c49ba60000000p-8f,
    0x1.d70a3c0000000p-8f, 0x1.e978d40000000p-8f, 0x1.fbe76c0000000p-8f, 0x1.072b020000000p-7f,
    0x1.10624c0000000p-7f, 0x1.1999980000000p-7f, 0x1.22d0e40000000p-7f, 0x1.2c08300000000p-7f,
    0x1.353f7c0000000p-7f, 0x1.3e76c80000000p-7f, 0x1.50e5600000000p-7f, 0x1.75c2900000000p-7f,
    0x1.a3d70a0000000p-7f, 0x1.d1eb840000000p-7f, 0x1.0000000000000p-6f, 0x1.170a3e0000000p-6f,
    0x1.2e147c0000000p-6f, 0x1.451eb80000000p-6f, 0x1.5c28f60000000p-6f, 0x1.7333340000000p-6f,
    0x1.8a3d700000000p-6f, 0x1.a147ae0000000p-6f, 0x1.b851ee0000000p-6f, 0x1.cf5c2a0000000p-6f,
    0x1.e666660000000p-6f, 0x1.fd70a40000000p-6f, 0x1.0a3d700000000p-5f, 0x1.15c2900000000p-5f,
    0x1.2147ae0000000p-5f, 0x1.2cccce0000000p-5f, 0x1.3851ec0000000p-5f, 0x1.43d70a0000000p-5f,
    0x1.4f5c280000000p-5f, 0x1.5ae1480000000p-5f, 0x1.6666660000000p-5f, 0x1.71eb840000000p-5f,
    0x1.7d70a40000000p-5f, 0x1.88f5c20000000p-5f, 0x1.947ae00000000p-5f, 0x1.a000000000000p-5f,
    0x1.ab851e0000000p-5f, 0x1.b70a3e0000000p-5f, 0x1.c28f5e0000000p-5f, 0x1.ce147e0000000p-5f,
    0x1.d9999c0000000p-5f, 0x1.e51eb80000000p-5f, 0x1.f0a3d60000000p-5f, 0x1.fc28f80000000p-5f,
    0x1.03d70c0000000p-4f, 0x1.09999c0000000p-4f, 0x1.0f5c280000000p-4f, 0x1.151eb80000000p-4f,
    0x1.1ae1480000000p-4f, 0x1.20a3d80000000p-4f, 0x1.2666680000000p-4f, 0x1.2c28f60000000p-4f,
    0x1.31eb860000000p-4f, 0x1.37ae160000000p-4f, 0x1.3d70a40000000p-4f, 0x1.4333340000000p-4f,
    0x1.48f5c40000000p-4f, 0x1.4eb8520000000p-4f, 0x1.547ae20000000p-4f, 0x1.5a3d700000000p-4f,
    0x1.6000000000000p-4f, 0x1.65c2900000000p-4f, 0x1.6b851e0000000p-4f, 0x1.7147ae0000000p-4f,
    0x1.770a3e0000000p-4f, 0x1.7cccce0000000p-4f, 0x1.828f5c0000000p-4f, 0x1.8851ec0000000p-4f,
    0x1.8e147c0000000p-4f, 0x1.93d70c0000000p-4f, 0x1.9f5c280000000p-4f, 0x1.b666660000000p-4f,
    0x1.d333340000000p-4f, 0x1.f000000000000p-4f, 0x1.0666660000000p-3f, 0x1.14cccc0000000p-3f,
    0x1.2333340000000p-3f, 0x1.31999a0000000p-3f, 0x1.4000000000000p-3f, 0x1.4e66660000000p-3f,
    0x1.5ccccc0000000p-3f, 0x1.6b33340000000p-3f, 0x1.79999a0000000p-3f, 0x1.8800000000000p-3f,
    0x1.9666660000000p-3f, 0x1.a4cccc0000000p-3f, 0x1.b333340000000p-3f, 0x1.c1999a0000000p-3f,
    0x1.d000000000000p-3f, 0x1.de66660000000p-3f, 0x1.eccccc0000000p-3f, 0x1.fb33320000000p-3f,
    0x1.04cccc0000000p-2f, 0x1.0c00000000000p-2f, 0x1.1333340000000p-2f, 0x1.1a66660000000p-2f,
    0x1.21999a0000000p-2f, 0x1.28cccc0000000p-2f, 0x1.3000000000000p-2f, 0x1.3733320000000p-2f,
    0x1.3e66660000000p-2f, 0x1.45999a0000000p-2f, 0x1.4ccccc0000000p-2f, 0x1.5400000000000p-2f,
    0x1.5b33320000000p-2f, 0x1.6266660000000p-2f, 0x1.69999a0000000p-2f, 0x1.70cccc0000000p-2f,
    0x1.7800000000000p-2f, 0x1.7f33320000000p-2f, 0x1.8666660000000p-2f, 0x1.8d999a0000000p-2f,
    0x1.94cccc0000000p-2f, 0x1.9c00000000000p-2f, 0x1.a333320000000p-2f, 0x1.aa66660000000p-2f,
    0x1.b1999a0000000p-2f, 0x1.b8cccc0000000p-2f, 0x1.c000000000000p-2f, 0x1.c733320000000p-2f,
    0x1.ce66660000000p-2f, 0x1.d5999a0000000p-2f, 0x1.dccccc0000000p-2f, 0x1.e400000000000p-2f,
    0x1.eb33320000000p-2f, 0x1.f266660000000p-2f, 0x1.f999980000000p-2f, 0x1.0066660000000p-1f,
    0x1.0400000000000p-1f, 0x1.0799980000000p-1f, 0x1.0b33340000000p-1f, 0x1.0ecccc0000000p-1f,
    0x1.1266660000000p-1f, 0x1.1600000000000p-1f, 0x1.19999a0000000p-1f, 0x1.1d33340000000p-1f,
    0x1.20cccc0000000p-1f, 0x1.2466680000000p-1f, 0x1.2800000000000p-1f, 0x1.2b999a0000000p-1f,
    0x1.2f33340000000p-1f, 0x1.32cccc0000000p-1f, 0x1.3666680000000p-1f, 0x1.3a00000000000p-1f,
    0x1.3d999a0000000p-1f, 0x1.4133340000000p-1f, 0x1.44cccc0000000p-1f, 0x1.4866680000000p-1f,
    0x1.4c00000000000p-1f, 0x1.4f999a0000000p-1f, 0x1.5333340000000p-1f, 0x1.56cccc0000000p-1f,
    0x1.5a66680000000p-1f, 0x1.5e00000000000p-1f, 0x1.61999a0000000p-1f, 0x1.6533340000000p-1f,
    0x1.68cccc0000000p-1f, 0x1.6c66680000000p-1f, 0x1.7000000000000p-1f, 0x1.73999a0000000p-1f,
    0x1.7733340000000p-1f, 0x1.7acccc0000000p-1f, 0x1.7e66680000000p-1f, 0x1.8200000000000p-1f,
    0x1.85999a0000000p-1f, 0x1.8933340000000p-1f, 0x1.8ccccc0000000p-1f, 0x1.9066660000000p-1f,
    0x1.9400000000000p-1f, 0x1.97999a0000000p-1f, 0x1.9b33340000000p-1f, 0x1.9ecccc0000000p-1f,
    0x1.a266660000000p-1f, 0x1.a600000000000p-1f, 0x1.a9999a0000000p-1f, 0x1.ad33340000000p-1f,
    0x1.b0cccc0000000p-1f, 0x1.b466660000000p-1f, 0x1.b800000000000p-1f, 0x1.bb999a0000000p-1f,
    0x1.bf33340000000p-1f, 0x1.c2cccc0000000p-1f, 0x1.c666660000000p-1f, 0x1.ca00000000000p-1f,
    0x1.cd999a0000000p-1f, 0x1.d133340000000p-1f, 0x1.d4cccc0000000p-1f, 0x1.d866660000000p-1f,
    0x1.dc00000000000p-1f, 0x1.df999a0000000p-1f, 0x1.e333340000000p-1f, 0x1.e6cccc0000000p-1f,
    0x1.ea66660000000p-1f, 0x1.ee00000000000p-1f, 0x1.f1999a0000000p-1f, 0x1.f533340000000p-1f,
    0x1.f8cccc0000000p-1f, 0x1.fc66660000000p-1f, 0x1.ff199a0000000p-1f,
};
#undef FUSEDOPT_CODEC_TABLE

// The code of x / absmax, the definition (the kernels run encode_code8_fast,
// tested against this): how many of the 255 sorted midpoints lie strictly
// below it (a NaN compares below none: code 0). Eight halvings of [0, 256),
// written out, on int32 indices: as a loop, or with unsigned indices, gcc
// left the CPU encoder scalar; this form becomes eight gathers.
FUSEDOPT_HD int32_t encode_code8(float normalized, const float* __restrict__ midpoints) {
  int32_t index = 0;
  index += normalized > midpoints[index + 127] ? 128 : 0;
  index += normalized > midpoints[index + 63] ? 64 : 0;
  index += normalized > midpoints[index + 31] ? 32 : 0;
  index += normalized > midpoints[index + 15] ? 16 : 0;
  index += normalized > midpoints[index + 7] ? 8 : 0;
  index += normalized > midpoints[index + 3] ? 4 : 0;
  index += normalized > midpoints[index + 1] ? 2 : 0;
  index += normalized > midpoints[index] ? 1 : 0;
  return index;
}

// What a block's elements are divided by before encoding: its absmax, or 1
// for an all-zero block (absmax 0), whose elements then encode as 0. Chosen
// once per block, so the per-element loop is a plain IEEE division.
FUSEDOPT_HD float encode_divisor(float absmax) { return absmax == 0.0f ? 1.0f : absmax; }

// The same code without the search: the map's decades (reference/codecs.py:
// decade i = 0..6 holds n_i codes s_i (0.1 + 0.9 (k + 1/2) / n_i), s_i =
// 10^(i-6), n_i = 2^i signed, 2^(i+1) unsigned) give the bin of |x| in fp32
// arithmetic, one code from the answer at most (near a decade's edge, or
// where the fp32 guess rounds across a bin's edge); two gathers of
// neighbouring midpoints then settle it: the count of midpoints below x,
// as encode_code8 finds it (tests/test_state_dtypes.py: every float of
// [-1, 1] under `slow`, a strided sample and each midpoint's neighbours by
// default). Two gathers instead of eight: AdamW's 8-bit CPU step on one 16M
// tensor went from 210 ms to 92 ms (fp32 states: 22 ms, same run).
template <bool kSigned>
FUSEDOPT_HD int32_t encode_code8_fast(float x, const float* __restrict__ midpoints) {
  const float a = x < 0.0f ? -x : x;
  // The decade: how many of 10^-6 .. 10^-1 |x| exceeds; 1 / s_i with it.
  // Written out: as a loop over arrays of edges, gcc left the encoder scalar.
  const int32_t decade = (a > 1e-6f ? 1 : 0) + (a > 1e-5f ? 1 : 0) + (a > 1e-4f ? 1 : 0) +
                         (a > 1e-3f ? 1 : 0) + (a > 1e-2f ? 1 : 0) + (a > 1e-1f ? 1 : 0);
  float inverse_scale = 1e6f;
  inverse_scale = a > 1e-6f ? 1e5f : inverse_scale;
  inverse_scale = a > 1e-5f ? 1e4f : inverse_scale;
  inverse_scale = a > 1e-4f ? 1e3f : inverse_scale;
  inverse_scale = a > 1e-3f ? 1e2f : inverse_scale;
  inverse_scale = a > 1e-2f ? 1e1f : inverse_scale;
  inverse_scale = a > 1e-1f ? 1.0f : inverse_scale;
  const int32_t bins = (kSigned ? 1 : 2) << decade;
  // The index of the decade's first positive code: after 0 (and the 127
  // negative codes, signed) and the earlier decades' codes.
  const int32_t first = kSigned ? 127 + (1 << decade) : bins - 1;
  float bin = (a * inverse_scale - 0.1f) * (static_cast<float>(bins) / 0.9f);
  bin = bin > 0.0f ? bin : 0.0f;  // also a NaN's
  bin = bin < static_cast<float>(bins - 1) ? bin : static_cast<float>(bins - 1);
  const int32_t positive = first + static_cast<int32_t>(bin);
  // A negative x mirrors its magnitude's index (254 - i), as arithmetic: a
  // select between the two indices kept gcc from vectorizing the loop.
  const int32_t negative = kSigned && x < 0.0f ? 1 : 0;
  int32_t guess = positive + negative * (kCodes8 - 2 - 2 * positive);
  const int32_t below_index = guess > 0 ? guess - 1 : 0;
  const int32_t above_index = guess < kCodes8 - 1 ? guess : kCodes8 - 2;
  const float below = midpoints[below_index];
  const float above = midpoints[above_index];
  guess += (guess < kCodes8 - 1 && x > above) ? 1 : 0;
  guess -= (guess > 0 && x <= below) ? 1 : 0;
  // A NaN, and (unsigned map) a negative x, lie below every midpoint.
  const bool below_all = x != x || (!kSigned && x < 0.0f);
  return below_all ? 0 : guess;
}

// A block's absmax as the max of its elements' magnitude bits: for floats
// without sign, integer order is float order, and every NaN's bits lie above
// inf's, so a block with a NaN gets a NaN absmax (the largest NaN pattern,
// the same on every backend). An integer max vectorizes; a float max that
// propagates NaN did not (gcc: "control flow in loop").
constexpr uint32_t kMagnitudeBits = 0x7FFFFFFFu;

FUSEDOPT_HD uint32_t magnitude_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits & kMagnitudeBits;
}

FUSEDOPT_HD float absmax_of_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Magnitude bits above these are a NaN's.
constexpr uint32_t kInfinityBits = 0x7F800000u;

// Note [keyed encoder]: the code of x with one table load, for the CPU's
// AVX-512 encoder (csrc/cpu/loop.cpp: encode_block8 is encode_code8_keyed
// lane by lane; tests/test_state_dtypes.py checks this scalar form against
// the binary search on every float of [-1, 1]). The code is a step function
// of x's bits: cut the magnitudes of [2^-24, 1] into keys by their top bits
// (the exponent and the first kKeyMantissaBits8 mantissa bits); a key's bit
// range holds at most one midpoint of either sign (make_code8_keys checks it
// at compile time), so code = (midpoints below the key's range) + (1 if x is
// past the one inside). One entry per key and sign: that count above bit
// kKeyShift8, the inside midpoint's bits below it (its other bits are the
// key's), or, with no midpoint inside, bits no x of the range is past. The
// tables are built at compile time from the midpoints, the one source of
// truth. The signed map's two signs are interleaved in one table: one gather
// per 16 lanes (a table per sign, two gathers: 0.81 ns per element instead
// of 0.44; loop.cpp has the measurements). The CUDA kernels keep
// encode_code8_fast: a 12 KB table indexed per lane serializes in constant
// memory. Host-only (std::bit_cast in a constant expression: C++20, and the
// CUDA build is C++17).
#if !defined(__CUDACC__)

// The keys' range: below 2^-24 (under every midpoint's magnitude, the least
// 0x1.5cf754p-23) every x of a sign has one code; |x / absmax| <= 1.
constexpr uint32_t kKeyLowBits8 = 0x33800000u;   // 2^-24
constexpr uint32_t kKeyHighBits8 = 0x3F800000u;  // 1.0
// Mantissa bits in a key: the fewest with at most one midpoint per key's range
// (static_assert below). The unsigned map's top decade has 128 codes 0.007
// apart, 7 bits; the signed map's 64 codes 0.014 apart, 6 bits, halves its
// table so both fit a 32 KB L1 data cache together (12 KB each).
template <bool kSigned>
constexpr int32_t kKeyMantissaBits8 = kSigned ? 6 : 7;
template <bool kSigned>
constexpr int32_t kKeyShift8 = 23 - kKeyMantissaBits8<kSigned>;
// A clamped magnitude's key: its bits above kKeyShift8, counted from 2^-24's.
template <bool kSigned>
constexpr uint32_t key8(uint32_t magnitude) {
  constexpr int32_t shift = kKeyShift8<kSigned>;
  return (magnitude >> shift) - (kKeyLowBits8 >> shift);
}
template <bool kSigned>
constexpr int32_t kKeys8 = static_cast<int32_t>(key8<kSigned>(kKeyHighBits8)) + 1;
// Entries per key: the signed map's positive and negative x interleaved.
template <bool kSigned>
constexpr int32_t kSigns8 = kSigned ? 2 : 1;

template <bool kSigned>
struct Code8Keys {
  uint32_t entry[kKeys8<kSigned> * kSigns8<kSigned>];
  bool one_midpoint_per_key;
};

// Walks the keys upwards with four cursors into the sorted midpoints: those
// below the key's range, those at most its top (positive x); those below its
// mirror, those at most its mirror's top (negative x).
template <bool kSigned>
constexpr Code8Keys<kSigned> make_code8_keys(const float* midpoints) {
  constexpr int32_t shift = kKeyShift8<kSigned>;
  constexpr uint32_t low_bits = (1u << shift) - 1u;
  Code8Keys<kSigned> keys{};
  keys.one_midpoint_per_key = true;
  int32_t below = 0, at_most_top = 0;
  int32_t below_mirror = kCodes8 - 1, at_most_mirror = kCodes8 - 1;
  for (int32_t key = 0; key < kKeys8<kSigned>; ++key) {
    const uint32_t first_bits = ((kKeyLowBits8 >> shift) + static_cast<uint32_t>(key)) << shift;
    const float first = std::bit_cast<float>(first_bits);
    const float last = std::bit_cast<float>(first_bits | low_bits);
    while (below < kCodes8 - 1 && midpoints[below] < first) ++below;
    while (at_most_top < kCodes8 - 1 && midpoints[at_most_top] <= last) ++at_most_top;
    while (below_mirror > 0 && !(midpoints[below_mirror - 1] < -last)) --below_mirror;
    while (at_most_mirror > 0 && !(midpoints[at_most_mirror - 1] <= -first)) --at_most_mirror;
    const int32_t inside = at_most_top - below;
    const int32_t inside_mirror = at_most_mirror - below_mirror;
    if (inside > 1 || (kSigned && inside_mirror > 1)) keys.one_midpoint_per_key = false;
    // No midpoint inside: a positive x is never past low_bits, a negative
    // x's magnitude never under 0.
    const uint32_t positive =
        inside == 1 ? std::bit_cast<uint32_t>(midpoints[below]) & low_bits : low_bits;
    keys.entry[key * kSigns8<kSigned>] = static_cast<uint32_t>(below) << shift | positive;
    if (kSigned) {
      const uint32_t negative =
          inside_mirror == 1 ? std::bit_cast<uint32_t>(midpoints[below_mirror]) & low_bits : 0u;
      keys.entry[key * kSigns8<kSigned> + 1] =
          static_cast<uint32_t>(below_mirror) << shift | negative;
    }
  }
  return keys;
}

inline constexpr Code8Keys<true> kSignedKeys = make_code8_keys<true>(kSignedMidpoints);
inline constexpr Code8Keys<false> kUnsignedKeys = make_code8_keys<false>(kUnsignedMidpoints);
static_assert(kSignedKeys.one_midpoint_per_key && kUnsignedKeys.one_midpoint_per_key,
              "a key's range holds two midpoints: kKeyMantissaBits8 needs one more bit");

template <bool kSigned>
constexpr const Code8Keys<kSigned>& code8_keys() {
  if constexpr (kSigned) {
    return kSignedKeys;
  } else {
    return kUnsignedKeys;
  }
}

// encode_code8's code of x, from its key's entry (Note [keyed encoder]).
template <bool kSigned>
inline int32_t encode_code8_keyed(float x) {
  constexpr int32_t shift = kKeyShift8<kSigned>;
  constexpr uint32_t low_bits = (1u << shift) - 1u;
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t negative = bits >> 31;
  uint32_t magnitude = bits & kMagnitudeBits;
  const bool nan = magnitude > kInfinityBits;
  magnitude = magnitude < kKeyLowBits8 ? kKeyLowBits8 : magnitude;
  magnitude = magnitude > kKeyHighBits8 ? kKeyHighBits8 : magnitude;
  const uint32_t key = key8<kSigned>(magnitude);
  const uint32_t entry = code8_keys<kSigned>().entry[kSigned ? 2 * key + negative : key];
  const uint32_t inside = (magnitude & ~low_bits) | (entry & low_bits);
  const bool past = negative ? magnitude < inside : magnitude > inside;
  const int32_t code = static_cast<int32_t>(entry >> shift) + (past ? 1 : 0);
  // A NaN, and (unsigned map) a negative x, lie below every midpoint.
  return nan || (!kSigned && negative) ? 0 : code;
}

#endif  // !defined(__CUDACC__)

}  // namespace fusedopt
