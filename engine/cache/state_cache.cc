#include "engine/cache/state_cache.h"

#include <cstdlib>

#include "kernels/status_macros.h"

namespace sluice::engine {

size_t StateCacheShape::BytesPerSlot() const {
  return static_cast<size_t>(num_layers) * sizeof(float) *
         (conv_dim * conv_tail + num_value_heads * key_head_dim * value_head_dim);
}

StateSlotPool::StateSlotPool(int32_t num_slots) : num_slots_(num_slots), in_use_(num_slots, false) {
  for (int32_t s = num_slots - 1; s >= 0; --s) free_.push_back(s);
}

std::optional<int32_t> StateSlotPool::Allocate() {
  if (free_.empty()) return std::nullopt;
  const int32_t s = free_.back();
  free_.pop_back();
  in_use_[s] = true;
  return s;
}

void StateSlotPool::Free(int32_t slot) {
  if (slot < 0 || slot >= num_slots_ || !in_use_[slot]) std::abort();  // programmer error
  in_use_[slot] = false;
  free_.push_back(slot);
}

absl::StatusOr<RecurrentStateCache> RecurrentStateCache::Create(const StateCacheShape& shape,
                                                                kernels::Device device) {
  RecurrentStateCache cache;
  cache.shape_ = shape;
  for (int32_t l = 0; l < shape.num_layers; ++l) {
    SLUICE_ASSIGN_OR_RETURN(auto conv, kernels::Tensor::Zeros({shape.num_slots, shape.conv_dim, shape.conv_tail},
                                                              kernels::DType::kF32, device));
    SLUICE_ASSIGN_OR_RETURN(auto rec, kernels::Tensor::Zeros({shape.num_slots, shape.num_value_heads,
                                                              shape.key_head_dim, shape.value_head_dim},
                                                             kernels::DType::kF32, device));
    cache.conv_.push_back(std::move(conv));
    cache.recurrent_.push_back(std::move(rec));
  }
  return cache;
}

absl::Status RecurrentStateCache::CopySlots(absl::Span<const kernels::SlotCopy> copies) {
  if (copies.empty()) return absl::OkStatus();
  for (size_t l = 0; l < conv_.size(); ++l) {
    SLUICE_RETURN_IF_ERROR(kernels::CopyStateSlots(copies, &conv_[l]));
    SLUICE_RETURN_IF_ERROR(kernels::CopyStateSlots(copies, &recurrent_[l]));
  }
  return absl::OkStatus();
}

}  // namespace sluice::engine
