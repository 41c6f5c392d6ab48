// Multi-tensor chunk mapping: which chunk of which tensor a worker (a CPU
// thread's share, or a CUDA block) processes. Plain host code, so that tests
// drive it directly with adversarial tensor lists.
#pragma once

#include <cstdint>
#include <vector>

namespace fusedopt {

// One contiguous run of elements of one tensor.
struct Chunk {
  int32_t tensor;  // index into the launch's tensor list
  int64_t start;   // first element (64-bit: tensors over 2^31 elements are real)
  int64_t size;    // number of elements, 1..chunk_size
};

// Splits every non-empty tensor into chunks of at most `chunk_size` elements,
// in tensor order. Zero-size tensors get no chunk at all, wherever they sit in
// the list (a zero-size tensor in the last slot once corrupted a launch in
// TransformerEngine, #3202).
inline std::vector<Chunk> plan_chunks(const int64_t* numels, int32_t n_tensors,
                                      int64_t chunk_size) {
  std::vector<Chunk> chunks;
  for (int32_t t = 0; t < n_tensors; ++t) {
    for (int64_t start = 0; start < numels[t]; start += chunk_size) {
      const int64_t left = numels[t] - start;
      chunks.push_back({t, start, left < chunk_size ? left : chunk_size});
    }
  }
  return chunks;
}

}  // namespace fusedopt
