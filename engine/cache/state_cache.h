// Per-sequence recurrent state for linear-attention (Gated DeltaNet) layers. Unlike the
// KV cache it does not grow with context: each running sequence holds one slot, which
// stores, for every linear layer, the short-convolution tail (the last K-1 inputs) and
// the fp32 recurrent state S [H_v, d_k, d_v].
#ifndef SLUICE_ENGINE_CACHE_STATE_CACHE_H_
#define SLUICE_ENGINE_CACHE_STATE_CACHE_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/gated_delta_net.h"
#include "kernels/tensor.h"

namespace sluice::engine {

struct StateCacheShape {
  int32_t num_layers = 0;  // linear-attention layers only
  int32_t num_slots = 0;
  int64_t conv_dim = 0;
  int64_t conv_tail = 0;  // kernel size - 1
  int64_t num_value_heads = 0;
  int64_t key_head_dim = 0;
  int64_t value_head_dim = 0;
  size_t BytesPerSlot() const;
};

// Hands out slot ids. A slot's previous contents are never read by its next owner:
// the first step of a sequence runs with "fresh state", which the kernels treat as zero.
class StateSlotPool {
 public:
  explicit StateSlotPool(int32_t num_slots);
  int32_t num_slots() const { return num_slots_; }
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  std::optional<int32_t> Allocate();
  void Free(int32_t slot);

 private:
  int32_t num_slots_;
  std::vector<int32_t> free_;
  std::vector<bool> in_use_;
};

class RecurrentStateCache {
 public:
  static absl::StatusOr<RecurrentStateCache> Create(const StateCacheShape& shape,
                                                    kernels::Device device);
  const StateCacheShape& shape() const { return shape_; }
  kernels::Tensor& conv(int layer) { return conv_[layer]; }            // [slots, conv_dim, K-1]
  kernels::Tensor& recurrent(int layer) { return recurrent_[layer]; }  // [slots, H_v, d_k, d_v]
  // Copies slot src to slot dst (conv tail and recurrent state of every layer) for every
  // copy, with kernels::CopyStateSlots and its rules (slots in range, src != dst, each dst
  // once and never a src). Empty copies do nothing.
  absl::Status CopySlots(absl::Span<const kernels::SlotCopy> copies);

 private:
  StateCacheShape shape_;
  std::vector<kernels::Tensor> conv_;
  std::vector<kernels::Tensor> recurrent_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_CACHE_STATE_CACHE_H_
