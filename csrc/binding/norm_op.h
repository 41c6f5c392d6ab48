// The op fusedopt::grad_norm(Tensor[] tensors, float norm_type=2.0) -> Tensor:
// the norm of all the tensors' elements as one vector (torch's
// clip_grad_norm_ total norm), a float32 0-dim tensor on their device, in one
// multi-tensor reduction (Note [norm summation order] in core/norm.h). The
// tensors may mix fp32, bf16 and fp16; they must share one device and be
// dense. norm_type: 2 or inf (fusedopt/clip.py sends other p to the reference).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cmath>
#include <vector>

#include "cpu/norm.h"
#include "cpu_step.h"
#include "fusedopt/core/chunk_plan.h"
#include "fusedopt/mta/reduce.h"
#ifdef FUSEDOPT_WITH_CUDA
#include "cuda/norm.h"
#include "cuda_step.h"
#endif

namespace fusedopt::binding {

// The same 64K chunks on both devices: the order, and so the bits, are the same.
static_assert(kCpuChunkSize == mta::kChunkSize, "Note [norm summation order]: one chunk size");

inline norm::NormKind norm_kind(double norm_type) {
  TORCH_CHECK(norm_type == 2.0 || norm_type == INFINITY,
              "fusedopt: grad_norm takes norm_type 2 or inf, got ", norm_type,
              " (fusedopt.clip_grad_norm_ computes other p with its reference)");
  return norm_type == 2.0 ? norm::NormKind::kTwo : norm::NormKind::kInf;
}

// One device, dense, fp32/bf16/fp16: what the chunk loops read.
inline void check_norm_tensors(at::TensorList tensors, c10::DeviceType device_type) {
  TORCH_CHECK(tensors.size() < static_cast<size_t>(INT32_MAX),
              "fusedopt: at most 2^31-1 tensors per call");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.device().type() == device_type && t.device() == tensors[0].device(),
                "fusedopt: grad_norm takes tensors on one ", c10::DeviceTypeName(device_type),
                " device; tensor ", i, " is on ", t.device().str(), ", tensor 0 on ",
                tensors[0].device().str());
    const at::ScalarType dtype = t.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                "fusedopt: grad_norm takes float32, bfloat16 or float16 tensors; tensor ", i,
                " is ", c10::toString(dtype));
    TORCH_CHECK(t.layout() == at::kStrided && t.is_non_overlapping_and_dense(),
                "fusedopt: grad_norm reads each tensor's storage as one flat run: tensor ", i,
                " must be dense (contiguous or a permutation of it); got sizes ", t.sizes(),
                " strides ", t.strides());
  }
}

template <norm::NormKind K>
float cpu_norm(const std::vector<Chunk>& chunks, const std::vector<cpu::NormChunk>& bases) {
  std::vector<float> partials(chunks.size());
  const auto reduce = [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const cpu::NormChunk& t = bases[chunks[c].tensor];
      const size_t bytes = t.dtype == ParamDtype::kFloat32 ? 4 : 2;
      const cpu::NormChunk chunk{static_cast<const char*>(t.data) + chunks[c].start * bytes,
                                 t.dtype, chunks[c].size};
      partials[c] = cpu::chunk_partial<K>(chunk);
    }
  };
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  int64_t total = 0;
  for (const Chunk& chunk : chunks) total += chunk.size;
  // Each chunk's partial has its own slot, so how the threads share the
  // chunks out changes nothing in the result.
  if (total < kCpuMinParallelElements) {
    reduce(0, n_chunks);
  } else {
    at::parallel_for(0, n_chunks, 1, reduce);
  }
  return cpu::fold_partials<K>(partials.data(), n_chunks);
}

inline at::Tensor grad_norm_cpu(at::TensorList tensors, double norm_type) {
  const norm::NormKind kind = norm_kind(norm_type);
  check_norm_tensors(tensors, c10::DeviceType::CPU);
  std::vector<int64_t> numels(tensors.size());
  std::vector<cpu::NormChunk> bases(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    numels[i] = tensors[i].numel();
    bases[i] = {tensors[i].data_ptr(), param_dtype(tensors[i].scalar_type()), numels[i]};
  }
  const std::vector<Chunk> chunks =
      plan_chunks(numels.data(), static_cast<int32_t>(numels.size()), kCpuChunkSize);
  const float value = kind == norm::NormKind::kTwo ? cpu_norm<norm::NormKind::kTwo>(chunks, bases)
                                                   : cpu_norm<norm::NormKind::kInf>(chunks, bases);
  at::Tensor out = at::empty({}, at::TensorOptions().dtype(at::kFloat));
  *out.data_ptr<float>() = value;
  return out;
}

// The CUDA op's kernel arguments, from checked tensors: shared with the
// emulation (csrc/testing/), which runs them through mta/reduce.h on the CPU.
inline mta::NormWork prepare_cuda_norm(at::TensorList tensors, float* partials) {
  std::vector<mta::NormSlot> slots(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].numel() < mta::kMaxNumel, "fusedopt: tensor ", i, " has ",
                tensors[i].numel(), " elements; the CUDA kernels take fewer than ", mta::kMaxNumel,
                " (2^31 chunks of ", mta::kChunkSize, ")");
    slots[i] = {tensors[i].data_ptr(), tensors[i].numel(), param_dtype(tensors[i].scalar_type())};
  }
  return mta::build_norm_launches(slots, partials);
}

// Chunks of the whole call: the partials buffer's size.
inline int64_t norm_chunk_count(at::TensorList tensors) {
  int64_t chunks = 0;
  for (const at::Tensor& t : tensors) chunks += (t.numel() + mta::kChunkSize - 1) / mta::kChunkSize;
  return chunks;
}

#ifdef FUSEDOPT_WITH_CUDA
// No host read anywhere: the partials and the norm stay on the device, and
// the launches go to torch's current stream (capturable).
inline at::Tensor grad_norm_cuda(at::TensorList tensors, double norm_type) {
  const norm::NormKind kind = norm_kind(norm_type);
  check_norm_tensors(tensors, c10::DeviceType::CUDA);
  TORCH_CHECK(!tensors.empty(), "fusedopt: grad_norm on CUDA needs at least one tensor");
  const c10::Device device = tensors[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const at::TensorOptions options = at::TensorOptions().dtype(at::kFloat).device(device);
  const int64_t n_chunks = norm_chunk_count(tensors);
  TORCH_CHECK(n_chunks < INT32_MAX, "fusedopt: grad_norm takes fewer than 2^31 chunks");
  at::Tensor partials = at::empty({n_chunks > 0 ? n_chunks : 1}, options);
  at::Tensor out = at::empty({}, options);
  const mta::NormWork work = prepare_cuda_norm(tensors, partials.data_ptr<float>());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const int32_t max_blocks = resident_blocks(device.index());
  for (const mta::NormLaunchArgs& args : work.launches) {
    const int32_t n_blocks = mta::grid_blocks(args.header.n_chunks, max_blocks);
    C10_CUDA_CHECK(cuda::launch_norm_partials(args, n_blocks, kind, stream));
  }
  C10_CUDA_CHECK(cuda::launch_norm_finish(partials.data_ptr<float>(), work.n_chunks,
                                          out.data_ptr<float>(), kind, stream));
  return out;
}
#endif

}  // namespace fusedopt::binding
