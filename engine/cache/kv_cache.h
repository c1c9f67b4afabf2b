// Paged KV cache: fixed-size blocks (handed out by KvBlockPool, prefix_cache.h). A
// sequence holds a block table (its blocks in order); token j of the sequence lives in
// block table[j / block_size] at offset j % block_size.
#ifndef SLUICE_ENGINE_CACHE_KV_CACHE_H_
#define SLUICE_ENGINE_CACHE_KV_CACHE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/tensor.h"

namespace sluice::engine {

struct KvCacheShape {
  int32_t num_layers = 0;  // attention layers only
  int32_t num_blocks = 0;
  int32_t block_size = 16;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  // What K and V are stored as (kernels/ops.h WriteKvCache): f32 (the library default,
  // what the golden tests compare with transformers), bf16 (half the bytes; sluiced's
  // default), or f8_e4m3 (a quarter, plus one f32 scale per (token, KV head) row of K
  // and of V: 4 / head_dim more).
  kernels::DType dtype = kernels::DType::kF32;
  // Bytes one block takes across all layers (K and V, and the fp8 scales).
  size_t BytesPerBlock() const;
};

// "f32", "bf16" or "fp8" (f8_e4m3) to a KV cache dtype; INVALID_ARGUMENT otherwise.
absl::StatusOr<kernels::DType> ParseKvCacheDtype(absl::string_view name);
// The inverse: "f32", "bf16" or "fp8".
absl::string_view KvCacheDtypeName(kernels::DType dtype);

class PagedKvCache {
 public:
  static absl::StatusOr<PagedKvCache> Create(const KvCacheShape& shape, kernels::Device device);
  const KvCacheShape& shape() const { return shape_; }
  kernels::Tensor& key(int layer) { return keys_[layer]; }
  kernels::Tensor& value(int layer) { return values_[layer]; }
  // f32 [num_blocks, block_size, num_kv_heads] per-row scales of an f8_e4m3 cache;
  // undefined tensors for f32 and bf16 caches.
  kernels::Tensor& key_scale(int layer) { return key_scales_[layer]; }
  kernels::Tensor& value_scale(int layer) { return value_scales_[layer]; }
  int32_t BlocksFor(int64_t tokens) const {
    return static_cast<int32_t>((tokens + shape_.block_size - 1) / shape_.block_size);
  }

 private:
  KvCacheShape shape_;
  std::vector<kernels::Tensor> keys_;
  std::vector<kernels::Tensor> values_;
  std::vector<kernels::Tensor> key_scales_;
  std::vector<kernels::Tensor> value_scales_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_CACHE_KV_CACHE_H_
